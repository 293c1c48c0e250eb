-- op_overhead.lua - per-op cost of a tiny elementwise add called from Lua (moongrad side;
-- the PyTorch side is op_overhead.py).  100,000 adds of two 16-element float32 tensors:
--   no_tape   'c = a + b' with no tape active (PyTorch: under torch.no_grad())
--   recorded  the same while a GradientTape records, 'a' watched (PyTorch: a, b with
--             requires_grad=True, so every add builds a graph node)
--   backward  'x = x + b' chained 100,000 times under a tape, then the gradient of sum(x)
--             with respect to 'a': recording plus the reverse sweep, per op
-- Usage: LUA_CPATH='build/lua/?.so' lua5.4 bench/op_overhead.lua [n_ops]
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local B = require "benchlib"
local mg = B.moongrad()

local BENCH, N = "op_overhead", math.tointeger(tonumber(arg[1] or "100000"))
if not N or N < 1 then error("op_overhead.lua: n_ops must be a positive integer, got " .. tostring(arg[1]), 0) end
B.blas_meta(mg, BENCH)
B.meta(BENCH, "n_ops", N)

mg.manual_seed(0)
local a, b = mg.randn(16), mg.randn(16)

local function adds()
  local c
  for _ = 1, N do c = a + b end
  return c
end

local function recorded()
  local tape = mg.GradientTape()
  tape:watch(a)
  local c = adds()
  tape:stop()
  return c
end

local function chain_backward()
  local tape = mg.GradientTape()
  tape:watch(a)
  local x = a
  for _ = 1, N do x = x + b end
  local s = x:sum()
  tape:stop()
  return tape:gradient(s, a)
end

-- sanity: the results are what the loops claim
assert(math.abs((adds() - (a + b)):abs():max():item()) == 0, "op_overhead: no_tape result is wrong")
local g = chain_backward()
assert(g:shape()[1] == 16 and (g - 1):abs():max():item() == 0, "op_overhead: gradient is not ones")

local cases = {
  { "no_tape", adds }, { "recorded", recorded }, { "recorded+backward", chain_backward } }
for _, c in ipairs(cases) do
  local m = B.measure(c[2], { reps = 7, inner = 1, warmup = 2 })
  B.result(BENCH, c[1], "moongrad", m, N)
  B.log("moongrad  %-18s %7.3f us/op CPU (repetitions %.3f .. %.3f), %7.3f wall", c[1],
        m.cpu / N * 1e6, math.min(table.unpack(m.cpu_reps)) / N * 1e6,
        math.max(table.unpack(m.cpu_reps)) / N * 1e6, m.wall / N * 1e6)
end
