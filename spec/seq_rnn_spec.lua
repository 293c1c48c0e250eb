-- Whole-sequence LSTM and GRU ops (runtime/seqcells.c: mg.lstm_seq, mg.gru_seq): the same
-- numbers as T per-step fused cells (forward, every gradient, float32 and float64), finite
-- differences (reverse, forward, second order), vectorized cotangents, PyTorch's nn.LSTM and
-- nn.GRU in float64 (spec/seq_rnn_ref.py), and which calls of nn.LSTM / nn.GRU / nn.RNN take
-- it (the rest keep the per-step path, with unchanged results).
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local F64 = support.F64

local function maxdiff(a, b) return (a - b):abs():max():item() end

local function near(expect, got, tol, what)
  assert.are.same(expect:shape(), got:shape(), what)
  local scale = 1 + expect:abs():max():item()
  local worst = maxdiff(expect, got)
  assert.is_true(worst <= tol * scale, string.format("%s: max difference %g > %g", what or "", worst, tol * scale))
end

-- The three kinds: LSTM (states h, c), GRU reset_after, GRU reset_before.
local KINDS = {
  { name = "lstm", gates = 4, ns = 2 },
  { name = "gru reset_after", gates = 3, ns = 1, ra = true },
  { name = "gru reset_before", gates = 3, ns = 1, ra = false },
}

