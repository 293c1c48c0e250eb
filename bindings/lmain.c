/*
** lmain.c - the 'moongrad' executable: a stock Lua 5.4 interpreter (same options, LUA_INIT
** and 'arg' table as 'lua') with the moongrad module preloaded as the global 'mg'; a readline
** REPL that prints the value of each expression (tables as values), keeps history (a chunk
** one entry) and completes names; Ctrl-C stops a long op through the context's interrupt
** flag; '-v' reports the OpenBLAS kernels.
*/
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "moongrad.h"

#define PROMPT "mg> "
#define PROMPT2 "..> "
#define HISTORY_NAME ".moongrad_history"   /* in $HOME, unless $MOONGRAD_HISTORY is set */
#define HISTORY_MAX 1000                   /* entries kept in memory and in the file */
#define EOFMARK "<eof>"                    /* ends the syntax error of an incomplete chunk */
#define TENSOR_MT "moongrad.Tensor"        /* the tensors' metatable (its '__name') */

static const char *progname = "moongrad";  /* prefix of error messages; NULL in the REPL */

/* ================================================================ messages */

static void print_usage(FILE *f) {
  fprintf(f,
    "usage: %s [options] [script [args]]\n"
    "  -e code    run 'code' (may be repeated; runs before the script or the REPL)\n"
    "  -l mod     require 'mod' into the global 'mod' (-l g=mod: into the global 'g')\n"
    "  -i         enter the REPL after running 'script'\n"
    "  -v         show versions and the OpenBLAS kernels in use\n"
    "  -E         ignore the environment variables LUA_INIT, LUA_PATH and LUA_CPATH\n"
    "  -W         turn warnings on\n"
    "  -h, --help show this help\n"
    "  --         stop handling options\n"
    "  -          run the script read from stdin\n"
    "With no script, no -e and no -v: the REPL. The module is the global 'mg'.\n",
    progname);
}

/* A bad command line: what is wrong, then the usage, on stderr. */
static void bad_usage(const char *option) {
  if ((option[1] == 'e' || option[1] == 'l') && option[2] == '\0')
    fprintf(stderr, "%s: '%s' needs an argument\n", progname, option);
  else
    fprintf(stderr, "%s: unrecognized option '%s'\n", progname, option);
  print_usage(stderr);
}

static void message(const char *pname, const char *msg) {
  fflush(stdout);                        /* keep the order of output and errors in a pipe */
  if (pname) fprintf(stderr, "%s: ", pname);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

/* When 'status' is an error, print the message on top of the stack and pop it. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    message(progname, msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
  }
  return status;
}

/* The level the traceback of an error starts at: the first frame of the user's code when
** frames of moongrad's own Lua modules (chunks "@moongrad/...") come before it, so that the
** helpers that checked the arguments do not hide where the call was made; else 1, as 'lua'. */
static int first_user_level(lua_State *L) {
  lua_Debug ar;
  bool internal = false;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "S", &ar);
    bool ours = strncmp(ar.source, "@moongrad/", 10) == 0;
    internal |= ours;
    if (!ours && strcmp(ar.what, "C") != 0) return internal ? level : 1;
  }
  return 1;
}

/* Message handler of every chunk: the error (through '__tostring' if it has one) with a
** traceback from the user's first frame. Stack: error object -> message. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, first_user_level(L));
  return 1;
}

/* ================================================================ Ctrl-C */

/* A signal handler reaches nothing but statics: the state running a chunk, the handler to
** restore between chunks (in a terminal REPL, the one that cancels the line being typed),
** the flag the runtime's long loops poll (the module's context points at it), and the flag
** of a Ctrl-C at the prompt. */
static lua_State *running_L = NULL;
static void (*idle_handler)(int) = SIG_DFL;
static volatile sig_atomic_t interrupt_flag = 0;
static volatile sig_atomic_t prompt_interrupted = 0;

/* No SA_RESTART: a read interrupted by Ctrl-C returns EINTR (see 'read_key'). */
static void setsignal(int sig, void (*handler)(int)) {
  struct sigaction sa;
  sa.sa_handler = handler;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

/* Raise at the next Lua instruction; the Ctrl-C is then consumed. */
static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  interrupt_flag = 0;
  luaL_error(L, "interrupted!");
}

/* Ctrl-C while a chunk runs: a Lua state cannot be touched from a signal handler, so set the
** flag that a running op polls (it fails with "<op>: interrupted!") and a hook that raises at
** the next Lua instruction, whichever comes first (the hook clears the flag, and so does the
** end of the chunk). The hook counts instructions only: a call or return hook would fire in
** the message handler of the op's error. A Ctrl-C while the last one is still pending (stuck
** in one BLAS call, say) kills, as a second Ctrl-C does in 'lua'; once one took effect, the
** next interrupts again (code that caught the error and went on). */
static void on_interrupt(int sig) {
  if (interrupt_flag) {
    setsignal(sig, SIG_DFL);
    raise(sig);                       /* delivered when this handler returns */
    return;
  }
  interrupt_flag = 1;
  lua_sethook(running_L, stop_hook, LUA_MASKCOUNT, 1);
}

static void on_prompt_interrupt(int sig) {
  (void)sig;
  prompt_interrupted = 1;
}

/* Call the function below 'narg' arguments with the message handler and Ctrl-C armed. An
** interrupt that an op consumed leaves the hook set (no Lua instruction ran since): clear it
** and the flag, so the next chunk starts clean. */
static int docall(lua_State *L, int narg, int nres) {
  int base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  running_L = L;
  interrupt_flag = 0;
  setsignal(SIGINT, on_interrupt);
  int status = lua_pcall(L, narg, nres, base);
  setsignal(SIGINT, idle_handler);
  if (lua_gethook(L) == stop_hook) lua_sethook(L, NULL, 0, 0);
  interrupt_flag = 0;
  lua_remove(L, base);
  return status;
}

