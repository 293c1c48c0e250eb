/*
** ltensor.c - tensors as Lua userdata ('moongrad.Tensor'): creation, inspection, views,
** math, reductions, joins. Dimensions are 1-based here and 0-based in the runtime.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lmoongrad.h"

#define LSTATE_ARG lstate *S = LSTATE(L)

/* ================================================================ userdata */

static mg_tensor **checkslot(lua_State *L, int idx) {
  mg_tensor **p = luaL_checkudata(L, idx, MG_TENSOR_MT);
  if (*p == NULL) luaL_argerror(L, idx, "tensor was released");
  return p;
}

mg_tensor *mg_lua_checktensor(lua_State *L, int idx) { return *checkslot(L, idx); }

mg_tensor *mg_lua_totensor(lua_State *L, int idx) {
  mg_tensor **p = luaL_testudata(L, idx, MG_TENSOR_MT);
  return p ? *p : NULL;
}

mg_tensor **mg_lua_newslot(lua_State *L) {
  lslot *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->t = NULL;
  p->prev = p->next = NULL;
  luaL_setmetatable(L, MG_TENSOR_MT);
  if (lua_gc(L, LUA_GCISRUNNING) < 0) {   /* inside a finalizer: perhaps lua_close's */
    lstate *S = mg_lua_findstate(L);
    if (S != NULL) {
      p->next = S->orphans.next;
      p->prev = &S->orphans;
      S->orphans.next->prev = p;
      S->orphans.next = p;
    }
  }
  return &p->t;
}

/* Lua's collector cannot see storage bytes: step it by as many KiB as storage grew (so
** garbage tensors go back to the pool while it is still warm), and collect fully when live
** storage doubles (the safety net for a collector that was stopped or fell behind). */
static void gc_pressure(lua_State *L, lstate *S) {
  size_t live = mg_live_bytes(S->C);
  if (live > S->gc_stepped + ((size_t)1 << 20)) {
    lua_gc(L, LUA_GCSTEP, (int)((live - S->gc_stepped) >> 10));
    S->gc_stepped = mg_live_bytes(S->C);
  } else if (live < S->gc_stepped) {
    S->gc_stepped = live;
  }
  if (live > S->gc_threshold) {
    lua_gc(L, LUA_GCCOLLECT);
    live = mg_live_bytes(S->C);
    size_t floor = (size_t)64 << 20;
    S->gc_threshold = live * 2 > floor ? live * 2 : floor;
    S->gc_stepped = live;
  }
}

void mg_lua_settensor(lua_State *L, lstate *S, mg_tensor **slot, mg_tensor *t) {
  *slot = t;
  gc_pressure(L, S);
}

void mg_lua_pushtensor(lua_State *L, mg_tensor *t) {
  mg_tensor **slot = mg_lua_newslot(L);
  *slot = mg_tensor_retain(t);
}

/* A message that names no function ("out of memory allocating ...", from an op that does not
** name its own) gets the name Lua called the function by: "add" for a + b, "matmul". */
int mg_lua_fail(lua_State *L, mg_ctx *C) {
  const char *msg = mg_errmsg(C), *sp = strchr(msg, ' ');
  bool named = sp != NULL && sp > msg && sp[-1] == ':';      /* "matmul: ..." */
  lua_Debug ar;
  if (!named && lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar) && ar.name)
    return luaL_error(L, "%s: %s", ar.name, msg);
  return luaL_error(L, "%s", msg);
}

int mg_lua_result(lua_State *L, lstate *S, mg_status st, mg_tensor **t) {
  if (st != MG_OK) return mg_lua_fail(L, S->C);
  mg_tensor **slot = mg_lua_newslot(L);
  mg_lua_settensor(L, S, slot, *t);
  return 1;
}

/* __gc and __close: one idempotent release */
static int tensor_release(lua_State *L) {
  lslot *p = luaL_checkudata(L, 1, MG_TENSOR_MT);
  mg_lua_unlink_slot(p);
  mg_tensor_release(p->t);
  p->t = NULL;
  return 0;
}

/* ================================================================ arguments */

static int dtype_of(const char *s);

mg_dtype mg_lua_checkdtype(lua_State *L, int idx) {
  int d = dtype_of(luaL_checkstring(L, idx));
  if (d < 0) luaL_argerror(L, idx, lua_pushfstring(L, "dtype must be \"float32\" or \"float64\", got \"%s\"", lua_tostring(L, idx)));
  return (mg_dtype)d;
}

int mg_lua_options(lua_State *L, int idx) {
  int top = lua_gettop(L);
  if (top < idx || !lua_istable(L, top)) return 0;
  if (top == idx) {                                 /* a lone table: options only if keyed */
    lua_getfield(L, top, "dtype");
    bool keyed = !lua_isnil(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, top, 1);
    bool arr = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (arr || !keyed) return 0;
  }
  return top;
}

/* dtype from a name: "float32"/"float" or "float64"/"double"; -1 if unknown. */
static int dtype_of(const char *s) {
  if (s == NULL) return -1;
  if (strcmp(s, "float32") == 0 || strcmp(s, "float") == 0) return MG_F32;
  if (strcmp(s, "float64") == 0 || strcmp(s, "double") == 0) return MG_F64;
  return -1;
}

mg_dtype mg_lua_optdtype(lua_State *L, lstate *S, int opt) {
  mg_dtype dt = mg_default_dtype(S->C);
  if (opt == 0) return dt;
  lua_getfield(L, opt, "dtype");
  if (!lua_isnil(L, -1)) {
    int d = lua_type(L, -1) == LUA_TSTRING ? dtype_of(lua_tostring(L, -1)) : -1;
    if (d < 0) luaL_argerror(L, opt, lua_pushfstring(L, "dtype must be \"float32\" or \"float64\", got %s",
                                                     luaL_tolstring(L, -1, NULL)));
    dt = (mg_dtype)d;
  }
  lua_pop(L, 1);
  return dt;
}

static int64_t checksize(lua_State *L, int idx) {
  lua_Integer n;
  int isnum;
  n = lua_tointegerx(L, idx, &isnum);
  if (!isnum) {
    if (lua_type(L, idx) == LUA_TNUMBER) luaL_argerror(L, idx, "size must be an integer");
    luaL_typeerror(L, idx, "integer size");
  }
  if (n < 0) luaL_argerror(L, idx, lua_pushfstring(L, "negative size %I", (LUAI_UACINT)n));
  return (int64_t)n;
}

