/*
** linalg.c - matrix products through OpenBLAS's CBLAS: 2-d and batched with broadcast
** leading dims, 1-d operands as NumPy. When the right operand is one matrix, all rows of the
** left one go through a single GEMM. Also the BLAS thread count and kernel names.
*/
#include "mg_impl.h"

#include <assert.h>
#include <cblas.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

extern char *openblas_get_corename(void);
extern void openblas_set_num_threads(int);
extern int openblas_get_num_threads(void);

void mg_set_num_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }
int mg_get_num_threads(void) { return openblas_get_num_threads(); }

/* OpenBLAS's x86-64 kernel families by vector width (the wider, the faster the matmul);
** names not listed (other architectures) rank -1 and are never compared. */
int mg_blas_kernel_rank(const char *name) {
  static const char *const avx512[] = { "SkylakeX", "Cooperlake", "SapphireRapids", NULL };
  static const char *const avx2[] = { "Haswell", "Zen", "Excavator", NULL };
  static const char *const avx[] = { "Sandybridge", "Bulldozer", "Piledriver", "Steamroller",
                                     NULL };
  static const char *const sse[] = { "generic", "Prescott", "Core2", "Penryn", "Dunnington",
                                     "Nehalem", "Atom", "Barcelona", "Opteron", "Nano", NULL };
  static const char *const *const ranks[] = { sse, avx, avx2, avx512 };
  for (int r = 3; name && r >= 0; r--)
    for (const char *const *n = ranks[r]; *n != NULL; n++)
      if (strcasecmp(name, *n) == 0) return r;
  return -1;
}

const char *mg_cpu_best_corename(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();                 /* OpenBLAS's names for what this CPU can run */
  if (__builtin_cpu_supports("avx512bf16")) return "Cooperlake";
  if (__builtin_cpu_supports("avx512f")) return "SkylakeX";
  if (__builtin_cpu_supports("avx2")) return "Haswell";
  return "generic";
#else
  return "generic";
#endif
}

/* OpenBLAS's kernel choice, made in its constructor: with DYNAMIC_ARCH (Debian's build) it
** reads OPENBLAS_CORETYPE, else detects the CPU, and falls back to its SSE3 kernels
** (Prescott) for a CPU model it does not know: Debian 12's 0.3.21 on Emerald Rapids runs
** SGEMM at a fifth of what its Cooperlake kernels do there (docs/performance.md). When
** OPENBLAS_CORETYPE is not set and OpenBLAS picked a narrower family than the CPU supports,
** moongrad makes the choice again through OpenBLAS's own entry points: set the variable to
** the best family, drop the choice, choose again, and keep the first family OpenBLAS
** actually took (an older OpenBLAS lacks the newer names and falls back again); the
** variable is then unset again. The entry points are weak: a BLAS without them (not
** DYNAMIC_ARCH) is left as it is. Runs once, before the first context, so before any BLAS
** call. */
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));

static char blas_detected[32];          /* OpenBLAS's own choice when moongrad replaced it */

static bool blas_choose(const char *core) {
  if (core) setenv("OPENBLAS_CORETYPE", core, 1); else unsetenv("OPENBLAS_CORETYPE");
  gotoblas_dynamic_quit();
  gotoblas_dynamic_init();
  unsetenv("OPENBLAS_CORETYPE");
  const char *now = openblas_get_corename();
  return core == NULL || (now && strcasecmp(now, core) == 0);
}

static void blas_best_kernels(void) {
  static const char *const wider[] = { "Cooperlake", "SkylakeX", "Haswell", "Sandybridge" };
  const char *now = openblas_get_corename(), *best = mg_cpu_best_corename();
  int have = mg_blas_kernel_rank(now), can = mg_blas_kernel_rank(best);
  if (getenv("OPENBLAS_CORETYPE") || !gotoblas_dynamic_init || !gotoblas_dynamic_quit ||
      have < 0 || can <= have)
    return;
  snprintf(blas_detected, sizeof blas_detected, "%s", now);
  bool from_best = false;
  for (size_t i = 0; i < sizeof wider / sizeof *wider; i++) {
    from_best = from_best || strcasecmp(wider[i], best) == 0;
    if (from_best && mg_blas_kernel_rank(wider[i]) > have && blas_choose(wider[i])) return;
  }
  blas_choose(NULL);                    /* none taken: OpenBLAS's own choice again */
  blas_detected[0] = '\0';
}

