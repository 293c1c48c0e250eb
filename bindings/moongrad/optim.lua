-- moongrad.optim (mg.optim): the Keras 3 optimizers (SGD, RMSprop, Adam, AdamW, Adagrad,
-- Nadam), gradient clipping and the learning-rate schedules. An optimizer holds an ordered
-- array of Variables; opt:step(grads) takes the gradients in the same order (as tape:gradient
-- returns them for that array) and updates the Variables in place, unrecorded. One step does
-- what Keras's optimizer.apply does, in its order: clip the gradients (clipnorm, or
-- global_clipnorm, or clipvalue), decay the weights (weight_decay, decoupled: p -= p wd lr),
-- the optimizer's own update with the learning rate at the current iteration, and then each
-- updated Variable's constraint (nn.constraint(v), a function of the Variable returning its
-- new value), if it has one.
local mg = require "moongrad"

local getmetatable, ipairs, pairs, rawget, setmetatable, tostring, type = getmetatable, ipairs, pairs, rawget,
      setmetatable, tostring, type
local debug, math, string, table = debug, math, string, table
local loaded = package.loaded
local _ENV = nil

local optim = {}
local is_tensor, shapestr = mg.is_tensor, mg.shapestr

-- Errors: raisef inside; every public function and method goes through checks.api
-- (published at the end of this file), so messages point at the user's line.
local checks = mg._checks(debug.getinfo(1, "S").source)
local raise, raisef, describe, check_opts = checks.raise, checks.raisef, checks.describe, checks.check_opts

---------------------------------------------------------------- argument checks

-- The Variables to optimize: an array of Variables, or a layer (anything with parameters()).
local function check_params(fn, params)
  if type(params) == "table" and type(params.parameters) == "function" then params = params:parameters() end
  if type(params) ~= "table" or is_tensor(params) then
    raisef("%s: params must be an array of Variables, got %s", fn, describe(params))
  end
  local out = {}
  for i, p in ipairs(params) do
    if not is_tensor(p) or not p:is_variable() then
      raisef("%s: params[%d] is %s, expected a Variable", fn, i, is_tensor(p) and "a plain tensor" or describe(p))
    end
    out[i] = p
  end
  for k in pairs(params) do
    if type(k) ~= "number" or k < 1 or k > #out then raisef("%s: params must be an array (bad key %s)", fn, tostring(k)) end
  end
  if #out == 0 then raisef("%s: params is empty", fn) end
  return out
end

local function check_number(fn, name, v, default, lo, hi, open_lo)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v < lo or v > hi or (open_lo and v == lo) then
    raisef("%s: %s must be a number in %s%g, %g], got %s", fn, name, open_lo and "(" or "[", lo, hi, tostring(v))
  end
  return v
end

local function callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return mt ~= nil and mt.__call ~= nil
end

-- The gradient for params[i], checked; nil when absent (unconnected parameters are skipped).
local function grad_for(fn, p, grads, i)
  local g = grads[i]
  if g == nil then return nil end
  if not is_tensor(g) then raisef("%s: gradient %d is %s, expected a tensor", fn, i, describe(g)) end
  if shapestr(g) ~= shapestr(p) then
    raisef("%s: gradient %d has shape %s, expected %s (the shape of '%s')", fn, i, shapestr(g), shapestr(p),
      tostring(p.name))
  end
  return g
end

