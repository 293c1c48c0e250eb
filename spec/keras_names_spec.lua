-- Keras's names in moongrad.nn (bindings/moongrad/keras_names.lua): initializers checked by
-- the statistics Keras's formulas give (keras/src/initializers), regularizer and constraint
-- values against the formulas written out here, the constraint hook optimizers call, and
-- the errors for bad names and parameters. (The activations, regularizers and constraints
-- are also compared with Keras itself in spec/layers_spec.lua.)
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local assert_error = support.assert_error

-- The kernel a cell gets from 'init' (a Keras name or table), as a float64 tensor.
local function kernel(init, nin, units, gates)
  local ctor = gates == 4 and nn.LSTMCell or nn.SimpleRNNCell
  return ctor(nin, units, { kernel_initializer = init, dtype = "float64" }).kernel
end

local function stats(t)
  local n = t:numel()
  local mean = t:sum():item() / n
  local var = ((t - mean) * (t - mean)):sum():item() / n
  return mean, var, t:min():item(), t:max():item()
end

describe("initializers (Keras's formulas)", function()
  before_each(function() mg.manual_seed(3) end)
  local fan_in, fan_out = 200, 300                     -- SimpleRNNCell(200, 300): kernel (200, 300)
  local cases = {
    -- name, variance, limit (uniform: the bound; normal: 2 stddev of the untruncated one)
    { "glorot_uniform", 2 / (fan_in + fan_out), math.sqrt(6 / (fan_in + fan_out)) },
    { "glorot_normal", 2 / (fan_in + fan_out) },
    { "he_uniform", 2 / fan_in, math.sqrt(6 / fan_in) },
    { "he_normal", 2 / fan_in },
    { "lecun_uniform", 1 / fan_in, math.sqrt(3 / fan_in) },
    { "lecun_normal", 1 / fan_in },
    { { "variance_scaling", scale = 3.0, mode = "fan_out", distribution = "uniform" }, 3 / fan_out, math.sqrt(9 / fan_out) },
    { { "variance_scaling", scale = 0.5, mode = "fan_avg", distribution = "untruncated_normal" }, 0.5 / 250 },
    { { "variance_scaling", mode = "fan_in" }, 1 / fan_in },
    { { "random_uniform", minval = -0.3, maxval = 0.1 }, 0.4 ^ 2 / 12 },
    { "random_uniform", 0.1 ^ 2 / 12, 0.05 },
    { { "random_normal", stddev = 0.2, mean = 1 }, 0.04 },
    { "truncated_normal", 0.05 ^ 2 * 0.7737413 },    -- a normal truncated at 2 sd keeps 77.4% of its variance
  }
  for _, c in ipairs(cases) do
    local spec, var, limit = c[1], c[2], c[3]
    local name = type(spec) == "table" and spec[1] .. "{...}" or spec
    it(name .. " has Keras's variance" .. (limit and " and bounds" or ""), function()
      local w = kernel(spec, fan_in, fan_out)
      local m, v, lo, hi = stats(w)
      local mean = type(spec) == "table" and spec.mean or 0
      if type(spec) == "table" and spec[1] == "random_uniform" then mean = (spec.minval + spec.maxval) / 2 end
      assert.is_near(mean, m, 4 * math.sqrt(var / w:numel()) + 1e-12)
      assert.is_near(var, v, 0.03 * var)                -- 60,000 draws: within 3%
      if limit then
        assert.is_true(hi <= limit + mean and lo >= mean - limit)
        assert.is_true(hi > 0.99 * limit + mean)        -- the bound is reached (uniform)
      end
    end)
  end
  it("truncated normals lie within two standard deviations (glorot_normal, truncated_normal)", function()
    local w = kernel("glorot_normal", fan_in, fan_out)
    local sd = math.sqrt(2 / (fan_in + fan_out)) / 0.87962566103423978
    assert.is_true(w:abs():max():item() <= 2 * sd * (1 + 1e-12))
    local t = kernel({ "truncated_normal", stddev = 0.1, mean = 0.5 }, 50, 60)
    assert.is_true((t - 0.5):abs():max():item() <= 0.2 + 1e-12)
  end)
  it("orthogonal with gain: W^T W = gain^2 I (tall) and W W^T = gain^2 I (wide)", function()
    local tall = kernel({ "orthogonal", gain = 2 }, 7, 3)
    support.assert_close(mg.eye(3, support.F64) * 4, tall:transpose(1, 2):matmul(tall), 1e-12)
    local wide = nn.LSTMCell(3, 5, { recurrent_initializer = { "orthogonal", gain = 0.5 }, dtype = "float64" })
    local U = wide.recurrent_kernel                    -- (5, 20)
    support.assert_close(mg.eye(5, support.F64) * 0.25, U:matmul(U:transpose(1, 2)), 1e-12)
  end)
  it("identity, constant, zeros, ones", function()
    assert.are.same({ { 3, 0, 0 }, { 0, 3, 0 } }, kernel({ "identity", gain = 3 }, 2, 3):totable())
    assert.are.same({ { 1, 0 }, { 0, 1 }, { 0, 0 } }, kernel("identity", 3, 2):totable())
    assert.are.same({ { 2.5, 2.5 } }, kernel({ "constant", value = 2.5 }, 1, 2):totable())
    assert.are.same({ { 0, 0 } }, kernel("zeros", 1, 2):totable())
    assert.are.same({ { 1, 1 } }, kernel("ones", 1, 2):totable())
  end)
  it("the bias of an LSTM gets unit_forget_bias after any bias initializer", function()
    local c = nn.LSTMCell(2, 3, { bias_initializer = { "constant", value = 0.5 }, dtype = "float64" })
    assert.are.same({ 0.5, 0.5, 0.5, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5 }, c.bias:totable())
  end)
  it("rejects unknown names, parameters and bad values", function()
    assert_error("SimpleRNNCell: unknown initializer he_gaussian for kernel", kernel, "he_gaussian", 2, 3)
    assert_error("SimpleRNNCell: initializer orthogonal has no parameter 'scale'", kernel, { "orthogonal", scale = 2 }, 2, 3)
    assert_error("SimpleRNNCell: initializer orthogonal: parameter 'gain' must be a number, got a string",
      kernel, { "orthogonal", gain = "2" }, 2, 3)
    assert_error("variance_scaling mode must be fan_in, fan_out or fan_avg, got fan", kernel,
      { "variance_scaling", mode = "fan" }, 2, 3)
    assert_error("variance_scaling distribution must be", kernel, { "variance_scaling", distribution = "cauchy" }, 2, 3)
    assert_error("variance_scaling scale must be positive", kernel, { "variance_scaling", scale = -1.0 }, 2, 3)
    assert_error("Dense: unknown activation swoosh", nn.Dense, 2, 2, { activation = "swoosh" })
  end)
end)

