/*
** losses.c - the softmax cross-entropy of logits against class ids, per row of the last
** dimension: loss = -log_softmax(x)[label] (Keras's sparse_categorical_crossentropy with
** from_logits before its reduction; torch's cross_entropy with reduction='none'). The value
** is computed as log_softmax computes it (the row's maximum m, z = sum exp(x - m) in double
** and its log in double, x - m - log z in the tensor's precision), so the numbers are
** log_softmax's; the probabilities are saved, and the first-order reverse rule is
** (p - onehot(label)) g in one pass; higher orders run the same rule from recorded ops.
** Labels are 1-based and held as numbers (float32 or float64), as gather's indices; they get
** no gradient.
*/
#include "mg_impl.h"

#include <math.h>

/* The label of row r as a 0-based class, or -1 when it is not a class id in 1..n. */
static int64_t label_at(const mg_tensor *lab, int64_t r, int64_t n) {
  double v = lab->dtype == MG_F64 ? MG_F64P(lab)[r] : (double)MG_F32P(lab)[r];
  if (!(v >= 1 && v <= (double)n) || v != floor(v)) return -1;
  return (int64_t)v - 1;
}

/* Per row: the maximum m, e_k = exp(x_k - m) stored in 'pr' (its own loop, so the calls
** overlap), z = sum e_k in double, lz = log z; the loss -(x_l - m - lz); then pr holds the
** probabilities e_k / z for the reverse rule. */
#define CE_FORWARD(T, EXP) do {                                                      \
    const T *xp = (const T *)mg_tensor_data(c);                                      \
    T *yp = (T *)mg_tensor_data(y), *pp = (T *)mg_tensor_data(pr);                   \
    for (int64_t r = 0; r < rows; r++) {                                             \
      const T *xr = xp + r * n;                                                      \
      T *er = pp + r * n, m = xr[0];                                                 \
      for (int64_t k = 1; k < n; k++) if (xr[k] > m) m = xr[k];                      \
      for (int64_t k = 0; k < n; k++) er[k] = EXP(xr[k] - m);                        \
      double z = 0;                                                                  \
      for (int64_t k = 0; k < n; k++) z += er[k];                                    \
      T lz = (T)log(z);                                                              \
      int64_t l = label_at(lab, r, n);                                               \
      yp[r] = -(xr[l] - m - lz);                                                     \
      T inv = (T)(1 / z);                                                            \
      for (int64_t k = 0; k < n; k++) er[k] *= inv;                                  \
    }                                                                                \
  } while (0)

/* The rows' labels all valid? Else the failure naming the first bad one. */
static mg_status check_labels(mg_ctx *C, const mg_tensor *lab, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; r++)
    if (label_at(lab, r, n) < 0) {
      double v = lab->dtype == MG_F64 ? MG_F64P(lab)[r] : (double)MG_F32P(lab)[r];
      return mg_fail(C, MG_EINDEX, "softmax_cross_entropy: label %g at position %lld is not a "
                     "class id in 1..%lld", v, (long long)r + 1, (long long)n);
    }
  return MG_OK;
}

mg_status mg_tensor_softmax_cross_entropy(mg_ctx *C, mg_tensor *x, mg_tensor *labels,
                                          mg_tensor **out) {
  char s1[96], s2[96];
  if (x->ndim < 1 || x->shape[x->ndim - 1] < 1)
    return mg_fail(C, MG_ESHAPE, "softmax_cross_entropy: logits must have a class dimension of "
                   "size >= 1, got shape %s", mg_shapestr(s1, sizeof s1, x->ndim, x->shape));
  bool ok = labels->ndim == x->ndim - 1;
  for (int d = 0; ok && d < labels->ndim; d++) ok = labels->shape[d] == x->shape[d];
  if (!ok)
    return mg_fail(C, MG_ESHAPE, "softmax_cross_entropy: labels of shape %s do not fit logits of "
                   "shape %s (expected the logits' shape without its last dimension)",
                   mg_shapestr(s1, sizeof s1, labels->ndim, labels->shape),
                   mg_shapestr(s2, sizeof s2, x->ndim, x->shape));
  int64_t n = x->shape[x->ndim - 1], rows = mg_tensor_numel(labels);
  mg_tensor *c = NULL, *lab = NULL, *y = NULL, *pr = NULL;
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_contiguous(C, x, &c);
  if (st == MG_OK) st = mg_tensor_contiguous(C, labels, &lab);
  mg_no_grad_exit(C);
  if (st == MG_OK) st = check_labels(C, lab, rows, n);
  if (st == MG_OK) st = mg_tensor_empty(C, x->dtype, labels->ndim, labels->shape, &y);
  if (st == MG_OK) st = mg_tensor_empty(C, x->dtype, x->ndim, x->shape, &pr);
  if (st == MG_OK) {
    if (x->dtype == MG_F64) CE_FORWARD(double, exp);
    else CE_FORWARD(float, expf);
  }
  mg_tensor_release(c);
  mg_tensor_release(lab);
  if (st == MG_OK && mg_recording(C)) {          /* the probabilities saved for the reverse rule */
    mg_tensor *in[2] = { x, labels };
    st = mg_record(C, MG_OP_SOFTMAX_CE, 2, in, 1, &y, 1, &pr, NULL);
  }
  mg_tensor_release(pr);
  if (st != MG_OK) { mg_tensor_release(y); return st; }
  *out = y;
  return MG_OK;
}

