/*
** smallgemm.h - float32 GEMM with a right operand packed once and used many times: the
** recurrent kernel U of a sequence op, multiplied at every step by a few rows (B of them).
** BLAS packs its operand again at each call; here the packing is paid once per sequence.
** An AVX-512 kernel picked at run time (__builtin_cpu_supports); elsewhere (AVX2: BLAS
** measured faster, docs/design.md) the calls are BLAS (mg_gemm) on the unpacked matrix.
*/
#ifndef MG_SMALLGEMM_H
#define MG_SMALLGEMM_H

#include "mg_impl.h"

typedef struct mg_packed {
  int64_t K, N;           /* the logical matrix is K x N */
  int nr;                 /* panel width in floats; 0: not packed (use 'src' with BLAS) */
  float *data;            /* ceil(N / nr) panels of K x nr floats, zero-padded, 64-byte aligned */
  void *block;            /* the allocation holding 'data'; owned */
  mg_pool *pool;          /* where 'block' came from (NULL: malloc) */
  size_t cap;
  const float *src;       /* the matrix as given (row-major K x N, or N x K when 'trans') */
  int64_t ld;
  bool trans;
} mg_packed;

/* Pack op(src) (K x N; 'trans': src is N x K, row-major with leading dimension ld) for
** mg_gemm_packed. 'src' must stay valid while the packing is used (the BLAS fallback reads
** it). The panels come from 'pool' (a context's: reused from one sequence to the next; NULL:
** malloc). Returns false when out of memory (then nothing to free). */
bool mg_pack(mg_packed *P, mg_pool *pool, const float *src, int64_t ld, bool trans, int64_t K,
             int64_t N);
void mg_pack_free(mg_packed *P);
/* C (M x N, ldc) = A (M x K, lda) op(src) + beta C, beta 0 or 1. */
void mg_gemm_packed(const mg_packed *P, int64_t M, const float *A, int64_t lda, int beta,
                    float *C, int64_t ldc);
/* The weight gradient of a narrow input and a bias gradient in one pass over a (rows x n,
** ld): gw (d x n, ldw) = beta gw + x' a, x (rows x d, ldx), 1 <= d <= MG_XSUM_MAXD, each element's
** products summed over the rows in order; out (n) = the column sums of a, in double over the
** rows in order (the bits of mg_colsum). Only where mg_xsum_available(d). */
enum { MG_XSUM_MAXD = 64 };
bool mg_xsum_available(int64_t d);
void mg_xsum_f32(int64_t rows, int64_t n, const float *a, int64_t ld, const float *x,
                 int64_t ldx, int d, float *gw, int64_t ldw, int beta, float *out);
/* C (M x N, ldc) = A' B + beta C, beta 0 or 1, A (K x M, lda) and B (K x N, ldb) row-major
** (weight gradients such as H' dZ over many rows); each element's products summed in k
** order. 'scratch': the packing buffer, mg_gemm_at_scratch(M, K) bytes at any alignment
** (the caller's, reused from call to call: mg_grads_par takes it from the pool), or NULL:
** allocated and freed here. False (C untouched) where the packed kernels do not run or out
** of memory: then the caller uses BLAS. */
bool mg_gemm_at_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                    int64_t ldb, int beta, float *C, int64_t ldc, void *scratch);
size_t mg_gemm_at_scratch(int64_t M, int64_t K);
/* Whether this build and CPU run moongrad's AVX-512 kernels (the packed ones here, and
** jacobian.c's rows); else mg_gemm_packed is BLAS. */
bool mg_packed_available(void);

#endif
