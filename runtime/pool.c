/*
** pool.c - storage blocks. Small blocks come from malloc. Large ones are rounded up to a size
** class (four per power of two) and, once freed, kept for reuse: on these machines a fresh
** page costs ~100x the writing of its bytes (docs/performance.md). Fresh large blocks
** come from mmap with MADV_HUGEPAGE. The cache is bounded and trimmed when mmap fails.
*/
#define _DEFAULT_SOURCE
#include "mg_impl.h"

#include <stdlib.h>
#include <sys/mman.h>

/* Under AddressSanitizer (MG_SANITIZE builds) the pool lets ASan see a tensor used after its
** release: tensor headers and small storages come from malloc and go back to free at once
** (ASan's quarantine keeps them unused for a while), and blocks kept in the cache are poisoned
** until handed out again. The cache and its accounting stay as they are. */
#if defined(__SANITIZE_ADDRESS__)
#  define MG_POOL_ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define MG_POOL_ASAN 1
#  endif
#endif
#ifdef MG_POOL_ASAN
#  include <sanitizer/asan_interface.h>
#  define POISON(q, n) ASAN_POISON_MEMORY_REGION((q), (n))
#  define UNPOISON(q, n) ASAN_UNPOISON_MEMORY_REGION((q), (n))
#else
#  define MG_POOL_ASAN 0
#  define POISON(q, n) ((void)(q), (void)(n))
#  define UNPOISON(q, n) ((void)(q), (void)(n))
#endif

#define SMALL_MAX ((size_t)2 << 10)      /* below this: plain malloc, not cached */
#define MMAP_MIN ((size_t)64 << 10)      /* fresh blocks from here on come from mmap */
#define HUGE_MIN ((size_t)2 << 20)       /* from this size on: ask for huge pages */
#define CACHE_MAX ((size_t)1 << 30)      /* most bytes kept for reuse */
#define NCLASS 192

struct mg_pool {
  int64_t refs;            /* the context + every live storage */
  size_t live;             /* bytes in use by storage */
  size_t cached;           /* bytes in the free lists */
  size_t peak;             /* most bytes live at once since the last mg_pool_reset_peak */
  void *free[NCLASS];      /* per class: singly linked through each block's first word */
  void *small[MG_SMALL_COUNT];     /* free tensor headers and small storages */
  char *arena, *arena_end;         /* where new small objects are carved from */
  void **chunks;                   /* arena chunks, returned when the pool goes */
  size_t *chunk_size;
  int nchunks;
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
  return (k - 11) * 4 + (int)j;
}

