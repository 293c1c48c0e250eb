/*
** jacobian.c - vectorized Jacobians over a tape. The basis cotangents (reverse mode) or
** tangents (forward mode) travel as one leading dim through every rule, so a Jacobian costs
** one sweep, split in chunks of basis vectors when it would exceed the memory budget.
*/
#include "mg_impl.h"
#include "smallgemm.h"   /* mg_packed_available: whether this CPU runs the AVX-512 kernels */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#if defined(__SSE2__)
#  include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#  define MG_WIDE_ROWS 1     /* AVX-512 rows, picked at run time where smallgemm.c's kernels run (mg_packed_available) */
#  include <immintrin.h>
#endif

/* ================================================================ the result's size */

/* Bytes the system could still give, from MemAvailable in /proc/meminfo; 0 if unknown. */
static double mem_available(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (f == NULL) return 0;
  char line[128];
  double kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
  fclose(f);
  return kb * 1024;
}

/* Refuse 'bytes' of results when over the limit ('shape': of the largest of 'n' parts). */
static mg_status check_bytes(mg_ctx *C, const char *fn, double bytes, int n, int ndim,
                             const int64_t *shape) {
  if (bytes <= (double)((size_t)64 << 20) && C->jacobian_limit == 0) return MG_OK;   /* cheap */
  double limit = C->jacobian_limit ? (double)C->jacobian_limit : mem_available();
  if (limit <= 0 || bytes <= limit) return MG_OK;
  char sh[128];
  mg_shapestr(sh, sizeof sh, ndim, shape);
  return mg_fail(C, MG_ENOMEM, "%s: the result%s of shape %s needs %.0f bytes (%.1f GiB), more "
                 "than the %.0f bytes %s", fn, n > 1 ? " (its largest part)" : "", sh, bytes,
                 bytes / 1073741824.0, limit,
                 C->jacobian_limit ? "of mg.set_jacobian_limit" : "available (MemAvailable)");
}

/* Bytes of a result of 'ndim' dims 'shape' (a double: no overflow). */
static double result_bytes(int ndim, const int64_t *shape, double esize) {
  for (int d = 0; d < ndim; d++) esize *= (double)shape[d];
  return esize;
}

mg_status mg_check_result_bytes(mg_ctx *C, const char *fn, int n, const int *ndims,
                                const int64_t *const *shapes, double esize) {
  double bytes = 0, most = -1;
  int big = 0;
  for (int i = 0; i < n; i++) {
    double b = result_bytes(ndims[i], shapes[i], esize);
    if (b > most) { most = b; big = i; }
    bytes += b;
  }
  return n < 1 ? MG_OK : check_bytes(C, fn, bytes, n, ndims[big], shapes[big]);
}

/* ================================================================ sweeps */

/* Rows [k0, k0+kc) of the K x K identity, shaped (kc, [1,] shape...) for a batch of 'B'
** (expanded along the batch dim, no copy) or (kc, shape...) when B < 0. */
static mg_status basis(mg_ctx *C, mg_dtype dt, int64_t k0, int64_t kc, int64_t K, int64_t B,
                       int ndim, const int64_t *shape, mg_tensor **out) {
  int64_t sh[MG_MAXDIM];
  mg_tensor *e = NULL, *x = NULL;
  sh[0] = kc;
  sh[1] = 1;
  sh[2] = K;
  mg_status st = mg_tensor_zeros(C, dt, 3, sh, &e);
  if (st != MG_OK) return st;
  for (int64_t i = 0; i < kc; i++) {
    int64_t idx[3] = { i, 0, k0 + i };
    mg_tensor_set(e, idx, 1.0);
  }
  if (B >= 0) {
    sh[1] = B;
    st = mg_tensor_expand(C, e, 3, sh, &x);
    mg_tensor_release(e);
    if (st != MG_OK) return st;
    e = x;
  }
  int nd = 0;
  sh[nd++] = kc;
  if (B >= 0) sh[nd++] = B;
  for (int i = 0; i < ndim; i++) sh[nd++] = shape[i];
  st = mg_tensor_reshape(C, e, nd, sh, out);
  mg_tensor_release(e);
  return st;
}

/* Largest number of elements of a tensor the tape holds. */
static int64_t largest(const mg_tape *T) {
  int64_t m = 1;
  for (size_t i = 0; i < T->n; i++)
    for (int k = 0; k < mg_tape_node(T, i)->nout; k++) {
      int64_t n = mg_tensor_numel(mg_tape_node(T, i)->out[k]);
      if (n > m) m = n;
    }
  return m;
}

/* Basis vectors per sweep allowed by the memory budget: 1..K (1 when K is 0). */
static int64_t chunk_size(const mg_tape *T, int64_t K, int64_t extra) {
  int64_t m = largest(T) > extra ? largest(T) : extra;             /* huge expanded views too */
  uint64_t per = (uint64_t)m > UINT64_MAX / 32 ? UINT64_MAX : 32 * (uint64_t)m;   /* bytes */
  uint64_t c = (uint64_t)T->ctx->memory_budget / per;
  return c < 1 || K < 1 ? 1 : (c > (uint64_t)K ? K : (int64_t)c);
}

/* Move dim 'from' of 't' to position 'to'. */
static mg_status move_dim(mg_ctx *C, mg_tensor *t, int from, int to, mg_tensor **out) {
  int perm[MG_MAXDIM], k = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (k == to) perm[k++] = from;
    if (i != from) perm[k++] = i;
  }
  if (k == to) perm[k++] = from;
  return mg_tensor_permute(C, t, perm, out);
}

/* The chunks joined along dim 0: the one chunk itself (a new reference), else their cat. */
static mg_status join(mg_ctx *C, int nch, mg_tensor **parts, mg_tensor **out) {
  if (nch > 1) return mg_tensor_cat(C, nch, parts, 0, out);
  *out = mg_tensor_retain(parts[0]);
  return MG_OK;
}

