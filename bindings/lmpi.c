/*
** lmpi.c - moongrad_mpi.so, the C half of 'require "moongrad.mpi"' (bindings/moongrad/mpi.lua
** is the other half and the only caller). Built only when CMake finds MPI (option MG_MPI), and
** kept out of moongrad.so so that a moongrad without MPI loads no MPI library.
**
** It knows nothing of tensors: the Lua side hands it the address and size of a contiguous
** tensor's elements (mg._data_ptr) and keeps the tensor alive across the call. Every function
** is synchronous.
**
** Lifetime: MPI_Init_thread on the first call of init(); MPI_Finalize at process exit, from an
** on_exit handler that sees the exit status: 0 finalizes, anything else (a Lua error ended the
** script, os.exit(1)) skips MPI_Finalize, whose fence would wait forever for ranks still
** inside a collective, so that mpirun sees the non-zero status and ends the job. The library
** is linked -z nodelete: lua_close unloads C modules, the handler runs after it.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <mpi.h>

#ifdef _WIN32
#define MGMPI_API __declspec(dllexport)
#else
#define MGMPI_API __attribute__((visibility("default")))
#endif

static int g_inited = 0;          /* 1: we called MPI_Init_thread (or found MPI initialized) */
static MPI_Comm g_comm;           /* MPI_COMM_WORLD dup'ed: the user's collectives, send/recv */
static MPI_Comm g_internal;       /* another dup: mpi.sweep's own messages never meet the user's */
static int g_rank = 0, g_size = 1;

static void at_exit(int status, void *arg) {
  (void)arg;
  int fin = 0;
  if (!g_inited || MPI_Finalized(&fin) != MPI_SUCCESS || fin) return;
  if (status == 0) MPI_Finalize();
  /* else: no MPI_Finalize (see the top of the file); mpirun ends the job */
}

static void check_ok(lua_State *L, int rc, const char *what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  luaL_error(L, "%s: MPI error: %s", what, msg);
}

static void need_init(lua_State *L) {
  if (!g_inited) luaL_error(L, "moongrad.mpi: MPI is not initialized (internal error)");
}

