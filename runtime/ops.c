/*
** ops.c - the op registry, indexed by MG_OP_*, generated from the op list "mg_ops.def".
** Each op's rules are defined beside its forward.
*/
#include "mg_impl.h"

const mg_opdef mg_ops[] = {
#define MG_UNARY_OP(kernel, opcode, name) [opcode] = { name, &mg_rules_unary },
#define MG_BINARY_OP(kernel, opcode, name) [opcode] = { name, &mg_rules_binary },
#define MG_OP(opcode, name, rules) [opcode] = { name, &rules },
#include "mg_ops.def"
};

_Static_assert(sizeof mg_ops / sizeof mg_ops[0] == MG_OP_COUNT, "one registry entry per op");
