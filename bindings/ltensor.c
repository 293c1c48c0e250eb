/*
** ltensor.c - tensors as Lua userdata ('moongrad.Tensor'): creation, inspection, views,
** math, reductions, joins. Dimensions are 1-based here and 0-based in the runtime.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lmoongrad.h"

#define LSTATE_ARG lstate *S = LSTATE(L)
#define METHODS_KEY "moongrad.Tensor.methods"   /* registry: the Tensor method table */

/* ================================================================ userdata */

#define BATCH_MAX 64      /* slots per batch (lmoongrad.h; below under "batches") */
#define BATCH_BYTES 256   /* most storage bytes of a batched result */

struct lbatch {
  int n;                        /* tensors held so far */
  bool closed;                  /* its __gc ran: holds nothing, takes nothing */
  mg_tensor *t[BATCH_MAX];      /* strong references, released by its __gc */
};

/* Whether the value at 'idx' is a tensor slot of 'S': a full userdata (a light one has raw
** length 0) of a slot's size (with its placed bytes) whose 'owner' is 'S'. Two API calls where
** a metatable test takes five (type, getmetatable, topointer, pop, touserdata: about 120
** instructions, three tests per 'a + b' with its __gc); only C code could forge a userdata
** that passes. */
static lslot *testslot(lua_State *L, lstate *S, int idx) {
  lslot *p = lua_touserdata(L, idx);
  if (p == NULL) return NULL;
  size_t n = lua_rawlen(L, idx);
  if (n < sizeof *p || n != sizeof *p + p->placed || p->owner != S) return NULL;
  if (p->batch != NULL && p->batch->closed) p->t = NULL;   /* released with its batch */
  return p;
}

/* Whether the slot still holds the tensor placed after it (lmoongrad.h). */
static bool isplaced(const lslot *p) { return p->t == (const mg_tensor *)(p + 1); }

/* Link a slot made or changed inside a finalizer (perhaps lua_close's, where the collector
** gives new objects no finalizer) into its state's orphans. */
static void adopt(lua_State *L, lstate *S, lslot *p) {
  if (S != NULL && lua_gc(L, LUA_GCISRUNNING) < 0) {
    p->next = S->orphans.next;
    p->prev = &S->orphans;
    S->orphans.next->prev = p;
    S->orphans.next = p;
  }
}

/* Copy the placed tensor of slot 'p' (the value at 'idx') out into an ordinary tensor that the
** slot owns, and give the value the metatable with __gc: from here on it is a tensor like any
** other. The placed bytes stay unused in the userdata. Raises when out of memory. */
__attribute__((noinline, cold)) static void unplace(lua_State *L, lstate *S, int idx, lslot *p) {
  mg_tensor *y = NULL;
  if (mg_tensor_unplace(S->C, p->t, &y) != MG_OK) lmg_fail(L, S, NULL);
  idx = lua_absindex(L, idx);
  p->t = y;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->tensor_mt_ref);
  lua_setmetatable(L, idx);                  /* registers the finalizer (no allocation) */
  adopt(L, S, p);
}

/* The tensor of slot 'p' (testslot's answer for 'idx'), copied out when placed, or NULL when
** 'p' is NULL or released. */
static mg_tensor *slottensor(lua_State *L, lstate *S, int idx, lslot *p) {
  if (p != NULL && p->t != NULL && isplaced(p)) unplace(L, S, idx, p);
  return p ? p->t : NULL;
}

/* The slot at 'idx' of this state's tensors, placed tensors copied out, or NULL. */
static lslot *toslot(lua_State *L, int idx) {
  lstate *S = lmg_findstate(L);
  lslot *p = S != NULL ? testslot(L, S, idx) : NULL;
  slottensor(L, S, idx, p);
  return p;
}

static mg_tensor **checkslot(lua_State *L, int idx) {
  lslot *p = toslot(L, idx);
  if (p == NULL) luaL_checkudata(L, idx, MG_TENSOR_MT);   /* raises the usual error */
  if (p->t == NULL) luaL_argerror(L, idx, "tensor was released");
  return &p->t;
}

mg_tensor *mg_lua_checktensor(lua_State *L, int idx) { return *checkslot(L, idx); }

mg_tensor *lmg_totensor(lua_State *L, int idx) {
  lslot *p = toslot(L, idx);
  return p ? p->t : NULL;
}

/* A new slot's fields: no tensor yet, owned by 'S', on no orphans list, 'placed' bytes
** after it. */
static void initslot(lslot *p, const lstate *S, size_t placed) {
  p->t = NULL;
  p->owner = S;
  p->prev = p->next = NULL;
  p->placed = placed;
  p->batch = NULL;
}

/* Push an empty slot of state 'S' ('S' NULL: looked up in the registry). */
static mg_tensor **newslot(lua_State *L, lstate *S) {
  lslot *p = lua_newuserdatauv(L, sizeof *p, 0);
  if (S == NULL) S = lmg_findstate(L);
  initslot(p, S, 0);
  if (S != NULL) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->tensor_mt_ref);
    lua_setmetatable(L, -2);
  } else {
    luaL_setmetatable(L, MG_TENSOR_MT);
  }
  adopt(L, S, p);
  return &p->t;
}

/* The fast paths of elementwise ops: a small result that no tape records is built inside its
** own userdata, which has no finalizer (lmoongrad.h's placed slots). newplaced pushes that
** userdata ('n' bytes placed) and returns its slot, or NULL (nothing pushed) when the operand
** slots 'pa', 'pb' (NULL: none) lost their tensors meanwhile: making the userdata may run
** finalizers, which may copy the operands out (same shape and dtype: 'n' holds) or release
** them (__close). The caller fills the slot's 't' at once. */
static lslot *newplaced(lua_State *L, lstate *S, size_t n, const lslot *pa, const lslot *pb) {
  lslot *p = lua_newuserdatauv(L, sizeof *p + n, 0);
  if (pa->t == NULL || (pb != NULL && pb->t == NULL)) {
    lua_pop(L, 1);
    return NULL;
  }
  initslot(p, S, n);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->nogc_mt_ref);
  lua_setmetatable(L, -2);
  return p;
}

mg_tensor **lmg_newslot(lua_State *L) { return newslot(L, NULL); }

/* ---------------------------------------------------------------- batches */

/* Small results (at most BATCH_BYTES of storage) have no finalizer of their own: a batch, a
** userdata with a __gc, holds the tensors of up to BATCH_MAX of them, and each of their slots
** has the batch as its one user value (lmoongrad.h). The batch lives while any of its slots
** does; when none does, its __gc releases all the tensors. Registering a finalizer and having
** the collector resurrect and call it cost about 600 instructions per object; linking a slot
** about 150. The batch keeps no Lua reference to its slots (the collector would traverse
** them all again when it finalizes the batch), so its __gc cannot clear them: it sets
** 'closed', and testslot treats the slots of a closed batch as released (the objects that
** see them then are the ones finalized with them in one cycle, or made reachable again by
** such a finalizer). */
static int batch_gc(lua_State *L) {
  lstate *S = lua_touserdata(L, lua_upvalueindex(1));   /* not LSTATE: runs after the close */
  lbatch *k = lua_touserdata(L, 1);
  k->closed = true;
  for (int i = 0; i < k->n; i++) {
    if (S->C != NULL) mg_tensor_release_reader(S->C, k->t[i]);
    else mg_tensor_release(k->t[i]);
  }
  k->n = 0;
  return 0;
}

/* Push the weak table that holds the batch new small results join, then that batch (a new
** one when there is none or it is full), and return the batch; or return NULL with
** nothing pushed inside a finalizer, where a new batch might get no __gc of its own
** (lua_close's): the caller makes an ordinary slot. The weak table lets the current batch go
** with its slots. Making a batch may run finalizers, which may take places in it: the caller
** reads 'n' only after this returns. */
static lbatch *curbatch(lua_State *L, lstate *S) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->batch_ref);
  lua_rawgeti(L, -1, 1);
  lbatch *k = lua_touserdata(L, -1);
  if (k != NULL && !k->closed && k->n < BATCH_MAX) return k;
  lua_pop(L, 1);
  if (lua_gc(L, LUA_GCISRUNNING) < 0) {
    lua_pop(L, 1);
    return NULL;
  }
  k = lua_newuserdatauv(L, sizeof *k, 0);
  k->n = 0;
  k->closed = false;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->batch_mt_ref);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawseti(L, -3, 1);
  return k;
}

/* Push a slot holding 't' (a new reference, consumed): in a batch when its storage is small. */
static void pushresult(lua_State *L, lstate *S, mg_tensor *t) {
  if (mg_tensor_storage_bytes(t) > BATCH_BYTES) {
    *newslot(L, S) = t;
    return;
  }
  lslot *p = lua_newuserdatauv(L, sizeof *p, 1);
  initslot(p, S, 0);
  lbatch *k = curbatch(L, S);
  if (k == NULL) {                                        /* inside a finalizer */
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->tensor_mt_ref);
    lua_setmetatable(L, -2);
    adopt(L, S, p);
  } else {
    k->t[k->n++] = t;
    p->batch = k;
    lua_setiuservalue(L, -3, 1);                          /* slot -> batch */
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->nogc_mt_ref);    /* slot, weak table, metatable */
    lua_setmetatable(L, -3);
    lua_pop(L, 1);
  }
  p->t = t;
}

