/*
** lyapunov.c - the fast path of mg.lyapunov for the built-in GRU (Keras layout, reset_after,
** sigmoid and tanh) and LSTM (sigmoid and tanh, state (h, c)) cells, float32 and float64: the
** whole QR method (Benettin et al.) in one call, on buffers allocated once, with nothing
** recorded. The cell's step is cells.c's (mg_gru_step_forward, mg_lstm_gates), and so are
** the coefficients of its Jacobian: the reverse pass's (mg_gru_d1, mg_lstm_dz) with
** cotangents of ones.
**
** GRU, per step and trajectory, with a = x_t W + b_in and m = h U + b_rec (gates z, r, h):
**   z = sigm(a_z + m_z), r = sigm(a_r + m_r), hh = tanh(a_h + r m_h), h' = z h + (1 - z) hh,
** the Jacobian dh'_j/dh_l is  J[l, j] = U_z[l, j] cz_j + U_r[l, j] cr_j + U_h[l, j] ch_j
** + [l = j] z_j  with  cz = z (1 - z) (h - hh),  cr = (1 - z)(1 - hh^2) m_h r (1 - r),
** ch = (1 - z)(1 - hh^2) r: the recurrent kernel's three blocks with their columns scaled.
** LSTM (gates i, f, g, o; c' = f c + i g, h' = o tanh(c')), tangents (dh, dc) of 2N:
**   dh' = dh sum_(4 blocks) U_q diag(a_q) + dc diag(f o (1 - tanh^2 c')),
**   dc' = dh sum_(i, f, g) U_q diag(b_q) + dc diag(f),
** a = mg_lstm_dz's dz for the cotangents (gh, gc) = (1, 0), b for (0, 1).
** The k tangents of a trajectory are the rows of a (k, S) matrix T (S = N, or 2N: the
** columns of the column-major S x k matrix LAPACK sees), pushed through as T J with J formed
** (3 N^2 per trajectory, against 3 k N^2 for the k JVPs through U), then re-orthonormalized
** by Householder's QR with LAPACK's signs (those of mg.linalg.qr), log|R_ii| summed.
** Two ways, the same numbers up to rounding:
**   lanes            16 trajectories at once (float64: 8), one per lane of a 512-bit vector
**                    (lyapunov_lanes.h): J formed a few columns at a time and applied with
**                    register-blocked FMAs, and the QR blocked in compact WY form, every
**                    operation as wide as the lanes; the groups of lanes run on the context's
**                    threads (mg_parallel_for), each on its own, so that the numbers are the
**                    same for any thread count; for the GRU with k >= 0.9 N and a QR every
**                    step the tangents stay the last QR's reflectors: J formed whole and
**                    Q^T J taken by the blocked reflectors (fewer operations than forming Q
**                    and then T J: 5/3 against 7/3 N^3 at k = N), then the QR's first half;
**   per trajectory   float32 GRU, on request (mode 1): J formed, one (k, N) x (N, N) GEMM,
**                    LAPACK's recursive geqrt3 and Q from its compact WY form by one GEMM
**                    from k = 128, the lanes' QR below; slower than the lanes at every size
**                    measured (3.8x at N = k = 128), kept as an independent check.
** The generic path (any step function, a vectorized JVP per step) is
** bindings/moongrad/spectra.lua; spec/spectra_spec.lua checks the two agree.
*/
#include "lyapunov.h"

#include <cblas.h>
#include <lapacke.h>
#include <pthread.h>

/* ---------------------------------------------------------------- the kernels' width */

static pthread_once_t width_once = PTHREAD_ONCE_INIT;
static lyap_kernels width_kernels;

static void width_pick(void) {
  const char *w = getenv("MG_LYAP_WIDTH");
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  bool v4 = __builtin_cpu_supports("x86-64-v4");
#elif defined(__AVX512F__)
  bool v4 = true;
#else
  bool v4 = false;
#endif
#ifdef LYAP_HAVE_CLONES                  /* (GCC on x86-64: lyapunov.h) */
  bool can = v4;                         /* the 512-bit kernels are compiled for x86-64-v4 alone */
  lyap_kernels narrow = __builtin_cpu_supports("x86-64-v3") ? LYAP_NARROW : LYAP_BASE;
#else
  bool can = true;
  lyap_kernels narrow = LYAP_NARROW;
#endif
  if (w && strcmp(w, "512") == 0) width_kernels = can ? LYAP_WIDE : narrow;
  else if (w && strcmp(w, "256") == 0) width_kernels = narrow;
#ifdef LYAP_HAVE_CLONES
  else if (w && strcmp(w, "baseline") == 0) width_kernels = LYAP_BASE;
#endif
  else width_kernels = v4 ? LYAP_WIDE : narrow;
}

