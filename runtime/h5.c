/*
** h5.c - HDF5 files as dictionaries of named tensors, through libhdf5 (an optional
** component: without it, MG_HAVE_HDF5 is undefined and every call fails saying so). The
** layout of Keras's files (which groups and attributes mean what) is the Lua side's concern
** (bindings/moongrad/interop.lua); here a file is its numeric datasets, by path, and its
** string attributes. HDF5's own error printing is turned off for the duration of each call
** (and restored): failures come back as moongrad messages.
*/
#include "mg_impl.h"

#include <stdlib.h>

#ifdef MG_HAVE_HDF5

#include <errno.h>
#include <hdf5.h>
#include <sys/stat.h>

bool mg_h5_available(void) { return true; }

/* HDF5's automatic error printing, off between 'quiet' and 'loud'. */
typedef struct { H5E_auto2_t fn; void *data; } eprint;
static void quiet(eprint *e) {
  H5Eget_auto2(H5E_DEFAULT, &e->fn, &e->data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}
static void loud(const eprint *e) { H5Eset_auto2(H5E_DEFAULT, e->fn, e->data); }

/* ---------------------------------------------------------------- reading */

typedef struct {
  mg_ctx *C;
  const char *op, *path;
  mg_tensor_dict *d;
  mg_status st;
} walk;

static herr_t walk_fail(walk *w, mg_status st) {
  w->st = st;
  return -1;                                         /* stops the iteration */
}

/* A dataset of floats or integers as a float32 (float16/float32 data) or float64 tensor. */
static herr_t read_dataset(walk *w, hid_t ds, const char *name) {
  hid_t type = H5Dget_type(ds), space = H5Dget_space(ds);
  H5T_class_t cls = H5Tget_class(type);
  size_t size = H5Tget_size(type);
  int nd = H5Sget_simple_extent_ndims(space);
  herr_t r = 0;
  if ((cls == H5T_FLOAT || cls == H5T_INTEGER) && nd >= 0) {
    hsize_t dims[H5S_MAX_RANK];
    int64_t shape[MG_MAXDIM];
    if (nd > MG_MAXDIM) {
      r = walk_fail(w, mg_fail(w->C, MG_EFORMAT, "%s: '%s': dataset '%s' has %d dimensions, more than %d",
                               w->op, w->path, name, nd, MG_MAXDIM));
    } else {
      H5Sget_simple_extent_dims(space, dims, NULL);
      for (int i = 0; i < nd; i++) shape[i] = (int64_t)dims[i];
      mg_dtype dt = (cls == H5T_FLOAT && size <= 4) ? MG_F32 : MG_F64;
      mg_tensor *t = NULL;
      mg_status st = mg_tensor_empty(w->C, dt, nd, shape, &t);
      if (st == MG_OK && mg_tensor_numel(t) > 0 &&
          H5Dread(ds, dt == MG_F32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL,
                  H5P_DEFAULT, mg_tensor_data(t)) < 0) {
        mg_tensor_release(t);
        st = mg_fail(w->C, MG_EFORMAT, "%s: '%s': cannot read dataset '%s'", w->op, w->path, name);
      } else if (st == MG_OK) st = mg_tensor_dict_push(w->C, w->d, name, t);
      if (st != MG_OK) r = walk_fail(w, st);
    }
  }
  H5Sclose(space);
  H5Tclose(type);
  return r;
}

/* The attribute's strings (scalar or 1-d, fixed or variable length) joined by '\n' into a
** new string; NULL when it holds no strings. */
static char *attr_strings(hid_t a) {
  hid_t type = H5Aget_type(a), space = H5Aget_space(a);
  char *out = NULL;
  hssize_t n = H5Sget_simple_extent_npoints(space);
  if (H5Tget_class(type) == H5T_STRING && n >= 0 && n < (1 << 20)) {
    bool vlen = H5Tis_variable_str(type) > 0;
    size_t sz = vlen ? sizeof(char *) : H5Tget_size(type);
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_size(mem, vlen ? H5T_VARIABLE : sz);
    H5Tset_cset(mem, H5Tget_cset(type));
    char *buf = calloc((size_t)(n ? n : 1), sz);
    if (buf != NULL && H5Aread(a, mem, buf) >= 0) {
      size_t total = 1;
      for (hssize_t i = 0; i < n; i++)
        total += (vlen ? strlen(((char **)buf)[i] ? ((char **)buf)[i] : "") : strnlen(buf + i * sz, sz)) + 1;
      out = malloc(total);
      size_t k = 0;
      for (hssize_t i = 0; out && i < n; i++) {
        const char *s = vlen ? (((char **)buf)[i] ? ((char **)buf)[i] : "") : buf + i * sz;
        size_t len = vlen ? strlen(s) : strnlen(s, sz);
        if (i > 0) out[k++] = '\n';
        memcpy(out + k, s, len);
        k += len;
      }
      if (out) out[k] = '\0';
      if (vlen) H5Dvlen_reclaim(mem, space, H5P_DEFAULT, buf);
    }
    free(buf);
    H5Tclose(mem);
  }
  H5Sclose(space);
  H5Tclose(type);
  return out;
}

typedef struct { walk *w; const char *obj; } attrwalk;

static herr_t on_attr(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
  (void)info;
  attrwalk *aw = data;
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  if (a < 0) return 0;
  char *s = attr_strings(a);
  H5Aclose(a);
  if (s == NULL) return 0;                           /* not strings: not ours to read */
  size_t n = strlen(aw->obj) + strlen(name) + 2;
  char *key = malloc(n);
  mg_status st = MG_OK;
  if (key == NULL) st = mg_fail(aw->w->C, MG_ENOMEM, "%s: out of memory", aw->w->op);
  else {
    snprintf(key, n, "%s@%s", aw->obj, name);
    st = mg_tensor_dict_meta_push(aw->w->C, aw->w->d, key, s);
  }
  free(key);
  free(s);
  return st == MG_OK ? 0 : walk_fail(aw->w, st);
}

static herr_t read_attrs(walk *w, hid_t obj, const char *name) {
  attrwalk aw = { w, name };
  hsize_t idx = 0;
  return H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, &idx, on_attr, &aw) < 0 ? -1 : 0;
}

