-- gradient_flow.lua: how gradients flow back through time in a small LSTM, before and after
-- it learns a task that needs memory.
--
-- The task: read a sequence x (B, T, 1) of Gaussian noise and output its FIRST value, x_1,
-- at the last step (a Dense head on h_T, mean squared error). The answer enters at t = 1
-- and must be carried for T - 1 steps, so the network only learns once gradient reaches
-- back to the early steps. The script trains with Adam (a progress line shows iteration and
-- loss) and, on a fixed evaluation batch before and after training, measures
--   * ||dL/dh_t|| for every t, from ONE tape:gradient(loss, tr.h) call on the trace
--     (the total derivative of the loss w.r.t. each hidden state, through all later steps);
--   * ||dh_T/dh_k|| for every k, from ONE tape:batch_jacobian(h_T, {h_0, ..., h_(T-1)});
--   * dL/dh_t itself per sample, unit and timestep (plot.features_2d).
-- It prints the numbers and where the pictures are. A TensorBoard log (mg.summary, in
-- OUT/tensorboard or --logdir) holds the training loss at every iteration and, every
-- --log_every iterations, the evaluation loss and ||dL/dh_t|| for each t (tags
-- 'dL_dh_norm/t_01' ...); and the profiles before and after training with the timestep as
-- step ('dL_dh_profile/before_training', 'dh_T_dh_k_profile/after_training', ...). Open it
-- with 'tensorboard --logdir OUT/tensorboard'.
--
--   moongrad scripts/gradient_flow.lua [--out out] [--logdir DIR] [--iters 2000] [--steps 20] [--units 16]
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local nn, plot = mg.nn, mg.plot

local opt, out = common.setup(arg, "gradient_flow.lua",
  "train a small LSTM to recall the first input; per-timestep gradient norms, Jacobian-norm decay, dL/dh_t heatmaps", 1, {
  common.opt.logdir(""),
  { "log_every", 0, "TensorBoard: evaluation loss and ||dL/dh_t|| every this many iterations (0: iters/20)", 0 },
  common.opt.iters(2000), common.opt.steps(20, 2), common.opt.units(16), common.opt.batch(32),
  { "eval_batch", 64, "size of the fixed evaluation batch", 1 },
  { "samples", 8, "samples drawn in the dL/dh_t heatmaps", 1 },
  common.opt.lr(0.01),
})
local T, U = opt.steps, opt.units

---------------------------------------------------------------- model and task

