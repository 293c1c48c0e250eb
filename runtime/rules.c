/*
** rules.c - shape helpers shared by the rules: summing a broadcast cotangent back to an
** input's shape, and broadcasting a tangent up to an output's shape, with 'lead' leading
** (vectorized) dims left alone.
*/
#include "mg_impl.h"

int mg_lead_shape(const mg_tensor *g, int lead, int ndim, const int64_t *shape, int64_t *dst) {
  for (int i = 0; i < lead; i++) dst[i] = g->shape[i];
  memcpy(dst + lead, shape, (size_t)ndim * sizeof *shape);
  return lead + ndim;
}

mg_status mg_unbroadcast(mg_ctx *C, mg_tensor *g, int lead, int ndim, const int64_t *shape,
                         mg_tensor **out) {
  int extra = g->ndim - lead - ndim;               /* dims broadcasting added in front */
  uint32_t mask = 0;
  for (int i = 0; i < extra; i++) mask |= 1u << (lead + i);
  for (int i = 0; i < ndim; i++)
    if (shape[i] == 1 && g->shape[lead + extra + i] != 1) mask |= 1u << (lead + extra + i);
  if (mask == 0 && extra == 0) { *out = mg_tensor_retain(g); return MG_OK; }
  mg_tensor *s = NULL;
  mg_status st = mg_tensor_sum(C, g, mask, true, &s);
  if (st != MG_OK) return st;
  int64_t sh[MG_MAXDIM];
  int nd = mg_lead_shape(g, lead, ndim, shape, sh);
  st = mg_tensor_reshape(C, s, nd, sh, out);
  mg_tensor_release(s);
  return st;
}

mg_status mg_linear_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                        const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  return mg_ops[n->op].rules->linear(C, n, lead, g[0], true, &gin[0]);
}

mg_status mg_linear_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                        mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  mg_linear_fn apply = mg_ops[n->op].rules->linear;
  mg_tensor *full = NULL;
  mg_status st = mg_expand_lead(C, t[0], lead, n->in[0]->ndim, n->in[0]->shape, &full);
  if (st != MG_OK) return st;
  st = apply(C, n, lead, full, false, &tout[0]);
  mg_tensor_release(full);
  return st;
}

mg_status mg_expand_lead(mg_ctx *C, mg_tensor *t, int lead, int ndim, const int64_t *shape,
                         mg_tensor **out) {
  int64_t sh[MG_MAXDIM];
  int nd = mg_lead_shape(t, lead, ndim, shape, sh);
  if (t->ndim == nd && memcmp(t->shape, sh, (size_t)nd * sizeof *sh) == 0) {
    *out = mg_tensor_retain(t);
    return MG_OK;
  }
  if (t->ndim - lead > ndim) {
    char s1[96], s2[96];
    return mg_fail(C, MG_ESHAPE, "internal: tangent %s does not broadcast to %s",
                   mg_shapestr(s1, sizeof s1, t->ndim, t->shape), mg_shapestr(s2, sizeof s2, nd, sh));
  }
  mg_tensor *r = NULL;                              /* missing dims after the lead dims */
  mg_status st = mg_align_lead(C, t, lead, ndim, &r);
  if (st != MG_OK) return st;
  st = mg_tensor_expand(C, r, nd, sh, out);
  mg_tensor_release(r);
  return st;
}

mg_status mg_align_lead(mg_ctx *C, mg_tensor *t, int lead, int ndim, mg_tensor **out) {
  int have = t->ndim - lead;
  if (have >= ndim) { *out = mg_tensor_retain(t); return MG_OK; }
  int64_t sh[MG_MAXDIM];
  int m = 0;
  for (int i = 0; i < lead; i++) sh[m++] = t->shape[i];
  for (int i = 0; i < ndim - have; i++) sh[m++] = 1;
  for (int i = lead; i < t->ndim; i++) sh[m++] = t->shape[i];
  return mg_tensor_reshape(C, t, m, sh, out);
}

/* ================================================================ expressions */

void mg_ex_begin(mg_ex *e, mg_ctx *C) {
  e->C = C;
  e->st = MG_OK;
  e->n = 0;
}

mg_status mg_ex_end(mg_ex *e) {
  for (int i = 0; i < e->n; i++) mg_tensor_release(e->t[i]);
  e->n = 0;
  return e->st;
}

/* Own a result (or record the failure). A pointer, read after the call that fills it. */
static mg_tensor *own(mg_ex *e, mg_status st, mg_tensor **tp) {
  mg_tensor *t = *tp;
  if (st != MG_OK) { e->st = st; return NULL; }
  if (e->n == MG_EX_MAX) {
    mg_tensor_release(t);
    e->st = mg_fail(e->C, MG_ENOMEM, "internal: expression too long");
    return NULL;
  }
  return e->t[e->n++] = t;
}

mg_tensor *mg_ex_own(mg_ex *e, mg_status st, mg_tensor **tp) { return own(e, st, tp); }

#define EX_GUARD() do { if (e->st != MG_OK) return NULL; } while (0)

