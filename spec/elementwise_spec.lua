-- Elementwise math (elementwise.c): arithmetic with numbers on either side, NumPy broadcasting
-- (size-1, missing and 0-d dims, empty tensors), float64 promotion, the math functions,
-- clamp, where, maximum/minimum and the 0/1 comparisons.
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises
local close = support.closeness { tolerance = "relative", nonfinite = true }

-- Lua's f applied to every element of a nested table
local function map(t, f)
  if type(t) ~= "table" then return f(t) end
  local r = {}
  for i, v in ipairs(t) do r[i] = map(v, f) end
  return r
end

describe("arithmetic", function()
  local a
  before_each(function() a = mg.tensor { { 1, 2, 3 }, { 4, 5, 6 } } end)

  it("tensor op tensor", function()
    local b = mg.tensor { { 6, 5, 4 }, { 3, 2, 1 } }
    assert.are.same({ { 7, 7, 7 }, { 7, 7, 7 } }, (a + b):totable())
    assert.are.same({ { -5, -3, -1 }, { 1, 3, 5 } }, (a - b):totable())
    assert.are.same({ { 6, 10, 12 }, { 12, 10, 6 } }, (a * b):totable())
    assert.are.same({ { 0.5, 1, 1.5 }, { 4, 5, 12 } }, (a / mg.tensor { { 2, 2, 2 }, { 1, 1, 0.5 } }):totable())
    assert.are.same({ { 1, 32, 81 }, { 64, 25, 6 } }, (a ^ b):totable())
    assert.are.same({ { -1, -2, -3 }, { -4, -5, -6 } }, (-a):totable())
  end)

  it("numbers on either side", function()
    assert.are.same({ { 2, 3, 4 }, { 5, 6, 7 } }, (a + 1):totable())
    assert.are.same({ { 2, 3, 4 }, { 5, 6, 7 } }, (1 + a):totable())
    assert.are.same({ { 0, 1, 2 }, { 3, 4, 5 } }, (a - 1):totable())
    assert.are.same({ { 0, -1, -2 }, { -3, -4, -5 } }, (1 - a):totable())
    assert.are.same({ { 2, 4, 6 }, { 8, 10, 12 } }, (2 * a):totable())
    assert.are.same({ { 0.5, 1, 1.5 }, { 2, 2.5, 3 } }, (a / 2):totable())
    assert.are.same({ { 12, 6, 4 }, { 3, 2.4000000953674316, 2 } }, (12 / a):totable())
    assert.are.same({ { 1, 4, 9 }, { 16, 25, 36 } }, (a ^ 2):totable())
    assert.are.same({ { 2, 4, 8 }, { 16, 32, 64 } }, (2 ^ a):totable())
    assert.are.same({ 3, 2, 1 }, mg.sub(4, mg.tensor { 1, 2, 3 }):totable())
  end)

  it("the function forms match the operators", function()
    local b = mg.tensor { 1, 2, 3 }
    assert.are.same((a + b):totable(), mg.add(a, b):totable())
    assert.are.same((a - b):totable(), a:sub(b):totable())
    assert.are.same((a * 3):totable(), mg.mul(a, 3):totable())
    assert.are.same((a / b):totable(), mg.div(a, b):totable())
    assert.are.same((a ^ 0.5):totable(), a:pow(0.5):totable())
    assert.are.same((-a):totable(), mg.neg(a):totable())
  end)

  it("leaves the operands alone", function()
    local b = a:clone()
    local _ = a + a * 2 - a / 3
    assert.are.same(b:totable(), a:totable())
  end)

  it("follows IEEE for division by zero and bad powers", function()
    close({ math.huge, -math.huge, 0 / 0 }, (mg.tensor { 1, -1, 0 } / 0):totable())
    close({ 0 / 0, 1 }, (mg.tensor { -2, 0 } ^ mg.tensor { 0.5, 0 }):totable())
  end)

  it("rejects operands that are not tensors or numbers, naming the op", function()
    raises(function() return a + "x" end, "add", "tensor or number", "string")
    raises(function() return {} * a end, "mul", "tensor or number", "table")
    raises(function() return mg.add(1, 2) end, "add", "tensor")
    raises(function() return a - true end, "sub", "boolean")
    raises(function() return a / nil end, "div", "nil")
    raises(function() return mg.pow(a, "2x") end, "pow", "string")
  end)

  -- operands are told apart by their size and owner, not their metatable (ltensor.c testslot)
  it("rejects other userdata and released tensors, naming the op", function()
    local tape <close> = mg.GradientTape()
    tape:stop()
    for _, u in ipairs { io.stdout, tape, io.stderr } do
      raises(function() return a + u end, "add", "operand 2", "userdata")
      raises(function() return u * a end, "mul", "operand 1", "userdata")
    end
    local released = mg.zeros(3)
    getmetatable(released).__close(released)
    raises(function() return a + released end, "add", "operand 2 is a released tensor")
    raises(function() return getmetatable(a).__gc(io.stdout) end, "moongrad.Tensor expected")
    raises(function() return getmetatable(a).__close(tape) end, "moongrad.Tensor expected")
    assert.are.same({ { 2, 4, 6 }, { 8, 10, 12 } }, (a + a):totable())
  end)
end)

