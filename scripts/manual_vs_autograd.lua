-- manual_vs_autograd.lua (seed 002): every worked example of the seed, the derivative worked
-- out by hand printed beside the tape's, then the hand-written backpropagation through time
-- of a small tanh RNN beside the tape.
--
-- Two things the seed got wrong are shown, not copied:
-- * its 8.18880672682621 and 0.9092516899108887 are float32 results: the hand formula run on
--   values that .item() took from float32 tensors. We print them in float32 and the true
--   float64 values (dy2/dw_h = 8.188808168328672).
-- * its hand BPTT never accumulates dB_x (it prints 0); the correct value, equal to dB_h
--   because both biases add into the same pre-activation, is printed beside the tape's.
--
--   moongrad scripts/manual_vs_autograd.lua [--out out] [--steps 2] [--hidden 3] [--seed 7]
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local plot = mg.plot

local opt, out = common.setup(arg, "manual_vs_autograd.lua",
  "seed 002: derivatives by hand beside the tape's, and a hand-written BPTT of a tanh RNN", 7, {
  { "steps", 2, "timesteps N of the BPTT example (the seed's N = 2)", 1 },
  { "hidden", 3, "hidden units of the BPTT example (the seed's 3)", 1 },
})

local F32, F64 = { dtype = "float32" }, { dtype = "float64" }

