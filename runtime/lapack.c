/*
** lapack.c - the linear algebra only LAPACK can do, through LAPACKE: QR, SVD, symmetric and
** general eigendecompositions, LU solve, log-determinant, Cholesky. Every op takes a matrix or
** a batch (..., m, n) of any strides (each matrix is copied to the column-major buffer LAPACK
** wants) in float32 or float64, and its reverse and forward rules sit beside it, written with
** recording ops so that they nest. Composites (inv, det, pinv, norms, ...) are built on these
** in bindings/moongrad/linalg.lua and get their gradients from them.
*/
#include "mg_impl.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>

/* ================================================================ batches and buffers */

/* Linear index, in the batch dims of 'x' (its first ndim-2 dims, right-aligned with the
** broadcast batch shape 'bs' of 'nb' dims), of matrix 'm' of that broadcast batch. */
static int64_t batch_index(const mg_tensor *x, int nb, const int64_t *bs, int64_t m) {
  int64_t idx = 0, mul = 1;
  int xb = x->ndim - 2;
  for (int i = nb - 1; i >= 0; i--) {
    int64_t q = m % bs[i];
    m /= bs[i];
    int d = xb - (nb - i);
    if (d < 0) continue;
    if (x->shape[d] != 1) idx += q * mul;
    mul *= x->shape[d];
  }
  return idx;
}

/* Element offset of matrix 'i' (linear index in the batch dims of 'x' itself). */
static int64_t matrix_offset(const mg_tensor *x, int64_t i) {
  int64_t off = 0;
  for (int d = x->ndim - 3; d >= 0; d--) {
    off += (i % x->shape[d]) * x->stride[d];
    i /= x->shape[d];
  }
  return off;
}

static int64_t nmatrices(const mg_tensor *x) {
  int64_t n = 1;
  for (int d = 0; d < x->ndim - 2; d++) n *= x->shape[d];
  return n;
}

/* Copy matrix 'i' of 'x' (r x c, any strides) into the column-major buffer 'dst' (leading
** dimension 'ld'), in the dtype of 'x'. */
static void load(const mg_tensor *x, int64_t i, void *dst, int64_t ld) {
  int nd = x->ndim;
  int64_t r = x->shape[nd - 2], c = x->shape[nd - 1], sr = x->stride[nd - 2], sc = x->stride[nd - 1];
  int64_t off = matrix_offset(x, i);
  if (x->dtype == MG_F64) {
    const double *s = MG_F64P(x) + off;
    double *d = dst;
    for (int64_t j = 0; j < c; j++)
      for (int64_t k = 0; k < r; k++) d[k + j * ld] = s[k * sr + j * sc];
  } else {
    const float *s = MG_F32P(x) + off;
    float *d = dst;
    for (int64_t j = 0; j < c; j++)
      for (int64_t k = 0; k < r; k++) d[k + j * ld] = s[k * sr + j * sc];
  }
}

enum { ALL, UPPER, LOWER };   /* which triangle 'store' keeps (the rest becomes 0) */

/* Write the r x c top-left block of the column-major 'src' (leading dim 'ld') as matrix 'i'
** of the contiguous 'y' (shape ..., r, c). */
static void store(mg_tensor *y, int64_t i, const void *src, int64_t ld, int tri) {
  int nd = y->ndim;
  int64_t r = y->shape[nd - 2], c = y->shape[nd - 1];
  for (int64_t k = 0; k < r; k++) {
    int64_t j0 = tri == UPPER ? k : 0, j1 = tri == LOWER ? k + 1 : c;   /* kept: [j0, j1) */
    if (j0 > c) j0 = c;
    if (j1 > c) j1 = c;
    if (y->dtype == MG_F64) {
      double *d = MG_F64P(y) + i * r * c + k * c;
      const double *s = (const double *)src + k;
      for (int64_t j = 0; j < c; j++) d[j] = j >= j0 && j < j1 ? s[j * ld] : 0.0;
    } else {
      float *d = MG_F32P(y) + i * r * c + k * c;
      const float *s = (const float *)src + k;
      for (int64_t j = 0; j < c; j++) d[j] = j >= j0 && j < j1 ? s[j * ld] : 0.0f;
    }
  }
}

/* Element 'k' of a typed buffer / vector entry 'k' of matrix 'i' of a contiguous 'y'. */
static double bget(mg_dtype dt, const void *p, int64_t k) {
  return dt == MG_F64 ? ((const double *)p)[k] : ((const float *)p)[k];
}

static void yset(mg_tensor *y, int64_t k, double v) {
  if (y->dtype == MG_F64) MG_F64P(y)[k] = v;
  else MG_F32P(y)[k] = (float)v;
}

/* Shape of 'x' with the last two dims replaced by 'tail' (ntail of them); returns ndim. */
static int batch_shape(const mg_tensor *x, int ntail, const int64_t *tail, int64_t *sh) {
  int nb = x->ndim - 2;
  memcpy(sh, x->shape, (size_t)nb * sizeof *sh);
  memcpy(sh + nb, tail, (size_t)ntail * sizeof *sh);
  return nb + ntail;
}

/* A matrix-shaped input: at least 2-d; 'square' also checks the last two dims agree. */
static mg_status check_matrix(mg_ctx *C, const char *fn, const mg_tensor *A, bool square) {
  char s[96];
  if (A->ndim < 2)
    return mg_fail(C, MG_ESHAPE, "%s: expected a matrix or a batch of matrices, got shape %s", fn,
                   mg_shapestr(s, sizeof s, A->ndim, A->shape));
  if (square && A->shape[A->ndim - 1] != A->shape[A->ndim - 2])
    return mg_fail(C, MG_ESHAPE, "%s: expected square matrices, got shape %s", fn,
                   mg_shapestr(s, sizeof s, A->ndim, A->shape));
  if (A->shape[A->ndim - 1] > INT32_MAX || A->shape[A->ndim - 2] > INT32_MAX)
    return mg_fail(C, MG_ESHAPE, "%s: matrix of shape %s is too large for LAPACK", fn,
                   mg_shapestr(s, sizeof s, A->ndim, A->shape));
  return MG_OK;
}

/* " (matrix 3 of the batch)" for a batched input, "" for a single matrix; into 'buf'. */
static const char *which(char *buf, size_t n, const mg_tensor *A, int64_t i) {
  if (A->ndim <= 2) buf[0] = '\0';
  else snprintf(buf, n, " (matrix %lld of the batch)", (long long)i + 1);
  return buf;
}

static mg_status lapack_fail(mg_ctx *C, const char *fn, const char *routine, lapack_int info,
                             const mg_tensor *A) {
  char s[96];
  if (info < 0)
    return mg_fail(C, MG_EARG, "%s: input of shape %s contains NaN (LAPACK %s, argument %d)", fn,
                   mg_shapestr(s, sizeof s, A->ndim, A->shape), routine, (int)-info);
  return mg_fail(C, MG_EARG, "%s: LAPACK %s did not converge on the input of shape %s", fn,
                 routine, mg_shapestr(s, sizeof s, A->ndim, A->shape));
}

/* Hand out 'nout' results of 'op' recorded on the active tapes (inputs 'in'). On failure
** every result is released. */
static mg_status finish(mg_ctx *C, int op, int nin, mg_tensor *const *in, int nout,
                        mg_tensor **y, const mg_attr *attr, mg_tensor ***outs) {
  mg_status st = MG_OK;
  if (mg_recording(C)) st = mg_record(C, op, nin, in, nout, y, 0, NULL, attr);
  for (int k = 0; k < nout; k++) {
    if (st != MG_OK) mg_tensor_release(y[k]);
    else if (outs[k]) *outs[k] = y[k];
    else mg_tensor_release(y[k]);                   /* computed for the tape only */
  }
  return st;
}

