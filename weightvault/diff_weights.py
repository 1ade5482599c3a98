"""Weight diff: what changed, tensor by tensor, between two versions.

Tensors are matched by name (across shards; two versions of different models
may be compared). A tensor whose dtype, shape and chunk ID list are the same
in both manifests is ``same`` without reading a byte of it: a chunk ID is the
hash of the raw bytes and tensors are chunked from their own start, so equal
lists mean equal bytes. Only the other tensors are read, chunk by chunk, both
versions side by side, into :class:`~weightvault.tensor_stats.ChangeStats`;
a piece both versions share is decoded once.

Statuses: ``same``, ``changed``, ``added``, ``removed``, ``reshaped`` (shape
differs), ``dtype-changed`` (same shape, other dtype; still compared by
value when both dtypes are numeric).

>>> # d = diff_weights(vault, "minilm@1", "minilm@2")
>>> # [t.name for t in d.tensors if t.status == "changed"]
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from weightvault import tensor_stats
from weightvault.archive.manifest import FileEntry, Manifest, TensorEntry
from weightvault.tensor_stats import ChangeStats

STATUSES = ("same", "changed", "added", "removed", "reshaped", "dtype-changed")
STRUCTURAL = ("added", "removed", "reshaped", "dtype-changed")
# First "<word>.<number>." in a name is the layer: encoder.layer.5., model.layers.12., transformer.h.3.
_LAYER_RE = re.compile(r"^(.*?(?:^|\.)[A-Za-z_][A-Za-z0-9_]*\.(\d+))(?:\.|$)")
OTHER_GROUP = "(no layer)"


@dataclass(frozen=True)
class TensorDiff:
    """One tensor's fate between version A and version B.

    Attributes:
        name: tensor name.
        status: one of :data:`STATUSES`.
        layer: layer group it belongs to (see :func:`layer_of`).
        file_a, file_b: file holding it in A / B (None when absent).
        dtype_a, dtype_b: safetensors dtypes (None when absent).
        shape_a, shape_b: shapes (None when absent).
        decided_by: ``chunks`` (equal chunk lists, nothing read), ``content``
            (read and compared) or None (structural status).
        stats: change statistics when the values were compared, else None.
    """

    name: str
    status: str
    layer: str
    file_a: str | None = None
    file_b: str | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    decided_by: str | None = None
    stats: ChangeStats | None = None

    @property
    def rel_l2(self) -> float:
        return self.stats.rel_l2 if self.stats is not None else 0.0

    def to_dict(self) -> dict:
        d = {"name": self.name, "status": self.status, "layer": self.layer, "file_a": self.file_a,
             "file_b": self.file_b, "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
             "shape_a": list(self.shape_a) if self.shape_a is not None else None,
             "shape_b": list(self.shape_b) if self.shape_b is not None else None, "decided_by": self.decided_by}
        if self.status == "same":
            d.update({"rel_l2": 0.0, "cosine": 1.0, "max_abs_diff": 0.0, "frac_changed": 0.0})
        elif self.stats is not None:
            d.update(self.stats.to_dict())
        else:
            d.update({"rel_l2": None, "cosine": None, "max_abs_diff": None, "frac_changed": None})
        return d


@dataclass(frozen=True)
class LayerSummary:
    """Changes within one layer group.

    Attributes:
        layer: group name, e.g. ``encoder.layer.5`` (or ``(no layer)``).
        index: the layer number, None for the no-layer group.
        tensors: tensors in the group (either version).
        changed: tensors with status ``changed``.
        structural: tensors added, removed, reshaped or dtype-changed.
        rel_l2: ||B - A|| / ||A|| over the group's compared tensors (same
            tensors are not read, so they are not in the denominator).
        max_rel_l2: the largest per-tensor relative change.
        max_abs_diff: the largest absolute element change (positions where either side is NaN
            left out; see :mod:`weightvault.tensor_stats`).
    """

    layer: str
    index: int | None
    tensors: int
    changed: int
    structural: int
    rel_l2: float
    max_rel_l2: float
    max_abs_diff: float

    def to_dict(self) -> dict:
        return {k: (tensor_stats._finite(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class FileDiff:
    """A file's fate (by sha256): same, changed, added or removed."""

    path: str
    status: str
    size_a: int | None
    size_b: int | None


