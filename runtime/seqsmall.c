/*
** seqsmall.c - the float32 gate passes of mg.lstm_seq when the units are few (seqcells.c
** calls them when mg_lstm_small(u)). cells.c's loops run per row over the u units of each
** gate: with u = 6 a vector of 16 lanes is never filled and every step runs scalar (the
** forward gates were half of a training step of bench/lstm.lua's 6-unit case). Here a block of
** rows is gathered gate-major first (the i, f, g, o of all its rows each contiguous, rows x
** units long), the same per-element formulas run over that, and the results are scattered
** back into the (rows, 4u) layout the sequence saves. The operations and their order are
** cells.c's (ISO C: no contraction), so the numbers are the same bit for bit.
*/
#include "cells.h"
#include "fastmath.h"

enum { SPAN = 256,              /* elements of each gate in a block (4 KiB of stack) */
       MAX_UNITS = 64 };        /* the largest bound mg_lstm_small_max takes */

/* Units below this (and not a multiple of 16) take this path; 0: never (mg_lstm_small_max). */
static int64_t small_max = MAX_UNITS;

/* The units this path is for, whatever mg_lstm_small_max says: where seqcells.c makes x W
** depends on this alone, so that the A/B switch changes the gate passes and nothing else. */
bool mg_lstm_few_units(int64_t u) { return u < MAX_UNITS && u % 16 != 0; }

bool mg_lstm_small(int64_t u) { return u < small_max && mg_lstm_few_units(u); }

int64_t mg_lstm_small_max(int64_t max) {
  int64_t old = small_max;
  if (max >= 0) small_max = max < MAX_UNITS ? max : MAX_UNITS;
  return old;
}

/* z[q][(r - r0) u + j] = G[r][q u + j] (+ b[q u + j]) for the rows [r0, r1), and back. With u
** a compile-time constant (the cases below 16 of copy()), each copy is a few moves. */
static inline __attribute__((always_inline)) void
copy_rows(bool back, int64_t r0, int64_t r1, int64_t u, float *restrict G, const float *restrict b,
          float (*restrict z)[SPAN]) {
  for (int64_t r = r0; r < r1; r++)
    for (int q = 0; q < 4; q++) {
      float *g = G + r * 4 * u + q * u, *o = z[q] + (r - r0) * u;
      if (back) memcpy(g, o, (size_t)u * sizeof *o);
      else if (b) for (int64_t j = 0; j < u; j++) o[j] = g[j] + b[q * u + j];
      else memcpy(o, g, (size_t)u * sizeof *o);
    }
}

#define UNITS_1_15(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define COPY_CASE(U) case U: copy_rows(back, r0, r1, U, G, b, z); break;

static void copy(bool back, int64_t r0, int64_t r1, int64_t u, float *G, const float *b,
                 float (*z)[SPAN]) {
  switch (u) {
  UNITS_1_15(COPY_CASE)
  default: copy_rows(back, r0, r1, u, G, b, z); break;
  }
}

/* The forward gate pass over the gate-major z of the rows [r0, r1): activations into z. */
static inline __attribute__((always_inline)) void
gates_block(int64_t r0, int64_t r1, int64_t u, float (*restrict z)[SPAN], const float *restrict c,
            float *restrict cn, float *restrict hn) {
  int64_t n = (r1 - r0) * u, s0 = r0 * u;
  float *restrict zi = z[0], *restrict zf = z[1], *restrict zg = z[2], *restrict zo = z[3];
  for (int64_t k = 0; k < n; k++) {
    float i = mg_sigmoidf(zi[k]), f = mg_sigmoidf(zf[k]);
    float g = mg_tanhf(zg[k]), o = mg_sigmoidf(zo[k]);
    float cc = f * c[s0 + k] + i * g;
    zi[k] = i; zf[k] = f; zg[k] = g; zo[k] = o;
    cn[s0 + k] = cc;
    hn[s0 + k] = o * mg_tanhf(cc);
  }
}

