-- NumPy .npy files (npy.c): save/load round trips in float32 and float64 (0-d, empty and
-- non-contiguous tensors too), NumPy reading ours and we reading NumPy's (Fortran order,
-- format 2.0, big-endian, more than 12 dimensions), every malformed file raising an error
-- that names 'load' and the path, and saving that never destroys the previous file (under a
-- file-size limit, on a full tmpfs, in an unwritable directory).
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises
local read_file, write_file = support.read_file, support.write_file
local PY = support.PYTHON
local HAVE_NUMPY = support.python_can_import("numpy")

local dir, path = support.scratch(teardown)

-- A version 1.0 .npy image: magic, version, header padded to 64 bytes with a newline, data.
local function npy(header, data, version)
  version = version or 1
  local pre = 6 + 2 + (version == 1 and 2 or 4)
  local total = pre + #header + 1
  header = header .. string.rep(" ", (64 - total % 64) % 64) .. "\n"
  local len = version == 1 and string.pack("<I2", #header) or string.pack("<I4", #header)
  return "\x93NUMPY" .. string.char(version, 0) .. len .. header .. (data or "")
end

local function doubles(...)
  local t = {}
  for i, v in ipairs { ... } do t[i] = string.pack("<d", v) end
  return table.concat(t)
end

-- Run 'code' with numpy as np, the directory as d; true when it exits with status 0.
local function python(code)
  local script = path("check.py")
  write_file(script, "import sys\nimport numpy as np\nd = sys.argv[1]\n" .. code .. "\n")
  local out = io.popen(PY .. " '" .. script .. "' '" .. dir .. "' 2>&1")
  local text = out:read("a")
  local ok = out:close()
  assert.is_true(ok == true, "python failed:\n" .. text)
  return text
end

describe("save and load", function()
  it("round-trip float32 and float64 values and shapes exactly", function()
    mg.manual_seed(1)
    for _, dt in ipairs { "float32", "float64" } do
      for _, shape in ipairs { {}, { 1 }, { 5 }, { 2, 3 }, { 2, 3, 4 }, { 0, 3 }, { 1, 1, 1, 1, 2 } } do
        local t = mg.randn(shape, { dtype = dt })
        local p = path("rt.npy")
        mg.save(t, p)
        local u = mg.load(p)
        assert.are.equal(dt, u.dtype)
        assert.are.same(t:shape(), u:shape())
        assert.are.same(t:totable(), u:totable())
      end
    end
    mg.save(mg.tensor({ 0.1, 1 / 3, 1e-310, -0.0 }, F64), path("exact.npy"))
    local back = mg.load(path("exact.npy")):totable()
    assert.are.same({ 0.1, 1 / 3, 1e-310 }, { back[1], back[2], back[3] })
    assert.are.equal("-0.0", tostring(back[4]))
  end)

  it("save non-contiguous views in C order", function()
    local base = mg.arange(24, F64):reshape(2, 3, 4)
    for _, v in ipairs { base:transpose(1, 3), base:narrow(3, 2, 2), base:select(2, 2),
                         mg.tensor { 1, 2 }:expand(3, 2), base:permute(2, 3, 1)[2] } do
      mg.save(v, path("view.npy"))
      local u = mg.load(path("view.npy"))
      assert.are.same(v:shape(), u:shape())
      assert.are.same(v:totable(), u:totable())
      assert.is_true(u:is_contiguous())
    end
  end)

  it("write a version 1.0 header NumPy can parse, padded to 64 bytes", function()
    mg.save(mg.zeros(2, 3), path("h.npy"))
    local s = read_file(path("h.npy"))
    assert.are.equal("\x93NUMPY\1\0", s:sub(1, 8))
    local hlen = string.unpack("<I2", s, 9)
    assert.are.equal(0, (10 + hlen) % 64)
    local header = s:sub(11, 10 + hlen)
    assert.are.equal("\n", header:sub(-1))
    assert.is_truthy(header:find("'descr': '<f4'", 1, true))
    assert.is_truthy(header:find("'fortran_order': False", 1, true))
    assert.is_truthy(header:find("'shape': (2, 3)", 1, true))
    assert.are.equal(10 + hlen + 24, #s)
    mg.save(mg.tensor(1, F64), path("h0.npy"))
    assert.is_truthy(read_file(path("h0.npy")):find("'shape': ()", 1, true))
    mg.save(mg.ones(7), path("h1.npy"))
    assert.is_truthy(read_file(path("h1.npy")):find("'shape': (7,)", 1, true))
  end)

  it("read files written by hand: format 2.0, extra spaces, Fortran order", function()
    local data = doubles(1, 2, 3, 4, 5, 6)
    local v2 = write_file(path("v2.npy"),
      npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", data, 2))
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, mg.load(v2):totable())
    local spaced = write_file(path("sp.npy"),
      npy("{ 'shape' : ( 3 , 2 ) , 'fortran_order' : False , 'descr' : '<f8' }", data))
    assert.are.same({ { 1, 2 }, { 3, 4 }, { 5, 6 } }, mg.load(spaced):totable())
    local fortran = write_file(path("f.npy"),
      npy("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", data))
    local f = mg.load(fortran)
    assert.are.same({ { 1, 3, 5 }, { 2, 4, 6 } }, f:totable())  -- column-major data
    assert.is_true(f:is_contiguous())
    local f1 = write_file(path("f1.npy"),
      npy("{'descr': '<f8', 'fortran_order': True, 'shape': (3,), }", doubles(7, 8, 9)))
    assert.are.same({ 7, 8, 9 }, mg.load(f1):totable())
  end)
end)

describe("interoperability with NumPy", function()
  it("NumPy reads what moongrad writes", function()
    if not HAVE_NUMPY then pending("/usr/bin/python3 has no numpy") return end
    mg.save(mg.arange(24):reshape(2, 3, 4), path("m32.npy"))
    mg.save(mg.arange(24, F64):reshape(2, 3, 4):transpose(1, 3), path("m64t.npy"))
    mg.save(mg.tensor(2.5, F64), path("m0.npy"))
    mg.save(mg.zeros(0, 3), path("me.npy"))
    mg.save(mg.tensor({ 0.1, 1 / 3 }, F64), path("mx.npy"))
    local out = python([==[
a = np.load(f'{d}/m32.npy')
assert a.dtype == np.float32 and a.shape == (2, 3, 4), (a.dtype, a.shape)
assert np.array_equal(a, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
b = np.load(f'{d}/m64t.npy')
assert b.dtype == np.float64 and b.shape == (4, 3, 2) and b.flags.c_contiguous
assert np.array_equal(b, np.arange(24.0).reshape(2, 3, 4).transpose(2, 1, 0))
c = np.load(f'{d}/m0.npy')
assert c.shape == () and c == 2.5
e = np.load(f'{d}/me.npy')
assert e.shape == (0, 3) and e.dtype == np.float32
x = np.load(f'{d}/mx.npy')
assert x[0] == 0.1 and x[1] == 1 / 3
print('ok')]==])
    assert.is_truthy(out:find("ok", 1, true))
  end)

  it("moongrad reads what NumPy writes, including Fortran order and format 2.0", function()
    if not HAVE_NUMPY then pending("/usr/bin/python3 has no numpy") return end
    python([==[
np.save(f'{d}/n32.npy', np.arange(6, dtype=np.float32).reshape(2, 3) / 4)
np.save(f'{d}/n64.npy', np.array([[0.1, 1 / 3], [1e-300, -2.5]]))
np.save(f'{d}/nf.npy', np.asfortranarray(np.arange(24.0).reshape(2, 3, 4)))
np.save(f'{d}/n0.npy', np.float64(7.25))
np.save(f'{d}/ne.npy', np.zeros((3, 0), dtype=np.float32))
with open(f'{d}/nv2.npy', 'wb') as f:
    np.lib.format.write_array(f, np.arange(4.0), version=(2, 0))
np.save(f'{d}/ni8.npy', np.arange(3, dtype=np.int64))]==])
    local a = mg.load(path("n32.npy"))
    assert.are.equal("float32", a.dtype)
    assert.are.same({ { 0, 0.25, 0.5 }, { 0.75, 1, 1.25 } }, a:totable())
    local b = mg.load(path("n64.npy"))
    assert.are.equal("float64", b.dtype)
    assert.are.same({ { 0.1, 1 / 3 }, { 1e-300, -2.5 } }, b:totable())
    local f = mg.load(path("nf.npy"))
    assert.are.same(mg.arange(24, F64):reshape(2, 3, 4):totable(), f:totable())
    assert.are.equal(7.25, mg.load(path("n0.npy")):item())
    assert.are.equal(0, mg.load(path("n0.npy")):dim())
    assert.are.same({ 3, 0 }, mg.load(path("ne.npy")):shape())
    assert.are.same({ 0, 1, 2, 3 }, mg.load(path("nv2.npy")):totable())
    raises(function() return mg.load(path("ni8.npy")) end, "load", "'<i8'", "ni8.npy")
  end)

  it("moongrad reads NumPy's big-endian float32 and float64, byte-swapped", function()
    if not HAVE_NUMPY then pending("/usr/bin/python3 has no numpy") return end
    python([==[
np.save(f'{d}/be4.npy', ((np.arange(6.0).reshape(2, 3) - 2.5) / 4).astype('>f4'))
np.save(f'{d}/be8.npy', np.array([0.1, 1 / 3, -1e300, 7], dtype='>f8'))
np.save(f'{d}/be8f.npy', np.arange(24.0).reshape(2, 3, 4).astype('>f8', order='F'))
np.save(f'{d}/be4s.npy', np.array(-1.5, dtype='>f4'))
assert np.load(f'{d}/be4.npy').dtype.str == '>f4' and np.load(f'{d}/be8f.npy').dtype.str == '>f8']==])
    local a = mg.load(path("be4.npy"))
    assert.are.equal("float32", a.dtype)
    assert.are.same({ { -0.625, -0.375, -0.125 }, { 0.125, 0.375, 0.625 } }, a:totable())
    local b = mg.load(path("be8.npy"))
    assert.are.equal("float64", b.dtype)
    assert.are.same({ 0.1, 1 / 3, -1e300, 7 }, b:totable())
    assert.are.same(mg.arange(24, F64):reshape(2, 3, 4):totable(), mg.load(path("be8f.npy")):totable())
    assert.are.equal(-1.5, mg.load(path("be4s.npy")):item())
  end)

  it("a valid NumPy array of more than 12 dimensions is refused as such, not as malformed", function()
    if not HAVE_NUMPY then pending("/usr/bin/python3 has no numpy") return end
    python([==[
np.save(f'{d}/d32.npy', np.zeros((1,) * 32, dtype=np.float32))
np.save(f'{d}/d13.npy', np.arange(2.0).reshape((1,) * 12 + (2,)))
np.save(f'{d}/d12.npy', np.arange(2.0).reshape((1,) * 11 + (2,)))]==])
    for _, case in ipairs { { "d32.npy", "(the array has 32)" }, { "d13.npy", "(the array has 13)" } } do
      local ok, err = pcall(mg.load, path(case[1]))
      assert.is_false(ok)
      assert.is_truthy(err:find("load: more than 12 dimensions " .. case[2], 1, true), err)
      assert.is_truthy(err:find(path(case[1]), 1, true), err)
      assert.is_falsy(err:find("malformed", 1, true), err)
    end
    local t = mg.load(path("d12.npy"))
    assert.are.equal(12, t:dim())
    assert.are.same({ 0, 1 }, t:reshape(2):totable())
  end)
end)

describe("malformed files", function()
  local good = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"
  local data = doubles(1, 2, 3, 4, 5, 6)

  local function bad(name, bytes, ...)
    local p = write_file(path(name), bytes)
    raises(function() return mg.load(p) end, "load", p, ...)
  end

  it("a missing file, a directory", function()
    raises(function() return mg.load(path("nope.npy")) end, "load", path("nope.npy"), "cannot open",
           "No such file")
    raises(function() return mg.load(dir) end, "load", dir, "not a regular file")
  end)

  it("an empty file, bad magic, an unknown version", function()
    bad("empty.npy", "", "no NUMPY magic")
    bad("magic.npy", "\x93NUMPX" .. npy(good, data):sub(7), "no NUMPY magic")
    bad("text.npy", "hello world, this is not a numpy file at all", "no NUMPY magic")
    bad("ver.npy", "\x93NUMPY" .. string.char(9, 0) .. npy(good, data):sub(9), "unknown format version")
  end)

  it("truncated header or data", function()
    local full = npy(good, data)
    bad("trunc_hdr.npy", full:sub(1, 40), "truncated header")
    bad("trunc_len.npy", full:sub(1, 9), "no NUMPY magic")
    bad("trunc_v2.npy", npy(good, data, 2):sub(1, 11), "truncated header")
    bad("trunc_data.npy", full:sub(1, #full - 1), "data size does not match the shape")
    bad("extra_data.npy", full .. "\0", "data size does not match the shape")
    bad("no_data.npy", npy(good, ""), "data size does not match the shape")
  end)

  it("bad headers", function()
    bad("notdict.npy", npy("['descr', '<f8']", data), "header is not a dict")
    bad("nokey.npy", npy("{'descr': '<f8', 'shape': (2, 3), }", data), "missing header key")
    bad("unknownkey.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", data),
        "unknown header key")
    bad("badorder.npy", npy("{'descr': '<f8', 'fortran_order': Maybe, 'shape': (2, 3), }", data),
        "bad fortran_order")
    bad("badshape.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, x), }", data), "bad shape")
    bad("negshape.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (-6,), }", data), "bad shape")
    bad("hugeshape.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999,), }",
        data), "bad shape")
    bad("overflow.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
        data), "shape too large")
    bad("deep.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1,1,1,1,1), }",
        doubles(1)), "more than 12 dimensions (the array has 13)")
    bad("deep_bad.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1,1,1,1,1,x), }",
        doubles(1)), "malformed", "bad shape")
    bad("unterminated.npy", npy("{'descr': '<f8", data), "bad")
    bad("nobrace.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3)", data), "bad header")
    bad("longdescr.npy", npy("{'descr': '" .. string.rep("f", 100) .. "', 'fortran_order': False, 'shape': (6,), }",
        data), "bad descr")
  end)

  it("dtypes other than float32 and float64", function()
    for _, descr in ipairs { "<i8", "<f2", ">i4", ">f2", "|u1", "<c16", "O", "f8", "=f8", "<f8 " } do
      bad("dt.npy", npy("{'descr': '" .. descr .. "', 'fortran_order': False, 'shape': (6,), }", data),
          "unsupported dtype '" .. descr .. "'", "'<f4'", "'<f8'")
    end
  end)

  it("a NUL inside a header string (descr '<f8\\0...' is not '<f8')", function()
    for _, descr in ipairs { "<f8\0", "<f8\0junk", "\0<f8" } do
      bad("nul.npy", npy("{'descr': '" .. descr .. "', 'fortran_order': False, 'shape': (6,), }", data),
          "malformed", "bad descr")
    end
    bad("nulkey.npy", npy("{'descr\0x': '<f8', 'fortran_order': False, 'shape': (6,), }", data),
        "malformed", "bad header entry")
  end)

  it("leave nothing half-made: loading again after an error works", function()
    bad("again.npy", npy(good, data:sub(9)), "data size")
    local p = write_file(path("ok.npy"), npy(good, data))
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, mg.load(p):totable())
  end)
