-- mg.optim: SGD (plain, momentum, Nesterov) and Adam (Keras and PyTorch variants) against
-- their update rules computed by hand in plain Lua, the bookkeeping (nil gradients, layers as
-- params, nothing changes on a bad call), and an LSTM learning a toy memory task.
local mg = require "moongrad"
local support = require "support"
local nn, optim = mg.nn, mg.optim

local F64, assert_error = support.F64, support.assert_error

-- The values of the 1-d tensor 't', each within 'tol' of 'want'.
local function near_list(want, t, tol) support.near(want, t:totable(), tol) end

-- Three steps of gradients for a 3-element parameter, and the start value.
local P0 = { 0.5, -1.0, 2.0 }
local GS = { { 0.1, -0.2, 0.3 }, { -0.4, 0.5, 0.05 }, { 0.2, 0.2, -0.6 } }

local function run(make, steps)
  local p = mg.Variable(mg.tensor(P0, F64), "p")
  local opt = make({ p })
  for s = 1, steps do opt:step({ mg.tensor(GS[s], F64) }) end
  return p, opt
end

-- The same rule on plain Lua numbers: rule(state, i, p, g, t) -> new p.
local function by_hand(rule, steps)
  local p, state = { table.unpack(P0) }, {}
  for t = 1, steps do
    for i = 1, 3 do p[i] = rule(state, i, p[i], GS[t][i], t) end
  end
  return p
end

describe("SGD", function()
  it("plain: p -= lr g", function()
    local p, opt = run(function(ps) return optim.SGD(ps, { lr = 0.1 }) end, 3)
    near_list(by_hand(function(_, _, v, g) return v - 0.1 * g end, 3), p, 1e-15)
    assert.are.equal(3, opt.iterations)
  end)
  it("momentum (Keras: v = m v - lr g; p += v)", function()
    local p = run(function(ps) return optim.SGD(ps, { lr = 0.1, momentum = 0.9 }) end, 3)
    near_list(by_hand(function(st, i, v, g)
      st[i] = 0.9 * (st[i] or 0) - 0.1 * g
      return v + st[i]
    end, 3), p, 1e-15)
  end)
  it("nesterov: p += m v - lr g", function()
    local p = run(function(ps) return optim.SGD(ps, { lr = 0.05, momentum = 0.8, nesterov = true }) end, 3)
    near_list(by_hand(function(st, i, v, g)
      st[i] = 0.8 * (st[i] or 0) - 0.05 * g
      return v + 0.8 * st[i] - 0.05 * g
    end, 3), p, 1e-15)
  end)
  it("defaults to Keras's lr = 0.01", function()
    local p = run(function(ps) return optim.SGD(ps) end, 1)
    near_list(by_hand(function(_, _, v, g) return v - 0.01 * g end, 1), p, 1e-15)
  end)
end)

describe("Adam", function()
  local function adam_rule(lr, b1, b2, eps, variant)
    return function(st, i, v, g, t)
      local s = st[i] or { m = 0, v = 0 }
      st[i] = s
      s.m = b1 * s.m + (1 - b1) * g
      s.v = b2 * s.v + (1 - b2) * g * g
      if variant == "keras" then
        return v - lr * math.sqrt(1 - b2 ^ t) / (1 - b1 ^ t) * s.m / (math.sqrt(s.v) + eps)
      end
      return v - lr * (s.m / (1 - b1 ^ t)) / (math.sqrt(s.v / (1 - b2 ^ t)) + eps)
    end
  end
  it("Keras defaults: lr 1e-3, betas 0.9/0.999, eps 1e-7, bias correction", function()
    local p, opt = run(function(ps) return optim.Adam(ps) end, 3)
    assert.are.equal(1e-7, opt.eps)
    near_list(by_hand(adam_rule(1e-3, 0.9, 0.999, 1e-7, "keras"), 3), p, 1e-15)
    -- the first step moves every element by about lr (bias correction)
    local p1 = run(function(ps) return optim.Adam(ps) end, 1)
    for i = 1, 3 do assert.is_near(1e-3, math.abs(p1:get(i) - P0[i]), 1e-7) end   -- eps: ~3e-8
  end)
  it("PyTorch variant: eps 1e-8 added to the corrected sqrt(v)", function()
    local p, opt = run(function(ps) return optim.Adam(ps, { variant = "pytorch" }) end, 3)
    assert.are.equal(1e-8, opt.eps)
    near_list(by_hand(adam_rule(1e-3, 0.9, 0.999, 1e-8, "pytorch"), 3), p, 1e-15)
  end)
  it("custom hyper-parameters; a large eps shows where each variant adds it", function()
    local o = { lr = 0.05, beta1 = 0.8, beta2 = 0.99, eps = 0.1 }
    local pk = run(function(ps) return optim.Adam(ps, o) end, 3)
    near_list(by_hand(adam_rule(0.05, 0.8, 0.99, 0.1, "keras"), 3), pk, 1e-15)
    local po = { lr = 0.05, beta1 = 0.8, beta2 = 0.99, eps = 0.1, variant = "pytorch" }
    local pp = run(function(ps) return optim.Adam(ps, po) end, 3)
    near_list(by_hand(adam_rule(0.05, 0.8, 0.99, 0.1, "pytorch"), 3), pp, 1e-15)
    assert.is_true((pk - pp):abs():max():item() > 1e-4)
  end)
end)

