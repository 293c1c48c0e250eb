-- char_lstm.lua: a character-level language model in the style of char-rnn, trained on a
-- text every Debian system ships (/usr/share/common-licenses/GPL-3), then the analyses of
-- "Visualizing and Understanding Recurrent Networks" (Karpathy, Johnson and Fei-Fei, 2015).
--
-- The model: characters as one-hot rows (an Embedding with a one-hot input is the first
-- LSTM's kernel: the same product), two stacked LSTM layers (nn.RNN over nn.LSTMCell),
-- inverted dropout between the layers and before the head (masks drawn per batch, training
-- only), a Dense softmax head, sparse categorical cross-entropy over every position.
-- Truncated BPTT: the text is cut into 'batch' streams, read 'seq' characters at a time, the
-- final states carried (unrecorded) into the next chunk; RMSprop (or Adam) with global-norm
-- clipping. The last tenth of the text is the validation set. Checkpoints (every parameter
-- and the optimizer's state as .npy files, and a manifest) are written at each validation;
-- text sampled with a temperature is printed at the end.
--
-- Analyses on a validation batch:
--   gate saturation: for each unit of each layer, the fraction of timesteps its forget, input
--     and output gates are left-saturated (< 0.1) and right-saturated (> 0.9), drawn as the
--     paper's scatter plots (one point per unit); the gates are recomputed from the trace's
--     states and cross-checked against the trace's c_t and h_t;
--   ||dL/dh_t|| against the distance back in the text, for the loss at the last position.
--
--   moongrad scripts/char_lstm.lua [--out out] [--iters 600] [--quick] ...
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local nn, optim, plot = mg.nn, mg.optim, mg.plot

-- "--quick" alone means "--quick=true" (common.options takes a value for every option); with
-- it the defaults are the small ones of QUICK, and options given explicitly still win.
local QUICK = { units = 48, seq = 25, batch = 16, iters = 200, every = 100, sample_len = 120, lr = 1e-2, dropout = 0.0 }
local args, quick = {}, false
for i = 1, #arg do
  local nxt = arg[i + 1]
  if arg[i] == "--quick" and not (nxt == "true" or nxt == "false" or nxt == "1" or nxt == "0") then
    args[#args + 1] = "--quick=true"
  else
    args[#args + 1] = arg[i]
  end
  if args[#args] == "--quick=true" or (arg[i - 1] == "--quick" and (arg[i] == "true" or arg[i] == "1")) then
    quick = true
  end
end
local SPEC = {
  common.opt.out("out"),
  { "text", "/usr/share/common-licenses/GPL-3", "the training text" },
  common.opt.units(128),
  { "seq", 50, "characters per truncated-BPTT chunk", 2 },
  common.opt.batch(32), common.opt.iters(600),
  { "optimizer", "rmsprop", "rmsprop or adam" },
  common.opt.lr(2e-3),
  { "clip", 5.0, "global gradient-norm clip", 0 },
  { "dropout", 0.2, "dropout rate between layers", 0 },
  { "every", 100, "validate and checkpoint every this many iterations", 1 },
  { "temperature", 0.8, "sampling temperature", 0 },
  { "sample_len", 400, "characters to sample", 1 },
  common.opt.seed(1),
  { "quick", false, "small and fast (for specs): 48 units, seq 25, batch 16, 200 iterations, lr 0.01, no dropout" },
}
if quick then
  for _, o in ipairs(SPEC) do
    if QUICK[o[1]] ~= nil then o[2] = QUICK[o[1]] end
  end
end
local opt = common.options(args, "char_lstm.lua",
  "a char-rnn LSTM language model on the GPL-3 text; gate saturation and dL/dh_t against distance", SPEC)
common.check(opt.optimizer == "rmsprop" or opt.optimizer == "adam", "--optimizer must be rmsprop or adam, got %s",
  opt.optimizer)
common.check(opt.dropout < 1, "--dropout must be below 1, got %g", opt.dropout)
local out = common.outdir(opt.out)
mg.manual_seed(opt.seed)

---------------------------------------------------------------- the text

local f = io.open(opt.text, "rb")
common.check(f ~= nil, "cannot read the text %s", opt.text)
local text = f:read("a")
f:close()
local chars, index = {}, {}
for ch in text:gmatch(".") do
  if not index[ch] then chars[#chars + 1] = ch index[ch] = true end
end
table.sort(chars)
for i, ch in ipairs(chars) do index[ch] = i end
local V = #chars
local ids = {}
for i = 1, #text do ids[i] = index[text:sub(i, i)] end
local n_val = #ids // 10
local n_train = #ids - n_val
common.check(n_train >= opt.batch * (opt.seq + 1) and n_val >= opt.seq + 1, "the text is too short for these settings")

-- The unigram entropy of the training text in nats per character: what a model that knows only
-- the character frequencies scores; the LSTM must do better.
local counts = {}
for i = 1, n_train do counts[ids[i]] = (counts[ids[i]] or 0) + 1 end
local H = 0
for _, c in pairs(counts) do H = H - c / n_train * math.log(c / n_train) end
print(string.format("text: %s, %d characters, vocabulary %d; %d training, %d validation", opt.text, #ids, V,
  n_train, n_val))
print(string.format("unigram entropy of the training text = %.4f nats/char", H))

-- 'streams' streams over ids[first .. first + len - 1]: chunk(k) is the k-th (B, seq) block of
-- inputs and its targets (the next characters), wrapping around at the end.
local function streams(first, len, B, seq)
  local L = len // B
  local per = (L - 1) // seq                            -- chunks per stream
  return per, function(k)
    local pos = ((k - 1) % per) * seq
    local x, y = {}, {}
    for b = 1, B do
      local base = first + (b - 1) * L + pos
      local xr, yr = {}, {}
      for t = 1, seq do xr[t], yr[t] = ids[base + t - 1], ids[base + t] end
      x[b], y[b] = xr, yr
    end
    return mg.tensor(x), mg.tensor(y), pos == 0
  end
end

local classes = mg.arange(1, V + 1)
local function one_hot(x) return mg.eq(x:unsqueeze(-1), classes) end   -- (B, T) ids -> (B, T, V)

---------------------------------------------------------------- the model

local U = opt.units
local layers = { nn.RNN(nn.LSTMCell(V, U, { name = "lstm_1" })), nn.RNN(nn.LSTMCell(U, U, { name = "lstm_2" })) }
local head = nn.Dense(U, V, { name = "head" })
local params = {}
for _, l in ipairs { layers[1], layers[2], head } do
  for _, p in ipairs(l:parameters()) do params[#params + 1] = p end
end

-- Inverted dropout: zero a fraction 'rate' of x, scale the rest by 1 / (1 - rate).
local function dropout(x, rate)
  if rate == 0 then return x end
  return x * (mg.gt(mg.rand(x:shape()), rate) / (1 - rate))
end

-- The forward pass from 'states' ({ {h1, c1}, {h2, c2} } or nil): logits (B, T, V), the two
-- traces, and the final states.
local function forward(x, states, training)
  local h = one_hot(x)
  local traces, finals = {}, {}
  for k, layer in ipairs(layers) do
    if k > 1 and training then h = dropout(h, opt.dropout) end
    local tr = layer:trace(h, states and states[k])
    traces[k] = tr
    finals[k] = { tr.h[#tr.h], tr.c[#tr.c] }
    h = mg.stack(tr.outputs, 2)
  end
  if training then h = dropout(h, opt.dropout) end
  return head(h), traces, finals
end

local function loss_of(logits, y)
  return nn.sparse_categorical_crossentropy(logits, y, { from_logits = true })
end

-- States carried into the next chunk, unrecorded (truncated BPTT).
local function detach(finals)
  return mg.no_grad(function()
    local out = {}
    for k, s in ipairs(finals) do out[k] = { s[1]:clone(), s[2]:clone() } end
    return out
  end)
end

local val_chunks, val_chunk = streams(n_train + 1, n_val, math.min(opt.batch, n_val // (opt.seq + 1)), opt.seq)

-- The validation loss: every validation chunk in order, states carried, no dropout.
local function validate()
  local sum, states = 0, nil
  mg.no_grad(function()
    for k = 1, val_chunks do
      local x, y = val_chunk(k)
      local logits, _, finals = forward(x, states, false)
      sum = sum + loss_of(logits, y):item()
      states = finals
    end
  end)
  return sum / val_chunks
end

---------------------------------------------------------------- checkpoints

local ckdir = common.outdir(out .. "/char_lstm_checkpoint")

-- Every parameter and the optimizer's state as .npy files, and a manifest listing them.
local function checkpoint(o, iter, val)
  local lines = { string.format("iteration %d", iter), string.format("val_loss %.6f", val),
    "vocabulary " .. string.format("%q", table.concat(chars)) }
  for i, p in ipairs(params) do
    local file = string.format("param_%02d_%s.npy", i, p.name:gsub("[^%w_]", "_"))
    mg.save(p, ckdir .. "/" .. file)
    lines[#lines + 1] = "param " .. p.name .. " " .. file
  end
  local names = {}
  for k in pairs(o:state()) do names[#names + 1] = k end
  table.sort(names)
  local st = o:state()
  for _, k in ipairs(names) do
    if mg.is_tensor(st[k]) then
      local file = "optimizer_" .. k:gsub("[^%w_]", "_") .. ".npy"
      mg.save(st[k], ckdir .. "/" .. file)
      lines[#lines + 1] = "optimizer " .. k .. " " .. file
    else
      lines[#lines + 1] = string.format("optimizer %s = %.17g", k, st[k])
    end
  end
  local tmp = ckdir .. "/manifest.txt.tmp"
  local m = assert(io.open(tmp, "w"))
  m:write(table.concat(lines, "\n"), "\n")
  m:close()
  assert(os.rename(tmp, ckdir .. "/manifest.txt"))
end

---------------------------------------------------------------- training

local o = opt.optimizer == "adam" and optim.Adam(params, { lr = opt.lr, global_clipnorm = opt.clip })
          or optim.RMSprop(params, { lr = opt.lr, global_clipnorm = opt.clip })
local train_chunks, train_chunk = streams(1, n_train, opt.batch, opt.seq)
print(string.format("model: one-hot %d -> LSTM %d -> LSTM %d -> Dense %d (softmax); %d parameters; %s lr %g, "
  .. "global clipnorm %g, dropout %g; batch %d x %d characters, %d chunks per pass", V, U, U, V,
  (function() local n = 0 for _, p in ipairs(params) do n = n + p:numel() end return n end)(),
  opt.optimizer, opt.lr, opt.clip, opt.dropout, opt.batch, opt.seq, train_chunks))

local states, first_loss, last_val, vals = nil, nil, nil, {}
local losses, t0 = {}, mg.clock()
for iter = 1, opt.iters do
  local x, y, fresh = train_chunk(iter)
  if fresh then states = nil end                      -- a new pass over the text
  local tape = mg.GradientTape()
  local loss, finals = tape:record(function()
    local logits, _, fin = forward(x, states, true)
    return loss_of(logits, y), fin
  end)
  o:step(tape:gradient(loss, params))
  states = detach(finals)
  losses[iter] = loss:item()
  first_loss = first_loss or losses[iter]
  common.progress("train", iter, opt.iters, losses[iter])
  if iter % opt.every == 0 or iter == opt.iters then
    last_val = validate()
    vals[#vals + 1] = { iter, last_val }
    checkpoint(o, iter, last_val)
    print(string.format("iteration %d: validation loss %.4f nats/char (unigram entropy %.4f)", iter, last_val, H))
  end
end
local tail = 0
local k = math.min(20, #losses)
for i = #losses - k + 1, #losses do tail = tail + losses[i] end
tail = tail / k
print(string.format("training loss: first %.4f, mean of the last %d %.4f nats/char; %.1f s", first_loss, k, tail,
  mg.clock() - t0))
print(string.format("final validation loss = %.4f nats/char (unigram entropy %.4f)", last_val, H))
print("checkpoint (parameters, optimizer state, manifest.txt) in " .. ckdir)

---------------------------------------------------------------- sampling

-- Samples 'n' characters after 'primer', one step at a time through the cells.
local function sample(primer, n, temperature)
  local st = { layers[1].cell:initial_state(1), layers[2].cell:initial_state(1) }
  local outp = {}
  local function step(id)
    local h = one_hot(mg.tensor({ id }))              -- (1, V)
    for kk, layer in ipairs(layers) do
      h, st[kk] = layer.cell(h, st[kk])
    end
    return head(h)                                    -- (1, V) logits
  end
  return mg.no_grad(function()
    local logits
    for i = 1, #primer do logits = step(index[primer:sub(i, i)] or 1) end
    for _ = 1, n do
      local p = mg.softmax(logits * (1 / temperature), -1):reshape(-1):totable()
      local r, id = mg.rand(1):item(), V
      for c = 1, V do
        r = r - p[c]
        if r <= 0 then id = c break end
      end
      outp[#outp + 1] = chars[id]
      logits = step(id)
    end
    return primer .. table.concat(outp)
  end)
end
print(string.format("sample (temperature %g):", opt.temperature))
print(sample("The ", opt.sample_len, opt.temperature))
print("(end of sample)")

---------------------------------------------------------------- gate saturation

-- One recorded pass over a validation batch: its traces, and the loss at the last position
-- (one record call: a tape records until its record returns).
local ax, ay = val_chunk(1)
local T = ax:size(2)
local vtape = mg.GradientTape()
local traces, last_loss = vtape:record(function()
  local lg, trs = forward(ax, nil, false)
  return trs, loss_of(lg:narrow(2, T, 1), ay:narrow(2, T, 1))
end)

-- The gates of 'layer' over the trace 'tr' of its input 'input' (B, T, in): i, f, o as
-- (B*T, U) tensors, recomputed from x_t and h_(t-1) with the cell's weights (Keras order
-- i, f, c, o); checked against the trace's c_t and h_t.
local function gates(layer, input, tr)
  local cell = layer.cell
  local B, T = input:size(1), input:size(2)
  local hprev, cprev, hs, cs = {}, {}, {}, {}
  for t = 1, T do hprev[t], cprev[t], hs[t], cs[t] = tr.h[t - 1], tr.c[t - 1], tr.h[t], tr.c[t] end
  local function flat(list) return mg.stack(list, 2):reshape(B * T, -1) end
  return mg.no_grad(function()
    local z = mg.matmul(input:reshape(B * T, -1), cell.kernel) + mg.matmul(flat(hprev), cell.recurrent_kernel)
              + cell.bias
    local i, fg = mg.sigmoid(z:narrow(2, 1, U)), mg.sigmoid(z:narrow(2, U + 1, U))
    local g, og = mg.tanh(z:narrow(2, 2 * U + 1, U)), mg.sigmoid(z:narrow(2, 3 * U + 1, U))
    local c = fg * flat(cprev) + i * g
    local h = og * mg.tanh(c)
    local dc, dh = common.maxdiff(c, flat(cs)), common.maxdiff(h, flat(hs))
    common.check(dc < 1e-4 and dh < 1e-4, "recomputed gates disagree with the trace (|dc| %g, |dh| %g)", dc, dh)
    return { input = i, forget = fg, output = og }, math.max(dc, dh)
  end)
end

local saturation = {}
local layer_input = one_hot(ax)
for kk, layer in ipairs(layers) do
  local g, err = gates(layer, layer_input, traces[kk])
  print(string.format("layer %d: gates recomputed from the trace, max |diff| on c_t and h_t = %.2e", kk, err))
  saturation[kk] = {}
  for _, name in ipairs { "forget", "input", "output" } do
    local left = mg.lt(g[name], 0.1):mean(1):totable()      -- per unit
    local right = mg.gt(g[name], 0.9):mean(1):totable()
    saturation[kk][name] = { left = left, right = right }
    local ml, mr, nr = 0, 0, 0
    for u = 1, U do
      ml, mr = ml + left[u] / U, mr + right[u] / U
      if right[u] > 0.5 then nr = nr + 1 end
    end
    print(string.format("layer %d %-6s gate: mean fraction left-saturated %.3f, right-saturated %.3f; "
      .. "%d of %d units right-saturated more than half the time", kk, name, ml, mr, nr, U))
  end
  layer_input = mg.stack(traces[kk].outputs, 2)
end

---------------------------------------------------------------- dL/dh_t against distance

local hs = {}
for kk = 1, 2 do
  for t = 1, T do hs[#hs + 1] = traces[kk].h[t] end
end
local grads = vtape:gradient(last_loss, hs)
local norms, dist = { {}, {} }, {}
for kk = 1, 2 do
  for t = 1, T do
    local g = grads[(kk - 1) * T + t]
    norms[kk][T - t + 1] = math.log((g * g):sum(2):sqrt():mean():item() + 1e-30, 10)
  end
end
for d = 1, T do dist[d] = d - 1 end
common.check(norms[2][1] > norms[2][T], "||dL/dh_t|| does not fall with distance (%g at 0, %g at %d)",
  norms[2][1], norms[2][T], T - 1)
print(string.format("log10 mean ||dL/dh_t|| (loss at the last position), layer 2: %.3f at distance 0, "
  .. "%.3f at %d; layer 1: %.3f at 0, %.3f at %d", norms[2][1], norms[2][T], T - 1, norms[1][1], norms[1][T], T - 1))

---------------------------------------------------------------- pictures

local written = {}
local function picture(what, path) written[#written + 1] = { what, path } end
for kk = 1, 2 do
  for _, name in ipairs { "forget", "input", "output" } do
    local s = saturation[kk][name]
    picture(string.format("layer %d %s-gate saturation", kk, name), plot.scatter(s.left, s.right, {
      title = string.format("LSTM layer %d, %s gate: fraction of time each unit is saturated\n"
        .. "(one point per unit, %d validation sequences of %d characters)", kk, name, ax:size(1), T),
      xlabel = "fraction left-saturated (< 0.1)", ylabel = "fraction right-saturated (> 0.9)",
      out = string.format("%s/char_lstm_layer%d_%s_saturation.png", out, kk, name) }))
  end
end
picture("log10 ||dL/dh_t|| against distance back", plot.lines({ norms[1], norms[2] }, { x = dist,
  labels = { "layer 1", "layer 2" }, xlabel = "distance back in the text (characters)", ylabel = "log10 mean ||dL/dh_t||",
  title = string.format("Gradient of the loss at the last position w.r.t. each hidden state (T = %d)", T),
  out = out .. "/char_lstm_dL_dh_distance.png" }))
local vx, vy = {}, {}
for i, v in ipairs(vals) do vx[i], vy[i] = v[1], v[2] end
picture("training loss", plot.lines({ losses }, { labels = { "training loss (nats/char)" }, xlabel = "iteration",
  ylabel = "loss", title = string.format("char-LSTM training loss; unigram entropy %.3f", H),
  out = out .. "/char_lstm_loss.png" }))
for _, w in ipairs(written) do common.wrote(w[1], w[2]) end
