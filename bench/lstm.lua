-- lstm.lua - one training step of an LSTM (or GRU) regressor (moongrad side; the PyTorch side
-- is lstm.py, which checks its loss and gradients against the ones saved here).
-- x (B, 100, 8) -> nn.RNN(nn.LSTMCell(8, units), {return_sequences=true}) -> nn.Dense(units, 1)
-- on every step -> nn.mse against y (B, 100, 1); tape:gradient; mg.optim.Adam step. float32.
-- A case is 'units' (an LSTM, batch 16) or 'kind:units:batch' (kind lstm or gru; the GRU is
-- nn.GRUCell with reset_after = true, PyTorch's GRU): 256, lstm:512:64, gru:256:16.
--   moongrad           the step above: nn.RNN runs the whole layer as one op (mg.lstm_seq /
--                      mg.gru_seq; PyTorch: fused nn.LSTM / nn.GRU)
--   moongrad + dL/dh_t the same, with rnn:trace (one op per step), also taking the gradient
--                      with respect to every h_t in the same sweep (PyTorch: an nn.LSTMCell /
--                      nn.GRUCell loop with retain_grad() on every h_t)
-- For each case, DIR receives x, y, the initial weights and the float64 reference of the
-- first step (its loss, gradients and dL/dh_t stacked to (B, 100, units), each with its
-- scale: ref_*, scale_*) as .npy files named '<case key>_...'; moongrad's own results are
-- checked against it here, the peers' by their sides.
-- Beside each time: moongrad's achieved GFLOP/s (the step's GEMM FLOPs, see 'flops', over
-- the CPU time; the wall clock with more than one thread), and after the timing (case 256
-- only), the peak RSS (VmHWM) of RSS_STEPS plain training steps (no rnn:trace) in a process
-- that runs nothing else: this script again with MG_BENCH_RSS=1 (benchlib.peak_rss_in_child)
-- (meta lines 'gflops CASE IMPL', 'peak_rss_mib CASE').
-- Usage: LUA_CPATH='build/lua/?.so' lua5.4 bench/lstm.lua DIR [case ...]  (default 6 32 256)
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local B = require "benchlib"
local mg = B.moongrad()
local ok, nn = pcall(function() return mg.nn end)
if not ok or not nn then error("lstm.lua: mg.nn is not available in this build: " .. tostring(nn), 0) end

local BENCH, STEPS, NIN = "lstm", 100, 8
local USAGE = "usage: lua5.4 bench/lstm.lua DIR [case ...]  (a case: units, or kind:units:batch with kind "
  .. "lstm or gru; default 6 32 256)"

-- A case from its argument: {kind=, units=, batch=, label= (as the report shows it), key= (file prefix)}.
local function parse_case(a)
  local u = math.tointeger(tonumber(a))
  if u and u >= 1 then return { kind = "lstm", units = u, batch = 16, label = tostring(u), key = tostring(u) } end
  local kind, us, bs = a:match("^(%a+):(%d+):(%d+)$")
  u, bs = math.tointeger(tonumber(us)), math.tointeger(tonumber(bs))
  if (kind ~= "lstm" and kind ~= "gru") or not u or u < 1 or not bs or bs < 1 then return nil end
  return { kind = kind, units = u, batch = bs, label = a, key = kind .. "_" .. u .. "_" .. bs }
end
local dir, cases = B.args("lstm.lua", USAGE, "case", "units or kind:units:batch", parse_case,
                          { parse_case("6"), parse_case("32"), parse_case("256") })

local RSS_STEPS = 200
local RSS_CASE = "256"   -- the issue's model: the peak RSS is measured at this case only

-- FLOPs of one training step's GEMMs: forward x W + h U (2 B (in + u) G u per step, G gates:
-- 4 for the LSTM, 3 for the GRU), and backward the same twice over (dx, dh; dW, dU), over T
-- steps; the head's are negligible.
local function flops(c)
  return 3 * 2 * c.batch * (c.kind == "lstm" and 4 or 3) * c.units * (NIN + c.units) * STEPS
end

