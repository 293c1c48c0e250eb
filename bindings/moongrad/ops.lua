-- moongrad.ops: the ops of issue 12 composed in Lua from recorded primitives (their
-- gradients and tangents come from those primitives' rules): prod (from cumprod: exact with
-- zeros), roll, tril, triu, outer, einsum, masked_fill, pad, repeat (also as repeats), tile, and the alias
-- swish of silu. Loaded once by core.lua; adds each as a function of mg and a Tensor method.
local mg = require "moongrad"

local ipairs, pairs, math, table, type, tostring = ipairs, pairs, math, table, type, tostring
local debug = debug
local _ENV = nil

local SOURCE = debug.getinfo(1, "S").source
local c = mg._checks(SOURCE)
local raisef, describe = c.raisef, c.describe

local function check_tensor(x, fn, what)
  if not mg.is_tensor(x) then raisef("%s: %s must be a tensor, got %s", fn, what or "argument 1", describe(x)) end
end

local function check_int(v, fn, what)
  if type(v) ~= "number" or v ~= math.floor(v) then
    raisef("%s: %s must be an integer, got %s", fn, what, type(v) == "number" and tostring(v) or describe(v))
  end
  return math.tointeger(v)
end

-- The integers given as one table or as the varargs, checked.
local function int_list(fn, what, first, ...)
  local list = type(first) == "table" and first or { first, ... }
  if type(first) ~= "table" and first == nil then list = {} end
  local out = {}
  for i, v in ipairs(list) do out[i] = check_int(v, fn, what .. " " .. i) end
  return out
end

---------------------------------------------------------------- prod

-- prod(x [, d [, keepdim]]): the product of all elements, or along d: the last entry of
-- cumprod, whose rules are exact where x has zeros.
function mg.prod(x, d, keepdim)
  check_tensor(x, "prod")
  if d == nil then
    local f = x:reshape(-1)
    local n = f:size(1)
    if n == 0 then return mg.ones({}, { dtype = x.dtype }) end
    return f:cumprod(1):select(1, n)
  end
  if x:dim() == 0 then raisef("prod: dimension %s out of range for a 0-d tensor", tostring(d)) end
  check_int(d, "prod", "dimension")
  local n = x:size(d)
  if n == 0 then
    local sh = x:shape()
    local z = d < 0 and d + #sh + 1 or d
    if keepdim then sh[z] = 1 else table.remove(sh, z) end
    return mg.ones(sh, { dtype = x.dtype })
  end
  local y = x:cumprod(d):narrow(d, n, 1)
  if not keepdim then y = y:squeeze(d) end
  return y
end

---------------------------------------------------------------- roll, tril, triu, outer

local function roll1(x, s, d)
  local n = x:size(d)
  if n == 0 then return x end
  s = s % n
  if s == 0 then return x:clone() end
  return mg.cat({ x:narrow(d, n - s + 1, s), x:narrow(d, 1, n - s) }, d)
end

-- roll(x, shift [, d]): entries shifted by 'shift' along d (wrapping around), as torch.roll;
-- without d, of the flattened tensor (shape kept); shift and d may be tables of equal length.
function mg.roll(x, shift, d)
  check_tensor(x, "roll")
  if d == nil then
    check_int(shift, "roll", "shift")
    return roll1(x:reshape(-1), shift, 1):reshape(x:shape())
  end
  local shifts = type(shift) == "table" and shift or { shift }
  local dims = type(d) == "table" and d or { d }
  if #shifts ~= #dims then raisef("roll: %d shifts for %d dimensions", #shifts, #dims) end
  local y = x
  for i = 1, #dims do
    local k = check_int(dims[i], "roll", "dimension")
    if k == 0 or k > x:dim() or k < -x:dim() then
      raisef("roll: dimension %d out of range for a %d-d tensor", k, x:dim())
    end
    y = roll1(y, check_int(shifts[i], "roll", "shift"), k)
  end
  return y
end