/* OpenBLAS on one thread, once per process, before the first context: moongrad shares its
** GEMMs over each context's own pool (mg_gemm_par), and OpenBLAS's workers, which spin after
** each threaded call, would take the cores that pool needs (docs/performance.md). The count
** OpenBLAS had (the cores, or OPENBLAS_NUM_THREADS) stays every new context's default. Set
** once under pthread_once and only read after: the same for every context. The kernels are
** chosen again here first (blas_best_kernels). */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static int blas_threads_at_start = 1;

static void blas_single(void) {
  blas_best_kernels();
  blas_threads_at_start = openblas_get_num_threads();
  openblas_set_num_threads(1);
}

int mg_default_threads(void) {
  pthread_once(&blas_once, blas_single);
  return blas_threads_at_start < 1 ? 1 : blas_threads_at_start;
}

const char *mg_blas_corename(void) {
  pthread_once(&blas_once, blas_single);
  return openblas_get_corename();
}

const char *mg_blas_detected_corename(void) {
  pthread_once(&blas_once, blas_single);
  return blas_detected[0] ? blas_detected : NULL;
}

static pthread_once_t avx512_once = PTHREAD_ONCE_INIT;
static bool blas_avx512;

static void blas_avx512_probe(void) {
  blas_avx512 = mg_blas_kernel_rank(mg_blas_corename()) == 3;
}

bool mg_blas_avx512(void) {
  pthread_once(&avx512_once, blas_avx512_probe);
  return blas_avx512;
}

/* How to hand one matrix (the last two dims of 't') to BLAS without a copy. BLAS reads
** element (i, j) at i*ld + j (row-major) or j*ld + i ('trans', column-major) and requires
** ld >= max(1, cols) (resp. rows): then it reads exactly the view's elements. A dim of size 1
** takes any stride (it is never stepped along); a stride of 0 along a dim of size > 1 (an
** expanded operand, as the cotangents of sum and mean) fits neither form: 'ok' false, copy. */
typedef struct { bool ok, trans; int64_t ld; } layout;

static layout blas_layout(const mg_tensor *t) {
  int nd = t->ndim;
  int64_t r = t->shape[nd - 2], c = t->shape[nd - 1], sr = t->stride[nd - 2], sc = t->stride[nd - 1];
  int64_t lr = r > 1 ? r : 1, lc = c > 1 ? c : 1;
  if (r == 0 || c == 0) return (layout){ true, false, lc };        /* nothing is read */
  if ((c == 1 || sc == 1) && (r == 1 || (sr >= lc && sr <= INT32_MAX)))
    return (layout){ true, false, r == 1 ? lc : sr };
  if ((r == 1 || sr == 1) && (c == 1 || (sc >= lr && sc <= INT32_MAX)))
    return (layout){ true, true, c == 1 ? lr : sc };
  return (layout){ false, false, 0 };
}

