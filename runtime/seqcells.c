/*
** seqcells.c - whole LSTM and GRU layers over T steps as one recorded node each (the fused
** cells' semantics and Keras layouts, docs/cells.md): the input projection of every step is
** one GEMM over T B rows (for a narrow input, float32: made per step by the packed kernel,
** in_per_step), then per step the recurrent GEMM and the gate pass. Internally
** time-major: step t's rows are contiguous.
** Reverse rule (first order: lead 0, no tape recording): per step, backwards, the gate pass
** and the recurrent GEMM only; dX, dW and dU are then one GEMM each over all T B rows.
** Otherwise (vectorized cotangents, gradients of gradients) and for the JVP: the per-step
** cells' own rules, on one node per step built from the saved states, or, while another
** tape records, from states recomputed by recorded per-step cell ops (so that everything is
** differentiable again).
*/
#include "cells.h"

#include <stdlib.h>

/* Inputs: LSTM x h0 c0 W U b; GRU x h0 W U b. Outputs: H (B, T, u), the last states.
** Saved: the gates of every step (T, B, 4u) ([i f g o] / [z r hh m]), the states h_0..h_T
** (T + 1, B, u), x time-major (T, B, d), and for the LSTM c_0..c_T (T + 1, B, u). */
enum { QX, QH };
enum { SV_G, SV_H, SV_X, SV_C };

typedef struct seqkind {
  int op, cell_op, nin, ns;       /* ns: states (2: h, c; 1: h) */
  const mg_rules *cell;
} seqkind;

static const seqkind LSTM_SEQ = { MG_OP_LSTM_SEQ, MG_OP_LSTM_CELL, 6, 2, &mg_rules_lstm_cell };
static const seqkind GRU_SEQ = { MG_OP_GRU_SEQ, MG_OP_GRU_CELL, 5, 1, &mg_rules_gru_cell };

static void *at(mg_dtype dt, const void *p, int64_t k) {
  return (char *)p + k * (int64_t)mg_dtype_size(dt);
}

typedef struct bt_job {
  mg_dtype dt;
  int64_t B, T, n;
  const void *src;
  void *dst;
  bool back;
} bt_job;

/* Batch rows [lo, hi) of a transpose_bt. */
static void bt_rows(void *arg, int64_t lo, int64_t hi) {
  const bt_job *j = arg;
  size_t row = (size_t)j->n * mg_dtype_size(j->dt);
  for (int64_t b = lo; b < hi; b++)
    for (int64_t t = 0; t < j->T; t++) {
      int64_t bt = (b * j->T + t) * j->n, tb = (t * j->B + b) * j->n;
      memcpy(at(j->dt, j->dst, j->back ? bt : tb), at(j->dt, j->src, j->back ? tb : bt), row);
    }
}

/* dst (T, B, n) from src (B, T, n), or back when 'back'; shared over C's threads by batch
** rows (about 64K elements or more each). */
static void transpose_bt(mg_ctx *C, mg_dtype dt, int64_t B, int64_t T, int64_t n,
                         const void *src, void *dst, bool back) {
  bt_job j = { .dt = dt, .B = B, .T = T, .n = n, .src = src, .dst = dst, .back = back };
  int64_t per = T * n > 0 ? T * n : 1;
  mg_parallel_for(C, NULL, B, (((int64_t)1 << 16) + per - 1) / per, bt_rows, &j);
}

/* The checks of a sequence op: x (B, T, d) with T >= 1, then the cell's on step 0's shapes. */
static mg_status seq_check(mg_ctx *C, const seqkind *k, mg_tensor *const *in, bool ra) {
  const char *fn = mg_ops[k->op].name;
  char s[96];
  mg_tensor *x = in[QX];
  if (x->ndim != 3 || x->shape[1] < 1)
    return mg_fail(C, MG_ESHAPE, "%s: input has shape %s, expected (B, T, features), T >= 1",
                   fn, mg_shapestr(s, sizeof s, x->ndim, x->shape));
  mg_tensor x0 = *x;                             /* its shape as one step's, for the checks */
  x0.ndim = 2;
  x0.shape[1] = x->shape[2];
  int64_t u = 0;
  mg_tensor *xhWU[4] = { &x0, in[QH], in[k->ns + 1], in[k->ns + 2] };
  mg_status st = mg_cell_shapes(C, fn, xhWU, k->ns == 2 ? 4 : 3, &u);
  if (st != MG_OK) return st;
  mg_tensor *b = in[k->ns + 3];
  if (k->ns == 2) {
    if ((st = mg_cell_want2(C, fn, "c", in[2], x->shape[0], u)) != MG_OK) return st;
    if (b->ndim != 1 || b->shape[0] != 4 * u)
      return mg_fail(C, MG_ESHAPE, "%s: bias has shape %s, expected (%lld)", fn,
                     mg_shapestr(s, sizeof s, b->ndim, b->shape), (long long)(4 * u));
  } else if ((st = mg_gru_bias_check(C, fn, b, ra, u)) != MG_OK) {
    return st;
  }
  return mg_cell_same_dtype(C, fn, k->nin, in);
}

/* The buffers of a forward run: saved G (T, B, 4u), Hs and Cs (T + 1, B, u), Xt, and the
** outputs H (B, T, u), hT, cT. */
typedef struct seqrun {
  mg_tensor *sv[4], *out[3];
} seqrun;

static void run_release(seqrun *r) {
  mg_cell_release(4, r->sv);
  mg_cell_release(3, r->out);
}

static mg_status run_alloc(mg_ctx *C, const seqkind *k, mg_tensor *const *kin, seqrun *r) {
  mg_tensor *x = kin[QX];
  mg_dtype dt = x->dtype;
  int64_t B = x->shape[0], T = x->shape[1], d = x->shape[2], u = kin[QH]->shape[1];
  int64_t g[3] = { T, B, 4 * u }, hs[3] = { T + 1, B, u }, xs[3] = { T, B, d },
          os[3] = { B, T, u };
  memset(r, 0, sizeof *r);
  mg_status st = mg_tensor_empty(C, dt, 3, g, &r->sv[SV_G]);
  if (st == MG_OK) st = mg_tensor_empty(C, dt, 3, hs, &r->sv[SV_H]);
  if (st == MG_OK) st = mg_tensor_empty(C, dt, 3, xs, &r->sv[SV_X]);
  if (st == MG_OK && k->ns == 2) st = mg_tensor_empty(C, dt, 3, hs, &r->sv[SV_C]);
  if (st == MG_OK) st = mg_tensor_empty(C, dt, 3, os, &r->out[0]);
  for (int q = 0; q < k->ns && st == MG_OK; q++)
    st = mg_tensor_empty(C, dt, 2, kin[QH]->shape, &r->out[1 + q]);
  if (st != MG_OK) { run_release(r); return st; }
  size_t bu = (size_t)(B * u) * mg_dtype_size(dt);
  transpose_bt(C, dt, B, T, d, mg_tensor_data(x), mg_tensor_data(r->sv[SV_X]), false);
  memcpy(mg_tensor_data(r->sv[SV_H]), mg_tensor_data(kin[QH]), bu);
  if (k->ns == 2) memcpy(mg_tensor_data(r->sv[SV_C]), mg_tensor_data(kin[2]), bu);
  return MG_OK;
}

