/*
** tape.c - gradient tapes. A tape records nodes in execution order; the reverse sweep walks
** them backwards (no recursion, so a 1,000-step recurrence cannot overflow the C stack),
** the forward sweep walks them forwards. Cotangents and tangents may carry one leading
** "basis" dim, so a whole Jacobian costs one sweep (split in chunks to the memory budget).
*/
#include "mg_impl.h"

#include <stdio.h>
#include <stdlib.h>

/* ================================================================ pointer map */

/* Open-addressing map from a tensor to a slot: its cotangent/tangent and whether it is
** reachable from a source. In a Jacobian's reverse sweep (lead 1) the cotangent may be held
** as a product 'rows * val * diag' not yet computed ('diag': the key's shape, broadcast along
** the basis dim; 'rows': (K, B), one factor per basis vector and batch entry; NULL: none): see
** "deferred diagonals" below. */
typedef struct { const mg_tensor *key; mg_tensor *val; bool reach; mg_tensor *diag, *rows; } slot;
typedef struct { slot *s; size_t cap, n; } tmap;

static size_t hashp(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33;
  return (size_t)x;
}

static bool map_init(tmap *m, size_t hint) {
  m->cap = 64;
  while (m->cap < hint * 2) m->cap *= 2;
  m->n = 0;
  m->s = calloc(m->cap, sizeof *m->s);
  return m->s != NULL;
}

