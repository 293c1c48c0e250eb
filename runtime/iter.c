/*
** iter.c - strided iteration over up to four operands with NumPy broadcasting.
** Dimensions are collapsed where every operand is contiguous across them, so the inner loop
** is as long as possible; kernels then special-case unit and zero strides. Loops computing a
** new output poll the context's interrupt flag between rows (long rows are cut in pieces).
*/
#include "mg_impl.h"

bool mg_broadcast_shape(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                        int64_t *out) {
  int n = na > nb ? na : nb;
  for (int i = 0; i < n; i++) {
    int ia = na - n + i, ib = nb - n + i;
    int64_t sa = ia >= 0 ? a[ia] : 1, sb = ib >= 0 ? b[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1) return false;
    out[i] = sa == 1 ? sb : sa;
  }
  *nout = n;
  return true;
}

bool mg_broadcasts_to(const mg_tensor *src, const mg_tensor *dst) {
  int64_t shape[MG_MAXDIM];
  int nd;
  return mg_broadcast_shape(dst->ndim, dst->shape, src->ndim, src->shape, &nd, shape) &&
         nd == dst->ndim && memcmp(shape, dst->shape, (size_t)nd * sizeof *shape) == 0;
}

void mg_iter_init(mg_iter *it, int ndim, const int64_t *shape, int nops,
                  mg_tensor *const *ops) {
  int64_t sh[MG_MAXDIM], st[MG_MAXOPS][MG_MAXDIM];
  int nd = 0;
  for (int d = 0; d < ndim; d++) {          /* drop size-1 dims; right-align operands */
    if (shape[d] == 1) continue;
    sh[nd] = shape[d];
    for (int k = 0; k < nops; k++) {
      const mg_tensor *t = ops[k];
      int td = t->ndim - ndim + d;
      st[k][nd] = (td >= 0 && t->shape[td] != 1) ? t->stride[td] : 0;
    }
    nd++;
  }
  it->nops = nops;
  for (int k = 0; k < nops; k++) {
    it->esize[k] = mg_dtype_size(ops[k]->dtype);
    it->ptr[k] = (char *)ops[k]->storage->data + ops[k]->offset * (int64_t)it->esize[k];
  }
  int m = 0;                                 /* collapse dim d into the kept inner one */
  for (int d = nd - 1; d >= 0; d--) {
    if (m > 0) {
      bool ok = true;
      for (int k = 0; k < nops && ok; k++)
        ok = st[k][d] == it->stride[k][m - 1] * it->shape[m - 1];
      if (ok) {
        it->shape[m - 1] *= sh[d];
        continue;
      }
    }
    it->shape[m] = sh[d];
    for (int k = 0; k < nops; k++) it->stride[k][m] = st[k][d];
    m++;
  }
  /* 'it' now holds dims innermost first; reverse to outermost first */
  for (int i = 0, j = m - 1; i < j; i++, j--) {
    int64_t t = it->shape[i]; it->shape[i] = it->shape[j]; it->shape[j] = t;
    for (int k = 0; k < nops; k++) {
      t = it->stride[k][i]; it->stride[k][i] = it->stride[k][j]; it->stride[k][j] = t;
    }
  }
  it->ndim = m;
}

/* One inner row of 'n' elements at 'p' (strides 's'), in pieces of at most 'piece'; with a
** context, the flag is looked at each time '*since' passes MG_POLL_ELEMS elements. */
static mg_status run_row(mg_ctx *C, const char *op, const mg_iter *it, mg_loop_fn fn, void *ud,
                         int64_t n, char *const *p, const int64_t *s, int64_t piece,
                         int64_t *since) {
  char *q[MG_MAXOPS];
  for (int64_t done = 0; done < n; done += piece) {
    int64_t m = n - done < piece ? n - done : piece;
    for (int k = 0; k < it->nops; k++) q[k] = p[k] + done * s[k] * (int64_t)it->esize[k];
    fn(m, q, s, ud);
    if (C != NULL && (*since += m) >= MG_POLL_ELEMS) {
      *since = 0;
      mg_status st = mg_poll(C, op);
      if (st != MG_OK) return st;
    }
  }
  return MG_OK;
}