-- Operands of one dtype and shape, both dense (contiguous, any stride on a size-1 dim, any
-- offset), take one kernel call over the buffers (elementwise.c, binary_dense); every other
-- pair takes the broadcasting iterator. Both give the same bits.
describe("the dense path", function()
  local KERNELS = { "add", "sub", "mul", "div", "pow", "maximum", "minimum",
                    "eq", "ne", "lt", "le", "gt", "ge" }
  local support_bits = support.bits

  -- the values of contiguous 'v' as other layouts: transposed, expanded from a copy, strided
  -- (every other element of a larger storage), and dense ones: narrowed along dim 1 (an
  -- offset), a size-1 dim with an odd stride
  local function layouts(v)
    local out = { strided = v:unsqueeze(1):expand(2, table.unpack(v:shape())):contiguous():select(1, 2) }
    if v:dim() >= 2 then
      out.transposed = v:transpose(1, 2):contiguous():transpose(1, 2)
    end
    local pad = mg.cat({ mg.full(v:shape(), 0 / 0, { dtype = v.dtype }), v }, 1)   -- NaN, then v
    out.offset = pad:narrow(1, v:shape()[1] + 1, v:shape()[1])     -- dense, offset > 0
    out.unit = v:unsqueeze(1)                                      -- a size-1 dim in front
    out.wide = mg.stack({ v, v }, v:dim() + 1):select(v:dim() + 1, 1)   -- stride 2: not dense
    return out
  end

  it("gives the broadcasting iterator's bits for every kernel, float32 and float64", function()
    mg.manual_seed(7)
    for _, dt in ipairs { "float32", "float64" } do
      for _, shape in ipairs { { 16 }, { 3, 5 }, { 2, 1, 4 }, { 1 } } do
        local a = mg.rand(shape, { dtype = dt }) + 0.5
        local b = mg.rand(shape, { dtype = dt }) * 2 - 1
        b = mg.where(mg.gt(mg.rand(shape, { dtype = dt }), 0.7), a, b)   -- ties for eq, le, ...
        local la, lb = layouts(a), layouts(b)
        for _, k in ipairs(KERNELS) do
          local want = support_bits(mg[k](a, b))
          for name, x in pairs(la) do
            local msg = k .. " " .. dt .. " " .. mg.shapestr(a) .. " " .. name
            local r, rb = mg[k](x, lb[name]), mg[k](x, b)            -- unit: one more dim
            assert.are.equal(want, support_bits(r:reshape(shape)), msg)
            assert.are.equal(want, support_bits(rb:reshape(shape)), msg .. " with a contiguous b")
          end
        end
      end
    end
  end)

  it("is taken for 0-d, empty and size-1 operands too, and not for two dtypes", function()
    assert.are.equal(12, (mg.tensor(3) * mg.tensor(4)):item())
    assert.are.same({ 0, 3 }, (mg.ones(0, 3) + mg.ones(0, 3)):shape())
    local y = mg.ones(2, { dtype = "float32" }) + mg.full({ 2 }, 0.5, F64)
    assert.are.equal("float64", y.dtype)
    assert.are.same({ 1.5, 1.5 }, y:totable())
  end)
end)

