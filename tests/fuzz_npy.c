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
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mg.h"

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
  int nd = mg_tensor_ndim(t);
  mg_dtype dt = mg_tensor_dtype(t);
  if (nd < 0 || nd > MG_MAXDIM || (dt != MG_F32 && dt != MG_F64))
    broken("a tensor of impossible rank or dtype", C);
  if (!mg_tensor_is_contiguous(t)) broken("a non-contiguous result", C);
  int64_t n = mg_tensor_numel(t);
  if (n < 0 || (size_t)n * mg_dtype_size(dt) > len) broken("more data than input", C);
  double sum = 0;                       /* reads every element: out of bounds shows in ASan */
  const char *p = mg_tensor_data(t);
  for (int64_t i = 0; i < n; i++)
    sum += dt == MG_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
  (void)sum;
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
  mg_tensor *t = parse_checked(C, buf, len);
  int failed = 0;
  if (strncmp(base, "bad_", 4) == 0 && t != NULL) {
    fprintf(stderr, "%s: accepted, expected a rejection\n", path);
    failed = 1;
  } else if (strncmp(base, "ok_", 3) == 0) {
    if (t == NULL) {
      fprintf(stderr, "%s: rejected (%s), expected a tensor\n", path, mg_errmsg(C));
      failed = 1;
    } else {                            /* elements 0, 1, 2, ... in C order */
      const char *p = mg_tensor_data(t);
      for (int64_t i = 0, n = mg_tensor_numel(t); i < n && !failed; i++) {
        double v = mg_tensor_dtype(t) == MG_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
        if (v != (double)i) {
          fprintf(stderr, "%s: element %lld is %g, expected %lld\n", path, (long long)i, v, (long long)i);
          failed = 1;
        }
      }
    }
  }
  mg_tensor_release(t);
  if (mg_live_bytes(C) != 0) broken("storage alive after the tensor was released", C);
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
  if (C == NULL) { fprintf(stderr, "fuzz_npy: out of memory\n"); return 1; }
  int failed = 0, n = 0;
  for (int i = 1; i < argc; i++) failed |= replay_path(C, argv[i], &n);
  mg_ctx_close(C);
  if (n == 0) { fprintf(stderr, "fuzz_npy: no input files\n"); return 1; }
  printf("fuzz_npy: %d inputs replayed, %s\n", n, failed ? "FAILED" : "all as expected");
  return failed;
}

#endif
