-- Threads (parallel.c): elementwise kernels and reductions above the size threshold give the
-- same numbers on 1, 2 and 3 threads (elementwise: every element computed the same way;
-- sum/max/min: split along an output dim or fixed chunks combined in order), and agree with a
-- float64 reference within float32 rounding; mg.set_num_threads sets the state's count.
-- The sequence ops (mg.lstm_seq, mg.gru_seq: each thread runs the whole time loop for a block
-- of batch rows) give bit-identical outputs and gradients on 1, 2 and 3 threads.
-- Matrix products (linalg.c, mg_gemm_par: blocks of output rows or columns set by the shape,
-- never split along K) give the same bits on 1, 2 and 3 threads and the products computed
-- without BLAS; so do the sequence ops at sizes where their GEMMs, bias sums and (B, T)
-- transposes are shared out, and batch_jacobian.
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises

local saved
before_each(function() saved = mg.get_num_threads() end)
after_each(function() mg.set_num_threads(saved) end)

-- Whether 'a' and 'b' hold the same numbers (NaN equal to NaN) in the same shape.
local function identical(a, b)
  if mg.shapestr(a) ~= mg.shapestr(b) or a.dtype ~= b.dtype then return false end
  local both_nan = mg.ne(a, a) * mg.ne(b, b)
  local differ = mg.ne(a, b) - both_nan
  return differ:sum():item() == 0
end

-- Every kernel family on operands big enough to be shared out (700 x 300 = 210,000 elements).
local function results(dtype)
  mg.manual_seed(7)
  local x = mg.randn(700, 300, { dtype = dtype })
  local col, row = mg.randn(700, 1, { dtype = dtype }), mg.randn(1, 300, { dtype = dtype })
  local xt = x:transpose(1, 2)
  return {
    col + row, x * x, mg.exp(xt), mg.tanh(x:narrow(2, 2, 250)), x / 3, 2 - x,
    mg.where(mg.gt(x, 0), x, col), x:clamp(-0.5, 0.5),
    x:sum(), x:sum(1), x:sum(2), xt:sum(1), x:max(), xt:min(2), x:mean(), x:var(2),
  }
end

