-- sweep.lua: one sweep over a grid of seeds, state sizes and activations, split over MPI ranks
-- by mpi.sweep (docs/mpi.md): for each config, the recurrent map h_t = act(h_(t-1)) W + b with
-- Glorot weights (var(W) = 1/units, b = 0),
--  1. seed 001's check (scripts/glorot_jacobian.lua): var(dh_t/dh_(t-1)) * units, the fraction
--     of active units: 0.5 for ReLU, 1.0 for the identity;
--  2. its top-k Lyapunov exponents (mg.lyapunov, the QR method): the identity map sits at the
--     edge of chaos (largest exponent near 0: the circular law puts W's eigenvalues in the unit
--     disc), ReLU under Glorot contracts (largest exponent clearly negative: gradients vanish).
-- Rank 0 prints the summary table (mean and spread over seeds) and draws the mean spectra.
-- Every run seeds itself from its config, so the numbers do not depend on the number of ranks.
--
--   moongrad scripts/sweep.lua [--quick] [--out out] [--seeds 6] [--sizes 16,32,64] ...
--   mpirun -np 2 moongrad scripts/sweep.lua --quick         (README: "On a cluster")
-- Without moongrad.mpi (a build without MPI) the same sweep runs as a serial loop.
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local plot = mg.plot
local mpi = require "moongrad.mpi"

local args = {}                  -- a bare --quick means --quick=true
for i, a in ipairs(arg) do args[i] = a == "--quick" and "--quick=true" or a end
local opt, out = common.setup(args, "sweep.lua",
  "seed 001's Glorot check and Lyapunov spectra over seeds x sizes x activations, as one MPI sweep", 1, {
  { "quick", false, "a small grid (2 seeds, sizes 8,16, 120 steps): seconds" },
  { "seeds", 6, "seeds per (size, activation)", 1 },
  { "sizes", "16,32,64", "state sizes, comma-separated" },
  { "acts", "relu,identity", "activations, comma-separated (relu, identity, tanh)" },
  { "batch", 32, "samples of the Jacobian check", 1 },
  { "steps", 400, "counted Lyapunov steps", 10 },
  { "warmup", 50, "Lyapunov warm-up steps", 0 },
  { "k", 4, "Lyapunov exponents per map (at most the size)", 1 },
  { "threads", 0, "BLAS threads per rank (0: 1 when several ranks share the machine, else unchanged)", 0 },
})
if opt.quick then opt.seeds, opt.sizes, opt.steps, opt.warmup = 2, "8,16", 120, 20 end

local use_mpi = mpi.available()
local rank, size = use_mpi and mpi.rank() or 0, use_mpi and mpi.size() or 1
if opt.threads > 0 then mg.set_num_threads(opt.threads) elseif size > 1 then mg.set_num_threads(1) end

