/*
** mg.h - the public C interface of the moongrad runtime.
**
** A runtime call that can fail on user input returns an 'mg_status' (MG_OK is 0) and leaves a
** message naming the op and the offending values in the context's error slot ('mg_errmsg').
** On failure nothing the caller owns changes: outputs are assigned last.
**
** Ownership: every 'mg_tensor *' returned through an out-parameter is a new reference that the
** caller releases with 'mg_tensor_release'. Tensor arguments are borrowed.
**
** Dimensions in this C interface are 0-based; the Lua bindings translate from 1-based.
*/
#ifndef MG_H
#define MG_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>
#include <signal.h>   /* sig_atomic_t */

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MG_API __declspec(dllexport)
#else
#define MG_API __attribute__((visibility("default")))
#endif

#define MG_MAXDIM 12   /* most dimensions a tensor may have */

typedef enum mg_dtype { MG_F32 = 0, MG_F64 = 1 } mg_dtype;

typedef enum mg_status {
  MG_OK = 0,
  MG_EARG,      /* bad argument value */
  MG_ESHAPE,    /* shapes do not fit the op */
  MG_EINDEX,    /* index or dimension out of range */
  MG_ENOMEM,    /* allocation failed or size overflows */
  MG_EIO,       /* file could not be opened, read or written */
  MG_EFORMAT,   /* malformed file */
  MG_ESTATE,    /* object used in a state that forbids it (e.g. a spent tape) */
  MG_EINTR      /* stopped by the host's interrupt flag ('mg_ctx_set_interrupt_flag') */
} mg_status;

typedef struct mg_ctx mg_ctx;         /* per-interpreter state: RNG, default dtype, tapes, pool */
typedef struct mg_tensor mg_tensor;   /* a strided view over reference-counted storage */
typedef struct mg_tape mg_tape;       /* a gradient tape */

/* Release callback for host memory wrapped by 'mg_tensor_wrap': called once, when the last
** view of the memory is gone. */
typedef void (*mg_release_fn)(void *ud, void *data);

/* ----------------------------------------------------------------------------------------
** Context
** -------------------------------------------------------------------------------------- */

/* New context (NULL when out of memory); free it with 'mg_ctx_close' once no tensor is in use. */
MG_API mg_ctx *mg_ctx_new(void);
MG_API void mg_ctx_close(mg_ctx *C);
/* The message of the last failed call on 'C' ("" when none). Borrowed; valid until the next call. */
MG_API const char *mg_errmsg(const mg_ctx *C);
MG_API mg_dtype mg_default_dtype(const mg_ctx *C);
MG_API void mg_set_default_dtype(mg_ctx *C, mg_dtype dt);
/* Bytes of tensor storage currently alive, and cached by the pool for reuse. */
MG_API size_t mg_live_bytes(const mg_ctx *C);
MG_API size_t mg_cached_bytes(const mg_ctx *C);
/* The most bytes of tensor storage alive at once since the context began or since the last
** 'mg_reset_peak_bytes' (which starts it again at the bytes alive now). */
MG_API size_t mg_peak_bytes(const mg_ctx *C);
MG_API void mg_reset_peak_bytes(mg_ctx *C);
/* Return every cached block to the system. */
MG_API void mg_empty_cache(mg_ctx *C);
/* Bytes a vectorized Jacobian may use before it is split in chunks (default 1 GiB). */
MG_API void mg_set_memory_budget(mg_ctx *C, size_t bytes);
MG_API size_t mg_memory_budget(const mg_ctx *C);
/* Interrupts. 'flag' (host-owned; NULL, the default, turns polling off) is read by the long
** loops of ops on 'C': elementwise kernels and reductions every 65536 elements, softmax and
** argmax per row, matmul per batch matrix, fused cells per step, tape sweeps per node,
** Jacobians per chunk. Once '*flag' is non-zero, the op fails with MG_EINTR and the message
** "<op>: interrupted!" (e.g. "sum: interrupted!"); its partial result is freed and nothing is
** recorded on a tape; a non-persistent tape whose gradient was interrupted is not spent.
** Loops that write into existing tensors (copy, fill, in-place add) and single BLAS calls
** (one matmul, the gemms of a fused cell) run to their end. The runtime only reads the flag:
** the host sets it (typically from a SIGINT handler, where a store to a 'volatile
** sig_atomic_t' is all that is allowed) and clears it before its next call. The flag must
** outlive its use by 'C'. Each context polls its own flag, so hosts running several contexts
** in several threads decide which ones a signal stops. */
MG_API void mg_ctx_set_interrupt_flag(mg_ctx *C, volatile sig_atomic_t *flag);
/* Most bytes a Jacobian's result may have (jacobian, batch_jacobian, and the callers'
** hessian, gradcheck): a larger one is refused before its first sweep, naming the function,
** the shape and the bytes. 0 (the default): the MemAvailable of /proc/meminfo at the call
** (no limit where that cannot be read). */
MG_API void mg_set_jacobian_limit(mg_ctx *C, size_t bytes);
MG_API size_t mg_jacobian_limit(const mg_ctx *C);
/* MG_OK when 'n' results of the shapes 'shapes[i]' ('ndims[i]' dims) of 'esize' bytes per
** element fit the limit above, else MG_ENOMEM with "<fn>: the result ... does not fit". */
MG_API mg_status mg_check_result_bytes(mg_ctx *C, const char *fn, int n, const int *ndims,
                                       const int64_t *const *shapes, double esize);

