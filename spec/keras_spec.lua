-- Keras weight files (runtime/h5.c through libhdf5, bindings/moongrad/interop.lua): real
-- Keras 3 (JAX backend) models with random weights saved with save_weights are loaded with
-- nn.load_keras into moongrad models built with the same layers (bidirectional LSTM, GRU
-- with reset_after true and false, SimpleRNN, Dense with an activation; Embedding with and
-- without mask_zero, stacked cells RNN([cells]) plain and Bidirectional, LayerNormalization,
-- TimeDistributed; the layer classes built from the file) and give Keras's
-- outputs; Keras loads what nn.save_keras writes and gives moongrad's outputs; the legacy
-- Keras 2 layout is read from files of Keras's own legacy writer and of real tf-keras
-- (save_weights "x.h5"); errors; an interrupted save leaves the previous file.
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local raises, shq = support.raises, support.shq
local close = support.closeness { tolerance = "relative" }
local SCRIPT = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/keras_weights_ref.py"
local TOL = 1e-5

local sh = support.sh

local function keras(mode, dir) return sh(shq(support.venv_python()) .. " " .. shq(SCRIPT) .. " " .. mode .. " " .. shq(dir)) end

local function rs(cell) return nn.RNN(cell, { return_sequences = true }) end
local MODELS = {
  bi_lstm_gru_dense = function()
    return nn.Sequential { nn.Bidirectional(rs(nn.LSTMCell(3, 4))), nn.RNN(nn.GRUCell(8, 2)), nn.Dense(2, 1) }
  end,
  rnn_gru_lstm_dense = function()
    return nn.Sequential { rs(nn.SimpleRNNCell(3, 4)), rs(nn.GRUCell(4, 3, { reset_after = false })),
      nn.RNN(nn.LSTMCell(3, 2)), nn.Dense(2, 2, { activation = "tanh" }) }
  end,
  -- Embedding(10, 4, mask_zero=True), RNN([LSTMCell(3), GRUCell(2)]), LayerNormalization,
  -- TimeDistributed(Dense(2)): Keras's table has the padding row 0, ours does not
  emb_stacked_ln_td = function()
    return nn.Sequential { nn.Embedding(9, 4, { mask_zero = true }),
      nn.RNN({ nn.LSTMCell(4, 3), nn.GRUCell(3, 2) }, { return_sequences = true }),
      nn.LayerNormalization(), nn.TimeDistributed(nn.Dense(2, 2)) }
  end,
  emb_bi_stacked_dense = function()
    return nn.Sequential { nn.Embedding(8, 3), nn.Bidirectional(nn.RNN(nn.StackedRNNCells { nn.LSTMCell(3, 2),
      nn.SimpleRNNCell(2, 2) })), nn.Dense(4, 1) }
  end,
  -- the layer classes, built by load_keras from the file's shapes
  ln_lstm_dense = function() return nn.Sequential { nn.LayerNormalization(), nn.LSTM(4), nn.Dense(4, 2) } end,
}
local NAMES = { "bi_lstm_gru_dense", "rnn_gru_lstm_dense", "emb_stacked_ln_td", "emb_bi_stacked_dense", "ln_lstm_dense" }

-- HDF5 is an optional component: without it the calls say so, and this spec is pending.
if not mg._h5_available() then
  describe("Keras weight files", function()
    it("need HDF5", function()
      support.raises(function() nn.load_keras(nn.Dense(1, 1), "x.h5") end, "load_keras: moongrad was built without HDF5")
      pending("built without libhdf5")
    end)
  end)
  return
end