int mg_lua_checkshape(lua_State *L, int idx, int64_t *shape) {
  int top = lua_gettop(L), opt = mg_lua_options(L, idx), nd = 0;
  if (opt) top = opt - 1;
  if (top >= idx && lua_istable(L, idx)) {
    int n = (int)luaL_len(L, idx);
    if (n > MG_MAXDIM) luaL_argerror(L, idx, "too many dimensions");
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      if (!lua_isinteger(L, -1)) {
        lua_Number v = lua_tonumber(L, -1);
        lua_Integer iv;
        if (!lua_isnumber(L, -1) || !lua_numbertointeger(v, &iv) || v != (lua_Number)iv)
          luaL_argerror(L, idx, lua_pushfstring(L, "shape entry %d is not an integer", i));
      }
      lua_Integer v = lua_tointeger(L, -1);
      if (v < 0) luaL_argerror(L, idx, lua_pushfstring(L, "negative size %I in shape", (LUAI_UACINT)v));
      shape[nd++] = (int64_t)v;
      lua_pop(L, 1);
    }
    return nd;
  }
  for (int i = idx; i <= top; i++) {
    if (nd >= MG_MAXDIM) luaL_argerror(L, i, "too many dimensions");
    shape[nd++] = checksize(L, i);
  }
  return nd;
}

int mg_lua_checkdim(lua_State *L, int idx, int ndim) {
  lua_Integer d = luaL_checkinteger(L, idx);
  lua_Integer z = d < 0 ? d + ndim : d - 1;
  if (d == 0 || z < 0 || z >= ndim)
    luaL_argerror(L, idx, lua_pushfstring(L, "dimension %I out of range for a %d-d tensor",
                                          (LUAI_UACINT)d, ndim));
  return (int)z;
}

/* A 0-d tensor for a number, or a new reference to the tensor at 'idx'. */
mg_tensor *mg_lua_checkoperand(lua_State *L, lstate *S, int idx, mg_dtype dt) {
  mg_tensor *t = mg_lua_totensor(L, idx);
  if (t) return mg_tensor_retain(t);
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_typeerror(L, idx, "tensor or number");
  if (mg_tensor_full(S->C, dt, 0, NULL, lua_tonumber(L, idx), &t) != MG_OK) mg_lua_fail(L, S->C);
  return t;
}

/* Raise the context's message (out of memory, too many elements) for creation function 'fn'. */
static int create_fail(lua_State *L, lstate *S, const char *fn) {
  return luaL_error(L, "%s: %s", fn, mg_errmsg(S->C));
}

static bool optbool(lua_State *L, int idx, bool def) {
  return lua_isnoneornil(L, idx) ? def : lua_toboolean(L, idx);
}

/* ================================================================ creation */

/* Fill 't' (contiguous, dtype) from the nested table at 'idx'. */
static void fill_nested(lua_State *L, int idx, mg_tensor *t, int d, int64_t *pos, char *base) {
  const int64_t *shape = mg_tensor_shape(t);
  size_t es = mg_dtype_size(mg_tensor_dtype(t));
  for (int64_t i = 1; i <= shape[d]; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i);
    if (d + 1 == mg_tensor_ndim(t)) {
      int ok;
      lua_Number v = lua_tonumberx(L, -1, &ok);
      if (!ok) luaL_error(L, "tensor: expected a number at depth %d, got %s", d + 1, luaL_typename(L, -1));
      if (es == 8) ((double *)base)[*pos] = v;
      else ((float *)base)[*pos] = (float)v;
      (*pos)++;
    } else {
      if (!lua_istable(L, -1) || (int64_t)lua_rawlen(L, -1) != shape[d + 1])
        luaL_error(L, "tensor: nested tables are ragged at depth %d (expected %d entries)", d + 2, (int)shape[d + 1]);
      fill_nested(L, lua_gettop(L), t, d + 1, pos, base);
    }
    lua_pop(L, 1);
  }
}

static int l_tensor(lua_State *L) {
  LSTATE_ARG;
  int opt = lua_istable(L, 2) ? 2 : 0;
  if (!opt && !lua_isnoneornil(L, 2)) return luaL_typeerror(L, 2, "options table");
  mg_dtype dt = mg_lua_optdtype(L, S, opt);
  lua_settop(L, 2);
  mg_tensor **slot = mg_lua_newslot(L), *t;         /* at 3 */
  if (lua_type(L, 1) == LUA_TNUMBER) {
    if (mg_tensor_full(S->C, dt, 0, NULL, lua_tonumber(L, 1), &t) != MG_OK) return create_fail(L, S, "tensor");
    mg_lua_settensor(L, S, slot, t);
    return 1;
  }
  if ((t = mg_lua_totensor(L, 1)) != NULL) {
    mg_tensor *c;
    mg_status st = mg_tensor_cast(S->C, t, opt ? dt : mg_tensor_dtype(t), &c);
    if (st == MG_OK && c == t) { mg_tensor_release(c); st = mg_tensor_clone(S->C, t, &c); }
    if (st != MG_OK) return create_fail(L, S, "tensor");
    mg_lua_settensor(L, S, slot, c);
    return 1;
  }
  if (!lua_istable(L, 1)) return luaL_typeerror(L, 1, "number, nested table or tensor");
  int64_t shape[MG_MAXDIM];
  int nd = 0;
  lua_pushvalue(L, 1);
  while (lua_istable(L, -1)) {                      /* shape from the first entries */
    if (nd == MG_MAXDIM) return luaL_argerror(L, 1, "too deeply nested");
    shape[nd++] = (int64_t)lua_rawlen(L, -1);
    if (shape[nd - 1] == 0) break;
    lua_rawgeti(L, -1, 1);
  }
  lua_settop(L, 3);
  if (mg_tensor_empty(S->C, dt, nd, shape, &t) != MG_OK) return create_fail(L, S, "tensor");
  *slot = t;                                        /* owned by the slot from here on */
  int64_t pos = 0;
  if (nd > 0) fill_nested(L, 1, t, 0, &pos, mg_tensor_data(t));   /* when empty too: raggedness */
  mg_lua_settensor(L, S, slot, t);
  return 1;
}

static int l_full_shape(lua_State *L, const char *fn, double v) {
  LSTATE_ARG;
  int64_t shape[MG_MAXDIM];
  int nd = mg_lua_checkshape(L, 1, shape);
  mg_dtype dt = mg_lua_optdtype(L, S, mg_lua_options(L, 1));
  mg_tensor **slot = mg_lua_newslot(L), *t;
  if (mg_tensor_full(S->C, dt, nd, shape, v, &t) != MG_OK) return create_fail(L, S, fn);
  mg_lua_settensor(L, S, slot, t);
  return 1;
}

static int l_zeros(lua_State *L) { return l_full_shape(L, "zeros", 0.0); }
static int l_ones(lua_State *L) { return l_full_shape(L, "ones", 1.0); }

