-- moongrad.linalg (mg.linalg): linear algebra over matrices and batches of matrices (..., m, n).
-- The decompositions are LAPACK primitives (runtime/lapack.c, bound as mg._linalg) with their
-- own reverse and forward rules; everything else here is composed from recorded ops, so it is
-- differentiable to any order without rules of its own.
local mg = require "moongrad"

local error, math, pcall, string, table, tostring, type = error, math, pcall, string, table, tostring, type
local debug = debug
local _ENV = nil

local P = mg._linalg
local ck = mg._checks(debug.getinfo(1, "S").source)
local raise, raisef, describe = ck.raise, ck.raisef, ck.describe

local linalg = {}

local EPS = { float32 = 1.1920928955078125e-07, float64 = 2.220446049250313e-16 }

---------------------------------------------------------------- checks

local function check_tensor(fn, A, what)
  if not mg.is_tensor(A) then
    raisef("%s: expected %s to be a tensor, got %s", fn, what or "A", describe(A))
  end
end

local function check_matrix(fn, A, square)
  check_tensor(fn, A)
  if A:dim() < 2 then
    raisef("%s: expected a matrix or a batch of matrices, got shape %s", fn, mg.shapestr(A))
  end
  if square and A:size(-1) ~= A:size(-2) then
    raisef("%s: expected square matrices, got shape %s", fn, mg.shapestr(A))
  end
end

-- Call f(...); an error message naming the primitive 'prim' names 'fn' instead.
local function via(fn, prim, f, ...)
  local res = table.pack(pcall(f, ...))
  if not res[1] then
    local msg = tostring(res[2]):gsub("^" .. prim:gsub("%.", "%%.") .. ":", fn .. ":")
    raise(msg)
  end
  return table.unpack(res, 2, res.n)
end

-- Primitive 'name' of mg._linalg called for the user-facing 'fn'.
local function prim(fn, name, ...)
  return via(fn, "linalg." .. name, P[name], ...)
end

local function opts_of(fn, opts, allowed)
  return ck.check_opts(fn, opts, allowed)
end

local function eye_like(A) return mg.eye(A:size(-1), { dtype = A.dtype }) end

local function mT(A) return A:transpose(-2, -1) end

-- B (..., n) a vector (or batch of vectors) for solve(A, B), as torch.linalg.solve decides.
local function is_vector_rhs(A, B)
  if B:dim() == 1 then return true end
  if B:dim() ~= A:dim() - 1 then return false end
  for i = 1, B:dim() do
    if B:size(i) ~= A:size(i) then return false end
  end
  return true
end

---------------------------------------------------------------- decompositions

-- qr(A [, mode | {mode=}]): Q, R with A = Q R; mode "reduced" (default) or "complete".
function linalg.qr(A, mode)
  if type(mode) == "table" then mode = opts_of("linalg.qr", mode, { mode = true }).mode end
  mode = mode or "reduced"
  if mode ~= "reduced" and mode ~= "complete" then
    raisef("linalg.qr: mode must be \"reduced\" or \"complete\", got %s", tostring(mode))
  end
  check_matrix("linalg.qr", A)
  return prim("linalg.qr", "qr", A, mode == "complete")
end

-- svd(A [, {full_matrices=true}]): U, S (descending), Vh with A = U diag(S) Vh.
function linalg.svd(A, opts)
  opts = opts_of("linalg.svd", opts, { full_matrices = true })
  check_matrix("linalg.svd", A)
  return prim("linalg.svd", "svd", A, opts.full_matrices ~= false, true)
end

-- svdvals(A): the singular values, descending.
function linalg.svdvals(A)
  check_matrix("linalg.svdvals", A)
  return prim("linalg.svdvals", "svd", A, false, false)
end

local function uplo_input(fn, A, opts)
  opts = opts_of(fn, opts, { UPLO = true })
  local uplo = opts.UPLO or "L"
  if uplo ~= "L" and uplo ~= "U" then raisef("%s: UPLO must be \"L\" or \"U\", got %s", fn, tostring(uplo)) end
  check_matrix(fn, A, true)
  return uplo == "U" and mT(A) or A