describe("broadcasting", function()
  it("stretches size-1 and missing leading dims", function()
    local a = mg.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    assert.are.same({ { 11, 22, 33 }, { 14, 25, 36 } }, (a + mg.tensor { 10, 20, 30 }):totable())
    assert.are.same({ { 11, 12, 13 }, { 24, 25, 26 } }, (a + mg.tensor { { 10 }, { 20 } }):totable())
    assert.are.same({ { 11, 22, 33 }, { 14, 25, 36 } }, (mg.tensor { { 10, 20, 30 } } + a):totable())
    local outer = mg.tensor { { 1 }, { 2 }, { 3 } } * mg.tensor { { 1, 10 } }
    assert.are.same({ { 1, 10 }, { 2, 20 }, { 3, 30 } }, outer:totable())
    local c = mg.ones(2, 1, 3) + mg.zeros(4, 1)
    assert.are.same({ 2, 4, 3 }, c:shape())
    assert.are.equal(24, c:sum():item())
  end)

  it("treats 0-d tensors as scalars on either side", function()
    local a = mg.tensor { { 1, 2 }, { 3, 4 } }
    assert.are.same({ { 101, 102 }, { 103, 104 } }, (a + mg.tensor(100)):totable())
    assert.are.same({ { 99, 98 }, { 97, 96 } }, (mg.tensor(100) - a):totable())
    local s = mg.tensor(3) * mg.tensor(4)
    assert.are.equal(0, s:dim())
    assert.are.equal(12, s:item())
    assert.are.equal(0, (mg.tensor(3) + 1):dim())
    assert.are.same({ 1 }, (mg.tensor(3) + mg.tensor { 1 }):shape())
  end)

  it("handles empty tensors", function()
    assert.are.same({ 0, 3 }, (mg.ones(0, 3) + mg.ones(3)):shape())
    assert.are.same({ 0, 3 }, (mg.ones(0, 1) * mg.ones(1, 3)):shape())
    assert.are.same({ 2, 0 }, (mg.ones(2, 1) + mg.ones(0)):shape())
  end)

  it("works on non-contiguous and expanded operands", function()
    local m = mg.arange(6):reshape(2, 3)
    local t = m:transpose(1, 2)                                  -- (3,2), strides (1,3)
    assert.are.same({ { 0, 6 }, { 2, 8 }, { 4, 10 } }, (t + t):totable())
    assert.are.same({ { 0, 3 }, { 2, 5 }, { 4, 7 } }, (t + mg.tensor { { 0 }, { 1 }, { 2 } }):totable())
    local e = mg.tensor { 1, 2 }:expand(3, 2)
    assert.are.same({ { 1, 5 }, { 2, 6 }, { 3, 7 } }, (t + e):totable())
    local n = mg.arange(12):reshape(3, 4):narrow(2, 2, 2)      -- rows with a gap
    assert.are.same({ { 2, 4 }, { 10, 12 }, { 18, 20 } }, (n * 2):totable())
  end)

  it("rejects shapes that do not broadcast, naming the op and both shapes", function()
    raises(function() return mg.ones(2, 3) + mg.ones(2) end, "add", "(2,3)", "(2)", "broadcast")
    raises(function() return mg.ones(2, 3) * mg.ones(3, 2) end, "mul", "(2,3)", "(3,2)")
    raises(function() return mg.ones(4) - mg.ones(0) end, "sub", "(4)", "(0)")
    raises(function() return mg.ones(2, 3, 4) / mg.ones(3, 3, 4) end, "div", "(2,3,4)", "(3,3,4)")
    raises(function() return mg.maximum(mg.ones(2), mg.ones(3)) end, "maximum", "(2)", "(3)")
    raises(function() return mg.lt(mg.ones(2), mg.ones(3)) end, "lt", "(2)", "(3)")
  end)
end)