@dataclass(frozen=True)
class WeightDiff:
    """The weight diff of two versions.

    Attributes:
        a, b: the resolved versions (``ResolvedVersion``).
        tensors: every tensor of either version, sorted by name.
        layers: per-layer summary, most changed first.
        files: every file of either version, sorted by path.
        chunks_read: chunk decodes the comparison needed.
        bytes_read: raw bytes those decodes produced.
        seconds: wall time.
    """

    a: object
    b: object
    tensors: tuple[TensorDiff, ...]
    layers: tuple[LayerSummary, ...]
    files: tuple[FileDiff, ...]
    chunks_read: int
    bytes_read: int
    seconds: float

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(STATUSES, 0)
        for t in self.tensors:
            c[t.status] += 1
        return c

    @property
    def identical(self) -> bool:
        """Every file byte-identical (so any behaviour is identical too)."""
        return all(f.status == "same" for f in self.files)

    def to_dict(self) -> dict:
        return {
            "a": _ref_dict(self.a), "b": _ref_dict(self.b),
            "summary": {"tensors": len(self.tensors), **self.counts(), "identical": self.identical,
                        "chunks_read": self.chunks_read, "bytes_read": self.bytes_read,
                        "seconds": round(self.seconds, 4)},
            "tensors": [t.to_dict() for t in self.tensors],
            "layers": [x.to_dict() for x in self.layers],
            "files": [f.__dict__ for f in self.files],
        }


def _ref_dict(r) -> dict:
    return {"ref": str(r), "model": r.model, "version": r.version, "manifest_id": r.manifest_id}


def layer_of(name: str) -> tuple[str, int | None]:
    """The layer group of a tensor name: the prefix up to the first ``word.N``.

    >>> layer_of("encoder.layer.5.attention.self.query.weight")
    ('encoder.layer.5', 5)
    >>> layer_of("transformer.h.3.attn.c_attn.weight")
    ('transformer.h.3', 3)
    >>> layer_of("embeddings.word_embeddings.weight")
    ('(no layer)', None)
    """
    m = _LAYER_RE.match(name)
    if m is None:
        return OTHER_GROUP, None
    return m.group(1), int(m.group(2))


def tensor_index(m: Manifest) -> dict[str, tuple[FileEntry, TensorEntry]]:
    """Tensor name -> (file, entry); a name in several files is keyed ``file::name``."""
    seen: dict[str, list] = {}
    for f in m.files:
        for t in f.tensors:
            seen.setdefault(t.name, []).append((f, t))
    out = {}
    for name, hits in seen.items():
        if len(hits) == 1:
            out[name] = hits[0]
        else:
            out.update({f"{f.path}::{name}": (f, t) for f, t in hits})
    return out


# -- reading -------------------------------------------------------------------


class _Reader:
    """Decodes chunks through the store, counting what it decodes."""

    def __init__(self, store):
        self.store = store
        self.chunks = 0
        self.bytes = 0
        self.progress = None

    def read(self, cid: str, n: int) -> bytes:
        raw = self.store.read_chunk(cid, n)
        self.chunks += 1  # int += under the GIL from pool threads: only a statistic
        self.bytes += len(raw)
        if self.progress:
            self.progress(len(raw))
        return raw


def _aligned_piece(reader: _Reader, ca, cb, dtype: str) -> tuple[ChangeStats, bool]:
    """Stats of one piece pair of equal length and dtype; returns (stats, bytes equal)."""
    if ca[0] == cb[0]:
        return tensor_stats.same_piece_stats(tensor_stats.values(reader.read(*ca), dtype)), True
    ra, rb = reader.read(*ca), reader.read(*cb)
    return tensor_stats.piece_stats(tensor_stats.values(ra, dtype), tensor_stats.values(rb, dtype)), ra == rb


