/*
** tensor.c - storage, tensor headers, creation and element access.
** A tensor is a strided view (shape, stride, offset, all in elements) over reference-counted
** storage; views made by ops_shape.c share the storage of their base.
*/
#include "mg_impl.h"

#include <stdlib.h>

const char *mg_dtype_name(mg_dtype dt) { return dt == MG_F64 ? "float64" : "float32"; }
size_t mg_dtype_size(mg_dtype dt) { return mg_dtsize(dt); }

/* ---------------------------------------------------------------- storage */

#define INLINE_MAX 256   /* data bytes allocated together with the storage header */

/* Small-object class of a storage with 'nbytes' of inline data. */
static int inline_class(size_t nbytes) {
  return nbytes <= 64 ? MG_SMALL_STORAGE64 : MG_SMALL_STORAGE256;
}

static mg_storage *storage_new(mg_ctx *C, size_t nbytes) {
  bool inl = nbytes <= INLINE_MAX;
  mg_storage *s = inl ? mg_pool_small_get(C->pool, inline_class(nbytes)) : malloc(sizeof *s);
  if (s == NULL) return NULL;
  if (inl) {
    s->data = s + 1;                 /* mg_storage is 8-aligned and a multiple of 8 bytes */
    s->cap = 0;
    mg_pool_account(C->pool, sizeof *s + nbytes + sizeof(mg_tensor), true);
  } else if ((s->data = mg_pool_alloc(C->pool, nbytes, &s->cap)) == NULL) {
    free(s);
    return NULL;
  }
  s->refs = 1;
  s->version = 0;
  s->nbytes = nbytes;
  s->pool = C->pool;
  s->release = NULL;
  s->release_ud = NULL;
  return s;
}

static void storage_release(mg_storage *s) {
  if (--s->refs > 0) return;
  if (s->data == s + 1) {                         /* inline: back to the pool's free list */
    mg_pool *p = s->pool;
    size_t nbytes = s->nbytes;                    /* 's' is gone once put back */
    mg_pool_small_put(p, inline_class(nbytes), s);
    mg_pool_account(p, sizeof *s + nbytes + sizeof(mg_tensor), false);
    return;
  }
  if (s->pool != NULL) mg_pool_free(s->pool, s->data, s->cap);
  else if (s->release != NULL) s->release(s->release_ud, s->data);
  free(s);
}

/* ---------------------------------------------------------------- shapes */

int64_t mg_shape_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  bool empty = false;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return -1;
    if (shape[i] == 0) { empty = true; continue; }   /* the other sizes still make strides */
    int64_t m;                                       /* keep bytes and strides in range */
    if (__builtin_mul_overflow(n, shape[i], &m) || m > INT64_MAX / 8) return -1;
    n = m;
  }
  return empty ? 0 : n;
}

void mg_contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
}

