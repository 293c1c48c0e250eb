/*
** elementwise.c - unary and binary math with NumPy broadcasting, clamp and where; each op's
** forward kernel beside its reverse (VJP) and forward (JVP) rule.
*/
#include "mg_impl.h"

#include <math.h>
#include <stdlib.h>

/* ================================================================ kernels */

/* Inner loop over 'n' elements: unit-stride fast path, else strided. */
#define LOOP1(T, EXPR) do {                                                        \
    const T *x = (const T *)p[1]; T *y = (T *)p[0];                                \
    int64_t sx = s[1], sy = s[0];                                                  \
    if (sx == 1 && sy == 1) for (int64_t i = 0; i < n; i++) { T v = x[i]; y[i] = (EXPR); } \
    else for (int64_t i = 0; i < n; i++) { T v = x[i * sx]; y[i * sy] = (EXPR); }  \
  } while (0)

static void unary_f32(int64_t n, char **p, const int64_t *s, void *ud) {
  switch (*(const mg_unary *)ud) {
  case MG_U_NEG: LOOP1(float, -v); break;
  case MG_U_EXP: LOOP1(float, expf(v)); break;
  case MG_U_LOG: LOOP1(float, logf(v)); break;
  case MG_U_TANH: LOOP1(float, tanhf(v)); break;
  case MG_U_SIGMOID: LOOP1(float, v >= 0 ? 1.0f / (1.0f + expf(-v)) : expf(v) / (1.0f + expf(v))); break;
  case MG_U_RELU: LOOP1(float, v > 0 ? v : 0.0f); break;
  case MG_U_ABS: LOOP1(float, fabsf(v)); break;
  case MG_U_SQRT: LOOP1(float, sqrtf(v)); break;
  case MG_U_SIN: LOOP1(float, sinf(v)); break;
  case MG_U_COS: LOOP1(float, cosf(v)); break;
  case MG_U_SOFTPLUS: LOOP1(float, v > 20 ? v : log1pf(expf(v))); break;
  case MG_U_SIGN: LOOP1(float, (float)((v > 0) - (v < 0))); break;
  case MG_U_STEP: LOOP1(float, v > 0 ? 1.0f : 0.0f); break;
  default: break;
  }
}

static void unary_f64(int64_t n, char **p, const int64_t *s, void *ud) {
  switch (*(const mg_unary *)ud) {
  case MG_U_NEG: LOOP1(double, -v); break;
  case MG_U_EXP: LOOP1(double, exp(v)); break;
  case MG_U_LOG: LOOP1(double, log(v)); break;
  case MG_U_TANH: LOOP1(double, tanh(v)); break;
  case MG_U_SIGMOID: LOOP1(double, v >= 0 ? 1.0 / (1.0 + exp(-v)) : exp(v) / (1.0 + exp(v))); break;
  case MG_U_RELU: LOOP1(double, v > 0 ? v : 0.0); break;
  case MG_U_ABS: LOOP1(double, fabs(v)); break;
  case MG_U_SQRT: LOOP1(double, sqrt(v)); break;
  case MG_U_SIN: LOOP1(double, sin(v)); break;
  case MG_U_COS: LOOP1(double, cos(v)); break;
  case MG_U_SOFTPLUS: LOOP1(double, v > 30 ? v : log1p(exp(v))); break;
  case MG_U_SIGN: LOOP1(double, (double)((v > 0) - (v < 0))); break;
  case MG_U_STEP: LOOP1(double, v > 0 ? 1.0 : 0.0); break;
  default: break;
  }
}

