/*
** summary.c - TensorBoard event files: CRC32C and TFRecord framing, the Event/Summary
** messages (runtime/proto/tfevents.proto, encoded by protobuf-c), the buffered writer and the
** checking reader. TensorBoard reads the files as its own writer's: the same file name, a
** first event with file_version "brain.Event:2", records of
**   uint64 length | uint32 masked CRC32C(length) | Event bytes | uint32 masked CRC32C(bytes)
** all little-endian. A writer appends whole records, one write(2) each, at flush time, and
** fsyncs after them; a failed write is cut off again (ftruncate), so earlier records stay
** readable whatever happens.
*/
#include "mg_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tfevents.pb-c.h"

/* ---------------------------------------------------------------- CRC32C */

/* Castagnoli polynomial 0x82F63B78 (reflected), one entry per byte value. */
static const uint32_t CRC32C_TABLE[256] = {
  0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
  0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
  0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
  0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
  0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
  0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
  0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
  0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
  0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
  0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
  0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
  0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
  0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
  0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
  0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
  0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
  0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
  0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
  0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
  0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
  0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
  0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
  0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
  0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
  0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
  0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
  0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
  0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
  0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
  0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
  0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
  0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
  0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
  0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
  0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
  0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
  0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
  0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
  0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
  0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
  0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
  0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
  0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351
};

uint32_t mg_crc32c(const void *buf, size_t len) {
  const unsigned char *p = buf;
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < len; i++) c = CRC32C_TABLE[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

/* TFRecord's masking: a CRC of data that hold CRCs stays useful. */
uint32_t mg_crc32c_mask(uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

static void put_le64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static uint32_t get_le32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static double now_wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ================================================================ the writer */

struct mg_summary_writer {
  int fd;                 /* -1 once closed */
  char *path;             /* the event file (owned) */
  double flush_secs;      /* flush at the first event this long after the last flush */
  double next_flush;      /* CLOCK_MONOTONIC seconds */
  unsigned char *buf;     /* pending whole records */
  size_t len, cap;        /* bytes in / allocated for 'buf' */
  size_t *ends;           /* end offset in 'buf' of each pending record */
  size_t nrec, caprec;
};

const char *mg_summary_path(const mg_summary_writer *w) { return w->path; }
bool mg_summary_closed(const mg_summary_writer *w) { return w->fd < 0; }

/* mkdir -p: every prefix of 'dir' that does not exist yet. */
static mg_status mkdirs(mg_ctx *C, const char *dir) {
  size_t n = strlen(dir);
  char *p = malloc(n + 1);
  if (p == NULL) return mg_fail(C, MG_ENOMEM, "summary.writer: out of memory");
  memcpy(p, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != '\0') continue;
    char c = p[i];
    p[i] = '\0';
    if (mkdir(p, 0777) != 0 && errno != EEXIST) {
      int e = errno;
      free(p);
      return mg_fail(C, MG_EIO, "summary.writer: cannot create directory '%s' (%s)", dir, strerror(e));
    }
    p[i] = c;
  }
  free(p);
  struct stat sb;
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
    return mg_fail(C, MG_EIO, "summary.writer: '%s' is not a directory", dir);
  return MG_OK;
}

/* fsync the directory, so that the new file's name survives a crash too. */
static void sync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) { (void)fsync(fd); close(fd); }
}

/* Write the pending records, one write(2) each, then fsync. On failure the file is cut
** back to its last whole record and the records not written stay pending. Returns 0 or
** the errno. */
static int write_pending(mg_summary_writer *w) {
  off_t good = lseek(w->fd, 0, SEEK_END);
  size_t done = 0, k = 0;                  /* bytes / records written */
  int e = 0;
  for (; k < w->nrec; k++) {
    size_t end = w->ends[k], off = done;
    while (off < end && e == 0) {          /* a short write continues the same record */
      ssize_t n = write(w->fd, w->buf + off, end - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) e = n < 0 ? errno : EIO;
      else off += (size_t)n;
    }
    if (e != 0) break;
    done = end;
  }
  if (e != 0) {
    if (good >= 0) (void)!ftruncate(w->fd, good + (off_t)done);   /* drop the partial record */
  } else if (fsync(w->fd) != 0) {
    e = errno;
  }
  memmove(w->buf, w->buf + done, w->len - done);
  w->len -= done;
  for (size_t i = k; i < w->nrec; i++) w->ends[i - k] = w->ends[i] - done;
  w->nrec -= k;
  w->next_flush = now_mono() + w->flush_secs;
  return e;
}

