-- Every differentiable op: reverse (VJP) and forward (JVP) rules against central finite
-- differences in float64, over broadcast shapes, 0-d tensors and non-contiguous views.
local mg = require "moongrad"
local support = require "support"

local F64, randn = support.F64, support.randn

-- a (rows, cols) tensor seen through a transpose: non-contiguous
local function tview(rows, cols)
  return mg.randn(cols, rows, F64):transpose(1, 2)
end

local function check(f, ...)
  assert.is_true(mg.gradcheck(f, { ... }))
end

describe("gradcheck of unary ops", function()
  setup(function() mg.manual_seed(1) end)
  local smooth = { "exp", "tanh", "sigmoid", "sin", "cos", "softplus" }
  for _, name in ipairs(smooth) do
    it(name, function()
      check(function(x) return mg[name](x) end, randn(3, 4))
      check(function(x) return mg[name](x) end, mg.tensor(0.3, F64))       -- 0-d
      check(function(x) return mg[name](x) end, tview(3, 2))               -- strided
    end)
  end
  it("log and sqrt on positive inputs", function()
    local x = mg.rand(3, 4, F64) + 0.5
    check(mg.log, x)
    check(mg.sqrt, x)
  end)
  it("relu and abs away from the kink", function()
    local x = mg.tensor({ { -1.5, 0.7 }, { 2.0, -0.2 } }, F64)
    check(mg.relu, x)
    check(mg.abs, x)
  end)
  it("relu's derivative at 0 is 0, as TensorFlow and PyTorch", function()
    local x = mg.tensor({ 0.0, 1.0, -1.0 }, F64)
    local g = mg.grad(function(v) return mg.relu(v):sum() end)(x)
    assert.are.same({ 0, 1, 0 }, g:totable())
  end)
  it("negation and clamp", function()
    check(function(x) return -x end, randn(2, 3))
    check(function(x) return mg.clamp(x, -0.5, 0.5) end, mg.tensor({ -1, -0.2, 0.1, 0.9 }, F64))
  end)
end)

describe("gradcheck of binary ops with broadcasting", function()
  setup(function() mg.manual_seed(2) end)
  local shapes = {
    { { 3, 4 }, { 3, 4 } }, { { 3, 4 }, { 4 } }, { { 3, 1 }, { 1, 4 } },
    { { 2, 3, 4 }, { 3, 1 } }, { {}, { 2, 3 } }, { { 2, 3 }, {} },
  }
  local ops = {
    add = function(a, b) return a + b end, sub = function(a, b) return a - b end,
    mul = function(a, b) return a * b end, div = function(a, b) return a / b end,
    maximum = mg.maximum, minimum = mg.minimum,
  }
  for name, f in pairs(ops) do
    for _, s in ipairs(shapes) do
      it(string.format("%s %s %s", name, mg.shapestr(mg.zeros(s[1])), mg.shapestr(mg.zeros(s[2]))), function()
        local a, b = randn(s[1]), randn(s[2])
        if name == "div" then b = b:abs() + 0.5 end
        check(f, a, b)
      end)
    end
  end
  it("pow with both operands differentiable", function()
    check(function(a, b) return a ^ b end, mg.rand(2, 3, F64) + 0.5, randn(3))
  end)
  it("numbers on either side", function()
    check(function(a) return 2 * a - 1 + a / 4 - 3 / (a * a + 1) + a ^ 3 end, randn(2, 2))
  end)
  it("mixed dtypes promote and differentiate through the cast", function()
    local a32 = mg.randn(3)
    local tape = mg.GradientTape()
    tape:watch(a32)
    local y = (a32 * mg.tensor({ 1, 2, 3 }, F64)):sum()
    assert.are.equal("float64", y.dtype)
    local g = tape:gradient(y, a32)
    assert.are.equal("float32", g.dtype)
    assert.are.same({ 1, 2, 3 }, g:totable())
  end)
  it("where", function()
    local c = mg.tensor({ { 1, 0, 1 }, { 0, 0, 1 } }, F64)
    check(function(a, b) return mg.where(c, a, b) end, randn(2, 3), randn(3))
  end)
end)

