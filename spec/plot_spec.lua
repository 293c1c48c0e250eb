-- mg.plot (bindings/moongrad/plot.lua): every call on every accepted input rank, written as
-- .png, .svg, .pdf, .txt and to standard output; what the pictures hold (heatmap colours and
-- orientation, symmetric axes, reflected halves, the data that reaches gnuplot); every user
-- mistake and its message; that no temporary file is left behind; that a failed or empty
-- picture (a fake gnuplot, a file-size limit, an unwritable directory) never replaces the
-- previous one; and that the pictures are fit for a paper (no text past the canvas, in PNGs
-- decoded with Python's zlib; a colour box on every heatmap; text heatmaps that lose no
-- timestep and have equal panels). Drawing needs gnuplot:
-- without it those tests are pending and only the errors (missing gnuplot included) run.
local mg = require "moongrad"
local plot = require "moongrad.plot"
local support = require "support"

local HAVE_GNUPLOT = os.execute("command -v gnuplot >/dev/null 2>&1") == true
local F64 = support.F64

local function need_gnuplot()
  if HAVE_GNUPLOT then return true end
  pending("gnuplot is not installed (apt-get install gnuplot-nox)")
  return false
end

---------------------------------------------------------------- helpers

local outdir                         -- a fresh directory for this run's pictures

local shq, read = support.shq, support.read_file

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function merge(a, b)
  local r = {}
  for k, v in pairs(a or {}) do r[k] = v end
  for k, v in pairs(b or {}) do r[k] = v end
  return r
end

-- The message of the error 'fn' raises (fails the test if it raises none).
local function err_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(e)
end

local function has(text, sub)
  assert(text:find(sub, 1, true), string.format("%q not found in:\n%s", sub, text))
end

local function has_error(fn, sub)
  has(err_of(fn), sub)
end

-- Runs 'fn' with io.output redirected to a file; returns fn's result and what was written.
local function capture(fn)
  local path = outdir .. "/stdout.capture"
  io.output(path)
  local ok, res = pcall(fn)
  io.output():close()
  io.output(io.stdout)
  local text = read(path)
  os.remove(path)
  assert(ok, res)
  return res, text
end

