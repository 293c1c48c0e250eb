/*
** mg_impl.h - private structures of the moongrad runtime, shared by its .c files only.
*/
#ifndef MG_IMPL_H
#define MG_IMPL_H

#include "mg.h"
#include "mg_ops.h"

#include <assert.h>
#include <stdarg.h>
#include <string.h>

/* A vector loop compiled for AVX-512 and AVX2 too, the variant picked at load time (GCC on
** x86-64, outside the ASan build). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define MG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MG_CLONES
#endif

#define MG_MAXIN_INLINE 3   /* node inputs stored inline; more go to the heap (cat) */
#define MG_MAXOUT 3         /* most outputs an op produces (linalg.svd: U, S, Vh) */
#define MG_MAXSAVED 4       /* extra tensors a node keeps for its rules */
#define MG_NODE_BLOCK0 64   /* nodes in a tape's first block; block b holds 64 << b */

/* ----------------------------------------------------------------------------------------
** Storage and tensors
** -------------------------------------------------------------------------------------- */

typedef struct mg_pool mg_pool;

typedef struct mg_storage {
  int64_t refs;
  void *data;
  size_t nbytes;            /* bytes asked for */
  size_t cap;               /* bytes held (the pool's size class); 0 for host memory */
  mg_pool *pool;            /* owner of 'data' (refcounted); NULL for host memory */
  mg_release_fn release;    /* host memory: called with 'release_ud' and 'data' at the end */
  void *release_ud;
  uint32_t version;         /* bumped by every in-place write (recorded nodes compare it) */
} mg_storage;

enum {
  MG_TF_VARIABLE = 1,
  /* A batch-Jacobian seed, shape (K, B, K): element [k, b, j] is 1 if k == j, else 0.
  ** Rules may use the structure instead of multiplying by it (matmul: a view of W^T); the
  ** protocol is the rule contract in mg_ops.h. */
  MG_TF_EYE = 2,
  /* Its storage went (mg_tensor_release_reader): only tape nodes that read its shape hold it,
  ** over the context's zero-byte storage; its header's bytes still count as live. */
  MG_TF_HOLLOW = 4,
  /* With MG_TF_EYE: the matmul's rule may hand a view of W^T, not a copy (jacobian.c sets it
  ** when every consumer of that cotangent passes it on to the Jacobian's writer). */
  MG_TF_EYE_VIEW = 8,
  /* Built in caller memory by mg_tensor_binary_placed, with its storage and data: never
  ** retained or released (mg.h) */
  MG_TF_PLACED = 16
};

/* The scalar fields come first: a small tensor's header is then mostly its first cache line. */
struct mg_tensor {
  int64_t refs;
  mg_dtype dtype;
  int ndim;
  uint32_t flags;               /* MG_TF_* */
  uint32_t blind;               /* of 'refs': tape nodes that read only the shape (MG_UNREAD_*) */
  int64_t offset;               /* elements from the storage start to element (0,...,0) */
  mg_storage *storage;
  char *name;                   /* Variables only; owned */
  int64_t shape[MG_MAXDIM];     /* elements per dimension */
  int64_t stride[MG_MAXDIM];    /* elements between neighbours along a dimension */
};

/* Bytes per element: mg_dtype_size inlined (an exported function is called through the PLT). */
static inline size_t mg_dtsize(mg_dtype dt) { return dt == MG_F64 ? 8 : 4; }

/* mg_tensor_retain and mg_tensor_release inlined for the runtime's hot paths (the tape takes
** and drops three of each per recorded binary op; an exported function is called through the
** PLT). mg_unref calls out only for the last reference. */
static inline mg_tensor *mg_ref(mg_tensor *t) {
  assert(!(t->flags & MG_TF_PLACED));   /* a placed tensor's memory is its caller's */
  t->refs++;
  return t;
}

static inline void mg_unref(mg_tensor *t) {
  if (t->refs > 1) t->refs--;
  else mg_tensor_release(t);
}

