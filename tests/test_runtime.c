/*
** test_runtime.c - C unit tests of the runtime through its public header alone (no Lua):
** statuses and messages, broadcasting, views, matmul, reductions, the tape and Jacobians,
** host memory with its release callback, independent contexts, safe file writing, the interrupt flag,
** LAPACK's linalg.
*/
#define _POSIX_C_SOURCE 200809L   /* mkdtemp, setrlimit, symlink */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mg.h"

static int failures, checks;

#define CHECK(cond) do {                                                            \
    checks++;                                                                       \
    if (!(cond)) { failures++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
  } while (0)

#define CHECK_NEAR(a, b, tol) CHECK(fabs((double)(a) - (double)(b)) <= (tol))

static mg_tensor *vec(mg_ctx *C, mg_dtype dt, int n, const double *v) {
  int64_t shape[1] = { n };
  mg_tensor *t = NULL;
  if (mg_tensor_empty(C, dt, 1, shape, &t) != MG_OK) return NULL;
  for (int64_t i = 0; i < n; i++) mg_tensor_set(t, &i, v[i]);
  return t;
}

static double at2(mg_tensor *t, int64_t i, int64_t j) {
  int64_t idx[2] = { i, j };
  return mg_tensor_get(t, idx);
}

static void test_errors(mg_ctx *C) {
  int64_t s23[2] = { 2, 3 }, s45[2] = { 4, 5 };
  mg_tensor *a, *b, *y = (mg_tensor *)0x1;
  CHECK(mg_tensor_zeros(C, MG_F32, 2, s23, &a) == MG_OK);
  CHECK(mg_tensor_zeros(C, MG_F32, 2, s45, &b) == MG_OK);
  CHECK(mg_tensor_matmul(C, a, b, &y) == MG_ESHAPE);
  CHECK(y == (mg_tensor *)0x1);                        /* outputs untouched on failure */
  CHECK(strcmp(mg_errmsg(C), "matmul: shapes (2,3) and (4,5) are not aligned (3 ~= 4)") == 0);
  CHECK(mg_tensor_binary(C, MG_B_ADD, a, b, &y) == MG_ESHAPE);
  CHECK(strstr(mg_errmsg(C), "add: shapes (2,3) and (4,5) cannot be broadcast") != NULL);
  int64_t bad[1] = { -1 };
  CHECK(mg_tensor_empty(C, MG_F32, 1, bad, &y) == MG_ESHAPE);
  CHECK(mg_tensor_narrow(C, a, 1, 2, 5, &y) == MG_EINDEX);
  CHECK(mg_npy_load(C, "/nonexistent/x.npy", &y) == MG_EIO);
  CHECK(strstr(mg_errmsg(C), "/nonexistent/x.npy") != NULL);
  mg_tensor_release(a);
  mg_tensor_release(b);
}

static void test_broadcast_views(mg_ctx *C) {
  double av[3] = { 1, 2, 3 }, bv[2] = { 10, 20 };
  mg_tensor *a = vec(C, MG_F64, 3, av), *b = vec(C, MG_F64, 2, bv), *bc, *y, *t, *s;
  int64_t col[2] = { 2, 1 };
  CHECK(mg_tensor_reshape(C, b, 2, col, &bc) == MG_OK);
  CHECK(mg_tensor_binary(C, MG_B_ADD, a, bc, &y) == MG_OK);       /* (3) + (2,1) -> (2,3) */
  CHECK(mg_tensor_ndim(y) == 2 && mg_tensor_shape(y)[0] == 2 && mg_tensor_shape(y)[1] == 3);
  CHECK(at2(y, 1, 2) == 23);
  CHECK(mg_tensor_transpose(C, y, 0, 1, &t) == MG_OK);
  CHECK(!mg_tensor_is_contiguous(t) && at2(t, 2, 1) == 23);
  mg_tensor_fill_(t, 7);                                           /* a view writes through */
  CHECK(at2(y, 0, 0) == 7);
  CHECK(mg_tensor_sum(C, y, ~0u, false, &s) == MG_OK);
  CHECK(mg_tensor_ndim(s) == 0 && mg_tensor_get(s, NULL) == 42);
  mg_tensor *objs[] = { a, b, bc, y, t, s };
  for (size_t i = 0; i < sizeof objs / sizeof *objs; i++) mg_tensor_release(objs[i]);
}

