/*
** ops_shape.c - views (reshape, permute, expand, narrow, select), copies (contiguous, clone,
** cast), pad and cat, each beside its rules. Views share the storage of their base.
*/
#include "mg_impl.h"

#include <cblas.h>
#include <stdlib.h>

/* ================================================================ copy kernels */

static void copy_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const int *kinds = ud;                  /* dtype of destination, source */
  if (kinds[0] == MG_F32 && kinds[1] == MG_F32) {
    float *y = (float *)p[0]; const float *x = (const float *)p[1];
    if (s[0] == 1 && s[1] == 1) memcpy(y, x, (size_t)n * sizeof *y);
    else for (int64_t i = 0; i < n; i++) y[i * s[0]] = x[i * s[1]];
  } else if (kinds[0] == MG_F64 && kinds[1] == MG_F64) {
    double *y = (double *)p[0]; const double *x = (const double *)p[1];
    if (s[0] == 1 && s[1] == 1) memcpy(y, x, (size_t)n * sizeof *y);
    else for (int64_t i = 0; i < n; i++) y[i * s[0]] = x[i * s[1]];
  } else if (kinds[0] == MG_F64) {
    double *y = (double *)p[0]; const float *x = (const float *)p[1];
    for (int64_t i = 0; i < n; i++) y[i * s[0]] = x[i * s[1]];
  } else {
    float *y = (float *)p[0]; const double *x = (const double *)p[1];
    for (int64_t i = 0; i < n; i++) y[i * s[0]] = (float)x[i * s[1]];
  }
}

/* A 2-d transposing copy of one dtype (dst rows unit-stride, src columns unit-stride) goes
** through BLAS's cache-blocked transpose; true when done. */
static bool copy_transposed(const mg_iter *it, mg_dtype dt, mg_dtype st) {
  if (it->ndim != 2 || dt != st || it->stride[0][1] != 1 || it->stride[1][0] != 1) return false;
  int64_t r = it->shape[0], c = it->shape[1], ld_dst = it->stride[0][0], ld_src = it->stride[1][1];
  if (r < 16 || c < 16 || ld_dst < c || ld_src < r || ld_dst > INT32_MAX || ld_src > INT32_MAX)
    return false;
  if (dt == MG_F64)
    cblas_domatcopy(CblasRowMajor, CblasTrans, (int)c, (int)r, 1.0, (const double *)it->ptr[1],
                    (int)ld_src, (double *)it->ptr[0], (int)ld_dst);
  else
    cblas_somatcopy(CblasRowMajor, CblasTrans, (int)c, (int)r, 1.0f, (const float *)it->ptr[1],
                    (int)ld_src, (float *)it->ptr[0], (int)ld_dst);
  return true;
}

/* Copy 'src' (broadcastable to dst's shape) into 'dst'. Shapes are checked by callers. */
static void copy_into(mg_tensor *dst, mg_tensor *src) {
  mg_tensor *ops[2] = { dst, src };
  int kinds[2] = { dst->dtype, src->dtype };
  mg_iter it;
  mg_iter_init(&it, dst->ndim, dst->shape, 2, ops);
  if (!copy_transposed(&it, dst->dtype, src->dtype)) mg_iter_run(NULL, NULL, &it, copy_loop, kinds);
}

mg_status mg_tensor_copy_(mg_ctx *C, mg_tensor *dst, mg_tensor *src) {
  if (!mg_broadcasts_to(src, dst)) {
    char s1[96], s2[96];
    return mg_fail(C, MG_ESHAPE, "copy: source %s does not broadcast to destination %s",
                   mg_shapestr(s1, sizeof s1, src->ndim, src->shape),
                   mg_shapestr(s2, sizeof s2, dst->ndim, dst->shape));
  }
  mg_bump_version(dst);
  if (src->storage == dst->storage) {         /* overlapping: go through a copy */
    mg_tensor *tmp = NULL;
    mg_status st = mg_tensor_empty(C, src->dtype, src->ndim, src->shape, &tmp);
    if (st != MG_OK) return st;
    copy_into(tmp, src);
    copy_into(dst, tmp);
    mg_tensor_release(tmp);
    return MG_OK;
  }
  copy_into(dst, src);
  return MG_OK;
}

