-- moongrad.losses: the Keras 3 losses, installed into mg.nn (nn.mse, nn.huber, ...). Each
-- takes (pred, target [, opts]) and computes Keras's per-sample values (the loss reduced over
-- the last axis: a mean for mse, mae, huber and binary_crossentropy, the sum over classes for
-- the cross-entropies), then Keras's reduce_weighted_values: the sample weights and the mask
-- are merged into one weight (a mask weighs its valid entries total / valid), multiplied in,
-- and the result reduced, by default "sum_over_batch_size" (the sum over the number of
-- per-sample values). Without weights that is the mean over the batch.
local mg = require "moongrad"

local ipairs, type, tostring = ipairs, type, tostring
local debug, math = debug, math
local _ENV = nil

local losses = {}
local is_tensor, shapestr = mg.is_tensor, mg.shapestr

local checks = mg._checks(debug.getinfo(1, "S").source)   -- errors point at the user's line
local raise, raisef, describe, check_opts = checks.raise, checks.raisef, checks.describe, checks.check_opts

local EPS = 1e-7                                       -- Keras's backend epsilon

local REDUCTIONS = { sum_over_batch_size = true, mean = true, sum = true, none = true,
  mean_with_sample_weight = true }

local function check_tensor(fn, what, x)
  if not is_tensor(x) then raisef("%s: %s must be a tensor, got %s", fn, what, describe(x)) end
  return x
end

local function check_same_shape(fn, a, b, an, bn)
  if not mg._same_shape(a, b) then
    raisef("%s: %s has shape %s but %s has shape %s", fn, an, shapestr(a), bn, shapestr(b))
  end
end

-- A weight as a tensor of the dtype 'dtype' (numbers and Lua arrays accepted).
local function as_tensor(fn, what, w, dtype)
  if type(w) == "number" then return mg.tensor(w, { dtype = dtype }) end
  if type(w) == "table" and not is_tensor(w) then return mg.tensor(w, { dtype = dtype }) end
  check_tensor(fn, what, w)
  return w:to(dtype)
end

-- Keras's squeeze_or_expand_to_same_rank on (x1, x2): when the ranks differ by one and the
-- longer one ends in a size-1 dimension, that dimension goes (or a rank-1 partner gains one).
local function same_rank(x1, x2)
  local r1, r2 = x1:dim(), x2:dim()
  if r1 == r2 + 1 and x1:size(-1) == 1 then
    if r2 == 1 then x2 = x2:unsqueeze(-1) else x1 = x1:squeeze(-1) end
  elseif r2 == r1 + 1 and x2:size(-1) == 1 then
    if r1 == 1 then x1 = x1:unsqueeze(-1) else x2 = x2:squeeze(-1) end
  end
  return x1, x2
end

-- 'w' brought to broadcast against 'values' from the left (a (B) weight on (B, T) values
-- weighs every step of sample b), as Keras's weights broadcast after same_rank.
local function align(fn, what, w, values)
  values, w = same_rank(values, w)
  while w:dim() < values:dim() do w = w:unsqueeze(-1) end
  local ok = w:dim() == values:dim()
  for d = 1, w:dim() do
    if not ok then break end
    ok = w:size(d) == 1 or w:size(d) == values:size(d)
  end
  if not ok then
    raisef("%s: %s of shape %s does not fit the per-sample losses of shape %s", fn, what, shapestr(w), shapestr(values))
  end
  return w, values
end

