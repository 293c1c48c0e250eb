-- lyapunov.lua: Lyapunov spectra of recurrent maps with mg.lyapunov (the QR method, k tangents
-- pushed through each step as one vectorized forward-mode JVP, batched QR), checked against
-- two exact results and then measured on trained networks.
--
-- 1. A linear RNN h_t = W h_(t-1): the exponents are log|eigenvalues of W|, here checked against
--    mg.linalg.eigvals; the error of the estimate falls as 1/T (printed at T/10 and T).
-- 2. Products of independent Gaussian matrices (h_t = W_t h_(t-1), W_t fresh each step with
--    entries N(0, s^2)): Newman's exact result (1986), lambda_i = (ln(2 s^2) + psi((N-i+1)/2)) / 2
--    (psi the digamma function), printed beside the estimates and their standard errors over
--    the B independent trajectories.
-- 3. An LSTM and a GRU before and after training on a memory task (output the first input of a
--    noise sequence at its last step, as in gradient_flow.lua; Vogt et al. 2022 study the same
--    picture): the spectrum moves towards 0, the edge of chaos, as the network learns to keep
--    information.
-- Pictures: the spectra (sorted exponents, one line per condition) and the convergence.
--
--   moongrad scripts/lyapunov.lua [--out out] [--steps 3000] [--units 16] [--iters 300] ...
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local nn, plot, linalg = mg.nn, mg.plot, mg.linalg

local opt, out = common.setup(arg, "lyapunov.lua",
  "Lyapunov spectra: a linear RNN (log|eig W|), Newman's Gaussian products, LSTM/GRU before and after training", 1, {
  { "n", 6, "state size of the linear RNN and of the Gaussian products", 2 },
  { "steps", 3000, "steps of the linear RNN and of the Gaussian products", 10 },
  { "batch", 16, "independent trajectories of the Gaussian products", 2 },
  { "s", 0.5, "standard deviation of the Gaussian matrices' entries", 0 },
  common.opt.units(16), common.opt.iters(1000, 0), common.opt.lr(0.01),  -- of the LSTM and the GRU
  { "seq", 10, "sequence length T of the memory task", 2 },
  { "lyap_steps", 300, "input steps the trained networks' spectra are measured over", 10 },
})
local F64 = { dtype = "float64" }
local written = {}

local function row(t) local v = common.values(t) return v end
local function fmt(v) local s = {} for i, x in ipairs(v) do s[i] = string.format("%.4f", x) end return table.concat(s, " ") end

---------------------------------------------------------------- 1. linear RNN

local N, T = opt.n, opt.steps
local W = mg.randn(N, N, F64) / math.sqrt(N)
local wr, wi = linalg.eigvals(W)
local logs = row((wr * wr + wi * wi):sqrt():log())
table.sort(logs, function(a, b) return a > b end)
local lin = mg.lyapunov(function(_, h) return h:matmul(W:transpose()) end, mg.randn(1, N, F64), nil, { steps = T })
local est = row(lin.mean)
local function err_at(t)
  local e = 0
  for i = 1, N do e = math.max(e, math.abs(lin.history[t]:get(i) - logs[i])) end
  return e
