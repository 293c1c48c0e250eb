-- jacobian_product_spec.lua: Jacobians through elementwise ops with the product written once
-- (tape.c's deferred diagonals, jacobian.c's write_product): the reverse sweep hands the
-- source's cotangent as val * diag and the result is written from the two, contiguous, in its
-- final layout. Checked against the forward mode (which never defers), against one
-- basis vector per sweep (chunks: the sweep multiplies), and against PyTorch in float64;
-- on random shapes, B = 1, non-square weights, strided / expanded / transposed inputs, fan-in,
-- and functions where no diagonal may be deferred.
local mg = require "moongrad"
local support = require "support"
local F64 = support.F64

-- The same Jacobian by the general paths: forward mode, and reverse with one basis vector
-- per sweep (the sweep multiplies each chunk itself).
local function general(jac, f, x)
  local fwd = jac(f, x, { mode = "fwd" })
  local budget = mg.memory().budget
  mg.set_memory_budget(1)
  local ok, chunked = pcall(jac, f, x)
  mg.set_memory_budget(budget)
  assert(ok, chunked)
  return fwd, chunked
end

local function check(jac, f, x, tol, what)
  local J = jac(f, x)
  local fwd, chunked = general(jac, f, x)
  support.assert_close(J, fwd, tol, what .. " vs forward mode")
  support.assert_close(J, chunked, tol, what .. " vs chunked reverse")
  return J
end

local function rnd(seed, ...) mg.manual_seed(seed); return mg.randn(...) end

