/*
** lyapunov_f64.c - the lanes way of lyapunov.c for float64 (lyapunov_lanes.h with LT double):
** a translation unit of its own, compiled in parallel with the other type's.
*/
#include "lyapunov.h"

#define LT double
#define LANES LANES_F64
#define LDT MG_F64
#define LSQRT sqrt
#define LCOPYSIGN copysign
#define LLOG log
/* the QR's dot products and norms one chain each, in order: the float64 bits, which
** spectra_spec compares with the generic JVP path's to 1e-12, stay those of before the split */
#define LSPLIT 0
#define LFABS fabs
/* the narrow kernels (LW = LANES / 2: machines with 16 vector registers) for AVX2 and, where
** there are clones, again for the baseline; then the rest */
#define LKERNELS_ONLY
#define LW (LANES / 2)
#define LCLONES LYAP_CLONES_NARROW
#define LX(name) name##_f64n
#include "lyapunov_lanes.h"
#ifdef LYAP_HAVE_CLONES
#define LKERNELS_ONLY
#define LW (LANES / 2)
#define LCLONES LYAP_CLONES_BASE
#define LX(name) name##_f64b
#include "lyapunov_lanes.h"
#define LXB(name) name##_f64b
#else
#define LXB(name) name##_f64n
#endif
#define LX(name) name##_f64
#define LXN(name) name##_f64n
#include "lyapunov_lanes.h"