def _iter_values(reader: _Reader, chunks, dtype: str):
    # Chunk boundaries need not fall on element boundaries (another chunk size): carry the tail.
    size = tensor_stats.ITEMSIZE[dtype]
    carry = b""
    for cid, n in chunks:
        raw = carry + reader.read(cid, n)
        cut = len(raw) - len(raw) % size
        carry = raw[cut:]
        if cut:
            yield tensor_stats.values(raw[:cut], dtype)


def _streamed(reader: _Reader, chunks_a, dtype_a, chunks_b, dtype_b) -> tuple[ChangeStats, bool]:
    """Stats of a tensor whose pieces do not line up (other chunking or dtype): align by element."""
    total = ChangeStats()
    equal = dtype_a == dtype_b
    ia, ib = _iter_values(reader, chunks_a, dtype_a), _iter_values(reader, chunks_b, dtype_b)
    va = vb = None
    while True:
        if va is None or not len(va):
            va = next(ia, None)
        if vb is None or not len(vb):
            vb = next(ib, None)
        if va is None or vb is None:
            return total, equal
        k = min(len(va), len(vb))
        total = total.merge(tensor_stats.piece_stats(va[:k], vb[:k]))
        equal = equal and va[:k].tobytes() == vb[:k].tobytes()
        va, vb = va[k:], vb[k:]


# -- the diff ------------------------------------------------------------------


def _classify(name, ea, eb) -> TensorDiff | None:
    """Decide a tensor from the manifests alone; None when its values must be read."""
    if eb is None:
        fa, ta = ea
        return TensorDiff(name, "removed", layer_of(ta.name)[0], file_a=fa.path, dtype_a=ta.dtype, shape_a=ta.shape)
    fb, tb = eb
    if ea is None:
        return TensorDiff(name, "added", layer_of(tb.name)[0], file_b=fb.path, dtype_b=tb.dtype, shape_b=tb.shape)
    fa, ta = ea
    common = dict(file_a=fa.path, file_b=fb.path, dtype_a=ta.dtype, dtype_b=tb.dtype, shape_a=ta.shape,
                  shape_b=tb.shape)
    if ta.shape != tb.shape:
        return TensorDiff(name, "reshaped", layer_of(ta.name)[0], **common)
    if ta.dtype != tb.dtype and not (tensor_stats.supported(ta.dtype) and tensor_stats.supported(tb.dtype)):
        return TensorDiff(name, "dtype-changed", layer_of(ta.name)[0], **common)
    if ta.dtype == tb.dtype and fa.tensor_chunks(ta) == fb.tensor_chunks(tb):
        return TensorDiff(name, "same", layer_of(ta.name)[0], decided_by="chunks", **common)
    if ta.dtype == tb.dtype and not tensor_stats.supported(ta.dtype):
        return TensorDiff(name, "changed", layer_of(ta.name)[0], decided_by="chunks", **common)
    return None


def _jobs(pending):
    """(tensor key, callable) pairs: one per aligned piece pair, one per misaligned tensor."""
    for name, (fa, ta), (fb, tb) in pending:
        ca, cb = fa.tensor_chunks(ta), fb.tensor_chunks(tb)
        if ta.dtype == tb.dtype and [n for _, n in ca] == [n for _, n in cb]:
            for x, y in zip(ca, cb, strict=True):
                yield name, (lambda r, x=x, y=y, dt=ta.dtype: _aligned_piece(r, x, y, dt))
        else:
            yield name, (lambda r, ca=ca, cb=cb, da=ta.dtype, db=tb.dtype: _streamed(r, ca, da, cb, db))


def _run_jobs(reader: _Reader, jobs, workers: int) -> dict[str, tuple[ChangeStats, bool]]:
    """Run jobs on a pool with a bounded window (memory stays ~2 pieces per worker)."""
    acc: dict[str, tuple[ChangeStats, bool]] = {}

    def fold(name, fut):
        s, eq = fut.result()
        prev = acc.get(name, (ChangeStats(), True))
        acc[name] = (prev[0].merge(s), prev[1] and eq)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wv-diff") as pool:
        window: deque = deque()
        for name, fn in jobs:
            window.append((name, pool.submit(fn, reader)))
            if len(window) >= 2 * workers:
                fold(*window.popleft())
        while window:
            fold(*window.popleft())
    return acc