lyap_kernels mg_lyap_kernels(void) {
  pthread_once(&width_once, width_pick);
  return width_kernels;
}

const char *mg_lyapunov_kernels(void) {
  lyap_kernels kk = mg_lyap_kernels();
#ifdef LYAP_HAVE_CLONES
  return kk == LYAP_WIDE ? "512-bit, x86-64-v4" : kk == LYAP_NARROW ? "256-bit, x86-64-v3" : "256-bit, x86-64";
#else
  return kk == LYAP_WIDE ? "512-bit" : "256-bit";
#endif
}

static int desc_f32(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}
static int desc_f64(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x < y) - (x > y);
}

/* ---------------------------------------------------------------- checks */

enum { IX, IH, IC, IW, IU, IB, IQ, NIN };   /* x, h0, c0 (LSTM), kernel, recurrent, bias, Q0 */

/* x (B, T, F) and Q0 (B, S, k) here; h0 (and c0), the kernels and the bias as the fused
** cells check them (cells.c); one dtype, float32 or float64. dims: B, T, F, N, k. */
static mg_status check_cell(mg_ctx *C, const char *fn, bool lstm, mg_tensor *const *in,
                            int64_t *dims) {
  mg_tensor *x = in[IX], *h0 = in[IH], *Q0 = in[IQ], *all[NIN];
  char s[96], s2[96];
  int n = 0;
  for (int i = 0; i < NIN; i++)
    if (in[i]) all[n++] = in[i];
  mg_status st = mg_cell_same_dtype(C, fn, n, all);
  if (st == MG_OK && x->dtype != MG_F32 && x->dtype != MG_F64)
    st = mg_fail(C, MG_EARG, "%s: x must be float32 or float64, got %s", fn, mg_dtype_name(x->dtype));
  if (st != MG_OK) return st;
  if (x->ndim != 3)
    return mg_fail(C, MG_ESHAPE, "%s: x has shape %s, expected (B, T, F)", fn,
                   mg_shapestr(s, sizeof s, x->ndim, x->shape));
  int64_t B = x->shape[0], T = x->shape[1], F = x->shape[2], N = h0->ndim == 2 ? h0->shape[1] : -1;
  int64_t gates = lstm ? 4 : 3, S = lstm ? 2 * N : N;
  if ((st = mg_cell_want2(C, fn, "h0", h0, B, N)) ||
      (lstm && (st = mg_cell_want2(C, fn, "c0", in[IC], B, N))) ||
      (st = mg_cell_want2(C, fn, "kernel", in[IW], F, gates * N)) ||
      (st = mg_cell_want2(C, fn, "recurrent_kernel", in[IU], N, gates * N)))
    return st;
  if (lstm && (in[IB]->ndim != 1 || in[IB]->shape[0] != 4 * N))
    return mg_fail(C, MG_ESHAPE, "%s: bias has shape %s, expected (%lld)", fn,
                   mg_shapestr(s, sizeof s, in[IB]->ndim, in[IB]->shape), (long long)(4 * N));
  if (!lstm && (st = mg_gru_bias_check(C, fn, in[IB], true, N))) return st;
  int64_t k = Q0->ndim == 3 ? Q0->shape[2] : 0;
  if (Q0->ndim != 3 || Q0->shape[0] != B || Q0->shape[1] != S)
    return mg_fail(C, MG_ESHAPE, "%s: Q0 has shape %s, which does not fit x %s and a state of %lld",
                   fn, mg_shapestr(s, sizeof s, Q0->ndim, Q0->shape),
                   mg_shapestr(s2, sizeof s2, 3, x->shape), (long long)S);
  if (N < 1 || k < 1 || k > S)
    return mg_fail(C, MG_EARG, "%s: k = %lld must be in 1..%lld", fn, (long long)k, (long long)S);
  dims[0] = B, dims[1] = T, dims[2] = F, dims[3] = N, dims[4] = k;
  return MG_OK;
}