-- Two copies of one Variable, each stepped 3 times by its optimizer make({v}): 'a' with a
-- transposed (non-contiguous) gradient, 'b' with a contiguous copy of it. Returns a, b, a's
-- optimizer, the gradient (untransposed) and the starting value.
local function transposed_steps(make)
  mg.manual_seed(4)
  local p0, g = mg.randn(4, 6), mg.randn(6, 4)
  local a, b = mg.Variable(p0:clone(), "a"), mg.Variable(p0:clone(), "b")
  local oa, ob = make({ a }), make({ b })
  assert.is_false(g:transpose(1, 2):is_contiguous())
  for _ = 1, 3 do oa:step({ g:transpose(1, 2) }) ob:step({ g:transpose(1, 2):contiguous() }) end
  return a, b, oa, g, p0
end

describe("RMSprop's fused step", function()
  -- The step runs in one pass (mg._rmsprop_update) for contiguous operands; it must give the
  -- very numbers of Keras's formula written with tensor ops, bit for bit, in both dtypes,
  -- with the global-norm clip scaling the gradients first (and leaving them when it is 1).
  for _, dtype in ipairs { "float32", "float64" } do
    it("equals the element-wise ops exactly (" .. dtype .. ", with and without clipping)", function()
      for _, clip in ipairs { 0.5, 1e6 } do
        mg.manual_seed(3)
        local p0, grads = mg.randn({ 7, 5 }, { dtype = dtype }), {}
        for s = 1, 4 do grads[s] = mg.randn({ 7, 5 }, { dtype = dtype }) * s end
        local p = mg.Variable(p0:clone(), "p")
        local opt = optim.RMSprop({ p }, { lr = 0.01, rho = 0.8, eps = 1e-3, global_clipnorm = clip })
        local q, v = p0:clone(), mg.zeros({ 7, 5 }, { dtype = dtype })
        for s = 1, 4 do
          local g0 = grads[s]:clone()
          opt:step({ grads[s] })
          assert.are.equal(0, (grads[s] - g0):abs():max():item())       -- the gradient is not written
          local norm = math.sqrt((g0 * g0):sum():item())
          local g = g0 * (clip * math.min(1 / norm, 1 / clip))
          v = v * 0.8 + (g * g) * (1 - 0.8)
          q = q - (g * 0.01) / mg.sqrt(v + 1e-3)
          assert.are.equal(0, (p - q):abs():max():item())
          assert.are.equal(0, (opt:state()["velocity.1"] - v):abs():max():item())
        end
      end
    end)
  end
  it("the clip's sum of squares in one pass (mg._sumsq): (g * g):sum() up to float32 rounding", function()
    mg.manual_seed(5)
    for _, n in ipairs { 1, 7, 8, 9, 1001, 40000 } do
      local g32, g64 = mg.randn(n), mg.randn(n, { dtype = "float64" })
      local want32 = (g32 * g32):sum():item()
      assert.is_true(math.abs(mg._sumsq(g32) - want32) <= 2 * 2^-24 * want32)
      assert.are.equal((g64 * g64):sum():item(), mg._sumsq(g64))        -- float64: the same order
    end
    local t = mg.randn(6, 4):transpose(1, 2)
    assert.has_error(function() mg._sumsq(t) end, "_sumsq: expected a contiguous float32 or float64 tensor, got float32 (4,6)")
    -- clipped steps on a non-contiguous gradient (the composed path) scale it as the fused one
    local p0 = mg.randn(4, 6)
    local a, b = mg.Variable(p0:clone(), "a"), mg.Variable(p0:clone(), "b")
    local oa = optim.RMSprop({ a }, { lr = 0.1, global_clipnorm = 0.5 })
    local ob = optim.RMSprop({ b }, { lr = 0.1, global_clipnorm = 0.5 })
    for _ = 1, 3 do oa:step({ t }) ob:step({ t:contiguous() }) end
    assert.are.equal(0, (a - b):abs():max():item())
    assert.is_true((a - p0):abs():max():item() > 0)
  end)
  it("a non-contiguous gradient takes the element-wise path, with the same numbers", function()
    local a, b = transposed_steps(function(ps) return optim.RMSprop(ps, { lr = 0.1 }) end)
    assert.are.equal(0, (a - b):abs():max():item())
  end)
end)

