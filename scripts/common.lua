-- scripts/common.lua: what the experiment scripts share. Not a module of moongrad: each script
-- loads it with dofile from its own directory,
--   local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
-- so the scripts run from any working directory without installing anything.
--
-- Command-line options, the output directory, the progress line (one updating line on a
-- terminal, plain lines otherwise), tensor helpers the reports use, and checks that an
-- experiment's own assumptions hold (a script that computes nonsense stops with a message).
local mg = mg or require "moongrad"

local common = {}

---------------------------------------------------------------- command line

-- 'v' as the kind the default has ("int", "number", "string", "bool"), or nil and a reason.
local function convert(v, kind)
  if kind == "string" then return v end
  if kind == "bool" then
    if v == "true" or v == "1" or v == "yes" then return true end
    if v == "false" or v == "0" or v == "no" then return false end
    return nil, "expected true or false"
  end
  local n = tonumber(v)
  if n == nil then return nil, "expected a number" end
  if kind == "int" then
    if n ~= math.floor(n) then return nil, "expected an integer" end
    n = math.tointeger(n)
  end
  return n
end

local function kind_of(default)
  if type(default) == "boolean" then return "bool" end
  if math.type(default) == "integer" then return "int" end
  if type(default) == "number" then return "number" end
  return "string"
end

