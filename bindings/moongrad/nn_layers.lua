-- moongrad.nn_layers: the Keras layers around the recurrent ones, installed into moongrad.nn
-- by nn.lua (this module returns the installer, called once with nn and nn's internals):
-- Embedding, Masking, Dropout, TimeDistributed, LayerNormalization.
local mg = require "moongrad"
local K = require "moongrad.keras_names"

local getmetatable, ipairs, math, setmetatable, tostring, type =
      getmetatable, ipairs, math, setmetatable, tostring, type
local string = string
local _ENV = nil

local is_tensor, shapestr = mg.is_tensor, mg.shapestr

-- install(nn, I): I has class, Layer, variable, reg_and_constraint, call_args, check_tensor,
-- check_size, check_dtype, check_bool, check_opts, set, raisef, describe.
return function(nn, I)
  local class, Layer, variable, set = I.class, I.Layer, I.variable, I.set
  local check_opts, check_tensor, check_size, check_bool = I.check_opts, I.check_tensor, I.check_size, I.check_bool
  local raisef, describe = I.raisef, I.describe
  local CALL = set("mask", "training")

  local function call_opts(fn, opts) return check_opts(fn, opts, CALL) end

  local function check_rate(fn, v)
    if type(v) ~= "number" or not (v >= 0 and v < 1) then
      raisef("%s: rate must be a number in [0, 1), got %s", fn, tostring(v))
    end
    return v
  end

  local function check_seed(fn, seed)
    if seed ~= nil and math.type(seed) ~= "integer" then
      raisef("%s: option 'seed' must be an integer, got %s", fn, tostring(seed))
    end
    return seed
  end

  -------------------------------------------------------------- Embedding

  local Embedding = class("Embedding", Layer)
  local EMBEDDING_OPTS = set("embeddings_initializer", "embeddings_regularizer", "embeddings_constraint",
    "activity_regularizer", "mask_zero", "input_length", "dtype", "name")

  -- nn.Embedding(input_dim, output_dim [, {embeddings_initializer="uniform",
  -- embeddings_regularizer=, embeddings_constraint=, activity_regularizer=, mask_zero=false,
  -- dtype=, name="embedding"}]): token ids 1..input_dim -> rows of the (input_dim, output_dim)
  -- Variable 'embeddings'. With mask_zero the id 0 is padding: a zero vector, masked for the
  -- next layers (compute_mask gives ids ~= 0).
  function nn.Embedding(input_dim, output_dim, opts)
    opts = check_opts("Embedding", opts, EMBEDDING_OPTS)
    local self = setmetatable({ _params = {}, name = opts.name or "embedding",
      input_dim = check_size("Embedding", "input_dim", input_dim),
      output_dim = check_size("Embedding", "output_dim", output_dim),
      dtype = I.check_dtype("Embedding", opts.dtype),
      mask_zero = check_bool("Embedding", "mask_zero", opts.mask_zero, false),
      activity_regularizer = K.regularizer("Embedding", "activity_regularizer", opts.activity_regularizer) },
      Embedding)
    self.embeddings = variable(self, "embeddings", K.initial_value("Embedding", "embeddings",
      opts.embeddings_initializer or "uniform", { self.input_dim, self.output_dim }, self.dtype),
      I.reg_and_constraint("Embedding", opts, "embeddings"))
    return self
  end

  -- Checks that every id is an integer in lo..input_dim; returns the ids flat. One tensor
  -- comparison (an id equals its floor clamped to the range; NaN equals nothing), and only
  -- when it fails the element-wise search for the first bad id, for the message.
  local function check_ids(self, ids)
    local lo = self.mask_zero and 0 or 1
    local flat = ids:contiguous():reshape(-1)
    if mg.eq(flat, mg.clamp(mg.floor(flat), lo, self.input_dim)):sum():item() == flat:numel() then return flat end
    for i = 1, flat:numel() do
      local v = flat:get(i)
      if v ~= math.floor(v) or v < lo or v > self.input_dim then
        raisef("Embedding: id %g at position %d is not a token id in %d..%d%s", v, i, lo, self.input_dim,
          lo == 1 and " (0 is padding only with mask_zero = true)" or "")
      end
    end
    return flat
  end

  -- emb(ids [, {mask=, training=}]): ids (any shape, numbers) -> (ids shape..., output_dim):
  -- the table's rows by mg.index_select, so the gradient reaches every used row exactly.
  function Embedding:__call(ids, opts)
    call_opts("Embedding", opts)
    check_tensor("Embedding", "the ids", ids)
    if ids:dim() == 0 then raisef("Embedding: the ids must have at least one dimension, got a 0-d tensor") end
    local flat = check_ids(self, ids)
    local rows = mg.index_select(self.embeddings, 1, self.mask_zero and mg.clamp(flat, 1, self.input_dim) or flat)
    if self.mask_zero then rows = rows * mg.ne(flat, 0):to(self.dtype):unsqueeze(2) end   -- id 0: zeros
    local shape = ids:shape()
    shape[#shape + 1] = self.output_dim
    local y = rows:reshape(shape)
    self._activity_losses = I.activity_losses(self.activity_regularizer, y)
    return y
  end

  function Embedding:compute_mask(ids)
    if not self.mask_zero then return nil end           -- Keras: no mask without mask_zero
    return mg.ne(ids, 0):to(self.dtype)
  end

  function Embedding:describe()
    return string.format("Embedding(%d -> %d, %s)", self.input_dim, self.output_dim, self.dtype)
  end

  -------------------------------------------------------------- Masking

  local Masking = class("Masking", Layer)

  -- nn.Masking([mask_value=0]): x (B, T, F) with every timestep whose features all equal
  -- mask_value zeroed, and masked for the next layers (Keras's Masking).
  function nn.Masking(mask_value)
    if mask_value == nil then mask_value = 0 end
    if type(mask_value) ~= "number" then
      raisef("Masking: mask_value must be a number, got %s", describe(mask_value))
    end
    return setmetatable({ _params = {}, mask_value = mask_value }, Masking)
  end

  local function keep_of(self, x)
    check_tensor("Masking", "the input", x)
    if x:dim() < 2 then raisef("Masking: input must have a feature dimension, got shape %s", shapestr(x)) end
    return mg.gt(mg.ne(x, self.mask_value):sum(-1), 0):to(x.dtype)
  end

  function Masking:__call(x, opts)
    call_opts("Masking", opts)
    return x * keep_of(self, x):unsqueeze(-1)
  end

  function Masking:compute_mask(x) return keep_of(self, x) end
  function Masking:describe() return string.format("Masking(%g)", self.mask_value) end

  -------------------------------------------------------------- Dropout

  local Dropout = class("Dropout", Layer)

  -- nn.Dropout(rate [, {noise_shape=, seed=}]): with {training = true}, each entry is zeroed
  -- with probability 'rate' and the rest scaled by 1 / (1 - rate); otherwise the identity.
  -- noise_shape (an array; -1 stands for the input's size there) shares one draw along its
  -- dimensions of size 1. With 'seed' the layer has its own generator.
  function nn.Dropout(rate, opts)
    opts = check_opts("Dropout", opts, set("noise_shape", "seed", "name"))
    local self = setmetatable({ _params = {}, rate = check_rate("Dropout", rate),
      seed = check_seed("Dropout", opts.seed), noise_shape = opts.noise_shape }, Dropout)
    if self.noise_shape ~= nil and (type(self.noise_shape) ~= "table" or is_tensor(self.noise_shape)) then
      raisef("Dropout: noise_shape must be an array of sizes, got %s", describe(self.noise_shape))
    end
    if self.seed then self._gen = K.generator(self.seed) end
    return self
  end

  function Dropout:__call(x, opts)
    opts = call_opts("Dropout", opts)
    check_tensor("Dropout", "the input", x)
    if opts.training ~= true or self.rate == 0 then return x end
    local shape = x:shape()
    if self.noise_shape then
      if #self.noise_shape ~= #shape then
        raisef("Dropout: noise_shape has %d entries, the input %s has %d dimensions", #self.noise_shape,
          shapestr(x), #shape)
      end
      for i, n in ipairs(self.noise_shape) do
        if n ~= -1 then
          if n ~= 1 and n ~= shape[i] then
            raisef("Dropout: noise_shape[%d] = %s must be 1, -1 or %d", i, tostring(n), shape[i])
          end
          shape[i] = n
        end
      end
    end
    self.last_mask = K.dropout_mask(self._gen, self.rate, shape, x.dtype)
    return x * self.last_mask
  end

  function Dropout:describe() return string.format("Dropout(%g)", self.rate) end

  -------------------------------------------------------------- TimeDistributed

  local TimeDistributed = class("TimeDistributed", Layer)

  -- nn.TimeDistributed(layer): applies 'layer' to every timestep of x (B, T, ...), as one
  -- call on (B*T, ...), and gives (B, T, ...).
  function nn.TimeDistributed(layer)
    local mt = type(layer) == "table" and getmetatable(layer)
    if type(layer) ~= "function" and not (mt and mt.__call) then
      raisef("TimeDistributed: expected a layer or a function, got %s", describe(layer))
    end
    return setmetatable({ layer = layer }, TimeDistributed)
  end

  function TimeDistributed:__call(x, opts)
    opts = call_opts("TimeDistributed", opts)
    check_tensor("TimeDistributed", "the input", x)
    if x:dim() < 3 then raisef("TimeDistributed: input must be (batch, time, ...), got shape %s", shapestr(x)) end
    local shape = x:shape()
    local B, T = shape[1], shape[2]
    local inner = { B * T }
    for i = 3, #shape do inner[#inner + 1] = shape[i] end
    local l, y = self.layer, nil
    local xin = x:contiguous():reshape(inner)
    if type(l) == "table" and l.takes_call_options then y = l(xin, { training = opts.training })
    else y = l(xin) end
    if not is_tensor(y) then raisef("TimeDistributed: the layer returned %s, expected a tensor", describe(y)) end
    local out = { B, T }
    for i = 2, y:dim() do out[#out + 1] = y:size(i) end
    return y:reshape(out)
  end

  local function inner(self, method)
    local l = self.layer
    if type(l) == "table" and type(l[method]) == "function" then return l[method](l) end
    return {}
  end
  function TimeDistributed:parameters() return inner(self, "parameters") end
  function TimeDistributed:losses() return inner(self, "losses") end
  function TimeDistributed:describe()
    return "TimeDistributed(" .. (type(self.layer) == "function" and "function" or tostring(self.layer)) .. ")"
  end

  -------------------------------------------------------------- LayerNormalization

  local LayerNorm = class("LayerNormalization", Layer)
  local LN_OPTS = set("axis", "epsilon", "center", "scale", "rms_scaling", "beta_initializer", "gamma_initializer",
    "beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint", "dtype", "name", "input_size")

  -- nn.LayerNormalization([{axis=-1, epsilon=1e-3, center=true, scale=true,
  -- rms_scaling=false, beta_initializer="zeros", gamma_initializer="ones", *_regularizer=,
  -- *_constraint=, dtype=, name="layer_normalization", input_size=}]): Keras's layer norm over
  -- one axis: (x - mean) / sqrt(var + epsilon) * gamma + beta; gamma and beta (the axis's
  -- size) are made at the first call (or at once with input_size=).
  function nn.LayerNormalization(opts)
    opts = check_opts("LayerNormalization", opts, LN_OPTS)
    local self = setmetatable({ _params = {}, _opts = opts, name = opts.name or "layer_normalization",
      axis = opts.axis or -1, epsilon = opts.epsilon or 1e-3,
      center = check_bool("LayerNormalization", "center", opts.center, true),
      scale = check_bool("LayerNormalization", "scale", opts.scale, true),
      rms_scaling = check_bool("LayerNormalization", "rms_scaling", opts.rms_scaling, false),
      dtype = I.check_dtype("LayerNormalization", opts.dtype) }, LayerNorm)
    if math.type(self.axis) ~= "integer" or self.axis == 0 then
      raisef("LayerNormalization: axis must be a nonzero integer, got %s", tostring(self.axis))
    end
    if type(self.epsilon) ~= "number" or not (self.epsilon > 0) then
      raisef("LayerNormalization: epsilon must be a positive number, got %s", tostring(self.epsilon))
    end
    if opts.input_size ~= nil then self:build(check_size("LayerNormalization", "input_size", opts.input_size)) end
    return self
  end

  -- ln:build(n): makes gamma and beta of n entries (a call does it from the input).
  function LayerNorm:build(n)
    if self.built then return self end
    local o, fn = self._opts, "LayerNormalization"
    if self.scale or self.rms_scaling then
      self.gamma = variable(self, "gamma",
        K.initial_value(fn, "gamma", o.gamma_initializer or "ones", { n }, self.dtype),
        I.reg_and_constraint(fn, o, "gamma"))
    end
    if self.center and not self.rms_scaling then
      self.beta = variable(self, "beta",
        K.initial_value(fn, "beta", o.beta_initializer or "zeros", { n }, self.dtype),
        I.reg_and_constraint(fn, o, "beta"))
    end
    self.built, self.size = true, n
    return self
  end

  function LayerNorm:__call(x, opts)
    call_opts("LayerNormalization", opts)
    check_tensor("LayerNormalization", "the input", x)
    local d = self.axis < 0 and x:dim() + 1 + self.axis or self.axis
    if d < 1 or d > x:dim() then
      raisef("LayerNormalization: axis %d is out of range for input shape %s", self.axis, shapestr(x))
    end
    self:build(x:size(d))
    if x:size(d) ~= self.size then
      raisef("LayerNormalization: input has %d entries on axis %d, expected %d", x:size(d), self.axis, self.size)
    end
    local function along(v)                            -- gamma/beta shaped to broadcast on axis d
      if d == x:dim() then return v end
      local shape = {}
      for i = 1, x:dim() do shape[i] = i == d and self.size or 1 end
      return v:reshape(shape)
    end
    local var = x:var(d, true)
    local y
    if self.rms_scaling then                           -- Keras's (deprecated) variance scaling
      y = x / mg.sqrt(var + self.epsilon)
    else
      y = (x - x:mean(d, true)) / mg.sqrt(var + self.epsilon)
    end
    if self.gamma then y = y * along(self.gamma) end
    if self.beta then y = y + along(self.beta) end
    return y
  end

  function LayerNorm:describe() return string.format("LayerNormalization(axis=%d)", self.axis) end
end