end)

-- Runs Lua 'code' in a new lua5.4 (with this build's module) under the shell prefix 'pre'
-- (e.g. "ulimit -f 8;"), the shell itself started through the command 'wrapper' when given
-- ("unshare -m ...": mounts die with the child; "setpriv ...": another user); returns whether
-- it exited 0 and its output (stdout and stderr).
local function lua_child(pre, code, wrapper)
  return support.lua_child(path("child.lua"), pre, code, wrapper)
end

-- The names in directory 'd' (sorted).
local function listing(d)
  local p = io.popen("ls -A " .. support.shq(d))
  local names = {}
  for l in p:lines() do names[#names + 1] = l end
  p:close()
  table.sort(names)
  return names
end

describe("save never destroys the previous file", function()
  it("a write cut by a file-size limit leaves the old file byte-identical, no temporary", function()
    local sub = path("fsize")
    os.execute("mkdir -p " .. support.shq(sub))
    local target = sub .. "/w.npy"
    mg.save(mg.arange(5, F64), target)
    local before = read_file(target)
    -- 8 KiB limit (bash counts 1024-byte blocks), SIGXFSZ ignored so write() fails with EFBIG
    local ok, out = lua_child("trap '' XFSZ; ulimit -f 8;", string.format([[
local ok, err = pcall(mg.save, mg.zeros(10000, { dtype = "float64" }), %q)
print(ok, err)]], target))
    assert.is_true(ok, out)
    assert.is_truthy(out:find("false\tsave: error writing '" .. target .. "' (File too large)", 1, true), out)
    assert.are.equal(before, read_file(target))
    assert.are.same({ "w.npy" }, listing(sub))
  end)

  it("a full disk leaves the old file byte-identical, no temporary (tiny tmpfs)", function()
    local sub = path("full")
    os.execute("mkdir -p " .. support.shq(sub))
    local target = sub .. "/w.npy"
    -- a private mount namespace: the 64 KiB tmpfs vanishes with the child
    if not os.execute("unshare -m --propagation private true 2>/dev/null") then
      pending("cannot make a mount namespace (unshare -m needs root)")
      return
    end
    local ok, out = lua_child("mount -t tmpfs -o size=64k tmpfs " .. support.shq(sub)
                              .. " 2>/dev/null || { echo NOMOUNT; exit 0; };", string.format([[
mg.save(mg.arange(5, { dtype = "float64" }), %q)
local f = io.open(%q, "rb"); local before = f:read("a"); f:close()
local ok, err = pcall(mg.save, mg.zeros(100000, { dtype = "float64" }), %q)
f = io.open(%q, "rb"); local after = f:read("a"); f:close()
local p = io.popen("ls -A %s"); local names = p:read("a"); p:close()
print(ok, err, before == after and "same" or "changed", (names:gsub("\n", " ")))]],
      target, target, target, target, sub), "unshare -m --propagation private")
    if out:find("NOMOUNT", 1, true) then pending("cannot mount a tmpfs (needs root)") return end
    assert.is_true(ok, out)
    assert.is_truthy(out:find("false\tsave: error writing '" .. target
                              .. "' (No space left on device)\tsame\tw.npy \n", 1, true), out)
  end)

  it("keeps the permissions of the file it replaces", function()
    local target = path("mode.npy")
    mg.save(mg.ones(2), target)
    os.execute("chmod 640 " .. support.shq(target))
    mg.save(mg.ones(3), target)
    local p = io.popen("stat -c %a " .. support.shq(target))
    local mode = p:read("l")
    p:close()
    assert.are.equal("640", mode)
    assert.are.same({ 1, 1, 1 }, mg.load(target):totable())
  end)
end)

describe("save errors", function()
  it("name the function and the path", function()
    raises(function() mg.save(mg.ones(2), "/nonexistent-dir/x.npy") end, "save",
           "/nonexistent-dir/x.npy", "cannot open", "No such file or directory")
    raises(function() mg.save(mg.ones(2), dir) end, "save", dir, "Is a directory")
    raises(function() mg.save(3, path("x.npy")) end, "save", "moongrad.Tensor expected")
    raises(function() mg.save(mg.ones(2)) end, "save", "string expected")
    raises(function() mg.load() end, "load", "string expected")
  end)

  it("an unwritable directory: the reason, and the old file kept", function()
    local ro = path("ro")
    os.execute("mkdir -p " .. support.shq(ro) .. " && chmod 755 " .. support.shq(dir))
    mg.save(mg.ones(2), ro .. "/old.npy")
    os.execute("chmod 555 " .. support.shq(ro))
    local wrapper, why = support.unprivileged()   -- root writes anywhere: run as 'nobody'
    if wrapper == nil then pending(why) return end
    local ok, out = lua_child("", string.format([[
print(pcall(mg.save, mg.ones(3), %q))
print(pcall(mg.save, mg.ones(3), %q))]], ro .. "/new.npy", ro .. "/old.npy"), wrapper)
    os.execute("chmod 755 " .. support.shq(ro))
    assert.is_true(ok, out)
    assert.is_truthy(out:find("false\tsave: cannot open '" .. ro .. "/new.npy' for writing "
                              .. "(Permission denied)", 1, true), out)
    assert.is_truthy(out:find("false\tsave: cannot open '" .. ro .. "/old.npy' for writing "
                              .. "(Permission denied)", 1, true), out)
    assert.are.same({ 1, 1 }, mg.load(ro .. "/old.npy"):totable())
    assert.are.same({ "old.npy" }, listing(ro))
  end)
end)