static void test_matmul(mg_ctx *C) {
  int64_t s[2] = { 2, 2 };
  mg_tensor *a, *b, *y;
  mg_tensor_empty(C, MG_F32, 2, s, &a);
  mg_tensor_empty(C, MG_F32, 2, s, &b);
  double av[4] = { 1, 2, 3, 4 }, bv[4] = { 5, 6, 7, 8 };
  for (int64_t i = 0; i < 4; i++) {
    int64_t idx[2] = { i / 2, i % 2 };
    mg_tensor_set(a, idx, av[i]);
    mg_tensor_set(b, idx, bv[i]);
  }
  CHECK(mg_tensor_matmul(C, a, b, &y) == MG_OK);
  CHECK(at2(y, 0, 0) == 19 && at2(y, 0, 1) == 22 && at2(y, 1, 0) == 43 && at2(y, 1, 1) == 50);
  mg_tensor_release(a);
  mg_tensor_release(b);
  mg_tensor_release(y);
}

/* d/dx sum(tanh(x) * x) = tanh(x) + x (1 - tanh(x)^2); and a batch Jacobian. */
static void test_tape(mg_ctx *C) {
  double xv[3] = { -1, 0.5, 2 };
  mg_tensor *x = vec(C, MG_F64, 3, xv), *th, *p, *y, *g = NULL, *g2 = NULL;
  mg_tape *T;
  CHECK(mg_tape_new(C, false, true, &T) == MG_OK);
  CHECK(mg_tape_watch(T, x) == MG_OK);
  mg_tensor_unary(C, MG_U_TANH, x, &th);
  mg_tensor_binary(C, MG_B_MUL, th, x, &p);
  mg_tensor_sum(C, p, ~0u, false, &y);
  CHECK(mg_tape_gradient(T, 1, &y, NULL, 0, 1, &x, false, &g) == MG_OK);
  for (int64_t i = 0; i < 3; i++) {
    double t = tanh(xv[i]);
    CHECK_NEAR(mg_tensor_get(g, &i), t + xv[i] * (1 - t * t), 1e-14);
  }
  CHECK(mg_tape_gradient(T, 1, &y, NULL, 0, 1, &x, false, &g2) == MG_ESTATE);   /* spent */
  CHECK(strstr(mg_errmsg(C), "persistent") != NULL);
  mg_tape_release(T);
  mg_tensor *objs[] = { x, th, p, y, g };
  for (size_t i = 0; i < sizeof objs / sizeof *objs; i++) mg_tensor_release(objs[i]);

  int64_t s[2] = { 2, 3 };
  mg_tensor *h, *r, *J;
  mg_tensor_empty(C, MG_F64, 2, s, &h);
  for (int64_t i = 0; i < 6; i++) {
    int64_t idx[2] = { i / 3, i % 3 };
    mg_tensor_set(h, idx, (double)i - 2.5);
  }
  CHECK(mg_tape_new(C, true, true, &T) == MG_OK);
  mg_tape_watch(T, h);
  mg_tensor_unary(C, MG_U_RELU, h, &r);
  CHECK(mg_tape_jacobian(T, r, 1, &h, true, 0, true, false, &J) == MG_OK);
  CHECK(mg_tensor_ndim(J) == 3 && mg_tensor_shape(J)[0] == 2);
  for (int64_t b = 0; b < 2; b++)
    for (int64_t i = 0; i < 3; i++)
      for (int64_t j = 0; j < 3; j++) {
        int64_t idx[3] = { b, i, j }, hi[2] = { b, j };
        CHECK(mg_tensor_get(J, idx) == (i == j && mg_tensor_get(h, hi) > 0 ? 1.0 : 0.0));
      }
  mg_tape_stop(T);
  mg_tape_release(T);
  mg_tensor_release(h);
  mg_tensor_release(r);
  mg_tensor_release(J);
}