static void fill_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  double v = *(const double *)ud;
  if (*(const int *)((const double *)ud + 1) == MG_F64) {
    double *y = (double *)p[0];
    for (int64_t i = 0; i < n; i++) y[i * s[0]] = v;
  } else {
    float *y = (float *)p[0], f = (float)v;
    for (int64_t i = 0; i < n; i++) y[i * s[0]] = f;
  }
}

void mg_tensor_fill_(mg_tensor *dst, double v) {
  struct { double v; int dt; } ud = { v, dst->dtype };
  mg_bump_version(dst);
  mg_iter it;
  mg_iter_init(&it, dst->ndim, dst->shape, 1, &dst);
  mg_iter_run(NULL, NULL, &it, fill_loop, &ud);
}

/* ================================================================ helpers */

static mg_status view(mg_ctx *C, int op, mg_tensor *x, int ndim, const int64_t *shape,
                      const int64_t *stride, int64_t offset, const mg_attr *at,
                      mg_tensor **out) {
  mg_tensor *y = mg_view_new(C, x->storage, x->dtype, ndim, shape, stride, offset);
  if (y == NULL) return mg_fail(C, MG_ENOMEM, "out of memory");
  return mg_record_result(C, op, 1, &x, y, at, out);
}

/* 'dim' is 0-based; the message counts from 1, as every other message does. */
static mg_status bad_dim(mg_ctx *C, const char *fn, int dim, int ndim) {
  return mg_fail(C, MG_EINDEX, "%s: dimension %d out of range for a %d-d tensor", fn, dim + 1,
                 ndim);
}

/* ================================================================ reshape */

/* Strides for viewing 'x' as 'shape' without a copy, if possible (NumPy's rule: each run of
** old dims merged or split must be contiguous in itself). */
static bool view_strides(const mg_tensor *x, int nd, const int64_t *shape, int64_t *stride) {
  int oi = 0, ni = 0;
  int on = x->ndim;
  while (oi < on && ni < nd) {
    int64_t np = shape[ni], op = x->shape[oi];
    int oj = oi + 1, nj = ni + 1;
    while (np != op) {
      if (np < op) { if (nj >= nd) return false; np *= shape[nj++]; }
      else { if (oj >= on) return false; op *= x->shape[oj++]; }
    }
    int inner = -1, prev = -1;                  /* dims of the run not of size 1 */
    for (int k = oj - 1; k >= oi; k--) {        /* size-1 dims take no part in the layout */
      if (x->shape[k] == 1) continue;
      if (prev >= 0 && x->stride[k] != x->stride[prev] * x->shape[prev]) return false;
      if (inner < 0) inner = k;
      prev = k;
    }
    stride[nj - 1] = inner >= 0 ? x->stride[inner] : 1;
    for (int k = nj - 1; k > ni; k--) stride[k - 1] = stride[k] * shape[k];
    oi = oj;
    ni = nj;
  }
  for (; ni < nd; ni++) stride[ni] = 1;     /* trailing size-1 dims */
  return true;
}

