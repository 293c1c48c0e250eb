-- Tensors (docs/tensors.md, and the conventions of docs/README.md): creation, inspection,
-- tostring, dtypes and the default dtype, and the error every bad argument raises.
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises
local close = support.closeness { tolerance = "absolute" }

describe("mg.tensor", function()
  it("makes a 0-d tensor from a number", function()
    local t = mg.tensor(2.5)
    assert.are.equal(0, t:dim())
    assert.are.same({}, t:shape())
    assert.are.equal(1, t:numel())
    assert.are.equal(2.5, t:item())
    assert.are.equal(2.5, t:totable())
  end)

  it("makes tensors from nested tables, in C order", function()
    local t = mg.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    assert.are.same({ 2, 3 }, t:shape())
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t:totable())
    assert.are.equal(6, t:get(2, 3))
    assert.are.same({ 3, 1 }, t:stride())
    local t3 = mg.tensor { { { 1 }, { 2 } }, { { 3 }, { 4 } } }
    assert.are.same({ 2, 2, 1 }, t3:shape())
    assert.are.equal(3, t3:get(2, 1, 1))
  end)

  it("makes empty tensors from empty tables", function()
    assert.are.same({ 0 }, mg.tensor({}):shape())
    assert.are.same({ 1, 0 }, mg.tensor({ {} }):shape())
    assert.are.equal(0, mg.tensor({ {} }):numel())
  end)

  it("copies a tensor, optionally to another dtype", function()
    local a = mg.tensor({ 1, 2 }, F64)
    local b = mg.tensor(a)
    assert.are.equal("float64", b.dtype)
    b:fill(0)
    assert.are.same({ 1, 2 }, a:totable())                 -- a copy, not a view
    assert.are.equal("float32", mg.tensor(a, { dtype = "float32" }).dtype)
  end)

  it("takes the dtype option", function()
    assert.are.equal("float64", mg.tensor({ 1 }, F64).dtype)
    assert.are.equal("float64", mg.tensor(1, F64).dtype)
    assert.are.equal("float32", mg.tensor({ 1 }).dtype)
  end)

  it("rejects ragged, non-numeric and non-table input", function()
    raises(function() return mg.tensor { { 1, 2 }, { 3 } } end, "tensor", "ragged")
    raises(function() return mg.tensor { { 1, 2 }, 3 } end, "tensor", "ragged")
    raises(function() return mg.tensor { {}, { 1 } } end, "tensor", "ragged")
    raises(function() return mg.tensor { 1, "x" } end, "tensor", "expected a number", "string")
    raises(function() return mg.tensor { 1, { 2 } } end, "tensor", "expected a number", "table")
    raises(function() return mg.tensor("abc") end, "tensor", "string")
    raises(function() return mg.tensor(true) end, "tensor", "boolean")
    local cyclic = {}
    cyclic[1] = cyclic
    raises(function() return mg.tensor(cyclic) end, "tensor", "nested")
  end)

  it("rejects an unknown dtype", function()
    raises(function() return mg.tensor({ 1 }, { dtype = "int64" }) end, "tensor", "int64",
           "float32", "float64")
    raises(function() return mg.tensor({ 1 }, "float64") end, "tensor", "options table expected")
  end)
end)

