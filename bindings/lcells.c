/*
** lcells.c - the fused recurrent cells as module functions: mg.lstm_cell, mg.gru_cell.
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

static const luaL_Reg cell_functions[] = {
  { "lstm_cell", cell_lstm }, { "gru_cell", cell_gru },
  { NULL, NULL } };

/* Adds the cell functions to the module at the stack top. */
void lmg_open_cells(lua_State *L, lstate *S) { lmg_setfuncs(L, S, cell_functions); }
