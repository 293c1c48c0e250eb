-- char_lstm.lua: a character-level language model in the style of char-rnn, trained on a
-- text every Debian system ships (/usr/share/common-licenses/GPL-3), then the analyses of
-- "Visualizing and Understanding Recurrent Networks" (Karpathy, Johnson and Fei-Fei, 2015).
--
-- The model, as a Keras user writes it (an nn.Sequential of the library's layers):
--   Embedding(V, embed) -> LSTM(units, return_sequences, stateful) -> Dropout
--   -> LSTM(units, return_sequences, stateful) -> Dropout -> Dense(V) on every step,
-- the softmax taken in the loss (sparse categorical cross-entropy from logits over every
-- position). Truncated BPTT: the text is cut into 'batch' streams, read 'seq' characters at a
-- time; the stateful LSTM layers carry their final states (detached) into the next chunk and
-- are reset at the start of each pass. RMSprop (or Adam) with global-norm clipping. The last
-- tenth of the text is the validation set, run by a twin model over the same layers
-- (its own stateful LSTM layers over the same cells, so validation does not disturb the
-- training states). At each validation the model and the optimizer's state are written with
-- nn.save (one safetensors file, written atomically); at the end the checkpoint is read back
-- into a fresh model and checked. Text sampled with a temperature is printed at the end.
--
-- Analyses on a validation batch:
--   gate saturation: for each unit of each layer, the fraction of timesteps its forget, input
--     and output gates are left-saturated (< 0.1) and right-saturated (> 0.9), drawn as the
--     paper's scatter plots (one point per unit); the gates are recomputed from the trace's
--     states and cross-checked against the trace's c_t and h_t;
--   ||dL/dh_t|| against the distance back in the text, for the loss at the last position.
--
--   moongrad scripts/char_lstm.lua [--out out] [--iters 1000] [--quick] ...
local common = dofile((arg[0]:match("^(.*)[/\\]") or ".") .. "/common.lua")
local nn, optim, plot = mg.nn, mg.optim, mg.plot

-- "--quick" alone means "--quick=true" (common.options takes a value for every option); with
-- it the defaults are the small ones of QUICK, and options given explicitly still win.
local QUICK = { units = 48, embed = 24, seq = 25, batch = 16, iters = 400, every = 200, sample_len = 120, lr = 1e-2,
  dropout = 0.0 }
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
  { "embed", 64, "embedding size", 1 },
  { "seq", 50, "characters per truncated-BPTT chunk", 2 },
  common.opt.batch(32), common.opt.iters(1000),
  { "optimizer", "rmsprop", "rmsprop or adam" },
  common.opt.lr(2e-3),
  { "clip", 5.0, "global gradient-norm clip", 0 },
  { "dropout", 0.2, "dropout rate between layers", 0 },
  { "every", 200, "validate and checkpoint every this many iterations", 1 },
  { "temperature", 0.8, "sampling temperature", 0 },
  { "sample_len", 400, "characters to sample", 1 },
  common.opt.seed(1),
  { "quick", false, "small and fast (for specs): 48 units, embedding 24, seq 25, batch 16, 400 iterations, lr 0.01, no dropout" },
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

---------------------------------------------------------------- the model

local U, E = opt.units, opt.embed
local emb = nn.Embedding(V, E, { name = "embedding" })
local lstm_1 = nn.LSTM(U, { return_sequences = true, stateful = true, name = "lstm_1", input_size = E })
local lstm_2 = nn.LSTM(U, { return_sequences = true, stateful = true, name = "lstm_2", input_size = U })
local head = nn.Dense(U, V, { name = "head" })
local model = nn.Sequential { emb, lstm_1, nn.Dropout(opt.dropout), lstm_2, nn.Dropout(opt.dropout), head }
local params = model:parameters()
local cells = { lstm_1.cell, lstm_2.cell }

-- A twin of the model over the same Embedding, cells and head (no dropout: it only infers),
-- with its own LSTM layers, so its states are its own: validation and sampling run on it.
local function twin(stateful)
  local r1 = nn.RNN(cells[1], { return_sequences = true, stateful = stateful })
  local r2 = nn.RNN(cells[2], { return_sequences = true, stateful = stateful })
  return nn.Sequential { emb, r1, r2, head }, { r1, r2 }
end

local function loss_of(logits, y)
  return nn.sparse_categorical_crossentropy(logits, y, { from_logits = true })
end

local val_chunks, val_chunk = streams(n_train + 1, n_val, math.min(opt.batch, n_val // (opt.seq + 1)), opt.seq)
local validator, val_layers = twin(true)

-- The validation loss: every validation chunk in order, states carried from zero.
local function validate()
  for _, l in ipairs(val_layers) do l:reset_states() end
  local sum = 0
  mg.no_grad(function()
    for k = 1, val_chunks do
      local x, y = val_chunk(k)
      sum = sum + loss_of(validator(x), y):item()
    end
  end)
  return sum / val_chunks
end

---------------------------------------------------------------- checkpoints

local ckpath = out .. "/char_lstm_checkpoint.safetensors"

-- The model and the optimizer's state (nn.save: one safetensors file, written atomically),
-- and the vocabulary beside it (written to a temporary name, then renamed).
local function checkpoint(o)
  nn.save(model, ckpath, { optimizer = o })
  local tmp = out .. "/char_lstm_vocabulary.txt.tmp"
  local m = assert(io.open(tmp, "wb"))
  m:write(table.concat(chars))
  m:close()
  assert(os.rename(tmp, out .. "/char_lstm_vocabulary.txt"))
end

---------------------------------------------------------------- training

local function make_optimizer(ps)
  local o = { lr = opt.lr, global_clipnorm = opt.clip }
  return opt.optimizer == "adam" and optim.Adam(ps, o) or optim.RMSprop(ps, o)
end
local o = make_optimizer(params)
local train_chunks, train_chunk = streams(1, n_train, opt.batch, opt.seq)
local n_params = 0
for _, p in ipairs(params) do n_params = n_params + p:numel() end
print(string.format("model: Embedding %d -> %d, LSTM %d, Dropout %g, LSTM %d, Dropout %g, Dense %d (softmax in the "
  .. "loss); %d parameters; %s lr %g, global clipnorm %g; batch %d x %d characters, %d chunks per pass", V, E, U,
  opt.dropout, U, opt.dropout, V, n_params, opt.optimizer, opt.lr, opt.clip, opt.batch, opt.seq, train_chunks))

local first_loss, last_val, vals = nil, nil, {}
local losses, t0 = {}, mg.clock()
for iter = 1, opt.iters do
  local x, y, fresh = train_chunk(iter)
  if fresh then lstm_1:reset_states() lstm_2:reset_states() end     -- a new pass over the text
  local tape = mg.GradientTape()
  local loss = tape:record(function() return loss_of(model(x, { training = true }), y) end)
  o:step(tape:gradient(loss, params))
  losses[iter] = loss:item()
  first_loss = first_loss or losses[iter]
  common.progress("train", iter, opt.iters, losses[iter])
  if iter % opt.every == 0 or iter == opt.iters then
    last_val = validate()
    vals[#vals + 1] = { iter, last_val }
    checkpoint(o)
    print(string.format("iteration %d: validation loss %.4f nats/char (unigram entropy %.4f)", iter, last_val, H))
  end
end
local train_time = mg.clock() - t0
local tail = 0
local k = math.min(20, #losses)
for i = #losses - k + 1, #losses do tail = tail + losses[i] end
tail = tail / k
print(string.format("training loss: first %.4f, mean of the last %d %.4f nats/char; %.1f s (%.1f ms per step)",
  first_loss, k, tail, train_time, train_time / opt.iters * 1e3))
print(string.format("final validation loss = %.4f nats/char (unigram entropy %.4f)", last_val, H))

-- The checkpoint read back into a fresh model and optimizer: every weight and slot as saved.
do
  local fresh = nn.Sequential { nn.Embedding(V, E, { name = "embedding" }),
    nn.LSTM(U, { return_sequences = true, name = "lstm_1", input_size = E }), nn.Dropout(opt.dropout),
    nn.LSTM(U, { return_sequences = true, name = "lstm_2", input_size = U }), nn.Dropout(opt.dropout),
    nn.Dense(U, V, { name = "head" }) }
  local fo = make_optimizer(fresh:parameters())
  nn.load(fresh, ckpath, { optimizer = fo })
  local worst = 0
  for i, p in ipairs(fresh:parameters()) do worst = math.max(worst, common.maxdiff(p, params[i])) end
  local a, b = fo:state(), o:state()
  for name, v in pairs(b) do
    worst = math.max(worst, mg.is_tensor(v) and common.maxdiff(a[name], v) or math.abs(a[name] - v))
  end
  common.check(worst == 0, "the checkpoint read back differs from the model by %g", worst)
  print(string.format("checkpoint %s read back into a fresh model and optimizer: %d weights, %d optimizer entries, "
    .. "max |diff| %g", ckpath, #params, (function() local n = 0 for _ in pairs(b) do n = n + 1 end return n end)(), worst))
end

---------------------------------------------------------------- sampling

-- Samples 'n' characters after 'primer' with a batch-1 stateful twin: the primer in one call,
-- then one character per call.
local function sample(primer, n, temperature)
  local sampler, layers = twin(true)
  local outp = {}
  local ids = {}
  for i = 1, #primer do ids[i] = index[primer:sub(i, i)] or 1 end
  return mg.no_grad(function()
    local logits = sampler(mg.tensor({ ids }))        -- (1, #primer, V)
    for _ = 1, n do
      local last = logits:select(2, logits:size(2)):reshape(-1)
      local p = mg.softmax(last * (1 / temperature), -1):totable()
      local r, id = mg.rand(1):item(), V
      for c = 1, V do
        r = r - p[c]
        if r <= 0 then id = c break end
      end
      outp[#outp + 1] = chars[id]
      logits = sampler(mg.tensor({ { id } }))
    end
    for _, l in ipairs(layers) do l:reset_states() end
    return primer .. table.concat(outp)
  end)
end
print(string.format("sample (temperature %g):", opt.temperature))
print(sample("The ", opt.sample_len, opt.temperature))
print("(end of sample)")

---------------------------------------------------------------- gate saturation

-- One recorded pass over a validation batch from zero states, layer by layer with rnn:trace
-- (a non-stateful twin: each layer's states at every step), and the loss at the last position.
local ax, ay = val_chunk(1)
local T = ax:size(2)
local _, tracer = twin(false)
local vtape = mg.GradientTape()
local inputs, traces, last_loss = {}, {}, nil
vtape:record(function()
  local h = emb(ax)
  for kk, layer in ipairs(tracer) do
    inputs[kk] = h
    traces[kk] = layer:trace(h)
    h = mg.stack(traces[kk].outputs, 2)
  end
  last_loss = loss_of(head(h:narrow(2, T, 1)), ay:narrow(2, T, 1))
end)

-- The gates of 'cell' over the trace 'tr' of its input 'input' (B, T, in): i, f, o as
-- (B*T, U) tensors, recomputed from x_t and h_(t-1) with the cell's weights (Keras order
-- i, f, c, o); checked against the trace's c_t and h_t.
local function gates(cell, input, tr)
  local B = input:size(1)
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
for kk = 1, 2 do
  local g, err = gates(cells[kk], inputs[kk], traces[kk])
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
-- The paper's figure: one panel per gate, one point per unit (left-saturated fraction
-- against right-saturated fraction), the two layers in two colours; the points lie below the
-- line x + y = 1 (a gate cannot be both at once).
do
  local GATES = { "forget", "input", "output" }
  local data, lines = {}, {
    "set multiplot layout 1,3 title " .. common.gstr(string.format("Gate saturation of the char-LSTM (%d units "
      .. "per layer; %d validation sequences of %d characters)", U, ax:size(1), T)),
    "set xrange [0:1]", "set yrange [0:1]", "set size ratio -1", "set grid", "set key top right",
    "set xlabel 'fraction left-saturated (< 0.1)'", "set ylabel 'fraction right-saturated (> 0.9)'",
  }
  for _, name in ipairs(GATES) do
    for kk = 1, 2 do
      local sat, rows = saturation[kk][name], {}
      for u = 1, U do rows[u] = { sat.left[u], sat.right[u] } end
      data[name .. kk] = rows
    end
    lines[#lines + 1] = "set title " .. common.gstr(name .. " gate")
    lines[#lines + 1] = string.format("plot 1 - x with lines lc rgb 'gray' notitle, "
      .. "$%s1 using 1:2 with points pt 7 ps 0.7 lc rgb '#1f77b4' title 'layer 1', "
      .. "$%s2 using 1:2 with points pt 7 ps 0.7 lc rgb '#d62728' title 'layer 2'", name, name)
  end
  lines[#lines + 1] = "unset multiplot"
  picture("gate saturation (forget, input, output gates; both layers)", plot.gnuplot(table.concat(lines, "\n"), data,
    { out = out .. "/char_lstm_gate_saturation.png", width = 1500, height = 600 }))
end
picture("log10 ||dL/dh_t|| against distance back", plot.lines({ norms[1], norms[2] }, { x = dist,
  labels = { "layer 1", "layer 2" }, xlabel = "distance back in the text (characters)", ylabel = "log10 mean ||dL/dh_t||",
  title = string.format("Gradient of the loss at the last position w.r.t. each hidden state (T = %d)", T),
  out = out .. "/char_lstm_dL_dh_distance.png" }))
picture("training loss", plot.lines({ losses }, { labels = { "training loss (nats/char)" }, xlabel = "iteration",
  ylabel = "loss", title = string.format("char-LSTM training loss; unigram entropy %.3f", H),
  out = out .. "/char_lstm_loss.png" }))
for _, w in ipairs(written) do common.wrote(w[1], w[2]) end
