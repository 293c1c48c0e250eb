-- PyTorch state dicts (bindings/moongrad/interop.lua, nn.from_torch / nn.to_torch): real
-- torch.nn.LSTM (2 layers, bidirectional), GRU (1 layer; 2 layers bidirectional), RNN (tanh;
-- relu, 2 layers) and Linear models, their state dicts written with the real safetensors
-- package (and one as .npz), loaded into the moongrad models built with the same layers;
-- outputs and input gradients match PyTorch's to 1e-5 relative in float32 and 1e-12 in
-- float64; what nn.to_torch gives loads back into PyTorch with load_state_dict(strict=True)
-- and reproduces the outputs. Then the errors: missing and unexpected names, wrong shapes.
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local raises, shq = support.raises, support.shq
local close = support.closeness { tolerance = "relative" }
local HAVE_TORCH = support.python_can_import("torch, numpy")
local SCRIPT = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/torch_state_ref.py"
local TOL = { float32 = 1e-5, float64 = 1e-12 }

-- Runs 'cmd' (without the sanitizer build's preloaded ASan runtime: Python's, not ours).
local function sh(cmd)
  local p = io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1")
  local out = p:read("a")
  assert(p:close(), cmd .. " failed:\n" .. out)
  return out
end

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
}
local CASES = { "lstm_2layer_bi", "gru", "gru_2layer_bi", "rnn_tanh", "rnn_relu_2layer", "linear" }

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
        local tape = mg.GradientTape()
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

  it("what to_torch writes loads into PyTorch (strict) and gives PyTorch's outputs", function()
    if not HAVE_TORCH then pending("no torch in " .. support.PYTHON) return end
    local out = sh(support.PYTHON .. " " .. shq(SCRIPT) .. " check " .. shq(dir))
    local n = 0
    for case, dt, rel in out:gmatch("(%S+) (%S+) (%S+)\n") do
      n = n + 1
      assert(tonumber(rel) <= TOL[dt], case .. " " .. dt .. ": relative difference " .. rel)
    end
    assert.are.equal(2 * #CASES, n, out)
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
