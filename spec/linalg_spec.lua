-- Matrix products (linalg.c): 2-d, batched with broadcast leading dims, 1-d operands as NumPy,
-- transposed and otherwise strided operands, float64 kept exact; checked against hand values
-- and against NumPy (/usr/bin/python3; pending when it has no numpy).
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises
local PY = support.PYTHON
local HAVE_NUMPY = support.python_can_import("numpy")
local naive = support.table_matmul            -- the product by the definition, in plain Lua

describe("matmul of matrices", function()
  it("matches hand values, as function and method", function()
    local a = mg.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    local b = mg.tensor { { 1, 0 }, { 0, 1 }, { 1, 1 } }
    assert.are.same({ { 4, 5 }, { 10, 11 } }, mg.matmul(a, b):totable())
    assert.are.same({ { 4, 5 }, { 10, 11 } }, a:matmul(b):totable())
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 }, { 5, 7, 9 } }, mg.matmul(b, a):totable())
    assert.are.same({ { 14, 32 }, { 32, 77 } }, mg.matmul(a, a:transpose(1, 2)):totable())
  end)

  it("keeps float64 exact where float32 rounds", function()
    local a = mg.tensor({ { 2 ^ 26 + 1, 1 }, { 0.5, 0.25 } }, F64)
    local b = mg.tensor({ { 2 ^ 26 + 1 }, { -1 } }, F64)
    local c = mg.matmul(a, b)
    assert.are.equal("float64", c.dtype)
    assert.are.same({ { 2 ^ 52 + 2 ^ 27 }, { (2 ^ 26 + 1) * 0.5 - 0.25 } }, c:totable())
    local f = mg.matmul(a:to("float32"), b:to("float32"))
    assert.are_not.equal(2 ^ 52 + 2 ^ 27, f:get(1, 1))         -- float32: 2^26 + 1 rounds
    local third = mg.tensor({ { 1 / 3, 2 / 3 } }, F64)
    assert.are.equal(1 / 3 * 3 + 2 / 3 * 3,
                     mg.matmul(third, mg.tensor({ { 3 }, { 3 } }, F64)):item())
  end)

  it("promotes mixed dtypes to float64", function()
    local c = mg.matmul(mg.tensor { { 0.5 } }, mg.tensor({ { 0.1 } }, F64))
    assert.are.equal("float64", c.dtype)
    assert.are.equal(0.05, c:item())
  end)

  it("takes transposed, narrowed, expanded and permuted operands", function()
    local m = mg.arange(36, F64):reshape(6, 6)
    local vals = m:totable()
    local function sub(r0, c0, nr, nc, tr)               -- the same window in Lua
      local t = {}
      for i = 1, nr do
        t[i] = {}
        for j = 1, nc do t[i][j] = tr and vals[c0 + j - 1][r0 + i - 1] or vals[r0 + i - 1][c0 + j - 1] end
      end
      return t
    end
    local at = m:transpose(1, 2):narrow(1, 1, 3):narrow(2, 2, 4)   -- (3,4), column-major
    local bn = m:narrow(1, 2, 4):narrow(2, 3, 2)                   -- (4,2), row gap
    assert.is_false(at:is_contiguous())
    assert.is_false(bn:is_contiguous())
    assert.are.same(naive(sub(1, 2, 3, 4, true), sub(2, 3, 4, 2)), mg.matmul(at, bn):totable())
    local e = mg.tensor({ 1, 2, 3 }, F64):unsqueeze(2):expand(3, 2)   -- strides (1, 0)
    assert.are.same({ { 6, 6 }, { 6, 6 } }, mg.matmul(mg.ones(2, 3, F64), e):totable())
    local s = mg.arange(8, F64):reshape(2, 4):narrow(2, 1, 4):transpose(1, 2):transpose(1, 2)
    assert.are.same(naive(s:totable(), { { 1 }, { 1 }, { 1 }, { 1 } }),
                    mg.matmul(s, mg.ones(4, 1, F64)):totable())
    local everyother = mg.arange(12, F64):reshape(6, 2):select(2, 1):reshape(3, 2)
    assert.are.same(naive(everyother:totable(), { { 1, 0 }, { 0, 1 } }),
                    mg.matmul(everyother, mg.eye(2, F64)):totable())
  end)

  it("handles empty dims", function()
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, mg.matmul(mg.ones(2, 0), mg.ones(0, 3)):totable())
    assert.are.same({ 0, 3 }, mg.matmul(mg.ones(0, 2), mg.ones(2, 3)):shape())
    assert.are.same({ 2, 0 }, mg.matmul(mg.ones(2, 2), mg.ones(2, 0)):shape())
  end)
end)

