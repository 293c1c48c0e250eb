#!/usr/bin/python3
"""Writes the seed corpus of the .npy fuzzer (tests/fuzz_corpus/npy).

ok_*  files are written by NumPy itself and hold 0, 1, 2, ... in C order (what
      tests/fuzz_npy.c checks when it replays them); bad_* files are malformed by hand and
      must be rejected. Run from anywhere with /usr/bin/python3 (the one with NumPy); the
      files are committed, so this only needs re-running to change the corpus.
"""
import io
import os
import struct

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npy")


# Crash inputs libFuzzer found (tools/fuzz), committed as found: never rewritten or removed.
FOUND = {"bad_empty_dim_huge_strides.npy", "empty_dims_contiguous.npy"}


def npy(a, version=None):
    b = io.BytesIO()
    if version is None:
        np.save(b, a)
    else:
        np.lib.format.write_array(b, a, version=version)
    return b.getvalue()


def counting(shape, dtype, order="C"):
    a = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    return np.asfortranarray(a) if order == "F" else a


def header(text, version=1):
    """A raw v1/v2 file prefix for the header dict 'text' (padded as NumPy does)."""
    body = text.encode("latin1")
    pre = 10 if version == 1 else 12
    body += b" " * ((64 - (pre + len(body) + 1) % 64) % 64) + b"\n"
    size = struct.pack("<H", len(body)) if version == 1 else struct.pack("<I", len(body))
    return b"\x93NUMPY" + bytes([version, 0]) + size + body


def main():
    os.makedirs(OUT, exist_ok=True)
    files = {
        "ok_f4_scalar.npy": npy(np.array(0, dtype="<f4")),
        "ok_f4_1d_5.npy": npy(counting((5,), "<f4")),
        "ok_f4_2x3.npy": npy(counting((2, 3), "<f4")),
        "ok_f8_2x3x4.npy": npy(counting((2, 3, 4), "<f8")),
        "ok_f8_1x1x1x1x5.npy": npy(counting((1, 1, 1, 1, 5), "<f8")),
        "ok_f4_empty_0x3.npy": npy(counting((0, 3), "<f4")),
        "ok_f8_empty_0.npy": npy(counting((0,), "<f8")),
        "ok_f4_fortran_3x4.npy": npy(counting((3, 4), "<f4", "F")),
        "ok_f8_fortran_2x3x2.npy": npy(counting((2, 3, 2), "<f8", "F")),
        "ok_f4_v2_4x2.npy": npy(counting((4, 2), "<f4"), version=(2, 0)),
        "ok_f8_v3_3.npy": npy(counting((3,), "<f8"), version=(3, 0)),
        "ok_f4_big_endian_2x3.npy": npy(counting((2, 3), ">f4")),
        "ok_f8_big_endian_4.npy": npy(counting((4,), ">f8")),
        "ok_f8_big_endian_fortran_2x3x2.npy": npy(counting((2, 3, 2), ">f8", "F")),
        "ok_f4_12_dims.npy": npy(counting((1,) * 10 + (2, 3), "<f4")),
        # valid NumPy files moongrad refuses: more than 12 dimensions
        "bad_dims_13_numpy.npy": npy(counting((1,) * 12 + (2,), "<f8")),
        "bad_dims_32_numpy.npy": npy(counting((1,) * 31 + (2,), "<f4")),
    }
    good = files["ok_f4_2x3.npy"]
    f4 = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }"
    files.update({
        "bad_empty.npy": b"",
        "bad_magic.npy": b"\x93NUMPX" + good[6:],
        "bad_version_9.npy": good[:6] + b"\x09\x00" + good[8:],
        "bad_header_truncated.npy": good[:40],
        "bad_hlen_too_long.npy": good[:8] + b"\xff\xff" + good[10:],
        "bad_data_truncated.npy": good[:-1],
        "bad_data_extra.npy": good + b"\x00\x00\x00\x00",
        "bad_dtype_i4.npy": npy(np.arange(6, dtype="<i4").reshape(2, 3)),
        "bad_dtype_big_endian_i4.npy": npy(np.arange(6, dtype=">i4").reshape(2, 3)),
        "bad_dtype_big_endian_f2.npy": npy(np.arange(6, dtype=">f2").reshape(2, 3)),
        "bad_not_a_dict.npy": header("['descr', '<f4']") + bytes(24),
        "bad_unknown_key.npy": header("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1, }") + bytes(24),
        "bad_missing_shape.npy": header("{'descr': '<f4', 'fortran_order': False, }") + bytes(4),
        "bad_fortran_maybe.npy": header("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (6,), }") + bytes(24),
        "bad_shape_negative.npy": header(f4 % "(-6,)") + bytes(24),
        "bad_shape_overflow.npy": header(f4 % "(4294967296, 4294967296, 4294967296)") + bytes(24),
        "bad_shape_13_dims.npy": header(f4 % ("(" + "1, " * 13 + ")")) + bytes(4),
        "bad_shape_unclosed.npy": header(f4 % "(2, 3") + bytes(24),
        "bad_descr_unterminated.npy": header("{'descr': '<f4") + bytes(24),
        "bad_descr_nul.npy": header("{'descr': '<f4\0', 'fortran_order': False, 'shape': (6,), }") + bytes(24),
        "bad_descr_nul_junk.npy": header("{'descr': '<f4\0junk', 'fortran_order': False, 'shape': (6,), }") + bytes(24),
        "bad_key_nul.npy": header("{'descr\0': '<f4', 'fortran_order': False, 'shape': (6,), }") + bytes(24),
        "bad_v2_hlen_huge.npy": b"\x93NUMPY\x02\x00\xff\xff\xff\xff" + bytes(64),
    })
    for old in os.listdir(OUT):                   # inputs the fuzzer found stay (FOUND)
        if old not in FOUND:
            os.remove(os.path.join(OUT, old))
    for name, data in sorted(files.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(files)} seed files in {OUT}")


if __name__ == "__main__":
    main()
