/*
** elementwise.c - unary and binary math with NumPy broadcasting, clamp and where; each op's
** forward kernel beside its reverse (VJP) and forward (JVP) rule.
*/
#include "mg_impl.h"

#include <math.h>
#include <stdlib.h>

/* ================================================================ kernels */

/* SELU's constants (Klambauer et al. 2017), and their product. */
#define SELU_ALPHA 1.6732632423543772848170429916717
#define SELU_SCALE 1.0507009873554804934193349852946
#define SELU_SA (SELU_SCALE * SELU_ALPHA)
#define SELU_SCALE_F ((float)SELU_SCALE)
#define SELU_SA_F ((float)SELU_SA)

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
  case MG_U_RELU: LOOP1(float, v <= 0 ? 0.0f : v); break;          /* NaN stays NaN */
  case MG_U_ABS: LOOP1(float, fabsf(v)); break;
  case MG_U_SQRT: LOOP1(float, sqrtf(v)); break;
  case MG_U_SIN: LOOP1(float, sinf(v)); break;
  case MG_U_COS: LOOP1(float, cosf(v)); break;
  case MG_U_SOFTPLUS: LOOP1(float, v > 20 ? v : log1pf(expf(v))); break;
  case MG_U_SIGN: LOOP1(float, (float)((v > 0) - (v < 0))); break;
  case MG_U_STEP: LOOP1(float, v <= 0 ? 0.0f : 1.0f); break;
  case MG_U_ERF: LOOP1(float, erff(v)); break;
  case MG_U_ERFC: LOOP1(float, erfcf(v)); break;
  case MG_U_SELU: LOOP1(float, v > 0 ? SELU_SCALE_F * v : SELU_SA_F * expm1f(v)); break;
  case MG_U_SILU: LOOP1(float, v / (1.0f + expf(-v))); break;
  case MG_U_MISH: LOOP1(float, v * tanhf(v > 20 ? v : log1pf(expf(v)))); break;
  case MG_U_SOFTSIGN: LOOP1(float, v / (1.0f + fabsf(v))); break;
  case MG_U_HARD_TANH: LOOP1(float, v < -1 ? -1.0f : (v > 1 ? 1.0f : v)); break;
  case MG_U_RELU6: LOOP1(float, v < 0 ? 0.0f : (v > 6 ? 6.0f : v)); break;
  case MG_U_LOG1P: LOOP1(float, log1pf(v)); break;
  case MG_U_EXPM1: LOOP1(float, expm1f(v)); break;
  case MG_U_TAN: LOOP1(float, tanf(v)); break;
  case MG_U_ATAN: LOOP1(float, atanf(v)); break;
  case MG_U_ASINH: LOOP1(float, asinhf(v)); break;
  case MG_U_SINH: LOOP1(float, sinhf(v)); break;
  case MG_U_COSH: LOOP1(float, coshf(v)); break;
  case MG_U_SQUARE: LOOP1(float, v * v); break;
  case MG_U_RECIPROCAL: LOOP1(float, 1.0f / v); break;
  case MG_U_RSQRT: LOOP1(float, 1.0f / sqrtf(v)); break;
  case MG_U_EXP2: LOOP1(float, exp2f(v)); break;
  case MG_U_LOG2: LOOP1(float, log2f(v)); break;
  case MG_U_LOG10: LOOP1(float, log10f(v)); break;
  case MG_U_FLOOR: LOOP1(float, floorf(v)); break;
  case MG_U_CEIL: LOOP1(float, ceilf(v)); break;
  case MG_U_ROUND: LOOP1(float, nearbyintf(v)); break;     /* half to even: the default mode */
  case MG_U_TRUNC: LOOP1(float, truncf(v)); break;
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
  case MG_U_RELU: LOOP1(double, v <= 0 ? 0.0 : v); break;          /* NaN stays NaN */
  case MG_U_ABS: LOOP1(double, fabs(v)); break;
  case MG_U_SQRT: LOOP1(double, sqrt(v)); break;
  case MG_U_SIN: LOOP1(double, sin(v)); break;
  case MG_U_COS: LOOP1(double, cos(v)); break;
  case MG_U_SOFTPLUS: LOOP1(double, v > 30 ? v : log1p(exp(v))); break;
  case MG_U_SIGN: LOOP1(double, (double)((v > 0) - (v < 0))); break;
  case MG_U_STEP: LOOP1(double, v <= 0 ? 0.0 : 1.0); break;
  case MG_U_ERF: LOOP1(double, erf(v)); break;
  case MG_U_ERFC: LOOP1(double, erfc(v)); break;
  case MG_U_SELU: LOOP1(double, v > 0 ? SELU_SCALE * v : SELU_SA * expm1(v)); break;
  case MG_U_SILU: LOOP1(double, v / (1.0 + exp(-v))); break;
  case MG_U_MISH: LOOP1(double, v * tanh(v > 20 ? v : log1p(exp(v)))); break;
  case MG_U_SOFTSIGN: LOOP1(double, v / (1.0 + fabs(v))); break;
  case MG_U_HARD_TANH: LOOP1(double, v < -1 ? -1.0 : (v > 1 ? 1.0 : v)); break;
  case MG_U_RELU6: LOOP1(double, v < 0 ? 0.0 : (v > 6 ? 6.0 : v)); break;
  case MG_U_LOG1P: LOOP1(double, log1p(v)); break;
  case MG_U_EXPM1: LOOP1(double, expm1(v)); break;
  case MG_U_TAN: LOOP1(double, tan(v)); break;
  case MG_U_ATAN: LOOP1(double, atan(v)); break;
  case MG_U_ASINH: LOOP1(double, asinh(v)); break;
  case MG_U_SINH: LOOP1(double, sinh(v)); break;
  case MG_U_COSH: LOOP1(double, cosh(v)); break;
  case MG_U_SQUARE: LOOP1(double, v * v); break;
  case MG_U_RECIPROCAL: LOOP1(double, 1.0 / v); break;
  case MG_U_RSQRT: LOOP1(double, 1.0 / sqrt(v)); break;
  case MG_U_EXP2: LOOP1(double, exp2(v)); break;
  case MG_U_LOG2: LOOP1(double, log2(v)); break;
  case MG_U_LOG10: LOOP1(double, log10(v)); break;
  case MG_U_FLOOR: LOOP1(double, floor(v)); break;
  case MG_U_CEIL: LOOP1(double, ceil(v)); break;
  case MG_U_ROUND: LOOP1(double, nearbyint(v)); break;     /* half to even: the default mode */
  case MG_U_TRUNC: LOOP1(double, trunc(v)); break;
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
static const char *const unary_name[] = {
#define MG_UNARY_OP(kernel, opcode, name) [kernel] = name,
#define MG_UNARY_KERNEL(kernel, name) [kernel] = name,
#include "mg_ops.def"
};
static const char *const binary_name[] = {
#define MG_BINARY_OP(kernel, opcode, name) [kernel] = name,
#define MG_BINARY_KERNEL(kernel, name) [kernel] = name,
#include "mg_ops.def"
};
_Static_assert(sizeof unary_opcode / sizeof unary_opcode[0] == MG_U_COUNT, "every unary kernel mapped");
_Static_assert(sizeof binary_opcode / sizeof binary_opcode[0] == MG_B_COUNT, "every binary kernel mapped");
_Static_assert(sizeof unary_name / sizeof unary_name[0] == MG_U_COUNT, "every unary kernel named");
_Static_assert(sizeof binary_name / sizeof binary_name[0] == MG_B_COUNT, "every binary kernel named");

