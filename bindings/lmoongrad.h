/*
** lmoongrad.h - what the binding files share: the per-state record, argument helpers.
**
** Names: the host API of moongrad.h is 'mg_lua_*'; the helpers the binding files share are
** 'lmg_*' (declared here, hidden from hosts); Lua-callable statics are named after the type
** or library they belong to: 'tensor_*' (ltensor.c, and mg.Variable in ltape.c), 'tape_*'
** (ltape.c), 'cell_*' (lcells.c), 'npy_*' (lnpy.c), 'io_*' (lio.c), 'lib_*' (lmoongrad.c's settings).
*/
#ifndef LMOONGRAD_H
#define LMOONGRAD_H

#include <lua.h>
#include <lauxlib.h>

#include "mg.h"
#include "moongrad.h"

#define MG_TENSOR_MT "moongrad.Tensor"
#define MG_TAPE_MT "moongrad.GradientTape"

/* A tensor's Lua value. 'owner' tells a slot from any other userdata without fetching its
** metatable (ltensor.c's testslot). 'prev'/'next' link the slots made inside a finalizer into
** their state's 'orphans' list (else NULL): while lua_close runs finalizers, objects made get
** no finalizer of their own, so the state's __gc releases what is still on the list.
** A placed slot (ltensor.c's binary fast path) is followed in its userdata by 'placed' bytes
** holding a tensor built by mg_tensor_binary_placed, header, storage and data, and has the
** metatable without __gc: it owns nothing outside its userdata. While 't' points there
** (right after the slot) that tensor goes to no runtime call but the placed ones; every
** other use first copies it out (ltensor.c's unplace: then 't' is an ordinary reference and
** the metatable the one with __gc).
** A batched slot (ltensor.c's pushresult: the small results of runtime calls) has the
** metatable without __gc and one user value, its batch: a userdata that holds the tensors of
** up to 64 slots and releases them all with its __gc, once none of the slots is reachable.
** Its 't' is borrowed from the batch, and 'released' once the batch's __gc has run. */
typedef struct lbatch lbatch;

typedef struct lslot {
  mg_tensor *t;           /* first: a slot is used as a 'mg_tensor **' */
  const struct lstate *owner;   /* the state record of the lua_State that made it */
  struct lslot *prev, *next;
  size_t placed;          /* bytes after the slot in its userdata (0: an ordinary slot) */
  lbatch *batch;          /* the batch that holds 't' (a batched slot), else NULL */
} lslot;

/* Per lua_State: the runtime context and the collector's trigger. Every C function of the
** module has this record as upvalue 1. */
typedef struct lstate {
  mg_ctx *C;              /* NULL once the state's __gc closed it (lua_close) */
  size_t gc_threshold;    /* live storage bytes that trigger a full collection */
  size_t gc_stepped;      /* live storage bytes when the collector was last stepped */
  lslot orphans;          /* sentinel of the slots made inside finalizers */
  int tensor_mt_ref;      /* the 'moongrad.Tensor' metatable's registry reference (LUA_NOREF
                             before lmg_open_tensor), pushed for every new slot */
  int nogc_mt_ref;        /* the same metatable without __gc, for placed and batched slots */
  int batch_ref;          /* a weak-valued table: [1] is the batch new small results join */
  int batch_mt_ref;       /* the batches' metatable (their __gc) */
} lstate;

/* The running function's state record (upvalue 1), or a Lua error once its context is closed
** (finalizers that run after the state's own while lua_close runs). */
lstate *lmg_state(lua_State *L);
#define LSTATE(L) lmg_state(L)
/* Unlink a slot from its state's orphans (no-op when not linked). */
void lmg_unlink_slot(lslot *s);
/* The state record of 'L', or NULL before luaopen_moongrad (never creates it). */
lstate *lmg_findstate(lua_State *L);