/* ================================================================ chunks and options */

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbufferx(L, s, strlen(s), name, "t"));
}

/* '-l g=mod' or '-l mod': g = require(mod). */
static int dolibrary(lua_State *L, const char *spec) {
  const char *eq = strchr(spec, '=');
  const char *mod = eq ? eq + 1 : spec;
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  int status = docall(L, 1, 1);
  if (status == LUA_OK) {
    if (eq) lua_pushlstring(L, spec, (size_t)(eq - spec));
    else lua_pushstring(L, spec);
    lua_insert(L, -2);
    lua_setglobal(L, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
  return report(L, status);
}

/* The global 'arg' as 'lua' makes it: arg[0] is the script (or the interpreter when there is
** none, 'script' 0), its arguments at 1.., the interpreter and options at negative indices. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  lua_createtable(L, argc - (script + 1), script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* Push arg[1..#arg]; returns how many. */
static int pushargs(lua_State *L) {
  if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
  int n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -n - 1);
  return n;
}

/* Run the script 'argv[0]' ("-" not after "--": stdin) with '...' = arg[1..]. */
static int handle_script(lua_State *L, char **argv) {
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL;
  int status = luaL_loadfilex(L, fname, "bt");
  if (status == LUA_OK) {
    int n = pushargs(L);
    status = docall(L, n, LUA_MULTRET);
  }
  return report(L, status);
}

/* What the command line asks for. */
typedef struct options {
  int script;     /* argv index of the script; 0: none */
  int optend;     /* argv[1 .. optend-1] are options */
  int bad;        /* argv index of a bad option; 0: none */
  bool e, i, v, E, help;
} options;

/* Option 'arg' at argv[*i]: record it in 'o'; false when it is bad. An '-e'/'-l' argument
** is attached ("-eprint(1)") or the next word (as in 'lua', not one starting with '-'). */
static bool collectoption(char **argv, int *i, options *o) {
  const char *a = argv[*i];
  bool alone = a[2] == '\0';
  switch (a[1]) {
    case 'i': o->i = true; return alone;
    case 'v': o->v = true; return alone;
    case 'E': o->E = true; return alone;
    case 'W': return alone;                      /* acted on in order by 'runargs' */
    case 'h': o->help = true; return alone;
    case 'e': case 'l':
      o->e = o->e || a[1] == 'e';
      if (alone) {
        (*i)++;
        return argv[*i] != NULL && argv[*i][0] != '-';
      }
      return true;
    default: return false;
  }
}

/* Scan argv as 'lua' does: options up to the first non-option (the script), "-" (the script
** is stdin) or "--" (the script, if any, comes next). */
static options collectargs(int argc, char **argv) {
  options o = { 0, argc, 0, false, false, false, false, false };
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || a[1] == '\0') { o.script = o.optend = i; return o; }
    if (strcmp(a, "--help") == 0) { o.help = true; continue; }
    if (a[1] == '-') {
      if (a[2] != '\0') { o.bad = i; return o; }
      o.optend = i;
      o.script = i + 1 < argc ? i + 1 : 0;
      return o;
    }
    int at = i;
    if (!collectoption(argv, &i, &o)) { o.bad = at; return o; }
  }
  return o;
}

/* Run the '-e', '-l' and '-W' options in order; false when one fails. */
static bool runargs(lua_State *L, char **argv, int optend) {
  for (int i = 1; i < optend; i++) {
    int option = argv[i][1];
    if (option == 'W') lua_warning(L, "@on", 0);
    if (option != 'e' && option != 'l') continue;
    const char *extra = argv[i][2] ? argv[i] + 2 : argv[++i];
    int status = option == 'e' ? dostring(L, extra, "=(command line)") : dolibrary(L, extra);
    if (status != LUA_OK) return false;
  }
  return true;
}

/* LUA_INIT_5_4, else LUA_INIT, as 'lua': "@file" runs the file, anything else is code. */
static int handle_luainit(lua_State *L) {
  const char *name = "=LUA_INIT_5_4", *init = getenv(name + 1);
  if (init == NULL) init = getenv((name = "=LUA_INIT") + 1);
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dochunk(L, luaL_loadfilex(L, init + 1, "bt"));
  return dostring(L, init, name);
}

/* ================================================================ -v: versions and kernels */

/* Field 'k' of the table at absolute index 't' through 'tostring' ("?" when absent); the
** string stays on the stack (anchored) until the caller clears it. */
static const char *field(lua_State *L, int t, const char *k) {
  if (lua_getfield(L, t, k) == LUA_TNIL) {
    lua_pop(L, 1);
    return "?";
  }
  const char *s = luaL_tolstring(L, -1, NULL);
  lua_remove(L, -2);
  return s;
}

/* A warning when OpenBLAS runs older kernels than this CPU supports, and what to do. Never
** changes OPENBLAS_CORETYPE: an explicit setting is respected. */
static void kernel_warning(FILE *f, const char *core, const char *best, const char *env) {
  int rc = mg_blas_kernel_rank(core), rb = mg_blas_kernel_rank(best);
  if (rc < 0 || rb < 0 || rc >= rb) return;
  const char *gain = rc == 2 && rb == 3 ? "about 2x faster for matmul" : "faster for matmul";
  fprintf(f, "warning: OpenBLAS uses its %s kernels", core);
  if (env)
    fprintf(f, " (OPENBLAS_CORETYPE=%s is set in the environment) but this CPU supports %s "
               "kernels, %s; unset OPENBLAS_CORETYPE to use them\n", env, best, gain);
  else
    fprintf(f, " but this CPU supports %s kernels, %s; OPENBLAS_CORETYPE=%s selects them if "
               "this OpenBLAS has them\n", best, gain, best);
}

