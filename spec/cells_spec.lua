-- Fused LSTM and GRU steps (runtime/cells.c): forward against docs/cells.md's formulas
-- written with tensor ops, the composite rules (vectorized / higher order) against finite
-- differences, the fused reverse rule against the composite one, second derivatives.
local mg = require "moongrad"
local support = require "support"

local F64 = support.F64
local B, d, u = 3, 4, 5

local function near(expect, got, tol)
  local e, g = expect:reshape(-1), got:reshape(-1)
  assert.are.equal(e:numel(), g:numel())
  local worst = (e - g):abs():max():item()
  assert.is_true(worst <= tol, string.format("max difference %g > %g", worst, tol))
end

local function gates(z, k)
  local parts = mg.split(z, u, 2)
  return parts[k]
end

local function lstm_ref(x, h, c, W, U, b)
  local z = mg.matmul(x, W) + mg.matmul(h, U) + b
  local i, f = mg.sigmoid(gates(z, 1)), mg.sigmoid(gates(z, 2))
  local g, o = mg.tanh(gates(z, 3)), mg.sigmoid(gates(z, 4))
  local c2 = f * c + i * g
  return o * mg.tanh(c2), c2
end

local function gru_ref(x, h, W, U, b, reset_after)
  if reset_after then
    local mx, mh = mg.matmul(x, W) + b[1], mg.matmul(h, U) + b[2]
    local z = mg.sigmoid(gates(mx, 1) + gates(mh, 1))
    local r = mg.sigmoid(gates(mx, 2) + gates(mh, 2))
    local hh = mg.tanh(gates(mx, 3) + r * gates(mh, 3))
    return z * h + (1 - z) * hh
  end
  local Us = mg.split(U, u, 2)
  local bs = mg.split(b, u, 1)
  local Ws = mg.split(W, u, 2)
  local z = mg.sigmoid(mg.matmul(x, Ws[1]) + mg.matmul(h, Us[1]) + bs[1])
  local r = mg.sigmoid(mg.matmul(x, Ws[2]) + mg.matmul(h, Us[2]) + bs[2])
  local hh = mg.tanh(mg.matmul(x, Ws[3]) + mg.matmul(r * h, Us[3]) + bs[3])
  return z * h + (1 - z) * hh
end

local function lstm_args()
  return { mg.randn(B, d, F64), mg.randn(B, u, F64), mg.randn(B, u, F64),
           mg.randn(d, 4 * u, F64) * 0.5, mg.randn(u, 4 * u, F64) * 0.5, mg.randn(4 * u, F64) * 0.5 }
end

local function gru_args(reset_after)
  return { mg.randn(B, d, F64), mg.randn(B, u, F64), mg.randn(d, 3 * u, F64) * 0.5,
           mg.randn(u, 3 * u, F64) * 0.5,
           reset_after and mg.randn(2, 3 * u, F64) * 0.5 or mg.randn(3 * u, F64) * 0.5 }
end

local function lstm_out(...)
  local h, c = mg.lstm_cell(...)
  return mg.cat({ h, c }, 2)
end

-- Gradients of sum(out * v) by the fused rule (tape:gradient, no other tape, no lead dim)
-- and by contracting the composite rule's Jacobian with v.
local function fused_vs_composite(f, args)
  local tape <close> = mg.GradientTape { persistent = true }
  tape:watch(args)
  local out = f(table.unpack(args))
  local v = mg.randn(out:shape(), F64)
  local fused = tape:gradient(out, args, { output_gradients = v })
  for k, a in ipairs(args) do
    local J = tape:jacobian(out, a)
    local viaJ = mg.matmul(v:reshape(1, -1), J:reshape(out:numel(), -1)):reshape(a:shape())
    near(viaJ, fused[k], 1e-12)
  end
end