-- The model, its optimizer and the two step functions for case 'c'.
local function model(c)
  local cell = c.kind == "lstm" and nn.LSTMCell(NIN, c.units) or nn.GRUCell(NIN, c.units)
  local rnn = nn.RNN(cell, { return_sequences = true })
  local head = nn.Dense(c.units, 1)
  local params = rnn:parameters()
  for _, p in ipairs(head:parameters()) do params[#params + 1] = p end
  local m = { rnn = rnn, head = head, params = params, opt = mg.optim.Adam(params, { lr = 1e-3 }) }

  -- loss and gradients (parameters first, then dL/dh_t for t = 1..T when 'per_step')
  function m.loss_and_grads(x, y, per_step)
    local tape = mg.GradientTape()
    local loss, sources = nil, params
    if per_step then
      local tr = rnn:trace(x)
      loss = nn.mse(head(mg.stack(tr.outputs, 2)), y)
      sources = {}
      for i, p in ipairs(params) do sources[i] = p end
      for t = 1, #tr.h do sources[#sources + 1] = tr.h[t] end
    else
      loss = nn.mse(head(rnn(x)), y)
    end
    tape:stop()
    return loss, tape:gradient(loss, sources)
  end

  m.steps = 0
  function m.step(x, y, per_step)
    m.steps = m.steps + 1
    local loss, grads = m.loss_and_grads(x, y, per_step)
    if per_step then grads = table.move(grads, 1, #params, 1, {}) end
    m.opt:step(grads)
    return loss
  end
  return m
end

-- The float64 reference of the step every side is checked against (benchlib's "Checks
-- against a float64 reference"): the same weights and data in float64, the layer written out
-- in ops (benchlib.rnn_f64, not the fused kernels), the Dense head and the MSE; per result
-- (loss, grad_<param>, dL_dh) {ref, scale, drop}: the float64 value, the scale of its last sum
-- (the largest entry of the sum of its terms' magnitudes) and the term of step T/2 (the
-- self-test's dropped step).
local function reference(c, m, x, y)
  local P = {}
  for _, p in ipairs(m.params) do P[p.name:gsub("/", "_")] = p:to("float64") end
  local kind, t0 = c.kind, STEPS // 2
  local K, R, b = P[kind .. "_kernel"], P[kind .. "_recurrent_kernel"], P[kind .. "_bias"]
  local Wd, bd = P.dense_kernel, P.dense_bias
  local X, Y = x:to("float64"), y:to("float64")
  local xs = {}
  for t = 1, STEPS do xs[t] = X:select(2, t) end
  local tape = mg.GradientTape()
  local hs, pre = B.rnn_f64(mg, kind, xs, K, R, b)
  local H = mg.stack(hs, 2)                                   -- (B, T, u)
  local pred = mg.matmul(H, Wd) + bd                          -- (B, T, 1)
  local sq = (pred - Y) * (pred - Y)
  local loss = sq:mean()
  tape:stop()
  local sources = { K, R, b, Wd, bd, pred }
  local dpre_of = B.rnn_sources(kind, pre, sources)
  local first_h = #sources + 1
  for t = 1, STEPS do sources[#sources + 1] = hs[t] end
  local g = tape:gradient(loss, sources)
  local dpre, dpred = dpre_of(g), g[6]
  local refs = {}
  -- the loss: a mean of squares, terms all positive: its scale is itself
  refs.loss = { ref = loss, scale = loss:item(), drop = sq:select(2, t0):sum() / sq:numel() }
  local head_k, head_b = {}, {}
  for t = 1, STEPS do
    local d = dpred:select(2, t)                              -- (B, 1)
    head_k[t], head_b[t] = { hs[t], d }, { false, d }
  end
  refs.grad_dense_kernel = { ref = g[4] }
  refs.grad_dense_kernel.scale, refs.grad_dense_kernel.drop = B.sum_terms(mg, head_k, t0)
  refs.grad_dense_bias = { ref = g[5] }
  refs.grad_dense_bias.scale, refs.grad_dense_bias.drop = B.sum_terms(mg, head_b, t0)
  local terms = B.rnn_terms(mg, kind, xs, hs, dpre, t0)
  for i, what in ipairs { "kernel", "recurrent_kernel", "bias" } do
    refs["grad_" .. kind .. "_" .. what] = { ref = g[i], scale = terms[what][1], drop = terms[what][2] }
  end
  -- dL/dh_t = dz_(t+1) R^T + dpred_t Wd^T (LSTM); a GRU's adds dh_(t+1) * z_(t+1) and takes
  -- dm_h for dz. Its scale: the largest entry of the terms' magnitudes; the dropped step: the
  -- head's term at t0.
  local dh = table.move(g, first_h, first_h + STEPS - 1, 1, {})
  local aR, aW, S = R:abs():transpose(1, 2), Wd:abs():transpose(1, 2), 0
  for t = 1, STEPS do
    local s = mg.matmul(dpred:select(2, t):abs(), aW)
    if t < STEPS then
      local dz = kind == "lstm" and dpre[t + 1].z or dpre[t + 1].mh
      s = s + mg.matmul(dz:abs(), aR)
      if kind == "gru" then s = s + (dh[t + 1] * pre[t + 1].gate):abs() end
    end
    S = math.max(S, s:max():item())
  end
  local drop = {}
  for t = 1, STEPS do
    drop[t] = t == t0 and mg.matmul(dpred:select(2, t), Wd:transpose(1, 2)) or dh[t] * 0
  end
  refs.dL_dh = { ref = mg.stack(dh, 2), scale = S, drop = mg.stack(drop, 2) }
  return refs
end

local function save_case(prefix, m, x, y, c)
  mg.save(x, prefix .. "x.npy"); mg.save(y, prefix .. "y.npy")
  for _, p in ipairs(m.params) do mg.save(p, prefix .. p.name:gsub("/", "_") .. ".npy") end
  local loss, g = m.loss_and_grads(x, y, true)
  -- moongrad's float32 results against the float64 reference, which the peers read too
  local refs = reference(c, m, x, y)
  B.save_reference(mg, prefix, refs)
  local got = { loss = loss, dL_dh = mg.stack(table.move(g, #m.params + 1, #g, 1, {}), 2) }
  for i, p in ipairs(m.params) do got["grad_" .. p.name:gsub("/", "_")] = g[i] end
  local worst, least = B.check_reference(BENCH, m.label, "moongrad", got, refs)
  B.log("moongrad  %-12s error vs the float64 reference at most %.3g of its scale (bound %g; " ..
        "a dropped step: at least %.3g)", m.label, worst, B.REF_TOL, least)
  -- the plain step's gradients must be the per-step run's first ones
  local _, g2 = m.loss_and_grads(x, y, false)
  for i = 1, #m.params do
    local d = (g2[i] - g[i]):abs():max():item()
    if d > 1e-6 * (1 + g[i]:abs():max():item()) then
      error(string.format("lstm.lua: case %s: gradients of %s differ between rnn() and rnn:trace() by %g",
                          m.label, m.params[i].name, d), 0)
    end
  end
end

-- The model of case 'c' and its data, as every run makes them.
local function setup(c)
  mg.manual_seed(c.units)
  local m = model(c)
  m.label = c.label
  return m, mg.randn(c.batch, STEPS, NIN), mg.randn(c.batch, STEPS, 1) * 0.5
end

if B.rss_child() then                     -- the peak RSS run: the plain loop, nothing else
  local m, x, y = setup(cases[1])
  while m.steps < RSS_STEPS do m.step(x, y, false) end
  B.report_peak_rss()
  return
end

B.blas_meta(mg, BENCH)

for _, c in ipairs(cases) do
  local m, x, y = setup(c)
  save_case(string.format("%s/%s_", dir, c.key), m, x, y, c)
  B.meta(BENCH, "flops " .. c.label, flops(c))
  for _, impl in ipairs { { "moongrad", false }, { "moongrad + dL/dh_t", true } } do
    local r = B.measure(function() return m.step(x, y, impl[2]) end, { reps = 7, min_time = 0.2 })
    B.result(BENCH, c.label, impl[1], r)
    -- per the clock the report shows: CPU time on one thread, wall clock on more (CPU time
    -- adds up the threads)
    local gf = flops(c) / (B.threads() == 1 and r.cpu or r.wall) / 1e9
    B.meta(BENCH, string.format("gflops %s %s", c.label, impl[1]), string.format("%.1f", gf))
    B.log("moongrad  %-12s %-20s %9.3f ms CPU, %9.3f ms wall, %6.1f GFLOP/s", c.label,
          impl[1], r.cpu * 1e3, r.wall * 1e3, gf)
  end
  local rss = c.label == RSS_CASE and B.peak_rss_in_child({ dir, c.label })
  if rss then
    B.meta(BENCH, string.format("peak_rss_mib %s", c.label), string.format("%.1f", rss))
    B.log("moongrad  %-12s peak RSS of %d plain steps alone: %.1f MiB", c.label, RSS_STEPS, rss)
  end
end