-- A stride 0 along a dim of size > 1 is no leading dimension BLAS accepts: such operands (an
-- expanded vector, the cotangent sum/mean passes back) must be copied, never read as if dense.
-- Each case holds its values in storage smaller than the matrix BLAS would read.
describe("matmul with expanded (stride 0) vector operands", function()
  local col = function(v, r) return mg.tensor({ { v } }, F64):expand(r, 1) end   -- (r,1), row stride 0
  local row = function(v, c) return mg.tensor({ { v } }, F64):expand(1, c) end   -- (1,c), column stride 0

  it("an (r,1) column with row stride 0, right or left", function()
    local a = mg.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, F64)
    assert.are.equal(0, col(2, 3):stride()[1])
    assert.are.same({ { 12 }, { 30 } }, mg.matmul(a, col(2, 3)):totable())
    assert.are.same({ { 2, 4, 6 }, { 2, 4, 6 }, { 2, 4, 6 } },
                    mg.matmul(col(2, 3), mg.tensor({ { 1, 2, 3 } }, F64)):totable())
    local v = mg.tensor({ 1, 2, 3 }, F64):unsqueeze(1):expand(3, 3):narrow(2, 2, 1)   -- (3,1) of 2s
    assert.are.same({ { 12 }, { 30 } }, mg.matmul(a, v):totable())
  end)

  it("a (1,c) row with column stride 0, left or right", function()
    local b = mg.tensor({ { 1, 2 }, { 3, 4 }, { 5, 6 } }, F64)
    assert.are.same({ { 27, 36 } }, mg.matmul(row(3, 3), b):totable())
    assert.are.same({ { 3, 3, 3 }, { 6, 6, 6 } },
                    mg.matmul(mg.tensor({ { 1 }, { 2 } }, F64), row(3, 3)):totable())
  end)

  it("batched 1x1 and (r,1) matrices whose batch stride is 0", function()
    local a = mg.tensor({ { { 3 } } }, F64):expand(3, 1, 1)
    local w = mg.tensor({ { 1, 2, 3, 4 } }, F64)
    assert.are.same({ { { 3, 6, 9, 12 } }, { { 3, 6, 9, 12 } }, { { 3, 6, 9, 12 } } },
                    mg.matmul(a, w):totable())
    local c = mg.tensor({ { { 2 } } }, F64):expand(2, 3, 1)            -- (2,3,1), strides 0
    assert.are.same({ { { 2, 4, 6, 8 }, { 2, 4, 6, 8 }, { 2, 4, 6, 8 } },
                      { { 2, 4, 6, 8 }, { 2, 4, 6, 8 }, { 2, 4, 6, 8 } } },
                    mg.matmul(c, w):totable())
  end)

  it("the gradient through sum, whose cotangent has strides 0 (issue example)", function()
    local A = mg.tensor({ { 1, 2 }, { 3, 4 }, { 5, 6 } }, F64)
    local g = mg.grad(function(A) return mg.matmul(A, mg.tensor({ { 1 }, { 2 } }, F64)):sum() end)(A)
    assert.are.same({ { 1, 2 }, { 1, 2 }, { 1, 2 } }, g:totable())
    local gb = mg.grad(function(b) return mg.matmul(A, b):sum() end)(mg.tensor({ { 1 }, { 2 } }, F64))
    assert.are.same({ { 9 }, { 12 } }, gb:totable())
  end)

  it("nn.Dense(n, 1) followed by mean", function()
    mg.manual_seed(11)
    local d = mg.nn.Dense(3, 1, { dtype = "float64" })
    local x = support.randn(4, 3)
    local tape <close> = mg.GradientTape()
    local loss = tape:record(function() return d(x):mean() end)
    local gk, gx = table.unpack(tape:gradient(loss, { d.kernel, x }))
    local xs, k = x:totable(), d.kernel:totable()
    for j = 1, 3 do
      local s = 0
      for i = 1, 4 do s = s + xs[i][j] / 4 end
      assert.is_near(s, gk:get(j, 1), 1e-14)
      for i = 1, 4 do assert.is_near(k[j][1] / 4, gx:get(i, j), 1e-15) end
    end
  end)

  it("batch Jacobians of a matmul chain through a width-1 layer", function()
    local w1 = mg.tensor({ { 1 }, { 2 }, { 3 } }, F64)      -- (3,1)
    local w2 = mg.tensor({ { 5, 7 } }, F64)                  -- (1,2)
    local x = support.randn(4, 3)
    for _, f in ipairs {
      function(x) return mg.matmul(mg.matmul(x, w1), w2) end,
      function(x) return mg.matmul(mg.tanh(mg.matmul(x, w1)) * 0 + mg.matmul(x, w1), w2) end,
    } do
      local J = mg.batch_jacobian(f, x)
      assert.are.same({ 4, 2, 3 }, J:shape())
      for b = 1, 4 do
        assert.are.same({ { 5, 10, 15 }, { 7, 14, 21 } }, J[b]:totable())
      end
    end
  end)