/* Final Jacobian from chunk results: each (kc, B?, src...) (reverse) or (kc, B?, tgt...)
** (forward), joined along the basis dim and laid out as the caller's 'shape'. */
static mg_status assemble(mg_ctx *C, int nch, mg_tensor **parts, bool batch, bool fwd,
                          int ndim, const int64_t *shape, mg_tensor **out) {
  mg_tensor *all = NULL, *moved = NULL;
  mg_status st = join(C, nch, parts, &all);
  if (st != MG_OK) return st;
  int to = fwd ? all->ndim - 1 : (batch ? 1 : 0);
  if (to == 0) moved = mg_tensor_retain(all);
  else st = move_dim(C, all, 0, to, &moved);
  mg_tensor_release(all);
  if (st != MG_OK) return st;
  /* contiguous whatever the path: the moved basis dim (batch: (B, K, ...) over (K, B, ...);
  ** forward mode: last) is a permuted view, which reshape keeps where it can, and a caller's
  ** layout must not depend on whether another tape records (then nothing is deferred and no
  ** write_product runs), on the memory budget (chunks) or on the mode. The copy is an op
  ** like any other: a recording tape differentiates through it. */
  mg_tensor *shaped = NULL;
  st = mg_tensor_reshape(C, moved, ndim, shape, &shaped);
  mg_tensor_release(moved);
  if (st != MG_OK) return st;
  st = mg_tensor_contiguous(C, shaped, out);
  mg_tensor_release(shaped);
  return st;
}

/* ================================================================ the product, written once */

/* A source's gradient can come from the sweep as rows * val * diag not yet multiplied
** (tape.c's deferred diagonals: f(h) = relu(h) @ W + b gives val = W^T broadcast over the
** batch, (K, B, N) with a batch stride 0, and diag = relu'(h), (B, N); tanh(h @ W + b) gives
** rows[k, b] = tanh'(z)[b, k] and no diag). The Jacobian is then written here, each element
** once, straight in the result's layout (B, K, N), contiguous: no (K, B, N) product from the
** multiply's kernel, no transposition of it after, no GEMM by a diagonal.
** val = W^T comes as a view of W when 'view_ok' (below) sets MG_TF_EYE_VIEW on the seed
** (linalg.c's eye_vjp then makes no copy): its rows are columns of W, so blocks of KB of
** them are gathered into a small buffer (4 x 4 transposes, in cache) and each serves every
** batch entry: no K x N transposed copy of W written out and read back (0.65 ms of 3.0 at
** (8, 1024), where W is 4 MiB).
** Results larger than NT_MIN go around the caches (streaming stores): they do not fit, and
** an ordinary store reads each line in before writing it, about twice the memory traffic
** (measured on the (32, 512) case: 1.6 ms for 33.5 MB this way, 3 to 4.5 ms with ordinary
** stores). Only those are shared over threads: a smaller result is written from L2 by one
** thread in less time than a hand-over takes on this hypervisor (tens of us; (32, 100), a
** 1.28 MB result: 0.064 ms on 1 thread, 0.074-0.106 shared by 2). */
#define NT_MIN ((int64_t)4 << 20)
#define SHARE_MIN NT_MIN
#define KB 16                /* val's rows per gathered block */
#define TS_PAD 16            /* elements after each gathered row: rows m apart, m a multiple
                                of 1024, would meet in a few cache sets (and alias 4 KiB apart
                                with the loads): (8, 1024) 3.3 -> 2.7 ms */

typedef struct {
  char *y;                   /* the result, rows of m elements */
  const char *v, *d, *r;     /* val at (k, b, j): v + (k * sk + b * sb + j * sj) elements; diag
                                row b: d + b * m (NULL: ones); rows: r[k * B + b] (NULL: ones) */
  int64_t B, K, m, sk, sb, sj;
  bool f64, stream, wide;    /* wide: the AVX-512 rows (ordinary stores) */
} product_job;

/* row_f32 / row_f64: y[i] = s * a[i] * b[i] (b NULL: s * a[i]), i < n; streaming stores
** (SSE2: vectors of W elements of type V, suffix X of the intrinsics) where y is 16-byte
** aligned. */
#if defined(__SSE2__)
#  define STREAMED(T, V, X, W)                                                               \
    if (stream) {                                                                          \
      V vs = _mm_set1_##X(s);                                                              \
      for (; i < n && ((uintptr_t)(y + i) & 15) != 0; i++) y[i] = s * a[i] * (b ? b[i] : (T)1); \
      if (b)                                                                               \
        for (; i + W <= n; i += W)                                                         \
          _mm_stream_##X(y + i, _mm_mul_##X(_mm_mul_##X(vs, _mm_loadu_##X(a + i)), _mm_loadu_##X(b + i))); \
      else                                                                                 \
        for (; i + W <= n; i += W) _mm_stream_##X(y + i, _mm_mul_##X(vs, _mm_loadu_##X(a + i))); \
    }
#else
#  define STREAMED(T, V, X, W) (void)stream;
#endif
#define ROW(NAME, T, V, X, W)                                                                \
  static void NAME(T *y, const T *a, const T *b, T s, int64_t n, bool stream) {              \
    int64_t i = 0;                                                                         \
    STREAMED(T, V, X, W)                                                                   \
    if (b) for (; i < n; i++) y[i] = s * a[i] * b[i];                                      \
    else for (; i < n; i++) y[i] = s * a[i];                                               \
  }
ROW(row_f32, float, __m128, ps, 4)
ROW(row_f64, double, __m128d, pd, 2)
#undef ROW
#undef STREAMED