/* The outputs from the states: H (B, T, u) from h_1..h_T, the last states. */
static void run_outputs(mg_ctx *C, const seqkind *k, seqrun *r, int64_t B, int64_t T, int64_t u) {
  mg_dtype dt = r->out[0]->dtype;
  size_t bu = (size_t)(B * u) * mg_dtype_size(dt);
  char *Hs = mg_tensor_data(r->sv[SV_H]);
  transpose_bt(C, dt, B, T, u, at(dt, Hs, B * u), mg_tensor_data(r->out[0]), true);
  memcpy(mg_tensor_data(r->out[1]), at(dt, Hs, T * B * u), bu);
  if (k->ns == 2) memcpy(mg_tensor_data(r->out[2]), at(dt, mg_tensor_data(r->sv[SV_C]), T * B * u), bu);
}

/* The packings of a sequence's recurrent products, made once per sequence (smallgemm.h): for
** float32 only (NULL otherwise, or when out of memory: then BLAS). Forward: U (LSTM), or the
** GRU's U[:, :3u or 2u] and U_h; 'rev': their transposes. Free with packs_free. */
static const mg_packed *packs(mg_ctx *C, const seqkind *k, mg_dtype dt, const float *U,
                              int64_t u, bool ra, bool rev, mg_packed *P) {
  mg_pool *pool = C->pool;
  memset(P, 0, 2 * sizeof *P);
  if (dt != MG_F32) return NULL;
  bool ok;
  if (k->ns == 2) {
    ok = rev ? mg_pack(&P[0], pool, U, 4 * u, true, 4 * u, u) : mg_pack(&P[0], pool, U, 4 * u, false, u, 4 * u);
  } else {
    int64_t n = ra ? 3 * u : 2 * u;
    ok = rev ? mg_pack(&P[0], pool, U, 3 * u, true, n, u) : mg_pack(&P[0], pool, U, 3 * u, false, u, n);
    if (ok && !ra) ok = mg_pack(&P[1], pool, U + 2 * u, 3 * u, rev, u, u);
  }
  if (!ok) { mg_pack_free(&P[0]); mg_pack_free(&P[1]); return NULL; }
  return P;
}

static void packs_free(mg_packed *P) {
  mg_pack_free(&P[0]);
  mg_pack_free(&P[1]);
}

/* ================================================================ recurrences over rows */

/* Row b of h_t depends on row b of h_(t-1) only, so a pass over the T steps (forward: the
** recurrent product and the gates; reverse: the gates' cotangents and the product with U')
** splits over batch rows with no synchronisation per step: each thread runs the whole time
** loop for its block of rows (a multiple of ROWBLK rows but for the last one), every row computed as on one thread: the packed kernel computes a row the same in
** any block of rows, but BLAS's result can depend on the rows of the call (OpenBLAS picks
** another kernel for a small product), so without the packed kernel the recurrent products
** go to BLAS ROWBLK rows at a time, the same calls whatever the thread count. The GEMMs over
** all T B rows are shared out by mg_gemm_par. */
enum { ROWBLK = 8, SHARE_MIN = 1024 };

typedef struct seqpass {
  const seqkind *k;
  mg_dtype dt;
  int64_t T, B, u;
  int64_t t0, t1;                 /* LSTM reverse: the steps of this chunk (dZ holds them) */
  bool ra, need_h0;
  const mg_packed *P;
  const mg_packed *PW;            /* forward: W packed, x_t W made per step (in_per_step); */
  int64_t d;                      /* LSTM: [W; U] packed (d + u rows), one product per step */
  float *XH;                      /* forward, LSTM with PW: [x_t h_t] rows (B, d + u) */
  const char *X;                  /* forward: x time-major (T B, d) */
  const void *U, *b, *gH;         /* gH: the cotangent of H (B, T, u) or NULL */
  char *G, *Hs, *Cs, *M;          /* saved gates, states; GRU: x W (forward) */
  char *dZ, *dmx, *dmh;           /* reverse: per-step cotangents (T B rows) */
  char *s[2], *c[2], *drh;        /* reverse: running state cotangents (B, u), scratch */
  const volatile sig_atomic_t *intr;
  int nt;
  int64_t step;                   /* rows per recurrent product: B packed, else ROWBLK */
} seqpass;

static bool pass_stopped(const seqpass *p) {
  return p->intr != NULL && __atomic_load_n(p->intr, __ATOMIC_RELAXED) != 0;
}

/* The rows of share 'k' of 'nt'. */
static void pass_rows(const seqpass *p, int64_t k, int64_t *lo, int64_t *hi) {
  int64_t nb = (p->B + ROWBLK - 1) / ROWBLK;
  *lo = nb * k / p->nt * ROWBLK;
  *hi = nb * (k + 1) / p->nt * ROWBLK;
  if (*hi > p->B) *hi = p->B;
}

/* dh[lo, hi) += g[lo:hi, t, :] for a (B, T, u) cotangent g: one typed loop per dtype, so
** that it vectorizes (MG_CLONES). */
#define ADD_STEP(TY) do {                                                          \
    for (int64_t b = lo; b < hi; b++) {                                            \
      TY *restrict d = (TY *)dh + b * u;                                           \
      const TY *restrict s = (const TY *)g + (b * T + t) * u;                      \
      for (int64_t j = 0; j < u; j++) d[j] += s[j];                                \
    }                                                                              \
  } while (0)
MG_CLONES static void add_step_f32(int64_t lo, int64_t hi, int64_t T, int64_t u, int64_t t,
                                   const float *g, float *dh) { ADD_STEP(float); }
MG_CLONES static void add_step_f64(int64_t lo, int64_t hi, int64_t T, int64_t u, int64_t t,
                                   const double *g, double *dh) { ADD_STEP(double); }