static int l_full(lua_State *L) {
  int top = lua_gettop(L), opt = mg_lua_options(L, 2);
  int vi = opt ? opt - 1 : top;                     /* the value is the last non-option */
  double v = luaL_checknumber(L, vi);
  lua_remove(L, vi);
  return l_full_shape(L, "full", v);
}

static int l_eye(lua_State *L) {
  LSTATE_ARG;
  int64_t n = checksize(L, 1), m = lua_isinteger(L, 2) ? checksize(L, 2) : n;
  int64_t shape[2] = { n, m };
  mg_dtype dt = mg_lua_optdtype(L, S, mg_lua_options(L, 2));
  mg_tensor **slot = mg_lua_newslot(L), *t;
  if (mg_tensor_zeros(S->C, dt, 2, shape, &t) != MG_OK) return create_fail(L, S, "eye");
  for (int64_t i = 0; i < n && i < m; i++) {
    int64_t idx[2] = { i, i };
    mg_tensor_set(t, idx, 1.0);
  }
  mg_lua_settensor(L, S, slot, t);
  return 1;
}

static int make_range(lua_State *L, lstate *S, const char *fn, double a, double step,
                      int64_t n, int opt) {
  mg_dtype dt = mg_lua_optdtype(L, S, opt);
  mg_tensor **slot = mg_lua_newslot(L), *t;
  if (mg_tensor_empty(S->C, dt, 1, &n, &t) != MG_OK) return create_fail(L, S, fn);
  for (int64_t i = 0; i < n; i++) mg_tensor_set(t, &i, a + (double)i * step);
  mg_lua_settensor(L, S, slot, t);
  return 1;
}

/* arange(a, b [, step]): a, a+step, ... < b (like NumPy); arange(n) = 0..n-1 */
static int l_arange(lua_State *L) {
  LSTATE_ARG;
  int opt = mg_lua_options(L, 2);
  int nargs = opt ? opt - 1 : lua_gettop(L);
  double a = luaL_checknumber(L, 1), b, step = 1;
  if (nargs >= 2) b = luaL_checknumber(L, 2);
  else { b = a; a = 0; }
  if (nargs >= 3) step = luaL_checknumber(L, 3);
  if (step == 0 || !isfinite(step)) return luaL_argerror(L, 3, "step must be finite and non-zero");
  if (!isfinite(a) || !isfinite(b))
    return luaL_error(L, "arange: bounds must be finite, got %f and %f", a, b);
  double cnt = ceil((b - a) / step);
  if (!(cnt < 1e12)) return luaL_error(L, "arange: too many elements (%f)", cnt);
  return make_range(L, S, "arange", a, step, cnt > 0 ? (int64_t)cnt : 0, opt);
}

static int l_linspace(lua_State *L) {
  LSTATE_ARG;
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  int64_t n = checksize(L, 3);
  return make_range(L, S, "linspace", a, n > 1 ? (b - a) / (double)(n - 1) : 0, n,
                    mg_lua_options(L, 4));
}

static int l_manual_seed(lua_State *L) {
  LSTATE_ARG;
  mg_manual_seed(S->C, (uint64_t)luaL_checkinteger(L, 1));
  return 0;
}

/* rand/randn/uniform: shape args, then (uniform) lo, hi, then options */
static int random_fill(lua_State *L, int kind) {
  LSTATE_ARG;
  int opt = mg_lua_options(L, 1);
  double lo = 0, hi = 1;
  if (kind == 2) {                                  /* uniform(shape, lo, hi) */
    int last = opt ? opt - 1 : lua_gettop(L);
    if (last < 3) return luaL_error(L, "uniform: expected shape, lo, hi");
    lo = luaL_checknumber(L, last - 1);
    hi = luaL_checknumber(L, last);
    if (!(lo <= hi)) return luaL_error(L, "uniform: lo %f is greater than hi %f", lo, hi);
    lua_remove(L, last);
    lua_remove(L, last - 1);
    if (opt) opt -= 2;
  }
  int64_t shape[MG_MAXDIM];
  int nd = mg_lua_checkshape(L, 1, shape);
  mg_dtype dt = mg_lua_optdtype(L, S, opt);
  mg_tensor **slot = mg_lua_newslot(L), *t;
  if (mg_tensor_empty(S->C, dt, nd, shape, &t) != MG_OK)
    return create_fail(L, S, kind == 0 ? "rand" : kind == 1 ? "randn" : "uniform");
  if (kind == 1) mg_fill_normal(S->C, t, 0, 1);
  else mg_fill_uniform(S->C, t, lo, hi);
  mg_lua_settensor(L, S, slot, t);
  return 1;
}

/* glorot_uniform(rows, cols [, opts]) / orthogonal(rows, cols [, {gain=}] [, opts]): Keras's
** initializers as new (rows, cols) tensors; 'dtype' may come in either table. */
static int init_matrix(lua_State *L, bool ortho) {
  LSTATE_ARG;
  int64_t shape[2] = { checksize(L, 1), checksize(L, 2) };
  double gain = 1;
  int opt = 0;
  for (int i = 3; i <= 4 && i <= lua_gettop(L); i++) {
    if (lua_isnil(L, i)) continue;
    if (ortho && i == 3 && lua_type(L, i) == LUA_TNUMBER) { gain = lua_tonumber(L, i); continue; }
    luaL_checktype(L, i, LUA_TTABLE);
    if (ortho && lua_getfield(L, i, "gain") != LUA_TNIL) {
      int ok;
      gain = lua_tonumberx(L, -1, &ok);
      if (!ok) luaL_argerror(L, i, lua_pushfstring(L, "gain must be a number, got %s", luaL_typename(L, -1)));
    }
    lua_pop(L, ortho ? 1 : 0);
    if (lua_getfield(L, i, "dtype") != LUA_TNIL) opt = i;
    lua_pop(L, 1);
  }
  mg_dtype dt = mg_lua_optdtype(L, S, opt);
  mg_tensor **slot = mg_lua_newslot(L), *t;
  if (mg_tensor_empty(S->C, dt, 2, shape, &t) != MG_OK)
    return create_fail(L, S, ortho ? "orthogonal" : "glorot_uniform");
  *slot = t;                                        /* owned by the slot from here on */
  if ((ortho ? mg_init_orthogonal(S->C, t, gain) : mg_init_glorot_uniform(S->C, t)) != MG_OK)
    return mg_lua_fail(L, S->C);
  mg_lua_settensor(L, S, slot, t);
  return 1;
}

static int l_glorot_uniform(lua_State *L) { return init_matrix(L, false); }
static int l_orthogonal(lua_State *L) { return init_matrix(L, true); }

static int l_rand(lua_State *L) { return random_fill(L, 0); }
static int l_randn(lua_State *L) { return random_fill(L, 1); }
static int l_uniform(lua_State *L) { return random_fill(L, 2); }

