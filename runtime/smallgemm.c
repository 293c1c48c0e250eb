/*
** smallgemm.c - float32 GEMM on a right operand packed once (smallgemm.h, docs/design.md
** "Recurrent layers"). Panels of 32 columns (AVX-512), K rows each,
** contiguous: the microkernel streams one panel while MR rows of A are broadcast, keeping
** MR x NR accumulators in registers.
*/
#include "smallgemm.h"

#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MG_X86_KERNELS 1
#include <immintrin.h>
#endif

enum { ISA_NONE, ISA_AVX512 };



/* AVX-512 only: an AVX2+FMA kernel (6 x 16 blocks) measured slower than OpenBLAS's own
** Haswell kernels at these shapes (docs/design.md), so AVX2 machines keep BLAS. */
static int isa(void) {
#ifdef MG_X86_KERNELS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return ISA_AVX512;
#endif
  return ISA_NONE;
}

bool mg_packed_available(void) { return isa() != ISA_NONE; }

#ifdef MG_X86_KERNELS
/* A full panel of a transposed pack: panel column j (of 32) is src row j, K floats: 16 rows x
** 16 k at a time transposed in registers (in-lane unpacks of floats, then of pairs, then
** 128-bit lane shuffles: vector m of the second stage holds, in its lane L, rows 4i..4i+3 at
** k = 4L + m), stored as 16 panel rows of 16 columns. The k past the last multiple of 16 one
** by one. A copy: the same bits as the scalar loop. */
__attribute__((target("avx512f"))) static void
pack_trans_avx512(const float *src, int64_t ld, int64_t K, float *o) {
  int64_t k0 = 0;
  for (; k0 + 16 <= K; k0 += 16)
    for (int h = 0; h < 2; h++) {
      __m512 r[16], t[16];
      for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (h * 16 + i) * ld + k0);
      for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
      }
      for (int m = 0; m < 4; m++) {
        __m512 u0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44);
        __m512 u1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44);
        __m512 u2 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xEE);
        __m512 u3 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xEE);
        float *q = o + (k0 + m) * 32 + h * 16;
        _mm512_store_ps(q, _mm512_shuffle_f32x4(u0, u1, 0x88));
        _mm512_store_ps(q + 4 * 32, _mm512_shuffle_f32x4(u0, u1, 0xDD));
        _mm512_store_ps(q + 8 * 32, _mm512_shuffle_f32x4(u2, u3, 0x88));
        _mm512_store_ps(q + 12 * 32, _mm512_shuffle_f32x4(u2, u3, 0xDD));
      }
    }
  for (; k0 < K; k0++)
    for (int j = 0; j < 32; j++) o[k0 * 32 + j] = src[j * ld + k0];
}

/* A full panel of a plain pack: row k of the panel is 32 floats of src row k (a memcpy call
** per 128 bytes cost more than the copy). */
__attribute__((target("avx512f"))) static void
pack_rows_avx512(const float *src, int64_t ld, int64_t K, float *o) {
  for (int64_t k = 0; k < K; k++) {
    _mm512_store_ps(o + k * 32, _mm512_loadu_ps(src + k * ld));
    _mm512_store_ps(o + k * 32 + 16, _mm512_loadu_ps(src + k * ld + 16));
  }
}
#endif

bool mg_pack(mg_packed *P, mg_pool *pool, const float *src, int64_t ld, bool trans, int64_t K,
             int64_t N) {
  int which = isa();
  *P = (mg_packed){ .K = K, .N = N, .src = src, .ld = ld, .trans = trans };
  if (which == ISA_NONE) return true;
  int nr = 32;
  int64_t np = (N + nr - 1) / nr;
  size_t bytes = (size_t)(np * K * nr) * sizeof(float) + 64;   /* room to align to 64 */
  void *blk = pool ? mg_pool_alloc(pool, bytes, &P->cap) : malloc(bytes);
  if (blk == NULL) return false;
  P->block = blk;
  P->pool = pool;
  float *d = (float *)(((uintptr_t)blk + 63) & ~(uintptr_t)63);
  for (int64_t p = 0; p < np; p++) {
    float *o = d + p * K * nr;
    int nw = (int)(N - p * nr < nr ? N - p * nr : nr);
    if (nw < nr) memset(o, 0, (size_t)(K * nr) * sizeof *o);
#ifdef MG_X86_KERNELS
    if (nw == nr && which == ISA_AVX512) {
      if (trans) pack_trans_avx512(src + p * nr * ld, ld, K, o);
      else pack_rows_avx512(src + p * nr, ld, K, o);
      continue;
    }
#endif
    if (trans)                                   /* panel column j is src row p nr + j; in */
      for (int64_t k0 = 0; k0 < K; k0 += 64)     /* blocks of 64 k (8 KiB written) that stay */
        for (int j = 0; j < nw; j++) {            /* in L1 while the 32 rows are read */
          const float *row = src + (p * nr + j) * ld;
          int64_t k1 = K - k0 < 64 ? K : k0 + 64;
          for (int64_t k = k0; k < k1; k++) o[k * nr + j] = row[k];
        }
    else
      for (int64_t k = 0; k < K; k++) memcpy(o + k * nr, src + k * ld + p * nr, (size_t)nw * sizeof *o);
  }
  P->nr = nr;
  P->data = d;
  return true;
}

