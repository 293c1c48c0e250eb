-- runtime/ops_index.c (flip, diagonal/diag_embed, gather/scatter_add, index_select,
-- take_along_dim) and the composites of bindings/moongrad/ops.lua (roll, tril, triu, outer,
-- einsum, masked_fill, pad, repeats, tile): values written out by hand or computed element by
-- element in Lua, both dtypes, strided inputs, and each bad input's message.
local mg = require "moongrad"
local support = require "support"

local F64, raises = support.F64, support.raises
local close = support.closeness { tolerance = "relative" }

local m                  -- {{1,2,3},{4,5,6}} float64
before_each(function() m = mg.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, F64) end)

describe("flip", function()
  it("reverses one dim, several dims, keeps dtype; strided and expanded inputs", function()
    assert.are.same({ { 4, 5, 6 }, { 1, 2, 3 } }, m:flip(1):totable())
    assert.are.same({ { 6, 5, 4 }, { 3, 2, 1 } }, mg.flip(m, { 1, -1 }):totable())
    assert.are.same({ { 3, 6 }, { 2, 5 }, { 1, 4 } }, m:transpose():flip(1):totable())
    assert.are.same({ { 3, 2, 1 }, { 3, 2, 1 } }, mg.tensor({ 1, 2, 3 }):expand(2, 3):flip(2):totable())
    assert.are.equal("float32", mg.tensor({ 1, 2 }):flip(1).dtype)
  end)
  it("errors", function()
    raises(function() m:flip(3) end, "dimension 3 out of range for a 2-d tensor")
    raises(function() m:flip({ 1, 1 }) end, "flip: dimension 1 given twice")
  end)
end)

describe("diagonal, diag", function()
  it("diagonal: offsets, dims, as a view", function()
    assert.are.same({ 1, 5 }, m:diagonal():totable())
    assert.are.same({ 2, 6 }, m:diagonal(1):totable())
    assert.are.same({ 4 }, mg.diagonal(m, -1):totable())
    assert.are.same({}, m:diagonal(3):totable())
    local c = mg.arange(24, F64):reshape(2, 3, 4)
    assert.are.same({ { 0, 13 }, { 4, 17 }, { 8, 21 } }, c:diagonal(0, 1, 3):totable())  -- c[i][j][i]
    local d = m:diagonal()
    d:set(9, 1)                                             -- a view: writes reach m
    assert.are.equal(9, m:get(1, 1))
  end)
  it("diag: vector to matrix (with offsets) and back, as torch.diag", function()
    local v = mg.tensor({ 1, 2 }, F64)
    assert.are.same({ { 1, 0 }, { 0, 2 } }, mg.diag(v):totable())
    assert.are.same({ { 0, 1, 0 }, { 0, 0, 2 }, { 0, 0, 0 } }, v:diag(1):totable())
    assert.are.same({ { 0, 0, 0 }, { 1, 0, 0 }, { 0, 2, 0 } }, v:diag(-1):totable())
    assert.are.same({ 1, 5 }, m:diag():totable())
    assert.are.same({ 3 }, m:diag(2):totable())
  end)
  it("errors", function()
    raises(function() mg.diag(mg.zeros(2, 2, 2)) end, "diag: expected a 1-d or 2-d tensor, got 3 dimensions")
    raises(function() mg.diagonal(mg.zeros(3)) end, "diagonal: expected at least 2 dimensions")
    raises(function() m:diagonal(0, 2, 2) end, "diagonal: dimensions 2 and 2 are the same")
    raises(function() mg.diag(mg.ones(2), math.mininteger) end, "'diag'", "diagonal offset out of range")
    raises(function() m:diagonal(math.maxinteger) end, "diagonal: diagonal offset 9223372036854775807 out of range")
  end)
end)