/* ================================================================ typed LAPACK calls */

#define LCM LAPACK_COL_MAJOR
#define F(p) ((float *)(p))
#define D(p) ((double *)(p))

/* QR through the _work routines with one caller-owned workspace for a whole batch (no
** allocation or NaN scan per matrix: the hot loop of mg.lyapunov); lwork = -1 asks for
** the size, returned in work[0]. */
static lapack_int geqrf(mg_dtype dt, lapack_int m, lapack_int n, void *a, void *tau, void *work,
                        lapack_int lwork) {
  lapack_int lda = m > 1 ? m : 1;
  return dt == MG_F64 ? LAPACKE_dgeqrf_work(LCM, m, n, D(a), lda, D(tau), D(work), lwork)
                      : LAPACKE_sgeqrf_work(LCM, m, n, F(a), lda, F(tau), F(work), lwork);
}

static lapack_int orgqr(mg_dtype dt, lapack_int m, lapack_int n, lapack_int k, void *a, void *tau,
                        void *work, lapack_int lwork) {
  lapack_int lda = m > 1 ? m : 1;
  return dt == MG_F64 ? LAPACKE_dorgqr_work(LCM, m, n, k, D(a), lda, D(tau), D(work), lwork)
                      : LAPACKE_sorgqr_work(LCM, m, n, k, F(a), lda, F(tau), F(work), lwork);
}

/* Workspace elements geqrf and orgqr want for one m x n matrix, Q with qc columns. */
static lapack_int qr_lwork(mg_dtype dt, lapack_int m, lapack_int n, lapack_int qc, lapack_int k) {
  double q1 = 0, q2 = 0;
  float f1 = 0, f2 = 0;
  void *w1 = dt == MG_F64 ? (void *)&q1 : (void *)&f1, *w2 = dt == MG_F64 ? (void *)&q2 : (void *)&f2;
  geqrf(dt, m, n, NULL, NULL, w1, -1);
  orgqr(dt, m, qc, k, NULL, NULL, w2, -1);
  double a = dt == MG_F64 ? q1 : f1, b = dt == MG_F64 ? q2 : f2;
  lapack_int w = (lapack_int)(a > b ? a : b);
  lapack_int floor = (qc > n ? qc : n) + 1;
  return w > floor ? w : floor;
}

static lapack_int gesdd(mg_dtype dt, char jobz, lapack_int m, lapack_int n, void *a, void *s,
                        void *u, lapack_int ldu, void *vt, lapack_int ldvt) {
  lapack_int lda = m > 1 ? m : 1;
  return dt == MG_F64 ? LAPACKE_dgesdd(LCM, jobz, m, n, D(a), lda, D(s), D(u), ldu, D(vt), ldvt)
                      : LAPACKE_sgesdd(LCM, jobz, m, n, F(a), lda, F(s), F(u), ldu, F(vt), ldvt);
}

static lapack_int syevd(mg_dtype dt, char jobz, lapack_int n, void *a, void *w) {
  return dt == MG_F64 ? LAPACKE_dsyevd(LCM, jobz, 'L', n, D(a), n, D(w))
                      : LAPACKE_ssyevd(LCM, jobz, 'L', n, F(a), n, F(w));
}

static lapack_int geev(mg_dtype dt, lapack_int n, void *a, void *wr, void *wi, void *vr) {
  return dt == MG_F64 ? LAPACKE_dgeev(LCM, 'N', 'V', n, D(a), n, D(wr), D(wi), NULL, 1, D(vr), n)
                      : LAPACKE_sgeev(LCM, 'N', 'V', n, F(a), n, F(wr), F(wi), NULL, 1, F(vr), n);
}

static lapack_int getrf(mg_dtype dt, lapack_int n, void *a, lapack_int *ipiv) {
  return dt == MG_F64 ? LAPACKE_dgetrf(LCM, n, n, D(a), n, ipiv) : LAPACKE_sgetrf(LCM, n, n, F(a), n, ipiv);
}

static lapack_int getrs(mg_dtype dt, lapack_int n, lapack_int k, const void *a,
                        const lapack_int *ipiv, void *b) {
  return dt == MG_F64 ? LAPACKE_dgetrs(LCM, 'N', n, k, D(a), n, ipiv, D(b), n)
                      : LAPACKE_sgetrs(LCM, 'N', n, k, F(a), n, ipiv, F(b), n);
}

static lapack_int potrf(mg_dtype dt, lapack_int n, void *a) {
  return dt == MG_F64 ? LAPACKE_dpotrf(LCM, 'L', n, D(a), n) : LAPACKE_spotrf(LCM, 'L', n, F(a), n);
}

/* ================================================================ QR */

mg_status mg_linalg_qr(mg_ctx *C, mg_tensor *A, bool complete, mg_tensor **Qo, mg_tensor **Ro) {
  mg_status st = check_matrix(C, "linalg.qr", A, false);
  if (st != MG_OK) return st;
  mg_dtype dt = A->dtype;
  int nd = A->ndim;
  int64_t m = A->shape[nd - 2], n = A->shape[nd - 1], k = m < n ? m : n, qc = complete ? m : k;
  int64_t rr = complete ? m : k, sh[MG_MAXDIM], nmat = nmatrices(A);
  size_t es = mg_dtype_size(dt);
  mg_tensor *y[2] = { NULL, NULL };
  int64_t qs[2] = { m, qc }, rs[2] = { rr, n };
  st = mg_tensor_zeros(C, dt, batch_shape(A, 2, qs, sh), sh, &y[0]);
  if (st == MG_OK) st = mg_tensor_zeros(C, dt, batch_shape(A, 2, rs, sh), sh, &y[1]);
  int64_t wq = qc > n ? qc : n;                      /* columns of the work matrix */
  lapack_int lwork = k > 0 ? qr_lwork(dt, (lapack_int)m, (lapack_int)n, (lapack_int)qc, (lapack_int)k) : 1;
  void *a = malloc(es * (size_t)(m * wq + 1)), *tau = malloc(es * (size_t)(k + 1));
  void *work = malloc(es * (size_t)lwork);
  if (st == MG_OK && !(a && tau && work)) st = mg_fail(C, MG_ENOMEM, "linalg.qr: out of memory");
  for (int64_t i = 0; st == MG_OK && i < nmat; i++) {
    if (k == 0) {                                    /* empty: Q is the identity (complete) */
      for (int64_t j = 0; j < qc && j < m; j++) yset(y[0], i * m * qc + j * qc + j, 1.0);
      continue;
    }
    load(A, i, a, m);
    lapack_int info = geqrf(dt, (lapack_int)m, (lapack_int)n, a, tau, work, lwork);
    if (info != 0) { st = lapack_fail(C, "linalg.qr", "geqrf", info, A); break; }
    store(y[1], i, a, m, UPPER);                     /* R: the upper triangle, rr rows */
    if (qc > n)                                      /* columns orgqr reads but geqrf left */
      memset((char *)a + es * (size_t)(m * n), 0, es * (size_t)(m * (qc - n)));
    info = orgqr(dt, (lapack_int)m, (lapack_int)qc, (lapack_int)k, a, tau, work, lwork);
    if (info != 0) { st = lapack_fail(C, "linalg.qr", "orgqr", info, A); break; }
    store(y[0], i, a, m, ALL);
  }
  free(a);
  free(tau);
  free(work);
  if (st != MG_OK) { mg_tensor_release(y[0]); mg_tensor_release(y[1]); return st; }
  mg_attr at = { .i = { complete }, .ni = 1 };
  mg_tensor **outs[2] = { Qo, Ro };
  return finish(C, MG_OP_QR, 1, &A, 2, y, &at, outs);
}

