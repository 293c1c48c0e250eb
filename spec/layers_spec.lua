-- The Keras layers of moongrad.nn (issue 14 section 1): nn.SimpleRNN/LSTM/GRU and their cell
-- options, stacked cells, call options (mask, training), masking, dropout, Bidirectional
-- merge_mode "none", Embedding, Masking, Dropout, TimeDistributed, LayerNormalization, and
-- Keras's activation, initializer, regularizer and constraint names. Numbers are checked
-- against Keras 3 itself (spec/keras_ref.py, run once with the test venv's Python on every
-- case below, weights set identically, float32), against PyTorch (stacked LSTM, packed
-- sequences; spec/torch_layers_ref.py), against formulas, and by finite differences.
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local F64, assert_close, assert_error = support.F64, support.assert_close, support.assert_error
local F32_TOL = 2e-5                                   -- float32 rounding through T steps

---------------------------------------------------------------- helpers

-- JSON for the case descriptions (strings, numbers, booleans, arrays, string-keyed tables).
local function json(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v):gsub("\\\n", "\\n")
  elseif t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  elseif t == "boolean" then return tostring(v)
  elseif v == nil then return "null" end
  if v[1] ~= nil or next(v) == nil and getmetatable(v) == "array" then
    local parts = {}
    for i, e in ipairs(v) do parts[i] = json(e) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = json(k) .. ":" .. json(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local dir
local function put(name, t) mg.save(t:to("float32"):contiguous(), dir .. "/" .. name .. ".npy") end

-- Random float32 values scaled by 'scale'.
local function rand32(shape, scale) return mg.randn(shape) * (scale or 1) end

local function randomize(layer, scale)
  for _, p in ipairs(layer:parameters()) do p:assign(rand32(p:shape(), scale or 0.5)) end
end

-- The weights of a layer as .npy names (prefix_i), in parameters() order (Keras's order).
local function put_weights(prefix, params)
  local names = {}
  for i, p in ipairs(params) do
    names[i] = prefix .. "_w" .. i
    put(names[i], p)
  end
  return names
end

-- A (B, T) mask with rows of the given lengths, right-padded (or left-padded with 'left').
local function length_mask(B, T, lengths, left)
  local rows = {}
  for b = 1, B do
    rows[b] = {}
    for t = 1, T do
      local on = left and t > T - lengths[b] or not left and t <= lengths[b]
      rows[b][t] = on and 1 or 0
    end
  end
  return mg.tensor(rows)
end

-- The dropout masks a cell used in its last sequence, as names for keras_ref.py.
local function put_masks(prefix, cell)
  local out = {}
  local function one(tag, m)
    if m == nil then return nil end
    if mg.is_tensor(m) then
      put(prefix .. tag, m)
      return prefix .. tag
    end
    local names = {}
    for k, t in ipairs(m) do
      names[k] = prefix .. tag .. k
      put(names[k], t)
    end
    return names
  end
  out.dp = one("_dp", cell.last_dropout_mask)
  out.rdp = one("_rdp", cell.last_recurrent_dropout_mask)
  return out
end

---------------------------------------------------------------- the Keras cases

-- Each case: name, and run() -> the case table for keras_ref.py (without name) and the array
-- of moongrad results in Keras's order.
local cases = {}
local function case(name, run) cases[#cases + 1] = { name = name, run = run } end

local B, T, D = 3, 5, 4

-- A layer case: moongrad layer 'l' called as l(x, call...) and its Keras spec.
local function layer_case(name, make, spec, call)
  case(name, function()
    local x = rand32({ B, T, D })
    local l = make()
    l:build(D)
    randomize(l)
    put(name .. "_x", x)
    local c = { kind = "layer", spec = spec, x = name .. "_x", weights = put_weights(name, l:parameters()) }
    local copts = {}
    if call then
      local m = call.mask
      if m then put(name .. "_mask", m); c.mask = name .. "_mask"; copts.mask = m end
      if call.init then
        c.initial_state = {}
        for i, s in ipairs(call.init) do
          put(name .. "_s" .. i, s)
          c.initial_state[i] = name .. "_s" .. i
        end
      end
      if call.training then c.training = true; copts.training = true end
    end
    local out = table.pack(l(x, call and call.init, copts))
    if call and call.training then
      local cells = l.cell.cells or { l.cell }
      c.dropout = {}
      for i, cell in ipairs(cells) do c.dropout[i] = put_masks(name .. "_c" .. i, cell) end
    end
    return c, out
  end)
end

local function full(extra)
  local cfg = { units = 3, return_sequences = true, return_state = true }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return cfg
end
local function opts_of(cfg)                            -- the moongrad options of a Keras config
  local o = {}
  for k, v in pairs(cfg) do if k ~= "units" then o[k] = v end end
  return o
end
local function keras_layer(kind, cfg) return { layer = kind, config = cfg } end

-- every layer class with its options, masks and initial states
for _, kind in ipairs { "SimpleRNN", "LSTM", "GRU" } do
  local nstates = kind == "LSTM" and 2 or 1
  local function init() local s = {} for i = 1, nstates do s[i] = rand32({ B, 3 }) end return s end
  local variants = {
    { "defaults", {} },
    { "no_bias", { use_bias = false } },
    { "relu", { activation = "relu" } },
    { "go_backwards", { go_backwards = true } },
    { "last_only", { return_sequences = false } },
    { "unroll", { unroll = true } },
  }
  if kind ~= "SimpleRNN" then
    variants[#variants + 1] = { "recurrent_softplus", { recurrent_activation = "softplus", activation = "sigmoid" } }
    variants[#variants + 1] = { "hard_sigmoid_gelu", { recurrent_activation = "hard_sigmoid", activation = "gelu" } }
    variants[#variants + 1] = { "silu_mish", { recurrent_activation = "silu", activation = "mish", dropout = 0.2 } }
  else
    variants[#variants + 1] = { "selu", { activation = "selu" } }
    variants[#variants + 1] = { "leaky_relu", { activation = "leaky_relu" } }
  end
  if kind == "GRU" then
    variants[#variants + 1] = { "reset_before", { reset_after = false } }
    variants[#variants + 1] = { "reset_before_no_bias", { reset_after = false, use_bias = false } }
  end
  for _, v in ipairs(variants) do
    local cfg = full(v[2])
    layer_case(kind .. "_" .. v[1], function() return nn[kind](3, opts_of(cfg)) end, keras_layer(kind, cfg),
      { init = v[1] == "defaults" and init() or nil })
  end
  -- masks: right padding, left padding with initial states, an all-masked row, go_backwards,
  -- zero_output_for_mask, and return_sequences = false
  local right = length_mask(B, T, { 5, 3, 1 })
  local left = length_mask(B, T, { 4, 2, 5 }, true)
  local holes = mg.tensor { { 1, 0, 1, 0, 1 }, { 0, 0, 0, 0, 0 }, { 1, 1, 0, 0, 1 } }
  local mvariants = {
    { "mask_right", {}, right }, { "mask_left_init", {}, left, init() }, { "mask_holes", {}, holes },
    { "mask_backwards", { go_backwards = true }, holes, init() },
    { "mask_zero_output", { zero_output_for_mask = true }, holes },
    { "mask_last", { return_sequences = false }, right, init() },
    { "mask_last_backwards", { return_sequences = false, go_backwards = true }, left },
  }
  if kind == "GRU" then mvariants[#mvariants + 1] = { "mask_reset_before", { reset_after = false }, holes, init() } end
  for _, v in ipairs(mvariants) do
    local cfg = full(v[2])
    layer_case(kind .. "_" .. v[1], function() return nn[kind](3, opts_of(cfg)) end, keras_layer(kind, cfg),
      { mask = v[3], init = v[4] })
  end
  -- dropout (Keras's masks: one per sequence; per gate with recurrent dropout)
  for _, v in ipairs { { "dropout", { dropout = 0.4 } }, { "recurrent_dropout", { recurrent_dropout = 0.3 } },
                        { "both_dropouts", { dropout = 0.25, recurrent_dropout = 0.5 } } } do
    local cfg = full(v[2])
    local o = opts_of(cfg)
    o.seed = 7
    layer_case(kind .. "_" .. v[1], function() return nn[kind](3, o) end, keras_layer(kind, cfg),
      { training = true, mask = v[1] == "both_dropouts" and holes or nil })
  end
end

-- stateful layers with masks: two calls, the second from the carried states of the first
for _, kind in ipairs { "LSTM", "GRU" } do
  local name = "stateful_" .. kind
  case(name, function()
    local x, x2 = rand32({ B, T, D }), rand32({ B, T, D })
    local cfg = { units = 3, stateful = true, return_sequences = true, return_state = true }
    local l = nn[kind](3, opts_of(cfg))
    l:build(D)
    randomize(l)
    local mask = length_mask(B, T, { 5, 2, 3 })
    put(name .. "_x", x); put(name .. "_x2", x2); put(name .. "_mask", mask)
    local c = { kind = "layer", spec = keras_layer(kind, cfg), x = name .. "_x", x2 = name .. "_x2",
      mask = name .. "_mask", weights = put_weights(name, l:parameters()) }
    local out = { l(x, { mask = mask }) }
    for _, t in ipairs { l(x2, { mask = mask }) } do out[#out + 1] = t end
    return c, out
  end)
end

-- stacked cells: nn.RNN{cells} against keras.layers.RNN([cells]), nested states
case("stacked_lstm_gru", function()
  local x = rand32({ B, T, D })
  local l = nn.RNN({ nn.LSTMCell(D, 3), nn.GRUCell(3, 2), nn.SimpleRNNCell(2, 4) },
    { return_sequences = true, return_state = true })
  randomize(l)
  put("stacked_lstm_gru_x", x)
  local mask = length_mask(B, T, { 5, 2, 4 })
  put("stacked_lstm_gru_mask", mask)
  local c = { kind = "layer", x = "stacked_lstm_gru_x", mask = "stacked_lstm_gru_mask",
    weights = put_weights("stacked_lstm_gru", l:parameters()),
    spec = { layer = "RNN", config = { return_sequences = true, return_state = true },
      cells = { { layer = "LSTMCell", config = { units = 3 } }, { layer = "GRUCell", config = { units = 2 } },
                { layer = "SimpleRNNCell", config = { units = 4 } } } } }
  local out, s1, s2, s3 = l(x, { mask = mask })
  return c, { out, s1[1], s1[2], s2[1], s3[1] }
end)

case("stacked_dropout", function()
  local x = rand32({ B, T, D })
  local cells = { nn.LSTMCell(D, 3, { dropout = 0.3, recurrent_dropout = 0.2, seed = 1 }),
                  nn.GRUCell(3, 2, { dropout = 0.5, seed = 2 }) }
  local l = nn.RNN(cells, { return_sequences = true })
  randomize(l)
  put("stacked_dropout_x", x)
  local out = l(x, { training = true })
  local c = { kind = "layer", x = "stacked_dropout_x", training = true,
    weights = put_weights("stacked_dropout", l:parameters()),
    dropout = { put_masks("stacked_dropout_c1", cells[1]), put_masks("stacked_dropout_c2", cells[2]) },
    spec = { layer = "RNN", config = { return_sequences = true },
      cells = { { layer = "LSTMCell", config = { units = 3, dropout = 0.3, recurrent_dropout = 0.2 } },
                { layer = "GRUCell", config = { units = 2, dropout = 0.5 } } } } }
  return c, { out }
end)

-- Bidirectional: merge modes incl. none, masks (zero_output_for_mask = return_sequences)
for _, v in ipairs { { "concat", true }, { "none", true }, { "sum", false }, { "none", false }, { "ave", true } } do
  local mode, seqs = v[1], v[2]
  local name = "bidirectional_" .. mode .. (seqs and "_seq" or "_last")
  case(name, function()
    local x = rand32({ B, T, D })
    local l = nn.Bidirectional(nn.LSTM(3, { return_sequences = seqs, return_state = true, input_size = D }),
      { merge_mode = mode == "none" and false or mode })
    l.backward_layer:build(D)
    randomize(l)
    local mask = mg.tensor { { 1, 0, 1, 0, 1 }, { 1, 1, 1, 0, 0 }, { 0, 0, 1, 1, 1 } }
    put(name .. "_x", x)
    put(name .. "_mask", mask)
    local c = { kind = "layer", x = name .. "_x", mask = name .. "_mask", weights = put_weights(name, l:parameters()),
      spec = { layer = "Bidirectional", config = { merge_mode = mode },
               inner = keras_layer("LSTM", { units = 3, return_sequences = seqs, return_state = true }) } }
    return c, table.pack(l(x, { mask = mask }))
  end)
end

case("bidirectional_backward_layer", function()
  local x = rand32({ B, T, D })
  local back = nn.GRU(2, { return_sequences = true, go_backwards = true, reset_after = false, input_size = D })
  local l = nn.Bidirectional(nn.GRU(2, { return_sequences = true, input_size = D }), { backward_layer = back })
  randomize(l)
  put("bidirectional_backward_layer_x", x)
  local c = { kind = "layer", x = "bidirectional_backward_layer_x",
    weights = put_weights("bidirectional_backward_layer", l:parameters()),
    spec = { layer = "Bidirectional", inner = keras_layer("GRU", { units = 2, return_sequences = true }),
      backward = keras_layer("GRU", { units = 2, return_sequences = true, go_backwards = true, reset_after = false }) } }
  return c, { l(x) }
end)

-- Sequential: Embedding(mask_zero) -> LSTM -> LSTM, and Masking -> GRU; the mask flows
case("sequential_embedding_mask", function()
  local V = 6
  local ids = mg.tensor { { 3, 1, 6, 0, 0 }, { 2, 2, 0, 0, 0 }, { 5, 4, 3, 2, 1 } }
  local emb = nn.Embedding(V, D, { mask_zero = true })
  local m = nn.Sequential { emb, nn.LSTM(3, { return_sequences = true }), nn.LSTM(2) }
  m(ids)
  randomize(m)
  put("sequential_embedding_mask_x", ids)
  local w = m:parameters()
  -- Keras's table has a row for id 0 (masked); ours starts at id 1
  local table_k = mg.cat({ mg.zeros(1, D), w[1] }, 1)
  put("sequential_embedding_mask_table", table_k)
  local names = put_weights("sequential_embedding_mask", w)
  names[1] = "sequential_embedding_mask_table"
  local c = { kind = "sequential", x = "sequential_embedding_mask_x", weights = names,
    layers = { { layer = "Embedding", config = { input_dim = V + 1, output_dim = D, mask_zero = true } },
               keras_layer("LSTM", { units = 3, return_sequences = true }), keras_layer("LSTM", { units = 2 }) } }
  return c, { m(ids) }
end)

case("sequential_masking", function()
  local x = rand32({ B, T, D })
  for _, bt in ipairs { { 1, 4 }, { 1, 5 }, { 2, 1 }, { 3, 3 } } do x[bt[1]][bt[2]]:fill(0) end
  local m = nn.Sequential { nn.Masking(0), nn.GRU(3, { return_sequences = true }), nn.TimeDistributed(nn.Dense(3, 2)) }
  m(x)
  randomize(m)
  put("sequential_masking_x", x)
  local c = { kind = "sequential", x = "sequential_masking_x", weights = put_weights("sequential_masking", m:parameters()),
    layers = { { layer = "Masking", config = { mask_value = 0 } }, keras_layer("GRU", { units = 3, return_sequences = true }),
               { layer = "TimeDistributed", inner = keras_layer("Dense", { units = 2 }) } } }
  return c, { m(x) }
end)

for _, v in ipairs { { "ln_default", {}, {} }, { "ln_axis2", { axis = 2 }, { axis = 1 } },
                     { "ln_no_center", { center = false, epsilon = 0.1 }, { center = false, epsilon = 0.1 } },
                     { "ln_rms", { rms_scaling = true }, { rms_scaling = true } } } do
  case(v[1], function()
    local x = rand32({ B, T, D }, 2) + 1
    local l = nn.LayerNormalization(v[2])
    l(x)
    randomize(l)
    put(v[1] .. "_x", x)
    local c = { kind = "sequential", x = v[1] .. "_x", weights = put_weights(v[1], l:parameters()),
      layers = { { layer = "LayerNormalization", config = v[3] } } }
    return c, { l(x) }
  end)
end

-- activations by name (those this build has), on values around every kink
local ACTS = { "linear", "relu", "sigmoid", "tanh", "softmax", "softplus", "softsign", "selu", "elu",
  "exponential", "hard_sigmoid", "gelu", "silu", "swish", "mish", "relu6", "leaky_relu", "log_softmax" }
local MG_OP = { softsign = "softsign", selu = "selu", elu = "elu", hard_sigmoid = "hard_sigmoid", gelu = "gelu",
  silu = "silu", swish = "silu", mish = "mish", relu6 = "relu6", leaky_relu = "leaky_relu" }
local function has_op(name) return MG_OP[name] == nil or mg[MG_OP[name]] ~= nil end
for _, a in ipairs(ACTS) do
  if has_op(a) then
    case("act_" .. a, function()
      local x = mg.linspace(-7, 7, 57):reshape(3, 19)
      put("act_" .. a .. "_x", x)
      local f = nn.Dense(19, 19, { activation = a, kernel_initializer = "identity" })
      return { kind = "activation", activation = a, x = "act_" .. a .. "_x" }, { f(x) }
    end)
  end
end

-- constraints and regularizers on a matrix (axis: ours 1-based, Keras's 0-based)
local W = mg.tensor { { 1.5, -0.2, 0.3 }, { -2.0, 0.1, 0.05 }, { 0.5, 0.4, -1.0 }, { 0.0, -0.3, 2.5 } }
for _, v in ipairs {
  { "max_norm", {}, {} }, { "max_norm", { max_value = 1.0, axis = 2 }, { max_value = 1.0, axis = 1 } },
  { "min_max_norm", { min_value = 0.5, max_value = 1.5, rate = 0.7 }, { min_value = 0.5, max_value = 1.5, rate = 0.7 } },
  { "non_neg", {}, {} }, { "unit_norm", {}, {} }, { "unit_norm", { axis = 2 }, { axis = 1 } } } do
  local name = "constraint_" .. v[1] .. "_" .. #cases
  case(name, function()
    put(name .. "_x", W)
    local spec = { v[1] }
    for k, x in pairs(v[2]) do spec[k] = x end
    local cell = nn.SimpleRNNCell(4, 3, { kernel_initializer = W, kernel_constraint = spec })
    cell.kernel:assign(W)
    cell:apply_constraints()
    return { kind = "constraint", constraint = v[1], config = v[3], x = name .. "_x" }, { cell.kernel }
  end)
end
for _, v in ipairs { { "l1", {} }, { "l2", {} }, { "l1", { l1 = 0.3 } }, { "l2", { l2 = 0.2 } },
                     { "l1_l2", { l1 = 0.1, l2 = 0.05 } }, { "l1_l2", {} } } do
  local name = "regularizer_" .. v[1] .. "_" .. #cases
  case(name, function()
    put(name .. "_x", W)
    local spec = { v[1] }
    for k, x in pairs(v[2]) do spec[k] = x end
    local d = nn.Dense(4, 3, { kernel_initializer = W, kernel_regularizer = spec, use_bias = false })
    return { kind = "regularizer", regularizer = v[1], config = v[2], x = name .. "_x" }, { d:losses()[1] }
  end)
end
case("activity_regularizer", function()
  local x = rand32({ B, T, D })
  local l = nn.LSTM(3, { activity_regularizer = { "l2", l2 = 0.1 }, input_size = D })
  randomize(l)
  put("activity_regularizer_x", x)
  l(x)
  return { kind = "activity", x = "activity_regularizer_x", weights = put_weights("activity_regularizer", l:parameters()),
    spec = keras_layer("LSTM", { units = 3, activity_regularizer = { class_name = "L2", config = { l2 = 0.1 } } }) },
    { l:losses()[1] }
end)

---------------------------------------------------------------- running Keras

local VENV_OK, PY = pcall(support.venv_python)

describe("against Keras 3 (spec/keras_ref.py, same weights, float32)", function()
  if not VENV_OK then
    it("needs the test venv", function() error(PY) end)
    return
  end
  local results = {}
  setup(function()
    dir = support.tmpdir()
    mg.manual_seed(14)
    local list = {}
    for i, c in ipairs(cases) do
      local desc, out = c.run()
      desc.name = c.name
      list[i] = desc
      results[c.name] = out
    end
    support.write_file(dir .. "/cases.json", json(list))
    local script = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/keras_ref.py"
    os.execute(string.format("KERAS_BACKEND=jax %s %s %s >%s/log.txt 2>&1", PY, support.shq(script),
      support.shq(dir), dir))
  end)
  teardown(function() support.rmtree(dir) end)

  for _, c in ipairs(cases) do
    it(c.name, function()
      local err = io.open(dir .. "/err_" .. c.name .. ".txt")
      if err then error("keras_ref.py failed on " .. c.name .. ":\n" .. err:read("a")) end
      local out = results[c.name]
      local n = out.n or #out
      for i = 1, n do
        local path = dir .. "/out_" .. c.name .. "_" .. i .. ".npy"
        local f = io.open(path)
        assert(f, "Keras gave no result " .. i .. " for " .. c.name .. " (log: " .. support.read_file(dir .. "/log.txt") .. ")")
        f:close()
        local want = mg.load(path)
        local got = out[i]:to("float64")
        if want:dim() == 0 then want = want:reshape(1) end
        if got:dim() == 0 then got = got:reshape(1) end
        assert_close(want, got, F32_TOL * math.max(1, want:abs():max():item()), c.name .. " result " .. i)
      end
      assert.is_nil(io.open(dir .. "/out_" .. c.name .. "_" .. (n + 1) .. ".npy"), "Keras returned more results")
    end)
  end
end)