void mg_pack_free(mg_packed *P) {
  if (P->block && P->pool) mg_pool_free(P->pool, P->block, P->cap);
  else free(P->block);
  P->block = NULL;
  P->data = NULL;
}

#ifdef MG_X86_KERNELS

/* The mask of the first n of 16 lanes (none for n <= 0, all for n >= 16). */
static inline __mmask16 lanes(int n) {
  return (__mmask16)(n >= 16 ? 0xffff : n <= 0 ? 0 : (1u << n) - 1);
}

/* The cases 8 down to 1 (the default) of a switch on a block's row count, each running
** BLOCK with that count as a constant. */
#define UP_TO_8(BLOCK)                                                             \
  case 8: BLOCK(8); break;                                                         \
  case 7: BLOCK(7); break;                                                         \
  case 6: BLOCK(6); break;                                                         \
  case 5: BLOCK(5); break;                                                         \
  case 4: BLOCK(4); break;                                                         \
  case 3: BLOCK(3); break;                                                         \
  case 2: BLOCK(2); break;                                                         \
  default: BLOCK(1); break

/* Row i of a block's 32 accumulators (g0[i], g1[i]) += the float 'av' times the panel row in
** b0, b1; stored to p under the column masks m0, m1. */
#define FMA_PAIR(i, av) do {                                                       \
    __m512 a_ = _mm512_set1_ps(av);                                                \
    g0[i] = _mm512_fmadd_ps(a_, b0, g0[i]);                                        \
    g1[i] = _mm512_fmadd_ps(a_, b1, g1[i]);                                        \
  } while (0)
#define STORE_PAIR(i, p) do {                                                      \
    _mm512_mask_storeu_ps((p), m0, g0[i]);                                         \
    _mm512_mask_storeu_ps((p) + 16, m1, g1[i]);                                    \
  } while (0)

/* MR rows of C against kc rows of one 32-column panel: C[r][0..nw) = (acc ? C[r] : 0) +
** sum_k A[r][k] panel[k][..], A's element read as AK(r) (A_ROWS: A row-major; A_TILE: a
** tile of mg_gemm_at_f32, k-major). The accumulators start from C (acc) so that the partial
** sums of successive kc blocks add up in place. */
#define A_ROWS(r) A[(r) * lda + k]
#define A_TILE(r) A[k * 12 + (r)]
#define AVX512_BLOCK_OF(MR, AK) do {                                                      \
    __m512 g0[MR], g1[MR];                                                         \
    for (int r = 0; r < MR; r++) {                                                 \
      g0[r] = acc ? _mm512_maskz_loadu_ps(m0, C + r * ldc) : _mm512_setzero_ps();  \
      g1[r] = acc ? _mm512_maskz_loadu_ps(m1, C + r * ldc + 16) : _mm512_setzero_ps(); \
    }                                                                              \
    for (int64_t k = 0; k < kc; k++) {                                             \
      __m512 b0 = _mm512_load_ps(bp + k * 32), b1 = _mm512_load_ps(bp + k * 32 + 16); \
      if (pf) {                                                                    \
        _mm_prefetch((const char *)(pf + k * 32), _MM_HINT_T1);                    \
        _mm_prefetch((const char *)(pf + k * 32 + 16), _MM_HINT_T1);               \
      }                                                                            \
      _Pragma("GCC unroll 12")                                                      \
      for (int r = 0; r < MR; r++) FMA_PAIR(r, AK(r));                             \
    }                                                                              \
    for (int r = 0; r < MR; r++) STORE_PAIR(r, C + r * ldc);                       \
  } while (0)
