-- benchlib.lua - timing and reporting helpers shared by the moongrad side of bench/*.lua.
-- Mirrors bench/benchlib.py so that both sides measure the same way: a warm-up call, a
-- calibrated number of calls per repetition, several repetitions, the median per call, on
-- two clocks: the process's CPU time (os.clock; unaffected by other processes taking the
-- CPU, which they do on a shared 2-core machine) and the wall clock.
-- Results go to standard output as tab-separated lines read by bench/report.lua:
--   result <bench> <case> <impl> <CPU seconds per call> <wall seconds per call>
--   meta <bench> <key> <value>
-- Human-readable progress goes to standard error.
local M = {}

-- The wall clock is moongrad's own (mg.clock, monotonic), set by M.moongrad().
M.now = nil

-- Let the BLAS worker threads finish the spin they start with (OpenBLAS: about 0.1 s), so
-- that their CPU time is not charged to the first measurements. benchlib.py does the same.
local SETTLE_SECONDS = 0.3
local function settle(clock)
  local t = clock()
  while clock() - t < SETTLE_SECONDS do end
end

-- The thread count of both sides: MOONGRAD_BENCH_THREADS (bench/run sets 2 for its
-- 2-thread run), else 1. benchlib.py reads the same variable.
function M.threads()
  local v = os.getenv("MOONGRAD_BENCH_THREADS")
  local n = v and math.tointeger(tonumber(v))
  if v and (not n or n < 1) then error("benchlib: bad MOONGRAD_BENCH_THREADS '" .. v .. "'", 0) end
  return n or 1
end

-- Peak resident set size of this process so far, in MiB (VmHWM in /proc/self/status), or nil.
function M.peak_rss_mib()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  local kb = s:match("VmHWM:%s*(%d+)%s*kB")
  return kb and tonumber(kb) / 1024
end

-- The peak RSS of one loop alone: the script runs again in a fresh process with the same
-- interpreter and MG_BENCH_RSS=1 in its environment, on 'args' (an array of strings), and
-- there runs that loop only and ends with M.report_peak_rss(). Returns the child's figure in
-- MiB, or nil when it could not run (the reason is logged).
function M.rss_child() return os.getenv("MG_BENCH_RSS") == "1" end

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

function M.peak_rss_in_child(args)
  local lo = 0
  while arg[lo - 1] do lo = lo - 1 end
  local words = {}
  for i = lo, #args do words[#words + 1] = shquote(i <= 0 and arg[i] or args[i]) end
  local p = io.popen("MG_BENCH_RSS=1 " .. table.concat(words, " "))
  local out = p:read("a")
  local ok, how, code = p:close()
  local mib = out:match("peak_rss_mib\t([%d.]+)")
  if not ok or not mib then
    M.log("benchlib: the peak RSS run failed (%s %s)", tostring(how), tostring(code))
    return nil
  end
  return tonumber(mib)
end

-- The child's report: its peak RSS so far (VmHWM), for M.peak_rss_in_child.
function M.report_peak_rss()
  local rss = M.peak_rss_mib()
  if rss then io.stdout:write(string.format("peak_rss_mib\t%.1f\n", rss)) end
end

-- Load moongrad with M.threads() threads (one by default); a clear message when LUA_CPATH
-- does not reach the build.
function M.moongrad()
  local found, mg = pcall(require, "moongrad")
  if not found then
    error("benchlib: cannot load moongrad (" .. tostring(mg) .. "); set " ..
          "LUA_CPATH='build/lua/?.so' from the repository root, or use bench/run", 0)
  end
  mg.set_num_threads(M.threads())
  M.now = mg.clock
  settle(mg.clock)
  return mg
end

function M.median(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

-- measure(fn [, {reps=7, min_time=0.1, warmup=1, inner=, collect=false}]): timings of fn()
-- as {cpu=, wall= (median seconds per call), cpu_reps=, wall_reps= (per repetition),
-- calls= (how many calls of fn ran)}.
-- Each repetition runs fn 'inner' times back to back (chosen so a repetition lasts about
-- 'min_time' seconds unless given). The collector is left to its own pace, as in a user's
-- loop, unless 'collect' asks for a full collection before each repetition.
function M.measure(fn, opts)
  opts = opts or {}
  local reps, min_time = opts.reps or 7, opts.min_time or 0.1
  local t0 = os.clock()
  for _ = 1, opts.warmup or 1 do fn() end
  local once = (os.clock() - t0) / (opts.warmup or 1)
  local inner = opts.inner or math.max(1, math.ceil(min_time / math.max(once, 1e-9)))
  local cpu, wall = {}, {}
  for r = 1, reps do
    if opts.collect then collectgarbage() end
    local c, w = os.clock(), M.now()
    for _ = 1, inner do fn() end
    wall[r] = (M.now() - w) / inner
    cpu[r] = (os.clock() - c) / inner
  end
  return { cpu = M.median(cpu), wall = M.median(wall), cpu_reps = cpu, wall_reps = wall,
           calls = (opts.warmup or 1) + reps * inner }
end

-- result(bench, case, impl, m [, per]): one result line from measure's 'm', divided by 'per'
-- (e.g. the number of ops a call ran).
function M.result(bench, case, impl, m, per)
  per = per or 1
  io.stdout:write(string.format("result\t%s\t%s\t%s\t%.9g\t%.9g\n", bench, case, impl,
                                m.cpu / per, m.wall / per))
  io.stdout:flush()
end

function M.meta(bench, key, value)
  io.stdout:write(string.format("meta\t%s\t%s\t%s\n", bench, key, tostring(value)))
  io.stdout:flush()
end

function M.log(fmt, ...)
  io.stderr:write(string.format(fmt, ...), "\n")
end

-- The BLAS facts of this process, as one meta line each.
function M.blas_meta(mg, bench)
  local b = mg.blas()
  M.meta(bench, "moongrad_blas_core", b.core)
  M.meta(bench, "moongrad_blas_best", b.best)
  M.meta(bench, "moongrad_threads", mg.get_num_threads())
end

-- M.args(script, usage, what, expect, parse, default): the command line of a bench that saves
-- into a directory: arg[1] the directory (it must exist), arg[2..] its cases, each turned into
-- a value by parse(string) (nil when malformed: an error "<script>: bad <what> '<arg>',
-- expected <expect>; <usage>"); 'default' when none is given. Returns dir, cases.
function M.args(script, usage, what, expect, parse, default)
  local dir = arg[1]
  if not dir then error(script .. ": no output directory given; " .. usage, 0) end
  if not os.rename(dir, dir) then error(script .. ": directory '" .. dir .. "' does not exist", 0) end
  local cases = {}
  for i = 2, #arg do
    local c = parse(arg[i])
    if c == nil then error(script .. ": bad " .. what .. " '" .. arg[i] .. "', expected " .. expect .. "; " .. usage, 0) end
    cases[#cases + 1] = c
  end
  if #cases == 0 then cases = default end
  return dir, cases
end

return M
