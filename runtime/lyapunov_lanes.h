/*
** lyapunov_lanes.h - the lanes way of lyapunov.c, typed: included by lyapunov_f32.c (LT
** float, 16 lanes) and by lyapunov_f64.c (LT double, 8 lanes), with LX(name) naming each copy
** (name_f32, name_f64) and LDT the mg_dtype. Not a public header: lyapunov.h defines ljob,
** lgroup, the block sizes (NB, RB, JB, CB, RJ, KC_BYTES, VALL_BYTES, CSLAB_BYTES), LCHUNK,
** LYAP_CLONES, mg_lyap_kernels and MG_INLINE; this file defines the two entry points it declares
** (mg_lyap_groups_*, mg_lyap_householder_*).
**
** The data hold LANES trajectories side by side (component i of lane l at i LANES + l), and
** every kernel works lane by lane, so it can run on any width of vector LW: the whole LANES
** (512 bits) where there are 32 vector registers (AVX-512), or LANES / 2 at a time, twice,
** with every lane pointer offset by LW, where there are 16 (AVX2: a 512-bit vector is two
** registers there, and the register tiles below, sized for 32 of them, spilled on every
** step: 4-5x slower). Each file includes this one three times: twice with LKERNELS_ONLY, LW
** = LANES / 2 and LCLONES saying for which machines (the narrow kernels: LX(name) name_f32n
** for AVX2, name_f32b for the baseline, lyapunov.h), then with LW = LANES, the wide kernels
** and the rest, which calls the narrow ones through LXN and LXB. Each lane sees the same
** operations in the same order at either width: the same numbers, to the multiply-adds that
** each clone fuses (spectra_spec compares the widths).
*/
#ifndef LW
#define LW LANES
#endif
#ifndef LCLONES
#define LCLONES LYAP_CLONES_WIDE
#endif
typedef LT LX(lanes_t) __attribute__((vector_size(LW * sizeof(LT))));   /* GCC and Clang */
/* The same at any address of an LT (an unaligned load or store), for lload and lstore. */
typedef LT LX(lanes_at) __attribute__((vector_size(LW * sizeof(LT)), aligned(sizeof(LT)), may_alias));
#define VT LX(lanes_t)
#define lload(p) (*(const LX(lanes_at) *)(p))
#define lstore(p, v) (*(LX(lanes_at) *)(p) = (v))

/* One reflector (v, tau) applied to the cb (1 .. 8) tangent rows a, a + row, ..., from
** component j on: cb independent dot products in one pass over v, each split into P partial
** sums over the components i = j + 1 + p (mod P) (P = 4 for up to 3 rows, else 2; where
** LSPLIT is 0, float64, P = 1: in order) added at the end, so that the dot products are not
** one chain of dependent FMAs (latency 4 cycles, two a cycle: 8 chains keep the FMA units
** busy). */
MG_INLINE void LX(reflectn_lanes)(int cb, int64_t j, int64_t N, const LT *v, const LT *tau,
                                  LT *a, int64_t row) {
  const int P = !LSPLIT ? 1 : cb <= 3 ? 4 : 2;
  VT w[8][4], t = lload(tau);
#pragma GCC unroll 8
  for (int q = 0; q < cb; q++) {
    w[q][0] = lload(a + q * row + j * LANES);
#pragma GCC unroll 4
    for (int p = 1; p < P; p++) w[q][p] = (VT){ 0 };
  }
  int64_t i = j + 1;
  for (; i + P <= N; i += P)
#pragma GCC unroll 4
    for (int p = 0; p < P; p++) {
      VT vi = lload(v + (i + p) * LANES);
#pragma GCC unroll 8
      for (int q = 0; q < cb; q++) w[q][p] += vi * lload(a + q * row + (i + p) * LANES);
    }
  for (; i < N; i++) {
    VT vi = lload(v + i * LANES);
#pragma GCC unroll 8
    for (int q = 0; q < cb; q++) w[q][0] += vi * lload(a + q * row + i * LANES);
  }
#pragma GCC unroll 8
  for (int q = 0; q < cb; q++) {
    VT d = P == 4 ? (w[q][0] + w[q][1]) + (w[q][2] + w[q][3]) : P == 2 ? w[q][0] + w[q][1] : w[q][0];
    w[q][0] = d * t;
    lstore(a + q * row + j * LANES, lload(a + q * row + j * LANES) - w[q][0]);
  }
  for (int64_t i = j + 1; i < N; i++) {
    VT vi = lload(v + i * LANES);
#pragma GCC unroll 8
    for (int q = 0; q < cb; q++) lstore(a + q * row + i * LANES, lload(a + q * row + i * LANES) - w[q][0] * vi);
  }
}

/* Reflector j applied to rows c0 .. c1 - 1 of X, 8 at a time. */
MG_INLINE void LX(reflect_cols)(int64_t j, int64_t N, int64_t c0, int64_t c1, const LT *v,
                                const LT *tau, LT *X, int64_t row) {
  int64_t c = c0;
  for (; c + 8 <= c1; c += 8) LX(reflectn_lanes)(8, j, N, v, tau, X + c * row, row);
  switch (c1 - c) {                                    /* constant counts: unrolled */
  case 7: LX(reflectn_lanes)(7, j, N, v, tau, X + c * row, row); break;
  case 6: LX(reflectn_lanes)(6, j, N, v, tau, X + c * row, row); break;
  case 5: LX(reflectn_lanes)(5, j, N, v, tau, X + c * row, row); break;
  case 4: LX(reflectn_lanes)(4, j, N, v, tau, X + c * row, row); break;
  case 3: LX(reflectn_lanes)(3, j, N, v, tau, X + c * row, row); break;
  case 2: LX(reflectn_lanes)(2, j, N, v, tau, X + c * row, row); break;
  case 1: LX(reflectn_lanes)(1, j, N, v, tau, X + c * row, row); break;
  default: break;
  }
}