static mg_status flush_records(mg_ctx *C, mg_summary_writer *w, const char *op) {
  int e = write_pending(w);
  if (e != 0) return mg_fail(C, MG_EIO, "%s: error writing '%s' (%s)", op, w->path, strerror(e));
  return MG_OK;
}

static bool reserve(mg_summary_writer *w, size_t bytes) {
  if (w->nrec == w->caprec) {
    size_t nc = w->caprec ? 2 * w->caprec : 16;
    size_t *ne = realloc(w->ends, nc * sizeof *ne);
    if (ne == NULL) return false;
    w->ends = ne, w->caprec = nc;
  }
  if (bytes > SIZE_MAX - w->len) return false;
  if (w->len + bytes > w->cap) {
    size_t nc = w->cap ? w->cap : 4096;
    while (nc < w->len + bytes) nc *= 2;
    unsigned char *nb = realloc(w->buf, nc);
    if (nb == NULL) return false;
    w->buf = nb, w->cap = nc;
  }
  return true;
}

/* Frame 'ev' as a record at the end of the pending buffer; flush when it is time (or the
** buffer passed 8 MiB). */
static mg_status append_event(mg_ctx *C, mg_summary_writer *w, const char *op,
                              const Mgtb__Event *ev) {
  if (w->fd < 0) return mg_fail(C, MG_ESTATE, "%s: the writer is closed", op);
  size_t n = mgtb__event__get_packed_size(ev);
  if (!reserve(w, n + 16)) return mg_fail(C, MG_ENOMEM, "%s: out of memory (a %zu-byte event)", op, n);
  unsigned char *p = w->buf + w->len;
  put_le64(p, (uint64_t)n);
  put_le32(p + 8, mg_crc32c_mask(mg_crc32c(p, 8)));
  mgtb__event__pack(ev, p + 12);
  put_le32(p + 12 + n, mg_crc32c_mask(mg_crc32c(p + 12, n)));
  w->len += n + 16;
  w->ends[w->nrec++] = w->len;
  if (now_mono() >= w->next_flush || w->len > ((size_t)8 << 20)) return flush_records(C, w, op);
  return MG_OK;
}

mg_status mg_summary_open(mg_ctx *C, const char *logdir, const char *suffix,
                          double flush_secs, mg_summary_writer **out) {
  if (suffix == NULL) suffix = "";
  if (strchr(suffix, '/') != NULL)
    return mg_fail(C, MG_EARG, "summary.writer: filename_suffix '%s' contains a '/'", suffix);
  if (!(flush_secs >= 0) || !isfinite(flush_secs))
    return mg_fail(C, MG_EARG, "summary.writer: flush_secs must be a finite number >= 0, got %g", flush_secs);
  mg_status st = mkdirs(C, logdir);
  if (st != MG_OK) return st;
  char host[256];
  if (gethostname(host, sizeof host) != 0) strcpy(host, "localhost");
  host[sizeof host - 1] = '\0';
  mg_summary_writer *w = calloc(1, sizeof *w);
  size_t plen = strlen(logdir) + strlen(host) + strlen(suffix) + 96;
  char *path = malloc(plen);
  if (w == NULL || path == NULL) {
    free(w), free(path);
    return mg_fail(C, MG_ENOMEM, "summary.writer: out of memory");
  }
  double t = now_wall();
  int fd = -1, e = 0;
  /* TensorBoard's name; its last field, a per-process counter there, is here the first
  ** number that makes the name new (O_EXCL), which needs no shared state. */
  int dlen = (int)strlen(logdir);
  while (dlen > 1 && logdir[dlen - 1] == '/') dlen--;          /* "logs/" -> "logs/events..." */
  for (int uid = 0; fd < 0 && uid < 10000; uid++) {
    snprintf(path, plen, "%.*s/events.out.tfevents.%010lld.%s.%ld.%d%s", dlen, logdir,
             (long long)t, host, (long)getpid(), uid, suffix);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0666);
    e = errno;
    if (fd < 0 && e != EEXIST) break;
  }
  if (fd < 0) {
    mg_fail(C, MG_EIO, "summary.writer: cannot create '%s' (%s)", path, strerror(e));
    free(w), free(path);
    return MG_EIO;
  }
  sync_dir(logdir);
  w->fd = fd, w->path = path, w->flush_secs = flush_secs, w->next_flush = 0;  /* flush now */
  Mgtb__Event ev = MGTB__EVENT__INIT;
  ev.wall_time = t;
  ev.what_case = MGTB__EVENT__WHAT_FILE_VERSION;
  ev.file_version = "brain.Event:2";
  st = append_event(C, w, "summary.writer", &ev);
  if (st != MG_OK) { mg_summary_free(w); return st; }
  *out = w;
  return MG_OK;
}