end
print(string.format("linear RNN h_t = W h_(t-1), W (%d,%d) Gaussian / sqrt(N), %d steps", N, N, T))
print("  log|eig(W)| (mg.linalg.eigvals): " .. fmt(logs))
print("  Lyapunov exponents (mg.lyapunov): " .. fmt(est))
print(string.format("linear max error after %d steps: %.3g; after %d steps: %.3g (falls as 1/T)",
  T // 10, err_at(T // 10), T, err_at(T)))
common.check(err_at(T) < 1e-2, "the linear RNN's exponents are off by %g", err_at(T))

---------------------------------------------------------------- 2. Newman's Gaussian products

local EULER = 0.57721566490153286
-- digamma at n/2 for an integer n >= 1: psi(1) = -gamma, psi(1/2) = -gamma - 2 ln 2,
-- psi(x + 1) = psi(x) + 1/x.
local function digamma_half(n)
  local x, v = n % 2 == 0 and 1 or 0.5, n % 2 == 0 and -EULER or -EULER - 2 * math.log(2)
  while x < n / 2 do v, x = v + 1 / x, x + 1 end
  return v
end
local B, s = opt.batch, opt.s
local gauss = mg.lyapunov(function(_, h)       -- a fresh W_t for every step and trajectory
  return h:unsqueeze(2):matmul(mg.randn(B, N, N, F64) * s):squeeze(2)
end, mg.randn(B, N, F64), nil, { steps = T, warmup = 100 })
local se = row((((gauss.exponents - gauss.mean) ^ 2):sum(1) / (B - 1) / B):sqrt())
local newman, gest = {}, row(gauss.mean)
print(string.format("Gaussian products, N = %d, s = %g, %d trajectories of %d steps (after 100 of warmup): i, estimate +- standard error, Newman", N, s, B, T))
local worst = 0
for i = 1, N do
  newman[i] = (math.log(2 * s * s) + digamma_half(N - i + 1)) / 2
  local z = math.abs(gest[i] - newman[i]) / se[i]
  worst = math.max(worst, z)
  print(string.format("  lambda_%d  %.4f +- %.4f   Newman %.4f   (%.1f standard errors)", i, gest[i], se[i], newman[i], z))
end
print(string.format("Newman largest deviation: %.2f standard errors", worst))

---------------------------------------------------------------- 3. LSTM and GRU on a memory task

local function task(Bt, len)
  local x = mg.randn(Bt, len, 1)
  return x, x:select(2, 1)
end

local function train(kind)
  local cell = kind == "LSTM" and nn.LSTMCell(1, opt.units) or nn.GRUCell(1, opt.units)
  local rnn = nn.RNN(cell)
  local head = nn.Dense(opt.units, 1, { name = kind .. "_head" })
  local params = rnn:parameters()
  for _, p in ipairs(head:parameters()) do params[#params + 1] = p end
  local adam = mg.optim.Adam(params, { lr = opt.lr })
  local lx = task(4, opt.lyap_steps)
  local spectrum = function() return row(rnn:lyapunov(lx, { warmup = 20 }).mean) end
  local before = spectrum()
  local ex, ey = task(256, opt.seq)
  local function eval() return nn.mse(head(rnn(ex)), ey):item() end
  local loss0 = eval()
  for it = 1, opt.iters do
    local x, y = task(32, opt.seq)
    local tape = mg.GradientTape()
    local loss = tape:record(function() return nn.mse(head(rnn(x)), y) end)
    adam:step(tape:gradient(loss, params))
    common.progress(kind .. " training", it, opt.iters, loss:item())
  end
  return { before = before, after = spectrum(), loss0 = loss0, loss1 = eval() }
end

local nets = {}
for _, kind in ipairs { "LSTM", "GRU" } do
  local r = train(kind)
  nets[kind] = r
  print(string.format("%s %d units (state %d), memory task T = %d: evaluation loss %.4f -> %.4f after %d iterations",
    kind, opt.units, #r.before, opt.seq, r.loss0, r.loss1, opt.iters))
  print(string.format("%s largest exponent before %.4f after %.4f; mean of the top 4 before %.4f after %.4f", kind,
    r.before[1], r.after[1], (r.before[1] + r.before[2] + r.before[3] + r.before[4]) / 4,
    (r.after[1] + r.after[2] + r.after[3] + r.after[4]) / 4))
end

---------------------------------------------------------------- pictures

for _, ext in ipairs { "png", "txt" } do
  local w, h = ext == "png" and 900 or 100, ext == "png" and 500 or 28
  local p = plot.spectrum({ logs, est, newman, gest }, { width = w, height = h,
    labels = { "log|eig(W)|", "linear: mg.lyapunov", "Newman (exact)", "Gaussian: mg.lyapunov" },
    styles = { "points", "linespoints", "points", "linespoints" },
    title = string.format("Lyapunov spectra, N = %d, %d steps: exact against estimated", N, T),
    xlabel = "i (exponent, descending)", ylabel = "lambda_i (per step)", out = out .. "/lyapunov_exact." .. ext })
  written[#written + 1] = { "exact vs estimated spectra (" .. ext .. ")", p }
  p = plot.spectrum({ nets.LSTM.before, nets.LSTM.after, nets.GRU.before, nets.GRU.after }, {
    width = w, height = h, labels = { "LSTM before", "LSTM after", "GRU before", "GRU after" },
    title = string.format("Lyapunov spectra before and after training on the memory task (%d units)", opt.units),
    xlabel = "i (exponent, descending)", ylabel = "lambda_i (per step)", out = out .. "/lyapunov_trained." .. ext })
  written[#written + 1] = { "LSTM and GRU spectra (" .. ext .. ")", p }
  local ts, e = {}, {}
  for t = 1, T do
    ts[t] = t
    local m = 0
    for i = 1, N do m = math.max(m, math.abs(lin.history[t]:get(i) - logs[i])) end
    e[t] = math.log(math.max(m, 1e-16), 10)
  end
  p = plot.lines(e, { x = ts, width = w, height = h, labels = { "max_i |estimate - log|eig_i||" },
    title = "Convergence of the QR method on the linear RNN", xlabel = "steps T",
    ylabel = "log10 error", out = out .. "/lyapunov_convergence." .. ext })
  written[#written + 1] = { "convergence (" .. ext .. ")", p }
end
for _, wr_ in ipairs(written) do common.wrote(wr_[1], wr_[2]) end
