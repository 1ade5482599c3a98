"""A strict reader for safetensors headers, and a minimal writer.

Format (huggingface/safetensors README): 8 bytes little-endian u64 ``N``, then
``N`` bytes of UTF-8 JSON mapping tensor names to ``{dtype, shape,
data_offsets}`` plus an optional ``__metadata__`` str->str map, then the data.

We parse files from strangers, so this reader is stricter than the reference
one: it rejects before allocating (N bounded by 100 MB and by the file size),
rejects duplicate JSON keys, NUL/control characters in names, non-string
metadata, leading whitespace, overlapping, gapped or out-of-range offsets and
trailing bytes (a polyglot file), and any shape whose element count times the
dtype width differs from the byte length.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

from weightvault.errors import InvalidSafetensorsError

MAX_HEADER_SIZE = 100_000_000  # the reference implementation's cap
MAX_ELEMENTS = 1 << 62

# dtype -> width in bits (sub-byte types pack; their byte length must be whole)
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
FLOAT_DTYPES = frozenset(
    {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F16", "BF16", "F32", "F64", "F4", "F6_E2M3", "F6_E3M2"}
)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header.

    Attributes:
        name: the tensor's name.
        dtype: safetensors dtype string (``F32``, ``BF16``, ...).
        shape: its shape.
        begin: absolute byte offset of its data in the file.
        end: absolute end offset (exclusive).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header.

    Attributes:
        header_len: N, the JSON length.
        data_start: 8 + N, where the data section begins.
        tensors: tensors sorted by offset; they tile the data section exactly.
        metadata: the ``__metadata__`` map (str -> str), or {}.
    """

    header_len: int
    data_start: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key {k!r}")
        seen[k] = v
    return seen


def _encodes(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _bad_name(name: str) -> str | None:
    if not name:
        return "empty tensor name"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "control or NUL character in tensor name"
    return None


def parse_header_bytes(head: bytes, file_size: int, path: str = "<bytes>") -> SafetensorsHeader:
    """Validate a header given its first ``8 + N`` bytes and the file size."""

    def bad(reason, tensor=None):
        return InvalidSafetensorsError(path, reason, tensor=tensor)

    if file_size < 8 or len(head) < 8:
        raise bad(f"file is {file_size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_SIZE:
        raise bad(f"header length {n} exceeds the {MAX_HEADER_SIZE}-byte limit")
    if 8 + n > file_size:
        raise bad(f"header length {n} runs past the end of the {file_size}-byte file")
    if len(head) < 8 + n:
        raise bad("truncated header")
    raw = head[8 : 8 + n]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"header is not UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.startswith("{"):
        raise bad("header does not start with '{'")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        raise bad(f"header is not valid JSON: {e}") from None
    except RecursionError:
        raise bad("header JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise bad("header is not a JSON object")
    if "\\ud" in text.lower():  # JSON may escape a lone UTF-16 surrogate, which no UTF-8 can hold
        for key, value in obj.items():
            for s in [key] + (list(value) + list(value.values()) if isinstance(value, dict) else []):
                if isinstance(s, str) and not _encodes(s):
                    raise bad("a name or value holds a lone UTF-16 surrogate (\\udXXX), which is not valid "
                              "Unicode", tensor=key if _encodes(key) else None)

    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad("__metadata__ must map strings to strings")
    for k, v in metadata.items():
        if "\x00" in k or "\x00" in v:
            raise bad("NUL character in __metadata__")

    data_start = 8 + n
    data_len = file_size - data_start
    tensors = [_parse_entry(name, entry, data_start, data_len, bad) for name, entry in obj.items()]
    tensors.sort(key=lambda t: (t.begin, t.end))
    expected = data_start
    for t in tensors:
        if t.begin != expected:
            kind = "overlaps the previous tensor" if t.begin < expected else "leaves a gap before it"
            raise bad(f"data_offsets {kind}", t.name)
        expected = t.end
    if expected != file_size:
        raise bad(f"{file_size - expected} trailing bytes after the last tensor")
    return SafetensorsHeader(n, data_start, tuple(tensors), dict(metadata))


def _parse_entry(name, entry, data_start, data_len, bad) -> TensorInfo:
    why = _bad_name(name)
    if why:
        raise bad(why, name)
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad("entry must have exactly dtype, shape and data_offsets", name)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BITS:
        raise bad(f"unknown dtype {dtype!r}", name)
    if not isinstance(shape, list) or not all(
        type(d) is int and 0 <= d < MAX_ELEMENTS for d in shape
    ):
        raise bad("shape must be a list of non-negative integers", name)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
    ):
        raise bad("data_offsets must be two non-negative integers", name)
    begin, end = offsets
    if begin > end:
        raise bad(f"data_offsets [{begin}, {end}] are reversed", name)
    if end > data_len:
        raise bad(f"data_offsets end {end} is past the end of the data ({data_len} bytes)", name)
    n_el = math.prod(shape)
    if n_el >= MAX_ELEMENTS:
        raise bad("shape product overflows", name)
    bits = n_el * DTYPE_BITS[dtype]
    if bits % 8:
        raise bad(f"{n_el} elements of {dtype} do not fill whole bytes", name)
    if bits // 8 != end - begin:
        raise bad(
            f"shape {shape} x {dtype} is {bits // 8} bytes but data_offsets span {end - begin}",
            name,
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def read_header(path, file_size: int | None = None) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path``.

    >>> # h = read_header("model.safetensors"); h.tensors[0].name
    """
    import os

    path = str(path)
    size = os.path.getsize(path) if file_size is None else file_size
    with open(path, "rb") as f:
        first = f.read(8)
        if len(first) < 8 or size < 8:
            raise InvalidSafetensorsError(path, f"file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", first)
        if n > MAX_HEADER_SIZE or 8 + n > size:
            return parse_header_bytes(first, size, path)  # raises the precise error
        head = first + f.read(n)
    return parse_header_bytes(head, size, path)


def build_file(tensors: dict[str, tuple[str, tuple[int, ...], bytes]], metadata: dict | None = None) -> bytes:
    """Serialise tensors ``{name: (dtype, shape, raw bytes)}`` to safetensors bytes.

    Tensors are laid out in name order; the header is space-padded to 8 bytes,
    as the reference writer does. Used for chunk containers.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    order = sorted(tensors)
    for name in order:
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    parts = [struct.pack("<Q", len(text)), text]
    parts.extend(tensors[name][2] for name in order)
    return b"".join(parts)
