-- moongrad.fit: nn.fit, a Keras-like training loop (installed into mg.nn). Mini-batches of
-- the first dimension, shuffled each epoch by a seeded generator; per step a tape records the
-- forward pass, the loss and the model's regularization losses; callbacks see the step's tape
-- and gradients (on_backward, before the optimizer's step, which applies the Variables'
-- constraints). A Ctrl-C ends the loop with the history of the epochs completed.
local mg = require "moongrad"

local error, ipairs, pcall, tostring, type, require = error, ipairs, pcall, tostring, type, require
local debug, io, math, os, string = debug, io, math, os, string
local _ENV = nil

local fit = {}
local is_tensor, shapestr = mg.is_tensor, mg.shapestr

local checks = mg._checks(debug.getinfo(1, "S").source)   -- errors point at the user's line
local raisef, describe, check_opts = checks.raisef, checks.describe, checks.check_opts

local OPTS = { epochs = true, batch_size = true, loss = true, optimizer = true, validation_data = true,
  shuffle = true, callbacks = true, seed = true, verbose = true, persistent_tape = true,
  tensorboard = true, histogram_freq = true, distributed = true, initial_epoch = true, checkpoint = true }

local CALLBACKS = { "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin",
  "on_backward", "on_batch_end" }

---------------------------------------------------------------- checks

local function check_int(what, v, default, lo)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= math.floor(v) or v < lo or v >= 2 ^ 31 then
    raisef("fit: %s must be an integer >= %d, got %s", what, lo, tostring(v))
  end
  return math.tointeger(v)
end

local function check_data(what, x, n)
  if not is_tensor(x) then raisef("fit: %s must be a tensor, got %s", what, describe(x)) end
  if x:dim() < 1 then raisef("fit: %s must have a batch dimension, got a 0-d tensor", what) end
  if n and x:size(1) ~= n then
    raisef("fit: %s has %d samples (shape %s) but x has %d", what, x:size(1), shapestr(x), n)
  end
  return x
end

-- The loss function: a name of an nn loss ("mse", "sparse_categorical_crossentropy", ...) or a
-- function(pred, target) returning a scalar tensor.
local function check_loss(nn, loss)
  if loss == nil then raisef("fit: option 'loss' is required (a loss name such as \"mse\", or a function)") end
  if type(loss) == "string" then
    local f = nn[loss]
    if type(f) ~= "function" then raisef("fit: unknown loss \"%s\"", loss) end
    return f
  end
  if type(loss) ~= "function" then raisef("fit: loss must be a name or a function, got %s", describe(loss)) end
  return loss
end

local OPTIMIZERS = { sgd = "SGD", rmsprop = "RMSprop", adam = "Adam", adamw = "AdamW", adagrad = "Adagrad",
  nadam = "Nadam" }

local function is_optimizer(opt) return type(opt) == "table" and type(opt.step) == "function" end

-- Whether 'opt' updates exactly 'params' (the same Variables, in order).
local function over(opt, params)
  local ps = opt.params
  if type(ps) ~= "table" or #ps ~= #params then return false end
  for i, p in ipairs(params) do
    if ps[i] ~= p then return false end
  end
  return true
end

