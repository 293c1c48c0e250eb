/*
** lmoongrad.c - luaopen_moongrad: the per-state context, module-level settings, and the
** Lua-side modules (compiled in, registered in package.preload as moongrad.*, and opened by
** luaopen_moongrad_<name> for a stock lua5.4's 'require "moongrad.<name>"').
*/
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lualib.h>

#include "lmoongrad.h"
#include "mg_lua_modules.h"   /* generated: the embedded Lua modules of bindings/moongrad */

#define MG_STATE_KEY "moongrad.state"

void lmg_setfuncs(lua_State *L, lstate *S, const luaL_Reg *l) {
  for (; l->name != NULL; l++) {
    lua_pushlightuserdata(L, S);
    lua_pushcclosure(L, l->func, 1);
    lua_setfield(L, -2, l->name);
  }
}

/* The state's __gc: releases the tensors made inside finalizers that never got one of their
** own (made while lua_close ran finalizers), then closes the context. Functions that run after
** it raise "the moongrad context is closed" (lmg_state). */
static int state_gc(lua_State *L) {
  lstate *S = lua_touserdata(L, 1);
  while (S->orphans.next != &S->orphans) {
    lslot *s = S->orphans.next;
    lmg_unlink_slot(s);
    mg_tensor_release(s->t);
    s->t = NULL;
  }
  if (S->C) mg_ctx_close(S->C);
  S->C = NULL;
  return 0;
}

void lmg_unlink_slot(lslot *s) {
  if (s->next == NULL) return;
  s->prev->next = s->next;
  s->next->prev = s->prev;
  s->prev = s->next = NULL;
}

lstate *lmg_state(lua_State *L) {
  lstate *S = lua_touserdata(L, lua_upvalueindex(1));
  if (S->C == NULL) luaL_error(L, "moongrad: the moongrad context is closed (the Lua state is closing)");
  return S;
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
  S->orphans.t = NULL;
  S->orphans.owner = S;
  S->orphans.prev = S->orphans.next = &S->orphans;
  S->orphans.placed = 0;
  S->orphans.batch = NULL;
  S->gc_threshold = (size_t)16 << 20;
  S->gc_stepped = 0;
  S->tensor_mt_ref = S->nogc_mt_ref = S->batch_ref = S->batch_mt_ref = LUA_NOREF;
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

/* The state record if 'L' has one (never creates it). */
lstate *lmg_findstate(lua_State *L) {
  lstate *S = lua_getfield(L, LUA_REGISTRYINDEX, MG_STATE_KEY) == LUA_TUSERDATA ? lua_touserdata(L, -1) : NULL;
  lua_pop(L, 1);
  return S;
}

/* ================================================================ settings */

/* The state's own threads (its context): its kernels and its GEMMs, which it shares out
** itself (OpenBLAS stays on one thread, linalg.c). */
static int lib_set_num_threads(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= MG_MAXTHREADS, 1, "thread count must be in 1..1024");
  mg_ctx_set_num_threads(LSTATE(L)->C, (int)n);
  return 0;
}

static int lib_get_num_threads(lua_State *L) {
  lua_pushinteger(L, mg_ctx_num_threads(LSTATE(L)->C));
  return 1;
}

static int lib_set_default_dtype(lua_State *L) {
  mg_set_default_dtype(LSTATE(L)->C, lmg_checkdtype(L, 1));
  return 0;
}

static int lib_get_default_dtype(lua_State *L) {
  lua_pushstring(L, mg_dtype_name(mg_default_dtype(LSTATE(L)->C)));
  return 1;
}

static int lib_empty_cache(lua_State *L) {
  lua_gc(L, LUA_GCCOLLECT);
  mg_empty_cache(LSTATE(L)->C);
  return 0;
}

static int lib_reset_peak_memory(lua_State *L) {
  mg_reset_peak_bytes(LSTATE(L)->C);
  return 0;
}

