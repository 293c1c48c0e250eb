-- mg.lyapunov and mg.jacobian_spectra (bindings/moongrad/spectra.lua), with rnn:/cell: methods
-- and tape:forward's {lead = 1}: the exact results (a linear map's exponents are the logs of
-- its eigenvalues' moduli; Newman's for products of Gaussian matrices), the forward-mode path
-- against full Jacobians formed step by step, dynamical isometry, and errors by message.
local mg = require "moongrad"
local support = require "support"
local nn = mg.nn

local F64, randn, assert_close, raises = support.F64, support.randn, support.assert_close, support.raises
local tmpname = support.tmpnames(teardown)

-- The reference: full (B, N, N) Jacobians of each step by mg.batch_jacobian, their product
-- with Q re-orthonormalized by QR every step; exponents sorted descending per trajectory.
local function reference(step, z, xs, T, Q, warmup)
  warmup = warmup or 0
  local B, k = z:size(1), Q:size(3)
  local sum = mg.zeros(B, k, F64)
  for t = 1, warmup + T do
    local xt = xs and xs:select(2, t)
    local J = mg.batch_jacobian(function(h) return step(xt, h) end, z)
    z = step(xt, z)
    local q, R = mg.linalg.qr(J:matmul(Q))
    Q = q
    if t > warmup then sum = sum + (R * mg.eye(k, F64)):sum(-1):abs():log() end
  end
  local ex = (sum / T):totable()
  for _, row in ipairs(ex) do table.sort(row, function(a, b) return a > b end) end
  return mg.tensor(ex, F64)
end

-- W = O diag-ish(D) O^T: a normal matrix with eigenvalue moduli 'mods' (a rotation block for
-- the pair), so that its Lyapunov exponents are exactly log(mods).
local function normal_matrix()
  local O = mg.linalg.qr(randn(4, 4))
  local r, a = 0.6, 0.9
  local D = mg.tensor({ { 1.25, 0, 0, 0 }, { 0, -0.8, 0, 0 }, { 0, 0, r * math.cos(a), -r * math.sin(a) },
                        { 0, 0, r * math.sin(a), r * math.cos(a) } }, F64)
  return O:matmul(D):matmul(O:transpose())
end

