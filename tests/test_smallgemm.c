/*
** test_smallgemm.c - the packed float32 GEMM (runtime/smallgemm.c) against a float64 reference
** on random and odd sizes: M below, at and above the 12-row block and the 64 rows above which
** the K blocks go outside the panels, N not a multiple of the 32-column panel, K below, at and
** across the 256-row blocks (and K = 0), both layouts of the packed operand (trans), beta 0
** and 1, leading dimensions larger than the rows, a pool and malloc. Every element within
** float32 rounding of the sum of |terms|. mg_xsum_f32 (a narrow input's weight gradient with
** the column sums) for d from 1 to 64: the product within float32 rounding, the sums bit for
** bit those of mg_colsum. mg_gemm_at_f32 (A' B, A and B read by rows) on the same sizes and
** random ones. On CPUs without AVX-512 this checks the BLAS fallback (and skips
** mg_xsum_f32 and mg_gemm_at_f32). Exit status 0 when every check passes.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cells.h"
#include "smallgemm.h"

static int failures, checks;

static uint64_t rng = 0x9e3779b97f4a7c15u;
static float frand(void) {                      /* uniform in [-1, 1), xorshift64* */
  rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
  return (float)((double)((rng * 0x2545f4914f6cdd1du) >> 11) / 4503599627370496.0 - 1.0);
}

/* C = A op(B) + beta C0 through the packing, checked element by element. */
static void check(mg_pool *pool, int64_t M, int64_t N, int64_t K, bool trans, int beta) {
  int64_t lda = K + 3, ldb = (trans ? K : N) + 5, ldc = N + 7, brows = trans ? N : K;
  float *A = malloc(sizeof(float) * (size_t)(M * lda + 1));
  float *B = malloc(sizeof(float) * (size_t)(brows * ldb + 1));
  float *C = malloc(sizeof(float) * (size_t)(M * ldc + 1));
  float *C0 = malloc(sizeof(float) * (size_t)(M * ldc + 1));
  if (!A || !B || !C || !C0) { fprintf(stderr, "out of memory\n"); exit(2); }
  for (int64_t i = 0; i < M * lda; i++) A[i] = frand();
  for (int64_t i = 0; i < brows * ldb; i++) B[i] = frand();
  for (int64_t i = 0; i < M * ldc; i++) C0[i] = C[i] = frand();
  mg_packed P;
  if (!mg_pack(&P, pool, B, ldb, trans, K, N)) { fprintf(stderr, "mg_pack failed\n"); exit(2); }
  mg_gemm_packed(&P, M, A, lda, beta, C, ldc);
  mg_pack_free(&P);
  int bad = 0;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < ldc; j++) {
      double want = C0[i * ldc + j], mag = fabs(want);
      if (j < N) {
        want = beta ? want : 0;
        mag = beta ? mag : 0;
        for (int64_t k = 0; k < K; k++) {
          double t = (double)A[i * lda + k] * (trans ? B[j * ldb + k] : B[k * ldb + j]);
          want += t;
          mag += fabs(t);
        }
      }                                       /* columns N..ldc: must be left untouched */
      double tol = j < N ? 4 * (double)(K + 2) * 6e-8 * mag : 0;
      if (fabs(C[i * ldc + j] - want) > tol && bad++ == 0)
        fprintf(stderr, "M %lld N %lld K %lld trans %d beta %d: C[%lld][%lld] = %.9g, want %.9g\n",
                (long long)M, (long long)N, (long long)K, trans, beta, (long long)i, (long long)j,
                C[i * ldc + j], want);
    }
  checks++;
  failures += bad != 0;
  free(A); free(B); free(C); free(C0);
}

