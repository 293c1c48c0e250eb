-- PyTorch state dicts (bindings/moongrad/interop.lua, nn.from_torch / nn.to_torch): real
-- torch.nn.LSTM (2 layers, bidirectional), GRU (1 layer; 2 layers bidirectional), RNN (tanh;
-- relu, 2 layers) and Linear models, their state dicts written with the real safetensors
-- package (and one as .npz), loaded into the moongrad models built with the same layers;
-- outputs and input gradients match PyTorch's to 1e-5 relative in float32 and 1e-12 in
-- float64; what nn.to_torch gives loads back into PyTorch with load_state_dict(strict=True)
-- and reproduces the outputs. Models mixing Embedding and LayerNorm with recurrent layers
-- (a custom Module through 'modules', a torch nn.Sequential) compare the weight gradients too.
-- A 3-layer LSTM as stacked cells and a layer class. Then the layouts one by one and the
-- errors: missing and unexpected names, wrong shapes.
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local raises, shq = support.raises, support.shq
local close = support.closeness { tolerance = "relative" }
local HAVE_TORCH = support.python_can_import("torch, numpy")
local SCRIPT = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/torch_state_ref.py"
local TOL = { float32 = 1e-5, float64 = 1e-12 }

local sh = support.sh

local function rs(cell) return nn.RNN(cell, { return_sequences = true }) end
local function bi(cell) return nn.Bidirectional(rs(cell)) end
-- The moongrad model of each PyTorch case (batch_first does not touch the weights).
local MODELS = {
  lstm_2layer_bi = function(o) return nn.Sequential { bi(nn.LSTMCell(3, 4, o)), bi(nn.LSTMCell(8, 4, o)) } end,
  gru = function(o) return rs(nn.GRUCell(3, 4, o)) end,
  gru_2layer_bi = function(o) return nn.Sequential { bi(nn.GRUCell(3, 4, o)), bi(nn.GRUCell(8, 4, o)) } end,
  rnn_tanh = function(o) return rs(nn.SimpleRNNCell(3, 4, o)) end,
  rnn_relu_2layer = function(o)
    local r = { dtype = o.dtype, activation = "relu" }
    return nn.Sequential { rs(nn.SimpleRNNCell(3, 4, r)), rs(nn.SimpleRNNCell(4, 4, r)) }
  end,
  linear = function(o) return nn.Dense(3, 2, o) end,
  -- stacked cells, then a layer class: torch's layers 0 and 1, then 2 (built from the shapes)
  lstm_3layer = function(o)
    return nn.Sequential { nn.RNN({ nn.LSTMCell(3, 4, o), nn.LSTMCell(4, 4, o) }, { return_sequences = true }),
      nn.LSTM(4, { return_sequences = true, dtype = o.dtype }) }
  end,
}
local CASES = { "lstm_2layer_bi", "gru", "gru_2layer_bi", "rnn_tanh", "rnn_relu_2layer", "linear", "lstm_3layer" }