/* What '-v' and the banner report: the module's _VERSION and blas() fields ("?" when
** missing), as strings anchored on the stack (the caller restores its top). The module is
** package.loaded.moongrad, whatever a script made of the global 'mg'. */
typedef struct blasinfo {
  const char *version, *core, *best, *threads, *env, *detected, *lyap;
} blasinfo;

static blasinfo getblasinfo(lua_State *L) {
  blasinfo b = { "?", "?", "?", "?", getenv("OPENBLAS_CORETYPE"), NULL, "?" };
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "moongrad") != LUA_TTABLE) return b;
  int mg = lua_gettop(L);
  b.version = field(L, mg, "_VERSION");
  if (lua_getfield(L, mg, "blas") != LUA_TFUNCTION) return b;
  lua_call(L, 0, 1);
  if (!lua_istable(L, -1)) return b;
  int t = lua_gettop(L);
  b.core = field(L, t, "core");
  b.best = field(L, t, "best");
  b.threads = field(L, t, "threads");
  b.lyap = field(L, t, "lyapunov");
  if (lua_getfield(L, t, "detected") == LUA_TSTRING) b.detected = lua_tostring(L, -1);
  else lua_pop(L, 1);
  return b;
}

/* '-v': versions, the kernels OpenBLAS uses and the best this CPU supports, threads. */
static void print_version(lua_State *L) {
  int top = lua_gettop(L);
  blasinfo b = getblasinfo(L);
  printf("moongrad %s (%s)\n", b.version, LUA_RELEASE);
  printf("OpenBLAS kernels in use: %s\n", b.core);
  if (b.detected)
    printf("  (chosen by moongrad: OpenBLAS picked its %s kernels, not knowing this CPU)\n",
           b.detected);
  printf("best kernels for this CPU: %s\n", b.best);
  printf("OPENBLAS_CORETYPE: %s\n", b.env ? b.env : "(not set)");
  printf("BLAS threads: %s\n", b.threads);
  printf("Lyapunov kernels: %s\n", b.lyap);
  kernel_warning(stdout, b.core, b.best, b.env);
  fflush(stdout);
  lua_settop(L, top);
}

/* The REPL's first lines in a terminal: versions, and the kernel warning if any. */
static void print_banner(lua_State *L) {
  int top = lua_gettop(L);
  blasinfo b = getblasinfo(L);
  printf("moongrad %s (%s, OpenBLAS %s kernels); the module is 'mg'; Ctrl-D exits\n",
         b.version, LUA_RELEASE, b.core);
  kernel_warning(stdout, b.core, b.best, b.env);
  lua_settop(L, top);
}

/* ================================================================ REPL */

#define NO_INPUT (-1)    /* 'loadline': end of input */
#define DISCARDED (-2)   /* 'loadline': Ctrl-C dropped the chunk being typed */

/* How the REPL reads: readline in a terminal, bare lines from a pipe or a file. */
typedef struct reader {
  bool tty;
  char *history;   /* history file (owned), NULL: none */
} reader;

/* readline's key source: after Ctrl-C at the prompt ('on_prompt_interrupt' interrupts the
** read), empty the line and accept it, so 'readline' returns and the chunk is dropped. A key
** read with the Ctrl-C already pending came after it: keep it for the next line. */
static int read_key(FILE *f) {
  for (;;) {
    if (prompt_interrupted) {
      rl_echo_signal_char(SIGINT);
      rl_replace_line("", 0);
      return '\n';
    }
    unsigned char c;
    ssize_t n = read(fileno(f), &c, 1);
    if (n == 1 && !prompt_interrupted) return c;
    if (n == 1) rl_stuff_char(c);     /* typed after the Ctrl-C: it starts the next line */
    else if (n == 0 || errno != EINTR) return EOF;
  }
}

/* ---------------------------------------------------------------- Tab completion */

#define COMPLETION_DEPTH 8   /* '__index' tables followed, at most */
static lua_State *completion_L = NULL;   /* the REPL's state, for readline's callback */

/* Replace the value on top by its metatable's '__index' (nil when none). A C function there
** (the tensors' selects on numbers and looks other keys up in its method table) stands for
** the first table among its upvalues: no code runs (only a submodule's loader may, below). */
static void toindex(lua_State *L) {
  if (!lua_getmetatable(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return;
  }
  lua_getfield(L, -1, "__index");
  lua_replace(L, -3);
  lua_pop(L, 1);
  if (!lua_iscfunction(L, -1)) return;
  for (int n = 1; lua_getupvalue(L, -1, n) != NULL; n++) {
    if (lua_istable(L, -1)) {
      lua_remove(L, -2);
      return;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushnil(L);
}

/* Push the name under which the table at 'i' is in package.loaded, or nil. */
static void loaded_name(lua_State *L, int i) {
  i = lua_absindex(L, i);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, i)) {
      lua_pop(L, 1);
      lua_remove(L, -2);
      return;
    }
  }
  lua_pop(L, 1);
  lua_pushnil(L);
}

/* Lua function (t, k): t[k], through its metamethods. */
static int index_call(lua_State *L) {
  lua_settop(L, 2);
  lua_gettable(L, 1);
  return 1;
}

