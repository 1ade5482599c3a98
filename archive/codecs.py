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

import zstandard

from weightvault.archive import ids, rans
from weightvault.archive._lazy import numpy as np
from weightvault.archive.native import NONE, native
from weightvault.archive.safetensors_header import (
    DTYPE_BITS,
    FLOAT_DTYPES,
    build_file,
    parse_header_bytes,
)
from weightvault.errors import ChunkCorruptError, InvalidSafetensorsError

CHUNK_FORMAT = "weightvault.chunk/1"
ZSTD_LEVEL = 3
# Float planes: level 1 stores MiniLM's fp32 planes smaller than level 3 (the
# exponent plane: 8.34 MB at level 1, 9.31 MB at level 3) and twice as fast.
FLOAT_LEVEL = 1
# Small non-tensor chunks (configs, tokenizers) are few and compress well; a
# higher level costs little once (MiniLM's text files: 330 KB at -3, 300 KB at -9, 273 KB at -19,
# but -19 takes 1.9 s of CPU against 0.2 s for -9).
SMALL_CHUNK = 1 << 20
SMALL_LEVEL = 9
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


def container(meta: dict, streams: dict[str, bytes]) -> bytes:
    """Build a chunk container (a safetensors file of U8 streams)."""
    return _container(meta, streams)


def chunk_meta(chunk_id: str, raw_len: int, codec: str, **extra) -> dict:
    """The ``__metadata__`` every container carries, plus codec parameters."""
    return _meta(chunk_id, raw_len, codec, **extra)


def _meta(chunk_id: str, raw_len: int, codec: str, **extra) -> dict:
    m = {"format": CHUNK_FORMAT, "id": chunk_id, "hash": ids.HASH_NAME, "raw_len": str(raw_len), "codec": codec}
    m.update({k: str(v) for k, v in extra.items()})
    return m


def _encode_planes(raw, itemsize: int, level: int) -> tuple[dict[str, bytes], list[str]]:
    if native is not None and itemsize in (1, 2, 4, 8):
        planes = native.planes_split(raw, None, itemsize, NONE)
    else:
        planes = [np.ascontiguousarray(row) for row in np.frombuffer(raw, dtype=np.uint8).reshape(-1, itemsize).T]
    return compress_streams({f"p{k}": p for k, p in enumerate(planes)}, level)


def encode_chunk(raw, chunk_id: str, *, dtype: str | None = None, level: int | None = None) -> EncodedChunk:
    """Encode raw bytes, keeping the smallest of the float codec, plain zstd and raw.

    F32/BF16 chunks try ``fsplit`` (archive/floatsplit.py), other floats
    ``bytegroup``; plain zstd is also tried when the float codec saves little
    (constant or repetitive tensors) and for everything else.

    Args:
        raw: the chunk's raw bytes (bytes, memoryview or mmap slice).
        chunk_id: ``ids.content_id(raw)``.
        dtype: the safetensors dtype of the tensor it comes from, or None.
        level: zstd level; default FLOAT_LEVEL for float planes, ZSTD_LEVEL otherwise.
    Returns:
        The container to store.
    """
    from weightvault.archive import floatsplit

    raw_len = len(raw)
    best = None
    enc = floatsplit.encode(raw, chunk_id, dtype, FLOAT_LEVEL if level is None else level)
    itemsize = itemsize_for(dtype)
    if enc is None and itemsize > 1 and raw_len % itemsize == 0 and raw_len >= 4 * itemsize:
        lvl = FLOAT_LEVEL if level is None else level
        streams, kinds = _encode_planes(raw, itemsize, lvl)
        meta = _meta(chunk_id, raw_len, "bytegroup", itemsize=itemsize, planes=",".join(kinds), level=lvl)
        enc = EncodedChunk(_container(meta, streams), "bytegroup", raw_len)
    if enc is not None and len(enc.container) < raw_len:
        best = enc
    # plain zstd wins on constant or repetitive tensors (a float codec still
    # spends a plane per byte); trying it only then keeps float ingest fast
    if best is None or raw_len <= 64 << 10 or len(best.container) < raw_len // 8:
        lvl = (SMALL_LEVEL if raw_len <= SMALL_CHUNK and best is None else ZSTD_LEVEL) if level is None else level
        z = zstd_compress(raw, lvl)
        enc = EncodedChunk(_container(_meta(chunk_id, raw_len, "zstd", level=lvl), {"data": z}), "zstd", raw_len)
        if len(z) < raw_len and (best is None or len(enc.container) < len(best.container)):
            best = enc
    if best is not None:
        return best
    return EncodedChunk(_container(_meta(chunk_id, raw_len, "raw"), {"data": bytes(raw)}), "raw", raw_len)


def compress_streams(arrays: dict, level: int, *, try_rans: bool = True) -> tuple[dict[str, bytes], list[str]]:
    """Store each stream in the smallest of zstd, rANS (archive/rans.py, unless ``try_rans`` is false) and raw.

    Returns:
        (name -> stored bytes, kinds in the same order: ``zstd``, ``rans`` or ``raw``).
    """
    streams, kinds = {}, []
    for name, a in arrays.items():
        data = a.tobytes() if hasattr(a, "tobytes") else bytes(a)
        z = zstd_compress(data, level) if data else b""
        if data and len(z) < len(data):
            streams[name], kind = z, "zstd"
        else:
            streams[name], kind = data, "raw"
        r = rans.maybe_encode(data, len(streams[name])) if data and try_rans else None
        if r is not None:
            streams[name], kind = r, "rans"
        kinds.append(kind)
    return streams, kinds