describe("creation functions", function()
  it("take the shape as varargs or as one table", function()
    for _, f in ipairs { "zeros", "ones" } do
      assert.are.same(mg[f](2, 3):totable(), mg[f] { 2, 3 }:totable())
      assert.are.same({ 2, 3 }, mg[f]({ 2, 3 }, F64):shape())
      assert.are.equal("float64", mg[f]({ 2, 3 }, F64).dtype)
      assert.are.equal("float64", mg[f](2, 3, F64).dtype)
    end
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, mg.zeros(2, 3):totable())
    assert.are.same({ { 1, 1 } }, mg.ones { 1, 2 }:totable())
  end)

  it("make 0-d tensors from an empty shape and allow size 0", function()
    assert.are.equal(0, mg.zeros():dim())
    assert.are.equal(0, mg.zeros({}):dim())
    assert.are.equal(1, mg.ones({}):item())
    assert.are.same({ 3, 0 }, mg.zeros(3, 0):shape())
    assert.are.equal(0, mg.zeros(3, 0):numel())
  end)

  it("full fills with the value", function()
    assert.are.same({ { 7, 7 }, { 7, 7 } }, mg.full({ 2, 2 }, 7):totable())
    assert.are.same({ { 7, 7 }, { 7, 7 } }, mg.full(2, 2, 7):totable())
    local f = mg.full({ 3 }, 0.1, F64)
    assert.are.equal("float64", f.dtype)
    assert.are.equal(0.1, f:get(2))
  end)

  it("eye makes identity matrices", function()
    assert.are.same({ { 1, 0, 0 }, { 0, 1, 0 }, { 0, 0, 1 } }, mg.eye(3):totable())
    assert.are.same({ { 1, 0, 0 }, { 0, 1, 0 } }, mg.eye(2, 3):totable())
    assert.are.equal("float64", mg.eye(2, F64).dtype)
  end)

  it("arange counts from a up to b (exclusive), as NumPy", function()
    assert.are.same({ 0, 1, 2, 3, 4 }, mg.arange(5):totable())
    assert.are.same({ 1, 2, 3 }, mg.arange(1, 4):totable())
    assert.are.same({ 0, 0.25, 0.5, 0.75 }, mg.arange(0, 1, 0.25):totable())
    assert.are.same({ 5, 3, 1 }, mg.arange(5, 0, -2):totable())
    assert.are.same({ 0 }, mg.arange(3, 1):shape())
    assert.are.equal("float64", mg.arange(3, F64).dtype)
  end)

  it("linspace includes both ends", function()
    close({ 0, 0.25, 0.5, 0.75, 1 }, mg.linspace(0, 1, 5, F64):totable())
    assert.are.same({ 2 }, mg.linspace(2, 9, 1):totable())
    assert.are.same({ 0 }, mg.linspace(0, 1, 0):shape())
  end)

  it("reject bad shapes, naming the function and the size", function()
    raises(function() return mg.zeros(2, -1) end, "zeros", "negative size -1")
    raises(function() return mg.ones { 2, -3 } end, "ones", "-3")
    raises(function() return mg.zeros(1.5) end, "zeros", "integer")
    raises(function() return mg.zeros { 2, 1.5 } end, "zeros", "not an integer")
    raises(function() return mg.zeros("a") end, "zeros", "string")
    raises(function() return mg.full({ 2, 2 }) end, "full", "number")
    raises(function() return mg.eye(-1) end, "eye", "negative size -1")
    raises(function() return mg.arange(0, 1, 0) end, "arange", "step")
    raises(function() return mg.arange(0, 1 / 0) end, "arange", "finite")
    raises(function() return mg.arange(0 / 0) end, "arange", "finite")
    raises(function() return mg.linspace(0, 1, -1) end, "linspace", "negative size -1")
    raises(function() return mg.zeros(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1) end, "zeros",
           "too many dimensions")
  end)

  it("report an impossible allocation as an error naming the function and the shape", function()
    raises(function() return mg.zeros(1000000, 1000000, 1000000) end, "zeros",
           "(1000000,1000000,1000000)")
    raises(function() return mg.ones(2 ^ 40) end, "ones", "(1099511627776)")
    raises(function() return mg.arange(0, 1e13) end, "arange", "too many elements")
  end)

  it("reject an unknown dtype option", function()
    raises(function() return mg.zeros({ 2 }, { dtype = "int32" }) end, "zeros", "int32")
    raises(function() return mg.ones(2, { dtype = 3 }) end, "ones", "dtype")
  end)
end)