-- Embedding and LayerNorm with recurrent layers: torch's ids are moongrad's minus 1, or the
-- same with padding_idx=0 / mask_zero (torch's padding row 0 is not stored here). The layer
-- classes (nn.LSTM(units), nn.LayerNormalization()) are built by from_torch from the shapes.
local MORE = {
  -- a custom torch Module (submodules emb, lstm, norm, fc)
  tagger_pad = { function(o)
    return nn.Sequential { nn.Embedding(10, 6, { mask_zero = true, dtype = o.dtype }),
      nn.LSTM(5, { return_sequences = true, dtype = o.dtype }),
      nn.LayerNormalization { epsilon = 1e-5, dtype = o.dtype }, nn.Dense(5, 3, o) }
  end, { "emb", "lstm", "norm", "fc" } },
  tagger = { function(o)
    return nn.Sequential { nn.Embedding(10, 6, o), rs(nn.LSTMCell(6, 5, o)),
      nn.LayerNormalization { epsilon = 1e-5, input_size = 5, dtype = o.dtype }, nn.Dense(5, 3, o) }
  end, { "emb", "lstm", "norm", "fc" } },
  emb_pad_linear = { function(o)
    return nn.Sequential { nn.Embedding(7, 4, { mask_zero = true, dtype = o.dtype }), nn.Dense(4, 2, o) }
  end },
  -- torch.nn.Sequential(Embedding, LSTM(num_layers=2, bidirectional), LayerNorm, Linear)
  seq_emb_bilstm2_ln_linear = { function(o)
    return nn.Sequential { nn.Embedding(9, 4, o), nn.Sequential { bi(nn.LSTMCell(4, 3, o)), bi(nn.LSTMCell(6, 3, o)) },
      nn.LayerNormalization { dtype = o.dtype, epsilon = 1e-5 }, nn.Dense(6, 2, o) }
  end },
  seq_lstm_ln_linear = { function(o)
    return nn.Sequential { nn.LSTM(4, { return_sequences = true, dtype = o.dtype }),
      nn.LayerNormalization { epsilon = 1e-5, dtype = o.dtype }, nn.Dense(4, 2, o) }
  end },
}
local MORE_CASES = { "tagger_pad", "tagger", "emb_pad_linear", "seq_emb_bilstm2_ln_linear", "seq_lstm_ln_linear" }

-- The tensors of directory 'd'/'sub' (name.npy each), by name.
local function load_dir(d, sub)
  local out = {}
  local p = io.popen("ls " .. shq(d .. "/" .. sub))
  for f in p:lines() do out[f:sub(1, -5)] = mg.load(d .. "/" .. sub .. "/" .. f) end
  p:close()
  return out
end

describe("PyTorch state dicts", function()
  local dir
  setup(function()
    dir = support.tmpdir()
    if not HAVE_TORCH then return end
    sh(support.PYTHON .. " " .. shq(SCRIPT) .. " make " .. shq(dir))
    -- the real safetensors package writes each state dict (the venv has no torch: from .npy)
    local conv = support.write_file(dir .. "/conv.py", [[
import glob, os, sys, numpy as np
from safetensors.numpy import save_file
for d in glob.glob(sys.argv[1] + "/*_*"):
    sd = {os.path.basename(f)[:-4]: np.load(f) for f in glob.glob(d + "/state/*.npy")}
    save_file(sd, d + "/state.safetensors")
    np.savez(d + "/state.npz", **sd)
]])
    sh(shq(support.venv_python()) .. " " .. shq(conv) .. " " .. shq(dir))
  end)
  teardown(function() support.rmtree(dir) end)

  for _, case in ipairs(CASES) do
    for _, dt in ipairs { "float32", "float64" } do
      it(case .. " " .. dt .. ": outputs and input gradients match PyTorch's, to_torch loads back", function()
        if not HAVE_TORCH then pending("no torch in " .. support.PYTHON) return end
        local d = dir .. "/" .. case .. "_" .. dt
        local model = MODELS[case] { dtype = dt }
        -- .npz for the float64 GRU, safetensors for the rest
        local file = (case == "gru" and dt == "float64") and d .. "/state.npz" or d .. "/state.safetensors"
        nn.from_torch(model, file)
        local x, cot = mg.load(d .. "/x.npy"), mg.load(d .. "/cot.npy")
        local tape <close> = mg.GradientTape()
        tape:watch(x)
        local out, loss = tape:record(function()
          local o = model(x)
          return o, (o * cot):sum()
        end)
        local gx = tape:gradient(loss, { x })[1]
        close(mg.load(d .. "/out.npy"):totable(), out:totable(), TOL[dt])
        close(mg.load(d .. "/gx.npy"):totable(), gx:totable(), TOL[dt])
        mg.save_npz(nn.to_torch(model), d .. "/ours.npz")
      end)
    end
  end

  for _, case in ipairs(MORE_CASES) do
    for _, dt in ipairs { "float32", "float64" } do
      it(case .. " " .. dt .. ": outputs, input and weight gradients match PyTorch's", function()
        if not HAVE_TORCH then pending("no torch in " .. support.PYTHON) return end
        local d = dir .. "/" .. case .. "_" .. dt
        local make, modules = MORE[case][1], MORE[case][2]
        local model = make { dtype = dt }
        nn.from_torch(model, dt == "float64" and d .. "/state.npz" or d .. "/state.safetensors", { modules = modules })
        local f = io.open(d .. "/ids.npy")
        local ids = f and mg.load(d .. "/ids.npy")
        if f then f:close() end
        local x = ids or mg.load(d .. "/x.npy")
        local cot = mg.load(d .. "/cot.npy")
        local params = model:parameters()
        local tape <close> = mg.GradientTape()
        if not ids then tape:watch(x) end
        local out, loss = tape:record(function()
          local o = model(x)
          return o, (o * cot):sum()
        end)
        local wrt = { table.unpack(params) }
        if not ids then wrt[#wrt + 1] = x end
        local grads = tape:gradient(loss, wrt)
        close(mg.load(d .. "/out.npy"):totable(), out:totable(), TOL[dt])
        if not ids then close(mg.load(d .. "/gx.npy"):totable(), grads[#grads]:totable(), TOL[dt]) end
        mg.save_npz(nn.to_torch(model, { modules = modules }), d .. "/ours.npz")
        -- the weight gradients in torch's layout: the model's Variables set to them, to_torch
        mg.no_grad(function()
          for i, p in ipairs(params) do p:copy(grads[i]) end
        end)
        local want, got, n = load_dir(d, "grad"), nn.to_torch(model, { modules = modules }), 0
        for name, g in pairs(want) do
          if not name:find("bias_hh", 1, true) then   -- torch's two LSTM biases have one gradient, in bias_ih
            assert(got[name], "no gradient for " .. name)
            close(g:totable(), got[name]:totable(), TOL[dt])
            n = n + 1
          end
        end
        assert(n >= 3, "only " .. n .. " gradients compared")
      end)
    end
  end

  it("what to_torch writes loads into PyTorch (strict) and gives PyTorch's outputs", function()
    if not HAVE_TORCH then pending("no torch in " .. support.PYTHON) return end
    local out = sh(support.PYTHON .. " " .. shq(SCRIPT) .. " check " .. shq(dir))
    local n = 0
    for case, dt, rel in out:gmatch("(%S+) (%S+) (%S+)\n") do
      n = n + 1
      assert(tonumber(rel) <= TOL[dt], case .. " " .. dt .. ": relative difference " .. rel)
    end
    assert.are.equal(2 * (#CASES + #MORE_CASES), n, out)
  end)
end)

describe("from_torch / to_torch", function()
  local function lstm_sd(u, d)
    return { weight_ih_l0 = mg.randn(4 * u, d), weight_hh_l0 = mg.randn(4 * u, u),
             bias_ih_l0 = mg.randn(4 * u), bias_hh_l0 = mg.randn(4 * u) }
  end

  it("maps LSTM gates one to one and adds the two biases", function()
    local sd = lstm_sd(2, 3)
    local cell = nn.LSTMCell(3, 2)
    nn.from_torch(nn.RNN(cell), sd)
    support.assert_close(sd.weight_ih_l0:transpose(1, 2), cell.kernel, 0)
    support.assert_close(sd.bias_ih_l0 + sd.bias_hh_l0, cell.bias, 0)
  end)

  it("reorders GRU blocks r, z, n into z, r, h, biases into the (2, 3u) rows", function()
    local u = 2
    local w = mg.arange(3 * u):reshape(3 * u, 1)      -- rows r0 r1 z0 z1 n0 n1
    local sd = { weight_ih_l0 = w, weight_hh_l0 = mg.zeros(3 * u, u), bias_ih_l0 = mg.arange(6),
                 bias_hh_l0 = mg.arange(6) + 10 }
    local cell = nn.GRUCell(1, u)
    nn.from_torch(nn.RNN(cell), sd)
    assert.are.same({ { 2, 3, 0, 1, 4, 5 } }, cell.kernel:totable())
    assert.are.same({ { 2, 3, 0, 1, 4, 5 }, { 12, 13, 10, 11, 14, 15 } }, cell.bias:totable())
    local back = nn.to_torch(nn.RNN(cell))
    assert.are.same(w:totable(), back.weight_ih_l0:totable())
    assert.are.same(sd.bias_hh_l0:totable(), back.bias_hh_l0:totable())
  end)

  it("uses the prefix of a submodule and a torch nn.Sequential's indices", function()
    local m = nn.Sequential { nn.RNN(nn.LSTMCell(3, 2)), nn.Dense(2, 1) }
    local sd = {}
    for k, v in pairs(lstm_sd(2, 3)) do sd["net.0." .. k] = v end
    sd["net.1.weight"], sd["net.1.bias"] = mg.randn(1, 2), mg.randn(1)
    nn.from_torch(m, sd, { prefix = "net." })
    support.assert_close(sd["net.1.weight"]:transpose(1, 2), m.layers[2].kernel, 0)
    local back = nn.to_torch(m, { prefix = "net." })
    support.assert_close(sd["net.0.weight_hh_l0"], back["net.0.weight_hh_l0"], 0)
  end)

  it("maps an Embedding's rows: torch id k is moongrad id k + 1; with mask_zero row 0 is padding", function()
    local w = mg.arange(12):reshape(4, 3)
    local e = nn.Embedding(4, 3)
    nn.from_torch(e, { weight = w })
    support.assert_close(w, e.embeddings, 0)
    local p = nn.Embedding(3, 3, { mask_zero = true })
    nn.from_torch(p, { weight = w })                 -- torch.nn.Embedding(4, 3, padding_idx=0)
    support.assert_close(w:narrow(1, 2, 3), p.embeddings, 0)
    local back = nn.to_torch(p).weight
    assert.are.same({ 0, 0, 0 }, back:select(1, 1):totable())
    support.assert_close(w:narrow(1, 2, 3), back:narrow(1, 2, 3), 0)
    raises(function() nn.from_torch(nn.Embedding(4, 3, { mask_zero = true }), { weight = w }) end,
      "from_torch: 'weight' has shape (4,3), the layer needs (5,3)")
  end)

  it("maps LayerNorm's weight and bias onto gamma and beta, building the layer from them", function()
    local ln = nn.LayerNormalization()
    nn.from_torch(ln, { weight = mg.arange(3), bias = mg.ones(3) })
    assert.are.same({ 0, 1, 2 }, ln.gamma:totable())
    assert.are.same({ 1, 1, 1 }, ln.beta:totable())
    local sd = nn.to_torch(ln)
    assert.are.same({ 0, 1, 2 }, sd.weight:totable())
    local only = nn.LayerNormalization { center = false, input_size = 2 }
    raises(function() nn.from_torch(only, { weight = mg.ones(2), bias = mg.ones(2) }) end, "unexpected names", "bias")
    raises(function() nn.from_torch(nn.LayerNormalization { axis = 1, input_size = 2 }, { weight = mg.ones(2) }) end,
      "from_torch: torch.nn.LayerNorm normalizes the last dimension; this LayerNormalization has axis = 1")
    raises(function() nn.to_torch(nn.LayerNormalization()) end, "to_torch:", "has no weights yet")
    raises(function() nn.to_torch(nn.Sequential { nn.LSTM(2), nn.Dense(2, 1) }) end,
      "to_torch: layer 1 (", "has no weights yet")
  end)

  it("names a custom module's submodules with 'modules'", function()
    local m = nn.Sequential { nn.Embedding(5, 2), mg.tanh, nn.Dense(2, 1) }
    local sd = nn.to_torch(m, { modules = { "emb", false, "head" } })
    assert.is_truthy(sd["emb.weight"] and sd["head.weight"] and sd["head.bias"])
    nn.from_torch(m, sd, { modules = { "emb", nil, "head" } })
    raises(function() nn.from_torch(m, sd, { modules = { "emb" } }) end,
      "from_torch: modules[3] must name the torch submodule of the Sequential's child 3 (Dense")
    raises(function() nn.to_torch(m, { modules = "emb" }) end, "to_torch: modules must be an array")
  end)

  it("names what is missing, unexpected or of the wrong shape, and changes nothing", function()
    local cell = nn.LSTMCell(3, 2)
    local before = cell.kernel:clone()
    local sd = lstm_sd(2, 3)
    sd.bias_hh_l0 = nil
    raises(function() nn.from_torch(nn.RNN(cell), sd) end, "from_torch: the state dict has no bias_hh_l0")
    sd = lstm_sd(2, 3)
    sd.weight_ih_l1 = mg.zeros(1)
    raises(function() nn.from_torch(nn.RNN(cell), sd) end, "from_torch: unexpected names for", "weight_ih_l1")
    nn.from_torch(nn.RNN(cell), sd, { strict = false })
    sd = lstm_sd(3, 3)
    raises(function() nn.from_torch(nn.RNN(nn.LSTMCell(3, 2)), sd) end,
      "from_torch: 'weight_ih_l0' has shape (12,3), the layer needs (8,3)")
    raises(function() nn.from_torch(nn.RNN(nn.GRUCell(3, 2, { reset_after = false })), {}) end, "reset_after=true")
    raises(function() nn.from_torch(nn.Dense(1, 1), 3) end, "from_torch: expected a state dict")
    raises(function() nn.to_torch(nn.RNN(nn.Cell { state_size = 1, call = function(_, x, s) return x, s end }())) end,
      "to_torch: no PyTorch mapping for")
    local c2 = nn.LSTMCell(3, 2)
    local k2 = c2.kernel:clone()
    sd = lstm_sd(2, 3)
    sd.bias_ih_l0 = mg.zeros(3)
    pcall(nn.from_torch, nn.RNN(c2), sd)
    support.assert_close(k2, c2.kernel, 0)
    assert.is_truthy(before)
  end)
end)
