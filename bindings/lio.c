/*
** lio.c - files of named tensors as module functions: mg.save_tensors, mg.load_tensors
** (safetensors), mg.save_npz, mg.load_npz (NumPy .npz). A table of named tensors is a Lua
** table from strings to tensors.
*/
#include <stdlib.h>
#include <string.h>

#include "lmoongrad.h"

#define LSTATE_ARG lstate *S = LSTATE(L)
#define SET_MT "moongrad.TensorSet"

/* A loaded set while it becomes a Lua table: a userdata whose __gc frees what is left in it,
** so an error on the way leaks nothing. */
static int set_gc(lua_State *L) {
  mg_tensor_dict_free(luaL_checkudata(L, 1, SET_MT));
  return 0;
}

static mg_tensor_dict *newset(lua_State *L) {
  mg_tensor_dict *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  if (luaL_newmetatable(L, SET_MT)) {
    lua_pushcfunction(L, set_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return s;
}

/* Order of the tensors in a file: float64 before float32 (every tensor stays aligned to its
** element size), then by name, so the same table always gives the same bytes. */
typedef struct { const char *name; mg_tensor *t; } named;

static int by_dtype_name(const void *a, const void *b) {
  const named *x = a, *y = b;
  size_t sx = mg_dtype_size(mg_tensor_dtype(x->t)), sy = mg_dtype_size(mg_tensor_dtype(y->t));
  if (sx != sy) return sx > sy ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* The table at 'idx' as a borrowed set (strings and tensors owned by the table, arrays by
** userdata pushed on the stack). Raises "<fn>: ..." on a key or value of the wrong type. */
static void checkset(lua_State *L, int idx, const char *fn, mg_tensor_dict *s) {
  luaL_checktype(L, idx, LUA_TTABLE);
  int n = 0;
  for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "%s: the table's keys must be strings (names), got a %s key", fn, luaL_typename(L, -2));
    if (lmg_totensor(L, -1) == NULL)
      luaL_error(L, "%s: '%s' is %s, expected a tensor", fn, lua_tostring(L, -2), luaL_typename(L, -1));
    n++;
  }
  named *es = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *es, 0);
  int k = 0;
  for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {
    es[k].name = lua_tostring(L, -2);
    es[k++].t = lmg_totensor(L, -1);
  }
  qsort(es, (size_t)n, sizeof *es, by_dtype_name);
  char **names = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *names, 0);
  mg_tensor **ts = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *ts, 0);
  for (int i = 0; i < n; i++) {
    names[i] = (char *)es[i].name;
    ts[i] = es[i].t;
  }
  memset(s, 0, sizeof *s);
  s->n = n;
  s->names = names;
  s->tensors = ts;
}

/* The string -> string table at 'm' into the metadata of 's' (arrays in userdata on the stack). */
static void checkstrings(lua_State *L, int m, const char *fn, mg_tensor_dict *s) {
  int n = 0;
  for (lua_pushnil(L); lua_next(L, m); lua_pop(L, 1)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "%s: metadata must map strings to strings (got a %s key with a %s value)", fn,
                 luaL_typename(L, -2), luaL_typename(L, -1));
    n++;
  }
  char **keys = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *keys, 0);
  char **vals = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *vals, 0);
  int k = 0;
  for (lua_pushnil(L); lua_next(L, m); lua_pop(L, 1)) {
    keys[k] = (char *)lua_tostring(L, -2);
    vals[k++] = (char *)lua_tostring(L, -1);
  }
  s->nmeta = n;
  s->meta_keys = keys;
  s->meta_values = vals;
}

/* opts.metadata of the options table at 'opt' (0: none) into 's'. */
static void checkmeta(lua_State *L, int opt, const char *fn, mg_tensor_dict *s) {
  static const char *const known[] = { "metadata", NULL };
  if (opt == 0) return;
  lmg_checkoptions(L, opt, fn, known);
  if (lua_getfield(L, opt, "metadata") == LUA_TNIL) { lua_pop(L, 1); return; }
  if (!lua_istable(L, -1)) luaL_error(L, "%s: option 'metadata' must be a table of strings", fn);
  checkstrings(L, lua_gettop(L), fn, s);
}

/* save_tensors(tbl, path [, {metadata={string=string}}]) */
static int io_save_tensors(lua_State *L) {
  LSTATE_ARG;
  const char *path = luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);                                  /* the arrays go above the arguments */
  mg_tensor_dict s;
  checkset(L, 1, "save_tensors", &s);
  checkmeta(L, lua_istable(L, 3) ? 3 : 0, "save_tensors", &s);
  if (mg_safetensors_save(S->C, &s, path) != MG_OK) return lmg_fail(L, S, NULL);
  return 0;
}

