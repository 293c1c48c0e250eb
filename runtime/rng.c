/*
** rng.c - the per-context generator: xoshiro256** seeded through splitmix64, so a seed gives
** the same numbers on every machine. Uniform from the top 53 (float64) or 24 (float32) bits;
** normal by the Box-Muller transform.
*/
#include "mg_impl.h"

#include <math.h>
#include <string.h>

static uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next(mg_rng *r) {
  uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return res;
}

void mg_manual_seed(mg_ctx *C, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) C->rng.s[i] = splitmix(&x);
  C->rng.has_spare = false;
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform01(mg_rng *r) { return (double)(next(r) >> 11) * 0x1.0p-53; }

static double normal01(mg_rng *r) {
  if (r->has_spare) { r->has_spare = false; return r->spare; }
  double u1 = uniform01(r), u2 = uniform01(r);
  double rad = sqrt(-2.0 * log(1.0 - u1)), th = 2.0 * M_PI * u2;   /* 1 - u1 is in (0, 1] */
  r->spare = rad * sin(th);
  r->has_spare = true;
  return rad * cos(th);
}

/* Visit the elements of 't' in C order, setting each to gen(). */
#define FILL(t, EXPR) do {                                                         \
    int64_t n = mg_tensor_numel(t), idx[MG_MAXDIM] = { 0 };                        \
    for (int64_t k = 0; k < n; k++) {                                              \
      mg_tensor_set(t, idx, (EXPR));                                               \
      for (int d = t->ndim - 1; d >= 0 && ++idx[d] == t->shape[d]; d--) idx[d] = 0; \
    }                                                                              \
  } while (0)

/* lo + (hi - lo) u, rounded to float32, can land on 'hi' (uniform(100, 101): about once in
** 2^18 draws): step back below it, so the range stays [lo, hi). */
static double below_f32(double v, double lo, double hi) {
  float f = (float)v, h = (float)hi;
  if (f >= h && lo < hi) {
    f = nextafterf(h, -INFINITY);
    if (f < (float)lo) f = (float)lo;
  }
  return f;
}

static double below_f64(double v, double lo, double hi) {
  return (v >= hi && lo < hi) ? nextafter(hi, lo) : v;
}

/* One float32 uniform draw in [lo, hi) from the top 24 bits. */
static float uniform_f32(mg_rng *r, double lo, double hi) {
  return (float)below_f32(lo + (hi - lo) * (double)(next(r) >> 40) * 0x1.0p-24, lo, hi);
}

/* A contiguous tensor is filled through its pointer (the same numbers, in the same order, as
** FILL's visit: C order is storage order), 5x faster than element-wise mg_tensor_set. */
void mg_fill_uniform(mg_ctx *C, mg_tensor *t, double lo, double hi) {
  mg_bump_version(t);
  int64_t n = mg_tensor_numel(t);
  if (t->dtype == MG_F32) {
    if (mg_tensor_is_contiguous(t) && lo == 0 && hi == 1) {      /* mg.rand: u exactly, below 1 */
      float *p = MG_F32P(t);
      for (int64_t k = 0; k < n; k++) p[k] = (float)(next(&C->rng) >> 40) * 0x1.0p-24f;
    } else if (mg_tensor_is_contiguous(t)) {
      float *p = MG_F32P(t);
      for (int64_t k = 0; k < n; k++) p[k] = uniform_f32(&C->rng, lo, hi);
    } else {
      FILL(t, uniform_f32(&C->rng, lo, hi));
    }
  } else if (mg_tensor_is_contiguous(t)) {
    double *p = MG_F64P(t);
    for (int64_t k = 0; k < n; k++) p[k] = below_f64(lo + (hi - lo) * uniform01(&C->rng), lo, hi);
  } else {
    FILL(t, below_f64(lo + (hi - lo) * uniform01(&C->rng), lo, hi));
  }
}

/* A dropout mask in one pass: each entry 1 / (1 - rate) where mg.rand's draw (the same
** numbers, in the same order) is >= rate, else 0; the scalars rounded to t's dtype first, so
** that it equals mg.ge(mg.rand(...), rate):to(dtype) * (1 / (1 - rate)) bit for bit. The draw
** u 2^-b (b = 24 or 53 bits) is >= r exactly when u >= ceil(r 2^b) (both sides exact), and
** the entry is keep's bits or +0's, without a branch (a fifth of them would be mispredicted).
** 't' contiguous float32 or float64 (else false, nothing drawn). */
bool mg_dropout_mask_(mg_ctx *C, mg_tensor *t, double rate) {
  if (!mg_tensor_is_contiguous(t) || (t->dtype != MG_F32 && t->dtype != MG_F64)) return false;
  mg_bump_version(t);
  int64_t n = mg_tensor_numel(t);
  if (t->dtype == MG_F32) {
    float keep = (float)(1 / (1 - rate));
    uint64_t thr = (uint64_t)ceil((double)(float)rate * 0x1.0p24);
    uint32_t kb, *p = (uint32_t *)mg_tensor_data(t);
    memcpy(&kb, &keep, sizeof kb);
    for (int64_t k = 0; k < n; k++) p[k] = kb & (0u - (uint32_t)((next(&C->rng) >> 40) >= thr));
  } else {
    double keep = 1 / (1 - rate);
    uint64_t thr = (uint64_t)ceil(rate * 0x1.0p53), kb, *p = (uint64_t *)mg_tensor_data(t);
    memcpy(&kb, &keep, sizeof kb);
    for (int64_t k = 0; k < n; k++) p[k] = kb & (0u - (uint64_t)((next(&C->rng) >> 11) >= thr));
  }
  return true;
}

void mg_fill_normal(mg_ctx *C, mg_tensor *t, double mean, double std) {
  mg_bump_version(t);
  FILL(t, mean + std * normal01(&C->rng));
}