describe("Adam's fused step", function()
  -- For contiguous operands the step runs in one pass (mg._adam_update, shared over the
  -- threads); it must give the very numbers of Adam:update's element-wise formula, bit for
  -- bit, in both dtypes and variants, on 1 and 2 threads (700 x 300: loops split in pieces).
  local saved
  before_each(function() saved = mg.get_num_threads() end)
  after_each(function() mg.set_num_threads(saved) end)
  -- One step t of Adam:update's element-wise formula on q, m, v with the gradient g.
  local function by_ops(q, m, v, g, t, variant, lr, b1, b2, eps)
    local c1, c2 = 1 - b1 ^ t, 1 - b2 ^ t
    m = m + (g - m) * (1 - b1)
    v = v + (g * g - v) * (1 - b2)
    if variant == "keras" then
      q = q - (m * (lr * math.sqrt(c2) / c1)) / (mg.sqrt(v) + eps)
    else
      q = q - (m * (lr / c1)) / (mg.sqrt(v * (1 / c2)) + eps)
    end
    return q, m, v
  end
  for _, dtype in ipairs { "float32", "float64" } do
    for _, variant in ipairs { "keras", "pytorch" } do
      it(("equals the element-wise ops exactly (%s, %s)"):format(dtype, variant), function()
        for _, nt in ipairs { 1, 2 } do
          mg.set_num_threads(nt)
          mg.manual_seed(5)
          local p0, grads = mg.randn({ 700, 300 }, { dtype = dtype }), {}
          for s = 1, 3 do grads[s] = mg.randn({ 700, 300 }, { dtype = dtype }) * s end
          local p = mg.Variable(p0:clone(), "p")
          local lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-3
          local opt = optim.Adam({ p }, { lr = lr, beta1 = b1, beta2 = b2, eps = eps, variant = variant })
          local fused, calls = mg._adam_update, 0
          mg._adam_update = function(...) calls = calls + 1 return fused(...) end
          local q, m, v = p0:clone(), mg.zeros({ 700, 300 }, { dtype = dtype }), mg.zeros({ 700, 300 }, { dtype = dtype })
          for t = 1, 3 do
            opt:step({ grads[t] })
            q, m, v = by_ops(q, m, v, grads[t], t, variant, lr, b1, b2, eps)
            assert.are.equal(support.bits(q), support.bits(p))
            assert.are.equal(support.bits(m), support.bits(opt:state()["momentum.1"]))
            assert.are.equal(support.bits(v), support.bits(opt:state()["velocity.1"]))
          end
          mg._adam_update = fused
          assert.are.equal(3, calls)                                   -- the fused path ran
        end
      end)
    end
  end
  -- The step runs in one pass (mg._adam_update) for contiguous operands of one dtype, without
  -- amsgrad; it must give the very numbers of the formula written with tensor ops (the
  -- element-wise path of Adam:update), bit for bit, in both dtypes and variants, after the
  -- global-norm clip and AdamW's weight decay.
  for _, dtype in ipairs { "float32", "float64" } do
    for _, variant in ipairs { "keras", "pytorch" } do
      it("equals the element-wise ops exactly (" .. dtype .. ", " .. variant .. ", clipping, AdamW)", function()
        for _, o in ipairs { { global_clipnorm = 0.5 }, { global_clipnorm = 1e6 }, { weight_decay = 0.1, w = true } } do
          mg.manual_seed(6)
          local p0, grads = mg.randn({ 7, 5 }, { dtype = dtype }), {}
          for s = 1, 4 do grads[s] = mg.randn({ 7, 5 }, { dtype = dtype }) * s end
          local p = mg.Variable(p0:clone(), "p")
          local opts = { lr = 0.01, beta1 = 0.8, beta2 = 0.95, eps = 1e-3, variant = variant,
                         global_clipnorm = o.global_clipnorm, weight_decay = o.weight_decay }
          local opt = (o.w and optim.AdamW or optim.Adam)({ p }, opts)
          local q, m, v = p0:clone(), mg.zeros({ 7, 5 }, { dtype = dtype }), mg.zeros({ 7, 5 }, { dtype = dtype })
          for s = 1, 4 do
            local g = grads[s]:clone()
            opt:step({ grads[s] })
            assert.are.equal(0, (grads[s] - g):abs():max():item())       -- the gradient is not written
            if o.global_clipnorm then
              local norm = math.sqrt((g * g):sum():item())
              local sc = o.global_clipnorm * math.min(1 / norm, 1 / o.global_clipnorm) + (norm - norm)
              if sc ~= 1 then g = g * sc end
            end
            if o.w then q = q - q * (0.1 * 0.01) end
            q, m, v = by_ops(q, m, v, g, s, variant, 0.01, 0.8, 0.95, 1e-3)
            assert.are.equal(support.bits(q), support.bits(p), "step " .. s)
            assert.are.equal(support.bits(m), support.bits(opt:state()["momentum.1"]), "momentum " .. s)
            assert.are.equal(support.bits(v), support.bits(opt:state()["velocity.1"]), "velocity " .. s)
          end
        end
      end)
    end
  end
  it("non-contiguous operands and amsgrad take the element-wise path, with the same numbers", function()
    local a, b, oa, g, p0 = transposed_steps(function(ps) return optim.Adam(ps, { lr = 0.1 }) end)
    assert.are.equal(support.bits(a), support.bits(b))
    assert.is_false(mg._adam_update(a, oa.slots.momentum[1], oa.slots.velocity[1], g:transpose(1, 2), 0.1,
                                    0.9, 0.999, 1e-7, 4, false))
    assert.are.equal(support.bits(b), support.bits(a))                     -- nothing written
    local c, d = mg.Variable(p0:clone(), "c"), mg.Variable(p0:clone(), "d")
    local oc, od = optim.Adam({ c }, { lr = 0.1, amsgrad = true }), optim.Adam({ d }, { lr = 0.1 })
    for s = 1, 3 do                                -- v falls after step 1: amsgrad keeps its maximum
      local gs = g:transpose(1, 2):contiguous() * (s == 1 and 3 or 0.01)
      oc:step({ gs }) od:step({ gs })
    end
    assert.is_true((c - d):abs():max():item() > 1e-6)
  end)
  it("leaves no temporaries: a step adds no storage", function()
    local p = mg.Variable(mg.randn(256, 256), "p")
    local opt, g = optim.Adam({ p }), mg.randn(256, 256)
    opt:step({ g })
    collectgarbage()
    collectgarbage()
    mg.reset_peak_memory()
    local live = mg.memory().live
    opt:step({ g })
    assert.are.equal(live, mg.memory().peak)
  end)
end)