/* Reflector j applied to rows j + 1 .. k - 1 of X. */
MG_INLINE void LX(reflect_rows)(int64_t j, int64_t N, int64_t k, const LT *v, const LT *tau,
                                LT *X, int64_t row) {
  LX(reflect_cols)(j, N, j + 1, k, v, tau, X, row);
}

/* Steps j0 .. j1 - 1 of geqr2 (slarfg's reflectors) on the columns j0 .. j1 - 1 of X only. */
MG_INLINE void LX(geqr2_lanes)(int64_t N, int64_t j0, int64_t j1, LT *X, LT *tau, LT *beta) {
  const int64_t row = N * LANES;
  for (int64_t j = j0; j < j1; j++) {
    LT *v = X + j * row, al[LW], ss[LW], ob[LW], ot[LW], sc[LW];
    VT s4[4] = { (VT){ 0 }, (VT){ 0 }, (VT){ 0 }, (VT){ 0 } };   /* 4 partial sums: 4 chains */
    int64_t i = j + 1;
    for (; LSPLIT && i + 4 <= N; i += 4)
#pragma GCC unroll 4
      for (int p = 0; p < 4; p++) {
        VT vi = lload(v + (i + p) * LANES);
        s4[p] += vi * vi;
      }
    for (; i < N; i++) {
      VT vi = lload(v + i * LANES);
      s4[0] += vi * vi;
    }
    VT s2 = LSPLIT ? (s4[0] + s4[1]) + (s4[2] + s4[3]) : s4[0];
    lstore(ss, s2);
    lstore(al, lload(v + j * LANES));
    for (int l = 0; l < LW; l++) {                    /* on local arrays: one vector each */
      LT alpha = al[l], b = -LCOPYSIGN(LSQRT(alpha * alpha + ss[l]), alpha);
      bool some = ss[l] > 0;
      ob[l] = some ? b : alpha;
      ot[l] = some ? (b - alpha) / b : 0;
      sc[l] = some ? 1 / (alpha - b) : 1;
    }
    VT vs = lload(sc), vb = lload(ob);
    lstore(beta + j * LANES, vb);
    lstore(tau + j * LANES, lload(ot));
    lstore(v + j * LANES, vb);
    const LT *t = tau + j * LANES;
    for (int64_t i = j + 1; i < N; i++) lstore(v + i * LANES, lload(v + i * LANES) * vs);
    LX(reflect_rows)(j, N, j1, v, t, X, row);
  }
}

