/*
** ltape.c - 'moongrad.GradientTape' userdata (TensorFlow semantics) and mg.Variable.
*/
#include <stdlib.h>
#include <string.h>

#include "lmoongrad.h"

typedef struct ltape { mg_tape *T; } ltape;

static ltape *checktape(lua_State *L, int idx) {
  ltape *p = luaL_checkudata(L, idx, MG_TAPE_MT);
  if (p->T == NULL) luaL_argerror(L, idx, "tape was released");
  return p;
}

/* GradientTape{persistent=false, watch_accessed_variables=true} */
static int tape_new(lua_State *L) {
  lstate *S = LSTATE(L);
  static const char *const known[] = { "persistent", "watch_accessed_variables", NULL };
  bool persistent = false, watch_vars = true;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lmg_checkoptions(L, 1, "GradientTape", known);
    lua_getfield(L, 1, "persistent");
    persistent = lua_toboolean(L, -1);
    lua_getfield(L, 1, "watch_accessed_variables");
    watch_vars = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  ltape *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->T = NULL;
  luaL_setmetatable(L, MG_TAPE_MT);
  if (mg_tape_new(S->C, persistent, watch_vars, &p->T) != MG_OK) return lmg_fail(L, S, NULL);
  return 1;
}

static int tape_release(lua_State *L) {
  ltape *p = luaL_checkudata(L, 1, MG_TAPE_MT);
  if (p->T) {
    mg_tape_stop(p->T);
    mg_tape_release(p->T);
    p->T = NULL;
  }
  return 0;
}

/* __close stops recording but keeps what was recorded (as leaving TF's 'with' block) */
static int tape_stop(lua_State *L) {
  mg_tape_stop(checktape(L, 1)->T);
  return 0;
}

static int tape_watch(lua_State *L) {
  lstate *S = LSTATE(L);
  ltape *p = checktape(L, 1);
  int top = lua_gettop(L);
  for (int i = 2; i <= top; i++) {
    if (lua_istable(L, i) && !lmg_totensor(L, i)) {
      int n = (int)luaL_len(L, i);
      for (int k = 1; k <= n; k++) {
        lua_rawgeti(L, i, k);
        mg_tensor *t = lmg_totensor(L, -1);
        if (!t) return luaL_argerror(L, i, lua_pushfstring(L, "entry %d is not a tensor", k));
        if (mg_tape_watch(p->T, t) != MG_OK) return lmg_fail(L, S, NULL);
        lua_pop(L, 1);
      }
    } else if (mg_tape_watch(p->T, mg_lua_checktensor(L, i)) != MG_OK) {
      return lmg_fail(L, S, NULL);
    }
  }
  return 0;
}