-- the float32 nearest to x, as a Lua number
local function f32(x) return (string.unpack("f", string.pack("f", x))) end

describe("dtypes", function()
  it("promote mixed float32/float64 to float64, on either side", function()
    local f, d = mg.tensor { 0.5, 0.1 }, mg.tensor({ 0.25, 0.1 }, F64)
    for _, r in ipairs { f + d, d + f, f * d, d - f, f / d, d ^ f, mg.maximum(f, d),
                         mg.minimum(d, f), mg.eq(f, d), mg.where(mg.tensor { 1, 0 }, f, d) } do
      assert.are.equal("float64", r.dtype)
    end
    local s = f + d
    assert.are.equal(0.75, s:get(1))
    assert.are.equal(f32(0.1) + 0.1, s:get(2))           -- the float32 value, exactly widened
    assert.are.same({ 0, 0 }, mg.eq(f, d):totable())     -- f32(0.1) ~= 0.1
  end)

  it("numbers take the tensor's dtype", function()
    assert.are.equal("float32", (mg.tensor { 1 } + 0.1).dtype)
    assert.are.equal(f32(1 + f32(0.1)), (mg.tensor { 1 } + 0.1):item())
    assert.are.equal("float64", (0.1 + mg.tensor({ 1 }, F64)).dtype)
  end)

  it("keeps float64 exact", function()
    local x = mg.tensor({ 0.1, 1 / 3, 1e-300, 2 ^ 53 }, F64)
    assert.are.same({ 0.1 + 0.2, 1 / 3 + 0.2, 1e-300 + 0.2, 2 ^ 53 + 0.2 }, (x + 0.2):totable())
    assert.are.same({ 0.1 * 3, 1 / 3 * 3, 1e-300 * 3, 2 ^ 53 * 3 }, (x * 3):totable())
    assert.are.same({ 0.1 / 7, 1 / 3 / 7, 1e-300 / 7, 2 ^ 53 / 7 }, (x / 7):totable())
    assert.are.same({ 1 - 0.1, 1 - 1 / 3, 1 - 1e-300, 1 - 2 ^ 53 }, (1 - x):totable())
    local y = mg.tensor({ 2 ^ 53, 1 }, F64) + mg.tensor({ 1, 2 ^ -52 }, F64)
    assert.are.same({ 2 ^ 53, 1 + 2 ^ -52 }, y:totable())
  end)
end)

