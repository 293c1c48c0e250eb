/*
** cells.c - fused recurrent cells (Keras layouts, docs/cells.md): one GEMM for the input
** part and one for the recurrent part of all gates, then one pass over the gates. Each step
** is one recorded node.
** Reverse rule: a fused kernel for first-order use (no other tape recording, no vectorized
** lead dim); otherwise the same maths composed from recorded ops, with the gates recomputed
** by recorded ops when another tape records (so gradients of gradients are exact).
*/
#include "cells.h"
#include "fastmath.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>

/* Contiguous copies of node inputs, made without recording. New references. */
mg_status mg_cell_contiguous(mg_ctx *C, int n, mg_tensor *const *in, mg_tensor **out) {
  mg_status st = MG_OK;
  mg_no_grad_enter(C);
  for (int i = 0; i < n; i++) {
    out[i] = NULL;
    if (st == MG_OK && in[i]) st = mg_tensor_contiguous(C, in[i], &out[i]);
  }
  mg_no_grad_exit(C);
  if (st != MG_OK)
    for (int i = 0; i < n; i++) { mg_tensor_release(out[i]); out[i] = NULL; }
  return st;
}

void mg_cell_release(int n, mg_tensor **t) {
  for (int i = 0; i < n; i++) mg_tensor_release(t[i]);
}

#define contiguous_all mg_cell_contiguous
#define release_all mg_cell_release

static double sigm(double v) { return v >= 0 ? 1 / (1 + exp(-v)) : exp(v) / (1 + exp(v)); }

/* Check a 2-d operand's shape; 'rows' < 0 accepts any. */
mg_status mg_cell_want2(mg_ctx *C, const char *fn, const char *what, const mg_tensor *t,
                        int64_t rows, int64_t cols) {
  char b[96];
  if (t->ndim != 2 || (rows >= 0 && t->shape[0] != rows) || t->shape[1] != cols)
    return mg_fail(C, MG_ESHAPE, "%s: %s has shape %s, expected (%s%lld,%lld)", fn, what,
                   mg_shapestr(b, sizeof b, t->ndim, t->shape), rows < 0 ? "B" : "",
                   (long long)(rows < 0 ? 0 : rows), (long long)cols);
  return MG_OK;
}
#define want2 mg_cell_want2

mg_status mg_cell_same_dtype(mg_ctx *C, const char *fn, int n, mg_tensor *const *t) {
  for (int i = 1; i < n; i++)
    if (t[i]->dtype != t[0]->dtype)
      return mg_fail(C, MG_EARG, "%s: mixed dtypes (%s and %s)", fn, mg_dtype_name(t[0]->dtype),
                     mg_dtype_name(t[i]->dtype));
  return MG_OK;
}
#define same_dtype mg_cell_same_dtype

/* The shapes both fused cells check alike: x (B, d), h (B, u), kernel (d, gates u),
** recurrent_kernel (u, gates u); '*units' gets u. */
mg_status mg_cell_shapes(mg_ctx *C, const char *fn, mg_tensor *const *xhWU, int gates,
                         int64_t *units) {
  mg_tensor *x = xhWU[0], *h = xhWU[1];
  char b[96];
  if (x->ndim != 2)
    return mg_fail(C, MG_ESHAPE, "%s: input has shape %s, expected (B, features)", fn,
                   mg_shapestr(b, sizeof b, x->ndim, x->shape));
  int64_t B = x->shape[0], d = x->shape[1], u = h->ndim == 2 ? h->shape[1] : -1;
  mg_status st;
  if ((st = want2(C, fn, "h", h, B, u)) || (st = want2(C, fn, "kernel", xhWU[2], d, gates * u)) ||
      (st = want2(C, fn, "recurrent_kernel", xhWU[3], u, gates * u)))
    return st;
  *units = u;
  return MG_OK;
}

/* Element k of a typed buffer as a pointer. */
static void *at(mg_dtype dt, const void *p, int64_t k) {
  return (char *)p + k * (int64_t)mg_dtype_size(dt);
}

/* Column sums, row by row (in double for float32; 'acc' n doubles of scratch, or NULL:
** accumulate in 'out' itself). */
#define COLSUM(T, ACC) do {                                                        \
    const T *A = a;                                                                \
    ACC *o = acc ? (ACC *)acc : (ACC *)out;                                        \
    for (int64_t j = 0; j < n; j++) o[j] = 0;                                      \
    for (int64_t r = 0; r < rows; r++)                                             \
      for (int64_t j = 0; j < n; j++) o[j] += A[r * ld + j];                       \
    if (acc) for (int64_t j = 0; j < n; j++) ((T *)out)[j] = (T)o[j];             \
  } while (0)

/* The loops compiled for AVX-512 and AVX2 too (MG_CLONES): each column's sum runs over the
** rows in order, whatever the vector width, so the bits are the same. */
MG_CLONES static void colsum_f64(int64_t rows, int64_t n, const double *restrict a, int64_t ld,
                                 double *restrict out) {
  void *acc = NULL;
  COLSUM(double, double);
}

MG_CLONES static void colsum_f32(int64_t rows, int64_t n, const float *restrict a, int64_t ld,
                                 float *restrict out, double *restrict acc) {
  if (acc) COLSUM(float, double);
  else COLSUM(float, float);                    /* no scratch: in float32 */
}

void mg_colsum(mg_dtype dt, int64_t rows, int64_t n, const void *a, int64_t ld, void *out) {
  if (dt == MG_F64) { colsum_f64(rows, n, a, ld, out); return; }
  double *acc = malloc((size_t)n * sizeof *acc);
  colsum_f32(rows, n, a, ld, out, acc);
  free(acc);
}

/* One list of blocks: each product's (as mg_gemm_par cuts it), then each column sum's (whole
** columns, about 64K elements a block but at least COLSUM_MINCOLS columns, each summed as
** mg_colsum does). The rows of a (T B, 4u) buffer are 6-8 KiB apart at 512 units: a block
** of 48 columns read one 192-byte piece per page, which the hardware prefetcher does not
** follow (the GRU's bias sums at 512 units, B 16: 5.1 ms of a 70 ms step; 2 KiB pieces:
** 1.9 ms). The sums do not depend on the blocks. */
enum { COLSUM_MINCOLS = 512 };
typedef struct grads_job {
  int np, ns;
  const mg_gemm_plan *pl;
  const mg_colsum_spec *cs;
  int64_t nb[MG_GRADS_MAX], sblk[2], snb[2];
  int nslot;                   /* packing buffers for mg_gemm_at_f32: one per thread at work */
  size_t slot_bytes;
  char *slots;                 /* nslot x slot_bytes, from the pool; NULL: BLAS instead */
  int *busy;                   /* per slot: taken (atomically) by a block while it runs */
} grads_job;

/* Block k of a weight gradient's product: A' B in float32 (H' dZ over many rows) through
** mg_gemm_at_f32, which the block's cut does not change the bits of, else BLAS. From
** AT_MIN rows and columns and AT_MINK rows of the operands: the 32-unit LSTM's products and
** the single steps' keep BLAS. Only while OpenBLAS runs AVX2 kernels (Haswell, Zen): its
** AVX-512 ones (Cooperlake here) ran every such product at least as fast, the 512-unit
** char-LSTM's dU, dW (256 x 512)' (256 x 2048) at ~205-215 GFLOP/s against ~165-175
** (docs/performance.md). */
enum { AT_MIN = 64, AT_MINK = 128 };
static bool at_product(const mg_gemm_plan *g) {
  return g->dt == MG_F32 && g->ta && !g->tb && g->alpha == 1 && g->M >= AT_MIN &&
         g->N >= AT_MIN && g->K >= AT_MINK && mg_packed_available() &&
         !mg_blas_avx512();
}

