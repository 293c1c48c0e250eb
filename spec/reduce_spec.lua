-- Reductions (reduce.c): sum, mean, var (population, as np.var), std, max, min, argmax,
-- argmin, norm over everything, one dim, several dims, with keepdim; softmax and log_softmax
-- stay finite for large inputs.
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises
local close = support.closeness { tolerance = "relative", nonfinite = true }

local a                                  -- {{1,2,3},{4,5,6}}, float64 so values are exact
local cube                               -- 0..23 as (2,3,4): element (i,j,k) = 12i + 4j + k
before_each(function()
  a = mg.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, F64)
  cube = mg.arange(24, F64):reshape(2, 3, 4)
end)

describe("sum and mean", function()
  it("over everything give 0-d tensors", function()
    assert.are.equal(0, a:sum():dim())
    assert.are.equal(21, a:sum():item())
    assert.are.equal(3.5, a:mean():item())
    assert.are.equal(21, mg.sum(a):item())
    assert.are.same({ 1, 1 }, a:sum(nil, true):shape())
  end)

  it("over one dim, negative dims and keepdim", function()
    assert.are.same({ 5, 7, 9 }, a:sum(1):totable())
    assert.are.same({ 6, 15 }, a:sum(2):totable())
    assert.are.same({ 6, 15 }, a:sum(-1):totable())
    assert.are.same({ { 6 }, { 15 } }, a:sum(2, true):totable())
    assert.are.same({ { 5, 7, 9 } }, a:sum(1, true):totable())
    assert.are.same({ 2.5, 3.5, 4.5 }, a:mean(1):totable())
    assert.are.same({ { 2 }, { 5 } }, mg.mean(a, 2, true):totable())
  end)

  it("over several dims", function()
    assert.are.same({ 60, 92, 124 }, cube:sum { 1, 3 }:totable())           -- 60 + 32 j
    assert.are.same({ 60, 92, 124 }, cube:sum { 3, -3 }:totable())
    assert.are.same({ 1, 3, 1 }, cube:sum({ 1, 3 }, true):shape())
    assert.are.same({ 7.5, 11.5, 15.5 }, cube:mean { 1, 3 }:totable())
    assert.are.equal(276, cube:sum { 1, 2, 3 }:item())
    assert.are.same(cube:totable(), cube:sum {}:totable())                 -- no dims: no-op
  end)

  it("of non-contiguous views", function()
    local t = cube:transpose(1, 3)                                          -- (4,3,2)
    assert.are.same({ { 12, 20, 28 }, { 14, 22, 30 }, { 16, 24, 32 }, { 18, 26, 34 } },
                    t:sum(3):totable())
    assert.are.same({ 60, 92, 124 }, t:sum { 1, 3 }:totable())
    local n = cube:narrow(3, 2, 2)                                          -- k = 1, 2
    assert.are.same({ { 3, 11, 19 }, { 27, 35, 43 } }, n:sum(3):totable())
    local e = mg.tensor({ 1, 2 }, F64):expand(3, 2)
    assert.are.same({ 3, 6 }, e:sum(1):totable())
  end)

  it("keep float64 exact", function()
    local x = mg.tensor({ 1024, 0.5, 0.25, 0.125, 2 ^ -20 }, F64)
    assert.are.equal(1024 + 0.5 + 0.25 + 0.125 + 2 ^ -20, x:sum():item())
    assert.are.equal((0.1 + 0.2) / 2, mg.tensor({ 0.1, 0.2 }, F64):mean():item())
    assert.are.equal(1, mg.tensor({ 2 ^ 30, 1, -2 ^ 30 }, F64):sum():item())  -- 0 in float32
  end)

  it("sum float32 in a wide accumulator", function()
    local x = mg.full({ 1000000 }, 0.1)
    close(100000, x:sum():item(), 1e-6)
  end)

  it("of empty and 0-d tensors", function()
    assert.are.equal(0, mg.zeros(0):sum():item())
    assert.are.same({ 0, 0, 0 }, mg.zeros(0, 3):sum(1):totable())
    close(0 / 0, mg.zeros(0):mean():item())
    assert.are.equal(5, mg.tensor(5):sum():item())
    assert.are.equal(5, mg.tensor(5):mean():item())
  end)
end)