/* OpenBLAS's own thread count: the only process-wide state of the runtime. The first context
** made sets it to 1 (each context shares its GEMMs over its own threads instead); a host may
** set it again for its own BLAS calls: moongrad's results stay the same. */
MG_API void mg_set_num_threads(int n);
MG_API int mg_get_num_threads(void);
/* Threads of one context's own kernels (elementwise ops, reductions, GEMMs; 1..MG_MAXTHREADS,
** clamped): loops above a size threshold are shared by a pool of n - 1 workers the context
** starts when first needed and joins in mg_ctx_close. Each context has its own count and pool.
** The default is OpenBLAS's count before the first context was made (the cores, or
** OPENBLAS_NUM_THREADS). Results do not depend on the count. */
#define MG_MAXTHREADS 1024
MG_API void mg_ctx_set_num_threads(mg_ctx *C, int n);
MG_API int mg_ctx_num_threads(const mg_ctx *C);
/* Name of the OpenBLAS kernels in use ("Haswell", "SkylakeX", ...), and of the best kernels
** this CPU supports; both borrowed static strings. When OPENBLAS_CORETYPE is not set and
** OpenBLAS picked a narrower kernel family than the CPU supports (a CPU model it does not
** know), moongrad chooses again before the first context; mg_blas_detected_corename is then
** OpenBLAS's own choice, else NULL. mg_blas_kernel_rank: 3 for OpenBLAS's AVX-512 kernel
** families, 2 AVX2, 1 AVX, 0 SSE, -1 for a name it does not rank. */
MG_API const char *mg_blas_corename(void);
MG_API const char *mg_cpu_best_corename(void);
MG_API const char *mg_blas_detected_corename(void);
MG_API int mg_blas_kernel_rank(const char *name);
/* The Lyapunov C path's own kernels (mg_lyapunov_*): their vector width and, on x86-64, the
** machines they were compiled for: "512-bit, x86-64-v4" (AVX-512), else 256 bits at a time on
** each half of the lanes, "256-bit, x86-64-v3" (AVX2) or "256-bit, x86-64" (the baseline);
** "512-bit" or "256-bit" where they were built for the target alone. MG_LYAP_WIDTH=512, 256
** or baseline overrides the choice (512 only where the 512-bit kernels can run). A borrowed
** static string. */
MG_API const char *mg_lyapunov_kernels(void);

/* ----------------------------------------------------------------------------------------
** Tensors
** -------------------------------------------------------------------------------------- */

MG_API const char *mg_dtype_name(mg_dtype dt);
MG_API size_t mg_dtype_size(mg_dtype dt);

MG_API mg_tensor *mg_tensor_retain(mg_tensor *t);
MG_API void mg_tensor_release(mg_tensor *t);
/* mg_tensor_release for a reference that could read the values (a host's, a Lua value's): when
** what is left are only tape nodes that read no more than its shape (the add on a tape keeps
** its operands and result for their identity and shape), the storage goes back to 'C' at once
** instead of when the tape goes; the header stays, over a zero-byte storage. */
MG_API void mg_tensor_release_reader(mg_ctx *C, mg_tensor *t);

MG_API int mg_tensor_ndim(const mg_tensor *t);
MG_API const int64_t *mg_tensor_shape(const mg_tensor *t);    /* elements per dim */
MG_API const int64_t *mg_tensor_strides(const mg_tensor *t);  /* in elements */
MG_API int64_t mg_tensor_numel(const mg_tensor *t);
MG_API mg_dtype mg_tensor_dtype(const mg_tensor *t);
MG_API bool mg_tensor_is_contiguous(const mg_tensor *t);
/* Bytes of the storage 't' views (a view's base's; 0 once only shape readers hold it). */
MG_API size_t mg_tensor_storage_bytes(const mg_tensor *t);
/* Address of element (0,...,0): borrowed, valid while 't' lives. */
MG_API void *mg_tensor_data(const mg_tensor *t);

/* New uninitialized / zero-filled contiguous tensor. */
MG_API mg_status mg_tensor_empty(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape,
                                 mg_tensor **out);
MG_API mg_status mg_tensor_zeros(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape,
                                 mg_tensor **out);
MG_API mg_status mg_tensor_full(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape,
                                double v, mg_tensor **out);
/* Wrap host memory without copying ('strides' NULL = C order). 'release' (may be NULL) is
** called with 'ud' and 'data' when the last view is gone. On failure 'release' is not called. */
MG_API mg_status mg_tensor_wrap(mg_ctx *C, mg_dtype dt, int ndim, const int64_t *shape,
                                const int64_t *strides, void *data, mg_release_fn release,
                                void *ud, mg_tensor **out);
MG_API double mg_tensor_get(const mg_tensor *t, const int64_t *idx);
MG_API void mg_tensor_set(mg_tensor *t, const int64_t *idx, double v);
/* Storage version: every in-place write (set, fill, copy, add_, the random fills) bumps it,
** and a gradient or forward sweep refuses to use a recorded node whose tensors changed since
** they were recorded ("<op>: a tensor saved for the gradient was modified in place ...").
** A host that writes through 'mg_tensor_data' or wrapped memory after handing the tensor
** to an op calls 'mg_tensor_bump_version' (any view of the same storage will do). */
MG_API void mg_tensor_bump_version(mg_tensor *t);
MG_API uint32_t mg_tensor_version(const mg_tensor *t);


/* ----------------------------------------------------------------------------------------
** Ops. Each is recorded on every active tape of 'C' (see the Autograd section) and has
** reverse- and forward-mode rules. Results are new references in '*out'.
** Binary ops broadcast as NumPy does; mixed dtypes promote to float64.
** -------------------------------------------------------------------------------------- */

/* Elementwise kernels, one value per row of the op list "mg_ops.def" (which also says which
** of them are recorded): MG_U_NEG, MG_U_EXP, ... and MG_B_ADD, ..., MG_B_GE. */
typedef enum mg_unary {
#define MG_UNARY_OP(kernel, opcode, name) kernel,
#define MG_UNARY_KERNEL(kernel, name) kernel,
#include "mg_ops.def"
  MG_U_COUNT
} mg_unary;

typedef enum mg_binary {
#define MG_BINARY_OP(kernel, opcode, name) kernel,
#define MG_BINARY_KERNEL(kernel, name) kernel,   /* comparisons: 0/1, not recorded */
#include "mg_ops.def"
  MG_B_COUNT
} mg_binary;

MG_API mg_status mg_tensor_unary(mg_ctx *C, mg_unary op, mg_tensor *x, mg_tensor **out);
MG_API mg_status mg_tensor_binary(mg_ctx *C, mg_binary op, mg_tensor *a, mg_tensor *b,
                                  mg_tensor **out);
