-- NumPy .npz archives (runtime/npz.c, mg.save_npz / mg.load_npz): bit-equal round trips,
-- stored and deflated members as numpy.savez / savez_compressed make them (checked with
-- Python's zipfile), numpy.load reading ours and we reading NumPy's, bad archives and
-- members refused with the file named, and a save cut short leaving the previous file intact.
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises

local dir, path = support.scratch(teardown)

local function venv(code) return support.venv_run(dir, code) end   -- in the test venv

local bits = support.bits

describe("save_npz / load_npz", function()
  for _, compressed in ipairs { false, true } do
    it("round-trips bit for bit" .. (compressed and " (compressed)" or ""), function()
      local t = { kernel = mg.randn(3, 8), bias = mg.randn(5, F64), s = mg.tensor(2.5, F64),
                  view = mg.randn(4, 3):transpose(1, 2), empty = mg.zeros({ 2, 0 }) }
      mg.save_npz(t, path("a.npz"), { compressed = compressed })
      local back, n = mg.load_npz(path("a.npz")), 0
      for k, v in pairs(back) do
        n = n + 1
        assert.are.equal(bits(t[k]), bits(v), k)
      end
      assert.are.equal(5, n)
    end)
  end

  it("numpy.load reads ours; members are stored, or deflated with compressed=true", function()
    mg.save_npz({ a = mg.arange(6):reshape(2, 3), b = mg.arange(4, F64) }, path("s.npz"))
    mg.save_npz({ a = mg.zeros(1000) }, path("c.npz"), { compressed = true })
    local out = venv([[
import sys, zipfile, numpy as np
d = sys.argv[1]
z = np.load(d + "/s.npz")
assert sorted(z.files) == ["a", "b"], z.files
assert z["a"].dtype == np.float32 and (z["a"] == np.arange(6).reshape(2, 3)).all()
assert z["b"].dtype == np.float64 and (z["b"] == np.arange(4)).all()
print([i.compress_type for i in zipfile.ZipFile(d + "/s.npz").infolist()],
      [i.compress_type for i in zipfile.ZipFile(d + "/c.npz").infolist()],
      (np.load(d + "/c.npz")["a"] == 0).all())
]])
    assert.are.equal("[0, 0] [8] True\n", out)
  end)

  it("reads numpy.savez and savez_compressed files", function()
    venv([[
import sys, numpy as np
d = sys.argv[1]
np.savez(d + "/np.npz", w=np.arange(6, dtype=np.float32).reshape(3, 2) / 3, v=np.linspace(0, 1, 7))
np.savez_compressed(d + "/npc.npz", w=np.asfortranarray(np.arange(6.0).reshape(2, 3)))
]])
    local a = mg.load_npz(path("np.npz"))
    assert.are.equal(bits(mg.arange(6):reshape(3, 2) / 3), bits(a.w))
    assert.are.equal(bits(mg.linspace(0, 1, 7, F64)), bits(a.v))
    assert.are.same({ { 0, 1, 2 }, { 3, 4, 5 } }, mg.load_npz(path("npc.npz")).w:totable())
  end)

  it("refuses what is not an archive of .npy members, naming the file", function()
    local p = support.write_file(path("junk.npz"), "not a zip")
    raises(function() mg.load_npz(p) end, "load_npz: '" .. p .. "' is not a readable zip archive")
    venv([[
import sys, zipfile
with zipfile.ZipFile(sys.argv[1] + "/txt.npz", "w") as z: z.writestr("readme.txt", "hi")
with zipfile.ZipFile(sys.argv[1] + "/badnpy.npz", "w") as z: z.writestr("x.npy", "\x93NUMPY junk")
]])
    raises(function() mg.load_npz(path("txt.npz")) end, "load_npz: '" .. path("txt.npz") .. "': member 'readme.txt' is not a .npy file")
    raises(function() mg.load_npz(path("badnpy.npz")) end,
      "load_npz: '" .. path("badnpy.npz") .. "': member 'x.npy': malformed .npy file")
    raises(function() mg.load_npz(path("none.npz")) end, "load_npz: cannot open")
  end)

  it("checks its arguments", function()
    raises(function() mg.save_npz({}, path("e.npz")) end, "save_npz: no tensors to save")
    raises(function() mg.save_npz({ a = "x" }, path("e.npz")) end, "save_npz: 'a' is string, expected a tensor")
    raises(function() mg.save_npz({ a = mg.zeros(1) }, path("e.npz"), { compress = true }) end,
      "save_npz: unknown option 'compress'")
    raises(function() mg.save_npz({ a = mg.zeros(1) }, path("e.npz"), { compressed = 1 }) end,
      "save_npz: option 'compressed' must be a boolean")
  end)

  it("a write cut by a file-size limit leaves the old file byte-identical, no temporary", function()
    support.save_cut_short(dir, "save_npz", "w.npz", { a = mg.arange(5, F64) },
                           "{ big = mg.randn(10000, { dtype = 'float64' }) }")
  end)
end)
