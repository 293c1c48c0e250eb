-- sweep.lua: mpi.sweep equals the serial loop, static and dynamic, results in config order on
-- rank 0 (nil elsewhere), with tables and tensors as results and runs of unequal length.
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local mg = require "moongrad"
local mpi = require "moongrad.mpi"
local C = require "common"
local r = mpi.rank()

local configs = {}
for i = 1, 9 do configs[i] = { seed = i, size = 1 + (i % 4) * 3, act = i % 2 == 0 and "relu" or "linear" } end

local function run(c)
  mg.manual_seed(c.seed)
  local W = mg.randn({ c.size, c.size }, { dtype = "float64" })
  if c.act == "relu" then W = mg.relu(W) end
  return { seed = c.seed, sum = W:sum():item(), norm = W:matmul(W):abs():max():item(), act = c.act,
           row = W:narrow(1, 1, 1) }
end

local serial = {}
for i, c in ipairs(configs) do serial[i] = run(c) end

for _, schedule in ipairs { "static", "dynamic" } do
  local res, count = mpi.sweep(configs, run, { schedule = schedule })
  if r == 0 then
    assert(count == #configs and #res == #configs, schedule .. ": " .. #configs .. " results")
    for i = 1, #configs do
      local a, b = res[i], serial[i]
      assert(a.seed == b.seed and a.sum == b.sum and a.norm == b.norm and a.act == b.act,
             schedule .. ": result " .. i .. " differs from the serial loop")
      C.equal(a.row, b.row, schedule .. " result " .. i .. " tensor")
    end
  else
    assert(res == nil, "results only on rank 0")
  end
end
-- the default schedule, and an empty sweep
local res = mpi.sweep(configs, function(c) return c.seed * 2 end)
if r == 0 then for i = 1, #configs do assert(res[i] == 2 * i) end end
local empty = mpi.sweep({}, run)
assert(r ~= 0 or (type(empty) == "table" and #empty == 0))
C.done("sweep")
