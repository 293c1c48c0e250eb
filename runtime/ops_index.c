/*
** ops_index.c - reordering and indexing (issue 12): flip, diagonal and its adjoint
** diag_embed, gather and its adjoint scatter_add, with index_select and take_along_dim made
** from gather. Each beside its 'apply' (the op or its adjoint), from which the one pair of
** rules of linear ops (mg_linear_vjp, mg_linear_jvp) compute.
*/
#include "mg_impl.h"

#include <math.h>
#include <string.h>

static mg_status bad_dim(mg_ctx *C, const char *fn, int dim, int ndim) {
  return mg_fail(C, MG_EINDEX, "%s: dimension %d out of range for a %d-d tensor", fn, dim + 1,
                 ndim);
}

/* The recorded ops of this file are linear in their input, so one pair of rules serves them
** all: mg_linear_vjp and mg_linear_jvp (rules.c) with each op's 'apply' (flip_apply, ...;
** dispatched by linear_apply at the end of the file). */
static mg_status linear_apply(mg_ctx *C, const mg_node *n, int lead, mg_tensor *v, bool adjoint,
                              mg_tensor **res);
#define LINEAR_RULES { .vjp = mg_linear_vjp, .jvp = mg_linear_jvp, .linear = linear_apply }


/* ================================================================ flip */

mg_status mg_tensor_flip(mg_ctx *C, mg_tensor *x, uint32_t mask, mg_tensor **out) {
  if (x->ndim < 32 && (mask >> x->ndim) != 0)
    return mg_fail(C, MG_EINDEX, "flip: dimension out of range for a %d-d tensor", x->ndim);
  mg_tensor src = *x, *y = NULL;                 /* a borrowed reversed window, not a tensor */
  for (int d = 0; d < x->ndim; d++)
    if (((mask >> d) & 1u) && x->shape[d] > 1) {
      src.offset += (x->shape[d] - 1) * x->stride[d];
      src.stride[d] = -x->stride[d];
    }
  mg_status st = mg_tensor_empty(C, x->dtype, x->ndim, x->shape, &y);
  if (st == MG_OK) st = mg_tensor_copy_(C, y, &src);
  if (st != MG_OK) { mg_tensor_release(y); return st; }
  mg_attr at = { .ni = 1, .i = { mask } };
  return mg_record_result(C, MG_OP_FLIP, 1, &x, y, &at, out);
}

/* A flip is its own adjoint. */
static mg_status flip_apply(mg_ctx *C, const mg_node *n, int lead, mg_tensor *v, bool adjoint,
                            mg_tensor **res) {
  (void)adjoint;
  return mg_tensor_flip(C, v, (uint32_t)n->attr.i[0] << lead, res);
}

const mg_rules mg_rules_flip = LINEAR_RULES;

/* ================================================================ diagonal, diag_embed */

/* The window of the 'offset' diagonal of dims d1, d2 of 'x': shape, strides and offset into
** 'w' (x's other dims in order, then the diagonal). */
static void diag_window(const mg_tensor *x, int64_t offset, int d1, int d2, mg_tensor *w) {
  int64_t n1 = x->shape[d1], n2 = x->shape[d2], len, start;
  if (offset >= 0) { len = n2 - offset < n1 ? n2 - offset : n1; start = offset * x->stride[d2]; }
  else { len = n1 + offset < n2 ? n1 + offset : n2; start = -offset * x->stride[d1]; }
  if (len <= 0) { len = 0; start = 0; }
  *w = *x;
  int k = 0;
  for (int d = 0; d < x->ndim; d++)
    if (d != d1 && d != d2) { w->shape[k] = x->shape[d]; w->stride[k++] = x->stride[d]; }
  w->shape[k] = len;
  w->stride[k] = x->stride[d1] + x->stride[d2];
  w->ndim = k + 1;
  w->offset = x->offset + start;
}

static mg_status check_pair(mg_ctx *C, const char *fn, int64_t offset, int d1, int d2,
                            int ndim) {
  if (offset < -(INT64_C(1) << 52) || offset > (INT64_C(1) << 52))   /* -offset, n + |offset| */
    return mg_fail(C, MG_EARG, "%s: diagonal offset %lld out of range", fn, (long long)offset);
  if (d1 < 0 || d1 >= ndim) return bad_dim(C, fn, d1, ndim);
  if (d2 < 0 || d2 >= ndim) return bad_dim(C, fn, d2, ndim);
  if (d1 == d2) return mg_fail(C, MG_EARG, "%s: dimensions %d and %d are the same", fn, d1 + 1, d2 + 1);
  return MG_OK;
}