describe("optimizer bookkeeping", function()
  it("skips nil gradients, takes a layer as params, keeps float32", function()
    local d = nn.Dense(2, 2)
    local opt = optim.SGD(d, { lr = 1 })
    local k0, b0 = d.kernel:clone(), d.bias:clone()
    opt:step({ nil, mg.ones(2) })
    assert.are.same(k0:totable(), d.kernel:totable())
    assert.are.same({ -1, -1 }, d.bias:totable())
    assert.are.equal("float32", d.bias.dtype)
    assert.is_true(d.bias:is_variable())
  end)
  it("updates unrecorded: a live tape sees nothing", function()
    local v = mg.Variable(mg.ones(2, F64), "v")
    local tape <close> = mg.GradientTape()
    local y = (v * v):sum()
    local opt = optim.Adam({ v }, { lr = 0.1 })
    opt:step(tape:gradient(y, { v }))
    assert.is_true(v:get(1) < 1)
  end)
  it("minimizes a quadratic", function()
    for _, make in ipairs({
      function(ps) return optim.SGD(ps, { lr = 0.1, momentum = 0.5 }) end,
      function(ps) return optim.Adam(ps, { lr = 0.1 }) end,
    }) do
      local w = mg.Variable(mg.tensor({ 3, -2 }, F64), "w")
      local target = mg.tensor({ 1, 1 }, F64)
      local opt = make({ w })
      for _ = 1, 300 do
        local tape <close> = mg.GradientTape()
        local loss = ((w - target) ^ 2):sum()
        opt:step(tape:gradient(loss, { w }))
      end
      near_list({ 1, 1 }, w, 1e-3)
    end
  end)
  it("reports bad arguments, and a bad step changes nothing", function()
    local a = mg.Variable(mg.zeros(2, F64), "a")
    local b = mg.Variable(mg.zeros(3, F64), "b")
    assert_error("SGD: params[2] is a plain tensor, expected a Variable", optim.SGD, { a, mg.zeros(2) })
    assert_error("Adam: params must be an array of Variables, got a number", optim.Adam, 3)
    assert_error("Adam: params is empty", optim.Adam, {})
    assert_error("Adam: unknown option 'beta_1'", optim.Adam, { a }, { beta_1 = 0.9 })
    assert_error("SGD: lr must be a number in [0, inf], got -1", optim.SGD, { a }, { lr = -1 })
    assert_error("SGD: momentum must be a number in [0, 1], got 2", optim.SGD, { a }, { momentum = 2 })
    assert_error("Adam: variant must be \"keras\" or \"pytorch\", got torch", optim.Adam, { a }, { variant = "torch" })
    local opt = optim.Adam({ a, b })
    assert_error("Adam: gradient 2 has shape (2), expected (3) (the shape of 'b')", opt.step, opt,
      { mg.ones(2, F64), mg.ones(2, F64) })
    assert.are.same({ 0, 0 }, a:totable())                  -- the good first gradient was not applied
    assert.are.equal(0, opt.iterations)
    assert_error("Adam: step expects an array of gradients parallel to params, got a tensor", opt.step, opt, mg.ones(2))
    assert_error("Adam: gradient index 3 is out of range for 2 params", opt.step, opt, { [3] = mg.ones(2) })
    assert_error("Adam: gradient 1 is a string, expected a tensor", opt.step, opt, { "g" })
  end)
end)

describe("training", function()
  it("an LSTM learns to recall the first input after 8 steps (loss / 20 within 150 Adam steps)", function()
    mg.manual_seed(1)
    local x = mg.uniform({ 32, 8, 1 }, -1, 1)
    local y = x:select(2, 1)
    local model = nn.Sequential { nn.RNN(nn.LSTMCell(1, 16)), nn.Dense(16, 1) }
    local params = model:parameters()
    local opt = optim.Adam(params, { lr = 0.02 })
    local first
    for step = 1, 150 do
      local tape <close> = mg.GradientTape()
      local loss = tape:record(function() return nn.mse(model(x), y) end)
      if step == 1 then first = loss:item() end
      opt:step(tape:gradient(loss, params))
    end
    local last = nn.mse(model(x), y):item()
    assert(last < first / 20, string.format("loss went from %g to %g", first, last))
  end)
end)

---------------------------------------------------------------- against Keras 3 and PyTorch