local cell = nn.LSTMCell(1, U)
local rnn = nn.RNN(cell)
local head = nn.Dense(U, 1, { name = "head" })
local params = rnn:parameters()
for _, p in ipairs(head:parameters()) do params[#params + 1] = p end
local adam = mg.optim.Adam(params, { lr = opt.lr })

-- A batch of the task: x (B, T, 1) noise, target the first value (B, 1).
local function task(B)
  local x = mg.randn(B, T, 1)
  return x, x:select(2, 1)
end

-- Loss, trace and tape of one forward pass on (x, y); the tape records everything, with the
-- initial states h_0, c_0 watched so that they are sources too.
local function forward(x, y, persistent)
  local tape = mg.GradientTape { persistent = persistent }
  local h0, c0 = table.unpack(cell:initial_state(x:size(1)))
  tape:watch(h0, c0)
  local tr = rnn:trace(x, { h0, c0 })
  local loss = nn.mse(head(tr.h[T]), y)
  return tape, tr, loss
end

---------------------------------------------------------------- measurements

-- On the evaluation batch: the loss, ||dL/dh_t|| (t = 1..T), ||dh_T/dh_k|| (k = 0..T-1,
-- mean over samples of the Frobenius norm) and dL/dh_t as (B, T, U).
local eval_x, eval_y = task(opt.eval_batch)
local function measure()
  local tape, tr, loss = forward(eval_x, eval_y, true)
  local dh = tape:gradient(loss, tr.h)                 -- ONE call: dL/dh_t for t = 1..T (tr.h[0] is h_0)
  common.check(#dh == T, "gradient(loss, tr.h) returned %d tensors, expected %d", #dh, T)
  local gnorm = {}
  for t = 1, T do gnorm[t] = dh[t]:norm():item() end
  -- cross-check one entry against its own gradient call
  local single = tape:gradient(loss, tr.h[1])
  local diff = common.maxdiff(single, dh[1])
  local sources = {}
  for k = 0, T - 1 do sources[k + 1] = tr.h[k] end
  local J = tape:batch_jacobian(tr.h[T], sources)      -- ONE call: dh_T/dh_k for every k
  local jnorm = {}
  for k = 1, T do jnorm[k] = J[k]:pow(2):sum({ 2, 3 }):sqrt():mean():item() end
  return { loss = loss:item(), gnorm = gnorm, jnorm = jnorm, dh = mg.stack(dh, 2), diff = diff,
           jshape = common.shape(J[1]) }
end

-- ||dL/dh_t|| (t = 1..T) and the loss on the evaluation batch, from one gradient call.
local function eval_gnorm()
  local tape, tr, loss = forward(eval_x, eval_y, false)
  local dh = tape:gradient(loss, tr.h)
  local g = {}
  for t = 1, T do g[t] = dh[t]:norm():item() end
  return loss:item(), g
end

---------------------------------------------------------------- TensorBoard log

local logdir = opt.logdir ~= "" and opt.logdir or (out .. "/tensorboard")
local tb = mg.summary.writer(logdir)
local log_every = opt.log_every > 0 and opt.log_every or math.max(1, opt.iters // 20)
local function log_eval(it)
  local l, g = eval_gnorm()
  tb:scalar("loss/eval", l, it)
  for t = 1, T do tb:scalar(string.format("dL_dh_norm/t_%02d", t), g[t], it) end
end
local function log_profile(when, m)
  for t = 1, T do
    tb:scalar("dL_dh_profile/" .. when, m.gnorm[t], t)       -- step: the timestep t
    tb:scalar("dh_T_dh_k_profile/" .. when, m.jnorm[t], t - 1) -- step: the source timestep k
  end
end

---------------------------------------------------------------- training

print(string.format("task: output x_1 of a (B, %d, 1) noise sequence at step %d; LSTM %d units, Dense head, MSE, Adam lr %g",
  T, T, U, opt.lr))
local before = measure()
log_profile("before_training", before)
log_eval(0)
local losses, iters = {}, {}
for it = 1, opt.iters do
  local x, y = task(opt.batch)
  local tape, _, loss = forward(x, y, false)
  adam:step(tape:gradient(loss, params))
  losses[it], iters[it] = loss:item(), it
  tb:scalar("loss/train", losses[it], it)
  if it % log_every == 0 or it == opt.iters then log_eval(it) end
  common.progress("training", it, opt.iters, losses[it])
end
local after = measure()
log_profile("after_training", after)

-- mean training loss over the first and the last tenth of the run (single batches are noisy)
local function window_mean(lo, hi)
  local s = 0
  for i = lo, hi do s = s + losses[i] end
  return s / (hi - lo + 1)
end
local tenth = math.max(1, opt.iters // 10)
print(string.format("training loss: first %d iterations mean %.6f, last %d iterations mean %.6f",
  tenth, window_mean(1, tenth), tenth, window_mean(opt.iters - tenth + 1, opt.iters)))
print(string.format("evaluation loss (fixed batch of %d): before %.6f, after %.6f (predicting 0 gives about 1)",
  opt.eval_batch, before.loss, after.loss))
print(string.format("dL/dh_t from one tape:gradient(loss, tr.h): %d tensors of shape %s; max |entry 1 - its own gradient call| = %.3g",
  T, common.shape(after.dh:select(2, 1)), after.diff))
print(string.format("dh_T/dh_k from one batch_jacobian(h_T, {h_0..h_(T-1)}): %d Jacobians of shape %s", T, after.jshape))
for _, m in ipairs{ { "before", before }, { "after", after } } do
  local r = m[2]
  print(string.format("%s training: ||dL/dh_1|| = %.4g, ||dL/dh_T|| = %.4g, ratio = %.4g; ||dh_T/dh_0|| = %.4g, ||dh_T/dh_(T-1)|| = %.4g",
    m[1], r.gnorm[1], r.gnorm[T], r.gnorm[1] / r.gnorm[T], r.jnorm[1], r.jnorm[T]))
end

---------------------------------------------------------------- pictures

local function log10s(v)
  local o = {}
  for i, x in ipairs(v) do o[i] = x > 0 and math.log(x, 10) or 0 / 0 end
  return o
end
local function ext_size(ext, w, h, tw, th)
  if ext == "png" then return w, h end
  return tw, th
end
local ts, ks = {}, {}
for t = 1, T do ts[t], ks[t] = t, t - 1 end
local written = {}

for _, ext in ipairs{ "png", "txt" } do
  local w, h = ext_size(ext, 1000, 520, 110, 30)
  local path = plot.lines({ log10s(before.gnorm), log10s(after.gnorm) }, { x = ts,
    labels = { "before training", "after training" }, width = w, height = h,
    title = string.format("Gradient flow back through time: log10 ||dL/dh_t|| per timestep\n"
      .. "(LSTM %d units, T = %d, loss at t = T, the answer enters at t = 1; %d evaluation samples)", U, T, opt.eval_batch),
    xlabel = "t (timestep of the hidden state)", ylabel = ext == "png" and "log10 ||dL/dh_t||" or "log10 norm",
    out = out .. "/gradient_flow_dL_dh." .. ext })
  written[#written + 1] = { "per-timestep gradient norms ||dL/dh_t|| (" .. ext .. ")", path }

  path = plot.lines({ log10s(before.jnorm), log10s(after.jnorm) }, { x = ks,
    labels = { "before training", "after training" }, width = w, height = h,
    title = string.format("Jacobian-norm decay: log10 ||dh_T/dh_k|| against k\n(LSTM %d units, T = %d, mean over %d samples)",
      U, T, opt.eval_batch),
    xlabel = "k (source timestep)", ylabel = ext == "png" and "log10 ||dh_T/dh_k||" or "log10 norm",
    out = out .. "/gradient_flow_jacobian_decay." .. ext })
  written[#written + 1] = { "Jacobian-norm decay ||dh_T/dh_k|| (" .. ext .. ")", path }

  local n = math.min(opt.samples, opt.eval_batch)
  w, h = ext_size(ext, 1200, 700, nil, nil)          -- text: features_2d fits every timestep
  path = plot.features_2d(after.dh:narrow(1, 1, n), { n_rows = n >= 4 and 2 or 1, name = "dL/dh_t",
    width = w, height = h, ylabel = "unit",
    title = string.format("dL/dh_t after training: units (rows) x timesteps (columns), first %d evaluation samples", n),
    out = out .. "/gradient_flow_features_2d." .. ext })
  written[#written + 1] = { "dL/dh_t heatmaps, features_2d (" .. ext .. ")", path }

  w, h = ext_size(ext, 1000, 500, 110, 28)
  path = plot.lines(log10s(losses), { x = iters, labels = { "training batch loss" }, width = w, height = h,
    title = string.format("Training loss (MSE, batch %d) of the recall-the-first-input task, T = %d", opt.batch, T),
    xlabel = "iteration", ylabel = ext == "png" and "log10 loss" or "log10 loss",
    out = out .. "/gradient_flow_loss." .. ext })
  written[#written + 1] = { "training loss (" .. ext .. ")", path }
end
for _, w in ipairs(written) do common.wrote(w[1], w[2]) end
tb:close()
print(string.format("TensorBoard log: %s (tensorboard --logdir %s)", tb:path(), logdir))
