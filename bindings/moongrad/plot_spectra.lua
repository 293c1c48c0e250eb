-- moongrad.plot_spectra (mg.plot_spectra): the pictures of gradient-flow spectra, drawn with
-- mg.plot.lines (so every output mg.plot knows: .png, .svg, .pdf, .txt or standard output).
--   spectrum(series [, opts])      sorted exponents or singular values, one line per condition
--   spectrum_bands(S [, opts])     quantiles of the values of each row of S (K, ...) against k:
--                                  the singular values of dh_T/dh_k over k as bands
-- Kept apart from plot.lua for now (to move into mg.plot as plot.spectrum and
-- plot.spectrum_bands).
local mg = require "moongrad"

local ipairs, math, pairs, table, type = ipairs, math, pairs, table, type
local debug = debug
local _ENV = nil

local ck = mg._checks(debug.getinfo(1, "S").source)
local raisef, describe, check_opts = ck.raisef, ck.describe, ck.check_opts

local M = {}

-- The numbers of a 1-d tensor or an array, sorted descending.
local function sorted(fn, v, i)
  local vals = {}
  if mg.is_tensor(v) then
    if v:dim() ~= 1 then raisef("%s: series %d must be 1-d, got shape %s", fn, i, mg.shapestr(v)) end
    vals = v:totable()
  elseif type(v) == "table" then
    for j, x in ipairs(v) do
      if type(x) ~= "number" then raisef("%s: series %d, entry %d is %s, expected a number", fn, i, j, describe(x)) end
      vals[j] = x
    end
  else
    raisef("%s: series %d is %s, expected a 1-d tensor or an array of numbers", fn, i, describe(v))
  end
  if #vals == 0 then raisef("%s: series %d is empty", fn, i) end
  table.sort(vals, function(a, b) return a > b end)
  return vals
end

-- The options mg.plot.lines takes from 'opts', with 'defaults' where absent.
local PASSED = { "out", "width", "height", "title", "xlabel", "ylabel", "logy" }
local function lines_opts(opts, defaults)
  local o = {}
  for _, k in ipairs(PASSED) do o[k] = opts[k] end
  for k, v in pairs(defaults) do if o[k] == nil then o[k] = v end end
  return o
end

local SPECTRUM_OPTS = { out = true, width = true, height = true, title = true, xlabel = true,
                        ylabel = true, logy = true, labels = true }

-- spectrum(series [, opts]): 'series' a 1-d tensor, a 2-d tensor (one condition per row), or
-- an array of 1-d tensors / arrays of numbers; each drawn sorted descending against its
-- index. Options: labels (one per series), title, xlabel, ylabel, logy, out, width, height.
-- Returns what mg.plot.lines returns (the path written, or nil for standard output).
function M.spectrum(series, opts)
  local fn = "plot_spectra.spectrum"
  opts = check_opts(fn, opts, SPECTRUM_OPTS)
  local list = series
  if mg.is_tensor(series) then
    if series:dim() == 1 then list = { series }
    elseif series:dim() == 2 then list = series:unstack(1)
    else raisef("%s: a tensor of series must be 1-d or 2-d, got shape %s", fn, mg.shapestr(series)) end
  elseif type(series) ~= "table" or #series == 0 then
    raisef("%s: series must be a tensor or a non-empty array of series, got %s", fn, describe(series))
  elseif type(series[1]) == "number" then
    list = { series }
  end
  local ys = {}
  for i, s in ipairs(list) do ys[i] = sorted(fn, s, i) end
  local o = lines_opts(opts, { title = "Spectrum (sorted, descending)", xlabel = "i (descending)",
                               ylabel = "value" })
  o.labels = opts.labels
  return mg.plot.lines(ys, o)
end

local BANDS_OPTS = { out = true, width = true, height = true, title = true, xlabel = true,
                     ylabel = true, quantiles = true, log10 = true, x = true }

local function quantile(sorted_vals, q)
  local n = #sorted_vals
  local pos = 1 + q * (n - 1)
  local lo = math.floor(pos)
  local hi = math.min(lo + 1, n)
  return sorted_vals[lo] + (pos - lo) * (sorted_vals[hi] - sorted_vals[lo])
end

local function qname(q)
  if q == 0 then return "min" elseif q == 1 then return "max" elseif q == 0.5 then return "median" end
  return ("%g%%"):format(q * 100)
end

-- spectrum_bands(S [, opts]): for each row k of S (K, ...) (mg.jacobian_spectra's
-- singular_values (T, B, N): every sequence and index of dh_T/dh_(k-1)), the quantiles of its
-- values, one line per quantile, against x (default 0 .. K-1). Options: quantiles (default
-- {0, 0.25, 0.5, 0.75, 1}), log10 (default true: log10 of the values, which must be > 0),
-- x, title, xlabel, ylabel, out, width, height.
function M.spectrum_bands(S, opts)
  local fn = "plot_spectra.spectrum_bands"
  opts = check_opts(fn, opts, BANDS_OPTS)
  if not mg.is_tensor(S) or S:dim() < 2 or S:numel() == 0 then
    raisef("%s: S must be a non-empty tensor (K, ...) with at least 2 dims, got %s", fn, describe(S))
  end
  local qs = opts.quantiles or { 0, 0.25, 0.5, 0.75, 1 }
  if type(qs) ~= "table" or #qs == 0 then raisef("%s: quantiles must be a non-empty array, got %s", fn, describe(qs)) end
  for i, q in ipairs(qs) do
    if type(q) ~= "number" or q < 0 or q > 1 then raisef("%s: quantile %d must be in [0, 1], got %s", fn, i, describe(q)) end
  end
  local log = opts.log10 ~= false
  local K = S:size(1)
  local x = opts.x
  if x == nil then
    x = {}
    for k = 1, K do x[k] = k - 1 end
  elseif type(x) ~= "table" or #x ~= K then
    raisef("%s: x must be an array of %d numbers (one per row of S), got %s", fn, K, describe(x))
  end
  local flat = S:contiguous():reshape(K, -1)
  local ys = {}
  for j = 1, #qs do ys[j] = {} end
  for k = 1, K do
    local v = flat[k]:totable()
    table.sort(v)
    for j, q in ipairs(qs) do
      local y = quantile(v, q)
      if log then
        if not (y > 0) then raisef("%s: log10 needs positive values, row %d has %g (pass log10 = false)", fn, k, y) end
        y = math.log(y, 10)
      end
      ys[j][k] = y
    end
  end
  local labels = {}
  for j, q in ipairs(qs) do labels[j] = qname(q) end
  local o = lines_opts(opts, { title = "Spectrum over k: quantiles of each row", xlabel = "k",
                               ylabel = log and "log10 value" or "value" })
  o.labels, o.x = labels, x
  return mg.plot.lines(ys, o)
end

return M
