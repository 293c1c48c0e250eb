-- moongrad.mpi (docs/mpi.md). The scripts of spec/mpi/ run under 'mpirun -np 2 --oversubscribe'
-- (--allow-run-as-root as root; --mca btl self,vader: one machine, shared memory, no network)
-- in a stock lua5.4, each under 'timeout' so that a hang fails instead of blocking ctest. Without
-- moongrad_mpi.so in the build (configured without MPI, or -DMG_MPI=OFF) those are pending and
-- the error path is checked in-process; it is checked in every build through MOONGRAD_NO_MPI.
local support = require "support"

local source, build, q = support.SOURCE, support.BUILD, support.shq

local lua = "lua5.4 -e " .. q("package.cpath = " .. string.format("%q", build .. "/lua/?.so;") .. " .. package.cpath")
local built = io.open(build .. "/lua/moongrad_mpi.so", "rb")
if built then built:close() end
local has_mpirun = os.execute("command -v mpirun >/dev/null 2>&1")
local root = io.popen("id -u"):read("l") == "0"
local MPIRUN = "timeout 120 mpirun -np 2 --oversubscribe --mca btl self,vader" .. (root and " --allow-run-as-root" or "")

-- output (stdout and stderr), and whether the command exited 0
local function run(cmd)
  local p = assert(io.popen("cd " .. q(source) .. " && " .. cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok == true, code
end

local function script(name) return q(source .. "/spec/mpi/" .. name .. ".lua") end

describe("moongrad.mpi", function()
  it("without the C module raises an error naming the function and saying how to get it", function()
    local out, ok = run("MOONGRAD_NO_MPI=1 " .. lua .. " -e " .. q([[
      local mpi = require "moongrad.mpi"
      local avail, why = mpi.available()
      assert(avail == false and why:find("MOONGRAD_NO_MPI", 1, true), tostring(why))
      for _, f in ipairs { "rank", "size", "barrier", "allreduce", "sweep", "average_gradients" } do
        local ok, msg = pcall(mpi[f])
        assert(not ok, f .. " did not raise")
        assert(msg:find("mpi." .. f .. ": moongrad.mpi is not available", 1, true), msg)
        assert(msg:find("libopenmpi-dev", 1, true), msg)
      end
      print("error path ok")]]))
    assert.is_true(ok, out)
    assert.truthy(out:find("error path ok", 1, true), out)
  end)

  if not built then
    it("is built without MPI: its functions raise (in this process)", function()
      local mpi = require "moongrad.mpi"
      assert.is_false((mpi.available()))
      support.raises(function() mpi.rank() end, "mpi.rank", "libopenmpi-dev")
    end)
    pending("the MPI checks: this build has no moongrad_mpi.so (MPI not found, or -DMG_MPI=OFF)")
    return
  end
  if not has_mpirun then
    pending("the MPI checks: mpirun is not on PATH (apt-get install openmpi-bin)")
    return
  end

  it("runs as one rank without mpirun (singleton)", function()
    local out, ok = run(lua .. " " .. script("collectives"))
    assert.is_true(ok, out)
    assert.truthy(out:find("collectives ok on rank 0 of 1", 1, true), out)
  end)

  for _, name in ipairs { "collectives", "train", "sweep" } do
    it(name .. " under mpirun -np 2", function()
      local out, ok = run(MPIRUN .. " " .. lua .. " " .. script(name))
      assert.is_true(ok, out)
      for r = 0, 1 do
        assert.truthy(out:find(name .. " ok on rank " .. r .. " of 2", 1, true), out)
      end
    end)
  end

  it("scripts/sweep.lua --quick: the same table on 1 and 2 ranks, Glorot's 0.5 and 1, the picture", function()
    local exe = q(build .. "/moongrad") .. " " .. q(source .. "/scripts/sweep.lua") .. " --quick"
    local tables = {}
    for _, np in ipairs { 1, 2 } do
      local dir = os.tmpname()
      os.remove(dir)
      local out, ok = run((np == 1 and "" or MPIRUN .. " ") .. exe .. " --out " .. q(dir))
      assert.is_true(ok, out)
      assert.truthy(out:find("8 configs (2 seeds x sizes 8,16 x relu,identity) on " .. np .. " rank", 1, true), out)
      local relu = tonumber(out:match("relu mean var%(J%)%*units = ([%d.]+)"))
      local id = tonumber(out:match("identity mean var%(J%)%*units = ([%d.]+)"))
      assert.truthy(relu and math.abs(relu - 0.5) < 0.1, out)
      assert.truthy(id and math.abs(id - 1) < 0.15, out)
      local f = io.open(dir .. "/sweep_spectra.png", "rb")
      assert.truthy(f, "no picture: " .. out)
      assert.are.equal("\137PNG", f:read(4))
      f:close()
      os.execute("rm -rf " .. q(dir))
      tables[np] = out:gsub("^[^\n]*\n", ""):gsub("wrote[^\n]*", "")   -- all but the timing and paths
    end
    assert.are.equal(tables[1], tables[2])
  end)

  it("a run that raises: mpi.sweep reports it, every rank raises and exits non-zero, no hang", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. q(dir)))
    local out, ok, code = run(MPIRUN .. " " .. lua .. " " .. script("sweep_fail") .. " " .. q(dir))
    assert.is_false(ok, out)
    assert.are_not.equal(124, code, "timed out (a hang): " .. out)
    local function read(r)
      local f = io.open(dir .. "/rank" .. r .. ".txt")
      assert.truthy(f, "rank " .. r .. " wrote no error: " .. out)
      local s = f:read("a")
      f:close()
      return s
    end
    local r0, r1 = read(0), read(1)
    assert.truthy(r0:find("mpi.sweep: 1 of 6 runs failed", 1, true), r0)
    assert.truthy(r0:find('run 3 (rank 0) config {act = "broken", seed = 3}', 1, true), r0)
    assert.truthy(r0:find("no activation named 'broken'", 1, true), r0)
    assert.truthy(r1:find("mpi.sweep: 1 of 6 runs failed (rank 0 reports which; this is rank 1)", 1, true), r1)
    os.execute("rm -rf " .. q(dir))
    -- uncaught: the script ends with the error, mpirun returns non-zero in time
    out, ok, code = run(MPIRUN .. " " .. lua .. " " .. script("sweep_fail") .. " /nonexistent raw")
    assert.is_false(ok, out)
    assert.are_not.equal(124, code, "timed out (a hang): " .. out)
    assert.truthy(out:find("run 3 (rank 0)", 1, true), out)
  end)
end)
