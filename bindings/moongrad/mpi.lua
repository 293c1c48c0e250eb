-- moongrad.mpi: collectives, point-to-point messages, data-parallel helpers and sweeps over MPI
-- (docs/mpi.md). This half is always compiled into moongrad.so; the C half, moongrad_mpi.so
-- (bindings/lmpi.c), is built only when CMake finds MPI, and loaded on the first call that
-- needs it: without it every function but mpi.available raises an error saying how to get it.
-- Ranks and roots are 0-based, as mpirun, Slurm and every MPI tool number them.
local mg = require "moongrad"

local M = {}
local type, pairs, ipairs, tostring, error, pcall = type, pairs, ipairs, tostring, error, pcall
local spack, sunpack, concat = string.pack, string.unpack, table.concat

local INSTALL = "install Open MPI's development files (Debian: apt-get install libopenmpi-dev "
  .. "openmpi-bin) and rebuild moongrad (tools/build: CMake builds moongrad_mpi.so when it finds MPI, "
  .. "option MG_MPI)"

local core, why_not, RANK, SIZE

-- Counts of the data allreduces (mpi.allreduce, average_gradients; not the small agreement
-- checks) and of broadcast_parameters' broadcasts: the spec reads them to check that
-- average_gradients and broadcast_parameters are one fused call. Internal.
M._stats = { allreduce = 0, bcast = 0 }