static void add_step(mg_dtype dt, int64_t lo, int64_t hi, int64_t T, int64_t u, int64_t t,
                     const void *g, void *dh) {
  if (dt == MG_F64) add_step_f64(lo, hi, T, u, t, g, dh);
  else add_step_f32(lo, hi, T, u, t, g, dh);
}

/* Step t of the forward pass over rows [lo, hi). With PW, x_t W first: into the step's gates
** (LSTM), or into the rows [lo, hi) of the GRU's (B, 3u) M. */
static void forward_step(const seqpass *p, int64_t t, int64_t lo, int64_t hi) {
  mg_dtype dt = p->dt;
  int64_t u = p->u, B = p->B, bu = B * u;
  char *Gt = at(dt, p->G, t * B * 4 * u), *h = at(dt, p->Hs, t * bu);
  char *hn = at(dt, p->Hs, (t + 1) * bu);
  char *Mt = p->M ? at(dt, p->M, (p->PW ? lo : t * B + lo) * 3 * u) : NULL;
  if (p->PW && p->k->ns == 2) {                  /* z = [x_t h_t] [W; U]: one product */
    int64_t d = p->d, kw = d + u;
    float *a = p->XH + lo * kw;
    for (int64_t r = lo; r < hi; r++, a += kw) {
      memcpy(a, at(dt, p->X, (t * B + r) * d), (size_t)d * sizeof *a);
      memcpy(a + d, at(dt, h, r * u), (size_t)u * sizeof *a);
    }
    mg_gemm_packed(p->PW, hi - lo, p->XH + lo * kw, kw, 0, (float *)at(dt, Gt, lo * 4 * u), 4 * u);
    void *c = at(dt, p->Cs, t * bu), *cn = at(dt, p->Cs, (t + 1) * bu);
    mg_lstm_gates_f32(lo, hi, u, (float *)Gt, p->b, c, cn, (float *)hn);
    return;
  }
  if (p->PW)
    mg_gemm_packed(p->PW, hi - lo, (const float *)at(dt, p->X, (t * B + lo) * p->d), p->d, 0,
                   (float *)Mt, 3 * u);
  if (p->k->ns == 2) {
    void *c = at(dt, p->Cs, t * bu), *cn = at(dt, p->Cs, (t + 1) * bu);
    if (dt == MG_F32 && mg_lstm_step_small(p->P, lo, hi, u, (float *)Gt, (float *)h, p->U, p->b,
                                           c, cn, (float *)hn))
      return;
    mg_rec_gemm(dt, p->P, false, hi - lo, 4 * u, u, at(dt, h, lo * u), u, p->U, 4 * u, 1,
                at(dt, Gt, lo * 4 * u), 4 * u);
    if (dt == MG_F64) mg_lstm_gates_f64(lo, hi, u, (double *)Gt, p->b, c, cn, (double *)hn);
    else if (mg_lstm_small(u)) mg_lstm_gates_small(lo, hi, u, (float *)Gt, p->b, c, cn, (float *)hn);
    else mg_lstm_gates_f32(lo, hi, u, (float *)Gt, p->b, c, cn, (float *)hn);
  } else {
    mg_gru_step_forward(dt, hi - lo, u, p->ra, p->U, p->P, p->b, at(dt, h, lo * u), Mt,
                        at(dt, Gt, lo * 4 * u), at(dt, hn, lo * u));
  }
}

static void forward_rows(void *arg, int64_t k0, int64_t k1) {
  const seqpass *p = arg;
  int64_t lo, hi;
  for (int64_t k = k0; k < k1; k++) {
    pass_rows(p, k, &lo, &hi);
    for (int64_t t = 0; t < p->T && hi > lo && !pass_stopped(p); t++)
      for (int64_t r = lo; r < hi; r += p->step)
        forward_step(p, t, r, hi - r < p->step ? hi : r + p->step);
  }
}

/* Step t of the reverse over rows [lo, hi), the running cotangents in s[cur] / c[cur]. */
static void reverse_step(const seqpass *p, int64_t t, int cur, int64_t lo, int64_t hi) {
  mg_dtype dt = p->dt;
  int64_t u = p->u, B = p->B, T = p->T, bu = B * u;
  char *dh = p->s[p->k->ns == 2 ? 0 : cur];
  if (p->gH) add_step(dt, lo, hi, T, u, t, p->gH, dh);
  if (p->k->ns == 1) {
    mg_gru_step_reverse(dt, hi - lo, u, p->ra, p->U, p->P, at(dt, p->G, (t * B + lo) * 4 * u),
                        at(dt, p->Hs, t * bu + lo * u), at(dt, dh, lo * u),
                        at(dt, p->dmx, (t * B + lo) * 3 * u),
                        at(dt, p->dmh, (t * B + lo) * 3 * u),
                        at(dt, p->drh, lo * u), at(dt, p->s[!cur], lo * u));
    return;
  }
  void *Gt = at(dt, p->G, t * B * 4 * u), *dzt = at(dt, p->dZ, (t - p->t0) * B * 4 * u);
  void *c = at(dt, p->Cs, t * bu), *cn = at(dt, p->Cs, (t + 1) * bu);
  if (dt == MG_F64)
    mg_lstm_dz_f64(lo, hi, u, Gt, c, cn, (double *)dh, (double *)p->c[cur], dzt,
                   (double *)p->c[!cur]);
  else if (mg_lstm_small(u))
    mg_lstm_dz_small(lo, hi, u, Gt, c, cn, (float *)dh, (float *)p->c[cur], dzt,
                     (float *)p->c[!cur]);
  else
    mg_lstm_dz_f32(lo, hi, u, Gt, c, cn, (float *)dh, (float *)p->c[cur], dzt,
                   (float *)p->c[!cur]);
  if (t > 0 || p->need_h0)
    mg_rec_gemm(dt, p->P, true, hi - lo, u, 4 * u, at(dt, dzt, lo * 4 * u), 4 * u, p->U,
                4 * u, 0, at(dt, dh, lo * u), u);
}

/* The reverse over the steps [t0, t1), backwards. LSTM: into dZ (its first row block is step
** t0's); s[0] holds the running dh, the running dc alternates between c[0] (on entry) and
** c[1] (c[(t1 - t0) % 2] at the end). GRU (t0 = 0, t1 = T): the running dh alternates between
** s[0] and s[1] (s[T % 2] at the end). */
static void reverse_rows(void *arg, int64_t k0, int64_t k1) {
  const seqpass *p = arg;
  int64_t lo, hi;
  for (int64_t k = k0; k < k1; k++) {
    pass_rows(p, k, &lo, &hi);
    int cur = 0;
    for (int64_t t = p->t1 - 1; t >= p->t0 && hi > lo && !pass_stopped(p); t--, cur = !cur)
      for (int64_t r = lo; r < hi; r += p->step)
        reverse_step(p, t, cur, r, hi - r < p->step ? hi : r + p->step);
  }
}