/* ---------------------------------------------------------------- the lanes way */

/* Elements of the QR's reflector buffer V for rows of S components in L lanes of es bytes:
** the panels householder_lanes takes at a time. */
static int64_t v_elems(int64_t S, int64_t L, int64_t es, int64_t k) {
  int64_t per = VALL_BYTES / (NB * S * L * es), blocks = k / NB;
  if (per > blocks) per = blocks;
  if (per < 1) per = 1;
  return per * NB * S * L;
}

/* Group g's buffers in one allocation: returns false when out of memory. */
static bool group_alloc(lgroup *g, mg_dtype dt, bool lstm, bool implicit, int64_t N, int64_t k) {
  int64_t L = dt == MG_F64 ? LANES_F64 : LANES_F32, S = lstm ? 2 * N : N, NL = N * L;
  int64_t panels = (k - 1) / NB + 1;
  void **p[] = { &g->h, &g->hn, &g->c, &g->cn, &g->zz, &g->ones, &g->dc1, &g->dc2, &g->M,
                 &g->S, &g->dmx, &g->co, &g->dz1, &g->dz2, &g->cl, &g->TL, &g->AL, &g->Jb,
                 &g->Vb, &g->Wb, &g->Tb, &g->tau, &g->beta, &g->sum, &g->Jf };
  int64_t n[] = { NL, NL, NL, NL, NL, NL, NL, NL, 4 * NL, 4 * NL, 3 * NL, 3 * NL, 4 * NL,
                  4 * NL, 9 * NL, k * S * L, k * S * L, RJ * JB * L, v_elems(S, L, (int64_t)mg_dtype_size(dt), k), NB * S * L,
                  panels * NB * NB * L, k * L, k * L, L * k, implicit ? S * S * L : 0 };
  size_t es = mg_dtype_size(dt), total = 0, at[sizeof n / sizeof n[0]];
  for (size_t i = 0; i < sizeof n / sizeof n[0]; i++) {
    at[i] = total;
    total += ((size_t)n[i] * es + 63) / 64 * 64;
  }
  if (!(g->block = calloc(1, total + 64))) return false;
  char *base = (char *)(((uintptr_t)g->block + 63) / 64 * 64);
  for (size_t i = 0; i < sizeof n / sizeof n[0]; i++) *p[i] = base + at[i];
  if (dt == MG_F64) for (int64_t i = 0; i < NL; i++) ((double *)g->ones)[i] = 1;
  else for (int64_t i = 0; i < NL; i++) ((float *)g->ones)[i] = 1;
  return true;
}

/* The initial state and tangents of group g (T_b = Q0_b^T: tangents as rows; the identity in
** the lanes past the batch). */
static void group_init(lgroup *g, mg_dtype dt, bool lstm, int64_t N, int64_t k, const void *h0,
                       const void *c0, const void *Q0) {
  int64_t L = dt == MG_F64 ? LANES_F64 : LANES_F32, S = lstm ? 2 * N : N, es = (int64_t)mg_dtype_size(dt);
  memcpy(g->h, (const char *)h0 + g->b0 * N * es, (size_t)(g->nl * N * es));
  if (lstm) memcpy(g->c, (const char *)c0 + g->b0 * N * es, (size_t)(g->nl * N * es));
  for (int64_t l = 0; l < L; l++)
    for (int64_t i = 0; i < S; i++)
      for (int64_t j = 0; j < k; j++) {
        int64_t o = (j * S + i) * L + l, q = ((g->b0 + l) * S + i) * k + j;
        if (dt == MG_F64) ((double *)g->TL)[o] = l < g->nl ? ((const double *)Q0)[q] : i == j;
        else ((float *)g->TL)[o] = l < g->nl ? ((const float *)Q0)[q] : i == j;
      }
}