/* Lua's collector cannot see storage bytes: step it by as many KiB as storage grew (so
** garbage tensors go back to the pool while it is still warm), and collect fully once live
** storage is twice its low point since the last full collection (at least that plus 8 MiB).
** Steps alone do not bound it: in the generational mode (lua5.4's default) a step is a minor
** collection, and a tensor alive across two of them is freed only by a full one. The low
** point, not the bytes alive at the collection, since these hold the working set of the
** moment (a training step's saved tensors), which would let garbage pile up to as much. */
static void gc_pressure(lua_State *L, lstate *S) {
  size_t live = mg_live_bytes(S->C);
  if (live > S->gc_stepped + ((size_t)1 << 20)) {
    lua_gc(L, LUA_GCSTEP, (int)((live - S->gc_stepped) >> 10));
    live = S->gc_stepped = mg_live_bytes(S->C);
  } else if (live < S->gc_stepped) {
    S->gc_stepped = live;
  }
  bool full = live > S->gc_threshold;
  if (full) {
    lua_gc(L, LUA_GCCOLLECT);
    live = S->gc_stepped = mg_live_bytes(S->C);
  }
  size_t floor = (size_t)8 << 20, next = live + (live > floor ? live : floor);
  if (full || next < S->gc_threshold) S->gc_threshold = next;
}

void lmg_settensor(lua_State *L, lstate *S, mg_tensor **slot, mg_tensor *t) {
  *slot = t;
  gc_pressure(L, S);
}

void mg_lua_pushtensor(lua_State *L, mg_tensor *t) {
  mg_tensor **slot = lmg_newslot(L);
  *slot = mg_tensor_retain(t);
}

/* Raise the context's message. 'fn' (the user-facing name) replaces the runtime's op name;
** with 'fn' NULL, a message that names no function ("out of memory allocating ...", from an op
** that does not name its own) gets the name Lua called the function by: "add" for a + b. */
int lmg_fail(lua_State *L, lstate *S, const char *fn) {
  const char *msg = mg_errmsg(S->C);
  size_t n = strspn(msg, "abcdefghijklmnopqrstuvwxyz0123456789_");
  bool named = n > 0 && msg[n] == ':' && msg[n + 1] == ' ';     /* "matmul: ..." */
  if (fn == NULL) {
    lua_Debug ar;
    if (!named && lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar) && ar.name)
      return luaL_error(L, "%s: %s", ar.name, msg);
    return luaL_error(L, "%s", msg);
  }
  if (named) msg += n + 2;
  return luaL_error(L, "%s: %s", fn, msg);
}

int lmg_result(lua_State *L, lstate *S, mg_status st, mg_tensor **t) {
  if (st != MG_OK) return lmg_fail(L, S, NULL);
  pushresult(L, S, *t);
  gc_pressure(L, S);
  return 1;
}

/* __gc and __close: one idempotent release */
static int tensor_release(lua_State *L) {
  lstate *S = lua_touserdata(L, lua_upvalueindex(1));   /* not LSTATE: runs after the close */
  lslot *p = testslot(L, S, 1);
  if (p == NULL) p = luaL_checkudata(L, 1, MG_TENSOR_MT);   /* raises the usual error */
  lmg_unlink_slot(p);
  if (p->t != NULL && (isplaced(p) || p->batch != NULL))
    p->t = NULL;                      /* nothing outside the userdata, or its batch's to release */
  if (S->C != NULL) mg_tensor_release_reader(S->C, p->t);   /* data only tapes hold goes now */
  else mg_tensor_release(p->t);
  p->t = NULL;
  return 0;
}

/* ================================================================ arguments */

static int dtype_of(const char *s);

mg_dtype lmg_checkdtype(lua_State *L, int idx) {
  int d = dtype_of(luaL_checkstring(L, idx));
  if (d < 0) luaL_argerror(L, idx, lua_pushfstring(L, "dtype must be \"float32\" or \"float64\", got \"%s\"", lua_tostring(L, idx)));
  return (mg_dtype)d;
}

int lmg_options(lua_State *L, int idx) {
  int top = lua_gettop(L);
  if (top < idx || !lua_istable(L, top)) return 0;
  if (top == idx) {       /* a lone table: options when keyed (any non-integer key), no [1] */
    bool keyed = false;
    lua_pushnil(L);
    while (!keyed && lua_next(L, top)) {
      keyed = !lua_isinteger(L, -2);
      lua_pop(L, keyed ? 2 : 1);
    }
    if (!keyed) return 0;
    bool arr = lua_rawgeti(L, top, 1) != LUA_TNIL;
    lua_pop(L, 1);
    if (arr) return 0;
  }
  return top;
}

/* ================================================================ strict options */

/* Edit distance of 'a' and 'b' (Levenshtein; names longer than 63 bytes count as far). */
static size_t distance(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b), row[64];
  if (na > 63 || nb > 63) return (size_t)-1;
  for (size_t j = 0; j <= nb; j++) row[j] = j;
  for (size_t i = 1; i <= na; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= nb; j++) {
      size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      diag = up;
      row[j] = best;
    }
  }
  return row[nb];
}

static bool known_key(const char *k, const char *const *known) {
  for (; *known != NULL; known++)
    if (strcmp(k, *known) == 0) return true;
  return false;
}

/* Push "fn: unknown option 'k' (did you mean 'x'?)" for the key at the top (popped); 'fn'
** NULL: no name in front. */
static const char *unknown_message(lua_State *L, const char *fn, const char *const *known) {
  const char *msg, *sep = fn ? ": " : "";
  if (fn == NULL) fn = "";
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *k = lua_tostring(L, -1), *near = known[0];
    for (const char *const *c = known; *c != NULL; c++)
      if (distance(k, *c) < distance(k, near)) near = *c;
    msg = near ? lua_pushfstring(L, "%s%sunknown option '%s' (did you mean '%s'?)", fn, sep, k, near)
               : lua_pushfstring(L, "%s%sunknown option '%s' (it takes none)", fn, sep, k);
  } else {
    const char *k = luaL_tolstring(L, -1, NULL);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (const char *const *c = known; *c != NULL; c++) {
      lua_pushfstring(L, "%s'%s'", c == known ? "" : ", ", *c);
      luaL_addvalue(&b);
    }
    luaL_pushresult(&b);                            /* key, k, list */
    msg = lua_pushfstring(L, "%s%sunknown option [%s] (options are named: %s)", fn, sep, k,
                          lua_tostring(L, -1));
    lua_replace(L, -3);                             /* key, msg, list */
    lua_pop(L, 1);
  }
  lua_remove(L, -2);                                /* the key */
  return msg;
}

const char *lmg_unknown_option(lua_State *L, int idx, const char *fn,
                               const char *const *known) {
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || !known_key(lua_tostring(L, -1), known))
      return unknown_message(L, fn, known);
  }
  return NULL;
}

void lmg_checkoptions(lua_State *L, int idx, const char *fn, const char *const *known) {
  if (lmg_unknown_option(L, idx, fn, known) == NULL) return;
  luaL_where(L, 1);                                 /* the caller's line, as luaL_error */
  lua_insert(L, -2);
  lua_concat(L, 2);
  lua_error(L);
}

/* mg._unknown_option(fn, opts, known): the message for the first key of the table 'opts' that
** is not in 'known' (an array of names, or a set), or nil: the checker of the Lua parts ('fn'
** nil: the message does not name the function). */
static int tensor_unknown_option(lua_State *L) {
  const char *fn = luaL_optstring(L, 1, NULL);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, 3)) { n++; lua_pop(L, 1); }
  const char **known = lua_newuserdatauv(L, ((size_t)n + 1) * sizeof *known, 0);
  int k = 0;
  lua_pushnil(L);
  while (lua_next(L, 3)) {              /* the strings stay alive in 'known' (argument 3) */
    int name = lua_type(L, -2) == LUA_TSTRING ? -2 : -1;
    if (lua_type(L, name) == LUA_TSTRING) known[k++] = lua_tostring(L, name);
    lua_pop(L, 1);
  }
  for (int i = 1; i < k; i++)           /* sorted: the same suggestion on every run */
    for (int j = i; j > 0 && strcmp(known[j - 1], known[j]) > 0; j--) {
      const char *t = known[j]; known[j] = known[j - 1]; known[j - 1] = t;
    }
  known[k] = NULL;
  if (lmg_unknown_option(L, 2, fn, known) == NULL) lua_pushnil(L);
  return 1;
}

/* dtype from a name: "float32"/"float" or "float64"/"double"; -1 if unknown. */
static int dtype_of(const char *s) {
  if (s == NULL) return -1;
  if (strcmp(s, "float32") == 0 || strcmp(s, "float") == 0) return MG_F32;
  if (strcmp(s, "float64") == 0 || strcmp(s, "double") == 0) return MG_F64;
  return -1;
}