describe("gradcheck of shape ops", function()
  setup(function() mg.manual_seed(3) end)
  it("reshape, transpose, permute", function()
    check(function(x) return x:reshape(6, 2) end, randn(3, 4))
    check(function(x) return x:transpose(1, 2):reshape(-1) end, randn(3, 4))
    check(function(x) return x:permute(3, 1, 2) end, randn(2, 3, 4))
  end)
  it("squeeze, unsqueeze, expand", function()
    check(function(x) return x:unsqueeze(2):squeeze() end, randn(3, 4))
    check(function(x) return x:expand(2, 3, 4) end, randn(3, 1))
  end)
  it("narrow, select, indexing", function()
    check(function(x) return x:narrow(2, 2, 2) end, randn(3, 4))
    check(function(x) return x:select(2, 3) end, randn(3, 4))
    check(function(x) return x[2] * x[3] end, randn(3, 4))
  end)
  it("cat, stack, split, unstack", function()
    check(function(a, b) return mg.cat({ a, b, a }, 2) end, randn(2, 3), randn(2, 1))
    check(function(a, b) return mg.stack({ a, b }, 1) end, randn(2, 3), randn(2, 3))
    check(function(x) local p = mg.split(x, 2, 2) return p[1] * p[2] end, randn(3, 4))
    check(function(x) local u = mg.unstack(x, 1) return u[1] + 2 * u[2] end, randn(2, 3))
  end)
  it("contiguous, clone, to", function()
    check(function(x) return x:contiguous() end, tview(3, 2))
    check(function(x) return x:clone() * 2 end, randn(3))
    assert.is_true(mg.gradcheck(function(x) return x:to("float32"):to("float64") end, { randn(3) },
                                { eps = 1e-3, atol = 1e-3 }))
  end)
end)

describe("gradcheck of reductions", function()
  setup(function() mg.manual_seed(4) end)
  for _, name in ipairs { "sum", "mean", "var", "std", "norm" } do
    it(name, function()
      check(function(x) return x[name](x) end, randn(3, 4))
      check(function(x) return x[name](x, 2) end, randn(3, 4))
      check(function(x) return x[name](x, 1, true) end, tview(3, 4))
      check(function(x) return x[name](x, { 1, 3 }) end, randn(2, 3, 4))
    end)
  end
  it("max and min route the gradient to the extreme", function()
    check(function(x) return x:max() end, randn(3, 4))
    check(function(x) return (x:max(2)) end, randn(3, 4))
    check(function(x) return (x:min(1, true)) end, randn(3, 4))
  end)
  it("softmax and log_softmax", function()
    check(function(x) return mg.softmax(x, 2) end, randn(3, 4))
    check(function(x) return mg.log_softmax(x, 1) end, randn(3, 4))
    check(function(x) return mg.log_softmax(x) end, tview(2, 5))
  end)
end)

describe("gradcheck of matmul", function()
  setup(function() mg.manual_seed(5) end)
  it("2-d, batched with broadcast, 1-d operands, transposed operands", function()
    check(mg.matmul, randn(3, 4), randn(4, 2))
    check(mg.matmul, randn(2, 3, 4), randn(4, 5))
    check(mg.matmul, randn(3, 4), randn(2, 4, 5))
    check(mg.matmul, randn(2, 1, 3, 4), randn(3, 4, 2))
    check(mg.matmul, randn(4), randn(4, 3))
    check(mg.matmul, randn(3, 4), randn(4))
    check(mg.matmul, randn(4), randn(4))
    check(mg.matmul, tview(3, 4), tview(4, 2))
  end)
end)

describe("second order", function()
  it("the Hessian of v' A v is A + A'", function()
    mg.manual_seed(6)
    local A = randn(4, 4)
    local H = mg.hessian(function(v) return mg.matmul(v, mg.matmul(A, v)) end, randn(4))
    local expect = (A + A:transpose()):totable()
    local got = H:totable()
    for i = 1, 4 do
      for j = 1, 4 do assert.is_near(expect[i][j], got[i][j], 1e-12) end
    end
  end)
  it("third derivative of x^4 through three nested tapes", function()
    local x = mg.tensor(1.5, F64)
    local t1 = mg.GradientTape { persistent = true }
    t1:watch(x)
    local t2 = mg.GradientTape { persistent = true }
    t2:watch(x)
    local t3 = mg.GradientTape()
    t3:watch(x)
    local y = x ^ 4
    local d1 = t3:gradient(y, x)    -- 4x^3, recorded by t1 and t2
    local d2 = t2:gradient(d1, x)   -- 12x^2, recorded by t1
    local d3 = t1:gradient(d2, x)   -- 24x
    assert.is_near(4 * 1.5 ^ 3, d1:item(), 1e-12)
    assert.is_near(12 * 1.5 ^ 2, d2:item(), 1e-12)
    assert.is_near(24 * 1.5, d3:item(), 1e-12)
  end)
  it("gradcheck of a gradient (through the rules' own ops)", function()
    local g = mg.grad(function(x) return (mg.tanh(x) * mg.sigmoid(x)):sum() end)
    check(g, randn(3))
  end)
end)

describe("gradcheck failures", function()
  it("names the worst element and both values", function()
    -- the no_grad part is invisible to the tape: analytic 1, numeric 2x + 1
    local f = function(x) return mg.no_grad(function() return x * x end) + x end
    local ok, err = pcall(mg.gradcheck, f, { mg.tensor({ 1, 2 }, F64) })
    assert.is_false(ok)
    assert.matches("gradcheck: input 1, rev mode: Jacobian element %(output 2, input 2%) is 1 analytically but 5", err)
  end)
end)
