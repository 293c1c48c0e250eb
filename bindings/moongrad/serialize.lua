-- moongrad.serialize: whole models in and out of files. Adds to the nn classes (loaded with
-- mg.nn, so every layer has them): layer:state() / layer:load_state(tbl [, opts]), the named
-- Variables of any layer or container; layer:get_weights() / layer:set_weights(list) in Keras
-- order; and to nn: save/load (safetensors checkpoints, optimizer state included), from_torch
-- / to_torch (PyTorch state_dict names and gate layouts). The mechanism is generic over a
-- layer's parameters() (each Variable named "<layer>/<weight>") and, for nn.Sequential, its
-- child layers (names prefixed "<index>/"), so any new layer class gets it unchanged.
-- See docs/checkpoints.md.
local mg = require "moongrad"
local nn = require "moongrad.nn"

local getmetatable, ipairs, math, pairs, pcall, rawget, string, table, tonumber, tostring, type =
      getmetatable, ipairs, math, pairs, pcall, rawget, string, table, tonumber, tostring, type
local debug = debug
local _ENV = nil

local is_tensor, shapestr = mg.is_tensor, mg.shapestr
local checks = mg._checks(debug.getinfo(1, "S").source)   -- errors point at the user's line
local raise, raisef, describe, check_opts = checks.raise, checks.raisef, checks.describe, checks.check_opts

-- The classes, found through instances that draw no random numbers.
local Dense = getmetatable(nn.Dense(1, 1, { kernel_initializer = "zeros" }))
local Layer = getmetatable(Dense).__index
local Sequential = getmetatable(nn.Sequential {})

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

local function is_layer(l) return type(l) == "table" and type(l.parameters) == "function" end

local function class_of(l)
  local mt = type(l) == "table" and getmetatable(l)
  return mt and rawget(mt, "__name") or nil
end

---------------------------------------------------------------- layers built at their first call

-- Whether 'l' is a layer whose weights are made at its first call and are not made yet
-- (nn.LSTM(units) and the other layer classes, a Bidirectional of one, nn.LayerNormalization()).
local function unbuilt(l)
  if class_of(l) == "Bidirectional" then return unbuilt(l.forward_layer) end
  if class_of(l) == "LayerNormalization" then return not l.built end
  return type(l) == "table" and l._ctor ~= nil and l.cell == nil
end

-- Builds the unbuilt layer 'l' for inputs of 'n' features (nothing when n is nil).
local function build(l, n)
  if n == nil or not unbuilt(l) then return end
  if class_of(l) == "Bidirectional" then
    l.forward_layer:build(n)
    l.backward_layer:build(n)
  else
    l:build(n)
  end
end
nn._unbuilt, nn._build_lazy = unbuilt, build      -- for moongrad.interop (from_torch, load_keras)

-- Builds the unbuilt layers of 'layer' (names under 'prefix', as state() gives them) for the
-- sizes of the tensors of 'tbl' that will go into them: a recurrent layer's kernel is
-- (in, k*units), a LayerNormalization's gamma and beta (n).
local function build_from_state(layer, tbl, prefix)
  local c = class_of(layer)
  if c == "Sequential" then
    for i, l in ipairs(layer.layers) do build_from_state(l, tbl, prefix .. i .. "/") end
  elseif c == "TimeDistributed" then
    build_from_state(layer.layer, tbl, prefix)
  elseif unbuilt(layer) then
    local function size(name)
      local t = tbl[prefix .. tostring(name)]
      if is_tensor(t) and t:dim() >= 1 then return t:size(1) end
    end
    if c == "LayerNormalization" then build(layer, size(layer.name .. "/gamma") or size(layer.name .. "/beta"))
    else build(layer, size((c == "Bidirectional" and layer.forward_layer.name or layer.name) .. "/kernel")) end
  end
end

---------------------------------------------------------------- state