/* ================================================================ SVD */

mg_status mg_linalg_svd(mg_ctx *C, mg_tensor *A, bool full, bool compute_uv, mg_tensor **Uo,
                        mg_tensor **So, mg_tensor **Vho) {
  mg_status st = check_matrix(C, compute_uv ? "linalg.svd" : "linalg.svdvals", A, false);
  if (st != MG_OK) return st;
  mg_dtype dt = A->dtype;
  int nd = A->ndim;
  int64_t m = A->shape[nd - 2], n = A->shape[nd - 1], k = m < n ? m : n, sh[MG_MAXDIM];
  int64_t uc = full ? m : k, vr = full ? n : k, nmat = nmatrices(A);
  bool uv = compute_uv || mg_recording(C);           /* a tape needs U and Vh for the rules */
  char jobz = !uv ? 'N' : full ? 'A' : 'S';
  size_t es = mg_dtype_size(dt);
  mg_tensor *y[3] = { NULL, NULL, NULL };
  int64_t us[2] = { m, uc }, vs[2] = { vr, n };
  st = mg_tensor_zeros(C, dt, batch_shape(A, 1, &k, sh), sh, &y[1]);
  if (st == MG_OK && uv) st = mg_tensor_zeros(C, dt, batch_shape(A, 2, us, sh), sh, &y[0]);
  if (st == MG_OK && uv) st = mg_tensor_zeros(C, dt, batch_shape(A, 2, vs, sh), sh, &y[2]);
  void *a = malloc(es * (size_t)(m * n + 1)), *s = malloc(es * (size_t)(k + 1));
  void *u = malloc(es * (size_t)(m * uc + 1)), *vt = malloc(es * (size_t)(vr * n + 1));
  if (st == MG_OK && !(a && s && u && vt)) st = mg_fail(C, MG_ENOMEM, "linalg.svd: out of memory");
  for (int64_t i = 0; st == MG_OK && i < nmat; i++) {
    if (k == 0) {                                    /* empty: identities when full */
      if (!uv) continue;
      for (int64_t j = 0; j < uc && j < m; j++) yset(y[0], i * m * uc + j * uc + j, 1.0);
      for (int64_t j = 0; j < vr && j < n; j++) yset(y[2], i * vr * n + j * n + j, 1.0);
      continue;
    }
    load(A, i, a, m);
    lapack_int info = gesdd(dt, jobz, (lapack_int)m, (lapack_int)n, a, s, u, (lapack_int)m,
                            vt, (lapack_int)(vr > 1 ? vr : 1));
    if (info != 0) { st = lapack_fail(C, compute_uv ? "linalg.svd" : "linalg.svdvals", "gesdd", info, A); break; }
    for (int64_t j = 0; j < k; j++) yset(y[1], i * k + j, bget(dt, s, j));
    if (uv) {
      store(y[0], i, u, m, ALL);
      store(y[2], i, vt, vr, ALL);
    }
  }
  free(a); free(s); free(u); free(vt);
  if (st != MG_OK) { for (int j = 0; j < 3; j++) mg_tensor_release(y[j]); return st; }
  if (!uv) { *So = y[1]; return MG_OK; }
  mg_attr at = { .i = { full }, .ni = 1 };
  mg_tensor **outs[3] = { compute_uv ? Uo : NULL, So, compute_uv ? Vho : NULL };
  return finish(C, MG_OP_SVD, 1, &A, 3, y, &at, outs);
}

/* ================================================================ symmetric eigen */

mg_status mg_linalg_eigh(mg_ctx *C, mg_tensor *A, bool compute_v, mg_tensor **wo, mg_tensor **Vo) {
  const char *fn = compute_v ? "linalg.eigh" : "linalg.eigvalsh";
  mg_status st = check_matrix(C, fn, A, true);
  if (st != MG_OK) return st;
  mg_dtype dt = A->dtype;
  int64_t n = A->shape[A->ndim - 1], sh[MG_MAXDIM], nmat = nmatrices(A), vs[2] = { n, n };
  bool v = compute_v || mg_recording(C);
  size_t es = mg_dtype_size(dt);
  mg_tensor *y[2] = { NULL, NULL };
  st = mg_tensor_zeros(C, dt, batch_shape(A, 1, &n, sh), sh, &y[0]);
  if (st == MG_OK && v) st = mg_tensor_zeros(C, dt, batch_shape(A, 2, vs, sh), sh, &y[1]);
  void *a = malloc(es * (size_t)(n * n + 1)), *w = malloc(es * (size_t)(n + 1));
  if (st == MG_OK && !(a && w)) st = mg_fail(C, MG_ENOMEM, "%s: out of memory", fn);
  for (int64_t i = 0; st == MG_OK && n > 0 && i < nmat; i++) {
    load(A, i, a, n);
    lapack_int info = syevd(dt, v ? 'V' : 'N', (lapack_int)n, a, w);
    if (info != 0) { st = lapack_fail(C, fn, "syevd", info, A); break; }
    for (int64_t j = 0; j < n; j++) yset(y[0], i * n + j, bget(dt, w, j));
    if (v) store(y[1], i, a, n, ALL);
  }
  free(a); free(w);
  if (st != MG_OK) { mg_tensor_release(y[0]); mg_tensor_release(y[1]); return st; }
  if (!v) { *wo = y[0]; return MG_OK; }
  mg_tensor **outs[2] = { wo, compute_v ? Vo : NULL };
  return finish(C, MG_OP_EIGH, 1, &A, 2, y, NULL, outs);
}

/* ================================================================ general eigen */

/* Eigenvalues (real and imaginary parts, LAPACK's order) and right eigenvectors (columns,
** unit norm; a complex pair j, j+1 as v_j = Vr[:,j] + i Vi[:,j], v_(j+1) its conjugate). */
mg_status mg_linalg_eig(mg_ctx *C, mg_tensor *A, mg_tensor **wro, mg_tensor **wio,
                        mg_tensor **vro, mg_tensor **vio) {
  mg_status st = check_matrix(C, "linalg.eig", A, true);
  if (st != MG_OK) return st;
  mg_dtype dt = A->dtype;
  int64_t n = A->shape[A->ndim - 1], sh[MG_MAXDIM], nmat = nmatrices(A), vs[2] = { n, n };
  size_t es = mg_dtype_size(dt);
  mg_tensor *y[4] = { NULL };
  for (int j = 0; j < 4 && st == MG_OK; j++)
    st = j < 2 ? mg_tensor_zeros(C, dt, batch_shape(A, 1, &n, sh), sh, &y[j])
               : mg_tensor_zeros(C, dt, batch_shape(A, 2, vs, sh), sh, &y[j]);
  void *a = malloc(es * (size_t)(n * n + 1)), *vr = malloc(es * (size_t)(n * n + 1));
  void *wr = malloc(es * (size_t)(n + 1)), *wi = malloc(es * (size_t)(n + 1));
  if (st == MG_OK && !(a && vr && wr && wi)) st = mg_fail(C, MG_ENOMEM, "linalg.eig: out of memory");
  for (int64_t i = 0; st == MG_OK && n > 0 && i < nmat; i++) {
    load(A, i, a, n);
    lapack_int info = geev(dt, (lapack_int)n, a, wr, wi, vr);
    if (info != 0) { st = lapack_fail(C, "linalg.eig", "geev", info, A); break; }
    for (int64_t j = 0; j < n; j++) {
      double im = bget(dt, wi, j);
      yset(y[0], i * n + j, bget(dt, wr, j));
      yset(y[1], i * n + j, im);
      bool pair = im != 0 && j + 1 < n;
      for (int64_t r = 0; r < n; r++) {
        int64_t o = i * n * n + r * n;
        yset(y[2], o + j, bget(dt, vr, r + j * n));
        if (pair) {                                  /* columns j, j+1: re +- i im */
          yset(y[2], o + j + 1, bget(dt, vr, r + j * n));
          yset(y[3], o + j, bget(dt, vr, r + (j + 1) * n));
          yset(y[3], o + j + 1, -bget(dt, vr, r + (j + 1) * n));
        }
      }
      if (pair) {
        yset(y[0], i * n + j + 1, bget(dt, wr, j + 1));
        yset(y[1], i * n + j + 1, bget(dt, wi, j + 1));
        j++;
      }
    }
  }
  free(a); free(vr); free(wr); free(wi);
  if (st != MG_OK) { for (int j = 0; j < 4; j++) mg_tensor_release(y[j]); return st; }
  mg_tensor **o1[2] = { wro, wio }, **o2[2] = { vro, vio };  /* two nodes: values, vectors */
  mg_tensor *v2[2] = { y[2], y[3] };
  st = finish(C, MG_OP_EIG, 1, &A, 2, y, NULL, o1);
  if (st != MG_OK) { mg_tensor_release(y[2]); mg_tensor_release(y[3]); return st; }
  st = finish(C, MG_OP_EIG, 1, &A, 2, v2, NULL, o2);
  if (st != MG_OK) { mg_tensor_release(*wro); mg_tensor_release(*wio); }
  return st;
}