bool mg_same_shape(const mg_tensor *a, const mg_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

int mg_normdim(int dim, int ndim) {
  if (dim < 0) dim += ndim;
  return (dim < 0 || dim >= ndim) ? -1 : dim;
}

/* ---------------------------------------------------------------- headers */

mg_tensor *mg_view_new(mg_ctx *C, mg_storage *s, mg_dtype dt, int ndim, const int64_t *shape,
                       const int64_t *stride, int64_t offset) {
  mg_tensor *t = s->pool ? mg_pool_small_get(s->pool, MG_SMALL_TENSOR) : malloc(sizeof *t);
  (void)C;
  if (t == NULL) return NULL;
  t->refs = 1;
  t->dtype = dt;
  t->ndim = ndim;
  t->flags = 0;
  t->blind = 0;
  if (ndim > 0) {                       /* a 0-d shape may be NULL */
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    memcpy(t->stride, stride, (size_t)ndim * sizeof *stride);
  }
  t->offset = offset;
  t->storage = s;
  t->name = NULL;
  s->refs++;
  return t;
}

mg_tensor *mg_tensor_retain(mg_tensor *t) { return mg_ref(t); }

void mg_tensor_release(mg_tensor *t) {
  assert(t == NULL || !(t->flags & MG_TF_PLACED));   /* its memory is its caller's */
  if (t == NULL || --t->refs > 0) return;
  mg_storage *s = t->storage;
  if (t->flags & MG_TF_HOLLOW) mg_pool_account(s->pool, sizeof *t, false);
  if (t->name != NULL) free(t->name);           /* Variables only: no call for the others */
  if (s->pool) mg_pool_small_put(s->pool, MG_SMALL_TENSOR, t);   /* while 's' keeps the pool */
  else free(t);
  storage_release(s);
}

/* The context's zero-byte storage, with a new reference; NULL when out of memory. */
static mg_storage *hollow_storage(mg_ctx *C) {
  if (C->hollow == NULL) C->hollow = storage_new(C, 0);
  if (C->hollow != NULL) C->hollow->refs++;
  return C->hollow;
}

void mg_hollow_release(mg_ctx *C) {
  if (C->hollow != NULL) storage_release(C->hollow);
  C->hollow = NULL;
}

/* Only the blind references are left once this one goes, and nothing else sees the storage
** (no view shares it): nobody can read the values again. The header stays (the tape maps
** tensors by address and reads their shapes); one of the context's own pool, so that the
** header still goes back where it came from. */
void mg_tensor_release_reader(mg_ctx *C, mg_tensor *t) {
  if (t != NULL && t->blind > 0 && t->refs - 1 == t->blind) {
    mg_storage *s = t->storage;
    mg_storage *h = s->refs == 1 && s->pool == C->pool && s != C->hollow ? hollow_storage(C) : NULL;
    if (h != NULL) {
      mg_pool_account(C->pool, sizeof *t, true);    /* the header stays: storage_release */
      t->storage = h;                               /* counts it out with the storage */
      t->offset = 0;
      t->flags |= MG_TF_HOLLOW;
      storage_release(s);
    }
  }
  mg_tensor_release(t);
}

int mg_tensor_ndim(const mg_tensor *t) { return t->ndim; }
const int64_t *mg_tensor_shape(const mg_tensor *t) { return t->shape; }
const int64_t *mg_tensor_strides(const mg_tensor *t) { return t->stride; }
int64_t mg_tensor_numel(const mg_tensor *t) { return mg_shape_numel(t->ndim, t->shape); }
mg_dtype mg_tensor_dtype(const mg_tensor *t) { return t->dtype; }
void *mg_tensor_data(const mg_tensor *t) {
  return (char *)t->storage->data + t->offset * (int64_t)mg_dtype_size(t->dtype);
}

size_t mg_tensor_storage_bytes(const mg_tensor *t) { return t->storage->nbytes; }

bool mg_tensor_is_contiguous(const mg_tensor *t) {
  for (int i = 0; i < t->ndim; i++)
    if (t->shape[i] == 0) return true;              /* no elements: any strides will do */
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] == 1) continue;
    if (t->stride[i] != s) return false;
    s *= t->shape[i];
  }
  return true;
}

/* ---------------------------------------------------------------- creation */

/* 'fn' NULL: the message names no function (the caller's op does). */
static mg_status check_shape(mg_ctx *C, const char *fn, int ndim, const int64_t *shape,
                             int64_t *numel) {
  char b[128];
  const char *sep = fn ? ": " : "";
  if (fn == NULL) fn = "";
  if (ndim < 0 || ndim > MG_MAXDIM)
    return mg_fail(C, MG_ESHAPE, "%s%s%d dimensions (at most %d)", fn, sep, ndim, MG_MAXDIM);
  *numel = mg_shape_numel(ndim, shape);
  if (*numel < 0)
    return mg_fail(C, MG_ESHAPE, "%s%sinvalid shape %s (negative size or too many elements)", fn,
                   sep, mg_shapestr(b, sizeof b, ndim, shape));
  return MG_OK;
}

mg_status mg_tensor_empty_n(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape, int64_t n,
                            mg_tensor **out) {
  mg_storage *s = storage_new(C, (size_t)n * mg_dtsize(dt));
  if (s == NULL) {
    char b[128];
    return mg_fail(C, MG_ENOMEM, "out of memory allocating a %s tensor of shape %s (%lld elements)",
                   mg_dtype_name(dt), mg_shapestr(b, sizeof b, ndim, shape), (long long)n);
  }
  mg_tensor *t = mg_pool_small_get(C->pool, MG_SMALL_TENSOR);   /* mg_view_new, inlined */
  if (t == NULL) {
    storage_release(s);
    return mg_fail(C, MG_ENOMEM, "out of memory");
  }
  t->refs = 1;
  t->dtype = dt;
  t->ndim = ndim;
  t->flags = 0;
  t->blind = 0;
  t->offset = 0;
  t->storage = s;                       /* takes storage_new's reference */
  t->name = NULL;
  int64_t step = 1;                     /* the shape and contiguous strides in one pass */
  for (int d = ndim - 1; d >= 0; d--) {
    t->shape[d] = shape[d];
    t->stride[d] = step;
    step *= shape[d] > 0 ? shape[d] : 1;
  }
  *out = t;
  return MG_OK;
}