-- Keras's reduce_weighted_values(values, sample_weight, mask, reduction).
local function reduce(fn, values, opts)
  local reduction = opts.reduction or "sum_over_batch_size"
  if not REDUCTIONS[reduction] then raisef("%s: unknown reduction %s", fn, tostring(reduction)) end
  local dtype = values.dtype
  local w
  if opts.sample_weight ~= nil then w = as_tensor(fn, "sample_weight", opts.sample_weight, dtype) end
  if opts.mask ~= nil then
    local m = as_tensor(fn, "mask", opts.mask, dtype)
    local fm
    if reduction == "mean" or reduction == "sum_over_batch_size" then
      local valid = m:sum():item()
      fm = mg.where(mg.ne(m, 0), valid == 0 and 0 or m:numel() / valid, 0):to(dtype)
    else
      fm = m
    end
    if w then
      w, fm = align(fn, "sample_weight", w, fm)
      w = w * fm
    else
      w = fm
    end
  end
  if w then
    w, values = align(fn, opts.mask and "the mask" or "sample_weight", w, values)
    values = values * w
  end
  if reduction == "none" or values:dim() == 0 then return values end
  local total = values:sum()
  if reduction == "sum" then return total end
  local divisor = values:numel()
  if reduction == "mean_with_sample_weight" and w then
    divisor = (w + mg.zeros(values:shape(), { dtype = dtype })):sum():item()
  end
  if divisor == 0 then return total * 0 end
  return total / divisor
end

local COMMON = { "sample_weight", "mask", "reduction" }
local function allowed(...) return checks.names(COMMON, ...) end

-- (pred, target) checked as tensors of the same shape, target in pred's dtype.
local function pair(fn, pred, target, tname)
  check_tensor(fn, "pred", pred)
  if type(target) == "table" and not is_tensor(target) then target = mg.tensor(target, { dtype = pred.dtype }) end
  check_tensor(fn, tname or "target", target)
  check_same_shape(fn, pred, target, "pred", tname or "target")
  if pred:dim() == 0 then raisef("%s: pred must have at least one dimension, got a 0-d tensor", fn) end
  return pred, target:to(pred.dtype)
end

local function label_smoothing(fn, opts)
  local ls = opts.label_smoothing or 0
  if type(ls) ~= "number" or ls ~= ls or ls < 0 or ls > 1 then
    raisef("%s: label_smoothing must be a number in [0, 1], got %s", fn, tostring(ls))
  end
  return ls
end

---------------------------------------------------------------- regression

-- losses.mse(pred, target [, opts]): mean over the last axis of (pred - target)^2, reduced.
function losses.mse(pred, target, opts)
  opts = check_opts("mse", opts, allowed())
  pred, target = pair("mse", pred, target)
  local d = pred - target
  return reduce("mse", (d * d):mean(-1), opts)
end

-- losses.mae(pred, target [, opts]): mean over the last axis of |pred - target|, reduced.
function losses.mae(pred, target, opts)
  opts = check_opts("mae", opts, allowed())
  pred, target = pair("mae", pred, target)
  return reduce("mae", (pred - target):abs():mean(-1), opts)
end

-- losses.huber(pred, target [, {delta=1}]): 0.5 e^2 where |e| <= delta, else
-- delta |e| - 0.5 delta^2 (e = pred - target), mean over the last axis, reduced.
function losses.huber(pred, target, opts)
  opts = check_opts("huber", opts, allowed("delta"))
  pred, target = pair("huber", pred, target)
  local delta = opts.delta or 1
  if type(delta) ~= "number" or delta ~= delta or delta <= 0 then
    raisef("huber: delta must be a number > 0, got %s", tostring(delta))
  end
  local e = pred - target
  local a = e:abs()
  local v = mg.where(mg.le(a, delta), e * e * 0.5, a * delta - 0.5 * delta * delta)
  return reduce("huber", v:mean(-1), opts)
end

---------------------------------------------------------------- classification

-- losses.binary_crossentropy(pred, target [, {from_logits=false, label_smoothing=0}]): Keras's
-- -(t log p + (1 - t) log(1 - p)) with p clipped to [1e-7, 1 - 1e-7], or from logits
-- softplus(x) - t x; mean over the last axis, reduced.
function losses.binary_crossentropy(pred, target, opts)
  local fn = "binary_crossentropy"
  opts = check_opts(fn, opts, allowed("from_logits", "label_smoothing"))
  pred, target = pair(fn, pred, target)
  local ls = label_smoothing(fn, opts)
  if ls > 0 then target = target * (1 - ls) + 0.5 * ls end
  local v
  if opts.from_logits then
    v = mg.softplus(pred) - target * pred
  else
    local p = mg.clamp(pred, EPS, 1 - EPS)
    v = -(target * mg.log(p) + (1 - target) * mg.log(1 - p))
  end
  return reduce(fn, v:mean(-1), opts)