/* The 'dtype' of options table 'opt' (0: none), or the default; other keys unchecked. */
static mg_dtype readdtype(lua_State *L, lstate *S, int opt) {
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

mg_dtype lmg_optdtype(lua_State *L, lstate *S, int opt, const char *fn) {
  static const char *const known[] = { "dtype", NULL };
  if (opt != 0) lmg_checkoptions(L, opt, fn, known);
  return readdtype(L, S, opt);
}

static int64_t checksize(lua_State *L, int idx) {
  lua_Integer n;
  int isnum;
  n = lua_tointegerx(L, idx, &isnum);
  if (!isnum) {
    if (lua_type(L, idx) == LUA_TNUMBER) luaL_argerror(L, idx, "size must be an integer");
    luaL_typeerror(L, idx, "integer size");
  }
  if (n < 0) luaL_argerror(L, idx, lua_pushfstring(L, "negative size %I", n));
  return (int64_t)n;
}

int lmg_checkshape(lua_State *L, int idx, int64_t *shape) {
  int top = lua_gettop(L), opt = lmg_options(L, idx), nd = 0;
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
      if (v < 0) luaL_argerror(L, idx, lua_pushfstring(L, "negative size %I in shape", v));
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

/* 0-based position of the 1-based index 'i' (negative: from the end) along 'n', or -1. */
static lua_Integer position(lua_Integer i, lua_Integer n) {
  lua_Integer z = i < 0 ? i + n : i - 1;
  return i == 0 || z < 0 || z >= n ? -1 : z;
}

#define ONE_BASED(i) ((i) == 0 ? " (indices and dims are 1-based)" : "")

/* Push and return "index 0 out of range for dimension 2 of size 3 (...)". */
static const char *index_message(lua_State *L, lua_Integer i, int dim, lua_Integer n) {
  return lua_pushfstring(L, "index %I out of range for dimension %d of size %I%s", i, dim, n,
                         ONE_BASED(i));
}

/* Push and return "dimension 0 out of range for a 2-d tensor (...)". */
static const char *dim_message(lua_State *L, lua_Integer d, int ndim) {
  return lua_pushfstring(L, "dimension %I out of range for a %d-d tensor%s", d, ndim,
                         ONE_BASED(d));
}

int lmg_checkdim(lua_State *L, int idx, int ndim) {
  lua_Integer d = luaL_checkinteger(L, idx), z = position(d, ndim);
  if (z < 0) luaL_argerror(L, idx, dim_message(L, d, ndim));
  return (int)z;
}

/* A 0-d tensor for a number, or a new reference to the tensor at 'idx'. */
mg_tensor *lmg_checkoperand(lua_State *L, lstate *S, int idx, mg_dtype dt) {
  mg_tensor *t = lmg_totensor(L, idx);
  if (t) return mg_tensor_retain(t);
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_typeerror(L, idx, "tensor or number");
  if (mg_tensor_full(S->C, dt, 0, NULL, lua_tonumber(L, idx), &t) != MG_OK) lmg_fail(L, S, NULL);
  return t;
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
      if (!ok)
        luaL_argerror(L, 1, lua_pushfstring(L, "expected a number at depth %d, got %s", d + 1,
                                            luaL_typename(L, -1)));
      if (es == 8) ((double *)base)[*pos] = v;
      else ((float *)base)[*pos] = (float)v;
      (*pos)++;
    } else {
      if (!lua_istable(L, -1) || (int64_t)lua_rawlen(L, -1) != shape[d + 1])
        luaL_argerror(L, 1, lua_pushfstring(L, "nested tables are ragged at depth %d (expected %I "
                                            "entries)", d + 2, (lua_Integer)shape[d + 1]));
      fill_nested(L, lua_gettop(L), t, d + 1, pos, base);
    }
    lua_pop(L, 1);
  }
}

static int tensor_new(lua_State *L) {
  LSTATE_ARG;
  int opt = lua_istable(L, 2) ? 2 : 0;
  if (!opt && !lua_isnoneornil(L, 2)) return luaL_typeerror(L, 2, "options table");
  mg_dtype dt = lmg_optdtype(L, S, opt, "tensor");
  lua_settop(L, 2);
  mg_tensor **slot = lmg_newslot(L), *t = NULL;  /* at 3 */
  if (lua_type(L, 1) == LUA_TNUMBER) {
    if (mg_tensor_full(S->C, dt, 0, NULL, lua_tonumber(L, 1), &t) != MG_OK) return lmg_fail(L, S, "tensor");
    lmg_settensor(L, S, slot, t);
    return 1;
  }
  if ((t = lmg_totensor(L, 1)) != NULL) {
    mg_tensor *c = NULL;
    mg_status st = mg_tensor_cast(S->C, t, opt ? dt : mg_tensor_dtype(t), &c);
    if (st == MG_OK && c == t) { mg_tensor_release(c); st = mg_tensor_clone(S->C, t, &c); }
    if (st != MG_OK) return lmg_fail(L, S, "tensor");
    lmg_settensor(L, S, slot, c);
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
  if (mg_tensor_empty(S->C, dt, nd, shape, &t) != MG_OK) return lmg_fail(L, S, "tensor");
  *slot = t;                                        /* owned by the slot from here on */
  int64_t pos = 0;
  if (nd > 0) fill_nested(L, 1, t, 0, &pos, mg_tensor_data(t));   /* when empty too: raggedness */
  lmg_settensor(L, S, slot, t);
  return 1;
}

static int full_shape(lua_State *L, const char *fn, double v) {
  LSTATE_ARG;
  int64_t shape[MG_MAXDIM];
  int nd = lmg_checkshape(L, 1, shape);
  mg_dtype dt = lmg_optdtype(L, S, lmg_options(L, 1), fn);
  mg_tensor **slot = lmg_newslot(L), *t = NULL;
  if (mg_tensor_full(S->C, dt, nd, shape, v, &t) != MG_OK) return lmg_fail(L, S, fn);
  lmg_settensor(L, S, slot, t);
  return 1;
}

static int tensor_zeros(lua_State *L) { return full_shape(L, "zeros", 0.0); }
static int tensor_ones(lua_State *L) { return full_shape(L, "ones", 1.0); }

static int tensor_full(lua_State *L) {
  int top = lua_gettop(L), opt = lmg_options(L, 2);
  int vi = opt ? opt - 1 : top;                     /* the value is the last non-option */
  double v = luaL_checknumber(L, vi);
  lua_remove(L, vi);
  return full_shape(L, "full", v);
}

static int tensor_eye(lua_State *L) {
  LSTATE_ARG;
  int64_t n = checksize(L, 1), m = lua_isinteger(L, 2) ? checksize(L, 2) : n;
  int64_t shape[2] = { n, m };
  mg_dtype dt = lmg_optdtype(L, S, lmg_options(L, 2), "eye");
  mg_tensor **slot = lmg_newslot(L), *t = NULL;
  if (mg_tensor_zeros(S->C, dt, 2, shape, &t) != MG_OK) return lmg_fail(L, S, "eye");
  for (int64_t i = 0; i < n && i < m; i++) {
    int64_t idx[2] = { i, i };
    mg_tensor_set(t, idx, 1.0);
  }
  lmg_settensor(L, S, slot, t);
  return 1;
}

static int make_range(lua_State *L, lstate *S, const char *fn, double a, double step,
                      int64_t n, int opt) {
  mg_dtype dt = lmg_optdtype(L, S, opt, fn);
  mg_tensor **slot = lmg_newslot(L), *t = NULL;
  if (mg_tensor_empty(S->C, dt, 1, &n, &t) != MG_OK) return lmg_fail(L, S, fn);
  for (int64_t i = 0; i < n; i++) mg_tensor_set(t, &i, a + (double)i * step);
  lmg_settensor(L, S, slot, t);
  return 1;
}

/* arange(a, b [, step]): a, a+step, ... < b (like NumPy); arange(n) = 0..n-1 */
static int tensor_arange(lua_State *L) {
  LSTATE_ARG;
  int opt = lmg_options(L, 2);
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

static int tensor_linspace(lua_State *L) {
  LSTATE_ARG;
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  int64_t n = checksize(L, 3);
  return make_range(L, S, "linspace", a, n > 1 ? (b - a) / (double)(n - 1) : 0, n,
                    lmg_options(L, 4));
}

static int tensor_manual_seed(lua_State *L) {
  LSTATE_ARG;
  mg_manual_seed(S->C, (uint64_t)luaL_checkinteger(L, 1));
  return 0;
}

/* rand/randn/uniform: shape args, then (uniform) lo, hi, then options */
static int random_fill(lua_State *L, int kind) {
  LSTATE_ARG;
  int opt = lmg_options(L, 1);
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
  const char *fn = kind == 0 ? "rand" : kind == 1 ? "randn" : "uniform";
  int64_t shape[MG_MAXDIM];
  int nd = lmg_checkshape(L, 1, shape);
  mg_dtype dt = lmg_optdtype(L, S, opt, fn);
  mg_tensor **slot = lmg_newslot(L), *t = NULL;
  if (mg_tensor_empty(S->C, dt, nd, shape, &t) != MG_OK) return lmg_fail(L, S, fn);
  if (kind == 1) mg_fill_normal(S->C, t, 0, 1);
  else mg_fill_uniform(S->C, t, lo, hi);
  lmg_settensor(L, S, slot, t);
  return 1;
}

/* glorot_uniform(rows, cols [, opts]) / orthogonal(rows, cols [, {gain=}] [, opts]): Keras's
** initializers as new (rows, cols) tensors; 'dtype' may come in either table. */
static int init_matrix(lua_State *L, bool ortho) {
  static const char *const plain[] = { "dtype", NULL }, *const gained[] = { "dtype", "gain", NULL };
  LSTATE_ARG;
  const char *fn = ortho ? "orthogonal" : "glorot_uniform";
  int64_t shape[2] = { checksize(L, 1), checksize(L, 2) };
  double gain = 1;
  int opt = 0;
  for (int i = 3; i <= 4 && i <= lua_gettop(L); i++) {
    if (lua_isnil(L, i)) continue;
    if (ortho && i == 3 && lua_type(L, i) == LUA_TNUMBER) { gain = lua_tonumber(L, i); continue; }
    luaL_checktype(L, i, LUA_TTABLE);
    lmg_checkoptions(L, i, fn, ortho ? gained : plain);
    if (ortho && lua_getfield(L, i, "gain") != LUA_TNIL) {
      int ok;
      gain = lua_tonumberx(L, -1, &ok);
      if (!ok) luaL_argerror(L, i, lua_pushfstring(L, "gain must be a number, got %s", luaL_typename(L, -1)));
    }
    lua_pop(L, ortho ? 1 : 0);
    if (lua_getfield(L, i, "dtype") != LUA_TNIL) opt = i;
    lua_pop(L, 1);
  }
  mg_dtype dt = readdtype(L, S, opt);
  mg_tensor **slot = lmg_newslot(L), *t = NULL;
  if (mg_tensor_empty(S->C, dt, 2, shape, &t) != MG_OK) return lmg_fail(L, S, fn);
  *slot = t;                                        /* owned by the slot from here on */
  if ((ortho ? mg_init_orthogonal(S->C, t, gain) : mg_init_glorot_uniform(S->C, t)) != MG_OK)
    return lmg_fail(L, S, NULL);
  lmg_settensor(L, S, slot, t);
  return 1;
}

static int tensor_glorot_uniform(lua_State *L) { return init_matrix(L, false); }
static int tensor_orthogonal(lua_State *L) { return init_matrix(L, true); }

static int tensor_rand(lua_State *L) { return random_fill(L, 0); }
static int tensor_randn(lua_State *L) { return random_fill(L, 1); }
static int tensor_uniform(lua_State *L) { return random_fill(L, 2); }

/* ================================================================ inspection */

/* Push the 'n' sizes at 'v' as a new array; returns 1 (the stack effect). */
static int push_sizes(lua_State *L, int n, const int64_t *v) {
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)v[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int tensor_shape(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  return push_sizes(L, mg_tensor_ndim(t), mg_tensor_shape(t));
}

static int tensor_size(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) return tensor_shape(L);
  int d = lmg_checkdim(L, 2, mg_tensor_ndim(t));
  lua_pushinteger(L, (lua_Integer)mg_tensor_shape(t)[d]);
  return 1;
}

static int tensor_dim(lua_State *L) {
  lua_pushinteger(L, mg_tensor_ndim(mg_lua_checktensor(L, 1)));
  return 1;
}

static int tensor_numel(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mg_tensor_numel(mg_lua_checktensor(L, 1)));
  return 1;
}

static int tensor_len(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  lua_pushinteger(L, mg_tensor_ndim(t) ? (lua_Integer)mg_tensor_shape(t)[0] : 0);
  return 1;
}

static int tensor_item(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  if (mg_tensor_numel(t) != 1)
    return luaL_error(L, "item: tensor has %I elements, expected exactly one",
                      (lua_Integer)mg_tensor_numel(t));
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

static int tensor_totable(lua_State *L) {
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
    lua_Integer z = position(k, n);
    if (z < 0) luaL_argerror(L, first + i, index_message(L, k, i + 1, n));
    idx[i] = z;
  }
}

static int tensor_get(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  int64_t idx[MG_MAXDIM];
  checkindex(L, "get", t, 2, idx);
  lua_pushnumber(L, mg_tensor_get(t, idx));
  return 1;
}

static int tensor_set(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  double v = luaL_checknumber(L, 2);
  int64_t idx[MG_MAXDIM];
  checkindex(L, "set", t, 3, idx);
  mg_tensor_set(t, idx, v);
  lua_settop(L, 1);
  return 1;
}

static int tensor_is_variable(lua_State *L) {
  lua_pushboolean(L, mg_tensor_is_variable(mg_lua_checktensor(L, 1)));
  return 1;
}

static int tensor_is_contiguous(lua_State *L) {
  lua_pushboolean(L, mg_tensor_is_contiguous(mg_lua_checktensor(L, 1)));
  return 1;
}

static int tensor_stride(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  return push_sizes(L, mg_tensor_ndim(t), mg_tensor_strides(t));
}

/* ================================================================ views and copies */

static int tensor_reshape(lua_State *L) {
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
  return lmg_result(L, S, mg_tensor_reshape(S->C, t, nd, shape, &y), &y);
}

static int tensor_flatten(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int64_t n = -1;
  return lmg_result(L, S, mg_tensor_reshape(S->C, t, 1, &n, &y), &y);
}

static int tensor_transpose(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int nd = mg_tensor_ndim(t);
  int d1, d2;
  if (lua_isnoneornil(L, 2)) {
    if (nd < 2) return luaL_error(L, "transpose: tensor has %d dimensions, expected at least 2", nd);
    d1 = nd - 2; d2 = nd - 1;
  } else {
    d1 = lmg_checkdim(L, 2, nd);
    d2 = lmg_checkdim(L, 3, nd);
  }
  return lmg_result(L, S, mg_tensor_transpose(S->C, t, d1, d2, &y), &y);
}

static int tensor_permute(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int nd = mg_tensor_ndim(t), perm[MG_MAXDIM], n = 0;
  if (lua_istable(L, 2)) {
    n = (int)luaL_len(L, 2);
    if (n != nd) return luaL_error(L, "permute: %d dims given for a %d-d tensor", n, nd);
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, 2, i);
      perm[i - 1] = lmg_checkdim(L, -1, nd);
      lua_pop(L, 1);
    }
  } else {
    n = lua_gettop(L) - 1;
    if (n != nd) return luaL_error(L, "permute: %d dims given for a %d-d tensor", n, nd);
    for (int i = 0; i < n; i++) perm[i] = lmg_checkdim(L, i + 2, nd);
  }
  return lmg_result(L, S, mg_tensor_permute(S->C, t, perm, &y), &y);
}

