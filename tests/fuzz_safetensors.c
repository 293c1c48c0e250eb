/*
** fuzz_safetensors.c - fuzz target for the safetensors reader (mg_safetensors_parse).
**
** Built two ways:
** - with libFuzzer (cmake -DMG_FUZZ=ON, clang; tools/fuzz runs it for a bounded time):
**   LLVMFuzzerTestOneInput is the target;
** - as a plain program (every build; ctest 'fuzz_safetensors_corpus'): 'fuzz_safetensors_replay PATH...'
**   runs the target on each file (directories: each file in them). Files named 'ok_*' must
**   parse, to tensors whose elements in C order are 0, 1, 2, ... each; files named 'bad_*'
**   must be rejected; any other file only must not break an invariant.
**
** Invariants, for any input: a rejected input leaves a "load_tensors: ..." message naming
** the input and no storage alive; an accepted one gives named contiguous float32/float64
** tensors of at most MG_MAXDIM dims whose every element can be read, whose data are no more
** than the input, and that free all their storage when released. A broken invariant aborts.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg.h"
#include "fuzz_tensor.h"

static void broken(const char *what, const mg_ctx *C) {
  fprintf(stderr, "fuzz_safetensors: invariant broken: %s (last message: \"%s\")\n", what, mg_errmsg(C));
  abort();
}

/* Parse 'buf'; check the invariants. Returns true when accepted ('d' then filled: the
** caller frees it). */
static bool parse_checked(mg_ctx *C, const unsigned char *buf, size_t len, mg_tensor_dict *d) {
  mg_status st = mg_safetensors_parse(C, buf, len, "input", d);
  if (st != MG_OK) {
    if (strncmp(mg_errmsg(C), "load_tensors: ", 14) != 0 || strstr(mg_errmsg(C), "'input'") == NULL)
      broken("a rejection without a message naming the input", C);
    if (st != MG_EFORMAT && st != MG_ENOMEM) broken("a rejection with an unexpected status", C);
    if (mg_live_bytes(C) != 0) broken("a rejected input left storage alive", C);
    return false;
  }
  size_t total = 0;
  for (int k = 0; k < d->n; k++) {
    if (d->tensors[k] == NULL || d->names[k] == NULL) broken("a tensor or name missing", C);
    total += (size_t)fuzz_check_tensor(C, d->tensors[k]) * 2;   /* >= 2 bytes per element in the file */
  }
  if (total > len) broken("more data than input", C);
  return true;
}

/* libFuzzer's entry point: one input, one context reused (as a long-running host would). */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  static mg_ctx *C;
  if (C == NULL && (C = mg_ctx_new()) == NULL) abort();
  mg_tensor_dict d = { 0 };
  parse_checked(C, data, size, &d);
  mg_tensor_dict_free(&d);
  if (mg_live_bytes(C) != 0) broken("storage alive after the tensor was released", C);
  return 0;
}

#ifndef MG_LIBFUZZER
#define FUZZ_NAME "fuzz_safetensors"
#include "fuzz_replay.h"

/* The file's bytes: invariants always, the expectation its name carries. 0 if it passed. */
static int replay_input(mg_ctx *C, const char *path, const unsigned char *buf, size_t len,
                        int expect) {
  mg_tensor_dict d = { 0 };
  bool ok = parse_checked(C, buf, len, &d);
  int failed = fuzz_verdict(path, expect, ok, "tensors", C);
  for (int k = 0; expect == 'o' && ok && k < d.n && !failed; k++)
    failed = fuzz_check_counting(path, d.names[k], d.tensors[k]);
  mg_tensor_dict_free(&d);
  if (mg_live_bytes(C) != 0) broken("storage alive after the tensors were released", C);
  return failed;
}

#endif
