-- report.lua - turns the result lines of the bench sides (bench/NAME.lua for moongrad, and the
-- peers: bench/NAME.py under each PyTorch, bench/NAME_jax.py, bench/NAME_tf.py) into markdown.
-- Usage: lua5.4 bench/report.lua [--clock cpu|wall] LABEL=FILE.tsv [LABEL=FILE.tsv ...]
-- Each FILE holds the 'result' and 'meta' lines of one environment (LABEL names it, e.g.
-- "as set here" or "tuned"):
--   result <bench> <case> <impl> <CPU s> <wall s> [<peer>]     meta <bench> <key> <value> [<peer>]
-- where <peer> ("PyTorch 2.5.1", "JAX 0.4.35", "TensorFlow 2.18.0") is absent on moongrad's
-- lines (and on older peer lines: an impl "jax ..." is JAX's, any other non-moongrad impl
-- PyTorch's, their versions from the meta keys jax_version and torch_version).
-- Printed: each run's kernels and threads per side; per benchmark and environment a table
-- with moongrad's columns, each peer's best method and the best of them all with its ratio
-- best / moongrad (higher is better for moongrad) and whether the target is met, then every
-- peer method's time and ratio; at the end a one-screen summary of every ratio against its
-- target. Times are the process CPU time medians unless '--clock wall' asks for the
-- wall-clock medians (runs with more than one thread always show the wall clock).

-- Per benchmark: unit, what the rows are, the target ratio of the best peer to moongrad,
-- peer methods that are not autodiff methods (shown, but not candidates for "best"), and
-- which moongrad column a peer method is compared with when not plain "moongrad" (such a
-- method is not a candidate for the row's best either).
-- Targets are issue 18's: op_overhead 6x, jacobian 5x, lstm 5x at 6 and 32 units and 2x
-- from 256 units; issue 13's: lyapunov 10x; 'case_target' overrides 'target' per case.
-- 'ceiling' says what bounds a case on this machine (bench/machine.lua measures it in the same
-- run): "flops" (the case's meta 'flops CASE' at the measured SGEMM rate), "bytes" (its meta
-- 'bytes CASE', the bytes it must write, at the measured store bandwidth) or "call" (one
-- Lua-to-C call per op). The floor time that gives is what no implementation can beat, so
-- best peer / floor is the largest ratio any implementation could show against that peer.
local CONFIG = {
  op_overhead = { unit = "us", scale = 1e6, title = "per-op overhead, 16-element float32 add",
                  row = "mode", target = 6,
                  rows = { no_tape = "no tape (PyTorch: no_grad / inference_mode; JAX, TensorFlow: eager)",
                           recorded = "recorded (tape / requires_grad)",
                           ["recorded+backward"] = "recorded + backward, per op (chain)" },
                  notarget = { ["recorded+backward"] = true }, ceiling = "call" },
  jacobian = { unit = "ms", scale = 1e3, title = "batch_jacobian of relu(h) @ W + b, float32",
               row = "(B,N)", target = 5, floor = { ["closed form"] = true }, ceiling = "bytes" },
  lstm = { unit = "ms", scale = 1e3, row = "units", target = 2,
           case_target = { ["6"] = 5, ["32"] = 5 },
           title = "LSTM train step: T=100, B=16, in=8, forward + MSE on a Dense head + backward + Adam",
           pair = { ["LSTMCell loop + retain_grad"] = "moongrad + dL/dh_t" }, ceiling = "flops" },
  char_lstm = { unit = "ms", scale = 1e3, row = "units", target = 2,
                title = "char-LSTM train step: Embedding(76, 64) -> 2 x LSTM (dropout 0.2) -> Dense, B=32, T=50, "
                        .. "cross-entropy + backward + global-norm clip + RMSprop", ceiling = "flops" },
  lyapunov = { unit = "ms", scale = 1e3, row = "N,k,T", target = 10,
               title = "top-k Lyapunov spectrum of a GRU, B=16, float32, the whole run", ceiling = "flops" },
}

-- The 2-thread speedup targets (moongrad's 1-thread over its 2-thread time, wall clock).
local THREAD_TARGET = { jacobian = { ["32,512"] = 1.6 }, lstm = { ["256"] = 1.6 } }

local function die(msg) io.stderr:write("report.lua: ", msg, "\n"); os.exit(1) end

local column = 5                                       -- 5: CPU time, 6: wall clock

local function read_results(path)
  local f, err = io.open(path)
  if not f then die("cannot read " .. tostring(err)) end
  local data = { order = {}, benches = {} }
  local function bench_of(name)
    local b = data.benches[name]
    if not b then
      b = { cases = {}, wall = {}, case_order = {}, meta = {}, peer_meta = {}, peer_order = {},
            methods = {}, moongrad = {} }
      data.benches[name] = b
      data.order[#data.order + 1] = name
    end
    return b
  end
  local function add_peer(b, peer)
    if not b.peer_meta[peer] then
      b.peer_meta[peer], b.methods[peer] = {}, {}
      b.peer_order[#b.peer_order + 1] = peer
    end
  end
  local pending = {}                      -- lines without a peer field, resolved at the end
  for line in f:lines() do
    local fields = {}
    for x in (line .. "\t"):gmatch("([^\t]*)\t") do fields[#fields + 1] = x end
    local kind, name = fields[1], fields[2]
    if kind == "meta" then
      local b = bench_of(name)
      local peer = fields[5]
      if peer and peer ~= "" then
        add_peer(b, peer)
        b.peer_meta[peer][fields[3]] = fields[4]
      else
        b.meta[fields[3]] = fields[4]
      end
    elseif kind == "result" then
      local b = bench_of(name)
      local case, impl, cpu, wall = fields[3], fields[4], tonumber(fields[5]), tonumber(fields[6])
      if not cpu or not wall then die(path .. ": bad time in line: " .. line) end
      pending[#pending + 1] = { b = b, case = case, impl = impl, cpu = cpu, wall = wall, peer = fields[7] }
    end
  end
  f:close()
  for _, r in ipairs(pending) do
    local b, peer, method = r.b, r.peer, r.impl
    if not peer or peer == "" then
      if r.impl:match("^moongrad") then
        peer = nil
      elseif r.impl:match("^jax ") then
        peer, method = "JAX " .. (b.meta.jax_version or "?"), r.impl:gsub("^jax ", "")
      else
        peer = "PyTorch " .. (b.meta.torch_version or "?")
      end
    end
    if not b.cases[r.case] then
      b.cases[r.case], b.wall[r.case] = {}, {}
      b.case_order[#b.case_order + 1] = r.case
    end
    local key
    if peer then
      add_peer(b, peer)
      local ms = b.methods[peer]
      if not ms[method] then ms[method] = true; ms[#ms + 1] = method end
      key = peer .. "\0" .. method
    else
      if not b.moongrad[method] then b.moongrad[method] = true; b.moongrad[#b.moongrad + 1] = method end
      key = method
    end
    b.cases[r.case][key], b.wall[r.case][key] = r.cpu, r.wall
  end
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

-- "torch 1.13", "torch 2.5", "JAX", "TF": a peer's name in the summary's cells.
local function short_peer(peer)
  local v = peer:match("^PyTorch (%d+%.%d+)")
  if v then return "torch " .. v end
  if peer:match("^JAX") then return "JAX" end
  if peer:match("^TensorFlow") then return "TF" end
  return peer
end

-- The row's best for one peer (fastest autodiff method compared with plain moongrad).
local function peer_best(cfg, b, case, peer)
  local best, which
  for _, method in ipairs(b.methods[peer]) do
    local t = b.cases[case][peer .. "\0" .. method]
    if t and not (cfg.floor and cfg.floor[method]) and not (cfg.pair and cfg.pair[method])
       and (not best or t < best) then
      best, which = t, method
    end
  end
  return best, which
end

-- The floor time of one case (seconds, per call as the results are), or nil when the run has
-- no machine figures or the case no work figure.
local function floor_of(cfg, b, case, machine)
  if not machine or not cfg.ceiling then return nil end
  if cfg.ceiling == "call" then
    local us = tonumber(machine.call_us)
    return us and us * 1e-6
  end
  local work = tonumber(b.meta[cfg.ceiling .. " " .. case])
  local rate = cfg.ceiling == "flops" and tonumber(machine.sgemm_gflops) or tonumber(machine.write_gbs)
  return work and rate and rate > 0 and work / (rate * 1e9) or nil
end

local function table_for(label, name, b, machine)
  local cfg = CONFIG[name] or { unit = "s", scale = 1, title = name, row = "case" }
  local out = {}
  local function emit(s) out[#out + 1] = s end
  -- a time from a single timed run (meta 'runs CASE METHOD' 1: a call too long to repeat,
  -- benchlib's SINGLE_RUN_SECONDS) is marked n=1
  local function single(case, peer, method)
    return (peer and b.peer_meta[peer] or b.meta)["runs " .. case .. " " .. method] == "1"
  end
  local singles, metas = false, { b.meta }
  for _, peer in ipairs(b.peer_order) do metas[#metas + 1] = b.peer_meta[peer] end
  for _, m in ipairs(metas) do
    for k, v in pairs(m) do if v == "1" and k:match("^runs ") then singles = true end end
  end
  emit(string.format("#### %s: %s (%s)", name, cfg.title, label))
  emit("")
  emit(string.format("moongrad's BLAS kernels %s (best for this CPU: %s); %s each; medians of %s time; " ..
    "each peer's cell is its fastest method (named), the ratio best / moongrad.",
    b.meta.moongrad_blas_core or "?", b.meta.moongrad_blas_best or "?",
    b.threads == 1 and "one thread" or b.threads .. " threads", b.clock))
  emit("")
  local head = { cfg.row }
  for _, m in ipairs(b.moongrad) do head[#head + 1] = m .. " " .. cfg.unit end
  for _, peer in ipairs(b.peer_order) do
    if #b.methods[peer] > 0 then head[#head + 1] = peer .. " " .. cfg.unit end
  end
  head[#head + 1] = "best of the peers " .. cfg.unit
  head[#head + 1] = "best / moongrad"
  local floors = false
  for _, case in ipairs(b.case_order) do floors = floors or floor_of(cfg, b, case, machine) ~= nil end
  if floors then
    head[#head + 1] = "floor " .. cfg.unit
    head[#head + 1] = "best / floor"
  end
  emit("| " .. table.concat(head, " | ") .. " |")
  emit("|" .. string.rep("---|", #head))
  local misses, checked = {}, 0
  b.ratios = {}
  for _, case in ipairs(b.case_order) do
    local r = b.cases[case]
    local mg_t = r.moongrad
    local row = { (cfg.rows and cfg.rows[case]) or case }
    for _, m in ipairs(b.moongrad) do
      row[#row + 1] = r[m] and fmt_time(r[m], cfg.scale) .. (single(case, nil, m) and " (n=1)" or "") or "-"
    end
    local best, best_peer
    for _, peer in ipairs(b.peer_order) do
      if #b.methods[peer] > 0 then
        local t, method = peer_best(cfg, b, case, peer)
        row[#row + 1] = t and string.format("%s (%s%s%s)", fmt_time(t, cfg.scale), method,
                                            mg_t and ", " .. fmt_ratio(t / mg_t) or "",
                                            single(case, peer, method) and ", n=1" or "") or "-"
        if t and (not best or t < best) then best, best_peer = t, peer end
      end
    end
    row[#row + 1] = best and string.format("%s (%s)", fmt_time(best, cfg.scale), best_peer) or "-"
    local ratio = (best and mg_t) and best / mg_t
    row[#row + 1] = ratio and ("**" .. fmt_ratio(ratio) .. "**") or "-"
    local floor = floor_of(cfg, b, case, machine)
    local reachable = floor and best and best / floor
    if floors then
      row[#row + 1] = floor and fmt_time(floor, cfg.scale) or "-"
      row[#row + 1] = reachable and fmt_ratio(reachable) or "-"
    end
    emit("| " .. table.concat(row, " | ") .. " |")
    local target = (cfg.case_target and cfg.case_target[case]) or cfg.target
    if cfg.notarget and cfg.notarget[case] then target = nil end
    -- a floor from the store bandwidth of a plain fill is no bound: streaming stores, which do
    -- not read a line before writing it, beat it (moongrad's Jacobians use them past 4 MiB)
    b.ratios[case] = { ratio = ratio, target = target, peer = best_peer,
                       reachable = cfg.ceiling ~= "bytes" and reachable or nil }
    if target and ratio then
      checked = checked + 1
      if ratio < target then misses[#misses + 1] = string.format("%s (%s < %s)", case, fmt_ratio(ratio), fmt_ratio(target)) end
    end
  end
  emit("")
  if singles then
    emit(string.format("n=1: a single timed run (a call of more than %s s CPU is not repeated: " ..
                       "bench/benchlib's SINGLE_RUN_SECONDS); the other times are medians of several.",
                       b.meta.single_run_seconds or "a few"))
    emit("")
  end
  if floors then
    emit(string.format("Floor: %s; best / floor is the largest ratio any implementation could show " ..
      "against the best peer on this machine.", ({
        flops = string.format("the case's GEMM FLOPs at this run's measured SGEMM rate (%s GFLOP/s)",
                              machine.sgemm_gflops),
        bytes = string.format("the bytes of the result written at the store bandwidth of a plain fill in " ..
                              "this run (%s GB/s; streaming stores, which moongrad uses past 4 MiB, can beat " ..
                              "it, so here it is a guide, not a bound)", machine.write_gbs),
        call = string.format("one Lua-to-C call per op (%s us, measured in this run)", machine.call_us) })[cfg.ceiling]))
    emit("")
  end
  if cfg.target and checked > 0 then
    local what = cfg.case_target and "the row's target" or string.format("%dx", cfg.target)
    if #misses == 0 then
      emit(string.format("Target (the best peer / moongrad >= %s): met in every row checked (%d).", what, checked))
    else
      emit(string.format("Target (the best peer / moongrad >= %s): MISSED in %s.", what, table.concat(misses, ", ")))
    end
    emit("")
  end
  -- Every peer method, one row each, the cases as columns: time (ratio to its moongrad column).
  local mhead = { "peer", "method" }
  for _, case in ipairs(b.case_order) do mhead[#mhead + 1] = cfg.row .. " " .. case .. " " .. cfg.unit end
  emit("Every method:")
  emit("")
  emit("| " .. table.concat(mhead, " | ") .. " |")
  emit("|" .. string.rep("---|", #mhead))
  for _, m in ipairs(b.moongrad) do
    local row = { "moongrad", m }
    for _, case in ipairs(b.case_order) do
      local t = b.cases[case][m]
      row[#row + 1] = t and fmt_time(t, cfg.scale) .. (single(case, nil, m) and " (n=1)" or "") or "-"
    end
    emit("| " .. table.concat(row, " | ") .. " |")
  end
  for _, peer in ipairs(b.peer_order) do
    for _, method in ipairs(b.methods[peer]) do
      local other = cfg.pair and cfg.pair[method]
      local row = { peer, method .. ((cfg.floor and cfg.floor[method]) and " (not autodiff)" or "") ..
                          (other and " (vs " .. other .. ")" or "") }
      for _, case in ipairs(b.case_order) do
        local t, ref = b.cases[case][peer .. "\0" .. method], b.cases[case][other or "moongrad"]
        local notes = {}
        if t and ref then notes[#notes + 1] = fmt_ratio(t / ref) end
        if t and single(case, peer, method) then notes[#notes + 1] = "n=1" end
        row[#row + 1] = t and (fmt_time(t, cfg.scale) .. (#notes > 0 and " (" .. table.concat(notes, ", ") .. ")" or "")) or "-"
      end
      emit("| " .. table.concat(row, " | ") .. " |")
    end
  end
  emit("")
  local extra = {}                         -- moongrad's GFLOP/s and every side's peak RSS
  for _, case in ipairs(b.case_order) do
    local gf = b.meta["gflops " .. case .. " moongrad"]
    local rss_mg = b.meta["peak_rss_mib " .. case]
    if gf or rss_mg then
      local peers = {}
      for _, peer in ipairs(b.peer_order) do
        local pm = b.peer_meta[peer]
        local v = pm["peak_rss_mib_torch " .. case] or pm["peak_rss_mib_peer " .. case]
        if v then peers[#peers + 1] = short_peer(peer) .. " " .. v end
      end
      extra[#extra + 1] = string.format("%s: %s GFLOP/s, peak RSS %s MiB (%s)", case, gf or "?",
                                        rss_mg or "?", #peers > 0 and table.concat(peers, ", ") .. " MiB" or "peers ?")
    end
  end
  if #extra > 0 then
    emit("moongrad per " .. cfg.row .. " (GFLOP/s of the time shown; peak RSS = VmHWM of 200 steps): " ..
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
-- The header: each run's kernels and threads per side, from the first benchmark saying them.
local function short(label) return (label:match("^([^:]*)") or label) end
print("Kernels and threads per run and side:")
print("")
for _, run in ipairs(runs) do
  local m, peers, pseen = {}, {}, {}
  for _, name in ipairs(run.data.order) do
    local b = run.data.benches[name]
    for k, v in pairs(b.meta) do if m[k] == nil then m[k] = v end end
    for _, peer in ipairs(b.peer_order) do
      if not pseen[peer] then pseen[peer] = {}; peers[#peers + 1] = peer end
      for k, v in pairs(b.peer_meta[peer]) do if pseen[peer][k] == nil then pseen[peer][k] = v end end
    end
  end
  print(string.format("- %s: moongrad %s (best for this CPU: %s), %s thread(s)", run.label,
    m.moongrad_blas_core or "?", m.moongrad_blas_best or "?", m.moongrad_threads or "?"))
  for _, peer in ipairs(peers) do
    local pm = pseen[peer]
    local blas = pm.peer_blas or (pm.torch_blas_core and "OpenBLAS " .. pm.torch_blas_core) or "?"
    print(string.format("  - %s: %s; threads: %s", peer, blas,
      pm.peer_threads or (pm.torch_threads and "torch " .. pm.torch_threads) or "?"))
  end
end
print("")

-- bench/machine.lua's figures per run (nil when the run did not measure them).
local function machine_of(run)
  local m = run.data.benches.machine
  return m and m.meta.sgemm_gflops and m.meta or nil
end
for _, name in ipairs(benches) do
  for _, run in ipairs(runs) do
    local b = run.data.benches[name]
    if b and #b.case_order > 0 then print(table_for(run.label, name, b, machine_of(run))) end
  end
end

-- The summary: every ratio against its target, one row per benchmark case, one column per
-- run (the best peer named); then moongrad's own 2-thread speedup (its 1-thread wall time in
-- the run of the same environment over its 2-thread wall time) where a multi-thread run exists.
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
print("#### Summary: the best peer / moongrad per run (the best peer named), against the targets")
print("")
print("| " .. table.concat(head, " | ") .. " |")
print("|" .. string.rep("---|", #head))
local total, missed = 0, 0
local unreachable = 0
local function mark(v, target, peer, reachable)
  if not v then return "-" end
  local who = peer and " (" .. short_peer(peer) .. ")" or ""
  if not target then return fmt_ratio(v) .. who end
  total = total + 1
  if v < target then
    missed = missed + 1
    local bound = ""
    if reachable and reachable < target then
      unreachable = unreachable + 1
      bound = string.format(", at most %s reachable", fmt_ratio(reachable))
    end
    return "**" .. fmt_ratio(v) .. " MISSED**" .. who:gsub("%)$", bound .. ")")
  end
  return fmt_ratio(v) .. " met" .. who
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
      row[#row + 1] = mark(r and r.ratio, r and r.target, r and r.peer, r and r.reachable)
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
print(string.format("%d of %d targets met.", total - missed, total) ..
  (unreachable > 0 and string.format(" %d of the missed ones cannot be met on this machine by any " ..
     "implementation: the best peer is within the target's ratio of the floor (\"at most ... reachable\").",
     unreachable) or ""))