/* ================================================================ LU: solve, slogdet */

/* LU factors of every matrix of the square 'A' into 'lu' (n*n each, column-major) and
** 'ipiv'; a singular matrix is an error when 'fn' is not NULL, else its index goes to
** 'sing' (may be NULL) as true. */
static mg_status lu_all(mg_ctx *C, const char *fn, mg_tensor *A, void *lu, lapack_int *ipiv,
                        bool *sing) {
  int64_t n = A->shape[A->ndim - 1], nmat = nmatrices(A);
  size_t es = mg_dtype_size(A->dtype);
  char s[96], w[64];
  for (int64_t i = 0; n > 0 && i < nmat; i++) {
    void *a = (char *)lu + es * (size_t)(i * n * n);
    load(A, i, a, n);
    lapack_int info = getrf(A->dtype, (lapack_int)n, a, ipiv + i * n);
    if (info < 0) return lapack_fail(C, fn ? fn : "linalg.slogdet", "getrf", info, A);
    if (sing) sing[i] = info > 0;
    if (info > 0 && fn)
      return mg_fail(C, MG_EARG, "%s: the matrix is singular%s (input of shape %s)", fn,
                     which(w, sizeof w, A, i), mg_shapestr(s, sizeof s, A->ndim, A->shape));
  }
  return MG_OK;
}

/* Both operands in one dtype (float64 if they differ): new references, recorded casts. */
static mg_status promote(mg_ctx *C, mg_tensor *a, mg_tensor *b, mg_tensor **ao, mg_tensor **bo) {
  *ao = mg_tensor_retain(a);
  *bo = mg_tensor_retain(b);
  if (a->dtype == b->dtype) return MG_OK;
  mg_tensor **lo = a->dtype == MG_F32 ? ao : bo, *c;
  mg_status st = mg_tensor_cast(C, *lo, MG_F64, &c);
  if (st != MG_OK) { mg_tensor_release(*ao); mg_tensor_release(*bo); return st; }
  mg_tensor_release(*lo);
  *lo = c;
  return MG_OK;
}

static mg_status solve_nd(mg_ctx *C, mg_tensor *A, mg_tensor *B, mg_tensor **out) {
  char s1[96], s2[96];
  int64_t n = A->shape[A->ndim - 1], k = B->shape[B->ndim - 1], bs[MG_MAXDIM], sh[MG_MAXDIM];
  int nb;
  if (B->shape[B->ndim - 2] != n)
    return mg_fail(C, MG_ESHAPE, "linalg.solve: shapes %s and %s do not fit (%lld rows ~= %lld)",
                   mg_shapestr(s1, sizeof s1, A->ndim, A->shape), mg_shapestr(s2, sizeof s2, B->ndim, B->shape),
                   (long long)B->shape[B->ndim - 2], (long long)n);
  if (!mg_broadcast_shape(A->ndim - 2, A->shape, B->ndim - 2, B->shape, &nb, bs) || nb + 2 > MG_MAXDIM)
    return mg_fail(C, MG_ESHAPE, "linalg.solve: batch dimensions of %s and %s cannot be broadcast",
                   mg_shapestr(s1, sizeof s1, A->ndim, A->shape), mg_shapestr(s2, sizeof s2, B->ndim, B->shape));
  memcpy(sh, bs, (size_t)nb * sizeof *sh);
  sh[nb] = n;
  sh[nb + 1] = k;
  mg_dtype dt = A->dtype;
  size_t es = mg_dtype_size(dt);
  int64_t na = nmatrices(A), nout = mg_shape_numel(nb, bs);
  mg_tensor *y = NULL;
  mg_status st = mg_tensor_zeros(C, dt, nb + 2, sh, &y);
  void *lu = malloc(es * (size_t)(na * n * n + 1)), *b = malloc(es * (size_t)(n * k + 1));
  lapack_int *ipiv = malloc(sizeof *ipiv * (size_t)(na * n + 1));
  if (st == MG_OK && !(lu && b && ipiv)) st = mg_fail(C, MG_ENOMEM, "linalg.solve: out of memory");
  if (st == MG_OK) st = lu_all(C, "linalg.solve", A, lu, ipiv, NULL);
  for (int64_t i = 0; st == MG_OK && n > 0 && k > 0 && i < nout; i++) {
    int64_t ai = batch_index(A, nb, bs, i);
    load(B, batch_index(B, nb, bs, i), b, n);
    lapack_int info = getrs(dt, (lapack_int)n, (lapack_int)k, (char *)lu + es * (size_t)(ai * n * n),
                            ipiv + ai * n, b);
    if (info != 0) { st = lapack_fail(C, "linalg.solve", "getrs", info, A); break; }
    store(y, i, b, n, ALL);
  }
  free(lu); free(b); free(ipiv);
  if (st != MG_OK) { mg_tensor_release(y); return st; }
  mg_tensor *in[2] = { A, B };
  return mg_record_result(C, MG_OP_SOLVE, 2, in, y, NULL, out);
}

mg_status mg_linalg_solve(mg_ctx *C, mg_tensor *A, mg_tensor *B, mg_tensor **out) {
  char s[96];
  mg_status st = check_matrix(C, "linalg.solve", A, true);
  if (st != MG_OK) return st;
  if (B->ndim < 2)
    return mg_fail(C, MG_ESHAPE, "linalg.solve: expected B to be a matrix or a batch of matrices, got shape %s",
                   mg_shapestr(s, sizeof s, B->ndim, B->shape));
  mg_tensor *a, *b;
  if ((st = promote(C, A, B, &a, &b)) != MG_OK) return st;
  st = solve_nd(C, a, b, out);
  mg_tensor_release(a);
  mg_tensor_release(b);
  return st;
}

