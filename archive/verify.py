"""Verify: re-read what is stored and name everything a damaged chunk affects.

``verify`` decodes every chunk the chosen versions reference (or a random
subset of them), checks it against its ID, and maps each damaged or missing
chunk back to the versions, files and tensors that use it.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from weightvault.archive.manifest import Manifest
from weightvault.archive.store import Store
from weightvault.errors import IntegrityError


@dataclass(frozen=True)
class Damage:
    """One damaged or missing chunk and who uses it.

    Attributes:
        chunk_id: the chunk.
        reason: what is wrong ("missing", "content hash does not match its ID", ...).
        uses: (model@version, file path, tensor name or None) triples.
    """

    chunk_id: str
    reason: str
    uses: tuple[tuple[str, str, str | None], ...]


@dataclass
class VerifyReport:
    """Result of a verify run.

    Attributes:
        versions: versions checked.
        chunks_checked: chunks decoded and hashed.
        chunks_total: chunks referenced by those versions.
        bytes_checked: raw bytes hashed.
        damaged: every problem found.
    """

    versions: list[str] = field(default_factory=list)
    chunks_checked: int = 0
    chunks_total: int = 0
    bytes_checked: int = 0
    damaged: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged


def chunk_uses(manifests: dict[str, Manifest]) -> dict[str, list[tuple[str, str, str | None]]]:
    """Map chunk id -> where it is used."""
    uses: dict[str, list] = {}
    for m in manifests.values():
        ref = f"{m.model}@{m.version}"
        for f in m.files:
            owner = [None] * len(f.chunks)
            for t in f.tensors:
                for i in range(t.first_chunk, t.first_chunk + t.n_chunks):
                    owner[i] = t.name
            for (cid, _), tname in zip(f.chunks, owner):
                uses.setdefault(cid, []).append((ref, f.path, tname))
    return uses


def verify(store: Store, manifests: dict[str, Manifest], *, subset: float | None = None,
           progress=None, workers: int | None = None, seed: int | None = None) -> VerifyReport:
    """Decode and hash-check every chunk the manifests reference.

    Args:
        store: the store.
        manifests: manifest id -> manifest of the versions to check.
        subset: check only this fraction (0-1] of the chunks, chosen at random.
        progress: callable(n_bytes), optionally with ``start(total)``.
    """
    report = VerifyReport(versions=sorted(f"{m.model}@{m.version}" for m in manifests.values()))
    uses = chunk_uses(manifests)
    lengths = {cid: n for m in manifests.values() for f in m.files for cid, n in f.chunks}
    todo = sorted(lengths)
    report.chunks_total = len(todo)
    if subset is not None and subset < 1:
        k = max(1, round(len(todo) * subset)) if todo else 0
        todo = sorted(random.Random(seed).sample(todo, k))
    if progress is not None and hasattr(progress, "start"):
        progress.start(sum(lengths[c] for c in todo))

    def check(cid):
        try:
            store.read_chunk(cid, lengths[cid])
            return cid, None
        except IntegrityError as e:
            return cid, getattr(e, "reason", None) or ("missing" if "missing" in str(e) else str(e))

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        for cid, problem in pool.map(check, todo):
            report.chunks_checked += 1
            report.bytes_checked += lengths[cid]
            if progress:
                progress(lengths[cid])
            if problem:
                report.damaged.append(Damage(cid, problem, tuple(uses.get(cid, ()))))
    return report