/* Run one pass: a share of row blocks per thread, then "<op>: interrupted!" if Ctrl-C came
** (the range functions stop at the next step once the flag is set). */
static mg_status run_pass(mg_ctx *C, const char *op, seqpass *p, mg_range_fn fn) {
  int64_t nb = (p->B + ROWBLK - 1) / ROWBLK;
  p->intr = C->interrupt;
  p->step = p->P && mg_packed_available() ? p->B : ROWBLK;
  p->nt = nb < C->nthreads ? (int)nb : C->nthreads;
  /* Each share at least SHARE_MIN gate values a step: below that the threads' rows share cache
  ** lines every step and a second thread costs more than it saves (the 6-unit LSTM step at
  ** B = 16: 0.18 ms on one thread, 0.36 ms split over two). The rows' numbers do not depend on
  ** the share. */
  int64_t gates = (p->k->ns == 2 ? 4 : 3) * p->u;
  while (p->nt > 1 && nb / p->nt * ROWBLK * gates < SHARE_MIN) p->nt--;
  if (p->nt < 1) p->nt = 1;
  mg_status st = mg_parallel_for(C, NULL, p->nt, 1, fn, p);
  return st == MG_OK ? mg_poll(C, op) : st;
}

/* Whether the forward pass makes x_t W at each step through the packed kernel (float32, the
** kernel available: the caller has P) instead of one GEMM over all T B rows first: when the
** packed W is at most 512 KiB (a narrow input: d = 8 at 512 units, or the char-LSTM's 64-wide
** embedding at 512 units), the product over all rows is a K = d GEMM that only writes memory
** (the GRU's x W of a 512-unit layer, T B = 1600: a 9.8 MB buffer, the LSTM's gates 13 MB,
** written twice, BLAS zeroing it first, and read back), while per step it is made in cache
** just before the step reads it. At 512 KiB against 64 KiB: the char-LSTM step at 512 units
** 224.3 -> 221.5 ms (medians of 6 A/B runs, best 215.6 -> 210.0, at load 4), the same bits;
** all of a 4 MiB W (the second layer) per step measured no faster. Not for an LSTM with few
** units (mg_lstm_few_units: seqsmall.c's step takes x W from the product over all rows),
** whether or not mg_lstm_small_max has switched seqsmall.c off: its step adds h U onto BLAS's
** x W in the packed kernel's order, and the per-row path then does the same (the one GEMM,
** then mg_rec_gemm with beta = 1), so that the switch leaves every bit as it was under any
** BLAS kernel. (With x W per step here, the per-row path summed x_t W in order from zero and
** the seqsmall.c one took BLAS's sum of the same d products: the same bits under OpenBLAS's
** SkylakeX kernels, not under its Haswell ones, whose order depends on the row's place in the
** call.) float32 rounding: the packed kernel sums the d products in order, BLAS in its own. */
static bool in_per_step(const seqkind *k, int64_t d, int64_t u) {
  int64_t gw = (k->ns == 2 ? 4 : 3) * u, panels = (gw + 31) / 32;
  if (!mg_packed_available() || (k->ns == 2 && mg_lstm_few_units(u))) return false;
  return d * panels * 32 * (int64_t)sizeof(float) <= ((int64_t)512 << 10);
}

/* The packing of a per-step input projection (in_per_step): the GRU's W; the LSTM's [W; U]
** ((d + u) rows, copied into *WU), so that z = [x_t h_t] [W; U] is one product per step,
** its rows assembled in *XH (B, d + u). The same sums bit for bit as x_t W and then h_t U
** accumulated into it: each element's d + u products in order, from zero. False when out of
** memory (nothing to free: the caller then takes the product over all rows). */
static bool pack_step_x(mg_ctx *C, const seqkind *k, mg_tensor *W, mg_tensor *U, int64_t B,
                        mg_tensor **WU, mg_tensor **XH, mg_packed *pw) {
  int64_t d = W->shape[0], n = W->shape[1], u = U->shape[0];
  const float *src = mg_tensor_data(W);
  if (k->ns == 2) {
    int64_t ws[2] = { d + u, n }, xs[2] = { B, d + u };
    if (mg_tensor_empty(C, MG_F32, 2, ws, WU) != MG_OK ||
        mg_tensor_empty(C, MG_F32, 2, xs, XH) != MG_OK) {
      mg_tensor_release(*WU);
      *WU = NULL;
      return false;
    }
    float *wu = mg_tensor_data(*WU);
    memcpy(wu, src, (size_t)(d * n) * sizeof *wu);
    memcpy(wu + d * n, mg_tensor_data(U), (size_t)(u * n) * sizeof *wu);
    src = wu;
    d += u;
  }
  if (mg_pack(pw, C->pool, src, n, false, d, n)) return true;
  mg_tensor_release(*WU);
  mg_tensor_release(*XH);
  *WU = *XH = NULL;
  return false;
}