describe("math functions", function()
  local xs = { -3, -0.5, 0, 0.25, 1, 2.5 }
  local pos = { 0.01, 0.5, 1, 2, 10 }
  local function sigmoid(v) return 1 / (1 + math.exp(-v)) end
  local function softplus(v) return math.log(1 + math.exp(v)) end
  local function tanh(v) local e = math.exp(2 * v) return (e - 1) / (e + 1) end
  local cases = {
    { "exp", math.exp, xs }, { "log", math.log, pos }, { "tanh", tanh, xs },
    { "sigmoid", sigmoid, xs }, { "relu", function(v) return math.max(v, 0) end, xs },
    { "abs", math.abs, xs }, { "sqrt", math.sqrt, pos }, { "sin", math.sin, xs },
    { "cos", math.cos, xs }, { "softplus", softplus, xs },
  }
  for _, c in ipairs(cases) do
    local name, f, input = c[1], c[2], c[3]
    it(name .. " matches the hand values in float64 and float32, as function and method", function()
      local want = map(input, f)
      close(want, mg[name](mg.tensor(input, F64)):totable(), 1e-14)
      close(want, mg.tensor(input, F64)[name](mg.tensor(input, F64)):totable(), 1e-14)
      local y = mg[name](mg.tensor(input))
      assert.are.equal("float32", y.dtype)
      close(want, y:totable(), 1e-6)
      assert.are.equal(0, mg[name](mg.tensor(0.5)):dim())
      local t = mg.tensor({ input, input }, F64):transpose(1, 2)      -- strided
      close(map({ input, input }, f), mg[name](t):transpose(1, 2):totable(), 1e-14)
    end)
  end

  it("sigmoid and softplus do not overflow at large inputs", function()
    for _, opt in ipairs { F64, { dtype = "float32" } } do
      local s = mg.sigmoid(mg.tensor({ -1000, -50, 50, 1000 }, opt)):totable()
      close({ 0, sigmoid(-50), 1, 1 }, s, 1e-6)
      local p = mg.softplus(mg.tensor({ -1000, -50, 50, 1000 }, opt)):totable()
      close({ 0, math.exp(-50), 50, 1000 }, p, 1e-6)
    end
  end)

  it("log, sqrt and division give IEEE results outside their domain", function()
    close({ -math.huge, 0 / 0 }, mg.log(mg.tensor { 0, -1 }):totable())
    close({ 0 / 0 }, mg.sqrt(mg.tensor { -1 }):totable())
    close({ math.huge }, mg.exp(mg.tensor { 1000 }):totable())
  end)

  it("sign", function()
    assert.are.same({ -1, 0, 1 }, mg.sign(mg.tensor { -2, 0, 3 }):totable())
  end)

  it("reject non-tensors, naming the function", function()
    raises(function() return mg.exp(3) end, "exp", "moongrad.Tensor expected, got number")
    raises(function() return mg.tanh("x") end, "tanh", "moongrad.Tensor expected, got string")
    raises(function() return mg.relu() end, "relu", "no value")
  end)
end)

describe("clamp", function()
  it("bounds from below and above", function()
    local x = mg.tensor { -2, -0.5, 0.5, 3 }
    assert.are.same({ -1, -0.5, 0.5, 1 }, mg.clamp(x, -1, 1):totable())
    assert.are.same({ 0, 0, 0.5, 3 }, mg.clamp(x, 0):totable())
    assert.are.same({ -2, -0.5, 0, 0 }, x:clamp(nil, 0):totable())
    assert.are.same({ 2, 2, 2, 2 }, x:clamp(2, 2):totable())
  end)

  it("rejects lo > hi, naming both", function()
    raises(function() return mg.clamp(mg.tensor { 1 }, 1, -1) end, "clamp", "min 1", "max -1")
    raises(function() return mg.clamp(mg.tensor { 1 }, "a") end, "clamp", "number")
  end)
end)

describe("where", function()
  it("picks from a where the condition is non-zero, from b elsewhere", function()
    local c = mg.tensor { 1, 0, 2, -1 }
    assert.are.same({ 1, -2, 3, 4 },
                    mg.where(c, mg.tensor { 1, 2, 3, 4 }, mg.tensor { -1, -2, -3, -4 }):totable())
    assert.are.same({ 5, -2, 5, 5 }, mg.where(c, 5, mg.tensor { -1, -2, -3, -4 }):totable())
    assert.are.same({ 1, 7, 3, 4 }, mg.where(c, mg.tensor { 1, 2, 3, 4 }, 7):totable())
    assert.are.same({ 5, 6, 5, 5 }, mg.where(c, 5, 6):totable())
  end)

  it("tests the condition in its own dtype", function()
    local c = mg.tensor({ 1e-300, 0, 0 / 0 }, F64)              -- 1e-300 is 0 in float32
    assert.are.same({ 1, 0, 1 }, mg.where(c, mg.ones(3), mg.zeros(3)):totable())
    assert.are.equal("float32", mg.where(c, mg.ones(3), mg.zeros(3)).dtype)
  end)

  it("broadcasts all three", function()
    local r = mg.where(mg.tensor { { 1 }, { 0 } }, mg.tensor { 1, 2, 3 }, mg.tensor(0))
    assert.are.same({ { 1, 2, 3 }, { 0, 0, 0 } }, r:totable())
    local masked = mg.where(mg.gt(mg.tensor { -1, 2 }, 0), mg.tensor { -1, 2 }, 0)
    assert.are.same({ 0, 2 }, masked:totable())
  end)

  it("rejects shapes that do not broadcast, naming all three", function()
    raises(function() return mg.where(mg.tensor { 1, 0 }, mg.tensor { 1, 2, 3 }, 0) end,
           "where", "(2)", "(3)", "()")
    raises(function() return mg.where(1, 2, 3) end, "where", "moongrad.Tensor expected")
    raises(function() return mg.where(mg.tensor { 1 }, "a", 2) end, "where", "tensor or number")
  end)
end)