describe("batch_jacobian through deferred diagonals", function()
  it("relu(h) @ W + b: contiguous (B, N, I), exact W^T relu'(h), random shapes, B = 1, non-square", function()
    for case, s in ipairs { { 1, 5, 5 }, { 3, 4, 7 }, { 7, 9, 2 }, { 2, 1, 3 }, { 5, 33, 17 } } do
      local B, I, N = s[1], s[2], s[3]
      local W, b, h = rnd(case, { I, N }, F64), rnd(case + 10, { N }, F64), rnd(case + 20, { B, I }, F64)
      local J = check(mg.batch_jacobian, function(x) return mg.matmul(mg.relu(x), W) + b end, h,
                      1e-15, "case " .. case)
      assert.are.equal(string.format("(%d,%d,%d)", B, N, I), mg.shapestr(J))
      assert.is_true(J:is_contiguous())
      local closed = W:transpose(1, 2):unsqueeze(1) * mg.gt(h, 0):unsqueeze(2)
      support.assert_close(J, closed, 0, "closed form")
    end
  end)

  it("float32 and large enough for streaming stores (> 4 MiB): the same as the general path", function()
    local W, h = rnd(1, 300, 300) / 17, rnd(2, 13, 300)                 -- 13 * 300 * 300 * 4 bytes
    local J = check(mg.batch_jacobian, function(x) return mg.matmul(mg.relu(x), W) end, h, 1e-6, "f32")
    assert.is_true(J:is_contiguous() and J.dtype == "float32")
    local closed = W:transpose(1, 2):unsqueeze(1) * mg.gt(h, 0):unsqueeze(2)
    support.assert_close(J, closed, 0, "closed form")
  end)

  it("chains of elementwise ops, fan-in, zero-gradient ops, add of one tensor to itself", function()
    local W, W2 = rnd(3, { 6, 5 }, F64), rnd(4, { 5, 5 }, F64)
    local h = rnd(5, { 4, 6 }, F64)
    local fs = {
      chain = function(x) return mg.matmul(mg.tanh(mg.sigmoid(mg.leaky_relu(x, 0.1))), W) end,
      after = function(x) return mg.tanh(mg.matmul(x, W)) end,            -- deferred, then settled
      both = function(x) return mg.matmul(mg.tanh(mg.matmul(mg.sin(x), W)) + 1, W2) end,
      fanin = function(x) return mg.matmul(mg.exp(x) + mg.relu(x) + x, W) end,
      self = function(x) local r = mg.relu(x); return mg.matmul(r + r, W) end,
      zero = function(x) return mg.matmul(mg.sign(x) + mg.tanh(x), W) end,
      square = function(x) return mg.matmul(mg.square(mg.cos(x)), W) + mg.matmul(x, W) end,
    }
    for name, f in pairs(fs) do check(mg.batch_jacobian, f, h, 1e-13, name) end
  end)

  it("tanh(h @ W + b), the RNN step: rows of W^T scaled by tanh'(z), no GEMM; with a relu before", function()
    for case, s in ipairs { { 1, 4, 4 }, { 5, 3, 6 }, { 4, 8, 2 } } do
      local B, I, N = s[1], s[2], s[3]
      local W, b, h = rnd(60 + case, { I, N }, F64), rnd(70 + case, { N }, F64), rnd(80 + case, { B, I }, F64)
      local J = check(mg.batch_jacobian, function(x) return mg.tanh(mg.matmul(x, W) + b) end, h,
                      1e-15, "rnn " .. case)
      assert.is_true(J:is_contiguous())
      local t = mg.tanh(mg.matmul(h, W) + b)
      local closed = W:transpose(1, 2):unsqueeze(1) * (1 - t * t):unsqueeze(3)   -- [b, k, j]
      support.assert_close(J, closed, 1e-15, "rnn closed form " .. case)
      local J2 = check(mg.batch_jacobian, function(x) return mg.sigmoid(mg.matmul(mg.relu(x), W) + b) end,
                       h, 1e-15, "relu rnn " .. case)
      assert.is_true(J2:is_contiguous())
    end
    local W, h = rnd(90, 40, 300) / 7, rnd(91, 20, 40)                       -- float32, streamed
    local J = check(mg.batch_jacobian, function(x) return mg.tanh(mg.matmul(mg.relu(x), W)) end, h,
                    1e-6, "f32 rnn")
    assert.is_true(J:is_contiguous() and J.dtype == "float32")
  end)

  it("where the identity's rows must not be used: W from the source, a multi-dim target, batched matmul", function()
    local W = rnd(92, { 4, 4 }, F64)
    local h = rnd(93, { 3, 4 }, F64)
    -- W from the source mixes the batch: reverse mode gives J[b, k, j] = sum over b' of
    -- d f[b', k] / d x[b, j], from the full Jacobian by the forward mode (which never defers)
    local mix = function(x) return mg.tanh(mg.matmul(x, W * x:sum())) end
    local full = mg.jacobian(mix, h, { mode = "fwd" })                      -- (3, 4, 3, 4)
    local want = full:sum(1):permute(2, 1, 3)                                -- [b, k, j]
    support.assert_close(mg.batch_jacobian(mix, h), want, 1e-13, "W from the source")
    for name, f in pairs {
      reshaped = function(x) return mg.tanh(mg.matmul(x, W)):reshape(3, 2, 2) end,
      tanh_of_reshape = function(x) return mg.tanh(mg.matmul(x, W):reshape(3, 2, 2)) end,
      batched = function(x) return mg.tanh(mg.matmul(x:unsqueeze(2), W):squeeze(2)) end,
      twice = function(x) return mg.tanh(mg.matmul(mg.tanh(mg.matmul(x, W)), W)) end,
    } do check(mg.batch_jacobian, f, h, 1e-13, name) end
  end)

  it("ops that must not defer: mul, sub, a broadcast add needing its gradient, two sources", function()
    local W, c = rnd(6, { 5, 5 }, F64), rnd(7, { 3, 5 }, F64)
    local h = rnd(8, { 3, 5 }, F64)
    for name, f in pairs {
      mul = function(x) return mg.matmul(mg.relu(x) * c, W) end,
      sub = function(x) return mg.matmul(c - mg.tanh(x), W) end,
      square_x = function(x) return mg.matmul(mg.relu(x) * x, W) end,
    } do check(mg.batch_jacobian, f, h, 1e-13, name) end
    -- tape form, two sources: h and a per-entry bias added after the relu
    local bias = rnd(9, { 3, 5 }, F64)
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(h); tape:watch(bias)
    local y = mg.matmul(mg.tanh(mg.relu(h) + bias), W)
    local Js = tape:batch_jacobian(y, { h, bias })
    local Jf = tape:batch_jacobian(y, { h, bias }, { mode = "fwd" })
    for k = 1, 2 do support.assert_close(Js[k], Jf[k], 1e-13, "source " .. k) end
  end)

  it("strided, transposed and expanded inputs; a transposed weight", function()
    local X, W = rnd(10, { 6, 4 }, F64), rnd(11, { 7, 6 }, F64)
    local row = rnd(12, { 1, 6 }, F64)
    local Wt = W:transpose(1, 2)                                            -- (6, 7), strided
    local f = function(x) return mg.matmul(mg.relu(x), Wt) + 1 end
    for name, x in pairs {
      transposed = X:transpose(1, 2),                                       -- (4, 6)
      expanded = row:expand(5, 6),
      narrowed = rnd(13, { 4, 9 }, F64):narrow(2, 2, 6),
    } do
      local J = check(mg.batch_jacobian, f, x, 1e-15, name)
      local closed = Wt:transpose(1, 2):unsqueeze(1) * mg.gt(x, 0):unsqueeze(2)
      support.assert_close(J, closed, 0, name .. " closed form")
    end
  end)

  it("check = true, and plain jacobian (no batch dim), through the same path", function()
    local W, h = rnd(14, { 5, 3 }, F64), rnd(15, { 4, 5 }, F64)
    local f = function(x) return mg.matmul(mg.softplus(x), W) end
    local J = mg.batch_jacobian(f, h, { check = true })
    support.assert_close(J, mg.batch_jacobian(f, h, { mode = "fwd" }), 1e-15, "check")
    local v = rnd(16, { 5 }, F64)
    local g = function(x) return mg.matmul(mg.gelu(mg.relu(x)), W) end
    local Jp = check(mg.jacobian, g, v, 1e-15, "plain")
    assert.are.equal("(3,5)", mg.shapestr(Jp))
    assert.is_true(Jp:is_contiguous())
  end)

  it("hessian (recorded sweeps: nothing is deferred) is unchanged", function()
    local W = rnd(17, { 4, 1 }, F64)
    local x = rnd(18, { 4 }, F64)
    local f = function(v) return mg.matmul(mg.tanh(v):unsqueeze(1), W):sum() end
    local H = mg.hessian(f, x)
    -- d2/dx2 of sum_i tanh(x_i) W_i: diag(-2 tanh(x) (1 - tanh(x)^2) W)
    local t = mg.tanh(x)
    local want = mg.diag(-2 * t * (1 - t * t) * W:reshape(4))
    support.assert_close(H, want, 1e-12, "hessian")
  end)
end)

-- W^T reaches the writer as a view of W (linalg.c's eye_vjp makes no copy): write_product
-- gathers blocks of 16 of its rows (4 x 4 transposes where the rows lie side by side, element
-- by element otherwise) and writes each for every batch entry; results past 4 MiB are streamed
-- and shared over threads, smaller ones written by one thread.
describe("batch_jacobian from a view of the weight (gathered blocks)", function()
  local saved
  before_each(function() saved = mg.get_num_threads() end)
  after_each(function() mg.set_num_threads(saved) end)

  -- J[b, k, :] by one reverse sweep per output entry k (the tape's VJP with the seed e_k on
  -- every batch row): the rows of a batch Jacobian without any Jacobian code.
  local function per_row(f, x)
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(x)
    local y = f(x)
    tape:stop()                                         -- nothing after this is recorded
    local B, K = y:shape()[1], y:shape()[2]
    local rows = {}
    for k = 1, K do
      local e = mg.zeros({ B, K }, { dtype = y.dtype })
      for b = 1, B do e:set(1, b, k) end
      rows[k] = tape:gradient(y, x, { output_gradients = e }):unsqueeze(2)   -- (B, 1, N)
    end
    return mg.cat(rows, 2)
  end

  -- The same bits on 1, 2 and 3 threads; returns the 1-thread result.
  local function on_threads(fn)
    mg.set_num_threads(1)
    local ref = fn()
    for _, n in ipairs { 2, 3 } do
      mg.set_num_threads(n)
      assert.are.equal(support.bits(ref), support.bits(fn()), n .. " threads")
    end
    return ref
  end

  it("odd sizes, float64 and float32, small and streamed: the per-row VJPs' bits, any thread count", function()
    local F32 = { dtype = "float32" }
    for case, s in ipairs { { 3, 7, 5, F64 }, { 2, 17, 33, F64 }, { 5, 16, 16, F64 },
                            { 1, 37, 3, F32 }, { 31, 131, 301, F32 },      -- 4.9 MB: streamed
                            { 7, 45, 50, F32 }, { 4, 19, 21, F64 },        -- rows of several
                            -- vectors and a tail, blocks of 16 and a partial one, several b:
                            -- the rows written next fetched meanwhile (AVX-512 rows)
                            { 9, 250, 259, F64 } } do                      -- 4.7 MB: streamed
      local B, I, N, o = s[1], s[2], s[3], s[4]
      local dt = o.dtype
      local W, b, h = rnd(200 + case, { I, N }, o), rnd(210 + case, { N }, o), rnd(220 + case, { B, I }, o)
      local f = function(x) return mg.matmul(mg.relu(x), W) + b end
      local J = on_threads(function() return mg.batch_jacobian(f, h) end)
      assert.are.equal(string.format("(%d,%d,%d)", B, N, I), mg.shapestr(J))
      assert.is_true(J:is_contiguous() and J.dtype == dt, "contiguous " .. dt .. ", case " .. case)
      assert.are.equal(support.bits(per_row(f, h)), support.bits(J), "per-row VJPs, case " .. case)
      local closed = W:transpose(1, 2):unsqueeze(1) * mg.gt(h, 0):unsqueeze(2)
      assert.are.equal(support.bits(closed), support.bits(J), "closed form, case " .. case)
    end
  end)

  it("weights as strided, narrowed, expanded and transposed views; strided and expanded inputs", function()
    local big = rnd(230, { 9, 40 }, F64)
    local cube = rnd(231, { 9, 21, 2 }, F64)
    local row = rnd(232, { 1, 21 }, F64)
    local Ws = {                                        -- K = 21: a block of 16 rows of W^T and 5
      narrowed = big:narrow(2, 4, 21),                  -- rows of W^T side by side, W's rows 40 apart
      stepped = cube:select(3, 2),                      -- strides (42, 2): element by element
      expanded = row:expand(9, 21),                     -- W^T's rows have stride 0
      transposed = rnd(233, { 21, 9 }, F64):transpose(1, 2),   -- W^T contiguous: rows of unit stride
    }
    local xs = {
      plain = rnd(234, { 6, 9 }, F64),
      strided = rnd(235, { 9, 6 }, F64):transpose(1, 2),
      expanded = rnd(236, { 1, 9 }, F64):expand(4, 9),
    }
    for wname, W in pairs(Ws) do
      for xname, x in pairs(xs) do
        local what = wname .. " W, " .. xname .. " x"
        local f = function(v) return mg.tanh(mg.matmul(mg.relu(v), W) + 0.5) end
        local J = on_threads(function() return mg.batch_jacobian(f, x) end)
        support.assert_close(J, per_row(f, x), 1e-15, what .. " vs per-row VJPs")
        support.assert_close(J, mg.batch_jacobian(f, x, { mode = "fwd" }), 1e-15, what .. " vs forward mode")
        local g = function(v) return mg.matmul(mg.relu(v), W) end
        local closed = W:transpose(1, 2):unsqueeze(1) * mg.gt(x, 0):unsqueeze(2)
        assert.are.equal(support.bits(closed), support.bits(mg.batch_jacobian(g, x)), what .. " closed form")
      end
    end
  end)

  it("graphs where W^T is copied instead (a mul, fan-in, two matmuls, a settled product): the same values", function()
    local W, W2, c = rnd(250, { 21, 18 }, F64), rnd(251, { 21, 18 }, F64), rnd(252, { 5, 21 }, F64)
    local x = rnd(253, { 5, 21 }, F64)
    for name, f in pairs {
      mul = function(v) return mg.matmul(v * c, W) + 1 end,
      settled = function(v) return mg.tanh(mg.matmul(mg.relu(v * c), W)) end,
      fanin = function(v) return mg.matmul(mg.relu(v) + v, W) end,
      two = function(v) return mg.matmul(mg.relu(v), W) + mg.matmul(mg.tanh(v), W2) end,
      reused = function(v) local r = mg.relu(v); return mg.matmul(r, W) + r:sum(2, true) end,
    } do
      local J = on_threads(function() return mg.batch_jacobian(f, x) end)
      support.assert_close(J, per_row(f, x), 1e-14, name .. " vs per-row VJPs")
      support.assert_close(J, mg.batch_jacobian(f, x, { mode = "fwd" }), 1e-14, name .. " vs forward mode")
    end
  end)

  it("h @ W + b (no factors): a Jacobian of its own storage, not a view of W", function()
    local W, h = rnd(240, { 5, 7 }, F64), rnd(241, { 3, 5 }, F64)
    local J = mg.batch_jacobian(function(x) return mg.matmul(x, W) + 1 end, h)
    local want = W:transpose(1, 2):unsqueeze(1):expand(3, 7, 5):contiguous()
    assert.are.equal(support.bits(want), support.bits(J))
    W:set(100, 2, 3)                                    -- J[b, 3, 2] was W[2, 3]
    assert.are.equal(support.bits(want), support.bits(J), "J changed with W")
  end)
end)

describe("batch_jacobian through deferred diagonals against PyTorch (float64)", function()
  local have = support.python_can_import("torch")
  local dir
  setup(function() dir = support.tmpdir() end)
  teardown(function() if dir then support.rmtree(dir) end end)

  it("relu / tanh / sigmoid chains on random shapes, B = 1 included", function()
    if not have then pending("torch is not importable") return end
    local cases = { { 1, 4, 3 }, { 3, 5, 5 }, { 6, 2, 7 } }
    for i, s in ipairs(cases) do
      local B, I, N = s[1], s[2], s[3]
      local W, b, h = rnd(30 + i, { I, N }, F64), rnd(40 + i, { N }, F64), rnd(50 + i, { B, I }, F64)
      mg.save(W, dir .. "/W" .. i .. ".npy"); mg.save(b, dir .. "/b" .. i .. ".npy")
      mg.save(h, dir .. "/h" .. i .. ".npy")
      local f = function(x) return mg.matmul(mg.sigmoid(mg.tanh(mg.relu(x))), W) + b end
      mg.save(mg.batch_jacobian(f, h), dir .. "/J" .. i .. ".npy")
    end
    local script = dir .. "/ref.py"
    support.write_file(script, ([[
import sys, numpy as np, torch
d = sys.argv[1]
for i in range(1, %d):
    W, b, h = (torch.from_numpy(np.load(f"{d}/{n}{i}.npy")) for n in "Wbh")
    f = lambda x: torch.sigmoid(torch.tanh(torch.relu(x))) @ W + b
    J = torch.stack([torch.autograd.functional.jacobian(f, h[k:k+1])[0, :, 0, :] for k in range(h.shape[0])])
    got = np.load(f"{d}/J{i}.npy")
    err = np.abs(got - J.numpy()).max()
    if got.shape != tuple(J.shape) or not err <= 1e-14:
        sys.exit(f"case {i}: shape {got.shape} vs {tuple(J.shape)}, max difference {err}")
]]):format(#cases + 1))
    local ok = os.execute(string.format("%s %s %s 2>%s/err.txt", support.PYTHON, support.shq(script),
                                        support.shq(dir), dir))
    assert(ok, support.read_file(dir .. "/err.txt"))
  end)
end)

-- The result's layout is the library's, whatever else is going on: another tape recording
-- (then nothing is deferred: the outer tape must see every multiply, and the sweep's (K, B, N)
-- was handed out as a permuted view), a memory budget that splits the basis into chunks, the
-- forward mode. Found when a persistent tape a spec had left to the collector was still
-- recording, and the gathered-blocks case came out non-contiguous in a run of every spec file.
describe("batch_jacobian and jacobian: a contiguous result whatever else records or is set", function()
  local function same(J, want, what)
    assert.is_true(J:is_contiguous(), what .. ": contiguous")
    assert.are.equal(want.dtype, J.dtype, what .. ": dtype")
    assert.are.equal(mg.shapestr(want), mg.shapestr(J), what .. ": shape")
    assert.are.equal(support.bits(want), support.bits(J), what .. ": bits")
  end

  it("under a recording tape, a tiny memory budget, forward mode; f32 and f64, with and without factors", function()
    for case, o in ipairs { F64, { dtype = "float32" } } do
      local W, b, h = rnd(300 + case, { 7, 5 }, o), rnd(310 + case, { 5 }, o), rnd(320 + case, { 3, 7 }, o)
      for name, f in pairs {
        relu = function(x) return mg.matmul(mg.relu(x), W) + b end,
        linear = function(x) return mg.matmul(x, W) + b end,
        tanh = function(x) return mg.tanh(mg.matmul(x, W) + b) end,
      } do
        for _, jac in ipairs { mg.batch_jacobian, mg.jacobian } do
          local what = name .. " " .. o.dtype .. (jac == mg.jacobian and " jacobian" or " batch_jacobian")
          local want = jac(f, h)
          assert.is_true(want:is_contiguous(), what .. ": contiguous alone")
          local outer <close> = mg.GradientTape()
          local J = jac(f, h)
          outer:stop()
          same(J, want, what .. " under a recording tape")
          local budget = mg.memory().budget
          mg.set_memory_budget(1)
          local ok, Jc = pcall(jac, f, h)
          mg.set_memory_budget(budget)
          assert(ok, Jc)
          support.assert_close(Jc, want, 1e-6, what .. " chunked")
          assert.is_true(Jc:is_contiguous(), what .. " chunked: contiguous")
          local Jf = jac(f, h, { mode = "fwd" })
          support.assert_close(Jf, want, 1e-6, what .. " forward mode")
          assert.is_true(Jf:is_contiguous(), what .. " forward mode: contiguous")
        end
      end
    end
  end)

  it("the recording tape still differentiates through the Jacobian (its copy is recorded)", function()
    local W, b, h = rnd(330, { 7, 5 }, F64), rnd(331, { 5 }, F64), rnd(332, { 3, 7 }, F64)
    local outer <close> = mg.GradientTape()
    outer:watch(W)
    local J = mg.batch_jacobian(function(x) return mg.matmul(mg.relu(x), W) + b end, h)
    assert.is_true(J:is_contiguous())
    local g = outer:gradient(J:sum(), W)         -- J[b, n, i] = W[i, n] relu'(h[b, i])
    local want = mg.gt(h, 0):sum(1, true):transpose(1, 2):expand(7, 5)
    assert.are.equal(support.bits(want:contiguous()), support.bits(g))
  end)
end)