end)

describe("matmul with 1-d operands, as NumPy", function()
  local m = mg.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, F64)
  it("vector @ matrix and matrix @ vector drop the added dim", function()
    assert.are.same({ 9, 12, 15 }, mg.matmul(mg.tensor({ 1, 2 }, F64), m):totable())
    assert.are.same({ 6, 15 }, mg.matmul(m, mg.tensor({ 1, 1, 1 }, F64)):totable())
  end)

  it("vector @ vector is a 0-d dot product", function()
    local d = mg.matmul(mg.tensor { 1, 2, 3 }, mg.tensor { 4, 5, 6 })
    assert.are.equal(0, d:dim())
    assert.are.equal(32, d:item())
  end)

  it("batched with a vector on either side", function()
    local b = mg.arange(24, F64):reshape(2, 3, 4)
    local r = mg.matmul(b, mg.ones(4, F64))
    assert.are.same({ { 6, 22, 38 }, { 54, 70, 86 } }, r:totable())
    local l = mg.matmul(mg.ones(3, F64), b)
    assert.are.same({ { 12, 15, 18, 21 }, { 48, 51, 54, 57 } }, l:totable())
  end)
end)

describe("batched matmul", function()
  it("multiplies matching batches", function()
    local a = mg.arange(12, F64):reshape(2, 2, 3)
    local b = mg.arange(12, F64):reshape(2, 3, 2)
    local c = mg.matmul(a, b)
    assert.are.same({ 2, 2, 2 }, c:shape())
    for i = 1, 2 do assert.are.same(naive(a[i]:totable(), b[i]:totable()), c[i]:totable()) end
  end)

  it("broadcasts leading dims, including a plain matrix", function()
    local a = mg.arange(2 * 1 * 2 * 3, F64):reshape(2, 1, 2, 3)
    local b = mg.arange(4 * 3 * 5, F64):reshape(4, 3, 5)
    local c = mg.matmul(a, b)
    assert.are.same({ 2, 4, 2, 5 }, c:shape())
    for i = 1, 2 do
      for j = 1, 4 do
        assert.are.same(naive(a[i][1]:totable(), b[j]:totable()), c[i][j]:totable())
      end
    end
    local w = mg.arange(6, F64):reshape(3, 2)
    local d = mg.matmul(a, w)                                  -- one GEMM over all rows
    assert.are.same({ 2, 1, 2, 2 }, d:shape())
    assert.are.same(naive(a[2][1]:totable(), w:totable()), d[2][1]:totable())
    local e = mg.matmul(w:transpose(1, 2), b)                  -- a plain matrix on the left
    for j = 1, 4 do assert.are.same(naive(w:transpose(1, 2):totable(), b[j]:totable()), e[j]:totable()) end
  end)

  it("takes batches whose strides are permuted", function()
    local x = mg.arange(24, F64):reshape(3, 2, 4):permute(2, 1, 3)   -- (2,3,4), batch not outermost
    local w = mg.arange(8, F64):reshape(4, 2)
    local c = mg.matmul(x, w)
    for i = 1, 2 do assert.are.same(naive(x[i]:totable(), w:totable()), c[i]:totable()) end
    local wt = mg.arange(16, F64):reshape(2, 2, 4):transpose(2, 3)   -- (2,4,2) batched, transposed
    local c2 = mg.matmul(x, wt)
    for i = 1, 2 do assert.are.same(naive(x[i]:totable(), wt[i]:totable()), c2[i]:totable()) end
  end)
end)

describe("matmul errors", function()
  it("name the function and both shapes", function()
    raises(function() return mg.matmul(mg.ones(2, 3), mg.ones(4, 5)) end,
           "matmul: shapes (2,3) and (4,5) are not aligned (3 ~= 4)")
    raises(function() return mg.matmul(mg.ones(2, 3), mg.ones(2)) end,
           "matmul: shapes (2,3) and (2) are not aligned (3 ~= 2)")
    raises(function() return mg.matmul(mg.ones(3), mg.ones(2)) end,
           "matmul: shapes (3) and (2) are not aligned (3 ~= 2)")
    raises(function() return mg.matmul(mg.ones(2), mg.ones(3, 2)) end,
           "matmul: shapes (2) and (3,2) are not aligned (2 ~= 3)")
    raises(function() return mg.matmul(mg.ones(2, 2, 3), mg.ones(3, 3, 1)) end,
           "matmul", "(2,2,3)", "(3,3,1)", "cannot be broadcast")
    raises(function() return mg.matmul(mg.ones(2, 3), mg.tensor(1)) end, "matmul", "(2,3)", "()",
           "at least 1 dimension")
    local big = 2 ^ 31                                    -- expanded: nothing is allocated
    raises(function() return mg.matmul(mg.ones(1, 1):expand(1, big), mg.ones(1, 1):expand(big, 1)) end,
           "matmul: shapes (1,2147483648) and (2147483648,1)", "exceeds BLAS's limit of 2147483647")
    raises(function() return mg.matmul(mg.ones(2, 3), 2) end, "matmul", "moongrad.Tensor expected")
    raises(function() return mg.ones(2, 3):matmul({}) end, "matmul", "moongrad.Tensor expected")
  end)
end)