#define AVX512_BLOCK(MR) AVX512_BLOCK_OF(MR, A_ROWS)
#define TILE_BLOCK(MR) AVX512_BLOCK_OF(MR, A_TILE)
#define UP_TO_12(BLOCK)                                                            \
  case 12: BLOCK(12); break;                                                       \
  case 11: BLOCK(11); break;                                                       \
  case 10: BLOCK(10); break;                                                       \
  case 9: BLOCK(9); break;                                                         \
  UP_TO_8(BLOCK)

__attribute__((target("avx512f,fma"))) static void
panel_avx512(int mr, int64_t kc, const float *A, int64_t lda, const float *bp, const float *pf,
             int nw, int acc, float *C, int64_t ldc) {
  __mmask16 m0 = lanes(nw), m1 = lanes(nw - 16);
  switch (mr) {
  UP_TO_12(AVX512_BLOCK);
  }
}

/* mg_gemm_at_f32's tile: mr rows of C, A a tile of kc x 12 floats (row r of C at k is
** A[k 12 + r]), the panel bp (kc x 32). */
__attribute__((target("avx512f,fma"))) static void
tile_avx512(int mr, int64_t kc, const float *A, const float *bp, int nw, int acc, float *C,
            int64_t ldc) {
  __mmask16 m0 = lanes(nw), m1 = lanes(nw - 16);
  const float *pf = NULL;
  switch (mr) {
  UP_TO_12(TILE_BLOCK);
  }
}

/* Rows [k0, k0 + kc) of A's columns [0, M) into mg_gemm_at_f32's tiles (ap: ceil(M / 12)
** of kc x 12, row k of tile t A's columns 12 t ..), or (M: the columns 0..N of B, tile 32)
** into panels of kc x 32, the columns past M zero (bp). Read row by row, as stored. */
__attribute__((target("avx512f"))) static void
at_pack(int64_t M, int tile, int64_t k0, int64_t kc, const float *A, int64_t lda, float *ap) {
  for (int64_t k = 0; k < kc; k++) {
    const float *a = A + (k0 + k) * lda;
    for (int64_t i = 0; i < M; i += tile) {
      int n = (int)(M - i < tile ? M - i : tile);
      float *o = ap + i * kc + k * tile;
      if (tile == 12) {
        _mm512_mask_storeu_ps(o, lanes(n), _mm512_maskz_loadu_ps(lanes(n), a + i));
      } else {
        _mm512_store_ps(o, _mm512_maskz_loadu_ps(lanes(n), a + i));
        _mm512_store_ps(o + 16, _mm512_maskz_loadu_ps(lanes(n - 16), a + i + 16));
      }
    }
  }
}

/* All M rows of C against kc rows of one panel, MR rows at a time; the first row block
** prefetches 'pf' (the next block) into L2. */
static void rows_avx512(int64_t M, int64_t kc, const float *A, int64_t lda, const float *bp,
                        const float *pf, int nw, int acc, float *C, int64_t ldc) {
  enum { MR = 12 };
  for (int64_t i = 0; i < M; i += MR)
    panel_avx512((int)(M - i < MR ? M - i : MR), kc, A + i * lda, lda, bp, i == 0 ? pf : NULL, nw,
                 acc, C + i * ldc, ldc);
}