/* ================================================================ inspection */

static int t_shape(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  int nd = mg_tensor_ndim(t);
  lua_createtable(L, nd, 0);
  for (int i = 0; i < nd; i++) {
    lua_pushinteger(L, (lua_Integer)mg_tensor_shape(t)[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int t_size(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) return t_shape(L);
  int d = mg_lua_checkdim(L, 2, mg_tensor_ndim(t));
  lua_pushinteger(L, (lua_Integer)mg_tensor_shape(t)[d]);
  return 1;
}

static int t_dim(lua_State *L) {
  lua_pushinteger(L, mg_tensor_ndim(mg_lua_checktensor(L, 1)));
  return 1;
}

static int t_numel(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mg_tensor_numel(mg_lua_checktensor(L, 1)));
  return 1;
}

static int t_len(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  lua_pushinteger(L, mg_tensor_ndim(t) ? (lua_Integer)mg_tensor_shape(t)[0] : 0);
  return 1;
}

static int t_item(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  if (mg_tensor_numel(t) != 1)
    return luaL_error(L, "item: tensor has %I elements, expected exactly one", (LUAI_UACINT)mg_tensor_numel(t));
  int64_t idx[MG_MAXDIM] = { 0 };
  lua_pushnumber(L, mg_tensor_get(t, idx));
  return 1;
}

static void push_nested(lua_State *L, mg_tensor *t, int d, int64_t *idx) {
  int64_t n = mg_tensor_shape(t)[d];
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    idx[d] = i;
    if (d + 1 == mg_tensor_ndim(t)) lua_pushnumber(L, mg_tensor_get(t, idx));
    else push_nested(L, t, d + 1, idx);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static int t_totable(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  int64_t idx[MG_MAXDIM] = { 0 };
  if (mg_tensor_ndim(t) == 0) lua_pushnumber(L, mg_tensor_get(t, idx));
  else push_nested(L, t, 0, idx);
  return 1;
}

/* t:get(i, j, ...) / t:set(v, i, j, ...) with 1-based indices: element access for scripts. */
static void checkindex(lua_State *L, const char *fn, mg_tensor *t, int first, int64_t *idx) {
  int nd = mg_tensor_ndim(t);
  if (lua_gettop(L) - first + 1 != nd)
    luaL_error(L, "%s: expected %d indices for a %d-d tensor, got %d", fn, nd, nd,
               lua_gettop(L) - first + 1);
  for (int i = 0; i < nd; i++) {
    lua_Integer k = luaL_checkinteger(L, first + i), n = (lua_Integer)mg_tensor_shape(t)[i];
    lua_Integer z = k < 0 ? k + n : k - 1;
    if (k == 0 || z < 0 || z >= n)
      luaL_argerror(L, first + i, lua_pushfstring(L, "index %I out of range for dimension %d of size %I",
                                                  (LUAI_UACINT)k, i + 1, (LUAI_UACINT)n));
    idx[i] = z;
  }
}

static int t_get(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  int64_t idx[MG_MAXDIM];
  checkindex(L, "get", t, 2, idx);
  lua_pushnumber(L, mg_tensor_get(t, idx));
  return 1;
}

static int t_set(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  double v = luaL_checknumber(L, 2);
  int64_t idx[MG_MAXDIM];
  checkindex(L, "set", t, 3, idx);
  mg_tensor_set(t, idx, v);
  lua_settop(L, 1);
  return 1;
}

static int t_is_variable(lua_State *L) {
  lua_pushboolean(L, mg_tensor_is_variable(mg_lua_checktensor(L, 1)));
  return 1;
}

static int t_is_contiguous(lua_State *L) {
  lua_pushboolean(L, mg_tensor_is_contiguous(mg_lua_checktensor(L, 1)));
  return 1;
}

static int t_stride(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  int nd = mg_tensor_ndim(t);
  lua_createtable(L, nd, 0);
  for (int i = 0; i < nd; i++) {
    lua_pushinteger(L, (lua_Integer)mg_tensor_strides(t)[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* ================================================================ views and copies */

static int t_reshape(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int64_t shape[MG_MAXDIM];
  int top = lua_gettop(L), nd = 0;
  if (lua_istable(L, 2)) {
    int n = (int)luaL_len(L, 2);
    if (n > MG_MAXDIM) return luaL_argerror(L, 2, "too many dimensions");
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, 2, i);
      int ok;
      shape[nd++] = (int64_t)lua_tointegerx(L, -1, &ok);
      if (!ok) return luaL_argerror(L, 2, "shape entries must be integers");
      lua_pop(L, 1);
    }
  } else {
    for (int i = 2; i <= top; i++) {
      if (nd == MG_MAXDIM) return luaL_argerror(L, i, "too many dimensions");
      shape[nd++] = (int64_t)luaL_checkinteger(L, i);
    }
  }
  return mg_lua_result(L, S, mg_tensor_reshape(S->C, t, nd, shape, &y), &y);
}

static int t_view_flat(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int64_t n = -1;
  return mg_lua_result(L, S, mg_tensor_reshape(S->C, t, 1, &n, &y), &y);
}

static int t_transpose(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int nd = mg_tensor_ndim(t);
  int d1, d2;
  if (lua_isnoneornil(L, 2)) {
    if (nd < 2) return luaL_error(L, "transpose: tensor has %d dimensions, expected at least 2", nd);
    d1 = nd - 2; d2 = nd - 1;
  } else {
    d1 = mg_lua_checkdim(L, 2, nd);
    d2 = mg_lua_checkdim(L, 3, nd);
  }
  return mg_lua_result(L, S, mg_tensor_transpose(S->C, t, d1, d2, &y), &y);
}

static int t_permute(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int nd = mg_tensor_ndim(t), perm[MG_MAXDIM], n = 0;
  if (lua_istable(L, 2)) {
    n = (int)luaL_len(L, 2);
    if (n != nd) return luaL_error(L, "permute: %d dims given for a %d-d tensor", n, nd);
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, 2, i);
      perm[i - 1] = mg_lua_checkdim(L, -1, nd);
      lua_pop(L, 1);
    }
  } else {
    n = lua_gettop(L) - 1;
    if (n != nd) return luaL_error(L, "permute: %d dims given for a %d-d tensor", n, nd);
    for (int i = 0; i < n; i++) perm[i] = mg_lua_checkdim(L, i + 2, nd);
  }
  return mg_lua_result(L, S, mg_tensor_permute(S->C, t, perm, &y), &y);
}

static int t_squeeze(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? -1 : mg_lua_checkdim(L, 2, mg_tensor_ndim(t));
  return mg_lua_result(L, S, mg_tensor_squeeze(S->C, t, d, &y), &y);
}

static int t_unsqueeze(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = mg_lua_checkdim(L, 2, mg_tensor_ndim(t) + 1);
  return mg_lua_result(L, S, mg_tensor_unsqueeze(S->C, t, d, &y), &y);
}

static int t_narrow(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = mg_lua_checkdim(L, 2, mg_tensor_ndim(t));
  lua_Integer start = luaL_checkinteger(L, 3), len = luaL_checkinteger(L, 4);
  int64_t n = mg_tensor_shape(t)[d];
  if (start < 0) start += n + 1;                     /* n + 1 + start: no overflow, start < 0 */
  if (start < 1 || len < 0 || len > n - (start - 1)) {   /* start - 1 + len could overflow */
    if (len < 0 || start > LUA_MAXINTEGER - len)
      return luaL_error(L, "narrow: %I elements from %I out of bounds for dimension %d of size %I",
                        (LUAI_UACINT)len, (LUAI_UACINT)start, d + 1, (LUAI_UACINT)n);
    return luaL_error(L, "narrow: range %I..%I out of bounds for dimension %d of size %I",
                      (LUAI_UACINT)start, (LUAI_UACINT)(start + len - 1), d + 1, (LUAI_UACINT)n);
  }
  return mg_lua_result(L, S, mg_tensor_narrow(S->C, t, d, start - 1, len, &y), &y);
}

static int select_at(lua_State *L, lstate *S, mg_tensor *t, int d, lua_Integer i, int argi) {
  mg_tensor *y = NULL;
  int64_t n = mg_tensor_shape(t)[d];
  lua_Integer z = i < 0 ? i + n : i - 1;
  if (i == 0 || z < 0 || z >= n)
    return luaL_argerror(L, argi, lua_pushfstring(L, "index %I out of range for dimension %d of size %I",
                                                  (LUAI_UACINT)i, d + 1, (LUAI_UACINT)n));
  return mg_lua_result(L, S, mg_tensor_select(S->C, t, d, z, &y), &y);
}

static int t_select(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1);
  if (mg_tensor_ndim(t) == 0) return luaL_error(L, "select: cannot index a 0-d tensor");
  int d = mg_lua_checkdim(L, 2, mg_tensor_ndim(t));
  return select_at(L, S, t, d, luaL_checkinteger(L, 3), 3);
}

static int t_expand(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int64_t shape[MG_MAXDIM];
  int nd = mg_lua_checkshape(L, 2, shape);
  return mg_lua_result(L, S, mg_tensor_expand(S->C, t, nd, shape, &y), &y);
}

static int t_contiguous(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  return mg_lua_result(L, S, mg_tensor_contiguous(S->C, t, &y), &y);
}

static int t_clone(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  return mg_lua_result(L, S, mg_tensor_clone(S->C, t, &y), &y);
}

static int t_to(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  return mg_lua_result(L, S, mg_tensor_cast(S->C, t, mg_lua_checkdtype(L, 2), &y), &y);
}

/* In place, not recorded. */
static int t_fill(lua_State *L) {
  mg_tensor_fill_(mg_lua_checktensor(L, 1), luaL_checknumber(L, 2));
  lua_settop(L, 1);
  return 1;
}

static int t_copy(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *dst = mg_lua_checktensor(L, 1);
  mg_tensor *src = mg_lua_checkoperand(L, S, 2, mg_tensor_dtype(dst));
  mg_status st = mg_tensor_copy_(S->C, dst, src);
  mg_tensor_release(src);
  if (st != MG_OK) return mg_lua_fail(L, S->C);
  lua_settop(L, 1);
  return 1;
}

/* The 0-based row of key 2 in t[i] or t[i] = v (1-based, negative from the end). Errors
** name 'index' themselves: these metamethods also run from C (ipairs, table.insert), where
** Lua knows no function name to put in an argument error. */
static int64_t row_index(lua_State *L, mg_tensor *t) {
  if (mg_tensor_ndim(t) == 0) luaL_error(L, "index: cannot index a 0-d tensor");
  int isint;
  lua_Integer i = lua_tointegerx(L, 2, &isint), n = (lua_Integer)mg_tensor_shape(t)[0];
  if (!isint)
    luaL_error(L, "index: index must be an integer, got %s", lua_type(L, 2) == LUA_TNUMBER
               ? lua_pushfstring(L, "%f", lua_tonumber(L, 2)) : luaL_typename(L, 2));
  lua_Integer z = i < 0 ? i + n : i - 1;
  if (i == 0 || z < 0 || z >= n)
    luaL_error(L, "index: index %I out of range for dimension 1 of size %I", (LUAI_UACINT)i, (LUAI_UACINT)n);
  return (int64_t)z;
}

/* t[i] = select(1, i); other keys: methods, and the 'dtype' field */
static int t_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TNUMBER) {
    LSTATE_ARG;
    mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
    int64_t z = row_index(L, t);
    return mg_lua_result(L, S, mg_tensor_select(S->C, t, 0, z, &y), &y);
  }
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "dtype") == 0) {
      lua_pushstring(L, mg_dtype_name(mg_tensor_dtype(mg_lua_checktensor(L, 1))));
      return 1;
    }
    if (strcmp(k, "name") == 0) {
      mg_tensor *t = mg_lua_checktensor(L, 1);
      if (mg_tensor_is_variable(t)) lua_pushstring(L, mg_tensor_name(t));
      else lua_pushnil(L);
      return 1;
    }
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(2));              /* the method table */
  return 1;
}