/* row_f32_wide / row_f64_wide: the same products in the same order (s * a, then * b: the
** same bits) with AVX-512, for ordinary stores (the streamed rows keep the SSE2 ones, which
** measured faster: (32, 512) 2.18-2.37 ms against 2.35-2.51). 'next' (non-NULL):
** a row written later, each of whose lines is fetched for writing (PREFETCHW) as the line at
** the same offset of this one is stored. The rows of one gathered block for one b lie side
** by side, but the next b's are 40 KB further at (32, 100), and the pool's block for the
** result was last written two calls before (the bench's loop frees a result when the next
** one is made), so its lines come from L3 or further: (32, 100) went from 0.123-0.134 to
** 0.095-0.107 ms a call (loaded machine, A/B). Neither half alone gains: the SSE2 rows with
** the next row prefetched before each row, or these without 'next', took about as long as
** before. The tail goes by a masked load and store. */
#ifdef MG_WIDE_ROWS
#  define ROW_WIDE(NAME, T, V, M, X, W)                                                      \
  __attribute__((target("avx512f,prfchw"))) static void                                     \
  NAME(T *y, const T *a, const T *b, T s, int64_t n, const char *next) {                   \
    V vs = _mm512_set1_##X(s);                                                             \
    int64_t i = 0;                                                                         \
    for (; i + W <= n; i += W) {                                                           \
      if (next) _mm_prefetch(next + i * (int64_t)sizeof(T), _MM_HINT_ET0);                 \
      V x = _mm512_mul_##X(vs, _mm512_loadu_##X(a + i));                                   \
      _mm512_storeu_##X(y + i, b ? _mm512_mul_##X(x, _mm512_loadu_##X(b + i)) : x);       \
    }                                                                                      \
    if (i < n) {                                                                           \
      M m = (M)((1u << (n - i)) - 1);                                                      \
      if (next) _mm_prefetch(next + i * (int64_t)sizeof(T), _MM_HINT_ET0);                 \
      V x = _mm512_mul_##X(vs, _mm512_maskz_loadu_##X(m, a + i));                          \
      _mm512_mask_storeu_##X(y + i, m, b ? _mm512_mul_##X(x, _mm512_maskz_loadu_##X(m, b + i)) : x); \
    }                                                                                      \
  }
ROW_WIDE(row_f32_wide, float, __m512, __mmask16, ps, 16)
ROW_WIDE(row_f64_wide, double, __m512d, __mmask8, pd, 8)
#  undef ROW_WIDE
#endif

/* One row of the result: y = s * val(k, b, :) * diag(b, :), val's row 'a' of unit stride;
** 'next' the row written after it (NULL: none, or not known). */
static void product_row(const product_job *p, char *y, const char *a, int64_t k, int64_t b,
                        const char *next) {
  size_t es = p->f64 ? sizeof(double) : sizeof(float);
  const char *d = p->d ? p->d + (size_t)(b * p->m) * es : NULL;
  size_t ri = (size_t)(k * p->B + b);
  double s64 = p->r && p->f64 ? ((const double *)p->r)[ri] : 1.0;
  float s32 = p->r && !p->f64 ? ((const float *)p->r)[ri] : 1.0f;
#ifdef MG_WIDE_ROWS
  if (p->wide && !p->stream) {
    if (p->f64) row_f64_wide((double *)y, (const double *)a, (const double *)d, s64, p->m, next);
    else row_f32_wide((float *)y, (const float *)a, (const float *)d, s32, p->m, next);
    return;
  }
#endif
  (void)next;
  if (p->f64) row_f64((double *)y, (const double *)a, (const double *)d, s64, p->m, p->stream);
  else row_f32((float *)y, (const float *)a, (const float *)d, s32, p->m, p->stream);
}

/* Rows [lo, hi) of the result in the order (k, b): row b * K + k for i = k * B + b, so that
** val's row k is read once for all b (one piece of a parallel loop). The result's own order
** rereads all of val for every b: at (32, 100) 0.080 ms a call against 0.072 this way, and
** at (32, 512) 2.4 to 4.5 ms (val, 1 MiB, falls out of a loaded machine's L2) against 2.3-2.5. */
static void product_rows(void *arg, int64_t lo, int64_t hi) {
  const product_job *p = arg;
  size_t es = p->f64 ? sizeof(double) : sizeof(float);
  int64_t k = lo / p->B, b = lo % p->B;
  for (int64_t i = lo; i < hi; i++) {         /* (b, k) counted: no division a row */
    char *y = p->y + (size_t)((b * p->K + k) * p->m) * es;
    const char *next = i + 1 >= hi ? NULL : b + 1 < p->B ? y + (size_t)(p->K * p->m) * es
                                                        : p->y + (size_t)((k + 1) * p->m) * es;
    product_row(p, y, p->v + (size_t)(k * p->sk + b * p->sb) * es, k, b, next);
    if (++b == p->B) { b = 0; k++; }
  }
#if defined(__SSE2__)
  if (p->stream) _mm_sfence();             /* the streamed rows visible before the join */
#endif
}

/* gather_f32 / gather_f64: t[q * ts + j] = v[q * sk + j * sj], q < kn, j < m: 'kn' rows of
** val made contiguous (a copy: the same bits). Rows side by side in memory (sk = 1, a full
** block of KB) go by in-register transposes (SSE2: 4 x 4 floats, 2 x 2 doubles), the rest
** element by element. */
#if defined(__SSE2__)
#  define TRANSPOSED_f32                                                                   \
    for (; j + 4 <= m; j += 4)                                                             \
      for (int q = 0; q < KB; q += 4) {                                                    \
        __m128 r0 = _mm_loadu_ps(v + j * sj + q), r1 = _mm_loadu_ps(v + (j + 1) * sj + q);  \
        __m128 r2 = _mm_loadu_ps(v + (j + 2) * sj + q), r3 = _mm_loadu_ps(v + (j + 3) * sj + q); \
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);                                                 \
        _mm_storeu_ps(t + q * ts + j, r0);                                                  \
        _mm_storeu_ps(t + (q + 1) * ts + j, r1);                                            \
        _mm_storeu_ps(t + (q + 2) * ts + j, r2);                                            \
        _mm_storeu_ps(t + (q + 3) * ts + j, r3);                                            \
      }
