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
    local tape <close> = mg.GradientTape()
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
    local t1 <close> = mg.GradientTape { persistent = true }
    t1:watch(x)
    local t2 <close> = mg.GradientTape { persistent = true }
    t2:watch(x)
    local t3 <close> = mg.GradientTape()
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

describe("gradcheck of the issue 12 elementwise ops (float64, both modes)", function()
  setup(function() mg.manual_seed(12) end)
  local function scaled(s) return randn(3, 4) * s end
  -- { name, inputs maker, extra arguments }
  local smooth = {
    { "erf" }, { "erfc" }, { "silu" }, { "swish" }, { "mish" }, { "expm1" }, { "atan" }, { "asinh" },
    { "sinh" }, { "cosh" }, { "square" }, { "exp2" }, { "gelu" }, { "gelu", nil, { "tanh" } },
    { "selu", 2 }, { "softsign", 2 }, { "elu", 2 }, { "elu", 2, { 0.4 } }, { "celu", 2, { 1.7 } },
    { "leaky_relu", 2 }, { "leaky_relu", 2, { 0.3 } }, { "hard_tanh", 2 }, { "relu6", 4 },
    { "hard_sigmoid", 4 }, { "hard_sigmoid", 4, { "keras2" } },
  }
  for _, c in ipairs(smooth) do
    local name, s, extra = c[1], c[2] or 1, c[3] or {}
    it(name .. (extra[1] and ("(" .. tostring(extra[1]) .. ")") or "") .. ": random, 0-d and strided inputs", function()
      local f = function(x) return mg[name](x, table.unpack(extra)) end
      check(f, scaled(s))
      check(f, mg.tensor(0.3, F64))
      check(f, tview(3, 2) * s)
    end)
  end
  it("log1p, rsqrt, log2, log10, reciprocal, tan on their domains", function()
    local x = mg.rand(3, 4, F64) + 0.2
    for _, name in ipairs { "log1p", "rsqrt", "log2", "log10", "reciprocal" } do check(mg[name], x) end
    check(mg.log1p, mg.tensor({ -0.9, -0.5, 0 }, F64))
    check(mg.reciprocal, -x)
    check(mg.tan, mg.uniform({ 3, 4 }, -1.2, 1.2, F64))
  end)
  it("floor, ceil, round, trunc and sign: zero gradients (not nil), in both modes", function()
    local x = mg.tensor({ { -1.7, -0.3 }, { 0.3, 2.6 } }, F64)
    for _, name in ipairs { "floor", "ceil", "round", "trunc", "sign" } do
      check(mg[name], x)
      local g = mg.grad(function(v) return (mg[name](v) * v):sum() end)(x)
      assert.are.same(mg[name](x):totable(), g:totable())            -- d(f(v) v) = f(v)
      local _, t = mg.jvp(mg[name], { x }, { mg.ones({ 2, 2 }, F64) })
      assert.are.same({ { 0, 0 }, { 0, 0 } }, t:totable())
    end
  end)
  it("near the kinks, on either side", function()
    local d = 1e-4
    local function around(...)
      local v = {}
      for _, k in ipairs { ... } do v[#v + 1] = k - d v[#v + 1] = k + d end
      return mg.tensor(v, F64)
    end
    check(mg.relu6, around(0, 6))
    check(mg.hard_tanh, around(-1, 1))
    check(mg.hard_sigmoid, around(-3, 3))
    check(function(x) return mg.hard_sigmoid(x, "keras2") end, around(-2.5, 2.5))
    for _, name in ipairs { "leaky_relu", "elu", "celu", "selu", "softsign", "gelu", "mish", "silu" } do
      check(mg[name], around(0))
    end
    check(function(x) return mg.elu(x, 0.5) end, around(0))
    check(function(x) return mg.celu(x, 0.5) end, around(0))
    check(mg.round, around(0.5 - 0.01, 1.5 + 0.01))
  end)
  it("exactly at the kinks: PyTorch 1.13's values (reverse and forward mode agree)", function()
    local cases = {                 -- { f, kinks, torch.autograd's derivative there }
      { mg.relu6, { 0, 6 }, { 0, 0 } },
      { mg.hard_tanh, { -1, 1 }, { 0, 0 } },
      { mg.hard_sigmoid, { -3, 3 }, { 0, 0 } },
      { function(x) return mg.leaky_relu(x, 0.1) end, { 0 }, { 0.1 } },
      { function(x) return mg.elu(x, 0.5) end, { 0 }, { 0.5 } },
      { function(x) return mg.elu(x, 2) end, { 0 }, { 2 } },
      { function(x) return mg.celu(x, 0.5) end, { 0 }, { 1 } },
      { mg.selu, { 0 }, { 1.7580993408473766 } },
      { mg.softsign, { 0 }, { 1 } },
      { mg.sign, { 0, 1 }, { 0, 0 } },
      { mg.abs, { 0 }, { 0 } },
    }
    for i, c in ipairs(cases) do
      local x = mg.tensor(c[2], F64)
      local g = mg.grad(function(v) return c[1](v):sum() end)(x)
      support.near(c[3], g:totable(), 1e-15)
      local _, t = mg.jvp(c[1], { x }, { mg.ones({ #c[2] }, F64) })
      support.near(c[3], t:totable(), 1e-15)
      assert(i)
    end
    -- second derivatives at 0: PyTorch's elu_double_backward masks with x < 0, so 0 there
    for _, f in ipairs { mg.elu, mg.selu, mg.celu, function(v) return mg.elu(v, 0.5) end } do
      local g1 = mg.grad(function(v) return f(v):sum() end)
      local g2 = mg.grad(function(v) return g1(v):sum() end)(mg.tensor({ 0, -1 }, F64))
      assert.are.equal(0, g2:totable()[1])
      assert.is_true(g2:totable()[2] > 0)
    end
  end)
  it("second derivatives: gradients of gradients", function()
    for _, name in ipairs { "gelu", "mish", "silu", "selu", "erf", "asinh", "rsqrt", "softsign", "elu" } do
      local g = mg.grad(function(v) return mg[name](v):sum() end)
      local x = name == "rsqrt" and mg.rand(4, F64) + 0.5 or randn(4)
      check(g, x)
    end
    check(mg.grad(function(v) return mg.gelu(v, "tanh"):sum() end), randn(4))
  end)
end)

describe("gradcheck of the issue 12 reductions, scans and shape ops (float64, both modes)", function()
  setup(function() mg.manual_seed(13) end)
  it("logsumexp over a dim, several dims, all, keepdim; large inputs", function()
    check(function(x) return mg.logsumexp(x, 2) end, randn(3, 4))
    check(function(x) return x:logsumexp({ 1, 3 }, true) end, randn(2, 3, 2))
    check(function(x) return x:logsumexp() end, tview(3, 2))
    check(function(x) return x:logsumexp(1) end, randn(3, 2) + 800)
    check(mg.grad(function(x) return x:logsumexp(1):sum() end), randn(3, 2))
  end)
  it("cumsum along each dim, strided", function()
    check(function(x) return mg.cumsum(x, 1) end, randn(3, 4))
    check(function(x) return x:cumsum(-1) end, tview(3, 4))
  end)
  it("cumprod and prod, with zeros in the input (one, two, leading, trailing)", function()
    local inputs = {
      randn(3, 4),
      mg.tensor({ { 1.5, 0, 2, -0.5 }, { 0, 0.7, 1.2, 0.9 }, { 0.8, -1.1, 1.3, 0 } }, F64),
      mg.tensor({ { 0, 1.5, 0, 2 }, { 0.3, 0, 0, -1 } }, F64),
    }
    for _, x in ipairs(inputs) do
      check(function(v) return mg.cumprod(v, 2) end, x)
      check(function(v) return v:cumprod(1) end, x)
      check(function(v) return v:prod(2) end, x)
      check(function(v) return mg.prod(v, 1, true) end, x)
      check(function(v) return v:prod() end, x)
    end
    check(function(v) return v:cumprod(1) end, tview(3, 2))
    -- the rules are recorded ops: second derivatives with a zero in the input
    check(mg.grad(function(v) return v:cumprod(1):sum() end), mg.tensor({ 1.5, 0, 2, -0.5 }, F64))
    check(mg.grad(function(v) return v:prod() end), mg.tensor({ 1.5, 0.7, 2, -0.5 }, F64))
  end)
  it("flip, roll", function()
    check(function(x) return x:flip(1) end, randn(3, 4))
    check(function(x) return mg.flip(x, { 1, 2 }) end, tview(3, 2))
    check(function(x) return mg.roll(x, 1, 2) end, randn(3, 4))
    check(function(x) return x:roll(-5) end, randn(2, 3))
    check(function(x) return x:roll({ 1, 2 }, { 1, 2 }) end, randn(3, 4))
  end)
  it("tril, triu, diag, diagonal, outer", function()
    check(function(x) return mg.tril(x) end, randn(3, 4))
    check(function(x) return x:triu(1) end, randn(2, 3, 3))
    check(function(x) return x:tril(-1) end, tview(3, 3))
    check(function(x) return mg.diag(x) end, randn(3))
    check(function(x) return x:diag(-1) end, randn(3))
    check(function(x) return x:diag(1) end, randn(3, 4))
    check(function(x) return x:diagonal() end, randn(3, 4))
    check(function(x) return mg.diagonal(x, -1, 1, 3) end, randn(3, 2, 4))
    check(function(x) return x:diagonal(0, 2, 3) end, tview(3, 3):unsqueeze(1):expand(2, 3, 3))
    check(function(a, b) return mg.outer(a, b) end, randn(3), randn(2))
  end)
  it("einsum: matmul, batched, dot, outer, transpose, trace, diagonal, sums", function()
    check(function(a, b) return mg.einsum("ij,jk->ik", a, b) end, randn(2, 3), randn(3, 4))
    check(function(a, b) return mg.einsum("bij,bjk->bik", a, b) end, randn(2, 2, 3), randn(2, 3, 2))
    check(function(a, b) return mg.einsum("i,i->", a, b) end, randn(3), randn(3))
    check(function(a, b) return mg.einsum("i,j->ij", a, b) end, randn(3), randn(2))
    check(function(a) return mg.einsum("ij->ji", a) end, randn(2, 3))
    check(function(a) return mg.einsum("ii", a) end, randn(3, 3))
    check(function(a) return mg.einsum("ii->i", a) end, randn(3, 3))
    check(function(a, b) return mg.einsum("bhqd,bhkd->bhqk", a, b) end, randn(2, 1, 3, 2), randn(2, 1, 2, 2))
    check(function(a, b) return mg.einsum("ij,kj->", a, b) end, randn(2, 3), randn(4, 3))
  end)
  it("gather, index_select, take_along_dim (1-based indices)", function()
    local idx = mg.tensor({ { 1, 3 }, { 2, 2 }, { 3, 1 } })
    check(function(x) return x:gather(2, idx) end, randn(3, 3))
    check(function(x) return mg.gather(x, 1, mg.tensor({ { 3, 1, 2 } })) end, tview(3, 3))
    check(function(x) return x:index_select(1, mg.tensor({ 3, 1, 3 })) end, randn(3, 2))
    check(function(x) return mg.index_select(x, 2, mg.tensor({ 2 })) end, randn(3, 2))
    check(function(x) return x:take_along_dim(mg.tensor({ { 2 }, { 1 } }), 2) end, randn(2, 3))
    check(function(x) return x:take_along_dim(mg.tensor({ 6, 1, 1 })) end, randn(2, 3))
    check(mg.grad(function(x) return (x:gather(2, idx) ^ 2):sum() end), randn(3, 3))
  end)
  it("masked_fill, pad, repeats, tile", function()
    local m = mg.tensor({ { 1, 0, 0 }, { 0, 1, 0 } })
    check(function(x) return x:masked_fill(m, 2.5) end, randn(2, 3))
    check(function(x) return mg.masked_fill(x, mg.tensor({ 0, 1, 0 }), -1) end, randn(2, 3))
    check(function(x) return mg.pad(x, { 1, 2 }) end, randn(2, 3))
    check(function(x) return x:pad({ 1, 0, 0, 2 }, 3) end, tview(2, 3))
    check(function(x) return x:pad({ -1, 1 }) end, randn(2, 3))
    check(function(x) return x:repeats(2, 1, 3) end, randn(2, 2))
    check(function(x) return mg.tile(x, { 2 }) end, randn(2, 3))
    check(function(x) return x:tile(2, 1, 1) end, tview(2, 2))
  end)
end)