-- layer:state(): a new table from stable names to the layer's own Variables (not copies): each
-- Variable's name ("lstm/kernel", "backward_lstm/bias"), or "param<i>" when it has none;
-- stacked cells' names under "cells/<i>/" ("cells/2/lstm/kernel").
-- Two Variables with one name are an error (give the layers distinct names).
local function put(self, out, key, v)
  if out[key] ~= nil and out[key] ~= v then
    raisef("state: two Variables of %s are named '%s' (give the layers distinct names)", tostring(self), key)
  end
  out[key] = v
end

local function add_state(self, out, prefix, st)
  for k, v in pairs(st) do put(self, out, prefix .. k, v) end
  return out
end

function Layer:state()
  local out = {}
  local c = class_of(self)
  -- stacked cells (nn.StackedRNNCells, an nn.RNN({cells})): cell i's names under "cells/<i>/",
  -- so two cells of one class stay apart; a Bidirectional's directions, a TimeDistributed's
  -- layer: their own states (which may hold stacked cells)
  local stacked = c == "StackedRNNCells" and self
    or (type(self) == "table" and class_of(rawget(self, "cell")) == "StackedRNNCells" and self.cell)
  if stacked then
    for i, cell in ipairs(stacked.cells) do add_state(self, out, "cells/" .. i .. "/", cell:state()) end
    return out
  elseif c == "Bidirectional" then
    add_state(self, out, "", self.forward_layer:state())
    return add_state(self, out, "", self.backward_layer:state())
  elseif c == "TimeDistributed" and is_layer(self.layer) then
    return self.layer:state()
  end
  for i, p in ipairs(self:parameters()) do
    local k = p.name
    if k == nil or k == "" then k = "param" .. i end
    put(self, out, k, p)
  end
  return out
end

-- seq:state(): each child layer's state under "<index>/" (1-based, as seq.layers), so two
-- children with the same names stay apart: "1/lstm/kernel", "2/dense/kernel".
function Sequential:state()
  local out = {}
  for i, l in ipairs(self.layers) do
    if is_layer(l) then
      for k, v in pairs(l:state()) do out[i .. "/" .. k] = v end
    end
  end
  return out
end

local function list(names)
  return #names == 0 and "none" or table.concat(names, ", ")
end

