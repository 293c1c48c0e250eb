-- The LSTM cell's accumulating reverse rule (runtime/cells.c lstm_vjp_acc, tape.c run_vjp):
-- in a first-order sweep, the weight cotangents of every step are added into the running sums
-- in place (GEMMs with beta = 1) instead of a new tensor per step that the sweep then adds.
-- The sums must be the same numbers, bit for bit, as the sweep's own adds give: here the
-- reference runs every step on its own clone of the weights, so that each step's cotangent is
-- a new tensor and the sweep sums them in the same order (step T first).
local mg = require "moongrad"

-- loss = sum_t sum(h_t * w_t) over a T-step LSTM; weights shared by every step, or cloned
-- per step (recorded copies) when 'per_step'.
local function run(case, per_step)
  local W, U, b, x, h0, c0, ws = case.W, case.U, case.b, case.x, case.h0, case.c0, case.ws
  local tape <close> = mg.GradientTape()
  tape:watch(h0); tape:watch(c0); tape:watch(x)
  local h, c, loss = h0, c0, nil
  for t = 1, #ws do
    local Wt, Ut = W, U
    if per_step then Wt, Ut = W:clone(), U:clone() end
    h, c = mg.lstm_cell(x:select(2, t), h, c, Wt, Ut, b)
    local term = (h * ws[t]):sum()
    loss = loss and loss + term or term
  end
  tape:stop()
  return tape:gradient(loss, { W, U, b, x, h0, c0 })
end

local function make(dtype, B, T, d, u)
  mg.manual_seed(B * 1000 + u)
  local o = { dtype = dtype }
  local case = {
    W = mg.Variable(mg.randn({ d, 4 * u }, o) * 0.3, "W"),
    U = mg.Variable(mg.randn({ u, 4 * u }, o) * 0.3, "U"),
    b = mg.Variable(mg.randn({ 4 * u }, o) * 0.1, "b"),
    x = mg.randn({ B, T, d }, o), h0 = mg.randn({ B, u }, o), c0 = mg.randn({ B, u }, o), ws = {} }
  for t = 1, T do case.ws[t] = mg.randn({ B, u }, o) end
  return case
end

describe("LSTM cell: weight gradients summed in place over the steps", function()
  for _, dtype in ipairs { "float64", "float32" } do
    for _, sz in ipairs { { 3, 6, 4, 5 }, { 16, 12, 8, 32 }, { 64, 4, 8, 48 } } do
      local B, T, d, u = table.unpack(sz)
      it(string.format("%s, B=%d T=%d d=%d u=%d: identical to a new tensor per step", dtype, B, T, d, u), function()
        local case = make(dtype, B, T, d, u)
        local got, want = run(case, false), run(case, true)
        for i, name in ipairs { "W", "U", "b", "x", "h0", "c0" } do
          local diff = (got[i] - want[i]):abs():max():item()
          assert.are.equal(0, diff, name .. " differs by " .. diff)
        end
      end)
    end
  end

  it("a weight also used outside the cell still gets the full sum", function()
    local case = make("float64", 4, 5, 3, 6)
    local function loss_grads(per_step)
      local tape <close> = mg.GradientTape()
      local h, c, loss = case.h0, case.c0, (case.U * case.U):sum()
      for t = 1, 5 do
        local Ut = per_step and case.U:clone() or case.U
        h, c = mg.lstm_cell(case.x:select(2, t), h, c, case.W, Ut, case.b)
        loss = loss + (h * case.ws[t]):sum()
      end
      tape:stop()
      return tape:gradient(loss, { case.U })[1]
    end
    local diff = (loss_grads(false) - loss_grads(true)):abs():max():item()
    assert.is_true(diff <= 1e-13, "U's gradient differs by " .. diff)
  end)
end)
