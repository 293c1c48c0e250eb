-- safetensors files (runtime/safetensors.c, mg.save_tensors / mg.load_tensors): bit-equal
-- round trips of float32 and float64 tensors with metadata, files written by the real
-- safetensors package (F16 and BF16 converted) read here and ours read by its NumPy reader,
-- every kind of malformed file refused with the file and the problem named, argument errors,
-- and a save cut short by a file-size limit leaving the previous file intact.
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises
local read_file, write_file = support.read_file, support.write_file

local dir, path = support.scratch(teardown)

local function venv(code) return support.venv_run(dir, code) end   -- in the test venv

local bits = support.bits

-- A safetensors image from a header string and data bytes.
local function image(header, data) return string.pack("<I8", #header) .. header .. (data or "") end

describe("save_tensors / load_tensors", function()
  it("round-trips float32 and float64 tensors bit for bit, with metadata", function()
    local t = { ["lstm/kernel"] = mg.randn(3, 8), ["dense/bias"] = mg.randn(5, F64),
                scalar = mg.tensor(math.pi, F64), empty = mg.zeros({ 0, 4 }),
                tiny = mg.tensor({ 1e-45, -0.0, math.huge, -math.huge }) }
    mg.save_tensors(t, path("a.safetensors"), { metadata = { format = "pt", note = "é" } })
    local back, meta = mg.load_tensors(path("a.safetensors"))
    local n = 0
    for k, v in pairs(back) do
      n = n + 1
      assert.are.equal(bits(t[k]), bits(v), k)
    end
    assert.are.equal(5, n)
    assert.are.same({ format = "pt", note = "é" }, meta)
  end)

  it("writes a non-contiguous view as its values, and the same bytes every time", function()
    local base = mg.randn(4, 3)
    local v = base:transpose(1, 2)
    mg.save_tensors({ v = v, w = base }, path("b1.safetensors"))
    mg.save_tensors({ w = base, v = v }, path("b2.safetensors"))
    assert.are.equal(read_file(path("b1.safetensors")), read_file(path("b2.safetensors")))
    assert.are.equal(bits(v), bits(mg.load_tensors(path("b1.safetensors")).v))
  end)

  it("a NaN survives with its bits", function()
    local x = mg.tensor({ 0 / 0, 1 }, F64)
    mg.save_tensors({ x = x }, path("nan.safetensors"))
    assert.are.equal(bits(x), bits(mg.load_tensors(path("nan.safetensors")).x))
  end)

  it("an empty table makes a valid file", function()
    mg.save_tensors({}, path("e.safetensors"))
    local t, m = mg.load_tensors(path("e.safetensors"))
    assert.are.same({}, t)
    assert.are.same({}, m)
  end)
end)

describe("with the real safetensors package", function()
  it("its NumPy reader reads what moongrad writes, values and metadata", function()
    mg.save_tensors({ a = mg.arange(6):reshape(2, 3), b = mg.arange(4, F64) * 0.1 },
                    path("ours.safetensors"), { metadata = { format = "np" } })
    local out = venv([[
import sys, numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
d = load_file(sys.argv[1] + "/ours.safetensors")
assert d["a"].dtype == np.float32 and d["a"].shape == (2, 3), d["a"]
assert (d["a"] == np.arange(6, dtype=np.float32).reshape(2, 3)).all()
assert d["b"].dtype == np.float64 and (d["b"] == np.arange(4) * 0.1).all(), d["b"]
with safe_open(sys.argv[1] + "/ours.safetensors", "np") as f: print(f.metadata())
]])
    assert.are.equal("{'format': 'np'}\n", out)
  end)

  it("moongrad reads what it writes: float32, float64, float16 (converted), metadata", function()
    venv([[
import sys, numpy as np
from safetensors.numpy import save_file
save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
           "d": np.linspace(-1, 1, 5),
           "h": np.array([0.5, -2, 65504, 6e-8, np.inf], dtype=np.float16)},
          sys.argv[1] + "/theirs.safetensors", metadata={"who": "numpy"})
]])
    local t, meta = mg.load_tensors(path("theirs.safetensors"))
    assert.are.equal("numpy", meta.who)
    assert.are.equal(bits(mg.arange(12):reshape(3, 4) / 7), bits(t.w))
    assert.are.equal(bits(mg.linspace(-1, 1, 5, F64)), bits(t.d))
    assert.are.equal("float32", t.h.dtype)
    -- float16 6e-8 is the subnormal 2^-24
    assert.are.same({ 0.5, -2, 65504, 2 ^ -24, math.huge }, t.h:totable())
  end)

  it("bfloat16 is read as the top half of a float32", function()
    local header = '{"x":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]}}'
    -- 1.0 = 0x3F80, -2.5 = 0xC020, 0x0002: the float32 subnormal 0x00020000 = 2^-132
    write_file(path("bf.safetensors"), image(header, string.pack("<I2I2I2", 0x3F80, 0xC020, 0x0002)))
    assert.are.same({ 1, -2.5, 2 ^ -132 }, mg.load_tensors(path("bf.safetensors")).x:totable())
  end)