-- 1 where (column - row) compares with k as 'keep' says, over the last two dims of x.
local function band(x, k, fn, lower)
  check_tensor(x, fn)
  if x:dim() < 2 then raisef("%s: expected at least 2 dimensions, got %d", fn, x:dim()) end
  k = check_int(k or 0, fn, "diagonal")
  local r, cl = x:size(-2), x:size(-1)
  local diff = mg.arange(cl, { dtype = x.dtype }):reshape(1, cl) - mg.arange(r, { dtype = x.dtype }):reshape(r, 1)
  local keep = lower and mg.le(diff, k) or mg.ge(diff, k)
  return mg.where(keep, x, 0)
end

-- tril(x [, k]) / triu(x [, k]): the entries on and below (above) diagonal k of the last
-- two dims, zeros elsewhere (k > 0 above the main diagonal), as torch.tril/triu.
function mg.tril(x, k) return band(x, k, "tril", true) end
function mg.triu(x, k) return band(x, k, "triu", false) end

-- outer(a, b): the (n, m) matrix a_i b_j of two 1-d tensors.
function mg.outer(a, b)
  check_tensor(a, "outer")
  check_tensor(b, "outer", "argument 2")
  if a:dim() ~= 1 or b:dim() ~= 1 then
    raisef("outer: expected two 1-d tensors, got %s and %s", describe(a), describe(b))
  end
  return a:reshape(-1, 1) * b:reshape(1, -1)
end

---------------------------------------------------------------- einsum

local function letters_of(term, fn)
  local t = {}
  for i = 1, #term do
    local ch = term:sub(i, i)
    if not ch:match("%a") then raisef("%s: '%s' in '%s' is not a letter (only letters, no '...')", fn, ch, term) end
    t[i] = ch
  end
  return t
end

local function index_of(list, v)
  for i, w in ipairs(list) do if w == v then return i end end
end

