-- moongrad.plot: plots through gnuplot (mg.plot, also require "moongrad.plot").
--
-- Every call builds one gnuplot script (data inline as gnuplot 5 datablocks, `$name << EOD`),
-- runs gnuplot on it and returns the path it wrote, or nothing (no value: `local p = ...` is
-- nil) when the plot went to standard output. `opts.out` picks the output by extension: .png
-- (pngcairo, or png without cairo), .svg, .pdf (pdfcairo), .txt (text, gnuplot's dumb
-- terminal); without `out`, text is written with io.write (standard output unless io.output()
-- was redirected), usable over ssh.
-- `opts.width`, `opts.height` are pixels for .png and .svg (.pdf at 100 pixels an inch) and
-- characters for text.
--
-- The script goes to gnuplot in a temporary file and gnuplot's stderr into another; both are
-- removed on every path, so gnuplot's own error text can be reported without leaving files.
-- The picture itself is written to a temporary beside `opts.out` (fileio.c, through the
-- internal mg._tmpfile/mg._commit_file) and renamed over it only when it is whole: a failed
-- or cut-short plot leaves the previous picture untouched.
-- Inputs are tensors (any dtype, any strides) or plain Lua arrays of numbers (nested for 2-d
-- and 3-d). Heatmaps in text are drawn with a character ramp that the title explains.
local mg = require "moongrad"

local error, ipairs, pairs, pcall, select, tostring, type =
      error, ipairs, pairs, pcall, select, tostring, type
local debug, io, math, os, string, table = debug, io, math, os, string, table
local _ENV = nil

local is_tensor = mg.is_tensor

local M = {}

---------------------------------------------------------------- errors

-- User mistakes are raised by 'fail' inside the implementation; 'api' turns them into
-- "plot.<name>: message" at the user's line (the mechanism of every Lua part: core.lua).
-- A plot drawn to the terminal returns no value, so the REPL echoes no "nil".
local checks = mg._checks(debug.getinfo(1, "S").source)
local fail = checks.fail
local function api(name, impl)
  return checks.api(name, function(...)
    local res = impl(...)
    if res ~= nil then return res end
  end)
end

-- A short description of a bad value for messages: numbers and strings as themselves.
local function describe(v)
  if type(v) == "string" then return "'" .. v .. "'" end
  if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
  if is_tensor(v) then return "a tensor" end
  return "a " .. type(v)
end

local function shapestr(s)
  local parts = {}
  for i = 1, #s do parts[i] = tostring(s[i]) end
  return "(" .. table.concat(parts, ",") .. ")"
end

---------------------------------------------------------------- inputs

-- Nested tables of numbers and the shape of 'x' (a tensor, a number, or a rectangular Lua
-- array of those). 'what' names the argument in messages.
local function nested(x, what)
  if is_tensor(x) then return x:totable(), x:shape() end
  if type(x) == "number" then return x, {} end
  if type(x) ~= "table" then
    fail("%s must be a tensor or an array of numbers, got %s", what, describe(x))
  end
  local n = #x
  if n == 0 then return {}, { 0 } end
  local out, shape = {}, nil
  for i = 1, n do
    local d, s = nested(x[i], what .. "[" .. i .. "]")
    if shape == nil then
      shape = s
    elseif shapestr(s) ~= shapestr(shape) then
      fail("%s is not rectangular: %s[%d] has shape %s but %s[1] has shape %s",
           what, what, i, shapestr(s), what, shapestr(shape))
    end
    out[i] = d
  end
  return out, { n, table.unpack(shape) }
end

-- Nested data of 'x' checked to have one of the ranks in 'ranks' (e.g. {2, 3}); 'expect'
-- describes the accepted shapes for the message.
local function ranked(x, what, ranks, expect)
  local d, s = nested(x, what)
  for _, r in ipairs(ranks) do
    if #s == r then
      for i = 1, r do
        if s[i] == 0 then fail("%s is empty (shape %s)", what, shapestr(s)) end
      end
      return d, s
    end
  end
  fail("expected %s %s, got shape %s", what, expect, shapestr(s))
end

local function finite(v) return v == v and v ~= math.huge and v ~= -math.huge end

-- Visit every number of nested data 'd'.
local function each(d, fn)
  if type(d) == "number" then fn(d) return end
  for _, e in ipairs(d) do each(e, fn) end
end

-- The largest finite |v| in 'd' (0 when there is none).
local function absmax(d)
  local m = 0
  each(d, function(v) if finite(v) and math.abs(v) > m then m = math.abs(v) end end)
  return m
end

---------------------------------------------------------------- options

