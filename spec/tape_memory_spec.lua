-- A non-persistent tape drops what it recorded once its gradient is taken: recording and
-- differentiating a 1,000-step recurrence 100 times keeps the resident set flat, without
-- the user calling collectgarbage().
local mg = require "moongrad"
local support = require "support"

local function rss_kib() return support.proc_status("VmRSS") // 1024 end

local function run_once(W, x0)
  local tape <close> = mg.GradientTape()
  tape:watch(W)
  local h = x0
  for _ = 1, 1000 do h = mg.tanh(mg.matmul(h, W) + x0) end
  return tape:gradient(h:sum(), W)
end

describe("tape memory", function()
  it("stays flat over 100 recorded 1,000-step recurrences", function()
    mg.manual_seed(0)
    local W = mg.randn(32, 32) * 0.1
    local x0 = mg.randn(8, 32)
    -- warm up past the collector's trigger (16 MiB of garbage tensors), then stay flat
    for _ = 1, 60 do run_once(W, x0) end
    local before = rss_kib()
    local g
    for _ = 1, 100 do g = run_once(W, x0) end
    local after = rss_kib()
    assert.are.same({ 32, 32 }, g:shape())
    assert.is_true(after - before < 32 * 1024,
      string.format("RSS grew by %d KiB over 100 iterations", after - before))
  end)
  it("a spent tape holds nothing and records nothing", function()
    local x = mg.randn(1000)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local y = (x * x):sum()
    tape:gradient(y, x)
    local live = mg.memory().live
    for _ = 1, 100 do local _ = x * x end           -- would be retained by a recording tape
    collectgarbage()
    assert.is_true(mg.memory().live <= live + 4096)
  end)
end)

-- An add's rules read only shapes (MG_UNREAD_ALL): once the Lua value of a result is gone, the
-- tape's nodes are all that hold it and its storage goes back at once (tensor.c,
-- mg_tensor_release_reader); what a rule reads (a product's operands) stays.
describe("storage only shape-reading nodes hold", function()
  local F64 = support.F64

  it("goes back while the tape still records, and the gradients stay right", function()
    local a, b = mg.randn(4096, F64), mg.randn(4096, F64)
    collectgarbage()
    local live = mg.memory().live
    local tape <close> = mg.GradientTape()
    tape:watch(a)
    local x = a
    for _ = 1, 200 do x = x + b end                  -- 200 results of 32 KiB: 6.4 MiB
    collectgarbage()
    collectgarbage()
    local grew = mg.memory().live - live
    assert.is_true(grew < 256 * 1024, string.format("live storage grew by %d bytes", grew))   -- x, headers
    local g = tape:gradient(x:sum(), a)
    assert.are.same({ 4096 }, g:shape())
    assert.are.equal(0, (g - 1):abs():max():item())
  end)

  it("keeps what a rule reads: products, broadcasting shapes, a persistent tape twice", function()
    local w = mg.tensor({ { 0.5 }, { -2 }, { 3 } }, F64)          -- (3, 1)
    local b = mg.tensor({ { 1, 2, 3, 4 } }, F64)                   -- (1, 4)
    local tape <close> = mg.GradientTape { persistent = true }
    tape:watch(w)
    tape:watch(b)
    local y = w
    for _ = 1, 3 do y = (y + b) * w end            -- the sums die; the products read them
    y = y:reshape(12) + 1
    collectgarbage()
    collectgarbage()
    local function f(wv, bv)
      local t = wv
      for _ = 1, 3 do t = (t + bv) * wv end
      return (t:reshape(12) + 1):sum()
    end
    local function numeric(x, other_first)            -- central differences, element by element
      local g = {}
      for i, row in ipairs(x:totable()) do
        g[i] = {}
        for j = 1, #row do
          local up, down = x:clone(), x:clone()
          up:set(row[j] + 1e-6, i, j)
          down:set(row[j] - 1e-6, i, j)
          local fu = other_first and f(w, up) or f(up, b)
          local fd = other_first and f(w, down) or f(down, b)
          g[i][j] = (fu - fd):item() / 2e-6
        end
      end
      return mg.tensor(g, F64)
    end
    local nw, nb = numeric(w, false), numeric(b, true)
    for _ = 1, 2 do
      local gw, gb = table.unpack(tape:gradient(y:sum(), { w, b }))
      assert.are.same({ 3, 1 }, gw:shape())
      assert.are.same({ 1, 4 }, gb:shape())
      assert.is_true((gw - nw):abs():max():item() < 1e-4 * (1 + nw:abs():max():item()))
      assert.is_true((gb - nb):abs():max():item() < 1e-4 * (1 + nb:abs():max():item()))
    end
  end)

  it("stays with a view that shares it, and with a second holder", function()
    local a = mg.randn(6, F64)
    local tape <close> = mg.GradientTape()
    tape:watch(a)
    local s = a + 1
    local v = s:reshape(2, 3)                       -- shares s's storage
    local keep = { a + 2 }
    local alias = keep[1]
    s = nil
    keep = nil
    collectgarbage()
    collectgarbage()
    assert.are.same((a + 1):reshape(2, 3):totable(), v:totable())
    assert.are.same((a + 2):totable(), alias:totable())
    local g = tape:gradient((v:sum() + alias:sum()), a)
    assert.are.equal(0, (g - 2):abs():max():item())
  end)
end)