static int lib_memory(lua_State *L) {
  mg_ctx *C = LSTATE(L)->C;
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)mg_live_bytes(C));
  lua_setfield(L, -2, "live");
  lua_pushinteger(L, (lua_Integer)mg_peak_bytes(C));
  lua_setfield(L, -2, "peak");
  lua_pushinteger(L, (lua_Integer)mg_cached_bytes(C));
  lua_setfield(L, -2, "cached");
  lua_pushinteger(L, (lua_Integer)mg_memory_budget(C));
  lua_setfield(L, -2, "budget");
  lua_pushinteger(L, (lua_Integer)mg_jacobian_limit(C));
  lua_setfield(L, -2, "jacobian_limit");
  return 1;
}

/* set_jacobian_limit(bytes): most bytes of a Jacobian's result; 0: MemAvailable */
static int lib_set_jacobian_limit(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0, 1, "limit must be a number of bytes (0: MemAvailable)");
  mg_set_jacobian_limit(LSTATE(L)->C, (size_t)n);
  return 0;
}

/* _check_result(fname, shape, dtype [, bytes_per_element]): raises "fname: the result of
** shape ... needs N bytes, more than ..." when a result of 'shape' would not fit (hessian,
** gradcheck check theirs before any sweep). */
static int lib_check_result(lua_State *L) {
  mg_ctx *C = LSTATE(L)->C;
  const char *fn = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int64_t shape[2 * MG_MAXDIM];
  int nd = (int)luaL_len(L, 2);
  luaL_argcheck(L, nd <= 2 * MG_MAXDIM, 2, "too many dimensions");
  for (int i = 0; i < nd; i++) {
    lua_rawgeti(L, 2, i + 1);
    shape[i] = (int64_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  }
  double esize = luaL_optnumber(L, 4, (double)mg_dtype_size(lmg_checkdtype(L, 3)));
  const int64_t *ps = shape;
  if (mg_check_result_bytes(C, fn, 1, &nd, &ps, esize) != MG_OK) return lmg_fail(L, LSTATE(L), NULL);
  return 0;
}

static int lib_set_memory_budget(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n > 0, 1, "budget must be a positive number of bytes");
  mg_set_memory_budget(LSTATE(L)->C, (size_t)n);
  return 0;
}

/* blas(): kernels in use, the best this CPU supports, OpenBLAS's own choice when moongrad
** replaced it, and OPENBLAS_CORETYPE if set; the Lyapunov kernels that run (width, machines) */
static int lib_blas(lua_State *L) {
  lua_createtable(L, 0, 6);
  lua_pushstring(L, mg_blas_corename());
  lua_setfield(L, -2, "core");
  lua_pushstring(L, mg_cpu_best_corename());
  lua_setfield(L, -2, "best");
  const char *detected = mg_blas_detected_corename();
  if (detected) {
    lua_pushstring(L, detected);
    lua_setfield(L, -2, "detected");
  }
  const char *env = getenv("OPENBLAS_CORETYPE");
  if (env) {
    lua_pushstring(L, env);
    lua_setfield(L, -2, "coretype_env");
  }
  lua_pushinteger(L, mg_get_num_threads());
  lua_setfield(L, -2, "threads");
  lua_pushstring(L, mg_lyapunov_kernels());
  lua_setfield(L, -2, "lyapunov");
  return 1;
}

/* clock(): seconds from a monotonic wall clock, for timing (os.clock is CPU time of every
** thread, BLAS's spinning workers included) */
static int lib_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

/* _tmpfile(path, op): for a program that writes by file name (gnuplot), a new empty file
** beside 'path' (fileio.c); returns its name. Raises "<op>: cannot open 'path' for writing
** (reason)". Internal to moongrad.plot: not public API. */
static int lib_tmpfile(lua_State *L) {
  mg_ctx *C = LSTATE(L)->C;
  const char *path = luaL_checkstring(L, 1), *op = luaL_checkstring(L, 2);
  char *tmp = NULL;
  if (mg_tmpfile_name(C, op, path, &tmp) != MG_OK) return lmg_fail(L, LSTATE(L), NULL);
  lua_pushstring(L, tmp);                            /* may raise: free 'tmp' first */
  free(tmp);
  return 1;
}

