/*
** test_parallel.c - each context's worker threads (runtime/parallel.c): mg_parallel_for covers
** its range exactly once (also nested, also with more threads than work); elementwise kernels
** and reductions, and GEMMs cut into blocks of rows or columns, give the same bits on 1, 2 and
** 3 threads; two contexts in two threads, two
** workers each, run at once (the ThreadSanitizer build of tools/test-sanitize runs this too);
** a set interrupt flag still stops a shared loop. Exit status 0 when every check passes.
*/
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_impl.h"

static int failures;
#define CHECK(cond) do {                                                            \
    if (!(cond)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
                   __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED); }           \
  } while (0)

/* ---------------------------------------------------------------- mg_parallel_for */

typedef struct cover { unsigned char *seen; mg_ctx *C; bool nest; } cover;

static void mark(void *arg, int64_t lo, int64_t hi) {
  cover *c = arg;
  for (int64_t i = lo; i < hi; i++) c->seen[i]++;      /* each index owned by one range */
}

static void mark_nested(void *arg, int64_t lo, int64_t hi) {
  cover *c = arg;
  cover inner = { c->seen + lo, c->C, false };
  mg_parallel_for(c->C, NULL, hi - lo, 7, mark, &inner);   /* runs serially: the pool is busy */
}

static void test_cover(mg_ctx *C) {
  int64_t sizes[] = { 0, 1, 999, 1000, 1001, 123457 };
  for (int nt = 1; nt <= 4; nt++) {
    mg_ctx_set_num_threads(C, nt);
    CHECK(mg_ctx_num_threads(C) == nt);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
      for (int nest = 0; nest < 2; nest++) {
        int64_t n = sizes[s];
        cover c = { calloc((size_t)n + 1, 1), C, nest };
        CHECK(mg_parallel_for(C, "cover", n, 1000, nest ? mark_nested : mark, &c) == MG_OK);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += c.seen[i] != 1;
        CHECK(bad == 0);
        free(c.seen);
      }
  }
  mg_ctx_set_num_threads(C, 0);
  CHECK(mg_ctx_num_threads(C) == 1);                    /* clamped */
  mg_ctx_set_num_threads(C, 1 << 20);
  CHECK(mg_ctx_num_threads(C) == MG_MAXTHREADS);
  mg_ctx_set_num_threads(C, 2);
}

/* ---------------------------------------------------------------- same bits for any count */

static mg_tensor *randn(mg_ctx *C, mg_dtype dt, int nd, const int64_t *shape) {
  mg_tensor *t = NULL;
  CHECK(mg_tensor_empty(C, dt, nd, shape, &t) == MG_OK);
  mg_fill_normal(C, t, 0, 1);
  return t;
}

static bool same_bits(const mg_tensor *a, const mg_tensor *b) {
  size_t n = (size_t)mg_tensor_numel(a) * mg_dtype_size(mg_tensor_dtype(a));
  return mg_tensor_numel(a) == mg_tensor_numel(b) && mg_tensor_is_contiguous(a) &&
         mg_tensor_is_contiguous(b) && memcmp(mg_tensor_data(a), mg_tensor_data(b), n) == 0;
}

#define NRES 11

/* Every kernel family above the threshold, into 'res' (new references). */
static void compute(mg_ctx *C, mg_tensor *x, mg_tensor *col, mg_tensor *row, mg_tensor **res) {
  mg_tensor *xt = NULL;
  CHECK(mg_tensor_transpose(C, x, 0, 1, &xt) == MG_OK);
  CHECK(mg_tensor_binary(C, MG_B_ADD, col, row, &res[0]) == MG_OK);     /* broadcast */
  CHECK(mg_tensor_binary(C, MG_B_MUL, x, x, &res[1]) == MG_OK);         /* dense */
  CHECK(mg_tensor_unary(C, MG_U_EXP, xt, &res[2]) == MG_OK);            /* strided */
  CHECK(mg_tensor_sum(C, x, ~0u, false, &res[3]) == MG_OK);             /* to one element */
  CHECK(mg_tensor_sum(C, x, 1u, false, &res[4]) == MG_OK);              /* over rows */
  CHECK(mg_tensor_sum(C, x, 2u, false, &res[5]) == MG_OK);              /* over columns */
  CHECK(mg_tensor_amax(C, xt, ~0u, false, &res[6]) == MG_OK);
  CHECK(mg_tensor_amin(C, x, 2u, false, &res[7]) == MG_OK);
  CHECK(mg_tensor_empty(C, mg_tensor_dtype(x), 2, mg_tensor_shape(x), &res[8]) == MG_OK);
  mg_tensor_fill_(res[8], 0.5);
  CHECK(mg_tensor_add_(C, res[8], row) == MG_OK);                        /* in place */
  mg_tensor *x40 = NULL, *x40t = NULL;                 /* GEMMs cut into blocks (mg_gemm_par) */
  CHECK(mg_tensor_narrow(C, x, 1, 0, 40, &x40) == MG_OK);
  CHECK(mg_tensor_transpose(C, x40, 0, 1, &x40t) == MG_OK);
  CHECK(mg_tensor_matmul(C, xt, x40, &res[9]) == MG_OK);                /* blocks of rows */
  CHECK(mg_tensor_matmul(C, x40t, x, &res[10]) == MG_OK);               /* of columns */
  mg_tensor_release(x40);
  mg_tensor_release(x40t);
  mg_tensor_release(xt);
}