static inline bool mg_is_variable(const mg_tensor *t) { return (t->flags & MG_TF_VARIABLE) != 0; }

/* Note an in-place write into 't' (every view of its storage sees it). */
static inline void mg_bump_version(mg_tensor *t) { t->storage->version++; }

/* Typed address of element (0,...,0). */
#define MG_F32P(t) ((float *)(t)->storage->data + (t)->offset)
#define MG_F64P(t) ((double *)(t)->storage->data + (t)->offset)

/* ----------------------------------------------------------------------------------------
** Tape
** -------------------------------------------------------------------------------------- */

/* Op-specific parameters of a recorded node. */
typedef struct mg_attr {
  int ni;                     /* first: all a node without attributes writes (record_on) */
  int64_t i[MG_MAXDIM];       /* dims, sizes, flags: meaning set by each op */
  double f[2];                /* scalars (clamp bounds, ...) */
} mg_attr;

/* The fields every node writes come first: recording a binary op writes its first 108 bytes
** (two or three cache lines of a fresh block), not four lines spread over all 272. */
typedef struct mg_node {
  int op;                         /* MG_OP_* */
  int nin, nout, nsaved;
  mg_tensor **in;                 /* strong refs; points at 'in_inline' or the heap (cat) */
  mg_tensor *in_inline[MG_MAXIN_INLINE];
  mg_tensor *out[MG_MAXOUT];      /* strong refs */
  /* Storage versions when recorded, checked before a rule reads the tensors' values. */
  uint32_t *ver_in;               /* 'ver_in_inline' or after the heap 'in' array */
  uint32_t ver_in_inline[MG_MAXIN_INLINE];
  uint32_t ver_out[MG_MAXOUT];
  mg_attr attr;
  mg_tensor *saved[MG_MAXSAVED];  /* strong refs: whatever the op's rules need */
  uint32_t ver_saved[MG_MAXSAVED];
} mg_node;

struct mg_tape {
  int64_t refs;
  mg_ctx *ctx;
  bool persistent;
  bool watch_vars;              /* watch_accessed_variables */
  bool recording;               /* on the context's active list */
  bool spent;                   /* non-persistent and already differentiated */
  int busy;                     /* > 0 while this tape is being differentiated */
  mg_node *blocks[40];          /* nodes in blocks of doubling size: they never move */
  size_t blockcap[40];          /* ... each from the context's pool, with its size class */
  mg_pool *pool;                /* that pool (each block holds a reference to it) */
  size_t n, nblocks;
  mg_tensor **watched;          /* strong refs, in watch order */
  size_t nwatched, capwatched;
  mg_tape *next_active;
};

/* ----------------------------------------------------------------------------------------
** Context
** -------------------------------------------------------------------------------------- */

typedef struct mg_rng { uint64_t s[4]; double spare; bool has_spare; } mg_rng;

struct mg_ctx {
  char errmsg[256];
  mg_dtype default_dtype;
  mg_pool *pool;
  mg_tape *active;              /* tapes recording now, innermost first */
  int nactive;
  int nbusy;                    /* of those, how many are being differentiated (not recording) */
  int no_grad;                  /* > 0 inside no_grad: nothing is recorded */
  size_t memory_budget;
  size_t jacobian_limit;        /* most bytes of a Jacobian's result; 0: MemAvailable */
  mg_rng rng;
  volatile sig_atomic_t *interrupt;   /* host-owned flag polled by long loops; NULL: none */
  int nthreads;                 /* mg_ctx_set_num_threads: shares of a big loop */
  struct mg_workers *workers;   /* nthreads - 1 workers, started at first need; NULL: none */
  mg_storage *hollow;           /* zero bytes: of the tensors only shape readers hold
                                   (mg_tensor_release_reader); NULL until needed */
};