static int released;
static void on_release(void *ud, void *data) { released += (ud == data); }

static void test_wrap(mg_ctx *C) {
  float host[6] = { 1, 2, 3, 4, 5, 6 };
  int64_t s[2] = { 2, 3 };
  mg_tensor *t, *v;
  CHECK(mg_tensor_wrap(C, MG_F32, 2, s, NULL, host, on_release, host, &t) == MG_OK);
  CHECK(mg_tensor_select(C, t, 0, 1, &v) == MG_OK);
  mg_tensor_release(t);
  CHECK(released == 0);                                 /* a view still uses it */
  int64_t i = 2;
  CHECK(mg_tensor_get(v, &i) == 6);
  mg_tensor_release(v);
  CHECK(released == 1);
}

/* A matmul whose copy of 'b' cannot be allocated fails with nothing changed: the caller's 'b'
** keeps its reference (the host memory is released once, when the caller lets go) and the
** copy already made of 'a' is freed. */
static void test_matmul_nomem(mg_ctx *C) {
  static float one = 2;
  int64_t s11[2] = { 1, 1 }, sb[2] = { (int64_t)1 << 20, (int64_t)1 << 18 }, sa[2] = { 3, 1 << 20 };
  mg_tensor *w, *b, *a1, *a, *y = (mg_tensor *)0x1;
  size_t live = mg_live_bytes(C);
  released = 0;
  CHECK(mg_tensor_wrap(C, MG_F32, 2, s11, NULL, &one, on_release, &one, &w) == MG_OK);
  CHECK(mg_tensor_expand(C, w, 2, sb, &b) == MG_OK);   /* (2^20, 2^18), strides 0: 1 TB as a copy */
  mg_tensor_release(w);
  CHECK(mg_tensor_full(C, MG_F32, 2, s11, 1, &a1) == MG_OK);
  CHECK(mg_tensor_expand(C, a1, 2, sa, &a) == MG_OK);  /* strides 0: copied before BLAS */
  mg_tensor_release(a1);
  CHECK(mg_tensor_matmul(C, a, b, &y) == MG_ENOMEM);
  CHECK(y == (mg_tensor *)0x1);
  CHECK(released == 0);                                 /* 'b' is still ours */
  CHECK(mg_tensor_get(b, (int64_t[]){ 5, 7 }) == 2);
  mg_tensor_release(b);
  CHECK(released == 1);
  mg_tensor_release(a);
  CHECK(mg_live_bytes(C) == live);                      /* the copy of 'a' did not leak */
}