/* y = alpha op(a) op(b) + beta y, row-major (M x K times K x N); every ld at least
** max(1, its row length), as BLAS requires. K == 0 is done here (y = beta y): BLAS would
** reject the ld of 0 a (B, 0) operand brings. */
void mg_gemm(mg_dtype dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
             const void *a, int64_t lda, const void *b, int64_t ldb, double beta, void *y,
             int64_t ldy) {
  enum CBLAS_TRANSPOSE A = ta ? CblasTrans : CblasNoTrans, B = tb ? CblasTrans : CblasNoTrans;
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++)
        if (dt == MG_F64) { double *p = (double *)y + i * ldy + j; *p = beta == 0 ? 0 : beta * *p; }
        else { float *p = (float *)y + i * ldy + j; *p = beta == 0 ? 0 : (float)beta * *p; }
    return;
  }
  assert(lda >= (ta ? M : K) && ldb >= (tb ? K : N) && ldy >= N);
  assert(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX && lda <= INT32_MAX &&
         ldb <= INT32_MAX && ldy <= INT32_MAX);
  if (dt == MG_F64)
    cblas_dgemm(CblasRowMajor, A, B, (int)M, (int)N, (int)K, alpha, a, (int)lda, b, (int)ldb,
                beta, y, (int)ldy);
  else
    cblas_sgemm(CblasRowMajor, A, B, (int)M, (int)N, (int)K, (float)alpha, a, (int)lda, b,
                (int)ldb, (float)beta, y, (int)ldy);
}

/* ================================================================ GEMMs over threads */

/* A product shared over a context's threads is cut into blocks of whole output rows (when
** M >= N: each block re-reads all of op(b)) or columns (else), never along K, with the cut
** set by the shape alone: each block is one BLAS call, the same calls whatever the thread
** count, which only decides who makes them; so are the bits. Blocks of GEMM_ALIGN rows or
** columns (SGEMM's widest register block, 64 bytes of float32 output), of at least
** GEMM_BLOCK_WORK each, at most GEMM_MAXBLOCKS of them (each block copies the operand it
** re-reads again: 16 measured slower than 8 on the LSTM step, 8 slower than 4 on one
** thread: 25.7 against 24.5 ms for the char-LSTM step at 128 units, 4 slower than 2: 23.0
** against 21.8 ms there, 242 against 234 ms at 512 units; with 2 blocks a product still
** gives each of 2 threads one, and a layer's weight gradients, several products in one
** list (mg_grads_par), more). The work: the multiply-adds
** and 32 per element read or written (BLAS copies both operands into its own blocks first; a
** product with a short K, such as the weight gradients of a narrow input, is mostly those
** copies). */
enum { GEMM_ALIGN = 16, GEMM_MAXBLOCKS = 2 };
#define GEMM_BLOCK_WORK 2097152.0

void mg_gemm_block(const mg_gemm_plan *g, int64_t k) {
  int64_t esz = (int64_t)mg_dtype_size(g->dt), lo = k * g->blk;
  int64_t n = (g->rows ? g->M : g->N) - lo;
  const char *a = g->a, *b = g->b;
  char *y = g->y;
  if (n > g->blk) n = g->blk;
  if (g->rows)
    mg_gemm(g->dt, g->ta, g->tb, n, g->N, g->K, g->alpha, a + (g->ta ? lo : lo * g->lda) * esz,
            g->lda, b, g->ldb, g->beta, y + lo * g->ldy * esz, g->ldy);
  else
    mg_gemm(g->dt, g->ta, g->tb, g->M, n, g->K, g->alpha, a, g->lda,
            b + (g->tb ? lo * g->ldb : lo) * esz, g->ldb, g->beta, y + lo * esz, g->ldy);
}

static void gemm_blocks(void *arg, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; k++) mg_gemm_block(arg, k);
}

/* How many blocks (and of how many rows or columns) a product of this shape is cut into. */
static int64_t gemm_cut(int64_t M, int64_t N, int64_t K, bool rows, int64_t *blk) {
  int64_t dim = rows ? M : N, most = (dim + GEMM_ALIGN - 1) / GEMM_ALIGN;
  double m = (double)M, n = (double)N, k = (double)K, work = m * n * k + 32 * (m * k + k * n + m * n);
  int64_t nb = work / GEMM_BLOCK_WORK < GEMM_MAXBLOCKS ? (int64_t)(work / GEMM_BLOCK_WORK) : GEMM_MAXBLOCKS;
  if (nb > most) nb = most;
  if (nb < 1) nb = 1;
  *blk = ((dim + nb - 1) / nb + GEMM_ALIGN - 1) / GEMM_ALIGN * GEMM_ALIGN;
  return (dim + *blk - 1) / *blk;
}

