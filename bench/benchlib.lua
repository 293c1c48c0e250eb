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

-- A call that takes longer than this (CPU seconds) is timed once: bench/lyapunov's T = 1000
-- runs at N = 256 take 20 to 100 s a call, and repeating them would cost an hour a session.
-- benchlib.py has the same figure.
M.SINGLE_RUN_SECONDS = 3

-- timed(fn): calls fn once; returns its results' first value and the call's timing {cpu=,
-- wall=}, for measure's 'first' (e.g. the run whose result is checked).
function M.timed(fn)
  local c, w = os.clock(), M.now()
  local r = fn()
  return r, { cpu = os.clock() - c, wall = M.now() - w }
end

-- measure(fn [, {reps=7, min_time=0.1, warmup=1, inner=, collect=false, first=, single=}]):
-- timings of fn() as {cpu=, wall= (median seconds per call), cpu_reps=, wall_reps= (per
-- repetition), calls= (how many calls of fn ran), runs= (how many timed repetitions)}.
-- Each repetition runs fn 'inner' times back to back (chosen so a repetition lasts about
-- 'min_time' seconds unless given). The collector is left to its own pace, as in a user's
-- loop, unless 'collect' asks for a full collection before each repetition.
-- 'first' is the timing of a call already made (timed's): it stands for the warm-up; when
-- 'single' is given too and that call took more than 'single' CPU seconds, it is the only
-- measurement (runs = 1, no further call).
function M.measure(fn, opts)
  opts = opts or {}
  local reps, min_time = opts.reps or 7, opts.min_time or 0.1
  local first = opts.first
  if first and opts.single and first.cpu > opts.single then
    return { cpu = first.cpu, wall = first.wall, cpu_reps = { first.cpu }, wall_reps = { first.wall },
             calls = 0, runs = 1 }
  end
  local warmup = first and 0 or (opts.warmup or 1)
  local t0 = os.clock()
  for _ = 1, warmup do fn() end
  local once = first and first.cpu or (os.clock() - t0) / warmup
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
           calls = warmup + reps * inner, runs = reps }
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