-- The usage text of a script: its name, a one-line description, and its options.
local function usage(name, about, spec)
  local lines = { string.format("usage: moongrad %s [options]", name), about, "options:" }
  for _, o in ipairs(spec) do
    lines[#lines + 1] = string.format("  --%-14s %s (default %s)", o[1] .. " " .. kind_of(o[2]):upper(),
      o[3], tostring(o[2]))
  end
  lines[#lines + 1] = "  --help           this text"
  return table.concat(lines, "\n")
end

-- common.options(args, name, about, spec): parses "--key value" and "--key=value".
-- 'spec' is an array of { key, default, help [, min or choices] }: the value takes the
-- default's kind (an integer, a number, a string or a boolean); a number must be >= min when
-- min is given, a string one of 'choices' (an array) when they are given.
-- A mistake prints the message and the usage to stderr and exits with status 2; --help prints
-- the usage and exits with 0. Returns a table key -> value.
function common.options(args, name, about, spec)
  local by_key, opts = {}, {}
  for _, o in ipairs(spec) do
    by_key[o[1]] = o
    opts[o[1]] = o[2]
  end
  local function fail(msg)
    io.stderr:write(name, ": ", msg, "\n", usage(name, about, spec), "\n")
    os.exit(2)
  end
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      print(usage(name, about, spec))
      os.exit(0)
    end
    local key, value = a:match("^%-%-([%w_-]+)=(.*)$")
    if not key then
      key = a:match("^%-%-([%w_-]+)$")
      if not key then fail(string.format("unexpected argument '%s'", a)) end
      if by_key[key] == nil then fail(string.format("unknown option --%s", key)) end
      if i == #args then fail(string.format("option --%s needs a value", key)) end
      i = i + 1
      value = args[i]
    end
    local o = by_key[key]
    if o == nil then fail(string.format("unknown option --%s", key)) end
    local kind = kind_of(o[2])
    local v, why = convert(value, kind)
    if v == nil then fail(string.format("option --%s: %s, got '%s'", key, why, value)) end
    if type(o[4]) == "table" then
      local ok = false
      for _, c in ipairs(o[4]) do ok = ok or c == v end
      if not ok then
        fail(string.format("option --%s must be %s, got '%s'", key, table.concat(o[4], " or "), value))
      end
    elseif o[4] and v < o[4] then
      fail(string.format("option --%s must be >= %s, got %s", key, tostring(o[4]), value))
    end
    opts[key] = v
    i = i + 1
  end
  return opts
end

-- common.opt.NAME(default [, min]): the entry of 'spec' for an option several scripts take,
-- with its one help text and its least value (a script may ask for a larger one):
-- common.opt.units(100) is { "units", 100, "units of the recurrent layers", 1 }. An option
-- that means something else in a script (the steps of a Lyapunov run) is declared there.
local SHARED = {
  out = { "output directory" },
  seed = { "random seed" },
  units = { "units of the recurrent layers", 1 },
  steps = { "timesteps T of a sequence", 1 },
  batch = { "batch size", 1 },
  input = { "input features", 1 },
  iters = { "training iterations", 1 },
  lr = { "learning rate", 0 },
  logdir = { "TensorBoard log directory (default: OUT/tensorboard)" },
}
common.opt = {}
for key, o in pairs(SHARED) do
  common.opt[key] = function(default, min) return { key, default, o[1], min or o[2] } end
end

-- common.setup(args, name, about, seed, spec): the preamble every script shares. Options as
-- common.options, with --out (default "out": the output directory, created) before 'spec' and
-- --seed (default 'seed', given to mg.manual_seed) after it. Returns the options and the
-- output directory.
function common.setup(args, name, about, seed, spec)
  local full = { common.opt.out("out") }
  for _, o in ipairs(spec) do full[#full + 1] = o end
  full[#full + 1] = common.opt.seed(seed)
  local opt = common.options(args, name, about, full)
  local out = common.outdir(opt.out)
  mg.manual_seed(opt.seed)
  return opt, out
end

---------------------------------------------------------------- files

local function shq(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- common.outdir(dir): creates 'dir' (and its parents) if needed; returns it without a trailing
-- slash. Stops with a message when it cannot be written.
function common.outdir(dir)
  dir = dir:gsub("(.)/+$", "%1")
  os.execute("mkdir -p " .. shq(dir) .. " 2>/dev/null")
  local probe = dir .. "/.moongrad_write_test"
  local f = io.open(probe, "w")
  if not f then
    io.stderr:write(string.format("cannot write to the output directory '%s'\n", dir))
    os.exit(1)
  end
  f:close()
  os.remove(probe)
  return dir
end

---------------------------------------------------------------- progress

-- True when standard output is a terminal (the shell inherits our stdout).
local tty
function common.isatty()
  if tty == nil then
    tty = os.getenv("MOONGRAD_PROGRESS") == "tty"
          or (os.getenv("MOONGRAD_PROGRESS") ~= "plain" and os.execute("test -t 1") == true)
  end
  return tty
end

-- common.progress(label, i, n, loss [, every]): "label: iteration i/n  loss 0.1234". On a
-- terminal one line is rewritten in place (\r) and ended at i == n; otherwise a plain line is
-- printed every 'every' iterations (default about ten lines per run) and at the last one.
function common.progress(label, i, n, loss, every)
  local line = string.format("%s: iteration %d/%d  loss %.6f", label, i, n, loss)
  if common.isatty() then
    io.write("\r", line, "\27[K", i == n and "\n" or "")
    io.flush()
  else
    every = every or math.max(1, n // 10)
    if i == 1 or i == n or i % every == 0 then print(line) end
  end
end

---------------------------------------------------------------- tensors

-- The values of 't' as a flat Lua array (row-major).
function common.values(t)
  return t:contiguous():reshape(-1):totable()
end

-- The largest |a - b| over two tensors (or numbers) of the same shape.
function common.maxdiff(a, b)
  if type(a) == "number" then return math.abs(a - b) end
  return (a:to("float64") - b:to("float64")):abs():max():item()
end

-- A shape table as "(2,5,32,10)".
function common.shape(t)
  local s = type(t) == "table" and t or t:shape()
  local parts = {}
  for i, n in ipairs(s) do parts[i] = tostring(n) end
  return "(" .. table.concat(parts, ",") .. ")"
end

-- Stops the script with 'msg' when 'ok' is false: an experiment whose own check fails must
-- not print a report as if it had worked.
function common.check(ok, fmt, ...)
  if not ok then
    io.stderr:write("check failed: ", string.format(fmt, ...), "\n")
    os.exit(1)
  end
end

-- 's' as a gnuplot string literal (for scripts given to mg.plot.gnuplot); "\n" breaks lines.
function common.gstr(s)
  return '"' .. s:gsub('[\\"]', "\\%0"):gsub("\n", "\\n") .. '"'
end

-- Prints where a picture went: "wrote <what>: <path>".
function common.wrote(what, path)
  print(string.format("wrote %s: %s", what, path))
end

return common
