-- moongrad.optim (mg.optim): SGD with momentum and Adam. An optimizer holds an ordered array
-- of Variables; opt:step(grads) takes the gradients in the same order (as tape:gradient
-- returns them for that array) and updates the Variables in place, unrecorded.
local mg = require "moongrad"

local ipairs, pairs, setmetatable, tostring, type = ipairs, pairs, setmetatable, tostring, type
local debug, math, string = debug, math, string
local _ENV = nil

local optim = {}
local is_tensor, shapestr = mg.is_tensor, mg.shapestr

-- Errors: raisef inside; every public function and method goes through checks.api
-- (published at the end of this file), so messages point at the user's line.
local checks = mg._checks(debug.getinfo(1, "S").source)
local raisef, describe, check_opts = checks.raisef, checks.describe, checks.check_opts

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

local function zeros_like(p) return mg.zeros(p:shape(), { dtype = p.dtype }) end

---------------------------------------------------------------- SGD

local SGD = { __name = "SGD" }
SGD.__index = SGD

-- optim.SGD(params [, {lr=0.01, momentum=0, nesterov=false}]): Keras's update
-- v = momentum v - lr g; p = p + v (nesterov: p = p + momentum v - lr g), which for a fixed lr
-- is PyTorch's SGD exactly.
function optim.SGD(params, opts)
  opts = check_opts("SGD", opts, { lr = true, momentum = true, nesterov = true })
  local self = setmetatable({ params = check_params("SGD", params), iterations = 0,
    lr = check_number("SGD", "lr", opts.lr, 0.01, 0, math.huge),
    momentum = check_number("SGD", "momentum", opts.momentum, 0, 0, 1),
    nesterov = opts.nesterov and true or false, velocity = {} }, SGD)
  if self.nesterov and self.momentum == 0 then raisef("SGD: nesterov needs a momentum > 0") end
  return self
end

-- opt:step(grads): one update from an array of gradients parallel to params (nil skipped).
function SGD:step(grads)
  check_grads("SGD", grads, self.params)
  local lr, mu = self.lr, self.momentum
  mg.no_grad(function()
    for i, p in ipairs(self.params) do
      local g = grads[i]
      if g then
        if mu == 0 then
          p:assign_sub(g * lr)
        else
          local v = mu * (self.velocity[i] or zeros_like(p)) - lr * g
          self.velocity[i] = v
          p:assign_add(self.nesterov and mu * v - lr * g or v)
        end
      end
    end
  end)
  self.iterations = self.iterations + 1
end

function SGD:__tostring()
  return string.format("SGD(lr=%g, momentum=%g%s, %d params)", self.lr, self.momentum,
    self.nesterov and ", nesterov" or "", #self.params)
end

---------------------------------------------------------------- Adam

local Adam = { __name = "Adam" }
Adam.__index = Adam

-- optim.Adam(params [, {lr=1e-3, beta1=0.9, beta2=0.999, eps=, variant="keras"}]), with bias
-- correction. variant "keras" (eps defaults to 1e-7, Keras's):
--   p -= lr sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
-- variant "pytorch" (eps defaults to 1e-8, torch.optim.Adam's):
--   p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
-- The two differ only in where eps enters.
function optim.Adam(params, opts)
  opts = check_opts("Adam", opts, { lr = true, beta1 = true, beta2 = true, eps = true, variant = true })
  local variant = opts.variant or "keras"
  if variant ~= "keras" and variant ~= "pytorch" then
    raisef("Adam: variant must be \"keras\" or \"pytorch\", got %s", tostring(variant))
  end
  return setmetatable({ params = check_params("Adam", params), iterations = 0, variant = variant,
    lr = check_number("Adam", "lr", opts.lr, 1e-3, 0, math.huge),
    beta1 = check_number("Adam", "beta1", opts.beta1, 0.9, 0, 1 - 1e-16),
    beta2 = check_number("Adam", "beta2", opts.beta2, 0.999, 0, 1 - 1e-16),
    eps = check_number("Adam", "eps", opts.eps, variant == "keras" and 1e-7 or 1e-8, 0, math.huge),
    m = {}, v = {} }, Adam)
end

-- opt:step(grads): one update from an array of gradients parallel to params (nil skipped).
function Adam:step(grads)
  check_grads("Adam", grads, self.params)
  local t = self.iterations + 1
  local b1, b2, eps, lr = self.beta1, self.beta2, self.eps, self.lr
  local c1, c2 = 1 - b1 ^ t, 1 - b2 ^ t
  mg.no_grad(function()
    for i, p in ipairs(self.params) do
      local g = grads[i]
      if g then
        local m = b1 * (self.m[i] or zeros_like(p)) + (1 - b1) * g
        local v = b2 * (self.v[i] or zeros_like(p)) + (1 - b2) * (g * g)
        self.m[i], self.v[i] = m, v
        if self.variant == "keras" then
          p:assign_sub(m * (lr * math.sqrt(c2) / c1) / (mg.sqrt(v) + eps))
        else
          p:assign_sub((m * (lr / c1)) / (mg.sqrt(v * (1 / c2)) + eps))
        end
      end
    end
  end)
  self.iterations = t
end

function Adam:__tostring()
  return string.format("Adam(lr=%g, beta1=%g, beta2=%g, eps=%g, %s, %d params)", self.lr, self.beta1,
    self.beta2, self.eps, self.variant, #self.params)
end

---------------------------------------------------------------- publishing

checks.publish(optim, SGD, Adam)

return optim
