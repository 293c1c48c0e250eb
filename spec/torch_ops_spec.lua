-- Differential spec: every op of the module against PyTorch (spec/torch_ref.py, case "ops",
-- float64 torch on the same values), table-driven. Each row of OPS below is run on random
-- shapes (with broadcasting) in float32 and float64, its operands made transposed, narrowed,
-- selected, permuted or expanded (stride 0) views, and checked in these modes:
--   f  forward values (and shapes, and the output dtype)
--   v  VJP: mg.vjp with a random cotangent, against torch.autograd.grad
--   j  JVP: mg.jvp with random tangents, against torch.autograd.functional.jvp
--   J  full Jacobians (when at most JMAX elements), reverse and forward mode: mg.jacobian
--      w.r.t. the first differentiable argument, tape:jacobian w.r.t. all of them at once,
--      against torch.autograd.functional.jacobian (the basis travels as a leading dim
--      through every rule, as in b)
--   b  batch Jacobians (dim 1 the batch), reverse and forward mode: mg.batch_jacobian w.r.t.
--      the first differentiable argument whose dim 1 is the outputs' (option bsrc picks
--      another), tape:batch_jacobian w.r.t. all such arguments at once, against the diagonal
--      blocks of torch's full Jacobians (torch also checks that the op mixes no batch
--      entries; one that does is skipped, and every row with "b" needs a case that runs)
--   h  second order: the gradient of <VJP(ct), ct2> (a Hessian-vector product), so the
--      reverse rules themselves are differentiated, against torch with create_graph
-- Cotangents, tangents and second cotangents are random views of every layout too.
-- Narrowed, selected and transposed views sit in storage padded with NaN, so a kernel that
-- reads outside its view shows NaN. All cases are written first and one python process
-- runs them all (ops.tsv and .npy files in a temporary directory); pending when
-- /usr/bin/python3 cannot import torch.
--
-- ROW FORMAT: adding an op is adding one row to OPS:
--   { name, mg_fn, torch_expr, domains [, option = value ...] }
--   name        a label, unique in OPS ("log", "sum(2, keepdim)")
--   mg_fn       function(a, b, ...) -> a tensor, several tensors, or an array of tensors
--   torch_expr  a Python expression in a, b, ... (float64 torch tensors holding the same
--               values) giving a tensor or a tuple of tensors, e.g. "torch.log(a)". In scope:
--               torch, F (torch.nn.functional), math, and the helpers of torch_ref.py
--               (idx1: 0-based indices as 1-based; lstm_keras, gru_keras). Dims are 0-based
--               there, 1-based in mg_fn: a:sum(2) is "a.sum(1)".
--   domains     one per argument, so #domains is the arity (see DOMAINS):
--               "any" normal; "pos" in [0.3, 2.5] (log, sqrt, pow base); "nonzero" |x| in
--               [0.2, 2] (relu, abs, sign, divisors: away from kinks); "unit" in (-0.9, 0.9);
--               "distinct" values 0.05 or more apart (max, min: no ties; never expanded);
--               "mask" 0/1 and "int" integers -2..2 (not differentiated: no gradient, no tangent);
--               "kinks" exactly at the kinks of the hard activations (-3, -2.5, -1, 0, 1, 2.5,
--               3, 6: PyTorch's derivative there is the convention checked), "halves" multiples
--               of 1/2 (round's ties), "zeros" normal with about a third exact zeros (cumprod)
-- options:
--   shape = a generator (see S): S.one(lo, hi [, smin]) (default for 1 argument: rank lo..hi,
--           sizes smin (1)..4), S.bcast(n, lo, hi [, whole]) (default for n > 1: shapes
--           broadcasting together, operand 'whole' (1) mostly of the full rank),
--           S.same(n, lo, hi), S.fixed(shape, ...), or any function(R) returning one shape
--           (an array of sizes) per argument, drawing from R (R.int, R.size, R.shape)
--   modes = the modes to run, default "fvjJbh" ("f" for comparisons and indices, "fvjJh"
--           for ops that mix dim 1)
--   bsrc  = the argument mg.batch_jacobian differentiates by in mode b (default: the first
--           differentiable one whose dim 1 is the outputs')
--   dtype = the output dtype when it is not the operands' ("float64" for argmax), or an array
--           of them for several outputs (nil entries: the operands')
--   same_layout = true: every operand of a case gets the same layout (the rotation gives each
--           its own otherwise), so that some cases have every operand contiguous
--   tol   = the tolerance for both dtypes, when the row itself rounds to float32 (say why)
--   known = "reason": a known failure (a bug outside this spec's reach, with its issue):
--           the row reports pending with its first mismatch instead of failing, and says so
--           when it stops failing (remove the option then)
-- e.g. { "erf", function(a) return mg.erf(a) end, "torch.erf(a)", { "any" } }
--      { "cumsum(2)", function(a) return a:cumsum(2) end, "a.cumsum(1)", { "any" }, shape = S.one(2, 4) }
-- A new kind of argument (1-based indices for gather, say) is a new entry of DOMAINS, and of
-- NOT_DIFFERENTIABLE when it takes no gradient.
local mg = require "moongrad"
local support = require "support"

if not support.python_can_import("torch, numpy") then
  describe("ops against PyTorch", function()
    pending("needs " .. support.PYTHON .. " with torch and numpy")
  end)
  return
end

-- Each row draws from its own seed (SEED and its name), so adding a row changes no other's
-- cases. MOONGRAD_OPS_SEED=n explores other draws (the suite runs the fixed one);
-- MOONGRAD_OPS_ONLY=pattern runs only the rows whose name matches (a Lua pattern), with the
-- same cases; MOONGRAD_OPS_KEEP=1 keeps the cases' directory (ops.tsv, c<id>_*.npy in,
-- out_c<id>_*.npy out) and prints it.
local SEED = tonumber(os.getenv("MOONGRAD_OPS_SEED")) or 20261201
local ONLY = os.getenv("MOONGRAD_OPS_ONLY")
local DTYPES = { "float32", "float64" }
-- |moongrad - torch| <= TOL * max(1, |torch|), element by element. float64 differs from torch
-- by rounding only (1e-15 seen); float32 rounds at 6e-8 per operation, and the longest chains
-- here (LSTM and GRU steps and their derivatives) reach 1e-6.
local TOL = { float64 = 1e-10, float32 = 1e-5 }
local JMAX = 1024          -- mode J: full Jacobians of at most this many elements

---------------------------------------------------------------- random shapes

-- R: what shape generators draw from (Lua's generator, seeded in setup).
local R = {}
function R.int(lo, hi) return math.random(lo, hi) end
function R.size(lo, hi) return math.random(lo or 1, hi or 4) end
-- A shape of random rank lo..hi and sizes smin..smax.
function R.shape(lo, hi, smin, smax)
  local s = {}
  for i = 1, math.random(lo, hi) do s[i] = R.size(smin, smax) end
  return s
end

local S = {}
function S.one(lo, hi, smin) return function() return { R.shape(lo or 0, hi or 4, smin) } end end
function S.same(n, lo, hi)
  return function()
    local s, out = R.shape(lo or 0, hi or 4), {}
    for i = 1, n do out[i] = { table.unpack(s) } end
    return out
  end
end
-- n shapes broadcasting to a random shape: each a suffix of it (operand 'whole', default 1,
-- often all of it) with some sizes set to 1.
function S.bcast(n, lo, hi, whole)
  return function()
    local full, out = R.shape(lo or 0, hi or 4), {}
    for i = 1, n do
      local rank = (i == (whole or 1) and math.random() < 0.7) and #full or math.random(0, #full)
      local s = {}
      for k = 1, rank do
        s[k] = full[#full - rank + k]
        if math.random() < 0.3 then s[k] = 1 end
      end
      out[i] = s
    end
    return out
  end
end
function S.fixed(...)
  local shapes = { ... }
  return function() return shapes end
end

---------------------------------------------------------------- value domains

local function from_values(vals, shape, dtype)
  return mg.tensor(vals, { dtype = dtype }):reshape(shape)
end

local function numel(shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  return n
end

local DOMAINS = {
  any = function(sh, dt) return mg.randn(sh, { dtype = dt }) end,
  pos = function(sh, dt) return mg.uniform(sh, 0.3, 2.5, { dtype = dt }) end,
  unit = function(sh, dt) return mg.uniform(sh, -0.9, 0.9, { dtype = dt }) end,
  nonzero = function(sh, dt)
    local v = {}
    for i = 1, numel(sh) do v[i] = (math.random() < 0.5 and -1 or 1) * (0.2 + 1.8 * math.random()) end
    return from_values(v, sh, dt)
  end,
  distinct = function(sh, dt)
    local n, v = numel(sh), {}
    for i = 1, n do v[i] = (i - n / 2) * 0.125 end            -- exact in float32
    for i = n, 2, -1 do local j = math.random(i) v[i], v[j] = v[j], v[i] end
    return from_values(v, sh, dt)
  end,
  mask = function(sh, dt)
    local v = {}
    for i = 1, numel(sh) do v[i] = math.random(0, 1) end
    return from_values(v, sh, dt)
  end,
  int = function(sh, dt)
    local v = {}
    for i = 1, numel(sh) do v[i] = math.random(-2, 2) end
    return from_values(v, sh, dt)
  end,
  kinks = function(sh, dt)
    local k, v = { -3, -2.5, -1, 0, 1, 2.5, 3, 6 }, {}
    for i = 1, numel(sh) do v[i] = k[math.random(#k)] end
    return from_values(v, sh, dt)
  end,
  halves = function(sh, dt)
    local v = {}
    for i = 1, numel(sh) do v[i] = math.random(-6, 6) / 2 end
    return from_values(v, sh, dt)
  end,
  zeros = function(sh, dt)
    local v = {}
    for i = 1, numel(sh) do v[i] = math.random() < 0.35 and 0 or 0.5 + math.random() * (math.random() < 0.5 and -1.5 or 1.5) end
    return from_values(v, sh, dt)
  end,
}
local NOT_DIFFERENTIABLE = { mask = true, int = true }
-- Domains of points where ops are not twice differentiable ("kinks": exactly at the kinks of
-- the hard activations): rows drawing from them run no mode h. PyTorch's first derivatives
-- there are a convention worth checking; its second derivatives contradict them (at 0, elu's
-- first derivative takes the x <= 0 branch, its second the x > 0 one).
local FIRST_ORDER_ONLY = { kinks = true }

---------------------------------------------------------------- operand layouts

local NAN = 0 / 0

-- A view holding the values of 'v' inside NaN-filled storage, 3 larger along dim 'd'; and
-- that whole storage as a tensor.
local function embed(v, d)
  local sh = v:shape()
  local n = sh[d]
  sh[d] = n + 3
  local p = mg.full(sh, NAN, { dtype = v.dtype })
  local w = p:narrow(d, 2, n)
  w:copy(v)
  return w, p
end

local function perm_inverse(p)
  local q = {}
  for k, pk in ipairs(p) do q[pk] = k end
  return q
end

-- Each takes a contiguous 'v' and returns a view of other strides with the same values
-- (expanded: values repeated along the expanded dims) and the tensor of its whole storage,
-- or nil when the rank does not allow.
local LAYOUTS = {
  { "contiguous", function(v) return v end },
  { "transposed", function(v)
      local n = v:dim()
      if n < 2 then return nil end
      local i = math.random(n - 1)
      local j = n                                      -- the last dim with another one
      local w, p = embed(v:transpose(i, j):contiguous(), math.random(n))
      return w:transpose(i, j), p
    end },
  { "narrowed", function(v)
      if v:dim() < 1 then return nil end
      return embed(v, math.random(v:dim()))
    end },
  { "selected", function(v)
      local sh, d = v:shape(), math.random(v:dim() + 1)
      table.insert(sh, d, 3)
      local p = mg.full(sh, NAN, { dtype = v.dtype })
      p:select(d, 2):copy(v)
      return p:select(d, 2), p
    end },
  { "permuted", function(v)
      local n = v:dim()
      if n < 2 then return nil end
      local p = {}
      for i = 1, n do p[i] = i end
      repeat
        for i = n, 2, -1 do local j = math.random(i) p[i], p[j] = p[j], p[i] end
        local id = true
        for i = 1, n do id = id and p[i] == i end
      until not id
      local w, all = embed(v:permute(p):contiguous(), math.random(n))
      return w:permute(perm_inverse(p)), all
    end },
  { "expanded", function(v, domain)
      if domain == "distinct" then return nil end       -- repeated values would tie
      local sh, big = v:shape(), {}
      for d, s in ipairs(sh) do if s > 1 then big[#big + 1] = d end end
      if #big == 0 then return nil end
      local base = v
      for _ = 1, math.random(math.min(2, #big)) do
        local d = table.remove(big, math.random(#big))
        base = base:narrow(d, 1, 1)
      end
      base = base:contiguous()
      local w, p = embed(base, math.random(base:dim()))
      return w:expand(sh), p
    end },
}

-- Layout 'k' (rotating) for operand 'i' of a case, the next one that applies.
local function apply_layout(v, k, i, domain)
  for step = 0, #LAYOUTS - 1 do
    local L = LAYOUTS[(k + i - 2 + step) % #LAYOUTS + 1]
    local t, storage = L[2](v, domain)
    if t then return t, L[1], storage or t end
  end
end

---------------------------------------------------------------- the ops

-- Matmul shapes: NumPy forms picked by 'kind', sizes often 1 (vectors as matrices).
local function mm_shapes(kind)
  return function()
    local function z() return math.random() < 0.3 and 1 or R.size(2, 4) end
    local M, K, N = z(), z(), z()
    local b1, b2 = R.size(1, 3), R.size(1, 3)
    local forms = {
      vv = { { K }, { K } }, vm = { { K }, { K, N } }, mv = { { M, K }, { K } },
      mm = { { M, K }, { K, N } },
      bb = { { b1, M, K }, { b1, K, N } },
      bm = { { b1, M, K }, { K, N } }, mb = { { M, K }, { b1, K, N } },
      bcast = { { b2, 1, M, K }, { b1, K, N } }, bcast2 = { { 1, b1, M, K }, { b2, 1, K, N } },
      vb = { { K }, { b1, K, N } }, bv = { { b1, M, K }, { K } },
    }
    return forms[kind]
  end
end

local lstm_shapes = function()
  local B, d, u = R.size(1, 3), R.size(1, 4), R.size(1, 3)
  return { { B, d }, { B, u }, { B, u }, { d, 4 * u }, { u, 4 * u }, { 4 * u } }
end
local function gru_shapes(ra)
  return function()
    local B, d, u = R.size(1, 3), R.size(1, 4), R.size(1, 3)
    return { { B, d }, { B, u }, { d, 3 * u }, { u, 3 * u }, ra and { 2, 3 * u } or { 3 * u } }
  end
end

-- A cell's shapes with the input over T steps: x (B, T, d).
local function seq_shapes(cell_shapes)
  return function()
    local sh = cell_shapes()
    sh[1] = { sh[1][1], R.size(1, 3), sh[1][2] }
    return sh
  end
end

local r2, r3 = S.one(2, 4), S.one(3, 4)

local OPS = {
  -- unary math
  { "neg", function(a) return mg.neg(a) end, "-a", { "any" } },
  { "unary minus", function(a) return -a end, "-a", { "any" } },
  { "exp", function(a) return mg.exp(a) end, "torch.exp(a)", { "any" } },
  { "log", function(a) return mg.log(a) end, "torch.log(a)", { "pos" } },
  { "tanh", function(a) return mg.tanh(a) end, "torch.tanh(a)", { "any" } },
  { "sigmoid", function(a) return mg.sigmoid(a) end, "torch.sigmoid(a)", { "any" } },
  { "relu", function(a) return mg.relu(a) end, "torch.relu(a)", { "nonzero" } },
  { "abs", function(a) return mg.abs(a) end, "torch.abs(a)", { "nonzero" } },
  { "sqrt", function(a) return mg.sqrt(a) end, "torch.sqrt(a)", { "pos" } },
  { "sin", function(a) return mg.sin(a) end, "torch.sin(a)", { "any" } },
  { "cos", function(a) return mg.cos(a) end, "torch.cos(a)", { "any" } },
  { "softplus", function(a) return mg.softplus(a) end, "F.softplus(a)", { "any" } },
  { "sign", function(a) return mg.sign(a) end, "torch.sign(a)", { "nonzero" } },
  { "exp (method)", function(a) return a:exp() end, "torch.exp(a)", { "any" } },

  -- binary, broadcasting; numbers on either side
  { "add", function(a, b) return a + b end, "a + b", { "any", "any" } },
  { "sub", function(a, b) return a - b end, "a - b", { "any", "any" } },
  { "mul", function(a, b) return a * b end, "a * b", { "any", "any" } },
  { "div", function(a, b) return a / b end, "a / b", { "any", "nonzero" } },
  { "pow", function(a, b) return a ^ b end, "a ** b", { "pos", "any" } },
  { "add (method)", function(a, b) return a:add(b) end, "a + b", { "any", "any" } },
  { "mg.sub", function(a, b) return mg.sub(a, b) end, "a - b", { "any", "any" } },
  { "mg.mul", function(a, b) return mg.mul(a, b) end, "a * b", { "any", "any" } },
  { "mg.div", function(a, b) return mg.div(a, b) end, "a / b", { "any", "nonzero" } },
  { "mg.pow", function(a, b) return mg.pow(a, b) end, "a ** b", { "pos", "any" } },
  { "t + 2", function(a) return a + 2 end, "a + 2", { "any" } },
  { "2 - t", function(a) return 2 - a end, "2 - a", { "any" } },
  { "t * 3", function(a) return a * 3 end, "a * 3", { "any" } },
  { "3 / t", function(a) return 3 / a end, "3 / a", { "nonzero" } },
  { "t / 4", function(a) return a / 4 end, "a / 4", { "any" } },
  { "t ^ 2", function(a) return a ^ 2 end, "a ** 2", { "any" } },
  { "t ^ 3", function(a) return a ^ 3 end, "a ** 3", { "any" } },
  { "t ^ 0.5", function(a) return a ^ 0.5 end, "a ** 0.5", { "pos" } },
  { "t ^ -1.5", function(a) return a ^ -1.5 end, "a ** -1.5", { "pos" } },
  { "2 ^ t", function(a) return 2 ^ a end, "2 ** a", { "any" } },
  { "maximum", function(a, b) return mg.maximum(a, b) end, "torch.maximum(a, b)", { "any", "any" } },
  { "minimum", function(a, b) return mg.minimum(a, b) end, "torch.minimum(a, b)", { "any", "any" } },
  { "maximum (method)", function(a, b) return a:maximum(b) end, "torch.maximum(a, b)", { "any", "any" } },
  { "minimum (method)", function(a, b) return a:minimum(b) end, "torch.minimum(a, b)", { "any", "any" } },
  { "float32 + float64", function(a, b) return a:to("float32") + b:to("float64") end,
    "a.float().double() + b", { "any", "any" }, dtype = "float64" },
  -- one shape, one layout: the contiguous cases take elementwise.c's dense path (binary_dense)
  { "add (same shape and layout)", function(a, b) return a + b end, "a + b", { "any", "any" },
    shape = S.same(2, 0, 3), same_layout = true },
  { "sub (same shape and layout)", function(a, b) return a - b end, "a - b", { "any", "any" },
    shape = S.same(2, 0, 3), same_layout = true },
  { "mul (same shape and layout)", function(a, b) return a * b end, "a * b", { "any", "any" },
    shape = S.same(2, 0, 3), same_layout = true },
  { "div (same shape and layout)", function(a, b) return a / b end, "a / b", { "any", "nonzero" },
    shape = S.same(2, 0, 3), same_layout = true },
  { "pow (same shape and layout)", function(a, b) return a ^ b end, "a ** b", { "pos", "any" },
    shape = S.same(2, 0, 3), same_layout = true },
  { "maximum (same shape and layout)", function(a, b) return mg.maximum(a, b) end,
    "torch.maximum(a, b)", { "any", "any" }, shape = S.same(2, 0, 3), same_layout = true },
  { "minimum (same shape and layout)", function(a, b) return mg.minimum(a, b) end,
    "torch.minimum(a, b)", { "any", "any" }, shape = S.same(2, 0, 3), same_layout = true },
  { "le (same shape and layout)", function(a, b) return mg.le(a, b) end, "torch.le(a, b)",
    { "int", "int" }, modes = "f", shape = S.same(2, 0, 3), same_layout = true },

  -- comparisons (forward only; integers, so that ties occur)
  { "eq", function(a, b) return mg.eq(a, b) end, "torch.eq(a, b)", { "int", "int" }, modes = "f" },
  { "ne", function(a, b) return mg.ne(a, b) end, "torch.ne(a, b)", { "int", "int" }, modes = "f" },
  { "lt", function(a, b) return mg.lt(a, b) end, "torch.lt(a, b)", { "int", "int" }, modes = "f" },
  { "le", function(a, b) return mg.le(a, b) end, "torch.le(a, b)", { "int", "int" }, modes = "f" },
  { "gt", function(a, b) return mg.gt(a, b) end, "torch.gt(a, b)", { "int", "int" }, modes = "f" },
  { "ge", function(a, b) return mg.ge(a, b) end, "torch.ge(a, b)", { "int", "int" }, modes = "f" },
  { "gt number", function(a) return mg.gt(a, 0.5) end, "a > 0.5", { "int" }, modes = "f" },

  -- clamp, where
  { "clamp(lo, hi)", function(a) return mg.clamp(a, -0.5, 0.7) end, "torch.clamp(a, -0.5, 0.7)", { "any" } },
  { "clamp(lo)", function(a) return a:clamp(-0.3) end, "torch.clamp(a, min=-0.3)", { "any" } },
  { "clamp(nil, hi)", function(a) return a:clamp(nil, 0.4) end, "torch.clamp(a, max=0.4)", { "any" } },
  { "where", function(c, a, b) return mg.where(c, a, b) end, "torch.where(a > 0.5, b, c)",
    { "mask", "any", "any" }, shape = S.bcast(3, 0, 4, 2) },
  { "where(c, t, 0)", function(c, a) return mg.where(c, a, 0) end,
    "torch.where(a > 0.5, b, torch.zeros(()))", { "mask", "any" }, shape = S.bcast(2, 0, 4, 2) },
  { "where(c, 2, t)", function(c, a) return mg.where(c, 2, a) end,
    "torch.where(a > 0.5, torch.full((), 2.0), b)", { "mask", "any" }, shape = S.bcast(2, 0, 4, 2) },

  -- softmax
  { "softmax", function(a) return mg.softmax(a) end, "torch.softmax(a, -1)", { "any" }, shape = S.one(1, 4) },
  { "softmax(1)", function(a) return mg.softmax(a, 1) end, "torch.softmax(a, 0)", { "any" },
    shape = S.one(1, 4), modes = "fvjJh" },
  { "softmax(2)", function(a) return a:softmax(2) end, "torch.softmax(a, 1)", { "any" }, shape = r2 },
  { "log_softmax", function(a) return mg.log_softmax(a) end, "torch.log_softmax(a, -1)", { "any" },
    shape = S.one(1, 4) },
  { "log_softmax(1)", function(a) return mg.log_softmax(a, 1) end, "torch.log_softmax(a, 0)", { "any" },
    shape = S.one(1, 4), modes = "fvjJh" },
  { "log_softmax(-2)", function(a) return a:log_softmax(-2) end, "torch.log_softmax(a, -2)", { "any" },
    shape = r2 },
  -- the fused loss (runtime/losses.c): the first-order VJP in one pass (mode v), the
  -- composed rule under J, b and h
  { "softmax_cross_entropy", function(a) return mg.softmax_cross_entropy(a, mg.tensor({ 2, 4, 1 })) end,
    "F.cross_entropy(a, torch.tensor([1, 3, 0]), reduction='none')", { "any" }, shape = S.fixed({ 3, 4 }) },
  { "softmax_cross_entropy 3-d", function(a)
      return mg.softmax_cross_entropy(a, mg.tensor({ { 1, 5, 3 }, { 2, 2, 5 } }, { dtype = "float64" }))
    end, "F.cross_entropy(a.reshape(6, 5), torch.tensor([0, 4, 2, 1, 1, 4]), reduction='none').reshape(2, 3)",
    { "any" }, shape = S.fixed({ 2, 3, 5 }) },
  { "softmax_cross_entropy 1 class", function(a) return mg.softmax_cross_entropy(a, mg.tensor({ 1, 1 })) end,
    "F.cross_entropy(a, torch.tensor([0, 0]), reduction='none')", { "any" }, shape = S.fixed({ 2, 1 }) },

  -- reductions
  { "sum()", function(a) return a:sum() end, "a.sum()", { "any" }, modes = "fvjJh" },
  { "sum(1)", function(a) return a:sum(1) end, "a.sum(0)", { "any" }, shape = S.one(1, 4), modes = "fvjJh" },
  { "sum(2, keepdim)", function(a) return a:sum(2, true) end, "a.sum(1, keepdim=True)", { "any" }, shape = r2 },
  { "sum(-1)", function(a) return mg.sum(a, -1) end, "a.sum(-1)", { "any" }, shape = S.one(1, 4) },
  { "sum({1, 3})", function(a) return a:sum({ 1, 3 }) end, "a.sum((0, 2))", { "any" }, shape = r3,
    modes = "fvjJh" },
  { "sum({2, 3}, keepdim)", function(a) return a:sum({ 2, 3 }, true) end, "a.sum((1, 2), keepdim=True)",
    { "any" }, shape = r3 },
  { "mean()", function(a) return a:mean() end, "a.mean()", { "any" }, modes = "fvjJh" },
  { "mean(2)", function(a) return mg.mean(a, 2) end, "a.mean(1)", { "any" }, shape = r2 },
  { "mean(-1, keepdim)", function(a) return a:mean(-1, true) end, "a.mean(-1, keepdim=True)", { "any" },
    shape = S.one(1, 4) },
  { "mean({1, 2})", function(a) return a:mean({ 1, 2 }) end, "a.mean((0, 1))", { "any" }, shape = r2,
    modes = "fvjJh" },
  { "var()", function(a) return a:var() end, "a.var(unbiased=False)", { "any" }, shape = S.one(1, 4),
    modes = "fvjJh" },
  { "var(2)", function(a) return mg.var(a, 2) end, "a.var(1, unbiased=False)", { "any" }, shape = r2 },
  { "var(1, keepdim)", function(a) return a:var(1, true) end, "a.var(0, unbiased=False, keepdim=True)",
    { "any" }, shape = S.one(1, 4) },
  { "var({2, 3})", function(a) return a:var({ 2, 3 }) end, "a.var((1, 2), unbiased=False)", { "any" },
    shape = r3 },
  -- std: distinct values over at least 2 elements (the gradient at std 0 is the known row below)
  { "std()", function(a) return a:std() end, "a.std(unbiased=False)", { "distinct" }, shape = S.one(1, 4, 2),
    modes = "fvjJh" },
  { "std(-1, keepdim)", function(a) return mg.std(a, -1, true) end, "a.std(-1, unbiased=False, keepdim=True)",
    { "distinct" }, shape = S.one(1, 4, 2) },
  { "std({1, 2})", function(a) return a:std({ 1, 2 }) end, "a.std((0, 1), unbiased=False)", { "distinct" },
    shape = S.one(2, 4, 2), modes = "fvjJh" },
  { "std(-1) of a constant", function(a) return a:narrow(-1, 1, 1):expand(a:shape()):std(-1) end,
    "a[..., :1].expand(a.shape).std(-1, unbiased=False)", { "any" }, shape = S.one(1, 3),
    known = "issue 10, item 3: the gradient of std at 0 is NaN, PyTorch's is 0" },
  { "norm()", function(a) return a:norm() end, "torch.linalg.vector_norm(a)", { "nonzero" }, modes = "fvjJh" },
  { "norm(2)", function(a) return mg.norm(a, 2) end, "torch.linalg.vector_norm(a, dim=1)", { "nonzero" },
    shape = r2 },
  { "norm(-1, keepdim)", function(a) return a:norm(-1, true) end,
    "torch.linalg.vector_norm(a, dim=-1, keepdim=True)", { "nonzero" }, shape = S.one(1, 4) },
  { "norm({1, 3})", function(a) return a:norm({ 1, 3 }) end, "torch.linalg.vector_norm(a, dim=(0, 2))",
    { "nonzero" }, shape = r3, modes = "fvjJh" },
  { "norm() at zero", function(a) return (a * 0):norm() end, "torch.linalg.vector_norm(a * 0)", { "any" },
    modes = "fvjJh", known = "issue 10, item 3: the gradient of norm at a zero vector is NaN, PyTorch's is 0" },
  { "max()", function(a) return a:max() end, "a.max()", { "distinct" }, modes = "fvjJh" },
  { "min()", function(a) return mg.min(a) end, "a.min()", { "distinct" }, modes = "fvjJh" },
  { "max(2): values", function(a) return (a:max(2)) end, "a.max(1).values", { "distinct" }, shape = r2 },
  { "min(1, keepdim): values", function(a) return (a:min(1, true)) end, "a.min(0, keepdim=True).values",
    { "distinct" }, shape = S.one(1, 4), modes = "fvjJh" },
  { "max(-1): values and indices", function(a) return a:max(-1) end,
    "(a.max(-1).values, idx1(a.max(-1).indices))", { "distinct" }, shape = S.one(1, 4), modes = "f",
    dtype = { [2] = "float64" } },
  { "min(2, keepdim): values and indices", function(a) return a:min(2, true) end,
    "(a.min(1, keepdim=True).values, idx1(a.min(1, keepdim=True).indices))", { "distinct" }, shape = r2,
    modes = "f", dtype = { [2] = "float64" } },
  { "max({1, 2})", function(a) return a:max({ 1, 2 }) end, "torch.amax(a, (0, 1))", { "distinct" },
    shape = r2, modes = "fvjJh" },
  { "min({2, 3})", function(a) return a:min({ 2, 3 }) end, "torch.amin(a, (1, 2))", { "distinct" },
    shape = r3 },
  { "argmax()", function(a) return a:argmax() end, "idx1(torch.argmax(a))", { "distinct" }, modes = "f",
    dtype = "float64" },
  { "argmax(2)", function(a) return mg.argmax(a, 2) end, "idx1(torch.argmax(a, 1))", { "distinct" },
    shape = r2, modes = "f", dtype = "float64" },
  { "argmax(-1, keepdim)", function(a) return a:argmax(-1, true) end,
    "idx1(torch.argmax(a, -1, keepdim=True))", { "distinct" }, shape = S.one(1, 4), modes = "f",
    dtype = "float64" },
  { "argmin()", function(a) return mg.argmin(a) end, "idx1(torch.argmin(a))", { "distinct" }, modes = "f",
    dtype = "float64" },
  { "argmin(1)", function(a) return a:argmin(1) end, "idx1(torch.argmin(a, 0))", { "distinct" },
    shape = S.one(1, 4), modes = "f", dtype = "float64" },

  -- views
  { "reshape(-1)", function(a) return a:reshape(-1) end, "a.reshape(-1)", { "any" }, modes = "fvjJh" },
  { "reshape(n, -1)", function(a) return a:reshape(a:size(1), -1) end, "a.reshape(a.shape[0], -1)",
    { "any" }, shape = r2 },
  { "reshape {2, 3, 2}", function(a) return mg.reshape(a, { 2, 3, 2 }) end, "a.reshape(2, 3, 2)", { "any" },
    shape = function() return ({ { { 3, 4 } }, { { 12 } }, { { 2, 6 } }, { { 6, 1, 2 } } })[R.int(1, 4)] end },
  { "view", function(a) return a:view(-1, 2) end, "a.reshape(-1, 2)", { "any" },
    shape = S.fixed({ 3, 2, 2 }), modes = "fvjJh" },
  { "flatten", function(a) return a:flatten() end, "a.flatten()", { "any" } },
  { "transpose()", function(a) return a:transpose() end, "a.transpose(-2, -1)", { "any" }, shape = r2 },
  { "transpose(1, 3)", function(a) return mg.transpose(a, 1, 3) end, "a.transpose(0, 2)", { "any" },
    shape = r3, modes = "fvjJh" },
  { "permute(3, 1, 2)", function(a) return a:permute(3, 1, 2) end, "a.permute(2, 0, 1)", { "any" },
    shape = S.one(3, 3), modes = "fvjJh" },
  { "permute {2, 4, 1, 3}", function(a) return mg.permute(a, { 2, 4, 1, 3 }) end, "a.permute(1, 3, 0, 2)",
    { "any" }, shape = S.one(4, 4), modes = "fvjJh" },
  { "narrow(2, 2, 2)", function(a) return a:narrow(2, 2, 2) end, "a.narrow(1, 1, 2)", { "any" },
    shape = function() return { { R.size(), R.size(3, 5), R.size() } } end },
  { "narrow(-1, -2, 1)", function(a) return mg.narrow(a, -1, -2, 1) end, "a[..., -2:-1]", { "any" },
    shape = function() return { { R.size(), R.size(2, 4) } } end },
  { "select(2, 2)", function(a) return a:select(2, 2) end, "a.select(1, 1)", { "any" },
    shape = function() return { { R.size(), R.size(2, 4), R.size() } } end },
  { "select(1, -1)", function(a) return mg.select(a, 1, -1) end, "a[-1]", { "any" }, shape = S.one(1, 4),
    modes = "fvjJh" },
  { "t[i]", function(a) return a[2] end, "a[1]", { "any" },
    shape = function() return { { R.size(2, 4), R.size() } } end, modes = "fvjJh" },
  { "squeeze()", function(a) return a:squeeze() end, "a.squeeze()", { "any" },
    shape = function() return { { R.size(), 1, R.size(), 1 } } end },
  { "squeeze(2)", function(a) return mg.squeeze(a, 2) end, "a.squeeze(1)", { "any" },
    shape = function() return { { R.size(), 1, R.size() } } end },
  { "unsqueeze(1)", function(a) return a:unsqueeze(1) end, "a.unsqueeze(0)", { "any" }, modes = "fvjJh" },
  { "unsqueeze(-1)", function(a) return mg.unsqueeze(a, -1) end, "a.unsqueeze(-1)", { "any" } },
  { "expand", function(a) return a:expand(2, 3, 4) end, "a.expand(2, 3, 4)", { "any" },
    shape = function() return ({ { { 3, 1 } }, { { 1 } }, { { 4 } }, { { 2, 1, 4 } }, { {} } })[R.int(1, 5)] end },
  { "mg.expand", function(a) return mg.expand(a, { 3, 2, 2 }) end, "a.expand(3, 2, 2)", { "any" },
    shape = S.fixed({ 3, 1, 2 }) },

  -- copies
  { "contiguous", function(a) return a:contiguous() end, "a", { "any" } },
  { "mg.contiguous", function(a) return mg.contiguous(a) end, "a", { "any" } },
  { "clone", function(a) return a:clone() end, "a.clone()", { "any" } },
  { "mg.clone", function(a) return mg.clone(a) end, "a.clone()", { "any" } },
  { "to float64", function(a) return a:to("float64") end, "a", { "any" }, dtype = "float64" },
  { "to float32", function(a) return a:to("float32") end, "a.float()", { "any" }, dtype = "float32" },

  -- joins and splits
  { "cat(1)", function(a, b, c) return mg.cat({ a, b, c }, 1) end, "torch.cat([a, b, c], 0)",
    { "any", "any", "any" },
    shape = function()
      local s = R.shape(0, 3)
      local out = {}
      for i = 1, 3 do out[i] = { R.size(), table.unpack(s) } end
      return out
    end, modes = "fvjJh" },
  { "cat(2)", function(a, b) return mg.cat({ a, b }, 2) end, "torch.cat([a, b], 1)", { "any", "any" },
    shape = function()
      local r = R.size()
      return { { r, R.size(), 2 }, { r, R.size(), 2 } }
    end },
  { "cat(-1)", function(a, b) return mg.cat({ a, b }, -1) end, "torch.cat([a, b], -1)", { "any", "any" },
    shape = function()
      local r, s = R.size(), R.size()
      return { { r, s, R.size() }, { r, s, R.size() } }
    end },
  { "stack(1)", function(a, b) return mg.stack({ a, b }) end, "torch.stack([a, b], 0)", { "any", "any" },
    shape = S.same(2, 0, 3), modes = "fvjJh" },
  { "stack(2)", function(a, b, c) return mg.stack({ a, b, c }, 2) end, "torch.stack([a, b, c], 1)",
    { "any", "any", "any" }, shape = S.same(3, 1, 3) },
  { "stack(-1)", function(a, b) return mg.stack({ a, b }, -1) end, "torch.stack([a, b], -1)", { "any", "any" },
    shape = S.same(2, 1, 3) },
  { "split(2, 1)", function(a) return mg.split(a, 2, 1) end, "torch.split(a, 2, 0)", { "any" },
    shape = function() return { { R.size(1, 5), R.size() } } end },
  { "split(1, 2)", function(a) return a:split(1, 2) end, "torch.split(a, 1, 1)", { "any" }, shape = r2 },
  { "split(3, -1)", function(a) return mg.split(a, 3, -1) end, "torch.split(a, 3, -1)", { "any" },
    shape = function() return { { R.size(), R.size(2, 7) } } end },
  { "unstack(1)", function(a) return mg.unstack(a) end, "torch.unbind(a, 0)", { "any" }, shape = S.one(1, 3),
    modes = "fvjJh" },
  { "unstack(2)", function(a) return a:unstack(2) end, "torch.unbind(a, 1)", { "any" }, shape = r2 },

  -- matmul, every NumPy form
  { "matmul 1-d @ 1-d", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("vv"), modes = "fvjJh" },
  { "matmul 1-d @ 2-d", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("vm"), modes = "fvjJh" },
  { "matmul 2-d @ 1-d", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("mv") },
  { "matmul 2-d @ 2-d", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("mm") },
  { "matmul (method)", function(a, b) return a:matmul(b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("mm") },
  { "matmul batched", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("bb") },
  { "matmul batched @ 2-d", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("bm") },
  { "matmul 2-d @ batched", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("mb") },
  { "matmul broadcast batch dims", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("bcast") },
  { "matmul broadcast batch dims, both", function(a, b) return mg.matmul(a, b) end, "a @ b",
    { "any", "any" }, shape = mm_shapes("bcast2") },
  { "matmul 1-d @ batched", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("vb"), bsrc = 2 },
  { "matmul batched @ 1-d", function(a, b) return mg.matmul(a, b) end, "a @ b", { "any", "any" },
    shape = mm_shapes("bv") },
  { "matmul then sum (stride-0 cotangent)", function(a, b) return mg.matmul(a, b):sum() end,
    "(a @ b).sum()", { "any", "any" }, shape = mm_shapes("mm"), modes = "fvjJh" },
  { "matmul then mean(1)", function(a, b) return mg.matmul(a, b):mean(1) end, "(a @ b).mean(0)",
    { "any", "any" }, shape = mm_shapes("bb"), modes = "fvjJh" },
  -- the layouts of issue 10's matmul bug, whatever the rotation gives: stride 0 operands
  { "matmul @ expanded (k,1) column", function(a, v) return mg.matmul(a, v:expand(a:size(2), 1)) end,
    "a @ b.expand(a.shape[1], 1)", { "any", "any" },
    shape = function() return { { R.size(), R.size(2, 4) }, { 1, 1 } } end },
  { "matmul expanded (1,k) row @", function(v, b) return mg.matmul(v:expand(1, b:size(1)), b) end,
    "a.expand(1, b.shape[0]) @ b", { "any", "any" },
    shape = function() return { { 1, 1 }, { R.size(2, 4), R.size() } } end, bsrc = 2 },
  { "matmul batch-expanded @ batched",
    function(a, b) return mg.matmul(a:expand(b:size(1), a:size(2), a:size(3)), b) end,
    "a.expand(b.shape[0], a.shape[1], a.shape[2]) @ b", { "any", "any" },
    shape = function()
      local k = R.size()
      return { { 1, R.size(), k }, { R.size(2, 3), k, R.size() } }
    end, bsrc = 2 },
  { "matmul float32 @ float64", function(a, b) return mg.matmul(a:to("float32"), b:to("float64")) end,
    "a.float().double() @ b", { "any", "any" }, shape = mm_shapes("bm"), dtype = "float64",
    tol = TOL.float32 },    -- torch's reverse-mode Jacobian is rounded to float32 through a.float()
  { "matmul chain through width 1", function(x, w1, w2) return mg.matmul(mg.matmul(x, w1), w2) end,
    "(a @ b) @ c", { "any", "any", "any" },
    shape = function() local k = R.size() return { { R.size(), k }, { k, 1 }, { 1, R.size() } } end },

  -- fused recurrent cells (Keras layouts), against PyTorch's cells
  { "lstm_cell", function(...) return mg.lstm_cell(...) end, "lstm_keras(a, b, c, d, e, f)",
    { "any", "any", "any", "any", "any", "any" }, shape = lstm_shapes },
  { "gru_cell", function(...) return mg.gru_cell(...) end, "gru_keras(a, b, c, d, e)",
    { "any", "any", "any", "any", "any" }, shape = gru_shapes(true) },
  { "gru_cell reset_after=false", function(x, h, W, U, b) return mg.gru_cell(x, h, W, U, b, false) end,
    "gru_keras(a, b, c, d, e, False)", { "any", "any", "any", "any", "any" }, shape = gru_shapes(false) },
  -- whole-sequence layers (seqcells.c) against PyTorch's fused layer functions
  { "lstm_seq", function(...) return mg.lstm_seq(...) end,
    "(lambda r: (r[0], r[1][0], r[2][0]))(torch.lstm(a, (b[None], c[None]), [d.T, e.T, f, torch.zeros_like(f)], True, 1, 0.0, False, False, True))",
    { "any", "any", "any", "any", "any", "any" }, shape = seq_shapes(lstm_shapes) },
  { "gru_seq", function(...) return mg.gru_seq(...) end,
    "(lambda o: (lambda r: (r[0], r[1][0]))(torch.gru(a, b[None], [o(c).T, o(d).T, o(e[0]), o(e[1])], True, 1, 0.0, False, False, True)))(lambda t: torch.cat([t[..., b.shape[1]:2 * b.shape[1]], t[..., :b.shape[1]], t[..., 2 * b.shape[1]:]], -1))",
    { "any", "any", "any", "any", "any" }, shape = seq_shapes(gru_shapes(true)) },
  -- issue 12: elementwise (the hard ones also exactly at their kinks: PyTorch's convention)
  { "erf", function(a) return mg.erf(a) end, "torch.erf(a)", { "any" } },
  { "erfc", function(a) return a:erfc() end, "torch.erfc(a)", { "any" } },
  { "gelu", function(a) return mg.gelu(a) end, "F.gelu(a)", { "any" } },
  { "gelu tanh", function(a) return a:gelu("tanh") end, "F.gelu(a, approximate='tanh')", { "any" } },
  { "gelu {approximate=tanh}", function(a) return mg.gelu(a, { approximate = "tanh" }) end,
    "F.gelu(a, approximate='tanh')", { "any" } },
  { "elu", function(a) return mg.elu(a) end, "F.elu(a)", { "any" } },
  { "elu(0.5)", function(a) return a:elu(0.5) end, "F.elu(a, 0.5)", { "any" } },
  { "elu(0.5) at kinks", function(a) return a:elu(0.5) end, "F.elu(a, 0.5)", { "kinks" } },
  { "selu", function(a) return mg.selu(a) end, "F.selu(a)", { "any" } },
  { "selu at kinks", function(a) return a:selu() end, "F.selu(a)", { "kinks" } },
  { "celu", function(a) return mg.celu(a) end, "F.celu(a)", { "any" } },
  -- alpha 0.5: torch 1.13 rounds 1/alpha to float32 in celu's float64 gradient (5e-8 off for 0.7)
  { "celu(0.5) at kinks", function(a) return a:celu(0.5) end, "F.celu(a, 0.5)", { "kinks" } },
  { "silu", function(a) return mg.silu(a) end, "F.silu(a)", { "any" } },
  { "swish", function(a) return a:swish() end, "F.silu(a)", { "any" } },
  { "mish", function(a) return mg.mish(a) end, "F.mish(a)", { "any" } },
  { "softsign", function(a) return a:softsign() end, "F.softsign(a)", { "any" } },
  { "softsign at kinks", function(a) return mg.softsign(a) end, "F.softsign(a)", { "kinks" } },
  -- derivatives against relu6(x + 3) / 6, the same function with the same zero derivative at
  -- -3 and 3 (torch.autograd.grad at the kinks gives 0 for F.hardsigmoid too): F.hardsigmoid
  -- has no double backward (so no JVP) and its float64 gradient uses a float32 1/6 (3e-8 off)
  { "hard_sigmoid", function(a) return mg.hard_sigmoid(a * 3) end, "F.hardsigmoid(a * 3)", { "any" },
    modes = "f" },
  { "hard_sigmoid as relu6", function(a) return mg.hard_sigmoid(a * 3) end, "F.relu6(a * 3 + 3) / 6", { "any" } },
  { "hard_sigmoid at kinks", function(a) return a:hard_sigmoid() end, "F.hardsigmoid(a)", { "kinks" },
    modes = "f" },
  { "hard_sigmoid at kinks as relu6", function(a) return a:hard_sigmoid() end, "F.relu6(a + 3) / 6",
    { "kinks" } },
  { "hard_sigmoid keras2", function(a) return a:hard_sigmoid("keras2") end,
    "torch.clamp(0.2 * a + 0.5, 0, 1)", { "nonzero" } },
  { "hard_tanh", function(a) return mg.hard_tanh(a * 2) end, "F.hardtanh(a * 2)", { "any" } },
  { "hard_tanh at kinks", function(a) return a:hard_tanh() end, "F.hardtanh(a)", { "kinks" } },
  { "leaky_relu", function(a) return mg.leaky_relu(a) end, "F.leaky_relu(a)", { "nonzero" } },
  { "leaky_relu(0.2) at kinks", function(a) return a:leaky_relu(0.2) end, "F.leaky_relu(a, 0.2)", { "kinks" } },
  { "relu6", function(a) return mg.relu6(a * 5) end, "F.relu6(a * 5)", { "any" } },
  { "relu6 at kinks", function(a) return a:relu6() end, "F.relu6(a)", { "kinks" } },
  { "relu at kinks", function(a) return a:relu() end, "torch.relu(a)", { "kinks" } },
  { "abs at kinks", function(a) return a:abs() end, "torch.abs(a)", { "kinks" } },
  { "log1p", function(a) return mg.log1p(a) end, "torch.log1p(a)", { "pos" } },
  { "expm1", function(a) return a:expm1() end, "torch.expm1(a)", { "any" } },
  { "tan", function(a) return mg.tan(a) end, "torch.tan(a)", { "unit" } },
  { "atan", function(a) return a:atan() end, "torch.atan(a)", { "any" } },
  { "asinh", function(a) return mg.asinh(a) end, "torch.asinh(a)", { "any" } },
  { "sinh", function(a) return a:sinh() end, "torch.sinh(a)", { "any" } },
  { "cosh", function(a) return mg.cosh(a) end, "torch.cosh(a)", { "any" } },
  { "square", function(a) return a:square() end, "torch.square(a)", { "any" } },
  { "reciprocal", function(a) return mg.reciprocal(a) end, "torch.reciprocal(a)", { "nonzero" } },
  { "rsqrt", function(a) return a:rsqrt() end, "torch.rsqrt(a)", { "pos" } },
  { "exp2", function(a) return mg.exp2(a) end, "torch.exp2(a)", { "any" } },
  { "log2", function(a) return a:log2() end, "torch.log2(a)", { "pos" } },
  { "log10", function(a) return mg.log10(a) end, "torch.log10(a)", { "pos" } },
  { "floor", function(a) return mg.floor(a * 3) end, "torch.floor(a * 3)", { "any" } },
  { "ceil", function(a) return a:ceil() end, "torch.ceil(a)", { "halves" } },
  { "round", function(a) return mg.round(a * 3) end, "torch.round(a * 3)", { "any" } },
  { "round (ties to even)", function(a) return a:round() end, "torch.round(a)", { "halves" } },
  { "trunc", function(a) return mg.trunc(a) end, "torch.trunc(a)", { "halves" } },
  { "sign at kinks", function(a) return a:sign() end, "torch.sign(a)", { "kinks" } },

  -- issue 12: reductions and scans
  { "logsumexp()", function(a) return a:logsumexp() end, "torch.logsumexp(a.reshape(-1), 0)", { "any" },
    modes = "fvj" },
  { "logsumexp(2)", function(a) return mg.logsumexp(a, 2) end, "torch.logsumexp(a, 1)", { "any" }, shape = r2 },
  { "logsumexp(-1, keepdim)", function(a) return a:logsumexp(-1, true) end,
    "torch.logsumexp(a, -1, keepdim=True)", { "any" }, shape = S.one(1, 4) },
  { "logsumexp({1, 3}) large", function(a) return a:logsumexp({ 1, 3 }) end,
    "torch.logsumexp(a + 500, (0, 2)) - 500", { "any" }, shape = r3, modes = "fvj" },
  { "cumsum(1)", function(a) return mg.cumsum(a, 1) end, "torch.cumsum(a, 0)", { "any" },
    shape = S.one(1, 4), modes = "fvj" },
  { "cumsum(-1)", function(a) return a:cumsum(-1) end, "torch.cumsum(a, -1)", { "any" }, shape = r2 },
  { "cumprod(2)", function(a) return a:cumprod(2) end, "torch.cumprod(a, 1)", { "any" }, shape = r2 },
  { "cumprod(1) with zeros", function(a) return mg.cumprod(a, 1) end, "torch.cumprod(a, 0)", { "zeros" },
    shape = S.one(1, 4), modes = "fvj" },
  { "cumprod(-1) with zeros", function(a) return a:cumprod(-1) end, "torch.cumprod(a, -1)", { "zeros" },
    shape = function() return { { R.size(), R.size(3, 6) } } end },
  { "prod()", function(a) return a:prod() end, "torch.prod(a)", { "zeros" }, modes = "fvj" },
  { "prod(2)", function(a) return mg.prod(a, 2) end, "torch.prod(a, 1)", { "any" }, shape = r2 },
  { "prod(-1, keepdim) with zeros", function(a) return a:prod(-1, true) end,
    "torch.prod(a, -1, keepdim=True)", { "zeros" }, shape = S.one(1, 4) },

  -- issue 12: reordering, triangles, diagonals
  { "flip(1)", function(a) return a:flip(1) end, "torch.flip(a, (0,))", { "any" }, shape = S.one(1, 4),
    modes = "fvj" },
  { "flip({2, -1})", function(a) return mg.flip(a, { 2, -1 }) end, "torch.flip(a, (1, -1))", { "any" },
    shape = r3 },
  { "roll(1, 2)", function(a) return a:roll(1, 2) end, "torch.roll(a, 1, 1)", { "any" }, shape = r2 },
  { "roll(-3, -1)", function(a) return mg.roll(a, -3, -1) end, "torch.roll(a, -3, -1)", { "any" },
    shape = S.one(2, 4) },
  { "roll(2) flattened", function(a) return a:roll(2) end, "torch.roll(a, 2)", { "any" }, modes = "fvj" },
  { "roll({1, -1}, {2, 3})", function(a) return a:roll({ 1, -1 }, { 2, 3 }) end,
    "torch.roll(a, (1, -1), (1, 2))", { "any" }, shape = r3 },
  { "tril", function(a) return mg.tril(a) end, "torch.tril(a)", { "any" }, shape = r2 },
  { "tril(-1)", function(a) return a:tril(-1) end, "torch.tril(a, -1)", { "any" }, shape = r2 },
  { "triu", function(a) return a:triu() end, "torch.triu(a)", { "any" }, shape = r2 },
  { "triu(1)", function(a) return mg.triu(a, 1) end, "torch.triu(a, 1)", { "any" }, shape = r3 },
  { "diag 1-d", function(a) return mg.diag(a) end, "torch.diag(a)", { "any" }, shape = S.one(1, 1),
    modes = "fvj" },
  { "diag(1) 1-d", function(a) return a:diag(1) end, "torch.diag(a, 1)", { "any" }, shape = S.one(1, 1),
    modes = "fvj" },
  { "diag(-2) 1-d", function(a) return a:diag(-2) end, "torch.diag(a, -2)", { "any" }, shape = S.one(1, 1),
    modes = "fvj" },
  { "diag 2-d", function(a) return a:diag() end, "torch.diag(a)", { "any" }, shape = S.one(2, 2),
    modes = "fvj" },
  { "diag(-1) 2-d", function(a) return mg.diag(a, -1) end, "torch.diag(a, -1)", { "any" },
    shape = S.one(2, 2), modes = "fvj" },
  { "diagonal", function(a) return a:diagonal() end, "torch.diagonal(a)", { "any" }, shape = r2,
    modes = "fvj" },
  { "diagonal(1, 2, 3)", function(a) return mg.diagonal(a, 1, 2, 3) end, "torch.diagonal(a, 1, 1, 2)",
    { "any" }, shape = function() return { { R.size(), R.size(2, 4), R.size(2, 4) } } end },
  { "diagonal(-1, 3, 1)", function(a) return a:diagonal(-1, 3, 1) end, "torch.diagonal(a, -1, 2, 0)",
    { "any" }, shape = r3, modes = "fvj" },
  { "outer", function(a, b) return mg.outer(a, b) end, "torch.outer(a, b)", { "any", "any" },
    shape = function() return { { R.size() }, { R.size() } } end },
  { "outer (method)", function(a, b) return a:outer(b) end, "torch.outer(a, b)", { "any", "any" },
    shape = function() return { { R.size() }, { R.size() } } end, modes = "fvj" },

  -- issue 12: einsum
  { "einsum ij,jk->ik", function(a, b) return mg.einsum("ij,jk->ik", a, b) end,
    "torch.einsum('ij,jk->ik', a, b)", { "any", "any" }, shape = mm_shapes("mm") },
  { "einsum bij,bjk->bik", function(a, b) return mg.einsum("bij,bjk->bik", a, b) end,
    "torch.einsum('bij,bjk->bik', a, b)", { "any", "any" }, shape = mm_shapes("bb") },
  { "einsum bhqd,bhkd->bhqk", function(a, b) return mg.einsum("bhqd,bhkd->bhqk", a, b) end,
    "torch.einsum('bhqd,bhkd->bhqk', a, b)", { "any", "any" },
    shape = function()
      local B, H, D = R.size(), R.size(1, 2), R.size()
      return { { B, H, R.size(), D }, { B, H, R.size(), D } }
    end },
  { "einsum i,i->", function(a, b) return mg.einsum("i,i->", a, b) end, "torch.einsum('i,i->', a, b)",
    { "any", "any" }, shape = S.same(2, 1, 1), modes = "fvj" },
  { "einsum i,j (implicit)", function(a, b) return mg.einsum("i,j", a, b) end, "torch.einsum('i,j', a, b)",
    { "any", "any" }, shape = function() return { { R.size() }, { R.size() } } end },
  { "einsum ij,kj->ki", function(a, b) return mg.einsum("ij,kj->ki", a, b) end,
    "torch.einsum('ij,kj->ki', a, b)", { "any", "any" },
    shape = function() local j = R.size() return { { R.size(), j }, { R.size(), j } } end, modes = "fvj" },
  { "einsum bi,bij->bj", function(a, b) return mg.einsum("bi,bij->bj", a, b) end,
    "torch.einsum('bi,bij->bj', a, b)", { "any", "any" },
    shape = function() local B, i = R.size(), R.size() return { { B, i }, { B, i, R.size() } } end },
  { "einsum ij->ji", function(a) return mg.einsum("ij->ji", a) end, "torch.einsum('ij->ji', a)", { "any" },
    shape = S.one(2, 2), modes = "fvj" },
  { "einsum ii (trace)", function(a) return mg.einsum("ii", a) end, "torch.einsum('ii', a)", { "any" },
    shape = function() local n = R.size() return { { n, n } } end, modes = "fvj" },
  { "einsum bii->bi", function(a) return mg.einsum("bii->bi", a) end, "torch.einsum('bii->bi', a)", { "any" },
    shape = function() local n = R.size() return { { R.size(), n, n } } end },
  { "einsum ijk->j", function(a) return mg.einsum("ijk->j", a) end, "torch.einsum('ijk->j', a)", { "any" },
    shape = S.one(3, 3), modes = "fvj" },

  -- issue 12: indexing (1-based index tensors on the moongrad side, 0-based in torch)
  { "gather(2)", function(a) return a:gather(2, mg.tensor({ { 1, 3 }, { 2, 2 }, { 3, 1 } })) end,
    "torch.gather(a, 1, torch.tensor([[0, 2], [1, 1], [2, 0]]))", { "any" }, shape = S.fixed({ 3, 3 }) },
  { "gather(1)", function(a) return mg.gather(a, 1, mg.tensor({ { 2, 1 }, { 2, 2 } })) end,
    "torch.gather(a, 0, torch.tensor([[1, 0], [1, 1]]))", { "any" }, shape = S.fixed({ 3, 4 }), modes = "fvj" },
  { "gather(-1) 3-d", function(a) return a:gather(-1, mg.tensor({ { { 4 }, { 1 } }, { { 2 }, { 2 } } })) end,
    "torch.gather(a, -1, torch.tensor([[[3], [0]], [[1], [1]]]))", { "any" }, shape = S.fixed({ 2, 2, 4 }) },
  { "index_select(1)", function(a) return a:index_select(1, mg.tensor({ 3, 1, 3, 2 })) end,
    "torch.index_select(a, 0, torch.tensor([2, 0, 2, 1]))", { "any" },
    shape = function() return { { 3, R.size() } } end, modes = "fvj" },
  { "index_select(2)", function(a) return mg.index_select(a, 2, mg.tensor({ 2, 2 })) end,
    "torch.index_select(a, 1, torch.tensor([1, 1]))", { "any" },
    shape = function() return { { R.size(), 2, R.size() } } end },
  { "take_along_dim(2)", function(a) return a:take_along_dim(mg.tensor({ { 2, 1 }, { 3, 3 } }), 2) end,
    "torch.take_along_dim(a, torch.tensor([[1, 0], [2, 2]]), 1)", { "any" }, shape = S.fixed({ 2, 3 }) },
  { "take_along_dim broadcast", function(a) return mg.take_along_dim(a, mg.tensor({ { 1 }, { 3 } }), 2) end,
    "torch.take_along_dim(a, torch.tensor([[0], [2]]), 1)", { "any" },
    shape = function() return { { 2, 3 } } end },
  { "take_along_dim flattened", function(a) return a:take_along_dim(mg.tensor({ 6, 1, 2 })) end,
    "torch.take_along_dim(a, torch.tensor([5, 0, 1]))", { "any" }, shape = S.fixed({ 2, 3 }), modes = "fvj" },
  { "masked_fill", function(a, m) return a:masked_fill(m, 2.5) end, "a.masked_fill(b > 0.5, 2.5)",
    { "any", "mask" }, shape = function() local s = R.shape(1, 3) return { s, s } end },
  { "masked_fill broadcast mask", function(a, m) return mg.masked_fill(a, m, -1) end,
    "a.masked_fill(b > 0.5, -1)", { "any", "mask" },
    shape = function() local r, c = R.size(), R.size() return { { r, c }, { c } } end },

  -- issue 12: pad, repeats, tile
  { "pad {1, 2}", function(a) return mg.pad(a, { 1, 2 }) end, "F.pad(a, (1, 2))", { "any" }, shape = S.one(1, 4) },
  { "pad {0, 1, 2, 0} value", function(a) return a:pad({ 0, 1, 2, 0 }, 1.5) end,
    "F.pad(a, (0, 1, 2, 0), value=1.5)", { "any" }, shape = r2, modes = "fvj" },
  { "pad {-1, 1} crops", function(a) return a:pad({ -1, 1 }) end, "F.pad(a, (-1, 1))", { "any" },
    shape = function() return { { R.size(), R.size(2, 4) } } end },
  { "repeats(2, 3)", function(a) return a:repeats(2, 3) end, "a.repeat(2, 3)", { "any" }, shape = S.one(0, 2),
    modes = "fvj" },
  { "repeats {1, 2, 1, 2}", function(a) return mg.repeats(a, { 1, 2, 1, 2 }) end, "a.repeat(1, 2, 1, 2)",
    { "any" }, shape = S.one(2, 3) },
  { "tile {2}", function(a) return mg.tile(a, { 2 }) end, "torch.tile(a, (2,))", { "any" }, shape = S.one(1, 3) },
  { "tile(2, 1, 2)", function(a) return a:tile(2, 1, 2) end, "torch.tile(a, (2, 1, 2))", { "any" },
    shape = S.one(1, 3), modes = "fvj" },
}
---------------------------------------------------------------- running the cases

local dir
local nextid = 0
local state = {}          -- row -> { cases = {...}, err = message }

local function is_tensor(x) return mg.is_tensor(x) end

-- The outputs of a row's function as an array of tensors.
local function outputs(...)
  local r = table.pack(...)
  if r.n == 1 and not is_tensor(r[1]) and type(r[1]) == "table" then return r[1] end
  return { table.unpack(r, 1, r.n) }
end

-- What derivatives are taken of (as torch_ref.py's single and batched).
local function single(outs)
  if #outs == 1 then return outs[1] end
  local p = {}
  for i, o in ipairs(outs) do p[i] = o:reshape(-1) end
  return mg.cat(p, 1)
end

local function batched(outs)
  if #outs == 1 then return outs[1] end
  local p = {}
  for i, o in ipairs(outs) do p[i] = o:reshape(o:size(1), -1) end
  return mg.cat(p, 2)
end

local function put(name, t) mg.save(t:to("float64"):contiguous(), dir .. "/" .. name .. ".npy") end
local function exists(name)
  local f = io.open(dir .. "/out_" .. name .. ".npy")
  if f then f:close() end
  return f ~= nil
end
local function get(name) return mg.load(dir .. "/out_" .. name .. ".npy") end

local function flatten(v, out)
  out = out or {}
  if type(v) == "table" then for _, x in ipairs(v) do flatten(x, out) end
  else out[#out + 1] = v end
  return out
end

local function shape_str(s) return "(" .. table.concat(s, ",") .. ")" end

-- One case of 'row': operands (with their layouts), cotangent, tangents; the manifest line.
local function make_case(row, dtype, k, manifest)
  local domains = row[4]
  local shapes = (row.shape or (#domains == 1 and S.one() or S.bcast(#domains)))(R)
  assert(#shapes == #domains, "the shape generator gives " .. #shapes .. " shapes for "
         .. #domains .. " arguments")
  nextid = nextid + 1
  local c = { id = nextid, dtype = dtype, args = {}, layouts = {}, diff = {}, tangents = {},
              storage = {}, stored = {} }
  local flags = {}
  for i, dom in ipairs(domains) do
    local gen = assert(DOMAINS[dom], "unknown domain " .. tostring(dom))
    local t, name, storage = apply_layout(gen(shapes[i], dtype), k, row.same_layout and 1 or i, dom)
    c.args[i], c.layouts[i] = t, name
    c.storage[i], c.stored[i] = storage, flatten(storage:totable())
    c.diff[i] = not NOT_DIFFERENTIABLE[dom]
    flags[i] = c.diff[i] and "1" or "0"
    -- torch's operand: the values read element by element through the view
    put("c" .. c.id .. "_a" .. i, mg.tensor(t:totable(), { dtype = "float64" }))
  end
  local outs = outputs(row[2](table.unpack(c.args)))
  c.nout = #outs
  local modes = row.modes or "fvjJbh"
  local anydiff = false
  for i = 1, #domains do anydiff = anydiff or c.diff[i] end
  local m = "f"
  -- cotangents and tangents are random views too (sum and mean pass back stride 0 ones)
  local n = #domains
  local function random_view(shape, dt, slot, name)
    local t = apply_layout(mg.randn(shape, { dtype = dt }), k, slot, "any")
    put("c" .. c.id .. "_" .. name, mg.tensor(t:totable(), { dtype = "float64" }))
    return t
  end
  if anydiff and (modes:find("v") or modes:find("h")) then
    local y = single(outs)
    c.ct = random_view(y:shape(), y.dtype, n + 1, "ct")
    if modes:find("v") then m = m .. "v" end
  end
  if anydiff and modes:find("j") then
    for i, a in ipairs(c.args) do
      c.tangents[i] = c.diff[i] and random_view(a:shape(), a.dtype, n + 1 + i, "t" .. i)
                      or mg.zeros(a:shape(), { dtype = a.dtype })
    end
    m = m .. "j"
  end
  local smooth = true
  for _, dom in ipairs(domains) do smooth = smooth and not FIRST_ORDER_ONLY[dom] end
  if anydiff and smooth and modes:find("h") then      -- second cotangents, one per argument
    c.ct2 = {}
    for i, a in ipairs(c.args) do
      if c.diff[i] then c.ct2[i] = random_view(a:shape(), a.dtype, 2 * n + 1 + i, "u" .. i) end
    end
    m = m .. "h"
  end
  if anydiff and modes:find("J") then     -- full Jacobians, when small
    local size = 0
    for i, a in ipairs(c.args) do if c.diff[i] then size = size + a:numel() end end
    if size * single(outs):numel() <= JMAX then m = m .. "J" end
  end
  c.bsrcs = {}                           -- the arguments batch Jacobians are taken w.r.t.
  if modes:find("b") then
    local order = { row.bsrc }
    for i = 1, #domains do if i ~= row.bsrc then order[#order + 1] = i end end
    for _, i in ipairs(order) do
      local ok = c.diff[i] and c.args[i]:dim() >= 1
      for _, o in ipairs(outs) do ok = ok and o:dim() >= 1 and o:size(1) == c.args[i]:size(1) end
      if ok then c.bsrcs[#c.bsrcs + 1] = i end
    end
    if #c.bsrcs > 0 then m = m .. "b" end
  end
  c.modes = m
  local bs = #c.bsrcs > 0 and table.concat(c.bsrcs, ",") or "0"
  manifest[#manifest + 1] = table.concat({ c.id, m, #domains, table.concat(flags), bs, row[3] }, "\t")
  return c
end

-- nil when 'got' (a moongrad tensor) matches 'ref' (torch's, float64), else why not.
local function mismatch(got, ref, tol)
  if not is_tensor(got) then return "got a " .. type(got) .. ", not a tensor" end
  if shape_str(got:shape()) ~= shape_str(ref:shape()) then
    return "shape " .. shape_str(got:shape()) .. ", torch " .. shape_str(ref:shape())
  end
  local g, r = flatten(got:totable()), flatten(ref:totable())
  for i = 1, #r do
    if not (math.abs(g[i] - r[i]) <= tol * math.max(1, math.abs(r[i]))) then
      return ("element %d of %d is %.17g, torch %.17g"):format(i, #r, g[i], r[i])
    end
  end
end

local function describe_case(row, c)
  local s = {}
  for i, a in ipairs(c.args) do s[i] = shape_str(a:shape()) .. " " .. c.layouts[i] end
  return ("%s, case %d, %s, operands %s"):format(row[1], c.id, c.dtype, table.concat(s, ", "))
end

-- Checks one case in every mode it has; returns the first failure (or nil) and counts
-- the modes checked into 'done'.
local function check_case(row, c, done)
  local pre = "c" .. c.id
  local errf = io.open(dir .. "/out_" .. pre .. ".err")
  if errf then
    local msg = errf:read("a")
    errf:close()
    return "torch raised:\n" .. msg
  end
  local tol = row.tol or TOL[c.dtype]
  local outs = outputs(row[2](table.unpack(c.args)))
  if #outs ~= c.nout or exists(pre .. "_y" .. (#outs + 1)) or not exists(pre .. "_y" .. #outs) then
    return "the number of outputs differs from torch's"
  end
  local promoted = "float32"
  for _, a in ipairs(c.args) do if a.dtype == "float64" then promoted = "float64" end end
  for k, o in ipairs(outs) do
    local want_dtype = (type(row.dtype) == "table" and row.dtype[k]) or
                       (type(row.dtype) == "string" and row.dtype) or promoted
    local why = mismatch(o, get(pre .. "_y" .. k), tol)
    if not why and o.dtype ~= want_dtype then why = "dtype " .. o.dtype .. ", expected " .. want_dtype end
    if why then return "forward, output " .. k .. ": " .. why end
  end
  done.f = done.f + 1
  local function F(...) return single(outputs(row[2](...))) end
  if c.modes:find("v") then
    local _, pull = mg.vjp(F, table.unpack(c.args))
    local gs = table.pack(pull(c.ct))
    for i = 1, #c.args do
      if c.diff[i] then
        local why = mismatch(gs[i], get(pre .. "_g" .. i), tol)
        if why then return "VJP, gradient of argument " .. i .. ": " .. why end
      end
    end
    done.v = done.v + 1
  end
  if c.modes:find("j") then
    local _, t = mg.jvp(F, c.args, c.tangents)
    local why = mismatch(t, get(pre .. "_jvp"), tol)
    if why then return "JVP: " .. why end
    done.j = done.j + 1
  end
  if c.modes:find("J") then
    local dk = {}
    for i = 1, #c.args do if c.diff[i] then dk[#dk + 1] = c.args[i] end end
    for _, mode in ipairs { "rev", "fwd" } do
      -- mg.jacobian w.r.t. the first, tape:jacobian w.r.t. all at once
      local args, i1 = { table.unpack(c.args) }, nil
      for i = #c.args, 1, -1 do if c.diff[i] then i1 = i end end
      local J = mg.jacobian(function(x)
        args[i1] = x
        return F(table.unpack(args, 1, #c.args))
      end, c.args[i1], { mode = mode })
      local why = mismatch(J, get(pre .. "_J" .. i1), tol)
      if why then return ("jacobian (%s) w.r.t. argument %d: %s"):format(mode, i1, why) end
      local tape <close> = mg.GradientTape()
      tape:watch(dk)
      local y = tape:record(F, table.unpack(c.args))
      local Js = tape:jacobian(y, dk, { mode = mode, unconnected = "zero" })
      local k = 0
      for i = 1, #c.args do
        if c.diff[i] then
          k = k + 1
          why = mismatch(Js[k], get(pre .. "_J" .. i), tol)
          if why then return ("tape:jacobian (%s) w.r.t. all, argument %d: %s"):format(mode, i, why) end
        end
      end
    end
    done.J = done.J + 1
  end
  local srcs = {}                        -- those the op does not mix the batch of
  for _, i in ipairs(c.bsrcs) do if get(pre .. "_mix" .. i):item() == 0 then srcs[#srcs + 1] = i end end
  if #srcs > 0 then
    local function B(...) return batched(outputs(row[2](...))) end
    for _, mode in ipairs { "rev", "fwd" } do
      -- mg.batch_jacobian w.r.t. the first, tape:batch_jacobian w.r.t. all of them at once
      local args, i1 = { table.unpack(c.args) }, srcs[1]
      local J = mg.batch_jacobian(function(x)
        args[i1] = x
        return B(table.unpack(args, 1, #c.args))
      end, c.args[i1], { mode = mode })
      local why = mismatch(J, get(pre .. "_bjac" .. i1), tol)
      if why then return ("batch Jacobian (%s) w.r.t. argument %d: %s"):format(mode, i1, why) end
      if #srcs > 1 then
        local tape, list = mg.GradientTape(), {}
        for k, i in ipairs(srcs) do list[k] = c.args[i] end
        tape:watch(list)
        local y = tape:record(B, table.unpack(c.args))
        local Js = tape:batch_jacobian(y, list, { mode = mode })
        for k, i in ipairs(srcs) do
          why = mismatch(Js[k], get(pre .. "_bjac" .. i), tol)
          if why then
            return ("tape:batch_jacobian (%s) w.r.t. arguments {%s}, argument %d: %s"):format(
              mode, table.concat(srcs, ", "), i, why)
          end
        end
      end
    end
    done.b = done.b + 1
  end
  if c.modes:find("h") then
    local dk = {}
    for i = 1, #c.args do if c.diff[i] then dk[#dk + 1] = i end end
    -- <d<F, ct>/dx, ct2>: the VJP's own rules recorded by an outer tape, differentiated
    local function H(...)
      local xs, src = table.pack(...), {}
      for j, i in ipairs(dk) do src[j] = xs[i] end
      local tape <close> = mg.GradientTape()
      tape:watch(src)
      local y = tape:record(F, table.unpack(xs, 1, xs.n))
      local gs = tape:gradient(y, src, { output_gradients = { c.ct }, unconnected = "zero" })
      local total
      for j, i in ipairs(dk) do
        local t = (gs[j] * c.ct2[i]):sum()
        total = total and total + t or t
      end
      return total
    end
    local hs = mg.grad(H, { argnums = dk })(table.unpack(c.args))
    for j, i in ipairs(dk) do
      local why = mismatch(hs[j], get(pre .. "_h" .. i), tol)
      if why then return "second order (VJP of the VJP), argument " .. i .. ": " .. why end
    end
    done.h = done.h + 1
  end
  for i = 1, #c.args do                   -- no op wrote into its operands' storage
    local now = flatten(c.storage[i]:totable())
    for e, v in ipairs(c.stored[i]) do
      if not (now[e] == v or (now[e] ~= now[e] and v ~= v)) then
        return ("the storage of argument %d changed: element %d is %.17g, was %.17g"):format(
          i, e, now[e], v)
      end
    end
  end
end

local function check_row(row)
  local st = state[row]
  if st.err then error(st.err, 0) end
  local done, first = { f = 0, v = 0, j = 0, J = 0, b = 0, h = 0 }, nil
  for _, c in ipairs(st.cases) do
    local ok, why = pcall(check_case, row, c, done)
    if not ok then why = "moongrad raised: " .. tostring(why) end
    if why then first = describe_case(row, c) .. ": " .. why break end
  end
  if not first then
    for m in (row.modes or "fvjJbh"):gmatch(".") do
      if done[m] == 0 and (m == "f" or st.anydiff) and not (m == "h" and st.first_order) then
        first = ("%s: no case ran mode %s (for b, the row's shapes need a differentiable "
                 .. "argument whose dim 1 is the outputs', and an op that does not mix that dim; "
                 .. "else drop %s from modes)"):format(row[1], m, m)
      end
    end
  end
  if row.known then
    pending(first and ("known failure (" .. row.known .. "): " .. first)
            or ("known failure (" .. row.known .. ") no longer fails: remove 'known' from its row"))
    return
  end
  if first then error(first, 0) end
end

-- The rows to run, and each one's seed: SEED mixed with a hash (FNV-1a) of its name.
local RUN = {}
for _, row in ipairs(OPS) do
  if ONLY == nil or row[1]:find(ONLY) then RUN[#RUN + 1] = row end
end
local function row_seed(name)
  local h = 2166136261
  for i = 1, #name do h = ((h ~ name:byte(i)) * 16777619) & 0xffffffff end
  return (SEED * 7919 + h) & 0x7fffffff
end

describe("every op against PyTorch (forward, VJP, JVP, batch Jacobian)", function()
  setup(function()
    dir = support.tmpdir()
    local manifest, seen = {}, {}
    for _, row in ipairs(OPS) do
      assert(not seen[row[1]], "two rows are named " .. row[1])
      seen[row[1]] = true
    end
    for _, row in ipairs(RUN) do
      math.randomseed(row_seed(row[1]))
      mg.manual_seed(row_seed(row[1]))
      local st = { cases = {} }
      state[row] = st
      for _, d in ipairs(row[4]) do
        st.anydiff = st.anydiff or not NOT_DIFFERENTIABLE[d]
        st.first_order = st.first_order or FIRST_ORDER_ONLY[d]
      end
      local ok, err = pcall(function()
        for _, dtype in ipairs(DTYPES) do
          for k = 1, #LAYOUTS do st.cases[#st.cases + 1] = make_case(row, dtype, k, manifest) end
        end
      end)
      if not ok then st.err = row[1] .. ": making its cases raised: " .. tostring(err) end
    end
    support.write_file(dir .. "/ops.tsv", table.concat(manifest, "\n") .. "\n")
    support.torch_ref(dir, "ops")
  end)
  teardown(function()
    if os.getenv("MOONGRAD_OPS_KEEP") then print("torch_ops_spec: cases kept in " .. dir)
    else support.rmtree(dir) end
  end)

  for _, row in ipairs(RUN) do
    it(row[1], function() check_row(row) end)
  end
end)