mg_status mg_tensor_reshape(mg_ctx *C, mg_tensor *x, int ndim, const int64_t *shape,
                            mg_tensor **out) {
  int64_t sh[MG_MAXDIM], stride[MG_MAXDIM], known = 1, n = mg_tensor_numel(x);
  int infer = -1;
  char s1[96], s2[96];
  if (ndim < 0 || ndim > MG_MAXDIM)
    return mg_fail(C, MG_ESHAPE, "reshape: %d dimensions (at most %d)", ndim, MG_MAXDIM);
  for (int i = 0; i < ndim; i++) {
    sh[i] = shape[i];
    if (shape[i] == -1 && infer < 0) { infer = i; continue; }
    if (shape[i] < 0)
      return mg_fail(C, MG_ESHAPE, "reshape: invalid size %lld in %s (one -1 at most)",
                     (long long)shape[i], mg_shapestr(s2, sizeof s2, ndim, shape));
    if (shape[i] != 0 && known > INT64_MAX / shape[i]) known = -1;
    else known *= shape[i];
  }
  if (infer >= 0 && known > 0 && n % known == 0) sh[infer] = n / known;
  if (mg_shape_numel(ndim, sh) != n || (infer >= 0 && known <= 0))
    return mg_fail(C, MG_ESHAPE, "reshape: cannot reshape %s (%lld elements) to %s",
                   mg_shapestr(s1, sizeof s1, x->ndim, x->shape), (long long)n,
                   mg_shapestr(s2, sizeof s2, ndim, shape));
  if (view_strides(x, ndim, sh, stride) || n == 0) {
    if (n == 0) mg_contiguous_strides(ndim, sh, stride);
    return view(C, MG_OP_RESHAPE, x, ndim, sh, stride, x->offset, NULL, out);
  }
  mg_tensor *c = NULL;
  mg_status st = mg_tensor_clone(C, x, &c);
  if (st != MG_OK) return st;
  mg_contiguous_strides(ndim, sh, stride);
  st = view(C, MG_OP_RESHAPE, c, ndim, sh, stride, c->offset, NULL, out);
  mg_tensor_release(c);
  return st;
}

mg_status mg_tensor_squeeze(mg_ctx *C, mg_tensor *x, int dim, mg_tensor **out) {
  int64_t sh[MG_MAXDIM];
  int nd = 0;
  if (dim >= x->ndim) return bad_dim(C, "squeeze", dim, x->ndim);
  for (int i = 0; i < x->ndim; i++)
    if (x->shape[i] != 1 || (dim >= 0 && i != dim)) sh[nd++] = x->shape[i];
  return mg_tensor_reshape(C, x, nd, sh, out);
}

mg_status mg_tensor_unsqueeze(mg_ctx *C, mg_tensor *x, int dim, mg_tensor **out) {
  int64_t sh[MG_MAXDIM];
  if (dim < 0 || dim > x->ndim) return bad_dim(C, "unsqueeze", dim, x->ndim + 1);
  if (x->ndim + 1 > MG_MAXDIM)
    return mg_fail(C, MG_ESHAPE, "unsqueeze: a tensor may have at most %d dimensions", MG_MAXDIM);
  for (int i = 0, j = 0; i <= x->ndim; i++) sh[i] = i == dim ? 1 : x->shape[j++];
  return mg_tensor_reshape(C, x, x->ndim + 1, sh, out);
}

static mg_status reshape_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                             const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  int64_t sh[MG_MAXDIM];
  int nd = mg_lead_shape(g[0], lead, n->in[0]->ndim, n->in[0]->shape, sh);
  return mg_tensor_reshape(C, g[0], nd, sh, &gin[0]);
}

static mg_status reshape_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                             mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  int64_t sh[MG_MAXDIM];
  int nd = mg_lead_shape(t[0], lead, n->out[0]->ndim, n->out[0]->shape, sh);
  return mg_tensor_reshape(C, t[0], nd, sh, &tout[0]);
}

/* ================================================================ permute */

mg_status mg_tensor_permute(mg_ctx *C, mg_tensor *x, const int *perm, mg_tensor **out) {
  int64_t sh[MG_MAXDIM], st[MG_MAXDIM];
  bool seen[MG_MAXDIM] = { false };
  mg_attr at = { .ni = x->ndim };
  for (int i = 0; i < x->ndim; i++) {
    int p = perm[i];
    if (p < 0 || p >= x->ndim || seen[p])
      return mg_fail(C, MG_EARG, "permute: %d is not a permutation of the %d dimensions",
                     p + 1, x->ndim);
    seen[p] = true;
    sh[i] = x->shape[p];
    st[i] = x->stride[p];
    at.i[i] = p;
  }
  return view(C, MG_OP_PERMUTE, x, x->ndim, sh, st, x->offset, &at, out);
}