describe("BLAS threads", function()
  local saved
  before_each(function() saved = mg.get_num_threads() end)
  after_each(function() mg.set_num_threads(saved) end)

  it("set_num_threads and get_num_threads round-trip", function()
    assert.are.equal("integer", math.type(mg.get_num_threads()))
    assert.is_true(mg.get_num_threads() >= 1)
    mg.set_num_threads(1)
    assert.are.equal(1, mg.get_num_threads())
    mg.set_num_threads(2)
    assert.are.equal(2, mg.get_num_threads())
  end)

  it("give the same products whatever the thread count", function()
    mg.manual_seed(3)
    local a, b = mg.randn(64, 96, F64), mg.randn(96, 80, F64)
    mg.set_num_threads(1)
    local one = mg.matmul(a, b)
    mg.set_num_threads(2)
    local two = mg.matmul(a, b)
    assert.is_true((one - two):abs():max():item() <= 1e-12)
  end)

  it("reject counts that are not positive integers", function()
    raises(function() mg.set_num_threads(0) end, "set_num_threads", "1..1024")
    raises(function() mg.set_num_threads(-2) end, "set_num_threads", "1..1024")
    raises(function() mg.set_num_threads("x") end, "set_num_threads", "number expected")
    raises(function() mg.set_num_threads(1.5) end, "set_num_threads", "integer")
    assert.is_true(mg.get_num_threads() >= 1)
  end)
end)

describe("matmul against NumPy", function()
  local dir = support.scratch(teardown)

  it("agrees on every operand form, float32 and float64", function()
    if not HAVE_NUMPY then pending("/usr/bin/python3 has no numpy") return end
    mg.manual_seed(7)
    local function r(shape, dt) return mg.randn(shape, { dtype = dt }) end
    local cases = {
      function(dt) return r({ 5, 7 }, dt), r({ 7, 3 }, dt) end,
      function(dt) return r({ 7, 5 }, dt):transpose(1, 2), r({ 3, 7 }, dt):transpose(1, 2) end,
      function(dt) return r({ 7 }, dt), r({ 7, 4 }, dt) end,
      function(dt) return r({ 4, 7 }, dt), r({ 7 }, dt) end,
      function(dt) return r({ 7 }, dt), r({ 7 }, dt) end,
      function(dt) return r({ 3, 1, 4, 5 }, dt), r({ 2, 5, 6 }, dt) end,
      function(dt) return r({ 2, 4, 5 }, dt), r({ 5 }, dt) end,
      function(dt) return r({ 2, 3, 4, 6 }, dt):narrow(4, 2, 4), r({ 4, 2 }, dt) end,
      function(dt) return r({ 6, 2, 3 }, dt):permute(2, 3, 1), r({ 2, 4, 6 }, dt):transpose(2, 3) end,
    }
    local n, want = 0, {}
    for _, dt in ipairs { "float32", "float64" } do
      for _, case in ipairs(cases) do
        n = n + 1
        local a, b = case(dt)
        mg.save(a, dir .. "/a" .. n .. ".npy")
        mg.save(b, dir .. "/b" .. n .. ".npy")
        want[n] = { mg.matmul(a, b), dt }
      end
    end
    local script = dir .. "/mm.py"
    local f = assert(io.open(script, "w"))
    f:write("import sys\nimport numpy as np\nd, n = sys.argv[1], int(sys.argv[2])\n",
            "for i in range(1, n + 1):\n",
            "    a, b = np.load(f'{d}/a{i}.npy'), np.load(f'{d}/b{i}.npy')\n",
            "    np.save(f'{d}/c{i}.npy', np.matmul(a.astype(np.float64), b.astype(np.float64)))\n")
    f:close()
    assert.is_true(os.execute(PY .. " '" .. script .. "' '" .. dir .. "' " .. n) == true)
    for i = 1, n do
      local got, dt = want[i][1], want[i][2]
      local ref = mg.load(dir .. "/c" .. i .. ".npy")
      assert.are.same(ref:shape(), got:shape(), "case " .. i)
      local worst = (got:to("float64") - ref):abs():max():item()
      assert.is_true(worst <= (dt == "float64" and 1e-12 or 1e-4),
                     ("case %d (%s): off by %g"):format(i, dt, worst))
    end
  end)
end)
