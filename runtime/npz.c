/*
** npz.c - NumPy .npz archives (numpy.savez / savez_compressed): a zip file whose members are
** '<name>.npy' images, read and written by libzip; the members go through npy.c's header
** writer and parser. Saving builds the archive under a temporary name beside the target
** (fileio.c's 'mg_tmpfile_*': libzip writes by file name) and renames it over the target only
** once libzip has closed it without error.
*/
#include "mg_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zip.h>

/* The .npy image of 't' in a new buffer (length in '*n'); NULL when out of memory. */
static unsigned char *npy_image(mg_ctx *C, mg_tensor *t, size_t *n) {
  mg_tensor *c = NULL;
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_contiguous(C, t, &c);
  mg_no_grad_exit(C);
  if (st != MG_OK) return NULL;
  unsigned char hdr[MG_NPY_HEADER_MAX];
  size_t hlen = mg_npy_header(c, hdr);
  size_t bytes = (size_t)mg_tensor_numel(c) * mg_dtype_size(c->dtype);
  unsigned char *img = malloc(hlen + bytes);
  if (img != NULL) {
    memcpy(img, hdr, hlen);
    if (bytes) memcpy(img + hlen, mg_tensor_data(c), bytes);
    *n = hlen + bytes;
  }
  mg_tensor_release(c);
  return img;
}

/* Add every tensor of 's' to 'za' as '<name>.npy'; false with the reason in 'why'. */
static bool add_members(mg_ctx *C, zip_t *za, const mg_tensor_dict *s, bool compressed, char *why,
                        size_t nwhy) {
  for (int i = 0; i < s->n; i++) {
    size_t n = 0;
    unsigned char *img = npy_image(C, s->tensors[i], &n);
    if (img == NULL) { snprintf(why, nwhy, "out of memory"); return false; }
    zip_source_t *src = zip_source_buffer(za, img, n, 1);   /* frees 'img' when done */
    if (src == NULL) { free(img); snprintf(why, nwhy, "%s", zip_strerror(za)); return false; }
    size_t len = strlen(s->names[i]);
    char *member = malloc(len + 5);
    if (member == NULL) { zip_source_free(src); snprintf(why, nwhy, "out of memory"); return false; }
    memcpy(member, s->names[i], len);
    memcpy(member + len, ".npy", 5);
    zip_int64_t idx = zip_file_add(za, member, src, ZIP_FL_ENC_UTF_8);
    free(member);
    if (idx < 0) { zip_source_free(src); snprintf(why, nwhy, "%s", zip_strerror(za)); return false; }
    if (zip_set_file_compression(za, (zip_uint64_t)idx, compressed ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0) != 0) {
      snprintf(why, nwhy, "%s", zip_strerror(za));
      return false;
    }
  }
  return true;
}

mg_status mg_npz_save(mg_ctx *C, const mg_tensor_dict *s, bool compressed, const char *path) {
  if (s->n == 0) return mg_fail(C, MG_EARG, "save_npz: no tensors to save");   /* libzip drops empty archives */
  for (int i = 0; i < s->n; i++)
    if (s->names[i][0] == '\0') return mg_fail(C, MG_EARG, "save_npz: a tensor has an empty name");
  char *tmp = NULL;
  mg_status st = mg_tmpfile_name(C, "save_npz", path, &tmp);
  if (st != MG_OK) return st;
  int zerr = 0;
  zip_t *za = zip_open(tmp, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
  char why[256] = "";
  if (za == NULL) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, zerr);
    snprintf(why, sizeof why, "%s", zip_error_strerror(&ze));
    zip_error_fini(&ze);
  } else if (!add_members(C, za, s, compressed, why, sizeof why)) {
    zip_discard(za);
  } else if (zip_close(za) != 0) {                  /* the archive is written here */
    snprintf(why, sizeof why, "%s", zip_strerror(za));
    zip_discard(za);
  }
  if (why[0] != '\0') {
    mg_tmpfile_discard(tmp);
    return mg_fail(C, strcmp(why, "out of memory") == 0 ? MG_ENOMEM : MG_EIO,
                   "save_npz: error writing '%s' (%s)", path, why);
  }
  return mg_tmpfile_commit(C, "save_npz", tmp, path);
}

/* ---------------------------------------------------------------- reading */