/* The packing buffer a block of 'g' needs (mg_gemm_at_scratch of its M), 0 for BLAS's. */
static size_t at_bytes(const mg_gemm_plan *g) {
  if (!at_product(g)) return 0;
  return mg_gemm_at_scratch(g->rows && g->blk < g->M ? g->blk : g->M, g->K);
}

/* A free packing buffer of the job's, or -1 (none: BLAS). At most one block per thread
** runs at once and there are as many buffers as threads, so one is always free. */
static int slot_take(const grads_job *j) {
  for (int i = 0; j->slots != NULL && i < j->nslot; i++) {
    int no = 0;
    if (__atomic_compare_exchange_n(&j->busy[i], &no, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
      return i;
  }
  return -1;
}

static void grads_gemm(const grads_job *j, const mg_gemm_plan *g, int64_t k) {
  int i = at_product(g) ? slot_take(j) : -1;
  if (i >= 0) {
    int64_t lo = k * g->blk, n = (g->rows ? g->M : g->N) - lo;
    const float *a = g->a, *b = g->b;
    float *y = g->y;
    void *buf = j->slots + (size_t)i * j->slot_bytes;
    if (n > g->blk) n = g->blk;
    bool done = g->rows ? mg_gemm_at_f32(n, g->N, g->K, a + lo, g->lda, b, g->ldb, g->beta != 0,
                                         y + lo * g->ldy, g->ldy, buf)
                        : mg_gemm_at_f32(g->M, n, g->K, a, g->lda, b + lo, g->ldb, g->beta != 0,
                                         y + lo, g->ldy, buf);
    __atomic_store_n(&j->busy[i], 0, __ATOMIC_RELEASE);
    if (done) return;
  }
  mg_gemm_block(g, k);
}

static void grads_blocks(void *arg, int64_t k0, int64_t k1) {
  const grads_job *j = arg;
  for (int64_t k = k0; k < k1; k++) {
    int64_t i = k;
    int p = 0;
    while (p < j->np && i >= j->nb[p]) i -= j->nb[p++];
    if (p < j->np) { grads_gemm(j, &j->pl[p], i); continue; }
    int q = 0;
    while (i >= j->snb[q]) i -= j->snb[q++];
    const mg_colsum_spec *s = &j->cs[q];
    int64_t lo = i * j->sblk[q], n = s->n - lo < j->sblk[q] ? s->n - lo : j->sblk[q];
    if (s->x)
      mg_xsum_f32(s->rows, n, (const float *)s->a + lo, s->ld, s->x, s->ldx, (int)s->d, s->gw + lo,
                  s->ldw, s->beta, (float *)s->out + lo);
    else
      mg_colsum(s->dt, s->rows, n, at(s->dt, s->a, lo), s->ld, at(s->dt, s->out, lo));
  }
}

/* Below GRADS_SHARE_MIN multiply-adds in all (the 6-unit LSTM's weight gradients over
** T B = 1600 rows: ~0.6M) waking a second thread costs more than it saves (the 6-unit
** training step on 2 threads was slower than on 1): the caller computes every block itself,
** the same blocks, so the same bits. */
enum { GRADS_SHARE_MIN = 1 << 20 };

void mg_grads_par(mg_ctx *C, int np, const mg_gemm_plan *pl, int ns, const mg_colsum_spec *cs) {
  grads_job j = { .np = np, .ns = ns, .pl = pl, .cs = cs };
  int64_t total = 0, work = 0;
  assert(np <= MG_GRADS_MAX && ns <= 2);
  for (int p = 0; p < np; p++) {
    total += j.nb[p] = pl[p].nb;
    work += pl[p].M * pl[p].N * pl[p].K;
  }
  for (int q = 0; q < ns; q++) {
    int64_t grain = cs[q].rows > 0 ? ((int64_t)1 << 16) / cs[q].rows : cs[q].n;
    if (grain < COLSUM_MINCOLS) grain = COLSUM_MINCOLS;
    j.sblk[q] = (grain + 15) / 16 * 16;
    j.snb[q] = (cs[q].n + j.sblk[q] - 1) / j.sblk[q];
    total += j.snb[q];
    work += cs[q].rows * cs[q].n;
  }
  /* mg_gemm_at_f32's packing buffers (520 KiB each for the 256-unit LSTM's dU): from the
  ** pool, cached there from step to step. Its own aligned_alloc per call, once glibc had
  ** raised its mmap threshold past that size, came from the heap, which fragmented and
  ** grew to 6-14 MiB (docs/performance.md, "Memory of the LSTM training loop"). */
  bool share = work >= GRADS_SHARE_MIN;
  int64_t at_blocks = 0;
  for (int p = 0; p < np; p++) {
    size_t b = at_bytes(&pl[p]);
    if (b > j.slot_bytes) j.slot_bytes = (b + 63) & ~(size_t)63;
    if (b) at_blocks += pl[p].nb;
  }
  int busy[MG_MAXTHREADS] = { 0 };
  size_t cap = 0;
  void *blk = NULL;
  if (at_blocks > 0) {
    int64_t nt = share ? C->nthreads : 1;
    if (nt > at_blocks) nt = at_blocks;
    j.nslot = (int)nt;
    j.busy = busy;
    blk = mg_pool_alloc(C->pool, (size_t)nt * j.slot_bytes, &cap);
    j.slots = blk;
  }
  if (!share) grads_blocks(&j, 0, total);
  else mg_parallel_blocks(C, total, grads_blocks, &j);
  if (blk != NULL) mg_pool_free(C->pool, blk, cap);
}

/* ================================================================ LSTM */

enum { LX, LH, LC, LW, LU, LB, LSTM_NIN };

static mg_status lstm_check(mg_ctx *C, mg_tensor *const *in) {
  const char *fn = mg_ops[MG_OP_LSTM_CELL].name;
  mg_tensor *xhWU[4] = { in[LX], in[LH], in[LW], in[LU] };
  int64_t u = 0;
  char b[96];
  mg_status st = mg_cell_shapes(C, fn, xhWU, 4, &u);
  if (st == MG_OK) st = want2(C, fn, "c", in[LC], in[LX]->shape[0], u);
  if (st != MG_OK) return st;
  if (in[LB]->ndim != 1 || in[LB]->shape[0] != 4 * u)
    return mg_fail(C, MG_ESHAPE, "%s: bias has shape %s, expected (%lld)", fn,
                   mg_shapestr(b, sizeof b, in[LB]->ndim, in[LB]->shape), (long long)(4 * u));
  return same_dtype(C, fn, LSTM_NIN, in);
}

/* The gate pass, typed, over rows [lo, hi) (cells.h). */
#define LSTM_GATES(T, SIG, TANH) do {                                              \
    for (int64_t r = lo; r < hi; r++) {                                            \
      T *z = G + r * 4 * u;                                                        \
      for (int64_t j = 0; j < u; j++) {                                            \
        T i = SIG(z[j] + b[j]), f = SIG(z[u + j] + b[u + j]);                     \
        T g = TANH(z[2 * u + j] + b[2 * u + j]), o = SIG(z[3 * u + j] + b[3 * u + j]); \
        T cc = f * c[r * u + j] + i * g;                                           \
        z[j] = i; z[u + j] = f; z[2 * u + j] = g; z[3 * u + j] = o;               \
        cn[r * u + j] = cc;                                                        \
        hn[r * u + j] = o * TANH(cc);                                              \
      }                                                                            \
    }                                                                              \
  } while (0)

MG_CLONES void mg_lstm_gates_f32(int64_t lo, int64_t hi, int64_t u, float *restrict G,
                                 const float *restrict b, const float *restrict c,
                                 float *restrict cn, float *restrict hn) {
  LSTM_GATES(float, mg_sigmoidf, mg_tanhf);
}

void mg_lstm_gates_f64(int64_t lo, int64_t hi, int64_t u, double *restrict G,
                       const double *restrict b, const double *restrict c, double *restrict cn,
                       double *restrict hn) {
  LSTM_GATES(double, sigm, tanh);
}

/* The reverse gate pass, typed, over rows [lo, hi) (cells.h); GH(s), GC(s) read the
** cotangents (or are 0), so that each case is a loop without branches (vectorized). */
#define LSTM_DZ_LOOP(T, TANH, GH, GC) do {                                         \
    for (int64_t r = lo; r < hi; r++)                                              \
      for (int64_t j = 0; j < u; j++) {                                            \
        int64_t g0 = r * 4 * u + j, s = r * u + j;                                 \
        T i = G[g0], f = G[g0 + u], g = G[g0 + 2 * u], o = G[g0 + 3 * u];          \
        T tc = TANH(cn[s]), dh = GH;                                               \
        T dct = GC + dh * o * (1 - tc * tc);                                       \
        dz[g0] = dct * g * i * (1 - i);                                            \
        dz[g0 + u] = dct * c[s] * f * (1 - f);                                     \
        dz[g0 + 2 * u] = dct * i * (1 - g * g);                                    \
        dz[g0 + 3 * u] = dh * tc * o * (1 - o);                                    \
        dc[s] = dct * f;                                                           \
      }                                                                            \
  } while (0)
