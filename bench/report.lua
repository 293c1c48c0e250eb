-- report.lua - turns the result lines of bench/*.lua and bench/*.py into markdown tables.
-- Usage: lua5.4 bench/report.lua [--clock cpu|wall] LABEL=FILE.tsv [LABEL=FILE.tsv ...]
-- Each FILE holds the 'result' and 'meta' lines of one environment (LABEL names it, e.g.
-- "as set here" or "tuned"); one table per benchmark and environment is printed, rows the
-- cases, columns moongrad then each PyTorch method as "time (PyTorch/moongrad)", then
-- PyTorch's best and its ratio, and a line saying whether the target ratio is met. Times are
-- the process CPU time medians unless '--clock wall' asks for the wall-clock medians.

-- Per benchmark: unit, what the rows are, the target ratio of PyTorch's best to moongrad,
-- PyTorch columns that are not autodiff methods (shown, but not candidates for "best"), and
-- which moongrad column a PyTorch column is compared with when not plain "moongrad".
-- Targets are issue 18's: op_overhead 6x, jacobian 5x, lstm 5x at 6 and 32 units and 2x
-- from 256 units; 'case_target' overrides 'target' per case.
local CONFIG = {
  op_overhead = { unit = "us", scale = 1e6, title = "per-op overhead, 16-element float32 add",
                  row = "mode", target = 6,
                  rows = { no_tape = "no tape (PyTorch: no_grad)",
                           recorded = "recorded (tape / requires_grad)",
                           ["recorded+backward"] = "recorded + backward, per op (chain)" },
                  notarget = { ["recorded+backward"] = true } },
  jacobian = { unit = "ms", scale = 1e3, title = "batch_jacobian of relu(h) @ W + b, float32",
               row = "(B,N)", target = 5, floor = { ["closed form"] = true } },
  lstm = { unit = "ms", scale = 1e3, row = "units", target = 2,
           case_target = { ["6"] = 5, ["32"] = 5 },
           title = "LSTM train step: T=100, B=16, in=8, forward + MSE on a Dense head + backward + Adam",
           pair = { ["LSTMCell loop + retain_grad"] = "moongrad + dL/dh_t" } },
  char_lstm = { unit = "ms", scale = 1e3, row = "units", target = 2,
                title = "char-LSTM train step: one-hot 76 -> 2 x LSTM (dropout 0.2) -> Dense, B=32, T=50, "
                        .. "cross-entropy + backward + global-norm clip + RMSprop" },
  lyapunov = { unit = "ms", scale = 1e3, row = "N,k,T", target = 10,
               title = "top-k Lyapunov spectrum of a GRU, B=16, float32, the whole run (PyTorch and JAX columns)" },
}

-- The 2-thread speedup targets (moongrad's 1-thread over its 2-thread time, wall clock).
local THREAD_TARGET = { jacobian = { ["32,512"] = 1.6 }, lstm = { ["256"] = 1.6 } }

local function die(msg) io.stderr:write("report.lua: ", msg, "\n"); os.exit(1) end

local column = 5                                       -- 5: CPU time, 6: wall clock

local function read_results(path)
  local f, err = io.open(path)
  if not f then die("cannot read " .. tostring(err)) end
  local data = { order = {}, benches = {} }
  for line in f:lines() do
    local fields = {}
    for x in (line .. "\t"):gmatch("([^\t]*)\t") do fields[#fields + 1] = x end
    local kind, bench = fields[1], fields[2]
    if kind == "result" or kind == "meta" then
      local b = data.benches[bench]
      if not b then
        b = { cases = {}, wall = {}, case_order = {}, impls = {}, impl_order = {}, meta = {} }
        data.benches[bench] = b
        data.order[#data.order + 1] = bench
      end
      if kind == "meta" then
        b.meta[fields[3]] = fields[4]
      else
        local case, impl, cpu, wall = fields[3], fields[4], tonumber(fields[5]), tonumber(fields[6])
        if not cpu or not wall then die(path .. ": bad time in line: " .. line) end
        if not b.cases[case] then
          b.cases[case], b.wall[case] = {}, {}
          b.case_order[#b.case_order + 1] = case
        end
        if not b.impls[impl] then b.impls[impl] = true; b.impl_order[#b.impl_order + 1] = impl end
        b.cases[case][impl], b.wall[case][impl] = cpu, wall
      end
    end
  end
  f:close()
  -- A run with more than one thread shows wall-clock medians: CPU time adds up the threads.
  for _, b in pairs(data.benches) do
    b.threads = tonumber(b.meta.moongrad_threads) or 1
    b.clock = (column == 6 or b.threads > 1) and "wall-clock" or "process CPU"
    if b.clock == "wall-clock" then b.cases = b.wall end
  end
  return data
end

local function fmt_time(x, scale)
  local v = x * scale
  if v >= 100 then return string.format("%.0f", v) end
  if v >= 10 then return string.format("%.1f", v) end
  if v >= 1 then return string.format("%.2f", v) end
  return string.format("%.3g", v)
end

local function fmt_ratio(r)
  if r >= 10 then return string.format("%.0fx", r) end
  return string.format("%.1fx", r)
end

local function table_for(label, name, b)
  local cfg = CONFIG[name] or { unit = "s", scale = 1, title = name, row = "case" }
  local mgs, torch = {}, {}
  for _, impl in ipairs(b.impl_order) do
    if impl:match("^moongrad") then mgs[#mgs + 1] = impl else torch[#torch + 1] = impl end
  end
  local multi = #torch > 1
  local out = {}
  local function emit(s) out[#out + 1] = s end
  emit(string.format("#### %s: %s (%s)", name, cfg.title, label))
  emit("")
  emit(string.format("BLAS kernels: moongrad %s (best for this CPU: %s), PyTorch %s; %s " ..
    "each; medians of %s time.", b.meta.moongrad_blas_core or "?",
    b.meta.moongrad_blas_best or "?", b.meta.torch_blas_core or "?",
    b.threads == 1 and "one thread" or b.threads .. " threads", b.clock))
  emit("")
  local head = { cfg.row }
  for _, impl in ipairs(mgs) do head[#head + 1] = impl .. " " .. cfg.unit end
  for _, impl in ipairs(torch) do
    head[#head + 1] = (multi and (impl:match("^jax") and "JAX " .. impl:gsub("^jax ", "") or "PyTorch " .. impl) or "PyTorch") .. " " .. cfg.unit ..
                      ((cfg.floor and cfg.floor[impl]) and " (not autodiff)" or "")
  end
  if multi then head[#head + 1] = "PyTorch best " .. cfg.unit end
  head[#head + 1] = multi and "best / moongrad" or "PyTorch / moongrad"
  emit("| " .. table.concat(head, " | ") .. " |")
  emit("|" .. string.rep("---|", #head))
  local misses, checked = {}, 0
  for _, case in ipairs(b.case_order) do
    local r = b.cases[case]
    local mg_t = r.moongrad
    local row = { (cfg.rows and cfg.rows[case]) or case }
    for _, impl in ipairs(mgs) do row[#row + 1] = r[impl] and fmt_time(r[impl], cfg.scale) or "-" end
    local best
    for _, impl in ipairs(torch) do
      local t = r[impl]
      local cell = t and fmt_time(t, cfg.scale) or "-"
      local other = cfg.pair and cfg.pair[impl]
      local ref = r[other or "moongrad"]
      if t and ref and multi then
        cell = cell .. " (" .. fmt_ratio(t / ref) .. (other and " vs " .. other or "") .. ")"
      end
      row[#row + 1] = cell
      if t and not (cfg.floor and cfg.floor[impl]) and (not best or t < best) then best = t end
    end
    if multi then row[#row + 1] = best and fmt_time(best, cfg.scale) or "-" end
    local ratio = (best and mg_t) and best / mg_t
    row[#row + 1] = ratio and ("**" .. fmt_ratio(ratio) .. "**") or "-"
    emit("| " .. table.concat(row, " | ") .. " |")
    local target = (cfg.case_target and cfg.case_target[case]) or cfg.target
    if cfg.notarget and cfg.notarget[case] then target = nil end
    b.ratios = b.ratios or {}
    b.ratios[case] = { ratio = ratio, target = target }
    if target and ratio then
      checked = checked + 1
      if ratio < target then misses[#misses + 1] = string.format("%s (%s < %s)", case, fmt_ratio(ratio), fmt_ratio(target)) end
    end
  end
  emit("")
  if cfg.target and checked > 0 then
    local what = cfg.case_target and "the row's target" or string.format("%dx", cfg.target)
    if #misses == 0 then
      emit(string.format("Target (PyTorch%s / moongrad >= %s): met in every row checked (%d).",
                         multi and "'s best" or "", what, checked))
    else
      emit(string.format("Target (PyTorch%s / moongrad >= %s): MISSED in %s.",
                         multi and "'s best" or "", what, table.concat(misses, ", ")))
    end
    emit("")
  end
  local extra = {}                         -- moongrad's GFLOP/s and both sides' peak RSS
  for _, case in ipairs(b.case_order) do
    local gf = b.meta["gflops " .. case .. " moongrad"]
    local rss_mg, rss_pt = b.meta["peak_rss_mib " .. case], b.meta["peak_rss_mib_torch " .. case]
    if gf or rss_mg then
      extra[#extra + 1] = string.format("%s: %s GFLOP/s, peak RSS %s MiB (PyTorch %s MiB)", case,
                                        gf or "?", rss_mg or "?", rss_pt or "?")
    end
  end
  if #extra > 0 then
    emit("moongrad per " .. cfg.row .. " (GFLOP/s of the time shown; peak RSS = VmHWM after at least 200 steps): " ..
         table.concat(extra, "; ") .. ".")
    emit("")
  end
  return table.concat(out, "\n")
end

local first = 1
if arg[1] == "--clock" then
  if arg[2] ~= "cpu" and arg[2] ~= "wall" then die("--clock must be cpu or wall, got " .. tostring(arg[2])) end
  column, first = arg[2] == "cpu" and 5 or 6, 3
end
if #arg < first then die("usage: lua5.4 bench/report.lua [--clock cpu|wall] LABEL=FILE.tsv ...") end
local runs, benches, seen = {}, {}, {}
for i = first, #arg do
  local label, path = arg[i]:match("^(.*)=(.+)$")     -- the label may hold '='
  if not label then die("bad argument '" .. arg[i] .. "', expected LABEL=FILE.tsv") end
  local data = read_results(path)
  runs[#runs + 1] = { label = label, data = data }
  for _, name in ipairs(data.order) do
    if not seen[name] then seen[name] = true; benches[#benches + 1] = name end
  end
end
-- The header: each run's BLAS kernels, threads and versions, from its first benchmark's meta.
local function short(label) return (label:match("^([^:]*)") or label) end
print("BLAS kernels and threads per run:")
print("")
for _, run in ipairs(runs) do
  local m = {}
  for _, name in ipairs(run.data.order) do
    for k, v in pairs(run.data.benches[name].meta) do if m[k] == nil then m[k] = v end end
  end
  print(string.format("- %s: moongrad %s (best for this CPU: %s), %s thread(s); PyTorch %s %s, " ..
    "%s thread(s), OpenBLAS %s thread(s)", run.label, m.moongrad_blas_core or "?",
    m.moongrad_blas_best or "?", m.moongrad_threads or "?", m.torch_version or "?",
    m.torch_blas_core or "?", m.torch_threads or "?", m.torch_blas_threads or "?"))
end
print("")

for _, name in ipairs(benches) do
  for _, run in ipairs(runs) do
    local b = run.data.benches[name]
    if b and #b.case_order > 0 then print(table_for(run.label, name, b)) end
  end
end

-- The summary: every ratio against its target, one row per benchmark case, one column per
-- run; then moongrad's own 2-thread speedup (its 1-thread wall time in the run of the same
-- environment over its 2-thread wall time) where a multi-thread run exists.
local function speedup(name, case, run)
  local b = run.data.benches[name]
  if not b or b.threads == 1 then return nil end
  local base = short(run.label):gsub(", %d+ threads$", "")
  for _, r in ipairs(runs) do
    local b1 = r.data.benches[name]
    if b1 and b1.threads == 1 and short(r.label) == base then
      local t1, t2 = b1.wall[case] and b1.wall[case].moongrad, b.wall[case] and b.wall[case].moongrad
      if t1 and t2 then return t1 / t2 end
    end
  end
  return nil
end
local head = { "benchmark", "case" }
for _, run in ipairs(runs) do head[#head + 1] = short(run.label) end
local multi_runs = {}
for _, run in ipairs(runs) do
  for _, name in ipairs(run.data.order) do
    if run.data.benches[name].threads > 1 then multi_runs[#multi_runs + 1] = run break end
  end
end
for _, run in ipairs(multi_runs) do head[#head + 1] = "moongrad speedup, " .. short(run.label) end
head[#head + 1] = "target"
print("#### Summary: PyTorch's best / moongrad per run, against the targets")
print("")
print("| " .. table.concat(head, " | ") .. " |")
print("|" .. string.rep("---|", #head))
local total, missed = 0, 0
local function mark(v, target)
  if not v then return "-" end
  if not target then return fmt_ratio(v) end
  total = total + 1
  if v < target then missed = missed + 1; return "**" .. fmt_ratio(v) .. " MISSED**" end
  return fmt_ratio(v) .. " met"
end
for _, name in ipairs(benches) do
  local cases, cseen = {}, {}
  for _, run in ipairs(runs) do
    local b = run.data.benches[name]
    for _, c in ipairs(b and b.case_order or {}) do
      if not cseen[c] then cseen[c] = true; cases[#cases + 1] = c end
    end
  end
  for _, case in ipairs(cases) do
    local row, target = { name, case }, nil
    for _, run in ipairs(runs) do
      local b = run.data.benches[name]
      local r = b and b.ratios and b.ratios[case]
      if r and r.target then target = r.target end
      row[#row + 1] = mark(r and r.ratio, r and r.target)
    end
    local ttarget = THREAD_TARGET[name] and THREAD_TARGET[name][case]
    for _, run in ipairs(multi_runs) do row[#row + 1] = mark(speedup(name, case, run), ttarget) end
    local t = {}
    if target then t[#t + 1] = ">= " .. fmt_ratio(target) end
    if ttarget and #multi_runs > 0 then t[#t + 1] = "speedup >= " .. fmt_ratio(ttarget) end
    row[#row + 1] = #t > 0 and table.concat(t, ", ") or "-"
    print("| " .. table.concat(row, " | ") .. " |")
  end
end
print("")
print(string.format("%d of %d targets met.", total - missed, total))