/* Binary inner loop with the common stride patterns specialized. */
#define LOOP2(T, EXPR) do {                                                        \
    const T *a = (const T *)p[1], *b = (const T *)p[2]; T *y = (T *)p[0];          \
    int64_t sa = s[1], sb = s[2], sy = s[0];                                       \
    if (sy == 1 && sa == 1 && sb == 1)                                             \
      for (int64_t i = 0; i < n; i++) { T u = a[i], v = b[i]; y[i] = (EXPR); }     \
    else if (sy == 1 && sa == 1 && sb == 0) {                                      \
      T v = b[0]; for (int64_t i = 0; i < n; i++) { T u = a[i]; y[i] = (EXPR); }   \
    } else if (sy == 1 && sa == 0 && sb == 1) {                                    \
      T u = a[0]; for (int64_t i = 0; i < n; i++) { T v = b[i]; y[i] = (EXPR); }   \
    } else                                                                         \
      for (int64_t i = 0; i < n; i++) { T u = a[i * sa], v = b[i * sb]; y[i * sy] = (EXPR); } \
  } while (0)

static void binary_f32(int64_t n, char **p, const int64_t *s, void *ud) {
  switch (*(const mg_binary *)ud) {
  case MG_B_ADD: LOOP2(float, u + v); break;
  case MG_B_SUB: LOOP2(float, u - v); break;
  case MG_B_MUL: LOOP2(float, u * v); break;
  case MG_B_DIV: LOOP2(float, u / v); break;
  case MG_B_POW: LOOP2(float, v == 2.0f ? u * u : powf(u, v)); break;
  case MG_B_MAXIMUM: LOOP2(float, (u >= v || u != u) ? u : v); break;
  case MG_B_MINIMUM: LOOP2(float, (u <= v || u != u) ? u : v); break;
  case MG_B_EQ: LOOP2(float, (float)(u == v)); break;
  case MG_B_NE: LOOP2(float, (float)(u != v)); break;
  case MG_B_LT: LOOP2(float, (float)(u < v)); break;
  case MG_B_LE: LOOP2(float, (float)(u <= v)); break;
  case MG_B_GT: LOOP2(float, (float)(u > v)); break;
  case MG_B_GE: LOOP2(float, (float)(u >= v)); break;
  default: break;
  }
}

static void binary_f64(int64_t n, char **p, const int64_t *s, void *ud) {
  switch (*(const mg_binary *)ud) {
  case MG_B_ADD: LOOP2(double, u + v); break;
  case MG_B_SUB: LOOP2(double, u - v); break;
  case MG_B_MUL: LOOP2(double, u * v); break;
  case MG_B_DIV: LOOP2(double, u / v); break;
  case MG_B_POW: LOOP2(double, v == 2.0 ? u * u : pow(u, v)); break;
  case MG_B_MAXIMUM: LOOP2(double, (u >= v || u != u) ? u : v); break;
  case MG_B_MINIMUM: LOOP2(double, (u <= v || u != u) ? u : v); break;
  case MG_B_EQ: LOOP2(double, (double)(u == v)); break;
  case MG_B_NE: LOOP2(double, (double)(u != v)); break;
  case MG_B_LT: LOOP2(double, (double)(u < v)); break;
  case MG_B_LE: LOOP2(double, (double)(u <= v)); break;
  case MG_B_GT: LOOP2(double, (double)(u > v)); break;
  case MG_B_GE: LOOP2(double, (double)(u >= v)); break;
  default: break;
  }
}

typedef struct { double lo, hi; } bounds;

static void clamp_f32(int64_t n, char **p, const int64_t *s, void *ud) {
  const bounds *b = ud;
  float lo = (float)b->lo, hi = (float)b->hi;
  LOOP1(float, v < lo ? lo : (v > hi ? hi : v));
}
static void clamp_f64(int64_t n, char **p, const int64_t *s, void *ud) {
  const bounds *b = ud;
  LOOP1(double, v < b->lo ? b->lo : (v > b->hi ? b->hi : v));
}

static void where_f32(int64_t n, char **p, const int64_t *s, void *ud) {
  (void)ud;
  float *y = (float *)p[0];
  const float *c = (const float *)p[1], *a = (const float *)p[2], *b = (const float *)p[3];
  for (int64_t i = 0; i < n; i++) y[i * s[0]] = c[i * s[1]] != 0 ? a[i * s[2]] : b[i * s[3]];
}
static void where_f64(int64_t n, char **p, const int64_t *s, void *ud) {
  (void)ud;
  double *y = (double *)p[0];
  const double *c = (const double *)p[1], *a = (const double *)p[2], *b = (const double *)p[3];
  for (int64_t i = 0; i < n; i++) y[i * s[0]] = c[i * s[1]] != 0 ? a[i * s[2]] : b[i * s[3]];
}