/* Placed results: a small elementwise result that no tape records, built in memory the caller
** owns (the Lua bindings put it inside the result's userdata: one allocation and no finalizer).
** The *_placed_size functions give the bytes it needs (8-byte aligned memory), or 0 when the op
** must go through the ordinary function (a tape records it, the operands are not dense tensors
** of one shape and dtype, or the result has more than 256 bytes of data); a NULL 'b' asks for
** mg_tensor_binary_scalar_placed. The *_placed functions compute it into 'mem' (that many
** bytes) with the same kernels and results as mg_tensor_binary, mg_tensor_binary_scalar and
** mg_tensor_unary, and return it; they cannot fail.
** A placed tensor is borrowed, never owned: it goes only to these functions and to
** mg_tensor_unplace; never retain or release it, nor hand it to any other call.
** mg_tensor_unplace copies it into a new ordinary tensor (not recorded). */
MG_API size_t mg_tensor_binary_placed_size(const mg_ctx *C, mg_binary op, const mg_tensor *a,
                                           const mg_tensor *b);
MG_API size_t mg_tensor_unary_placed_size(const mg_ctx *C, mg_unary op, const mg_tensor *x);
MG_API mg_tensor *mg_tensor_binary_placed(mg_ctx *C, mg_binary op, const mg_tensor *a,
                                          const mg_tensor *b, void *mem);
MG_API mg_tensor *mg_tensor_binary_scalar_placed(mg_ctx *C, mg_binary op, const mg_tensor *x,
                                                 double v, bool scalar_first, void *mem);
MG_API mg_tensor *mg_tensor_unary_placed(mg_ctx *C, mg_unary op, const mg_tensor *x, void *mem);
MG_API mg_status mg_tensor_unplace(mg_ctx *C, const mg_tensor *t, mg_tensor **out);
/* 'x' op 'v' (or 'v' op 'x' when 'scalar_first'), 'v' taking the dtype of 'x'. */
MG_API mg_status mg_tensor_binary_scalar(mg_ctx *C, mg_binary op, mg_tensor *x, double v,
                                         bool scalar_first, mg_tensor **out);
MG_API mg_status mg_tensor_clamp(mg_ctx *C, mg_tensor *x, double lo, double hi,
                                 mg_tensor **out);
/* where(cond != 0, a, b) */
MG_API mg_status mg_tensor_where(mg_ctx *C, mg_tensor *cond, mg_tensor *a, mg_tensor *b,
                                 mg_tensor **out);

/* Activations with a parameter (recorded; the gradient at 0 is PyTorch's): elu, x > 0 ? x :
** alpha (e^x - 1); celu, x > 0 ? x : alpha (e^(x/alpha) - 1) (alpha != 0); leaky_relu,
** x > 0 ? x : alpha x; gelu, x Phi(x), or its tanh approximation; hard_sigmoid, Keras 3's
** relu6(x + 3) / 6 ('keras' 3) or Keras 2's clip(0.2 x + 0.5, 0, 1) ('keras' 2). */
MG_API mg_status mg_tensor_elu(mg_ctx *C, mg_tensor *x, double alpha, mg_tensor **out);
MG_API mg_status mg_tensor_celu(mg_ctx *C, mg_tensor *x, double alpha, mg_tensor **out);
MG_API mg_status mg_tensor_leaky_relu(mg_ctx *C, mg_tensor *x, double alpha, mg_tensor **out);
MG_API mg_status mg_tensor_gelu(mg_ctx *C, mg_tensor *x, bool tanh_form, mg_tensor **out);
MG_API mg_status mg_tensor_hard_sigmoid(mg_ctx *C, mg_tensor *x, int keras, mg_tensor **out);

/* Views: share storage with 'x'. 'shape' of reshape may hold one -1. */
MG_API mg_status mg_tensor_reshape(mg_ctx *C, mg_tensor *x, int ndim, const int64_t *shape,
                                   mg_tensor **out);
MG_API mg_status mg_tensor_permute(mg_ctx *C, mg_tensor *x, const int *perm, mg_tensor **out);
MG_API mg_status mg_tensor_transpose(mg_ctx *C, mg_tensor *x, int d1, int d2,
                                     mg_tensor **out);
MG_API mg_status mg_tensor_squeeze(mg_ctx *C, mg_tensor *x, int dim /* <0: all size-1 */,
                                   mg_tensor **out);
MG_API mg_status mg_tensor_unsqueeze(mg_ctx *C, mg_tensor *x, int dim, mg_tensor **out);
MG_API mg_status mg_tensor_narrow(mg_ctx *C, mg_tensor *x, int dim, int64_t start,
                                  int64_t len, mg_tensor **out);
MG_API mg_status mg_tensor_select(mg_ctx *C, mg_tensor *x, int dim, int64_t i,
                                  mg_tensor **out);
/* Broadcast 'x' to 'shape' (stride 0 where expanded). */
MG_API mg_status mg_tensor_expand(mg_ctx *C, mg_tensor *x, int ndim, const int64_t *shape,
                                  mg_tensor **out);
/* Copies. 'contiguous' returns 'x' itself (a new reference) when already contiguous. */
MG_API mg_status mg_tensor_contiguous(mg_ctx *C, mg_tensor *x, mg_tensor **out);
MG_API mg_status mg_tensor_clone(mg_ctx *C, mg_tensor *x, mg_tensor **out);
MG_API mg_status mg_tensor_cast(mg_ctx *C, mg_tensor *x, mg_dtype dt, mg_tensor **out);
/* Zeros of 'size' along 'dim', with 'x' placed at 'start' (the adjoint of narrow, used by
** rules; Lua's constant padding 'mg.pad' is composed in moongrad/ops.lua, not this). */
MG_API mg_status mg_tensor_pad(mg_ctx *C, mg_tensor *x, int dim, int64_t start, int64_t size,
                               mg_tensor **out);