/* mg_xsum_f32's rows [r0, r1) for the 32 columns at a (nw of them), D rows of gw: the
** accumulators start from gw and acc (the sums so far) unless 'first'. Each row's two
** cache lines are prefetched into L2 XSUM_AHEAD rows on. */
enum { XSUM_AHEAD = 16 };
#define XSUM_LO(v) _mm512_cvtps_pd(_mm512_castps512_ps256(v))      /* floats 0..7 as doubles */
#define XSUM_HI(v) _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
#define XSUM_BLOCK(D) do {                                                         \
    __m512 g0[D], g1[D];                                                           \
    __m512d s0, s1, s2, s3;                                                        \
    _Pragma("GCC unroll 8")                                                        \
    for (int i = 0; i < D; i++) {                                                  \
      g0[i] = first && !beta ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, gw + i * ldw); \
      g1[i] = first && !beta ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, gw + i * ldw + 16); \
    }                                                                              \
    s0 = s1 = s2 = s3 = _mm512_setzero_pd();                                       \
    if (sums && !first) {                                                          \
      s0 = _mm512_maskz_loadu_pd((__mmask8)m0, acc);                               \
      s1 = _mm512_maskz_loadu_pd((__mmask8)(m0 >> 8), acc + 8);                    \
      s2 = _mm512_maskz_loadu_pd((__mmask8)m1, acc + 16);                          \
      s3 = _mm512_maskz_loadu_pd((__mmask8)(m1 >> 8), acc + 24);                   \
    }                                                                              \
    for (int64_t k = r0; k < r1; k++) {                                            \
      const float *row = a + k * ld;                                               \
      if (sums && k + XSUM_AHEAD < rows) {                                         \
        _mm_prefetch((const char *)(row + XSUM_AHEAD * ld), _MM_HINT_T1);          \
        _mm_prefetch((const char *)(row + XSUM_AHEAD * ld + 16), _MM_HINT_T1);     \
      }                                                                            \
      __m512 b0 = _mm512_maskz_loadu_ps(m0, row), b1 = _mm512_maskz_loadu_ps(m1, row + 16); \
      if (sums) {                                                                  \
        s0 = _mm512_add_pd(s0, XSUM_LO(b0));                                       \
        s1 = _mm512_add_pd(s1, XSUM_HI(b0));                                       \
        s2 = _mm512_add_pd(s2, XSUM_LO(b1));                                       \
        s3 = _mm512_add_pd(s3, XSUM_HI(b1));                                       \
      }                                                                            \
      _Pragma("GCC unroll 8")                                                      \
      for (int i = 0; i < D; i++) FMA_PAIR(i, x[k * ldx + i]);                     \
    }                                                                              \
    _Pragma("GCC unroll 8")                                                        \
    for (int i = 0; i < D; i++) STORE_PAIR(i, gw + i * ldw);                       \
    if (sums) {                                                                    \
      _mm512_mask_storeu_pd(acc, (__mmask8)m0, s0);                                \
      _mm512_mask_storeu_pd(acc + 8, (__mmask8)(m0 >> 8), s1);                     \
      _mm512_mask_storeu_pd(acc + 16, (__mmask8)m1, s2);                           \
      _mm512_mask_storeu_pd(acc + 24, (__mmask8)(m1 >> 8), s3);                    \
    }                                                                              \
  } while (0)

__attribute__((target("avx512f,avx512dq,fma"))) static void
xsum_avx512(int d, int64_t rows, int64_t r0, int64_t r1, const float *a, int64_t ld,
            const float *x, int64_t ldx, int nw, float *gw, int64_t ldw, int beta, bool first,
            bool sums, double *acc) {
  __mmask16 m0 = lanes(nw), m1 = lanes(nw - 16);
  switch (d) {
  UP_TO_8(XSUM_BLOCK);
  }
}

#endif

