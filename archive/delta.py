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

Float pieces of at least 2 * MIN_SEG elements are stored as ``delta-xor-exp``
or ``delta-sub-exp``: the same d, its elements stably partitioned into
segments by their base element's exponent (:func:`exp_keys`; segment j holds
the keys from ``cuts[j]`` up to the next cut; the decoder has the base, so the
partition costs only the cuts to record), each plane's segments stored as
streams ``p{k}.{j}``, each the smallest of zstd, rans and raw. A weight's
unit in the last place doubles with its exponent while a fine-tune's change
does not, so small weights move by many more ulps than large ones: coded
together, the high planes mix those scales; coded per exponent range, each
segment's statistics are its own. Measured on the bench series (fp32
MiniLM, 4 MiB pieces), the changed tensors of the partial fine-tune store in
8.36 MB instead of 8.66, the full fine-tune's in 27.70 MB instead of 28.58.

The chunk's ID is still the hash of its raw bytes; decoding checks the base
against its own ID (store.read_chunk) and the result against the chunk's ID.
"""

from __future__ import annotations

import itertools
import re
import struct
import threading
from collections import OrderedDict


from weightvault.archive._lazy import numpy as np
from weightvault.archive import codecs
from weightvault.archive.native import SUB as _N_SUB
from weightvault.archive.native import XOR as _N_XOR
from weightvault.archive.native import native
from weightvault.errors import ChunkCorruptError, ChunkMissingError, DeltaBaseMissingError

XOR, SUB = "delta-xor", "delta-sub"
XOR_EXP, SUB_EXP = "delta-xor-exp", "delta-sub-exp"
_EXP = {XOR: XOR_EXP, SUB: SUB_EXP}
_PLAIN = {XOR_EXP: XOR, SUB_EXP: SUB}
# Segments of the exponent-segmented codecs hold at least this many elements. Measured on the
# bench's partial / full fine-tune (changed tensors in 4 MiB pieces, MB, without SPARSE_CHECK):
# 8192 -> 8.348 / 27.732, 16384 -> 8.357 / 27.736, 32768 -> 8.383 / 27.783, 65536 -> 8.458 /
# 27.960. Each segment costs a stream header per plane and, when rANS-coded, a frequency table and
# lane states; 16384 is within 0.1% of 8192 with half as many streams.
MIN_SEG = 16384
# An exponent-segmented delta smaller than this fraction of its raw size is compared with the plain
# layout. Measured on 1M fp32 weights with a fraction f of them changed: the plain layout stores
# smaller up to f = 0.1 (a sparse change: 784 against 2812 bytes with one weight changed, 441930
# against 445006 at f = 0.1 with a change of 1e-3, the segmented delta at 10.6% of raw) and 0.8%
# larger from f = 0.2 (a change of 2e-4, the segmented delta at 17.5% of raw).
SPARSE_CHECK = 1 / 8
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
        ChunkCorruptError: ``expected_len`` is given and the base has another length.
    """
    raw = BASES.get(base_id)
    if raw is None:
        raw = _read_base(get_raw, base_id, chunk_id)
    if expected_len is not None and len(raw) != expected_len:
        raise ChunkCorruptError(chunk_id, f"base {base_id} has {len(raw)} bytes, expected {expected_len}")
    return raw


def _read_base(get_raw, base_id: str, chunk_id: str) -> bytes:
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


def delta_planes(raw, base: bytes, itemsize: int, codec: str, cuts: list[int] | None = None) -> dict:
    """Byte planes ``p0``.. of the delta of ``raw`` against ``base`` (one C pass when built);
    for an ``-exp`` codec, partitioned by the segments that ``cuts`` start."""
    plain = _PLAIN.get(codec, codec)
    if codec in _PLAIN and cuts is None:
        raise ValueError(f"{codec} needs cuts")
    smap = segment_map(cuts) if codec in _PLAIN else None
    if native is not None:
        planes = native.planes_split(raw, base, itemsize, _N_XOR if plain == XOR else _N_SUB, smap)
        return {f"p{k}": p for k, p in enumerate(planes)}
    d = transform(raw, base, itemsize, plain)
    return _planes(d[segment_order(base, itemsize, smap)] if smap else d, itemsize)


def exp_keys(base, itemsize: int) -> np.ndarray:
    """Each base element's key: the 8 bits under its sign bit (the exponent of an fp32 or bf16
    value; of an fp16 value, its 5 exponent bits and top 3 mantissa bits)."""
    b = np.frombuffer(base, dtype=_UINT[itemsize])
    return ((b >> b.dtype.type(itemsize * 8 - 9)) & b.dtype.type(0xFF)).astype(np.uint8)


