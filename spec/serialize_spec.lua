-- Model state and checkpoints (bindings/moongrad/serialize.lua): layer:state() names, every
-- layer type and a stacked bidirectional model saved with nn.save and loaded with nn.load into
-- a differently initialized copy (values bit-equal, outputs equal), load_state's checks
-- (shapes, missing and unexpected names, strict), get_weights/set_weights in Keras order, and
-- training resumed from a checkpoint with its optimizer state giving bit-for-bit the run that
-- was never interrupted (SGD with momentum, Adam), and through nn.fit (model.optimizer, the
-- checkpoint option, initial_epoch).
local mg = require "moongrad"
local support = require "support"
local nn, optim = mg.nn, mg.optim

local F64, raises = support.F64, support.raises

local dir
setup(function() dir = support.tmpdir() end)
teardown(function() support.rmtree(dir) end)
local function path(name) return dir .. "/" .. name end

local bits = support.bits

local function keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

local function same_state(a, b)
  local sa, sb = a:state(), b:state()
  assert.are.same(keys(sa), keys(sb))
  for k, v in pairs(sa) do assert.are.equal(bits(v), bits(sb[k]), k) end
end

-- Builders of every layer type: a function(dtype) making the layer, and an input maker.
local Custom = nn.Cell { name = "mycell", state_size = 3,
  init = function(self, nin, dt)
    self.w = self:variable("w", mg.randn({ nin, 3 }, { dtype = dt }))
    self.proj = nn.Dense(3, 3, { dtype = dt, name = "proj" })
  end,
  call = function(self, x, s)
    local h = mg.tanh(x:matmul(self.w) + self.proj(s[1]))
    return h, { h }
  end }

local seq_input = function(dt) return mg.randn({ 2, 5, 3 }, { dtype = dt }) end
local ids_input = function() return mg.tensor { { 1, 6, 2, 2, 5 }, { 3, 4, 4, 1, 6 } } end
local LAYERS = {
  { "Dense", function(dt) return nn.Dense(3, 4, { dtype = dt }) end, function(dt) return mg.randn({ 2, 3 }, { dtype = dt }) end },
  { "SimpleRNNCell in RNN", function(dt) return nn.RNN(nn.SimpleRNNCell(3, 4, { dtype = dt })) end, seq_input },
  { "LSTMCell in RNN", function(dt) return nn.RNN(nn.LSTMCell(3, 4, { dtype = dt })) end, seq_input },
  { "GRUCell in RNN", function(dt) return nn.RNN(nn.GRUCell(3, 4, { dtype = dt })) end, seq_input },
  { "GRUCell reset_after=false", function(dt) return nn.RNN(nn.GRUCell(3, 4, { dtype = dt, reset_after = false })) end, seq_input },
  { "custom nn.Cell", function(dt) return nn.RNN(Custom(3, dt)) end, seq_input },
  { "Bidirectional", function(dt) return nn.Bidirectional(nn.RNN(nn.LSTMCell(3, 4, { dtype = dt }))) end, seq_input },
  { "stacked bidirectional Sequential", function(dt)
      return nn.Sequential { nn.Bidirectional(nn.RNN(nn.LSTMCell(3, 4, { dtype = dt }), { return_sequences = true })),
        nn.Bidirectional(nn.RNN(nn.GRUCell(8, 2, { dtype = dt }))), mg.tanh, nn.Dense(4, 1, { dtype = dt }) }
    end, seq_input },
  { "the layer classes SimpleRNN, LSTM, GRU", function(dt)
      return nn.Sequential { nn.SimpleRNN(4, { input_size = 3, return_sequences = true, dtype = dt }),
        nn.LSTM(3, { input_size = 4, return_sequences = true, dtype = dt }), nn.GRU(2, { input_size = 3, dtype = dt }) }
    end, seq_input },
  { "stacked cells nn.RNN({cells})", function(dt)
      local o = { dtype = dt }
      return nn.RNN({ nn.LSTMCell(3, 4, o), nn.LSTMCell(4, 4, o), nn.GRUCell(4, 2, o) }, { return_sequences = true })
    end, seq_input },
  { "Bidirectional over stacked cells", function(dt)
      local o = { dtype = dt }
      return nn.Bidirectional(nn.RNN(nn.StackedRNNCells { nn.SimpleRNNCell(3, 2, o), nn.LSTMCell(2, 2, o) }))
    end, seq_input },
  { "Embedding", function(dt) return nn.Embedding(6, 3, { dtype = dt }) end, ids_input },
  { "Embedding with mask_zero in a Sequential with an LSTM", function(dt)
      return nn.Sequential { nn.Embedding(5, 3, { mask_zero = true, dtype = dt }),
        nn.RNN(nn.LSTMCell(3, 2, { dtype = dt })) }
    end, function() return mg.tensor { { 1, 5, 2, 0, 0 }, { 3, 3, 4, 1, 2 } } end },
  { "LayerNormalization", function(dt)
      return nn.LayerNormalization { input_size = 3, dtype = dt, beta_initializer = "random_normal",
        gamma_initializer = "random_normal" }
    end, seq_input },
  { "TimeDistributed(Dense)", function(dt) return nn.TimeDistributed(nn.Dense(3, 2, { dtype = dt })) end, seq_input },
  { "Embedding, LSTM, LayerNormalization, Dropout, TimeDistributed(Dense)", function(dt)
      return nn.Sequential { nn.Embedding(6, 3, { dtype = dt }),
        nn.RNN(nn.LSTMCell(3, 4, { dtype = dt }), { return_sequences = true }),
        nn.LayerNormalization { input_size = 4, dtype = dt, gamma_initializer = "random_normal" }, nn.Dropout(0.5),
        nn.TimeDistributed(nn.Dense(4, 2, { dtype = dt })) }
    end, ids_input },
}