mg_status mg_summary_flush(mg_ctx *C, mg_summary_writer *w) {
  if (w->fd < 0) return mg_fail(C, MG_ESTATE, "summary.flush: the writer is closed");
  return flush_records(C, w, "summary.flush");
}

mg_status mg_summary_close(mg_ctx *C, mg_summary_writer *w) {
  if (w->fd < 0) return MG_OK;
  mg_status st = flush_records(C, w, "summary.close");
  if (close(w->fd) != 0 && st == MG_OK)
    st = mg_fail(C, MG_EIO, "summary.close: error closing '%s' (%s)", w->path, strerror(errno));
  w->fd = -1;
  free(w->buf), free(w->ends);
  w->buf = NULL, w->ends = NULL, w->len = w->cap = w->nrec = w->caprec = 0;
  return st;
}

void mg_summary_free(mg_summary_writer *w) {
  if (w == NULL) return;
  if (w->fd >= 0) {                       /* close, errors dropped */
    (void)write_pending(w);
    close(w->fd);
  }
  free(w->buf), free(w->ends), free(w->path);
  free(w);
}

/* One value in a summary event at 'step'. */
static mg_status append_value(mg_ctx *C, mg_summary_writer *w, const char *op,
                              Mgtb__Summary__Value *v, int64_t step, double wall_time) {
  Mgtb__Summary sum = MGTB__SUMMARY__INIT;
  Mgtb__Summary__Value *vals[1] = { v };
  sum.n_value = 1, sum.value = vals;
  Mgtb__Event ev = MGTB__EVENT__INIT;
  ev.wall_time = wall_time < 0 ? now_wall() : wall_time;
  ev.step = step;
  ev.what_case = MGTB__EVENT__WHAT_SUMMARY;
  ev.summary = &sum;
  return append_event(C, w, op, &ev);
}

static mg_status check_tag(mg_ctx *C, const char *op, const char *tag) {
  if (tag == NULL || tag[0] == '\0') return mg_fail(C, MG_EARG, "%s: the tag is empty", op);
  return MG_OK;
}

mg_status mg_summary_scalar(mg_ctx *C, mg_summary_writer *w, const char *tag, double value,
                            int64_t step, double wall_time) {
  mg_status st = check_tag(C, "summary.scalar", tag);
  if (st != MG_OK) return st;
  Mgtb__Summary__Value v = MGTB__SUMMARY__VALUE__INIT;
  v.tag = (char *)tag;
  v.value_case = MGTB__SUMMARY__VALUE__VALUE_SIMPLE_VALUE;
  v.simple_value = (float)value;          /* TensorBoard's scalars are float32 */
  return append_value(C, w, "summary.scalar", &v, step, wall_time);
}