/* Set the context's error message and return 'st'. printf-style. */
mg_status mg_fail(mg_ctx *C, mg_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* MG_EINTR with "<op>: interrupted!" once the host's interrupt flag is set, else MG_OK. A
** load and a compare: call it per row, block, node or chunk, never per element. */
static inline mg_status mg_poll(mg_ctx *C, const char *op) {
  if (C->interrupt == NULL || *C->interrupt == 0) return MG_OK;
  return mg_fail(C, MG_EINTR, "%s: interrupted!", op);
}
/* Whether 'msg' starts by naming its function ("matmul: ..."). */
bool mg_error_named(const char *msg);
/* Prefix the context's message with "op: " unless it names a function already (what tensor
** creation reports, "out of memory allocating ...", is named by the op that asked); 'st'. */
mg_status mg_name_error(mg_ctx *C, mg_status st, const char *op);
/* Append "(2,3)" for a shape to 'buf' (size 'n'); returns 'buf'. */
char *mg_shapestr(char *buf, size_t n, int ndim, const int64_t *shape);

/* ----------------------------------------------------------------------------------------
** Internal tensor helpers (tensor.c)
** -------------------------------------------------------------------------------------- */

/* A new tensor header viewing 's' (which gains a reference). NULL when out of memory. */
mg_tensor *mg_view_new(mg_ctx *C, mg_storage *s, mg_dtype dt, int ndim, const int64_t *shape,
                       const int64_t *stride, int64_t offset);
void mg_contiguous_strides(int ndim, const int64_t *shape, int64_t *stride);
/* mg_tensor_empty for a shape known valid (an existing tensor's) of 'n' elements. */
mg_status mg_tensor_empty_n(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape, int64_t n,
                            mg_tensor **out);
/* mg_ctx_close: the context's reference to its zero-byte storage (mg_tensor_release_reader). */
void mg_hollow_release(mg_ctx *C);
/* numel of a shape, or -1 when it overflows or a size is negative. */
/* npy.c: the .npy header of 't' into 'out' (MG_NPY_HEADER_MAX bytes); returns its length. */
#define MG_NPY_HEADER_MAX 522
size_t mg_npy_header(const mg_tensor *t, unsigned char *out);
/* safetensors.c: append 'name' (copied) and 't' (owned by the set; released on failure). */
mg_status mg_tensor_dict_push(mg_ctx *C, mg_tensor_dict *s, const char *name, mg_tensor *t);
/* ... and a metadata entry (both strings copied). */
mg_status mg_tensor_dict_meta_push(mg_ctx *C, mg_tensor_dict *s, const char *key, const char *value);
int64_t mg_shape_numel(int ndim, const int64_t *shape);
bool mg_same_shape(const mg_tensor *a, const mg_tensor *b);
/* Whether some element of 't' equals 'v' (NaN: never). */
bool mg_any_equal(const mg_tensor *t, double v);
bool mg_any_nan(const mg_tensor *t);
/* Normalize 'dim' (negative counts from the end) into [0, ndim); -1 when out of range. */
int mg_normdim(int dim, int ndim);

/* Pool (pool.c): blocks of at least 'nbytes', reused by size class. */
mg_pool *mg_pool_new(void);
void mg_pool_unref(mg_pool *p);
void *mg_pool_alloc(mg_pool *p, size_t nbytes, size_t *cap);
void mg_pool_free(mg_pool *p, void *data, size_t cap);
/* The same blocks, not counted as live storage (a tape's node blocks): a freed one is cached
** for the next tape instead of going back to the system, whose fresh pages cost their zeroing
** again. Each block holds a reference to the pool. */
void *mg_pool_block_get(mg_pool *p, size_t nbytes, size_t *cap);
void mg_pool_block_put(mg_pool *p, void *data, size_t cap);
/* Fresh zeroed pages straight from the system (huge pages from 2 MiB on); 'cap' again to free. */
void *mg_pages_alloc(size_t cap);
void mg_pages_free(void *q, size_t cap);
/* Free lists of small fixed-size objects (bounded), so that per-op headers avoid malloc. */
enum { MG_SMALL_TENSOR, MG_SMALL_STORAGE64, MG_SMALL_STORAGE256, MG_SMALL_COUNT };
void *mg_pool_small_get(mg_pool *p, int cls);
void mg_pool_small_put(mg_pool *p, int cls, void *q);
/* Count 'bytes' held outside the pool's blocks (small storage) as live, or no longer. */
void mg_pool_account(mg_pool *p, size_t bytes, bool add);
size_t mg_pool_live(const mg_pool *p);
size_t mg_pool_cached(const mg_pool *p);
size_t mg_pool_peak(const mg_pool *p);
void mg_pool_reset_peak(mg_pool *p);
void mg_pool_trim(mg_pool *p);

/* ----------------------------------------------------------------------------------------
** Strided iteration (iter.c): up to 4 operands over one broadcast shape.
** -------------------------------------------------------------------------------------- */

#define MG_MAXOPS 4

typedef struct mg_iter {
  int ndim, nops;                         /* after collapsing */
  int64_t shape[MG_MAXDIM];
  int64_t stride[MG_MAXOPS][MG_MAXDIM];   /* in elements; 0 where broadcast */
  char *ptr[MG_MAXOPS];                   /* element (0,...,0) of each operand */
  size_t esize[MG_MAXOPS];
} mg_iter;

/* Inner loop: 'n' elements; p[k] and s[k] (elements) for operand k. */
typedef void (*mg_loop_fn)(int64_t n, char **p, const int64_t *s, void *ud);

/* Set up iteration of 'ops' (each broadcastable to 'shape') over 'shape'. */
void mg_iter_init(mg_iter *it, int ndim, const int64_t *shape, int nops,
                  mg_tensor *const *ops);
/* Call 'fn' over the whole iteration space. With a context, the loop polls its interrupt
** flag every MG_POLL_ELEMS elements (inner rows are cut to at most MG_POLL_ROW elements for
** that) and stops with MG_EINTR "<op>: interrupted!": only for ops computing a new output,
** which the caller then frees. C == NULL: runs to the end (writes into existing tensors must
** not stop halfway); returns MG_OK. */
#define MG_POLL_ELEMS ((int64_t)1 << 16)
#define MG_POLL_ROW ((int64_t)1 << 22)
mg_status mg_iter_run(mg_ctx *C, const char *op, const mg_iter *it, mg_loop_fn fn, void *ud);
/* Call 'fn' over the elements [lo, hi) of the iteration space, counted in row-major order (the
** order mg_iter_run visits them), without polling: one piece of a parallel loop. */
void mg_iter_run_range(const mg_iter *it, int64_t lo, int64_t hi, mg_loop_fn fn, void *ud);
/* Elements of the iteration space. */
int64_t mg_iter_numel(const mg_iter *it);
/* Whether 'src' broadcasts to exactly the shape of 'dst' (in-place ops). */
bool mg_broadcasts_to(const mg_tensor *src, const mg_tensor *dst);
/* Broadcast shape of two shapes; false when they do not broadcast. */
bool mg_broadcast_shape(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                        int64_t *out);

/* ----------------------------------------------------------------------------------------
** Threads (parallel.c)
** -------------------------------------------------------------------------------------- */

/* A loop body over the iterations [lo, hi) of a parallel loop. It runs on any thread of the
** context (perhaps several ranges per thread, in any order): it may write only what its own
** iterations own, and must not touch the context (no mg_fail, no tensor creation, no poll). */
typedef void (*mg_range_fn)(void *arg, int64_t lo, int64_t hi);

/* Iterations per piece of the elementwise kernels and reductions: smaller loops run serially. */
#define MG_PAR_GRAIN MG_POLL_ELEMS

/* Run fn(arg, lo, hi) over disjoint ranges covering [0, n), in pieces of at most 'grain'
** iterations: shared among the context's threads when there is at least 'grain' for each of
** two, else all on the calling thread (also when called from inside another parallel loop).
** Which thread runs a piece never changes what it computes, so the result is the same for any
** thread count as long as each iteration is computed on its own (a reduction combines
** per-piece partials in a fixed order: reduce.c). With 'op' non-NULL the interrupt flag is
** read between pieces; once set, the remaining pieces are skipped and the call returns
** MG_EINTR "<op>: interrupted!" (for loops filling a new output, which the caller then frees).
** 'op' NULL: always runs to the end (writes into existing tensors must not stop halfway). */
mg_status mg_parallel_for(mg_ctx *C, const char *op, int64_t n, int64_t grain, mg_range_fn fn,
                          void *arg);
/* Run fn(arg, k, k + 1) for every block k in [0, n): each of the context's threads takes the
** next block not yet taken until none is left, so a thread slowed down (another process on
** its core) takes fewer. For blocks of uneven sizes, each computed on its own (the same bits
** whoever runs it); never interrupted. */
void mg_parallel_blocks(mg_ctx *C, int64_t n, mg_range_fn fn, void *arg);
/* Join the context's workers (mg_ctx_close, or a new thread count). */
void mg_parallel_close(mg_ctx *C);

/* ----------------------------------------------------------------------------------------
** Helpers for rules (rules.c)
** -------------------------------------------------------------------------------------- */

/* Sum 'g' (lead dims .. broadcast shape) down to lead dims .. 'shape'. New reference. */
mg_status mg_unbroadcast(mg_ctx *C, mg_tensor *g, int lead, int ndim, const int64_t *shape,
                         mg_tensor **out);
/* Expand 't' (lead dims .. some shape broadcastable to 'shape') to lead dims .. 'shape'. */
mg_status mg_expand_lead(mg_ctx *C, mg_tensor *t, int lead, int ndim, const int64_t *shape,
                         mg_tensor **out);
/* Insert size-1 dims after the lead dims of 't' so that its own dims are right-aligned
** with an 'ndim'-d output (a tangent of a lower-rank input). */
mg_status mg_align_lead(mg_ctx *C, mg_tensor *t, int lead, int ndim, mg_tensor **out);
/* The 'lead' leading sizes of 'g' followed by 'ndim' sizes of 'shape' into 'dst'. */
int mg_lead_shape(const mg_tensor *g, int lead, int ndim, const int64_t *shape, int64_t *dst);
/* The rules of an op linear in its input in[0] (flip, diagonal, gather, softmax's VJP in the
** cotangent, ...) from one function 'apply': the op as node 'n' recorded it (adjoint false)
** or its adjoint (true) on 'v' (with 'lead' leading dims), a new reference in 'res'.
** mg_linear_vjp applies the adjoint to the cotangent g[0]; mg_linear_jvp the op to the
** tangent t[0] broadcast to the input's shape. Such an op's rule record is
** { .vjp = mg_linear_vjp, .jvp = mg_linear_jvp, .linear = apply } (mg_ops.h). */
mg_status mg_linear_vjp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *g,
                        const bool *need, mg_tensor **gin);
