-- lstm.lua - one training step of an LSTM regressor (moongrad side; the PyTorch side is
-- lstm.py, which checks its loss and gradients against the ones saved here).
-- x (16, 100, 8) -> nn.RNN(nn.LSTMCell(8, units), {return_sequences=true}) -> nn.Dense(units, 1)
-- on every step -> nn.mse against y (16, 100, 1); tape:gradient; mg.optim.Adam step. float32.
--   moongrad           the step above (PyTorch: fused nn.LSTM)
--   moongrad + dL/dh_t the same, with rnn:trace, also taking the gradient with respect to
--                      every h_t in the same sweep (PyTorch: an nn.LSTMCell loop with
--                      retain_grad() on every h_t)
-- For each size, DIR receives x, y, the initial weights, the loss, the first step's
-- gradients and dL/dh_t (stacked to (16, 100, units)) as .npy files.
-- Beside each time: moongrad's achieved GFLOP/s (the step's GEMM FLOPs, see 'flops', over
-- the CPU time; the wall clock with more than one thread), and after the timing, the process's peak RSS (VmHWM) once RSS_STEPS training
-- steps in all have run at that size (meta lines 'gflops UNITS IMPL', 'peak_rss_mib UNITS').
-- Usage: LUA_CPATH='build/lua/?.so' lua5.4 bench/lstm.lua DIR [units ...]
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local B = require "benchlib"
local mg = B.moongrad()
local ok, nn = pcall(function() return mg.nn end)
if not ok or not nn then error("lstm.lua: mg.nn is not available in this build: " .. tostring(nn), 0) end

local BENCH, BATCH, STEPS, NIN = "lstm", 16, 100, 8
local USAGE = "usage: lua5.4 bench/lstm.lua DIR [units ...]  (default units 6 32 256)"
local dir = arg[1]
if not dir then error("lstm.lua: no output directory given; " .. USAGE, 0) end
if not os.rename(dir, dir) then error("lstm.lua: directory '" .. dir .. "' does not exist", 0) end
local sizes = {}
for i = 2, #arg do
  local u = math.tointeger(tonumber(arg[i]))
  if not u or u < 1 then error("lstm.lua: bad units '" .. arg[i] .. "', expected a positive integer; " .. USAGE, 0) end
  sizes[#sizes + 1] = u
end
if #sizes == 0 then sizes = { 6, 32, 256 } end

B.blas_meta(mg, BENCH)

local RSS_STEPS = 200

-- FLOPs of one training step's GEMMs: forward x W + h U (2 B (in + u) 4u per step), and
-- backward the same three times over (dx, dh; dW, dU), over T steps; the head's are negligible.
local function flops(units)
  return 3 * 2 * BATCH * 4 * units * (NIN + units) * STEPS
end

-- The model, its optimizer and the two step functions for 'units'.
local function model(units)
  local rnn = nn.RNN(nn.LSTMCell(NIN, units), { return_sequences = true })
  local head = nn.Dense(units, 1)
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

local function save_case(prefix, m, x, y)
  mg.save(x, prefix .. "x.npy"); mg.save(y, prefix .. "y.npy")
  for _, p in ipairs(m.params) do mg.save(p, prefix .. p.name:gsub("/", "_") .. ".npy") end
  local loss, g = m.loss_and_grads(x, y, true)
  mg.save(loss, prefix .. "loss.npy")
  for i, p in ipairs(m.params) do mg.save(g[i], prefix .. "grad_" .. p.name:gsub("/", "_") .. ".npy") end
  mg.save(mg.stack(table.move(g, #m.params + 1, #g, 1, {}), 2), prefix .. "dL_dh.npy")
  -- the plain step's gradients must be the per-step run's first ones
  local _, g2 = m.loss_and_grads(x, y, false)
  for i = 1, #m.params do
    local d = (g2[i] - g[i]):abs():max():item()
    if d > 1e-6 * (1 + g[i]:abs():max():item()) then
      error(string.format("lstm.lua: units %d: gradients of %s differ between rnn() and rnn:trace() by %g",
                          m.rnn.cell.units, m.params[i].name, d), 0)
    end
  end
end

for _, units in ipairs(sizes) do
  mg.manual_seed(units)
  local m = model(units)
  local x = mg.randn(BATCH, STEPS, NIN)
  local y = mg.randn(BATCH, STEPS, 1) * 0.5
  save_case(string.format("%s/%d_", dir, units), m, x, y)
  for _, c in ipairs { { "moongrad", false }, { "moongrad + dL/dh_t", true } } do
    local r = B.measure(function() return m.step(x, y, c[2]) end, { reps = 7, min_time = 0.2 })
    B.result(BENCH, tostring(units), c[1], r)
    -- per the clock the report shows: CPU time on one thread, wall clock on more (CPU time
    -- adds up the threads)
    local gf = flops(units) / (B.threads() == 1 and r.cpu or r.wall) / 1e9
    B.meta(BENCH, string.format("gflops %d %s", units, c[1]), string.format("%.1f", gf))
    B.log("moongrad  units %-4d %-20s %9.3f ms CPU, %9.3f ms wall, %6.1f GFLOP/s", units,
          c[1], r.cpu * 1e3, r.wall * 1e3, gf)
  end
  while m.steps < RSS_STEPS do m.step(x, y, false) end
  local rss = B.peak_rss_mib()
  if rss then
    B.meta(BENCH, string.format("peak_rss_mib %d", units), string.format("%.1f", rss))
    B.log("moongrad  units %-4d peak RSS after %d steps: %.1f MiB", units, m.steps, rss)
  end
end
