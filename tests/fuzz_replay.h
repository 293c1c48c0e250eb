/*
** fuzz_replay.h - the plain-program driver the fuzz targets share (tests/fuzz_npy.c,
** tests/fuzz_tfevents.c, tests/fuzz_safetensors.c): 'NAME_replay PATH...' runs the target on each file (directories:
** each regular file in them) and prints how many inputs it replayed.
**
** Include it once, outside MG_LIBFUZZER, after defining FUZZ_NAME (the program's name in
** messages, a string literal). The target then defines
**     static int replay_input(mg_ctx *C, const char *path, const unsigned char *buf, size_t len,
**                             int expect);
** which runs the target on the file's bytes 'buf' and returns 0 if it passed; 'expect' is
** what the file's name says (fuzz_expect), fuzz_verdict checks acceptance against it.
*/
#ifndef MG_FUZZ_REPLAY_H
#define MG_FUZZ_REPLAY_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mg.h"

static int replay_input(mg_ctx *C, const char *path, const unsigned char *buf, size_t len,
                        int expect);

/* Whole file into a new buffer (free it); NULL on error (message printed). */
static unsigned char *fuzz_slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) { perror(path); return NULL; }
  unsigned char *buf = NULL;
  size_t cap = 0;
  *len = 0;
  for (;;) {
    if (*len == cap) {
      cap = cap ? 2 * cap : 4096;
      unsigned char *nb = realloc(buf, cap);
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

/* What the file's name says of it: 'b' for 'bad_*' (must be rejected), 'o' for 'ok_*' (must
** be accepted), 0 for any other name (only the invariants). */
static int fuzz_expect(const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  if (strncmp(base, "bad_", 4) == 0) return 'b';
  if (strncmp(base, "ok_", 3) == 0) return 'o';
  return 0;
}

/* 1 (a message printed) when the input was accepted though its name says 'bad_*', or rejected
** though it says 'ok_*' ('what' is what an accepted one gives, for the message); else 0. */
static int fuzz_verdict(const char *path, int expect, int accepted, const char *what, const mg_ctx *C) {
  if (expect == 'b' && accepted) {
    fprintf(stderr, "%s: accepted, expected a rejection\n", path);
    return 1;
  }
  if (expect == 'o' && !accepted) {
    fprintf(stderr, "%s: rejected (%s), expected %s\n", path, mg_errmsg(C), what);
    return 1;
  }
  return 0;
}

/* Replay one file: invariants always, the expectation its name carries. 0 if it passed. */
static int replay_file(mg_ctx *C, const char *path) {
  size_t len;
  unsigned char *buf = fuzz_slurp(path, &len);
  if (buf == NULL) return 1;
  int failed = replay_input(C, path, buf, len, fuzz_expect(path));
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
  if (C == NULL) { fprintf(stderr, FUZZ_NAME ": out of memory\n"); return 1; }
  int failed = 0, n = 0;
  for (int i = 1; i < argc; i++) failed |= replay_path(C, argv[i], &n);
  mg_ctx_close(C);
  if (n == 0) { fprintf(stderr, FUZZ_NAME ": no input files\n"); return 1; }
  printf(FUZZ_NAME ": %d inputs replayed, %s\n", n, failed ? "FAILED" : "all as expected");
  return failed;
}

#endif
