/*
** reduce.c - sum, max and min over any set of dims (a bit mask), argmax/argmin, and the
** composites mean, var, std, norm; fused softmax and log_softmax. Rules beside each op.
*/
#include "mg_impl.h"

#include <math.h>
#include <stdlib.h>

#define BIN(op, a, b, o) mg_tensor_binary(C, (op), (a), (b), (o))

/* Shape with the masked dims set to 1 (keepdim) and without them; returns the latter's ndim. */
static int reduced_shape(const mg_tensor *x, uint32_t mask, int64_t *keep, int64_t *drop) {
  int nd = 0;
  for (int i = 0; i < x->ndim; i++) {
    bool r = (mask >> i) & 1u;
    keep[i] = r ? 1 : x->shape[i];
    if (!r) drop[nd++] = x->shape[i];
  }
  return nd;
}

static mg_status check_mask(mg_ctx *C, const char *fn, const mg_tensor *x, uint32_t *mask) {
  if (x->ndim < 32) {
    uint32_t all = (uint32_t)((1ull << x->ndim) - 1);
    if (*mask != ~0u && (*mask & ~all))
      return mg_fail(C, MG_EINDEX, "%s: dimension out of range for a %d-d tensor", fn, x->ndim);
    *mask &= all;
  }
  return MG_OK;
}

/* ================================================================ kernels */

enum { R_SUM, R_MAX, R_MIN };

static void reduce_f32(int64_t n, char **p, const int64_t *s, void *ud) {
  int kind = *(const int *)ud;
  float *y = (float *)p[0];
  const float *x = (const float *)p[1];
  if (s[0] == 0) {                              /* reducing along the inner loop */
    if (kind == R_SUM) {
      double acc = 0;
      for (int64_t i = 0; i < n; i++) acc += x[i * s[1]];
      *y += (float)acc;
    } else {
      float m = *y;
      for (int64_t i = 0; i < n; i++) {
        float v = x[i * s[1]];
        if (kind == R_MAX ? (v > m || v != v) : (v < m || v != v)) m = v;
      }
      *y = m;
    }
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    float v = x[i * s[1]], *o = &y[i * s[0]];
    if (kind == R_SUM) *o += v;
    else if (kind == R_MAX ? (v > *o || v != v) : (v < *o || v != v)) *o = v;
  }
}

static void reduce_f64(int64_t n, char **p, const int64_t *s, void *ud) {
  int kind = *(const int *)ud;
  double *y = (double *)p[0];
  const double *x = (const double *)p[1];
  if (s[0] == 0) {
    double m = *y;
    for (int64_t i = 0; i < n; i++) {
      double v = x[i * s[1]];
      if (kind == R_SUM) m += v;
      else if (kind == R_MAX ? (v > m || v != v) : (v < m || v != v)) m = v;
    }
    *y = m;
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    double v = x[i * s[1]], *o = &y[i * s[0]];
    if (kind == R_SUM) *o += v;
    else if (kind == R_MAX ? (v > *o || v != v) : (v < *o || v != v)) *o = v;
  }
}

/* ---------------------------------------------------------------- threads
** A big reduction is shared out in one of two ways, each giving the same bits for any thread
** count: split along a dim the output advances in (each output element reduced by one thread,
** in the serial order), or, for a reduction to one element, fixed chunks of the input reduced
** into partials that are then combined in chunk order (the chunks depend on the size only). */

#define MAX_CHUNKS 1024

typedef struct rjob {
  mg_iter it;
  mg_loop_fn fn;
  int kind;
  int dim;                /* split: the iterator dim shared out */
  int64_t chunk;          /* to one element: elements per chunk */
  char *part;             /* ... and the partials, one element each */
} rjob;

static void split_range(void *arg, int64_t lo, int64_t hi) {
  rjob *r = arg;
  mg_iter sub = r->it;
  sub.shape[r->dim] = hi - lo;
  for (int k = 0; k < sub.nops; k++) sub.ptr[k] += lo * sub.stride[k][r->dim] * (int64_t)sub.esize[k];
  mg_iter_run(NULL, NULL, &sub, r->fn, &r->kind);
}

static void chunk_range(void *arg, int64_t lo, int64_t hi) {
  rjob *r = arg;
  int64_t n = mg_iter_numel(&r->it);
  mg_iter sub = r->it;
  for (int64_t c = lo; c < hi; c++) {
    sub.ptr[0] = r->part + c * (int64_t)sub.esize[0];      /* output strides are all 0 */
    int64_t end = (c + 1) * r->chunk;
    mg_iter_run_range(&sub, c * r->chunk, end < n ? end : n, r->fn, &r->kind);
  }
}