-- Remove repeated letters of one operand by taking diagonals (x and its letters, updated).
local function take_diagonals(x, ls)
  local i, j
  repeat
    i, j = nil, nil
    for a = 1, #ls do
      for b = a + 1, #ls do if ls[a] == ls[b] and not i then i, j = a, b end end
    end
    if i then
      x = x:diagonal(0, i, j)
      local ch = ls[i]
      table.remove(ls, j)
      table.remove(ls, i)
      ls[#ls + 1] = ch
    end
  until not i
  return x, ls
end

-- Sum x over its letters that 'keep' does not hold.
local function sum_out(x, ls, keep)
  local dims, rest = {}, {}
  for i, ch in ipairs(ls) do
    if keep[ch] then rest[#rest + 1] = ch else dims[#dims + 1] = i end
  end
  if #dims > 0 then x = x:sum(dims) end
  return x, rest
end

local function permute_to(x, ls, order)
  local p, id = {}, true
  for i, ch in ipairs(order) do
    p[i] = index_of(ls, ch)
    id = id and p[i] == i
  end
  if id then return x end
  return x:permute(p)
end

local function numel(sizes, list)
  local n = 1
  for _, ch in ipairs(list) do n = n * sizes[ch] end
  return n
end

local function concat_lists(...)
  local r = {}
  for _, l in ipairs({ ... }) do for _, ch in ipairs(l) do r[#r + 1] = ch end end
  return r
end

-- The subscripts of 'spec' checked against the operands: each operand's letters, each
-- letter's size, and the output's letters (implicit: those seen once, alphabetically).
local function einsum_parse(spec, ops)
  local fn = "einsum"
  if type(spec) ~= "string" then raisef("einsum: the subscripts must be a string, got %s", describe(spec)) end
  local s = spec:gsub("%s", "")
  local lhs, rhs = s:match("^(.-)%->(.*)$")
  if not lhs then lhs = s end
  local terms = {}
  for t in (lhs .. ","):gmatch("([^,]*),") do terms[#terms + 1] = t end
  if #terms < 1 or #terms > 2 then raisef("einsum: %d operands in '%s' (one or two are supported)", #terms, spec) end
  if #ops ~= #terms then raisef("einsum: '%s' names %d operands, %d given", spec, #terms, #ops) end
  local ls, sizes, count = {}, {}, {}
  for k, t in ipairs(terms) do
    check_tensor(ops[k], fn, "operand " .. k)
    ls[k] = letters_of(t, fn)
    if #ls[k] ~= ops[k]:dim() then
      raisef("einsum: '%s' has %d subscripts for operand %d of %d dimensions", t, #ls[k], k, ops[k]:dim())
    end
    for i, ch in ipairs(ls[k]) do
      local n = ops[k]:size(i)
      if sizes[ch] and sizes[ch] ~= n then raisef("einsum: subscript '%s' has sizes %d and %d", ch, sizes[ch], n) end
      sizes[ch] = n
      count[ch] = (count[ch] or 0) + 1
    end
  end
  local out = {}
  if rhs then
    out = letters_of(rhs, fn)
    for i, ch in ipairs(out) do
      if not sizes[ch] then raisef("einsum: output subscript '%s' is in no operand", ch) end
      if index_of(out, ch) ~= i then raisef("einsum: output subscript '%s' repeated", ch) end
    end
  else
    for ch, n in pairs(count) do if n == 1 then out[#out + 1] = ch end end
    table.sort(out)
  end
  return ls, sizes, out
end

-- Two operands (diagonals taken) contracted: letters only one side needs are summed first;
-- then a (B, A, K) @ b (B, K, Bo) as one batched matmul, B the letters both operands and the
-- output have, K those both have and the output does not.
local function einsum_pair(xs, ls, sizes, out, keep)
  for k = 1, 2 do
    local kk = {}
    for _, ch in ipairs(ls[3 - k]) do kk[ch] = true end
    for ch in pairs(keep) do kk[ch] = true end
    xs[k], ls[k] = sum_out(xs[k], ls[k], kk)
  end
  local ina, inb = {}, {}
  for _, ch in ipairs(ls[1]) do ina[ch] = true end
  for _, ch in ipairs(ls[2]) do inb[ch] = true end
  local B, A, K, Bo = {}, {}, {}, {}
  for _, ch in ipairs(ls[1]) do
    local l = not inb[ch] and A or (keep[ch] and B or K)
    l[#l + 1] = ch
  end
  for _, ch in ipairs(ls[2]) do if not ina[ch] then Bo[#Bo + 1] = ch end end
  local nb, na, nk, nbo = numel(sizes, B), numel(sizes, A), numel(sizes, K), numel(sizes, Bo)
  local a3 = permute_to(xs[1], ls[1], concat_lists(B, A, K)):reshape(nb, na, nk)
  local b3 = permute_to(xs[2], ls[2], concat_lists(B, K, Bo)):reshape(nb, nk, nbo)
  local res, sh = concat_lists(B, A, Bo), {}
  for i, ch in ipairs(res) do sh[i] = sizes[ch] end
  return permute_to(mg.matmul(a3, b3):reshape(sh), res, out)
end

-- einsum(spec, a [, b]): Einstein summation over one or two operands, as torch.einsum, for
-- letter subscripts ("ij,jk->ik", "bij,bjk->bik", "ii->i", "ij->"; implicit output: the
-- letters seen once, in alphabetical order). Done by diagonal, sum, permute, reshape and
-- one batched matmul, so it is as fast as matmul and differentiable.
function mg.einsum(spec, ...)
  local ops = { ... }
  local ls, sizes, out = einsum_parse(spec, ops)
  local keep = {}
  for _, ch in ipairs(out) do keep[ch] = true end
  local xs = {}
  for k = 1, #ops do xs[k], ls[k] = take_diagonals(ops[k], ls[k]) end
  if #ops == 2 then return einsum_pair(xs, ls, sizes, out, keep) end
  local x, rest = sum_out(xs[1], ls[1], keep)
  return permute_to(x, rest, out)
end

---------------------------------------------------------------- masked_fill, pad

-- masked_fill(x, mask, value): value where mask is non-zero, x elsewhere.
function mg.masked_fill(x, mask, value)
  check_tensor(x, "masked_fill")
  check_tensor(mask, "masked_fill", "the mask")
  if type(value) ~= "number" and not mg.is_tensor(value) then
    raisef("masked_fill: value must be a number or a tensor, got %s", describe(value))
  end
  local y = mg.where(mask, value, x)
  if y:dim() ~= x:dim() or mg.shapestr(y) ~= mg.shapestr(x) then
    raisef("masked_fill: mask of shape %s does not broadcast to %s", mg.shapestr(mask), mg.shapestr(x))
  end
  return y
end

-- pad(x, pads [, value]): constant padding as torch.nn.functional.pad: pads = {left, right}
-- for the last dim, then {left, right} of the one before, ...; negative amounts crop.
function mg.pad(x, pads, value)
  check_tensor(x, "pad")
  if type(pads) ~= "table" then raisef("pad: pads must be a table of integers, got %s", describe(pads)) end
  if #pads % 2 ~= 0 or #pads // 2 > x:dim() then
    raisef("pad: %d amounts for a %d-d tensor (two per dimension, at most %d)", #pads, x:dim(), 2 * x:dim())
  end
  value = value or 0
  if type(value) ~= "number" then raisef("pad: value must be a number, got %s", describe(value)) end
  local y = x
  for p = 1, #pads // 2 do
    local d = x:dim() - p + 1
    local lo = check_int(pads[2 * p - 1], "pad", "amount " .. (2 * p - 1))
    local hi = check_int(pads[2 * p], "pad", "amount " .. (2 * p))
    local n = y:size(d)
    local first, last = 1 + math.max(0, -lo), n - math.max(0, -hi)
    if last < first - 1 then raisef("pad: cropping %d and %d from dimension %d of size %d", -lo, -hi, d, n) end
    if lo < 0 or hi < 0 then y = y:narrow(d, first, last - first + 1) end
    local parts = {}
    local function piece(len)
      local sh = y:shape()
      sh[d] = len
      parts[#parts + 1] = mg.full(sh, value, { dtype = y.dtype })
    end
    if lo > 0 then piece(lo) end
    parts[#parts + 1] = y
    if hi > 0 then piece(hi) end
    if #parts > 1 then y = mg.cat(parts, d) end
  end
  return y
end

---------------------------------------------------------------- repeat, tile

local function repeat_by(x, reps, fn)
  local nd = x:dim()
  if #reps < nd then raisef("%s: %d repeats for a %d-d tensor (at least one per dimension)", fn, #reps, nd) end
  local sh = x:shape()
  while #sh < #reps do table.insert(sh, 1, 1) end
  local inter, wide, final = {}, {}, {}
  for i, r in ipairs(reps) do
    if r < 0 then raisef("%s: repeat %d is negative (%d)", fn, i, r) end
    inter[2 * i - 1], inter[2 * i] = 1, sh[i]
    wide[2 * i - 1], wide[2 * i] = r, sh[i]
    final[i] = r * sh[i]
  end
  if #reps == 0 then return x:clone() end
  return x:reshape(inter):expand(wide):reshape(final)
end

-- repeat(x, r1, r2, ...) (or a table): x tiled r_i times along each dim, as torch's
-- Tensor.repeat (more repeats than dims add leading dims). 'repeat' is a Lua keyword, so
-- x:repeat(2) does not parse: the function is both mg["repeat"] (x["repeat"](x, 2), as
-- PyTorch names it) and mg.repeats (x:repeats(2)), each naming itself in its errors.
local function repeat_named(fn)
  return function(x, ...)
    check_tensor(x, fn)
    return repeat_by(x, int_list(fn, "repeat", ...), fn)
  end
end
mg.repeats, mg["repeat"] = repeat_named("repeats"), repeat_named("repeat")

-- tile(x, reps): as numpy.tile / torch.tile: fewer reps than dims count from the last dim.
function mg.tile(x, ...)
  check_tensor(x, "tile")
  local reps = int_list("tile", "repeat", ...)
  while #reps < x:dim() do table.insert(reps, 1, 1) end
  return repeat_by(x, reps, "tile")
end

-- Public: each function's errors name it at the user's line (core.lua's api); all but
-- einsum are Tensor methods too.
mg.swish = mg.silu
local methods = {}
for _, name in ipairs({ "prod", "roll", "tril", "triu", "outer", "einsum", "masked_fill", "pad",
                        "repeats", "repeat", "tile" }) do
  mg[name] = c.api(nil, mg[name])
  if name ~= "einsum" then methods[name] = mg[name] end
end
methods.swish = mg.swish
mg._add_methods(methods)
