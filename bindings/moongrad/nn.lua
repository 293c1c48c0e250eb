-- moongrad.nn (mg.nn): Dense, the Keras recurrent cells, custom cells written in Lua, the RNN
-- driver with per-step traces, Bidirectional, Sequential and the losses. LSTM and GRU steps are
-- the fused kernels (one recorded op per step), everything else is composed from tensor ops,
-- so every tape sees every step; layouts, gate orders and initializers are Keras's (see
-- docs/cells.md), so weights and results compare one to one.
local mg = require "moongrad"

local getmetatable, ipairs, pairs, pcall, rawequal, rawget, rawset, select, setmetatable, tostring, type =
      getmetatable, ipairs, pairs, pcall, rawequal, rawget, rawset, select, setmetatable, tostring, type
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

local function set(...)
  local s = {}
  for i = 1, select("#", ...) do s[select(i, ...)] = true end
  return s
end

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

---------------------------------------------------------------- activations, initializers

local activations = {
  linear = function(x) return x end,
  tanh = mg.tanh, sigmoid = mg.sigmoid, relu = mg.relu, softplus = mg.softplus,
  exponential = mg.exp,
  softmax = function(x) return mg.softmax(x, -1) end,
}

-- An activation given by name (Keras's names), as a function, or nil for 'default'.
local function activation(fn, a, default)
  if a == nil then a = default end
  if type(a) == "function" then return a end
  local f = activations[a]
  if f == nil then raisef("%s: unknown activation %s", fn, tostring(a)) end
  return f
end

-- A tensor of 'shape' (an array) from an initializer: a name ("glorot_uniform",
-- "orthogonal", "zeros", "ones"), a function(shape, dtype) returning a tensor, or a tensor of
-- that shape. The result may share the given tensor (mg.Variable copies it).
local function initial_value(fn, what, init, shape, dtype)
  local opt = { dtype = dtype }
  if is_tensor(init) then
    if shapestr(init) ~= shapestr(mg.zeros(shape)) then
      raisef("%s: %s has shape %s, expected %s", fn, what, shapestr(init), shapestr(mg.zeros(shape)))
    end
    return init:to(dtype)
  elseif type(init) == "function" then
    local t = init(shape, dtype)
    if not is_tensor(t) then raisef("%s: the %s initializer returned %s", fn, what, describe(t)) end
    return initial_value(fn, what, t, shape, dtype)
  elseif init == "zeros" then return mg.zeros(shape, opt)
  elseif init == "ones" then return mg.ones(shape, opt)
  elseif init == "glorot_uniform" or init == "orthogonal" then
    if #shape ~= 2 then raisef("%s: initializer %s needs a matrix, %s is %s", fn, init, what, shapestr(mg.zeros(shape))) end
    local ok, t = pcall(mg[init], shape[1], shape[2], opt)
    if not ok then raisef("%s: cannot initialize %s (%s)", fn, what, checks.message(t)) end
    return t
  end
  raisef("%s: unknown initializer %s for %s", fn, tostring(init), what)
end

---------------------------------------------------------------- classes

local classes = {}                 -- the classes defined below, published at the end

-- A class table: instances get it as metatable; '__index' finds methods here, then in 'parent'.
local function class(name, parent)
  local c = { __name = name }
  if classes then classes[#classes + 1] = c end
  c.__index = c
  if parent then
    setmetatable(c, { __index = parent })
    c.__call, c.__tostring = parent.__call, parent.__tostring
  end
  return c
end

local function variable(layer, suffix, value)
  local v = mg.Variable(value, layer.name .. "/" .. suffix)
  layer._params[#layer._params + 1] = v
  return v
end

local Layer = class("Layer")

-- layer:parameters(): a new ordered array of the layer's Variables (each has a 'name').
function Layer:parameters()
  local out = {}
  for i, v in ipairs(self._params) do out[i] = v end
  return out
end

function Layer:__tostring() return self:describe() end
function Layer:describe() return self.__name end

---------------------------------------------------------------- Dense

local Dense = class("Dense", Layer)
local DENSE_OPTS = set("activation", "use_bias", "kernel_initializer", "bias_initializer", "dtype", "name")

-- nn.Dense(in, out [, {activation=, use_bias=true, kernel_initializer="glorot_uniform",
-- bias_initializer="zeros", dtype=, name="dense"}]): y = activation(x W + b) on the last
-- dimension of any-rank input; W is (in, out) as in Keras.
function nn.Dense(nin, nout, opts)
  opts = check_opts("Dense", opts, DENSE_OPTS)
  local self = setmetatable({ _params = {}, name = opts.name or "dense",
    input_size = check_size("Dense", "the input size", nin),
    units = check_size("Dense", "the output size", nout),
    dtype = check_dtype("Dense", opts.dtype),
    use_bias = check_bool("Dense", "use_bias", opts.use_bias, true),
    activation = activation("Dense", opts.activation, "linear") }, Dense)
  self.kernel = variable(self, "kernel", initial_value("Dense", "kernel",
    opts.kernel_initializer or "glorot_uniform", { nin, nout }, self.dtype))
  if self.use_bias then
    self.bias = variable(self, "bias", initial_value("Dense", "bias",
      opts.bias_initializer or "zeros", { nout }, self.dtype))
  end
  return self
end

function Dense:__call(x)
  check_tensor("Dense", "the input", x)
  if x:dim() == 0 or x:size(-1) ~= self.input_size then
    raisef("Dense: input has %s features, expected %d (input shape %s)",
      x:dim() == 0 and "no" or tostring(x:size(-1)), self.input_size, shapestr(x))
  end
  local y
  if x:dim() == 1 then y = x:unsqueeze(1):matmul(self.kernel):squeeze(1)
  else y = x:matmul(self.kernel) end
  if self.bias then y = y + self.bias end
  return self.activation(y)
end

function Dense:describe()
  return string.format("Dense(%d -> %d, %s)", self.input_size, self.units, self.dtype)
end

---------------------------------------------------------------- the cell protocol

-- What every cell shares, built-in or nn.Cell: __call checks the input and the states, and
-- runs self:call(x, states) -> output, new_states.
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
  for i, n in ipairs(s) do out[i] = check_size(self.__name, "state_size[" .. i .. "]", n) end
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
  local out = {}
  for i, n in ipairs(self:state_size()) do out[i] = mg.zeros({ B, n }, { dtype = self:state_dtype() }) end
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

-- cell(x_t, states) -> output, new_states; states default to cell:initial_state(B).
function CellBase:__call(x, states)
  local fn = self.__name
  check_tensor(fn, "the input", x, 2)
  local sizes = self:state_size()
  if states == nil then states = self:initial_state(x:size(1))
  else states = check_states(fn, states, sizes, x:size(1)) end
  local out, new = self:call(x, states)
  if is_tensor(new) then new = { new } end
  if not is_tensor(out) then raisef("%s: call returned %s as output, expected a tensor", fn, describe(out)) end
  if type(new) ~= "table" then raisef("%s: call returned %s as states, expected an array of tensors", fn, describe(new)) end
  return out, check_states(fn .. " (new states returned by call)", new, sizes, x:size(1))
end

local function check_features(fn, x, n)
  if x:size(2) ~= n then
    raisef("%s: input has %d features, expected %d (input shape %s)", fn, x:size(2), n, shapestr(x))
  end
end

-- The arguments shared by the built-in cells: (in, units [, opts]).
local function cell_init(fn, c, nin, units, opts, allowed, name)
  opts = check_opts(fn, opts, allowed)
  local self = setmetatable({ _params = {}, _opts = opts, name = opts.name or name,
    input_size = check_size(fn, "the input size", nin),
    units = check_size(fn, "units", units),
    dtype = check_dtype(fn, opts.dtype),
    use_bias = check_bool(fn, "use_bias", opts.use_bias, true) }, c)
  return self, opts
end

-- The Variables 'kernel', 'recurrent_kernel' and (with use_bias) 'bias', in that order, from
-- the initializer options; 'gates' blocks of 'units' columns, a bias of 'bias_shape'.
local function cell_weights(self, fn, opts, gates, bias_shape)
  local nin, u = self.input_size, self.units
  self.kernel = variable(self, "kernel", initial_value(fn, "kernel",
    opts.kernel_initializer or "glorot_uniform", { nin, gates * u }, self.dtype))
  self.recurrent_kernel = variable(self, "recurrent_kernel", initial_value(fn, "recurrent_kernel",
    opts.recurrent_initializer or "orthogonal", { u, gates * u }, self.dtype))
  if self.use_bias then
    self.bias = variable(self, "bias", initial_value(fn, "bias",
      opts.bias_initializer or "zeros", bias_shape, self.dtype))
  end
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

---------------------------------------------------------------- SimpleRNNCell

local SimpleRNNCell = class("SimpleRNNCell", CellBase)
SimpleRNNCell.describe, SimpleRNNCell.fresh = cell_describe, builtin_fresh
local SIMPLE_OPTS = set("activation", "use_bias", "kernel_initializer", "recurrent_initializer",
  "bias_initializer", "dtype", "name")

-- nn.SimpleRNNCell(in, units [, {activation="tanh", use_bias=true, ..., dtype=, name=}]):
-- h' = activation(x W + h U + b).
function nn.SimpleRNNCell(nin, units, opts)
  local self
  self, opts = cell_init("SimpleRNNCell", SimpleRNNCell, nin, units, opts, SIMPLE_OPTS, "simple_rnn")
  self.activation = activation("SimpleRNNCell", opts.activation, "tanh")
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

function SimpleRNNCell:call(x, states)
  check_features("SimpleRNNCell", x, self.input_size)
  local h = self:step(x, states[1])
  return h, { h }
end

---------------------------------------------------------------- LSTMCell

local LSTMCell = class("LSTMCell", CellBase)
LSTMCell.describe, LSTMCell.fresh = cell_describe, builtin_fresh
local GATED_OPTS = set("use_bias", "kernel_initializer", "recurrent_initializer",
  "bias_initializer", "unit_forget_bias", "dtype", "name")
local GRU_OPTS = set("use_bias", "kernel_initializer", "recurrent_initializer",
  "bias_initializer", "reset_after", "dtype", "name")

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

-- nn.LSTMCell(in, units [, {unit_forget_bias=true, use_bias=true, kernel_initializer=,
-- recurrent_initializer=, bias_initializer=, dtype=, name="lstm"}]): states {h, c}, output h.
-- unit_forget_bias sets the f block of the bias to 1 after the bias initializer.
function nn.LSTMCell(nin, units, opts)
  local self
  self, opts = cell_init("LSTMCell", LSTMCell, nin, units, opts, GATED_OPTS, "lstm")
  local u = self.units
  self._ctor, self._state_size = nn.LSTMCell, { u, u }
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
  return nn.lstm_step(x, h, c, self.kernel, self.recurrent_kernel, self.bias)
end

function LSTMCell:call(x, states)
  check_features("LSTMCell", x, self.input_size)
  local h, c = self:step(x, states[1], states[2])
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

-- nn.GRUCell(in, units [, {reset_after=true, use_bias=true, ..., dtype=, name="gru"}]):
-- one state h; bias (2, 3u) when reset_after (PyTorch's GRU), else (3u).
function nn.GRUCell(nin, units, opts)
  local self
  self, opts = cell_init("GRUCell", GRUCell, nin, units, opts, GRU_OPTS, "gru")
  local u = self.units
  self.reset_after = check_bool("GRUCell", "reset_after", opts.reset_after, true)
  self._ctor, self._state_size = nn.GRUCell, { u }
  cell_weights(self, "GRUCell", opts, 3, self.reset_after and { 2, 3 * u } or { 3 * u })
  return self
end

-- cell:step(x, h) -> h'
function GRUCell:step(x, h)
  return nn.gru_step(x, h, self.kernel, self.recurrent_kernel, self.bias, self.reset_after)
end

function GRUCell:call(x, states)
  check_features("GRUCell", x, self.input_size)
  local h = self:step(x, states[1])
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

---------------------------------------------------------------- RNN

local RNN = class("RNN", Layer)
local RNN_OPTS = set("return_sequences", "return_state", "stateful", "go_backwards")

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

-- nn.RNN(cell [, {return_sequences=false, return_state=false, stateful=false,
-- go_backwards=false}]): runs 'cell' over x (B, T, in).
function nn.RNN(cell, opts)
  opts = check_opts("RNN", opts, RNN_OPTS)
  return setmetatable({ cell = check_cell("RNN", cell),
    return_sequences = check_bool("RNN", "return_sequences", opts.return_sequences, false),
    return_state = check_bool("RNN", "return_state", opts.return_state, false),
    stateful = check_bool("RNN", "stateful", opts.stateful, false),
    go_backwards = check_bool("RNN", "go_backwards", opts.go_backwards, false) }, RNN)
end

function RNN:parameters() return self.cell:parameters() end
function RNN:describe() return "RNN(" .. tostring(self.cell) .. ")" end

-- The states a run starts from: the given ones, else the kept ones (stateful), else zeros.
function RNN:start_states(x, initial)
  local B, sizes = x:size(1), self.cell:state_size()
  if initial ~= nil then return check_states("RNN", initial, sizes, B) end
  local kept = self._states
  if kept then
    if kept[1]:size(1) ~= B then
      raisef("RNN: stateful layer kept states for batch size %d, got batch size %d (call reset_states())",
        kept[1]:size(1), B)
    end
    return kept
  end
  return self.cell:initial_state(B)
end

-- rnn:trace(x [, initial_states]): runs the sequence and returns {outputs={o_1..o_T},
-- states={{h_0..h_T}, ...}, h=states[1], c=states[2]}, index 0 holding the initial states.
-- Every tensor is the one the recurrence produced and fed to the next step (no copies), so
-- tape:gradient(loss, tr.h) is the total dL/dh_t and batch_jacobian(tr.h[t], tr.h[t-1]) is
-- dh_t/dh_(t-1). With go_backwards, step t processes x[:, T-t+1]. A stateful layer keeps
-- the final states, as a call does.
function RNN:trace(x, initial)
  check_tensor("RNN", "the input", x)
  if x:dim() ~= 3 then raisef("RNN: input must be (batch, time, features), got shape %s", shapestr(x)) end
  local T = x:size(2)
  if T < 1 then raisef("RNN: input has no timesteps (shape %s)", shapestr(x)) end
  local states = self:start_states(x, initial)
  local tr = { outputs = {}, states = {} }
  for k, s in ipairs(states) do tr.states[k] = { [0] = s } end
  for t = 1, T do
    local o
    o, states = self.cell(x:select(2, self.go_backwards and T - t + 1 or t), states)
    tr.outputs[t] = o
    for k, s in ipairs(states) do tr.states[k][t] = s end
  end
  tr.h, tr.c = tr.states[1], tr.states[2]
  if self.stateful then self:keep(states) end
  return tr
end

-- Keeps detached copies of 'states' for the next call (stateful layers).
function RNN:keep(states)
  self._states = mg.no_grad(function()
    local out = {}
    for k, s in ipairs(states) do out[k] = s:clone() end
    return out
  end)
end

-- rnn:reset_states([states]): forget the kept states (or set them).
function RNN:reset_states(states)
  if states == nil then self._states = nil return end
  local s = is_tensor(states) and { states } or states
  if type(s) ~= "table" or not is_tensor(s[1]) then
    raisef("RNN:reset_states: expected an array of tensors, got %s", describe(states))
  end
  self:keep(check_states("RNN:reset_states", s, self.cell:state_size(), s[1]:size(1)))
end

-- The final states of a trace, as an array.
local function final_states(tr)
  local out = {}
  for k, s in ipairs(tr.states) do out[k] = s[#s] end
  return out
end

-- rnn(x [, initial_states]): output ((B, T, u) with return_sequences, else the last output),
-- then with return_state the final states.
function RNN:__call(x, initial)
  local tr = self:trace(x, initial)
  local out = self.return_sequences and mg.stack(tr.outputs, 2) or tr.outputs[#tr.outputs]
  if self.return_state then return out, table.unpack(final_states(tr)) end
  return out
end

-- rnn:lyapunov(x [, opts]), rnn:jacobian_spectra(x [, opts]) and the same on any cell: the
-- spectra of the cell's map over x from opts.initial (zeros by default); see docs/linalg.md.
function RNN:lyapunov(x, opts)
  return mg._spectra.cell_run("lyapunov", "RNN:lyapunov", self.cell, x, opts, self.go_backwards)
end
function RNN:jacobian_spectra(x, opts)
  return mg._spectra.cell_run("jacobian_spectra", "RNN:jacobian_spectra", self.cell, x, opts,
                                              self.go_backwards)
end
function CellBase:lyapunov(x, opts)
  return mg._spectra.cell_run("lyapunov", self.__name .. ":lyapunov", self, x, opts)
end
function CellBase:jacobian_spectra(x, opts)
  return mg._spectra.cell_run("jacobian_spectra", self.__name .. ":jacobian_spectra", self, x, opts)
end

-- A new RNN over a fresh copy of the cell, the other direction (for Bidirectional).
function RNN:opposite(prefix)
  if type(self.cell.fresh) ~= "function" then
    raise("Bidirectional: the cell cannot be copied (give backward_layer=)")
  end
  return nn.RNN(self.cell:fresh(prefix), { return_sequences = self.return_sequences,
    return_state = self.return_state, stateful = self.stateful, go_backwards = not self.go_backwards })
end

---------------------------------------------------------------- Bidirectional

local Bidirectional = class("Bidirectional", Layer)
local MERGES = {
  concat = function(a, b) return mg.cat({ a, b }, -1) end,
  sum = function(a, b) return a + b end,
  mul = function(a, b) return a * b end,
  ave = function(a, b) return (a + b) * 0.5 end,
}

-- nn.Bidirectional(rnn [, {merge_mode="concat"|"sum"|"mul"|"ave", backward_layer=}]): runs
-- 'rnn' forward and a copy of it (fresh weights, names prefixed "backward_") backward over
-- the sequence, flips the backward outputs into time order, and merges.
function nn.Bidirectional(rnn, opts)
  opts = check_opts("Bidirectional", opts, set("merge_mode", "backward_layer"))
  if getmetatable(rnn) ~= RNN then raisef("Bidirectional: expected an nn.RNN, got %s", describe(rnn)) end
  local mode = opts.merge_mode or "concat"
  if MERGES[mode] == nil then
    raisef("Bidirectional: merge_mode must be concat, sum, mul or ave, got %s", tostring(mode))
  end
  local back = opts.backward_layer or rnn:opposite("backward_")
  if getmetatable(back) ~= RNN then raisef("Bidirectional: backward_layer must be an nn.RNN, got %s", describe(back)) end
  if back.go_backwards == rnn.go_backwards then
    raise("Bidirectional: backward_layer must have go_backwards different from the forward layer's")
  end
  if back.return_sequences ~= rnn.return_sequences or back.return_state ~= rnn.return_state then
    raise("Bidirectional: backward_layer must match the forward layer's return_sequences and return_state")
  end
  return setmetatable({ forward_layer = rnn, backward_layer = back, merge_mode = mode,
    return_sequences = rnn.return_sequences, return_state = rnn.return_state }, Bidirectional)
end

function Bidirectional:parameters()
  local out = self.forward_layer:parameters()
  for _, p in ipairs(self.backward_layer:parameters()) do out[#out + 1] = p end
  return out
end

function Bidirectional:describe()
  return string.format("Bidirectional(%s, %s)", tostring(self.forward_layer.cell), self.merge_mode)
end

-- bi:trace(x [, initial_states]): {forward=trace, backward=trace (in processing order, so
-- backward.outputs[t] belongs to time T-t+1), outputs={merged o_1..o_T in time order}}.
function Bidirectional:trace(x, initial)
  local fi, bi
  if initial ~= nil then
    if is_tensor(initial) or type(initial) ~= "table" then
      raisef("Bidirectional: initial states must be an array of tensors, got %s", describe(initial))
    end
    local n = #self.forward_layer.cell:state_size()
    if #initial ~= 2 * n then raisef("Bidirectional: got %d initial states, expected %d", #initial, 2 * n) end
    fi, bi = table.move(initial, 1, n, 1, {}), table.move(initial, n + 1, 2 * n, 1, {})
  end
  local tf = self.forward_layer:trace(x, fi)
  local tb = self.backward_layer:trace(x, bi)
  local merge, T, outs = MERGES[self.merge_mode], #tf.outputs, {}
  for t = 1, T do outs[t] = merge(tf.outputs[t], tb.outputs[T - t + 1]) end
  return { forward = tf, backward = tb, outputs = outs }
end

-- bi(x [, initial_states]): the merged output, then with return_state the forward layer's
-- final states followed by the backward layer's.
function Bidirectional:__call(x, initial)
  local tr = self:trace(x, initial)
  local out
  if self.return_sequences then
    out = mg.stack(tr.outputs, 2)
  else                                                 -- each direction's last step
    out = MERGES[self.merge_mode](tr.forward.outputs[#tr.forward.outputs],
                                  tr.backward.outputs[#tr.backward.outputs])
  end
  if not self.return_state then return out end
  local st = final_states(tr.forward)
  for _, s in ipairs(final_states(tr.backward)) do st[#st + 1] = s end
  return out, table.unpack(st)
end

function Bidirectional:reset_states()
  self.forward_layer:reset_states()
  self.backward_layer:reset_states()
end

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

function Sequential:__call(x)
  for _, l in ipairs(self.layers) do x = l(x) end
  return x
end

function Sequential:parameters()
  local out, seen = {}, {}
  for _, l in ipairs(self.layers) do
    if type(l) == "table" and type(l.parameters) == "function" then
      for _, p in ipairs(l:parameters()) do
        if not seen[p] then seen[p] = true; out[#out + 1] = p end
      end
    end
  end
  return out
end

function Sequential:describe()
  local parts = {}
  for i, l in ipairs(self.layers) do parts[i] = type(l) == "function" and "function" or tostring(l) end
  return "Sequential{" .. table.concat(parts, ", ") .. "}"
end

---------------------------------------------------------------- losses

local function check_same_shape(fn, a, b, an, bn)
  if shapestr(a) ~= shapestr(b) then
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

return nn
