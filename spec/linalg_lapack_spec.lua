-- mg.linalg (runtime/lapack.c and bindings/moongrad/linalg.lua): values against hand results
-- and against torch.linalg / NumPy (spec/linalg_ref.py run by /usr/bin/python3, data through
-- .npy; vectors compared up to each one's sign), batched, strided, transposed and expanded
-- inputs, float32, empty matrices, gradients by mg.gradcheck in float64 (reverse and forward
-- mode, second order for some) and errors by message.
local mg = require "moongrad"
local support = require "support"
local L = mg.linalg

local F64, randn, assert_close, raises = support.F64, support.randn, support.assert_close, support.raises
local inf = math.huge

local function T(t) return mg.tensor(t, F64) end

local function gradcheck(f, inputs, opts)
  assert.is_true(mg.gradcheck(f, inputs, opts))
end

-- A well-conditioned random square batch (..., n, n).
local function wellcond(...)
  local sh = { ... }
  local n = sh[#sh]
  return randn(sh) * 0.3 + mg.eye(n, F64) * 2
end

local function spd(n)
  local X = randn(n, n)
  return X:matmul(X:transpose()) + mg.eye(n, F64) * n
end

local function mT(A) return A:transpose(-2, -1) end

---------------------------------------------------------------- hand results

describe("mg.linalg by hand", function()
  it("det, slogdet, inv and solve of a 2x2", function()
    local A = T { { 1, 2 }, { 3, 4 } }
    assert_close(T(-2), L.det(A), 1e-12)
    local s, l = L.slogdet(A)
    assert.are.equal(-1, s:item())
    assert_close(T(math.log(2)), l, 1e-12)
    assert_close(T { { -2, 1 }, { 1.5, -0.5 } }, L.inv(A), 1e-12)
    assert_close(T { 0, 0.5 }, L.solve(A, T { 1, 2 }), 1e-12)      -- a vector right-hand side
    assert_close(T { { 1 }, { 0 } }, L.solve(A, T { { 1 }, { 3 } }), 1e-12)
    assert_close(T { { 1, 0 } }, L.solve(A, T { { 1, 2 } }, { left = false }), 1e-12)
  end)

  it("cholesky, eigh, svdvals, qr of small matrices", function()
    assert_close(T { { 2, 0 }, { 1, math.sqrt(2) } }, L.cholesky(T { { 4, 2 }, { 2, 3 } }), 1e-12)
    assert_close(T { { 2, 1 }, { 0, math.sqrt(2) } }, L.cholesky(T { { 4, 2 }, { 2, 3 } }, { upper = true }), 1e-12)
    local w, V = L.eigh(T { { 2, 1 }, { 1, 2 } })
    assert_close(T { 1, 3 }, w, 1e-12)
    local r = 1 / math.sqrt(2)
    assert_close(T { { r, r }, { r, r } }, V:abs(), 1e-12)
    assert_close(T { 1, 3 }, L.eigvalsh(T { { 2, 7 }, { 1, 2 } }), 1e-12)       -- lower triangle
    assert_close(T { 1, 3 }, L.eigvalsh(T { { 2, 1 }, { 7, 2 } }, { UPLO = "U" }), 1e-12)
    assert_close(T { 4, 3 }, L.svdvals(T { { 3, 0 }, { 0, -4 } }), 1e-12)
    local Q, R = L.qr(T { { 3 }, { 4 } })
    assert_close(T { { 5 } }, R:abs(), 1e-12)
    assert_close(T { { 0.6 }, { 0.8 } }, Q:abs(), 1e-12)
  end)

  it("eig of a rotation: +-i, vectors as real and imaginary parts", function()
    local wr, wi, Vr, Vi = L.eig(T { { 0, -1 }, { 1, 0 } })
    assert_close(T { 0, 0 }, wr, 1e-12)
    assert_close(T { 1, -1 }, wi, 1e-12)
    local r = 1 / math.sqrt(2)
    assert_close(T { { r, r }, { 0, 0 } }, Vr, 1e-12)
    assert_close(T { { 0, 0 }, { -r, r } }, Vi, 1e-12)
    local er, ei = L.eigvals(T { { 2, 0 }, { 0, -3 } })
    assert_close(T { 2, -3 }, er, 1e-12)
    assert_close(T { 0, 0 }, ei, 0)
  end)

  it("norms, cond, powers, exponential", function()
    local A = T { { 1, -2 }, { 3, 4 } }
    assert_close(T(math.sqrt(30)), L.matrix_norm(A), 1e-12)
    assert_close(T(6), L.matrix_norm(A, 1), 1e-12)
    assert_close(T(4), L.matrix_norm(A, -1), 1e-12)
    assert_close(T(7), L.matrix_norm(A, inf), 1e-12)
    assert_close(T(3), L.matrix_norm(A, -inf), 1e-12)
    assert_close(T { { 7 } }, L.matrix_norm(A, inf, { keepdim = true }), 1e-12)
    assert_close(T(7), L.matrix_norm(T { { 3, 0 }, { 0, -4 } }, "nuc"), 1e-12)
    assert_close(T(4), L.matrix_norm(T { { 3, 0 }, { 0, -4 } }, 2), 1e-12)
    assert_close(T(3), L.matrix_norm(T { { 3, 0 }, { 0, -4 } }, -2), 1e-12)
    assert_close(T(4 / 3), L.cond(T { { 3, 0 }, { 0, -4 } }), 1e-12)
    local x = T { 3, -4, 0 }
    assert_close(T(5), L.vector_norm(x), 1e-12)
    assert_close(T(7), L.vector_norm(x, 1), 1e-12)
    assert_close(T(4), L.vector_norm(x, inf), 1e-12)
    assert_close(T(0), L.vector_norm(x, -inf), 1e-12)
    assert_close(T(2), L.vector_norm(x, 0), 1e-12)
    assert_close(T { { -35, -30 }, { 45, 10 } }, L.matrix_power(A, 3), 1e-12)  -- A^3 by hand
    assert_close(mg.eye(2, F64), L.matrix_power(A, 0), 0)
    assert_close(L.inv(A):matmul(L.inv(A)), L.matrix_power(A, -2), 1e-12)
    local t = 0.7
    assert_close(T { { math.cos(t), math.sin(t) }, { -math.sin(t), math.cos(t) } },
                 L.matrix_exp(T { { 0, t }, { -t, 0 } }), 1e-14)
    assert_close(T { { math.exp(5), 0 }, { 0, math.exp(-3) } }, L.matrix_exp(T { { 5, 0 }, { 0, -3 } }), 1e-11 * math.exp(5))
  end)

  it("pinv and lstsq of a tall matrix solve the normal equations", function()
    local A, b = T { { 1, 0 }, { 0, 1 }, { 1, 1 } }, T { 1, 2, 4 }
    local x, res = L.lstsq(A, b)
    -- A^T A = [[2,1],[1,2]], A^T b = (5, 6): x = (4/3, 7/3); residual 1 - 4/3 etc.
    assert_close(T { 4 / 3, 7 / 3 }, x, 1e-12)
    assert_close(T((1 - 4 / 3) ^ 2 + (2 - 7 / 3) ^ 2 + (4 - 11 / 3) ^ 2), res, 1e-12)
    assert_close(L.inv(mT(A):matmul(A)):matmul(mT(A)), L.pinv(A), 1e-12)
  end)
end)

---------------------------------------------------------------- structure checks

describe("mg.linalg decompositions reconstruct their input", function()
  it("qr reduced and complete, tall and wide, batched: Q orthonormal, R upper, QR = A", function()
    for _, sh in ipairs { { 5, 3 }, { 3, 5 }, { 2, 4, 4 }, { 2, 3, 6, 2 } } do
      local A = randn(sh)
      for _, mode in ipairs { "reduced", "complete" } do
        local Q, R = L.qr(A, mode)
        assert_close(A, Q:matmul(R), 1e-12, mode)
        local k = Q:size(-1)
        assert_close(mg.eye(k, F64):expand(mT(Q):matmul(Q):shape()), mT(Q):matmul(Q), 1e-12)
        local mask = mg.zeros(R:size(-2), R:size(-1), F64)       -- below the diagonal
        for i = 1, R:size(-2) do for j = 1, math.min(i - 1, R:size(-1)) do mask:set(1, i, j) end end
        assert.are.equal(0, (R * mask):abs():max():item())
      end
    end
  end)

  it("svd with and without full_matrices; eigh; cholesky; eig satisfies A V = V diag(w)", function()
    local A = randn(2, 5, 3)
    local U, S, Vh = L.svd(A, { full_matrices = false })
    assert_close(A, (U * S:unsqueeze(-2)):matmul(Vh), 1e-12)
    local Uf, Sf, Vhf = L.svd(A)
    assert.are.same({ 2, 5, 5 }, Uf:shape())
    assert.are.same({ 2, 3, 3 }, Vhf:shape())
    assert_close(mg.eye(5, F64):expand(2, 5, 5), mT(Uf):matmul(Uf), 1e-12)
    assert_close(S, Sf, 1e-12)
    local Sy = spd(4)
    local w, V = L.eigh(Sy)
    assert_close(Sy, (V * w:unsqueeze(-2)):matmul(mT(V)), 1e-12)
    local Lc = L.cholesky(Sy)
    assert_close(Sy, Lc:matmul(mT(Lc)), 1e-12)
    local G = randn(5, 5)
    local wr, wi, Vr, Vi = L.eig(G)
    -- (Vr + i Vi)(diag(wr) + i diag(wi)): A Vr = Vr wr - Vi wi, A Vi = Vr wi + Vi wr
    local r, c = wr:unsqueeze(1), wi:unsqueeze(1)
    assert_close(G:matmul(Vr), Vr * r - Vi * c, 1e-12)
    assert_close(G:matmul(Vi), Vr * c + Vi * r, 1e-12)
    assert_close(T { 1, 1, 1, 1, 1 }, (Vr * Vr + Vi * Vi):sum(1), 1e-12)  -- unit norm
  end)
end)

describe("mg.linalg inputs", function()
  it("accepts transposed, strided and expanded inputs (copied to LAPACK's layout)", function()
    local A = wellcond(3, 4, 4)
    local At = mT(A)                                  -- a transposed view
    assert.is_false(At:is_contiguous())
    assert_close(L.det(At:contiguous()), L.det(At), 1e-12)
    assert_close(L.inv(At:contiguous()), L.inv(At), 1e-12)
    local big = randn(4, 8)
    local strided = big:narrow(2, 2, 4)               -- row stride 8
    assert_close(L.svdvals(strided:contiguous()), L.svdvals(strided), 1e-12)
    local one = wellcond(4, 4)
    local ex = one:unsqueeze(1):expand(3, 4, 4)       -- stride 0 along the batch
    local d = L.det(ex)
    assert_close(L.det(one):expand(3), d, 1e-12)
    local Q, R = L.qr(ex)
    assert_close(ex, Q:matmul(R), 1e-12)
    -- solve broadcasts batch dims: (3,4,4) with (4,2), (4,4) with (2,1,4,2)
    local B = randn(4, 2)
    assert_close(mg.stack { L.solve(A[1], B), L.solve(A[2], B), L.solve(A[3], B) }, L.solve(A, B), 1e-12)
    local B2 = randn(2, 1, 4, 2)
    assert.are.same({ 2, 1, 4, 2 }, L.solve(one, B2):shape())
    assert.are.same({ 2, 3, 4, 2 }, L.solve(A, B2):shape())
  end)

  it("float32 in, float32 out, close to float64", function()
    local A = wellcond(3, 3)
    local A32 = A:to("float32")
    for _, f in ipairs { L.det, L.inv, L.svdvals, L.eigvalsh, L.matrix_exp, L.pinv, function(a) return (L.qr(a)) end } do
      local y32, y64 = f(A32), f(A)
      assert.are.equal("float32", y32.dtype)
      assert_close(y64, y32:to("float64"), 1e-5)
    end
    assert.are.equal("float32", L.cholesky(spd(3):to("float32")).dtype)
    assert.are.equal("float64", L.solve(A32, randn(3, 1)).dtype)          -- mixed: promoted
  end)

  it("empty and 0x0 matrices as torch.linalg", function()
    local E = mg.zeros(0, 0, F64)
    assert_close(T(1), L.det(E), 0)
    local s, l = L.slogdet(E)
    assert.are.equal(1, s:item())
    assert.are.equal(0, l:item())
    assert.are.same({ 0, 0 }, L.inv(E):shape())
    assert.are.same({ 0, 0 }, L.cholesky(E):shape())
    assert.are.same({ 0 }, L.eigvalsh(E):shape())
    assert.are.same({ 0, 0 }, L.matrix_exp(E):shape())
    assert.are.same({ 0, 2 }, L.solve(E, mg.zeros(0, 2, F64)):shape())
    assert.are.same({ 0 }, L.det(mg.zeros(0, 3, 3, F64)):shape())
    local Q, R = L.qr(mg.zeros(0, 3, F64))
    assert.are.same({ 0, 0 }, Q:shape())
    assert.are.same({ 0, 3 }, R:shape())
    local Qc, Rc = L.qr(mg.zeros(3, 0, F64), "complete")
    assert_close(mg.eye(3, F64), Qc, 0)
    assert.are.same({ 3, 0 }, Rc:shape())
    assert.are.same({ 0 }, L.svdvals(mg.zeros(2, 0, F64)):shape())
    local U, S, Vh = L.svd(mg.zeros(2, 0, F64))
    assert_close(mg.eye(2, F64), U, 0)
    assert.are.same({ 0 }, S:shape())
    assert.are.same({ 0, 0 }, Vh:shape())
    assert_close(T(0), L.matrix_norm(mg.zeros(2, 0, F64)), 0)
    assert.are.same({ 0, 2 }, L.pinv(mg.zeros(2, 0, F64)):shape())
  end)

  it("a singular matrix: det 0, slogdet (0, -inf)", function()
    local A = T { { 1, 2 }, { 2, 4 } }
    assert.are.equal(0, L.det(A):item())
    local s, l = L.slogdet(A)
    assert.are.equal(0, s:item())
    assert.are.equal(-inf, l:item())
    assert.are.equal(inf, L.cond(T { { 1, 0 }, { 0, 0 } }):item())
  end)
end)

---------------------------------------------------------------- gradients

describe("mg.linalg gradients (gradcheck, float64, reverse and forward mode)", function()
  local function flat(...)
    local parts = {}
    for i, t in ipairs { ... } do parts[i] = t:reshape(-1) end
    return mg.cat(parts)
  end

  -- Column signs fixed by the first row, so that finite differences see a smooth function.
  local function signfix(U) return U * U:narrow(-2, 1, 1):sign() end

  it("qr: tall, square, wide, batched", function()
    for _, sh in ipairs { { 4, 3 }, { 3, 3 }, { 3, 5 }, { 2, 3, 2 } } do
      gradcheck(function(a) local Q, R = L.qr(a) return flat(Q, R) end, randn(sh))
    end
    gradcheck(function(a) local Q, R = L.qr(a, "complete") return flat(Q, R) end, randn(3, 4))
  end)

  it("svd and svdvals (distinct singular values)", function()
    for _, sh in ipairs { { 4, 3 }, { 3, 4 }, { 3, 3 }, { 2, 3, 2 } } do
      gradcheck(function(a)
        local U, S, Vh = L.svd(a, { full_matrices = false })
        return flat(signfix(U), S, mT(signfix(mT(Vh))))
      end, randn(sh))
      gradcheck(L.svdvals, randn(sh))
    end
    -- full_matrices: the gradient through the first min(m, n) columns (reverse mode)
    gradcheck(function(a)
      local U, S, Vh = L.svd(a)
      return (U:narrow(2, 1, 2) * S:unsqueeze(1)):matmul(Vh)
    end, randn(4, 2), { modes = { "rev" } })
  end)

  it("eigh and eigvalsh (distinct eigenvalues) on symmetric inputs", function()
    local function sym(a) return a + mT(a) end
    gradcheck(function(a) local w, V = L.eigh(sym(a)) return flat(w, signfix(V)) end, randn(4, 4))
    gradcheck(function(a) return L.eigvalsh(sym(a)) end, randn(2, 3, 3))
  end)

  it("solve (also broadcast), inv, det, slogdet, cholesky", function()
    gradcheck(L.solve, { wellcond(3, 3), randn(3, 2) })
    gradcheck(L.solve, { wellcond(2, 3, 3), randn(3, 2) })
    gradcheck(L.solve, { wellcond(3, 3), randn(2, 3, 1) })
    gradcheck(L.solve, { wellcond(3, 3), randn(3) })
    gradcheck(L.inv, wellcond(2, 3, 3))
    gradcheck(L.det, randn(2, 3, 3))
    gradcheck(function(a) local _, l = L.slogdet(a) return l end, randn(3, 3))
    gradcheck(function(a) return L.cholesky(a:matmul(mT(a)) + mg.eye(3, F64)) end, randn(3, 3))
    gradcheck(function(a) return L.cholesky(a:matmul(mT(a)) + mg.eye(3, F64), { upper = true }) end, randn(2, 3, 3))
  end)

  it("lstsq, pinv, matrix_power, matrix_exp, the norms, cond", function()
    gradcheck(L.lstsq, { randn(4, 2), randn(4, 3) })
    gradcheck(L.lstsq, { randn(2, 4), randn(2) })
    gradcheck(L.pinv, randn(4, 3))
    gradcheck(L.pinv, randn(2, 5))
    gradcheck(function(a) return L.matrix_power(a, 5) end, randn(3, 3))
    gradcheck(function(a) return L.matrix_power(a, -3) end, wellcond(3, 3))
    gradcheck(L.matrix_exp, randn(3, 3) * 2)          -- ||A||_1 > 1: scaled and squared
    for _, o in ipairs { "fro", "nuc", 2, -2, 1, -1, inf, -inf } do
      gradcheck(function(a) return L.matrix_norm(a, o) end, randn(2, 4, 3))
    end
    for _, o in ipairs { 2, 1, 3, 0.5, inf, -inf } do
      gradcheck(function(a) return L.vector_norm(a, o, { dim = 2 }) end, randn(3, 4))
    end
    gradcheck(L.cond, randn(3, 3))
    gradcheck(function(a) return L.cond(a, "fro") end, wellcond(3, 3))
  end)

  it("second order: det, qr, svdvals, cholesky and solve through nested tapes", function()
    local function grad_of(f) return function(a) return mg.grad(function(x) return f(x):sum() end)(a) end end
    gradcheck(grad_of(L.det), randn(3, 3))
    gradcheck(grad_of(function(x) local Q, R = L.qr(x) return (R * R):sum() + Q:sum() end), randn(4, 3))
    gradcheck(grad_of(L.svdvals), randn(3, 4))
    gradcheck(grad_of(function(x) return L.cholesky(x:matmul(mT(x)) + mg.eye(3, F64)) end), randn(3, 3))
    gradcheck(grad_of(function(x) return L.solve(x, mg.ones(3, 1, F64)) end), wellcond(3, 3))
    assert.is_true(mg.gradcheck(function(a) return mg.hessian(function(x) return L.det(x) end, a) end,
                                randn(2, 2)))
  end)
end)

---------------------------------------------------------------- errors

describe("mg.linalg errors name the function and the shapes", function()
  it("non-square, not a matrix, not a tensor", function()
    raises(function() L.inv(randn(2, 3)) end, "linalg.inv", "square", "(2,3)")
    raises(function() L.det(randn(3)) end, "linalg.det", "matrix", "(3)")
    raises(function() L.eigh(randn(2, 2, 3)) end, "linalg.eigh", "square", "(2,2,3)")
    raises(function() L.cholesky(randn(3, 2)) end, "linalg.cholesky", "square")
    raises(function() L.svd(nil) end, "linalg.svd", "tensor", "nil")
    raises(function() L.qr(randn(2)) end, "linalg.qr", "matrix", "(2)")
    raises(function() L.solve(randn(3, 3), randn(2, 1)) end, "linalg.solve", "(3,3)", "(2,1)")
    raises(function() L.solve(randn(2, 3, 3), randn(4, 3, 1)) end, "linalg.solve", "broadcast")
    raises(function() L.lstsq(randn(3, 2), randn(4)) end, "linalg.lstsq", "(3,2)", "(4)")
  end)

  it("singular matrices where it matters", function()
    local S = T { { 1, 2 }, { 2, 4 } }
    raises(function() L.inv(S) end, "linalg.inv", "singular", "(2,2)")
    raises(function() L.solve(S, T { 1, 1 }) end, "linalg.solve", "singular")
    raises(function() L.matrix_power(S, -1) end, "linalg.matrix_power", "singular")
    raises(function() L.lstsq(T { { 1, 2 }, { 2, 4 }, { 3, 6 } }, T { 1, 2, 3 }) end, "linalg.lstsq",
           "(3,2)", "full rank")
    local B = mg.stack { T { { 1, 0 }, { 0, 1 } }, S }
    raises(function() L.inv(B) end, "linalg.inv", "singular", "matrix 2 of the batch", "(2,2,2)")
  end)

  it("cholesky names the failing leading minor", function()
    raises(function() L.cholesky(T { { 1, 2 }, { 2, 1 } }) end, "linalg.cholesky", "positive definite",
           "minor of order 2")
    raises(function() L.cholesky(T { { 4, 0, 0 }, { 0, 1, 0 }, { 0, 0, -1 } }) end, "minor of order 3")
  end)

  it("bad options and orders", function()
    raises(function() L.qr(randn(2, 2), "full") end, "linalg.qr", "mode", "full")
    raises(function() L.svd(randn(2, 2), { full = true }) end, "linalg.svd", "unknown option", "full")
    raises(function() L.matrix_norm(randn(2, 2), 3) end, "linalg.matrix_norm", "ord", "3")
    raises(function() L.matrix_norm(mg.zeros(0, 2), 2) end, "linalg.matrix_norm", "empty")
    raises(function() L.vector_norm(randn(2), -1) end, "linalg.vector_norm", "-1")
    raises(function() L.matrix_power(randn(2, 2), 1.5) end, "linalg.matrix_power", "integer")
    raises(function() L.eigh(randn(2, 2), { UPLO = "X" }) end, "linalg.eigh", "UPLO")
  end)

  it("derivatives that are not defined say so", function()
    raises(function() mg.grad(function(a) return (L.eig(a)):sum() end)(randn(2, 2)) end,
           "linalg.eig", "not differentiable")
    raises(function() mg.grad(function(a) local Q = L.qr(a, "complete") return Q:sum() end)(randn(3, 2)) end,
           "linalg.qr", "complete")
    raises(function() mg.jacobian(function(a) return (L.svd(a)) end, randn(3, 2), { mode = "fwd" }) end,
           "linalg.svd", "full_matrices")
  end)
end)

---------------------------------------------------------------- torch.linalg

local PY = support.PYTHON
if not support.python_can_import("torch, numpy") then
  describe("mg.linalg against torch.linalg", function() pending("needs " .. PY .. " with torch and numpy") end)
  return
end

describe("mg.linalg against torch.linalg (float64)", function()
  local dir
  local SCRIPT = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/linalg_ref.py"
  local cases, inputs = {}, {}

  -- Register 'case' with its inputs; torch runs every case once, in setup.
  local function case(name, ...) cases[#cases + 1] = name; inputs[name] = { ... } end
  local function out(name, j) return mg.load(dir .. "/out_" .. name .. "_" .. (j - 1) .. ".npy") end

  mg.manual_seed(13)
  local A43, A35, Sq, Bt = randn(4, 3), randn(3, 5), wellcond(4, 4), wellcond(2, 3, 3)
  local Sym = randn(2, 4, 4); Sym = Sym + mT(Sym)
  local Spd, G = spd(4), randn(5, 5)
  case("qr_reduced", A43); case("qr_complete", A35); case("svd", A43); case("svd_full", A35)
  case("svdvals", Bt); case("eigh", Sym); case("eigvalsh", Sym); case("eigvals", G)
  case("solve", Bt, randn(3, 2)); case("inv", Bt); case("det", Bt); case("slogdet", randn(3, 3))
  case("cholesky", Spd); case("lstsq", A43, randn(4, 2)); case("pinv", A35)
  case("matrix_exp", randn(3, 3) * 3); case("matrix_power3", Sq); case("matrix_power_m2", Sq)
  case("matrix_norms", randn(2, 3, 4)); case("vector_norms", randn(3, 4)); case("vector_norm_dim", randn(2, 3, 4))
  case("cond", Sq); case("grad_svdvals", A35); case("grad_det", Bt); case("grad_eigh", Sym)

  setup(function()
    dir = support.tmpdir()
    for _, name in ipairs(cases) do
      for i, t in ipairs(inputs[name]) do mg.save(t:contiguous(), dir .. "/" .. name .. "_" .. (i - 1) .. ".npy") end
    end
    local log = dir .. "/stderr.txt"
    local ok = os.execute(string.format("%s %s %s %s 2>%s", PY, SCRIPT, dir, table.concat(cases, " "), log))
    if not ok then error("linalg_ref.py failed:\n" .. support.read_file(log)) end
  end)
  teardown(function() support.rmtree(dir) end)

  local function input(name, i) return inputs[name][i or 1] end

  -- Columns of 'X' (..., m, k) with the signs that best match 'ref'; 'Y' (rows) flipped alike.
  local function align(X, ref, Y)
    local s = (X * ref):sum(-2, true):sign()
    return X * s, Y and Y * mT(s)
  end

  it("qr (reduced, complete), svd (reduced, full), svdvals: up to signs", function()
    for _, name in ipairs { "qr_reduced", "qr_complete" } do
      local Q, R = L.qr(input(name), name == "qr_complete" and "complete" or "reduced")
      local Qa, Ra = align(Q, out(name, 1), R)
      assert_close(out(name, 1), Qa, 1e-12, name)
      assert_close(out(name, 2), Ra, 1e-12, name)
    end
    for _, name in ipairs { "svd", "svd_full" } do
      local U, S, Vh = L.svd(input(name), { full_matrices = name == "svd_full" })
      local k = S:size(-1)
      local Ua, Vha = align(U:narrow(-1, 1, k), out(name, 1):narrow(-1, 1, k), Vh:narrow(-2, 1, k))
      assert_close(out(name, 1):narrow(-1, 1, k), Ua, 1e-12, name)
      assert_close(out(name, 2), S, 1e-12, name)
      assert_close(out(name, 3):narrow(-2, 1, k), Vha, 1e-12, name)
    end
    assert_close(out("svdvals", 1), L.svdvals(input "svdvals"), 1e-12)
  end)

  it("eigh, eigvalsh, eigvals (NumPy, sorted)", function()
    local w, V = L.eigh(input "eigh")
    assert_close(out("eigh", 1), w, 1e-12)
    assert_close(out("eigh", 2), (align(V, out("eigh", 2))), 1e-12)
    assert_close(out("eigvalsh", 1), L.eigvalsh(input "eigvalsh"), 1e-12)
    local wr, wi = L.eigvals(input "eigvals")
    local pairs_ = {}
    for i = 1, wr:size(1) do pairs_[i] = { wr:get(i), wi:get(i) } end
    table.sort(pairs_, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
    local re, im = out("eigvals", 1), out("eigvals", 2)
    for i, p in ipairs(pairs_) do
      assert.is_near(re:get(i), p[1], 1e-10)
      assert.is_near(im:get(i), p[2], 1e-10)
    end
  end)

  it("solve, inv, det, slogdet, cholesky, lstsq, pinv", function()
    assert_close(out("solve", 1), L.solve(input("solve", 1), input("solve", 2)), 1e-12)
    assert_close(out("inv", 1), L.inv(input "inv"), 1e-12)
    assert_close(out("det", 1), L.det(input "det"), 1e-12)
    local s, l = L.slogdet(input "slogdet")
    assert_close(out("slogdet", 1), s, 0)
    assert_close(out("slogdet", 2), l, 1e-12)
    assert_close(out("cholesky", 1), L.cholesky(input "cholesky"), 1e-12)
    assert_close(out("lstsq", 1), (L.lstsq(input("lstsq", 1), input("lstsq", 2))), 1e-12)
    assert_close(out("pinv", 1), L.pinv(input "pinv"), 1e-12)
  end)

  it("matrix_exp, matrix_power, matrix_norm, vector_norm, cond", function()
    assert_close(out("matrix_exp", 1), L.matrix_exp(input "matrix_exp"), 1e-9)
    assert_close(out("matrix_power3", 1), L.matrix_power(input "matrix_power3", 3), 1e-12)
    assert_close(out("matrix_power_m2", 1), L.matrix_power(input "matrix_power_m2", -2), 1e-12)
    for j, o in ipairs { "fro", "nuc", 2, -2, 1, -1, inf, -inf } do
      assert_close(out("matrix_norms", j), L.matrix_norm(input "matrix_norms", o), 1e-12, tostring(o))
    end
    for j, o in ipairs { 2, 1, 3, 0.5, 0, inf, -inf } do
      assert_close(out("vector_norms", j), L.vector_norm(input "vector_norms", o), 1e-12, tostring(o))
    end
    assert_close(out("vector_norm_dim", 1), L.vector_norm(input "vector_norm_dim", 3, { dim = { 1, 3 }, keepdim = true }), 1e-12)
    for j, p in ipairs { 2, -2, "fro", "nuc", 1, inf } do
      assert_close(out("cond", j), L.cond(input "cond", p), 1e-11, tostring(p))
    end
  end)

  it("gradients equal torch.autograd's: svdvals, det, eigh", function()
    assert_close(out("grad_svdvals", 1), mg.grad(function(a) return L.svdvals(a):sum() end)(input "grad_svdvals"), 1e-12)
    assert_close(out("grad_det", 1), mg.grad(function(a) return L.det(a):sum() end)(input "grad_det"), 1e-12)
    local g = mg.grad(function(a) local w, V = L.eigh(a) return w:sum() + (V ^ 4):sum() end)(input "grad_eigh")
    assert_close(out("grad_eigh", 1), g, 1e-10)
  end)
end)
