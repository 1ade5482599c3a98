"""The parent-aware chunk encoder snapshot uses by default.

For each new chunk of a tensor piece, the encoder looks up the chunk at the
same tensor name and piece index in the parent version (whatever file or
shard held it: names, not paths, identify tensors) and keeps the smallest of:

- a cast (archive/cast.py) when the new piece is BF16/F16 and an archived
  version of the model holds the same-named, same-shaped tensor in F32
  (the parent first, then the model's other versions, newest first);
- a delta (archive/delta.py) against the parent's piece of the same dtype and
  shape, unless that base already sits MAX_CHAIN hops from a full chunk;
- the full encoding (codecs.encode_chunk).

Casts found are summarised per tensor in ``manifest_metadata()`` (recorded in
the manifest under ``derivations`` and indexed into the catalog's
``derivations`` table by catalog/derivations.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from weightvault.archive import cast, codecs, delta
from weightvault.archive.manifest import Manifest
from weightvault.archive.store import Store
from weightvault.errors import IntegrityError

# Other versions searched for a cast source (beyond the parent); bounds the
# manifests read per snapshot of a model with a long history.
MAX_CAST_SOURCES = 8
# dtypes whose deltas may use the exponent-segmented codecs (archive/delta.py)
EXP_DTYPES = ("F32", "BF16", "F16")
DELTA_ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2}


@dataclass(frozen=True)
class TensorPieces:
    """Where an archived tensor's pieces are.

    Attributes:
        manifest_id: the version holding it.
        dtype: its dtype.
        shape: its shape.
        chunks: (chunk id, raw length) of each piece, in order.
    """

    manifest_id: str
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[tuple[str, int], ...]


def tensor_index(manifest: Manifest, manifest_id: str) -> dict[str, TensorPieces]:
    """Tensor name -> pieces, over all files of a version (the first file wins on duplicates)."""
    out: dict[str, TensorPieces] = {}
    for f in manifest.files:
        for t in f.tensors:
            out.setdefault(t.name, TensorPieces(manifest_id, t.dtype, tuple(t.shape), f.tensor_chunks(t)))
    return out


class Encoder:
    """Callable ``encode(raw, chunk_id, segment, rel_path) -> EncodedChunk`` for ChunkWriter."""

    def __init__(self, store: Store, parent_id: str | None, model: str | None = None,
                 *, max_chain: int = delta.MAX_CHAIN):
        self.store = store
        self.model = model
        self.max_chain = max_chain
        self.parent_id = parent_id
        self.base_manifest = store.get_manifest(parent_id) if parent_id else None  # what it encodes against
        self.parent = tensor_index(self.base_manifest, parent_id) if parent_id else {}
        self._cast_sources: list[dict[str, TensorPieces]] | None = None
        self._depths: dict[str, int] = {}
        self._exact_source: str | None = None
        self._lock = threading.Lock()
        self.derivations: dict[str, dict] = {}

    def __call__(self, raw, chunk_id: str, seg, rel: str) -> codecs.EncodedChunk:
        best, source = None, None
        if seg.tensor is not None:
            if seg.dtype in cast.RECIPES:
                best, source = self._try_cast(raw, chunk_id, seg)
            if best is None or best.codec != cast.CODEC or len(best.container) > len(raw) // 16:
                best = _smaller(best, self._try_delta(raw, chunk_id, seg))
        # the full encoding of real weights is rarely under 70% of their size
        # (fsplit: 81.7% on MiniLM fp32), so a candidate below that is kept
        # without paying for another encoding
        if best is None or len(best.container) > len(raw) * 7 // 10:
            best = _smaller(best, codecs.encode_chunk(raw, chunk_id, dtype=seg.dtype))
        if best.codec == cast.CODEC:
            self._note_cast(seg, best, chunk_id, source)
        return best

    # -- candidates ----------------------------------------------------------

    def _try_delta(self, raw, chunk_id, seg):
        itemsize = DELTA_ITEMSIZE.get(seg.dtype)
        tp = self.parent.get(seg.tensor)
        if itemsize is None or tp is None or tp.dtype != seg.dtype or tp.shape != tuple(seg.shape) \
                or seg.piece >= len(tp.chunks):
            return None
        base_id, base_len = tp.chunks[seg.piece]
        if base_len != len(raw) or base_id == chunk_id:
            return None
        base, depth = self._base(base_id)
        if base is None:
            return None
        order = (delta.XOR, delta.SUB) if itemsize == 2 else (delta.SUB, delta.XOR)
        return delta.encode(raw, chunk_id, base, base_id, itemsize=itemsize, base_depth=depth, codecs_to_try=order,
                            floats=seg.dtype in EXP_DTYPES)

    def _try_cast(self, raw, chunk_id, seg):
        """The smallest cast of this piece from an archived fp32 tensor, and the version it is from.

        Sources are tried in the order of :meth:`_cast_candidates`, but the version the last exact
        cast came from goes first: a bf16 copy is usually the cast of one version throughout, and
        not always of the parent (measured: a bf16 cast of v1 archived after a partial fine-tune
        v3 tried v3, v2, then v1 for each changed piece; 1.5x the snapshot time). A base chunk
        shared by several versions is tried once and credited to the first of them in the
        canonical order, so the recorded source does not depend on which was tried first.
        """
        sources = [tp for tp in self._cast_candidates(seg) if seg.piece < len(tp.chunks)]
        preferred = self._exact_source
        best, tried = None, set()
        for source in sorted(sources, key=lambda tp: tp.manifest_id != preferred):  # stable
            base_id, base_len = source.chunks[seg.piece]
            if base_len != 2 * len(raw) or base_id in tried:
                continue
            tried.add(base_id)
            base, depth = self._base(base_id)
            if base is None:
                continue
            enc = cast.encode(raw, chunk_id, seg.dtype, base, base_id, base_depth=depth)
            if enc is not None and (best is None or len(enc.container) < len(best[0].container)):
                best = (enc, next(tp.manifest_id for tp in sources if tp.chunks[seg.piece][0] == base_id))
                if codecs.parse_container(enc.container, chunk_id).meta.get("exact") == "1":
                    self._exact_source = source.manifest_id
                    break
        return best or (None, None)

    def _cast_candidates(self, seg):
        """fp32 sources of the same tensor: the parent, then the model's other versions newest first."""
        shape = tuple(seg.shape)
        tp = self.parent.get(seg.tensor)
        if tp is not None and tp.dtype == cast.SOURCE_DTYPE and tp.shape == shape:
            yield tp
        for idx in self._other_versions():
            tp = idx.get(seg.tensor)
            if tp is not None and tp.dtype == cast.SOURCE_DTYPE and tp.shape == shape:
                yield tp

    def _other_versions(self) -> list[dict[str, TensorPieces]]:
        with self._lock:
            if self._cast_sources is None:
                refs = sorted(self.store.list_refs(self.model), key=lambda r: r.created_at, reverse=True) \
                    if self.model else []
                self._cast_sources = [
                    tensor_index(self.store.get_manifest(r.manifest_id), r.manifest_id)
                    for r in refs if r.manifest_id != self.parent_id
                ][:MAX_CAST_SOURCES]
            return self._cast_sources

    # -- bases ---------------------------------------------------------------

    def _base(self, base_id: str) -> tuple[bytes | None, int]:
        """(raw bytes, chain depth) of a candidate base; raw is None when the base is damaged,
        missing or already ``max_chain`` hops from a full chunk. One read gives both."""
        depth = self._depths.get(base_id)
        if depth is not None and depth + 1 > self.max_chain:
            return None, depth
        raw = delta.BASES.get(base_id)
        if raw is not None and depth is not None:
            return raw, depth
        try:
            container = self.store.get_container(base_id)
            depth = self._depths[base_id] = delta.chain_depth(codecs.parse_container(container, base_id))
            if depth + 1 > self.max_chain:
                return None, depth
            if raw is None:
                raw = codecs.decode_chunk(container, base_id, self.store.read_chunk)
                delta.BASES.put(base_id, raw)
        except IntegrityError:
            return None, -1  # a damaged or missing base is never built on
        return raw, depth

    def _note_cast(self, seg, enc, chunk_id: str, source_id: str) -> None:
        meta = codecs.parse_container(enc.container, chunk_id).meta
        with self._lock:
            d = self.derivations.setdefault(seg.tensor, {
                "tensor": seg.tensor, "dtype": seg.dtype, "source_version": source_id,
                "source_dtype": cast.SOURCE_DTYPE, "recipes": [], "pieces": 0, "exact_pieces": 0,
                "differing_elements": 0,
            })
            if meta["recipe"] not in d["recipes"]:
                d["recipes"].append(meta["recipe"])
            d["pieces"] += 1
            d["exact_pieces"] += meta.get("exact") == "1"
            d["differing_elements"] += int(meta.get("n_diff", 0))

    def manifest_metadata(self) -> dict:
        """What to record in the manifest: ``{"derivations": [...]}`` sorted by tensor, or {}."""
        if not self.derivations:
            return {}
        rows = []
        for name in sorted(self.derivations):
            d = dict(self.derivations[name])
            d["recipes"] = sorted(d["recipes"])
            rows.append(d)
        return {"derivations": rows}


def _smaller(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return b if len(b.container) < len(a.container) else a


def make_encoder(store: Store, parent_id: str | None, model: str | None = None) -> Encoder:
    """The default snapshot encoder for a version whose parent manifest is ``parent_id``."""
    return Encoder(store, parent_id, model)