mg_status mg_tensor_diagonal(mg_ctx *C, mg_tensor *x, int64_t offset, int d1, int d2,
                             mg_tensor **out) {
  mg_status st = check_pair(C, "diagonal", offset, d1, d2, x->ndim);
  if (st != MG_OK) return st;
  mg_tensor w;
  diag_window(x, offset, d1, d2, &w);
  mg_tensor *y = mg_view_new(C, x->storage, x->dtype, w.ndim, w.shape, w.stride, w.offset);
  if (y == NULL) return mg_fail(C, MG_ENOMEM, "out of memory");
  mg_attr at = { .ni = 3, .i = { offset, d1, d2 } };
  return mg_record_result(C, MG_OP_DIAGONAL, 1, &x, y, &at, out);
}

/* Zeros of 'shape' with 'src' on their diagonal (src's shape: that of the diagonal view). */
static mg_status diag_scatter(mg_ctx *C, mg_tensor *src, int64_t offset, int d1, int d2,
                              int ndim, const int64_t *shape, mg_tensor **out) {
  mg_tensor *y = NULL, w;
  mg_status st = mg_tensor_zeros(C, src->dtype, ndim, shape, &y);
  if (st != MG_OK) return st;
  diag_window(y, offset, d1, d2, &w);
  if (w.ndim != src->ndim || memcmp(w.shape, src->shape, (size_t)w.ndim * sizeof *w.shape) != 0) {
    char s1[96], s2[96];
    mg_tensor_release(y);
    return mg_fail(C, MG_ESHAPE, "diag_embed: %s does not fit the diagonal %s",
                   mg_shapestr(s1, sizeof s1, src->ndim, src->shape),
                   mg_shapestr(s2, sizeof s2, w.ndim, w.shape));
  }
  if ((st = mg_tensor_copy_(C, &w, src)) != MG_OK) { mg_tensor_release(y); return st; }
  mg_attr at = { .ni = 3, .i = { offset, d1, d2 } };
  return mg_record_result(C, MG_OP_DIAG_EMBED, 1, &src, y, &at, out);
}

mg_status mg_tensor_diag_embed(mg_ctx *C, mg_tensor *x, int64_t offset, int d1, int d2,
                               mg_tensor **out) {
  int nd = x->ndim + 1;
  if (x->ndim < 1) return mg_fail(C, MG_ESHAPE, "diag_embed: expected at least 1 dimension");
  if (nd > MG_MAXDIM) return mg_fail(C, MG_ESHAPE, "diag_embed: a tensor may have at most %d dimensions", MG_MAXDIM);
  mg_status st = check_pair(C, "diag_embed", offset, d1, d2, nd);
  if (st != MG_OK) return st;
  int64_t sh[MG_MAXDIM], n = x->shape[x->ndim - 1] + (offset < 0 ? -offset : offset);
  for (int d = 0, k = 0; d < nd; d++) sh[d] = (d == d1 || d == d2) ? n : x->shape[k++];
  return diag_scatter(C, x, offset, d1, d2, nd, sh, out);
}

/* The node's diagonal of 'v' (lead dims kept), or 'v' placed on that diagonal of zeros of
** lead .. the input's shape (the adjoint, for diagonal) or the output's (diag_embed): each is
** the other's adjoint. */
static mg_status diag_apply(mg_ctx *C, const mg_node *n, int lead, mg_tensor *v, bool adjoint,
                            mg_tensor **res) {
  const int64_t *a = n->attr.i;
  int d1 = lead + (int)a[1], d2 = lead + (int)a[2];
  if ((n->op == MG_OP_DIAGONAL) != adjoint) return mg_tensor_diagonal(C, v, a[0], d1, d2, res);
  const mg_tensor *to = adjoint ? n->in[0] : n->out[0];
  int64_t sh[MG_MAXDIM];
  int nd = mg_lead_shape(v, lead, to->ndim, to->shape, sh);
  return diag_scatter(C, v, a[0], d1, d2, nd, sh, res);
}

const mg_rules mg_rules_diagonal = LINEAR_RULES;
const mg_rules mg_rules_diag_embed = LINEAR_RULES;

/* ================================================================ gather, scatter_add */

/* Element at storage offset 'at' (in elements) of 't'. */
static double elem(const mg_tensor *t, int64_t at) {
  return t->dtype == MG_F64 ? ((const double *)t->storage->data)[at]
                            : ((const float *)t->storage->data)[at];
}