describe("maximum and minimum", function()
  it("are elementwise with broadcasting and numbers", function()
    local a = mg.tensor { { 1, 5, 3 }, { 4, 2, 6 } }
    assert.are.same({ { 3, 5, 3 }, { 4, 3, 6 } }, mg.maximum(a, 3):totable())
    assert.are.same({ { 1, 2, 3 }, { 2, 2, 6 } }, mg.minimum(a, mg.tensor { 2, 2, 7 }):totable())
    assert.are.same({ { 1, 3, 3 }, { 3, 2, 3 } }, mg.minimum(3, a):totable())
    assert.are.same({ { 2, 5, 3 }, { 4, 2, 6 } }, a:maximum(mg.tensor { 2 }):totable())
  end)

  it("propagate nan, as NumPy", function()
    close({ 0 / 0, 0 / 0 }, mg.maximum(mg.tensor { 0 / 0, 1 }, mg.tensor { 1, 0 / 0 }):totable())
    close({ 0 / 0 }, mg.minimum(mg.tensor { 0 / 0 }, 1):totable())
  end)
end)

describe("comparisons", function()
  local a = mg.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
  local cases = {
    eq = { { 0, 1, 0 }, { 0, 0, 0 } }, ne = { { 1, 0, 1 }, { 1, 1, 1 } },
    lt = { { 1, 0, 0 }, { 0, 0, 0 } }, le = { { 1, 1, 0 }, { 0, 0, 0 } },
    gt = { { 0, 0, 1 }, { 1, 1, 1 } }, ge = { { 0, 1, 1 }, { 1, 1, 1 } },
  }
  for name, want in pairs(cases) do
    it(name .. " gives 0/1 with numbers, tensors and broadcasting", function()
      assert.are.same(want, mg[name](a, 2):totable())
      assert.are.same(want, mg[name](a, mg.tensor { 2, 2, 2 }):totable())
      assert.are.same(want, mg[name](a, mg.tensor(2, F64)):totable())
      assert.are.equal("float32", mg[name](a, 2).dtype)
    end)
  end

  it("put the number on the left as given", function()
    assert.are.same({ 1, 0, 0 }, mg.gt(2, mg.tensor { 1, 2, 3 }):totable())
    assert.are.same({ 0, 1, 0 }, mg.eq(2, mg.tensor { 1, 2, 3 }):totable())
  end)

  it("treat nan as unequal to everything", function()
    assert.are.same({ 0, 1, 0, 0 }, {
      mg.eq(mg.tensor { 0 / 0 }, 0 / 0):item(), mg.ne(mg.tensor { 0 / 0 }, 0 / 0):item(),
      mg.lt(mg.tensor { 0 / 0 }, 1):item(), mg.ge(mg.tensor { 0 / 0 }, 1):item() })
  end)
end)