mg_status mg_tensor_transpose(mg_ctx *C, mg_tensor *x, int d1, int d2, mg_tensor **out) {
  int perm[MG_MAXDIM];
  if (d1 < 0 || d1 >= x->ndim) return bad_dim(C, "transpose", d1, x->ndim);
  if (d2 < 0 || d2 >= x->ndim) return bad_dim(C, "transpose", d2, x->ndim);
  for (int i = 0; i < x->ndim; i++) perm[i] = i;
  perm[d1] = d2;
  perm[d2] = d1;
  return mg_tensor_permute(C, x, perm, out);
}

/* Permute a (lead + ndim)-d tensor by 'perm' (or its inverse), keeping the lead dims. */
static mg_status permute_lead(mg_ctx *C, mg_tensor *t, int lead, const mg_attr *at,
                              bool inverse, mg_tensor **out) {
  int perm[MG_MAXDIM];
  for (int i = 0; i < lead; i++) perm[i] = i;
  for (int i = 0; i < at->ni; i++) {
    if (inverse) perm[lead + at->i[i]] = lead + i;
    else perm[lead + i] = lead + (int)at->i[i];
  }
  return mg_tensor_permute(C, t, perm, out);
}

static mg_status permute_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                             const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  return permute_lead(C, g[0], lead, &n->attr, true, &gin[0]);
}

static mg_status permute_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                             mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  return permute_lead(C, t[0], lead, &n->attr, false, &tout[0]);
}

/* ================================================================ expand */

mg_status mg_tensor_expand(mg_ctx *C, mg_tensor *x, int ndim, const int64_t *shape,
                           mg_tensor **out) {
  int64_t st[MG_MAXDIM];
  char s1[96], s2[96];
  if (ndim < x->ndim || ndim > MG_MAXDIM) goto bad;
  if (mg_shape_numel(ndim, shape) < 0)            /* stride 0 costs nothing, counting does */
    return mg_fail(C, MG_ESHAPE, "expand: shape %s has too many elements",
                   mg_shapestr(s2, sizeof s2, ndim, shape));
  for (int i = 0; i < ndim; i++) {
    int xd = x->ndim - ndim + i;
    int64_t xs = xd >= 0 ? x->shape[xd] : 1;
    if (shape[i] < 0 || (xs != shape[i] && xs != 1)) goto bad;
    st[i] = (xd >= 0 && xs == shape[i]) ? x->stride[xd] : 0;
  }
  return view(C, MG_OP_EXPAND, x, ndim, shape, st, x->offset, NULL, out);
bad:
  return mg_fail(C, MG_ESHAPE, "expand: cannot broadcast %s to %s",
                 mg_shapestr(s1, sizeof s1, x->ndim, x->shape),
                 mg_shapestr(s2, sizeof s2, ndim, shape));
}

static mg_status expand_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                            const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  return mg_unbroadcast(C, g[0], lead, n->in[0]->ndim, n->in[0]->shape, &gin[0]);
}

static mg_status expand_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                            mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  return mg_expand_lead(C, t[0], lead, n->out[0]->ndim, n->out[0]->shape, &tout[0]);
}

/* ================================================================ narrow, select, pad */

mg_status mg_tensor_narrow(mg_ctx *C, mg_tensor *x, int dim, int64_t start, int64_t len,
                           mg_tensor **out) {
  if (dim < 0 || dim >= x->ndim) return bad_dim(C, "narrow", dim, x->ndim);
  if (start < 0 || len < 0 || start > x->shape[dim] - len)
    return mg_fail(C, MG_EINDEX, "narrow: %lld elements from %lld out of bounds for dimension %d of size %lld",
                   (long long)len, (long long)start, dim + 1, (long long)x->shape[dim]);
  int64_t sh[MG_MAXDIM];
  memcpy(sh, x->shape, sizeof sh);
  sh[dim] = len;
  mg_attr at = { .ni = 3, .i = { dim, start, len } };
  return view(C, MG_OP_NARROW, x, x->ndim, sh, x->stride, x->offset + start * x->stride[dim],
              &at, out);
}

