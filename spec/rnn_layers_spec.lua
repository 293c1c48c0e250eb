-- The recurrent layers' behaviour beyond single calls (issue 14 section 1): the layer classes'
-- lazy build, call options, masks in traces and stateful runs, dropout masks' statistics and
-- reuse, gradients by finite differences, and PyTorch comparisons (a 2-layer nn.LSTM against
-- nn.RNN{cell, cell}; pack_padded_sequence against masks) through spec/torch_layers_ref.py.
-- The numbers of every option against Keras 3 are in spec/layers_spec.lua.
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local F64, assert_close, assert_error = support.F64, support.assert_close, support.assert_error

describe("the layer classes", function()
  it("build their cell at the first call, named after the layer", function()
    local l = nn.LSTM(3, { return_sequences = true })
    assert.are.same({}, l:parameters())
    local y = l(mg.randn(2, 4, 5))
    assert.are.same({ 2, 4, 3 }, y:shape())
    local names = {}
    for i, p in ipairs(l:parameters()) do names[i] = p.name end
    assert.are.same({ "lstm/kernel", "lstm/recurrent_kernel", "lstm/bias" }, names)
    assert.are.same({ 5, 12 }, l.cell.kernel:shape())
    assert.are.same({ 7, 6 }, nn.GRU(2, { input_size = 7, name = "g" }).cell.kernel:shape())
    assert.are.equal("g/bias", nn.GRU(2, { input_size = 7, name = "g" }):parameters()[3].name)
  end)
  it("equal nn.RNN over the cell with the same weights", function()
    local l = nn.GRU(3, { reset_after = false, go_backwards = true, input_size = 2, dtype = "float64" })
    local r = nn.RNN(l.cell, { go_backwards = true })
    local x = mg.randn(2, 4, 2, F64)
    assert_close(r(x), l(x), 0)
  end)
  it("reject unknown options and bad values", function()
    assert_error("LSTM: unknown option 'recurent_dropout'", nn.LSTM, 3, { recurent_dropout = 0.1 })
    assert_error("SimpleRNN: unknown option 'recurrent_activation'", nn.SimpleRNN, 3, { recurrent_activation = "relu" })
    assert_error("LSTMCell: dropout must be a number in [0, 1), got 1.5", nn.LSTM, 3, { dropout = 1.5, input_size = 2 })
    assert_error("GRUCell: unknown activation hard_tanh", nn.GRU, 3, { activation = "hard_tanh", input_size = 2 })
    assert_error("LSTMCell: option 'seed' must be an integer", nn.LSTMCell, 2, 3, { seed = 0.5 })
    assert_error("LSTM: units must be a positive integer", nn.LSTM, 0)
    assert_error("GRU: input must be (batch, time, features), got shape (2,3)", nn.GRU(2), mg.randn(2, 3))
    assert_error("RNN: input must be (batch, time, features)", nn.RNN(nn.GRUCell(3, 2)), mg.randn(2, 3))
  end)
end)

describe("call options", function()
  local l = nn.SimpleRNN(2, { input_size = 3, dtype = "float64", return_state = true })
  local x = mg.randn(2, 4, 3, F64)
  local h0 = mg.randn(2, 2, F64)
  it("are told apart from initial states by their keys", function()
    local _, a = l(x, { h0 })
    local _, b = l(x, { initial_state = { h0 } })
    local _, c = l(x, { h0 }, { training = false })
    assert_close(a, b, 0)
    assert_close(a, c, 0)
    local _, d = l(x, {})
    local _, e = l(x)
    assert_close(d, e, 0)
  end)
  it("reject unknown keys, states given twice, bad masks", function()
    assert_error("SimpleRNN: unknown option 'masks'", l, x, { masks = 1 })
    assert_error("SimpleRNN: initial states given twice", l, x, { h0 }, { initial_state = { h0 } })
    assert_error("SimpleRNN: option 'training' must be a boolean", l, x, { training = 1 })
    assert_error("SimpleRNN: mask has shape (2,3), expected (2,4) for input (2,4,3)", l, x, { mask = mg.ones(2, 3) })
    assert_error("SimpleRNN: mask must be a (batch, time) tensor", l, x, { mask = { 1, 1 } })
  end)
  it("nn.Sequential passes training and the mask on", function()
    local r = nn.LSTM(2, { dropout = 0.5, input_size = 3 })
    local m = nn.Sequential { r }
    local xx = mg.randn(4, 3, 3)
    assert_close(r(xx), m(xx), 0)
    local y1 = m(xx, { training = true })
    assert.is_true((y1 - r(xx)):abs():max():item() > 0)
    local mask = mg.tensor { { 1, 1, 0 }, { 1, 0, 0 }, { 1, 1, 1 }, { 0, 0, 0 } }
    assert_close(r(xx, { mask = mask }), m(xx, { mask = mask }), 0)
  end)
end)