mg_status mg_tensor_empty(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape,
                          mg_tensor **out) {
  int64_t n = ndim >= 0 && ndim <= MG_MAXDIM ? mg_shape_numel(ndim, shape) : -1;
  if (n < 0) return check_shape(C, NULL, ndim, shape, &n);     /* sets the message */
  return mg_tensor_empty_n(C, dt, ndim, shape, n, out);
}

mg_status mg_tensor_zeros(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape,
                          mg_tensor **out) {
  mg_status st = mg_tensor_empty(C, dt, ndim, shape, out);
  if (st == MG_OK) memset((*out)->storage->data, 0, (*out)->storage->nbytes);
  return st;
}

mg_status mg_tensor_full(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape, double v,
                         mg_tensor **out) {
  mg_status st = mg_tensor_empty(C, dt, ndim, shape, out);
  if (st == MG_OK) mg_tensor_fill_(*out, v);
  return st;
}

mg_status mg_tensor_wrap(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape,
                         const int64_t *strides, void *data, mg_release_fn release, void *ud,
                         mg_tensor **out) {
  int64_t n, stride[MG_MAXDIM];
  mg_status st = check_shape(C, "wrap", ndim, shape, &n);
  if (st != MG_OK) return st;
  if (data == NULL && n > 0) return mg_fail(C, MG_EARG, "wrap: NULL data");
  if (strides) memcpy(stride, strides, (size_t)ndim * sizeof *stride);
  else mg_contiguous_strides(ndim, shape, stride);
  mg_storage *s = malloc(sizeof *s);
  if (s == NULL) return mg_fail(C, MG_ENOMEM, "out of memory");
  *s = (mg_storage){ .refs = 1, .data = data, .nbytes = (size_t)n * mg_dtype_size(dt),
                     .cap = 0, .pool = NULL, .release = release, .release_ud = ud };
  mg_tensor *t = mg_view_new(C, s, dt, ndim, shape, stride, 0);
  if (t == NULL) { free(s); return mg_fail(C, MG_ENOMEM, "out of memory"); }
  s->refs--;   /* the view holds the only reference */
  *out = t;
  return MG_OK;
}

/* ---------------------------------------------------------------- elements */

static int64_t elem_offset(const mg_tensor *t, const int64_t *idx) {
  int64_t o = t->offset;
  for (int i = 0; i < t->ndim; i++) o += idx[i] * t->stride[i];
  return o;
}

double mg_tensor_get(const mg_tensor *t, const int64_t *idx) {
  int64_t o = elem_offset(t, idx);
  return t->dtype == MG_F64 ? ((double *)t->storage->data)[o] : ((float *)t->storage->data)[o];
}

void mg_tensor_set(mg_tensor *t, const int64_t *idx, double v) {
  int64_t o = elem_offset(t, idx);
  mg_bump_version(t);
  if (t->dtype == MG_F64) ((double *)t->storage->data)[o] = v;
  else ((float *)t->storage->data)[o] = (float)v;
}

bool mg_any_equal(const mg_tensor *t, double v) {
  int64_t n = mg_tensor_numel(t), idx[MG_MAXDIM] = { 0 };
  for (int64_t i = 0; i < n; i++) {
    if (mg_tensor_get(t, idx) == v) return true;
    for (int d = t->ndim - 1; d >= 0 && ++idx[d] == t->shape[d]; d--) idx[d] = 0;
  }
  return false;
}

bool mg_any_nan(const mg_tensor *t) {
  int64_t n = mg_tensor_numel(t), idx[MG_MAXDIM] = { 0 };
  for (int64_t i = 0; i < n; i++) {
    double v = mg_tensor_get(t, idx);
    if (v != v) return true;
    for (int d = t->ndim - 1; d >= 0 && ++idx[d] == t->shape[d]; d--) idx[d] = 0;
  }
  return false;
}

void mg_tensor_bump_version(mg_tensor *t) { mg_bump_version(t); }
uint32_t mg_tensor_version(const mg_tensor *t) { return t->storage->version; }

void mg_tensor_set_variable(mg_tensor *t, bool on) {
  if (on) t->flags |= MG_TF_VARIABLE;
  else t->flags &= ~(uint32_t)MG_TF_VARIABLE;
}
bool mg_tensor_is_variable(const mg_tensor *t) { return mg_is_variable(t); }

const char *mg_tensor_name(const mg_tensor *t) { return t->name ? t->name : ""; }

mg_status mg_tensor_set_name(mg_tensor *t, const char *name) {
  char *c = strdup(name);
  if (c == NULL) return MG_ENOMEM;
  free(t->name);
  t->name = c;
  return MG_OK;
}
