/*
** moongrad.h - embedding moongrad in a host application.
**
**   lua_State *L = luaL_newstate(); luaL_openlibs(L);
**   luaL_requiref(L, "moongrad", luaopen_moongrad, 1); lua_pop(L, 1);
**
** Each lua_State gets its own runtime context (generator, default dtype, tapes, storage
** pool): separate states in separate threads are independent.
*/
#ifndef MOONGRAD_H
#define MOONGRAD_H

#include <lua.h>
#include "mg.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Open the module: returns 1, the module table on the stack. Sets no global. */
MG_API int luaopen_moongrad(lua_State *L);
/* Push a Lua value for 't' (the value holds its own reference; the caller keeps its own). */
MG_API void mg_lua_pushtensor(lua_State *L, mg_tensor *t);
/* The tensor at 'idx' (borrowed, valid while the value lives), or a Lua error. */
MG_API mg_tensor *mg_lua_checktensor(lua_State *L, int idx);
/* The runtime context of 'L' (created by luaopen_moongrad); NULL once lua_close has closed
** it (every module function then raises "the moongrad context is closed"). */
MG_API mg_ctx *mg_lua_context(lua_State *L);

#ifdef __cplusplus
}
#endif
#endif