/* The whole run, the lanes way: sum (B, k), history (steps, k) of x's dtype; 'qt_ok': the
** GRU's tangents may be kept as reflectors (tangents_qt) where that takes fewer operations:
** a QR every step and k >= 0.9 N (break-even measured near 0.9: 64,56 and 128,116 alike). */
static mg_status lyapunov_lanes(mg_ctx *C, const char *fn, bool lstm, mg_tensor *const *c,
                                const int64_t *d, int64_t warmup, int64_t steps, int64_t every,
                                bool backwards, bool qt_ok, mg_tensor *sum, mg_tensor *hist) {
  mg_dtype dt = c[IX]->dtype;
  int64_t B = d[0], T = d[1], F = d[2], N = d[3], k = d[4], L = dt == MG_F64 ? LANES_F64 : LANES_F32;
  int64_t groups = (B + L - 1) / L, total = warmup + steps, es = (int64_t)mg_dtype_size(dt);
  ljob J = { .lstm = lstm, .backwards = backwards, .T = T, .F = F, .N = N, .S = lstm ? 2 * N : N,
             .k = k, .warmup = warmup, .steps = steps, .every = every, .x = mg_tensor_data(c[IX]),
             .W = mg_tensor_data(c[IW]), .U = mg_tensor_data(c[IU]), .b = mg_tensor_data(c[IB]),
             .intr = C->interrupt, .implicit = qt_ok && !lstm && every == 1 && 10 * k >= 9 * N };
  mg_packed P;
  bool packed = dt == MG_F32 && mg_pack(&P, NULL, J.U, (lstm ? 4 : 3) * N, false, N, (lstm ? 4 : 3) * N);
  J.P = packed ? &P : NULL;                           /* else BLAS on U */
  J.g = calloc((size_t)groups, sizeof *J.g);
  J.part = calloc((size_t)(groups * LCHUNK * k), sizeof(double));
  double *acc = calloc((size_t)k, sizeof(double));
  void *row = calloc((size_t)k, (size_t)es);
  mg_status st = J.g && J.part && acc && row ? MG_OK : mg_fail(C, MG_ENOMEM, "%s: out of memory", fn);
  for (int64_t gi = 0; gi < groups && st == MG_OK; gi++) {
    lgroup *g = &J.g[gi];
    g->b0 = gi * L, g->nl = B - g->b0 < L ? B - g->b0 : L;
    if (!group_alloc(g, dt, lstm, J.implicit, N, k)) st = mg_fail(C, MG_ENOMEM, "%s: out of memory", fn);
    else group_init(g, dt, lstm, N, k, mg_tensor_data(c[IH]), lstm ? mg_tensor_data(c[IC]) : NULL,
                    mg_tensor_data(c[IQ]));
  }
  int64_t counted = 0;
  for (int64_t t0 = 1; t0 <= total && st == MG_OK; t0 += LCHUNK) {
    J.t0 = t0, J.t1 = total + 1 - t0 < LCHUNK ? total + 1 : t0 + LCHUNK;
    st = mg_parallel_for(C, NULL, groups, 1, dt == MG_F64 ? mg_lyap_groups_f64 : mg_lyap_groups_f32, &J);
    if (st == MG_OK) st = mg_poll(C, fn);
    for (int64_t t = J.t0; t < J.t1 && st == MG_OK; t++) {
      if (t <= warmup) continue;
      for (int64_t i = 0; i < k; i++) acc[i] = 0;     /* the batch mean, groups in order */
      for (int64_t gi = 0; gi < groups; gi++)
        for (int64_t i = 0; i < k; i++) acc[i] += J.part[(gi * LCHUNK + t - t0) * k + i];
      if (dt == MG_F64) {
        double *r = row;
        for (int64_t i = 0; i < k; i++) r[i] = acc[i] / (double)B;
        qsort(r, (size_t)k, sizeof(double), desc_f64);
      } else {
        float *r = row;
        for (int64_t i = 0; i < k; i++) r[i] = (float)(acc[i] / (double)B);
        qsort(r, (size_t)k, sizeof(float), desc_f32);
      }
      memcpy((char *)mg_tensor_data(hist) + counted * k * es, row, (size_t)(k * es));
      counted++;
    }
  }
  for (int64_t gi = 0; gi < groups && st == MG_OK; gi++)
    memcpy((char *)mg_tensor_data(sum) + J.g[gi].b0 * k * es, J.g[gi].sum, (size_t)(J.g[gi].nl * k * es));
  for (int64_t gi = 0; J.g && gi < groups; gi++) free(J.g[gi].block);
  free(J.g);
  free(J.part);
  free(acc);
  free(row);
  if (packed) mg_pack_free(&P);
  return st;
}

