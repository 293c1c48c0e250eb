-- moongrad.core: the Lua half of the module. Loaded by luaopen_moongrad; extends the module
-- table with what composes the C primitives: the printing hook, no_grad, the function
-- transforms (grad, vjp, jvp, jacobian, hessian) and gradcheck.
local mg = require "moongrad"

local assert, error, ipairs, pairs, pcall, select, setmetatable, tostring, type =
      assert, error, ipairs, pairs, pcall, select, setmetatable, tostring, type
local debug, math, string, table = debug, math, string, table
local rawset, require, getmetatable = rawset, require, getmetatable
local package = package
local _ENV = nil

local function is_tensor(x)
  local mt = getmetatable(x)
  return mt ~= nil and mt.__name == "moongrad.Tensor"
end
mg.is_tensor = is_tensor

local shapestr                          -- "(2,3)": under printing

---------------------------------------------------------------- errors of the Lua parts

-- One mechanism for every Lua part (core, nn, optim, plot), no hand-counted error levels:
-- public functions are wrapped by api(name, impl); inside, fail(fmt, ...) raises a Failure.
-- The wrapper turns it into "<user's file>:<line>: [name: ]message", the position being the
-- first caller outside the library's chunks (so also inside a user's function that a
-- transform calls); an error raised by C at a line of the library (mg.matmul inside a layer)
-- is moved to the user's line the same way; any other error (the user's own) passes
-- untouched. The wrapper's pcall unwinds the library's helper frames, so tracebacks start at
-- the public function.
local LIBRARY = {}                     -- chunk source -> its short_src, for every Lua part

local function library_source(source)
  LIBRARY[source] = source:sub(1, 1) == "@" and source:sub(2) or source
end
library_source(debug.getinfo(1, "S").source)

-- "file:line: " of the first caller outside the library and C, or "" when there is none.
local function where()
  for level = 2, 200 do
    local info = debug.getinfo(level, "Sl")
    if info == nil then break end
    if info.what ~= "C" and LIBRARY[info.source] == nil then
      return info.currentline > 0 and (info.short_src .. ":" .. info.currentline .. ": ") or ""
    end
  end
  return ""
end