MG_CLONES void mg_lstm_gates_small(int64_t lo, int64_t hi, int64_t u, float *restrict G,
                                   const float *restrict b, const float *restrict c,
                                   float *restrict cn, float *restrict hn) {
  _Alignas(64) float z[4][SPAN];
  for (int64_t r0 = lo, rb = SPAN / u; r0 < hi; r0 += rb) {
    int64_t r1 = r0 + rb < hi ? r0 + rb : hi;
    copy(false, r0, r1, u, G, b, z);
    gates_block(r0, r1, u, z, c, cn, hn);
    copy(true, r0, r1, u, G, NULL, z);
  }
}

/* z for the rows [r0, r1) gate-major: (xW + h U) + b, h U added to xW over k with fused
** multiply-adds as the packed kernel (smallgemm.c) does when it accumulates into C (beta = 1;
** u < 128 is one of its K blocks), so that the sum is its sum bit for bit. */
static inline __attribute__((always_inline)) void
project_rows(int64_t r0, int64_t r1, int64_t u, const float *restrict G, const float *restrict h,
             const float *restrict U, const float *restrict b, float (*restrict z)[SPAN]) {
  for (int64_t r = r0; r < r1; r++) {
    float acc[4 * MAX_UNITS];
    for (int64_t n = 0; n < 4 * u; n++) acc[n] = G[r * 4 * u + n];
    for (int64_t k = 0; k < u; k++) {
      float hk = h[r * u + k];
      for (int64_t n = 0; n < 4 * u; n++) acc[n] = fmaf(hk, U[k * 4 * u + n], acc[n]);
    }
    for (int q = 0; q < 4; q++)
      for (int64_t j = 0; j < u; j++)
        z[q][(r - r0) * u + j] = acc[q * u + j] + b[q * u + j];
  }
}

#define PROJECT_CASE(U) case U: project_rows(r0, r1, U, G, h, Um, b, z); break;

MG_CLONES static void project(int64_t r0, int64_t r1, int64_t u, const float *G, const float *h,
                              const float *Um, const float *b, float (*z)[SPAN]) {
  switch (u) {
  UNITS_1_15(PROJECT_CASE)
  default: project_rows(r0, r1, u, G, h, Um, b, z); break;
  }
}

MG_CLONES bool mg_lstm_step_small(const mg_packed *P, int64_t lo, int64_t hi, int64_t u,
                                  float *restrict G, const float *restrict h,
                                  const float *restrict U, const float *restrict b,
                                  const float *restrict c, float *restrict cn,
                                  float *restrict hn) {
  if (P == NULL || P->nr == 0 || !mg_lstm_small(u)) return false;
  _Alignas(64) float z[4][SPAN];
  for (int64_t r0 = lo, rb = SPAN / u; r0 < hi; r0 += rb) {
    int64_t r1 = r0 + rb < hi ? r0 + rb : hi;
    project(r0, r1, u, G, h, U, b, z);
    gates_block(r0, r1, u, z, c, cn, hn);
    copy(true, r0, r1, u, G, NULL, z);
  }
  return true;
}

MG_CLONES void mg_lstm_dz_small(int64_t lo, int64_t hi, int64_t u, const float *restrict G,
                                const float *restrict c, const float *restrict cn,
                                const float *restrict gh, const float *restrict gc,
                                float *restrict dz, float *restrict dc) {
  _Alignas(64) float z[4][SPAN];
  for (int64_t r0 = lo, rb = SPAN / u; r0 < hi; r0 += rb) {
    int64_t r1 = r0 + rb < hi ? r0 + rb : hi, n = (r1 - r0) * u, s0 = r0 * u;
    copy(false, r0, r1, u, (float *)G, NULL, z);
    float *restrict zi = z[0], *restrict zf = z[1], *restrict zg = z[2], *restrict zo = z[3];
    for (int64_t k = 0; k < n; k++) {
      int64_t s = s0 + k;
      float i = zi[k], f = zf[k], g = zg[k], o = zo[k];
      float tc = mg_tanhf(cn[s]), dh = gh[s];
      float dct = gc[s] + dh * o * (1 - tc * tc);
      zi[k] = dct * g * i * (1 - i);
      zf[k] = dct * c[s] * f * (1 - f);
      zg[k] = dct * i * (1 - g * g);
      zo[k] = dh * tc * o * (1 - o);
      dc[s] = dct * f;
    }
    copy(true, r0, r1, u, dz, NULL, z);
  }
}