#define LSTM_DZ(T, TANH) do {                                                      \
    if (gh && gc) LSTM_DZ_LOOP(T, TANH, gh[s], gc[s]);                             \
    else if (gh) LSTM_DZ_LOOP(T, TANH, gh[s], 0);                                  \
    else if (gc) LSTM_DZ_LOOP(T, TANH, 0, gc[s]);                                  \
    else LSTM_DZ_LOOP(T, TANH, 0, 0);                                              \
  } while (0)

MG_CLONES void mg_lstm_dz_f32(int64_t lo, int64_t hi, int64_t u, const float *restrict G,
                              const float *restrict c, const float *restrict cn,
                              const float *restrict gh, const float *restrict gc,
                              float *restrict dz, float *restrict dc) {
  LSTM_DZ(float, mg_tanhf);
}

void mg_lstm_dz_f64(int64_t lo, int64_t hi, int64_t u, const double *G, const double *c,
                    const double *cn, const double *gh, const double *gc, double *dz,
                    double *dc) {
  LSTM_DZ(double, tanh);
}

/* z = x W + h U + b, then the gates in place: G = [i f g o]; c' = f c + i g, h' = o tanh(c'). */
static void lstm_forward(mg_tensor *const *k, mg_tensor *G, mg_tensor *hn, mg_tensor *cn) {
  mg_tensor *x = k[LX], *h = k[LH], *c = k[LC], *b = k[LB];
  int64_t B = x->shape[0], d = x->shape[1], u = h->shape[1];
  mg_gemm(x->dtype, false, false, B, 4 * u, d, 1, mg_tensor_data(x), d, mg_tensor_data(k[LW]),
          4 * u, 0, mg_tensor_data(G), 4 * u);
  mg_gemm(x->dtype, false, false, B, 4 * u, u, 1, mg_tensor_data(h), u, mg_tensor_data(k[LU]),
          4 * u, 1, mg_tensor_data(G), 4 * u);
  if (x->dtype == MG_F64)
    mg_lstm_gates_f64(0, B, u, MG_F64P(G), MG_F64P(b), MG_F64P(c), MG_F64P(cn), MG_F64P(hn));
  else
    mg_lstm_gates_f32(0, B, u, MG_F32P(G), MG_F32P(b), MG_F32P(c), MG_F32P(cn), MG_F32P(hn));
}

mg_status mg_lstm_cell(mg_ctx *C, mg_tensor *x, mg_tensor *h, mg_tensor *c, mg_tensor *W,
                       mg_tensor *U, mg_tensor *b, mg_tensor **h_out, mg_tensor **c_out) {
  mg_tensor *in[LSTM_NIN] = { x, h, c, W, U, b }, *k[LSTM_NIN], *G = NULL, *hn = NULL, *cn = NULL;
  mg_status st = lstm_check(C, in);
  if (st != MG_OK || (st = contiguous_all(C, LSTM_NIN, in, k)) != MG_OK) return st;
  int64_t B = x->shape[0], u = h->shape[1], gs[2] = { B, 4 * u };
  if ((st = mg_tensor_empty(C, x->dtype, 2, gs, &G)) == MG_OK &&
      (st = mg_tensor_empty(C, x->dtype, 2, h->shape, &hn)) == MG_OK &&
      (st = mg_tensor_empty(C, x->dtype, 2, h->shape, &cn)) == MG_OK) {
    lstm_forward(k, G, hn, cn);
    st = mg_poll(C, "lstm_cell");     /* per step: interrupted, unrecorded */
    if (st == MG_OK && mg_recording(C)) {
      mg_tensor *out[2] = { hn, cn };
      st = mg_record(C, MG_OP_LSTM_CELL, LSTM_NIN, in, 2, out, 1, &G, NULL);
    }
  }
  release_all(LSTM_NIN, k);
  mg_tensor_release(G);
  if (st != MG_OK) { mg_tensor_release(hn); mg_tensor_release(cn); return st; }
  *h_out = hn;
  *c_out = cn;
  return MG_OK;
}

/* Fused reverse rule: dz from the saved gates, then the GEMMs each needed input asks for,
** each into a new tensor, or with beta = 1 into acc[i] when the sweep gives one (acc NULL:
** none). */
static mg_status lstm_vjp_fused(mg_ctx *C, const mg_node *n, mg_tensor *gh, mg_tensor *gc,
                                const bool *need, mg_tensor **gin, mg_tensor *const *acc) {
  mg_tensor *k[LSTM_NIN], *G = n->saved[0], *cn = n->out[1], *dz = NULL, *dc = NULL;
  mg_status st = contiguous_all(C, LSTM_NIN, n->in, k);
  if (st != MG_OK) return st;
  mg_tensor *g2[2] = { gh, gc }, *gk[2];
  if ((st = contiguous_all(C, 2, g2, gk)) != MG_OK) { release_all(LSTM_NIN, k); return st; }
  mg_dtype dt = n->in[LX]->dtype;
  int64_t B = k[LX]->shape[0], d = k[LX]->shape[1], u = k[LH]->shape[1], gs[2] = { B, 4 * u };
  if ((st = mg_tensor_empty(C, dt, 2, gs, &dz)) == MG_OK &&
      (st = mg_tensor_empty(C, dt, 2, k[LH]->shape, &dc)) == MG_OK) {
    if (dt == MG_F64)
      mg_lstm_dz_f64(0, B, u, MG_F64P(G), MG_F64P(k[LC]), MG_F64P(cn), gk[0] ? MG_F64P(gk[0]) : NULL,
                  gk[1] ? MG_F64P(gk[1]) : NULL, MG_F64P(dz), MG_F64P(dc));
    else
      mg_lstm_dz_f32(0, B, u, MG_F32P(G), MG_F32P(k[LC]), MG_F32P(cn), gk[0] ? MG_F32P(gk[0]) : NULL,
                  gk[1] ? MG_F32P(gk[1]) : NULL, MG_F32P(dz), MG_F32P(dc));
    /* (rows, cols) of each gradient and its GEMM: dx = dz W', dh = dz U', dW = x' dz, ... */
    struct { int in; int64_t r, c, K; bool ta, tb; mg_tensor *a, *b; } mm[4] = {
      { LX, B, d, 4 * u, false, true, dz, k[LW] }, { LH, B, u, 4 * u, false, true, dz, k[LU] },
      { LW, d, 4 * u, B, true, false, k[LX], dz }, { LU, u, 4 * u, B, true, false, k[LH], dz } };
    for (int m = 0; m < 4 && st == MG_OK; m++) {
      int i = mm[m].in;
      if (!need[i]) continue;
      int64_t sh[2] = { mm[m].r, mm[m].c };
      mg_tensor *into = acc ? acc[i] : NULL;       /* the running sum, added to in place */
      if (into == NULL && (st = mg_tensor_empty(C, dt, 2, sh, &gin[i])) != MG_OK) break;
      mg_gemm(dt, mm[m].ta, mm[m].tb, mm[m].r, mm[m].c, mm[m].K, 1, mg_tensor_data(mm[m].a),
              mm[m].a->shape[1], mg_tensor_data(mm[m].b), mm[m].b->shape[1], into ? 1 : 0,
              mg_tensor_data(into ? into : gin[i]), mm[m].c);
      if (into) mg_bump_version(into);         /* an in-place write, as mg_tensor_add_ */
    }
    if (st == MG_OK && need[LB]) st = mg_tensor_sum(C, dz, 1u, false, &gin[LB]);
    if (st == MG_OK && need[LC]) gin[LC] = mg_tensor_retain(dc);
  }
  release_all(LSTM_NIN, k);
  release_all(2, gk);
  mg_tensor_release(dz);
  mg_tensor_release(dc);
  return st;
}

