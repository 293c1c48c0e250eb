-- weight_histograms.lua (seed 000, "TensorBoard for grads and individual weights"): while a
-- small recurrent model trains, record the weights and their gradients, per layer and per
-- gate, and draw what TensorBoard's histogram dashboard shows: for every group of weights
-- the histogram of its values at each recorded iteration (x: iteration, y: value, colour:
-- share of the group in that bin), for the weights and for the gradients; and the paths of
-- individual weights and of their gradients over the iterations. The same goes to a TensorBoard
-- log (mg.summary, in OUT/tensorboard or --logdir): every group's weight and gradient histogram
-- at each snapshot, the first entry of each group and its gradient as scalars, the loss at
-- every iteration; open it with 'tensorboard --logdir OUT/tensorboard'.
--
-- The model: layer 1 is the seed's custom two-state cell as an nn.Cell,
--     h_t = relu(W_rec h_(t-1) + b_rec),  c_t = c_(t-1) - h_(t-1) + h_t,  o_t = sigmoid(W_in x_t + c_t)
-- (random initial states each batch: from zero states h would stay 0 and W_rec would get no
-- gradient); layer 2 an LSTM (gates i, f, c, o) reading layer 1's outputs; a Dense head on
-- the LSTM's last output. Task: predict the mean of input channel 1 over the sequence (MSE).
--
--   moongrad scripts/weight_histograms.lua [--out out] [--logdir DIR] [--iters 300] [--snapshots 30] ...
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local nn, plot = mg.nn, mg.plot

local opt, out = common.setup(arg, "weight_histograms.lua",
  "seed 000: histograms over iterations of weights and gradients per layer and gate, and individual weights", 0, {
  common.opt.logdir(""), common.opt.iters(300),
  { "snapshots", 30, "how many times the weights and gradients are recorded", 2 },
  { "bins", 30, "histogram bins", 2 },
  common.opt.units(16), common.opt.steps(10), common.opt.batch(32), common.opt.input(3), common.opt.lr(0.01),
})
local U, T = opt.units, opt.steps

---------------------------------------------------------------- model

local CustomRNN = nn.Cell {
  name = "custom_rnn",
  state_size = function(self) return { self.units, self.units } end,
  init = function(self, input_dim, units)
    self.units = units
    self.linear_rec = nn.Dense(units, units, { name = "custom_rnn/linear_rec" })
    self.linear_in = nn.Dense(input_dim, units, { use_bias = false, name = "custom_rnn/linear_in" })
  end,
  call = function(self, x, states)
    local old_h, old_c = states[1], states[2]
    local h = mg.relu(self.linear_rec(old_h))
    local c = old_c - old_h + h
    return mg.sigmoid(self.linear_in(x) + c), { h, c }
  end,
}