/* Errors. Every binding raises runtime failures through lmg_fail (or lmg_result), errors of
** one argument through luaL_argerror/luaL_typeerror/luaL_argcheck ("bad argument #2 to
** 'reshape' (...)"); sizes and indices print with "%I" (lua_Integer), never through (int)
** casts. luaL_error with the function's name first ("item: tensor has 4 elements, expected
** exactly one") is for what no single argument is to blame for (the receiver's state, two
** arguments that disagree) and in metamethods that C code may call without a function name
** (arithmetic from the string library, t[i] from ipairs).
** lmg_fail raises the context's last message as the error of the user-facing function 'fn'
** (NULL: the message as the runtime wrote it). The runtime names its own op first
** ("copy: ..."); 'fn' takes that place, or goes in front of a message that names none
** ("out of memory ..."). */
int lmg_fail(lua_State *L, lstate *S, const char *fn);
/* Push an empty tensor slot (filled by lmg_settensor): an error before it is filled
** leaves only a harmless empty value. */
mg_tensor **lmg_newslot(lua_State *L);
/* Fill a slot with a new reference, and let the collector know about the bytes. */
void lmg_settensor(lua_State *L, lstate *S, mg_tensor **slot, mg_tensor *t);
/* Push the result of a runtime call: 'st' MG_OK pushes '*t' (a new reference, consumed),
** anything else raises the context's message. A pointer, so that '*t' is read after the
** call that fills it: lmg_result(L, S, mg_tensor_exp(C, x, &y), &y). */
int lmg_result(lua_State *L, lstate *S, mg_status st, mg_tensor **t);
/* Tensor at 'idx', or NULL when it is not a tensor (a released one: NULL too). */
mg_tensor *lmg_totensor(lua_State *L, int idx);
/* Tensor or number at 'idx' (numbers become 0-d tensors of dtype 'dt'): a new reference. */
mg_tensor *lmg_checkoperand(lua_State *L, lstate *S, int idx, mg_dtype dt);
/* 1-based (negative from the end) dim argument at 'idx' of a 'ndim'-d tensor -> 0-based. */
int lmg_checkdim(lua_State *L, int idx, int ndim);
/* Shape given as varargs from 'idx' or one table at 'idx'; stops before an options table.
** Returns ndim. */
int lmg_checkshape(lua_State *L, int idx, int64_t *shape);
/* Index of a trailing options table after 'idx' (0 when none). */
int lmg_options(lua_State *L, int idx);
/* dtype from options table 'opt' (0: none) of function 'fn', or the default; any other key is
** an error (lmg_checkoptions). */
mg_dtype lmg_optdtype(lua_State *L, lstate *S, int opt, const char *fn);
/* Strict options, one checker for C and Lua callers (mg._unknown_option): the table at 'idx'
** has only keys among 'known' (NULL-terminated), else the message (pushed) names 'fn', the
** key and the nearest known key: "GradientTape: unknown option 'persistant' (did you mean
** 'persistent'?)". lmg_unknown_option returns it (NULL when all keys are known);
** lmg_checkoptions raises it. */
const char *lmg_unknown_option(lua_State *L, int idx, const char *fn, const char *const *known);
void lmg_checkoptions(lua_State *L, int idx, const char *fn, const char *const *known);
mg_dtype lmg_checkdtype(lua_State *L, int idx);

/* Register functions with the per-state record as upvalue. */
void lmg_setfuncs(lua_State *L, lstate *S, const luaL_Reg *l);

void lmg_open_tensor(lua_State *L, lstate *S);   /* metatable + module functions */
void lmg_open_tape(lua_State *L, lstate *S);
void lmg_open_cells(lua_State *L, lstate *S);    /* mg.lstm_cell, mg.gru_cell */
void lmg_open_npy(lua_State *L, lstate *S);      /* mg.save, mg.load */
void lmg_open_io(lua_State *L, lstate *S);       /* mg.save_tensors, mg.load_npz, ... */
void lmg_open_linalg(lua_State *L, lstate *S);   /* mg._linalg: the LAPACK primitives */
void lmg_open_summary(lua_State *L, lstate *S);  /* mg._summary: TensorBoard event files */

#endif