#  define TRANSPOSED_f64                                                                   \
    for (; j + 2 <= m; j += 2)                                                             \
      for (int q = 0; q < KB; q += 2) {                                                    \
        __m128d r0 = _mm_loadu_pd(v + j * sj + q), r1 = _mm_loadu_pd(v + (j + 1) * sj + q); \
        _mm_storeu_pd(t + q * ts + j, _mm_unpacklo_pd(r0, r1));                             \
        _mm_storeu_pd(t + (q + 1) * ts + j, _mm_unpackhi_pd(r0, r1));                       \
      }
#else
#  define TRANSPOSED_f32
#  define TRANSPOSED_f64
#endif
#define GATHER(NAME, T, TRANSPOSED)                                                          \
  static void NAME(T *t, const T *v, int64_t kn, int64_t m, int64_t ts, int64_t sk, int64_t sj) { \
    int64_t j = 0;                                                                         \
    if (sk == 1 && kn == KB) { TRANSPOSED }                                                \
    for (; j < m; j++)                                                                     \
      for (int64_t q = 0; q < kn; q++) t[q * ts + j] = v[q * sk + j * sj];                  \
  }
GATHER(gather_f32, float, TRANSPOSED_f32)
GATHER(gather_f64, double, TRANSPOSED_f64)
#undef GATHER
#undef TRANSPOSED_f32
#undef TRANSPOSED_f64

/* Rows k0 .. k0 + kn of the result for batch entry b, side by side, from the gathered rows
** 't' ('ts' apart); 'next': where the rows written after these begin (NULL: none). */
static void write_block(const product_job *p, const char *t, int64_t ts, int64_t b, int64_t k0,
                        int64_t kn, const char *next) {
  size_t es = p->f64 ? sizeof(double) : sizeof(float);
  char *y = p->y + (size_t)((b * p->K + k0) * p->m) * es;
  for (int64_t q = 0; q < kn; q++)
    product_row(p, y + (size_t)(q * p->m) * es, t + (size_t)(q * ts) * es, k0 + q, b,
                next ? next + (size_t)(q * p->m) * es : NULL);
}

/* Blocks [lo, hi) of KB rows k of val whose elements are not of unit stride (val = W^T, a
** view): each block gathered, then its rows written for every b (rows b * K + k0 .. of the
** result, side by side). Without the buffer (no memory), row by row from a gathered row. */
static void product_blocks(void *arg, int64_t lo, int64_t hi) {
  const product_job *p = arg;
  size_t es = p->f64 ? sizeof(double) : sizeof(float);
  int64_t kb = KB, ts = p->m + TS_PAD, end = hi * KB < p->K ? hi * KB : p->K;
  char *t = malloc((size_t)KB * (size_t)ts * es);
  if (t == NULL) {
    kb = 1;
    t = malloc((size_t)ts * es);
  }
  for (int64_t c = lo; c < hi && t != NULL; c++)
    for (int64_t k0 = c * KB, k1 = k0 + KB < p->K ? k0 + KB : p->K; k0 < k1; k0 += kb) {
      int64_t kn = k1 - k0 < kb ? k1 - k0 : kb;
      for (int64_t b = 0; b < p->B; b++) {
        if (b == 0 || p->sb != 0) {           /* a batch stride 0: one block for every b */
          const char *v = p->v + (size_t)(k0 * p->sk + b * p->sb) * es;
          if (p->f64) gather_f64((double *)t, (const double *)v, kn, p->m, ts, p->sk, p->sj);
          else gather_f32((float *)t, (const float *)v, kn, p->m, ts, p->sk, p->sj);
        }
        /* the rows written next: the next b's, or the next block's for b = 0, if this
        ** piece writes them */
        int64_t nb = b + 1 < p->B ? b + 1 : 0, nk = b + 1 < p->B ? k0 : k0 + kn;
        write_block(p, t, ts, b, k0, kn,
                    nk < end ? p->y + (size_t)((nb * p->K + nk) * p->m) * es : NULL);
      }
    }
  free(t);
#if defined(__SSE2__)
  if (p->stream) _mm_sfence();
#endif
}

/* Whether dims [from, ndim) of 't' read as one run of unit stride (size-1 dims aside). */
static bool unit_run(const mg_tensor *t, int from) {
  int64_t want = 1;
  for (int d = t->ndim - 1; d >= from; d--) {
    if (t->shape[d] == 1) continue;
    if (t->stride[d] != want) return false;
    want *= t->shape[d];
  }
  return true;
}

