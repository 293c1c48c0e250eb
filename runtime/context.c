/*
** context.c - per-interpreter state: default dtype, storage pool, tapes, RNG, budget.
** Everything mutable lives here, so separate contexts in separate threads are independent.
*/
#include "mg_impl.h"

#include <stdlib.h>

mg_ctx *mg_ctx_new(void) {
  mg_ctx *C = calloc(1, sizeof *C);
  if (C == NULL) return NULL;
  C->pool = mg_pool_new();
  if (C->pool == NULL) { free(C); return NULL; }
  C->default_dtype = MG_F32;
  C->memory_budget = (size_t)1 << 30;
  C->nthreads = 1;
  mg_ctx_set_num_threads(C, mg_default_threads());
  mg_manual_seed(C, 0);
  return C;
}

/* Tensors still alive keep the pool (refcounted), so closing early is safe. */
void mg_ctx_close(mg_ctx *C) {
  if (C == NULL) return;
  while (C->active != NULL) mg_tape_stop(C->active);
  mg_parallel_close(C);
  mg_hollow_release(C);
  mg_pool_unref(C->pool);
  free(C);
}

mg_dtype mg_default_dtype(const mg_ctx *C) { return C->default_dtype; }
void mg_set_default_dtype(mg_ctx *C, mg_dtype dt) { C->default_dtype = dt; }
size_t mg_live_bytes(const mg_ctx *C) { return mg_pool_live(C->pool); }
size_t mg_cached_bytes(const mg_ctx *C) { return mg_pool_cached(C->pool); }
size_t mg_peak_bytes(const mg_ctx *C) { return mg_pool_peak(C->pool); }
void mg_reset_peak_bytes(mg_ctx *C) { mg_pool_reset_peak(C->pool); }
void mg_empty_cache(mg_ctx *C) { mg_pool_trim(C->pool); }
void mg_set_memory_budget(mg_ctx *C, size_t bytes) { C->memory_budget = bytes; }
size_t mg_memory_budget(const mg_ctx *C) { return C->memory_budget; }
void mg_ctx_set_interrupt_flag(mg_ctx *C, volatile sig_atomic_t *flag) { C->interrupt = flag; }
void mg_set_jacobian_limit(mg_ctx *C, size_t bytes) { C->jacobian_limit = bytes; }
size_t mg_jacobian_limit(const mg_ctx *C) { return C->jacobian_limit; }
void mg_no_grad_enter(mg_ctx *C) { C->no_grad++; }
void mg_no_grad_exit(mg_ctx *C) { if (C->no_grad > 0) C->no_grad--; }