/* Run the reduction 'it' (output operand 0, filled with 'init') of kind 'kind'. */
static mg_status reduce_run(mg_ctx *C, const char *fn, const mg_iter *it, mg_dtype dt, int kind,
                            double init) {
  rjob r = { .it = *it, .fn = dt == MG_F64 ? reduce_f64 : reduce_f32, .kind = kind, .dim = -1 };
  int64_t n = mg_iter_numel(it);
  if (n <= MG_PAR_GRAIN) return mg_iter_run(C, fn, it, r.fn, &r.kind);
  for (int d = 0; d < it->ndim && r.dim < 0; d++)
    if (it->stride[0][d] != 0 && it->shape[d] > 1) r.dim = d;
  if (r.dim >= 0) {
    int64_t per = n / it->shape[r.dim], grain = MG_PAR_GRAIN / per;
    return mg_parallel_for(C, fn, it->shape[r.dim], grain > 1 ? grain : 1, split_range, &r);
  }
  double part[MAX_CHUNKS];                     /* room for MAX_CHUNKS of either dtype */
  r.chunk = (n + MAX_CHUNKS - 1) / MAX_CHUNKS;
  if (r.chunk < MG_PAR_GRAIN) r.chunk = MG_PAR_GRAIN;
  int64_t nchunks = (n + r.chunk - 1) / r.chunk;
  for (int64_t c = 0; c < nchunks; c++) {
    if (dt == MG_F64) part[c] = init;
    else ((float *)part)[c] = (float)init;
  }
  r.part = (char *)part;
  mg_status st = mg_parallel_for(C, fn, nchunks, 1, chunk_range, &r);
  if (st != MG_OK) return st;
  char *p[2] = { it->ptr[0], r.part };       /* the partials, in order, into the output */
  int64_t s[2] = { 0, 1 };
  r.fn(nchunks, p, s, &r.kind);
  return MG_OK;
}

/* Reduce into a new tensor; records op 'op' (with attr mask, keepdim). */
static mg_status reduce(mg_ctx *C, int op, int kind, mg_tensor *x, uint32_t mask,
                        bool keepdim, mg_tensor **out) {
  const char *fn = mg_ops[op].name;
  int64_t keep[MG_MAXDIM], drop[MG_MAXDIM], st[MG_MAXDIM];
  mg_status s = check_mask(C, fn, x, &mask);
  if (s != MG_OK) return s;
  int nd = reduced_shape(x, mask, keep, drop);
  for (int i = 0; kind != R_SUM && i < x->ndim; i++)
    if (((mask >> i) & 1u) && x->shape[i] == 0)
      return mg_fail(C, MG_ESHAPE, "%s: cannot reduce over the empty dimension %d", fn, i + 1);
  mg_tensor *y = NULL;
  double init = kind == R_SUM ? 0.0 : (kind == R_MAX ? -INFINITY : INFINITY);
  if ((s = mg_tensor_full(C, x->dtype, x->ndim, keep, init, &y)) != MG_OK) return mg_name_error(C, s, fn);
  mg_tensor *ops[2] = { y, x };
  mg_iter it;
  mg_iter_init(&it, x->ndim, x->shape, 2, ops);
  if ((s = reduce_run(C, fn, &it, x->dtype, kind, init)) != MG_OK) {
    mg_tensor_release(y);
    return s;
  }
  if (!keepdim) {                                /* same storage, fewer dims */
    y->ndim = nd;
    memcpy(y->shape, drop, (size_t)nd * sizeof *drop);
    mg_contiguous_strides(nd, drop, st);
    memcpy(y->stride, st, (size_t)nd * sizeof *st);
  }
  mg_attr at = { .ni = 2, .i = { mask, keepdim } };
  return mg_record_result(C, op, 1, &x, y, &at, out);
}

mg_status mg_tensor_sum(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim, mg_tensor **out) {
  return reduce(C, MG_OP_SUM, R_SUM, x, mask, keepdim, out);
}
mg_status mg_tensor_amax(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim, mg_tensor **out) {
  return reduce(C, MG_OP_AMAX, R_MAX, x, mask, keepdim, out);
}
mg_status mg_tensor_amin(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim, mg_tensor **out) {
  return reduce(C, MG_OP_AMIN, R_MIN, x, mask, keepdim, out);
}

/* Elements reduced by 'mask'. */
static int64_t count(const mg_tensor *x, uint32_t mask) {
  int64_t n = 1;
  for (int i = 0; i < x->ndim; i++)
    if ((mask >> i) & 1u) n *= x->shape[i];
  return n;
}

mg_status mg_tensor_mean(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim, mg_tensor **out) {
  mg_tensor *s = NULL;
  mg_status st = check_mask(C, "mean", x, &mask);
  if (st != MG_OK || (st = mg_tensor_sum(C, x, mask, keepdim, &s)) != MG_OK) return st;
  st = mg_tensor_binary_scalar(C, MG_B_DIV, s, (double)count(x, mask), false, out);
  mg_tensor_release(s);
  return st;
}

mg_status mg_tensor_var(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim, mg_tensor **out) {
  mg_tensor *m = NULL, *d = NULL, *d2 = NULL;
  mg_status st = check_mask(C, "var", x, &mask);
  if (st == MG_OK) st = mg_tensor_mean(C, x, mask, true, &m);
  if (st == MG_OK) st = BIN(MG_B_SUB, x, m, &d);
  if (st == MG_OK) st = BIN(MG_B_MUL, d, d, &d2);
  if (st == MG_OK) st = mg_tensor_mean(C, d2, mask, keepdim, out);
  mg_tensor_release(m);
  mg_tensor_release(d);
  mg_tensor_release(d2);
  return st;
}

