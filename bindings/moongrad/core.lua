-- moongrad.core: the Lua half of the module. Loaded by luaopen_moongrad; extends the module
-- table with what composes the C primitives: printing, Variables, no_grad, the function
-- transforms (grad, vjp, jvp, jacobian, hessian) and gradcheck.
local mg = require "moongrad"

local assert, error, ipairs, pairs, pcall, select, setmetatable, tostring, type =
      assert, error, ipairs, pairs, pcall, select, setmetatable, tostring, type
local debug, math, string, table = debug, math, string, table
local rawset, require, getmetatable = rawset, require, getmetatable
local _ENV = nil

local Tensor = mg.methods            -- the method table of every tensor
mg.methods = nil

local function is_tensor(x)
  local mt = getmetatable(x)
  return mt ~= nil and mt.__name == "moongrad.Tensor"
end
mg.is_tensor = is_tensor

---------------------------------------------------------------- printing

local function shapestr(t)
  if not is_tensor(t) then error("shapestr: expected a tensor, got " .. type(t), 2) end
  local s = t:shape()
  for i = 1, #s do s[i] = tostring(s[i]) end
  return "(" .. table.concat(s, ",") .. ")"
end

-- The format every element shares: integers as "1.", otherwise fixed or scientific with
-- four decimals, as PyTorch chooses.
local function pick_format(vals)
  local all_int, maxa, mina = true, 0, math.huge
  for _, v in ipairs(vals) do
    if v ~= v or v == math.huge or v == -math.huge then goto continue end
    if v ~= math.floor(v) then all_int = false end
    local a = math.abs(v)
    if a > maxa then maxa = a end
    if a > 0 and a < mina then mina = a end
    ::continue::
  end
  if all_int and maxa < 1e8 then
    return function(v) return v == v and (v == math.huge and "inf" or v == -math.huge and "-inf" or string.format("%.0f.", v)) or "nan" end
  end
  local sci = maxa >= 1e8 or (mina < 1e-4) or (mina < math.huge and maxa / mina > 1e3)
  local f = sci and "%.4e" or "%.4f"
  return function(v)
    if v ~= v then return "nan" elseif v == math.huge then return "inf" elseif v == -math.huge then return "-inf" end
    return string.format(f, v)
  end
end

local EDGE, SUMMARIZE = 3, 1000