describe("activations by name", function()
  -- each name against its formula in Lua, at points away from kinks
  local function sig(v) return 1 / (1 + math.exp(-v)) end
  local function softplus(v) return math.log(1 + math.exp(v)) end
  local SELU_A, SELU_S = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
  local function erf(v)                                 -- Taylor series; the asymptotic erfc past 3
    if math.abs(v) > 3 then
      local a, x2 = math.abs(v), v * v
      local erfc = math.exp(-x2) / (a * math.sqrt(math.pi))
        * (1 - 1 / (2 * x2) + 3 / (4 * x2 ^ 2) - 15 / (8 * x2 ^ 3) + 105 / (16 * x2 ^ 4))
      return v > 0 and 1 - erfc or erfc - 1
    end
    local s, term, n = 0, v, 0
    repeat
      s = s + term / (2 * n + 1)
      n = n + 1
      term = -term * v * v / n
    until math.abs(term) < 1e-17 and n > 5
    return 2 / math.sqrt(math.pi) * s
  end
  local F = {
    linear = function(v) return v end, relu = function(v) return math.max(v, 0) end, sigmoid = sig,
    tanh = math.tanh or function(v) return (math.exp(2 * v) - 1) / (math.exp(2 * v) + 1) end,
    softplus = softplus, softsign = function(v) return v / (1 + math.abs(v)) end,
    selu = function(v) return v > 0 and SELU_S * v or SELU_S * SELU_A * (math.exp(v) - 1) end,
    elu = function(v) return v > 0 and v or math.exp(v) - 1 end,
    exponential = math.exp,
    hard_sigmoid = function(v) return math.min(math.max(v + 3, 0), 6) / 6 end,
    gelu = function(v) return 0.5 * v * (1 + erf(v / math.sqrt(2))) end,
    silu = function(v) return v * sig(v) end, swish = function(v) return v * sig(v) end,
    mish = function(v) local e = math.exp(2 * softplus(v)) return v * (e - 1) / (e + 1) end,
    relu6 = function(v) return math.min(math.max(v, 0), 6) end,
    leaky_relu = function(v) return v > 0 and v or 0.2 * v end,
  }
  local xs = { -7.3, -3.5, -1.2, -0.4, 0.3, 1.1, 2.9, 6.6 }
  for name, f in pairs(F) do
    it(name, function()
      local d = nn.Dense(8, 8, { activation = name, kernel_initializer = "identity", dtype = "float64" })
      local y = d(mg.tensor({ xs }, support.F64)):totable()[1]
      for i, v in ipairs(xs) do assert.is_near(f(v), y[i], 1e-12 * math.max(1, math.abs(f(v)))) end
    end)
  end
  it("softmax and log_softmax act on the last dimension", function()
    local d = nn.Dense(3, 3, { activation = "softmax", kernel_initializer = "identity", dtype = "float64" })
    local y = d(mg.tensor({ { 1, 2, 3 } }, support.F64)):totable()[1]
    local z = math.exp(1) + math.exp(2) + math.exp(3)
    support.near({ math.exp(1) / z, math.exp(2) / z, math.exp(3) / z }, y, 1e-15)
    local l = nn.Dense(3, 3, { activation = "log_softmax", kernel_initializer = "identity", dtype = "float64" })
    support.near({ 1 - math.log(z), 2 - math.log(z), 3 - math.log(z) }, l(mg.tensor({ { 1, 2, 3 } }, support.F64)):totable()[1], 1e-14)
  end)
end)