void mg_gemm_packed(const mg_packed *P, int64_t M, const float *A, int64_t lda, int beta,
                    float *C, int64_t ldc) {
  if (P->nr == 0) {
    mg_gemm(MG_F32, false, P->trans, M, P->N, P->K, 1, A, lda, P->src, P->ld, beta, C, ldc);
    return;
  }
#ifdef MG_X86_KERNELS
  /* Per panel, K in blocks of KC rows (KC x 32 floats: 32 KiB, kept in the 48 KiB L1 while
  ** every row block of A, 8 KiB, passes over it), the row blocks inside. The first row block
  ** prefetches into L2 the next block (32 KiB ahead): a 512-unit LSTM's U is 4 MiB, more
  ** than L2, so each step streams it from L3 (measured in docs/design.md). KC = 256 against
  ** 128 (with the same 32 KiB ahead): half the reloads of C and calls, 148-154 -> 158-165
  ** GFLOP/s at (32, 512) x (512, 2048) and (32, 2048) x (2048, 512), 146 -> 156 at (16, 512)
  ** x (512, 1536) (best of 6 under load, docs/performance.md). Every other call on a thread
  ** takes the panels in reverse, starting with those the previous call left in L2. The bits
  ** depend neither on the order (each panel's columns are summed alone) nor on KC (the
  ** partial sums go through C exactly, float to float). */
  enum { KC = 256, AHEAD = 1, TALL = 64 };
  static _Thread_local unsigned calls;
  bool back = calls++ & 1;
  int nr = P->nr;
  int64_t np = (P->N + nr - 1) / nr, K = P->K;
  if (M > TALL && K > KC) {
    /* Many rows (a chunk of the LSTM reverse's dX = dZ W'): the K blocks outside, the
    ** panels inside, so that A's block (M x KC) stays in L2 for every panel while each
    ** panel block is read once (panels outside read all of A again for every panel, from
    ** L3 when A is larger than L2). Best of 40 under load: (256, 2048) x (2048, 512) 140-143
    ** -> 153 GFLOP/s, (512, 512) x (512, 128) 164-166 -> 175-177. The same sums (each
    ** element's k in order, through C). The block AHEAD is the next panel's. */
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      int64_t kc = K - k0 < KC ? K - k0 : KC;
      for (int64_t p = 0; p < np; p++) {
        const float *ahead = p + 1 < np ? P->data + ((p + 1) * K + k0) * nr : NULL;
        int nw = (int)(P->N - p * nr < nr ? P->N - p * nr : nr);
        rows_avx512(M, kc, A + k0, lda, P->data + (p * K + k0) * nr, ahead, nw, beta || k0 > 0,
                    C + p * nr, ldc);
      }
    }
    return;
  }
  for (int64_t q = 0; q < np; q++) {
    int64_t p = back ? np - 1 - q : q, pn = back ? p - 1 : p + 1;    /* pn: the next panel */
    const float *bp = P->data + p * K * nr;
    int nw = (int)(P->N - p * nr < nr ? P->N - p * nr : nr);
    int64_t k0 = 0;
    do {                                          /* at least once: K = 0 still writes C */
      int64_t kc = K - k0 < KC ? K - k0 : KC, ka = k0 + AHEAD * KC, pa = p;
      if (ka >= K) { ka -= K; pa = pn; }          /* the block AHEAD on, if a whole one */
      const float *ahead = pa >= 0 && pa < np && ka + kc <= K ? P->data + (pa * K + ka) * nr : NULL;
      rows_avx512(M, kc, A + k0, lda, bp + k0 * nr, ahead, nw, beta || k0 > 0, C + p * nr, ldc);
      k0 += kc;
    } while (k0 < K);
  }
#endif
}

/* C = A' B + beta C with A and B read by rows: per block of AT_KC rows, both packed row by
** row as stored (at_pack: the reads stream, which the hardware prefetcher follows), A into
** tiles of kc x 12 (12 rows of C: a tile is 12 KiB, all of them 512 KiB at 512 columns, kept
** in L2), B into panels of kc x 32 (32 KiB, in L1 while every tile passes over it: the
** packed kernel's loop). Read in place neither would stay in L1: rows 1-8 KiB apart fall
** into 2-8 of its 64 sets (a transposition of A and a copy of each panel of B in place cost
** about as much as the products: 7 and 9 ms of the GRU's 15 ms gU). BLAS (sgemm_nt) ran the
** GRU's gU = H' dmh at 113-126 GFLOP/s, the char-LSTM's dU, dW at 140-150 (its Haswell
** kernels; its AVX-512 ones are faster than this, so cells.c then keeps BLAS). Each element's
** k are summed in order, partial sums through C: the bits depend neither on how the caller
** cuts M or N nor on the thread count. */
enum { AT_KC = 256, AT_PANELS = 8 };            /* B packed 8 panels at a time: 256 KiB */

/* The packing buffer: A's tiles of one block of k (ceil(M / 12) tiles of kc x 12 floats,
** rounded up to 16 floats: at_tiles_floats), then AT_PANELS panels of B. */
static int64_t at_tiles_floats(int64_t M, int64_t K) {
  int64_t kcm = K < AT_KC ? K : AT_KC;
  return ((M + 11) / 12 * 12 * kcm + 15) / 16 * 16;
}

size_t mg_gemm_at_scratch(int64_t M, int64_t K) {
  int64_t kcm = K < AT_KC ? K : AT_KC;
  return (size_t)(at_tiles_floats(M, K) + AT_PANELS * 32 * kcm) * sizeof(float) + 64;
}

