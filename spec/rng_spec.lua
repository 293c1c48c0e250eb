-- Random numbers (rng.c) and the Keras initializers (init.c): manual_seed reproducibility,
-- fixed first values for seed 42 (xoshiro256** seeded by splitmix64, the same on every
-- machine), the ranges and moments of rand/randn/uniform, glorot_uniform's bound and
-- orthogonal's orthonormal rows or columns.
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises
local close = support.closeness { tolerance = "relative" }

describe("manual_seed", function()
  it("gives the same numbers for the same seed", function()
    for _, f in ipairs {
      function() return mg.rand(3, 4) end, function() return mg.randn(5, F64) end,
      function() return mg.uniform({ 2, 2 }, -3, 3) end, function() return mg.rand(7, F64) end,
    } do
      mg.manual_seed(123)
      local x = f():totable()
      mg.manual_seed(123)
      assert.are.same(x, f():totable())
    end
  end)

  it("continues the sequence, and different seeds differ", function()
    mg.manual_seed(1)
    local a, b = mg.rand(8, F64):totable(), mg.rand(8, F64):totable()
    assert.are_not.same(a, b)
    mg.manual_seed(2)
    assert.are_not.same(a, mg.rand(8, F64):totable())
    mg.manual_seed(2 ^ 62)
    assert.are_not.same(a, mg.rand(8, F64):totable())
  end)

  it("fills in C order, whatever the shape", function()
    mg.manual_seed(5)
    local flat = mg.randn(6, F64):totable()
    mg.manual_seed(5)
    local m = mg.randn(2, 3, F64)
    assert.are.same(flat, m:reshape(-1):totable())
  end)

  it("gives these first values for seed 42 on every machine", function()
    mg.manual_seed(42)   -- float64: the top 53 bits of each xoshiro256** output
    assert.are.same({ 0.083862971059882163, 0.37898025066266861, 0.68004341102813937,
                      0.92469294532538759 }, mg.rand(4, F64):totable())
    mg.manual_seed(42)   -- float32: the top 24 bits, so exact too
    assert.are.same({ 0.083862960338592529, 0.37898021936416626, 0.68004339933395386,
                      0.92469292879104614 }, mg.rand(4):totable())
    mg.manual_seed(42)   -- lo + (hi - lo) u
    close({ -1.6645481157604713, -0.48407899734932558, 0.72017364411255747,
            1.6987717813015504 }, mg.uniform(4, -2, 2, F64):totable(), 1e-15)
    mg.manual_seed(42)   -- Box-Muller through libm: equal to the last bits or nearly
    close({ -0.30326306467873798, 0.28846173882942383, 1.3438117634372806,
            -0.6879751798977497 }, mg.randn(4, F64):totable(), 1e-13)
  end)

  it("rejects a seed that is not an integer", function()
    raises(function() mg.manual_seed("x") end, "manual_seed", "number expected")
    raises(function() mg.manual_seed(1.5) end, "manual_seed", "integer")
  end)
end)

describe("distributions", function()
  local N = 100000

  it("rand is in [0, 1) with mean 1/2 and variance 1/12", function()
    mg.manual_seed(11)
    for _, opt in ipairs { F64, { dtype = "float32" } } do
      local x = mg.rand(N, opt)
      assert.are.equal(opt.dtype, x.dtype)
      assert.is_true(x:min():item() >= 0)
      assert.is_true(x:max():item() < 1)
      close(0.5, x:to("float64"):mean():item(), 0.01)
      close(1 / 12, x:to("float64"):var():item(), 0.01)
    end
  end)

  it("randn has mean 0 and standard deviation 1", function()
    mg.manual_seed(12)
    for _, opt in ipairs { F64, { dtype = "float32" } } do
      local x = mg.randn(N, opt):to("float64")
      assert.is_true(math.abs(x:mean():item()) < 0.02)
      assert.is_true(math.abs(x:std():item() - 1) < 0.02)
      local tail = mg.gt(x:abs(), 3):mean():item()           -- P(|z| > 3) = 0.0027
      assert.is_true(tail > 0.0015 and tail < 0.004, "tail fraction " .. tail)
    end
  end)

  it("uniform stays in [lo, hi)", function()
    mg.manual_seed(13)
    local x = mg.uniform({ 100, 1000 }, -3, 5, F64)
    assert.are.same({ 100, 1000 }, x:shape())
    assert.is_true(x:min():item() >= -3)
    assert.is_true(x:max():item() < 5)
    close(1, x:mean():item(), 0.02)
    local y = mg.uniform(1000, 2, 2)
    assert.are.equal(2, y:min():item())
    assert.are.equal(2, y:max():item())
  end)

  it("uniform in float32 never rounds up to hi", function()
    mg.manual_seed(14)          -- 100 + u rounds to 101 about once in 2^18 draws unless guarded
    local x = mg.uniform(4000000, 100, 101, { dtype = "float32" })
    assert.are.equal(0, mg.ge(x, 101):sum():item())
    assert.is_true(x:min():item() >= 100)
  end)

  it("take shapes as varargs or a table, and the dtype option", function()
    assert.are.same({ 2, 3 }, mg.rand(2, 3):shape())
    assert.are.same({ 2, 3 }, mg.randn { 2, 3 }:shape())
    assert.are.equal("float64", mg.randn({ 2, 3 }, F64).dtype)
    assert.are.equal("float64", mg.uniform({ 2 }, 0, 1, F64).dtype)
    assert.are.equal("float64", mg.uniform(2, 3, 0, 1, F64).dtype)
    assert.are.same({ 2, 3 }, mg.uniform(2, 3, 0, 1):shape())
    assert.are.equal(0, mg.rand():dim())
  end)

  it("reject bad arguments, naming the function", function()
    raises(function() return mg.uniform(3, 2, -2) end, "uniform", "lo 2.0 is greater than hi -2.0")
    raises(function() return mg.uniform(3) end, "uniform", "expected shape, lo, hi")
    raises(function() return mg.rand(-1) end, "rand", "negative size -1")
    raises(function() return mg.randn(2, "x") end, "randn", "string")
    raises(function() return mg.rand(2, { dtype = "int8" }) end, "rand", "int8")
  end)
end)

