-- Strict options and the errors of the Lua parts: every function that takes an options table
-- rejects an unknown key, naming the function, the key and the nearest known key, through
-- one checker (ltensor.c, used by C functions and by core/nn/optim/plot through
-- mg._unknown_option); errors raised by the Lua parts point at the caller's line and their
-- tracebacks start at the public function; the 1-based hint for argnums = 0; the optimizers'
-- gradient count; initializer and jvp failures named after the call the user made.
local mg = require "moongrad"
local support = require "support"
local nn, optim, plot = mg.nn, mg.optim, mg.plot

local F64 = support.F64
local THIS = "options_spec.lua"

-- The error of f() (which must fail), and the line of the call in f (the caller's line). The
-- calls in these functions are not tail calls ('local r = ...'), as in a user's script.
local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok, "expected an error")
  assert.are.equal("string", type(e))
  return e, debug.getinfo(f, "S").linedefined
end

-- f() fails with exactly "<this file>:<line of f>: <msg>".
local function fails_at_call(msg, f)
  local e, line = err_of(f)
  local want = THIS .. ":" .. line .. ": " .. msg
  assert.are.equal(want, e:sub(-#want), "got " .. e)
end

local function sq(x) return (x * x):sum() end

describe("strict options", function()
  it("tensor creation names the function and the nearest option", function()
    local hint = "unknown option 'dtyp' (did you mean 'dtype'?)"
    fails_at_call("zeros: " .. hint, function() local r = mg.zeros(2, 3, { dtyp = "float64" }) return r end)
    fails_at_call("zeros: " .. hint, function() local r = mg.zeros({ dtyp = "float64" }) return r end)
    fails_at_call("ones: " .. hint, function() local r = mg.ones({ 2 }, { dtyp = "float64" }) return r end)
    fails_at_call("full: " .. hint, function() local r = mg.full({ 2 }, 1, { dtyp = "float64" }) return r end)
    fails_at_call("tensor: " .. hint, function() local r = mg.tensor({ 1, 2 }, { dtyp = "float64" }) return r end)
    fails_at_call("eye: " .. hint, function() local r = mg.eye(2, { dtyp = "float64" }) return r end)
    fails_at_call("arange: " .. hint, function() local r = mg.arange(3, { dtyp = "float64" }) return r end)
    fails_at_call("linspace: " .. hint, function() local r = mg.linspace(0, 1, 3, { dtyp = "float64" }) return r end)
    fails_at_call("rand: " .. hint, function() local r = mg.rand(2, { dtyp = "float64" }) return r end)
    fails_at_call("randn: " .. hint, function() local r = mg.randn(2, { dtyp = "float64" }) return r end)
    fails_at_call("uniform: " .. hint, function() local r = mg.uniform(2, 0, 1, { dtyp = "float64" }) return r end)
    fails_at_call("glorot_uniform: " .. hint, function() local r = mg.glorot_uniform(2, 2, { dtyp = "float64" }) return r end)
    fails_at_call("orthogonal: unknown option 'gian' (did you mean 'gain'?)",
                  function() local r = mg.orthogonal(2, 2, { gian = 2 }) return r end)
    fails_at_call("zeros: unknown option [1] (options are named: 'dtype')",
                  function() local r = mg.zeros(2, { [1] = 3, dtype = "float64" }) return r end)
    -- what is known still works
    assert.are.equal("float64", mg.zeros(2, { dtype = "float64" }).dtype)
    assert.are.equal("float64", mg.orthogonal(2, 2, { gain = 2, dtype = "float64" }).dtype)
    assert.are.same({ 2, 3 }, mg.zeros({ 2, 3 }):shape())
    assert.are.same({}, mg.zeros({}):shape())
  end)

  it("tapes: GradientTape, gradient, jacobian, batch_jacobian, forward", function()
    fails_at_call("GradientTape: unknown option 'persistant' (did you mean 'persistent'?)",
                  function() local r = mg.GradientTape { persistant = true } return r end)
    local x = mg.ones(2, 3, F64)
    local tape <close> = mg.GradientTape { persistent = true, watch_accessed_variables = false }
    tape:watch(x)
    local y = mg.tanh(x)
    fails_at_call("gradient: unknown option 'output_gradient' (did you mean 'output_gradients'?)",
                  function() local r = tape:gradient(y, x, { output_gradient = mg.ones(2, 3, F64) }) return r end)
    fails_at_call("jacobian: unknown option 'mod' (did you mean 'mode'?)",
                  function() local r = tape:jacobian(y, x, { mod = "fwd" }) return r end)
    fails_at_call("jacobian: unknown option 'check' (did you mean 'mode'?)",
                  function() local r = tape:jacobian(y, x, { check = true }) return r end)
    fails_at_call("batch_jacobian: unknown option 'chek' (did you mean 'check'?)",
                  function() local r = tape:batch_jacobian(y, x, { chek = true }) return r end)
    fails_at_call("forward: unknown option 'leed' (did you mean 'lead'?)",
                  function() local r = tape:forward(x, mg.ones(2, 3, F64), y, { leed = 1 }) return r end)
    assert.are.same({ 4, 2, 3 }, tape:forward(x, mg.ones(4, 2, 3, F64), y, { lead = 1 }):shape())
    assert.are.same({ 2, 3, 3 }, tape:batch_jacobian(y, x, { check = true, mode = "fwd" }):shape())
    assert.are.same({ 2, 3 }, tape:gradient(y, x, { unconnected = "zero" }):shape())
  end)

  it("the function transforms", function()
    local x = mg.ones(3, F64)
    fails_at_call("grad: unknown option 'argnum' (did you mean 'argnums'?)",
                  function() local r = mg.grad(sq, { argnum = 1 }) return r end)
    fails_at_call("value_and_grad: unknown option 'argnum' (did you mean 'argnums'?)",
                  function() local r = mg.value_and_grad(sq, { argnum = 1 }) return r end)
    fails_at_call("jacobian: unknown option 'mdoe' (did you mean 'mode'?)",
                  function() local r = mg.jacobian(mg.tanh, x, { mdoe = "fwd" }) return r end)
    fails_at_call("batch_jacobian: unknown option 'mdoe' (did you mean 'mode'?)",
                  function() local r = mg.batch_jacobian(mg.tanh, mg.ones(2, 3, F64), { mdoe = "fwd" }) return r end)
    fails_at_call("gradcheck: unknown option 'epsilon' (did you mean 'eps'?)",
                  function() local r = mg.gradcheck(sq, { x }, { epsilon = 1e-6 }) return r end)
    assert.are.same({ 3, 3 }, mg.jacobian(mg.tanh, x, { mode = "fwd" }):shape())
  end)

  it("nn, optim and plot, through the same checker", function()
    fails_at_call("Dense: unknown option 'use_bais' (did you mean 'use_bias'?)",
                  function() local r = nn.Dense(3, 2, { use_bais = false }) return r end)
    fails_at_call("RNN: unknown option 'return_sequence' (did you mean 'return_sequences'?)",
                  function() local r = nn.RNN(nn.LSTMCell(2, 2), { return_sequence = true }) return r end)
    local v = mg.Variable(mg.zeros(2), "v")
    fails_at_call("Adam: unknown option 'beta_1' (did you mean 'beta1'?)",
                  function() local r = optim.Adam({ v }, { beta_1 = 0.9 }) return r end)
    fails_at_call("plot.lines: unknown option 'xlable' (did you mean 'xlabel'?)",
                  function() local r = plot.lines({ 1, 2 }, { xlable = "t" }) return r end)
  end)
end)

describe("errors of the Lua parts", function()
  it("point at the caller's line, also from inside a function a transform calls", function()
    local d = nn.Dense(3, 2)
    fails_at_call("Dense: input has 4 features, expected 3 (input shape (2,4))",
                  function() local r = d(mg.ones(2, 4)) return r end)
    -- a C error raised at a line of nn.lua is moved to the user's line
    local e = err_of(function() local r = nn.mse(mg.ones(2), "x") return r end)
    assert.matches("^[^\n]*" .. THIS .. ":%d+: mse", e)
    -- inside the user's function that mg.grad runs: the line in that function
    local line
    local g = mg.grad(function(x)
      line = debug.getinfo(1, "l").currentline + 1
      return d(x):sum()
    end)
    e = err_of(function() local r = g(mg.ones(2, 4)) return r end)
    assert.are.equal(THIS .. ":" .. line .. ": Dense: input has 4 features, expected 3 (input shape (2,4))",
                     e:sub(-#(THIS .. ":" .. line .. ": Dense: input has 4 features, expected 3 (input shape (2,4))")))
    -- the user's own errors pass untouched
    e = err_of(function() local r = mg.grad(function() error("mine", 0) return r end)(mg.ones(1)) end)
    assert.are.equal("mine", e)
  end)

  it("a public function passes on every result, nils and their count included", function()
    local checks = mg._checks("@" .. THIS .. "-api")
    local f = checks.api(nil, function(...) return ... end)
    assert.are.equal(5, select("#", f(nil, 1, nil, 3, nil)))
    local a, b, c, d, e = f(nil, 1, nil, 3, nil)
    assert.is_nil(a)
    assert.are.equal(1, b)
    assert.is_nil(c)
    assert.are.equal(3, d)
    assert.is_nil(e)
    assert.are.equal(0, select("#", checks.api(nil, function() end)()))
  end)

  it("tracebacks start at the public function, not at the library's helpers", function()
    -- the frames of the library in a traceback: only the public function's wrapper
    local function library_frames(f)
      local _, tb = xpcall(f, debug.traceback)
      local frames = {}
      for line in tb:match("stack traceback:\n(.*)$"):gmatch("[^\n]+") do
        if line:find("moongrad/", 1, true) then frames[#frames + 1] = line end
      end
      return frames, tb
    end
    local d = nn.Dense(3, 2)
    local frames, tb = library_frames(function() local r = d(mg.ones(2, 4)) return r end)
    assert.are.equal(1, #frames, tb)
    assert.is_nil(tb:find("nn.lua", 1, true), tb)
    frames, tb = library_frames(function() local r = mg.grad(sq, { argnums = "1" }) return r end)
    assert.are.equal(1, #frames, tb)
    frames, tb = library_frames(function() local r = optim.SGD({ 1 }) return r end)
    assert.are.equal(1, #frames, tb)
    assert.is_nil(tb:find("optim.lua", 1, true), tb)
  end)

  it("mg.grad names itself for bad argnums; argnums = 0 gets the 1-based hint", function()
    fails_at_call("grad: argnums must be a positive integer or a non-empty array of them, got a string '1'",
                  function() local r = mg.grad(sq, { argnums = "1" }) return r end)
    fails_at_call("grad: argnums 0 is not a positive integer (indices and dims are 1-based)",
                  function() local r = mg.grad(sq, { argnums = 0 }) return r end)
    fails_at_call("value_and_grad: argnums 0 is not a positive integer (indices and dims are 1-based)",
                  function() local r = mg.value_and_grad(sq, { argnums = { 1, 0 } }) return r end)
    fails_at_call("grad: argnums must be a positive integer or a non-empty array of them, got a table",
                  function() local r = mg.grad(sq, { argnums = {} }) return r end)
    local g = mg.grad(function(a, b) return (a * b):sum() end, { argnums = { 2 } })
    assert.are.same({ 1, 2 }, g(mg.tensor({ 1, 2 }, F64), mg.ones(2, F64))[1]:totable())
  end)

  it("mg.jvp names itself, not the tape's forward", function()
    local x = mg.ones(2, F64)
    fails_at_call("jvp: 1 primals but 2 tangents", function() local r = mg.jvp(mg.tanh, { x }, { x, x }) return r end)
    fails_at_call("jvp: tangent 1 has shape (3), its primal (2)",
                  function() local r = mg.jvp(mg.tanh, { x }, { mg.ones(3, F64) }) return r end)
    fails_at_call("jvp: tangent 1 is a string, expected a tensor", function() local r = mg.jvp(mg.tanh, { x }, { "t" }) return r end)
    fails_at_call("jvp: the function must return a tensor, got a number",
                  function() local r = mg.jvp(function() return 1 end, { x }, { x }) return r end)
    local y, t = mg.jvp(mg.tanh, { x }, { x })
    assert.is_true(mg.is_tensor(y) and mg.is_tensor(t))
  end)

  it("a layer whose initializer fails names the layer", function()
    fails_at_call("Dense: cannot initialize kernel (orthogonal: matrix too large)",
                  function() local r = nn.Dense(46341, 1, { kernel_initializer = "orthogonal" }) return r end)
  end)
end)

describe("optimizer gradient count", function()
  it("a shorter array of gradients raises; nil holes and tape:gradient's trailing nil do not", function()
    local a, b, c = mg.Variable(mg.ones(2), "a"), mg.Variable(mg.ones(2), "b"), mg.Variable(mg.ones(2), "c")
    local opt = optim.SGD({ a, b, c }, { lr = 1 })
    fails_at_call("SGD: step got 2 gradients for 3 params (nil for a parameter without a gradient, "
                  .. "with 'n' set to the length when the last is nil, as tape:gradient does)",
                  function() local r = opt:step({ mg.ones(2), mg.ones(2) }) return r end)
    assert.are.same({ 1, 1 }, a:totable())            -- nothing changed
    opt:step({ mg.ones(2), nil, mg.ones(2) })
    assert.are.same({ 0, 0 }, a:totable())
    assert.are.same({ 1, 1 }, b:totable())
    local tape <close> = mg.GradientTape()
    local loss = (a * b):sum()                       -- c unconnected: the last gradient is nil
    local g = tape:gradient(loss, { a, b, c })
    assert.are.equal(3, g.n)
    assert.is_nil(g[3])
    local adam = optim.Adam({ a, b, c })
    adam:step(g)
    assert.are.same({ 0, 0 }, c:totable())            -- skipped (the SGD step made it 0)
    assert.is_true(a:get(1) < 0)                      -- d/da = b = 1: updated
    assert.are.same({ 1, 1 }, b:totable())            -- d/db = a = 0: Adam moves nothing
    fails_at_call("Adam: step got 1 gradients for 3 params (nil for a parameter without a gradient, "
                  .. "with 'n' set to the length when the last is nil, as tape:gradient does)",
                  function() local r = adam:step({ mg.ones(2) }) return r end)
  end)
end)
