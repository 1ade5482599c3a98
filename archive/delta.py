"""Delta codecs: a chunk stored relative to a base chunk of an earlier version.

A fine-tune changes every weight a little: the bit patterns of old and new
share their sign, exponent and top mantissa bits, so their difference has
near-empty high byte planes. Two transforms, chosen per chunk (whichever
stores smaller; measured on MiniLM: the integer difference wins on fp32
fine-tunes, XOR on bf16):

- ``delta-xor``: d = new ^ base, per element of ``itemsize`` bytes.
- ``delta-sub``: d = zigzag(new - base) (wrapping integer difference of the
  bit patterns; zigzag maps small negative differences to small numbers so
  the high planes stay zero).

d is byte-grouped (plane ``pK`` holds byte K of every element) and each plane
is zstd-compressed or kept raw. Container metadata: ``base`` (the base chunk's
ID, which verify and GC follow), ``depth`` (hops to a chunk that needs no
base; the encoder keeps it at most MAX_CHAIN so restore reads a bounded
chain), ``itemsize``, ``kinds``, ``level``.

The chunk's ID is still the hash of its raw bytes; decoding checks the base
against its own ID (store.read_chunk) and the result against the chunk's ID.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


from weightvault.archive._lazy import numpy as np
from weightvault.archive import codecs
from weightvault.archive.native import SUB as _N_SUB
from weightvault.archive.native import XOR as _N_XOR
from weightvault.archive.native import native
from weightvault.errors import ChunkCorruptError, ChunkMissingError, DeltaBaseMissingError

XOR, SUB = "delta-xor", "delta-sub"
# A full chunk at least every MAX_CHAIN hops: restoring the newest of a long
# series decodes at most this many bases per chunk.
MAX_CHAIN = 8
# Chunks at least this large choose XOR or SUB on every SAMPLE_STRIDE-th element.
# On the MiniLM full fine-tune every 8th, 32nd and 64th element all picked the
# better codec for each of the 49 changed chunks; 32 keeps a margin at a
# quarter of the sampling cost of 8.
SAMPLE_FROM = 256 << 10
SAMPLE_STRIDE = 32
_UINT = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}
_INT = {1: "i1", 2: "<i2", 4: "<i4", 8: "<i8"}


class BaseCache:
    """A small LRU of verified raw chunks, bounded in bytes.

    Content-addressed entries never go stale; the bound keeps memory flat when
    a restore walks many chains. Thread-safe.
    """

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, chunk_id: str) -> bytes | None:
        with self._lock:
            v = self._d.get(chunk_id)
            if v is not None:
                self._d.move_to_end(chunk_id)
            return v

    def put(self, chunk_id: str, raw: bytes) -> None:
        if len(raw) > self.max_bytes // 4:
            return
        with self._lock:
            if chunk_id in self._d:
                return
            self._d[chunk_id] = raw
            self._size += len(raw)
            while self._size > self.max_bytes:
                _, old = self._d.popitem(last=False)
                self._size -= len(old)


BASES = BaseCache()


def fetch_base(get_raw, base_id: str, chunk_id: str, expected_len: int | None = None) -> bytes:
    """Return a base chunk's verified raw bytes (cached); a missing base names itself.

    Raises:
        DeltaBaseMissingError: the base is not in the store.
    """
    raw = BASES.get(base_id)
    if raw is not None:
        return raw
    if get_raw is None:
        raise ChunkCorruptError(chunk_id, f"needs base chunk {base_id} but no store was given")
    try:
        raw = get_raw(base_id)
    except DeltaBaseMissingError:
        raise
    except ChunkMissingError as e:
        if e.chunk_id != base_id:
            raise
        raise DeltaBaseMissingError(base_id, chunk_id) from None
    if expected_len is not None and len(raw) != expected_len:
        raise ChunkCorruptError(chunk_id, f"base {base_id} has {len(raw)} bytes, expected {expected_len}")
    raw = bytes(raw)
    BASES.put(base_id, raw)
    return raw


def transform(raw, base: bytes, itemsize: int, codec: str) -> np.ndarray:
    """The delta d of ``raw`` against ``base`` as a uint array."""
    u = np.frombuffer(raw, dtype=_UINT[itemsize])
    b = np.frombuffer(base, dtype=_UINT[itemsize])
    if codec == XOR:
        return u ^ b
    d = (u - b).view(_INT[itemsize])
    return ((d << 1) ^ (d >> (itemsize * 8 - 1))).view(_UINT[itemsize])


def untransform(d: np.ndarray, base: bytes, itemsize: int, codec: str) -> bytes:
    b = np.frombuffer(base, dtype=_UINT[itemsize])
    if codec == XOR:
        return (d ^ b).tobytes()
    one = d.dtype.type(1)
    diff = (d >> one) ^ (np.zeros_like(d) - (d & one))
    return (diff + b).tobytes()


def _planes(d: np.ndarray, itemsize: int) -> dict[str, np.ndarray]:
    pb = d.view(np.uint8).reshape(-1, itemsize)
    return {f"p{k}": np.ascontiguousarray(pb[:, k]) for k in range(itemsize)}


def delta_planes(raw, base: bytes, itemsize: int, codec: str) -> dict:
    """Byte planes ``p0``.. of the delta of ``raw`` against ``base`` (one C pass when built)."""
    if native is not None:
        planes = native.planes_split(raw, base, itemsize, _N_XOR if codec == XOR else _N_SUB)
        return {f"p{k}": p for k, p in enumerate(planes)}
    return _planes(transform(raw, base, itemsize, codec), itemsize)


def encode(raw, chunk_id: str, base: bytes, base_id: str, *, itemsize: int, base_depth: int = 0,
           codecs_to_try: tuple[str, ...] = (SUB, XOR), level: int | None = None) -> codecs.EncodedChunk | None:
    """Encode ``raw`` as the smaller of the given delta codecs against ``base``.

    Args:
        raw: the new chunk's raw bytes.
        chunk_id: its ID.
        base: the base chunk's raw bytes (same length).
        base_id: the base chunk's ID, recorded as ``base``.
        itemsize: element size to group bytes by (1, 2, 4 or 8).
        base_depth: the base's own chain depth (0 for a full chunk).
    Returns:
        The smallest delta container, or None when a delta cannot apply.
    """
    if len(raw) != len(base) or itemsize not in _UINT or len(raw) % itemsize or not raw:
        return None
    level = codecs.FLOAT_LEVEL if level is None else level
    if len(codecs_to_try) > 1 and len(raw) >= SAMPLE_FROM:
        codecs_to_try = (_pick_by_sample(raw, base, itemsize, codecs_to_try, level),)
    best = None
    for codec in codecs_to_try:
        streams, kinds = codecs.compress_streams(delta_planes(raw, base, itemsize, codec), level)
        meta = codecs.chunk_meta(chunk_id, len(raw), codec, base=base_id, depth=base_depth + 1,
                                 itemsize=itemsize, kinds=",".join(kinds), level=level)
        enc = codecs.EncodedChunk(codecs.container(meta, streams), codec, len(raw), base_id)
        if best is None or len(enc.container) < len(best.container):
            best = enc
    return best


def _pick_by_sample(raw, base: bytes, itemsize: int, candidates: tuple[str, ...], level: int) -> str:
    """The codec whose planes compress smallest on an evenly spread 1/SAMPLE_STRIDE sample of the chunk.

    Encoding every candidate in full doubled delta ingest time; the choice on
    a sample agreed with the full choice on the MiniLM fine-tune series. The
    sample is sized with zstd alone: rANS per sample plane cost more time
    than it could change the choice.
    """
    # numpy's strided copy: 0.12 ms per 4 MiB chunk against a stepped memoryview slice's 0.27
    u = np.frombuffer(raw, dtype=_UINT[itemsize])[::SAMPLE_STRIDE].tobytes()
    b = np.frombuffer(base, dtype=_UINT[itemsize])[::SAMPLE_STRIDE].tobytes()
    sizes = {}
    for codec in candidates:
        streams, _ = codecs.compress_streams(delta_planes(u, b, itemsize, codec), level, try_rans=False)
        sizes[codec] = sum(len(v) for v in streams.values())
    return min(candidates, key=lambda c: (sizes[c], candidates.index(c)))


def chain_depth(h: codecs.ChunkHeader) -> int:
    """Hops from this chunk to one that needs no base (0 for a full chunk)."""
    try:
        return int(h.meta.get("depth", 1 if h.base else 0))
    except ValueError:
        return MAX_CHAIN


def _decode(h, container, chunk_id, get_raw, dest=None):
    if dest is not None and native is None:
        return False  # decode_chunk_into copies what the numpy path returns
    base_id = h.base
    try:
        itemsize = int(h.meta["itemsize"])
        kinds = h.meta["kinds"].split(",")
    except (KeyError, ValueError):
        raise ChunkCorruptError(chunk_id, "delta container lacks itemsize/kinds") from None
    if not base_id or itemsize not in _UINT or len(kinds) != itemsize or h.raw_len % itemsize:
        raise ChunkCorruptError(chunk_id, "delta parameters do not fit")
    n = h.raw_len // itemsize
    streams = codecs.decompress_streams(h, container, chunk_id, {f"p{k}": kinds[k] for k in range(itemsize)},
                                        {f"p{k}": n for k in range(itemsize)})
    for k in range(itemsize):
        if len(streams[f"p{k}"]) != n:
            raise ChunkCorruptError(chunk_id, f"delta plane {k} has {len(streams[f'p{k}'])} bytes, expected {n}")
    base = fetch_base(get_raw, base_id, chunk_id, h.raw_len)
    if len(base) != h.raw_len:
        raise ChunkCorruptError(chunk_id, f"delta base {base_id} has {len(base)} bytes, expected {h.raw_len}")
    if native is not None:
        planes = tuple(streams[f"p{k}"] for k in range(itemsize))
        into = () if dest is None else (dest,)
        return native.planes_join(planes, base, _N_XOR if h.codec == XOR else _N_SUB, *into)
    pb = np.empty((n, itemsize), dtype=np.uint8)
    for k in range(itemsize):
        pb[:, k] = np.frombuffer(streams[f"p{k}"], dtype=np.uint8)
    return untransform(pb.reshape(-1).view(_UINT[itemsize]), base, itemsize, h.codec)


codecs.DECODERS[XOR] = _decode
codecs.DECODERS[SUB] = _decode
codecs.DECODERS_INTO[XOR] = _decode
codecs.DECODERS_INTO[SUB] = _decode