bool mg_gemm_at_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                    int64_t ldb, int beta, float *C, int64_t ldc, void *scratch) {
#ifdef MG_X86_KERNELS
  if (isa() != ISA_AVX512) return false;
  if (M == 0 || N == 0) return true;
  if (K == 0) {                                   /* C = beta C */
    for (int64_t i = 0; !beta && i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof *C);
    return true;
  }
  int64_t mt = (M + 11) / 12, np = (N + 31) / 32;
  void *own = scratch ? NULL : malloc(mg_gemm_at_scratch(M, K));
  if (scratch == NULL && (scratch = own) == NULL) return false;
  float *ap = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  float *bp = ap + at_tiles_floats(M, K);
  for (int64_t k0 = 0; k0 < K; k0 += AT_KC) {
    int64_t kc = K - k0 < AT_KC ? K - k0 : AT_KC;
    at_pack(M, 12, k0, kc, A, lda, ap);
    for (int64_t p0 = 0; p0 < np; p0 += AT_PANELS) {
      int64_t j0 = p0 * 32, nj = N - j0 < AT_PANELS * 32 ? N - j0 : AT_PANELS * 32;
      at_pack(nj, 32, k0, kc, B + j0, ldb, bp);
      for (int64_t p = 0; p * 32 < nj; p++) {
        int nw = (int)(nj - p * 32 < 32 ? nj - p * 32 : 32);
        for (int64_t t = 0; t < mt; t++)
          tile_avx512((int)(M - t * 12 < 12 ? M - t * 12 : 12), kc, ap + t * 12 * kc,
                      bp + p * 32 * kc, nw, beta || k0 > 0, C + t * 12 * ldc + j0 + p * 32, ldc);
      }
    }
  }
  free(own);
  return true;
#else
  (void)M; (void)N; (void)K; (void)A; (void)lda; (void)B; (void)ldb; (void)beta; (void)C; (void)ldc;
  (void)scratch;
  return false;
#endif
}

/* Rows in blocks of XSUM_ROWS (32: 96 KiB of a GRU's (T B, 3u) dmx at 256 units; 256 rows,
** 32 KiB of a 32-column block, when x has more than 8 columns), the 32-column blocks inside,
** x's columns 8 at a time inside those: a block's rows are read from L2 (prefetched while the
** previous block's columns pass), again from L1 for each further 8 columns of x, and the
** accumulators come back from L1 or L2: one pass over a, which BLAS would copy whole for a
** product of d rows. GRU 256 units, B 64, T 100 (d = 8, a 19.7 MB dmx): 5.3 ms for BLAS's gW
** alone, 1.1 ms for both; the char-LSTM's first layer at 512 units (d = 64, 256-row chunks of
** dZ): 0.82 ms for BLAS's dW, 0.66 ms for both (best of 10, under load). The accumulators
** must stay in registers: without the unroll pragmas GCC kept a copy of them on the stack,
** stored at every row (1.4 ms for the GRU's). */
bool mg_xsum_available(int64_t d) {
#ifdef MG_X86_KERNELS
  if (isa() == ISA_AVX512 && __builtin_cpu_supports("avx512dq")) return d >= 1 && d <= MG_XSUM_MAXD;
#endif
  (void)d;
  return false;
}

void mg_xsum_f32(int64_t rows, int64_t n, const float *a, int64_t ld, const float *x,
                 int64_t ldx, int d, float *gw, int64_t ldw, int beta, float *out) {
#ifdef MG_X86_KERNELS
  int64_t XSUM_ROWS = d > 8 ? 256 : 32;
  enum { XSUM_COLS = 1024 };                      /* columns per pass: acc on the stack */
  double acc[XSUM_COLS];
  for (int64_t c0 = 0; c0 < n; c0 += XSUM_COLS) {   /* each column's sums alone */
    int64_t nc = n - c0 < XSUM_COLS ? n - c0 : XSUM_COLS, r0 = 0;
    do {                                          /* at least once: rows = 0 writes zeros */
      int64_t r1 = rows - r0 < XSUM_ROWS ? rows : r0 + XSUM_ROWS;
      for (int64_t c = 0; c < nc; c += 32)
        for (int i = 0; i < d; i += 8)            /* x's columns 8 at a time */
          xsum_avx512(d - i < 8 ? d - i : 8, rows, r0, r1, a + c0 + c, ld, x + i, ldx,
                      (int)(nc - c < 32 ? nc - c : 32), gw + i * ldw + c0 + c, ldw, beta,
                      r0 == 0, i == 0, acc + c);
      r0 = r1;
    } while (r0 < rows);
    for (int64_t j = 0; j < nc; j++) out[c0 + j] = (float)acc[j];
  }
#else
  (void)rows; (void)n; (void)a; (void)ld; (void)x; (void)ldx; (void)d; (void)gw; (void)ldw;
  (void)beta; (void)out;
#endif
}