static int tensor_squeeze(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? -1 : lmg_checkdim(L, 2, mg_tensor_ndim(t));
  return lmg_result(L, S, mg_tensor_squeeze(S->C, t, d, &y), &y);
}

static int tensor_unsqueeze(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = lmg_checkdim(L, 2, mg_tensor_ndim(t) + 1);
  return lmg_result(L, S, mg_tensor_unsqueeze(S->C, t, d, &y), &y);
}

static int tensor_narrow(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = lmg_checkdim(L, 2, mg_tensor_ndim(t));
  lua_Integer start = luaL_checkinteger(L, 3), len = luaL_checkinteger(L, 4);
  lua_Integer n = (lua_Integer)mg_tensor_shape(t)[d];
  if (start < 0) start += n + 1;
  if (start < 1 || len < 0 || start - 1 > n - len) {         /* no overflow for huge 'len' */
    if (len < 0 || (start >= 1 && len > LUA_MAXINTEGER - (start - 1)))   /* no last index */
      return luaL_error(L, "narrow: %I elements from %I out of bounds for dimension %d of size %I%s",
                        len, start, d + 1, n, ONE_BASED(start));
    return luaL_error(L, "narrow: range %I..%I out of bounds for dimension %d of size %I%s",
                      start, (start - 1) + len, d + 1, n, ONE_BASED(start));
  }
  return lmg_result(L, S, mg_tensor_narrow(S->C, t, d, start - 1, len, &y), &y);
}

static int select_at(lua_State *L, lstate *S, mg_tensor *t, int d, lua_Integer i, int argi) {
  mg_tensor *y = NULL;
  lua_Integer n = (lua_Integer)mg_tensor_shape(t)[d], z = position(i, n);
  if (z < 0) return luaL_argerror(L, argi, index_message(L, i, d + 1, n));
  return lmg_result(L, S, mg_tensor_select(S->C, t, d, z, &y), &y);
}

static int tensor_select(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1);
  if (mg_tensor_ndim(t) == 0) return luaL_error(L, "select: cannot index a 0-d tensor");
  int d = lmg_checkdim(L, 2, mg_tensor_ndim(t));
  return select_at(L, S, t, d, luaL_checkinteger(L, 3), 3);
}

static int tensor_expand(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int64_t shape[MG_MAXDIM];
  int nd = lmg_checkshape(L, 2, shape);
  return lmg_result(L, S, mg_tensor_expand(S->C, t, nd, shape, &y), &y);
}

static int tensor_contiguous(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  return lmg_result(L, S, mg_tensor_contiguous(S->C, t, &y), &y);
}

static int tensor_clone(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  return lmg_result(L, S, mg_tensor_clone(S->C, t, &y), &y);
}

static int tensor_to(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  return lmg_result(L, S, mg_tensor_cast(S->C, t, lmg_checkdtype(L, 2), &y), &y);
}

/* In place, not recorded. */
static int tensor_fill(lua_State *L) {
  mg_tensor_fill_(mg_lua_checktensor(L, 1), luaL_checknumber(L, 2));
  lua_settop(L, 1);
  return 1;
}

static int tensor_copy(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *dst = mg_lua_checktensor(L, 1);
  mg_tensor *src = lmg_checkoperand(L, S, 2, mg_tensor_dtype(dst));
  mg_status st = mg_tensor_copy_(S->C, dst, src);
  mg_tensor_release(src);
  if (st != MG_OK) return lmg_fail(L, S, NULL);
  lua_settop(L, 1);
  return 1;
}

/* v:assign(t), v:assign_add(t), v:assign_sub(t): write 't' (tensor or number, broadcast to
** v's shape), v + t or v - t into the Variable 'v', in place and not recorded, as TensorFlow's
** assign ops. 'op' < 0: plain assignment. Errors name 'fn'. */
static int assign(lua_State *L, const char *fn, int op) {
  LSTATE_ARG;
  lslot *q = toslot(L, 1);
  mg_tensor **p = q ? &q->t : NULL;
  if (p == NULL || *p == NULL || !mg_tensor_is_variable(*p))
    return luaL_error(L, "%s: expected a Variable, got %s", fn, p == NULL ? luaL_typename(L, 1)
                      : *p == NULL ? "a released tensor" : "a plain tensor");
  mg_tensor *v = *p, **slot = lmg_newslot(L), *t = NULL;    /* the slot owns 'src' */
  lua_insert(L, 2);
  if (lua_type(L, 3) != LUA_TNUMBER && lmg_totensor(L, 3) == NULL)
    return luaL_error(L, "%s: expected a tensor or number, got %s", fn, luaL_typename(L, 3));
  *slot = lmg_checkoperand(L, S, 3, mg_tensor_dtype(v));
  mg_status st = MG_OK;
  if (op >= 0) {
    mg_no_grad_enter(S->C);
    st = mg_tensor_binary(S->C, (mg_binary)op, v, *slot, &t);
    mg_no_grad_exit(S->C);
  } else t = mg_tensor_retain(*slot);
  if (st == MG_OK) st = mg_tensor_copy_(S->C, v, t);
  mg_tensor_release(t);
  if (st != MG_OK) return lmg_fail(L, S, fn);
  lua_settop(L, 1);
  return 1;
}

