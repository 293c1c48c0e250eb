/*
** lnpy.c - NumPy .npy files as module functions: mg.save, mg.load.
*/
#include "lmoongrad.h"

#define LSTATE_ARG lstate *S = LSTATE(L)

static int npy_save(lua_State *L) {
  LSTATE_ARG;
  mg_tensor *t = mg_lua_checktensor(L, 1);
  const char *path = luaL_checkstring(L, 2);
  if (mg_npy_save(S->C, t, path) != MG_OK) return lmg_fail(L, S, NULL);
  return 0;
}

static int npy_load(lua_State *L) {
  LSTATE_ARG;
  const char *path = luaL_checkstring(L, 1);
  mg_tensor **slot = lmg_newslot(L), *t = NULL;
  if (mg_npy_load(S->C, path, &t) != MG_OK) return lmg_fail(L, S, NULL);
  lmg_settensor(L, S, slot, t);
  return 1;
}

static const luaL_Reg npy_functions[] = {
  { "save", npy_save }, { "load", npy_load },
  { NULL, NULL } };

/* Adds the file functions to the module at the stack top. */
void lmg_open_npy(lua_State *L, lstate *S) { lmg_setfuncs(L, S, npy_functions); }