mg_status mg_tensor_select(mg_ctx *C, mg_tensor *x, int dim, int64_t i, mg_tensor **out) {
  if (dim < 0 || dim >= x->ndim) return bad_dim(C, "select", dim, x->ndim);
  if (i < 0 || i >= x->shape[dim])
    return mg_fail(C, MG_EINDEX, "select: index %lld out of range for dimension %d of size %lld",
                   (long long)i + 1, dim + 1, (long long)x->shape[dim]);
  int64_t sh[MG_MAXDIM], st[MG_MAXDIM];
  for (int k = 0, j = 0; k < x->ndim; k++)
    if (k != dim) { sh[j] = x->shape[k]; st[j++] = x->stride[k]; }
  mg_attr at = { .ni = 2, .i = { dim, i } };
  return view(C, MG_OP_SELECT, x, x->ndim - 1, sh, st, x->offset + i * x->stride[dim], &at, out);
}

mg_status mg_tensor_pad(mg_ctx *C, mg_tensor *x, int dim, int64_t start, int64_t size,
                        mg_tensor **out) {
  if (dim < 0 || dim >= x->ndim) return bad_dim(C, "pad", dim, x->ndim);
  if (start < 0 || size < 0 || start > size - x->shape[dim])
    return mg_fail(C, MG_EINDEX, "pad: %lld elements at %lld do not fit in %lld",
                   (long long)x->shape[dim], (long long)start, (long long)size);
  int64_t sh[MG_MAXDIM];
  memcpy(sh, x->shape, sizeof sh);
  sh[dim] = size;
  mg_tensor *y = NULL;
  mg_status st = mg_tensor_zeros(C, x->dtype, x->ndim, sh, &y);
  if (st != MG_OK) return mg_name_error(C, st, "pad");
  mg_tensor part = *y;                            /* a borrowed window, not a new tensor */
  part.shape[dim] = x->shape[dim];
  part.offset += start * y->stride[dim];
  copy_into(&part, x);
  mg_attr at = { .ni = 3, .i = { dim, start, size } };
  return mg_record_result(C, MG_OP_PAD, 1, &x, y, &at, out);
}

/* narrow and pad (attr: dim, start, and the window's or the padded dim's size) are each
** other's adjoint: the VJP of one is the other back to the input's size, the JVP the op
** itself on the tangent. */
static mg_status window(mg_ctx *C, const mg_node *n, int lead, mg_tensor *v, bool pad,
                        int64_t size, mg_tensor **res) {
  int dim = lead + (int)n->attr.i[0];
  if (pad) return mg_tensor_pad(C, v, dim, n->attr.i[1], size, res);
  return mg_tensor_narrow(C, v, dim, n->attr.i[1], size, res);
}

static mg_status window_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                            const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  return window(C, n, lead, g[0], n->op == MG_OP_NARROW, n->in[0]->shape[n->attr.i[0]], &gin[0]);
}

static mg_status window_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                            mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  return window(C, n, lead, t[0], n->op == MG_OP_PAD, n->attr.i[2], &tout[0]);
}

static mg_status select_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                            const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  const int64_t *a = n->attr.i;
  mg_tensor *u = NULL;
  mg_status st = mg_tensor_unsqueeze(C, g[0], lead + (int)a[0], &u);
  if (st != MG_OK) return st;
  st = mg_tensor_pad(C, u, lead + (int)a[0], a[1], n->in[0]->shape[a[0]], &gin[0]);
  mg_tensor_release(u);
  return st;
}

static mg_status select_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                            mg_tensor **tout) {
  if (t[0] == NULL) return MG_OK;
  return mg_tensor_select(C, t[0], lead + (int)n->attr.i[0], n->attr.i[1], &tout[0]);
}

/* ================================================================ copies */

static mg_status copy_op(mg_ctx *C, int op, mg_tensor *x, mg_dtype dt, mg_tensor **out) {
  mg_tensor *y = NULL;
  mg_status st = mg_tensor_empty(C, dt, x->ndim, x->shape, &y);
  if (st != MG_OK) return mg_name_error(C, st, mg_ops[op].name);
  copy_into(y, x);
  return mg_record_result(C, op, 1, &x, y, NULL, out);
}