MG_API mg_status mg_tensor_cat(mg_ctx *C, int n, mg_tensor *const *xs, int dim,
                               mg_tensor **out);
MG_API mg_status mg_tensor_stack(mg_ctx *C, int n, mg_tensor *const *xs, int dim,
                                 mg_tensor **out);

/* In place, not recorded: copy 'src' (broadcast) into 'dst'; fill 'dst' with 'v'. */
MG_API mg_status mg_tensor_copy_(mg_ctx *C, mg_tensor *dst, mg_tensor *src);
MG_API void mg_tensor_fill_(mg_tensor *dst, double v);
/* dst += src (same dtype, 'src' broadcast to dst's shape), in place and not recorded. */
MG_API mg_status mg_tensor_add_(mg_ctx *C, mg_tensor *dst, mg_tensor *src);
/* RMSprop's step (Keras 3: v = rho v + (1 - rho) g^2, p -= lr g / sqrt(v + eps), with g
** first multiplied by 'scale' unless it is 1), writing v and p in place, not recorded. p, v and
** g contiguous, of one dtype and shape. The same numbers as those element-wise ops. */
MG_API mg_status mg_rmsprop_update_(mg_ctx *C, mg_tensor *p, mg_tensor *v, mg_tensor *g, double lr,
                                    double rho, double eps, double scale);
/* The sum of the squares of a contiguous float32/float64 tensor's elements into *out, as
** (t * t):sum() computes it up to the order of its double additions (global-norm clipping). */
MG_API mg_status mg_sumsq_(mg_ctx *C, mg_tensor *t, double *out);
/* Adam's step (optim.lua's Adam without amsgrad, at iteration t; 'pytorch': eps added to the
** corrected sqrt(v), else Keras's), writing m, v and p in place, not recorded; p, m, v and g
** contiguous, of one dtype and shape (else MG_EARG, nothing written); shared over C's
** threads. The same numbers as those element-wise ops. */
MG_API mg_status mg_adam_update_(mg_ctx *C, mg_tensor *p, mg_tensor *m, mg_tensor *v,
                                 mg_tensor *g, double lr, double b1, double b2, double eps,
                                 double t, bool pytorch);

/* Reductions over the dims whose bit is set in 'mask' (all dims: mask = ~0). */
MG_API mg_status mg_tensor_sum(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim,
                               mg_tensor **out);
MG_API mg_status mg_tensor_mean(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim,
                                mg_tensor **out);
/* Population variance (ddof 0) and its square root. */
MG_API mg_status mg_tensor_var(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim,
                               mg_tensor **out);
MG_API mg_status mg_tensor_std(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim,
                               mg_tensor **out);
/* max/min values; the gradient is shared evenly among ties (among the NaNs when the extreme
** is NaN), as PyTorch's max() without a dim. */
MG_API mg_status mg_tensor_amax(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim,
                                mg_tensor **out);
MG_API mg_status mg_tensor_amin(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim,
                                mg_tensor **out);
/* max(dim)/min(dim): values and first indices (0-based, float64) along 'dim'; the gradient
** goes to the returned index only (as PyTorch's max(dim)). */
MG_API mg_status mg_tensor_max_dim(mg_ctx *C, mg_tensor *x, int dim, bool keepdim, bool is_min,
                                   mg_tensor **values, mg_tensor **indices);
/* Index (0-based, as float64) of the first max/min along 'dim' (dim < 0: of the flattened
** tensor). Not differentiable. */
MG_API mg_status mg_tensor_argmax(mg_ctx *C, mg_tensor *x, int dim, bool keepdim, bool is_min,
                                  mg_tensor **out);
/* 2-norm over 'mask'. */
MG_API mg_status mg_tensor_norm(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim,
                                mg_tensor **out);
MG_API mg_status mg_tensor_softmax(mg_ctx *C, mg_tensor *x, int dim, bool log,
                                   mg_tensor **out);

/* -log_softmax(x)[label] per row of the last dimension: 'labels' (x's shape without its last
** dimension, float32 or float64) hold 1-based class ids; the result has their shape. Recorded
** (the gradient reaches x only). losses.c. */
MG_API mg_status mg_tensor_softmax_cross_entropy(mg_ctx *C, mg_tensor *x, mg_tensor *labels,
                                                 mg_tensor **out);

/* log(sum(exp(x))) over 'mask', stable (shifted by the maximum). */
MG_API mg_status mg_tensor_logsumexp(mg_ctx *C, mg_tensor *x, uint32_t mask, bool keepdim,
                                     mg_tensor **out);
/* Running sum / product along 'dim' (from the last element when 'reverse'). cumprod's
** gradient is exact with zeros in 'x'. */
MG_API mg_status mg_tensor_cumsum(mg_ctx *C, mg_tensor *x, int dim, bool reverse,
                                  mg_tensor **out);
MG_API mg_status mg_tensor_cumprod(mg_ctx *C, mg_tensor *x, int dim, bool reverse,
                                   mg_tensor **out);

/* Reordering and indexing (ops_index.c). flip: a copy reversed along the dims in 'mask'.
** diagonal: a view of the 'offset' diagonal of dims 'd1', 'd2' (removed; the diagonal is
** the last dim), as torch.diagonal; diag_embed: the last dim of 'x' placed on that diagonal
** of new dims 'd1', 'd2' (of the output) of zeros, as torch.diag_embed. */
MG_API mg_status mg_tensor_flip(mg_ctx *C, mg_tensor *x, uint32_t mask, mg_tensor **out);
MG_API mg_status mg_tensor_diagonal(mg_ctx *C, mg_tensor *x, int64_t offset, int d1, int d2,
                                    mg_tensor **out);
MG_API mg_status mg_tensor_diag_embed(mg_ctx *C, mg_tensor *x, int64_t offset, int d1, int d2,
                                      mg_tensor **out);