/* The Jacobian rows * val * diag in the result's layout 'shape' (batch: (B, K, source rest...)
** over val (K, B, source rest...), diag (B, source rest...) and rows (K, B); else (K,
** source...) over val (K, source...), diag (source...), rows NULL; diag or rows NULL: ones):
** a new contiguous tensor. */
static mg_status write_product(mg_ctx *C, mg_tensor *val, mg_tensor *diag, mg_tensor *rows,
                               bool batch, int ndim, const int64_t *shape, mg_tensor **out) {
  mg_tensor *vc = NULL, *dc = NULL, *rc = NULL;
  mg_status st = MG_OK;
  bool unit = unit_run(val, batch ? 2 : 1), gathered = !unit && batch && val->ndim == 3;
  if (unit || gathered) vc = mg_tensor_retain(val);
  else st = mg_tensor_contiguous(C, val, &vc);             /* rare: a rule's strided result */
  if (st == MG_OK && diag) st = mg_tensor_contiguous(C, diag, &dc);  /* small: the source's size */
  if (st == MG_OK && rows) st = mg_tensor_contiguous(C, rows, &rc);  /* (K, B) */
  if (st == MG_OK) st = mg_tensor_empty(C, val->dtype, ndim, shape, out);
  if (st == MG_OK) {
    int64_t B = batch ? val->shape[1] : 1, K = val->shape[0], n = B * K;
    product_job p = {
      .y = mg_tensor_data(*out), .v = mg_tensor_data(vc), .d = dc ? mg_tensor_data(dc) : NULL,
      .r = rc ? mg_tensor_data(rc) : NULL, .B = B, .K = K,
      .m = n ? mg_tensor_numel(*out) / n : 0, .sk = vc->stride[0],
      .sb = batch && vc->shape[1] > 1 ? vc->stride[1] : 0, .sj = gathered ? vc->stride[2] : 1,
      .f64 = val->dtype == MG_F64, .wide = mg_packed_available(),
    };
    double bytes = (double)mg_tensor_numel(*out) * (double)mg_dtype_size(val->dtype);
    p.stream = bytes >= (double)NT_MIN;
    /* pieces: rows (k, b), or blocks of KB rows k for every b */
    int64_t per = gathered ? KB * B * p.m : p.m, pieces = gathered ? (K + KB - 1) / KB : n;
    int64_t grain = per > 0 && MG_PAR_GRAIN / per > 1 ? MG_PAR_GRAIN / per : 1;
    if (bytes < (double)SHARE_MIN) grain = pieces;          /* one thread */
    st = mg_parallel_for(C, batch ? "batch_jacobian" : "jacobian", pieces, grain,
                         gathered ? product_blocks : product_rows, &p);
    if (st != MG_OK) { mg_tensor_release(*out); *out = NULL; }
  }
  mg_tensor_release(vc);
  mg_tensor_release(dc);
  mg_tensor_release(rc);
  return st;
}

/* Whether write_product can take val, diag and rows (either may be NULL) as they are. */
static bool fusable(const mg_tensor *val, const mg_tensor *diag, const mg_tensor *rows,
                    const mg_tensor *src, bool batch) {
  return (val->dtype == MG_F32 || val->dtype == MG_F64) && val->ndim == src->ndim + 1 &&
         (!diag || (diag->dtype == val->dtype && mg_same_shape(diag, src))) &&
         (!rows || (batch && rows->dtype == val->dtype && rows->ndim == 2 &&
                    rows->shape[0] == val->shape[0] && rows->shape[1] == val->shape[1]));
}

typedef struct {
  mg_tape *T;
  mg_tensor *target;
  bool batch, uz;
  int64_t B, K;           /* batch size (or -1), elements of target per batch entry */
} jac_job;

/* Per-entry view of a tensor's shape: without its batch dim when batching. */
static int rest(const jac_job *J, const mg_tensor *t, const int64_t **shape) {
  *shape = t->shape + (J->batch ? 1 : 0);
  return t->ndim - (J->batch ? 1 : 0);
}

/* Output shape: target .. source (batch: B, target rest.., source rest..). */
static int jac_shape(const jac_job *J, const mg_tensor *src, int64_t *sh) {
  const int64_t *ts, *ss;
  int nt = rest(J, J->target, &ts), ns = rest(J, src, &ss), nd = 0;
  if (J->batch) sh[nd++] = J->B;
  for (int i = 0; i < nt; i++) sh[nd++] = ts[i];
  for (int i = 0; i < ns; i++) sh[nd++] = ss[i];
  return nd;
}

static mg_status too_many_sweeps(mg_ctx *C, int64_t K) {
  return mg_fail(C, MG_ENOMEM, "jacobian: %lld basis vectors would need more than %d sweeps "
                 "within the memory budget (mg.set_memory_budget)", (long long)K, INT32_MAX);
}

/* rows * val * diag by the multiply's kernel, then laid out as the result (what write_product
** cannot take). */
static mg_status unfused(mg_ctx *C, mg_tensor *val, mg_tensor *diag, mg_tensor *rows, bool batch,
                         int nd, const int64_t *sh, mg_tensor **out) {
  mg_tensor *p = NULL;
  mg_status st = mg_factors_product(C, val, diag, rows, &p);
  if (st == MG_OK) st = assemble(C, 1, &p, batch, false, nd, sh, out);
  mg_tensor_release(p);
  return st;
}

/* ---------------------------------------------------------------- may W^T be a view? */

/* The tape's node that made 't' (NULL: a leaf). */
static const mg_node *maker(const mg_tape *T, const mg_tensor *t) {
  for (size_t i = T->n; i-- > 0;) {
    const mg_node *n = mg_tape_node(T, i);
    for (int k = 0; k < n->nout; k++)
      if (n->out[k] == t) return n;
  }
  return NULL;
}

/* How many inputs of the tape's nodes are 't'. */
static int readers(const mg_tape *T, const mg_tensor *t) {
  int c = 0;
  for (size_t i = 0; i < T->n; i++) {
    const mg_node *n = mg_tape_node(T, i);
    for (int k = 0; k < n->nin; k++) c += n->in[k] == t;
  }
  return c;
}

#define WALK 32              /* most tensors a walk below keeps to visit */

