-- char_lstm.lua - one training step of scripts/char_lstm.lua's model (moongrad side; the
-- PyTorch side is char_lstm.py, which checks its loss and gradients against the ones saved
-- here). ids (32, 50) of a 76-character vocabulary -> nn.Sequential { Embedding(76, 64),
-- LSTM(units, return_sequences), Dropout, LSTM(units, return_sequences), Dropout, Dense(76) }
-- (the Dense on every step) -> sparse categorical cross-entropy from logits -> tape:gradient
-- -> RMSprop with global_clipnorm 5. float32.
-- For each size, DIR receives the ids, targets, initial weights and the float64 reference of
-- one step without dropout (ref_*, scale_*: what every side, this one included, is checked
-- against); the timed steps use dropout 0.2.
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

-- The float64 reference of the check's step (no dropout) that every side is checked against
-- (benchlib's "Checks against a float64 reference"): the same weights and data in float64,
-- the embedding as a one-hot product, both layers written out in ops (benchlib.rnn_f64), the
-- head and the cross-entropy from log_softmax. Per result (loss, grad_<param>) {ref, scale,
-- drop}: the float64 value, the scale of its last sum and the term of step SEQ/2.
local function reference(m, ids, y)
  local P = {}
  for _, p in ipairs(m.params) do P[p.name:gsub("/", "_")] = p:to("float64") end
  local t0 = SEQ // 2
  local function onehot(v)                                     -- (BATCH, SEQ) ids -> (BATCH, SEQ, V)
    return mg.eq(v:unsqueeze(3), mg.arange(1, V + 1):reshape(1, 1, V)):to("float64")
  end
  local oh, ohy = onehot(ids), onehot(y)
  local tape = mg.GradientTape()
  local e = mg.matmul(oh, P.embedding_embeddings)              -- (BATCH, SEQ, EMBED)
  local xs = {}
  for t = 1, SEQ do xs[t] = e:select(2, t) end
  local hs1, pre1 = B.rnn_f64(mg, "lstm", xs, P.lstm_1_kernel, P.lstm_1_recurrent_kernel, P.lstm_1_bias)
  local hs2, pre2 = B.rnn_f64(mg, "lstm", hs1, P.lstm_2_kernel, P.lstm_2_recurrent_kernel, P.lstm_2_bias)
  local logits = {}
  for t = 1, SEQ do logits[t] = mg.matmul(hs2[t], P.head_kernel) + P.head_bias end
  local nll = -(mg.stack(logits, 2):log_softmax(3) * ohy):sum(3)   -- (BATCH, SEQ), all >= 0
  local loss = nll:mean()
  tape:stop()
  local sources = { P.embedding_embeddings, P.lstm_1_kernel, P.lstm_1_recurrent_kernel, P.lstm_1_bias,
                    P.lstm_2_kernel, P.lstm_2_recurrent_kernel, P.lstm_2_bias, P.head_kernel, P.head_bias }
  local names = { "embedding_embeddings", "lstm_1_kernel", "lstm_1_recurrent_kernel", "lstm_1_bias",
                  "lstm_2_kernel", "lstm_2_recurrent_kernel", "lstm_2_bias", "head_kernel", "head_bias" }
  local d1_of, d2_of = B.rnn_sources("lstm", pre1, sources), B.rnn_sources("lstm", pre2, sources)
  local first = #sources + 1
  for t = 1, SEQ do sources[#sources + 1] = xs[t] end
  for t = 1, SEQ do sources[#sources + 1] = logits[t] end
  local g = tape:gradient(loss, sources)
  local refs = { loss = { ref = loss, scale = loss:item(), drop = nll:select(2, t0):sum() / nll:numel() } }
  local emb, hk, hb = {}, {}, {}
  for t = 1, SEQ do
    emb[t] = { oh:select(2, t), g[first + t - 1] }
    local dl = g[first + SEQ + t - 1]
    hk[t], hb[t] = { hs2[t], dl }, { false, dl }
  end
  local terms = { embedding_embeddings = { B.sum_terms(mg, emb, t0) }, head_kernel = { B.sum_terms(mg, hk, t0) },
                  head_bias = { B.sum_terms(mg, hb, t0) } }
  for layer, r in pairs { lstm_1 = B.rnn_terms(mg, "lstm", xs, hs1, d1_of(g), t0),
                          lstm_2 = B.rnn_terms(mg, "lstm", hs1, hs2, d2_of(g), t0) } do
    for what, v in pairs(r) do terms[layer .. "_" .. what] = v end
  end
  for i, name in ipairs(names) do
    refs["grad_" .. name] = { ref = g[i], scale = terms[name][1], drop = terms[name][2] }
  end
  return refs
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
  local refs = reference(m, ids, y)
  B.save_reference(mg, prefix, refs)
  local got = { loss = loss }
  for i, p in ipairs(m.params) do got["grad_" .. p.name:gsub("/", "_")] = g[i] end
  local worst, least = B.check_reference(BENCH, tostring(units), "moongrad", got, refs)
  B.log("moongrad  units %-4d error vs the float64 reference at most %.3g of its scale (bound %g; " ..
        "a dropped step: at least %.3g)", units, worst, B.REF_TOL, least)
  local r = B.measure(function() return m.step(ids, y) end, { reps = 5, min_time = 0.2 })
  B.result(BENCH, tostring(units), "moongrad", r)
  B.meta(BENCH, "flops " .. units, flops(units))
  B.log("moongrad  units %-4d %9.3f ms CPU, %9.3f ms wall", units, r.cpu * 1e3, r.wall * 1e3)
end