/* Runs the sequence, records it, hands out the outputs (H, hT [, cT]). */
static mg_status seq_forward(mg_ctx *C, const seqkind *k, mg_tensor *const *in, bool ra,
                             mg_tensor **outs) {
  mg_tensor *kin[6];
  const char *fn = mg_ops[k->op].name;
  mg_status st = seq_check(C, k, in, ra);
  if (st != MG_OK || (st = mg_cell_contiguous(C, k->nin, in, kin)) != MG_OK) return st;
  seqrun r;
  if ((st = run_alloc(C, k, kin, &r)) != MG_OK) { mg_cell_release(k->nin, kin); return st; }
  mg_tensor *x = kin[QX], *W = kin[k->ns + 1], *U = kin[k->ns + 2], *b = kin[k->ns + 3];
  mg_dtype dt = x->dtype;
  int64_t B = x->shape[0], T = x->shape[1], d = x->shape[2], u = kin[QH]->shape[1];
  int64_t gw = k->ns == 2 ? 4 * u : 3 * u;
  char *G = mg_tensor_data(r.sv[SV_G]), *Hs = mg_tensor_data(r.sv[SV_H]);
  mg_packed pk[2], pw = { 0 };
  const mg_packed *P = packs(C, k, dt, mg_tensor_data(U), u, ra, false, pk);
  mg_tensor *M = NULL;                            /* GRU: x W of every step, or of one */
  mg_tensor *XH = NULL, *WU = NULL;               /* LSTM per step: rows [x_t h_t], [W; U] */
  bool step_x = P && in_per_step(k, d, u) && pack_step_x(C, k, W, U, B, &WU, &XH, &pw);
  int64_t ms[2] = { step_x ? B : T * B, 3 * u };
  if (k->ns == 1) st = mg_tensor_empty(C, dt, 2, ms, &M);
  if (st == MG_OK && !step_x)                     /* the input projection of all steps */
    mg_gemm_par(C, dt, false, false, T * B, gw, d, 1, mg_tensor_data(r.sv[SV_X]), d,
            mg_tensor_data(W), gw, 0, k->ns == 2 ? G : mg_tensor_data(M), gw);
  if (st == MG_OK) {
    seqpass p = { .k = k, .dt = dt, .T = T, .B = B, .u = u, .ra = ra, .P = P,
                  .PW = step_x ? &pw : NULL, .d = d, .X = mg_tensor_data(r.sv[SV_X]),
                  .U = mg_tensor_data(U), .b = mg_tensor_data(b), .G = G, .Hs = Hs,
                  .Cs = k->ns == 2 ? mg_tensor_data(r.sv[SV_C]) : NULL,
                  .M = M ? mg_tensor_data(M) : NULL, .XH = XH ? mg_tensor_data(XH) : NULL };
    st = run_pass(C, fn, &p, forward_rows);
  }
  if (step_x) mg_pack_free(&pw);
  packs_free(pk);
  mg_tensor_release(M);
  mg_tensor_release(XH);
  mg_tensor_release(WU);
  if (st == MG_OK) {
    run_outputs(C, k, &r, B, T, u);
    if (mg_recording(C)) {
      mg_attr a = { .ni = 1, .i = { ra } };
      st = mg_record(C, k->op, k->nin, in, 1 + k->ns, r.out, k->ns == 2 ? 4 : 3, r.sv, &a);
    }
  }
  mg_cell_release(k->nin, kin);
  if (st == MG_OK)
    for (int q = 0; q <= k->ns; q++) { outs[q] = r.out[q]; r.out[q] = NULL; }
  run_release(&r);
  return st;
}

mg_status mg_lstm_seq(mg_ctx *C, mg_tensor *x, mg_tensor *h0, mg_tensor *c0, mg_tensor *W,
                      mg_tensor *U, mg_tensor *b, mg_tensor **H, mg_tensor **h_out,
                      mg_tensor **c_out) {
  mg_tensor *in[6] = { x, h0, c0, W, U, b }, *out[3];
  mg_status st = seq_forward(C, &LSTM_SEQ, in, false, out);
  if (st != MG_OK) return st;
  *H = out[0];
  *h_out = out[1];
  *c_out = out[2];
  return MG_OK;
}

mg_status mg_gru_seq(mg_ctx *C, mg_tensor *x, mg_tensor *h0, mg_tensor *W, mg_tensor *U,
                     mg_tensor *b, bool reset_after, mg_tensor **H, mg_tensor **h_out) {
  mg_tensor *in[5] = { x, h0, W, U, b }, *out[2];
  mg_status st = seq_forward(C, &GRU_SEQ, in, reset_after, out);
  if (st != MG_OK) return st;
  *H = out[0];
  *h_out = out[1];
  return MG_OK;
}

/* ================================================================ fused reverse */

/* The running state cotangent: a copy of 'g' (B, u) or zeros. New reference. */
static mg_status state_seed(mg_ctx *C, mg_tensor *g, const mg_tensor *like, mg_tensor **out) {
  mg_status st = mg_tensor_zeros(C, like->dtype, 2, like->shape, out);
  if (st == MG_OK && g)
    memcpy(mg_tensor_data(*out), mg_tensor_data(g), (size_t)(like->shape[0] * like->shape[1]) *
           mg_dtype_size(like->dtype));
  return st;
}

/* gin[QX] (B, T, d) from the time-major dXt, computed by 'gx' into a (T B, d) buffer. */
static mg_status batch_major(mg_ctx *C, mg_tensor *dXt, int64_t B, int64_t T, mg_tensor **out) {
  int64_t d = dXt->shape[1], sh[3] = { B, T, d };
  mg_status st = mg_tensor_empty(C, dXt->dtype, 3, sh, out);
  if (st == MG_OK) transpose_bt(C, dXt->dtype, B, T, d, mg_tensor_data(dXt), mg_tensor_data(*out), true);
  return st;
}

/* The steps of one chunk of the LSTM's reverse: dZ is kept for a chunk only (about 1 MiB,
** and at least 256 rows for the weight GEMMs), not for the whole sequence. */
static int64_t chunk_steps(mg_dtype dt, int64_t T, int64_t B, int64_t u) {
  int64_t by_bytes = ((int64_t)1 << 20) / (B * 4 * u * (int64_t)mg_dtype_size(dt));
  int64_t by_rows = (256 + B - 1) / B, n = by_bytes > by_rows ? by_bytes : by_rows;
  return n < T ? n : T;
}

/* A chunk's dX = dZ W' through the packed kernel (W' packed once per reverse), over rows
** [lo, hi) of the chunk: each row's sums are the same in any share of rows. */
typedef struct dx_job {
  const mg_packed *P;
  const float *dz;
  float *dx;
  int64_t g, d;
} dx_job;

static void dx_rows(void *arg, int64_t lo, int64_t hi) {
  const dx_job *j = arg;
  mg_gemm_packed(j->P, hi - lo, j->dz + lo * j->g, j->g, 0, j->dx + lo * j->d, j->d);
}

