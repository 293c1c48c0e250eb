-- The experiment scripts (scripts/*.lua, one per seed, and gradient_flow.lua): each runs
-- through the moongrad executable on a small setting, and its printed numbers are checked
-- (the Glorot ratios, seed 002's values, Jacobian shapes and cross-checks, losses going
-- down), then every picture it says it wrote: PNGs by signature and size, text plots by
-- their titles and axis labels. Needs gnuplot (pending without it).
local support = require "support"

local source, exe = support.SOURCE, support.EXE
local q, slurp = support.shq, support.read_file

-- The events of the one TensorBoard event file in 'dir' (mg.summary.read), and the script's
-- line naming it; grouped by tag: tag -> { {step, value-table} }.
local function tensorboard_log(out, dir)
  local path = out:match("\nTensorBoard log: (%S+) %(tensorboard %-%-logdir ")
  assert(path, "no 'TensorBoard log:' line in:\n" .. out)
  assert.are.equal(dir .. "/tensorboard/", path:sub(1, #dir + 13))
  local mg = require "moongrad"
  local ev = mg.summary.read(path)
  assert.are.equal("brain.Event:2", ev[1].file_version)
  local by = {}
  for i = 2, #ev do
    for _, v in ipairs(ev[i].values) do
      by[v.tag] = by[v.tag] or {}
      table.insert(by[v.tag], { ev[i].step, v })
    end
  end
  return by
end

local have_gnuplot = os.execute("command -v gnuplot >/dev/null 2>&1") == true

local scratch = support.scratch(teardown)         -- every run's output directory is below it
local runs = 0
local function tmpdir()
  runs = runs + 1
  local p = scratch .. "/run" .. runs
  assert(os.execute("mkdir " .. q(p)))
  return p
end

-- Runs 'moongrad scripts/<name>.lua <args>' (with --out <dir> unless 'no_out'); returns
-- stdout, stderr, the exit code and the output directory.
local function run(name, args, no_out)
  local dir = tmpdir()
  local outf, errf = dir .. "/.stdout", dir .. "/.stderr"
  local cmd = string.format("%s %s %s %s </dev/null >%s 2>%s", q(exe), q(source .. "/scripts/" .. name .. ".lua"),
    no_out and "" or "--out " .. q(dir), args or "", q(outf), q(errf))
  local _, _, code = os.execute(cmd)
  return slurp(outf), slurp(errf), code, dir
end

-- Runs a script once per spec file (cached), asserting it succeeded.
local cache = {}
local function result(name, args)
  local key = name .. " " .. (args or "")
  if not cache[key] then
    local out, err, code, dir = run(name, args)
    if code ~= 0 then error(string.format("%s %s exited with %s:\n%s\n%s", name, args or "", tostring(code), out, err)) end
    cache[key] = { out = out, err = err, dir = dir }
  end
  return cache[key]
end

-- The number captured by Lua pattern 'pat' in 'text' (which must match).
local function num(text, pat)
  local v = text:match(pat)
  assert(v, "no line matches '" .. pat .. "' in:\n" .. text)
  return assert(tonumber(v), "not a number: " .. v)
end

-- The mean training loss over the first and over the last iterations, as a script prints them.
local function training_loss(text)
  return num(text, "training loss: first %d+ iterations mean ([%d.]+)"),
    num(text, "training loss: [^\n]-last %d+ iterations mean ([%d.]+)")
end

-- The script's training loss fell: the mean over its last iterations is below 'factor'
-- (default 1) times the mean over its first.
local function loss_fell(text, factor)
  local first, last = training_loss(text)
  assert.is_true(last < (factor or 1) * first, first .. " -> " .. last)
end

local has = support.contains

-- Width and height of a PNG file, after checking its signature and IHDR chunk.
local function png_size(path)
  local s = slurp(path)
  assert.are.equal("\137PNG\r\n\26\n", s:sub(1, 8), path .. " is not a PNG")
  assert.are.equal("IHDR", s:sub(13, 16), path .. " has no IHDR chunk")
  local w = string.unpack(">I4", s, 17)
  local h = string.unpack(">I4", s, 21)
  assert.is_true(#s > 2000, path .. " is suspiciously small (" .. #s .. " bytes)")
  return w, h
end

-- Every "wrote <what>: <path>" line of 'out': the file exists inside 'dir' and is a sane PNG
-- or a non-empty text plot. Returns the paths by file name.
local function check_pictures(out, dir, min_count)
  local files, n = {}, 0
  for path in out:gmatch("\nwrote [^\n]*: ([^\n]+)") do
    n = n + 1
    assert.are.equal(dir, path:sub(1, #dir), "picture outside the output directory: " .. path)
    local ext = path:match("%.(%w+)$")
    if ext == "png" then
      local w, h = png_size(path)
      assert.is_true(w >= 300 and w <= 4000 and h >= 200 and h <= 4000,
        string.format("%s has a strange size %dx%d", path, w, h))
    else
      assert.are.equal("txt", ext)
      local s = slurp(path)
      assert.is_true(#s > 200 and s:find("[%+%-|]") ~= nil, path .. " does not look like a text plot")
    end
    files[path:match("[^/]+$")] = path
  end
  assert.is_true(n >= min_count, string.format("expected at least %d pictures, found %d", min_count, n))
  return files
end

-- The text plot 'file' contains each plain string of 'expect' (title pieces, axis labels).
local function text_has(files, file, expect)
  local path = assert(files[file], file .. " was not written")
  local s = slurp(path)
  for _, e in ipairs(expect) do has(s, e) end
end

local pending_reason = not have_gnuplot and "gnuplot is not installed" or nil
local function it_g(name, fn)
  if pending_reason then return pending(name .. " (" .. pending_reason .. ")") end
  return it(name, fn)
end

---------------------------------------------------------------- glorot_jacobian (seed 001)

describe("scripts/glorot_jacobian.lua", function()
  local ARGS = "--units 100 --steps 4 --trials 10 --decay_steps 12 --decay_batch 4"
  it_g("var(dh_t/dh_(t-1)) * units is 0.5 for ReLU and 1.0 for the identity at 100 units", function()
    local r = result("glorot_jacobian", ARGS)
    assert.is_near(0.5, num(r.out, "relu mean var%(J%)%*units = ([%d.]+)"), 0.06)
    assert.is_near(1.0, num(r.out, "identity mean var%(J%)%*units = ([%d.]+)"), 0.08)
    for t = 1, 4 do
      assert.is_near(0.5, num(r.out, "relu step " .. t .. " var%(J%)%*units = ([%d.]+)"), 0.1)
    end
  end)
  it_g("holds for other seeds too (not a lucky draw)", function()
    for _, seed in ipairs{ 1, 2 } do
      local r = result("glorot_jacobian", ARGS .. " --seed " .. seed)
      assert.is_near(0.5, num(r.out, "relu mean var%(J%)%*units = ([%d.]+)"), 0.06)
      assert.is_near(1.0, num(r.out, "identity mean var%(J%)%*units = ([%d.]+)"), 0.08)
    end
  end)
  it_g("every tape Jacobian equals the closed form W^T diag(act'(h))", function()
    local r = result("glorot_jacobian", ARGS)
    assert.is_true(num(r.out, "relu Jacobian vs closed form [^\n]-max |diff| = ([%d.e+-]+)") < 1e-6)
    assert.is_true(num(r.out, "identity Jacobian vs closed form [^\n]-max |diff| = ([%d.e+-]+)") < 1e-6)
  end)
  it_g("||dh_T/dh_k|| vanishes for ReLU + Glorot and explodes with the gain", function()
    local r = result("glorot_jacobian", ARGS)
    assert.is_true(num(r.out, "decay relu: [^\n]-factor per step = ([%d.]+)") < 0.85)
    assert.is_true(num(r.out, "decay identity_gain: [^\n]-factor per step = ([%d.]+)") > 1.1)
    local id = num(r.out, "decay identity: [^\n]-factor per step = ([%d.]+)")
    assert.is_true(id > 0.85 and id < 1.15)
  end)
  it_g("draws the decay as PNG and text with title and axis labels", function()
    local r = result("glorot_jacobian", ARGS)
    local files = check_pictures(r.out, r.dir, 2)
    text_has(files, "glorot_jacobian_decay.txt", { "Vanishing and exploding", "k (source timestep", "log10 norm",
      "ReLU, Glorot" })
  end)
end)

---------------------------------------------------------------- manual_vs_autograd (seed 002)

describe("scripts/manual_vs_autograd.lua", function()
  it_g("reproduces the seed's float32 numbers and gives the float64 ones", function()
    local r = result("manual_vs_autograd")
    local f32 = r.out:match("example 8 float32[^\n]*")
    has(f32, "dy2/dw_h tape 8.188806533813477 | hand 8.18880672682621 | backward pass 8.18880672682621")
    has(f32, "dy2/dw_y tape 0.9092516899108887 | hand h2 0.9092516899108887")
    local f64 = r.out:match("example 8 float64[^\n]*")
    has(f64, "dy2/dw_h tape 8.188808168328672 | hand 8.188808168328672")
    assert.is_near(math.tanh(2 * math.tanh(1)), num(f64, "dy2/dw_y tape ([%d.]+)"), 1e-15)
    assert.is_true(num(r.out, "example 8 over w_h[^\n]-max |hand %- tape| = ([%d.e+-]+)") < 1e-12)
  end)
  it_g("every worked example: the tape equals the hand derivation", function()
    local r = result("manual_vs_autograd")
    local x = num(r.out, "example 1: d%(x%^2%)/dx at x = ([%d.]+)")
    assert.are.equal(2 * x, num(r.out, "example 1:[^\n]-tape ([%d.]+)"))
    assert.are.equal(2 * x, num(r.out, "example 1:[^\n]-hand 2x ([%d.]+)"))
    local x2 = num(r.out, "example 2:[^\n]-at x = ([%d.]+)")
    assert.are.equal(-2 * x2, num(r.out, "example 2:[^\n]-tape (%-[%d.]+)"))
    has(r.out, "example 3: d((x^2 - y)^2)/dx at x = 1, y = 10: tape -36 | hand 2 (x^2 - y) 2x -36")
    has(r.out, "dz/dw tape 2.5 | hand x 2.5; dz/db tape 1 | hand 1")
    has(r.out, "tape (2, 10, 12) | hand 2x (2, 10, 12)")
    assert.are.equal(0, num(r.out, "max |dW tape %- column sums of X| = ([%d.e+-]+)"))
    assert.are.equal(0, num(r.out, "max |dX tape %- row sums of W| = ([%d.e+-]+)"))
    has(r.out, "dB tape (5, 5, 5) | hand (rows of X) (5, 5, 5)")
    has(r.out, "dh2/dw tape 2 | hand h0 w + h1 2; dh2/dh0 tape 4 | hand w^2 4")
  end)
  it_g("the hand-written BPTT equals the tape, dB_x included (the seed left it 0)", function()
    local r = result("manual_vs_autograd", "--steps 3 --hidden 4")
    for _, g in ipairs{ "dW_x", "dB_x", "dW_h", "dB_h", "dW_y", "dB_y" } do
      assert.is_true(num(r.out, "BPTT " .. g .. ": [^\n]-max |diff| = ([%d.e+-]+)") < 1e-12)
    end
    local line = r.out:match("BPTT dB_x: seed's[^\n]*")
    has(line, "seed's hand-written backward = 0")
    local corrected, tape = line:match("corrected hand (%b()) | tape (%b())")
    assert.are.equal(corrected, tape)
    assert.is_truthy(corrected:find("[1-9]"))                 -- not zero
    assert.are.equal(0, num(line, "max |dB_x %- dB_h| = ([%d.e+-]+)"))
  end)
  it_g("draws dy2/dw_h by hand and by the tape", function()
    local r = result("manual_vs_autograd")
    local files = check_pictures(r.out, r.dir, 2)
    text_has(files, "manual_vs_autograd_tanh.txt", { "dy2/dw_h by hand and by the tape", "w_h", "hand formula", "tape" })
  end)
end)

---------------------------------------------------------------- hidden_input_grads (seed 003)

describe("scripts/hidden_input_grads.lua", function()
  local ARGS = "--batch 2 --steps 4 --input 3 --units 6"
  it_g("gives dh_t/dx_t of shape (B, T, units, input) for SimpleRNN h and LSTM h and c", function()
    local r = result("hidden_input_grads", ARGS)
    for _, case in ipairs{ { "SimpleRNN h", "h" }, { "LSTM h", "h" }, { "LSTM c", "c" } } do
      has(r.out, case[1] .. ": d" .. case[2] .. "_t/dx_t shape (2,4,6,3) (batch, time, units, input)")
      has(r.out, case[1] .. ": blocks d" .. case[2] .. "_t/dx_s from one batch_jacobian")
      has(r.out, "4 tensors of shape (2,4,6,3)")
    end
  end)
  it_g("cross-checks the blocks: per-t calls, a loop of tape:gradient, causality, the seed's sum", function()
    local r = result("hidden_input_grads", ARGS)
    for _, name in ipairs{ "SimpleRNN h", "LSTM h", "LSTM c" } do
      local p = name:gsub("%p", "%%%0")
      assert.is_true(num(r.out, p .. ": max |one call %- one batch_jacobian[^\n]-| = ([%d.e+-]+)") <= 1e-12)
      assert.is_true(num(r.out, p .. ": max |d._T/dx_s %(one call%) %- loop of 6 tape:gradient calls| = ([%d.e+-]+)") <= 1e-12)
      assert.are.equal(0, num(r.out, p .. ": max |d._t/dx_s| for s > t = ([%d.e+-]+)"))
      assert.is_true(num(r.out, p .. ": the seed's [^\n]-gives shape %(2,4,3%) = sum over units[^\n]-max |diff| = ([%d.e+-]+)") < 1e-12)
    end
  end)
  it_g("works in float32 too, to float32 precision", function()
    local r = result("hidden_input_grads", ARGS .. " --dtype float32")
    assert.is_true(num(r.out, "LSTM c: max |dc_T/dx_s %(one call%) %- loop[^\n]-| = ([%d.e+-]+)") <= 1e-5)
  end)
  it_g("draws the blocks and their norms as heatmaps", function()
    local r = result("hidden_input_grads", ARGS)
    local files = check_pictures(r.out, r.dir, 12)
    text_has(files, "hidden_input_grads_lstm_c_norms.txt", { "log10 ||dc_t/dx_s||", "s (input timestep)",
      "t (state timestep)" })
    text_has(files, "hidden_input_grads_simplernn_h_blocks.txt", { "Jacobian blocks dh_t/dx_s", "timestep s, feature i",
      "timestep t, unit u" })
  end)
end)

---------------------------------------------------------------- rnn_gradients (seed 004)

describe("scripts/rnn_gradients.lua", function()
  local ARGS = "--iters 4 --long_iters 12 --units 4 --big_units 6 --steps 8 --batch 4 --lr 0.01"
  it_g("trains LSTM, GRU and SimpleRNN, uni- and bidirectional, and the loss goes down", function()
    local r = result("rnn_gradients", ARGS)
    for _, name in ipairs{ "LSTM (4 units)", "LSTM (6 units)", "bi-LSTM (6 units)", "GRU (6 units)", "bi-GRU (6 units)",
                           "SimpleRNN (6 units)", "bi-SimpleRNN (6 units)" } do
      local p = name:gsub("%p", "%%%0")
      local first = num(r.out, "\n" .. p .. ": 12 iterations, loss first ([%d.]+)")
      local last = num(r.out, "\n" .. p .. ": 12 iterations, loss first [%d.]+, last ([%d.]+)")
      assert.is_true(last < first, name .. ": loss " .. first .. " -> " .. last)
    end
    has(r.out, "LSTM (4 units): 4 iterations, loss first")
  end)
  it_g("takes gradients w.r.t. both layer outputs: (B, T, C) and (B, C)", function()
    local r = result("rnn_gradients", ARGS)
    has(r.out, "LSTM (4 units): dL/d(layer 1 output) shape (4,8,4), dL/d(layer 2 output) shape (4,4)")
  end)
  it_g("prints plain progress lines when stdout is not a terminal", function()
    local r = result("rnn_gradients", ARGS)
    assert.is_nil(r.out:find("\r", 1, true))
    has(r.out, "LSTM (4 units): iteration 1/4  loss ")
  end)
  it_g("draws EX 1-7 and the gate-wise weights and gradients", function()
    local r = result("rnn_gradients", ARGS)
    local files = check_pictures(r.out, r.dir, 60)
    for _, f in ipairs{ "ex1_lstm_one_sample_features_1d", "ex2_lstm_features_1d", "ex2_lstm_features_2d",
                        "ex3_lstm_features_1d", "ex3_lstm_features_2d", "ex4_lstm_big_features_1d",
                        "ex4_lstm_big_channel_1", "ex5_bigru_features_2d", "ex6_lstm_features_0d",
                        "ex7_lstm_6u_features_2d", "ex7_gru_6u_features_2d", "ex7_simplernn_6u_features_2d" } do
      assert.is_truthy(files["rnn_gradients_" .. f .. ".png"], f .. ".png missing")
      assert.is_truthy(files["rnn_gradients_" .. f .. ".txt"], f .. ".txt missing")
    end
    for _, m in ipairs{ "lstm_6u", "bilstm_6u", "gru_6u", "bigru_6u", "simplernn_6u", "bisimplernn_6u" } do
      for _, w in ipairs{ "weights", "gradients" } do
        assert.is_truthy(files["rnn_gradients_" .. m .. "_gates_" .. w .. ".png"])
      end
    end
    text_has(files, "rnn_gradients_ex2_lstm_features_2d.txt", { "EX 2", "timestep", "channel", "sample 4" })
    text_has(files, "rnn_gradients_ex6_lstm_features_0d.txt", { "EX 6", "sample", "dL/d(output)" })
    text_has(files, "rnn_gradients_ex1_lstm_one_sample_features_1d.txt", { "EX 1", "timestep" })
    text_has(files, "rnn_gradients_lstm_6u_gates_gradients.txt", { "gradients dL/dW by gate (i, f, c, o)",
      "row", "gates left to right" })
  end)
end)

---------------------------------------------------------------- weight_histograms (seed 000)

describe("scripts/weight_histograms.lua", function()
  local ARGS = "--iters 60 --snapshots 6 --units 6 --steps 5 --batch 16 --bins 10"
  it_g("trains the custom cell + LSTM model and the loss goes down", function()
    local r = result("weight_histograms", ARGS)
    loss_fell(r.out)
    has(r.out, "recorded 7 snapshots (iterations 1, every 10, and 60)")
  end)
  it_g("histograms every group of every layer, per gate for the LSTM", function()
    local r = result("weight_histograms", ARGS)
    has(r.out, "histograms: 17 groups x 2 (weights, gradients), every snapshot's shares sum to 1")
    for _, g in ipairs{ "i", "f", "c", "o" } do
      has(r.out, "layer 2, LSTM, recurrent kernel, gate " .. g .. ": weight std")
    end
    has(r.out, "layer 1, the seed's custom cell, W_rec (linear_rec kernel): weight std")
  end)
  it_g("draws histograms over iterations and individual weights", function()
    local r = result("weight_histograms", ARGS)
    local files = check_pictures(r.out, r.dir, 26)
    for _, l in ipairs{ "custom_rnn", "lstm", "head" } do
      for _, w in ipairs{ "weights", "gradients" } do
        assert.is_truthy(files["weight_histograms_" .. l .. "_" .. w .. ".png"])
      end
    end
    text_has(files, "weight_histograms_lstm_bias_individual_gradients.txt", { "Individual gradients over iterations",
      "iteration", "gradient", "bias, gate f [1]" })
    text_has(files, "weight_histograms_custom_rnn_individual_weights.txt", { "weight value", "W_rec (linear_rec kernel) [1]" })
  end)
  it_g("writes a TensorBoard log of every group's histograms, individual weights and the loss", function()
    local r = result("weight_histograms", ARGS)
    local by = tensorboard_log(r.out, r.dir)
    local hist, indiv = 0, 0
    for tag, list in pairs(by) do
      local kind = tag:match("^([%w_]+)/")
      if kind == "weights" or kind == "gradients" then
        hist = hist + 1
        assert.are.same({ 1, 10, 20, 30, 40, 50, 60 }, (function()
          local s = {}
          for i, e in ipairs(list) do s[i] = e[1] end
          return s
        end)())
        assert.are.equal("histogram", list[1][2].kind)
      elseif kind == "individual_weights" or kind == "individual_gradients" then
        indiv = indiv + 1
        assert.are.equal(7, #list)
        assert.are.equal("scalar", list[1][2].kind)
      end
    end
    assert.are.equal(34, hist)                          -- 17 groups x (weights, gradients)
    assert.are.equal(34, indiv)
    assert.are.equal(60, #by.loss)
    for _, g in ipairs { "i", "f", "c", "o" } do
      local h = by["weights/lstm/recurrent_kernel_gate_" .. g][1][2]
      assert.are.equal(6 * 6, h.num)                    -- one gate's columns of the (6, 24) kernel
    end
    assert.are.equal(6, by["gradients/head/kernel"][1][2].num)
  end)
end)

---------------------------------------------------------------- gradient_flow

describe("scripts/gradient_flow.lua", function()
  local ARGS = "--iters 150 --steps 5 --units 8 --eval_batch 16 --samples 4"
  it_g("learns the recall task: training and evaluation losses go down", function()
    local r = result("gradient_flow", ARGS)
    loss_fell(r.out, 0.5)
    local before = num(r.out, "evaluation loss [^\n]-before ([%d.]+)")
    local after = num(r.out, "evaluation loss [^\n]-after ([%d.]+)")
    assert.is_true(after < 0.5 * before, before .. " -> " .. after)
  end)
  it_g("gets every dL/dh_t from one gradient call and every dh_T/dh_k from one batch_jacobian", function()
    local r = result("gradient_flow", ARGS)
    has(r.out, "dL/dh_t from one tape:gradient(loss, tr.h): 5 tensors of shape (16,8)")
    assert.are.equal(0, num(r.out, "max |entry 1 %- its own gradient call| = ([%d.e+-]+)"))
    has(r.out, "dh_T/dh_k from one batch_jacobian(h_T, {h_0..h_(T-1)}): 5 Jacobians of shape (16,8,8)")
    for _, when in ipairs{ "before", "after" } do
      assert.is_true(num(r.out, when .. " training: ||dL/dh_1|| = ([%d.e+-]+)") > 0)
      assert.is_true(num(r.out, when .. " training: [^\n]-||dh_T/dh_0|| = ([%d.e+-]+)") > 0)
    end
  end)
  it_g("writes the gradient norms, the Jacobian decay and the features_2d heatmap", function()
    local r = result("gradient_flow", ARGS)
    local files = check_pictures(r.out, r.dir, 8)
    text_has(files, "gradient_flow_dL_dh.txt", { "log10 ||dL/dh_t|| per timestep", "t (timestep of the hidden state)",
      "log10 norm", "before training", "after training" })
    text_has(files, "gradient_flow_jacobian_decay.txt", { "log10 ||dh_T/dh_k||", "k (source timestep)" })
    text_has(files, "gradient_flow_features_2d.txt", { "dL/dh_t after training", "timestep", "unit", "sample 4" })
    text_has(files, "gradient_flow_loss.txt", { "Training loss", "iteration", "log10 loss" })
  end)
  it_g("writes a TensorBoard log of the losses and ||dL/dh_t|| per timestep", function()
    local r = result("gradient_flow", ARGS)
    local by = tensorboard_log(r.out, r.dir)
    assert.are.equal(150, #by["loss/train"])
    local steps = {}
    for i, e in ipairs(by["loss/eval"]) do steps[i] = e[1] end
    assert.are.same({ 0, 7, 14, 21, 28, 35, 42, 49, 56, 63, 70, 77, 84, 91, 98, 105, 112, 119, 126, 133, 140, 147, 150 }, steps)
    for t = 1, 5 do assert.are.equal(#steps, #by[string.format("dL_dh_norm/t_%02d", t)]) end
    -- the profiles are the numbers the script prints
    for _, when in ipairs { "before", "after" } do
      local p = by["dL_dh_profile/" .. when .. "_training"]
      assert.are.equal(5, #p)
      assert.are.equal(1, p[1][1])
      local printed = num(r.out, when .. " training: ||dL/dh_1|| = ([%d.e+-]+)")
      assert.is_true(math.abs(p[1][2].value - printed) <= 1e-3 * printed, p[1][2].value .. " vs " .. printed)
      assert.are.equal(0, by["dh_T_dh_k_profile/" .. when .. "_training"][1][1])
    end
    -- the last evaluation is the model after training: its ||dL/dh_1|| is the 'after' one
    local last = by["dL_dh_norm/t_01"][#steps][2].value
    assert.is_true(math.abs(last - by["dL_dh_profile/after_training"][1][2].value) <= 1e-6 * last)
  end)
end)

---------------------------------------------------------------- the command line

describe("scripts/char_lstm.lua", function()
  it_g("--quick: the validation loss falls below the text's unigram entropy", function()
    local r = result("char_lstm", "--quick")
    local H = num(r.out, "unigram entropy of the training text = ([%d.]+) nats/char")
    assert.is_true(H > 2.5 and H < 4.5, "a strange unigram entropy " .. H)    -- English text: about 3.1
    local val = num(r.out, "final validation loss = ([%d.]+) nats/char")
    assert(val < H - 0.2, string.format("validation loss %g is not below the unigram entropy %g", val, H))
    local first = num(r.out, "training loss: first ([%d.]+)")
    local last = num(r.out, "mean of the last %d+ ([%d.]+) nats/char")
    assert.is_true(first > math.log(50) and last < first - 1)                -- from about log(V)
  end)
  it_g("the gates recomputed from the trace match it; ||dL/dh_t|| falls with distance", function()
    local r = result("char_lstm", "--quick")
    for k = 1, 2 do
      assert.is_true(num(r.out, "layer " .. k .. ": gates recomputed from the trace, max |diff| on c_t and h_t = ([%d.e+-]+)")
        < 1e-5)
      for _, g in ipairs { "forget", "input ", "output" } do
        local left = num(r.out, "layer " .. k .. " " .. g .. " gate: mean fraction left%-saturated ([%d.]+)")
        local right = num(r.out, "layer " .. k .. " " .. g .. " gate: [^\n]- right%-saturated ([%d.]+)")
        assert.is_true(left >= 0 and left <= 1 and right >= 0 and right <= 1 and left + right <= 1)
      end
    end
    local d0 = num(r.out, "layer 2: (%-?[%d.]+) at distance 0")
    local d24 = num(r.out, "layer 2: %-?[%d.]+ at distance 0, (%-?[%d.]+) at 24")
    assert.is_true(d0 > d24 + 1, string.format("log10 norms %g at 0 and %g at 24", d0, d24))
  end)
  it_g("writes a checkpoint that loads, a sample, and its pictures", function()
    local r = result("char_lstm", "--quick")
    local mg = require "moongrad"
    local V = num(r.out, "vocabulary (%d+)")
    local path = r.dir .. "/char_lstm_checkpoint.safetensors"
    has(r.out, "checkpoint " .. path .. " read back into a fresh model and optimizer: 9 weights, 10 optimizer "
      .. "entries, max |diff| 0")
    local t, meta = mg.load_tensors(path)
    assert.are.equal("moongrad.checkpoint", meta.format)
    -- nn.Sequential's names: the child's index, then the layer's own names
    assert.are.same({ V, 24 }, t["1/embedding/embeddings"]:shape())
    assert.are.same({ 24, 4 * 48 }, t["2/lstm_1/kernel"]:shape())
    assert.are.same({ 48, 4 * 48 }, t["4/lstm_2/recurrent_kernel"]:shape())
    assert.are.same({ 48, V }, t["6/head/kernel"]:shape())
    assert.are.same({ V, 24 }, t["@optimizer/velocity.1"]:shape())
    assert.are.same({ 24, 4 * 48 }, t["@optimizer/velocity.2"]:shape())
    assert.are.equal("i:400", meta["@optimizer/iterations"])
    assert.are.equal("s:RMSprop", meta["@optimizer/class"])
    -- the weights were trained: the embedding table left Keras's uniform(-0.05, 0.05)
    assert.is_true(t["1/embedding/embeddings"]:abs():max():item() > 0.1)
    assert.are.equal(V, #slurp(r.dir .. "/char_lstm_vocabulary.txt"))
    local sample = r.out:match("sample %(temperature 0%.8%):\n(.-)\n%(end of sample%)")
    assert.is_truthy(sample, r.out)
    assert.is_true(#sample >= 124 and sample:sub(1, 4) == "The ", sample)
    local files = check_pictures(r.out, r.dir, 3)
    for _, f in ipairs { "char_lstm_gate_saturation.png", "char_lstm_dL_dh_distance.png", "char_lstm_loss.png" } do
      assert.is_truthy(files[f], f .. " was not written")
    end
  end)
end)

describe("script options", function()
  it("an unknown option stops with status 2 and the usage", function()
    local out, err, code = run("gradient_flow", "--iterations 5")
    assert.are.equal(2, code)
    has(err, "gradient_flow.lua: unknown option --iterations")
    has(err, "usage: moongrad gradient_flow.lua [options]")
    has(err, "--iters")
    assert.are.equal("", out)
  end)
  it("a bad value names the option and the value", function()
    local _, err, code = run("glorot_jacobian", "--units ten")
    assert.are.equal(2, code)
    has(err, "option --units: expected a number, got 'ten'")
    _, err, code = run("rnn_gradients", "--iters 2.5")
    assert.are.equal(2, code)
    has(err, "option --iters: expected an integer, got '2.5'")
    _, err, code = run("weight_histograms", "--iters 0")
    assert.are.equal(2, code)
    has(err, "option --iters must be >= 1, got 0")
    _, err, code = run("hidden_input_grads", "--dtype float16")
    assert.are.equal(2, code)
    has(err, "--dtype must be float32 or float64, got 'float16'")
    _, err, code = run("manual_vs_autograd", "--steps")
    assert.are.equal(2, code)
    has(err, "option --steps needs a value")
  end)
  it("--help prints the usage and exits 0", function()
    local out, _, code = run("hidden_input_grads", "--help", true)
    assert.are.equal(0, code)
    has(out, "usage: moongrad hidden_input_grads.lua [options]")
    has(out, "--units")
  end)
end)

---------------------------------------------------------------- lyapunov, jacobian_spectra (issue 13)

describe("scripts/lyapunov.lua", function()
  local ARGS = "--steps 2000 --iters 800"
  it_g("a linear RNN's exponents are log|eig(W)|, the error falling as 1/T", function()
    local r = result("lyapunov", ARGS)
    local e1 = num(r.out, "linear max error after 200 steps: ([%d.e+-]+)")
    local e2 = num(r.out, "linear max error after 200 steps: [%d.e+-]+; after 2000 steps: ([%d.e+-]+)")
    assert.is_true(e2 < 2e-3, "error " .. e2)
    assert.is_true(e2 < e1 / 5, string.format("error %g at T/10, %g at T", e1, e2))
  end)
  it_g("Gaussian products match Newman's exact exponents within 4 standard errors", function()
    local r = result("lyapunov", ARGS)
    assert.is_true(num(r.out, "Newman largest deviation: ([%d.]+) standard errors") < 4)
    has(r.out, "lambda_6")
  end)
  it_g("training on the memory task moves the LSTM's and GRU's spectra towards 0", function()
    local r = result("lyapunov", ARGS)
    for _, kind in ipairs { "LSTM", "GRU" } do
      local loss = num(r.out, kind .. " [^\n]-evaluation loss [%d.]+ %-> ([%d.]+)")
      assert.is_true(loss < 0.1, kind .. " did not learn the task: loss " .. loss)
      local before = num(r.out, kind .. " largest exponent before ([%d.e+-]+)")
      local after = num(r.out, kind .. " largest exponent before [%d.e+-]+ after ([%d.e+-]+)")
      assert.is_true(after > before and after < 0.05, string.format("%s: %g -> %g", kind, before, after))
    end
  end)
  it_g("draws the spectra and the convergence as PNG and text", function()
    local r = result("lyapunov", ARGS)
    local files = check_pictures(r.out, r.dir, 6)
    text_has(files, "lyapunov_exact.txt", { "Lyapunov spectra", "exponent, descending" })
    text_has(files, "lyapunov_trained.txt", { "before and after training", "LSTM after" })
    text_has(files, "lyapunov_convergence.txt", { "Convergence", "log10 error" })
  end)
end)

describe("scripts/jacobian_spectra.lua", function()
  it_g("orthogonal + linear keeps every singular value at 1; Glorot spreads them; tanh contracts", function()
    local r = result("jacobian_spectra", "--units 16 --steps 20")
    assert.is_true(num(r.out, "orthogonal %+ linear: max |s %- 1| [^\n]-= ([%d.e+-]+)") < 1e-12)
    assert.is_true(num(r.out, "Glorot %+ linear: largest / smallest at horizon 20 = ([%d.e+-]+)") > 1e3)
    assert.is_true(num(r.out, "orthogonal %+ tanh +horizon 20: largest ([%d.e+-]+)") < 1)
    local files = check_pictures(r.out, r.dir, 4)
    text_has(files, "jacobian_spectra_bands.txt", { "horizon T - k", "log10 singular value" })
  end)
end)
