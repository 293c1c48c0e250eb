/*
** host.c - embedding moongrad in a C program.
**
**   host SCRIPT      (ctest runs it on examples/host_jacobian.lua)
**
** The host makes its own lua_State, opens the module, wraps two of its own float arrays as
** tensors without copying (h, a batch of inputs, and W, a weight matrix), hands them to the
** script as globals, and reads the Jacobian the script returns straight from the runtime's
** memory through its strides. It checks the values against the closed form
** J[b, i, j] = W[j, i] * (h[b, j] > 0) of y = relu(h) @ W + bias, and that the runtime
** called the release callback of each array exactly once, when its last view was gone.
** Exit status 0 on success, 1 on any mismatch or error (with a message on stderr).
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lualib.h>

#include "moongrad.h"

#define B 4   /* batch */
#define N 5   /* features */

/* Host memory the runtime borrows: the arrays and how often each was released. */
typedef struct host_array {
  const char *name;
  float *data;
  int released;   /* calls of the release callback */
  int wrong;      /* calls with a pointer that is not 'data' */
} host_array;

/* mg_release_fn: the runtime is done with 'data' (the host still owns it). */
static void release_host(void *ud, void *data) {
  host_array *a = ud;
  a->released++;
  if (data != a->data) a->wrong++;
}

/* Wrap 'a' as a C-order float32 tensor of 'shape' and set it as global 'a->name'; the Lua
** value then holds the only reference. False (message printed) on failure. */
static int push_wrapped(lua_State *L, host_array *a, int ndim, const int64_t *shape) {
  mg_ctx *C = mg_lua_context(L);
  mg_tensor *t;
  if (mg_tensor_wrap(C, MG_F32, ndim, shape, NULL, a->data, release_host, a, &t) != MG_OK) {
    fprintf(stderr, "host: mg_tensor_wrap(%s): %s\n", a->name, mg_errmsg(C));
    return 0;
  }
  if (mg_tensor_data(t) != a->data) {
    fprintf(stderr, "host: the tensor for %s does not view the host array\n", a->name);
    mg_tensor_release(t);
    return 0;
  }
  mg_lua_pushtensor(L, t);   /* the Lua value takes its own reference */
  mg_tensor_release(t);
  lua_setglobal(L, a->name);
  return 1;
}

/* message handler for lua_pcall: the error with a traceback */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : luaL_tolstring(L, 1, NULL), 1);
  return 1;
}

/* Compare the (B, N, N) Jacobian 'J' with the closed form, reading it in place through its
** strides. Returns the number of wrong elements (messages printed for the first few). */
static int check_jacobian(mg_tensor *J, const float *h, const float *W) {
  const int64_t *shape = mg_tensor_shape(J), *st = mg_tensor_strides(J);
  if (mg_tensor_dtype(J) != MG_F32 || mg_tensor_ndim(J) != 3 || shape[0] != B ||
      shape[1] != N || shape[2] != N) {
    fprintf(stderr, "host: expected a float32 (%d,%d,%d) Jacobian, got %s %d-d\n", B, N, N,
            mg_dtype_name(mg_tensor_dtype(J)), mg_tensor_ndim(J));
    return 1;
  }
  const float *j = mg_tensor_data(J);
  int bad = 0;
  for (int b = 0; b < B; b++)
    for (int i = 0; i < N; i++)
      for (int k = 0; k < N; k++) {
        float want = h[b * N + k] > 0 ? W[k * N + i] : 0.0f;
        float got = j[b * st[0] + i * st[1] + k * st[2]];
        if (fabsf(got - want) > 1e-6f && bad++ < 5)
          fprintf(stderr, "host: J[%d,%d,%d] = %g, expected %g\n", b, i, k, got, want);
      }
  return bad;
}

/* Run 'script' with h and W set; check its result. 0 when all is well. */
static int run(lua_State *L, const char *script, host_array *h, host_array *W) {
  int64_t hshape[2] = { B, N }, wshape[2] = { N, N };
  if (!push_wrapped(L, h, 2, hshape) || !push_wrapped(L, W, 2, wshape)) return 1;
  /* Written after wrapping: the script sees these values only if nothing was copied. */
  for (int b = 0; b < B; b++)
    for (int k = 0; k < N; k++) h->data[b * N + k] = (float)((b + 2 * k) % 3) - 0.75f;
  for (int k = 0; k < N * N; k++) W->data[k] = 0.25f * (float)(k % 7) - 0.5f;
  lua_pushinteger(L, B);
  lua_setglobal(L, "B");
  lua_pushinteger(L, N);
  lua_setglobal(L, "N");

  lua_pushcfunction(L, traceback);
  if (luaL_loadfile(L, script) != LUA_OK || lua_pcall(L, 0, 1, -2) != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    return 1;
  }
  mg_tensor *J = mg_lua_checktensor(L, -1);   /* borrowed while the value is on the stack */
  int bad = check_jacobian(J, h->data, W->data);
  lua_pop(L, 2);
  if (h->released || W->released) {
    fprintf(stderr, "host: a host array was released while Lua still held it\n");
    return 1;
  }
  return bad != 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SCRIPT.lua\n", argv[0]);
    return 2;
  }
  static float hbuf[B * N], wbuf[N * N];
  host_array h = { "h", hbuf, 0, 0 }, W = { "W", wbuf, 0, 0 };

  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "host: cannot create a Lua state\n");
    return 1;
  }
  luaL_openlibs(L);
  luaL_requiref(L, "moongrad", luaopen_moongrad, 0);   /* package.loaded, no global */
  lua_pop(L, 1);
  int failed = run(L, argv[1], &h, &W);
  lua_close(L);

  host_array *arrays[2] = { &h, &W };
  for (int k = 0; k < 2; k++)
    if (arrays[k]->released != 1 || arrays[k]->wrong != 0) {
      fprintf(stderr, "host: %s released %d times (%d with a wrong pointer), expected once\n",
              arrays[k]->name, arrays[k]->released, arrays[k]->wrong);
      failed = 1;
    }
  if (!failed) printf("host: (%d,%d,%d) batch Jacobian matches the closed form\n", B, N, N);
  return failed;
}