-- Arguments x (B, T, d), states, kernel, recurrent_kernel, bias for 'k'.
local function args(k, B, T, d, u, dt)
  local function r(...) return mg.randn(...):to(dt) end
  local a = { r(B, T, d), r(B, u) }
  if k.ns == 2 then a[#a + 1] = r(B, u) end
  a[#a + 1] = r(d, k.gates * u) * 0.5
  a[#a + 1] = r(u, k.gates * u) * 0.5
  a[#a + 1] = (k.ra and r(2, 3 * u) or r(k.gates * u)) * 0.5
  return a
end

-- The sequence op and the per-step loop, both returning H (B, T, u) and the last states.
local function seq(k)
  if k.ns == 2 then return function(...) return mg.lstm_seq(...) end end
  return function(x, h, W, U, b) return mg.gru_seq(x, h, W, U, b, k.ra) end
end
local function steps(k)
  return function(x, ...)
    local s, hs, rest = { ... }, {}, nil
    for t = 1, x:size(2) do
      if k.ns == 2 then
        s[1], s[2] = mg.lstm_cell(x:select(2, t), s[1], s[2], s[3], s[4], s[5])
      else
        s[1] = mg.gru_cell(x:select(2, t), s[1], s[2], s[3], s[4], k.ra)
      end
      hs[t] = s[1]
    end
    rest = k.ns == 2 and s[2] or nil
    return mg.stack(hs, 2), s[1], rest
  end
end

-- A scalar of every output, weighted (fixed weights per shape).
local function loss_of(f, w)
  return function(...)
    local H, h, c = f(...)
    local l = (H * w[1]):sum() + (h * w[2]):sum()
    if c then l = l + (mg.tanh(c) * w[3]):sum() end
    return l
  end
end

local function weights(B, T, u, dt)
  return { mg.randn(B, T, u):to(dt), mg.randn(B, u):to(dt), mg.randn(B, u):to(dt) }
end

local function all_argnums(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- float32 outputs and gradients of the sequence op and of the per-step cells, each against
-- the sequence op in float64 and against each other, at (B, T, d, u), to rounding; 'what' ends
-- the messages. The bounds: a float32 result is the float64 one (exact to ~1e-15 here) plus
-- the rounding of its sums, which grows with their terms: the d of x W ('wide' = d / 64, 1 up
-- to 64 inputs; 2e-6 and 1e-5 relative at d <= 64, where the u = 70 terms of h U dominate).
-- The two float32 results are two such roundings of the same numbers, in different orders:
-- x_t W is one GEMM of B rows per step against one of T B rows for the sequence (or the
-- packed kernel's order), and BLAS's order can depend on the rows of the call (OpenBLAS's
-- Haswell kernels sum a row inside a full block of 12 rows otherwise than in a tail of 8, 4, 2
-- or 1; docs/design.md, "BLAS"). So their difference is bounded by the same rounding argument,
-- with the same 'wide' factor; only when both paths happen to sum in one order (OpenBLAS's
-- SkylakeX kernels, B >= 6) is it far smaller. Measured on both kernels, the largest
-- difference is 0.75 of its bound (outputs) and 0.33 (gradients). A real error is not
-- rounding: one term of one x W sum dropped (below) moves the outputs by 19,000 to 200,000
-- times the bound in these cases (asserted: more than 1,000 times).
local function against_float64(k, B, T, d, u, wide, what)
  local a = args(k, B, T, d, u, "float32")
  local a64 = {}
  for i = 1, #a do a64[i] = a[i]:to("float64") end
  local r1, r2, r3 = { steps(k)(table.unpack(a)) }, { seq(k)(table.unpack(a)) },
                     { seq(k)(table.unpack(a64)) }
  for i = 1, 1 + k.ns do
    near(r1[i], r2[i], 2e-6 * wide, "output " .. i .. what)
    near(r3[i], r1[i]:to("float64"), 2e-6 * wide, "output " .. i .. " of the cells against float64" .. what)
    near(r3[i], r2[i]:to("float64"), 2e-6 * wide, "output " .. i .. " against float64" .. what)
  end
  -- the bound fails a dropped term: x[1][1][j] x W[j] left out of step 1, row 1 (the largest
  -- |x| of that row, so the check does not depend on a small draw)
  local j = a[1]:select(1, 1):select(1, 1):abs():argmax():item()
  local xd = a[1]:clone()
  xd:select(1, 1):select(1, 1):narrow(1, j, 1):fill(0)
  local rd = { seq(k)(xd, table.unpack(a, 2)) }
  local scale = 1 + r1[1]:abs():max():item()
  assert.is_true(maxdiff(r1[1], rd[1]) > 1000 * 2e-6 * wide * scale,
    "a dropped term stays within the bound" .. what)
  local w = weights(B, T, u, "float32")
  local w64 = { w[1]:to("float64"), w[2]:to("float64"), w[3]:to("float64") }
  local an = all_argnums(#a)
  local g1 = mg.grad(loss_of(steps(k), w), { argnums = an })(table.unpack(a))
  local g2 = mg.grad(loss_of(seq(k), w), { argnums = an })(table.unpack(a))
  local g3 = mg.grad(loss_of(seq(k), w64), { argnums = an })(table.unpack(a64))
  for i = 1, #a do
    near(g1[i], g2[i], 1e-5 * wide, "gradient " .. i .. what)
    near(g3[i], g1[i]:to("float64"), 1e-5 * wide, "gradient " .. i .. " of the cells against float64" .. what)
    near(g3[i], g2[i]:to("float64"), 1e-5 * wide, "gradient " .. i .. " against float64" .. what)
  end
end

describe("mg.lstm_seq / mg.gru_seq against the per-step cells", function()
  setup(function() mg.manual_seed(7) end)
  for _, k in ipairs(KINDS) do
    for _, dt in ipairs { "float64", "float32" } do
      -- float64: both through BLAS, bit for bit at this narrow input (d = 4; with wider ones
      -- BLAS's order for a row of x W can depend on the rows of the call, docs/design.md
      -- "BLAS"); float32: the sequence's recurrent products go through the packed kernel
      -- (smallgemm.c) on AVX-512, another summation order
      it(k.name .. " " .. dt .. ": forward " .. (dt == "float64" and "bit for bit" or "to rounding") ..
         ", gradients to rounding", function()
        local B, T, d, u = dt == "float32" and 11 or 3, 7, 4, 37   -- rows: 8 + 3; 4u: panels + a tail
        local a = args(k, B, T, d, u, dt)
        local r1, r2 = { steps(k)(table.unpack(a)) }, { seq(k)(table.unpack(a)) }
        for i = 1, 1 + k.ns do
          if dt == "float64" then assert.are.equal(support.bits(r1[i]), support.bits(r2[i]), "output " .. i)
          else near(r1[i], r2[i], 2e-6, "output " .. i) end
        end
        local w = weights(B, T, u, dt)
        local an = all_argnums(#a)
        local g1 = mg.grad(loss_of(steps(k), w), { argnums = an })(table.unpack(a))
        local g2 = mg.grad(loss_of(seq(k), w), { argnums = an })(table.unpack(a))
        for i = 1, #a do near(g1[i], g2[i], dt == "float64" and 1e-13 or 1e-5, "gradient " .. i) end
      end)
    end

    -- A narrow input (packed W at most 512 KiB) has its x_t W made per step by the packed
    -- kernel, a wide one by one GEMM over all T B rows first (seqcells.c, in_per_step); 70
    -- units: above the LSTM's few-unit path; input 600: above 512 KiB for both cells. Both
    -- against the per-step cells and float64.
    for _, d in ipairs { 4, 64, 600 } do
      it(("%s float32, %d units, input %d (x W %s): forward and gradients to rounding"):format(
           k.name, 70, d, d <= 64 and "per step" or "over all rows"), function()
        mg.manual_seed(d)                            -- each case its own draws, whatever runs before
        against_float64(k, 11, 6, d, 70, math.max(1, d / 64), "")  -- rounding grows with d terms
      end)
    end

    -- The LSTM's per-step input projection and recurrent product as one product of [x_t h_t]
    -- and [W; U] (seqcells.c, pack_step_x): ragged units (panels of 32 columns and a tail)
    -- and batches (the packed kernel's 12-row blocks and the rows of a second thread).
    if k.name == "lstm" then
      it("lstm float32, units 16 to 80, batches 1 to 17, input 8 (one product per step): " ..
         "forward and gradients to rounding of float64 and of the per-step cells", function()
        for _, u in ipairs { 16, 32, 48, 80 } do
          for _, B in ipairs { 1, 5, 16, 17 } do
            mg.manual_seed(100 * u + B)
            against_float64(k, B, 3, 8, u, 1, (" (%d units, batch %d)"):format(u, B))
          end
        end
      end)
    end

    it(k.name .. ": gradcheck in float64 (reverse and forward rules)", function()
      local a = args(k, 2, 3, 3, 2, "float64")
      local f = seq(k)
      assert.is_true(mg.gradcheck(function(...)
        local H, h, c = f(...)
        local parts = { H:reshape(-1), h:reshape(-1) }
        if c then parts[3] = c:reshape(-1) end
        return mg.cat(parts, 1)
      end, a))
    end)

    it(k.name .. ": second order equals the per-step cells' and finite differences", function()
      local B, T, d, u = 2, 4, 3, 3
      local a = args(k, B, T, d, u, "float64")
      local w = weights(B, T, u, "float64")
      local an = all_argnums(#a)
      local function gradnorm(f)
        return function(...)
          local g = mg.grad(loss_of(f, w), { argnums = an })(...)
          local s = (g[1] * g[1]):sum()
          for i = 2, #g do s = s + (g[i] * g[i]):sum() end
          return s
        end
      end
      local h1 = mg.grad(gradnorm(steps(k)), { argnums = an })(table.unpack(a))
      local h2 = mg.grad(gradnorm(seq(k)), { argnums = an })(table.unpack(a))
      for i = 1, #a do near(h1[i], h2[i], 1e-12, "second-order gradient " .. i) end
      local nW = k.ns + 2                          -- the kernel's position
      assert.is_true(mg.gradcheck(function(W)
        local b = { table.unpack(a) }
        b[nW] = W
        return mg.grad(loss_of(seq(k), w), { argnums = { 1, nW } })(table.unpack(b))[2]
      end, { a[nW] }))
    end)

    it(k.name .. ": vectorized cotangents (Jacobians) and the JVP equal the per-step cells'", function()
      local B, T, d, u = 2, 3, 3, 4
      local a = args(k, B, T, d, u, "float64")
      for _, f in ipairs { "H", "h" } do
        local function out(g) return function(x)
          local H, h = g(x, table.unpack(a, 2))
          return f == "H" and H or h
        end end
        local J1 = mg.jacobian(out(steps(k)), a[1])
        local J2 = mg.jacobian(out(seq(k)), a[1])
        near(J1, J2, 1e-13, "jacobian of " .. f)
      end
      local Jb1 = mg.batch_jacobian(function(h) local b = { table.unpack(a) }; b[2] = h
        return select(2, steps(k)(table.unpack(b))) end, a[2])
      local Jb2 = mg.batch_jacobian(function(h) local b = { table.unpack(a) }; b[2] = h
        return select(2, seq(k)(table.unpack(b))) end, a[2])
      near(Jb1, Jb2, 1e-13, "batch_jacobian dh_T/dh_0")
      local tang = {}
      for i, t in ipairs(a) do tang[i] = mg.randn(t:shape(), F64) end
      local function cat_out(g) return function(...)
        local H, h, c = g(...)
        return mg.cat({ H:reshape(-1), h:reshape(-1), c and c:reshape(-1) or h:reshape(-1) }, 1)
      end end
      local _, t1 = mg.jvp(cat_out(steps(k)), a, tang)
      local _, t2 = mg.jvp(cat_out(seq(k)), a, tang)
      near(t1, t2, 1e-13, "jvp")
    end)
  end

  it("names itself in errors", function()
    local x, h, c = mg.randn(2, 3, 4), mg.randn(2, 5), mg.randn(2, 5)
    local W, U, b = mg.randn(4, 20), mg.randn(5, 20), mg.randn(20)
    assert.has_error(function() mg.lstm_seq(mg.randn(2, 4), h, c, W, U, b) end,
      "lstm_seq: input has shape (2,4), expected (B, T, features), T >= 1")
    assert.has_error(function() mg.lstm_seq(x, h, c, mg.randn(3, 20), U, b) end,
      "lstm_seq: kernel has shape (3,20), expected (4,20)")
    assert.has_error(function() mg.lstm_seq(x, h, c, W, U, mg.randn(19)) end,
      "lstm_seq: bias has shape (19), expected (20)")
    assert.has_error(function() mg.gru_seq(x, h, mg.randn(4, 15), mg.randn(5, 15), mg.randn(15)) end,
      "gru_seq: bias has shape (15), expected (2,(15)")
    assert.has_error(function() mg.gru_seq(x, h:to("float64"), mg.randn(4, 15), mg.randn(5, 15), mg.randn(15), false) end,
      "gru_seq: mixed dtypes (float32 and float64)")
  end)
end)

describe("mg.lstm_seq's small-units path (runtime/seqsmall.c, float32)", function()
  -- float32 with u below the bound and not a multiple of 16: the gate passes run gate-major,
  -- in blocks of 256 / u rows; the same operations as the per-row loops, so every output and
  -- gradient is bit for bit the one of the path without it (mg._lstm_small_max(0))
  local k = KINDS[1]
  local function run(a, w)
    local r = { mg.lstm_seq(table.unpack(a)) }
    local g = mg.grad(loss_of(seq(k), w), { argnums = all_argnums(#a) })(table.unpack(a))
    for i = 1, #g do r[#r + 1] = g[i] end
    return r
  end
  local function both(a, w)
    local old = mg._lstm_small_max(0)
    local ok, base = pcall(run, a, w)
    mg._lstm_small_max(old)
    assert(ok, base)
    return base, run(a, w)
  end
  local function same(base, small, what)
    for i = 1, #base do assert.are.equal(support.bits(base[i]), support.bits(small[i]), what .. ", result " .. i) end
  end

  it("is on by default below 64 units and off when set to 0", function()
    local old = mg._lstm_small_max()
    assert.are.equal(64, old)
    assert.are.equal(64, mg._lstm_small_max(0))
    assert.are.equal(0, mg._lstm_small_max(1000))
    assert.are.equal(64, mg._lstm_small_max(old))                -- at most 64
  end)

  -- (u, B[, d]): the wider inputs have x W summed by BLAS in an order of its own (at 24 or
  -- 52 columns OpenBLAS's small-matrix kernel on AVX-512, its Haswell kernels otherwise than in
  -- order), so they fail if the two paths take x W from different products
  it("gives the numbers of the per-row path bit for bit (units, batch across the blocks)", function()
    mg.manual_seed(23)
    for _, s in ipairs { { 1, 3 }, { 5, 16 }, { 6, 16 }, { 6, 45 }, { 7, 37 }, { 15, 18 }, { 16, 5 },
                         { 17, 16 }, { 37, 11 }, { 63, 5 }, { 64, 3 }, { 6, 16, 64 }, { 13, 5, 600 } } do
      local u, B = s[1], s[2]
      local T, d = 1 + (u + B) % 6, s[3] or 1 + u % 5
      local a = args(k, B, T, d, u, "float32")
      local base, small = both(a, weights(B, T, u, "float32"))
      same(base, small, string.format("u=%d B=%d T=%d d=%d", u, B, T, d))
    end
  end)

  it("on 2 threads, through nn.LSTM with go_backwards and initial states, equals the per-row path", function()
    mg.manual_seed(29)
    local n = mg.get_num_threads()
    mg.set_num_threads(2)
    local ok, err = pcall(function()
      local l = nn.LSTM(6, { return_sequences = true, return_state = true, go_backwards = true, input_size = 8 })
      local x, R = mg.randn(20, 9, 8), mg.randn(20, 9, 6)
      local init = { mg.randn(20, 6), mg.randn(20, 6) }
      local function f()
        local tape <close> = mg.GradientTape()
        tape:watch({ x, table.unpack(init) })
        local out, h, c = l(x, init)
        local srcs = { x, init[1], init[2], table.unpack(l:parameters()) }
        local g = tape:gradient((out * R):sum() + (h * c):sum(), srcs)
        table.insert(g, 1, out)
        return g
      end
      local old = mg._lstm_small_max(0)
      local okb, base = pcall(f)
      mg._lstm_small_max(old)
      assert(okb, base)
      same(base, f(), "nn.LSTM go_backwards")
    end)
    mg.set_num_threads(n)
    assert(ok, err)
  end)
end)

describe("mg.lstm_seq's reverse in chunks of steps", function()
  -- float64, B = 16, 256 units: dZ is kept for 16 steps at a time (1 MiB), so T = 37 runs in
  -- chunks of 5, 16 and 16 steps (one of odd length: the running dc changes buffers)
  it("gives the per-step cells' gradients (float64)", function()
    mg.manual_seed(5)
    local k, B, T, d, u = KINDS[1], 16, 37, 3, 256
    local a = args(k, B, T, d, u, "float64")
    a[4], a[5] = a[4] * 0.2, a[5] * 0.1              -- keep the gates out of saturation
    local w = weights(B, T, u, "float64")
    local an = all_argnums(#a)
    local g1 = mg.grad(loss_of(steps(k), w), { argnums = an })(table.unpack(a))
    local g2 = mg.grad(loss_of(seq(k), w), { argnums = an })(table.unpack(a))
    for i = 1, #a do near(g1[i], g2[i], 1e-12, "gradient " .. i) end
  end)
end)

describe("nn layers and the sequence op", function()
  setup(function() mg.manual_seed(11) end)
  -- How many times mg.lstm_seq / mg.gru_seq ran during f().
  local function seq_calls(f)
    local n, l, g = 0, mg.lstm_seq, mg.gru_seq
    mg.lstm_seq = function(...) n = n + 1; return l(...) end
    mg.gru_seq = function(...) n = n + 1; return g(...) end
    local ok, err = pcall(f)
    mg.lstm_seq, mg.gru_seq = l, g
    assert(ok, err)
    return n
  end

  for _, kind in ipairs { "LSTM", "GRU" } do
    for _, opts in ipairs { {}, { go_backwards = true }, { return_state = true, stateful = true } } do
      it("nn." .. kind .. " calls take it; results equal rnn:trace's per-step ones " ..
         (next(opts) and "(" .. table.concat((function() local t = {}; for o in pairs(opts) do t[#t + 1] = o end; table.sort(t); return t end)(), ", ") .. ")" or ""), function()
        local o = { return_sequences = true, input_size = 3, dtype = "float64" }
        for key, v in pairs(opts) do o[key] = v end
        local l1, l2 = nn[kind](4, o), nn[kind](4, o)
        for i, p in ipairs(l1:parameters()) do l2:parameters()[i]:assign(p) end
        local x = mg.randn(2, 5, 3, F64)
        local R = mg.randn(2, 5, 4, F64)
        local tape <close> = mg.GradientTape()
        tape:watch(x)
        local out
        assert.are.equal(1, seq_calls(function() out = l1(x) end))
        local g1 = tape:gradient((out * R):sum(), { x, table.unpack(l1:parameters()) })
        local tape2 <close> = mg.GradientTape()
        tape2:watch(x)
        local tr
        assert.are.equal(0, seq_calls(function() tr = l2:trace(x) end))
        local out2 = mg.stack(tr.outputs, 2)
        local g2 = tape2:gradient((out2 * R):sum(), { x, table.unpack(l2:parameters()) })
        near(out2, out, 1e-15, "outputs")
        for i = 1, #g1 do near(g2[i], g1[i], 1e-13, "gradient " .. i) end
        if opts.stateful then       -- the kept states are the same, and used again by the next call
          near(l2._states[1], l1._states[1], 1e-15, "kept h")
          near(mg.stack(l2:trace(x).outputs, 2), l1(x), 1e-14, "second call")
        end
      end)
    end

    it("nn." .. kind .. " with a mask, recurrent dropout or training dropout keeps the per-step path", function()
      local x = mg.randn(2, 5, 3, F64)
      local l = nn[kind](4, { return_sequences = true, input_size = 3, dtype = "float64" })
      local mask = mg.tensor({ { 1, 1, 1, 0, 0 }, { 1, 1, 1, 1, 1 } }, F64)
      assert.are.equal(0, seq_calls(function() l(x, { mask = mask }) end))
      local ld = nn[kind](4, { return_sequences = true, input_size = 3, dtype = "float64", dropout = 0.3, seed = 1 })
      assert.are.equal(0, seq_calls(function() ld(x, { training = true }) end))
      assert.are.equal(1, seq_calls(function() ld(x) end))                -- inference: no dropout
      local lr = nn[kind](4, { return_sequences = true, input_size = 3, dtype = "float64", recurrent_dropout = 0.3 })
      assert.are.equal(0, seq_calls(function() lr(x) end))
      local la = nn[kind](4, { return_sequences = true, input_size = 3, dtype = "float64", activation = "relu" })
      assert.are.equal(0, seq_calls(function() la(x) end))
      -- a mask of all ones gives the whole-sequence numbers
      near(l(x), l(x, { mask = mg.ones(2, 5, F64) }), 1e-15, "all-ones mask")
    end)
  end

  it("a cell with a replaced step, a stacked cell and mixed dtypes keep the per-step path", function()
    local x = mg.randn(2, 4, 3, F64)
    local cell = nn.LSTMCell(3, 4, { dtype = "float64" })
    local calls = 0
    local step = cell.step
    cell.step = function(...) calls = calls + 1; return step(...) end
    assert.are.equal(0, seq_calls(function() nn.RNN(cell)(x) end))
    assert.are.equal(4, calls)
    local st = nn.RNN { nn.GRUCell(3, 4, { dtype = "float64" }), nn.GRUCell(4, 4, { dtype = "float64" }) }
    assert.are.equal(0, seq_calls(function() st(x) end))
    local l32 = nn.LSTM(4, { input_size = 3 })                              -- float32 weights
    assert.are.equal(0, seq_calls(function() l32(x) end))
  end)

  it("checks the input size as the cell does", function()
    local l = nn.LSTM(4, { input_size = 3 })
    assert.has_error(function() l(mg.randn(2, 5, 2)) end, "LSTMCell: input has 2 features, expected 3 (input shape (2,2))")
  end)
end)

describe("nn.LSTM / nn.GRU against PyTorch (spec/seq_rnn_ref.py, float64)", function()
  if not support.python_can_import("torch, numpy") then
    pending("needs " .. support.PYTHON .. " with torch and numpy")
    return
  end
  local dir
  setup(function() dir = support.tmpdir(); mg.manual_seed(5) end)
  teardown(function() support.rmtree(dir) end)
  local function put(name, t) mg.save(t:to("float64"):contiguous(), dir .. "/" .. name .. ".npy") end
  -- float32 with 6 units: mg.lstm_seq's small-units path (runtime/seqsmall.c), against
  -- PyTorch in float64 on the same (float32) numbers, to float32 rounding
  for _, case in ipairs { { "lstm", "float64", 5, 1e-12, 1e-11 }, { "gru", "float64", 5, 1e-12, 1e-11 },
                          { "lstm", "float32", 6, 2e-6, 2e-5 } } do
    local kind, dt, U, tol, gtol = table.unpack(case)
    it(kind .. " " .. dt .. ", " .. U .. " units: outputs, final states and every gradient", function()
      local B, T, D = 3, 6, 4
      local l = (kind == "lstm" and nn.LSTM or nn.GRU)(U, { return_sequences = true, return_state = true,
        input_size = D, dtype = dt })
      local function r(...) return mg.randn(...):to(dt) end
      for _, p in ipairs(l:parameters()) do p:assign(r(p:shape()) * 0.4) end
      local x, R, Rh = r(B, T, D), r(B, T, U), r(B, U)
      local init = { r(B, U) }
      if kind == "lstm" then init[2] = r(B, U) end
      put("x", x); put("R", R); put("Rh", Rh); put("h0", init[1])
      if init[2] then put("c0", init[2]) end
      put("kernel", l.cell.kernel); put("recurrent_kernel", l.cell.recurrent_kernel); put("bias", l.cell.bias)
      local script = (os.getenv("MOONGRAD_SOURCE") or ".") .. "/spec/seq_rnn_ref.py"
      local log = dir .. "/stderr.txt"
      assert(os.execute(string.format("%s %s %s %s 2>%s", support.PYTHON, support.shq(script), support.shq(dir),
        kind, support.shq(log))), "seq_rnn_ref.py failed")
      local function get(name) return mg.load(dir .. "/out_" .. name .. ".npy") end
      local tape <close> = mg.GradientTape()
      tape:watch({ x, table.unpack(init) })
      local out, h, c = l(x, init)
      local srcs = { x, init[1], init[2] or l.cell.kernel, l.cell.kernel, l.cell.recurrent_kernel, l.cell.bias }
      local g = tape:gradient((out * R):sum() + (h * Rh):sum(), srcs)
      local function cmp(name, t, tl) near(get(name), t:to("float64"), tl, name) end
      cmp("out", out, tol)
      cmp("h", h, tol)
      if kind == "lstm" then cmp("c", c, tol); cmp("gc0", g[3], gtol) end
      cmp("gx", g[1], gtol)
      cmp("gh0", g[2], gtol)
      cmp("gkernel", g[4], gtol)
      cmp("grecurrent_kernel", g[5], gtol)
      cmp("gbias", g[6], gtol)
    end)
  end
end)