/* Push t.k for the module 't' at 'i' when "<its name>.<k>" is a module 'require' knows (in
** package.preload or package.loaded): such a submodule may be loaded on first use by the
** module's '__index' (mg.nn), so ask it; the one case where completion runs code. Else nil. */
static void submodule(lua_State *L, int i, const char *k) {
  i = lua_absindex(L, i);
  loaded_name(L, i);
  if (lua_isnil(L, -1)) return;
  const char *full = lua_pushfstring(L, "%s.%s", lua_tostring(L, -1), k);
  bool known = false;
  const char *const where[] = { LUA_PRELOAD_TABLE, LUA_LOADED_TABLE };
  for (int w = 0; w < 2 && !known; w++) {
    int top = lua_gettop(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, where[w]) == LUA_TTABLE)
      known = lua_getfield(L, -1, full) != LUA_TNIL;
    lua_settop(L, top);
  }
  lua_pop(L, 2);                                /* the names */
  if (!known) { lua_pushnil(L); return; }
  lua_pushcfunction(L, index_call);
  lua_pushvalue(L, i);
  lua_pushstring(L, k);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {        /* a loader that fails: no completion */
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

/* Push the field 'k' of the value at 'i', reading tables raw and following '__index' only
** through tables (so no code runs), or a submodule (above); nil when there is none. */
static void rawlookup(lua_State *L, int i, const char *k) {
  lua_pushvalue(L, i);
  for (int d = 0; d < COMPLETION_DEPTH && !lua_isnil(L, -1); d++) {
    if (lua_istable(L, -1)) {
      lua_pushstring(L, k);
      if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_remove(L, -2);
        return;
      }
      lua_pop(L, 1);
    }
    toindex(L);
  }
  lua_pop(L, 1);
  if (lua_istable(L, i)) submodule(L, i, k);
  else lua_pushnil(L);
}

/* Add to the set at 'subs' the submodule names (the part after "<name>.", without dots)
** that start with 'prefix' of the modules in the registry table 'where'. */
static void submodule_names(lua_State *L, const char *where, const char *name,
                            const char *prefix, int subs) {
  size_t nlen = strlen(name), plen = strlen(prefix);
  lua_getfield(L, LUA_REGISTRYINDEX, where);
  if (!lua_istable(L, -1)) { lua_pop(L, 1); return; }
  for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
    const char *m = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (m == NULL || strncmp(m, name, nlen) != 0 || m[nlen] != '.') continue;
    m += nlen + 1;
    if (strchr(m, '.') == NULL && strncmp(m, prefix, plen) == 0) {
      lua_pushboolean(L, 1);
      lua_setfield(L, subs, m);
    }
  }
  lua_pop(L, 1);
}

/* Add to 'out' "<path><k>" for the submodules k of the table at 'i' that start with
** 'prefix' and are not among its fields yet (not loaded, or required on their own). */
static void addsubmodules(lua_State *L, int i, const char *path, size_t pathlen,
                          const char *prefix, int out) {
  loaded_name(L, i);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return; }
  lua_newtable(L);
  int subs = lua_gettop(L);
  submodule_names(L, LUA_PRELOAD_TABLE, lua_tostring(L, -2), prefix, subs);
  submodule_names(L, LUA_LOADED_TABLE, lua_tostring(L, -2), prefix, subs);
  for (lua_pushnil(L); lua_next(L, subs); lua_pop(L, 1)) {
    const char *k = lua_tostring(L, -2);
    lua_pushvalue(L, -2);
    bool field = lua_rawget(L, i) != LUA_TNIL;  /* listed by 'addkeys' already */
    lua_pop(L, 1);
    if (field) continue;
    submodule(L, i, k);
    bool found = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!found) continue;
    lua_pushlstring(L, path, pathlen);
    lua_pushstring(L, k);
    lua_concat(L, 2);
    lua_rawseti(L, out, (lua_Integer)luaL_len(L, out) + 1);
  }
  lua_pop(L, 2);
}

/* Add to the table at 'out' "<path><key>" for every string key of the value at 'i' (and
** of its '__index' tables) that starts with 'prefix'. */
static void addkeys(lua_State *L, int i, const char *path, size_t pathlen, const char *prefix,
                    int out) {
  size_t plen = strlen(prefix);
  lua_pushvalue(L, i);
  for (int d = 0; d < COMPLETION_DEPTH && !lua_isnil(L, -1); d++) {
    if (lua_istable(L, -1)) {
      for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (k == NULL || strncmp(k, prefix, plen) != 0) continue;
        lua_pushlstring(L, path, pathlen);
        lua_pushstring(L, k);
        lua_concat(L, 2);
        lua_rawseti(L, out, (lua_Integer)luaL_len(L, out) + 1);
      }
    }
    toindex(L);
  }
  lua_pop(L, 1);
}

/* Lua function (text): a table of the completions of "a.b.c" or "a.b:c" among the globals
** and the fields and methods along the path. */
static int completions(lua_State *L) {
  const char *text = luaL_checkstring(L, 1);
  lua_newtable(L);
  int out = lua_gettop(L);
  lua_pushglobaltable(L);
  const char *seg = text, *sep;
  while ((sep = strpbrk(seg, ".:")) != NULL) {
    lua_pushlstring(L, seg, (size_t)(sep - seg));
    rawlookup(L, -2, lua_tostring(L, -1));
    lua_replace(L, -3);
    lua_pop(L, 1);
    seg = sep + 1;
  }
  addkeys(L, lua_gettop(L), text, (size_t)(seg - text), seg, out);
  if (lua_istable(L, -1) && seg > text && seg[-1] == '.')
    addsubmodules(L, lua_gettop(L), text, (size_t)(seg - text), seg, out);
  lua_settop(L, out);
  return 1;
}

/* The array readline wants from the completion table on top: [0] the longest common prefix,
** then the matches, NULL-terminated; NULL when there are none. New, freed by readline. */
static char **tomatches(lua_State *L) {
  size_t n = (size_t)luaL_len(L, -1);
  char **m = n ? calloc(n + 2, sizeof *m) : NULL;
  if (m == NULL) return NULL;
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i);
    m[i] = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  size_t common = m[1] ? strlen(m[1]) : 0;
  for (size_t i = 2; i <= n && m[i]; i++)
    for (size_t j = 0; j < common; j++)
      if (m[i][j] != m[1][j]) { common = j; break; }
  m[0] = m[1] ? strndup(m[1], common) : NULL;
  return m;
}

