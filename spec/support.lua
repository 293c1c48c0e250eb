-- support.lua: the helpers the specs share (`local support = require "support"`). Not a spec
-- itself (busted runs only *_spec.lua); found through busted's --lpath=<source>/spec/?.lua,
-- which CMakeLists.txt passes to every spec test (run by hand, pass --lpath=spec/?.lua too).
-- Assertions go through luassert, so a failed check fails the test with the message given.
local mg = require "moongrad"
local luassert = require "luassert"

local support = {}

-- No test may leave a tape recording: one left to the collector keeps recording every op of
-- the tests after it (every spec file runs in one busted process too) until it is collected,
-- and while another tape records a Jacobian defers nothing, so what those tests measure
-- depends on the collector's timing. Every tape mg.GradientTape makes in a spec is kept
-- (weakly); at the end of each test one still recording fails that test, named, and is
-- stopped so the tests after it run as they would alone. The list and the hook live in the
-- registry: busted gives each spec file fresh modules, the tapes outlive them.
do
  local R = debug.getregistry()
  local K = "moongrad spec support: tapes"
  if R[K] == nil then
    R[K] = setmetatable({}, { __mode = "k" })
    local ok, busted = pcall(require, "busted")
    if ok and type(busted) == "table" and busted.subscribe then
      busted.subscribe({ "test", "end" }, function(element)
        local left = {}
        for tape in pairs(R[K]) do
          if tostring(tape):find("(recording", 1, true) then
            left[#left + 1] = tostring(tape)
            tape:stop()
          end
        end
        if #left > 0 then
          error(("%s: a tape left recording (stop it, or use 'local tape <close>'): %s")
                :format(element.name or "test", table.concat(left, "; ")), 0)
        end
      end)
    end
  end
  local new = mg.GradientTape
  local tapes = R[K]
  mg.GradientTape = function(...)
    local ok, tape = pcall(new, ...)
    if not ok then                         -- the error at the caller's line, as without this
      error(type(tape) == "string" and tape:gsub("^[^\n]-:%d+: ", "", 1) or tape, 2)
    end
    tapes[tape] = true
    return tape
  end
end

-- Options for float64 tensors: mg.tensor(t, support.F64), mg.randn(3, 4, support.F64).
support.F64 = { dtype = "float64" }

-- The source tree and the build tree as absolute paths: MOONGRAD_SOURCE and MOONGRAD_BUILD
-- (ctest sets them), else (run by hand) the current directory and its build/; and the
-- moongrad executable of the build.
local function absolute(p) return p:sub(1, 1) == "/" and p or os.getenv("PWD") .. "/" .. p end
support.SOURCE = absolute(os.getenv("MOONGRAD_SOURCE") or ".")
support.BUILD = absolute(os.getenv("MOONGRAD_BUILD") or (support.SOURCE .. "/build"))
support.EXE = support.BUILD .. "/moongrad"

---------------------------------------------------------------- errors

-- support.raises(fn, ...): calling 'fn' (without arguments) raises an error whose message
-- contains every plain string that follows.
function support.raises(fn, ...)
  local ok, msg = pcall(fn)
  luassert.is_false(ok, "expected an error")
  msg = tostring(msg)
  for _, s in ipairs { ... } do
    luassert.is_truthy(msg:find(s, 1, true), ("error %q does not mention %q"):format(msg, s))
  end
end

-- support.assert_error(text, fn, ...): fn(...) raises an error whose message contains the
-- plain string 'text'.
function support.assert_error(text, fn, ...)
  local ok, msg = pcall(fn, ...)
  luassert(not ok, "expected an error containing: " .. text)
  msg = tostring(msg)
  luassert(msg:find(text, 1, true), string.format("error %q does not contain %q", msg, text))
end

-- support.contains(haystack, ...): the string 'haystack' contains each plain string that
-- follows; support.lacks(haystack, s): it does not contain 's'.
function support.contains(haystack, ...)
  for _, s in ipairs { ... } do
    luassert.is_truthy(haystack:find(s, 1, true), ("%q\ndoes not contain %q"):format(haystack, s))
  end
end

function support.lacks(haystack, s)
  luassert.is_falsy(haystack:find(s, 1, true), ("%q\nshould not contain %q"):format(haystack, s))
end

---------------------------------------------------------------- numbers and tables

-- support.closeness(opts) -> close(expected, actual [, tol]): a check that 'actual' equals
-- 'expected' (a number or nested arrays of numbers, as tensor:totable() gives) element by
-- element within 'tol' (default 0: exactly); a failure names the element, e.g. value[2][3].
--   opts.tolerance = "relative": |expected - actual| <= tol * max(1, |expected|)
--   opts.tolerance = "absolute": |expected - actual| <= tol
--   opts.nonfinite = true: an expected nan matches only a nan, an expected +-inf only itself;
--     without it nan and inf go through the formula above like any number (nan never matches).
function support.closeness(opts)
  local relative = opts.tolerance == "relative"
  if not relative and opts.tolerance ~= "absolute" then
    error("support.closeness: tolerance must be \"relative\" or \"absolute\", got "
          .. tostring(opts.tolerance), 2)
  end
  local nonfinite = opts.nonfinite == true
  local function close(expected, actual, tol, path)
    path = path or "value"
    if type(expected) == "table" then
      luassert.are.equal("table", type(actual), path .. " is not a table")
      luassert.are.equal(#expected, #actual, path .. " has the wrong length")
      for i = 1, #expected do close(expected[i], actual[i], tol, path .. "[" .. i .. "]") end
    elseif nonfinite and expected ~= expected then
      luassert.is_true(actual ~= actual, path .. ": expected nan, got " .. tostring(actual))
    elseif nonfinite and (expected == math.huge or expected == -math.huge) then
      luassert.are.equal(expected, actual, path)
    else
      local bound = (tol or 0)
      if relative then bound = bound * math.max(1, math.abs(expected)) end
      luassert.is_true(math.abs(expected - actual) <= bound,
        ("%s: expected %.17g, got %.17g"):format(path, expected, actual))
    end
  end
  return function(expected, actual, tol) return close(expected, actual, tol) end
end

-- support.near(expected, actual, tol): luassert's is_near(expected, actual, tol) on a number
-- or, element by element, on nested arrays of the same lengths.
function support.near(expected, actual, tol)
  if type(expected) == "number" then return luassert.is_near(expected, actual, tol) end
  luassert.are.equal(#expected, #actual)
  for i = 1, #expected do support.near(expected[i], actual[i], tol) end
end

-- support.table_matmul(A, B): the product of two matrices given as nested tables (rows), by
-- the definition in plain Lua; a new nested table.
function support.table_matmul(A, B)
  local C = {}
  for i = 1, #A do
    C[i] = {}
    for j = 1, #B[1] do
      local s = 0
      for k = 1, #B do s = s + A[i][k] * B[k][j] end
      C[i][j] = s
    end
  end
  return C
end

---------------------------------------------------------------- tensors

-- support.randn(...): a float64 mg.randn of the shape given as sizes (randn(3, 4)) or as one
-- array (randn({ 3, 4 }), randn({}) for 0-d).
function support.randn(...)
  local shape = select("#", ...) == 1 and type(...) == "table" and ... or { ... }
  return mg.randn(shape, support.F64)
end

-- support.maxdiff(a, b [, what]): the largest |a - b| over two tensors, which must have the
-- same shape ('what' labels the shape check).
function support.maxdiff(a, b, what)
  luassert.are.equal(mg.shapestr(a), mg.shapestr(b), what)
  return (a - b):abs():max():item()
end

-- support.assert_close(a, b [, tol [, what]]): tensors of one shape whose elements differ by
-- at most 'tol' (default 1e-12); 'what' prefixes the failure message.
function support.assert_close(a, b, tol, what)
  tol = tol or 1e-12
  local d = support.maxdiff(a, b, what)
  luassert(d <= tol, string.format("%smax difference %.3g > %.3g", what and what .. ": " or "", d, tol))
end

---------------------------------------------------------------- files, processes, Python

-- support.shq(s): 's' quoted for the shell, as one word.
function support.shq(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- support.read_file(path): the whole file, as bytes (fails when it cannot be opened).
function support.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- support.write_file(path, s): writes the bytes 's' to 'path' (replacing it); returns 'path'.
function support.write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

-- support.tmpdir(): the path of a new empty directory (mktemp -d); the caller removes it
-- with support.rmtree.
function support.tmpdir()
  local p = assert(io.popen("mktemp -d"))
  local dir = p:read("l")
  local ok = p:close()
  assert(ok and dir and dir ~= "", "support.tmpdir: mktemp -d failed")
  return dir
end

-- support.scratch(teardown): a new empty directory for the tests of one spec file, and
-- path(name), the path of its file 'name'. Pass the spec's own 'teardown' (busted gives its
-- functions to spec files, not to modules), which removes the directory after the file's tests.
function support.scratch(teardown)
  local dir = support.tmpdir()
  teardown(function() support.rmtree(dir) end)
  return dir, function(name) return dir .. "/" .. name end
end

-- support.tmpnames(teardown) -> tmpname([content]): a maker of new temporary file names,
-- each file holding 'content' if given; the spec's 'teardown' (as for support.scratch)
-- removes them all after the file's tests.
function support.tmpnames(teardown)
  local made = {}
  teardown(function() for _, f in ipairs(made) do os.remove(f) end end)
  return function(content)
    local name = os.tmpname()
    made[#made + 1] = name
    return support.write_file(name, content or "")
  end
end

-- support.rmtree(dir): removes 'dir' and everything below it; nothing when 'dir' is nil.
function support.rmtree(dir)
  if dir then os.execute("rm -rf " .. support.shq(dir)) end
end

-- support.proc_status(key): a field of /proc/self/status ("VmRSS", "VmHWM", ...) in bytes
-- (the kernel reports kB); fails when the field is absent.
function support.proc_status(key)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. key .. ":%s+(%d+)")
    if v then return tonumber(v) * 1024 end
  end
  error("no " .. key .. " in /proc/self/status")
end

-- The interpreter that has PyTorch and numpy (the 'python3' on PATH may not).
support.PYTHON = "/usr/bin/python3"

local importable = {}          -- modules string -> whether support.PYTHON imports it

-- support.python_can_import(modules): whether support.PYTHON can run 'import <modules>'
-- ("numpy", "torch, numpy"); asked once per string. Specs that need it go pending otherwise.
function support.python_can_import(modules)
  if importable[modules] == nil then
    importable[modules] =
      os.execute(support.PYTHON .. " -c 'import " .. modules .. "' >/dev/null 2>&1") == true
  end
  return importable[modules]
end

-- support.torch_ref(dir, case): runs spec/torch_ref.py on 'dir' for 'case' with
-- support.PYTHON (the specs and the script exchange .npy files in 'dir'); fails with the
-- script's standard error when it exits with an error. The source tree is MOONGRAD_SOURCE
-- (ctest sets it) or the current directory.
function support.torch_ref(dir, case)
  local script = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/torch_ref.py"
  local log = dir .. "/stderr.txt"
  local ok = os.execute(string.format("%s %s %s %s 2>%s", support.PYTHON, support.shq(script),
                                      support.shq(dir), support.shq(case), support.shq(log)))
  if not ok then error("torch_ref.py " .. case .. " failed:\n" .. support.read_file(log), 2) end
end

-- support.lua_child(script, pre, code [, wrapper]): writes 'code' (after `local mg = require
-- "moongrad"`, with unbuffered output) to the file 'script' and runs it in a stock lua5.4 child
-- through bash, 'pre' being shell run first in that bash (a `ulimit -f 8;`, a `trap`) and
-- 'wrapper' a command prefix (support.unprivileged()); returns whether it exited 0 and its
-- output (stdout and stderr).
function support.lua_child(script, pre, code, wrapper)
  support.write_file(script, 'local mg = require "moongrad"\nio.stdout:setvbuf("no")\n' .. code)
  local cmd = "LUA_CPATH=" .. support.shq(package.cpath) .. " " .. (wrapper or "") .. " bash -c "
              .. support.shq(pre .. " exec lua5.4 " .. support.shq(script)) .. " 2>&1"
  local p = io.popen(cmd)
  local out = p:read("a")
  return p:close() == true, out
end

-- support.save_cut_short(dir, fn, name, small, big): what every saving function promises (it
-- writes a temporary file, then renames it): a save cut short, here by a file-size limit in a
-- child process, fails naming the file and leaves the previous file byte for byte, with no
-- temporary beside it. mg[fn] saves the table 'small' to dir/cut/<name>, then the child
-- saves 'big' (Lua source of a table too large for 8 blocks) over it. Returns the child's
-- output (pcall's "false", tab, the message).
function support.save_cut_short(dir, fn, name, small, big)
  local sub = dir .. "/cut"
  os.execute("mkdir -p " .. support.shq(sub))
  local target = sub .. "/" .. name
  mg[fn](small, target)
  local before = support.read_file(target)
  local ok, out = support.lua_child(dir .. "/child.lua", "trap '' XFSZ; ulimit -f 8;",
                                    string.format("print(pcall(mg.%s, %s, %q))", fn, big, target))
  luassert(ok, out)
  support.contains(out, "false\t" .. fn .. ": error writing '" .. target .. "'")
  luassert.are.equal(before, support.read_file(target))
  local p = io.popen("ls -A " .. support.shq(sub))
  luassert.are.equal(name .. "\n", p:read("a"))
  p:close()
  return out
end

-- support.unprivileged(): the command prefix that runs a child without root's rights to
-- write anywhere ("" when not root), or nil and the reason when there is none (then the spec
-- goes pending: pending(reason)).
function support.unprivileged()
  local p = io.popen("id -u")
  local uid = p:read("l")
  p:close()
  if uid ~= "0" then return "" end
  if not os.execute("command -v setpriv >/dev/null") then return nil, "running as root without setpriv" end
  return "setpriv --reuid=65534 --regid=65534 --clear-groups"
end

-- support.venv_python(): the Python of the test-only virtual environment that tools/venv
-- makes (Keras 3 on JAX, tensorboard, safetensors, numpy, h5py): $MG_VENV/bin/python, or the
-- repository's .venv. tools/test creates it before the suite runs. Raises when it is missing,
-- so a spec that compares with a real peer fails instead of passing without it.
local venv_wrapper                       -- the interpreter behind a wrapper, made once

function support.venv_python()
  if venv_wrapper then return venv_wrapper end
  local venv = os.getenv("MG_VENV") or ((os.getenv("MOONGRAD_SOURCE") or ".") .. "/.venv")
  local py = venv .. "/bin/python"
  local f = io.open(py, "r")
  if f == nil then
    error("no test virtual environment at " .. venv .. " (run tools/venv, or set MG_VENV)", 2)
  end
  f:close()
  -- Under the sanitizer build the specs' lua5.4 runs with the ASan runtime in LD_PRELOAD,
  -- which JAX cannot start under: the peers run through a wrapper without it.
  venv_wrapper = os.tmpname()
  support.write_file(venv_wrapper, "#!/bin/sh\nunset LD_PRELOAD\nexec " .. support.shq(py) .. ' "$@"\n')
  assert(os.execute("chmod +x " .. support.shq(venv_wrapper)))
  return venv_wrapper
end

-- 'v' (a number, string, boolean or a table of them; support.NONE for None) as a Python
-- literal: arrays become lists, other tables dicts with string keys.
support.NONE = setmetatable({}, { __name = "None" })
function support.pylit(v)
  if v == support.NONE then return "None" end
  local t = type(v)
  if t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    local s = string.format("%.17g", v)
    if s:find("^-?%d+$") then s = s .. ".0" end         -- a float stays a float in Python
    return s
  end
  if t == "boolean" then return v and "True" or "False" end
  if t == "string" then return string.format("%q", v) end
  assert(t == "table", "pylit: cannot write a " .. t)
  local parts = {}
  if #v > 0 or next(v) == nil then
    for i = 1, #v do parts[i] = support.pylit(v[i]) end
    return "[" .. table.concat(parts, ", ") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = string.format("%q: %s", k, support.pylit(v[k])) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- support.train_ref(dir, framework, cases): runs spec/keras_train_ref.py on 'dir' for
-- 'framework' ("keras": the venv's Python; "torch": support.PYTHON) with 'cases', an array of
-- { name, case-table } (written to dir/cases.txt; the arrays are already in 'dir'). Fails with
-- the script's standard error when it exits with an error.
function support.train_ref(dir, framework, cases)
  local lines = {}
  for i, c in ipairs(cases) do lines[i] = c[1] .. "\t" .. support.pylit(c[2]) end
  support.write_file(dir .. "/cases.txt", table.concat(lines, "\n") .. "\n")
  local py = framework == "keras" and support.venv_python() or support.PYTHON
  local script = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/keras_train_ref.py"
  local log = dir .. "/stderr.txt"
  local ok = os.execute(string.format("KERAS_BACKEND=jax %s %s %s %s 2>%s", py, support.shq(script),
                                      support.shq(dir), framework, support.shq(log)))
  if not ok then error("keras_train_ref.py " .. framework .. " failed:\n" .. support.read_file(log), 2) end
end

-- support.reference_run(lazy_setup, lazy_teardown, framework, cases) -> dir: for a describe
-- block that compares with a reference run: a new directory 'dir'; before the block's tests,
-- cases(dir) (which may compute ours on the way) gives the cases support.train_ref runs there
-- with 'framework'; after them the directory is removed. Pass the block's own lazy_setup and
-- lazy_teardown (busted gives them to spec files, not to modules).
function support.reference_run(lazy_setup, lazy_teardown, framework, cases)
  local dir = support.tmpdir()
  lazy_setup(function() support.train_ref(dir, framework, cases(dir)) end)
  lazy_teardown(function() support.rmtree(dir) end)
  return dir
end

-- support.ref_out(dir, name): the output array 'name' of a reference run (mg.load of
-- dir/out_<name>.npy), failing with the case's Python traceback when it has none.
function support.ref_out(dir, name)
  local f = io.open(dir .. "/out_" .. name .. ".npy", "rb")
  if f then
    f:close()
    return mg.load(dir .. "/out_" .. name .. ".npy")
  end
  local case = name:match("^(.-)_[^_]*$") or name
  for _, c in ipairs { name, case } do
    local e = io.open(dir .. "/out_" .. c .. "_error.txt", "r")
    if e then
      local msg = e:read("a")
      e:close()
      error("reference case " .. c .. " failed:\n" .. msg, 2)
    end
  end
  error("reference output " .. name .. " is missing in " .. dir, 2)
end

-- support.bits(t): every element of 't' with its bits, as a string (a bit-equality key that
-- includes the shape and dtype). Large tensors as the bytes of their .npy file (an element at a
-- time from Lua took seconds for the optimizer specs' 700 x 300 tensors), small ones element by
-- element (a file per call cost more there).
function support.bits(t)
  local flat = t:contiguous():reshape(-1)
  if flat:numel() > 4096 then
    local path = os.tmpname()
    mg.save(flat, path)
    local bytes = support.read_file(path)
    os.remove(path)
    return mg.shapestr(t) .. bytes
  end
  local fmt, parts = t.dtype == "float64" and "<d" or "<f", {}
  for i = 1, flat:numel() do parts[i] = string.pack(fmt, flat:get(i)) end
  return mg.shapestr(t) .. t.dtype .. table.concat(parts)
end

-- support.sh(cmd): runs the shell command 'cmd' without the sanitizer build's preloaded ASan
-- runtime (Python, and JAX in particular, cannot start under it); its output (stdout and
-- stderr). Fails with that output when the command fails.
function support.sh(cmd)
  local p = io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1")
  local out = p:read("a")
  assert(p:close(), cmd .. " failed:\n" .. out)
  return out
end

-- support.venv_run(dir, code): runs the Python 'code' (written to dir/script.py) in the test
-- venv with 'dir' as argv[1]; its output. Fails with that output when Python fails.
function support.venv_run(dir, code)
  local script = support.write_file(dir .. "/script.py", code)
  return support.sh(support.shq(support.venv_python()) .. " " .. support.shq(script) .. " "
                    .. support.shq(dir))
end

return support