/* A kernel over an iteration, as a body of mg_parallel_for (each element computed the same
** way whichever thread computes it). */
typedef struct ranged { mg_iter it; mg_loop_fn fn; void *ud; } ranged;

static void run_range(void *arg, int64_t lo, int64_t hi) {
  const ranged *r = arg;
  mg_iter_run_range(&r->it, lo, hi, r->fn, r->ud);
}

/* The element count when every operand in 'in' (each of dtype size as the output) has exactly
** 'shape' and is contiguous, so that element i of each is at its data pointer + i: else -1. */
static int64_t dense_numel(int ndim, const int64_t *shape, int nin, mg_tensor *const *in) {
  int64_t n = 1;
  for (int d = ndim - 1; d >= 0; d--) {
    for (int k = 0; k < nin; k++)
      if (in[k]->ndim != ndim || in[k]->shape[d] != shape[d] ||
          (shape[d] != 1 && in[k]->stride[d] != n)) return -1;
    n *= shape[d];
  }
  return n;
}

/* Run 'fn' with a new contiguous output of 'shape' and the operands 'in' (same dtype); op
** 'name' stops with "<name>: interrupted!" when the host's flag is set (output freed). */
static mg_status run_new(mg_ctx *C, const char *name, mg_dtype dt, int ndim,
                         const int64_t *shape, int nin, mg_tensor *const *in, mg_loop_fn fn,
                         void *ud, mg_tensor **out) {
  mg_tensor *y = NULL, *ops[MG_MAXOPS];
  mg_status st = mg_tensor_empty(C, dt, ndim, shape, &y);
  if (st != MG_OK) return st;
  int64_t n = dense_numel(ndim, shape, nin, in);
  if (n >= 0 && n <= MG_POLL_ELEMS) {      /* one call over the buffers: no iterator, no poll */
    char *p[MG_MAXOPS];
    int64_t s[MG_MAXOPS] = { 1, 1, 1, 1 };
    p[0] = y->storage->data;
    for (int k = 0; k < nin; k++)
      p[k + 1] = (char *)in[k]->storage->data + in[k]->offset * (int64_t)mg_dtsize(dt);
    fn(n, p, s, ud);
    *out = y;
    return MG_OK;
  }
  ops[0] = y;
  for (int k = 0; k < nin; k++) ops[k + 1] = in[k];
  ranged r = { .fn = fn, .ud = ud };
  mg_iter_init(&r.it, ndim, shape, nin + 1, ops);
  if ((st = mg_parallel_for(C, name, mg_iter_numel(&r.it), MG_PAR_GRAIN, run_range, &r)) != MG_OK) {
    mg_tensor_release(y);
    return st;
  }
  *out = y;
  return MG_OK;
}

mg_status mg_tensor_unary(mg_ctx *C, mg_unary op, mg_tensor *x, mg_tensor **out) {
  mg_tensor *y = NULL;
  mg_status st = run_new(C, unary_name[op], x->dtype, x->ndim, x->shape, 1, &x,
                         x->dtype == MG_F64 ? unary_f64 : unary_f32, &op, &y);
  if (st != MG_OK) return mg_name_error(C, st, unary_name[op]);
  if (unary_opcode[op] < 0) { *out = y; return MG_OK; }         /* not differentiable */
  return mg_record_result(C, unary_opcode[op], 1, &x, y, NULL, out);
}

