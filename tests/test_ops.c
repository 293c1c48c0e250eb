/*
** test_ops.c - the op list "mg_ops.def" and what is generated from it agree: every opcode has
** a registry entry with a unique name, a VJP and a JVP; every elementwise kernel records the
** opcode its row names (or nothing, for the rows that are not recorded) under that row's name.
** Uses the runtime's private header: it checks the registry itself.
*/
#include <stdio.h>
#include <string.h>

#include "mg_impl.h"

static int failures, checks;

#define CHECK(cond, ...) do {                                                      \
    checks++;                                                                      \
    if (!(cond)) { failures++; fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);     \
                   fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); }            \
  } while (0)

static void test_registry(void) {
  for (int op = 0; op < MG_OP_COUNT; op++) {
    const mg_opdef *d = &mg_ops[op];
    CHECK(d->name != NULL && d->name[0] != '\0', "opcode %d has no name", op);
    CHECK(d->rules != NULL && d->rules->vjp != NULL, "opcode %d (%s) has no VJP", op, d->name);
    CHECK(d->rules != NULL && d->rules->jvp != NULL, "opcode %d (%s) has no JVP", op, d->name);
    for (int k = 0; k < op && d->name; k++)
      CHECK(mg_ops[k].name == NULL || strcmp(mg_ops[k].name, d->name) != 0,
            "opcodes %d and %d share the name '%s'", k, op, d->name);
  }
}

/* The opcode the last call recorded on 'T' (-1: nothing new since 'before' nodes). */
static int recorded(mg_tape *T, size_t before) {
  return T->n == before + 1 ? mg_tape_node(T, before)->op : T->n == before ? -1 : -2;
}

static void check_kernel(mg_ctx *C, mg_tape *T, const char *row, int want, mg_status st,
                         mg_tensor *y, size_t before) {
  CHECK(st != MG_OK || y != NULL, "%s: no result", row);
  CHECK(st == MG_OK, "%s: %s", row, mg_errmsg(C));
  int got = recorded(T, before);
  CHECK(got == want, "%s recorded opcode %d, its row says %d", row, got, want);
  if (want >= 0) CHECK(strcmp(mg_ops[want].name, row) == 0, "%s is named '%s' in the registry",
                       row, mg_ops[want].name);
  mg_tensor_release(y);
}

static void test_kernels(mg_ctx *C) {
  int64_t shape[1] = { 3 };
  mg_tensor *x = NULL, *y = NULL;
  mg_tape *T = NULL;
  CHECK(mg_tensor_full(C, MG_F64, 1, shape, 0.5, &x) == MG_OK, "full");
  CHECK(mg_tape_new(C, true, true, &T) == MG_OK, "tape");
  CHECK(mg_tape_watch(T, x) == MG_OK, "watch");
  size_t before;
  mg_status st;
  int nunary = 0, nbinary = 0;
  /* the call fills 'y' before check_kernel reads it (a separate statement: arguments are
  ** evaluated in no fixed order) */
#define MG_UNARY_OP(kernel, opcode, name) \
  before = T->n; y = NULL; st = mg_tensor_unary(C, kernel, x, &y); \
  check_kernel(C, T, name, opcode, st, y, before); nunary++;
#define MG_UNARY_KERNEL(kernel, name) \
  before = T->n; y = NULL; st = mg_tensor_unary(C, kernel, x, &y); \
  check_kernel(C, T, name, -1, st, y, before); nunary++;
#define MG_BINARY_OP(kernel, opcode, name) \
  before = T->n; y = NULL; st = mg_tensor_binary(C, kernel, x, x, &y); \
  check_kernel(C, T, name, opcode, st, y, before); nbinary++;
#define MG_BINARY_KERNEL(kernel, name) \
  before = T->n; y = NULL; st = mg_tensor_binary(C, kernel, x, x, &y); \
  check_kernel(C, T, name, -1, st, y, before); nbinary++;
#include "mg_ops.def"
  CHECK(nunary == MG_U_COUNT && nbinary == MG_B_COUNT, "%d unary and %d binary rows", nunary, nbinary);
  mg_tape_stop(T);                      /* off the context's active list, then freed */
  mg_tape_release(T);
  mg_tensor_release(x);
}

int main(void) {
  mg_ctx *C = mg_ctx_new();
  if (C == NULL) return 1;
  test_registry();
  test_kernels(C);
  mg_ctx_close(C);
  printf("%d checks, %d failures\n", checks, failures);
  return failures != 0;
}
