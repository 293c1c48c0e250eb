/*
** lyapunov.h - what lyapunov.c and the two typed copies of the lanes way share (not a public
** header): the block sizes of the lanes' kernels, the run and group structures, and the two
** entry points each copy exports. lyapunov_f32.c and lyapunov_f64.c each include
** lyapunov_lanes.h once, for float32 and float64: two translation units, so that they compile
** in parallel and a change to one type's code recompiles it alone.
*/
#ifndef MG_LYAPUNOV_H
#define MG_LYAPUNOV_H
#include "mg_impl.h"
#include "cells.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The vector loops below are compiled for AVX-512 and AVX2 too, picked at load time, with
** a * b + c fused (ISO C mode leaves it unfused); CMakeLists.txt compiles this file with
** -fno-math-errno, so that slarfg's lane loop (sqrt) runs as whole vectors. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define LYAP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), \
                                 optimize("fp-contract=fast")))
/* the lanes' kernels (lyapunov_lanes.h) in three copies, each compiled for the machines that
** run it: 512 bits wide for AVX-512, 256 bits wide for AVX2, and 256 bits wide for x86-64 CPUs
** without AVX2 at -O1 (correct there, not fast: as a clone at -O3 that copy alone took about
** two thirds of each file's compile) */
#define LYAP_HAVE_CLONES 1
#define LYAP_CLONES_WIDE __attribute__((target("arch=x86-64-v4"), optimize("fp-contract=fast")))
#define LYAP_CLONES_NARROW __attribute__((target("arch=x86-64-v3"), optimize("fp-contract=fast")))
#define LYAP_CLONES_BASE __attribute__((optimize("O1")))
#else
#define LYAP_CLONES
#define LYAP_CLONES_WIDE
#define LYAP_CLONES_NARROW
#endif
/* Which copy of the lanes' kernels runs (lyapunov_lanes.h): 512 bits at a time (machines with
** 32 vector registers, for which the register tiles are sized), or 256 at a time, on each half
** of the lanes in turn, compiled for AVX2 or for the x86-64 baseline. x86-64-v4 takes the
** first, x86-64-v3 the second, unless MG_LYAP_WIDTH (512, 256 or baseline) says (512 only
** on x86-64-v4 where the kernels are compiled for it); read once. Without the clones (the
** sanitizer trees, other compilers and CPUs) every copy is built for the target. */
typedef enum { LYAP_WIDE, LYAP_NARROW, LYAP_BASE } lyap_kernels;
lyap_kernels mg_lyap_kernels(void);
#define MG_INLINE static inline __attribute__((always_inline))

/* Block sizes of the lanes' kernels (lyapunov_lanes.h): the QR's panels of NB columns,
** updated RB rows at a time (NB x RB lane vectors of V, 32 KiB, stay in L1 while the columns
** pass; 64 rows measured 3% faster than 32 at N = k = 64); the Jacobian product's JB columns by RJ rows of J, CB tangents
** at a time, from slabs of at most KC_BYTES of tangents; the QR's panels VALL_BYTES of
** reflectors at a time over slabs of CSLAB_BYTES of the columns after them. */
#define NB 8
#define RB 64
#define JB 4
#define CB 4
#define RJ 64
#define KC_BYTES (512 * 1024)
#define VALL_BYTES (1024 * 1024)
#define CSLAB_BYTES (256 * 1024)
_Static_assert(JB == 4, "LX(tangents) takes the last columns as 1, 2 or 3");
/* Steps per parallel round: the groups run this many steps, then the history is summed and
** the interrupt flag read. */
#define LCHUNK 64
#define LANES_F32 16
#define LANES_F64 8

/* One group of trajectories (rows b0 .. b0 + nl - 1) through the run: its buffers (LT of
** its type), all allocated once. */
typedef struct {
  int64_t b0, nl, counted, since;
  bool qt;                /* TL holds the last QR's reflectors (the implicit way), not tangents */
  void *h, *hn, *c, *cn, *M, *S, *dmx, *co, *zz, *ones, *dz1, *dz2, *dc1, *dc2, *cl, *TL, *AL,
      *Jb, *Vb, *Wb, *Tb, *tau, *beta, *sum, *Jf;
  void *block;            /* the allocation holding them */
} lgroup;

/* A run, as the groups see it. */
typedef struct {
  bool lstm, backwards;
  bool implicit;          /* tangents as reflectors (tangents_qt): GRU, a QR every step, k near N */
  int64_t T, F, N, S, k, warmup, steps, every, t0, t1;
  const void *x, *W, *U, *b;
  const mg_packed *P;     /* U packed (float32), or NULL */
  const volatile int *intr;
  double *part;           /* (groups, LCHUNK, k): each group's history share */
  lgroup *g;
} ljob;

/* The lanes way's entry points, one per type (lyapunov_f32.c, lyapunov_f64.c): the groups
** lo .. hi - 1 of the job 'arg' (an ljob) through its steps t0 .. t1 - 1 (mg_parallel_for's
** body), and Householder's QR of 16 (float64: 8) interleaved N x k matrices in place. */
void mg_lyap_groups_f32(void *arg, int64_t lo, int64_t hi);
void mg_lyap_groups_f64(void *arg, int64_t lo, int64_t hi);
void mg_lyap_householder_f32(int64_t N, int64_t k, float *X, float *tau, float *beta, float *V,
                             float *W, float *Tall);
void mg_lyap_householder_f64(int64_t N, int64_t k, double *X, double *tau, double *beta, double *V,
                             double *W, double *Tall);
#endif