-- 'v' in the fewest digits that read back as the same double (as Python's repr prints).
local function fmt(v)
  for digits = 15, 17 do
    local s = string.format("%." .. digits .. "g", v)
    if tonumber(s) == v then return s end
  end
  return string.format("%.17g", v)
end

-- "(a, b, c)" of a 1-d tensor or Lua array, numbers at full precision.
local function vec(t)
  local v = type(t) == "table" and t or common.values(t)
  local parts = {}
  for i, x in ipairs(v) do parts[i] = fmt(x) end
  return "(" .. table.concat(parts, ", ") .. ")"
end

-- The tape's gradient of 'f(sources...)' with respect to 'sources' (an array).
local function tape_grad(f, sources)
  local tape = mg.GradientTape()
  tape:watch(sources)
  return tape:gradient(f(table.unpack(sources)), sources)
end

---------------------------------------------------------------- scalars (In [1] to [4])

do -- In [1]: d(x^2)/dx = 2x at a random x (float32, as torch.rand)
  local X = mg.rand(1, F32)
  local x = X:get(1)
  local g = tape_grad(function(v) return v ^ 2 end, { X })[1]:get(1)
  print(string.format("example 1: d(x^2)/dx at x = %s: tape %s | hand 2x %s", fmt(x), fmt(g), fmt(2 * x)))
end

do -- In [2]: the seed calls lossfn(Y_pred, y_actual), so the loss is 10 - x^2: -2x
  local X = mg.rand(1, F32)
  local x = X:get(1)
  local g = tape_grad(function(v) return 10 - v ^ 2 end, { X })[1]:get(1)
  print(string.format("example 2: d(y_actual - x^2)/dx at x = %s: tape %s | hand (0 - 1) 2x %s",
    fmt(x), fmt(g), fmt(-2 * x)))
end

do -- In [3]: (x^2 - 10)^2 at x = 1: 2 (x^2 - 10) 2x = -36
  local g = tape_grad(function(v) return (v ^ 2 - 10) ^ 2 end, { mg.tensor(1.0, F64) })[1]:item()
  print(string.format("example 3: d((x^2 - y)^2)/dx at x = 1, y = 10: tape %s | hand 2 (x^2 - y) 2x %s",
    fmt(g), fmt(2 * (1 - 10) * 2)))
end

do -- In [4]: z = w x + b: dz/dw = x, dz/db = 1
  local w, b, x = 5.0, 4.0, 2.5
  local g = tape_grad(function(W, B) return W * x + B end, { mg.tensor(w, F64), mg.tensor(b, F64) })
  print(string.format("example 4: z = w x + b at w = %g, x = %g, b = %g: dz/dw tape %s | hand x %s; dz/db tape %s | hand 1",
    w, x, b, fmt(g[1]:item()), fmt(x), fmt(g[2]:item())))
end

---------------------------------------------------------------- vectors (In [5], [6])

do -- In [5]: d sum(x^2)/dx = 2x
  local X = mg.tensor({ 1.0, 5.0, 6.0 }, F64)
  local g = tape_grad(function(v) return (v ^ 2):sum() end, { X })[1]
  print(string.format("example 5: d sum(x^2)/dx at x = (1, 5, 6): tape %s | hand 2x %s", vec(g), vec(X * 2)))
end

do -- In [6]: O = sum(X W + B): dO/dW[i, j] = sum_n X[n, i], dO/dX[n, i] = sum_j W[i, j], dO/dB = 5
  local X, W, B = mg.randn(5, 2, F64), mg.randn(2, 3, F64), mg.randn(1, 3, F64)
  local g = tape_grad(function(x, w, b) return (mg.matmul(x, w) + b):sum() end, { X, W, B })
  local dW_hand = X:sum(1):unsqueeze(2):expand(2, 3)
  local dX_hand = W:sum(2):unsqueeze(1):expand(5, 2)
  local dB_hand = mg.full({ 1, 3 }, 5, F64)
  print(string.format("example 6: O = sum(X W + B), X (5,2), W (2,3), B (1,3): max |dW tape - column sums of X| = %.3g, "
    .. "max |dX tape - row sums of W| = %.3g, dB tape %s | hand (rows of X) %s",
    common.maxdiff(g[2], dW_hand), common.maxdiff(g[1], dX_hand), vec(g[3]), vec(dB_hand)))
end

---------------------------------------------------------------- recursions (In [7], [8])

do -- In [7]: h2 = w h1, h1 = w h0: dh2/dw = h0 w + h1 = 2, dh2/dh0 = w^2 = 4
  local w, h0 = 2.0, 0.5
  local g = tape_grad(function(W, H0) return W * (W * H0) end, { mg.tensor(w, F64), mg.tensor(h0, F64) })
  print(string.format("example 7: h2 = w (w h0) at w = 2, h0 = 0.5: dh2/dw tape %s | hand h0 w + h1 %s; dh2/dh0 tape %s | hand w^2 %s",
    fmt(g[1]:item()), fmt(h0 * w + w * h0), fmt(g[2]:item()), fmt(w * w)))
end

-- In [8]: y2 = w_y tanh(w_h tanh(w_h h0)), h0 = 0.5, w_h = 2, w_y = 40. Returns the tape's
-- dy2/dw_h and dy2/dw_y in 'dtype', the seed's forward-mode hand formula and its backward
-- pass, both evaluated in Lua doubles on the values the tensors hold (as Python on .item()).
local function tanh_example(dtype, wh_value)
  local o = { dtype = dtype }
  local W_h, W_y, H0 = mg.tensor(wh_value or 2.0, o), mg.tensor(40.0, o), mg.tensor(0.5, o)
  local tape = mg.GradientTape()
  tape:watch(W_h, W_y)
  local H1 = mg.tanh(W_h * H0)
  local H2 = mg.tanh(W_h * H1)
  local g = tape:gradient(W_y * H2, { W_h, W_y })
  local w_h, w_y, h0, h1, h2 = W_h:item(), W_y:item(), H0:item(), H1:item(), H2:item()
  -- forward-mode by hand, the seed's chain
  local dh1_dwh = (1 - h1 ^ 2) * h0
  local dh2_dwh = (1 - h2 ^ 2) * (h1 + w_h * dh1_dwh)
  local hand_wh, hand_wy = w_y * dh2_dwh, h2
  -- backward pass over the graph, the seed's second derivation
  local dh2_raw = (1 - h2 ^ 2) * w_y
  local dh1_raw = (1 - h1 ^ 2) * (w_h * dh2_raw)
  local back_wh = h1 * dh2_raw + h0 * dh1_raw
  return { tape_wh = g[1]:item(), tape_wy = g[2]:item(), hand_wh = hand_wh, hand_wy = hand_wy, back_wh = back_wh }
end

local r32, r64 = tanh_example("float32"), tanh_example("float64")
print(string.format("example 8 float32 (as the seed): dy2/dw_h tape %s | hand %s | backward pass %s; dy2/dw_y tape %s | hand h2 %s",
  fmt(r32.tape_wh), fmt(r32.hand_wh), fmt(r32.back_wh), fmt(r32.tape_wy), fmt(r32.hand_wy)))
print(string.format("example 8 float64: dy2/dw_h tape %s | hand %s | backward pass %s; dy2/dw_y tape %s | hand h2 %s",
  fmt(r64.tape_wh), fmt(r64.hand_wh), fmt(r64.back_wh), fmt(r64.tape_wy), fmt(r64.hand_wy)))
print("example 8 note: the seed's 8.18880672682621 and 0.9092516899108887 are float32 results (its hand formula on "
  .. "float32 .item() values; PyTorch's tape printed 8.1888); in float64 dy2/dw_h = "
  .. fmt(r64.tape_wh) .. " and dy2/dw_y = tanh(2 tanh(1)) = " .. fmt(math.tanh(2 * math.tanh(1))))

-- the same derivative over a range of w_h, hand formula against the tape (float64)
local ws, hands, tapes, worst = {}, {}, {}, 0
for i = 0, 120 do
  local w = -3 + i * 0.05
  local r = tanh_example("float64", w)
  ws[#ws + 1], hands[#hands + 1], tapes[#tapes + 1] = w, r.hand_wh, r.tape_wh
  worst = math.max(worst, math.abs(r.hand_wh - r.tape_wh))
end
print(string.format("example 8 over w_h in [-3, 3] (121 points, float64): max |hand - tape| = %.3g", worst))

---------------------------------------------------------------- BPTT of a tanh RNN (In [26], [27])

-- The seed's VanillaRNN: Z = X_t W_x^T + B_x + H W_h^T + B_h, H = tanh(Z), Y_hat = H W_y^T + B_y,
-- J = sum_t (Y_t - Y_hat_t)^2, H_0 = 0; weights drawn as torch.nn.Linear draws them
-- (uniform in +-1/sqrt(fan_in)), in float64.
local N, U = opt.steps, opt.hidden
local function linear_init(out_f, in_f)
  local k = 1 / math.sqrt(in_f)
  return mg.uniform({ out_f, in_f }, -k, k, F64), mg.uniform({ out_f }, -k, k, F64)
end
local W_x, B_x = linear_init(U, 1)
local W_h, B_h = linear_init(U, U)
local W_y, B_y = linear_init(1, U)
local X = mg.arange(1, N + 1, F64):reshape(N, 1)                -- the seed's 1, 2, 3, ...
local Y = X * 5                                                 -- and 5, 10, 15, ...
local params = { W_x, B_x, W_h, B_h, W_y, B_y }
local names = { "dW_x", "dB_x", "dW_h", "dB_h", "dW_y", "dB_y" }

local tape = mg.GradientTape()
tape:watch(params)
local H, J, Hs = mg.zeros(1, U, F64), nil, {}
Hs[0] = H
for t = 1, N do
  local x = X:narrow(1, t, 1)                                   -- (1, 1)
  H = mg.tanh(mg.matmul(x, W_x:transpose(1, 2)) + B_x + mg.matmul(H, W_h:transpose(1, 2)) + B_h)
  Hs[t] = H
  local diff = Y:narrow(1, t, 1) - (mg.matmul(H, W_y:transpose(1, 2)) + B_y)
  J = J and J + (diff ^ 2):sum() or (diff ^ 2):sum()
end
local tape_grads = tape:gradient(J, params)

-- The seed's VanillaRNN.backward, with the dB_x it forgot; plain tensor arithmetic, no tape.
local function hand_bptt()
  local g = { mg.zeros(U, 1, F64), mg.zeros(U, F64), mg.zeros(U, U, F64), mg.zeros(U, F64),
              mg.zeros(1, U, F64), mg.zeros(1, F64) }
  local seed_dBx = 0                                            -- what the seed's code leaves
  local dH_next = mg.zeros(1, U, F64)
  for t = N, 1, -1 do
    local Hc, Hp, x = Hs[t], Hs[t - 1], X:narrow(1, t, 1)
    local y_hat = mg.matmul(Hc, W_y:transpose(1, 2)) + B_y
    local dY = (y_hat - Y:narrow(1, t, 1)) * 2                  -- dJ/dY_hat = 2 (Y_hat - Y)
    g[6] = g[6] + dY:reshape(1)
    g[5] = g[5] + mg.matmul(dY:transpose(1, 2), Hc)
    local dH = mg.matmul(dY, W_y) + dH_next
    local dZ = dH * (1 - Hc * Hc)                               -- through tanh
    g[4] = g[4] + dZ:reshape(U)
    g[2] = g[2] + dZ:reshape(U)                                 -- the seed's missing line
    g[3] = g[3] + mg.matmul(dZ:transpose(1, 2), Hp)
    g[1] = g[1] + mg.matmul(dZ:transpose(1, 2), x)
    dH_next = mg.matmul(dZ, W_h)
  end
  return g, seed_dBx
end
local hand, seed_dBx = mg.no_grad(hand_bptt)

print(string.format("BPTT tanh RNN: N = %d steps, %d hidden units, float64; J_sum = %s", N, U, fmt(J:item())))
local bptt_worst = 0
for k, name in ipairs(names) do
  local d = common.maxdiff(hand[k], tape_grads[k])
  bptt_worst = math.max(bptt_worst, d)
  print(string.format("BPTT %s: tape %s | hand %s | max |diff| = %.3g", name, vec(tape_grads[k]), vec(hand[k]), d))
end
print(string.format("BPTT max |hand - tape| over all parameters = %.3g", bptt_worst))
print(string.format("BPTT dB_x: seed's hand-written backward = %s (never accumulated) | corrected hand %s | tape %s | "
  .. "equals dB_h: max |dB_x - dB_h| = %.3g (both biases add into the same pre-activation)",
  fmt(seed_dBx), vec(hand[2]), vec(tape_grads[2]), common.maxdiff(tape_grads[2], tape_grads[4])))

---------------------------------------------------------------- picture

local title = string.format("Seed 002, y2 = 40 tanh(w_h tanh(0.5 w_h)): dy2/dw_h by hand and by the tape (float64)\n"
  .. "the curves coincide (max difference %.2g); the seed's point is w_h = 2", worst)
for _, ext in ipairs{ "png", "txt" } do
  local path = plot.lines({ hands, tapes }, { x = ws, labels = { "hand formula", "tape" }, title = title,
    xlabel = "w_h", ylabel = "dy2/dw_h", out = out .. "/manual_vs_autograd_tanh." .. ext,
    width = ext == "png" and 900 or 100, height = ext == "png" and 500 or 28 })
  common.wrote("dy2/dw_h against w_h (" .. ext .. ")", path)
end
