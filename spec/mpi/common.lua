-- common.lua: what the scripts of spec/mpi/ share (run by spec/mpi_spec.lua under mpirun, and
-- alone as one rank). Each check raises on failure, so a failing rank exits non-zero.
local mg = require "moongrad"
local mpi = require "moongrad.mpi"
local C = {}

-- max |a - b| over the elements (shapes must agree)
function C.maxdiff(a, b)
  assert(mg.shapestr(a) == mg.shapestr(b), "shapes differ: " .. mg.shapestr(a) .. " vs " .. mg.shapestr(b))
  if a:numel() == 0 then return 0 end
  return (a:to("float64") - b:to("float64")):abs():max():item()
end

function C.equal(a, b, what, tol)
  local d = C.maxdiff(a, b)
  if d > (tol or 0) then
    error(string.format("rank %d: %s: max difference %.3g > %.3g\n got %s\n expected %s",
      mpi.rank(), what, d, tol or 0, tostring(a), tostring(b)), 2)
  end
end

-- fn() raises an error that mentions every string that follows
function C.raises(what, fn, ...)
  local ok, msg = pcall(fn)
  if ok then error("rank " .. mpi.rank() .. ": " .. what .. ": expected an error", 2) end
  msg = tostring(msg)
  for _, s in ipairs { ... } do
    if not msg:find(s, 1, true) then
      error(("rank %d: %s: error %q does not mention %q"):format(mpi.rank(), what, msg, s), 2)
    end
  end
end

function C.done(name)
  mpi.barrier()
  io.write(string.format("%s ok on rank %d of %d\n", name, mpi.rank(), mpi.size()))
  io.flush()
end

return C