mg_status mg_tensor_clone(mg_ctx *C, mg_tensor *x, mg_tensor **out) {
  return copy_op(C, MG_OP_COPY, x, x->dtype, out);
}

mg_status mg_tensor_contiguous(mg_ctx *C, mg_tensor *x, mg_tensor **out) {
  if (mg_tensor_is_contiguous(x)) { *out = mg_tensor_retain(x); return MG_OK; }
  return mg_tensor_clone(C, x, out);
}

mg_status mg_tensor_cast(mg_ctx *C, mg_tensor *x, mg_dtype dt, mg_tensor **out) {
  if (x->dtype == dt) { *out = mg_tensor_retain(x); return MG_OK; }
  return copy_op(C, MG_OP_CAST, x, dt, out);
}

static mg_status copy_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                          const bool *need, mg_tensor **gin) {
  (void)lead;
  if (!need[0] || g[0] == NULL) return MG_OK;
  return mg_tensor_cast(C, g[0], n->in[0]->dtype, &gin[0]);
}

static mg_status copy_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                          mg_tensor **tout) {
  (void)lead;
  if (t[0] == NULL) return MG_OK;
  return mg_tensor_cast(C, t[0], n->out[0]->dtype, &tout[0]);
}

/* ================================================================ cat, stack */

mg_status mg_tensor_cat(mg_ctx *C, int n, mg_tensor *const *xs, int dim, mg_tensor **out) {
  char s1[96], s2[96];
  if (n < 1) return mg_fail(C, MG_EARG, "cat: expected a non-empty list of tensors");
  mg_tensor *x0 = xs[0];
  if (dim < 0 || dim >= x0->ndim) return bad_dim(C, "cat", dim, x0->ndim);
  int64_t sh[MG_MAXDIM], total = 0;
  mg_dtype dt = x0->dtype;
  for (int k = 0; k < n; k++) {
    mg_tensor *x = xs[k];
    bool ok = x->ndim == x0->ndim;
    for (int i = 0; ok && i < x->ndim; i++) ok = i == dim || x->shape[i] == x0->shape[i];
    if (!ok)
      return mg_fail(C, MG_ESHAPE, "cat: tensor %d has shape %s, expected %s except in dimension %d",
                     k + 1, mg_shapestr(s1, sizeof s1, x->ndim, x->shape),
                     mg_shapestr(s2, sizeof s2, x0->ndim, x0->shape), dim + 1);
    if (x->dtype == MG_F64) dt = MG_F64;
    if (x->shape[dim] > INT64_MAX - total)        /* expanded views can be huge */
      return mg_fail(C, MG_ESHAPE, "cat: the joined dimension %d has more than %lld elements",
                     dim + 1, (long long)INT64_MAX);
    total += x->shape[dim];
  }
  memcpy(sh, x0->shape, sizeof sh);
  sh[dim] = total;
  mg_tensor *y = NULL;
  mg_status st = mg_tensor_empty(C, dt, x0->ndim, sh, &y);
  if (st != MG_OK) return mg_name_error(C, st, "cat");
  int64_t at0 = 0;
  for (int k = 0; k < n; k++) {
    mg_tensor part = *y;
    part.shape[dim] = xs[k]->shape[dim];
    part.offset += at0 * y->stride[dim];
    copy_into(&part, xs[k]);
    at0 += xs[k]->shape[dim];
  }
  mg_attr at = { .ni = 1, .i = { dim } };
  return mg_record_result(C, MG_OP_CAT, n, xs, y, &at, out);
}

