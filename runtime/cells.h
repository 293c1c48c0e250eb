/*
** cells.h - private to cells.c and seqcells.c: the fused cells' gate kernels and shape
** checks. Every kernel works on the rows [lo, hi) of its (B, ...) operands (row-major,
** contiguous), so that a thread pool can split a batch; rows outside are not touched.
*/
#ifndef MG_CELLS_H
#define MG_CELLS_H

#include "mg_impl.h"
#include "smallgemm.h"

/* The float32 gate loops are compiled for AVX-512 and AVX2 too (MG_CLONES, mg_impl.h). */

/* LSTM gates: G holds z = x W + h U (ld 4u) on entry and [i f g o] on exit (bias b added);
** c' = f c + i g, h' = o tanh(c'). */
void mg_lstm_gates_f32(int64_t lo, int64_t hi, int64_t u, float *G, const float *b,
                       const float *c, float *cn, float *hn);
void mg_lstm_gates_f64(int64_t lo, int64_t hi, int64_t u, double *G, const double *b,
                       const double *c, double *cn, double *hn);
/* LSTM reverse: dz (ld 4u) and dc from the saved gates G, c, c' and the cotangents gh, gc
** of h', c' (NULL: zero). */
void mg_lstm_dz_f32(int64_t lo, int64_t hi, int64_t u, const float *G, const float *c,
                    const float *cn, const float *gh, const float *gc, float *dz, float *dc);
void mg_lstm_dz_f64(int64_t lo, int64_t hi, int64_t u, const double *G, const double *c,
                    const double *cn, const double *gh, const double *gc, double *dz,
                    double *dc);

/* The same two passes over gate-major blocks of rows, for few units (seqsmall.c): the same
** numbers, vectorized over rows x units instead of units. The sequence op takes them when
** mg_lstm_small(u) (mg.h: mg_lstm_small_max); dz needs both cotangents. */
void mg_lstm_gates_small(int64_t lo, int64_t hi, int64_t u, float *G, const float *b,
                         const float *c, float *cn, float *hn);
void mg_lstm_dz_small(int64_t lo, int64_t hi, int64_t u, const float *G, const float *c,
                      const float *cn, const float *gh, const float *gc, float *dz, float *dc);
bool mg_lstm_small(int64_t u);
/* u < 64 and not a multiple of 16: the units mg_lstm_small takes by default, independent of
** mg_lstm_small_max (seqcells.c's in_per_step). */
bool mg_lstm_few_units(int64_t u);
/* A whole forward step for few units: G's rows [lo, hi) hold x W on entry; adds h U (U (u, 4u)
** row-major) then runs mg_lstm_gates_small, with the numbers of mg_rec_gemm through the
** packing P and then that pass. Does nothing and returns false unless P packs for the
** AVX-512 kernel and mg_lstm_small(u) (the caller then takes those two calls). */
bool mg_lstm_step_small(const mg_packed *P, int64_t lo, int64_t hi, int64_t u, float *G,
                        const float *h, const float *U, const float *b, const float *c,
                        float *cn, float *hn);

/* GRU forward, first pass: M = x W (ld 3u, no bias), S (ld 4u) holding h U in its first
** 3u (reset_after 'ra') or 2u columns; writes z, r into S[:, 0:2u] and m into S[:, 3u:4u]
** (ra: h U_h + b_r[h]; else r h). Bias b: (2, 3u) when ra, else (3u). */
void mg_gru_pre(mg_dtype dt, int64_t lo, int64_t hi, int64_t u, bool ra, const void *M,
                void *S, const void *b, const void *h);
/* GRU forward, second pass (after (r h) U_h went into S[:, 2u:3u] when not ra): hh into
** S[:, 2u:3u], h' = z h + (1 - z) hh. */
void mg_gru_post(mg_dtype dt, int64_t lo, int64_t hi, int64_t u, bool ra, const void *M,
                 void *S, const void *b, const void *h, void *hn);
/* GRU reverse, first pass, from S = [z r hh m], h and gh (the cotangent of h'): dmx and dmh
** (ld 3u: the cotangents of x W + b_i and of the recurrent part; dmh[:, 2u:3u] is dhp r
** (ra) or dhp, the cotangent of (r h) U_h's output) and dh = gh z. Without ra, dr needs
** d(rh) = dhp U_h' first: dmx/dmh[:, u:2u] are left for mg_gru_dr. */
void mg_gru_d1(mg_dtype dt, int64_t lo, int64_t hi, int64_t u, bool ra, const void *S,
               const void *h, const void *gh, void *dmx, void *dmh, void *dh);
