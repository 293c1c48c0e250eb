/*
** llinalg.c - the LAPACK primitives of mg.linalg as the hidden table 'mg._linalg'; the
** public functions, argument checks and composites are bindings/moongrad/linalg.lua.
*/
#include "lmoongrad.h"

/* Push 'n' empty slots, run the call through 'st', fill the slots (or raise). */
static int results(lua_State *L, lstate *S, mg_status st, int n, mg_tensor **y, mg_tensor ***slots) {
  if (st != MG_OK) return lmg_fail(L, S, NULL);
  for (int k = 0; k < n; k++) lmg_settensor(L, S, slots[k], y[k]);
  return n;
}

#define SLOTS(n) mg_tensor **sl[n]; for (int k_ = 0; k_ < (n); k_++) sl[k_] = lmg_newslot(L)

/* qr(A, complete) -> Q, R */
static int linalg_qr(lua_State *L) {
  lstate *S = LSTATE(L);
  mg_tensor *A = mg_lua_checktensor(L, 1), *y[2] = { NULL, NULL };
  bool complete = lua_toboolean(L, 2);
  lua_settop(L, 2);
  SLOTS(2);
  return results(L, S, mg_linalg_qr(S->C, A, complete, &y[0], &y[1]), 2, y, sl);
}

/* svd(A, full_matrices, compute_uv) -> U, S, Vh (or S alone) */
static int linalg_svd(lua_State *L) {
  lstate *S = LSTATE(L);
  mg_tensor *A = mg_lua_checktensor(L, 1), *y[3] = { NULL, NULL, NULL };
  bool full = lua_toboolean(L, 2), uv = lua_toboolean(L, 3);
  lua_settop(L, 3);
  if (!uv) {
    SLOTS(1);
    mg_status st = mg_linalg_svd(S->C, A, full, false, NULL, &y[1], NULL);
    return results(L, S, st, 1, &y[1], sl);
  }
  SLOTS(3);
  return results(L, S, mg_linalg_svd(S->C, A, full, true, &y[0], &y[1], &y[2]), 3, y, sl);
}

/* eigh(A, compute_v) -> w, V (or w alone) */
static int linalg_eigh(lua_State *L) {
  lstate *S = LSTATE(L);
  mg_tensor *A = mg_lua_checktensor(L, 1), *y[2] = { NULL, NULL };
  bool v = lua_toboolean(L, 2);
  lua_settop(L, 2);
  if (!v) {
    SLOTS(1);
    return results(L, S, mg_linalg_eigh(S->C, A, false, &y[0], NULL), 1, y, sl);
  }
  SLOTS(2);
  return results(L, S, mg_linalg_eigh(S->C, A, true, &y[0], &y[1]), 2, y, sl);
}

/* eig(A) -> w_re, w_im, V_re, V_im */
static int linalg_eig(lua_State *L) {
  lstate *S = LSTATE(L);
  mg_tensor *A = mg_lua_checktensor(L, 1), *y[4] = { NULL };
  lua_settop(L, 1);
  SLOTS(4);
  return results(L, S, mg_linalg_eig(S->C, A, &y[0], &y[1], &y[2], &y[3]), 4, y, sl);
}

/* solve(A, B) -> X */
static int linalg_solve(lua_State *L) {
  lstate *S = LSTATE(L);
  mg_tensor *A = mg_lua_checktensor(L, 1), *B = mg_lua_checktensor(L, 2), *y = NULL;
  return lmg_result(L, S, mg_linalg_solve(S->C, A, B, &y), &y);
}

/* slogdet(A) -> sign, logabsdet */
static int linalg_slogdet(lua_State *L) {
  lstate *S = LSTATE(L);
  mg_tensor *A = mg_lua_checktensor(L, 1), *y[2] = { NULL, NULL };
  lua_settop(L, 1);
  SLOTS(2);
  return results(L, S, mg_linalg_slogdet(S->C, A, &y[0], &y[1]), 2, y, sl);
}

/* cholesky(A) -> L */
static int linalg_cholesky(lua_State *L) {
  lstate *S = LSTATE(L);
  mg_tensor *A = mg_lua_checktensor(L, 1), *y = NULL;
  return lmg_result(L, S, mg_linalg_cholesky(S->C, A, &y), &y);
}

/* lyapunov_gru(x, h0, W, U, b, Q0, warmup, steps, every, backwards [, mode]) and
** lyapunov_lstm(x, h0, c0, W, U, b, Q0, warmup, steps, every, backwards) -> sum, history */
static int lyapunov_call(lua_State *L, bool lstm) {
  lstate *S = LSTATE(L);
  int n = lstm ? 7 : 6;
  mg_tensor *a[7], *y[2] = { NULL, NULL };
  for (int i = 0; i < n; i++) a[i] = mg_lua_checktensor(L, i + 1);
  int64_t warmup = luaL_checkinteger(L, n + 1), steps = luaL_checkinteger(L, n + 2);
  int64_t every = luaL_checkinteger(L, n + 3);
  bool backwards = lua_toboolean(L, n + 4);
  int mode = lstm ? 2 : (int)luaL_optinteger(L, n + 5, 0);
  lua_settop(L, n + 5);
  SLOTS(2);
  mg_status st = lstm ? mg_lyapunov_lstm(S->C, a[0], a[1], a[2], a[3], a[4], a[5], a[6], warmup,
                                         steps, every, backwards, &y[0], &y[1])
                      : mg_lyapunov_gru(S->C, a[0], a[1], a[2], a[3], a[4], a[5], warmup, steps,
                                        every, backwards, mode, &y[0], &y[1]);
  return results(L, S, st, 2, y, sl);
}
static int linalg_lyapunov_gru(lua_State *L) { return lyapunov_call(L, false); }
static int linalg_lyapunov_lstm(lua_State *L) { return lyapunov_call(L, true); }

static const luaL_Reg linalg_functions[] = {
  { "qr", linalg_qr }, { "svd", linalg_svd }, { "eigh", linalg_eigh }, { "eig", linalg_eig },
  { "solve", linalg_solve }, { "slogdet", linalg_slogdet }, { "cholesky", linalg_cholesky },
  { "lyapunov_gru", linalg_lyapunov_gru }, { "lyapunov_lstm", linalg_lyapunov_lstm },
  { NULL, NULL } };

/* Adds 'mg._linalg' to the module at the stack top. */
void lmg_open_linalg(lua_State *L, lstate *S) {
  lua_newtable(L);
  lmg_setfuncs(L, S, linalg_functions);
  lua_setfield(L, -2, "_linalg");
}
