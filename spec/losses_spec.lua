-- mg.nn's Keras losses (bindings/moongrad/losses.lua): values and gradients with respect to
-- pred against Keras 3 (keras.losses.<fn> reduced by Keras's reduce_weighted_values, float32,
-- through spec/keras_train_ref.py), against PyTorch 1.13 (float64) where it has the same loss,
-- by finite differences, and the Keras semantics of sample weights and masks by hand.
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local F64, assert_error = support.F64, support.assert_error

local function round_all(t)
  local v = t:totable()
  local function r(x)
    if type(x) == "table" then
      local o = {}
      for i, y in ipairs(x) do o[i] = r(y) end
      return o
    end
    return math.floor(x + 0.5)
  end
  return r(v)
end

-- The data of one case: pred, target and optional sample weights and mask, saved in 'dir'.
local function data(dir, name, c)
  mg.manual_seed(#name * 13 + (c.seed or 0))
  local shape = c.shape or { 4, 3 }
  local pred
  if c.probs then
    pred = mg.softmax(mg.randn(shape, F64), -1)
  elseif c.sigmoid then
    pred = mg.sigmoid(mg.randn(shape, F64) * 2)
  else
    pred = mg.randn(shape, F64) * (c.scale or 1)
  end
  local target
  if c.sparse then
    local C = shape[#shape]
    target = (mg.rand({ table.unpack(shape, 1, #shape - 1) }, F64) * C - 0.5):clamp(0, C - 1)
    target = mg.tensor(round_all(target), F64)
  elseif c.onehot_soft then
    target = mg.softmax(mg.randn(shape, F64) * 2, -1)
  elseif c.binary then
    target = mg.gt(mg.rand(shape, F64), 0.5):to("float64")
  else
    target = mg.randn(shape, F64)
  end
  mg.save(pred, dir .. "/" .. name .. "_pred.npy")
  -- Keras gets 0-based class ids
  mg.save(target, dir .. "/" .. name .. "_target.npy")
  local sw, mask
  if c.sw then
    sw = mg.rand(c.sw, F64) + 0.5
    mg.save(sw, dir .. "/" .. name .. "_sw.npy")
  end
  if c.mask then
    mask = mg.tensor(c.mask, F64)
    mg.save(mask, dir .. "/" .. name .. "_mask.npy")
  end
  if c.sparse then target = target + 1 end              -- ours are 1-based
  return pred, target, sw, mask
end


-- Our loss and its gradient with respect to pred, in 'dtype'.
local function ours(fn, pred, target, opts, dtype)
  local p = mg.Variable(pred:to(dtype), "pred")
  local tape <close> = mg.GradientTape()
  local l = tape:record(function() return nn[fn](p, target:to(dtype), opts) end)
  return l:item(), tape:gradient(l, { p })[1]
end

local MASK_BT = { { 1, 1, 1, 0, 0 }, { 1, 1, 1, 1, 1 }, { 1, 0, 0, 0, 0 } }

-- name, our function, Keras function and options, data options, our options (besides weights)
local CASES = {
  { "mse", "mse", "mean_squared_error", {}, {} },
  { "mse_sw", "mse", "mean_squared_error", {}, { sw = { 4 } } },
  { "mse_mask", "mse", "mean_squared_error", {}, { shape = { 3, 5, 2 }, mask = MASK_BT } },
  { "mse_both", "mse", "mean_squared_error", {}, { shape = { 3, 5, 2 }, mask = MASK_BT, sw = { 3, 5 } } },
  { "mae", "mae", "mean_absolute_error", {}, { sw = { 4 } } },
  { "huber", "huber", "huber", {}, { scale = 2 } },
  { "huber_d", "huber", "huber", { delta = 0.7 }, { scale = 2, sw = { 4, 1 } } },
  { "bce", "binary_crossentropy", "binary_crossentropy", {}, { sigmoid = true, binary = true } },
  { "bce_soft", "binary_crossentropy", "binary_crossentropy", {}, { sigmoid = true, seed = 1 } },
  { "bce_logit", "binary_crossentropy", "binary_crossentropy", { from_logits = true },
    { scale = 3, binary = true, sw = { 4 } } },
  { "bce_ls", "binary_crossentropy", "binary_crossentropy", { label_smoothing = 0.2 }, { sigmoid = true, binary = true } },
  { "cce", "categorical_crossentropy", "categorical_crossentropy", {}, { probs = true, onehot_soft = true } },
  { "cce_logit", "categorical_crossentropy", "categorical_crossentropy", { from_logits = true },
    { scale = 2, onehot_soft = true, sw = { 4 } } },
  { "cce_ls", "categorical_crossentropy", "categorical_crossentropy", { label_smoothing = 0.1, from_logits = true },
    { scale = 2, onehot_soft = true } },
  { "scce", "sparse_categorical_crossentropy", "sparse_categorical_crossentropy", {},
    { probs = true, sparse = true, shape = { 6, 4 } } },
  { "scce_logit", "sparse_categorical_crossentropy", "sparse_categorical_crossentropy", { from_logits = true },
    { scale = 2, sparse = true, shape = { 6, 4 }, sw = { 6 } } },
  { "scce_seq", "sparse_categorical_crossentropy", "sparse_categorical_crossentropy", { from_logits = true },
    { scale = 2, sparse = true, shape = { 3, 5, 4 }, mask = MASK_BT } },
  { "scce_seqw", "sparse_categorical_crossentropy", "sparse_categorical_crossentropy", { from_logits = true },
    { scale = 2, sparse = true, shape = { 3, 5, 4 }, mask = MASK_BT, sw = { 3, 5 } } },
}

describe("losses against Keras 3 (float32: value and gradient)", function()
  local got = {}
  local dir = support.reference_run(lazy_setup, lazy_teardown, "keras", function(dir)
    local list = {}
    for _, c in ipairs(CASES) do
      local pred, target, sw, mask = data(dir, c[1], c[5])
      local opts = {}
      for k, v in pairs(c[4]) do opts[k] = v end
      opts.sample_weight, opts.mask = sw and sw:to("float32"), mask and mask:to("float32")
      local l, g = ours(c[2], pred, target, opts, "float32")
      got[c[1]] = { l, g }
      list[#list + 1] = { c[1], { kind = "loss", fn = c[3], kw = c[4], sparse = c[5].sparse or false,
        sw = sw ~= nil, mask = mask ~= nil } }
    end
    return list
  end)
  for _, c in ipairs(CASES) do
    it(c[1], function()
      local want, wgrad = support.ref_out(dir, c[1] .. "_loss"):item(), support.ref_out(dir, c[1] .. "_grad")
      local l, g = got[c[1]][1], got[c[1]][2]
      assert(math.abs(l - want) <= 2e-6 * math.max(1, math.abs(want)),
        string.format("%s: %.9g, Keras %.9g", c[1], l, want))
      local scale = math.max(wgrad:abs():max():item(), 1e-3)
      local d = (g:to("float64") - wgrad):abs():max():item()
      assert(d <= 2e-6 * scale, string.format("%s: gradient differs by %g (scale %g)", c[1], d, scale))
    end)
  end
end)

describe("losses against PyTorch 1.13 (float64: value and gradient)", function()
  if not support.python_can_import("torch, numpy") then
    pending("needs /usr/bin/python3 with torch and numpy")
    return
  end
  -- name, ours, our options, torch expression of p, t (and w), data options
  local T = {
    { "t_mse", "mse", {}, "F.mse_loss(p, t)", {} },
    { "t_mae", "mae", {}, "F.l1_loss(p, t)", {} },
    { "t_huber", "huber", { delta = 0.7 }, "F.huber_loss(p, t, delta=0.7)", { scale = 2 } },
    { "t_bce", "binary_crossentropy", {}, "F.binary_cross_entropy(p, t)", { sigmoid = true, seed = 2 } },
    { "t_bcel", "binary_crossentropy", { from_logits = true }, "F.binary_cross_entropy_with_logits(p, t)",
      { scale = 3, binary = true } },
    { "t_cce", "categorical_crossentropy", { from_logits = true }, "F.cross_entropy(p, t)",
      { scale = 2, onehot_soft = true } },
    { "t_cce_ls", "categorical_crossentropy", { from_logits = true, label_smoothing = 0.1 },
      "F.cross_entropy(p, t, label_smoothing=0.1)", { scale = 2, onehot_soft = true } },
    { "t_scce", "sparse_categorical_crossentropy", { from_logits = true }, "F.cross_entropy(p, t)",
      { scale = 2, sparse = true, shape = { 6, 4 } } },
    { "t_scce_p", "sparse_categorical_crossentropy", {}, "F.nll_loss(torch.log(p / p.sum(-1, keepdim=True)), t)",
      { probs = true, sparse = true, shape = { 6, 4 } } },
    { "t_scce_w", "sparse_categorical_crossentropy", { from_logits = true, sample_weight = true },
      "(F.cross_entropy(p, t, reduction='none') * w).mean()", { scale = 2, sparse = true, shape = { 6, 4 }, sw = { 6 } } },
  }
  local got = {}
  local dir = support.reference_run(lazy_setup, lazy_teardown, "torch", function(dir)
    local list = {}
    for _, c in ipairs(T) do
      local pred, target, sw = data(dir, c[1], c[5])
      local opts = {}
      for k, v in pairs(c[3]) do opts[k] = v end
      if opts.sample_weight then opts.sample_weight = sw end
      got[c[1]] = { ours(c[2], pred, target, opts, "float64") }
      list[#list + 1] = { c[1], { kind = "loss", expr = c[4], sparse = c[5].sparse or false, sw = sw ~= nil } }
    end
    return list
  end)
  for _, c in ipairs(T) do
    it(c[1] .. ": " .. c[4], function()
      local want, wgrad = support.ref_out(dir, c[1] .. "_loss"):item(), support.ref_out(dir, c[1] .. "_grad")
      assert.is_near(want, got[c[1]][1], 1e-12)
      assert.is_true((got[c[1]][2] - wgrad):abs():max():item() < 1e-12)
    end)
  end
end)

describe("loss semantics", function()
  it("a mask weighs the valid steps total / valid: the mean over valid steps", function()
    mg.manual_seed(3)
    local p, t = mg.randn({ 2, 3, 2 }, F64), mg.randn({ 2, 3, 2 }, F64)
    local m = mg.tensor({ { 1, 0, 0 }, { 1, 1, 0 } }, F64)
    local per = ((p - t) ^ 2):mean(-1)                  -- (2, 3)
    local want = (per:get(1, 1) + per:get(2, 1) + per:get(2, 2)) / 3
    assert.is_near(want, nn.mse(p, t, { mask = m }):item(), 1e-14)
    -- sample weights multiply in and divide by the number of per-sample values
    local w = mg.tensor({ 2, 0.5 }, F64)
    local ws = (per:get(1, 1) * 2 + per:get(1, 2) * 2 + per:get(1, 3) * 2 + (per:get(2, 1) + per:get(2, 2) +
      per:get(2, 3)) * 0.5) / 6
    assert.is_near(ws, nn.mse(p, t, { sample_weight = w }):item(), 1e-14)
    assert.is_near(ws * 6, nn.mse(p, t, { sample_weight = w, reduction = "sum" }):item(), 1e-13)
    assert.is_near(ws * 6 / 7.5, nn.mse(p, t, { sample_weight = w, reduction = "mean_with_sample_weight" }):item(), 1e-13)
    assert.are.same({ 2, 3 }, nn.mse(p, t, { reduction = "none" }):shape())
    -- an all-zero mask gives 0, not NaN
    assert.are.equal(0, nn.mse(p, t, { mask = mg.zeros({ 2, 3 }, F64) }):item())
  end)
  it("without options the old nn.mse (the mean over every element) is unchanged", function()
    mg.manual_seed(4)
    local p, t = mg.randn({ 3, 4 }, F64), mg.randn({ 3, 4 }, F64)
    assert.is_near(((p - t) ^ 2):mean():item(), nn.mse(p, t):item(), 1e-15)
    assert.are.equal(nn.mse, nn.mean_squared_error)
  end)
  it("sparse ids agree with one-hot rows; gradients pass finite differences", function()
    mg.manual_seed(6)
    local logits = mg.randn({ 5, 3 }, F64)
    local ids = { 1, 3, 2, 2, 1 }
    local onehot = mg.eq(mg.tensor(ids, F64):unsqueeze(-1), mg.arange(1, 4, F64)):to("float64")
    assert.is_near(nn.categorical_crossentropy(logits, onehot, { from_logits = true }):item(),
      nn.sparse_categorical_crossentropy(logits, ids, { from_logits = true }):item(), 1e-14)
    local w = mg.tensor({ 1, 2, 0, 1, 3 }, F64)
    for _, f in ipairs {
      function(x) return nn.sparse_categorical_crossentropy(x, ids, { from_logits = true, sample_weight = w }) end,
      function(x) return nn.huber(x, onehot, { delta = 0.3 }) end,
      function(x) return nn.binary_crossentropy(x, onehot, { from_logits = true, label_smoothing = 0.1 }) end,
      function(x) return nn.categorical_crossentropy(mg.softmax(x, -1), onehot) end,
      function(x) return nn.mae(x, onehot, { mask = mg.tensor({ 1, 0, 1, 1, 0 }, F64) }) end,
    } do
      assert.is_true(mg.gradcheck(f, { logits }))
    end
  end)
  it("reports bad arguments", function()
    local p = mg.zeros(2, 3)
    assert_error("mse: pred has shape (2,3) but target has shape (3,2)", nn.mse, p, mg.zeros(3, 2))
    assert_error("huber: delta must be a number > 0, got 0", nn.huber, p, p, { delta = 0 })
    assert_error("mae: unknown reduction avg", nn.mae, p, p, { reduction = "avg" })
    assert_error("mse: sample_weight of shape (3) does not fit the per-sample losses of shape (2)", nn.mse, p, p,
      { sample_weight = mg.ones(3) })
    assert_error("sparse_categorical_crossentropy: label 4 at position 2 is not a class id in 1..3",
      nn.sparse_categorical_crossentropy, p, { 1, 4 })
    assert_error("label 0 at position 1 is not a class id", nn.sparse_categorical_crossentropy, p, { 0, 1 })
    assert_error("label 1.5 at position 2 is not a class id", nn.sparse_categorical_crossentropy, p, { 1, 1.5 })
    assert_error("at position 2 is not a class id in 1..3", nn.sparse_categorical_crossentropy, p, { 1, 0 / 0 })
    assert_error("sparse_categorical_crossentropy: labels have shape (3), expected class ids of shape (2)",
      nn.sparse_categorical_crossentropy, p, { 1, 2, 3 })
    assert_error("binary_crossentropy: label_smoothing must be a number in [0, 1], got 2", nn.binary_crossentropy, p,
      p, { label_smoothing = 2 })
    assert_error("categorical_crossentropy: unknown option 'axis'", nn.categorical_crossentropy, p, p, { axis = 1 })
  end)
end)

describe("mg.softmax_cross_entropy (runtime/losses.c, what the from_logits loss runs on)", function()
  local function by_ops(x, labels)
    return -mg.take_along_dim(mg.log_softmax(x, -1), labels:unsqueeze(-1), -1):squeeze(-1)
  end
  it("is -log_softmax at the label, bit for bit, in both dtypes, strided logits and float64 labels", function()
    for _, dtype in ipairs { "float32", "float64" } do
      mg.manual_seed(5)
      local x = mg.randn({ 6, 3, 9 }, { dtype = dtype }) * 4
      local labels = (mg.rand({ 6, 3 }, F64) * 8.99):floor() + 1
      assert.are.equal(0, (mg.softmax_cross_entropy(x, labels) - by_ops(x, labels)):abs():max():item())
      local xt = x:transpose(1, 2)                       -- (3, 6, 9), not contiguous
      local lt = labels:transpose(1, 2)
      assert.are.equal(0, (mg.softmax_cross_entropy(xt, lt) - by_ops(xt, lt)):abs():max():item())
      assert.are.equal(dtype, mg.softmax_cross_entropy(x, labels).dtype)
    end
    local big = mg.tensor({ { 1000, 0, -1000 } }, F64)   -- shifted by the maximum: finite
    assert.are.same({ 1000 }, mg.softmax_cross_entropy(big, mg.tensor({ 2 })):totable())
  end)
  it("has the finite-difference gradient, first and second order; labels get none", function()
    local labels = mg.tensor({ { 2, 1, 4 }, { 4, 4, 3 } })
    assert.is_true(mg.gradcheck(function(x) return mg.softmax_cross_entropy(x, labels) end,
      { mg.randn({ 2, 3, 4 }, F64) }))
    assert.is_true(mg.gradcheck(mg.grad(function(x) return (mg.softmax_cross_entropy(x, labels) ^ 2):sum() end),
      { mg.randn({ 2, 3, 4 }, F64) }))
    local x, l = mg.Variable(mg.randn({ 2, 3 }, F64)), mg.Variable(mg.tensor({ 1, 3 }, F64))
    local tape <close> = mg.GradientTape()
    local g = tape:gradient(mg.softmax_cross_entropy(x, l):sum(), { x, l })
    local p = mg.softmax(x, -1):totable()
    support.near({ { p[1][1] - 1, p[1][2], p[1][3] }, { p[2][1], p[2][2], p[2][3] - 1 } }, g[1]:totable(), 1e-15)
    assert.is_nil(g[2])
  end)
  it("rejects labels that are not class ids, and shapes that do not fit", function()
    local x = mg.zeros(2, 3)
    assert_error("softmax_cross_entropy: label 4 at position 2 is not a class id in 1..3", mg.softmax_cross_entropy,
      x, mg.tensor({ 1, 4 }))
    assert_error("label 0 at position 1", mg.softmax_cross_entropy, x, mg.tensor({ 0, 1 }))
    assert_error("label 1.5 at position 1", mg.softmax_cross_entropy, x, mg.tensor({ 1.5, 1 }))
    assert_error("at position 2 is not a class id", mg.softmax_cross_entropy, x, mg.tensor({ 1, 0 / 0 }))
    assert_error("softmax_cross_entropy: labels of shape (3) do not fit logits of shape (2,3)",
      mg.softmax_cross_entropy, x, mg.tensor({ 1, 2, 3 }))
    assert_error("softmax_cross_entropy: logits must have a class dimension of size >= 1, got shape (2,0)",
      mg.softmax_cross_entropy, mg.zeros(2, 0), mg.tensor({ 1, 1 }))
    assert_error("logits must have a class dimension", mg.softmax_cross_entropy, mg.tensor(1), mg.tensor(1))
  end)
end)
