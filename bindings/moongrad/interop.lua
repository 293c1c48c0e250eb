-- moongrad.interop: weights from and to other frameworks, added to nn (loaded with mg.nn).
-- PyTorch: nn.from_torch / nn.to_torch map a state_dict (weight_ih_l0, bias_hh_l1_reverse,
-- weight, bias) onto moongrad layers and back, with the gate and bias layouts of
-- docs/checkpoints.md. Keras: nn.load_keras / nn.save_keras (HDF5, when built with libhdf5).
local mg = require "moongrad"
local nn = require "moongrad.nn"

local getmetatable, ipairs, pairs, pcall, string, table, tostring, type =
      getmetatable, ipairs, pairs, pcall, string, table, tostring, type
local debug = debug
local _ENV = nil

local is_tensor, shapestr = mg.is_tensor, mg.shapestr
local checks = mg._checks(debug.getinfo(1, "S").source)
local raise, raisef, describe, check_opts = checks.raise, checks.raisef, checks.describe, checks.check_opts

-- Calls the C function 'f'; its error is raised again at the user's line, without the
-- position inside this file ("moongrad/interop.lua:12: ").
local function call(f, ...)
  local ok, a, b = pcall(f, ...)
  if not ok then raise((tostring(a):gsub("^moongrad/interop%.lua:%d+: ", ""))) end
  return a, b
end

local function class_of(l)
  local mt = type(l) == "table" and getmetatable(l)
  return mt and mt.__name or nil
end

local function is_layer(l) return type(l) == "table" and type(l.parameters) == "function" end

local GATES = { LSTMCell = 4, GRUCell = 3, SimpleRNNCell = 1 }

-- The cells of stacked cells (nn.RNN({cells})) when all are built-in cells of one kind: one
-- multi-layer torch RNN (stepping the stack per time step or each layer over the whole
-- sequence gives the same outputs); nil otherwise.
local function stacked_cells(cell)
  if class_of(cell) ~= "StackedRNNCells" then return nil end
  local kind = class_of(cell.cells[1])
  for _, c in ipairs(cell.cells) do
    if class_of(c) ~= kind or not GATES[kind] then return nil end
  end
  return cell.cells
end

