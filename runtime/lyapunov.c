/*
** lyapunov.c - the fast path of mg.lyapunov for the built-in GRU cell (Keras layout,
** reset_after, sigmoid and tanh), float32: the whole QR method (Benettin et al.) in one call,
** on buffers allocated once, with nothing recorded.
**
** Per step t and trajectory b, with a = x_t W + b_in and m = h U + b_rec (gates z, r, h):
**   z = sigm(a_z + m_z), r = sigm(a_r + m_r), hh = tanh(a_h + r m_h), h' = z h + (1 - z) hh,
** the Jacobian dh'_j/dh_l is  J[l, j] = U_z[l, j] cz_j + U_r[l, j] cr_j + U_h[l, j] ch_j
** + [l = j] z_j  with  cz = z (1 - z) (h - hh),  cr = (1 - z)(1 - hh^2) m_h r (1 - r),
** ch = (1 - z)(1 - hh^2) r: the recurrent kernel's three blocks with their columns scaled.
** The k tangents of a trajectory are the rows of a (k, N) matrix T (the columns of the
** column-major N x k matrix LAPACK sees), pushed through as T J with J formed (3 N^2 per
** trajectory, against 3 k N^2 for the k JVPs through U), then re-orthonormalized by
** Householder's QR with LAPACK's arithmetic and signs (those of mg.linalg.qr), log|R_ii| summed.
** Two ways, the same numbers up to rounding:
**   lanes (k < 128)  16 trajectories at once, one per lane of a 16-float vector: J formed a
**                    few columns at a time and applied with register-blocked FMAs, and the
**                    QR unblocked, every operation 16 trajectories wide (at these sizes the
**                    per-call overhead of BLAS and LAPACK's unblocked QR took the time);
**   per trajectory   J formed, one (k, N) x (N, N) GEMM, LAPACK's recursive geqrt3 and Q
**                    from its compact WY form by one GEMM.
** The generic path (any step function, a vectorized JVP per step) is
** bindings/moongrad/spectra.lua; spec/spectra_spec.lua checks the two agree.
*/
#include "mg_impl.h"
#include "cells.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The vector loops below are compiled for AVX-512 and AVX2 too, picked at load time, with
** a * b + c fused (ISO C mode leaves it unfused). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define MG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), \
                                 optimize("fp-contract=fast")))
#else
#define MG_CLONES
#endif

/* Scratch of one run, allocated once. */
typedef struct {
  float *h, *hn, *mx, *S, *dmx, *co, *zz, *ones, *T, *A, *J, *tau, *beta, *X, *sum, *row;
  float *cl, *Jb;             /* the lanes way: coefficients (4 x N x LANES), J block */
  float *Vb, *Wb, *Tb;        /* the lanes' blocked QR: a panel's reflectors, V^T C, the T factors */
  double *acc;
  mg_packed P;                /* U packed once for the recurrent products */
  bool packed;
} scratch;

/* One GRU step for every trajectory through the fused cell's own kernels (cells.c): h <- h',
** and the coefficients of its Jacobian, which are the reverse pass's with a cotangent of
** ones: co = [cz cr ch] (B, 3N) as mg_gru_d1's dmh, zz = z its dh. */
static void gru_step_f32(int64_t B, int64_t F, int64_t N, const float *xt, int64_t ldx,
                         const float *W, const float *U, const float *bias, scratch *s) {
  int64_t G = 3 * N;
  mg_gemm(MG_F32, false, false, B, G, F, 1, xt, ldx, W, G, 0, s->mx, G);
  mg_gru_step_forward(MG_F32, B, N, true, U, s->packed ? &s->P : NULL, bias, s->h, s->mx, s->S,
                      s->hn);
  mg_gru_d1(MG_F32, 0, B, N, true, s->S, s->h, s->ones, s->dmx, s->co, s->zz);
  float *t = s->h; s->h = s->hn; s->hn = t;
}

/* J (N, N) of one trajectory from the coefficients at 'o' (explicit way). */
MG_CLONES static void form_jacobian_f32(int64_t N, const float *U, const float *cz,
                                        const float *cr, const float *ch, const float *zz,
                                        float *J) {
  for (int64_t l = 0; l < N; l++) {
    const float *u = U + l * 3 * N;
    float *Jl = J + l * N;
    for (int64_t j = 0; j < N; j++) Jl[j] = u[j] * cz[j] + u[N + j] * cr[j] + u[2 * N + j] * ch[j];
    Jl[l] += zz[l];
  }
}