/* The interrupt flag: a set flag stops long loops with MG_EINTR "<op>: interrupted!" and
** frees what they made; nothing is recorded; a clear flag (or another context) runs as ever;
** writes into existing tensors run to their end. */
static void test_interrupt(mg_ctx *C) {
  static volatile sig_atomic_t flag = 0;
  mg_tensor *one, *big, *y = (mg_tensor *)0x1, *x, *sq, *s, *g = NULL, *m3 = NULL, *mm;
  int64_t s11[2] = { 1, 1 }, sbig[2] = { 4096, 4096 }, s3[3] = { 64, 8, 8 };
  double xv[2] = { 1, 2 };
  CHECK(mg_tensor_full(C, MG_F64, 2, s11, 1.0, &one) == MG_OK);
  CHECK(mg_tensor_expand(C, one, 2, sbig, &big) == MG_OK);
  x = vec(C, MG_F64, 2, xv);
  mg_tape *T;
  CHECK(mg_tape_new(C, false, true, &T) == MG_OK);
  mg_tape_watch(T, x);
  CHECK(mg_tensor_binary(C, MG_B_MUL, x, x, &sq) == MG_OK);
  size_t live = mg_live_bytes(C);
  mg_ctx_set_interrupt_flag(C, &flag);
  flag = 1;
  CHECK(mg_tensor_sum(C, big, ~0u, false, &y) == MG_EINTR);
  CHECK(strcmp(mg_errmsg(C), "sum: interrupted!") == 0);
  CHECK(y == (mg_tensor *)0x1);
  CHECK(mg_tensor_binary(C, MG_B_ADD, big, big, &y) == MG_EINTR);   /* elementwise */
  CHECK(strcmp(mg_errmsg(C), "add: interrupted!") == 0);
  CHECK(mg_tensor_unary(C, MG_U_EXP, big, &y) == MG_EINTR);
  CHECK(strcmp(mg_errmsg(C), "exp: interrupted!") == 0);
  CHECK(y == (mg_tensor *)0x1 && mg_live_bytes(C) == live);   /* partial results freed */
  CHECK(mg_tensor_zeros(C, MG_F64, 3, s3, &m3) == MG_OK);
  CHECK(mg_tensor_matmul(C, m3, m3, &y) == MG_EINTR);                /* per batch matrix */
  CHECK(strcmp(mg_errmsg(C), "matmul: interrupted!") == 0);
  CHECK(mg_tensor_softmax(C, m3, 2, true, &y) == MG_EINTR);          /* per row */
  CHECK(strcmp(mg_errmsg(C), "log_softmax: interrupted!") == 0);
  CHECK(mg_tensor_argmax(C, m3, 0, false, false, &y) == MG_EINTR);
  CHECK(strcmp(mg_errmsg(C), "argmax: interrupted!") == 0);
  CHECK(y == (mg_tensor *)0x1);
  mg_tensor *cx, *cW, *cU, *cb, *ch = (mg_tensor *)0x1, *cc = (mg_tensor *)0x1;
  int64_t sx[2] = { 2, 3 }, sW[2] = { 3, 8 }, sU[2] = { 2, 8 }, sb[1] = { 8 }, sh[2] = { 2, 2 };
  mg_tensor *h0, *c0;
  CHECK(mg_tensor_zeros(C, MG_F64, 2, sx, &cx) == MG_OK);
  CHECK(mg_tensor_zeros(C, MG_F64, 2, sW, &cW) == MG_OK);
  CHECK(mg_tensor_zeros(C, MG_F64, 2, sU, &cU) == MG_OK);
  CHECK(mg_tensor_zeros(C, MG_F64, 1, sb, &cb) == MG_OK);
  CHECK(mg_tensor_zeros(C, MG_F64, 2, sh, &h0) == MG_OK);
  CHECK(mg_tensor_zeros(C, MG_F64, 2, sh, &c0) == MG_OK);
  CHECK(mg_lstm_cell(C, cx, h0, c0, cW, cU, cb, &ch, &cc) == MG_EINTR);   /* per step */
  CHECK(strcmp(mg_errmsg(C), "lstm_cell: interrupted!") == 0 && ch == (mg_tensor *)0x1);
  mg_tensor *cells[] = { cx, cW, cU, cb, h0, c0 };
  for (size_t i = 0; i < 6; i++) mg_tensor_release(cells[i]);
  CHECK(mg_tensor_copy_(C, m3, one) == MG_OK);                       /* writes: to the end */
  int64_t last[3] = { 63, 7, 7 };
  CHECK(mg_tensor_get(m3, last) == 1);
  CHECK(mg_tensor_sum(C, sq, ~0u, false, &s) == MG_OK);              /* short: never polls */
  CHECK(mg_tape_gradient(T, 1, &s, NULL, 0, 1, &x, false, &g) == MG_EINTR);   /* per node */
  CHECK(strcmp(mg_errmsg(C), "gradient: interrupted!") == 0 && g == NULL);
  flag = 0;                                    /* not spent by the interrupted sweep */
  CHECK(mg_tape_gradient(T, 1, &s, NULL, 0, 1, &x, false, &g) == MG_OK);
  for (int64_t i = 0; i < 2; i++) CHECK(mg_tensor_get(g, &i) == 2 * xv[i]);
  mg_tensor_release(g);
  g = NULL;
  flag = 1;
  mg_ctx *other = mg_ctx_new();                                      /* its own flag: none */
  mg_tensor *o1, *ob, *os;
  CHECK(mg_tensor_full(other, MG_F32, 2, s11, 1.0, &o1) == MG_OK);
  CHECK(mg_tensor_expand(other, o1, 2, sbig, &ob) == MG_OK);
  CHECK(mg_tensor_sum(other, ob, ~0u, false, &os) == MG_OK);
  int64_t none[1] = { 0 };
  CHECK(mg_tensor_get(os, none) == 4096.0 * 4096.0);
  mg_tensor *objs[] = { o1, ob, os };
  for (size_t i = 0; i < 3; i++) mg_tensor_release(objs[i]);
  mg_ctx_close(other);
  flag = 0;                                    /* cleared by the host: all runs again */
  CHECK(mg_tensor_sum(C, big, ~0u, false, &y) == MG_OK);
  CHECK(mg_tensor_get(y, none) == 4096.0 * 4096.0);
  CHECK(mg_tensor_matmul(C, m3, m3, &mm) == MG_OK);
  mg_tape_release(T);
  CHECK(mg_tape_new(C, false, true, &T) == MG_OK);   /* the interrupted sum recorded nothing */
  mg_tape_watch(T, x);
  mg_tensor *objs2[] = { y, sq, s, mm };
  for (size_t i = 0; i < 4; i++) mg_tensor_release(objs2[i]);
  CHECK(mg_tensor_binary(C, MG_B_MUL, x, x, &sq) == MG_OK);
  flag = 1;
  CHECK(mg_tensor_sum(C, big, ~0u, false, &y) == MG_EINTR);          /* while T records */
  flag = 0;
  CHECK(mg_tensor_sum(C, sq, ~0u, false, &s) == MG_OK);
  CHECK(mg_tape_gradient(T, 1, &s, NULL, 0, 1, &x, false, &g) == MG_OK);
  for (int64_t i = 0; i < 2; i++) CHECK(mg_tensor_get(g, &i) == 2 * xv[i]);
  mg_ctx_set_interrupt_flag(C, NULL);
  mg_tape_release(T);
  mg_tensor *objs3[] = { one, big, x, sq, s, g, m3 };
  for (size_t i = 0; i < 7; i++) mg_tensor_release(objs3[i]);
}

