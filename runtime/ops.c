/*
** ops.c - the op registry, indexed by MG_OP_*. Each entry is defined beside its op.
*/
#include "mg_impl.h"

extern const mg_opdef mg_opdef_neg, mg_opdef_exp, mg_opdef_log, mg_opdef_tanh,
    mg_opdef_sigmoid, mg_opdef_relu, mg_opdef_abs, mg_opdef_sqrt, mg_opdef_sin, mg_opdef_cos,
    mg_opdef_softplus, mg_opdef_add, mg_opdef_sub, mg_opdef_mul, mg_opdef_div, mg_opdef_pow,
    mg_opdef_maximum, mg_opdef_minimum, mg_opdef_clamp, mg_opdef_where, mg_opdef_reshape,
    mg_opdef_permute, mg_opdef_expand, mg_opdef_narrow, mg_opdef_select, mg_opdef_pad,
    mg_opdef_cast, mg_opdef_copy, mg_opdef_cat, mg_opdef_sum, mg_opdef_amax, mg_opdef_amin,
    mg_opdef_softmax, mg_opdef_log_softmax, mg_opdef_matmul, mg_opdef_lstm_cell,
    mg_opdef_gru_cell, mg_opdef_qr, mg_opdef_svd, mg_opdef_eigh, mg_opdef_eig, mg_opdef_solve,
    mg_opdef_slogdet, mg_opdef_cholesky;

const mg_opdef *const mg_ops[] = {
  [MG_OP_NEG] = &mg_opdef_neg, [MG_OP_EXP] = &mg_opdef_exp, [MG_OP_LOG] = &mg_opdef_log,
  [MG_OP_TANH] = &mg_opdef_tanh, [MG_OP_SIGMOID] = &mg_opdef_sigmoid,
  [MG_OP_RELU] = &mg_opdef_relu, [MG_OP_ABS] = &mg_opdef_abs, [MG_OP_SQRT] = &mg_opdef_sqrt,
  [MG_OP_SIN] = &mg_opdef_sin, [MG_OP_COS] = &mg_opdef_cos,
  [MG_OP_SOFTPLUS] = &mg_opdef_softplus,
  [MG_OP_ADD] = &mg_opdef_add, [MG_OP_SUB] = &mg_opdef_sub, [MG_OP_MUL] = &mg_opdef_mul,
  [MG_OP_DIV] = &mg_opdef_div, [MG_OP_POW] = &mg_opdef_pow,
  [MG_OP_MAXIMUM] = &mg_opdef_maximum, [MG_OP_MINIMUM] = &mg_opdef_minimum,
  [MG_OP_CLAMP] = &mg_opdef_clamp, [MG_OP_WHERE] = &mg_opdef_where,
  [MG_OP_RESHAPE] = &mg_opdef_reshape, [MG_OP_PERMUTE] = &mg_opdef_permute,
  [MG_OP_EXPAND] = &mg_opdef_expand, [MG_OP_NARROW] = &mg_opdef_narrow,
  [MG_OP_SELECT] = &mg_opdef_select, [MG_OP_PAD] = &mg_opdef_pad,
  [MG_OP_CAST] = &mg_opdef_cast, [MG_OP_COPY] = &mg_opdef_copy, [MG_OP_CAT] = &mg_opdef_cat,
  [MG_OP_SUM] = &mg_opdef_sum, [MG_OP_AMAX] = &mg_opdef_amax, [MG_OP_AMIN] = &mg_opdef_amin,
  [MG_OP_SOFTMAX] = &mg_opdef_softmax, [MG_OP_LOG_SOFTMAX] = &mg_opdef_log_softmax,
  [MG_OP_MATMUL] = &mg_opdef_matmul,
  [MG_OP_LSTM_CELL] = &mg_opdef_lstm_cell, [MG_OP_GRU_CELL] = &mg_opdef_gru_cell,
  [MG_OP_QR] = &mg_opdef_qr, [MG_OP_SVD] = &mg_opdef_svd, [MG_OP_EIGH] = &mg_opdef_eigh,
  [MG_OP_EIG] = &mg_opdef_eig, [MG_OP_SOLVE] = &mg_opdef_solve,
  [MG_OP_SLOGDET] = &mg_opdef_slogdet, [MG_OP_CHOLESKY] = &mg_opdef_cholesky,
};

_Static_assert(sizeof mg_ops / sizeof mg_ops[0] == MG_OP_COUNT, "one registry entry per op");