-- Runs 'fn' with io.stderr replaced; returns fn's result and what went to io.stderr.
local function stderr_of(fn)
  local real, got = io.stderr, {}
  io.stderr = { write = function(self, ...)                      -- luacheck: ignore
    for i = 1, select("#", ...) do got[#got + 1] = select(i, ...) end
    return self
  end }
  local ok, res = pcall(fn)
  io.stderr = real                                                -- luacheck: ignore
  assert(ok, res)
  return res, table.concat(got)
end

-- Runs 'fn' and checks that gnuplot had no warning for it.
local function quiet(fn)
  local res, warnings = stderr_of(fn)
  assert.are.equal("", warnings)
  return res
end

local function check_png(path, w, h)
  local s = read(path)
  assert.are.equal("\137PNG\r\n\26\n", s:sub(1, 8))
  assert.are.equal("IHDR", s:sub(13, 16))
  local pw, ph = string.unpack(">I4I4", s, 17)
  assert.are.same({ w, h }, { pw, ph })
  assert.is_true(#s > 2000, "suspiciously small png: " .. #s .. " bytes")
end

local function check_svg(path, expect)
  local s = read(path)
  assert.is_truthy(s:find("^%s*<%?xml") or s:find("^%s*<svg"))
  has(s, "</svg>")
  for _, e in ipairs(expect) do has(s, e) end
end

local function check_pdf(path)
  local s = read(path)
  assert.are.equal("%PDF-", s:sub(1, 5))
  assert.is_truthy(s:find("%%EOF", #s - 64, true))
end

---------------------------------------------------------------- every call, every output

mg.manual_seed(7)
local T, C, B = 16, 6, 4
local G3 = mg.randn(B, T, C) * 0.01
local G2 = mg.randn(T, C, F64)

-- Each case draws with the given extra options and names strings the picture must show.
local CASES = {
  { "lines, 1-d tensor", function(o)
      return plot.lines(mg.sin(mg.linspace(0, 6, 40)),
                        merge({ title = "sine wave", xlabel = "step", ylabel = "amplitude" }, o))
    end, { "sine wave", "step", "amplitude" } },
  { "lines, 2-d tensor (one line per row)", function(o)
      return plot.lines(mg.randn(3, 20), merge({ title = "three rows" }, o))
    end, { "three rows", "index", "value", "line 1", "line 3" } },
  { "lines, strided float64 2-d tensor with labels", function(o)
      return plot.lines(mg.randn(20, 2, F64):transpose(1, 2),
                        merge({ labels = { "fwd-series", "bwd-series" } }, o))
    end, { "2 lines: values vs. index", "fwd-series", "bwd-series" } },
  { "lines, Lua arrays and a mix of tensors of any length", function(o)
      return plot.lines({ { 1, 2, 3 }, { 3, 1 }, mg.tensor{ 4, 5, 6, 7 }, mg.ones(2, 5) }, o)
    end, { "5 lines: values vs. index", "line 5" } },
  { "lines, x values and logy", function(o)
      return plot.lines({ 1, 10, 100, 1000 }, merge({ x = mg.tensor{ 2, 4, 6, 8 }, logy = true,
                                                     title = "log growth" }, o))
    end, { "log growth", "value" } },
  { "scatter, tensors", function(o)
      return plot.scatter(mg.randn(50), mg.randn(50, F64), merge({ title = "cloud",
                          xlabel = "input", ylabel = "output" }, o))
    end, { "cloud", "input", "output" } },
  { "scatter, Lua arrays", function(o)
      return plot.scatter({ 1, 2, 3 }, { 3, 1, 2 }, o)
    end, { "y vs. x (3 points)" } },
  { "histogram, 1-d tensor", function(o)
      return plot.histogram(mg.randn(200), merge({ bins = 12 }, o))
    end, { "Histogram of 200 values, 12 bins", "count" } },
  { "histogram, 3-d tensor and non-finite values", function(o)
      local t = mg.randn(2, 3, 5)
      t:set(0 / 0, 1, 1, 1)
      t:set(1 / 0, 2, 3, 5)
      return plot.histogram(t, merge({ bins = 4 }, o))
    end, { "Histogram of 28 values, 4 bins (2 non-finite left out)" } },
  { "histogram, Lua array", function(o)
      return plot.histogram({ 1, 1, 2, 3, 5, 8 }, merge({ range = { 0, 10 }, bins = 5 }, o))
    end, { "Histogram of 6 values, 5 bins" } },
  { "heatmap, 2-d tensor", function(o)
      return plot.heatmap(mg.randn(4, 6), o)
    end, { "Heatmap of a 4x6 matrix", "column", "row" } },
  { "heatmap, strided tensor, viridis and norm", function(o)
      return plot.heatmap(mg.randn(6, 4, F64):transpose(1, 2),
                          merge({ cmap = "viridis", norm = { -3, 3 }, title = "W_hh" }, o))
    end, { "W_hh, norm=(-3, 3)" } },
  { "heatmap, one row as a Lua array", function(o)
      return plot.heatmap({ { -1, 0, 1 } }, o)
    end, { "Heatmap of a 1x3 matrix" } },
  { "spectrum, an array of a tensor and a Lua array, with labels", function(o)
      return plot.spectrum({ mg.tensor { -0.5, 0.1, -2 }, { 1, 3, 2, 0.5 } },
                           merge({ labels = { "before", "after" }, title = "Lyapunov spectra" }, o))
    end, { "Lyapunov spectra", "before", "after", "i (descending)", "value" } },
  { "spectrum, 2-d tensor (one per row), styles and logy", function(o)
      return plot.spectrum(mg.rand(2, 50, F64) + 0.1, merge({ styles = { "points", "lines" }, logy = true }, o))
    end, { "2 spectra (each sorted, descending)", "spectrum 1", "spectrum 2" } },
  { "spectrum_bands, (K, B, N) singular values", function(o)
      return plot.spectrum_bands(mg.rand(12, 3, 5) + 0.01, merge({ title = "singular values over k" }, o))
    end, { "singular values over k", "log10 value", "k" } },
  { "spectrum_bands, 2-d, own quantiles and x, log10 = false", function(o)
      return plot.spectrum_bands(mg.randn(6, 40), merge({ quantiles = { 0.9, 0.1, 0.5 }, log10 = false,
                                                          x = { 10, 8, 6, 4, 2, 0 }, xlabel = "horizon" }, o))
    end, { "Spectrum over k: quantiles of each row", "horizon", "value" } },
  { "features_1d, (T, C)", function(o)
      return plot.features_1d(G2, merge({ n_rows = 2 }, o))
    end, { "(Gradients vs. Timesteps) vs. Channels", "Gradients, channel 6", "timestep" } },
  { "features_1d, (B, T, C)", function(o)
      return plot.features_1d(G3, merge({ n_rows = 3, name = "dL/dh_t" }, o))
    end, { "((dL/dh_t vs. Timesteps) vs. Samples) vs. Channels", "dL/dh_t, channel 3" } },
  { "features_2d, (B, T, C)", function(o)
      return plot.features_2d(G3, merge({ n_rows = 2, norm = { -0.01, 0.01 } }, o))
    end, { "norm=(-0.01, 0.01)", "sample 4", "timestep", "channel" } },
  { "features_2d, (T, C) reflected", function(o)
      return plot.features_2d(G2, merge({ reflect_half = true, title = "bi-GRU" }, o))
    end, { "bi-GRU", "reflected in time" } },
  { "features_0d, (B, C)", function(o)
      return plot.features_0d(mg.randn(16, C), o)
    end, { "(Gradients vs. Samples) vs. Channels", "sample" } },
  { "gnuplot, raw script with a datablock", function(o)
      return plot.gnuplot('set title "raw sine"\nplot $d using 1:2 with lines notitle\n',
                          { d = mg.stack({ mg.linspace(0, 6, 30),
                                           mg.sin(mg.linspace(0, 6, 30)) }, 2) }, o)
    end, { "raw sine" } },
}

describe("plot outputs", function()
  setup(function() outdir = support.tmpdir() end)
  teardown(function() support.rmtree(outdir) end)

  for i, case in ipairs(CASES) do
    local name, draw, expect = case[1], case[2], case[3]
    local base = string.format("%%s/case%02d", i)

    it(name .. ": .png", function()
      if not need_gnuplot() then return end
      local path = string.format(base, outdir) .. ".png"
      local res = quiet(function() return draw{ out = path, width = 700, height = 460 } end)
      assert.are.equal(path, res)
      check_png(path, 700, 460)
    end)

    it(name .. ": .svg", function()
      if not need_gnuplot() then return end
      local path = string.format(base, outdir) .. ".svg"
      assert.are.equal(path, quiet(function() return draw{ out = path } end))
      check_svg(path, expect)
    end)

    it(name .. ": .pdf", function()
      if not need_gnuplot() then return end
      local path = string.format(base, outdir) .. ".PDF"           -- extensions in any case
      assert.are.equal(path, quiet(function() return draw{ out = path } end))
      check_pdf(path)
    end)

    it(name .. ": .txt", function()
      if not need_gnuplot() then return end
      local path = string.format(base, outdir) .. ".txt"
      assert.are.equal(path, quiet(function() return draw{ out = path } end))
      local text = read(path)
      for _, e in ipairs(expect) do has(text, e) end
      assert.is_nil(text:find("\27", 1, true))                   -- plain text, no escapes
    end)

    it(name .. ": standard output", function()
      if not need_gnuplot() then return end
      local res, text = capture(function() return quiet(function() return draw{} end) end)
      assert.is_nil(res)
      for _, e in ipairs(expect) do has(text, e) end
      assert.is_truthy(#text > 200)
    end)
  end
end)

---------------------------------------------------------------- what the pictures hold

-- The filled cells of an svg heatmap: { r, g, b, x, y } (first corner), in drawing order.
local function svg_cells(path)
  local cells = {}
  for r, g, b, x, y in read(path):gmatch("fill = 'rgb%(%s*(%d+),%s*(%d+),%s*(%d+)%)' "
                                         .. "points = '([%d.]+),([%d.]+)") do
    cells[#cells + 1] = { tonumber(r), tonumber(g), tonumber(b), tonumber(x), tonumber(y) }
  end
  return cells
end

-- The text inside the plot frames of dumb-terminal output, one string per line.
local function frame_rows(text)
  local rows = {}
  for line in text:gmatch("[^\n]+") do
    local inner = line:match("|(.-)|")
    if inner then rows[#rows + 1] = inner end
  end
  return rows
end

describe("plot content", function()
  setup(function() outdir = support.tmpdir() end)
  teardown(function() support.rmtree(outdir) end)

  it("heatmap: bwr from blue through white to red, left to right, range +-max|v|", function()
    if not need_gnuplot() then return end
    local path = outdir .. "/bwr.svg"
    plot.heatmap(mg.tensor{ { -2, 0, 2 } }, { out = path, colorbar = false })
    local cells = svg_cells(path)
    assert.are.equal(3, #cells)
    table.sort(cells, function(a, b) return a[4] < b[4] end)
    assert.are.same({ 0, 0, 255 }, { cells[1][1], cells[1][2], cells[1][3] })
    assert.are.same({ 255, 255, 255 }, { cells[2][1], cells[2][2], cells[2][3] })
    assert.are.same({ 255, 0, 0 }, { cells[3][1], cells[3][2], cells[3][3] })
    has(read(path), "norm=(-2, 2)")
  end)

  it("heatmap: norm widens the range (pale colours), row 1 is drawn at the top", function()
    if not need_gnuplot() then return end
    local path = outdir .. "/norm.svg"
    plot.heatmap({ { -1 }, { 1 } }, { out = path, colorbar = false, norm = { -10, 10 } })
    local cells = svg_cells(path)
    assert.are.equal(2, #cells)
    local neg, pos = cells[1], cells[2]
    if neg[3] < neg[1] then neg, pos = pos, neg end                -- the bluish one is -1
    assert.is_true(neg[1] > 200 and neg[3] == 255, "pale blue for -1")
    assert.is_true(pos[1] == 255 and pos[3] > 200, "pale red for 1")
    assert.is_true(neg[5] < pos[5], "row 1 (value -1) above row 2")
  end)

  it("heatmap: sequential maps span min..max (viridis ends)", function()
    if not need_gnuplot() then return end
    local path = outdir .. "/viridis.svg"
    plot.heatmap({ { 0, 5, 10 } }, { out = path, colorbar = false, cmap = "viridis" })
    local cells = svg_cells(path)
    table.sort(cells, function(a, b) return a[4] < b[4] end)
    assert.are.same({ 0x44, 0x01, 0x54 }, { cells[1][1], cells[1][2], cells[1][3] })
    assert.are.same({ 0xfd, 0xe7, 0x25 }, { cells[3][1], cells[3][2], cells[3][3] })
  end)

  it("heatmap in text: a character ramp, explained in the title", function()
    if not need_gnuplot() then return end
    local _, text = capture(function()
      return plot.heatmap({ { -1, 1 }, { 1, -1 } }, { width = 60, height = 20 })
    end)
    has(text, "text shading: -1 #=-. 0 '+*@ 1")
    local rows = frame_rows(text)
    assert.is_true(#rows > 4)
    local first = rows[2]
    assert.is_truthy(first:find("#", 1, true) and first:find("@", 1, true))
    assert.is_true(first:find("#", 1, true) < first:find("@", 1, true))   -- -1 left of 1
  end)

  it("features_1d: equal y axes, symmetric about 0", function()
    if not need_gnuplot() then return end
    local g = mg.tensor{ { 0.5, -2 }, { 1, 0.25 }, { 0, 0 } }      -- (T=3, C=2), max |g| = 2
    local _, text = capture(function() return plot.features_1d(g, { n_rows = 1 }) end)
    local tics = {}
    for line in text:gmatch("[^\n]+") do
      local lead = line:match("^%s*(%-?[%d.]+) [+|]")
      if lead then tics[#tics + 1] = tonumber(lead) end
    end
    assert.is_true(#tics >= 3)
    table.sort(tics)
    assert.is_true(tics[#tics] >= 2 and tics[#tics] <= 2.5, "the range is about max |g|")
    assert.are.equal(-tics[1], tics[#tics])
    -- each panel of the row shows the same tics: both frames on a line start at one label
    local both = 0
    for line in text:gmatch("[^\n]+") do
      local a, b = line:match("^%s*(%-?[%d.]+) [+|].-%s(%-?[%d.]+) [+|]")
      if a then both = both + 1 assert.are.equal(a, b) end
    end
    assert.is_true(both >= 3)
  end)

  it("features_1d: each panel draws its channel, on one y scale", function()
    if not need_gnuplot() then return end
    local path = outdir .. "/channels.svg"
    plot.features_1d(mg.tensor{ { 1, 0 }, { -1, 0 }, { 0.5, 0 } }, { out = path, n_rows = 1 })
    local paths = {}
    for d in read(path):gmatch("<path stroke='rgb%([^)]*%)'%s*d='([^']*)'") do
      local ys = {}
      for y in d:gmatch("[%d.]+,([%d.]+)") do ys[#ys + 1] = tonumber(y) end
      paths[#paths + 1] = ys
    end
    assert.are.equal(2, #paths)
    local a, b = paths[1], paths[2]                     -- screen y grows downwards
    assert.are.equal(3, #a)
    assert.is_true(a[1] < a[3] and a[3] < a[2])
    assert.are.same({ b[1], b[1] }, { b[2], b[3] })                -- channel 2 is flat ...
    assert.is_true(math.abs(b[1] - (a[1] + a[2]) / 2) < 0.1)        -- ... at the 0 of channel 1
    assert.is_true(math.abs(a[3] - (a[1] + b[1]) / 2) < 0.1)        -- 0.5 halfway to 1
  end)

  it("lines: x values are used", function()
    if not need_gnuplot() then return end
    local _, text = capture(function()
      return plot.lines({ 1, 2, 3 }, { x = { 100, 200, 300 } })
    end)
    has(text, "300")
    has(text, "100")
  end)

  it("features_1d: one line per sample", function()
    if not need_gnuplot() then return end
    local path = outdir .. "/samples.svg"
    plot.features_1d(mg.randn(3, 8, 1), { out = path })
    local s = read(path)
    local colours = {}
    for c in s:gmatch("<path stroke='(rgb%([^)]*%))'") do colours[#colours + 1] = c end
    assert.are.equal(3, #colours)                                 -- the frame is drawn otherwise
    assert.are_not.equal(colours[1], colours[2])
    assert.are_not.equal(colours[2], colours[3])
    has(s, "((Gradients vs. Timesteps) vs. Samples) vs. Channels")
  end)

  it("features_1d: past 16 channels a compact grid, numbered panels, the scale in the title",
     function()
    if not need_gnuplot() then return end
    local path = outdir .. "/compact.svg"
    local g = mg.zeros(2, 10, 20)
    g:set(0.5, 1, 3, 17)
    quiet(function() plot.features_1d(g, { out = path }) end)
    local s = read(path)
    has(s, "((Gradients vs. Timesteps) vs. Samples) vs. Channels, timesteps 1..10, y axes +-0.525")
    has(s, ">17<")
    assert.is_falsy(s:find("channel 17", 1, true))
    local _, text = capture(function() return quiet(function() return plot.features_1d(g) end) end)
    has(text, "y axes +-0.525")
    has(text, "|20")
  end)

  it("features_2d: past 16 samples a compact grid", function()
    if not need_gnuplot() then return end
    local path = outdir .. "/compact2.png"
    quiet(function() plot.features_2d(mg.randn(20, 8, 4), { out = path }) end)
    check_png(path, 600, 450)                                       -- 4 rows of 5, the minimum size
    local _, text = capture(function()
      return quiet(function() return plot.features_2d(mg.randn(20, 8, 4)) end)
    end)
    has(text, "4 channels x 8 timesteps each")
  end)

  it("gnuplot's warnings go to io.stderr, a repeated one once", function()
    if not need_gnuplot() then return end
    local script = string.rep("plot $d matrix with image\n", 3)
    local res, warnings = stderr_of(function()
      return plot.gnuplot(script, { d = "1 NaN\n3 4" }, { out = outdir .. "/warn.png" })
    end)
    assert.are.equal(outdir .. "/warn.png", res)
    assert.are.equal("gnuplot: warning: matrix contains missing or undefined values (3 times)\n",
                     warnings)
  end)

  it("features_2d: reflect_half flips the backward half in time", function()
    if not need_gnuplot() then return end
    local g = mg.zeros(12, 6)                        -- forward half grows with t, backward shrinks
    for t = 1, 12 do for c = 1, 6 do g:set(c <= 3 and t or 13 - t, t, c) end end
    local opts = { cmap = "gray", width = 60, height = 24 }
    local _, flipped = capture(function()
      return plot.features_2d(g, merge(opts, { reflect_half = true }))
    end)
    local _, plain = capture(function() return plot.features_2d(g, opts) end)
    local rows = frame_rows(flipped)
    assert.is_true(#rows >= 6)
    for i = 2, #rows do assert.are.equal(rows[1], rows[i]) end    -- every channel reads alike
    rows = frame_rows(plain)                         -- channel 1 starts low, channel 6 high
    assert.are.equal(" ", rows[1]:sub(1, 1))
    assert.are.equal("@", rows[#rows]:sub(1, 1))
  end)

  it("features_2d: default norm is one symmetric scale for all samples", function()
    if not need_gnuplot() then return end
    local g = mg.zeros(2, 3, 2)
    g:set(-4, 1, 2, 1)
    g:set(1, 2, 3, 2)
    local _, text = capture(function() return plot.features_2d(g, { width = 120 }) end)
    has(text, "norm=(-4, 4)")
  end)

  it("features_0d: channels as letters in text, a y = 0 line", function()
    if not need_gnuplot() then return end
    local g = mg.tensor{ { 1, -1, 0.5 }, { -0.5, 2, -2 } }
    local _, text = capture(function() return plot.features_0d(g, { width = 60, height = 20 }) end)
    has(text, "letters are channels")
    local inner = table.concat(frame_rows(text), "\n")
    for _, ch in ipairs{ "A", "B", "C" } do has(inner, ch) end
    assert.is_truthy(inner:find("%-%-%-%-%-%-%-%-%-%-"))         -- the zero line
  end)

  it("gnuplot: tensors (any strides, dtype), Lua arrays and text reach gnuplot intact", function()
    if not need_gnuplot() then return end
    local script = [[
set print "-"
stats $a using 1:2 nooutput
print sprintf("a %g %g %d", STATS_sum_x, STATS_sum_y, STATS_records)
stats $b index 1 using 1 nooutput
print sprintf("b %g %d", STATS_sum, STATS_records)
stats $c using 1 nooutput
print sprintf("c %g", STATS_sum)
stats $d using 1 nooutput
print sprintf("d %.10g", STATS_sum)
stats $e using 2 nooutput
print sprintf("e %g", STATS_sum)
]]
    local a = mg.tensor({ { 1, 3, 5 }, { 2, 4, 6 } }, F64):transpose(1, 2)   -- rows 1 2, 3 4, 5 6
    local b = mg.arange(0, 12):reshape(3, 2, 2)                            -- blocks for 'index'
    local res, text = capture(function()
      return plot.gnuplot(script, { a = a, b = b, c = { 1.5, 2.5, -1 }, d = mg.tensor(0.125),
                                    e = "# raw text\n1 10\n2 20" })
    end)
    assert.is_nil(res)
    has(text, "a 9 12 3")
    has(text, "b 10 2")                                              -- block 2: rows 4 5, 6 7
    has(text, "c 3")
    has(text, "d 0.125")
    has(text, "e 30")
  end)

  it("gnuplot: gnuplot's own error, with the line of the caller's script", function()
    if not need_gnuplot() then return end
    local path = outdir .. "/bad.png"
    local e = err_of(plot.gnuplot, "set xrange [0:1]\nplot foo(x)\n", nil, { out = path })
    has(e, "plot.gnuplot: gnuplot failed")
    has(e, "script line 2: undefined function: foo")
    assert.is_false(exists(path), "a failed plot leaves no file")
  end)

  it("lines: logy needs positive values", function()
    has_error(function() plot.lines({ -1, 0 }, { logy = true }) end,
              "plot.lines: option 'logy' needs positive values, but no value is > 0")
  end)
end)

---------------------------------------------------------------- errors

describe("plot errors", function()
  local ALL = {
    lines = function(o) return plot.lines({ 1, 2, 3 }, o) end,
    scatter = function(o) return plot.scatter({ 1, 2 }, { 3, 4 }, o) end,
    histogram = function(o) return plot.histogram({ 1, 2, 3 }, o) end,
    heatmap = function(o) return plot.heatmap({ { 1, 2 }, { 3, 4 } }, o) end,
    features_1d = function(o) return plot.features_1d(mg.zeros(3, 2), o) end,
    features_2d = function(o) return plot.features_2d(mg.zeros(2, 3, 2), o) end,
    features_0d = function(o) return plot.features_0d(mg.zeros(3, 2), o) end,
    gnuplot = function(o) return plot.gnuplot("plot x", nil, o) end,
  }

  for name, call in pairs(ALL) do
    it(name .. ": unknown or missing extension, bad options", function()
      has_error(function() call{ out = "pic.jpg" } end,
                "plot." .. name
                .. ": unknown output extension '.jpg' (use .png, .svg, .pdf or .txt)")
      has_error(function() call{ out = "picture" } end,
                "plot." .. name .. ": output file 'picture' has no extension")
      has_error(function() call{ out = 42 } end,
                "plot." .. name .. ": option 'out' must be a file name")
      has_error(function() call{ width = 0 } end,
                "plot." .. name .. ": option 'width' must be an integer >= 1, got 0")
      has_error(function() call{ colour = "red" } end,
                "plot." .. name .. ": unknown option 'colour'")
    end)

    it(name .. ": a missing gnuplot is named", function()
      local old = plot.set_gnuplot("/nonexistent/bin/gnuplot")
      local ok, e = pcall(call, {})
      plot.set_gnuplot(old)
      assert.is_false(ok)
      has(e, "plot." .. name .. ": gnuplot not found as '/nonexistent/bin/gnuplot' "
             .. "(apt-get install gnuplot-nox")
    end)
  end

  it("set_gnuplot returns the previous program and checks its argument", function()
    local old = plot.set_gnuplot("my-gnuplot")
    assert.are.equal("my-gnuplot", plot.set_gnuplot(old))
    assert.are.equal(old, plot.get_gnuplot())
    has_error(function() plot.set_gnuplot(3) end,
              "plot.set_gnuplot: 'path' must be a non-empty string")
  end)

  it("errors point at the caller's line", function()
    local e = err_of(function() plot.lines(mg.zeros(2, 2, 2)) end)
    assert.is_truthy(e:find("plot_spec.lua:%d+: plot%.lines:"), e)
  end)

  it("an unwritable output", function()
    if not need_gnuplot() then return end
    has_error(function() plot.lines({ 1, 2 }, { out = "/nonexistent/dir/x.png" }) end,
              "plot.lines: cannot open '/nonexistent/dir/x.png' for writing "
              .. "(No such file or directory)")
  end)

  it("lines: bad shapes and options", function()
    has_error(function() plot.lines(mg.zeros(2, 3, 4)) end,
              "plot.lines: expected 'ys' as a 1-d or 2-d tensor, an array of numbers or an array "
              .. "of those, got shape (2,3,4)")
    has_error(function() plot.lines({ mg.zeros(1, 2, 2) }) end,
              "plot.lines: expected 'ys'[1] as a 1-d or 2-d tensor or an array of numbers, "
              .. "got shape (1,2,2)")
    has_error(function() plot.lines("abc") end, "plot.lines: 'ys' must be a tensor or an array")
    has_error(function() plot.lines({}) end, "plot.lines: nothing to plot ('ys' is empty)")
    has_error(function() plot.lines({ { 1, 2 }, {} }) end, "plot.lines: line 2 is empty")
    has_error(function() plot.lines({ 1, "x" }) end,
              "plot.lines: 'ys'[2] must be a tensor or an array of numbers, got 'x'")
    has_error(function() plot.lines({ 1, 2 }, { x = { 1, 2, 3 } }) end,
              "plot.lines: option 'x' has 3 values but line 1 has 2")
    has_error(function() plot.lines({ 1, 2 }, { x = mg.zeros(2, 1) }) end,
              "plot.lines: option 'x' must be 1-d, got shape (2,1)")
    has_error(function() plot.lines(mg.zeros(2, 3), { labels = { "a" } }) end,
              "plot.lines: option 'labels' must be an array of 2 names (one per line), got 1 names")
    has_error(function() plot.lines({ 1, 2 }, { labels = { {} } }) end,
              "plot.lines: option 'labels'[1] must be a string, got a table")
    has_error(function() plot.lines({ 1, 2 }, { logy = "yes" }) end,
              "plot.lines: option 'logy' must be true or false, got 'yes'")
    has_error(function() plot.lines({ 1, 2 }, { title = {} }) end,
              "plot.lines: option 'title' must be a string, got a table")
    has_error(function() plot.lines({ 1, 2 }, 5) end, "plot.lines: options must be a table, got 5")
  end)

  it("scatter: bad shapes", function()
    has_error(function() plot.scatter(mg.zeros(2, 2), mg.zeros(4)) end,
              "plot.scatter: expected 'x' 1-d, got shape (2,2)")
    has_error(function() plot.scatter(mg.zeros(4), 1) end,
              "plot.scatter: expected 'y' 1-d, got shape ()")
    has_error(function() plot.scatter({ 1, 2, 3 }, { 1, 2 }) end,
              "plot.scatter: 'x' and 'y' differ in length (3 and 2)")
    has_error(function() plot.scatter({}, {}) end, "plot.scatter: nothing to plot")
  end)

  it("histogram: no values, bad bins and range", function()
    has_error(function() plot.histogram({}) end,
              "plot.histogram: no finite values to plot (0 values in all)")
    has_error(function() plot.histogram({ 0 / 0, 1 / 0 }) end,
              "plot.histogram: no finite values to plot (2 values in all)")
    has_error(function() plot.histogram({ 1 }, { bins = 0 }) end,
              "plot.histogram: option 'bins' must be an integer >= 1, got 0")
    has_error(function() plot.histogram({ 1 }, { bins = 2.5 }) end,
              "option 'bins' must be an integer >= 1, got 2.5")
    has_error(function() plot.histogram({ 1 }, { range = { 3, 1 } }) end,
              "plot.histogram: option 'range' must be {lo, hi} with finite numbers lo < hi, "
              .. "got {3, 1}")
  end)

  it("heatmap: bad shapes, norm and cmap", function()
    has_error(function() plot.heatmap(mg.zeros(5)) end,
              "plot.heatmap: expected 't' to be a 2-d (rows, columns) tensor, got shape (5)")
    has_error(function() plot.heatmap(mg.zeros(2, 2, 2)) end, "got shape (2,2,2)")
    has_error(function() plot.heatmap(mg.zeros(0, 3)) end,
              "plot.heatmap: 't' is empty (shape (0,3))")
    has_error(function() plot.heatmap({ { 1, 2 }, { 3 } }) end,
              "plot.heatmap: 't' is not rectangular: 't'[2] has shape (1) but 't'[1] has shape (2)")
    has_error(function() plot.heatmap({ { 1, true } }) end,
              "plot.heatmap: 't'[1][2] must be a tensor or an array of numbers, got true")
    local bad = { { { 1 }, "{1}" }, { { 2, 1 }, "{2, 1}" }, { { 1, 1 }, "{1, 1}" },
                  { { 0 / 0, 1 }, "{" .. tostring(0 / 0) .. ", 1}" }, { { 0, 1 / 0 }, "{0, inf}" },
                  { "x", "'x'" }, { { "a", "b" }, "{a, b}" } }
    for _, b in ipairs(bad) do
      has_error(function() plot.heatmap(mg.eye(2), { norm = b[1] }) end,
                "plot.heatmap: option 'norm' must be {lo, hi} with finite numbers lo < hi, got "
                .. b[2])
    end
    has_error(function() plot.heatmap(mg.eye(2), { cmap = "rainbow" }) end,
              "plot.heatmap: unknown cmap 'rainbow' (use RdBu, bwr, coolwarm")
  end)

  it("features_1d: bad shapes and n_rows", function()
    has_error(function() plot.features_1d(mg.zeros(5)) end,
              "plot.features_1d: expected 'g' to be a (B, T, C) or (T, C) tensor, got shape (5)")
    has_error(function() plot.features_1d(mg.zeros(1, 2, 3, 4)) end, "got shape (1,2,3,4)")
    has_error(function() plot.features_1d(mg.zeros(4, 3), { n_rows = 4 }) end,
              "plot.features_1d: option 'n_rows' must be an integer in 1..3, got 4")
    has_error(function() plot.features_1d(mg.zeros(4, 3), { n_rows = 0 }) end, "got 0")
    has_error(function() plot.features_1d(mg.zeros(4, 3), { equate_axes = 1 }) end,
              "option 'equate_axes' must be true or false")
  end)

  it("features_2d: bad shapes, norm, reflect_half on odd channels", function()
    has_error(function() plot.features_2d(mg.zeros(5)) end,
              "plot.features_2d: expected 'g' to be a (B, T, C) or (T, C) tensor, got shape (5)")
    has_error(function() plot.features_2d(mg.zeros(2, 0, 3)) end, "plot.features_2d: 'g' is empty")
    has_error(function() plot.features_2d(mg.zeros(2, 4, 3), { reflect_half = true }) end,
              "plot.features_2d: reflect_half needs an even number of channels "
              .. "(both directions), got 3")
    has_error(function() plot.features_2d(mg.zeros(2, 4, 2), { norm = { 1, -1 } }) end,
              "plot.features_2d: option 'norm' must be {lo, hi} with finite numbers lo < hi, "
              .. "got {1, -1}")
    has_error(function() plot.features_2d(mg.zeros(2, 4, 2), { n_rows = 3 }) end,
              "option 'n_rows' must be an integer in 1..2, got 3")
  end)

  it("features_0d: bad shapes", function()
    has_error(function() plot.features_0d(mg.zeros(2, 3, 4)) end,
              "plot.features_0d: expected 'g' to be a (B, C) tensor, got shape (2,3,4)")
    has_error(function() plot.features_0d({ 1, 2 }) end, "got shape (2)")
    has_error(function() plot.features_0d(mg.zeros(2, 2), { cmap = 3 }) end, "unknown cmap 3")
  end)

  it("gnuplot: bad script and data", function()
    has_error(function() plot.gnuplot(42) end, "plot.gnuplot: 'script' must be a string, got 42")
    has_error(function() plot.gnuplot("plot x", 5) end,
              "plot.gnuplot: 'data' must be a table of named datablocks, got 5")
    has_error(function() plot.gnuplot("plot x", { ["bad name"] = { 1 } }) end,
              "plot.gnuplot: datablock names must be identifiers (used as $name), got 'bad name'")
    has_error(function() plot.gnuplot("plot x", { d = mg.zeros(1, 1, 1, 1) }) end,
              "plot.gnuplot: data.d must have rank 0 to 3, got shape (1,1,1,1)")
    has_error(function() plot.gnuplot("plot x", { d = "1 2\nEOD\n3 4" }) end,
              "plot.gnuplot: data.d contains a line 'EOD'")
  end)
end)

---------------------------------------------------------------- pictures for a paper

-- A PNG reader in the standard library's zlib (any 8-bit, non-interlaced colour type): for
-- each file, how many non-white pixels lie in the 4-pixel band along each edge (text drawn
-- past the canvas is cut there) and how many are deep blue (bwr's low end, #0000ff).
local PNG_PROBE = [==[
import struct, sys, zlib
def decode(path):
    data = open(path, 'rb').read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n', path
    pos, idat, plte = 8, [], None
    while pos < len(data):
        n, typ = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if typ == b'IHDR':
            w, h, depth, ctype, _, _, inter = struct.unpack('>IIBBBBB', body)
        elif typ == b'PLTE':
            plte = [tuple(body[i:i + 3]) for i in range(0, len(body), 3)]
        elif typ == b'IDAT':
            idat.append(body)
        pos += 12 + n
    assert depth == 8 and inter == 0, (path, depth, inter)
    bpp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    raw, stride = zlib.decompress(b''.join(idat)), w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        if ctype == 3: rows.append([plte[v] for v in line])
        elif ctype in (0, 4): rows.append([(line[i],) * 3 for i in range(0, stride, bpp)])
        else: rows.append([tuple(line[i:i + 3]) for i in range(0, stride, bpp)])
    return w, h, rows
W = (255, 255, 255)
for path in sys.argv[1:]:
    w, h, rows = decode(path)
    B = 4
    top = sum(rows[y][x] != W for y in range(B) for x in range(w))
    bottom = sum(rows[y][x] != W for y in range(h - B, h) for x in range(w))
    left = sum(rows[y][x] != W for y in range(h) for x in range(B))
    right = sum(rows[y][x] != W for y in range(h) for x in range(w - B, w))
    blue = sum(px[0] <= 60 and px[1] <= 60 and px[2] >= 200 for r in rows for px in r)
    print(path, top, bottom, left, right, blue)
]==]

-- { [path] = { top, bottom, left, right, blue } } of the PNG files 'paths'.
local function probe_pngs(dir, paths)
  local script = support.write_file(dir .. "/probe.py", PNG_PROBE)
  local args = {}
  for i, p in ipairs(paths) do args[i] = shq(p) end
  local p = io.popen(support.PYTHON .. " " .. shq(script) .. " " .. table.concat(args, " ") .. " 2>&1")
  local text = p:read("a")
  assert(p:close(), "the PNG probe failed:\n" .. text)
  local res = {}
  for path, a, b, c, d, e in text:gmatch("(%S+) (%d+) (%d+) (%d+) (%d+) (%d+)\n") do
    res[path] = { tonumber(a), tonumber(b), tonumber(c), tonumber(d), tonumber(e) }
  end
  return res
end

describe("pictures for a paper", function()
  local dir
  setup(function() dir = support.tmpdir() outdir = dir end)
  teardown(function() support.rmtree(dir) end)

  -- a title far wider than any canvas, as the scripts' are ("EX 7: dL/d(layer 1 output) ...")
  local LONG = "EX 7: dL/d(layer 1 output) of LSTM (32 units) after 200 iterations: channels x "
               .. "timesteps per sample, norm=(-0.0001663, 0.0001663), the second half reflected "
               .. "in time, WWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWW"
  -- values >= 0 on a symmetric bwr scale: the cells are white to red, so deep blue can only
  -- be the colour box's low end
  local POS = mg.rand(5, 12, 6) * 0.5
  local KINDS = {
    { "lines", function(o) return plot.lines(mg.randn(3, 20), o) end },
    { "scatter", function(o) return plot.scatter(mg.randn(30), mg.randn(30), o) end },
    { "histogram", function(o) return plot.histogram(mg.randn(200), o) end },
    { "heatmap", function(o) return plot.heatmap(POS[1], merge({ norm = { -1, 1 } }, o)) end,
      true },
    { "features_1d", function(o) return plot.features_1d(mg.randn(4, 12, 6), o) end },
    { "features_1d compact", function(o) return plot.features_1d(mg.randn(12, 20), o) end },
    { "features_2d one sample", function(o)
        return plot.features_2d(POS[1], merge({ norm = { -1, 1 } }, o)) end, true },
    { "features_2d samples", function(o)
        return plot.features_2d(POS, merge({ norm = { -1, 1 }, n_rows = 2 }, o)) end, true },
    { "features_2d compact", function(o)
        return plot.features_2d(mg.rand(20, 8, 4), merge({ norm = { -1, 1 } }, o)) end, true },
    { "features_0d", function(o) return plot.features_0d(mg.randn(16, 6), o) end },
    { "spectrum", function(o) return plot.spectrum({ mg.randn(8), mg.randn(8) }, merge({ labels = { "a", "b" } }, o)) end },
    { "spectrum_bands", function(o) return plot.spectrum_bands(mg.rand(10, 2, 6) + 0.1, o) end },
  }

  it("every kind keeps its text inside the canvas, long titles wrapped; heatmaps have a colour box",
     function()
    if not need_gnuplot() then return end
    if not support.python_can_import("zlib") then pending("no " .. support.PYTHON) return end
    local paths, expect = {}, {}
    for i, k in ipairs(KINDS) do
      for j, size in ipairs { {}, { width = 520, height = 400 } } do
        local path = string.format("%s/kind%02d_%d.png", dir, i, j)
        quiet(function() k[2](merge({ out = path, title = LONG }, size)) end)
        paths[#paths + 1], expect[path] = path, { k[1] .. (j == 2 and " (520x400)" or ""), k[3] }
      end
    end
    local res = probe_pngs(dir, paths)
    for _, path in ipairs(paths) do
      local r, what = res[path], expect[path][1]
      assert(r, "no probe result for " .. path)
      assert(r[1] + r[2] + r[3] + r[4] == 0, string.format(
        "%s: %d/%d/%d/%d non-white pixels in the top/bottom/left/right 4-pixel edges", what,
        r[1], r[2], r[3], r[4]))
      if expect[path][2] then
        assert(r[5] >= 50, what .. ": no colour box (no pixel of its blue end)")
      end
    end
  end)

  it("features_2d in text: panels of equal width, every timestep of every panel shown", function()
    if not need_gnuplot() then return end
    local g = mg.zeros(4, 10, 3)                     -- value t at timestep t: 10 ramp characters
    for b = 1, 4 do for t = 1, 10 do for c = 1, 3 do g:set(t, b, t, c) end end end
    for _, o in ipairs { {}, { n_rows = 2 }, { n_rows = 1, width = 200 } } do
      local _, text = capture(function()
        return quiet(function() return plot.features_2d(g, merge({ cmap = "gray" }, o)) end)
      end)
      local widths, rows = {}, 0
      for line in text:gmatch("[^\n]+") do
        for inner in line:gmatch("|([^|]*)|") do
          if not inner:find("^%s*$") then
            widths[#inner] = true
            rows = rows + 1
            local runs, last = 0, nil                -- distinct characters, left to right
            for ch in inner:gmatch(".") do
              if ch ~= last then runs = runs + 1 last = ch end
            end
            assert(runs == 10, string.format("a frame row shows %d of 10 timesteps: '%s'", runs, inner))
          end
        end
      end
      local n = 0
      for _ in pairs(widths) do n = n + 1 end
      assert(n == 1, "panels of different widths:\n" .. text)
      assert(rows >= 12, "fewer frame rows than channels x samples:\n" .. text)
    end
  end)
end)

---------------------------------------------------------------- nothing lost

-- Runs Lua 'code' in a new lua5.4 (this build's module; 'plot' and 'mg' defined) through the
-- shell prefix 'pre' ("ulimit -f 8;", "VAR=x"), the shell started through 'wrapper' when
-- given ("setpriv ..."); returns whether it exited 0 and its output.
local function lua_child(dir, pre, code, wrapper)
  return support.lua_child(dir .. "/child.lua", pre, 'local plot = require "moongrad.plot"\n' .. code,
                           wrapper)
end

local function listing(dir)
  local p = io.popen("ls -A " .. shq(dir))
  local text = p:read("a")
  p:close()
  return text
end

describe("plots never leave a broken or empty picture", function()
  local dir
  before_each(function() dir = support.tmpdir() end)
  after_each(function() support.rmtree(dir) end)

  it("a gnuplot that exits 0 and writes nothing is an error naming the call; the old picture stays",
     function()
    if not need_gnuplot() then return end
    local fake = support.write_file(dir .. "/fake-gnuplot", "#!/bin/sh\nexit 0\n")
    os.execute("chmod +x " .. shq(fake))
    local out = dir .. "/p.png"
    plot.lines({ 1, 2, 3 }, { out = out })
    local before = read(out)
    local old = plot.set_gnuplot(fake)
    local ok, e = pcall(plot.lines, { 3, 2, 1 }, { out = out })
    local ok2, e2 = pcall(plot.heatmap, { { 1, 2 }, { 3, 4 } }, { out = dir .. "/new.svg" })
    plot.set_gnuplot(old)
    assert.is_false(ok)
    has(e, "plot.lines: gnuplot ('" .. fake .. "') exited without error but its picture for '"
           .. out .. "' is unusable: it is empty")
    assert.is_false(ok2)
    has(e2, "plot.heatmap: gnuplot ('" .. fake .. "') exited without error")
    assert.are.equal(before, read(out))
    assert.are.equal("fake-gnuplot\np.png\n", listing(dir))      -- no temporary, no new.svg
  end)

  it("a picture cut by a file-size limit (gnuplot exits 0) is an error; the old one stays", function()
    if not need_gnuplot() then return end
    local out = dir .. "/big.png"
    plot.lines({ 1, 2 }, { out = out, width = 300, height = 200 })
    local before = read(out)
    assert.is_true(#before < 16384)
    -- a short script (its temporary fits in 16 KiB), a picture of far more than 16 KiB
    local ok, text = lua_child(dir, "trap '' XFSZ; ulimit -f 16;", string.format([[
print(pcall(plot.gnuplot, "set isosamples 80\nsplot x*y with pm3d", nil,
            { out = %q, width = 1600, height = 1200 }))]], out))
    assert.is_true(ok, text)
    has(text, "false\t")
    has(text, "plot.gnuplot: gnuplot ('gnuplot') exited without error but its picture for '"
              .. out .. "' is unusable: it is cut short (")
    has(text, "no PNG IEND chunk")
    assert.are.equal(before, read(out))
    assert.are.equal("big.png\nchild.lua\n", listing(dir))
  end)

  it("an unwritable directory gives the reason", function()
    if not need_gnuplot() then return end
    local ro = dir .. "/ro"
    os.execute("mkdir " .. shq(ro) .. " && chmod 755 " .. shq(dir) .. " && chmod 555 " .. shq(ro))
    local wrapper, why = support.unprivileged()   -- root writes anywhere: run as 'nobody'
    if wrapper == nil then pending(why) return end
    local ok, text = lua_child(dir, "", string.format([[
print(pcall(plot.lines, { 1, 2 }, { out = %q }))]], ro .. "/x.png"), wrapper)
    os.execute("chmod 755 " .. shq(ro))
    assert.is_true(ok, text)
    has(text, "false\t")
    has(text, "plot.lines: cannot open '" .. ro .. "/x.png' for writing (Permission denied)")
    assert.are.equal("", listing(ro))
  end)

  it("MOONGRAD_GNUPLOT empty means the default gnuplot", function()
    if not need_gnuplot() then return end
    local ok, text = lua_child(dir, "MOONGRAD_GNUPLOT= ", string.format([[
print("program", plot.get_gnuplot())
print(plot.lines({ 1, 2, 3 }, { out = %q }))]], dir .. "/e.txt"))
    assert.is_true(ok, text)
    has(text, "program\tgnuplot\n")
    has(text, dir .. "/e.txt")
    has(read(dir .. "/e.txt"), "Values vs. index")
    ok, text = lua_child(dir, "MOONGRAD_GNUPLOT=/nonexistent/gp ", 'print(plot.get_gnuplot())')
    assert.is_true(ok, text)
    has(text, "/nonexistent/gp")
  end)

  it("a replaced picture keeps its permissions; gnuplot's error leaves the old one", function()
    if not need_gnuplot() then return end
    local out = dir .. "/m.svg"
    plot.lines({ 1, 2, 3 }, { out = out })
    os.execute("chmod 640 " .. shq(out))
    plot.lines({ 3, 2, 1 }, { out = out })
    local p = io.popen("stat -c %a " .. shq(out))
    assert.are.equal("640", p:read("l"))
    p:close()
    local before = read(out)
    assert.is_false(pcall(plot.gnuplot, "plot foo(x)", nil, { out = out }))
    assert.are.equal(before, read(out))
    assert.are.equal("m.svg\n", listing(dir))
  end)
end)

---------------------------------------------------------------- temporary files

describe("plot temporary files", function()
  it("are all removed, after successes and after gnuplot errors", function()
    if not need_gnuplot() then return end
    local dir = support.tmpdir()
    local made, tmpname = {}, os.tmpname
    os.tmpname = function()                                       -- luacheck: ignore
      local n = tmpname()
      made[#made + 1] = n
      return n
    end
    local ok, e = pcall(function()
      plot.lines({ 1, 2, 3 }, { out = dir .. "/a.png" })
      plot.features_2d(mg.randn(2, 3, 2), { out = dir .. "/b.svg" })
      pcall(plot.gnuplot, "plot foo(x)", nil, { out = dir .. "/c.png" })
      pcall(plot.gnuplot, "plot foo(x)")
    end)
    os.tmpname = tmpname                                          -- luacheck: ignore
    assert(ok, e)
    assert.are.equal(8, #made)                                      -- script + stderr, 4 runs
    for _, n in ipairs(made) do assert.is_false(exists(n), n .. " left behind") end
    local p = io.popen("ls -A " .. shq(dir))
    local listing = p:read("a")
    p:close()
    assert.are.equal("a.png\nb.svg\n", listing)                    -- nothing else, no c.png
    support.rmtree(dir)
  end)
end)