/* Fresh zeroed pages; from 2 MiB on, aligned to 2 MiB and marked for transparent huge
** pages (an unaligned mapping would get none). */
void *mg_pages_alloc(size_t cap) {
  size_t extra = cap >= HUGE_MIN ? HUGE_MIN : 0;
  char *q = mmap(NULL, cap + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (q == MAP_FAILED) return NULL;
  if (extra == 0) return q;
  size_t head = (HUGE_MIN - (uintptr_t)q % HUGE_MIN) % HUGE_MIN;
  if (head) munmap(q, head);
  if (extra - head) munmap(q + head + cap, extra - head);
  madvise(q + head, cap, MADV_HUGEPAGE);
  return q + head;
}

static const size_t small_size[MG_SMALL_COUNT] = {
  [MG_SMALL_TENSOR] = sizeof(mg_tensor),
  [MG_SMALL_STORAGE64] = sizeof(mg_storage) + 64,
  [MG_SMALL_STORAGE256] = sizeof(mg_storage) + 256,
};

/* A new arena chunk: 64 KiB doubling to 2 MiB, the large ones on huge pages (one fault
** per 2 MiB instead of 512). */
static bool arena_grow(mg_pool *p) {
  size_t size = (size_t)64 << 10 << (p->nchunks < 5 ? p->nchunks : 5);
  void **c = realloc(p->chunks, (size_t)(p->nchunks + 1) * sizeof *c);
  if (c == NULL) return false;
  p->chunks = c;
  size_t *cs = realloc(p->chunk_size, (size_t)(p->nchunks + 1) * sizeof *cs);
  if (cs == NULL) return false;
  p->chunk_size = cs;
  void *q = mg_pages_alloc(size);
  if (q == NULL) return false;
  c[p->nchunks] = q;
  cs[p->nchunks++] = size;
  p->arena = q;
  p->arena_end = (char *)q + size;
  return true;
}

void *mg_pool_small_get(mg_pool *p, int cls) {
  if (MG_POOL_ASAN) return malloc(small_size[cls]);
  void *q = p->small[cls];
  if (q != NULL) {
    p->small[cls] = *(void **)q;
    return q;
  }
  size_t n = (small_size[cls] + 63) & ~(size_t)63;   /* whole cache lines: a 1-d tensor's
                                                         header touches two of its four */
  if ((size_t)(p->arena_end - p->arena) < n && !arena_grow(p)) return NULL;
  q = p->arena;
  p->arena += n;
  return q;
}

/* Small objects go back to their free list (the arena is returned as a whole, with the
** pool: its size is the peak number of small objects alive at once). */
void mg_pool_small_put(mg_pool *p, int cls, void *q) {
  if (MG_POOL_ASAN) { free(q); return; }
  *(void **)q = p->small[cls];
  p->small[cls] = q;
}

/* A new block of a size class: malloc below MMAP_MIN, whole pages above. */
static void *fresh(size_t cap) { return cap < MMAP_MIN ? malloc(cap) : mg_pages_alloc(cap); }
static void unfresh(void *q, size_t cap) {
  if (cap < MMAP_MIN) free(q);
  else mg_pages_free(q, cap);
}

void *mg_pool_alloc(mg_pool *p, size_t nbytes, size_t *cap) {
  void *q = mg_pool_block_get(p, nbytes, cap);
  if (q != NULL && nbytes < SMALL_MAX) p->live += nbytes;
  else if (q != NULL) p->live += *cap;
  if (p->live > p->peak) p->peak = p->live;
  return q;
}

void *mg_pool_block_get(mg_pool *p, size_t nbytes, size_t *cap) {
  if (nbytes < SMALL_MAX) {
    void *q = malloc(nbytes ? nbytes : 1);
    if (q == NULL) return NULL;
    *cap = nbytes;
    p->refs++;
    return q;
  }
  if (nbytes > ((size_t)1 << 46)) return NULL;
  int c = sizeclass(nbytes, cap);
  void *q = p->free[c];
  if (q != NULL) {
    UNPOISON(q, *cap);
    p->free[c] = *(void **)q;
    p->cached -= *cap;
  } else {
    q = fresh(*cap);
    if (q == NULL) { mg_pool_trim(p); q = fresh(*cap); }
    if (q == NULL) return NULL;
  }
  p->refs++;
  return q;
}

static void pool_destroy(mg_pool *p) {
  mg_pool_trim(p);
  for (int i = 0; i < p->nchunks; i++) munmap(p->chunks[i], p->chunk_size[i]);
  free(p->chunks);
  free(p->chunk_size);
  free(p);
}

void mg_pool_free(mg_pool *p, void *data, size_t cap) {
  p->live -= cap;
  mg_pool_block_put(p, data, cap);
}

void mg_pool_block_put(mg_pool *p, void *data, size_t cap) {
  if (cap < SMALL_MAX) {
    free(data);
  } else if (p->refs > 1 && p->cached + cap <= CACHE_MAX) {  /* context alive: keep it */
    size_t c2;
    int c = sizeclass(cap, &c2);
    *(void **)data = p->free[c];
    p->free[c] = data;
    p->cached += cap;
    POISON(data, cap);                      /* a use after release reads poison */
  } else {
    unfresh(data, cap);
  }
  mg_pool_unref(p);
}

void mg_pool_unref(mg_pool *p) {
  if (--p->refs == 0) pool_destroy(p);
}

void mg_pool_trim(mg_pool *p) {
  for (int c = 0; c < NCLASS; c++) {
    size_t base = (size_t)1 << (11 + c / 4), cap = base + (size_t)(c % 4) * base / 4;
    while (p->free[c] != NULL) {
      void *q = p->free[c];
      UNPOISON(q, cap);
      p->free[c] = *(void **)q;
      unfresh(q, cap);
    }
  }
  p->cached = 0;
}

void mg_pool_account(mg_pool *p, size_t bytes, bool add) {
  if (add) {
    p->live += bytes;
    if (p->live > p->peak) p->peak = p->live;
    p->refs++;
  } else {
    p->live -= bytes;
    mg_pool_unref(p);
  }
}

size_t mg_pool_live(const mg_pool *p) { return p->live; }
size_t mg_pool_cached(const mg_pool *p) { return p->cached; }
size_t mg_pool_peak(const mg_pool *p) { return p->peak; }
void mg_pool_reset_peak(mg_pool *p) { p->peak = p->live; }

void mg_pages_free(void *q, size_t cap) { munmap(q, cap); }