/* sqrt(v) for std and norm, whose derivative is 0 where v = 0, as PyTorch's (a norm penalty
** on zero biases, the std of a constant): sqrt'(0) = inf times the zero derivative of v would
** be NaN. Recorded as where(v == 0, 0, sqrt(where(v == 0, 1, v))), so every order of
** derivative is 0 there; plain sqrt when nothing records or no element is 0. */
static mg_status sqrt_zero_grad(mg_ctx *C, mg_tensor *v, mg_tensor **out) {
  if (!mg_recording(C) || !mg_any_equal(v, 0.0)) return mg_tensor_unary(C, MG_U_SQRT, v, out);
  mg_tensor *c = NULL, *z = NULL, *one = NULL, *v1 = NULL, *r = NULL;
  mg_status st = mg_tensor_binary_scalar(C, MG_B_EQ, v, 0.0, false, &c);   /* not recorded */
  if (st == MG_OK) st = mg_tensor_full(C, v->dtype, 0, NULL, 0.0, &z);
  if (st == MG_OK) st = mg_tensor_full(C, v->dtype, 0, NULL, 1.0, &one);
  if (st == MG_OK) st = mg_tensor_where(C, c, one, v, &v1);
  if (st == MG_OK) st = mg_tensor_unary(C, MG_U_SQRT, v1, &r);
  if (st == MG_OK) st = mg_tensor_where(C, c, z, r, out);
  mg_tensor_release(c); mg_tensor_release(z); mg_tensor_release(one);
  mg_tensor_release(v1); mg_tensor_release(r);
  return st;
}

mg_status mg_tensor_std(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim, mg_tensor **out) {
  mg_tensor *v = NULL;
  mg_status st = mg_tensor_var(C, x, mask, keepdim, &v);
  if (st != MG_OK) return st;
  st = sqrt_zero_grad(C, v, out);
  mg_tensor_release(v);
  return st;
}

mg_status mg_tensor_norm(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim, mg_tensor **out) {
  mg_tensor *sq = NULL, *s = NULL;
  mg_status st = BIN(MG_B_MUL, x, x, &sq);
  if (st != MG_OK) return st;
  st = mg_tensor_sum(C, sq, mask, keepdim, &s);
  mg_tensor_release(sq);
  if (st != MG_OK) return st;
  st = sqrt_zero_grad(C, s, out);
  mg_tensor_release(s);
  return st;
}

/* ================================================================ argmax */

mg_status mg_tensor_argmax(mg_ctx *C, mg_tensor *x, int dim, bool keepdim, bool is_min,
                           mg_tensor **out) {
  const char *fn = is_min ? "argmin" : "argmax";
  mg_tensor *c = NULL;
  if (dim >= x->ndim) return mg_fail(C, MG_EINDEX, "%s: dimension %d out of range for a %d-d tensor", fn, dim + 1, x->ndim);
  if (dim < 0 ? mg_tensor_numel(x) == 0 : x->shape[dim] == 0)   /* other dims may be empty */
    return mg_fail(C, MG_ESHAPE, "%s: cannot reduce over an empty %s", fn,
                   dim < 0 ? "tensor" : "dimension");
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_contiguous(C, x, &c);
  mg_no_grad_exit(C);
  if (st != MG_OK) return st;
  int64_t outer = 1, n = mg_tensor_numel(c), inner = 1, keep[MG_MAXDIM], drop[MG_MAXDIM];
  int nd = 0;
  if (dim >= 0) {
    for (int i = 0; i < dim; i++) outer *= x->shape[i];
    for (int i = dim + 1; i < x->ndim; i++) inner *= x->shape[i];
    n = x->shape[dim];
    nd = reduced_shape(x, 1u << dim, keep, drop);
  } else if (keepdim) {
    for (int i = 0; i < x->ndim; i++) keep[i] = 1;
  }
  mg_tensor *y = NULL;
  st = keepdim ? mg_tensor_empty(C, MG_F64, x->ndim, keep, &y) : mg_tensor_empty(C, MG_F64, nd, drop, &y);
  if (st != MG_OK) { mg_tensor_release(c); return st; }
  double *yo = MG_F64P(y);
  for (int64_t o = 0; o < outer && st == MG_OK; o++)
    for (int64_t in = 0; in < inner && (st = mg_poll(C, fn)) == MG_OK; in++) {   /* per row */
      int64_t best = 0, base = o * n * inner + in;
      double bv = c->dtype == MG_F64 ? MG_F64P(c)[base] : MG_F32P(c)[base];
      for (int64_t k = 1; k < n && bv == bv; k++) {
        int64_t at = base + k * inner;
        double v = c->dtype == MG_F64 ? MG_F64P(c)[at] : MG_F32P(c)[at];
        if (is_min ? (v < bv || v != v) : (v > bv || v != v)) { bv = v; best = k; }
      }
      yo[o * inner + in] = (double)best;
    }
  mg_tensor_release(c);
  if (st != MG_OK) { mg_tensor_release(y); return st; }   /* interrupted */
  *out = y;
  return MG_OK;
}

/* max(dim)/min(dim): values and first indices along 'dim'. The values' node saves the
** indices (keepdim) and marks attr.i[2], so its rules send the gradient to the returned index
** alone, as PyTorch; max()/min() over a mask share it among ties. */
mg_status mg_tensor_max_dim(mg_ctx *C, mg_tensor *x, int dim, bool keepdim, bool is_min,
                            mg_tensor **values, mg_tensor **indices) {
  const char *fn = is_min ? "min" : "max";
  if (dim < 0 || dim >= x->ndim) return mg_fail(C, MG_EINDEX, "%s: dimension %d out of range for a %d-d tensor", fn, dim + 1, x->ndim);
  mg_tensor *ik = NULL, *y = NULL, *idx = NULL;
  mg_no_grad_enter(C);
  mg_status st = reduce(C, is_min ? MG_OP_AMIN : MG_OP_AMAX, is_min ? R_MIN : R_MAX, x,
                        1u << dim, keepdim, &y);
  if (st == MG_OK) st = mg_tensor_argmax(C, x, dim, true, is_min, &ik);
  if (st == MG_OK) {                  /* the caller's indices: a copy, not the saved ones */
    mg_tensor *v = NULL;
    if (keepdim) v = mg_tensor_retain(ik);
    else st = mg_tensor_squeeze(C, ik, dim, &v);
    if (st == MG_OK) st = mg_tensor_clone(C, v, &idx);
    mg_tensor_release(v);
  }
  mg_no_grad_exit(C);
  if (st == MG_OK && mg_recording(C)) {
    mg_attr at = { .ni = 3, .i = { 1u << dim, keepdim, 1 } };
    st = mg_record(C, is_min ? MG_OP_AMIN : MG_OP_AMAX, 1, &x, 1, &y, 1, &ik, &at);
  }
  mg_tensor_release(ik);
  if (st != MG_OK) { mg_tensor_release(y); mg_tensor_release(idx); return st; }
  *values = y;
  *indices = idx;
  return MG_OK;
}

