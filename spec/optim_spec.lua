-- mg.optim: SGD (plain, momentum, Nesterov) and Adam (Keras and PyTorch variants) against
-- their update rules computed by hand in plain Lua, the bookkeeping (nil gradients, layers as
-- params, nothing changes on a bad call), and an LSTM learning a toy memory task.
local mg = require "moongrad"
local support = require "support"
local nn, optim = mg.nn, mg.optim

local F64, assert_error = support.F64, support.assert_error

-- The values of the 1-d tensor 't', each within 'tol' of 'want'.
local function near_list(want, t, tol) support.near(want, t:totable(), tol) end

-- Three steps of gradients for a 3-element parameter, and the start value.
local P0 = { 0.5, -1.0, 2.0 }
local GS = { { 0.1, -0.2, 0.3 }, { -0.4, 0.5, 0.05 }, { 0.2, 0.2, -0.6 } }

local function run(make, steps)
  local p = mg.Variable(mg.tensor(P0, F64), "p")
  local opt = make({ p })
  for s = 1, steps do opt:step({ mg.tensor(GS[s], F64) }) end
  return p, opt
end

-- The same rule on plain Lua numbers: rule(state, i, p, g, t) -> new p.
local function by_hand(rule, steps)
  local p, state = { table.unpack(P0) }, {}
  for t = 1, steps do
    for i = 1, 3 do p[i] = rule(state, i, p[i], GS[t][i], t) end
  end
  return p
end

describe("SGD", function()
  it("plain: p -= lr g", function()
    local p, opt = run(function(ps) return optim.SGD(ps, { lr = 0.1 }) end, 3)
    near_list(by_hand(function(_, _, v, g) return v - 0.1 * g end, 3), p, 1e-15)
    assert.are.equal(3, opt.iterations)
  end)
  it("momentum (Keras: v = m v - lr g; p += v)", function()
    local p = run(function(ps) return optim.SGD(ps, { lr = 0.1, momentum = 0.9 }) end, 3)
    near_list(by_hand(function(st, i, v, g)
      st[i] = 0.9 * (st[i] or 0) - 0.1 * g
      return v + st[i]
    end, 3), p, 1e-15)
  end)
  it("nesterov: p += m v - lr g", function()
    local p = run(function(ps) return optim.SGD(ps, { lr = 0.05, momentum = 0.8, nesterov = true }) end, 3)
    near_list(by_hand(function(st, i, v, g)
      st[i] = 0.8 * (st[i] or 0) - 0.05 * g
      return v + 0.8 * st[i] - 0.05 * g
    end, 3), p, 1e-15)
  end)
  it("defaults to Keras's lr = 0.01", function()
    local p = run(function(ps) return optim.SGD(ps) end, 1)
    near_list(by_hand(function(_, _, v, g) return v - 0.01 * g end, 1), p, 1e-15)
  end)
end)

describe("Adam", function()
  local function adam_rule(lr, b1, b2, eps, variant)
    return function(st, i, v, g, t)
      local s = st[i] or { m = 0, v = 0 }
      st[i] = s
      s.m = b1 * s.m + (1 - b1) * g
      s.v = b2 * s.v + (1 - b2) * g * g
      if variant == "keras" then
        return v - lr * math.sqrt(1 - b2 ^ t) / (1 - b1 ^ t) * s.m / (math.sqrt(s.v) + eps)
      end
      return v - lr * (s.m / (1 - b1 ^ t)) / (math.sqrt(s.v / (1 - b2 ^ t)) + eps)
    end
  end
  it("Keras defaults: lr 1e-3, betas 0.9/0.999, eps 1e-7, bias correction", function()
    local p, opt = run(function(ps) return optim.Adam(ps) end, 3)
    assert.are.equal(1e-7, opt.eps)
    near_list(by_hand(adam_rule(1e-3, 0.9, 0.999, 1e-7, "keras"), 3), p, 1e-15)
    -- the first step moves every element by about lr (bias correction)
    local p1 = run(function(ps) return optim.Adam(ps) end, 1)
    for i = 1, 3 do assert.is_near(1e-3, math.abs(p1:get(i) - P0[i]), 1e-7) end   -- eps: ~3e-8
  end)
  it("PyTorch variant: eps 1e-8 added to the corrected sqrt(v)", function()
    local p, opt = run(function(ps) return optim.Adam(ps, { variant = "pytorch" }) end, 3)
    assert.are.equal(1e-8, opt.eps)
    near_list(by_hand(adam_rule(1e-3, 0.9, 0.999, 1e-8, "pytorch"), 3), p, 1e-15)
  end)
  it("custom hyper-parameters; a large eps shows where each variant adds it", function()
    local o = { lr = 0.05, beta1 = 0.8, beta2 = 0.99, eps = 0.1 }
    local pk = run(function(ps) return optim.Adam(ps, o) end, 3)
    near_list(by_hand(adam_rule(0.05, 0.8, 0.99, 0.1, "keras"), 3), pk, 1e-15)
    local po = { lr = 0.05, beta1 = 0.8, beta2 = 0.99, eps = 0.1, variant = "pytorch" }
    local pp = run(function(ps) return optim.Adam(ps, po) end, 3)
    near_list(by_hand(adam_rule(0.05, 0.8, 0.99, 0.1, "pytorch"), 3), pp, 1e-15)
    assert.is_true((pk - pp):abs():max():item() > 1e-4)
  end)
end)

