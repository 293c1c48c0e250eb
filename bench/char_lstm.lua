-- char_lstm.lua - one training step of scripts/char_lstm.lua's model (moongrad side; the
-- PyTorch side is char_lstm.py, which checks its loss and gradients against the ones saved
-- here). ids (32, 50) of a 76-character vocabulary -> nn.Sequential { Embedding(76, 64),
-- LSTM(units, return_sequences), Dropout, LSTM(units, return_sequences), Dropout, Dense(76) }
-- (the Dense on every step) -> sparse categorical cross-entropy from logits -> tape:gradient
-- -> RMSprop with global_clipnorm 5. float32.
-- For each size, DIR receives the ids, targets, initial weights, and the loss and gradients
-- of one step without dropout (what the PyTorch side checks); the timed steps use dropout 0.2.
-- Usage: LUA_CPATH='build/lua/?.so' lua5.4 bench/char_lstm.lua DIR [units ...]
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local B = require "benchlib"
local mg = B.moongrad()
local nn, optim = mg.nn, mg.optim

local BENCH, BATCH, SEQ, V, EMBED, DROPOUT = "char_lstm", 32, 50, 76, 64, 0.2
local USAGE = "usage: lua5.4 bench/char_lstm.lua DIR [units ...]  (default units 128 512)"
local dir, sizes = B.args("char_lstm.lua", USAGE, "units", "a positive integer", function(a)
  local u = math.tointeger(tonumber(a))
  if u and u >= 1 then return u end
end, { 128, 512 })

B.blas_meta(mg, BENCH)

-- FLOPs of one training step's GEMMs: per step and layer x W + h U (2 B (in + u) 4u), and the
-- head's h V (2 B u V); backward twice that (the input and the weight gradients), over SEQ
-- steps. The floor bench/report.lua gives the case (meta 'flops UNITS').
local function flops(units)
  local per_step = 2 * BATCH * (EMBED + units) * 4 * units + 2 * BATCH * (2 * units) * 4 * units
                   + 2 * BATCH * units * V
  return 3 * per_step * SEQ
end

local function model(units)
  local net = nn.Sequential {
    nn.Embedding(V, EMBED, { name = "embedding" }),
    nn.LSTM(units, { return_sequences = true, name = "lstm_1", input_size = EMBED }), nn.Dropout(DROPOUT),
    nn.LSTM(units, { return_sequences = true, name = "lstm_2", input_size = units }), nn.Dropout(DROPOUT),
    nn.Dense(units, V, { name = "head" }),
  }
  local params = net:parameters()
  local m = { params = params, opt = optim.RMSprop(params, { lr = 2e-3, global_clipnorm = 5 }) }
  function m.loss_and_grads(ids, y, training)
    local tape = mg.GradientTape()
    local loss = nn.sparse_categorical_crossentropy(net(ids, { training = training }), y, { from_logits = true })
    tape:stop()
    return loss, tape:gradient(loss, params)
  end
  function m.step(ids, y)
    local loss, grads = m.loss_and_grads(ids, y, true)
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
  local loss, g = m.loss_and_grads(ids, y, false)
  mg.save(loss, prefix .. "loss.npy")
  for i, p in ipairs(m.params) do mg.save(g[i], prefix .. "grad_" .. p.name:gsub("/", "_") .. ".npy") end
  local r = B.measure(function() return m.step(ids, y) end, { reps = 5, min_time = 0.2 })
  B.result(BENCH, tostring(units), "moongrad", r)
  B.meta(BENCH, "flops " .. units, flops(units))
  B.log("moongrad  units %-4d %9.3f ms CPU, %9.3f ms wall", units, r.cpu * 1e3, r.wall * 1e3)
end