static int tensor_assign(lua_State *L) { return assign(L, "assign", -1); }
static int tensor_assign_add(lua_State *L) { return assign(L, "assign_add", MG_B_ADD); }
static int tensor_assign_sub(lua_State *L) { return assign(L, "assign_sub", MG_B_SUB); }

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
  lua_Integer z = position(i, n);
  if (z < 0) luaL_error(L, "index: %s", index_message(L, i, 1, n));
  return (int64_t)z;
}

/* t[i] = select(1, i); other keys: methods, and the 'dtype' field */
static int tensor_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TNUMBER) {
    LSTATE_ARG;
    mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
    int64_t z = row_index(L, t);
    return lmg_result(L, S, mg_tensor_select(S->C, t, 0, z, &y), &y);
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
static int tensor_newindex(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int64_t z = row_index(L, t);
  mg_no_grad_enter(S->C);
  mg_status st = mg_tensor_select(S->C, t, 0, z, &y);
  mg_no_grad_exit(S->C);
  if (st != MG_OK) return lmg_fail(L, S, NULL);
  mg_tensor **slot = lmg_newslot(L);             /* owns 'y' if what follows raises */
  *slot = y;
  mg_tensor *src = lmg_checkoperand(L, S, 3, mg_tensor_dtype(t));
  st = mg_tensor_copy_(S->C, y, src);
  mg_tensor_release(src);
  if (st != MG_OK) return lmg_fail(L, S, NULL);
  return 0;
}

/* ================================================================ math */

/* t:name() / mg.name(t) for the elementwise unary kernel in upvalue 2 */
static int tensor_unary(lua_State *L) {
  LSTATE_ARG;
  mg_unary op = (mg_unary)lua_tointeger(L, lua_upvalueindex(2));
  lslot *px = testslot(L, S, 1), *p;
  size_t n = px && px->t ? mg_tensor_unary_placed_size(S->C, op, px->t) : 0;
  if (n > 0 && (p = newplaced(L, S, n, px, NULL)) != NULL) {
    p->t = mg_tensor_unary_placed(S->C, op, px->t, p + 1);
    return 1;
  }
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  return lmg_result(L, S, mg_tensor_unary(S->C, op, t, &y), &y);
}

/* The kernels of the op list with their Lua names, in kernel order (the kernel enums come
** from the same rows). */
typedef struct kernelrow { const char *name; int k; bool recorded; } kernelrow;
static const kernelrow unary_kernels[] = {
#define MG_UNARY_OP(kernel, opcode, name) { name, kernel, true },
#define MG_UNARY_KERNEL(kernel, name) { name, kernel, false },
#include "mg_ops.def"
};
static const kernelrow binary_kernels[] = {
#define MG_BINARY_OP(kernel, opcode, name) { name, kernel, true },
#define MG_BINARY_KERNEL(kernel, name) { name, kernel, false },
#include "mg_ops.def"
};
_Static_assert(sizeof unary_kernels / sizeof unary_kernels[0] == MG_U_COUNT, "every unary kernel listed");
_Static_assert(sizeof binary_kernels / sizeof binary_kernels[0] == MG_B_COUNT, "every binary kernel listed");

/* Raise the error for operands 1 and 2 of 'fn' that are not a tensor and a tensor or number
** ('a', 'b': the tensors among them, else NULL). */
static int operand_error(lua_State *L, const char *fn, mg_tensor *a, mg_tensor *b) {
  for (int i = 1; i <= 2; i++) {
    lslot *p = testslot(L, lmg_findstate(L), i);
    if (p && p->t == NULL) return luaL_error(L, "%s: operand %d is a released tensor", fn, i);
  }
  if (!a && !b)
    return luaL_error(L, "%s: expected a tensor operand, got %s and %s", fn, luaL_typename(L, 1),
                      luaL_typename(L, 2));
  int bad = a ? 2 : 1;
  return luaL_error(L, "%s: operand %d must be a tensor or number, got %s", fn, bad,
                    luaL_typename(L, bad));
}

/* 'a op b' placed (pushed: true), or false with nothing pushed: then binary's general path
** runs. Tensors or a tensor and a number, either way round. */
static bool placed_binary(lua_State *L, lstate *S, mg_binary op, lslot *pa, lslot *pb) {
  lslot *px = pa ? pa : pb, *pt = pa && pb ? pb : NULL, *p;
  if (px == NULL || px->t == NULL || (pt != NULL && pt->t == NULL)) return false;
  if (pt == NULL && lua_type(L, pa ? 2 : 1) != LUA_TNUMBER) return false;
  size_t n = mg_tensor_binary_placed_size(S->C, op, px->t, pt ? pt->t : NULL);
  if (n == 0 || (p = newplaced(L, S, n, px, pt)) == NULL) return false;
  if (pt != NULL) p->t = mg_tensor_binary_placed(S->C, op, px->t, pt->t, p + 1);
  else p->t = mg_tensor_binary_scalar_placed(S->C, op, px->t, lua_tonumber(L, pa ? 2 : 1),
                                             pa == NULL, p + 1);
  return true;
}

/* Binary op with numbers allowed on either side (one coercion point for every metamethod).
** Errors name the op themselves: the string library calls these metamethods from C for
** "x" * t, where Lua knows no function name. */
static int binary(lua_State *L, mg_binary op) {
  LSTATE_ARG;
  lslot *pa = testslot(L, S, 1), *pb = testslot(L, S, 2);
  if (placed_binary(L, S, op, pa, pb)) return 1;
  mg_tensor *a = slottensor(L, S, 1, pa), *b = slottensor(L, S, 2, pb), *y = NULL;
  mg_status st;
  if (a && b) st = mg_tensor_binary(S->C, op, a, b, &y);
  else if (a && lua_type(L, 2) == LUA_TNUMBER)
    st = mg_tensor_binary_scalar(S->C, op, a, lua_tonumber(L, 2), false, &y);
  else if (b && lua_type(L, 1) == LUA_TNUMBER)
    st = mg_tensor_binary_scalar(S->C, op, b, lua_tonumber(L, 1), true, &y);
  else return operand_error(L, binary_kernels[op].name, a, b);
  return lmg_result(L, S, st, &y);
}

/* t:name(u) / mg.name(t, u) for the binary kernel in upvalue 2 */
static int tensor_binary(lua_State *L) {
  return binary(L, (mg_binary)lua_tointeger(L, lua_upvalueindex(2)));
}

/* The arithmetic metamethods: one function each, so that no upvalue is read per call. */
static int tensor_add(lua_State *L) { return binary(L, MG_B_ADD); }
static int tensor_sub(lua_State *L) { return binary(L, MG_B_SUB); }
static int tensor_mul(lua_State *L) { return binary(L, MG_B_MUL); }
static int tensor_div(lua_State *L) { return binary(L, MG_B_DIV); }
static int tensor_pow(lua_State *L) { return binary(L, MG_B_POW); }

static int tensor_clamp(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  double lo = luaL_optnumber(L, 2, -HUGE_VAL), hi = luaL_optnumber(L, 3, HUGE_VAL);
  return lmg_result(L, S, mg_tensor_clamp(S->C, t, lo, hi, &y), &y);
}

/* t:elu([alpha]) and the other activations with a parameter (issue 12) */
typedef mg_status (*alpha_fn)(mg_ctx *, mg_tensor *, double, mg_tensor **);

static int with_alpha(lua_State *L, alpha_fn fn, double def) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  double alpha = luaL_optnumber(L, 2, def);
  return lmg_result(L, S, fn(S->C, t, alpha, &y), &y);
}

static int tensor_elu(lua_State *L) { return with_alpha(L, mg_tensor_elu, 1.0); }
static int tensor_celu(lua_State *L) { return with_alpha(L, mg_tensor_celu, 1.0); }
static int tensor_leaky_relu(lua_State *L) { return with_alpha(L, mg_tensor_leaky_relu, 0.01); }

/* The option at 'idx': a string or boolean itself, or field 'key' of a table; nil if none. */
static int option_at(lua_State *L, int idx, const char *key) {
  if (lua_istable(L, idx)) {
    lua_getfield(L, idx, key);
    lua_replace(L, idx);
  }
  return lua_type(L, idx);
}

/* t:gelu([approximate]): "none" (default, exact), "tanh"; true/false; or {approximate=} */
static int tensor_gelu(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int ty = option_at(L, 2, "approximate");
  bool th = false;
  if (ty == LUA_TBOOLEAN) th = lua_toboolean(L, 2);
  else if (ty == LUA_TSTRING && strcmp(lua_tostring(L, 2), "tanh") == 0) th = true;
  else if (ty != LUA_TNIL && ty != LUA_TNONE && !(ty == LUA_TSTRING && strcmp(lua_tostring(L, 2), "none") == 0))
    return luaL_argerror(L, 2, lua_pushfstring(L, "approximate must be \"none\", \"tanh\" or a boolean, got %s",
                                               luaL_tolstring(L, 2, NULL)));
  return lmg_result(L, S, mg_tensor_gelu(S->C, t, th, &y), &y);
}