/* Indices are tensors of 0-based integers stored as floats (either dtype); a value out of
** range or not an integer fails naming the op and the index (counted from 1 in messages).
** gather (torch.gather): out[..i..] = x[.. index[..i..] at 'dim' ..], 'index' of x's rank,
** no larger than 'x' except along 'dim'; out has index's shape. scatter_add, its adjoint:
** zeros of 'shape' plus 'src' added at 'index' along 'dim' (src and index of one shape).
** index_select: the entries 'index' (1-d) along 'dim'. take_along_dim: gather with 'x' and
** 'index' broadcast together but along 'dim' (torch.take_along_dim). */
MG_API mg_status mg_tensor_gather(mg_ctx *C, mg_tensor *x, int dim, mg_tensor *index,
                                  mg_tensor **out);
MG_API mg_status mg_tensor_scatter_add(mg_ctx *C, mg_tensor *src, int dim, mg_tensor *index,
                                       int ndim, const int64_t *shape, mg_tensor **out);
MG_API mg_status mg_tensor_index_select(mg_ctx *C, mg_tensor *x, int dim, mg_tensor *index,
                                        mg_tensor **out);
MG_API mg_status mg_tensor_take_along_dim(mg_ctx *C, mg_tensor *x, mg_tensor *index, int dim,
                                          mg_tensor **out);

/* Matrix product: 1-d operands as NumPy, >= 2-d batched with broadcast leading dims. */
MG_API mg_status mg_tensor_matmul(mg_ctx *C, mg_tensor *a, mg_tensor *b, mg_tensor **out);

/* Linear algebra through LAPACK (lapack.c). 'A' is a matrix or a batch (..., m, n) of any
** strides, float32 or float64; results are contiguous, batched like 'A'. Recorded, with
** reverse and forward rules, except eig (its rules fail: no complex dtype).
** qr: Q (m,k) and R (k,n), k = min(m,n); 'complete': Q (m,m), R (m,n).
** svd: U (m,k), S (k) descending, Vh (k,n); 'full_matrices': U (m,m), Vh (n,n). Without
**   'compute_uv' only S is computed (U, Vh untouched; may be NULL).
** eigh: eigenvalues ascending (..., n) and eigenvectors as columns (V untouched, may be NULL,
**   without 'compute_v'); reads the lower triangle.
** eig: eigenvalues (real and imaginary parts) and eigenvectors (columns, real and imaginary
**   parts; a complex pair j, j+1 is Vr[:,j] +- i Vi[:,j]), in LAPACK's order.
** solve: X with A X = B, A (..., n, n), B (..., n, k), batch dims broadcast.
** slogdet: sign and log|det| (..., ) (0 and -inf when singular).
** cholesky: lower L with L L^T = A (reads the lower triangle). */
MG_API mg_status mg_linalg_qr(mg_ctx *C, mg_tensor *A, bool complete, mg_tensor **Q,
                              mg_tensor **R);
MG_API mg_status mg_linalg_svd(mg_ctx *C, mg_tensor *A, bool full_matrices, bool compute_uv,
                               mg_tensor **U, mg_tensor **S, mg_tensor **Vh);
MG_API mg_status mg_linalg_eigh(mg_ctx *C, mg_tensor *A, bool compute_v, mg_tensor **w,
                                mg_tensor **V);
MG_API mg_status mg_linalg_eig(mg_ctx *C, mg_tensor *A, mg_tensor **w_re, mg_tensor **w_im,
                               mg_tensor **V_re, mg_tensor **V_im);
MG_API mg_status mg_linalg_solve(mg_ctx *C, mg_tensor *A, mg_tensor *B, mg_tensor **X);
MG_API mg_status mg_linalg_slogdet(mg_ctx *C, mg_tensor *A, mg_tensor **sign,
                                   mg_tensor **logabsdet);
MG_API mg_status mg_linalg_cholesky(mg_ctx *C, mg_tensor *A, mg_tensor **L);

/* The QR-method Lyapunov sums of the built-in GRU (reset_after, sigmoid/tanh) or LSTM
** (sigmoid/tanh, state (h, c)), float32 or float64, in one call (lyapunov.c; mg.lyapunov's fast
** path): x (B, T, F), h0 (and c0) (B, N), kernel W (F, 3N or 4N), recurrent U (N, 3N or 4N),
** bias b (2, 3N) or (4N), Q0 (B, S, k) orthonormal tangents (S = N, or 2N for the LSTM's
** (h, c)); 'warmup' steps uncounted, then 'steps' counted, a QR every 'every' steps (and after
** the last of each); 'backwards' reads x from its last step; 'mode' 0 or 2 runs 16 (float64:
** 8) trajectories in vector lanes, the groups of lanes on the context's threads (the same
** numbers for any count), GRU 'mode' 1 each trajectory through LAPACK (float32 only), GRU
** 'mode' 3 the lanes with the tangents always formed (mode 2 keeps them as the last QR's
** reflectors when k >= 0.9 N and every == 1).
** sum (B, k): log|R_ii| summed over the counted steps; history (steps, k): after each counted
** step, the batch mean of sum / (steps the last QR covers), sorted descending. */
MG_API mg_status mg_lyapunov_gru(mg_ctx *C, mg_tensor *x, mg_tensor *h0, mg_tensor *W,
                                 mg_tensor *U, mg_tensor *b, mg_tensor *Q0, int64_t warmup,
                                 int64_t steps, int64_t every, bool backwards, int mode,
                                 mg_tensor **sum, mg_tensor **history);
MG_API mg_status mg_lyapunov_lstm(mg_ctx *C, mg_tensor *x, mg_tensor *h0, mg_tensor *c0,
                                  mg_tensor *W, mg_tensor *U, mg_tensor *b, mg_tensor *Q0,
                                  int64_t warmup, int64_t steps, int64_t every, bool backwards,
                                  mg_tensor **sum, mg_tensor **history);

