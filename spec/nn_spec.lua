-- mg.nn: every cell against Keras's formulas written out by hand in plain Lua (float64),
-- initializers, the RNN driver (sequences, states, go_backwards, stateful, traces),
-- Bidirectional, Sequential, nn.Cell custom cells (seed 001's two-state cell and its
-- var(dh_t/dh_(t-1)) check), losses, gradchecks of all of them, and the error messages.
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

---------------------------------------------------------------- helpers

local F64, randn, maxdiff = support.F64, support.randn, support.maxdiff
local assert_close, assert_error = support.assert_close, support.assert_error
local L_mm = support.table_matmul                     -- plain-Lua linear algebra ("by hand")

local function sig(v) return 1 / (1 + math.exp(-v)) end
local function cols(M, first, n)                       -- columns first..first+n-1 of M
  local out = {}
  for i = 1, #M do
    out[i] = {}
    for j = 1, n do out[i][j] = M[i][first + j - 1] end
  end
  return out
end
-- a new table shaped like A with f(i, j) at (i, j)
local function map2(A, f)
  local out = {}
  for i = 1, #A do
    out[i] = {}
    for j = 1, #A[i] do out[i][j] = f(i, j) end
  end
  return out
end

-- Temporarily use 'ws' (name -> tensor) as the cell's weights while f runs (for gradcheck).
local function with_weights(cell, ws, f, ...)
  local saved = {}
  for k, v in pairs(ws) do saved[k], cell[k] = cell[k], v end
  local res = table.pack(pcall(f, ...))
  for k, v in pairs(saved) do cell[k] = v end
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

local function set_weights(cell)
  for _, p in ipairs(cell:parameters()) do p:assign(mg.randn(p:shape(), F64) * 0.5) end
end

---------------------------------------------------------------- Dense

