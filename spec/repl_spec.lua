-- The moongrad REPL (bindings/lmain.c): values printed (tables as values, tensors in tables
-- on one line each, nothing for a call that returns nothing), error tracebacks from the
-- user's line, and, in a terminal (a pseudo-terminal made by util-linux 'script'): prompts,
-- history (a multi-line chunk is one entry; the file is trimmed at every exit), Tab
-- completion of mg.nn/mg.optim/mg.plot before their first use, and Ctrl-C (at the prompt it
-- drops the chunk being typed; during a long kernel or a Lua loop it stops the chunk with
-- "interrupted!" and the session goes on, its variables and tapes intact). And the README's
-- tour: its ```lua blocks typed into the REPL line by line run without an error and print
-- what the tour says they print.
local mg = require "moongrad"

local support = require "support"

local source, exe = support.SOURCE, support.EXE
local q, slurp = support.shq, support.read_file   -- quoted for sh; a file's bytes
local contains, lacks = support.contains, support.lacks
local tmpname = support.tmpnames(teardown)

-- The REPL on a pipe fed 'input': stdout, stderr.
local function repl(input)
  local inf, outf, errf = tmpname(input), tmpname(), tmpname()
  os.execute(("%s <%s >%s 2>%s"):format(q(exe), inf, outf, errf))
  return slurp(outf), slurp(errf)
end

local have_script = os.execute("command -v script >/dev/null && command -v timeout >/dev/null")
local have_gnuplot = os.execute("command -v gnuplot >/dev/null 2>&1")

-- Run moongrad in a pseudo-terminal fed by the shell command 'feeder' (with the environment
-- assignments 'env', in the directory 'dir' if given, for at most 'seconds', default 30);
-- its output (also left in 'outf' as it comes, for a feeder that waits on it) with the
-- carriage returns and escape sequences removed.
local function run_tty(feeder, env, outf, dir, seconds)
  outf = outf or tmpname()
  local cmd = ("%s(%s) | timeout %d script -qec %s /dev/null >%s 2>&1")
    :format(dir and ("cd " .. q(dir) .. " && ") or "", feeder, seconds or 30,
            q((env or "") .. " " .. q(exe)), outf)
  os.execute(cmd)
  return (slurp(outf):gsub("\r", ""):gsub("\27%[[%d;?]*[A-Za-z]", ""))
end

-- shell: wait (at most 20 s) until the file 'f' contains the fixed string 's'
local function await(f, s)
  return ("for i in $(seq 400); do grep -qF -- %s %s && break; sleep 0.05; done"):format(q(s), f)
end

-- The entries of a history file (its timestamp lines mark where each starts).
local function entries(file)
  local list = {}
  for line in (slurp(file) .. ""):gmatch("([^\n]*)\n") do
    if line:match("^#%d+$") then list[#list + 1] = false
    elseif list[#list] == false then list[#list] = line
    else list[#list] = list[#list] .. "\n" .. line end
  end
  return list
end

describe("the REPL prints", function()
  it("a table as a value: an array, a record, keys that are not names, nested tables", function()
    local out = repl([[
a = mg.ones(2, 3)
a:shape()
{core = "Zen", threads = 2}
{}
{1, 2, x = "a\"b\n", ["a b"] = true, [1.5] = 3}
{1, {2, {}}, {k = {"deep"}}}
]])
    assert.are.equal(table.concat({
      "{2, 3}",
      '{core = "Zen", threads = 2}',
      "{}",
      '{1, 2, [1.5] = 3, ["a b"] = true, x = "a\\"b\\n"}',
      '{1, {2, {}}, {k = {"deep"}}}',
      "" }, "\n"), out)
  end)

  it("an array of tensors one line each, short tensors in full and long ones by shape", function()
    local small, big = mg.ones(2), mg.zeros(30, 40)
    assert.is_truthy(tostring(big):find("\n"))          -- the long one really spans lines
    local out = repl("{mg.ones(2), mg.zeros(30, 40), w = mg.zeros(30, 40, {dtype = 'float64'})}\n")
    assert.are.equal(table.concat({
      "{",
      "  " .. tostring(small) .. ",",
      "  tensor(shape=(30,40), dtype=float32),",
      "  w = tensor(shape=(30,40), dtype=float64)",
      "}", "" }, "\n"), out)
  end)

  it("a small result of an unrecorded op (built without a finalizer) shows as a tensor too", function()
    local out = repl("{mg.ones(8, 8) + mg.ones(8, 8), -mg.ones(8, 8)}\n")
    assert.are.equal("{\n  tensor(shape=(8,8), dtype=float32),\n  tensor(shape=(8,8), dtype=float32)\n}\n", out)
  end)

  it("nested tables to depth 3, then {...}; a table inside itself as <cycle>", function()
    local out = repl("{1, {2, {3, {4, {5}}}}}\nt = {n = 1}; t.self = t; t.list = {t}\nt\n")
    assert.are.equal("{1, {2, {3, {...}}}}\n{list = {<cycle>}, n = 1, self = <cycle>}\n", out)
  end)

  it("a long table wrapped to the width, cut after 30 entries", function()
    local out = repl("local r = {} for i = 1, 100 do r[i] = i end return r\n")
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal("{", lines[1])
    assert.are.equal("}", lines[#lines])
    for i = 2, #lines - 1 do assert.is_true(#lines[i] <= 76, lines[i]) end
    contains(out, "  1, 2, 3,", " 30, ... (70 more)\n}")
    lacks(out, " 31,")
  end)

  it("strings as they are, other values and objects through tostring", function()
    local out = repl([[
"plain", 1.5, nil, true
setmetatable({}, {__tostring = function() return "custom" end})
]])
    assert.are.equal("plain\t1.5\tnil\ttrue\ncustom\n", out)
  end)

  it("nothing for a call that returns nothing, as lua5.4", function()
    local out, err = repl("(function() end)()\nprint('x')\n")
    assert.are.equal("x\n", out)
    assert.are.equal("", err)
  end)

  it("no stray nil after a text plot to the terminal", function()
    if not have_gnuplot then pending("gnuplot is not installed") return end
    local out, err = repl("mg.plot.lines(mg.tensor{1, 3, 2}, {title = 'up'})\nprint('after')\n")
    contains(out, "up")
    assert.is_truthy(out:find("\nafter\n$"), out)
    lacks(out, "nil")
    assert.are.equal("", err)
  end)
end)

describe("REPL errors", function()
  it("point at the user's line, and the traceback starts there, not in moongrad's helpers",
     function()
    local _, err = repl("mg.nn.Dense(0, 3)\n")
    contains(err, "stdin:1: Dense: ", "stack traceback:\n\tstdin:1: in main chunk")
    lacks(err, "moongrad/")
  end)

  it("keep lua5.4's traceback when no moongrad helper is in it", function()
    local _, err = repl("error('mine')\n")
    contains(err, "stdin:1: mine\nstack traceback:\n\t[C]: in function 'error'\n\tstdin:1: in main chunk")
  end)

  it("from a script also start at the user's frame", function()
    local script = tmpname("local function f() local d = mg.nn.Dense(0, 3) return d end\nf()\n")
    local p = io.popen(q(exe) .. " " .. script .. " 2>&1")
    local err = p:read("a")
    p:close()
    contains(err, script .. ":1: Dense: ", "stack traceback:\n\t" .. script .. ":1: in")
    lacks(err, "moongrad/nn.lua")
  end)
end)

describe("the REPL in a terminal", function()
  it("shows prompts, prints values, continues chunks and keeps history, a chunk one entry",
     function()
    if not have_script then pending("no util-linux 'script' to make a terminal") return end
    local hist = tmpname()
    os.remove(hist)
    local out = run_tty([[printf 'x = mg.ones(2)\nx + 1\nfor i=1,2 do\nprint(i)\nend\n']],
                        "MOONGRAD_HISTORY=" .. hist)
    contains(out, "moongrad " .. mg._VERSION, "mg> x + 1\n" .. tostring(mg.ones(2) + 1) .. "\n",
             "mg> for i=1,2 do\n..> print(i)\n..> end\n1\n2\n")
    assert.are.same({ "x = mg.ones(2)", "x + 1", "for i=1,2 do\nprint(i)\nend" }, entries(hist))
    -- a new session reads the file: three Ups go back past this session's line and the
    -- chunk to 'x + 1'
    local again = run_tty([[printf 'x = mg.ones(2)*2\n\033[A\033[A\033[A\n']],
                          "MOONGRAD_HISTORY=" .. hist)
    contains(again, tostring(mg.ones(2) * 2 + 1))
  end)

  it("recalls a multi-line chunk whole with one Up, in the session and the next", function()
    if not have_script then pending("no util-linux 'script' to make a terminal") return end
    local hist = tmpname()
    os.remove(hist)
    local out = run_tty([[printf 'for i=1,2 do\nprint("i=" .. i)\nend\n\033[A\n']],
                        "MOONGRAD_HISTORY=" .. hist)
    local _, runs = out:gsub("i=2\n", "")
    assert.are.equal(2, runs, out)
    assert.are.same({ 'for i=1,2 do\nprint("i=" .. i)\nend' }, entries(hist))
    local again = run_tty([[printf '\033[A\n']], "MOONGRAD_HISTORY=" .. hist)
    contains(again, "i=1\ni=2\n")
  end)

  it("reads a history file of one entry a line (older moongrad) and rewrites it with marks",
     function()
    if not have_script then pending("no util-linux 'script' to make a terminal") return end
    local hist = tmpname("y = 40\ny + 2\n")
    local out = run_tty([[printf '\033[A\033[A\n\033[A\033[A\n']], "MOONGRAD_HISTORY=" .. hist)
    contains(out, "\n42\n")
    assert.are.same({ "y = 40", "y + 2", "y = 40", "y + 2" }, entries(hist))
  end)

  it("trims the history file to 1000 entries on every exit: end of input, os.exit, a kill",
     function()
    if not have_script then pending("no util-linux 'script' to make a terminal") return end
    local function filled()
      local lines = {}
      for i = 1, 1500 do lines[i] = "#1\nv = " .. i end
      return tmpname(table.concat(lines, "\n") .. "\n")
    end
    for _, exit in ipairs { "", "os.exit(0)\\n", "os.exit(true, true)\\n" } do
      local hist = filled()
      run_tty(("printf 'w = 1\\n%s'"):format(exit), "MOONGRAD_HISTORY=" .. hist)
      local e = entries(hist)
      assert.are.equal(1000, #e, "after " .. exit)
      assert.are.equal(exit == "" and "w = 1" or exit:gsub("\\n", ""), e[1000])
      assert.are.equal("v = " .. (exit == "" and 502 or 503), e[1])
    end
    local hist = filled()                   -- killed: the next session trims at its start
    local outf = tmpname()
    run_tty(([[printf 'w = 2\nos.execute("kill -9 " .. io.open("/proc/self/stat"):read("n"))\n'; sleep 1]]),
            "MOONGRAD_HISTORY=" .. hist, outf)
    assert.is_true(#entries(hist) > 1000)
    run_tty([[printf 'print(1)\n']], "MOONGRAD_HISTORY=" .. hist)
    assert.are.equal(1000, #entries(hist))
  end)

  it("completes mg.nn, mg.optim and mg.plot and their members before their first use",
     function()
    if not have_script then pending("no util-linux 'script' to make a terminal") return end
    local out = run_tty([[printf 'print(rawget(mg, "nn"), rawget(mg, "optim"), rawget(mg, "plot"))\nf = mg.pl\t.lin\t\nd = mg.nn.Den\t\no = mg.opt\t.SG\t\nprint(f == mg.plot.lines, d == mg.nn.Dense, o == mg.optim.SGD)\n']],
                        "MOONGRAD_HISTORY=")
    contains(out, "\nnil\tnil\tnil\n", "mg> f = mg.plot.lines\n", "mg> d = mg.nn.Dense\n",
             "mg> o = mg.optim.SGD\n", "\ntrue\ttrue\ttrue\n")
  end)

  it("cancels the chunk being typed on Ctrl-C at the prompt", function()
    if not have_script then pending("no util-linux 'script' to make a terminal") return end
    local outf = tmpname()
    local feeder = ([[printf 'for i=1,2 do\n'; %s; printf '\003'; printf 'print("after")\n']])
      :format(await(outf, "..> "))
    local out = run_tty(feeder, "MOONGRAD_HISTORY=", outf)
    contains(out, "\nafter\n")
    lacks(out, "\n1\n")
  end)

  it("stops a long kernel on the first Ctrl-C; variables and a recording tape survive",
     function()
    if not have_script then pending("no util-linux 'script' to make a terminal") return end
    local outf = tmpname()
    local feeder = table.concat({
      [[printf 'x = 42\ntape = mg.GradientTape()\nw = mg.tensor({1, 2}, {dtype = "float64"})\n']],
      [[printf 'tape:watch(w); y = (w * w):sum()\nprint("go")\n']],
      await(outf, "\ngo"),
      [[printf 'z = mg.ones(1, 1):expand(2e5, 2e5):sum()\n']],
      await(outf, "expand(2e5, 2e5):sum()"), "sleep 0.5", [[printf '\003']],
      await(outf, "interrupted!"),
      [[printf 'print("x is", x, z)\nprint(tape:gradient(y, w))\n']],
      [[printf 'while true do end\n']], await(outf, "while true do end"), "sleep 0.3",
      [[printf '\003']], "sleep 0.5",
      [[printf 'print("still", x)\n']],
      -- Ctrl-C once it took effect interrupts again (not the kill of a pending second one)
      [[printf 'for i = 1, 3 do print("round" .. i) pcall(function() while true do end end) end print("loop" .. " done")\n']],
      await(outf, "round1"), "sleep 0.3", [[printf '\003']],
      await(outf, "round2"), "sleep 0.3", [[printf '\003']],
      await(outf, "round3"), "sleep 0.3", [[printf '\003']],
      await(outf, "loop done"), [[printf 'print("alive", x)\n']] }, "; ")
    local t0 = os.time()
    local out = run_tty(feeder, "MOONGRAD_HISTORY=", outf)
    assert.is_true(os.time() - t0 < 25, "the kernel was not stopped")
    contains(out, "sum: interrupted!", "\nx is\t42\tnil\n",
             tostring(mg.tensor({ 2, 4 }, { dtype = "float64" })) .. "\n",
             "interrupted!\nstack traceback:\n\tstdin:1: in main chunk", "\nstill\t42\n",
             "round3\n", "loop done\n", "\nalive\t42\n")
  end)
end)

describe("the README's tour", function()
  -- The lines of README.md's ```lua blocks, in order (docs_spec runs the same blocks as
  -- scripts; here they are typed into the REPL, as a reader pastes them line by line).
  local function tour_lines()
    local lines, inside = {}, false
    for line in io.lines(source .. "/README.md") do
      if inside and line:match("^```%s*$") then inside = false
      elseif inside then lines[#lines + 1] = line
      elseif line:match("^```lua%s*$") then inside = true end
    end
    assert.is_true(#lines >= 20, "README.md has only " .. #lines .. " lines of Lua")
    return lines
  end

  it("typed into the REPL line by line, runs without an error and prints what it says",
     function()
    if not have_script then pending("no util-linux 'script' to make a terminal") return end
    if not have_gnuplot then pending("no gnuplot for the tour's plot") return end
    local lines = tour_lines()
    for i, l in ipairs(lines) do
      assert.is_falsy(l:find("\t", 1, true), "line " .. i .. " has a Tab (it would complete)")
    end
    -- after the tour, lines that show what it left in its globals
    local checks = {
      'print("shapes", mg.shapestr(J), #dL_dh, mg.shapestr(Js[3]), mg.shapestr(H))',
      'print("saved", mg.eq(a, c):sum():item(), c:get(1, 1), c:get(2, 3))',
      'print("picture", io.open("out/grads.png", "rb"):read(4) == "\\137PNG")',
    }
    local typed = tmpname(table.concat(lines, "\n") .. "\n" .. table.concat(checks, "\n") .. "\n")
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. q(dir)))
    local out = run_tty("cat " .. q(typed), "MOONGRAD_HISTORY=", nil, dir, 120)
    os.execute("rm -rf " .. q(dir))
    local F64 = { dtype = "float64" }
    -- every line was read as a chunk of its own, at the prompt, and nothing failed
    local _, prompts = out:gsub("mg> ", "")
    assert.is_true(prompts >= #lines + #checks, out)
    for _, bad in ipairs { "..> ", "stack traceback", "stdin:", "rror", "lives only in its own chunk" } do
      lacks(out, bad)
    end
    -- what the tour's comments promise
    contains(out,
      "mg> print(tape:gradient(y, x))",
      tostring(mg.tensor({ 2, 10, 12 }, F64)) .. "\n",                       -- (2, 10, 12)
      tostring(mg.tensor({ { 4, 2 }, { 2, 6 } }, F64)) .. "\ttrue\n",         -- A + A', gradcheck
      "\t" .. tostring(mg.tensor({ 6, 15 })) .. "\t",                         -- a:sum(2)
      "\nout/grads.png\n",                                                  -- the plot's path
      "\nshapes\t(8,32,32)\t20\t(8,32,32)\t(2,2)\n",                         -- J, dL/dh_1..T, Js
      "\nsaved\t6.0\t0.0\t6.0\n",                                            -- a[1] = 0, save/load
      "\npicture\ttrue\n")
  end)
end)