/* Check that 'index' (rank 'ndim') fits 'shape' except along 'dim'. */
static mg_status check_index_shape(mg_ctx *C, const char *fn, const mg_tensor *index, int dim,
                                   int ndim, const int64_t *shape) {
  char s1[96], s2[96];
  if (dim < 0 || dim >= ndim) return bad_dim(C, fn, dim, ndim);
  bool ok = index->ndim == ndim;
  for (int d = 0; ok && d < ndim; d++) ok = d == dim || index->shape[d] <= shape[d];
  if (!ok)
    return mg_fail(C, MG_ESHAPE, "%s: index of shape %s does not fit %s outside dimension %d", fn,
                   mg_shapestr(s1, sizeof s1, index->ndim, index->shape),
                   mg_shapestr(s2, sizeof s2, ndim, shape), dim + 1);
  return MG_OK;
}

/* Walk every position of 'index': for each, 'a' gets the element offset into tensor A
** (strides 'sa', its index along 'dim' replaced by the index value) and 'b' that into B
** (strides 'sb', position as is); calls 'fn'. Fails naming 'fn_name' on a bad index. */
typedef void (*pair_fn)(mg_tensor *A, int64_t a, mg_tensor *B, int64_t b);

static mg_status index_walk(mg_ctx *C, const char *fn_name, mg_tensor *index, int dim,
                            int64_t size, mg_tensor *A, mg_tensor *B, pair_fn fn) {
  int nd = index->ndim;
  int64_t pos[MG_MAXDIM] = { 0 }, n = mg_tensor_numel(index);
  for (int64_t k = 0; k < n; k++) {
    int64_t io = index->offset, a = A->offset, b = B->offset;
    for (int d = 0; d < nd; d++) {
      io += pos[d] * index->stride[d];
      b += pos[d] * B->stride[d];
      if (d != dim) a += pos[d] * A->stride[d];
    }
    double v = elem(index, io);
    if (v != floor(v))
      return mg_fail(C, MG_EARG, "%s: index %g is not an integer", fn_name, v + 1);
    if (v < 0 || v >= (double)size)
      return mg_fail(C, MG_EINDEX, "%s: index %g out of range for dimension %d of size %lld",
                     fn_name, v + 1, dim + 1, (long long)size);
    fn(A, a + (int64_t)v * A->stride[dim], B, b);
    for (int d = nd - 1; d >= 0; d--) {              /* next position, last dim fastest */
      if (++pos[d] < index->shape[d]) break;
      pos[d] = 0;
    }
  }
  return MG_OK;
}

static void take(mg_tensor *X, int64_t a, mg_tensor *Y, int64_t b) {
  if (X->dtype == MG_F64) ((double *)Y->storage->data)[b] = ((double *)X->storage->data)[a];
  else ((float *)Y->storage->data)[b] = ((float *)X->storage->data)[a];
}

static void put_add(mg_tensor *Y, int64_t a, mg_tensor *S, int64_t b) {
  if (Y->dtype == MG_F64) ((double *)Y->storage->data)[a] += ((double *)S->storage->data)[b];
  else ((float *)Y->storage->data)[a] += ((float *)S->storage->data)[b];
}

/* index_select's pattern (its 1-d index expanded: stride 0 outside 'dim'), with A and B
** contiguous and of the index's shape outside 'dim', and B of the index's shape: then every
** index value moves a block of 'inner' contiguous elements (rows of an embedding table), in
** the order index_walk visits them (the same sums for put_add, the same first bad index). */
static bool rows_pattern(const mg_tensor *index, int dim, const mg_tensor *A, const mg_tensor *B) {
  if (!mg_tensor_is_contiguous(A) || !mg_tensor_is_contiguous(B) || !mg_same_shape(index, B) ||
      A->ndim != index->ndim || A->dtype != B->dtype)
    return false;
  for (int d = 0; d < index->ndim; d++)
    if (d != dim && (index->stride[d] != 0 || A->shape[d] != index->shape[d])) return false;
  return true;
}

