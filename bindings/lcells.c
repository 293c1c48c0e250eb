/*
** lcells.c - the fused recurrent cells as module functions: mg.lstm_cell, mg.gru_cell,
** and the whole-sequence mg.lstm_seq, mg.gru_seq.
*/
#include "lmoongrad.h"

#define LSTATE_ARG lstate *S = LSTATE(L)

/* lstm_cell(x, h, c, kernel, recurrent_kernel, bias) -> h', c' */
static int cell_lstm(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *a[6];
  for (int i = 0; i < 6; i++) a[i] = mg_lua_checktensor(L, i + 1);
  lua_settop(L, 6);
  mg_tensor **sh = lmg_newslot(L), **sc = lmg_newslot(L), *h = NULL, *c = NULL;
  if (mg_lstm_cell(S->C, a[0], a[1], a[2], a[3], a[4], a[5], &h, &c) != MG_OK)
    return lmg_fail(L, S, NULL);
  *sh = h;
  lmg_settensor(L, S, sc, c);
  return 2;
}

/* gru_cell(x, h, kernel, recurrent_kernel, bias [, reset_after=true]) -> h' */
static int cell_gru(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *a[5], *h = NULL;
  for (int i = 0; i < 5; i++) a[i] = mg_lua_checktensor(L, i + 1);
  bool ra = lua_isnoneornil(L, 6) ? true : lua_toboolean(L, 6);
  return lmg_result(L, S, mg_gru_cell(S->C, a[0], a[1], a[2], a[3], a[4], ra, &h), &h);
}

/* lstm_seq(x, h0, c0, kernel, recurrent_kernel, bias) -> H, h_T, c_T */
static int cell_lstm_seq(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *a[6];
  for (int i = 0; i < 6; i++) a[i] = mg_lua_checktensor(L, i + 1);
  lua_settop(L, 6);
  mg_tensor **sH = lmg_newslot(L), **sh = lmg_newslot(L), **sc = lmg_newslot(L);
  mg_tensor *H = NULL, *h = NULL, *c = NULL;
  if (mg_lstm_seq(S->C, a[0], a[1], a[2], a[3], a[4], a[5], &H, &h, &c) != MG_OK)
    return lmg_fail(L, S, NULL);
  lmg_settensor(L, S, sH, H);
  lmg_settensor(L, S, sh, h);
  lmg_settensor(L, S, sc, c);
  return 3;
}

/* gru_seq(x, h0, kernel, recurrent_kernel, bias [, reset_after=true]) -> H, h_T */
static int cell_gru_seq(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *a[5];
  for (int i = 0; i < 5; i++) a[i] = mg_lua_checktensor(L, i + 1);
  bool ra = lua_isnoneornil(L, 6) ? true : lua_toboolean(L, 6);
  lua_settop(L, 6);
  mg_tensor **sH = lmg_newslot(L), **sh = lmg_newslot(L), *H = NULL, *h = NULL;
  if (mg_gru_seq(S->C, a[0], a[1], a[2], a[3], a[4], ra, &H, &h) != MG_OK)
    return lmg_fail(L, S, NULL);
  lmg_settensor(L, S, sH, H);
  lmg_settensor(L, S, sh, h);
  return 2;
}

/* mg._lstm_small_max([max]) -> the previous bound: mg.lstm_seq's float32 gate passes run
** gate-major (runtime/seqsmall.c) for units below it that are not a multiple of 16; 0 turns
** that path off. Private: for specs and benchmarks comparing the two paths. */
static int cell_lstm_small_max(lua_State *L) {
  lua_Integer max = luaL_optinteger(L, 1, -1);
  lua_pushinteger(L, (lua_Integer)mg_lstm_small_max(max));
  return 1;
}

static const luaL_Reg cell_functions[] = {
  { "lstm_cell", cell_lstm }, { "gru_cell", cell_gru },
  { "lstm_seq", cell_lstm_seq }, { "gru_seq", cell_gru_seq },
  { "_lstm_small_max", cell_lstm_small_max },
  { NULL, NULL } };

/* Adds the cell functions to the module at the stack top. */
void lmg_open_cells(lua_State *L, lstate *S) { lmg_setfuncs(L, S, cell_functions); }
