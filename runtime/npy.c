/*
** npy.c - NumPy .npy files, format versions 1.0-3.0: float32 and float64, C order, written
** little-endian (big-endian '>f4'/'>f8' files are read too, byte-swapped; Fortran order is
** read as a transposed copy). Malformed input is an error, never a crash: the header is
** parsed with explicit bounds. Saving goes through fileio.c (the old file survives a failure).
*/
#include "mg_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static const char MAGIC[6] = { '\x93', 'N', 'U', 'M', 'P', 'Y' };

/* The .npy header of 't' (magic, version 1.0, length, dict padded to 64 bytes) into 'out'
** ('MG_NPY_HEADER_MAX' bytes); returns its length. */
size_t mg_npy_header(const mg_tensor *t, unsigned char *out) {
  char hdr[512], shape[400] = "";                    /* "" for a 0-d tensor: shape () */
  int k = 0;
  for (int i = 0; i < t->ndim; i++)
    k += snprintf(shape + k, sizeof shape - (size_t)k, "%lld,%s", (long long)t->shape[i],
                  (t->ndim > 1 && i < t->ndim - 1) ? " " : "");
  if (t->ndim > 1) shape[k - 1] = '\0';              /* "2, 3" not "2, 3," */
  int n = snprintf(hdr, sizeof hdr, "{'descr': '<%s', 'fortran_order': False, 'shape': (%s), }",
                   t->dtype == MG_F64 ? "f8" : "f4", shape);
  int total = 10 + n + 1;
  int pad = (64 - total % 64) % 64;                  /* header ends on a 64-byte boundary */
  memset(hdr + n, ' ', (size_t)pad);
  hdr[n + pad] = '\n';
  uint16_t hlen = (uint16_t)(n + pad + 1);
  unsigned char ver[4] = { 1, 0, (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8) };
  memcpy(out, MAGIC, 6);
  memcpy(out + 6, ver, 4);
  memcpy(out + 10, hdr, hlen);
  return 10 + (size_t)hlen;
}

mg_status mg_npy_save(mg_ctx *C, mg_tensor *t, const char *path) {
  unsigned char hdr[MG_NPY_HEADER_MAX];
  size_t hlen = mg_npy_header(t, hdr);
  mg_tensor *c = NULL;
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_contiguous(C, t, &c);
  mg_no_grad_exit(C);
  if (st != MG_OK) return st;
  mg_wfile w;                                         /* a temporary renamed over 'path' */
  st = mg_wfile_open(C, "save", path, &w);
  if (st != MG_OK) { mg_tensor_release(c); return st; }
  size_t bytes = (size_t)mg_tensor_numel(c) * mg_dtype_size(c->dtype);
  errno = 0;
  bool ok = fwrite(hdr, 1, hlen, w.f) == hlen && fwrite(mg_tensor_data(c), 1, bytes, w.f) == bytes;
  mg_tensor_release(c);
  return mg_wfile_commit(C, "save", path, &w, ok);
}

/* ---------------------------------------------------------------- header parsing */

typedef struct { const char *p, *end; } cursor;

static void skipws(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static bool eat(cursor *c, char ch) {
  skipws(c);
  if (c->p < c->end && *c->p == ch) { c->p++; return true; }
  return false;
}

/* A quoted string into 'buf'; a NUL inside is malformed (it would cut the C string short:
** '<f4\0junk' must not read as '<f4'). */
static bool str(cursor *c, char *buf, size_t n) {
  skipws(c);
  if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return false;
  char q = *c->p++;
  size_t k = 0;
  while (c->p < c->end && *c->p != q) {
    if (k + 1 >= n || *c->p == '\0') return false;
    buf[k++] = *c->p++;
  }
  if (c->p >= c->end) return false;
  c->p++;
  buf[k] = '\0';
  return true;
}

static bool word(cursor *c, const char *w) {
  skipws(c);
  size_t n = strlen(w);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0) return false;
  c->p += n;
  return true;
}

/* A shape tuple: '*nd' gets the number of dims (which may exceed MG_MAXDIM: only the first
** MG_MAXDIM are stored, so a valid deep array is told apart from a malformed header). */
static bool tuple(cursor *c, int *nd, int64_t *shape) {
  if (!eat(c, '(')) return false;
  *nd = 0;
  for (;;) {
    skipws(c);
    if (eat(c, ')')) return true;
    if (*nd >= 1024 || c->p >= c->end || *c->p < '0' || *c->p > '9') return false;
    int64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
      if (v > (INT64_MAX - 9) / 10) return false;
      v = v * 10 + (*c->p++ - '0');
    }
    if (*nd < MG_MAXDIM) shape[*nd] = v;
    ++*nd;
    if (!eat(c, ',')) { return eat(c, ')'); }
  }
}

/* Reverse the bytes of each 'size'-byte element of 'p' ('n' elements). */
static void byteswap(unsigned char *p, int64_t n, size_t size) {
  for (int64_t i = 0; i < n; i++, p += size)
    for (size_t a = 0, b = size - 1; a < b; a++, b--) {
      unsigned char x = p[a];
      p[a] = p[b];
      p[b] = x;
    }
}

