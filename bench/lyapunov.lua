-- lyapunov.lua - the top-k Lyapunov spectrum of a GRU (moongrad side; the PyTorch side is
-- lyapunov.py and the JAX side lyapunov_jax.py, which check their exponents against the ones
-- saved here). For each case N,k,T: a GRUCell(8, N) float32 (Keras layout, reset_after),
-- inputs x (B=16, T, 8), initial tangents Q0 (B, N, k) from a fixed seed are saved as .npy in
-- DIR with moongrad's exponents (B, k) (rnn:lyapunov, which for this cell takes the C path of
-- runtime/lyapunov.c: each step's Jacobian formed and applied to the k tangents, a blocked
-- Householder QR, log|diag R| accumulated; sorted descending).
-- Timed: the whole T-step run, rnn:lyapunov(x, {k = k, Q0 = Q0}): the run whose exponents are
-- saved, then the median of 3 more (meta 'runs CASE moongrad' 3), or that run alone when it
-- took more than benchlib.SINGLE_RUN_SECONDS (runs 1: the report marks it n=1).
-- Usage: LUA_CPATH='build/lua/?.so' lua5.4 bench/lyapunov.lua DIR [N,k,T ...]
--   (default cases 64,16,1000 64,64,1000 256,16,1000 256,256,1000: minutes in all)
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local B = require "benchlib"
local mg = B.moongrad()

local BENCH = "lyapunov"
local USAGE = "usage: lua5.4 bench/lyapunov.lua DIR [N,k,T ...]  (default 64,16,1000 64,64,1000 256,16,1000 256,256,1000)"
local BATCH, FEATURES = 16, 8
local dir, cases = B.args("lyapunov.lua", USAGE, "case", "N,k,T with 1 <= k <= N", function(a)
  local n, k, t = a:match("^(%d+),(%d+),(%d+)$")
  n, k, t = tonumber(n), tonumber(k), tonumber(t)
  if n and n >= 1 and k >= 1 and k <= n and t >= 1 then return { n, k, t } end
end, { { 64, 16, 1000 }, { 64, 64, 1000 }, { 256, 16, 1000 }, { 256, 256, 1000 } })

B.blas_meta(mg, BENCH)
B.meta(BENCH, "batch", BATCH)
B.meta(BENCH, "single_run_seconds", B.SINGLE_RUN_SECONDS)

-- FLOPs of the run by the algorithm (docs/performance.md, "Lyapunov"), per trajectory and
-- step: the GRU step 2 F 3N + 6 N^2, forming J 6 N^2, the tangents J Q 2 k N^2, the QR with Q
-- formed 4 k^2 (N - k/3). The floor bench/report.lua gives the case (meta 'flops CASE').
local function flops(n, k, t)
  return BATCH * t * (2 * FEATURES * 3 * n + 12 * n * n + 2 * k * n * n + 4 * k * k * (n - k / 3))
end

for _, c in ipairs(cases) do
  local n, k, t = c[1], c[2], c[3]
  local case = string.format("%d,%d,%d", n, k, t)
  mg.manual_seed(7 * n + k)
  local cell = mg.nn.GRUCell(FEATURES, n)
  mg.no_grad(function() cell.bias:assign(mg.randn(2, 3 * n) * 0.1) end)
  local x = mg.randn(BATCH, t, FEATURES)
  local Q0 = mg.linalg.qr(mg.randn(BATCH, n, k))
  local rnn = mg.nn.RNN(cell)
  local function run() return rnn:lyapunov(x, { k = k, Q0 = Q0 }) end
  local r, first = B.timed(run)          -- the checked run, also the first timing
  local prefix = string.format("%s/%d_%d_%d_", dir, n, k, t)
  mg.save(cell.kernel, prefix .. "kernel.npy")
  mg.save(cell.recurrent_kernel, prefix .. "recurrent_kernel.npy")
  mg.save(cell.bias, prefix .. "bias.npy")
  mg.save(x, prefix .. "x.npy")
  mg.save(Q0:contiguous(), prefix .. "Q0.npy")
  mg.save(r.exponents, prefix .. "exponents.npy")
  local m = B.measure(run, { reps = 3, inner = 1, first = first, single = B.SINGLE_RUN_SECONDS })
  B.result(BENCH, case, "moongrad", m)
  B.meta(BENCH, "runs " .. case .. " moongrad", m.runs)
  B.meta(BENCH, "flops " .. case, string.format("%.0f", flops(n, k, t)))
  B.log("moongrad  (%s) lyapunov %10.1f ms CPU, %10.1f ms wall (n=%d); top exponent %.4f", case,
        m.cpu * 1e3, m.wall * 1e3, m.runs, r.mean:get(1))
  collectgarbage()
end
