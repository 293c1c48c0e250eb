/*
** fuzz_tfevents.c - fuzz target for the TensorBoard event file reader (mg_summary_parse).
**
** Built as tests/fuzz_npy.c is: with libFuzzer (cmake -DMG_FUZZ=ON, clang; tools/fuzz), and
** as a plain program in every build (ctest 'fuzz_tfevents_corpus'): 'fuzz_tfevents_replay
** PATH...' runs the target on each file (directories: each file in them). Files named
** 'ok_*' must parse, and their first event must be the file version "brain.Event:2";
** files named 'bad_*' must be rejected; any other file only must not break an invariant.
**
** Every input is also parsed as the body of one record with valid framing (past the CRCs,
** into the Event decoding): that must give one event or a rejection that is no CRC's.
** Invariants, for any input: a rejected input leaves a "summary.read: ..." message naming a
** byte offset (or running out of memory) and nothing allocated; an accepted one gives
** events whose record offsets start at 0 and increase within the input, and whose every
** string, bucket array and byte string can be read whole (out of bounds shows in ASan).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg.h"

static void broken(const char *what, const mg_ctx *C) {
  fprintf(stderr, "fuzz_tfevents: invariant broken: %s (last message: \"%s\")\n", what, mg_errmsg(C));
  abort();
}

/* Read every byte a value points at; returns a checksum so nothing is optimized away. */
static double touch(const mg_summary_value *v, const mg_ctx *C) {
  double s = (double)strlen(v->tag);
  if (v->plugin) s += (double)strlen(v->plugin);
  switch (v->kind) {
  case MG_SUMMARY_SCALAR: s += v->scalar; break;
  case MG_SUMMARY_HISTOGRAM:
    for (size_t i = 0; i < v->nbuckets; i++) s += v->bucket_limit[i] + v->bucket[i];
    break;
  case MG_SUMMARY_IMAGE: case MG_SUMMARY_TEXT:
    if (v->nbytes && v->bytes == NULL) broken("a byte string without bytes", C);
    for (size_t i = 0; i < v->nbytes; i++) s += v->bytes[i];
    break;
  case MG_SUMMARY_OTHER: break;
  default: broken("a value of no known kind", C);
  }
  return s;
}

/* Parse 'buf'; check the invariants. Returns the log (caller frees) or NULL. */
static mg_summary_log *parse_checked(mg_ctx *C, const unsigned char *buf, size_t len) {
  mg_summary_log *log = NULL;
  mg_status st = mg_summary_parse(C, buf, len, &log);
  if (st != MG_OK) {
    if (strncmp(mg_errmsg(C), "summary.read: ", 14) != 0) broken("a rejection without a message", C);
    if (st == MG_EFORMAT && strstr(mg_errmsg(C), "byte offset ") == NULL)
      broken("a rejection that names no offset", C);
    if (st != MG_EFORMAT && st != MG_ENOMEM) broken("a rejection with an unexpected status", C);
    if (log != NULL) broken("a rejection that returned a log", C);
    return NULL;
  }
  double sum = 0;
  uint64_t prev = 0;
  for (size_t i = 0, n = mg_summary_log_count(log); i < n; i++) {
    const mg_summary_event *e = mg_summary_log_event(log, i);
    if (e == NULL) broken("a missing event", C);
    if ((i == 0 && e->offset != 0) || (i > 0 && e->offset <= prev) || e->offset + 16 > len)
      broken("an event offset out of order or outside the input", C);
    prev = e->offset;
    if (e->file_version) sum += (double)strlen(e->file_version);
    for (size_t k = 0; k < e->nvalues; k++) sum += touch(&e->values[k], C);
  }
  if (mg_summary_log_event(log, mg_summary_log_count(log)) != NULL) broken("an event past the end", C);
  (void)sum;
  return log;
}

/* The input as the body of one record with valid framing: random bytes rarely get past the
** CRCs, this reaches the Event decoding with every input. */
static void parse_framed(mg_ctx *C, const unsigned char *data, size_t size) {
  unsigned char *buf = malloc(size + 16);
  if (buf == NULL) return;
  uint64_t n = size;
  for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n >> (8 * i));
  uint32_t lc = mg_crc32c_mask(mg_crc32c(buf, 8));
  memcpy(buf + 12, data, size);
  uint32_t dc = mg_crc32c_mask(mg_crc32c(buf + 12, size));
  for (int i = 0; i < 4; i++) {
    buf[8 + i] = (unsigned char)(lc >> (8 * i));
    buf[12 + size + (size_t)i] = (unsigned char)(dc >> (8 * i));
  }
  mg_summary_log *log = parse_checked(C, buf, size + 16);
  if (log != NULL && mg_summary_log_count(log) != 1) broken("one framed record, not one event", C);
  if (log == NULL && strstr(mg_errmsg(C), "CRC") != NULL) broken("a valid CRC rejected", C);
  mg_summary_log_free(log);
  free(buf);
}

/* libFuzzer's entry point: one input, one context reused (as a long-running host would);
** the input as a file and as one record's event. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  static mg_ctx *C;
  if (C == NULL && (C = mg_ctx_new()) == NULL) abort();
  mg_summary_log_free(parse_checked(C, data, size));
  parse_framed(C, data, size);
  return 0;
}

#ifndef MG_LIBFUZZER

#define FUZZ_NAME "fuzz_tfevents"
#include "fuzz_replay.h"

/* The file's bytes: invariants always, the expectation its name carries. 0 if it passed. */
static int replay_input(mg_ctx *C, const char *path, const unsigned char *buf, size_t len,
                        int expect) {
  parse_framed(C, buf, len);
  mg_summary_log *log = parse_checked(C, buf, len);
  int failed = fuzz_verdict(path, expect, log != NULL, "events", C);
  if (expect == 'o' && log != NULL) {
    const mg_summary_event *e = mg_summary_log_event(log, 0);
    if (e == NULL || e->file_version == NULL || strcmp(e->file_version, "brain.Event:2") != 0) {
      fprintf(stderr, "%s: the first event is not the file version brain.Event:2\n", path);
      failed = 1;
    }
  }
  mg_summary_log_free(log);
  return failed;
}

#endif