/* readline's completion: Lua names, never file names. */
static char **complete(const char *text, int start, int end) {
  (void)start; (void)end;
  rl_attempted_completion_over = 1;
  rl_completion_append_character = '\0';
  lua_State *L = completion_L;
  int top = lua_gettop(L);
  char **m = NULL;
  lua_pushcfunction(L, completions);
  lua_pushstring(L, text);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) m = tomatches(L);
  lua_settop(L, top);
  return m;
}

/* The history file: $MOONGRAD_HISTORY (empty: none), else ~/.moongrad_history. New string. */
static char *history_path(void) {
  const char *env = getenv("MOONGRAD_HISTORY"), *home = getenv("HOME");
  if (env) return env[0] ? strdup(env) : NULL;
  if (home == NULL || home[0] == '\0') return NULL;
  size_t n = strlen(home) + sizeof "/" HISTORY_NAME;
  char *path = malloc(n);
  if (path) snprintf(path, n, "%s/%s", home, HISTORY_NAME);
  return path;
}

/* ---------------------------------------------------------------- history file */

/* The file holds one entry per chunk, a multi-line chunk whole: readline's timestamp lines
** ("#<seconds>") mark where each entry starts. A file without them (written by an older
** moongrad) is read one entry a line and rewritten in this form. */
static char *history_file = NULL;   /* for 'trim_history' at exit; owned by the reader */

static bool starts_stamped(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return false;
  int c0 = fgetc(f), c1 = fgetc(f);
  fclose(f);
  return c0 == '#' && isdigit(c1);
}

/* Read 'path' into the (stifled) history: its newest HISTORY_MAX entries. False when the
** file exists but cannot be read (then it must not be written over). */
static bool load_history(const char *path) {
  bool stamped = starts_stamped(path);
  history_multiline_entries = stamped;
  int st = read_history(path);
  history_multiline_entries = 1;
  if (st != 0) return st == ENOENT;
  if (stamped || history_length == 0) return true;
  HIST_ENTRY **list = history_list();
  for (int i = 0; list && list[i]; i++) {    /* the old form: give each line its mark */
    free(list[i]->timestamp);
    list[i]->timestamp = strdup("#0");
  }
  write_history(path);
  return true;
}

/* Cut the file to its newest HISTORY_MAX entries (readline writes a temporary file and
** renames it). At every exit: the normal end, os.exit (through atexit), and, for a session
** killed by a signal, the next start. Entries other sessions appended meanwhile are kept. */
static void trim_history(void) {
  if (history_file == NULL) return;
  clear_history();
  if (load_history(history_file)) write_history(history_file);
}

/* Set up reading: in a terminal, readline with the history file and Ctrl-C at the prompt. */
static void open_reader(reader *r, lua_State *L) {
  completion_L = L;
  r->tty = isatty(STDIN_FILENO);
  r->history = NULL;
  if (!r->tty) return;
  rl_readline_name = "moongrad";      /* for '$if moongrad' in ~/.inputrc */
  rl_catch_signals = 0;               /* Ctrl-C is ours: 'read_key' */
  rl_getc_function = read_key;
  rl_attempted_completion_function = complete;
  rl_basic_word_break_characters = " \t\n\"\\'><=;+-*/%^~#&|{}()[],";
  using_history();
  stifle_history(HISTORY_MAX);
  history_comment_char = '#';         /* timestamps mark where multi-line entries start */
  history_write_timestamps = 1;
  r->history = history_file = history_path();
  if (r->history) {
    trim_history();
    static bool registered = false;
    if (!registered) registered = atexit(trim_history) == 0;
  }
  idle_handler = on_prompt_interrupt;
  setsignal(SIGINT, idle_handler);
}

static void close_reader(reader *r) {
  if (r->tty) {
    idle_handler = SIG_DFL;
    setsignal(SIGINT, SIG_DFL);
    trim_history();
  }
  history_file = NULL;
  free(r->history);
  r->history = NULL;
}

/* Keep a chunk read (all its lines) as one history entry (not blanks, not a repeat of the
** last) and append it to the file at once, so a crash loses nothing; an unwritable file is
** skipped silently. */
static void save_chunk(reader *r, const char *line) {
  if (!r->tty || line[strspn(line, " \t")] == '\0') return;
  HIST_ENTRY *last = history_get(history_base + history_length - 1);
  if (last && strcmp(last->line, line) == 0) return;
  add_history(line);
  if (r->history && append_history(1, r->history) != 0)
    write_history(r->history);        /* no file yet: create it */
}

/* Read a line (after 'PROMPT', or 'PROMPT2' when it continues a chunk) and push it without
** its newline. Returns 1, 0 at end of input, DISCARDED after Ctrl-C (nothing pushed). */
static int pushline(lua_State *L, reader *r, bool first) {
  char *line = NULL;
  if (r->tty) {
    line = readline(first ? PROMPT : PROMPT2);
  } else {
    size_t cap = 0;
    if (getline(&line, &cap, stdin) < 0) { free(line); line = NULL; }
  }
  if (prompt_interrupted) {
    prompt_interrupted = 0;
    free(line);
    return DISCARDED;
  }
  if (line == NULL) return 0;
  size_t n = strlen(line);
  if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
  lua_pushlstring(L, line, n);
  free(line);
  return 1;
}

/* Whether 'status' with the message on top is a syntax error at the end of the chunk, that
** more lines may complete. */
static bool incomplete(lua_State *L, int status) {
  if (status != LUA_ERRSYNTAX) return false;
  size_t n, m = sizeof EOFMARK - 1;
  const char *msg = lua_tolstring(L, -1, &n);
  return n >= m && strcmp(msg + n - m, EOFMARK) == 0;
}