describe("gather, index_select, take_along_dim (1-based indices held as floats)", function()
  it("gather as torch.gather, both dtypes, strided source", function()
    local idx = mg.tensor({ { 3, 1 }, { 2, 2 } })
    assert.are.same({ { 3, 1 }, { 5, 5 } }, m:gather(2, idx):totable())
    assert.are.same({ { 4, 2 } }, mg.gather(m, 1, mg.tensor({ { 2, 1 } })):totable())
    assert.are.same({ { 4, 1 }, { 5, 5 } }, m:transpose():gather(2, mg.tensor({ { 2, 1 }, { 2, 2 } })):totable())
    assert.are.equal("float32", mg.tensor({ { 1, 2 } }):gather(2, mg.tensor({ { 2 } }, F64)).dtype)
  end)
  it("index_select and take_along_dim", function()
    assert.are.same({ { 3, 1, 3 }, { 6, 4, 6 } }, m:index_select(2, mg.tensor({ 3, 1, 3 })):totable())
    assert.are.same({ { 4, 5, 6 } }, mg.index_select(m, 1, mg.tensor({ 2 })):totable())
    assert.are.same({ { 2 }, { 6 } }, m:take_along_dim(mg.tensor({ { 2 }, { 3 } }), 2):totable())
    assert.are.same({ { 1, 2, 3 }, { 1, 2, 3 } },
                    mg.take_along_dim(mg.tensor({ { 1, 2, 3 } }, F64), mg.tensor({ { 1 }, { 1 } }), 1):totable())
    assert.are.same({ 6, 1 }, m:take_along_dim(mg.tensor({ 6, 1 })):totable())
  end)
  it("an index out of range or not an integer names the op and the index", function()
    raises(function() m:gather(2, mg.tensor({ { 4 } })) end, "gather: index 4 out of range for dimension 2 of size 3")
    raises(function() m:gather(2, mg.tensor({ { 0 } })) end, "gather: index 0 out of range for dimension 2 of size 3")
    raises(function() m:gather(1, mg.tensor({ { 1.5 } })) end, "gather: index 1.5 is not an integer")
    raises(function() m:index_select(1, mg.tensor({ 1, 3 })) end, "index_select: index 3 out of range for dimension 1 of size 2")
    raises(function() m:take_along_dim(mg.tensor({ { -1 }, { 1 } }), 2) end,
           "take_along_dim: index -1 out of range for dimension 2 of size 3")
    raises(function() m:take_along_dim(mg.tensor({ 7 })) end, "take_along_dim: index 7 out of range for dimension 1 of size 6")
  end)
  it("other bad inputs", function()
    raises(function() m:gather(2, { 1 }) end, "tensor of indices expected")
    raises(function() m:gather(2, mg.tensor({ 1 })) end, "gather: index of shape (1) does not fit (2,3)")
    raises(function() m:index_select(1, mg.ones(1, 1)) end, "index_select: index must be 1-d")
    raises(function() m:take_along_dim(mg.ones(2), 1) end, "take_along_dim: index has 1 dimensions, the tensor 2")
  end)
end)

describe("roll, tril, triu, outer", function()
  it("roll along a dim, several, flattened; negative and large shifts", function()
    assert.are.same({ { 3, 1, 2 }, { 6, 4, 5 } }, m:roll(1, 2):totable())
    assert.are.same({ { 2, 3, 1 }, { 5, 6, 4 } }, mg.roll(m, -4, -1):totable())
    assert.are.same({ { 6, 1, 2 }, { 3, 4, 5 } }, m:roll(1):totable())
    assert.are.same({ { 6, 4, 5 }, { 3, 1, 2 } }, m:roll({ 1, 1 }, { 1, 2 }):totable())
    assert.are.same(m:totable(), m:roll(3, 2):totable())
  end)
  it("tril and triu with diagonal offsets, batched", function()
    assert.are.same({ { 1, 0, 0 }, { 4, 5, 0 } }, m:tril():totable())
    assert.are.same({ { 1, 2, 0 }, { 4, 5, 6 } }, mg.tril(m, 1):totable())
    assert.are.same({ { 0, 0, 0 }, { 4, 0, 0 } }, m:tril(-1):totable())
    assert.are.same({ { 1, 2, 3 }, { 0, 5, 6 } }, m:triu():totable())
    assert.are.same({ { 0, 0, 3 }, { 0, 0, 0 } }, mg.triu(m, 2):totable())
    assert.are.same({ { { 1, 2, 3 }, { 0, 5, 6 } }, { { 1, 2, 3 }, { 0, 5, 6 } } },
                    m:unsqueeze(1):expand(2, 2, 3):triu():totable())
    local inf = mg.tensor({ { 1, math.huge }, { 1, 1 } }, F64)
    assert.are.same({ { 1, 0 }, { 1, 1 } }, inf:tril():totable())     -- zeros, not inf * 0
  end)
  it("outer", function()
    assert.are.same({ { 3, 4 }, { 6, 8 } }, mg.outer(mg.tensor({ 1, 2 }), mg.tensor({ 3, 4 })):totable())
    raises(function() mg.outer(m, m) end, "outer: expected two 1-d tensors")
  end)
  it("errors", function()
    raises(function() mg.roll(m, 1, 3) end, "roll: dimension 3 out of range for a 2-d tensor")
    raises(function() mg.roll(m, 0.5) end, "roll: shift must be an integer")
    raises(function() mg.roll(m, { 1 }, { 1, 2 }) end, "roll: 1 shifts for 2 dimensions")
    raises(function() mg.tril(mg.ones(3)) end, "tril: expected at least 2 dimensions, got 1")
    raises(function() mg.triu(m, 0.5) end, "triu: diagonal must be an integer")
  end)
end)

