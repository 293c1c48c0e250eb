-- robustness_spec.lua: what used to crash or be undefined (issue 10 item 4) fails cleanly:
-- a tape released inside its own record callback, Jacobians of empty sources, moongrad used
-- by finalizers after its context closed (stock lua5.4 at exit), integer overflow in size
-- and index checks. The crashing cases run in a child lua5.4, so a crash fails only them.
local mg = require "moongrad"
local support = require "support"
local F = support.F64

local build = support.BUILD

-- Run 'code' in a stock lua5.4 that finds the in-tree module: its output and exit status.
local function child(code)
  local out = os.tmpname()
  local cmd = ("LUA_CPATH=%s lua5.4 -e %s >%s 2>&1"):format(support.shq(build .. "/lua/?.so"),
                                                          support.shq(code), support.shq(out))
  local _, _, status = os.execute(cmd)
  local text = support.read_file(out)
  os.remove(out)
  return text, status
end

describe("a tape released inside its own record callback", function()
  it("does not crash: record returns the callback's results (child lua5.4)", function()
    local out, status = child([[
      local mg = require "moongrad"
      local tape = mg.GradientTape()
      local x = mg.ones(2)
      local y = tape:record(function() getmetatable(tape).__gc(tape); return x * 2 end)
      print(y:sum():item(), tostring(tape))
      print(pcall(tape.gradient, tape, y, x))
    ]])
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("4.0\tGradientTape (released)", 1, true), out)
    assert.is_truthy(out:find("tape was released", 1, true), out)
  end)

  it("also when the callback raises after releasing it", function()
    local out, status = child([[
      local mg = require "moongrad"
      local tape = mg.GradientTape()
      print(pcall(tape.record, tape, function() getmetatable(tape).__gc(tape); error("boom") end))
    ]])
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("boom", 1, true), out)
  end)
end)

describe("Jacobians of empty sources", function()
  local function sum(x) return x:sum() end
  it("jacobian in forward mode: an empty Jacobian, no division by zero (child lua5.4)", function()
    local out, status = child([[
      local mg = require "moongrad"
      local J = mg.jacobian(function(x) return x:sum() end, mg.zeros(0), { mode = "fwd" })
      print(#J:shape(), J:numel())
      print(mg.gradcheck(function(x) return x:sum() end, { mg.zeros(0) }))
    ]])
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("1\t0\ntrue", 1, true), out)
  end)
  it("every mode and target shape gives the shape target .. source", function()
    for _, mode in ipairs { "rev", "fwd", "auto" } do
      assert.are.same({ 0 }, mg.jacobian(sum, mg.zeros(0, F), { mode = mode }):shape())
      assert.are.same({ 3, 0 }, mg.jacobian(function(x) return mg.ones(3, F) * x:sum() end,
                                            mg.zeros(0, F), { mode = mode }):shape())
      assert.are.same({ 0, 2, 0, 2 }, mg.jacobian(function(x) return x * 2 end, mg.zeros(0, 2, F),
                                               { mode = mode }):shape())
    end
    assert.is_true(mg.gradcheck(sum, { mg.zeros(0, F) }))
    assert.is_true(mg.gradcheck(function(x, y) return x:sum() + y:sum() end,
                                { mg.zeros(0, F), mg.ones(2, F) }))
  end)
  it("batch_jacobian with an empty per-entry source", function()
    local J = mg.batch_jacobian(function(x) return x:sum(2, true) end, mg.zeros(3, 0, F), { mode = "fwd" })
    assert.are.same({ 3, 1, 0 }, J:shape())
  end)
end)