describe("var and std", function()
  it("are the population statistics, as np.var and np.std", function()
    close(17.5 / 6, a:var():item(), 1e-15)
    close(math.sqrt(17.5 / 6), a:std():item(), 1e-15)
    close({ 2.25, 2.25, 2.25 }, a:var(1):totable(), 1e-15)
    close({ 2 / 3, 2 / 3 }, a:var(2):totable(), 1e-15)
    close({ { 1.5, 1.5, 1.5 } }, a:std(1, true):totable(), 1e-15)
    close({ 143 / 12, 143 / 12 }, cube:var { 2, 3 }:totable(), 1e-14)  -- var of 0..11
    close({ { 6, 6, 6, 6 }, { 6, 6, 6, 6 }, { 6, 6, 6, 6 } }, cube:std(1):totable(), 1e-15)
    assert.are.equal(0, mg.tensor({ 7, 7, 7 }, F64):var():item())
  end)

  it("are accurate for large offsets (two passes)", function()
    local x = mg.tensor({ 1e8 + 1, 1e8 + 2, 1e8 + 3 }, F64)
    close(2 / 3, x:var():item(), 1e-12)
  end)
end)

describe("max, min, argmax, argmin", function()
  it("over everything", function()
    assert.are.equal(6, a:max():item())
    assert.are.equal(1, a:min():item())
    assert.are.equal(6, a:argmax():item())               -- 1-based, of the flattened tensor
    assert.are.equal(1, a:argmin():item())
  end)

  it("the first of equal maxima wins", function()
    assert.are.equal(2, mg.tensor { 1, 3, 3, 2 }:argmax():item())
    assert.are.equal(1, mg.tensor { 1, 3, 1, 2 }:argmin():item())
  end)

  it("over one dim return values and 1-based indices", function()
    local v, i = a:max(1)
    assert.are.same({ 4, 5, 6 }, v:totable())
    assert.are.same({ 2, 2, 2 }, i:totable())
    v, i = a:min(2, true)
    assert.are.same({ { 1 }, { 4 } }, v:totable())
    assert.are.same({ { 1 }, { 1 } }, i:totable())
    assert.are.same({ 3, 3 }, a:argmax(2):totable())
    assert.are.same({ { 3 }, { 3 } }, a:argmax(-1, true):totable())
    assert.are.same({ 1, 1, 1 }, a:argmin(1):totable())
    local m = mg.tensor { { 3, 9, 1 }, { 8, 2, 7 } }:transpose(1, 2)   -- strided
    v, i = m:max(2)
    assert.are.same({ 8, 9, 7 }, v:totable())
    assert.are.same({ 2, 1, 2 }, i:totable())
  end)

  it("over several dims", function()
    assert.are.same({ 15, 19, 23 }, cube:max { 1, 3 }:totable())
    assert.are.same({ { { 0 }, { 4 }, { 8 } } }, cube:min({ 1, 3 }, true):totable())
  end)

  it("propagate nan, as NumPy", function()
    close(0 / 0, mg.tensor { 1, 0 / 0, 3 }:max():item())
    close(0 / 0, mg.tensor { 1, 0 / 0, 3 }:min():item())
    assert.are.equal(2, mg.tensor { 1, 0 / 0, 3 }:argmax():item())
  end)

  it("of a 0-d tensor", function()
    assert.are.equal(5, mg.tensor(5):max():item())
    assert.are.equal(1, mg.tensor(5):argmax():item())
  end)

  it("reject empty reductions, naming the function", function()
    raises(function() return mg.zeros(0):max() end, "max", "empty")
    raises(function() return mg.zeros(0, 3):min(1) end, "min", "empty dimension 1")
    raises(function() return mg.zeros(0):argmax() end, "argmax", "empty tensor")
    raises(function() return mg.zeros(0, 3):argmax(1) end, "argmax", "empty dimension")
  end)

  it("over a non-empty dim of an empty tensor give empty results", function()
    local v, i = mg.zeros(0, 3):max(2)
    assert.are.same({ 0 }, v:shape())
    assert.are.same({ 0 }, i:shape())
    assert.are.same({ 3, 0 }, mg.zeros(3, 0, 2):argmin(3):shape())
  end)
end)

describe("norm", function()
  it("is the 2-norm over everything, one or several dims", function()
    close(math.sqrt(91), a:norm():item(), 1e-15)
    close({ math.sqrt(14), math.sqrt(77) }, a:norm(2):totable(), 1e-15)
    close({ { math.sqrt(17), math.sqrt(29), math.sqrt(45) } }, a:norm(1, true):totable(), 1e-15)
    close(math.sqrt(91), a:norm { 1, 2 }:item(), 1e-15)
    assert.are.equal(5, mg.tensor { 3, -4 }:norm():item())
  end)
end)

