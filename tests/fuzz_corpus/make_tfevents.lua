-- make_tfevents.lua - writes the seed corpus of the event file fuzzer
-- (tests/fuzz_corpus/tfevents), run by the built interpreter from the repository:
--   build/moongrad tests/fuzz_corpus/make_tfevents.lua
-- ok_* files are written by mg.summary and must parse (tests/fuzz_tfevents.c checks that
-- their first event is the file version); bad_* files are damaged copies that must be
-- rejected. The files are committed: this only needs re-running to change the corpus.
local here = arg[0]:match("^(.*)/") or "."
local out = here .. "/tfevents"
os.execute("mkdir -p '" .. out .. "'")
local tmp = os.tmpname()
os.remove(tmp)

local function log(name, fill)
  local w = mg.summary.writer(tmp, { flush_secs = 0 })
  fill(w)
  w:close()
  local f = assert(io.open(w:path(), "rb"))
  local s = f:read("a")
  f:close()
  os.remove(w:path())
  local o = assert(io.open(out .. "/" .. name, "wb"))
  o:write(s)
  o:close()
  return s
end

local function put(name, s)
  local o = assert(io.open(out .. "/" .. name, "wb"))
  o:write(s)
  o:close()
end

mg.manual_seed(1)
log("ok_version_only", function() end)
local scalars = log("ok_scalars", function(w)
  for i = 0, 3 do w:scalar("loss", 1 / (i + 1), i, 1000 + i) end
end)
log("ok_histograms", function(w)
  w:histogram("w", mg.randn(20), 1, { wall_time = 1000 })
  w:histogram("u", mg.randn(9), 2, { bins = 4, wall_time = 1000 })
  w:histogram("empty", mg.zeros(0), 3, { wall_time = 1000 })
end)
log("ok_image_text", function(w)
  w:image("img", mg.rand(2, 3, 3), 1, 1000)
  w:image("gray", mg.rand(2, 2), 2, 1000)
  w:text("t", "some *markdown*", 3, 1000)
end)
os.remove(tmp)

put("bad_truncated_header", scalars:sub(1, #scalars - 30))
put("bad_truncated_crc", scalars:sub(1, #scalars - 2))
local function flip(s, i) return s:sub(1, i - 1) .. string.char(s:byte(i) ~ 4) .. s:sub(i + 1) end
put("bad_length_bit", flip(scalars, 1))
put("bad_length_crc_bit", flip(scalars, 10))
put("bad_data_bit", flip(scalars, 20))
put("bad_data_crc_bit", flip(scalars, 40))
put("bad_huge_length", string.pack("<I8", 0xffffffffffff) .. scalars:sub(9))
print("wrote the corpus in " .. out)
