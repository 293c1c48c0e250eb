-- The moongrad executable (docs/executable.md; bindings/lmain.c): -e, scripts and the
-- 'arg' table (compared with lua5.4's), exit status and messages, -v and its OpenBLAS
-- warning, -E, -W and LUA_INIT (compared with lua5.4), the piped REPL, Ctrl-C in a script,
-- and bad options. The REPL in a terminal: spec/repl_spec.lua.
local mg = require "moongrad"
local support = require "support"

local exe = support.EXE
local q, slurp = support.shq, support.read_file   -- quoted for sh; a file's bytes
local contains, lacks = support.contains, support.lacks
local tmpname = support.tmpnames(teardown)

-- Run '[env] moongrad <args>' with 'input' on stdin: stdout, stderr, exit status.
local function run(args, input, env)
  local inf, outf, errf = tmpname(input), tmpname(), tmpname()
  local cmd = ("%s %s %s <%s >%s 2>%s"):format(env or "", q(exe), args, inf, outf, errf)
  local _, _, code = os.execute(cmd)
  return slurp(outf), slurp(errf), code
end

describe("moongrad -e", function()
  it("runs the code with the module as the global 'mg', tensors printing through tostring",
     function()
    local out, err, code = run("-e " .. q "print(mg.ones(2, 2) * 3)")
    assert.are.equal(tostring(mg.ones(2, 2) * 3) .. "\n", out)
    assert.are.equal("", err)
    assert.are.equal(0, code)
  end)

  it("runs several -e in order, before the script", function()
    local script = tmpname("print('script sees', x)\n")
    local out, _, code = run("-e " .. q "x = 20" .. " -e " .. q "x = x + 22; print(x)" .. " " .. script)
    assert.are.equal("42\nscript sees\t42\n", out)
    assert.are.equal(0, code)
  end)

  it("makes 'require \"moongrad\"' return the same table as 'mg'", function()
    local out = run("-e " .. q "print(require('moongrad') == mg, mg._VERSION)")
    assert.are.equal("true\t" .. mg._VERSION .. "\n", out)
  end)

  it("requires a module into a global with -l, in order with -e", function()
    local out, _, code = run("-l g=moongrad -l string -e " .. q "print(g == mg, string.rep('ab', 2))")
    assert.are.equal("true\tabab\n", out)
    assert.are.equal(0, code)
  end)

  it("exits 1 with the message and a traceback on stderr when the code raises", function()
    local out, err, code = run("-e " .. q "print('before'); error('boom')")
    assert.are.equal("before\n", out)
    contains(err, "moongrad: (command line):1: boom", "stack traceback:")
    assert.are.equal(1, code)
  end)

  it("names the type of an error object that is not a string", function()
    local _, err, code = run("-e " .. q "error({})")
    contains(err, "(error object is a table value)")
    assert.are.equal(1, code)
  end)
end)

describe("moongrad script.lua", function()
  -- prints arg from its lowest index, then '...'
  local dump = tmpname([[
local lo = 0
while arg[lo - 1] ~= nil do lo = lo - 1 end
for i = lo, #arg do print(i, arg[i]) end
print("...", select("#", ...), ...)
]])

  it("sets arg[0], arg[1..] and '...'", function()
    local out, err, code = run(dump .. " one 'two words'")
    contains(out, "0\t" .. dump .. "\n", "1\tone\n", "2\ttwo words\n", "...\t2\tone\ttwo words\n")
    contains(out, "-1\t" .. exe .. "\n")
    assert.are.equal("", err)
    assert.are.equal(0, code)
  end)

  it("builds 'arg' exactly as lua5.4 does, interpreter options at negative indices", function()
    local args = "-e " .. q "x = 1" .. " -- " .. dump .. " a b"
    local ours = run(args)
    local f = assert(io.popen("lua5.4 " .. args))
    local theirs = f:read("a")
    f:close()
    -- the lowest index is the interpreter itself; the rest must match
    local function tail(s) return (s:gsub("^[^\n]*\n", "")) end
    contains(ours, "-4\t" .. exe .. "\n", "-3\t-e\n", "-2\tx = 1\n", "-1\t--\n")
    assert.are.equal(tail(theirs), tail(ours))
  end)

  it("exits 1 with 'moongrad: <file>:<line>: message' and a traceback when the script raises",
     function()
    local script = tmpname("print('started')\nlocal function inner() error('bad step') end\ninner()\n")
    local out, err, code = run(script)
    assert.are.equal("started\n", out)
    contains(err, "moongrad: " .. script .. ":2: bad step", "stack traceback:", "in local 'inner'")
    assert.are.equal(1, code)
  end)

  it("reports a script that cannot be read", function()
    local _, err, code = run("/nonexistent/script.lua")
    contains(err, "moongrad: cannot open /nonexistent/script.lua")
    assert.are.equal(1, code)
  end)

  it("reads the script from stdin for '-'", function()
    local out, _, code = run("- x y", "print('from stdin', ...)\n")
    assert.are.equal("from stdin\tx\ty\n", out)
    assert.are.equal(0, code)
  end)

  it("enters the REPL after the script with -i", function()
    local script = tmpname("y = 6\n")
    local out, _, code = run("-i " .. script, "y * 7\n")
    assert.are.equal("42\n", out)
    assert.are.equal(0, code)
  end)
end)

describe("moongrad -v", function()
  local blas = mg.blas()
  local avx512 = { SkylakeX = true, Cooperlake = true, SapphireRapids = true }
  local older = { SapphireRapids = "Haswell", Cooperlake = "Haswell", SkylakeX = "Haswell",
                  Haswell = "Sandybridge" }                       -- one family below

  it("prints the versions, the kernels in use and the best for this CPU, BLAS threads and the Lyapunov kernels' width",
     function()
    local out, err, code = run("-v")
    contains(out, "moongrad " .. mg._VERSION, "Lua 5.4",
             "OpenBLAS kernels in use: " .. blas.core .. "\n",
             "best kernels for this CPU: " .. blas.best .. "\n",
             "BLAS threads: " .. blas.threads .. "\n",
             "Lyapunov kernels: " .. blas.lyapunov .. "\n")
    assert.truthy(blas.lyapunov:match("^512%-bit") or blas.lyapunov:match("^256%-bit"), blas.lyapunov)
    out = run("-v", nil, "MG_LYAP_WIDTH=256")
    contains(out, "Lyapunov kernels: 256-bit")
    assert.are.equal("", err)
    assert.are.equal(0, code)
  end)

  it("warns when OPENBLAS_CORETYPE selects older kernels than this CPU supports", function()
    local old = older[blas.best]
    if not old then pending("no older kernel family to force below " .. blas.best) return end
    local out, _, code = run("-v", nil, "OPENBLAS_CORETYPE=" .. old)
    contains(out, "OpenBLAS kernels in use: " .. old .. "\n", "OPENBLAS_CORETYPE: " .. old .. "\n",
      ("warning: OpenBLAS uses its %s kernels (OPENBLAS_CORETYPE=%s is set in the environment) "
       .. "but this CPU supports %s kernels"):format(old, old, blas.best),
      "unset OPENBLAS_CORETYPE to use them")
    if old == "Haswell" then contains(out, "about 2x faster for matmul") end
    assert.are.equal(0, code)
  end)

  it("respects OPENBLAS_CORETYPE: the code run after -v still sees it", function()
    local out = run("-v -e " .. q "print('env=' .. tostring(os.getenv('OPENBLAS_CORETYPE')))",
                    nil, "OPENBLAS_CORETYPE=Haswell")
    contains(out, "OPENBLAS_CORETYPE: Haswell\n", "env=Haswell\n")
  end)

  it("runs the best kernel family this CPU supports when OPENBLAS_CORETYPE is not set, "
     .. "choosing again if OpenBLAS fell back, and leaves the variable unset", function()
    local family = { SkylakeX = 3, Cooperlake = 3, SapphireRapids = 3, Haswell = 2, Zen = 2,
                     Excavator = 2, Sandybridge = 1, Prescott = 0, generic = 0 }
    if not family[blas.best] or blas.best == "generic" then
      pending("no x86-64 kernel family to expect on this CPU (" .. blas.best .. ")") return
    end
    local out, err, code = run("-v -e " .. q "print('env=' .. tostring(os.getenv('OPENBLAS_CORETYPE')))",
                               nil, "env -u OPENBLAS_CORETYPE")
    local core = out:match("OpenBLAS kernels in use: (%S+)")
    assert.are.equal(family[blas.best], family[core], out)
    local detected = out:match("chosen by moongrad: OpenBLAS picked its (%S+) kernels")
    if detected then assert.is_true(family[detected] < family[core], out) end
    contains(out, "OPENBLAS_CORETYPE: (not set)\n", "env=nil\n")
    lacks(out, "warning")
    assert.are.equal("", err)
    assert.are.equal(0, code)
  end)

  it("does not warn when OpenBLAS picks its own kernels of the best family", function()
    local out, _, code = run("-v", nil, "env -u OPENBLAS_CORETYPE")
    contains(out, "OPENBLAS_CORETYPE: (not set)\n")
    local core = out:match("OpenBLAS kernels in use: (%S+)")
    if core == blas.best or (avx512[core] and avx512[blas.best]) then lacks(out, "warning") end
    assert.are.equal(0, code)
  end)
end)

describe("the REPL on a pipe", function()
  it("prints expression values and runs multi-line chunks", function()
    local out, err, code = run("", "x = mg.ones(2)\nx + 1\nfor i=1,2 do\nprint(i)\nend\n")
    assert.are.equal(tostring(mg.ones(2) + 1) .. "\n1\n2\n", out)
    assert.are.equal("", err)
    assert.are.equal(0, code)
  end)

  it("evaluates a line from echo", function()
    local out, _, code = run("", "print(1+1)\n")
    assert.are.equal("2\n", out)
    assert.are.equal(0, code)
  end)

  it("prints several values tab-separated, and a multi-line expression's value", function()
    local out = run("", "1, 'a', nil, true\nmg.tensor{\n{1, 2},\n{3, 4}}\n")
    assert.are.equal("1\ta\tnil\ttrue\n" .. tostring(mg.tensor { { 1, 2 }, { 3, 4 } }) .. "\n", out)
  end)

  it("reports an error with a traceback, goes on, and exits 1 at the end", function()
    local out, err, code = run("", "error('bad')\nprint('after')\n")
    assert.are.equal("after\n", out)
    contains(err, "stdin:1: bad", "stack traceback:")
    lacks(err, "moongrad:")
    assert.are.equal(1, code)
  end)

  it("reports a chunk cut short by the end of input", function()
    local _, err, code = run("", "for i = 1, 2 do\n")
    contains(err, "'end' expected", "<eof>")
    assert.are.equal(1, code)
  end)

  it("warns that a local does not outlive its line", function()
    local out, err = run("", "local z = 1\nz\n")
    assert.are.equal("nil\n", out)
    contains(err, "warning: a local lives only in its own chunk")
  end)
end)

describe("Ctrl-C", function()
  -- shell: wait (at most 10 s) until 'file' exists
  local function await(file)
    return ("for i in $(seq 200); do [ -e %s ] && break; sleep 0.05; done"):format(file)
  end

  it("interrupts a running script: 'interrupted!' and exit status 1", function()
    local marker = tmpname()
    os.remove(marker)
    local err = tmpname()
    local code = ("(%s -e %s 2>%s & pid=$!; %s; kill -INT $pid; wait $pid)")
      :format(q(exe), q(("io.open(%q, 'w'):close() while true do end"):format(marker)), err,
              await(marker))
    local _, _, status = os.execute(code)
    contains(slurp(err), "interrupted!", "stack traceback:")
    assert.are.equal(1, status)
  end)

  it("stops a script inside one long kernel: '<op>: interrupted!' on the first Ctrl-C", function()
    local marker = tmpname()
    os.remove(marker)
    local err = tmpname()
    local chunk = ("io.open(%q, 'w'):close() local s = mg.ones(1, 1):expand(2e5, 2e5):sum()")
      :format(marker)
    local code = ("(%s -e %s 2>%s & pid=$!; %s; sleep 0.3; kill -INT $pid; wait $pid)")
      :format(q(exe), q(chunk), err, await(marker))
    local t0 = os.time()
    local _, _, status = os.execute(code)
    assert.is_true(os.time() - t0 < 10, "the kernel was not stopped")
    contains(slurp(err), "sum: interrupted!", "stack traceback:")
    assert.are.equal(1, status)
  end)
end)

describe("-E, -W and LUA_INIT, as lua5.4", function()
  local code = q "print(package.path:match('^[^;]*'), package.cpath:match('^[^;]*')) warn('hello')"
  local env = "LUA_INIT=" .. q "print('init ran')" .. " LUA_PATH=" .. q "/nowhere/?.lua"
              .. " LUA_CPATH=" .. q "/nowhere/?.so"

  -- stdout and stderr of 'cmd'
  local function both(cmd)
    local outf, errf = tmpname(), tmpname()
    os.execute(("%s >%s 2>%s </dev/null"):format(cmd, outf, errf))
    return slurp(outf), slurp(errf)
  end

  it("runs LUA_INIT first and takes LUA_PATH and LUA_CPATH without -E", function()
    local out, err = run("-e " .. code, nil, env)
    assert.are.equal("init ran\n/nowhere/?.lua\t/nowhere/?.so\n", out)
    assert.are.equal("", err)                       -- warnings off
    local lout, lerr = both(env .. " lua5.4 -e " .. code)
    assert.are.same({ lout, lerr }, { out, err })
  end)

  it("ignores them with -E", function()
    local out, err, status = run("-E -e " .. code, nil, env)
    assert.are.same({ both(env .. " lua5.4 -E -e " .. code) }, { out, err })
    lacks(out, "init ran")
    lacks(out, "/nowhere/")
    assert.are.equal(0, status)
  end)

  it("runs LUA_INIT=@file as a file, LUA_INIT_5_4 before LUA_INIT", function()
    local init = tmpname("print('from file')\n")
    assert.are.equal("from file\n1\n", run("-e 'print(1)'", nil, "LUA_INIT=@" .. init))
    assert.are.equal("five four\n", run("-e ''", nil, "LUA_INIT_5_4=" .. q "print('five four')"
                                          .. " LUA_INIT=" .. q "print('plain')"))
  end)

  it("turns warnings on with -W, in order with -e", function()
    local w = "-e " .. q "warn('before')" .. " -W -e " .. q "warn('after')"
    local out, err = run(w)
    assert.are.equal("", out)
    assert.are.equal("Lua warning: after\n", err)
    assert.are.same({ both("lua5.4 " .. w) }, { out, err })
  end)

  it("reports a failing LUA_INIT with exit status 1", function()
    local _, err, status = run("-e 'print(1)'", nil, "LUA_INIT=" .. q "error('bad init')")
    contains(err, "moongrad: LUA_INIT:1: bad init")
    assert.are.equal(1, status)
  end)
end)

describe("the command line", function()
  it("rejects an unknown option with the usage on stderr and exit status 1", function()
    local out, err, code = run("-x")
    assert.are.equal("", out)
    contains(err, "moongrad: unrecognized option '-x'", "usage: moongrad [options] [script [args]]")
    assert.are.equal(1, code)
  end)

  it("says which option lacks its argument", function()
    local _, err, code = run("-e")
    contains(err, "moongrad: '-e' needs an argument", "usage: moongrad")
    assert.are.equal(1, code)
  end)

  it("prints the usage on stdout for -h and --help", function()
    for _, opt in ipairs { "-h", "--help" } do
      local out, err, code = run(opt)
      contains(out, "usage: moongrad [options] [script [args]]", "-e code", "-i", "-v", "-E", "-W")
      assert.are.equal("", err)
      assert.are.equal(0, code)
    end
  end)

  it("stops handling options at '--'", function()
    local script = tmpname("print('ran', ...)\n")
    local out, _, code = run("-- " .. script .. " -v")
    assert.are.equal("ran\t-v\n", out)
    assert.are.equal(0, code)
  end)
end)