/* Fused recurrent cells, Keras layouts (docs/cells.md), one recorded node per step.
** LSTM (gates i, f, c, o): x (B, d), h and c (B, u), kernel (d, 4u), recurrent (u, 4u),
** bias (4u); new h and c. GRU (gates z, r, h): kernel (d, 3u), recurrent (u, 3u), bias
** (2, 3u) when 'reset_after' (rows: input, recurrent) else (3u); new h. */
MG_API mg_status mg_lstm_cell(mg_ctx *C, mg_tensor *x, mg_tensor *h, mg_tensor *c,
                              mg_tensor *W, mg_tensor *U, mg_tensor *b, mg_tensor **h_out,
                              mg_tensor **c_out);
MG_API mg_status mg_gru_cell(mg_ctx *C, mg_tensor *x, mg_tensor *h, mg_tensor *W,
                             mg_tensor *U, mg_tensor *b, bool reset_after, mg_tensor **h_out);
/* The same cells over a whole sequence x (B, T, d), T >= 1, from the states h0 (and c0),
** as one recorded node (seqcells.c): every h_t as H (B, T, u), and the last states; the
** numbers of T steps of the cell above (to float32 rounding). New references. */
MG_API mg_status mg_lstm_seq(mg_ctx *C, mg_tensor *x, mg_tensor *h0, mg_tensor *c0,
                             mg_tensor *W, mg_tensor *U, mg_tensor *b, mg_tensor **H,
                             mg_tensor **h_out, mg_tensor **c_out);
MG_API mg_status mg_gru_seq(mg_ctx *C, mg_tensor *x, mg_tensor *h0, mg_tensor *W,
                            mg_tensor *U, mg_tensor *b, bool reset_after, mg_tensor **H,
                            mg_tensor **h_out);
/* mg_lstm_seq's float32 gate passes run gate-major (seqsmall.c, the same numbers) for units
** below 'max' that are not a multiple of 16 (default and at most 64; 0: never); max < 0 leaves
** it. Returns the previous bound. Process-wide; for tests and benchmarks of the two paths. */
MG_API int64_t mg_lstm_small_max(int64_t max);

/* ----------------------------------------------------------------------------------------
** Random numbers (per context; the same sequence on every machine for a seed)
** -------------------------------------------------------------------------------------- */

MG_API void mg_manual_seed(mg_ctx *C, uint64_t seed);
/* Fill 't' in place: uniform in [lo, hi), normal(mean, std). */
MG_API void mg_fill_uniform(mg_ctx *C, mg_tensor *t, double lo, double hi);
MG_API void mg_fill_normal(mg_ctx *C, mg_tensor *t, double mean, double std);
/* Fill contiguous float 't' with a dropout mask from C's generator: 1 / (1 - rate) where
** mg.rand's draw is >= rate, else 0 (nn.Dropout). False (nothing drawn) for other tensors. */
MG_API bool mg_dropout_mask_(mg_ctx *C, mg_tensor *t, double rate);
/* Keras initializers on a 2-d 't' (fan_in = rows, fan_out = cols). */
MG_API mg_status mg_init_glorot_uniform(mg_ctx *C, mg_tensor *t);
MG_API mg_status mg_init_orthogonal(mg_ctx *C, mg_tensor *t, double gain);

/* ----------------------------------------------------------------------------------------
** Writing files safely (fileio.c): every file goes to a temporary name beside its target,
** is flushed, fsynced and closed with errors checked, then renamed over the target; on any
** failure the temporary is removed and the previous file stays as it was. 'op' names the
** calling function in messages ("save: error writing 'x.npy' (No space left on device)").
** -------------------------------------------------------------------------------------- */

typedef struct mg_wfile {
  FILE *f;      /* write here */
  char *tmp;    /* its temporary name (owned) */
} mg_wfile;

/* Open a temporary file beside 'path' for writing. */
MG_API mg_status mg_wfile_open(mg_ctx *C, const char *op, const char *path, mg_wfile *w);
/* Flush, fsync, close and rename over 'path'; 'ok' false says the caller's own writes failed
** (the file is then discarded and errno gives the reason). Always ends 'w'. */
MG_API mg_status mg_wfile_commit(mg_ctx *C, const char *op, const char *path, mg_wfile *w,
                                 bool ok);
/* Close and remove the temporary (idempotent). */
MG_API void mg_wfile_abort(mg_wfile *w);
/* For libraries that write by file name (libzip, HDF5, gnuplot): create an empty temporary
** beside 'path' and return its name in '*tmp' (caller-owned until commit/discard); then
** 'mg_tmpfile_commit' fsyncs it and renames it over 'path' (freeing 'tmp', removing the file
** on failure), or 'mg_tmpfile_discard' removes it. */
MG_API mg_status mg_tmpfile_name(mg_ctx *C, const char *op, const char *path, char **tmp);
MG_API mg_status mg_tmpfile_commit(mg_ctx *C, const char *op, char *tmp, const char *path);
MG_API void mg_tmpfile_discard(char *tmp);

/* ----------------------------------------------------------------------------------------
** NumPy .npy files (float32/float64, C order)
** -------------------------------------------------------------------------------------- */

MG_API mg_status mg_npy_save(mg_ctx *C, mg_tensor *t, const char *path);
MG_API mg_status mg_npy_load(mg_ctx *C, const char *path, mg_tensor **out);
/* Parse an in-memory .npy image (used by the file reader and the fuzzer). */
MG_API mg_status mg_npy_parse(mg_ctx *C, const void *buf, size_t len, mg_tensor **out);

/* ----------------------------------------------------------------------------------------
** Dictionaries of named tensors: safetensors files (safetensors.c) and NumPy .npz archives (npz.c)
** -------------------------------------------------------------------------------------- */

/* Parallel arrays. A set filled by a loader owns everything in it (free it with
** 'mg_tensor_dict_free'); a set handed to a saver is only read (its strings and tensors are
** borrowed, and the caller frees what it allocated itself). */
typedef struct mg_tensor_dict {
  int n;                      /* tensors */
  char **names;               /* n names */
  mg_tensor **tensors;        /* n tensors (a loader's are new references) */
  int nmeta;                  /* metadata entries (safetensors '__metadata__'; .npz: none) */
  char **meta_keys, **meta_values;
} mg_tensor_dict;

