-- The layers of bindings/moongrad/nn_layers.lua: Embedding, Masking, Dropout,
-- TimeDistributed, LayerNormalization, against their formulas, by finite differences, and
-- their errors. (Keras comparisons of them: spec/layers_spec.lua.)
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local F64, assert_close, assert_error = support.F64, support.assert_close, support.assert_error

describe("nn.Embedding", function()
  it("maps ids 1..input_dim to the table's rows; with mask_zero, 0 is a zero vector and masked", function()
    local e = nn.Embedding(4, 2, { mask_zero = true, embeddings_initializer = mg.tensor { { 1, 2 }, { 3, 4 }, { 5, 6 }, { 7, 8 } } })
    local ids = mg.tensor { { 2, 0, 4 }, { 1, 1, 0 } }
    assert.are.same({ { { 3, 4 }, { 0, 0 }, { 7, 8 } }, { { 1, 2 }, { 1, 2 }, { 0, 0 } } }, e(ids):totable())
    assert.are.same({ { 1, 0, 1 }, { 1, 1, 0 } }, e:compute_mask(ids):totable())
    assert.are.equal("embedding/embeddings", e:parameters()[1].name)
  end)
  it("has Keras's default initializer, uniform(-0.05, 0.05)", function()
    local t = nn.Embedding(300, 100).embeddings
    assert.is_true(t:max():item() <= 0.05 and t:min():item() >= -0.05 and t:max():item() > 0.049)
  end)
  it("gives the gradient w.r.t. its table (finite differences), padding rows untouched", function()
    local ids = mg.tensor { { 3, 1, 0 }, { 3, 2, 2 } }
    local R = mg.randn(2, 3, 2, F64)
    local e = nn.Embedding(3, 2, { mask_zero = true, dtype = "float64" })
    assert.is_true(mg.gradcheck(function(tbl)
      e.embeddings = tbl
      return (e(ids) * R):sum()
    end, { mg.randn(3, 2, F64) }))
    local e2 = nn.Embedding(3, 2, { mask_zero = true, dtype = "float64" })
    local tape <close> = mg.GradientTape()
    local g = tape:gradient((e2(ids) * R):sum(), e2.embeddings)
    assert_close(R[1][2], g[1], 0)                      -- id 1 appears once
    assert_close(R[2][2] + R[2][3], g[2], 1e-15)        -- id 2 twice
  end)
  it("rejects ids out of range, 0 without mask_zero, and non-integers", function()
    local e = nn.Embedding(3, 2)
    assert_error("Embedding: id 0 at position 2 is not a token id in 1..3 (0 is padding only with mask_zero = true)",
      e, mg.tensor { 1, 0 })
    assert_error("Embedding: id 4 at position 1", e, mg.tensor { 4 })
    assert_error("Embedding: id 1.5", e, mg.tensor { 1.5 })
    assert_error("at position 3 is not a token id in 1..3", e, mg.tensor { { 1, 3 }, { 0 / 0, 2 } })   -- NaN
    assert_error("Embedding: id inf at position 2", e, mg.tensor { 2, math.huge })
    assert_error("Embedding: id 2.0001 at position 1", e, mg.tensor({ 2.0001 }, { dtype = "float64" }))
    assert_error("Embedding: the ids must be a tensor", e, { 1, 2 })
    assert_error("Embedding: input_dim must be a positive integer", nn.Embedding, 0, 2)
    assert_error("Embedding: unknown option 'mask_zeros'", nn.Embedding, 3, 2, { mask_zeros = true })
  end)
end)

describe("nn.Masking", function()
  it("zeroes and masks the timesteps whose features all equal mask_value", function()
    local x = mg.tensor { { { 1, 2 }, { -1, -1 }, { -1, 3 } } }
    local m = nn.Masking(-1)
    assert.are.same({ { { 1, 2 }, { 0, 0 }, { -1, 3 } } }, m(x):totable())
    assert.are.same({ { 1, 0, 1 } }, m:compute_mask(x):totable())
    assert_error("Masking: mask_value must be a number", nn.Masking, "0")
  end)
end)

