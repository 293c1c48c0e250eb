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
** The k tangents of a trajectory are the rows of a (k, N) matrix T (so the columns of the
** column-major N x k matrix LAPACK sees), pushed through as T J, two ways that give the same
** numbers up to rounding:
**   explicit  J formed (3 N^2 per trajectory), then one (k, N) x (N, N) GEMM: k N^2 each;
**   direct    P = T U for every trajectory in one (B k, N) x (N, 3N) GEMM (3 k N^2 each),
**             then T' = P_z cz + P_r cr + P_h ch + T z.
** Then geqrf + orgqr in place (the same LAPACK calls and signs as mg.linalg.qr), log|R_ii|
** summed. The generic path (any step function, a vectorized JVP per step) is
** bindings/moongrad/spectra.lua; spec/spectra_spec.lua checks the two agree.
*/
#include "mg_impl.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define MG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MG_CLONES
#endif

static double sigm(double v) { return v >= 0 ? 1 / (1 + exp(-v)) : exp(v) / (1 + exp(v)); }

/* Scratch of one run, allocated once. */
typedef struct {
  float *h, *mx, *mh, *cz, *cr, *ch, *zz, *T, *A, *P, *J, *tau, *beta, *X, *sum, *row;
  double *acc;
} scratch;

/* One GRU step for every trajectory: h <- h', and the coefficients of its Jacobian. */
static void gru_step_f32(int64_t B, int64_t F, int64_t N, const float *xt, int64_t ldx,
                         const float *W, const float *U, const float *bias, scratch *s) {
  int64_t G = 3 * N;
  mg_gemm(MG_F32, false, false, B, G, F, 1, xt, ldx, W, G, 0, s->mx, G);
  mg_gemm(MG_F32, false, false, B, G, N, 1, s->h, N, U, G, 0, s->mh, G);
  const float *bi = bias, *br = bias + G;
  for (int64_t b = 0; b < B; b++)
    for (int64_t j = 0; j < N; j++) {
      const float *a = s->mx + b * G, *m = s->mh + b * G;
      double z = sigm((double)a[j] + bi[j] + m[j] + br[j]);
      double r = sigm((double)a[N + j] + bi[N + j] + m[N + j] + br[N + j]);
      double mh = (double)m[2 * N + j] + br[2 * N + j];
      double hh = tanh((double)a[2 * N + j] + bi[2 * N + j] + r * mh);
      double h = s->h[b * N + j], g = (1 - z) * (1 - hh * hh);
      int64_t o = b * N + j;
      s->cz[o] = (float)(z * (1 - z) * (h - hh));
      s->cr[o] = (float)(g * mh * r * (1 - r));
      s->ch[o] = (float)(g * r);
      s->zz[o] = (float)z;
      s->h[o] = (float)(z * h + (1 - z) * hh);
    }
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

/* A = P_z cz + P_r cr + P_h ch + T z for the k tangents of one trajectory (direct way). */
MG_CLONES static void combine_f32(int64_t k, int64_t N, const float *P, const float *T,
                                  const float *cz, const float *cr, const float *ch,
                                  const float *zz, float *A) {
  for (int64_t i = 0; i < k; i++) {
    const float *p = P + i * 3 * N, *t = T + i * N;
    float *a = A + i * N;
    for (int64_t j = 0; j < N; j++)
      a[j] = p[j] * cz[j] + p[N + j] * cr[j] + p[2 * N + j] * ch[j] + t[j] * zz[j];
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

/* One reflector (v, tau) applied to tangent row a, both from component j on. */
static inline void reflect_lanes(int64_t j, int64_t N, const float *v, const float *tau, float *a) {
  float w[LANES];
  for (int l = 0; l < LANES; l++) w[l] = a[j * LANES + l];
  for (int64_t i = j + 1; i < N; i++)
    for (int l = 0; l < LANES; l++) w[l] += v[i * LANES + l] * a[i * LANES + l];
  for (int l = 0; l < LANES; l++) { w[l] *= tau[l]; a[j * LANES + l] -= w[l]; }
  for (int64_t i = j + 1; i < N; i++)
    for (int l = 0; l < LANES; l++) a[i * LANES + l] -= w[l] * v[i * LANES + l];
}

MG_CLONES static void householder_lanes_f32(int64_t N, int64_t k, float *X, float *tau,
                                            float *beta) {
  const int64_t row = N * LANES;
  for (int64_t j = 0; j < k; j++) {                    /* geqr2 */
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
    for (int64_t c = j + 1; c < k; c++) reflect_lanes(j, N, v, t, X + c * row);
  }
  for (int64_t j = k - 1; j >= 0; j--) {               /* org2r: Q = H_0 ... H_(k-1) E */
    float *v = X + j * row, *t = tau + j * LANES;
    for (int64_t c = j + 1; c < k; c++) reflect_lanes(j, N, v, t, X + c * row);
    for (int64_t i = j + 1; i < N; i++)
      for (int l = 0; l < LANES; l++) v[i * LANES + l] *= -t[l];
    for (int l = 0; l < LANES; l++) v[j * LANES + l] = 1 - t[l];
    for (int64_t i = 0; i < j; i++)
      for (int l = 0; l < LANES; l++) v[i * LANES + l] = 0;
  }
}

/* QR of the B (k, N) tangent matrices in A (rows: tangents), in place, 16 at a time through
** X; log|R_jj| of trajectory b added to sum[b * k + j] unless sum is NULL. */
static void qr_batch_f32(int64_t B, int64_t N, int64_t k, float *A, float *X, float *tau,
                         float *beta, float *sum) {
  for (int64_t b0 = 0; b0 < B; b0 += LANES) {
    int64_t nl = B - b0 < LANES ? B - b0 : LANES;
    for (int64_t c = 0; c < k; c++)
      for (int64_t i = 0; i < N; i++) {
        float *x = X + (c * N + i) * LANES;
        for (int64_t l = 0; l < nl; l++) x[l] = A[((b0 + l) * k + c) * N + i];
        for (int64_t l = nl; l < LANES; l++) x[l] = c == i ? 1.0f : 0.0f;
      }
    householder_lanes_f32(N, k, X, tau, beta);
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

/* From this many tangents on, LAPACK's blocked geqrf + orgqr (GEMM-rich from k = 128, its
** crossover) beat the interleaved unblocked code above. */
#define QR_BLOCKED 128

/* The same QR through LAPACK, one trajectory at a time; 'work' holds k * N * LANES floats. */
static mg_status qr_lapack_f32(mg_ctx *C, const char *fn, int64_t B, int64_t N, int64_t k,
                               float *A, float *tau, float *work, float *sum) {
  lapack_int n = (lapack_int)N, kk = (lapack_int)k, lw = (lapack_int)(k * N * LANES);
  for (int64_t b = 0; b < B; b++) {
    float *a = A + b * k * N;
    lapack_int info = LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, n, kk, a, n, tau, work, lw);
    if (info == 0 && sum)
      for (int64_t j = 0; j < k; j++) sum[b * k + j] += (float)log(fabs((double)a[j * N + j]));
    if (info == 0) info = LAPACKE_sorgqr_work(LAPACK_COL_MAJOR, n, kk, kk, a, n, tau, work, lw);
    if (info != 0) return mg_fail(C, MG_EARG, "%s: LAPACK's QR failed (info %d)", fn, (int)info);
  }
  return MG_OK;
}

static int desc(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}

static mg_status check_gru(mg_ctx *C, const char *fn, mg_tensor *const *in, int64_t *dims) {
  static const char *names[] = { "x", "h0", "kernel", "recurrent_kernel", "bias", "Q0" };
  static const int nd[] = { 3, 2, 2, 2, 2, 3 };
  char s[96];
  for (int i = 0; i < 6; i++) {
    if (in[i]->dtype != MG_F32)
      return mg_fail(C, MG_EARG, "%s: %s must be float32, got %s", fn, names[i],
                     mg_dtype_name(in[i]->dtype));
    if (in[i]->ndim != nd[i])
      return mg_fail(C, MG_ESHAPE, "%s: %s has shape %s, expected %d dims", fn, names[i],
                     mg_shapestr(s, sizeof s, in[i]->ndim, in[i]->shape), nd[i]);
  }
  int64_t B = in[0]->shape[0], T = in[0]->shape[1], F = in[0]->shape[2], N = in[1]->shape[1];
  int64_t k = in[5]->shape[2];
  const int64_t want[6][3] = { { B, T, F }, { B, N }, { F, 3 * N }, { N, 3 * N }, { 2, 3 * N },
                               { B, N, k } };
  for (int i = 1; i < 6; i++)
    for (int d = 0; d < nd[i]; d++)
      if (in[i]->shape[d] != want[i][d])
        return mg_fail(C, MG_ESHAPE, "%s: %s has shape %s, which does not fit x %s and h0 (%lld,%lld)",
                       fn, names[i], mg_shapestr(s, sizeof s, in[i]->ndim, in[i]->shape),
                       mg_shapestr(s + 48, 48, 3, in[0]->shape), (long long)B, (long long)N);
  if (N < 1 || k < 1 || k > N)
    return mg_fail(C, MG_EARG, "%s: k = %lld must be in 1..%lld", fn, (long long)k, (long long)N);
  dims[0] = B, dims[1] = T, dims[2] = F, dims[3] = N, dims[4] = k;
  return MG_OK;
}

static mg_status alloc_scratch(mg_ctx *C, const char *fn, int64_t B, int64_t N, int64_t k,
                               int mode, scratch *s) {
  memset(s, 0, sizeof *s);
  size_t BN = (size_t)(B * N), Bk = (size_t)(B * k);
  float **f[] = { &s->h, &s->cz, &s->cr, &s->ch, &s->zz, &s->mx, &s->mh, &s->T, &s->A, &s->sum,
                  &s->row, &s->tau, &s->beta, &s->X, &s->P, &s->J };
  size_t n[] = { BN, BN, BN, BN, BN, 3 * BN, 3 * BN, Bk * N, Bk * N, Bk, (size_t)k, (size_t)k * LANES, (size_t)k * LANES,
                 (size_t)(k * N * LANES), mode == 2 ? 3 * Bk * N : 1, mode == 1 ? (size_t)(N * N) : 1 };
  for (size_t i = 0; i < sizeof n / sizeof n[0]; i++)
    if (!(*f[i] = calloc(n[i], sizeof(float)))) return mg_fail(C, MG_ENOMEM, "%s: out of memory", fn);
  if (!(s->acc = calloc((size_t)k, sizeof(double)))) return mg_fail(C, MG_ENOMEM, "%s: out of memory", fn);
  return MG_OK;
}

static void free_scratch(scratch *s) {
  float *f[] = { s->h, s->cz, s->cr, s->ch, s->zz, s->mx, s->mh, s->T, s->A, s->sum, s->row,
                 s->tau, s->beta, s->X, s->P, s->J };
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
  free(s->acc);
}

/* Which way to push the tangents: explicit J when it saves work over the direct GEMM. */
static int pick_mode(int64_t N, int64_t k) {
  (void)N;
  return k >= 4 ? 1 : 2;
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
  if (mode == 0) mode = pick_mode(N, k);
  mg_no_grad_enter(C);
  for (int i = 0; i < 6 && st == MG_OK; i++) st = mg_tensor_contiguous(C, in[i], &c[i]);
  mg_no_grad_exit(C);
  int64_t ss[2] = { B, k }, hs[2] = { steps, k };
  if (st == MG_OK) st = mg_tensor_empty(C, MG_F32, 2, ss, &sum);
  if (st == MG_OK) st = mg_tensor_empty(C, MG_F32, 2, hs, &hist);
  if (st == MG_OK) st = alloc_scratch(C, fn, B, N, k, mode, &s);
  if (st != MG_OK) goto done;
  const float *xs = MG_F32P(c[0]), *Wp = MG_F32P(c[2]), *Up = MG_F32P(c[3]), *bp = MG_F32P(c[4]);
  const float *q0 = MG_F32P(c[5]);
  float *hist_p = MG_F32P(hist);
  memcpy(s.h, MG_F32P(c[1]), sizeof(float) * (size_t)(B * N));
  for (int64_t bb = 0; bb < B; bb++)                   /* T_b = Q0_b^T: tangents as rows */
    for (int64_t i = 0; i < N; i++)
      for (int64_t j = 0; j < k; j++) s.T[(bb * k + j) * N + i] = q0[(bb * N + i) * k + j];
  int64_t counted = 0, since = 0;
  for (int64_t t = 1; t <= warmup + steps && st == MG_OK; t++) {
    int64_t ti = backwards ? T - t : t - 1;
    if (mode == 2)   /* before the step overwrites h: P = T U for every trajectory at once */
      mg_gemm(MG_F32, false, false, B * k, 3 * N, N, 1, s.T, N, Up, 3 * N, 0, s.P, 3 * N);
    gru_step_f32(B, F, N, xs + ti * F, T * F, Wp, Up, bp, &s);
    for (int64_t bb = 0; bb < B; bb++) {
      const int64_t o = bb * N;
      float *Tb = s.T + bb * k * N, *Ab = s.A + bb * k * N;
      if (mode == 1) {
        form_jacobian_f32(N, Up, s.cz + o, s.cr + o, s.ch + o, s.zz + o, s.J);
        mg_gemm(MG_F32, false, false, k, N, N, 1, Tb, N, s.J, N, 0, Ab, N);
      } else {
        combine_f32(k, N, s.P + bb * k * 3 * N, Tb, s.cz + o, s.cr + o, s.ch + o, s.zz + o, Ab);
      }
    }
    bool count = t > warmup;
    if (count) counted++, since++;
    if (t % every == 0 || t == warmup + steps || t == warmup) {
      if (k < QR_BLOCKED) qr_batch_f32(B, N, k, s.A, s.X, s.tau, s.beta, count ? s.sum : NULL);
      else st = qr_lapack_f32(C, fn, B, N, k, s.A, s.tau, s.X, count ? s.sum : NULL);
      since = 0;
    }
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