/* The LSTM's: per step backwards dz_t and dh_(t-1) = dz_t U', dc_(t-1); then, per chunk of
** steps, dX = dZ W', dW += Xt' dZ, dU += H_(t-1)' dZ, db += the column sums of dZ. dX goes
** through the packed kernel (float32, with P) instead of BLAS, which packs W' again for every
** chunk (at 512 units, B = 32: 4 MiB for a 256-row chunk, ~120 GFLOP/s against ~150). */
static mg_status lstm_seq_vjp_fused(mg_ctx *C, const mg_node *n, mg_tensor *const *gk,
                                    const bool *need, mg_tensor **gin) {
  mg_tensor *W = n->in[3], *U = n->in[4], *k[2] = { NULL }, *wu[2] = { W, U };
  mg_status st = mg_cell_contiguous(C, 2, wu, k);
  if (st != MG_OK) return st;
  mg_tensor *X = n->saved[SV_X], *G = n->saved[SV_G], *Hs = n->saved[SV_H], *Cs = n->saved[SV_C];
  mg_dtype dt = X->dtype;
  int64_t T = X->shape[0], B = X->shape[1], d = X->shape[2], u = Hs->shape[2];
  int64_t Tc = chunk_steps(dt, T, B, u), zs[2] = { Tc * B, 4 * u }, g4 = 4 * u;
  int64_t xs[2] = { T * B, d }, ws[2] = { d, 4 * u }, us[2] = { u, 4 * u };
  mg_tensor *dZ = NULL, *dh = NULL, *dc = NULL, *dc2 = NULL, *tmp = NULL, *bs = NULL;
  const mg_tensor *h0 = n->in[QH];
  if ((st = mg_tensor_empty(C, dt, 2, zs, &dZ)) == MG_OK &&
      (st = state_seed(C, gk[1], h0, &dh)) == MG_OK && (st = state_seed(C, gk[2], h0, &dc)) == MG_OK)
    st = mg_tensor_empty(C, dt, 2, h0->shape, &dc2);
  if (st == MG_OK && need[QX]) st = mg_tensor_empty(C, dt, 2, xs, &tmp);
  if (st == MG_OK && need[3]) st = mg_tensor_empty(C, dt, 2, ws, &gin[3]);
  if (st == MG_OK && need[4]) st = mg_tensor_empty(C, dt, 2, us, &gin[4]);
  if (st == MG_OK && need[5] && (st = mg_tensor_empty(C, dt, 1, &g4, &gin[5])) == MG_OK)
    st = mg_tensor_empty(C, dt, 1, &g4, &bs);
  mg_packed pk[2];
  const mg_packed *P = st == MG_OK ? packs(C, &LSTM_SEQ, dt, mg_tensor_data(k[1]), u, false, true, pk) : NULL;
  mg_packed pw = { 0 };
  bool dx_packed = P && tmp && mg_packed_available() &&
                   mg_pack(&pw, C->pool, mg_tensor_data(k[0]), 4 * u, true, 4 * u, d);
  seqpass p = { .k = &LSTM_SEQ, .dt = dt, .T = T, .B = B, .u = u, .need_h0 = need[QH], .P = P,
                .U = mg_tensor_data(k[1]), .gH = gk[0] ? mg_tensor_data(gk[0]) : NULL,
                .G = mg_tensor_data(G), .Cs = mg_tensor_data(Cs), .dZ = mg_tensor_data(dZ),
                .s = { mg_tensor_data(dh) } };
  for (int64_t t1 = T; t1 > 0 && st == MG_OK; t1 -= Tc) {
    int64_t t0 = t1 > Tc ? t1 - Tc : 0, R = (t1 - t0) * B, r0 = t0 * B;
    int beta = t1 < T;                            /* the weight gradients: summed over chunks */
    p.t0 = t0;
    p.t1 = t1;
    p.c[0] = mg_tensor_data(dc);
    p.c[1] = mg_tensor_data(dc2);
    if ((st = run_pass(C, mg_ops[LSTM_SEQ.op].name, &p, reverse_rows)) != MG_OK) break;
    if ((t1 - t0) % 2) { mg_tensor *sw = dc; dc = dc2; dc2 = sw; }
    void *dz = mg_tensor_data(dZ);             /* the chunk's products and bias sums at once */
    mg_gemm_plan pl[3];
    mg_colsum_spec cs = { .dt = dt, .rows = R, .n = 4 * u, .ld = 4 * u, .a = dz,
                          .out = gin[5] ? mg_tensor_data(beta ? bs : gin[5]) : NULL };
    int np = 0;
    if (gin[4])                                   /* the largest first: the blocks balance */
      mg_gemm_plan_make(&pl[np++], dt, true, false, u, 4 * u, R, 1, at(dt, mg_tensor_data(Hs), r0 * u),
                        u, dz, 4 * u, beta, mg_tensor_data(gin[4]), 4 * u);
    if (dx_packed) {
      dx_job xj = { &pw, dz, (float *)mg_tensor_data(tmp) + r0 * d, 4 * u, d };
      mg_parallel_for(C, NULL, R, 64, dx_rows, &xj);
    } else if (tmp) {
      mg_gemm_plan_make(&pl[np++], dt, false, true, R, d, 4 * u, 1, dz, 4 * u, mg_tensor_data(k[0]),
                        4 * u, 0, at(dt, mg_tensor_data(tmp), r0 * d), d);
    }
    if (gin[3] && gin[5] && dt == MG_F32 && mg_xsum_available(d)) {   /* a narrow input's dW */
      cs.x = (const float *)mg_tensor_data(X) + r0 * d;                 /* with the bias sums */
      cs.d = cs.ldx = d;
      cs.gw = mg_tensor_data(gin[3]);
      cs.ldw = 4 * u;
      cs.beta = beta;
    } else if (gin[3]) {
      mg_gemm_plan_make(&pl[np++], dt, true, false, d, 4 * u, R, 1, at(dt, mg_tensor_data(X), r0 * d),
                        d, dz, 4 * u, beta, mg_tensor_data(gin[3]), 4 * u);
    }
    mg_grads_par(C, np, pl, gin[5] ? 1 : 0, &cs);
    if (gin[5]) {
      void *db = mg_tensor_data(gin[5]), *part = mg_tensor_data(bs);
      for (int64_t j = 0; beta && j < 4 * u; j++)
        if (dt == MG_F64) ((double *)db)[j] += ((double *)part)[j];
        else ((float *)db)[j] += ((float *)part)[j];
    }
  }
  if (P) packs_free(pk);
  if (dx_packed) mg_pack_free(&pw);
  if (st == MG_OK && tmp) st = batch_major(C, tmp, B, T, &gin[QX]);
  if (st == MG_OK && need[QH]) { gin[QH] = dh; dh = NULL; }
  if (st == MG_OK && need[2]) { gin[2] = dc; dc = NULL; }
  if (st != MG_OK)
    for (int i = 3; i < 6; i++) { mg_tensor_release(gin[i]); gin[i] = NULL; }
  mg_tensor *rel[6] = { dZ, dh, dc, dc2, tmp, bs };
  mg_cell_release(6, rel);
  mg_cell_release(2, k);
  return st;
}