/* t:hard_sigmoid([version]): "keras3" (default: relu6(x + 3) / 6), "keras2" (clip(0.2 x +
** 0.5, 0, 1)), or 3, 2, or {version=} */
static int tensor_hard_sigmoid(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int ty = option_at(L, 2, "version"), k = 0;
  if (ty == LUA_TNIL || ty == LUA_TNONE) k = 3;
  else if (ty == LUA_TNUMBER && lua_tonumber(L, 2) == 3) k = 3;
  else if (ty == LUA_TNUMBER && lua_tonumber(L, 2) == 2) k = 2;
  else if (ty == LUA_TSTRING && strcmp(lua_tostring(L, 2), "keras3") == 0) k = 3;
  else if (ty == LUA_TSTRING && strcmp(lua_tostring(L, 2), "keras2") == 0) k = 2;
  if (k == 0)
    return luaL_argerror(L, 2, lua_pushfstring(L, "version must be \"keras3\" or \"keras2\", got %s",
                                               luaL_tolstring(L, 2, NULL)));
  return lmg_result(L, S, mg_tensor_hard_sigmoid(S->C, t, k, &y), &y);
}

static int tensor_where(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *c = mg_lua_checktensor(L, 1), *y = NULL, *ref = lmg_totensor(L, 2);
  if (ref == NULL) ref = lmg_totensor(L, 3);
  mg_dtype dt = ref ? mg_tensor_dtype(ref) : mg_tensor_dtype(c);
  mg_tensor *a = lmg_checkoperand(L, S, 2, dt);
  mg_tensor **slot = lmg_newslot(L);             /* keeps 'a' alive across errors */
  *slot = a;
  mg_tensor *b = lmg_checkoperand(L, S, 3, dt);
  mg_status st = mg_tensor_where(S->C, c, a, b, &y);
  mg_tensor_release(b);
  return lmg_result(L, S, st, &y);
}

static int tensor_matmul(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *a = mg_lua_checktensor(L, 1), *b = mg_lua_checktensor(L, 2), *y = NULL;
  return lmg_result(L, S, mg_tensor_matmul(S->C, a, b, &y), &y);
}

static int softmax_dim(lua_State *L, bool log_) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? mg_tensor_ndim(t) - 1 : lmg_checkdim(L, 2, mg_tensor_ndim(t));
  if (mg_tensor_ndim(t) == 0) return luaL_error(L, "%s: expected at least 1 dimension", log_ ? "log_softmax" : "softmax");
  return lmg_result(L, S, mg_tensor_softmax(S->C, t, d, log_, &y), &y);
}
static int tensor_softmax(lua_State *L) { return softmax_dim(L, false); }
static int tensor_log_softmax(lua_State *L) { return softmax_dim(L, true); }

/* ================================================================ reductions */

typedef mg_status (*reduce_fn)(mg_ctx *, mg_tensor *, uint32_t, bool, mg_tensor **);

/* t:op() over all elements, t:op(d [, keepdim]) over one dim, t:op({d1, d2}) over several */
static int reduction(lua_State *L, reduce_fn fn) {
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
      lua_Integer z = position(d, nd);
      if (!isint)
        return luaL_argerror(L, 2, lua_pushfstring(L, "dimension %s out of range for a %d-d tensor",
                                                   luaL_tolstring(L, -1, NULL), nd));
      if (z < 0) return luaL_argerror(L, 2, dim_message(L, d, nd));
      if ((mask >> z) & 1u)
        return luaL_argerror(L, 2, lua_pushfstring(L, "dimension %I given twice", d));
      mask |= 1u << z;
      lua_pop(L, 1);
    }
  } else mask = 1u << lmg_checkdim(L, 2, nd);
  return lmg_result(L, S, fn(S->C, t, mask, optbool(L, 3, false), &y), &y);
}

static int tensor_sum(lua_State *L) { return reduction(L, mg_tensor_sum); }
static int tensor_mean(lua_State *L) { return reduction(L, mg_tensor_mean); }
static int tensor_var(lua_State *L) { return reduction(L, mg_tensor_var); }
static int tensor_std(lua_State *L) { return reduction(L, mg_tensor_std); }
static int tensor_norm(lua_State *L) { return reduction(L, mg_tensor_norm); }

static int argextreme(lua_State *L, bool is_min) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? -1 : lmg_checkdim(L, 2, mg_tensor_ndim(t));
  mg_status st = mg_tensor_argmax(S->C, t, d, optbool(L, 3, false), is_min, &y);
  if (st == MG_OK) {                                 /* 1-based indices for Lua */
    double *p = mg_tensor_data(y);
    for (int64_t i = 0, n = mg_tensor_numel(y); i < n; i++) p[i] += 1;
  }
  return lmg_result(L, S, st, &y);
}

static int tensor_argmax(lua_State *L) { return argextreme(L, false); }
static int tensor_argmin(lua_State *L) { return argextreme(L, true); }

/* max()/min(): the value over everything; max(d [, keepdim]): values and 1-based indices */
static int extreme(lua_State *L, bool is_min) {
  reduce_fn fn = is_min ? mg_tensor_amin : mg_tensor_amax;
  if (lua_isnoneornil(L, 2) || lua_istable(L, 2)) return reduction(L, fn);
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *v = NULL, *i = NULL;
  int d = lmg_checkdim(L, 2, mg_tensor_ndim(t));
  lua_settop(L, 3);
  mg_tensor **sv = lmg_newslot(L), **si = lmg_newslot(L);
  if (mg_tensor_max_dim(S->C, t, d, optbool(L, 3, false), is_min, &v, &i) != MG_OK)
    return lmg_fail(L, S, NULL);
  lmg_settensor(L, S, sv, v);
  double *p = mg_tensor_data(i);                     /* 1-based indices for Lua (fresh) */
  for (int64_t k = 0, n = mg_tensor_numel(i); k < n; k++) p[k] += 1;
  lmg_settensor(L, S, si, i);
  return 2;
}

static int tensor_max(lua_State *L) { return extreme(L, false); }
static int tensor_min(lua_State *L) { return extreme(L, true); }

/* ================================================================ scans, reordering, indexing (issue 12) */

static int tensor_logsumexp(lua_State *L) { return reduction(L, mg_tensor_logsumexp); }

/* mg.softmax_cross_entropy(logits, labels): -log_softmax(logits)[label] per row. */
static int tensor_softmax_cross_entropy(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *x = mg_lua_checktensor(L, 1), *labels = mg_lua_checktensor(L, 2), *y = NULL;
  return lmg_result(L, S, mg_tensor_softmax_cross_entropy(S->C, x, labels, &y), &y);
}

/* The dim argument at 'idx' for 'fn' on 't', which must have at least one dimension. */
static int checkdim_of(lua_State *L, mg_tensor *t, int idx, const char *fn) {
  if (mg_tensor_ndim(t) == 0) luaL_error(L, "%s: expected at least 1 dimension", fn);
  return lmg_checkdim(L, idx, mg_tensor_ndim(t));
}

/* t:cumsum(d) / t:cumprod(d) */
static int scan_dim(lua_State *L, bool prod) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = checkdim_of(L, t, 2, prod ? "cumprod" : "cumsum");
  mg_status st = prod ? mg_tensor_cumprod(S->C, t, d, false, &y) : mg_tensor_cumsum(S->C, t, d, false, &y);
  return lmg_result(L, S, st, &y);
}
static int tensor_cumsum(lua_State *L) { return scan_dim(L, false); }
static int tensor_cumprod(lua_State *L) { return scan_dim(L, true); }

/* t:flip(d) or t:flip({d1, d2, ...}) */
static int tensor_flip(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int nd = mg_tensor_ndim(t);
  uint32_t mask = 0;
  if (lua_istable(L, 2)) {
    int n = (int)luaL_len(L, 2);
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, 2, i);
      int isint;
      lua_Integer d = lua_tointegerx(L, -1, &isint), z = d < 0 ? d + nd : d - 1;
      if (!isint || d == 0 || z < 0 || z >= nd)
        return luaL_error(L, "flip: dimension %s out of range for a %d-d tensor", luaL_tolstring(L, -1, NULL), nd);
      if ((mask >> z) & 1u) return luaL_error(L, "flip: dimension %d given twice", (int)d);
      mask |= 1u << z;
      lua_pop(L, 1);
    }
  } else mask = 1u << lmg_checkdim(L, 2, nd);
  return lmg_result(L, S, mg_tensor_flip(S->C, t, mask, &y), &y);
}

/* t:diagonal([offset [, d1 [, d2]]]): defaults 0, 1, 2 */
static int tensor_diagonal(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int nd = mg_tensor_ndim(t);
  if (nd < 2) return luaL_error(L, "diagonal: expected at least 2 dimensions, got %d", nd);
  lua_Integer off = luaL_optinteger(L, 2, 0);
  int d1 = lua_isnoneornil(L, 3) ? 0 : lmg_checkdim(L, 3, nd);
  int d2 = lua_isnoneornil(L, 4) ? 1 : lmg_checkdim(L, 4, nd);
  if (d1 == d2) return luaL_error(L, "diagonal: dimensions %d and %d are the same", d1 + 1, d2 + 1);
  return lmg_result(L, S, mg_tensor_diagonal(S->C, t, (int64_t)off, d1, d2, &y), &y);
}

/* t:diag([k]): a 1-d tensor to the square matrix with it on diagonal k, a 2-d tensor to its
** diagonal k (torch.diag) */
static int tensor_diag(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  lua_Integer k = luaL_optinteger(L, 2, 0);
  int nd = mg_tensor_ndim(t);
  mg_status st;
  luaL_argcheck(L, k >= -(1LL << 52) && k <= (1LL << 52), 2, "diagonal offset out of range");
  if (nd == 1) st = mg_tensor_diag_embed(S->C, t, (int64_t)k, 0, 1, &y);
  else if (nd == 2) st = mg_tensor_diagonal(S->C, t, (int64_t)k, 0, 1, &y);
  else return luaL_error(L, "diag: expected a 1-d or 2-d tensor, got %d dimensions", nd);
  return lmg_result(L, S, st, &y);
}