/* The Householder QR of the k rows of A (each of length N: the columns of the N x k matrix
** LAPACK would see), in place, with LAPACK's conventions (slarfg's reflectors, sorg2r's Q,
** so the same signs as mg.linalg.qr): A becomes Q; log|R_jj| is added to logs[j] unless
** 'logs' is NULL. Written out rather than calling geqrf + orgqr, whose unblocked code makes
** one BLAS call per column: at these sizes the calls, not the arithmetic, took the time. */
/* The QR of 16 trajectories at once: their k x N tangent matrices interleaved as
** X[c][i][l] (tangent c, component i, trajectory l < LANES), so every step of Householder's
** method is one 16-wide vector operation across the trajectories (no reductions inside a
** vector, no short loops): the arithmetic of LAPACK's geqr2 + org2r (slarfg's reflectors
** and signs, as mg.linalg.qr), written out. X becomes Q; log|R_jj| of lane l is added to
** logs[l * k + j]. Lanes past the batch hold the identity (their logs are 0). */
#define LANES 16
#define MG_INLINE static inline __attribute__((always_inline))
typedef float lanes_t __attribute__((vector_size(LANES * sizeof(float))));   /* GCC and Clang */
/* The same at any float's address (an unaligned load or store), for lload and lstore. */
typedef float lanes_at __attribute__((vector_size(LANES * sizeof(float)), aligned(4), may_alias));
#define lload(p) (*(const lanes_at *)(p))
#define lstore(p, v) (*(lanes_at *)(p) = (v))

/* One reflector (v, tau) applied to tangent row a, both from component j on. */
MG_INLINE void reflect_lanes(int64_t j, int64_t N, const float *v, const float *tau, float *a) {
  lanes_t w = lload(a + j * LANES), t = lload(tau);
  for (int64_t i = j + 1; i < N; i++) w += lload(v + i * LANES) * lload(a + i * LANES);
  w *= t;
  lstore(a + j * LANES, lload(a + j * LANES) - w);
  for (int64_t i = j + 1; i < N; i++) lstore(a + i * LANES, lload(a + i * LANES) - w * lload(v + i * LANES));
}

/* The same for the 4 rows a, a + row, a + 2 row, a + 3 row: independent sums, so the dot
** products are not one chain of dependent additions. */
MG_INLINE void reflect4_lanes(int64_t j, int64_t N, const float *v, const float *tau,
                                  float *a, int64_t row) {
  float *a0 = a, *a1 = a + row, *a2 = a + 2 * row, *a3 = a + 3 * row;
  lanes_t w0 = lload(a0 + j * LANES), w1 = lload(a1 + j * LANES), w2 = lload(a2 + j * LANES),
          w3 = lload(a3 + j * LANES), t = lload(tau);
  for (int64_t i = j + 1; i < N; i++) {
    lanes_t vi = lload(v + i * LANES);
    w0 += vi * lload(a0 + i * LANES);
    w1 += vi * lload(a1 + i * LANES);
    w2 += vi * lload(a2 + i * LANES);
    w3 += vi * lload(a3 + i * LANES);
  }
  w0 *= t, w1 *= t, w2 *= t, w3 *= t;
  lstore(a0 + j * LANES, lload(a0 + j * LANES) - w0);
  lstore(a1 + j * LANES, lload(a1 + j * LANES) - w1);
  lstore(a2 + j * LANES, lload(a2 + j * LANES) - w2);
  lstore(a3 + j * LANES, lload(a3 + j * LANES) - w3);
  for (int64_t i = j + 1; i < N; i++) {
    lanes_t vi = lload(v + i * LANES);
    lstore(a0 + i * LANES, lload(a0 + i * LANES) - w0 * vi);
    lstore(a1 + i * LANES, lload(a1 + i * LANES) - w1 * vi);
    lstore(a2 + i * LANES, lload(a2 + i * LANES) - w2 * vi);
    lstore(a3 + i * LANES, lload(a3 + i * LANES) - w3 * vi);
  }
}

/* Reflector j applied to rows j + 1 .. k - 1 of X. */
MG_INLINE void reflect_rows(int64_t j, int64_t N, int64_t k, const float *v, const float *tau,
                                float *X, int64_t row) {
  int64_t c = j + 1;
  for (; c + 4 <= k; c += 4) reflect4_lanes(j, N, v, tau, X + c * row, row);
  for (; c < k; c++) reflect_lanes(j, N, v, tau, X + c * row);
}

/* Steps j0 .. j1 - 1 of geqr2 (slarfg's reflectors) on the columns j0 .. j1 - 1 of X only. */
MG_INLINE void geqr2_lanes(int64_t N, int64_t j0, int64_t j1, float *X, float *tau, float *beta) {
  const int64_t row = N * LANES;
  for (int64_t j = j0; j < j1; j++) {
    float *v = X + j * row, *t = tau + j * LANES, *bt = beta + j * LANES, ss[LANES] = { 0 };
    for (int64_t i = j + 1; i < N; i++)
      for (int l = 0; l < LANES; l++) ss[l] += v[i * LANES + l] * v[i * LANES + l];
    float sc[LANES];
    for (int l = 0; l < LANES; l++) {
      float alpha = v[j * LANES + l], b = -copysignf(sqrtf(alpha * alpha + ss[l]), alpha);
      bool some = ss[l] > 0;
      bt[l] = some ? b : alpha;
      t[l] = some ? (b - alpha) / b : 0;
      sc[l] = some ? 1 / (alpha - b) : 1;
      v[j * LANES + l] = bt[l];
    }
    for (int64_t i = j + 1; i < N; i++)
      for (int l = 0; l < LANES; l++) v[i * LANES + l] *= sc[l];
    reflect_rows(j, N, j1, v, t, X, row);
  }
}