/* Two contexts share nothing: seeds and default dtypes are per context. */
static void test_contexts(void) {
  mg_ctx *A = mg_ctx_new(), *B = mg_ctx_new();
  int64_t s[1] = { 4 };
  mg_tensor *a, *b;
  mg_manual_seed(A, 7);
  mg_manual_seed(B, 7);
  mg_set_default_dtype(A, MG_F64);
  CHECK(mg_default_dtype(B) == MG_F32);
  mg_tensor_empty(A, MG_F64, 1, s, &a);
  mg_tensor_empty(B, MG_F64, 1, s, &b);
  mg_fill_normal(A, a, 0, 1);
  mg_fill_normal(B, b, 0, 1);
  for (int64_t i = 0; i < 4; i++) CHECK(mg_tensor_get(a, &i) == mg_tensor_get(b, &i));
  mg_ctx_close(A);                                      /* tensors may outlive their context */
  mg_tensor_release(a);
  mg_tensor_release(b);
  mg_ctx_close(B);
}

/* A uniform fill visits the elements in C order: a contiguous tensor (filled through its
** pointer) and a transposed view (element by element) get the same numbers in that order. */
static void test_fill_order(void) {
  for (int f64 = 0; f64 <= 1; f64++) {
    mg_ctx *A = mg_ctx_new(), *B = mg_ctx_new();
    mg_dtype dt = f64 ? MG_F64 : MG_F32;
    int64_t s[2] = { 3, 5 };
    mg_tensor *a, *b, *bt;
    mg_manual_seed(A, 11);
    mg_manual_seed(B, 11);
    mg_tensor_empty(A, dt, 2, s, &a);
    mg_tensor_empty(B, dt, 2, s, &b);
    CHECK(mg_tensor_transpose(B, b, 0, 1, &bt) == MG_OK);          /* (5, 3), not contiguous */
    CHECK(mg_tensor_is_contiguous(a) && !mg_tensor_is_contiguous(bt));
    mg_fill_uniform(A, a, -2, 3);
    mg_fill_uniform(B, bt, -2, 3);
    for (int64_t k = 0; k < 15; k++) {
      int64_t ia[2] = { k / 5, k % 5 }, ib[2] = { k / 3, k % 3 };
      double v = mg_tensor_get(a, ia);
      CHECK(v >= -2 && v < 3 && v == mg_tensor_get(bt, ib));
    }
    mg_tensor_release(bt);
    mg_tensor_release(a);
    mg_tensor_release(b);
    mg_ctx_close(A);
    mg_ctx_close(B);
  }
}

