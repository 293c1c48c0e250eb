/*
** mg_ops.h - the op registry: one entry per recorded op, holding its name and its reverse
** (VJP) and forward (JVP) rules. Each op's forward, shape rule and rules live side by side in
** one ops_*.c file, which defines its 'mg_opdef_*'. ops.c assembles 'mg_ops'.
*/
#ifndef MG_OPS_H
#define MG_OPS_H

#include "mg.h"

typedef enum mg_opcode {
  /* elementwise unary (elementwise.c); order matches mg_unary */
  MG_OP_NEG, MG_OP_EXP, MG_OP_LOG, MG_OP_TANH, MG_OP_SIGMOID, MG_OP_RELU, MG_OP_ABS,
  MG_OP_SQRT, MG_OP_SIN, MG_OP_COS, MG_OP_SOFTPLUS,
  /* elementwise binary (elementwise.c); order matches mg_binary */
  MG_OP_ADD, MG_OP_SUB, MG_OP_MUL, MG_OP_DIV, MG_OP_POW, MG_OP_MAXIMUM, MG_OP_MINIMUM,
  MG_OP_CLAMP, MG_OP_WHERE,
  /* views and copies (ops_shape.c) */
  MG_OP_RESHAPE, MG_OP_PERMUTE, MG_OP_EXPAND, MG_OP_NARROW, MG_OP_SELECT, MG_OP_PAD,
  MG_OP_CAST, MG_OP_COPY, MG_OP_CAT,
  /* reductions (reduce.c) */
  MG_OP_SUM, MG_OP_AMAX, MG_OP_AMIN, MG_OP_SOFTMAX, MG_OP_LOG_SOFTMAX,
  /* linear algebra (linalg.c) */
  MG_OP_MATMUL,
  /* fused recurrent cells (cells.c) */
  MG_OP_LSTM_CELL, MG_OP_GRU_CELL,
  /* LAPACK (lapack.c) */
  MG_OP_QR, MG_OP_SVD, MG_OP_EIGH, MG_OP_EIG, MG_OP_SOLVE, MG_OP_SLOGDET, MG_OP_CHOLESKY,
  MG_OP_COUNT
} mg_opcode;

struct mg_node;

/* Reverse rule. 'g[k]' is the cotangent of output k (NULL: zero), with 'lead' extra leading
** dimensions. For each input i with need[i], set gin[i] to a new reference shaped
** lead dims .. input shape, or leave it NULL for zero. Rules compute with recording ops, so
** other active tapes record them (gradients of gradients). */
typedef mg_status (*mg_vjp_fn)(mg_ctx *C, const struct mg_node *n, int lead,
                               mg_tensor *const *g, const bool *need, mg_tensor **gin);
/* Forward rule. 't[i]' is the tangent of input i (NULL: zero), with 'lead' leading dims.
** Set tout[k] to a new reference for each output k, or leave it NULL for zero. */
typedef mg_status (*mg_jvp_fn)(mg_ctx *C, const struct mg_node *n, int lead,
                               mg_tensor *const *t, mg_tensor **tout);

typedef struct mg_opdef {
  const char *name;
  mg_vjp_fn vjp;
  mg_jvp_fn jvp;
} mg_opdef;

extern const mg_opdef *const mg_ops[MG_OP_COUNT];

#endif