/* The gates i, f, g, o and tanh(c') as tensors: recomputed with recorded ops when another
** tape records (so they are differentiable), else views of the saved ones. */
static void lstm_gates(mg_ex *e, const mg_node *n, mg_tensor **gate, mg_tensor **tc) {
  mg_tensor *const *in = n->in;
  int64_t u = in[LH]->shape[1];
  mg_tensor *z = n->saved[0], *cn = n->out[1];
  bool live = mg_recording(e->C);
  if (live)
    z = mg_ex_add(e, mg_ex_add(e, mg_ex_matmul(e, in[LX], in[LW]), mg_ex_matmul(e, in[LH], in[LU])), in[LB]);
  for (int q = 0; q < 4; q++) {
    gate[q] = mg_ex_narrow(e, z, 1, q * u, u);
    if (live) gate[q] = mg_ex_unary(e, q == 2 ? MG_U_TANH : MG_U_SIGMOID, gate[q]);
  }
  if (live) cn = mg_ex_add(e, mg_ex_mul(e, gate[1], in[LC]), mg_ex_mul(e, gate[0], gate[2]));
  *tc = mg_ex_unary(e, MG_U_TANH, cn);
}

/* s (1 - s): the sigmoid's derivative from its value */
static mg_tensor *dsig(mg_ex *e, mg_tensor *s) { return mg_ex_mul(e, s, mg_ex_rsub(e, 1, s)); }
/* 1 - t^2: tanh's derivative from its value */
static mg_tensor *dtanh(mg_ex *e, mg_tensor *t) { return mg_ex_rsub(e, 1, mg_ex_mul(e, t, t)); }

static mg_status lstm_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                          const bool *need, mg_tensor **gin) {
  if (lead == 0 && !mg_recording(C)) return lstm_vjp_fused(C, n, g[0], g[1], need, gin, NULL);
  mg_ex ex, *e = &ex;
  mg_ex_begin(e, C);
  mg_tensor *const *in = n->in, *gate[4], *tc = NULL;
  lstm_gates(e, n, gate, &tc);
  mg_tensor *like = g[0] ? g[0] : g[1];
  mg_tensor *gh = g[0] ? g[0] : mg_ex_zeros(e, like, lead, n->out[0]);
  mg_tensor *gc = g[1] ? g[1] : mg_ex_zeros(e, like, lead, n->out[1]);
  mg_tensor *dct = mg_ex_add(e, gc, mg_ex_mul(e, mg_ex_mul(e, gh, gate[3]), dtanh(e, tc)));
  mg_tensor *dz[4] = {
    mg_ex_mul(e, mg_ex_mul(e, dct, gate[2]), dsig(e, gate[0])),
    mg_ex_mul(e, mg_ex_mul(e, dct, in[LC]), dsig(e, gate[1])),
    mg_ex_mul(e, mg_ex_mul(e, dct, gate[0]), dtanh(e, gate[2])),
    mg_ex_mul(e, mg_ex_mul(e, gh, tc), dsig(e, gate[3])) };
  mg_tensor *z = mg_ex_cat(e, 4, dz, lead + 1);
  if (need[LX]) gin[LX] = mg_ex_keep(e, mg_ex_matmul(e, z, mg_ex_mT(e, in[LW])));
  if (need[LH]) gin[LH] = mg_ex_keep(e, mg_ex_matmul(e, z, mg_ex_mT(e, in[LU])));
  if (need[LC]) gin[LC] = mg_ex_keep(e, mg_ex_mul(e, dct, gate[1]));
  if (need[LW]) gin[LW] = mg_ex_keep(e, mg_ex_matmul(e, mg_ex_mT(e, in[LX]), z));
  if (need[LU]) gin[LU] = mg_ex_keep(e, mg_ex_matmul(e, mg_ex_mT(e, in[LH]), z));
  if (need[LB]) gin[LB] = mg_ex_keep(e, mg_ex_sum(e, z, 1u << lead));
  return mg_ex_end(e);
}

/* Sum of the terms that exist (NULL terms are zero). */
static mg_tensor *add_opt(mg_ex *e, mg_tensor *a, mg_tensor *b) {
  return a == NULL ? b : (b == NULL ? a : mg_ex_add(e, a, b));
}

static mg_tensor *mul_opt(mg_ex *e, mg_tensor *a, mg_tensor *b) {
  return (a == NULL || b == NULL) ? NULL : mg_ex_mul(e, a, b);
}

/* Tangent of x W + h U + b (any of them may have none); NULL when all are NULL. */
static mg_tensor *affine_tangent(mg_ex *e, const mg_node *n, int lead, mg_tensor *const *t,
                                 int ix, int ih, int iw, int iu, mg_tensor *bias_t) {
  mg_tensor *const *in = n->in, *z = NULL;
  if (t[ix]) z = add_opt(e, z, mg_ex_matmul(e, t[ix], in[iw]));
  if (t[iw]) z = add_opt(e, z, mg_ex_matmul(e, in[ix], t[iw]));
  if (t[ih]) z = add_opt(e, z, mg_ex_matmul(e, t[ih], in[iu]));
  if (t[iu]) z = add_opt(e, z, mg_ex_matmul(e, in[ih], t[iu]));
  if (bias_t) z = add_opt(e, z, mg_ex_align(e, bias_t, lead, 2));
  return z;
}

static mg_status lstm_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                          mg_tensor **tout) {
  mg_ex ex, *e = &ex;
  mg_ex_begin(e, C);
  mg_tensor *const *in = n->in, *gate[4], *tc = NULL, *tg[4] = { NULL };
  int64_t u = in[LH]->shape[1];
  lstm_gates(e, n, gate, &tc);
  mg_tensor *tz = affine_tangent(e, n, lead, t, LX, LH, LW, LU, t[LB]);
  for (int q = 0; tz && q < 4; q++) {
    mg_tensor *zq = mg_ex_narrow(e, tz, lead + 1, q * u, u);
    tg[q] = mg_ex_mul(e, zq, q == 2 ? dtanh(e, gate[q]) : dsig(e, gate[q]));
  }
  mg_tensor *tcn = add_opt(e, add_opt(e, mul_opt(e, tg[1], in[LC]), mul_opt(e, gate[1], t[LC])),
                           add_opt(e, mul_opt(e, tg[0], gate[2]), mul_opt(e, gate[0], tg[2])));
  mg_tensor *thn = add_opt(e, mul_opt(e, tg[3], tc), mul_opt(e, mul_opt(e, gate[3], dtanh(e, tc)), tcn));
  mg_tensor *outs[2] = { thn, tcn };
  for (int q = 0; q < 2 && e->st == MG_OK; q++) {
    if (outs[q] == NULL) continue;
    mg_status st = mg_expand_lead(C, outs[q], lead, 2, n->out[q]->shape, &tout[q]);
    if (st != MG_OK) e->st = st;
  }
  return mg_ex_end(e);
}

