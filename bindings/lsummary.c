/*
** lsummary.c - TensorBoard event files (runtime/summary.c) as the hidden table
** 'mg._summary': 'open' makes a 'moongrad.SummaryWriter', 'read' decodes a file into Lua
** tables, 'methods' is the writer's method table (bindings/moongrad/summary.lua adds its
** Lua methods there and builds mg.summary on top).
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmoongrad.h"

#define MG_SUMMARY_MT "moongrad.SummaryWriter"

typedef struct lwriter { mg_summary_writer *w; } lwriter;

static lwriter *checkwriter(lua_State *L) { return luaL_checkudata(L, 1, MG_SUMMARY_MT); }

/* The open writer at 1, or an error naming method 'fn'. */
static mg_summary_writer *openwriter(lua_State *L, const char *fn) {
  lwriter *u = checkwriter(L);
  if (u->w == NULL || mg_summary_closed(u->w))
    luaL_error(L, "summary.%s: the writer is closed", fn);
  return u->w;
}

/* Optional wall time (seconds since the epoch) at 'idx': -1 for now. */
static double optwall(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double t = luaL_checknumber(L, idx);
  luaL_argcheck(L, t >= 0, idx, "wall time must be >= 0");
  return t;
}

static int status(lua_State *L, mg_status st) {
  if (st != MG_OK) return lmg_fail(L, LSTATE(L), NULL);
  return 0;
}

/* open(logdir, suffix, flush_secs) -> writer */
static int summary_open(lua_State *L) {
  lstate *S = LSTATE(L);
  const char *dir = luaL_checkstring(L, 1), *suffix = luaL_optstring(L, 2, "");
  double fs = luaL_optnumber(L, 3, 120);
  lwriter *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->w = NULL;
  luaL_setmetatable(L, MG_SUMMARY_MT);
  if (mg_summary_open(S->C, dir, suffix, fs, &u->w) != MG_OK) return lmg_fail(L, S, NULL);
  return 1;
}

/* w:scalar(tag, value, step [, wall_time]) */
static int writer_scalar(lua_State *L) {
  mg_summary_writer *w = openwriter(L, "scalar");
  const char *tag = luaL_checkstring(L, 2);
  double v = luaL_checknumber(L, 3);
  lua_Integer step = luaL_checkinteger(L, 4);
  return status(L, mg_summary_scalar(LSTATE(L)->C, w, tag, v, step, optwall(L, 5)));
}

/* w:histogram(tag, tensor, step [, {bins=, wall_time=}]) */
static int writer_histogram(lua_State *L) {
  mg_summary_writer *w = openwriter(L, "histogram");
  const char *tag = luaL_checkstring(L, 2);
  mg_tensor *t = mg_lua_checktensor(L, 3);
  lua_Integer step = luaL_checkinteger(L, 4), bins = 0;
  double wall = -1;
  if (!lua_isnoneornil(L, 5)) {
    luaL_checktype(L, 5, LUA_TTABLE);
    if (lua_getfield(L, 5, "bins") != LUA_TNIL) {
      int ok;
      bins = lua_tointegerx(L, -1, &ok);
      if (!ok || bins < 1 || bins > 1000000)
        return luaL_error(L, "summary.histogram: bins must be an integer in [1, 1000000], got %s",
                          luaL_tolstring(L, -1, NULL));
    }
    if (lua_getfield(L, 5, "wall_time") != LUA_TNIL) wall = optwall(L, lua_gettop(L));
    lua_settop(L, 5);
  }
  return status(L, mg_summary_histogram(LSTATE(L)->C, w, tag, t, (int)bins, step, wall));
}

/* The bytes of the file 'path': a new buffer, or NULL with 'err' set. */
static unsigned char *slurp(const char *path, size_t *len, int *err) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) { *err = errno; return NULL; }
  size_t cap = 1 << 16, n = 0;
  unsigned char *buf = malloc(cap);
  while (buf != NULL) {
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    unsigned char *nb = realloc(buf, cap *= 2);
    if (nb == NULL) free(buf);
    buf = nb;
  }
  *err = buf == NULL ? ENOMEM : ferror(f) ? EIO : 0;
  fclose(f);
  if (*err) { free(buf); return NULL; }
  *len = n;
  return buf;
}

