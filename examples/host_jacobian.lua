-- host_jacobian.lua - the script examples/host.c runs in its own lua_State.
-- The host sets the globals B, N (sizes), h (B, N) and W (N, N): tensors that wrap the
-- host's float arrays, not copies. The script returns the batch Jacobian of one dense ReLU
-- layer, d y[b, i] / d h[b, j] for y = relu(h) @ W + bias, of shape (B, N, N).
local mg = require "moongrad"

assert(mg.is_tensor(h) and mg.is_tensor(W), "host_jacobian: the host must set h and W")
assert(h:size(1) == B and h:size(2) == N, "host_jacobian: h is not (B, N)")

local bias = mg.full({ N }, 0.5)
local tape = mg.GradientTape()
tape:watch(h)
local y = mg.matmul(mg.relu(h), W) + bias
return tape:batch_jacobian(y, h)