/* t[i] = v: fill (number) or copy (tensor) into the selected slice */
static int t_newindex(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int64_t z = row_index(L, t);
  mg_no_grad_enter(S->C);
  mg_status st = mg_tensor_select(S->C, t, 0, z, &y);
  mg_no_grad_exit(S->C);
  if (st != MG_OK) return mg_lua_fail(L, S->C);
  mg_tensor **slot = mg_lua_newslot(L);             /* owns 'y' if what follows raises */
  *slot = y;
  mg_tensor *src = mg_lua_checkoperand(L, S, 3, mg_tensor_dtype(t));
  st = mg_tensor_copy_(S->C, y, src);
  mg_tensor_release(src);
  if (st != MG_OK) return mg_lua_fail(L, S->C);
  return 0;
}

/* ================================================================ math */

static int unary(lua_State *L, mg_unary op) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  return mg_lua_result(L, S, mg_tensor_unary(S->C, op, t, &y), &y);
}

static int l_neg(lua_State *L) { return unary(L, MG_U_NEG); }
static int l_exp(lua_State *L) { return unary(L, MG_U_EXP); }
static int l_log(lua_State *L) { return unary(L, MG_U_LOG); }
static int l_tanh(lua_State *L) { return unary(L, MG_U_TANH); }
static int l_sigmoid(lua_State *L) { return unary(L, MG_U_SIGMOID); }
static int l_relu(lua_State *L) { return unary(L, MG_U_RELU); }
static int l_abs(lua_State *L) { return unary(L, MG_U_ABS); }
static int l_sqrt(lua_State *L) { return unary(L, MG_U_SQRT); }
static int l_sin(lua_State *L) { return unary(L, MG_U_SIN); }
static int l_cos(lua_State *L) { return unary(L, MG_U_COS); }
static int l_softplus(lua_State *L) { return unary(L, MG_U_SOFTPLUS); }
static int l_sign(lua_State *L) { return unary(L, MG_U_SIGN); }

