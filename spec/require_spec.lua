-- require "moongrad.plot", "moongrad.nn", "moongrad.optim" in a stock lua5.4 on their own
-- (bindings/lmoongrad.c: luaopen_moongrad_<name> in moongrad.so, found by Lua's all-in-one C
-- loader). Each case runs in a fresh lua5.4 process started in an empty directory, with
-- LUA_CPATH naming only the build's module directory, so nothing has required "moongrad" first.
local support = require "support"

local build, q = support.BUILD, support.shq

-- Run 'code' in a fresh stock lua5.4: its stdout, stderr and whether it exited with 0.
local function stock_lua(code)
  local dir = support.tmpdir()
  local script = support.write_file(dir .. "/main.lua", code)
  local cmd = ("cd %s && env -u LUA_PATH -u LUA_INIT LUA_CPATH=%s lua5.4 %s >out 2>err")
    :format(q(dir), q(build .. "/lua/?.so"), q(script))
  local ok = os.execute(cmd)
  local out, err = support.read_file(dir .. "/out"), support.read_file(dir .. "/err")
  support.rmtree(dir)
  return out, err, ok == true
end

local members = { plot = "features_2d", nn = "LSTMCell", optim = "Adam" }

describe("require of a submodule in a stock lua5.4", function()
  for name, member in pairs(members) do
    it("moongrad." .. name .. " loads on its own and is mg." .. name, function()
      local out, err, ok = stock_lua(([[
        assert(package.loaded.moongrad == nil)
        local m = require "moongrad.%s"
        assert(type(m) == "table" and type(m.%s) == "function", "not the module: " .. tostring(m))
        assert(package.loaded["moongrad.%s"] == m, "package.loaded does not hold it")
        local mg = require "moongrad"
        assert(mg.%s == m, "mg.%s is another table")
        io.write("ok")
      ]]):format(name, member, name, name, name))
      assert.is_true(ok, err)
      assert.are.equal("ok", out)
    end)
  end

  it("gives the same tables when moongrad was required first", function()
    local out, err, ok = stock_lua [[
      local mg = require "moongrad"
      local plot, nn, optim = require "moongrad.plot", require "moongrad.nn", require "moongrad.optim"
      assert(mg.plot == plot and mg.nn == nn and mg.optim == optim)
      io.write("ok")
    ]]
    assert.is_true(ok, err)
    assert.are.equal("ok", out)
  end)

  it("the loaded submodule works: an LSTM step and an Adam update", function()
    local out, err, ok = stock_lua [[
      local nn = require "moongrad.nn"
      local optim = require "moongrad.optim"
      local mg = require "moongrad"
      mg.manual_seed(1)
      local cell = nn.LSTMCell(3, 4)
      local x = mg.randn(2, 3)
      local tape = mg.GradientTape()
      local h = cell(x, cell:initial_state(2))
      local loss = (h ^ 2):sum()
      local params = cell:parameters()
      local grads = tape:gradient(loss, params)
      local before = params[1]:clone()
      optim.Adam(params, { lr = 0.1 }):step(grads)
      io.write(string.format("%d %s", #params, tostring((params[1] - before):abs():sum():item() > 0)))
    ]]
    assert.is_true(ok, err)
    assert.are.equal("3 true", out)
  end)

  it("an unknown submodule is still Lua's ordinary 'module not found' error", function()
    local _, err, ok = stock_lua [[ require "moongrad.nosuch" ]]
    assert.is_false(ok)
    assert.is_truthy(err:find("module 'moongrad.nosuch' not found", 1, true), err)
  end)
end)