/* Promote operands of two dtypes to float64 (casting is recorded). New references. */
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

/* The element count when 'a' and 'b' have one dtype and one shape and both are dense (element
** i at data + i: contiguous, any stride along a size-1 dim), at most MG_POLL_ELEMS; else -1. */
static int64_t dense_pair(const mg_tensor *a, const mg_tensor *b) {
  if (a->dtype != b->dtype || a->ndim != b->ndim) return -1;
  int64_t n = 1;
  for (int d = a->ndim - 1; d >= 0; d--) {
    int64_t m = a->shape[d];
    if (b->shape[d] != m || (m != 1 && (a->stride[d] != n || b->stride[d] != n))) return -1;
    n *= m;
  }
  return n <= MG_POLL_ELEMS ? n : -1;
}

/* The common case, 'a' and 'b' as dense_pair found them ('n' elements): one kernel call over
** the buffers into a new tensor, with no broadcast shape, cast, iterator or poll. */
static mg_status binary_dense(mg_ctx *C, mg_binary op, mg_tensor *a, mg_tensor *b, int64_t n,
                              mg_tensor **y) {
  mg_status st = mg_tensor_empty_n(C, a->dtype, a->ndim, a->shape, n, y);
  if (st != MG_OK) return st;
  size_t es = mg_dtsize(a->dtype);
  char *p[3] = { (*y)->storage->data, (char *)a->storage->data + a->offset * (int64_t)es,
                 (char *)b->storage->data + b->offset * (int64_t)es };
  static const int64_t unit[3] = { 1, 1, 1 };
  (a->dtype == MG_F64 ? binary_f64 : binary_f32)(n, p, unit, &op);
  return MG_OK;
}

/* Any other operands: broadcast, cast to float64 when the dtypes differ ('in' then holds new
** references and '*cast' is set), strided. */
static mg_status binary_general(mg_ctx *C, mg_binary op, mg_tensor **in, bool *cast,
                                mg_tensor **y) {
  mg_tensor *a = in[0], *b = in[1];
  int64_t shape[MG_MAXDIM];
  const int64_t *sh = shape;
  int nd = a->ndim, same = a->ndim == b->ndim;
  for (int d = 0; same && d < nd; d++) same = a->shape[d] == b->shape[d];
  if (same) sh = a->shape;                 /* nothing to broadcast */
  else if (!mg_broadcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape) || nd > MG_MAXDIM) {
    char s1[96], s2[96];
    return mg_fail(C, MG_ESHAPE, "%s: shapes %s and %s cannot be broadcast", binary_name[op],
                   mg_shapestr(s1, sizeof s1, a->ndim, a->shape),
                   mg_shapestr(s2, sizeof s2, b->ndim, b->shape));
  }
  if (a->dtype != b->dtype) {
    mg_status st = promote(C, &in[0], &in[1]);
    if (st != MG_OK) return st;
    *cast = true;
  }
  return run_new(C, binary_name[op], in[0]->dtype, nd, sh, 2, in,
                 in[0]->dtype == MG_F64 ? binary_f64 : binary_f32, &op, y);
}

mg_status mg_tensor_binary(mg_ctx *C, mg_binary op, mg_tensor *a, mg_tensor *b,
                           mg_tensor **out) {
  mg_tensor *in[2] = { a, b }, *y = NULL;
  bool cast = false;
  int64_t n = dense_pair(a, b);
  mg_status st = n >= 0 ? binary_dense(C, op, a, b, n, &y) : binary_general(C, op, in, &cast, &y);
  if (st == MG_OK) {
    if (binary_opcode[op] < 0 || !mg_recording(C)) *out = y;        /* nothing to record */
    else st = mg_record_result(C, binary_opcode[op], 2, in, y, NULL, out);
  }
  if (cast) {
    mg_tensor_release(in[0]);
    mg_tensor_release(in[1]);
  }
  return st == MG_OK ? st : mg_name_error(C, st, binary_name[op]);
}

/* ---------------------------------------------------------------- placed results */

#define PLACED_MAX 256   /* most data bytes of a placed result */

/* Bytes of a placed result of 'n' elements of dtype 'dt' (dense_pair's answer: -1 is none). */
static size_t placed_size(mg_dtype dt, int64_t n) {
  size_t bytes = (size_t)n * mg_dtsize(dt);
  if (n < 0 || bytes > PLACED_MAX) return 0;
  return sizeof(mg_tensor) + sizeof(mg_storage) + bytes;
}

size_t mg_tensor_binary_placed_size(const mg_ctx *C, mg_binary op, const mg_tensor *a,
                                    const mg_tensor *b) {
  if (binary_opcode[op] >= 0 && mg_recording(C)) return 0;
  return placed_size(a->dtype, dense_pair(a, b ? b : a));
}

size_t mg_tensor_unary_placed_size(const mg_ctx *C, mg_unary op, const mg_tensor *x) {
  if (unary_opcode[op] >= 0 && mg_recording(C)) return 0;
  return placed_size(x->dtype, dense_pair(x, x));
}