def diff_weights(vault, a, b, *, workers: int | None = None, progress=None) -> WeightDiff:
    """Compare the tensors (and files) of two versions.

    Args:
        vault: an open :class:`~weightvault.vault.Vault`.
        a, b: version references (``NAME@V``), possibly of different models.
        workers: decode threads (default: CPU count).
        progress: callable(n_bytes) with ``start(total)``, or None.
    Returns:
        WeightDiff.
    """
    t0 = time.perf_counter()
    ra, rb = vault.resolve(a), vault.resolve(b)
    ma, mb = vault.manifest_by_id(ra.manifest_id), vault.manifest_by_id(rb.manifest_id)
    ia, ib = tensor_index(ma), tensor_index(mb)
    decided: dict[str, TensorDiff] = {}
    pending = []
    for name in sorted(set(ia) | set(ib)):
        d = _classify(name, ia.get(name), ib.get(name))
        if d is None:
            pending.append((name, ia[name], ib[name]))
        else:
            decided[name] = d
    reader = _Reader(vault.store)
    if progress is not None and hasattr(progress, "start"):
        progress.start(sum(_read_size(ea, eb) for _, ea, eb in pending))
    reader.progress = progress
    with vault.store.lock.held(shared=True, timeout=vault.lock_timeout, op=f"diff {ra} {rb}"):
        results = _run_jobs(reader, _jobs(pending), workers or os.cpu_count() or 2)
    for name, (fa, ta), (fb, tb) in pending:
        s, equal = results.get(name, (ChangeStats(), True))
        if ta.dtype != tb.dtype:
            status = "dtype-changed"
        else:
            status = "same" if equal else "changed"
        decided[name] = TensorDiff(name, status, layer_of(ta.name)[0], fa.path, fb.path, ta.dtype, tb.dtype,
                                   ta.shape, tb.shape, "content", s)
    tensors = tuple(decided[k] for k in sorted(decided))
    return WeightDiff(ra, rb, tensors, summarize_layers(tensors), diff_files(ma, mb), reader.chunks,
                      reader.bytes, time.perf_counter() - t0)


def _read_size(ea, eb) -> int:
    (fa, ta), (fb, tb) = ea, eb
    same = {c for c, _ in fa.tensor_chunks(ta)} & {c for c, _ in fb.tensor_chunks(tb)}
    return (ta.end - ta.begin) + sum(n for c, n in fb.tensor_chunks(tb) if c not in same)


def diff_files(ma: Manifest, mb: Manifest) -> tuple[FileDiff, ...]:
    """Every file of either version: same / changed (by sha256) / added / removed."""
    fa, fb = {f.path: f for f in ma.files}, {f.path: f for f in mb.files}
    out = []
    for p in sorted(set(fa) | set(fb)):
        x, y = fa.get(p), fb.get(p)
        status = "added" if x is None else "removed" if y is None else "same" if x.sha256 == y.sha256 else "changed"
        out.append(FileDiff(p, status, x.size if x else None, y.size if y else None))
    return tuple(out)


def summarize_layers(tensors) -> tuple[LayerSummary, ...]:
    """Group tensors by layer; most changed first (relative change, then structural changes)."""
    groups: dict[str, list[TensorDiff]] = {}
    for t in tensors:
        groups.setdefault(t.layer, []).append(t)
    out = []
    for layer, ts in groups.items():
        compared = [t.stats for t in ts if t.stats is not None and t.status != "same"]
        total = ChangeStats()
        for s in compared:
            total = total.merge(s)
        out.append(LayerSummary(
            layer, layer_of(ts[0].name)[1] if layer != OTHER_GROUP else None, len(ts),
            sum(t.status == "changed" for t in ts), sum(t.status in STRUCTURAL for t in ts), total.rel_l2,
            tensor_stats.nanmax(*(s.rel_l2 for s in compared)), tensor_stats.nanmax(*(s.max_abs for s in compared))))
    out.sort(key=lambda x: (-_sortable(x.rel_l2), -x.structural, x.index if x.index is not None else -1, x.layer))
    return tuple(out)


def _sortable(x: float) -> float:
    return x if x == x else -1.0  # NaN last