mg_status mg_linear_jvp(mg_ctx *C, const mg_node *n, int lead, mg_tensor *const *t,
                        mg_tensor **tout);

/* Row-major GEMM on raw buffers: y = alpha op(a) op(b) + beta y (linalg.c). */
void mg_gemm(mg_dtype dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
             const void *a, int64_t lda, const void *b, int64_t ldb, double beta, void *y,
             int64_t ldy);
/* The same, shared over C's threads in blocks of whole output rows or columns set by the
** shape alone (never along K), so the bits do not depend on the thread count. Called from
** inside a shared loop, it runs on the calling thread. */
void mg_gemm_par(mg_ctx *C, mg_dtype dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                 double alpha, const void *a, int64_t lda, const void *b, int64_t ldb,
                 double beta, void *y, int64_t ldy);
/* A product cut as mg_gemm_par cuts it, for a caller sharing the blocks of several products
** (and other work) in one parallel loop: mg_gemm_plan_make fills 'g' and returns its number
** of blocks (0 for an empty product); mg_gemm_block computes block k, on any thread. */
typedef struct mg_gemm_plan {
  mg_dtype dt;
  bool ta, tb, rows;              /* 'rows': blocks of output rows, else of columns */
  int64_t M, N, K, blk, nb, lda, ldb, ldy;  /* blk: rows (columns) per block; nb blocks */
  double alpha, beta;
  const void *a, *b;
  void *y;
} mg_gemm_plan;
int64_t mg_gemm_plan_make(mg_gemm_plan *g, mg_dtype dt, bool ta, bool tb, int64_t M, int64_t N,
                          int64_t K, double alpha, const void *a, int64_t lda, const void *b,
                          int64_t ldb, double beta, void *y, int64_t ldy);