/* Whether the matmul's rule may hand W^T as a view of W (MG_TF_EYE_VIEW): the identity seed
** reaches one matmul through ops that pass it on (an add may add a broadcast bias), and
** from the matmul's first input down to the leaves every op passes the cotangent on and
** every tensor is read once, so it arrives at write_product still a view with its factors.
** Anything else (a mul, a sum of two cotangents, a second matmul) would read the view with
** the stride of W's rows: there the copy is faster ((32, 512), matmul(h * c, W): 5.3 ms with
** the copy, 8.3 with the view). */
static bool view_ok(const mg_tape *T, mg_tensor *target) {
  const mg_node *mm = NULL, *n = maker(T, target);
  while (n && mm == NULL) {                  /* target .. the matmul */
    if (n->op == MG_OP_MATMUL && n->nin == 2) {
      mm = n;
    } else if (n->op == MG_OP_ADD && n->nout == 1) {   /* one input on the path; leaves */
      const mg_node *next = NULL;
      for (int k = 0; k < n->nin; k++) {
        const mg_node *m = maker(T, n->in[k]);
        if (m && next) return false;
        if (m) next = m;
      }
      n = next;
    } else if (mg_node_passes_on(n, NULL)) {
      n = maker(T, n->in[0]);
    } else {
      return false;
    }
  }
  if (mm == NULL) return false;
  mg_tensor *todo[WALK];
  int nt = 0;
  todo[nt++] = mm->in[0];
  while (nt > 0) {                           /* the matmul's input .. the leaves */
    mg_tensor *t = todo[--nt];
    if (readers(T, t) != 1) return false;
    const mg_node *m = maker(T, t);
    if (m == NULL) continue;
    if (!mg_node_passes_on(m, NULL) || nt + m->nin > WALK) return false;
    for (int k = 0; k < m->nin; k++) todo[nt++] = m->in[k];
  }
  return true;
}

/* Whether 't' shares its storage with a tensor the tape holds: linalg.c's eye_vjp hands a
** view of W itself, which a Jacobian without factors to write (f(h) = h @ W + b) must not
** return, or a later write into W would change it. */
static bool on_tape(const mg_tape *T, const mg_tensor *t) {
  for (size_t i = 0; i < T->n; i++) {
    const mg_node *n = mg_tape_node(T, i);
    for (int k = 0; k < n->nin; k++)
      if (n->in[k]->storage == t->storage) return true;
  }
  return false;
}

/* Reverse mode: chunks of basis cotangents of the target, all sources in each sweep. */
static mg_status jac_reverse(const jac_job *J, int nsrc, mg_tensor *const *srcs, mg_tensor **jac) {
  mg_ctx *C = J->T->ctx;
  int64_t kc = chunk_size(J->T, J->K, mg_tensor_numel(J->target));
  if ((J->K + kc - 1) / kc > INT32_MAX) return too_many_sweeps(C, J->K);
  int nch = (int)((J->K + kc - 1) / kc);
  mg_tensor **parts = calloc((size_t)nch * (size_t)nsrc, sizeof *parts);
  mg_tensor **g = calloc((size_t)nsrc, sizeof *g), **diag = calloc((size_t)nsrc, sizeof *diag);
  mg_tensor **rows = calloc((size_t)nsrc, sizeof *rows);
  mg_status st = parts && g && diag && rows ? MG_OK : mg_fail(C, MG_ENOMEM, "out of memory");
  const int64_t *ts;
  int nt = rest(J, J->target, &ts);
  for (int c = 0; c < nch && st == MG_OK; c++) {
    int64_t k0 = c * kc, n = J->K - k0 < kc ? J->K - k0 : kc;
    mg_tensor *seed = NULL;
    if ((st = mg_poll(C, "jacobian")) != MG_OK) break;
    st = basis(C, J->target->dtype, k0, n, J->K, J->batch ? J->B : -1, nt, ts, &seed);
    if (st != MG_OK) break;
    if (J->batch && nt == 1 && nch == 1)                             /* exactly (K, B, K) */
      seed->flags |= MG_TF_EYE | (view_ok(J->T, J->target) ? MG_TF_EYE_VIEW : 0);
    /* one sweep: pending factors are written with their product below (chunks: multiplied
    ** in the sweep, each chunk then a part of the cat) */
    st = mg_tape_jacobian_sweep(J->T, J->target, seed, nsrc, srcs, true, g,
                                nch == 1 ? diag : NULL, nch == 1 ? rows : NULL);
    mg_tensor_release(seed);
    for (int j = 0; j < nsrc && st == MG_OK; j++) parts[(size_t)j * nch + c] = g[j];
  }
  for (int j = 0; j < nsrc && st == MG_OK; j++) {
    int64_t sh[MG_MAXDIM];
    int nd = jac_shape(J, srcs[j], sh);
    mg_tensor *v = parts[j];                               /* factors set: one chunk */
    if ((diag[j] || rows[j]) && fusable(v, diag[j], rows[j], srcs[j], J->batch)) {
      st = write_product(C, v, diag[j], rows[j], J->batch, nd, sh, &jac[j]);
    } else if (diag[j] || rows[j]) {                         /* dtypes apart: the multiplies */
      st = unfused(C, v, diag[j], rows[j], J->batch, nd, sh, &jac[j]);
    } else if (nch == 1 && !mg_recording(C) && fusable(v, NULL, NULL, srcs[j], J->batch)) {
      /* no factors (h @ W + b: a view of W^T broadcast over the batch): written once in the
      ** result's layout, as with factors (a strided copy of the view took 10.8 ms at
      ** (32, 512, 512) float32, write_product 1.2). Another tape recording needs the copy
      ** below, an op it records. */
      st = write_product(C, v, NULL, NULL, J->batch, nd, sh, &jac[j]);
    } else if (nch == 1 && on_tape(J->T, v)) {                /* a view of a weight */
      mg_tensor *laid = NULL;                  /* contiguous: a copy unless W itself fitted */
      if ((st = assemble(C, 1, &v, J->batch, false, nd, sh, &laid)) == MG_OK) {
        if (laid->storage == v->storage) st = mg_tensor_clone(C, laid, &jac[j]);
        else jac[j] = mg_tensor_retain(laid);
      }
      mg_tensor_release(laid);
    } else {
      st = assemble(C, nch, parts + (size_t)j * nch, J->batch, false, nd, sh, &jac[j]);
    }
    if (st != MG_OK) for (int k = 0; k < j; k++) { mg_tensor_release(jac[k]); jac[k] = NULL; }
  }
  if (parts) for (size_t i = 0; i < (size_t)nch * (size_t)nsrc; i++) mg_tensor_release(parts[i]);
  for (int j = 0; diag && rows && j < nsrc; j++) {
    mg_tensor_release(diag[j]);
    mg_tensor_release(rows[j]);
  }
  free(parts);
  free(g);
  free(diag);
  free(rows);
  return st;
}