static const char *const binary_names[MG_B_COUNT] = {
  [MG_B_ADD] = "add", [MG_B_SUB] = "sub", [MG_B_MUL] = "mul", [MG_B_DIV] = "div",
  [MG_B_POW] = "pow", [MG_B_MAXIMUM] = "maximum", [MG_B_MINIMUM] = "minimum", [MG_B_EQ] = "eq",
  [MG_B_NE] = "ne", [MG_B_LT] = "lt", [MG_B_LE] = "le", [MG_B_GT] = "gt", [MG_B_GE] = "ge" };

/* Raise the error for operands 1 and 2 of 'fn' that are not a tensor and a tensor or number
** ('a', 'b': the tensors among them, else NULL). */
static int operand_error(lua_State *L, const char *fn, mg_tensor *a, mg_tensor *b) {
  for (int i = 1; i <= 2; i++) {
    mg_tensor **p = luaL_testudata(L, i, MG_TENSOR_MT);
    if (p && *p == NULL) return luaL_error(L, "%s: operand %d is a released tensor", fn, i);
  }
  if (!a && !b)
    return luaL_error(L, "%s: expected a tensor operand, got %s and %s", fn, luaL_typename(L, 1),
                      luaL_typename(L, 2));
  int bad = a ? 2 : 1;
  return luaL_error(L, "%s: operand %d must be a tensor or number, got %s", fn, bad,
                    luaL_typename(L, bad));
}

/* Binary op with numbers allowed on either side (one coercion point for every metamethod).
** Errors name the op themselves: the string library calls these metamethods from C for
** "x" * t, where Lua knows no function name. */
static int binary(lua_State *L, mg_binary op) {
  LSTATE_ARG;
  mg_tensor *a = mg_lua_totensor(L, 1), *b = mg_lua_totensor(L, 2), *y = NULL;
  mg_status st;
  if (a && b) st = mg_tensor_binary(S->C, op, a, b, &y);
  else if (a && lua_type(L, 2) == LUA_TNUMBER)
    st = mg_tensor_binary_scalar(S->C, op, a, lua_tonumber(L, 2), false, &y);
  else if (b && lua_type(L, 1) == LUA_TNUMBER)
    st = mg_tensor_binary_scalar(S->C, op, b, lua_tonumber(L, 1), true, &y);
  else return operand_error(L, binary_names[op], a, b);
  return mg_lua_result(L, S, st, &y);
}

static int l_add(lua_State *L) { return binary(L, MG_B_ADD); }
static int l_sub(lua_State *L) { return binary(L, MG_B_SUB); }
static int l_mul(lua_State *L) { return binary(L, MG_B_MUL); }
static int l_div(lua_State *L) { return binary(L, MG_B_DIV); }
static int l_pow(lua_State *L) { return binary(L, MG_B_POW); }
static int l_maximum(lua_State *L) { return binary(L, MG_B_MAXIMUM); }
static int l_minimum(lua_State *L) { return binary(L, MG_B_MINIMUM); }
static int l_eq(lua_State *L) { return binary(L, MG_B_EQ); }
static int l_ne(lua_State *L) { return binary(L, MG_B_NE); }
static int l_lt(lua_State *L) { return binary(L, MG_B_LT); }
static int l_le(lua_State *L) { return binary(L, MG_B_LE); }
static int l_gt(lua_State *L) { return binary(L, MG_B_GT); }
static int l_ge(lua_State *L) { return binary(L, MG_B_GE); }
static int l_unm(lua_State *L) { return unary(L, MG_U_NEG); }

static int l_clamp(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  double lo = luaL_optnumber(L, 2, -HUGE_VAL), hi = luaL_optnumber(L, 3, HUGE_VAL);
  return mg_lua_result(L, S, mg_tensor_clamp(S->C, t, lo, hi, &y), &y);
}

static int l_where(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *c = mg_lua_checktensor(L, 1), *y = NULL, *ref = mg_lua_totensor(L, 2);
  if (ref == NULL) ref = mg_lua_totensor(L, 3);
  mg_dtype dt = ref ? mg_tensor_dtype(ref) : mg_tensor_dtype(c);
  mg_tensor *a = mg_lua_checkoperand(L, S, 2, dt);
  mg_tensor **slot = mg_lua_newslot(L);             /* keeps 'a' alive across errors */
  *slot = a;
  mg_tensor *b = mg_lua_checkoperand(L, S, 3, dt);
  mg_status st = mg_tensor_where(S->C, c, a, b, &y);
  mg_tensor_release(b);
  return mg_lua_result(L, S, st, &y);
}

static int l_matmul(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *a = mg_lua_checktensor(L, 1), *b = mg_lua_checktensor(L, 2), *y = NULL;
  return mg_lua_result(L, S, mg_tensor_matmul(S->C, a, b, &y), &y);
}

static int l_softmax_impl(lua_State *L, bool log_) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? mg_tensor_ndim(t) - 1 : mg_lua_checkdim(L, 2, mg_tensor_ndim(t));
  if (mg_tensor_ndim(t) == 0) return luaL_error(L, "%s: expected at least 1 dimension", log_ ? "log_softmax" : "softmax");
  return mg_lua_result(L, S, mg_tensor_softmax(S->C, t, d, log_, &y), &y);
}
static int l_softmax(lua_State *L) { return l_softmax_impl(L, false); }
static int l_log_softmax(lua_State *L) { return l_softmax_impl(L, true); }

/* ================================================================ reductions */

typedef mg_status (*reduce_fn)(mg_ctx *, mg_tensor *, uint32_t, bool, mg_tensor **);