mg_status mg_summary_text(mg_ctx *C, mg_summary_writer *w, const char *tag, const char *s,
                          size_t len, int64_t step, double wall_time) {
  mg_status st = check_tag(C, "summary.text", tag);
  if (st != MG_OK) return st;
  Mgtb__SummaryMetadata__PluginData pd = MGTB__SUMMARY_METADATA__PLUGIN_DATA__INIT;
  pd.plugin_name = "text";                /* content: TextPluginData{version 0}, no bytes */
  Mgtb__SummaryMetadata md = MGTB__SUMMARY_METADATA__INIT;
  md.plugin_data = &pd;
  Mgtb__TensorShapeProto shape = MGTB__TENSOR_SHAPE_PROTO__INIT;   /* shape (): a scalar */
  ProtobufCBinaryData str = { len, (uint8_t *)s };
  Mgtb__TensorProto tensor = MGTB__TENSOR_PROTO__INIT;
  tensor.dtype = MGTB__DATA_TYPE__DT_STRING;
  tensor.tensor_shape = &shape;
  tensor.n_string_val = 1, tensor.string_val = &str;
  Mgtb__Summary__Value v = MGTB__SUMMARY__VALUE__INIT;
  v.tag = (char *)tag;
  v.metadata = &md;
  v.value_case = MGTB__SUMMARY__VALUE__VALUE_TENSOR;
  v.tensor = &tensor;
  return append_value(C, w, "summary.text", &v, step, wall_time);
}

/* ---------------------------------------------------------------- images */

/* An image value of PNG bytes whose IHDR gives size and colour type. */
mg_status mg_summary_image_png(mg_ctx *C, mg_summary_writer *w, const char *tag,
                               const unsigned char *png, size_t len, int64_t step,
                               double wall_time) {
  static const unsigned char SIG[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
  mg_status st = check_tag(C, "summary.image", tag);
  if (st != MG_OK) return st;
  if (len < 33 || memcmp(png, SIG, 8) != 0 || memcmp(png + 12, "IHDR", 4) != 0)
    return mg_fail(C, MG_EFORMAT, "summary.image: not a PNG file (no PNG signature and IHDR chunk)");
  uint32_t width = 0, height = 0;
  for (int i = 0; i < 4; i++) width = (width << 8) | png[16 + i], height = (height << 8) | png[20 + i];
  int colorspace;
  switch (png[25]) {                      /* PNG colour type -> Summary.Image colorspace */
  case 0: colorspace = 1; break;          /* grey */
  case 4: colorspace = 2; break;          /* grey + alpha */
  case 2: case 3: colorspace = 3; break;  /* RGB, palette */
  case 6: colorspace = 4; break;          /* RGBA */
  default: return mg_fail(C, MG_EFORMAT, "summary.image: PNG colour type %d is not valid", png[25]);
  }
  if (width == 0 || height == 0 || width > INT32_MAX || height > INT32_MAX)
    return mg_fail(C, MG_EFORMAT, "summary.image: PNG size %ux%u is not valid", width, height);
  Mgtb__Summary__Image img = MGTB__SUMMARY__IMAGE__INIT;
  img.height = (int32_t)height, img.width = (int32_t)width, img.colorspace = colorspace;
  img.encoded_image_string.len = len;
  img.encoded_image_string.data = (uint8_t *)png;
  Mgtb__Summary__Value v = MGTB__SUMMARY__VALUE__INIT;
  v.tag = (char *)tag;
  v.value_case = MGTB__SUMMARY__VALUE__VALUE_IMAGE;
  v.image = &img;
  return append_value(C, w, "summary.image", &v, step, wall_time);
}

mg_status mg_summary_image_tensor(mg_ctx *C, mg_summary_writer *w, const char *tag,
                                  mg_tensor *t, int64_t step, double wall_time) {
  mg_status st = check_tag(C, "summary.image", tag);
  if (st != MG_OK) return st;
  unsigned char *png = NULL;
  size_t len = 0;
  st = mg_png_encode(C, "summary.image", t, &png, &len);
  if (st != MG_OK) return st;
  st = mg_summary_image_png(C, w, tag, png, len, step, wall_time);
  free(png);
  return st;
}

/* ---------------------------------------------------------------- histograms */

size_t mg_summary_default_edges(double *edges, size_t cap) {
  size_t k = 0;
  for (double v = 1.0e-12; v < 1.0e20; v *= 1.1) k++;   /* as TensorFlow's histogram.cc */
  size_t total = 2 * k + 3, i = 0;
  if (edges == NULL) return total;
#define PUT(x) do { if (i < cap) edges[i] = (x); i++; } while (0)
  PUT(-DBL_MAX);
  double *pos = malloc(k * sizeof *pos);   /* the positive edges, to negate in reverse */
  if (pos == NULL) return 0;
  double v = 1.0e-12;
  for (size_t j = 0; j < k; j++, v *= 1.1) pos[j] = v;
  for (size_t j = k; j-- > 0;) PUT(-pos[j]);
  PUT(0.0);
  for (size_t j = 0; j < k; j++) PUT(pos[j]);
  PUT(DBL_MAX);
#undef PUT
  free(pos);
  return total;
}

/* Index of the first edge > x in the sorted 'e[0..n)' (n when none). */
static size_t upper_bound(const double *e, size_t n, double x) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (e[mid] > x) hi = mid; else lo = mid + 1;
  }
  return lo;
}