/* Forward mode: per source, chunks of basis tangents pushed to the target. */
static mg_status jac_forward(const jac_job *J, int nsrc, mg_tensor *const *srcs, mg_tensor **jac) {
  mg_ctx *C = J->T->ctx;
  mg_status st = MG_OK;
  for (int j = 0; j < nsrc && st == MG_OK; j++) {
    const int64_t *ss;
    int ns = rest(J, srcs[j], &ss);
    int64_t Ks = mg_shape_numel(ns, ss), kc = chunk_size(J->T, Ks, mg_tensor_numel(srcs[j]));
    if (Ks == 0) {                                  /* an empty source: no tangent to push */
      int64_t sh[MG_MAXDIM];
      int nd = jac_shape(J, srcs[j], sh);
      st = mg_tensor_zeros(C, J->target->dtype, nd, sh, &jac[j]);
      if (st != MG_OK) for (int k = 0; k < j; k++) { mg_tensor_release(jac[k]); jac[k] = NULL; }
      continue;
    }
    if ((Ks + kc - 1) / kc > INT32_MAX) st = too_many_sweeps(C, Ks);
    if (st != MG_OK) { for (int k = 0; k < j; k++) { mg_tensor_release(jac[k]); jac[k] = NULL; } break; }
    int nch = (int)((Ks + kc - 1) / kc);
    mg_tensor **parts = calloc((size_t)nch, sizeof *parts);
    if (parts == NULL) st = mg_fail(C, MG_ENOMEM, "out of memory");
    for (int c = 0; c < nch && st == MG_OK; c++) {
      int64_t k0 = c * kc, n = Ks - k0 < kc ? Ks - k0 : kc;
      mg_tensor *tan = NULL;
      if ((st = mg_poll(C, "jacobian")) != MG_OK) break;
      st = basis(C, srcs[j]->dtype, k0, n, Ks, J->batch ? J->B : -1, ns, ss, &tan);
      if (st != MG_OK) break;
      st = mg_tape_forward_sweep(J->T, 1, &srcs[j], &tan, 1, 1, &J->target, &parts[c]);
      mg_tensor_release(tan);
    }
    if (st == MG_OK) {
      int64_t sh[MG_MAXDIM];
      int nd = jac_shape(J, srcs[j], sh);
      /* chunks join along dim 0 (the source basis), which moves last */
      mg_tensor *all = NULL;
      if ((st = join(C, nch, parts, &all)) == MG_OK) {
        st = assemble(C, 1, &all, J->batch, true, nd, sh, &jac[j]);
        mg_tensor_release(all);
      }
    }
    if (parts) for (int c = 0; c < nch; c++) mg_tensor_release(parts[c]);
    free(parts);
    if (st != MG_OK) for (int k = 0; k < j; k++) { mg_tensor_release(jac[k]); jac[k] = NULL; }
  }
  return st;
}

/* Largest |a - b| over the elements of two same-shaped tensors, and largest |a|. */
static mg_status max_diff(mg_ctx *C, mg_tensor *a, mg_tensor *b, double *err, double *scale) {
  mg_tensor *ac = NULL, *bc = NULL;
  mg_status st = mg_tensor_contiguous(C, a, &ac);
  if (st != MG_OK) return st;
  if ((st = mg_tensor_contiguous(C, b, &bc)) != MG_OK) { mg_tensor_release(ac); return st; }
  *err = 0;
  *scale = 1e-30;
  for (int64_t i = 0, n = mg_tensor_numel(ac); i < n; i++) {
    double x = ac->dtype == MG_F64 ? MG_F64P(ac)[i] : MG_F32P(ac)[i];
    double y = bc->dtype == MG_F64 ? MG_F64P(bc)[i] : MG_F32P(bc)[i];
    if (fabs(x - y) > *err) *err = fabs(x - y);
    if (fabs(x) > *scale) *scale = fabs(x);
  }
  mg_tensor_release(ac);
  mg_tensor_release(bc);
  return MG_OK;
}