/* The sweep's accumulating form (mg_vjp_acc_fn): first-order only, as lstm_vjp's fused path. */
static mg_status lstm_vjp_acc(mg_ctx *C, const mg_node *n, mg_tensor *const *g, const bool *need,
                              mg_tensor **gin, mg_tensor *const *acc) {
  return lstm_vjp_fused(C, n, g[0], g[1], need, gin, acc);
}

const mg_rules mg_rules_lstm_cell = { .vjp = lstm_vjp, .jvp = lstm_jvp, .vjp_acc = lstm_vjp_acc };

/* ================================================================ GRU */

enum { GX, GH, GW, GU, GB, GRU_NIN };

mg_status mg_gru_bias_check(mg_ctx *C, const char *fn, const mg_tensor *b, bool ra, int64_t u) {
  char s[96];
  bool ok = ra ? (b->ndim == 2 && b->shape[0] == 2 && b->shape[1] == 3 * u)
               : (b->ndim == 1 && b->shape[0] == 3 * u);
  if (!ok)
    return mg_fail(C, MG_ESHAPE, "%s: bias has shape %s, expected %s(%lld)", fn,
                   mg_shapestr(s, sizeof s, b->ndim, b->shape), ra ? "(2," : "(",
                   (long long)(3 * u));
  return MG_OK;
}

static mg_status gru_check(mg_ctx *C, mg_tensor *const *in, bool reset_after) {
  const char *fn = mg_ops[MG_OP_GRU_CELL].name;
  mg_tensor *xhWU[4] = { in[GX], in[GH], in[GW], in[GU] };
  int64_t u = 0;
  mg_status st = mg_cell_shapes(C, fn, xhWU, 3, &u);
  if (st == MG_OK) st = mg_gru_bias_check(C, fn, in[GB], reset_after, u);
  return st == MG_OK ? same_dtype(C, fn, GRU_NIN, in) : st;
}

/* The GRU gate passes, typed, over rows [lo, hi) (cells.h); S = [z r hh m] (ld 4u), M and
** the cotangents dmx, dmh ld 3u, h, hn, dh, drh ld u. 'rb' is the recurrent bias (ra). */
#define GRU_PRE_LOOP(T, SIG, RA) do {                                                       \
    const T *M = M_, *b = b_, *h = h_, *rb = b + 3 * u;                             \
    T *S = S_;                                                                     \
    for (int64_t r = lo; r < hi; r++)                                              \
      for (int64_t j = 0; j < u; j++) {                                            \
        int64_t s0 = r * 4 * u + j, m0 = r * 3 * u + j;                            \
        T z = SIG(M[m0] + b[j] + S[s0] + (RA ? rb[j] : 0));                        \
        T rr = SIG(M[m0 + u] + b[u + j] + S[s0 + u] + (RA ? rb[u + j] : 0));       \
        S[s0] = z;                                                                 \
        S[s0 + u] = rr;                                                            \
        S[s0 + 3 * u] = RA ? S[s0 + 2 * u] + rb[2 * u + j] : rr * h[r * u + j];    \
      }                                                                            \
  } while (0)

#define GRU_POST_LOOP(T, TANH, RA) do {                                                     \
    const T *M = M_, *b = b_, *h = h_;                                             \
    T *S = S_, *hn = hn_;                                                          \
    for (int64_t r = lo; r < hi; r++)                                              \
      for (int64_t j = 0; j < u; j++) {                                            \
        int64_t s0 = r * 4 * u + j, hs = r * u + j;                                \
        T z = S[s0], rr = S[s0 + u];                                               \
        T hh = TANH(M[r * 3 * u + 2 * u + j] + b[2 * u + j] +                      \
                    (RA ? rr * S[s0 + 3 * u] : S[s0 + 2 * u]));                    \
        S[s0 + 2 * u] = hh;                                                        \
        hn[hs] = z * h[hs] + (1 - z) * hh;                                         \
      }                                                                            \
  } while (0)

#define GRU_D1_LOOP(T, RA) do {                                                             \
    const T *S = S_, *h = h_, *gh = gh_;                                           \
    T *dmx = dmx_, *dmh = dmh_, *dh = dh_;                                         \
    for (int64_t r = lo; r < hi; r++)                                              \
      for (int64_t j = 0; j < u; j++) {                                            \
        int64_t s0 = r * 4 * u + j, x0 = r * 3 * u + j, s = r * u + j;             \
        T z = S[s0], rr = S[s0 + u], hh = S[s0 + 2 * u], g = gh[s];                \
        T dzp = g * (h[s] - hh) * z * (1 - z), dhp = g * (1 - z) * (1 - hh * hh);  \
        dmx[x0] = dmh[x0] = dzp;                                                   \
        dmx[x0 + 2 * u] = dhp;                                                     \
        if (RA) {                                                                  \
          T drp = dhp * S[s0 + 3 * u] * rr * (1 - rr);                             \
          dmx[x0 + u] = dmh[x0 + u] = drp;                                         \
          dmh[x0 + 2 * u] = dhp * rr;                                              \
        } else {                                                                   \
          dmh[x0 + 2 * u] = dhp;                                                   \
        }                                                                          \
        dh[s] = g * z;                                                             \
      }                                                                            \
  } while (0)

/* ra as a constant in each loop: no branch inside, so the loops vectorize. */
#define GRU_PRE(T, SIG) do { if (ra) GRU_PRE_LOOP(T, SIG, 1); else GRU_PRE_LOOP(T, SIG, 0); } while (0)
#define GRU_POST(T, TANH) do { if (ra) GRU_POST_LOOP(T, TANH, 1); else GRU_POST_LOOP(T, TANH, 0); } while (0)
#define GRU_D1(T) do { if (ra) GRU_D1_LOOP(T, 1); else GRU_D1_LOOP(T, 0); } while (0)

#define GRU_DR(T) do {                                                             \
    for (int64_t r = lo; r < hi; r++)                                              \
      for (int64_t j = 0; j < u; j++) {                                            \
        int64_t s = r * u + j, x1 = r * 3 * u + u + j;                             \
        T rr = ((const T *)S_)[r * 4 * u + u + j], d = ((const T *)drh_)[s];       \
        ((T *)dmx_)[x1] = ((T *)dmh_)[x1] = d * ((const T *)h_)[s] * rr * (1 - rr); \
        ((T *)dh_)[s] += d * rr;                                                   \
      }                                                                            \
  } while (0)

MG_CLONES static void gru_pre_f32(int64_t lo, int64_t hi, int64_t u, bool ra,
                                  const float *restrict M_, float *restrict S_,
                                  const float *restrict b_, const float *restrict h_) {
  GRU_PRE(float, mg_sigmoidf);
}
MG_CLONES static void gru_post_f32(int64_t lo, int64_t hi, int64_t u, bool ra,
                                   const float *restrict M_, float *restrict S_,
                                   const float *restrict b_, const float *restrict h_,
                                   float *restrict hn_) {
  GRU_POST(float, mg_tanhf);
}
MG_CLONES static void gru_d1_f32(int64_t lo, int64_t hi, int64_t u, bool ra,
                                 const float *restrict S_, const float *restrict h_,
                                 const float *restrict gh_, float *restrict dmx_,
                                 float *restrict dmh_, float *restrict dh_) {
  GRU_D1(float);
}
MG_CLONES static void gru_dr_f32(int64_t lo, int64_t hi, int64_t u, const float *restrict S_,
                                 const float *restrict h_, const float *restrict drh_,
                                 float *restrict dmx_, float *restrict dmh_,
                                 float *restrict dh_) {
  GRU_DR(float);
}