/* ---------------------------------------------------------------- per trajectory (float32 GRU) */

/* Scratch of one run, allocated once. */
typedef struct {
  float *h, *hn, *mx, *S, *dmx, *co, *zz, *ones, *T, *A, *J, *tau, *beta, *X, *sum, *row;
  float *Vb, *Wb, *Tb;        /* the lanes' blocked QR (k < QR_BLOCKED) */
  double *acc;
  mg_packed P;                /* U packed once for the recurrent products */
  bool packed;
} scratch;

/* One GRU step for every trajectory through the fused cell's own kernels (cells.c): h <- h',
** and the coefficients of its Jacobian: co = [cz cr ch] (B, 3N) as mg_gru_d1's dmh, zz = z. */
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
LYAP_CLONES static void form_jacobian_f32(int64_t N, const float *U, const float *cz,
                                        const float *cr, const float *ch, const float *zz,
                                        float *J) {
  for (int64_t l = 0; l < N; l++) {
    const float *u = U + l * 3 * N;
    float *Jl = J + l * N;
    for (int64_t j = 0; j < N; j++) Jl[j] = u[j] * cz[j] + u[N + j] * cr[j] + u[2 * N + j] * ch[j];
    Jl[l] += zz[l];
  }
}

/* QR of the B (k, N) tangent matrices in A (rows: tangents), in place, 16 at a time through
** X; log|R_jj| of trajectory b added to sum[b * k + j] unless sum is NULL. */
static void qr_batch_f32(int64_t B, int64_t N, int64_t k, float *A, float *X, float *sum,
                         scratch *s) {
  float *tau = s->tau, *beta = s->beta;
  for (int64_t b0 = 0; b0 < B; b0 += LANES_F32) {
    int64_t nl = B - b0 < LANES_F32 ? B - b0 : LANES_F32;
    for (int64_t c = 0; c < k; c++)
      for (int64_t i = 0; i < N; i++) {
        float *x = X + (c * N + i) * LANES_F32;
        for (int64_t l = 0; l < nl; l++) x[l] = A[((b0 + l) * k + c) * N + i];
        for (int64_t l = nl; l < LANES_F32; l++) x[l] = c == i ? 1.0f : 0.0f;
      }
    mg_lyap_householder_f32(N, k, X, tau, beta, s->Vb, s->Wb, s->Tb);
    for (int64_t l = 0; l < nl; l++) {
      float *a = A + (b0 + l) * k * N;
      for (int64_t c = 0; c < k; c++)
        for (int64_t i = 0; i < N; i++) a[c * N + i] = X[(c * N + i) * LANES_F32 + l];
      if (sum)
        for (int64_t j = 0; j < k; j++)
          sum[(b0 + l) * k + j] += (float)log(fabs((double)beta[j * LANES_F32 + l]));
    }
  }
}

/* From this many tangents on, LAPACK's recursive QR (GEMM-rich) beats the lanes' unblocked
** code above. */
#define QR_BLOCKED 128

/* The same QR through LAPACK, one trajectory at a time: its recursive compact-WY geqrt3,
** A = (I - V Tm V^T) [R; 0], so Q = E - V (Tm V1^T) with E the first k columns of the
** identity and V1 the unit lower k x k top of V: a triangular product and one GEMM, where
** orgqr takes 12% longer at k = N = 256. 'work' holds k * (k + N) floats. */
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

