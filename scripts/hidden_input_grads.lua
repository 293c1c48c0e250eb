-- hidden_input_grads.lua (seed 003): the Jacobians of an RNN's hidden states with respect
-- to its inputs, for SimpleRNN and LSTM (hidden state h and cell state c).
--
-- The seed promises dh_t/dx_t of shape (batch, time, units, input) but its code cannot give
-- it: tape.gradient(h_t, inputs) sums over the units, so each step yields (batch, input) and
-- the stack is (batch, time, input). Here one call
--     tape:batch_jacobian(H, {x_1, ..., x_T}),   H = stack(h_1..h_T) (B, T, units)
-- gives every block dh_t/dx_s at once (T Jacobians of shape (B, T, units, input), one per
-- source x_s); dh_t/dx_t is its diagonal, of the promised shape. The blocks are
-- cross-checked against one batch_jacobian(h_t, {x_1..x_T}) call per t, against a loop of
-- tape:gradient calls (one per unit) for t = T, against causality (dh_t/dx_s = 0 for s > t),
-- and against what the seed's code computes (the sum over units). Heatmaps show sample 1's
-- full block matrix and the norm of each block.
--
--   moongrad scripts/hidden_input_grads.lua [--out out] [--batch 2] [--steps 5] [--input 10] [--units 32]
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local nn, plot = mg.nn, mg.plot

local opt, out = common.setup(arg, "hidden_input_grads.lua",
  "seed 003: dh_t/dx_s Jacobian blocks of SimpleRNN and LSTM (h and c), shapes, cross-checks and heatmaps", 3, {
  common.opt.batch(2), common.opt.steps(5), common.opt.input(10), common.opt.units(32),  -- the seed's sizes
  { "dtype", "float64", "float32 or float64", { "float32", "float64" } },
})
local B, T, I, U = opt.batch, opt.steps, opt.input, opt.units
local DT = { dtype = opt.dtype }
local tol = opt.dtype == "float64" and 1e-12 or 1e-5       -- agreement expected of the cross-checks

-- Inputs as T separate (B, I) tensors, so each x_s is a tensor the recurrence used (a
-- source), and the (B, T, I) sequence built from them under the tape.
local xs = {}
for s = 1, T do xs[s] = mg.randn(B, I, DT) end

-- The states of one layer over 'x': an array of cases { name, states h_1..h_T }.
local function run(kind)
  local cell = nn[kind .. "Cell"](I, U, DT)
  local rnn = nn.RNN(cell, { return_sequences = true })
  local tape = mg.GradientTape { persistent = true }
  tape:watch(xs)
  local tr = rnn:trace(mg.stack(xs, 2))
  local cases = { { kind .. " h", tr.h } }
  if tr.c then cases[2] = { kind .. " c", tr.c } end
  return tape, cases
end

local function slug(name) return (name:gsub(" ", "_"):lower()) end