describe("nn.save / nn.load round trips", function()
  for _, dt in ipairs { "float32", "float64" } do
    for _, c in ipairs(LAYERS) do
      it(c[1] .. " (" .. dt .. "): bit-equal values and outputs", function()
        mg.manual_seed(1)
        local a = c[2](dt)
        mg.manual_seed(2)
        local b = c[2](dt)
        local x = c[3](dt)
        assert.are_not.equal(bits(a(x)), bits(b(x)))
        nn.save(a, path("m.safetensors"))
        nn.load(b, path("m.safetensors"))
        same_state(a, b)
        assert.are.equal(bits(a(x)), bits(b(x)))
        -- state() / load_state, in memory, into a third copy
        mg.manual_seed(3)
        local c = c[2](dt)
        c:load_state(a:state())
        same_state(a, c)
        assert.are.equal(bits(a(x)), bits(c(x)))
        -- strict: a name taken away and one added are both listed
        local st = a:state()
        local names = keys(st)
        local gone = names[#names]
        st[gone], st["9/extra"] = nil, mg.zeros(1)
        raises(function() c:load_state(st) end, "load_state: the state does not fit", "missing: " .. gone,
          "unexpected: 9/extra")
        local missing, unexpected = c:load_state(st, { strict = false })
        assert.are.same({ gone }, missing)
        assert.are.same({ "9/extra" }, unexpected)
      end)
    end
  end

  it("loads into the layer classes before they are built, building them from the shapes", function()
    local function make()
      return nn.Sequential { nn.Embedding(6, 3), nn.LSTM(4, { return_sequences = true }),
        nn.Bidirectional(nn.GRU(2, { return_sequences = true })), nn.LayerNormalization(), nn.Dense(4, 1) }
    end
    local a = make()
    local x = ids_input()
    a(x)
    nn.save(a, path("lazy.safetensors"))
    local b = make()
    assert.are.equal(3, #b:parameters())              -- the Embedding's table, the Dense's two
    nn.load(b, path("lazy.safetensors"))
    same_state(a, b)
    assert.are.equal(bits(a(x)), bits(b(x)))
  end)
end)

describe("loading", function()
  it("require 'moongrad.nn' alone comes with state(), nn.save, nn.from_torch, nn.load_keras", function()
    local p = io.popen("LUA_CPATH=" .. support.shq(package.cpath) .. [[ lua5.4 -e 'local nn = require "moongrad.nn"
      print(type(nn.save), type(nn.load), type(nn.from_torch), type(nn.to_torch), type(nn.load_keras),
            type(nn.save_keras), type(nn.Dense(1, 1).state), type(nn.Dense(1, 1).get_weights))' 2>&1]])
    local out = p:read("a")
    p:close()
    assert.are.equal(string.rep("function\t", 7) .. "function\n", out)
  end)
end)

describe("layer:state()", function()
  it("names Variables as '<layer>/<weight>', children of a Sequential as '<index>/...'", function()
    local m = nn.Sequential { nn.Bidirectional(nn.RNN(nn.LSTMCell(3, 4))), mg.relu, nn.Dense(8, 2) }
    assert.are.same({ "1/backward_lstm/bias", "1/backward_lstm/kernel", "1/backward_lstm/recurrent_kernel",
      "1/lstm/bias", "1/lstm/kernel", "1/lstm/recurrent_kernel", "3/dense/bias", "3/dense/kernel" }, keys(m:state()))
    assert.are.same({ "gru/bias", "gru/kernel", "gru/recurrent_kernel" }, keys(nn.GRUCell(2, 2):state()))
    local inner = nn.Sequential { nn.Sequential { nn.Dense(2, 2) }, nn.Dense(2, 2) }
    assert.are.same({ "1/1/dense/bias", "1/1/dense/kernel", "2/dense/bias", "2/dense/kernel" }, keys(inner:state()))
  end)

  it("names stacked cells 'cells/<i>/...', so two cells of one class stay apart; TimeDistributed its layer's", function()
    local m = nn.Sequential { nn.Bidirectional(nn.RNN({ nn.LSTMCell(3, 2), nn.LSTMCell(2, 2) })),
      nn.TimeDistributed(nn.Dense(4, 1)), nn.Embedding(3, 2), nn.LayerNormalization { input_size = 2 } }
    local want = { "1/cells/1/backward_lstm/bias", "1/cells/1/backward_lstm/kernel",
      "1/cells/1/backward_lstm/recurrent_kernel",
      "1/cells/1/lstm/bias", "1/cells/1/lstm/kernel", "1/cells/1/lstm/recurrent_kernel",
      "1/cells/2/backward_lstm/bias", "1/cells/2/backward_lstm/kernel", "1/cells/2/backward_lstm/recurrent_kernel",
      "1/cells/2/lstm/bias", "1/cells/2/lstm/kernel", "1/cells/2/lstm/recurrent_kernel",
      "2/dense/bias", "2/dense/kernel", "3/embedding/embeddings", "4/layer_normalization/beta",
      "4/layer_normalization/gamma" }
    assert.are.same(want, keys(m:state()))
    assert.are.equal(m.layers[1].forward_layer.cell.cells[2].kernel, m:state()["1/cells/2/lstm/kernel"])
  end)

  it("holds the layer's own Variables", function()
    local d = nn.Dense(2, 3)
    assert.are.equal(d.kernel, d:state()["dense/kernel"])
  end)

  it("refuses two Variables of one name", function()
    local C = nn.Cell { state_size = 2, init = function(self)
        self.a = nn.Dense(2, 2); self.b = nn.Dense(2, 2) end,
      call = function(self, x, s) return s[1], s end }
    raises(function() C():state() end, "state: two Variables of", "are named 'dense/kernel'")
  end)
end)

describe("layer:load_state", function()
  it("lists every problem and changes nothing", function()
    local d = nn.Dense(3, 2)
    local before = bits(d.kernel)
    raises(function() d:load_state({ ["dense/kernel"] = mg.zeros(2, 3), ["dense/bias"] = mg.zeros(2) }) end,
      "load_state: the state does not fit Dense(3 -> 2, float32)",
      "shape mismatch: dense/kernel (given (2,3), the layer's is (3,2))")
    raises(function() d:load_state({ ["dense/kernel"] = mg.zeros(3, 2), extra = mg.zeros(1) }) end,
      "missing: dense/bias; unexpected: extra")
    raises(function() d:load_state({ ["dense/kernel"] = 1 }) end, "dense/kernel (a number, not a tensor)")
    assert.are.equal(before, bits(d.kernel))
  end)

  it("strict=false loads what is there and returns what was missing and unexpected", function()
    local d = nn.Dense(3, 2)
    local k = mg.randn(3, 2)
    local missing, unexpected = d:load_state({ ["dense/kernel"] = k, other = mg.zeros(1) }, { strict = false })
    assert.are.same({ "dense/bias" }, missing)
    assert.are.same({ "other" }, unexpected)
    assert.are.equal(bits(k), bits(d.kernel))
    raises(function() d:load_state({ ["dense/kernel"] = mg.zeros(2, 2) }, { strict = false }) end, "shape mismatch")
  end)

  it("converts the dtype of the given tensors to the layer's", function()
    local d = nn.Dense(2, 2, F64)
    d:load_state({ ["dense/kernel"] = mg.tensor({ { 1, 2 }, { 3, 4 } }), ["dense/bias"] = mg.ones(2) })
    assert.are.equal("float64", d.kernel.dtype)
    assert.are.same({ { 1, 2 }, { 3, 4 } }, d.kernel:totable())
  end)

  it("nn.load into a model of another shape names the mismatches", function()
    nn.save(nn.RNN(nn.LSTMCell(3, 4)), path("l.safetensors"))
    raises(function() nn.load(nn.RNN(nn.LSTMCell(3, 5)), path("l.safetensors")) end,
      "lstm/kernel (given (3,16), the layer's is (3,20))", "lstm/bias (given (16), the layer's is (20))")
  end)
end)

describe("get_weights / set_weights", function()
  it("are in Keras order: kernel, recurrent_kernel, bias; forward then backward", function()
    local b = nn.Bidirectional(nn.RNN(nn.LSTMCell(3, 4)))
    local ws = b:get_weights()
    assert.are.equal(6, #ws)
    local want = { "(3,16)", "(4,16)", "(16)", "(3,16)", "(4,16)", "(16)" }
    for i, w in ipairs(ws) do assert.are.equal(want[i], mg.shapestr(w)) end
    assert.are.equal(bits(b.backward_layer.cell.recurrent_kernel), bits(ws[5]))
    ws[1]:fill(7)                                       -- copies, not the Variables
    assert.are_not.equal(bits(ws[1]), bits(b.forward_layer.cell.kernel))
    local c = nn.Bidirectional(nn.RNN(nn.LSTMCell(3, 4)))
    c:set_weights(b:get_weights())
    same_state(b, c)
  end)

  it("set_weights checks the count and each shape first", function()
    local d = nn.Dense(3, 2)
    raises(function() d:set_weights({ mg.zeros(3, 2) }) end, "set_weights: Dense(3 -> 2, float32) has 2 weights, got 1")
    raises(function() d:set_weights({ mg.zeros(3, 2), mg.zeros(3) }) end,
      "set_weights: weight 2 ('dense/bias') has shape (3), expected (2)")
  end)
end)

describe("resuming training from a checkpoint", function()
  local function model() return nn.Sequential { nn.RNN(nn.LSTMCell(2, 5)), nn.Dense(5, 1) } end
  local function train(m, opt, x, y, steps)
    local params = m:parameters()
    for _ = 1, steps do
      local tape <close> = mg.GradientTape()
      local loss = tape:record(function() return nn.mse(m(x), y) end)
      opt:step(tape:gradient(loss, params))
    end
  end
  local OPTS = {
    { "Adam", function(p) return optim.Adam(p, { lr = 0.01 }) end },
    { "Adam (pytorch variant)", function(p) return optim.Adam(p, { lr = 0.01, variant = "pytorch" }) end },
    { "SGD with momentum", function(p) return optim.SGD(p, { lr = 0.05, momentum = 0.9 }) end },
    { "SGD with nesterov", function(p) return optim.SGD(p, { lr = 0.05, momentum = 0.9, nesterov = true }) end },
  }
  for _, o in ipairs(OPTS) do
    it(o[1] .. ": bit-equal to the uninterrupted run", function()
      mg.manual_seed(3)
      local x, y = mg.randn(4, 6, 2), mg.randn(4, 1)
      local init = path("init.safetensors")
      local a = model()
      nn.save(a, init)
      local oa = o[2](a)
      train(a, oa, x, y, 8)
      -- interrupted: 3 steps, checkpoint, a new process would build model and optimizer anew
      local b = model()
      nn.load(b, init)
      local ob = o[2](b)
      train(b, ob, x, y, 3)
      nn.save(b, path("ckpt.safetensors"), { optimizer = ob })
      local c = model()
      local oc = o[2](c)
      nn.load(c, path("ckpt.safetensors"), { optimizer = oc })
      assert.are.equal(3, oc.iterations)
      train(c, oc, x, y, 5)
      same_state(a, c)
      -- without the optimizer state the run differs (the test can fail)
      local d = model()
      nn.load(d, path("ckpt.safetensors"))
      local od = o[2](d)
      train(d, od, x, y, 5)
      assert.are_not.equal(bits(a:state()["2/dense/kernel"]), bits(d:state()["2/dense/kernel"]))
    end)
  end

  -- nn.fit: 2 epochs = 1 epoch, checkpoint (model.optimizer, the one fit built from a name
  -- or was given), a fresh model and optimizer loaded from it, 1 more epoch (initial_epoch = 1,
  -- the same seed: the same shuffled batches)
  local FIT_OPTS = {
    { "adam by name, saved with nn.save and model.optimizer", "adam", function(p) return optim.Adam(p) end },
    { "the default rmsprop, saved by fit's checkpoint option", nil, function(p) return optim.RMSprop(p) end, true },
    { "an SGD object, saved by an on_epoch_end callback",
      function(p) return optim.SGD(p, { lr = 0.05, momentum = 0.9 }) end,
      function(p) return optim.SGD(p, { lr = 0.05, momentum = 0.9 }) end, "callback" },
  }
  for _, o in ipairs(FIT_OPTS) do
    it("nn.fit with " .. o[1] .. ": resumed training is bit-equal to the uninterrupted fit", function()
      mg.manual_seed(4)
      local x, y = mg.randn(11, 6, 2), mg.randn(11, 1)
      local init = path("fit_init.safetensors")
      local a = model()
      nn.save(a, init)
      local function opt_for(m) return type(o[2]) == "function" and o[2](m) or o[2] end
      local fit = { loss = "mse", batch_size = 4, seed = 9, verbose = 0 }
      local function with(t)
        local r = {}
        for k, v in pairs(fit) do r[k] = v end
        for k, v in pairs(t) do r[k] = v end
        return r
      end
      local ha = nn.fit(a, x, y, with { epochs = 2, optimizer = opt_for(a) })
      assert.are.equal(a.optimizer, ha.optimizer)
      local b = model()
      nn.load(b, init)
      local ckpt = path("fit_ckpt.safetensors")
      if o[4] == true then
        nn.fit(b, x, y, with { epochs = 1, optimizer = opt_for(b), checkpoint = dir .. "/fit_{epoch}.safetensors" })
        ckpt = path("fit_1.safetensors")
      elseif o[4] == "callback" then
        nn.fit(b, x, y, with { epochs = 1, optimizer = opt_for(b), callbacks = { {
          on_epoch_end = function(_, _, logs) nn.save(logs.model, ckpt, { optimizer = logs.optimizer }) end } } })
      else
        nn.fit(b, x, y, with { epochs = 1, optimizer = opt_for(b) })
        nn.save(b, ckpt, { optimizer = b.optimizer })
      end
      mg.manual_seed(77)                                -- another process: other initial weights
      local c = model()
      local oc = o[3](c)
      nn.load(c, ckpt, { optimizer = oc })
      assert.are.equal(3, oc.iterations)              -- 11 samples in batches of 4
      local hc = nn.fit(c, x, y, with { epochs = 2, initial_epoch = 1, optimizer = oc })
      same_state(a, c)
      assert.are.same({ 2 }, hc.epoch)
      assert.are.equal(ha.loss[2], hc.loss[1])
      -- the same without the skipped epoch's shuffle differs (the test can fail)
      local d = model()
      local od = o[3](d)
      nn.load(d, ckpt, { optimizer = od })
      nn.fit(d, x, y, with { epochs = 1, optimizer = od })
      assert.are_not.equal(bits(a:state()["2/dense/kernel"]), bits(d:state()["2/dense/kernel"]))
    end)
  end

  it("nn.fit builds the layer classes before its optimizer, which then updates every parameter", function()
    local m = nn.Sequential { nn.LSTM(4, { stateful = true }), nn.LayerNormalization(), nn.Dense(4, 1) }
    local x, y = mg.randn(8, 5, 2), mg.randn(8, 1)
    local h = nn.fit(m, x, y, { loss = "mse", optimizer = "adam", verbose = 0, batch_size = 8, shuffle = false })
    assert.are.equal(7, #m:parameters())
    assert.are.equal(7, #h.optimizer.params)
    -- the same training as a model built by a call beforehand: the build call drew the same
    -- weights and left no states behind in the stateful LSTM
    local function make() return nn.Sequential { nn.LSTM(4, { stateful = true }), nn.LayerNormalization(), nn.Dense(4, 1) } end
    local opts = { loss = "mse", verbose = 0, batch_size = 4, shuffle = false, epochs = 2 }
    mg.manual_seed(5)
    local a = make()
    opts.optimizer = "adam"
    nn.fit(a, x, y, opts)
    mg.manual_seed(5)
    local b = make()
    mg.no_grad(function() b(x:narrow(1, 1, 1)) end)
    b.layers[1]:reset_states()
    opts.optimizer = optim.Adam(b)
    nn.fit(b, x, y, opts)
    same_state(a, b)
  end)

  it("nn.fit keeps model.optimizer from one fit to the next, as a compiled Keras model", function()
    local m = model()
    local x, y = mg.randn(4, 6, 2), mg.randn(4, 1)
    local h1 = nn.fit(m, x, y, { loss = "mse", optimizer = "adam", verbose = 0 })
    local h2 = nn.fit(m, x, y, { loss = "mse", verbose = 0 })
    assert.are.equal(h1.optimizer, h2.optimizer)
    assert.are.equal(2, m.optimizer.iterations)
    local h3 = nn.fit(m, x, y, { loss = "mse", optimizer = "sgd", verbose = 0 })
    assert.are_not.equal(h1.optimizer, h3.optimizer)
    raises(function() nn.fit(m, x, y, { loss = "mse", verbose = 0, checkpoint = 3 }) end,
      "fit: checkpoint must be a file name, got a number")
    raises(function() nn.fit(m, x, y, { loss = "mse", verbose = 0, initial_epoch = -1 }) end,
      "fit: initial_epoch must be an integer >= 0, got -1")
  end)

  it("refuses a checkpoint without optimizer state, or of another optimizer", function()
    local m = model()
    nn.save(m, path("plain.safetensors"))
    raises(function() nn.load(m, path("plain.safetensors"), { optimizer = optim.Adam(m) }) end,
      "nn.load: '" .. path("plain.safetensors") .. "' holds no optimizer state")
    nn.save(m, path("sgd.safetensors"), { optimizer = optim.SGD(m) })
    raises(function() nn.load(m, path("sgd.safetensors"), { optimizer = optim.Adam(m) }) end,
      "holds the state of a SGD optimizer, not of a Adam")
  end)

  it("a bad optimizer state leaves model and optimizer as they were", function()
    local m = model()
    local opt = optim.Adam(m)
    nn.save(m, path("adam.safetensors"), { optimizer = opt })
    local t, meta = mg.load_tensors(path("adam.safetensors"))
    local p1 = m:parameters()[1]
    local slot                                        -- the first slot of parameter 1
    for k in pairs(t) do
      if k:match("^@optimizer/.*%.1$") and (slot == nil or k < slot) then slot = k end
    end
    assert.is_truthy(slot, "no slot of parameter 1 in the checkpoint")
    t[slot] = mg.zeros(p1:size(1) + 1, p1:size(2))    -- a slot of the wrong shape
    mg.save_tensors(t, path("bad.safetensors"), { metadata = meta })
    local other = model()
    local before = {}
    for k, v in pairs(other:state()) do before[k] = bits(v) end
    local oa = optim.Adam(other)
    raises(function() nn.load(other, path("bad.safetensors"), { optimizer = oa }) end,
      "Adam:load_state: '" .. slot:sub(#"@optimizer/" + 1) .. "' must be a tensor of shape")
    for k, v in pairs(other:state()) do assert.are.equal(before[k], bits(v), k) end
    assert.are.equal(0, oa.iterations)
  end)

  it("checks its arguments", function()
    raises(function() nn.save(3, path("x")) end, "nn.save: expected a layer, got a number")
    raises(function() nn.save(nn.Dense(1, 1), path("x"), { optimiser = 1 }) end, "nn.save: unknown option 'optimiser'")
    raises(function() nn.load(nn.Dense(1, 1), path("none.safetensors")) end, "load_tensors: cannot open")
  end)
end)