-- Collect the values that will be shown (edges only when summarized).
local function gather(t, summarize, out)
  if t:dim() == 0 then out[#out + 1] = t:item() return end
  local n = t:size(1)
  for i = 1, n do
    if summarize and n > 2 * EDGE and i > EDGE and i <= n - EDGE then goto skip end
    if t:dim() == 1 then out[#out + 1] = t:get(i) else gather(t[i], summarize, out) end
    ::skip::
  end
end

local function render(t, fmt, width, indent, summarize)
  if t:dim() == 0 then return string.format("%" .. width .. "s", fmt(t:item())) end
  local n, parts = t:size(1), {}
  for i = 1, n do
    if summarize and n > 2 * EDGE and i > EDGE and i <= n - EDGE then
      if i == EDGE + 1 then parts[#parts + 1] = "..." end
    elseif t:dim() == 1 then
      parts[#parts + 1] = string.format("%" .. width .. "s", fmt(t:get(i)))
    else
      parts[#parts + 1] = render(t[i], fmt, width, indent .. " ", summarize)
    end
  end
  if t:dim() == 1 then return "[" .. table.concat(parts, ", ") .. "]" end
  local sep = "," .. string.rep("\n", t:dim() - 1) .. indent .. " "
  return "[" .. table.concat(parts, sep) .. "]"
end

local function tensor_tostring(t)
  local summarize = t:numel() > SUMMARIZE
  local vals = {}
  gather(t, summarize, vals)
  local fmt, width = pick_format(vals), 1
  for _, v in ipairs(vals) do width = math.max(width, #fmt(v)) end
  local body = t:numel() == 0 and "[]" or render(t, fmt, width, "       ", summarize)
  return string.format("tensor(%s, shape=%s, dtype=%s)", body, shapestr(t), t.dtype)
end

getmetatable(mg.zeros(0)).__tostring = tensor_tostring
mg.shapestr = shapestr

---------------------------------------------------------------- no_grad, Variables

-- Run fn(...) with recording suspended on every tape; returns fn's results.
function mg.no_grad(fn, ...)
  mg._no_grad_enter()
  local res = table.pack(pcall(fn, ...))
  mg._no_grad_exit()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

local function check_variable(v, fn)
  if not is_tensor(v) or not v:is_variable() then
    error(fn .. ": expected a Variable, got " .. (is_tensor(v) and "a plain tensor" or type(v)), 3)
  end
end

-- In place and not recorded, as TensorFlow's assign ops.
function Tensor.assign(v, t)
  check_variable(v, "assign")
  return v:copy(t)
end

function Tensor.assign_sub(v, t)
  check_variable(v, "assign_sub")
  return v:copy(mg.no_grad(function() return v - t end))
end

function Tensor.assign_add(v, t)
  check_variable(v, "assign_add")
  return v:copy(mg.no_grad(function() return v + t end))
end

---------------------------------------------------------------- checks for the Lua parts

local SOURCE = debug.getinfo(1, "S").source

-- mg._checks(source): the argument-check helpers of the Lua part (nn, optim) whose chunk is
-- 'source' (its debug.getinfo(1, "S").source), one copy for all. Their errors point at the
-- first caller that is neither C nor that chunk nor this one, so the position is the user's:
--   raise(msg), raisef(fmt, ...)   raise msg, or string.format(fmt, ...)
--   describe(v)                    "a tensor of shape (2,3)", "a table", "a nil", ...
--   check_opts(fn, opts, allowed)  {} for nil, else 'opts', a table whose keys are all in the
--                                  set 'allowed' (catches misspelt options); 'fn' names the call
function mg._checks(source)
  local c = {}

  function c.raise(msg)
    local level = 1
    while true do
      local info = debug.getinfo(level + 1, "S")
      if info == nil then break end
      level = level + 1
      if info.source ~= source and info.source ~= SOURCE and info.what ~= "C" then break end
    end
    error(msg, level)
  end

  function c.raisef(fmt, ...) c.raise(string.format(fmt, ...)) end

  function c.describe(v)
    if is_tensor(v) then return "a tensor of shape " .. shapestr(v) end
    return "a " .. type(v)
  end

  function c.check_opts(fn, opts, allowed)
    if opts == nil then return {} end
    if type(opts) ~= "table" then c.raisef("%s: options must be a table, got %s", fn, c.describe(opts)) end
    for k in pairs(opts) do
      if not allowed[k] then c.raisef("%s: unknown option '%s'", fn, tostring(k)) end
    end
    return opts
  end

  return c
end

---------------------------------------------------------------- function transforms

local function argnums_of(opts, fname)
  if opts ~= nil and type(opts) ~= "table" then
    error(string.format("%s: options must be a table, got %s", fname, type(opts)), 3)
  end
  local a = opts and opts.argnums or 1
  if type(a) == "number" then return { a }, true end
  if type(a) ~= "table" or #a == 0 then error("argnums must be a number or a non-empty array", 3) end
  return a, false
end

-- f(...) under a tape watching the arguments at 'nums'; returns tape, outputs, sources.
local function traced(f, nums, persistent, fname, ...)
  local args = table.pack(...)
  local src = {}
  for i, k in ipairs(nums) do
    if not is_tensor(args[k]) then
      error(string.format("%s: argument %d is a %s, expected a tensor", fname, k, type(args[k])), 3)
    end
    src[i] = args[k]
  end
  local tape = mg.GradientTape { persistent = persistent }
  tape:watch(src)
  local out = table.pack(tape:record(f, table.unpack(args, 1, args.n)))
  return tape, out, src
end

local function scalar_output(out, fname)
  local y = out[1]
  if not is_tensor(y) then error(fname .. ": the function must return a tensor", 3) end
  if y:numel() ~= 1 then
    error(string.format("%s: the function must return a scalar, got shape %s", fname, shapestr(y)), 3)
  end
  return y
end

-- grad(f [, {argnums=}]): a function returning df/dx for the arguments at argnums.
local function check_callable(f, fname)
  local mt = getmetatable(f)
  if type(f) ~= "function" and not (mt and mt.__call) then
    error(string.format("%s: expected a function, got %s", fname, type(f)), 3)
  end
end

function mg.grad(f, opts)
  check_callable(f, "grad")
  local nums, single = argnums_of(opts, "grad")
  return function(...)
    local tape, out, src = traced(f, nums, false, "grad", ...)
    local g = tape:gradient(scalar_output(out, "grad"), src, { unconnected = "zero" })
    if single then return g[1] end
    return g
  end
end

-- value_and_grad(f [, opts]): a function returning f(...) and its gradient(s).
function mg.value_and_grad(f, opts)
  check_callable(f, "value_and_grad")
  local nums, single = argnums_of(opts, "value_and_grad")
  return function(...)
    local tape, out, src = traced(f, nums, false, "value_and_grad", ...)
    local g = tape:gradient(scalar_output(out, "value_and_grad"), src, { unconnected = "zero" })
    return out[1], single and g[1] or g
  end
end

-- vjp(f, ...): f(...) and a function mapping a cotangent of the output to the cotangents
-- of every argument.
function mg.vjp(f, ...)
  local nums = {}
  for i = 1, select("#", ...) do nums[i] = i end
  local tape, out, src = traced(f, nums, true, "vjp", ...)
  local y = out[1]
  return y, function(ct)
    if not is_tensor(ct) then error("vjp: the cotangent must be a tensor", 2) end
    local g = tape:gradient(y, src, { output_gradients = { ct }, unconnected = "zero" })
    return table.unpack(g, 1, #src)
  end
end

-- jvp(f, primals, tangents): f(primals...) and its directional derivative along tangents.
function mg.jvp(f, primals, tangents)
  if type(primals) ~= "table" or type(tangents) ~= "table" or is_tensor(primals) then
    error("jvp: primals and tangents must be arrays of tensors", 2)
  end
  if #primals ~= #tangents then error("jvp: primals and tangents differ in length", 2) end
  local nums = {}
  for i = 1, #primals do nums[i] = i end
  local tape, out, src = traced(f, nums, true, "jvp", table.unpack(primals))
  local y = out[1]
  return y, tape:forward(src, tangents, y)
end

-- jacobian(f, x [, {mode="rev"|"fwd"|"auto"}]): J[i..., j...] = d f(x)[i...] / d x[j...]
function mg.jacobian(f, x, opts)
  local tape, out = traced(f, { 1 }, false, "jacobian", x)
  return tape:jacobian(out[1], x, { mode = opts and opts.mode, unconnected = "zero" })
end

-- batch_jacobian(f, x [, {check=}]): J[b, i..., j...] = d f(x)[b, i...] / d x[b, j...]
function mg.batch_jacobian(f, x, opts)
  local tape, out = traced(f, { 1 }, false, "batch_jacobian", x)
  return tape:batch_jacobian(out[1], x, { check = opts and opts.check, mode = opts and opts.mode,
                                          unconnected = "zero" })
end

-- hessian(f, x): the Jacobian of the gradient, through nested tapes.
function mg.hessian(f, x)
  if not is_tensor(x) then error("hessian: x must be a tensor", 2) end
  local hs = x:shape()                                   -- the result: x's shape twice
  for _, n in ipairs(x:shape()) do hs[#hs + 1] = n end
  local ok, msg = pcall(mg._check_result, "hessian", hs, x.dtype)
  if not ok then error(msg, 2) end
  local outer = mg.GradientTape { persistent = true }
  outer:watch(x)
  local g = outer:record(function()
    local inner = mg.GradientTape()
    inner:watch(x)
    local y = inner:record(f, x)
    scalar_output({ y }, "hessian")
    return inner:gradient(y, x, { unconnected = "zero" })
  end)
  return outer:jacobian(g, x, { unconnected = "zero" })
end

---------------------------------------------------------------- gradcheck

local function flat_values(t)
  local c = t:contiguous():reshape(-1)
  local v = {}
  for i = 1, c:numel() do v[i] = c:get(i) end
  return v
end

-- gradcheck(f, inputs [, {eps=1e-6, atol=1e-5, rtol=1e-3, modes={"rev","fwd"}}]):
-- compares the reverse- and forward-mode Jacobians of f at 'inputs' (float64 copies) with
-- central differences. True, or an error naming the worst element and both values.
function mg.gradcheck(f, inputs, opts)
  check_callable(f, "gradcheck")
  if opts ~= nil and type(opts) ~= "table" then
    error("gradcheck: options must be a table, got " .. type(opts), 2)
  end
  opts = opts or {}
  if is_tensor(inputs) then inputs = { inputs } end
  if type(inputs) ~= "table" or #inputs == 0 then error("gradcheck: inputs must be a tensor or an array of tensors", 2) end
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-3
  local xs = {}
  for i, x in ipairs(inputs) do
    if not is_tensor(x) then error(string.format("gradcheck: input %d is not a tensor", i), 2) end
    xs[i] = x:to("float64"):clone()
  end
  local function call() return f(table.unpack(xs)) end
  local y0 = call()
  if not is_tensor(y0) then error("gradcheck: f must return a tensor", 2) end
  local ny = y0:numel()
  for k, x in ipairs(xs) do
    local nx = x:numel()
    -- the numeric and analytic Jacobians as Lua arrays (16 bytes a number) and the tensor
    local ok, msg = pcall(mg._check_result, "gradcheck", { ny, nx }, "float64", 40)
    if not ok then error(msg, 2) end
    -- numeric Jacobian (ny x nx), column by column
    local flat = x:reshape(-1)          -- a view: writes go to x
    local num = {}
    for j = 1, nx do
      local old = flat:get(j)
      flat:set(old + eps, j)
      local yp = flat_values(call())
      flat:set(old - eps, j)
      local ym = flat_values(call())
      flat:set(old, j)
      for i = 1, ny do num[(i - 1) * nx + j] = (yp[i] - ym[i]) / (2 * eps) end
    end
    for _, mode in ipairs(opts.modes or { "rev", "fwd" }) do
      local tape = mg.GradientTape()
      tape:watch(xs)
      local y = tape:record(f, table.unpack(xs))
      local J = tape:jacobian(y, x, { mode = mode, unconnected = "zero" })
      local an = flat_values(J)
      local worst, wi, wa, wn = -1, 0, 0, 0
      for i = 1, ny * nx do
        local excess = math.abs(an[i] - num[i]) - (atol + rtol * math.abs(num[i]))
        if excess ~= excess then excess = math.huge end
        if excess > worst then worst, wi, wa, wn = excess, i, an[i], num[i] end
      end
      if worst > 0 then
        error(string.format("gradcheck: input %d, %s mode: Jacobian element (output %d, input %d) "
          .. "is %.10g analytically but %.10g by finite differences", k, mode,
          (wi - 1) // nx + 1, (wi - 1) % nx + 1, wa, wn), 2)
      end
    end
  end
  return true
end

---------------------------------------------------------------- ops composed in Lua

require("moongrad.ops")(Tensor)

---------------------------------------------------------------- submodules

local SPECTRA = { lyapunov = true, jacobian_spectra = true,      -- functions of moongrad.spectra
                  plot_spectrum = true, plot_spectrum_bands = true }

setmetatable(mg, { __index = function(t, k)
  if k == "nn" or k == "optim" or k == "plot" or k == "linalg" then
    local m = require("moongrad." .. k)
    rawset(t, k, m)
    if k == "nn" then                                  -- add state(), nn.save, nn.from_torch, ...
      require "moongrad.serialize"
      require "moongrad.interop"
    end
    return m
  end
  if k == "_spectra" then              -- for nn's rnn:lyapunov and friends
    local s = require "moongrad.spectra"
    rawset(t, k, s)
    return s
  end
  if SPECTRA[k] then
    local s = require "moongrad.spectra"
    local f = function(step, h0, xs, opts) return s[k](step, h0, xs, opts) end
    rawset(t, k, f)
    return f
  end
end })

return true      -- package.loaded["moongrad.core"]: not the module (names in messages stay mg's)