/* ---------------------------------------------------------------- fileio.c */

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  static char buf[1 << 16];
  *len = fread(buf, 1, sizeof buf, f);
  fclose(f);
  return buf;
}

static bool has_content(const char *path, const char *want) {
  size_t n = 0;
  const char *s = slurp(path, &n);
  return s != NULL && n == strlen(want) && memcmp(s, want, n) == 0;
}

static void put(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (f) { fputs(text, f); fclose(f); }
}

/* Entries of 'dir' other than . and .. */
static int entries(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  if (d == NULL) return -1;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
  closedir(d);
  return n;
}

static mode_t mode_of(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? sb.st_mode & 07777 : 0;
}

/* Every path of fileio.c leaves the old file or the new one, never a part, and no temporary:
** committed writes, failed writes (ok = false, a file-size limit), aborts, name-based
** writers; permissions are the umask's for a new file and the old file's for a replaced one. */
static void test_fileio(mg_ctx *C) {
  char dir[] = "/tmp/mg_fileio_XXXXXX", path[64], path2[64];
  if (mkdtemp(dir) == NULL) { CHECK(!"mkdtemp"); return; }
  snprintf(path, sizeof path, "%s/a.bin", dir);
  snprintf(path2, sizeof path2, "%s/b.bin", dir);
  mg_wfile w;
  CHECK(mg_wfile_open(C, "test", path, &w) == MG_OK);
  CHECK(entries(dir) == 1);                              /* only the temporary so far */
  fputs("first", w.f);
  CHECK(mg_wfile_commit(C, "test", path, &w, true) == MG_OK);
  CHECK(has_content(path, "first") && entries(dir) == 1 && w.f == NULL && w.tmp == NULL);
  mode_t um = umask(022);
  umask(um);
  CHECK(mode_of(path) == (0666 & ~um));                  /* as fopen would, not mkstemp's 0600 */
  chmod(path, 0640);
  CHECK(mg_wfile_open(C, "test", path, &w) == MG_OK);
  fputs("second", w.f);
  CHECK(mg_wfile_commit(C, "test", path, &w, true) == MG_OK);
  CHECK(has_content(path, "second") && mode_of(path) == 0640);   /* the replaced file's mode */
  CHECK(mg_wfile_open(C, "test", path, &w) == MG_OK);           /* the caller's write failed */
  fputs("half", w.f);
  errno = ENOSPC;
  CHECK(mg_wfile_commit(C, "test", path, &w, false) == MG_EIO);
  CHECK(strncmp(mg_errmsg(C), "test: error writing '", 21) == 0 && strstr(mg_errmsg(C), path));
  CHECK(strstr(mg_errmsg(C), strerror(ENOSPC)) != NULL);
  CHECK(has_content(path, "second") && entries(dir) == 1);
  CHECK(mg_wfile_open(C, "test", path, &w) == MG_OK);           /* abort, twice */
  fputs("never", w.f);
  mg_wfile_abort(&w);
  mg_wfile_abort(&w);
  CHECK(has_content(path, "second") && entries(dir) == 1);
  CHECK(mg_wfile_commit(C, "test", path, &w, true) == MG_ESTATE);  /* already ended */
  /* a file-size limit: the write fails with EFBIG at the limit, the old file stays */
  struct rlimit old, lim;
  void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
  if (getrlimit(RLIMIT_FSIZE, &old) == 0) {
    lim = old;
    lim.rlim_cur = 4096;
    if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
      static char big[16384];
      memset(big, 'x', sizeof big);
      CHECK(mg_wfile_open(C, "test", path, &w) == MG_OK);
      errno = 0;
      bool ok = fwrite(big, 1, sizeof big, w.f) == sizeof big && fflush(w.f) == 0;
      CHECK(mg_wfile_commit(C, "test", path, &w, ok) == MG_EIO);
      CHECK(strstr(mg_errmsg(C), strerror(EFBIG)) != NULL);
      setrlimit(RLIMIT_FSIZE, &old);
      CHECK(has_content(path, "second") && entries(dir) == 1);
    }
  }
  signal(SIGXFSZ, oldsig);
  /* writers by name: the temporary exists (empty), is committed or discarded */
  char *tmp = NULL;
  CHECK(mg_tmpfile_name(C, "test", path2, &tmp) == MG_OK && tmp != NULL);
  CHECK(tmp != NULL && strncmp(tmp, path2, strlen(path2)) == 0 && has_content(tmp, ""));
  if (tmp) put(tmp, "by name");
  CHECK(mg_tmpfile_commit(C, "test", tmp, path2) == MG_OK);
  CHECK(has_content(path2, "by name") && entries(dir) == 2);
  CHECK(mg_tmpfile_name(C, "test", path2, &tmp) == MG_OK);
  if (tmp) put(tmp, "dropped");
  mg_tmpfile_discard(tmp);
  mg_tmpfile_discard(NULL);
  CHECK(has_content(path2, "by name") && entries(dir) == 2);
  /* a symbolic link: the file it names is replaced, beside itself; the link stays */
  char link[80];
  snprintf(link, sizeof link, "%s/link.bin", dir);
  CHECK(symlink("b.bin", link) == 0);
  CHECK(mg_wfile_open(C, "test", link, &w) == MG_OK);
  fputs("through the link", w.f);
  CHECK(mg_wfile_commit(C, "test", link, &w, true) == MG_OK);
  struct stat lsb;
  CHECK(lstat(link, &lsb) == 0 && S_ISLNK(lsb.st_mode));
  CHECK(has_content(path2, "through the link") && entries(dir) == 3);
  CHECK(mg_tmpfile_name(C, "test", link, &tmp) == MG_OK);
  if (tmp) put(tmp, "by name, through the link");
  CHECK(tmp != NULL && strncmp(tmp, path2, strlen(path2)) == 0);   /* beside the real file */
  CHECK(mg_tmpfile_commit(C, "test", tmp, link) == MG_OK);
  CHECK(lstat(link, &lsb) == 0 && S_ISLNK(lsb.st_mode));
  CHECK(has_content(path2, "by name, through the link") && entries(dir) == 3);
  remove(link);
  /* failures name the op, the path and the reason */
  char missing[96];
  snprintf(missing, sizeof missing, "%s/no/such/dir/x.bin", dir);
  CHECK(mg_wfile_open(C, "save", missing, &w) == MG_EIO && w.f == NULL);
  CHECK(strstr(mg_errmsg(C), "save: cannot open '") == mg_errmsg(C));
  CHECK(strstr(mg_errmsg(C), missing) != NULL && strstr(mg_errmsg(C), strerror(ENOENT)) != NULL);
  CHECK(mg_tmpfile_name(C, "plot", missing, &tmp) == MG_EIO && tmp == NULL);
  CHECK(mg_wfile_open(C, "save", dir, &w) == MG_OK);   /* a directory as the target */
  CHECK(mg_wfile_commit(C, "save", dir, &w, true) == MG_EIO);
  CHECK(strstr(mg_errmsg(C), strerror(EISDIR)) != NULL || strstr(mg_errmsg(C), strerror(ENOTEMPTY)));
  CHECK(entries(dir) == 2);
  remove(path);
  remove(path2);
  CHECK(rmdir(dir) == 0);
}