describe("masks", function()
  local x = mg.randn(3, 6, 2, F64)
  local mask = mg.tensor { { 1, 1, 0, 1, 0, 0 }, { 0, 0, 1, 1, 1, 1 }, { 0, 0, 0, 0, 0, 0 } }
  it("carry the states through masked steps in the trace (h and c), exactly", function()
    for _, back in ipairs { false, true } do
      local r = nn.LSTM(3, { input_size = 2, dtype = "float64", go_backwards = back })
      local init = { mg.randn(3, 3, F64), mg.randn(3, 3, F64) }
      local tr = r:trace(x, init, { mask = mask })
      for t = 1, 6 do
        local ti = back and 7 - t or t
        for b = 1, 3 do
          for k = 1, 2 do
            local now, before = tr.states[k][t][b], tr.states[k][t - 1][b]
            if mask[b][ti]:item() == 0 then assert_close(before, now, 0) end
          end
        end
      end
      assert_close(init[1][3], tr.h[6][3], 0)             -- the fully masked row keeps h0
      -- the unmasked steps are the cell's steps from the carried states
      local h, c = tr.h[0][1]:unsqueeze(1), tr.c[0][1]:unsqueeze(1)
      for t = 1, 6 do
        local ti = back and 7 - t or t
        if mask[1][ti]:item() == 1 then h, c = r.cell:step(x[1][ti]:unsqueeze(1), h, c) end
        assert_close(h:squeeze(1), tr.h[t][1], 1e-15)
      end
    end
  end)
  it("give dL/dh_t of a padded batch: zero past the last real step, none through padding", function()
    local r = nn.GRU(3, { input_size = 2, dtype = "float64" })
    local m = mg.tensor { { 1, 1, 1, 1, 0, 0 }, { 1, 1, 1, 1, 1, 1 }, { 1, 1, 0, 0, 0, 0 } }
    local tape <close> = mg.GradientTape()
    local tr = r:trace(x, { mask = m })
    local g = tape:gradient((tr.h[6] * tr.h[6]):sum(), tr.h)
    -- for a row of length n the final state is h_n: dL/dh_t = dL/dh_n for t >= n
    assert_close(g[4][1], g[6][1], 1e-15)
    assert_close(g[2][3], g[5][3], 1e-15)
    assert.is_true(g[1][3]:abs():max():item() > 0)
  end)
  it("are respected by stateful layers: the kept states are the carried ones", function()
    local r = nn.SimpleRNN(2, { stateful = true, input_size = 2, dtype = "float64", return_state = true })
    local free = nn.RNN(r.cell, { return_state = true })
    local _, h1 = r(x, { mask = mask })
    local _, f1 = free(x, { mask = mask })
    assert_close(f1, h1, 0)
    local _, h2 = r(x, { mask = mask })
    local _, f2 = free(x, { f1 }, { mask = mask })
    assert_close(f2, h2, 0)
    r:reset_state()
    local _, h3 = r(x, { mask = mask })
    assert_close(f1, h3, 0)
  end)
  it("gradients of a masked, composed-activation LSTM match finite differences", function()
    local r = nn.LSTM(2, { input_size = 2, dtype = "float64", activation = "softsign",
      recurrent_activation = "hard_sigmoid", return_sequences = true })
    local R = mg.randn(3, 6, 2, F64)
    local cell = r.cell
    assert.is_true(mg.gradcheck(function(xx, W, U)
      cell.kernel, cell.recurrent_kernel = W, U
      return (r(xx, { mask = mask }) * R):sum()
    end, { x * 0.5, cell.kernel * 1, cell.recurrent_kernel * 1 }))
  end)
  it("gradients of a masked stacked RNN w.r.t. its nested initial states", function()
    local r = nn.RNN({ nn.GRUCell(2, 2, F64), nn.LSTMCell(2, 3, F64) }, { return_sequences = true })
    local R = mg.randn(3, 6, 3, F64)
    assert.is_true(mg.gradcheck(function(h1, h2, c2)
      return (r(x, { { h1 }, { h2, c2 } }, { mask = mask }) * R):sum()
    end, { mg.randn(3, 2, F64), mg.randn(3, 3, F64), mg.randn(3, 3, F64) }))
  end)
end)