/* Whether C (M x ldc) is beta C0 + A' B within float32 rounding (A K x M, B K x N) with its
** columns past N untouched; the first wrong element reported under 'what'. */
static bool at_wrong(const char *what, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                     const float *B, int64_t ldb, int beta, const float *C0, const float *C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < ldc; j++) {
      double want = j < N && !beta ? 0 : C0[i * ldc + j], mag = fabs(want);
      for (int64_t k = 0; j < N && k < K; k++) {
        double t = (double)A[k * lda + i] * B[k * ldb + j];
        want += t;
        mag += fabs(t);
      }
      double tol = j < N ? 4 * (double)(K + 2) * 6e-8 * mag : 0;
      if (fabs(C[i * ldc + j] - want) > tol) {
        fprintf(stderr, "%s M %lld N %lld K %lld beta %d: C[%lld][%lld] = %.9g, want %.9g\n", what,
                (long long)M, (long long)N, (long long)K, beta, (long long)i, (long long)j,
                C[i * ldc + j], want);
        return true;
      }
    }
  return false;
}

/* mg_gemm_at_f32: C = A' B + beta C0 (A K x M, B K x N), element by element within float32
** rounding; the columns past N untouched. */
static void check_at(int64_t M, int64_t N, int64_t K, int beta) {
  int64_t lda = M + 3, ldb = N + 5, ldc = N + 7;
  float *A = malloc(sizeof(float) * (size_t)(K * lda + 1)), *B = malloc(sizeof(float) * (size_t)(K * ldb + 1));
  float *C = malloc(sizeof(float) * (size_t)(M * ldc + 1)), *C0 = malloc(sizeof(float) * (size_t)(M * ldc + 1));
  if (!A || !B || !C || !C0) { fprintf(stderr, "out of memory\n"); exit(2); }
  for (int64_t i = 0; i < K * lda; i++) A[i] = frand();
  for (int64_t i = 0; i < K * ldb; i++) B[i] = frand();
  for (int64_t i = 0; i < M * ldc; i++) C0[i] = C[i] = frand();
  if (!mg_gemm_at_f32(M, N, K, A, lda, B, ldb, beta, C, ldc, NULL)) { fprintf(stderr, "mg_gemm_at_f32 failed\n"); exit(2); }
  checks++;
  failures += at_wrong("at", M, N, K, A, lda, B, ldb, beta, C0, C, ldc);
  /* with the caller's packing buffer, exactly mg_gemm_at_scratch bytes at an address 4 bytes
  ** past a 64-byte boundary (under MG_SANITIZE an overrun is caught): the same bits */
  size_t sb = mg_gemm_at_scratch(M, K);
  char *raw = aligned_alloc(64, (sb + 4 + 63) / 64 * 64);
  float *C2 = malloc(sizeof(float) * (size_t)(M * ldc + 1));
  if (!raw || !C2) { fprintf(stderr, "out of memory\n"); exit(2); }
  memcpy(C2, C0, sizeof(float) * (size_t)(M * ldc));
  if (!mg_gemm_at_f32(M, N, K, A, lda, B, ldb, beta, C2, ldc, raw + 4)) { fprintf(stderr, "mg_gemm_at_f32 failed\n"); exit(2); }
  checks++;
  if (memcmp(C, C2, sizeof(float) * (size_t)(M * ldc)) != 0) {
    fprintf(stderr, "at M %lld N %lld K %lld beta %d: the caller's buffer changes the result\n",
            (long long)M, (long long)N, (long long)K, beta);
    failures++;
  }
  free(raw); free(C2);
  free(A); free(B); free(C); free(C0);
}