def key_counts(base, itemsize: int) -> list[int]:
    """How many elements of ``base`` have each of the 256 keys."""
    if native is not None:
        return list(struct.unpack("<256Q", native.exp_counts(base, itemsize)))
    return np.bincount(exp_keys(base, itemsize), minlength=256).tolist()


def exp_cuts(counts: list[int], min_seg: int | None = None) -> list[int]:
    """The first key of each segment: runs of whole key groups in key order, each closed once it
    holds at least ``min_seg`` elements; a short tail joins the segment before it."""
    min_seg = MIN_SEG if min_seg is None else min_seg
    cuts, run = [0], 0
    for key, c in enumerate(counts):
        if c and run >= min_seg:
            cuts.append(key)
            run = 0
        run += c
    if run < min_seg and len(cuts) > 1:
        cuts.pop()
    return cuts


def segment_map(cuts: list[int]) -> bytes:
    """256 bytes: each key's segment."""
    ends = [*cuts[1:], 256]
    return bytes(j for j, end in enumerate(ends) for _ in range(cuts[j], end))


def segment_sizes(counts: list[int], cuts: list[int]) -> list[int]:
    ends = [*cuts[1:], 256]
    return [sum(counts[k] for k in range(c, e)) for c, e in zip(cuts, ends)]


def segment_order(base, itemsize: int, smap: bytes) -> np.ndarray:
    """The numpy reference of the partition: a stable sort by segment (the C module's counting
    sort gives the same order)."""
    return np.argsort(np.frombuffer(smap, np.uint8)[exp_keys(base, itemsize)], kind="stable")


def encode(raw, chunk_id: str, base: bytes, base_id: str, *, itemsize: int, base_depth: int = 0,
           codecs_to_try: tuple[str, ...] = (SUB, XOR), level: int | None = None,
           floats: bool = False) -> codecs.EncodedChunk | None:
    """Encode ``raw`` as the smaller of the given delta codecs against ``base``.

    Args:
        raw: the new chunk's raw bytes.
        chunk_id: its ID.
        base: the base chunk's raw bytes (same length).
        base_id: the base chunk's ID, recorded as ``base``.
        itemsize: element size to group bytes by (1, 2, 4 or 8).
        base_depth: the base's own chain depth (0 for a full chunk).
        codecs_to_try: ``delta-xor``/``delta-sub`` (or their ``-exp`` forms, to force one).
        floats: the elements are 2- or 4-byte floats: a piece of at least 2 * MIN_SEG elements uses
            the exponent-segmented form of the codec chosen.
    Returns:
        The smallest delta container, or None when a delta cannot apply.
    """
    if len(raw) != len(base) or itemsize not in _UINT or len(raw) % itemsize or not raw:
        return None
    if any(c in _PLAIN for c in codecs_to_try) and itemsize not in (2, 4):
        return None
    level = codecs.FLOAT_LEVEL if level is None else level
    if len(codecs_to_try) > 1 and len(raw) >= SAMPLE_FROM:
        codecs_to_try = (_pick_by_sample(raw, base, itemsize, codecs_to_try, level),)
    segmented = floats and itemsize in (2, 4) and len(raw) // itemsize >= 2 * MIN_SEG
    if segmented:
        codecs_to_try = tuple(_EXP.get(c, c) for c in codecs_to_try)
    best = _encode_each(raw, chunk_id, base, base_id, itemsize, base_depth, codecs_to_try, level)
    if segmented and best.codec in _PLAIN and len(best.container) < len(raw) * SPARSE_CHECK:
        # a sparse change: each near-empty segment stream costs its header, and the plain layout
        # (cheap to encode here: its planes are mostly zeros) may store smaller
        best = min(best, _encode_each(raw, chunk_id, base, base_id, itemsize, base_depth, (_PLAIN[best.codec],),
                                      level), key=lambda e: len(e.container))
    return best


