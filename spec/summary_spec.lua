-- TensorBoard event files (summary.c, lsummary.c, summary.lua): a log of scalars,
-- histograms (TensorFlow's default edges and uniform bins), images (a PNG of mg.plot and
-- tensors encoded through libpng) and text, read back three ways: by TensorBoard's own
-- EventAccumulator (the test venv), by an independent decoder (spec/summary_ref.py: its own
-- CRC32C over every record, google.protobuf with TensorBoard's field numbers, histograms
-- against numpy.histogram over the same edges) and by mg.summary.read; the file name
-- TensorBoard gives; buffering, flushing, a crash that loses only unflushed events; every
-- corruption raising an error that names the byte offset; bad arguments.
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises
local read_file, write_file, shq = support.read_file, support.write_file, support.shq

local dir = support.scratch(teardown)

local function f32(x) return (string.unpack("<f", string.pack("<f", x))) end

local function files(d)
  local out = {}
  local p = io.popen("ls -1 " .. shq(d) .. " 2>/dev/null")
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

-- Run summary_ref.py in 'mode' with 'py' on 'file'; its Lua table.
local function peer(py, mode, file, extra)
  local out, err = dir .. "/peer_" .. mode .. ".lua", dir .. "/peer_err.txt"
  local src = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/summary_ref.py"
  local cmd = string.format("%s %s %s %s %s %s 2>%s", py, shq(src), mode, shq(file), shq(out),
                            extra and shq(extra) or "", shq(err))
  local ok = os.execute(cmd)
  if not ok then error("summary_ref.py " .. mode .. " failed:\n" .. read_file(err), 2) end
  return dofile(out)
end

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

