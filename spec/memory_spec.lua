-- Memory (pool.c and the collector trigger in ltensor.c): loops that make thousands of 4 MB
-- temporaries stay under 400 MB of peak RSS without the script calling collectgarbage(), a
-- loop's garbage is freed within about an iteration in either collector mode, and
-- mg.memory() / mg.empty_cache() / mg.reset_peak_memory() report and release storage bytes.
local mg = require "moongrad"
local support = require "support"

local MB = 1024 * 1024
local LIMIT = 400 * MB

local status = support.proc_status           -- a field of /proc/self/status, in bytes

-- Reset the peak (VmHWM) to the current RSS where the kernel allows it, so each loop is
-- measured alone; otherwise the peak so far counts, which only makes the check stricter.
local function reset_peak()
  local f = io.open("/proc/self/clear_refs", "w")
  if f then
    f:write("5")
    f:close()
  end
end

-- Peak RSS while running 'body', after releasing what earlier tests cached.
local function peak_of(body)
  mg.empty_cache()
  reset_peak()
  body()
  return status("VmHWM")
end

local function check(peak, what)
  assert.is_true(peak < LIMIT, ("%s peaked at %.0f MB RSS (limit %d MB)"):format(what, peak / MB,
                                                                            LIMIT // MB))
end

describe("temporaries in a loop", function()
  it("3,000 pairs of 4 MB float32 temporaries peak under 400 MB", function()
    local x = mg.ones(1024, 1024)                                  -- 4 MB
    local peak = peak_of(function()
      for _ = 1, 3000 do
        local a = x * 2                                            -- 4 MB
        local b = a + 1                                            -- 4 MB
        assert(b:numel() == 1024 * 1024)
      end
    end)
    check(peak, "float32 loop")
  end)

  it("3,000 pairs of 4 MB float64 temporaries peak under 400 MB", function()
    local y = mg.ones(512, 1024, { dtype = "float64" })           -- 4 MB
    local peak = peak_of(function()
      for _ = 1, 3000 do
        local a = y * 3
        local b = a - y
        assert(b.dtype == "float64")
      end
    end)
    check(peak, "float64 loop")
  end)

  it("temporaries of changing sizes and strided copies peak under 400 MB", function()
    local peak = peak_of(function()
      for i = 1, 3000 do
        local n = 256 + (i % 13) * 96                              -- 1 MB .. 5.5 MB
        local a = mg.full({ n, 1024 }, i)
        local b = (i % 2 == 0) and a * 2 or a:narrow(2, 1, 512):contiguous()
        assert(b:dim() == 2)
      end
    end)
    check(peak, "mixed-size loop")
  end)

  it("a recurrence that replaces its state each step peaks under 400 MB", function()
    local x = mg.ones(1024, 1024)
    local peak = peak_of(function()
      local h = mg.zeros(1024, 1024)
      for _ = 1, 3000 do h = h * 0.5 + x end
      assert(math.abs(h:get(1, 1) - 2) < 1e-6)
    end)
    check(peak, "recurrence")
  end)
end)

describe("the garbage of a loop", function()
  -- Each iteration: 16 MB of working set released at the end of its block (<close>, as a
  -- spent tape releases what it saved), and 4 MB of garbage alive through the iteration
  -- (so that it outlives the generational collector's minor collections).
  local function iteration()
    local a = mg.zeros(512, 1024)                                  -- 2 MB of garbage
    do
      local w1 <close> = mg.ones(1024, 1024)                       -- 4 MB each
      local w2 <close> = mg.ones(1024, 1024)
      local w3 <close> = mg.ones(1024, 1024)
      local w4 <close> = mg.ones(1024, 1024)
      assert(w1:numel() + w2:numel() + w3:numel() + w4:numel() == 4 * 1024 * 1024)
    end
    local b = mg.zeros(512, 1024)                                  -- 2 MB more
    return a, b
  end

  -- bench/lstm's model at 256 units: a step keeps about 17 MB alive at its peak (the saved
  -- gates and states, the cotangents) and leaves the layer's output and the gradients
  -- (2.6 MB) to the collector.
  local function training_step()
    local nn = mg.nn
    mg.manual_seed(256)
    local rnn = nn.RNN(nn.LSTMCell(8, 256), { return_sequences = true })
    local head = nn.Dense(256, 1)
    local params = rnn:parameters()
    for _, p in ipairs(head:parameters()) do params[#params + 1] = p end
    local opt = mg.optim.Adam(params, { lr = 1e-3 })
    local x, y = mg.randn(16, 100, 8), mg.randn(16, 100, 1)
    local function grads()
      local tape <close> = mg.GradientTape()
      local loss = nn.mse(head(rnn(x)), y)
      tape:stop()
      return tape:gradient(loss, params)
    end
    return function() opt:step(grads()) end
  end

  -- The peak live storage of 'n' runs of 'step' with the collector on its own, against that
  -- of one run from a heap without garbage (after two warm-up runs).
  local function peaks(mode, step, n)
    local old = collectgarbage(mode)
    step()
    step()
    collectgarbage()
    collectgarbage()
    mg.reset_peak_memory()
    step()
    local one = mg.memory().peak
    for _ = 1, n do step() end
    local many = mg.memory().peak
    collectgarbage(old)
    return one, many
  end

  for _, mode in ipairs { "generational", "incremental" } do
    it("stays within one iteration's peak plus 8 MB (" .. mode .. " collector)", function()
      local one, many = peaks(mode, iteration, 20)
      assert.is_true(many <= one + 8 * MB, ("20 iterations peaked at %.1f MB of live storage, "
                     .. "one from a heap without garbage at %.1f MB"):format(many / MB, one / MB))
    end)
  end

  it("of bench/lstm's training step stays within one step's peak plus 8 MB", function()
    local one, many = peaks("generational", training_step(), 12)
    assert.is_true(many <= one + 8 * MB, ("12 steps peaked at %.1f MB of live storage, one "
                   .. "from a heap without garbage at %.1f MB"):format(many / MB, one / MB))
  end)
end)

describe("mg.memory and mg.empty_cache", function()
  it("report live and cached storage in bytes", function()
    local m = mg.memory()
    assert.are.equal("number", type(m.live))
    assert.are.equal("number", type(m.cached))
    assert.are.equal("number", type(m.budget))
    assert.is_true(math.type(m.live) == "integer" and m.live >= 0)
    assert.is_true(m.budget > 0)
    assert.is_true(math.type(m.peak) == "integer" and m.peak >= m.live)
  end)

  it("peak holds the most storage alive at once since reset_peak_memory", function()
    collectgarbage()
    collectgarbage()
    mg.reset_peak_memory()
    local base = mg.memory()
    assert.are.equal(base.live, base.peak)
    local a = mg.zeros(1024, 1024)                                -- 4 MB
    local b = mg.zeros(512, 1024)                                 -- 2 MB
    a, b = nil, nil
    collectgarbage()
    collectgarbage()
    local c = mg.zeros(256, 1024)                                 -- 1 MB
    local m = mg.memory()
    assert.is_true(m.peak >= base.live + 6 * MB and m.peak < base.live + 7 * MB)
    assert.is_true(m.live < base.live + 2 * MB)
    mg.reset_peak_memory()
    assert.are.equal(mg.memory().live, mg.memory().peak)
    assert.are.equal(1024, c:size(2))
  end)

  it("count a new tensor's bytes as live, and cache them once it is collected", function()
    mg.empty_cache()
    local before = mg.memory()
    assert.are.equal(0, before.cached)
    local t = mg.zeros(1024, 1024)                                -- 4 MB, a size class exactly
    local during = mg.memory()
    assert.are.equal(before.live + 4 * MB, during.live)
    local small = mg.zeros(10)                          -- 40 bytes (and the headers with them)
    assert.is_true(mg.memory().live >= during.live + 40)
    t, small = nil, nil
    collectgarbage()
    collectgarbage()
    local after = mg.memory()
    assert.are.equal(before.live, after.live)
    assert.are.equal(4 * MB, after.cached)                         -- kept for reuse
    local again = mg.ones(1024, 1024)                              -- reuses the cached block
    assert.are.equal(0, mg.memory().cached)
    assert.are.equal(1, again:get(1024, 1024))
  end)

  it("views add no storage", function()
    local t = mg.zeros(512, 512)
    local live = mg.memory().live
    local v = { t:transpose(1, 2), t:reshape(-1), t[3], t:narrow(1, 1, 10), t:expand(2, 512, 512) }
    assert.are.equal(live, mg.memory().live)
    assert.are.equal(5, #v)
  end)

  it("empty_cache returns cached blocks to the system", function()
    local blocks = {}
    for i = 1, 25 do blocks[i] = mg.full({ 1024, 1024 }, i) end   -- 100 MB, pages touched
    blocks = nil
    collectgarbage()
    collectgarbage()
    assert.is_true(mg.memory().cached >= 100 * MB)
    local rss = status("VmRSS")
    mg.empty_cache()
    assert.are.equal(0, mg.memory().cached)
    assert.is_true(status("VmRSS") < rss - 80 * MB, "RSS did not drop after empty_cache")
  end)
end)