static int tape_watched(lua_State *L) {
  ltape *p = checktape(L, 1);
  size_t n = mg_tape_nwatched(p->T);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    mg_lua_pushtensor(L, mg_tape_watched_at(p->T, i));
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* record(fn, ...): fn's results; recording stops when fn returns or raises */
static int tape_record(lua_State *L) {
  ltape *p = checktape(L, 1);
  if (!lua_isfunction(L, 2) && !luaL_getmetafield(L, 2, "__call"))   /* layers are callable */
    return luaL_typeerror(L, 2, "function or callable value");
  lua_settop(L, lua_gettop(L) - (lua_isfunction(L, 2) ? 0 : 1));     /* drop the __call found */
  int base = 2, status = lua_pcall(L, lua_gettop(L) - 2, LUA_MULTRET, 0);
  if (p->T) mg_tape_stop(p->T);          /* fn may have released the tape ('p' is at 1) */
  if (status != LUA_OK) return lua_error(L);
  return lua_gettop(L) - base + 1;
}

/* Tensors of a tensor-or-array argument: a new C array of borrowed pointers (free it). */
static mg_tensor **tensorlist(lua_State *L, int idx, int *n, bool *single, const char *what) {
  mg_tensor *t = lmg_totensor(L, idx);
  *single = t != NULL;
  if (t) {
    mg_tensor **a = lua_newuserdatauv(L, sizeof *a, 0);
    *a = t;
    *n = 1;
    return a;
  }
  if (!lua_istable(L, idx))
    luaL_argerror(L, idx, lua_pushfstring(L, "%s must be a tensor or an array of tensors", what));
  *n = (int)luaL_len(L, idx);
  if (*n < 1) luaL_argerror(L, idx, lua_pushfstring(L, "%s: empty array", what));
  mg_tensor **a = lua_newuserdatauv(L, (size_t)*n * sizeof *a, 0);    /* collected later */
  for (int i = 1; i <= *n; i++) {
    lua_rawgeti(L, idx, i);
    a[i - 1] = lmg_totensor(L, -1);
    if (!a[i - 1])
      luaL_argerror(L, idx, lua_pushfstring(L, "%s: entry %d is a %s, not a tensor", what, i, luaL_typename(L, -1)));
    lua_pop(L, 1);
  }
  return a;
}

/* Push each result (taking ownership), as one tensor or an array with nil holes and its
** length in field 'n' (optimizers tell a trailing hole from a missing gradient by it). */
static int push_results(lua_State *L, lstate *S, mg_tensor **res, int n, bool single) {
  if (single) {
    if (res[0] == NULL) { lua_pushnil(L); return 1; }
    lmg_settensor(L, S, lmg_newslot(L), res[0]);
    return 1;
  }
  lua_createtable(L, n, 1);
  for (int i = 0; i < n; i++) {
    if (res[i] == NULL) continue;
    lmg_settensor(L, S, lmg_newslot(L), res[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushinteger(L, n);                /* the length, holes included (as table.pack) */
  lua_setfield(L, -2, "n");
  return 1;
}

/* Results go into a userdata array first so a later Lua error cannot leak them. */
typedef struct { int n; mg_tensor *t[]; } results;

static int results_gc(lua_State *L) {
  results *r = lua_touserdata(L, 1);
  for (int i = 0; i < r->n; i++) { mg_tensor_release(r->t[i]); r->t[i] = NULL; }
  return 0;
}

static results *newresults(lua_State *L, int n) {
  results *r = lua_newuserdatauv(L, sizeof *r + (size_t)n * sizeof r->t[0], 0);
  r->n = n;
  memset(r->t, 0, (size_t)n * sizeof r->t[0]);
  if (luaL_newmetatable(L, "moongrad.results")) {
    lua_pushcfunction(L, results_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return r;
}

/* Move results to Lua values (the holder no longer owns them). */
static int hand_out(lua_State *L, lstate *S, results *r, bool single) {
  mg_tensor **tmp = lua_newuserdatauv(L, (size_t)r->n * sizeof *tmp, 0);
  memcpy(tmp, r->t, (size_t)r->n * sizeof *tmp);
  memset(r->t, 0, (size_t)r->n * sizeof r->t[0]);
  return push_results(L, S, tmp, r->n, single);
}

static bool opt_unconnected_zero(lua_State *L, int opt) {
  if (opt == 0) return false;
  lua_getfield(L, opt, "unconnected");
  bool z = false;
  if (!lua_isnil(L, -1)) {
    static const char *const modes[] = { "none", "zero", NULL };
    z = luaL_checkoption(L, lua_gettop(L), NULL, modes) == 1;
  }
  lua_pop(L, 1);
  return z;
}

/* gradient(target, sources [, {output_gradients=, unconnected="none"|"zero"}]) */
static int tape_gradient(lua_State *L) {
  static const char *const known[] = { "output_gradients", "unconnected", NULL };
  lstate *S = LSTATE(L);
  ltape *p = checktape(L, 1);
  int nt, ns, opt = lua_istable(L, 4) ? 4 : 0;
  bool single_t, single_s;
  if (opt) lmg_checkoptions(L, opt, "gradient", known);
  mg_tensor **tg = tensorlist(L, 2, &nt, &single_t, "target");
  mg_tensor **src = tensorlist(L, 3, &ns, &single_s, "sources");
  mg_tensor **seeds = NULL;
  if (opt) {
    lua_getfield(L, opt, "output_gradients");
    if (!lua_isnil(L, -1)) {
      int nseed;
      bool single_g;
      seeds = tensorlist(L, lua_gettop(L), &nseed, &single_g, "output_gradients");
      if (nseed != nt)
        return luaL_argerror(L, 4, lua_pushfstring(L, "%d output_gradients for %d targets",
                                                   nseed, nt));
      for (int i = 0; i < nt; i++) {
        int nd = mg_tensor_ndim(seeds[i]);
        if (nd != mg_tensor_ndim(tg[i]) ||
            memcmp(mg_tensor_shape(seeds[i]), mg_tensor_shape(tg[i]), (size_t)nd * sizeof(int64_t)) != 0)
          return luaL_argerror(L, 4, lua_pushfstring(L, "output_gradients[%d] does not have the shape "
                                                     "of target %d", i + 1, i + 1));
      }
    }
  }
  bool uz = opt_unconnected_zero(L, opt);
  results *r = newresults(L, ns);
  if (mg_tape_gradient(p->T, nt, tg, seeds, 0, ns, src, uz, r->t) != MG_OK)
    return lmg_fail(L, S, NULL);
  return hand_out(L, S, r, single_s);
}

static int jacobian(lua_State *L, bool batch) {
  static const char *const plain[] = { "mode", "unconnected", NULL },
                           *const batched[] = { "mode", "check", "unconnected", NULL };
  lstate *S = LSTATE(L);
  ltape *p = checktape(L, 1);
  mg_tensor *target = mg_lua_checktensor(L, 2);
  int ns, opt = lua_istable(L, 4) ? 4 : 0, mode = 0;
  bool single, check = false;
  if (opt) lmg_checkoptions(L, opt, batch ? "batch_jacobian" : "jacobian", batch ? batched : plain);
  mg_tensor **src = tensorlist(L, 3, &ns, &single, "source");
  if (opt) {
    static const char *const modes[] = { "rev", "fwd", "auto", NULL };
    lua_getfield(L, opt, "mode");
    if (!lua_isnil(L, -1)) mode = luaL_checkoption(L, lua_gettop(L), NULL, modes);
    lua_getfield(L, opt, "check");
    check = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  bool uz = opt_unconnected_zero(L, opt);
  results *r = newresults(L, ns);
  if (mg_tape_jacobian(p->T, target, ns, src, batch, mode, check, uz, r->t) != MG_OK)
    return lmg_fail(L, S, NULL);
  return hand_out(L, S, r, single);
}

static int tape_jacobian(lua_State *L) { return jacobian(L, false); }
static int tape_batch_jacobian(lua_State *L) { return jacobian(L, true); }

/* forward(sources, tangents, targets [, {lead = 0}]): push tangents of sources through what
** was recorded; returns the targets' tangents (an array, or one tensor for one target tensor).
** With lead = 1 every tangent has one extra leading dim of a common size K (K directions in
** one sweep) and so do the results. */
static int tape_forward(lua_State *L) {
  lstate *S = LSTATE(L);
  ltape *p = checktape(L, 1);
  int ns, ntan, nt, lead = 0;
  bool s1, s2, single;
  if (lua_istable(L, 5)) {
    static const char *const known[] = { "lead", NULL };
    lmg_checkoptions(L, 5, "forward", known);
    lua_getfield(L, 5, "lead");
    lead = (int)luaL_optinteger(L, -1, 0);
    lua_pop(L, 1);
    luaL_argcheck(L, lead == 0 || lead == 1, 5, "lead must be 0 or 1");
  }
  lua_settop(L, 4);
  mg_tensor **src = tensorlist(L, 2, &ns, &s1, "sources");
  mg_tensor **tan = tensorlist(L, 3, &ntan, &s2, "tangents");
  mg_tensor **tg = tensorlist(L, 4, &nt, &single, "targets");
  if (ns != ntan)
    return luaL_argerror(L, 3, lua_pushfstring(L, "%d tangents for %d sources", ntan, ns));
  for (int i = 0; i < ns; i++) {
    int nd = mg_tensor_ndim(src[i]);
    if (nd + lead != mg_tensor_ndim(tan[i]) ||
        memcmp(mg_tensor_shape(src[i]), mg_tensor_shape(tan[i]) + lead, (size_t)nd * sizeof(int64_t)) != 0 ||
        (lead && mg_tensor_shape(tan[i])[0] != mg_tensor_shape(tan[0])[0]))
      return luaL_argerror(L, 3, lua_pushfstring(L, lead
                               ? "tangent %d is not (K, shape of its source) with one K for all"
                               : "tangent %d does not have the shape of its source", i + 1));
  }
  results *r = newresults(L, nt);
  if (mg_tape_forward(p->T, ns, src, tan, lead, nt, tg, r->t) != MG_OK) return lmg_fail(L, S, NULL);
  return hand_out(L, S, r, single);
}

static int tape_tostring(lua_State *L) {
  ltape *p = luaL_checkudata(L, 1, MG_TAPE_MT);
  if (p->T == NULL) lua_pushliteral(L, "GradientTape (released)");
  else lua_pushfstring(L, "GradientTape (%s, %I watched)",
                       mg_tape_is_recording(p->T) ? "recording" : "stopped",
                       (lua_Integer)mg_tape_nwatched(p->T));
  return 1;
}

/* ================================================================ Variable */

/* Variable(t [, name]): a trainable copy of 't', updated in place by assign* */
static int tensor_variable(lua_State *L) {
  lstate *S = LSTATE(L);
  mg_tensor *t = lmg_checkoperand(L, S, 1, mg_default_dtype(S->C)), *v = NULL;
  const char *name = luaL_optstring(L, 2, NULL);
  mg_no_grad_enter(S->C);
  mg_status st = mg_tensor_clone(S->C, t, &v);
  mg_no_grad_exit(S->C);
  mg_tensor_release(t);
  if (st == MG_OK) {
    mg_tensor_set_variable(v, true);
    if (name && mg_tensor_set_name(v, name) != MG_OK) {
      mg_tensor_release(v);
      return luaL_error(L, "Variable: out of memory");          /* no message in the context */
    }
  }
  return lmg_result(L, S, st, &v);
}

static const luaL_Reg tape_methods[] = {
  { "watch", tape_watch }, { "watched", tape_watched }, { "stop", tape_stop },
  { "record", tape_record }, { "gradient", tape_gradient }, { "jacobian", tape_jacobian },
  { "batch_jacobian", tape_batch_jacobian }, { "forward", tape_forward },
  { NULL, NULL } };

static const luaL_Reg tape_metamethods[] = {
  { "__gc", tape_release }, { "__close", tape_stop }, { "__tostring", tape_tostring },
  { NULL, NULL } };

void lmg_open_tape(lua_State *L, lstate *S) {
  luaL_newmetatable(L, MG_TAPE_MT);
  lmg_setfuncs(L, S, tape_metamethods);
  lua_newtable(L);
  lmg_setfuncs(L, S, tape_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushlightuserdata(L, S);
  lua_pushcclosure(L, tape_new, 1);
  lua_setfield(L, -2, "GradientTape");
  lua_pushlightuserdata(L, S);
  lua_pushcclosure(L, tensor_variable, 1);
  lua_setfield(L, -2, "Variable");
}