describe("regularizers", function()
  local W = mg.tensor({ { 1, -2 }, { 0.5, 3 } }, support.F64)
  local L1, L2 = 6.5, 1 + 4 + 0.25 + 9
  local function penalty(spec)
    return nn.Dense(2, 2, { kernel_initializer = W, kernel_regularizer = spec, use_bias = false, dtype = "float64" }):losses()[1]:item()
  end
  it("l1, l2, l1_l2 with Keras's defaults and given factors", function()
    assert.is_near(0.01 * L1, penalty("l1"), 1e-15)
    assert.is_near(0.01 * L2, penalty("l2"), 1e-15)
    assert.is_near(0, penalty("l1_l2"), 0)              -- keras.regularizers.L1L2(): l1 = l2 = 0
    assert.is_near(0.3 * L1 + 0.1 * L2, penalty({ "l1_l2", l1 = 0.3, l2 = 0.1 }), 1e-14)
    assert.is_near(0.5 * L2, penalty({ "l2", l2 = 0.5 }), 1e-14)
    assert.is_near(5, penalty(function(w) return w:sum() * 2 end), 1e-14)   -- 2 * 2.5
  end)
  it("losses() lists every regularized weight of a layer, recorded under a tape", function()
    local cell = nn.LSTM(2, { kernel_regularizer = "l2", recurrent_regularizer = { "l1", l1 = 0.1 },
      bias_regularizer = "l1", input_size = 3, dtype = "float64" })
    local tape <close> = mg.GradientTape()
    local ls = cell:losses()
    assert.are.equal(3, #ls)
    local g = tape:gradient(ls[1] + ls[2] + ls[3], cell:parameters())
    local p = cell:parameters()
    support.assert_close(p[1] * 0.02, g[1], 1e-15)                -- d(0.01 sum w^2) = 0.02 w
    support.assert_close(mg.where(mg.gt(p[2], 0), 0.1, -0.1), g[2], 1e-15)
    assert.are.equal(0, #nn.LSTM(2):losses())
  end)
  it("activity_regularizer: the call's outputs, over the batch size (Keras 3)", function()
    local d = nn.Dense(2, 2, { kernel_initializer = W, use_bias = false, activity_regularizer = { "l1", l1 = 1.0 }, dtype = "float64" })
    local y = d(mg.tensor({ { 1, 1 }, { 0, 1 } }, support.F64))
    assert.is_near(y:abs():sum():item() / 2, d:losses()[1]:item(), 1e-15)
  end)
  it("rejects unknown names and parameters", function()
    assert_error("Dense: unknown kernel_regularizer l3", penalty, "l3")
    assert_error("Dense: kernel_regularizer l2 has no parameter 'l1'", penalty, { "l2", l1 = 0.1 })
  end)
end)

describe("constraints and the optimizer hook", function()
  local W = mg.tensor({ { 3, 0.1 }, { 4, -0.2 } }, support.F64)  -- column norms 5 and sqrt(0.05)
  local function constrained(spec)
    local d = nn.Dense(2, 2, { kernel_initializer = W, kernel_constraint = spec, use_bias = false, dtype = "float64" })
    d:apply_constraints()
    return d.kernel:totable()
  end
  local n2 = math.sqrt(0.05)
  it("max_norm, min_max_norm, non_neg, unit_norm (axis 1 = Keras's axis 0)", function()
    local e = 1e-7
    support.near({ { 3 * 2 / (5 + e), 0.1 * n2 / (n2 + e) }, { 4 * 2 / (5 + e), -0.2 * n2 / (n2 + e) } }, constrained("max_norm"), 1e-12)
    support.near({ { 3 / (5 + e), 0.1 / (n2 + e) }, { 4 / (5 + e), -0.2 / (n2 + e) } }, constrained("unit_norm"), 1e-12)
    support.near({ { 3, 0.1 }, { 4, 0 } }, constrained("non_neg"), 0)
    local d1 = 0.5 * 1.5 + 0.5 * 5                       -- rate 0.5: half clipped, half kept
    local d2 = 0.5 * 1 + 0.5 * n2
    support.near({ { 3 * d1 / (5 + e), 0.1 * d2 / (n2 + e) }, { 4 * d1 / (5 + e), -0.2 * d2 / (n2 + e) } },
      constrained({ "min_max_norm", min_value = 1.0, max_value = 1.5, rate = 0.5 }), 1e-12)
    local rn1, rn2 = math.sqrt(9.01), math.sqrt(16.04)   -- row norms (axis 2)
    support.near({ { 3 / (rn1 + e), 0.1 / (rn1 + e) }, { 4 / (rn2 + e), -0.2 / (rn2 + e) } },
      constrained({ "unit_norm", axis = 2 }), 1e-12)
  end)
  it("nn.constraint(v) gives each Variable's constraint; nn.apply_constraints(params) applies them", function()
    local l = nn.GRU(2, { kernel_constraint = "non_neg", recurrent_constraint = function(w) return w * 0 end,
      input_size = 3, dtype = "float64" })
    local p = l:parameters()
    assert.is_function(nn.constraint(p[1]))
    assert.is_function(nn.constraint(p[2]))
    assert.is_nil(nn.constraint(p[3]))
    local bias = p[3]:clone()
    -- an optimizer step, then the hook, as mg.optim's step does it
    local opt = mg.optim.SGD(p, { lr = 0.1 })
    local tape <close> = mg.GradientTape()
    local y = l(mg.randn(2, 4, 3, support.F64))
    opt:step(tape:gradient(y:sum(), p))
    nn.apply_constraints(p)
    assert.is_true(p[1]:min():item() >= 0)
    assert.are.equal(0, p[2]:abs():max():item())
    assert.is_true((p[3] - bias):abs():max():item() > 0)   -- unconstrained: only the step
  end)
  it("rejects unknown names", function()
    assert_error("Dense: unknown kernel_constraint positive", constrained, "positive")
    assert_error("Dense: kernel_constraint max_norm has no parameter 'max'", constrained, { "max_norm", max = 1.0 })
    assert_error("apply_constraints: expected an array of Variables", nn.apply_constraints, 3)
  end)
end)