/* Compile the chunk on top as an expression returning its values, so that they print: on
** success the function is pushed above it, otherwise nothing changes. Not 'return <chunk>' (as
** 'lua' does): a call there is a tail call, whose error would have no line of the user's to
** point at; the values pass through an identity function instead. */
static bool addreturn(lua_State *L) {
  const char *ret = lua_pushfstring(L, "return (function(...) return ... end)(%s\n)",
                                    lua_tostring(L, -1));
  if (luaL_loadbufferx(L, ret, strlen(ret), "=stdin", "t") == LUA_OK) {
    lua_remove(L, -2);
    return true;
  }
  lua_pop(L, 2);
  return false;
}

/* Compile the chunk alone on the stack, first as an expression, then as statements; while
** it only ends too early, append continuation lines. Leaves the function or the error
** message, the chunk kept in the history; returns the load status, or DISCARDED (stack
** empty) after Ctrl-C. */
static int loadchunk(lua_State *L, reader *r) {
  for (;;) {
    size_t len;
    const char *chunk = lua_tolstring(L, 1, &len);
    int status = addreturn(L) ? LUA_OK : luaL_loadbufferx(L, chunk, len, "=stdin", "t");
    if (!incomplete(L, status)) {
      save_chunk(r, lua_tostring(L, 1));
      lua_remove(L, 1);
      return status;
    }
    int got = pushline(L, r, false);
    if (got == DISCARDED) { lua_settop(L, 0); return DISCARDED; }
    if (got == 0) {                                        /* input ended mid-chunk */
      save_chunk(r, lua_tostring(L, 1));
      lua_remove(L, 1);
      return status;
    }
    lua_remove(L, 2);                  /* the '<eof>' error */
    lua_pushliteral(L, "\n");
    lua_insert(L, 2);
    lua_concat(L, 3);
  }
}

/* 'local' on a chunk's first line: the variable dies with the chunk; say so. */
static void checklocal(const char *line) {
  line += strspn(line, " \t");
  if (strncmp(line, "local", 5) == 0 && (line[5] == ' ' || line[5] == '\t'))
    message(NULL, "warning: a local lives only in its own chunk at the REPL; "
                  "drop 'local' to keep the variable");
}

/* Read one chunk: the function on the stack and LUA_OK, or an error status with the message;
** NO_INPUT at end of input, DISCARDED after Ctrl-C. */
static int loadline(lua_State *L, reader *r) {
  lua_settop(L, 0);
  int got = pushline(L, r, true);
  if (got != 1) return got == 0 ? NO_INPUT : DISCARDED;
  checklocal(lua_tostring(L, 1));
  return loadchunk(L, r);
}

/* ---------------------------------------------------------------- showing values */

#define SHOW_DEPTH 3       /* tables nested deeper show as {...} */
#define SHOW_ITEMS 30      /* entries shown per table, then "... (n more)" */
#define SHOW_WIDTH 76      /* a table shown on one line fits this; wider: one entry a line */
#define SHOW_SORTED 200    /* tables with more non-array keys show them in 'next' order */
#define SHOW_TENSOR 60     /* a tensor in a table: its 'tostring' if one line this short */

static void show(lua_State *L, int i, int depth, int seen);

/* Whether the value at 'i' prints through its own '__tostring' or '__name' (tensors, files,
** objects with a metatable that says how). */
static bool has_own_tostring(lua_State *L, int i) {
  int t = luaL_getmetafield(L, i, "__tostring");
  if (t == LUA_TNIL) t = luaL_getmetafield(L, i, "__name");
  if (t != LUA_TNIL) lua_pop(L, 1);
  return t != LUA_TNIL;
}

/* Push a one-line form of the tensor at 'i': its 'tostring' when short and on one line, else
** "tensor(shape=(2,3), dtype=float32)". */
/* Whether the value at 'i' is a tensor: a userdata whose metatable is named TENSOR_MT (a
** small result of an unrecorded op has a copy of that metatable without __gc, so the
** registry's own metatable cannot be the test). */
static bool is_tensor(lua_State *L, int i) {
  if (lua_type(L, i) != LUA_TUSERDATA || luaL_getmetafield(L, i, "__name") == LUA_TNIL) return false;
  bool yes = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), TENSOR_MT) == 0;
  lua_pop(L, 1);
  return yes;
}

static void show_tensor(lua_State *L, int i) {
  size_t n;
  const char *s = luaL_tolstring(L, i, &n);
  if (n <= SHOW_TENSOR && memchr(s, '\n', n) == NULL) return;
  lua_pop(L, 1);
  mg_tensor *t = mg_lua_checktensor(L, i);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "tensor(shape=(");
  for (int d = 0; d < mg_tensor_ndim(t); d++) {
    lua_pushfstring(L, d ? ",%I" : "%I", (lua_Integer)mg_tensor_shape(t)[d]);
    luaL_addvalue(&b);
  }
  lua_pushfstring(L, "), dtype=%s)", mg_dtype_name(mg_tensor_dtype(t)));
  luaL_addvalue(&b);
  luaL_pushresult(&b);
}

/* Push the key at 'i' as it is written in a constructor: 'name = ' or '[key] = '. */
static void show_key(lua_State *L, int i, int depth, int seen) {
  size_t n;
  const char *k = lua_type(L, i) == LUA_TSTRING ? lua_tolstring(L, i, &n) : NULL;
  bool name = k != NULL && n > 0 && (isalpha((unsigned char)k[0]) || k[0] == '_');
  for (size_t j = 1; name && j < n; j++) name = isalnum((unsigned char)k[j]) || k[j] == '_';
  if (name) {
    lua_pushfstring(L, "%s = ", k);
    return;
  }
  if (k != NULL) show(L, i, depth, seen);       /* a quoted string */
  else luaL_tolstring(L, i, NULL);               /* numbers, booleans; tables by address */
  lua_pushfstring(L, "[%s] = ", lua_tostring(L, -1));
  lua_remove(L, -2);
}