describe("nn.Dense", function()
  setup(function() mg.manual_seed(10) end)
  it("computes activation(x W + b) on the last dimension of any rank", function()
    local d = nn.Dense(3, 2, { activation = "tanh", dtype = "float64" })
    d.kernel:assign(mg.tensor({ { 0.1, -0.2 }, { 0.3, 0.4 }, { -0.5, 0.6 } }, F64))
    d.bias:assign(mg.tensor({ 0.05, -0.05 }, F64))
    local x = randn(2, 4, 3)
    local y = d(x)
    assert.are.same({ 2, 4, 2 }, y:shape())
    local W, b = d.kernel:totable(), d.bias:totable()
    for i = 1, 2 do for t = 1, 4 do
      local row = x[i][t]:totable()
      for j = 1, 2 do
        local s = b[j]
        for k = 1, 3 do s = s + row[k] * W[k][j] end
        assert.is_near(math.tanh(s), y:get(i, t, j), 1e-14)
      end
    end end
    assert_close(d(x[1][1]), y[1][1], 1e-15)                        -- 1-d input
  end)
  it("has Keras's initializers, names and options", function()
    local d = nn.Dense(50, 30)
    assert.are.equal("float32", d.kernel.dtype)
    assert.are.equal("dense/kernel", d.kernel.name)
    assert.are.equal("dense/bias", d.bias.name)
    local lim = math.sqrt(6 / 80)
    assert.is_true(d.kernel:abs():max():item() <= lim)
    assert.is_near(lim * lim / 3, d.kernel:var():item(), 0.1 * lim * lim / 3)
    assert.are.equal(0, d.bias:abs():max():item())
    local nb = nn.Dense(4, 2, { use_bias = false, name = "proj" })
    assert.are.equal(1, #nb:parameters())
    assert.are.equal("proj/kernel", nb:parameters()[1].name)
    local fixed = mg.tensor({ { 1, 2 } }, F64)
    local dk = nn.Dense(1, 2, { kernel_initializer = fixed, dtype = "float64" })
    assert.are.same({ { 1, 2 } }, dk.kernel:totable())
    assert.is_true(dk.kernel:is_variable())
  end)
  it("rejects bad inputs with clear messages", function()
    local d = nn.Dense(3, 2)
    assert_error("Dense: input has 5 features, expected 3", d, mg.zeros(2, 5))
    assert_error("Dense: the input must be a tensor", d, 7)
    assert_error("Dense: unknown option 'use_bais'", nn.Dense, 3, 2, { use_bais = false })
    assert_error("Dense: the output size must be a positive integer", nn.Dense, 3, 0)
    assert_error("Dense: unknown activation swoosh", nn.Dense, 3, 2, { activation = "swoosh" })  -- swish is Keras's (silu)
    assert_error("Dense: kernel has shape (2,2), expected (3,2)", nn.Dense, 3, 2, { kernel_initializer = mg.zeros(2, 2) })
    assert_error("Dense: dtype must be", nn.Dense, 3, 2, { dtype = "int8" })
  end)
end)

---------------------------------------------------------------- cells by hand

describe("cells equal Keras's formulas written out by hand", function()
  local B, D, U = 3, 4, 5
  local x, h0, c0
  setup(function()
    mg.manual_seed(11)
    x, h0, c0 = randn(B, D), randn(B, U), randn(B, U)
  end)

  it("SimpleRNNCell: h' = tanh(x W + h U + b)", function()
    local cell = nn.SimpleRNNCell(D, U, F64)
    set_weights(cell)
    local out, st = cell(x, { h0 })
    local W, R, b = cell.kernel:totable(), cell.recurrent_kernel:totable(), cell.bias:totable()
    local xw, hu = L_mm(x:totable(), W), L_mm(h0:totable(), R)
    local want = map2(xw, function(i, j) return math.tanh(xw[i][j] + hu[i][j] + b[j]) end)
    assert_close(mg.tensor(want, F64), out, 1e-14)
    assert.is_true(rawequal(out, st[1]))
  end)

  it("LSTMCell: gates i, f, c, o; c' = f c + i g; h' = o tanh(c')", function()
    local cell = nn.LSTMCell(D, U, F64)
    set_weights(cell)
    local out, st = cell(x, { h0, c0 })
    local W, R, b = cell.kernel:totable(), cell.recurrent_kernel:totable(), cell.bias:totable()
    local z = L_mm(x:totable(), W)
    local hz = L_mm(h0:totable(), R)
    local c = c0:totable()
    local h2, c2 = {}, {}
    for i = 1, B do
      h2[i], c2[i] = {}, {}
      for j = 1, U do
        local function pre(g) return z[i][(g - 1) * U + j] + hz[i][(g - 1) * U + j] + b[(g - 1) * U + j] end
        local ig, fg, gg, og = sig(pre(1)), sig(pre(2)), math.tanh(pre(3)), sig(pre(4))
        c2[i][j] = fg * c[i][j] + ig * gg
        h2[i][j] = og * math.tanh(c2[i][j])
      end
    end
    assert_close(mg.tensor(h2, F64), out, 1e-14)
    assert_close(mg.tensor(c2, F64), st[2], 1e-14)
    assert.is_true(rawequal(out, st[1]))                     -- the output is the state h
  end)

  it("GRUCell reset_after=true: bias rows (input, recurrent), r applied after U", function()
    local cell = nn.GRUCell(D, U, F64)
    assert.is_true(cell.reset_after)
    assert.are.same({ 2, 3 * U }, cell.bias:shape())
    set_weights(cell)
    local out = cell(x, { h0 })
    local W, R, b = cell.kernel:totable(), cell.recurrent_kernel:totable(), cell.bias:totable()
    local mx, mh, h = L_mm(x:totable(), W), L_mm(h0:totable(), R), h0:totable()
    local want = map2(h, function(i, j)
      local function gx(g) return mx[i][(g - 1) * U + j] + b[1][(g - 1) * U + j] end
      local function gh(g) return mh[i][(g - 1) * U + j] + b[2][(g - 1) * U + j] end
      local z, r = sig(gx(1) + gh(1)), sig(gx(2) + gh(2))
      local hh = math.tanh(gx(3) + r * gh(3))
      return z * h[i][j] + (1 - z) * hh
    end)
    assert_close(mg.tensor(want, F64), out, 1e-14)
  end)

  it("GRUCell reset_after=false: hh = tanh(x W_h + (r h) U_h + b_h)", function()
    local cell = nn.GRUCell(D, U, { reset_after = false, dtype = "float64" })
    assert.are.same({ 3 * U }, cell.bias:shape())
    set_weights(cell)
    local out = cell(x, { h0 })
    local W, R, b = cell.kernel:totable(), cell.recurrent_kernel:totable(), cell.bias:totable()
    local mx, h = L_mm(x:totable(), W), h0:totable()
    local hzr = L_mm(h, cols(R, 1, 2 * U))
    local r = map2(h, function(i, j) return sig(mx[i][U + j] + hzr[i][U + j] + b[U + j]) end)
    local rh = map2(h, function(i, j) return r[i][j] * h[i][j] end)
    local rhu = L_mm(rh, cols(R, 2 * U + 1, U))
    local want = map2(h, function(i, j)
      local z = sig(mx[i][j] + hzr[i][j] + b[j])
      local hh = math.tanh(mx[i][2 * U + j] + rhu[i][j] + b[2 * U + j])
      return z * h[i][j] + (1 - z) * hh
    end)
    assert_close(mg.tensor(want, F64), out, 1e-14)
  end)

  it("use_bias=false cells have no bias and still match", function()
    local cell = nn.LSTMCell(D, U, { use_bias = false, dtype = "float64" })
    assert.is_nil(cell.bias)
    assert.are.equal(2, #cell:parameters())
    local ref = nn.LSTMCell(D, U, { dtype = "float64", unit_forget_bias = false })
    ref.kernel:assign(cell.kernel)
    ref.recurrent_kernel:assign(cell.recurrent_kernel)
    assert_close(ref(x, { h0, c0 }), cell(x, { h0, c0 }), 0)
  end)

  it("default states are zeros; a lone tensor is a one-state array", function()
    local cell = nn.GRUCell(D, U, F64)
    assert_close(cell(x), cell(x, cell:initial_state(B)), 0)
    assert_close(cell(x), cell(x, mg.zeros(B, U, F64)), 0)
    assert.are.same({ U }, cell:state_size())
    assert.are.same({ U, U }, nn.LSTMCell(D, U):state_size())
    local s = nn.LSTMCell(D, U, F64):initial_state(2)
    assert.are.equal(2, #s)
    assert.are.same({ 2, U }, s[2]:shape())
    assert.are.equal("float64", s[1].dtype)
  end)
end)

describe("cell initializers (Keras)", function()
  setup(function() mg.manual_seed(12) end)
  local function check_init(cell, G, nin, u)
    local lim = math.sqrt(6 / (nin + G * u))
    assert.is_true(cell.kernel:abs():max():item() <= lim)
    assert.is_near(lim * lim / 3, cell.kernel:to("float64"):var():item(), 0.12 * lim * lim / 3)
    local R = cell.recurrent_kernel:to("float64")                     -- (u, G u): orthonormal rows
    assert_close(mg.eye(u, F64), R:matmul(R:transpose(1, 2)), 1e-5)
  end
  it("LSTM: glorot kernel, orthogonal recurrent kernel, unit forget bias", function()
    local cell = nn.LSTMCell(20, 16)
    check_init(cell, 4, 20, 16)
    local b = cell.bias:totable()
    for j = 1, 64 do assert.are.equal((j > 16 and j <= 32) and 1 or 0, b[j]) end
    assert.are.equal(0, nn.LSTMCell(3, 4, { unit_forget_bias = false }).bias:abs():sum():item())
    assert.are.same({ 0, 1, 0, 0 }, nn.LSTMCell(3, 1, { bias_initializer = "zeros" }).bias:totable())
    local given = mg.full({ 4 }, 0.5)
    assert.are.same({ 0.5, 0.5, 0.5, 0.5 }, nn.LSTMCell(3, 1, { bias_initializer = given }).bias:totable())
    assert.are.same({ "lstm/kernel", "lstm/recurrent_kernel", "lstm/bias" },
      (function() local n = {} for i, p in ipairs(cell:parameters()) do n[i] = p.name end return n end)())
  end)
  it("GRU and SimpleRNN: glorot, orthogonal, zero bias", function()
    local g = nn.GRUCell(10, 12, F64)
    check_init(g, 3, 10, 12)
    assert.are.equal(0, g.bias:abs():sum():item())
    assert.are.equal("gru/bias", g.bias.name)
    local s = nn.SimpleRNNCell(10, 12, F64)
    check_init(s, 1, 10, 12)
    assert.are.equal("simple_rnn/recurrent_kernel", s.recurrent_kernel.name)
    assert.are.equal("float64", s.kernel.dtype)
  end)
  it("initializers may be names, functions or tensors", function()
    local c = nn.SimpleRNNCell(2, 3, { kernel_initializer = "ones", recurrent_initializer = "zeros",
      bias_initializer = function(shape, dtype) return mg.full(shape, 0.5, { dtype = dtype }) end })
    assert.are.same({ { 1, 1, 1 }, { 1, 1, 1 } }, c.kernel:totable())
    assert.are.same({ 0.5, 0.5, 0.5 }, c.bias:totable())
    assert_error("SimpleRNNCell: unknown initializer he_gaussian", nn.SimpleRNNCell, 2, 3,
      { kernel_initializer = "he_gaussian" })
  end)
end)

---------------------------------------------------------------- nn.Cell (seed 001)

-- Seed 001's two-state cell: h = W_h relu(h_old) + b, c = c_old - h_old + h,
-- o = sigmoid(W_o x + c).
local TwoState = nn.Cell {
  name = "two_state",
  state_size = function(self) return { self.units, self.units } end,
  init = function(self, input_dim, units, opts)
    self.units, self.act = units, opts.activation or mg.relu
    self.linear_rec = nn.Dense(units, units, { dtype = opts.dtype, name = self.name .. "/rec" })
    self.linear_in = nn.Dense(input_dim, units, { use_bias = false, dtype = opts.dtype, name = self.name .. "/in" })
  end,
  call = function(self, x, states)
    local h_old, c_old = states[1], states[2]
    local h = self.linear_rec(self.act(h_old))
    local c = c_old - h_old + h
    return mg.sigmoid(self.linear_in(x) + c), { h, c }
  end,
}

describe("nn.Cell custom cells", function()
  setup(function() mg.manual_seed(13) end)
  it("seed 001's two-state cell computes its definition", function()
    local cell = TwoState(2, 6, F64)
    local x, h0, c0 = randn(3, 2), randn(3, 6), randn(3, 6)
    local o, st = cell(x, { h0, c0 })
    local Wh, bh, Wo = cell.linear_rec.kernel, cell.linear_rec.bias, cell.linear_in.kernel
    local h = mg.relu(h0):matmul(Wh) + bh
    assert_close(h, st[1], 1e-14)
    assert_close(c0 - h0 + h, st[2], 1e-14)
    assert_close(mg.sigmoid(x:matmul(Wo) + c0 - h0 + h), o, 1e-14)
    assert.are.same({ "two_state/rec/kernel", "two_state/rec/bias", "two_state/in/kernel" },
      (function() local n = {} for i, p in ipairs(cell:parameters()) do n[i] = p.name end return n end)())
    assert.are.same({ 6, 6 }, cell:state_size())
    assert.are.equal("float64", cell:initial_state(2)[1].dtype)
  end)

  it("seed 001: mean var(dh_t/dh_(t-1)) * units is 0.5 with ReLU and 1.0 linear", function()
    -- Glorot gives var(W) = 2 / (2 units) = 1/units; ReLU zeroes half the columns of
    -- W^T diag(relu'(h)). 16 sequences of 4 steps (the seed's length): over longer runs on one
    -- weight matrix h aligns with W's leading directions and the masks stop being random.
    local units, T = 100, 4
    local function stat(act)
      local cell = TwoState(2, units, { activation = act, dtype = "float64" })
      local rnn = nn.RNN(cell, { return_sequences = true, return_state = true })
      local x, h0, c0 = randn(16, T, 2), randn(16, units), randn(16, units)
      local tape <close> = mg.GradientTape { persistent = true }
      local tr = tape:record(function() return rnn:trace(x, { h0, c0 }) end)
      local s = 0
      for t = 1, T do
        local J = tape:batch_jacobian(tr.h[t], tr.h[t - 1])
        assert.are.same({ 16, units, units }, J:shape())
        s = s + J:var():item() * units
      end
      return s / T
    end
    assert.is_near(0.5, stat(mg.relu), 0.06)
    assert.is_near(1.0, stat(function(v) return v end), 0.08)
  end)

  it("the Jacobian of the trace is W^T diag(relu'(h_(t-1))) exactly", function()
    local cell = TwoState(2, 5, F64)
    local rnn = nn.RNN(cell)
    local x, h0, c0 = randn(2, 3, 2), randn(2, 5), randn(2, 5)
    local tape <close> = mg.GradientTape { persistent = true }
    local tr = tape:record(function() return rnn:trace(x, { h0, c0 }) end)
    local J = tape:batch_jacobian(tr.h[2], tr.h[1])
    local Wt = cell.linear_rec.kernel:transpose(1, 2)
    for b = 1, 2 do
      local mask = mg.gt(tr.h[1][b], 0)
      assert_close(Wt * mask, J[b], 1e-14)
    end
  end)

  it("works in RNN, Bidirectional, and with an Optimizer's parameters", function()
    local rnn = nn.RNN(TwoState(2, 4, F64), { return_sequences = true, return_state = true })
    local x = randn(3, 5, 2)
    local o, h, c = rnn(x)
    assert.are.same({ 3, 5, 4 }, o:shape())
    assert.are.same({ 3, 4 }, h:shape())
    assert.are.same({ 3, 4 }, c:shape())
    local bi = nn.Bidirectional(nn.RNN(TwoState(2, 4, F64), { return_sequences = true }))
    assert.are.same({ 3, 5, 8 }, bi(x):shape())
    local names = {}
    for i, p in ipairs(bi:parameters()) do names[i] = p.name end
    assert.are.same({ "two_state/rec/kernel", "two_state/rec/bias", "two_state/in/kernel",
      "backward_two_state/rec/kernel", "backward_two_state/rec/bias", "backward_two_state/in/kernel" }, names)
    assert.is_not_nil(mg.optim.Adam(bi:parameters()))
  end)

  it("self:variable, direct Variables, shared layers counted once, fixed state sizes", function()
    local Scaled = nn.Cell {
      state_size = 3,
      init = function(self, n)
        self.w = self:variable("w", mg.ones(n, F64))
        self.d1 = nn.Dense(n, n, F64)
        self.d2 = self.d1                                  -- shared: counted once
      end,
      call = function(self, x, states)
        local h = mg.tanh(self.d1(x) * self.w + states[1])
        return h, h                                        -- a lone tensor is a one-state array
      end,
    }
    local cell = Scaled(3)
    local ps = cell:parameters()
    assert.are.equal(3, #ps)
    assert.are.equal("cell/w", ps[1].name)
    local o, st = cell(randn(2, 3))
    assert.are.same({ 2, 3 }, o:shape())
    assert.are.equal(1, #st)
  end)

  it("reports definition and call mistakes", function()
    assert_error("Cell: the definition needs call=", nn.Cell, { state_size = 2 })
    assert_error("Cell: the definition needs state_size", nn.Cell, { call = function() end })
    local Bad = nn.Cell { name = "bad", state_size = { 2, 2 },
      call = function(_, x, states) return x, { states[1] } end }
    assert_error("bad (new states returned by call): got 1 state tensors, expected 2", Bad(), randn(1, 2))
    local Wrong = nn.Cell { name = "wrong", state_size = 2,
      call = function(_, x) return x, { mg.zeros(1, 3, F64) } end }
    assert_error("wrong (new states returned by call): state 1 has shape (1,3), expected (1,2)", Wrong(), randn(1, 2))
    assert_error("RNN: got the cell class 'two_state'; pass an instance, two_state(...)", nn.RNN, TwoState)
    local Neg = nn.Cell { name = "neg", state_size = -1, call = function() end }
    assert_error("neg: state_size[1] must be a positive integer", Neg)
  end)
end)

---------------------------------------------------------------- RNN

describe("nn.RNN", function()
  local B, T, D, U = 2, 5, 3, 4
  local x
  setup(function()
    mg.manual_seed(14)
    x = randn(B, T, D)
  end)

  -- the per-step loop written with the cell alone
  local function unroll(cell, xs, states, backwards)
    local outs = {}
    for s = 1, xs:size(2) do
      local t = backwards and xs:size(2) - s + 1 or s
      outs[s], states = cell(xs:select(2, t), states)
    end
    return outs, states
  end

  it("return_sequences / return_state follow Keras", function()
    local cell = nn.LSTMCell(D, U, F64)
    local outs, st = unroll(cell, x, nil)
    local last = nn.RNN(cell)(x)
    assert_close(outs[T], last, 0)
    local seq, h, c = nn.RNN(cell, { return_sequences = true, return_state = true })(x)
    assert.are.same({ B, T, U }, seq:shape())
    for t = 1, T do assert_close(outs[t], seq:select(2, t), 0) end
    assert_close(st[1], h, 0)
    assert_close(st[2], c, 0)
    local o2, h2 = nn.RNN(nn.GRUCell(D, U, F64), { return_state = true })(x)
    assert_close(o2, h2, 0)
    assert.is_nil(select(3, nn.RNN(nn.GRUCell(D, U, F64), { return_state = true })(x)))
  end)

  it("initial states are used, and checked", function()
    local cell = nn.LSTMCell(D, U, F64)
    local h0, c0 = randn(B, U), randn(B, U)
    local outs = unroll(cell, x, { h0, c0 })
    assert_close(outs[T], nn.RNN(cell)(x, { h0, c0 }), 0)
    assert_error("RNN: state 2 has shape (2,5), expected (2,4)", nn.RNN(cell), x, { h0, randn(B, 5) })
    assert_error("RNN: got 1 state tensors, expected 2", nn.RNN(cell), x, { h0 })
  end)

  it("go_backwards processes from the end and returns outputs in that order", function()
    local cell = nn.SimpleRNNCell(D, U, F64)
    local outs = unroll(cell, x, nil, true)
    local seq = nn.RNN(cell, { return_sequences = true, go_backwards = true })(x)
    for s = 1, T do assert_close(outs[s], seq:select(2, s), 0) end
    -- the same as running forward on the reversed sequence
    local rev = {}
    for t = 1, T do rev[t] = x:select(2, T - t + 1) end
    assert_close(nn.RNN(cell, { return_sequences = true })(mg.stack(rev, 2)), seq, 0)
  end)

  it("stateful layers continue where the last call stopped; reset_states forgets", function()
    local cell = nn.LSTMCell(D, U, F64)
    local full = nn.RNN(cell, { return_sequences = true })(x)
    local rnn = nn.RNN(cell, { return_sequences = true, stateful = true })
    local a = rnn(x:narrow(2, 1, 2))
    local b = rnn(x:narrow(2, 3, 3))
    assert_close(full, mg.cat({ a, b }, 2), 1e-15)
    rnn:reset_states()
    assert_close(full:narrow(2, 1, 2), rnn(x:narrow(2, 1, 2)), 0)
    assert_error("RNN: stateful layer kept states for batch size 2, got batch size 1", rnn, x:narrow(1, 1, 1))
    rnn:reset_states({ mg.zeros(B, U, F64), mg.zeros(B, U, F64) })
    assert_close(full:narrow(2, 1, 2), rnn(x:narrow(2, 1, 2)), 0)
  end)

  it("trace holds the very tensors of the recurrence", function()
    local cell = nn.LSTMCell(D, U, F64)
    local h0, c0 = randn(B, U), randn(B, U)
    local rnn = nn.RNN(cell, { return_sequences = true, return_state = true })
    local tr = rnn:trace(x, { h0, c0 })
    assert.is_true(rawequal(tr.h[0], h0))
    assert.is_true(rawequal(tr.c[0], c0))
    assert.is_true(rawequal(tr.h, tr.states[1]))
    assert.is_true(rawequal(tr.c, tr.states[2]))
    assert.are.equal(T, #tr.outputs)
    assert.are.equal(T, #tr.h)
    for t = 1, T do assert.is_true(rawequal(tr.outputs[t], tr.h[t])) end
    local seq, h, c = rnn(x, { h0, c0 })
    assert_close(mg.stack(tr.outputs, 2), seq, 0)
    assert_close(tr.h[T], h, 0)
    assert_close(tr.c[T], c, 0)
    -- h_t really is cell(x_t, {h_(t-1), c_(t-1)})
    local o = cell(x:select(2, 3), { tr.h[2], tr.c[2] })
    assert_close(o, tr.h[3], 0)
  end)

  it("tape:gradient(loss, tr.h) is the total dL/dh_t, in one pass", function()
    local cell = nn.LSTMCell(D, U, F64)
    local R = randn(B, T, U)
    local rnn = nn.RNN(cell)
    local tape <close> = mg.GradientTape()
    local tr, loss = tape:record(function()
      local tr = rnn:trace(x)
      return tr, (mg.stack(tr.outputs, 2) * R):sum()
    end)
    local g = tape:gradient(loss, tr.h)
    for t = 1, T do
      -- the loss as a function of h_t with c_t fixed: the direct term plus every later step
      local function tail(h)
        local l = (h * R:select(2, t)):sum()
        if t < T then
          local later = nn.RNN(cell, { return_sequences = true })(x:narrow(2, t + 1, T - t), { h, tr.c[t] })
          l = l + (later * R:narrow(2, t + 1, T - t)):sum()
        end
        return l
      end
      assert_close(mg.grad(tail)(tr.h[t]), g[t], 1e-12)
    end
  end)

  it("batch_jacobian(tr.h[t], tr.h[t-1]) is dh_t/dh_(t-1)", function()
    local cell = nn.GRUCell(D, U, F64)
    local tape <close> = mg.GradientTape { persistent = true }
    local tr = tape:record(function() return nn.RNN(cell):trace(x) end)
    for t = 1, T do
      local J = tape:batch_jacobian(tr.h[t], tr.h[t - 1])
      local want = mg.batch_jacobian(function(h) return (cell(x:select(2, t), { h })) end, tr.h[t - 1])
      assert_close(want, J, 1e-13)
    end
  end)

  it("rejects bad inputs", function()
    local rnn = nn.RNN(nn.LSTMCell(8, 4))
    assert_error("LSTMCell: input has 5 features, expected 8", rnn, mg.zeros(2, 3, 5))
    assert_error("RNN: input must be (batch, time, features), got shape (2,8)", rnn, mg.zeros(2, 8))
    assert_error("RNN: input has no timesteps", rnn, mg.zeros(2, 0, 8))
    assert_error("RNN: expected a cell, got a number", nn.RNN, 3)
    assert_error("RNN: unknown option 'return_sequence'", nn.RNN, nn.LSTMCell(2, 2), { return_sequence = true })
    assert_error("RNN: option 'stateful' must be a boolean", nn.RNN, nn.LSTMCell(2, 2), { stateful = 1 })
    assert_error("LSTMCell: units must be a positive integer", nn.LSTMCell, 3, 2.5)
    assert_error("LSTMCell: state 1 has shape (2,3), expected (2,4)", nn.LSTMCell(8, 4), mg.zeros(2, 8),
      { mg.zeros(2, 3), mg.zeros(2, 4) })
    assert_error("GRUCell: the input must be 2-d", nn.GRUCell(8, 4), mg.zeros(8))
  end)
end)

---------------------------------------------------------------- Bidirectional, Sequential

describe("nn.Bidirectional", function()
  local B, T, D, U = 2, 4, 3, 3
  local x
  setup(function()
    mg.manual_seed(15)
    x = randn(B, T, D)
  end)

  local function reversed(t)
    local parts = {}
    for s = 1, t:size(2) do parts[s] = t:select(2, t:size(2) - s + 1) end
    return mg.stack(parts, 2)
  end

  for _, mode in ipairs({ "concat", "sum", "mul", "ave" }) do
    it("merge_mode " .. mode .. " flips the backward outputs into time order", function()
      local bi = nn.Bidirectional(nn.RNN(nn.LSTMCell(D, U, F64), { return_sequences = true }), { merge_mode = mode })
      local f = nn.RNN(bi.forward_layer.cell, { return_sequences = true })(x)
      local b = reversed(nn.RNN(bi.backward_layer.cell, { return_sequences = true })(reversed(x)))
      local want = mode == "concat" and mg.cat({ f, b }, 3) or mode == "sum" and f + b
                   or mode == "mul" and f * b or (f + b) / 2
      assert_close(want, bi(x), 1e-15)
    end)
  end

  it("without return_sequences merges each direction's last step; states forward then backward", function()
    local bi = nn.Bidirectional(nn.RNN(nn.LSTMCell(D, U, F64), { return_state = true }))
    local init = { randn(B, U), randn(B, U), randn(B, U), randn(B, U) }
    local out, hf, cf, hb, cb = bi(x, init)
    local fo, fh, fc = nn.RNN(bi.forward_layer.cell, { return_state = true })(x, { init[1], init[2] })
    local bo, bh, bc = nn.RNN(bi.backward_layer.cell, { return_state = true })(reversed(x), { init[3], init[4] })
    assert_close(mg.cat({ fo, bo }, 2), out, 1e-15)
    assert_close(fh, hf, 1e-15); assert_close(fc, cf, 1e-15)
    assert_close(bh, hb, 1e-15); assert_close(bc, cb, 1e-15)
    assert_error("Bidirectional: got 2 initial states, expected 4", bi, x, { init[1], init[2] })
  end)

  it("has fresh backward weights named backward_*, and a trace per direction", function()
    local fwd = nn.RNN(nn.GRUCell(D, U, { reset_after = false, dtype = "float64" }), { return_sequences = true })
    local bi = nn.Bidirectional(fwd)
    assert.is_true(rawequal(bi.forward_layer, fwd))
    assert.is_false(bi.backward_layer.cell.reset_after)
    assert.is_true(bi.backward_layer.go_backwards)
    assert.are.equal("backward_gru/kernel", bi:parameters()[4].name)
    assert.is_true(maxdiff(bi:parameters()[1], bi:parameters()[4]) > 0)
    local tr = bi:trace(x)
    assert.are.equal(T, #tr.forward.h)
    assert.are.equal(T, #tr.backward.h)
    assert_close(mg.stack(tr.outputs, 2), bi(x), 0)
    assert_error("Bidirectional: merge_mode must be concat, sum, mul or ave, got max", nn.Bidirectional, fwd,
      { merge_mode = "max" })
    assert_error("Bidirectional: expected an nn.RNN", nn.Bidirectional, nn.GRUCell(2, 2))
  end)
end)

describe("nn.Sequential and parameters()", function()
  it("chains layers and functions, collecting parameters in order", function()
    mg.manual_seed(16)
    local model = nn.Sequential {
      nn.RNN(nn.LSTMCell(3, 4, F64), { return_sequences = true }),
      nn.RNN(nn.GRUCell(4, 5, { dtype = "float64", name = "gru2" })),
      mg.relu,
      nn.Dense(5, 2, { dtype = "float64" }),
    }
    local x = randn(2, 6, 3)
    local l = model.layers
    assert_close(l[4](mg.relu(l[2](l[1](x)))), model(x), 0)
    local names = {}
    for i, p in ipairs(model:parameters()) do
      names[i] = p.name
      assert.is_true(p:is_variable())
    end
    assert.are.same({ "lstm/kernel", "lstm/recurrent_kernel", "lstm/bias", "gru2/kernel",
      "gru2/recurrent_kernel", "gru2/bias", "dense/kernel", "dense/bias" }, names)
    model:add(mg.tanh)
    assert.are.same({ 2, 2 }, model(x):shape())
    assert_error("Sequential: layer 2 is a number, expected a layer or a function", nn.Sequential, { mg.relu, 3 })
  end)
  it("every layer prints", function()
    assert.are.equal("LSTMCell(3 -> 4, float64)", tostring(nn.LSTMCell(3, 4, F64)))
    assert.are.equal("Dense(3 -> 4, float32)", tostring(nn.Dense(3, 4, { dtype = "float32" })))
    assert.truthy(tostring(nn.RNN(nn.GRUCell(1, 2))):find("GRUCell", 1, true))
  end)
end)

---------------------------------------------------------------- losses

describe("losses", function()
  setup(function() mg.manual_seed(17) end)
  it("mse is the mean of squares over every element", function()
    local p, t = randn(3, 4), randn(3, 4)
    local s = 0
    for i = 1, 3 do for j = 1, 4 do s = s + (p:get(i, j) - t:get(i, j)) ^ 2 end end
    assert.is_near(s / 12, nn.mse(p, t):item(), 1e-14)
    assert_error("mse: pred has shape (3,4) but target has shape (4,3)", nn.mse, p, randn(4, 3))
  end)
  it("cross_entropy from 1-based indices equals one-hot, and the hand formula", function()
    local logits = randn(4, 3)
    local idx = { 3, 1, 2, 3 }
    local want = 0
    for i = 1, 4 do
      local row = logits[i]:totable()
      local m = math.max(table.unpack(row))
      local lse = 0
      for j = 1, 3 do lse = lse + math.exp(row[j] - m) end
      want = want + (m + math.log(lse) - row[idx[i]])
    end
    want = want / 4
    assert.is_near(want, nn.cross_entropy(logits, mg.tensor(idx, F64)):item(), 1e-14)
    assert.is_near(want, nn.cross_entropy(logits, idx):item(), 1e-14)
    local onehot = mg.zeros(4, 3, F64)
    for i = 1, 4 do onehot:set(1, i, idx[i]) end
    assert.is_near(want, nn.cross_entropy(logits, onehot):item(), 1e-14)
    -- stable for huge logits
    local big = mg.tensor({ { 1000, 0 } }, F64)
    assert.is_near(1000, nn.cross_entropy(big, { 2 }):item(), 1e-9)
    -- (B, T, C) logits with (B, T) labels
    local l3 = randn(2, 3, 4)
    local lab = mg.tensor({ { 1, 2, 3 }, { 4, 4, 1 } }, F64)
    assert.is_near(nn.cross_entropy(l3:reshape(6, 4), lab:reshape(6)):item(), nn.cross_entropy(l3, lab):item(), 1e-14)
    assert_error("cross_entropy: label 4 at position 2 is not a class index in 1..3", nn.cross_entropy, logits,
      { 1, 4, 1, 1 })
    assert_error("cross_entropy: labels have shape (3)", nn.cross_entropy, logits, { 1, 2, 3 })
  end)
  it("binary_cross_entropy, with clamping and from logits", function()
    local p = mg.tensor({ 0.2, 0.9, 0.5 }, F64)
    local t = mg.tensor({ 0, 1, 1 }, F64)
    local want = -(math.log(0.8) + math.log(0.9) + math.log(0.5)) / 3
    assert.is_near(want, nn.binary_cross_entropy(p, t):item(), 1e-14)
    local v = nn.binary_cross_entropy(mg.tensor({ 0, 1 }, F64), mg.tensor({ 1, 0 }, F64)):item()
    assert.is_near(-math.log(1e-7), v, 1e-6)                            -- finite
    local z = randn(5)
    local tz = mg.tensor({ 1, 0, 1, 1, 0 }, F64)
    assert.is_near(nn.binary_cross_entropy(mg.sigmoid(z), tz):item(),
      nn.binary_cross_entropy(z, tz, { from_logits = true }):item(), 1e-12)
    assert_error("binary_cross_entropy: p has shape (3) but target has shape (2)", nn.binary_cross_entropy, p,
      mg.zeros(2))
  end)
end)

---------------------------------------------------------------- gradcheck

describe("gradcheck", function()
  local B, T, D, U = 2, 3, 3, 2
  setup(function() mg.manual_seed(18) end)

  local function check(f, inputs) assert.is_true(mg.gradcheck(f, inputs)) end

  local cells = {
    { "SimpleRNNCell", function() return nn.SimpleRNNCell(D, U, F64) end },
    { "LSTMCell", function() return nn.LSTMCell(D, U, F64) end },
    { "GRUCell reset_after", function() return nn.GRUCell(D, U, F64) end },
    { "GRUCell reset_before", function() return nn.GRUCell(D, U, { reset_after = false, dtype = "float64" }) end },
    { "custom two-state cell (linear)", function() return TwoState(D, U, { activation = function(v) return v end, dtype = "float64" }) end },
  }
  for _, c in ipairs(cells) do
    it(c[1] .. ": w.r.t. input, states and every weight", function()
      local cell = c[2]()
      set_weights(cell)
      local n = #cell:state_size()
      local x, states = randn(B, D), {}
      for k = 1, n do states[k] = randn(B, U) end
      -- every output and new state, flattened into one vector
      local function all(o, st)
        local parts = { o:reshape(-1) }
        for k = 1, n do parts[k + 1] = st[k]:reshape(-1) end
        return mg.cat(parts, 1)
      end
      check(function(xx, ...) return all(cell(xx, { ... })) end, { x, table.unpack(states) })
      if cell.kernel then
        local ws = { kernel = cell.kernel, recurrent_kernel = cell.recurrent_kernel, bias = cell.bias }
        check(function(W, R, b)
          return with_weights(cell, { kernel = W, recurrent_kernel = R, bias = b },
            function() return all(cell(x, states)) end)
        end, { ws.kernel, ws.recurrent_kernel, ws.bias })
      end
    end)
  end

  it("Dense, any rank, w.r.t. input, kernel and bias", function()
    local d = nn.Dense(D, 2, { activation = "sigmoid", dtype = "float64" })
    set_weights(d)
    check(function(x) return d(x) end, { randn(2, 2, D) })
    local x = randn(2, D)
    check(function(W, b) return with_weights(d, { kernel = W, bias = b }, function() return d(x) end) end,
      { d.kernel, d.bias })
  end)

  it("RNN (LSTM, return_sequences and states) w.r.t. input, initial states and weights", function()
    local cell = nn.LSTMCell(D, U, F64)
    set_weights(cell)
    local rnn = nn.RNN(cell, { return_sequences = true, return_state = true })
    local function f(x, h0, c0)
      local o, h, c = rnn(x, { h0, c0 })
      return mg.cat({ o:reshape(-1), h:reshape(-1), c:reshape(-1) }, 1)
    end
    local x, h0, c0 = randn(B, T, D), randn(B, U), randn(B, U)
    check(f, { x, h0, c0 })
    check(function(W, R, b)
      return with_weights(cell, { kernel = W, recurrent_kernel = R, bias = b }, f, x, h0, c0)
    end, { cell.kernel, cell.recurrent_kernel, cell.bias })
  end)

  it("go_backwards GRU and a loss on the trace", function()
    local cell = nn.GRUCell(D, U, F64)
    set_weights(cell)
    local rnn = nn.RNN(cell, { go_backwards = true })
    check(function(x, h0)
      local tr = rnn:trace(x, { h0 })
      local s = tr.h[1]:sum()
      for t = 2, T do s = s + (tr.h[t] * tr.h[t - 1]):sum() end
      return s
    end, { randn(B, T, D), randn(B, U) })
  end)

  it("Bidirectional, every merge mode", function()
    for _, mode in ipairs({ "concat", "sum", "mul", "ave" }) do
      local bi = nn.Bidirectional(nn.RNN(nn.LSTMCell(D, U, F64), { return_sequences = true }), { merge_mode = mode })
      check(function(x) return bi(x) end, { randn(B, T, D) })
    end
    local bi = nn.Bidirectional(nn.RNN(nn.SimpleRNNCell(D, U, F64), { return_state = true }))
    check(function(x, a, b)
      local o, hf, hb = bi(x, { a, b })
      return mg.cat({ o:reshape(-1), hf:reshape(-1), hb:reshape(-1) }, 1)
    end, { randn(B, T, D), randn(B, U), randn(B, U) })
  end)

  it("Sequential and the losses", function()
    local model = nn.Sequential { nn.RNN(nn.GRUCell(D, U, F64)), nn.Dense(U, 3, F64) }
    check(function(x) return model(x) end, { randn(B, T, D) })
    check(function(p, t) return nn.mse(p, t) end, { randn(3, 4), randn(3, 4) })
    check(function(l) return nn.cross_entropy(l, { 2, 1, 3 }) end, { randn(3, 3) })
    check(function(l, t) return nn.cross_entropy(l, mg.softmax(t, 2)) end, { randn(3, 3), randn(3, 3) })
    check(function(p, t) return nn.binary_cross_entropy(p, t) end,
      { mg.rand(4, F64) * 0.8 + 0.1, mg.rand(4, F64) })
    check(function(z, t) return nn.binary_cross_entropy(z, t, { from_logits = true }) end, { randn(4), mg.rand(4, F64) })
  end)
end)