-- Checks against a float64 reference (bench/README.md, "How results are checked"). The
-- float32 results of every side (moongrad's included) are compared with the same step done in
-- float64, never with each other. A gradient of these models is a sum over the batch and the
-- steps, sum_t u_t^T d_t (u_t an input of the step's GEMM, d_t the gradient of its output; a
-- bias: the rows of d_t), and float32 rounds its terms, not its result: the error of such a
-- sum scales with the unit roundoff u = 2^-24 times the sum of the terms' magnitudes,
-- sum_t |u_t|^T |d_t|, which can be far larger than the sum itself when the terms cancel
-- (lstm:512:64's Dense-bias gradient: 6,400 terms, 2e4 times their sum).
-- So a tensor's error is max |a - ref| over its entries divided by its scale, the largest
-- entry of that sum of magnitudes (computed in float64), and must be <= REF_TOL: the
-- probabilistic bound of a float32 sum of n terms, lambda sqrt(n) u with lambda = 2, at the
-- largest n of these cases (B T = 64 x 100 = 6,400): 9.5e-6, rounded up to 1e-5. The errors
-- seen on every side are at most 10 u (5.8e-7); a gradient with one step dropped is off by
-- 9.5e-4 or more, and check_reference tests that it fails.
M.REF_TOL = 1e-5

-- sum_terms(mg, steps, t0): 'steps' an array over t of {u_t, d_t} (u_t (B, m), d_t (B, n);
-- u_t false for a bias, whose term is the sum of d_t's rows): the scale of sum_t u_t^T d_t
-- (the largest entry of sum_t |u_t|^T |d_t|) and step t0's term u_t0^T d_t0, (m, n) or (n).
function M.sum_terms(mg, steps, t0)
  local function term(s, abs)
    local u, d = s[1], abs and s[2]:abs() or s[2]
    if not u then return d:sum(1) end
    return mg.matmul((abs and u:abs() or u):transpose(1, 2), d)
  end
  local S = term(steps[1], true)
  for t = 2, #steps do S = S + term(steps[t], true) end
  return S:max():item(), term(steps[t0], false)
end

-- rnn_f64(mg, kind, xs, K, R, b): an LSTM or GRU layer (reset_after; Keras layout and gate
-- order, as nn.LSTMCell / nn.GRUCell) written out in ops, for a float64 reference that does
-- not go through the fused kernels: xs an array over steps of (B, in) inputs. Returns the
-- states h_t (an array) and per step the GEMM outputs: {z} (LSTM), {mx, mh, gate} (GRU, with
-- its update gate z).
function M.rnn_f64(mg, kind, xs, K, R, b)
  local u = R:shape()[1]
  local h = mg.zeros({ xs[1]:shape()[1], u }, { dtype = "float64" })
  local c = h
  local hs, pre = {}, {}
  for t, x in ipairs(xs) do
    if kind == "lstm" then
      local z = mg.matmul(x, K) + mg.matmul(h, R) + b
      local i, f = z:narrow(2, 1, u):sigmoid(), z:narrow(2, u + 1, u):sigmoid()
      local g, o = z:narrow(2, 2 * u + 1, u):tanh(), z:narrow(2, 3 * u + 1, u):sigmoid()
      c = f * c + i * g
      h = o * c:tanh()
      pre[t] = { z = z }
    else
      local mx, mh = mg.matmul(x, K) + b[1], mg.matmul(h, R) + b[2]
      local zg = (mx:narrow(2, 1, u) + mh:narrow(2, 1, u)):sigmoid()
      local r = (mx:narrow(2, u + 1, u) + mh:narrow(2, u + 1, u)):sigmoid()
      local hh = (mx:narrow(2, 2 * u + 1, u) + r * mh:narrow(2, 2 * u + 1, u)):tanh()
      h = zg * h + (1 - zg) * hh
      pre[t] = { mx = mx, mh = mh, gate = zg }
    end
    hs[t] = h
  end
  return hs, pre
end

-- The GEMM outputs of rnn_f64's 'pre' as gradient sources (appended to 'sources'); returns
-- a function mapping the gradients array to per-step {z} / {mx, mh} gradients.
function M.rnn_sources(kind, pre, sources)
  local first = #sources + 1
  for _, p in ipairs(pre) do
    if kind == "lstm" then sources[#sources + 1] = p.z
    else sources[#sources + 1] = p.mx; sources[#sources + 1] = p.mh end
  end
  return function(g)
    local d, j = {}, first
    for t = 1, #pre do
      if kind == "lstm" then d[t] = { z = g[j] }; j = j + 1
      else d[t] = { mx = g[j], mh = g[j + 1] }; j = j + 2 end
    end
    return d
  end
end

-- rnn_terms(mg, kind, xs, hs, dpre, t0): {kernel=, recurrent_kernel=, bias=}, each {scale,
-- step t0's term}, of the layer's parameter gradients (rnn_f64's xs and hs, rnn_sources's
-- dpre): kernel sum_t x_t^T dz_t, recurrent kernel sum_t h_(t-1)^T dz_t, bias sum_t dz_t
-- (GRU: dm_x for the kernel and the bias's first row, dm_h for the recurrent kernel and the
-- second).
function M.rnn_terms(mg, kind, xs, hs, dpre, t0)
  local h0 = mg.zeros(hs[1]:shape(), { dtype = "float64" })
  local kin, krec, b1, b2 = {}, {}, {}, {}
  for t = 1, #xs do
    local dx = kind == "lstm" and dpre[t].z or dpre[t].mx
    local dh = kind == "lstm" and dpre[t].z or dpre[t].mh
    kin[t], krec[t] = { xs[t], dx }, { hs[t - 1] or h0, dh }
    b1[t], b2[t] = { false, dx }, { false, dh }
  end
  local r = {}
  r.kernel = { M.sum_terms(mg, kin, t0) }
  r.recurrent_kernel = { M.sum_terms(mg, krec, t0) }
  if kind == "lstm" then
    r.bias = { M.sum_terms(mg, b1, t0) }
  else
    local s1, d1 = M.sum_terms(mg, b1, t0)
    local s2, d2 = M.sum_terms(mg, b2, t0)
    r.bias = { math.max(s1, s2), mg.stack({ d1, d2 }, 1) }
  end
  return r
end

-- save_reference(mg, prefix, refs): each refs[name] = {ref (float64), scale, drop} saved as
-- '<prefix>ref_<name>.npy' and '<prefix>scale_<name>.npy' (one element) for the peers.
function M.save_reference(mg, prefix, refs)
  for name, r in pairs(refs) do
    mg.save(r.ref, prefix .. "ref_" .. name .. ".npy")
    mg.save(mg.tensor({ r.scale }, { dtype = "float64" }), prefix .. "scale_" .. name .. ".npy")
  end
end

-- ref_err(a, ref, scale): max |a - ref| / scale, in float64 (a float32 or float64 'a' of
-- ref's shape).
function M.ref_err(a, ref, scale)
  local sa, sr = a:shape(), ref:shape()
  if #sa ~= #sr then return math.huge end
  for i = 1, #sa do if sa[i] ~= sr[i] then return math.huge end end
  return (a:to("float64") - ref):abs():max():item() / scale
end

-- check_reference(bench, case, who, got, refs): got[name] each of this side's results against
-- refs[name] = {ref, scale, drop} (ref_err, meta 'referr CASE WHO NAME'); raises naming every
-- one beyond REF_TOL. The self-test: each result with its step-t0 term 'drop' taken out (a
-- gradient that misses one step) must fail the same bound, or the check is too weak to trust
-- and this raises too. Returns the largest error and the smallest error of a dropped step.
function M.check_reference(bench, case, who, got, refs)
  local bad, worst, least = {}, 0, math.huge
  local names = {}
  for name in pairs(refs) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local r = refs[name]
    local err = M.ref_err(got[name], r.ref, r.scale)
    local dropped = M.ref_err(got[name]:to("float64") - r.drop:reshape(r.ref:shape()), r.ref, r.scale)
    M.meta(bench, string.format("referr %s %s %s", case, who, name), string.format("%.3g", err))
    worst, least = math.max(worst, err), math.min(least, dropped)
    if not (err <= M.REF_TOL) then
      bad[#bad + 1] = string.format("%s: error %.3g of the float64 reference's scale (bound %g)", name, err, M.REF_TOL)
    end
    if not (dropped > M.REF_TOL) then
      bad[#bad + 1] = string.format("%s: with one step dropped the error is only %.3g, within the bound %g: " ..
                                    "the check would not catch it", name, dropped, M.REF_TOL)
    end
  end
  if #bad > 0 then
    error(string.format("%s: case %s: %s against the float64 reference:\n  %s", bench, case, who,
                        table.concat(bad, "\n  ")), 0)
  end
  return worst, least
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