/* A new tensor of the 0-based indices for the 1-based index tensor at 'idx' (not recorded). */
static mg_tensor *checkindices(lua_State *L, lstate *S, int idx) {
  mg_tensor *ix = lmg_totensor(L, idx), *z = NULL;
  if (ix == NULL) luaL_typeerror(L, idx, "tensor of indices");
  mg_no_grad_enter(S->C);
  mg_status st = mg_tensor_binary_scalar(S->C, MG_B_SUB, ix, 1.0, false, &z);
  mg_no_grad_exit(S->C);
  if (st != MG_OK) lmg_fail(L, S, NULL);
  mg_tensor **slot = lmg_newslot(L);              /* owns 'z' if what follows raises */
  *slot = z;
  return z;
}

/* t:gather(d, index) / t:index_select(d, index) */
static int index_dim(lua_State *L, bool select) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = checkdim_of(L, t, 2, select ? "index_select" : "gather");
  mg_tensor *ix = checkindices(L, S, 3);
  mg_status st = select ? mg_tensor_index_select(S->C, t, d, ix, &y) : mg_tensor_gather(S->C, t, d, ix, &y);
  return lmg_result(L, S, st, &y);
}
static int tensor_gather(lua_State *L) { return index_dim(L, false); }
static int tensor_index_select(lua_State *L) { return index_dim(L, true); }

/* t:take_along_dim(index [, d]): without d, of the flattened tensor */
static int tensor_take_along_dim(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1), *y = NULL;
  int d = lua_isnoneornil(L, 3) ? -1 : checkdim_of(L, t, 3, "take_along_dim");
  mg_tensor *ix = checkindices(L, S, 2);
  return lmg_result(L, S, mg_tensor_take_along_dim(S->C, t, ix, d, &y), &y);
}

/* ================================================================ joins */

/* Tensors of the array at 'idx' into a new C array (free it), count in *n. */
static mg_tensor **checklist(lua_State *L, int idx, int *n) {
  luaL_checktype(L, idx, LUA_TTABLE);
  *n = (int)luaL_len(L, idx);
  if (*n < 1) luaL_argerror(L, idx, "expected a non-empty list of tensors");
  mg_tensor **xs = lua_newuserdatauv(L, (size_t)*n * sizeof *xs, 0);   /* freed by the GC */
  for (int i = 1; i <= *n; i++) {
    lua_rawgeti(L, idx, i);
    xs[i - 1] = lmg_totensor(L, -1);
    if (xs[i - 1] == NULL)
      luaL_argerror(L, idx, lua_pushfstring(L, "entry %d is a %s, expected a tensor", i, luaL_typename(L, -1)));
    lua_pop(L, 1);
  }
  return xs;
}

static int tensor_cat(lua_State *L) {
  LSTATE_ARG;
  int n;
  lua_settop(L, 2);                                  /* the list's C array goes above 'dim' */
  mg_tensor **xs = checklist(L, 1, &n), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? 0 : lmg_checkdim(L, 2, mg_tensor_ndim(xs[0]));
  return lmg_result(L, S, mg_tensor_cat(S->C, n, xs, d, &y), &y);
}

static int tensor_stack(lua_State *L) {
  LSTATE_ARG;
  int n;
  lua_settop(L, 2);                                  /* the list's C array goes above 'dim' */
  mg_tensor **xs = checklist(L, 1, &n), *y = NULL;
  int d = lua_isnoneornil(L, 2) ? 0 : lmg_checkdim(L, 2, mg_tensor_ndim(xs[0]) + 1);
  return lmg_result(L, S, mg_tensor_stack(S->C, n, xs, d, &y), &y);
}

/* split(t, size, d): views of 'size' along d (the last may be shorter) */
static int tensor_split(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1);
  lua_Integer size = luaL_checkinteger(L, 2);
  if (size < 1) return luaL_argerror(L, 2, "split size must be positive");
  if (mg_tensor_ndim(t) == 0) return luaL_error(L, "split: cannot split a 0-d tensor");
  int d = lua_isnoneornil(L, 3) ? 0 : lmg_checkdim(L, 3, mg_tensor_ndim(t));
  int64_t n = mg_tensor_shape(t)[d];
  lua_newtable(L);
  int k = 1;
  for (int64_t at = 0; at < n; at += size, k++) {
    mg_tensor *y = NULL;
    int64_t len = n - at < size ? n - at : size;
    lmg_result(L, S, mg_tensor_narrow(S->C, t, d, at, len, &y), &y);
    lua_rawseti(L, -2, k);
  }
  return 1;
}

static int tensor_unstack(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1);
  if (mg_tensor_ndim(t) == 0) return luaL_error(L, "unstack: cannot unstack a 0-d tensor");
  int d = lua_isnoneornil(L, 2) ? 0 : lmg_checkdim(L, 2, mg_tensor_ndim(t));
  int64_t n = mg_tensor_shape(t)[d];
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    mg_tensor *y = NULL;
    lmg_result(L, S, mg_tensor_select(S->C, t, d, i, &y), &y);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* ================================================================ printing */

#define TOSTRING_HOOK "moongrad.tostring"   /* registry field: the Lua formatter, or nil */

/* tostring(t): "tensor(released)" for a released tensor; else what the hook set by
** mg._set_tostring returns (core.lua's formatter, values as PyTorch prints them), or
** without a hook "tensor(shape=(2,3), dtype=float32)". */
static int tensor_tostring(lua_State *L) {
  lslot *q = toslot(L, 1);
  if (q == NULL) luaL_checkudata(L, 1, MG_TENSOR_MT);      /* raises the usual error */
  mg_tensor **p = &q->t;
  if (*p == NULL) {
    lua_pushliteral(L, "tensor(released)");
    return 1;
  }
  if (lua_getfield(L, LUA_REGISTRYINDEX, TOSTRING_HOOK) != LUA_TNIL) {
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "tostring: the hook must return a string");
    return 1;
  }
  const int64_t *shape = mg_tensor_shape(*p);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "tensor(shape=(");
  for (int i = 0; i < mg_tensor_ndim(*p); i++) {
    lua_pushfstring(L, i ? ",%I" : "%I", (lua_Integer)shape[i]);
    luaL_addvalue(&b);
  }
  lua_pushfstring(L, "), dtype=%s)", mg_dtype_name(mg_tensor_dtype(*p)));
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  return 1;
}

/* mg._rmsprop_update(p, v, g, lr, rho, eps, scale): mg_rmsprop_update_ (optim.RMSprop's
** fused step; p and v written in place). Private: optim.lua checks everything first. */
static int tensor_rmsprop_update(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *p = mg_lua_checktensor(L, 1), *v = mg_lua_checktensor(L, 2), *g = mg_lua_checktensor(L, 3);
  mg_status st = mg_rmsprop_update_(S->C, p, v, g, luaL_checknumber(L, 4), luaL_checknumber(L, 5),
                                    luaL_checknumber(L, 6), luaL_checknumber(L, 7));
  if (st != MG_OK) return lmg_fail(L, S, "_rmsprop_update");
  return 0;
}

/* mg._dropout_mask(rate, shape [, {dtype=}]) -> tensor or nil: mg_dropout_mask_ (what
** K.dropout_mask composes from mg.rand, mg.ge and a product, in one pass); nil for dtypes it
** does not make (the caller composes them). Private: keras_names.lua checks 'rate'. */
static int tensor_dropout_mask(lua_State *L) {
  LSTATE_ARG;
  double rate = luaL_checknumber(L, 1);
  int opt = lmg_options(L, 2);
  int64_t shape[MG_MAXDIM];
  int nd = lmg_checkshape(L, 2, shape);
  mg_dtype dt = lmg_optdtype(L, S, opt, "_dropout_mask");
  mg_tensor **slot = lmg_newslot(L), *t = NULL;
  if (mg_tensor_empty(S->C, dt, nd, shape, &t) != MG_OK) return lmg_fail(L, S, "_dropout_mask");
  lmg_settensor(L, S, slot, t);
  if (!mg_dropout_mask_(S->C, t, rate)) lua_pushnil(L);
  return 1;
}

/* mg._sumsq(t) -> number: mg_sumsq_ (global-norm clipping without a temporary). Private:
** optim.lua passes contiguous float tensors. */
static int tensor_sumsq(lua_State *L) {
  LSTATE_ARG;
  double v = 0;
  if (mg_sumsq_(S->C, mg_lua_checktensor(L, 1), &v) != MG_OK) return lmg_fail(L, S, "_sumsq");
  lua_pushnumber(L, v);
  return 1;
}

static bool same_shape(const mg_tensor *a, const mg_tensor *b) {
  int n = mg_tensor_ndim(a);
  if (n != mg_tensor_ndim(b)) return false;
  const int64_t *sa = mg_tensor_shape(a), *sb = mg_tensor_shape(b);
  for (int i = 0; i < n; i++)
    if (sa[i] != sb[i]) return false;
  return true;
}

/* mg._same_shape(a, b): whether two tensors have one shape (optim.lua's gradient check,
** without building shape strings). */
static int tensor_same_shape(lua_State *L) {
  lua_pushboolean(L, same_shape(mg_lua_checktensor(L, 1), mg_lua_checktensor(L, 2)));
  return 1;
}

/* mg._adam_update(p, m, v, g, lr, beta1, beta2, eps, t, pytorch) -> whether it ran:
** mg_adam_update_ (optim.Adam's fused step; p, m and v written in place) when the four are
** contiguous tensors of one dtype and shape, float32 or float64; false (nothing done)
** otherwise, and optim.lua then takes the element-wise ops. Private: optim.lua checks the
** rest first. */
static int tensor_adam_update(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t[4];
  for (int i = 0; i < 4; i++) t[i] = mg_lua_checktensor(L, i + 1);
  mg_status st = mg_adam_update_(S->C, t[0], t[1], t[2], t[3], luaL_checknumber(L, 5),
                                 luaL_checknumber(L, 6), luaL_checknumber(L, 7),
                                 luaL_checknumber(L, 8), luaL_checknumber(L, 9),
                                 lua_toboolean(L, 10));
  if (st != MG_OK && st != MG_EARG) return lmg_fail(L, S, "_adam_update");
  lua_pushboolean(L, st == MG_OK);      /* MG_EARG: the operands do not fit, nothing written */
  return 1;
}