end

-- eigh(A [, {UPLO="L"}]): eigenvalues ascending and eigenvectors (columns) of symmetric A.
function linalg.eigh(A, opts)
  return prim("linalg.eigh", "eigh", uplo_input("linalg.eigh", A, opts), true)
end

function linalg.eigvalsh(A, opts)
  return prim("linalg.eigvalsh", "eigh", uplo_input("linalg.eigvalsh", A, opts), false)
end

-- eig(A): eigenvalues and eigenvectors of a general square A, as real and imaginary parts:
-- w_re, w_im, V_re, V_im. Not differentiable.
function linalg.eig(A)
  check_matrix("linalg.eig", A, true)
  return prim("linalg.eig", "eig", A)
end

function linalg.eigvals(A)
  check_matrix("linalg.eigvals", A, true)
  local wr, wi = via("linalg.eigvals", "linalg.eig", P.eig, A)
  return wr, wi
end

-- cholesky(A [, {upper=false}]): lower L with L L^T = A (or upper U = L^T with U^T U = A).
function linalg.cholesky(A, opts)
  opts = opts_of("linalg.cholesky", opts, { upper = true })
  check_matrix("linalg.cholesky", A, true)
  local L = prim("linalg.cholesky", "cholesky", A)
  if opts.upper then return mT(L) end
  return L
end

---------------------------------------------------------------- solving

-- solve(A, B [, {left=true}]): X with A X = B (left=false: X A = B); B a matrix or a vector.
function linalg.solve(A, B, opts)
  opts = opts_of("linalg.solve", opts, { left = true })
  check_matrix("linalg.solve", A, true)
  check_tensor("linalg.solve", B, "B")
  if opts.left == false then
    if B:dim() < 2 then raisef("linalg.solve: left=false needs B to be a matrix, got shape %s", mg.shapestr(B)) end
    return mT(prim("linalg.solve", "solve", mT(A), mT(B)))
  end
  if is_vector_rhs(A, B) then return prim("linalg.solve", "solve", A, B:unsqueeze(-1)):squeeze(-1) end
  return prim("linalg.solve", "solve", A, B)
end

-- inv(A)
function linalg.inv(A)
  check_matrix("linalg.inv", A, true)
  return via("linalg.inv", "linalg.solve", P.solve, A, eye_like(A))
end

-- slogdet(A): sign and log|det A|.
function linalg.slogdet(A)
  check_matrix("linalg.slogdet", A, true)
  return prim("linalg.slogdet", "slogdet", A)
end

-- det(A) = sign * exp(log|det A|).
function linalg.det(A)
  check_matrix("linalg.det", A, true)
  local s, l = prim("linalg.det", "slogdet", A)
  return s * l:exp()
end

-- lstsq(A, B): the least-squares solution of A X = B for A of full rank (minimum norm when
-- A is wide), through QR; and the residual sums of squares (..., k) when A is tall, else an
-- empty tensor.
function linalg.lstsq(A, B)
  check_matrix("linalg.lstsq", A)
  check_tensor("linalg.lstsq", B, "B")
  local vec = B:dim() == A:dim() - 1
  local Bm = vec and B:unsqueeze(-1) or B
  if Bm:dim() < 2 or Bm:size(-2) ~= A:size(-2) then
    raisef("linalg.lstsq: shapes %s and %s do not fit (%d rows ~= %d)", mg.shapestr(A), mg.shapestr(B),
           Bm:size(-2), A:size(-2))
  end
  local m, n = A:size(-2), A:size(-1)
  -- rank-deficient: a diagonal entry of R at or below eps * max(m, n) * the largest one
  local function full_rank(R)
    if R:numel() == 0 then return true end
    return mg.no_grad(function()
      local d = (R * eye_like(R)):sum(-1):abs()
      return (d:min(-1) - d:max(-1) * (EPS[A.dtype] * math.max(m, n))):min():item() > 0
    end)
  end
  local function run()
    local Q, R = P.qr(m >= n and A or mT(A), false)
    if not full_rank(R) then error("singular", 0) end
    if m >= n then return P.solve(R, mT(Q):matmul(Bm)) end
    return Q:matmul(P.solve(mT(R), Bm))
  end
  local ok, X = pcall(run)
  if not ok then
    if tostring(X):find("singular", 1, true) then
      raisef("linalg.lstsq: A of shape %s does not have full rank (use linalg.pinv(A) @ B)", mg.shapestr(A))
    end
    raise(tostring(X))
  end
  local res
  if m > n then
    local r = A:matmul(X) - Bm
    res = (r * r):sum(-2)
    if vec then res = res:squeeze(-1) end
  else
    res = mg.zeros(0, { dtype = A.dtype })
  end
  if vec then X = X:squeeze(-1) end
  return X, res