/* t:op() over all elements, t:op(d [, keepdim]) over one dim, t:op({d1, d2}) over several */
static int reduction(lua_State *L, const char *name, reduce_fn fn) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int nd = mg_tensor_ndim(t);
  uint32_t mask = 0;
  if (lua_isnoneornil(L, 2)) mask = ~0u;
  else if (lua_istable(L, 2)) {
    int n = (int)luaL_len(L, 2);
    for (int i = 1; i <= n; i++) {
      int isint;
      lua_Integer d = (lua_rawgeti(L, 2, i), lua_tointegerx(L, -1, &isint));
      lua_Integer z = d < 0 ? d + nd : d - 1;
      if (!isint || d == 0 || z < 0 || z >= nd)
        return luaL_error(L, "%s: dimension %s out of range for a %d-d tensor", name,
                          luaL_tolstring(L, -1, NULL), nd);
      if ((mask >> z) & 1u) return luaL_error(L, "%s: dimension %I given twice", name, (LUAI_UACINT)d);
      mask |= 1u << z;
      lua_pop(L, 1);
    }
  } else mask = 1u << mg_lua_checkdim(L, 2, nd);
  return mg_lua_result(L, S, fn(S->C, t, mask, optbool(L, 3, false), &y), &y);
}

static int t_sum(lua_State *L) { return reduction(L, "sum", mg_tensor_sum); }
static int t_mean(lua_State *L) { return reduction(L, "mean", mg_tensor_mean); }
static int t_var(lua_State *L) { return reduction(L, "var", mg_tensor_var); }
static int t_std(lua_State *L) { return reduction(L, "std", mg_tensor_std); }
static int t_norm(lua_State *L) { return reduction(L, "norm", mg_tensor_norm); }

static int argextreme(lua_State *L, bool is_min) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? -1 : mg_lua_checkdim(L, 2, mg_tensor_ndim(t));
  mg_status st = mg_tensor_argmax(S->C, t, d, optbool(L, 3, false), is_min, &y);
  if (st == MG_OK) {                                 /* 1-based indices for Lua */
    double *p = mg_tensor_data(y);
    for (int64_t i = 0, n = mg_tensor_numel(y); i < n; i++) p[i] += 1;
  }
  return mg_lua_result(L, S, st, &y);
}

static int t_argmax(lua_State *L) { return argextreme(L, false); }
static int t_argmin(lua_State *L) { return argextreme(L, true); }

/* max()/min(): the value over everything; max(d [, keepdim]): values and 1-based indices */
static int extreme(lua_State *L, bool is_min) {
  reduce_fn fn = is_min ? mg_tensor_amin : mg_tensor_amax;
  const char *name = is_min ? "min" : "max";
  if (lua_isnoneornil(L, 2) || lua_istable(L, 2)) return reduction(L, name, fn);
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *v = NULL, *i = NULL;
  int d = mg_lua_checkdim(L, 2, mg_tensor_ndim(t));
  lua_settop(L, 3);
  mg_tensor **sv = mg_lua_newslot(L), **si = mg_lua_newslot(L);
  if (mg_tensor_max_dim(S->C, t, d, optbool(L, 3, false), is_min, &v, &i) != MG_OK)
    return mg_lua_fail(L, S->C);
  *sv = v;
  double *p = mg_tensor_data(i);                     /* 1-based indices for Lua (fresh) */
  for (int64_t k = 0, n = mg_tensor_numel(i); k < n; k++) p[k] += 1;
  mg_lua_settensor(L, S, si, i);
  return 2;
}

static int t_max(lua_State *L) { return extreme(L, false); }
static int t_min(lua_State *L) { return extreme(L, true); }

/* ================================================================ joins */

/* Tensors of the array at 'idx' into a new C array (free it), count in *n. */
static mg_tensor **checklist(lua_State *L, int idx, int *n) {
  luaL_checktype(L, idx, LUA_TTABLE);
  *n = (int)luaL_len(L, idx);
  if (*n < 1) luaL_argerror(L, idx, "expected a non-empty list of tensors");
  mg_tensor **xs = lua_newuserdatauv(L, (size_t)*n * sizeof *xs, 0);   /* freed by the GC */
  for (int i = 1; i <= *n; i++) {
    lua_rawgeti(L, idx, i);
    xs[i - 1] = mg_lua_totensor(L, -1);
    if (xs[i - 1] == NULL)
      luaL_argerror(L, idx, lua_pushfstring(L, "entry %d is a %s, expected a tensor", i, luaL_typename(L, -1)));
    lua_pop(L, 1);
  }
  return xs;
}

static int l_cat(lua_State *L) {
  LSTATE_ARG;
  int n;
  lua_settop(L, 2);                                  /* the list's C array goes above 'dim' */
  mg_tensor **xs = checklist(L, 1, &n), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? 0 : mg_lua_checkdim(L, 2, mg_tensor_ndim(xs[0]));
  return mg_lua_result(L, S, mg_tensor_cat(S->C, n, xs, d, &y), &y);
}

static int l_stack(lua_State *L) {
  LSTATE_ARG;
  int n;
  lua_settop(L, 2);                                  /* the list's C array goes above 'dim' */
  mg_tensor **xs = checklist(L, 1, &n), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? 0 : mg_lua_checkdim(L, 2, mg_tensor_ndim(xs[0]) + 1);
  return mg_lua_result(L, S, mg_tensor_stack(S->C, n, xs, d, &y), &y);
}

/* split(t, size, d): views of 'size' along d (the last may be shorter) */
static int l_split(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1);
  lua_Integer size = luaL_checkinteger(L, 2);
  if (size < 1) return luaL_argerror(L, 2, "split size must be positive");
  if (mg_tensor_ndim(t) == 0) return luaL_error(L, "split: cannot split a 0-d tensor");
  int d = lua_isnoneornil(L, 3) ? 0 : mg_lua_checkdim(L, 3, mg_tensor_ndim(t));
  int64_t n = mg_tensor_shape(t)[d];
  lua_newtable(L);
  int k = 1;
  for (int64_t at = 0; at < n; at += size, k++) {
    mg_tensor *y = NULL;
    int64_t len = n - at < size ? n - at : size;
    mg_lua_result(L, S, mg_tensor_narrow(S->C, t, d, at, len, &y), &y);
    lua_rawseti(L, -2, k);
  }
  return 1;
}

static int l_unstack(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1);
  if (mg_tensor_ndim(t) == 0) return luaL_error(L, "unstack: cannot unstack a 0-d tensor");
  int d = lua_isnoneornil(L, 2) ? 0 : mg_lua_checkdim(L, 2, mg_tensor_ndim(t));
  int64_t n = mg_tensor_shape(t)[d];
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    mg_tensor *y = NULL;
    mg_lua_result(L, S, mg_tensor_select(S->C, t, d, i, &y), &y);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* ================================================================ fused cells */

