/*
** lyapunov_f32.c - the lanes way of lyapunov.c for float32 (lyapunov_lanes.h with LT float):
** a translation unit of its own, compiled in parallel with the other type's.
*/
#include "lyapunov.h"

#define LT float
#define LANES LANES_F32
#define LDT MG_F32
#define LSQRT sqrtf
#define LCOPYSIGN copysignf
#define LLOG logf
/* the QR's dot products and norms split into partial sums (lyapunov_lanes.h): float32 is
** the fast path */
#define LSPLIT 1
#define LFABS fabsf
/* the narrow kernels (LW = LANES / 2: machines with 16 vector registers) for AVX2 and, where
** there are clones, again for the baseline; then the rest */
#define LKERNELS_ONLY
#define LW (LANES / 2)
#define LCLONES LYAP_CLONES_NARROW
#define LX(name) name##_f32n
#include "lyapunov_lanes.h"
#ifdef LYAP_HAVE_CLONES
#define LKERNELS_ONLY
#define LW (LANES / 2)
#define LCLONES LYAP_CLONES_BASE
#define LX(name) name##_f32b
#include "lyapunov_lanes.h"
#define LXB(name) name##_f32b
#else
#define LXB(name) name##_f32n
#endif
#define LX(name) name##_f32
#define LXN(name) name##_f32n
#include "lyapunov_lanes.h"