static mg_status rows_walk(mg_ctx *C, const char *fn_name, mg_tensor *index, int dim,
                           mg_tensor *A, mg_tensor *B, bool add) {
  int64_t outer = 1, inner = 1, L = index->shape[dim], SA = A->shape[dim];
  for (int d = 0; d < dim; d++) outer *= index->shape[d];
  for (int d = dim + 1; d < index->ndim; d++) inner *= index->shape[d];
  bool f64 = A->dtype == MG_F64;
  for (int64_t o = 0; o < outer; o++)
    for (int64_t k = 0; k < L; k++) {
      double v = elem(index, index->offset + k * index->stride[dim]);
      if (v != floor(v))
        return mg_fail(C, MG_EARG, "%s: index %g is not an integer", fn_name, v + 1);
      if (v < 0 || v >= (double)SA)
        return mg_fail(C, MG_EINDEX, "%s: index %g out of range for dimension %d of size %lld",
                       fn_name, v + 1, dim + 1, (long long)SA);
      int64_t a = (o * SA + (int64_t)v) * inner, b = (o * L + k) * inner;
      if (f64) {
        double *pa = MG_F64P(A) + a, *pb = MG_F64P(B) + b;
        if (add) for (int64_t j = 0; j < inner; j++) pa[j] += pb[j];
        else memcpy(pb, pa, (size_t)inner * sizeof *pa);
      } else {
        float *pa = MG_F32P(A) + a, *pb = MG_F32P(B) + b;
        if (add) for (int64_t j = 0; j < inner; j++) pa[j] += pb[j];
        else memcpy(pb, pa, (size_t)inner * sizeof *pa);
      }
    }
  return MG_OK;
}

static mg_status gather_named(mg_ctx *C, const char *fn, mg_tensor *x, int dim,
                              mg_tensor *index, mg_tensor **out) {
  mg_status st = check_index_shape(C, fn, index, dim, x->ndim, x->shape);
  if (st != MG_OK) return st;
  mg_tensor *y = NULL;
  if ((st = mg_tensor_empty(C, x->dtype, index->ndim, index->shape, &y)) != MG_OK) return st;
  if ((st = rows_pattern(index, dim, x, y) ? rows_walk(C, fn, index, dim, x, y, false)
                                           : index_walk(C, fn, index, dim, x->shape[dim], x, y, take))
      != MG_OK) {
    mg_tensor_release(y);
    return st;
  }
  mg_tensor *in[2] = { x, index };
  mg_attr at = { .ni = 1, .i = { dim } };
  return mg_record_result(C, MG_OP_GATHER, 2, in, y, &at, out);
}

mg_status mg_tensor_gather(mg_ctx *C, mg_tensor *x, int dim, mg_tensor *index,
                           mg_tensor **out) {
  return gather_named(C, "gather", x, dim, index, out);
}

mg_status mg_tensor_scatter_add(mg_ctx *C, mg_tensor *src, int dim, mg_tensor *index,
                                int ndim, const int64_t *shape, mg_tensor **out) {
  if (!mg_same_shape(src, index)) {
    char s1[96], s2[96];
    return mg_fail(C, MG_ESHAPE, "scatter_add: source %s and index %s differ in shape",
                   mg_shapestr(s1, sizeof s1, src->ndim, src->shape),
                   mg_shapestr(s2, sizeof s2, index->ndim, index->shape));
  }
  mg_status st = check_index_shape(C, "scatter_add", index, dim, ndim, shape);
  if (st != MG_OK) return st;
  mg_tensor *y = NULL;
  if ((st = mg_tensor_zeros(C, src->dtype, ndim, shape, &y)) != MG_OK) return st;
  if ((st = rows_pattern(index, dim, y, src) ? rows_walk(C, "scatter_add", index, dim, y, src, true)
                                              : index_walk(C, "scatter_add", index, dim, shape[dim], y, src,
                                                           put_add)) != MG_OK) {
    mg_tensor_release(y);
    return st;
  }
  mg_tensor *in[2] = { src, index };
  mg_attr at = { .ni = 1, .i = { dim } };
  return mg_record_result(C, MG_OP_SCATTER_ADD, 2, in, y, &at, out);
}

/* The node's index (in[1]) expanded over the lead dims of 'like' (not recorded). */
static mg_status lead_index(mg_ctx *C, const mg_node *n, int lead, const mg_tensor *like,
                            mg_tensor **out) {
  int64_t sh[MG_MAXDIM];
  mg_tensor *ix = n->in[1];
  int nd = mg_lead_shape(like, lead, ix->ndim, ix->shape, sh);
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_expand(C, ix, nd, sh, out);
  mg_no_grad_exit(C);
  return st;
}

/* The node's gather of 'v' at its index, or 'v' scatter-added at it into zeros of lead .. the
** input's shape (the adjoint, for gather) or the output's (scatter_add): each is the other's
** adjoint. */
static mg_status gather_apply(mg_ctx *C, const mg_node *n, int lead, mg_tensor *v, bool adjoint,
                              mg_tensor **res) {
  mg_tensor *ix = NULL;
  int dim = lead + (int)n->attr.i[0];
  mg_status st = lead_index(C, n, lead, v, &ix);
  if (st != MG_OK) return st;
  if ((n->op == MG_OP_GATHER) == adjoint) {
    const mg_tensor *to = adjoint ? n->in[0] : n->out[0];
    int64_t sh[MG_MAXDIM];
    int nd = mg_lead_shape(v, lead, to->ndim, to->shape, sh);
    st = mg_tensor_scatter_add(C, v, dim, ix, nd, sh, res);
  } else {
    st = mg_tensor_gather(C, v, dim, ix, res);
  }
  mg_tensor_release(ix);
  return st;
}

