-- moongrad.keras_names: what Keras calls by name, for the layers of moongrad.nn: activations,
-- initializers, regularizers, constraints (keras/src/{activations,initializers,regularizers,
-- constraints}), each given as a name ("glorot_uniform"), a table with the name first and
-- Keras's parameters as fields ({"orthogonal", gain = 2}), or a Lua function; and the seeded
-- generator that draws dropout masks. Internal: nn documents what the layers accept.
local mg = require "moongrad"

local ipairs, math, pairs, pcall, setmetatable, tostring, type = ipairs, math, pairs, pcall, setmetatable, tostring, type
local debug, string, table = debug, string, table
local _ENV = nil

local K = {}
local is_tensor, shapestr = mg.is_tensor, mg.shapestr
local checks = mg._checks(debug.getinfo(1, "S").source)   -- nn's public functions report them
local raisef, describe = checks.raisef, checks.describe

local EPSILON = 1e-7                                   -- keras.backend.epsilon()

-- A name-or-table spec split into its name and its parameter table (never nil).
local function split_spec(fn, what, spec)
  if type(spec) == "string" then return spec, {} end
  if type(spec) == "table" and not is_tensor(spec) and type(spec[1]) == "string" then
    for k in pairs(spec) do
      if k ~= 1 and type(k) ~= "string" then
        raisef("%s: %s %s: parameters must be named fields", fn, what, spec[1])
      end
    end
    return spec[1], spec
  end
  return nil
end

-- Checks that 'params' has only the keys in 'allowed' (besides [1]) and fills the defaults.
local function params_of(fn, what, name, params, defaults)
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  for k, v in pairs(params) do
    if k ~= 1 then
      if defaults[k] == nil then raisef("%s: %s %s has no parameter '%s'", fn, what, name, tostring(k)) end
      if type(v) ~= type(defaults[k]) then
        raisef("%s: %s %s: parameter '%s' must be a %s, got %s", fn, what, name, k, type(defaults[k]), describe(v))
      end
      out[k] = v
    end
  end
  return out
end

---------------------------------------------------------------- activations

-- Keras's activations (keras/src/activations/activations.py) by name. The C ops are looked up
-- in mg when the activation runs, so an op added to mg later serves the name at once.
local function op(name, ...)
  local extra = table.pack(...)
  return function(x)
    local f = mg[name]
    if f == nil then raisef("activation %s: this build has no mg.%s", name, name) end
    return f(x, table.unpack(extra, 1, extra.n))
  end
end

local ACTIVATIONS = {
  linear = function(x) return x end,
  relu = op("relu"), sigmoid = op("sigmoid"), tanh = op("tanh"), softplus = op("softplus"),
  exponential = op("exp"),
  softmax = function(x) return mg.softmax(x, -1) end,
  log_softmax = function(x) return mg.log_softmax(x, -1) end,
  softsign = op("softsign"), selu = op("selu"), elu = op("elu", 1.0),
  hard_sigmoid = op("hard_sigmoid"),                   -- Keras 3: relu6(x + 3) / 6
  gelu = op("gelu", false),                            -- Keras: approximate=False
  silu = op("silu"), swish = op("silu"), mish = op("mish"), relu6 = op("relu6"),
  leaky_relu = op("leaky_relu", 0.2),                  -- Keras's negative_slope
}
checks.publish(ACTIVATIONS)                            -- called by users too (cell.activation)
K.ACTIVATIONS = ACTIVATIONS

-- The activation 'a' (a Keras name, a function, or nil for 'default') as a function, and its
-- name (nil for a function).
function K.activation(fn, a, default)
  if a == nil then a = default end
  if type(a) == "function" then return a, nil end
  local f = type(a) == "string" and ACTIVATIONS[a]
  if not f then raisef("%s: unknown activation %s", fn, tostring(a)) end
  return f, a
end

---------------------------------------------------------------- the seeded generator

-- A generator of uniform numbers in [0, 1) (splitmix64), for a layer given 'seed': the same
-- seed gives the same masks on every machine. Without a seed, masks come from mg's generator
-- (mg.manual_seed).
local Generator = {}
Generator.__index = Generator

function K.generator(seed)
  return setmetatable({ s = math.tointeger(seed) or 0 }, Generator)
end

function Generator:next()
  self.s = self.s + 0x9E3779B97F4A7C15
  local z = self.s
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  z = z ~ (z >> 31)
  return (z >> 11) * 2.0 ^ -53
end

-- A tensor of 'shape' (an array) of uniform numbers from 'gen' (or mg.rand when gen is nil).
function K.uniform(gen, shape, dtype)
  if gen == nil then return mg.rand(shape, { dtype = dtype }) end
  local n = 1
  for _, d in ipairs(shape) do n = n * d end
  local t = {}
  for i = 1, n do t[i] = gen:next() end
  return mg.tensor(t, { dtype = dtype }):reshape(shape)
end