/* ================================================================ reduction rules */

/* 'g' (lead .. reduced shape of node 'n') reshaped to lead .. keepdim shape. */
static mg_status keepdim_view(mg_ctx *C, const mg_node *n, int lead, mg_tensor *g,
                              mg_tensor **out) {
  int64_t keep[MG_MAXDIM], drop[MG_MAXDIM], sh[MG_MAXDIM];
  reduced_shape(n->in[0], (uint32_t)n->attr.i[0], keep, drop);
  int nd = mg_lead_shape(g, lead, n->in[0]->ndim, keep, sh);
  return mg_tensor_reshape(C, g, nd, sh, out);
}

static mg_status sum_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                         const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  mg_tensor *k = NULL;
  mg_status st = keepdim_view(C, n, lead, g[0], &k);
  if (st != MG_OK) return st;
  st = mg_expand_lead(C, k, lead, n->in[0]->ndim, n->in[0]->shape, &gin[0]);
  mg_tensor_release(k);
  return st;
}

static mg_status sum_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                         mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  mg_tensor *full = NULL;           /* the tangent may still be broadcast-shaped */
  mg_status st = mg_expand_lead(C, t[0], lead, n->in[0]->ndim, n->in[0]->shape, &full);
  if (st != MG_OK) return st;
  st = mg_tensor_sum(C, full, (uint32_t)n->attr.i[0] << lead, n->attr.i[1] != 0, &tout[0]);
  mg_tensor_release(full);
  return st;
}

/* max(dim)'s weights: 1 at the saved index along the dim (attr.i[0] has one bit), else 0. */
static mg_status index_weights(mg_ctx *C, const mg_node *n, mg_tensor **w) {
  mg_tensor *x = n->in[0], *iota;
  int dim = __builtin_ctz((unsigned)n->attr.i[0]);
  int64_t sh[MG_MAXDIM];
  for (int i = 0; i < x->ndim; i++) sh[i] = i == dim ? x->shape[i] : 1;
  mg_status st = mg_tensor_empty(C, MG_F64, x->ndim, sh, &iota);
  if (st != MG_OK) return st;
  for (int64_t k = 0; k < x->shape[dim]; k++) MG_F64P(iota)[k] = (double)k;
  mg_tensor *eq;
  if ((st = BIN(MG_B_EQ, iota, n->saved[0], &eq)) == MG_OK) {   /* float64 0/1 */
    st = mg_tensor_cast(C, eq, x->dtype, w);
    mg_tensor_release(eq);
  }
  mg_tensor_release(iota);
  return st;
}

/* x == y, NaN counting as equal to NaN (where the extreme is NaN, the NaNs share). */
static mg_status ties(mg_ctx *C, mg_tensor *x, mg_tensor *y, mg_tensor **eq) {
  mg_status st = BIN(MG_B_EQ, x, y, eq);
  if (st != MG_OK || !mg_any_nan(y)) return st;
  mg_tensor *nx = NULL, *ny = NULL, *both = NULL, *sum = NULL;
  if ((st = BIN(MG_B_NE, x, x, &nx)) == MG_OK && (st = BIN(MG_B_NE, y, y, &ny)) == MG_OK &&
      (st = BIN(MG_B_MUL, nx, ny, &both)) == MG_OK && (st = BIN(MG_B_ADD, *eq, both, &sum)) == MG_OK) {
    mg_tensor_release(*eq);
    *eq = sum;
  }
  mg_tensor_release(nx); mg_tensor_release(ny); mg_tensor_release(both);
  if (st != MG_OK) { mg_tensor_release(*eq); *eq = NULL; }
  return st;
}

/* max/min: where x equals the extreme, divided by the number of ties (constants). */
static mg_status extreme_weights(mg_ctx *C, const mg_node *n, mg_tensor **w) {
  mg_tensor *yk = NULL, *eq = NULL, *cnt = NULL;
  uint32_t mask = (uint32_t)n->attr.i[0];
  mg_no_grad_enter(C);
  mg_status st = MG_OK;
  if (n->attr.ni > 2 && n->attr.i[2]) st = index_weights(C, n, w);
  else {
    st = keepdim_view(C, n, 0, n->out[0], &yk);
    if (st == MG_OK) st = ties(C, n->in[0], yk, &eq);
    if (st == MG_OK) st = mg_tensor_sum(C, eq, mask, true, &cnt);
    if (st == MG_OK) st = BIN(MG_B_DIV, eq, cnt, w);
  }
  mg_no_grad_exit(C);
  mg_tensor_release(yk);
  mg_tensor_release(eq);
  mg_tensor_release(cnt);
  return st;
}

