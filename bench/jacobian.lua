-- jacobian.lua - batch_jacobian of one RNN-like step h' = relu(h) @ W + b (moongrad side;
-- the PyTorch side is jacobian.py, which checks its results against the ones saved here).
-- For each (B, N): W (N, N), b (N), h (B, N) float32 from a fixed seed are saved as .npy
-- in DIR together with moongrad's Jacobian J (B, N, N), J[k, i, j] = dh'[k, i] / dh[k, j].
-- Timed: mg.batch_jacobian(f, h), i.e. the forward pass under a fresh tape plus the
-- vectorized batch Jacobian, as vmap(jacrev(f))(h) does on the PyTorch side.
-- Usage: LUA_CPATH='build/lua/?.so' lua5.4 bench/jacobian.lua DIR [B,N ...]
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local B = require "benchlib"
local mg = B.moongrad()

local BENCH = "jacobian"
local USAGE = "usage: lua5.4 bench/jacobian.lua DIR [B,N ...]  (default sizes 1,100 32,100 32,512 8,1024)"
local dir, sizes = B.args("jacobian.lua", USAGE, "size", "B,N with positive integers", function(a)
  local b, n = a:match("^(%d+),(%d+)$")
  if b and tonumber(b) >= 1 and tonumber(n) >= 1 then return { tonumber(b), tonumber(n) } end
end, { { 1, 100 }, { 32, 100 }, { 32, 512 }, { 8, 1024 } })

B.blas_meta(mg, BENCH)

-- J[k, i, j] = W[j, i] * relu'(h[k, j]), computed without autodiff: the reference the
-- timed result must match within 1e-5 relative (it is exact in practice).
local function closed_form(W, h)
  local mask = mg.gt(h, 0):unsqueeze(2)              -- (B, 1, N)
  return W:transpose(1, 2):unsqueeze(1) * mask        -- (1, N, N) * (B, 1, N)
end

for _, s in ipairs(sizes) do
  local nb, n = s[1], s[2]
  local case = string.format("%d,%d", nb, n)
  mg.manual_seed(1000 * nb + n)
  local W = mg.randn(n, n) / math.sqrt(n)
  local b = mg.randn(n) * 0.1
  local h = mg.randn(nb, n)
  local function f(x) return mg.matmul(mg.relu(x), W) + b end

  local J = mg.batch_jacobian(f, h)
  local shape = J:shape()
  assert(#shape == 3 and shape[1] == nb and shape[2] == n and shape[3] == n,
         "jacobian.lua: batch_jacobian returned shape " .. mg.shapestr(J))
  local ref = closed_form(W, h)
  local err = (J - ref):abs():max():item() / ref:abs():max():item()
  if not (err <= 1e-5) then
    error(string.format("jacobian.lua: (%s) differs from W^T relu'(h) by %g relative", case, err), 0)
  end

  local prefix = string.format("%s/%d_%d_", dir, nb, n)
  mg.save(W, prefix .. "W.npy"); mg.save(b, prefix .. "b.npy")
  mg.save(h, prefix .. "h.npy"); mg.save(J, prefix .. "J.npy")

  local big = nb * n * n > 1e6
  local m = B.measure(function() return mg.batch_jacobian(f, h) end,
                      { reps = big and 5 or 11, min_time = big and 0 or 0.05,
                        warmup = big and 3 or 1 })
  B.result(BENCH, case, "moongrad", m)
  B.meta(BENCH, "bytes " .. case, nb * n * n * 4)   -- the float32 Jacobian every side must write
  B.log("moongrad  (%s) batch_jacobian %10.4f ms CPU, %10.4f ms wall", case, m.cpu * 1e3,
        m.wall * 1e3)
  J = nil
  collectgarbage()
end
