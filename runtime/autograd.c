/*
** autograd.c - shape helpers shared by the rules: summing a broadcast cotangent back to an
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
  mg_tensor *s;
  mg_status st = mg_tensor_sum(C, g, mask, true, &s);
  if (st != MG_OK) return st;
  int64_t sh[MG_MAXDIM];
  int nd = mg_lead_shape(g, lead, ndim, shape, sh);
  st = mg_tensor_reshape(C, s, nd, sh, out);
  mg_tensor_release(s);
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
  mg_tensor *r;                                     /* missing dims after the lead dims */
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
