"""The ``rans`` stream kind: order-0 range-ANS for skewed byte streams.

zstd codes literals with Huffman codes of whole bits, built per 128 KiB block.
On a byte stream with a skewed, flat-topped distribution that sits measurably
above the order-0 entropy: fsplit's ``j`` stream of all-MiniLM-L6-v2 takes
18.74 MB as zstd literals against an order-0 entropy of 18.52 MB. This coder
stores it in 18.55 MB (14-bit frequencies, tables and lane states included).
:func:`codecs.compress_streams` tries it on every stream and keeps it only
where it stores smaller than zstd; it is a storage choice, never part of
a chunk's identity.

Blob layout (little-endian):

- byte 0: format version, 1; byte 1: scale bits n (8..15), M = 2^n;
- u32 count: the number of symbols (at least 1);
- 32 bytes: bitmap of the byte values present (bit s % 8 of byte s // 8);
- u16 per present value, ascending: its frequency f(s) >= 1; they sum to M;
- LANES = 32 u32 lane states, the encoder's final states;
- u16 words, read front to back.

Symbol i is coded by lane i % 32. A lane state x lives in [2^16, 2^32). To
decode: slot = x mod M picks the symbol s whose cumulative range
[c(s), c(s) + f(s)) holds slot; x = f(s) * (x >> n) + slot - c(s); if x < 2^16, x =
x << 16 | next word. Decoding symbols in order, a step of 32 reads its words
in lane order. A valid blob ends with every word read and every lane back at
2^16, the encoder's initial state; anything else is corrupt. The C module
(archive/_native.c) encodes and decodes; the numpy functions here are the
reference (tests/test_rans.py checks they agree byte for byte) and the decoder
of last resort for a build without the C module (correct, but a loop over
steps of 32 symbols: orders of magnitude slower). Without the C module the
encoder never picks this kind.
"""

from __future__ import annotations

import math
import struct

from weightvault.archive._lazy import numpy as np
from weightvault.archive.native import native
from weightvault.errors import ChunkCorruptError

VERSION = 1
SCALE = 14
LANES = 32
L = 1 << 16
HEAD = 1 + 1 + 4 + 32
# Streams shorter than this stay zstd/raw: the header and lane states (170+
# bytes) eat a small stream's gain.
MIN_LEN = 4096
# maybe_encode first estimates the entropy from every SAMPLE_STRIDE-th byte,
# and codes only a stream that promises to beat zstd/raw by MIN_GAIN. Measured
# on the bench series: a fine-tune delta's second mantissa plane gains 0.04%
# (400 bytes per 4 MiB chunk) for 2 ms of coding; at 0.2% the series grows by
# 1 KB of 113 MB and delta encoding of a 4 MiB chunk takes 14.6 ms, not 16.9.
SAMPLE_STRIDE = 16
MIN_GAIN = 0.002


def histogram(data, stride: int = 1) -> list[int]:
    """Counts of the 256 byte values of data[::stride]."""
    if native is not None:
        return list(struct.unpack("<256Q", native.byte_hist(data, stride)))
    return np.bincount(np.frombuffer(data, dtype=np.uint8)[::stride], minlength=256).tolist()


def _order0_bytes(counts, n: int) -> float:
    """The order-0 entropy of n symbols distributed like counts, in bytes, with the Miller-Madow
    correction for a sample's low bias ((K - 1) / (2 ln 2) bits over the sample, K values seen);
    native.order0_bytes' reference."""
    total = sum(counts)
    present = sum(1 for c in counts if c)
    bits = sum(c * math.log2(total / c) for c in counts if c) + max(present - 1, 0) / (2 * math.log(2))
    return bits / 8 * n / total


# The encoder side below is plain Python over 256 counts: a snapshot that only
# needs the C coder never imports numpy (80 ms of CLI start-up).
def normalize(counts, scale: int = SCALE) -> list[int]:
    """Frequencies summing to 2^scale, >= 1 for every present value, near counts' proportions.

    Rounds each proportion, then moves single units where they cost the
    fewest bits, one per symbol per round (deterministic: ties go to the
    lowest byte value).
    """
    counts = [int(c) for c in counts]
    total, M = sum(counts), 1 << scale
    present = [k for k, c in enumerate(counts) if c]
    if not present or len(present) > M:
        raise ValueError("cannot normalize: no symbols, or more symbols than slots")
    f = [0] * 256
    for k in present:
        f[k] = max(1, round(counts[k] * M / total))
    diff = M - sum(f)
    while diff:  # one unit to each of the |diff| symbols where it costs least, then again
        if diff > 0:
            cost = [(-counts[k] * math.log2((f[k] + 1) / f[k]), k) for k in present]
        else:
            cost = [(counts[k] * math.log2(f[k] / (f[k] - 1)), k) for k in present if f[k] > 1]
        for _, k in sorted(cost)[:abs(diff)]:
            f[k] += 1 if diff > 0 else -1
        diff = M - sum(f)
    return f


def freq_table(f) -> bytes:
    """The frequency argument of native.rans_encode: 256 little-endian u32."""
    return struct.pack("<256I", *(int(x) for x in f))


def _fixed_bytes(present: int) -> int:
    """A blob's bytes besides the coded bits: header, frequencies, final states, a last word per lane."""
    return HEAD + 2 * present + 4 * LANES + 2 * LANES