/* Steps j1 - 1 .. j0 of org2r on the columns j0 .. j1 - 1 of X (those after j1 already Q's). */
MG_INLINE void org2r_lanes(int64_t N, int64_t j0, int64_t j1, float *X, const float *tau) {
  const int64_t row = N * LANES;
  for (int64_t j = j1 - 1; j >= j0; j--) {
    float *v = X + j * row;
    const float *t = tau + j * LANES;
    reflect_rows(j, N, j1, v, t, X, row);
    for (int64_t i = j + 1; i < N; i++)
      for (int l = 0; l < LANES; l++) v[i * LANES + l] *= -t[l];
    for (int l = 0; l < LANES; l++) v[j * LANES + l] = 1 - t[l];
    for (int64_t i = 0; i < j; i++)
      for (int l = 0; l < LANES; l++) v[i * LANES + l] = 0;
  }
}

/* The blocked QR (LAPACK's geqrf + orgqr in compact WY form, Schreiber and Van Loan) works on
** panels of NB columns: a panel is factored as above, its reflectors copied out as V (NB x N
** lane vectors, unit lower trapezoidal from row j0, zero above) with their triangular T
** (slarft: H_j0 ... H_(j0+NB-1) = I - V T V^T), and the columns after it updated at once by
** C <- (I - V T^T V^T) C (Q^T C); Q is then built panel by panel from the last, each block
** applied as C <- (I - V T V^T) C. Each update is two register-blocked products over the
** rows (W = V^T C, C -= V W), reading C once per panel where the unblocked code reads it
** once per column. */
#define NB 8

/* V (NB rows, row stride N LANES) of the panel at j0 from X's columns j0 .. j0 + NB - 1. */
MG_INLINE void panel_v(int64_t N, int64_t j0, const float *X, float *V) {
  const int64_t row = N * LANES;
  for (int64_t p = 0; p < NB; p++) {
    float *v = V + p * row;
    int64_t d = j0 + p;
    memset(v + j0 * LANES, 0, sizeof(float) * (size_t)(p * LANES));
    lstore(v + d * LANES, (lanes_t){ 0 } + 1.0f);
    memcpy(v + (d + 1) * LANES, X + (j0 + p) * row + (d + 1) * LANES,
           sizeof(float) * (size_t)((N - d - 1) * LANES));
  }
}

/* slarft (forward, columnwise): Tm (NB x NB lane vectors, upper) of the panel at j0. */
MG_INLINE void panel_t(int64_t N, int64_t j0, const float *V, const float *tau, float *Tm) {
  const int64_t row = N * LANES;
  for (int64_t i = 0; i < NB; i++) {
    lanes_t ti = lload(tau + (j0 + i) * LANES), w[NB];
    for (int64_t p = 0; p < i; p++) {
      lanes_t d = (lanes_t){ 0 };
      for (int64_t r = j0 + i; r < N; r++) d += lload(V + p * row + r * LANES) * lload(V + i * row + r * LANES);
      w[p] = d;
    }
    for (int64_t p = 0; p < i; p++) {
      lanes_t a = (lanes_t){ 0 };
      for (int64_t q = p; q < i; q++) a += lload(Tm + (p * NB + q) * LANES) * w[q];
      lstore(Tm + (p * NB + i) * LANES, -ti * a);
    }
    lstore(Tm + (i * NB + i) * LANES, ti);
    for (int64_t p = i + 1; p < NB; p++) lstore(Tm + (p * NB + i) * LANES, (lanes_t){ 0 });
  }
}