static slot *map_find(const tmap *m, const mg_tensor *k) {
  for (size_t i = hashp(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (m->s[i].key == k) return &m->s[i];
    if (m->s[i].key == NULL) return NULL;
  }
}

/* The slot of 'k', added if absent; NULL when out of memory. */
static slot *map_get(tmap *m, const mg_tensor *k) {
  slot *f = map_find(m, k);
  if (f) return f;
  if ((m->n + 1) * 2 > m->cap) {
    tmap g = { calloc(m->cap * 2, sizeof(slot)), m->cap * 2, 0 };
    if (g.s == NULL) return NULL;
    for (size_t i = 0; i < m->cap; i++)
      if (m->s[i].key) *map_get(&g, m->s[i].key) = m->s[i];
    free(m->s);
    *m = g;
  }
  size_t i = hashp(k) & (m->cap - 1);
  while (m->s[i].key != NULL) i = (i + 1) & (m->cap - 1);
  m->s[i] = (slot){ k, NULL, false, NULL, NULL };
  m->n++;
  return &m->s[i];
}

static void map_free(tmap *m) {
  for (size_t i = 0; i < m->cap; i++) {
    mg_tensor_release(m->s[i].val);
    mg_tensor_release(m->s[i].diag);
    mg_tensor_release(m->s[i].rows);
  }
  free(m->s);
}

/* ================================================================ tapes */

static void link_active(mg_tape *T) {
  mg_ctx *C = T->ctx;
  T->next_active = C->active;
  C->active = T;
  C->nactive++;
  T->recording = true;
}

mg_status mg_tape_new(mg_ctx *C, bool persistent, bool watch_vars, mg_tape **out) {
  mg_tape *T = calloc(1, sizeof *T);
  if (T == NULL) return mg_fail(C, MG_ENOMEM, "out of memory");
  T->refs = 1;
  T->ctx = C;
  T->pool = C->pool;
  T->persistent = persistent;
  T->watch_vars = watch_vars;
  link_active(T);
  T->refs++;                             /* the active list's reference */
  *out = T;
  return MG_OK;
}

mg_tape *mg_tape_retain(mg_tape *T) { T->refs++; return T; }

/* The tensors of op 'op''s nodes that no rule reads (MG_UNREAD_* bits, mg_ops.h), as its
** rules declare them. */
static unsigned unread_bits(int op) {
  const mg_rules *r = mg_ops[op].rules;
  return r->unread_op ? r->unread_op(op) : r->unread;
}

/* Whether input 'k' of a node with unread bits 'skip' is read for its shape only; past the
** 8th input, only when every input is. Such references count in the tensor's 'blind' too, so
** that its storage can go once nothing else holds it (mg_tensor_release_reader). */
static bool blind_input(unsigned skip, int k) {
  return k < 8 ? (skip & (1u << k)) != 0 : (skip & MG_UNREAD_INS) == MG_UNREAD_INS;
}

/* Drop node 'n''s references; 'skip' is unread_bits(n->op). */
static void node_clear(mg_node *n, unsigned skip) {
  for (int i = 0; i < n->nin; i++) {
    if (blind_input(skip, i)) n->in[i]->blind--;
    mg_unref(n->in[i]);
  }
  for (int i = 0; i < n->nout; i++) {
    if (skip & MG_UNREAD_OUT) n->out[i]->blind--;
    mg_unref(n->out[i]);
  }
  for (int i = 0; i < n->nsaved; i++) mg_unref(n->saved[i]);
  if (n->in != n->in_inline) free(n->in);
}

static size_t block_bytes(size_t b) { return ((size_t)MG_NODE_BLOCK0 << b) * sizeof(mg_node); }

/* Node blocks come from the pool's cache of large blocks (huge pages from 2 MiB on), so that
** the next tape reuses them warm. */
static mg_node *block_new(mg_tape *T, size_t b) {
  return mg_pool_block_get(T->pool, block_bytes(b), &T->blockcap[b]);
}

static void drop_nodes(mg_tape *T) {
  int op = -1;
  unsigned skip = 0;
  for (size_t i = 0; i < T->n; i++) {         /* runs of one op look its bits up once */
    mg_node *n = mg_tape_node(T, i);
    if (n->op != op) skip = unread_bits(op = n->op);
    node_clear(n, skip);
  }
  for (size_t b = 0; b < T->nblocks; b++) mg_pool_block_put(T->pool, T->blocks[b], T->blockcap[b]);
  T->n = T->nblocks = 0;
}

void mg_tape_release(mg_tape *T) {
  if (T == NULL || --T->refs > 0) return;
  drop_nodes(T);
  for (size_t i = 0; i < T->nwatched; i++) mg_tensor_release(T->watched[i]);
  free(T->watched);
  free(T);
}

void mg_tape_stop(mg_tape *T) {
  if (!T->recording) return;
  mg_ctx *C = T->ctx;
  for (mg_tape **p = &C->active; *p; p = &(*p)->next_active)
    if (*p == T) { *p = T->next_active; break; }
  C->nactive--;
  if (T->busy) C->nbusy--;
  T->recording = false;
  mg_tape_release(T);                    /* the active list's reference */
}

bool mg_tape_is_recording(const mg_tape *T) { return T->recording; }

static bool is_watched(const mg_tape *T, const mg_tensor *t) {
  for (size_t i = 0; i < T->nwatched; i++)
    if (T->watched[i] == t) return true;
  return false;
}

mg_status mg_tape_watch(mg_tape *T, mg_tensor *t) {
  if (is_watched(T, t)) return MG_OK;
  if (T->nwatched == T->capwatched) {
    size_t cap = T->capwatched ? 2 * T->capwatched : 8;
    mg_tensor **w = realloc(T->watched, cap * sizeof *w);
    if (w == NULL) return mg_fail(T->ctx, MG_ENOMEM, "out of memory");
    T->watched = w;
    T->capwatched = cap;
  }
  T->watched[T->nwatched++] = mg_tensor_retain(t);
  return MG_OK;
}

size_t mg_tape_nwatched(const mg_tape *T) { return T->nwatched; }
mg_tensor *mg_tape_watched_at(const mg_tape *T, size_t i) {
  return i < T->nwatched ? T->watched[i] : NULL;
}

/* ================================================================ versions */

static void describe_stale(char *buf, size_t n, const char *role, int k, const mg_tensor *t) {
  char sh[96];
  mg_shapestr(sh, sizeof sh, t->ndim, t->shape);
  if (t->name && t->name[0])
    snprintf(buf, n, "%s %d, Variable '%s', %s %s", role, k + 1, t->name, mg_dtype_name(t->dtype), sh);
  else
    snprintf(buf, n, "%s %d, a %s tensor of shape %s", role, k + 1, mg_dtype_name(t->dtype), sh);
}

static mg_status stale_error(mg_ctx *C, const mg_node *n, const char *role, int k,
                             const mg_tensor *t, uint32_t then) {
  char what[160];
  describe_stale(what, sizeof what, role, k, t);
  return mg_fail(C, MG_ESTATE, "%s: a tensor saved for the gradient was modified in place after "
                 "it was recorded (%s; version %u when recorded, now %u)", mg_ops[n->op].name,
                 what, (unsigned)then, (unsigned)t->storage->version);
}

/* Before a rule of 'n' runs: the tensors it reads still hold the values it recorded. */
static mg_status check_versions(mg_ctx *C, const mg_node *n) {
  unsigned skip = unread_bits(n->op);
  if (skip == MG_UNREAD_ALL && n->nsaved == 0) return MG_OK;
  for (int k = 0; k < n->nin; k++)
    if (!(skip & (k < 8 ? 1u << k : (unsigned)MG_UNREAD_INS)) && n->in[k]->storage->version != n->ver_in[k])
      return stale_error(C, n, "input", k, n->in[k], n->ver_in[k]);
  for (int k = 0; k < n->nout && !(skip & MG_UNREAD_OUT); k++)
    if (n->out[k]->storage->version != n->ver_out[k])
      return stale_error(C, n, "output", k, n->out[k], n->ver_out[k]);
  for (int k = 0; k < n->nsaved; k++)
    if (n->saved[k]->storage->version != n->ver_saved[k])
      return stale_error(C, n, "saved tensor", k, n->saved[k], n->ver_saved[k]);
  return MG_OK;
}

/* ================================================================ recording */

static mg_status record_on(mg_tape *T, int op, int nin, mg_tensor *const *in, int nout,
                           mg_tensor *const *out, int nsaved, mg_tensor *const *saved,
                           const mg_attr *attr) {
  if (T->n == MG_NODE_BLOCK0 * (((size_t)1 << T->nblocks) - 1)) {   /* full: a new block */
    if (T->nblocks == sizeof T->blocks / sizeof T->blocks[0]) return MG_ENOMEM;
    if ((T->blocks[T->nblocks] = block_new(T, T->nblocks)) == NULL) return MG_ENOMEM;
    T->nblocks++;
  }
  mg_node *n = mg_tape_node(T, T->n);
  n->op = op;
  n->nin = nin;
  n->nout = nout;
  n->nsaved = nsaved;
  if (nin <= MG_MAXIN_INLINE) {
    n->in = n->in_inline;
    n->ver_in = n->ver_in_inline;
  } else {                                /* the versions follow the pointers */
    n->in = malloc((size_t)nin * (sizeof *n->in + sizeof *n->ver_in));
    if (n->in == NULL) return MG_ENOMEM;
    n->ver_in = (uint32_t *)(n->in + nin);
  }
  unsigned skip = unread_bits(op);
  for (int i = 0; i < nin; i++) {
    n->in[i] = mg_ref(in[i]);
    n->ver_in[i] = in[i]->storage->version;
    if (blind_input(skip, i)) in[i]->blind++;
    if (T->watch_vars && mg_is_variable(in[i]) && mg_tape_watch(T, in[i]) != MG_OK)
      return MG_ENOMEM;   /* the node is complete but for this; the caller reports it */
  }
  for (int i = 0; i < nout; i++) {
    n->out[i] = mg_ref(out[i]);
    n->ver_out[i] = out[i]->storage->version;
    if (skip & MG_UNREAD_OUT) out[i]->blind++;
  }
  for (int i = 0; i < nsaved; i++) {
    n->saved[i] = mg_ref(saved[i]);
    n->ver_saved[i] = saved[i]->storage->version;
  }
  if (attr) n->attr = *attr;
  else n->attr.ni = 0;
  T->n++;
  return MG_OK;
}

mg_status mg_record(mg_ctx *C, int op, int nin, mg_tensor *const *in, int nout,
                    mg_tensor *const *out, int nsaved, mg_tensor *const *saved,
                    const mg_attr *attr) {
  for (mg_tape *T = C->active; T; T = T->next_active) {
    if (T->busy) continue;               /* a tape does not record its own differentiation */
    if (record_on(T, op, nin, in, nout, out, nsaved, saved, attr) != MG_OK)
      return mg_fail(C, MG_ENOMEM, "out of memory recording '%s' on a tape", mg_ops[op].name);
  }
  return MG_OK;
}

mg_status mg_record_result(mg_ctx *C, int op, int nin, mg_tensor *const *in, mg_tensor *y,
                           const mg_attr *attr, mg_tensor **out) {
  if (mg_recording(C)) {
    mg_status st = mg_record(C, op, nin, in, 1, &y, 0, NULL, attr);
    if (st != MG_OK) { mg_tensor_release(y); return st; }
  }
  *out = y;
  return MG_OK;
}

/* ================================================================ sweeps */

static mg_status spent_error(mg_tape *T) {
  return mg_fail(T->ctx, MG_ESTATE,
                 "GradientTape: a non-persistent tape can compute gradients only once "
                 "(create it with persistent=true to call gradient/jacobian more than once)");
}

/* Mark every tensor computed from a source as reachable; returns the first node index
** touched (nodes before it cannot matter). */
static size_t mark_reach(const mg_tape *T, tmap *m, int nsources, mg_tensor *const *sources,
                         bool *oom) {
  size_t first = T->n;
  *oom = false;
  for (int j = 0; j < nsources; j++) {
    slot *s = map_get(m, sources[j]);
    if (s == NULL) { *oom = true; return first; }
    s->reach = true;
  }
  for (size_t i = 0; i < T->n; i++) {
    const mg_node *n = mg_tape_node(T, i);
    bool any = false;
    for (int k = 0; k < n->nin && !any; k++) {
      slot *s = map_find(m, n->in[k]);
      any = s && s->reach;
    }
    if (!any) continue;
    if (first == T->n) first = i;
    for (int k = 0; k < n->nout; k++) {
      slot *s = map_get(m, n->out[k]);
      if (s == NULL) { *oom = true; return first; }
      s->reach = true;
    }
  }
  return first;
}

/* Whether the slot's tensor may be updated in place: nobody else can see it (no other
** reference to it or its storage) and no tape would need the sum as a recorded op. */
static bool private_sum(mg_ctx *C, const mg_tensor *acc, const mg_tensor *g) {
  return !mg_recording(C) && acc->refs == 1 && acc->storage->refs == 1 && acc->flags == 0 &&
         acc->dtype == g->dtype && mg_same_shape(acc, g) && mg_tensor_is_contiguous(acc);
}

/* acc += g (both new references owned by the map slot / caller). */
static mg_status accumulate(mg_ctx *C, slot *s, mg_tensor *g) {
  if (s->val == NULL) { s->val = g; return MG_OK; }
  if (private_sum(C, s->val, g)) {
    mg_status st = mg_tensor_add_(C, s->val, g);
    mg_tensor_release(g);
    return st;
  }
  mg_tensor *sum = NULL;
  mg_status st = mg_tensor_binary(C, MG_B_ADD, s->val, g, &sum);
  mg_tensor_release(g);
  if (st != MG_OK) return st;
  mg_tensor_release(s->val);
  s->val = sum;
  return MG_OK;
}

/* ---------------------------------------------------------------- deferred diagonals
** A Jacobian's reverse sweep (lead 1) carries K basis cotangents at once: for a batch
** Jacobian of f(h) = relu(h) @ W + b, (K, B, N) numbers per tensor. An elementwise op's rule
** multiplies its cotangent by a diagonal f'(x) of the primal's shape (B, N): one pass over
** all K * B * N numbers per op, for what depends on B * N of them. So in a lead-1 sweep that
** no tape records, an elementwise unary op (rules mg_rules_unary, one input) does not
** multiply: its rule runs at lead 0 on the pending diagonal (ones when there is none), which
** gives diag * f'(x), and the input's slot holds (val, that product); add hands both on to
** each input of its output's shape and dtype.
** A matmul (B, I) @ (I, K) meeting the batch-Jacobian identity seed E (MG_TF_EYE) with a
** pending diagonal D (B, K), as in tanh(h @ W + b), does not multiply either: (E * D)[k, b, :]
** is D[b, k] E[k, b, :], and the rule acts on each (k, b) row alone, so the cotangent of its
** input is rows[k, b] = D[b, k] times the rule's result for E itself (a view of W^T, no GEMM).
** Any other consumer first computes rows * val * diag ('settle'), as does the sum of two
** cotangents, and so does the end of the sweep unless the caller takes the factors
** (mg_tape_jacobian_sweep: the Jacobian then writes the product once, straight into its
** result's layout; jacobian.c). */

mg_status mg_factors_product(mg_ctx *C, mg_tensor *val, mg_tensor *diag, mg_tensor *rows,
                             mg_tensor **out) {
  mg_tensor *p = mg_tensor_retain(val), *q = NULL, *r = NULL;
  mg_status st = MG_OK;
  if (rows) {                                  /* (K, B) as (K, B, 1, ...) against val */
    int64_t sh[MG_MAXDIM];
    for (int d = 0; d < val->ndim; d++) sh[d] = d < 2 ? val->shape[d] : 1;
    if ((st = mg_tensor_reshape(C, rows, val->ndim, sh, &r)) == MG_OK &&
        (st = mg_tensor_binary(C, MG_B_MUL, p, r, &q)) == MG_OK) {
      mg_tensor_release(p);
      p = q;
    }
    mg_tensor_release(r);
  }
  if (st == MG_OK && diag && (st = mg_tensor_binary(C, MG_B_MUL, p, diag, &q)) == MG_OK) {
    mg_tensor_release(p);
    p = q;
  }
  if (st != MG_OK) { mg_tensor_release(p); return st; }
  *out = p;
  return MG_OK;
}

/* The slot's pending product rows * val * diag computed: it then holds a plain cotangent. */
static mg_status settle(mg_ctx *C, slot *s) {
  if (s->diag == NULL && s->rows == NULL) return MG_OK;
  mg_tensor *p = NULL;
  mg_status st = mg_factors_product(C, s->val, s->diag, s->rows, &p);
  if (st != MG_OK) return st;
  mg_tensor_release(s->val);
  mg_tensor_release(s->diag);
  mg_tensor_release(s->rows);
  s->val = p;
  s->diag = s->rows = NULL;
  return MG_OK;
}

/* acc += grows * g * gdiag (either factor NULL: none); new references, owned by the slot. */
static mg_status accumulate_diag(mg_ctx *C, slot *s, mg_tensor *g, mg_tensor *gdiag,
                                 mg_tensor *grows) {
  if (s->val == NULL) {
    s->val = g;
    s->diag = gdiag;
    s->rows = grows;
    return MG_OK;
  }
  slot in = { s->key, g, false, gdiag, grows };
  mg_status st = settle(C, s);
  if (st == MG_OK) st = settle(C, &in);
  if (st == MG_OK) return accumulate(C, s, in.val);
  mg_tensor_release(in.val);
  mg_tensor_release(in.diag);
  mg_tensor_release(in.rows);
  return st;
}

/* Whether matmul node 'n' meets the identity seed with a pending diagonal (see above). */
static bool eye_rows(const mg_node *n, const slot *out, const bool *need) {
  const mg_tensor *a = n->in[0], *w = n->in[1], *y = n->out[0];
  return n->op == MG_OP_MATMUL && n->nin == 2 && !need[1] && out->diag && !out->rows &&
         (out->val->flags & MG_TF_EYE) && a->ndim == 2 && w->ndim == 2 && y->ndim == 2 &&
         a->dtype == y->dtype && mg_same_shape(out->diag, y) && out->diag->dtype == y->dtype &&
         out->val->ndim == 3 && out->val->shape[0] == y->shape[1];
}

/* mg_impl.h */
bool mg_node_passes_on(const mg_node *n, const bool *need) {
  if (n->nout != 1) return false;
  if (mg_ops[n->op].rules == &mg_rules_unary) return n->nin == 1;
  if (n->op != MG_OP_ADD) return false;
  for (int k = 0; k < n->nin; k++)
    if ((need == NULL || need[k]) &&
        (!mg_same_shape(n->in[k], n->out[0]) || n->in[k]->dtype != n->out[0]->dtype))
      return false;
  return true;
}

/* Whether node 'n' passes its output's cotangent on with pending factors. */
static bool defers(mg_ctx *C, const mg_node *n, int lead, const slot *out, const bool *need) {
  if (lead != 1 || mg_recording(C) || n->nout != 1) return false;
  if (n->op == MG_OP_MATMUL) return eye_rows(n, out, need);
  return mg_node_passes_on(n, need);
}

/* The deferred rule of 'n' (defers): gin[k] val, gdiag[k] and grows[k] the input's pending
** factors. */
static mg_status defer_node(mg_ctx *C, const mg_node *n, const slot *out,
                            const bool *need, mg_tensor **gin, mg_tensor **gdiag,
                            mg_tensor **grows) {
  if (n->op == MG_OP_ADD) {                              /* both inputs: the same cotangent */
    for (int k = 0; k < n->nin; k++)
      if (need[k]) {
        gin[k] = mg_tensor_retain(out->val);
        gdiag[k] = out->diag ? mg_tensor_retain(out->diag) : NULL;
        grows[k] = out->rows ? mg_tensor_retain(out->rows) : NULL;
      }
    return MG_OK;
  }
  if (n->op == MG_OP_MATMUL) {                           /* rows[k, b] = D[b, k] */
    mg_tensor *dt = NULL, *val = out->val;
    mg_status st = mg_tensor_transpose(C, out->diag, 0, 1, &dt);
    if (st == MG_OK) st = mg_tensor_contiguous(C, dt, &grows[0]);
    mg_tensor_release(dt);
    if (st == MG_OK) st = mg_ops[n->op].rules->vjp(C, n, 1, &val, need, gin);
    return st;
  }
  mg_tensor *d = out->diag ? mg_tensor_retain(out->diag) : NULL, *y = n->out[0];
  mg_status st = d ? MG_OK : mg_tensor_full(C, y->dtype, y->ndim, y->shape, 1.0, &d);
  if (st == MG_OK) st = mg_ops[n->op].rules->vjp(C, n, 0, &d, need, &gdiag[0]);
  mg_tensor_release(d);
  if (st == MG_OK && gdiag[0]) {                         /* NULL: a zero */
    gin[0] = mg_tensor_retain(out->val);
    grows[0] = out->rows ? mg_tensor_retain(out->rows) : NULL;
  }
  return st;
}

static bool is_source(const mg_tensor *t, int nsources, mg_tensor *const *sources) {
  for (int j = 0; j < nsources; j++)
    if (sources[j] == t) return true;
  return false;
}

/* Zeros shaped lead dims of 'like' .. shape of 't'. */
static mg_status zeros_like_lead(mg_ctx *C, const mg_tensor *like, int lead, const mg_tensor *t,
                                 mg_tensor **out) {
  int64_t sh[MG_MAXDIM];
  int nd = mg_lead_shape(like, lead, t->ndim, t->shape, sh);
  return mg_tensor_zeros(C, t->dtype, nd, sh, out);
}

/* The cotangents of the targets: 'seeds' (NULL entries: ones). '*like' gets a seed with the
** lead dims (for shaping zeros later). */
static mg_status seed_targets(mg_ctx *C, tmap *m, int ntargets, mg_tensor *const *targets,
                              mg_tensor *const *seeds, mg_tensor **like) {
  for (int i = 0; i < ntargets; i++) {
    slot *s = map_get(m, targets[i]);
    if (s == NULL) return mg_fail(C, MG_ENOMEM, "out of memory");
    mg_tensor *g = NULL;
    mg_status st = MG_OK;
    if (seeds && seeds[i]) g = mg_tensor_retain(*like = seeds[i]);
    else st = mg_tensor_full(C, targets[i]->dtype, targets[i]->ndim, targets[i]->shape, 1.0, &g);
    if (st == MG_OK) st = accumulate(C, s, g);
    if (st != MG_OK) return st;
  }
  return MG_OK;
}

/* The node's reverse rule; its accumulating form (mg_vjp_acc_fn) when it has one and the
** sweep is first-order, handed the running sums that may be updated in place. */
static mg_status run_vjp(mg_ctx *C, tmap *m, const mg_node *n, int lead, mg_tensor *const *g,
                         const bool *need, mg_tensor **gin) {
  const mg_rules *r = mg_ops[n->op].rules;
  if (r->vjp_acc == NULL || lead != 0 || mg_recording(C) || n->nin > 8)
    return r->vjp(C, n, lead, g, need, gin);
  mg_tensor *acc[8] = { NULL };
  for (int k = 0; k < n->nin; k++) {
    slot *s = need[k] ? map_find(m, n->in[k]) : NULL;
    if (s && s->val && private_sum(C, s->val, n->in[k])) acc[k] = s->val;
  }
  return r->vjp_acc(C, n, g, need, gin, acc);
}

/* One node of the reverse sweep: its rule turns the cotangents of its outputs into those of
** the inputs that lead back to a source; the outputs' cotangents are then dropped (unless a
** source asks for them). */
static mg_status backward_node(mg_ctx *C, tmap *m, const mg_node *n, int lead,
                               int nsources, mg_tensor *const *sources) {
  mg_tensor *g[MG_MAXOUT] = { NULL };
  slot *os[MG_MAXOUT] = { NULL };                      /* valid until the first map_get */
  bool anyg = false, anyneed = false;
  for (int k = 0; k < n->nout; k++) {
    os[k] = map_find(m, n->out[k]);
    anyg |= (g[k] = os[k] ? os[k]->val : NULL) != NULL;
  }
  if (!anyg) return MG_OK;
  bool stackneed[8], *need = n->nin <= 8 ? stackneed : calloc((size_t)n->nin, sizeof *need);
  mg_tensor *stackgin[8] = { NULL }, **gin = n->nin <= 8 ? stackgin : calloc((size_t)n->nin, sizeof *gin);
  mg_tensor *stackgd[8] = { NULL }, **gdiag = n->nin <= 8 ? stackgd : calloc((size_t)n->nin, sizeof *gdiag);
  mg_tensor *stackgr[8] = { NULL }, **grows = n->nin <= 8 ? stackgr : calloc((size_t)n->nin, sizeof *grows);
  mg_status st = need && gin && gdiag && grows ? MG_OK : mg_fail(C, MG_ENOMEM, "out of memory");
  for (int k = 0; st == MG_OK && k < n->nin; k++) {
    slot *s = map_find(m, n->in[k]);
    anyneed |= (need[k] = s && s->reach);
  }
  if (st == MG_OK && anyneed && (st = check_versions(C, n)) == MG_OK) {
    if (defers(C, n, lead, os[0], need)) {
      st = defer_node(C, n, os[0], need, gin, gdiag, grows);
    } else {
      for (int k = 0; k < n->nout && st == MG_OK; k++)
        if (os[k] && (st = settle(C, os[k])) == MG_OK) g[k] = os[k]->val;
      if (st == MG_OK) st = run_vjp(C, m, n, lead, g, need, gin);
    }
  }
  for (int k = 0; gin && gdiag && grows && k < n->nin; k++) {
    slot *s = gin[k] && st == MG_OK ? map_get(m, n->in[k]) : NULL;
    if (s) {
      st = accumulate_diag(C, s, gin[k], gdiag[k], grows[k]);
      continue;
    }
    if (gin[k] && st == MG_OK) st = mg_fail(C, MG_ENOMEM, "out of memory");
    mg_tensor_release(gin[k]);
    mg_tensor_release(gdiag[k]);
    mg_tensor_release(grows[k]);
  }
  if (need != stackneed) free(need);
  if (gin != stackgin) free(gin);
  if (gdiag != stackgd) free(gdiag);
  if (grows != stackgr) free(grows);
  for (int k = 0; k < n->nout; k++) {                  /* consumed: free unless asked for */
    slot *s = map_find(m, n->out[k]);
    if (s && s->val && !is_source(n->out[k], nsources, sources)) {
      mg_tensor_release(s->val);
      mg_tensor_release(s->diag);
      mg_tensor_release(s->rows);
      s->val = s->diag = s->rows = NULL;
    }
  }
  return st;
}

/* The reverse sweep; 'diags' non-NULL: a source's pending factors go to diags[j] and rows[j]
** (NULL: none) instead of being multiplied into its gradient. */
static mg_status sweep(mg_tape *T, int ntargets, mg_tensor *const *targets,
                       mg_tensor *const *seeds, int lead, int nsources, mg_tensor *const *sources,
                       bool unconnected_zero, mg_tensor **grads, mg_tensor **diags,
                       mg_tensor **rows) {
  mg_ctx *C = T->ctx;
  tmap m;
  bool oom;
  mg_tensor *like = NULL;
  for (int j = 0; j < nsources; j++) {
    grads[j] = NULL;
    if (diags) diags[j] = rows[j] = NULL;
  }
  if (!map_init(&m, T->n + (size_t)nsources)) return mg_fail(C, MG_ENOMEM, "out of memory");
  size_t first = mark_reach(T, &m, nsources, sources, &oom);
  mg_status st = oom ? mg_fail(C, MG_ENOMEM, "out of memory")
                     : seed_targets(C, &m, ntargets, targets, seeds, &like);
  for (size_t i = T->n; i-- > first && st == MG_OK;)
    if ((st = mg_poll(C, "gradient")) == MG_OK)
      st = backward_node(C, &m, mg_tape_node(T, i), lead, nsources, sources);
  for (int j = 0; j < nsources && st == MG_OK; j++) {
    slot *s = map_find(&m, sources[j]);
    if (s && s->val && diags) {
      diags[j] = s->diag ? mg_tensor_retain(s->diag) : NULL;
      rows[j] = s->rows ? mg_tensor_retain(s->rows) : NULL;
    } else if (s && s->val) {
      st = settle(C, s);
    }
    if (st != MG_OK) break;
    if (s && s->val)
      st = mg_expand_lead(C, s->val, lead, sources[j]->ndim, sources[j]->shape, &grads[j]);
    else if (unconnected_zero && lead && like)
      st = zeros_like_lead(C, like, lead, sources[j], &grads[j]);
    else if (unconnected_zero)
      st = mg_tensor_zeros(C, sources[j]->dtype, sources[j]->ndim, sources[j]->shape, &grads[j]);
  }
  if (st != MG_OK)
    for (int j = 0; j < nsources; j++) {
      mg_tensor_release(grads[j]);
      grads[j] = NULL;
      if (diags) {
        mg_tensor_release(diags[j]);
        mg_tensor_release(rows[j]);
        diags[j] = rows[j] = NULL;
      }
    }
  map_free(&m);
  return st;
}

mg_status mg_tape_gradient_sweep(mg_tape *T, int ntargets, mg_tensor *const *targets,
                                 mg_tensor *const *seeds, int lead, int nsources,
                                 mg_tensor *const *sources, bool unconnected_zero,
                                 mg_tensor **grads) {
  return sweep(T, ntargets, targets, seeds, lead, nsources, sources, unconnected_zero, grads,
               NULL, NULL);
}

mg_status mg_tape_jacobian_sweep(mg_tape *T, mg_tensor *target, mg_tensor *seed, int nsources,
                                 mg_tensor *const *sources, bool unconnected_zero,
                                 mg_tensor **grads, mg_tensor **diags, mg_tensor **rows) {
  return sweep(T, 1, &target, &seed, 1, nsources, sources, unconnected_zero, grads, diags, rows);
}

/* Bracket a differentiation of 'T': its own recording is suspended meanwhile, and a
** non-persistent tape is spent at the end, unless the host interrupted it ('st' MG_EINTR):
** nothing was handed out, so it may be asked again. */
mg_status mg_tape_begin(mg_tape *T) {
  if (T->spent) return spent_error(T);
  if (T->busy++ == 0 && T->recording) T->ctx->nbusy++;
  return MG_OK;
}

void mg_tape_end(mg_tape *T, mg_status st) {
  if (--T->busy == 0 && T->recording) T->ctx->nbusy--;
  if (!T->persistent && st != MG_EINTR) {                  /* spent: nothing it records could be used */
    T->spent = true;
    drop_nodes(T);
    mg_tape_stop(T);
  }
}

mg_status mg_tape_gradient(mg_tape *T, int ntargets, mg_tensor *const *targets,
                           mg_tensor *const *seeds, int lead, int nsources,
                           mg_tensor *const *sources, bool unconnected_zero, mg_tensor **grads) {
  mg_status st = mg_tape_begin(T);
  if (st != MG_OK) return st;
  st = mg_tape_gradient_sweep(T, ntargets, targets, seeds, lead, nsources, sources, unconnected_zero, grads);
  mg_tape_end(T, st);
  return st;
}

mg_status mg_tape_forward_sweep(mg_tape *T, int nsources, mg_tensor *const *sources,
                         mg_tensor *const *tangents, int lead, int ntargets,
                         mg_tensor *const *targets, mg_tensor **out) {
  mg_ctx *C = T->ctx;
  tmap m;
  if (!map_init(&m, T->n + (size_t)nsources)) return mg_fail(C, MG_ENOMEM, "out of memory");
  mg_status st = MG_OK;
  for (int j = 0; j < nsources && st == MG_OK; j++) {
    slot *s = map_get(&m, sources[j]);
    if (s == NULL) st = mg_fail(C, MG_ENOMEM, "out of memory");
    else st = accumulate(C, s, mg_tensor_retain(tangents[j]));
  }
  for (size_t i = 0; i < T->n && st == MG_OK && (st = mg_poll(C, "jvp")) == MG_OK; i++) {
    const mg_node *n = mg_tape_node(T, i);
    mg_tensor *stackt[8], **t = n->nin <= 8 ? stackt : calloc((size_t)n->nin, sizeof *t);
    mg_tensor *tout[MG_MAXOUT] = { NULL };
    if (t == NULL) { st = mg_fail(C, MG_ENOMEM, "out of memory"); break; }
    bool any = false;
    for (int k = 0; k < n->nin; k++) {
      slot *s = map_find(&m, n->in[k]);
      t[k] = s ? s->val : NULL;
      any |= t[k] != NULL;
    }
    if (any && (st = check_versions(C, n)) == MG_OK) st = mg_ops[n->op].rules->jvp(C, n, lead, t, tout);
    if (t != stackt) free(t);
    for (int k = 0; k < n->nout; k++) {
      if (tout[k] == NULL) continue;
      slot *s = st == MG_OK ? map_get(&m, n->out[k]) : NULL;
      if (s == NULL) { mg_tensor_release(tout[k]); if (st == MG_OK) st = mg_fail(C, MG_ENOMEM, "out of memory"); continue; }
      mg_tensor_release(s->val);       /* an output is produced once */
      s->val = tout[k];
    }
  }
  for (int j = 0; j < ntargets; j++) {
    out[j] = NULL;
    if (st != MG_OK) continue;
    slot *s = map_find(&m, targets[j]);
    if (s && s->val)
      st = mg_expand_lead(C, s->val, lead, targets[j]->ndim, targets[j]->shape, &out[j]);
    else
      st = zeros_like_lead(C, tangents[0], lead, targets[j], &out[j]);
  }
  if (st != MG_OK)
    for (int j = 0; j < ntargets; j++) { mg_tensor_release(out[j]); out[j] = NULL; }
  map_free(&m);
  return st;
}

mg_status mg_tape_forward(mg_tape *T, int nsources, mg_tensor *const *sources,
                          mg_tensor *const *tangents, int lead, int ntargets,
                          mg_tensor *const *targets, mg_tensor **out) {
  mg_status st = mg_tape_begin(T);
  if (st != MG_OK) return st;
  st = mg_tape_forward_sweep(T, nsources, sources, tangents, lead, ntargets, targets, out);
  mg_tape_end(T, st);
  return st;
}