describe("einsum", function()
  -- the Lua reference: a sum over every assignment of the letters
  local function naive(spec, ...)
    local ops = { ... }
    local lhs, rhs = spec:match("^(.-)%->(.*)$")
    local terms = {}
    for t in (lhs .. ","):gmatch("([^,]*),") do terms[#terms + 1] = t end
    local size, letters = {}, {}
    for k, t in ipairs(terms) do
      for i = 1, #t do
        local ch = t:sub(i, i)
        if not size[ch] then letters[#letters + 1] = ch end
        size[ch] = ops[k]:size(i)
      end
    end
    local out = {}
    local function key(asg)
      local idx = {}
      for i = 1, #rhs do idx[i] = asg[rhs:sub(i, i)] end
      return table.concat(idx, ",")
    end
    local asg = {}
    local function rec(n)
      if n > #letters then
        local p = 1
        for k, t in ipairs(terms) do
          local idx = {}
          for i = 1, #t do idx[i] = asg[t:sub(i, i)] end
          p = p * ops[k]:get(table.unpack(idx))
        end
        local kk = key(asg)
        out[kk] = (out[kk] or 0) + p
        return
      end
      for v = 1, size[letters[n]] do asg[letters[n]] = v rec(n + 1) end
    end
    rec(1)
    return out
  end
  local function check(spec, ...)
    local y = mg.einsum(spec, ...)
    local want = naive(spec, ...)
    local rhs = spec:match("%->(.*)$")
    assert.are.equal(#rhs, y:dim(), spec)
    local n = 0
    for k, v in pairs(want) do
      n = n + 1
      local idx = {}
      for s in k:gmatch("%d+") do idx[#idx + 1] = tonumber(s) end
      close(v, y:get(table.unpack(idx)), 1e-12)
    end
    assert.are.equal(n, y:numel(), spec)
  end
  setup(function() mg.manual_seed(21) end)
  it("matches the sum over every index for the usual contractions", function()
    local A, B = mg.randn(2, 3, F64), mg.randn(3, 4, F64)
    check("ij,jk->ik", A, B)
    check("ij,jk->ki", A, B)
    check("ij,ij->i", A, mg.randn(2, 3, F64))
    check("ij,kj->ik", A, mg.randn(4, 3, F64))
    check("bij,bjk->bik", mg.randn(2, 2, 3, F64), mg.randn(2, 3, 2, F64))
    check("bhqd,bhkd->bhqk", mg.randn(2, 2, 3, 2, F64), mg.randn(2, 2, 2, 2, F64))
    check("i,j->ij", mg.randn(3, F64), mg.randn(2, F64))
    check("ij,jk->", A, B)
    check("ijk,k->ij", mg.randn(2, 3, 2, F64), mg.randn(2, F64))
    check("ij,k->ijk", A, mg.randn(2, F64))
    check("ii->i", mg.randn(3, 3, F64))
    check("ij->ji", A)
    check("ijk->kj", mg.randn(2, 3, 2, F64))
    check("iij,jk->ik", mg.randn(2, 2, 3, F64), B)
    check("ab,ab->", A, mg.randn(2, 3, F64):transpose():contiguous():transpose())
  end)
  it("implicit output: the letters seen once, alphabetically", function()
    local A, B = mg.randn(2, 3, F64), mg.randn(3, 4, F64)
    close(mg.einsum("ij,jk->ik", A, B):totable(), mg.einsum("ij,jk", A, B):totable(), 1e-15)
    close(mg.einsum("ba,ac->bc", mg.randn(2, 2, F64), mg.randn(2, 2, F64)):dim(), 2, 0)
    close(mg.einsum("ii->", A:narrow(2, 1, 2)):item(), mg.einsum("ii", A:narrow(2, 1, 2)):item(), 1e-15)
  end)
  it("errors name einsum and what is wrong", function()
    local A = mg.ones(2, 3)
    raises(function() mg.einsum("ij,jk->ik", A) end, "einsum: 'ij,jk->ik' names 2 operands, 1 given")
    raises(function() mg.einsum("ij,jk->ik", A, mg.ones(2, 2)) end, "einsum: subscript 'j' has sizes 3 and 2")
    raises(function() mg.einsum("ijk", A) end, "einsum: 'ijk' has 3 subscripts for operand 1 of 2 dimensions")
    raises(function() mg.einsum("ij->ix", A) end, "einsum: output subscript 'x' is in no operand")
    raises(function() mg.einsum("...j->j", A) end, "not a letter")
    raises(function() mg.einsum("i,i,i->", mg.ones(2), mg.ones(2), mg.ones(2)) end, "one or two are supported")
    raises(function() mg.einsum(3, A) end, "einsum: the subscripts must be a string")
  end)
end)

describe("masked_fill, pad, repeats, tile", function()
  it("masked_fill with a broadcast mask, a number or a tensor value", function()
    assert.are.same({ { 0, 2, 0 }, { 4, 0, 6 } },
                    m:masked_fill(mg.tensor({ { 1, 0, 1 }, { 0, 1, 0 } }), 0):totable())
    assert.are.same({ { 9, 2, 3 }, { 9, 5, 6 } }, mg.masked_fill(m, mg.tensor({ 1, 0, 0 }), 9):totable())
    raises(function() m:masked_fill(mg.ones(2, 2, 3), 0) end, "masked_fill: mask of shape (2,2,3) does not broadcast to (2,3)")
    raises(function() m:masked_fill(mg.ones(3), "x") end, "masked_fill: value must be a number or a tensor")
  end)
  it("pad as torch.nn.functional.pad: last dim first, values, crops", function()
    assert.are.same({ { 0, 1, 2, 3, 0, 0 }, { 0, 4, 5, 6, 0, 0 } }, mg.pad(m, { 1, 2 }):totable())
    assert.are.same({ { 7, 7, 7, 7 }, { 1, 2, 3, 7 }, { 4, 5, 6, 7 } }, m:pad({ 0, 1, 1, 0 }, 7):totable())
    assert.are.same({ { 2, 3, 0 }, { 5, 6, 0 } }, m:pad({ -1, 1 }):totable())
    assert.are.equal("float64", m:pad({ 1, 1 }).dtype)
    raises(function() m:pad({ 1 }) end, "pad: 1 amounts for a 2-d tensor")
    raises(function() m:pad({ 1, 1, 1, 1, 1, 1 }) end, "pad: 6 amounts for a 2-d tensor")
    raises(function() m:pad({ -2, -2 }) end, "pad: cropping 2 and 2 from dimension 2 of size 3")
    raises(function() m:pad({ 0.5, 1 }) end, "pad: amount 1 must be an integer")
  end)
  it("repeats as torch's Tensor.repeat, tile as numpy.tile", function()
    local v = mg.tensor({ 1, 2 }, F64)
    assert.are.same({ 1, 2, 1, 2, 1, 2 }, v:repeats(3):totable())
    assert.are.same({ { 1, 2, 1, 2 }, { 1, 2, 1, 2 } }, mg.repeats(v, 2, 2):totable())
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 }, { 1, 2, 3 }, { 4, 5, 6 } }, m:repeats({ 2, 1 }):totable())
    assert.are.same({ { 1, 2, 3, 1, 2, 3 }, { 4, 5, 6, 4, 5, 6 } }, m:tile(2):totable())
    assert.are.same({ { { 1, 2, 1, 2 } }, { { 1, 2, 1, 2 } } }, mg.tile(v, { 2, 1, 2 }):totable())
    assert.are.same({ 0, 3 }, m:repeats(0, 1):shape())
    raises(function() m:repeats(2) end, "repeats: 1 repeats for a 2-d tensor")
    raises(function() m:tile(-1) end, "tile: repeat 2 is negative")
    raises(function() m:repeats(1, 1.5) end, "repeats: repeat 2 must be an integer")
  end)
  it("repeat under PyTorch's name too, t[\"repeat\"](t, ...) and mg[\"repeat\"] ('repeat' is a Lua keyword)", function()
    assert.are.same(m:repeats(2, 3):totable(), m["repeat"](m, 2, 3):totable())
    assert.are.same(m:repeats({ 2, 1, 1 }):totable(), mg["repeat"](m, { 2, 1, 1 }):totable())
    raises(function() m["repeat"](m, 2) end, "repeat: 1 repeats for a 2-d tensor")
    raises(function() mg["repeat"](m, 1, -1) end, "repeat: repeat 2 is negative")
    raises(function() mg["repeat"](2, 1) end, "repeat: argument 1 must be a tensor")
  end)
end)