describe("moongrad after its context closed", function()
  it("a finalizer of an object made before require gets a Lua error, not a crash", function()
    local out, status = child([[
      local early = setmetatable({}, { __gc = function()
        print("zeros", pcall(mg.zeros, 3))
        print("add", pcall(function() return mg.ones(1) + 1 end))
        print("tape", pcall(mg.GradientTape))
        print("grad", pcall(mg.grad(function(x) return x:sum() end), T))
        print("gradient", pcall(function() return TAPE:gradient(T, T) end))
        print("done")
      end })
      mg = require "moongrad"
      T = mg.ones(2)
      TAPE = mg.GradientTape()
    ]])
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("done", 1, true), out)
    local _, closed = out:gsub("the moongrad context is closed", "")
    assert.is_true(closed >= 3, out)
    assert.is_falsy(out:find("zeros\ttrue", 1, true), out)
  end)

end)

describe("sizes and indices from user integers do not overflow", function()
  local big, small = math.maxinteger, math.mininteger
  local t = mg.zeros(3, 4, F)
  it("narrow with a huge length or start", function()
    support.raises(function() t:narrow(1, 2, big) end, "narrow", "out of bounds")
    support.raises(function() t:narrow(1, big, 1) end, "narrow", "out of bounds")
    support.raises(function() t:narrow(1, big, 1) end,          -- the end, big + 1 - 1, in range
                   ("range %d..%d out of bounds"):format(big, big))
    support.raises(function() t:narrow(1, small, 1) end, "narrow", "out of bounds")
    support.raises(function() t:narrow(1, 2, small) end, "narrow", "out of bounds")
    support.raises(function() mg.narrow(t, 2, -big, 2) end, "narrow", "out of bounds")
  end)
  it("select, get, set and t[i] with extreme indices", function()
    support.raises(function() t:select(1, big) end, "out of range")
    support.raises(function() t:select(1, small) end, "out of range")
    support.raises(function() t:get(small, 1) end, "out of range")
    support.raises(function() t:set(1, big, 1) end, "out of range")
    support.raises(function() return t[small] end, "out of range")
    support.raises(function() t[big] = 1 end, "out of range")
  end)
  it("dims, reshape, expand, creation sizes", function()
    support.raises(function() t:sum(small) end, "out of range")
    support.raises(function() t:size(big) end, "out of range")
    support.raises(function() t:reshape(big, 2) end, "reshape")
    support.raises(function() t:reshape(-1, big) end, "reshape")
    support.raises(function() mg.ones(1):expand(big, big) end, "expand")
    support.raises(function() mg.zeros(big, big) end, "zeros")
    support.raises(function() mg.zeros(2 ^ 40, 2 ^ 40) end, "zeros")
    support.raises(function() mg.eye(big) end, "eye")
    support.raises(function() mg.linspace(0, 1, big) end, "linspace")
    support.raises(function() mg.arange(0, 1e300, 1e-300) end, "arange")
    support.raises(function() mg.arange(-1e308, 1e308, 1) end, "arange")
    support.raises(function() mg.glorot_uniform(big, big) end, "glorot_uniform")
  end)
  it("cat and stack of expanded tensors whose total size overflows", function()
    local huge = mg.ones(1, F):expand(2 ^ 59)
    local list = {}
    for i = 1, 17 do list[i] = huge end                    -- 17 * 2^59 > 2^63
    support.raises(function() mg.cat(list) end, "cat", "more than")
    local e = mg.ones(1, 1, F):expand(2 ^ 31, 2 ^ 28)
    support.raises(function() mg.stack({ e, e, e, e, e, e, e, e, e }) end)
  end)
  it("split with a huge size gives one piece", function()
    local parts = mg.split(t, big, 1)
    assert.are.equal(1, #parts)
    assert.are.same({ 3, 4 }, parts[1]:shape())
  end)
  it("a Jacobian through a huge expanded view does not overflow its chunk size (child)", function()
    local out, status = child([[
      local mg = require "moongrad"
      local f = function(x) return x:expand(2 ^ 59):narrow(1, 1, 1) end
      print(mg.jacobian(f, mg.ones(1, { dtype = "float64" }), { mode = "fwd" }):item())
    ]])
    assert.are.equal(0, status, out)
    assert.are.equal("1.0\n", out)
  end)
end)
