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
  mg_status st = check_update(C, "rmsprop_update", p, 1, &v, g);
  if (st != MG_OK) return st;
  int64_t n = mg_tensor_numel(p);
  bool scaled = scale != 1;
  if (p->dtype == MG_F64) RMSPROP_LOOP(double, sqrt);
  else RMSPROP_LOOP(float, sqrtf);
  mg_bump_version(p);
  mg_bump_version(v);
  return MG_OK;
}

/* Adam's step as Adam:update writes it with element-wise ops, each scalar rounded to the
** tensors' dtype first: m += (g - m) (1 - beta1); v += (g g - v) (1 - beta2); then Keras's
** p -= (m a) / (sqrt(v) + eps) with a = lr sqrt(c2) / c1, or PyTorch's
** p -= (m a) / (sqrt(v (1 / c2)) + eps) with a = lr / c1. */
#define ADAM_LOOP(T, SQRT) do {                                                      \
    T *pp = (T *)mg_tensor_data(p), *mp = (T *)mg_tensor_data(m);                    \
    T *vp = (T *)mg_tensor_data(v);                                                  \
    const T *gp = (const T *)mg_tensor_data(g);                                      \
    T b1_ = (T)(1 - beta1), b2_ = (T)(1 - beta2), a_ = (T)a, eps_ = (T)eps;          \
    T ic2 = (T)(1 / c2);                                                             \
    for (int64_t k = 0; k < n; k++) {                                                \
      T gk = gp[k];                                                                  \
      T mk = mp[k] + (gk - mp[k]) * b1_;                                             \
      T vk = vp[k] + (gk * gk - vp[k]) * b2_;                                        \
      mp[k] = mk;                                                                    \
      vp[k] = vk;                                                                    \
      pp[k] = pp[k] - (mk * a_) / ((keras ? SQRT(vk) : SQRT(vk * ic2)) + eps_);      \
    }                                                                                \
  } while (0)

mg_status mg_adam_update_(mg_ctx *C, mg_tensor *p, mg_tensor *m, mg_tensor *v, mg_tensor *g,
                          double lr, double beta1, double beta2, double eps, double c1,
                          double c2, bool keras) {
  mg_tensor *mv[2] = { m, v };
  mg_status st = check_update(C, "adam_update", p, 2, mv, g);
  if (st != MG_OK) return st;
  int64_t n = mg_tensor_numel(p);
  double a = keras ? lr * sqrt(c2) / c1 : lr / c1;
  if (p->dtype == MG_F64) ADAM_LOOP(double, sqrt);
  else ADAM_LOOP(float, sqrtf);
  mg_bump_version(p);
  mg_bump_version(m);
  mg_bump_version(v);
  return MG_OK;
}
