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
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mg.h"

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
    mg_tensor *t = d->tensors[k];
    if (t == NULL || d->names[k] == NULL) broken("a tensor or name missing", C);
    int nd = mg_tensor_ndim(t);
    mg_dtype dt = mg_tensor_dtype(t);
    if (nd < 0 || nd > MG_MAXDIM || (dt != MG_F32 && dt != MG_F64))
      broken("a tensor of impossible rank or dtype", C);
    if (!mg_tensor_is_contiguous(t)) broken("a non-contiguous result", C);
    int64_t n = mg_tensor_numel(t);
    if (n < 0) broken("a negative size", C);
    total += (size_t)n * 2;                /* at least 2 bytes per element in the file */
    double sum = 0;                       /* reads every element: out of bounds shows in ASan */
    const char *p = mg_tensor_data(t);
    for (int64_t i = 0; i < n; i++)
      sum += dt == MG_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
    (void)sum;
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

/* Whole file into a new buffer (free it); NULL on error (message printed). */
static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) { perror(path); return NULL; }
  unsigned char *buf = NULL;
  size_t cap = 0;
  *len = 0;
  for (;;) {
    if (*len == cap) {
      unsigned char *nb = realloc(buf, cap = cap ? 2 * cap : 4096);
      if (nb == NULL) { free(buf); fclose(f); fprintf(stderr, "%s: out of memory\n", path); return NULL; }
      buf = nb;
    }
    size_t got = fread(buf + *len, 1, cap - *len, f);
    *len += got;
    if (got == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) { free(buf); fprintf(stderr, "%s: read error\n", path); return NULL; }
  return buf;
}

/* Replay one file: invariants always, the expectation its name carries. 0 if it passed. */
static int replay_file(mg_ctx *C, const char *path) {
  size_t len;
  unsigned char *buf = slurp(path, &len);
  if (buf == NULL) return 1;
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  mg_tensor_dict d = { 0 };
  bool ok = parse_checked(C, buf, len, &d);
  int failed = 0;
  if (strncmp(base, "bad_", 4) == 0 && ok) {
    fprintf(stderr, "%s: accepted, expected a rejection\n", path);
    failed = 1;
  } else if (strncmp(base, "ok_", 3) == 0) {
    if (!ok) {
      fprintf(stderr, "%s: rejected (%s), expected tensors\n", path, mg_errmsg(C));
      failed = 1;
    }
    for (int k = 0; k < d.n && !failed; k++) {   /* elements 0, 1, 2, ... in C order */
      mg_tensor *t = d.tensors[k];
      const char *p = mg_tensor_data(t);
      for (int64_t i = 0, n = mg_tensor_numel(t); i < n && !failed; i++) {
        double v = mg_tensor_dtype(t) == MG_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
        if (v != (double)i) {
          fprintf(stderr, "%s: '%s' element %lld is %g, expected %lld\n", path, d.names[k],
                  (long long)i, v, (long long)i);
          failed = 1;
        }
      }
    }
  }
  mg_tensor_dict_free(&d);
  if (mg_live_bytes(C) != 0) broken("storage alive after the tensors were released", C);
  free(buf);
  return failed;
}

/* Replay 'path' (a file, or every regular file of a directory). Counts into *n. */
static int replay_path(mg_ctx *C, const char *path, int *n) {
  struct stat sb;
  if (stat(path, &sb) != 0) { perror(path); return 1; }
  if (!S_ISDIR(sb.st_mode)) { ++*n; return replay_file(C, path); }
  DIR *d = opendir(path);
  if (d == NULL) { perror(path); return 1; }
  int failed = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    char sub[4096];
    if (e->d_name[0] == '.') continue;
    snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
    if (stat(sub, &sb) == 0 && S_ISREG(sb.st_mode)) { ++*n; failed |= replay_file(C, sub); }
  }
  closedir(d);
  return failed;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
    return 2;
  }
  mg_ctx *C = mg_ctx_new();
  if (C == NULL) { fprintf(stderr, "fuzz_safetensors: out of memory\n"); return 1; }
  int failed = 0, n = 0;
  for (int i = 1; i < argc; i++) failed |= replay_path(C, argv[i], &n);
  mg_ctx_close(C);
  if (n == 0) { fprintf(stderr, "fuzz_safetensors: no input files\n"); return 1; }
  printf("fuzz_safetensors: %d inputs replayed, %s\n", n, failed ? "FAILED" : "all as expected");
  return failed;
}

#endif
