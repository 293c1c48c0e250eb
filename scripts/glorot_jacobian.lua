-- glorot_jacobian.lua (seed 001, "Take a derivative wrt the Moon"): the derivative of a
-- recurrent state with respect to the previous one, dh_t/dh_(t-1), for the seed's two-state
-- cell
--     h_t = W_h act(h_(t-1)) + b,   c_t = c_(t-1) - h_(t-1) + h_t,   o_t = sigmoid(W_o x_t) + c_t
-- (the seed's code applies the sigmoid to W_o x_t + c_t; we follow its code). With Glorot
-- weights var(W_h) = 1/units, so var(dh_t/dh_(t-1)) * units is the fraction of active units:
-- 0.5 for ReLU, 1.0 for the identity, the check the seed prints.
--
-- Part 1 runs the seed's loop: a stateful layer called one step at a time (it carries its
-- states from call to call), a fresh tape per step, and tape:batch_jacobian(h_t, h_(t-1)).
-- var(J) * units of one 100x100 draw is 0.5 +- 0.05 (the active fraction of 100 units), so
-- the script averages over --trials independent cells, each with new Glorot weights.
-- Part 2 is the better way the seed asks for: one trace of a long sequence and ONE call
-- tape:batch_jacobian(h_T, {h_0, ..., h_(T-1)}) giving every dh_T/dh_k, whose norms against
-- k show gradients vanishing (ReLU + Glorot), holding (identity, ReLU + He) or exploding
-- (identity with the weights scaled by --gain).
--
--   moongrad scripts/glorot_jacobian.lua [--out out] [--units 100] [--steps 4] ...
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local nn, plot = mg.nn, mg.plot

local opt, out = common.setup(arg, "glorot_jacobian.lua",
  "dh_t/dh_(t-1) of the seed-001 two-state cell: var(J)*units for ReLU and identity, and ||dh_T/dh_k|| against k", 42, {
  common.opt.units(100), common.opt.steps(4), common.opt.batch(1), common.opt.input(2),  -- of the per-step loop
  { "trials", 10, "independent Glorot draws averaged in part 1", 1 },
  { "decay_steps", 40, "sequence length T of the decay picture", 2 },
  { "decay_batch", 8, "samples averaged in the decay picture", 1 },
  { "gain", 1.25, "scale of the Glorot weights for the exploding curve", 0 },
})

---------------------------------------------------------------- the seed's cell

local function identity(x) return x end