const mg_rules mg_rules_gather = LINEAR_RULES;
const mg_rules mg_rules_scatter_add = LINEAR_RULES;

/* ================================================================ index_select, take_along_dim */

mg_status mg_tensor_index_select(mg_ctx *C, mg_tensor *x, int dim, mg_tensor *index,
                                 mg_tensor **out) {
  if (dim < 0 || dim >= x->ndim) return bad_dim(C, "index_select", dim, x->ndim);
  if (index->ndim > 1)
    return mg_fail(C, MG_ESHAPE, "index_select: index must be 1-d, got %d dimensions", index->ndim);
  int64_t sh[MG_MAXDIM], one[MG_MAXDIM], len = mg_tensor_numel(index);
  for (int d = 0; d < x->ndim; d++) { sh[d] = d == dim ? len : x->shape[d]; one[d] = d == dim ? len : 1; }
  mg_tensor *r = NULL, *e = NULL;
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_reshape(C, index, x->ndim, one, &r);
  if (st == MG_OK) st = mg_tensor_expand(C, r, x->ndim, sh, &e);
  mg_no_grad_exit(C);
  if (st == MG_OK) st = gather_named(C, "index_select", x, dim, e, out);
  mg_tensor_release(r);
  mg_tensor_release(e);
  return st;
}

mg_status mg_tensor_take_along_dim(mg_ctx *C, mg_tensor *x, mg_tensor *index, int dim,
                                   mg_tensor **out) {
  const char *fn = "take_along_dim";
  mg_tensor *xs = NULL, *is = NULL;
  mg_status st = MG_OK;
  if (dim < 0) {                                     /* flattened, as torch without a dim */
    int64_t m1 = -1;
    if ((st = mg_tensor_reshape(C, x, 1, &m1, &xs)) != MG_OK) return st;
    mg_no_grad_enter(C);
    st = mg_tensor_reshape(C, index, 1, &m1, &is);
    mg_no_grad_exit(C);
    if (st == MG_OK) st = gather_named(C, fn, xs, 0, is, out);
    mg_tensor_release(xs);
    mg_tensor_release(is);
    return st;
  }
  if (dim >= x->ndim) return bad_dim(C, fn, dim, x->ndim);
  if (index->ndim != x->ndim) {
    return mg_fail(C, MG_ESHAPE, "%s: index has %d dimensions, the tensor %d", fn, index->ndim,
                   x->ndim);
  }
  int64_t bx[MG_MAXDIM], bi[MG_MAXDIM];
  for (int d = 0; d < x->ndim; d++) {
    int64_t a = x->shape[d], b = index->shape[d];
    if (d != dim && a != b && a != 1 && b != 1) {
      char s1[96], s2[96];
      return mg_fail(C, MG_ESHAPE, "%s: shapes %s and %s do not broadcast outside dimension %d", fn,
                     mg_shapestr(s1, sizeof s1, x->ndim, x->shape),
                     mg_shapestr(s2, sizeof s2, index->ndim, index->shape), dim + 1);
    }
    bx[d] = d == dim ? a : (a == 1 ? b : a);
    bi[d] = d == dim ? b : bx[d];
  }
  if ((st = mg_tensor_expand(C, x, x->ndim, bx, &xs)) != MG_OK) return st;
  mg_no_grad_enter(C);
  st = mg_tensor_expand(C, index, index->ndim, bi, &is);
  mg_no_grad_exit(C);
  if (st == MG_OK) st = gather_named(C, fn, xs, dim, is, out);
  mg_tensor_release(xs);
  mg_tensor_release(is);
  return st;
}

/* ================================================================ the rules' dispatch */

static mg_status linear_apply(mg_ctx *C, const mg_node *n, int lead, mg_tensor *v, bool adjoint,
                              mg_tensor **res) {
  switch (n->op) {
  case MG_OP_FLIP: return flip_apply(C, n, lead, v, adjoint, res);
  case MG_OP_DIAGONAL: case MG_OP_DIAG_EMBED: return diag_apply(C, n, lead, v, adjoint, res);
  default: return gather_apply(C, n, lead, v, adjoint, res);   /* gather, scatter_add */
  }
}