/* The body of an mg_ex_* call: nothing after a failure, else own the result of 'call', which
** fills the local 'y'. */
#define EX_RETURN(call) do {                                                       \
    EX_GUARD();                                                                    \
    mg_tensor *y = NULL;                                                           \
    return own(e, (call), &y);                                                     \
  } while (0)

mg_tensor *mg_ex_keep(mg_ex *e, mg_tensor *t) {
  return (e->st == MG_OK && t) ? mg_tensor_retain(t) : NULL;
}

static mg_tensor *binary(mg_ex *e, mg_binary op, mg_tensor *a, mg_tensor *b) {
  EX_RETURN(mg_tensor_binary(e->C, op, a, b, &y));
}

mg_tensor *mg_ex_add(mg_ex *e, mg_tensor *a, mg_tensor *b) { return binary(e, MG_B_ADD, a, b); }
mg_tensor *mg_ex_sub(mg_ex *e, mg_tensor *a, mg_tensor *b) { return binary(e, MG_B_SUB, a, b); }
mg_tensor *mg_ex_mul(mg_ex *e, mg_tensor *a, mg_tensor *b) { return binary(e, MG_B_MUL, a, b); }

mg_tensor *mg_ex_rsub(mg_ex *e, double v, mg_tensor *a) {
  EX_RETURN(mg_tensor_binary_scalar(e->C, MG_B_SUB, a, v, true, &y));
}

mg_tensor *mg_ex_unary(mg_ex *e, mg_unary op, mg_tensor *a) {
  EX_RETURN(mg_tensor_unary(e->C, op, a, &y));
}

mg_tensor *mg_ex_matmul(mg_ex *e, mg_tensor *a, mg_tensor *b) {
  EX_RETURN(mg_tensor_matmul(e->C, a, b, &y));
}

mg_tensor *mg_ex_mT(mg_ex *e, mg_tensor *a) {
  EX_RETURN(mg_tensor_transpose(e->C, a, a->ndim - 2, a->ndim - 1, &y));
}

mg_tensor *mg_ex_narrow(mg_ex *e, mg_tensor *a, int dim, int64_t start, int64_t len) {
  EX_RETURN(mg_tensor_narrow(e->C, a, dim, start, len, &y));
}

mg_tensor *mg_ex_select(mg_ex *e, mg_tensor *a, int dim, int64_t i) {
  EX_RETURN(mg_tensor_select(e->C, a, dim, i, &y));
}

mg_tensor *mg_ex_unsqueeze(mg_ex *e, mg_tensor *a, int dim) {
  EX_RETURN(mg_tensor_unsqueeze(e->C, a, dim, &y));
}

mg_tensor *mg_ex_cat(mg_ex *e, int n, mg_tensor *const *xs, int dim) {
  EX_RETURN(mg_tensor_cat(e->C, n, xs, dim, &y));
}

mg_tensor *mg_ex_sum(mg_ex *e, mg_tensor *a, uint32_t mask) {
  EX_RETURN(mg_tensor_sum(e->C, a, mask, false, &y));
}

mg_tensor *mg_ex_align(mg_ex *e, mg_tensor *t, int lead, int ndim) {
  EX_RETURN(mg_align_lead(e->C, t, lead, ndim, &y));
}

mg_tensor *mg_ex_zeros(mg_ex *e, mg_tensor *like, int lead, mg_tensor *shape_of) {
  EX_GUARD();
  int64_t sh[MG_MAXDIM];
  int nd = mg_lead_shape(like, lead, shape_of->ndim, shape_of->shape, sh);
  mg_tensor *y = NULL;
  return own(e, mg_tensor_zeros(e->C, shape_of->dtype, nd, sh, &y), &y);
}

/* ---------------------------------------------------------------- issue 12 additions */

mg_tensor *mg_ex_div(mg_ex *e, mg_tensor *a, mg_tensor *b) { return binary(e, MG_B_DIV, a, b); }

mg_tensor *mg_ex_bins(mg_ex *e, mg_binary op, mg_tensor *a, double v) {
  EX_GUARD();
  mg_tensor *y = NULL;
  return own(e, mg_tensor_binary_scalar(e->C, op, a, v, false, &y), &y);
}

mg_tensor *mg_ex_sbin(mg_ex *e, mg_binary op, double v, mg_tensor *a) {
  EX_GUARD();
  mg_tensor *y = NULL;
  return own(e, mg_tensor_binary_scalar(e->C, op, a, v, true, &y), &y);
}

mg_tensor *mg_ex_where(mg_ex *e, mg_tensor *c, mg_tensor *a, mg_tensor *b) {
  EX_GUARD();
  mg_tensor *y = NULL;
  return own(e, mg_tensor_where(e->C, c, a, b, &y), &y);
}

mg_tensor *mg_ex_full(mg_ex *e, mg_dtype dt, double v) {
  EX_GUARD();
  mg_tensor *y = NULL;
  return own(e, mg_tensor_full(e->C, dt, 0, NULL, v, &y), &y);
}