/* lstm_cell(x, h, c, kernel, recurrent_kernel, bias) -> h', c' */
static int l_lstm_cell(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *a[6];
  for (int i = 0; i < 6; i++) a[i] = mg_lua_checktensor(L, i + 1);
  lua_settop(L, 6);
  mg_tensor **sh = mg_lua_newslot(L), **sc = mg_lua_newslot(L), *h = NULL, *c = NULL;
  if (mg_lstm_cell(S->C, a[0], a[1], a[2], a[3], a[4], a[5], &h, &c) != MG_OK) return mg_lua_fail(L, S->C);
  *sh = h;
  mg_lua_settensor(L, S, sc, c);
  return 2;
}

/* gru_cell(x, h, kernel, recurrent_kernel, bias [, reset_after=true]) -> h' */
static int l_gru_cell(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *a[5], *h = NULL;
  for (int i = 0; i < 5; i++) a[i] = mg_lua_checktensor(L, i + 1);
  bool ra = lua_isnoneornil(L, 6) ? true : lua_toboolean(L, 6);
  return mg_lua_result(L, S, mg_gru_cell(S->C, a[0], a[1], a[2], a[3], a[4], ra, &h), &h);
}

/* ================================================================ files */

static int l_save(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1);
  const char *path = luaL_checkstring(L, 2);
  if (mg_npy_save(S->C, t, path) != MG_OK) return mg_lua_fail(L, S->C);
  return 0;
}

static int l_load(lua_State *L) {
  LSTATE_ARG;
  const char *path = luaL_checkstring(L, 1);
  mg_tensor **slot = mg_lua_newslot(L), *t;
  if (mg_npy_load(S->C, path, &t) != MG_OK) return mg_lua_fail(L, S->C);
  mg_lua_settensor(L, S, slot, t);
  return 1;
}

/* ================================================================ registration */

static const luaL_Reg tensor_methods[] = {
  { "shape", t_shape }, { "size", t_size }, { "dim", t_dim }, { "numel", t_numel },
  { "item", t_item }, { "totable", t_totable }, { "get", t_get }, { "set", t_set },
  { "stride", t_stride }, { "is_contiguous", t_is_contiguous },
  { "is_variable", t_is_variable },
  { "reshape", t_reshape }, { "view", t_reshape }, { "flatten", t_view_flat },
  { "transpose", t_transpose }, { "permute", t_permute }, { "squeeze", t_squeeze },
  { "unsqueeze", t_unsqueeze }, { "narrow", t_narrow }, { "select", t_select },
  { "expand", t_expand }, { "contiguous", t_contiguous }, { "clone", t_clone }, { "to", t_to },
  { "fill", t_fill }, { "copy", t_copy },
  { "neg", l_neg }, { "exp", l_exp }, { "log", l_log }, { "tanh", l_tanh },
  { "sigmoid", l_sigmoid }, { "relu", l_relu }, { "abs", l_abs }, { "sqrt", l_sqrt },
  { "sin", l_sin }, { "cos", l_cos }, { "softplus", l_softplus }, { "sign", l_sign },
  { "add", l_add }, { "sub", l_sub }, { "mul", l_mul }, { "div", l_div }, { "pow", l_pow },
  { "clamp", l_clamp }, { "softmax", l_softmax }, { "log_softmax", l_log_softmax },
  { "matmul", l_matmul }, { "maximum", l_maximum }, { "minimum", l_minimum },
  { "sum", t_sum }, { "mean", t_mean }, { "var", t_var }, { "std", t_std }, { "norm", t_norm },
  { "max", t_max }, { "min", t_min }, { "argmax", t_argmax }, { "argmin", t_argmin },
  { "split", l_split }, { "unstack", l_unstack },
  { NULL, NULL } };

static const luaL_Reg tensor_metamethods[] = {
  { "__add", l_add }, { "__sub", l_sub }, { "__mul", l_mul }, { "__div", l_div },
  { "__pow", l_pow }, { "__unm", l_unm }, { "__len", t_len },
  { "__newindex", t_newindex }, { "__gc", tensor_release }, { "__close", tensor_release },
  { NULL, NULL } };

static const luaL_Reg module_functions[] = {
  { "tensor", l_tensor }, { "zeros", l_zeros }, { "ones", l_ones }, { "full", l_full },
  { "eye", l_eye }, { "arange", l_arange }, { "linspace", l_linspace },
  { "manual_seed", l_manual_seed }, { "rand", l_rand }, { "randn", l_randn },
  { "uniform", l_uniform }, { "glorot_uniform", l_glorot_uniform }, { "orthogonal", l_orthogonal },
  { "exp", l_exp }, { "log", l_log }, { "tanh", l_tanh }, { "sigmoid", l_sigmoid },
  { "relu", l_relu }, { "abs", l_abs }, { "sqrt", l_sqrt }, { "sin", l_sin }, { "cos", l_cos },
  { "softplus", l_softplus }, { "sign", l_sign }, { "neg", l_neg },
  { "add", l_add }, { "sub", l_sub }, { "mul", l_mul }, { "div", l_div }, { "pow", l_pow },
  { "clamp", l_clamp }, { "softmax", l_softmax }, { "log_softmax", l_log_softmax },
  { "where", l_where }, { "maximum", l_maximum }, { "minimum", l_minimum },
  { "eq", l_eq }, { "ne", l_ne }, { "lt", l_lt }, { "le", l_le }, { "gt", l_gt }, { "ge", l_ge },
  { "matmul", l_matmul }, { "cat", l_cat }, { "stack", l_stack }, { "split", l_split },
  { "unstack", l_unstack }, { "save", l_save }, { "load", l_load },
  { "lstm_cell", l_lstm_cell }, { "gru_cell", l_gru_cell },
  { "sum", t_sum }, { "mean", t_mean }, { "var", t_var }, { "std", t_std }, { "norm", t_norm },
  { "max", t_max }, { "min", t_min }, { "argmax", t_argmax }, { "argmin", t_argmin },
  { "reshape", t_reshape }, { "transpose", t_transpose }, { "permute", t_permute },
  { "squeeze", t_squeeze }, { "unsqueeze", t_unsqueeze }, { "narrow", t_narrow },
  { "select", t_select }, { "expand", t_expand }, { "contiguous", t_contiguous },
  { "clone", t_clone },
  { NULL, NULL } };

/* Builds 'moongrad.Tensor' and adds the tensor functions to the module at the stack top. */
void mg_lua_open_tensor(lua_State *L, lstate *S) {
  luaL_newmetatable(L, MG_TENSOR_MT);
  mg_lua_setfuncs(L, S, tensor_metamethods);
  lua_newtable(L);                                   /* method table */
  mg_lua_setfuncs(L, S, tensor_methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -4, "methods");                    /* core.lua adds methods through it */
  lua_pushlightuserdata(L, S);
  lua_insert(L, -2);
  lua_pushcclosure(L, t_index, 2);                   /* upvalues: state, method table */
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  mg_lua_setfuncs(L, S, module_functions);
}
