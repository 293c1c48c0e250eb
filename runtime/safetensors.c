/*
** safetensors.c - sets of named tensors, and the safetensors format.
**
** A safetensors file: u64 little-endian N, N bytes of JSON (an object: each tensor's name maps
** to {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, byte offsets into the
** data that follows; "__metadata__" maps strings to strings), then the data. The JSON is read
** and written by cJSON. The reader checks everything before it allocates a tensor: the header
** length, that the header is one JSON object, each entry's dtype, shape and offsets, that the
** byte size matches the shape, and that the tensors tile the data exactly (no overlap, no gap,
** nothing past the end, nothing after the last tensor), as the reference implementation does.
*/
#include "mg_impl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_MAX 100000000u   /* the reference implementation's limit on N (100 MB) */
#define EXACT_MAX 9007199254740992.0   /* 2^53: integers a JSON number holds exactly */

/* ---------------------------------------------------------------- tensor sets */

void mg_tensor_dict_free(mg_tensor_dict *s) {
  for (int i = 0; i < s->n; i++) {
    free(s->names[i]);
    mg_tensor_release(s->tensors[i]);
  }
  for (int i = 0; i < s->nmeta; i++) {
    free(s->meta_keys[i]);
    free(s->meta_values[i]);
  }
  free(s->names);
  free(s->tensors);
  free(s->meta_keys);
  free(s->meta_values);
  memset(s, 0, sizeof *s);
}

/* Append 'name' (copied) and 't' (owned by the set from now on, released on failure). */
mg_status mg_tensor_dict_push(mg_ctx *C, mg_tensor_dict *s, const char *name, mg_tensor *t) {
  char **nn = realloc(s->names, (size_t)(s->n + 1) * sizeof *nn);
  if (nn != NULL) s->names = nn;
  mg_tensor **nt = nn ? realloc(s->tensors, (size_t)(s->n + 1) * sizeof *nt) : NULL;
  if (nt != NULL) s->tensors = nt;
  char *copy = nt ? strdup(name) : NULL;
  if (copy == NULL) {
    mg_tensor_release(t);
    return mg_fail(C, MG_ENOMEM, "out of memory");
  }
  s->names[s->n] = copy;
  s->tensors[s->n++] = t;
  return MG_OK;
}

mg_status mg_tensor_dict_meta_push(mg_ctx *C, mg_tensor_dict *s, const char *k, const char *v) {
  char **nk = realloc(s->meta_keys, (size_t)(s->nmeta + 1) * sizeof *nk);
  if (nk != NULL) s->meta_keys = nk;
  char **nv = nk ? realloc(s->meta_values, (size_t)(s->nmeta + 1) * sizeof *nv) : NULL;
  if (nv != NULL) s->meta_values = nv;
  char *ck = nv ? strdup(k) : NULL, *cv = ck ? strdup(v) : NULL;
  if (cv == NULL) {
    free(ck);
    return mg_fail(C, MG_ENOMEM, "out of memory");
  }
  s->meta_keys[s->nmeta] = ck;
  s->meta_values[s->nmeta++] = cv;
  return MG_OK;
}

/* ---------------------------------------------------------------- dtypes */

typedef enum { DT_F32, DT_F64, DT_F16, DT_BF16, DT_UNSUPPORTED, DT_UNKNOWN } stdtype;

/* The dtypes of the format that moongrad does not hold (refused by name, not as unknown). */
static const char *const UNSUPPORTED[] = { "BOOL", "U8", "I8", "U16", "I16", "U32", "I32",
  "U64", "I64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", NULL };

static stdtype dtype_of(const char *s, size_t *esize) {
  if (strcmp(s, "F32") == 0) { *esize = 4; return DT_F32; }
  if (strcmp(s, "F64") == 0) { *esize = 8; return DT_F64; }
  if (strcmp(s, "F16") == 0) { *esize = 2; return DT_F16; }
  if (strcmp(s, "BF16") == 0) { *esize = 2; return DT_BF16; }
  for (int i = 0; UNSUPPORTED[i]; i++)
    if (strcmp(s, UNSUPPORTED[i]) == 0) return DT_UNSUPPORTED;
  return DT_UNKNOWN;
}