/* The elements of 't' as doubles: '*out' a new array (caller frees). */
static mg_status values_of(mg_ctx *C, const char *op, mg_tensor *t, double **out, size_t *n) {
  mg_tensor *c = NULL;
  mg_no_grad_enter(C);
  mg_status st = mg_tensor_contiguous(C, t, &c);
  mg_no_grad_exit(C);
  if (st != MG_OK) return mg_name_error(C, st, op);
  size_t m = (size_t)mg_tensor_numel(c);
  double *x = malloc((m ? m : 1) * sizeof *x);
  if (x == NULL) {
    mg_tensor_release(c);
    return mg_fail(C, MG_ENOMEM, "%s: out of memory (%zu values)", op, m);
  }
  const void *d = mg_tensor_data(c);
  for (size_t i = 0; i < m; i++)
    x[i] = mg_tensor_dtype(c) == MG_F64 ? ((const double *)d)[i] : (double)((const float *)d)[i];
  mg_tensor_release(c);
  *out = x, *n = m;
  return MG_OK;
}

/* The histogram of 'x[0..n)' into 'h' ('lim'/'cnt' new arrays, owned by the caller). */
static mg_status build_histogram(mg_ctx *C, const double *x, size_t n, int bins,
                                 Mgtb__HistogramProto *h) {
  const char *op = "summary.histogram";
  double lo = n ? x[0] : 0, hi = lo, s = 0, s2 = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(x[i]))
      return mg_fail(C, MG_EARG, "%s: element %zu is %s (values must be finite)", op, i + 1,
                     isnan(x[i]) ? "nan" : x[i] > 0 ? "inf" : "-inf");
    lo = fmin(lo, x[i]), hi = fmax(hi, x[i]), s += x[i], s2 += x[i] * x[i];
  }
  h->min = lo, h->max = hi, h->num = (double)n, h->sum = s, h->sum_squares = s2;
  size_t ne = bins > 0 ? (size_t)bins + 1 : mg_summary_default_edges(NULL, 0);
  double *e = malloc(ne * sizeof *e), *cnt = calloc(ne, sizeof *cnt), *lim = malloc(ne * sizeof *lim);
  if (e == NULL || cnt == NULL || lim == NULL) {
    free(e), free(cnt), free(lim);
    return mg_fail(C, MG_ENOMEM, "%s: out of memory", op);
  }
  size_t nb = 0;                           /* buckets emitted */
  if (bins > 0) {                          /* uniform: numpy.histogram(x, bins) edges */
    double a = lo, b = hi;
    if (a == b) a -= 0.5, b += 0.5;
    double step = (b - a) / bins;
    for (int i = 0; i < bins; i++) e[i] = a + i * step;
    e[bins] = b;
    for (size_t i = 0; i < n; i++) {       /* bucket i: [e_i, e_i+1), the last one closed */
      size_t k = upper_bound(e, ne, x[i]);
      cnt[k == 0 ? 0 : (k > (size_t)bins ? (size_t)bins - 1 : k - 1)] += 1;
    }
    for (int i = 0; i < bins; i++) lim[i] = e[i + 1];
    nb = (size_t)bins;
  } else {                                 /* TensorFlow's Histogram::Add and EncodeToProto */
    if (mg_summary_default_edges(e, ne) != ne) {
      free(e), free(cnt), free(lim);
      return mg_fail(C, MG_ENOMEM, "%s: out of memory", op);
    }
    for (size_t i = 0; i < n; i++) {       /* bucket k: [e_k-1, e_k) */
      size_t k = upper_bound(e, ne, x[i]);
      cnt[k < ne ? k : ne - 1] += 1;
    }
    for (size_t i = 0; i < ne;) {          /* a run of empty buckets becomes one */
      double end = e[i], c = cnt[i];
      i++;
      if (c <= 0)
        while (i < ne && cnt[i] <= 0) end = e[i], c = cnt[i], i++;
      lim[nb] = end, cnt[nb] = c, nb++;
    }
  }
  free(e);
  h->n_bucket_limit = h->n_bucket = nb;
  h->bucket_limit = lim, h->bucket = cnt;
  return MG_OK;
}