/* A tensor shaped as 'x' placed at 'mem' (the header, then the storage, then the data),
** contiguous, its element count in '*n'. The strides and, below, 'first' are tensor.c's
** mg_contiguous_strides and mg_tensor_data written out here: calling them across files made
** the unrecorded add 0.094 -> 0.103 us. */
static mg_tensor *place_like(const mg_tensor *x, void *mem, int64_t *n) {
  mg_tensor *t = mem;
  mg_storage *s = (mg_storage *)(t + 1);
  int64_t step = 1, m = 1;                  /* the shape, contiguous strides and size */
  for (int d = x->ndim - 1; d >= 0; d--) {
    int64_t k = x->shape[d];
    t->shape[d] = k;
    t->stride[d] = step;
    step *= k > 0 ? k : 1;
    m *= k;
  }
  *s = (mg_storage){ .refs = 1, .data = s + 1, .nbytes = (size_t)m * mg_dtsize(x->dtype) };
  t->refs = 1;
  t->dtype = x->dtype;
  t->ndim = x->ndim;
  t->flags = MG_TF_PLACED;
  t->blind = 0;
  t->offset = 0;
  t->storage = s;
  t->name = NULL;
  *n = m;
  return t;
}

/* Address of element (0,...,0) of 'x'. */
static char *first(const mg_tensor *x) {
  return (char *)x->storage->data + x->offset * (int64_t)mg_dtsize(x->dtype);
}

/* binary_dense's work without the pool; with a NULL 'b' the scalar 'v' (in the dtype of 'a',
** as mg_tensor_binary_scalar's 0-d tensor holds it) is the operand on the side 'vfirst' says. */
static mg_tensor *binary_placed(mg_binary op, const mg_tensor *a, const mg_tensor *b, double v,
                                bool vfirst, void *mem) {
  int64_t n;
  mg_tensor *t = place_like(a, mem, &n);
  float vf = (float)v;
  char *vp = a->dtype == MG_F64 ? (char *)&v : (char *)&vf;
  char *p[3] = { t->storage->data, first(a), b ? first(b) : vp };
  int64_t st[3] = { 1, 1, b ? 1 : 0 };
  if (vfirst) {
    p[2] = p[1];
    p[1] = vp;
    st[1] = 0;
    st[2] = 1;
  }
  (a->dtype == MG_F64 ? binary_f64 : binary_f32)(n, p, st, &op);
  return t;
}

mg_tensor *mg_tensor_binary_placed(mg_ctx *C, mg_binary op, const mg_tensor *a,
                                   const mg_tensor *b, void *mem) {
  (void)C;
  return binary_placed(op, a, b, 0, false, mem);
}

mg_tensor *mg_tensor_binary_scalar_placed(mg_ctx *C, mg_binary op, const mg_tensor *x, double v,
                                          bool scalar_first, void *mem) {
  (void)C;
  return binary_placed(op, x, NULL, v, scalar_first, mem);
}

mg_tensor *mg_tensor_unary_placed(mg_ctx *C, mg_unary op, const mg_tensor *x, void *mem) {
  (void)C;
  int64_t n;
  mg_tensor *t = place_like(x, mem, &n);
  char *p[2] = { t->storage->data, first(x) };
  static const int64_t unit[2] = { 1, 1 };
  (x->dtype == MG_F64 ? unary_f64 : unary_f32)(n, p, unit, &op);
  return t;
}

mg_status mg_tensor_unplace(mg_ctx *C, const mg_tensor *t, mg_tensor **out) {
  mg_tensor *y = NULL;
  mg_status st = mg_tensor_empty_n(C, t->dtype, t->ndim, t->shape,
                                   (int64_t)(t->storage->nbytes / mg_dtsize(t->dtype)), &y);
  if (st != MG_OK) return st;
  memcpy(y->storage->data, t->storage->data, t->storage->nbytes);
  *out = y;
  return MG_OK;
}

mg_status mg_tensor_add_(mg_ctx *C, mg_tensor *dst, mg_tensor *src) {
  if (src->dtype != dst->dtype || !mg_broadcasts_to(src, dst)) {
    char s1[96], s2[96];
    return mg_fail(C, MG_ESHAPE, "add_: %s %s does not broadcast to %s %s",
                   mg_dtype_name(src->dtype), mg_shapestr(s1, sizeof s1, src->ndim, src->shape),
                   mg_dtype_name(dst->dtype), mg_shapestr(s2, sizeof s2, dst->ndim, dst->shape));
  }
  mg_binary op = MG_B_ADD;
  mg_tensor *ops[3] = { dst, dst, src };
  mg_bump_version(dst);       /* out aliases the first operand: elementwise */
  ranged r = { .fn = dst->dtype == MG_F64 ? binary_f64 : binary_f32, .ud = &op };
  mg_iter_init(&r.it, dst->ndim, dst->shape, 3, ops);
  return mg_parallel_for(C, NULL, mg_iter_numel(&r.it), MG_PAR_GRAIN, run_range, &r);
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
  mg_status st = run_new(C, "clamp", x->dtype, x->ndim, x->shape, 1, &x,
                         x->dtype == MG_F64 ? clamp_f64 : clamp_f32, &b, &y);
  if (st != MG_OK) return mg_name_error(C, st, "clamp");
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
    st = run_new(C, "where", in[1]->dtype, nd, shape, 3, in,
                 in[1]->dtype == MG_F64 ? where_f64 : where_f32, NULL, &y);
    if (st == MG_OK) st = mg_record_result(C, MG_OP_WHERE, 3, in, y, NULL, out);
    mg_tensor_release(c);
  }
  mg_tensor_release(in[1]);
  mg_tensor_release(in[2]);
  return mg_name_error(C, st, "where");
}

/* ---------------------------------------------------------------- with a parameter */

/* The parametric kernels: which op, its parameter (alpha, slope), gelu's tanh form and
** hard_sigmoid's Keras version in 'v'. */
typedef struct pparam { int op; double a; int v; } pparam;

