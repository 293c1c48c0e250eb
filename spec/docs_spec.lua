-- The documentation is kept true (docs/README.md, "How an entry is written"):
--  (a) every public function of mg, mg.nn, mg.optim, mg.plot (and of any table-valued field of
--      mg, such as mg.linalg), every Tensor method and every GradientTape method has an entry:
--      a heading line of docs/**/*.md naming it in backquotes; and every entry names a
--      function that exists (names starting with '_' are internal: no entry is asked for);
--  (b) every ```lua block of README.md and docs/**/*.md runs as written, each in a fresh stock
--      lua5.4 (with 'local mg = require "moongrad"' before it) in an empty directory;
--  (c) no file of the repository cites the project's founding files outside it.
local mg = require "moongrad"
local support = require "support"

local source, build, q = support.SOURCE, support.BUILD, support.shq

-- Lines of a command's output.
local function lines_of(cmd)
  local p = assert(io.popen(cmd))
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

-- The repository's files (relative paths): git's list of tracked and untracked-but-not-ignored
-- files in a checkout, else every file but the build and output trees.
local function repo_files()
  local git = lines_of("git -C " .. q(source) .. " ls-files --cached --others --exclude-standard 2>/dev/null")
  if #git > 0 then return git end
  return lines_of("cd " .. q(source) .. " && find . \\( -name 'build*' -o -name .git -o -name .venv "
                  .. "-o -name out \\) -prune -o -type f -print | sed 's|^\\./||'")
end

local function doc_files()
  local files = lines_of("cd " .. q(source) .. " && find docs -name '*.md' | sort")
  assert(#files > 0, "no docs/**/*.md under " .. source)
  return files
end

---------------------------------------------------------------- (a) every function has an entry

-- The call forms named by the heading lines of 'path': { ["mg.zeros"] = true, ["t:sum"] = true }.
-- A call form is a backquoted span starting with a dotted name, ':method' optional; a name
-- that is a Lua keyword is indexed with a string: `mg["repeat"](t, 2)` names mg.repeat,
-- `t["repeat"](t, 2)` the method t:repeat.
local function heading_names(path, into)
  for line in io.lines(source .. "/" .. path) do
    if line:match("^#+%s") then
      for span in line:gmatch("`([^`]+)`") do
        local name = span:match("^([%a_][%w_]*[%.:][%a_][%w_%.:]*)")
        local t, key = span:match('^([%a_][%w_]*)%["([%a_][%w_]*)"%]')
        if key then name = t .. (t == "t" and ":" or ".") .. key end
        if name then into[name] = into[name] or path end
      end
    end
  end
  return into
end

local ALIASES = { nn = "mg.nn", optim = "mg.optim", plot = "mg.plot" }

-- The GradientTape method table, from a tape stopped at once (one left recording would record
-- every op after it until collected).
local function tape_methods()
  local tape <close> = mg.GradientTape()
  return getmetatable(tape).__index
end

-- The Tensor method table: an upvalue of the tensors' __index (a C closure), the table
-- among them that holds 'sum'.
local function tensor_methods()
  local index = getmetatable(mg.zeros(1)).__index
  if type(index) == "table" then return index end
  for i = 1, 255 do
    local name, v = debug.getupvalue(index, i)
    if name == nil then break end
    if type(v) == "table" and type(v.sum) == "function" then return v end
  end
  error("the Tensor method table was not found among the upvalues of __index")
end

-- The public functions of table 't' (keys not starting with '_'), sorted.
local function public_functions(t)
  local out = {}
  for k, v in pairs(t) do
    if type(k) == "string" and k:sub(1, 1) ~= "_" and type(v) == "function" then out[#out + 1] = k end
  end
  table.sort(out)
  return out
end

-- Every name that needs an entry, with the spellings that count: { {"mg.nn.RNN", "nn.RNN"}, ... }.
local function required_names()
  local req = {}
  local modules = { mg = mg, ["mg.nn"] = mg.nn, ["mg.optim"] = mg.optim, ["mg.plot"] = mg.plot }
  for k, v in pairs(mg) do                              -- submodule tables (mg.linalg, ...)
    if type(k) == "string" and k:sub(1, 1) ~= "_" and type(v) == "table" and not mg.is_tensor(v) then
      modules["mg." .. k] = v
    end
  end
  for prefix, t in pairs(modules) do
    local short = prefix:match("^mg%.(.+)$")
    for _, k in ipairs(public_functions(t)) do
      req[#req + 1] = { prefix .. "." .. k, short and (short .. "." .. k) or nil }
    end
  end
  for _, k in ipairs(public_functions(tensor_methods())) do req[#req + 1] = { "t:" .. k } end
  for _, k in ipairs(public_functions(tape_methods())) do
    req[#req + 1] = { "tape:" .. k }
  end
  table.sort(req, function(a, b) return a[1] < b[1] end)
  return req
end

-- Whether a heading's name refers to something that exists.
local function exists(name)
  local prefix, sep, rest = name:match("^([%a_][%w_]*)([%.:])(.+)$")
  if sep == ":" then
    if prefix == "t" then
      return type(tensor_methods()[rest]) == "function"
    elseif prefix == "tape" then
      return type(tape_methods()[rest]) == "function"
    end
    return true                 -- layer:, cell:, rnn:, opt: ... : objects' methods, not checked
  end
  local root = ALIASES[prefix] and mg[prefix] or (prefix == "mg" and mg)
  if not root then return true end                      -- not a module name: not an entry
  local v = root
  for part in rest:gmatch("[^%.]+") do
    if type(v) ~= "table" then return false end
    v = v[part]
  end
  return v ~= nil
end

describe("docs/", function()
  local names = {}
  for _, f in ipairs(doc_files()) do heading_names(f, names) end

  it("has an entry for every public function and method", function()
    local missing = {}
    for _, spellings in ipairs(required_names()) do
      local found = false
      for _, s in pairs(spellings) do found = found or names[s] ~= nil end
      if not found then missing[#missing + 1] = spellings[1] end
    end
    assert.are.same({}, missing, "no docs/ heading names these (see docs/README.md): "
                                 .. table.concat(missing, ", "))
  end)

  it("names only functions that exist", function()
    local stale = {}
    for name, path in pairs(names) do
      if not exists(name) then
        stale[#stale + 1] = name .. " (" .. path .. ")"
      end
    end
    table.sort(stale)
    assert.are.same({}, stale, "docs/ headings name functions that do not exist: " .. table.concat(stale, ", "))
  end)

  it("the coverage check finds what it must (it is not vacuous)", function()
    local req = required_names()
    local seen = {}
    for _, r in ipairs(req) do seen[r[1]] = true end
    for _, n in ipairs { "mg.zeros", "mg.nn.LSTMCell", "mg.optim.Adam", "mg.plot.features_2d",
                         "t:narrow", "tape:batch_jacobian" } do
      assert.is_true(seen[n], n .. " is not among the required names")
    end
    assert.is_nil(heading_names("docs/README.md", {})["mg.no_such_function"])
    assert.is_false(exists("mg.no_such_function"))
    assert.is_false(exists("t:no_such_method"))
    assert.is_true(exists("nn.RNN") and exists("mg.plot.lines") and exists("tape:watch"))
  end)
end)

---------------------------------------------------------------- (b) every lua block runs

-- The ```lua blocks of 'path': { {line = first line number, code = text}, ... }.
local function lua_blocks(path)
  local blocks, cur, n = {}, nil, 0
  for line in io.lines(source .. "/" .. path) do
    n = n + 1
    if cur then
      if line:match("^```%s*$") then blocks[#blocks + 1] = cur cur = nil
      else cur.code = cur.code .. line .. "\n" end
    elseif line:match("^```lua%s*$") then
      cur = { line = n + 1, code = "" }
    end
  end
  assert(cur == nil, path .. ": a ```lua block is not closed")
  return blocks
end

-- Runs 'code' in a fresh lua5.4 in an empty directory: ok, output (stdout and stderr), with
-- positions in messages written as the document's lines ('file', code starting at 'first').
local function run_block(code, file, first)
  local dir = support.tmpdir()
  local body = 'local mg = require "moongrad"\n' .. code
  support.write_file(dir .. "/block.lua", body)
  local runner = ("local f = assert(loadfile('block.lua', 't')); debug.sethook(); f()")
  local cmd = ("cd %s && env -u LUA_PATH -u LUA_INIT LUA_CPATH=%s MOONGRAD_HISTORY= "
               .. "timeout 120 lua5.4 -e %s >out.txt 2>&1 </dev/null")
    :format(q(dir), q(build .. "/lua/?.so"), q(runner))
  local ok = os.execute(cmd)
  local out = support.read_file(dir .. "/out.txt")
  support.rmtree(dir)
  return ok == true, (out:gsub("block%.lua:(%d+):", function(l)
    return file .. ":" .. (first + tonumber(l) - 2) .. ":"
  end))
end

describe("every ```lua block of README.md and docs/", function()
  local files = { "README.md" }
  for _, f in ipairs(doc_files()) do files[#files + 1] = f end
  local total = 0
  for _, f in ipairs(files) do
    for _, b in ipairs(lua_blocks(f)) do
      total = total + 1
      it(("%s:%d runs"):format(f, b.line), function()
        local ok, out = run_block(b.code, f, b.line)
        assert.is_true(ok, ("%s, the block at line %d failed:\n%s"):format(f, b.line, out))
      end)
    end
  end

  it("there are blocks to run, and a failing block fails", function()
    assert.is_true(total >= 10, "only " .. total .. " lua blocks found")
    local ok, out = run_block("local y = x + 1\n", "test", 1)
    assert.is_false(ok)
    assert.is_truthy(out:find("x", 1, true), out)
    assert.is_true((run_block("assert(mg.zeros(2):numel() == 2)\n", "test", 1)))
  end)
end)

---------------------------------------------------------------- links between the pages

-- GitHub's anchor of a heading's text: lower case, punctuation dropped, spaces to hyphens.
local function slug(text)
  return (text:lower():gsub("[^%w%- _]", ""):gsub(" ", "-"))
end

describe("the links of README.md and docs/", function()
  it("point at files that exist and at headings they have", function()
    local files = { "README.md" }
    for _, f in ipairs(doc_files()) do files[#files + 1] = f end
    local bad = {}
    for _, f in ipairs(files) do
      local dir = f:match("^(.*)/[^/]*$") or "."
      for target in support.read_file(source .. "/" .. f):gmatch("%]%(([^)%s]+)%)") do
        if not target:match("^%a+:") then                 -- not http:, mailto:
          local path, anchor = target:match("^([^#]*)#?(.*)$")
          local full = path == "" and f or (dir .. "/" .. path)
          local fh = io.open(source .. "/" .. full, "rb")
          if not fh then
            bad[#bad + 1] = f .. ": " .. target .. " (no such file)"
          else
            local text = fh:read("a")
            fh:close()
            if anchor ~= "" then
              local found = false
              for h in (text .. "\n"):gmatch("#+ ([^\n]+)\n") do found = found or slug(h) == anchor end
              if not found then bad[#bad + 1] = f .. ": " .. target .. " (no such heading)" end
            end
          end
        end
      end
    end
    assert.are.same({}, bad, "broken links:\n" .. table.concat(bad, "\n"))
  end)
end)

---------------------------------------------------------------- (c) no citation of the outside

describe("the repository", function()
  -- The founding files live outside the repository; a mention of one of them (unless the
  -- repository itself has a file of that name) or of the folder they live in is a citation.
  local outside = { "../" .. "shared", "/work/" .. "shared", "API" .. ".md", "PERFORMANCE" .. ".md",
                    "RNN_REFERENCE" .. ".md", "STYLE" .. ".md" }

  it("cites no file outside itself", function()
    local files = repo_files()
    assert.is_true(#files > 20, "the repository's file list is too short: " .. #files)
    local own = {}
    for _, f in ipairs(files) do own[f:match("[^/]+$")] = true end
    local bad = {}
    for _, f in ipairs(files) do
      local fh = io.open(source .. "/" .. f, "rb")
      local text = fh and fh:read("a") or ""
      if fh then fh:close() end
      if not text:find("\0", 1, true) then                -- text files only
        local n = 0
        for line in (text .. "\n"):gmatch("(.-)\n") do
          n = n + 1
          for _, s in ipairs(outside) do
            if not own[s] and line:find(s, 1, true) then bad[#bad + 1] = ("%s:%d: %s"):format(f, n, s) end
          end
        end
      end
    end
    assert.are.same({}, bad, "citations of files outside the repository:\n" .. table.concat(bad, "\n"))
  end)
end)
