-- moongrad.summary (mg.summary): TensorBoard event files. The writer and the reader are C
-- (runtime/summary.c, bound as mg._summary); here are the checked constructor and the
-- methods composed from the C ones: 'scalars' (a table of scalars at one step) and
-- 'parameters' (a histogram of every weight and gradient), what a training loop calls.
local mg = require "moongrad"

local ipairs, pairs, pcall, table, tostring, type = ipairs, pairs, pcall, table, tostring, type
local math_type = math.type
local debug, math = debug, math
local _ENV = nil

local P = mg._summary
local ck = mg._checks(debug.getinfo(1, "S").source)
local raise, raisef, describe, check_opts = ck.raise, ck.raisef, ck.describe, ck.check_opts

-- f(...) with its error raised at the user's call (a C function called through pcall adds
-- no position of its own)
local function call(f, ...)
  local ok, r = pcall(f, ...)
  if not ok then raise(r) end
  return r
end

local summary = {}

-- summary.writer(logdir [, {flush_secs = 120, filename_suffix = ""}]) -> a new writer
local WRITER_OPTS = { flush_secs = true, filename_suffix = true }
function summary.writer(logdir, opts)
  if type(logdir) ~= "string" or logdir == "" then
    raisef("summary.writer: expected a directory name, got %s", describe(logdir))
  end
  opts = check_opts("summary.writer", opts, WRITER_OPTS)
  local fs, suffix = opts.flush_secs or 120, opts.filename_suffix or ""
  if type(fs) ~= "number" or fs < 0 or fs ~= fs or fs == math.huge then
    raisef("summary.writer: flush_secs must be a finite number >= 0, got %s", tostring(fs))
  end
  if type(suffix) ~= "string" then
    raisef("summary.writer: filename_suffix must be a string, got %s", describe(suffix))
  end
  return call(P.open, logdir, suffix, fs)
end

-- summary.read(path) -> array of events { offset, wall_time, step, file_version?, values }
function summary.read(path)
  if type(path) ~= "string" then raisef("summary.read: expected a file name, got %s", describe(path)) end
  return call(P.read, path)
end

local M = P.methods

-- w:scalars(values, step [, prefix]): w:scalar(prefix .. k, v, step) for every pair of
-- 'values' (names sorted, so the file does not depend on table order).
function M.scalars(w, values, step, prefix)
  if type(values) ~= "table" then raisef("summary.scalars: expected a table of numbers, got %s", describe(values)) end
  prefix = prefix or ""
  local keys = {}
  for k, v in pairs(values) do
    if type(k) ~= "string" or type(v) ~= "number" then
      raisef("summary.scalars: expected string keys and number values, got [%s] = %s", tostring(k), describe(v))
    end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  for _, k in ipairs(keys) do w:scalar(prefix .. k, values[k], step) end
end