-- Two parameters (3, 4) and (5) and STEPS steps of gradients, saved for the reference script
-- as <name>_p<k>.npy and <name>_g<s>_<k>.npy (float64 values; Keras reads them as float32).
local STEPS = 6
local function problem(dir, name, scale)
  mg.manual_seed(#name * 7 + 3)
  local ps = { mg.randn({ 3, 4 }, F64), mg.randn({ 5 }, F64) }
  local gs = {}
  for s = 1, STEPS do
    gs[s] = { mg.randn({ 3, 4 }, F64) * (scale or 1), mg.randn({ 5 }, F64) * (scale or 1) * 0.3 }
    for k = 1, 2 do mg.save(gs[s][k], string.format("%s/%s_g%d_%d.npy", dir, name, s, k - 1)) end
  end
  for k = 1, 2 do mg.save(ps[k], string.format("%s/%s_p%d.npy", dir, name, k - 1)) end
  return ps, gs
end

-- Runs 'make' (params -> optimizer) in 'dtype' over the problem 'name' (its arrays saved in
-- 'dir' for the reference run); the final parameters.
local function ours(dir, name, dtype, make)
  local ps, gs = problem(dir, name)
  local vs = { mg.Variable(ps[1]:to(dtype), "a"), mg.Variable(ps[2]:to(dtype), "b") }
  local opt = make(vs)
  for s = 1, STEPS do opt:step({ gs[s][1]:to(dtype), gs[s][2]:to(dtype) }) end
  return vs, opt
end

-- The largest relative difference |a - b| / max(1, |b|) over the two parameters.
local function reldiff(vs, dir, name)
  local worst = 0
  for k = 1, 2 do
    local want = support.ref_out(dir, string.format("%s_p%d", name, k - 1))
    local d = ((vs[k]:to("float64") - want):abs() / mg.maximum(want:abs(), 1)):max():item()
    if d > worst then worst = d end
  end
  return worst
end

describe("optimizers against Keras 3 (float32, N steps on the same gradients)", function()
  local cases = {
    { "sgd", "SGD", { learning_rate = 0.1 }, function(v) return optim.SGD(v, { lr = 0.1 }) end },
    { "sgd_mom", "SGD", { learning_rate = 0.1, momentum = 0.9 },
      function(v) return optim.SGD(v, { learning_rate = 0.1, momentum = 0.9 }) end },
    { "sgd_nest", "SGD", { learning_rate = 0.05, momentum = 0.8, nesterov = true },
      function(v) return optim.SGD(v, { lr = 0.05, momentum = 0.8, nesterov = true }) end },
    { "sgd_wd", "SGD", { learning_rate = 0.1, weight_decay = 0.05 },
      function(v) return optim.SGD(v, { lr = 0.1, weight_decay = 0.05 }) end },
    { "rms", "RMSprop", { learning_rate = 0.01 }, function(v) return optim.RMSprop(v, { lr = 0.01 }) end },
    { "rms_cm", "RMSprop", { learning_rate = 0.01, centered = true, momentum = 0.5, rho = 0.8 },
      function(v) return optim.RMSprop(v, { lr = 0.01, centered = true, momentum = 0.5, rho = 0.8 }) end },
    { "rms_eps", "RMSprop", { learning_rate = 0.01, momentum = 0.9, epsilon = 0.5 },
      function(v) return optim.RMSprop(v, { lr = 0.01, momentum = 0.9, eps = 0.5 }) end },
    { "adam", "Adam", { learning_rate = 0.01 }, function(v) return optim.Adam(v, { lr = 0.01 }) end },
    { "adam_ams", "Adam", { learning_rate = 0.02, amsgrad = true, beta_1 = 0.8, beta_2 = 0.9, epsilon = 0.01 },
      function(v) return optim.Adam(v, { lr = 0.02, amsgrad = true, beta1 = 0.8, beta2 = 0.9, eps = 0.01 }) end },
    { "adamw", "AdamW", { learning_rate = 0.01, weight_decay = 0.1 },
      function(v) return optim.AdamW(v, { lr = 0.01, weight_decay = 0.1 }) end },
    { "adamw_def", "AdamW", {}, function(v) return optim.AdamW(v) end },
    { "adagrad", "Adagrad", { learning_rate = 0.1, initial_accumulator_value = 0.2, epsilon = 0.01 },
      function(v) return optim.Adagrad(v, { lr = 0.1, initial_accumulator_value = 0.2, eps = 0.01 }) end },
    { "adagrad_def", "Adagrad", {}, function(v) return optim.Adagrad(v) end },
    { "nadam", "Nadam", { learning_rate = 0.01 }, function(v) return optim.Nadam(v, { lr = 0.01 }) end },
    { "nadam_b", "Nadam", { learning_rate = 0.05, beta_1 = 0.7, beta_2 = 0.95, epsilon = 0.1 },
      function(v) return optim.Nadam(v, { lr = 0.05, beta1 = 0.7, beta2 = 0.95, eps = 0.1 }) end },
    { "clipnorm", "SGD", { learning_rate = 0.1, clipnorm = 1.5 },
      function(v) return optim.SGD(v, { lr = 0.1, clipnorm = 1.5 }) end },
    { "gclip", "Adam", { learning_rate = 0.01, global_clipnorm = 2 },
      function(v) return optim.Adam(v, { lr = 0.01, global_clipnorm = 2 }) end },
    { "clipvalue", "RMSprop", { learning_rate = 0.01, clipvalue = 0.3 },
      function(v) return optim.RMSprop(v, { lr = 0.01, clipvalue = 0.3 }) end },
  }
  local schedules = {
    { "sch_exp", "Adam", { cls = "ExponentialDecay",
        kw = { initial_learning_rate = 0.05, decay_steps = 2, decay_rate = 0.5 } },
      function(v) return optim.Adam(v, { lr = optim.ExponentialDecay(0.05, 2, 0.5) }) end },
    { "sch_cos", "SGD", { cls = "CosineDecay",
        kw = { initial_learning_rate = 0.0, decay_steps = 4, warmup_target = 0.2, warmup_steps = 3 } },
      function(v) return optim.SGD(v, { lr = optim.CosineDecay(0, 4, { warmup_target = 0.2, warmup_steps = 3 }),
        momentum = 0.5 }) end, { momentum = 0.5 } },
  }
  local results = {}
  local dir = support.reference_run(lazy_setup, lazy_teardown, "keras", function(dir)
    local list = {}
    for _, c in ipairs(cases) do
      results[c[1]] = ours(dir, c[1], "float32", c[4])
      list[#list + 1] = { c[1], { kind = "opt", opt = c[2], kw = c[3], nparams = 2, steps = STEPS } }
    end
    for _, c in ipairs(schedules) do
      results[c[1]] = ours(dir, c[1], "float32", c[4])
      list[#list + 1] = { c[1], { kind = "opt", opt = c[2], kw = c[5] or {}, schedule = c[3], nparams = 2,
        steps = STEPS } }
    end
    return list
  end)
  for _, c in ipairs(cases) do
    it(c[1] .. " " .. support.pylit(c[3]), function()
      local d = reldiff(results[c[1]], dir, c[1])
      assert(d < 2e-6, string.format("%s: relative difference %g from Keras", c[1], d))
    end)
  end
  for _, c in ipairs(schedules) do
    it("with a schedule: " .. c[1], function()
      local d = reldiff(results[c[1]], dir, c[1])
      assert(d < 2e-6, string.format("%s: relative difference %g from Keras", c[1], d))
    end)
  end
end)

describe("optimizers against PyTorch 1.13 where the formulas coincide (float64)", function()
  if not support.python_can_import("torch, numpy") then
    pending("needs /usr/bin/python3 with torch and numpy")
    return
  end
  -- name, torch class, torch options, ours, tolerance, torch clipping
  local cases = {
    { "t_sgd_mom", "SGD", { lr = 0.1, momentum = 0.9 },
      function(v) return optim.SGD(v, { lr = 0.1, momentum = 0.9 }) end },
    { "t_sgd_nest", "SGD", { lr = 0.05, momentum = 0.8, nesterov = true },
      function(v) return optim.SGD(v, { lr = 0.05, momentum = 0.8, nesterov = true }) end },
    -- RMSprop: PyTorch adds eps to sqrt(v), Keras inside it: they coincide at eps = 0
    { "t_rms_cm", "RMSprop", { lr = 0.01, alpha = 0.8, eps = 0, centered = true, momentum = 0.5 },
      function(v) return optim.RMSprop(v, { lr = 0.01, rho = 0.8, eps = 0, centered = true, momentum = 0.5 }) end },
    { "t_rms", "RMSprop", { lr = 0.01, alpha = 0.9, eps = 0 },
      function(v) return optim.RMSprop(v, { lr = 0.01, eps = 0 }) end },
    { "t_adam", "Adam", { lr = 0.01 }, function(v) return optim.Adam(v, { lr = 0.01, variant = "pytorch" }) end },
    { "t_adam_ams", "Adam", { lr = 0.02, betas = { 0.8, 0.9 }, eps = 0, amsgrad = true },
      function(v) return optim.Adam(v, { lr = 0.02, beta1 = 0.8, beta2 = 0.9, eps = 0, amsgrad = true }) end },
    { "t_adamw", "AdamW", { lr = 0.01, weight_decay = 0.1 },
      function(v) return optim.AdamW(v, { lr = 0.01, weight_decay = 0.1, variant = "pytorch" }) end },
    { "t_adagrad", "Adagrad", { lr = 0.1, initial_accumulator_value = 0.1, eps = 0 },
      function(v) return optim.Adagrad(v, { lr = 0.1, eps = 0 }) end },
    -- (NAdam is not here: PyTorch 1.13's mu_product_next is mu_product * mu * mu_next, mu
    -- counted twice, where Keras has u_product * u_(t+1); Nadam is checked against Keras.)
    -- clipping: clip_grad_norm_ divides by norm + 1e-6, Keras by the norm
    { "t_gclip", "SGD", { lr = 0.1 }, function(v) return optim.SGD(v, { lr = 0.1, global_clipnorm = 2 }) end,
      1e-6, { global = 2 } },
    { "t_clipnorm", "SGD", { lr = 0.1 }, function(v) return optim.SGD(v, { lr = 0.1, clipnorm = 1.5 }) end,
      1e-6, { each = 1.5 } },
    { "t_clipvalue", "SGD", { lr = 0.1, momentum = 0.9 },
      function(v) return optim.SGD(v, { lr = 0.1, momentum = 0.9, clipvalue = 0.3 }) end, 1e-12, { value = 0.3 } },
  }
  local results = {}
  local dir = support.reference_run(lazy_setup, lazy_teardown, "torch", function(dir)
    local list = {}
    for _, c in ipairs(cases) do
      results[c[1]] = ours(dir, c[1], "float64", c[4])
      list[#list + 1] = { c[1], { kind = "opt", opt = c[2], kw = c[3], nparams = 2, steps = STEPS,
        clip = c[6] or support.NONE } }
    end
    return list
  end)
  for _, c in ipairs(cases) do
    it(c[1] .. " " .. support.pylit(c[3]), function()
      local d = reldiff(results[c[1]], dir, c[1])
      assert(d < (c[5] or 1e-12), string.format("%s: relative difference %g from PyTorch", c[1], d))
    end)
  end
  it("eps placement: RMSprop and Keras-variant Adam differ from PyTorch once eps > 0", function()
    local vs = ours(dir, "t_rms", "float64", function(v) return optim.RMSprop(v, { lr = 0.01, eps = 1e-3 }) end)
    assert.is_true(reldiff(vs, dir, "t_rms") > 1e-6)
  end)
  it("clip_by_global_norm against clip_grad_norm_ (values and the norm)", function()
    local d2 = support.tmpdir()
    mg.manual_seed(5)
    local gs = { mg.randn({ 4, 3 }, F64) * 2, mg.randn({ 7 }, F64) }
    for k = 1, 2 do mg.save(gs[k], string.format("%s/c_g%d.npy", d2, k - 1)) end
    support.train_ref(d2, "torch", { { "c", { kind = "clip", n = 2, max_norm = 1.25 } } })
    local out, norm = optim.clip_by_global_norm(gs, 1.25)
    assert.is_near(support.ref_out(d2, "c_norm"):item(), norm, 1e-12)
    for k = 1, 2 do
      local want = support.ref_out(d2, "c_g" .. (k - 1))
      assert.is_true((out[k] - want):abs():max():item() < 1e-6)
    end
    -- below the threshold nothing changes
    local same = optim.clip_by_global_norm(gs, 1e3)
    assert.are.same(gs[1]:totable(), same[1]:totable())
    support.rmtree(d2)
  end)
end)