/* w:image(tag, png_path_or_tensor, step [, wall_time]) */
static int writer_image(lua_State *L) {
  lstate *S = LSTATE(L);
  mg_summary_writer *w = openwriter(L, "image");
  const char *tag = luaL_checkstring(L, 2);
  lua_Integer step = luaL_checkinteger(L, 4);
  double wall = optwall(L, 5);
  if (lua_type(L, 3) == LUA_TSTRING) {
    const char *path = lua_tostring(L, 3);
    size_t len = 0;
    int e = 0;
    unsigned char *png = slurp(path, &len, &e);
    if (png == NULL) return luaL_error(L, "summary.image: cannot read '%s' (%s)", path, strerror(e));
    mg_status st = mg_summary_image_png(S->C, w, tag, png, len, step, wall);
    free(png);
    if (st != MG_OK) return luaL_error(L, "%s ('%s')", mg_errmsg(S->C), path);
    return 0;
  }
  if (lmg_totensor(L, 3) == NULL)
    return luaL_argerror(L, 3, "expected the path of a PNG file or an image tensor");
  return status(L, mg_summary_image_tensor(S->C, w, tag, mg_lua_checktensor(L, 3), step, wall));
}

/* w:text(tag, string, step [, wall_time]) */
static int writer_text(lua_State *L) {
  mg_summary_writer *w = openwriter(L, "text");
  const char *tag = luaL_checkstring(L, 2);
  size_t len;
  const char *s = luaL_checklstring(L, 3, &len);
  lua_Integer step = luaL_checkinteger(L, 4);
  return status(L, mg_summary_text(LSTATE(L)->C, w, tag, s, len, step, optwall(L, 5)));
}

static int writer_flush(lua_State *L) {
  mg_summary_writer *w = openwriter(L, "flush");
  return status(L, mg_summary_flush(LSTATE(L)->C, w));
}

/* w:close(), also <close>: flush, fsync, close (again: nothing) */
static int writer_close(lua_State *L) {
  lwriter *u = checkwriter(L);
  if (u->w == NULL) return 0;
  return status(L, mg_summary_close(LSTATE(L)->C, u->w));
}

/* __gc: close with errors dropped, free */
static int writer_gc(lua_State *L) {
  lwriter *u = checkwriter(L);
  mg_summary_free(u->w);
  u->w = NULL;
  return 0;
}

static int writer_path(lua_State *L) {
  lwriter *u = checkwriter(L);
  if (u->w == NULL) return 0;
  lua_pushstring(L, mg_summary_path(u->w));
  return 1;
}

static int writer_closed(lua_State *L) {
  lwriter *u = checkwriter(L);
  lua_pushboolean(L, u->w == NULL || mg_summary_closed(u->w));
  return 1;
}

static int writer_tostring(lua_State *L) {
  lwriter *u = checkwriter(L);
  if (u->w == NULL) lua_pushliteral(L, "SummaryWriter (freed)");
  else lua_pushfstring(L, "SummaryWriter '%s'%s", mg_summary_path(u->w),
                       mg_summary_closed(u->w) ? " (closed)" : "");
  return 1;
}

/* ---------------------------------------------------------------- reading */

static void setnum(lua_State *L, const char *k, double v) { lua_pushnumber(L, v); lua_setfield(L, -2, k); }

static void pushdoubles(lua_State *L, const double *v, size_t n) {
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) { lua_pushnumber(L, v[i]); lua_rawseti(L, -2, (lua_Integer)i + 1); }
}

static const char *const KINDS[] = { "other", "scalar", "histogram", "image", "text" };