typedef struct run { mg_dtype dt; int seed, iters; } run;

static void *same_for_any_count(void *arg) {
  run *r = arg;
  mg_ctx *C = mg_ctx_new();
  mg_manual_seed(C, (uint64_t)r->seed);
  int64_t sx[2] = { 700, 300 }, sc[2] = { 700, 1 }, sr[2] = { 1, 300 };
  mg_tensor *x = randn(C, r->dt, 2, sx), *col = randn(C, r->dt, 2, sc);
  mg_tensor *row = randn(C, r->dt, 2, sr), *ref[NRES], *got[NRES];
  mg_ctx_set_num_threads(C, 1);
  compute(C, x, col, row, ref);
  double s = 0;                                      /* the full sum, computed here */
  const float *xf = mg_tensor_data(x);
  const double *xd = mg_tensor_data(x);
  for (int64_t i = 0; i < 700 * 300; i++) s += r->dt == MG_F64 ? xd[i] : xf[i];
  double got_s = r->dt == MG_F64 ? *(double *)mg_tensor_data(ref[3]) : *(float *)mg_tensor_data(ref[3]);
  CHECK(fabs(got_s - s) <= (r->dt == MG_F64 ? 1e-10 : 1e-3));
  for (int it = 0; it < r->iters; it++) {
    mg_ctx_set_num_threads(C, 2 + it % 2);
    compute(C, x, col, row, got);
    for (int k = 0; k < NRES; k++) {
      CHECK(same_bits(ref[k], got[k]));
      mg_tensor_release(got[k]);
    }
  }
  for (int k = 0; k < NRES; k++) mg_tensor_release(ref[k]);
  mg_tensor_release(x);
  mg_tensor_release(col);
  mg_tensor_release(row);
  mg_ctx_close(C);
  return NULL;
}

/* ---------------------------------------------------------------- interrupt */

static void test_interrupt(mg_ctx *C) {
  static volatile sig_atomic_t flag = 0;
  int64_t sh[1] = { 1 << 20 };
  mg_tensor *a = randn(C, MG_F32, 1, sh), *y = (mg_tensor *)0x1;
  mg_ctx_set_num_threads(C, 2);
  mg_ctx_set_interrupt_flag(C, &flag);
  flag = 1;
  CHECK(mg_tensor_binary(C, MG_B_ADD, a, a, &y) == MG_EINTR && y == (mg_tensor *)0x1);
  CHECK(strcmp(mg_errmsg(C), "add: interrupted!") == 0);
  CHECK(mg_tensor_sum(C, a, ~0u, false, &y) == MG_EINTR && y == (mg_tensor *)0x1);
  CHECK(strcmp(mg_errmsg(C), "sum: interrupted!") == 0);
  flag = 0;
  CHECK(mg_tensor_binary(C, MG_B_ADD, a, a, &y) == MG_OK);
  mg_tensor_release(y);
  mg_ctx_set_interrupt_flag(C, NULL);
  mg_tensor_release(a);
}

int main(void) {
  mg_ctx *C = mg_ctx_new();
  test_cover(C);
  test_interrupt(C);
  mg_ctx_close(C);
  run runs[2] = { { MG_F32, 1, 6 }, { MG_F64, 2, 6 } };
  pthread_t th[2];
  for (int k = 0; k < 2; k++) CHECK(pthread_create(&th[k], NULL, same_for_any_count, &runs[k]) == 0);
  for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
  if (failures) fprintf(stderr, "test_parallel: %d checks failed\n", failures);
  else printf("test_parallel: all checks passed\n");
  return failures != 0;
}
