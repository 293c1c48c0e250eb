/*
** lmain.c - the 'moongrad' executable: a stock Lua 5.4 interpreter (same options and 'arg'
** table as 'lua') with the moongrad module preloaded as the global 'mg'; a readline REPL that
** prints the value of each expression and keeps history; '-v' reports the OpenBLAS kernels.
*/
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
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

static const char *progname = "moongrad";  /* prefix of error messages; NULL in the REPL */

/* ================================================================ messages */

static void print_usage(FILE *f) {
  fprintf(f,
    "usage: %s [options] [script [args]]\n"
    "  -e code    run 'code' (may be repeated; runs before the script or the REPL)\n"
    "  -l mod     require 'mod' into the global 'mod' (-l g=mod: into the global 'g')\n"
    "  -i         enter the REPL after running 'script'\n"
    "  -v         show versions and the OpenBLAS kernels in use\n"
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

/* Message handler of every chunk: the error (through '__tostring' if it has one) with a
** traceback. Stack: error object -> message. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* ================================================================ Ctrl-C */

/* A signal handler reaches nothing but statics: the state running a chunk, the handler to
** restore between chunks (in a terminal REPL, the one that cancels the line being typed),
** and the flag it sets. */
static lua_State *running_L = NULL;
static void (*idle_handler)(int) = SIG_DFL;
static volatile sig_atomic_t prompt_interrupted = 0;

/* No SA_RESTART: a read interrupted by Ctrl-C returns EINTR (see 'read_key'). */
static void setsignal(int sig, void (*handler)(int)) {
  struct sigaction sa;
  sa.sa_handler = handler;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

/* Ctrl-C while a chunk runs: a Lua state cannot be touched from a signal handler, so set a
** hook that raises at the next instruction; a second Ctrl-C (say, stuck in C) kills. */
static void on_interrupt(int sig) {
  setsignal(sig, SIG_DFL);
  lua_sethook(running_L, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
}

static void on_prompt_interrupt(int sig) {
  (void)sig;
  prompt_interrupted = 1;
}

/* Call the function below 'narg' arguments with the message handler and Ctrl-C armed. */
static int docall(lua_State *L, int narg, int nres) {
  int base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  running_L = L;
  setsignal(SIGINT, on_interrupt);
  int status = lua_pcall(L, narg, nres, base);
  setsignal(SIGINT, idle_handler);
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
  bool e, i, v, help;
} options;

/* Option 'arg' at argv[*i]: record it in 'o'; false when it is bad. An '-e'/'-l' argument
** is attached ("-eprint(1)") or the next word (as in 'lua', not one starting with '-'). */
static bool collectoption(char **argv, int *i, options *o) {
  const char *a = argv[*i];
  bool alone = a[2] == '\0';
  switch (a[1]) {
    case 'i': o->i = true; return alone;
    case 'v': o->v = true; return alone;
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
  options o = { 0, argc, 0, false, false, false, false };
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

/* Run the '-e' and '-l' options in order; false when one fails. */
static bool runargs(lua_State *L, char **argv, int optend) {
  for (int i = 1; i < optend; i++) {
    int option = argv[i][1];
    if (option != 'e' && option != 'l') continue;
    const char *extra = argv[i][2] ? argv[i] + 2 : argv[++i];
    int status = option == 'e' ? dostring(L, extra, "=(command line)") : dolibrary(L, extra);
    if (status != LUA_OK) return false;
  }
  return true;
}

/* ================================================================ -v: versions and kernels */

/* OpenBLAS x86-64 kernel families by vector width (the wider, the faster the matmul); names
** not listed (other architectures) rank -1 and are never compared. */
static int kernel_rank(const char *name) {
  static const char *const avx512[] = { "SkylakeX", "Cooperlake", "SapphireRapids", NULL };
  static const char *const avx2[] = { "Haswell", "Zen", "Excavator", NULL };
  static const char *const avx[] = { "Sandybridge", "Bulldozer", "Piledriver", "Steamroller",
                                     NULL };
  static const char *const sse[] = { "generic", "Prescott", "Core2", "Penryn", "Dunnington",
                                     "Nehalem", "Atom", "Barcelona", "Opteron", "Nano", NULL };
  static const char *const *const ranks[] = { sse, avx, avx2, avx512 };
  for (int r = 3; r >= 0; r--)
    for (const char *const *n = ranks[r]; *n != NULL; n++)
      if (strcasecmp(name, *n) == 0) return r;
  return -1;
}

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
  int rc = kernel_rank(core), rb = kernel_rank(best);
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
  const char *version, *core, *best, *threads, *env;
} blasinfo;

static blasinfo getblasinfo(lua_State *L) {
  blasinfo b = { "?", "?", "?", "?", getenv("OPENBLAS_CORETYPE") };
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
  return b;
}

/* '-v': versions, the kernels OpenBLAS uses and the best this CPU supports, threads. */
static void print_version(lua_State *L) {
  int top = lua_gettop(L);
  blasinfo b = getblasinfo(L);
  printf("moongrad %s (%s)\n", b.version, LUA_RELEASE);
  printf("OpenBLAS kernels in use: %s\n", b.core);
  printf("best kernels for this CPU: %s\n", b.best);
  printf("OPENBLAS_CORETYPE: %s\n", b.env ? b.env : "(not set)");
  printf("BLAS threads: %s\n", b.threads);
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
** the first table among its upvalues: completion never runs code. */
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

/* Push the field 'k' of the value at 'i', reading tables raw and following '__index' only
** through tables (so no code runs); nil when there is none. */
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
  lua_pushnil(L);
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
  r->history = history_path();
  if (r->history) read_history(r->history);
  idle_handler = on_prompt_interrupt;
  setsignal(SIGINT, idle_handler);
}

static void close_reader(reader *r) {
  if (r->tty) {
    idle_handler = SIG_DFL;
    setsignal(SIGINT, SIG_DFL);
    if (r->history) history_truncate_file(r->history, HISTORY_MAX);
  }
  free(r->history);
  r->history = NULL;
}

/* Keep a typed line in the history (not blanks, not a repeat of the last) and append it to
** the file at once, so a crash loses nothing; an unwritable file is skipped silently. */
static void save_line(reader *r, const char *line) {
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
  save_line(r, line);
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

/* Compile the chunk on top as 'return <chunk>;' so that expressions print their values: on
** success it is replaced by the function, otherwise left alone. */
static bool addreturn(lua_State *L) {
  const char *ret = lua_pushfstring(L, "return %s;", lua_tostring(L, -1));
  if (luaL_loadbufferx(L, ret, strlen(ret), "=stdin", "t") == LUA_OK) {
    lua_replace(L, -3);
    lua_pop(L, 1);
    return true;
  }
  lua_pop(L, 2);
  return false;
}

/* Compile the chunk alone on the stack, first as an expression, then as statements; while
** it only ends too early, append continuation lines. Leaves the function or the error
** message; returns the load status, or DISCARDED (stack empty) after Ctrl-C. */
static int loadchunk(lua_State *L, reader *r) {
  for (;;) {
    if (addreturn(L)) return LUA_OK;
    size_t len;
    const char *chunk = lua_tolstring(L, 1, &len);
    int status = luaL_loadbufferx(L, chunk, len, "=stdin", "t");
    if (!incomplete(L, status)) {
      lua_remove(L, 1);
      return status;
    }
    int got = pushline(L, r, false);
    if (got == DISCARDED) { lua_settop(L, 0); return DISCARDED; }
    if (got == 0) { lua_remove(L, 1); return status; }   /* input ended mid-chunk */
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

/* Lua function: write its arguments through 'tostring' (tensors pretty-print), tab-separated,
** on one line of stdout. */
static int print_values(lua_State *L) {
  int n = lua_gettop(L);
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char *s = luaL_tolstring(L, i, &len);
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
  luaL_openlibs(L);
  lua_warning(L, "@off", 0);          /* as 'lua': warnings off */
  luaL_requiref(L, "moongrad", luaopen_moongrad, 0);
  lua_setglobal(L, "mg");
  createargtable(L, argv, argc, o.script);
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (o.v) print_version(L);
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