int64_t mg_gemm_plan_make(mg_gemm_plan *g, mg_dtype dt, bool ta, bool tb, int64_t M, int64_t N,
                          int64_t K, double alpha, const void *a, int64_t lda, const void *b,
                          int64_t ldb, double beta, void *y, int64_t ldy) {
  *g = (mg_gemm_plan){ .dt = dt, .ta = ta, .tb = tb, .rows = M >= N, .M = M, .N = N, .K = K,
                       .lda = lda, .ldb = ldb, .ldy = ldy, .alpha = alpha, .beta = beta, .a = a,
                       .b = b, .y = y };
  if (M == 0 || N == 0) return g->nb = 0;
  if (K > 0) return g->nb = gemm_cut(M, N, K, g->rows, &g->blk);
  g->blk = g->rows ? M : N;                       /* y = beta y: one block */
  return g->nb = 1;
}

void mg_gemm_par(mg_ctx *C, mg_dtype dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                 double alpha, const void *a, int64_t lda, const void *b, int64_t ldb,
                 double beta, void *y, int64_t ldy) {
  mg_gemm_plan g;
  int64_t nb = mg_gemm_plan_make(&g, dt, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, y, ldy);
  if (nb == 1) mg_gemm_block(&g, 0);
  else if (nb > 1) mg_parallel_blocks(C, nb, gemm_blocks, &g);
}

static void gemm(mg_ctx *C, mg_dtype dt, layout la, layout lb, int64_t M, int64_t N, int64_t K,
                 const void *a, const void *b, void *y, int64_t ldy) {
  mg_gemm_par(C, dt, la.trans, lb.trans, M, N, K, 1, a, la.ld, b, lb.ld, 0, y, ldy);
}

/* The left operand's batch dims and rows as one (batch * rows, K) matrix with the same 'ld',
** when every batch dim steps by exactly the rows before it (no broadcast, no gap). */
static bool rows_foldable(const mg_tensor *a, layout la, int nbatch, const int64_t *bshape) {
  if (la.trans) return false;
  int nd = a->ndim;
  int64_t expect = la.ld * a->shape[nd - 2], rows = a->shape[nd - 2];
  for (int i = nbatch - 1; i >= 0; i--) {
    int ad = nd - 2 - nbatch + i;
    int64_t size = ad >= 0 ? a->shape[ad] : 1;
    if (size != bshape[i]) return false;          /* 'a' broadcast along this dim */
    if (size != 1 && a->stride[ad] != expect) return false;
    expect *= size;
    rows *= size;
  }
  return rows <= INT32_MAX;
}

/* 't' itself (retained) when BLAS can read it, else a contiguous copy (not recorded). */
static mg_status blas_operand(mg_ctx *C, mg_tensor *t, mg_tensor **out) {
  if (blas_layout(t).ok) { *out = mg_tensor_retain(t); return MG_OK; }
  mg_no_grad_enter(C);                               /* the copy is not a separate op */
  mg_status st = mg_tensor_clone(C, t, out);
  mg_no_grad_exit(C);
  return st;
}