/* ================================================================ forward */

/* Each kernel's opcode (-1: not recorded) and name, from the op list. */
static const int unary_opcode[] = {
#define MG_UNARY_OP(kernel, opcode, name) [kernel] = opcode,
#define MG_UNARY_KERNEL(kernel, name) [kernel] = -1,
#include "mg_ops.def"
};
static const int binary_opcode[] = {
#define MG_BINARY_OP(kernel, opcode, name) [kernel] = opcode,
#define MG_BINARY_KERNEL(kernel, name) [kernel] = -1,
#include "mg_ops.def"
};
static const char *const binary_name[] = {
#define MG_BINARY_OP(kernel, opcode, name) [kernel] = name,
#define MG_BINARY_KERNEL(kernel, name) [kernel] = name,
#include "mg_ops.def"
};
_Static_assert(sizeof unary_opcode / sizeof unary_opcode[0] == MG_U_COUNT, "every unary kernel mapped");
_Static_assert(sizeof binary_opcode / sizeof binary_opcode[0] == MG_B_COUNT, "every binary kernel mapped");
_Static_assert(sizeof binary_name / sizeof binary_name[0] == MG_B_COUNT, "every binary kernel named");

/* Run 'fn' with a new contiguous output of 'shape' and the operands 'in' (same dtype). */
static mg_status run_new(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape, int nin,
                         mg_tensor *const *in, mg_loop_fn fn, void *ud, mg_tensor **out) {
  mg_tensor *y = NULL, *ops[MG_MAXOPS];
  mg_status st = mg_tensor_empty(C, dt, ndim, shape, &y);
  if (st != MG_OK) return st;
  ops[0] = y;
  for (int k = 0; k < nin; k++) ops[k + 1] = in[k];
  mg_iter it;
  mg_iter_init(&it, ndim, shape, nin + 1, ops);
  mg_iter_run(&it, fn, ud);
  *out = y;
  return MG_OK;
}

mg_status mg_tensor_unary(mg_ctx *C, mg_unary op, mg_tensor *x, mg_tensor **out) {
  mg_tensor *y = NULL;
  mg_status st = run_new(C, x->dtype, x->ndim, x->shape, 1, &x,
                         x->dtype == MG_F64 ? unary_f64 : unary_f32, &op, &y);
  if (st != MG_OK) return st;
  if (unary_opcode[op] < 0) { *out = y; return MG_OK; }         /* not differentiable */
  return mg_record_result(C, unary_opcode[op], 1, &x, y, NULL, out);
}

/* Promote both operands to a common dtype (casting is recorded). New references. */
static mg_status promote(mg_ctx *C, mg_tensor **a, mg_tensor **b) {
  if ((*a)->dtype == (*b)->dtype) {
    mg_tensor_retain(*a);
    mg_tensor_retain(*b);
    return MG_OK;
  }
  mg_tensor **lo = (*a)->dtype == MG_F32 ? a : b, **hi = lo == a ? b : a, *c = NULL;
  mg_status st = mg_tensor_cast(C, *lo, MG_F64, &c);
  if (st != MG_OK) return st;
  *lo = c;
  mg_tensor_retain(*hi);
  return MG_OK;
}

