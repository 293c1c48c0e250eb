-- char_lstm.lua - one training step of scripts/char_lstm.lua's model (moongrad side; the
-- PyTorch side is char_lstm.py, which checks its loss and gradients against the ones saved
-- here). ids (32, 50) of a 76-character vocabulary -> one-hot -> LSTM(units) -> dropout ->
-- LSTM(units) -> dropout -> Dense(76) on every step -> sparse categorical cross-entropy
-- from logits -> tape:gradient -> RMSprop with global_clipnorm 5. float32.
-- For each size, DIR receives the ids, targets, initial weights, and the loss and gradients
-- of one step without dropout (what the PyTorch side checks); the timed steps use dropout 0.2.
-- Usage: LUA_CPATH='build/lua/?.so' lua5.4 bench/char_lstm.lua DIR [units ...]
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local B = require "benchlib"
local mg = B.moongrad()
local nn, optim = mg.nn, mg.optim

local BENCH, BATCH, SEQ, V, DROPOUT = "char_lstm", 32, 50, 76, 0.2
local USAGE = "usage: lua5.4 bench/char_lstm.lua DIR [units ...]  (default units 128 512)"
local dir, sizes = B.args("char_lstm.lua", USAGE, "units", "a positive integer", function(a)
  local u = math.tointeger(tonumber(a))
  if u and u >= 1 then return u end
end, { 128, 512 })

B.blas_meta(mg, BENCH)
local classes = mg.arange(1, V + 1)

local function model(units)
  local l1 = nn.RNN(nn.LSTMCell(V, units, { name = "lstm_1" }), { return_sequences = true })
  local l2 = nn.RNN(nn.LSTMCell(units, units, { name = "lstm_2" }), { return_sequences = true })
  local head = nn.Dense(units, V, { name = "head" })
  local params = {}
  for _, l in ipairs { l1, l2, head } do
    for _, p in ipairs(l:parameters()) do params[#params + 1] = p end
  end
  local m = { params = params, opt = optim.RMSprop(params, { lr = 2e-3, global_clipnorm = 5 }) }
  local function dropout(x, rate)
    if rate == 0 then return x end
    return x * (mg.gt(mg.rand(x:shape()), rate) / (1 - rate))
  end
  function m.loss_and_grads(ids, y, rate)
    local tape = mg.GradientTape()
    local h = l1(mg.eq(ids:unsqueeze(-1), classes))
    h = l2(dropout(h, rate))
    local loss = nn.sparse_categorical_crossentropy(head(dropout(h, rate)), y, { from_logits = true })
    tape:stop()
    return loss, tape:gradient(loss, params)
  end
  function m.step(ids, y, rate)
    local loss, grads = m.loss_and_grads(ids, y, rate)
    m.opt:step(grads)
    return loss
  end
  return m
end

for _, units in ipairs(sizes) do
  mg.manual_seed(units)
  local m = model(units)
  local ids = (mg.rand(BATCH, SEQ) * V + 0.5):clamp(1, V)
  ids = mg.tensor((function()
    local t = ids:totable()
    for b = 1, BATCH do for s = 1, SEQ do t[b][s] = math.floor(t[b][s]) end end
    return t
  end)())
  local y = mg.tensor((function()
    local t = ids:totable()
    for b = 1, BATCH do for s = 1, SEQ do t[b][s] = t[b][s] % V + 1 end end
    return t
  end)())
  local prefix = string.format("%s/%d_", dir, units)
  mg.save(ids - 1, prefix .. "ids.npy"); mg.save(y - 1, prefix .. "y.npy")      -- 0-based for PyTorch
  for _, p in ipairs(m.params) do mg.save(p, prefix .. p.name:gsub("/", "_") .. ".npy") end
  local loss, g = m.loss_and_grads(ids, y, 0)
  mg.save(loss, prefix .. "loss.npy")
  for i, p in ipairs(m.params) do mg.save(g[i], prefix .. "grad_" .. p.name:gsub("/", "_") .. ".npy") end
  local r = B.measure(function() return m.step(ids, y, DROPOUT) end, { reps = 5, min_time = 0.2 })
  B.result(BENCH, tostring(units), "moongrad", r)
  B.log("moongrad  units %-4d %9.3f ms CPU, %9.3f ms wall", units, r.cpu * 1e3, r.wall * 1e3)
end