end)

describe("malformed files are refused, naming the file and the problem", function()
  local D8 = string.rep("\0", 8)
  local function entry(dt, shape, b, e)
    return string.format('{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}', dt, shape, b, e)
  end
  local cases = {
    { "short", "\1\0\0", "too short for the 8-byte header length" },
    { "header length", string.pack("<I8", 1 << 40) .. "{}", "header length 1099511627776 exceeds the 2 bytes" },
    { "not JSON", image("{oops", D8), "the header is not valid JSON" },
    { "not an object", image("[1,2]"), "the header is not a JSON object" },
    { "unknown dtype", image('{"a":' .. entry("F99", "2", 0, 8) .. "}", D8), "tensor 'a' has unknown dtype 'F99'" },
    { "integer dtype", image('{"a":' .. entry("I32", "2", 0, 8) .. "}", D8), "tensor 'a' has dtype I32" },
    { "shape/offset mismatch", image('{"a":' .. entry("F32", "3", 0, 8) .. "}", D8),
      "tensor 'a' of shape [3] and dtype F32 needs 12 bytes, its data_offsets give 8" },
    { "truncated data", image('{"a":' .. entry("F64", "2", 0, 16) .. "}", D8),
      "truncated data: tensor 'a' ends at byte 16, the data has 8" },
    { "overlap", image('{"a":' .. entry("F32", "2", 0, 8) .. ',"b":' .. entry("F32", "2", 4, 12) .. "}", D8 .. "1234"),
      "tensors 'a' and 'b' overlap" },
    { "gap", image('{"a":' .. entry("F32", "1", 4, 8) .. "}", D8), "bytes 0..4 of the data belong to no tensor" },
    { "trailing bytes", image('{"a":' .. entry("F32", "1", 0, 4) .. "}", D8), "4 bytes after the last tensor" },
    { "reversed offsets", image('{"a":' .. entry("F32", "0", 8, 0) .. "}", D8), "tensor 'a' has bad data_offsets" },
    { "negative dimension", image('{"a":' .. entry("F32", "-2", 0, 8) .. "}", D8), "tensor 'a' has a bad shape" },
    { "fractional offset", image('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.5]}}', D8), "bad data_offsets" },
    { "no shape", image('{"a":{"dtype":"F32","data_offsets":[0,4]}}', "1234"), "tensor 'a' has no shape array" },
    { "entry not an object", image('{"a":3}'), "entry 'a' is not an object" },
    { "metadata not strings", image('{"__metadata__":{"k":[1]}}'), "__metadata__ value of 'k' is not a string" },
    { "duplicate name", image('{"a":' .. entry("F32", "1", 0, 4) .. ',"a":' .. entry("F32", "1", 4, 8) .. "}", D8),
      "name 'a' appears twice" },
    { "too many dimensions", image('{"a":' .. entry("F32", "1,1,1,1,1,1,1,1,1,1,1,1,1", 0, 4) .. "}", "1234"),
      "13 dimensions, more than 12" },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local p = write_file(path("bad.safetensors"), c[2])
      raises(function() mg.load_tensors(p) end, "load_tensors: ", "'" .. p .. "'", c[3])
    end)
  end

  it("a missing file or a directory", function()
    raises(function() mg.load_tensors(path("nope.safetensors")) end,
      "load_tensors: cannot open '" .. path("nope.safetensors") .. "' (No such file or directory)")
    raises(function() mg.load_tensors(dir) end, "load_tensors: '" .. dir .. "' is not a regular file")
  end)
end)

describe("save_tensors arguments", function()
  it("names the bad key, value or option", function()
    raises(function() mg.save_tensors({ mg.zeros(1) }, path("x")) end, "save_tensors: the table's keys must be strings")
    raises(function() mg.save_tensors({ a = 1 }, path("x")) end, "save_tensors: 'a' is number, expected a tensor")
    raises(function() mg.save_tensors({ __metadata__ = mg.zeros(1) }, path("x")) end,
      "save_tensors: '__metadata__' cannot name a tensor")
    raises(function() mg.save_tensors({}, path("x"), { meta = {} }) end, "save_tensors: unknown option 'meta'")
    raises(function() mg.save_tensors({}, path("x"), { metadata = { a = 1 } }) end,
      "save_tensors: metadata must map strings to strings")
    raises(function() mg.save_tensors({}, dir .. "/no/such/dir/x") end, "save_tensors: cannot open")
  end)
end)

describe("save_tensors never destroys the previous file", function()
  it("a write cut by a file-size limit leaves the old file byte-identical, no temporary", function()
    local out = support.save_cut_short(dir, "save_tensors", "ckpt.safetensors", { a = mg.arange(5, F64) },
                                       "{ big = mg.zeros(10000, { dtype = 'float64' }) }")
    support.contains(out, "' (File too large)")
  end)
end)