/* softmax(x) - onehot(labels), from recorded ops (a function of x for higher orders). */
static mg_status probs_minus_onehot(mg_ctx *C, const mg_node *n, mg_tensor **out) {
  mg_tensor *x = n->in[0], *lab = NULL, *oh = NULL, *sm = NULL;
  int64_t cls = x->shape[x->ndim - 1], rows = mg_tensor_numel(n->in[1]);
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_contiguous(C, n->in[1], &lab);
  if (st == MG_OK) st = mg_tensor_zeros(C, x->dtype, x->ndim, x->shape, &oh);
  mg_no_grad_exit(C);
  if (st == MG_OK) {
    mg_bump_version(oh);
    for (int64_t r = 0; r < rows; r++) {
      int64_t l = label_at(lab, r, cls);
      if (x->dtype == MG_F64) MG_F64P(oh)[r * cls + l] = 1;
      else MG_F32P(oh)[r * cls + l] = 1;
    }
    st = mg_tensor_softmax(C, x, x->ndim - 1, false, &sm);
  }
  if (st == MG_OK) st = mg_tensor_binary(C, MG_B_SUB, sm, oh, out);
  mg_tensor_release(lab);
  mg_tensor_release(oh);
  mg_tensor_release(sm);
  return st;
}

/* The first-order reverse rule in one pass: g_r (p_k - [k == label]), p the saved
** probabilities. */
#define CE_BACKWARD(T) do {                                                          \
    const T *pp = (const T *)mg_tensor_data(n->saved[0]), *gp = (const T *)mg_tensor_data(gc); \
    T *op = (T *)mg_tensor_data(o);                                                  \
    for (int64_t r = 0; r < rows; r++) {                                             \
      const T *pr = pp + r * cls;                                                    \
      T *orow = op + r * cls, gr = gp[r];                                            \
      for (int64_t k = 0; k < cls; k++) orow[k] = gr * pr[k];                        \
      int64_t l = label_at(lab, r, cls);                                             \
      orow[l] = gr * (pr[l] - 1);                                                    \
    }                                                                                \
  } while (0)

static mg_status fused_vjp(mg_ctx *C, const mg_node *n, mg_tensor *g, mg_tensor **gin) {
  mg_tensor *x = n->in[0], *lab = NULL, *gc = NULL, *o = NULL;
  int64_t cls = x->shape[x->ndim - 1], rows = mg_tensor_numel(n->in[1]);
  mg_status st = mg_tensor_contiguous(C, n->in[1], &lab);
  if (st == MG_OK) st = mg_tensor_contiguous(C, g, &gc);
  if (st == MG_OK) st = mg_tensor_empty(C, x->dtype, x->ndim, x->shape, &o);
  if (st == MG_OK) {
    if (x->dtype == MG_F64) CE_BACKWARD(double);
    else CE_BACKWARD(float);
    *gin = o;
    o = NULL;
  }
  mg_tensor_release(lab);
  mg_tensor_release(gc);
  mg_tensor_release(o);
  return st;
}

static mg_status ce_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                        const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  if (lead == 0 && !mg_recording(C) && g[0]->dtype == n->in[0]->dtype)
    return fused_vjp(C, n, g[0], &gin[0]);
  mg_tensor *d = NULL, *gu = NULL;                /* g (lead.., rows..) -> (lead.., rows.., 1) */
  mg_status st = probs_minus_onehot(C, n, &d);
  if (st == MG_OK) st = mg_tensor_unsqueeze(C, g[0], g[0]->ndim, &gu);
  if (st == MG_OK) st = mg_tensor_binary(C, MG_B_MUL, gu, d, &gin[0]);
  mg_tensor_release(d);
  mg_tensor_release(gu);
  return st;
}

static mg_status ce_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                        mg_tensor **tout) {
  (void)lead;
  if (t[0] == NULL) return MG_OK;
  mg_tensor *d = NULL, *p = NULL;
  mg_status st = probs_minus_onehot(C, n, &d);
  if (st == MG_OK) st = mg_tensor_binary(C, MG_B_MUL, t[0], d, &p);
  if (st == MG_OK) st = mg_tensor_sum(C, p, 1u << (p->ndim - 1), false, &tout[0]);
  mg_tensor_release(d);
  mg_tensor_release(p);
  return st;
}

const mg_rules mg_rules_softmax_ce = { .vjp = ce_vjp, .jvp = ce_jvp };