-- A dropout mask of 'shape' as keras.random.dropout makes it from ones: each entry
-- 1 / (1 - rate) with probability 1 - rate, else 0.
function K.dropout_mask(gen, rate, shape, dtype)
  local m = gen == nil and mg._dropout_mask(rate, shape, { dtype = dtype })   -- in one pass
  if m then return m end
  local keep = mg.ge(K.uniform(gen, shape, dtype), rate):to(dtype)
  return keep * (1 / (1 - rate))
end

---------------------------------------------------------------- initializers

-- Keras's fans (initializers/random_initializers.py compute_fans) for 'shape'.
local function fans(shape)
  if #shape == 0 then return 1, 1 end
  if #shape == 1 then return shape[1], shape[1] end
  if #shape == 2 then return shape[1], shape[2] end
  local receptive = 1
  for i = 1, #shape - 2 do receptive = receptive * shape[i] end
  return shape[#shape - 1] * receptive, shape[#shape] * receptive
end

-- Normal numbers redrawn until all lie within two standard deviations (Keras's truncated
-- normal), scaled to 'stddev' and shifted by 'mean'.
local function truncated_normal(shape, mean, stddev, dtype)
  local z = mg.randn(shape, { dtype = dtype })
  while true do
    local out = mg.gt(mg.abs(z), 2)
    if out:sum():item() == 0 then break end
    z = mg.where(out, mg.randn(shape, { dtype = dtype }), z)
  end
  return z * stddev + mean
end

local function variance_scaling(shape, dtype, p)
  local fan_in, fan_out = fans(shape)
  local n = p.mode == "fan_in" and fan_in or p.mode == "fan_out" and fan_out or (fan_in + fan_out) / 2
  local scale = p.scale / math.max(1, n)
  if p.distribution == "truncated_normal" then
    return truncated_normal(shape, 0, math.sqrt(scale) / 0.87962566103423978, dtype)
  elseif p.distribution == "untruncated_normal" then
    return mg.randn(shape, { dtype = dtype }) * math.sqrt(scale)
  end
  local limit = math.sqrt(3 * scale)
  return mg.uniform(shape, -limit, limit, { dtype = dtype })
end

local function scaling(scale, mode, distribution)
  return { defaults = { seed = 0 }, make = function(shape, dtype)
    return variance_scaling(shape, dtype, { scale = scale, mode = mode, distribution = distribution })
  end }
end

-- name -> {defaults = Keras's parameters, make = function(shape, dtype, params)}. 'seed' is
-- accepted for Keras compatibility; the numbers come from mg's generator.
local INITIALIZERS = {
  zeros = { defaults = {}, make = function(shape, dtype) return mg.zeros(shape, { dtype = dtype }) end },
  ones = { defaults = {}, make = function(shape, dtype) return mg.ones(shape, { dtype = dtype }) end },
  constant = { defaults = { value = 0.0 },
    make = function(shape, dtype, p) return mg.full(shape, p.value, { dtype = dtype }) end },
  random_normal = { defaults = { mean = 0.0, stddev = 0.05, seed = 0 },
    make = function(shape, dtype, p) return mg.randn(shape, { dtype = dtype }) * p.stddev + p.mean end },
  random_uniform = { defaults = { minval = -0.05, maxval = 0.05, seed = 0 },
    make = function(shape, dtype, p) return mg.uniform(shape, p.minval, p.maxval, { dtype = dtype }) end },
  truncated_normal = { defaults = { mean = 0.0, stddev = 0.05, seed = 0 },
    make = function(shape, dtype, p) return truncated_normal(shape, p.mean, p.stddev, dtype) end },
  variance_scaling = { defaults = { scale = 1.0, mode = "fan_in", distribution = "truncated_normal", seed = 0 },
    make = variance_scaling },
  glorot_uniform = scaling(1, "fan_avg", "uniform"),
  glorot_normal = scaling(1, "fan_avg", "truncated_normal"),
  he_uniform = scaling(2, "fan_in", "uniform"),
  he_normal = scaling(2, "fan_in", "truncated_normal"),
  lecun_uniform = scaling(1, "fan_in", "uniform"),
  lecun_normal = scaling(1, "fan_in", "truncated_normal"),
  orthogonal = { defaults = { gain = 1.0, seed = 0 }, matrix = true,
    make = function(shape, dtype, p) return mg.orthogonal(shape[1], shape[2], { gain = p.gain, dtype = dtype }) end },
  identity = { defaults = { gain = 1.0 }, matrix = true,
    make = function(shape, dtype, p)
      local r, c = shape[1], shape[2]
      local e = mg.eye(math.max(r, c), { dtype = dtype }):narrow(1, 1, r):narrow(2, 1, c)
      return e:contiguous() * p.gain
    end },
}
INITIALIZERS.uniform, INITIALIZERS.normal = INITIALIZERS.random_uniform, INITIALIZERS.random_normal
K.INITIALIZERS = INITIALIZERS

local MODES = { fan_in = true, fan_out = true, fan_avg = true }
local DISTRIBUTIONS = { uniform = true, truncated_normal = true, untruncated_normal = true, normal = true }

-- A tensor of 'shape' (an array) from an initializer: a name, a {name, params...} table, a
-- function(shape, dtype) returning a tensor, or a tensor of that shape (returned converted to
-- 'dtype'; it may share the given tensor, mg.Variable copies it).
function K.initial_value(fn, what, init, shape, dtype)
  local want = shapestr(mg.zeros(shape))
  if is_tensor(init) then
    if shapestr(init) ~= want then raisef("%s: %s has shape %s, expected %s", fn, what, shapestr(init), want) end
    return init:to(dtype)
  elseif type(init) == "function" then
    local t = init(shape, dtype)
    if not is_tensor(t) then raisef("%s: the %s initializer returned %s", fn, what, describe(t)) end
    return K.initial_value(fn, what, t, shape, dtype)
  end
  local name, params = split_spec(fn, "initializer", init)
  local def = name and INITIALIZERS[name]
  if not def then raisef("%s: unknown initializer %s for %s", fn, tostring(name or describe(init)), what) end
  local p = params_of(fn, "initializer", name, params, def.defaults)
  if name == "variance_scaling" then
    if p.distribution == "normal" then p.distribution = "truncated_normal" end
    if not MODES[p.mode] then
      raisef("%s: variance_scaling mode must be fan_in, fan_out or fan_avg, got %s", fn, p.mode)
    end
    if not DISTRIBUTIONS[p.distribution] then
      raisef("%s: variance_scaling distribution must be uniform, truncated_normal or untruncated_normal, got %s",
        fn, p.distribution)
    end
    if not (p.scale > 0) then raisef("%s: variance_scaling scale must be positive, got %s", fn, tostring(p.scale)) end
  end
  if def.matrix and #shape ~= 2 then
    raisef("%s: initializer %s needs a matrix, %s is %s", fn, name, what, want)
  end
  local ok, t = pcall(def.make, shape, dtype, p)
  if not ok then raisef("%s: cannot initialize %s (%s)", fn, what, checks.message(t)) end
  return t
end

---------------------------------------------------------------- regularizers

local REGULARIZERS = {
  l1 = { defaults = { l1 = 0.01 } },
  l2 = { defaults = { l2 = 0.01 } },
  l1_l2 = { defaults = { l1 = 0.0, l2 = 0.0 } },       -- keras.regularizers.L1L2's defaults
}

-- A regularizer (a name, {name, l1=, l2=}, or a function(w) -> scalar tensor) as a function
-- w -> the penalty l1 sum|w| + l2 sum w^2 (a 0-d tensor); nil stays nil.
function K.regularizer(fn, what, spec)
  if spec == nil or type(spec) == "function" then return spec end
  local name, params = split_spec(fn, what, spec)
  local def = name and REGULARIZERS[name]
  if not def then raisef("%s: unknown %s %s", fn, what, tostring(name or describe(spec))) end
  local p = params_of(fn, what, name, params, def.defaults)
  local l1, l2 = p.l1 or 0, p.l2 or 0
  return function(w)
    local r = mg.zeros({}, { dtype = w.dtype })
    if l1 ~= 0 then r = r + mg.abs(w):sum() * l1 end
    if l2 ~= 0 then r = r + (w * w):sum() * l2 end
    return r
  end
end

---------------------------------------------------------------- constraints

-- The per-column norms of w along 'axis' (Keras's axis + 1), kept as a dimension.
local function norms(w, axis)
  return mg.sqrt((w * w):sum(axis, true))
end

local CONSTRAINTS = {
  max_norm = { defaults = { max_value = 2.0, axis = 1 }, make = function(p)
    return function(w)
      local n = norms(w, p.axis)
      return w * (mg.clamp(n, 0, p.max_value) / (n + EPSILON))
    end
  end },
  min_max_norm = { defaults = { min_value = 0.0, max_value = 1.0, rate = 1.0, axis = 1 }, make = function(p)
    return function(w)
      local n = norms(w, p.axis)
      local desired = mg.clamp(n, p.min_value, p.max_value) * p.rate + n * (1 - p.rate)
      return w * (desired / (n + EPSILON))
    end
  end },
  non_neg = { defaults = {}, make = function()
    return function(w) return mg.relu(w) end           -- Keras: maximum(w, 0)
  end },
  unit_norm = { defaults = { axis = 1 }, make = function(p)
    return function(w) return w / (norms(w, p.axis) + EPSILON) end
  end },
}

-- A constraint (a name, {name, params...}, or a function(w) -> the projected tensor) as a
-- function; nil stays nil. 'axis' is 1-based (Keras's axis 0 is axis 1, the default).
function K.constraint(fn, what, spec)
  if spec == nil or type(spec) == "function" then return spec end
  local name, params = split_spec(fn, what, spec)
  local def = name and CONSTRAINTS[name]
  if not def then raisef("%s: unknown %s %s", fn, what, tostring(name or describe(spec))) end
  return def.make(params_of(fn, what, name, params, def.defaults))
end

return K