mg_status mg_tensor_binary(mg_ctx *C, mg_binary op, mg_tensor *a, mg_tensor *b,
                           mg_tensor **out) {
  int64_t shape[MG_MAXDIM];
  int nd;
  if (!mg_broadcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape) || nd > MG_MAXDIM) {
    char s1[96], s2[96];
    return mg_fail(C, MG_ESHAPE, "%s: shapes %s and %s cannot be broadcast", binary_name[op],
                   mg_shapestr(s1, sizeof s1, a->ndim, a->shape),
                   mg_shapestr(s2, sizeof s2, b->ndim, b->shape));
  }
  mg_tensor *in[2] = { a, b }, *y = NULL;
  mg_status st = promote(C, &in[0], &in[1]);
  if (st != MG_OK) return st;
  st = run_new(C, in[0]->dtype, nd, shape, 2, in,
               in[0]->dtype == MG_F64 ? binary_f64 : binary_f32, &op, &y);
  if (st == MG_OK) {
    if (binary_opcode[op] < 0) *out = y;                             /* not differentiable */
    else st = mg_record_result(C, binary_opcode[op], 2, in, y, NULL, out);
  }
  mg_tensor_release(in[0]);
  mg_tensor_release(in[1]);
  return st;
}

mg_status mg_tensor_add_(mg_ctx *C, mg_tensor *dst, mg_tensor *src) {
  if (src->dtype != dst->dtype || !mg_broadcasts_to(src, dst)) {
    char s1[96], s2[96];
    return mg_fail(C, MG_ESHAPE, "add_: %s %s does not broadcast to %s %s",
                   mg_dtype_name(src->dtype), mg_shapestr(s1, sizeof s1, src->ndim, src->shape),
                   mg_dtype_name(dst->dtype), mg_shapestr(s2, sizeof s2, dst->ndim, dst->shape));
  }
  mg_binary op = MG_B_ADD;
  mg_tensor *ops[3] = { dst, dst, src };       /* out aliases the first operand: elementwise */
  mg_iter it;
  mg_iter_init(&it, dst->ndim, dst->shape, 3, ops);
  mg_iter_run(&it, dst->dtype == MG_F64 ? binary_f64 : binary_f32, &op);
  return MG_OK;
}

mg_status mg_tensor_binary_scalar(mg_ctx *C, mg_binary op, mg_tensor *x, double v,
                                  bool scalar_first, mg_tensor **out) {
  mg_tensor *s = NULL;
  mg_status st = mg_tensor_full(C, x->dtype, 0, NULL, v, &s);
  if (st != MG_OK) return st;
  st = scalar_first ? mg_tensor_binary(C, op, s, x, out) : mg_tensor_binary(C, op, x, s, out);
  mg_tensor_release(s);
  return st;
}

mg_status mg_tensor_clamp(mg_ctx *C, mg_tensor *x, double lo, double hi, mg_tensor **out) {
  if (lo > hi) return mg_fail(C, MG_EARG, "clamp: min %g is greater than max %g", lo, hi);
  bounds b = { lo, hi };
  mg_tensor *y = NULL;
  mg_status st = run_new(C, x->dtype, x->ndim, x->shape, 1, &x,
                         x->dtype == MG_F64 ? clamp_f64 : clamp_f32, &b, &y);
  if (st != MG_OK) return st;
  mg_attr at = { .ni = 0, .f = { lo, hi } };
  return mg_record_result(C, MG_OP_CLAMP, 1, &x, y, &at, out);
}