void mg_gemm_block(const mg_gemm_plan *g, int64_t k);
/* The default thread count of a new context: OpenBLAS's count before the first call, which
** sets OpenBLAS to one thread for the process (linalg.c). */
int mg_default_threads(void);
/* Whether OpenBLAS runs its AVX-512 kernels (SkylakeX, Cooperlake, SapphireRapids): then its
** SGEMM is at least as fast as smallgemm.c's mg_gemm_at_f32 on the weight gradients' A' B
** (cells.c, docs/performance.md). Read once per process. */
bool mg_blas_avx512(void);

/* ----------------------------------------------------------------------------------------
** Expressions for composite rules (rules.c): each mg_ex_* returns a borrowed tensor
** owned by the expression (released by mg_ex_end), or NULL once anything failed; the
** first failure's status stays in 'st'. So a rule reads as the maths it computes.
** -------------------------------------------------------------------------------------- */

#define MG_EX_MAX 96

typedef struct mg_ex {
  mg_ctx *C;
  mg_status st;
  int n;
  mg_tensor *t[MG_EX_MAX];
} mg_ex;

void mg_ex_begin(mg_ex *e, mg_ctx *C);
/* Release every temporary; returns the status. */
mg_status mg_ex_end(mg_ex *e);
/* A new reference to 't' for the caller (NULL stays NULL). */
mg_tensor *mg_ex_keep(mg_ex *e, mg_tensor *t);
/* Take over '*tp' (a new reference filled by the call that returned 'st') as a temporary. */
mg_tensor *mg_ex_own(mg_ex *e, mg_status st, mg_tensor **tp);
mg_tensor *mg_ex_add(mg_ex *e, mg_tensor *a, mg_tensor *b);
mg_tensor *mg_ex_sub(mg_ex *e, mg_tensor *a, mg_tensor *b);
mg_tensor *mg_ex_mul(mg_ex *e, mg_tensor *a, mg_tensor *b);
mg_tensor *mg_ex_rsub(mg_ex *e, double v, mg_tensor *a);           /* v - a */
mg_tensor *mg_ex_unary(mg_ex *e, mg_unary op, mg_tensor *a);
mg_tensor *mg_ex_matmul(mg_ex *e, mg_tensor *a, mg_tensor *b);
mg_tensor *mg_ex_mT(mg_ex *e, mg_tensor *a);                       /* swap the last two dims */
mg_tensor *mg_ex_narrow(mg_ex *e, mg_tensor *a, int dim, int64_t start, int64_t len);
mg_tensor *mg_ex_select(mg_ex *e, mg_tensor *a, int dim, int64_t i);
mg_tensor *mg_ex_unsqueeze(mg_ex *e, mg_tensor *a, int dim);
mg_tensor *mg_ex_cat(mg_ex *e, int n, mg_tensor *const *xs, int dim);
mg_tensor *mg_ex_sum(mg_ex *e, mg_tensor *a, uint32_t mask);
mg_tensor *mg_ex_align(mg_ex *e, mg_tensor *t, int lead, int ndim);
/* Zeros of lead dims of 'like' .. shape of 'shape_of'. */
mg_tensor *mg_ex_zeros(mg_ex *e, mg_tensor *like, int lead, mg_tensor *shape_of);
mg_tensor *mg_ex_div(mg_ex *e, mg_tensor *a, mg_tensor *b);
mg_tensor *mg_ex_bins(mg_ex *e, mg_binary op, mg_tensor *a, double v);      /* a op v */
mg_tensor *mg_ex_sbin(mg_ex *e, mg_binary op, double v, mg_tensor *a);      /* v op a */
mg_tensor *mg_ex_where(mg_ex *e, mg_tensor *c, mg_tensor *a, mg_tensor *b);
mg_tensor *mg_ex_full(mg_ex *e, mg_dtype dt, double v);                     /* 0-d */

