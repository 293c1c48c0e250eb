/*
** fileio.c - writing files without ever destroying the previous version.
**
** Every file moongrad writes goes to a temporary name beside its target ("<path>.tmp-XXXXXX",
** created exclusively, so in the same directory and file system), is flushed, fsynced and
** closed with every error checked, and only then renamed over the target; the directory is
** fsynced so the rename itself survives a crash. On any failure the temporary is removed and
** the target is left as it was. Messages name the calling op, the path and strerror's reason.
** The new file gets the permissions a plain fopen would give (0666 less the umask), or those
** of the file it replaces; mkstemp's 0600 would make every saved file private. A target that
** is a symbolic link has the file it names replaced (beside that file), as fopen would write
** through the link; the link stays.
*/
#include "mg_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* "<dir of path>" into a new string ("." when 'path' has no slash). */
static char *dirname_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) return strdup(".");
  if (slash == path) return strdup("/");
  return strndup(path, (size_t)(slash - path));
}

static char *real_target(const char *path);

static void fsync_dir(const char *path) {
  char *target = real_target(path);               /* the directory the rename changed */
  char *dir = target ? dirname_of(target) : NULL;
  free(target);
  if (dir == NULL) return;
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) { (void)fsync(fd); close(fd); }   /* best effort: some file systems refuse */
  free(dir);
}

/* The file a write to 'path' must replace: when 'path' is a symbolic link, what it points
** to (a rename over the link would replace the link itself and leave its target stale);
** else 'path'. A new string, or NULL when out of memory. A dangling link is replaced. */
static char *real_target(const char *path) {
  struct stat sb;
  if (lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode)) {
    char *r = realpath(path, NULL);
    if (r != NULL) return r;
  }
  return strdup(path);
}

/* rename(tmp, 'path' or the file its symbolic link names); errno on failure. */
static int rename_over(const char *tmp, const char *path) {
  char *target = real_target(path);
  if (target == NULL) { errno = ENOMEM; return -1; }
  int r = rename(tmp, target);
  int e = errno;
  free(target);
  errno = e;
  return r;
}

/* Create '<path>.tmp-XXXXXX' exclusively (O_EXCL, close-on-exec: a plot's gnuplot child
** must not inherit it) with the umask's permissions, or the replaced file's; returns the
** open descriptor and the name in '*tmp' (new), or -1 with errno set. */
static int create_beside(const char *linkpath, char **tmp) {
  static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  char *path = real_target(linkpath);              /* beside the file that will be replaced */
  if (path == NULL) { errno = ENOMEM; return -1; }
  size_t n = strlen(path) + sizeof ".tmp-XXXXXX";
  char *name = malloc(n);
  if (name == NULL) { free(path); errno = ENOMEM; return -1; }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40)
               ^ (uint64_t)(uintptr_t)name;
  for (int attempt = 0; attempt < 100; attempt++) {
    char suffix[7];
    for (int i = 0; i < 6; i++) {
      x = x * 6364136223846793005u + 1442695040888963407u;   /* LCG step: only uniqueness matters */
      suffix[i] = letters[(x >> 33) % (sizeof letters - 1)];
    }
    suffix[6] = '\0';
    snprintf(name, n, "%s.tmp-%s", path, suffix);
    int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);   /* umask applies */
    if (fd >= 0) {
      struct stat sb;
      if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) (void)fchmod(fd, sb.st_mode & 07777);
      free(path);
      *tmp = name;
      return fd;
    }
    if (errno != EEXIST) break;
  }
  int e = errno;
  free(name);
  free(path);
  errno = e;
  return -1;
}

/* The temporary beside 'path', open for writing in '*fd' (its name in '*tmp'), or the error
** that says why not. */
static mg_status open_beside(mg_ctx *C, const char *op, const char *path, int *fd, char **tmp) {
  *tmp = NULL;
  *fd = create_beside(path, tmp);
  if (*fd >= 0) return MG_OK;
  int e = errno;
  if (e == ENOMEM) return mg_fail(C, MG_ENOMEM, "%s: out of memory", op);
  return mg_fail(C, MG_EIO, "%s: cannot open '%s' for writing (%s)", op, path, strerror(e));
}

/* Rename the finished 'tmp' over 'path' and make the rename durable; on failure remove it.
** Frees 'tmp' either way. */
static mg_status replace_with(mg_ctx *C, const char *op, char *tmp, const char *path) {
  if (rename_over(tmp, path) != 0) {
    int e = errno;
    mg_tmpfile_discard(tmp);
    return mg_fail(C, MG_EIO, "%s: cannot write '%s' (%s)", op, path, strerror(e));
  }
  free(tmp);
  fsync_dir(path);
  return MG_OK;
}

mg_status mg_tmpfile_name(mg_ctx *C, const char *op, const char *path, char **tmp) {
  int fd = -1;
  mg_status st = open_beside(C, op, path, &fd, tmp);
  if (st == MG_OK) close(fd);
  return st;
}

mg_status mg_tmpfile_commit(mg_ctx *C, const char *op, char *tmp, const char *path) {
  int e = 0;
  int fd = open(tmp, O_RDONLY);
  if (fd < 0 || fsync(fd) != 0) e = errno;
  if (fd >= 0 && close(fd) != 0 && e == 0) e = errno;
  if (e != 0) {
    mg_tmpfile_discard(tmp);
    return mg_fail(C, MG_EIO, "%s: cannot write '%s' (%s)", op, path, strerror(e));
  }
  return replace_with(C, op, tmp, path);
}

void mg_tmpfile_discard(char *tmp) {
  if (tmp == NULL) return;
  unlink(tmp);
  free(tmp);
}

mg_status mg_wfile_open(mg_ctx *C, const char *op, const char *path, mg_wfile *w) {
  w->f = NULL;
  w->tmp = NULL;
  char *tmp = NULL;
  int fd = -1;
  mg_status st = open_beside(C, op, path, &fd, &tmp);
  if (st != MG_OK) return st;
  FILE *f = fdopen(fd, "wb");
  if (f == NULL) {
    int e = errno;
    close(fd);
    mg_tmpfile_discard(tmp);
    return mg_fail(C, MG_EIO, "%s: cannot open '%s' for writing (%s)", op, path, strerror(e));
  }
  w->f = f;
  w->tmp = tmp;
  return MG_OK;
}

mg_status mg_wfile_commit(mg_ctx *C, const char *op, const char *path, mg_wfile *w, bool ok) {
  FILE *f = w->f;
  char *tmp = w->tmp;
  w->f = NULL;
  w->tmp = NULL;
  if (f == NULL) return mg_fail(C, MG_ESTATE, "%s: '%s' is not open for writing", op, path);
  int e = ok ? 0 : (errno ? errno : EIO);           /* the caller's writes failed: why */
  if (e == 0 && (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0)) e = errno ? errno : EIO;
  if (fclose(f) != 0 && e == 0) e = errno ? errno : EIO;
  if (e != 0) {
    mg_tmpfile_discard(tmp);
    return mg_fail(C, MG_EIO, "%s: error writing '%s' (%s)", op, path, strerror(e));
  }
  return replace_with(C, op, tmp, path);
}

void mg_wfile_abort(mg_wfile *w) {
  if (w->f != NULL) fclose(w->f);
  mg_tmpfile_discard(w->tmp);
  w->f = NULL;
  w->tmp = NULL;
}