describe("Keras weight files", function()
  local dir
  setup(function()
    dir = support.tmpdir()
    keras("make", dir)
  end)
  teardown(function() support.rmtree(dir) end)
  local function p(name, suffix) return dir .. "/" .. name .. suffix end

  for _, name in ipairs(NAMES) do
    it(name .. ": Keras 3 .weights.h5 loads and gives Keras's outputs", function()
      local m = MODELS[name]()
      nn.load_keras(m, p(name, ".weights.h5"))
      close(mg.load(p(name, ".out.npy")):totable(), m(mg.load(p(name, ".x.npy"))):totable(), TOL)
    end)

    it(name .. ": the legacy Keras 2 layout (Keras's legacy writer) loads too", function()
      local m = MODELS[name]()
      nn.load_keras(m, p(name, ".legacy.h5"))
      close(mg.load(p(name, ".out.npy")):totable(), m(mg.load(p(name, ".x.npy"))):totable(), TOL)
    end)
  end

  it("Keras loads what save_keras writes and gives moongrad's outputs", function()
    for _, name in ipairs(NAMES) do
      mg.manual_seed(5)
      local m = MODELS[name]()
      local x = mg.load(p(name, ".x.npy"))
      m(x)                                             -- builds the layer classes
      for _, v in ipairs(m:parameters()) do v:copy(mg.randn(v:shape()) * 0.5) end   -- biases too
      nn.save_keras(m, p(name, ".ours.weights.h5"))
      mg.save(m(x), p(name, ".ours_out.npy"))
      local back = MODELS[name]()
      nn.load_keras(back, p(name, ".ours.weights.h5"))
      for k, v in pairs(m:state()) do assert.are.same(v:totable(), back:state()[k]:totable(), k) end
    end
    local out, n = keras("check", dir), 0
    for name, rel in out:gmatch("RESULT (%S+) (%S+)") do
      n = n + 1
      assert(tonumber(rel) <= TOL, name .. ": relative difference " .. rel)
    end
    assert.are.equal(#NAMES, n, out)
  end)

  it("real tf-keras (Keras 2) save_weights files load and give its outputs", function()
    local py = support.venv_python()
    if not os.execute("env -u LD_PRELOAD " .. shq(py) .. " -c 'import tf_keras' >/dev/null 2>&1") then
      error("the test venv has no tf_keras: run tools/venv --tf (or point MG_VENV at a venv made with it)")
    end
    sh(shq(py) .. " " .. shq(SCRIPT) .. " tf " .. shq(dir))
    for _, name in ipairs(NAMES) do
      local m = MODELS[name]()
      nn.load_keras(m, p(name, ".tf.h5"))
      close(mg.load(p(name, ".tf_out.npy")):totable(), m(mg.load(p(name, ".x.npy"))):totable(), TOL)
    end
  end)

  it("names what does not fit", function()
    local f = p("bi_lstm_gru_dense", ".weights.h5")
    raises(function() nn.load_keras(nn.Sequential { nn.Dense(3, 3) }, f) end,
      "load_keras: '" .. f .. "' has weights the model does not", "layers/gru/cell/vars/0")
    local wrong = nn.Sequential { nn.Bidirectional(rs(nn.LSTMCell(3, 5))), nn.RNN(nn.GRUCell(10, 2)), nn.Dense(2, 1) }
    raises(function() nn.load_keras(wrong, f) end,
      "weight 'layers/bidirectional/forward_layer/cell/vars/0' has shape (3,16), 'lstm/kernel' of the model is (3,20)")
    local e = p("emb_stacked_ln_td", ".weights.h5")
    local wide = nn.Sequential { nn.Embedding(10, 4, { mask_zero = true }),
      nn.RNN({ nn.LSTMCell(4, 3), nn.GRUCell(3, 2) }, { return_sequences = true }),
      nn.LayerNormalization(), nn.TimeDistributed(nn.Dense(2, 2)) }
    raises(function() nn.load_keras(wide, e) end, "weight 'layers/embedding/vars/0' has shape (10,4), "
      .. "'embedding/embeddings' of the model is (10,4) ((11,4) in Keras)")
    local lg = p("bi_lstm_gru_dense", ".legacy.h5")
    raises(function() nn.load_keras(nn.Sequential { nn.Dense(3, 3) }, lg) end,
      "load_keras: '" .. lg .. "' has 3 layers with weights (bidirectional, gru, dense), the model 1")
    local junk = support.write_file(dir .. "/junk.h5", "not hdf5")
    raises(function() nn.load_keras(nn.Dense(1, 1), junk) end, "load_keras: '" .. junk .. "' is not an HDF5 file")
    raises(function() nn.load_keras(nn.Dense(1, 1), dir .. "/none.h5") end, "load_keras: cannot open")
    local Custom = nn.Cell { state_size = 1, init = function(self) self.w = self:variable("w", mg.zeros(1)) end,
      call = function(_, x, s) return x, s end }
    raises(function() nn.save_keras(nn.RNN(Custom()), dir .. "/c.h5") end, "save_keras: no Keras layout for")
    raises(function() nn.save_keras(nn.Sequential { nn.LSTM(2), nn.Dense(2, 1) }, dir .. "/u.weights.h5") end,
      "save_keras: LSTM(2 units, not built) has no weights yet: call the model once, or give input_size=")
  end)

  it("a save cut by a file-size limit leaves the previous file intact", function()
    local sub = dir .. "/fsize"
    os.execute("mkdir -p " .. shq(sub))
    local target = sub .. "/m.weights.h5"
    nn.save_keras(nn.Dense(2, 2), target)
    local before = support.read_file(target)
    local script = support.write_file(dir .. "/child.lua", string.format([[
local mg = require "moongrad"
print(pcall(mg.nn.save_keras, mg.nn.Dense(300, 300), %q))]], target))
    local pr = io.popen("LUA_CPATH=" .. shq(package.cpath) .. " bash -c "
      .. shq("trap '' XFSZ; ulimit -f 64; exec lua5.4 " .. shq(script)) .. " 2>&1")
    local out = pr:read("a")
    assert(pr:close(), out)
    assert.is_truthy(out:find("^false\t"), out)
    assert.is_truthy(out:find("save_keras: error writing '" .. target .. "' (File too large)", 1, true), out)
    assert.are.equal(before, support.read_file(target))
    assert.are.equal("m.weights.h5\n", io.popen("ls -A " .. shq(sub)):read("a"))
  end)
end)