mg_status mg_iter_run(mg_ctx *C, const char *op, const mg_iter *it, mg_loop_fn fn, void *ud) {
  int nops = it->nops, nd = it->ndim;
  char *p[MG_MAXOPS];
  int64_t s[MG_MAXOPS], since = 0;
  for (int k = 0; k < nops; k++) p[k] = it->ptr[k];
  if (nd == 0) {                               /* one element */
    for (int k = 0; k < nops; k++) s[k] = 0;
    fn(1, p, s, ud);
    return MG_OK;
  }
  for (int k = 0; k < nops; k++) s[k] = it->stride[k][nd - 1];
  int64_t inner = it->shape[nd - 1], idx[MG_MAXDIM] = {0};
  int64_t piece = C != NULL && inner > MG_POLL_ROW ? MG_POLL_ROW : inner;
  for (int d = 0; d < nd - 1; d++)
    if (it->shape[d] == 0) return MG_OK;
  if (inner == 0) return MG_OK;
  for (;;) {
    mg_status st = run_row(C, op, it, fn, ud, inner, p, s, piece, &since);
    if (st != MG_OK) return st;
    int d = nd - 2;                            /* odometer over the outer dims */
    for (; d >= 0; d--) {
      for (int k = 0; k < nops; k++) p[k] += it->stride[k][d] * (int64_t)it->esize[k];
      if (++idx[d] < it->shape[d]) break;
      for (int k = 0; k < nops; k++)
        p[k] -= it->stride[k][d] * it->shape[d] * (int64_t)it->esize[k];
      idx[d] = 0;
    }
    if (d < 0) return MG_OK;
  }
}

int64_t mg_iter_numel(const mg_iter *it) {
  int64_t n = 1;
  for (int d = 0; d < it->ndim; d++) n *= it->shape[d];
  return n;
}

void mg_iter_run_range(const mg_iter *it, int64_t lo, int64_t hi, mg_loop_fn fn, void *ud) {
  int nops = it->nops, nd = it->ndim;
  char *row[MG_MAXOPS], *q[MG_MAXOPS];
  int64_t s[MG_MAXOPS], idx[MG_MAXDIM];
  if (lo >= hi) return;
  if (nd == 0) {                                   /* one element */
    for (int k = 0; k < nops; k++) { q[k] = it->ptr[k]; s[k] = 0; }
    fn(1, q, s, ud);
    return;
  }
  int64_t inner = it->shape[nd - 1], col = lo % inner, r = lo / inner;
  for (int k = 0; k < nops; k++) { row[k] = it->ptr[k]; s[k] = it->stride[k][nd - 1]; }
  for (int d = nd - 2; d >= 0; d--) {              /* the row's index, outer dims */
    idx[d] = r % it->shape[d];
    r /= it->shape[d];
    for (int k = 0; k < nops; k++) row[k] += idx[d] * it->stride[k][d] * (int64_t)it->esize[k];
  }
  for (int64_t left = hi - lo;;) {
    int64_t m = inner - col < left ? inner - col : left;
    for (int k = 0; k < nops; k++) q[k] = row[k] + col * s[k] * (int64_t)it->esize[k];
    fn(m, q, s, ud);
    if ((left -= m) == 0) return;
    col = 0;
    for (int d = nd - 2; d >= 0; d--) {            /* odometer over the outer dims */
      for (int k = 0; k < nops; k++) row[k] += it->stride[k][d] * (int64_t)it->esize[k];
      if (++idx[d] < it->shape[d]) break;
      for (int k = 0; k < nops; k++)
        row[k] -= it->stride[k][d] * it->shape[d] * (int64_t)it->esize[k];
      idx[d] = 0;
    }
  }
}
