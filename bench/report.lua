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
local CONFIG = {
  op_overhead = { unit = "us", scale = 1e6, title = "per-op overhead, 16-element float32 add",
                  row = "mode", target = 3,
                  rows = { no_tape = "no tape (PyTorch: no_grad)",
                           recorded = "recorded (tape / requires_grad)",
                           ["recorded+backward"] = "recorded + backward, per op (chain)" },
                  notarget = { ["recorded+backward"] = true } },
  jacobian = { unit = "ms", scale = 1e3, title = "batch_jacobian of relu(h) @ W + b, float32",
               row = "(B,N)", target = 5, floor = { ["closed form"] = true } },
  lstm = { unit = "ms", scale = 1e3, row = "units",
           title = "LSTM train step: T=100, B=16, in=8, forward + MSE on a Dense head + backward + Adam",
           pair = { ["LSTMCell loop + retain_grad"] = "moongrad + dL/dh_t" } },
  lyapunov = { unit = "ms", scale = 1e3, row = "N,k,T", target = 10,
               title = "top-k Lyapunov spectrum of a GRU, B=16, float32, the whole run (PyTorch and JAX columns)" },
}

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
        b = { cases = {}, case_order = {}, impls = {}, impl_order = {}, meta = {} }
        data.benches[bench] = b
        data.order[#data.order + 1] = bench
      end
      if kind == "meta" then
        b.meta[fields[3]] = fields[4]
      else
        local case, impl, secs = fields[3], fields[4], tonumber(fields[column])
        if not secs then die(path .. ": bad time in line: " .. line) end
        if not b.cases[case] then b.cases[case] = {}; b.case_order[#b.case_order + 1] = case end
        if not b.impls[impl] then b.impls[impl] = true; b.impl_order[#b.impl_order + 1] = impl end
        b.cases[case][impl] = secs
      end
    end
  end
  f:close()
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
  emit(string.format("BLAS kernels: moongrad %s (best for this CPU: %s), PyTorch %s; one " ..
    "thread each; medians of %s time.", b.meta.moongrad_blas_core or "?",
    b.meta.moongrad_blas_best or "?", b.meta.torch_blas_core or "?",
    column == 5 and "process CPU" or "wall-clock"))
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
    if cfg.target and ratio and not (cfg.notarget and cfg.notarget[case]) then
      checked = checked + 1
      if ratio < cfg.target then misses[#misses + 1] = string.format("%s (%s)", case, fmt_ratio(ratio)) end
    end
  end
  emit("")
  if cfg.target and checked > 0 then
    if #misses == 0 then
      emit(string.format("Target (PyTorch%s / moongrad >= %dx): met in every row checked (%d).",
                         multi and "'s best" or "", cfg.target, checked))
    else
      emit(string.format("Target (PyTorch%s / moongrad >= %dx): MISSED in %s.",
                         multi and "'s best" or "", cfg.target, table.concat(misses, ", ")))
    end
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
for _, name in ipairs(benches) do
  for _, run in ipairs(runs) do
    local b = run.data.benches[name]
    if b and #b.case_order > 0 then print(table_for(run.label, name, b)) end
  end
end