/* mg_linalg_*: values of a 2x2 by hand, errors and untouched outputs, nothing left alive. */
static void test_linalg(mg_ctx *C) {
  size_t live = mg_live_bytes(C);
  int64_t s22[2] = { 2, 2 }, s21[2] = { 2, 1 }, s23[2] = { 2, 3 };
  mg_tensor *A = NULL, *b = NULL, *x = NULL, *sg = NULL, *la = NULL, *Q = NULL, *R = NULL, *bad = NULL;
  mg_tensor *y = (mg_tensor *)0x1, *y2 = (mg_tensor *)0x1;
  CHECK(mg_tensor_empty(C, MG_F64, 2, s22, &A) == MG_OK);
  double av[4] = { 1, 2, 3, 4 };
  for (int64_t i = 0; i < 4; i++) { int64_t idx[2] = { i / 2, i % 2 }; mg_tensor_set(A, idx, av[i]); }
  CHECK(mg_tensor_zeros(C, MG_F64, 2, s21, &b) == MG_OK);
  int64_t b1[2] = { 1, 0 };
  mg_tensor_set(b, b1, 2.0);                           /* b = (0, 2): x = (2, -1) */
  CHECK(mg_linalg_solve(C, A, b, &x) == MG_OK);
  CHECK_NEAR(at2(x, 0, 0), 2.0, 1e-14);
  CHECK_NEAR(at2(x, 1, 0), -1.0, 1e-14);
  CHECK(mg_linalg_slogdet(C, A, &sg, &la) == MG_OK);
  CHECK(mg_tensor_get(sg, NULL) == -1.0);
  CHECK_NEAR(mg_tensor_get(la, NULL), log(2.0), 1e-14);
  CHECK(mg_linalg_qr(C, A, false, &Q, &R) == MG_OK);
  CHECK_NEAR(fabs(at2(R, 0, 0)), sqrt(10.0), 1e-14);  /* |first column| */
  CHECK(at2(R, 1, 0) == 0.0);
  CHECK(mg_tensor_zeros(C, MG_F64, 2, s23, &bad) == MG_OK);
  CHECK(mg_linalg_cholesky(C, bad, &y) == MG_ESHAPE);
  CHECK(strcmp(mg_errmsg(C), "linalg.cholesky: expected square matrices, got shape (2,3)") == 0);
  CHECK(mg_linalg_eigh(C, bad, true, &y, &y2) == MG_ESHAPE);
  CHECK(mg_linalg_cholesky(C, A, &y) == MG_EARG);      /* A is not symmetric positive definite */
  CHECK(strstr(mg_errmsg(C), "leading minor of order 2") != NULL);
  CHECK(y == (mg_tensor *)0x1 && y2 == (mg_tensor *)0x1);
  mg_tensor *ts[8] = { A, b, x, sg, la, Q, R, bad };
  for (int i = 0; i < 8; i++) mg_tensor_release(ts[i]);
  CHECK(mg_live_bytes(C) == live);
}

int main(void) {
  mg_ctx *C = mg_ctx_new();
  CHECK(C != NULL);
  test_errors(C);
  test_broadcast_views(C);
  test_matmul(C);
  test_tape(C);
  test_wrap(C);
  test_matmul_nomem(C);
  test_linalg(C);
  test_fileio(C);
  test_interrupt(C);
  mg_empty_cache(C);
  CHECK(mg_cached_bytes(C) == 0);
  mg_ctx_close(C);
  test_contexts();
  test_fill_order();
  printf("%d passed, %d failed\n", checks - failures, failures);
  return failures != 0;
}
