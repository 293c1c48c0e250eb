-- batched_spec.lua: the small results of runtime calls (a tape's recorded adds above all)
-- have no finalizer of their own: a batch holds the tensors of up to 64 of them and
-- releases them with its own __gc once none of their Lua values is reachable
-- (bindings/ltensor.c's pushresult). They must behave as any tensor: outlive their tape and
-- their batch-mates, keep views and tapes right, see 'released' (never freed memory) from
-- finalizers that run with their batch, and go back to the pool when all are gone.
-- Use-after-free and leaks show under the ASan and valgrind runs of tools/test.
local mg = require "moongrad"
local support = require "support"
local F = support.F64

local function collect() collectgarbage(); collectgarbage() end

describe("small recorded results", function()
  local a, b = mg.arange(1, 17), mg.full({ 16 }, 0.5)

  it("are tensors like any other, with the values of the unrecorded op", function()
    local tape <close> = mg.GradientTape()
    tape:watch(a)
    local c = a + b
    local d = (c * 2):tanh()
    tape:stop()
    assert.are.equal("moongrad.Tensor", getmetatable(c).__name)
    assert.is_true(mg.is_tensor(c) and mg.is_tensor(d))
    assert.are.same((a + b):totable(), c:totable())
    assert.are.same(((a + b) * 2):tanh():totable(), d:totable())
  end)

  it("outlive their batch-mates, their tape and collections, with their gradients", function()
    local x = mg.randn(16, F)
    local tape = mg.GradientTape { persistent = true }
    tape:watch(x)
    local keep, y = {}, x
    for i = 1, 300 do                         -- several batches, every 37th result kept
      y = y * 0.5 + x
      if i % 37 == 0 then keep[#keep + 1] = y end
    end
    local s1, s = keep[1]:sum(), y:sum()
    tape:stop()
    collect()
    local g1 = tape:gradient(s1, x)
    local g8 = tape:gradient(s, x)
    -- y_i = sum over k <= i of 0.5^k * x: dy_37/dx = 2 - 0.5^37 per element
    for i = 1, 16 do
      assert.is_true(math.abs(g1:get(i) - (2 - 0.5 ^ 37)) < 1e-12)
      assert.is_true(math.abs(g8:get(i) - 2) < 1e-12)
    end
    local want = {}
    for k, t in ipairs(keep) do want[k] = t:totable() end
    tape = nil
    collect()
    for k, t in ipairs(keep) do assert.are.same(want[k], t:totable()) end
    local t2 <close> = mg.GradientTape()                -- and are sources of a new tape
    t2:watch(keep[2])
    local g = t2:gradient((keep[2] * keep[2]):sum(), keep[2])
    assert.are.same((keep[2] * 2):totable(), g:totable())
  end)

  it("keep their views valid after their Lua values and batches are gone", function()
    local tape = mg.GradientTape()
    tape:watch(a)
    local v = (a + b):reshape(4, 4):transpose(1, 2)
    local n = (a * b):narrow(1, 3, 2)
    for _ = 1, 200 do local _ = a + b end      -- fill and drop batches
    tape:stop()
    tape = nil
    collect()
    assert.are.equal(2.5, v:get(2, 1))
    assert.are.same({ 1.5, 2 }, n:totable())
  end)

  it("go back to the pool once all of them are gone", function()
    collect()
    local live = mg.memory().live
    do
      local tape <close> = mg.GradientTape()
      tape:watch(a)
      local keep = {}
      for i = 1, 500 do keep[i % 7 + 1] = a * b + i end
      tape:stop()
    end
    collect()
    assert.are.equal(live, mg.memory().live)
  end)

  it("are released by __close; the batch releases the tensor, the value raises", function()
    local tape <close> = mg.GradientTape()
    tape:watch(a)
    local c, other
    do
      local t <close> = a + b
      other = a - b
      c = t
    end
    assert.are.equal("tensor(released)", tostring(c))
    support.raises(function() return c + a end, "operand 1 is a released tensor")
    assert.are.same((a - b):totable(), other:totable())
    tape:stop()
  end)

  it("seen from finalizers that run with their batch: values or 'released', never freed memory", function()
    local tape <close> = mg.GradientTape()
    tape:watch(a)
    local seen = { ok = 0, released = 0 }
    local again = {}
    for i = 1, 300 do
      local r = a + i
      setmetatable({}, { __gc = function()
        local ok, v = pcall(function() return r:sum():item() end)
        if ok then
          assert(v == 136 + 16 * i, v)
          seen.ok = seen.ok + 1
        else
          assert(tostring(v):find("released", 1, true), v)
          seen.released = seen.released + 1
        end
        if i % 10 == 0 then again[#again + 1] = r end
      end })
    end
    tape:stop()
    collect()
    collect()
    assert.is_true(seen.ok + seen.released == 300, ("%d + %d"):format(seen.ok, seen.released))
    for _, r in ipairs(again) do         -- reachable again: still values or 'released'
      local ok, v = pcall(function() return r:sum():item() end)
      assert.is_true(ok or tostring(v):find("released", 1, true) ~= nil, tostring(v))
    end
  end)

  it("survive finalizers that release their operands or make results mid-op", function()
    local tape <close> = mg.GradientTape()
    local x, y = a + b, a * b
    tape:watch(x)
    local hits, made, chain = 0, 0, nil
    chain = { __gc = function()                -- 50 finalizers, each arming the next
      hits = hits + 1
      made = made + (a + hits):numel()         -- a result made inside a finalizer
      if hits % 3 == 0 then getmetatable(x).__close(x) end
      if hits < 50 then setmetatable({}, chain) end
    end }
    setmetatable({}, chain)
    local mode = collectgarbage("incremental")
    collectgarbage("setpause", 100)            -- no pause: finalizers run inside the ops
    local ok = 0
    for _ = 1, 300 do
      local done, r = pcall(function() return x + y end)
      if done and r:numel() == 16 then ok = ok + 1 end
      if not pcall(x.numel, x) then x = a + b end
    end
    collectgarbage(mode)
    collectgarbage("setpause", 200)
    tape:stop()
    assert.is_true(hits > 0 and ok > 0 and made == 16 * hits, ("finalizers %d, ops %d"):format(hits, ok))
  end)

  it("work while lua_close runs finalizers (child lua5.4)", function()
    local script = os.tmpname()
    local ok, out = support.lua_child(script, "", [[
      A, B = mg.ones(16), mg.ones(16)
      T = mg.GradientTape()
      T:watch(A)
      EARLY = A + B                   -- batched before the close
      LATE = setmetatable({}, { __gc = function()
        local ok, e = pcall(function() return EARLY:sum():item() end)
        KEEP = A + B                  -- inside lua_close: an ordinary slot on the orphans list
        local y = (KEEP * A):sum()
        print("late", ok and e or "released", KEEP:sum():item(), T:gradient(y, A):sum():item())
      end })
      for _ = 1, 100 do local _ = A * B end
    ]])
    os.remove(script)
    assert.is_true(ok, out)
    assert.is_truthy(out:find("late\t32.0\t32.0\t48.0", 1, true) or
                     out:find("late\treleased\t32.0\t48.0", 1, true), out)
  end)
end)
