/*
** optim.c - optimizer updates in one pass over the elements, in place and not recorded.
** Each computes exactly what the optimizer's element-wise ops compute (the same operations in
** the tensors' precision, in the same order: ISO C keeps a * b + c unfused), without their
** temporaries.
*/
#include "mg_impl.h"

#include <math.h>

static bool fits(const mg_tensor *a, const mg_tensor *b) {
  return a->dtype == b->dtype && mg_same_shape(a, b) && mg_tensor_is_contiguous(b);
}

/* The float32 loops are compiled for AVX-512 and AVX2 too (MG_CLONES); this file is compiled
** with -fno-math-errno (CMakeLists.txt) so that sqrtf vectorizes: the vector square root and
** division are correctly rounded as the scalar ones are (the same bits). */

/* The operands of an update: p and every state in 's' (n of them) and g contiguous, of one
** floating dtype and shape; else "<fn>: expected ..." naming p's, the first state's and g's
** shapes. */
static mg_status check_update(mg_ctx *C, const char *fn, const mg_tensor *p, int n,
                              mg_tensor *const *s, const mg_tensor *g) {
  bool ok = mg_tensor_is_contiguous(p) && fits(p, g) && (p->dtype == MG_F32 || p->dtype == MG_F64);
  for (int i = 0; i < n; i++) ok = ok && fits(p, s[i]);
  if (ok) return MG_OK;
  char s1[96], s2[96], s3[96];
  return mg_fail(C, MG_EARG, "%s: expected contiguous tensors of one dtype and shape, got %s, %s "
                 "and %s", fn, mg_shapestr(s1, sizeof s1, p->ndim, p->shape),
                 mg_shapestr(s2, sizeof s2, s[0]->ndim, s[0]->shape),
                 mg_shapestr(s3, sizeof s3, g->ndim, g->shape));
}

/* The RMSprop step with the scalars rounded to the tensors' dtype first, as a number operand
** of an element-wise op is (g * 1 is g, so the unscaled step multiplies by sc = 1): */
#define RMSPROP_LOOP(T, SQRT) do {                                                   \
    for (int64_t k = 0; k < n; k++) {                                                \
      T gk = gp[k] * sc;                                                             \
      T vk = vp[k] * rho + (gk * gk) * one_rho;                                      \
      vp[k] = vk;                                                                    \
      pp[k] = pp[k] - (gk * lr) / SQRT(vk + eps);                                    \
    }                                                                                \
  } while (0)

MG_CLONES static void rmsprop_f32(int64_t n, float *restrict pp, float *restrict vp,
                                   const float *restrict gp, float lr, float rho, float one_rho,
                                   float eps, float sc) {
  RMSPROP_LOOP(float, sqrtf);
}

static void rmsprop_f64(int64_t n, double *restrict pp, double *restrict vp,
                        const double *restrict gp, double lr, double rho, double one_rho,
                        double eps, double sc) {
  RMSPROP_LOOP(double, sqrt);
}

mg_status mg_rmsprop_update_(mg_ctx *C, mg_tensor *p, mg_tensor *v, mg_tensor *g, double lr,
                             double rho, double eps, double scale) {
  mg_status st = check_update(C, "rmsprop_update", p, 1, &v, g);
  if (st != MG_OK) return st;
  int64_t n = mg_tensor_numel(p);
  if (p->dtype == MG_F64)
    rmsprop_f64(n, mg_tensor_data(p), mg_tensor_data(v), mg_tensor_data(g), lr, rho, 1 - rho, eps,
                scale);
  else
    rmsprop_f32(n, mg_tensor_data(p), mg_tensor_data(v), mg_tensor_data(g), (float)lr, (float)rho,
                (float)(1 - rho), (float)eps, (float)scale);
  mg_bump_version(p);
  mg_bump_version(v);
  return MG_OK;
}

/* The sum of squares (what (t * t):sum() gives: each square in t's dtype, summed in double,
** a float32 sum rounded to float32), without the temporary. float32: eight partial sums so
** that the loop vectorizes (another order of the double additions, below float32's rounding). */
MG_CLONES static double sumsq_f32(int64_t n, const float *restrict x) {
  double acc[8] = { 0 };
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; j++) acc[j] += (double)(x[k + j] * x[k + j]);
  for (; k < n; k++) acc[0] += (double)(x[k] * x[k]);
  return (float)(((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])));
}

static double sumsq_f64(int64_t n, const double *restrict x) {   /* in order, as sum does */
  double acc = 0;
  for (int64_t k = 0; k < n; k++) acc += x[k] * x[k];
  return acc;
}