-- w:parameters(params, step [, {grads=, prefix="", bins=}]): the histogram of every
-- Variable of 'params' as '<prefix>weights/<name>' and, with 'grads' (the gradients in the
-- order of 'params', as tape:gradient returns them), of each gradient as
-- '<prefix>gradients/<name>'. A parameter without a name is 'param<i>'.
local PARAM_OPTS = { grads = true, prefix = true, bins = true }
function M.parameters(w, params, step, opts)
  opts = check_opts("summary.parameters", opts, PARAM_OPTS)
  if type(params) ~= "table" then raisef("summary.parameters: expected an array of Variables, got %s", describe(params)) end
  local grads, prefix = opts.grads, opts.prefix or ""
  if grads ~= nil and (type(grads) ~= "table" or #grads ~= #params) then
    raisef("summary.parameters: grads must be an array of %d tensors (one per parameter), got %s",
      #params, type(grads) == "table" and (#grads .. " entries") or describe(grads))
  end
  local hopts = opts.bins and { bins = opts.bins } or nil
  for i, p in ipairs(params) do
    if not mg.is_tensor(p) then raisef("summary.parameters: parameter %d is %s, not a tensor", i, describe(p)) end
    local name = p:is_variable() and p.name or ""
    if name == "" then name = "param" .. i end
    w:histogram(prefix .. "weights/" .. name, p, step, hopts)
    local g = grads and grads[i]
    if g ~= nil then
      if not mg.is_tensor(g) then raisef("summary.parameters: gradient %d is %s, not a tensor", i, describe(g)) end
      w:histogram(prefix .. "gradients/" .. name, g, step, hopts)
    end
  end
end

-- summary.callback(logdir [, {update_freq = 1, histogram_freq = 0, bins =, flush_secs =}]):
-- a table of training-loop callbacks, called as methods (nn.fit's protocol:
-- cb:on_train_begin(logs), cb:on_batch_end(b, logs) with logs.loss/params/grads,
-- cb:on_epoch_end(epoch, logs), cb:on_train_end(logs)) that logs as Keras's TensorBoard callback lays logs out: run
-- 'logdir/train' gets 'batch_loss' every 'update_freq' steps (0: never), 'epoch_<name>' for
-- every number of the epoch's logs, and every 'histogram_freq' steps (0: never) the weights
-- and gradients (w:parameters); run 'logdir/validation' gets 'epoch_<name>' for every
-- 'val_<name>'. Steps count the batches of the whole run from 1; epochs are fit's.
-- The writers open at on_train_begin and close at on_train_end.
local CALLBACK_OPTS = { update_freq = true, histogram_freq = true, bins = true, flush_secs = true }
local function count_opt(fn, o, k, default)
  local v = o[k]
  if v == nil then return default end
  if math_type(v) ~= "integer" or v < 0 then raisef("%s: %s must be an integer >= 0, got %s", fn, k, tostring(v)) end
  return v
end

function summary.callback(logdir, opts)
  local fn = "summary.callback"
  if type(logdir) ~= "string" or logdir == "" then raisef("%s: expected a directory name, got %s", fn, describe(logdir)) end
  opts = check_opts(fn, opts, CALLBACK_OPTS)
  local update, hfreq = count_opt(fn, opts, "update_freq", 1), count_opt(fn, opts, "histogram_freq", 0)
  local wopts = { flush_secs = opts.flush_secs }
  local bins = opts.bins
  local cb, train, val, step = {}, nil, nil, 0
  local function close()
    if train then train:close() end
    if val then val:close() end
    train, val = nil, nil
  end
  function cb:on_train_begin()
    close()
    train, step = summary.writer(logdir .. "/train", wopts), 0
  end
  function cb:on_batch_end(_, logs)
    if not train then return end
    step = step + 1
    if update > 0 and step % update == 0 and type(logs.loss) == "number" then
      train:scalar("batch_loss", logs.loss, step)
    end
    if hfreq > 0 and step % hfreq == 0 and logs.params then
      train:parameters(logs.params, step, { grads = logs.grads, bins = bins })
    end
  end
  function cb:on_epoch_end(epoch, logs)
    if not train then return end
    local keys = {}
    for k, v in pairs(logs) do
      if type(k) == "string" and type(v) == "number" and k ~= "epoch" and k ~= "size" then keys[#keys + 1] = k end
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local vname = k:match("^val_(.+)$")
      if vname then
        val = val or summary.writer(logdir .. "/validation", wopts)
        val:scalar("epoch_" .. vname, logs[k], epoch)
      else
        train:scalar("epoch_" .. k, logs[k], epoch)
      end
    end
    train:flush()
    if val then val:flush() end
  end
  function cb:on_train_end() close() end
  function cb:writers() return train, val end         -- for a loop that logs more itself
  return cb
end

-- Errors at the user's line (core.lua's one mechanism); the writer's C methods raise there
-- themselves.
ck.publish(summary)
M.scalars, M.parameters = ck.api(nil, M.scalars), ck.api(nil, M.parameters)

return summary