/* The GRU's: per step backwards the gate passes and the recurrent GEMMs (mg_gru_step_reverse)
** into dMX, dMH (T B, 3u); then the weight gradients over all rows (mg_gru_weight_grads). */
static mg_status gru_seq_vjp_fused(mg_ctx *C, const mg_node *n, mg_tensor *const *gk,
                                   const bool *need, mg_tensor **gin) {
  mg_tensor *wu[2] = { n->in[2], n->in[3] }, *k[2] = { NULL };
  mg_status st = mg_cell_contiguous(C, 2, wu, k);
  if (st != MG_OK) return st;
  mg_tensor *X = n->saved[SV_X], *S = n->saved[SV_G], *Hs = n->saved[SV_H];
  mg_dtype dt = X->dtype;
  bool ra = n->attr.i[0] != 0, need4[4] = { need[QX], need[2], need[3], need[4] };
  int64_t T = X->shape[0], B = X->shape[1], d = X->shape[2], u = Hs->shape[2];
  mg_tensor *dmx = NULL, *dmh = NULL, *g[4] = { NULL }, *dh = NULL, *dh2 = NULL, *drh = NULL;
  const mg_tensor *h0 = n->in[QH];
  st = mg_gru_grad_buffers(C, dt, T * B, d, u, ra, need4, &dmx, &dmh, g);
  if (st == MG_OK && (st = state_seed(C, gk[1], h0, &dh)) == MG_OK &&
      (st = mg_tensor_empty(C, dt, 2, h0->shape, &dh2)) == MG_OK)
    st = mg_tensor_empty(C, dt, 2, h0->shape, &drh);
  mg_packed pk[2];
  const mg_packed *P = st == MG_OK ? packs(C, &GRU_SEQ, dt, mg_tensor_data(k[1]), u, ra, true, pk) : NULL;
  if (st == MG_OK) {
    seqpass p = { .k = &GRU_SEQ, .dt = dt, .T = T, .B = B, .u = u, .t1 = T, .ra = ra, .P = P,
                  .U = mg_tensor_data(k[1]), .gH = gk[0] ? mg_tensor_data(gk[0]) : NULL,
                  .G = mg_tensor_data(S), .Hs = mg_tensor_data(Hs), .dmx = mg_tensor_data(dmx),
                  .dmh = mg_tensor_data(dmh), .s = { mg_tensor_data(dh), mg_tensor_data(dh2) },
                  .drh = mg_tensor_data(drh) };
    st = run_pass(C, mg_ops[GRU_SEQ.op].name, &p, reverse_rows);
    if (T % 2) { mg_tensor *sw = dh; dh = dh2; dh2 = sw; }
  }
  if (P) packs_free(pk);
  if (st == MG_OK) {
    mg_gru_weight_grads(C, dt, T * B, d, u, ra, mg_tensor_data(X), mg_tensor_data(Hs),
                        mg_tensor_data(S), mg_tensor_data(k[0]), mg_tensor_data(dmx),
                        mg_tensor_data(dmh), g);
    if (need[QX]) st = batch_major(C, g[0], B, T, &gin[QX]);
    for (int i = 1; i < 4; i++) { gin[i + 1] = g[i]; g[i] = NULL; }
    if (need[QH]) { gin[QH] = dh; dh = NULL; }
  }
  mg_tensor *rel[5] = { dmx, dmh, dh, dh2, drh };
  mg_cell_release(5, rel);
  mg_cell_release(4, g);
  mg_cell_release(2, k);
  return st;
}

/* ================================================================ per-step rules */

/* One node per step with the cell's layout: saved views when nothing records, else inputs
** and states recomputed by recorded ops (the per-step cells, selects of x). */
typedef struct steps {
  int64_t T;
  int nin;
  mg_node *nd;
  mg_tensor **in;                 /* T nin references */
} steps;

static void steps_free(steps *s) {
  for (int64_t t = 0; s->nd && t < s->T; t++) {
    mg_cell_release(s->nin, s->in + t * s->nin);
    mg_cell_release(MG_MAXOUT, s->nd[t].out);
    mg_cell_release(MG_MAXSAVED, s->nd[t].saved);
  }
  free(s->nd);
  free(s->in);
}

static mg_status steps_build(mg_ctx *C, const mg_node *n, const seqkind *k, steps *s) {
  int64_t T = n->in[QX]->shape[1];
  bool live = mg_recording(C), ra = n->attr.i[0] != 0;
  s->T = T;
  s->nin = k->nin;
  s->nd = calloc((size_t)T, sizeof *s->nd);
  s->in = calloc((size_t)(T * k->nin), sizeof *s->in);
  if (!s->nd || !s->in) { steps_free(s); s->nd = NULL; s->in = NULL;
                          return mg_fail(C, MG_ENOMEM, "%s: out of memory", mg_ops[k->op].name); }
  mg_status st = MG_OK;
  mg_tensor *state[2] = { n->in[QH], k->ns == 2 ? n->in[2] : NULL };
  for (int64_t t = 0; t < T && st == MG_OK; t++) {
    mg_node *nd = &s->nd[t];
    mg_tensor **in = s->in + t * k->nin;
    nd->op = k->cell_op;
    nd->nin = k->nin;
    nd->nout = k->ns;
    nd->nsaved = 1;
    nd->in = in;
    nd->attr = n->attr;
    for (int i = k->ns + 1; i < k->nin; i++) in[i] = mg_tensor_retain(n->in[i]);
    st = mg_tensor_select(C, n->in[QX], 1, t, &in[QX]);
    if (st == MG_OK) st = mg_tensor_select(C, n->saved[SV_G], 0, t, &nd->saved[0]);
    for (int q = 0; q < k->ns && st == MG_OK; q++) {
      in[1 + q] = mg_tensor_retain(state[q]);
      if (!live) st = mg_tensor_select(C, n->saved[q == 0 ? SV_H : SV_C], 0, t + 1, &nd->out[q]);
    }
    if (st == MG_OK && live)
      st = k->ns == 2 ? mg_lstm_cell(C, in[QX], in[1], in[2], in[3], in[4], in[5], &nd->out[0], &nd->out[1])
                      : mg_gru_cell(C, in[QX], in[1], in[2], in[3], in[4], ra, &nd->out[0]);
    for (int q = 0; q < k->ns && st == MG_OK; q++) state[q] = nd->out[q];
  }
  if (st != MG_OK) { steps_free(s); s->nd = NULL; s->in = NULL; }
  return st;
}

/* Replace '*acc' by *acc + v (either may be NULL); takes over 'v'. */
static mg_status accumulate(mg_ctx *C, mg_tensor **acc, mg_tensor *v) {
  if (v == NULL) return MG_OK;
  if (*acc == NULL) { *acc = v; return MG_OK; }
  mg_tensor *s = NULL;
  mg_status st = mg_tensor_binary(C, MG_B_ADD, *acc, v, &s);
  mg_tensor_release(v);
  mg_tensor_release(*acc);
  *acc = s;
  return st;
}