/* a @ b for operands of 2 or more dims (batch dims broadcast); recorded. */
static mg_status matmul_nd(mg_ctx *C, mg_tensor *a, mg_tensor *b, mg_tensor **out) {
  char s1[96], s2[96];
  int na = a->ndim, nb = b->ndim;
  int64_t M = a->shape[na - 2], K = a->shape[na - 1], N = b->shape[nb - 1];
  int64_t batch[MG_MAXDIM], oshape[MG_MAXDIM];
  int nbatch;
  if (b->shape[nb - 2] != K)
    return mg_fail(C, MG_ESHAPE, "matmul: shapes %s and %s are not aligned (%lld ~= %lld)",
                   mg_shapestr(s1, sizeof s1, na, a->shape), mg_shapestr(s2, sizeof s2, nb, b->shape),
                   (long long)K, (long long)b->shape[nb - 2]);
  if (!mg_broadcast_shape(na - 2, a->shape, nb - 2, b->shape, &nbatch, batch) || nbatch + 2 > MG_MAXDIM)
    return mg_fail(C, MG_ESHAPE, "matmul: batch dimensions of %s and %s cannot be broadcast",
                   mg_shapestr(s1, sizeof s1, na, a->shape), mg_shapestr(s2, sizeof s2, nb, b->shape));
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
    return mg_fail(C, MG_ESHAPE, "matmul: shapes %s and %s: a matrix dimension exceeds BLAS's "
                   "limit of 2147483647", mg_shapestr(s1, sizeof s1, na, a->shape),
                   mg_shapestr(s2, sizeof s2, nb, b->shape));
  memcpy(oshape, batch, (size_t)nbatch * sizeof *batch);
  oshape[nbatch] = M;
  oshape[nbatch + 1] = N;
  mg_tensor *ac = NULL, *bc = NULL, *y = NULL;
  mg_status st = blas_operand(C, a, &ac);
  if (st == MG_OK) st = blas_operand(C, b, &bc);
  if (st == MG_OK) st = (K == 0 ? mg_tensor_zeros : mg_tensor_empty)(C, a->dtype, nbatch + 2, oshape, &y);
  int64_t nmat = mg_shape_numel(nbatch, batch), esz = (int64_t)mg_dtype_size(a->dtype);
  if (st != MG_OK || M == 0 || N == 0 || K == 0 || nmat == 0) goto done;
  layout la = blas_layout(ac), lb = blas_layout(bc);
  assert(la.ok && lb.ok);
  bool b_single = true;
  for (int i = 0; i < nb - 2; i++) b_single = b_single && (bc->shape[i] == 1 || bc->stride[i] == 0);
  if (b_single && rows_foldable(ac, la, nbatch, batch)) {
    gemm(C, a->dtype, la, lb, M * nmat, N, K, mg_tensor_data(ac), mg_tensor_data(bc), mg_tensor_data(y), N);
    goto done;
  }
  int64_t idx[MG_MAXDIM] = { 0 };
  for (int64_t m = 0; m < nmat && (st = mg_poll(C, "matmul")) == MG_OK; m++) {
    int64_t oa = 0, ob = 0;
    for (int i = 0; i < nbatch; i++) {
      int ad = na - 2 - nbatch + i, bd = nb - 2 - nbatch + i;
      if (ad >= 0 && ac->shape[ad] != 1) oa += idx[i] * ac->stride[ad];
      if (bd >= 0 && bc->shape[bd] != 1) ob += idx[i] * bc->stride[bd];
    }
    gemm(C, a->dtype, la, lb, M, N, K, (char *)mg_tensor_data(ac) + oa * esz,
         (char *)mg_tensor_data(bc) + ob * esz, (char *)mg_tensor_data(y) + m * M * N * esz, N);
    for (int i = nbatch - 1; i >= 0 && ++idx[i] == batch[i]; i--) idx[i] = 0;
  }
done:
  mg_tensor_release(ac);
  mg_tensor_release(bc);
  if (st != MG_OK) { mg_tensor_release(y); return st; }   /* interrupted */
  mg_tensor *in[2] = { a, b };
  return mg_record_result(C, MG_OP_MATMUL, 2, in, y, NULL, out);
}