/* batch_jacobian's check: a second sweep with the batch entries' seeds weighted 1, 2, ...;
** if target[i] depends only on source[i], each gradient block scales by its own weight. */
static mg_status check_independent(const jac_job *J, int nsrc, mg_tensor *const *srcs,
                                   mg_tensor *const *jac) {
  mg_ctx *C = J->T->ctx;
  int64_t wsh[MG_MAXDIM];
  const int64_t *ts;
  int nt = rest(J, J->target, &ts);
  mg_tensor *w = NULL, *seed = NULL;
  mg_status st = mg_tensor_empty(C, J->target->dtype, 1, &J->B, &w);
  if (st != MG_OK) return st;
  for (int64_t b = 0; b < J->B; b++) mg_tensor_set(w, &b, (double)(b + 1));
  wsh[0] = J->B;
  for (int i = 1; i <= nt; i++) wsh[i] = 1;
  mg_tensor *wr = NULL;
  if ((st = mg_tensor_reshape(C, w, nt + 1, wsh, &wr)) != MG_OK) { mg_tensor_release(w); return st; }
  mg_tensor_release(w);
  /* seed_w[b, ...] = w[b]: one sweep gives sum_i w_i d target[i] / d source */
  st = mg_tensor_expand(C, wr, J->target->ndim, J->target->shape, &seed);
  mg_tensor **g = calloc((size_t)nsrc, sizeof *g);
  if (st == MG_OK && g == NULL) st = mg_fail(C, MG_ENOMEM, "out of memory");
  if (st == MG_OK) {
    st = mg_tape_gradient_sweep(J->T, 1, &J->target, &seed, 0, nsrc, srcs, true, g);
    mg_tensor_release(seed);
  }
  for (int j = 0; j < nsrc && st == MG_OK; j++) {
    /* expected: w[b] * sum over target entries of jac[b, ...] */
    mg_tensor *s = NULL, *e = NULL, *wj = NULL;
    uint32_t mask = 0;
    for (int i = 1; i <= nt; i++) mask |= 1u << i;
    int64_t sh[MG_MAXDIM];
    sh[0] = J->B;
    for (int i = 1; i < srcs[j]->ndim; i++) sh[i] = 1;
    if ((st = mg_tensor_sum(C, jac[j], mask, false, &s)) != MG_OK) break;
    if ((st = mg_tensor_reshape(C, wr, srcs[j]->ndim, sh, &wj)) == MG_OK) {
      st = mg_tensor_binary(C, MG_B_MUL, s, wj, &e);
      mg_tensor_release(wj);
    }
    mg_tensor_release(s);
    if (st != MG_OK) break;
    double err, scale;
    st = max_diff(C, e, g[j], &err, &scale);
    mg_tensor_release(e);
    if (st != MG_OK) break;
    double tol = (J->target->dtype == MG_F64 ? 1e-9 : 1e-4) * scale * (double)J->B;
    if (err > tol)
      st = mg_fail(C, MG_EARG, "batch_jacobian: target entries depend on other batch entries "
                   "of source %d (mismatch %g): the batch dimension is not independent", j + 1, err);
  }
  mg_tensor_release(wr);
  for (int j = 0; g && j < nsrc; j++) mg_tensor_release(g[j]);
  free(g);
  return st;
}

/* Whether the job's results (all sources together) fit the Jacobian limit. */
static mg_status job_fits(const jac_job *J, const char *fn, int nsources, mg_tensor *const *sources) {
  double bytes = 0, most = -1;
  int64_t big[MG_MAXDIM];
  int nbig = 0;
  for (int j = 0; j < nsources; j++) {
    int64_t sh[MG_MAXDIM];
    int nd = jac_shape(J, sources[j], sh);
    double b = result_bytes(nd, sh, (double)mg_dtype_size(J->target->dtype));
    if (b > most) { most = b; nbig = nd; memcpy(big, sh, sizeof sh); }
    bytes += b;
  }
  return nsources > 0 ? check_bytes(J->T->ctx, fn, bytes, nsources, nbig, big) : MG_OK;
}

mg_status mg_tape_jacobian(mg_tape *T, mg_tensor *target, int nsources,
                           mg_tensor *const *sources, bool batch, int mode, bool check,
                           bool unconnected_zero, mg_tensor **jac) {
  mg_ctx *C = T->ctx;
  char s1[96], s2[96];
  const char *fn = batch ? "batch_jacobian" : "jacobian";
  jac_job J = { T, target, batch, unconnected_zero, -1, mg_tensor_numel(target) };
  if (batch) {
    if (target->ndim < 1) return mg_fail(C, MG_ESHAPE, "%s: target must have a batch dimension", fn);
    J.B = target->shape[0];
    J.K = J.B ? J.K / J.B : 0;
    for (int j = 0; j < nsources; j++)
      if (sources[j]->ndim < 1 || sources[j]->shape[0] != J.B)
        return mg_fail(C, MG_ESHAPE, "%s: target %s and source %s differ in batch size", fn,
                       mg_shapestr(s1, sizeof s1, target->ndim, target->shape),
                       mg_shapestr(s2, sizeof s2, sources[j]->ndim, sources[j]->shape));
  }
  for (int j = 0; j < nsources; j++)
    if (target->ndim + sources[j]->ndim - (batch ? 1 : 0) > MG_MAXDIM - 1)
      return mg_fail(C, MG_ESHAPE, "%s: the result would have more than %d dimensions", fn, MG_MAXDIM - 1);
  mg_status st = job_fits(&J, fn, nsources, sources);   /* refuse what cannot fit, up front */
  if (st != MG_OK) return st;
  int64_t src_total = 0;
  for (int j = 0; j < nsources; j++)
    src_total += mg_tensor_numel(sources[j]) / (batch && J.B ? J.B : 1);
  bool fwd = mode == 1 || (mode == 2 && src_total < J.K);
  st = mg_tape_begin(T);
  if (st != MG_OK) return st;
  if (J.K == 0 || (batch && J.B == 0)) {            /* empty: zeros of the right shape */
    for (int j = 0; j < nsources && st == MG_OK; j++) {
      int64_t sh[MG_MAXDIM];
      int nd = jac_shape(&J, sources[j], sh);
      st = mg_tensor_zeros(C, target->dtype, nd, sh, &jac[j]);
    }
  } else {
    st = fwd ? jac_forward(&J, nsources, sources, jac) : jac_reverse(&J, nsources, sources, jac);
    if (st == MG_OK && batch && check) {
      st = check_independent(&J, nsources, sources, jac);
      if (st != MG_OK) for (int j = 0; j < nsources; j++) { mg_tensor_release(jac[j]); jac[j] = NULL; }
    }
  }
  mg_tape_end(T, st);
  return st;
}