/* sign(det A) and log|det A| from the LU factors; a singular matrix gives 0 and -inf. */
mg_status mg_linalg_slogdet(mg_ctx *C, mg_tensor *A, mg_tensor **sign, mg_tensor **logabs) {
  mg_status st = check_matrix(C, "linalg.slogdet", A, true);
  if (st != MG_OK) return st;
  mg_dtype dt = A->dtype;
  int64_t n = A->shape[A->ndim - 1], nmat = nmatrices(A);
  size_t es = mg_dtype_size(dt);
  mg_tensor *y[2] = { NULL, NULL };
  st = mg_tensor_zeros(C, dt, A->ndim - 2, A->shape, &y[0]);
  if (st == MG_OK) st = mg_tensor_zeros(C, dt, A->ndim - 2, A->shape, &y[1]);
  void *lu = malloc(es * (size_t)(nmat * n * n + 1));
  lapack_int *ipiv = malloc(sizeof *ipiv * (size_t)(nmat * n + 1));
  bool *sing = calloc((size_t)nmat + 1, sizeof *sing);
  if (st == MG_OK && !(lu && ipiv && sing)) st = mg_fail(C, MG_ENOMEM, "linalg.slogdet: out of memory");
  if (st == MG_OK) st = lu_all(C, NULL, A, lu, ipiv, sing);
  for (int64_t i = 0; st == MG_OK && i < nmat; i++) {
    double sg = 1, la = 0;
    const char *a = (const char *)lu + es * (size_t)(i * n * n);
    for (int64_t j = 0; j < n && !sing[i]; j++) {
      double d = bget(dt, a, j + j * n);
      if (d < 0) sg = -sg;
      if (ipiv[i * n + j] != j + 1) sg = -sg;
      la += log(fabs(d));
    }
    yset(y[0], i, sing[i] ? 0.0 : sg);
    yset(y[1], i, sing[i] ? -INFINITY : la);
  }
  free(lu); free(ipiv); free(sing);
  if (st != MG_OK) { mg_tensor_release(y[0]); mg_tensor_release(y[1]); return st; }
  mg_tensor **outs[2] = { sign, logabs };
  return finish(C, MG_OP_SLOGDET, 1, &A, 2, y, NULL, outs);
}

/* ================================================================ Cholesky */

mg_status mg_linalg_cholesky(mg_ctx *C, mg_tensor *A, mg_tensor **out) {
  mg_status st = check_matrix(C, "linalg.cholesky", A, true);
  if (st != MG_OK) return st;
  mg_dtype dt = A->dtype;
  int64_t n = A->shape[A->ndim - 1], nmat = nmatrices(A);
  size_t es = mg_dtype_size(dt);
  mg_tensor *y = NULL;
  st = mg_tensor_zeros(C, dt, A->ndim, A->shape, &y);
  void *a = malloc(es * (size_t)(n * n + 1));
  if (st == MG_OK && a == NULL) st = mg_fail(C, MG_ENOMEM, "linalg.cholesky: out of memory");
  for (int64_t i = 0; st == MG_OK && n > 0 && i < nmat; i++) {
    char s[96], w[64];
    load(A, i, a, n);
    lapack_int info = potrf(dt, (lapack_int)n, a);
    if (info < 0) st = lapack_fail(C, "linalg.cholesky", "potrf", info, A);
    else if (info > 0)
      st = mg_fail(C, MG_EARG, "linalg.cholesky: the matrix is not positive definite: its leading "
                   "minor of order %d is not positive%s (input of shape %s)", (int)info,
                   which(w, sizeof w, A, i), mg_shapestr(s, sizeof s, A->ndim, A->shape));
    else store(y, i, a, n, LOWER);
  }
  free(a);
  if (st != MG_OK) { mg_tensor_release(y); return st; }
  return mg_record_result(C, MG_OP_CHOLESKY, 1, &A, y, NULL, out);
}

/* ================================================================ rule helpers */

/* Constant r x c matrix: 'lo' below the diagonal, 'di' on it, 'up' above (masks, eye). */
static mg_tensor *ex_mask(mg_ex *e, mg_dtype dt, int64_t r, int64_t c, double lo, double di,
                          double up) {
  if (e->st != MG_OK) return NULL;
  int64_t sh[2] = { r, c };
  mg_tensor *y = NULL;
  mg_status st = mg_tensor_empty(e->C, dt, 2, sh, &y);
  for (int64_t i = 0; st == MG_OK && i < r; i++)
    for (int64_t j = 0; j < c; j++) yset(y, i * c + j, i > j ? lo : i == j ? di : up);
  return mg_ex_own(e, st, &y);
}

static mg_tensor *ex_div(mg_ex *e, mg_tensor *a, mg_tensor *b) {
  if (e->st != MG_OK) return NULL;
  mg_tensor *y = NULL;
  return mg_ex_own(e, mg_tensor_binary(e->C, MG_B_DIV, a, b, &y), &y);
}

static mg_tensor *ex_scale(mg_ex *e, mg_tensor *a, double v) {
  if (e->st != MG_OK) return NULL;
  mg_tensor *y = NULL;
  return mg_ex_own(e, mg_tensor_binary_scalar(e->C, MG_B_MUL, a, v, false, &y), &y);
}

static mg_tensor *ex_solve(mg_ex *e, mg_tensor *A, mg_tensor *B) {
  if (e->st != MG_OK) return NULL;
  mg_tensor *y = NULL;
  return mg_ex_own(e, solve_nd(e->C, A, B, &y), &y);
}

/* X R^-1 = (R^-T X^T)^T */
static mg_tensor *ex_rsolve(mg_ex *e, mg_tensor *X, mg_tensor *R) {
  return mg_ex_mT(e, ex_solve(e, mg_ex_mT(e, R), mg_ex_mT(e, X)));
}

/* The diagonal of (..., n, n) as (..., n), and a vector as a diagonal matrix. */
static mg_tensor *ex_diag(mg_ex *e, mg_tensor *X) {
  if (e->st != MG_OK) return NULL;
  int64_t n = X->shape[X->ndim - 1];
  return mg_ex_sum(e, mg_ex_mul(e, X, ex_mask(e, X->dtype, n, n, 0, 1, 0)), 1u << (X->ndim - 1));
}

static mg_tensor *ex_diag_embed(mg_ex *e, mg_tensor *v) {
  if (e->st != MG_OK) return NULL;
  int64_t n = v->shape[v->ndim - 1];
  return mg_ex_mul(e, mg_ex_unsqueeze(e, v, v->ndim - 1), ex_mask(e, v->dtype, n, n, 0, 1, 0));
}

/* Row vector (..., 1, k) and column vector (..., k, 1) views of a vector (..., k). */
static mg_tensor *ex_row(mg_ex *e, mg_tensor *v) { return e->st ? NULL : mg_ex_unsqueeze(e, v, v->ndim - 1); }
static mg_tensor *ex_col(mg_ex *e, mg_tensor *v) { return e->st ? NULL : mg_ex_unsqueeze(e, v, v->ndim); }

/* Expand a tangent to lead dims .. 'shape of x' (rules then see every dim). */
static mg_tensor *ex_full(mg_ex *e, mg_tensor *t, int lead, const mg_tensor *x) {
  if (e->st != MG_OK || t == NULL) return NULL;
  mg_tensor *y = NULL;
  return mg_ex_own(e, mg_expand_lead(e->C, t, lead, x->ndim, x->shape, &y), &y);
}

/* Hand a cotangent/tangent computed by 'e' to the caller, then end 'e'. */
static mg_status ex_give(mg_ex *e, mg_tensor *r, mg_tensor **dst) {
  mg_tensor *k = mg_ex_keep(e, r);
  mg_status st = mg_ex_end(e);
  if (st == MG_OK) *dst = k;
  else mg_tensor_release(k);
  return st;
}