end

-- log-probabilities of 'pred' over its last axis, as Keras: log_softmax for logits, else the
-- rows renormalized to sum to 1 and clipped to [1e-7, 1 - 1e-7].
local function log_probs(pred, from_logits)
  if from_logits then return mg.log_softmax(pred, -1) end
  local p = pred / pred:sum(-1, true)
  return mg.log(mg.clamp(p, EPS, 1 - EPS))
end

-- losses.categorical_crossentropy(pred, target [, {from_logits=false, label_smoothing=0}]):
-- -sum over classes of target * log p (target one-hot or probability rows), reduced.
function losses.categorical_crossentropy(pred, target, opts)
  local fn = "categorical_crossentropy"
  opts = check_opts(fn, opts, allowed("from_logits", "label_smoothing"))
  pred, target = pair(fn, pred, target)
  local ls = label_smoothing(fn, opts)
  if ls > 0 then target = target * (1 - ls) + ls / pred:size(-1) end
  return reduce(fn, -(target * log_probs(pred, opts.from_logits)):sum(-1), opts)
end

-- losses.sparse_categorical_crossentropy(pred, labels [, {from_logits=false}]): as
-- categorical_crossentropy with 'labels' the 1-based class ids (a tensor or a Lua array of
-- the shape of pred without its last dimension).
function losses.sparse_categorical_crossentropy(pred, labels, opts)
  local fn = "sparse_categorical_crossentropy"
  opts = check_opts(fn, opts, allowed("from_logits"))
  check_tensor(fn, "pred", pred)
  if pred:dim() < 1 then raise(fn .. ": pred must have a class dimension, got a 0-d tensor") end
  if type(labels) == "table" and not is_tensor(labels) then labels = mg.tensor(labels, { dtype = "float64" }) end
  check_tensor(fn, "labels", labels)
  local C, lshape = pred:size(-1), pred:shape()
  lshape[#lshape] = nil
  local want = shapestr(mg.zeros(lshape))
  if shapestr(labels) ~= want then
    raisef("%s: labels have shape %s, expected class ids of shape %s", fn, shapestr(labels), want)
  end
  -- one tensor comparison (a label equals its floor clamped to 1..C; NaN equals nothing), and
  -- only when it fails the search for the first bad label, for the message
  local flat = labels:contiguous():reshape(-1)
  if mg.eq(flat, mg.clamp(mg.floor(flat), 1, C)):sum():item() ~= flat:numel() then
    for i = 1, flat:numel() do
      local v = flat:get(i)
      if v ~= math.floor(v) or v < 1 or v > C then
        raisef("%s: label %g at position %d is not a class id in 1..%d", fn, v, i, C)
      end
    end
  end
  -- -log p[label]: the labels' entries of the log-probabilities (what the one-hot product
  -- summed over the classes gives, without the (..., C) one-hot tensor); from logits the
  -- fused mg.softmax_cross_entropy (the same numbers, the gradient in one pass)
  if opts.from_logits then return reduce(fn, mg.softmax_cross_entropy(pred, labels), opts) end
  local picked = mg.take_along_dim(log_probs(pred, false), labels:unsqueeze(-1), -1):squeeze(-1)
  return reduce(fn, -picked, opts)
end

---------------------------------------------------------------- publishing

checks.publish(losses)   -- errors point at the user's line (checks.api)

-- Keras's long names: the same (published) functions.
losses.mean_squared_error = losses.mse
losses.mean_absolute_error = losses.mae

return losses