/* _commit_file(tmp, path, op): fsync the finished 'tmp' and rename it over 'path'; on
** failure 'tmp' is removed and "<op>: cannot write 'path' (reason)" raised. Internal. */
static int lib_commit_file(lua_State *L) {
  mg_ctx *C = LSTATE(L)->C;
  const char *tmp = luaL_checkstring(L, 1), *path = luaL_checkstring(L, 2);
  const char *op = luaL_checkstring(L, 3);
  char *owned = strdup(tmp);
  if (owned == NULL) return luaL_error(L, "%s: out of memory", op);
  if (mg_tmpfile_commit(C, op, owned, path) != MG_OK) return lmg_fail(L, LSTATE(L), NULL);
  return 0;
}

/* _data_ptr(t [, write]): the address (a light userdata) and byte size of the elements of the
** contiguous tensor 't', for moongrad.mpi's C half (moongrad_mpi.so knows no tensors). 'write'
** bumps t's version first (a tape sees the in-place write). The caller keeps 't' alive while it
** uses the address. Internal: not public API. */
static int lib_data_ptr(lua_State *L) {
  mg_tensor *t = lmg_totensor(L, 1);
  if (t == NULL) return luaL_typeerror(L, 1, "tensor");
  if (!mg_tensor_is_contiguous(t)) return luaL_argerror(L, 1, "tensor is not contiguous");
  if (lua_toboolean(L, 2)) mg_tensor_bump_version(t);
  lua_pushlightuserdata(L, mg_tensor_data(t));
  lua_pushinteger(L, (lua_Integer)(mg_tensor_numel(t) * (int64_t)mg_dtype_size(mg_tensor_dtype(t))));
  return 2;
}

/* _module_dir(): the directory of the file this code was loaded from (moongrad.so, or
** libmoongrad.so for the moongrad executable), or nil: where moongrad.mpi looks for
** moongrad_mpi.so after package.cpath. Internal. */
static int lib_module_dir(lua_State *L) {
  Dl_info info;
  if (dladdr((void *)luaopen_moongrad, &info) == 0 || info.dli_fname == NULL) return 0;
  const char *slash = strrchr(info.dli_fname, '/');
  if (slash == NULL) lua_pushliteral(L, ".");
  else lua_pushlstring(L, info.dli_fname, (size_t)(slash - info.dli_fname));
  return 1;
}

static int lib_no_grad_enter(lua_State *L) { mg_no_grad_enter(LSTATE(L)->C); return 0; }
static int lib_no_grad_exit(lua_State *L) { mg_no_grad_exit(LSTATE(L)->C); return 0; }

static const luaL_Reg settings[] = {
  { "set_num_threads", lib_set_num_threads }, { "get_num_threads", lib_get_num_threads },
  { "set_default_dtype", lib_set_default_dtype }, { "get_default_dtype", lib_get_default_dtype },
  { "empty_cache", lib_empty_cache }, { "memory", lib_memory },
  { "reset_peak_memory", lib_reset_peak_memory },
  { "set_memory_budget", lib_set_memory_budget }, { "blas", lib_blas }, { "clock", lib_clock },
  { "set_jacobian_limit", lib_set_jacobian_limit }, { "_check_result", lib_check_result },
  { "_no_grad_enter", lib_no_grad_enter }, { "_no_grad_exit", lib_no_grad_exit },
  { "_tmpfile", lib_tmpfile }, { "_commit_file", lib_commit_file },
  { "_data_ptr", lib_data_ptr }, { "_module_dir", lib_module_dir },
  { NULL, NULL } };

/* ================================================================ Lua-side modules */

static int load_embedded(lua_State *L) {
  const embedded_module *m = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbufferx(L, m->source, m->size, m->chunkname, "t") != LUA_OK) return lua_error(L);
  lua_pushvalue(L, 1);                               /* module name, as require passes it */
  lua_call(L, 1, 1);
  return 1;
}

static void preload_modules(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const embedded_module *m = embedded_modules; m->name != NULL; m++) {
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
  lmg_setfuncs(L, S, settings);
  lmg_open_tensor(L, S);
  lmg_open_tape(L, S);
  lmg_open_cells(L, S);
  lmg_open_npy(L, S);
  lmg_open_io(L, S);
  lmg_open_linalg(L, S);
  lmg_open_summary(L, S);
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
