/*
** fastmath.h - float32 exp, sigmoid and tanh that GCC can vectorize: branch-free Cephes
** polynomials (about 2 ulp), for the gate loops of the fused cells. float64 keeps libm.
** The polynomials are Horner steps in fused multiply-adds (fmaf: one rounding each; one
** instruction in the x86-64-v3/v4 clones, libm's exact fmaf in the baseline clone, so the
** same bits in every clone and every path that includes this): an exp is 19 vector
** operations instead of 24 (the 32-unit LSTM's forward gate pass 14 % faster).
*/
#ifndef MG_FASTMATH_H
#define MG_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* e^x for x in float range; saturates outside [-87.3, 88.7]. */
static inline float mg_expf(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  float n = rintf(x * 1.44269504088896341f);
  float r = fmaf(n, 2.12194440e-4f, fmaf(n, -0.693359375f, x));  /* x - n ln2, two steps */
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  float y = fmaf(p, r * r, r) + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;                   /* 2^n */
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

static inline float mg_sigmoidf(float x) { return 1.0f / (1.0f + mg_expf(-x)); }

/* tanh: an odd polynomial near 0 (no cancellation), 1 - 2 / (e^2x + 1) elsewhere. */
static inline float mg_tanhf(float x) {
  float z = x * x;
  float q = fmaf(-5.70498872745e-3f, z, 2.06390887954e-2f);
  q = fmaf(q, z, -5.37397155531e-2f);
  q = fmaf(q, z, 1.33314422036e-1f);
  q = fmaf(q, z, -3.33332819422e-1f);
  float small = fmaf(q * z, x, x);
  float large = 1.0f - 2.0f / (mg_expf(2.0f * x) + 1.0f);
  return fabsf(x) < 0.625f ? small : large;
}

#endif