static mg_status extreme_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                             const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  mg_tensor *w = NULL, *k = NULL;
  mg_status st = extreme_weights(C, n, &w);
  if (st != MG_OK) return st;
  if ((st = keepdim_view(C, n, lead, g[0], &k)) == MG_OK) {
    st = BIN(MG_B_MUL, k, w, &gin[0]);
    mg_tensor_release(k);
  }
  mg_tensor_release(w);
  return st;
}

static mg_status extreme_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                             mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  mg_tensor *w = NULL, *p = NULL;
  mg_status st = extreme_weights(C, n, &w);
  if (st != MG_OK) return st;
  if ((st = BIN(MG_B_MUL, t[0], w, &p)) == MG_OK) {
    mg_tensor *full = NULL;
    if ((st = mg_expand_lead(C, p, lead, n->in[0]->ndim, n->in[0]->shape, &full)) == MG_OK) {
      st = mg_tensor_sum(C, full, (uint32_t)n->attr.i[0] << lead, n->attr.i[1] != 0, &tout[0]);
      mg_tensor_release(full);
    }
    mg_tensor_release(p);
  }
  mg_tensor_release(w);
  return st;
}

/* ================================================================ softmax */

#define SOFTMAX_LOOP(T, EXP, LOG) do {                                             \
    const T *xp = (const T *)mg_tensor_data(c); T *yp = (T *)mg_tensor_data(y);     \
    for (int64_t o = 0; o < outer && st == MG_OK; o++)                             \
      for (int64_t in = 0; in < inner && (st = mg_poll(C, fn)) == MG_OK; in++) {   \
        const T *xr = xp + o * n * inner + in; T *yr = yp + o * n * inner + in;    \
        T m = xr[0];                                                               \
        for (int64_t k = 1; k < n; k++) if (xr[k * inner] > m) m = xr[k * inner];  \
        double z = 0;                                                              \
        for (int64_t k = 0; k < n; k++) z += EXP(xr[k * inner] - m);               \
        T lz = (T)log(z);                                                          \
        for (int64_t k = 0; k < n; k++) {                                          \
          T v = xr[k * inner] - m - lz;                                            \
          yr[k * inner] = log_ ? v : EXP(v);                                       \
        }                                                                          \
      }                                                                            \
  } while (0)

mg_status mg_tensor_softmax(mg_ctx *C, mg_tensor *x, int dim, bool log_, mg_tensor **out) {
  int op = log_ ? MG_OP_LOG_SOFTMAX : MG_OP_SOFTMAX;
  const char *fn = mg_ops[op].name;
  if (dim < 0 || dim >= x->ndim)
    return mg_fail(C, MG_EINDEX, "%s: dimension %d out of range for a %d-d tensor", fn, dim + 1, x->ndim);
  mg_tensor *c = NULL, *y = NULL;
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_contiguous(C, x, &c);
  mg_no_grad_exit(C);
  if (st != MG_OK) return st;
  if ((st = mg_tensor_empty(C, x->dtype, x->ndim, x->shape, &y)) != MG_OK) {
    mg_tensor_release(c);
    return st;
  }
  int64_t outer = 1, inner = 1, n = x->shape[dim];
  for (int i = 0; i < dim; i++) outer *= x->shape[i];
  for (int i = dim + 1; i < x->ndim; i++) inner *= x->shape[i];
  if (n > 0) {
    if (x->dtype == MG_F64) SOFTMAX_LOOP(double, exp, log);
    else SOFTMAX_LOOP(float, expf, logf);
  }
  mg_tensor_release(c);
  if (st != MG_OK) { mg_tensor_release(y); return st; }   /* interrupted */
  mg_attr at = { .ni = 1, .i = { dim } };
  return mg_record_result(C, op, 1, &x, y, &at, out);
}

/* softmax: y (v - sum(v y)); log_softmax: v - exp(y) sum(v), along the softmax dim, for a
** cotangent (reverse) or tangent (forward) 'v'. Both rules are this product with the
** symmetric (softmax) or transposed (log_softmax) Jacobian. */
static mg_status softmax_apply(mg_ctx *C, const mg_node *n, int lead, mg_tensor *v,
                               bool transpose, mg_tensor **out) {
  mg_tensor *y = n->out[0], *p = NULL, *s = NULL, *e = NULL, *q = NULL;
  uint32_t mask = 1u << (lead + (int)n->attr.i[0]);
  mg_status st;
  if (n->op == MG_OP_SOFTMAX) {
    if ((st = BIN(MG_B_MUL, v, y, &p)) == MG_OK && (st = mg_tensor_sum(C, p, mask, true, &s)) == MG_OK &&
        (st = BIN(MG_B_SUB, v, s, &q)) == MG_OK)
      st = BIN(MG_B_MUL, y, q, out);
  } else if (transpose) {                    /* g - softmax * sum(g) */
    if ((st = mg_tensor_unary(C, MG_U_EXP, y, &e)) == MG_OK &&
        (st = mg_tensor_sum(C, v, mask, true, &s)) == MG_OK && (st = BIN(MG_B_MUL, e, s, &p)) == MG_OK)
      st = BIN(MG_B_SUB, v, p, out);
  } else {                                   /* t - sum(t * softmax) */
    if ((st = mg_tensor_unary(C, MG_U_EXP, y, &e)) == MG_OK && (st = BIN(MG_B_MUL, v, e, &p)) == MG_OK &&
        (st = mg_tensor_sum(C, p, mask, true, &s)) == MG_OK)
      st = BIN(MG_B_SUB, v, s, out);
  }
  mg_tensor_release(p);
  mg_tensor_release(s);
  mg_tensor_release(e);
  mg_tensor_release(q);
  return st;
}

