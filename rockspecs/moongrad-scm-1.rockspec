-- LuaRocks package of the moongrad Lua module, built from a checkout:
--   luarocks --lua-version=5.4 make rockspecs/moongrad-scm-1.rockspec [--tree DIR]
-- (from the repository root). It installs moongrad.so, which holds moongrad.nn,
-- moongrad.optim and moongrad.plot too; the moongrad executable, libmoongrad and the C
-- headers come from 'cmake --install' (README, Install and embed).
rockspec_format = "3.0"
package = "moongrad"
version = "scm-1"
source = {
  url = "git+file://.",     -- no public repository yet: 'luarocks make' builds the checkout it runs in
}
description = {
  summary = "Tensors and autograd for Lua 5.4, for studying gradient flow through RNNs",
  detailed = [[
    A C11 tensor-and-autograd runtime driven by Lua: any derivative of any tensor with respect
    to any other (an RNN's hidden state h_t w.r.t. h_(t-1), the loss w.r.t. every timestep's
    state), vectorized Jacobians, Keras-compatible recurrent layers, plots through gnuplot.
  ]],
}
-- CMake finds Lua 5.4, OpenBLAS and readline through pkg-config (Debian: liblua5.4-dev,
-- libopenblas-dev, libreadline-dev; tools/deps runtime installs them).
dependencies = {
  "lua >= 5.4, < 5.5",
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    MG_LUA_ROCK = "ON",
    MG_INSTALL_LUA_CMOD = "$(LIBDIR)",
  },
}