/* Steps j1 - 1 .. j0 of org2r on the columns j0 .. j1 - 1 of X (those after j1 already Q's). */
MG_INLINE void LX(org2r_lanes)(int64_t N, int64_t j0, int64_t j1, LT *X, const LT *tau) {
  const int64_t row = N * LANES;
  for (int64_t j = j1 - 1; j >= j0; j--) {
    LT *v = X + j * row;
    const LT *t = tau + j * LANES;
    LX(reflect_rows)(j, N, j1, v, t, X, row);
    VT nt = -(VT)lload(t);
    for (int64_t i = j + 1; i < N; i++) lstore(v + i * LANES, lload(v + i * LANES) * nt);
    lstore(v + j * LANES, nt + (LT)1);
    for (int64_t i = 0; i < j; i++) lstore(v + i * LANES, (VT){ 0 });   /* this width's lanes only */
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

/* V of the panel at j0 from X's columns j0 .. j0 + NB - 1: component i of reflector p at
** VI(i, p), the NB reflectors of one component side by side (one pointer walks the rows). */
#define VI(i, p) (((i) * NB + (p)) * LANES)
MG_INLINE void LX(panel_v)(int64_t N, int64_t j0, const LT *X, LT *V) {
  const int64_t row = N * LANES;
  for (int64_t i = j0; i < j0 + NB; i++)               /* the unit upper triangle */
    for (int64_t p = 0; p < NB; p++) {
      int64_t d = j0 + p;
      lstore(V + VI(i, p), i < d ? (VT){ 0 } : i == d ? (VT){ 0 } + (LT)1 : (VT)lload(X + d * row + i * LANES));
    }
  for (int64_t i = j0 + NB; i < N; i++)
#pragma GCC unroll 8
    for (int64_t p = 0; p < NB; p++) lstore(V + VI(i, p), lload(X + (j0 + p) * row + i * LANES));
}

/* slarft (forward, columnwise): Tm (NB x NB lane vectors, upper) of the panel at j0. */
MG_INLINE void LX(panel_t)(int64_t N, int64_t j0, const LT *V, const LT *tau, LT *Tm) {
#pragma GCC unroll 8
  for (int64_t i = 0; i < NB; i++) {
    VT ti = lload(tau + (j0 + i) * LANES), w[NB];
    for (int64_t p = 0; p < i; p++) w[p] = (VT){ 0 };
    for (int64_t r = j0 + i; r < N; r++) {            /* the i dot products in one pass */
      VT vr = lload(V + VI(r, i));
#pragma GCC unroll 8
      for (int64_t p = 0; p < i; p++) w[p] += lload(V + VI(r, p)) * vr;
    }
    for (int64_t p = 0; p < i; p++) {
      VT a = (VT){ 0 };
      for (int64_t q = p; q < i; q++) a += lload(Tm + (p * NB + q) * LANES) * w[q];
      lstore(Tm + (p * NB + i) * LANES, -ti * a);
    }
    lstore(Tm + (i * NB + i) * LANES, ti);
    for (int64_t p = i + 1; p < NB; p++) lstore(Tm + (p * NB + i) * LANES, (VT){ 0 });
  }
}

/* W[p][c] (+)= sum over rows i in [r0, r1) of V[p][i] X[c][i], for cb columns from c (W: NB
** x k lane vectors, W[(p k + c) LANES]; 'first': W starts at 0, else it accumulates, and the
** rows start at the panel's first, where V is unit upper triangular: its zeros skipped, the
** same numbers as adding their products). */
MG_INLINE void LX(vtc_cols)(int cb, bool first, int64_t r0, int64_t r1, int64_t N, int64_t k, int64_t c,
                        const LT *V, const LT *X, LT *W) {
  const int64_t row = N * LANES;
  VT acc[NB][2];
#pragma GCC unroll 8
  for (int p = 0; p < NB; p++)
    for (int q = 0; q < cb; q++) acc[p][q] = first ? (VT){ 0 } : (VT)lload(W + (p * k + c + q) * LANES);
  if (first) {
#pragma GCC unroll 8
    for (int t = 0; t < NB; t++) {
      VT a[2];
      for (int q = 0; q < cb; q++) a[q] = lload(X + (c + q) * row + (r0 + t) * LANES);
#pragma GCC unroll 8
      for (int p = 0; p <= t; p++) {
        VT v = lload(V + VI(r0 + t, p));
        for (int q = 0; q < cb; q++) acc[p][q] += v * a[q];
      }
    }
    r0 += NB;
  }
  for (int64_t i = r0; i < r1; i++) {
    VT a[2];
    for (int q = 0; q < cb; q++) a[q] = lload(X + (c + q) * row + i * LANES);
#pragma GCC unroll 8
    for (int p = 0; p < NB; p++) {
      VT v = lload(V + VI(i, p));
      for (int q = 0; q < cb; q++) acc[p][q] += v * a[q];
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < NB; p++)
    for (int q = 0; q < cb; q++) lstore(W + (p * k + c + q) * LANES, acc[p][q]);
}

/* X[c][i] -= sum_p V[p][i] W[p][c] for a tile of cb columns from c and ib rows from i. */
MG_INLINE void LX(vw_tile)(int cb, int ib, int64_t N, int64_t k, int64_t c, int64_t i, const LT *V,
                       const LT *W, LT *X) {
  const int64_t row = N * LANES;
  VT acc[4][4];
  for (int q = 0; q < cb; q++)
    for (int r = 0; r < ib; r++) acc[q][r] = lload(X + (c + q) * row + (i + r) * LANES);
#pragma GCC unroll 8
  for (int p = 0; p < NB; p++) {
    VT w[4], v[4];
    for (int q = 0; q < cb; q++) w[q] = lload(W + (p * k + c + q) * LANES);
    for (int r = 0; r < ib; r++) v[r] = lload(V + VI(i + r, p));
    for (int q = 0; q < cb; q++)
      for (int r = 0; r < ib; r++) acc[q][r] -= w[q] * v[r];
  }
  for (int q = 0; q < cb; q++)
    for (int r = 0; r < ib; r++) lstore(X + (c + q) * row + (i + r) * LANES, acc[q][r]);
}

/* vw_tile for 4 rows from the panel's row j0 + t0 (t0 = 0, 4), where V[p][i] = 0 for p > i - j0:
** those products skipped. */
MG_INLINE void LX(vw_tri)(int cb, int t0, int64_t N, int64_t k, int64_t c, int64_t i, const LT *V,
                      const LT *W, LT *X) {
  const int64_t row = N * LANES;
  VT acc[4][4];
  for (int q = 0; q < cb; q++)
    for (int r = 0; r < 4; r++) acc[q][r] = lload(X + (c + q) * row + (i + r) * LANES);
#pragma GCC unroll 8
  for (int p = 0; p < t0 + 4; p++) {
    VT w[4], v[4];
    for (int q = 0; q < cb; q++) w[q] = lload(W + (p * k + c + q) * LANES);
    for (int r = 0; r < 4; r++) v[r] = lload(V + VI(i + r, p));
    for (int q = 0; q < cb; q++)
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++)
        if (p <= t0 + r) acc[q][r] -= w[q] * v[r];
  }
  for (int q = 0; q < cb; q++)
    for (int r = 0; r < 4; r++) lstore(X + (c + q) * row + (i + r) * LANES, acc[q][r]);
}

/* The rows [r0, r1) of X's columns [c0, c1) less V W (tiles of 4 x 4); 'tri': r0 is the
** panel's first row (V's triangle in the first NB rows). */
MG_INLINE void LX(vw_rows)(bool tri, int64_t r0, int64_t r1, int64_t N, int64_t k, int64_t c0, int64_t c1,
                       const LT *V, const LT *W, LT *X) {
  _Static_assert(NB == 8, "vw_tri covers the triangle in two tiles of 4 rows");
  int64_t c = c0;
  if (tri) {
    for (; c + 4 <= c1; c += 4) {
      LX(vw_tri)(4, 0, N, k, c, r0, V, W, X);
      LX(vw_tri)(4, 4, N, k, c, r0 + 4, V, W, X);
    }
    for (; c < c1; c++) {
      LX(vw_tri)(1, 0, N, k, c, r0, V, W, X);
      LX(vw_tri)(1, 4, N, k, c, r0 + 4, V, W, X);
    }
    c = c0, r0 += NB;
  }
  for (; c + 4 <= c1; c += 4) {
    int64_t i = r0;
    for (; i + 4 <= r1; i += 4) LX(vw_tile)(4, 4, N, k, c, i, V, W, X);
    for (; i < r1; i++) LX(vw_tile)(4, 1, N, k, c, i, V, W, X);
  }
  for (; c < c1; c++) {
    int64_t i = r0;
    for (; i + 4 <= r1; i += 4) LX(vw_tile)(1, 4, N, k, c, i, V, W, X);
    for (; i < r1; i++) LX(vw_tile)(1, 1, N, k, c, i, V, W, X);
  }
}

/* C <- (I - V op(T) V^T) C on the columns [c0, c1) and rows [j0, N) of X: op(T) = T^T
** (trans: Q^T C, geqrf) or T (orgqr). Each column on its own: the same numbers whichever
** columns go together. */
MG_INLINE void LX(apply_block)(int64_t N, int64_t k, int64_t j0, int64_t c0, int64_t c1, bool trans,
                               const LT *V, const LT *Tm, LT *W, LT *X) {
  for (int64_t r0 = j0; r0 < N; r0 += RB) {
    int64_t r1 = N - r0 < RB ? N : r0 + RB, c = c0;
    for (; c + 2 <= c1; c += 2) LX(vtc_cols)(2, r0 == j0, r0, r1, N, k, c, V, X, W);
    for (; c < c1; c++) LX(vtc_cols)(1, r0 == j0, r0, r1, N, k, c, V, X, W);
  }
  for (int64_t cc = c0; cc < c1; cc++) {                /* W <- op(T) W, in place */
    VT w[NB];
    for (int p = 0; p < NB; p++) w[p] = lload(W + (p * k + cc) * LANES);
    for (int p = 0; p < NB; p++) {
      VT a = (VT){ 0 };
      if (trans) for (int q = 0; q <= p; q++) a += lload(Tm + (q * NB + p) * LANES) * w[q];
      else for (int q = p; q < NB; q++) a += lload(Tm + (p * NB + q) * LANES) * w[q];
      lstore(W + (p * k + cc) * LANES, a);
    }
  }
  for (int64_t r0 = j0; r0 < N; r0 += RB)
    LX(vw_rows)(r0 == j0, r0, N - r0 < RB ? N : r0 + RB, N, k, c0, c1, V, W, X);
}

/* Panels of reflectors held in V at a time, and columns updated together (the slabs). */
MG_INLINE int64_t LX(qr_fit)(int64_t bytes, int64_t unit) {
  int64_t n = bytes / (unit * (int64_t)sizeof(LT));
  return n < 1 ? 1 : n;
}
#define TM(b) (Tall + (b) * NB * NB * LANES)
#define VB(b) (V + ((b) - o) * NB * row)

/* geqrf on the 16 interleaved N x k matrices in X, in place: panels 0 .. blocks - 1 blocked
** (their T kept in Tall), the columns from blocks NB on unblocked; X is left with R above the
** diagonal and the reflectors below, beta holds R's diagonal (lane l of beta[j]). The panels
** are taken 'per' at a time (V: their reflectors, at most VALL_BYTES) so that the columns
** after them are updated a slab of CSLAB_BYTES at a time by all of them (once through the
** cache where a panel at a time would stream the whole trailing matrix per panel). Each
** column sees the same operations in the same order either way. */
MG_INLINE void LX(geqrf_lanes)(int64_t N, int64_t k, int64_t blocks, LT *X, LT *tau, LT *beta,
                               LT *V, LT *W, LT *Tall) {
  const int64_t row = N * LANES, per = LX(qr_fit)(VALL_BYTES, NB * row), cs = LX(qr_fit)(CSLAB_BYTES, row);
  for (int64_t o = 0; o < blocks; o += per) {
    int64_t oe = blocks - o < per ? blocks : o + per, p1 = oe * NB < k ? oe * NB : k;
    for (int64_t b = o; b < oe; b++) {
      int64_t j0 = b * NB;
      LX(geqr2_lanes)(N, j0, j0 + NB, X, tau, beta);
      LX(panel_v)(N, j0, X, VB(b));
      LX(panel_t)(N, j0, VB(b), tau, TM(b));
      LX(apply_block)(N, k, j0, j0 + NB, p1, true, VB(b), TM(b), W, X);
    }
    for (int64_t c = p1; c < k; c += cs)
      for (int64_t b = o; b < oe; b++)
        LX(apply_block)(N, k, b * NB, c, k - c < cs ? k : c + cs, true, VB(b), TM(b), W, X);
  }
  LX(geqr2_lanes)(N, blocks * NB, k, X, tau, beta);
}

/* orgqr after geqrf_lanes: X becomes Q (N x k), panel by panel from the last. */
MG_INLINE void LX(orgqr_lanes)(int64_t N, int64_t k, int64_t blocks, LT *X, const LT *tau,
                               LT *V, LT *W, const LT *Tall) {
  const int64_t row = N * LANES, per = LX(qr_fit)(VALL_BYTES, NB * row), cs = LX(qr_fit)(CSLAB_BYTES, row);
  LX(org2r_lanes)(N, blocks * NB, k, X, tau);
  for (int64_t o = (blocks - 1) / per * per; blocks > 0 && o >= 0; o -= per) {
    int64_t oe = blocks - o < per ? blocks : o + per, p1 = oe * NB;
    for (int64_t b = o; b < oe; b++) LX(panel_v)(N, b * NB, X, VB(b));
    for (int64_t c = p1; c < k; c += cs)
      for (int64_t b = oe - 1; b >= o; b--)
        LX(apply_block)(N, k, b * NB, c, k - c < cs ? k : c + cs, false, VB(b), TM(b), W, X);
    for (int64_t b = oe - 1; b >= o; b--) {
      int64_t j0 = b * NB;
      LX(apply_block)(N, k, j0, j0 + NB, p1, false, VB(b), TM(b), W, X);
      LX(org2r_lanes)(N, j0, j0 + NB, X, tau);
    }
  }
}

/* The reflectors geqrf_lanes left in X (k of them, 'blocks' panels with their T) applied
** as Q^T = H_k ... H_1 to the n columns of C (N components each), in place: the panels in
** order, 'per' at a time over slabs of C's columns, then the unblocked ones one by one. */
MG_INLINE void LX(apply_qt_lanes)(int64_t N, int64_t k, int64_t blocks, const LT *X, const LT *tau,
                                  LT *V, LT *W, const LT *Tall, int64_t n, LT *C) {
  const int64_t row = N * LANES, per = LX(qr_fit)(VALL_BYTES, NB * row), cs = LX(qr_fit)(CSLAB_BYTES, row);
  for (int64_t o = 0; o < blocks; o += per) {
    int64_t oe = blocks - o < per ? blocks : o + per;
    for (int64_t b = o; b < oe; b++) LX(panel_v)(N, b * NB, X, VB(b));
    for (int64_t c = 0; c < n; c += cs)
      for (int64_t b = o; b < oe; b++)
        LX(apply_block)(N, n, b * NB, c, n - c < cs ? n : c + cs, true, VB(b), TM(b), W, C);
  }
  for (int64_t j = blocks * NB; j < k; j++) LX(reflect_cols)(j, N, 0, n, X + j * row, tau + j * LANES, C, row);
}
#undef TM
#undef VB

/* Householder's QR of the 16 interleaved N x k matrices in X, in place: X becomes Q, beta
** holds R's diagonal. Unblocked up to 2 NB columns, else blocked but for the last panel. */
LCLONES static void LX(householder_lanes)(int64_t N, int64_t k, LT *X, LT *tau,
                                            LT *beta, LT *V, LT *W, LT *Tall) {
  int64_t blocks = k < 2 * NB ? 0 : (k - 1) / NB;      /* panels with columns after them */
  LX(geqrf_lanes)(N, k, blocks, X, tau, beta, V, W, Tall);
  LX(orgqr_lanes)(N, k, blocks, X, tau, V, W, Tall);
}

/* The tangents kept as the last QR's reflectors ('implicit'; lyapunov.c uses it when k is
** near S, where it takes fewer operations): the GRU's Jacobian formed whole by columns, Jc[j][i]
** = J[i][j] (S = N), then Q^T J by the reflectors in TL, the first k of its rows the new
** tangents AL[c][j]; geqrf_qt then factors AL leaving reflectors for the next step, every
** panel blocked. Q^T J and Q's product T J are the same matrix to rounding; this takes
** 2 k S^2 - k^3 / 3 multiply-adds with the QR where forming Q and T J take k S^2 + 2 k^2 S
** - 2 k^3 / 3 (5/3 against 7/3 S^3 at k = S). */
LCLONES static void LX(tangents_qt)(int64_t N, int64_t k, int64_t G, const LT *U, const LT *cf,
                                      const LT *zz, const LT *TL, const LT *tau, LT *V, LT *W,
                                      const LT *Tall, LT *Jc, LT *AL) {
  for (int64_t j = 0; j < N; j++) {
    VT c0 = lload(cf + j * LANES), c1 = lload(cf + (N + j) * LANES), c2 = lload(cf + (2 * N + j) * LANES);
    const LT *u = U + j;
    LT *o = Jc + j * N * LANES;
    for (int64_t i = 0; i < N; i++, u += G) {
      VT v = u[0] * c0;
      v += u[N] * c1;
      v += u[2 * N] * c2;
      lstore(o + i * LANES, v);
    }
    lstore(o + j * LANES, lload(o + j * LANES) + lload(zz + j * LANES));
  }
  LX(apply_qt_lanes)(N, k, k / NB, TL, tau, V, W, Tall, N, Jc);
  for (int64_t c = 0; c < k; c++)
    for (int64_t j = 0; j < N; j++) lstore(AL + (c * N + j) * LANES, lload(Jc + (j * N + c) * LANES));
}

/* geqrf of the k tangents in X (S components each) for tangents_qt: every panel blocked. */
LCLONES static void LX(geqrf_qt)(int64_t S, int64_t k, LT *X, LT *tau, LT *beta, LT *V, LT *W,
                                   LT *Tall) {
  LX(geqrf_lanes)(S, k, k / NB, X, tau, beta, V, W, Tall);
}

/* The product of the tangents with one Jacobian block: AL[c][j] = sum_(i < N) TL[c][i] J[i][j]
** for j < N, where the rows of TL and AL are S lane vectors long (S = N: GRU; 2N: LSTM,
** whose h part TL[c][0 .. N) is what U sees) and J[i][j] = sum_(g < nblk) U[i][g N + j]
** cf[g][j] (+ [i = j] zz[j] when zz is not NULL): the recurrent kernel's blocks (row
** stride G) with their columns scaled (cf: nblk arrays of N lane vectors). J is formed JB
** columns by RJ rows at a time into Jb (RJ x JB lane vectors, 16 KiB: in L1) and applied
** CB tangents at a time, the CB x JB lane vectors of AL summed in registers over the chunk. */

/* AL[c .. c + cb)[j0 .. j0 + jb) (+)= TL[c ..][i0 .. i1) Jb. */
MG_INLINE void LX(tan_tile)(int cb, int jb, bool first, int64_t S, int64_t c, int64_t j0, int64_t i0,
                            int64_t i1, const LT *TL, const LT *Jb, LT *AL) {
  VT acc[CB][JB];
#pragma GCC unroll 8
  for (int q = 0; q < jb; q++)
    for (int d = 0; d < cb; d++)
      acc[d][q] = first ? (VT){ 0 } : (VT)lload(AL + ((c + d) * S + j0 + q) * LANES);
  for (int64_t i = i0; i < i1; i++) {
    VT t[CB];
    for (int d = 0; d < cb; d++) t[d] = lload(TL + ((c + d) * S + i) * LANES);
#pragma GCC unroll 8
    for (int q = 0; q < jb; q++) {
      VT jr = lload(Jb + ((i - i0) * JB + q) * LANES);
      for (int d = 0; d < cb; d++) acc[d][q] += t[d] * jr;
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < jb; q++)
    for (int d = 0; d < cb; d++) lstore(AL + ((c + d) * S + j0 + q) * LANES, acc[d][q]);
}

MG_INLINE void LX(tangents_slab)(int nblk, int64_t N, int64_t S, int64_t G, int64_t c0,
                                 int64_t c1, const LT *U, const LT *cf, const LT *zz, const LT *TL,
                                 LT *AL, LT *Jb) {
  for (int64_t j0 = 0; j0 < N; j0 += JB) {
    int jb = N - j0 < JB ? (int)(N - j0) : JB;
    VT vc[4][JB];
    for (int g = 0; g < nblk; g++)
      for (int q = 0; q < jb; q++) vc[g][q] = lload(cf + (g * N + j0 + q) * LANES);
    for (int64_t i0 = 0; i0 < N; i0 += RJ) {
      int64_t i1 = N - i0 < RJ ? N : i0 + RJ;
      for (int64_t i = i0; i < i1; i++) {
        const LT *u = U + i * G + j0;
        LT *jr = Jb + (i - i0) * JB * LANES;
        for (int q = 0; q < jb; q++) {
          VT v = u[q] * vc[0][q];
          for (int g = 1; g < nblk; g++) v += u[g * N + q] * vc[g][q];
          lstore(jr + q * LANES, v);
        }
        if (zz && i >= j0 && i < j0 + jb)             /* the diagonal */
          lstore(jr + (i - j0) * LANES, lload(jr + (i - j0) * LANES) + lload(zz + i * LANES));
      }
      bool first = i0 == 0;
      int64_t c = c0;
      if (jb == JB) {
        for (; c + CB <= c1; c += CB) LX(tan_tile)(CB, JB, first, S, c, j0, i0, i1, TL, Jb, AL);
        for (; c < c1; c++) LX(tan_tile)(1, JB, first, S, c, j0, i0, i1, TL, Jb, AL);
      } else {                                       /* the last 1 to 3 columns */
        for (; c < c1; c++)
          if (jb == 1) LX(tan_tile)(1, 1, first, S, c, j0, i0, i1, TL, Jb, AL);
          else if (jb == 2) LX(tan_tile)(1, 2, first, S, c, j0, i0, i1, TL, Jb, AL);
          else LX(tan_tile)(1, 3, first, S, c, j0, i0, i1, TL, Jb, AL);
      }
    }
  }
}

MG_INLINE void LX(tangents)(int nblk, int64_t N, int64_t S, int64_t G, int64_t k, const LT *U,
                            const LT *cf, const LT *zz, const LT *TL, LT *AL, LT *Jb) {
  /* KC tangents at a time (a slab of TL and AL of at most KC_BYTES, in L2): J formed again
  ** for each slab, a few percent of the work when there is more than one */
  int64_t kc = KC_BYTES / (S * LANES * (int64_t)sizeof(LT)) / CB * CB;
  if (kc < CB) kc = CB;
  for (int64_t c0 = 0; c0 < k; c0 += kc) {
    int64_t c1 = k - c0 < kc ? k : c0 + kc;
    LX(tangents_slab)(nblk, N, S, G, c0, c1, U, cf, zz, TL, AL, Jb);
  }
}

/* The block counts in use: 3 (GRU; LSTM's c'), 4 (LSTM's h'). */
LCLONES static void LX(tangents3)(int64_t N, int64_t S, int64_t G, int64_t k, const LT *U,
                                    const LT *cf, const LT *zz, const LT *TL, LT *AL, LT *Jb) {
  LX(tangents)(3, N, S, G, k, U, cf, zz, TL, AL, Jb);
}
LCLONES static void LX(tangents4)(int64_t N, int64_t S, int64_t G, int64_t k, const LT *U,
                                    const LT *cf, const LT *zz, const LT *TL, LT *AL, LT *Jb) {
  LX(tangents)(4, N, S, G, k, U, cf, zz, TL, AL, Jb);
}

/* LSTM: AL[c][j] += TL[c][N + j] dh[j] and AL[c][N + j] += TL[c][N + j] dc[j]: what the old
** c part of each tangent adds to h' and c' (diagonal blocks: f o (1 - tanh^2 c') and f). */
LCLONES static void LX(lstm_diag)(int64_t N, int64_t k, const LT *dh, const LT *dc, const LT *TL,
                                    LT *AL) {
  for (int64_t c = 0; c < k; c++) {
    const LT *tc = TL + (c * 2 * N + N) * LANES;
    LT *ah = AL + c * 2 * N * LANES, *ac = ah + N * LANES;
    for (int64_t j = 0; j < N; j++) {
      VT t = lload(tc + j * LANES);
      lstore(ah + j * LANES, lload(ah + j * LANES) + t * lload(dh + j * LANES));
      lstore(ac + j * LANES, lload(ac + j * LANES) + t * lload(dc + j * LANES));
    }
  }
}

#ifndef LKERNELS_ONLY
/* The rest only once per type, at the full width (LW = LANES). */

/* The coefficients of rows 0 .. nl - 1 in lanes (dst[j][l] = src[l ld + j]), 'pad' in the
** lanes past them. */
#if LANES == 16
typedef int32_t LX(lanes_idx) __attribute__((vector_size(LANES * sizeof(int32_t))));
#else
typedef int64_t LX(lanes_idx) __attribute__((vector_size(LANES * sizeof(int64_t))));
#endif
/* r = (a b)[m]: GCC's two-vector shuffle; clang (the TSan tree) has no variable-mask form,
** so there element by element, the same values (a macro: a function taking the vectors by
** value draws clang's ABI warning for 64-byte vectors). */
#if defined(__clang__)
#  define LSHUFFLE2(r, a, b, m)                                                            \
    do {                                                                                   \
      for (int c_ = 0; c_ < LANES; c_++)                                                   \
        (r)[c_] = (m)[c_] < LANES ? (a)[(m)[c_]] : (b)[(m)[c_] - LANES];                   \
    } while (0)
#else
#  define LSHUFFLE2(r, a, b, m) ((r) = __builtin_shuffle((a), (b), (m)))
#endif

/* One round of the transpose below: the off-diagonal d x d blocks of every 2d x 2d block of
** the LANES x LANES matrix in r swapped (d a constant once inlined: so are the masks). */
MG_INLINE void LX(swap_blocks)(LX(lanes_t) *r, int d) {
  LX(lanes_idx) lo, hi;
#pragma GCC unroll 16
  for (int c = 0; c < LANES; c++) {
    lo[c] = (c & d) == 0 ? c : LANES + c - d;
    hi[c] = (c & d) == 0 ? c + d : LANES + c;
  }
#pragma GCC unroll 16
  for (int i = 0; i < LANES; i++)
    if ((i & d) == 0) {
      VT a = r[i], b = r[i + d];
      LSHUFFLE2(r[i], a, b, lo);
      LSHUFFLE2(r[i + d], a, b, hi);
    }
}

/* A full group (nl = LANES) LANES columns at a time as a transpose of LANES x LANES in
** registers (log2 LANES rounds of two-vector shuffles); the same values as the element loop. */
LYAP_CLONES static void LX(to_lanes)(int64_t N, int64_t nl, const LT *src, int64_t ld, LT pad, LT *dst) {
  int64_t j0 = 0;
  if (nl == LANES)
    for (; j0 + LANES <= N; j0 += LANES) {
      VT r[LANES];
#pragma GCC unroll 16
      for (int l = 0; l < LANES; l++) r[l] = lload(src + l * ld + j0);
      if (LANES == 16) LX(swap_blocks)(r, 8);
      LX(swap_blocks)(r, 4);
      LX(swap_blocks)(r, 2);
      LX(swap_blocks)(r, 1);
#pragma GCC unroll 16
      for (int l = 0; l < LANES; l++) lstore(dst + (j0 + l) * LANES, r[l]);
    }
  for (int64_t j = j0; j < N; j++)
    for (int64_t l = 0; l < LANES; l++) dst[j * LANES + l] = l < nl ? src[l * ld + j] : pad;
}

/* The kernels of the copy that runs here (kk: mg_lyap_kernels): the wide ones on all the lanes
** at once, or a narrow copy on each half of them in turn, every lane pointer offset by LN. */
#define LN (LANES / 2)
#define LSTEP(kk) ((kk) == LYAP_WIDE ? LANES : LN)
#define LKERNEL(kk, name) ((kk) == LYAP_WIDE ? LX(name) : (kk) == LYAP_NARROW ? LXN(name) : LXB(name))
static void LX(run_tangents)(lyap_kernels kk, int nblk, int64_t N, int64_t S, int64_t G, int64_t k,
                             const LT *U, const LT *cf, const LT *zz, const LT *TL, LT *AL, LT *Jb) {
  for (int64_t o = 0; o < LANES; o += LSTEP(kk))
    (nblk == 3 ? LKERNEL(kk, tangents3) : LKERNEL(kk, tangents4))(N, S, G, k, U, cf + o, zz ? zz + o : NULL,
                                                                  TL + o, AL + o, Jb + o);
}

static void LX(run_tangents_qt)(lyap_kernels kk, int64_t N, int64_t k, int64_t G, const LT *U,
                                const LT *cf, const LT *zz, const LT *TL, const LT *tau, LT *V,
                                LT *W, const LT *Tall, LT *Jc, LT *AL) {
  for (int64_t o = 0; o < LANES; o += LSTEP(kk))
    LKERNEL(kk, tangents_qt)(N, k, G, U, cf + o, zz + o, TL + o, tau + o, V + o, W + o, Tall + o,
                             Jc + o, AL + o);
}

/* Householder's QR (qt: geqrf_qt's, reflectors only; else householder_lanes's, Q). */
static void LX(run_qr)(lyap_kernels kk, bool qt, int64_t N, int64_t k, LT *X, LT *tau, LT *beta,
                       LT *V, LT *W, LT *Tall) {
  for (int64_t o = 0; o < LANES; o += LSTEP(kk))
    (qt ? LKERNEL(kk, geqrf_qt) : LKERNEL(kk, householder_lanes))(N, k, X + o, tau + o, beta + o,
                                                                  V + o, W + o, Tall + o);
}

static void LX(run_lstm_diag)(lyap_kernels kk, int64_t N, int64_t k, const LT *dh, const LT *dc,
                              const LT *TL, LT *AL) {
  for (int64_t o = 0; o < LANES; o += LSTEP(kk))
    LKERNEL(kk, lstm_diag)(N, k, dh + o, dc + o, TL + o, AL + o);
}

/* Steps [J->t0, J->t1) of group 'gi' (its rows b0 .. b0 + nl - 1 in the lanes): the cell's
** step through cells.c's kernels (the Jacobian's coefficients are the reverse pass's with
** cotangents of ones), the tangents through the Jacobian, the QR, the sums, and the group's
** share of the history (part, per step of the chunk: sum over its lanes of sum / done). */
static void LX(group_steps)(const ljob *J, lgroup *g, int64_t gi) {
  const int64_t N = J->N, S = J->S, k = J->k, nl = g->nl, NL = N * LANES, T = J->T, F = J->F;
  const LT *W = J->W, *U = J->U, *b = J->b, *xt0 = (const LT *)J->x + g->b0 * T * F;
  LT *h = g->h, *hn = g->hn, *c = g->c, *cn = g->cn, *M = g->M, *cl = g->cl, *ones = g->ones;
  const lyap_kernels kk = mg_lyap_kernels();
  for (int64_t t = J->t0; t < J->t1; t++) {
    if (J->intr && __atomic_load_n(J->intr, __ATOMIC_RELAXED)) return;   /* the caller reports it */
    int64_t ti = J->backwards ? T - t : t - 1;
    const LT *xt = xt0 + ti * F;
    LT *TL = g->TL, *AL = g->AL;
    if (!J->lstm) {
      mg_gemm(LDT, false, false, nl, 3 * N, F, 1, xt, T * F, W, 3 * N, 0, M, 3 * N);
      mg_gru_step_forward(LDT, nl, N, true, U, J->P, b, h, M, g->S, hn);
      mg_gru_d1(LDT, 0, nl, N, true, g->S, h, ones, g->dmx, g->co, g->zz);
      for (int q = 0; q < 3; q++) LX(to_lanes)(N, nl, (LT *)g->co + q * N, 3 * N, 0, cl + q * NL);
      LX(to_lanes)(N, nl, g->zz, N, 1, cl + 3 * NL);   /* past the batch: J = I */
      if (g->qt)
        LX(run_tangents_qt)(kk, N, k, 3 * N, U, cl, cl + 3 * NL, TL, g->tau, g->Vb, g->Wb, g->Tb, g->Jf, AL);
      else LX(run_tangents)(kk, 3, N, N, 3 * N, k, U, cl, cl + 3 * NL, TL, AL, g->Jb);
    } else {
      mg_gemm(LDT, false, false, nl, 4 * N, F, 1, xt, T * F, W, 4 * N, 0, M, 4 * N);
      mg_rec_gemm(LDT, J->P, false, nl, 4 * N, N, h, N, U, 4 * N, 1, M, 4 * N);
      LX(mg_lstm_gates)(0, nl, N, M, b, c, cn, hn);
      LX(mg_lstm_dz)(0, nl, N, M, c, cn, ones, NULL, g->dz1, g->dc1);   /* of h' */
      LX(mg_lstm_dz)(0, nl, N, M, c, cn, NULL, ones, g->dz2, g->dc2);   /* of c' */
      for (int q = 0; q < 4; q++) LX(to_lanes)(N, nl, (LT *)g->dz1 + q * N, 4 * N, 0, cl + q * NL);
      LX(to_lanes)(N, nl, g->dc1, N, 0, cl + 4 * NL);
      for (int q = 0; q < 3; q++) LX(to_lanes)(N, nl, (LT *)g->dz2 + q * N, 4 * N, 0, cl + (5 + q) * NL);
      LX(to_lanes)(N, nl, g->dc2, N, 1, cl + 8 * NL);  /* past the batch: c' = c */
      LX(run_tangents)(kk, 4, N, S, 4 * N, k, U, cl, NULL, TL, AL, g->Jb);
      LX(run_tangents)(kk, 3, N, S, 4 * N, k, U, cl + 5 * NL, NULL, TL, AL + NL, g->Jb);
      LX(run_lstm_diag)(kk, N, k, cl + 4 * NL, cl + 8 * NL, TL, AL);
      LT *s = c; c = cn; cn = s;
    }
    LT *s = h; h = hn; hn = s;
    bool count = t > J->warmup, qr = t % J->every == 0 || t == J->warmup + J->steps || t == J->warmup;
    if (qr) {
      LX(run_qr)(kk, J->implicit, S, k, AL, g->tau, g->beta, g->Vb, g->Wb, g->Tb);
      g->qt = J->implicit;
      LT *sum = g->sum, *beta = g->beta;
      if (count)
        for (int64_t l = 0; l < nl; l++)
          for (int64_t j = 0; j < k; j++) sum[l * k + j] += LLOG(LFABS(beta[j * LANES + l]));
    }
    if (count) g->counted++, g->since++;
    if (qr) g->since = 0;
    g->TL = AL, g->AL = TL;                            /* the new tangents */
    if (count) {
      double *part = J->part + (gi * LCHUNK + (t - J->t0)) * k;
      int64_t done = g->counted - g->since;           /* steps covered by the last QR */
      const LT *sum = g->sum;
      for (int64_t i = 0; i < k; i++) part[i] = 0;
      if (done > 0)
        for (int64_t l = 0; l < nl; l++)
          for (int64_t i = 0; i < k; i++) part[i] += sum[l * k + i] / (LT)done;
    }
  }
  g->h = h, g->hn = hn, g->c = c, g->cn = cn;
}

void LX(mg_lyap_groups)(void *arg, int64_t lo, int64_t hi) {
  const ljob *J = arg;
  for (int64_t gi = lo; gi < hi; gi++) LX(group_steps)(J, &J->g[gi], gi);
}

void LX(mg_lyap_householder)(int64_t N, int64_t k, LT *X, LT *tau, LT *beta, LT *V, LT *W, LT *Tall) {
  LX(run_qr)(mg_lyap_kernels(), false, N, k, X, tau, beta, V, W, Tall);
}
#undef LKERNEL
#undef LSTEP
#undef LN
#endif /* LKERNELS_ONLY */

#undef VI
#undef VT
#undef lload
#undef lstore
#undef LX
#undef LW
#undef LCLONES
#ifdef LKERNELS_ONLY
#undef LKERNELS_ONLY
#else
#undef LXN
#undef LXB
#undef LT
#undef LANES
#undef LDT
#undef LSQRT
#undef LCOPYSIGN
#undef LLOG
#undef LFABS
#undef LSPLIT
#undef LSHUFFLE2
#endif