const mg_rules mg_rules_sum = { .vjp = sum_vjp, .jvp = sum_jvp, .unread = MG_UNREAD_ALL };
const mg_rules mg_rules_extreme = { .vjp = extreme_vjp, .jvp = extreme_jvp };
/* Softmax is linear in its cotangent/tangent given the saved output. */
const mg_rules mg_rules_softmax = { .vjp = mg_linear_vjp, .jvp = mg_linear_jvp,
                                     .linear = softmax_apply,
                                     .unread = MG_UNREAD_INS };     /* from the output */

/* ================================================================ logsumexp (issue 12) */

/* log(sum(exp(x))) over 'mask', shifted by the maximum (a non-finite maximum shifts by 0:
** all -inf gives -inf, any +inf gives +inf). Computed unrecorded, recorded as one node. */
mg_status mg_tensor_logsumexp(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim,
                              mg_tensor **out) {
  int64_t keep[MG_MAXDIM], drop[MG_MAXDIM];
  mg_status st = check_mask(C, "logsumexp", x, &mask);
  if (st != MG_OK) return st;
  int nd = reduced_shape(x, mask, keep, drop);
  mg_tensor *m = NULL, *fin = NULL, *zero = NULL, *sh = NULL, *d = NULL, *e = NULL, *s = NULL,
            *l = NULL, *y = NULL, *r = NULL;
  mg_no_grad_enter(C);
  if (mg_tensor_numel(x) == 0 || count(x, mask) == 0) st = mg_tensor_full(C, x->dtype, x->ndim, keep, -INFINITY, &r);
  else {
    if ((st = mg_tensor_amax(C, x, mask, true, &m)) == MG_OK &&
        (st = mg_tensor_binary(C, MG_B_SUB, m, m, &fin)) == MG_OK &&       /* 0, or NaN if not finite */
        (st = mg_tensor_full(C, x->dtype, 0, NULL, 0.0, &zero)) == MG_OK &&
        (st = mg_tensor_binary(C, MG_B_EQ, fin, fin, &d)) == MG_OK &&
        (st = mg_tensor_where(C, d, m, zero, &sh)) == MG_OK) {
      mg_tensor_release(d);
      d = NULL;
      if ((st = mg_tensor_binary(C, MG_B_SUB, x, sh, &d)) == MG_OK &&
          (st = mg_tensor_unary(C, MG_U_EXP, d, &e)) == MG_OK &&
          (st = mg_tensor_sum(C, e, mask, true, &s)) == MG_OK &&
          (st = mg_tensor_unary(C, MG_U_LOG, s, &l)) == MG_OK)
        st = mg_tensor_binary(C, MG_B_ADD, l, sh, &r);
    }
  }
  if (st == MG_OK && keepdim) y = mg_tensor_retain(r);
  else if (st == MG_OK) st = mg_tensor_reshape(C, r, nd, drop, &y);
  mg_no_grad_exit(C);
  mg_tensor *tmp[] = { m, fin, zero, sh, d, e, s, l, r };
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) mg_tensor_release(tmp[i]);
  if (st != MG_OK) return st;
  mg_attr at = { .ni = 2, .i = { mask, keepdim } };
  return mg_record_result(C, MG_OP_LOGSUMEXP, 1, &x, y, &at, out);
}

/* exp(x - y): the softmax over the reduced dims (recorded: x and y are the node's own). */
static mg_status lse_weights(mg_ctx *C, const mg_node *n, mg_tensor **w) {
  mg_tensor *yk = NULL, *d = NULL;
  mg_status st = keepdim_view(C, n, 0, n->out[0], &yk);
  if (st == MG_OK && (st = BIN(MG_B_SUB, n->in[0], yk, &d)) == MG_OK)
    st = mg_tensor_unary(C, MG_U_EXP, d, w);
  mg_tensor_release(yk);
  mg_tensor_release(d);
  return st;
}

static mg_status logsumexp_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                               const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  mg_tensor *w = NULL, *k = NULL;
  mg_status st = lse_weights(C, n, &w);
  if (st == MG_OK && (st = keepdim_view(C, n, lead, g[0], &k)) == MG_OK)
    st = BIN(MG_B_MUL, k, w, &gin[0]);
  mg_tensor_release(w);
  mg_tensor_release(k);
  return st;
}

static mg_status logsumexp_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                               mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  mg_tensor *w = NULL, *p = NULL, *full = NULL;
  mg_status st = lse_weights(C, n, &w);
  if (st == MG_OK && (st = BIN(MG_B_MUL, t[0], w, &p)) == MG_OK &&
      (st = mg_expand_lead(C, p, lead, n->in[0]->ndim, n->in[0]->shape, &full)) == MG_OK)
    st = mg_tensor_sum(C, full, (uint32_t)n->attr.i[0] << lead, n->attr.i[1] != 0, &tout[0]);
  mg_tensor_release(w);
  mg_tensor_release(p);
  mg_tensor_release(full);
  return st;
}

const mg_rules mg_rules_logsumexp = { .vjp = logsumexp_vjp, .jvp = logsumexp_jvp };

/* ================================================================ cumsum, cumprod (issue 12) */

