"""Chunk containers: how a chunk's raw bytes are stored, and read back verified.

Every stored chunk object is itself a valid safetensors file (see
docs/design.md, "Chunk objects"). Its ``__metadata__`` says how to rebuild the
raw bytes; its tensors are U8 byte streams, each a zstd frame or raw bytes.
Anyone with zstd and a safetensors reader can decode a chunk without
weightvault:

- ``raw``: tensor ``data`` is the raw bytes.
- ``zstd``: tensor ``data`` is one zstd frame of the raw bytes.
- ``bytegroup``: the raw bytes are ``itemsize``-byte elements; tensor ``pK``
  holds byte K of every element (the exponent-carrying byte of a float apart
  from its mantissa bytes), each plane ``zstd`` or ``raw`` as ``planes`` lists.

Decoding never trusts a frame's claimed size: output is capped at the
recorded raw length, and the result must hash to the chunk's ID.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import zstandard

from weightvault.archive import ids
from weightvault.archive.safetensors_header import (
    DTYPE_BITS,
    FLOAT_DTYPES,
    build_file,
    parse_header_bytes,
)
from weightvault.errors import ChunkCorruptError, InvalidSafetensorsError

CHUNK_FORMAT = "weightvault.chunk/1"
ZSTD_LEVEL = 3
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not safe to share between threads.
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def zstd_compress(data, level: int = ZSTD_LEVEL) -> bytes:
    return _compressor(level).compress(data)


def zstd_decompress_capped(frame: bytes, expected_len: int, chunk_id: str) -> bytes:
    """Decompress one frame whose output must be exactly ``expected_len`` bytes.

    A frame that claims another size, or produces more or fewer bytes, is
    rejected before (or instead of) allocating what it claims.
    """
    try:
        claimed = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise ChunkCorruptError(chunk_id, f"not a zstd frame ({e})") from None
    if claimed not in (-1, expected_len):
        raise ChunkCorruptError(
            chunk_id, f"zstd frame claims {claimed} bytes, expected {expected_len}"
        )
    if expected_len == 0:
        raise ChunkCorruptError(chunk_id, "zstd frame for an empty chunk")
    try:
        # With a known content size it was checked above; without one,
        # max_output_size bounds the allocation.
        out = _decompressor().decompress(frame, max_output_size=expected_len)
    except zstandard.ZstdError as e:
        raise ChunkCorruptError(chunk_id, f"zstd frame does not decode ({e})") from None
    if len(out) != expected_len:
        raise ChunkCorruptError(chunk_id, f"decoded {len(out)} bytes, expected {expected_len}")
    return out


@dataclass(frozen=True)
class EncodedChunk:
    """A chunk ready to store.

    Attributes:
        container: the object bytes (a safetensors file).
        codec: the codec chosen.
        raw_len: length of the raw bytes.
        base: the chunk this one is stored relative to (delta codecs), or None.
    """

    container: bytes
    codec: str
    raw_len: int
    base: str | None = None


def itemsize_for(dtype: str | None) -> int:
    """Bytes per element worth byte-grouping, or 1 when grouping cannot help."""
    if dtype in FLOAT_DTYPES and DTYPE_BITS[dtype] % 8 == 0 and DTYPE_BITS[dtype] >= 16:
        return DTYPE_BITS[dtype] // 8
    return 1


def _container(meta: dict, streams: dict[str, bytes]) -> bytes:
    return build_file({k: ("U8", (len(v),), v) for k, v in streams.items()}, meta)


def _meta(chunk_id: str, raw_len: int, codec: str, **extra) -> dict:
    m = {"format": CHUNK_FORMAT, "id": chunk_id, "hash": ids.HASH_NAME, "raw_len": str(raw_len), "codec": codec}
    m.update({k: str(v) for k, v in extra.items()})
    return m


def _encode_planes(raw, itemsize: int, level: int) -> tuple[dict[str, bytes], list[str]]:
    arr = np.frombuffer(raw, dtype=np.uint8)
    planes = arr.reshape(-1, itemsize).T  # view; each row is one byte position
    streams, kinds = {}, []
    for k in range(itemsize):
        plane = np.ascontiguousarray(planes[k])
        z = zstd_compress(plane, level)
        if len(z) < plane.nbytes:
            streams[f"p{k}"], kind = z, "zstd"
        else:
            streams[f"p{k}"], kind = plane.tobytes(), "raw"
        kinds.append(kind)
    return streams, kinds


def encode_chunk(raw, chunk_id: str, *, dtype: str | None = None, level: int = ZSTD_LEVEL) -> EncodedChunk:
    """Encode raw bytes, keeping the smallest of byte-grouped zstd, zstd and raw.

    Args:
        raw: the chunk's raw bytes (bytes, memoryview or mmap slice).
        chunk_id: ``ids.content_id(raw)``.
        dtype: the safetensors dtype of the tensor it comes from, or None.
    Returns:
        The container to store.
    """
    raw_len = len(raw)
    itemsize = itemsize_for(dtype)
    if itemsize > 1 and raw_len % itemsize == 0 and raw_len >= 4 * itemsize:
        streams, kinds = _encode_planes(raw, itemsize, level)
        size = sum(len(v) for v in streams.values())
        if size < raw_len:
            meta = _meta(chunk_id, raw_len, "bytegroup", itemsize=itemsize, planes=",".join(kinds), level=level)
            return EncodedChunk(_container(meta, streams), "bytegroup", raw_len)
    else:
        z = zstd_compress(raw, level)
        if len(z) < raw_len:
            return EncodedChunk(_container(_meta(chunk_id, raw_len, "zstd", level=level), {"data": z}), "zstd", raw_len)
    return EncodedChunk(_container(_meta(chunk_id, raw_len, "raw"), {"data": bytes(raw)}), "raw", raw_len)


@dataclass(frozen=True)
class ChunkHeader:
    """What a container's header says, validated.

    Attributes:
        meta: the ``__metadata__`` map.
        streams: name -> (begin, end) absolute byte ranges in the container.
    """

    meta: dict
    streams: dict[str, tuple[int, int]]

    @property
    def codec(self) -> str:
        return self.meta["codec"]

    @property
    def raw_len(self) -> int:
        return int(self.meta["raw_len"])

    @property
    def base(self) -> str | None:
        return self.meta.get("base") or None


def parse_container(container: bytes, chunk_id: str) -> ChunkHeader:
    try:
        h = parse_header_bytes(container, len(container), f"chunk {chunk_id}")
    except InvalidSafetensorsError as e:
        raise ChunkCorruptError(chunk_id, e.reason) from None
    meta = h.metadata
    if meta.get("format") != CHUNK_FORMAT or meta.get("id") != chunk_id:
        raise ChunkCorruptError(chunk_id, "container metadata does not name this chunk")
    try:
        if int(meta["raw_len"]) < 0:
            raise ValueError
    except (KeyError, ValueError):
        raise ChunkCorruptError(chunk_id, "container has no valid raw_len") from None
    streams = {t.name: (t.begin, t.end) for t in h.tensors if t.dtype == "U8"}
    return ChunkHeader(dict(meta), streams)


# codec name -> decoder(header, container, chunk_id, get_raw) -> raw bytes.
# The engine registers delta and cast codecs here; get_raw(id) returns a
# verified raw chunk (a delta's base).
DECODERS: dict = {}


def _stream(h: ChunkHeader, container: bytes, name: str, chunk_id: str) -> bytes:
    if name not in h.streams:
        raise ChunkCorruptError(chunk_id, f"container lacks stream {name!r}")
    b, e = h.streams[name]
    return container[b:e]


def _decode_raw(h, container, chunk_id, get_raw):
    return _stream(h, container, "data", chunk_id)


def _decode_zstd(h, container, chunk_id, get_raw):
    return zstd_decompress_capped(_stream(h, container, "data", chunk_id), h.raw_len, chunk_id)


def decode_planes(h: ChunkHeader, container: bytes, chunk_id: str, prefix: str = "p") -> np.ndarray:
    """Rebuild an interleaved uint8 array from byte planes (shared by delta codecs)."""
    try:
        itemsize = int(h.meta["itemsize"])
        kinds = h.meta["planes"].split(",")
    except (KeyError, ValueError):
        raise ChunkCorruptError(chunk_id, "bytegroup container lacks itemsize/planes") from None
    if itemsize < 1 or len(kinds) != itemsize or h.raw_len % itemsize:
        raise ChunkCorruptError(chunk_id, "bytegroup parameters do not fit raw_len")
    n = h.raw_len // itemsize
    out = np.empty((n, itemsize), dtype=np.uint8)
    for k, kind in enumerate(kinds):
        s = _stream(h, container, f"{prefix}{k}", chunk_id)
        if kind == "zstd":
            s = zstd_decompress_capped(s, n, chunk_id)
        elif kind != "raw" or len(s) != n:
            raise ChunkCorruptError(chunk_id, f"plane {k} has a bad kind or length")
        out[:, k] = np.frombuffer(s, dtype=np.uint8)
    return out.reshape(-1)


def _decode_bytegroup(h, container, chunk_id, get_raw):
    return decode_planes(h, container, chunk_id).tobytes()


DECODERS.update({"raw": _decode_raw, "zstd": _decode_zstd, "bytegroup": _decode_bytegroup})


def decode_chunk(container: bytes, chunk_id: str, get_raw=None, *, expected_len: int | None = None) -> bytes:
    """Decode a container back to raw bytes and verify them against ``chunk_id``.

    Args:
        container: the stored object.
        chunk_id: the ID it is stored under.
        get_raw: callable(id) -> raw bytes of another chunk (delta bases).
        expected_len: the raw length the manifest recorded, when known.
    Raises:
        ChunkCorruptError: on any inconsistency, including a hash mismatch.
    """
    h = parse_container(container, chunk_id)
    if expected_len is not None and h.raw_len != expected_len:
        raise ChunkCorruptError(chunk_id, f"container raw_len {h.raw_len} != recorded {expected_len}")
    decoder = DECODERS.get(h.codec)
    if decoder is None:
        raise ChunkCorruptError(chunk_id, f"unknown codec {h.codec!r}", hint="upgrade weightvault")
    raw = decoder(h, container, chunk_id, get_raw)
    if len(raw) != h.raw_len:
        raise ChunkCorruptError(chunk_id, f"decoded {len(raw)} bytes, expected {h.raw_len}")
    if ids.content_id(raw) != chunk_id:
        raise ChunkCorruptError(chunk_id, "content hash does not match its ID (bit rot or tampering)")
    return raw
