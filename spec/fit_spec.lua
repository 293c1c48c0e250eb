-- nn.fit (bindings/moongrad/fit.lua): the loss falls, the history's lengths, the callbacks'
-- order and what they see (each step's tape and gradients, checked against gradients taken
-- by hand), the seeded shuffle (reproducible, a permutation per epoch), validation, the
-- model's regularization losses, stopping, a Ctrl-C's "interrupted!" error, and the progress
-- lines.
local mg = require "moongrad"
local support = require "support"
local nn, optim = mg.nn, mg.optim

local F64, assert_error = support.F64, support.assert_error

-- y = x w + 0.5 with noise: 40 samples of 3 features.
local function regression(n)
  mg.manual_seed(11)
  local x = mg.randn({ n or 40, 3 }, F64)
  local y = mg.matmul(x, mg.tensor({ { 1 }, { -2 }, { 0.5 } }, F64)) + 0.5 + mg.randn({ n or 40, 1 }, F64) * 0.01
  return x, y
end

local function dense()
  mg.manual_seed(2)
  return nn.Dense(3, 1, { dtype = "float64" })
end

describe("nn.fit", function()
  it("lowers the loss; one history entry per epoch, val_loss the validation loss after it", function()
    local x, y = regression()
    local xv, yv = x:narrow(1, 1, 10) * 0.5, y:narrow(1, 1, 10)
    local m = dense()
    local seen = {}
    local h = nn.fit(m, x, y, { epochs = 8, batch_size = 8, loss = "mse", optimizer = optim.Adam(m, { lr = 0.1 }),
      validation_data = { xv, yv }, verbose = 0, seed = 1, callbacks = { {
        on_epoch_end = function(_, epoch, logs) seen[epoch] = { nn.mse(m(xv), yv):item(), logs.val_loss } end } } })
    assert.are.equal(8, #h.loss)
    assert.are.equal(8, #h.val_loss)
    assert.are.equal(8, h.epochs)
    assert.is_nil(h.interrupted)
    assert(h.loss[8] < h.loss[1] / 10, string.format("loss %g -> %g", h.loss[1], h.loss[8]))
    for e = 1, 8 do
      assert.is_near(seen[e][1], h.val_loss[e], 1e-14)
      assert.are.equal(h.val_loss[e], seen[e][2])
    end
  end)

  it("tensorboard = dir writes Keras's TensorBoard layout: batch_loss and epoch_loss equal to the history", function()
    local x, y = regression()
    local xv, yv = x:narrow(1, 1, 10), y:narrow(1, 1, 10)
    local m = dense()
    local dir = support.tmpdir()
    local h = nn.fit(m, x, y, { epochs = 3, batch_size = 10, loss = "mse", optimizer = optim.SGD(m, { lr = 0.05 }),
      validation_data = { xv, yv }, verbose = 0, seed = 1, tensorboard = dir, histogram_freq = 4 })
    local function events(sub)
      local p = io.popen("ls " .. support.shq(dir .. "/" .. sub))
      local name = p:read("l")
      p:close()
      assert.is_truthy(name and name:match("^events%.out%.tfevents%."), sub .. ": " .. tostring(name))
      local by = {}
      for _, e in ipairs(mg.summary.read(dir .. "/" .. sub .. "/" .. name)) do
        for _, v in ipairs(e.values or {}) do
          by[v.tag] = by[v.tag] or {}
          by[v.tag][#by[v.tag] + 1] = { step = e.step, v = v }
        end
      end
      return by
    end
    local train, val = events("train"), events("validation")
    assert.are.equal(12, #train.batch_loss)                 -- 4 batches x 3 epochs, steps 1..12
    assert.are.equal(12, train.batch_loss[12].step)
    assert.are.equal(3, #train.epoch_loss)
    for e = 1, 3 do
      assert.is_near(h.loss[e], train.epoch_loss[e].v.value, 1e-6 * h.loss[e])
      assert.is_near(h.val_loss[e], val.epoch_loss[e].v.value, 1e-6 * h.val_loss[e])
    end
    local hist = 0
    for tag in pairs(train) do if tag:match("^weights/") or tag:match("^gradients/") then hist = hist + 1 end end
    assert.are.equal(4, hist)                               -- kernel and bias, weights and gradients
    assert_error("histogram_freq needs the tensorboard option", nn.fit, m, x, y,
      { loss = "mse", optimizer = optim.SGD(m, { lr = 0.05 }), verbose = 0, histogram_freq = 1 })
    support.rmtree(dir)
  end)

  it("matches Keras 3's model.fit: per-epoch losses (batch-size weighted) and final weights", function()
    local x, y = regression(20)                         -- batches of 8, 8 and 4
    mg.manual_seed(9)
    local d = nn.Dense(3, 1)
    local dir = support.tmpdir()
    for k, t in pairs { x = x, y = y, kernel = d.kernel, bias = d.bias } do mg.save(t, dir .. "/f_" .. k .. ".npy") end
    support.train_ref(dir, "keras", { { "f", { kind = "fit", loss = "mse", epochs = 3, batch_size = 8,
      sgd = { learning_rate = 0.05, momentum = 0.5 } } } })
    local h = nn.fit(d, x:to("float32"), y:to("float32"), { epochs = 3, batch_size = 8, loss = "mse", shuffle = false,
      verbose = 0, optimizer = optim.SGD(d, { lr = 0.05, momentum = 0.5 }) })
    local want = support.ref_out(dir, "f_loss"):totable()
    for e = 1, 3 do
      assert(math.abs(h.loss[e] - want[e]) <= 1e-5 * want[e], string.format("epoch %d: %.8g, Keras %.8g", e, h.loss[e],
        want[e]))
    end
    assert.is_true((d.kernel - support.ref_out(dir, "f_kernel")):abs():max():item() < 1e-5)
    assert.is_true((d.bias - support.ref_out(dir, "f_bias")):abs():max():item() < 1e-5)
    support.rmtree(dir)
  end)

  it("calls the callbacks in order; each step's tape and gradients are those of its batch", function()
    local x, y = regression(10)
    local m = dense()
    local events, checked = {}, 0
    local cb = {
      on_train_begin = function() events[#events + 1] = "train_begin" end,
      on_train_end = function(_, logs) events[#events + 1] = "train_end:" .. logs.history.epochs end,
      on_epoch_begin = function(_, e) events[#events + 1] = "epoch_begin:" .. e end,
      on_epoch_end = function(_, e) events[#events + 1] = "epoch_end:" .. e end,
      on_batch_begin = function(_, b, logs) events[#events + 1] = "batch_begin:" .. b .. "/" .. logs.size end,
      on_batch_end = function(_, b) events[#events + 1] = "batch_end:" .. b end,
      on_backward = function(_, b, logs)
        events[#events + 1] = "backward:" .. b
        -- the gradient of this batch's loss, taken by hand before the step (lr = 0: no step)
        local first = (b - 1) * 4 + 1
        local xb, yb = x:narrow(1, first, logs.size), y:narrow(1, first, logs.size)
        local tape <close> = mg.GradientTape()
        local l = tape:record(function() return nn.mse(m(xb), yb) end)
        local want = tape:gradient(l, m:parameters())
        assert.are.equal(#want, #logs.grads)
        for i = 1, #want do assert.is_true((want[i] - logs.grads[i]):abs():max():item() < 1e-14) end
        assert.is_near(l:item(), logs.loss, 1e-14)
        assert.are.equal(m:parameters()[1], logs.params[1])
        -- on_backward makes the tape persistent: it answers more about the step, dL/dpred = 2 (pred - y) / n
        local dpred = logs.tape:gradient(logs.loss_tensor, logs.pred)
        assert.is_true((dpred - (logs.pred - yb) * (2 / logs.size)):abs():max():item() < 1e-14)
        checked = checked + 1
      end,
    }
    nn.fit(m, x, y, { epochs = 2, batch_size = 4, loss = "mse", optimizer = optim.SGD(m, { lr = 0 }),
      shuffle = false, callbacks = { cb }, verbose = 0 })
    assert.are.same({ "train_begin",
      "epoch_begin:1", "batch_begin:1/4", "backward:1", "batch_end:1", "batch_begin:2/4", "backward:2", "batch_end:2",
      "batch_begin:3/2", "backward:3", "batch_end:3", "epoch_end:1",
      "epoch_begin:2", "batch_begin:1/4", "backward:1", "batch_end:1", "batch_begin:2/4", "backward:2", "batch_end:2",
      "batch_begin:3/2", "backward:3", "batch_end:3", "epoch_end:2", "train_end:2" }, events)
    assert.are.equal(6, checked)
  end)

  it("on_backward comes before the step: gradients through the Variables still work there", function()
    mg.manual_seed(4)
    local x = mg.uniform({ 8, 5, 2 }, -1, 1, F64)
    local y = x:select(2, 1):narrow(2, 1, 1)
    local rnn = nn.RNN(nn.LSTMCell(2, 4, { dtype = "float64" }), { return_sequences = true })
    local head = nn.Dense(4, 1, { dtype = "float64" })
    local model = setmetatable({}, { __call = function(self, xb)
      self.outputs = rnn(xb)
      return head(self.outputs:select(2, 5))
    end })
    function model:parameters()
      local ps = rnn:parameters()
      for _, p in ipairs(head:parameters()) do ps[#ps + 1] = p end
      return ps
    end
    -- by hand, before training: only the last step's output reaches the loss,
    -- dL/do_5 = 2 (pred - y) / B * kernel^T
    local pred = head(rnn(x):select(2, 5))
    local want = mg.matmul((pred - y) * (2 / 8), head.kernel:transpose(1, 2))
    local got, kernel_before
    nn.fit(model, x, y, { epochs = 1, batch_size = 8, loss = "mse", verbose = 0, shuffle = false,
      optimizer = optim.SGD(model, { lr = 0.5 }), callbacks = { { on_backward = function(_, _, logs)
        got = logs.tape:gradient(logs.loss_tensor, model.outputs)
        kernel_before = head.kernel:clone()
      end } } })
    assert.is_true((kernel_before - head.kernel):abs():max():item() > 0)   -- the step came after
    assert.is_true((got:select(2, 5) - want):abs():max():item() < 1e-12)
    assert.are.equal(0, got:narrow(2, 1, 4):abs():max():item())
  end)

  it("shuffles with its seed: a permutation each epoch, the same for the same seed", function()
    local n = 13
    local x = mg.arange(1, n + 1, F64):unsqueeze(2)      -- feature = sample id
    local y = x * 2
    local function order(seed)
      local m = nn.Dense(1, 1, { dtype = "float64" })
      local ids, epochs = {}, {}
      nn.fit(m, x, y, { epochs = 3, batch_size = 5, loss = "mse", optimizer = optim.SGD(m, { lr = 0 }), seed = seed,
        verbose = 0, callbacks = { {
          on_epoch_begin = function(_, e) ids = {} epochs[e] = ids end,
          on_batch_end = function(_, _, logs)
            for i = 1, logs.size do
              ids[#ids + 1] = logs.x:get(i, 1)
              assert.are.equal(logs.x:get(i, 1) * 2, logs.y:get(i, 1))   -- rows of x and y stay paired
            end
          end } } })
      return epochs
    end
    local a, b, c = order(7), order(7), order(8)
    assert.are.same(a, b)
    assert.are_not.same(a, c)
    assert.are_not.same(a[1], a[2])
    for e = 1, 3 do
      local sorted = { table.unpack(a[e]) }
      table.sort(sorted)
      for i = 1, n do assert.are.equal(i, sorted[i]) end
    end
    -- without a seed the order follows mg.manual_seed
    mg.manual_seed(5)
    local d = order(nil)
    mg.manual_seed(5)
    assert.are.same(d, order(nil))
  end)

  it("adds the model's regularization losses to the loss it minimizes", function()
    local x, y = regression(8)
    local d = dense()
    local model = setmetatable({}, { __call = function(_, xb) return d(xb) end })
    function model:parameters() return d:parameters() end
    function model:losses() return { (d.kernel * d.kernel):sum() * 0.1 } end
    local logs
    nn.fit(model, x, y, { epochs = 1, batch_size = 8, loss = "mse", optimizer = optim.SGD(model, { lr = 0 }),
      verbose = 0, callbacks = { { on_batch_end = function(_, _, l) logs = l end } } })
    local want = nn.mse(d(x), y):item() + (d.kernel * d.kernel):sum():item() * 0.1
    assert.is_near(want, logs.loss, 1e-14)
    -- and its gradient: 2 * 0.1 * kernel more than the data term's
    local tape <close> = mg.GradientTape()
    local l = tape:record(function() return nn.mse(d(x), y) end)
    local g = tape:gradient(l, { d.kernel })[1]
    assert.is_true((logs.grads[1] - g - d.kernel * 0.2):abs():max():item() < 1e-14)
  end)

  it("calls the model with {training = true} when the layers take call options; validation without", function()
    local x, y = regression(8)
    local d = dense()
    local seen = {}
    local model = setmetatable({}, { __call = function(_, xb, call)
      seen[#seen + 1] = call == nil and "none" or tostring(call.training)
      return d(xb)
    end })
    function model:parameters() return d:parameters() end
    local saved = rawget(nn, "Dropout")
    local function run()
      seen = {}
      nn.fit(model, x, y, { epochs = 1, batch_size = 8, loss = "mse", verbose = 0, validation_data = { x, y } })
      return seen
    end
    local ok, err = pcall(function()
      nn.Dropout = nil                          -- layers without call options: model(x)
      assert.are.same({ "none", "none" }, run())
      nn.Dropout = function() end               -- the layer classes: model(x, {training = true})
      assert.are.same({ "true", "none" }, run())
    end)
    nn.Dropout = saved
    assert(ok, err)
  end)

  it("trains an LSTM with a loss function; takes an optimizer by name", function()
    mg.manual_seed(1)
    local x = mg.uniform({ 32, 6, 1 }, -1, 1)
    local y = x:select(2, 1)
    local model = nn.Sequential { nn.RNN(nn.LSTMCell(1, 12)), nn.Dense(12, 1) }
    local h = nn.fit(model, x, y, { epochs = 40, batch_size = 16, verbose = 0, seed = 3,
      optimizer = optim.Adam(model, { lr = 0.02 }), loss = function(p, t) return nn.huber(p, t, { delta = 0.5 }) end })
    assert(h.loss[40] < h.loss[1] / 5, string.format("loss %g -> %g", h.loss[1], h.loss[40]))
    -- an optimizer by its Keras name, with its defaults
    local seen
    nn.fit(model, x, y, { loss = "mse", optimizer = "Adam", verbose = 0, callbacks = { {
      on_train_begin = function() end, on_batch_end = function(_, _, logs) seen = logs end } } })
    assert.are.equal(#model:parameters(), #seen.grads)
  end)

  it("stops when a callback sets logs.stop_training; an interrupt ends it with the history so far", function()
    local x, y = regression(8)
    local m = dense()
    local h = nn.fit(m, x, y, { epochs = 5, batch_size = 4, loss = "mse", verbose = 0, callbacks = { {
      on_epoch_end = function(_, e, logs) if e == 2 then logs.stop_training = true end end } } })
    assert.are.equal(2, #h.loss)
    local ended
    h = nn.fit(m, x, y, { epochs = 5, batch_size = 4, loss = "mse", verbose = 0, callbacks = { {
      on_batch_begin = function(_, b, logs) if logs.epoch == 3 and b == 2 then error("stdin:1: interrupted!") end end,
      on_train_end = function(_, logs) ended = logs.history end } } })
    assert.is_true(h.interrupted)
    assert.are.equal(2, #h.loss)
    assert.are.equal(2, h.epochs)
    assert.are.equal(h, ended)
    -- any other error goes through
    assert_error("boom", nn.fit, m, x, y, { loss = "mse", verbose = 0, callbacks = { {
      on_batch_end = function() error("boom") end } } })
  end)

  it("a real Ctrl-C (SIGINT to the moongrad executable) ends fit with its history; the script goes on", function()
    local exe = (os.getenv("MOONGRAD_BUILD") or "build") .. "/moongrad"
    local code = [[local nn = mg.nn; mg.manual_seed(1); local x = mg.randn(64, 4); local y = x:sum(2, true)
      local f = io.open("/proc/self/stat"); local pid = f:read("a"):match("^(%d+)"); f:close()
      local h = nn.fit(nn.Dense(4, 1), x, y, {epochs = 4, batch_size = 8, loss = "mse", verbose = 0,
        callbacks = {{ on_batch_begin = function(_, b, logs)
          if logs.epoch == 3 and b == 4 then
            io.popen("kill -INT " .. pid):close()          -- (os.execute would ignore SIGINT meanwhile)
            for _ = 1, 1e7 do mg.ones(2) end              -- stopped by the Ctrl-C
          end end }}})
      print(#h.loss, h.epochs, h.interrupted, #h.loss == 2 and "after" or "")]]
    local p = io.popen("timeout 60 " .. support.shq(exe) .. " -e " .. support.shq(code) .. " 2>&1")
    local out = p:read("a")
    local ok = p:close()
    assert.is_true(ok, out)
    assert.are.equal("2\t2\ttrue\tafter\n", out)
  end)

  it("prints a progress line per epoch (plain output)", function()
    local exe = (os.getenv("MOONGRAD_BUILD") or "build") .. "/moongrad"
    local code = [[local nn = mg.nn; mg.manual_seed(1); local x = mg.randn(10, 2); local y = x:sum(2, true)
      nn.fit(nn.Dense(2, 1), x, y, {epochs = 2, batch_size = 4, loss = "mse",
        validation_data = {x, y}})]]
    local p = io.popen("MOONGRAD_PROGRESS=plain " .. support.shq(exe) .. " -e " .. support.shq(code))
    local out = p:read("a")
    p:close()
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(2, #lines, out)
    assert.is_truthy(lines[1]:find("^epoch 1/2: batch 3/3  loss %d+%.%d+  val_loss %d+%.%d+$"), lines[1])
    assert.is_truthy(lines[2]:find("^epoch 2/2: batch 3/3  loss "), lines[2])
  end)

  it("reports bad arguments", function()
    local x, y = regression(8)
    local m = dense()
    assert_error("fit: option 'loss' is required", nn.fit, m, x, y, {})
    assert_error("fit: unknown loss \"msq\"", nn.fit, m, x, y, { loss = "msq" })
    assert_error("fit: y has 4 samples (shape (4,1)) but x has 8", nn.fit, m, x, y:narrow(1, 1, 4), { loss = "mse" })
    assert_error("fit: batch_size must be an integer >= 1, got 0", nn.fit, m, x, y, { loss = "mse", batch_size = 0 })
    assert_error("fit: unknown optimizer \"adamax\"", nn.fit, m, x, y, { loss = "mse", optimizer = "adamax" })
    assert_error("fit: unknown option 'epoch'", nn.fit, m, x, y, { loss = "mse", epoch = 2 })
    assert_error("fit: validation_data must be {x_val, y_val}, got a tensor of shape (8,3)", nn.fit, m, x, y,
      { loss = "mse", validation_data = x })
    assert_error("fit: callbacks[1].on_epoch_end must be a function, got a number", nn.fit, m, x, y,
      { loss = "mse", callbacks = { { on_epoch_end = 1 } } })
    assert_error("fit: the loss must return a scalar tensor, got a tensor of shape (8,1)", nn.fit, m, x, y,
      { loss = function(p, t) return p - t end, batch_size = 8, verbose = 0 })
  end)
end)