/* ================================================================ QR rules */

/* Reverse rule of a square-or-tall reduced QR: gA = (Q S + gQ) R^-T, where
** M = triu(gR R^T - Q^T gQ) and S = M + triu(M, 1)^T (Walter and Lehmann; as torch). */
static mg_tensor *qr_vjp_tall(mg_ex *e, mg_tensor *Q, mg_tensor *R, mg_tensor *gQ, mg_tensor *gR) {
  if (e->st != MG_OK) return NULL;
  int64_t n = R->shape[R->ndim - 1];
  mg_dtype dt = Q->dtype;
  mg_tensor *M = NULL;
  if (gR) M = mg_ex_matmul(e, gR, mg_ex_mT(e, R));
  if (gQ) {
    mg_tensor *qg = mg_ex_matmul(e, mg_ex_mT(e, Q), gQ);
    M = M ? mg_ex_sub(e, M, qg) : mg_ex_unary(e, MG_U_NEG, qg);
  }
  M = mg_ex_mul(e, M, ex_mask(e, dt, n, n, 0, 1, 1));
  mg_tensor *Sm = mg_ex_add(e, M, mg_ex_mT(e, mg_ex_mul(e, M, ex_mask(e, dt, n, n, 0, 0, 1))));
  mg_tensor *X = mg_ex_matmul(e, Q, Sm);
  if (gQ) X = mg_ex_add(e, X, gQ);
  return ex_rsolve(e, X, mg_ex_mT(e, R));            /* X R^-T */
}

static mg_status qr_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                        const bool *need, mg_tensor **gin) {
  if (!need[0] || (g[0] == NULL && g[1] == NULL)) return MG_OK;
  mg_tensor *A = n->in[0], *Q = n->out[0], *R = n->out[1];
  int nd = A->ndim;
  int64_t m = A->shape[nd - 2], c = A->shape[nd - 1];
  if (n->attr.i[0] && m > c)
    return mg_fail(C, MG_EARG, "linalg.qr: the derivative of mode 'complete' is not defined for "
                   "more rows than columns (input of shape (%lld,%lld) as the last dims): use 'reduced'",
                   (long long)m, (long long)c);
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *gQ = ex_full(&e, g[0], lead, Q), *gR = ex_full(&e, g[1], lead, R), *gA;
  if (m >= c) {
    gA = qr_vjp_tall(&e, Q, R, gQ, gR);
  } else {                                           /* A = [X | Y], R = [U | V], V = Q^T Y */
    int d = R->ndim - 1, dl = lead + d;
    mg_tensor *Y = mg_ex_narrow(&e, A, nd - 1, m, c - m), *U = mg_ex_narrow(&e, R, d, 0, m);
    mg_tensor *gU = gR ? mg_ex_narrow(&e, gR, dl, 0, m) : NULL;
    mg_tensor *gV = gR ? mg_ex_narrow(&e, gR, dl, m, c - m) : NULL;
    mg_tensor *gY = gV ? mg_ex_matmul(&e, Q, gV) : NULL;
    mg_tensor *gQ2 = gV ? mg_ex_matmul(&e, Y, mg_ex_mT(&e, gV)) : NULL;
    if (gQ && gQ2) gQ2 = mg_ex_add(&e, gQ, gQ2);
    else if (gQ) gQ2 = gQ;
    mg_tensor *gX = qr_vjp_tall(&e, Q, U, gQ2, gU);
    if (gY == NULL) gY = mg_ex_zeros(&e, gX, lead, Y);
    mg_tensor *parts[2] = { gX, gY };
    gA = e.st ? NULL : mg_ex_cat(&e, 2, parts, dl);
  }
  return ex_give(&e, gA, &gin[0]);
}

/* Forward rule of a square-or-tall reduced QR: with Z = dA R^-1 and K = Q^T Z,
** O = tril(K, -1) - tril(K, -1)^T: dR = (K - O) R, dQ = Z - Q (K - O). */
static void qr_jvp_tall(mg_ex *e, mg_tensor *Q, mg_tensor *R, mg_tensor *dA, mg_tensor **dQ,
                        mg_tensor **dR) {
  int64_t n = R->shape[R->ndim - 1];
  mg_tensor *Z = ex_rsolve(e, dA, R), *K = mg_ex_matmul(e, mg_ex_mT(e, Q), Z);
  mg_tensor *L = mg_ex_mul(e, K, ex_mask(e, Q->dtype, n, n, 1, 0, 0));
  mg_tensor *KO = mg_ex_add(e, mg_ex_sub(e, K, L), mg_ex_mT(e, L));   /* K - O */
  *dR = mg_ex_matmul(e, KO, R);
  *dQ = mg_ex_sub(e, Z, mg_ex_matmul(e, Q, KO));
}

static mg_status qr_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                        mg_tensor **tout) {
  mg_tensor *A = n->in[0], *Q = n->out[0], *R = n->out[1], *dQ = NULL, *dR = NULL;
  int nd = A->ndim;
  int64_t m = A->shape[nd - 2], c = A->shape[nd - 1];
  if (n->attr.i[0] && m > c)
    return mg_fail(C, MG_EARG, "linalg.qr: the derivative of mode 'complete' is not defined for "
                   "more rows than columns: use 'reduced'");
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *dA = ex_full(&e, t[0], lead, A);
  if (m >= c) {
    qr_jvp_tall(&e, Q, R, dA, &dQ, &dR);
  } else {                                           /* dV = dQ^T Y + Q^T dY */
    int dl = lead + nd - 1;
    mg_tensor *Y = mg_ex_narrow(&e, A, nd - 1, m, c - m), *U = mg_ex_narrow(&e, R, nd - 1, 0, m);
    mg_tensor *dX = mg_ex_narrow(&e, dA, dl, 0, m), *dY = mg_ex_narrow(&e, dA, dl, m, c - m), *dU = NULL;
    if (e.st == MG_OK) qr_jvp_tall(&e, Q, U, dX, &dQ, &dU);
    mg_tensor *dV = mg_ex_add(&e, mg_ex_matmul(&e, mg_ex_mT(&e, dQ), Y), mg_ex_matmul(&e, mg_ex_mT(&e, Q), dY));
    mg_tensor *parts[2] = { dU, dV };
    dR = e.st ? NULL : mg_ex_cat(&e, 2, parts, dl);
  }
  tout[0] = mg_ex_keep(&e, dQ);
  mg_status st = ex_give(&e, dR, &tout[1]);
  if (st != MG_OK) { mg_tensor_release(tout[0]); tout[0] = NULL; }
  return st;
}

const mg_rules mg_rules_qr = { .vjp = qr_vjp, .jvp = qr_jvp };

/* ================================================================ SVD rules */

/* E[i,j] = s_j^2 - s_i^2 off the diagonal, 1 on it. */
static mg_tensor *svd_E(mg_ex *e, mg_tensor *S) {
  if (e->st != MG_OK) return NULL;
  int64_t k = S->shape[S->ndim - 1];
  mg_tensor *S2 = mg_ex_mul(e, S, S);
  return mg_ex_add(e, mg_ex_sub(e, ex_row(e, S2), ex_col(e, S2)), ex_mask(e, S->dtype, k, k, 0, 1, 0));
}

/* The first k columns (U) or rows (Vh) of a full_matrices factor. */
static mg_tensor *first_k(mg_ex *e, mg_tensor *X, int dim, int64_t k) {
  if (e->st != MG_OK || X == NULL) return X;
  return X->shape[dim] == k ? X : mg_ex_narrow(e, X, dim, 0, k);
}