-- 'opts' checked against the allowed keys (a set): a typo is an error, not a silent default.
local function options(opts, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" or is_tensor(opts) then
    fail("options must be a table, got %s", describe(opts))
  end
  local msg = mg._unknown_option(nil, opts, allowed)      -- the one checker (ltensor.c)
  if msg then fail(msg) end
  return opts
end

local function keys(...)
  local set = { out = true, width = true, height = true, title = true }
  for i = 1, select("#", ...) do set[select(i, ...)] = true end
  return set
end

local function opt_string(opts, k, default)
  local v = opts[k]
  if v == nil then return default end
  if type(v) == "number" then return tostring(v) end
  if type(v) ~= "string" then fail("option '%s' must be a string, got %s", k, describe(v)) end
  return v
end

local function opt_int(opts, k, default, lo, hi)
  local v = opts[k]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= math.floor(v) or v < lo or (hi and v > hi) then
    fail("option '%s' must be an integer %s, got %s", k,
         hi and string.format("in %d..%d", lo, hi) or ">= " .. lo, describe(v))
  end
  return math.tointeger(v)
end

local function opt_bool(opts, k, default)
  local v = opts[k]
  if v == nil then return default end
  if type(v) ~= "boolean" then fail("option '%s' must be true or false, got %s", k, describe(v)) end
  return v
end

-- opts[k] (k "norm" by default) = {lo, hi} (finite, lo < hi) or nil.
local function opt_norm(opts, k)
  k = k or "norm"
  local n = opts[k]
  if n == nil then return nil end
  if type(n) ~= "table" or is_tensor(n) or #n ~= 2 or type(n[1]) ~= "number"
     or type(n[2]) ~= "number" or not finite(n[1]) or not finite(n[2]) or n[1] >= n[2] then
    local s = describe(n)
    if type(n) == "table" and not is_tensor(n) then
      local p = {}
      for i = 1, #n do p[i] = tostring(n[i]) end
      s = "{" .. table.concat(p, ", ") .. "}"
    end
    fail("option '%s' must be {lo, hi} with finite numbers lo < hi, got %s", k, s)
  end
  return n[1], n[2]
end

---------------------------------------------------------------- script text

-- A number as gnuplot reads it in data (NaN and infinities mark undefined points).
local function num(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "Inf" elseif v == -math.huge then return "-Inf" end
  if math.type(v) == "integer" then return string.format("%d", v) end
  return string.format("%.9g", v)
end

-- A gnuplot string literal holding 's' exactly (no enhanced-text markup is used).
local function gstr(s)
  s = s:gsub('[\\"]', "\\%0"):gsub("\n", "\\n"):gsub("[%c]", "")
  return '"' .. s .. '"'
end

-- 's' quoted for the POSIX shell.
local function shq(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- A datablock named 'name' from an array of lines.
local function block(name, lines)
  return "$" .. name .. " << EOD\n" .. table.concat(lines, "\n") .. "\nEOD\n"
end

-- A tic step giving at most about 'want' integer tics over 1..n.
local function tic_step(n, want)
  local raw = n / want
  if raw <= 1 then return 1 end
  local p = 10 ^ math.floor(math.log(raw, 10))
  for _, m in ipairs{ 1, 2, 5, 10 } do
    if m * p >= raw then return math.tointeger(m * p) or math.floor(m * p) end
  end
  return math.floor(10 * p)
end

local function fmtg(v) return string.format("%.4g", v) end

-- 'set xtics' (axis "x") or 'set ytics' for integer positions 1..n, about 'want' of them.
local function int_tics(axis, n, want)
  local step = tic_step(n, want)
  return string.format("set %stics %s out nomirror\n", axis, step == 1 and "1,1" or tostring(step))
end

-- Grid lines help on paper but clutter text.
local function grid_cmd(cv) return cv.text and "" or "set grid\n" end

---------------------------------------------------------------- colour maps

-- Palettes as gnuplot 'set palette defined' stops; 'diverging' maps get a symmetric range.
local CMAPS = {
  bwr = { true, '0 "#0000ff", 0.5 "#ffffff", 1 "#ff0000"' },
  coolwarm = { true, '0 "#3b4cc0", 0.25 "#8db0fe", 0.5 "#dddddd", 0.75 "#f49a7b", 1 "#b40426"' },
  seismic = { true, '0 "#00004c", 0.25 "#0000ff", 0.5 "#ffffff", 0.75 "#ff0000", 1 "#7f0000"' },
  RdBu = { true, '0 "#67001f", 0.25 "#f4a582", 0.5 "#f7f7f7", 0.75 "#92c5de", 1 "#053061"' },
  viridis = { false, '0 "#440154", 0.25 "#3b528b", 0.5 "#21908d", 0.75 "#5dc963", 1 "#fde725"' },
  magma = { false, '0 "#000004", 0.25 "#51127c", 0.5 "#b73779", 0.75 "#fc8961", 1 "#fcfdbf"' },
  hot = { false, '0 "#000000", 0.375 "#ff0000", 0.75 "#ffff00", 1 "#ffffff"' },
  jet = { false, '0 "#00007f", 0.125 "#0000ff", 0.375 "#00ffff", 0.625 "#ffff00", '
                 .. '0.875 "#ff0000", 1 "#7f0000"' },
  gray = { false, '0 "#000000", 1 "#ffffff"' },
}
CMAPS.grey = CMAPS.gray

-- Character ramps for heatmaps in text, low to high.
local RAMP_DIVERGING = { "#", "=", "-", ".", " ", "'", "+", "*", "@" }
local RAMP_SEQUENTIAL = { " ", ".", ":", "-", "=", "+", "*", "#", "%", "@" }

local function cmap_names()
  local names = {}
  for k in pairs(CMAPS) do if k ~= "grey" then names[#names + 1] = k end end
  table.sort(names)
  return table.concat(names, ", ")
end

-- The colour map named by opts.cmap: { diverging, stops, ramp, name }.
local function opt_cmap(opts)
  local name = opts.cmap or "bwr"
  local c = type(name) == "string" and CMAPS[name]
  if not c then fail("unknown cmap %s (use %s)", describe(name), cmap_names()) end
  return { diverging = c[1], stops = c[2], name = name,
           ramp = c[1] and RAMP_DIVERGING or RAMP_SEQUENTIAL }
end

-- The colour range: opts.norm, else symmetric +-max|v| for diverging maps, else min..max.
local function color_range(opts, cmap, d)
  local lo, hi = opt_norm(opts)
  if lo then return lo, hi end
  if cmap.diverging then
    local m = absmax(d)
    if m == 0 then m = 1 end
    return -m, m
  end
  lo, hi = math.huge, -math.huge
  each(d, function(v)
    if finite(v) then lo, hi = math.min(lo, v), math.max(hi, v) end
  end)
  if lo > hi then return 0, 1 end
  if lo == hi then return lo - 0.5, hi + 0.5 end
  return lo, hi
end

-- The ramp character for 'v' on lo..hi.
local function ramp_char(ramp, v, lo, hi)
  local s = (v - lo) / (hi - lo)
  local k = math.floor(s * #ramp) + 1
  if k < 1 then k = 1 elseif k > #ramp then k = #ramp end
  return ramp[k]
end

local function ramp_legend(cmap, lo, hi)
  local r = cmap.ramp
  if cmap.diverging then
    return string.format("text shading: %s %s%s%s%s %s %s%s%s%s %s", fmtg(lo), r[1], r[2], r[3],
                         r[4], fmtg((lo + hi) / 2), r[6], r[7], r[8], r[9], fmtg(hi))
  end
  return string.format("text shading: %s '%s' %s", fmtg(lo), table.concat(r), fmtg(hi))
end

---------------------------------------------------------------- gnuplot process

-- MOONGRAD_GNUPLOT names the program; unset or empty means "gnuplot" from PATH.
local gnuplot_cmd = os.getenv("MOONGRAD_GNUPLOT")
if gnuplot_cmd == nil or gnuplot_cmd == "" then gnuplot_cmd = "gnuplot" end
local probed = {}                    -- command -> set of terminal names

--- plot.set_gnuplot(path): the gnuplot program to run (a name looked up in PATH, or a path);
-- returns the previous one.
function M.set_gnuplot(path)
  if type(path) ~= "string" or path == "" then
    error("plot.set_gnuplot: 'path' must be a non-empty string, got " .. describe(path), 2)
  end
  local old = gnuplot_cmd
  gnuplot_cmd = path
  return old
end

function M.get_gnuplot() return gnuplot_cmd end

-- The terminals the configured gnuplot offers (as a set); fails if it cannot be found.
local function terminals()
  local cmd = gnuplot_cmd
  if probed[cmd] then return probed[cmd] end
  if not os.execute("command -v " .. shq(cmd) .. " >/dev/null 2>&1") then
    fail("gnuplot not found as '%s' (apt-get install gnuplot-nox, or plot.set_gnuplot(path))", cmd)
  end
  local p = io.popen(shq(cmd) .. " -e 'set terminal' 2>&1 </dev/null", "r")
  local list = p and p:read("a") or ""
  if p then p:close() end
  local set = {}
  for name in list:gmatch("\n%s*([%w_]+) ") do set[name] = true end
  probed[cmd] = set
  return set
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a") or ""
  f:close()
  return s
end

-- gnuplot's message 'text' about script file 'sname', its line numbers made relative to the
-- part after the first 'off' lines (the caller's script).
local function tidy(text, sname, off)
  text = text:gsub('"' .. sname:gsub("%p", "%%%0") .. '" line (%d+):', function(n)
    n = math.tointeger(n) - off
    return n > 0 and "script line " .. n .. ":" or "setup:"
  end)
  return (text:gsub("%s+$", ""))
end

-- Runs gnuplot on 'script' (from files 'sname', 'ename'); returns stdout and stderr text.
local function exec(script, sname, ename, off)
  local f, err = io.open(sname, "wb")
  if not f then fail("cannot write a temporary file: %s", err) end
  local ok, werr = f:write(script)
  f:close()
  if not ok then fail("cannot write a temporary file: %s", werr) end
  local p, perr = io.popen(shq(gnuplot_cmd) .. " " .. shq(sname) .. " </dev/null 2>" .. shq(ename),
                           "r")
  if not p then fail("cannot run gnuplot: %s", perr) end
  local out = p:read("a") or ""
  local done, how, code = p:close()
  local errtext = slurp(ename)
  errtext = tidy(errtext, sname, off)
  if not done then
    if errtext == "" then errtext = "no message" end
    fail("gnuplot failed (%s %s): %s", how, tostring(code), errtext)
  end
  return out, errtext
end

-- 'text' (gnuplot's warnings) with a message repeated for many panels given once, counted.
local function dedupe(text)
  local order, count = {}, {}
  text = text:gsub("\n%s*\t%s*", " ")                     -- continuation lines start with a tab
  for msg in (text .. "\n"):gmatch("(.-)\n") do
    local key = msg:gsub("^script line %d+: ", "")
    if not count[key] then order[#order + 1] = key count[key] = 0 end
    count[key] = count[key] + 1
  end
  for i, key in ipairs(order) do
    order[i] = count[key] > 1 and string.format("%s (%d times)", key, count[key]) or key
  end
  return table.concat(order, "\n")
end

-- Runs 'script' (whose first 'off' lines are our setup); gnuplot's stdout is io.write'n when
-- 'to_stdout' (ended by a newline), its warnings go to io.stderr. Both temporary files are
-- removed on every path.
local function run(script, to_stdout, off)
  local sname = os.tmpname()
  local ok, ename = pcall(os.tmpname)
  if not ok then os.remove(sname) error(ename, 0) end
  local ok2, out, errtext = pcall(exec, script, sname, ename, off)
  os.remove(sname)
  os.remove(ename)
  if not ok2 then error(out, 0) end
  if to_stdout then                  -- the dumb terminal leaves its last line open
    io.write(out, out:sub(-1) == "\n" and "" or "\n")
    io.flush()
  end
  if errtext ~= "" then io.stderr:write("gnuplot: ", dedupe(errtext), "\n") end
end

---------------------------------------------------------------- outputs

local EXT = { png = "png", svg = "svg", pdf = "pdf", txt = "txt" }

-- The canvas a call draws on: { kind = "png"|"svg"|"pdf"|"txt"|"stdout", text, w, h, out }.
-- 'size' = { w, h, tw, th }: default pixel and character sizes.
local function canvas(opts, size)
  local out, kind = opts.out, "stdout"
  if out ~= nil then
    if type(out) ~= "string" or out == "" then
      fail("option 'out' must be a file name, got %s", describe(out))
    end
    local ext = out:match("%.([^./]*)$")
    if not ext then
      fail("output file '%s' has no extension (use .png, .svg, .pdf or .txt)", out)
    end
    kind = EXT[ext:lower()]
    if not kind then
      fail("unknown output extension '.%s' (use .png, .svg, .pdf or .txt)", ext)
    end
  end
  local text = kind == "txt" or kind == "stdout"
  return { kind = kind, text = text, out = out,
           w = opt_int(opts, "width", text and size[3] or size[1], 1),
           h = opt_int(opts, "height", text and size[4] or size[2], 1) }
end

-- The 'set terminal' and 'set output' lines for 'cv' (the output goes to 'tmp').
local function terminal_lines(cv, terms, tmp)
  local k, w, h = cv.kind, cv.w, cv.h
  local t
  if k == "png" then
    t = string.format("%s size %d,%d noenhanced", terms.pngcairo and "pngcairo" or "png", w, h)
  elseif k == "svg" then
    t = string.format("svg size %d,%d noenhanced", w, h)
  elseif k == "pdf" then
    if not terms.pdfcairo then
      fail("pdf output needs gnuplot's pdfcairo terminal (gnuplot-nox)")
    end
    t = string.format("pdfcairo size %gin,%gin noenhanced", w / 100, h / 100)
  else
    t = string.format("dumb nofeed size %d,%d", w, h)
  end
  local lines = "set encoding utf8\nset terminal " .. t .. "\n"
  if tmp then lines = lines .. "set output " .. gstr(tmp) .. "\n" end
  return lines
end

-- A message of fileio.c ("plot: cannot ...") as a Failure of the calling plot function.
local function file_call(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then return err end
  fail("%s", (tostring(err):gsub("^plot: ", "")))
end

-- How each picture format ends: a file cut short (gnuplot exits 0 when its writes fail on a
-- full disk or at a file-size limit) lacks it.
local ENDINGS = { png = { "IEND\xae\x42\x60\x82", "PNG IEND chunk" }, pdf = { "%%EOF", "%%EOF" },
                  svg = { "</svg>", "</svg>" } }

-- Why the picture gnuplot wrote to 'path' (a .'kind' file) is unusable, or nil when it is whole.
local function incomplete(path, kind)
  local f = io.open(path, "rb")
  if not f then return "it is missing" end
  local n = f:seek("end")
  local tail = ""
  if n > 0 then
    f:seek("set", math.max(0, n - 64))
    tail = f:read("a") or ""
  end
  f:close()
  if n == 0 then return "it is empty" end
  local e = ENDINGS[kind]
  if e and not tail:find(e[1], 1, true) then
    return string.format("it is cut short (%d bytes, no %s: a full disk or a file-size limit?)",
                         n, e[2])
  end
  return nil
end

-- Draws: terminal setup, then 'blocks' (datablocks), then 'body'; returns cv.out. gnuplot's
-- messages count lines from the start of 'body'. A file output is written by gnuplot to a
-- temporary beside it, checked to be whole (non-empty, and ending as its format must: a
-- gnuplot that exits 0 having written nothing or part is an error) and only then renamed
-- over cv.out: a failed plot leaves the previous picture as it was, never a part or nothing.
local function render(cv, blocks, body)
  local terms = terminals()
  local tmp = cv.out and file_call(mg._tmpfile, cv.out, "plot")
  local ok, err = pcall(function()
    local head = terminal_lines(cv, terms, tmp) .. blocks
    local _, off = head:gsub("\n", "")
    run(head .. body, cv.kind == "stdout", off)
    local why = tmp and incomplete(tmp, cv.kind)
    if why then
      fail("gnuplot ('%s') exited without error but its picture for '%s' is unusable: %s",
           gnuplot_cmd, cv.out, why)
    end
  end)
  if not ok then
    if tmp then os.remove(tmp) end
    error(err, 0)
  end
  if tmp then file_call(mg._commit_file, tmp, cv.out, "plot") end
  return cv.out
end

---------------------------------------------------------------- text that fits

-- Advance widths of DejaVu Sans, the font fontconfig gives gnuplot's png, svg and pdf
-- terminals for their default "Sans"/"Arial", for ASCII 32..126 in thousandths of an em.
local ADVANCE = {
  317, 400, 459, 837, 636, 950, 779, 274, 390, 390, 500, 837, 317, 360, 317, 336, 636, 636,
  636, 636, 636, 636, 636, 636, 636, 636, 336, 336, 837, 837, 837, 530, 1000, 684, 686, 698,
  770, 631, 575, 774, 751, 294, 294, 655, 557, 862, 748, 787, 603, 787, 694, 634, 610, 731,
  684, 988, 685, 610, 685, 390, 336, 390, 837, 500, 500, 612, 634, 549, 634, 615, 352, 634,
  633, 277, 277, 579, 277, 974, 633, 611, 634, 634, 411, 520, 392, 633, 591, 817, 591, 591,
  524, 636, 336, 636, 837 }

-- Pixels per em of the terminals' 12-point default font: png 16 (12 pt at 96 dpi), pdf 16.7
-- (12 pt on our 100 pixels an inch), svg 12 (font-size 12 in pixel units); measured on
-- gnuplot 5.4's pngcairo, png and svg output.
local EM = { png = 16, pdf = 16.7, svg = 12 }

-- The width of byte 'b' of a string in thousandths of an em (a UTF-8 character counts a
-- full em at its lead byte, nothing at its continuation bytes), or characters in text.
local function byte_width(cv, b)
  if b >= 0x80 and b < 0xC0 then return 0 end
  if cv.text then return 1 end
  return (b >= 32 and b <= 126) and ADVANCE[b - 31] or 1000
end

-- The width of one line 's' on 'cv': pixels, or characters in text.
local function text_width(cv, s)
  local w = 0
  for i = 1, #s do w = w + byte_width(cv, s:byte(i)) end
  return cv.text and w or w / 1000 * EM[cv.kind]
end

-- 's' with its lines broken at spaces (after a comma when that keeps half the line) so
-- that each fits in 'avail' pixels (characters in text; default the canvas width less a
-- margin): gnuplot clips text wider than the canvas. A word too long for a line is cut.
local function wrap(cv, s, avail)
  avail = avail or cv.w - (cv.text and 2 or 24)
  if avail < (cv.text and 10 or 80) then return s end
  local scale = cv.text and 1 or EM[cv.kind] / 1000
  local out = {}
  for line in (s .. "\n"):gmatch("(.-)\n") do
    while text_width(cv, line) > avail do
      local fit, w = 0, 0                                 -- the longest prefix that fits
      for i = 1, #line do
        w = w + byte_width(cv, line:byte(i)) * scale
        if w > avail then break end
        fit = i
      end
      local head = line:sub(1, fit + 1)
      local cut = head:match("^.*,() ")
      if cut and text_width(cv, line:sub(1, cut - 1)) < avail / 2 then cut = nil end
      cut = cut or head:match("^.*() ")
      if not cut or cut < 2 then                          -- no space: cut inside the word
        cut = math.max(fit, 1) + 1
        while cut > 2 and cut <= #line and line:byte(cut) >= 0x80 and line:byte(cut) < 0xC0 do
          cut = cut - 1                                   -- not inside a UTF-8 character
        end
      end
      out[#out + 1] = line:sub(1, cut - 1):gsub(" +$", "")
      line = line:sub(cut):gsub("^ +", "")
    end
    out[#out + 1] = line
  end
  return table.concat(out, "\n")
end

-- 'set ylabel'. Text cannot rotate a y label and drops one wider than the margin kept for
-- the rotated label: there it is written level, in a margin made wide enough for it and for
-- tic labels of up to 8 characters.
-- 'lm' (text only): the left margin every panel of a multiplot keeps, label or not.
local function ylabel_cmd(cv, ylabel, lm)
  if cv.text and ylabel ~= "" then
    -- gnuplot centres a level label where the rotated one would go: shift it left by half
    return string.format("set ylabel %s norotate offset -%d,0\nset lmargin %d\n", gstr(ylabel),
                         (#ylabel + 1) // 2, lm or #ylabel + 11)
  end
  if cv.text and lm then return string.format("set ylabel \"\"\nset lmargin %d\n", lm) end
  return string.format("set ylabel %s\n%s", gstr(ylabel), cv.text and "unset lmargin\n" or "")
end

-- Common labels of a single plot.
-- gnuplot centres a plot's title over the plot, not the canvas: the tic labels and y label
-- on the left and 'right' pixels of key or colour box on the right move that centre, so the
-- title is wrapped to what is left with both moves counted.
local function labels(cv, title, xlabel, ylabel, right)
  -- the plot's centre is off the canvas's by half the difference of the side margins (the
  -- dumb terminal keeps a title inside its lines: there the canvas width is the limit)
  local avail = cv.w - 2
  if not cv.text then avail = cv.w - 24 - math.abs(80 - ((right or 0) + 20)) end
  return string.format("set title %s\nset xlabel %s\n", gstr(wrap(cv, title, avail)),
                       gstr(xlabel)) .. ylabel_cmd(cv, ylabel)
end

-- The width (pixels, characters in text) of a key of the line titles 'names' (strings).
local function key_width(cv, names)
  local w = 0
  for _, n in ipairs(names) do w = math.max(w, text_width(cv, n)) end
  return w + (cv.text and 10 or 90)                      -- the sample line and the gaps
end

-- What a colour box with its tic labels takes right of a plot (none in text).
local function colorbox_width(cv) return cv.text and 0 or 110 end

-- Labels of panel 'k' of a multiplot with 'n' panels in 'nc' columns: x label on the lowest
-- panel of each column, y label on the first column.
local function panel_labels(cv, k, n, nc, title, xlabel, ylabel, lm)
  if k + nc <= n then xlabel = "" end
  if (k - 1) % nc ~= 0 then ylabel = "" end
  local avail = cv.w // nc - (cv.text and 2 or 24)
  return string.format("set title %s\nset xlabel %s\n", gstr(wrap(cv, title, avail)),
                       gstr(wrap(cv, xlabel, avail))) .. ylabel_cmd(cv, ylabel, lm)
end

---------------------------------------------------------------- plot.lines

-- The series of plot.lines' 'ys': an array of arrays of numbers ('what' names the argument
-- in messages, default 'ys').
local function series(ys, what)
  what = what or "'ys'"
  if is_tensor(ys) then
    local d, s = nested(ys, what)
    if #s == 1 then return { d } end
    if #s == 2 then return d end
    fail("expected %s as a 1-d or 2-d tensor, an array of numbers or an array of those, "
         .. "got shape %s", what, shapestr(s))
  end
  if type(ys) ~= "table" then
    fail("%s must be a tensor or an array of numbers, got %s", what, describe(ys))
  end
  if type(ys[1]) == "number" then
    local d = nested(ys, what)
    return { d }
  end
  local out = {}
  for i = 1, #ys do
    local wi = what .. "[" .. i .. "]"
    local d, s = nested(ys[i], wi)
    if #s == 1 then
      out[#out + 1] = d
    elseif #s == 2 then
      for _, row in ipairs(d) do out[#out + 1] = row end
    else
      fail("expected %s as a 1-d or 2-d tensor or an array of numbers, got shape %s", wi,
           shapestr(s))
    end
  end
  return out
end

local LINES_OPTS = keys("xlabel", "ylabel", "labels", "legend", "x", "logy")

local function lines(ys, opts)
  opts = options(opts, LINES_OPTS)
  local ss = series(ys)
  if #ss == 0 then fail("nothing to plot ('ys' is empty)") end
  local xs
  if opts.x ~= nil then
    local s
    xs, s = nested(opts.x, "option 'x'")
    if #s ~= 1 then fail("option 'x' must be 1-d, got shape %s", shapestr(s)) end
  end
  local names = opts.labels or opts.legend
  if names ~= nil then
    if type(names) ~= "table" or is_tensor(names) or #names ~= #ss then
      fail("option 'labels' must be an array of %d names (one per line), got %s", #ss,
           type(names) == "table" and not is_tensor(names) and #names .. " names"
           or describe(names))
    end
    for i = 1, #names do
      local v = names[i]
      if type(v) ~= "string" and type(v) ~= "number" then
        fail("option 'labels'[%d] must be a string, got %s", i, describe(v))
      end
    end
  end
  local logy = opt_bool(opts, "logy", false)
  local blocks, plots = {}, {}
  for i, s in ipairs(ss) do
    if #s == 0 then fail("line %d is empty", i) end
    if xs and #xs ~= #s then fail("option 'x' has %d values but line %d has %d", #xs, i, #s) end
    local rows = {}
    for j, v in ipairs(s) do rows[j] = num(xs and xs[j] or j) .. " " .. num(v) end
    blocks[i] = block("line" .. i, rows)
    local t = names and gstr(tostring(names[i])) or (#ss > 1 and #ss <= 10 and gstr("line " .. i))
    plots[i] = string.format("$line%d using 1:2 with lines lw 1.5 %s", i,
                             t and "title " .. t or "notitle")
  end
  if logy then
    local pos = false
    for _, s in ipairs(ss) do each(s, function(v) if v > 0 then pos = true end end) end
    if not pos then fail("option 'logy' needs positive values, but no value is > 0") end
  end
  local cv = canvas(opts, { 800, 500, 80, 24 })
  local title = opt_string(opts, "title", #ss == 1 and "Values vs. index"
                           or string.format("%d lines: values vs. index", #ss))
  local keyed = {}
  for i = 1, #ss do
    keyed[#keyed + 1] = names and tostring(names[i]) or (#ss > 1 and #ss <= 10 and "line " .. i) or nil
  end
  local body = labels(cv, title, opt_string(opts, "xlabel", xs and "x" or "index"),
                      opt_string(opts, "ylabel", "value"), #keyed > 0 and key_width(cv, keyed) or 0)
               .. grid_cmd(cv) .. "set key outside right\n" .. (logy and "set logscale y\nset format y \"%g\"\n" or "")
               .. "plot " .. table.concat(plots, ", \\\n     ") .. "\n"
  return render(cv, table.concat(blocks), body)
end

--- plot.lines(ys [, opts]): ys a 1-d tensor or array (one line), a 2-d tensor (one line per
-- ROW: pass g:transpose(1, 2) to draw columns), or an array of those (lines may differ in
-- length). opts: title, xlabel, ylabel, labels (alias legend), x (shared x values), logy,
-- out, width, height.
M.lines = api("plot.lines", lines)

---------------------------------------------------------------- plot.spectrum

local SPECTRUM_OPTS = keys("xlabel", "ylabel", "labels", "logy", "styles")
local SPECTRUM_STYLES = { lines = "lines lw 1.5", points = "points pt 6 ps 1.6",
                          linespoints = "linespoints lw 1.5 pt 7 ps 0.6" }

local function spectrum(vals, opts)
  opts = options(opts, SPECTRUM_OPTS)
  local ss = series(vals, "'series'")
  if #ss == 0 then fail("nothing to plot ('series' is empty)") end
  local sorted = {}
  for i, s in ipairs(ss) do
    if #s == 0 then fail("series %d is empty", i) end
    local v = {}
    for j, x in ipairs(s) do
      if x ~= x then fail("series %d has NaN at %d", i, j) end
      v[j] = x
    end
    table.sort(v, function(a, b) return a > b end)
    sorted[i] = v
  end
  local names = opts.labels
  if names ~= nil and (type(names) ~= "table" or is_tensor(names) or #names ~= #sorted) then
    fail("option 'labels' must be an array of %d names (one per spectrum), got %s", #sorted,
         type(names) == "table" and not is_tensor(names) and #names .. " names" or describe(names))
  end
  local styles = opts.styles
  if styles ~= nil then
    if type(styles) ~= "table" or is_tensor(styles) or #styles ~= #sorted then
      fail("option 'styles' must be an array of %d styles (one per spectrum), got %s", #sorted, describe(styles))
    end
    for i, st in ipairs(styles) do
      if not SPECTRUM_STYLES[st] then
        fail("option 'styles'[%d] must be \"lines\", \"points\" or \"linespoints\", got %s", i, describe(st))
      end
    end
  end
  local logy = opt_bool(opts, "logy", false)
  local blocks, plots, keyed, longest = {}, {}, {}, 0
  for i, v in ipairs(sorted) do
    local rows = {}
    for j, y in ipairs(v) do
      if logy and not (y > 0) then fail("option 'logy' needs positive values, series %d has %s", i, num(y)) end
      rows[j] = j .. " " .. num(y)
    end
    longest = math.max(longest, #v)
    blocks[i] = block("s" .. i, rows)
    local t = names and tostring(names[i]) or (#sorted > 1 and "spectrum " .. i) or nil
    keyed[#keyed + 1] = t
    local st = styles and styles[i] or (#v <= 40 and "linespoints" or "lines")
    plots[i] = string.format("$s%d using 1:2 with %s %s", i, SPECTRUM_STYLES[st],
                             t and "title " .. gstr(t) or "notitle")
  end
  local cv = canvas(opts, { 800, 500, 80, 24 })
  local title = opt_string(opts, "title", #sorted == 1 and "Spectrum (sorted, descending)"
                           or string.format("%d spectra (each sorted, descending)", #sorted))
  local body = labels(cv, title, opt_string(opts, "xlabel", "i (descending)"),
                      opt_string(opts, "ylabel", "value"), #keyed > 0 and key_width(cv, keyed) or 0)
               .. grid_cmd(cv) .. "set key outside right\n"
               .. string.format("set xrange [%s:%s]\n", longest > 1 and "1" or "0.5", longest > 1 and longest or "1.5")
               .. int_tics("x", longest, cv.text and 8 or 10)
               .. (logy and "set logscale y\nset format y \"%g\"\n" or "")
               .. "plot " .. table.concat(plots, ", \\\n     ") .. "\n"
  return render(cv, table.concat(blocks), body)
end

--- plot.spectrum(series [, opts]): sorted spectra (Lyapunov exponents, singular values,
-- eigenvalue moduli), one line per condition, each sorted descending against its index i.
-- series: a 1-d tensor or array (one spectrum), a 2-d tensor (one per row), or an array of
-- those (lengths may differ). opts: labels (one per spectrum), styles (one per spectrum:
-- "lines", "points" (open circles, for exact values under estimates) or "linespoints", the
-- default up to 40 values), title, xlabel, ylabel, logy, out, width, height.
M.spectrum = api("plot.spectrum", spectrum)

---------------------------------------------------------------- plot.spectrum_bands

local BANDS_OPTS = keys("xlabel", "ylabel", "quantiles", "log10", "x")

-- The q-quantile (0 <= q <= 1) of the ascending array 'v', interpolated linearly.
local function quantile(v, q)
  local pos = 1 + q * (#v - 1)
  local lo = math.floor(pos)
  local hi = math.min(lo + 1, #v)
  return v[lo] + (pos - lo) * (v[hi] - v[lo])
end

local function qname(q)
  if q == 0 then return "min" elseif q == 1 then return "max" elseif q == 0.5 then return "median" end
  return string.format("%g%%", q * 100)
end

local function spectrum_bands(S, opts)
  opts = options(opts, BANDS_OPTS)
  local d, s = ranked(S, "'S'", { 2, 3, 4 }, "to be a (K, ...) tensor of 2 to 4 dims")
  local qs = opts.quantiles or { 0, 0.25, 0.5, 0.75, 1 }
  if type(qs) ~= "table" or is_tensor(qs) or #qs == 0 then
    fail("option 'quantiles' must be a non-empty array of numbers in [0, 1], got %s", describe(qs))
  end
  local sq = {}
  for i, q in ipairs(qs) do
    if type(q) ~= "number" or not (q >= 0 and q <= 1) then
      fail("option 'quantiles'[%d] must be in [0, 1], got %s", i, describe(q))
    end
    sq[i] = q
  end
  table.sort(sq)
  local log = opt_bool(opts, "log10", true)
  local K = s[1]
  local xs = {}
  if opts.x ~= nil then
    local xs_s
    xs, xs_s = nested(opts.x, "option 'x'")
    if #xs_s ~= 1 or xs_s[1] ~= K then
      fail("option 'x' must be 1-d with %d values (one per row of 'S'), got shape %s", K, shapestr(xs_s))
    end
  else
    for k = 1, K do xs[k] = k - 1 end
  end
  -- per row: its values sorted, then each quantile (as log10 when asked)
  local at = {}
  for k = 1, K do
    local v = {}
    each(d[k], function(x) if x == x then v[#v + 1] = x end end)
    if #v == 0 then fail("row %d of 'S' has no values that are not NaN", k) end
    table.sort(v)
    at[k] = {}
    for j, q in ipairs(sq) do
      local y = quantile(v, q)
      if log then
        if not (y > 0) then
          fail("option 'log10' needs positive values, but row %d has %s (pass log10 = false)", k, num(y))
        end
        y = math.log(y, 10)
      end
      at[k][j] = y
    end
  end
  local n = #sq
  local rows = {}
  for k = 1, K do
    local r = { num(xs[k]) }
    for j = 1, n do r[j + 1] = num(at[k][j]) end
    rows[k] = table.concat(r, " ")
  end
  local cv = canvas(opts, { 800, 500, 80, 24 })
  local plots, keyed = {}, {}
  local function add(name, spec)
    keyed[#keyed + 1] = name
    plots[#plots + 1] = spec .. " title " .. gstr(name)
  end
  if cv.text then                   -- text cannot tell fills apart: every quantile a line
    for j = 1, n do add(qname(sq[j]), string.format("$q using 1:%d with lines", j + 1)) end
  else                              -- bands between q_1 and q_n, q_2 and q_(n-1), ..., darker
    local npairs = n // 2           -- inwards; an unpaired middle one (the median) a line
    for p = 1, npairs do
      add(qname(sq[p]) .. " to " .. qname(sq[n + 1 - p]),
          string.format("$q using 1:%d:%d with filledcurves fs transparent solid %.2f noborder "
                        .. "lc rgb \"#1f77b4\"", p + 1, n + 2 - p, 0.15 + 0.45 * p / npairs))
    end
    if n % 2 == 1 then
      add(qname(sq[npairs + 1]), string.format("$q using 1:%d with lines lw 2 lc rgb \"#d62728\"", npairs + 2))
    end
  end
  local xlo, xhi = math.huge, -math.huge
  for k = 1, K do xlo, xhi = math.min(xlo, xs[k]), math.max(xhi, xs[k]) end
  local body = labels(cv, opt_string(opts, "title", "Spectrum over k: quantiles of each row"),
                      opt_string(opts, "xlabel", "k"),
                      opt_string(opts, "ylabel", log and "log10 value" or "value"), key_width(cv, keyed))
               .. grid_cmd(cv) .. "set key outside right\n"
               .. (xlo < xhi and string.format("set xrange [%s:%s]\n", num(xlo), num(xhi)) or "")
               .. "plot " .. table.concat(plots, ", \\\n     ") .. "\n"
  return render(cv, block("q", rows), body)
end

--- plot.spectrum_bands(S [, opts]): how a spectrum is spread over k: for each row k of S
-- (K, ...) (mg.jacobian_spectra's singular_values (T, B, N): every sequence's singular values
-- of dh_T/dh_(k-1)), the quantiles of its values (NaN left out), drawn as filled bands between
-- the pairs q_1..q_n, q_2..q_(n-1), ... and the middle one (the median) as a line, against x
-- (default 0 .. K-1). opts: quantiles (default {0, 0.25, 0.5, 0.75, 1}), log10 (default true:
-- the log10 of the values, which must be > 0), x, title, xlabel, ylabel, out, width, height.
M.spectrum_bands = api("plot.spectrum_bands", spectrum_bands)

---------------------------------------------------------------- plot.scatter

local SCATTER_OPTS = keys("xlabel", "ylabel", "label", "logy")

local function scatter(x, y, opts)
  opts = options(opts, SCATTER_OPTS)
  local xd, xs = nested(x, "'x'")
  local yd, ys = nested(y, "'y'")
  if #xs ~= 1 then fail("expected 'x' 1-d, got shape %s", shapestr(xs)) end
  if #ys ~= 1 then fail("expected 'y' 1-d, got shape %s", shapestr(ys)) end
  if xs[1] ~= ys[1] then fail("'x' and 'y' differ in length (%d and %d)", xs[1], ys[1]) end
  if xs[1] == 0 then fail("nothing to plot ('x' and 'y' are empty)") end
  local logy = opt_bool(opts, "logy", false)
  local rows = {}
  for i = 1, #xd do rows[i] = num(xd[i]) .. " " .. num(yd[i]) end
  local cv = canvas(opts, { 800, 500, 80, 24 })
  local label = opts.label and gstr(opt_string(opts, "label")) or nil
  local body = labels(cv, opt_string(opts, "title", string.format("y vs. x (%d points)", #xd)),
                      opt_string(opts, "xlabel", "x"), opt_string(opts, "ylabel", "y"))
               .. grid_cmd(cv) .. (logy and "set logscale y\nset format y \"%g\"\n" or "")
               .. "plot $xy using 1:2 with points pt 7 ps 0.8 "
               .. (label and "title " .. label or "notitle") .. "\n"
  return render(cv, block("xy", rows), body)
end

--- plot.scatter(x, y [, opts]): x, y 1-d of equal length. opts: title, xlabel, ylabel, label,
-- logy, out, width, height.
M.scatter = api("plot.scatter", scatter)

---------------------------------------------------------------- plot.histogram

local HIST_OPTS = keys("bins", "range", "xlabel", "ylabel", "logy")

-- Counts of the finite values 'vals' in 'bins' equal bins over lo..hi.
local function bin_counts(vals, bins, lo, hi)
  local counts = {}
  for i = 1, bins do counts[i] = 0 end
  local w = (hi - lo) / bins
  for _, v in ipairs(vals) do
    if v >= lo and v <= hi then
      local k = math.floor((v - lo) / w) + 1
      if k > bins then k = bins end
      counts[k] = counts[k] + 1
    end
  end
  return counts, w
end

local function histogram(t, opts)
  opts = options(opts, HIST_OPTS)
  local d = nested(t, "'t'")
  local vals, skipped = {}, 0
  each(d, function(v) if finite(v) then vals[#vals + 1] = v else skipped = skipped + 1 end end)
  if #vals == 0 then fail("no finite values to plot (%d values in all)", skipped) end
  local bins = opt_int(opts, "bins", math.max(1, math.min(50, math.ceil(math.sqrt(#vals)))), 1)
  local lo, hi
  if opts.range ~= nil then
    lo, hi = opt_norm(opts, "range")
  else
    lo, hi = math.huge, -math.huge
    for _, v in ipairs(vals) do lo, hi = math.min(lo, v), math.max(hi, v) end
    if lo == hi then lo, hi = lo - 0.5, hi + 0.5 end
  end
  local counts, w = bin_counts(vals, bins, lo, hi)
  local rows = {}
  for i, c in ipairs(counts) do rows[i] = num(lo + (i - 0.5) * w) .. " " .. c end
  local title = string.format("Histogram of %d values, %d bins", #vals, bins)
  if skipped > 0 then title = title .. string.format(" (%d non-finite left out)", skipped) end
  local cv = canvas(opts, { 800, 500, 80, 24 })
  local logy = opt_bool(opts, "logy", false)
  local body = labels(cv, opt_string(opts, "title", title), opt_string(opts, "xlabel", "value"),
                      opt_string(opts, "ylabel", "count"))
               .. grid_cmd(cv) .. string.format("set boxwidth %s absolute\nset xrange [%s:%s]\n",
                                num(w), num(lo), num(hi))
               .. (logy and "set logscale y\nset format y \"%g\"\nset yrange [0.5:*]\n" or "set yrange [0:*]\n")
               .. "set style fill solid 0.6 border -1\n"
               .. "plot $hist using 1:2 with boxes notitle\n"
  return render(cv, block("hist", rows), body)
end

--- plot.histogram(t [, opts]): the values of 't' (any shape, NaN and infinities left out).
-- opts: bins (default min(50, ceil(sqrt(n)))), range = {lo, hi}, title, xlabel, ylabel, logy,
-- out, width, height.
M.histogram = api("plot.histogram", histogram)

---------------------------------------------------------------- heatmaps

-- Text heatmaps fix their right, top and bottom margins (characters), so that the frame's
-- size, and so each cell's characters, are known.
local TEXT_RM, TEXT_TM, TEXT_BM = 2, 2, 3

-- 'v' with infinities made the largest finite values, so they show in the extreme colours.
local function saturate(v)
  if v == math.huge then return 1e300 elseif v == -math.huge then return -1e300 end
  return v
end

-- The commands that draw the R x C matrix 'm' (nested rows; row 1 at the top) as one plot
-- named 'name', colours over lo..hi; returns the datablock and the plot commands. In text,
-- the frame holds 'cw' x 'ch' characters (the caller sets the margins that make it so) and
-- every one of them gets the ramp character of the cell under it, so cells of unequal
-- character counts still tile the frame: none is lost, no gap opens (with fewer characters
-- than cells, the frame is too small, and neighbouring cells share characters).
-- 'notics': leave the tics as they are (a compact multiplot has none).
local function heat(cv, name, m, R, C, cmap, lo, hi, cw, ch, notics)
  local rows = {}
  local setup = string.format("set xrange [0.5:%s]\nset yrange [%s:0.5]\n", num(C + 0.5),
                              num(R + 0.5))
  if not notics then
    setup = setup .. int_tics("x", C, cv.text and math.max(2, cw // 6) or 8)
                  .. int_tics("y", R, cv.text and math.max(2, ch // 2) or 8)
  end
  if cv.text then
    -- inner character k of W sits at 0.5 + k * C / (W + 1): the borders are at 0.5, C + 0.5
    local W, H = math.max(1, cw), math.max(1, ch)
    for j = 1, H do
      local y = j * R / (H + 1)
      local r = math.min(R, math.floor(y) + 1)
      for k = 1, W do
        local x = k * C / (W + 1)
        local v = m[r][math.min(C, math.floor(x) + 1)]
        local ch_ = v == v and ramp_char(cmap.ramp, v, lo, hi) or " "
        if ch_ ~= " " then
          rows[#rows + 1] = string.format("%s %s \"%s\"", num(0.5 + x), num(0.5 + y), ch_)
        end
      end
    end
    if #rows == 0 then rows[1] = "0 0 \" \"" end          -- all blank: keep the frame
    return block(name, rows), setup .. "plot $" .. name .. " using 1:2:3 with labels notitle\n"
  end
  setup = setup .. string.format("set palette defined (%s)\nset cbrange [%s:%s]\n",
                                 cmap.stops, num(lo), num(hi))
  local nan = false
  each(m, function(v) if v ~= v then nan = true end end)
  -- 'with image' needs a 2 x 2 grid and warns about NaN; boxes take any cells
  if R >= 2 and C >= 2 and not nan then
    for r = 1, R do
      local row = {}
      for c = 1, C do row[c] = num(saturate(m[r][c])) end
      rows[r] = table.concat(row, " ")
    end
    return block(name, rows),
           setup .. "plot $" .. name .. " matrix using ($1+1):($2+1):3 with image notitle\n"
  end
  for r = 1, R do
    for c = 1, C do rows[#rows + 1] = string.format("%d %d %s", c, r, num(saturate(m[r][c]))) end
  end
  return block(name, rows), setup .. "plot $" .. name .. " using 1:2:(0.5):(0.5):3 "
         .. "with boxxyerror fs solid 1.0 noborder lc palette notitle\n"
end

local HEAT_OPTS = keys("norm", "cmap", "xlabel", "ylabel", "colorbar")

local function heatmap(t, opts)
  opts = options(opts, HEAT_OPTS)
  local m, s = ranked(t, "'t'", { 2 }, "to be a 2-d (rows, columns) tensor")
  local cmap = opt_cmap(opts)
  local lo, hi = color_range(opts, cmap, m)
  local cv = canvas(opts, { 800, 600, 80, 30 })
  local title = opt_string(opts, "title", string.format("Heatmap of a %dx%d matrix", s[1], s[2]))
  title = title .. string.format(", norm=(%s, %s)", fmtg(lo), fmtg(hi))
  if cv.text then title = title .. "\n" .. ramp_legend(cmap, lo, hi) end
  local colorbar = opt_bool(opts, "colorbar", true)
  local xlabel, ylabel = opt_string(opts, "xlabel", "column"), opt_string(opts, "ylabel", "row")
  local cw, ch, margins = cv.w - 12, cv.h - 7, ""
  if cv.text then                        -- margins fixed, so the frame's size is known
    local lm = ylabel ~= "" and #ylabel + 11 or 8
    local _, breaks = wrap(cv, title):gsub("\n", "")
    local tm, bm = breaks + 2, xlabel ~= "" and 3 or 2
    cw, ch = cv.w - lm - TEXT_RM - 2, cv.h - tm - bm - 2   -- the frame's inner characters
    margins = string.format("set lmargin %d\nset rmargin %d\nset tmargin %d\nset bmargin %d\n", lm,
                            TEXT_RM, tm, bm)
  end
  local blk, draw = heat(cv, "m", m, s[1], s[2], cmap, lo, hi, cw, ch)
  local body = labels(cv, title, xlabel, ylabel, colorbar and colorbox_width(cv) or 0) .. margins
               .. (colorbar and "" or "unset colorbox\n") .. draw
  return render(cv, blk, body)
end

--- plot.heatmap(t2d [, opts]): t2d (rows, columns), row 1 at the top. opts: norm = {lo, hi}
-- (default +-max|v| for diverging maps, min..max otherwise), cmap ("bwr" default, "coolwarm",
-- "seismic", "RdBu", "viridis", "magma", "hot", "jet", "gray"), title, xlabel, ylabel,
-- colorbar (default true), out, width, height.
M.heatmap = api("plot.heatmap", heatmap)

---------------------------------------------------------------- features (seed: See RNN)

-- More panels than this make a compact grid: no tics, titles or axis labels, each panel
-- numbered in its corner (as the seed's show_xy_ticks=[0,0] for 256 units).
local COMPACT = 16

-- Grid of 'n' panels: rows from opts.n_rows (default about square), columns to fit, and
-- whether it is compact.
local function grid(opts, n)
  local rows = opt_int(opts, "n_rows", math.max(1, math.floor(math.sqrt(n))), 1, n)
  return rows, math.ceil(n / rows), n > COMPACT
end

-- Default canvas sizes { w, h, text w, text h } for an nr x nc grid of panels that want
-- about 'pw' x 'ph' pixels each (less when compact), within a minimum of 'w0' x 'h0'.
local function grid_size(nr, nc, compact, pw, ph, w0, h0)
  if compact then
    return { math.max(w0, 90 * nc), math.max(h0, 70 * nr + 40),
             math.min(240, math.max(80, 16 * nc)), math.min(120, math.max(24, 8 * nr + 3)) }
  end
  return { math.max(w0, pw * nc), math.max(h0, ph * nr),
           math.max(80, 40 * nc), math.max(24, 15 * nr + 3) }
end

-- The top of a compact grid's panels (screen fraction) under the wrapped title 'title'.
local function compact_top(cv, title)
  local _, breaks = title:gsub("\n", "")
  return cv.text and 1 - (breaks + 2) / cv.h or 1 - (20 * breaks + 34) / cv.h
end

-- A graphic grid with fixed margins: pixels below the panels (x tics, x label) and the top
-- of the panels (screen fraction) under the wrapped 'title' and the first row's panel titles.
local GRID_BOTTOM = 80
local function grid_top(cv, title)
  local _, breaks = title:gsub("\n", "")
  return 1 - (20 * breaks + 70) / cv.h
end

-- 'set multiplot' with 'title' (wrapped to fit) for an nr x nc grid; compact grids get
-- tight margins (the panels ending at screen fraction 'right', default 0.99) and no tics or
-- labels. A graphic grid given 'right' gets fixed margins and spacing in pixels (tics and
-- labels of each panel fit between the panels), its panels ending at 'right'.
local function multiplot_cmd(cv, nr, nc, title, compact, right)
  title = wrap(cv, title)
  local s = string.format("set multiplot layout %d,%d rowsfirst title %s", nr, nc, gstr(title))
  if not compact and right and not cv.text then
    return s .. string.format(" margins %.4f,%.4f,%.4f,%.4f spacing %.4f,%.4f\n", 80 / cv.w,
                              right, GRID_BOTTOM / cv.h, grid_top(cv, title), 60 / cv.w, 85 / cv.h)
  end
  if not compact then return s .. "\n" end
  return s .. string.format(" margins 0.01,%.4f,0.01,%.4f spacing 0.004,0.004\n", right or 0.99,
                            compact_top(cv, title))
         .. 'unset xtics\nunset ytics\nunset title\nset xlabel ""\nset ylabel ""\n'
end

-- The number of compact panel 'k', in its top left corner (green, as the seed's).
local function corner_label(k)
  return string.format('set label 1 "%d" at graph 0.03, graph 0.85 left front tc rgb "#008000"\n',
                       k)
end

-- The per-sample data (B, T, C) of a (T, C) or (B, T, C) input, and whether it had samples.
local function samples(g, expect)
  local d, s = ranked(g, "'g'", { 2, 3 }, expect)
  if #s == 2 then return { d }, { 1, s[1], s[2] }, false end
  return d, s, true
end

local F1_OPTS = keys("n_rows", "name", "equate_axes")

local function features_1d(g, opts)
  opts = options(opts, F1_OPTS)
  local d, s, batched = samples(g, "to be a (B, T, C) or (T, C) tensor")
  local B, T, C = s[1], s[2], s[3]
  local nr, nc, compact = grid(opts, C)
  local name = opt_string(opts, "name", "Gradients")
  local equate = opt_bool(opts, "equate_axes", true)
  local blocks = {}
  for c = 1, C do
    local parts = {}
    for b = 1, B do
      local rows = {}
      for t = 1, T do rows[t] = t .. " " .. num(d[b][t][c]) end
      parts[b] = table.concat(rows, "\n")
    end
    blocks[c] = "$ch" .. c .. " << EOD\n" .. table.concat(parts, "\n\n\n") .. "\nEOD\n"
  end
  local cv = canvas(opts, grid_size(nr, nc, compact, 300, 200, 1200, 800))
  local title = opt_string(opts, "title", batched
    and string.format("((%s vs. Timesteps) vs. Samples) vs. Channels", name)
    or string.format("(%s vs. Timesteps) vs. Channels", name))
  local m = absmax(d)
  if m == 0 then m = 1 end
  if compact then
    title = title .. string.format(", timesteps 1..%d", T)
            .. (equate and string.format(", y axes +-%s", fmtg(m * 1.05)) or "")
  end
  local body = { grid_cmd(cv), "unset key\n", string.format("set xrange [1:%d]\n", math.max(T, 2)),
                 int_tics("x", T, cv.text and math.max(2, cv.w // nc // 8) or 8),
                 multiplot_cmd(cv, nr, nc, title, compact) }
  if equate then
    body[#body + 1] = string.format("set yrange [%s:%s]\n", num(-m * 1.05), num(m * 1.05))
  end
  for c = 1, C do
    body[#body + 1] = compact and corner_label(c)
      or panel_labels(cv, c, C, nc, string.format("%s, channel %d", name, c), "timestep", name)
    body[#body + 1] = string.format("plot for [b=0:%d] $ch%d index b using 1:2 with lines "
                                    .. "lt b+1 lw 1.2 notitle\n", B - 1, c)
  end
  body[#body + 1] = "unset multiplot\n"
  return render(cv, table.concat(blocks), table.concat(body))
end

--- plot.features_1d(g [, opts]): g (T, C) or (B, T, C); one panel per channel (value against
-- timestep, one line per sample) in an n_rows x ceil(C / n_rows) grid; y axes equal and
-- symmetric about 0 (equate_axes=false: each its own); past 16 panels a compact grid, panels
-- numbered in a corner, the scale in the title. opts: n_rows, name (what g holds,
-- default "Gradients", e.g. "dL/dh_t"), title, equate_axes, out, width, height.
M.features_1d = api("plot.features_1d", features_1d)

local F2_OPTS = keys("n_rows", "norm", "reflect_half", "cmap", "name", "colorbar", "xlabel",
                     "ylabel")

-- Sample 'x' (T rows of C) as channels x timesteps; with 'reflect', the second half of the
-- channels reversed in time (a bidirectional layer's backward direction read left to right).
local function channels_by_time(x, T, C, reflect)
  local m = {}
  for c = 1, C do
    local row = {}
    local rev = reflect and c > C // 2
    for t = 1, T do row[t] = x[rev and T + 1 - t or t][c] end
    m[c] = row
  end
  return m
end

-- Text panels of features_2d: every panel gets the same margins (a y label only in the first
-- column used to narrow that column's panels), so all are equally wide; 'lm' is the left
-- margin (characters) that holds the level y label and the tic labels.
local function text_panel_margins(lm)
  return string.format("set lmargin %d\nset rmargin %d\nset tmargin %d\nset bmargin %d\n", lm,
                       TEXT_RM, TEXT_TM, TEXT_BM)
end

-- The default canvas of features_2d: pixels as grid_size gives (wider panels for their own
-- colour boxes); in text, enough characters that every timestep and channel of a panel gets
-- at least one character cell (nothing is lost).
-- The character rows of a text panel of features_2d for C channels (frame and margins).
local function f2_panel_rows(C)
  return math.max(1, math.ceil(6 / C)) * C + TEXT_TM + TEXT_BM + 1
end

local function f2_size(nr, nc, compact, C, T, lm, colorbar)
  local size = grid_size(nr, nc, compact, 320, 280, 600, 450)
  if colorbar then                                    -- room for the shared colour box
    size[1] = math.max(600, (compact and 90 or 320) * nc + 120)
  end
  local kx = math.max(1, math.ceil(20 / T))
  if compact then
    size[3] = math.max(80, math.ceil(nc * (T + 2) / 0.98) + 1)
    size[4] = math.max(24, nr * (C + 2) + 6)
  else
    size[3] = nc * (lm + TEXT_RM + 1 + kx * T) + 1
    if size[3] < 80 then size[3] = nc * ((79 // nc) + 1) + 1 end      -- still divides evenly
    size[4] = math.max(24, nr * f2_panel_rows(C) + 3)
  end
  return size
end

local function features_2d(g, opts)
  opts = options(opts, F2_OPTS)
  local d, s, batched = samples(g, "to be a (B, T, C) or (T, C) tensor")
  local B, T, C = s[1], s[2], s[3]
  local reflect = opt_bool(opts, "reflect_half", false)
  if reflect and C % 2 ~= 0 then
    fail("reflect_half needs an even number of channels (both directions), got %d", C)
  end
  local nr, nc, compact = grid(opts, B)
  local cmap = opt_cmap(opts)
  local lo, hi = color_range(opts, cmap, d)
  local name = opt_string(opts, "name", "Gradients")
  local xlabel = opt_string(opts, "xlabel", "timestep")
  local ylabel = opt_string(opts, "ylabel", "channel")
  local colorbar = opt_bool(opts, "colorbar", true)
  local lm = ylabel ~= "" and #ylabel + 11 or 8
  local cv = canvas(opts, f2_size(nr, nc, compact, C, T, lm, colorbar))
  local title = opt_string(opts, "title", string.format(batched
    and "%s: ((Channels vs. Timesteps) vs. Samples)" or "%s: (Channels vs. Timesteps)", name))
  title = title .. string.format(", norm=(%s, %s)", fmtg(lo), fmtg(hi))
    .. (reflect and ", second half reflected in time" or "")
  if cv.text then title = title .. "\n" .. ramp_legend(cmap, lo, hi) end
  if compact then title = title .. string.format(", %d channels x %d timesteps each", C, T) end
  -- one colour box for all panels (they share one scale), right of the grid
  local shared_box = colorbar and not cv.text
  local right = shared_box and 1 - 120 / cv.w or nil
  local body = { colorbar and "" or "unset colorbox\n",
                 multiplot_cmd(cv, nr, nc, title, compact, right) }
  -- the characters each panel's frame holds in text (the layout divides the canvas evenly)
  local cw, ch
  if cv.text and compact then
    cw = math.floor((0.98 * cv.w - 0.004 * cv.w * (nc - 1)) / nc) - 2
    ch = math.floor((compact_top(cv, wrap(cv, title)) - 0.01) * cv.h / nr) - 2
  elseif cv.text then
    -- gnuplot's dumb layout: panels (w - 1) / nc wide and (h - 1 - title lines) / nr high,
    -- frames inside the margins; by default the canvas is sized so these divide evenly
    local _, breaks = wrap(cv, title):gsub("\n", "")
    if opts.height == nil then cv.h = math.max(cv.h, nr * f2_panel_rows(C) + 2 + breaks) end
    cw = (cv.w - 1) // nc - lm - TEXT_RM - 1
    ch = (cv.h - 2 - breaks) // nr - TEXT_TM - TEXT_BM - 1
  else
    cw, ch = cv.w // nc - 12, cv.h // nr - 6
  end
  local blocks = {}
  for b = 1, B do
    local m = channels_by_time(d[b], T, C, reflect)
    local blk, draw = heat(cv, "s" .. b, m, C, T, cmap, lo, hi, cw, ch, compact)
    blocks[b] = blk
    if shared_box then
      -- in a compact grid, clear of the edges by half a tic label (they centre on the ends)
      local bottom = compact and 14 / cv.h or GRID_BOTTOM / cv.h
      local top = compact and compact_top(cv, wrap(cv, title)) - 6 / cv.h
                  or grid_top(cv, wrap(cv, title))
      body[#body + 1] = b < B and "unset colorbox\n" or string.format(
        "set colorbox user origin screen %.4f, screen %.4f size screen %.4f, screen %.4f\n",
        1 - 108 / cv.w, bottom, 14 / cv.w, top - bottom)
    end
    if cv.text and not compact then body[#body + 1] = text_panel_margins(lm) end
    body[#body + 1] = compact and corner_label(b)
      or panel_labels(cv, b, B, nc, batched and "sample " .. b or "", xlabel, ylabel, lm)
    body[#body + 1] = draw
  end
  body[#body + 1] = "unset multiplot\n"
  return render(cv, table.concat(blocks), table.concat(body))
end

--- plot.features_2d(g [, opts]): g (B, T, C) or (T, C); one heatmap (channels x timesteps,
-- channel 1 at the top) per sample in an n_rows x ceil(B / n_rows) grid (compact past 16),
-- one colour scale for all, shown by one colour box right of the grid. opts: n_rows, norm = {lo, hi} (default +-max|g|), reflect_half (flip the
-- second half of the channels in time, for bidirectional layers), cmap ("bwr"), name, title,
-- xlabel ("timestep"), ylabel ("channel"), colorbar (default true), out, width, height.
M.features_2d = api("plot.features_2d", features_2d)

local F0_OPTS = keys("name", "cmap")

-- The palette that colours channels 1..C: 'cmap' in C discrete colours; no colour box in text.
local function channel_palette(cv, cmap, C)
  if cv.text then return "unset colorbox\n" end
  return string.format("set palette defined (%s)\n%sset cbrange [0.5:%s]\nset cblabel %s\n"
                       .. "set cbtics %d\n", cmap.stops,
                       C > 1 and string.format("set palette maxcolors %d\n", C) or "",
                       num(C + 0.5), gstr("channel"), tic_step(C, 10))
end

local function features_0d(g, opts)
  opts = options(opts, F0_OPTS)
  local d, s = ranked(g, "'g'", { 2 }, "to be a (B, C) tensor")
  local B, C = s[1], s[2]
  local cmap = opt_cmap{ cmap = opts.cmap or "viridis" }
  local name = opt_string(opts, "name", "Gradients")
  local rows = {}
  for b = 1, B do
    for c = 1, C do rows[#rows + 1] = string.format("%d %s %d", b, num(d[b][c]), c) end
  end
  local cv = canvas(opts, { 1200, 400, 80, 24 })
  local title = opt_string(opts, "title", string.format("(%s vs. Samples) vs. Channels", name))
  if cv.text then title = title .. "\nletters are channels: A = 1, B = 2, ..." end
  local body = labels(cv, title, "sample", name, colorbox_width(cv))
               .. string.format("set xrange [0.5:%s]\n", num(B + 0.5))
               .. int_tics("x", B, cv.text and math.max(2, cv.w // 6) or 16)
               .. "set xzeroaxis lt -1 lw 1\n" .. (cv.text and "" or "set grid ytics\n")
               .. channel_palette(cv, cmap, C)
               .. (cv.text and "plot $g0 using 1:2:3 with points pt variable notitle\n"
                   or "plot $g0 using 1:2:3 with points pt 6 ps 1.2 lw 2 lc palette notitle\n")
  return render(cv, block("g0", rows), body)
end

--- plot.features_0d(g [, opts]): g (B, C), e.g. the gradient w.r.t. a return_sequences=false
-- output: one point per sample and channel (x = sample, colour = channel) and a y = 0 line.
-- opts: name, title, cmap ("viridis": bwr, the seed's, hides middle channels on white), out,
-- width, height.
M.features_0d = api("plot.features_0d", features_0d)

---------------------------------------------------------------- plot.gnuplot

-- The datablock lines of 'v': numbers of rank 0..3 (one line per row; rank 3 gives blocks
-- separated by two blank lines, gnuplot's 'index') or raw text.
local function data_lines(v, what)
  if type(v) == "string" then
    if v:find("\n") then
      local out = {}
      for line in (v .. "\n"):gmatch("(.-)\n") do
        if line == "EOD" then fail("%s contains a line 'EOD'", what) end
        out[#out + 1] = line
      end
      return out
    end
    return { v }
  end
  local d, s = nested(v, what)
  local function row(r)
    if type(r) == "number" then return num(r) end
    local p = {}
    for i, x in ipairs(r) do p[i] = num(x) end
    return table.concat(p, " ")
  end
  if #s == 0 then return { num(d) } end
  if #s <= 2 then
    local out = {}
    for i, r in ipairs(d) do out[i] = row(r) end
    return out
  end
  if #s == 3 then
    local out = {}
    for i, blk in ipairs(d) do
      if i > 1 then out[#out + 1] = "" out[#out + 1] = "" end
      for _, r in ipairs(blk) do out[#out + 1] = row(r) end
    end
    return out
  end
  fail("%s must have rank 0 to 3, got shape %s", what, shapestr(s))
end

local function gnuplot(script, data, opts)
  if type(script) ~= "string" then fail("'script' must be a string, got %s", describe(script)) end
  opts = options(opts, keys())
  local blocks = {}
  if data ~= nil then
    if type(data) ~= "table" or is_tensor(data) then
      fail("'data' must be a table of named datablocks, got %s", describe(data))
    end
    local names = {}
    for k in pairs(data) do
      if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
        fail("datablock names must be identifiers (used as $name), got %s", describe(k))
      end
      names[#names + 1] = k
    end
    table.sort(names)
    for _, k in ipairs(names) do
      blocks[#blocks + 1] = block(k, data_lines(data[k], "data." .. k))
    end
  end
  local cv = canvas(opts, { 800, 500, 80, 24 })
  return render(cv, table.concat(blocks), script:sub(-1) == "\n" and script or script .. "\n")
end

--- plot.gnuplot(script [, data [, opts]]): runs gnuplot 'script' after the terminal setup
-- (from opts.out, width, height as for the other calls; text to standard output by default)
-- and after the datablocks of 'data' = { name = rows, ... } (each a tensor or Lua array of
-- rank 0..3 (rank 3: blocks for 'index'), or raw text), used in the script as $name.
M.gnuplot = api("plot.gnuplot", gnuplot)

return M
