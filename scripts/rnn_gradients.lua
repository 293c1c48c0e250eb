-- rnn_gradients.lua (seed 004, "See RNN"): gradients of the loss with respect to an RNN
-- layer's outputs, per timestep, for LSTM, GRU and SimpleRNN, uni- and bidirectional, and
-- the layers' gate-wise weights with their gradients.
--
-- Every model is the seed's shape: input (16, T, channels) -> RNN layer 1
-- (return_sequences=true) -> RNN layer 2 (return_sequences=false) -> Dense(1, sigmoid),
-- binary cross-entropy, Adam, trained on one fixed batch as the seed's train_on_batch loop.
-- The label of a sequence is whether channel 1 sums to more than 0 over its first quarter,
-- so the answer lies early in the sequence. The gradients come from one tape:gradient call
-- per iteration that asks for the parameters AND the two layer outputs:
--   layer 1's output (B, T, C): the seed's grads for return_sequences=True (layer_idx=1),
--   layer 2's output (B, C):    return_sequences=False (layer_idx=2),
-- and are drawn as the seed's EX 1-7 (sizes scaled down by default: --units is the seed's
-- 6, --big_units stands for its 256, --iters and --long_iters for its 20 and 200):
--   EX 1  one sample, uni-LSTM, units, iters:        features_1d(grads[1])
--   EX 2  all samples, the same model:               features_1d(grads), features_2d(grads)
--   EX 3  the same model after long_iters:           features_1d, features_2d
--   EX 4  uni-LSTM, big_units, long_iters:           features_1d(grads[1]), grads[:, :, 1] as a heatmap
--   EX 5  bi-GRU, big_units, long_iters:             features_2d(grads[1], reflect_half=true)
--   EX 6  uni-LSTM, units, long_iters, layer 2:      features_0d(grads)
--   EX 7  LSTM vs GRU vs SimpleRNN, big_units:       features_2d(grads), one picture each
-- plus every kind x direction at big_units (features_2d, features_0d) and, for each of those,
-- layer 1's kernel, recurrent kernel and bias split by gate, with their gradients.
--
--   moongrad scripts/rnn_gradients.lua [--out out] [--iters 20] [--long_iters 200] ...
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local nn, plot = mg.nn, mg.plot

local opt, out = common.setup(arg, "rnn_gradients.lua",
  "seed 004: gradients w.r.t. RNN layer outputs (features_1d/2d/0d, EX 1-7) and gate-wise weights", 4, {
  common.opt.iters(20),
  { "long_iters", 200, "iterations of the long training (the seed's 200)", 1 },
  { "units", 6, "units of the small models (the seed's 6)", 2 },
  { "big_units", 32, "units of the large models (the seed's 256)", 2 },
  common.opt.batch(16), common.opt.steps(20, 4), common.opt.lr(0.002),
  { "channels", 8, "input channels", 1 },
})
local B, T = opt.batch, opt.steps