mg_status mg_summary_histogram(mg_ctx *C, mg_summary_writer *w, const char *tag,
                               mg_tensor *t, int bins, int64_t step, double wall_time) {
  const char *op = "summary.histogram";
  mg_status st = check_tag(C, op, tag);
  if (st != MG_OK) return st;
  if (bins < 0) return mg_fail(C, MG_EARG, "%s: bins must be >= 1, got %d", op, bins);
  size_t n = 0;
  double *x = NULL;
  st = values_of(C, op, t, &x, &n);
  if (st != MG_OK) return st;
  Mgtb__HistogramProto h = MGTB__HISTOGRAM_PROTO__INIT;
  st = build_histogram(C, x, n, bins, &h);
  free(x);
  if (st != MG_OK) return st;
  Mgtb__Summary__Value v = MGTB__SUMMARY__VALUE__INIT;
  v.tag = (char *)tag;
  v.value_case = MGTB__SUMMARY__VALUE__VALUE_HISTO;
  v.histo = &h;
  st = append_value(C, w, op, &v, step, wall_time);
  free(h.bucket_limit), free(h.bucket);
  return st;
}

/* ================================================================ the reader */

struct mg_summary_log {
  size_t n, cap;
  mg_summary_event *events;
  Mgtb__Event **msgs;     /* the unpacked messages the events borrow from (owned) */
};

size_t mg_summary_log_count(const mg_summary_log *log) { return log->n; }

const mg_summary_event *mg_summary_log_event(const mg_summary_log *log, size_t i) {
  return i < log->n ? &log->events[i] : NULL;
}

void mg_summary_log_free(mg_summary_log *log) {
  if (log == NULL) return;
  for (size_t i = 0; i < log->n; i++) {
    free((void *)log->events[i].values);
    mgtb__event__free_unpacked(log->msgs[i], NULL);
  }
  free(log->events), free(log->msgs);
  free(log);
}

/* A 0-d float32/float64 tensor's value (TensorFlow 2's scalar summaries) into '*v'. */
static bool tensor_scalar(const Mgtb__TensorProto *t, double *v) {
  if (t->tensor_shape && t->tensor_shape->n_dim != 0) return false;
  const ProtobufCBinaryData *c = &t->tensor_content;
  if (t->dtype == MGTB__DATA_TYPE__DT_FLOAT) {
    float f;
    if (t->n_float_val == 1) { *v = t->float_val[0]; return true; }
    if (c->len != 4) return false;
    uint32_t u = get_le32(c->data);
    memcpy(&f, &u, 4);
    *v = f;
    return true;
  }
  if (t->dtype == MGTB__DATA_TYPE__DT_DOUBLE) {
    if (t->n_double_val == 1) { *v = t->double_val[0]; return true; }
    if (c->len != 8) return false;
    uint64_t u = get_le64(c->data);
    memcpy(v, &u, 8);
    return true;
  }
  return false;
}