describe("fused LSTM cell", function()
  setup(function() mg.manual_seed(21) end)
  it("equals the Keras formulas", function()
    local a = lstm_args()
    local h, c = mg.lstm_cell(table.unpack(a))
    local hr, cr = lstm_ref(table.unpack(a))
    near(hr, h, 1e-14)
    near(cr, c, 1e-14)
  end)
  it("composite rules pass gradcheck, reverse and forward", function()
    assert.is_true(mg.gradcheck(lstm_out, lstm_args()))
  end)
  it("the fused reverse rule equals the composite one", function()
    fused_vs_composite(lstm_out, lstm_args())
    fused_vs_composite(function(...) return (mg.lstm_cell(...)) end, lstm_args())   -- h only
  end)
  it("float32 agrees with float64", function()
    local a = lstm_args()
    local a32 = {}
    for k, t in ipairs(a) do a32[k] = t:to("float32") end
    local h = mg.lstm_cell(table.unpack(a32))
    near(mg.lstm_cell(table.unpack(a)), h:to("float64"), 1e-5)
  end)
  it("second derivatives through nested tapes", function()
    local a = lstm_args()
    local hvp = function(x)
      local args = { x, a[2], a[3], a[4], a[5], a[6] }
      return mg.grad(function(xx) args[1] = xx return (lstm_out(table.unpack(args)) ^ 2):sum() end)(x)
    end
    assert.is_true(mg.gradcheck(hvp, { a[1] }, { modes = { "rev" } }))
  end)
  it("bad shapes name the cell and the operand", function()
    local a = lstm_args()
    a[4] = mg.randn(d + 1, 4 * u, F64)
    local ok, err = pcall(mg.lstm_cell, table.unpack(a))
    assert.is_false(ok)
    assert.matches("lstm_cell: kernel has shape %(5,20%), expected %(4,20%)", err)
    a = lstm_args()
    a[1] = a[1]:to("float32")
    ok, err = pcall(mg.lstm_cell, table.unpack(a))
    assert.matches("lstm_cell: mixed dtypes", err)
  end)
end)

for _, ra in ipairs { true, false } do
  describe("fused GRU cell, reset_after=" .. tostring(ra), function()
    setup(function() mg.manual_seed(ra and 22 or 23) end)
    local f = function(...) return mg.gru_cell(..., ra) end
    local function call(a) return mg.gru_cell(a[1], a[2], a[3], a[4], a[5], ra) end
    it("equals the Keras formulas", function()
      local a = gru_args(ra)
      near(gru_ref(a[1], a[2], a[3], a[4], a[5], ra), call(a), 1e-14)
    end)
    it("composite rules pass gradcheck, reverse and forward", function()
      local a = gru_args(ra)
      assert.is_true(mg.gradcheck(function(x, h, W, U, b) return mg.gru_cell(x, h, W, U, b, ra) end, a))
    end)
    it("the reverse rule without lead dims equals the vectorized one", function()
      fused_vs_composite(function(x, h, W, U, b) return mg.gru_cell(x, h, W, U, b, ra) end, gru_args(ra))
    end)
    it("bad bias shape", function()
      local a = gru_args(not ra)
      local ok, err = pcall(call, a)
      assert.is_false(ok)
      assert.matches("gru_cell: bias has shape", err)
    end)
    local _ = f
  end)
end

-- Inputs with 0 features (x of shape (B,0), kernel (0,G*u)): the input GEMM has K = 0 and an
-- ld of 0, which BLAS rejects (it would leave the gates unwritten); the input part is zero.
describe("cells with an input of 0 features", function()
  setup(function() mg.manual_seed(24) end)
  local function dirty() mg.full({ B, 4 * u }, 7, F64):sum() end   -- pool blocks hold 7s

  it("lstm_cell is the recurrence of h alone, and its gradients have the shapes given", function()
    local a = lstm_args()
    a[1], a[4] = mg.zeros(B, 0, F64), mg.zeros(0, 4 * u, F64)
    dirty()
    local h, c = mg.lstm_cell(table.unpack(a))
    local hr, cr = lstm_ref(mg.zeros(B, 1, F64), a[2], a[3], mg.zeros(1, 4 * u, F64), a[5], a[6])
    near(hr, h, 1e-14)
    near(cr, c, 1e-14)
    local tape <close> = mg.GradientTape()
    tape:watch(a)
    local out = tape:record(function() return lstm_out(table.unpack(a)) end)
    local g = tape:gradient(out, a)
    assert.are.same({ B, 0 }, g[1]:shape())
    assert.are.same({ 0, 4 * u }, g[4]:shape())
    local x, W = a[1], a[4]              -- gradcheck of empty inputs is issue 10's item 4
    assert.is_true(mg.gradcheck(function(h, c, U, b) return lstm_out(x, h, c, W, U, b) end,
                                { a[2], a[3], a[5], a[6] }))
  end)

  it("gru_cell, both reset_after forms", function()
    for _, ra in ipairs { true, false } do
      local a = gru_args(ra)
      a[1], a[3] = mg.zeros(B, 0, F64), mg.zeros(0, 3 * u, F64)
      dirty()
      near(gru_ref(mg.zeros(B, 1, F64), a[2], mg.zeros(1, 3 * u, F64), a[4], a[5], ra),
           mg.gru_cell(a[1], a[2], a[3], a[4], a[5], ra), 1e-14)
    end
  end)
end)