/* gA = U [(skew(U^T gU) S + S skew(V^T gV)) / E + diag(gS)] V^T + the parts of gU and gV
** outside the spans of U and V (torch's svd_backward, real case). */
static mg_status svd_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                         const bool *need, mg_tensor **gin) {
  if (!need[0] || (!g[0] && !g[1] && !g[2])) return MG_OK;
  mg_tensor *A = n->in[0], *S = n->out[1];
  int nd = A->ndim;
  int64_t m = A->shape[nd - 2], c = A->shape[nd - 1], k = S->shape[S->ndim - 1];
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *U = first_k(&e, n->out[0], nd - 1, k), *Vh = first_k(&e, n->out[2], nd - 2, k);
  mg_tensor *gU = first_k(&e, ex_full(&e, g[0], lead, n->out[0]), lead + nd - 1, k);
  mg_tensor *gS = ex_full(&e, g[1], lead, S);
  mg_tensor *gVh = first_k(&e, ex_full(&e, g[2], lead, n->out[2]), lead + nd - 2, k);
  mg_tensor *gA = NULL;
  if (!gU && !gVh) {
    gA = mg_ex_matmul(&e, mg_ex_mul(&e, U, ex_row(&e, gS)), Vh);
    return ex_give(&e, gA, &gin[0]);
  }
  mg_tensor *V = mg_ex_mT(&e, Vh), *gV = gVh ? mg_ex_mT(&e, gVh) : NULL, *in = NULL;
  if (gU) {
    mg_tensor *X = mg_ex_matmul(&e, mg_ex_mT(&e, U), gU);
    in = mg_ex_mul(&e, mg_ex_sub(&e, X, mg_ex_mT(&e, X)), ex_row(&e, S));
  }
  if (gV) {
    mg_tensor *X = mg_ex_matmul(&e, Vh, gV);
    X = mg_ex_mul(&e, ex_col(&e, S), mg_ex_sub(&e, X, mg_ex_mT(&e, X)));
    in = in ? mg_ex_add(&e, in, X) : X;
  }
  in = ex_div(&e, in, svd_E(&e, S));
  if (gS) in = mg_ex_add(&e, in, ex_diag_embed(&e, gS));
  if (m > k && gU) {
    mg_tensor *gUS = ex_div(&e, gU, ex_row(&e, S));
    gA = mg_ex_add(&e, mg_ex_matmul(&e, U, in),
                   mg_ex_sub(&e, gUS, mg_ex_matmul(&e, U, mg_ex_matmul(&e, mg_ex_mT(&e, U), gUS))));
    gA = mg_ex_matmul(&e, gA, Vh);
  } else if (c > k && gV) {
    mg_tensor *gVS = mg_ex_mT(&e, ex_div(&e, gV, ex_row(&e, S)));   /* (gV S^-1)^T */
    gA = mg_ex_add(&e, mg_ex_matmul(&e, in, Vh),
                   mg_ex_sub(&e, gVS, mg_ex_matmul(&e, mg_ex_matmul(&e, gVS, V), Vh)));
    gA = mg_ex_matmul(&e, U, gA);
  } else {
    gA = mg_ex_matmul(&e, mg_ex_matmul(&e, U, in), Vh);
  }
  return ex_give(&e, gA, &gin[0]);
}

/* With P = U^T dA V and F = 1/E off the diagonal (0 on it): dS = diag(P),
** dU = U (F o (P S + S P^T)) + (dA V - U P) S^-1, dV = V (F o (S P + P^T S)) + (dA^T U - V P^T) S^-1. */
static mg_status svd_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                         mg_tensor **tout) {
  mg_tensor *A = n->in[0], *U = n->out[0], *S = n->out[1], *Vh = n->out[2];
  int nd = A->ndim;
  int64_t m = A->shape[nd - 2], c = A->shape[nd - 1], k = S->shape[S->ndim - 1];
  if (n->attr.i[0] && m != c)
    return mg_fail(C, MG_EARG, "linalg.svd: the forward-mode derivative with full_matrices=true "
                   "needs square matrices (got %lldx%lld): use full_matrices=false",
                   (long long)m, (long long)c);
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *dA = ex_full(&e, t[0], lead, A), *V = mg_ex_mT(&e, Vh);
  mg_tensor *P = mg_ex_matmul(&e, mg_ex_matmul(&e, mg_ex_mT(&e, U), dA), V);
  mg_tensor *F = mg_ex_mul(&e, ex_div(&e, ex_mask(&e, A->dtype, k, k, 1, 0, 1), svd_E(&e, S)),
                           ex_mask(&e, A->dtype, k, k, 1, 0, 1));
  mg_tensor *Sr = ex_row(&e, S), *Sc = ex_col(&e, S), *Pt = mg_ex_mT(&e, P);
  mg_tensor *dU = mg_ex_matmul(&e, U, mg_ex_mul(&e, F, mg_ex_add(&e, mg_ex_mul(&e, P, Sr), mg_ex_mul(&e, Sc, Pt))));
  mg_tensor *dV = mg_ex_matmul(&e, V, mg_ex_mul(&e, F, mg_ex_add(&e, mg_ex_mul(&e, Sc, P), mg_ex_mul(&e, Pt, Sr))));
  if (m > k)
    dU = mg_ex_add(&e, dU, ex_div(&e, mg_ex_sub(&e, mg_ex_matmul(&e, dA, V), mg_ex_matmul(&e, U, P)), Sr));
  if (c > k)
    dV = mg_ex_add(&e, dV, ex_div(&e, mg_ex_sub(&e, mg_ex_matmul(&e, mg_ex_mT(&e, dA), U),
                                                mg_ex_matmul(&e, V, Pt)), Sr));
  tout[0] = mg_ex_keep(&e, dU);
  tout[1] = mg_ex_keep(&e, ex_diag(&e, P));
  mg_status st = ex_give(&e, mg_ex_mT(&e, dV), &tout[2]);
  if (st != MG_OK)
    for (int j = 0; j < 2; j++) { mg_tensor_release(tout[j]); tout[j] = NULL; }
  return st;
}

const mg_rules mg_rules_svd = { .vjp = svd_vjp, .jvp = svd_jvp };

/* ================================================================ eigh rules */

/* gA = V (skew(V^T gV) / 2 / E + diag(gw)) V^T with E[i,j] = w_j - w_i (as torch). */
static mg_status eigh_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                          const bool *need, mg_tensor **gin) {
  if (!need[0] || (!g[0] && !g[1])) return MG_OK;
  mg_tensor *w = n->out[0], *V = n->out[1];
  int64_t k = w->shape[w->ndim - 1];
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *gw = ex_full(&e, g[0], lead, w), *gV = ex_full(&e, g[1], lead, V), *in = NULL;
  if (gV) {
    mg_tensor *X = mg_ex_matmul(&e, mg_ex_mT(&e, V), gV);
    mg_tensor *E = mg_ex_add(&e, mg_ex_sub(&e, ex_row(&e, w), ex_col(&e, w)), ex_mask(&e, w->dtype, k, k, 0, 1, 0));
    in = ex_div(&e, ex_scale(&e, mg_ex_sub(&e, X, mg_ex_mT(&e, X)), 0.5), E);
  }
  if (gw) in = in ? mg_ex_add(&e, in, ex_diag_embed(&e, gw)) : ex_diag_embed(&e, gw);
  return ex_give(&e, mg_ex_matmul(&e, mg_ex_matmul(&e, V, in), mg_ex_mT(&e, V)), &gin[0]);
}