/* The view of one decoded Summary.Value. */
static mg_status view_value(mg_ctx *C, const char *where, uint64_t off,
                            const Mgtb__Summary__Value *v, mg_summary_value *out) {
  memset(out, 0, sizeof *out);
  out->tag = v->tag;
  if (v->metadata && v->metadata->plugin_data && v->metadata->plugin_data->plugin_name[0])
    out->plugin = v->metadata->plugin_data->plugin_name;
  switch (v->value_case) {
  case MGTB__SUMMARY__VALUE__VALUE_SIMPLE_VALUE:
    out->kind = MG_SUMMARY_SCALAR, out->scalar = v->simple_value;
    break;
  case MGTB__SUMMARY__VALUE__VALUE_HISTO: {
    const Mgtb__HistogramProto *h = v->histo;
    if (h->n_bucket_limit != h->n_bucket)
      return mg_fail(C, MG_EFORMAT, "summary.read: %sevent at byte offset %llu: histogram '%s' has "
                     "%zu bucket limits but %zu buckets", where, (unsigned long long)off, v->tag,
                     h->n_bucket_limit, h->n_bucket);
    out->kind = MG_SUMMARY_HISTOGRAM;
    out->min = h->min, out->max = h->max, out->num = h->num, out->sum = h->sum;
    out->sum_squares = h->sum_squares;
    out->nbuckets = h->n_bucket, out->bucket_limit = h->bucket_limit, out->bucket = h->bucket;
    break;
  }
  case MGTB__SUMMARY__VALUE__VALUE_IMAGE:
    out->kind = MG_SUMMARY_IMAGE;
    out->height = v->image->height, out->width = v->image->width;
    out->colorspace = v->image->colorspace;
    out->bytes = v->image->encoded_image_string.data;
    out->nbytes = v->image->encoded_image_string.len;
    break;
  case MGTB__SUMMARY__VALUE__VALUE_TENSOR:
    if (out->plugin && strcmp(out->plugin, "text") == 0 &&
        v->tensor->dtype == MGTB__DATA_TYPE__DT_STRING && v->tensor->n_string_val == 1) {
      out->kind = MG_SUMMARY_TEXT;
      out->bytes = v->tensor->string_val[0].data, out->nbytes = v->tensor->string_val[0].len;
    } else if (out->plugin && strcmp(out->plugin, "scalars") == 0 &&
               tensor_scalar(v->tensor, &out->scalar)) {
      out->kind = MG_SUMMARY_SCALAR;   /* tf.summary.scalar in TensorFlow 2 */
    }
    break;
  default:
    break;
  }
  return MG_OK;
}

/* Decode the Event at 'data[0..n)' (record at 'off') as the log's next event. */
static mg_status add_event(mg_ctx *C, const char *where, mg_summary_log *log, uint64_t off,
                           const unsigned char *data, size_t n) {
  if (log->n == log->cap) {
    size_t nc = log->cap ? 2 * log->cap : 64;
    mg_summary_event *ne = realloc(log->events, nc * sizeof *ne);
    if (ne != NULL) log->events = ne;
    Mgtb__Event **nm = ne ? realloc(log->msgs, nc * sizeof *nm) : NULL;
    if (nm == NULL) return mg_fail(C, MG_ENOMEM, "summary.read: out of memory");
    log->msgs = nm, log->cap = nc;
  }
  Mgtb__Event *m = mgtb__event__unpack(NULL, n, data);
  if (m == NULL)
    return mg_fail(C, MG_EFORMAT, "summary.read: %sevent at byte offset %llu is not a valid Event message",
                   where, (unsigned long long)off);
  mg_summary_event *ev = &log->events[log->n];
  memset(ev, 0, sizeof *ev);
  ev->offset = off, ev->wall_time = m->wall_time, ev->step = m->step;
  if (m->what_case == MGTB__EVENT__WHAT_FILE_VERSION) ev->file_version = m->file_version;
  size_t nv = m->what_case == MGTB__EVENT__WHAT_SUMMARY ? m->summary->n_value : 0;
  mg_summary_value *vals = calloc(nv ? nv : 1, sizeof *vals);
  if (vals == NULL) {
    mgtb__event__free_unpacked(m, NULL);
    return mg_fail(C, MG_ENOMEM, "summary.read: out of memory");
  }
  for (size_t i = 0; i < nv; i++) {
    mg_status st = view_value(C, where, off, m->summary->value[i], &vals[i]);
    if (st != MG_OK) { free(vals); mgtb__event__free_unpacked(m, NULL); return st; }
  }
  ev->nvalues = nv, ev->values = vals;
  log->msgs[log->n++] = m;
  return MG_OK;
}