describe("inspection", function()
  local t
  before_each(function() t = mg.tensor { { 1, 2, 3 }, { 4, 5, 6 } } end)

  it("shape returns a fresh table", function()
    local s = t:shape()
    s[1] = 99
    assert.are.same({ 2, 3 }, t:shape())
  end)

  it("size, dim, numel, #, dtype", function()
    assert.are.equal(2, t:size(1))
    assert.are.equal(3, t:size(2))
    assert.are.equal(3, t:size(-1))
    assert.are.equal(2, t:size(-2))
    assert.are.same({ 2, 3 }, t:size())
    assert.are.equal(2, t:dim())
    assert.are.equal(6, t:numel())
    assert.are.equal(2, #t)
    assert.are.equal("float32", t.dtype)
  end)

  it("get and set use 1-based and negative indices", function()
    assert.are.equal(1, t:get(1, 1))
    assert.are.equal(6, t:get(-1, -1))
    assert.are.equal(t, t:set(10, 2, 1))                    -- returns the tensor
    assert.are.equal(10, t:get(2, 1))
    assert.are.equal(5, t:get(-1, 2))
  end)

  it("item needs exactly one element", function()
    assert.are.equal(4, mg.tensor { { 4 } }:item())
    raises(function() return t:item() end, "item", "6 elements")
  end)

  it("reject out-of-range indices and dimensions, naming the function", function()
    raises(function() return t:get(3, 1) end, "get", "index 3 out of range", "size 2")
    raises(function() return t:get(1, 0) end, "get", "index 0 out of range", "size 3")
    raises(function() return t:get(1, -4) end, "get", "index -4")
    raises(function() return t:get(1) end, "get", "expected 2 indices", "got 1")
    raises(function() return t:set(0, 1, 2, 3) end, "set", "expected 2 indices", "got 3")
    raises(function() return t:set("x", 1, 1) end, "set", "number")
    raises(function() return t:size(3) end, "size", "dimension 3 out of range for a 2-d tensor")
    raises(function() return t:size(0) end, "size", "dimension 0")
    raises(function() return t.shape(42) end, "shape", "moongrad.Tensor expected")
  end)
end)

describe("tostring", function()
  it("shows values, shape and dtype", function()
    local s = tostring(mg.tensor { { 1, 2 }, { 3, 4 } })
    assert.are.equal("tensor([[1., 2.],\n        [3., 4.]], shape=(2,2), dtype=float32)", s)
  end)

  it("prints 0-d, fractional and float64 tensors", function()
    assert.are.equal("tensor(2.5000, shape=(), dtype=float32)", tostring(mg.tensor(2.5)))
    assert.are.equal("tensor([0.5000, 0.2500], shape=(2), dtype=float64)",
                     tostring(mg.tensor({ 0.5, 0.25 }, F64)))
    assert.is_truthy(tostring(mg.tensor { 1e-5, 1 }):find("1.0000e-05", 1, true))
  end)

  it("prints nan and infinities", function()
    local s = tostring(mg.tensor { 0 / 0, 1 / 0, -1 / 0, 1 })
    assert.is_truthy(s:find("nan", 1, true))
    assert.is_truthy(s:find("-inf", 1, true))
  end)

  it("summarizes large tensors", function()
    local s = tostring(mg.arange(2000))
    assert.is_truthy(s:find("...", 1, true))
    assert.is_truthy(s:find("1999.", 1, true))
    assert.is_truthy(s:find("shape=(2000)", 1, true))
    assert.is_true(#s < 200)
  end)

  it("prints empty tensors", function()
    assert.are.equal("tensor([], shape=(0,3), dtype=float32)", tostring(mg.zeros(0, 3)))
  end)

  it("of a released tensor is tensor(released), not an error", function()
    local t = mg.ones(2, 3)
    getmetatable(t).__close(t)
    assert.are.equal("tensor(released)", tostring(t))
    assert.are.equal("tensor(released)", string.format("%s", t))
  end)

  it("is registered in C with the Lua formatter as a hook (without it: shape and dtype)", function()
    local t = mg.tensor({ { 1, 2 }, { 3, 4 } }, F64)
    local mt = getmetatable(t)
    assert.are.equal("function", type(rawget(mt, "__tostring")))
    assert.is_nil(rawget(mt, "methods"))
    assert.is_nil(mg.methods)
    local formatted = tostring(t)
    mg._set_tostring(nil)
    local ok, plain = pcall(tostring, t)
    mg._set_tostring(function(x) return "T" .. mg.shapestr(x) end)
    local hooked = tostring(t)
    mg._set_tostring(nil)
    local plain0 = tostring(mg.tensor(1))
    package.loaded["moongrad.core"] = nil
    require "moongrad.core"                     -- sets the formatter again
    assert.is_true(ok)
    assert.are.equal("tensor(shape=(2,2), dtype=float64)", plain)
    assert.are.equal("tensor(shape=(), dtype=float32)", plain0)
    assert.are.equal("T(2,2)", hooked)
    assert.are.equal(formatted, tostring(t))
    assert.are.equal("tensor([[1., 2.],\n        [3., 4.]], shape=(2,2), dtype=float64)", formatted)
  end)
end)

describe("dtypes", function()
  after_each(function() mg.set_default_dtype("float32") end)

  it("float32 rounds, float64 keeps every bit", function()
    assert.are_not.equal(0.1, mg.tensor(0.1):item())
    assert.are.equal(0.1, mg.tensor(0.1, F64):item())
    local x = mg.tensor({ 0.1, 0.2, 1 / 3, math.pi, 1e300, 5e-324 }, F64)
    close({ 0.1, 0.2, 1 / 3, math.pi, 1e300, 5e-324 }, x:totable())
    assert.are.equal(0.1 + 0.2, (mg.tensor(0.1, F64) + 0.2):item())
  end)

  it("to converts, and to the same dtype shares storage", function()
    local a = mg.tensor { 1.5, 2.5 }
    local b = a:to("float64")
    assert.are.equal("float64", b.dtype)
    assert.are.same({ 1.5, 2.5 }, b:totable())
    b:fill(0)
    assert.are.same({ 1.5, 2.5 }, a:totable())
    local c = a:to("float32")
    c:fill(7)
    assert.are.same({ 7, 7 }, a:totable())
    assert.are.equal(16777216, mg.tensor({ 16777217 }, F64):to("float32"):item())
  end)

  it("set_default_dtype switches every creation function", function()
    assert.are.equal("float32", mg.get_default_dtype())
    mg.set_default_dtype("float64")
    assert.are.equal("float64", mg.get_default_dtype())
    for _, t in ipairs { mg.tensor(1), mg.tensor { 1 }, mg.zeros(2), mg.ones(2), mg.full({ 2 }, 3),
                         mg.eye(2), mg.arange(3), mg.linspace(0, 1, 3), mg.rand(2), mg.randn(2),
                         mg.uniform(2, 0, 1) } do
      assert.are.equal("float64", t.dtype)
    end
    assert.are.equal(0.1, mg.tensor(0.1):item())
    assert.are.equal("float32", mg.zeros(2, { dtype = "float32" }).dtype)   -- option wins
    mg.set_default_dtype("float32")
    assert.are.equal("float32", mg.zeros(2).dtype)
  end)

  it("accepts the aliases float and double", function()
    assert.are.equal("float64", mg.zeros(1, { dtype = "double" }).dtype)
    assert.are.equal("float32", mg.zeros(1, { dtype = "float" }).dtype)
  end)

  it("rejects unknown dtypes, naming the function and the value", function()
    raises(function() mg.set_default_dtype("int64") end, "set_default_dtype", "int64")
    raises(function() return mg.ones(2):to("half") end, "to", "half")
    assert.are.equal("float32", mg.get_default_dtype())
  end)
end)