/* P = V^T dA V: dw = diag(P), dV = V (F o P) with F[i,j] = 1/(w_j - w_i), 0 on the diagonal. */
static mg_status eigh_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                          mg_tensor **tout) {
  mg_tensor *A = n->in[0], *w = n->out[0], *V = n->out[1];
  int64_t k = w->shape[w->ndim - 1];
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *dA = ex_full(&e, t[0], lead, A);
  mg_tensor *P = mg_ex_matmul(&e, mg_ex_matmul(&e, mg_ex_mT(&e, V), dA), V);
  mg_tensor *off = ex_mask(&e, w->dtype, k, k, 1, 0, 1);
  mg_tensor *E = mg_ex_add(&e, mg_ex_sub(&e, ex_row(&e, w), ex_col(&e, w)), ex_mask(&e, w->dtype, k, k, 0, 1, 0));
  mg_tensor *F = mg_ex_mul(&e, ex_div(&e, off, E), off);
  tout[0] = mg_ex_keep(&e, ex_diag(&e, P));
  mg_status st = ex_give(&e, mg_ex_matmul(&e, V, mg_ex_mul(&e, F, P)), &tout[1]);
  if (st != MG_OK) { mg_tensor_release(tout[0]); tout[0] = NULL; }
  return st;
}

const mg_rules mg_rules_eigh = { .vjp = eigh_vjp, .jvp = eigh_jvp };

/* ================================================================ eig: no rules */

static mg_status eig_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                         const bool *need, mg_tensor **gin) {
  (void)n; (void)lead; (void)g; (void)need; (void)gin;
  return mg_fail(C, MG_EARG, "linalg.eig: not differentiable (moongrad has no complex dtype); "
                 "for symmetric matrices use linalg.eigh");
}

static mg_status eig_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                         mg_tensor **tout) {
  return eig_vjp(C, n, lead, t, NULL, tout);
}

const mg_rules mg_rules_eig = { .vjp = eig_vjp, .jvp = eig_jvp };

/* ================================================================ solve rules */

/* gB = A^-T g, gA = -gB X^T, each summed back over broadcast batch dims. */
static mg_status solve_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                           const bool *need, mg_tensor **gin) {
  if (g[0] == NULL) return MG_OK;
  mg_tensor *A = n->in[0], *B = n->in[1], *X = n->out[0], *r;
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *gB = ex_solve(&e, mg_ex_mT(&e, A), g[0]);
  if (need[1] && e.st == MG_OK && (e.st = mg_unbroadcast(C, gB, lead, B->ndim, B->shape, &r)) == MG_OK)
    gin[1] = r;
  mg_tensor *gA = need[0] ? mg_ex_unary(&e, MG_U_NEG, mg_ex_matmul(&e, gB, mg_ex_mT(&e, X))) : NULL;
  if (gA && e.st == MG_OK && (e.st = mg_unbroadcast(C, gA, lead, A->ndim, A->shape, &r)) == MG_OK)
    gin[0] = r;
  mg_status st = mg_ex_end(&e);
  if (st != MG_OK)
    for (int j = 0; j < 2; j++) { mg_tensor_release(gin[j]); gin[j] = NULL; }
  return st;
}

/* dX = A^-1 (dB - dA X) */
static mg_status solve_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                           mg_tensor **tout) {
  mg_tensor *A = n->in[0], *X = n->out[0];
  int nd = X->ndim;
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *rhs = t[1] ? mg_ex_align(&e, t[1], lead, nd) : NULL;
  if (t[0]) {
    mg_tensor *p = mg_ex_matmul(&e, mg_ex_align(&e, t[0], lead, nd), X);
    rhs = rhs ? mg_ex_sub(&e, rhs, p) : mg_ex_unary(&e, MG_U_NEG, p);
  }
  mg_tensor *dX = ex_solve(&e, A, rhs), *r = NULL;
  if (e.st == MG_OK) e.st = mg_expand_lead(C, dX, lead, nd, X->shape, &r);
  mg_status st = mg_ex_end(&e);
  if (st == MG_OK) tout[0] = r;
  return st;
}

const mg_rules mg_rules_solve = { .vjp = solve_vjp, .jvp = solve_jvp };

/* ================================================================ slogdet rules */

/* A^-T as a recorded solve. */
static mg_tensor *ex_inv_t(mg_ex *e, mg_tensor *A) {
  if (e->st != MG_OK) return NULL;
  int64_t k = A->shape[A->ndim - 1];
  return ex_solve(e, mg_ex_mT(e, A), ex_mask(e, A->dtype, k, k, 0, 1, 0));
}

/* d log|det A| = tr(A^-1 dA): the cotangent is g A^-T; the sign is locally constant. */
static mg_status slogdet_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                             const bool *need, mg_tensor **gin) {
  if (!need[0] || g[1] == NULL) return MG_OK;
  mg_tensor *A = n->in[0];
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *gl = ex_full(&e, g[1], lead, n->out[1]);
  gl = ex_col(&e, ex_col(&e, gl));
  return ex_give(&e, mg_ex_mul(&e, gl, ex_inv_t(&e, A)), &gin[0]);
}

static mg_status slogdet_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                             mg_tensor **tout) {
  mg_tensor *A = n->in[0];
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *dA = ex_full(&e, t[0], lead, A);
  uint32_t last2 = 3u << (lead + A->ndim - 2);
  return ex_give(&e, mg_ex_sum(&e, mg_ex_mul(&e, ex_inv_t(&e, A), dA), last2), &tout[1]);
}

const mg_rules mg_rules_slogdet = { .vjp = slogdet_vjp, .jvp = slogdet_jvp };

/* ================================================================ Cholesky rules */

/* P = tril(L^T gL), P = (P + tril(P, -1)^T) / 2, gA = L^-T P L^-1 (Murray 2016; as torch). */
static mg_status cholesky_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                              const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  mg_tensor *L = n->out[0];
  int64_t k = L->shape[L->ndim - 1];
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *Lt = mg_ex_mT(&e, L), *gL = ex_full(&e, g[0], lead, L);
  mg_tensor *P = mg_ex_mul(&e, mg_ex_matmul(&e, Lt, gL), ex_mask(&e, L->dtype, k, k, 1, 1, 0));
  P = ex_scale(&e, mg_ex_add(&e, P, mg_ex_mT(&e, mg_ex_mul(&e, P, ex_mask(&e, L->dtype, k, k, 1, 0, 0)))), 0.5);
  mg_tensor *Z = ex_solve(&e, Lt, P);                       /* L^-T P */
  return ex_give(&e, mg_ex_mT(&e, ex_solve(&e, Lt, mg_ex_mT(&e, Z))), &gin[0]);
}

/* dL = L phi(L^-1 dA L^-T), phi: the lower triangle with the diagonal halved. */
static mg_status cholesky_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                              mg_tensor **tout) {
  mg_tensor *A = n->in[0], *L = n->out[0];
  int64_t k = L->shape[L->ndim - 1];
  mg_ex e;
  mg_ex_begin(&e, C);
  mg_tensor *W = ex_solve(&e, L, ex_full(&e, t[0], lead, A));   /* L^-1 dA */
  W = mg_ex_mT(&e, ex_solve(&e, L, mg_ex_mT(&e, W)));           /* .. L^-T */
  W = mg_ex_mul(&e, W, ex_mask(&e, L->dtype, k, k, 1, 0.5, 0));
  return ex_give(&e, mg_ex_matmul(&e, L, W), &tout[0]);
}

const mg_rules mg_rules_cholesky = { .vjp = cholesky_vjp, .jvp = cholesky_jvp };
