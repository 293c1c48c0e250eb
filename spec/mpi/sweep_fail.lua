-- sweep_fail.lua OUTDIR [raw]: run 3 of 6 raises. Every rank's mpi.sweep raises (rank 0 with
-- the run's index, rank and config); each rank writes its message to OUTDIR/rank<k>.txt, then
-- raises again, so every rank exits non-zero. With 'raw' nothing is caught: the error ends
-- the script (the test checks that mpirun returns non-zero and nothing hangs).
local mg = require "moongrad"
local mpi = require "moongrad.mpi"
local outdir, raw = arg[1], arg[2] == "raw"
local configs = {}
for i = 1, 6 do configs[i] = { seed = i, act = i == 3 and "broken" or "relu" } end
local function run(c)
  mg.manual_seed(c.seed)
  if c.act == "broken" then error("no activation named '" .. c.act .. "'") end
  return mg.randn(4):sum():item()
end
if raw then mpi.sweep(configs, run) end
local ok, msg = pcall(mpi.sweep, configs, run)
assert(not ok, "mpi.sweep did not raise")
local f = assert(io.open(outdir .. "/rank" .. mpi.rank() .. ".txt", "w"))
f:write(tostring(msg), "\n")
f:close()
mpi.barrier()
error(msg, 0)