-- moongrad_mpi.so on package.cpath, else beside the file moongrad was loaded from: build/lua/
-- for the build tree's moongrad executable (libmoongrad.so in build/), PREFIX/lib/lua/5.4/ for
-- an installed one (libmoongrad.so in PREFIX/lib/).
local function find_core()
  if os.getenv("MOONGRAD_NO_MPI") and os.getenv("MOONGRAD_NO_MPI") ~= "" and os.getenv("MOONGRAD_NO_MPI") ~= "0" then
    return nil, "MOONGRAD_NO_MPI is set"
  end
  local tried = {}
  local path = package.searchpath("moongrad_mpi", package.cpath)
  if not path then
    local dir = mg._module_dir()
    if dir then
      for _, p in ipairs { dir .. "/moongrad_mpi.so", dir .. "/lua/moongrad_mpi.so",
                           dir .. "/lua/5.4/moongrad_mpi.so" } do
        local f = io.open(p, "rb")
        if f then f:close(); path = p; break end
        tried[#tried + 1] = p
      end
    end
  end
  if not path then
    return nil, "moongrad_mpi.so is not on package.cpath" .. (#tried > 0 and (" nor at " .. concat(tried, ", ")) or "")
  end
  local open, err = package.loadlib(path, "moongrad_mpi_open")
  if not open then return nil, "cannot load " .. path .. ": " .. tostring(err) end
  return open()
end

-- The C half, MPI initialized (first use), or an error naming 'fn'.
local function C(fn)
  if core then return core end
  if why_not == nil then
    local c, err = find_core()
    if c then
      core = c
      RANK, SIZE = core.init()
      return core
    end
    why_not = err
  end
  error(fn .. ": moongrad.mpi is not available (" .. why_not .. "): " .. INSTALL, 3)
end

local function fail(fn, msg) error(fn .. ": " .. msg, 3) end

---------------------------------------------------------------- checks

local function check_tensor(fn, t, what)
  if not mg.is_tensor(t) then fail(fn, (what or "argument #1") .. " must be a tensor, got " .. type(t)) end
  if t.dtype ~= "float32" and t.dtype ~= "float64" then
    fail(fn, (what or "argument #1") .. " has dtype " .. tostring(t.dtype) .. ", expected float32 or float64")
  end
  return t
end

local function check_rank(fn, r, what, any)
  if type(r) ~= "number" or math.type(r) ~= "integer" and r ~= math.floor(r) then
    fail(fn, what .. " must be an integer rank, got " .. (type(r) == "number" and tostring(r) or type(r)))
  end
  r = math.tointeger(r)
  if not (r >= 0 and r < SIZE) and not (any and r == -1) then
    fail(fn, what .. " " .. r .. " is out of range (ranks are 0-based: 0.." .. (SIZE - 1) .. ")")
  end
  return r
end

local function check_tag(fn, tag, any)
  if tag == nil then return any and -1 or 0 end
  local ub = core.tag_ub()
  if math.type(tag) ~= "integer" or tag < (any and -1 or 0) or tag > ub then
    fail(fn, "tag must be an integer in 0.." .. ub .. (any and " (or -1: any)" or "") .. ", got " .. tostring(tag))
  end
  return tag
end

local function signature(t) return t.dtype .. " " .. mg.shapestr(t) end

-- Every rank passed the same 'sig', else the same error on every rank.
local function agree(fn, sig, what)
  if not core.same(sig) then fail(fn, what .. " differ across ranks (this rank " .. RANK .. ": " .. sig .. ")") end
end

-- A contiguous tensor holding t's elements: t itself, or a copy (written back by 'restore').
local function contiguous(t)
  if t:is_contiguous() then return t, false end
  return mg.no_grad(function() return t:contiguous() end), true
end

local function write_back(t, c, copied)
  if copied then mg.no_grad(function() t:copy(c) end) end
end

local function new_tensor(shape, dtype) return mg.zeros(shape, { dtype = dtype }) end

-- The checks of a collective on tensor 't' rooted at 'root' (default 0): the core, and the
-- root after every rank agreed on it and on t's shape and dtype.
local function rooted(fn, t, root)
  local c0 = C(fn)
  check_tensor(fn, t)
  root = check_rank(fn, root == nil and 0 or root, "root")
  agree(fn, signature(t) .. " root " .. root, "shapes, dtypes or roots")
  return c0, root
end

-- A new tensor for every rank's 't' stacked along a new first dimension.
local function stacked(t)
  local shape = t:shape()
  table.insert(shape, 1, SIZE)
  return new_tensor(shape, t.dtype)
end

---------------------------------------------------------------- basics

-- mpi.available() -> true, or false and the reason
function M.available()
  if core then return true end
  if why_not == nil then
    local ok, err = pcall(C, "mpi.available")
    if ok then return true end
    return false, why_not or tostring(err)
  end
  return false, why_not
end

function M.rank() C("mpi.rank"); return RANK end
function M.size() C("mpi.size"); return SIZE end
function M.barrier() C("mpi.barrier").barrier() end
function M.processor_name() return C("mpi.processor_name").processor_name() end

local OPS = { sum = "sum", mean = "sum", max = "max", min = "min" }

function M.allreduce(t, op)
  local fn = "mpi.allreduce"
  local c0 = C(fn)
  check_tensor(fn, t)
  op = op == nil and "sum" or op
  if OPS[op] == nil then fail(fn, "unknown op '" .. tostring(op) .. "' (expected \"sum\", \"mean\", \"max\" or \"min\")") end
  agree(fn, signature(t) .. " " .. op, "shapes, dtypes or ops")
  local c, copied = contiguous(t)
  local p = mg._data_ptr(c, true)
  M._stats.allreduce = M._stats.allreduce + 1
  c0.allreduce(p, c:numel(), c.dtype, OPS[op], op == "mean" and 1 / SIZE or 1, fn)
  write_back(t, c, copied)
  return t
end

function M.broadcast(t, root)
  local fn = "mpi.broadcast"
  local c0
  c0, root = rooted(fn, t, root)
  local c, copied = contiguous(t)
  local p, n = mg._data_ptr(c, RANK ~= root)
  c0.bcast(p, n, root, fn)
  if RANK ~= root then write_back(t, c, copied) end
  return t
end

function M.gather(t, root)
  local fn = "mpi.gather"
  local c0
  c0, root = rooted(fn, t, root)
  local c = contiguous(t)
  local p, n = mg._data_ptr(c)
  local out, q
  if RANK == root then
    out = stacked(t)
    q = mg._data_ptr(out, true)
  end
  c0.gather(p, q, n, root, fn)
  return out
end

function M.allgather(t)
  local fn = "mpi.allgather"
  local c0 = C(fn)
  check_tensor(fn, t)
  agree(fn, signature(t), "shapes or dtypes")
  local c = contiguous(t)
  local p, n = mg._data_ptr(c)
  local out = stacked(t)
  c0.allgather(p, (mg._data_ptr(out, true)), n, fn)
  return out
end

function M.scatter(t, root)
  local fn = "mpi.scatter"
  local c0 = C(fn)
  root = check_rank(fn, root == nil and 0 or root, "root")
  if not core.same("root " .. root) then fail(fn, "roots differ across ranks (this rank " .. RANK .. ": " .. root .. ")") end
  -- the root says what each rank gets, or why nothing is sent (then every rank raises)
  local header
  if RANK == root then
    local ok, err = pcall(check_tensor, fn, t)
    if not ok then header = "E" .. err
    elseif t:dim() == 0 or t:size(1) % SIZE ~= 0 then
      header = "E" .. fn .. ": the root's tensor " .. mg.shapestr(t) .. " does not split along its first dimension over "
        .. SIZE .. " ranks"
    else
      local shape = t:shape()
      shape[1] = shape[1] // SIZE
      header = "T" .. M._serialize({ t.dtype, shape })
    end
  end
  header = c0.bcast_string(header, root)
  if header:sub(1, 1) == "E" then error(header:sub(2), 2) end
  local info = M._deserialize(header:sub(2))
  local out = new_tensor(info[2], info[1])
  local p, q, n
  if RANK == root then p = mg._data_ptr((contiguous(t))) end
  q, n = mg._data_ptr(out, true)
  c0.scatter(p, q, n, root, fn)
  return out
end

-- mpi.shard(t [, dim]): this rank's contiguous share of t along 'dim' (default 1, 1-based as
-- everywhere in moongrad), a view; the size must split evenly.
function M.shard(t, dim)
  local fn = "mpi.shard"
  C(fn)
  if not mg.is_tensor(t) then fail(fn, "argument #1 must be a tensor, got " .. type(t)) end
  dim = dim or 1
  if math.type(dim) ~= "integer" or dim == 0 or math.abs(dim) > t:dim() then
    fail(fn, "dim " .. tostring(dim) .. " is out of range for a " .. t:dim() .. "-d tensor")
  end
  local n = t:size(dim)
  if n % SIZE ~= 0 then fail(fn, "size " .. n .. " of dim " .. dim .. " does not split over " .. SIZE .. " ranks") end
  local k = n // SIZE
  return t:narrow(dim, RANK * k + 1, k)
end

---------------------------------------------------------------- serializer (Lua values)

-- Numbers (integers stay integers), strings, booleans, tensors, and tables of them (any keys
-- of those types, nested; no cycles).
local function ser(v, out, seen, fn)
  local tv = type(v)
  if tv == "nil" then out[#out + 1] = "z"
  elseif tv == "boolean" then out[#out + 1] = v and "t" or "f"
  elseif tv == "number" then
    if math.type(v) == "integer" then out[#out + 1] = spack("<c1j", "i", v)
    else out[#out + 1] = spack("<c1d", "d", v) end
  elseif tv == "string" then out[#out + 1] = spack("<c1s4", "s", v)
  elseif mg.is_tensor(v) then
    local shape = v:shape()
    local flat = v:numel() == 0 and {} or v:reshape(-1):totable()
    out[#out + 1] = spack("<c1s1B", "X", v.dtype, #shape)
    for _, s in ipairs(shape) do out[#out + 1] = spack("<j", s) end
    out[#out + 1] = spack("<j", #flat)
    for _, x in ipairs(flat) do out[#out + 1] = spack("<d", x) end
  elseif tv == "table" then
    if seen[v] then error(fn .. ": cannot send a table that contains itself", 0) end
    seen[v] = true
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    out[#out + 1] = spack("<c1j", "T", n)
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    for _, k in ipairs(keys) do
      local tk = type(k)
      if tk ~= "number" and tk ~= "string" and tk ~= "boolean" then
        error(fn .. ": cannot send a table key of type " .. tk, 0)
      end
      ser(k, out, seen, fn)
      ser(v[k], out, seen, fn)
    end
    seen[v] = nil
  else
    error(fn .. ": cannot send a value of type " .. tv .. " (numbers, strings, booleans, tensors and tables of them)", 0)
  end
end

local function deser(s, i)
  local tag = s:sub(i, i)
  i = i + 1
  if tag == "z" then return nil, i
  elseif tag == "t" then return true, i
  elseif tag == "f" then return false, i
  elseif tag == "i" then return sunpack("<j", s, i)
  elseif tag == "d" then return sunpack("<d", s, i)
  elseif tag == "s" then return sunpack("<s4", s, i)
  elseif tag == "X" then
    local dtype, nd
    dtype, nd, i = sunpack("<s1B", s, i)
    local shape = {}
    for k = 1, nd do shape[k], i = sunpack("<j", s, i) end
    local n
    n, i = sunpack("<j", s, i)
    local flat = {}
    for k = 1, n do flat[k], i = sunpack("<d", s, i) end
    if n == 0 then return new_tensor(shape, dtype), i end
    return mg.tensor(flat, { dtype = dtype }):reshape(shape), i
  elseif tag == "T" then
    local n
    n, i = sunpack("<j", s, i)
    local t = {}
    for _ = 1, n do
      local k, v
      k, i = deser(s, i)
      v, i = deser(s, i)
      t[k] = v
    end
    return t, i
  end
  error("moongrad.mpi: corrupt message (tag '" .. tag .. "')", 0)
end

function M._serialize(v, fn)
  local out = {}
  ser(v, out, {}, fn or "mpi.send")
  return concat(out)
end

function M._deserialize(s) return (deser(s, 1)) end

---------------------------------------------------------------- point to point

-- A message is a header ("T" + dtype and shape, or "V" + a serialized value), then for a tensor
-- its elements as a second message with the same tag (MPI keeps their order).
function M.send(v, dest, tag)
  local fn = "mpi.send"
  local c0 = C(fn)
  dest = check_rank(fn, dest, "dest")
  tag = check_tag(fn, tag)
  if mg.is_tensor(v) then
    check_tensor(fn, v)
    local c = contiguous(v)
    local p, n = mg._data_ptr(c)
    c0.send("T" .. M._serialize({ v.dtype, v:shape() }), nil, dest, tag)
    c0.send(p, n, dest, tag)
  else
    local ok, s = pcall(M._serialize, v, fn)
    if not ok then error(s, 2) end
    c0.send("V" .. s, nil, dest, tag)
  end
end

-- mpi.recv(src [, tag]) -> value, source, tag (src -1: any rank; tag -1: any tag)
function M.recv(src, tag)
  local fn = "mpi.recv"
  local c0 = C(fn)
  src = check_rank(fn, src, "src", true)
  tag = check_tag(fn, tag, true)
  local header, from, got = c0.recv_string(src, tag)
  local v = M._deserialize(header:sub(2))
  if header:sub(1, 1) == "T" then
    local out = new_tensor(v[2], v[1])
    local p, n = mg._data_ptr(out, true)
    c0.recv(p, n, from, got)
    return out, from, got
  end
  return v, from, got
end

---------------------------------------------------------------- data parallel

-- The tensors of 'list' (an array of tensors, nil holes allowed up to 'n', or an object with
-- :parameters()), grouped by dtype: { dtype = { indices } } and the signature of the whole.
local function groups(fn, list, n)
  local by, sig, order = {}, {}, {}
  for i = 1, n do
    local t = list[i]
    if t == nil then sig[#sig + 1] = "nil"
    else
      check_tensor(fn, t, "entry " .. i)
      if not by[t.dtype] then by[t.dtype] = {}; order[#order + 1] = t.dtype end
      local g = by[t.dtype]
      g[#g + 1] = i
      sig[#sig + 1] = signature(t)
    end
  end
  return by, order, concat(sig, ";")
end

local function as_list(fn, params)
  if type(params) == "table" and type(params.parameters) == "function" then params = params:parameters() end
  if type(params) ~= "table" or mg.is_tensor(params) then
    fail(fn, "expected an array of tensors (or a layer with :parameters()), got " .. (mg.is_tensor(params) and "a tensor" or type(params)))
  end
  local n = 0
  for k in pairs(params) do if math.type(k) == "integer" and k > n then n = k end end
  return params, n
end

-- One buffer per dtype: the tensors flattened and concatenated.
local function pack(list, idx)
  local flat = {}
  for j, i in ipairs(idx) do flat[j] = list[i]:reshape(-1) end
  return mg.no_grad(function() return #flat == 1 and flat[1]:contiguous():clone() or mg.cat(flat, 1) end)
end

-- mpi.average_gradients(grads) -> a new array: the mean over ranks of each gradient, from ONE
-- allreduce per dtype over all of them packed into one buffer.
function M.average_gradients(grads)
  local fn = "mpi.average_gradients"
  local c0 = C(fn)
  local list, n = as_list(fn, grads)
  local by, order, sig = groups(fn, list, n)
  agree(fn, sig, "gradient shapes or dtypes")
  local out = {}
  for _, dt in ipairs(order) do
    local idx = by[dt]
    local buf = pack(list, idx)
    M._stats.allreduce = M._stats.allreduce + 1
    c0.allreduce((mg._data_ptr(buf, true)), buf:numel(), dt, "sum", 1 / SIZE, fn)
    local off = 0
    for _, i in ipairs(idx) do
      local t = list[i]
      local k = t:numel()
      out[i] = buf:narrow(1, off + 1, k):reshape(t:shape())
      off = off + k
    end
  end
  return out
end

-- mpi.broadcast_parameters(params [, root]): the root's values written into every rank's
-- parameters (Variables assigned, plain tensors copied), one broadcast per dtype.
function M.broadcast_parameters(params, root)
  local fn = "mpi.broadcast_parameters"
  local c0 = C(fn)
  local list, n = as_list(fn, params)
  root = check_rank(fn, root == nil and 0 or root, "root")
  local by, order, sig = groups(fn, list, n)
  agree(fn, sig .. " root " .. root, "parameter shapes, dtypes or roots")
  for _, dt in ipairs(order) do
    local idx = by[dt]
    local buf = pack(list, idx)
    local p, bytes = mg._data_ptr(buf, true)
    M._stats.bcast = M._stats.bcast + 1
    c0.bcast(p, bytes, root, fn)
    if RANK ~= root then
      local off = 0
      for _, i in ipairs(idx) do
        local t = list[i]
        local k = t:numel()
        local v = buf:narrow(1, off + 1, k):reshape(t:shape())
        mg.no_grad(function() if t:is_variable() then t:assign(v) else t:copy(v) end end)
        off = off + k
      end
    end
  end
  return params
end

---------------------------------------------------------------- sweeps

-- A readable one-line printout of a config (sorted keys, nested tables, depth-limited).
local function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return string.format("%q", v) end
  if mg.is_tensor(v) then return "tensor" .. mg.shapestr(v) end
  if type(v) ~= "table" then return tostring(v) end
  if depth > 3 then return "{...}" end
  local keys, parts = {}, {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
    return type(a) < type(b)
  end)
  local n = #v
  for _, k in ipairs(keys) do
    if math.type(k) == "integer" and k >= 1 and k <= n then parts[#parts + 1] = show(v[k], depth + 1)
    else
      local ks = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. show(k, depth + 1) .. "]")
      parts[#parts + 1] = ks .. " = " .. show(v[k], depth + 1)
    end
  end
  return "{" .. concat(parts, ", ") .. "}"
end
M._show = show

local function run_one(fn, configs, i)
  local ok, r = xpcall(fn, function(e)       -- the message and the frames inside fn
    local tb = debug.traceback(tostring(e), 2)
    return (tb:gsub("\n\t%[C%]: in function 'xpcall'.*$", ""))
  end, configs[i])
  if not ok then return { ok = false, err = r } end
  local sok, s = pcall(M._serialize, r, "mpi.sweep")
  if not sok then return { ok = false, err = "its result cannot be sent to rank 0: " .. tostring(s) } end
  return { ok = true, value = r, bytes = s }
end

local TASK, RESULT = 1, 2

-- mpi.sweep(configs, fn [, opts]) -> on rank 0 the array of fn(configs[i]); nil elsewhere.
-- Ranks 1..size-1 take configs on demand from rank 0 when size >= 3 (dynamic: unequal runs
-- balance; rank 0 only dispatches); with 1 or 2 ranks every rank runs configs i with
-- (i - 1) % size == rank (static round-robin). A run that raises does not stop the others:
-- when all are done every rank raises, rank 0 with every failed run's index, rank and config.
function M.sweep(configs, fn, opts)
  local name = "mpi.sweep"
  local c0 = C(name)
  if type(configs) ~= "table" then fail(name, "configs must be an array, got " .. type(configs)) end
  if type(fn) ~= "function" then fail(name, "fn must be a function, got " .. type(fn)) end
  opts = opts or {}
  if type(opts) ~= "table" then fail(name, "opts must be a table, got " .. type(opts)) end
  for k in pairs(opts) do
    if k ~= "schedule" then fail(name, "unknown option '" .. tostring(k) .. "' (known: schedule)") end
  end
  local schedule = opts.schedule or (SIZE >= 3 and "dynamic" or "static")
  if schedule ~= "static" and schedule ~= "dynamic" then
    fail(name, "schedule must be \"static\" or \"dynamic\", got " .. tostring(schedule))
  end
  if schedule == "dynamic" and SIZE < 2 then schedule = "static" end
  local n = #configs
  if not core.same("sweep " .. n .. " " .. schedule, true) then
    fail(name, "the number of configs (" .. n .. " on rank " .. RANK .. ") or the schedule differs across ranks")
  end
  local results, failures = {}, {}      -- rank 0: index -> value; array of { i, rank, err }
  local function record(i, from, entry)
    if entry.ok then results[i] = entry.value
    else failures[#failures + 1] = { i = i, rank = from, err = entry.err } end
  end

  if schedule == "static" then
    local mine = {}
    for i = RANK + 1, n, SIZE do
      local e = run_one(fn, configs, i)
      if RANK == 0 then record(i, 0, e)
      else mine[#mine + 1] = e.ok and { i = i, ok = true, value = e.value } or { i = i, ok = false, err = e.err } end
    end
    if RANK ~= 0 then
      c0.send(M._serialize(mine, name), nil, 0, RESULT, true)
    else
      for r = 1, SIZE - 1 do
        local s = c0.recv_string(r, RESULT, true)
        for _, e in ipairs(M._deserialize(s)) do record(e.i, r, e) end
      end
    end
  elseif RANK == 0 then                  -- dynamic: the dispatcher
    local nexti, active = 1, 0
    for r = 1, SIZE - 1 do
      if nexti <= n then c0.send(spack("<j", nexti), nil, r, TASK, true); nexti = nexti + 1; active = active + 1
      else c0.send(spack("<j", 0), nil, r, TASK, true) end
    end
    while active > 0 do
      local s, from = c0.recv_string(-1, RESULT, true)
      local e = M._deserialize(s)
      record(e.i, from, e)
      if nexti <= n then c0.send(spack("<j", nexti), nil, from, TASK, true); nexti = nexti + 1
      else c0.send(spack("<j", 0), nil, from, TASK, true); active = active - 1 end
    end
  else                                   -- dynamic: a worker
    while true do
      local i = sunpack("<j", (c0.recv_string(0, TASK, true)))
      if i == 0 then break end
      local e = run_one(fn, configs, i)
      c0.send(M._serialize(e.ok and { i = i, ok = true, value = e.value } or { i = i, ok = false, err = e.err }, name),
              nil, 0, RESULT, true)
    end
  end

  -- the outcome, from rank 0 to all: "" or the report; then every rank raises, or rank 0 returns
  local report
  if RANK == 0 then
    if #failures == 0 then report = ""
    else
      table.sort(failures, function(a, b) return a.i < b.i end)
      local lines = { name .. ": " .. #failures .. " of " .. n .. " runs failed" }
      for _, f in ipairs(failures) do
        lines[#lines + 1] = "  run " .. f.i .. " (rank " .. f.rank .. ") config " .. show(configs[f.i]) .. ": " .. f.err
      end
      report = concat(lines, "\n")
    end
  end
  report = c0.bcast_string(report, 0, true)
  if report ~= "" then
    if RANK == 0 then error(report, 2) end
    error(name .. ": " .. report:match("(%d+ of %d+ runs failed)") .. " (rank 0 reports which; this is rank " .. RANK .. ")", 2)
  end
  if RANK == 0 then return results, n end
  return nil
end

return M