describe("math functions of issue 12", function()
  local xs = { -3, -2.5, -1, -0.5, 0, 0.25, 1, 2.5, 7 }
  local pos = { 0.01, 0.5, 1, 2, 10 }
  local nonzero = { -3, -0.5, 0.25, 1, 2.5 }
  local small = { -3, -2.5, -1, -0.5, 0, 0.25, 1, 2.5 }              -- where the series below holds
  local ALPHA, SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
  -- erf by its Maclaurin series (|x| <= 3 here: the terms stay below 1e4, so ~1e-12 absolute)
  local function erf(v)
    local term, sum = v, v
    for n = 1, 120 do
      term = -term * v * v / n
      sum = sum + term / (2 * n + 1)
    end
    return 2 / math.sqrt(math.pi) * sum
  end
  local function sigmoid(v) return 1 / (1 + math.exp(-v)) end
  local function tanh(v) local e = math.exp(2 * v) return (e - 1) / (e + 1) end
  local function softplus(v) return math.log(1 + math.exp(v)) end
  local function clip(v, lo, hi) return math.min(math.max(v, lo), hi) end
  local function round_even(v)
    local f = math.floor(v)
    if v - f ~= 0.5 then return math.floor(v + 0.5) end
    return f % 2 == 0 and f or f + 1
  end
  local function trunc(v) return v < 0 and math.ceil(v) or math.floor(v) end
  local k = math.sqrt(2 / math.pi)
  -- { name, Lua formula, inputs, float64 tolerance, extra arguments }
  local cases = {
    { "erf", erf, small, 1e-11 }, { "erfc", function(v) return 1 - erf(v) end, small, 1e-11 },
    { "selu", function(v) return v > 0 and SCALE * v or SCALE * ALPHA * (math.exp(v) - 1) end, xs, 1e-14 },
    { "silu", function(v) return v * sigmoid(v) end, xs, 1e-14 },
    { "swish", function(v) return v * sigmoid(v) end, xs, 1e-14 },
    { "mish", function(v) return v * tanh(softplus(v)) end, xs, 1e-14 },
    { "softsign", function(v) return v / (1 + math.abs(v)) end, xs, 1e-15 },
    { "hard_tanh", function(v) return clip(v, -1, 1) end, xs, 0 },
    { "relu6", function(v) return clip(v, 0, 6) end, xs, 0 },
    { "log1p", function(v) return math.log(1 + v) end, pos, 1e-14 },
    { "expm1", function(v) return math.exp(v) - 1 end, xs, 1e-14 },
    { "tan", math.tan, { -1.2, -0.5, 0, 0.25, 1 }, 1e-14 }, { "atan", math.atan, xs, 1e-15 },
    { "asinh", function(v) return v < 0 and -math.log(-v + math.sqrt(v * v + 1)) or math.log(v + math.sqrt(v * v + 1)) end, xs, 1e-14 },
    { "sinh", function(v) return (math.exp(v) - math.exp(-v)) / 2 end, xs, 1e-14 },
    { "cosh", function(v) return (math.exp(v) + math.exp(-v)) / 2 end, xs, 1e-14 },
    { "square", function(v) return v * v end, xs, 0 },
    { "reciprocal", function(v) return 1 / v end, nonzero, 1e-16 },
    { "rsqrt", function(v) return 1 / math.sqrt(v) end, pos, 1e-15 },
    { "exp2", function(v) return 2 ^ v end, xs, 1e-15 },
    { "log2", function(v) return math.log(v, 2) end, pos, 1e-15 },
    { "log10", function(v) return math.log(v, 10) end, pos, 1e-15 },
    { "floor", math.floor, xs, 0 }, { "ceil", math.ceil, xs, 0 },
    { "round", round_even, { -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.51, 3.7 }, 0 },
    { "trunc", trunc, xs, 0 },
    { "sign", function(v) return v > 0 and 1 or (v < 0 and -1 or 0) end, xs, 0 },
    { "gelu", function(v) return 0.5 * v * (1 + erf(v / math.sqrt(2))) end, small, 1e-11 },
    { "gelu", function(v) return 0.5 * v * (1 + tanh(k * (v + 0.044715 * v ^ 3))) end, xs, 1e-14, { "tanh" } },
    { "gelu", function(v) return 0.5 * v * (1 + tanh(k * (v + 0.044715 * v ^ 3))) end, xs, 1e-14, { { approximate = "tanh" } } },
    { "elu", function(v) return v > 0 and v or math.exp(v) - 1 end, xs, 1e-14 },
    { "elu", function(v) return v > 0 and v or 0.3 * (math.exp(v) - 1) end, xs, 1e-14, { 0.3 } },
    { "celu", function(v) return v > 0 and v or 2 * (math.exp(v / 2) - 1) end, xs, 1e-14, { 2 } },
    { "leaky_relu", function(v) return v > 0 and v or 0.01 * v end, xs, 1e-16 },
    { "leaky_relu", function(v) return v > 0 and v or 0.2 * v end, xs, 1e-16, { 0.2 } },
    { "hard_sigmoid", function(v) return clip(v + 3, 0, 6) / 6 end, xs, 1e-16 },
    { "hard_sigmoid", function(v) return clip(0.2 * v + 0.5, 0, 1) end, xs, 1e-16, { "keras2" } },
    { "hard_sigmoid", function(v) return clip(0.2 * v + 0.5, 0, 1) end, xs, 1e-16, { { version = 2 } } },
  }
  for _, c in ipairs(cases) do
    local name, f, input, tol, extra = c[1], c[2], c[3], c[4], c[5] or {}
    local label = name .. (#extra > 0 and " with " .. (type(extra[1]) == "table" and "an options table" or tostring(extra[1])) or "")
    it(label .. " matches the hand values in float64 and float32, as function and method, strided", function()
      local want = map(input, f)
      local x64 = mg.tensor(input, F64)
      close(want, mg[name](x64, table.unpack(extra)):totable(), tol)
      close(want, x64[name](x64, table.unpack(extra)):totable(), tol)
      local y = mg[name](mg.tensor(input), table.unpack(extra))
      assert.are.equal("float32", y.dtype)
      close(want, y:totable(), 2e-6)
      assert.are.equal(0, mg[name](mg.tensor(0.5), table.unpack(extra)):dim())
      local t = mg.tensor({ input, input }, F64):transpose(1, 2)      -- strided
      close(map({ input, input }, f), mg[name](t, table.unpack(extra)):transpose(1, 2):totable(), tol)
    end)
  end

  it("rounds half to even, as PyTorch (and keeps the sign of zero)", function()
    assert.are.same({ -2, -2, -0.0, 0, 2, 2 }, mg.round(mg.tensor({ -2.5, -1.5, -0.5, 0.5, 1.5, 2.5 }, F64)):totable())
    assert.are.equal(-math.huge, 1 / mg.round(mg.tensor(-0.4, F64)):item())
  end)

  it("the stable forms do not overflow", function()
    local big = mg.tensor({ -1000, 1000 }, F64)
    assert.are.same({ -0.0, 1000 }, mg.silu(big):totable())
    assert.are.same({ -0.0, 1000 }, mg.mish(big):totable())
    assert.are.same({ -1, 1 }, mg.softsign(mg.tensor({ -1e308, 1e308 }, F64)):totable())
    close({ -0.0, 1000 }, mg.gelu(big):totable(), 0)
  end)

  it("bad parameters name the function", function()
    local x = mg.tensor { 1, 2 }
    raises(function() mg.celu(x, 0) end, "celu: alpha must not be 0")
    raises(function() mg.hard_sigmoid(x, "keras4") end,
           "bad argument #2 to 'hard_sigmoid' (version must be \"keras3\" or \"keras2\", got keras4)")
    raises(function() mg.gelu(x, 3) end,
           "bad argument #2 to 'gelu' (approximate must be \"none\", \"tanh\" or a boolean, got 3)")
    raises(function() mg.elu(x, "a") end, "bad argument #2 to 'elu' (number expected, got string)")
    raises(function() mg.erf(3) end, "bad argument #1 to 'erf'")
  end)
end)