describe("a log TensorBoard reads", function()
  local logdir, path, expect, histos
  local png_path

  setup(function()
    logdir = dir .. "/run1"
    mg.manual_seed(7)
    expect = { scalars = {}, histograms = {}, images = {}, texts = {} }
    local listing = {}
    local w = mg.summary.writer(logdir, { flush_secs = 1000 })
    path = w:path()
    for step = 0, 9 do                                   -- 0: proto3 leaves it out; still step 0
      local v = math.sin(step) * 10 ^ (step - 4)
      w:scalar("loss", v, step, 1000 + step)
      w:scalar("metrics/accuracy", step / 10, step, 1000 + step)
      expect.scalars[#expect.scalars + 1] = { "loss", step, 1000 + step, f32(v) }
      expect.scalars[#expect.scalars + 1] = { "metrics/accuracy", step, 1000 + step, f32(step / 10) }
    end
    local function histo(tag, t, step, bins)
      w:histogram(tag, t, step, bins and { bins = bins } or nil)
      local npy = string.format("%s/h%d.npy", dir, #listing)
      mg.save(t, npy)
      listing[#listing + 1] = table.concat({ tag, step, bins or 0, npy }, "\t")
      expect.histograms[#expect.histograms + 1] = { tag, step, bins, t }
    end
    histo("weights/w", mg.randn(500), 1)
    histo("weights/w", mg.randn(40, 30, F64) * 1e-3, 2)   -- tiny values: the fine edges near 0
    histo("weights/w", mg.tensor { -1e15, 3e-13, 0, 0, 7 }, 3)
    histo("grads/uniform", mg.randn(1000), 1, 30)
    histo("grads/uniform", mg.rand(7, 11):transpose(1, 2), 2, 5)      -- a non-contiguous view
    histo("grads/uniform", mg.full({ 4 }, 2.5), 3, 4)     -- min == max: range min-0.5..max+0.5
    png_path = dir .. "/curve.png"
    mg.plot.lines({ { 1, 3, 2, 4 } }, { out = png_path, width = 320, height = 200 })
    w:image("plot/curve", png_path, 1)
    expect.images[#expect.images + 1] = { "plot/curve", 1, read_file(png_path) }
    local gray = mg.linspace(0, 1, 12):reshape(3, 4)
    w:image("img/gray", gray, 2)
    local rgb = mg.rand(5, 6, 3)
    w:image("img/rgb", rgb, 3)
    local function bytes(t)                              -- round(v * 255), row-major, channels last
      local out, flat = {}, t:contiguous():reshape(-1)
      for i = 1, flat:numel() do out[i] = math.floor(flat[i]:item() * 255 + 0.5) end
      return out
    end
    expect.pixels = { gray = bytes(gray), rgb = bytes(rgb) }
    w:text("notes", "hello **TensorBoard**, ünïcödé", 4)
    w:text("notes", "", 5)
    expect.texts = { { "notes", 4, "hello **TensorBoard**, ünïcödé" }, { "notes", 5, "" } }
    w:close()
    histos = dir .. "/histos.tsv"
    write_file(histos, table.concat(listing, "\n") .. "\n")
  end)

  it("is named as TensorBoard names its files", function()
    local name = path:match("[^/]+$")
    local host = io.popen("hostname"):read("l")
    local pid = read_file("/proc/self/stat"):match("^(%d+)")
    local t, h, p, n = name:match("^events%.out%.tfevents%.(%d+)%.(.+)%.(%d+)%.(%d+)$")
    assert.is_truthy(t, name)
    assert.are.equal(10, #t)
    assert.is_true(math.abs(tonumber(t) - os.time()) < 600)
    assert.are.equal(host, h)
    assert.are.equal(pid, p)
    assert.are.equal("0", n)
    assert.are.equal(logdir .. "/" .. name, path)
  end)

  local function check_peer(got, kind)
    assert.are.equal("brain.Event:2", got.file_version)
    local i = 0
    for _, e in ipairs(expect.scalars) do
      local list = assert(got.scalars[e[1]], kind .. ": no scalars " .. e[1])
      local found = false
      for _, s in ipairs(list) do
        if s[1] == e[2] then
          found = true
          assert.are.equal(e[3], s[2])
          assert.are.equal(e[4], s[3])
        end
      end
      assert.is_true(found, kind .. ": " .. e[1] .. " step " .. e[2])
      i = i + 1
    end
    assert.are.equal(10, #got.scalars.loss)
    assert.are.equal(3, #got.histograms["weights/w"])
    assert.are.equal(3, #got.histograms["grads/uniform"])
    for _, e in ipairs(expect.histograms) do
      local h
      for _, x in ipairs(got.histograms[e[1]]) do if x.step == e[2] then h = x end end
      assert.is_truthy(h, kind .. ": histogram " .. e[1] .. "@" .. e[2])
      assert.are.equal(e[4]:numel(), h.num)
      assert.are.equal(e[4]:min():item(), h.min)
      assert.are.equal(e[4]:max():item(), h.max)
      local total = 0
      for _, c in ipairs(h.bucket) do total = total + c end
      assert.are.equal(e[4]:numel(), total)
      if e[3] then assert.are.equal(e[3], #h.bucket) end
    end
    local img = got.images["plot/curve"][1]
    assert.are.equal(hex(expect.images[1][3]), img.hex)
    assert.are.equal(320, img.width)
    assert.are.equal(200, img.height)
    assert.are.equal(4, got.images["img/gray"][1].width)
    assert.are.equal(3, got.images["img/gray"][1].height)
    assert.are.equal(6, got.images["img/rgb"][1].width)
    assert.are.equal(5, got.images["img/rgb"][1].height)
    assert.are.same({ { 4, expect.texts[1][3] }, { 5, "" } }, got.texts.notes)
  end

  it("through TensorBoard's EventAccumulator, the tensors' PNGs decoding to their pixels", function()
    local got = peer(support.venv_python(), "tb", path)
    check_peer(got, "tensorboard")
    local g, c = got.images["img/gray"][1].pixels, got.images["img/rgb"][1].pixels
    assert.are.equal("L", g.mode)
    assert.are.equal("RGB", c.mode)
    assert.are.same(expect.pixels.gray, g.values)
    assert.are.same(expect.pixels.rgb, c.values)
    assert.are.equal(0, g.values[1])
    assert.are.equal(255, g.values[12])
    -- TensorBoard's server side: every tag under its plugin, the histograms whole
    assert.are.same({ "loss", "metrics/accuracy" }, got.plugins.scalars)
    assert.are.same({ "grads/uniform", "weights/w" }, got.plugins.histograms)
    assert.are.same({ "img/gray", "img/rgb", "plot/curve" }, got.plugins.images)
    assert.are.same({ "notes" }, got.plugins.text)
    assert.are.same({ 500, 1200, 5 }, got.plugin_histogram_counts["weights/w"])
    assert.are.same({ 1000, 77, 4 }, got.plugin_histogram_counts["grads/uniform"])
  end)

  it("through an independent decoder, histograms as numpy.histogram counts them", function()
    local got = peer("/usr/bin/python3", "pb", path, histos)
    check_peer(got, "decoder")
    assert.are.equal(1 + 20 + 6 + 3 + 2, got.records)
    assert.are.equal(6, got.numpy_checked)
    assert.are.same({}, got.numpy_mismatches)
    assert.are.equal(1, got.images["img/gray"][1].colorspace)
    assert.are.equal(3, got.images["img/rgb"][1].colorspace)
    -- the tensors' PNGs decode to the pixels written (through TensorBoard's own PNG reader
    -- would need TensorFlow; the decoder's bytes go to the PNG signature check here)
    assert.are.equal("89504e470d0a1a0a", got.images["img/rgb"][1].hex:sub(1, 16))
  end)

  it("and mg.summary.read round-trips every event", function()
    local ev = mg.summary.read(path)
    assert.are.equal(32, #ev)
    assert.are.equal("brain.Event:2", ev[1].file_version)
    assert.are.equal(0, ev[1].offset)
    assert.are.same({}, ev[1].values)
    local k = 2
    for step = 0, 9 do
      for _, tag in ipairs { "loss", "metrics/accuracy" } do
        local e = ev[k]
        assert.are.equal(step, e.step)
        assert.are.equal(1000 + step, e.wall_time)
        assert.are.equal(1, #e.values)
        assert.are.equal(tag, e.values[1].tag)
        assert.are.equal("scalar", e.values[1].kind)
        local want = tag == "loss" and math.sin(step) * 10 ^ (step - 4) or step / 10
        assert.are.equal(f32(want), e.values[1].value)
        k = k + 1
      end
    end
    for _, h in ipairs(expect.histograms) do
      local v = ev[k].values[1]
      assert.are.equal(h[2], ev[k].step)
      assert.are.equal(h[1], v.tag)
      assert.are.equal("histogram", v.kind)
      assert.are.equal(#v.bucket, #v.bucket_limit)
      local t = h[4]:to("float64")
      assert.are.equal(t:sum():item(), v.sum)
      assert.is_true(math.abs((t * t):sum():item() - v.sum_squares) <= 1e-12 * v.sum_squares)
      for i = 2, #v.bucket_limit do assert.is_true(v.bucket_limit[i] > v.bucket_limit[i - 1]) end
      k = k + 1
    end
    local img = ev[k].values[1]
    assert.are.equal("image", img.kind)
    assert.are.equal(read_file(png_path), img.png)
    assert.are.equal(320, img.width)
    assert.are.equal(200, img.height)
    k = k + 3
    assert.are.equal("text", ev[k].values[1].kind)
    assert.are.equal("text", ev[k].values[1].plugin)
    assert.are.equal(expect.texts[1][3], ev[k].values[1].text)
    assert.are.equal("", ev[k + 1].values[1].text)
    -- offsets: each record is 16 bytes of framing around its event
    local size = #read_file(path)
    assert.is_true(ev[#ev].offset < size and ev[2].offset > 0)
  end)

  it("the default edges are TensorFlow's", function()
    local ev = mg.summary.read(path)
    local v = ev[24].values[1]                           -- weights/w @3: -1e15, 3e-13, 0, 0, 7
    assert.are.equal(3, ev[24].step)
    assert.are.equal("weights/w", v.tag)
    local nonempty = {}
    for i, c in ipairs(v.bucket) do if c > 0 then nonempty[#nonempty + 1] = { v.bucket_limit[i], c } end end
    assert.are.equal(3, #nonempty)
    assert.is_true(nonempty[1][1] > -1e15 and nonempty[1][1] * 1.1 <= -1e15 * (1 - 1e-12))
    assert.are.same({ 1e-12, 3 }, nonempty[2])           -- 0, 0, 3e-13: [0, 1e-12)
    assert.is_true(nonempty[3][1] > 7 and nonempty[3][1] <= 7 * 1.1 * (1 + 1e-12))
    -- runs of empty buckets are one bucket each, as TensorFlow's EncodeToProto makes them
    for i = 2, #v.bucket do assert.is_false(v.bucket[i] == 0 and v.bucket[i - 1] == 0) end
    assert.is_true(#v.bucket <= 7)
  end)
end)

describe("writing", function()
  local function events(p) return mg.summary.read(p) end

  it("buffers events until flush_secs, flush() or close", function()
    local w = mg.summary.writer(dir .. "/buf", { flush_secs = 1000 })
    local p = w:path()
    assert.are.equal(1, #events(p))                      -- the file version, flushed at once
    w:scalar("a", 1, 1)
    w:scalar("a", 2, 2)
    assert.are.equal(1, #events(p))
    w:flush()
    assert.are.equal(3, #events(p))
    w:scalar("a", 3, 3)
    assert.are.equal(3, #events(p))
    w:close()
    assert.are.equal(4, #events(p))
    assert.is_true(w:closed())
    w:close()                                            -- again: nothing
    assert.are.equal(4, #events(p))
    local w0 = mg.summary.writer(dir .. "/buf0", { flush_secs = 0 })
    w0:scalar("b", 1, 1)
    assert.are.equal(2, #events(w0:path()))              -- flush_secs 0: every event
    w0:close()
  end)

  it("closes in a <close> block and when collected", function()
    local p
    do
      local w <close> = mg.summary.writer(dir .. "/cl", { flush_secs = 1000 })
      w:scalar("x", 1, 1)
      p = w:path()
    end
    assert.are.equal(2, #events(p))
    local w = mg.summary.writer(dir .. "/gc", { flush_secs = 1000 })
    w:text("t", "kept", 1)
    local q = w:path()
    w = nil                                              -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    local ev = events(q)
    assert.are.equal(2, #ev)
    assert.are.equal("kept", ev[2].values[1].text)
  end)

  it("a crash loses only the unflushed events", function()
    local script = dir .. "/crash.lua"
    local logd = dir .. "/crash"
    write_file(script, string.format([[
      package.cpath = %q .. ";" .. package.cpath
      local mg = require "moongrad"
      local w = mg.summary.writer(%q, { flush_secs = 1000 })
      io.write(w:path())
      for i = 1, 5 do w:scalar("s", i, i) end
      w:flush()
      for i = 6, 9 do w:histogram("h", mg.randn(100), i) end
      os.exit(3, false)                                  -- no close, no finalizers
    ]], package.cpath, logd))
    local p = io.popen("lua5.4 " .. shq(script))
    local path = p:read("a")
    local _, _, code = p:close()
    assert.are.equal(3, code)
    local ev = events(path)
    assert.are.equal(6, #ev)
    assert.are.equal(5, ev[6].step)
  end)

  it("flushes at the first event flush_secs after the last flush", function()
    local w = mg.summary.writer(dir .. "/timer", { flush_secs = 1 })
    w:scalar("a", 1, 1)
    assert.are.equal(1, #events(w:path()))
    os.execute("sleep 1.2")
    w:scalar("a", 2, 2)                                  -- due: both go out
    assert.are.equal(3, #events(w:path()))
    w:scalar("a", 3, 3)
    assert.are.equal(3, #events(w:path()))
    w:close()
  end)

  it("a failed write is cut back to the last whole record (file-size limit)", function()
    local script, logd = dir .. "/fsize.lua", dir .. "/fsize"
    write_file(script, string.format([[
      package.cpath = %q .. ";" .. package.cpath
      local mg = require "moongrad"
      local w = mg.summary.writer(%q, { flush_secs = 1000 })
      for i = 1, 10 do w:scalar("s", i, i) end
      w:flush()
      w:scalar("s", 11, 11)
      w:histogram("big", mg.randn(20000), 12, { bins = 2000 })   -- 32 KiB of buckets
      w:scalar("s", 13, 13)
      local ok, err = pcall(w.flush, w)
      print(w:path())
      print(ok, err)
      ok, err = pcall(w.close, w)                         -- tries the pending records again
      print(ok, err)
    ]], package.cpath, logd))
    -- 8 KiB limit (bash counts 1024-byte blocks), SIGXFSZ ignored so write() fails with EFBIG
    local p = io.popen("bash -c " .. shq("trap '' XFSZ; ulimit -f 8; exec lua5.4 " .. shq(script)) .. " 2>&1")
    local out = p:read("a")
    assert.is_true(p:close(), out)
    local path = out:match("^(%S+)\n")
    assert.is_truthy(out:find("false\tsummary.flush: error writing '" .. path .. "' (File too large)", 1, true), out)
    assert.is_truthy(out:find("false\tsummary.close: error writing", 1, true), out)
    local ev = events(path)                              -- readable: 1 + 10 flushed + 11 (whole)
    assert.are.equal(12, #ev)
    assert.are.equal(11, ev[12].step)
  end)

  it("two writers in one directory get two files", function()
    local a = mg.summary.writer(dir .. "/two")
    local b = mg.summary.writer(dir .. "/two", { filename_suffix = ".eval" })
    local c = mg.summary.writer(dir .. "/two")
    assert.are_not.equal(a:path(), c:path())
    assert.is_truthy(b:path():match("%.eval$"))
    a:close(); b:close(); c:close()
    assert.are.equal(3, #files(dir .. "/two"))
    assert.is_truthy(tostring(a):match("^SummaryWriter '.*' %(closed%)$"))
  end)

  it("creates the log directory and its parents", function()
    local w = mg.summary.writer(dir .. "/deep/er/logs//")
    assert.are.equal(1, #files(dir .. "/deep/er/logs"))
    assert.is_truthy(w:path():find(dir .. "/deep/er/logs/events.out.tfevents.", 1, true))
    w:close()
  end)
end)

describe("reading a damaged file", function()
  local good
  setup(function()
    local w = mg.summary.writer(dir .. "/damage")
    w:scalar("a", 1, 1)
    w:histogram("h", mg.randn(50), 2)
    w:text("t", "text", 3)
    w:close()
    good = read_file(w:path())
  end)

  local function damaged(bytes)
    local p = dir .. "/damaged"
    write_file(p, bytes)
    return p
  end

  local function offsets()
    local out, off = {}, 0
    while off < #good do
      out[#out + 1] = off
      off = off + 16 + string.unpack("<I8", good, off + 1)
    end
    return out
  end

  it("raises at every truncation, naming the offset of the record cut", function()
    local offs = offsets()
    assert.are.equal(4, #offs)
    for cut = 1, #good - 1 do
      local rec = 0
      for _, o in ipairs(offs) do if o < cut then rec = o end end
      local p = damaged(good:sub(1, cut))
      if cut == offs[2] or cut == offs[3] or cut == offs[4] then
        assert.are.equal(cut == offs[2] and 1 or cut == offs[3] and 2 or 3, #mg.summary.read(p))
      else
        support.assert_error("summary.read: '" .. p .. "': truncated record at byte offset " .. rec .. " ",
          mg.summary.read, p)
      end
    end
  end)

  it("raises on every flipped bit, naming the offset and what does not match", function()
    local offs = offsets()
    for i = 1, #good do
      for _, bit in ipairs { (i * 3) % 8 } do               -- every bit position over the bytes
        local b = good:byte(i) ~ (1 << bit)
        local p = damaged(good:sub(1, i - 1) .. string.char(b) .. good:sub(i + 1))
        local rec = 0
        for _, o in ipairs(offs) do if o < i then rec = o end end
        local pos = i - 1 - rec                          -- 0-based within its record
        local ok, err = pcall(mg.summary.read, p)
        assert.is_false(ok, "flipped bit " .. bit .. " of byte " .. i .. " was not noticed")
        local at = "at byte offset " .. rec .. ": "
        if pos < 12 then
          -- the length's CRC catches length and CRC bits alike
          assert.is_truthy(err:find(at .. "the length's CRC does not match", 1, true), err)
        else
          assert.is_truthy(err:find(at .. "the data's CRC does not match", 1, true), err)
        end
      end
    end
  end)

  -- CRC32C and TFRecord's mask, in Lua: records with valid framing around bad events
  local function crc32c(str)
    local c = 0xffffffff
    for i = 1, #str do
      c = c ~ str:byte(i)
      for _ = 1, 8 do c = (c & 1 == 1) and ((c >> 1) ~ 0x82f63b78) or (c >> 1) end
    end
    return c ~ 0xffffffff
  end
  local function masked(c) return ((((c >> 15) | (c << 17)) & 0xffffffff) + 0xa282ead8) & 0xffffffff end
  local function record(body)
    local len = string.pack("<I8", #body)
    return len .. string.pack("<I4", masked(crc32c(len))) .. body .. string.pack("<I4", masked(crc32c(body)))
  end

  it("raises on a well-framed record that is not an Event", function()
    assert.are.equal(good:sub(1, 40), record(good:sub(13, 36)))   -- the Lua CRC agrees with the file
    local p = damaged(good .. record("\255\255\255"))           -- a varint that never ends
    support.assert_error("summary.read: '" .. p .. "': event at byte offset " .. #good ..
      " is not a valid Event message", mg.summary.read, p)
    -- a histogram whose bucket and bucket_limit differ in length
    local histo = "\x32\x08" .. string.pack("<d", 1)   -- bucket_limit {1} (packed), no buckets
    local value = "\x0a\x01h" .. "\x2a" .. string.char(#histo) .. histo
    local summ = "\x0a" .. string.char(#value) .. value
    p = damaged(good .. record("\x2a" .. string.char(#summ) .. summ))
    support.assert_error("event at byte offset " .. #good .. ": histogram 'h' has 1 bucket limits but 0 buckets",
      mg.summary.read, p)
    support.assert_error("summary.read: cannot open", mg.summary.read, dir .. "/nope")
    local ok, err = pcall(function() mg.summary.read(p) end)
    assert.is_false(ok)
    assert.is_truthy(err:match("summary_spec%.lua:%d+: summary%.read: "), err)   -- the user's line
  end)
end)

describe("bad arguments", function()
  local w
  setup(function() w = mg.summary.writer(dir .. "/bad") end)
  teardown(function() w:close() end)

  it("raise errors that name the function", function()
    support.assert_error("summary.writer: expected a directory name", mg.summary.writer, 3)
    support.assert_error("summary.writer: unknown option 'flush'", mg.summary.writer, dir, { flush = 1 })
    support.assert_error("summary.writer: flush_secs must be a finite number >= 0", mg.summary.writer, dir, { flush_secs = -1 })
    support.assert_error("summary.writer: filename_suffix '/x' contains a '/'", mg.summary.writer, dir, { filename_suffix = "/x" })
    write_file(dir .. "/afile", "x")
    support.assert_error("summary.writer: cannot create directory", mg.summary.writer, dir .. "/afile/sub")
    support.assert_error("summary.scalar: the tag is empty", w.scalar, w, "", 1, 1)
    support.assert_error("bad argument #3 to 'scalar' (number has no integer representation)",
      function() w:scalar("a", 1, 1.5) end)
    support.assert_error("summary.histogram: element 2 is nan", w.histogram, w, "h", mg.tensor { 1, 0 / 0 }, 1)
    support.assert_error("summary.histogram: element 1 is inf", w.histogram, w, "h", mg.tensor { math.huge }, 1)
    support.assert_error("summary.histogram: bins must be an integer in [1, 1000000], got 0", w.histogram, w, "h", mg.ones(3), 1, { bins = 0 })
    support.assert_error("summary.image: image values must lie in [0, 1], element 2 is 1.5", w.image, w, "i", mg.tensor { { 0, 1.5 } }, 1)
    support.assert_error("summary.image: an image tensor has shape (H, W) or (H, W, C) with C 1, 3 or 4, got (2,2,2)", w.image, w, "i", mg.zeros(2, 2, 2), 1)
    support.assert_error("summary.image: an image tensor has shape", w.image, w, "i", mg.zeros(4), 1)
    write_file(dir .. "/not.png", "GIF89a not a png at all, really not at all")
    support.assert_error("summary.image: not a PNG file", w.image, w, "i", dir .. "/not.png", 1)
    support.assert_error("summary.image: cannot read", w.image, w, "i", dir .. "/missing.png", 1)
    support.assert_error("bad argument #2 to 'image' (expected the path of a PNG file or an image tensor)",
      function() w:image("i", 5, 1) end)
    support.assert_error("summary.parameters: grads must be an array of 1 tensors", w.parameters, w, { mg.ones(2) }, 1, { grads = {} })
    support.assert_error("summary.scalars: expected string keys", w.scalars, w, { 1 }, 1)
    local c = mg.summary.writer(dir .. "/bad2")
    c:close()
    support.assert_error("summary.scalar: the writer is closed", c.scalar, c, "a", 1, 1)
    support.assert_error("summary.flush: the writer is closed", c.flush, c)
    -- nothing bad reached the file
    w:flush()
    assert.are.equal(1, #mg.summary.read(w:path()))
  end)

  it("parameters and scalars write what a training loop logs", function()
    local p = dir .. "/fit"
    local lw = mg.summary.writer(p)
    local k = mg.Variable(mg.randn(3, 4), "dense/kernel")
    local b = mg.Variable(mg.zeros(4))
    lw:parameters({ k, b }, 7, { grads = { mg.ones(3, 4), mg.ones(4) }, bins = 3 })
    lw:scalars({ loss = 0.25, accuracy = 0.5 }, 7, "epoch/")
    lw:close()
    local ev = mg.summary.read(lw:path())
    local tags = {}
    for i = 2, #ev do tags[#tags + 1] = ev[i].values[1].tag .. "@" .. ev[i].step end
    assert.are.same({ "weights/dense/kernel@7", "gradients/dense/kernel@7", "weights/param2@7",
      "gradients/param2@7", "epoch/accuracy@7", "epoch/loss@7" }, tags)
    assert.are.equal(3, #ev[2].values[1].bucket)
  end)
end)

describe("other writers' files", function()
  it("mg.summary.read reads what TensorBoard's own EventFileWriter writes", function()
    local d = dir .. "/tbwritten"
    local src = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/summary_ref.py"
    assert.is_true(os.execute(string.format("%s %s write %s 2>%s", support.venv_python(), shq(src), shq(d),
      shq(dir .. "/w.err"))) == true, read_file(dir .. "/w.err"))
    local names = files(d)
    assert.are.equal(1, #names)
    assert.is_truthy(names[1]:match("^events%.out%.tfevents%.%d+%."))
    local ev = mg.summary.read(d .. "/" .. names[1])
    assert.are.equal("brain.Event:2", ev[1].file_version)
    assert.are.equal(10, #ev)
    for step = 0, 2 do
      assert.are.equal(step, ev[2 + step].step)
      assert.are.equal(100 + step, ev[2 + step].wall_time)
      assert.are.same({ tag = "tb/scalar", kind = "scalar", value = 0.25 * step }, ev[2 + step].values[1])
    end
    local h = ev[5].values[1]
    assert.are.same({ 0, 1, 2 }, h.bucket_limit)
    assert.are.same({ 1, 1, 1 }, h.bucket)
    assert.are.same({ -1, 2, 3, 1, 6 }, { h.min, h.max, h.num, h.sum, h.sum_squares })
    assert.are.equal("written by TensorBoard", ev[6].values[1].text)
    -- TensorFlow 2's scalars: 0-d float tensors with the "scalars" plugin's metadata
    for i, want in ipairs { f32(0.75), 1 / 3, 2.5, 0.125 } do
      assert.are.same({ tag = "tf2/scalar", kind = "scalar", plugin = "scalars", value = want }, ev[6 + i].values[1])
      assert.are.equal(8 + i, ev[6 + i].step)
    end
  end)
end)

describe("summary.callback", function()
  -- the protocol of nn.fit's callbacks, driven by hand: methods on the callback table
  local function run(cb, epochs, batches, params)
    cb:on_train_begin({ history = {} })
    for epoch = 1, epochs do
      for b = 1, batches do
        local grads = {}
        for i, p in ipairs(params) do grads[i] = mg.ones(table.unpack(p:shape())) * b end
        cb:on_batch_end(b, { loss = 1 / (epoch * b), params = params, grads = grads, size = 4, epoch = epoch })
      end
      cb:on_epoch_end(epoch, { loss = 1 / epoch, val_loss = 2 / epoch, val_accuracy = 0.5, history = {} })
    end
    cb:on_train_end({ history = {} })
  end

  local function tags_of(d)
    local names = files(d)
    assert.are.equal(1, #names)
    local by = {}
    for i, e in ipairs(mg.summary.read(d .. "/" .. names[1])) do
      if i > 1 then
        local v = e.values[1]
        by[v.tag] = by[v.tag] or {}
        table.insert(by[v.tag], { e.step, v })
      end
    end
    return by
  end

  it("logs as Keras's TensorBoard callback lays logs out: train and validation runs", function()
    local d = dir .. "/cb"
    local params = { mg.Variable(mg.randn(3, 2), "dense/kernel"), mg.Variable(mg.zeros(2), "dense/bias") }
    run(mg.summary.callback(d, { histogram_freq = 3 }), 2, 4, params)
    local tr, va = tags_of(d .. "/train"), tags_of(d .. "/validation")
    assert.are.equal(8, #tr.batch_loss)
    assert.are.equal(8, tr.batch_loss[8][1])
    assert.are.equal(f32(1 / 8), tr.batch_loss[8][2].value)
    assert.are.same({ 1, 2 }, { tr.epoch_loss[1][1], tr.epoch_loss[2][1] })
    assert.are.equal(0.5, tr.epoch_loss[2][2].value)
    assert.are.equal(2, #tr["weights/dense/kernel"])            -- steps 3 and 6
    assert.are.same({ 3, 6 }, { tr["gradients/dense/bias"][1][1], tr["gradients/dense/bias"][2][1] })
    assert.are.equal(4, tr["gradients/dense/bias"][2][2].sum)    -- step 6: epoch 2, batch 2: ones(2) * 2
    assert.are.same({ 1, 2 }, { va.epoch_loss[1][1], va.epoch_loss[2][1] })
    assert.are.equal(1, va.epoch_loss[2][2].value)
    assert.are.equal(2, #va.epoch_accuracy)
    assert.is_nil(tr.epoch_size)
  end)

  it("checks its options", function()
    support.assert_error("summary.callback: histogram_freq must be an integer >= 0, got -1",
      mg.summary.callback, dir, { histogram_freq = -1 })
    support.assert_error("summary.callback: unknown option 'histogram'", mg.summary.callback, dir, { histogram = 1 })
    support.assert_error("summary.callback: expected a directory name", mg.summary.callback, nil)
  end)
end)