describe("reduction dims", function()
  it("are checked, and errors name the function and the dim", function()
    for _, name in ipairs { "sum", "mean", "var", "std", "max", "min", "norm" } do
      -- a method call written out, as users write it: t:sum(3)
      local call = load("local t, d = ... return t:" .. name .. "(d)")
      raises(function() return call(a, 3) end, name, "dimension 3 out of range for a 2-d tensor")
      raises(function() return call(a, 0) end, name, "dimension 0 out of range")
      raises(function() return call(a, -3) end, name, "dimension -3 out of range")
      raises(function() return call(a, { 1, 5 }) end, name, "dimension 5 out of range for a 2-d tensor")
      raises(function() return call(a, { 1, 1 }) end, name, "dimension 1 given twice")
      raises(function() return call(a, { "x" }) end, name, "dimension x out of range")
    end
    raises(function() return a:argmax(3) end, "argmax", "dimension 3 out of range")
    raises(function() return mg.tensor(5):sum(1) end, "sum", "dimension 1 out of range for a 0-d tensor")
    raises(function() return mg.sum(42) end, "sum", "moongrad.Tensor expected")
  end)
end)

describe("softmax and log_softmax", function()
  local function softmax(row)
    local m, z, out = -math.huge, 0, {}
    for _, v in ipairs(row) do m = math.max(m, v) end
    for _, v in ipairs(row) do z = z + math.exp(v - m) end
    for i, v in ipairs(row) do out[i] = math.exp(v - m) / z end
    return out
  end

  it("match hand values along the last dim by default", function()
    local x = mg.tensor({ { 1, 2, 3 }, { 0, 0, 0 } }, F64)
    close({ softmax { 1, 2, 3 }, { 1 / 3, 1 / 3, 1 / 3 } }, mg.softmax(x):totable(), 1e-15)
    close({ softmax { 1, 2, 3 }, { 1 / 3, 1 / 3, 1 / 3 } }, x:softmax(2):totable(), 1e-15)
    local ls = mg.log_softmax(x, -1):totable()
    close(math.log(softmax { 1, 2, 3 }[3]), ls[1][3], 1e-15)
    close(-math.log(3), ls[2][1], 1e-15)
  end)

  it("along the first dim, and of strided views", function()
    local x = mg.tensor({ { 1, 0 }, { 3, 0 } }, F64)
    local s = mg.softmax(x, 1):totable()
    close({ { softmax { 1, 3 }[1], 0.5 }, { softmax { 1, 3 }[2], 0.5 } }, s, 1e-15)
    close(mg.softmax(x, 1):transpose(1, 2):totable(),
          mg.softmax(x:transpose(1, 2), 2):totable(), 1e-15)
  end)

  it("stay finite for large inputs in float32 and float64", function()
    for _, opt in ipairs { F64, { dtype = "float32" } } do
      local x = mg.tensor({ { 1000, 1001, 1002 }, { -1000, 0, 1000 } }, opt)
      local s = mg.softmax(x, 2):totable()
      close(softmax { 0, 1, 2 }, s[1], 1e-6)
      close({ 0, 0, 1 }, s[2], 1e-6)
      local ls = mg.log_softmax(x, 2):totable()
      close({ -2000, -1000, 0 }, ls[2], 1e-6)
      close(math.log(softmax { 0, 1, 2 }[1]), ls[1][1], 1e-6)
      local sums = mg.softmax(x * 50, 2):sum(2):totable()
      close({ 1, 1 }, sums, 1e-6)
    end
  end)

  it("handle -inf entries", function()
    local ls = mg.log_softmax(mg.tensor({ -math.huge, 0 }, F64)):totable()
    close({ -math.huge, 0 }, ls)
  end)

  it("reject bad dims, naming the function", function()
    raises(function() return mg.softmax(mg.tensor(1)) end, "softmax", "at least 1 dimension")
    raises(function() return mg.log_softmax(mg.tensor(1)) end, "log_softmax", "at least 1 dimension")
    raises(function() return mg.softmax(a, 3) end, "softmax", "dimension 3 out of range for a 2-d tensor")
    raises(function() return a:log_softmax(0) end, "log_softmax", "dimension 0 out of range")
  end)
end)