-- The optimizer: an optimizer object (built over the model's parameters), or a Keras name
-- ("rmsprop", Keras's compile default, "adam", ...) for one with its default settings; none:
-- the model's optimizer of an earlier fit (model.optimizer, over the same parameters), as a
-- compiled Keras model keeps its optimizer from one fit to the next, else "rmsprop".
local function check_optimizer(opt, params, model)
  if opt == nil and type(model) == "table" and is_optimizer(model.optimizer) and over(model.optimizer, params) then
    return model.optimizer
  end
  opt = opt or "rmsprop"
  if type(opt) == "string" then
    local name = OPTIMIZERS[opt:lower()]
    if name == nil then raisef("fit: unknown optimizer \"%s\"", opt) end
    return mg.optim[name](params)
  end
  if not is_optimizer(opt) then
    raisef("fit: optimizer must be an optimizer or a name, got %s", describe(opt))
  end
  return opt
end

-- The layers of 'model' (itself, a Sequential's children, a TimeDistributed's layer, ...).
local function each_layer(l, f)
  if type(l) ~= "table" then return end
  f(l)
  if type(l.layers) == "table" then
    for _, c in ipairs(l.layers) do each_layer(c, f) end
  end
  each_layer(l.layer, f)
end

-- Builds the layers of 'model' whose weights are made at their first call (nn.LSTM(units),
-- nn.LayerNormalization()) by one unrecorded call on the first sample, as Keras builds a
-- model before compiling its optimizer, so that the optimizer gets every parameter; the
-- states a stateful layer kept from that call are reset.
local function build_model(model, x)
  local unbuilt, any = mg.nn._unbuilt, false
  if type(unbuilt) ~= "function" then return end
  each_layer(model, function(l) any = any or unbuilt(l) end)
  if not any then return end
  mg.no_grad(function() model(x:narrow(1, 1, 1)) end)
  each_layer(model, function(l)
    if l.stateful and type(l.reset_states) == "function" then l:reset_states() end
  end)
end

-- The checkpoint option: a file name, "{epoch}" in it replaced by the epoch's number.
local function check_checkpoint(path)
  if path ~= nil and (type(path) ~= "string" or path == "") then
    raisef("fit: checkpoint must be a file name, got %s", describe(path))
  end
  return path
end

local function check_callbacks(cbs)
  if cbs == nil then return {} end
  if type(cbs) ~= "table" then raisef("fit: callbacks must be an array of tables, got %s", describe(cbs)) end
  for i, cb in ipairs(cbs) do
    if type(cb) ~= "table" then raisef("fit: callbacks[%d] is %s, expected a table", i, describe(cb)) end
    for _, name in ipairs(CALLBACKS) do
      if cb[name] ~= nil and type(cb[name]) ~= "function" then
        raisef("fit: callbacks[%d].%s must be a function, got %s", i, name, describe(cb[name]))
      end
    end
  end
  return cbs
end

---------------------------------------------------------------- batches

-- A seeded generator of integers in 1..n (xorshift64*, in Lua's 64-bit integers): the shuffle
-- is the same on every machine for a given seed.
local function generator(seed)
  local s = (math.tointeger(seed) or 0) ~ 0x2545F4914F6CDD1D
  if s == 0 then s = 0x9E3779B97F4A7C15 end
  return function(n)
    s = s ~ (s >> 12)
    s = s ~ (s << 25)
    s = s ~ (s >> 27)
    local r = (s * 0x2545F4914F6CDD1D) >> 11              -- 53 bits, non-negative
    return r % n + 1
  end
end

local function permutation(n, shuffle, rand)
  local idx = {}
  for i = 1, n do idx[i] = i end
  if shuffle then
    for i = n, 2, -1 do
      local j = rand(i)
      idx[i], idx[j] = idx[j], idx[i]
    end
  end
  return idx
end

-- Rows idx[first .. last] of 'x' (a view when they are consecutive).
local function rows(x, idx, first, last)
  local consecutive = true
  for k = first + 1, last do
    if idx[k] ~= idx[k - 1] + 1 then consecutive = false break end
  end
  if consecutive then return x:narrow(1, idx[first], last - first + 1) end
  local r = {}
  for k = first, last do r[#r + 1] = x:select(1, idx[k]) end
  return mg.stack(r, 1)
end

---------------------------------------------------------------- progress

local tty
local function isatty()
  if tty == nil then
    local env = os.getenv("MOONGRAD_PROGRESS")
    tty = env == "tty" or (env ~= "plain" and os.execute("test -t 1") == true)
  end
  return tty
end

-- The progress line: on a terminal "epoch 2/5: batch 7/32  loss 0.123456" rewritten in place;
-- otherwise one plain line per epoch, when it ends (with val_loss when there is one).
local function progress(epoch, epochs, batch, nb, loss, val, done)
  local line = string.format("epoch %d/%d: batch %d/%d  loss %.6f", epoch, epochs, batch, nb, loss)
  if val then line = line .. string.format("  val_loss %.6f", val) end
  if isatty() then
    io.write("\r", line, "\27[K", done and "\n" or "")
    io.flush()
  elseif done then
    io.write(line, "\n")
    io.flush()
  end
end

---------------------------------------------------------------- the loop

local function call(cbs, name, ...)
  for _, cb in ipairs(cbs) do
    local f = cb[name]
    if f then f(cb, ...) end
  end
end

-- The call options of a training step, {training = true} (dropout on), when mg.nn's layers
-- take call options (the layer classes with nn.Dropout: layer(x [, states] [, opts])); nil
-- before, when a layer's second argument can only be initial states.
local function training_call()
  return type(mg.nn.Dropout) == "function" and { training = true } or nil
end

-- The loss of 'model' on (xb, yb) plus its regularization losses (model:losses(), when the
-- model has that method): a scalar tensor; and the prediction. 'call' is the call options.
local function total_loss(model, lossfn, xb, yb, call)
  local pred
  if call then pred = model(xb, call) else pred = model(xb) end
  local loss = lossfn(pred, yb)
  if not is_tensor(loss) or loss:numel() ~= 1 then
    raisef("fit: the loss must return a scalar tensor, got %s", describe(loss))
  end
  if type(model.losses) == "function" then
    for _, r in ipairs(model:losses()) do loss = loss + r end
  end
  return loss, pred
end

-- The loss over the batches of (x, y), unrecorded (Keras's evaluate): the batch losses'
-- mean weighted by batch size, as Keras's loss tracker.
local function evaluate(model, lossfn, x, y, bs)
  local n, sum = x:size(1), 0
  mg.no_grad(function()
    for first = 1, n, bs do
      local len = math.min(bs, n - first + 1)
      local l = total_loss(model, lossfn, x:narrow(1, first, len), y:narrow(1, first, len))
      sum = sum + l:item() * len
    end
  end)
  return sum / n
end

local function interrupted(err)
  return type(err) == "string" and err:find("interrupted!$") ~= nil
end

---------------------------------------------------------------- distributed (moongrad.mpi)
-- nn.fit{distributed = true}: every rank runs the same loop over the same shuffled batches (one
-- seed, rank 0's) and takes its share of each batch (m rows: m // size, the first m % size ranks
-- one more). Its gradients and loss are weighted by share / m * size, so that the ONE fused
-- allreduce of mpi.average_gradients (the loss travels in the same buffer) gives every rank the
-- whole batch's mean-loss gradient and loss. Parameters start as rank 0's; progress, and the
-- TensorBoard callback, on rank 0 only.

local function dist_setup(st, o)
  local mpi = require "moongrad.mpi"
  if not mpi.available() then
    local _, why = mpi.available()
    raisef("fit: distributed = true needs moongrad.mpi, which is not available (%s)", tostring(why))
  end
  st.mpi, st.rank, st.size = mpi, mpi.rank(), mpi.size()
  mpi.broadcast_parameters(st.params, 0)
  if st.rank ~= 0 then st.o.verbose = 0 end
end

-- This rank's rows of the batch (nil when it gets none) and their weight share / m * size.
local function dist_share(st, xb, yb)
  local m = xb:size(1)
  local base, extra = m // st.size, m % st.size
  local len = base + (st.rank < extra and 1 or 0)
  local first = st.rank * base + math.min(st.rank, extra) + 1
  if len == 0 then return nil, nil, 0 end
  return xb:narrow(1, first, len), yb:narrow(1, first, len), len / m * st.size
end

-- The whole batch's gradients and loss from this rank's (grads nil when it had no rows).
local function dist_reduce(st, grads, loss, w)
  local packed, n = {}, #st.params
  for i = 1, n do
    local g = grads and grads[i]
    if grads == nil then g = mg.zeros(st.params[i]:shape(), { dtype = st.params[i].dtype })
    elseif g ~= nil and w ~= 1 then g = g * w end
    packed[i] = g
  end
  local dt = st.params[1] and st.params[1].dtype or "float32"
  packed[n + 1] = mg.tensor({ (loss or 0) * w }, { dtype = dt })
  local avg = st.mpi.average_gradients(packed)
  local total = avg[n + 1]:item()
  avg[n + 1] = nil
  return avg, total
end

-- One epoch: returns the batch losses' mean weighted by batch size (Keras's loss tracker).
local function run_epoch(st, epoch)
  local model, o, cbs, params, opt = st.model, st.o, st.cbs, st.params, st.opt
  local idx = permutation(st.n, o.shuffle, st.rand)
  local nb, sum, count = st.nb, 0, 0
  for b = 1, nb do
    local first, last = (b - 1) * o.batch_size + 1, math.min(b * o.batch_size, st.n)
    local logs = { size = last - first + 1, epoch = epoch }
    call(cbs, "on_batch_begin", b, logs)
    local xb, yb = rows(st.x, idx, first, last), rows(st.y, idx, first, last)
    local w = 1
    if st.mpi then xb, yb, w = dist_share(st, xb, yb) end
    local tape = mg.GradientTape { persistent = o.persistent_tape }
    local loss, pred, grads
    if xb then
      loss, pred = tape:record(total_loss, model, st.lossfn, xb, yb, st.call)
      grads = tape:gradient(loss, params)
    end
    local value = loss and loss:item()
    if st.mpi then grads, value = dist_reduce(st, grads, value, w) end
    logs.loss, logs.loss_tensor, logs.pred, logs.x, logs.y = value, loss, pred, xb, yb
    logs.tape, logs.grads, logs.params = tape, grads, params
    call(cbs, "on_backward", b, logs)               -- before the step: the tape still answers
    opt:step(grads)
    sum, count = sum + logs.loss * (last - first + 1), count + last - first + 1
    call(cbs, "on_batch_end", b, logs)
    if o.verbose > 0 and (b < nb) then progress(epoch, o.epochs, b, nb, sum / count) end
    if logs.stop_training then st.stop = true return sum / count end
  end
  return sum / count
end

-- fit.fit(model, x, y, opts): see docs/training.md.
function fit.fit(model, x, y, opts)
  local o = check_opts("fit", opts, OPTS)
  if type(model) ~= "table" and type(model) ~= "userdata" then
    raisef("fit: model must be a layer (callable, with parameters()), got %s", describe(model))
  end
  if type(model.parameters) ~= "function" then raisef("fit: model has no parameters() method") end
  check_data("x", x)
  local n = x:size(1)
  check_data("y", y, n)
  local st = { model = model, x = x, y = y, n = n, o = {
    epochs = check_int("epochs", o.epochs, 1, 1),
    batch_size = check_int("batch_size", o.batch_size, 32, 1),
    shuffle = o.shuffle ~= false, verbose = check_int("verbose", o.verbose, 1, 0),
    persistent_tape = o.persistent_tape and true or false } }
  local nn = mg.nn
  st.lossfn = check_loss(nn, o.loss)
  st.call = training_call()
  build_model(model, x)
  st.opt = check_optimizer(o.optimizer, model:parameters(), model)
  if type(model) == "table" then model.optimizer = st.opt end   -- Keras's model.optimizer
  st.initial_epoch = check_int("initial_epoch", o.initial_epoch, 0, 0)
  st.checkpoint = check_checkpoint(o.checkpoint)
  st.params = st.opt.params or model:parameters()   -- the gradients are taken for what it updates
  st.cbs = check_callbacks(o.callbacks)
  if o.distributed then dist_setup(st, o) end
  if o.tensorboard ~= nil and not (st.mpi and st.rank ~= 0) then             -- Keras's TensorBoard callback: logdir/train, /validation
    if type(o.tensorboard) ~= "string" then
      raisef("fit: tensorboard must be a directory name, got %s", describe(o.tensorboard))
    end
    local cbs = {}
    for i, cb in ipairs(st.cbs) do cbs[i] = cb end      -- not the caller's array
    cbs[#cbs + 1] = mg.summary.callback(o.tensorboard, { histogram_freq = o.histogram_freq })
    st.cbs = cbs
  elseif o.histogram_freq ~= nil and o.tensorboard == nil then
    raisef("fit: histogram_freq needs the tensorboard option")
  end
  for _, cb in ipairs(st.cbs) do
    if cb.on_backward then st.o.persistent_tape = true end   -- so it can ask the tape more
  end
  st.nb = (n + st.o.batch_size - 1) // st.o.batch_size
  local vx, vy
  if o.validation_data ~= nil then
    if type(o.validation_data) ~= "table" or is_tensor(o.validation_data) then
      raisef("fit: validation_data must be {x_val, y_val}, got %s", describe(o.validation_data))
    end
    vx = check_data("validation_data[1]", o.validation_data[1])
    vy = check_data("validation_data[2]", o.validation_data[2], vx:size(1))
  end
  local seed = o.seed
  if seed == nil then seed = math.floor(mg.rand(1):item() * 2 ^ 31) end
  if type(seed) ~= "number" or seed ~= math.floor(seed) then raisef("fit: seed must be an integer, got %s", tostring(seed)) end
  if st.mpi then                           -- one shuffle for all ranks: rank 0's seed
    seed = math.tointeger(st.mpi.broadcast(mg.tensor({ seed }, { dtype = "float64" }), 0):item())
  end
  st.rand = generator(seed)
  for _ = 1, math.min(st.initial_epoch, st.o.epochs) do   -- the orders of the epochs before
    permutation(n, st.o.shuffle, st.rand)
  end

  local history = { loss = {}, epochs = 0, epoch = {}, optimizer = st.opt }
  if vx then history.val_loss = {} end
  call(st.cbs, "on_train_begin", { history = history })
  local ok, err = pcall(function()
    for epoch = st.initial_epoch + 1, st.o.epochs do
      call(st.cbs, "on_epoch_begin", epoch, { history = history })
      local loss = run_epoch(st, epoch)
      local val = vx and evaluate(model, st.lossfn, vx, vy, st.o.batch_size) or nil
      local k = history.epochs + 1
      history.loss[k], history.epoch[k], history.epochs = loss, epoch, k
      if vx then history.val_loss[k] = val end
      if st.o.verbose > 0 then progress(epoch, st.o.epochs, st.nb, st.nb, loss, val, true) end
      if st.checkpoint and not (st.mpi and st.rank ~= 0) then
        local path = st.checkpoint:gsub("{epoch}", string.format("%d", epoch))
        mg.nn.save(model, path, { optimizer = st.opt })
      end
      local logs = { loss = loss, val_loss = val, history = history, model = model, optimizer = st.opt }
      call(st.cbs, "on_epoch_end", epoch, logs)
      if st.stop or logs.stop_training then break end
    end
  end)
  if not ok then
    if not interrupted(err) then error(err, 0) end
    if st.o.verbose > 0 and isatty() then io.write("\n") end
    history.interrupted = true
  end
  call(st.cbs, "on_train_end", { history = history })
  return history
end

---------------------------------------------------------------- publishing

checks.publish(fit)   -- errors point at the user's line (checks.api)

return fit