/* ----------------------------------------------------------------------------------------
** Recording (tape.c)
** -------------------------------------------------------------------------------------- */

/* True when an op run now would be recorded by some tape. */
static inline bool mg_recording(const mg_ctx *C) {
  return C->nactive > C->nbusy && C->no_grad == 0;
}

/* Record a node on every active tape. Inputs, outputs and saved tensors gain references.
** Returns MG_ENOMEM (message set) when a tape cannot grow; the forward result stays valid. */
mg_status mg_record(mg_ctx *C, int op, int nin, mg_tensor *const *in, int nout,
                    mg_tensor *const *out, int nsaved, mg_tensor *const *saved,
                    const mg_attr *attr);

/* Node 'i' (in execution order) of a tape: block b starts at node 64 (2^b - 1). */
static inline mg_node *mg_tape_node(const mg_tape *T, size_t i) {
  size_t q = i / MG_NODE_BLOCK0 + 1;
  int b = 63 - __builtin_clzll((unsigned long long)q);
  return &T->blocks[b][i - MG_NODE_BLOCK0 * (((size_t)1 << b) - 1)];
}

/* Whether node 'n' passes its output's cotangent on unmultiplied in a batch-Jacobian sweep:
** an elementwise unary op, or an add whose inputs (those 'need' marks; NULL: all) have its
** output's shape and dtype (tape.c's deferred rules; jacobian.c's view_ok). */
bool mg_node_passes_on(const mg_node *n, const bool *need);

