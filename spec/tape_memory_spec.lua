-- A non-persistent tape drops what it recorded once its gradient is taken: recording and
-- differentiating a 1,000-step recurrence 100 times keeps the resident set flat, without
-- the user calling collectgarbage().
local mg = require "moongrad"
local support = require "support"

local function rss_kib() return support.proc_status("VmRSS") // 1024 end

local function run_once(W, x0)
  local tape = mg.GradientTape()
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
    local tape = mg.GradientTape()
    tape:watch(x)
    local y = (x * x):sum()
    tape:gradient(y, x)
    local live = mg.memory().live
    for _ = 1, 100 do local _ = x * x end           -- would be retained by a recording tape
    collectgarbage()
    assert.is_true(mg.memory().live <= live + 4096)
  end)
end)
