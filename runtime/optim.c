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

/* The RMSprop step with the scalars rounded to the tensors' dtype first, as a number operand
** of an element-wise op is: */
#define RMSPROP_LOOP(T, SQRT) do {                                                   \
    T *pp = (T *)mg_tensor_data(p), *vp = (T *)mg_tensor_data(v);                    \
    const T *gp = (const T *)mg_tensor_data(g);                                      \
    T lr_ = (T)lr, rho_ = (T)rho, one_rho = (T)(1 - rho), eps_ = (T)eps, sc = (T)scale; \
    for (int64_t k = 0; k < n; k++) {                                                \
      T gk = scaled ? gp[k] * sc : gp[k];                                            \
      T vk = vp[k] * rho_ + (gk * gk) * one_rho;                                     \
      vp[k] = vk;                                                                    \
      pp[k] = pp[k] - (gk * lr_) / SQRT(vk + eps_);                                  \
    }                                                                                \
  } while (0)

mg_status mg_rmsprop_update_(mg_ctx *C, mg_tensor *p, mg_tensor *v, mg_tensor *g, double lr,
                             double rho, double eps, double scale) {
  if (!mg_tensor_is_contiguous(p) || !fits(p, v) || !fits(p, g) ||
      (p->dtype != MG_F32 && p->dtype != MG_F64)) {
    char s1[96], s2[96], s3[96];
    return mg_fail(C, MG_EARG, "rmsprop_update: expected contiguous tensors of one dtype and shape, "
                   "got %s, %s and %s", mg_shapestr(s1, sizeof s1, p->ndim, p->shape),
                   mg_shapestr(s2, sizeof s2, v->ndim, v->shape),
                   mg_shapestr(s3, sizeof s3, g->ndim, g->shape));
  }
  int64_t n = mg_tensor_numel(p);
  bool scaled = scale != 1;
  if (p->dtype == MG_F64) RMSPROP_LOOP(double, sqrt);
  else RMSPROP_LOOP(float, sqrtf);
  mg_bump_version(p);
  mg_bump_version(v);
  return MG_OK;
}

/* Adam's step as optim.lua's element-wise ops compute it, the scalars rounded to the tensors'
** dtype first: m += (g - m) (1 - b1); v += (g g - v) (1 - b2); then
** keras: p -= (m a) / (sqrt(v) + eps), a = lr sqrt(c2) / c1;
** pytorch: p -= (m a) / (sqrt(v s) + eps), a = lr / c1, s = 1 / c2 (c_i = 1 - b_i^t). */
#define ADAM_LOOP(T, SQRT) do {                                                       \
    T *restrict pp = mg_tensor_data(p), *restrict mp = mg_tensor_data(m), *restrict vp = mg_tensor_data(v); \
    const T *restrict gp = mg_tensor_data(g);                                         \
    T om1 = (T)(1 - b1), om2 = (T)(1 - b2), a_ = (T)a, s_ = (T)s, eps_ = (T)eps;       \
    if (pytorch)                                                                      \
      for (int64_t k = 0; k < n; k++) {                                               \
        T gk = gp[k], mk = mp[k] + (gk - mp[k]) * om1, vk = vp[k] + (gk * gk - vp[k]) * om2; \
        mp[k] = mk;                                                                   \
        vp[k] = vk;                                                                   \
        pp[k] = pp[k] - (mk * a_) / (SQRT(vk * s_) + eps_);                           \
      }                                                                               \
    else                                                                              \
      for (int64_t k = 0; k < n; k++) {                                               \
        T gk = gp[k], mk = mp[k] + (gk - mp[k]) * om1, vk = vp[k] + (gk * gk - vp[k]) * om2; \
        mp[k] = mk;                                                                   \
        vp[k] = vk;                                                                   \
        pp[k] = pp[k] - (mk * a_) / (SQRT(vk) + eps_);                                \
      }                                                                               \
  } while (0)

mg_status mg_adam_update_(mg_ctx *C, mg_tensor *p, mg_tensor *m, mg_tensor *v, mg_tensor *g,
                          double lr, double b1, double b2, double eps, double t, bool pytorch) {
  if (!mg_tensor_is_contiguous(p) || !fits(p, m) || !fits(p, v) || !fits(p, g) ||
      (p->dtype != MG_F32 && p->dtype != MG_F64)) {
    char s1[96], s2[96];
    return mg_fail(C, MG_EARG, "adam_update: expected contiguous tensors of one dtype and shape, "
                   "got %s and a gradient of %s", mg_shapestr(s1, sizeof s1, p->ndim, p->shape),
                   mg_shapestr(s2, sizeof s2, g->ndim, g->shape));
  }
  double c1 = 1 - pow(b1, t), c2 = 1 - pow(b2, t);
  double a = pytorch ? lr / c1 : lr * sqrt(c2) / c1, s = 1 / c2;
  int64_t n = mg_tensor_numel(p);
  if (p->dtype == MG_F64) ADAM_LOOP(double, sqrt);
  else ADAM_LOOP(float, sqrtf);
  mg_bump_version(p);
  mg_bump_version(m);
  mg_bump_version(v);
  return MG_OK;
}