mg_status mg_tensor_where(mg_ctx *C, mg_tensor *cond, mg_tensor *a, mg_tensor *b,
                          mg_tensor **out) {
  int64_t s1[MG_MAXDIM], shape[MG_MAXDIM];
  int n1, nd;
  if (!mg_broadcast_shape(a->ndim, a->shape, b->ndim, b->shape, &n1, s1) ||
      !mg_broadcast_shape(cond->ndim, cond->shape, n1, s1, &nd, shape)) {
    char x1[96], x2[96], x3[96];
    return mg_fail(C, MG_ESHAPE, "where: shapes %s, %s and %s cannot be broadcast",
                   mg_shapestr(x1, sizeof x1, cond->ndim, cond->shape),
                   mg_shapestr(x2, sizeof x2, a->ndim, a->shape),
                   mg_shapestr(x3, sizeof x3, b->ndim, b->shape));
  }
  mg_tensor *in[3] = { cond, a, b }, *c = NULL, *y = NULL;
  mg_status st = promote(C, &in[1], &in[2]);
  if (st != MG_OK) return st;
  if (cond->dtype == in[1]->dtype) c = mg_tensor_retain(cond);
  else {                  /* cond != 0 before the cast: float64 1e-300 is 0 in float32 */
    mg_tensor *nz = NULL;
    mg_no_grad_enter(C);
    if ((st = mg_tensor_binary_scalar(C, MG_B_NE, cond, 0.0, false, &nz)) == MG_OK) {
      st = mg_tensor_cast(C, nz, in[1]->dtype, &c);
      mg_tensor_release(nz);
    }
    mg_no_grad_exit(C);
  }
  if (st == MG_OK) {
    in[0] = c;
    st = run_new(C, in[1]->dtype, nd, shape, 3, in,
                 in[1]->dtype == MG_F64 ? where_f64 : where_f32, NULL, &y);
    if (st == MG_OK) st = mg_record_result(C, MG_OP_WHERE, 3, in, y, NULL, out);
    mg_tensor_release(c);
  }
  mg_tensor_release(in[1]);
  mg_tensor_release(in[2]);
  return st;
}

/* ================================================================ rules */

/* Shorthands for rules: each returns a status and sets a new reference. */
#define UN(op, x, o) mg_tensor_unary(C, (op), (x), (o))
#define BIN(op, a, b, o) mg_tensor_binary(C, (op), (a), (b), (o))
#define BINS(op, a, v, o) mg_tensor_binary_scalar(C, (op), (a), (v), false, (o))

static mg_status clamp_mask(mg_ctx *C, const mg_node *n, mg_tensor **mask);

/* f'(x) of a unary node (clamp's too), as a tensor of x's shape (computed with recorded ops). */
static mg_status unary_deriv(mg_ctx *C, const mg_node *n, mg_tensor **d) {
  mg_tensor *x = n->in[0], *y = n->out[0], *t = NULL;
  mg_status st;
  switch (n->op) {
  case MG_OP_NEG: return mg_tensor_full(C, x->dtype, 0, NULL, -1.0, d);
  case MG_OP_EXP: *d = mg_tensor_retain(y); return MG_OK;
  case MG_OP_LOG: return mg_tensor_binary_scalar(C, MG_B_DIV, x, 1.0, true, d);
  case MG_OP_TANH:                                             /* 1 - y^2 */
    if ((st = BIN(MG_B_MUL, y, y, &t)) != MG_OK) return st;
    st = mg_tensor_binary_scalar(C, MG_B_SUB, t, 1.0, true, d);
    break;
  case MG_OP_SIGMOID:                                          /* y (1 - y) */
    if ((st = mg_tensor_binary_scalar(C, MG_B_SUB, y, 1.0, true, &t)) != MG_OK) return st;
    st = BIN(MG_B_MUL, y, t, d);
    break;
  case MG_OP_RELU: return UN(MG_U_STEP, x, d);                 /* 0 at 0, as TF and PyTorch */
  case MG_OP_ABS: return UN(MG_U_SIGN, x, d);
  case MG_OP_SQRT: return mg_tensor_binary_scalar(C, MG_B_DIV, y, 0.5, true, d);
  case MG_OP_SIN: return UN(MG_U_COS, x, d);
  case MG_OP_COS:
    if ((st = UN(MG_U_SIN, x, &t)) != MG_OK) return st;
    st = UN(MG_U_NEG, t, d);
    break;
  case MG_OP_SOFTPLUS: return UN(MG_U_SIGMOID, x, d);
  case MG_OP_CLAMP: return clamp_mask(C, n, d);
  default: return mg_fail(C, MG_EARG, "internal: not a unary op");
  }
  mg_tensor_release(t);
  return st;
}