/* Release every tensor and string of a loaded set and zero it (idempotent). */
MG_API void mg_tensor_dict_free(mg_tensor_dict *s);

/* safetensors: an 8-byte little-endian header length, a JSON header mapping each name to
** {"dtype", "shape", "data_offsets": [begin, end]} (plus "__metadata__": a string map), then
** the raw little-endian data, the tensors in the order of the set. float32 ("F32") and float64
** ("F64") are written; F16 and BF16 are read too (as float32). Saving is atomic (fileio.c).
** Loading maps the file and copies each tensor out of the mapping once. Malformed files fail
** with MG_EFORMAT and "load_tensors: malformed safetensors file '<path>' (<problem>)". */
MG_API mg_status mg_safetensors_save(mg_ctx *C, const mg_tensor_dict *s, const char *path);
MG_API mg_status mg_safetensors_load(mg_ctx *C, const char *path, mg_tensor_dict *out);
/* Parse an in-memory safetensors image; 'name' stands for the file in messages (the fuzzer). */
MG_API mg_status mg_safetensors_parse(mg_ctx *C, const void *buf, size_t len, const char *name,
                                      mg_tensor_dict *out);

/* NumPy .npz: a zip archive of '<name>.npy' members (numpy.savez; 'compressed': deflated, as
** numpy.savez_compressed), written through libzip, atomically. Loading reads every member with
** 'mg_npy_parse'; a member that is not a '.npy' file is an error. */
MG_API mg_status mg_npz_save(mg_ctx *C, const mg_tensor_dict *s, bool compressed, const char *path);
MG_API mg_status mg_npz_load(mg_ctx *C, const char *path, mg_tensor_dict *out);

/* HDF5 (h5.c, an optional component: built when libhdf5 is found). A file as a dictionary:
** every float or integer dataset by its path without the leading '/' ("layers/lstm/cell/vars/0";
** float16/float32 data as float32, the rest as float64), and every string attribute (scalar
** or 1-d, fixed or variable length; arrays joined by '\n') as metadata keyed "<object path>@<name>"
** ("@name" for the root's). 'op' names the caller in messages. Saving writes each tensor as a
** little-endian float dataset (groups created as needed) and each metadata entry as a
** variable-length UTF-8 string attribute of the group its key names, atomically (fileio.c).
** Without HDF5 both fail with MG_ESTATE and say so; 'mg_h5_available' tells which. */
MG_API bool mg_h5_available(void);
MG_API mg_status mg_h5_load(mg_ctx *C, const char *op, const char *path, mg_tensor_dict *out);
MG_API mg_status mg_h5_save(mg_ctx *C, const char *op, const mg_tensor_dict *d, const char *path);

/* ----------------------------------------------------------------------------------------
** TensorBoard event files (summary.c): TFRecord framing (uint64 length, masked CRC32C of
** the length, an 'Event' protobuf, masked CRC32C of the data), the messages of TensorBoard's
** event.proto/summary.proto (runtime/proto/tfevents.proto). A writer appends to
** 'logdir/events.out.tfevents.<time>.<host>.<pid>.<n><suffix>'; events are buffered and
** written, whole records one write(2) each, then fsynced, by 'mg_summary_flush', by close,
** and by the next event once 'flush_secs' have passed since the last flush. Messages name
** the 'summary.<method>' called. 'wall_time' < 0 means now.
** -------------------------------------------------------------------------------------- */

typedef struct mg_summary_writer mg_summary_writer;

/* Create 'logdir' (and its parents) if needed and a new event file in it, holding the
** 'file_version' event, flushed. '*out' is new (close it with mg_summary_close). */
MG_API mg_status mg_summary_open(mg_ctx *C, const char *logdir, const char *suffix,
                                 double flush_secs, mg_summary_writer **out);
/* The event file's path: borrowed, valid until close. */
MG_API const char *mg_summary_path(const mg_summary_writer *w);
MG_API bool mg_summary_closed(const mg_summary_writer *w);
MG_API mg_status mg_summary_scalar(mg_ctx *C, mg_summary_writer *w, const char *tag,
                                   double value, int64_t step, double wall_time);
/* Histogram of the elements of 't' (any shape, float32/float64, all finite): 'bins' 0 uses
** TensorFlow's default exponential bucket edges (mg_summary_default_edges), else 'bins'
** uniform buckets from min to max (min - 0.5 to max + 0.5 when they are equal). */
MG_API mg_status mg_summary_histogram(mg_ctx *C, mg_summary_writer *w, const char *tag,
                                      mg_tensor *t, int bins, int64_t step, double wall_time);
/* TensorFlow's default histogram edges: -DBL_MAX, ..., -1e-12, 0, 1e-12, ... (x1.1 each),
** DBL_MAX. Writes up to 'cap' of them to 'edges' (may be NULL) and returns their count. */
MG_API size_t mg_summary_default_edges(double *edges, size_t cap);
/* An image from the bytes of a PNG file (its size and colour type read from its IHDR). */
MG_API mg_status mg_summary_image_png(mg_ctx *C, mg_summary_writer *w, const char *tag,
                                      const unsigned char *png, size_t len, int64_t step,
                                      double wall_time);
/* An image from an (H, W) or (H, W, C) tensor, C 1, 3 or 4, values in [0, 1]: PNG-encoded. */
MG_API mg_status mg_summary_image_tensor(mg_ctx *C, mg_summary_writer *w, const char *tag,
                                         mg_tensor *t, int64_t step, double wall_time);
/* A string for the text plugin (a DT_STRING tensor of shape () with metadata "text"). */
MG_API mg_status mg_summary_text(mg_ctx *C, mg_summary_writer *w, const char *tag,
                                 const char *s, size_t len, int64_t step, double wall_time);
MG_API mg_status mg_summary_flush(mg_ctx *C, mg_summary_writer *w);
/* Flush, fsync and close the file (idempotent: a closed writer stays valid, its methods
** fail with MG_ESTATE). */
MG_API mg_status mg_summary_close(mg_ctx *C, mg_summary_writer *w);
/* Close if open (errors dropped) and free. */
MG_API void mg_summary_free(mg_summary_writer *w);