/* mg._set_tostring(f): tostring(t) of a live tensor returns f(t) (nil: the plain form). */
static int tensor_set_tostring(lua_State *L) {
  if (!lua_isnil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, TOSTRING_HOOK);
  return 0;
}

/* _add_methods(tbl): the ops that the Lua parts compose (moongrad.ops: prod, roll, tile, ...)
** become Tensor methods too, under the names of 'tbl'. */
static int tensor_add_methods(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, LUA_REGISTRYINDEX, METHODS_KEY);
  lua_pushnil(L);
  while (lua_next(L, 1) != 0) {
    luaL_checktype(L, -1, LUA_TFUNCTION);
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, 2);
  }
  return 0;
}

/* ================================================================ registration */

/* The ops of issue 12 that are both methods and functions. */
#define ISSUE12_FUNCTIONS                                                                  \
  { "elu", tensor_elu }, { "celu", tensor_celu }, { "leaky_relu", tensor_leaky_relu },     \
  { "gelu", tensor_gelu }, { "hard_sigmoid", tensor_hard_sigmoid },                     \
  { "logsumexp", tensor_logsumexp }, { "cumsum", tensor_cumsum },                          \
  { "cumprod", tensor_cumprod }, { "flip", tensor_flip }, { "diagonal", tensor_diagonal },   \
  { "diag", tensor_diag }, { "gather", tensor_gather }, { "index_select", tensor_index_select }, \
  { "take_along_dim", tensor_take_along_dim },

/* Everything a Tensor (metatable 'moongrad.Tensor', userdata holding one 'mg_tensor *', NULL
** once released) answers:
**   methods   tensor_methods and tensor_shared below (assign, assign_add, assign_sub for
**             Variables among them), and every elementwise kernel of the op list by its name
**             (setkernels: t:tanh(), t:add(u))
**   fields    t.dtype ("float32"/"float64"), t.name (a Variable's name, else nil), t[i]
**             (select(1, i)) and t[i] = v (fill or copy into that row): tensor_index and
**             tensor_newindex
**   metamethods  __add __sub __mul __div __pow (numbers on either side), __unm, __len
**             (size of dim 1), __index, __newindex, __tostring (tensor_tostring, refined by
**             the hook mg._set_tostring), __gc and __close (one idempotent release), __name
** The only other methods are the ops composed in Lua (moongrad.ops), added through
** mg._add_methods. */

/* Methods that are 'mg' functions too: t:sum(1) is mg.sum(t, 1). */
static const luaL_Reg tensor_shared[] = {
  { "reshape", tensor_reshape }, { "transpose", tensor_transpose },
  { "permute", tensor_permute }, { "squeeze", tensor_squeeze },
  { "unsqueeze", tensor_unsqueeze }, { "narrow", tensor_narrow }, { "select", tensor_select },
  { "expand", tensor_expand }, { "contiguous", tensor_contiguous }, { "clone", tensor_clone },
  { "clamp", tensor_clamp }, { "softmax", tensor_softmax },
  { "log_softmax", tensor_log_softmax }, { "matmul", tensor_matmul },
  { "sum", tensor_sum }, { "mean", tensor_mean }, { "var", tensor_var }, { "std", tensor_std },
  { "norm", tensor_norm }, { "max", tensor_max }, { "min", tensor_min },
  { "argmax", tensor_argmax }, { "argmin", tensor_argmin },
  { "split", tensor_split }, { "unstack", tensor_unstack },
  ISSUE12_FUNCTIONS
  { NULL, NULL } };

/* Methods only. */
static const luaL_Reg tensor_methods[] = {
  { "shape", tensor_shape }, { "size", tensor_size }, { "dim", tensor_dim },
  { "numel", tensor_numel }, { "item", tensor_item }, { "totable", tensor_totable },
  { "get", tensor_get }, { "set", tensor_set }, { "stride", tensor_stride },
  { "is_contiguous", tensor_is_contiguous }, { "is_variable", tensor_is_variable },
  { "view", tensor_reshape }, { "flatten", tensor_flatten }, { "to", tensor_to },
  { "fill", tensor_fill }, { "copy", tensor_copy }, { "assign", tensor_assign },
  { "assign_add", tensor_assign_add }, { "assign_sub", tensor_assign_sub },
  { NULL, NULL } };

static const luaL_Reg tensor_metamethods[] = {
  { "__len", tensor_len },
  { "__newindex", tensor_newindex }, { "__tostring", tensor_tostring },
  { "__gc", tensor_release }, { "__close", tensor_release },
  { NULL, NULL } };

/* 'mg' functions only. */
static const luaL_Reg module_functions[] = {
  { "tensor", tensor_new }, { "zeros", tensor_zeros }, { "ones", tensor_ones },
  { "full", tensor_full }, { "eye", tensor_eye }, { "arange", tensor_arange },
  { "linspace", tensor_linspace }, { "manual_seed", tensor_manual_seed },
  { "rand", tensor_rand }, { "randn", tensor_randn }, { "uniform", tensor_uniform },
  { "glorot_uniform", tensor_glorot_uniform }, { "orthogonal", tensor_orthogonal },
  { "where", tensor_where }, { "cat", tensor_cat }, { "stack", tensor_stack },
  { "_set_tostring", tensor_set_tostring }, { "_unknown_option", tensor_unknown_option },
  { "_rmsprop_update", tensor_rmsprop_update }, { "_sumsq", tensor_sumsq }, { "_dropout_mask", tensor_dropout_mask },
  { "_adam_update", tensor_adam_update }, { "_same_shape", tensor_same_shape },
  { "softmax_cross_entropy", tensor_softmax_cross_entropy },
  { "_add_methods", tensor_add_methods },
  { NULL, NULL } };

/* Set field 'name' of the table at the top to 'f' with upvalues (state, kernel 'k'). */
static void setkernel(lua_State *L, lstate *S, const char *name, lua_CFunction f, int k) {
  lua_pushlightuserdata(L, S);
  lua_pushinteger(L, k);
  lua_pushcclosure(L, f, 2);
  lua_setfield(L, -2, name);
}

/* The elementwise kernels of the op list into the table at the top: unary ones (but 'step',
** relu's derivative) and recorded binary ones as methods and functions alike, comparisons as
** functions only ('methods'). */
static void setkernels(lua_State *L, lstate *S, bool methods) {
  for (size_t i = 0; i < sizeof unary_kernels / sizeof unary_kernels[0]; i++)
    if (unary_kernels[i].k != MG_U_STEP)
      setkernel(L, S, unary_kernels[i].name, tensor_unary, unary_kernels[i].k);
  for (size_t i = 0; i < sizeof binary_kernels / sizeof binary_kernels[0]; i++)
    if (!methods || binary_kernels[i].recorded)
      setkernel(L, S, binary_kernels[i].name, tensor_binary, binary_kernels[i].k);
}

/* Of the metatable at the top, a copy without __gc for placed and batched slots, kept in the
** registry with the batches' metatable and the weak table of the current batch (once per
** state, as 'tensor_mt_ref'). */
static void nogc_metatables(lua_State *L, lstate *S) {
  if (S->nogc_mt_ref != LUA_NOREF) return;
  lua_createtable(L, 0, 2);                          /* batches: __gc */
  lua_pushlightuserdata(L, S);
  lua_pushcclosure(L, batch_gc, 1);
  lua_setfield(L, -2, "__gc");
  lua_pushliteral(L, "moongrad.batch");
  lua_setfield(L, -2, "__name");
  S->batch_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_createtable(L, 1, 0);                          /* the current batch, weakly */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  S->batch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, -3)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  lua_pushnil(L);
  lua_setfield(L, -2, "__gc");
  S->nogc_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Builds 'moongrad.Tensor' and adds the tensor functions to the module at the stack top. */
void lmg_open_tensor(lua_State *L, lstate *S) {
  static const struct { const char *name; lua_CFunction f; mg_binary k; } arith[] = {
    { "__add", tensor_add, MG_B_ADD }, { "__sub", tensor_sub, MG_B_SUB },
    { "__mul", tensor_mul, MG_B_MUL }, { "__div", tensor_div, MG_B_DIV },
    { "__pow", tensor_pow, MG_B_POW } };
  luaL_newmetatable(L, MG_TENSOR_MT);
  if (S->tensor_mt_ref == LUA_NOREF) {               /* once per state (luaopen may run again) */
    lua_pushvalue(L, -1);
    S->tensor_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lmg_setfuncs(L, S, tensor_metamethods);
  for (size_t i = 0; i < sizeof arith / sizeof arith[0]; i++)
    setkernel(L, S, arith[i].name, arith[i].f, arith[i].k);
  setkernel(L, S, "__unm", tensor_unary, MG_U_NEG);
  lua_newtable(L);                                   /* method table */
  lmg_setfuncs(L, S, tensor_methods);
  lmg_setfuncs(L, S, tensor_shared);
  setkernels(L, S, true);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, METHODS_KEY);   /* for mg._add_methods */
  lua_pushlightuserdata(L, S);
  lua_insert(L, -2);
  lua_pushcclosure(L, tensor_index, 2);              /* upvalues: state, method table */
  lua_setfield(L, -2, "__index");
  nogc_metatables(L, S);
  lua_pop(L, 1);
  lmg_setfuncs(L, S, module_functions);
  lmg_setfuncs(L, S, tensor_shared);
  setkernels(L, S, false);
}