/* Elementwise unary (and clamp): both rules multiply by the diagonal f'(x). */
static mg_status unary_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                           const bool *need, mg_tensor **gin) {
  (void)lead;
  if (!need[0] || g[0] == NULL) return MG_OK;
  mg_tensor *d = NULL;
  mg_status st = unary_deriv(C, n, &d);
  if (st != MG_OK) return st;
  st = BIN(MG_B_MUL, g[0], d, &gin[0]);
  mg_tensor_release(d);
  return st;
}

static mg_status unary_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                           mg_tensor **tout) {
  bool need = true;
  return unary_vjp(C, n, lead, t, &need, tout);
}

/* Partial derivatives of a binary node w.r.t. a (k = 0) and b (k = 1), broadcastable to the
** output shape; NULL in *d means "the identity" (no multiplication needed). */
static mg_status binary_partial(mg_ctx *C, const mg_node *n, int k, mg_tensor **d) {
  mg_tensor *a = n->in[0], *b = n->in[1], *y = n->out[0], *t = NULL, *u = NULL;
  mg_status st = MG_OK;
  *d = NULL;
  switch (n->op) {
  case MG_OP_ADD: return MG_OK;
  case MG_OP_SUB: return k == 0 ? MG_OK : mg_tensor_full(C, y->dtype, 0, NULL, -1.0, d);
  case MG_OP_MUL: *d = mg_tensor_retain(k == 0 ? b : a); return MG_OK;
  case MG_OP_DIV:
    if (k == 0) return mg_tensor_binary_scalar(C, MG_B_DIV, b, 1.0, true, d);
    if ((st = BIN(MG_B_DIV, y, b, &t)) != MG_OK) return st;   /* -y / b */
    st = UN(MG_U_NEG, t, d);
    break;
  case MG_OP_POW:
    if (k == 0) {                                             /* b a^(b-1) */
      if ((st = BINS(MG_B_SUB, b, 1.0, &t)) != MG_OK) return st;
      if ((st = BIN(MG_B_POW, a, t, &u)) == MG_OK) st = BIN(MG_B_MUL, b, u, d);
    } else {                                                  /* y log(a) */
      if ((st = UN(MG_U_LOG, a, &t)) != MG_OK) return st;
      st = BIN(MG_B_MUL, y, t, d);
    }
    break;
  case MG_OP_MAXIMUM:                                         /* ties go to a, as TF */
    return BIN(k == 0 ? MG_B_GE : MG_B_LT, a, b, d);
  case MG_OP_MINIMUM:
    return BIN(k == 0 ? MG_B_LE : MG_B_GT, a, b, d);
  default: return mg_fail(C, MG_EARG, "internal: not a binary op");
  }
  mg_tensor_release(t);
  mg_tensor_release(u);
  return st;
}

/* g * d, or g itself when d is the identity (NULL). */
static mg_status times(mg_ctx *C, mg_tensor *g, mg_tensor *d, mg_tensor **out) {
  if (d == NULL) { *out = mg_tensor_retain(g); return MG_OK; }
  return BIN(MG_B_MUL, g, d, out);
}

static mg_status binary_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                            const bool *need, mg_tensor **gin) {
  if (g[0] == NULL) return MG_OK;
  for (int k = 0; k < 2; k++) {
    if (!need[k]) continue;
    mg_tensor *d = NULL, *full = NULL;
    mg_status st = binary_partial(C, n, k, &d);
    if (st != MG_OK) return st;
    st = times(C, g[0], d, &full);
    mg_tensor_release(d);
    if (st != MG_OK) return st;
    st = mg_unbroadcast(C, full, lead, n->in[k]->ndim, n->in[k]->shape, &gin[k]);
    mg_tensor_release(full);
    if (st != MG_OK) return st;
  }
  return MG_OK;
}

/* Sum of tangent contributions, each broadcast to the output's shape. */
static mg_status accumulate(mg_ctx *C, mg_tensor **acc, mg_tensor *term) {
  if (*acc == NULL) { *acc = term; return MG_OK; }
  mg_tensor *s = NULL;
  mg_status st = BIN(MG_B_ADD, *acc, term, &s);
  mg_tensor_release(term);
  mg_tensor_release(*acc);
  *acc = st == MG_OK ? s : NULL;
  return st;
}