/* Order of two keys for display: numbers, then strings, then the rest; each by value (the
** rest by address). */
static bool key_before(lua_State *L, int a, int b) {
  static const int rank[LUA_NUMTYPES] = { [LUA_TNUMBER] = 0, [LUA_TSTRING] = 1,
    [LUA_TBOOLEAN] = 2, [LUA_TTABLE] = 3, [LUA_TFUNCTION] = 3, [LUA_TUSERDATA] = 3,
    [LUA_TLIGHTUSERDATA] = 3, [LUA_TTHREAD] = 3 };
  int ta = lua_type(L, a), tb = lua_type(L, b);
  if (rank[ta] != rank[tb]) return rank[ta] < rank[tb];
  if (ta == LUA_TNUMBER || ta == LUA_TSTRING) return lua_compare(L, a, b, LUA_OPLT);
  if (ta == LUA_TBOOLEAN) return !lua_toboolean(L, a) && lua_toboolean(L, b);
  return (uintptr_t)lua_topointer(L, a) < (uintptr_t)lua_topointer(L, b);
}

/* The keys of table 't' outside its array part 1..'n' in a new table (an array), sorted
** when there are at most SHOW_SORTED of them (insertion sort: no code runs). */
static int other_keys(lua_State *L, int t, lua_Integer n) {
  lua_newtable(L);
  int keys = lua_gettop(L);
  lua_Integer m = 0;
  for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1)) {
    if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1 && lua_tointeger(L, -2) <= n)
      continue;
    lua_pushvalue(L, -2);
    lua_rawseti(L, keys, ++m);
  }
  for (lua_Integer i = 2; m <= SHOW_SORTED && i <= m; i++) {
    lua_rawgeti(L, keys, i);
    lua_Integer j = i - 1;
    for (; j >= 1; j--) {
      lua_rawgeti(L, keys, j);
      if (!key_before(L, -2, -1)) { lua_pop(L, 1); break; }
      lua_rawseti(L, keys, j + 1);
    }
    lua_rawseti(L, keys, j + 1);
  }
  return keys;
}

/* Push the shown entries of the table at 't' (its array part 1..'n', then the keys in the
** array 'keys'), at most SHOW_ITEMS and then "... (k more)"; returns their total width, and
** in '*tall' whether one spans lines or is a tensor. */
static size_t push_entries(lua_State *L, int t, lua_Integer n, int keys, int depth, int seen,
                           bool *tall) {
  lua_Integer total = n + (lua_Integer)lua_rawlen(L, keys), i = 1;
  size_t width = 2;
  for (; i <= total && i <= SHOW_ITEMS; i++) {
    int top = lua_gettop(L);
    if (i <= n) {
      lua_rawgeti(L, t, i);
    } else {
      lua_rawgeti(L, keys, i - n);
      show_key(L, top + 1, depth + 1, seen);
      lua_rawgeti(L, keys, i - n);
      lua_rawget(L, t);
    }
    *tall |= is_tensor(L, -1);
    show(L, lua_gettop(L), depth + 1, seen);
    lua_remove(L, -2);                          /* the value */
    if (i > n) { lua_remove(L, top + 1); lua_concat(L, 2); }   /* key text .. value text */
    size_t len;
    const char *e = lua_tolstring(L, -1, &len);
    *tall |= memchr(e, '\n', len) != NULL;
    width += len + 2;
  }
  if (i <= total) lua_pushfstring(L, "... (%I more)", (lua_Integer)(total - i + 1));
  return width;
}

/* Push the strings first..last (removed) joined as "{a, b}"; 'tall': one a line, 'wide': as
** many a line as fit; lines indented for 'depth'. */
static void join_entries(lua_State *L, int first, int depth, bool tall, bool wide) {
  int last = lua_gettop(L);
  size_t indent = 2 * (size_t)depth + 2, col = SHOW_WIDTH;
  luaL_Buffer b;
  luaL_buffinit(L, &b);                         /* entries stay below the buffer */
  luaL_addchar(&b, '{');
  for (int e = first; e <= last; e++) {
    size_t len;
    const char *str = lua_tolstring(L, e, &len);  /* nested tall tables come indented */
    if (tall || (wide && col + len + 1 > SHOW_WIDTH)) {   /* a new line */
      luaL_addchar(&b, '\n');
      for (size_t d = 0; d < indent; d++) luaL_addchar(&b, ' ');
      col = indent;
    } else if (e > first) {
      luaL_addchar(&b, ' ');
      col++;
    }
    luaL_addlstring(&b, str, len);
    col += len + 1;
    if (e < last) luaL_addchar(&b, ',');
  }
  if ((tall || wide) && last >= first) {
    luaL_addchar(&b, '\n');
    for (size_t d = 0; d + 2 < indent; d++) luaL_addchar(&b, ' ');
  }
  luaL_addchar(&b, '}');
  luaL_pushresult(&b);
  if (last >= first) {                          /* the result replaces the entries */
    lua_replace(L, first);
    lua_settop(L, first);
  }
}

/* Push the table at 't' shown as a constructor: "{a, b, k = v}"; when an entry spans lines
** or is a tensor, one entry a line; when only too wide, as many a line as fit. */
static void show_table(lua_State *L, int t, int depth, int seen) {
  lua_Integer n = 0;
  while (lua_rawgeti(L, t, n + 1) != LUA_TNIL) { lua_pop(L, 1); n++; }
  lua_pop(L, 1);
  int keys = other_keys(L, t, n);
  bool tall = false;
  size_t width = push_entries(L, t, n, keys, depth, seen, &tall);
  join_entries(L, keys + 1, depth, tall, width > (size_t)SHOW_WIDTH - 2 * (size_t)depth);
  lua_remove(L, keys);
}

static bool is_empty(lua_State *L, int t) {
  lua_pushnil(L);
  if (!lua_next(L, t)) return true;
  lua_pop(L, 2);
  return false;
}