#define GELU_K 0.7978845608028654              /* sqrt(2 / pi) */
#define GELU_C 0.044715

static double param_f64(const pparam *q, double v) {
  switch (q->op) {
  case MG_OP_ELU: return v > 0 ? v : q->a * expm1(v);
  case MG_OP_CELU: return v > 0 ? v : q->a * expm1(v / q->a);
  case MG_OP_LEAKY_RELU: return v > 0 ? v : q->a * v;
  case MG_OP_GELU:
    if (q->v) return 0.5 * v * (1 + tanh(GELU_K * (v + GELU_C * v * v * v)));
    return 0.5 * v * (1 + erf(v * M_SQRT1_2));
  default: {                                    /* hard_sigmoid: clip(a x + 1/2, 0, 1) */
    double t = q->v == 3 ? (v + 3) / 6 : 0.2 * v + 0.5;
    return t < 0 ? 0 : (t > 1 ? 1 : t);
  }
  }
}

static float param_f32(const pparam *q, float v) {
  float a = (float)q->a;
  switch (q->op) {
  case MG_OP_ELU: return v > 0 ? v : a * expm1f(v);
  case MG_OP_CELU: return v > 0 ? v : a * expm1f(v / a);
  case MG_OP_LEAKY_RELU: return v > 0 ? v : a * v;
  case MG_OP_GELU:
    if (q->v) return 0.5f * v * (1 + tanhf((float)GELU_K * (v + (float)GELU_C * v * v * v)));
    return 0.5f * v * (1 + erff(v * (float)M_SQRT1_2));
  default: {
    float t = q->v == 3 ? (v + 3) / 6 : 0.2f * v + 0.5f;
    return t < 0 ? 0 : (t > 1 ? 1 : t);
  }
  }
}

static void param_loop_f32(int64_t n, char **p, const int64_t *s, void *ud) {
  LOOP1(float, param_f32(ud, v));
}
static void param_loop_f64(int64_t n, char **p, const int64_t *s, void *ud) {
  LOOP1(double, param_f64(ud, v));
}

/* Run parametric op 'op' on 'x', recording 'a' in attr.f[0] and 'v' in attr.i[0]. */
static mg_status unary_param(mg_ctx *C, int op, mg_tensor *x, double a, int v,
                             mg_tensor **out) {
  pparam q = { op, a, v };
  mg_tensor *y = NULL;
  mg_status st = run_new(C, mg_ops[op].name, x->dtype, x->ndim, x->shape, 1, &x,
                         x->dtype == MG_F64 ? param_loop_f64 : param_loop_f32, &q, &y);
  if (st != MG_OK) return mg_name_error(C, st, mg_ops[op].name);
  mg_attr at = { .ni = 1, .i = { v }, .f = { a, 0 } };
  return mg_record_result(C, op, 1, &x, y, &at, out);
}

mg_status mg_tensor_elu(mg_ctx *C, mg_tensor *x, double alpha, mg_tensor **out) {
  return unary_param(C, MG_OP_ELU, x, alpha, 0, out);
}

mg_status mg_tensor_celu(mg_ctx *C, mg_tensor *x, double alpha, mg_tensor **out) {
  if (alpha == 0) return mg_fail(C, MG_EARG, "celu: alpha must not be 0");
  return unary_param(C, MG_OP_CELU, x, alpha, 0, out);
}

mg_status mg_tensor_leaky_relu(mg_ctx *C, mg_tensor *x, double alpha, mg_tensor **out) {
  return unary_param(C, MG_OP_LEAKY_RELU, x, alpha, 0, out);
}

mg_status mg_tensor_gelu(mg_ctx *C, mg_tensor *x, bool tanh_form, mg_tensor **out) {
  return unary_param(C, MG_OP_GELU, x, 0, tanh_form, out);
}

mg_status mg_tensor_hard_sigmoid(mg_ctx *C, mg_tensor *x, int keras, mg_tensor **out) {
  if (keras != 2 && keras != 3)
    return mg_fail(C, MG_EARG, "hard_sigmoid: Keras version must be 2 or 3, got %d", keras);
  return unary_param(C, MG_OP_HARD_SIGMOID, x, keras == 3 ? 1.0 / 6 : 0.2, keras, out);
}

/* ================================================================ rules */

/* Shorthands for rules: each returns a status and sets a new reference. */
#define UN(op, x, o) mg_tensor_unary(C, (op), (x), (o))
#define BIN(op, a, b, o) mg_tensor_binary(C, (op), (a), (b), (o))
#define BINS(op, a, v, o) mg_tensor_binary_scalar(C, (op), (a), (v), false, (o))

static mg_status more_deriv(mg_ctx *C, const mg_node *n, mg_tensor **d);
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
  case MG_OP_RELU: return UN(MG_U_STEP, x, d);     /* 0 at 0, 1 at NaN, as PyTorch */
  case MG_OP_ABS: return UN(MG_U_SIGN, x, d);
  case MG_OP_SQRT: return mg_tensor_binary_scalar(C, MG_B_DIV, y, 0.5, true, d);
  case MG_OP_SIN: return UN(MG_U_COS, x, d);
  case MG_OP_COS:
    if ((st = UN(MG_U_SIN, x, &t)) != MG_OK) return st;
    st = UN(MG_U_NEG, t, d);
    break;
  case MG_OP_SOFTPLUS: return UN(MG_U_SIGMOID, x, d);
  case MG_OP_CLAMP: return clamp_mask(C, n, d);
  default: return more_deriv(C, n, d);
  }
  mg_tensor_release(t);
  return st;
}