-- The fixed training batch: label 1 when channel 1 sums to more than 0 over the first quarter.
local X = mg.randn(B, T, opt.channels)
local Y = mg.gt(X:narrow(2, 1, T // 4):select(3, 1):sum(2, true), 0):to(X.dtype)   -- (B, 1)

---------------------------------------------------------------- models

local GATES = { LSTM = { "i", "f", "c", "o" }, GRU = { "z", "r", "h" }, SimpleRNN = { "h" } }

-- A model: layer 1 (sequences), layer 2 (last output), sigmoid head; 'bidir' wraps both RNNs.
local function make_model(kind, units, bidir)
  local function layer(nin, rs, name)
    local rnn = nn.RNN(nn[kind .. "Cell"](nin, units, { name = name }), { return_sequences = rs })
    return bidir and nn.Bidirectional(rnn) or rnn
  end
  local width = bidir and 2 * units or units
  local m = { kind = kind, units = units, bidir = bidir, width = width,
    l1 = layer(opt.channels, true, kind:lower() .. "_1"),
    l2 = layer(width, false, kind:lower() .. "_2"),
    head = nn.Dense(width, 1, { activation = "sigmoid", name = "head" }) }
  m.params = {}
  for _, l in ipairs{ m.l1, m.l2, m.head } do
    for _, p in ipairs(l:parameters()) do m.params[#m.params + 1] = p end
  end
  m.adam = mg.optim.Adam(m.params, { lr = opt.lr })
  m.iters, m.losses = 0, {}
  m.name = string.format("%s%s (%d units)", bidir and "bi-" or "", kind, units)
  m.slug = string.format("%s%s_%du", bidir and "bi" or "", kind:lower(), units)
  return m
end

-- One iteration on the fixed batch: the loss, the gradients w.r.t. both layer outputs and
-- the parameters (one tape:gradient call), then an Adam step. Returns the loss and the
-- gradients before the step: { out1 = (B, T, C), out2 = (B, C), params = {...} }.
local function train_step(m)
  local tape = mg.GradientTape()
  local o1 = m.l1(X)
  local o2 = m.l2(o1)
  local loss = nn.binary_cross_entropy(m.head(o2), Y)
  local sources = { o1, o2 }
  for _, p in ipairs(m.params) do sources[#sources + 1] = p end
  local g = tape:gradient(loss, sources)
  local pg = table.move(g, 3, #g, 1, {})
  m.adam:step(pg)
  m.iters = m.iters + 1
  m.losses[#m.losses + 1] = loss:item()
  return loss:item(), { out1 = g[1], out2 = g[2], params = pg }
end

-- Trains 'm' until it has done 'n' iterations; returns the gradients of the last one.
local function train(m, n)
  local g
  while m.iters < n do
    local loss
    loss, g = train_step(m)
    common.progress(m.name, m.iters, n, loss)
  end
  return g
end

local function report(m)
  local l = m.losses
  print(string.format("%s: %d iterations, loss first %.6f, last %.6f", m.name, m.iters, l[1], l[#l]))
end

---------------------------------------------------------------- pictures

local written = {}
local function wrote(what, path) written[#written + 1] = { what, path } end

local function size(ext, w, h, tw, th)
  if ext == "png" then return w, h end
  return tw, th
end

-- A symmetric colour range +-q, q the 98th percentile of |g| (a few large values, usually
-- at the last timestep, would otherwise wash the rest out, as the seed's fixed norm does).
local function robust_norm(g)
  local v = common.values(g:abs())
  table.sort(v)
  local q = v[math.max(1, math.ceil(#v * 0.98))]
  if q == 0 then q = 1 end
  return { -q, q }
end

local function draw(kind, base, what, data, opts)
  for _, ext in ipairs{ "png", "txt" } do
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.out = string.format("%s/rnn_gradients_%s.%s", out, base, ext)
    local path = plot[kind](data, o)
    wrote(what .. " (" .. ext .. ")", path)
  end
end

local function features_1d(base, what, g, n_rows, title, w, h)
  local tw = math.max(100, 24 * math.ceil(g:size(-1) / n_rows))
  local o = { n_rows = n_rows, name = "dL/d(output)", title = title }
  for _, ext in ipairs{ "png", "txt" } do
    o.width, o.height = size(ext, w or 1200, h or 700, tw, 14 * n_rows + 4)
    o.out = string.format("%s/rnn_gradients_%s.%s", out, base, ext)
    wrote(what .. " (" .. ext .. ")", plot.features_1d(g, o))
  end
end

local function features_2d(base, what, g, n_rows, title, reflect)
  local norm = robust_norm(g)
  local nb = g:dim() == 3 and g:size(1) or 1
  local nc = math.ceil(nb / n_rows)
  local o = { n_rows = n_rows, name = "dL/d(output)", title = title, norm = norm, reflect_half = reflect }
  for _, ext in ipairs{ "png", "txt" } do
    -- png: room for the colour box; text: features_2d's own size, which gives every
    -- timestep and channel a character
    o.width, o.height = size(ext, math.max(900, 260 * nc + 120), math.max(550, 240 * n_rows), nil, nil)
    o.out = string.format("%s/rnn_gradients_%s.%s", out, base, ext)
    wrote(what .. " (" .. ext .. ")", plot.features_2d(g, o))
  end
  return norm
end

local function features_0d(base, what, g, title)
  draw("features_0d", base, what, g, { name = "dL/d(output)", title = title })
end

-- Layer 1's weights (or their gradients) as one matrix: the gates side by side, one
-- separator column between them; kernel rows, a separator row, recurrent-kernel rows, a
-- separator row, bias rows (GRU with reset_after: input and recurrent bias). Returns the
-- matrix (nested rows, separators NaN) and its layout: { cols = {{gate, first, last}},
-- rows = {{block, first, last}} }.
local function gate_matrix(cell, gates, tensors)
  local u, nin = cell.units, cell.input_size
  local blocks = { { "kernel", tensors[1]:reshape(nin, -1) }, { "recurrent kernel", tensors[2]:reshape(u, -1) } }
  if tensors[3] then
    local b = tensors[3]
    blocks[3] = { "bias", b:dim() == 1 and b:reshape(1, -1) or b }
  end
  local width = #gates * (u + 1) - 1
  local function blank()
    local r = {}
    for j = 1, width do r[j] = 0 / 0 end
    return r
  end
  local m, layout = {}, { cols = {}, rows = {} }
  for bi, blk in ipairs(blocks) do
    if bi > 1 then m[#m + 1] = blank() end
    local first = #m + 1
    for _, src in ipairs(blk[2]:totable()) do
      local row = blank()
      for gi = 1, #gates do
        for j = 1, u do row[(gi - 1) * (u + 1) + j] = src[(gi - 1) * u + j] end
      end
      m[#m + 1] = row
    end
    layout.rows[bi] = { blk[1], first, #m }
  end
  for gi, g in ipairs(gates) do
    local c0 = (gi - 1) * (u + 1) + 1
    layout.cols[gi] = { g, c0, c0 + u - 1 }
  end
  return m, layout
end

-- The PNG of a gate matrix through raw gnuplot: gate names under their column blocks,
-- matrix names beside their row blocks, black separators, a symmetric blue-white-red scale.
local function gate_png(m, layout, title, lim, path)
  local R, C = #m, #m[1]
  local data = {}
  for r = 1, R do
    local row = {}
    for c = 1, C do row[c] = m[r][c] == m[r][c] and m[r][c] or 0 end
    data[r] = row
  end
  local xt, yt, sep = {}, {}, {}
  for i, c in ipairs(layout.cols) do
    xt[i] = string.format('"%s" %g', c[1], (c[2] + c[3]) / 2)
    if i > 1 then sep[#sep + 1] = string.format("set object rect from %g,0.5 to %g,%g fc rgb 'black' fs solid front",
      c[2] - 1.5, c[2] - 0.5, R + 0.5) end
  end
  for i, r in ipairs(layout.rows) do
    yt[i] = string.format('"%s" %g', r[1], (r[2] + r[3]) / 2)
    if i > 1 then sep[#sep + 1] = string.format("set object rect from 0.5,%g to %g,%g fc rgb 'black' fs solid front",
      r[2] - 1.5, C + 0.5, r[2] - 0.5) end
  end
  local script = table.concat({
    "set title " .. common.gstr(title),
    "set palette defined (0 '#0000ff', 0.5 '#ffffff', 1 '#ff0000')",
    string.format("set cbrange [%.9g:%.9g]", -lim, lim),
    string.format("set xrange [0.5:%g]", C + 0.5), string.format("set yrange [%g:0.5]", R + 0.5),
    "set xtics (" .. table.concat(xt, ", ") .. ") scale 0",
    "set ytics (" .. table.concat(yt, ", ") .. ") scale 0",
    "set xlabel 'gate (each block: its units 1..n left to right)'",
    "set ylabel 'matrix (rows: input features, recurrent units, bias)'",
    table.concat(sep, "\n"),
    "plot $m matrix using ($1+1):($2+1):3 with image notitle",
  }, "\n")
  return plot.gnuplot(script, { m = data }, { out = path,
    width = math.min(1600, math.max(900, 8 * C + 300)), height = math.min(1000, math.max(450, 10 * R + 200)) })
end

-- Heatmaps of layer 1's (forward) cell weights and of their gradients, gate by gate.
local function gate_pictures(m, grads)
  local l1 = m.bidir and m.l1.forward_layer or m.l1
  local params = l1:parameters()
  local index = {}
  for i, p in ipairs(m.params) do index[p] = i end
  local gp = {}
  for i, p in ipairs(params) do gp[i] = grads.params[index[p]] end
  local gates = GATES[m.kind]
  for _, which in ipairs{ { "weights", params }, { "gradients", gp } } do
    local mat, layout = gate_matrix(l1.cell, gates, which[2])
    local vals = {}
    for _, t in ipairs(which[2]) do vals[#vals + 1] = t:abs():max():item() end
    local lim = which[1] == "weights" and math.max(table.unpack(vals))
      or robust_norm(mg.cat((function()
        local flat = {}
        for i, t in ipairs(which[2]) do flat[i] = t:reshape(-1) end
        return flat
      end)(), 1))[2]
    if lim == 0 then lim = 1 end
    local head = string.format("%s, layer 1%s: %s by gate (%s) after %d iterations",
      m.name, m.bidir and " forward direction" or "", which[1] == "weights" and "weights" or "gradients dL/dW",
      table.concat(gates, ", "), m.iters)
    local base = string.format("%s/rnn_gradients_%s_gates_%s", out, m.slug, which[1])
    local cols, rows = {}, {}
    for i, c in ipairs(layout.cols) do cols[i] = string.format("%s %d-%d", c[1], c[2], c[3]) end
    for i, r in ipairs(layout.rows) do rows[i] = string.format("%s %d-%d", r[1], r[2], r[3]) end
    wrote(string.format("%s gate-wise %s (png)", m.name, which[1]),
      gate_png(mat, layout, string.format("%s\ncolour range +-%.3g (%s)", head, lim,
        which[1] == "weights" and "max |w|" or "98th percentile of |dL/dW|"), lim, base .. ".png"))
    wrote(string.format("%s gate-wise %s (txt)", m.name, which[1]),
      plot.heatmap(mat, { norm = { -lim, lim }, cmap = "bwr", out = base .. ".txt",
        title = head .. "\ncolumns by gate: " .. table.concat(cols, ", ") .. "; rows: " .. table.concat(rows, ", "),
        xlabel = "column (gates left to right)", ylabel = "row",
        width = math.min(200, math.max(100, 2 * #mat[1] + 30)), height = math.min(80, math.max(30, #mat + 10)) }))
  end
end

---------------------------------------------------------------- EX 1 - 3, 6: small uni-LSTM

print(string.format("seed 004: batch %d, %d timesteps, %d channels; label = channel 1 summed over the first %d steps > 0",
  B, T, opt.channels, T // 4))
local small = make_model("LSTM", opt.units, false)
local g = train(small, opt.iters)
report(small)
print(string.format("%s: dL/d(layer 1 output) shape %s, dL/d(layer 2 output) shape %s",
  small.name, common.shape(g.out1), common.shape(g.out2)))
local rows_small = opt.units % 2 == 0 and 2 or 1
features_1d("ex1_lstm_one_sample_features_1d", "EX 1: one sample, uni-LSTM, features_1d",
  g.out1:select(1, 1), rows_small,
  string.format("EX 1: dL/d(layer 1 output) of sample 1 against timestep, one panel per channel (%s, %d iterations)",
    small.name, small.iters))
features_1d("ex2_lstm_features_1d", "EX 2: all samples, uni-LSTM, features_1d", g.out1, rows_small,
  string.format("EX 2: dL/d(layer 1 output) against timestep, one line per sample, one panel per channel (%s, %d iterations)",
    small.name, small.iters))
local n_rows_b = B % 4 == 0 and 4 or 1
features_2d("ex2_lstm_features_2d", "EX 2: all samples, uni-LSTM, features_2d", g.out1, n_rows_b,
  string.format("EX 2: dL/d(layer 1 output), channels x timesteps per sample (%s, %d iterations)", small.name, small.iters))

g = train(small, opt.long_iters)
report(small)
features_1d("ex3_lstm_features_1d", "EX 3: all samples, uni-LSTM after long training, features_1d", g.out1, rows_small,
  string.format("EX 3: dL/d(layer 1 output) against timestep, one line per sample (%s, %d iterations)", small.name, small.iters))
features_2d("ex3_lstm_features_2d", "EX 3: all samples, uni-LSTM after long training, features_2d", g.out1, n_rows_b,
  string.format("EX 3: dL/d(layer 1 output), channels x timesteps per sample (%s, %d iterations)", small.name, small.iters))
features_0d("ex6_lstm_features_0d", "EX 6: return_sequences=false, features_0d", g.out2,
  string.format("EX 6: dL/d(layer 2 output), return_sequences=false: one point per sample and channel (%s, %d iterations)",
    small.name, small.iters))

---------------------------------------------------------------- every kind and direction, big

local big = {}
for _, kind in ipairs{ "LSTM", "GRU", "SimpleRNN" } do
  for _, bidir in ipairs{ false, true } do
    local m = make_model(kind, opt.big_units, bidir)
    local gm = train(m, opt.long_iters)
    report(m)
    big[#big + 1] = { m = m, g = gm }
    -- the unidirectional three are EX 7 (LSTM vs GRU vs SimpleRNN)
    local ex = bidir and "" or "EX 7: "
    local norm = features_2d((bidir and "" or "ex7_") .. m.slug .. "_features_2d", ex .. m.name .. ": features_2d",
      gm.out1, n_rows_b, string.format("%sdL/d(layer 1 output) of %s after %d iterations: channels x timesteps per sample%s",
        ex, m.name, m.iters, bidir and " (channels 1-" .. m.units .. " forward, the rest backward)" or ""), bidir)
    print(string.format("%s: features_2d norm = (%.3g, %.3g)", m.name, norm[1], norm[2]))
    features_0d(m.slug .. "_features_0d", m.name .. ": features_0d", gm.out2,
      string.format("dL/d(layer 2 output) of %s (return_sequences=false) after %d iterations", m.name, m.iters))
    gate_pictures(m, gm)
  end
end

-- EX 4: uni-LSTM, big: one sample's channels, and channel 1 over samples and timesteps
local lstm_big = big[1]
features_1d("ex4_lstm_big_features_1d", "EX 4: uni-LSTM big, sample 1, features_1d", lstm_big.g.out1:select(1, 1),
  opt.big_units % 4 == 0 and 4 or 1,
  string.format("EX 4: dL/d(layer 1 output) of sample 1 against timestep, one panel per channel (%s, %d iterations)",
    lstm_big.m.name, lstm_big.m.iters), 1400, 900)
draw("heatmap", "ex4_lstm_big_channel_1", "EX 4: uni-LSTM big, channel 1 over samples and timesteps",
  lstm_big.g.out1:select(3, 1), { norm = robust_norm(lstm_big.g.out1:select(3, 1)), xlabel = "timestep", ylabel = "sample",
  title = string.format("EX 4: dL/d(layer 1 output) of channel 1: samples x timesteps (%s, %d iterations)",
    lstm_big.m.name, lstm_big.m.iters) })

-- EX 5: bi-GRU, one sample, backward half reflected
local bigru = big[4]
features_2d("ex5_bigru_features_2d", "EX 5: bi-GRU, sample 1, features_2d reflect_half", bigru.g.out1:select(1, 1), 1,
  string.format("EX 5: dL/d(layer 1 output) of sample 1, %s after %d iterations: channels 1-%d forward, %d-%d backward",
    bigru.m.name, bigru.m.iters, opt.big_units, opt.big_units + 1, 2 * opt.big_units), true)

for _, w in ipairs(written) do common.wrote(w[1], w[2]) end