describe("nn.Dropout", function()
  it("is the identity unless called with training = true", function()
    local x = mg.randn(20, 30)
    local d = nn.Dropout(0.5)
    assert.are.equal(x, d(x))
    assert.are.equal(x, d(x, { training = false }))
  end)
  it("keeps each entry with probability 1 - rate, scaled by 1 / (1 - rate)", function()
    mg.manual_seed(5)
    local x = mg.ones(200, 300, F64)
    for _, rate in ipairs { 0.1, 0.5, 0.8 } do
      local y = nn.Dropout(rate)(x, { training = true })
      local kept = mg.gt(y, 0):sum():item() / y:numel()
      local sd = math.sqrt(rate * (1 - rate) / y:numel())
      assert.is_near(1 - rate, kept, 4 * sd)
      assert.is_near(1, y:mean():item(), 4 * sd / (1 - rate))   -- the expectation is kept
      -- every entry is 0 or exactly 1 / (1 - rate)
      local scale = 1 / (1 - rate)
      local odd = mg.ne(y, 0) * mg.ne(y, scale)
      assert.are.equal(0, odd:sum():item())
    end
  end)
  it("draws its mask in one pass: mg.ge(mg.rand(...), rate) * (1 / (1 - rate)) bit for bit", function()
    for _, dtype in ipairs { "float32", "float64" } do
      for _, rate in ipairs { 0.2, 0.5, 1 / 3, 0.999 } do
        for _, shape in ipairs { { 1 }, { 7, 13 }, { 3, 50, 17 } } do
          mg.manual_seed(21)
          local d = nn.Dropout(rate)
          local y = d(mg.ones(shape, { dtype = dtype }), { training = true })
          local next_draw = mg.rand(1):item()                -- the generator moved on as mg.rand
          mg.manual_seed(21)
          local want = mg.ge(mg.rand(shape, { dtype = dtype }), rate):to(dtype) * (1 / (1 - rate))
          assert.are.equal(mg.rand(1):item(), next_draw)
          assert.are.equal(dtype, d.last_mask.dtype)
          assert.are.same(shape, d.last_mask:shape())
          assert.are.equal(0, (d.last_mask - want):abs():max():item())
          assert.are.equal(0, (y - want):abs():max():item())
        end
      end
    end
  end)
  it("with a seed draws the same masks in every run; calls draw new ones", function()
    local x = mg.ones(4, 50)
    local a, b = nn.Dropout(0.5, { seed = 11 }), nn.Dropout(0.5, { seed = 11 })
    local ya = a(x, { training = true })
    assert_close(ya, b(x, { training = true }), 0)
    assert.is_true((ya - a(x, { training = true })):abs():max():item() > 0)
  end)
  it("noise_shape shares one draw along its size-1 dimensions", function()
    local y = nn.Dropout(0.5, { noise_shape = { -1, 1, -1 } })(mg.ones(3, 40, 5), { training = true })
    assert_close(y:select(2, 1):unsqueeze(2):expand(3, 40, 5), y, 0)
    assert_error("Dropout: noise_shape[2] = 7 must be 1, -1 or 40", nn.Dropout(0.5, { noise_shape = { 3, 7, 5 } }),
      mg.ones(3, 40, 5), { training = true })
    assert_error("Dropout: rate must be a number in [0, 1), got 1", nn.Dropout, 1)
  end)
end)

describe("nn.TimeDistributed", function()
  it("applies the layer to every timestep", function()
    local d = nn.Dense(3, 2, F64)
    local td = nn.TimeDistributed(d)
    local x = mg.randn(2, 4, 3, F64)
    local y = td(x)
    assert.are.same({ 2, 4, 2 }, y:shape())
    for t = 1, 4 do assert_close(d(x:select(2, t)), y:select(2, t), 1e-15) end
    assert.are.equal(2, #td:parameters())
    assert_error("TimeDistributed: input must be (batch, time, ...)", td, mg.randn(2, 3))
  end)
end)

describe("nn.LayerNormalization", function()
  it("normalizes over the last axis with gamma and beta (Keras's epsilon 1e-3)", function()
    local x = mg.tensor({ { 1, 2, 3, 6 } }, F64)
    local ln = nn.LayerNormalization({ dtype = "float64" })
    local y = ln(x):totable()[1]
    local mean, var = 3, (4 + 1 + 0 + 9) / 4
    for i, v in ipairs { 1, 2, 3, 6 } do assert.is_near((v - mean) / math.sqrt(var + 1e-3), y[i], 1e-14) end
    local names = {}
    for i, p in ipairs(ln:parameters()) do names[i] = p.name end
    assert.are.same({ "layer_normalization/gamma", "layer_normalization/beta" }, names)
  end)
  it("has the gradient finite differences give (input, gamma, beta; axis 2 of 3)", function()
    local ln = nn.LayerNormalization({ axis = 2, dtype = "float64", epsilon = 0.01 })
    ln(mg.randn(2, 3, 4, F64))
    local R = mg.randn(2, 3, 4, F64)
    assert.is_true(mg.gradcheck(function(x, g, b)
      ln.gamma, ln.beta = g, b
      return (ln(x) * R):sum()
    end, { mg.randn(2, 3, 4, F64), mg.randn(3, F64), mg.randn(3, F64) }))
  end)
  it("rejects a wrong size and a bad axis", function()
    local ln = nn.LayerNormalization()
    ln(mg.randn(2, 3))
    assert_error("LayerNormalization: input has 4 entries on axis -1, expected 3", ln, mg.randn(2, 4))
    assert_error("LayerNormalization: axis 3 is out of range", nn.LayerNormalization { axis = 3 }, mg.randn(2, 4))
    assert_error("LayerNormalization: axis must be a nonzero integer", nn.LayerNormalization, { axis = 0 })
  end)
end)
