-- moongrad.spectra: the spectra of gradient flow through a recurrence h_t = step(x_t, h_(t-1)):
-- mg.lyapunov (the top-k Lyapunov exponents by the QR method, the k tangents pushed through
-- each step as one vectorized forward-mode JVP) and mg.jacobian_spectra (singular values of
-- dh_T/dh_k for every k from one vectorized reverse sweep, and of each step's Jacobian).
-- Also behind rnn:lyapunov / cell:lyapunov and rnn:jacobian_spectra / cell:jacobian_spectra,
-- and the aliases mg.plot_spectrum, mg.plot_spectrum_bands of mg.plot.spectrum, spectrum_bands.
local mg = require "moongrad"

local ipairs, math, pairs, rawget, table, type = ipairs, math, pairs, rawget, table, type
local debug = debug
local _ENV = nil

local ck = mg._checks(debug.getinfo(1, "S").source)
local raisef, describe, check_opts = ck.raisef, ck.describe, ck.check_opts

local spectra = {}

---------------------------------------------------------------- states

-- A state given as one (B, N) tensor or an array of (B, N_i) tensors (LSTM: {h, c}), seen as
-- one flat (B, N) tensor: returns z0, split(z) -> the state's form, join(state) -> z, sizes.
local function flat_state(fn, h0)
  local parts = mg.is_tensor(h0) and { h0 } or h0
  if type(parts) ~= "table" or #parts == 0 then
    raisef("%s: h0 must be a (B, N) tensor or an array of them, got %s", fn, describe(h0))
  end
  local sizes, B = {}, nil
  for i, p in ipairs(parts) do
    if not mg.is_tensor(p) or p:dim() ~= 2 then
      raisef("%s: state %d must be a (B, N) tensor, got %s", fn, i, describe(p))
    end
    B = B or p:size(1)
    if p:size(1) ~= B then raisef("%s: state %d has batch size %d, expected %d", fn, i, p:size(1), B) end
    sizes[i] = p:size(2)
  end
  local single = mg.is_tensor(h0)
  local function split(z)
    if single then return z end
    local out, at = {}, 1
    for i, n in ipairs(sizes) do out[i] = z:narrow(2, at, n); at = at + n end
    return out
  end
  local function join(s, what)
    if mg.is_tensor(s) then s = { s } end
    if type(s) ~= "table" or #s ~= #sizes then
      raisef("%s: step returned %s, expected a state like h0 (%d tensors)", fn, describe(s), #sizes)
    end
    for i, n in ipairs(sizes) do
      if not mg.is_tensor(s[i]) or s[i]:dim() ~= 2 or s[i]:size(1) ~= B or s[i]:size(2) ~= n then
        raisef("%s: %s state %d is %s, expected (%d,%d)", fn, what, i, describe(s[i]), B, n)
      end
    end
    if #s == 1 then return s[1] end
    return mg.cat(s, 2)
  end
  return join(parts, "h0"), split, join
end

-- The inputs: x_t = xs[:, t] for t = 1..T (xs (B, T, F)), or nil for an autonomous map run
-- 'steps' times. Returns a function t -> x_t and the number of steps available.
local function inputs(fn, xs, B, steps, first)
  if xs == nil then
    if steps == nil then raisef("%s: without inputs (xs = nil) give the number of steps, opts.steps", fn) end
    return function() return nil end, math.huge
  end
  if not mg.is_tensor(xs) or xs:dim() ~= 3 then
    raisef("%s: xs must be a (B, T, F) tensor or nil, got %s", fn, describe(xs))
  end
  if xs:size(1) ~= B then raisef("%s: xs has batch size %d but h0 has %d", fn, xs:size(1), B) end
  return function(t) return xs:select(2, first and first(t) or t) end, xs:size(2)
end

local function check_count(fn, what, v, default, min)
  if v == nil then return default end
  if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) or v < min then
    raisef("%s: %s must be an integer >= %d, got %s", fn, what, min, describe(v))
  end
  return math.tointeger(v)
end

-- Sort each row of a (R, k) table of numbers descending, in place.
local function sort_rows(rows)
  for _, r in ipairs(rows) do table.sort(r, function(a, b) return a > b end) end
  return rows
end

---------------------------------------------------------------- Lyapunov exponents

local LYAP_OPTS = { k = true, warmup = true, reortho_every = true, steps = true, Q0 = true }

-- The tangents as (B, N, k) <-> (k, B, N).
local function to_lead(Q) return Q:permute(3, 1, 2):contiguous() end
local function from_lead(D) return D:permute(2, 3, 1) end

-- lyapunov(step, h0, xs [, opts]): see docs/linalg.md. 'fn' names the caller in messages,
-- 'order' (t -> index into xs) reverses time for go_backwards layers; 'fast' (from cell_run,
-- for a built-in cell it applies to) runs the whole method in C:
-- fast(z, Q0, warmup, steps, every) -> sum (B, k) of log|R_ii|, history (steps, k).
function spectra.lyapunov(step, h0, xs, opts, fn, order, fast)
  fn = fn or "lyapunov"
  if type(step) ~= "function" and not (type(step) == "table" and (debug.getmetatable(step) or {}).__call) then
    raisef("%s: step must be a function, got %s", fn, describe(step))
  end
  opts = check_opts(fn, opts, LYAP_OPTS)
  local z, split, join = flat_state(fn, h0)
  local B, N = z:size(1), z:size(2)
  local k = check_count(fn, "k", opts.k, N, 1)
  if k > N then raisef("%s: k = %d is more than the state size %d", fn, k, N) end
  local warmup = check_count(fn, "warmup", opts.warmup, 0, 0)
  local every = check_count(fn, "reortho_every", opts.reortho_every, 1, 1)
  local x_at, T = inputs(fn, xs, B, opts.steps, order)
  local steps = check_count(fn, "steps", opts.steps, T - warmup, 1)
  if warmup + steps > T then
    raisef("%s: warmup (%d) + steps (%d) is more than the %d timesteps of xs", fn, warmup, steps, T)
  end
  local Q = opts.Q0
  if Q == nil then
    Q = mg.linalg.qr(mg.randn({ B, N, k }, { dtype = z.dtype }))
  elseif not mg.is_tensor(Q) or Q:dim() ~= 3 or Q:size(1) ~= B or Q:size(2) ~= N or Q:size(3) ~= k then
    raisef("%s: Q0 must be a (%d,%d,%d) tensor with orthonormal columns, got %s", fn, B, N, k, describe(Q))
  end
  local fsum, fhistory = nil, nil
  if fast then fsum, fhistory = fast(z, Q, warmup, steps, every) end
  if fsum then
    local exponents = mg.tensor(sort_rows((fsum / steps):totable()), { dtype = z.dtype })
    return { exponents = exponents, mean = exponents:mean(1), history = fhistory }
  end
  local tan = to_lead(Q:to(z.dtype))
  local eye = mg.eye(k, { dtype = z.dtype })
  local sum = mg.zeros({ B, k }, { dtype = z.dtype })
  local history, counted, since = {}, 0, 0
  for t = 1, warmup + steps do
    local tape = mg.GradientTape { watch_accessed_variables = false }
    tape:watch(z)
    local zn = tape:record(function() return join(step(x_at(t), split(z)), "the new") end)
    local d = tape:forward(z, tan, zn, { lead = 1 })       -- (k, B, N): J_t applied to k tangents
    z = zn
    local count = t > warmup
    if count then counted, since = counted + 1, since + 1 end
    if t % every == 0 or t == warmup + steps or t == warmup then
      local Qn, R = mg.linalg.qr(from_lead(d))
      tan = to_lead(Qn)
      if count then sum = sum + ((R * eye):sum(-1)):abs():log() end
      since = 0
    else
      tan = d
    end
    if count then
      local done = counted - since                      -- steps covered by the last QR
      local row = done > 0 and (sum / done):mean(1):totable() or nil
      if row == nil then row = {} for i = 1, k do row[i] = 0 end end
      history[counted] = row
    end
  end
  local ex = (sum / steps):totable()
  sort_rows(ex)
  local exponents = mg.tensor(ex, { dtype = z.dtype })
  return { exponents = exponents, mean = exponents:mean(1),
           history = mg.tensor(sort_rows(history), { dtype = z.dtype }) }
end

---------------------------------------------------------------- Jacobian spectra

local JS_OPTS = { steps = true, per_step = true, ks = true }

local function cond_of(S)
  local n = S:size(-1)
  return S:select(-1, 1) / S:select(-1, n)
end

-- jacobian_spectra(step, h0, xs [, opts]): see docs/linalg.md ('fn', 'order' as lyapunov's).
function spectra.jacobian_spectra(step, h0, xs, opts, fn, order)
  fn = fn or "jacobian_spectra"
  opts = check_opts(fn, opts, JS_OPTS)
  local z, split, join = flat_state(fn, h0)
  local B = z:size(1)
  local x_at, T = inputs(fn, xs, B, opts.steps, order)
  local steps = check_count(fn, "steps", opts.steps, T, 1)
  if steps > T then raisef("%s: steps (%d) is more than the %d timesteps of xs", fn, steps, T) end
  local tape = mg.GradientTape { persistent = true, watch_accessed_variables = false }
  tape:watch(z)
  local zs = { [0] = z }
  tape:record(function()
    for t = 1, steps do zs[t] = join(step(x_at(t), split(zs[t - 1])), "the new") end
  end)
  local ks = opts.ks
  if ks == nil then
    ks = {}
    for t = 0, steps - 1 do ks[t + 1] = t end
  elseif type(ks) ~= "table" or #ks == 0 then
    raisef("%s: ks must be a non-empty array of steps in 0..%d, got %s", fn, steps - 1, describe(ks))
  end
  local src = {}
  for j, t in ipairs(ks) do
    if math.type(t) ~= "integer" and not (type(t) == "number" and t == math.floor(t)) or t < 0 or t >= steps then
      raisef("%s: ks[%d] must be a step in 0..%d, got %s", fn, j, steps - 1, describe(t))
    end
    src[j] = zs[math.tointeger(t)]
  end
  local J = tape:batch_jacobian(zs[steps], src)            -- one reverse sweep: dh_T/dh_k for every k
  local S = mg.linalg.svdvals(mg.stack(J))                -- (T, B, N)
  local out = { singular_values = S, cond = cond_of(S), states = zs }
  if opts.per_step ~= false then
    local Js = {}
    for j, t in ipairs(ks) do Js[j] = tape:batch_jacobian(zs[t + 1], zs[t]) end
    local Ss = mg.linalg.svdvals(mg.stack(Js))
    out.step_singular_values, out.step_cond = Ss, cond_of(Ss)
  end
  return out
end

---------------------------------------------------------------- pictures
-- mg.plot_spectrum and mg.plot_spectrum_bands: the first names of mg.plot.spectrum and
-- mg.plot.spectrum_bands (bindings/moongrad/plot.lua), kept as aliases.

function spectra.plot_spectrum(series, opts) return mg.plot.spectrum(series, opts) end
function spectra.plot_spectrum_bands(S, opts) return mg.plot.spectrum_bands(S, opts) end

---------------------------------------------------------------- cells and RNN layers

-- The map of a cell: states -> new states (its output is dropped).
local function cell_step(cell)
  return function(x, states)
    local _, new = cell(x, states)
    return new
  end
end

-- The C path of lyapunov for 'cell' when it applies (nil otherwise): a built-in GRUCell or
-- LSTMCell itself (not a subclass, no method replaced), sigmoid and tanh, with a bias (the
-- GRU's reset_after), x, the states, Q0 and the weights all of one dtype, float32 or float64.
local FAST = { GRUCell = "lyapunov_gru", LSTMCell = "lyapunov_lstm" }
local function cell_fast(cell, x, backwards)
  local mt = debug.getmetatable(cell)
  local name = mt and mt.__name
  if not (FAST[name] and rawget(mt, "call") and rawget(cell, "call") == nil
          and rawget(cell, "step") == nil and rawget(cell, "gates") == nil) then return nil end
  if not (cell.bias and cell.activation_name == "tanh" and cell.recurrent_activation_name == "sigmoid"
          and (name ~= "GRUCell" or cell.reset_after)) then return nil end
  local dt = x.dtype
  if dt ~= "float32" and dt ~= "float64" then return nil end
  for _, t in ipairs { cell.kernel, cell.recurrent_kernel, cell.bias } do
    if t.dtype ~= dt then return nil end
  end
  local W, U, b, u = cell.kernel, cell.recurrent_kernel, cell.bias, cell.units
  return function(z, Q, warmup, steps, every)
    if z.dtype ~= dt or Q.dtype ~= dt then return nil end
    if name == "GRUCell" then
      return mg._linalg.lyapunov_gru(x, z, W, U, b, Q, warmup, steps, every, backwards)
    end
    return mg._linalg.lyapunov_lstm(x, z:narrow(2, 1, u), z:narrow(2, u + 1, u), W, U, b, Q,
                                    warmup, steps, every, backwards)
  end
end

-- For rnn:lyapunov / cell:lyapunov ('what' = "lyapunov") and the jacobian_spectra methods:
-- the cell's map over x (B, T, F) from opts.initial (default zero states); 'backwards'
-- reverses time as go_backwards does.
function spectra.cell_run(what, fn, cell, x, opts, backwards)
  if opts ~= nil and type(opts) ~= "table" then raisef("%s: options must be a table, got %s", fn, describe(opts)) end
  if not mg.is_tensor(x) or x:dim() ~= 3 then raisef("%s: x must be a (B, T, F) tensor, got %s", fn, describe(x)) end
  local o = {}
  for key, v in pairs(opts or {}) do if key ~= "initial" then o[key] = v end end
  local T = x:size(2)
  local order = backwards and function(t) return T - t + 1 end or nil
  local h0 = (opts or {}).initial or cell:initial_state(x:size(1))
  if mg.is_tensor(h0) then h0 = { h0 } end
  local fast = what == "lyapunov" and cell_fast(cell, x, backwards) or nil
  return spectra[what](cell_step(cell), h0, x, o, fn, order, fast)
end

ck.publish(spectra)       -- errors at the user's line, tracebacks from the public function

return spectra