/* The set at the stack top as a new table name -> tensor (the set's tensors move into it). */
static void pushset(lua_State *L, lstate *S, mg_tensor_dict *s) {
  lua_createtable(L, 0, s->n);
  for (int i = 0; i < s->n; i++) {
    mg_tensor **slot = lmg_newslot(L);
    lmg_settensor(L, S, slot, s->tensors[i]);
    s->tensors[i] = NULL;
    lua_setfield(L, -2, s->names[i]);
  }
}

/* Pushes the metadata of 's' as a new table. */
static void pushmeta(lua_State *L, const mg_tensor_dict *s) {
  lua_createtable(L, 0, s->nmeta);
  for (int i = 0; i < s->nmeta; i++) {
    lua_pushstring(L, s->meta_values[i]);
    lua_setfield(L, -2, s->meta_keys[i]);
  }
}

/* The results of a loader that filled the set 's' (newset's) with status 'st': the table of
** its tensors, then with 'meta' the table of its strings; or the loader's error. */
static int loaded(lua_State *L, lstate *S, mg_tensor_dict *s, mg_status st, bool meta) {
  if (st != MG_OK) return lmg_fail(L, S, NULL);
  pushset(L, S, s);
  if (meta) pushmeta(L, s);
  mg_tensor_dict_free(s);
  return meta ? 2 : 1;
}

/* f(path) for a loader of one file format: its tensors [and metadata]. */
typedef mg_status (*loader_fn)(mg_ctx *C, const char *path, mg_tensor_dict *out);
static int load_with(lua_State *L, loader_fn load, bool meta) {
  LSTATE_ARG;
  const char *path = luaL_checkstring(L, 1);
  mg_tensor_dict *s = newset(L);
  return loaded(L, S, s, load(S->C, path, s), meta);
}

/* load_tensors(path) -> tbl, metadata */
static int io_load_tensors(lua_State *L) { return load_with(L, mg_safetensors_load, true); }

/* save_npz(tbl, path [, {compressed=false}]) */
static int io_save_npz(lua_State *L) {
  LSTATE_ARG;
  const char *path = luaL_checkstring(L, 2);
  lua_settop(L, 3);                                  /* the arrays go above the arguments */
  bool compressed = false;
  if (!lua_isnoneornil(L, 3)) {
    static const char *const known[] = { "compressed", NULL };
    luaL_checktype(L, 3, LUA_TTABLE);
    lmg_checkoptions(L, 3, "save_npz", known);
    lua_getfield(L, 3, "compressed");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
      return luaL_error(L, "save_npz: option 'compressed' must be a boolean, got %s", luaL_typename(L, -1));
    compressed = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  mg_tensor_dict s;
  checkset(L, 1, "save_npz", &s);
  if (mg_npz_save(S->C, &s, compressed, path) != MG_OK) return lmg_fail(L, S, NULL);
  return 0;
}

/* load_npz(path) -> tbl */
static int io_load_npz(lua_State *L) { return load_with(L, mg_npz_load, false); }

/* _h5_load(path, op) -> datasets, attributes (h5.c's dictionary). Internal to
** moongrad.interop (nn.load_keras): not public API. */
static int io_h5_load(lua_State *L) {
  LSTATE_ARG;
  const char *path = luaL_checkstring(L, 1), *op = luaL_checkstring(L, 2);
  mg_tensor_dict *s = newset(L);
  return loaded(L, S, s, mg_h5_load(S->C, op, path, s), true);
}

/* _h5_save(datasets, path, attributes, op). Internal (nn.save_keras). */
static int io_h5_save(lua_State *L) {
  LSTATE_ARG;
  const char *path = luaL_checkstring(L, 2), *op = luaL_checkstring(L, 4);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 4);
  mg_tensor_dict s;
  checkset(L, 1, op, &s);
  checkstrings(L, 3, op, &s);
  if (mg_h5_save(S->C, op, &s, path) != MG_OK) return lmg_fail(L, S, NULL);
  return 0;
}

/* _h5_available() -> whether this build reads and writes HDF5. Internal. */
static int io_h5_available(lua_State *L) {
  lua_pushboolean(L, mg_h5_available());
  return 1;
}

static const luaL_Reg io_functions[] = {
  { "save_tensors", io_save_tensors }, { "load_tensors", io_load_tensors },
  { "save_npz", io_save_npz }, { "load_npz", io_load_npz },
  { "_h5_load", io_h5_load }, { "_h5_save", io_h5_save }, { "_h5_available", io_h5_available },
  { NULL, NULL } };

/* Adds the named-tensor file functions to the module at the stack top. */
void lmg_open_io(lua_State *L, lstate *S) { lmg_setfuncs(L, S, io_functions); }