/* Stack the T per-step results along 'dim' (zeros for NULL ones; all NULL: NULL). Takes
** over the references in 'ts'. */
static mg_status stack_steps(mg_ctx *C, int64_t T, mg_tensor **ts, int dim, mg_tensor **out) {
  mg_tensor *like = NULL;
  mg_status st = MG_OK;
  for (int64_t t = 0; t < T && !like; t++) like = ts[t];
  for (int64_t t = 0; like && t < T && st == MG_OK; t++)
    if (ts[t] == NULL) st = mg_tensor_zeros(C, like->dtype, like->ndim, like->shape, &ts[t]);
  if (like && st == MG_OK) st = mg_tensor_stack(C, (int)T, ts, dim, out);
  mg_cell_release((int)T, ts);
  return st;
}

static mg_status seq_vjp_steps(mg_ctx *C, const mg_node *n, const seqkind *k, int lead,
                               mg_tensor *const *g, const bool *need, mg_tensor **gin) {
  steps s;
  mg_status st = steps_build(C, n, k, &s);
  if (st != MG_OK) return st;
  int64_t T = s.T;
  mg_tensor **gx = calloc((size_t)T, sizeof *gx), *gs[2] = { NULL }, *gw[3] = { NULL };
  if (!gx) { steps_free(&s); return mg_fail(C, MG_ENOMEM, "%s: out of memory", mg_ops[k->op].name); }
  for (int q = 0; q < k->ns; q++) gs[q] = g[1 + q] ? mg_tensor_retain(g[1 + q]) : NULL;
  for (int64_t t = T - 1; t >= 0 && st == MG_OK; t--) {
    mg_tensor *ht = NULL;
    if (g[0]) st = mg_tensor_select(C, g[0], lead + 1, t, &ht);
    if (st == MG_OK) st = accumulate(C, &gs[0], ht);
    if (st != MG_OK || (gs[0] == NULL && gs[1] == NULL)) continue;
    bool nd[6];
    mg_tensor *gi[6] = { NULL };
    for (int i = 0; i < k->nin; i++) nd[i] = need[i] || (t > 0 && i >= 1 && i <= k->ns);
    st = k->cell->vjp(C, &s.nd[t], lead, gs, nd, gi);
    mg_cell_release(2, gs);
    gx[t] = gi[QX];
    for (int q = 0; q < k->ns; q++) gs[q] = gi[1 + q];
    for (int i = 0; i < 3; i++)
      if (st == MG_OK) st = accumulate(C, &gw[i], gi[k->ns + 1 + i]);
      else mg_tensor_release(gi[k->ns + 1 + i]);
  }
  mg_tensor *X = NULL;
  if (st == MG_OK && need[QX]) st = stack_steps(C, T, gx, lead + 1, &X);
  else mg_cell_release((int)T, gx);
  free(gx);
  if (st == MG_OK) {
    gin[QX] = X;
    for (int q = 0; q < k->ns; q++) { if (need[1 + q]) { gin[1 + q] = gs[q]; gs[q] = NULL; } }
    for (int i = 0; i < 3; i++) { if (need[k->ns + 1 + i]) { gin[k->ns + 1 + i] = gw[i]; gw[i] = NULL; } }
  }
  mg_cell_release(2, gs);
  mg_cell_release(3, gw);
  steps_free(&s);
  return st;
}

static mg_status seq_jvp_steps(mg_ctx *C, const mg_node *n, const seqkind *k, int lead,
                               mg_tensor *const *t, mg_tensor **tout) {
  steps s;
  mg_status st = steps_build(C, n, k, &s);
  if (st != MG_OK) return st;
  int64_t T = s.T;
  mg_tensor **th = calloc((size_t)T, sizeof *th), *ts[2] = { NULL };
  if (!th) { steps_free(&s); return mg_fail(C, MG_ENOMEM, "%s: out of memory", mg_ops[k->op].name); }
  for (int q = 0; q < k->ns; q++) ts[q] = t[1 + q] ? mg_tensor_retain(t[1 + q]) : NULL;
  for (int64_t i = 0; i < T && st == MG_OK; i++) {
    mg_tensor *tin[6] = { NULL }, *to[2] = { NULL };
    if (t[QX]) st = mg_tensor_select(C, t[QX], lead + 1, i, &tin[QX]);
    for (int q = 0; q < k->ns; q++) tin[1 + q] = ts[q];
    for (int j = k->ns + 1; j < k->nin; j++) tin[j] = t[j];
    if (st == MG_OK) st = k->cell->jvp(C, &s.nd[i], lead, tin, to);
    mg_tensor_release(tin[QX]);
    mg_cell_release(2, ts);
    for (int q = 0; q < k->ns; q++) ts[q] = to[q];
    th[i] = to[0] ? mg_tensor_retain(to[0]) : NULL;
  }
  if (st == MG_OK) st = stack_steps(C, T, th, lead + 1, &tout[0]);
  else mg_cell_release((int)T, th);
  free(th);
  if (st == MG_OK)
    for (int q = 0; q < k->ns; q++) { tout[1 + q] = ts[q]; ts[q] = NULL; }
  mg_cell_release(2, ts);
  steps_free(&s);
  return st;
}

/* The reverse rule: fused for first order, else the per-step rules. */
static mg_status seq_vjp(mg_ctx *C, const mg_node *n, const seqkind *k, int lead,
                         mg_tensor *const *g, const bool *need, mg_tensor **gin) {
  if (lead != 0 || mg_recording(C)) return seq_vjp_steps(C, n, k, lead, g, need, gin);
  mg_tensor *gk[3] = { NULL };
  mg_status st = mg_cell_contiguous(C, 1 + k->ns, g, gk);
  if (st != MG_OK) return st;
  st = k->ns == 2 ? lstm_seq_vjp_fused(C, n, gk, need, gin) : gru_seq_vjp_fused(C, n, gk, need, gin);
  mg_cell_release(3, gk);
  return st;
}

/* The rules of both ops (the node's opcode tells which). */
static const seqkind *kind_of(const mg_node *n) { return n->op == MG_OP_LSTM_SEQ ? &LSTM_SEQ : &GRU_SEQ; }

static mg_status rnn_seq_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                             const bool *need, mg_tensor **gin) {
  return seq_vjp(C, n, kind_of(n), lead, g, need, gin);
}

static mg_status rnn_seq_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                             mg_tensor **tout) {
  return seq_jvp_steps(C, n, kind_of(n), lead, t, tout);
}

const mg_rules mg_rules_rnn_seq = { .vjp = rnn_seq_vjp, .jvp = rnn_seq_jvp };
