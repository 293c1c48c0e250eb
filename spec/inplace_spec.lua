-- inplace_spec.lua: writing into a tensor a tape recorded (fill, copy, set, t[i] = v,
-- Variable:assign*, optimizer steps, random fills) after it was recorded is an error when a
-- rule would read the changed values, instead of a silently wrong gradient.
local mg = require "moongrad"
local support = require "support"
local F = support.F64

local MSG = "a tensor saved for the gradient was modified in place after it was recorded"

describe("in-place writes into recorded tensors", function()
  it("x:fill after x*x was recorded: gradient raises, naming the op (issue 10 example)", function()
    local x = mg.tensor({ 1, 2 }, F)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local y = (x * x):sum()
    x:fill(10)
    support.raises(function() tape:gradient(y, x) end, "mul: ", MSG)
  end)

  it("the error names the op and the tensor, a Variable by its name", function()
    local w = mg.Variable(mg.tensor({ 0.5, -1 }, F), "dense/kernel")
    local tape <close> = mg.GradientTape()
    local y = mg.sin(w):sum()
    w:assign(mg.tensor({ 3, 3 }, F))
    support.raises(function() tape:gradient(y, w) end, "sin: ", MSG, "input 1",
                   "Variable 'dense/kernel'", "float64 (2)")
  end)

  it("tanh reads only its output: writing into its input afterwards is harmless", function()
    local x = mg.tensor({ 0.5, -1 }, F)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local y = mg.tanh(x)
    local s = y:sum()
    x:fill(3)
    local g = tape:gradient(s, x):totable()
    support.near(1 - math.tanh(0.5) ^ 2, g[1], 1e-12)
    support.near(1 - math.tanh(-1) ^ 2, g[2], 1e-12)
  end)

  it("an op whose rule reads its output: writing into the output raises", function()
    local x = mg.tensor({ 0.1, 0.2 }, F)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local y = mg.exp(x)
    local s = y:sum()
    y:set(5, 1)
    support.raises(function() tape:gradient(s, x) end, "exp: ", MSG, "output")
  end)

  for _, case in ipairs {
    { "copy", function(x) x:copy(mg.tensor({ 7, 7 }, F)) end },
    { "set", function(x) x:set(7, 2) end },
    { "t[i] = v", function(x) x[1] = 7 end },
    { "a write through a view", function(x) x:narrow(1, 2, 1):fill(7) end },
    { "rand fill through uniform", function(x) x:copy(mg.uniform(2, 0, 1, F)) end },
  } do
    it("is detected after " .. case[1], function()
      local x = mg.tensor({ 1, 2 }, F)
      local tape <close> = mg.GradientTape { persistent = true }
      tape:watch(x)
      local y = (x * x):sum()
      case[2](x)
      support.raises(function() tape:gradient(y, x) end, MSG)
      support.raises(function() tape:jacobian(y, x) end, MSG)
      support.raises(function() tape:forward({ x }, { mg.ones(2, F) }, y) end, MSG)
    end)
  end

  it("Variable:assign_sub and assign_add are detected", function()
    for _, m in ipairs { "assign_sub", "assign_add" } do
      local v = mg.Variable(mg.tensor({ 1, 2 }, F))
      local tape <close> = mg.GradientTape()
      local y = (v * v):sum()
      v[m](v, mg.tensor({ 1, 1 }, F))
      support.raises(function() tape:gradient(y, v) end, MSG)
    end
  end)

  it("an optimizer step between recording and the gradient is detected", function()
    local v = mg.Variable(mg.tensor({ 1, 2 }, F), "w")
    local opt = mg.optim.SGD({ v }, { lr = 0.1 })
    local tape <close> = mg.GradientTape { persistent = true }
    local y = (v * v):sum()
    opt:step(tape:gradient(y, { v }))
    support.raises(function() tape:gradient(y, { v }) end, MSG, "'w'")
  end)

  it("writes that no rule reads are allowed (add, sum, views only use shapes)", function()
    local x = mg.tensor({ 1, 2 }, F)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local y = (x + 1):sum()
    x:fill(10)
    assert.are.same({ 1, 1 }, tape:gradient(y, x):totable())
  end)

  -- Per op, what its rules declare unread (mg_rules.unread in mg_ops.h): a write into the
  -- tensor named ("a", "b", "c" the inputs, "y" the output) after recording is harmless
  -- (the gradient is the one at the recorded values) or raises.
  for _, case in ipairs {
    { "neg", function(a) return -a end, { a = true, y = true } },
    { "exp", mg.exp, { a = true, y = false } },
    { "log", mg.log, { a = false, y = true } },
    { "clamp", function(a) return a:clamp(0.5, 3) end, { a = false, y = true } },
    { "sub", function(a, b) return a - b end, { a = true, b = true, y = true } },
    { "mul", function(a, b) return a * b end, { a = false, b = false, y = true } },
    { "div", function(a, b) return a / b end, { a = true, b = false, y = false } },
    { "pow", function(a, b) return a ^ b end, { a = false, b = false, y = false } },
    { "where", mg.where, { a = false, b = true, c = true, y = true } },          -- a: the condition
    { "reshape", function(a) return a:reshape(2, 1) end, { a = true, y = true } },
    { "sum", function(a) return a:sum(1, true) end, { a = true, y = true } },
    { "softmax", function(a) return mg.softmax(a, 1) end, { a = true, y = false } },
  } do
    for _, who in ipairs { "a", "b", "c", "y" } do
      local harmless = case[3][who]
      if harmless ~= nil then
        it(case[1] .. ": a write into " .. who .. " after recording " .. (harmless and "is harmless" or "raises"), function()
          local function inputs() return { a = mg.tensor({ 1, 2 }, F), b = mg.tensor({ 3, 0.5 }, F), c = mg.tensor({ -1, 4 }, F) } end
          local function grad(write)
            local t = inputs()
            local tape <close> = mg.GradientTape()
            tape:watch(t.a, t.b, t.c)
            t.y = case[2](t.a, t.b, t.c)
            local s = t.y:sum()                              -- sum reads no values
            if write then t[who]:fill(0.25) end
            return tape:gradient(s, { t.a, t.b, t.c })
          end
          if harmless then
            local want, got = grad(false), grad(true)
            for k = 1, 3 do
              if want[k] then support.assert_close(want[k], got[k], 0, case[1] .. " input " .. k) end
            end
          else
            support.raises(function() grad(true) end, case[1] .. ": ", MSG)
          end
        end)
      end
    end
  end

  it("the write happened before recording: no error, the gradient at the new value", function()
    local x = mg.tensor({ 1, 2 }, F)
    x:fill(3)
    local tape <close> = mg.GradientTape()
    tape:watch(x)
    local y = (x * x):sum()
    assert.are.same({ 6, 6 }, tape:gradient(y, x):totable())
  end)

  it("a training loop assigning Variables between tapes keeps working", function()
    local w = mg.Variable(mg.tensor({ 1, -2 }, F), "w")
    local opt = mg.optim.Adam({ w }, { lr = 0.1 })
    local last
    for _ = 1, 5 do
      local tape <close> = mg.GradientTape()
      local loss = (mg.tanh(w) * w):sum()
      opt:step(tape:gradient(loss, { w }))
      last = loss:item()
    end
    assert.is_true(last == last)
  end)

  it("a persistent tape: nodes recorded after the write are fine, older ones raise", function()
    local w = mg.Variable(mg.tensor({ 1, 2 }, F))
    local tape <close> = mg.GradientTape { persistent = true }
    local y1 = (w * w):sum()
    w:assign(mg.tensor({ 3, 4 }, F))
    local y2 = (w * w):sum()
    assert.are.same({ 6, 8 }, tape:gradient(y2, w):totable())
    support.raises(function() tape:gradient(y1, w) end, MSG)
  end)

  it("second order: the write is seen by the inner and the outer tape", function()
    local x = mg.tensor({ 1, 2 }, F)
    local outer <close> = mg.GradientTape()
    outer:watch(x)
    local inner <close> = mg.GradientTape()
    inner:watch(x)
    local y = (x * x * x):sum()
    local g = inner:gradient(y, x)
    x:fill(5)
    support.raises(function() outer:gradient(g:sum(), x) end, MSG)
  end)

  it("mg.grad and mg.jacobian of a function that writes into its input after using it", function()
    support.raises(function()
      mg.grad(function(x) local y = (x * x):sum(); x:fill(0); return y end)(mg.tensor({ 1, 2 }, F))
    end, MSG)
  end)
end)
