-- collectives.lua: every collective and send/recv against hand results, float32 and float64,
-- contiguous and not (a transposed view: written back into its storage), and the errors.
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local mg = require "moongrad"
local mpi = require "moongrad.mpi"
local C = require "common"
local r, n = mpi.rank(), mpi.size()
assert(math.type(r) == "integer" and r >= 0 and r < n, "rank is 0-based")

-- a (2,3) base, and a non-contiguous (3,2) view of a (2,3) storage holding base^T scaled
local function base(dt) return mg.tensor({ { 1, -2, 3 }, { 4, 5, -6 } }, { dtype = dt }) end
local tri = n * (n + 1) / 2                       -- sum over ranks of (rank + 1)

for _, dt in ipairs { "float32", "float64" } do
  -- allreduce: sum (default), mean, max, min; in place
  local t = base(dt) * (r + 1)
  local same = mpi.allreduce(t)
  assert(rawequal(same, t), "allreduce returns t when contiguous")
  C.equal(t, base(dt) * tri, dt .. " allreduce sum")
  C.equal(mpi.allreduce(base(dt) * (r + 1), "mean"), base(dt) * (tri / n), dt .. " allreduce mean", dt == "float32" and 1e-6 or 1e-12)
  local expect_max, expect_min = base(dt):clone(), base(dt):clone()
  for i = 1, 2 do for j = 1, 3 do
    local v = base(dt):get(i, j)
    expect_max:set(v > 0 and v * n or v, i, j)
    expect_min:set(v > 0 and v or v * n, i, j)
  end end
  C.equal(mpi.allreduce(base(dt) * (r + 1), "max"), expect_max, dt .. " allreduce max")
  C.equal(mpi.allreduce(base(dt) * (r + 1), "min"), expect_min, dt .. " allreduce min")
  -- non-contiguous: a transposed view; the result is written back into the storage
  local storage = base(dt) * (r + 1)
  local view = storage:transpose(1, 2)
  assert(not view:is_contiguous())
  local out = mpi.allreduce(view)
  C.equal(out, base(dt):transpose(1, 2) * tri, dt .. " allreduce of a view (result)")
  C.equal(storage, base(dt) * tri, dt .. " allreduce of a view (written back)")

  -- broadcast from the last rank, into a view on the others
  local root = n - 1
  local b = (base(dt) * (r + 10)):transpose(1, 2)
  mpi.broadcast(b, root)
  C.equal(b, base(dt):transpose(1, 2) * (root + 10), dt .. " broadcast")

  -- gather to the last rank and allgather: stacked along a new first dim (row k from rank k)
  local mine = base(dt):transpose(1, 2) * (r + 1)        -- non-contiguous input
  local stacked = {}
  for k = 0, n - 1 do stacked[k + 1] = base(dt):transpose(1, 2) * (k + 1) end
  local g = mpi.gather(mine, root)
  if r == root then C.equal(g, mg.stack(stacked), dt .. " gather") else assert(g == nil, "gather returns nil off the root") end
  C.equal(mpi.allgather(mine), mg.stack(stacked), dt .. " allgather")

  -- scatter from rank 0 of a (2n, 3) non-contiguous tensor: rank k gets rows 2k+1, 2k+2
  local full = mg.zeros({ 3, 2 * n }, { dtype = dt })
  for i = 1, 2 * n do for j = 1, 3 do full:set(100 * i + j, j, i) end end
  local src = r == 0 and full:transpose(1, 2) or nil
  local piece = mpi.scatter(src, 0)
  C.equal(piece, full:transpose(1, 2):narrow(1, 2 * r + 1, 2), dt .. " scatter")
  assert(piece.dtype == dt)

  -- send/recv of a tensor (non-contiguous): rank k sends to k+1 (ring)
  if n > 1 then
    local msg = (base(dt) * (r + 1)):transpose(1, 2)
    local to, from = (r + 1) % n, (r - 1) % n
    if r % 2 == 0 then mpi.send(msg, to, 7); local got = mpi.recv(from, 7); C.equal(got, base(dt):transpose(1, 2) * (from + 1), dt .. " recv")
    else local got = mpi.recv(from, 7); mpi.send(msg, to, 7); C.equal(got, base(dt):transpose(1, 2) * (from + 1), dt .. " recv") end
  end
end

-- send/recv of Lua values: integers stay integers, nested tables, a tensor inside
if n > 1 then
  if r == 0 then
    mpi.send({ seed = 3, lr = 0.5, name = "relu", ok = true, nested = { 1, 2.5, { "x", false } },
               [10] = "ten", grid = mg.tensor({ 1.5, 2 }, { dtype = "float64" }) }, 1, 2)
    mpi.send(42, 1)
  elseif r == 1 then
    local v, from, tag = mpi.recv(0, 2)
    assert(from == 0 and tag == 2)
    assert(v.seed == 3 and math.type(v.seed) == "integer" and v.lr == 0.5 and v.name == "relu" and v.ok == true)
    assert(v.nested[1] == 1 and v.nested[2] == 2.5 and v.nested[3][1] == "x" and v.nested[3][2] == false)
    assert(v[10] == "ten")
    C.equal(v.grid, mg.tensor({ 1.5, 2 }, { dtype = "float64" }), "tensor in a value")
    local x, src = mpi.recv(-1)
    assert(x == 42 and src == 0, "recv from any rank")
  end
end

-- errors name the function and the value, on every rank at once
C.raises("bad op", function() mpi.allreduce(mg.ones(2), "avg") end, "mpi.allreduce", "unknown op 'avg'")
C.raises("root out of range", function() mpi.broadcast(mg.ones(2), n) end, "mpi.broadcast", "root " .. n .. " is out of range")
C.raises("negative root", function() mpi.gather(mg.ones(2), -1) end, "mpi.gather", "out of range")
C.raises("dest out of range", function() mpi.send(1, n + 3) end, "mpi.send", "dest " .. (n + 3))
C.raises("not a tensor", function() mpi.allreduce({ 1, 2 }) end, "mpi.allreduce", "must be a tensor")
C.raises("unsendable", function() mpi.send(print, 0) end, "mpi.send", "type function")
if n > 1 then
  C.raises("mismatched shapes", function() mpi.allreduce(mg.ones(2 + r)) end, "mpi.allreduce", "differ across ranks")
  C.raises("mismatched dtypes", function() mpi.allgather(mg.ones(2, { dtype = r == 0 and "float32" or "float64" })) end,
           "mpi.allgather", "differ across ranks")
  C.raises("scatter that does not split", function() mpi.scatter(r == 0 and mg.ones(2 * n + 1) or nil, 0) end,
           "mpi.scatter", "does not split")
  C.raises("gradients that differ", function() mpi.average_gradients({ mg.ones(1 + r) }) end, "mpi.average_gradients", "differ across ranks")
end
-- still in step after the errors
C.equal(mpi.allreduce(mg.ones(3)), mg.ones(3) * n, "allreduce after the errors")
C.done("collectives")