/* IEEE half -> float (exact: every half is a float). */
static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);          /* inf, nan */
  else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);  /* normal: bias 15 -> 127 */
  else if (man == 0) bits = sign;                                      /* +-0 */
  else {                                                               /* subnormal: normalize */
    int e = -1;
    do { man <<= 1; e++; } while ((man & 0x400) == 0);
    bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* ---------------------------------------------------------------- reading */

typedef struct {
  const char *name;           /* borrowed from the cJSON tree */
  stdtype dt;
  int ndim;
  int64_t shape[MG_MAXDIM];
  uint64_t begin, end;        /* bytes into the data */
} entry;

typedef struct {
  mg_ctx *C;
  const char *file;           /* for messages */
} reader;

static mg_status bad(reader *r, const char *fmt, ...) {
  char why[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  return mg_fail(r->C, MG_EFORMAT, "load_tensors: malformed safetensors file '%s' (%s)", r->file, why);
}

/* A JSON number that is a non-negative integer below 2^53, into '*v'. */
static bool json_uint(const cJSON *j, uint64_t *v) {
  if (!cJSON_IsNumber(j)) return false;
  double d = j->valuedouble;
  if (!(d >= 0 && d <= EXACT_MAX) || d != (double)(uint64_t)d) return false;
  *v = (uint64_t)d;
  return true;
}

/* "[2,3]" into 'buf' (cut short when long); returns 'buf'. */
static const char *shape_text(int nd, const int64_t *shape, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < nd && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? "," : "", (long long)shape[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}

/* One tensor entry of the header, checked on its own. */
static mg_status read_entry(reader *r, const cJSON *j, entry *e) {
  e->name = j->string;
  if (!cJSON_IsObject(j)) return bad(r, "entry '%s' is not an object", e->name);
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
  const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
  const cJSON *off = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
  if (!cJSON_IsString(dt)) return bad(r, "tensor '%s' has no dtype string", e->name);
  if (!cJSON_IsArray(sh)) return bad(r, "tensor '%s' has no shape array", e->name);
  if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2)
    return bad(r, "tensor '%s' has no data_offsets pair", e->name);
  size_t esize = 0;
  e->dt = dtype_of(dt->valuestring, &esize);
  if (e->dt == DT_UNSUPPORTED)
    return mg_fail(r->C, MG_EFORMAT, "load_tensors: '%s': tensor '%s' has dtype %s (only F32, F64, "
                   "F16 and BF16 are read)", r->file, e->name, dt->valuestring);
  if (e->dt == DT_UNKNOWN) return bad(r, "tensor '%s' has unknown dtype '%.40s'", e->name, dt->valuestring);
  int nd = cJSON_GetArraySize(sh);
  if (nd > MG_MAXDIM) return bad(r, "tensor '%s' has %d dimensions, more than %d", e->name, nd, MG_MAXDIM);
  e->ndim = nd;
  int k = 0;
  for (const cJSON *d = sh->child; d; d = d->next, k++) {
    uint64_t v;
    if (!json_uint(d, &v)) return bad(r, "tensor '%s' has a bad shape", e->name);
    e->shape[k] = (int64_t)v;
  }
  if (!json_uint(off->child, &e->begin) || !json_uint(off->child->next, &e->end) || e->end < e->begin)
    return bad(r, "tensor '%s' has bad data_offsets", e->name);
  int64_t n = mg_shape_numel(nd, e->shape);
  if (n < 0 || (uint64_t)n > UINT64_MAX / esize) return bad(r, "tensor '%s' is too large", e->name);
  if ((uint64_t)n * esize != e->end - e->begin)
    return bad(r, "tensor '%s' of shape %s and dtype %s needs %llu bytes, its data_offsets give %llu",
               e->name, shape_text(nd, e->shape, (char[160]){ 0 }, 160), dt->valuestring,
               (unsigned long long)((uint64_t)n * esize), (unsigned long long)(e->end - e->begin));
  return MG_OK;
}

static int by_begin(const void *a, const void *b) {
  const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

/* The tensors must tile the 'size' data bytes: sorted by begin, each starts where the last
** ended, the first at 0, the last ends at 'size'. */
static mg_status check_tiling(reader *r, entry *es, int n, uint64_t size) {
  entry **order = malloc((size_t)(n ? n : 1) * sizeof *order);
  if (order == NULL) return mg_fail(r->C, MG_ENOMEM, "load_tensors: out of memory");
  for (int i = 0; i < n; i++) order[i] = &es[i];
  qsort(order, (size_t)n, sizeof *order, by_begin);
  mg_status st = MG_OK;
  uint64_t at = 0;
  const char *prev = NULL;
  for (int i = 0; i < n && st == MG_OK; i++) {
    entry *e = order[i];
    if (e->begin < at) st = bad(r, "tensors '%s' and '%s' overlap", prev, e->name);
    else if (e->begin > at) st = bad(r, "bytes %llu..%llu of the data belong to no tensor",
                                     (unsigned long long)at, (unsigned long long)e->begin);
    else if (e->end > size)
      st = bad(r, "truncated data: tensor '%s' ends at byte %llu, the data has %llu", e->name,
               (unsigned long long)e->end, (unsigned long long)size);
    at = e->end;
    prev = e->name;
  }
  if (st == MG_OK && at < size)
    st = bad(r, "%llu bytes after the last tensor", (unsigned long long)(size - at));
  free(order);
  return st;
}

/* A new tensor holding entry 'e' of 'data' (copied, F16/BF16 converted to float32). */
static mg_status make_tensor(mg_ctx *C, const entry *e, const unsigned char *data, mg_tensor **out) {
  mg_dtype dt = e->dt == DT_F64 ? MG_F64 : MG_F32;
  mg_status st = mg_tensor_empty(C, dt, e->ndim, e->shape, out);
  if (st != MG_OK) return st;
  const unsigned char *p = data + e->begin;
  int64_t n = mg_tensor_numel(*out);
  float *f = mg_tensor_data(*out);
  if (e->dt == DT_F32 || e->dt == DT_F64) memcpy(mg_tensor_data(*out), p, e->end - e->begin);
  else if (e->dt == DT_F16) for (int64_t i = 0; i < n; i++) f[i] = half_to_float(le16(p + 2 * i));
  else for (int64_t i = 0; i < n; i++) {
    uint32_t bits = (uint32_t)le16(p + 2 * i) << 16;   /* bfloat16: a float's top half */
    memcpy(&f[i], &bits, 4);
  }
  return MG_OK;
}

static mg_status read_metadata(reader *r, const cJSON *m, mg_tensor_dict *s) {
  if (!cJSON_IsObject(m)) return bad(r, "__metadata__ is not an object");
  for (const cJSON *kv = m->child; kv; kv = kv->next) {
    if (!cJSON_IsString(kv)) return bad(r, "__metadata__ value of '%s' is not a string", kv->string);
    mg_status st = mg_tensor_dict_meta_push(r->C, s, kv->string, kv->valuestring);
    if (st != MG_OK) return st;
  }
  return MG_OK;
}

/* The checked entries of the header 'root' into 'es' (n of them), metadata into 's'. */
static mg_status read_header(reader *r, const cJSON *root, entry *es, int *n, mg_tensor_dict *s) {
  mg_status st = MG_OK;
  *n = 0;
  for (const cJSON *j = root->child; j && st == MG_OK; j = j->next) {
    for (const cJSON *k = root->child; k != j; k = k->next)
      if (strcmp(k->string, j->string) == 0) return bad(r, "name '%s' appears twice", j->string);
    if (strcmp(j->string, "__metadata__") == 0) {
      st = read_metadata(r, j, s);
    } else st = read_entry(r, j, &es[(*n)++]);
  }
  return st;
}

mg_status mg_safetensors_parse(mg_ctx *C, const void *buf, size_t len, const char *name,
                               mg_tensor_dict *out) {
  reader r = { C, name ? name : "(memory)" };
  const unsigned char *b = buf;
  if (len < 8) return bad(&r, "%zu bytes, too short for the 8-byte header length", len);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
  if (hlen > len - 8)
    return bad(&r, "header length %llu exceeds the %zu bytes that follow", (unsigned long long)hlen, len - 8);
  if (hlen > HEADER_MAX) return bad(&r, "header length %llu is over the 100 MB limit", (unsigned long long)hlen);
  if (hlen < 2) return bad(&r, "header length %llu is too small for a JSON object", (unsigned long long)hlen);
  if (memchr(b + 8, '\0', hlen) != NULL) return bad(&r, "the header holds a NUL byte");
  char *text = malloc(hlen + 1);                     /* cJSON wants the text NUL-terminated */
  if (text == NULL) return mg_fail(C, MG_ENOMEM, "load_tensors: out of memory reading '%s'", r.file);
  memcpy(text, b + 8, hlen);
  text[hlen] = '\0';
  cJSON *root = cJSON_ParseWithLengthOpts(text, hlen + 1, NULL, 1);   /* nothing after it */
  free(text);
  if (root == NULL) return bad(&r, "the header is not valid JSON");
  mg_tensor_dict s = { 0 };
  entry *es = NULL;
  int n = 0;
  mg_status st = MG_OK;
  if (!cJSON_IsObject(root)) st = bad(&r, "the header is not a JSON object");
  else if ((es = malloc((size_t)(cJSON_GetArraySize(root) + 1) * sizeof *es)) == NULL)
    st = mg_fail(C, MG_ENOMEM, "load_tensors: out of memory reading '%s'", r.file);
  if (st == MG_OK) st = read_header(&r, root, es, &n, &s);
  if (st == MG_OK) st = check_tiling(&r, es, n, len - 8 - hlen);
  for (int i = 0; i < n && st == MG_OK; i++) {
    mg_tensor *t = NULL;
    st = make_tensor(C, &es[i], b + 8 + hlen, &t);
    if (st == MG_OK) st = mg_tensor_dict_push(C, &s, es[i].name, t);
  }
  free(es);
  cJSON_Delete(root);
  if (st != MG_OK) { mg_tensor_dict_free(&s); return st; }
  *out = s;
  return MG_OK;
}

mg_status mg_safetensors_load(mg_ctx *C, const char *path, mg_tensor_dict *out) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return mg_fail(C, MG_EIO, "load_tensors: cannot open '%s' (%s)", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return mg_fail(C, MG_EIO, "load_tensors: '%s' is not a regular file", path);
  }
  size_t len = (size_t)sb.st_size;
  void *map = NULL;
  if (len > 0) {
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      int e = errno;
      close(fd);
      return mg_fail(C, MG_EIO, "load_tensors: cannot map '%s' (%s)", path, strerror(e));
    }
  }
  close(fd);                                         /* the mapping stays valid */
  mg_status st = mg_safetensors_parse(C, len ? map : "", len, path, out);
  if (len > 0) munmap(map, len);
  return st;
}

/* ---------------------------------------------------------------- writing */

/* The JSON header for the contiguous tensors 'cs' of 's', padded with spaces to a multiple
** of 8 bytes (so the data starts aligned); a new string, length in '*n'. NULL: no memory. */
static char *header_json(const mg_tensor_dict *s, mg_tensor *const *cs, size_t *n) {
  cJSON *root = cJSON_CreateObject();
  bool ok = root != NULL;
  if (ok && s->nmeta > 0) {
    cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
    ok = m != NULL;
    for (int i = 0; ok && i < s->nmeta; i++)
      ok = cJSON_AddStringToObject(m, s->meta_keys[i], s->meta_values[i]) != NULL;
  }
  uint64_t at = 0;
  for (int i = 0; ok && i < s->n; i++) {
    const mg_tensor *t = cs[i];
    uint64_t bytes = (uint64_t)mg_tensor_numel(t) * mg_dtype_size(t->dtype);
    cJSON *e = cJSON_AddObjectToObject(root, s->names[i]);
    cJSON *sh = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
    ok = sh != NULL && cJSON_AddStringToObject(e, "dtype", t->dtype == MG_F64 ? "F64" : "F32");
    for (int d = 0; ok && d < t->ndim; d++) {
      cJSON *v = cJSON_CreateNumber((double)t->shape[d]);
      ok = v != NULL && cJSON_AddItemToArray(sh, v);
    }
    cJSON *off = ok ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
    cJSON *b = off ? cJSON_CreateNumber((double)at) : NULL;
    ok = b != NULL && cJSON_AddItemToArray(off, b);
    cJSON *en = ok ? cJSON_CreateNumber((double)(at + bytes)) : NULL;
    ok = en != NULL && cJSON_AddItemToArray(off, en);
    at += bytes;
  }
  char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (text == NULL) return NULL;
  size_t len = strlen(text), padded = (len + 7) / 8 * 8;
  char *out = realloc(text, padded + 1);
  if (out == NULL) { free(text); return NULL; }
  memset(out + len, ' ', padded - len);
  out[padded] = '\0';
  *n = padded;
  return out;
}

static mg_status check_names(mg_ctx *C, const mg_tensor_dict *s) {
  for (int i = 0; i < s->n; i++) {
    if (strcmp(s->names[i], "__metadata__") == 0)
      return mg_fail(C, MG_EARG, "save_tensors: '__metadata__' cannot name a tensor");
    if (s->names[i][0] == '\0') return mg_fail(C, MG_EARG, "save_tensors: a tensor has an empty name");
    for (int k = 0; k < i; k++)
      if (strcmp(s->names[k], s->names[i]) == 0)
        return mg_fail(C, MG_EARG, "save_tensors: the name '%s' is used twice", s->names[i]);
  }
  return MG_OK;
}

mg_status mg_safetensors_save(mg_ctx *C, const mg_tensor_dict *s, const char *path) {
  mg_status st = check_names(C, s);
  if (st != MG_OK) return st;
  mg_tensor **cs = calloc((size_t)(s->n ? s->n : 1), sizeof *cs);
  if (cs == NULL) return mg_fail(C, MG_ENOMEM, "save_tensors: out of memory");
  mg_no_grad_enter(C);
  for (int i = 0; i < s->n && st == MG_OK; i++) st = mg_tensor_contiguous(C, s->tensors[i], &cs[i]);
  mg_no_grad_exit(C);
  size_t hlen = 0;
  char *hdr = st == MG_OK ? header_json(s, cs, &hlen) : NULL;
  if (st == MG_OK && hdr == NULL) st = mg_fail(C, MG_ENOMEM, "save_tensors: out of memory");
  mg_wfile w;
  if (st == MG_OK) st = mg_wfile_open(C, "save_tensors", path, &w);
  if (st == MG_OK) {
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    errno = 0;
    bool ok = fwrite(le, 1, 8, w.f) == 8 && fwrite(hdr, 1, hlen, w.f) == hlen;
    for (int i = 0; ok && i < s->n; i++) {
      size_t bytes = (size_t)mg_tensor_numel(cs[i]) * mg_dtype_size(cs[i]->dtype);
      ok = fwrite(mg_tensor_data(cs[i]), 1, bytes, w.f) == bytes;
    }
    st = mg_wfile_commit(C, "save_tensors", path, &w, ok);
  }
  free(hdr);
  for (int i = 0; i < s->n; i++) mg_tensor_release(cs[i]);
  free(cs);
  return st;
}
