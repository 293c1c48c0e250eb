/*
** mg_ops.h - the op registry: one entry per recorded op, holding its name and its reverse
** (VJP) and forward (JVP) rules. The op list "mg_ops.def" names every op once; each op's
** forward, shape rule and rules live side by side in one .c file, which defines its
** 'mg_rules_*'. ops.c assembles 'mg_ops' from the list.
*/
#ifndef MG_OPS_H
#define MG_OPS_H

#include "mg.h"

/* One opcode per recorded op of the op list "mg_ops.def": MG_OP_NEG, ..., MG_OP_GRU_CELL. */
typedef enum mg_opcode {
#define MG_UNARY_OP(kernel, opcode, name) opcode,
#define MG_BINARY_OP(kernel, opcode, name) opcode,
#define MG_OP(opcode, name, rules) opcode,
#include "mg_ops.def"
  MG_OP_COUNT
} mg_opcode;

struct mg_node;

/* ----------------------------------------------------------------------------------------
** The rule contract, what every VJP and JVP may assume and must keep:
**
** - Rules read the node ('n->in', 'n->out', 'n->saved', 'n->attr') and the incoming
**   cotangents 'g' (tangents 't'); they never write into any of them. A cotangent may be the
**   caller's seed, a stride-0 expansion (sum's rule), or shared by several tape slots.
** - A rule's results ('gin[i]', 'tout[k]') are new references. Passing an incoming tensor
**   through unchanged is allowed and cheap, 'gin[i] = mg_tensor_retain(g[0])' (add's rule
**   does, through 'times' and 'mg_unbroadcast'): the tensor keeps its flags, and they stay
**   true because nothing writes into it (the sweep adds into a cotangent in place only when
**   it has no flags and no other reference: 'private_sum' in tape.c). Any tensor a rule
**   makes starts with flags 0.
** - Rules compute with the public, recording ops (mg_tensor_*), so that every other active
**   tape records them: that is what makes gradients of gradients and Hessians work.
** - Flags an incoming cotangent may carry ('mg_tensor.flags', mg_impl.h):
**     MG_TF_EYE       an identity seed: set by batch Jacobians ('jac_reverse' in jacobian.c)
**                     on the basis cotangent of shape (K, B, K), lead == 1, whose element
**                     [k, b, j] is 1 if k == j, else 0, when one sweep covers all K rows. A
**                     rule may use the structure instead of multiplying by it (matmul_vjp's
**                     'is_eye_seed' in linalg.c: the result is a view of W^T), after checking
**                     the shapes it relies on; any other rule treats it as an ordinary tensor.
**     MG_TF_EYE_VIEW  with MG_TF_EYE: the matmul's result may be a view of W^T rather than a
**                     contiguous copy ('eye_vjp'); jacobian.c sets it only when each rule
**                     after passes that cotangent on unmultiplied to the Jacobian's writer.
**     MG_TF_VARIABLE  when the caller's seed is a Variable; meaningless to rules.
**   Tangents (JVP) never carry MG_TF_EYE.
** -------------------------------------------------------------------------------------- */

/* Reverse rule. 'g[k]' is the cotangent of output k (NULL: zero), with 'lead' extra leading
** dimensions. For each input i with need[i], set gin[i] to a new reference shaped
** lead dims .. input shape, or leave it NULL for zero. */
typedef mg_status (*mg_vjp_fn)(mg_ctx *C, const struct mg_node *n, int lead,
                               mg_tensor *const *g, const bool *need, mg_tensor **gin);
/* Forward rule. 't[i]' is the tangent of input i (NULL: zero), with 'lead' leading dims.
** Set tout[k] to a new reference for each output k, or leave it NULL for zero. */
typedef mg_status (*mg_jvp_fn)(mg_ctx *C, const struct mg_node *n, int lead,
                               mg_tensor *const *t, mg_tensor **tout);
/* An op linear in its input in[0]: apply it as node 'n' recorded it (adjoint false) or its
** adjoint (true) to 'v' (with 'lead' leading dims); a new reference in 'res'. */
typedef mg_status (*mg_linear_fn)(mg_ctx *C, const struct mg_node *n, int lead, mg_tensor *v,
                                  bool adjoint, mg_tensor **res);

/* An op's two rules, defined beside its forward ('mg_rules_unary', ... as "mg_ops.def" names
** them); ops with the same rules share one. */
/* Optional reverse rule for first-order sweeps (lead 0, no tape recording) that can add into
** the running sums: acc[i], when not NULL, is the sweep's cotangent sum so far for input i,
** private to the sweep (contiguous, the input's dtype and shape, no other reference, no
** flags). The rule may add input i's cotangent into acc[i] in place and leave gin[i] NULL;
** otherwise as mg_vjp_fn. The result must equal what vjp then the sweep's own add give.
** (The LSTM cell's: its weight gradients become GEMMs with beta = 1 into the sums, no
** fresh (in, 4u) tensor per step; docs/design.md.) */
typedef mg_status (*mg_vjp_acc_fn)(mg_ctx *C, const struct mg_node *n, mg_tensor *const *g,
                                   const bool *need, mg_tensor **gin, mg_tensor *const *acc);

/* Which of a node's tensors no rule of its op reads the values of ('mg_rules.unread'):
** writing into those after recording cannot change a gradient, so the tape's version check
** skips them. 0 (the default, for any new op) has every input, output and saved tensor
** checked; saved tensors are always checked. */
enum {
  MG_UNREAD_IN0 = 1, MG_UNREAD_IN1 = 2, MG_UNREAD_IN2 = 4,   /* input k: 1 << k, k < 8 */
  MG_UNREAD_INS = 0xff,                    /* every input (past the 8th: when this is set) */
  MG_UNREAD_OUT = 0x100,                   /* every output */
  MG_UNREAD_ALL = MG_UNREAD_INS | MG_UNREAD_OUT   /* shapes only (add, reshape, sum) */
};

typedef struct mg_rules {
  mg_vjp_fn vjp;
  mg_jvp_fn jvp;
  mg_vjp_acc_fn vjp_acc;       /* NULL for most ops */
  unsigned unread;             /* MG_UNREAD_* bits */
  /* Rules several ops share that read different tensors (the elementwise unary and binary
  ** rows of "mg_ops.def"): the bits per opcode, in place of 'unread'; NULL for most. */
  unsigned (*unread_op)(int op);
  /* Linear ops: the one function both rules apply (vjp = mg_linear_vjp, jvp = mg_linear_jvp,
  ** rules.c); NULL for the others. */
  mg_linear_fn linear;
} mg_rules;

typedef struct mg_opdef {
  const char *name;          /* in messages: "out of memory recording 'tanh' on a tape" */
  const mg_rules *rules;
} mg_opdef;

/* The rules each op of the list names: elementwise rows share unary's and binary's. */
extern const mg_rules mg_rules_unary, mg_rules_binary;
#define MG_OP(opcode, name, rules) extern const mg_rules rules;
#include "mg_ops.def"

/* The registry, indexed by opcode (ops.c, generated from "mg_ops.def"). */
extern const mg_opdef mg_ops[MG_OP_COUNT];

#endif