static mg_status bad(mg_ctx *C, const char *why) {
  return mg_fail(C, MG_EFORMAT, "load: malformed .npy file (%s)", why);
}

mg_status mg_npy_parse(mg_ctx *C, const void *buf, size_t len, mg_tensor **out) {
  const unsigned char *b = buf;
  if (len < 10 || memcmp(b, MAGIC, 6) != 0) return bad(C, "no NUMPY magic");
  size_t hlen, off;
  if (b[6] == 1) { hlen = b[8] | (size_t)b[9] << 8; off = 10; }
  else if (b[6] == 2 || b[6] == 3) {
    if (len < 12) return bad(C, "truncated header");
    hlen = b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    off = 12;
  } else return bad(C, "unknown format version");
  if (hlen > len - off) return bad(C, "truncated header");
  cursor c = { (const char *)b + off, (const char *)b + off + hlen };
  char key[32], descr[16] = "";
  int nd = -1, fortran = -1;
  int64_t shape[MG_MAXDIM];
  if (!eat(&c, '{')) return bad(C, "header is not a dict");
  while (!eat(&c, '}')) {
    if (!str(&c, key, sizeof key) || !eat(&c, ':')) return bad(C, "bad header entry");
    if (strcmp(key, "descr") == 0) { if (!str(&c, descr, sizeof descr)) return bad(C, "bad descr"); }
    else if (strcmp(key, "fortran_order") == 0) {
      if (word(&c, "True")) fortran = 1;
      else if (word(&c, "False")) fortran = 0;
      else return bad(C, "bad fortran_order");
    } else if (strcmp(key, "shape") == 0) { if (!tuple(&c, &nd, shape)) return bad(C, "bad shape"); }
    else return bad(C, "unknown header key");
    if (!eat(&c, ',')) { if (!eat(&c, '}')) return bad(C, "bad header"); break; }
  }
  if (nd < 0 || fortran < 0 || descr[0] == '\0') return bad(C, "missing header key");
  mg_dtype dt;
  bool swap = descr[0] == '>';                       /* big-endian: swapped after the copy */
  if (strcmp(descr, "<f4") == 0 || strcmp(descr, ">f4") == 0) dt = MG_F32;
  else if (strcmp(descr, "<f8") == 0 || strcmp(descr, ">f8") == 0) dt = MG_F64;
  else return mg_fail(C, MG_EFORMAT, "load: unsupported dtype '%s' (float32 '<f4'/'>f4' and "
                      "float64 '<f8'/'>f8' only)", descr);
  if (nd > MG_MAXDIM)
    return mg_fail(C, MG_EFORMAT, "load: more than %d dimensions (the array has %d)",
                   MG_MAXDIM, nd);
  int64_t n = mg_shape_numel(nd, shape);
  if (n < 0) return bad(C, "shape too large");
  size_t bytes = (size_t)n * mg_dtype_size(dt);
  if (len - off - hlen != bytes) return bad(C, "data size does not match the shape");
  int64_t sh[MG_MAXDIM];
  for (int i = 0; i < nd; i++) sh[i] = fortran ? shape[nd - 1 - i] : shape[i];
  mg_tensor *t = NULL, *v = NULL;
  mg_status st = mg_tensor_empty(C, dt, nd, sh, &t);
  if (st != MG_OK) return st;
  memcpy(mg_tensor_data(t), b + off + hlen, bytes);
  if (swap) byteswap(mg_tensor_data(t), n, mg_dtype_size(dt));
  if (!fortran || nd < 2) { *out = t; return MG_OK; }
  int perm[MG_MAXDIM];                               /* reversed dims: a view, then a copy */
  for (int i = 0; i < nd; i++) perm[i] = nd - 1 - i;
  mg_no_grad_enter(C);
  st = mg_tensor_permute(C, t, perm, &v);
  mg_tensor_release(t);
  if (st == MG_OK) { st = mg_tensor_contiguous(C, v, out); mg_tensor_release(v); }
  mg_no_grad_exit(C);
  return st;
}

mg_status mg_npy_load(mg_ctx *C, const char *path, mg_tensor **out) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return mg_fail(C, MG_EIO, "load: cannot open '%s' (%s)", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {   /* a directory opens too */
    fclose(f);
    return mg_fail(C, MG_EIO, "load: '%s' is not a regular file", path);
  }
  long len = -1;
  if (fseek(f, 0, SEEK_END) == 0) len = ftell(f);
  if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return mg_fail(C, MG_EIO, "load: cannot read '%s'", path);
  }
  char *buf = malloc(len ? (size_t)len : 1);
  if (buf == NULL) { fclose(f); return mg_fail(C, MG_ENOMEM, "load: out of memory reading '%s'", path); }
  size_t got = fread(buf, 1, (size_t)len, f);
  fclose(f);
  mg_status st = got == (size_t)len ? mg_npy_parse(C, buf, (size_t)len, out)
                                    : mg_fail(C, MG_EIO, "load: cannot read '%s'", path);
  free(buf);
  if (st == MG_EFORMAT) {                            /* name the file in the message */
    char msg[sizeof C->errmsg];
    snprintf(msg, sizeof msg, "%s", C->errmsg);
    mg_fail(C, st, "%s: '%s'", msg, path);
  }
  return st;
}
