/*
** pool.c - storage blocks. Small blocks come from malloc. Large ones are rounded up to a size
** class (four per power of two) and, once freed, kept for reuse: on these machines a fresh
** page costs ~100x the writing of its bytes (PERFORMANCE.md section 2). Fresh large blocks
** come from mmap with MADV_HUGEPAGE. The cache is bounded and trimmed when mmap fails.
*/
#define _DEFAULT_SOURCE
#include "mg_impl.h"

#include <stdlib.h>
#include <sys/mman.h>

#define SMALL_MAX ((size_t)64 << 10)     /* below this: plain malloc, not cached */
#define HUGE_MIN ((size_t)2 << 20)       /* from this size on: ask for huge pages */
#define CACHE_MAX ((size_t)1 << 30)      /* most bytes kept for reuse */
#define NCLASS 192

struct mg_pool {
  int64_t refs;            /* the context + every live storage */
  size_t live;             /* bytes in use by storage */
  size_t cached;           /* bytes in the free lists */
  void *free[NCLASS];      /* per class: singly linked through each block's first word */
};

mg_pool *mg_pool_new(void) {
  mg_pool *p = calloc(1, sizeof *p);
  if (p) p->refs = 1;
  return p;
}

/* Class index and rounded size of a large request. */
static int sizeclass(size_t n, size_t *cap) {
  int k = 63 - __builtin_clzll((unsigned long long)n);   /* 2^k <= n < 2^(k+1) */
  size_t base = (size_t)1 << k, step = base / 4;
  size_t j = (n - base + step - 1) / step;                /* 0..4 */
  *cap = base + j * step;
  return (k - 16) * 4 + (int)j;
}

static void *fresh(size_t cap) {
  void *q = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (q == MAP_FAILED) return NULL;
  if (cap >= HUGE_MIN) madvise(q, cap, MADV_HUGEPAGE);
  return q;
}

void *mg_pool_alloc(mg_pool *p, size_t nbytes, size_t *cap) {
  if (nbytes < SMALL_MAX) {
    void *q = malloc(nbytes ? nbytes : 1);
    if (q == NULL) return NULL;
    *cap = nbytes;
    p->live += nbytes;
    p->refs++;
    return q;
  }
  if (nbytes > ((size_t)1 << 46)) return NULL;
  int c = sizeclass(nbytes, cap);
  void *q = p->free[c];
  if (q != NULL) {
    p->free[c] = *(void **)q;
    p->cached -= *cap;
  } else {
    q = fresh(*cap);
    if (q == NULL) { mg_pool_trim(p); q = fresh(*cap); }
    if (q == NULL) return NULL;
  }
  p->live += *cap;
  p->refs++;
  return q;
}

static void pool_destroy(mg_pool *p) {
  mg_pool_trim(p);
  free(p);
}

void mg_pool_free(mg_pool *p, void *data, size_t cap) {
  p->live -= cap;
  if (cap < SMALL_MAX) {
    free(data);
  } else if (p->refs > 1 && p->cached + cap <= CACHE_MAX) {  /* context alive: keep it */
    size_t c2;
    int c = sizeclass(cap, &c2);
    *(void **)data = p->free[c];
    p->free[c] = data;
    p->cached += cap;
  } else {
    munmap(data, cap);
  }
  mg_pool_unref(p);
}

void mg_pool_unref(mg_pool *p) {
  if (--p->refs == 0) pool_destroy(p);
}

void mg_pool_trim(mg_pool *p) {
  for (int c = 0; c < NCLASS; c++) {
    size_t cap = ((size_t)1 << (16 + c / 4)) + (size_t)(c % 4) * ((size_t)1 << (16 + c / 4)) / 4;
    while (p->free[c] != NULL) {
      void *q = p->free[c];
      p->free[c] = *(void **)q;
      munmap(q, cap);
    }
  }
  p->cached = 0;
}

size_t mg_pool_live(const mg_pool *p) { return p->live; }
size_t mg_pool_cached(const mg_pool *p) { return p->cached; }
