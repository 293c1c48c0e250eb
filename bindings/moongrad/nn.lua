-- moongrad.nn (mg.nn): Dense, the Keras recurrent cells, custom cells written in Lua, the RNN
-- driver with per-step traces, Bidirectional, Sequential and the losses. LSTM and GRU steps are
-- the fused kernels (one recorded op per step), everything else is composed from tensor ops,
-- so every tape sees every step; layouts, gate orders and initializers are Keras's (see
-- docs/cells.md), so weights and results compare one to one.
local mg = require "moongrad"
local K = require "moongrad.keras_names"

local getmetatable, ipairs, next, pairs, pcall, rawequal, rawget, rawset, require, select, setmetatable, tostring,
      type =
      getmetatable, ipairs, next, pairs, pcall, rawequal, rawget, rawset, require, select, setmetatable, tostring,
      type
local debug, math, string, table = debug, math, string, table
local _ENV = nil

local nn = {}
local is_tensor, shapestr = mg.is_tensor, mg.shapestr

---------------------------------------------------------------- errors and checks

-- Errors: raise/raisef inside, and every public function and method goes through checks.api
-- (published at the end of this file), so messages point at the user's line.
local checks = mg._checks(debug.getinfo(1, "S").source)
local raise, raisef, describe, check_opts = checks.raise, checks.raisef, checks.describe, checks.check_opts

local function check_tensor(fn, what, x, ndim)
  if not is_tensor(x) then raisef("%s: %s must be a tensor, got %s", fn, what, describe(x)) end
  if ndim and x:dim() ~= ndim then
    raisef("%s: %s must be %d-d, got shape %s", fn, what, ndim, shapestr(x))
  end
  return x
end

local function check_size(fn, what, n)
  if type(n) ~= "number" or n ~= math.floor(n) or n < 1 or n >= 2 ^ 31 then
    raisef("%s: %s must be a positive integer below 2^31, got %s", fn, what, tostring(n))
  end
  return math.tointeger(n)
end

local set = checks.names

local function check_dtype(fn, dtype)
  if dtype == nil then return mg.get_default_dtype() end
  if dtype ~= "float32" and dtype ~= "float64" then
    raisef("%s: dtype must be \"float32\" or \"float64\", got %s", fn, tostring(dtype))
  end
  return dtype
end

local function check_bool(fn, what, v, default)
  if v == nil then return default end
  if type(v) ~= "boolean" then raisef("%s: option '%s' must be a boolean, got %s", fn, what, describe(v)) end
  return v
end

---------------------------------------------------------------- Keras's names

-- activation(fn, a, default) -> function, name; initial_value(fn, what, init, shape, dtype);
-- regularizer(fn, what, spec), constraint(fn, what, spec) -> function or nil
local activation, initial_value = K.activation, K.initial_value

---------------------------------------------------------------- classes

local classes = {}                 -- the classes defined below, published at the end

