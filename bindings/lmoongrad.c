/*
** lmoongrad.c - luaopen_moongrad: the per-state context, module-level settings, and the
** Lua-side modules (compiled in, registered in package.preload as moongrad.*, and opened by
** luaopen_moongrad_<name> for a stock lua5.4's 'require "moongrad.<name>"').
*/
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lualib.h>

#include "lmoongrad.h"
#include "mg_lua_modules.h"   /* generated: the embedded Lua modules of bindings/moongrad */

#define MG_STATE_KEY "moongrad.state"

void mg_lua_setfuncs(lua_State *L, lstate *S, const luaL_Reg *l) {
  for (; l->name != NULL; l++) {
    lua_pushlightuserdata(L, S);
    lua_pushcclosure(L, l->func, 1);
    lua_setfield(L, -2, l->name);
  }
}

static int state_gc(lua_State *L) {
  lstate *S = lua_touserdata(L, 1);
  if (S->C) mg_ctx_close(S->C);
  S->C = NULL;
  return 0;
}

/* The state record of 'L', created on first use (stored in the registry, closed last). */
static lstate *getstate(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, MG_STATE_KEY) == LUA_TUSERDATA) {
    lstate *S = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return S;
  }
  lua_pop(L, 1);
  lstate *S = lua_newuserdatauv(L, sizeof *S, 0);
  S->C = NULL;
  S->gc_threshold = (size_t)64 << 20;
  S->gc_stepped = 0;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, state_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  S->C = mg_ctx_new();
  if (S->C == NULL) luaL_error(L, "moongrad: out of memory creating the context");
  lua_setfield(L, LUA_REGISTRYINDEX, MG_STATE_KEY);
  return S;
}

mg_ctx *mg_lua_context(lua_State *L) { return getstate(L)->C; }

/* ================================================================ settings */

static int l_set_num_threads(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 1024, 1, "thread count must be in 1..1024");
  mg_set_num_threads((int)n);
  return 0;
}

static int l_get_num_threads(lua_State *L) {
  lua_pushinteger(L, mg_get_num_threads());
  return 1;
}

static int l_set_default_dtype(lua_State *L) {
  mg_set_default_dtype(LSTATE(L)->C, mg_lua_checkdtype(L, 1));
  return 0;
}

static int l_get_default_dtype(lua_State *L) {
  lua_pushstring(L, mg_dtype_name(mg_default_dtype(LSTATE(L)->C)));
  return 1;
}

static int l_empty_cache(lua_State *L) {
  lua_gc(L, LUA_GCCOLLECT);
  mg_empty_cache(LSTATE(L)->C);
  return 0;
}

static int l_memory(lua_State *L) {
  mg_ctx *C = LSTATE(L)->C;
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)mg_live_bytes(C));
  lua_setfield(L, -2, "live");
  lua_pushinteger(L, (lua_Integer)mg_cached_bytes(C));
  lua_setfield(L, -2, "cached");
  lua_pushinteger(L, (lua_Integer)mg_memory_budget(C));
  lua_setfield(L, -2, "budget");
  return 1;
}

static int l_set_memory_budget(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n > 0, 1, "budget must be a positive number of bytes");
  mg_set_memory_budget(LSTATE(L)->C, (size_t)n);
  return 0;
}

/* blas(): kernels in use, the best this CPU supports, and OPENBLAS_CORETYPE if set */
static int l_blas(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, mg_blas_corename());
  lua_setfield(L, -2, "core");
  lua_pushstring(L, mg_cpu_best_corename());
  lua_setfield(L, -2, "best");
  const char *env = getenv("OPENBLAS_CORETYPE");
  if (env) {
    lua_pushstring(L, env);
    lua_setfield(L, -2, "coretype_env");
  }
  lua_pushinteger(L, mg_get_num_threads());
  lua_setfield(L, -2, "threads");
  return 1;
}

/* clock(): seconds from a monotonic wall clock, for timing (os.clock is CPU time of every
** thread, BLAS's spinning workers included) */
static int l_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

static int l_no_grad_enter(lua_State *L) { mg_no_grad_enter(LSTATE(L)->C); return 0; }
static int l_no_grad_exit(lua_State *L) { mg_no_grad_exit(LSTATE(L)->C); return 0; }

static const luaL_Reg settings[] = {
  { "set_num_threads", l_set_num_threads }, { "get_num_threads", l_get_num_threads },
  { "set_default_dtype", l_set_default_dtype }, { "get_default_dtype", l_get_default_dtype },
  { "empty_cache", l_empty_cache }, { "memory", l_memory },
  { "set_memory_budget", l_set_memory_budget }, { "blas", l_blas }, { "clock", l_clock },
  { "_no_grad_enter", l_no_grad_enter }, { "_no_grad_exit", l_no_grad_exit },
  { NULL, NULL } };

/* ================================================================ Lua-side modules */

static int load_embedded(lua_State *L) {
  const mg_lua_module *m = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbufferx(L, m->source, m->size, m->chunkname, "t") != LUA_OK) return lua_error(L);
  lua_pushvalue(L, 1);                               /* module name, as require passes it */
  lua_call(L, 1, 1);
  return 1;
}

static void preload_modules(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const mg_lua_module *m = mg_lua_modules; m->name != NULL; m++) {
    if (lua_getfield(L, -1, m->name) == LUA_TNIL) {  /* a host's own loader wins */
      lua_pushlightuserdata(L, (void *)m);
      lua_pushcclosure(L, load_embedded, 1);
      lua_setfield(L, -3, m->name);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

int luaopen_moongrad(lua_State *L) {
  lstate *S = getstate(L);
  lua_newtable(L);
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "_VERSION");
  mg_lua_setfuncs(L, S, settings);
  mg_lua_open_tensor(L, S);
  mg_lua_open_tape(L, S);
  preload_modules(L);
  /* package.loaded.moongrad is this table while the Lua parts load (they require it) */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "moongrad");
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moongrad.core");
  lua_call(L, 1, 0);                                 /* extends the module table */
  return 1;
}

/* 'require "moongrad.nn"' (likewise plot, optim, core) before, or without, 'require "moongrad"':
** a stock lua5.4 finds no moongrad/nn.lua or moongrad/nn.so, then its all-in-one C loader
** finds moongrad.so on package.cpath and calls luaopen_moongrad_nn from it. Opening the module
** registers the Lua parts in package.preload; the inner require then loads this one from there
** (package.loaded[name] is not set while the outer require runs). */
static int open_submodule(lua_State *L, const char *name) {
  luaL_requiref(L, "moongrad", luaopen_moongrad, 0);
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushstring(L, name);
  lua_call(L, 1, 1);
  return 1;
}

#define MG_SUBMODULE_OPENER(n) \
  MG_API int luaopen_moongrad_##n(lua_State *L); \
  MG_API int luaopen_moongrad_##n(lua_State *L) { return open_submodule(L, "moongrad." #n); }
MG_LUA_MODULE_NAMES(MG_SUBMODULE_OPENER)