static mg_status alloc_scratch(mg_ctx *C, const char *fn, int64_t B, int64_t N, int64_t k,
                               const float *U, scratch *s) {
  memset(s, 0, sizeof *s);
  size_t BN = (size_t)(B * N), Bk = (size_t)(B * k), L = LANES_F32;
  size_t kNL = (size_t)(k * N) * L, panels = (size_t)((k - 1) / NB + 1);
  float **f[] = { &s->h, &s->hn, &s->zz, &s->ones, &s->mx, &s->dmx, &s->co, &s->S, &s->T, &s->A,
                  &s->sum, &s->row, &s->tau, &s->beta, &s->X, &s->J, &s->Vb, &s->Wb, &s->Tb };
  size_t n[] = { BN, BN, BN, BN, 3 * BN, 3 * BN, 3 * BN, 4 * BN, Bk * (size_t)N, Bk * (size_t)N,
                 Bk, (size_t)k, (size_t)k * L, (size_t)k * L, kNL, (size_t)(N * N),
                 (size_t)v_elems(N, (int64_t)L, 4, k), NB * (size_t)k * L, panels * NB * NB * L };
  for (size_t i = 0; i < sizeof n / sizeof n[0]; i++)
    if (!(*f[i] = calloc(n[i], sizeof(float)))) return mg_fail(C, MG_ENOMEM, "%s: out of memory", fn);
  if (!(s->acc = calloc((size_t)k, sizeof(double)))) return mg_fail(C, MG_ENOMEM, "%s: out of memory", fn);
  for (size_t i = 0; i < BN; i++) s->ones[i] = 1;
  s->packed = mg_pack(&s->P, NULL, U, 3 * N, false, N, 3 * N);   /* else BLAS on U */
  return MG_OK;
}

static void free_scratch(scratch *s) {
  float *f[] = { s->h, s->hn, s->zz, s->ones, s->mx, s->dmx, s->co, s->S, s->T, s->A, s->sum,
                 s->row, s->tau, s->beta, s->X, s->J, s->Vb, s->Wb, s->Tb };
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
  free(s->acc);
  if (s->packed) mg_pack_free(&s->P);
}

/* The whole run per trajectory (float32 GRU): sum (B, k), history (steps, k). */
static mg_status lyapunov_each(mg_ctx *C, const char *fn, mg_tensor *const *c, const int64_t *d,
                               int64_t warmup, int64_t steps, int64_t every, bool backwards,
                               mg_tensor *sum, mg_tensor *hist) {
  int64_t B = d[0], T = d[1], F = d[2], N = d[3], k = d[4];
  scratch s;
  mg_status st = alloc_scratch(C, fn, B, N, k, MG_F32P(c[IU]), &s);
  if (st != MG_OK) { free_scratch(&s); return st; }
  const float *xs = MG_F32P(c[IX]), *Wp = MG_F32P(c[IW]), *Up = MG_F32P(c[IU]), *bp = MG_F32P(c[IB]);
  const float *q0 = MG_F32P(c[IQ]);
  float *hist_p = MG_F32P(hist);
  memcpy(s.h, MG_F32P(c[IH]), sizeof(float) * (size_t)(B * N));
  for (int64_t bb = 0; bb < B; bb++)
    for (int64_t i = 0; i < N; i++)                    /* T_b = Q0_b^T: tangents as rows */
      for (int64_t j = 0; j < k; j++) s.T[(bb * k + j) * N + i] = q0[(bb * N + i) * k + j];
  int64_t counted = 0, since = 0;
  for (int64_t t = 1; t <= warmup + steps && st == MG_OK; t++) {
    int64_t ti = backwards ? T - t : t - 1;
    gru_step_f32(B, F, N, xs + ti * F, T * F, Wp, Up, bp, &s);
    bool count = t > warmup, qr = t % every == 0 || t == warmup + steps || t == warmup;
    for (int64_t bb = 0; bb < B; bb++) {
      const float *co = s.co + bb * 3 * N;
      form_jacobian_f32(N, Up, co, co + N, co + 2 * N, s.zz + bb * N, s.J);
      mg_gemm(MG_F32, false, false, k, N, N, 1, s.T + bb * k * N, N, s.J, N, 0, s.A + bb * k * N, N);
    }
    if (qr && k < QR_BLOCKED) qr_batch_f32(B, N, k, s.A, s.X, count ? s.sum : NULL, &s);
    else if (qr) st = qr_lapack_f32(C, fn, B, N, k, s.A, s.X, count ? s.sum : NULL);
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
      qsort(s.row, (size_t)k, sizeof(float), desc_f32);
      memcpy(hist_p + (counted - 1) * k, s.row, sizeof(float) * (size_t)k);
    }
    if (st == MG_OK) st = mg_poll(C, fn);
  }
  if (st == MG_OK) memcpy(MG_F32P(sum), s.sum, sizeof(float) * (size_t)(B * k));
  free_scratch(&s);
  return st;
}