-- The recurrent layers of 'layer' as torch numbers them: an array of {fwd=cell, bwd=cell}
-- (layer k is torch's _l(k-1)); nil when 'layer' is not recurrent (or a Sequential of them).
local function rnn_stack(layer)
  local function one(l)
    local c = class_of(l)
    if c ~= "Bidirectional" and type(l) == "table" and (GATES[class_of(l.cell)] or stacked_cells(l.cell)) then
      if l.go_backwards then return nil end            -- RNN, LSTM, ...; stacked cells
      local out = {}
      for k, cell in ipairs(stacked_cells(l.cell) or { l.cell }) do out[k] = { fwd = cell } end
      return out
    elseif c == "Bidirectional" and GATES[class_of(l.forward_layer.cell)] then
      return { { fwd = l.forward_layer.cell, bwd = l.backward_layer.cell } }
    end
  end
  local s = one(layer)
  if s then return s end
  if class_of(layer) ~= "Sequential" or #layer.layers == 0 then return nil end
  local out = {}
  for _, l in ipairs(layer.layers) do
    local ls = one(l)
    if ls == nil then return nil end
    for _, e in ipairs(ls) do
      out[#out + 1] = e
      if (e.bwd ~= nil) ~= (out[1].bwd ~= nil) then return nil end
    end
  end
  return out
end

-- Column blocks of a (k*u) vector or the rows of a (k*u, n) matrix, reordered: 'order'[j] is
-- the source block of block j.
local function reorder(t, u, order)
  local parts = {}
  for j, src in ipairs(order) do parts[j] = t:narrow(1, (src - 1) * u + 1, u) end
  return mg.cat(parts, 1)
end
local GRU_TO_KERAS = { 2, 1, 3 }     -- torch r, z, n -> keras z, r, h
local GRU_TO_TORCH = { 2, 1, 3 }     -- the same swap back

local unbuilt, build = nn._unbuilt, nn._build_lazy   -- (serialize.lua)

-- The torch submodule name of child i of a Sequential: modules[i] when the caller named
-- them (a custom torch Module: "emb", "lstm", ...), else torch's nn.Sequential index i - 1.
local function module_name(fn, modules, i, l)
  if modules == nil then return tostring(i - 1) end
  local m = modules[i]
  if type(m) ~= "string" or m == "" then
    raisef("%s: modules[%d] must name the torch submodule of the Sequential's child %d (%s), got %s", fn, i, i,
      tostring(l), describe(m))
  end
  return m
end

---------------------------------------------------------------- from_torch

-- A pending assignment list: {var, value} pairs, and the names used.
local function plan(fn, sd, prefix)
  local p = { fn = fn, sd = sd, prefix = prefix, sets = {}, used = {}, missing = {} }
  function p.get(name, shape)
    local full = p.prefix .. name
    local t = sd[full]
    if t == nil then p.missing[#p.missing + 1] = full return nil end
    if not is_tensor(t) then raisef("%s: '%s' is %s, expected a tensor", fn, full, describe(t)) end
    p.used[full] = true
    if shape and shapestr(t) ~= shape then
      raisef("%s: '%s' has shape %s, the layer needs %s", fn, full, shapestr(t), shape)
    end
    return t
  end
  function p.set(var, value) p.sets[#p.sets + 1] = { var, value } end
  return p
end

local function dims(...) return "(" .. table.concat({ ... }, ",") .. ")" end

-- One torch direction (suffix "_l0", "_l1_reverse", ...) into 'cell'.
local function cell_from_torch(p, cell, suffix)
  local kind, u, d = class_of(cell), cell.units, cell.input_size
  local k = GATES[kind]
  if kind == "GRUCell" and not cell.reset_after then
    raisef("%s: PyTorch's GRU applies the reset gate after the matmul: build the GRUCell with reset_after=true", p.fn)
  end
  local wih = p.get("weight_ih" .. suffix, dims(k * u, d))
  local whh = p.get("weight_hh" .. suffix, dims(k * u, u))
  local bih, bhh
  if cell.bias then
    bih = p.get("bias_ih" .. suffix, dims(k * u))
    bhh = p.get("bias_hh" .. suffix, dims(k * u))
  end
  if wih == nil or whh == nil or (cell.bias and (bih == nil or bhh == nil)) then return end
  if kind == "GRUCell" then
    p.set(cell.kernel, reorder(wih, u, GRU_TO_KERAS):transpose(1, 2))
    p.set(cell.recurrent_kernel, reorder(whh, u, GRU_TO_KERAS):transpose(1, 2))
    if cell.bias then
      p.set(cell.bias, mg.stack({ reorder(bih, u, GRU_TO_KERAS), reorder(bhh, u, GRU_TO_KERAS) }, 1))
    end
  else                                               -- LSTM (i, f, g, o = i, f, c, o), RNN
    p.set(cell.kernel, wih:transpose(1, 2))
    p.set(cell.recurrent_kernel, whh:transpose(1, 2))
    if cell.bias then p.set(cell.bias, bih + bhh) end
  end
end

-- Whether 'l' is a recurrent layer (built or not), a torch RNN module's counterpart.
local function recurrent(l)
  if class_of(l) == "Bidirectional" then return recurrent(l.forward_layer) end
  return type(l) == "table" and ((l._ctor ~= nil and l.cell == nil) or GATES[class_of(l.cell)] ~= nil
    or stacked_cells(l.cell) ~= nil)
end

-- Builds the unbuilt layer 'l' (at p.prefix, torch layer 'suffix' "_l0", "_l1", ...) for the
-- input size the state dict's shapes give.
local function build_from_torch(p, l, suffix)
  if not unbuilt(l) then return end
  local function size(name, d)
    local t = p.sd[p.prefix .. name]
    if is_tensor(t) and t:dim() >= d then return t:size(d) end
  end
  if class_of(l) == "LayerNormalization" then build(l, size("weight", 1) or size("bias", 1))
  else build(l, size("weight_ih" .. suffix, 2)) end
end

local function layer_from_torch(p, layer)
  if class_of(layer) == "Sequential" then
    local stacked = #layer.layers > 0
    for _, l in ipairs(layer.layers) do stacked = stacked and recurrent(l) end
    if stacked then
      local k = 0                                    -- torch's layer index of each child
      for _, l in ipairs(layer.layers) do
        build_from_torch(p, l, "_l" .. k)
        k = k + (type(l) == "table" and stacked_cells(l.cell) and #l.cell.cells or 1)
      end
    end
  else
    build_from_torch(p, layer, "_l0")
  end
  local stack = rnn_stack(layer)
  if stack then
    for k, s in ipairs(stack) do
      cell_from_torch(p, s.fwd, "_l" .. (k - 1))
      if s.bwd then cell_from_torch(p, s.bwd, "_l" .. (k - 1) .. "_reverse") end
    end
    return
  end
  local c = class_of(layer)
  if c == "Dense" then
    local w = p.get("weight", dims(layer.units, layer.input_size))
    if w then p.set(layer.kernel, w:transpose(1, 2)) end
    if layer.bias then
      local b = p.get("bias", dims(layer.units))
      if b then p.set(layer.bias, b) end
    end
  elseif c == "Embedding" then                       -- with mask_zero, torch's row 0 is the padding row
    local pad = layer.mask_zero and 1 or 0
    local w = p.get("weight", dims(layer.input_dim + pad, layer.output_dim))
    if w then p.set(layer.embeddings, w:narrow(1, 1 + pad, layer.input_dim)) end
  elseif c == "LayerNormalization" then
    if layer.axis ~= -1 then
      raisef("%s: torch.nn.LayerNorm normalizes the last dimension; this LayerNormalization has axis = %d",
        p.fn, layer.axis)
    end
    for _, wb in ipairs { { "weight", layer.gamma }, { "bias", layer.beta } } do
      if wb[2] then
        local t = p.get(wb[1], dims(layer.size))
        if t then p.set(wb[2], t) end
      end
    end
  elseif c == "Sequential" then                      -- a torch nn.Sequential "0.", "1.", ... or 'modules'
    local prefix, modules = p.prefix, p.modules
    p.modules = nil                                  -- names only the outermost Sequential's children
    for i, l in ipairs(layer.layers) do
      if is_layer(l) and (unbuilt(l) or #l:parameters() > 0) then
        p.prefix = prefix .. module_name(p.fn, modules, i, l) .. "."
        build_from_torch(p, l, "_l0")
        layer_from_torch(p, l)
      end
    end
    p.prefix = prefix
  else
    raisef("%s: no PyTorch mapping for %s", p.fn, tostring(layer))
  end
end

-- The state dict argument: a table, or the path of a safetensors or .npz file.
local function state_dict(fn, sd)
  if type(sd) == "string" then
    if sd:sub(-4) == ".npz" then return mg.load_npz(sd) end
    return (mg.load_tensors(sd))
  end
  if type(sd) ~= "table" or is_tensor(sd) then
    raisef("%s: expected a state dict (a table of tensors or a file name), got %s", fn, describe(sd))
  end
  return sd
end

local function check_modules(fn, modules)
  if modules ~= nil and (type(modules) ~= "table" or is_tensor(modules)) then
    raisef("%s: modules must be an array of torch submodule names, got %s", fn, describe(modules))
  end
  return modules
end

-- nn.from_torch(layer, state_dict [, {prefix="", strict=true, modules=}]): sets the layer's
-- weights from a PyTorch state_dict (a table name -> tensor, or a safetensors / .npz file of
-- one). Names are looked up under 'prefix' ("rnn." for a submodule); 'modules' names the
-- torch submodules of a Sequential's children (a custom torch Module). Every name and shape
-- is checked before a weight changes; with 'strict', names under the prefix that the layer
-- does not use are errors. Unbuilt layers (nn.LSTM(units)) are built from the shapes.
function nn.from_torch(layer, sd, opts)
  opts = check_opts("from_torch", opts, { prefix = true, strict = true, modules = true })
  if not is_layer(layer) then raisef("from_torch: expected a layer, got %s", describe(layer)) end
  sd = state_dict("from_torch", sd)
  local prefix = opts.prefix or ""
  if type(prefix) ~= "string" then raisef("from_torch: prefix must be a string, got %s", describe(prefix)) end
  local p = plan("from_torch", sd, prefix)
  p.modules = check_modules("from_torch", opts.modules)
  layer_from_torch(p, layer)
  if #p.missing > 0 then
    table.sort(p.missing)
    raisef("from_torch: the state dict has no %s", table.concat(p.missing, ", "))
  end
  if opts.strict ~= false then
    local extra = {}
    for k in pairs(sd) do
      if type(k) == "string" and k:sub(1, #prefix) == prefix and not p.used[k] then extra[#extra + 1] = k end
    end
    table.sort(extra)
    if #extra > 0 then raisef("from_torch: unexpected names for %s: %s", tostring(layer), table.concat(extra, ", ")) end
  end
  mg.no_grad(function()
    for _, s in ipairs(p.sets) do s[1]:copy(s[2]) end
  end)
  return layer
end

---------------------------------------------------------------- to_torch

local function cell_to_torch(out, prefix, cell, suffix)
  local kind, u = class_of(cell), cell.units
  if kind == "GRUCell" then
    if not cell.reset_after then
      raisef("to_torch: PyTorch's GRU is reset_after=true; this GRUCell has reset_after=false")
    end
    out[prefix .. "weight_ih" .. suffix] = reorder(cell.kernel:transpose(1, 2), u, GRU_TO_TORCH)
    out[prefix .. "weight_hh" .. suffix] = reorder(cell.recurrent_kernel:transpose(1, 2), u, GRU_TO_TORCH)
    if cell.bias then
      out[prefix .. "bias_ih" .. suffix] = reorder(cell.bias:select(1, 1), u, GRU_TO_TORCH)
      out[prefix .. "bias_hh" .. suffix] = reorder(cell.bias:select(1, 2), u, GRU_TO_TORCH)
    end
  else
    out[prefix .. "weight_ih" .. suffix] = cell.kernel:transpose(1, 2):contiguous()
    out[prefix .. "weight_hh" .. suffix] = cell.recurrent_kernel:transpose(1, 2):contiguous()
    if cell.bias then                                -- Keras's one bias: all of it in bias_ih
      out[prefix .. "bias_ih" .. suffix] = cell.bias:clone()
      out[prefix .. "bias_hh" .. suffix] = mg.zeros(cell.bias:shape(), { dtype = cell.bias.dtype })
    end
  end
end

local function layer_to_torch(out, prefix, layer, modules)
  local stack = rnn_stack(layer)
  if stack then
    for k, s in ipairs(stack) do
      cell_to_torch(out, prefix, s.fwd, "_l" .. (k - 1))
      if s.bwd then cell_to_torch(out, prefix, s.bwd, "_l" .. (k - 1) .. "_reverse") end
    end
    return
  end
  local c = class_of(layer)
  if c == "Dense" then
    out[prefix .. "weight"] = layer.kernel:transpose(1, 2):contiguous()
    if layer.bias then out[prefix .. "bias"] = layer.bias:clone() end
  elseif c == "Embedding" then                       -- mask_zero: a zero padding row 0 first
    local e = layer.embeddings
    out[prefix .. "weight"] = layer.mask_zero
      and mg.cat({ mg.zeros({ 1, layer.output_dim }, { dtype = e.dtype }), e }, 1) or e:clone()
  elseif c == "LayerNormalization" then
    if layer.axis ~= -1 then
      raisef("to_torch: torch.nn.LayerNorm normalizes the last dimension; this LayerNormalization has axis = %d",
        layer.axis)
    end
    if layer.gamma then out[prefix .. "weight"] = layer.gamma:clone() end
    if layer.beta then out[prefix .. "bias"] = layer.beta:clone() end
  elseif c == "Sequential" then
    for i, l in ipairs(layer.layers) do
      if is_layer(l) and unbuilt(l) then
        raisef("to_torch: layer %d (%s) has no weights yet: call the model once, or give input_size=", i, tostring(l))
      end
      if is_layer(l) and #l:parameters() > 0 then
        layer_to_torch(out, prefix .. module_name("to_torch", modules, i, l) .. ".", l)
      end
    end
  else
    raisef("to_torch: no PyTorch mapping for %s", tostring(layer))
  end
end

-- nn.to_torch(layer [, {prefix="", modules=}]): a new table of PyTorch state_dict names -> tensors
-- (copies) for the layer, the inverse of nn.from_torch; save it with mg.save_tensors or
-- mg.save_npz for torch's load_state_dict.
function nn.to_torch(layer, opts)
  opts = check_opts("to_torch", opts, { prefix = true, modules = true })
  if not is_layer(layer) then raisef("to_torch: expected a layer, got %s", describe(layer)) end
  local prefix = opts.prefix or ""
  if type(prefix) ~= "string" then raisef("to_torch: prefix must be a string, got %s", describe(prefix)) end
  local out = {}
  local modules = check_modules("to_torch", opts.modules)
  if unbuilt(layer) then
    raisef("to_torch: %s has no weights yet: call it once, or give input_size=", tostring(layer))
  end
  mg.no_grad(function() layer_to_torch(out, prefix, layer, modules) end)
  return out
end

---------------------------------------------------------------- Keras HDF5 files

-- Keras 3 '.weights.h5' (keras/src/saving/saving_lib.py): a model's layers are groups
-- "layers/<snake_case class name>" (a second of one class "_1", then "_2", ...: by class,
-- never by layer name), each object's own variables the datasets "<path>/vars/0", "1", ...
-- in the order the object created them, with its name as the attribute "name" of the "vars"
-- group; an RNN layer's weights belong to its "cell", a Bidirectional's to "forward_layer" and
-- "backward_layer". Legacy Keras 2 '.h5' (keras/src/legacy/saving/legacy_h5_format.py): the
-- root (or its "model_weights" group) lists "layer_names"; the layers that have weights, in
-- that order, match the model's layers that have weights, in order; each layer's group lists
-- "weight_names", datasets under the layer's group, in get_weights order.

-- Each moongrad layer's Keras layout: its Keras class in snake case (the group name), and an
-- entry { var, path [, load=, save=] } per Variable in parameters() order, 'path' under the
-- layer's group; 'load' turns Keras's value into the Variable's, 'save' the reverse (nil:
-- the same array). 'names' holds the "name" attributes of the groups, as Keras writes them.
local CELL_CLASS = { LSTMCell = "lstm", GRUCell = "gru", SimpleRNNCell = "simple_rnn" }
local CELL_NAME = { LSTMCell = "lstm_cell", GRUCell = "gru_cell", SimpleRNNCell = "simple_rnn_cell" }
local LAYER_CLASS = { LSTM = "lstm", GRU = "gru", SimpleRNN = "simple_rnn" }   -- unbuilt layer classes

-- A unique name among 'used' (Keras's saving_lib._get_unique_name: "x", "x_1", "x_2", ...).
local function unique(used, name)
  if used[name] then used[name] = used[name] + 1 return name .. "_" .. used[name] end
  used[name] = 0
  return name
end

-- A cell's variables at 'at' (a cell group): a built-in cell's "vars/0..2"; a
-- StackedRNNCells's cells each under "cells/<class>[_k]" (saving_lib's list of saveables).
local function cell_layout(fn, cell, at, out, names)
  local k = class_of(cell)
  if k == "StackedRNNCells" then
    names[at .. "/vars"] = "stacked_rnn_cells"
    local used = {}
    for _, c in ipairs(cell.cells) do
      if CELL_NAME[class_of(c)] == nil and class_of(c) ~= "StackedRNNCells" then
        raisef("%s: no Keras layout for the cell %s", fn, tostring(c))
      end
      cell_layout(fn, c, at .. "/cells/" .. unique(used, CELL_NAME[class_of(c)] or "stacked_rnn_cells"), out, names)
    end
    return
  end
  if CELL_NAME[k] == nil then raisef("%s: no Keras layout for the cell %s", fn, tostring(cell)) end
  names[at .. "/vars"] = CELL_NAME[k]
  for i, v in ipairs(cell:parameters()) do out[#out + 1] = { var = v, path = at .. "/vars/" .. (i - 1) } end
end

local function own_vars(l, out)
  for i, v in ipairs(l:parameters()) do out[#out + 1] = { var = v, path = "/vars/" .. (i - 1) } end
end

-- The Keras class of 'l' (nil: none), for a built or an unbuilt layer.
local function keras_class(l)
  local c = class_of(l)
  if c == "Dense" or c == "Embedding" or c == "TimeDistributed" or c == "Bidirectional" then
    return c == "TimeDistributed" and "time_distributed" or c:lower()
  elseif c == "LayerNormalization" then return "layer_normalization"
  elseif type(l) == "table" and l.cell ~= nil then
    if class_of(l.cell) == "StackedRNNCells" then return "rnn" end   -- keras.layers.RNN([cells])
    return CELL_CLASS[class_of(l.cell)]
  elseif unbuilt(l) then return LAYER_CLASS[c]
  end
end

local function keras_layout(fn, l)
  local c, cls = class_of(l), keras_class(l)
  if cls == nil then raisef("%s: no Keras layout for %s", fn, tostring(l)) end
  local out, names = {}, { ["/vars"] = l.name or cls }
  if c == "Dense" or c == "LayerNormalization" then        -- kernel, bias; gamma, beta (build() order)
    own_vars(l, out)
  elseif c == "Embedding" then
    local e = { var = l.embeddings, path = "/vars/0" }
    if l.mask_zero then                                -- Keras's table has the padding row 0
      e.load = function(t)
        if t:dim() ~= 2 or t:size(1) ~= l.input_dim + 1 then return t end   -- (the shape check names it)
        return t:narrow(1, 2, l.input_dim)
      end
      e.save = function(v) return mg.cat({ mg.zeros({ 1, l.output_dim }, { dtype = v.dtype }), v }, 1) end
      e.shape = dims(l.input_dim + 1, l.output_dim)
    end
    out[1] = e
  elseif c == "TimeDistributed" then
    local _, inner, inames = keras_layout(fn, l.layer)
    for _, e in ipairs(inner) do e.path = "/layer" .. e.path; out[#out + 1] = e end
    for k, v in pairs(inames) do names["/layer" .. k] = v end
    names["/vars"] = "time_distributed"
  elseif c == "Bidirectional" then
    cell_layout(fn, l.forward_layer.cell, "/forward_layer/cell", out, names)
    cell_layout(fn, l.backward_layer.cell, "/backward_layer/cell", out, names)
    names["/vars"], names["/forward_layer/vars"] = "bidirectional", "forward_" .. tostring(l.forward_layer.name)
    names["/backward_layer/vars"] = tostring(l.backward_layer.name)
  else                                                 -- nn.RNN(cell), nn.LSTM, ...: the cell's
    cell_layout(fn, l.cell, "/cell", out, names)
    names["/vars"] = tostring(l.name or l.cell.name)
  end
  return cls, out, names
end

-- The layers of a model that have weights (or will have: unbuilt): a Sequential's children,
-- or the layer itself.
local function weighted_layers(model)
  local ls = class_of(model) == "Sequential" and model.layers or { model }
  local out = {}
  for _, l in ipairs(ls) do
    if is_layer(l) and (unbuilt(l) or #l:parameters() > 0) then out[#out + 1] = l end
  end
  return out
end

-- Each weighted layer with its Keras 3 group "layers/<class>[_k]" and variable entries. An
-- unbuilt layer is built first, for the input size of its first weight in the file
-- ('first_var'(group) gives it: Keras's kernels are (in, ...), gamma and beta (n)).
local function keras3_plan(fn, model, first_var)
  local used, out = {}, {}
  for _, l in ipairs(weighted_layers(model)) do
    local cls = keras_class(l)
    if cls == nil then raisef("%s: no Keras layout for %s", fn, tostring(l)) end
    local group = "layers/" .. unique(used, cls)
    if unbuilt(l) then
      local sub = class_of(l) == "Bidirectional" and "/forward_layer/cell/vars/0"
        or class_of(l) == "LayerNormalization" and "/vars/0" or "/cell/vars/0"
      local t = first_var and first_var(group .. sub)
      if t == nil then raisef("%s: %s has no weights yet: call the model once, or give input_size=", fn, tostring(l)) end
      build(l, t:size(1))
    end
    local _, entries, names = keras_layout(fn, l)
    out[#out + 1] = { layer = l, group = group, entries = entries, names = names }
  end
  return out
end

local function split_lines(s)
  local out = {}
  if s == nil or s == "" then return out end
  for part in (s .. "\n"):gmatch("(.-)\n") do out[#out + 1] = part end
  return out
end

-- Checks every value (todo: {entry, value, where}) against the Keras shape of its entry,
-- then copies them all (through the entry's 'load').
local function assign_all(fn, path, todo)
  for _, pr in ipairs(todo) do
    local e, t, where = pr[1], pr[2], pr[3]
    local v = e.var
    if t == nil then raisef("%s: '%s' has no weight '%s' (for '%s')", fn, path, where, tostring(v.name)) end
    local want = e.shape or shapestr(v)
    if shapestr(t) ~= want then
      raisef("%s: '%s': weight '%s' has shape %s, '%s' of the model is %s%s", fn, path, where, shapestr(t),
        tostring(v.name), shapestr(v), want ~= shapestr(v) and " (" .. want .. " in Keras)" or "")
    end
  end
  mg.no_grad(function()
    for _, pr in ipairs(todo) do pr[1].var:copy(pr[1].load and pr[1].load(pr[2]) or pr[2]) end
  end)
end

-- A layer's entries for the legacy format, where only the order counts: its Keras layout,
-- or (no Keras counterpart, e.g. a custom cell) its parameters as they are.
local function legacy_entries(fn, l)
  if keras_class(l) ~= nil then
    local ok, _, entries = pcall(keras_layout, fn, l)
    if ok then return entries end
  end
  local out = {}
  for i, v in ipairs(l:parameters()) do out[i] = { var = v } end
  return out
end

local function load_legacy(fn, model, path, data, meta, g)
  local names = {}
  for _, n in ipairs(split_lines(meta[g .. "@layer_names"])) do
    if #split_lines(meta[g .. n .. "@weight_names"]) > 0 then names[#names + 1] = n end
  end
  local layers = weighted_layers(model)
  if #names ~= #layers then
    raisef("%s: '%s' has %d layers with weights (%s), the model %d", fn, path, #names,
      table.concat(names, ", "), #layers)
  end
  local todo = {}
  for k, n in ipairs(names) do
    local wn, l = split_lines(meta[g .. n .. "@weight_names"]), layers[k]
    if unbuilt(l) then                                 -- built for its first weight's (in, ...)
      local t = data[g .. n .. "/" .. wn[1]]
      if t ~= nil and t:dim() >= 1 then build(l, t:size(1)) end
    end
    local entries = legacy_entries(fn, l)
    if #wn ~= #entries then
      raisef("%s: '%s': layer '%s' has %d weights, the model's layer %d (%s) has %d", fn, path, n, #wn, k,
        tostring(l), #entries)
    end
    for i, e in ipairs(entries) do
      local where = g .. n .. "/" .. wn[i]
      todo[#todo + 1] = { e, data[where], where }
    end
  end
  assign_all(fn, path, todo)
  return model
end

-- The arguments of load_keras and save_keras: a layer or model, and a file name.
local function check_model_path(fn, model, path)
  if not is_layer(model) then raisef("%s: expected a model, got %s", fn, describe(model)) end
  if type(path) ~= "string" then raisef("%s: path must be a string, got %s", fn, describe(path)) end
end

-- nn.load_keras(model, path): the weights of a Keras model saved with save_weights (Keras 3
-- '.weights.h5', or a legacy Keras 2 / tf.keras '.h5', told apart by their layout) into a
-- moongrad model built with the same layers in the same order (a Sequential, or one layer).
-- Unbuilt layers are built from the file's shapes. Every weight is checked before any changes.
function nn.load_keras(model, path)
  local fn = "load_keras"
  check_model_path(fn, model, path)
  local data, meta = call(mg._h5_load, path, fn)
  if meta["@layer_names"] then return load_legacy(fn, model, path, data, meta, "") end
  if meta["model_weights@layer_names"] then return load_legacy(fn, model, path, data, meta, "model_weights/") end
  local todo, used = {}, {}
  local function first_var(where)
    local t = data[where]
    if t ~= nil and t:dim() >= 1 then return t end
  end
  for _, e in ipairs(keras3_plan(fn, model, first_var)) do
    for _, v in ipairs(e.entries) do
      local where = e.group .. v.path
      todo[#todo + 1] = { v, data[where], where }
      used[where] = true
    end
  end
  local extra = {}
  for k in pairs(data) do
    if not used[k] then extra[#extra + 1] = k end
  end
  table.sort(extra)
  if #extra > 0 then
    raisef("%s: '%s' has weights the model does not: %s (is the model built with the same layers?)", fn, path,
      table.concat(extra, ", "))
  end
  assign_all(fn, path, todo)
  return model
end

-- nn.save_keras(model, path): the model's weights as a Keras 3 '.weights.h5' file, which
-- model.load_weights(path) of a Keras model built with the same layers reads. Atomic.
function nn.save_keras(model, path)
  local fn = "save_keras"
  check_model_path(fn, model, path)
  local data, attrs = {}, { ["vars@name"] = class_of(model) == "Sequential" and "sequential" or "model" }
  mg.no_grad(function()
    for _, e in ipairs(keras3_plan(fn, model)) do
      for _, v in ipairs(e.entries) do data[e.group .. v.path] = v.save and v.save(v.var) or v.var end
      for sub, name in pairs(e.names) do attrs[e.group .. sub .. "@name"] = name end
    end
  end)
  call(mg._h5_save, data, path, attrs, fn)
end

return true