-- The message of an error raised at a line of the library, without that position; nil for
-- any other error.
local function library_message(e)
  if type(e) ~= "string" then return nil end
  for _, short in pairs(LIBRARY) do
    if e:sub(1, #short + 1) == short .. ":" then
      local rest = e:match("^:%d+: (.*)$", #short + 1)
      if rest then return rest end
    end
  end
  return nil
end

local Failure = {}
Failure.__index = Failure
function Failure:__tostring() return self.msg end

local function fail(fmt, ...)
  error(setmetatable({ msg = select("#", ...) > 0 and string.format(fmt, ...) or fmt }, Failure), 0)
end

local function api(name, impl)
  local prefix = name and name .. ": " or ""
  -- The results of pcall(impl, ...) passed on as they are (no table per call), or the error
  -- raised here: the wrapper tail-calls this, so that tracebacks start at it.
  local function finish(ok, ...)
    if ok then return ... end
    local e = ...
    if getmetatable(e) == Failure then error(where() .. prefix .. e.msg, 0) end
    local moved = library_message(e)
    if moved then error(where() .. moved, 0) end
    error(e, 0)
  end
  return function(...) return finish(pcall(impl, ...)) end
end

local function describe(v)
  if is_tensor(v) then return "a tensor of shape " .. shapestr(v) end
  return "a " .. type(v)
end

-- 'opts' of function 'fn': {} for nil, else a table whose keys are all in 'allowed' (a set or
-- an array of names); a typo names the nearest known option, through the one checker that
-- the C functions use too (mg._unknown_option, ltensor.c).
local function check_opts(fn, opts, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" or is_tensor(opts) then
    fail("%s: options must be a table, got %s", fn, describe(opts))
  end
  local msg = mg._unknown_option(fn, opts, allowed)
  if msg then fail(msg) end
  return opts
end

-- The set of the option names given: each argument a name or an array of names (a shared
-- list followed by a function's own names), as check_opts takes them.
local function names(...)
  local s = {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "table" then
      for _, k in ipairs(v) do s[k] = true end
    else
      s[v] = true
    end
  end
  return s
end

-- Every function of the tables given becomes a public entry point: api(nil, f).
local function publish(...)
  for _, t in ipairs { ... } do
    for k, f in pairs(t) do
      if type(f) == "function" then t[k] = api(nil, f) end
    end
  end
end

-- mg._checks(source): the error helpers above for the Lua part whose chunk is 'source' (its
-- debug.getinfo(1, "S").source), which becomes part of the library for 'where':
--   api(name, impl)         the public function 'impl', its errors named 'name' (nil: the
--                           messages name their function themselves)
--   fail(fmt, ...)          raise string.format(fmt, ...) (one argument: as it is)
--   raise, raisef           the same as fail
--   describe(v)             "a tensor of shape (2,3)", "a table", "a nil", ...
--   check_opts(fn, opts, allowed)
--   names(...)              the set of the option names given (names or arrays of names)
--   publish(t, ...)         api(nil, f) for every function f of the tables t, ...
--   message(e)              the error 'e' caught from a call, as text without the library's
--                           position ("orthogonal: matrix too large")
local function message(e) return library_message(e) or tostring(e) end

function mg._checks(source)
  library_source(source)
  return { api = api, fail = fail, raise = fail, raisef = fail, describe = describe,
           check_opts = check_opts, names = names, publish = publish, message = message }
end

---------------------------------------------------------------- printing

function shapestr(t)
  if not is_tensor(t) then fail("shapestr: expected a tensor, got %s", type(t)) end
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

mg._set_tostring(tensor_tostring)     -- the hook of the C __tostring (ltensor.c)
mg.shapestr = api(nil, shapestr)

---------------------------------------------------------------- no_grad

-- Run fn(...) with recording suspended on every tape; returns fn's results.
function mg.no_grad(fn, ...)
  mg._no_grad_enter()
  local res = table.pack(pcall(fn, ...))
  mg._no_grad_exit()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

---------------------------------------------------------------- function transforms

local ONE_BASED = " (indices and dims are 1-based)"

-- The argument positions 'opts.argnums' asks for (default 1) and whether it was one number.
local function argnums_of(fname, opts)
  opts = check_opts(fname, opts, { "argnums" })
  local a = opts.argnums
  if a == nil then return { 1 }, true end
  local list = type(a) == "table" and a or { a }
  if #list == 0 or (type(a) == "table" and is_tensor(a)) then
    fail("%s: argnums must be a positive integer or a non-empty array of them, got %s", fname,
         describe(a))
  end
  for _, k in ipairs(list) do
    if math.type(k) ~= "integer" and not (type(k) == "number" and k == math.floor(k)) then
      fail("%s: argnums must be a positive integer or a non-empty array of them, got %s %s",
           fname, describe(k), type(k) == "string" and "'" .. k .. "'" or tostring(k))
    end
    if k < 1 then fail("%s: argnums %d is not a positive integer%s", fname, k, k == 0 and ONE_BASED or "") end
  end
  return list, type(a) ~= "table"
end

-- f(...) under a tape watching the arguments at 'nums'; returns tape, outputs, sources.
local function traced(f, nums, persistent, fname, ...)
  local args = table.pack(...)
  local src = {}
  for i, k in ipairs(nums) do
    if not is_tensor(args[k]) then
      fail("%s: argument %d is a %s, expected a tensor", fname, k, type(args[k]))
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
  if not is_tensor(y) then fail("%s: the function must return a tensor, got %s", fname, describe(y)) end
  if y:numel() ~= 1 then
    fail("%s: the function must return a scalar, got shape %s", fname, shapestr(y))
  end
  return y
end

local function check_callable(f, fname)
  local mt = getmetatable(f)
  if type(f) ~= "function" and not (mt and mt.__call) then
    fail("%s: expected a function, got %s", fname, type(f))
  end
end

-- A function returning f(...) and its gradient w.r.t. the arguments at argnums (one tensor
-- when argnums is one number): value_and_grad, and grad without the value.
local function value_and_gradient(fname, f, opts)
  check_callable(f, fname)
  local nums, single = argnums_of(fname, opts)
  return function(...)
    local tape, out, src = traced(f, nums, false, fname, ...)
    local g = tape:gradient(scalar_output(out, fname), src, { unconnected = "zero" })
    return out[1], single and g[1] or g
  end
end

-- grad(f [, {argnums=}]): a function returning df/dx for the arguments at argnums.
mg.grad = api(nil, function(f, opts)
  local vg = value_and_gradient("grad", f, opts)
  return api(nil, function(...) return select(2, vg(...)) end)
end)

-- value_and_grad(f [, opts]): a function returning f(...) and its gradient(s).
mg.value_and_grad = api(nil, function(f, opts)
  return api(nil, value_and_gradient("value_and_grad", f, opts))
end)

-- vjp(f, ...): f(...) and a function mapping a cotangent of the output to the cotangents
-- of every argument.
mg.vjp = api(nil, function(f, ...)
  check_callable(f, "vjp")
  local nums = {}
  for i = 1, select("#", ...) do nums[i] = i end
  local tape, out, src = traced(f, nums, true, "vjp", ...)
  local y = out[1]
  if not is_tensor(y) then fail("vjp: the function must return a tensor, got %s", describe(y)) end
  return y, api(nil, function(ct)
    if not is_tensor(ct) then fail("vjp: the cotangent must be a tensor, got %s", describe(ct)) end
    if shapestr(ct) ~= shapestr(y) then
      fail("vjp: the cotangent has shape %s, the output %s", shapestr(ct), shapestr(y))
    end
    local g = tape:gradient(y, src, { output_gradients = { ct }, unconnected = "zero" })
    return table.unpack(g, 1, #src)
  end)
end)

-- jvp(f, primals, tangents): f(primals...) and its directional derivative along tangents.
mg.jvp = api(nil, function(f, primals, tangents)
  check_callable(f, "jvp")
  if type(primals) ~= "table" or type(tangents) ~= "table" or is_tensor(primals) or is_tensor(tangents) then
    fail("jvp: primals and tangents must be arrays of tensors")
  end
  if #primals ~= #tangents then
    fail("jvp: %d primals but %d tangents", #primals, #tangents)
  end
  local nums = {}
  for i = 1, #primals do
    nums[i] = i
    local p, t = primals[i], tangents[i]
    if not is_tensor(t) then fail("jvp: tangent %d is %s, expected a tensor", i, describe(t)) end
    if is_tensor(p) and shapestr(p) ~= shapestr(t) then
      fail("jvp: tangent %d has shape %s, its primal %s", i, shapestr(t), shapestr(p))
    end
  end
  local tape, out, src = traced(f, nums, true, "jvp", table.unpack(primals))
  local y = out[1]
  if not is_tensor(y) then fail("jvp: the function must return a tensor, got %s", describe(y)) end
  return y, tape:forward(src, tangents, y)
end)

-- jacobian(f, x [, {mode="rev"|"fwd"|"auto"}]): J[i..., j...] = d f(x)[i...] / d x[j...]
mg.jacobian = api(nil, function(f, x, opts)
  check_callable(f, "jacobian")
  opts = check_opts("jacobian", opts, { "mode" })
  local tape, out = traced(f, { 1 }, false, "jacobian", x)
  if not is_tensor(out[1]) then fail("jacobian: the function must return a tensor, got %s", describe(out[1])) end
  return tape:jacobian(out[1], x, { mode = opts.mode, unconnected = "zero" })
end)

-- batch_jacobian(f, x [, {check=, mode=}]): J[b, i..., j...] = d f(x)[b, i...] / d x[b, j...]
mg.batch_jacobian = api(nil, function(f, x, opts)
  check_callable(f, "batch_jacobian")
  opts = check_opts("batch_jacobian", opts, { "check", "mode" })
  local tape, out = traced(f, { 1 }, false, "batch_jacobian", x)
  if not is_tensor(out[1]) then
    fail("batch_jacobian: the function must return a tensor, got %s", describe(out[1]))
  end
  return tape:batch_jacobian(out[1], x, { check = opts.check, mode = opts.mode, unconnected = "zero" })
end)

-- hessian(f, x): the Jacobian of the gradient, through nested tapes.
mg.hessian = api(nil, function(f, x)
  check_callable(f, "hessian")
  if not is_tensor(x) then fail("hessian: x must be a tensor, got %s", describe(x)) end
  local hs = x:shape()                                   -- the result: x's shape twice
  for _, n in ipairs(x:shape()) do hs[#hs + 1] = n end
  mg._check_result("hessian", hs, x.dtype)             -- before f runs: refuse what cannot fit
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
end)

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
mg.gradcheck = api(nil, function(f, inputs, opts)
  check_callable(f, "gradcheck")
  opts = check_opts("gradcheck", opts, { "eps", "atol", "rtol", "modes" })
  if is_tensor(inputs) then inputs = { inputs } end
  if type(inputs) ~= "table" or #inputs == 0 then fail("gradcheck: inputs must be a tensor or an array of tensors") end
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-3
  local xs = {}
  for i, x in ipairs(inputs) do
    if not is_tensor(x) then fail("gradcheck: input %d is not a tensor", i) end
    xs[i] = x:to("float64"):clone()
  end
  local function call() return f(table.unpack(xs)) end
  local y0 = call()
  if not is_tensor(y0) then fail("gradcheck: f must return a tensor") end
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
        fail("gradcheck: input %d, %s mode: Jacobian element (output %d, input %d) "
          .. "is %.10g analytically but %.10g by finite differences", k, mode,
          (wi - 1) // nx + 1, (wi - 1) % nx + 1, wa, wn)
      end
    end
  end
  return true
end)

---------------------------------------------------------------- ops composed in Lua

require "moongrad.ops"

---------------------------------------------------------------- submodules

-- mg._extend_nn(nn): called by nn.lua as it finishes loading: adds the training half of mg.nn,
-- the losses (moongrad.losses: nn.mse, nn.huber, ...) and the loop nn.fit (moongrad.fit).
function mg._extend_nn(nn)
  for k, f in pairs(require "moongrad.losses") do nn[k] = f end
  nn.fit = require("moongrad.fit").fit
end

local SPECTRA = { lyapunov = true, jacobian_spectra = true,      -- functions of moongrad.spectra
                  plot_spectrum = true, plot_spectrum_bands = true }

-- moongrad.nn, however it is required (mg.nn or require "moongrad.nn"), comes with what
-- moongrad.serialize and moongrad.interop add to it (layer:state(), nn.save, nn.from_torch,
-- nn.load_keras, ...): they extend nn's classes from outside nn.lua, once it has loaded.
do
  local load_nn = package.preload["moongrad.nn"]
  if load_nn then
    package.preload["moongrad.nn"] = function(...)
      local nn = load_nn(...)
      package.loaded["moongrad.nn"] = nn             -- so the extensions' require finds it
      require "moongrad.serialize"
      require "moongrad.interop"
      return nn
    end
  end
end

setmetatable(mg, { __index = function(t, k)
  if k == "nn" or k == "optim" or k == "plot" or k == "linalg" or k == "summary" then
    local m = require("moongrad." .. k)
    rawset(t, k, m)
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