/* Push the string at 'i' quoted, escaped so that it reads back as itself. */
static void show_string(lua_State *L, int i) {
  luaL_Buffer b;
  size_t n;
  const char *str = lua_tolstring(L, i, &n);
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '"');
  for (size_t j = 0; j < n; j++) {
    unsigned char c = (unsigned char)str[j];
    if (c == '"' || c == '\\') {
      luaL_addchar(&b, '\\');
      luaL_addchar(&b, (char)c);
    } else if (c == '\n') {
      luaL_addstring(&b, "\\n");
    } else if (c < 32 || c == 127) {            /* three digits: a digit may follow */
      char esc[8];
      snprintf(esc, sizeof esc, "\\%03d", c);
      luaL_addstring(&b, esc);
    } else {
      luaL_addchar(&b, (char)c);
    }
  }
  luaL_addchar(&b, '"');
  luaL_pushresult(&b);
}

/* Push the value at 'i' as the REPL shows it inside a table: strings quoted, tables as
** constructors (to SHOW_DEPTH; a table already being shown, a cycle, as <cycle>), tensors
** on one line, the rest through 'tostring'. 'seen' is the set of tables on the path. */
static void show(lua_State *L, int i, int depth, int seen) {
  luaL_checkstack(L, 2 * LUA_MINSTACK, "value too deep to show");
  const void *p = lua_topointer(L, i);
  if (lua_type(L, i) == LUA_TSTRING) {
    show_string(L, i);
  } else if (is_tensor(L, i)) {
    show_tensor(L, i);
  } else if (lua_type(L, i) != LUA_TTABLE || has_own_tostring(L, i)) {
    luaL_tolstring(L, i, NULL);
  } else if (lua_rawgetp(L, seen, p) != LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushliteral(L, "<cycle>");
  } else if (lua_pop(L, 1), depth >= SHOW_DEPTH) {
    lua_pushstring(L, is_empty(L, i) ? "{}" : "{...}");
  } else {
    lua_pushboolean(L, 1);
    lua_rawsetp(L, seen, p);
    show_table(L, i, depth, seen);
    lua_pushnil(L);
    lua_rawsetp(L, seen, p);
  }
}

/* Lua function: write its arguments tab-separated on one line of stdout, as 'print' would
** but tables as values ({2, 3}, {core = "Zen"}); strings as they are. */
static int print_values(lua_State *L) {
  int n = lua_gettop(L);
  lua_newtable(L);
  int seen = n + 1;
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char *s;
    if (lua_type(L, i) == LUA_TTABLE && !has_own_tostring(L, i)) {
      show(L, i, 0, seen);
      s = lua_tolstring(L, -1, &len);
    } else {
      s = luaL_tolstring(L, i, &len);
    }
    if (i > 1) fputc('\t', stdout);
    fwrite(s, 1, len, stdout);
    lua_pop(L, 1);
  }
  fputc('\n', stdout);
  return 0;
}

/* Print the values a chunk returned (the whole stack), in protected mode. */
static int print_results(lua_State *L) {
  int n = lua_gettop(L);
  if (n == 0) return LUA_OK;
  luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
  lua_pushcfunction(L, print_values);
  lua_insert(L, 1);
  return docall(L, n, 0);
}

/* Read, evaluate, print until end of input (Ctrl-D); an error is reported and the loop goes
** on. Returns how many chunks failed. */
static int doREPL(lua_State *L) {
  reader r;
  open_reader(&r, L);
  if (r.tty) print_banner(L);
  const char *saved = progname;
  progname = NULL;                    /* no program name on errors at the REPL */
  int status, failures = 0;
  while ((status = loadline(L, &r)) != NO_INPUT) {
    if (status == DISCARDED) continue;
    if (status == LUA_OK) status = docall(L, 0, LUA_MULTRET);
    if (status == LUA_OK) status = print_results(L);
    if (status != LUA_OK) {
      report(L, status);
      failures++;
    }
    fflush(stdout);
  }
  lua_settop(L, 0);
  if (r.tty) putchar('\n');
  close_reader(&r);
  progname = saved;
  return failures;
}

/* ================================================================ main */

/* The interpreter, in protected mode: stack (argc, argv) -> true when all went well. */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  options o = collectargs(argc, argv);
  if (o.bad) { bad_usage(argv[o.bad]); return 0; }
  if (o.help) { print_usage(stdout); lua_pushboolean(L, 1); return 1; }
  luaL_checkversion(L);
  if (o.E) {                          /* as 'lua -E': the package library reads no LUA_PATH */
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  luaL_openlibs(L);
  lua_warning(L, "@off", 0);          /* as 'lua': warnings off */
  luaL_requiref(L, "moongrad", luaopen_moongrad, 0);
  lua_setglobal(L, "mg");
  mg_ctx_set_interrupt_flag(mg_lua_context(L), &interrupt_flag);   /* Ctrl-C stops long ops */
  createargtable(L, argv, argc, o.script);
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (o.v) print_version(L);
  if (!o.E && handle_luainit(L) != LUA_OK) return 0;
  if (!runargs(L, argv, o.optend)) return 0;
  if (o.script > 0 && handle_script(L, argv + o.script) != LUA_OK) return 0;
  bool repl = o.i || (o.script == 0 && !o.e && !o.v);
  if (repl && doREPL(L) > 0 && !isatty(STDIN_FILENO)) return 0;   /* a piped session failed */
  lua_pushboolean(L, 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    message(progname, "cannot create state: not enough memory");
    return EXIT_FAILURE;
  }
  lua_gc(L, LUA_GCSTOP);              /* no collection while the state is built */
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 1, 0);
  int ok = lua_toboolean(L, -1);
  report(L, status);
  lua_close(L);
  return ok && status == LUA_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}