/* Member 'i' of 'za' ('sb' its stat) parsed as .npy into '*out'. */
static mg_status read_member(mg_ctx *C, zip_t *za, zip_uint64_t i, const zip_stat_t *sb,
                             const char *path, mg_tensor **out) {
  if ((sb->valid & ZIP_STAT_SIZE) == 0 || sb->size > (zip_uint64_t)SIZE_MAX - 1)
    return mg_fail(C, MG_EFORMAT, "load_npz: '%s': member '%s' has no usable size", path, sb->name);
  size_t n = (size_t)sb->size;
  unsigned char *buf = malloc(n ? n : 1);
  if (buf == NULL) return mg_fail(C, MG_ENOMEM, "load_npz: out of memory reading '%s' member '%s'", path, sb->name);
  zip_file_t *zf = zip_fopen_index(za, i, 0);
  size_t got = 0;
  while (zf != NULL && got < n) {
    zip_int64_t r = zip_fread(zf, buf + got, n - got);
    if (r <= 0) break;
    got += (size_t)r;
  }
  mg_status st;
  if (zf == NULL || got != n) {
    st = mg_fail(C, MG_EFORMAT, "load_npz: '%s': cannot read member '%s' (%s)", path, sb->name,
                 zf ? zip_file_strerror(zf) : zip_strerror(za));
  } else if ((st = mg_npy_parse(C, buf, n, out)) != MG_OK) {
    char msg[sizeof C->errmsg];                     /* "load: malformed ..." -> name the member */
    const char *m = mg_errmsg(C);
    snprintf(msg, sizeof msg, "%s", strncmp(m, "load: ", 6) == 0 ? m + 6 : m);
    mg_fail(C, st, "load_npz: '%s': member '%s': %s", path, sb->name, msg);
  }
  if (zf != NULL) zip_fclose(zf);
  free(buf);
  return st;
}

/* Every '.npy' member of 'za' into 's'. */
static mg_status read_members(mg_ctx *C, zip_t *za, const char *path, mg_tensor_dict *s) {
  zip_int64_t n = zip_get_num_entries(za, 0);
  for (zip_int64_t i = 0; i < n; i++) {
    zip_stat_t sb;
    if (zip_stat_index(za, (zip_uint64_t)i, 0, &sb) != 0 || (sb.valid & ZIP_STAT_NAME) == 0)
      return mg_fail(C, MG_EFORMAT, "load_npz: '%s': cannot read entry %lld (%s)", path,
                     (long long)i, zip_strerror(za));
    size_t len = strlen(sb.name);
    if (len > 0 && sb.name[len - 1] == '/') continue;        /* a directory entry */
    if (len < 5 || strcmp(sb.name + len - 4, ".npy") != 0)
      return mg_fail(C, MG_EFORMAT, "load_npz: '%s': member '%s' is not a .npy file", path, sb.name);
    char *name = strndup(sb.name, len - 4);
    if (name == NULL) return mg_fail(C, MG_ENOMEM, "load_npz: out of memory");
    for (int k = 0; k < s->n; k++)
      if (strcmp(s->names[k], name) == 0) {
        free(name);
        return mg_fail(C, MG_EFORMAT, "load_npz: '%s': member '%s' appears twice", path, sb.name);
      }
    mg_tensor *t = NULL;
    mg_status st = read_member(C, za, (zip_uint64_t)i, &sb, path, &t);
    if (st == MG_OK) st = mg_tensor_dict_push(C, s, name, t);
    free(name);
    if (st != MG_OK) return st;
  }
  return MG_OK;
}

mg_status mg_npz_load(mg_ctx *C, const char *path, mg_tensor_dict *out) {
  struct stat st_;
  if (stat(path, &st_) != 0) return mg_fail(C, MG_EIO, "load_npz: cannot open '%s' (%s)", path, strerror(errno));
  if (!S_ISREG(st_.st_mode)) return mg_fail(C, MG_EIO, "load_npz: '%s' is not a regular file", path);
  int zerr = 0;
  zip_t *za = zip_open(path, ZIP_RDONLY, &zerr);
  if (za == NULL) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, zerr);
    mg_status st = mg_fail(C, zerr == ZIP_ER_OPEN || zerr == ZIP_ER_READ ? MG_EIO : MG_EFORMAT,
                           "load_npz: '%s' is not a readable zip archive (%s)", path, zip_error_strerror(&ze));
    zip_error_fini(&ze);
    return st;
  }
  mg_tensor_dict s = { 0 };
  mg_status st = read_members(C, za, path, &s);
  zip_discard(za);                                  /* read-only: nothing to write back */
  if (st != MG_OK) { mg_tensor_dict_free(&s); return st; }
  *out = s;
  return MG_OK;
}