static herr_t on_link(hid_t root, const char *name, const H5L_info_t *info, void *data) {
  walk *w = data;
  if (info->type != H5L_TYPE_HARD) return 0;         /* soft and external links: skipped */
  hid_t obj = H5Oopen(root, name, H5P_DEFAULT);
  if (obj < 0) return walk_fail(w, mg_fail(w->C, MG_EFORMAT, "%s: '%s': cannot open '%s'", w->op, w->path, name));
  herr_t r = 0;
  H5I_type_t t = H5Iget_type(obj);
  if (t == H5I_DATASET) r = read_dataset(w, obj, name);
  if (r == 0 && (t == H5I_GROUP || t == H5I_DATASET)) r = read_attrs(w, obj, name);
  H5Oclose(obj);
  if (r < 0 && w->st == MG_OK)
    w->st = mg_fail(w->C, MG_EFORMAT, "%s: '%s': cannot read the attributes of '%s'", w->op, w->path, name);
  return r;
}

mg_status mg_h5_load(mg_ctx *C, const char *op, const char *path, mg_tensor_dict *out) {
  struct stat sb;
  if (stat(path, &sb) != 0) return mg_fail(C, MG_EIO, "%s: cannot open '%s' (%s)", op, path, strerror(errno));
  if (!S_ISREG(sb.st_mode)) return mg_fail(C, MG_EIO, "%s: '%s' is not a regular file", op, path);
  eprint e;
  quiet(&e);
  mg_status st = MG_OK;
  hid_t f = -1;
  if (H5Fis_hdf5(path) <= 0) st = mg_fail(C, MG_EFORMAT, "%s: '%s' is not an HDF5 file", op, path);
  else if ((f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0)
    st = mg_fail(C, MG_EFORMAT, "%s: cannot open the HDF5 file '%s'", op, path);
  mg_tensor_dict d = { 0 };
  if (st == MG_OK) {
    walk w = { C, op, path, &d, MG_OK };
    herr_t r = read_attrs(&w, f, "");               /* the root's: "@name" */
    if (r >= 0) r = H5Lvisit(f, H5_INDEX_NAME, H5_ITER_INC, on_link, &w);
    st = w.st;
    if (r < 0 && st == MG_OK) st = mg_fail(C, MG_EFORMAT, "%s: cannot read the HDF5 file '%s'", op, path);
    H5Fclose(f);
  }
  loud(&e);
  if (st != MG_OK) { mg_tensor_dict_free(&d); return st; }
  *out = d;
  return MG_OK;
}

/* ---------------------------------------------------------------- writing */

/* The group at 'path' ("" the root), created with its parents when missing. */
static hid_t group_at(hid_t f, const char *path) {
  if (path[0] == '\0') return H5Gopen2(f, "/", H5P_DEFAULT);
  hid_t g = H5Lexists(f, path, H5P_DEFAULT) > 0 ? H5Gopen2(f, path, H5P_DEFAULT) : -1;
  if (g >= 0) return g;
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  g = H5Gcreate2(f, path, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  H5Pclose(lcpl);
  return g;
}

/* A variable-length UTF-8 string attribute, as h5py writes 'attrs[k] = "text"'. */
static bool write_attr(hid_t f, const char *key, const char *value) {
  const char *at = strrchr(key, '@');
  if (at == NULL) return false;
  char *gpath = strndup(key, (size_t)(at - key));
  if (gpath == NULL) return false;
  hid_t g = group_at(f, gpath);
  free(gpath);
  if (g < 0) return false;
  hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  hid_t a = H5Acreate2(g, at + 1, type, space, H5P_DEFAULT, H5P_DEFAULT);
  bool ok = a >= 0 && H5Awrite(a, type, &value) >= 0;
  if (a >= 0) H5Aclose(a);
  H5Sclose(space);
  H5Tclose(type);
  H5Gclose(g);
  return ok;
}

static bool write_dataset(mg_ctx *C, hid_t f, const char *name, mg_tensor *t) {
  mg_tensor *c = NULL;
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_contiguous(C, t, &c);
  mg_no_grad_exit(C);
  if (st != MG_OK) return false;
  hsize_t dims[MG_MAXDIM];
  for (int i = 0; i < c->ndim; i++) dims[i] = (hsize_t)c->shape[i];
  hid_t space = c->ndim == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(c->ndim, dims, NULL);
  hid_t type = c->dtype == MG_F64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE;
  hid_t mem = c->dtype == MG_F64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT;
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t ds = H5Dcreate2(f, name, type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  bool ok = ds >= 0 && (mg_tensor_numel(c) == 0 ||
                        H5Dwrite(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, mg_tensor_data(c)) >= 0);
  if (ds >= 0 && H5Dclose(ds) < 0) ok = false;
  H5Pclose(lcpl);
  H5Sclose(space);
  mg_tensor_release(c);
  return ok;
}

/* The file is built in memory (HDF5's core driver, no backing store) and its image written
** through fileio.c's stdio writer: a disk error then never reaches HDF5 (a failed H5Fclose
** leaves libhdf5 1.10 with a half-closed file that crashes the process at exit). */
mg_status mg_h5_save(mg_ctx *C, const char *op, const mg_tensor_dict *d, const char *path) {
  eprint e;
  quiet(&e);
  const char *failed = NULL;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0 || H5Pset_fapl_core(fapl, (size_t)1 << 20, 0) < 0) failed = "the in-memory driver";
  hid_t f = failed ? -1 : H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  if (!failed && f < 0) failed = "creating the file";
  for (int i = 0; !failed && i < d->nmeta; i++)
    if (!write_attr(f, d->meta_keys[i], d->meta_values[i])) failed = d->meta_keys[i];
  for (int i = 0; !failed && i < d->n; i++)
    if (!write_dataset(C, f, d->names[i], d->tensors[i])) failed = d->names[i];
  void *img = NULL;
  ssize_t n = -1;
  if (!failed && (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0 || (n = H5Fget_file_image(f, NULL, 0)) < 0))
    failed = "the file image";
  if (!failed && (img = malloc(n ? (size_t)n : 1)) == NULL) failed = "out of memory";
  if (!failed && H5Fget_file_image(f, img, (size_t)n) != n) failed = "the file image";
  if (f >= 0) H5Fclose(f);
  if (fapl >= 0) H5Pclose(fapl);
  loud(&e);
  if (failed) {
    free(img);
    return mg_fail(C, strcmp(failed, "out of memory") == 0 ? MG_ENOMEM : MG_EIO,
                   "%s: error writing '%s' (HDF5 failed at '%s')", op, path, failed);
  }
  mg_wfile w;
  mg_status st = mg_wfile_open(C, op, path, &w);
  if (st == MG_OK) {
    errno = 0;
    bool ok = fwrite(img, 1, (size_t)n, w.f) == (size_t)n;
    st = mg_wfile_commit(C, op, path, &w, ok);
  }
  free(img);
  return st;
}

#else   /* built without libhdf5 */

bool mg_h5_available(void) { return false; }

mg_status mg_h5_load(mg_ctx *C, const char *op, const char *path, mg_tensor_dict *out) {
  (void)path;
  (void)out;
  return mg_fail(C, MG_ESTATE, "%s: moongrad was built without HDF5 (install libhdf5-dev and rebuild)", op);
}

mg_status mg_h5_save(mg_ctx *C, const char *op, const mg_tensor_dict *d, const char *path) {
  (void)d;
  (void)path;
  return mg_fail(C, MG_ESTATE, "%s: moongrad was built without HDF5 (install libhdf5-dev and rebuild)", op);
}

#endif