def zstd_decompress_bounded(frame: bytes, cap: int, chunk_id: str) -> bytes:
    """Decompress a frame that must declare its size, and at most ``cap`` bytes."""
    try:
        claimed = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise ChunkCorruptError(chunk_id, f"not a zstd frame ({e})") from None
    if claimed < 0 or claimed > cap:
        raise ChunkCorruptError(chunk_id, f"zstd frame claims {claimed} bytes, at most {cap} allowed")
    if claimed == 0:
        return b""
    return zstd_decompress_capped(frame, claimed, chunk_id)


def decompress_streams(h: "ChunkHeader", container: bytes, chunk_id: str, kinds: dict[str, str],
                       caps: dict[str, int]) -> dict[str, bytes]:
    """Read named streams of a container, each ``zstd`` or ``rans`` (capped) or ``raw``."""
    out = {}
    for name, kind in kinds.items():
        s = _stream(h, container, name, chunk_id)
        if kind == "zstd":
            s = zstd_decompress_bounded(s, caps[name], chunk_id)
        elif kind == "rans":
            s = rans.decode(s, caps[name], chunk_id)
        elif kind != "raw" or len(s) > caps[name]:
            raise ChunkCorruptError(chunk_id, f"stream {name!r} has a bad kind or length")
        out[name] = s
    return out


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

    def size_problem(self, stored_size: int) -> str | None:
        """Why a container of ``stored_size`` bytes cannot hold what this header says, or None
        (``verify --structure``, and snapshot before it reuses a stored chunk)."""
        total = sum(e - b for b, e in self.streams.values())
        if self.codec == "raw" and total != self.raw_len:
            return f"raw container holds {total} bytes, expected {self.raw_len}"
        if max((e for _, e in self.streams.values()), default=0) > stored_size:
            return "container streams run past its end (truncated)"
        return None


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
    return memoryview(container)[b:e]  # no copy: zstd and the transforms read buffers


def _decode_raw(h, container, chunk_id, get_raw):
    return bytes(_stream(h, container, "data", chunk_id))


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
    planes = []
    for k, kind in enumerate(kinds):
        s = _stream(h, container, f"{prefix}{k}", chunk_id)
        if kind == "zstd":
            s = zstd_decompress_capped(s, n, chunk_id)
        elif kind == "rans":
            s = rans.decode(s, n, chunk_id)
        if kind not in ("zstd", "rans", "raw") or len(s) != n:
            raise ChunkCorruptError(chunk_id, f"plane {k} has a bad kind or length")
        planes.append(s)
    if native is not None and itemsize in (1, 2, 4, 8):
        return np.frombuffer(native.planes_join(tuple(planes), None, NONE), dtype=np.uint8)
    out = np.empty((n, itemsize), dtype=np.uint8)
    for k, s in enumerate(planes):
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
    raw = _decode_with(h, container, chunk_id, get_raw)
    _verify(raw, chunk_id)
    return raw


def _decode_with(h: "ChunkHeader", container, chunk_id: str, get_raw) -> bytes:
    """Run the header's codec; the result has the recorded length (not yet hash-checked)."""
    decoder = DECODERS.get(h.codec)
    if decoder is None:
        raise ChunkCorruptError(chunk_id, f"unknown codec {h.codec!r}", hint="upgrade weightvault")
    raw = decoder(h, container, chunk_id, get_raw)
    if len(raw) != h.raw_len:
        raise ChunkCorruptError(chunk_id, f"decoded {len(raw)} bytes, expected {h.raw_len}")
    return raw


def _verify(raw, chunk_id: str) -> None:
    if ids.content_id(raw) != chunk_id:
        raise ChunkCorruptError(chunk_id, "content hash does not match its ID (bit rot or tampering)")


# codec name -> decoder(header, container, chunk_id, get_raw, dest) that writes
# the raw bytes into the writable buffer ``dest`` (no intermediate copy);
# codecs without one are decoded and copied.
DECODERS_INTO: dict = {}


def decode_chunk_into(container: bytes, chunk_id: str, dest, get_raw=None) -> None:
    """Decode a container straight into ``dest`` (a writable buffer of the raw length) and verify it.

    Used where the bytes have a home already (a tensor's memory): saves a copy
    of every byte. On any error ``dest`` holds garbage and the error names the chunk.

    Raises:
        ChunkCorruptError: as :func:`decode_chunk`.
    """
    dest = memoryview(dest).cast("B")
    h = parse_container(container, chunk_id)
    if h.raw_len != len(dest):
        raise ChunkCorruptError(chunk_id, f"container raw_len {h.raw_len} != recorded {len(dest)}")
    into = DECODERS_INTO.get(h.codec)
    if into is None or not into(h, container, chunk_id, get_raw, dest):
        dest[:] = _decode_with(h, container, chunk_id, get_raw)
    _verify(dest, chunk_id)


# Codecs living in their own modules register their decoders on import.
from weightvault.archive import cast, delta, floatsplit  # noqa: E402,F401
