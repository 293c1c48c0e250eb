/*
** parallel.c - each context's small pool of worker threads, and mg_parallel_for.
** A context with N threads (mg_ctx_set_num_threads) starts N - 1 workers the first time a
** loop is big enough to share, and joins them in mg_ctx_close; contexts share nothing, so
** separate lua_States in separate threads stay independent. Plain pthread mutexes and
** condition variables (no spinning: the machine may be shared, and ThreadSanitizer sees
** every hand-over). Workers block every signal: Ctrl-C reaches the host's thread, which sets
** the context's interrupt flag; the workers read the flag between pieces and stop early, and
** the calling thread reports "<op>: interrupted!".
*/
#include "mg_impl.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

typedef struct job {
  const mg_ctx *C;
  mg_range_fn fn;
  void *arg;
  int64_t n, grain;
  int nt;                 /* shares: thread k runs share k */
  bool poll;              /* look at the interrupt flag between pieces */
  int stop;               /* set (atomically) once interrupted: every thread stops */
} job;

typedef struct worker { struct mg_workers *P; int k; pthread_t tid; } worker;

struct mg_workers {
  pthread_mutex_t mu;
  pthread_cond_t go, done;
  int n;                  /* workers started (share k + 1 is worker k's) */
  worker *w;
  uint64_t gen;           /* bumped for every job */
  int pending;            /* workers not done with job 'gen' yet */
  bool quit;
  int busy;               /* a job runs: a nested mg_parallel_for runs serially */
  job *job;               /* the current job, on the caller's stack */
};

static bool interrupted(const mg_ctx *C) {
  return C->interrupt != NULL && __atomic_load_n(C->interrupt, __ATOMIC_RELAXED) != 0;
}

/* Share 'k' of the job, in pieces of at most 'grain' iterations. */
static void run_share(job *j, int k) {
  int64_t lo = (int64_t)((__int128)j->n * k / j->nt);
  int64_t hi = (int64_t)((__int128)j->n * (k + 1) / j->nt);
  for (int64_t a = lo; a < hi; a += j->grain) {
    if (__atomic_load_n(&j->stop, __ATOMIC_RELAXED)) return;
    j->fn(j->arg, a, hi - a < j->grain ? hi : a + j->grain);
    if (j->poll && interrupted(j->C)) {
      __atomic_store_n(&j->stop, 1, __ATOMIC_RELAXED);
      return;
    }
  }
}

static void *worker_main(void *p) {
  worker *w = p;
  struct mg_workers *P = w->P;
  uint64_t seen = 0;
  pthread_mutex_lock(&P->mu);
  for (;;) {
    while (!P->quit && P->gen == seen) pthread_cond_wait(&P->go, &P->mu);
    if (P->quit) break;
    seen = P->gen;
    job *j = P->job;
    pthread_mutex_unlock(&P->mu);
    if (w->k + 1 < j->nt) run_share(j, w->k + 1);
    pthread_mutex_lock(&P->mu);
    if (--P->pending == 0) pthread_cond_signal(&P->done);
  }
  pthread_mutex_unlock(&P->mu);
  return NULL;
}

/* The context's pool with 'n' workers, started now if need be; NULL when none could be. */
static struct mg_workers *workers(mg_ctx *C, int n) {
  if (C->workers != NULL) return C->workers;
  struct mg_workers *P = calloc(1, sizeof *P);
  if (P == NULL) return NULL;
  if ((P->w = calloc((size_t)n, sizeof *P->w)) == NULL) { free(P); return NULL; }
  pthread_mutex_init(&P->mu, NULL);
  pthread_cond_init(&P->go, NULL);
  pthread_cond_init(&P->done, NULL);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);       /* the workers inherit a full mask */
  for (; P->n < n; P->n++) {
    P->w[P->n] = (worker){ .P = P, .k = P->n };
    if (pthread_create(&P->w[P->n].tid, NULL, worker_main, &P->w[P->n]) != 0) break;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  C->workers = P;                                 /* perhaps with fewer workers than asked */
  return P;
}

void mg_parallel_close(mg_ctx *C) {
  struct mg_workers *P = C->workers;
  if (P == NULL) return;
  pthread_mutex_lock(&P->mu);
  P->quit = true;
  pthread_cond_broadcast(&P->go);
  pthread_mutex_unlock(&P->mu);
  for (int i = 0; i < P->n; i++) pthread_join(P->w[i].tid, NULL);
  pthread_cond_destroy(&P->go);
  pthread_cond_destroy(&P->done);
  pthread_mutex_destroy(&P->mu);
  free(P->w);
  free(P);
  C->workers = NULL;
}

mg_status mg_parallel_for(mg_ctx *C, const char *op, int64_t n, int64_t grain, mg_range_fn fn,
                          void *arg) {
  if (grain < 1) grain = 1;
  int64_t most = n / grain;                       /* every share at least 'grain' long */
  int nt = most < C->nthreads ? (int)most : C->nthreads;
  job j = { .C = C, .fn = fn, .arg = arg, .n = n, .grain = grain, .nt = nt, .poll = op != NULL };
  struct mg_workers *P = nt >= 2 ? C->workers : NULL;
  if (nt >= 2 && P == NULL) P = workers(C, C->nthreads - 1);
  if (P != NULL && (__atomic_load_n(&P->busy, __ATOMIC_ACQUIRE) || P->n == 0)) P = NULL;
  if (P == NULL) {                                /* serial: one share, the same pieces */
    j.nt = 1;
    run_share(&j, 0);
  } else {
    if (j.nt > P->n + 1) j.nt = P->n + 1;
    pthread_mutex_lock(&P->mu);
    __atomic_store_n(&P->busy, 1, __ATOMIC_RELEASE);
    P->job = &j;
    P->gen++;
    P->pending = P->n;
    pthread_cond_broadcast(&P->go);
    pthread_mutex_unlock(&P->mu);
    run_share(&j, 0);
    pthread_mutex_lock(&P->mu);
    while (P->pending > 0) pthread_cond_wait(&P->done, &P->mu);
    P->job = NULL;
    __atomic_store_n(&P->busy, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&P->mu);
  }
  if (j.stop) return mg_fail(C, MG_EINTR, "%s: interrupted!", op);
  return MG_OK;
}

typedef struct blocks { mg_range_fn fn; void *arg; int64_t n, next; } blocks;

static void take_blocks(void *arg, int64_t lo, int64_t hi) {
  (void)lo;
  (void)hi;
  blocks *b = arg;
  for (int64_t k; (k = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED)) < b->n;)
    b->fn(b->arg, k, k + 1);
}

void mg_parallel_blocks(mg_ctx *C, int64_t n, mg_range_fn fn, void *arg) {
  blocks b = { .fn = fn, .arg = arg, .n = n, .next = 0 };
  if (n <= 0) return;
  mg_parallel_for(C, NULL, n < C->nthreads ? n : C->nthreads, 1, take_blocks, &b);
}

void mg_ctx_set_num_threads(mg_ctx *C, int n) {
  if (n < 1) n = 1;
  if (n > MG_MAXTHREADS) n = MG_MAXTHREADS;
  if (n == C->nthreads) return;
  mg_parallel_close(C);                           /* restarted at the next shared loop */
  C->nthreads = n;
}

int mg_ctx_num_threads(const mg_ctx *C) { return C->nthreads; }
