-- machine.lua - what this machine can do at most, measured in the same run as the pairs, so
-- that the report can say how far a target is from what any implementation could reach.
-- Three numbers, each at the run's thread count (MOONGRAD_BENCH_THREADS, default 1):
--   sgemm_gflops  float32 GEMM rate of a (2048 x 2048) @ (2048 x 2048) product through
--                 moongrad's matmul (OpenBLAS underneath): the FLOP ceiling of the
--                 recurrent-layer and Lyapunov cases
--   write_gbs     store bandwidth of filling a 64 MiB float32 tensor (t:fill): the ceiling of
--                 a benchmark whose output is its cost (a large Jacobian)
--   call_us       one Lua-to-C method call on a tensor that allocates nothing (t:dim()): the
--                 floor under any per-op cost seen from Lua
-- Output: 'meta machine <key> <value>' lines for bench/report.lua; the log on standard error.
-- Usage: LUA_CPATH='build/lua/?.so' lua5.4 bench/machine.lua
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local B = require "benchlib"
local mg = B.moongrad()

local BENCH = "machine"
local function time_of(fn, reps)
  local m = B.measure(fn, { reps = reps or 5, min_time = 0.2 })
  return B.threads() == 1 and m.cpu or m.wall
end

local N = 2048
mg.manual_seed(0)
local A, Bm = mg.randn(N, N), mg.randn(N, N)
local t = time_of(function() return A:matmul(Bm) end)
local gflops = 2 * N * N * N / t / 1e9
B.meta(BENCH, "sgemm_gflops", string.format("%.1f", gflops))
B.log("machine   SGEMM %d^3: %.1f GFLOP/s", N, gflops)
A, Bm = nil, nil
collectgarbage()

local big = mg.zeros(16 * 1024 * 1024)                 -- 64 MiB of float32
t = time_of(function() big:fill(1) end)
local gbs = big:numel() * 4 / t / 1e9
B.meta(BENCH, "write_gbs", string.format("%.2f", gbs))
B.log("machine   fill of 64 MiB: %.2f GB/s", gbs)
big = nil
collectgarbage()

local small, CALLS = mg.zeros(16), 1000000
t = time_of(function()
  local d
  for _ = 1, CALLS do d = small:dim() end
  return d
end)
B.meta(BENCH, "call_us", string.format("%.4f", t / CALLS * 1e6))
B.log("machine   t:dim(): %.4f us per call", t / CALLS * 1e6)