describe("mg.lyapunov", function()
  it("a linear RNN h_t = W h_(t-1): exponents = log|eig(W)| to 1e-3 after 3,000 steps, error ~ 1/T", function()
    mg.manual_seed(1)
    local W = normal_matrix()
    local wr, wi = mg.linalg.eigvals(W)
    local logs = (wr * wr + wi * wi):sqrt():log():totable()
    table.sort(logs, function(a, b) return a > b end)
    local step = function(_, h) return h:matmul(W:transpose()) end
    local expect = mg.tensor(logs, F64)
    -- from random tangents the estimate is off by O(1/T) (their initial alignment)
    local r = mg.lyapunov(step, randn(3, 4), nil, { steps = 3000 })
    assert.are.same({ 3, 4 }, r.exponents:shape())
    assert.are.same({ 4 }, r.mean:shape())
    assert.are.same({ 3000, 4 }, r.history:shape())
    local e300 = (r.history[300] - expect):abs():max():item()
    local e3000 = (r.history[3000] - expect):abs():max():item()
    assert.is_true(e3000 < 2e-3 and e3000 < e300 / 5, string.format("error %g at T=300, %g at T=3000", e300, e3000))
    -- after a warmup that aligns the tangents: every trajectory to 1e-3
    r = mg.lyapunov(step, randn(3, 4), nil, { steps = 3000, warmup = 100 })
    assert_close(expect:expand(3, 4), r.exponents, 1e-3)
    -- the exponents are descending
    for i = 1, 3 do assert.is_true(r.mean:get(i) >= r.mean:get(i + 1)) end
  end)

  it("the top k alone (k < N) are the top k of the full spectrum", function()
    mg.manual_seed(2)
    local W = normal_matrix()
    local step = function(_, h) return h:matmul(W:transpose()) end
    local full = mg.lyapunov(step, randn(2, 4), nil, { steps = 2000 })
    local top = mg.lyapunov(step, randn(2, 4), nil, { steps = 2000, k = 2 })
    assert.are.same({ 2, 2 }, top.exponents:shape())
    assert_close(full.mean:narrow(1, 1, 2), top.mean, 2e-3)
  end)

  it("equals the QR method on full Jacobians (GRU, SimpleRNN, LSTM with (h, c) together)", function()
    mg.manual_seed(3)
    local x = randn(2, 15, 3)
    -- rnn:lyapunov (the C path for the float64 GRU and LSTM) and mg.lyapunov on the cell's
    -- step (the vectorized JVP), both against the reference
    for _, cell in ipairs { nn.GRUCell(3, 5, F64), nn.SimpleRNNCell(3, 5, F64) } do
      local Q0 = mg.linalg.qr(randn(2, 5, 3))
      local got = nn.RNN(cell):lyapunov(x, { k = 3, Q0 = Q0 })
      local step = function(xt, h) local _, s = cell(xt, { h }) return s[1] end
      local want = reference(step, mg.zeros(2, 5, F64), x, 15, Q0)
      assert_close(want, got.exponents, 1e-10, tostring(cell))
      assert_close(want, mg.lyapunov(step, mg.zeros(2, 5, F64), x, { k = 3, Q0 = Q0 }).exponents, 1e-10,
                   tostring(cell) .. " generic")
    end
    local lstm = nn.LSTMCell(3, 4, F64)
    local Q0 = mg.linalg.qr(randn(2, 8, 5))
    local got = lstm:lyapunov(x, { k = 5, Q0 = Q0 })
    local step = function(xt, z)
      local _, s = lstm(xt, { z:narrow(2, 1, 4), z:narrow(2, 5, 4) })
      return mg.cat(s, 2)
    end
    local want = reference(step, mg.zeros(2, 8, F64), x, 15, Q0)
    assert_close(want, got.exponents, 1e-10, "LSTM")
    assert_close(want, mg.lyapunov(step, mg.zeros(2, 8, F64), x, { k = 5, Q0 = Q0 }).exponents, 1e-10,
                 "LSTM generic")
  end)

  it("warmup steps are not counted; reortho_every > 1 gives the same exponents", function()
    mg.manual_seed(4)
    local cell = nn.GRUCell(2, 4, F64)
    local x = randn(2, 30, 2)
    local step = function(xt, h) local _, s = cell(xt, { h }) return s[1] end
    local Q0 = mg.linalg.qr(randn(2, 4, 4))
    local got = mg.lyapunov(step, mg.zeros(2, 4, F64), x, { warmup = 10, Q0 = Q0 })
    assert.are.same({ 20, 4 }, got.history:shape())
    assert_close(reference(step, mg.zeros(2, 4, F64), x, 20, Q0, 10), got.exponents, 1e-10)
    local every = mg.lyapunov(step, mg.zeros(2, 4, F64), x, { Q0 = Q0, reortho_every = 5 })
    local each = mg.lyapunov(step, mg.zeros(2, 4, F64), x, { Q0 = Q0 })
    assert_close(each.exponents, every.exponents, 1e-9)
  end)

  it("a float32 GRUCell takes the C path (runtime/lyapunov.c), equal to the vectorized JVP", function()
    mg.manual_seed(9)
    -- B = 3 and 19: lanes padded (the QR runs 16 trajectories at a time); k = 128: LAPACK's QR in mode 1
    for _, c in ipairs { { B = 3, N = 5, k = 5, T = 25 }, { B = 19, N = 20, k = 6, T = 12, warmup = 4 },
                         { B = 2, N = 7, k = 3, T = 20, reortho_every = 3, backwards = true },
                         { B = 2, N = 130, k = 128, T = 3 } } do
      local what = string.format("B=%d N=%d k=%d", c.B, c.N, c.k)
      local cell = nn.GRUCell(4, c.N)
      mg.no_grad(function() cell.bias:assign(mg.randn(2, 3 * c.N) * 0.3) end)
      local x = mg.randn(c.B, c.T, 4)
      local Q0 = mg.linalg.qr(mg.randn(c.B, c.N, c.k))
      local opts = { k = c.k, Q0 = Q0, warmup = c.warmup, reortho_every = c.reortho_every }
      local got = nn.RNN(cell, { go_backwards = c.backwards }):lyapunov(x, opts)
      local xs = c.backwards and x:flip(2) or x
      local step = function(xt, h) return cell:step(xt, h) end       -- mg.gru_cell's JVP rule
      local want = mg.lyapunov(step, mg.zeros(c.B, c.N), xs, opts)
      -- to float32 rounding, which the QR amplifies by the spread of the exponents
      assert_close(want.exponents, got.exponents, 1e-5, what)
      assert_close(want.history, got.history, 1e-5, what .. " history")
      -- it was the C path: one of its two ways (1: each trajectory's Jacobian, a GEMM, 2: 16
      -- trajectories in vector lanes) gives these very numbers, the other the same to rounding
      local warmup, every, exact = c.warmup or 0, c.reortho_every or 1, 0
      for mode = 1, 2 do
        local sum, hist = mg._linalg.lyapunov_gru(x, mg.zeros(c.B, c.N), cell.kernel, cell.recurrent_kernel,
                                                  cell.bias, Q0, warmup, c.T - warmup, every, c.backwards, mode)
        local ex = (sum / (c.T - warmup)):totable()
        for _, row in ipairs(ex) do table.sort(row, function(a, b) return a > b end) end
        assert_close(mg.tensor(ex), got.exponents, 1e-5, what .. " mode " .. mode)
        assert_close(hist, got.history, 1e-5, what .. " mode " .. mode)
        if support.maxdiff(mg.tensor(ex), got.exponents) == 0 and support.maxdiff(hist, got.history) == 0 then
          exact = exact + 1
        end
      end
      assert.is_true(exact >= 1, what .. ": rnn:lyapunov did not take the C path")
    end
    -- not for other activations, reset_after = false: the generic path, same numbers
    local x = mg.randn(2, 10, 3)
    for _, cell in ipairs { nn.GRUCell(3, 4, { reset_after = false }), nn.GRUCell(3, 4, { activation = "relu" }) } do
      local Q0 = mg.linalg.qr(mg.randn(2, 4, 4))
      local got = nn.RNN(cell):lyapunov(x, { Q0 = Q0 })
      local want = mg.lyapunov(function(xt, h) local _, s = cell(xt, { h }) return s[1] end, mg.zeros(2, 4), x, { Q0 = Q0 })
      assert_close(want.exponents, got.exponents, 0)
    end
    raises(function() mg._linalg.lyapunov_gru(x, mg.zeros(2, 4), mg.zeros(3, 12), mg.zeros(4, 12), mg.zeros(2, 12),
                                              mg.zeros(2, 5, 2), 0, 10, 1) end, "lyapunov", "Q0 has shape (2,5,2)")
    -- h0, the kernels and the bias checked as the fused cell checks them
    raises(function() mg._linalg.lyapunov_gru(x, mg.zeros(2, 4), mg.zeros(3, 11), mg.zeros(4, 12), mg.zeros(2, 12),
                                              mg.zeros(2, 4, 2), 0, 10, 1) end, "lyapunov", "kernel has shape (3,11)")
    raises(function() mg._linalg.lyapunov_gru(x, mg.zeros(2, 4), mg.zeros(3, 12), mg.zeros(4, 12), mg.zeros(12),
                                              mg.zeros(2, 4, 2), 0, 10, 1) end, "lyapunov", "bias has shape (12)")
    raises(function() mg._linalg.lyapunov_gru(x, mg.zeros(2, 4), mg.zeros(3, 12), mg.zeros(4, 12, F64), mg.zeros(2, 12),
                                              mg.zeros(2, 4, 2), 0, 10, 1) end, "lyapunov", "mixed dtypes")
  end)

  it("the LSTM (h, c) in float32 and float64 and the float64 GRU take the C path, equal to the vectorized JVP", function()
    mg.manual_seed(10)
    -- float32: the top of the spectrum (its tail near -11 per step is as far from float32
    -- rounding as exp(-11 T) is); float64: all 2N of the LSTM's
    for _, c in ipairs { { lstm = true, dt = "float32", B = 3, N = 5, k = 6, T = 25 },
                         { lstm = true, dt = "float64", B = 3, N = 5, k = 10, T = 25 },
                         { lstm = true, dt = "float64", B = 11, N = 6, k = 7, T = 20, warmup = 3 },
                         { lstm = true, dt = "float32", B = 19, N = 20, k = 17, T = 12, reortho_every = 3, backwards = true },
                         { lstm = false, dt = "float64", B = 10, N = 20, k = 18, T = 15, reortho_every = 2 },
                         { lstm = false, dt = "float64", B = 2, N = 7, k = 3, T = 20, backwards = true } } do
      local what = string.format("%s %s B=%d N=%d k=%d", c.lstm and "LSTM" or "GRU", c.dt, c.B, c.N, c.k)
      local o = { dtype = c.dt }
      local cell = c.lstm and nn.LSTMCell(4, c.N, o) or nn.GRUCell(4, c.N, o)
      local G = c.lstm and 4 * c.N or 3 * c.N
      mg.no_grad(function() cell.bias:assign(mg.randn(cell.bias:shape(), o) * 0.3) end)
      local x = mg.randn(c.B, c.T, 4, o)
      local S = c.lstm and 2 * c.N or c.N
      local Q0 = mg.linalg.qr(mg.randn(c.B, S, c.k, o))
      local opts = { k = c.k, Q0 = Q0, warmup = c.warmup, reortho_every = c.reortho_every }
      local got = nn.RNN(cell, { go_backwards = c.backwards }):lyapunov(x, opts)
      local xs = c.backwards and x:flip(2) or x
      local step = function(xt, z)                  -- the fused cell's JVP rules
        if not c.lstm then return cell:step(xt, z) end
        return mg.cat({ cell:step(xt, z:narrow(2, 1, c.N), z:narrow(2, c.N + 1, c.N)) }, 2)
      end
      local want = mg.lyapunov(step, mg.zeros(c.B, S, o), xs, opts)
      local tol = c.dt == "float32" and 1e-5 or 1e-12
      assert_close(want.exponents, got.exponents, tol, what)
      assert_close(want.history, got.history, tol, what .. " history")
      assert.are.equal(c.dt, got.exponents.dtype)
      -- it was the C path: these very numbers
      local warmup, every, z = c.warmup or 0, c.reortho_every or 1, mg.zeros(c.B, c.N, o)
      local sum, hist
      if c.lstm then
        sum, hist = mg._linalg.lyapunov_lstm(x, z, z, cell.kernel, cell.recurrent_kernel, cell.bias, Q0,
                                             warmup, c.T - warmup, every, c.backwards)
      else
        sum, hist = mg._linalg.lyapunov_gru(x, z, cell.kernel, cell.recurrent_kernel, cell.bias, Q0,
                                            warmup, c.T - warmup, every, c.backwards)
      end
      local ex = (sum / (c.T - warmup)):totable()
      for _, row in ipairs(ex) do table.sort(row, function(a, b) return a > b end) end
      assert_close(mg.tensor(ex, o), got.exponents, 0, what .. ": rnn:lyapunov did not take the C path")
      assert_close(hist, got.history, 0, what .. " history")
      assert.are.equal(G, cell.recurrent_kernel:size(2))
    end
    local x = mg.randn(2, 10, 3)
    raises(function() mg._linalg.lyapunov_lstm(x, mg.zeros(2, 4), mg.zeros(2, 4), mg.zeros(3, 16), mg.zeros(4, 16),
                                               mg.zeros(16), mg.zeros(2, 4, 2), 0, 10, 1) end, "lyapunov", "Q0 has shape (2,4,2)")
    raises(function() mg._linalg.lyapunov_lstm(x, mg.zeros(2, 4), mg.zeros(2, 5), mg.zeros(3, 16), mg.zeros(4, 16),
                                               mg.zeros(16), mg.zeros(2, 8, 2), 0, 10, 1) end, "lyapunov", "c0 has shape (2,5)")
    raises(function() mg._linalg.lyapunov_lstm(x, mg.zeros(2, 4), mg.zeros(2, 4), mg.zeros(3, 16), mg.zeros(4, 16),
                                               mg.zeros(2, 16), mg.zeros(2, 8, 2), 0, 10, 1) end, "lyapunov", "bias has shape (2,16)")
    -- each trajectory's Jacobian and LAPACK's QR (mode 1): the float32 GRU only
    raises(function() mg._linalg.lyapunov_gru(x:to("float64"), mg.zeros(2, 4, F64), mg.zeros(3, 12, F64),
                                              mg.zeros(4, 12, F64), mg.zeros(2, 12, F64), mg.zeros(2, 4, 2, F64),
                                              0, 10, 1, false, 1) end, "lyapunov", "mode 1")
  end)

  it("the C path's GRU with k >= 0.9 N keeps its tangents as reflectors (Q^T J): equal to forming them and to the JVP", function()
    mg.manual_seed(12)
    -- k = N = 5: every reflector unblocked; 17: two panels of 8 and one column; 24: three
    -- panels; k = 19 < N = 20: the first k rows of Q^T J; B = 19 and 9: lanes padded
    for _, c in ipairs { { dt = "float32", B = 3, N = 5, k = 5, T = 30 },
                         { dt = "float32", B = 19, N = 17, k = 17, T = 20, warmup = 3 },
                         { dt = "float32", B = 2, N = 24, k = 24, T = 15, backwards = true },
                         { dt = "float32", B = 5, N = 20, k = 19, T = 20 },
                         { dt = "float64", B = 9, N = 13, k = 12, T = 20 },
                         { dt = "float64", B = 3, N = 16, k = 16, T = 15, warmup = 2 } } do
      local what = string.format("%s B=%d N=%d k=%d", c.dt, c.B, c.N, c.k)
      local o = { dtype = c.dt }
      local cell = nn.GRUCell(4, c.N, o)
      mg.no_grad(function() cell.bias:assign(mg.randn(2, 3 * c.N, o) * 0.3) end)
      local x = mg.randn(c.B, c.T, 4, o)
      local Q0 = mg.linalg.qr(mg.randn(c.B, c.N, c.k, o))
      local opts = { k = c.k, Q0 = Q0, warmup = c.warmup }
      local got = nn.RNN(cell, { go_backwards = c.backwards }):lyapunov(x, opts)
      local xs = c.backwards and x:flip(2) or x
      local want = mg.lyapunov(function(xt, h) return cell:step(xt, h) end, mg.zeros(c.B, c.N, o), xs, opts)
      local tol = c.dt == "float32" and 1e-5 or 1e-12
      assert_close(want.exponents, got.exponents, tol, what)
      assert_close(want.history, got.history, tol, what .. " history")
      local warmup, z, runs = c.warmup or 0, mg.zeros(c.B, c.N, o), {}
      for _, mode in ipairs { 2, 3 } do            -- 2: as rnn:lyapunov (reflectors), 3: Q formed
        local sum, hist = mg._linalg.lyapunov_gru(x, z, cell.kernel, cell.recurrent_kernel, cell.bias, Q0,
                                                  warmup, c.T - warmup, 1, c.backwards, mode)
        local ex = (sum / (c.T - warmup)):totable()
        for _, row in ipairs(ex) do table.sort(row, function(a, b) return a > b end) end
        runs[mode] = { ex = mg.tensor(ex, o), hist = hist }
      end
      assert_close(runs[2].ex, got.exponents, 0, what .. ": rnn:lyapunov did not take mode 2")
      assert_close(runs[2].hist, got.history, 0, what .. " history")
      assert_close(runs[3].ex, runs[2].ex, tol, what .. ": reflectors against Q formed")
      assert_close(runs[3].hist, runs[2].hist, tol, what .. " history: reflectors against Q formed")
    end
    raises(function() mg._linalg.lyapunov_gru(mg.zeros(2, 5, 3), mg.zeros(2, 4), mg.zeros(3, 12), mg.zeros(4, 12),
                                              mg.zeros(2, 12), mg.zeros(2, 4, 4), 0, 5, 1, false, 4) end,
           "lyapunov", "bad mode 4")
  end)

  it("the C path's groups of trajectories on 1 or 2 threads: the same numbers", function()
    local saved = mg.get_num_threads()
    mg.manual_seed(11)
    -- B = 35: three groups of 16 float32 lanes; B = 19: three groups of 8 float64 lanes
    for _, c in ipairs { { lstm = false, dt = "float32", B = 35, N = 12, k = 9, T = 150 },
                         { lstm = false, dt = "float32", B = 40, N = 18, k = 18, T = 60 },
                         { lstm = true, dt = "float64", B = 19, N = 6, k = 12, T = 70, reortho_every = 2 } } do
      local o = { dtype = c.dt }
      local cell = c.lstm and nn.LSTMCell(3, c.N, o) or nn.GRUCell(3, c.N, o)
      local x = mg.randn(c.B, c.T, 3, o)
      local Q0 = mg.linalg.qr(mg.randn(c.B, c.lstm and 2 * c.N or c.N, c.k, o))
      local runs = {}
      for n = 1, 2 do
        mg.set_num_threads(n)
        runs[n] = nn.RNN(cell):lyapunov(x, { k = c.k, Q0 = Q0, reortho_every = c.reortho_every })
      end
      mg.set_num_threads(saved)
      assert.are.equal(0, support.maxdiff(runs[1].exponents, runs[2].exponents))
      assert.are.equal(0, support.maxdiff(runs[1].history, runs[2].history))
    end
  end)

  it("the C path's kernels 512 bits at a time, 256 twice, or 256 built for the x86-64 baseline (MG_LYAP_WIDTH; the CPU picks one): the same numbers", function()
    -- blocked QR (GRU k = 20), reflectors kept (GRU k >= 0.9 N), LSTM (h, c); both dtypes.
    -- The float32 LSTM keeps to its top 10 exponents (of 20): past them the c directions
    -- contract by e^-4 a step, and their exponents moved by up to 3e-3 between builds that fuse
    -- multiply-adds (AVX2) and one that does not (the 512-bit kernels built for the baseline):
    -- float32's conditioning there, not the width
    local cases = { { "GRU", "float32", 24, 20 }, { "GRU", "float32", 12, 11 }, { "LSTM", "float32", 10, 10 },
                    { "LSTM", "float64", 7, 9 }, { "GRU", "float64", 16, 16 } }
    local script = tmpname([[
local mg = require "moongrad"
local out = arg[1]
local f = assert(io.open(out .. "kernels", "w"))
f:write(mg.blas().lyapunov)
f:close()
mg.manual_seed(3)
for i = 2, #arg, 4 do
  local o = { dtype = arg[i + 1] }
  local cell = mg.nn[arg[i] .. "Cell"](3, tonumber(arg[i + 2]), o)
  local x = mg.randn(21, 40, 3, o)
  local e = mg.nn.RNN(cell):lyapunov(x, { k = tonumber(arg[i + 3]), reortho_every = 2 }).exponents
  mg.save(e, out .. (i + 2) // 4 .. ".npy")
end
]])
    -- the child: arg[1] the output prefix, then cell, dtype, units, k for each case; it writes
    -- the kernels it ran (mg.blas().lyapunov) and each case's exponents
    local args = {}
    for _, c in ipairs(cases) do
      for _, v in ipairs(c) do args[#args + 1] = support.shq(tostring(v)) end
    end
    -- each copy of the kernels that exists in this build and can run here, once (the release
    -- build compiles the 512-bit ones for AVX-512 alone, the baseline copy only where the
    -- 256-bit ones are compiled for AVX2), as the child reports it
    local want = { ["512"] = "^512%-bit", ["256"] = "^256%-bit", baseline = "^256%-bit, x86%-64$" }
    local res, ran, seen = {}, {}, {}
    for _, w in ipairs { "512", "256", "baseline" } do
      local out = tmpname()
      local ok = os.execute(("MG_LYAP_WIDTH=%s LUA_CPATH=%s lua5.4 %s %s %s"):format(w, support.shq(package.cpath),
                              support.shq(script), support.shq(out), table.concat(args, " ")))
      assert.is_true(ok)
      local kernels = support.read_file(out .. "kernels")
      os.remove(out .. "kernels")
      if kernels:match(want[w]) and not seen[kernels] then
        seen[kernels] = true
        ran[#ran + 1] = w .. " (" .. kernels .. ")"
        res[#res + 1] = {}
        for i = 1, #cases do res[#res][i] = mg.load(out .. i .. ".npy") end
      end
      for i = 1, #cases do os.remove(out .. i .. ".npy") end
    end
    if #res < 2 then return pending("one copy of the kernels runs here: " .. table.concat(ran, ", ")) end
    for r = 2, #res do
      for i, c in ipairs(cases) do
        assert.are.equal(c[4], res[1][i]:size(2))
        -- to rounding (with fused multiply-adds against without, as the 512-bit kernels in a
        -- baseline build on an AVX2 machine: float32 up to 6.6e-7 apart, the float64 LSTM
        -- 2.3e-12; a kernel that mixed up the halves' lanes was 0.06 off)
        assert_close(res[1][i], res[r][i], c[2] == "float32" and 1e-5 or 1e-10,
                     c[1] .. " " .. c[2] .. ": " .. ran[1] .. " against " .. ran[r])
      end
    end
  end)

  it("errors name the function and the value", function()
    local step = function(_, h) return h end
    raises(function() mg.lyapunov(42, randn(2, 3), nil, { steps = 3 }) end, "lyapunov", "step must be a function")
    raises(function() mg.lyapunov(step, randn(2, 3), nil) end, "lyapunov", "opts.steps")
    raises(function() mg.lyapunov(step, randn(2, 3), nil, { steps = 3, k = 4 }) end, "lyapunov", "k = 4", "3")
    raises(function() mg.lyapunov(step, randn(2, 3), randn(2, 5, 1), { warmup = 4, steps = 3 }) end,
           "lyapunov", "warmup (4) + steps (3)", "5 timesteps")
    raises(function() mg.lyapunov(step, randn(2, 3), randn(3, 5, 1)) end, "lyapunov", "batch size 3", "2")
    raises(function() mg.lyapunov(step, randn(3), nil, { steps = 2 }) end, "lyapunov", "(B, N)")
    raises(function() mg.lyapunov(step, randn(2, 3), nil, { steps = 2, Q0 = randn(2, 3) }) end, "lyapunov", "Q0")
    raises(function() mg.lyapunov(function() return randn(2, 4) end, randn(2, 3), nil, { steps = 2 }) end,
           "lyapunov", "expected (2,3)")
    raises(function() mg.lyapunov(step, randn(2, 3), nil, { steps = 2, k0 = 1 }) end, "lyapunov", "unknown option 'k0'")
    raises(function() nn.RNN(nn.GRUCell(2, 3)):lyapunov(randn(2, 3)) end, "RNN:lyapunov", "(B, T, F)")
  end)
end)

describe("tape:forward with {lead = 1}", function()
  it("pushes K tangents at once, as K separate sweeps would", function()
    local W = randn(3, 3)
    local x = randn(2, 3)
    local V = randn(4, 2, 3)
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(x)
    local y = tape:record(function() return (x:matmul(W)):tanh() end)
    local D = tape:forward(x, V, y, { lead = 1 })
    assert.are.same({ 4, 2, 3 }, D:shape())
    for i = 1, 4 do assert_close(tape:forward(x, V[i], y), D[i], 1e-14) end
    raises(function() tape:forward(x, randn(2, 3), y, { lead = 1 }) end, "forward", "(K, shape of its source)")
  end)
end)

describe("mg.jacobian_spectra", function()
  it("a linear map: dh_T/dh_k = W^(T-k); orthogonal W keeps every singular value at 1", function()
    mg.manual_seed(6)
    local W = randn(4, 4) * 0.3 + mg.eye(4, F64) * 0.8
    local T = 6
    local js = mg.jacobian_spectra(function(_, h) return h:matmul(W:transpose()) end, randn(2, 4), nil, { steps = T })
    assert.are.same({ T, 2, 4 }, js.singular_values:shape())
    for k = 0, T - 1 do
      local S = mg.linalg.svdvals(mg.linalg.matrix_power(W, T - k))
      assert_close(S:expand(2, 4), js.singular_values[k + 1], 1e-10, "k = " .. k)
      assert_close(mg.ones(2, F64), js.cond[k + 1] / (S[1] / S[4]), 1e-8)
    end
    assert_close(mg.linalg.svdvals(W):expand(T, 2, 4), js.step_singular_values, 1e-12)
    local some = mg.jacobian_spectra(function(_, h) return h:matmul(W:transpose()) end, randn(2, 4), nil,
                                     { steps = T, ks = { 4, 0 } })
    assert.are.same({ 2, 2, 4 }, some.singular_values:shape())
    assert_close(mg.linalg.svdvals(mg.linalg.matrix_power(W, T - 4)):expand(2, 4), some.singular_values[1], 1e-10)
    assert_close(mg.linalg.svdvals(mg.linalg.matrix_power(W, T)):expand(2, 4), some.singular_values[2], 1e-10)
    raises(function() mg.jacobian_spectra(function(_, h) return h end, randn(2, 4), nil, { steps = 3, ks = { 3 } }) end,
           "jacobian_spectra", "ks[1]", "0..2")
    local O = mg.linalg.qr(randn(5, 5))
    local iso = mg.jacobian_spectra(function(_, h) return h:matmul(O) end, randn(3, 5), nil, { steps = 20 })
    assert_close(mg.ones(20, 3, 5, F64), iso.singular_values, 1e-12)
    assert_close(mg.ones(20, 3, F64), iso.cond, 1e-12)
  end)

  it("cells and RNN layers: per-step spectra are those of batch_jacobian(h_t, h_(t-1))", function()
    mg.manual_seed(7)
    local cell = nn.GRUCell(2, 3, F64)
    local x = randn(2, 5, 2)
    local js = nn.RNN(cell):jacobian_spectra(x)
    local tr = nn.RNN(cell):trace(x)
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(tr.h[0])
    local h = tr.h[0]
    local hs = { [0] = h }
    tape:record(function() for t = 1, 5 do local _, s = cell(x:select(2, t), { hs[t - 1] }); hs[t] = s[1] end end)
    for t = 1, 5 do
      local S = mg.linalg.svdvals(tape:batch_jacobian(hs[t], hs[t - 1]))
      assert_close(S, js.step_singular_values[t], 1e-12)
      assert_close(mg.linalg.svdvals(tape:batch_jacobian(hs[5], hs[t - 1])), js.singular_values[t], 1e-12)
    end
    assert.are.same({ 5, 2, 6 }, nn.LSTMCell(2, 3, F64):jacobian_spectra(x).singular_values:shape())
  end)
end)

---------------------------------------------------------------- pictures

local have_gnuplot = os.execute("command -v gnuplot >/dev/null 2>&1") == true

describe("mg.plot.spectrum and mg.plot.spectrum_bands (alias mg.plot_spectrum, mg.plot_spectrum_bands)", function()
  local dir = support.scratch(teardown)
  local it_g = have_gnuplot and it or function(name) pending(name .. " (gnuplot is not installed)") end

  it_g("spectrum draws each series sorted, one line per condition", function()
    local series = { mg.tensor { -0.5, 0.1, -2 }, { 1, 3, 2 } }
    local o = { labels = { "before", "after" }, title = "Lyapunov spectra", width = 80, height = 20 }
    o.out = dir .. "/s.txt"
    local path = mg.plot.spectrum(series, o)
    assert.are.equal(dir .. "/s.txt", path)
    local s = support.read_file(path)
    for _, want in ipairs { "Lyapunov spectra", "before", "after", "i (descending)" } do
      assert.is_truthy(s:find(want, 1, true), want)
    end
    o.out = dir .. "/alias.txt"                               -- the first name draws the same
    assert.are.equal(s, support.read_file(mg.plot_spectrum(series, o)))
    o.out, o.width, o.height = dir .. "/s.png", nil, nil
    local png = support.read_file(mg.plot.spectrum(series, o))
    assert.are.equal("\137PNG", png:sub(1, 4))
    assert.is_true(#png > 2000, "a PNG of " .. #png .. " bytes")
  end)

  it_g("spectrum_bands draws the quantiles of each row of jacobian_spectra's singular values", function()
    local W = randn(4, 4) * 0.5
    local js = mg.jacobian_spectra(function(_, h) return h:matmul(W) end, randn(2, 4), nil, { steps = 5 })
    local path = mg.plot.spectrum_bands(js.singular_values, { out = dir .. "/b.txt", width = 80, height = 20 })
    local s = support.read_file(path)
    for _, want in ipairs { "min", "median", "max", "log10 value" } do assert.is_truthy(s:find(want, 1, true), want) end
    local alias = mg.plot_spectrum_bands(js.singular_values, { out = dir .. "/b2.txt", width = 80, height = 20 })
    assert.are.equal(s, support.read_file(alias))
    local png = support.read_file(mg.plot.spectrum_bands(js.singular_values, { out = dir .. "/b.png" }))
    assert.are.equal("\137PNG", png:sub(1, 4))
    assert.is_true(#png > 2000, "a PNG of " .. #png .. " bytes")
  end)

  it("errors name the function", function()
    raises(function() mg.plot.spectrum({}) end, "plot.spectrum", "nothing to plot")
    raises(function() mg.plot.spectrum({ randn(2, 2, 2) }) end, "plot.spectrum", "'series'[1]", "1-d or 2-d")
    raises(function() mg.plot.spectrum({ 1, 0 / 0 }) end, "plot.spectrum", "series 1 has NaN")
    raises(function() mg.plot.spectrum({ 1, 2 }, { styles = { "bars" } }) end, "plot.spectrum", "styles")
    raises(function() mg.plot.spectrum({ 1, -2 }, { logy = true }) end, "plot.spectrum", "positive")
    raises(function() mg.plot_spectrum({ { 1 }, { 2 } }, { labels = { "a" } }) end, "plot.spectrum", "2 names")
    raises(function() mg.plot.spectrum_bands(mg.zeros(3, 2)) end, "plot.spectrum_bands", "positive")
    raises(function() mg.plot.spectrum_bands(randn(3, 2), { quantiles = { 2 } }) end, "quantiles'[1]", "[0, 1]")
    raises(function() mg.plot.spectrum_bands(randn(3, 2), { x = { 1 } }) end, "option 'x'", "3 values")
    raises(function() mg.plot.spectrum_bands(randn(3)) end, "plot.spectrum_bands", "(K, ...)")
    raises(function() mg.plot.spectrum_bands(randn(3, 2), { bins = 3 }) end, "plot.spectrum_bands", "bins")
  end)
end)


---------------------------------------------------------------- Newman (1986)

if not support.python_can_import("scipy.special") then
  describe("Newman's exponents", function() pending("needs " .. support.PYTHON .. " with scipy") end)
  return
end

describe("Newman's exact exponents for products of Gaussian matrices", function()
  it("lambda_i = (ln(2 s^2) + psi((N - i + 1) / 2)) / 2, within 4 standard errors", function()
    local N, s, B, T = 4, 0.5, 16, 3000
    local p = assert(io.popen(support.PYTHON .. " -c \"from scipy.special import digamma; import math; "
      .. string.format("print(' '.join(repr((math.log(2*%.17g**2)+digamma((%d-i+1)/2))/2) for i in range(1,%d)))\"", s, N, N + 1)))
    local line = p:read("l")
    p:close()
    local expect = {}
    for v in line:gmatch("%S+") do expect[#expect + 1] = tonumber(v) end
    assert.are.equal(N, #expect)
    mg.manual_seed(8)
    local step = function(_, h)                        -- a fresh W_t per step and per trajectory
      return h:unsqueeze(2):matmul(mg.randn(B, N, N, F64) * s):squeeze(2)
    end
    local r = mg.lyapunov(step, randn(B, N), nil, { steps = T })
    local se = ((r.exponents - r.mean) ^ 2):sum(1) / (B - 1)
    for i = 1, N do
      local err, sei = math.abs(r.mean:get(i) - expect[i]), math.sqrt(se:get(i) / B)
      assert.is_true(err < 4 * sei, string.format("lambda_%d: %.5f vs Newman %.5f (standard error %.5f)",
                                                   i, r.mean:get(i), expect[i], sei))
    end
  end)
end)