void mg_gru_pre(mg_dtype dt, int64_t lo, int64_t hi, int64_t u, bool ra, const void *M_,
                void *S_, const void *b_, const void *h_) {
  if (dt == MG_F64) GRU_PRE(double, sigm);
  else gru_pre_f32(lo, hi, u, ra, M_, S_, b_, h_);
}

void mg_gru_post(mg_dtype dt, int64_t lo, int64_t hi, int64_t u, bool ra, const void *M_,
                 void *S_, const void *b_, const void *h_, void *hn_) {
  if (dt == MG_F64) GRU_POST(double, tanh);
  else gru_post_f32(lo, hi, u, ra, M_, S_, b_, h_, hn_);
}

void mg_gru_d1(mg_dtype dt, int64_t lo, int64_t hi, int64_t u, bool ra, const void *S_,
               const void *h_, const void *gh_, void *dmx_, void *dmh_, void *dh_) {
  if (dt == MG_F64) GRU_D1(double);
  else gru_d1_f32(lo, hi, u, ra, S_, h_, gh_, dmx_, dmh_, dh_);
}

void mg_gru_dr(mg_dtype dt, int64_t lo, int64_t hi, int64_t u, const void *S_, const void *h_,
               const void *drh_, void *dmx_, void *dmh_, void *dh_) {
  if (dt == MG_F64) GRU_DR(double);
  else gru_dr_f32(lo, hi, u, S_, h_, drh_, dmx_, dmh_, dh_);
}

/* C = A op(B) + beta C through the packing P when there is one (float32), else BLAS. */
void mg_rec_gemm(mg_dtype dt, const mg_packed *P, bool tb, int64_t M, int64_t N, int64_t K,
                 const void *A, int64_t lda, const void *Bm, int64_t ldb, int beta, void *Cm,
                 int64_t ldc) {
  if (P && dt == MG_F32) mg_gemm_packed(P, M, A, lda, beta, Cm, ldc);
  else mg_gemm(dt, false, tb, M, N, K, 1, A, lda, Bm, ldb, beta, Cm, ldc);
}

/* One step given M = x W: S = [z r hh m] and h' (cells.h). */
void mg_gru_step_forward(mg_dtype dt, int64_t B, int64_t u, bool ra, const void *U,
                         const mg_packed *P, const void *b, const void *h, const void *M,
                         void *S, void *hn) {
  mg_rec_gemm(dt, P, false, B, ra ? 3 * u : 2 * u, u, h, u, U, 3 * u, 0, S, 4 * u);
  mg_gru_pre(dt, 0, B, u, ra, M, S, b, h);
  if (!ra)                                       /* S[:, 2u:3u] = (r h) U_h */
    mg_rec_gemm(dt, P ? P + 1 : NULL, false, B, u, u, at(dt, S, 3 * u), 4 * u, at(dt, U, 2 * u),
                3 * u, 0, at(dt, S, 2 * u), 4 * u);
  mg_gru_post(dt, 0, B, u, ra, M, S, b, h, hn);
}

/* One reverse step: dmx, dmh and dh = d h (NULL: not wanted) from gh (cells.h); drh is
** scratch (B, u) without ra. */
void mg_gru_step_reverse(mg_dtype dt, int64_t B, int64_t u, bool ra, const void *U,
                         const mg_packed *P, const void *S, const void *h, const void *gh,
                         void *dmx, void *dmh, void *drh, void *dh) {
  mg_gru_d1(dt, 0, B, u, ra, S, h, gh, dmx, dmh, dh);
  if (!ra) {                                     /* d(r h) = dhp U_h', then dr */
    mg_rec_gemm(dt, P ? P + 1 : NULL, true, B, u, u, at(dt, dmh, 2 * u), 3 * u, at(dt, U, 2 * u),
                3 * u, 0, drh, u);
    mg_gru_dr(dt, 0, B, u, S, h, drh, dmx, dmh, dh);
  }
  mg_rec_gemm(dt, P, true, B, u, ra ? 3 * u : 2 * u, dmh, 3 * u, U, 3 * u, 1, dh, u);
}

/* The weight gradients of 'rows' GRU rows (one step, or all T B of a sequence) from x, h
** (the state each row started from), S and the cotangents: into the tensors of 'gin' that
** are not NULL (gx (rows, d), gW (d, 3u), gU (u, 3u), gb (2, 3u) or (3u)). */
void mg_gru_weight_grads(mg_ctx *C, mg_dtype dt, int64_t rows, int64_t d, int64_t u, bool ra,
                         const void *x, const void *h, const void *S, const void *W,
                         const void *dmx, const void *dmh, mg_tensor *const *g) {
  mg_gemm_plan pl[MG_GRADS_MAX];
  mg_colsum_spec cs[2];
  int np = 0, ns = 0;
  if (g[2]) {                                    /* the largest first: the blocks balance */
    void *gu = mg_tensor_data(g[2]);
    mg_gemm_plan_make(&pl[np++], dt, true, false, u, ra ? 3 * u : 2 * u, rows, 1, h, u, dmh,
                      3 * u, 0, gu, 3 * u);
    if (!ra)                                     /* U_h's from m = r h */
      mg_gemm_plan_make(&pl[np++], dt, true, false, u, u, rows, 1, at(dt, S, 3 * u), 4 * u,
                        at(dt, dmh, 2 * u), 3 * u, 0, at(dt, gu, 2 * u), 3 * u);
  }
  if (g[0]) mg_gemm_plan_make(&pl[np++], dt, false, true, rows, d, 3 * u, 1, dmx, 3 * u, W,
                              3 * u, 0, mg_tensor_data(g[0]), d);
  /* A narrow input's gW = x' dmx in the pass of dmx's column sums (mg_xsum_f32): BLAS would
  ** copy all of dmx for a product of d rows (at 256 units, B 64, T 100: 5.3 ms for gW alone,
  ** against 1.7 ms for both). */
  void *gb = g[3] ? mg_tensor_data(g[3]) : NULL;
  bool xsum = g[1] && gb && dt == MG_F32 && mg_xsum_available(d);
  if (g[1] && !xsum)
    mg_gemm_plan_make(&pl[np++], dt, true, false, d, 3 * u, rows, 1, x, d, dmx, 3 * u, 0,
                      mg_tensor_data(g[1]), 3 * u);
  /* With ra, dmh's z and r columns are dmx's (mg_gru_d1): of the recurrent bias's sums only
  ** the hh part is summed, the rest copied. */
  if (gb) {
    cs[ns++] = (mg_colsum_spec){ .dt = dt, .rows = rows, .n = 3 * u, .ld = 3 * u, .a = dmx, .out = gb };
    if (xsum) {
      cs[0].x = x;
      cs[0].d = cs[0].ldx = d;
      cs[0].gw = mg_tensor_data(g[1]);
      cs[0].ldw = 3 * u;
    }
    if (ra)
      cs[ns++] = (mg_colsum_spec){ .dt = dt, .rows = rows, .n = u, .ld = 3 * u,
                                   .a = at(dt, dmh, 2 * u), .out = at(dt, gb, 5 * u) };
  }
  mg_grads_par(C, np, pl, ns, cs);
  if (gb && ra) memcpy(at(dt, gb, 3 * u), gb, (size_t)(2 * u) * mg_dtype_size(dt));
}