-- layer:load_state(tbl [, {strict=true}]): copies the tensors of 'tbl' (name -> tensor, as
-- state() names them) into the layer's Variables, converting the dtype when it differs.
-- Every name and shape is checked before anything is copied: a shape that differs is always
-- an error, missing and unexpected names are errors under 'strict'. Returns the arrays of
-- missing and unexpected names (sorted). Unbuilt layers (nn.LSTM(units)) are built first,
-- for the sizes of the tensors given for them.
function Layer:load_state(tbl, opts)
  opts = check_opts("load_state", opts, { strict = true })
  local strict = opts.strict ~= false
  if type(tbl) ~= "table" or is_tensor(tbl) then raisef("load_state: expected a table of tensors, got %s", describe(tbl)) end
  build_from_state(self, tbl, "")
  local own = self:state()
  local missing, unexpected, wrong = {}, {}, {}
  for _, k in ipairs(sorted_keys(own)) do
    local t = tbl[k]
    if t == nil then missing[#missing + 1] = k
    elseif not is_tensor(t) then wrong[#wrong + 1] = string.format("%s (%s, not a tensor)", k, describe(t))
    elseif shapestr(t) ~= shapestr(own[k]) then
      wrong[#wrong + 1] = string.format("%s (given %s, the layer's is %s)", k, shapestr(t), shapestr(own[k]))
    end
  end
  for k in pairs(tbl) do
    if own[k] == nil then unexpected[#unexpected + 1] = tostring(k) end
  end
  table.sort(unexpected)
  if #wrong > 0 or (strict and (#missing > 0 or #unexpected > 0)) then
    raisef("load_state: the state does not fit %s: shape mismatch: %s; missing: %s; unexpected: %s",
      tostring(self), list(wrong), list(missing), list(unexpected))
  end
  mg.no_grad(function()
    for k, v in pairs(own) do
      if tbl[k] ~= nil then v:copy(tbl[k]) end
    end
  end)
  return missing, unexpected
end

---------------------------------------------------------------- Keras-order weights

-- layer:get_weights(): copies of the layer's Variables in Keras's order (its parameters():
-- kernel, recurrent_kernel, bias per layer; forward then backward layer; children in order).
function Layer:get_weights()
  local out = {}
  mg.no_grad(function()
    for i, p in ipairs(self:parameters()) do out[i] = p:clone() end
  end)
  return out
end

-- layer:set_weights(list): the inverse; the count and every shape must match (checked first).
function Layer:set_weights(ws)
  local ps = self:parameters()
  if type(ws) ~= "table" or is_tensor(ws) then raisef("set_weights: expected an array of tensors, got %s", describe(ws)) end
  if #ws ~= #ps then raisef("set_weights: %s has %d weights, got %d", tostring(self), #ps, #ws) end
  for i, p in ipairs(ps) do
    local w = ws[i]
    if not is_tensor(w) then raisef("set_weights: weight %d is %s, expected a tensor", i, describe(w)) end
    if shapestr(w) ~= shapestr(p) then
      raisef("set_weights: weight %d ('%s') has shape %s, expected %s", i, tostring(p.name), shapestr(w), shapestr(p))
    end
  end
  mg.no_grad(function()
    for i, p in ipairs(ps) do p:copy(ws[i]) end
  end)
end

---------------------------------------------------------------- optimizer state

local OPT_PREFIX = "@optimizer/"

-- An optimizer's state as a table of tensors, numbers and nested tables: opt:state() when
-- it has one, else (SGD, Adam) its fields: iterations and the per-parameter slot arrays.
local SLOTS = { SGD = { "velocity" }, Adam = { "m", "v" } }

local function opt_class(opt)
  local mt = getmetatable(opt)
  return type(mt) == "table" and rawget(mt, "__name") or nil
end

local function opt_state(fn, opt)
  if type(opt) ~= "table" then raisef("%s: optimizer must be an optimizer, got %s", fn, describe(opt)) end
  if type(opt.state) == "function" then return opt:state() end
  local slots = SLOTS[opt_class(opt)]
  if slots == nil then raisef("%s: the optimizer %s has no state() method", fn, tostring(opt)) end
  local st = { iterations = opt.iterations }
  for _, s in ipairs(slots) do
    st[s] = {}
    for i = 1, #opt.params do st[s][i] = opt[s][i] end
  end
  return st
end

local function opt_load_state(fn, opt, st)
  if type(opt.load_state) == "function" then return opt:load_state(st) end
  local slots = SLOTS[opt_class(opt)]
  if slots == nil then raisef("%s: the optimizer %s has no load_state() method", fn, tostring(opt)) end
  if math.type(st.iterations) ~= "integer" then raisef("%s: the optimizer state has no iteration count", fn) end
  local new = {}
  for _, s in ipairs(slots) do
    new[s] = {}
    for i, p in ipairs(opt.params) do
      local t = st[s] and st[s][i]
      if t ~= nil then
        if shapestr(t) ~= shapestr(p) then
          raisef("%s: optimizer slot %s[%d] has shape %s, parameter '%s' is %s", fn, s, i, shapestr(t),
            tostring(p.name), shapestr(p))
        end
        new[s][i] = t:to(p.dtype)
      end
    end
  end
  for s, v in pairs(new) do opt[s] = v end
  opt.iterations = st.iterations
end

-- Flattens nested tables into 'tensors' (tensors) and 'meta' (numbers "n:", strings "s:",
-- booleans "b:"), keys joined by "/" under 'prefix'.
local function flatten(fn, v, prefix, tensors, meta)
  if is_tensor(v) then tensors[prefix] = v
  elseif math.type(v) == "integer" then meta[prefix] = "i:" .. string.format("%d", v)
  elseif type(v) == "number" then meta[prefix] = "n:" .. string.format("%.17g", v)
  elseif type(v) == "string" then meta[prefix] = "s:" .. v
  elseif type(v) == "boolean" then meta[prefix] = "b:" .. tostring(v)
  elseif type(v) == "table" then
    for k, x in pairs(v) do flatten(fn, x, prefix .. "/" .. tostring(k), tensors, meta) end
  else raisef("%s: cannot store %s in the optimizer state (at '%s')", fn, describe(v), prefix) end
end

local function decode(s)
  local tag, rest = s:sub(1, 2), s:sub(3)
  if tag == "i:" then return math.tointeger(tonumber(rest))
  elseif tag == "n:" then return tonumber(rest)
  elseif tag == "b:" then return rest == "true"
  end
  return rest
end

-- The inverse: a path "a/1/b" makes t.a[1].b (integer-looking keys become integers).
local function unflatten_into(root, path, v)
  local t, parts = root, {}
  for p in path:gmatch("[^/]+") do parts[#parts + 1] = math.tointeger(tonumber(p)) or p end
  for i = 1, #parts - 1 do
    t[parts[i]] = t[parts[i]] or {}
    t = t[parts[i]]
  end
  t[parts[#parts]] = v
end

---------------------------------------------------------------- nn.save / nn.load

local FORMAT = "moongrad.checkpoint"

local function check_layer(fn, layer)
  if not is_layer(layer) then raisef("%s: expected a layer, got %s", fn, describe(layer)) end
  return layer
end

local function check_path(fn, path)
  if type(path) ~= "string" then raisef("%s: path must be a string, got %s", fn, describe(path)) end
  return path
end

-- nn.save(layer, path [, {optimizer=}]): the layer's state (layer:state() names) as a
-- safetensors file; with 'optimizer', its state too (names under "@optimizer/", counters in
-- the metadata), so that nn.load restores training exactly where it stopped.
function nn.save(layer, path, opts)
  opts = check_opts("nn.save", opts, { optimizer = true })
  check_layer("nn.save", layer)
  check_path("nn.save", path)
  local tensors, meta = {}, { format = FORMAT }
  for k, v in pairs(layer:state()) do tensors[k] = v end
  if opts.optimizer ~= nil then
    local st = opt_state("nn.save", opts.optimizer)
    local ot, om = {}, {}
    flatten("nn.save", st, "", ot, om)
    for k, v in pairs(ot) do tensors[OPT_PREFIX .. k:sub(2)] = v end
    for k, v in pairs(om) do meta[OPT_PREFIX .. k:sub(2)] = v end
    meta[OPT_PREFIX .. "class"] = "s:" .. tostring(opt_class(opts.optimizer))
  end
  mg.save_tensors(tensors, path, { metadata = meta })
end

-- nn.load(layer, path [, {optimizer=, strict=true}]): the inverse of nn.save (any safetensors
-- file of layer:state() names will do). Returns the missing and unexpected names (non-strict).
function nn.load(layer, path, opts)
  opts = check_opts("nn.load", opts, { optimizer = true, strict = true })
  check_layer("nn.load", layer)
  local tensors, meta = mg.load_tensors(check_path("nn.load", path))
  local own, ost = {}, {}
  for k, v in pairs(tensors) do
    if k:sub(1, #OPT_PREFIX) == OPT_PREFIX then unflatten_into(ost, k:sub(#OPT_PREFIX + 1), v)
    else own[k] = v end
  end
  local has_opt = false
  for k, v in pairs(meta) do
    if k:sub(1, #OPT_PREFIX) == OPT_PREFIX then
      has_opt = true
      unflatten_into(ost, k:sub(#OPT_PREFIX + 1), decode(v))
    end
  end
  local opt = opts.optimizer
  if opt ~= nil then
    if not has_opt then raisef("nn.load: '%s' holds no optimizer state", path) end
    if ost.class ~= opt_class(opt) then
      raisef("nn.load: '%s' holds the state of a %s optimizer, not of a %s", path, tostring(ost.class),
        tostring(opt_class(opt)))
    end
    ost.class = nil
  end
  local before = opt ~= nil and layer:get_weights() or nil
  local missing, unexpected = layer:load_state(own, { strict = opts.strict })
  if opt ~= nil then                                 -- a bad optimizer state changes nothing
    local ok, err = pcall(opt_load_state, "nn.load", opt, ost)
    if not ok then
      layer:set_weights(before)
      raise((tostring(err):gsub("^moongrad/serialize%.lua:%d+: ", "")))
    end
  end
  return missing, unexpected
end

return true