describe("logsumexp, cumsum, cumprod, prod (issue 12)", function()
  local F64s = { dtype = "float64" }
  local close = support.closeness { tolerance = "relative", nonfinite = true }
  local rows = { { 1, 2, 3 }, { -1, 0.5, 4 } }
  local function lse(v)
    local m = -math.huge
    for _, x in ipairs(v) do m = math.max(m, x) end
    local s = 0
    for _, x in ipairs(v) do s = s + math.exp(x - m) end
    return m + math.log(s)
  end
  it("logsumexp matches log(sum(exp)) per dim, over all, with keepdim, in both dtypes", function()
    local x = mg.tensor(rows, F64s)
    close({ lse(rows[1]), lse(rows[2]) }, x:logsumexp(2):totable(), 1e-15)
    close({ { lse(rows[1]) }, { lse(rows[2]) } }, mg.logsumexp(x, -1, true):totable(), 1e-15)
    close({ lse { 1, -1 }, lse { 2, 0.5 }, lse { 3, 4 } }, x:logsumexp(1):totable(), 1e-15)
    close(lse { 1, 2, 3, -1, 0.5, 4 }, x:logsumexp():item(), 1e-15)
    close(lse { 1, 2, 3, -1, 0.5, 4 }, x:logsumexp({ 1, 2 }):item(), 1e-15)
    close({ lse(rows[1]), lse(rows[2]) }, mg.tensor(rows):logsumexp(2):totable(), 1e-6)
    assert.are.equal("float32", mg.tensor(rows):logsumexp(2).dtype)
  end)
  it("logsumexp is stable at large magnitudes and handles infinities", function()
    local x = mg.tensor({ { 1000, 1000 }, { -1000, -1000 } }, F64s)
    close({ 1000 + math.log(2), -1000 + math.log(2) }, x:logsumexp(2):totable(), 1e-15)
    close({ 1000 + math.log(2) }, mg.tensor({ 1000, 1000 }):logsumexp(1, true):totable(), 1e-6)
    close({ -math.huge, math.huge }, mg.tensor({ { -math.huge, -math.huge }, { 1, math.huge } }, F64s):logsumexp(2):totable())
    close({ -math.huge }, mg.zeros({ 0, 1 }, F64s):logsumexp(1):totable())
  end)
  it("cumsum and cumprod run along the dim, accumulating in double, strided input", function()
    local x = mg.tensor(rows, F64s)
    assert.are.same({ { 1, 3, 6 }, { -1, -0.5, 3.5 } }, x:cumsum(2):totable())
    assert.are.same({ { 1, 2, 3 }, { 0, 2.5, 7 } }, mg.cumsum(x, 1):totable())
    assert.are.same({ { 1, 2, 6 }, { -1, -0.5, -2 } }, x:cumprod(-1):totable())
    assert.are.same({ { 1, 2, 3 }, { -1, 1, 12 } }, mg.cumprod(x, 1):totable())
    assert.are.same({ { 1, 3, 6 }, { -1, -0.5, 3.5 } }, x:transpose():cumsum(1):transpose():totable())
    local big = mg.full({ 1e6 }, 0.1)                   -- float32 input, double accumulator
    close(1e5, big:cumsum(1):totable()[1e6], 1e-6)
  end)
  it("prod over all, a dim, keepdim, with zeros and empty dims", function()
    local x = mg.tensor({ { 1, 2, 3 }, { -1, 0, 4 } }, F64s)
    assert.are.equal(0, x:prod():item())
    assert.are.same({ 6, 0 }, x:prod(2):totable())
    assert.are.same({ { -1, 0, 12 } }, mg.prod(x, 1, true):totable())
    assert.are.same({ 1, 1 }, mg.zeros({ 2, 0 }):prod(2):totable())
    assert.are.equal(1, mg.zeros({ 0 }):prod():item())
    assert.are.equal(5, mg.tensor(5):prod():item())
  end)
  it("errors name the op", function()
    local x = mg.tensor(rows)
    support.raises(function() x:cumsum(3) end, "dimension 3 out of range for a 2-d tensor")
    support.raises(function() x:cumprod() end, "to 'cumprod' (number expected, got no value)")
    support.raises(function() mg.cumsum(mg.tensor(1)) end, "cumsum: expected at least 1 dimension")
    support.raises(function() x:logsumexp(5) end, "to 'logsumexp' (dimension 5 out of range for a 2-d tensor)")
    support.raises(function() x:prod("a") end, "prod: dimension must be an integer")
  end)
end)