-- a^T a (or a a^T) as a Lua table
local function gram(q, left)
  local t = left and q:transpose(1, 2) or q
  return mg.matmul(t, left and q or q:transpose(1, 2)):totable()
end

local function eye(n, g)
  local e = {}
  for i = 1, n do
    e[i] = {}
    for j = 1, n do e[i][j] = i == j and (g or 1) ^ 2 or 0 end
  end
  return e
end

describe("glorot_uniform", function()
  it("draws uniformly within sqrt(6 / (fan_in + fan_out))", function()
    mg.manual_seed(21)
    for _, s in ipairs { { 300, 200 }, { 64, 512 }, { 1, 1 } } do
      local w = mg.glorot_uniform(s[1], s[2], F64)
      local bound = math.sqrt(6 / (s[1] + s[2]))
      assert.are.same(s, w:shape())
      assert.are.equal("float64", w.dtype)
      assert.is_true(w:abs():max():item() <= bound)
      if w:numel() > 1000 then
        assert.is_true(w:abs():max():item() > 0.99 * bound)
        assert.is_true(math.abs(w:mean():item()) < 0.01 * bound)
        close(bound ^ 2 / 3, w:var():item(), 0.05)
      end
    end
    assert.are.equal("float32", mg.glorot_uniform(3, 4).dtype)
  end)

  it("is reproducible under a seed", function()
    mg.manual_seed(3)
    local a = mg.glorot_uniform(4, 5):totable()
    mg.manual_seed(3)
    assert.are.same(a, mg.glorot_uniform(4, 5):totable())
  end)

  it("rejects bad sizes and options", function()
    raises(function() return mg.glorot_uniform(-1, 2) end, "glorot_uniform", "negative size -1")
    raises(function() return mg.glorot_uniform(2) end, "glorot_uniform", "integer size expected")
    raises(function() return mg.glorot_uniform(2, 2, { dtype = "int" }) end, "glorot_uniform", "int")
    raises(function() return mg.glorot_uniform(2, 2, 5) end, "glorot_uniform", "table expected")
  end)
end)

describe("orthogonal", function()
  it("has orthonormal columns when rows >= cols and orthonormal rows otherwise", function()
    mg.manual_seed(22)
    for _, s in ipairs { { 6, 6 }, { 7, 3 }, { 3, 7 }, { 1, 5 }, { 5, 1 } } do
      local r, c = s[1], s[2]
      local q = mg.orthogonal(r, c, F64)
      assert.are.same(s, q:shape())
      if r >= c then close(eye(c), gram(q, true), 1e-12) end
      if r <= c then close(eye(r), gram(q, false), 1e-12) end
    end
  end)

  it("scales by gain, given in a table or as a number", function()
    mg.manual_seed(23)
    close(eye(4, 2.5), gram(mg.orthogonal(4, 4, { gain = 2.5 }, F64), true), 1e-12)
    close(eye(3, 0.5), gram(mg.orthogonal(3, 5, 0.5, F64), false), 1e-12)
    close(eye(2, 3), gram(mg.orthogonal(5, 2, { gain = 3, dtype = "float64" }), true), 1e-12)
  end)

  it("works in float32 and is reproducible under a seed", function()
    mg.manual_seed(24)
    local q = mg.orthogonal(8, 4)
    assert.are.equal("float32", q.dtype)
    close(eye(4), gram(q, true), 1e-5)
    mg.manual_seed(24)
    assert.are.same(q:totable(), mg.orthogonal(8, 4):totable())
  end)

  it("is not the same matrix for every seed", function()
    mg.manual_seed(25)
    local a = mg.orthogonal(3, 3, F64):totable()
    mg.manual_seed(26)
    assert.are_not.same(a, mg.orthogonal(3, 3, F64):totable())
  end)

  it("rejects bad sizes and options", function()
    raises(function() return mg.orthogonal(2, -3) end, "orthogonal", "negative size -3")
    raises(function() return mg.orthogonal(2, 2, { gain = "x" }) end, "orthogonal", "gain must be a number")
    raises(function() return mg.orthogonal(2, 2, {}, { dtype = "x" }) end, "orthogonal", "dtype")
    raises(function() return mg.orthogonal(50000, 2) end, "orthogonal", "too large")
  end)
end)
