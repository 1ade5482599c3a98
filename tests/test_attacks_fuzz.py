"""Hypothesis fuzzing of the safetensors header parser and the pickle scanner.

The parser sees bytes from strangers: whatever it is given, it returns a
header whose tensors tile the data exactly, or raises InvalidSafetensorsError;
never another exception. The pickle scanner likewise only ever returns the
allowlisted globals or raises UnsafePickleError.
"""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightvault.archive.pickle_convert import ALLOWED_GLOBALS, scan_pickle
from weightvault.archive.safetensors_header import DTYPE_BITS, build_file, parse_header_bytes
from weightvault.errors import InvalidSafetensorsError, UnsafePickleError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(data: bytes) -> None:
    try:
        h = parse_header_bytes(data, len(data))
    except InvalidSafetensorsError:
        return
    pos = h.data_start
    for t in sorted(h.tensors, key=lambda t: t.begin):
        assert t.begin == pos
        pos = t.end
    assert pos == len(data)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_parse_or_typed_error(data):
    _check(data)


_entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(sorted(DTYPE_BITS) + ["F128", "", "f32"]),
    "shape": st.lists(st.one_of(st.integers(-2, 8), st.just(2**63), st.just(2**64 - 2)), max_size=3),
    "data_offsets": st.lists(st.integers(-4, 96), min_size=0, max_size=3),
})
_header = st.dictionaries(
    st.one_of(st.text(max_size=6), st.just("__metadata__")),
    st.one_of(_entry, st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers())),
              st.integers(), st.none()),
    max_size=4,
)


@FUZZ
@given(_header, st.binary(max_size=96), st.sampled_from(["exact", "short", "long", "huge"]))
def test_structured_headers_parse_or_typed_error(header, data, length_field):
    text = json.dumps(header).encode()
    n = {"exact": len(text), "short": max(len(text) - 3, 0), "long": len(text) + 5, "huge": 2**63}[length_field]
    _check(struct.pack("<Q", n) + text + data)


@FUZZ
@given(st.dictionaries(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="\x7f", blacklist_categories=("Cc",)), min_size=1, max_size=8),
    st.tuples(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL"]), st.lists(st.integers(0, 4), max_size=3)),
    max_size=5,
))
def test_valid_files_round_trip(spec):
    tensors = {}
    for name, (dtype, shape) in spec.items():
        n = 1
        for d in shape:
            n *= d
        tensors[name] = (dtype, tuple(shape), bytes(n * DTYPE_BITS[dtype] // 8))
    data = build_file(tensors, {"k": "v"})
    h = parse_header_bytes(data, len(data))
    assert {t.name: (t.dtype, t.shape, t.end - t.begin) for t in h.tensors} == \
        {k: (d, s, len(b)) for k, (d, s, b) in tensors.items()}


@FUZZ
@given(st.binary(max_size=300))
def test_pickle_scanner_never_crashes(data):
    try:
        seen = scan_pickle(b"\x80\x04" + data, "fuzz.pkl")
    except UnsafePickleError:
        return
    assert all(tuple(g.rsplit(".", 1)) in ALLOWED_GLOBALS for g in seen)
