-- jacobian_spectra.lua: the singular values of dh_T/dh_k (how a perturbation of the state k
-- steps back reaches h_T) for a SimpleRNN with orthogonal or Glorot recurrent kernels, linear
-- or tanh, from mg.jacobian_spectra: ONE recorded run, ONE vectorized reverse sweep
-- tape:batch_jacobian(h_T, {h_0..h_(T-1)}) and one batched svdvals.
--
-- Orthogonal + linear keeps every singular value at 1 for every horizon (dynamical isometry,
-- Saxe et al. 2014; Pennington, Schoenholz and Ganguli 2017); Glorot spreads them (some grow,
-- most vanish, the spread widening with the horizon); tanh contracts both. The input drives the
-- network (x_t Gaussian), so the tanh units sit at different slopes at every step.
-- Printed: the extreme singular values at the longest horizon and the worst deviation from 1
-- for orthogonal + linear. Pictures: log10 of the largest, median and smallest singular value
-- against the horizon T - k, one band per condition, and the full spectrum over the horizon as
-- a heatmap for Glorot + linear.
--
--   moongrad scripts/jacobian_spectra.lua [--out out] [--units 32] [--steps 40] [--batch 4]
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local nn, plot = mg.nn, mg.plot

local opt, out = common.setup(arg, "jacobian_spectra.lua",
  "singular values of dh_T/dh_k against the horizon: orthogonal vs Glorot recurrent kernels, linear vs tanh", 1, {
  common.opt.units(32, 2), common.opt.steps(40, 2), common.opt.input(4),
  { "batch", 4, "sequences (the spectra are per sequence; the report takes their median)", 1 },
})
local U, T, B = opt.units, opt.steps, opt.batch
local x = mg.randn(B, T, opt.input, { dtype = "float64" })

local conditions = {
  { name = "orthogonal + linear", init = "orthogonal", act = "linear" },
  { name = "Glorot + linear", init = "glorot_uniform", act = "linear" },
  { name = "orthogonal + tanh", init = "orthogonal", act = "tanh" },
  { name = "Glorot + tanh", init = "glorot_uniform", act = "tanh" },
}

local function median(v)
  table.sort(v)
  local n = #v
  return n % 2 == 1 and v[(n + 1) // 2] or (v[n // 2] + v[n // 2 + 1]) / 2
end

local results = {}
for ci, c in ipairs(conditions) do
  local cell = nn.SimpleRNNCell(opt.input, U, { activation = c.act, recurrent_initializer = c.init,
                                                dtype = "float64", name = "rnn" .. ci })
  local js = nn.RNN(cell):jacobian_spectra(x, { per_step = false })
  local S = js.singular_values                               -- (T, B, U): row k+1 is dh_T/dh_k
  -- per horizon T - k: medians over the batch of the largest, middle and smallest values
  local hi, mid, lo = {}, {}, {}
  for k = 0, T - 1 do
    local Sk = S[k + 1]
    local a, m, z = {}, {}, {}
    for b = 1, B do
      a[b], m[b], z[b] = Sk:get(b, 1), Sk:get(b, (U + 1) // 2), Sk:get(b, U)
    end
    local hz = T - k
    hi[hz], mid[hz], lo[hz] = median(a), median(m), median(z)
  end
  results[ci] = { S = S, hi = hi, mid = mid, lo = lo, cond = js.cond }
  print(string.format("%-20s horizon %d: largest %.4g, median %.4g, smallest %.4g singular value (medians over %d sequences)",
    c.name, T, hi[T], mid[T], lo[T], B))
end
local dev = (results[1].S - 1):abs():max():item()
print(string.format("orthogonal + linear: max |s - 1| over every horizon, sequence and index = %.3g (dynamical isometry)", dev))
common.check(dev < 1e-9, "orthogonal + linear lost isometry: max |s - 1| = %g", dev)
print(string.format("Glorot + linear: largest / smallest at horizon %d = %.4g", T, results[2].hi[T] / results[2].lo[T]))

---------------------------------------------------------------- pictures

local function log10s(v)
  local o = {}
  for i, y in ipairs(v) do o[i] = math.log(math.max(y, 1e-300), 10) end
  return o
end
local hz, horizon, names = {}, {}, {}
for i = 1, T do hz[i] = i end
for k = 0, T - 1 do horizon[k + 1] = T - k end               -- row k + 1 of S: horizon T - k
for ci, c in ipairs(conditions) do names[ci] = c.name end
local written = {}
for _, ext in ipairs { "png", "txt" } do
  local w, h = ext == "png" and 1000 or 110, ext == "png" and 560 or 32
  local lines, labels = {}, {}
  for ci, c in ipairs(conditions) do
    for _, q in ipairs { { "hi", "largest" }, { "lo", "smallest" } } do
      lines[#lines + 1] = log10s(results[ci][q[1]])
      labels[#labels + 1] = c.name .. ", " .. q[2]
    end
  end
  local p = plot.lines(lines, { x = hz, labels = labels, width = w, height = h,
    title = string.format("Singular values of dh_T/dh_k vs the horizon T - k\n(SimpleRNN %d units, medians over %d sequences)", U, B),
    xlabel = "horizon T - k (steps)", ylabel = "log10 singular value", out = out .. "/jacobian_spectra_bands." .. ext })
  written[#written + 1] = { "largest and smallest singular values against the horizon (" .. ext .. ")", p }
  local rows = {}
  local S = results[2].S
  for k = 0, T - 1 do                                         -- horizon 1 at the top
    local r = {}
    for i = 1, U do r[i] = math.log(math.max(S:get(T - k, 1, i), 1e-300), 10) end
    rows[k + 1] = r
  end
  -- the spread of every sequence's singular values over the horizon, per kernel (tanh)
  for ci = 3, 4 do
    local c = conditions[ci]
    local file = out .. "/jacobian_spectra_quantiles_" .. (ci == 3 and "orthogonal" or "glorot") .. "." .. ext
    p = plot.spectrum_bands(results[ci].S, { x = horizon, width = w, height = h,
      title = string.format("%s: singular values of dh_T/dh_k, quantiles over %d sequences x %d values", c.name, B, U),
      xlabel = "horizon T - k (steps)", ylabel = "log10 singular value", out = file })
    written[#written + 1] = { c.name .. ": quantiles of the singular values against the horizon (" .. ext .. ")", p }
  end
  -- the spectrum of dh_T/dh_0 (the longest horizon) of the first sequence, one line per condition
  local first = {}
  for ci = 1, #conditions do first[ci] = results[ci].S[1][1] end
  p = plot.spectrum(first, { logy = true, width = w, height = h,
    labels = names,
    title = string.format("Singular values of dh_T/dh_0 (T = %d, first sequence)", T),
    xlabel = "i (singular value, descending)", ylabel = "singular value", out = out .. "/jacobian_spectra_T." .. ext })
  written[#written + 1] = { "singular values of dh_T/dh_0 per condition (" .. ext .. ")", p }
  p = plot.heatmap(mg.tensor(rows), { width = w, height = h,
    title = "Glorot + linear: log10 singular values of dh_T/dh_k (first sequence)",
    xlabel = "singular value index (descending)", ylabel = "horizon T - k", out = out .. "/jacobian_spectra_glorot." .. ext })
  written[#written + 1] = { "Glorot + linear spectrum over the horizon (" .. ext .. ")", p }
end
for _, wr in ipairs(written) do common.wrote(wr[1], wr[2]) end