mg_status mg_tensor_matmul(mg_ctx *C, mg_tensor *a, mg_tensor *b, mg_tensor **out) {
  char s1[96], s2[96];
  if (a->ndim == 0 || b->ndim == 0)
    return mg_fail(C, MG_ESHAPE, "matmul: shapes %s and %s: operands must have at least 1 dimension",
                   mg_shapestr(s1, sizeof s1, a->ndim, a->shape), mg_shapestr(s2, sizeof s2, b->ndim, b->shape));
  int64_t ka = a->shape[a->ndim - 1], kb = b->shape[b->ndim == 1 ? 0 : b->ndim - 2];
  if (ka != kb)                                      /* checked here to show the shapes given */
    return mg_fail(C, MG_ESHAPE, "matmul: shapes %s and %s are not aligned (%lld ~= %lld)",
                   mg_shapestr(s1, sizeof s1, a->ndim, a->shape),
                   mg_shapestr(s2, sizeof s2, b->ndim, b->shape), (long long)ka, (long long)kb);
  mg_tensor *in[2] = { mg_tensor_retain(a), mg_tensor_retain(b) }, *y = NULL;
  mg_status st = MG_OK;
  if (a->dtype != b->dtype) {                         /* promote, recorded */
    int lo = a->dtype == MG_F32 ? 0 : 1;
    mg_tensor *c = NULL;
    if ((st = mg_tensor_cast(C, in[lo], MG_F64, &c)) == MG_OK) { mg_tensor_release(in[lo]); in[lo] = c; }
  }
  bool va = a->ndim == 1, vb = b->ndim == 1;
  if (st == MG_OK && va) {
    mg_tensor *u = NULL;
    if ((st = mg_tensor_unsqueeze(C, in[0], 0, &u)) == MG_OK) { mg_tensor_release(in[0]); in[0] = u; }
  }
  if (st == MG_OK && vb) {
    mg_tensor *u = NULL;
    if ((st = mg_tensor_unsqueeze(C, in[1], 1, &u)) == MG_OK) { mg_tensor_release(in[1]); in[1] = u; }
  }
  if (st == MG_OK) st = matmul_nd(C, in[0], in[1], &y);
  if (st == MG_OK && (va || vb)) {                   /* drop the added dims */
    mg_tensor *s = NULL;
    int64_t sh[MG_MAXDIM];
    int nd = 0;
    for (int i = 0; i < y->ndim; i++)
      if (!((va && i == y->ndim - 2) || (vb && i == y->ndim - 1))) sh[nd++] = y->shape[i];
    st = mg_tensor_reshape(C, y, nd, sh, &s);
    mg_tensor_release(y);
    y = st == MG_OK ? s : NULL;
  }
  mg_tensor_release(in[0]);
  mg_tensor_release(in[1]);
  if (st == MG_OK) *out = y;
  return st;
}

/* ================================================================ rules */

static mg_status mT(mg_ctx *C, mg_tensor *x, mg_tensor **out) {
  return mg_tensor_transpose(C, x, x->ndim - 2, x->ndim - 1, out);
}

/* A new contiguous transpose of the contiguous matrix 'w', not recorded. */
static mg_status transpose_copy(mg_ctx *C, mg_tensor *w, mg_tensor **out) {
  int64_t r = w->shape[0], c = w->shape[1], sh[2] = { c, r };
  mg_status st = mg_tensor_empty(C, w->dtype, 2, sh, out);
  if (st != MG_OK || r == 0 || c == 0) return st;
  if (w->dtype == MG_F64)
    cblas_domatcopy(CblasRowMajor, CblasTrans, (int)r, (int)c, 1.0, mg_tensor_data(w), (int)c,
                    mg_tensor_data(*out), (int)r);
  else
    cblas_somatcopy(CblasRowMajor, CblasTrans, (int)r, (int)c, 1.0f, mg_tensor_data(w), (int)c,
                    mg_tensor_data(*out), (int)r);
  return MG_OK;
}