/* PNG encoding through libpng (png.c): an (H, W) or (H, W, C) tensor, C 1, 3 or 4, values
** in [0, 1] (rounded to 8 bits). '*out' is new (free it); 'op' names the caller. */
MG_API mg_status mg_png_encode(mg_ctx *C, const char *op, mg_tensor *t, unsigned char **out,
                               size_t *len);

/* Reading an event file: every record's CRCs are checked, every event decoded; any
** corruption fails with MG_EFORMAT and a "summary.read: ..." message naming the byte offset.
** All pointers in a log are borrowed from it, valid until mg_summary_log_free. */
typedef enum mg_summary_kind {
  MG_SUMMARY_OTHER,       /* a value of a kind moongrad does not write: the tag only */
  MG_SUMMARY_SCALAR,      /* 'scalar' (a simple_value, or TensorFlow 2's 0-d "scalars" tensor) */
  MG_SUMMARY_HISTOGRAM,   /* 'min' ... 'bucket' */
  MG_SUMMARY_IMAGE,       /* 'height', 'width', 'colorspace', 'bytes' (the PNG) */
  MG_SUMMARY_TEXT         /* 'bytes' (the string) */
} mg_summary_kind;

typedef struct mg_summary_value {
  const char *tag;
  const char *plugin;     /* the metadata's plugin name, or NULL */
  mg_summary_kind kind;
  double scalar;
  double min, max, num, sum, sum_squares;
  size_t nbuckets;        /* entries of 'bucket_limit' and of 'bucket' */
  const double *bucket_limit, *bucket;
  int height, width, colorspace;
  const unsigned char *bytes;
  size_t nbytes;
} mg_summary_value;

typedef struct mg_summary_event {
  uint64_t offset;        /* byte offset of its record in the file */
  double wall_time;
  int64_t step;
  const char *file_version;   /* NULL unless the event is a file version */
  size_t nvalues;
  const mg_summary_value *values;
} mg_summary_event;

typedef struct mg_summary_log mg_summary_log;

MG_API mg_status mg_summary_read(mg_ctx *C, const char *path, mg_summary_log **out);
/* Decode an in-memory event file (used by the file reader and the fuzzer). */
MG_API mg_status mg_summary_parse(mg_ctx *C, const void *buf, size_t len, mg_summary_log **out);
MG_API size_t mg_summary_log_count(const mg_summary_log *log);
MG_API const mg_summary_event *mg_summary_log_event(const mg_summary_log *log, size_t i);
MG_API void mg_summary_log_free(mg_summary_log *log);
/* CRC32C (Castagnoli) of 'len' bytes, and TFRecord's mask of it. */
MG_API uint32_t mg_crc32c(const void *buf, size_t len);
MG_API uint32_t mg_crc32c_mask(uint32_t crc);

/* ----------------------------------------------------------------------------------------
** Autograd
** -------------------------------------------------------------------------------------- */

/* A new tape, recording from now on (innermost of the active tapes). */
MG_API mg_status mg_tape_new(mg_ctx *C, bool persistent, bool watch_accessed_variables,
                             mg_tape **out);
MG_API mg_tape *mg_tape_retain(mg_tape *T);
MG_API void mg_tape_release(mg_tape *T);
/* Stop recording (idempotent). */
MG_API void mg_tape_stop(mg_tape *T);
MG_API bool mg_tape_is_recording(const mg_tape *T);
MG_API mg_status mg_tape_watch(mg_tape *T, mg_tensor *t);
MG_API size_t mg_tape_nwatched(const mg_tape *T);
MG_API mg_tensor *mg_tape_watched_at(const mg_tape *T, size_t i);   /* borrowed */
/* Mark 't' a trainable Variable (watched on use by tapes with watch_accessed_variables). */
MG_API void mg_tensor_set_variable(mg_tensor *t, bool on);
MG_API bool mg_tensor_is_variable(const mg_tensor *t);
/* Name of a Variable ("" when none): borrowed. Setting copies 'name'. */
MG_API const char *mg_tensor_name(const mg_tensor *t);
MG_API mg_status mg_tensor_set_name(mg_tensor *t, const char *name);
/* Suspend / resume recording on every tape of 'C' (nests). */
MG_API void mg_no_grad_enter(mg_ctx *C);
MG_API void mg_no_grad_exit(mg_ctx *C);

/* Reverse sweep. 'seeds[i]' is the cotangent of 'targets[i]' (NULL: ones), with 'lead'
** extra leading dimensions (0 or 1) shared by every seed. grads[j] (new reference) has shape
** lead dims .. shape of sources[j], or is NULL where sources[j] is not connected (zeros
** when 'unconnected_zero'). */
MG_API mg_status mg_tape_gradient(mg_tape *T, int ntargets, mg_tensor *const *targets,
                                  mg_tensor *const *seeds, int lead, int nsources,
                                  mg_tensor *const *sources, bool unconnected_zero,
                                  mg_tensor **grads);
/* Forward sweep over what 'T' recorded: tangents of 'sources' (lead dims .. source shape)
** pushed to 'targets'. */
MG_API mg_status mg_tape_forward(mg_tape *T, int nsources, mg_tensor *const *sources,
                                 mg_tensor *const *tangents, int lead, int ntargets,
                                 mg_tensor *const *targets, mg_tensor **out);
/* Jacobians of 'target' w.r.t. each source, in one vectorized pass (chunked to the memory
** budget). 'batch': batch_jacobian (dim 0 of target and sources is the batch). 'mode': 0
** reverse, 1 forward, 2 auto. 'check' (batch only): verify target[i] depends on source[i] only.
** jac[j] has shape target .. source[j] (batch: B, target rest.., source rest..). */
MG_API mg_status mg_tape_jacobian(mg_tape *T, mg_tensor *target, int nsources,
                                  mg_tensor *const *sources, bool batch, int mode, bool check,
                                  bool unconnected_zero, mg_tensor **jac);

#ifdef __cplusplus
}
#endif
#endif
