/*
** png.c - PNG encoding of an image tensor through libpng, into memory (for TensorBoard's
** image summaries, summary.c).
*/
#include "mg_impl.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>

typedef struct membuf { unsigned char *p; size_t len, cap; bool failed; } membuf;

static void write_mem(png_structp png, png_bytep data, png_size_t n) {
  membuf *b = png_get_io_ptr(png);
  if (b->failed) return;
  if (b->len + n > b->cap) {
    size_t nc = b->cap ? b->cap : 4096;
    while (nc < b->len + n) nc *= 2;
    unsigned char *np = realloc(b->p, nc);
    if (np == NULL) { b->failed = true; png_error(png, "out of memory"); }
    b->p = np, b->cap = nc;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
}

static void flush_mem(png_structp png) { (void)png; }

/* The pixels of the (H, W[, C]) tensor 't', checked: a new H*W*C byte array, or NULL with
** the message set. */
static unsigned char *pixels(mg_ctx *C, const char *op, mg_tensor *t, int64_t *h, int64_t *w,
                             int *ch) {
  int nd = mg_tensor_ndim(t);
  const int64_t *sh = mg_tensor_shape(t);
  char buf[64];
  if (nd != 2 && !(nd == 3 && (sh[2] == 1 || sh[2] == 3 || sh[2] == 4))) {
    mg_fail(C, MG_ESHAPE, "%s: an image tensor has shape (H, W) or (H, W, C) with C 1, 3 or 4, got %s",
            op, mg_shapestr(buf, sizeof buf, nd, sh));
    return NULL;
  }
  if (sh[0] < 1 || sh[1] < 1 || sh[0] > INT32_MAX || sh[1] > INT32_MAX) {
    mg_fail(C, MG_ESHAPE, "%s: an image needs at least one pixel, got shape %s", op,
            mg_shapestr(buf, sizeof buf, nd, sh));
    return NULL;
  }
  *h = sh[0], *w = sh[1], *ch = nd == 3 ? (int)sh[2] : 1;
  mg_tensor *c = NULL;
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_contiguous(C, t, &c);
  mg_no_grad_exit(C);
  if (st != MG_OK) { mg_name_error(C, st, op); return NULL; }
  size_t n = (size_t)mg_tensor_numel(c);
  unsigned char *px = malloc(n);
  if (px == NULL) { mg_tensor_release(c); mg_fail(C, MG_ENOMEM, "%s: out of memory", op); return NULL; }
  const void *d = mg_tensor_data(c);
  for (size_t i = 0; i < n; i++) {
    double v = mg_tensor_dtype(c) == MG_F64 ? ((const double *)d)[i] : ((const float *)d)[i];
    if (!(v >= 0 && v <= 1)) {
      if (isnan(v)) mg_fail(C, MG_EARG, "%s: image values must lie in [0, 1], element %zu is nan", op, i + 1);
      else mg_fail(C, MG_EARG, "%s: image values must lie in [0, 1], element %zu is %g", op, i + 1, v);
      free(px), mg_tensor_release(c);
      return NULL;
    }
    px[i] = (unsigned char)lround(v * 255);
  }
  mg_tensor_release(c);
  return px;
}

mg_status mg_png_encode(mg_ctx *C, const char *op, mg_tensor *t, unsigned char **out,
                        size_t *len) {
  int64_t h, w;
  int ch;
  unsigned char *px = pixels(C, op, t, &h, &w, &ch);
  if (px == NULL) return MG_EARG;
  static const int TYPES[5] = { 0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA,
                                PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGB_ALPHA };
  /* What changes between setjmp and a longjmp from libpng lives on the heap, behind
  ** pointers that do not change: no automatic variable is left indeterminate. */
  membuf *b = calloc(1, sizeof *b);
  png_bytep *rows = b ? malloc((size_t)h * sizeof *rows) : NULL;
  png_structp png = rows ? png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL) : NULL;
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (info == NULL) {
    png_destroy_write_struct(&png, NULL);
    free(rows), free(b), free(px);
    return mg_fail(C, MG_ENOMEM, "%s: out of memory", op);
  }
  if (setjmp(png_jmpbuf(png))) {           /* libpng's errors come back here */
    png_destroy_write_struct(&png, &info);
    free(rows), free(px), free(b->p), free(b);
    return mg_fail(C, MG_ENOMEM, "%s: PNG encoding failed", op);
  }
  png_set_write_fn(png, b, write_mem, flush_mem);
  png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, TYPES[ch], PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  for (int64_t i = 0; i < h; i++) rows[i] = px + (size_t)i * (size_t)w * (size_t)ch;
  png_set_rows(png, info, rows);
  png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
  png_destroy_write_struct(&png, &info);
  free(rows), free(px);
  *out = b->p, *len = b->len;
  free(b);
  return MG_OK;
}
