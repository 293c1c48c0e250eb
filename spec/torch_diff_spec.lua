-- Differential tests against PyTorch (float64, same weights, data exchanged as .npy through
-- mg.save/mg.load; the PyTorch side is spec/torch_ref.py run by /usr/bin/python3): LSTM, GRU
-- (reset_after = PyTorch's GRU), SimpleRNN and bidirectional layers — outputs, final states and
-- gradients w.r.t. inputs, initial states and every weight to 1e-9 — then Adam, SGD and the
-- losses. Pending where /usr/bin/python3 cannot import torch.
local mg = require "moongrad"
local support = require "support"
local nn, optim = mg.nn, mg.optim

local PY = support.PYTHON
if not support.python_can_import("torch, numpy") then
  describe("PyTorch differential tests", function()
    pending("needs " .. PY .. " with torch and numpy")
  end)
  return
end

local F64, randn, assert_close = support.F64, support.randn, support.assert_close
local TOL = 1e-9

local dir = support.scratch(teardown)

local function put(name, t) mg.save(t:to("float64"):contiguous(), dir .. "/" .. name .. ".npy") end
local function get(name) return mg.load(dir .. "/out_" .. name .. ".npy") end
local function torch_run(case) support.torch_ref(dir, case) end

-- A cell's weights to .npy under prefix (forward "" or backward "b_").
local function put_weights(cell, pre)
  put(pre .. "kernel", cell.kernel)
  put(pre .. "recurrent_kernel", cell.recurrent_kernel)
  put(pre .. "bias", cell.bias)
end

local function randomize(layer)
  for _, p in ipairs(layer:parameters()) do p:assign(mg.randn(p:shape(), F64) * 0.4) end
end

---------------------------------------------------------------- recurrent layers

-- Runs 'layer' (RNN or Bidirectional, return_sequences and return_state) on random data and
-- compares with PyTorch's 'case': outputs, final states, and the gradients of
-- sum(out R) + sum(h_T Rh) [+ sum(c_T Rc)] w.r.t. x, initial states and weights.
local function compare(case, layer, cells, nstates)
  local B, T, D = 3, 6, 4
  local U = cells[1].units
  local x = randn(B, T, D)
  local pres = { "", "b_" }
  local init, Rs = {}, {}
  put("x", x)
  for k, cell in ipairs(cells) do
    put_weights(cell, pres[k])
    local names = nstates == 2 and { "h0", "c0" } or { "h0" }
    for _, n in ipairs(names) do
      local s = randn(B, U)
      init[#init + 1] = s
      put(pres[k] .. n, s)
    end
    for _, n in ipairs(nstates == 2 and { "Rh", "Rc" } or { "Rh" }) do
      local r = randn(B, U)
      Rs[#Rs + 1] = r
      put(pres[k] .. n, r)
    end
  end
  local R = randn(B, T, #cells * U)
  put("R", R)
  torch_run(case)

  local params = layer:parameters()
  local tape <close> = mg.GradientTape()
  tape:watch(x, table.unpack(init))
  local res = table.pack(tape:record(function()
    local r = table.pack(layer(x, init))
    local loss = (r[1] * R):sum()
    for i = 2, r.n do loss = loss + (r[i] * Rs[i - 1]):sum() end
    return loss, table.unpack(r, 1, r.n)
  end))
  local sources = { x }
  for _, s in ipairs(init) do sources[#sources + 1] = s end
  for _, p in ipairs(params) do sources[#sources + 1] = p end
  local g = tape:gradient(res[1], sources)

  assert_close(get("out"), res[2], TOL, case .. " output")
  assert_close(get("gx"), g[1], TOL, case .. " dL/dx")
  local i = 2
  for k = 1, #cells do
    local names = nstates == 2 and { "h", "c" } or { "h" }
    for j, n in ipairs(names) do
      local idx = (k - 1) * nstates + j
      assert_close(get(pres[k] .. n), res[2 + idx], TOL, case .. " final " .. pres[k] .. n)
      assert_close(get("g" .. pres[k] .. n .. "0"), g[1 + idx], TOL, case .. " dL/d" .. pres[k] .. n .. "0")
      i = i + 1
    end
  end
  for k = 1, #cells do
    for j, w in ipairs({ "kernel", "recurrent_kernel", "bias" }) do
      assert_close(get("g" .. pres[k] .. w), g[i + (k - 1) * 3 + j - 1], TOL, case .. " dL/d" .. pres[k] .. w)
    end
  end
end

describe("recurrent layers against PyTorch (float64, 1e-9)", function()
  setup(function() mg.manual_seed(30) end)
  local opts = { return_sequences = true, return_state = true }

  -- title, PyTorch module, cell, compare's last argument
  for _, c in ipairs {
    { "LSTM: outputs, final h and c, gradients w.r.t. x, h0, c0, kernel, recurrent kernel, bias", "lstm", "LSTMCell", 2 },
    { "GRU reset_after=true is PyTorch's GRU (gates z, r, h <-> r, z, n)", "gru", "GRUCell", 1 },
    { "SimpleRNN is PyTorch's tanh RNN", "rnn", "SimpleRNNCell", 1 },
  } do
    it(c[1], function()
      local cell = nn[c[3]](4, 5, F64)
      randomize(cell)
      compare(c[2], nn.RNN(cell, opts), { cell }, c[4])
    end)
  end

  for _, c in ipairs {
    { "Bidirectional LSTM (concat) is PyTorch's bidirectional LSTM", "bilstm", "LSTMCell", 2 },
    { "Bidirectional GRU (concat) is PyTorch's bidirectional GRU", "bigru", "GRUCell", 1 },
  } do
    it(c[1], function()
      local bi = nn.Bidirectional(nn.RNN(nn[c[3]](4, 3, F64), opts))
      randomize(bi)
      compare(c[2], bi, { bi.forward_layer.cell, bi.backward_layer.cell }, c[4])
    end)
  end
end)

---------------------------------------------------------------- optimizers

describe("optimizers against torch.optim (float64)", function()
  setup(function() mg.manual_seed(31) end)

  local function run(case, make, cfg)
    local steps = 5
    local p0 = randn(3, 4)
    put("p0", p0)
    put("cfg", mg.tensor(cfg, F64))
    local p = mg.Variable(p0, "p")
    local opt = make({ p })
    for s = 1, steps do
      local g = randn(3, 4)
      put("g" .. s, g)
      opt:step({ g })
    end
    torch_run(case)
    assert_close(get("p"), p, TOL, case)
  end

  it("Adam (variant pytorch) equals torch.optim.Adam", function()
    run("adam", function(ps) return optim.Adam(ps, { lr = 0.01, variant = "pytorch" }) end,
      { 0.01, 0.9, 0.999, 1e-8, 0, 5 })
    run("adam", function(ps) return optim.Adam(ps, { lr = 0.1, beta1 = 0.8, beta2 = 0.95, eps = 1e-3,
      variant = "pytorch" }) end, { 0.1, 0.8, 0.95, 1e-3, 0, 5 })
  end)

  it("SGD with momentum and Nesterov equals torch.optim.SGD", function()
    run("sgd", function(ps) return optim.SGD(ps, { lr = 0.1 }) end, { 0.1, 0, 0, 0, 0, 5 })
    run("sgd", function(ps) return optim.SGD(ps, { lr = 0.1, momentum = 0.9 }) end, { 0.1, 0.9, 0, 0, 0, 5 })
    run("sgd", function(ps) return optim.SGD(ps, { lr = 0.05, momentum = 0.7, nesterov = true }) end,
      { 0.05, 0.7, 0, 0, 1, 5 })
  end)
end)

---------------------------------------------------------------- losses

describe("losses against torch.nn.functional (float64)", function()
  it("cross_entropy (indices and probabilities), binary_cross_entropy, mse: values and gradients", function()
    mg.manual_seed(32)
    local logits, labels = randn(5, 4), mg.tensor({ 2, 4, 1, 1, 3 }, F64)
    local probs = mg.softmax(randn(5, 4), 2)
    local p, t, z = mg.rand(6, F64) * 0.8 + 0.1, mg.rand(6, F64), randn(6)
    local pred, target = randn(3, 4), randn(3, 4)
    for name, v in pairs({ logits = logits, labels = labels, probs = probs, p = p, t = t, z = z,
                           pred = pred, target = target }) do put(name, v) end
    torch_run("losses")
    local cases = {
      ce_idx = { function(a) return nn.cross_entropy(a, labels) end, logits },
      ce_prob = { function(a) return nn.cross_entropy(a, probs) end, logits },
      bce = { function(a) return nn.binary_cross_entropy(a, t) end, p },
      bce_logits = { function(a) return nn.binary_cross_entropy(a, t, { from_logits = true }) end, z },
      mse = { function(a) return nn.mse(a, target) end, pred },
    }
    for name, c in pairs(cases) do
      local value, grad = mg.value_and_grad(c[1])(c[2])
      assert_close(get(name), value, TOL, name)
      assert_close(get("g" .. name), grad, TOL, name .. " gradient")
    end
  end)
end)
