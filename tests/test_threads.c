/*
** test_threads.c - independence of interpreters: two threads, each with its own lua_State,
** compute different batch Jacobians at the same time, many times over, and check each one
** against the closed form J[b, i, j] = W[j, i] * (h[b, j] > 0) of y = relu(h) @ W + bias.
**
** The two workers differ in seed, sizes and default dtype, so a generator, a default dtype
** or a tape stack shared between states would show: a reseeded generator would not repeat
** its draw, the dtype would flip, and ops of one thread would land on the other's tape.
** Exit status 0 when both workers pass, 1 otherwise.
*/
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "moongrad.h"

typedef struct worker {
  pthread_barrier_t *start;   /* both states exist before either computes */
  int seed, batch, n, iters;
  const char *dtype;
  int ok;
  char msg[512];
} worker;

/* The script each worker runs: arguments seed, B, N, dtype, iterations. It calls the host's
** check_jacobian(J, h, W) (below) after every Jacobian, and raises on any mismatch. */
static const char SCRIPT[] =
  "local seed, B, N, dtype, iters = ...\n"
  "local mg = require 'moongrad'\n"
  "mg.set_default_dtype(dtype)\n"
  "mg.manual_seed(seed)\n"
  "local h0 = mg.randn(B, N)\n"
  "local W, bias = mg.randn(N, N), mg.randn(N)\n"
  "for it = 1, iters do\n"
  "  mg.manual_seed(seed)\n"
  "  local h = mg.randn(B, N)\n"
  "  local drift = (h - h0):abs():max():item()\n"
  "  if drift ~= 0 then error(('iteration %d: the reseeded generator drifted by %g'):format(it, drift)) end\n"
  "  if mg.get_default_dtype() ~= dtype then error('iteration ' .. it .. ': default dtype changed') end\n"
  "  local tape = mg.GradientTape()\n"
  "  tape:watch(h)\n"
  "  local y = mg.matmul(mg.relu(h), W) + bias\n"
  "  local J = tape:batch_jacobian(y, h)\n"
  "  if J.dtype ~= dtype then error('iteration ' .. it .. ': Jacobian is ' .. J.dtype) end\n"
  "  local err = check_jacobian(J, h, W)\n"
  "  if err > 1e-5 then error(('iteration %d: Jacobian off by %g'):format(it, err)) end\n"
  "end\n"
  "return iters\n";

/* check_jacobian(J, h, W): the largest difference between the (B, N, N) tensor J and the
** closed form, read element by element through the host API (not through runtime ops).
** Raises if the shapes do not fit. */
static int check_jacobian(lua_State *L) {
  mg_tensor *J = mg_lua_checktensor(L, 1), *h = mg_lua_checktensor(L, 2);
  mg_tensor *W = mg_lua_checktensor(L, 3);
  const int64_t *js = mg_tensor_shape(J), *hs = mg_tensor_shape(h);
  int64_t nb = hs[0], n = hs[1];
  if (mg_tensor_ndim(J) != 3 || js[0] != nb || js[1] != n || js[2] != n)
    return luaL_error(L, "check_jacobian: J is not (%d,%d,%d)", (int)nb, (int)n, (int)n);
  double worst = 0;
  for (int64_t b = 0; b < nb; b++)
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < n; j++) {
        int64_t ji[3] = { b, i, j }, hi[2] = { b, j }, wi[2] = { j, i };
        double want = mg_tensor_get(h, hi) > 0 ? mg_tensor_get(W, wi) : 0.0;
        double d = fabs(mg_tensor_get(J, ji) - want);
        if (!(d <= worst)) worst = d;   /* NaN counts as the worst */
      }
  lua_pushnumber(L, worst);
  return 1;
}

static void *work(void *arg) {
  worker *w = arg;
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    snprintf(w->msg, sizeof w->msg, "cannot create a Lua state");
    pthread_barrier_wait(w->start);
    return NULL;
  }
  luaL_openlibs(L);
  luaL_requiref(L, "moongrad", luaopen_moongrad, 0);
  lua_pop(L, 1);
  lua_register(L, "check_jacobian", check_jacobian);
  pthread_barrier_wait(w->start);
  if (luaL_loadbuffer(L, SCRIPT, sizeof SCRIPT - 1, "=worker") != LUA_OK) {
    snprintf(w->msg, sizeof w->msg, "%s", lua_tostring(L, -1));
  } else {
    lua_pushinteger(L, w->seed);
    lua_pushinteger(L, w->batch);
    lua_pushinteger(L, w->n);
    lua_pushstring(L, w->dtype);
    lua_pushinteger(L, w->iters);
    if (lua_pcall(L, 5, 1, 0) != LUA_OK) snprintf(w->msg, sizeof w->msg, "%s", lua_tostring(L, -1));
    else w->ok = lua_tointeger(L, -1) == w->iters;
  }
  lua_close(L);
  return NULL;
}

int main(void) {
  worker ws[2] = {
    { .seed = 11, .batch = 8, .n = 16, .iters = 1000, .dtype = "float32" },
    { .seed = 12345, .batch = 5, .n = 33, .iters = 1000, .dtype = "float64" },
  };
  pthread_t th[2];
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, 2);
  ws[0].start = ws[1].start = &start;
  for (int k = 0; k < 2; k++)
    if (pthread_create(&th[k], NULL, work, &ws[k]) != 0) {
      fprintf(stderr, "test_threads: cannot start thread %d\n", k + 1);
      return 1;
    }
  int failed = 0;
  for (int k = 0; k < 2; k++) {
    pthread_join(th[k], NULL);
    if (!ws[k].ok) {
      fprintf(stderr, "test_threads: worker %d (%s, B=%d, N=%d): %s\n", k + 1, ws[k].dtype,
              ws[k].batch, ws[k].n, ws[k].msg[0] ? ws[k].msg : "did not finish");
      failed = 1;
    } else {
      printf("test_threads: worker %d (%s, B=%d, N=%d): %d Jacobians correct\n", k + 1,
             ws[k].dtype, ws[k].batch, ws[k].n, ws[k].iters);
    }
  }
  pthread_barrier_destroy(&start);
  return failed;
}