describe("dropout in the cells", function()
  it("is the identity without training = true", function()
    local a = nn.LSTM(4, { dropout = 0.5, recurrent_dropout = 0.5, input_size = 3, dtype = "float64" })
    local b = nn.LSTM(4, { input_size = 3, dtype = "float64" })
    for i, p in ipairs(b:parameters()) do p:assign(a:parameters()[i]) end
    local x = mg.randn(2, 5, 3, F64)
    assert_close(b(x), a(x), 0)
    assert_close(b(x), a(x, { training = false }), 0)
  end)
  it("draws masks once per sequence with Keras's statistics (per gate with recurrent dropout)", function()
    mg.manual_seed(9)
    local l = nn.LSTM(60, { dropout = 0.3, recurrent_dropout = 0.6, input_size = 80 })
    l(mg.randn(100, 3, 80), { training = true })
    local dp, rdp = l.cell.last_dropout_mask, l.cell.last_recurrent_dropout_mask
    assert.are.equal(4, #dp)
    assert.are.equal(4, #rdp)
    for k = 1, 4 do
      local kept = mg.gt(dp[k], 0):to("float64"):mean():item()
      assert.is_near(0.7, kept, 4 * math.sqrt(0.21 / 8000))
      assert.is_near(1 / 0.7, dp[k]:max():item(), 1e-6)
      assert.are.same({ 100, 80 }, dp[k]:shape())
      local rk = mg.gt(rdp[k], 0):to("float64"):mean():item()
      assert.is_near(0.4, rk, 4 * math.sqrt(0.24 / 6000))
      assert.are.same({ 100, 60 }, rdp[k]:shape())
      if k > 1 then assert.is_true((dp[k] - dp[1]):abs():max():item() > 0) end   -- independent
    end
    local g = nn.GRU(5, { dropout = 0.5, input_size = 4 })
    g(mg.randn(3, 2, 4), { training = true })
    assert.is_true(mg.is_tensor(g.cell.last_dropout_mask))   -- one mask without recurrent dropout
  end)
  it("uses the one mask at every step (the step equals the cell run on masked inputs)", function()
    local l = nn.SimpleRNN(3, { dropout = 0.5, recurrent_dropout = 0.4, input_size = 4, dtype = "float64",
      return_sequences = true })
    local x = mg.randn(2, 5, 4, F64)
    local y = l(x, { training = true })
    local dp, rdp = l.cell.last_dropout_mask, l.cell.last_recurrent_dropout_mask
    local h = mg.zeros(2, 3, F64)
    for t = 1, 5 do
      h = l.cell:step(x:select(2, t) * dp, h * rdp)
      assert_close(h, y:select(2, t), 1e-15)
    end
  end)
  it("with a seed is reproducible, and each sequence gets new masks", function()
    local function make()
      local l = nn.GRU(3, { dropout = 0.5, recurrent_dropout = 0.5, seed = 42, input_size = 2, dtype = "float64" })
      for _, p in ipairs(l:parameters()) do p:fill(0.3) end
      return l
    end
    local a, b = make(), make()
    local x = mg.randn(4, 3, 2, F64)
    local ya = a(x, { training = true })
    assert_close(ya, b(x, { training = true }), 0)
    assert.is_true((ya - a(x, { training = true })):abs():max():item() > 0)
  end)
  it("has the gradient finite differences give, masks held fixed", function()
    local l = nn.GRU(2, { dropout = 0.4, recurrent_dropout = 0.3, input_size = 3, dtype = "float64",
      return_sequences = true, reset_after = false })
    local R = mg.randn(2, 4, 2, F64)
    assert.is_true(mg.gradcheck(function(x, W)
      mg.manual_seed(77)                                  -- the same masks at every evaluation
      l.cell.kernel = W
      return (l(x, { training = true }) * R):sum()
    end, { mg.randn(2, 4, 3, F64), l.cell.kernel * 1 }))
  end)
end)

describe("the composed path", function()
  it("equals the fused kernels for Keras's default activations given as functions", function()
    for _, kind in ipairs { "LSTM", "GRU" } do
      for _, ra in ipairs { true, false } do
        local fused = nn[kind](3, { input_size = 2, dtype = "float64", return_sequences = true, reset_after = kind == "GRU" and ra or nil })
        local composed = nn[kind](3, { input_size = 2, dtype = "float64", return_sequences = true,
          activation = function(t) return mg.tanh(t) end, recurrent_activation = function(t) return mg.sigmoid(t) end,
          reset_after = kind == "GRU" and ra or nil })
        for i, p in ipairs(composed:parameters()) do p:assign(fused:parameters()[i]) end
        local x = mg.randn(2, 5, 2, F64)
        assert_close(fused(x), composed(x), 1e-14, kind)
      end
    end
  end)
  it("has the gradient finite differences give with per-gate recurrent dropout (LSTM)", function()
    local l = nn.LSTM(2, { dropout = 0.3, recurrent_dropout = 0.5, input_size = 3, dtype = "float64",
      return_sequences = true, activation = "elu" })
    local R = mg.randn(2, 4, 2, F64)
    assert.is_true(mg.gradcheck(function(x, U, b)
      mg.manual_seed(78)
      l.cell.recurrent_kernel, l.cell.bias = U, b
      return (l(x, { training = true }) * R):sum()
    end, { mg.randn(2, 4, 3, F64), l.cell.recurrent_kernel * 1, l.cell.bias * 1 }))
  end)
end)

describe("Bidirectional", function()
  it("merge_mode none or false returns both directions; reset_state resets both", function()
    local bi = nn.Bidirectional(nn.LSTM(2, { return_sequences = true, stateful = true, input_size = 3, dtype = "float64" }),
      { merge_mode = "none" })
    local x = mg.randn(2, 4, 3, F64)
    local f, b = bi(x)
    local cat = nn.Bidirectional(bi.forward_layer, { backward_layer = bi.backward_layer })
    bi:reset_state()
    f, b = bi(x)
    bi:reset_state()
    assert_close(mg.cat({ f, b }, -1), cat(x), 0)
    assert.are.equal("none", nn.Bidirectional(nn.GRU(2), { merge_mode = false }).merge_mode)
    assert_error("Bidirectional: merge_mode must be concat, sum, mul or ave, got max", nn.Bidirectional, nn.GRU(2),
      { merge_mode = "max" })
  end)
  it("gives masks to both directions; the backward outputs line up in time", function()
    local bi = nn.Bidirectional(nn.SimpleRNN(2, { return_sequences = true, input_size = 3, dtype = "float64" }))
    local x = mg.randn(2, 4, 3, F64)
    local mask = mg.tensor { { 1, 1, 1, 0 }, { 1, 1, 0, 0 } }
    local y = bi(x, { mask = mask })
    -- zero_output_for_mask = return_sequences (Keras): padded steps are zero in both halves
    assert.are.equal(0, y[1][4]:abs():max():item())
    assert.are.equal(0, y[2]:narrow(1, 3, 2):abs():max():item())
    -- the backward half of a row equals the backward layer run on that row's real steps
    local yb = bi.backward_layer(x[1]:narrow(1, 1, 3):unsqueeze(1))
    assert_close(yb:select(2, 1):squeeze(1), y[1][3]:narrow(1, 3, 2), 1e-15)
  end)
end)

---------------------------------------------------------------- PyTorch

local PY = support.PYTHON
describe("against PyTorch (spec/torch_layers_ref.py, float64)", function()
  if not support.python_can_import("torch, numpy") then
    pending("needs " .. PY .. " with torch and numpy")
    return
  end
  local dir = support.scratch(teardown)
  local function put(name, t) mg.save(t:to("float64"):contiguous(), dir .. "/" .. name .. ".npy") end
  local function get(name) return mg.load(dir .. "/out_" .. name .. ".npy") end
  local function run(case)
    local script = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/torch_layers_ref.py"
    local log = dir .. "/stderr.txt"
    local ok = os.execute(string.format("%s %s %s %s 2>%s", PY, support.shq(script), support.shq(dir), case, support.shq(log)))
    if not ok then error("torch_layers_ref.py " .. case .. " failed:\n" .. support.read_file(log)) end
  end
  local function put_cell(pre, cell)
    put(pre .. "kernel", cell.kernel)
    put(pre .. "recurrent_kernel", cell.recurrent_kernel)
    put(pre .. "bias", cell.bias)
  end
  local B, T, D, U = 3, 6, 4, 5

  it("nn.RNN{LSTMCell, LSTMCell} is a 2-layer nn.LSTM: outputs, states, gradients", function()
    local cells = { nn.LSTMCell(D, U, F64), nn.LSTMCell(U, U, F64) }
    for _, c in ipairs(cells) do
      for _, p in ipairs(c:parameters()) do p:assign(mg.randn(p:shape(), F64) * 0.4) end
    end
    local r = nn.RNN(cells, { return_sequences = true, return_state = true })
    local x, R = mg.randn(B, T, D, F64), mg.randn(B, T, U, F64)
    local init = { { mg.randn(B, U, F64), mg.randn(B, U, F64) }, { mg.randn(B, U, F64), mg.randn(B, U, F64) } }
    put("x", x); put("R", R); put("units", mg.tensor(U))
    put_cell("l1_", cells[1]); put_cell("l2_", cells[2])
    put("h0_1", init[1][1]); put("c0_1", init[1][2]); put("h0_2", init[2][1]); put("c0_2", init[2][2])
    run("stacked")
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local out, s1, s2 = r(x, init)
    local params = r:parameters()
    local g = tape:gradient((out * R):sum(), { x, table.unpack(params) })
    assert_close(get("out"), out, 1e-12)
    assert_close(get("h1"), s1[1], 1e-12); assert_close(get("c1"), s1[2], 1e-12)
    assert_close(get("h2"), s2[1], 1e-12); assert_close(get("c2"), s2[2], 1e-12)
    assert_close(get("gx"), g[1], 1e-11)
    local names = { "l1_kernel", "l1_recurrent_kernel", "l1_bias", "l2_kernel", "l2_recurrent_kernel", "l2_bias" }
    for i, n in ipairs(names) do assert_close(get("g" .. n), g[i + 1], 1e-11, n) end
  end)

  for _, kind in ipairs { "lstm", "gru" } do
    it("a right-padded mask is pack_padded_sequence (" .. kind .. "): outputs, final states, dL/dx", function()
      local lengths = { 6, 2, 4 }
      local l = (kind == "lstm" and nn.LSTM or nn.GRU)(U, { return_sequences = true, return_state = true,
        zero_output_for_mask = true, input_size = D, dtype = "float64" })
      for _, p in ipairs(l:parameters()) do p:assign(mg.randn(p:shape(), F64) * 0.4) end
      local x, R = mg.randn(B, T, D, F64), mg.randn(B, T, U, F64)
      local rows = {}
      for b = 1, B do
        rows[b] = {}
        for t = 1, T do rows[b][t] = t <= lengths[b] and 1 or 0 end
      end
      local mask = mg.tensor(rows, F64)
      put("x", x); put("R", R); put("units", mg.tensor(U)); put("lengths", mg.tensor(lengths, F64))
      put_cell("", l.cell)
      run("packed_" .. kind)
      local tape <close> = mg.GradientTape()
      tape:watch(x)
      local out, h, c = l(x, { mask = mask })
      assert_close(get("out"), out, 1e-12)
      assert_close(get("h"), h, 1e-12)
      if kind == "lstm" then assert_close(get("c"), c, 1e-12) end
      assert_close(get("gx"), tape:gradient((out * R):sum(), x), 1e-11)
    end)
  end
end)