static mg_status parse(mg_ctx *C, const char *where, const unsigned char *p, size_t len,
                       mg_summary_log **out) {
  mg_summary_log *log = calloc(1, sizeof *log);
  if (log == NULL) return mg_fail(C, MG_ENOMEM, "summary.read: out of memory");
  mg_status st = MG_OK;
  size_t off = 0;
  while (off < len && st == MG_OK) {
    unsigned long long o = off;
    size_t left = len - off;
    if (left < 12) {
      st = mg_fail(C, MG_EFORMAT, "summary.read: %struncated record at byte offset %llu (its "
                   "12-byte header has %zu bytes)", where, o, left);
      break;
    }
    uint64_t n = get_le64(p + off);
    uint32_t want = get_le32(p + off + 8), got = mg_crc32c_mask(mg_crc32c(p + off, 8));
    if (want != got) {
      st = mg_fail(C, MG_EFORMAT, "summary.read: %srecord at byte offset %llu: the length's CRC "
                   "does not match (stored 0x%08x, computed 0x%08x)", where, o, want, got);
      break;
    }
    if (n > left - 12 || left - 12 - n < 4) {
      st = mg_fail(C, MG_EFORMAT, "summary.read: %struncated record at byte offset %llu (%llu "
                   "data bytes and a 4-byte CRC, %zu bytes left)", where, o,
                   (unsigned long long)n, left - 12);
      break;
    }
    const unsigned char *data = p + off + 12;
    want = get_le32(data + n), got = mg_crc32c_mask(mg_crc32c(data, (size_t)n));
    if (want != got) {
      st = mg_fail(C, MG_EFORMAT, "summary.read: %srecord at byte offset %llu: the data's CRC "
                   "does not match (stored 0x%08x, computed 0x%08x)", where, o, want, got);
      break;
    }
    st = add_event(C, where, log, off, data, (size_t)n);
    off += 16 + (size_t)n;
  }
  if (st != MG_OK) { mg_summary_log_free(log); return st; }
  *out = log;
  return MG_OK;
}

mg_status mg_summary_parse(mg_ctx *C, const void *buf, size_t len, mg_summary_log **out) {
  return parse(C, "", buf, len, out);
}

mg_status mg_summary_read(mg_ctx *C, const char *path, mg_summary_log **out) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return mg_fail(C, MG_EIO, "summary.read: cannot open '%s' (%s)", path, strerror(errno));
  size_t cap = 1 << 16, len = 0;
  unsigned char *buf = malloc(cap);
  for (;;) {
    if (buf == NULL) { fclose(f); return mg_fail(C, MG_ENOMEM, "summary.read: out of memory"); }
    len += fread(buf + len, 1, cap - len, f);
    if (len < cap) break;
    unsigned char *nb = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
    if (nb == NULL) free(buf);
    buf = nb, cap *= 2;
  }
  int err = ferror(f);
  fclose(f);
  if (err) { free(buf); return mg_fail(C, MG_EIO, "summary.read: error reading '%s'", path); }
  size_t wn = strlen(path) + 8;
  char *where = malloc(wn);
  if (where == NULL) { free(buf); return mg_fail(C, MG_ENOMEM, "summary.read: out of memory"); }
  snprintf(where, wn, "'%s': ", path);
  mg_status st = parse(C, where, buf, len, out);
  free(where);
  free(buf);     /* the unpacked messages hold copies of what they need */
  return st;
}