/* GRU reverse without ra, second pass: from drh = d(r h): dr into dmx/dmh[:, u:2u] and
** dh += drh r. */
void mg_gru_dr(mg_dtype dt, int64_t lo, int64_t hi, int64_t u, const void *S, const void *h,
               const void *drh, void *dmx, void *dmh, void *dh);

/* C = A op(B) + beta C (beta 0 or 1), through the packing P of op(B) when P is not NULL and
** dt is float32 (smallgemm.h), else BLAS. */
void mg_rec_gemm(mg_dtype dt, const mg_packed *P, bool tb, int64_t M, int64_t N, int64_t K,
                 const void *A, int64_t lda, const void *Bm, int64_t ldb, int beta, void *Cm,
                 int64_t ldc);
/* A GRU step given M = x W: forward (S and h' from h), reverse (dmx, dmh and dh from gh; drh
** scratch, see mg_gru_d1). Whole batches of B rows. P: NULL, or the packings of the
** recurrent products (forward: U[:, :3u or 2u] and U_h; reverse: their transposes). */
void mg_gru_step_forward(mg_dtype dt, int64_t B, int64_t u, bool ra, const void *U,
                         const mg_packed *P, const void *b, const void *h, const void *M,
                         void *S, void *hn);
void mg_gru_step_reverse(mg_dtype dt, int64_t B, int64_t u, bool ra, const void *U,
                         const mg_packed *P, const void *S, const void *h, const void *gh,
                         void *dmx, void *dmh, void *drh, void *dh);

/* GRU weight gradients over 'rows' rows (one step or a whole sequence: x (rows, d), h the
** states the rows started from, S their saved gates): into g[0..3] = gx, gW, gU, gb, each
** when not NULL; mg_gru_grad_buffers makes dmx, dmh and the g[i] with need4[i]. The GEMMs
** are shared over C's threads (mg_gemm_par). */
void mg_gru_weight_grads(mg_ctx *C, mg_dtype dt, int64_t rows, int64_t d, int64_t u, bool ra,
                         const void *x, const void *h, const void *S, const void *W,
                         const void *dmx, const void *dmh, mg_tensor *const *g);
mg_status mg_gru_grad_buffers(mg_ctx *C, mg_dtype dt, int64_t rows, int64_t d, int64_t u,
                              bool ra, const bool *need4, mg_tensor **dmx, mg_tensor **dmh,
                              mg_tensor **g);

/* Shape and dtype checks shared by the cells and the sequence ops (messages name 'fn'). */
mg_status mg_cell_want2(mg_ctx *C, const char *fn, const char *what, const mg_tensor *t,
                        int64_t rows, int64_t cols);
mg_status mg_cell_same_dtype(mg_ctx *C, const char *fn, int n, mg_tensor *const *t);
mg_status mg_cell_shapes(mg_ctx *C, const char *fn, mg_tensor *const *xhWU, int gates,
                         int64_t *units);
mg_status mg_gru_bias_check(mg_ctx *C, const char *fn, const mg_tensor *b, bool ra, int64_t u);

/* Contiguous unrecorded copies of node inputs (NULL stays NULL); new references. */
mg_status mg_cell_contiguous(mg_ctx *C, int n, mg_tensor *const *in, mg_tensor **out);
void mg_cell_release(int n, mg_tensor **t);
/* Column sums of a (rows, n) buffer with leading dimension ld into 'out' (n). */
void mg_colsum(mg_dtype dt, int64_t rows, int64_t n, const void *a, int64_t ld, void *out);
/* The column sums of a (rows, n) buffer 'a' (leading dimension ld) into 'out', as mg_colsum.
** With x (float32, mg_xsum_available(d)), in the same pass the weight gradient of a narrow
** input: gw (d, n; ldw) = beta gw + x' a, x (rows, d; ldx) (mg_xsum_f32). */
typedef struct mg_colsum_spec {
  mg_dtype dt;
  int64_t rows, n, ld;
  const void *a;
  void *out;
  const float *x;
  int64_t d, ldx, ldw;
  float *gw;
  int beta;
} mg_colsum_spec;
/* np products (mg_gemm_plan_make'd) and ns (at most 2) column sums as one list of blocks
** shared over C's threads (mg_parallel_blocks): one hand-over for a layer's weight
** gradients; the bits of mg_gemm_par and mg_colsum, whoever computes a block. */
enum { MG_GRADS_MAX = 4 };
void mg_grads_par(mg_ctx *C, int np, const mg_gemm_plan *pl, int ns, const mg_colsum_spec *cs);

#endif