static bool zero_gradient(int op);
static mg_status zeros_like_lead(mg_ctx *C, const mg_node *n, int lead, mg_tensor *g,
                                 mg_tensor **out);

/* Elementwise unary (and clamp): both rules multiply by the diagonal f'(x). */
static mg_status unary_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                           const bool *need, mg_tensor **gin) {
  if (!need[0] || g[0] == NULL) return MG_OK;
  if (zero_gradient(n->op)) return zeros_like_lead(C, n, lead, g[0], &gin[0]);
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

/* PyTorch's edges of pow's partials: d(a^b)/da is 0 where b = 0 (a^0 is the constant 1, even
** at a = 0 where b a^(b-1) is 0 * inf), d(a^b)/db is 0 where a = 0 and b >= 0 (not 0 * log 0).
** There the partial is computed at a = 1 instead, where it is 0 (b 1^(b-1) with b = 0,
** y log 1), with every derivative of it finite: a new reference to 'a' or where(edge, 1, a). */
static mg_status pow_base(mg_ctx *C, mg_tensor *a, mg_tensor *b, int k, mg_tensor **as) {
  if (!mg_any_equal(k == 0 ? b : a, 0.0)) { *as = mg_tensor_retain(a); return MG_OK; }
  mg_tensor *c = NULL, *c1 = NULL, *c2 = NULL, *one = NULL;
  mg_no_grad_enter(C);                                        /* the mask is a constant */
  mg_status st = BINS(MG_B_EQ, k == 0 ? b : a, 0.0, &c1);
  if (st == MG_OK && k == 1 && (st = BINS(MG_B_GE, b, 0.0, &c2)) == MG_OK) st = BIN(MG_B_MUL, c1, c2, &c);
  else if (st == MG_OK && k == 0) c = mg_tensor_retain(c1);
  mg_no_grad_exit(C);
  if (st == MG_OK) st = mg_tensor_full(C, a->dtype, 0, NULL, 1.0, &one);
  if (st == MG_OK) st = mg_tensor_where(C, c, one, a, as);
  mg_tensor_release(c); mg_tensor_release(c1); mg_tensor_release(c2); mg_tensor_release(one);
  return st;
}

/* maximum/minimum, as PyTorch: at a tie each side gets half; otherwise the larger (smaller)
** side all of it, and where a comparison is false both ways (NaN) both sides get all of it.
** For side k: 1 - (k loses) - 0.5 (tie), a constant mask. */
static mg_status extreme_partial(mg_ctx *C, bool is_max, mg_tensor *a, mg_tensor *b, int k,
                                 mg_tensor **d) {
  mg_tensor *lose = NULL, *tie = NULL, *half = NULL, *s = NULL;
  mg_binary loses = (is_max == (k == 0)) ? MG_B_LT : MG_B_GT;   /* a < b: a loses a max */
  mg_no_grad_enter(C);
  mg_status st = BIN(loses, a, b, &lose);
  if (st == MG_OK) st = BIN(MG_B_EQ, a, b, &tie);
  if (st == MG_OK) st = BINS(MG_B_MUL, tie, 0.5, &half);
  if (st == MG_OK) st = BIN(MG_B_ADD, lose, half, &s);
  if (st == MG_OK) st = mg_tensor_binary_scalar(C, MG_B_SUB, s, 1.0, true, d);
  mg_no_grad_exit(C);
  mg_tensor_release(lose); mg_tensor_release(tie); mg_tensor_release(half); mg_tensor_release(s);
  return st;
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
  case MG_OP_POW: {
    mg_tensor *as;                                            /* a, or 1 at the edges */
    if ((st = pow_base(C, a, b, k, &as)) != MG_OK) return st;
    if (k == 0) {                                             /* b a^(b-1), 0 where b = 0 */
      if ((st = BINS(MG_B_SUB, b, 1.0, &t)) == MG_OK && (st = BIN(MG_B_POW, as, t, &u)) == MG_OK)
        st = BIN(MG_B_MUL, b, u, d);
    } else if ((st = UN(MG_U_LOG, as, &t)) == MG_OK) {        /* y log(a), 0 where a = 0 <= b */
      st = BIN(MG_B_MUL, y, t, d);
    }
    mg_tensor_release(as);
    break;
  }
  case MG_OP_MAXIMUM: case MG_OP_MINIMUM:
    return extreme_partial(C, n->op == MG_OP_MAXIMUM, a, b, k, d);
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

/* What unary_deriv (and clamp's mask) reads, per op; ops not named read x and y. */
static unsigned unary_unread(int op) {
  switch (op) {
  case MG_OP_NEG: return MG_UNREAD_ALL;                        /* f' = -1 */
  case MG_OP_EXP: case MG_OP_TANH: case MG_OP_SIGMOID: case MG_OP_SQRT:
    return MG_UNREAD_INS;                                      /* f' from y */
  case MG_OP_LOG: case MG_OP_RELU: case MG_OP_ABS: case MG_OP_SIN: case MG_OP_COS:
  case MG_OP_SOFTPLUS: case MG_OP_CLAMP:
    return MG_UNREAD_OUT;                                      /* f' from x */
  default: return 0;
  }
}

/* What binary_vjp and binary_jvp read, per op; ops not named read a, b and y. */
static unsigned binary_unread(int op) {
  switch (op) {
  case MG_OP_ADD: case MG_OP_SUB: return MG_UNREAD_ALL;
  case MG_OP_MUL: case MG_OP_MAXIMUM: case MG_OP_MINIMUM: return MG_UNREAD_OUT;
  case MG_OP_DIV: return MG_UNREAD_IN0;                        /* 1/b and -y/b */
  default: return 0;
  }
}

const mg_rules mg_rules_unary = { .vjp = unary_vjp, .jvp = unary_jvp, .unread_op = unary_unread };
const mg_rules mg_rules_binary = { .vjp = binary_vjp, .jvp = binary_jvp, .unread_op = binary_unread };
const mg_rules mg_rules_where = { .vjp = where_vjp, .jvp = where_jvp,       /* the condition only */
                                  .unread = MG_UNREAD_IN1 | MG_UNREAD_IN2 | MG_UNREAD_OUT };

/* ================================================================ issue 12: derivatives */

/* floor, ceil, round, trunc and sign: piecewise constant, a zero gradient (as PyTorch). */
static bool zero_gradient(int op) {
  return op == MG_OP_SIGN || op == MG_OP_FLOOR || op == MG_OP_CEIL || op == MG_OP_ROUND ||
         op == MG_OP_TRUNC;
}

/* Zeros shaped lead dims of 'g' .. the node's input shape (a cotangent or tangent). */
static mg_status zeros_like_lead(mg_ctx *C, const mg_node *n, int lead, mg_tensor *g,
                                 mg_tensor **out) {
  int64_t sh[MG_MAXDIM];
  int nd = mg_lead_shape(g, lead, n->in[0]->ndim, n->in[0]->shape, sh);
  return mg_tensor_zeros(C, n->in[0]->dtype, nd, sh, out);
}

#define SQRT_2_PI 1.1283791670955126          /* 2 / sqrt(pi) */
#define INV_SQRT_2PI 0.3989422804014327       /* 1 / sqrt(2 pi) */

/* 1 where lo < x < hi, else 0 (a constant: the hard ops' gradient is 0 at their kinks, as
** PyTorch's). */
static mg_tensor *open_interval(mg_ex *e, mg_tensor *x, double lo, double hi) {
  return mg_ex_mul(e, mg_ex_bins(e, MG_B_GT, x, lo), mg_ex_bins(e, MG_B_LT, x, hi));
}

/* f'(x) of the issue-12 math functions (recording ops); *known false if not one. */
static mg_tensor *math_deriv(mg_ex *e, const mg_node *n, bool *known) {
  mg_tensor *x = n->in[0], *y = n->out[0], *r = NULL;
  switch (n->op) {
  case MG_OP_ERF: case MG_OP_ERFC:                 /* +-2/sqrt(pi) exp(-x^2) */
    r = mg_ex_bins(e, MG_B_MUL, mg_ex_unary(e, MG_U_EXP, mg_ex_unary(e, MG_U_NEG, mg_ex_mul(e, x, x))),
                   n->op == MG_OP_ERF ? SQRT_2_PI : -SQRT_2_PI);
    break;
  case MG_OP_LOG1P: r = mg_ex_sbin(e, MG_B_DIV, 1, mg_ex_bins(e, MG_B_ADD, x, 1)); break;
  case MG_OP_EXPM1: r = mg_ex_bins(e, MG_B_ADD, y, 1); break;
  case MG_OP_TAN: r = mg_ex_bins(e, MG_B_ADD, mg_ex_mul(e, y, y), 1); break;
  case MG_OP_ATAN: r = mg_ex_sbin(e, MG_B_DIV, 1, mg_ex_bins(e, MG_B_ADD, mg_ex_mul(e, x, x), 1)); break;
  case MG_OP_ASINH:
    r = mg_ex_unary(e, MG_U_RSQRT, mg_ex_bins(e, MG_B_ADD, mg_ex_mul(e, x, x), 1));
    break;
  case MG_OP_SINH: r = mg_ex_unary(e, MG_U_COSH, x); break;
  case MG_OP_COSH: r = mg_ex_unary(e, MG_U_SINH, x); break;
  case MG_OP_SQUARE: r = mg_ex_bins(e, MG_B_MUL, x, 2); break;
  case MG_OP_RECIPROCAL: r = mg_ex_unary(e, MG_U_NEG, mg_ex_mul(e, y, y)); break;
  case MG_OP_RSQRT: r = mg_ex_bins(e, MG_B_MUL, mg_ex_mul(e, y, mg_ex_mul(e, y, y)), -0.5); break;
  case MG_OP_EXP2: r = mg_ex_bins(e, MG_B_MUL, y, M_LN2); break;
  case MG_OP_LOG2: r = mg_ex_sbin(e, MG_B_DIV, 1 / M_LN2, x); break;
  case MG_OP_LOG10: r = mg_ex_sbin(e, MG_B_DIV, 1 / M_LN10, x); break;
  default: *known = false; break;
  }
  return r;
}

/* The derivative of the exponential-linear units: 'pos' for x > 0, 'neg' (an expression in
** y) for x < 0, and the constant 'at0' at 0: PyTorch's values there in both orders (the
** first derivative is the left-hand one, the second 0, as elu_double_backward's x < 0). */
static mg_tensor *exp_branch(mg_ex *e, mg_tensor *x, double pos, mg_tensor *neg, double at0) {
  mg_tensor *left = mg_ex_where(e, mg_ex_bins(e, MG_B_LT, x, 0), neg, mg_ex_full(e, x->dtype, at0));
  return mg_ex_where(e, mg_ex_bins(e, MG_B_GT, x, 0), mg_ex_full(e, x->dtype, pos), left);
}

/* f'(x) of the issue-12 activations, parametric ones reading n->attr. */
static mg_tensor *activation_deriv(mg_ex *e, const mg_node *n, bool *known) {
  mg_tensor *x = n->in[0], *y = n->out[0], *r = NULL;
  double a = n->attr.f[0];
  switch (n->op) {
  case MG_OP_SELU:                                 /* scale, or y + scale alpha */
    r = exp_branch(e, x, SELU_SCALE, mg_ex_bins(e, MG_B_ADD, y, SELU_SA), SELU_SA);
    break;
  case MG_OP_SILU: {                               /* s + y (1 - s) */
    mg_tensor *s = mg_ex_unary(e, MG_U_SIGMOID, x);
    r = mg_ex_add(e, s, mg_ex_mul(e, y, mg_ex_rsub(e, 1, s)));
    break;
  }
  case MG_OP_MISH: {                               /* t + x (1 - t^2) sigmoid(x) */
    mg_tensor *t = mg_ex_unary(e, MG_U_TANH, mg_ex_unary(e, MG_U_SOFTPLUS, x));
    r = mg_ex_add(e, t, mg_ex_mul(e, mg_ex_mul(e, x, mg_ex_rsub(e, 1, mg_ex_mul(e, t, t))),
                                  mg_ex_unary(e, MG_U_SIGMOID, x)));
    break;
  }
  case MG_OP_SOFTSIGN: {                           /* 1 / (1 + |x|)^2 */
    mg_tensor *u = mg_ex_bins(e, MG_B_ADD, mg_ex_unary(e, MG_U_ABS, x), 1);
    r = mg_ex_sbin(e, MG_B_DIV, 1, mg_ex_mul(e, u, u));
    break;
  }
  case MG_OP_HARD_TANH: r = open_interval(e, x, -1, 1); break;
  case MG_OP_RELU6: r = open_interval(e, x, 0, 6); break;
  case MG_OP_ELU:                                  /* 1, or y + alpha (alpha e^x) */
    r = exp_branch(e, x, 1, mg_ex_bins(e, MG_B_ADD, y, a), a);
    break;
  case MG_OP_CELU:                                 /* 1, or y / alpha + 1 (e^(x/alpha)) */
    r = exp_branch(e, x, 1, mg_ex_bins(e, MG_B_ADD, mg_ex_bins(e, MG_B_DIV, y, a), 1), 1);
    break;
  case MG_OP_LEAKY_RELU:                           /* alpha at 0, as PyTorch */
    r = mg_ex_where(e, mg_ex_bins(e, MG_B_GT, x, 0), mg_ex_full(e, x->dtype, 1),
                    mg_ex_full(e, x->dtype, a));
    break;
  case MG_OP_GELU:
    if (n->attr.i[0]) {      /* 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2), t = tanh(u) */
      mg_tensor *x2 = mg_ex_mul(e, x, x);
      mg_tensor *u = mg_ex_bins(e, MG_B_MUL, mg_ex_add(e, x, mg_ex_bins(e, MG_B_MUL, mg_ex_mul(e, x2, x), GELU_C)), GELU_K);
      mg_tensor *t = mg_ex_unary(e, MG_U_TANH, u);
      mg_tensor *du = mg_ex_bins(e, MG_B_MUL, mg_ex_bins(e, MG_B_ADD, mg_ex_bins(e, MG_B_MUL, x2, 3 * GELU_C), 1), GELU_K);
      mg_tensor *p = mg_ex_mul(e, mg_ex_mul(e, mg_ex_rsub(e, 1, mg_ex_mul(e, t, t)), x), du);
      r = mg_ex_bins(e, MG_B_MUL, mg_ex_add(e, mg_ex_bins(e, MG_B_ADD, t, 1), p), 0.5);
    } else {                 /* Phi(x) + x phi(x) */
      mg_tensor *Phi = mg_ex_bins(e, MG_B_MUL, mg_ex_bins(e, MG_B_ADD, mg_ex_unary(e, MG_U_ERF, mg_ex_bins(e, MG_B_MUL, x, M_SQRT1_2)), 1), 0.5);
      mg_tensor *phi = mg_ex_bins(e, MG_B_MUL, mg_ex_unary(e, MG_U_EXP, mg_ex_bins(e, MG_B_MUL, mg_ex_mul(e, x, x), -0.5)), INV_SQRT_2PI);
      r = mg_ex_add(e, Phi, mg_ex_mul(e, x, phi));
    }
    break;
  case MG_OP_HARD_SIGMOID: {                       /* slope inside (-1/2, 1/2) / slope */
    double h = 0.5 / a;
    r = mg_ex_bins(e, MG_B_MUL, open_interval(e, x, -h, h), a);
    break;
  }
  default: *known = false; break;
  }
  return r;
}

/* f'(x) of the issue-12 unary and parametric nodes. */
static mg_status more_deriv(mg_ctx *C, const mg_node *n, mg_tensor **d) {
  mg_ex ex, *e = &ex;
  bool known = true;
  mg_ex_begin(e, C);
  mg_tensor *r = math_deriv(e, n, &known);
  if (!known) {
    known = true;
    r = activation_deriv(e, n, &known);
  }
  if (!known) {
    mg_ex_end(e);
    return mg_fail(C, MG_EARG, "internal: not a unary op");
  }
  *d = mg_ex_keep(e, r);
  return mg_ex_end(e);
}