mg_status mg_tensor_stack(mg_ctx *C, int n, mg_tensor *const *xs, int dim, mg_tensor **out) {
  char s1[96], s2[96];
  if (n < 1) return mg_fail(C, MG_EARG, "stack: expected a non-empty list of tensors");
  if (dim < 0 || dim > xs[0]->ndim) return bad_dim(C, "stack", dim, xs[0]->ndim + 1);
  for (int k = 1; k < n; k++)
    if (!mg_same_shape(xs[k], xs[0]))
      return mg_fail(C, MG_ESHAPE, "stack: tensor %d has shape %s, expected %s", k + 1,
                     mg_shapestr(s1, sizeof s1, xs[k]->ndim, xs[k]->shape),
                     mg_shapestr(s2, sizeof s2, xs[0]->ndim, xs[0]->shape));
  mg_tensor **us = calloc((size_t)n, sizeof *us);
  if (us == NULL) return mg_fail(C, MG_ENOMEM, "out of memory");
  mg_status st = MG_OK;
  for (int k = 0; k < n && st == MG_OK; k++) st = mg_tensor_unsqueeze(C, xs[k], dim, &us[k]);
  if (st == MG_OK) st = mg_tensor_cat(C, n, us, dim, out);
  for (int k = 0; k < n; k++) mg_tensor_release(us[k]);
  free(us);
  return st;
}

static mg_status cat_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                         const bool *need, mg_tensor **gin) {
  if (g[0] == NULL) return MG_OK;
  int dim = (int)n->attr.i[0];
  int64_t at0 = 0;
  for (int k = 0; k < n->nin; k++) {
    int64_t len = n->in[k]->shape[dim];
    if (need[k]) {
      mg_tensor *v = NULL;
      mg_status st = mg_tensor_narrow(C, g[0], lead + dim, at0, len, &v);
      if (st != MG_OK) return st;
      st = mg_tensor_cast(C, v, n->in[k]->dtype, &gin[k]);
      mg_tensor_release(v);
      if (st != MG_OK) return st;
    }
    at0 += len;
  }
  return MG_OK;
}

static mg_status cat_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                         mg_tensor **tout) {
  const mg_tensor *any = NULL;
  for (int k = 0; k < n->nin && any == NULL; k++) any = t[k];
  if (any == NULL) return MG_OK;
  mg_tensor **parts = calloc((size_t)n->nin, sizeof *parts);
  if (parts == NULL) return mg_fail(C, MG_ENOMEM, "out of memory");
  mg_status st = MG_OK;
  for (int k = 0; k < n->nin && st == MG_OK; k++) {
    if (t[k] != NULL) { parts[k] = mg_tensor_retain(t[k]); continue; }
    int64_t sh[MG_MAXDIM];
    int nd = mg_lead_shape(any, lead, n->in[k]->ndim, n->in[k]->shape, sh);
    st = mg_tensor_zeros(C, n->out[0]->dtype, nd, sh, &parts[k]);
  }
  if (st == MG_OK) st = mg_tensor_cat(C, n->nin, parts, lead + (int)n->attr.i[0], &tout[0]);
  for (int k = 0; k < n->nin; k++) mg_tensor_release(parts[k]);
  free(parts);
  return st;
}

const mg_rules mg_rules_reshape = { .vjp = reshape_vjp, .jvp = reshape_jvp, .unread = MG_UNREAD_ALL };
const mg_rules mg_rules_permute = { .vjp = permute_vjp, .jvp = permute_jvp, .unread = MG_UNREAD_ALL };
const mg_rules mg_rules_expand = { .vjp = expand_vjp, .jvp = expand_jvp, .unread = MG_UNREAD_ALL };
const mg_rules mg_rules_narrow = { .vjp = window_vjp, .jvp = window_jvp, .unread = MG_UNREAD_ALL };
const mg_rules mg_rules_select = { .vjp = select_vjp, .jvp = select_jvp, .unread = MG_UNREAD_ALL };
const mg_rules mg_rules_pad = { .vjp = window_vjp, .jvp = window_jvp, .unread = MG_UNREAD_ALL };
const mg_rules mg_rules_copy = { .vjp = copy_vjp, .jvp = copy_jvp, .unread = MG_UNREAD_ALL };
const mg_rules mg_rules_cat = { .vjp = cat_vjp, .jvp = cat_jvp, .unread = MG_UNREAD_ALL };