mg_status mg_gru_cell(mg_ctx *C, mg_tensor *x, mg_tensor *h, mg_tensor *W, mg_tensor *U,
                      mg_tensor *b, bool reset_after, mg_tensor **h_out) {
  mg_tensor *in[GRU_NIN] = { x, h, W, U, b }, *k[GRU_NIN], *S = NULL, *M = NULL, *hn = NULL;
  mg_status st = gru_check(C, in, reset_after);
  if (st != MG_OK || (st = contiguous_all(C, GRU_NIN, in, k)) != MG_OK) return st;
  int64_t B = x->shape[0], u = h->shape[1], ss[2] = { B, 4 * u }, ms[2] = { B, 3 * u };
  if ((st = mg_tensor_empty(C, x->dtype, 2, ss, &S)) == MG_OK &&
      (st = mg_tensor_empty(C, x->dtype, 2, ms, &M)) == MG_OK &&
      (st = mg_tensor_empty(C, x->dtype, 2, h->shape, &hn)) == MG_OK) {
    int64_t d = x->shape[1];
    mg_gemm(x->dtype, false, false, B, 3 * u, d, 1, mg_tensor_data(k[GX]), d,
            mg_tensor_data(k[GW]), 3 * u, 0, mg_tensor_data(M), 3 * u);
    mg_gru_step_forward(x->dtype, B, u, reset_after, mg_tensor_data(k[GU]), NULL, mg_tensor_data(k[GB]),
                        mg_tensor_data(k[GH]), mg_tensor_data(M), mg_tensor_data(S),
                        mg_tensor_data(hn));
    st = mg_poll(C, "gru_cell");      /* per step: interrupted, unrecorded */
    if (st == MG_OK && mg_recording(C)) {
      mg_attr at = { .ni = 1, .i = { reset_after } };
      st = mg_record(C, MG_OP_GRU_CELL, GRU_NIN, in, 1, &hn, 1, &S, &at);
    }
  }
  release_all(GRU_NIN, k);
  mg_tensor_release(S);
  mg_tensor_release(M);
  if (st != MG_OK) { mg_tensor_release(hn); return st; }
  *h_out = hn;
  return MG_OK;
}

/* The GRU's gates as tensors: z, r, hh and m (the recurrent h-gate term: h U_h + b_r[h]
** for reset_after, r h otherwise), recomputed with recorded ops when another tape records. */
static void gru_gates(mg_ex *e, const mg_node *n, mg_tensor **z, mg_tensor **r, mg_tensor **hh,
                      mg_tensor **m) {
  mg_tensor *const *in = n->in, *S = n->saved[0];
  bool ra = n->attr.i[0] != 0;
  int64_t u = in[GH]->shape[1];
  if (!mg_recording(e->C)) {
    *z = mg_ex_narrow(e, S, 1, 0, u);
    *r = mg_ex_narrow(e, S, 1, u, u);
    *hh = mg_ex_narrow(e, S, 1, 2 * u, u);
    *m = mg_ex_narrow(e, S, 1, 3 * u, u);
    return;
  }
  mg_tensor *bi = ra ? mg_ex_select(e, in[GB], 0, 0) : in[GB];
  mg_tensor *mx = mg_ex_add(e, mg_ex_matmul(e, in[GX], in[GW]), bi);
  mg_tensor *U = in[GU];
  mg_tensor *mh = mg_ex_matmul(e, in[GH], ra ? U : mg_ex_narrow(e, U, 1, 0, 2 * u));
  if (ra) mh = mg_ex_add(e, mh, mg_ex_select(e, in[GB], 0, 1));
  *z = mg_ex_unary(e, MG_U_SIGMOID, mg_ex_add(e, mg_ex_narrow(e, mx, 1, 0, u), mg_ex_narrow(e, mh, 1, 0, u)));
  *r = mg_ex_unary(e, MG_U_SIGMOID, mg_ex_add(e, mg_ex_narrow(e, mx, 1, u, u), mg_ex_narrow(e, mh, 1, u, u)));
  *m = ra ? mg_ex_narrow(e, mh, 1, 2 * u, u) : mg_ex_mul(e, *r, in[GH]);
  mg_tensor *rec = ra ? mg_ex_mul(e, *r, *m) : mg_ex_matmul(e, *m, mg_ex_narrow(e, U, 1, 2 * u, u));
  *hh = mg_ex_unary(e, MG_U_TANH, mg_ex_add(e, mg_ex_narrow(e, mx, 1, 2 * u, u), rec));
}

/* Scratch and results of a fused GRU reverse over 'rows' rows: dmx, dmh (rows, 3u), and
** the gradients of x, W, U, b each need asks for (new tensors in g[0..3]). */
mg_status mg_gru_grad_buffers(mg_ctx *C, mg_dtype dt, int64_t rows, int64_t d, int64_t u,
                              bool ra, const bool *need4, mg_tensor **dmx, mg_tensor **dmh,
                              mg_tensor **g) {
  int64_t s3[2] = { rows, 3 * u }, sh[4][2] = { { rows, d }, { d, 3 * u }, { u, 3 * u },
                                                 { ra ? 2 : 3 * u, 3 * u } };
  mg_status st = mg_tensor_empty(C, dt, 2, s3, dmx);
  if (st == MG_OK) st = mg_tensor_empty(C, dt, 2, s3, dmh);
  for (int i = 0; i < 4 && st == MG_OK; i++)
    if (need4[i]) st = mg_tensor_empty(C, dt, i == 3 && !ra ? 1 : 2, sh[i], &g[i]);
  return st;
}

/* Fused reverse rule of one GRU step (first order: lead 0, no tape recording). */
static mg_status gru_vjp_fused(mg_ctx *C, const mg_node *n, mg_tensor *gh, const bool *need,
                               mg_tensor **gin) {
  mg_tensor *k[GRU_NIN], *g1[1] = { gh }, *gk[1], *dmx = NULL, *dmh = NULL, *drh = NULL,
            *dh = NULL, *g[4] = { NULL };
  mg_status st = contiguous_all(C, GRU_NIN, n->in, k);
  if (st != MG_OK) return st;
  if ((st = contiguous_all(C, 1, g1, gk)) != MG_OK) { release_all(GRU_NIN, k); return st; }
  mg_dtype dt = k[GX]->dtype;
  bool ra = n->attr.i[0] != 0, need4[4] = { need[GX], need[GW], need[GU], need[GB] };
  int64_t B = k[GX]->shape[0], d = k[GX]->shape[1], u = k[GH]->shape[1];
  st = mg_gru_grad_buffers(C, dt, B, d, u, ra, need4, &dmx, &dmh, g);
  if (st == MG_OK) st = mg_tensor_empty(C, dt, 2, k[GH]->shape, &drh);
  if (st == MG_OK) st = mg_tensor_empty(C, dt, 2, k[GH]->shape, &dh);
  if (st == MG_OK) {
    const void *S = mg_tensor_data(n->saved[0]), *h = mg_tensor_data(k[GH]);
    mg_gru_step_reverse(dt, B, u, ra, mg_tensor_data(k[GU]), NULL, S, h, mg_tensor_data(gk[0]),
                        mg_tensor_data(dmx), mg_tensor_data(dmh), mg_tensor_data(drh),
                        mg_tensor_data(dh));
    mg_gru_weight_grads(C, dt, B, d, u, ra, mg_tensor_data(k[GX]), h, S, mg_tensor_data(k[GW]),
                        mg_tensor_data(dmx), mg_tensor_data(dmh), g);
    int map[4] = { GX, GW, GU, GB };
    for (int i = 0; i < 4; i++) { gin[map[i]] = g[i]; g[i] = NULL; }
    if (need[GH]) { gin[GH] = dh; dh = NULL; }
  }
  release_all(GRU_NIN, k);
  release_all(1, gk);
  release_all(4, g);
  mg_tensor *tmp[4] = { dmx, dmh, drh, dh };
  release_all(4, tmp);
  return st;
}

