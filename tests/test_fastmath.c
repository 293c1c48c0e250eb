/*
** test_fastmath.c - runtime/fastmath.h's float32 exp, sigmoid and tanh against libm in
** double over a dense sweep of their range, and the LSTM gate passes built on them
** (runtime/cells.c, runtime/seqsmall.c) against a float64 evaluation of the same formulas at
** ragged sizes: units 16, 32, 48, 80 (per-row path) and 6, 13 (small-units path), batches 1,
** 5, 16, 17. Bounds: exp within 4 ulp of e^x on [-87, 88]; sigmoid within 4 ulp (relative);
** tanh within 4 ulp or 2^-25 absolute (near 0 the odd polynomial, elsewhere 1 - 2 / (e^2x + 1),
** whose cancellation is bounded absolutely); the gate passes' outputs within 1e-6 (absolute,
** the activations are at most 1 in size, the states a few units). Exit status 0 when every
** check passes.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cells.h"
#include "fastmath.h"

static int failures, checks;

static void fail(const char *what, double x, double got, double want) {
  if (failures++ < 10) fprintf(stderr, "%s(%.9g) = %.9g, expected %.9g\n", what, x, got, want);
}

/* |got - want| within n ulp of want (float32), or within 'abs' absolutely. */
static void near_ulp(const char *what, double x, float got, double want, double n, double abs) {
  checks++;
  double ulp = ldexp(1.0, ilogb(want == 0 ? 1e-38 : want) - 23), err = fabs((double)got - want);
  if (!(err <= n * ulp || err <= abs)) fail(what, x, got, want);
}

static void sweep(void) {
  for (double x = -87.0; x <= 88.0; x += 1.0 / 1024) {
    float xf = (float)x;
    near_ulp("mg_expf", xf, mg_expf(xf), exp((double)xf), 4, 0);
    near_ulp("mg_sigmoidf", xf, mg_sigmoidf(xf), 1 / (1 + exp(-(double)xf)), 4, 0);
    near_ulp("mg_tanhf", xf, mg_tanhf(xf), tanh((double)xf), 4, ldexp(1.0, -25));
  }
  for (double x = -1e-3; x <= 1e-3; x += 1e-7) {   /* the odd polynomial near 0, relative */
    float xf = (float)x;
    near_ulp("mg_tanhf", xf, mg_tanhf(xf), tanh((double)xf), 4, 0);
  }
  near_ulp("mg_expf", -200, mg_expf(-200.0f), exp(-87.3f), 4, 0);      /* saturated */
  near_ulp("mg_sigmoidf", 200, mg_sigmoidf(200.0f), 1.0, 1, 0);
  near_ulp("mg_tanhf", -200, mg_tanhf(-200.0f), -1.0, 1, 0);
}

static uint64_t rng = 0x2545f4914f6cdd1du;
static double drand(void) {                     /* uniform in [-1, 1), xorshift64* */
  rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
  return (double)((rng * 0x2545f4914f6cdd1du) >> 11) / 4503599627370496.0 - 1.0;
}

static double sigm(double x) { return 1 / (1 + exp(-x)); }

static void close_to(const char *what, int64_t k, float got, double want) {
  checks++;
  if (!(fabs((double)got - want) <= 1e-6)) fail(what, (double)k, got, want);
}

/* The forward and reverse gate passes at B rows of u units against float64. */
static void gates(int64_t B, int64_t u) {
  int64_t n = B * 4 * u, s = B * u;
  float *G = malloc((size_t)(2 * n + 4 * u + 6 * s) * sizeof *G);
  double *z = malloc((size_t)(n + 4 * u + 3 * s) * sizeof *z);
  if (!G || !z) { fprintf(stderr, "out of memory\n"); exit(2); }
  float *dz = G + n, *b = dz + n, *c = b + 4 * u, *cn = c + s, *hn = cn + s, *gh = hn + s,
        *gc = gh + s, *dc = gc + s;
  double *bd = z + n, *cd = bd + 4 * u, *ghd = cd + s, *gcd = ghd + s;
  for (int64_t k = 0; k < n; k++) { G[k] = (float)(3 * drand()); z[k] = G[k]; }
  for (int64_t k = 0; k < 4 * u; k++) { b[k] = (float)(0.5 * drand()); bd[k] = b[k]; }
  for (int64_t k = 0; k < s; k++) {
    c[k] = (float)(2 * drand()); cd[k] = c[k];
    gh[k] = (float)drand(); ghd[k] = gh[k];
    gc[k] = (float)drand(); gcd[k] = gc[k];
  }
  if (mg_lstm_small(u)) mg_lstm_gates_small(0, B, u, G, b, c, cn, hn);
  else mg_lstm_gates_f32(0, B, u, G, b, c, cn, hn);
  if (mg_lstm_small(u)) mg_lstm_dz_small(0, B, u, G, c, cn, gh, gc, dz, dc);
  else mg_lstm_dz_f32(0, B, u, G, c, cn, gh, gc, dz, dc);
  for (int64_t r = 0; r < B; r++)
    for (int64_t j = 0; j < u; j++) {
      int64_t g0 = r * 4 * u + j, k = r * u + j;
      double i = sigm(z[g0] + bd[j]), f = sigm(z[g0 + u] + bd[u + j]);
      double g = tanh(z[g0 + 2 * u] + bd[2 * u + j]), o = sigm(z[g0 + 3 * u] + bd[3 * u + j]);
      double cc = f * cd[k] + i * g, tc = tanh(cc);
      close_to("i", g0, G[g0], i);
      close_to("f", g0, G[g0 + u], f);
      close_to("g", g0, G[g0 + 2 * u], g);
      close_to("o", g0, G[g0 + 3 * u], o);
      close_to("c'", k, cn[k], cc);
      close_to("h'", k, hn[k], o * tc);
      double dct = gcd[k] + ghd[k] * o * (1 - tc * tc);
      close_to("dz_i", g0, dz[g0], dct * g * i * (1 - i));
      close_to("dz_f", g0, dz[g0 + u], dct * cd[k] * f * (1 - f));
      close_to("dz_g", g0, dz[g0 + 2 * u], dct * i * (1 - g * g));
      close_to("dz_o", g0, dz[g0 + 3 * u], ghd[k] * tc * o * (1 - o));
      close_to("dc", k, dc[k], dct * f);
    }
  free(G);
  free(z);
}

int main(void) {
  sweep();
  static const int64_t units[] = { 16, 32, 48, 80, 6, 13 }, batches[] = { 1, 5, 16, 17 };
  for (size_t a = 0; a < sizeof units / sizeof *units; a++)
    for (size_t q = 0; q < sizeof batches / sizeof *batches; q++) gates(batches[q], units[a]);
  printf("test_fastmath: %d of %d checks failed\n", failures, checks);
  return failures != 0;
}