describe("kernels on several threads", function()
  for _, dtype in ipairs { "float32", "float64" } do
    it("give the numbers of one thread (" .. dtype .. ")", function()
      mg.set_num_threads(1)
      local ref = results(dtype)
      for _, n in ipairs { 2, 3 } do
        mg.set_num_threads(n)
        local got = results(dtype)
        assert.are.equal(#ref, #got)
        for k = 1, #ref do
          assert.is_true(identical(ref[k], got[k]),
                         ("result %d differs on %d threads (%s)"):format(k, n, dtype))
        end
      end
    end)
  end

  it("sum within float32 rounding of a float64 reference", function()
    mg.manual_seed(3)
    local x = mg.rand(1000, 500)                       -- 500,000 elements in [0, 1)
    local ref = x:to("float64")
    for _, n in ipairs { 1, 2 } do
      mg.set_num_threads(n)
      local s, r = x:sum():item(), ref:sum():item()
      assert.is_true(math.abs(s - r) <= 1e-6 * r, ("sum %g against %g"):format(s, r))
      local cols = (x:sum(1):to("float64") - ref:sum(1)):abs():max():item()
      -- 1000 float32 additions of values in [0, 1): the bound n eps sum = 1000 2^-24 1000
      assert.is_true(cols <= 1000 * 2 ^ -24 * 1000, "column sums off by " .. cols)
      assert.are.equal(ref:max():item(), x:max():to("float64"):item())
    end
  end)

  it("cover every element of a large broadcast", function()
    mg.set_num_threads(2)
    local a = mg.arange(600, F64):reshape(600, 1)
    local b = mg.arange(400, F64):reshape(1, 400) * 1000
    local y = a + b                                    -- element (i, j) = i + 1000 j, 0-based
    assert.are.equal(400 * 179700 + 600 * 1000 * 79800, y:sum():item())
    assert.are.equal(599 + 399000, y:max():item())
    assert.are.equal(0, y:min():item())
    assert.are.equal(1234, y[235][2]:item())
  end)
end)

-- Each result of 'fn'() on 1 thread, then the same bits on 2 and 3.
local function same_bits_on_threads(fn)
  mg.set_num_threads(1)
  local ref = fn()
  for _, n in ipairs { 2, 3 } do
    mg.set_num_threads(n)
    local got = fn()
    assert.are.equal(#ref, #got)
    for k = 1, #ref do
      assert.are.equal(support.bits(ref[k]), support.bits(got[k]),
                       ("result %d differs on %d threads"):format(k, n))
    end
  end
  return ref
end

-- a @ b for 2-d a, b without BLAS (float64 products summed by a reduction), 32 columns at a time.
local function naive_matmul(a, b)
  a, b = a:to("float64"), b:to("float64")
  local n, parts = b:shape()[2], {}
  for j = 1, n, 32 do
    local w = math.min(32, n - j + 1)
    parts[#parts + 1] = (a:unsqueeze(3) * b:narrow(2, j, w):unsqueeze(1)):sum(2)
  end
  return mg.cat(parts, 2)
end

-- Products big enough to be cut into blocks (of rows when M >= N, else of columns), with odd
-- sizes that leave a short last block, transposed operands, a short K, a batch folded into
-- rows and a batch of separate products; and the gradients of a weighted sum of one.
local function products(dtype)
  mg.manual_seed(5)
  local function r(...) return mg.randn(...):to(dtype) end
  local a1, b1 = r(301, 171), r(171, 257)                   -- rows
  local a2, b2 = r(45, 301), r(301, 533)                    -- columns
  local a3, b3 = r(1003, 3), r(3, 901)                      -- K = 3
  local at4, bt4 = r(171, 301), r(257, 171)                 -- a^T @ b^T
  local a5, b5 = r(3, 201, 151), r(151, 190)                -- folded: 603 rows
  local a6, b6 = r(2, 181, 170), r(2, 170, 179)             -- two products
  local w = r(301, 257)
  local g = mg.grad(function(x, y) return (mg.matmul(x, y) * w):sum() end,
                    { argnums = { 1, 2 } })(a1, b1)
  return { mg.matmul(a1, b1), mg.matmul(a2, b2), mg.matmul(a3, b3),
           mg.matmul(at4:transpose(1, 2), bt4:transpose(1, 2)), mg.matmul(a5, b5),
           mg.matmul(a6, b6), g[1], g[2] },
         { { a1, b1 }, { a2, b2 }, { a3, b3 }, { at4:transpose(1, 2), bt4:transpose(1, 2) } }
end

describe("matrix products on several threads", function()
  for _, dtype in ipairs { "float32", "float64" } do
    it(dtype .. ": the bits of one thread, and the products computed without BLAS", function()
      local ref = same_bits_on_threads(function() return (products(dtype)) end)
      local _, ops = products(dtype)
      local tol = dtype == "float64" and 1e-12 or 1e-4
      for k, ab in ipairs(ops) do
        local want = naive_matmul(ab[1], ab[2])
        local err = (ref[k]:to("float64") - want):abs():max():item()
        assert.is_true(err <= tol * (1 + want:abs():max():item()),
                       ("product %d off by %g (%s)"):format(k, err, dtype))
      end
    end)
  end

  it("float64 gradients of a product as the rule's own products", function()
    mg.set_num_threads(2)
    local _, ops = products("float64")
    local a, b = ops[1][1], ops[1][2]
    local w = mg.ones(301, 257, F64)
    local g = mg.grad(function(x, y) return (mg.matmul(x, y) * w):sum() end,
                      { argnums = { 1, 2 } })(a, b)
    local ga, gb = naive_matmul(w, b:transpose(1, 2)), naive_matmul(a:transpose(1, 2), w)
    assert.is_true((g[1] - ga):abs():max():item() <= 1e-10)
    assert.is_true((g[2] - gb):abs():max():item() <= 1e-10)
  end)
end)

describe("batch_jacobian on several threads", function()
  it("gives the bits of one thread", function()
    mg.manual_seed(9)
    local W, b, h = mg.randn(301, 301) / 17, mg.randn(301) * 0.1, mg.randn(32, 301)
    local function f(x) return mg.matmul(mg.relu(x), W) + b end
    same_bits_on_threads(function() return { mg.batch_jacobian(f, h) } end)
  end)
end)

-- The outputs of mg.lstm_seq / mg.gru_seq (B = 21 rows: row blocks of 8, 8 and 5) and the
-- gradients of a weighted sum of them with respect to every input. 'large': sizes at which
-- the GEMMs over all T B rows, the bias sums and the (B, T) transposes are shared out too.
local function seq_results(kind, dtype, large)
  mg.manual_seed(11)
  local B, T, d, u = 21, 9, 5, 40
  if large then T, u = 40, 160 end
  local function r(...) return mg.randn(...):to(dtype) end
  local gates = kind == "lstm" and 4 or 3
  local a = { r(B, T, d), r(B, u) }
  if kind == "lstm" then a[#a + 1] = r(B, u) end
  a[#a + 1] = r(d, gates * u) * 0.4
  a[#a + 1] = r(u, gates * u) * 0.4
  a[#a + 1] = (kind == "gru_ra" and r(2, 3 * u) or r(gates * u)) * 0.4
  local w1, w2, w3 = r(B, T, u), r(B, u), r(B, u)
  local function f(...)
    if kind == "lstm" then return mg.lstm_seq(...) end
    local x, h, W, U, b = ...
    return mg.gru_seq(x, h, W, U, b, kind == "gru_ra")
  end
  local argnums = {}
  for i = 1, #a do argnums[i] = i end
  local out = { f(table.unpack(a)) }
  local g = mg.grad(function(...)
    local H, h, c = f(...)
    local l = (H * w1):sum() + (h * w2):sum()
    if c then l = l + (mg.tanh(c) * w3):sum() end
    return l
  end, { argnums = argnums })(table.unpack(a))
  for i = 1, #g do out[#out + 1] = g[i] end
  return out
end

describe("sequence ops on several threads", function()
  for _, kind in ipairs { "lstm", "gru_ra", "gru" } do
    for _, dtype in ipairs { "float32", "float64" } do
      for _, large in ipairs { false, true } do
        it(("%s %s%s: outputs and gradients of one thread, bit for bit"):format(
             kind, dtype, large and " (T = 40, 160 units)" or ""), function()
          same_bits_on_threads(function() return seq_results(kind, dtype, large) end)
        end)
      end
    end
  end

end)

describe("mg.set_num_threads", function()
  it("rejects counts outside 1..1024", function()
    raises(function() mg.set_num_threads(0) end, "thread count must be in 1..1024")
    raises(function() mg.set_num_threads(1025) end, "thread count must be in 1..1024")
  end)
end)