static mg_status finish_tangent(mg_ctx *C, const mg_node *n, int lead, mg_tensor *acc,
                                mg_tensor **tout) {
  if (acc == NULL) return MG_OK;
  mg_tensor *y = n->out[0];
  mg_status st = mg_expand_lead(C, acc, lead, y->ndim, y->shape, tout);
  mg_tensor_release(acc);
  return st;
}

static mg_status binary_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                            mg_tensor **tout) {
  mg_tensor *acc = NULL;
  for (int k = 0; k < 2; k++) {
    if (t[k] == NULL) continue;
    mg_tensor *d = NULL, *term = NULL, *tk = NULL;
    mg_status st = mg_align_lead(C, t[k], lead, n->out[0]->ndim, &tk);
    if (st == MG_OK && (st = binary_partial(C, n, k, &d)) == MG_OK) {
      st = times(C, tk, d, &term);
      mg_tensor_release(d);
    }
    mg_tensor_release(tk);
    if (st == MG_OK) st = accumulate(C, &acc, term);
    if (st != MG_OK) { mg_tensor_release(acc); return st; }
  }
  return finish_tangent(C, n, lead, acc, tout);
}

/* clamp: the gradient passes where lo <= x <= hi. */
static mg_status clamp_mask(mg_ctx *C, const mg_node *n, mg_tensor **mask) {
  mg_tensor *x = n->in[0], *a = NULL, *b = NULL;
  mg_status st = BINS(MG_B_GE, x, n->attr.f[0], &a);
  if (st != MG_OK) return st;
  if ((st = BINS(MG_B_LE, x, n->attr.f[1], &b)) == MG_OK) {
    st = BIN(MG_B_MUL, a, b, mask);
    mg_tensor_release(b);
  }
  mg_tensor_release(a);
  return st;
}

/* where: the cotangent goes to a where cond holds, to b elsewhere. */
static mg_status where_part(mg_ctx *C, const mg_node *n, int k, mg_tensor *g, mg_tensor **out) {
  mg_tensor *z = NULL;
  mg_status st = mg_tensor_full(C, g->dtype, 0, NULL, 0.0, &z);
  if (st != MG_OK) return st;
  st = k == 1 ? mg_tensor_where(C, n->in[0], g, z, out) : mg_tensor_where(C, n->in[0], z, g, out);
  mg_tensor_release(z);
  return st;
}

static mg_status where_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                           const bool *need, mg_tensor **gin) {
  if (g[0] == NULL) return MG_OK;
  for (int k = 1; k <= 2; k++) {
    if (!need[k]) continue;
    mg_tensor *full = NULL;
    mg_status st = where_part(C, n, k, g[0], &full);
    if (st != MG_OK) return st;
    st = mg_unbroadcast(C, full, lead, n->in[k]->ndim, n->in[k]->shape, &gin[k]);
    mg_tensor_release(full);
    if (st != MG_OK) return st;
  }
  return MG_OK;
}

static mg_status where_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                           mg_tensor **tout) {
  mg_tensor *acc = NULL, *term = NULL;
  for (int k = 1; k <= 2; k++) {
    if (t[k] == NULL) continue;
    mg_tensor *tk = NULL;
    mg_status st = mg_align_lead(C, t[k], lead, n->out[0]->ndim, &tk);
    if (st == MG_OK) {
      st = where_part(C, n, k, tk, &term);
      mg_tensor_release(tk);
    }
    if (st == MG_OK) st = accumulate(C, &acc, term);
    if (st != MG_OK) { mg_tensor_release(acc); return st; }
  }
  return finish_tangent(C, n, lead, acc, tout);
}

const mg_rules mg_rules_unary = { unary_vjp, unary_jvp };
const mg_rules mg_rules_binary = { binary_vjp, binary_jvp };
const mg_rules mg_rules_where = { where_vjp, where_jvp };