-- Checks every gradient before anything is updated (a bad one changes nothing).
local function check_grads(fn, grads, params)
  if type(grads) ~= "table" or is_tensor(grads) then
    raisef("%s: step expects an array of gradients parallel to params, got %s", fn, describe(grads))
  end
  for k in pairs(grads) do
    if k ~= "n" and (type(k) ~= "number" or k < 1 or k > #params or k ~= math.floor(k)) then
      raisef("%s: gradient index %s is out of range for %d params", fn, tostring(k), #params)
    end
  end
  for i, p in ipairs(params) do grad_for(fn, p, grads, i) end
  local n = math.type(grads.n) == "integer" and grads.n or #grads   -- holes count when 'n' says
  if n ~= #params then
    raisef("%s: step got %d gradients for %d params (nil for a parameter without a gradient, "
           .. "with 'n' set to the length when the last is nil, as tape:gradient does)", fn, n, #params)
  end
end


---------------------------------------------------------------- clipping

-- The global L2 norm of an array of tensors (nil entries skipped), a Lua number.
local function global_norm(grads, n)
  local sq = 0
  for i = 1, n do
    local g = grads[i]
    if g then sq = sq + (g * g):sum():item() end
  end
  return math.sqrt(sq)
end

-- optim.clip_by_global_norm(grads, max_norm) -> clipped, norm: Keras's clip_by_global_norm,
-- each gradient times max_norm * min(1 / norm, 1 / max_norm) (a non-finite norm gives NaN).
function optim.clip_by_global_norm(grads, max_norm)
  if type(grads) ~= "table" or is_tensor(grads) then
    raisef("clip_by_global_norm: grads must be an array of tensors, got %s", describe(grads))
  end
  check_number("clip_by_global_norm", "max_norm", max_norm, nil, 0, math.huge, true)
  if max_norm == nil then raise("clip_by_global_norm: max_norm must be a number > 0, got nil") end
  local n = 0
  for k, g in pairs(grads) do
    if type(k) ~= "number" or k < 1 or k ~= math.floor(k) then
      raisef("clip_by_global_norm: grads must be an array (bad key %s)", tostring(k))
    end
    if not is_tensor(g) then raisef("clip_by_global_norm: grads[%d] is %s, expected a tensor", k, describe(g)) end
    if k > n then n = k end
  end
  local out, norm = {}, 0
  mg.no_grad(function()
    norm = global_norm(grads, n)
    local scale = max_norm * math.min(1 / norm, 1 / max_norm) + (norm - norm)
    for i = 1, n do
      if grads[i] then out[i] = grads[i] * scale end
    end
  end)
  return out, norm
end

-- The gradients after the optimizer's clipping option (new tensors, or the caller's where clipping
-- leaves them as they are; the caller's are never written).
local function clip_gradients(self, grads, n)
  if self.clipnorm then
    local c, out = self.clipnorm, {}
    for i = 1, n do
      local g = grads[i]
      if g then
        local norm = math.sqrt((g * g):sum():item())
        out[i] = g * (c / math.max(norm, c))
      end
    end
    return out
  elseif self.global_clipnorm then
    local norm, out = global_norm(grads, n), {}
    local scale = self.global_clipnorm * math.min(1 / norm, 1 / self.global_clipnorm) + (norm - norm)
    for i = 1, n do
      if grads[i] then out[i] = scale == 1 and grads[i] or grads[i] * scale end   -- g * 1 is g
    end
    return out
  elseif self.clipvalue then
    local c, out = self.clipvalue, {}
    for i = 1, n do
      if grads[i] then out[i] = mg.clamp(grads[i], -c, c) end
    end
    return out
  end
  return grads
end

---------------------------------------------------------------- the optimizer base

local Optimizer = {}
Optimizer.__index = Optimizer

local COMMON = { "lr", "learning_rate", "clipnorm", "clipvalue", "global_clipnorm", "weight_decay" }

-- A learning rate: a number >= 0, a schedule (optim.ExponentialDecay etc.) or a function of
-- the iteration count returning a number.
local function check_lr(fn, opts, default)
  local lr = opts.lr
  if opts.learning_rate ~= nil then
    if lr ~= nil then raisef("%s: give lr or learning_rate, not both", fn) end
    lr = opts.learning_rate
  end
  if lr == nil then return default end
  if type(lr) == "number" then return check_number(fn, "lr", lr, default, 0, math.huge) end
  if not callable(lr) then raisef("%s: lr must be a number, a schedule or a function, got %s", fn, describe(lr)) end
  return lr
end

-- A new optimizer of class 'cls' over 'params' with the options shared by all (checked);
-- 'own' lists the class's own option names, 'lr' is its default learning rate.
local function new(cls, params, opts, own, lr, wd)
  local fn = cls.__name
  opts = check_opts(fn, opts, checks.names(COMMON, own))
  local self = setmetatable({ params = check_params(fn, params), iterations = 0, slots = {}, slot_names = {},
    lr = check_lr(fn, opts, lr),
    clipnorm = check_number(fn, "clipnorm", opts.clipnorm, nil, 0, math.huge, true),
    clipvalue = check_number(fn, "clipvalue", opts.clipvalue, nil, 0, math.huge, true),
    global_clipnorm = check_number(fn, "global_clipnorm", opts.global_clipnorm, nil, 0, math.huge, true),
    weight_decay = check_number(fn, "weight_decay", opts.weight_decay, wd, 0, math.huge) }, cls)
  local nclip = (self.clipnorm and 1 or 0) + (self.clipvalue and 1 or 0) + (self.global_clipnorm and 1 or 0)
  if nclip > 1 then raisef("%s: only one of clipnorm, clipvalue and global_clipnorm can be set", fn) end
  if self.weight_decay == 0 then self.weight_decay = nil end
  return self, opts
end

-- Adds the per-parameter state 'name', one tensor per parameter filled with 'value'.
local function add_slot(self, name, value)
  local s = {}
  for i, p in ipairs(self.params) do s[i] = mg.full(p:shape(), value or 0, { dtype = p.dtype }) end
  self.slots[name] = s
  self.slot_names[#self.slot_names + 1] = name
  return s
end

-- The function giving a Variable's constraint (mg.nn's nn.constraint(v): layers keep the
-- constraint of each Variable their *_constraint options set), or nil while mg.nn, and so
-- any layer, is not loaded.
local function constraint_lookup()
  local nn = rawget(mg, "nn") or loaded["moongrad.nn"]
  if type(nn) == "table" and type(nn.constraint) == "function" then return nn.constraint end
  return nil
end

-- opt:get_lr(): the learning rate the next step uses (a schedule evaluated at opt.iterations).
function Optimizer:get_lr()
  local lr = self.lr
  if type(lr) == "number" then return lr end
  local v = lr(self.iterations)
  if type(v) ~= "number" or v ~= v then
    raisef("%s: the learning-rate schedule returned %s at step %d, expected a number", self.__name,
      tostring(v), self.iterations)
  end
  return v
end

-- opt:step(grads): one update from an array of gradients parallel to params (nil skipped).
function Optimizer:step(grads)
  local fn = self.__name
  check_grads(fn, grads, self.params)
  local lr = self:get_lr()
  local t = self.iterations + 1
  local ps, n = self.params, #self.params
  mg.no_grad(function()
    local gs = clip_gradients(self, grads, n)
    local wd = self.weight_decay
    if wd then
      for i = 1, n do
        if gs[i] then ps[i]:assign(ps[i] - ps[i] * (wd * lr)) end
      end
    end
    if self.begin_step then self:begin_step(t) end
    for i = 1, n do
      if gs[i] then self:update(i, ps[i], gs[i], lr, t) end
    end
    local constraint = constraint_lookup()
    for i = 1, n do
      local p = ps[i]
      local c = gs[i] and constraint and constraint(p)
      if c then
        local v = c(p)
        if not is_tensor(v) or shapestr(v) ~= shapestr(p) then
          raisef("%s: the constraint of '%s' returned %s, expected a tensor of shape %s", fn, tostring(p.name),
            describe(v), shapestr(p))
        end
        p:assign(v)
      end
    end
  end)
  self.iterations = t
end

-- opt:state(): the optimizer's state by stable names, for checkpoints: "iterations" (a
-- number), "<slot>.<i>" (a copy of the slot tensor of params[i]: "momentum.1", "velocity.2",
-- ...) and the optimizer's scalar counters ("u_product" for Nadam).
function Optimizer:state()
  local st = { iterations = self.iterations }
  for _, name in ipairs(self.slot_names) do
    for i, t in ipairs(self.slots[name]) do st[name .. "." .. i] = t:clone() end
  end
  for _, k in ipairs(self.counters or {}) do st[k] = self[k] end
  return st
end

-- opt:load_state(st): restores what opt:state() gave (names, shapes checked first; nothing
-- changes on a bad table). Tensors are copied into the parameters' dtypes.
function Optimizer:load_state(st)
  local fn = self.__name .. ":load_state"
  if type(st) ~= "table" or is_tensor(st) then raisef("%s: expected a table, got %s", fn, describe(st)) end
  local want = self:state()
  for k, v in pairs(st) do
    local w = want[k]
    if w == nil then raisef("%s: unknown entry '%s'", fn, tostring(k)) end
    if is_tensor(w) then
      if not is_tensor(v) or shapestr(v) ~= shapestr(w) then
        raisef("%s: '%s' must be a tensor of shape %s, got %s", fn, k, shapestr(w), describe(v))
      end
    elseif type(v) ~= "number" then
      raisef("%s: '%s' must be a number, got %s", fn, k, describe(v))
    end
  end
  for k in pairs(want) do
    if st[k] == nil then raisef("%s: missing entry '%s'", fn, k) end
  end
  if st.iterations ~= math.floor(st.iterations) or st.iterations < 0 then
    raisef("%s: 'iterations' must be a non-negative integer, got %s", fn, tostring(st.iterations))
  end
  for _, name in ipairs(self.slot_names) do
    local s = self.slots[name]
    for i = 1, #s do s[i] = st[name .. "." .. i]:to(self.params[i].dtype):clone() end
  end
  for _, k in ipairs(self.counters or {}) do self[k] = st[k] end
  self.iterations = math.tointeger(st.iterations)
end

local function lr_string(self)
  if type(self.lr) == "number" then return string.format("lr=%g", self.lr) end
  return "lr=" .. tostring(self.lr)
end

local function class(name)
  local c = setmetatable({ __name = name }, { __index = Optimizer })
  c.__index = c
  c.__tostring = function(self)
    return string.format("%s(%s%s, %d params)", name, lr_string(self), self:describe(), #self.params)
  end
  return c
end

---------------------------------------------------------------- SGD

local SGD = class("SGD")

-- optim.SGD(params [, {lr=0.01, momentum=0, nesterov=false}]): Keras's update
-- v = momentum v - lr g; p = p + v (nesterov: p = p + momentum v - lr g), which for a fixed lr
-- is PyTorch's SGD exactly.
function optim.SGD(params, opts)
  local self
  self, opts = new(SGD, params, opts, { "momentum", "nesterov" }, 0.01)
  self.momentum = check_number("SGD", "momentum", opts.momentum, 0, 0, 1)
  self.nesterov = opts.nesterov and true or false
  if self.nesterov and self.momentum == 0 then raisef("SGD: nesterov needs a momentum > 0") end
  if self.momentum ~= 0 then add_slot(self, "momentum") end
  return self
end

function SGD:update(i, p, g, lr)
  local mu = self.momentum
  if mu == 0 then return p:assign_sub(g * lr) end
  local m = self.slots.momentum[i] * mu - g * lr
  self.slots.momentum[i] = m
  p:assign_add(self.nesterov and m * mu - g * lr or m)
end

function SGD:describe()
  return string.format(", momentum=%g%s", self.momentum, self.nesterov and ", nesterov" or "")
end

---------------------------------------------------------------- RMSprop

local RMSprop = class("RMSprop")

-- optim.RMSprop(params [, {lr=1e-3, rho=0.9, momentum=0, eps=1e-7, centered=false}]): Keras's
-- v = rho v + (1 - rho) g^2; centered: a = rho a + (1 - rho) g, d = v - a^2 + eps, else
-- d = v + eps; inc = lr g / sqrt(d); momentum: m = momentum m + inc, p -= m, else p -= inc.
-- (eps is inside the square root; PyTorch adds it to sqrt(d) instead.)
function optim.RMSprop(params, opts)
  local self
  self, opts = new(RMSprop, params, opts, { "rho", "momentum", "eps", "centered" }, 1e-3)
  self.rho = check_number("RMSprop", "rho", opts.rho, 0.9, 0, 1)
  self.momentum = check_number("RMSprop", "momentum", opts.momentum, 0, 0, 1)
  self.eps = check_number("RMSprop", "eps", opts.eps, 1e-7, 0, math.huge)
  self.centered = opts.centered and true or false
  add_slot(self, "velocity")
  if self.momentum > 0 then add_slot(self, "momentum") end
  if self.centered then add_slot(self, "average_gradient") end
  return self
end

function RMSprop:update(i, p, g, lr)
  local rho, S = self.rho, self.slots
  local v0 = S.velocity[i]
  if not self.centered and self.momentum == 0 and g.dtype == p.dtype and v0.dtype == p.dtype
     and p:is_contiguous() and g:is_contiguous() and v0:is_contiguous() then
    mg._rmsprop_update(p, v0, g, lr, rho, self.eps, 1)    -- the ops below in one pass, in place
    return
  end
  local v = S.velocity[i] * rho + (g * g) * (1 - rho)
  S.velocity[i] = v
  local d
  if self.centered then
    local a = S.average_gradient[i] * rho + g * (1 - rho)
    S.average_gradient[i] = a
    d = v - a * a + self.eps
  else
    d = v + self.eps
  end
  local inc = (g * lr) / mg.sqrt(d)
  if self.momentum > 0 then
    local m = S.momentum[i] * self.momentum + inc
    S.momentum[i] = m
    p:assign_sub(m)
  else
    p:assign_sub(inc)
  end
end

function RMSprop:describe()
  return string.format(", rho=%g, momentum=%g, eps=%g%s", self.rho, self.momentum, self.eps,
    self.centered and ", centered" or "")
end

---------------------------------------------------------------- Adam, AdamW

local Adam, AdamW = class("Adam"), class("AdamW")

local ADAM_OPTS = { "beta1", "beta2", "eps", "variant", "amsgrad" }

local function adam_init(self, opts, fn)
  local variant = opts.variant or "keras"
  if variant ~= "keras" and variant ~= "pytorch" then
    raisef("%s: variant must be \"keras\" or \"pytorch\", got %s", fn, tostring(variant))
  end
  self.variant = variant
  self.beta1 = check_number(fn, "beta1", opts.beta1, 0.9, 0, 1 - 1e-16)
  self.beta2 = check_number(fn, "beta2", opts.beta2, 0.999, 0, 1 - 1e-16)
  self.eps = check_number(fn, "eps", opts.eps, variant == "keras" and 1e-7 or 1e-8, 0, math.huge)
  self.amsgrad = opts.amsgrad and true or false
  add_slot(self, "momentum")
  add_slot(self, "velocity")
  if self.amsgrad then add_slot(self, "velocity_hat") end
  return self
end

-- optim.Adam(params [, {lr=1e-3, beta1=0.9, beta2=0.999, eps=, amsgrad=false,
-- variant="keras"}]), with bias correction. variant "keras" (eps defaults to 1e-7, Keras's):
--   p -= lr sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
-- variant "pytorch" (eps defaults to 1e-8, torch.optim.Adam's):
--   p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
-- The two differ only in where eps enters. amsgrad uses the running maximum of v.
function optim.Adam(params, opts)
  local self
  self, opts = new(Adam, params, opts, ADAM_OPTS, 1e-3)
  return adam_init(self, opts, "Adam")
end

-- optim.AdamW(params [, {lr=1e-3, weight_decay=0.004, ...Adam's}]): Adam with Keras's
-- default decoupled weight decay (p -= p weight_decay lr before the Adam update).
function optim.AdamW(params, opts)
  local self
  self, opts = new(AdamW, params, opts, ADAM_OPTS, 1e-3, 0.004)
  return adam_init(self, opts, "AdamW")
end

function Adam:update(i, p, g, lr, t)
  local b1, b2, S = self.beta1, self.beta2, self.slots
  local c1, c2 = 1 - b1 ^ t, 1 - b2 ^ t
  local m0, v0 = S.momentum[i], S.velocity[i]
  if not self.amsgrad and g.dtype == p.dtype and m0.dtype == p.dtype and v0.dtype == p.dtype
     and p:is_contiguous() and g:is_contiguous() and m0:is_contiguous() and v0:is_contiguous() then
    -- the ops below in one pass, in place: none of their temporaries
    mg._adam_update(p, m0, v0, g, lr, b1, b2, self.eps, c1, c2, self.variant == "keras")
    return
  end
  local m = S.momentum[i] + (g - S.momentum[i]) * (1 - b1)
  local v = S.velocity[i] + (g * g - S.velocity[i]) * (1 - b2)
  S.momentum[i], S.velocity[i] = m, v
  if self.amsgrad then
    v = mg.maximum(S.velocity_hat[i], v)
    S.velocity_hat[i] = v
  end
  if self.variant == "keras" then
    p:assign_sub((m * (lr * math.sqrt(c2) / c1)) / (mg.sqrt(v) + self.eps))
  else
    p:assign_sub((m * (lr / c1)) / (mg.sqrt(v * (1 / c2)) + self.eps))
  end
end
AdamW.update = Adam.update

function Adam:describe()
  return string.format(", beta1=%g, beta2=%g, eps=%g%s, %s%s", self.beta1, self.beta2, self.eps,
    self.amsgrad and ", amsgrad" or "", self.variant,
    self.weight_decay and string.format(", weight_decay=%g", self.weight_decay) or "")
end
AdamW.describe = Adam.describe

---------------------------------------------------------------- Adagrad

local Adagrad = class("Adagrad")

-- optim.Adagrad(params [, {lr=1e-3, initial_accumulator_value=0.1, eps=1e-7}]): Keras's
-- a += g^2; p -= lr g / sqrt(a + eps).
function optim.Adagrad(params, opts)
  local self
  self, opts = new(Adagrad, params, opts, { "initial_accumulator_value", "eps" }, 1e-3)
  self.initial_accumulator_value = check_number("Adagrad", "initial_accumulator_value",
    opts.initial_accumulator_value, 0.1, 0, math.huge)
  self.eps = check_number("Adagrad", "eps", opts.eps, 1e-7, 0, math.huge)
  add_slot(self, "accumulator", self.initial_accumulator_value)
  return self
end

function Adagrad:update(i, p, g, lr)
  local a = self.slots.accumulator[i] + g * g
  self.slots.accumulator[i] = a
  p:assign_sub((g * lr) / mg.sqrt(a + self.eps))
end

function Adagrad:describe()
  return string.format(", initial_accumulator_value=%g, eps=%g", self.initial_accumulator_value, self.eps)
end

---------------------------------------------------------------- Nadam

local Nadam = class("Nadam")

-- optim.Nadam(params [, {lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7}]): Keras's Nadam, with the
-- momentum cache u_t = beta1 (1 - 0.5 * 0.96^t) and u_product = u_1 ... u_t:
--   m_hat = u_(t+1) m / (1 - u_product u_(t+1)) + (1 - u_t) g / (1 - u_product)
--   p -= lr m_hat / (sqrt(v / (1 - beta2^t)) + eps)
function optim.Nadam(params, opts)
  local self
  self, opts = new(Nadam, params, opts, { "beta1", "beta2", "eps" }, 1e-3)
  self.beta1 = check_number("Nadam", "beta1", opts.beta1, 0.9, 0, 1 - 1e-16)
  self.beta2 = check_number("Nadam", "beta2", opts.beta2, 0.999, 0, 1 - 1e-16)
  self.eps = check_number("Nadam", "eps", opts.eps, 1e-7, 0, math.huge)
  self.u_product, self.counters = 1, { "u_product" }
  add_slot(self, "momentum")
  add_slot(self, "velocity")
  return self
end

local function nadam_u(b1, t) return b1 * (1 - 0.5 * 0.96 ^ t) end

function Nadam:begin_step(t)
  self.u_product = self.u_product * nadam_u(self.beta1, t)
end

function Nadam:update(i, p, g, lr, t)
  local b1, b2, S = self.beta1, self.beta2, self.slots
  local u_t, u_t1 = nadam_u(b1, t), nadam_u(b1, t + 1)
  local up_t = self.u_product
  local up_t1 = up_t * u_t1
  local m = S.momentum[i] + (g - S.momentum[i]) * (1 - b1)
  local v = S.velocity[i] + (g * g - S.velocity[i]) * (1 - b2)
  S.momentum[i], S.velocity[i] = m, v
  local m_hat = m * (u_t1 / (1 - up_t1)) + g * ((1 - u_t) / (1 - up_t))
  local v_hat = v * (1 / (1 - b2 ^ t))
  p:assign_sub((m_hat * lr) / (mg.sqrt(v_hat) + self.eps))
end

function Nadam:describe()
  return string.format(", beta1=%g, beta2=%g, eps=%g", self.beta1, self.beta2, self.eps)
end

---------------------------------------------------------------- learning-rate schedules

-- A schedule is a callable table: sched(step) -> the learning rate at 'step' (0-based, the
-- optimizer's iteration count before the step), a Lua number.
local function schedule(name, fields, fn)
  fields.__name = name
  return setmetatable(fields, {
    __name = name,
    __call = checks.api(nil, function(self, step)
      if type(step) ~= "number" or step ~= step or step < 0 then
        raisef("%s: step must be a number >= 0, got %s", name, tostring(step))
      end
      return fn(self, step)
    end),
    __tostring = function() return name .. "(...)" end,
  })
end

local function check_positive(fn, what, v)
  if type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge then
    raisef("%s: %s must be a positive number, got %s", fn, what, tostring(v))
  end
  return v
end

-- optim.ExponentialDecay(initial_learning_rate, decay_steps, decay_rate [, {staircase=false}]):
-- lr0 * decay_rate ^ (step / decay_steps), the exponent floored with staircase.
function optim.ExponentialDecay(lr0, decay_steps, decay_rate, opts)
  local fn = "ExponentialDecay"
  opts = check_opts(fn, opts, { staircase = true })
  check_number(fn, "initial_learning_rate", lr0, nil, 0, math.huge)
  check_positive(fn, "decay_steps", decay_steps)
  check_number(fn, "decay_rate", decay_rate, nil, 0, math.huge)
  if lr0 == nil or decay_rate == nil then raisef("%s: initial_learning_rate and decay_rate must be numbers", fn) end
  return schedule(fn, { initial_learning_rate = lr0, decay_steps = decay_steps, decay_rate = decay_rate,
    staircase = opts.staircase and true or false }, function(s, step)
    local p = step / s.decay_steps
    if s.staircase then p = math.floor(p) end
    return s.initial_learning_rate * s.decay_rate ^ p
  end)
end

-- optim.PiecewiseConstantDecay(boundaries, values): values[1] while step <= boundaries[1],
-- values[k + 1] while boundaries[k] < step <= boundaries[k + 1], values[#values] after the
-- last boundary. #values must be #boundaries + 1; boundaries increasing.
function optim.PiecewiseConstantDecay(boundaries, values)
  local fn = "PiecewiseConstantDecay"
  if type(boundaries) ~= "table" or type(values) ~= "table" then
    raisef("%s: boundaries and values must be arrays of numbers", fn)
  end
  if #boundaries < 1 or #values ~= #boundaries + 1 then
    raisef("%s: values must have one more entry than boundaries (got %d and %d)", fn, #values, #boundaries)
  end
  for i, b in ipairs(boundaries) do
    if type(b) ~= "number" or (i > 1 and b <= boundaries[i - 1]) then
      raisef("%s: boundaries must be increasing numbers (entry %d is %s)", fn, i, tostring(b))
    end
  end
  for i, v in ipairs(values) do
    if type(v) ~= "number" then raisef("%s: values[%d] is %s, expected a number", fn, i, describe(v)) end
  end
  local b, v = table.move(boundaries, 1, #boundaries, 1, {}), table.move(values, 1, #values, 1, {})
  return schedule(fn, { boundaries = b, values = v }, function(s, step)
    for k, bk in ipairs(s.boundaries) do
      if step <= bk then return s.values[k] end
    end
    return s.values[#s.values]
  end)
end

-- optim.CosineDecay(initial_learning_rate, decay_steps [, {alpha=0, warmup_target=nil,
-- warmup_steps=0}]): Keras's cosine decay. Without warmup_target:
--   lr0 * ((1 - alpha) * 0.5 (1 + cos(pi min(step, decay_steps) / decay_steps)) + alpha);
-- with it, a linear warmup from lr0 to warmup_target over warmup_steps, then the cosine decay
-- from warmup_target over decay_steps.
function optim.CosineDecay(lr0, decay_steps, opts)
  local fn = "CosineDecay"
  opts = check_opts(fn, opts, { alpha = true, warmup_target = true, warmup_steps = true })
  check_number(fn, "initial_learning_rate", lr0, nil, 0, math.huge)
  if lr0 == nil then raisef("%s: initial_learning_rate must be a number", fn) end
  check_positive(fn, "decay_steps", decay_steps)
  local s = { initial_learning_rate = lr0, decay_steps = decay_steps,
    alpha = check_number(fn, "alpha", opts.alpha, 0, 0, 1),
    warmup_target = check_number(fn, "warmup_target", opts.warmup_target, nil, 0, math.huge),
    warmup_steps = check_number(fn, "warmup_steps", opts.warmup_steps, 0, 0, math.huge) }
  if s.warmup_target ~= nil and s.warmup_steps <= 0 then
    raisef("%s: warmup_target needs warmup_steps > 0", fn)
  end
  local function decay(sc, step, from)
    local cosine = 0.5 * (1 + math.cos(math.pi * step / sc.decay_steps))
    return from * ((1 - sc.alpha) * cosine + sc.alpha)
  end
  return schedule(fn, s, function(sc, step)
    if sc.warmup_target == nil then return decay(sc, math.min(step, sc.decay_steps), sc.initial_learning_rate) end
    step = math.min(step, sc.decay_steps + sc.warmup_steps)
    if step < sc.warmup_steps then
      return (sc.warmup_target - sc.initial_learning_rate) * (step / sc.warmup_steps) + sc.initial_learning_rate
    end
    return decay(sc, step - sc.warmup_steps, sc.warmup_target)
  end)
end

---------------------------------------------------------------- publishing

-- The module's functions and the optimizers' shared methods (step, get_lr, state,
-- load_state); the schedules' __call is an api of its own (schedule above).
checks.publish(optim, Optimizer)

return optim