mg_status mg_sumsq_(mg_ctx *C, mg_tensor *t, double *out) {
  if (!mg_tensor_is_contiguous(t) || (t->dtype != MG_F32 && t->dtype != MG_F64)) {
    char s[96];
    return mg_fail(C, MG_EARG, "sumsq: expected a contiguous float32 or float64 tensor, got %s %s",
                   mg_dtype_name(t->dtype), mg_shapestr(s, sizeof s, t->ndim, t->shape));
  }
  int64_t n = mg_tensor_numel(t);
  *out = t->dtype == MG_F64 ? sumsq_f64(n, mg_tensor_data(t)) : sumsq_f32(n, mg_tensor_data(t));
  return MG_OK;
}

/* Adam's step as optim.lua's element-wise ops compute it, the scalars rounded to the tensors'
** dtype first: m += (g - m) (1 - b1); v += (g g - v) (1 - b2); then
** keras: p -= (m a) / (sqrt(v) + eps), a = lr sqrt(c2) / c1;
** pytorch: p -= (m a) / (sqrt(v s) + eps), a = lr / c1, s = 1 / c2 (c_i = 1 - b_i^t).
** Over the elements [lo, hi) of one block of the context's threads. */
typedef struct adam_job {
  mg_tensor *p, *m, *v;
  const mg_tensor *g;
  double om1, om2, a, s, eps;
  bool pytorch;
} adam_job;

#define ADAM_LOOP(T, SQRT) do {                                                       \
    T *restrict pp = mg_tensor_data(j->p), *restrict mp = mg_tensor_data(j->m);       \
    T *restrict vp = mg_tensor_data(j->v);                                            \
    const T *restrict gp = mg_tensor_data(j->g);                                      \
    T om1 = (T)j->om1, om2 = (T)j->om2, a_ = (T)j->a, s_ = (T)j->s, eps_ = (T)j->eps;  \
    if (j->pytorch)                                                                   \
      for (int64_t k = lo; k < hi; k++) {                                             \
        T gk = gp[k], mk = mp[k] + (gk - mp[k]) * om1, vk = vp[k] + (gk * gk - vp[k]) * om2; \
        mp[k] = mk;                                                                   \
        vp[k] = vk;                                                                   \
        pp[k] = pp[k] - (mk * a_) / (SQRT(vk * s_) + eps_);                           \
      }                                                                               \
    else                                                                              \
      for (int64_t k = lo; k < hi; k++) {                                             \
        T gk = gp[k], mk = mp[k] + (gk - mp[k]) * om1, vk = vp[k] + (gk * gk - vp[k]) * om2; \
        mp[k] = mk;                                                                   \
        vp[k] = vk;                                                                   \
        pp[k] = pp[k] - (mk * a_) / (SQRT(vk) + eps_);                                \
      }                                                                               \
  } while (0)

MG_CLONES static void adam_range_f32(void *arg, int64_t lo, int64_t hi) {
  const adam_job *j = arg;
  ADAM_LOOP(float, sqrtf);
}

static void adam_range_f64(void *arg, int64_t lo, int64_t hi) {
  const adam_job *j = arg;
  ADAM_LOOP(double, sqrt);
}

mg_status mg_adam_update_(mg_ctx *C, mg_tensor *p, mg_tensor *m, mg_tensor *v, mg_tensor *g,
                          double lr, double b1, double b2, double eps, double t, bool pytorch) {
  mg_tensor *mv[2] = { m, v };
  mg_status st = check_update(C, "adam_update", p, 2, mv, g);
  if (st != MG_OK) return st;
  double c1 = 1 - pow(b1, t), c2 = 1 - pow(b2, t);
  adam_job j = { .p = p, .m = m, .v = v, .g = g, .om1 = 1 - b1, .om2 = 1 - b2,
                 .a = pytorch ? lr / c1 : lr * sqrt(c2) / c1, .s = 1 / c2, .eps = eps,
                 .pytorch = pytorch };
  int64_t n = mg_tensor_numel(p);
  mg_range_fn fn = p->dtype == MG_F64 ? adam_range_f64 : adam_range_f32;
  if (n < 2 * MG_PAR_GRAIN || C->nthreads == 1) fn(&j, 0, n);   /* one share: called directly */
  else mg_parallel_for(C, NULL, n, MG_PAR_GRAIN, fn, &j);
  mg_bump_version(p);
  mg_bump_version(m);
  mg_bump_version(v);
  return MG_OK;
}
