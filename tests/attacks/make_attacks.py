"""Generate the hostile inputs of tests/test_attacks.py (in the spirit of safetensors' attacks/).

Run ``python tests/attacks/make_attacks.py DIR`` to write them out for a look;
the tests call :func:`safetensors_attacks` and :func:`name_attacks` directly.
Each case is (folder-relative file name, file bytes, the typed error expected).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path


def st(header: dict | bytes | str, data: bytes = b"", *, raw_len: int | None = None) -> bytes:
    """A safetensors file from a header (dict -> JSON) and data; raw_len overrides the length field."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    n = len(header) if raw_len is None else raw_len
    return struct.pack("<Q", n) + header + data


def t(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# name -> (bytes, expected error class name)
def safetensors_attacks() -> dict[str, tuple[bytes, str]]:
    ok8 = b"\x00" * 8
    return {
        "header_over_100mb": (struct.pack("<Q", 100_000_001) + b"{}", "InvalidSafetensorsError"),
        "header_huge_u64": (struct.pack("<Q", 2**64 - 1) + b"{}", "InvalidSafetensorsError"),
        "file_under_8_bytes": (b"\x02\x00\x00", "InvalidSafetensorsError"),
        "empty_file": (b"", "InvalidSafetensorsError"),
        "header_past_eof": (st('{"a":1}', raw_len=4096), "InvalidSafetensorsError"),
        "header_not_utf8": (st(b"{\"\xff\xfe\": 1}"), "InvalidSafetensorsError"),
        "header_not_json": (st("{this is not json"), "InvalidSafetensorsError"),
        "header_json_array": (st("[1, 2, 3]"), "InvalidSafetensorsError"),
        "header_leading_space": (st(' {"a": ' + json.dumps(t()) + "}", ok8), "InvalidSafetensorsError"),
        "duplicate_keys": (st('{"a": %s, "a": %s}' % (json.dumps(t()), json.dumps(t())), ok8),
                           "InvalidSafetensorsError"),
        "overlapping_offsets": (st({"a": t(offsets=(0, 8)), "b": t(offsets=(4, 12))}, b"\x00" * 12),
                                "InvalidSafetensorsError"),
        "gapped_offsets": (st({"a": t(offsets=(0, 8)), "b": t(offsets=(12, 20))}, b"\x00" * 20),
                           "InvalidSafetensorsError"),
        "offsets_past_data": (st({"a": t(offsets=(0, 8))}, b"\x00" * 4), "InvalidSafetensorsError"),
        "offsets_reversed": (st({"a": t(offsets=(8, 0))}, ok8), "InvalidSafetensorsError"),
        "offsets_negative": (st({"a": t(offsets=(-8, 0))}, ok8), "InvalidSafetensorsError"),
        "offsets_not_ints": (st({"a": t(offsets=("0", "8"))}, ok8), "InvalidSafetensorsError"),
        "trailing_bytes_polyglot": (st({"a": t()}, ok8 + b"<script>alert(1)</script>"),
                                    "InvalidSafetensorsError"),
        "shape_product_overflows": (st({"a": t(shape=(2, 2**64 - 2), offsets=(0, 8))}, ok8),
                                    "InvalidSafetensorsError"),
        "shape_product_wraps_to_small": (st({"a": t("U8", shape=(2**32, 2**32), offsets=(0, 8))}, ok8),
                                         "InvalidSafetensorsError"),
        "shape_negative": (st({"a": t(shape=(-2,))}, ok8), "InvalidSafetensorsError"),
        "dtype_length_mismatch": (st({"a": t("F32", shape=(3,), offsets=(0, 8))}, ok8), "InvalidSafetensorsError"),
        "dtype_unknown": (st({"a": t("F128")}, ok8), "InvalidSafetensorsError"),
        "subbyte_dtype_misaligned": (st({"a": t("F4", shape=(3,), offsets=(0, 2))}, b"\x00\x00"),
                                     "InvalidSafetensorsError"),
        "nul_in_tensor_name": (st({"a\x00b": t()}, ok8), "InvalidSafetensorsError"),
        "control_char_in_tensor_name": (st({"a\nb": t()}, ok8), "InvalidSafetensorsError"),
        "empty_tensor_name": (st({"": t()}, ok8), "InvalidSafetensorsError"),
        "nul_in_metadata": (st({"__metadata__": {"k": "v\x00"}, "a": t()}, ok8), "InvalidSafetensorsError"),
        "metadata_not_strings": (st({"__metadata__": {"k": 1}, "a": t()}, ok8), "InvalidSafetensorsError"),
        "entry_extra_field": (st({"a": {**t(), "extra": 1}}, ok8), "InvalidSafetensorsError"),
        "entry_not_object": (st({"a": [1, 2]}, ok8), "InvalidSafetensorsError"),
    }


def name_attacks() -> dict[str, tuple[str, str]]:
    """File names a folder on Linux can hold but an archive must refuse: name -> (file name, error)."""
    return {
        "backslash_traversal": ("..\\..\\evil.json", "UnsafePathError"),
        "newline_in_name": ("evil\nname.json", "UnsafePathError"),
        "dot_git_file": (".git", "UnsafePathError"),
        "drive_letter": ("C:evil.json", "UnsafePathError"),
    }


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "attacks-out")
    for name, (data, _) in safetensors_attacks().items():
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.safetensors").write_bytes(data)
    print(f"wrote {len(safetensors_attacks())} cases under {out}")
