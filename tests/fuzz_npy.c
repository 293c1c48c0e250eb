/*
** fuzz_npy.c - fuzz target for the .npy reader (mg_npy_parse).
**
** Built two ways:
** - with libFuzzer (cmake -DMG_FUZZ=ON, clang; tools/fuzz runs it for a bounded time):
**   LLVMFuzzerTestOneInput is the target;
** - as a plain program (every build; ctest 'fuzz_npy_corpus'): 'fuzz_npy_replay PATH...'
**   runs the target on each file (directories: each file in them). Files named 'ok_*' must
**   parse, to a tensor whose elements in C order are 0, 1, 2, ...; files named 'bad_*'
**   must be rejected; any other file only must not break an invariant.
**
** Invariants, for any input: a rejected input leaves a "load: ..." message and no storage
** alive; an accepted one gives a contiguous float32/float64 tensor of at most MG_MAXDIM
** dims whose every element can be read, whose data fill the input after its header, and
** that frees all its storage when released. A broken invariant aborts (a fuzzer crash).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg.h"
#include "fuzz_tensor.h"

static void broken(const char *what, const mg_ctx *C) {
  fprintf(stderr, "fuzz_npy: invariant broken: %s (last message: \"%s\")\n", what, mg_errmsg(C));
  abort();
}

/* Parse 'buf'; check the invariants. Returns the tensor (caller releases) or NULL. */
static mg_tensor *parse_checked(mg_ctx *C, const unsigned char *buf, size_t len) {
  mg_tensor *t = NULL;
  mg_status st = mg_npy_parse(C, buf, len, &t);
  if (st != MG_OK) {
    if (strncmp(mg_errmsg(C), "load: ", 6) != 0) broken("a rejection without a message", C);
    if (st != MG_EFORMAT && st != MG_ENOMEM) broken("a rejection with an unexpected status", C);
    if (mg_live_bytes(C) != 0) broken("a rejected input left storage alive", C);
    return NULL;
  }
  int64_t n = fuzz_check_tensor(C, t);
  if ((size_t)n * mg_dtype_size(mg_tensor_dtype(t)) > len) broken("more data than input", C);
  return t;
}

/* libFuzzer's entry point: one input, one context reused (as a long-running host would). */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  static mg_ctx *C;
  if (C == NULL && (C = mg_ctx_new()) == NULL) abort();
  mg_tensor *t = parse_checked(C, data, size);
  mg_tensor_release(t);
  if (mg_live_bytes(C) != 0) broken("storage alive after the tensor was released", C);
  return 0;
}

#ifndef MG_LIBFUZZER

#define FUZZ_NAME "fuzz_npy"
#include "fuzz_replay.h"

/* The file's bytes: invariants always, the expectation its name carries. 0 if it passed. */
static int replay_input(mg_ctx *C, const char *path, const unsigned char *buf, size_t len,
                        int expect) {
  mg_tensor *t = parse_checked(C, buf, len);
  int failed = fuzz_verdict(path, expect, t != NULL, "a tensor", C);
  if (expect == 'o' && t != NULL && !failed) failed = fuzz_check_counting(path, NULL, t);
  mg_tensor_release(t);
  if (mg_live_bytes(C) != 0) broken("storage alive after the tensor was released", C);
  return failed;
}

#endif