static mg_status gru_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                         const bool *need, mg_tensor **gin) {
  if (lead == 0 && !mg_recording(C) && g[0]) return gru_vjp_fused(C, n, g[0], need, gin);
  mg_ex ex, *e = &ex;
  mg_ex_begin(e, C);
  mg_tensor *const *in = n->in, *z = NULL, *r = NULL, *hh = NULL, *m = NULL, *gh = g[0];
  bool ra = n->attr.i[0] != 0;
  int64_t u = in[GH]->shape[1];
  gru_gates(e, n, &z, &r, &hh, &m);
  mg_tensor *Uh = mg_ex_narrow(e, in[GU], 1, 2 * u, u);
  mg_tensor *dzp = mg_ex_mul(e, mg_ex_mul(e, gh, mg_ex_sub(e, in[GH], hh)), dsig(e, z));
  mg_tensor *dhp = mg_ex_mul(e, mg_ex_mul(e, gh, mg_ex_rsub(e, 1, z)), dtanh(e, hh));
  /* reset_after: d m = dhp r, dr = dhp m; else d(r h) = dhp U_h', dr = d(rh) h */
  mg_tensor *drh = ra ? NULL : mg_ex_matmul(e, dhp, mg_ex_mT(e, Uh));
  mg_tensor *drp = mg_ex_mul(e, ra ? mg_ex_mul(e, dhp, m) : mg_ex_mul(e, drh, in[GH]), dsig(e, r));
  mg_tensor *mx3[3] = { dzp, drp, dhp };
  mg_tensor *dmx = mg_ex_cat(e, 3, mx3, lead + 1);
  mg_tensor *mh3[3] = { dzp, drp, mg_ex_mul(e, dhp, r) };
  mg_tensor *dmh = ra ? mg_ex_cat(e, 3, mh3, lead + 1) : mg_ex_cat(e, 2, mh3, lead + 1);
  mg_tensor *Urec = ra ? in[GU] : mg_ex_narrow(e, in[GU], 1, 0, 2 * u);
  if (need[GX]) gin[GX] = mg_ex_keep(e, mg_ex_matmul(e, dmx, mg_ex_mT(e, in[GW])));
  if (need[GH]) {
    mg_tensor *dh = mg_ex_add(e, mg_ex_mul(e, gh, z), mg_ex_matmul(e, dmh, mg_ex_mT(e, Urec)));
    if (!ra) dh = mg_ex_add(e, dh, mg_ex_mul(e, drh, r));
    gin[GH] = mg_ex_keep(e, dh);
  }
  if (need[GW]) gin[GW] = mg_ex_keep(e, mg_ex_matmul(e, mg_ex_mT(e, in[GX]), dmx));
  if (need[GU]) {
    mg_tensor *dU = mg_ex_matmul(e, mg_ex_mT(e, in[GH]), dmh);
    if (!ra) {
      mg_tensor *parts[2] = { dU, mg_ex_matmul(e, mg_ex_mT(e, m), dhp) };
      dU = mg_ex_cat(e, 2, parts, lead + 1);
    }
    gin[GU] = mg_ex_keep(e, dU);
  }
  if (need[GB]) {
    mg_tensor *bx = mg_ex_sum(e, dmx, 1u << lead);
    if (ra) {
      mg_tensor *two[2] = { mg_ex_unsqueeze(e, mg_ex_sum(e, dmx, 1u << lead), lead),
                            mg_ex_unsqueeze(e, mg_ex_sum(e, dmh, 1u << lead), lead) };
      bx = mg_ex_cat(e, 2, two, lead);
    }
    gin[GB] = mg_ex_keep(e, bx);
  }
  return mg_ex_end(e);
}

static mg_status gru_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                         mg_tensor **tout) {
  mg_ex ex, *e = &ex;
  mg_ex_begin(e, C);
  mg_tensor *const *in = n->in, *z = NULL, *r = NULL, *hh = NULL, *m = NULL;
  bool ra = n->attr.i[0] != 0;
  int64_t u = in[GH]->shape[1];
  gru_gates(e, n, &z, &r, &hh, &m);
  /* tangents of the input part (x W + b_i) and of the recurrent part (h U [+ b_r]) */
  mg_tensor *tbi = t[GB] ? (ra ? mg_ex_select(e, t[GB], lead, 0) : t[GB]) : NULL;
  mg_tensor *tbr = t[GB] && ra ? mg_ex_select(e, t[GB], lead, 1) : NULL;
  mg_tensor *tmx = NULL, *tmh = NULL;
  if (t[GX]) tmx = add_opt(e, tmx, mg_ex_matmul(e, t[GX], in[GW]));
  if (t[GW]) tmx = add_opt(e, tmx, mg_ex_matmul(e, in[GX], t[GW]));
  if (tbi) tmx = add_opt(e, tmx, mg_ex_align(e, tbi, lead, 2));
  mg_tensor *U = ra ? in[GU] : mg_ex_narrow(e, in[GU], 1, 0, 2 * u);
  if (t[GH]) tmh = add_opt(e, tmh, mg_ex_matmul(e, t[GH], U));
  if (t[GU]) tmh = add_opt(e, tmh, mg_ex_matmul(e, in[GH], ra ? t[GU] : mg_ex_narrow(e, t[GU], lead + 1, 0, 2 * u)));
  if (tbr) tmh = add_opt(e, tmh, mg_ex_align(e, tbr, lead, 2));
  mg_tensor *tzp = add_opt(e, tmx ? mg_ex_narrow(e, tmx, lead + 1, 0, u) : NULL,
                           tmh ? mg_ex_narrow(e, tmh, lead + 1, 0, u) : NULL);
  mg_tensor *trp = add_opt(e, tmx ? mg_ex_narrow(e, tmx, lead + 1, u, u) : NULL,
                           tmh ? mg_ex_narrow(e, tmh, lead + 1, u, u) : NULL);
  mg_tensor *tz = mul_opt(e, tzp, dsig(e, z)), *tr = mul_opt(e, trp, dsig(e, r));
  mg_tensor *tpre = tmx ? mg_ex_narrow(e, tmx, lead + 1, 2 * u, u) : NULL, *trec = NULL;
  if (ra) {                              /* d(r m) with m = h U_h + b_r[h] */
    mg_tensor *tm = tmh ? mg_ex_narrow(e, tmh, lead + 1, 2 * u, u) : NULL;
    trec = add_opt(e, mul_opt(e, tr, m), mul_opt(e, r, tm));
  } else {                               /* d((r h) U_h) */
    mg_tensor *Uh = mg_ex_narrow(e, in[GU], 1, 2 * u, u);
    mg_tensor *trh = add_opt(e, mul_opt(e, tr, in[GH]), mul_opt(e, r, t[GH]));
    trec = trh ? mg_ex_matmul(e, trh, Uh) : NULL;
    if (t[GU]) trec = add_opt(e, trec, mg_ex_matmul(e, m, mg_ex_narrow(e, t[GU], lead + 1, 2 * u, u)));
  }
  mg_tensor *thh = mul_opt(e, add_opt(e, tpre, trec), dtanh(e, hh));
  /* h' = z h + (1 - z) hh */
  mg_tensor *th = add_opt(e, mul_opt(e, tz, mg_ex_sub(e, in[GH], hh)), mul_opt(e, z, t[GH]));
  th = add_opt(e, th, mul_opt(e, mg_ex_rsub(e, 1, z), thh));
  if (th && e->st == MG_OK) {
    mg_status st = mg_expand_lead(C, th, lead, 2, n->out[0]->shape, &tout[0]);
    if (st != MG_OK) e->st = st;
  }
  return mg_ex_end(e);
}

const mg_rules mg_rules_gru_cell = { .vjp = gru_vjp, .jvp = gru_jvp };