describe("optimizer bookkeeping", function()
  it("skips nil gradients, takes a layer as params, keeps float32", function()
    local d = nn.Dense(2, 2)
    local opt = optim.SGD(d, { lr = 1 })
    local k0, b0 = d.kernel:clone(), d.bias:clone()
    opt:step({ nil, mg.ones(2) })
    assert.are.same(k0:totable(), d.kernel:totable())
    assert.are.same({ -1, -1 }, d.bias:totable())
    assert.are.equal("float32", d.bias.dtype)
    assert.is_true(d.bias:is_variable())
  end)
  it("updates unrecorded: a live tape sees nothing", function()
    local v = mg.Variable(mg.ones(2, F64), "v")
    local tape = mg.GradientTape()
    local y = (v * v):sum()
    local opt = optim.Adam({ v }, { lr = 0.1 })
    opt:step(tape:gradient(y, { v }))
    assert.is_true(v:get(1) < 1)
  end)
  it("minimizes a quadratic", function()
    for _, make in ipairs({
      function(ps) return optim.SGD(ps, { lr = 0.1, momentum = 0.5 }) end,
      function(ps) return optim.Adam(ps, { lr = 0.1 }) end,
    }) do
      local w = mg.Variable(mg.tensor({ 3, -2 }, F64), "w")
      local target = mg.tensor({ 1, 1 }, F64)
      local opt = make({ w })
      for _ = 1, 300 do
        local tape = mg.GradientTape()
        local loss = ((w - target) ^ 2):sum()
        opt:step(tape:gradient(loss, { w }))
      end
      near_list({ 1, 1 }, w, 1e-3)
    end
  end)
  it("reports bad arguments, and a bad step changes nothing", function()
    local a = mg.Variable(mg.zeros(2, F64), "a")
    local b = mg.Variable(mg.zeros(3, F64), "b")
    assert_error("SGD: params[2] is a plain tensor, expected a Variable", optim.SGD, { a, mg.zeros(2) })
    assert_error("Adam: params must be an array of Variables, got a number", optim.Adam, 3)
    assert_error("Adam: params is empty", optim.Adam, {})
    assert_error("Adam: unknown option 'beta_1'", optim.Adam, { a }, { beta_1 = 0.9 })
    assert_error("SGD: lr must be a number in [0, inf], got -1", optim.SGD, { a }, { lr = -1 })
    assert_error("SGD: momentum must be a number in [0, 1], got 2", optim.SGD, { a }, { momentum = 2 })
    assert_error("Adam: variant must be \"keras\" or \"pytorch\", got torch", optim.Adam, { a }, { variant = "torch" })
    local opt = optim.Adam({ a, b })
    assert_error("Adam: gradient 2 has shape (2), expected (3) (the shape of 'b')", opt.step, opt,
      { mg.ones(2, F64), mg.ones(2, F64) })
    assert.are.same({ 0, 0 }, a:totable())                  -- the good first gradient was not applied
    assert.are.equal(0, opt.iterations)
    assert_error("Adam: step expects an array of gradients parallel to params, got a tensor", opt.step, opt, mg.ones(2))
    assert_error("Adam: gradient index 3 is out of range for 2 params", opt.step, opt, { [3] = mg.ones(2) })
    assert_error("Adam: gradient 1 is a string, expected a tensor", opt.step, opt, { "g" })
  end)
end)

describe("training", function()
  it("an LSTM learns to recall the first input after 8 steps (loss / 20 within 150 Adam steps)", function()
    mg.manual_seed(1)
    local x = mg.uniform({ 32, 8, 1 }, -1, 1)
    local y = x:select(2, 1)
    local model = nn.Sequential { nn.RNN(nn.LSTMCell(1, 16)), nn.Dense(16, 1) }
    local params = model:parameters()
    local opt = optim.Adam(params, { lr = 0.02 })
    local first
    for step = 1, 150 do
      local tape = mg.GradientTape()
      local loss = tape:record(function() return nn.mse(model(x), y) end)
      if step == 1 then first = loss:item() end
      opt:step(tape:gradient(loss, params))
    end
    local last = nn.mse(model(x), y):item()
    assert(last < first / 20, string.format("loss went from %g to %g", first, last))
  end)
end)