/* ---------------------------------------------------------------- entry points */

/* Checks, contiguous copies, the outputs, then the run: mode 0 or 2 the lanes, 1 per
** trajectory (float32 GRU: an independent check of the lanes, through LAPACK), 3 the lanes
** with the tangents always formed (Q, then T J: a check of tangents_qt). */
static mg_status lyapunov_run(mg_ctx *C, bool lstm, mg_tensor *const *in, int64_t warmup,
                              int64_t steps, int64_t every, bool backwards, int mode,
                              mg_tensor **sum_out, mg_tensor **history_out) {
  const char *fn = "lyapunov";
  mg_tensor *c[NIN] = { NULL }, *sum = NULL, *hist = NULL;
  int64_t d[5] = { 0 };
  mg_status st = check_cell(C, fn, lstm, in, d);
  int64_t T = d[1], k = d[4];
  if (st == MG_OK && (warmup < 0 || steps < 1 || every < 1 || warmup + steps > T))
    st = mg_fail(C, MG_EARG, "%s: warmup %lld, steps %lld, reortho_every %lld do not fit %lld timesteps",
                 fn, (long long)warmup, (long long)steps, (long long)every, (long long)T);
  mg_dtype dt = in[IX]->dtype;
  bool each_ok = !lstm && dt == MG_F32;
  if (st == MG_OK && (mode < 0 || mode > 3)) st = mg_fail(C, MG_EARG, "%s: bad mode %d", fn, mode);
  if (st == MG_OK && mode == 1 && !each_ok)
    st = mg_fail(C, MG_EARG, "%s: mode 1 (each trajectory's Jacobian) is for the float32 GRU only", fn);
  if (st != MG_OK) return st;
  if (mode == 0) mode = 2;                            /* the lanes: faster at every size measured */
  mg_no_grad_enter(C);
  for (int i = 0; i < NIN && st == MG_OK; i++)
    if (in[i]) st = mg_tensor_contiguous(C, in[i], &c[i]);
  mg_no_grad_exit(C);
  int64_t ss[2] = { d[0], k }, hs[2] = { steps, k };
  if (st == MG_OK) st = mg_tensor_empty(C, dt, 2, ss, &sum);
  if (st == MG_OK) st = mg_tensor_empty(C, dt, 2, hs, &hist);
  if (st == MG_OK)
    st = mode == 1 ? lyapunov_each(C, fn, c, d, warmup, steps, every, backwards, sum, hist)
                   : lyapunov_lanes(C, fn, lstm, c, d, warmup, steps, every, backwards, mode != 3,
                                    sum, hist);
  for (int i = 0; i < NIN; i++) mg_tensor_release(c[i]);
  if (st != MG_OK) { mg_tensor_release(sum); mg_tensor_release(hist); return st; }
  *sum_out = sum;
  *history_out = hist;
  return MG_OK;
}

mg_status mg_lyapunov_gru(mg_ctx *C, mg_tensor *x, mg_tensor *h0, mg_tensor *W, mg_tensor *U,
                          mg_tensor *b, mg_tensor *Q0, int64_t warmup, int64_t steps,
                          int64_t every, bool backwards, int mode, mg_tensor **sum_out,
                          mg_tensor **history_out) {
  mg_tensor *in[NIN] = { x, h0, NULL, W, U, b, Q0 };
  return lyapunov_run(C, false, in, warmup, steps, every, backwards, mode, sum_out, history_out);
}

mg_status mg_lyapunov_lstm(mg_ctx *C, mg_tensor *x, mg_tensor *h0, mg_tensor *c0, mg_tensor *W,
                           mg_tensor *U, mg_tensor *b, mg_tensor *Q0, int64_t warmup,
                           int64_t steps, int64_t every, bool backwards, mg_tensor **sum_out,
                           mg_tensor **history_out) {
  mg_tensor *in[NIN] = { x, h0, c0, W, U, b, Q0 };
  return lyapunov_run(C, true, in, warmup, steps, every, backwards, 2, sum_out, history_out);
}