/* mg_xsum_f32: gw = beta gw0 + x' a within float32 rounding, out bit for bit mg_colsum's. */
static void check_xsum(int64_t rows, int64_t n, int d, int beta) {
  int64_t ld = n + 3, ldx = d + 2, ldw = n + 5;
  float *a = malloc(sizeof(float) * (size_t)(rows * ld + 1)), *x = malloc(sizeof(float) * (size_t)(rows * ldx + 1));
  float *gw = malloc(sizeof(float) * (size_t)(d * ldw)), *gw0 = malloc(sizeof(float) * (size_t)(d * ldw));
  float *out = malloc(sizeof(float) * (size_t)(n + 1)), *want = malloc(sizeof(float) * (size_t)(n + 1));
  if (!a || !x || !gw || !gw0 || !out || !want) { fprintf(stderr, "out of memory\n"); exit(2); }
  for (int64_t i = 0; i < rows * ld; i++) a[i] = frand();
  for (int64_t i = 0; i < rows * ldx; i++) x[i] = frand();
  for (int64_t i = 0; i < d * ldw; i++) gw0[i] = gw[i] = frand();
  mg_xsum_f32(rows, n, a, ld, x, ldx, d, gw, ldw, beta, out);
  mg_colsum(MG_F32, rows, n, a, ld, want);
  int bad = 0;
  for (int64_t j = 0; j < n; j++)
    if (memcmp(&out[j], &want[j], sizeof out[j]) != 0 && bad++ == 0)
      fprintf(stderr, "xsum rows %lld n %lld d %d: out[%lld] = %.9g, mg_colsum %.9g\n", (long long)rows,
              (long long)n, d, (long long)j, out[j], want[j]);
  bad += at_wrong("xsum", d, n, rows, x, ldx, a, ld, beta, gw0, gw, ldw);
  checks++;
  failures += bad != 0;
  free(a); free(x); free(gw); free(gw0); free(out); free(want);
}

int main(void) {
  mg_pool *pool = mg_pool_new();
  int64_t Ms[] = { 1, 7, 8, 9, 12, 13, 16, 25, 32, 33, 64, 65, 130 }, Ns[] = { 1, 5, 31, 32, 33, 100 },
          Ks[] = { 0, 1, 17, 128, 255, 256, 257, 600 };
  for (size_t a = 0; a < sizeof Ms / sizeof *Ms; a++)
    for (size_t b = 0; b < sizeof Ns / sizeof *Ns; b++)
      for (size_t c = 0; c < sizeof Ks / sizeof *Ks; c++)
        for (int t = 0; t < 2; t++)
          check((a + b + c) % 2 ? pool : NULL, Ms[a], Ns[b], Ks[c], t, (int)((a + c) % 2));
  for (int r = 0; r < 40; r++) {                /* random sizes, up to a few blocks each way */
    int64_t M = 1 + (int64_t)((frand() + 1) * 20), N = 1 + (int64_t)((frand() + 1) * 80),
            K = (int64_t)((frand() + 1) * 400);
    check(pool, M, N, K, r % 2, r % 3 == 0);
  }
  for (size_t a = 0; mg_packed_available() && a < sizeof Ms / sizeof *Ms; a++)   /* A' B */
    for (size_t b = 0; b < sizeof Ns / sizeof *Ns; b++)
      for (size_t c = 0; c < sizeof Ks / sizeof *Ks; c++)
        check_at(Ms[a], Ns[b], Ks[c], (int)((a + b + c) % 2));
  for (int beta = 0; mg_packed_available() && beta < 2; beta++) {   /* past 8 panels of B */
    check_at(70, 600, 300, beta);
    check_at(13, 257, 513, beta);
  }
  for (int r = 0; mg_packed_available() && r < 20; r++) {
    int64_t M = 1 + (int64_t)((frand() + 1) * 70), N = 1 + (int64_t)((frand() + 1) * 80),
            K = (int64_t)((frand() + 1) * 400);
    check_at(M, N, K, r % 2);
  }
  int64_t xr[] = { 0, 1, 31, 32, 33, 100, 300 }, xn[] = { 1, 5, 16, 31, 32, 33, 100 };
  int xd[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 33, MG_XSUM_MAXD };
  for (size_t c = 0; mg_xsum_available(1) && c < sizeof xd / sizeof *xd; c++)
    for (size_t a = 0; a < sizeof xr / sizeof *xr; a++)
      for (size_t b = 0; b < sizeof xn / sizeof *xn; b++)
        check_xsum(xr[a], xn[b], xd[c], (int)((a + b + c) % 2));
  for (int beta = 0; mg_xsum_available(1) && beta < 2; beta++) {   /* past one pass's 1024 columns */
    check_xsum(33, 1024 + 33, 8, beta);
    check_xsum(40, 2048, 17, beta);
  }
  mg_pool_unref(pool);
  printf("test_smallgemm: %d of %d products wrong (packed kernels: %s)\n", failures, checks,
         mg_packed_available() ? "AVX-512" : "none, BLAS");
  return failures != 0;
}