local cell1 = CustomRNN(opt.input, U)
local layer1 = nn.RNN(cell1, { return_sequences = true })
local cell2 = nn.LSTMCell(U, U, { name = "lstm" })
local layer2 = nn.RNN(cell2)
local head = nn.Dense(U, 1, { name = "head" })
local params = {}
for _, l in ipairs{ layer1, layer2, head } do
  for _, p in ipairs(l:parameters()) do params[#params + 1] = p end
end
local adam = mg.optim.Adam(params, { lr = opt.lr })

-- The groups drawn: per layer, each parameter split into its gates (columns of the LSTM's
-- kernel, recurrent kernel and bias in Keras order i, f, c, o).
local function whole(name, p) return { name = name, param = p, view = function(t) return t end } end
local function gate(name, p, k)
  return { name = name, param = p, view = function(t) return t:narrow(t:dim(), (k - 1) * U + 1, U) end }
end
local layers = {
  { slug = "custom_rnn", title = "layer 1, the seed's custom cell", rows = {
    { whole("W_rec (linear_rec kernel)", cell1.linear_rec.kernel) },
    { whole("b_rec (linear_rec bias)", cell1.linear_rec.bias) },
    { whole("W_in (linear_in kernel)", cell1.linear_in.kernel) } } },
  { slug = "lstm", title = "layer 2, LSTM", rows = {} },
  { slug = "head", title = "layer 3, Dense head", rows = {
    { whole("kernel", head.kernel) }, { whole("bias", head.bias) } } },
}
for _, pn in ipairs{ { "kernel", cell2.kernel }, { "recurrent kernel", cell2.recurrent_kernel }, { "bias", cell2.bias } } do
  local row = {}
  for k, g in ipairs{ "i", "f", "c", "o" } do row[k] = gate(pn[1] .. ", gate " .. g, pn[2], k) end
  layers[2].rows[#layers[2].rows + 1] = row
end
local index = {}
for i, p in ipairs(params) do index[p] = i end

---------------------------------------------------------------- training with snapshots

-- The TensorBoard log: tags '<weights|gradients>/<layer>/<group>' (histograms) and
-- 'individual_<weights|gradients>/<layer>/<group>[1]' (scalars); TensorBoard groups the tags
-- by their first component.
local logdir = opt.logdir ~= "" and opt.logdir or (out .. "/tensorboard")
local tb = mg.summary.writer(logdir)
local function tag_of(layer, grp) return layer.slug .. "/" .. grp.name:gsub("[^%w]+", "_"):gsub("_$", "") end
local function log_snapshot(it, grads)
  for _, layer in ipairs(layers) do
    for _, row in ipairs(layer.rows) do
      for _, grp in ipairs(row) do
        local tag = tag_of(layer, grp)
        local w, g = grp.view(grp.param), grp.view(grads[index[grp.param]])
        tb:histogram("weights/" .. tag, w, it)
        tb:histogram("gradients/" .. tag, g, it)
        tb:scalar("individual_weights/" .. tag .. "[1]", w:reshape(-1)[1]:item(), it)
        tb:scalar("individual_gradients/" .. tag .. "[1]", g:reshape(-1)[1]:item(), it)
      end
    end
  end
end

local function batch()
  local x = mg.randn(opt.batch, T, opt.input)
  return x, x:select(3, 1):mean(2, true)               -- (B, 1): the mean of channel 1
end

local every = math.max(1, opt.iters // opt.snapshots)
local snaps = {}                                       -- { iter, weights = {values}, grads = {values} }
local losses = {}
for it = 1, opt.iters do
  local x, y = batch()
  local tape = mg.GradientTape()
  local h0, c0 = mg.randn(opt.batch, U), mg.randn(opt.batch, U)
  local o1 = layer1(x, { h0, c0 })
  local loss = nn.mse(head(layer2(o1)), y)
  local grads = tape:gradient(loss, params)
  if it == 1 or it % every == 0 or it == opt.iters then
    local s = { iter = it, w = {}, g = {} }
    for li, layer in ipairs(layers) do
      for ri, row in ipairs(layer.rows) do
        for ci, grp in ipairs(row) do
          local key = li .. "/" .. ri .. "/" .. ci
          s.w[key] = common.values(grp.view(grp.param))
          s.g[key] = common.values(grp.view(grads[index[grp.param]]))
        end
      end
    end
    snaps[#snaps + 1] = s
    log_snapshot(it, grads)
  end
  adam:step(grads)
  losses[it] = loss:item()
  tb:scalar("loss", losses[it], it)
  common.progress("training", it, opt.iters, losses[it])
end
local tenth = math.max(1, opt.iters // 10)
local function mean(lo, hi)
  local s = 0
  for i = lo, hi do s = s + losses[i] end
  return s / (hi - lo + 1)
end
print(string.format("training loss: first %d iterations mean %.6f, last %d iterations mean %.6f",
  tenth, mean(1, tenth), tenth, mean(opt.iters - tenth + 1, opt.iters)))
print(string.format("recorded %d snapshots (iterations 1, every %d, and %d)", #snaps, every, opt.iters))

---------------------------------------------------------------- histograms over iterations

-- counts[bin][snapshot] (as shares of the group) of one group over all snapshots, with the
-- bin range lo..hi shared by the snapshots: min..max for weights; for gradients, whose few
-- large values would squeeze the rest into one bin, the 1st..99th percentile, the edge bins
-- also holding the values beyond.
local function histograms(key, which)
  local all = {}
  for _, s in ipairs(snaps) do
    for _, v in ipairs(s[which][key]) do all[#all + 1] = v end
  end
  table.sort(all)
  local lo, hi = all[1], all[#all]
  if which == "g" then
    lo, hi = all[math.max(1, math.floor(#all * 0.01))], all[math.max(1, math.ceil(#all * 0.99))]
  end
  if lo == hi then lo, hi = lo - 0.5, hi + 0.5 end
  local nb, m = opt.bins, {}
  for b = 1, nb do
    m[b] = {}
    for j = 1, #snaps do m[b][j] = 0 end
  end
  for j, s in ipairs(snaps) do
    local vals = s[which][key]
    for _, v in ipairs(vals) do
      local b = math.max(1, math.min(nb, math.floor((v - lo) / (hi - lo) * nb) + 1))
      m[b][j] = m[b][j] + 1 / #vals
    end
  end
  return m, lo, hi
end

local checked = 0
local function check_shares(m, key)                    -- every snapshot's shares sum to 1
  for j = 1, #snaps do
    local s = 0
    for b = 1, #m do s = s + m[b][j] end
    common.check(math.abs(s - 1) < 1e-9, "histogram %s, snapshot %d: shares sum to %g", key, j, s)
  end
  checked = checked + 1
end

-- One PNG per layer and kind ("w" weights, "g" gradients): a grid of panels, a row per
-- parameter and a column per gate, each the histograms over iterations of one group.
local function histogram_grid(li, which)
  local layer = layers[li]
  local nr, nc = #layer.rows, 0
  for _, row in ipairs(layer.rows) do nc = math.max(nc, #row) end
  local what = which == "w" and "weights" or "gradients"
  -- the title in lines that fit the narrowest canvas (700 pixels); each panel's colour box
  -- gives the share its colours stand for (the scale is each panel's own: cbrange [0:*])
  local lines = { string.format("set multiplot layout %d,%d rowsfirst title %s", nr, nc, common.gstr(string.format(
    "Histograms over iterations of the %s of %s\n(x: iteration, y: value, colour: share of the group in the bin%s)",
    what, layer.title, which == "g" and ";\nbins span the 1st to 99th percentile, the edge bins hold the rest" or ""))),
    "set palette defined (0 '#ffffff', 0.15 '#c6dbef', 0.5 '#4292c6', 1 '#08306b')",
    "set cbrange [0:*]", "set cblabel 'share'", "set rmargin 11", "set tics out nomirror",
    string.format("set xtics %d", math.max(1, (function()
      local step = opt.iters / 3
      local p = 10 ^ math.floor(math.log(step, 10))
      for _, k in ipairs{ 1, 2, 5, 10 } do if k * p >= step then return math.floor(k * p) end end
      return math.floor(step)
    end)())) }
  local data = {}
  for ri, row in ipairs(layer.rows) do
    for ci = 1, nc do
      local grp = row[ci]
      if grp then
        local key = li .. "/" .. ri .. "/" .. ci
        local m, lo, hi = histograms(key, which)
        check_shares(m, key)
        local name = "h" .. ri .. "_" .. ci
        data[name] = m
        local x0, x1 = snaps[1].iter, snaps[#snaps].iter
        local dx = (#snaps > 1) and (x1 - x0) / (#snaps - 1) or 1
        local dy = (hi - lo) / opt.bins
        lines[#lines + 1] = "set title " .. common.gstr(string.format("%s (%d values)", grp.name, #snaps[1][which][key]))
        lines[#lines + 1] = "set xlabel " .. common.gstr(ri == nr and "iteration" or "")
        lines[#lines + 1] = "set ylabel " .. common.gstr(ci == 1 and what:sub(1, -2) .. " value" or "")
        lines[#lines + 1] = string.format("set xrange [%.9g:%.9g]\nset yrange [%.9g:%.9g]", x0 - dx / 2, x1 + dx / 2, lo, hi)
        lines[#lines + 1] = string.format("plot $%s matrix using (%.9g + $1 * %.9g):(%.9g + ($2 + 0.5) * %.9g):3 with image notitle",
          name, x0, dx, lo, dy)
      else
        lines[#lines + 1] = "set multiplot next"
      end
    end
  end
  lines[#lines + 1] = "unset multiplot"
  local path = string.format("%s/weight_histograms_%s_%s.png", out, layer.slug, what)
  return plot.gnuplot(table.concat(lines, "\n"), data, { out = path,
    width = math.max(700, 420 * nc), height = math.max(420, 260 * nr + 80) })
end

local written = {}
for li, layer in ipairs(layers) do
  for _, which in ipairs{ "w", "g" } do
    written[#written + 1] = { string.format("histograms over iterations, %s, %s (png)", layer.title,
      which == "w" and "weights" or "gradients"), histogram_grid(li, which) }
  end
end
print(string.format("histograms: %d groups x 2 (weights, gradients), every snapshot's shares sum to 1", checked // 2))

-- One line per group at the first and at the last snapshot: the spread (std) and size
-- (|mean|) of a group of values; a group of one value (a Dense head's bias) has no spread,
-- so its value itself is printed.
local function std(v)
  local m, s = 0, 0
  for _, x in ipairs(v) do m = m + x end
  m = m / #v
  for _, x in ipairs(v) do s = s + (x - m) ^ 2 end
  return math.sqrt(s / #v), math.abs(m)
end
local function spread(what, a, b)
  if #a == 1 then return string.format("%s %.4g -> %.4g", what, a[1], b[1]) end
  local sa, ma = std(a)
  local sb, mb = std(b)
  return string.format("%s std %.4g -> %.4g, |mean| %.4g -> %.4g", what, sa, sb, ma, mb)
end
for li, layer in ipairs(layers) do
  for ri, row in ipairs(layer.rows) do
    for ci, grp in ipairs(row) do
      local key = li .. "/" .. ri .. "/" .. ci
      local a, b = snaps[1], snaps[#snaps]
      print(string.format("%s, %s: %s; %s (iteration %d -> %d)", layer.title, grp.name,
        spread("weight", a.w[key], b.w[key]), spread("gradient", a.g[key], b.g[key]), a.iter, b.iter))
    end
  end
end

---------------------------------------------------------------- individual weights

-- Per layer, the first entry of each group: its value and its gradient at every snapshot.
-- gnuplot repeats its colours after 8 lines, so a layer with more groups (the LSTM) gets one
-- picture per parameter.
local iters = {}
for j, s in ipairs(snaps) do iters[j] = s.iter end
local function slugify(s) return (s:gsub("[^%w]+", "_"):gsub("_$", ""):lower()) end
for li, layer in ipairs(layers) do
  local n, chunks = 0, {}
  for _, row in ipairs(layer.rows) do n = n + #row end
  for ri, row in ipairs(layer.rows) do
    if n <= 8 then
      chunks[1] = chunks[1] or { name = "", title = "", members = {} }
      for ci in ipairs(row) do table.insert(chunks[1].members, { ri, ci }) end
    else
      local pname = row[1].name:match("^(.-),") or row[1].name
      local c = { name = slugify(pname) .. "_", title = ", " .. pname, members = {} }
      for ci in ipairs(row) do c.members[#c.members + 1] = { ri, ci } end
      chunks[#chunks + 1] = c
    end
  end
  for _, chunk in ipairs(chunks) do
    for _, which in ipairs{ "w", "g" } do
      local ys, labels = {}, {}
      for _, rc in ipairs(chunk.members) do
        local key = li .. "/" .. rc[1] .. "/" .. rc[2]
        local path = {}
        for j, s in ipairs(snaps) do path[j] = s[which][key][1] end
        ys[#ys + 1], labels[#labels + 1] = path, layer.rows[rc[1]][rc[2]].name .. " [1]"
      end
      local what = which == "w" and "weights" or "gradients"
      for _, ext in ipairs{ "png", "txt" } do
        local p = plot.lines(ys, { x = iters, labels = labels,
          title = string.format("Individual %s over iterations: %s%s (the first entry of each group)", what,
            layer.title, chunk.title),
          xlabel = "iteration", ylabel = which == "w" and "weight value" or "gradient",
          width = ext == "png" and 1100 or 120, height = ext == "png" and 500 or 30,
          out = string.format("%s/weight_histograms_%s_%sindividual_%s.%s", out, layer.slug, chunk.name, what, ext) })
        written[#written + 1] = { string.format("individual %s, %s%s (%s)", what, layer.title, chunk.title, ext), p }
      end
    end
  end
end
for _, w in ipairs(written) do common.wrote(w[1], w[2]) end
tb:close()
print(string.format("TensorBoard log: %s (tensorboard --logdir %s)", tb:path(), logdir))