/* Scan 'y' (contiguous) in place along 'dim': running sum or product, from the end when
** 'reverse'; accumulated in double. */
static void scan(mg_tensor *y, int dim, bool prod, bool reverse) {
  int64_t outer = 1, inner = 1, n = y->shape[dim];
  for (int i = 0; i < dim; i++) outer *= y->shape[i];
  for (int i = dim + 1; i < y->ndim; i++) inner *= y->shape[i];
  for (int64_t o = 0; o < outer; o++)
    for (int64_t in = 0; in < inner; in++) {
      int64_t base = o * n * inner + in;
      double acc = prod ? 1 : 0;
      for (int64_t j = 0; j < n; j++) {
        int64_t at = base + (reverse ? n - 1 - j : j) * inner;
        if (y->dtype == MG_F64) {
          double *p = MG_F64P(y) + at;
          acc = prod ? acc * *p : acc + *p;
          *p = acc;
        } else {
          float *p = MG_F32P(y) + at;
          acc = prod ? acc * *p : acc + *p;
          *p = (float)acc;
        }
      }
    }
}

/* Recorded scan of 'x' along 'dim' as op 'op' (attr: dim, reverse). */
static mg_status scan_op(mg_ctx *C, int op, mg_tensor *x, int dim, bool reverse,
                         mg_tensor **out) {
  if (dim < 0 || dim >= x->ndim)
    return mg_fail(C, MG_EINDEX, "%s: dimension %d out of range for a %d-d tensor",
                   mg_ops[op].name, dim + 1, x->ndim);
  mg_tensor *y = NULL;
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_clone(C, x, &y);
  mg_no_grad_exit(C);
  if (st != MG_OK) return st;
  scan(y, dim, op == MG_OP_CUMPROD, reverse);
  mg_attr at = { .ni = 2, .i = { dim, reverse } };
  return mg_record_result(C, op, 1, &x, y, &at, out);
}

mg_status mg_tensor_cumsum(mg_ctx *C, mg_tensor *x, int dim, bool reverse, mg_tensor **out) {
  return scan_op(C, MG_OP_CUMSUM, x, dim, reverse, out);
}

mg_status mg_tensor_cumprod(mg_ctx *C, mg_tensor *x, int dim, bool reverse, mg_tensor **out) {
  return scan_op(C, MG_OP_CUMPROD, x, dim, reverse, out);
}

static mg_status cumsum_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                            const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  return mg_tensor_cumsum(C, g[0], lead + (int)n->attr.i[0], n->attr.i[1] == 0, &gin[0]);
}

static mg_status cumsum_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                            mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  mg_tensor *full = NULL;
  mg_status st = mg_expand_lead(C, t[0], lead, n->in[0]->ndim, n->in[0]->shape, &full);
  if (st != MG_OK) return st;
  st = mg_tensor_cumsum(C, full, lead + (int)n->attr.i[0], n->attr.i[1] != 0, &tout[0]);
  mg_tensor_release(full);
  return st;
}

const mg_rules mg_rules_cumsum = { .vjp = cumsum_vjp, .jvp = cumsum_jvp };

/* cumprod's rules. Without zeros in x (the usual case, O(n)): with y = cumprod(x),
**   vjp: rcumsum(g y) / x          jvp: y cumsum(t / x)
** With a zero, dy_j/dx_k = L_k Q_kj for k <= j (else 0), L_k = prod_{i<k} x_i (an exclusive
** cumprod) and Q_kj = prod_{k<i<=j} x_i (a cumprod along j of x_j masked to 1 for j <= k, an
** n x n tensor per row): O(n^2), but every mask is structural (positions, not values), so
** these rules are exact to every order, Hessians included. A reverse scan is the forward one
** on flipped operands. Everything is recorded: the rules differentiate again. */
static mg_tensor *ex_cumsum(mg_ex *e, mg_tensor *a, int dim, bool reverse) {
  mg_tensor *y = NULL;
  if (e->st != MG_OK) return NULL;
  return mg_ex_own(e, mg_tensor_cumsum(e->C, a, dim, reverse, &y), &y);
}

static mg_tensor *ex_cumprod(mg_ex *e, mg_tensor *a, int dim, bool reverse) {
  mg_tensor *y = NULL;
  if (e->st != MG_OK) return NULL;
  return mg_ex_own(e, mg_tensor_cumprod(e->C, a, dim, reverse, &y), &y);
}

/* 'a' with dims 'd' and its last swapped, and reversed along the last when 'flip'. */
static mg_tensor *ex_scanlast(mg_ex *e, mg_tensor *a, int d, bool flip) {
  mg_tensor *y = NULL;
  if (e->st != MG_OK) return NULL;
  a = mg_ex_own(e, mg_tensor_transpose(e->C, a, d, a->ndim - 1, &y), &y);
  if (!flip || a == NULL) return a;
  return mg_ex_own(e, mg_tensor_flip(e->C, a, 1u << (a->ndim - 1), &y), &y);
}

/* The inverse of ex_scanlast. */
static mg_tensor *ex_unscan(mg_ex *e, mg_tensor *a, int d, bool flip) {
  mg_tensor *y = NULL;
  if (e->st != MG_OK) return NULL;
  if (flip) a = mg_ex_own(e, mg_tensor_flip(e->C, a, 1u << (a->ndim - 1), &y), &y);
  if (a == NULL) return NULL;
  return mg_ex_own(e, mg_tensor_transpose(e->C, a, d, a->ndim - 1, &y), &y);
}