/* Hand out 'y', the only output of op(in...), recording it first when a tape records; on
** failure 'y' is released. What every single-output op ends with. */
mg_status mg_record_result(mg_ctx *C, int op, int nin, mg_tensor *const *in, mg_tensor *y,
                           const mg_attr *attr, mg_tensor **out);

/* Sweeps inside a mg_tape_begin/mg_tape_end bracket (several sweeps may share one). */
mg_status mg_tape_begin(mg_tape *T);
void mg_tape_end(mg_tape *T, mg_status st);   /* st MG_EINTR: not spent */
mg_status mg_tape_gradient_sweep(mg_tape *T, int ntargets, mg_tensor *const *targets,
                                 mg_tensor *const *seeds, int lead, int nsources,
                                 mg_tensor *const *sources, bool unconnected_zero,
                                 mg_tensor **grads);
/* A Jacobian's sweep: mg_tape_gradient_sweep of one target with one seed at lead 1, except
** that a source's gradient may come as rows[j] * grads[j] * diags[j] not yet multiplied
** (diags[j] of the source's shape, broadcast along the basis dim; rows[j] (K, B), broadcast
** along the source's dims after the batch; NULL where there is none): tape.c's deferred
** diagonals, for the caller to write the product once, where it wants it. */
mg_status mg_tape_jacobian_sweep(mg_tape *T, mg_tensor *target, mg_tensor *seed, int nsources,
                                 mg_tensor *const *sources, bool unconnected_zero,
                                 mg_tensor **grads, mg_tensor **diags, mg_tensor **rows);
/* rows * val * diag of such a gradient (either factor NULL: none) by the multiply's kernel.
** New reference. */
mg_status mg_factors_product(mg_ctx *C, mg_tensor *val, mg_tensor *diag, mg_tensor *rows,
                             mg_tensor **out);
mg_status mg_tape_forward_sweep(mg_tape *T, int nsources, mg_tensor *const *sources,
                                mg_tensor *const *tangents, int lead, int ntargets,
                                mg_tensor *const *targets, mg_tensor **out);

#endif
