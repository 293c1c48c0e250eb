/*
** init.c - Keras's initializers: glorot_uniform, and orthogonal through LAPACK's QR
** (dgeqrf/dorgqr from OpenBLAS), sign-corrected by diag(R) so the result is unique.
*/
#include "mg_impl.h"

#include <math.h>
#include <stdlib.h>

extern void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau,
                    double *work, const int *lwork, int *info);
extern void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda,
                    const double *tau, double *work, const int *lwork, int *info);

static mg_status check2d(mg_ctx *C, const char *fn, const mg_tensor *t) {
  if (t->ndim != 2)
    return mg_fail(C, MG_ESHAPE, "%s: expected a 2-d tensor, got %d-d", fn, t->ndim);
  return MG_OK;
}

mg_status mg_init_glorot_uniform(mg_ctx *C, mg_tensor *t) {
  mg_status st = check2d(C, "glorot_uniform", t);
  if (st != MG_OK) return st;
  double fan = (double)(t->shape[0] + t->shape[1]);
  double lim = fan > 0 ? sqrt(6.0 / fan) : 0;
  mg_fill_uniform(C, t, -lim, lim);
  return MG_OK;
}

/* Keras: a normal (rows, cols) matrix, transposed when rows < cols so QR runs on the tall
** one; Q's columns times sign(diag(R)); transposed back; times gain. */
mg_status mg_init_orthogonal(mg_ctx *C, mg_tensor *t, double gain) {
  mg_status st = check2d(C, "orthogonal", t);
  if (st != MG_OK) return st;
  int64_t rows = t->shape[0], cols = t->shape[1];
  if (rows == 0 || cols == 0) return MG_OK;
  if (rows > 46340 || cols > 46340) return mg_fail(C, MG_ESHAPE, "orthogonal: matrix too large");
  bool flip = rows < cols;
  int m = (int)(flip ? cols : rows), n = (int)(flip ? rows : cols), info = 0, lwork = -1;
  int64_t shape[2] = { rows, cols };
  mg_tensor *g = NULL;
  if ((st = mg_tensor_empty(C, MG_F64, 2, shape, &g)) != MG_OK) return st;
  mg_fill_normal(C, g, 0, 1);
  /* LAPACK is column-major: a (rows, cols) row-major array is its (cols, rows) transpose,
  ** so the tall matrix A (m x n) in column-major is g as is when flipped, else g^T. */
  double *a = malloc((size_t)m * (size_t)n * sizeof *a), *tau = malloc((size_t)n * sizeof *tau), q;
  if (!a || !tau) { free(a); free(tau); mg_tensor_release(g); return mg_fail(C, MG_ENOMEM, "out of memory"); }
  const double *gd = MG_F64P(g);
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++)
      a[(size_t)j * m + i] = flip ? gd[(size_t)j * cols + i] : gd[(size_t)i * cols + j];
  dgeqrf_(&m, &n, a, &m, tau, &q, &lwork, &info);
  lwork = (int)q > n ? (int)q : n;
  double *work = malloc((size_t)lwork * sizeof *work), *d = malloc((size_t)n * sizeof *d);
  if (!work || !d) { st = mg_fail(C, MG_ENOMEM, "out of memory"); goto done; }
  dgeqrf_(&m, &n, a, &m, tau, work, &lwork, &info);
  if (info != 0) { st = mg_fail(C, MG_EARG, "orthogonal: QR failed (info %d)", info); goto done; }
  for (int j = 0; j < n; j++) d[j] = a[(size_t)j * m + j] < 0 ? -1.0 : 1.0;
  dorgqr_(&m, &n, &n, a, &m, tau, work, &lwork, &info);
  if (info != 0) { st = mg_fail(C, MG_EARG, "orthogonal: QR failed (info %d)", info); goto done; }
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < cols; j++) {
      int64_t idx[2] = { i, j };
      /* Q is m x n column-major; element (r, c) of Q at a[c*m + r] */
      double v = flip ? a[(size_t)i * m + j] * d[i] : a[(size_t)j * m + i] * d[j];
      mg_tensor_set(t, idx, gain * v);
    }
done:
  free(a); free(tau); free(work); free(d);
  mg_tensor_release(g);
  return st;
}
