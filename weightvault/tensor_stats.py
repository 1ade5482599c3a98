"""Change statistics between two tensors, accumulated piece by piece.

A diff never holds a whole tensor: it reads both versions' chunks side by
side, turns each piece into numbers (:func:`values`) and folds the piece into
a :class:`ChangeStats` (sums of squares and products in float64, the largest
absolute difference, how many elements differ). Partial statistics of the
pieces of one tensor merge in any order, so pieces can be computed on a
thread pool.

NaN: an element is changed when its bit pattern changed (so a NaN left as it
was is not a change, and 0.0 -> -0.0 is one). Positions where either side is
NaN are left out of the sums and of the largest difference, and counted in
``n_nan_changed`` when changed; a NaN never reaches a max.

>>> import numpy as np
>>> s = piece_stats(np.ones(4, np.float32), np.array([1, 1, 1, 2], np.float32))
>>> round(s.rel_l2, 3), s.frac_changed
(0.5, 0.25)
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

# Native numpy dtypes of the safetensors dtypes that need no bit tricks.
_PLAIN = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_local = threading.local()
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
            "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}


def _fp8_e4m3_table() -> np.ndarray:
    # OCP E4M3 "fn": bias 7, no infinities, S.1111.111 is NaN.
    out = np.empty(256, np.float32)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        e, m = (b >> 3) & 0xF, b & 0x7
        if e == 0xF and m == 0x7:
            out[b] = np.nan
        elif e == 0:
            out[b] = sign * (m / 8) * 2.0 ** -6
        else:
            out[b] = sign * (1 + m / 8) * 2.0 ** (e - 7)
    return out


_FP8_E4M3 = _fp8_e4m3_table()
_FP8_E8M0 = np.array([2.0 ** (e - 127) if e != 255 else np.nan for e in range(256)], np.float32)


def supported(dtype: str) -> bool:
    """Whether :func:`values` can turn this safetensors dtype into numbers."""
    return dtype in ITEMSIZE


def values(raw, dtype: str) -> np.ndarray:
    """Decode raw little-endian tensor bytes into a float32/float64 (or integer) array.

    BF16 and FP8 have no numpy dtype, so their bit patterns are widened into
    float32 exactly (BF16 is the top half of a float32; E5M2 the top half of
    a float16).

    Args:
        raw: bytes of whole elements.
        dtype: safetensors dtype name.
    Returns:
        1-D array; F16 comes back as float32, the others in their own type.
    """
    if dtype == "BF16":
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return np.frombuffer(raw, np.float16).astype(np.float32)
    if dtype == "F8_E5M2":
        return (np.frombuffer(raw, np.uint8).astype(np.uint16) << 8).view(np.float16).astype(np.float32)
    if dtype == "F8_E4M3":
        return _FP8_E4M3[np.frombuffer(raw, np.uint8)]
    if dtype == "F8_E8M0":
        return _FP8_E8M0[np.frombuffer(raw, np.uint8)]
    return np.frombuffer(raw, _PLAIN[dtype])


@dataclass(frozen=True)
class ChangeStats:
    """Sufficient statistics of ``B - A`` over some elements.

    Attributes:
        n: elements seen.
        n_changed: elements whose value differs.
        aa: sum of A squared (float64).
        bb: sum of B squared.
        ab: sum of A times B.
        dd: sum of (B - A) squared, accumulated directly (not from aa+bb-2ab,
            which cancels catastrophically for small changes).
        max_abs: largest |B - A| over positions where neither side is NaN.
        n_nan_changed: changed elements where A or B is NaN (left out of the sums and max_abs).
    """

    n: int = 0
    n_changed: int = 0
    aa: float = 0.0
    bb: float = 0.0
    ab: float = 0.0
    dd: float = 0.0
    max_abs: float = 0.0
    n_nan_changed: int = 0

    def merge(self, other: "ChangeStats") -> "ChangeStats":
        return ChangeStats(self.n + other.n, self.n_changed + other.n_changed, self.aa + other.aa,
                           self.bb + other.bb, self.ab + other.ab, self.dd + other.dd,
                           nanmax(self.max_abs, other.max_abs), self.n_nan_changed + other.n_nan_changed)

    @property
    def rel_l2(self) -> float:
        """||B - A|| / ||A|| (inf when A is all zeros and B is not, or when a value became or
        stopped being NaN: the sums leave NaN positions out, and such a change is not small)."""
        if self.n_nan_changed:
            return math.inf
        if self.aa == 0:
            return 0.0 if self.dd == 0 else math.inf
        return math.sqrt(self.dd) / math.sqrt(self.aa)

    @property
    def cosine(self) -> float | None:
        """Cosine similarity of A and B; None when either is all zeros or a NaN changed."""
        if self.aa == 0 or self.bb == 0 or self.n_nan_changed:
            return None
        return self.ab / (math.sqrt(self.aa) * math.sqrt(self.bb))

    @property
    def frac_changed(self) -> float:
        return self.n_changed / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        """The figures a report shows (JSON-safe: NaN and inf become None)."""
        return {"rel_l2": _finite(self.rel_l2), "cosine": _finite(self.cosine),
                "max_abs_diff": _finite(self.max_abs), "frac_changed": self.frac_changed,
                "n_changed": self.n_changed, "n_nan_changed": self.n_nan_changed,
                "l2_a": _finite(math.sqrt(self.aa)), "l2_b": _finite(math.sqrt(self.bb)),
                "l2_diff": _finite(math.sqrt(self.dd))}


def _finite(x):
    return None if x is None or not math.isfinite(x) else float(x)


def nanmax(*xs: float) -> float:
    """The largest of ``xs`` ignoring NaN (Python's max() keeps or drops a NaN by argument order)."""
    vals = [x for x in xs if x == x]
    return max(vals) if vals else 0.0


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    # einsum, not np.dot: OpenBLAS ddot measured 7x slower here on 1M-element float64 vectors.
    return float(np.einsum("i,i->", x, y))


def _f64(a: np.ndarray, slot: int) -> np.ndarray:
    """``a`` as float64 in a reused per-thread buffer (fresh 8 MB arrays cost page faults)."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = [np.empty(0), np.empty(0)]
    if bufs[slot].size < a.size:
        bufs[slot] = np.empty(a.size, np.float64)
    out = bufs[slot][: a.size]
    np.copyto(out, a, casting="unsafe")
    return out


def changed_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elements whose bit patterns differ (same float dtype); across dtypes, values differ, NaN = NaN."""
    if a.dtype == b.dtype and a.dtype.kind == "f":
        u = np.dtype(f"u{a.dtype.itemsize}")
        return a.view(u) != b.view(u)
    ne = a != b
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        ne &= ~(np.isnan(a) & np.isnan(b))
    return ne


def piece_stats(a: np.ndarray, b: np.ndarray) -> ChangeStats:
    """Statistics of one aligned pair of pieces (equal lengths)."""
    if a.size == 0:
        return ChangeStats()
    changed = changed_mask(a, b)
    n_changed = int(np.count_nonzero(changed))
    a64, b64 = _f64(a, 0), _f64(b, 1)
    aa = _dot(a64, a64)
    if n_changed == 0:  # identical piece: no difference to measure
        if aa != aa:  # NaNs (unchanged) in it
            aa = _nan_free_dot(a64)
        return ChangeStats(a.size, 0, aa, aa, aa, 0.0, 0.0)
    bb, ab = _dot(b64, b64), _dot(a64, b64)
    if aa != aa or bb != bb:  # a NaN on either side: the slow, masked way (rare)
        return _masked_stats(a64, b64, changed)
    with np.errstate(invalid="ignore"):  # inf - inf
        d = np.subtract(b64, a64, out=b64)
    dd = _dot(d, d)
    if dd != dd:  # inf - inf at an unchanged infinity
        d[np.isnan(d)] = 0.0
        dd = _dot(d, d)
    return ChangeStats(a.size, n_changed, aa, bb, ab, dd, float(max(d.max(), -d.min())))


def _nan_free_dot(x: np.ndarray) -> float:
    keep = x[~np.isnan(x)]
    return _dot(keep, keep)


def _masked_stats(a64: np.ndarray, b64: np.ndarray, changed: np.ndarray) -> ChangeStats:
    """A NaN on either side: each norm over its own side's numbers, the difference (and A·B) over
    the positions where neither is NaN; a changed NaN position is counted (and makes rel_l2
    infinite: a value that became NaN is not a small change)."""
    nan = np.isnan(a64) | np.isnan(b64)
    keep = ~nan
    a, b = a64[keep], b64[keep]
    with np.errstate(invalid="ignore"):
        d = b - a
    d[np.isnan(d)] = 0.0  # inf - inf: an unchanged infinity
    max_abs = float(np.abs(d).max()) if d.size else 0.0
    return ChangeStats(a64.size, int(np.count_nonzero(changed)), _nan_free_dot(a64), _nan_free_dot(b64),
                       _dot(a, b), _dot(d, d), max_abs, int(np.count_nonzero(changed & nan)))


def same_piece_stats(a: np.ndarray) -> ChangeStats:
    """Statistics of a piece both versions share (one decode, no difference)."""
    a64 = _f64(a, 0)
    aa = _dot(a64, a64)
    if aa != aa:
        aa = _nan_free_dot(a64)
    return ChangeStats(a.size, 0, aa, aa, aa, 0.0, 0.0)