-- Everything about one state sequence 'st' (st[1..T]) on 'tape'.
local function study(tape, name, st)
  local v = name:sub(-1)                                     -- "h" or "c", for the messages
  local seq = {}
  for t = 1, T do seq[t] = st[t] end
  local H = mg.stack(seq, 2)                                 -- (B, T, U)
  local blocks = tape:batch_jacobian(H, xs)                  -- T tensors (B, T, U, I): [s][b, t]
  common.check(#blocks == T, "%s: batch_jacobian returned %d blocks, expected %d", name, #blocks, T)
  print(string.format("%s: blocks d%s_t/dx_s from one batch_jacobian(stack(%s_1..%s_%d), {x_1..x_%d}) call: %d tensors of shape %s (batch, t, units, input), one per s",
    name, v, v, v, T, T, T, common.shape(blocks[1])))

  -- the diagonal: dh_t/dx_t, (B, T, U, I)
  local diag = {}
  for t = 1, T do diag[t] = blocks[t]:select(2, t) end
  local D = mg.stack(diag, 2)
  print(string.format("%s: d%s_t/dx_t shape %s (batch, time, units, input)", name, v, common.shape(D)))

  -- cross-check 1: one call per t, sources = all x_s
  local worst = 0
  for t = 1, T do
    local per_t = tape:batch_jacobian(st[t], xs)            -- T tensors (B, U, I)
    for s = 1, T do worst = math.max(worst, common.maxdiff(per_t[s], blocks[s]:select(2, t))) end
  end
  print(string.format("%s: max |one call - one batch_jacobian(%s_t, {x_1..x_T}) per t| = %.3g", name, v, worst))
  common.check(worst <= tol, "%s: the per-t Jacobians differ from the one-call Jacobians by %g", name, worst)

  -- cross-check 2: dh_T/dx_s for every s from a loop of U tape:gradient calls (one per unit;
  -- the samples do not interact, so summing over the batch keeps each sample's row)
  local rows = {}
  for u = 1, U do rows[u] = tape:gradient(st[T]:select(2, u), xs) end   -- rows[u][s]: (B, I)
  worst = 0
  for s = 1, T do
    local us = {}
    for u = 1, U do us[u] = rows[u][s] end
    worst = math.max(worst, common.maxdiff(mg.stack(us, 2), blocks[s]:select(2, T)))
  end
  print(string.format("%s: max |d%s_T/dx_s (one call) - loop of %d tape:gradient calls| = %.3g", name, v, U, worst))
  common.check(worst <= tol, "%s: the gradient loop differs from the Jacobian by %g", name, worst)

  -- causality: h_t does not depend on x_s for s > t
  local future = 0
  for t = 1, T do
    for s = t + 1, T do future = math.max(future, blocks[s]:select(2, t):abs():max():item()) end
  end
  print(string.format("%s: max |d%s_t/dx_s| for s > t = %.3g (causal)", name, v, future))

  -- what the seed's code computes: tape.gradient(h_t, inputs)[:, t] stacked, (B, T, I)
  local seedish = {}
  for t = 1, T do seedish[t] = tape:gradient(st[t], xs)[t] end
  local S = mg.stack(seedish, 2)
  print(string.format("%s: the seed's tape.gradient(%s_t, inputs)[:, t] gives shape %s = sum over units of d%s_t/dx_t (max |diff| = %.3g)",
    name, v, common.shape(S), v, common.maxdiff(S, D:sum(3))))
  return blocks
end

-- Sample 1's blocks as one (T*U) x (T*I) matrix: row (t-1)*U + u, column (s-1)*I + i.
local function block_matrix(blocks)
  local cols = {}
  for s = 1, T do cols[s] = blocks[s]:select(1, 1):reshape(T * U, I) end   -- (T*U, I)
  return mg.cat(cols, 2)
end

-- Sample 1's block norms as a T x T matrix of log10 ||dh_t/dx_s||, NaN (blank) for s > t.
local function norm_matrix(blocks)
  local m = {}
  for t = 1, T do
    m[t] = {}
    for s = 1, T do
      m[t][s] = s > t and 0 / 0 or math.log(blocks[s]:select(1, 1):select(1, t):norm():item(), 10)
    end
  end
  return m
end

local function pictures(name, blocks)
  local base = out .. "/hidden_input_grads_" .. slug(name)
  local what = name:match("h$") and "h" or "c"
  local title = string.format("%s: Jacobian blocks d%s_t/dx_s of sample 1 (%d units, %d inputs, %d steps)\n"
    .. "row block t = 1..%d (top to bottom), column block s = 1..%d (left to right); zero right of the diagonal",
    name, what, U, I, T, T, T)
  for _, ext in ipairs{ "png", "txt" } do
    local p = plot.heatmap(block_matrix(blocks), { title = title, cmap = "bwr",
      xlabel = string.format("input column (s - 1) * %d + i: timestep s, feature i", I),
      ylabel = string.format("row (t - 1) * %d + u: timestep t, unit u", U),
      width = ext == "png" and 900 or 110, height = ext == "png" and 900 or 50, out = base .. "_blocks." .. ext })
    common.wrote(name .. " Jacobian blocks (" .. ext .. ")", p)
  end
  title = string.format("%s: log10 ||d%s_t/dx_s|| of sample 1 (Frobenius norm of each block)\nblank: s > t, where the block is zero",
    name, what)
  for _, ext in ipairs{ "png", "txt" } do
    local p = plot.heatmap(norm_matrix(blocks), { title = title, cmap = "viridis",
      xlabel = "s (input timestep)", ylabel = "t (state timestep)",
      width = ext == "png" and 700 or 90, height = ext == "png" and 600 or 30, out = base .. "_norms." .. ext })
    common.wrote(name .. " block norms (" .. ext .. ")", p)
  end
end

print(string.format("seed 003: batch = %d, steps = %d, input = %d, units = %d, %s", B, T, I, U, opt.dtype))
for _, kind in ipairs{ "SimpleRNN", "LSTM" } do
  local tape, cases = run(kind)
  for _, c in ipairs(cases) do
    local blocks = study(tape, c[1], c[2])
    pictures(c[1], blocks)
  end
end