end

---------------------------------------------------------------- norms

local function is_inf(p) return p == math.huge or p == -math.huge end

-- vector_norm(x [, ord=2 [, {dim=, keepdim=false}]]): over every element, or over 'dim'
-- (a number or an array of numbers). ord: any p > 0, 0 (count of non-zeros), inf, -inf.
function linalg.vector_norm(x, ord, opts)
  check_tensor("linalg.vector_norm", x, "x")
  opts = opts_of("linalg.vector_norm", opts, { dim = true, keepdim = true })
  ord = ord or 2
  if type(ord) ~= "number" or ord ~= ord then
    raisef("linalg.vector_norm: ord must be a number, got %s", describe(ord))
  end
  local dim, keep = opts.dim, opts.keepdim == true
  if type(dim) == "number" then dim = { dim } end
  if dim == nil then
    dim = {}
    for i = 1, x:dim() do dim[i] = i end
  end
  if x:dim() == 0 then x, dim = x:reshape(1), { 1 } end
  if ord == 2 then return x:norm(dim, keep) end
  local a = x:abs()
  if ord == math.huge then return a:max(dim, keep) end
  if ord == -math.huge then return a:min(dim, keep) end
  if ord == 0 then return mg.ne(x, 0):sum(dim, keep) end
  if ord == 1 then return a:sum(dim, keep) end
  if ord < 0 then raisef("linalg.vector_norm: ord %g is not a norm (use 0, inf, -inf or p > 0)", ord) end
  return (a ^ ord):sum(dim, keep) ^ (1 / ord)
end

local MATRIX_ORDS = "\"fro\", \"nuc\", 2, -2, 1, -1, inf or -inf"

-- matrix_norm(A [, ord="fro" [, {keepdim=false}]]) over the last two dims.
function linalg.matrix_norm(A, ord, opts)
  opts = opts_of("linalg.matrix_norm", opts, { keepdim = true })
  check_matrix("linalg.matrix_norm", A)
  ord = ord or "fro"
  local keep = opts.keepdim == true
  local function kd(t) if keep then return t:unsqueeze(-1):unsqueeze(-1) end return t end
  if ord == "fro" then return A:norm({ -2, -1 }, keep) end
  local known = ord == "nuc" or ord == 2 or ord == -2 or ord == 1 or ord == -1 or is_inf(ord)
  if not known then raisef("linalg.matrix_norm: ord must be %s, got %s", MATRIX_ORDS, tostring(ord)) end
  if A:size(-1) == 0 or A:size(-2) == 0 then
    if ord == "nuc" then return kd(mg.zeros(A:shape(), { dtype = A.dtype }):sum({ -2, -1 })) end
    raisef("linalg.matrix_norm: ord %s is not defined for empty matrices (shape %s)", tostring(ord), mg.shapestr(A))
  end
  if ord == "nuc" then return kd(prim("linalg.matrix_norm", "svd", A, false, false):sum(-1)) end
  if ord == 2 then return kd(prim("linalg.matrix_norm", "svd", A, false, false):select(-1, 1)) end
  if ord == -2 then return kd(prim("linalg.matrix_norm", "svd", A, false, false):select(-1, -1)) end
  local a = A:abs()
  if ord == 1 then return a:sum(-2, keep):max({ -1 }, keep) end
  if ord == -1 then return a:sum(-2, keep):min({ -1 }, keep) end
  if ord == math.huge then return a:sum(-1, keep):max({ keep and -2 or -1 }, keep) end
  return a:sum(-1, keep):min({ keep and -2 or -1 }, keep)