/* The cotangent of a (B, I) @ (I, N) product when it is the batch-Jacobian seed 'g': row k
** of the result is column k of W for every b, a broadcast view of W^T. No GEMM by the
** identity. With MG_TF_EYE_VIEW (nothing recording), the view of W itself: the Jacobian's
** writer (jacobian.c, write_product) gathers its rows in blocks, in cache; otherwise made
** contiguous first, so that the rules after read unit strides. */
static mg_status eye_vjp(mg_ctx *C, const mg_node *n, const mg_tensor *g, mg_tensor **out) {
  mg_tensor *w = n->in[1], *wt = NULL, *wc = NULL, *r = NULL;
  int64_t K = w->shape[1], rows = w->shape[0], B = n->in[0]->shape[0];
  int64_t sh[3] = { K, 1, rows };
  mg_status st = MG_OK;
  if (!mg_recording(C) && (g->flags & MG_TF_EYE_VIEW)) {
    st = mT(C, w, &wc);
  } else if (!mg_recording(C) && mg_tensor_is_contiguous(w)) {
    st = transpose_copy(C, w, &wc);           /* nothing records: BLAS's own transpose */
  } else {
    st = mT(C, w, &wt);
    if (st == MG_OK) st = mg_tensor_contiguous(C, wt, &wc);
  }
  if (st == MG_OK) st = mg_tensor_reshape(C, wc, 3, sh, &r);
  sh[1] = B;
  if (st == MG_OK) st = mg_tensor_expand(C, r, 3, sh, out);
  mg_tensor_release(wt);
  mg_tensor_release(wc);
  mg_tensor_release(r);
  return st;
}

static bool is_eye_seed(const mg_node *n, int lead, const mg_tensor *g) {
  return lead == 1 && (g->flags & MG_TF_EYE) && n->in[0]->ndim == 2 && n->in[1]->ndim == 2 &&
         g->ndim == 3 && g->shape[0] == g->shape[2] && g->shape[2] == n->out[0]->shape[1];
}

static mg_status matmul_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                            const bool *need, mg_tensor **gin) {
  if (g[0] == NULL) return MG_OK;
  for (int k = 0; k < 2; k++) {
    if (!need[k]) continue;
    if (k == 0 && is_eye_seed(n, lead, g[0])) {
      mg_status st = eye_vjp(C, n, g[0], &gin[0]);
      if (st != MG_OK) return st;
      continue;
    }
    mg_tensor *other = n->in[1 - k], *t = NULL, *full = NULL;
    mg_status st = mT(C, other, &t);
    if (st != MG_OK) return st;
    st = k == 0 ? matmul_nd(C, g[0], t, &full) : matmul_nd(C, t, g[0], &full);
    mg_tensor_release(t);
    if (st != MG_OK) return st;
    st = mg_unbroadcast(C, full, lead, n->in[k]->ndim, n->in[k]->shape, &gin[k]);
    mg_tensor_release(full);
    if (st != MG_OK) return st;
  }
  return MG_OK;
}

static mg_status matmul_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                            mg_tensor **tout) {
  mg_tensor *acc = NULL, *p = NULL;
  for (int k = 0; k < 2; k++) {
    if (t[k] == NULL) continue;
    mg_tensor *tk = NULL;            /* batch dims right-aligned with the output's */
    mg_status st = mg_align_lead(C, t[k], lead, n->out[0]->ndim, &tk);
    if (st == MG_OK) {
      st = k == 0 ? matmul_nd(C, tk, n->in[1], &p) : matmul_nd(C, n->in[0], tk, &p);
      mg_tensor_release(tk);
    }
    if (st != MG_OK) { mg_tensor_release(acc); return st; }
    if (acc == NULL) { acc = p; continue; }
    mg_tensor *s = NULL;
    st = mg_tensor_binary(C, MG_B_ADD, acc, p, &s);
    mg_tensor_release(acc);
    mg_tensor_release(p);
    if (st != MG_OK) return st;
    acc = s;
  }
  if (acc == NULL) return MG_OK;
  mg_tensor *y = n->out[0];
  mg_status st = mg_expand_lead(C, acc, lead, y->ndim, y->shape, &tout[0]);
  mg_tensor_release(acc);
  return st;
}

const mg_rules mg_rules_matmul = { .vjp = matmul_vjp, .jvp = matmul_jvp };
