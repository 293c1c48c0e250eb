/*
** fuzz_tensor.h - the checks of a tensor the tensor-file fuzz targets share (tests/fuzz_npy.c,
** tests/fuzz_safetensors.c). Include it after "mg.h"; the target defines
**     static void broken(const char *what, const mg_ctx *C);
** which reports a broken invariant and aborts.
*/
#ifndef MG_FUZZ_TENSOR_H
#define MG_FUZZ_TENSOR_H

#include <stdio.h>

#include "mg.h"

static void broken(const char *what, const mg_ctx *C);

/* The invariants of a tensor a reader accepted: a contiguous float32/float64 tensor of at
** most MG_MAXDIM dims whose every element can be read (out of bounds shows in ASan).
** Returns its number of elements. */
static inline int64_t fuzz_check_tensor(const mg_ctx *C, const mg_tensor *t) {
  int nd = mg_tensor_ndim(t);
  mg_dtype dt = mg_tensor_dtype(t);
  if (nd < 0 || nd > MG_MAXDIM || (dt != MG_F32 && dt != MG_F64))
    broken("a tensor of impossible rank or dtype", C);
  if (!mg_tensor_is_contiguous(t)) broken("a non-contiguous result", C);
  int64_t n = mg_tensor_numel(t);
  if (n < 0) broken("a negative size", C);
  double sum = 0;
  const char *p = mg_tensor_data(t);
  for (int64_t i = 0; i < n; i++)
    sum += dt == MG_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
  (void)sum;
  return n;
}

/* What an 'ok_*' file promises: the elements of 't' in C order are 0, 1, 2, ... Returns 0
** if they are, else 1 after a message naming 'path' (and 'name', the tensor's, if not NULL). */
static inline int fuzz_check_counting(const char *path, const char *name, const mg_tensor *t) {
  const char *p = mg_tensor_data(t);
  for (int64_t i = 0, n = mg_tensor_numel(t); i < n; i++) {
    double v = mg_tensor_dtype(t) == MG_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
    if (v != (double)i) {
      fprintf(stderr, "%s: %s%s%selement %lld is %g, expected %lld\n", path, name ? "'" : "",
              name ? name : "", name ? "' " : "", (long long)i, v, (long long)i);
      return 1;
    }
  }
  return 0;
}

#endif