end

-- cond(A [, p=2]): ||A|| ||A^-1|| in the norm p; for 2 and -2 the ratio of singular values.
function linalg.cond(A, p)
  check_matrix("linalg.cond", A)
  p = p or 2
  if p == 2 or p == -2 then
    local S = prim("linalg.cond", "svd", A, false, false)
    local hi, lo = S:select(-1, 1), S:select(-1, -1)
    if p == 2 then return hi / lo end
    return lo / hi
  end
  check_matrix("linalg.cond", A, true)
  local inv = via("linalg.cond", "linalg.solve", P.solve, A, eye_like(A))
  return linalg.matrix_norm(A, p) * linalg.matrix_norm(inv, p)
end

---------------------------------------------------------------- functions of matrices

-- pinv(A [, {rtol=, atol=0}]): the pseudo-inverse from the SVD; singular values at most
-- max(atol, rtol * largest) count as zero (rtol defaults to eps * max(m, n) when atol is not
-- given, else 0).
function linalg.pinv(A, opts)
  opts = opts_of("linalg.pinv", opts, { rtol = true, atol = true })
  check_matrix("linalg.pinv", A)
  local m, n = A:size(-2), A:size(-1)
  local U, S, Vh = prim("linalg.pinv", "svd", A, false, true)
  if S:size(-1) == 0 then return mg.zeros(mT(A):shape(), { dtype = A.dtype }) end
  local atol = opts.atol or 0
  local rtol = opts.rtol or (opts.atol and 0 or EPS[A.dtype] * math.max(m, n))
  local keep = mg.no_grad(function()
    local cut = mg.maximum(S:select(-1, 1):unsqueeze(-1) * rtol, atol)
    return mg.gt(S, cut)
  end)
  local safe = mg.where(keep, S, 1)                  -- no 1/0 even in the branch not taken
  local Sinv = mg.where(keep, 1 / safe, 0)
  return (mT(Vh) * Sinv:unsqueeze(-2)):matmul(mT(U))
end

-- matrix_power(A, k): A^k for an integer k (k < 0: inv(A)^-k; k = 0: the identity).
function linalg.matrix_power(A, k)
  check_matrix("linalg.matrix_power", A, true)
  if math.type(k) ~= "integer" then
    if type(k) == "number" and k == math.floor(k) then k = math.tointeger(k)
    else raisef("linalg.matrix_power: k must be an integer, got %s", describe(k)) end
  end
  if k == 0 then return eye_like(A):expand(A:shape()):contiguous() end
  if k < 0 then
    A = via("linalg.matrix_power", "linalg.solve", P.solve, A, eye_like(A))
    k = -k
  end
  local result, base = nil, A
  while k > 0 do
    if k % 2 == 1 then result = result and result:matmul(base) or base end
    k = k // 2
    if k > 0 then base = base:matmul(base) end
  end
  return result
end

-- matrix_exp(A): exp(A) by scaling and squaring: a Taylor polynomial (Horner, degree 18 in
-- float64, 10 in float32) of A / 2^s with ||A / 2^s||_1 <= 1, then s squarings.
function linalg.matrix_exp(A)
  check_matrix("linalg.matrix_exp", A, true)
  if A:numel() == 0 then return A:clone() end
  local norm = mg.no_grad(function() return A:abs():sum(-2):max():item() end)
  local s = 0
  if norm == norm and norm > 1 and norm < math.huge then s = math.ceil(math.log(norm, 2)) end
  local q = A.dtype == "float64" and 18 or 10
  local I = eye_like(A)
  local X = s > 0 and A / (2 ^ s) or A
  local E = I + X / q
  for j = q - 1, 1, -1 do E = I + X:matmul(E) / j end
  for _ = 1, s do E = E:matmul(E) end
  return E
end

ck.publish(linalg)       -- errors at the user's line, tracebacks from the public function

return linalg