def _encode_each(raw, chunk_id, base, base_id, itemsize, base_depth, codecs_to_try, level):
    best = None
    for codec in codecs_to_try:
        extra, cuts = {}, None
        if codec in _PLAIN:
            counts = key_counts(base, itemsize)
            cuts = exp_cuts(counts)
            extra["cuts"] = ",".join(map(str, cuts))
        planes = delta_planes(raw, base, itemsize, codec, cuts)
        if cuts is not None:
            bounds = _bounds(segment_sizes(counts, cuts))
            planes = {f"{name}.{j}": p[s0:s1] for name, p in planes.items() for j, (s0, s1) in enumerate(bounds)}
        streams, kinds = codecs.compress_streams(planes, level)
        meta = codecs.chunk_meta(chunk_id, len(raw), codec, base=base_id, depth=base_depth + 1,
                                 itemsize=itemsize, kinds=",".join(kinds), level=level, **extra)
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
        streams, _ = codecs.compress_streams(delta_planes(u, b, itemsize, _PLAIN.get(codec, codec)), level,
                                             try_rans=False)
        sizes[codec] = sum(len(v) for v in streams.values())
    return min(candidates, key=lambda c: (sizes[c], candidates.index(c)))


def _bounds(segs: list[int]) -> list[tuple[int, int]]:
    ends = list(itertools.accumulate(segs))
    return list(zip([0, *ends], ends))


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
    if not base_id or itemsize not in _UINT or h.raw_len % itemsize:
        raise ChunkCorruptError(chunk_id, "delta parameters do not fit")
    n = h.raw_len // itemsize
    plain = _PLAIN.get(h.codec, h.codec)
    if h.codec in _PLAIN:
        # the partition comes from the base, so the base is needed before the streams' sizes are known
        cuts = _cuts(h, itemsize, chunk_id)
        base = fetch_base(get_raw, base_id, chunk_id, h.raw_len)
        segs = segment_sizes(key_counts(base, itemsize), cuts)
        if not all(segs):
            raise ChunkCorruptError(chunk_id, "delta cuts make an empty segment (the encoder never does)")
        names = [f"p{k}.{j}" for k in range(itemsize) for j in range(len(segs))]
        sizes = dict(zip(names, segs * itemsize))
    else:
        base, cuts = None, None
        names = [f"p{k}" for k in range(itemsize)]
        sizes = dict.fromkeys(names, n)
    if len(kinds) != len(names):
        raise ChunkCorruptError(chunk_id, "delta parameters do not fit")
    streams = codecs.decompress_streams(h, container, chunk_id, dict(zip(names, kinds)), sizes)
    for name, size in sizes.items():
        if len(streams[name]) != size:
            raise ChunkCorruptError(chunk_id, f"delta stream {name} has {len(streams[name])} bytes, expected {size}")
    per_plane = len(names) // itemsize
    planes = tuple(b"".join(streams[name] for name in names[k * per_plane:(k + 1) * per_plane])
                   for k in range(itemsize))
    if base is None:
        base = fetch_base(get_raw, base_id, chunk_id, h.raw_len)
    smap = segment_map(cuts) if cuts is not None else None
    if native is not None:
        return native.planes_join(planes, base, _N_XOR if plain == XOR else _N_SUB, dest, smap)
    pb = np.empty((n, itemsize), dtype=np.uint8)
    for k in range(itemsize):
        pb[:, k] = np.frombuffer(planes[k], dtype=np.uint8)
    d = pb.reshape(-1).view(_UINT[itemsize])
    if smap is not None:
        d, in_segments = np.empty_like(d), d
        d[segment_order(base, itemsize, smap)] = in_segments
    return untransform(d, base, itemsize, plain)


def _cuts(h, itemsize: int, chunk_id: str) -> list[int]:
    """The ``cuts`` of an exponent-segmented container: ascending keys from 0, at most 255, written
    as the encoder writes them (the schema's pattern)."""
    if itemsize not in (2, 4):
        raise ChunkCorruptError(chunk_id, f"{h.codec} needs 2- or 4-byte elements, not {itemsize}")
    text = h.meta.get("cuts")
    if not isinstance(text, str) or not _CUTS.fullmatch(text):
        raise ChunkCorruptError(chunk_id, "delta container lacks valid cuts")
    cuts = [int(x) for x in text.split(",")]
    if cuts[-1] > 255 or any(a >= b for a, b in zip(cuts, cuts[1:])):
        raise ChunkCorruptError(chunk_id, "delta cuts are not ascending keys from 0 to 255")
    return cuts


_CUTS = re.compile(r"0(,[1-9][0-9]{0,2})*")


for _codec in (XOR, SUB, XOR_EXP, SUB_EXP):
    codecs.DECODERS[_codec] = _decode
    codecs.DECODERS_INTO[_codec] = _decode