/* Push one value as a table. */
static void pushvalue(lua_State *L, const mg_summary_value *v) {
  lua_createtable(L, 0, 6);
  lua_pushstring(L, v->tag);
  lua_setfield(L, -2, "tag");
  lua_pushstring(L, KINDS[v->kind]);
  lua_setfield(L, -2, "kind");
  if (v->plugin) { lua_pushstring(L, v->plugin); lua_setfield(L, -2, "plugin"); }
  switch (v->kind) {
  case MG_SUMMARY_SCALAR: setnum(L, "value", v->scalar); break;
  case MG_SUMMARY_HISTOGRAM:
    setnum(L, "min", v->min), setnum(L, "max", v->max), setnum(L, "num", v->num);
    setnum(L, "sum", v->sum), setnum(L, "sum_squares", v->sum_squares);
    pushdoubles(L, v->bucket_limit, v->nbuckets);
    lua_setfield(L, -2, "bucket_limit");
    pushdoubles(L, v->bucket, v->nbuckets);
    lua_setfield(L, -2, "bucket");
    break;
  case MG_SUMMARY_IMAGE:
    setnum(L, "height", v->height), setnum(L, "width", v->width);
    setnum(L, "colorspace", v->colorspace);
    lua_pushlstring(L, (const char *)v->bytes, v->nbytes);
    lua_setfield(L, -2, "png");
    break;
  case MG_SUMMARY_TEXT:
    lua_pushlstring(L, (const char *)v->bytes, v->nbytes);
    lua_setfield(L, -2, "text");
    break;
  default: break;
  }
}

/* Push the events of 'log' as an array of tables. */
static void pushlog(lua_State *L, const mg_summary_log *log) {
  size_t n = mg_summary_log_count(log);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    const mg_summary_event *e = mg_summary_log_event(log, i);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)e->offset);
    lua_setfield(L, -2, "offset");
    setnum(L, "wall_time", e->wall_time);
    lua_pushinteger(L, e->step);
    lua_setfield(L, -2, "step");
    if (e->file_version) { lua_pushstring(L, e->file_version); lua_setfield(L, -2, "file_version"); }
    lua_createtable(L, (int)e->nvalues, 0);
    for (size_t k = 0; k < e->nvalues; k++) {
      pushvalue(L, &e->values[k]);
      lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    lua_setfield(L, -2, "values");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

/* read(path) -> events. The log lives in a userdata box while the tables are built, so an
** out-of-memory error in Lua frees it. */
typedef struct lbox { mg_summary_log *log; } lbox;

static int box_gc(lua_State *L) {
  lbox *b = lua_touserdata(L, 1);
  mg_summary_log_free(b->log);
  b->log = NULL;
  return 0;
}

static int summary_read(lua_State *L) {
  lstate *S = LSTATE(L);
  const char *path = luaL_checkstring(L, 1);
  lbox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->log = NULL;
  luaL_setmetatable(L, "moongrad.SummaryLog");
  if (mg_summary_read(S->C, path, &b->log) != MG_OK) return lmg_fail(L, S, NULL);
  pushlog(L, b->log);
  mg_summary_log_free(b->log);
  b->log = NULL;
  return 1;
}

static const luaL_Reg writer_methods[] = {
  { "scalar", writer_scalar }, { "histogram", writer_histogram }, { "image", writer_image },
  { "text", writer_text }, { "flush", writer_flush }, { "close", writer_close },
  { "path", writer_path }, { "closed", writer_closed },
  { NULL, NULL } };

static const luaL_Reg writer_meta[] = {
  { "__gc", writer_gc }, { "__close", writer_close }, { "__tostring", writer_tostring },
  { NULL, NULL } };

static const luaL_Reg summary_functions[] = {
  { "open", summary_open }, { "read", summary_read },
  { NULL, NULL } };

/* Adds the hidden table 'mg._summary' to the module at the stack top. */
void lmg_open_summary(lua_State *L, lstate *S) {
  luaL_newmetatable(L, "moongrad.SummaryLog");
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, MG_SUMMARY_MT);
  lmg_setfuncs(L, S, writer_meta);
  lua_newtable(L);
  lmg_setfuncs(L, S, writer_methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");                    /* mt.__index = methods */
  lua_newtable(L);                                   /* mg._summary */
  lmg_setfuncs(L, S, summary_functions);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  lua_setfield(L, -3, "_summary");                   /* module._summary */
  lua_pop(L, 1);                                     /* the metatable */
}
