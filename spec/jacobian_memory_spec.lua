-- jacobian_memory_spec.lua: a Jacobian whose result cannot fit is refused before its first
-- sweep (jacobian, batch_jacobian, hessian, gradcheck and the tape forms), naming the
-- function, the shape and the bytes; out-of-memory errors of ops name the op (issue 10 item 5).
local mg = require "moongrad"
local support = require "support"
local F = support.F64

local function sq(x) return (x * x):sum() end

describe("Jacobians that cannot fit", function()
  after_each(function() mg.set_jacobian_limit(0) end)

  it("hessian of a 1e5-vector (40 GB) is refused at once, naming hessian, shape and bytes", function()
    local t0 = mg.clock()
    support.raises(function() mg.hessian(sq, mg.zeros(1e5)) end,
                   "hessian: ", "(100000,100000)", "40000000000 bytes", "MemAvailable")
    assert.is_true(mg.clock() - t0 < 5)
  end)

  it("jacobian and batch_jacobian, their tape forms, over MemAvailable", function()
    local x = mg.zeros(1e5)
    support.raises(function() mg.jacobian(function(v) return v * 2 end, x) end,
                   "jacobian: ", "(100000,100000)", "40000000000 bytes")
    local b = mg.zeros(10, 1e5)
    support.raises(function() mg.batch_jacobian(function(v) return v * 2 end, b) end,
                   "batch_jacobian: ", "(10,100000,100000)", "400000000000 bytes")
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(x)
    local y = x * 2
    support.raises(function() tape:jacobian(y, x) end, "jacobian: ", "(100000,100000)")
    support.raises(function() tape:jacobian(y, x, { mode = "fwd" }) end, "jacobian: ")
  end)

  it("a result whose size overflows 64 bits is refused too", function()
    local x = mg.ones(1, F):expand(2 ^ 40)                     -- a view: (2^40, 2^40) result
    support.raises(function() mg.jacobian(function(v) return v:reshape(-1) end, x) end,
                   "jacobian: ", "(1099511627776,1099511627776)")
  end)

  it("mg.set_jacobian_limit sets a cap; several sources count together", function()
    mg.set_jacobian_limit(1000)
    assert.are.equal(1000, mg.memory().jacobian_limit)
    local x = mg.ones(11, F)                                   -- 11 x 11 x 8 = 968 bytes
    assert.are.same({ 11, 11 }, mg.jacobian(function(v) return v * 2 end, x):shape())
    support.raises(function() mg.jacobian(function(v) return v * 2 end, mg.ones(12, F)) end,
                   "jacobian: ", "(12,12)", "1152 bytes", "1000 bytes of mg.set_jacobian_limit")
    local a, b = mg.ones(8, F), mg.ones(8, F)                  -- 2 x 8 x 8 x 8 = 1024
    local tape <close> = mg.GradientTape()
    tape:watch(a, b)
    local y = a * b
    support.raises(function() tape:jacobian(y, { a, b }) end, "jacobian: ", "largest part", "1024 bytes")
    support.raises(function() mg.hessian(sq, mg.ones(12, F)) end, "hessian: ", "(12,12)")
    support.raises(function() mg.gradcheck(function(v) return v * 2 end, { mg.ones(6, F) }) end,
                   "gradcheck: ", "(6,6)")
    mg.set_jacobian_limit(0)
    assert.is_true(mg.gradcheck(function(v) return v * 2 end, { mg.ones(6, F) }))
    assert.are.equal(0, mg.memory().jacobian_limit)
  end)

  it("set_jacobian_limit checks its argument", function()
    support.raises(function() mg.set_jacobian_limit(-1) end, "set_jacobian_limit")
    support.raises(function() mg.set_jacobian_limit("x") end, "set_jacobian_limit")
  end)
end)

describe("out-of-memory errors name the op", function()
  local huge = mg.ones(1):expand(2 ^ 20, 2 ^ 20)              -- a view: 2^40 elements, no bytes
  it("a + b, a * b, exp, sum over a dim, clone, cat", function()
    support.raises(function() return huge + huge end, "add: ", "out of memory")
    support.raises(function() return huge * 2 end, "mul: ", "out of memory")
    support.raises(function() return mg.exp(huge) end, "exp: ", "out of memory")
    support.raises(function() return huge:clone() end, "copy: ", "out of memory")
    support.raises(function() return mg.cat({ huge, huge }) end, "cat: ", "out of memory")
    support.raises(function() return mg.maximum(huge, 0) end, "maximum: ", "out of memory")
  end)
  it("matmul", function()
    local a, b = mg.ones(2 ^ 20, 1), mg.ones(1, 2 ^ 20)
    support.raises(function() return mg.matmul(a, b) end, "matmul: ", "out of memory")
    support.raises(function() return a:matmul(b) end, "matmul: ", "out of memory")
  end)
  it("a cat whose size does not fit an allocation names cat", function()
    local h = mg.ones(1, F):expand(2 ^ 59)
    support.raises(function() mg.cat({ h, h, h, h, h, h, h, h, h }) end, "cat: ")
  end)
end)
