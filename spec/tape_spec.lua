-- GradientTape semantics (TensorFlow's), Jacobians, the function transforms, and seed 002's
-- worked examples reproduced with the tape, every number asserted in float64.
local mg = require "moongrad"
local support = require "support"

local F64, near_table = support.F64, support.near

describe("seed 002: manual derivatives against the tape", function()
  it("d(x^2)/dx = 2x", function()
    mg.manual_seed(0)
    local x = mg.rand(1, F64)
    local g = mg.grad(function(v) return (v ^ 2):sum() end)(x)
    assert.is_near(2 * x:get(1), g:get(1), 1e-15)
  end)
  it("the squared loss at x = 1 with target 10 gives -36", function()
    local x = mg.tensor(1.0, F64)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local loss = (10 - x ^ 2) ^ 2
    assert.are.equal(-36, tape:gradient(loss, x):item())
  end)
  it("the linear loss y_pred - y_actual gives -2x", function()
    local x = mg.tensor(0.75, F64)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local loss = 10 - x ^ 2        -- the seed passes its arguments swapped: y_actual - y_pred
    assert.are.equal(-1.5, tape:gradient(loss, x):item())
  end)
  it("the gradient of sum(x^2) at (1, 5, 6) is (2, 10, 12)", function()
    local x = mg.tensor({ 1, 5, 6 }, F64)
    local g = mg.grad(function(v) return (v ^ 2):sum() end)(x)
    assert.are.same({ 2, 10, 12 }, g:totable())
  end)
  it("z = w x + b gives (x, 1)", function()
    local w, b = mg.tensor(5.0, F64), mg.tensor(4.0, F64)
    local tape <close> = mg.GradientTape()
    tape:watch(w, b)
    local z = w * 2.5 + b
    local g = tape:gradient(z, { w, b })
    assert.are.equal(2.5, g[1]:item())
    assert.are.equal(1, g[2]:item())
  end)
  it("tensordot: dO/dX rows are the row sums of W, dO/dW columns the column sums of X", function()
    mg.manual_seed(6)
    local X, W, B = mg.randn(5, 2, F64), mg.randn(2, 3, F64), mg.randn(1, 3, F64)
    local tape <close> = mg.GradientTape()
    tape:watch(X, W, B)
    local Q = mg.matmul(X, W)
    local Z = Q + B
    local O = Z:sum()
    local g = tape:gradient(O, { W, X, B, Q })
    local xs, ws = X:sum(1):totable(), W:sum(2):totable()
    for i = 1, 2 do for j = 1, 3 do assert.is_near(xs[i], g[1]:get(i, j), 1e-12) end end
    for i = 1, 5 do for j = 1, 2 do assert.is_near(ws[j], g[2]:get(i, j), 1e-12) end end
    assert.are.same({ { 5, 5, 5 } }, g[3]:totable())               -- B broadcast over 5 rows
    assert.are.same(mg.ones(5, 3):totable(), g[4]:totable())       -- w.r.t. an intermediate
  end)
  it("h2 = w h1, h1 = w h0 with w = 2, h0 = 0.5: dh2/dw = 2, dh2/dh0 = 4", function()
    local w, h0 = mg.tensor(2.0, F64), mg.tensor(0.5, F64)
    local tape <close> = mg.GradientTape()
    tape:watch(w, h0)
    local h1 = w * h0
    local h2 = w * h1
    local g = tape:gradient(h2, { w, h0 })
    assert.are.equal(2, g[1]:item())
    assert.are.equal(4, g[2]:item())
  end)
  -- The seed ran in float32 and derived by hand from float32 .item() values: its
  -- 8.18880672682621 is that hand formula, 0.9092516899108887 is float32 tanh. The tape in
  -- float32 gives PyTorch's numbers exactly; in float64 it gives the true derivative, which
  -- the same hand formula in float64 confirms.
  local function y2_grads(dt)
    local o = { dtype = dt }
    local wh, wy, h0 = mg.tensor(2.0, o), mg.tensor(40.0, o), mg.tensor(0.5, o)
    local tape <close> = mg.GradientTape()
    tape:watch(wh, wy)
    local h1 = mg.tanh(wh * h0)
    local h2 = mg.tanh(wh * h1)
    local g = tape:gradient(wy * h2, { wh, wy })
    local a, b = h1:item(), h2:item()
    return g[1]:item(), g[2]:item(), 40 * (1 - b * b) * (a + 2 * (1 - a * a) * 0.5)
  end
  it("y2 = 40 tanh(2 tanh(2 * 0.5)): the seed's values in float32, the true ones in float64", function()
    local dwh, dwy, hand = y2_grads("float32")
    assert.are.equal(0.9092516899108887, dwy)
    assert.is_near(8.18880672682621, hand, 1e-13)
    assert.is_near(8.188806533813477, dwh, 1e-15)          -- PyTorch 1.13, float32
    dwh, dwy, hand = y2_grads("float64")
    assert.is_near(8.188808168328672, dwh, 1e-14)
    assert.is_near(hand, dwh, 1e-14)
    assert.is_near(math.tanh(2 * math.tanh(1)), dwy, 1e-15)
  end)
  it("a hand-written BPTT of a tanh RNN equals the tape (including dB_x, which the seed left 0)", function()
    mg.manual_seed(7)
    local Wx, Bx = mg.randn(3, 1, F64), mg.randn(3, F64)
    local Wh, Bh = mg.randn(3, 3, F64), mg.randn(3, F64)
    local Wy, By = mg.randn(1, 3, F64), mg.randn(1, F64)
    local X = mg.tensor({ { 1 }, { 2 }, { 3 } }, F64)
    local Y = mg.tensor({ { 5 }, { 10 }, { 15 } }, F64)
    local N = 2
    local params = { Wx, Bx, Wh, Bh, Wy, By }
    local tape <close> = mg.GradientTape()
    tape:watch(params)
    local H, J, Hs = mg.zeros(1, 3, F64), 0, {}
    Hs[0] = H
    for i = 1, N do
      H = mg.tanh(mg.matmul(X[i]:reshape(1, 1), Wx:transpose()) + Bx + mg.matmul(H, Wh:transpose()) + Bh)
      Hs[i] = H
      local diff = Y[i] - (mg.matmul(H, Wy:transpose()) + By)
      J = J + (diff ^ 2):sum()
    end
    local g = tape:gradient(J, params)
    -- by hand, as the seed's VanillaRNN.backward (with dB_x accumulated)
    local dWx, dBx, dWh, dBh = mg.zeros(3, 1, F64), mg.zeros(3, F64), mg.zeros(3, 3, F64), mg.zeros(3, F64)
    local dWy, dBy, dHnext = mg.zeros(1, 3, F64), mg.zeros(1, F64), mg.zeros(1, 3, F64)
    for t = N, 1, -1 do
      local Hc, Hp = Hs[t], Hs[t - 1]
      local yhat = mg.matmul(Hc, Wy:transpose()) + By
      local dY = (yhat - Y[t]) * 2                              -- (1, 1)
      dBy = dBy + dY:reshape(1)
      dWy = dWy + mg.matmul(dY:transpose(), Hc)
      local dH = mg.matmul(dY, Wy) + dHnext
      local dRaw = dH * (1 - Hc * Hc)
      dBh = dBh + dRaw:reshape(3)
      dBx = dBx + dRaw:reshape(3)
      dWh = dWh + mg.matmul(dRaw:transpose(), Hp)
      dWx = dWx + mg.matmul(dRaw:transpose(), X[t]:reshape(1, 1))
      dHnext = mg.matmul(dRaw, Wh)
    end
    local hand = { dWx, dBx, dWh, dBh, dWy, dBy }
    for k = 1, 6 do near_table(hand[k]:totable(), g[k]:totable(), 1e-12) end
    assert.is_true(dBx:abs():sum():item() > 0)
  end)
end)

describe("GradientTape", function()
  it("a non-persistent tape can be used once, with a message saying what to do", function()
    local x = mg.tensor(3.0, F64)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local y = x * x
    assert.are.equal(6, tape:gradient(y, x):item())
    assert.has_error(function() tape:gradient(y, x) end)
    local ok, err = pcall(tape.gradient, tape, y, x)
    assert.is_false(ok)
    assert.matches("persistent=true", err)
  end)
  it("a persistent tape answers many questions", function()
    local x = mg.tensor(3.0, F64)
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(x)
    local y = x * x
    local z = y * y
    assert.are.equal(6, tape:gradient(y, x):item())
    assert.are.equal(108, tape:gradient(z, x):item())
    assert.are.equal(18, tape:gradient(z, y):item())
  end)
  it("<close> stops recording; record runs a function and stops even when it raises", function()
    local x = mg.tensor(2.0, F64)
    local y
    do
      local tape <close> = mg.GradientTape { persistent = true }
      tape:watch(x)
      y = x * x
      local outside_tape = tape
      _G.__tape = outside_tape
    end
    local tape = _G.__tape
    _G.__tape = nil
    local after = y * x                              -- not recorded
    assert.are.equal(4, tape:gradient(y, x):item())
    assert.is_nil(tape:gradient(after, x))
    local t2 <close> = mg.GradientTape()
    assert.has_error(function() t2:record(function() error("boom") end) end, nil)
    local z = x * x
    assert.is_nil(t2:gradient(z, x))                 -- stopped by the error
  end)
  it("unconnected sources give nil, or zeros on request", function()
    local x, u = mg.tensor(2.0, F64), mg.tensor({ 1, 2 }, F64)
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(x, u)
    local y = x * 3
    local g = tape:gradient(y, { x, u })
    assert.are.equal(3, g[1]:item())
    assert.is_nil(g[2])
    local gz = tape:gradient(y, { x, u }, { unconnected = "zero" })
    assert.are.same({ 0, 0 }, gz[2]:totable())
  end)
  it("output_gradients weight the targets, and a table of targets is summed", function()
    local x = mg.tensor({ 1, 2 }, F64)
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(x)
    local y = x * x
    local g = tape:gradient(y, x, { output_gradients = mg.tensor({ 10, 100 }, F64) })
    assert.are.same({ 20, 400 }, g:totable())
    local g2 = tape:gradient({ y, x * 3 }, x)
    assert.are.same({ 5, 7 }, g2:totable())
  end)
  it("Variables are watched when accessed, unless watch_accessed_variables=false", function()
    local v = mg.Variable(mg.tensor({ 1, 2 }, F64), "v")
    assert.are.equal("v", v.name)
    local tape <close> = mg.GradientTape()
    local y = (v * v):sum()
    assert.are.equal(1, #tape:watched())
    assert.are.same({ 2, 4 }, tape:gradient(y, v):totable())
    local t2 <close> = mg.GradientTape { watch_accessed_variables = false }
    local _ = v * 2
    assert.are.equal(0, #t2:watched())
    v:assign_sub(mg.tensor({ 1, 1 }, F64))
    assert.are.same({ 0, 1 }, v:totable())
    v:assign(mg.tensor({ 5, 6 }, F64))
    assert.are.same({ 5, 6 }, v:totable())
    assert.has_error(function() mg.zeros(2):assign_sub(1) end)
  end)
  it("Variable:assign* errors name the assign call and point at the caller's line", function()
    local v = mg.Variable(mg.tensor({ 1, 2 }, F64), "v")
    local here = debug.getinfo(1, "l").currentline
    local function line(fn, ...)
      local ok, err = pcall(fn, ...)
      assert.is_false(ok)
      return err
    end
    local e = line(function() return v:assign(mg.zeros(3)) end)
    assert.matches("^[^:]*tape_spec.lua:" .. (here + 6) .. ": assign: source %(3%) does not broadcast to destination %(2%)$", e)
    assert.is_nil(e:find("core.lua", 1, true))
    assert.is_nil(e:find("copy", 1, true))
    e = line(function() return v:assign_add(mg.zeros(3)) end)
    assert.matches("tape_spec.lua:%d+: assign_add: shapes %(2%) and %(3%) cannot be broadcast", e)
    e = line(function() return v:assign_sub(mg.zeros(2, 2)) end)
    assert.matches("assign_sub: source %(2,2%) does not broadcast to destination %(2%)", e)
    assert.matches("assign: expected a Variable, got a plain tensor", line(function() return mg.zeros(2):assign(1) end))
    assert.matches("assign_add: expected a tensor or number, got string", line(function() return v:assign_add("x") end))
    v:assign(7)
    assert.are.same({ 7, 7 }, v:totable())
    assert.are.equal(v, v:assign_add(mg.tensor({ 1, 2 }, F64)))
    assert.are.same({ 8, 9 }, v:totable())
    v:assign_sub(1)
    assert.are.same({ 7, 8 }, v:totable())
  end)
  it("a 1,000-step recurrence differentiates without deep C recursion", function()
    local x = mg.tensor(0.5, F64)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local h = x
    for _ = 1, 1000 do h = mg.tanh(h * 1.01) + x * 0.001 end
    local g = tape:gradient(h, x)
    assert.is_true(g:item() == g:item())
  end)
  it("errors on bad arguments name the function", function()
    local tape <close> = mg.GradientTape()
    assert.has_error(function() tape:gradient(1, mg.zeros(1)) end)
    local ok, err = pcall(tape.gradient, tape, mg.zeros(2), { mg.zeros(1), "x" })
    assert.is_false(ok)
    assert.matches("entry 2", err)
    ok, err = pcall(tape.gradient, tape, mg.zeros(2), mg.zeros(1), { output_gradients = mg.zeros(3) })
    assert.matches("shape", err)
  end)
end)

describe("Jacobians", function()
  local W
  setup(function()
    mg.manual_seed(11)
    W = mg.randn(4, 3, F64)
  end)
  local function f(h) return mg.matmul(mg.tanh(h), W) end
  -- A persistent tape that watched 'x' and recorded y = f(x), stopped: the tape and y.
  local function recorded(x)
    local tape = mg.GradientTape { persistent = true }
    tape:watch(x)
    local y = f(x)
    tape:stop()
    return tape, y
  end

  it("jacobian equals a loop of single gradients, in reverse, forward and auto mode", function()
    local x = mg.randn(2, 4, F64)
    local tape, y = recorded(x)
    local J = tape:jacobian(y, x)
    assert.are.same({ 2, 3, 2, 4 }, J:shape())
    for i = 1, 2 do
      for j = 1, 3 do
        local seed = mg.zeros(2, 3, F64)
        seed:set(1, i, j)
        local g = tape:gradient(y, x, { output_gradients = seed })
        near_table(g:totable(), J[i][j]:totable(), 1e-14)
      end
    end
    near_table(J:totable(), tape:jacobian(y, x, { mode = "fwd" }):totable(), 1e-14)
    near_table(J:totable(), tape:jacobian(y, x, { mode = "auto" }):totable(), 1e-14)
  end)
  it("batch_jacobian is the diagonal blocks of the full Jacobian", function()
    local x = mg.randn(3, 4, F64)
    local tape, y = recorded(x)
    local BJ = tape:batch_jacobian(y, x)
    local J = tape:jacobian(y, x)
    assert.are.same({ 3, 3, 4 }, BJ:shape())
    for b = 1, 3 do near_table(J[b]:select(2, b):totable(), BJ[b]:totable(), 1e-14) end
    near_table(BJ:totable(), tape:batch_jacobian(y, x, { mode = "fwd" }):totable(), 1e-14)
  end)
  it("a Jacobian w.r.t. an array of sources (h_T w.r.t. every h_k)", function()
    local h0 = mg.randn(2, 4, F64)
    local U = mg.randn(4, 4, F64) * 0.5
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(h0)
    local hs = { [0] = h0 }
    for t = 1, 5 do hs[t] = mg.tanh(mg.matmul(hs[t - 1], U)) end
    local srcs = { hs[0], hs[1], hs[2], hs[3], hs[4] }
    local Js = tape:batch_jacobian(hs[5], srcs)
    assert.are.equal(5, #Js)
    for k = 1, 5 do
      near_table(tape:batch_jacobian(hs[5], srcs[k]):totable(), Js[k]:totable(), 1e-14)
    end
    -- chain rule: dh5/dh3 = dh5/dh4 . dh4/dh3
    local J54 = tape:batch_jacobian(hs[5], hs[4])
    local J43 = tape:batch_jacobian(hs[4], hs[3])
    near_table(mg.matmul(J54, J43):totable(), Js[4]:totable(), 1e-12)
  end)
  it("chunks to the memory budget with the same result", function()
    local x = mg.randn(3, 4, F64)
    local tape, y = recorded(x)
    local full = tape:batch_jacobian(y, x):totable()
    local budget = mg.memory().budget
    mg.set_memory_budget(1)                         -- one basis vector per sweep
    local chunked = tape:batch_jacobian(y, x):totable()
    local chunked_j = tape:jacobian(y, x):totable()
    mg.set_memory_budget(budget)
    near_table(full, chunked, 0)
    near_table(tape:jacobian(y, x):totable(), chunked_j, 0)
  end)
  it("batch_jacobian{check=true} refuses cross-batch dependence (TF silently returns wrong numbers)", function()
    local x = mg.randn(3, 4, F64)
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(x)
    local y = f(x) + x:sum(1, true):narrow(2, 1, 3)   -- every row depends on every row
    local ok, err = pcall(tape.batch_jacobian, tape, y, x, { check = true })
    assert.is_false(ok)
    assert.matches("batch_jacobian: target entries depend on other batch entries", err)
    local y2 = f(x)
    assert.are.same({ 3, 3, 4 }, tape:batch_jacobian(y2, x, { check = true }):shape())
  end)
  it("batch sizes must agree", function()
    local x = mg.randn(3, 4, F64)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local y = f(x):narrow(1, 1, 2)
    local ok, err = pcall(tape.batch_jacobian, tape, y, x)
    assert.is_false(ok)
    assert.matches("batch_jacobian: target %(2,3%) and source %(3,4%) differ in batch size", err)
  end)
end)

describe("function transforms", function()
  it("grad with argnums, value_and_grad", function()
    local f = function(a, b) return (a * b * b):sum() end
    local a, b = mg.tensor({ 1, 2 }, F64), mg.tensor({ 3, 4 }, F64)
    assert.are.same({ 9, 16 }, mg.grad(f)(a, b):totable())
    local g = mg.grad(f, { argnums = { 1, 2 } })(a, b)
    assert.are.same({ 6, 16 }, g[2]:totable())
    local v, ga = mg.value_and_grad(f)(a, b)
    assert.are.equal(41, v:item())
    assert.are.same({ 9, 16 }, ga:totable())
    assert.has_error(function() mg.grad(function(x) return x end)(a) end)   -- not a scalar
  end)
  it("vjp and jvp", function()
    local f = function(x) return x * x end
    local x = mg.tensor({ 1, 2, 3 }, F64)
    local y, back = mg.vjp(f, x)
    assert.are.same({ 1, 4, 9 }, y:totable())
    assert.are.same({ 2, 0, 6 }, back(mg.tensor({ 1, 0, 1 }, F64)):totable())
    assert.are.same({ 2, 4, 6 }, back(mg.ones(3, F64)):totable())      -- callable again
    local y2, t = mg.jvp(f, { x }, { mg.tensor({ 1, 1, 0 }, F64) })
    assert.are.same({ 1, 4, 9 }, y2:totable())
    assert.are.same({ 2, 4, 0 }, t:totable())
  end)
  it("jacobian, batch_jacobian and no_grad", function()
    local x = mg.tensor({ 1, 2 }, F64)
    local J = mg.jacobian(function(v) return v * v end, x, { mode = "fwd" })
    assert.are.same({ { 2, 0 }, { 0, 4 } }, J:totable())
    local B = mg.batch_jacobian(function(v) return v * 3 end, mg.ones(2, 2, F64))
    assert.are.same({ { { 3, 0 }, { 0, 3 } }, { { 3, 0 }, { 0, 3 } } }, B:totable())
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local y = mg.no_grad(function() return x * x end)
    assert.is_nil(tape:gradient(y, x))
  end)
end)
