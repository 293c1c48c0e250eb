-- placed_spec.lua: the small results of 'a op b' that no tape records live inside their own
-- userdata, with no finalizer (bindings/ltensor.c's placed slots). Every other use copies
-- them out first, so they must behave as any tensor: as operands of views, taped ops, in-place
-- writes, __close, collections at any moment, finalizers (lua_close's too) and two states.
-- Use-after-free and leaks show under the ASan and valgrind runs of tools/test.
local mg = require "moongrad"
local support = require "support"
local F = support.F64

local function values(t) return t:contiguous():reshape(-1):totable() end

describe("a small a + b outside a tape", function()
  local a, b = mg.arange(1, 17), mg.full({ 16 }, 0.5)

  it("is a tensor like any other, with the right values", function()
    local c = a + b
    assert.are.equal("moongrad.Tensor", getmetatable(c).__name)
    assert.is_true(mg.is_tensor(c))
    assert.are.same({ 16 }, c:shape())
    assert.are.equal("float32", c.dtype)
    for i = 1, 16 do assert.are.equal(i + 0.5, c:get(i)) end
    assert.are.equal(16 * 17 / 2 + 8, (c + c - c):sum():item())
    local ops = { a - b, a * b, a / b, a ^ b, mg.maximum(a, b), mg.lt(a, b), a:add(b) }
    local want = { function(u, v) return u - v end, function(u, v) return u * v end,
                   function(u, v) return u / v end, function(u, v) return u ^ v end,
                   math.max, function(u, v) return u < v and 1 or 0 end,
                   function(u, v) return u + v end }
    for k = 1, #ops do
      for i = 1, 16 do
        local w = want[k](i, 0.5)
        assert.is_true(math.abs(ops[k]:get(i) - w) <= 1e-6 * math.abs(w), ("op %d at %d"):format(k, i))
      end
    end
  end)

  it("gives the general path's very values, for numbers on either side and unary ops", function()
    -- a transposed operand is not dense: the same op then runs through the broadcast iterator
    for _, dt in ipairs { "float32", "float64" } do
      local x = mg.randn(4, 4, { dtype = dt })
      local xt = x:transpose(1, 2):contiguous():transpose(1, 2)     -- x's values, strided
      assert.is_false(xt:is_contiguous())
      local cases = {
        function(u) return u + 0.1 end, function(u) return 0.1 - u end,
        function(u) return u * 3 end, function(u) return 2 / u end, function(u) return u ^ 2 end,
        function(u) return 1.5 ^ u end, function(u) return -u end, function(u) return u:tanh() end,
        function(u) return u:exp() end, function(u) return mg.sigmoid(u) end,
        function(u) return u:abs():sqrt() end, function(u) return mg.gt(u, 0) end,
      }
      for k, f in ipairs(cases) do
        assert.are.same(values(f(xt)), values(f(x)), ("case %d, %s"):format(k, dt))
      end
      local z = mg.tensor(2.5, { dtype = dt })                        -- 0-d
      assert.are.equal(5, (z * 2):item())
      assert.are.equal(-2.5, (-z):item())
      assert.are.same({}, (z + z):shape())
    end
  end)

  it("holds its values across collections (the placed bytes are its own)", function()
    local cs = {}
    for i = 1, 200 do cs[i] = a + mg.full({ 16 }, i) end
    collectgarbage()
    collectgarbage()
    for i = 1, 200, 37 do assert.are.equal(16 + i, cs[i]:get(16)) end
  end)

  it("outlives a collected base through its views", function()
    local v = (a + b):reshape(4, 4):transpose(1, 2)
    local n = (a + b):narrow(1, 3, 2)
    collectgarbage()
    collectgarbage()
    assert.are.equal(2.5, v:get(2, 1))
    assert.are.same({ 3.5, 4.5 }, n:totable())
  end)

  it("as a tape's input, after the Lua value is gone", function()
    local c = a + b
    local tape <close> = mg.GradientTape()
    local x = mg.ones(16)
    tape:watch(x)
    local y = (c * x):sum()
    tape:stop()
    c = nil
    collectgarbage()
    collectgarbage()
    local g = tape:gradient(y, x)
    for i = 1, 16 do assert.are.equal(i + 0.5, g:get(i)) end
  end)

  it("as a watched source: the gradient is with respect to that same value", function()
    local c = a + b
    local tape <close> = mg.GradientTape()
    tape:watch(c)
    local y = (c * c):sum()
    tape:stop()
    collectgarbage()
    local g = tape:gradient(y, c)
    for i = 1, 16 do assert.are.equal(2 * (i + 0.5), g:get(i)) end
  end)

  it("gets recorded results under a tape, placed operands or not", function()
    local c = a + b
    local tape <close> = mg.GradientTape()
    local x = mg.ones(16, F)
    tape:watch(x)
    local y = ((c:to("float64") + x) * (x + x)):sum()
    tape:stop()
    local g = tape:gradient(y, x)
    for i = 1, 16 do assert.are.equal(2 * (i + 0.5) + 4, g:get(i)) end
    assert.is_true(mg.gradcheck(function(u, w) return (u + w) * (u * w) end,
                                { mg.randn(3, F), mg.randn(3, F) }))
  end)

  it("takes in-place writes, indexing and keys like any tensor", function()
    local c = a + b
    local key = {}
    key[c] = true
    c:fill(2)
    assert.is_true(key[c])
    assert.are.equal(32, c:sum():item())
    local d = a + b
    d[1] = 7
    assert.are.equal(7, d[1]:item())
    assert.are.equal(16, #d)
    local v = mg.Variable(a + b)
    v:assign_add(a + b)
    assert.are.equal(3, v:get(1))
  end)

  it("mixes with broadcast, number and other-dtype operands (the general path)", function()
    local c = a + b
    assert.are.same(values(a:add(b) + 1), values(c + 1))
    assert.are.same(values(a:add(b) * mg.ones(2, 1)), values(c * mg.ones(2, 1)))
    local d = c + mg.ones(16, F)
    assert.are.equal("float64", d.dtype)
    assert.are.equal(2.5, d:get(1))
    local big = mg.ones(100) + mg.ones(100)                  -- above the placed size
    assert.are.equal(200, big:sum():item())
  end)

  it("is released by __close; a released operand raises", function()
    local c
    do
      local t <close> = a + b
      c = t
    end
    assert.are.equal("tensor(released)", tostring(c))
    support.raises(function() return c + a end, "operand 1 is a released tensor")
    support.raises(function() return c:sum() end, "released")
  end)

  it("survives finalizers that release or copy out its operands mid-op", function()
    local x, y = a + b, a + b
    local hits = 0
    local function arm()
      setmetatable({}, { __gc = function()
        hits = hits + 1
        if hits % 3 == 0 then getmetatable(x).__close(x) else y:fill(hits) end
        if hits < 50 then arm() end
      end })
    end
    arm()
    local old = collectgarbage("incremental")
    collectgarbage("setpause", 100)
    local ok, errs = 0, 0
    for _ = 1, 20000 do
      local done, r = pcall(function() return x + y end)
      if done then ok = ok + 1; assert.are.same({ 16 }, r:shape()) else errs = errs + 1 end
      if hits >= 50 and errs > 0 then break end
      if not pcall(function() return x:numel() end) then x = a + b end
    end
    collectgarbage(old)
    collectgarbage("setpause", 200)
    assert.is_true(hits > 0 and ok > 0, ("finalizers %d, ops %d"):format(hits, ok))
  end)

  it("counts no pool storage until copied out", function()
    collectgarbage()
    collectgarbage()
    local live = mg.memory().live
    local c = a + b
    assert.are.equal(live, mg.memory().live)
    c:fill(0)
    assert.is_true(mg.memory().live >= live + 64)
  end)
end)

describe("placed results in finalizers", function()
  it("while lua_close runs them: made, copied out and released with the state (child lua5.4)", function()
    local script = os.tmpname()
    local ok, out = support.lua_child(script, "", [[
      A, B = mg.ones(16), mg.ones(16)
      LATE = setmetatable({}, { __gc = function()
        KEEP = A + B                  -- placed: no finalizer needed
        KEEP2 = (A + B):reshape(4, 4) -- copied out inside lua_close: on the orphans list
        print("late", KEEP:sum():item(), KEEP2:sum():item())
      end })
    ]])
    os.remove(script)
    assert.is_true(ok, out)
    assert.is_truthy(out:find("late\t32.0\t32.0", 1, true), out)
  end)
end)