-- A class table: instances get it as metatable; '__index' finds methods here, then in 'parent'.
local function class(name, parent)
  local c = { __name = name, _parent = parent }
  if classes then classes[#classes + 1] = c end
  c.__index = c
  if parent then
    setmetatable(c, { __index = parent })
    c.__call, c.__tostring = parent.__call, parent.__tostring
  end
  return c
end

-- Whether 'x' is an instance of class 'c' or of a class derived from it.
local function is_a(x, c)
  local mt = type(x) == "table" and getmetatable(x)
  while mt do
    if mt == c then return true end
    mt = rawget(mt, "_parent")
  end
  return false
end

-- The constraint of each Variable that has one (weak keys: it goes with the Variable).
local CONSTRAINTS = setmetatable({}, { __mode = "k" })

-- A Variable named layer.name/suffix, appended to the layer's parameters; 'reg' (a function
-- or nil) is its regularizer, 'constraint' its constraint.
local function variable(layer, suffix, value, reg, constraint)
  local v = mg.Variable(value, layer.name .. "/" .. suffix)
  layer._params[#layer._params + 1] = v
  if reg then
    layer._regs = layer._regs or {}
    layer._regs[#layer._regs + 1] = { v, reg }
  end
  CONSTRAINTS[v] = constraint
  return v
end

-- The regularizer and constraint options '<what>_regularizer', '<what>_constraint' of 'opts'.
local function reg_and_constraint(fn, opts, what)
  return K.regularizer(fn, what .. "_regularizer", opts[what .. "_regularizer"]),
         K.constraint(fn, what .. "_constraint", opts[what .. "_constraint"])
end

local Layer = class("Layer")
Layer.takes_call_options = true                        -- nn.Sequential passes {mask=, training=}

-- layer:parameters(): a new ordered array of the layer's Variables (each has a 'name').
function Layer:parameters()
  local out = {}
  for i, v in ipairs(self._params or {}) do out[i] = v end
  return out
end

-- layer:losses(): a new array of 0-d tensors, the penalties to add to the loss: each weight
-- regularizer on its Variable (computed now, so under a tape they are recorded), then the
-- activity regularizer's terms of the layer's last call.
function Layer:losses()
  local out = {}
  for _, r in ipairs(self._regs or {}) do out[#out + 1] = r[2](r[1]) end
  for _, l in ipairs(self._activity_losses or {}) do out[#out + 1] = l end
  return out
end

-- layer:apply_constraints(): projects every constrained Variable of the layer in place
-- (Keras applies constraints after each optimizer step).
function Layer:apply_constraints()
  nn.apply_constraints(self:parameters())
end

-- The output mask for an input mask (Keras's compute_mask): by default the mask passes on.
function Layer:compute_mask(_, mask) return mask end

function Layer:__tostring() return self:describe() end
function Layer:describe() return self.__name end

-- nn.constraint(v): the constraint function of Variable 'v' (from a layer's *_constraint
-- option), or nil.
function nn.constraint(v) return CONSTRAINTS[v] end

-- nn.apply_constraints(params): v:assign(constraint(v)) for every Variable of the array that
-- has a constraint, unrecorded. Optimizers call it after each update (the hook).
function nn.apply_constraints(params)
  if type(params) == "table" and type(params.parameters) == "function" then params = params:parameters() end
  if type(params) ~= "table" then
    raisef("apply_constraints: expected an array of Variables, got %s", describe(params))
  end
  mg.no_grad(function()
    for _, v in ipairs(params) do
      local c = CONSTRAINTS[v]
      if c then v:assign(c(v)) end
    end
  end)
end

-- Keras's activity regularizer terms for the tensors a call returned: reg(t) / batch size each.
local function activity_losses(reg, ...)
  if reg == nil then return nil end
  local out = {}
  for i = 1, select("#", ...) do
    local t = select(i, ...)
    if is_tensor(t) then
      local l = reg(t)
      if t:dim() > 0 then l = l / t:size(1) end
      out[#out + 1] = l
    end
  end
  return out
end

-- Splits a layer call's trailing arguments (x [, states] [, {mask=, training=}]): a table with
-- string keys (or an empty one) is the options. Returns states, options (never nil).
local CALL_OPTS = set("mask", "training", "initial_state")
local function is_opts(t)
  if type(t) ~= "table" or is_tensor(t) then return false end
  local k = next(t)
  return k == nil or type(k) == "string"
end
local function call_args(fn, a, b)
  local states, opts = a, b
  if b == nil and is_opts(a) then states, opts = nil, a end
  opts = check_opts(fn, opts, CALL_OPTS)
  if opts.initial_state ~= nil then
    if states ~= nil then raisef("%s: initial states given twice", fn) end
    states = opts.initial_state
  end
  if opts.training ~= nil and type(opts.training) ~= "boolean" then
    raisef("%s: option 'training' must be a boolean, got %s", fn, describe(opts.training))
  end
  return states, opts
end

---------------------------------------------------------------- Dense

local Dense = class("Dense", Layer)
local DENSE_OPTS = set("activation", "use_bias", "kernel_initializer", "bias_initializer", "dtype", "name",
  "kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint")

-- nn.Dense(in, out [, {activation=, use_bias=true, kernel_initializer="glorot_uniform",
-- bias_initializer="zeros", *_regularizer=, *_constraint=, dtype=, name="dense"}]):
-- y = activation(x W + b) on the last dimension of any-rank input; W is (in, out) as in Keras.
function nn.Dense(nin, nout, opts)
  opts = check_opts("Dense", opts, DENSE_OPTS)
  local self = setmetatable({ _params = {}, name = opts.name or "dense",
    input_size = check_size("Dense", "the input size", nin),
    units = check_size("Dense", "the output size", nout),
    dtype = check_dtype("Dense", opts.dtype),
    use_bias = check_bool("Dense", "use_bias", opts.use_bias, true),
    activation = activation("Dense", opts.activation, "linear"),
    activity_regularizer = K.regularizer("Dense", "activity_regularizer", opts.activity_regularizer) }, Dense)
  self.kernel = variable(self, "kernel", initial_value("Dense", "kernel",
    opts.kernel_initializer or "glorot_uniform", { nin, nout }, self.dtype),
    reg_and_constraint("Dense", opts, "kernel"))
  if self.use_bias then
    self.bias = variable(self, "bias", initial_value("Dense", "bias",
      opts.bias_initializer or "zeros", { nout }, self.dtype), reg_and_constraint("Dense", opts, "bias"))
  end
  return self
end

function Dense:__call(x, opts)
  check_tensor("Dense", "the input", x)
  if opts ~= nil then check_opts("Dense", opts, CALL_OPTS) end
  if x:dim() == 0 or x:size(-1) ~= self.input_size then
    raisef("Dense: input has %s features, expected %d (input shape %s)",
      x:dim() == 0 and "no" or tostring(x:size(-1)), self.input_size, shapestr(x))
  end
  local y
  if x:dim() == 1 then y = x:unsqueeze(1):matmul(self.kernel):squeeze(1)
  else y = x:matmul(self.kernel) end
  if self.bias then y = y + self.bias end
  y = self.activation(y)
  self._activity_losses = activity_losses(self.activity_regularizer, y)
  return y
end

function Dense:describe()
  return string.format("Dense(%d -> %d, %s)", self.input_size, self.units, self.dtype)
end

---------------------------------------------------------------- the cell protocol

-- What every cell shares, built-in or nn.Cell: __call checks the input and the states, and
-- runs self:call(x, states, training) -> output, new_states.
local CellBase = class("Cell", Layer)

-- cell:state_size(): an array with the size of each state (LSTM: {units, units}).
function CellBase:state_size()
  local s = self._state_size
  if type(s) == "function" then s = s(self) end
  if type(s) == "number" then s = { s } end
  if type(s) ~= "table" or #s == 0 then
    raisef("%s: state_size must be a positive integer or an array of them, got %s", self.__name, describe(s))
  end
  local out = {}
  for i, n in ipairs(s) do            -- the entry's name is made only for the message
    local k = type(n) == "number" and math.tointeger(n)
    out[i] = k and k >= 1 and k < 2 ^ 31 and k or check_size(self.__name, "state_size[" .. i .. "]", n)
  end
  return out
end

-- The dtype of the cell's states: its 'dtype' field, else its first parameter's.
function CellBase:state_dtype()
  if self.dtype then return self.dtype end
  local p = self:parameters()[1]
  return p and p.dtype or mg.get_default_dtype()
end

-- cell:initial_state(B): an array of zero (B, size) tensors, one per state.
function CellBase:initial_state(B)
  check_size(self.__name .. ":initial_state", "the batch size", B)
  local out, opts = {}, { dtype = self:state_dtype() }
  for i, n in ipairs(self:state_size()) do out[i] = mg.zeros({ B, n }, opts) end
  return out
end

-- Checks that 'states' is an array of (B, size_k) tensors (a lone tensor stands for a
-- one-element array); returns the array.
local function check_states(fn, states, sizes, B)
  if is_tensor(states) then states = { states } end
  if type(states) ~= "table" then raisef("%s: states must be an array of tensors, got %s", fn, describe(states)) end
  local n = 0
  for k in pairs(states) do
    if type(k) ~= "number" then raisef("%s: states must be an array of tensors", fn) end
    n = math.max(n, k)
  end
  if n ~= #sizes then raisef("%s: got %d state tensors, expected %d", fn, n, #sizes) end
  for k, size in ipairs(sizes) do
    local s = states[k]
    if not is_tensor(s) then raisef("%s: state %d is %s, expected a tensor", fn, k, describe(s)) end
    if s:dim() ~= 2 or s:size(1) ~= B or s:size(2) ~= size then
      raisef("%s: state %d has shape %s, expected (%d,%d)", fn, k, shapestr(s), B, size)
    end
  end
  return states
end

local CELL_CALL_OPTS = set("training")

-- cell(x_t, states [, {training=false}]) -> output, new_states; states default to
-- cell:initial_state(B). With training = true a cell with dropout drops (its masks are drawn
-- at the first such call and kept until cell:reset_dropout_mask(), as Keras's cells do).
function CellBase:__call(x, states, opts)
  local fn = self.__name
  check_tensor(fn, "the input", x, 2)
  if opts == nil and type(states) == "table" and not is_tensor(states) and type(next(states)) == "string" then
    states, opts = nil, states
  end
  opts = check_opts(fn, opts, CELL_CALL_OPTS)
  local sizes = self:state_size()
  if states == nil then states = self:initial_state(x:size(1))
  else states = check_states(fn, states, sizes, x:size(1)) end
  local out, new = self:call(x, states, opts.training == true)
  if is_tensor(new) then new = { new } end
  if not is_tensor(out) then raisef("%s: call returned %s as output, expected a tensor", fn, describe(out)) end
  if type(new) ~= "table" then
    raisef("%s: call returned %s as states, expected an array of tensors", fn, describe(new))
  end
  return out, check_states(fn .. " (new states returned by call)", new, sizes, x:size(1))
end

local function check_features(fn, x, n)
  if x:size(2) ~= n then
    raisef("%s: input has %d features, expected %d (input shape %s)", fn, x:size(2), n, shapestr(x))
  end
end

-- The cell's dropout masks are drawn once per sequence: nn.RNN resets them before and after
-- running one. Cells without dropout have nothing to reset.
function CellBase:reset_dropout_mask()
  if self._dp == nil and self._rdp == nil then return end   -- (no writes into nn.Cell instances)
  self.last_dropout_mask, self.last_recurrent_dropout_mask = self._dp, self._rdp
  self._dp, self._rdp = nil, nil
end

-- The index (in the flat state array) of the state whose previous value Keras outputs at a
-- masked step (zero_output_for_mask = false): states[1].
function CellBase:output_state_index() return 1 end

-- One mask (or, for 'count' gates, an array of masks) shaped like 'ref', from the cell's
-- generator (its seed) or mg's.
local function draw_masks(self, rate, ref)
  local function one() return K.dropout_mask(self._gen, rate, ref:shape(), self.dtype) end
  if not self._mask_count then return one() end
  local out = {}
  for k = 1, self._mask_count do out[k] = one() end
  return out
end

-- The input / recurrent dropout masks of this sequence (nil without that dropout).
function CellBase:dropout_mask(x)
  if self._dp == nil and (self.dropout or 0) > 0 then self._dp = draw_masks(self, self.dropout, x) end
  return self._dp
end

function CellBase:recurrent_dropout_mask(h)
  if self._rdp == nil and (self.recurrent_dropout or 0) > 0 then
    self._rdp = draw_masks(self, self.recurrent_dropout, h)
  end
  return self._rdp
end

local function check_rate(fn, what, v)
  if v == nil then return 0 end
  if type(v) ~= "number" or not (v >= 0 and v < 1) then
    raisef("%s: %s must be a number in [0, 1), got %s", fn, what, tostring(v))
  end
  return v
end

-- The options every built-in cell takes (with 'extra' for one kind).
local CELL_OPTS = { "activation", "use_bias", "kernel_initializer", "recurrent_initializer", "bias_initializer",
  "kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "kernel_constraint", "recurrent_constraint",
  "bias_constraint", "dropout", "recurrent_dropout", "seed", "dtype", "name" }
local function cell_opts(...)
  local s = set(...)
  for _, k in ipairs(CELL_OPTS) do s[k] = true end
  return s
end

-- The arguments shared by the built-in cells: (in, units [, opts]).
local function cell_init(fn, c, nin, units, opts, allowed, name)
  opts = check_opts(fn, opts, allowed)
  if opts.seed ~= nil and math.type(opts.seed) ~= "integer" then
    raisef("%s: option 'seed' must be an integer, got %s", fn, tostring(opts.seed))
  end
  local self = setmetatable({ _params = {}, _opts = opts, name = opts.name or name,
    input_size = check_size(fn, "the input size", nin),
    units = check_size(fn, "units", units),
    dtype = check_dtype(fn, opts.dtype),
    use_bias = check_bool(fn, "use_bias", opts.use_bias, true),
    dropout = check_rate(fn, "dropout", opts.dropout),
    recurrent_dropout = check_rate(fn, "recurrent_dropout", opts.recurrent_dropout),
    seed = opts.seed }, c)
  if opts.seed ~= nil then self._gen = K.generator(opts.seed) end
  self.activation, self.activation_name = activation(fn, opts.activation, "tanh")
  if allowed.recurrent_activation then
    self.recurrent_activation, self.recurrent_activation_name = activation(fn, opts.recurrent_activation, "sigmoid")
  end
  return self, opts
end

-- The Variables 'kernel', 'recurrent_kernel' and (with use_bias) 'bias', in that order, from
-- the initializer, regularizer and constraint options; 'gates' blocks of 'units' columns, a
-- bias of 'bias_shape'.
local function cell_weights(self, fn, opts, gates, bias_shape)
  local nin, u = self.input_size, self.units
  self.kernel = variable(self, "kernel", initial_value(fn, "kernel",
    opts.kernel_initializer or "glorot_uniform", { nin, gates * u }, self.dtype),
    reg_and_constraint(fn, opts, "kernel"))
  self.recurrent_kernel = variable(self, "recurrent_kernel", initial_value(fn, "recurrent_kernel",
    opts.recurrent_initializer or "orthogonal", { u, gates * u }, self.dtype),
    reg_and_constraint(fn, opts, "recurrent"))
  if self.use_bias then
    self.bias = variable(self, "bias", initial_value(fn, "bias",
      opts.bias_initializer or "zeros", bias_shape, self.dtype), reg_and_constraint(fn, opts, "bias"))
  end
end

-- Whether the cell runs the fused kernel: Keras's default activations, no recurrent dropout.
local function fused(self)
  return self.activation_name == "tanh" and self.recurrent_activation_name == "sigmoid" and not self._mask_count
end

local function cell_describe(self)
  return string.format("%s(%d -> %d, %s)", self.__name, self.input_size, self.units, self.dtype)
end

-- A new cell with the same configuration (fresh weights), named prefix .. name.
local function builtin_fresh(self, prefix)
  local opts = {}
  for k, v in pairs(self._opts) do opts[k] = v end
  opts.name = prefix .. self.name
  return self._ctor(self.input_size, self.units, opts)
end

-- Gate k's block (of 'u' columns or entries) of a matrix or a vector.
local function block(t, k, u)
  return t:narrow(t:dim(), (k - 1) * u + 1, u)
end

-- x_k W_k + h_k U_k (+ b_k): gate k's pre-activation with per-gate inputs (Keras's
-- implementation 1, used when recurrent dropout gives each gate its own masks).
local function gate_pre(self, k, xs, hs)
  local u = self.units
  local z = xs[k]:matmul(block(self.kernel, k, u)) + hs[k]:matmul(block(self.recurrent_kernel, k, u))
  if self.bias then z = z + block(self.bias, k, u) end
  return z
end

-- The inputs of each of 'n' gates: t times each gate's mask, or t itself for every gate.
local function per_gate(t, masks, n)
  local out = {}
  for k = 1, n do
    if type(masks) == "table" and not is_tensor(masks) then out[k] = t * masks[k]
    elseif masks then out[k] = t * masks
    else out[k] = t end
  end
  return out
end

---------------------------------------------------------------- SimpleRNNCell

local SimpleRNNCell = class("SimpleRNNCell", CellBase)
SimpleRNNCell.describe, SimpleRNNCell.fresh = cell_describe, builtin_fresh
local SIMPLE_OPTS = cell_opts()

-- nn.SimpleRNNCell(in, units [, {activation="tanh", use_bias=true, ..., dropout=0,
-- recurrent_dropout=0, seed=, dtype=, name=}]): h' = activation(x W + h U + b).
function nn.SimpleRNNCell(nin, units, opts)
  local self
  self, opts = cell_init("SimpleRNNCell", SimpleRNNCell, nin, units, opts, SIMPLE_OPTS, "simple_rnn")
  self._ctor, self._state_size = nn.SimpleRNNCell, { self.units }
  cell_weights(self, "SimpleRNNCell", opts, 1, { self.units })
  return self
end

-- cell:step(x, h) -> h'
function SimpleRNNCell:step(x, h)
  local z = x:matmul(self.kernel) + h:matmul(self.recurrent_kernel)
  if self.bias then z = z + self.bias end
  return self.activation(z)
end

function SimpleRNNCell:call(x, states, training)
  check_features("SimpleRNNCell", x, self.input_size)
  local h = states[1]
  if training then                                     -- keras SimpleRNNCell.call
    local dp, rdp = self:dropout_mask(x), self:recurrent_dropout_mask(h)
    if dp then x = x * dp end
    if rdp then h = h * rdp end
  end
  h = self:step(x, h)
  return h, { h }
end

---------------------------------------------------------------- LSTMCell

local LSTMCell = class("LSTMCell", CellBase)
LSTMCell.describe, LSTMCell.fresh = cell_describe, builtin_fresh
local LSTM_OPTS = cell_opts("recurrent_activation", "unit_forget_bias")
local GRU_OPTS = cell_opts("recurrent_activation", "reset_after")

-- The LSTM step composed from tensor ops: the reference the fused kernel is tested against,
-- and the path for a cell without bias or with operands of mixed dtypes.
-- The operands of a step function must be tensors (the bias may be nil).
local function check_step(fn, names, ...)
  for i = 1, #names do
    local v = select(i, ...)
    if not is_tensor(v) and not (v == nil and names[i] == "bias") then
      raisef("%s: %s must be a tensor, got %s", fn, names[i], describe(v))
    end
  end
end
local LSTM_ARGS = { "x", "h", "c", "kernel", "recurrent_kernel", "bias" }
local GRU_ARGS = { "x", "h", "kernel", "recurrent_kernel", "bias" }

local function lstm_step_ops(x, h, c, W, U, b)
  check_step("lstm_step", LSTM_ARGS, x, h, c, W, U, b)
  local z = x:matmul(W) + h:matmul(U)                  -- every gate in two matmuls
  if b then z = z + b end
  local u = h:size(2)
  local i = mg.sigmoid(z:narrow(2, 1, u))
  local f = mg.sigmoid(z:narrow(2, u + 1, u))
  local g = mg.tanh(z:narrow(2, 2 * u + 1, u))
  local o = mg.sigmoid(z:narrow(2, 3 * u + 1, u))
  local c2 = f * c + i * g
  return o * mg.tanh(c2), c2
end

local function same_dtype(...)
  local dt = (...).dtype
  for i = 2, select("#", ...) do
    if select(i, ...).dtype ~= dt then return false end
  end
  return true
end

-- nn.lstm_step(x, h, c, W, U, b) -> h', c': one LSTM step, Keras gate order i, f, c, o;
-- x (B, in), h and c (B, u), W (in, 4u), U (u, 4u), b (4u) or nil. The fused kernel
-- (mg.lstm_cell: one recorded op per step) whenever it applies.
function nn.lstm_step(x, h, c, W, U, b)
  check_step("lstm_step", LSTM_ARGS, x, h, c, W, U, b)
  if b and same_dtype(x, h, c, W, U, b) then return mg.lstm_cell(x, h, c, W, U, b) end
  return lstm_step_ops(x, h, c, W, U, b)
end
nn.lstm_step_ops = lstm_step_ops

-- nn.LSTMCell(in, units [, {activation="tanh", recurrent_activation="sigmoid",
-- unit_forget_bias=true, use_bias=true, *_initializer=, *_regularizer=, *_constraint=,
-- dropout=0, recurrent_dropout=0, seed=, dtype=, name="lstm"}]): states {h, c}, output h.
-- unit_forget_bias sets the f block of the bias to 1 after the bias initializer.
function nn.LSTMCell(nin, units, opts)
  local self
  self, opts = cell_init("LSTMCell", LSTMCell, nin, units, opts, LSTM_OPTS, "lstm")
  local u = self.units
  self._ctor, self._state_size = nn.LSTMCell, { u, u }
  if self.recurrent_dropout > 0 then self._mask_count = 4 end   -- Keras's implementation 1
  cell_weights(self, "LSTMCell", opts, 4, { 4 * u })
  local forget_one = check_bool("LSTMCell", "unit_forget_bias", opts.unit_forget_bias, true)
  -- as Keras, whatever the bias initializer; a bias given as a tensor is kept as it is
  if self.bias and forget_one and not is_tensor(opts.bias_initializer) then
    self.bias:narrow(1, u + 1, u):fill(1)
  end
  return self
end

-- cell:step(x, h, c) -> h', c' (the swappable kernel, with this cell's weights)
function LSTMCell:step(x, h, c)
  if fused(self) then return nn.lstm_step(x, h, c, self.kernel, self.recurrent_kernel, self.bias) end
  return self:gates(per_gate(x, nil, 4), per_gate(h, nil, 4), c)
end

-- The LSTM with this cell's activations from per-gate inputs (keras LSTMCell, implementation 1).
function LSTMCell:gates(xs, hs, c)
  local act, ract = self.activation, self.recurrent_activation
  local i = ract(gate_pre(self, 1, xs, hs))
  local f = ract(gate_pre(self, 2, xs, hs))
  local c2 = f * c + i * act(gate_pre(self, 3, xs, hs))
  local o = ract(gate_pre(self, 4, xs, hs))
  return o * act(c2), c2
end

function LSTMCell:call(x, states, training)
  check_features("LSTMCell", x, self.input_size)
  local h, c = states[1], states[2]
  local dp = training and self:dropout_mask(x) or nil
  local rdp = training and self:recurrent_dropout_mask(h) or nil
  if self._mask_count then
    h, c = self:gates(per_gate(x, dp, 4), per_gate(h, rdp, 4), c)
  else
    h, c = self:step(dp and x * dp or x, h, c)
  end
  return h, { h, c }                                   -- the output IS h' (one tensor)
end

---------------------------------------------------------------- GRUCell

local GRUCell = class("GRUCell", CellBase)
GRUCell.describe, GRUCell.fresh = cell_describe, builtin_fresh

-- The GRU step composed from tensor ops (reference and fallback, as lstm_step_ops).
local function gru_step_ops(x, h, W, U, b, reset_after)
  check_step("gru_step", GRU_ARGS, x, h, W, U, b)
  local u = h:size(2)
  local function gate(t, k) return t:narrow(2, (k - 1) * u + 1, u) end
  local mx = x:matmul(W)
  local z, r, hh
  if reset_after then
    local mh = h:matmul(U)
    if b then mx, mh = mx + b:select(1, 1), mh + b:select(1, 2) end
    z = mg.sigmoid(gate(mx, 1) + gate(mh, 1))
    r = mg.sigmoid(gate(mx, 2) + gate(mh, 2))
    hh = mg.tanh(gate(mx, 3) + r * gate(mh, 3))
  else
    if b then mx = mx + b end
    local mh = h:matmul(U:narrow(2, 1, 2 * u))         -- z and r in one matmul
    z = mg.sigmoid(gate(mx, 1) + gate(mh, 1))
    r = mg.sigmoid(gate(mx, 2) + gate(mh, 2))
    hh = mg.tanh(gate(mx, 3) + (r * h):matmul(U:narrow(2, 2 * u + 1, u)))
  end
  return z * h + (1 - z) * hh
end

-- nn.gru_step(x, h, W, U, b, reset_after) -> h': one GRU step, Keras gate order z, r, h;
-- W (in, 3u), U (u, 3u); b is (2, 3u) (input bias row 1, recurrent bias row 2) when
-- reset_after, else (3u); b may be nil. The fused kernel (mg.gru_cell) whenever it applies.
function nn.gru_step(x, h, W, U, b, reset_after)
  check_step("gru_step", GRU_ARGS, x, h, W, U, b)
  if b and same_dtype(x, h, W, U, b) then return mg.gru_cell(x, h, W, U, b, reset_after) end
  return gru_step_ops(x, h, W, U, b, reset_after)
end
nn.gru_step_ops = gru_step_ops

-- nn.GRUCell(in, units [, {activation="tanh", recurrent_activation="sigmoid",
-- reset_after=true, use_bias=true, ..., dropout=0, recurrent_dropout=0, seed=, dtype=,
-- name="gru"}]): one state h; bias (2, 3u) when reset_after (PyTorch's GRU), else (3u).
function nn.GRUCell(nin, units, opts)
  local self
  self, opts = cell_init("GRUCell", GRUCell, nin, units, opts, GRU_OPTS, "gru")
  local u = self.units
  self.reset_after = check_bool("GRUCell", "reset_after", opts.reset_after, true)
  self._ctor, self._state_size = nn.GRUCell, { u }
  if self.recurrent_dropout > 0 then self._mask_count = 3 end
  cell_weights(self, "GRUCell", opts, 3, self.reset_after and { 2, 3 * u } or { 3 * u })
  return self
end

-- cell:step(x, h) -> h'
function GRUCell:step(x, h)
  if fused(self) then
    return nn.gru_step(x, h, self.kernel, self.recurrent_kernel, self.bias, self.reset_after)
  end
  return self:gates(per_gate(x, nil, 3), per_gate(h, nil, 3), h)
end

-- The GRU with this cell's activations from per-gate inputs xs, hs (keras GRUCell,
-- implementation 1); h is the undropped state the update gate mixes.
function GRUCell:gates(xs, hs, h)
  local u, b = self.units, self.bias
  local ib, rb = b, nil
  if b and self.reset_after then ib, rb = b:select(1, 1), b:select(1, 2) end
  local W, U = self.kernel, self.recurrent_kernel
  local function x_(k)
    local t = xs[k]:matmul(block(W, k, u))
    return ib and t + block(ib, k, u) or t
  end
  local function h_(k, hk)
    local t = hk:matmul(block(U, k, u))
    return rb and t + block(rb, k, u) or t
  end
  local z = self.recurrent_activation(x_(1) + h_(1, hs[1]))
  local r = self.recurrent_activation(x_(2) + h_(2, hs[2]))
  local rh
  if self.reset_after then rh = r * h_(3, hs[3]) else rh = h_(3, r * hs[3]) end
  local hh = self.activation(x_(3) + rh)
  return z * h + (1 - z) * hh
end

function GRUCell:call(x, states, training)
  check_features("GRUCell", x, self.input_size)
  local h = states[1]
  local dp = training and self:dropout_mask(x) or nil
  local rdp = training and self:recurrent_dropout_mask(h) or nil
  if self._mask_count then
    h = self:gates(per_gate(x, dp, 3), per_gate(h, rdp, 3), h)
  else
    h = self:step(dp and x * dp or x, h)
  end
  return h, { h }
end

---------------------------------------------------------------- nn.Cell: custom cells in Lua

local RESERVED = set("init", "call", "state_size", "name")

-- Collects the Variables of a custom cell: fields in the order they were first assigned,
-- Variables directly and anything with a parameters() method (layers), without duplicates.
local function custom_parameters(self)
  local out, seen = {}, {}
  local function add(v)
    if not seen[v] then seen[v] = true; out[#out + 1] = v end
  end
  for _, k in ipairs(rawget(self, "_order")) do
    local v = rawget(self, k)
    if is_tensor(v) then
      if v:is_variable() then add(v) end
    elseif type(v) == "table" and type(v.parameters) == "function" and not rawequal(v, self) then
      for _, p in ipairs(v:parameters()) do add(p) end
    end
  end
  return out
end

-- nn.Cell{state_size=, init=function(self, ...) end, call=function(self, x, states) end
-- [, name=, other methods]}: a cell class. Class(...) makes an instance: 'self.name' is set
-- (def.name or "cell"), then init(self, ...) runs. state_size is a number, an array, or a
-- function(self) giving one; call returns output, new_states. Parameters are the Variables and
-- layers stored in fields, in assignment order; self:variable(suffix, t) makes a Variable
-- named name/suffix.
function nn.Cell(def)
  if type(def) ~= "table" then raisef("Cell: expected a definition table, got %s", describe(def)) end
  if type(def.call) ~= "function" then raise("Cell: the definition needs call=function(self, x, states)") end
  if def.init ~= nil and type(def.init) ~= "function" then raise("Cell: init must be a function") end
  if def.state_size == nil then raise("Cell: the definition needs state_size (a number, array or function)") end
  local base = def.name or "cell"
  if type(base) ~= "string" then raise("Cell: name must be a string") end
  local C = class(base, CellBase)
  for k, v in pairs(def) do
    if not RESERVED[k] then C[k] = v end
  end
  C.call, C.parameters = def.call, custom_parameters
  function C.__newindex(t, k, v)                        -- remember the assignment order
    local order = rawget(t, "_order")
    order[#order + 1] = k
    rawset(t, k, v)
  end
  function C.variable(self, suffix, t) return mg.Variable(t, self.name .. "/" .. suffix) end
  local function new(name, ...)
    local self = setmetatable({ _order = {}, _args = table.pack(...), _state_size = def.state_size }, C)
    rawset(self, "name", name)
    if def.init then def.init(self, ...) end
    self:state_size()                                   -- fail now, not at the first step
    return self
  end
  function C.fresh(self, prefix) return new(prefix .. self.name, table.unpack(self._args, 1, self._args.n)) end
  return setmetatable({}, { __call = function(_, ...) return new(base, ...) end, __index = C,
                            __tostring = function() return "nn.Cell class " .. base end, cell_class = base })
end

---------------------------------------------------------------- StackedRNNCells

local function check_cell(fn, cell)
  local mt = type(cell) == "table" and getmetatable(cell)
  if mt and mt.cell_class then
    raisef("%s: got the cell class '%s'; pass an instance, %s(...)", fn, mt.cell_class, mt.cell_class)
  end
  if type(cell) ~= "table" or type(cell.state_size) ~= "function" or type(cell.initial_state) ~= "function"
     or type(cell.call) ~= "function" then
    raisef("%s: expected a cell, got %s", fn, describe(cell))
  end
  return cell
end

local Stacked = class("StackedRNNCells", CellBase)

-- nn.StackedRNNCells{cell1, cell2, ...}: one cell running the cells in turn, each on the
-- previous one's output (Keras's StackedRNNCells). Its states are every cell's states in
-- order, flat; the RNN layer takes and returns them nested per cell ({{h1, c1}, {h2, c2}}).
function nn.StackedRNNCells(cells)
  if type(cells) ~= "table" or is_tensor(cells) or getmetatable(cells) ~= nil or #cells == 0 then
    raisef("StackedRNNCells: expected a non-empty array of cells, got %s", describe(cells))
  end
  local self = setmetatable({ cells = {}, name = "stacked_rnn_cells" }, Stacked)
  for i, c in ipairs(cells) do self.cells[i] = check_cell("StackedRNNCells: cell " .. i, c) end
  return self
end

function Stacked:state_size()
  local out = {}
  for _, c in ipairs(self.cells) do
    for _, n in ipairs(c:state_size()) do out[#out + 1] = n end
  end
  return out
end

function Stacked:state_dtype() return self.cells[1]:state_dtype() end

function Stacked:initial_state(B)
  local out = {}
  for _, c in ipairs(self.cells) do
    for _, s in ipairs(c:initial_state(B)) do out[#out + 1] = s end
  end
  return out
end

local function each_cell(self, method)
  local out = {}
  for _, c in ipairs(self.cells) do
    for _, p in ipairs(c[method](c)) do out[#out + 1] = p end
  end
  return out
end
function Stacked:parameters() return each_cell(self, "parameters") end
function Stacked:losses() return each_cell(self, "losses") end

function Stacked:call(x, states, training)
  local new, k, opts = {}, 0, { training = training }
  for _, c in ipairs(self.cells) do
    local n = #c:state_size()
    local out, s = c(x, table.move(states, k + 1, k + n, 1, {}), opts)
    for j = 1, n do new[k + j] = s[j] end
    x, k = out, k + n
  end
  return x, new
end

function Stacked:reset_dropout_mask()
  for _, c in ipairs(self.cells) do c:reset_dropout_mask() end
end

function Stacked:output_state_index()                  -- the last cell's (Keras: states[-1][0])
  local k = 0
  for i = 1, #self.cells - 1 do k = k + #self.cells[i]:state_size() end
  return k + self.cells[#self.cells]:output_state_index()
end

function Stacked:fresh(prefix)
  local cells = {}
  for i, c in ipairs(self.cells) do
    if type(c.fresh) ~= "function" then raise("Bidirectional: the cell cannot be copied (give backward_layer=)") end
    cells[i] = c:fresh(prefix)
  end
  return nn.StackedRNNCells(cells)
end

function Stacked:describe()
  local parts = {}
  for i, c in ipairs(self.cells) do parts[i] = tostring(c) end
  return "StackedRNNCells{" .. table.concat(parts, ", ") .. "}"
end

-- Per-cell arrays of a stacked cell's flat states ({s1, s2, s3, s4} -> {{s1, s2}, {s3, s4}}).
local function nest_states(cell, flat)
  local out, k = {}, 0
  for i, c in ipairs(cell.cells) do
    local n = #c:state_size()
    out[i] = table.move(flat, k + 1, k + n, 1, {})
    k = k + n
  end
  return out
end

-- The flat states from states given nested per cell (or already flat).
local function flat_states(cell, states)
  if getmetatable(cell) ~= Stacked or type(states) ~= "table" or is_tensor(states) or is_tensor(states[1]) then
    return states
  end
  local out = {}
  for i, s in ipairs(states) do
    if is_tensor(s) then s = { s } end
    if type(s) ~= "table" then
      raisef("RNN: initial states of cell %d must be an array of tensors, got %s", i, describe(s))
    end
    for _, t in ipairs(s) do out[#out + 1] = t end
  end
  return out
end

---------------------------------------------------------------- RNN

local RNN = class("RNN", Layer)
local RNN_OPTS = set("return_sequences", "return_state", "stateful", "go_backwards", "unroll",
  "zero_output_for_mask", "activity_regularizer", "name")

-- The layer options shared by nn.RNN and the layer classes.
local function rnn_options(self, fn, opts)
  self.return_sequences = check_bool(fn, "return_sequences", opts.return_sequences, false)
  self.return_state = check_bool(fn, "return_state", opts.return_state, false)
  self.stateful = check_bool(fn, "stateful", opts.stateful, false)
  self.go_backwards = check_bool(fn, "go_backwards", opts.go_backwards, false)
  self.unroll = check_bool(fn, "unroll", opts.unroll, false)   -- the same numbers either way
  self.zero_output_for_mask = check_bool(fn, "zero_output_for_mask", opts.zero_output_for_mask, false)
  self.activity_regularizer = K.regularizer(fn, "activity_regularizer", opts.activity_regularizer)
  if opts.name ~= nil and type(opts.name) ~= "string" then raisef("%s: option 'name' must be a string", fn) end
end

-- nn.RNN(cell [, {return_sequences=false, return_state=false, stateful=false,
-- go_backwards=false, unroll=false, zero_output_for_mask=false, activity_regularizer=,
-- name=}]): runs 'cell' over x (B, T, in). An array of cells is nn.StackedRNNCells(cells).
function nn.RNN(cell, opts)
  opts = check_opts("RNN", opts, RNN_OPTS)
  if type(cell) == "table" and getmetatable(cell) == nil and not is_tensor(cell) and cell[1] ~= nil then
    cell = nn.StackedRNNCells(cell)
  end
  local self = setmetatable({ cell = check_cell("RNN", cell) }, RNN)
  rnn_options(self, "RNN", opts)
  self.name = opts.name or cell.name or "rnn"
  return self
end

function RNN:parameters() return self.cell and self.cell:parameters() or {} end

function RNN:losses()
  local out = self.cell and self.cell:losses() or {}
  for _, l in ipairs(self._activity_losses or {}) do out[#out + 1] = l end
  return out
end

function RNN:describe()
  if self.cell == nil then return string.format("%s(%d units, not built)", self.__name, self.units) end
  return self.__name .. "(" .. tostring(self.cell) .. ")"
end

function RNN:compute_mask(_, mask) return self.return_sequences and mask or nil end

-- rnn:build(in): makes the cell of a layer class (nn.LSTM(...)) for inputs of 'in' features;
-- a call builds it from the input. Does nothing once built.
function RNN:build(nin)
  if self.cell == nil then self.cell = self._ctor(nin, self.units, self._cell_opts) end
  return self
end

-- The states a run starts from: the given ones, else the kept ones (stateful), else zeros.
function RNN:start_states(x, initial)
  local B = x:size(1)
  if initial ~= nil then
    return check_states(self.__name, flat_states(self.cell, initial), self.cell:state_size(), B)
  end
  local kept = self._states
  if kept then
    if kept[1]:size(1) ~= B then
      raisef("%s: stateful layer kept states for batch size %d, got batch size %d (call reset_states())",
        self.__name, kept[1]:size(1), B)
    end
    return kept
  end
  return self.cell:initial_state(B)
end

-- The mask option as a (B, T) 0/1 tensor of the states' dtype (nonzero entries are 1), or nil.
local function check_mask(fn, mask, x, dtype)
  if mask == nil then return nil end
  if not is_tensor(mask) then raisef("%s: mask must be a (batch, time) tensor, got %s", fn, describe(mask)) end
  if mask:dim() ~= 2 or mask:size(1) ~= x:size(1) or mask:size(2) ~= x:size(2) then
    raisef("%s: mask has shape %s, expected (%d,%d) for input %s", fn, shapestr(mask), x:size(1), x:size(2),
      shapestr(x))
  end
  return mg.ne(mask, 0):to(dtype)
end

-- One masked step (Keras's backend rnn): rows whose mask is 0 keep their states; their
-- output is zero (zero_output_for_mask) or the previous output state. 'new' is copied.
local function mask_step(self, m, o, new, states, oi)
  local kept = {}
  for k, s in ipairs(new) do kept[k] = mg.where(m, s, states[k]) end
  if self.zero_output_for_mask then o = o * m
  elseif rawequal(o, new[oi]) then o = kept[oi]           -- the output is that state: one tensor
  else o = mg.where(m, o, states[oi]) end
  return o, kept
end

-- The whole layer as one recorded op (mg.lstm_seq / mg.gru_seq) when that computes what the
-- per-step loop would and no per-step tensor is wanted: a built-in LSTM or GRU cell on its
-- fused kernel with a bias and its methods not replaced, one dtype, no mask, no dropout in
-- this call. Returns the outputs (B, T, u) and the final states, or nil.
local function seq_run(self, x, states, mask, training)
  local cell = self.cell
  local mt = getmetatable(cell)
  if mask or (mt ~= LSTMCell and mt ~= GRUCell) or not fused(cell) or not cell.bias then return nil end
  if rawget(cell, "call") or rawget(cell, "step") or rawget(cell, "gates") then return nil end
  if training and (cell.dropout or 0) > 0 then return nil end
  if not same_dtype(x, cell.kernel, cell.recurrent_kernel, cell.bias, table.unpack(states)) then return nil end
  if x:size(3) ~= cell.input_size then check_features(cell.__name, x:select(2, 1), cell.input_size) end
  if self.go_backwards then x = x:flip { 2 } end
  if mt == LSTMCell then
    local H, h, c = mg.lstm_seq(x, states[1], states[2], cell.kernel, cell.recurrent_kernel, cell.bias)
    return H, { h, c }
  end
  local H, h = mg.gru_seq(x, states[1], cell.kernel, cell.recurrent_kernel, cell.bias, cell.reset_after)
  return H, { h }
end

-- The trace of one run (see rnn:trace); 'opts' are checked call options. With 'whole', a run
-- that seq_run can do returns {sequence = outputs (B, T, u), final = final states} instead.
function RNN:run(x, initial, opts, whole)
  local fn = self.__name
  check_tensor(fn, "the input", x)
  if x:dim() ~= 3 then raisef("%s: input must be (batch, time, features), got shape %s", fn, shapestr(x)) end
  local T = x:size(2)
  if T < 1 then raisef("%s: input has no timesteps (shape %s)", fn, shapestr(x)) end
  self:build(x:size(3))
  local cell = self.cell
  local states = self:start_states(x, initial)
  local mask = check_mask(fn, opts.mask, x, states[1].dtype)
  local training = opts.training == true
  cell:reset_dropout_mask()
  if whole then
    local H, final = seq_run(self, x, states, mask, training)
    if H then
      cell:reset_dropout_mask()
      if self.stateful then self:keep(final) end
      return { sequence = H, final = final }
    end
  end
  local copts, oi = { training = training }, cell:output_state_index()
  local tr = { outputs = {}, states = {} }
  for k, s in ipairs(states) do tr.states[k] = { [0] = s } end
  for t = 1, T do
    local ti = self.go_backwards and T - t + 1 or t
    local o, new = cell(x:select(2, ti), states, copts)
    if mask then o, new = mask_step(self, mask:select(2, ti):unsqueeze(2), o, new, states, oi) end
    tr.outputs[t] = o
    for k, s in ipairs(new) do tr.states[k][t] = s end
    states = new
  end
  cell:reset_dropout_mask()
  tr.h, tr.c = tr.states[1], tr.states[2]
  if getmetatable(cell) == Stacked then
    tr.cells = nest_states(cell, tr.states)
    for _, c in ipairs(tr.cells) do c.h, c.c = c[1], c[2] end
    tr.h, tr.c = tr.cells[#tr.cells].h, tr.cells[#tr.cells].c
  end
  if self.stateful then self:keep(states) end
  return tr
end

-- rnn:trace(x [, initial_states] [, {mask=, training=}]): runs the sequence and returns
-- {outputs={o_1..o_T}, states={{h_0..h_T}, ...}, h=states[1], c=states[2]}, index 0 holding
-- the initial states. Every tensor is the one the recurrence produced and fed to the next
-- step (no copies), so tape:gradient(loss, tr.h) is the total dL/dh_t and
-- batch_jacobian(tr.h[t], tr.h[t-1]) is dh_t/dh_(t-1). With go_backwards, step t processes
-- x[:, T-t+1]. With a mask, the states of a masked step are the carried ones. A stacked cell
-- adds cells={{h=, c=, ...} per cell} and h, c are the last cell's. A stateful layer keeps
-- the final states, as a call does.
function RNN:trace(x, a, b)
  local initial, opts = call_args(self.__name .. ":trace", a, b)
  return self:run(x, initial, opts)
end

-- Keeps detached copies of 'states' for the next call (stateful layers).
function RNN:keep(states)
  self._states = mg.no_grad(function()
    local out = {}
    for k, s in ipairs(states) do out[k] = s:clone() end
    return out
  end)
end

-- rnn:reset_states([states]): forget the kept states (or set them); rnn:reset_state is the
-- Keras 3 spelling.
function RNN:reset_states(states)
  if states == nil then self._states = nil return end
  local s = is_tensor(states) and { states } or states
  if self.cell then s = flat_states(self.cell, s) end
  if type(s) ~= "table" or not is_tensor(s[1]) then
    raisef("RNN:reset_states: expected an array of tensors, got %s", describe(states))
  end
  if self.cell == nil then
    raise("RNN:reset_states: the layer is not built yet (call it once, or give input_size=)")
  end
  self:keep(check_states("RNN:reset_states", s, self.cell:state_size(), s[1]:size(1)))
end
RNN.reset_state = RNN.reset_states

-- The final states of a trace, as an array.
local function final_states(tr)
  local out = {}
  for k, s in ipairs(tr.states) do out[k] = s[#s] end
  return out
end

-- rnn(x [, initial_states] [, {mask=, training=, initial_state=}]): output ((B, T, u) with
-- return_sequences, else the last output), then with return_state the final states (nested
-- per cell for stacked cells).
function RNN:__call(x, a, b)
  local initial, opts = call_args(self.__name, a, b)
  local tr = self:run(x, initial, opts, true)
  local out, flat_st
  if tr.sequence then                                  -- the whole-layer op (seq_run)
    flat_st = tr.final
    out = self.return_sequences and tr.sequence or flat_st[self.cell:output_state_index()]
  else
    flat_st = final_states(tr)
    out = self.return_sequences and mg.stack(tr.outputs, 2) or tr.outputs[#tr.outputs]
  end
  local st = flat_st
  if getmetatable(self.cell) == Stacked then st = nest_states(self.cell, st) end
  if self.activity_regularizer then
    local flat = { out }
    for _, s in ipairs(flat_st) do flat[#flat + 1] = s end
    self._activity_losses = activity_losses(self.activity_regularizer,
      table.unpack(flat, 1, self.return_state and #flat or 1))
  end
  if self.return_state then return out, table.unpack(st) end
  return out
end

-- rnn:lyapunov(x [, opts]), rnn:jacobian_spectra(x [, opts]) and the same on any cell: the
-- spectra of the cell's map over x from opts.initial (zeros by default); see docs/linalg.md.
function RNN:lyapunov(x, opts)
  if self.cell == nil and is_tensor(x) and x:dim() == 3 then self:build(x:size(3)) end
  return mg._spectra.cell_run("lyapunov", "RNN:lyapunov", self.cell, x, opts, self.go_backwards)
end
function RNN:jacobian_spectra(x, opts)
  if self.cell == nil and is_tensor(x) and x:dim() == 3 then self:build(x:size(3)) end
  return mg._spectra.cell_run("jacobian_spectra", "RNN:jacobian_spectra", self.cell, x, opts,
                                              self.go_backwards)
end
function CellBase:lyapunov(x, opts)
  return mg._spectra.cell_run("lyapunov", self.__name .. ":lyapunov", self, x, opts)
end
function CellBase:jacobian_spectra(x, opts)
  return mg._spectra.cell_run("jacobian_spectra", self.__name .. ":jacobian_spectra", self, x, opts)
end

local LAYER_FIELDS = { "return_sequences", "return_state", "stateful", "go_backwards", "unroll",
  "zero_output_for_mask", "activity_regularizer", "units", "_ctor" }

-- A new RNN of the same class over a fresh copy of the cell (or, not built yet, of the
-- cell's options), the other direction, named prefix .. name (for Bidirectional).
function RNN:opposite(prefix)
  local o = setmetatable({}, getmetatable(self))
  for _, k in ipairs(LAYER_FIELDS) do o[k] = self[k] end
  o.go_backwards, o.name = not self.go_backwards, prefix .. self.name
  if self._cell_opts then
    o._cell_opts = {}
    for k, v in pairs(self._cell_opts) do o._cell_opts[k] = v end
    o._cell_opts.name = o.name
  end
  if self.cell then
    if type(self.cell.fresh) ~= "function" then
      raise("Bidirectional: the cell cannot be copied (give backward_layer=)")
    end
    o.cell = self.cell:fresh(prefix)
  end
  return o
end

---------------------------------------------------------------- SimpleRNN, LSTM, GRU

-- nn.SimpleRNN / nn.LSTM / nn.GRU (units [, opts]): Keras's layer classes, an nn.RNN whose
-- cell (nn.SimpleRNNCell / LSTMCell / GRUCell with the cell options among 'opts') is made at
-- the first call, for the input's feature count, or at once with input_size=.
local function layer_class(kname, ctor, cell_allowed, default_name)
  local C = class(kname, RNN)
  local allowed = set("input_size")
  for k in pairs(cell_allowed) do allowed[k] = true end
  for k in pairs(RNN_OPTS) do allowed[k] = true end
  nn[kname] = function(units, opts)
    opts = check_opts(kname, opts, allowed)
    local self = setmetatable({ units = check_size(kname, "units", units), _ctor = ctor, _cell_opts = {} }, C)
    for k, v in pairs(opts) do
      if cell_allowed[k] then self._cell_opts[k] = v end
    end
    rnn_options(self, kname, opts)
    self.name = opts.name or default_name
    self._cell_opts.name = self.name
    if opts.input_size ~= nil then self:build(check_size(kname, "input_size", opts.input_size)) end
    return self
  end
  return C
end
layer_class("SimpleRNN", nn.SimpleRNNCell, SIMPLE_OPTS, "simple_rnn")
layer_class("LSTM", nn.LSTMCell, LSTM_OPTS, "lstm")
layer_class("GRU", nn.GRUCell, GRU_OPTS, "gru")

---------------------------------------------------------------- Bidirectional

local Bidirectional = class("Bidirectional", Layer)
local MERGES = {
  concat = function(a, b) return mg.cat({ a, b }, -1) end,
  sum = function(a, b) return a + b end,
  mul = function(a, b) return a * b end,
  ave = function(a, b) return (a + b) * 0.5 end,
}

-- nn.Bidirectional(rnn [, {merge_mode="concat"|"sum"|"mul"|"ave"|"none"|false,
-- backward_layer=}]): runs 'rnn' forward and a copy of it (fresh weights, names prefixed
-- "backward_") backward over the sequence, flips the backward outputs into time order, and
-- merges; "none" (or false, Keras's None) returns both directions' outputs. As in Keras, both
-- layers use zero_output_for_mask = return_sequences.
function nn.Bidirectional(rnn, opts)
  opts = check_opts("Bidirectional", opts, set("merge_mode", "backward_layer"))
  if not is_a(rnn, RNN) then raisef("Bidirectional: expected an nn.RNN, got %s", describe(rnn)) end
  local mode = opts.merge_mode
  if mode == nil then mode = "concat" elseif mode == false then mode = "none" end
  if mode ~= "none" and MERGES[mode] == nil then
    raisef("Bidirectional: merge_mode must be concat, sum, mul or ave, got %s (or \"none\"/false for both outputs)",
      tostring(mode))
  end
  local back = opts.backward_layer or rnn:opposite("backward_")
  if not is_a(back, RNN) then raisef("Bidirectional: backward_layer must be an nn.RNN, got %s", describe(back)) end
  if back.go_backwards == rnn.go_backwards then
    raise("Bidirectional: backward_layer must have go_backwards different from the forward layer's")
  end
  if back.return_sequences ~= rnn.return_sequences or back.return_state ~= rnn.return_state then
    raise("Bidirectional: backward_layer must match the forward layer's return_sequences and return_state")
  end
  rnn.zero_output_for_mask, back.zero_output_for_mask = rnn.return_sequences, rnn.return_sequences
  return setmetatable({ forward_layer = rnn, backward_layer = back, merge_mode = mode,
    return_sequences = rnn.return_sequences, return_state = rnn.return_state }, Bidirectional)
end

function Bidirectional:parameters()
  local out = self.forward_layer:parameters()
  for _, p in ipairs(self.backward_layer:parameters()) do out[#out + 1] = p end
  return out
end

function Bidirectional:losses()
  local out = self.forward_layer:losses()
  for _, p in ipairs(self.backward_layer:losses()) do out[#out + 1] = p end
  return out
end

function Bidirectional:describe()
  local f = self.forward_layer
  return string.format("Bidirectional(%s, %s)", tostring(f.cell or f), self.merge_mode)
end

function Bidirectional:compute_mask(_, mask) return self.return_sequences and mask or nil end

local function merge(self, a, b)
  if self.merge_mode == "none" then return { a, b } end
  return MERGES[self.merge_mode](a, b)
end

-- bi:trace(x [, initial_states] [, {mask=, training=}]): {forward=trace, backward=trace (in
-- processing order, so backward.outputs[t] belongs to time T-t+1), outputs={merged o_1..o_T
-- in time order}} (merge_mode "none": each outputs[t] is {forward, backward}).
function Bidirectional:trace(x, a, b)
  local initial, opts = call_args("Bidirectional:trace", a, b)
  local fi, bi
  if initial ~= nil then
    if is_tensor(initial) or type(initial) ~= "table" then
      raisef("Bidirectional: initial states must be an array of tensors, got %s", describe(initial))
    end
    if x ~= nil and is_tensor(x) and x:dim() == 3 then self.forward_layer:build(x:size(3)) end
    local n = #self.forward_layer.cell:state_size()
    if #initial ~= 2 * n then raisef("Bidirectional: got %d initial states, expected %d", #initial, 2 * n) end
    fi, bi = table.move(initial, 1, n, 1, {}), table.move(initial, n + 1, 2 * n, 1, {})
  end
  local tf = self.forward_layer:run(x, fi, opts)
  local tb = self.backward_layer:run(x, bi, opts)
  local T, outs = #tf.outputs, {}
  for t = 1, T do outs[t] = merge(self, tf.outputs[t], tb.outputs[T - t + 1]) end
  return { forward = tf, backward = tb, outputs = outs }
end

-- bi(x [, initial_states] [, {mask=, training=}]): the merged output (merge_mode "none": the
-- forward and the backward output), then with return_state the forward layer's final states
-- followed by the backward layer's.
function Bidirectional:__call(x, a, b)
  local tr = self:trace(x, a, b)
  local of, ob
  if self.return_sequences then
    local T, fs, bs = #tr.forward.outputs, {}, {}
    for t = 1, T do fs[t], bs[t] = tr.forward.outputs[t], tr.backward.outputs[T - t + 1] end
    of, ob = mg.stack(fs, 2), mg.stack(bs, 2)
  else                                                 -- each direction's last step
    of, ob = tr.forward.outputs[#tr.forward.outputs], tr.backward.outputs[#tr.backward.outputs]
  end
  local out = { of, ob }
  if self.merge_mode ~= "none" then
    out = { self.return_sequences and mg.stack(tr.outputs, 2) or MERGES[self.merge_mode](of, ob) }
  end
  if self.return_state then
    for _, s in ipairs(final_states(tr.forward)) do out[#out + 1] = s end
    for _, s in ipairs(final_states(tr.backward)) do out[#out + 1] = s end
  end
  return table.unpack(out)
end

function Bidirectional:reset_states()
  self.forward_layer:reset_states()
  self.backward_layer:reset_states()
end
Bidirectional.reset_state = Bidirectional.reset_states

---------------------------------------------------------------- Sequential

local Sequential = class("Sequential", Layer)

local function check_layer(fn, i, l)
  local mt = type(l) == "table" and getmetatable(l)
  if type(l) ~= "function" and not (mt and mt.__call) then
    raisef("%s: layer %d is %s, expected a layer or a function", fn, i, describe(l))
  end
  return l
end

-- nn.Sequential{layer1, layer2, ...}: calls each on the previous one's (first) result. Plain
-- functions (mg.relu) are allowed as layers.
function nn.Sequential(layers)
  if layers ~= nil and type(layers) ~= "table" then
    raisef("Sequential: expected an array of layers, got %s", describe(layers))
  end
  local self = setmetatable({ layers = {} }, Sequential)
  for i, l in ipairs(layers or {}) do self.layers[i] = check_layer("Sequential", i, l) end
  return self
end

function Sequential:add(layer)
  self.layers[#self.layers + 1] = check_layer("Sequential:add", #self.layers + 1, layer)
  return self
end

-- seq(x [, {mask=, training=}]): each layer of moongrad gets {mask=, training=}, the mask
-- being the one the previous layer produced (nn.Masking, nn.Embedding with mask_zero) or
-- passed on (layer:compute_mask); plain functions pass the mask on.
function Sequential:__call(x, opts)
  opts = check_opts("Sequential", opts, set("mask", "training"))
  local mask, training = opts.mask, opts.training
  for _, l in ipairs(self.layers) do
    if type(l) == "table" and l.takes_call_options then
      local y = l(x, { mask = mask, training = training })
      mask, x = l:compute_mask(x, mask), y
    else
      x = l(x)
    end
  end
  self._out_mask = mask
  return x
end

function Sequential:compute_mask() return self._out_mask end

local function gather_layers(self, method)
  local out, seen = {}, {}
  for _, l in ipairs(self.layers) do
    if type(l) == "table" and type(l[method]) == "function" then
      for _, p in ipairs(l[method](l)) do
        if not seen[p] then seen[p] = true; out[#out + 1] = p end
      end
    end
  end
  return out
end
function Sequential:parameters() return gather_layers(self, "parameters") end
function Sequential:losses() return gather_layers(self, "losses") end

function Sequential:describe()
  local parts = {}
  for i, l in ipairs(self.layers) do parts[i] = type(l) == "function" and "function" or tostring(l) end
  return "Sequential{" .. table.concat(parts, ", ") .. "}"
end

-- Embedding, Masking, Dropout, TimeDistributed, LayerNormalization (nn_layers.lua)
require("moongrad.nn_layers")(nn, { class = class, Layer = Layer, variable = variable,
  reg_and_constraint = reg_and_constraint, activity_losses = activity_losses, check_tensor = check_tensor,
  check_size = check_size, check_dtype = check_dtype, check_bool = check_bool, check_opts = check_opts,
  set = set, raisef = raisef, describe = describe })

---------------------------------------------------------------- losses

local function check_same_shape(fn, a, b, an, bn)
  if not mg._same_shape(a, b) then
    raisef("%s: %s has shape %s but %s has shape %s", fn, an, shapestr(a), bn, shapestr(b))
  end
end

-- nn.mse(pred, target): mean of (pred - target)^2 over every element (Keras's MSE averaged
-- over the batch). Shapes must match.
function nn.mse(pred, target)
  check_tensor("mse", "pred", pred)
  check_tensor("mse", "target", target)
  check_same_shape("mse", pred, target, "pred", "target")
  local d = pred - target
  return (d * d):mean()
end

-- nn.cross_entropy(logits, labels): softmax cross-entropy, the mean over samples. logits are
-- (..., C); labels are either 1-based class indices (a tensor, or a Lua array, shaped as
-- logits without the last dimension) or class probabilities / one-hot rows (same shape as
-- logits). Computed through log_softmax, stable for large logits.
function nn.cross_entropy(logits, labels)
  check_tensor("cross_entropy", "logits", logits)
  if logits:dim() < 1 then raise("cross_entropy: logits must have a class dimension, got a 0-d tensor") end
  if type(labels) == "table" and not is_tensor(labels) then labels = mg.tensor(labels, { dtype = "float64" }) end
  check_tensor("cross_entropy", "labels", labels)
  local C, lshape = logits:size(-1), logits:shape()
  local target
  if shapestr(labels) == shapestr(logits) then
    target = labels
  else
    lshape[#lshape] = nil
    if shapestr(labels) ~= shapestr(mg.zeros(lshape)) then
      raisef("cross_entropy: labels have shape %s; expected class indices of shape %s or one-hot rows of shape %s",
        shapestr(labels), shapestr(mg.zeros(lshape)), shapestr(logits))
    end
    local flat = labels:contiguous():reshape(-1)
    for i = 1, flat:numel() do
      local v = flat:get(i)
      if v ~= math.floor(v) or v < 1 or v > C then
        raisef("cross_entropy: label %g at position %d is not a class index in 1..%d", v, i, C)
      end
    end
    target = mg.eq(labels:unsqueeze(-1), mg.arange(1, C + 1, { dtype = labels.dtype }))
  end
  local nll = -(target * mg.log_softmax(logits, -1)):sum(-1)
  return nll:mean()
end

local BCE_EPS = 1e-7                                   -- Keras's backend epsilon

-- nn.binary_cross_entropy(p, target [, {from_logits=false}]): mean of
-- -(t log p + (1 - t) log(1 - p)); p is clamped to [1e-7, 1 - 1e-7] as Keras does. With
-- from_logits, p are logits and the stable form softplus(x) - t x is used.
function nn.binary_cross_entropy(p, target, opts)
  opts = check_opts("binary_cross_entropy", opts, set("from_logits"))
  check_tensor("binary_cross_entropy", "p", p)
  check_tensor("binary_cross_entropy", "target", target)
  check_same_shape("binary_cross_entropy", p, target, "p", "target")
  if opts.from_logits then return (mg.softplus(p) - target * p):mean() end
  local q = mg.clamp(p, BCE_EPS, 1 - BCE_EPS)
  return -(target * mg.log(q) + (1 - target) * mg.log(1 - q)):mean()
end

---------------------------------------------------------------- publishing

-- Every function of 'nn' and every method and metamethod of its classes becomes a public
-- entry point (checks.api): errors raised inside point at the user's line, and tracebacks
-- start at the call the user made. Classes made later (nn.Cell) inherit published methods.
checks.publish(nn, table.unpack(classes))
classes = nil

mg._extend_nn(nn)   -- the losses and nn.fit (bindings/moongrad/losses.lua, fit.lua)
return nn