/* init() -> rank, size, thread level provided */
static int l_init(lua_State *L) {
  if (!g_inited) {
    int flag = 0, provided = 0;
    MPI_Initialized(&flag);
    if (!flag) {
      int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
      if (rc != MPI_SUCCESS) return luaL_error(L, "moongrad.mpi: MPI_Init_thread failed (%d)", rc);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_dup(MPI_COMM_WORLD, &g_comm);
    MPI_Comm_dup(MPI_COMM_WORLD, &g_internal);
    MPI_Comm_set_errhandler(g_comm, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(g_internal, MPI_ERRORS_RETURN);
    MPI_Comm_rank(g_comm, &g_rank);
    MPI_Comm_size(g_comm, &g_size);
    g_inited = 1;
    on_exit(at_exit, NULL);
  }
  int level = 0;
  MPI_Query_thread(&level);
  lua_pushinteger(L, g_rank);
  lua_pushinteger(L, g_size);
  lua_pushinteger(L, level);
  return 3;
}

static MPI_Comm comm_of(lua_State *L, int idx) { return lua_toboolean(L, idx) ? g_internal : g_comm; }

static void *checkptr(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return NULL;
  luaL_checktype(L, idx, LUA_TLIGHTUSERDATA);
  return lua_touserdata(L, idx);
}

static int checkcount(lua_State *L, int idx) {
  lua_Integer n = luaL_checkinteger(L, idx);
  if (n < 0 || n > INT32_MAX) luaL_error(L, "moongrad.mpi: a message of %I elements is beyond MPI's int counts", n);
  return (int)n;
}

static MPI_Datatype checktype(lua_State *L, int idx) {
  const char *s = luaL_checkstring(L, idx);
  if (strcmp(s, "float32") == 0) return MPI_FLOAT;
  if (strcmp(s, "float64") == 0) return MPI_DOUBLE;
  luaL_error(L, "moongrad.mpi: dtype '%s' cannot be reduced", s);
  return MPI_DATATYPE_NULL;
}

static int l_barrier(lua_State *L) {
  need_init(L);
  check_ok(L, MPI_Barrier(g_comm), "mpi.barrier");
  return 0;
}

/* allreduce(ptr, count, dtype, op, scale, fname): in place; op "sum" | "max" | "min";
** 'scale' multiplies the result (1/size for "mean"). */
static int l_allreduce(lua_State *L) {
  need_init(L);
  void *p = checkptr(L, 1);
  int n = checkcount(L, 2);
  MPI_Datatype dt = checktype(L, 3);
  const char *op = luaL_checkstring(L, 4);
  double scale = luaL_checknumber(L, 5);
  const char *fn = luaL_optstring(L, 6, "mpi.allreduce");
  MPI_Op o = strcmp(op, "max") == 0 ? MPI_MAX : strcmp(op, "min") == 0 ? MPI_MIN : MPI_SUM;
  if (n == 0) return 0;
  check_ok(L, MPI_Allreduce(MPI_IN_PLACE, p, n, dt, o, g_comm), fn);
  if (scale != 1.0) {
    if (dt == MPI_FLOAT) { float *f = p; for (int i = 0; i < n; i++) f[i] = (float)(f[i] * scale); }
    else { double *d = p; for (int i = 0; i < n; i++) d[i] *= scale; }
  }
  return 0;
}

/* same(signature [, internal]) -> true when every rank passed the same string (one allreduce
** of a 62-bit hash and its negation under MPI_MAX). */
static int l_same(lua_State *L) {
  need_init(L);
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < len; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ULL; }
  long long v[2] = { (long long)(h >> 2), -(long long)(h >> 2) }, r[2];
  check_ok(L, MPI_Allreduce(v, r, 2, MPI_LONG_LONG, MPI_MAX, comm_of(L, 2)), "moongrad.mpi");
  lua_pushboolean(L, r[0] == -r[1]);
  return 1;
}

/* all_ok(flag [, internal]) -> true when every rank passed a true flag */
static int l_all_ok(lua_State *L) {
  need_init(L);
  int v = lua_toboolean(L, 1), r = 0;
  check_ok(L, MPI_Allreduce(&v, &r, 1, MPI_INT, MPI_MIN, comm_of(L, 2)), "moongrad.mpi");
  lua_pushboolean(L, r);
  return 1;
}

/* bcast(ptr, nbytes, root, fname): in place */
static int l_bcast(lua_State *L) {
  need_init(L);
  void *p = checkptr(L, 1);
  int n = checkcount(L, 2), root = (int)luaL_checkinteger(L, 3);
  if (n > 0) check_ok(L, MPI_Bcast(p, n, MPI_BYTE, root, g_comm), luaL_optstring(L, 4, "mpi.broadcast"));
  return 0;
}

/* bcast_string(s or nil, root [, internal]) -> the root's string on every rank */
static int l_bcast_string(lua_State *L) {
  need_init(L);
  int root = (int)luaL_checkinteger(L, 2);
  MPI_Comm c = comm_of(L, 3);
  size_t len = 0;
  const char *s = g_rank == root ? luaL_checklstring(L, 1, &len) : NULL;
  long long n = (long long)len;
  check_ok(L, MPI_Bcast(&n, 1, MPI_LONG_LONG, root, c), "moongrad.mpi");
  if (n > INT32_MAX) return luaL_error(L, "moongrad.mpi: a message of %lld bytes is too long", n);
  if (g_rank == root) { check_ok(L, MPI_Bcast((void *)s, (int)n, MPI_BYTE, root, c), "moongrad.mpi"); lua_pushvalue(L, 1); return 1; }
  luaL_Buffer b;
  char *buf = luaL_buffinitsize(L, &b, (size_t)n);
  check_ok(L, MPI_Bcast(buf, (int)n, MPI_BYTE, root, c), "moongrad.mpi");
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* The rooted byte collectives MPI_Gather and MPI_Scatter, which take the same arguments. */
typedef int (*rooted_fn)(const void *, int, MPI_Datatype, void *, int, MPI_Datatype, int, MPI_Comm);

/* f(sendptr, recvptr, nbytes per rank, root, fname): either pointer may be nil off the root. */
static int rooted(lua_State *L, rooted_fn f, const char *fname) {
  need_init(L);
  void *s = checkptr(L, 1), *r = checkptr(L, 2);
  int n = checkcount(L, 3), root = (int)luaL_checkinteger(L, 4);
  check_ok(L, f(s, n, MPI_BYTE, r, n, MPI_BYTE, root, g_comm), luaL_optstring(L, 5, fname));
  return 0;
}

/* gather(sendptr, recvptr or nil, nbytes, root, fname) */
static int l_gather(lua_State *L) { return rooted(L, MPI_Gather, "mpi.gather"); }

/* allgather(sendptr, recvptr, nbytes, fname) */
static int l_allgather(lua_State *L) {
  need_init(L);
  void *s = checkptr(L, 1), *r = checkptr(L, 2);
  int n = checkcount(L, 3);
  check_ok(L, MPI_Allgather(s, n, MPI_BYTE, r, n, MPI_BYTE, g_comm), luaL_optstring(L, 4, "mpi.allgather"));
  return 0;
}

/* scatter(sendptr or nil, recvptr, nbytes per rank, root, fname) */
static int l_scatter(lua_State *L) { return rooted(L, MPI_Scatter, "mpi.scatter"); }

/* send(ptr or string, nbytes or nil, dest, tag [, internal]) */
static int l_send(lua_State *L) {
  need_init(L);
  const void *p;
  size_t n;
  if (lua_type(L, 1) == LUA_TSTRING) p = lua_tolstring(L, 1, &n);
  else { p = checkptr(L, 1); n = (size_t)checkcount(L, 2); }
  if (n > INT32_MAX) return luaL_error(L, "mpi.send: a message of %zu bytes is too long", n);
  int dest = (int)luaL_checkinteger(L, 3), tag = (int)luaL_checkinteger(L, 4);
  check_ok(L, MPI_Send(p, (int)n, MPI_BYTE, dest, tag, comm_of(L, 5)), "mpi.send");
  return 0;
}

/* recv_string(src or -1 (any), tag or -1 (any) [, internal]) -> string, source, tag */
static int l_recv_string(lua_State *L) {
  need_init(L);
  int src = (int)luaL_checkinteger(L, 1), tag = (int)luaL_checkinteger(L, 2);
  MPI_Comm c = comm_of(L, 3);
  MPI_Status st;
  check_ok(L, MPI_Probe(src < 0 ? MPI_ANY_SOURCE : src, tag < 0 ? MPI_ANY_TAG : tag, c, &st), "mpi.recv");
  int n = 0;
  MPI_Get_count(&st, MPI_BYTE, &n);
  luaL_Buffer b;
  char *buf = luaL_buffinitsize(L, &b, (size_t)n);
  check_ok(L, MPI_Recv(buf, n, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, c, MPI_STATUS_IGNORE), "mpi.recv");
  luaL_pushresultsize(&b, (size_t)n);
  lua_pushinteger(L, st.MPI_SOURCE);
  lua_pushinteger(L, st.MPI_TAG);
  return 3;
}

/* recv(ptr, nbytes, src, tag): the data message that follows a header */
static int l_recv(lua_State *L) {
  need_init(L);
  void *p = checkptr(L, 1);
  int n = checkcount(L, 2), src = (int)luaL_checkinteger(L, 3), tag = (int)luaL_checkinteger(L, 4);
  MPI_Status st;
  check_ok(L, MPI_Recv(p, n, MPI_BYTE, src, tag, g_comm, &st), "mpi.recv");
  int got = 0;
  MPI_Get_count(&st, MPI_BYTE, &got);
  if (got != n) return luaL_error(L, "mpi.recv: expected %d bytes, got %d", n, got);
  return 0;
}

static int l_tag_ub(lua_State *L) {
  need_init(L);
  int *ub = NULL, flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
  lua_pushinteger(L, flag && ub ? *ub : 32767);
  return 1;
}

static int l_abort(lua_State *L) {
  int code = (int)luaL_optinteger(L, 1, 1);
  if (g_inited) MPI_Abort(MPI_COMM_WORLD, code);
  exit(code);
}

static int l_processor(lua_State *L) {
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(name, &len);
  lua_pushlstring(L, name, (size_t)len);
  return 1;
}

static const luaL_Reg funcs[] = {
  { "init", l_init }, { "barrier", l_barrier }, { "allreduce", l_allreduce }, { "same", l_same },
  { "all_ok", l_all_ok }, { "bcast", l_bcast }, { "bcast_string", l_bcast_string },
  { "gather", l_gather }, { "allgather", l_allgather }, { "scatter", l_scatter },
  { "send", l_send }, { "recv_string", l_recv_string }, { "recv", l_recv },
  { "tag_ub", l_tag_ub }, { "abort", l_abort }, { "processor_name", l_processor },
  { NULL, NULL } };

/* The opener mpi.lua calls through package.loadlib (not a require name: 'require
** "moongrad_mpi"' would look for luaopen_moongrad_mpi, the name moongrad.so gives the Lua
** half). */
MGMPI_API int moongrad_mpi_open(lua_State *L);
MGMPI_API int moongrad_mpi_open(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