-- The seed's customRNN as an nn.Cell: states {h, c}; linear_rec a Dense with bias, linear_in
-- a Dense without. 'act' is the recurrent activation, 'gain' scales linear_rec's Glorot
-- kernel (1 = the seed's initialization).
local CustomRNN = nn.Cell {
  name = "custom_rnn",
  state_size = function(self) return { self.units, self.units } end,
  init = function(self, input_dim, units, act, gain)
    self.units, self.act = units, act
    gain = gain or 1
    self.linear_rec = nn.Dense(units, units, { name = "linear_rec", kernel_initializer =
      function(shape, dtype) return mg.glorot_uniform(shape[1], shape[2], { dtype = dtype }) * gain end })
    self.linear_in = nn.Dense(input_dim, units, { use_bias = false, name = "linear_in" })
  end,
  call = function(self, x, states)
    local old_h, old_c = states[1], states[2]
    local h = self.linear_rec(self.act(old_h))
    local c = old_c - old_h + h
    local output = mg.sigmoid(self.linear_in(x) + c)
    return output, { h, c }
  end,
}

---------------------------------------------------------------- part 1: the seed's loop

-- The closed form of one Jacobian: h_t = act(h_(t-1)) W + b with W = linear_rec.kernel
-- (in, out) gives J[b, i, j] = W[j, i] act'(h_(t-1)[b, j]).
local function closed_form(cell, h, relu)
  local d = relu and mg.gt(h, 0):to(h.dtype) or mg.ones(h:shape(), { dtype = h.dtype })
  return cell.linear_rec.kernel:transpose(1, 2):unsqueeze(1) * d:unsqueeze(2)
end

-- One trial: a new cell, random x, h_0, c_0 (as the seed), the stateful loop over time: a
-- stateful layer keeps its final states from call to call, each call runs one timestep under
-- a fresh tape, and the Jacobian is taken with respect to the state the call started from
-- (tr.h[0], the kept state: any tensor a recorded computation used is a valid source).
-- Returns the array of var(J_t) * units and the largest deviation from the closed form.
local function trial(act, relu)
  local units, B = opt.units, opt.batch
  local cell = CustomRNN(opt.input, units, act)
  local rnn = nn.RNN(cell, { return_sequences = true, return_state = true, stateful = true })
  local batch = mg.randn(B, opt.steps, opt.input)
  rnn:reset_states({ mg.randn(B, units), mg.randn(B, units) })
  local ratios, worst = {}, 0
  for t = 1, opt.steps do
    local bt = batch:narrow(2, t, 1)                   -- (B, 1, input), the seed's batch[:, t][:, None]
    local tape = mg.GradientTape()
    local tr = rnn:trace(bt)                           -- from the kept states; keeps the new ones
    local J = tape:batch_jacobian(tr.h[1], tr.h[0])    -- (B, units, units)
    common.check(common.shape(J) == common.shape{ B, units, units },
      "batch_jacobian(h_t, h_(t-1)) has shape %s, expected (%d,%d,%d)", common.shape(J), B, units, units)
    ratios[t] = J:var():item() * units
    worst = math.max(worst, common.maxdiff(J, closed_form(cell, tr.h[0], relu)))
  end
  return ratios, worst
end

print("seed 001: dh_t/dh_(t-1) of the two-state cell h_t = W_h act(h_(t-1)) + b, c_t = c_(t-1) - h_(t-1) + h_t")
print(string.format("units = %d, steps = %d, batch = %d, input = %d, trials = %d (independent Glorot draws)",
  opt.units, opt.steps, opt.batch, opt.input, opt.trials))
local expected = { relu = 0.5, identity = 1.0 }
for _, case in ipairs{ { "relu", mg.relu, true }, { "identity", identity, false } } do
  local name, act, relu = case[1], case[2], case[3]
  local sums, first, worst = {}, nil, 0
  for k = 1, opt.trials do
    local r, w = trial(act, relu)
    first = first or r
    worst = math.max(worst, w)
    for t, v in ipairs(r) do sums[t] = (sums[t] or 0) + v end
  end
  local total = 0
  for t = 1, opt.steps do
    print(string.format("%s step %d var(J)*units = %.4f (trial 1 alone: %.4f)", name, t,
      sums[t] / opt.trials, first[t]))
    total = total + sums[t]
  end
  print(string.format("%s Jacobian vs closed form W^T diag(act'(h_(t-1))): max |diff| = %.3g", name, worst))
  print(string.format("%s mean var(J)*units = %.4f (expected %.1f)", name, total / (opt.trials * opt.steps),
    expected[name]))
end

---------------------------------------------------------------- part 2: one vectorized pass

-- ||dh_T/dh_k|| (Frobenius, mean over samples) for k = 0 .. T-1 from one trace and one
-- batch_jacobian call with the array of sources {h_0, ..., h_(T-1)}.
local function decay(act, gain)
  local T, B, units = opt.decay_steps, opt.decay_batch, opt.units
  local cell = CustomRNN(opt.input, units, act, gain)
  local rnn = nn.RNN(cell, { return_sequences = true })
  local x = mg.randn(B, T, opt.input)
  local h0, c0 = mg.randn(B, units), mg.randn(B, units)
  local tape = mg.GradientTape()
  tape:watch(h0, c0)
  local tr = rnn:trace(x, { h0, c0 })
  local sources = {}
  for k = 0, T - 1 do sources[k + 1] = tr.h[k] end
  local Js = tape:batch_jacobian(tr.h[T], sources)    -- one pass: T Jacobians (B, units, units)
  common.check(#Js == T, "batch_jacobian with %d sources returned %d Jacobians", T, #Js)
  local norms = {}
  for k = 1, T do norms[k] = Js[k]:pow(2):sum({ 2, 3 }):sqrt():mean():item() end
  return norms
end

local T = opt.decay_steps
local he = math.sqrt(2)                                -- He scaling: var(W) = 2/units
local curves = {
  { "relu", "ReLU, Glorot", mg.relu, 1, math.sqrt(0.5) },
  { "identity", "identity, Glorot", identity, 1, 1 },
  { "relu_he", "ReLU, He (Glorot x sqrt 2)", mg.relu, he, 1 },
  { "identity_gain", string.format("identity, Glorot x %g", opt.gain), identity, opt.gain, opt.gain },
}
local ys, labels, ks = {}, {}, {}
for k = 0, T - 1 do ks[k + 1] = k end
print(string.format("||dh_T/dh_k|| for T = %d from one batch_jacobian(h_T, {h_0..h_(T-1)}) per curve", T))
for i, cv in ipairs(curves) do
  local norms = decay(cv[3], cv[4])
  -- the factor per step, from the ends of the curve (dh_T/dh_(T-1) vs dh_T/dh_0)
  local factor = (norms[1] / norms[T]) ^ (1 / (T - 1))
  print(string.format("decay %s: ||dh_T/dh_(T-1)|| = %.4g, ||dh_T/dh_0|| = %.4g, factor per step = %.4f (mean-field value %.3f)",
    cv[1], norms[T], norms[1], factor, cv[5]))
  local logs = {}
  for k, v in ipairs(norms) do logs[k] = math.log(v, 10) end
  ys[i], labels[i] = logs, cv[2]
end

-- log10 of the norms on a linear axis: a straight line is a constant factor per step
local title = string.format("Vanishing and exploding: log10 ||dh_T/dh_k|| against k\n(T = %d, %d units, mean over %d samples)",
  T, opt.units, opt.decay_batch)
for _, ext in ipairs{ "png", "txt" } do
  local path = plot.lines(ys, { x = ks, labels = labels, title = title,
    xlabel = "k (source timestep; T = " .. T .. ")", ylabel = ext == "png" and "log10 ||dh_T/dh_k||" or "log10 norm",
    width = ext == "png" and 1000 or 110, height = ext == "png" and 560 or 32,
    out = out .. "/glorot_jacobian_decay." .. ext })
  common.wrote("Jacobian-norm decay (" .. ext .. ")", path)
end
