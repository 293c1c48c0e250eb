/*
** test_lifecycle.c - a host's view of moongrad's lifetimes (issue 10):
** 1. a tensor made by a finalizer while lua_close runs (it gets no finalizer of its own) is
**    still released when the state goes: the release callback of wrapped host memory runs;
** 2. a host that writes into wrapped memory after an op recorded it and says so with
**    mg_tensor_bump_version gets the in-place error from the gradient, not a wrong gradient;
** 2b. small results kept inside their userdata (placed) behave in two states and through the
**    host API (mg_lua_checktensor copies them out: the host may keep what it gets);
** 3. under AddressSanitizer, a tensor header used after its release is reported (the pool
**    hands its blocks back to malloc/free there instead of recycling them unseen).
** Exit status 0 when every check passes, 1 otherwise.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "moongrad.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_ASAN 1
#endif
#endif

static int failures;
static int released;                     /* release callbacks run */
static double host[2] = { 1, 2 };        /* memory wrapped by 'wrapped' */

static void check(int ok, const char *what) {
  printf("%s: %s\n", ok ? "ok" : "FAIL", what);
  if (!ok) failures++;
}

static void on_release(void *ud, void *data) { (void)ud; (void)data; released++; }

/* wrapped(): a tensor over 'host' whose release the test counts */
static int l_wrapped(lua_State *L) {
  int64_t shape[1] = { 2 };
  mg_tensor *t;
  if (mg_tensor_wrap(mg_lua_context(L), MG_F64, 1, shape, NULL, host, on_release, NULL, &t) != MG_OK)
    return luaL_error(L, "wrap failed");
  mg_lua_pushtensor(L, t);
  mg_tensor_release(t);
  return 1;
}

/* poke(t): the host writes into the wrapped memory and says so */
static int l_poke(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  host[0] = 10;
  host[1] = 10;
  mg_tensor_bump_version(t);
  return 0;
}

/* hostsum(t): the sum of a float32 tensor's elements, read through the host API */
static int l_hostsum(lua_State *L) {
  mg_tensor *t = mg_lua_checktensor(L, 1);
  const float *x = mg_tensor_data(t);
  double s = 0;
  for (int64_t i = 0; i < mg_tensor_numel(t); i++) s += x[i];
  lua_pushnumber(L, s);
  return 1;
}

static mg_tensor *kept;                  /* keep(t): a reference the host holds on to */
static int l_keep(lua_State *L) {
  kept = mg_tensor_retain(mg_lua_checktensor(L, 1));
  return 0;
}

static lua_State *newstate(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "moongrad", luaopen_moongrad, 0);
  lua_setglobal(L, "mg");
  lua_register(L, "wrapped", l_wrapped);
  lua_register(L, "poke", l_poke);
  lua_register(L, "hostsum", l_hostsum);
  lua_register(L, "keep", l_keep);
  return L;
}

static int run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    printf("script error: %s\n", lua_tostring(L, -1));
    return 0;
  }
  return 1;
}

static void finalizer_tensor(void) {
  released = 0;
  lua_State *L = newstate();
  int ok = run(L, "LATE = setmetatable({}, { __gc = function() KEEP = wrapped() end })");
  lua_close(L);
  check(ok && released == 1, "a tensor made by a finalizer during lua_close is released");
}

static void host_write(void) {
  released = 0;
  host[0] = 1;
  host[1] = 2;
  lua_State *L = newstate();
  int ok = run(L,
    "local x = wrapped()\n"
    "local tape = mg.GradientTape()\n"
    "tape:watch(x)\n"
    "local y = (x * x):sum()\n"
    "poke(x)\n"
    "local ok, msg = pcall(tape.gradient, tape, y, x)\n"
    "assert(not ok and msg:find('mul: a tensor saved for the gradient was modified in place', 1, true), msg)\n");
  lua_close(L);
  check(ok && released == 1, "a host write announced by mg_tensor_bump_version is detected");
}

/* Small results of 'a + b' live inside their userdata (placed, no finalizer) until the host
** API or any other use copies them out, and recorded ones are finalized in batches
** (ltensor.c): two states make and use both independently, one closing first with its
** results, tape and batches alive, and a reference the host keeps outlives the Lua value. */
static void two_states_placed(void) {
  lua_State *L1 = newstate(), *L2 = newstate();
  const char *rec =
    "T = mg.GradientTape(); T:watch(A); X = A\n"
    "for i = 1, 150 do X = X * 0.5 + A; if i == 70 then MID = X end end\n"
    "G = X:sum(); T:stop()";
  int ok = run(L1, "A = mg.ones(16) + mg.ones(16); B = A * 3; V = (A + B):reshape(4, 4)") &&
           run(L2, "A = mg.full({16}, 5) - 1; S = hostsum(A); keep(A * 2); collectgarbage()") &&
           run(L1, rec) && run(L2, rec) && run(L2, "T = nil; collectgarbage()") &&
           run(L1, "assert(hostsum(B) == 96 and V:sum():item() == 128)\n"
                   "assert(T:gradient(G, A):get(1) == 2)");
  lua_close(L1);
  ok = ok && run(L2, "collectgarbage(); assert(S == 64 and hostsum(A) == 64)\n"
                     "assert(MID:get(1) == 8 and X:get(16) == 8)\n"
                     "local C = A + A; collectgarbage(); assert(C:sum():item() == 128)");
  lua_close(L2);
  const float *k = kept ? mg_tensor_data(kept) : NULL;
  ok = ok && k != NULL && k[0] == 8 && k[15] == 8;
  mg_tensor_release(kept);
  kept = NULL;
  check(ok, "placed and batched results in two states, one closed first, and a host reference that outlives its value");
}

static void asan_sees_use_after_free(void) {
#ifdef HAVE_ASAN
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    mg_ctx *C = mg_ctx_new();
    int64_t shape[1] = { 4 };
    mg_tensor *a, *b;
    mg_tensor_zeros(C, MG_F32, 1, shape, &a);
    mg_tensor_release(a);
    mg_tensor_zeros(C, MG_F32, 1, shape, &b);   /* a recycling pool would hand 'a' back */
    volatile int nd = mg_tensor_ndim(a);        /* use after release */
    (void)nd;
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  check(!(WIFEXITED(status) && WEXITSTATUS(status) == 0),
        "AddressSanitizer reports a tensor used after its release");
#else
  printf("skip: AddressSanitizer is not in this build\n");
#endif
}

int main(void) {
  finalizer_tensor();
  host_write();
  two_states_placed();
  asan_sees_use_after_free();
  return failures ? 1 : 0;
}
