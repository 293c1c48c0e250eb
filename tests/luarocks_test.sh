#!/bin/sh
# tests/luarocks_test.sh SOURCE_DIR - README's LuaRocks install: 'luarocks make' of
# rockspecs/moongrad-scm-1.rockspec from a copy of the checkout (LuaRocks builds in
# ./build.luarocks, which must not land in the real tree) into a fresh local tree (--tree),
# then a stock lua5.4 given that tree's paths ('luarocks path') requires moongrad and
# moongrad.nn and computes a gradient.
set -eu
src=$(cd "$1" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$src" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$tmp/src")
else
  tar -C "$src" --exclude='./build*' --exclude=./.git --exclude=./.venv --exclude=./out -cf - . | tar -C "$tmp/src" -xf -
fi
cd "$tmp/src"
luarocks --lua-version=5.4 make rockspecs/moongrad-scm-1.rockspec --tree "$tmp/tree" >"$tmp/luarocks.log" 2>&1 ||
  { tail -30 "$tmp/luarocks.log"; echo "luarocks_test: luarocks make failed"; exit 1; }
[ -f "$tmp/tree/lib/lua/5.4/moongrad.so" ] || { echo "luarocks_test: no moongrad.so in the tree"; exit 1; }
cd "$tmp"
eval "$(luarocks --lua-version=5.4 path --tree "$tmp/tree")"
unset LUA_INIT
out=$(TREE="$tmp/tree" lua5.4 -e '
  local nn = require "moongrad.nn"
  local mg = require "moongrad"
  assert(package.searchpath("moongrad", package.cpath):find(os.getenv("TREE"), 1, true) == 1)
  local x = mg.tensor({1, 5, 6}, {dtype = "float64"})
  local tape = mg.GradientTape()
  tape:watch(x)
  local y = nn.mse(x, mg.zeros(3, {dtype = "float64"}))
  local g = tape:gradient(y, x):totable()
  io.write(string.format("%g %g %g", g[1], g[2], g[3]))' 2>&1) || true
[ "$out" = "0.666667 3.33333 4" ] || { echo "luarocks_test: lua5.4 printed '$out'"; exit 1; }
echo "luarocks_test: ok"
