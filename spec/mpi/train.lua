-- train.lua: data-parallel training of a small LSTM for N steps (each rank its share of the
-- batch, mpi.average_gradients, SGD) equals single-process training on the whole batch: the
-- mean over ranks of per-rank mean losses' gradients is the full batch's when it splits evenly.
-- Float32 to 1e-6, float64 to 1e-12. Also mpi.broadcast_parameters: rank 1's perturbed
-- weights become rank 0's.
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local mg = require "moongrad"
local mpi = require "moongrad.mpi"
local C = require "common"
local nn, optim = mg.nn, mg.optim
local r, n = mpi.rank(), mpi.size()
local STEPS, B, T, IN, UNITS = 5, 4 * n, 6, 3, 5

local function model(dt)
  mg.manual_seed(7)
  local rnn = nn.RNN(nn.LSTMCell(IN, UNITS, { dtype = dt }))
  local head = nn.Dense(UNITS, 1, { dtype = dt })
  local params = {}
  for _, p in ipairs(rnn:parameters()) do params[#params + 1] = p end
  for _, p in ipairs(head:parameters()) do params[#params + 1] = p end
  return function(x) return head(rnn(x)) end, params
end

local function train(dt, x, y, distributed)
  local f, params = model(dt)
  if distributed then
    if r ~= 0 then for _, p in ipairs(params) do p:assign_add(1) end end   -- differ first
    local before = mpi._stats.bcast
    mpi.broadcast_parameters(params, 0)
    assert(mpi._stats.bcast == before + 1, "broadcast_parameters: one fused broadcast")
    local _, ref = model(dt)
    for i, p in ipairs(params) do C.equal(p, ref[i], dt .. " broadcast_parameters " .. i) end
    x, y = mpi.shard(x), mpi.shard(y)
  end
  local opt = optim.SGD(params, { lr = 0.5 })
  local losses = {}
  for step = 1, STEPS do
    local tape = mg.GradientTape()
    local loss = nn.mse(f(x), y)
    local grads = tape:gradient(loss, params)
    if distributed then
      local before = mpi._stats.allreduce
      grads = mpi.average_gradients(grads)
      assert(mpi._stats.allreduce == before + 1, "average_gradients: one fused allreduce for " .. #params .. " gradients")
    end
    opt:step(grads)
    losses[step] = loss:item()
  end
  return params, losses
end

for _, dt in ipairs { "float32", "float64" } do
  mg.manual_seed(11)
  local x = mg.randn({ B, T, IN }, { dtype = dt })
  local y = mg.randn({ B, 1 }, { dtype = dt })
  local serial = train(dt, x, y, false)
  local dist = train(dt, x, y, true)
  local tol = dt == "float32" and 1e-6 or 1e-12
  local moved = 0
  local _, init = model(dt)
  for i = 1, #serial do
    C.equal(dist[i], serial[i], dt .. " parameter " .. i .. " after " .. STEPS .. " steps", tol)
    moved = math.max(moved, C.maxdiff(serial[i], init[i]))
  end
  assert(moved > 1e-3, "training moved the parameters (" .. moved .. ")")
end
-- nn.fit{distributed = true} equals nn.fit on the whole data in one process: 10 samples in
-- batches of 4 (the last of 2) and of 3 (the last of 1: one rank gets no rows), shuffled
for _, dt in ipairs { "float32", "float64" } do
  for _, bs in ipairs { 4, 3 } do
    mg.manual_seed(5)
    local x = mg.randn({ 10, T, IN }, { dtype = dt })
    local y = mg.randn({ 10, 1 }, { dtype = dt })
    local function fitted(distributed)
      mg.manual_seed(7 + (distributed and r or 0))          -- ranks start differently
      local m = nn.Sequential { nn.RNN(nn.LSTMCell(IN, UNITS, { dtype = dt })), nn.Dense(UNITS, 1, { dtype = dt }) }
      local h = nn.fit(m, x, y, { epochs = 2, batch_size = bs, loss = "mse", optimizer = "sgd", seed = 3,
                                  verbose = 0, distributed = distributed })
      return m:parameters(), h
    end
    local p1, h1 = fitted(false)
    local p2, h2 = fitted(true)
    local tol = dt == "float32" and 1e-6 or 1e-12
    for i = 1, #p1 do C.equal(p2[i], p1[i], dt .. " nn.fit distributed, batch " .. bs .. ", parameter " .. i, tol) end
    for e = 1, 2 do
      assert(math.abs(h1.loss[e] - h2.loss[e]) <= tol * 10, dt .. " nn.fit history: " .. h1.loss[e] .. " vs " .. h2.loss[e])
    end
  end
end
C.done("train")