local function list(s, conv)
  local v = {}
  for part in s:gmatch("[^,%s]+") do v[#v + 1] = conv and conv(part) or part end
  return v
end
local sizes, acts = list(opt.sizes, math.tointeger), list(opt.acts)
local ACT = { relu = mg.relu, identity = function(x) return x end, tanh = mg.tanh }
for _, s in ipairs(sizes) do common.check(s and s >= 2, "--sizes: integers >= 2, got '%s'", opt.sizes) end
for _, a in ipairs(acts) do common.check(ACT[a] ~= nil, "--acts: unknown activation '%s' (relu, identity, tanh)", a) end

local configs = {}
for _, act in ipairs(acts) do
  for _, units in ipairs(sizes) do
    for seed = 1, opt.seeds do configs[#configs + 1] = { act = act, units = units, seed = opt.seed * 1000 + seed } end
  end
end

local F64 = { dtype = "float64" }

-- One run: its own seed, its own weights; returns plain numbers (sent to rank 0).
local function run(c)
  mg.manual_seed(c.seed)
  local act, n = ACT[c.act], c.units
  local W = mg.glorot_uniform(n, n, F64)
  local b = mg.zeros(n, F64)
  local function step(_, h) return act(h):matmul(W) + b end
  -- 1. var(dh_t/dh_(t-1)) * units at a random state
  local h0 = mg.randn(opt.batch, n, F64)
  local tape = mg.GradientTape()
  tape:watch(h0)
  local J = tape:batch_jacobian(step(nil, h0), h0)          -- (B, n, n)
  local ratio = J:var():item() * n
  -- 2. the top-k Lyapunov exponents of the autonomous map
  local k = math.min(opt.k, n)
  local ly = mg.lyapunov(step, mg.randn(4, n, F64), nil, { k = k, steps = opt.steps, warmup = opt.warmup })
  return { ratio = ratio, exponents = common.values(ly.mean) }
end

local t0 = mg.clock()
local results
if use_mpi then
  results = mpi.sweep(configs, run)
else
  results = {}
  for i, c in ipairs(configs) do results[i] = run(c) end
end
local wall = mg.clock() - t0
if rank ~= 0 then return end

---------------------------------------------------------------- rank 0: the report

local function mean_sd(xs)
  local s, s2 = 0, 0
  for _, x in ipairs(xs) do s = s + x end
  local m = s / #xs
  for _, x in ipairs(xs) do s2 = s2 + (x - m) ^ 2 end
  return m, #xs > 1 and math.sqrt(s2 / (#xs - 1)) or 0
end

print(string.format("sweep: %d configs (%d seeds x sizes %s x %s) on %d rank%s in %.2f s%s",
  #configs, opt.seeds, opt.sizes, opt.acts, size, size == 1 and "" or "s", wall,
  use_mpi and "" or " (moongrad.mpi not available: a serial loop)"))
print(string.format("%-9s %6s  %-17s %-17s %s", "act", "units", "var(J)*units", "lambda_1", "mean top-k spectrum"))
local groups, order = {}, {}
for i, c in ipairs(configs) do
  local key = c.act .. " " .. c.units
  if not groups[key] then groups[key] = { act = c.act, units = c.units, ratios = {}, l1 = {}, spectra = {} }; order[#order + 1] = key end
  local g, r = groups[key], results[i]
  g.ratios[#g.ratios + 1] = r.ratio
  g.l1[#g.l1 + 1] = r.exponents[1]
  g.spectra[#g.spectra + 1] = r.exponents
end
local lines, labels, by_act = {}, {}, {}
for _, key in ipairs(order) do
  local g = groups[key]
  local rm, rs = mean_sd(g.ratios)
  local lm, ls = mean_sd(g.l1)
  local spec = {}
  for j = 1, #g.spectra[1] do
    local s = 0
    for _, e in ipairs(g.spectra) do s = s + e[j] end
    spec[j] = s / #g.spectra
  end
  local parts = {}
  for j, v in ipairs(spec) do parts[j] = string.format("%.3f", v) end
  print(string.format("%-9s %6d  %.4f +- %.4f  %+.4f +- %.4f  %s", g.act, g.units, rm, rs, lm, ls, table.concat(parts, " ")))
  lines[#lines + 1] = spec
  labels[#labels + 1] = g.act .. " " .. g.units
  local a = by_act[g.act] or { ratios = {}, l1 = {} }
  by_act[g.act] = a
  for _, v in ipairs(g.ratios) do a.ratios[#a.ratios + 1] = v end
  for _, v in ipairs(g.l1) do a.l1[#a.l1 + 1] = v end
end
local expected = { relu = 0.5, identity = 1.0 }
for _, act in ipairs(acts) do
  local rm = mean_sd(by_act[act].ratios)
  local lm = mean_sd(by_act[act].l1)
  print(string.format("%s mean var(J)*units = %.4f%s; mean lambda_1 = %+.4f", act, rm,
    expected[act] and string.format(" (expected %.1f)", expected[act]) or "", lm))
  if expected[act] then
    common.check(math.abs(rm - expected[act]) < 0.15 * expected[act] + 0.05,
      "%s: var(J)*units = %.4f, far from %.1f", act, rm, expected[act])
  end
end

local title = "Mean top-k Lyapunov spectra (h_t = act(h_(t-1)) W, Glorot), over seeds"
for _, ext in ipairs { "png", "txt" } do
  local path = plot.lines(lines, { labels = labels, title = title, xlabel = "exponent, descending",
    ylabel = "lambda (per step)", out = out .. "/sweep_spectra." .. ext })
  common.wrote("mean spectra (" .. ext .. ")", path)
end