/* W[p][c] (+)= sum over rows i in [r0, r1) of V[p][i] X[c][i], for cb columns from c (W: NB
** x k lane vectors, W[(p k + c) LANES]; 'first': W starts at 0, else it accumulates). */
MG_INLINE void vtc_cols(int cb, bool first, int64_t r0, int64_t r1, int64_t N, int64_t k, int64_t c,
                        const float *V, const float *X, float *W) {
  const int64_t row = N * LANES;
  lanes_t acc[NB][2];
#pragma GCC unroll 8
  for (int p = 0; p < NB; p++)
    for (int q = 0; q < cb; q++) acc[p][q] = first ? (lanes_t){ 0 } : (lanes_t)lload(W + (p * k + c + q) * LANES);
  for (int64_t i = r0; i < r1; i++) {
    lanes_t a[2];
    for (int q = 0; q < cb; q++) a[q] = lload(X + (c + q) * row + i * LANES);
#pragma GCC unroll 8
    for (int p = 0; p < NB; p++) {
      lanes_t v = lload(V + p * row + i * LANES);
      for (int q = 0; q < cb; q++) acc[p][q] += v * a[q];
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < NB; p++)
    for (int q = 0; q < cb; q++) lstore(W + (p * k + c + q) * LANES, acc[p][q]);
}

/* X[c][i] -= sum_p V[p][i] W[p][c] for a tile of cb columns from c and ib rows from i. */
MG_INLINE void vw_tile(int cb, int ib, int64_t N, int64_t k, int64_t c, int64_t i, const float *V,
                       const float *W, float *X) {
  const int64_t row = N * LANES;
  lanes_t acc[4][4];
  for (int q = 0; q < cb; q++)
    for (int r = 0; r < ib; r++) acc[q][r] = lload(X + (c + q) * row + (i + r) * LANES);
#pragma GCC unroll 8
  for (int p = 0; p < NB; p++) {
    lanes_t w[4], v[4];
    for (int q = 0; q < cb; q++) w[q] = lload(W + (p * k + c + q) * LANES);
    for (int r = 0; r < ib; r++) v[r] = lload(V + p * row + (i + r) * LANES);
    for (int q = 0; q < cb; q++)
      for (int r = 0; r < ib; r++) acc[q][r] -= w[q] * v[r];
  }
  for (int q = 0; q < cb; q++)
    for (int r = 0; r < ib; r++) lstore(X + (c + q) * row + (i + r) * LANES, acc[q][r]);
}

/* The rows [r0, r1) of X's columns [c0, k) less V W (tiles of 4 x 4). */
MG_INLINE void vw_rows(int64_t r0, int64_t r1, int64_t N, int64_t k, int64_t c0, const float *V,
                       const float *W, float *X) {
  int64_t c = c0;
  for (; c + 4 <= k; c += 4) {
    int64_t i = r0;
    for (; i + 4 <= r1; i += 4) vw_tile(4, 4, N, k, c, i, V, W, X);
    for (; i < r1; i++) vw_tile(4, 1, N, k, c, i, V, W, X);
  }
  for (; c < k; c++) {
    int64_t i = r0;
    for (; i + 4 <= r1; i += 4) vw_tile(1, 4, N, k, c, i, V, W, X);
    for (; i < r1; i++) vw_tile(1, 1, N, k, c, i, V, W, X);
  }
}

/* Rows per chunk of the block updates: NB x RB lane vectors of V (16 KiB) stay in L1 while
** every column passes. */
#define RB 32

/* C <- (I - V op(T) V^T) C on the columns [c0, k) and rows [j0, N) of X: op(T) = T^T
** (trans: Q^T C, geqrf) or T (orgqr). */
MG_INLINE void apply_block(int64_t N, int64_t k, int64_t j0, int64_t c0, bool trans, const float *V,
                           const float *Tm, float *W, float *X) {
  for (int64_t r0 = j0; r0 < N; r0 += RB) {
    int64_t r1 = N - r0 < RB ? N : r0 + RB, c = c0;
    for (; c + 2 <= k; c += 2) vtc_cols(2, r0 == j0, r0, r1, N, k, c, V, X, W);
    for (; c < k; c++) vtc_cols(1, r0 == j0, r0, r1, N, k, c, V, X, W);
  }
  for (int64_t cc = c0; cc < k; cc++) {                 /* W <- op(T) W, in place */
    lanes_t w[NB];
    for (int p = 0; p < NB; p++) w[p] = lload(W + (p * k + cc) * LANES);
    for (int p = 0; p < NB; p++) {
      lanes_t a = (lanes_t){ 0 };
      if (trans) for (int q = 0; q <= p; q++) a += lload(Tm + (q * NB + p) * LANES) * w[q];
      else for (int q = p; q < NB; q++) a += lload(Tm + (p * NB + q) * LANES) * w[q];
      lstore(W + (p * k + cc) * LANES, a);
    }
  }
  for (int64_t r0 = j0; r0 < N; r0 += RB) vw_rows(r0, N - r0 < RB ? N : r0 + RB, N, k, c0, V, W, X);
}

/* Householder's QR of the 16 interleaved N x k matrices in X, in place: X becomes Q, beta
** holds R's diagonal (lane l of beta[j]). Unblocked up to 2 NB columns, else blocked. */
MG_CLONES static void householder_lanes_f32(int64_t N, int64_t k, float *X, float *tau,
                                            float *beta, float *V, float *W, float *Tall) {
  if (k < 2 * NB) {
    geqr2_lanes(N, 0, k, X, tau, beta);
    org2r_lanes(N, 0, k, X, tau);
    return;
  }
  const int64_t blocks = (k - 1) / NB;                   /* panels with columns after them */
  for (int64_t b = 0; b < blocks; b++) {
    int64_t j0 = b * NB;
    float *Tm = Tall + b * NB * NB * LANES;
    geqr2_lanes(N, j0, j0 + NB, X, tau, beta);
    panel_v(N, j0, X, V);
    panel_t(N, j0, V, tau, Tm);
    apply_block(N, k, j0, j0 + NB, true, V, Tm, W, X);
  }
  geqr2_lanes(N, blocks * NB, k, X, tau, beta);
  org2r_lanes(N, blocks * NB, k, X, tau);
  for (int64_t b = blocks - 1; b >= 0; b--) {
    int64_t j0 = b * NB;
    panel_v(N, j0, X, V);
    apply_block(N, k, j0, j0 + NB, false, V, Tall + b * NB * NB * LANES, W, X);
    org2r_lanes(N, j0, j0 + NB, X, tau);
  }
}

/* AL = TL J for the 16 trajectories of a group, lanes as in householder_lanes_f32 (TL, AL:
** k x N x LANES; the coefficients N x LANES): AL[c][j] = sum_i TL[c][i] J[i][j] with
** J[i][j] = U[i][j] cz[j] + U[i][N + j] cr[j] + U[i][2N + j] ch[j] + [i = j] zz[j], formed
** JB columns by RJ rows at a time into Jb (RJ x JB lane vectors, 16 KiB: in L1) and applied
** CB tangents at a time, the CB x JB lane vectors of AL summed in registers over the chunk. */
#define JB 4
#define CB 4
#define RJ 64
_Static_assert(JB == 4, "tangents_lanes_f32 takes the last columns as 1, 2 or 3");

/* AL[c .. c + cb)[j0 .. j0 + jb) (+)= TL[c ..][i0 .. i1) Jb. */
MG_INLINE void tan_tile(int cb, int jb, bool first, int64_t N, int64_t c, int64_t j0, int64_t i0,
                        int64_t i1, const float *TL, const float *Jb, float *AL) {
  lanes_t acc[CB][JB];
#pragma GCC unroll 8
  for (int q = 0; q < jb; q++)
    for (int d = 0; d < cb; d++)
      acc[d][q] = first ? (lanes_t){ 0 } : (lanes_t)lload(AL + ((c + d) * N + j0 + q) * LANES);
  for (int64_t i = i0; i < i1; i++) {
    lanes_t t[CB];
    for (int d = 0; d < cb; d++) t[d] = lload(TL + ((c + d) * N + i) * LANES);
#pragma GCC unroll 8
    for (int q = 0; q < jb; q++) {
      lanes_t jr = lload(Jb + ((i - i0) * JB + q) * LANES);
      for (int d = 0; d < cb; d++) acc[d][q] += t[d] * jr;
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < jb; q++)
    for (int d = 0; d < cb; d++) lstore(AL + ((c + d) * N + j0 + q) * LANES, acc[d][q]);
}

MG_CLONES static void tangents_lanes_f32(int64_t N, int64_t k, const float *U, const float *cz,
                                         const float *cr, const float *ch, const float *zz,
                                         const float *TL, float *AL, float *Jb) {
  const int64_t G = 3 * N;
  for (int64_t j0 = 0; j0 < N; j0 += JB) {
    int jb = N - j0 < JB ? (int)(N - j0) : JB;
    lanes_t vz[JB], vr[JB], vh[JB];
    for (int q = 0; q < jb; q++) {
      vz[q] = lload(cz + (j0 + q) * LANES);
      vr[q] = lload(cr + (j0 + q) * LANES);
      vh[q] = lload(ch + (j0 + q) * LANES);
    }
    for (int64_t i0 = 0; i0 < N; i0 += RJ) {
      int64_t i1 = N - i0 < RJ ? N : i0 + RJ;
      for (int64_t i = i0; i < i1; i++) {
        const float *u = U + i * G + j0;
        float *jr = Jb + (i - i0) * JB * LANES;
        for (int q = 0; q < jb; q++)
          lstore(jr + q * LANES, u[q] * vz[q] + u[N + q] * vr[q] + u[2 * N + q] * vh[q]);
        if (i >= j0 && i < j0 + jb)                   /* the diagonal: + z */
          lstore(jr + (i - j0) * LANES, lload(jr + (i - j0) * LANES) + lload(zz + i * LANES));
      }
      bool first = i0 == 0;
      int64_t c = 0;
      if (jb == JB) {
        for (; c + CB <= k; c += CB) tan_tile(CB, JB, first, N, c, j0, i0, i1, TL, Jb, AL);
        for (; c < k; c++) tan_tile(1, JB, first, N, c, j0, i0, i1, TL, Jb, AL);
      } else {                                       /* the last 1 to 3 columns */
        for (; c < k; c++)
          if (jb == 1) tan_tile(1, 1, first, N, c, j0, i0, i1, TL, Jb, AL);
          else if (jb == 2) tan_tile(1, 2, first, N, c, j0, i0, i1, TL, Jb, AL);
          else tan_tile(1, 3, first, N, c, j0, i0, i1, TL, Jb, AL);
      }
    }
  }
}

/* The coefficients of trajectories b0 .. b0 + nl - 1 in lanes (dst[j][l] = src[(b0 + l) ld + j]),
** 'pad' in the lanes past them. */
static void to_lanes_f32(int64_t N, int64_t b0, int64_t nl, const float *src, int64_t ld, float pad,
                         float *dst) {
  for (int64_t j = 0; j < N; j++)
    for (int64_t l = 0; l < LANES; l++) dst[j * LANES + l] = l < nl ? src[(b0 + l) * ld + j] : pad;
}

/* QR of the B (k, N) tangent matrices in A (rows: tangents), in place, 16 at a time through
** X; log|R_jj| of trajectory b added to sum[b * k + j] unless sum is NULL. */
static void qr_batch_f32(int64_t B, int64_t N, int64_t k, float *A, float *X, float *sum,
                         scratch *s) {
  float *tau = s->tau, *beta = s->beta;
  for (int64_t b0 = 0; b0 < B; b0 += LANES) {
    int64_t nl = B - b0 < LANES ? B - b0 : LANES;
    for (int64_t c = 0; c < k; c++)
      for (int64_t i = 0; i < N; i++) {
        float *x = X + (c * N + i) * LANES;
        for (int64_t l = 0; l < nl; l++) x[l] = A[((b0 + l) * k + c) * N + i];
        for (int64_t l = nl; l < LANES; l++) x[l] = c == i ? 1.0f : 0.0f;
      }
    householder_lanes_f32(N, k, X, tau, beta, s->Vb, s->Wb, s->Tb);
    for (int64_t l = 0; l < nl; l++) {
      float *a = A + (b0 + l) * k * N;
      for (int64_t c = 0; c < k; c++)
        for (int64_t i = 0; i < N; i++) a[c * N + i] = X[(c * N + i) * LANES + l];
      if (sum)
        for (int64_t j = 0; j < k; j++)
          sum[(b0 + l) * k + j] += (float)log(fabs((double)beta[j * LANES + l]));
    }
  }
}

/* From this many tangents on, LAPACK's recursive QR (GEMM-rich) beats the lanes' unblocked
** code above. */
#define QR_BLOCKED 128

/* The same QR through LAPACK, one trajectory at a time: its recursive compact-WY geqrt3,
** A = (I - V Tm V^T) [R; 0], so Q = E - V (Tm V1^T) with E the first k columns of the
** identity and V1 the unit lower k x k top of V: a triangular product and one GEMM, where
** orgqr takes 12% longer at k = N = 256. 'work' holds k * N * LANES floats. */
static mg_status qr_lapack_f32(mg_ctx *C, const char *fn, int64_t B, int64_t N, int64_t k,
                               float *A, float *work, float *sum) {
  lapack_int n = (lapack_int)N, kk = (lapack_int)k;
  float *Tm = work, *Q = work + k * k;
  for (int64_t b = 0; b < B; b++) {
    float *a = A + b * k * N;
    lapack_int info = LAPACKE_sgeqrt3_work(LAPACK_COL_MAJOR, n, kk, a, n, Tm, kk);
    if (info != 0) return mg_fail(C, MG_EARG, "%s: LAPACK's QR failed (info %d)", fn, (int)info);
    for (int64_t j = 0; j < k; j++) {                  /* log|R_jj|, and A becomes V */
      float *c = a + j * N;
      if (sum) sum[b * k + j] += (float)log(fabs((double)c[j]));
      for (int64_t i = 0; i < j; i++) c[i] = 0;
      c[j] = 1;
    }
    cblas_strmm(CblasColMajor, CblasRight, CblasLower, CblasTrans, CblasUnit, kk, kk, 1.0f, a, n,
                Tm, kk);                              /* Tm <- Tm V1^T */
    memset(Q, 0, sizeof(float) * (size_t)(N * k));
    for (int64_t j = 0; j < k; j++) Q[j * N + j] = 1;
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, kk, kk, -1.0f, a, n, Tm, kk, 1.0f,
                Q, n);
    memcpy(a, Q, sizeof(float) * (size_t)(N * k));
  }
  return MG_OK;
}

static int desc(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}

/* x (B, T, F) and Q0 (B, N, k) here; h0, the kernels and the bias as the fused cell checks
** them (cells.c), all float32. */
static mg_status check_gru(mg_ctx *C, const char *fn, mg_tensor *const *in, int64_t *dims) {
  mg_tensor *x = in[0], *h0 = in[1], *Q0 = in[5];
  char s[96], s2[96];
  mg_status st = mg_cell_same_dtype(C, fn, 6, in);
  if (st == MG_OK && x->dtype != MG_F32)
    st = mg_fail(C, MG_EARG, "%s: x must be float32, got %s", fn, mg_dtype_name(x->dtype));
  if (st != MG_OK) return st;
  if (x->ndim != 3)
    return mg_fail(C, MG_ESHAPE, "%s: x has shape %s, expected (B, T, F)", fn,
                   mg_shapestr(s, sizeof s, x->ndim, x->shape));
  int64_t B = x->shape[0], T = x->shape[1], F = x->shape[2], N = h0->ndim == 2 ? h0->shape[1] : -1;
  if ((st = mg_cell_want2(C, fn, "h0", h0, B, N)) || (st = mg_cell_want2(C, fn, "kernel", in[2], F, 3 * N)) ||
      (st = mg_cell_want2(C, fn, "recurrent_kernel", in[3], N, 3 * N)) ||
      (st = mg_gru_bias_check(C, fn, in[4], true, N)))
    return st;
  int64_t k = Q0->ndim == 3 ? Q0->shape[2] : 0;
  if (Q0->ndim != 3 || Q0->shape[0] != B || Q0->shape[1] != N)
    return mg_fail(C, MG_ESHAPE, "%s: Q0 has shape %s, which does not fit x %s and h0 (%lld,%lld)",
                   fn, mg_shapestr(s, sizeof s, Q0->ndim, Q0->shape),
                   mg_shapestr(s2, sizeof s2, 3, x->shape), (long long)B, (long long)N);
  if (N < 1 || k < 1 || k > N)
    return mg_fail(C, MG_EARG, "%s: k = %lld must be in 1..%lld", fn, (long long)k, (long long)N);
  dims[0] = B, dims[1] = T, dims[2] = F, dims[3] = N, dims[4] = k;
  return MG_OK;
}

static mg_status alloc_scratch(mg_ctx *C, const char *fn, int64_t B, int64_t N, int64_t k,
                               int mode, const float *U, scratch *s) {
  memset(s, 0, sizeof *s);
  bool lanes = mode == 2;
  size_t BN = (size_t)(B * N), Bk = (size_t)(B * k), groups = (size_t)((B + LANES - 1) / LANES);
  size_t kNL = (size_t)(k * N * LANES), tan = lanes ? groups * kNL : Bk * (size_t)N;
  size_t NL = (size_t)N * LANES, panels = (size_t)((k - 1) / NB + 1);
  float **f[] = { &s->h, &s->hn, &s->zz, &s->ones, &s->mx, &s->dmx, &s->co, &s->S, &s->T, &s->A,
                  &s->sum, &s->row, &s->tau, &s->beta, &s->X, &s->J, &s->cl, &s->Jb, &s->Vb,
                  &s->Wb, &s->Tb };
  size_t n[] = { BN, BN, BN, BN, 3 * BN, 3 * BN, 3 * BN, 4 * BN, tan, tan, Bk, (size_t)k,
                 (size_t)k * LANES, (size_t)k * LANES, lanes ? 1 : kNL,
                 lanes ? 1 : (size_t)(N * N), lanes ? 4 * NL : 1, lanes ? (size_t)RJ * JB * LANES : 1, NB * NL,
                 NB * (size_t)k * LANES, panels * NB * NB * LANES };
  for (size_t i = 0; i < sizeof n / sizeof n[0]; i++)
    if (!(*f[i] = calloc(n[i], sizeof(float)))) return mg_fail(C, MG_ENOMEM, "%s: out of memory", fn);
  if (!(s->acc = calloc((size_t)k, sizeof(double)))) return mg_fail(C, MG_ENOMEM, "%s: out of memory", fn);
  for (size_t i = 0; i < BN; i++) s->ones[i] = 1;
  s->packed = mg_pack(&s->P, NULL, U, 3 * N, false, N, 3 * N);   /* else BLAS on U */
  return MG_OK;
}

static void free_scratch(scratch *s) {
  float *f[] = { s->h, s->hn, s->zz, s->ones, s->mx, s->dmx, s->co, s->S, s->T, s->A, s->sum,
                 s->row, s->tau, s->beta, s->X, s->J, s->cl, s->Jb, s->Vb, s->Wb, s->Tb };
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
  free(s->acc);
  if (s->packed) mg_pack_free(&s->P);
}

/* Which way: the lanes (16 trajectories in vector lanes for the Jacobian product and the QR)
** below k = 128, from there each trajectory's Jacobian, a GEMM and LAPACK's blocked QR. */
static int pick_mode(int64_t k) { return k < QR_BLOCKED ? 2 : 1; }

/* One step of the lanes way for every group: T <- QR(T J) (or T J alone when !qr). */
static void step_lanes_f32(int64_t B, int64_t N, int64_t k, const float *U, bool qr,
                           float *sum, scratch *s) {
  int64_t kNL = k * N * LANES;
  for (int64_t b0 = 0, g = 0; b0 < B; b0 += LANES, g++) {
    int64_t nl = B - b0 < LANES ? B - b0 : LANES;
    float *cz = s->cl, *cr = cz + N * LANES, *ch = cr + N * LANES, *zz = ch + N * LANES;
    to_lanes_f32(N, b0, nl, s->co, 3 * N, 0, cz);      /* past the batch: J = I */
    to_lanes_f32(N, b0, nl, s->co + N, 3 * N, 0, cr);
    to_lanes_f32(N, b0, nl, s->co + 2 * N, 3 * N, 0, ch);
    to_lanes_f32(N, b0, nl, s->zz, N, 1, zz);
    float *TL = s->T + g * kNL, *AL = s->A + g * kNL;
    tangents_lanes_f32(N, k, U, cz, cr, ch, zz, TL, AL, s->Jb);
    if (!qr) continue;
    householder_lanes_f32(N, k, AL, s->tau, s->beta, s->Vb, s->Wb, s->Tb);
    if (sum)
      for (int64_t l = 0; l < nl; l++)
        for (int64_t j = 0; j < k; j++)
          sum[(b0 + l) * k + j] += (float)log(fabs((double)s->beta[j * LANES + l]));
  }
}

mg_status mg_lyapunov_gru(mg_ctx *C, mg_tensor *x, mg_tensor *h0, mg_tensor *W, mg_tensor *U,
                          mg_tensor *b, mg_tensor *Q0, int64_t warmup, int64_t steps,
                          int64_t every, bool backwards, int mode, mg_tensor **sum_out,
                          mg_tensor **history_out) {
  const char *fn = "lyapunov";
  mg_tensor *in[6] = { x, h0, W, U, b, Q0 }, *c[6] = { NULL }, *sum = NULL, *hist = NULL;
  int64_t d[5] = { 0 };
  scratch s;
  memset(&s, 0, sizeof s);
  mg_status st = check_gru(C, fn, in, d);
  int64_t B = d[0], T = d[1], F = d[2], N = d[3], k = d[4];
  if (st == MG_OK && (warmup < 0 || steps < 1 || every < 1 || warmup + steps > T))
    st = mg_fail(C, MG_EARG, "%s: warmup %lld, steps %lld, reortho_every %lld do not fit %lld timesteps",
                 fn, (long long)warmup, (long long)steps, (long long)every, (long long)T);
  if (st == MG_OK && (mode < 0 || mode > 2)) st = mg_fail(C, MG_EARG, "%s: bad mode %d", fn, mode);
  if (st != MG_OK) return st;
  if (mode == 0) mode = pick_mode(k);
  mg_no_grad_enter(C);
  for (int i = 0; i < 6 && st == MG_OK; i++) st = mg_tensor_contiguous(C, in[i], &c[i]);
  mg_no_grad_exit(C);
  int64_t ss[2] = { B, k }, hs[2] = { steps, k };
  if (st == MG_OK) st = mg_tensor_empty(C, MG_F32, 2, ss, &sum);
  if (st == MG_OK) st = mg_tensor_empty(C, MG_F32, 2, hs, &hist);
  if (st == MG_OK) st = alloc_scratch(C, fn, B, N, k, mode, MG_F32P(c[3]), &s);
  if (st != MG_OK) goto done;
  const float *xs = MG_F32P(c[0]), *Wp = MG_F32P(c[2]), *Up = MG_F32P(c[3]), *bp = MG_F32P(c[4]);
  const float *q0 = MG_F32P(c[5]);
  float *hist_p = MG_F32P(hist);
  memcpy(s.h, MG_F32P(c[1]), sizeof(float) * (size_t)(B * N));
  for (int64_t bb = 0; bb < (mode == 2 ? (B + LANES - 1) / LANES * LANES : B); bb++)
    for (int64_t i = 0; i < N; i++)                    /* T_b = Q0_b^T: tangents as rows */
      for (int64_t j = 0; j < k; j++) {
        float v = bb < B ? q0[(bb * N + i) * k + j] : (i == j ? 1.0f : 0.0f);
        if (mode == 2) s.T[((bb / LANES * k + j) * N + i) * LANES + bb % LANES] = v;
        else s.T[(bb * k + j) * N + i] = v;
      }
  int64_t counted = 0, since = 0;
  for (int64_t t = 1; t <= warmup + steps && st == MG_OK; t++) {
    int64_t ti = backwards ? T - t : t - 1;
    gru_step_f32(B, F, N, xs + ti * F, T * F, Wp, Up, bp, &s);
    bool count = t > warmup, qr = t % every == 0 || t == warmup + steps || t == warmup;
    if (mode == 2) {
      step_lanes_f32(B, N, k, Up, qr, count ? s.sum : NULL, &s);
    } else {
      for (int64_t bb = 0; bb < B; bb++) {
        const float *co = s.co + bb * 3 * N;
        form_jacobian_f32(N, Up, co, co + N, co + 2 * N, s.zz + bb * N, s.J);
        mg_gemm(MG_F32, false, false, k, N, N, 1, s.T + bb * k * N, N, s.J, N, 0, s.A + bb * k * N, N);
      }
      if (qr && k < QR_BLOCKED) qr_batch_f32(B, N, k, s.A, s.X, count ? s.sum : NULL, &s);
      else if (qr) st = qr_lapack_f32(C, fn, B, N, k, s.A, s.X, count ? s.sum : NULL);
    }
    if (count) counted++, since++;
    if (qr) since = 0;
    float *tmp = s.T; s.T = s.A; s.A = tmp;            /* the new tangents */
    if (count) {
      int64_t done = counted - since;                 /* steps covered by the last QR */
      for (int64_t i = 0; i < k; i++) s.acc[i] = 0;
      if (done > 0)
        for (int64_t bb = 0; bb < B; bb++)
          for (int64_t i = 0; i < k; i++) s.acc[i] += s.sum[bb * k + i] / (float)done;
      for (int64_t i = 0; i < k; i++) s.row[i] = (float)(s.acc[i] / (double)B);
      qsort(s.row, (size_t)k, sizeof(float), desc);
      memcpy(hist_p + (counted - 1) * k, s.row, sizeof(float) * (size_t)k);
    }
    if (st == MG_OK) st = mg_poll(C, fn);
  }
  if (st == MG_OK) memcpy(MG_F32P(sum), s.sum, sizeof(float) * (size_t)(B * k));
done:
  free_scratch(&s);
  for (int i = 0; i < 6; i++) mg_tensor_release(c[i]);
  if (st != MG_OK) { mg_tensor_release(sum); mg_tensor_release(hist); return st; }
  *sum_out = sum;
  *history_out = hist;
  return MG_OK;
}