def estimate(counts, f, scale: int = SCALE) -> int:
    """The blob's size in bytes to within a word per lane (the coded bits + header)."""
    bits = sum(c * (scale - math.log2(fk)) for c, fk in zip(counts, f) if c)
    return _fixed_bytes(sum(1 for fk in f if fk)) + int(bits / 8)


def maybe_encode(data, beat: int) -> bytes | None:
    """A rANS blob of data when it is smaller than ``beat`` bytes (the zstd/raw size), else None."""
    if native is None or len(data) < MIN_LEN:
        return None
    # A cheap test on a sample (bias-corrected, plus the blob's fixed cost)
    # skips the streams that cannot win by MIN_GAIN, such as near-uniform
    # mantissa planes, before the full histogram, the table (0.25-0.6 ms per
    # 1 MB stream, much of it Python holding the GIL) and the coding (2 ms). A
    # wrong skip only costs size.
    if native.order0_bytes(data, SAMPLE_STRIDE) + _fixed_bytes(1) >= beat * (1 - MIN_GAIN):
        return None
    counts = histogram(data)
    f = normalize(counts)
    if estimate(counts, f) >= beat:
        return None
    blob = native.rans_encode(data, freq_table(f), SCALE)
    return blob if len(blob) < beat else None


def encode_numpy(data, f, scale: int = SCALE) -> bytes:
    """The reference encoder (same bytes as native.rans_encode)."""
    d = np.frombuffer(data, dtype=np.uint8)
    count = len(d)
    f = np.asarray(f, dtype=np.uint64)
    c = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.uint64)
    xmax = ((L >> scale) << 16) * f
    st = np.full(LANES, L, dtype=np.uint64)
    blocks = []
    for t in range((count - 1) // LANES, -1, -1):
        sym = d[t * LANES:(t + 1) * LANES]
        k = len(sym)
        x = st[:k]
        fs = f[sym]
        need = x >= xmax[sym]
        blocks.append((x[need] & 0xFFFF).astype("<u2").tobytes())
        x = np.where(need, x >> np.uint64(16), x)
        st[:k] = ((x // fs) << np.uint64(scale)) + (x % fs) + c[sym]
    present = np.flatnonzero(f)
    bitmap = np.zeros(256, dtype=bool)
    bitmap[present] = True
    head = struct.pack("<BBI", VERSION, scale, count) + np.packbits(bitmap, bitorder="little").tobytes()
    table = f[present].astype("<u2").tobytes()
    return head + table + st.astype("<u4").tobytes() + b"".join(reversed(blocks))


def _parse(blob, cap: int):
    b = bytes(blob[:HEAD]) if len(blob) >= HEAD else b""
    if len(b) < HEAD or b[0] != VERSION or not 8 <= b[1] <= 15:
        raise ValueError("bad rANS header")
    scale = b[1]
    (count,) = struct.unpack_from("<I", b, 2)
    if not 1 <= count <= cap:
        raise ValueError("rANS count out of range")
    present = np.flatnonzero(np.unpackbits(np.frombuffer(b[6:HEAD], dtype=np.uint8), bitorder="little"))
    end = HEAD + 2 * len(present)
    if end + 4 * LANES > len(blob) or (len(blob) - end - 4 * LANES) % 2:
        raise ValueError("truncated rANS stream")
    f = np.zeros(256, dtype=np.int64)
    f[present] = np.frombuffer(blob[HEAD:end], dtype="<u2")
    if (f[present] == 0).any():
        raise ValueError("zero rANS frequency")
    if f.sum() != 1 << scale:
        raise ValueError("rANS frequencies do not sum to 2^scale")
    st = np.frombuffer(blob[end:end + 4 * LANES], dtype="<u4").astype(np.uint64)
    if (st < L).any():
        raise ValueError("bad rANS state")
    words = np.frombuffer(blob[end + 4 * LANES:], dtype="<u2").astype(np.uint64)
    return scale, count, f, st, words


def decode_numpy(blob, cap: int) -> bytes:
    """The reference decoder, vectorised across the 32 lanes. Raises ValueError when corrupt."""
    scale, count, f, st, words = _parse(blob, cap)
    M = 1 << scale
    sym = np.repeat(np.arange(256, dtype=np.uint8), f)
    c = np.concatenate([[0], np.cumsum(f)[:-1]])
    slot = np.arange(M, dtype=np.uint64)
    tab_f = f[sym].astype(np.uint64)
    tab_k = slot - c[sym].astype(np.uint64)
    out = np.empty(count, dtype=np.uint8)
    pos, nw = 0, len(words)
    for t in range(0, count, LANES):
        k = min(LANES, count - t)
        x = st[:k]
        s = x & np.uint64(M - 1)
        out[t:t + k] = sym[s]
        x = tab_f[s] * (x >> np.uint64(scale)) + tab_k[s]
        need = x < L
        m = int(need.sum())
        if pos + m > nw:
            raise ValueError("rANS stream does not decode to its end")
        x[need] = (x[need] << np.uint64(16)) | words[pos:pos + m]
        pos += m
        st[:k] = x
    if pos != nw:
        raise ValueError("rANS stream does not decode to its end")
    if (st != L).any():
        raise ValueError("rANS stream does not decode to its initial state")
    return out.tobytes()


def decode(blob, cap: int, chunk_id: str) -> bytes:
    """Decode a stream of at most ``cap`` bytes; a malformed blob names the chunk."""
    try:
        if native is not None:
            return native.rans_decode(blob, cap)
        return decode_numpy(blob, cap)
    except ValueError as e:
        raise ChunkCorruptError(chunk_id, str(e)) from None