describe("learning-rate schedules against Keras 3", function()
  local steps = {}
  for s = 0, 30 do steps[#steps + 1] = s end
  steps[#steps + 1] = 4.5
  steps[#steps + 1] = 1000
  local cases = {
    { "ExponentialDecay", { initial_learning_rate = 0.1, decay_steps = 7, decay_rate = 0.6 },
      optim.ExponentialDecay(0.1, 7, 0.6) },
    { "ExponentialDecay", { initial_learning_rate = 0.1, decay_steps = 7, decay_rate = 0.6, staircase = true },
      optim.ExponentialDecay(0.1, 7, 0.6, { staircase = true }) },
    { "PiecewiseConstantDecay", { boundaries = { 3, 10, 20 }, values = { 1.0, 0.5, 0.1, 0.01 } },
      optim.PiecewiseConstantDecay({ 3, 10, 20 }, { 1.0, 0.5, 0.1, 0.01 }) },
    { "CosineDecay", { initial_learning_rate = 0.2, decay_steps = 25 }, optim.CosineDecay(0.2, 25) },
    { "CosineDecay", { initial_learning_rate = 0.2, decay_steps = 12, alpha = 0.1 },
      optim.CosineDecay(0.2, 12, { alpha = 0.1 }) },
    { "CosineDecay", { initial_learning_rate = 0.01, decay_steps = 15, alpha = 0.2, warmup_target = 0.3,
      warmup_steps = 6 }, optim.CosineDecay(0.01, 15, { alpha = 0.2, warmup_target = 0.3, warmup_steps = 6 }) },
  }
  local dir = support.reference_run(lazy_setup, lazy_teardown, "keras", function()
    local list = {}
    for i, c in ipairs(cases) do list[i] = { "s" .. i, { kind = "sched", cls = c[1], kw = c[2], steps = steps } } end
    return list
  end)
  for i, c in ipairs(cases) do
    it(c[1] .. " " .. support.pylit(c[2]), function()
      local want = support.ref_out(dir, "s" .. i):totable()
      local got = {}
      for k, s in ipairs(steps) do got[k] = c[3](s) end
      for k = 1, #steps do
        assert(math.abs(got[k] - want[k]) <= 1e-6 * math.abs(want[k]) + 2e-8,   -- Keras: float32
          string.format("step %g: %.9g, Keras %.9g", steps[k], got[k], want[k]))
      end
    end)
  end
  it("bad arguments", function()
    assert_error("ExponentialDecay: decay_steps must be a positive number, got 0", optim.ExponentialDecay, 0.1, 0, 0.5)
    assert_error("PiecewiseConstantDecay: values must have one more entry than boundaries (got 2 and 2)",
      optim.PiecewiseConstantDecay, { 1, 2 }, { 1, 2 })
    assert_error("PiecewiseConstantDecay: boundaries must be increasing numbers (entry 2 is 1)",
      optim.PiecewiseConstantDecay, { 1, 1 }, { 1, 2, 3 })
    assert_error("CosineDecay: warmup_target needs warmup_steps > 0", optim.CosineDecay, 0.1, 10, { warmup_target = 1 })
    assert_error("CosineDecay: step must be a number >= 0, got -1", optim.CosineDecay(0.1, 10), -1)
    local v = mg.Variable(mg.zeros(2), "v")
    local opt = optim.SGD({ v }, { lr = function() return "fast" end })
    assert_error("SGD: the learning-rate schedule returned fast at step 0, expected a number", opt.step, opt,
      { mg.ones(2) })
  end)
end)

describe("optimizer options, state and constraints", function()
  local function fresh() return { mg.Variable(mg.tensor({ 1, -2, 3 }, F64), "w"), mg.Variable(mg.ones(2, F64), "b") } end
  local function grads(s) return { mg.tensor({ 0.1 * s, -0.3, 0.2 }, F64), mg.tensor({ 0.5, -0.1 * s }, F64) } end
  it("learning_rate is lr's Keras alias", function()
    local a, b = fresh(), fresh()
    local oa, ob = optim.RMSprop(a, { lr = 0.05 }), optim.RMSprop(b, { learning_rate = 0.05 })
    oa:step(grads(1))
    ob:step(grads(1))
    assert.are.same(a[1]:totable(), b[1]:totable())
    assert.are.equal(0.05, ob:get_lr())
    assert_error("Adam: give lr or learning_rate, not both", optim.Adam, a, { lr = 1, learning_rate = 1 })
    assert_error("SGD: only one of clipnorm, clipvalue and global_clipnorm can be set", optim.SGD, a,
      { clipnorm = 1, clipvalue = 1 })
    assert_error("Nadam: unknown option 'amsgrad'", optim.Nadam, a, { amsgrad = true })
  end)
  for _, make in ipairs {
    function(p) return optim.SGD(p, { lr = 0.1, momentum = 0.9, nesterov = true }) end,
    function(p) return optim.RMSprop(p, { lr = 0.1, momentum = 0.5, centered = true }) end,
    function(p) return optim.Adam(p, { lr = 0.1, amsgrad = true }) end,
    function(p) return optim.AdamW(p, { lr = 0.1 }) end,
    function(p) return optim.Adagrad(p, { lr = 0.1 }) end,
    function(p) return optim.Nadam(p, { lr = 0.1 }) end,
  } do
    local name = tostring(make(fresh())):match("^%a+")
    it(name .. ": state() then load_state() into a new optimizer continues exactly", function()
      local a = fresh()
      local oa = make(a)
      for s = 1, 6 do oa:step(grads(s)) end
      local b = fresh()
      local ob = make(b)
      for s = 1, 3 do ob:step(grads(s)) end
      local st = ob:state()
      assert.are.equal(3, st.iterations)
      local c = { mg.Variable(b[1]:clone(), "w"), mg.Variable(b[2]:clone(), "b") }
      local oc = make(c)
      oc:load_state(st)
      for k, v in pairs(st) do                    -- a copy: later steps do not change it
        if mg.is_tensor(v) then assert.are.same(v:totable(), oc:state()[k]:totable()) end
      end
      for s = 4, 6 do oc:step(grads(s)) end
      assert.are.same(a[1]:totable(), c[1]:totable())
      assert.are.same(a[2]:totable(), c[2]:totable())
    end)
  end
  it("state names, and load_state's checks (a bad table changes nothing)", function()
    local o = optim.Adam(fresh(), { amsgrad = true })
    local st = o:state()
    local names = {}
    for k in pairs(st) do names[#names + 1] = k end
    table.sort(names)
    assert.are.same({ "iterations", "momentum.1", "momentum.2", "velocity.1", "velocity.2", "velocity_hat.1",
      "velocity_hat.2" }, names)
    assert.are.same({ "iterations", "u_product" }, (function()
      local n = {}
      for k, v in pairs(optim.Nadam(fresh()):state()) do if not mg.is_tensor(v) then n[#n + 1] = k end end
      table.sort(n)
      return n
    end)())
    local bad = o:state()
    bad["momentum.2"] = mg.zeros(3, F64)
    bad["momentum.1"] = mg.ones(3, F64)
    assert_error("Adam:load_state: 'momentum.2' must be a tensor of shape (2), got a tensor of shape (3)",
      o.load_state, o, bad)
    assert.are.same({ 0, 0, 0 }, o:state()["momentum.1"]:totable())
    local extra = o:state()
    extra.foo = 1
    assert_error("Adam:load_state: unknown entry 'foo'", o.load_state, o, extra)
    local missing = o:state()
    missing["velocity.1"] = nil
    assert_error("Adam:load_state: missing entry 'velocity.1'", o.load_state, o, missing)
  end)
  it("calls each updated Variable's constraint (nn.constraint(v)) after its update", function()
    -- the layers keep constraints where nn.constraint(v) finds them; here a stand-in for it
    local ps = fresh()
    local calls = {}
    local function nonneg(v)
      calls[#calls + 1] = v:totable()
      return mg.maximum(v, 0)
    end
    local saved = rawget(nn, "constraint")
    nn.constraint = function(v) return (rawequal(v, ps[1]) or rawequal(v, ps[2])) and nonneg or nil end
    local ok, err = pcall(function()
      local o = optim.SGD(ps, { lr = 1 })
      o:step({ mg.tensor({ 2, 0, 0 }, F64), n = 2 })   -- only ps[1] has a gradient
      local bad = optim.SGD({ ps[2] }, { lr = 1 })
      nonneg = function() return 1 end
      assert_error("SGD: the constraint of 'b' returned a number, expected a tensor of shape (2)", bad.step, bad,
        { mg.ones(2, F64) })
    end)
    nn.constraint = saved
    assert(ok, err)
    assert.are.same({ { -1, -2, 3 } }, calls)      -- it saw the updated value, once
    assert.are.same({ 0, 0, 3 }, ps[1]:totable())
  end)
  it("weight_decay decays before the update, with the step's learning rate", function()
    local p = { mg.Variable(mg.tensor({ 2 }, F64), "p") }
    local o = optim.SGD(p, { lr = optim.PiecewiseConstantDecay({ 0 }, { 0.5, 0.25 }), weight_decay = 0.1 })
    o:step({ mg.tensor({ 1 }, F64) })            -- lr 0.5: 2 - 2*0.1*0.5 = 1.9, then - 0.5
    assert.is_near(1.4, p[1]:item(), 1e-15)
    o:step({ mg.tensor({ 1 }, F64) })            -- lr 0.25: 1.4 - 1.4*0.025 = 1.365, then - 0.25
    assert.is_near(1.115, p[1]:item(), 1e-15)
  end)
end)