/* An n x n constant: 1 where column j > row k ('strict') or j >= k. */
static mg_tensor *ex_band(mg_ex *e, mg_dtype dt, int64_t n, bool strict) {
  mg_tensor *y = NULL;
  int64_t sh[2] = { n, n };
  if (e->st != MG_OK) return NULL;
  if (mg_ex_own(e, mg_tensor_zeros(e->C, dt, 2, sh, &y), &y) == NULL) return NULL;
  for (int64_t k = 0; k < n; k++)
    for (int64_t j = strict ? k + 1 : k; j < n; j++) {
      int64_t at[2] = { k, j };
      mg_tensor_set(y, at, 1.0);
    }
  return y;
}

/* L (..., n) and Q masked to k <= j (..., n, n) of x, the scan dim last (see above). */
static void cumprod_structure(mg_ex *e, mg_tensor *x, int d, bool rev, mg_tensor **L,
                              mg_tensor **Q) {
  mg_tensor *xt = ex_scanlast(e, x, d, rev), *ones = NULL, *xe = NULL;
  *L = *Q = NULL;
  if (xt == NULL) return;
  int nd = xt->ndim;
  int64_t n = xt->shape[nd - 1], sh[MG_MAXDIM];
  memcpy(sh, xt->shape, sizeof sh);
  sh[nd - 1] = 1;
  ones = mg_ex_own(e, mg_tensor_full(e->C, x->dtype, nd, sh, 1.0, &ones), &ones);
  mg_tensor *parts[2] = { ones, mg_ex_narrow(e, xt, nd - 1, 0, n - 1) };
  if (e->st != MG_OK) return;
  *L = ex_cumprod(e, mg_ex_cat(e, 2, parts, nd - 1), nd - 1, false);
  sh[nd - 1] = n;
  sh[nd] = n;                                        /* [.., k, j] = x_j */
  mg_tensor *xu = mg_ex_unsqueeze(e, xt, nd - 1);
  if (xu != NULL) xe = mg_ex_own(e, mg_tensor_expand(e->C, xu, nd + 1, sh, &xe), &xe);
  mg_tensor *w = mg_ex_where(e, ex_band(e, x->dtype, n, true), xe, mg_ex_full(e, x->dtype, 1));
  *Q = mg_ex_where(e, ex_band(e, x->dtype, n, false), ex_cumprod(e, w, nd, false),
                   mg_ex_full(e, x->dtype, 0));
}

/* Whether 'x' holds a zero. */
static bool has_zero(const mg_tensor *x) {
  int64_t n = mg_tensor_numel(x), idx[MG_MAXDIM] = { 0 };
  for (int64_t k = 0; k < n; k++) {
    if (mg_tensor_get(x, idx) == 0) return true;
    for (int d = x->ndim - 1; d >= 0; d--) {
      if (++idx[d] < x->shape[d]) break;
      idx[d] = 0;
    }
  }
  return false;
}

static mg_status cumprod_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                             const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  mg_tensor *x = n->in[0], *L = NULL, *Q = NULL;
  int d = (int)n->attr.i[0], dim = lead + d;
  bool rev = n->attr.i[1] != 0;
  mg_ex ex, *e = &ex;
  mg_ex_begin(e, C);
  if (!has_zero(x)) {
    gin[0] = mg_ex_keep(e, mg_ex_div(e, ex_cumsum(e, mg_ex_mul(e, g[0], n->out[0]), dim, !rev), x));
    return mg_ex_end(e);
  }
  cumprod_structure(e, x, d, rev, &L, &Q);
  mg_tensor *gt = ex_scanlast(e, g[0], dim, rev);
  if (gt != NULL) {                        /* s_k = sum_j g_j Q_kj; the gradient is L s */
    mg_tensor *s = mg_ex_sum(e, mg_ex_mul(e, mg_ex_unsqueeze(e, gt, gt->ndim - 1), Q), 1u << gt->ndim);
    gin[0] = mg_ex_keep(e, ex_unscan(e, mg_ex_mul(e, L, s), dim, rev));
  }
  return mg_ex_end(e);
}

static mg_status cumprod_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                             mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  mg_tensor *x = n->in[0], *full = NULL, *L = NULL, *Q = NULL;
  int d = (int)n->attr.i[0], dim = lead + d;
  bool rev = n->attr.i[1] != 0;
  mg_status st = mg_expand_lead(C, t[0], lead, x->ndim, x->shape, &full);
  if (st != MG_OK) return st;
  mg_ex ex, *e = &ex;
  mg_ex_begin(e, C);
  if (!has_zero(x)) {
    tout[0] = mg_ex_keep(e, mg_ex_mul(e, n->out[0], ex_cumsum(e, mg_ex_div(e, full, x), dim, rev)));
  } else {
    cumprod_structure(e, x, d, rev, &L, &Q);
    mg_tensor *u = mg_ex_mul(e, ex_scanlast(e, full, dim, rev), L);   /* t_k L_k */
    if (u != NULL) {                       /* dy_j = sum_k t_k L_k Q_kj */
      mg_tensor *s = mg_ex_sum(e, mg_ex_mul(e, mg_ex_unsqueeze(e, u, u->ndim), Q), 1u << (u->ndim - 1));
      tout[0] = mg_ex_keep(e, ex_unscan(e, s, dim, rev));
    }
  }
  mg_tensor_release(full);
  return mg_ex_end(e);
}

const mg_rules mg_rules_cumprod = { .vjp = cumprod_vjp, .jvp = cumprod_jvp };
