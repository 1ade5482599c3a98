"""Pack GC: which packs hold dead chunks, dropping them, and repacking partly-live ones.

The API the GC helper calls on a packed store (archive/packs.py), each taking
the mark set (every referenced chunk id, delta bases included) and meant to
run under the store's exclusive lock:

- :func:`pack_usage`: per pack, its live and dead chunks and bytes;
- :func:`sweep_packs`: drop packs none of whose chunks is live, and packs
  without an index (crashed uploads), older than the grace period;
- :func:`repack`: copy the live chunks of mostly-dead packs into new packs,
  then drop the old ones.

``weightvault gc`` does not need to call these: deleting dead chunk keys and
its final ``sweep_temp`` step reach the same end (see PackedBackend.sweep_temp).

>>> # rep = sweep_packs(store.backend, marked, grace_s=3600); repack(store.backend, marked)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from weightvault.archive import ids
from weightvault.archive.packs import PACK_PREFIX, PackedBackend, move_live


@dataclass(frozen=True)
class PackUsage:
    """How much of a pack is still referenced.

    Attributes:
        pack_id: the pack.
        live: chunk ids in it that are referenced.
        dead: chunk ids in it that are not.
        live_bytes, dead_bytes: their stored sizes.
        mtime: when its index was last written.
    """

    pack_id: str
    live: tuple[str, ...]
    dead: tuple[str, ...]
    live_bytes: int
    dead_bytes: int
    mtime: float

    @property
    def live_fraction(self) -> float:
        total = self.live_bytes + self.dead_bytes
        return self.live_bytes / total if total else 0.0


def pack_usage(backend: PackedBackend, live_chunks: set[str]) -> list[PackUsage]:
    """Classify every pack's chunks as live or dead.

    Args:
        backend: the packed backend.
        live_chunks: every referenced chunk id (GC's mark set, delta bases included).
    Returns:
        One PackUsage per indexed pack, sorted by pack id.
    """
    backend.refresh()
    out = []
    for pid, entries in sorted(backend.pack_entries().items()):
        # A chunk stored in several packs (concurrent writers) is live only in the copy the
        # index resolves to; the other copies are dead bytes that GC may free.
        chosen = {c for c in entries if c in live_chunks and backend._index.get(c, None) is not None
                  and backend._index[c].pack_id == pid}
        live = tuple(sorted(chosen))
        dead = tuple(sorted(c for c in entries if c not in chosen))
        out.append(PackUsage(pid, live, dead, sum(entries[c][1] for c in live),
                             sum(entries[c][1] for c in dead), backend._pack_mtime.get(pid, 0.0)))
    return out


@dataclass
class PackGcReport:
    """What sweep_packs/repack did (or would do with dry_run).

    Attributes:
        packs_dropped: packs deleted because none of their chunks is referenced.
        packs_repacked: partly-live packs rewritten.
        orphans_dropped: packs that had no index (a crashed upload).
        chunks_dropped: unreferenced chunks no longer stored.
        bytes_freed: stored bytes freed.
    """

    packs_dropped: list[str] = field(default_factory=list)
    packs_repacked: list[str] = field(default_factory=list)
    orphans_dropped: list[str] = field(default_factory=list)
    chunks_dropped: int = 0
    bytes_freed: int = 0


def sweep_packs(backend: PackedBackend, live_chunks: set[str], *, grace_s: float = 3600.0,
                dry_run: bool = False, now: float | None = None) -> PackGcReport:
    """Drop packs none of whose chunks is referenced, and index-less packs, older than ``grace_s``.

    Call under the store's exclusive lock, after marking (``live_chunks``).

    >>> # sweep_packs(store.backend, marked, grace_s=3600)
    """
    now = time.time() if now is None else now
    rep = PackGcReport()
    for u in pack_usage(backend, live_chunks):
        if not u.live and now - u.mtime >= grace_s:
            rep.packs_dropped.append(u.pack_id)
            rep.chunks_dropped += len(u.dead)
            rep.bytes_freed += u.dead_bytes
            if not dry_run:
                backend._rewrite_index(u.pack_id, {})
    indexed = set(backend.pack_entries())
    for info in list(backend.inner.list(PACK_PREFIX)):
        pid = info.key.rsplit("/", 1)[-1]
        if pid not in indexed and ids.is_id(pid) and now - info.mtime >= grace_s:
            rep.orphans_dropped.append(pid)
            rep.bytes_freed += info.size
            if not dry_run:
                backend.inner.delete(info.key)
    return rep


def repack(backend: PackedBackend, live_chunks: set[str], *, max_live_fraction: float = 0.5,
           grace_s: float = 3600.0, dry_run: bool = False, now: float | None = None) -> PackGcReport:
    """Rewrite packs whose live fraction is at most ``max_live_fraction``, freeing their dead bytes.

    The live chunks are copied into new packs (pack, then index), and only then
    are the old index and old pack deleted: at every moment each live chunk is
    reachable through some index, so a crash mid-repack loses nothing (a rerun
    finds the chunk in two packs and drops the older one).

    Returns:
        PackGcReport with ``packs_repacked`` and the bytes freed.
    """
    now = time.time() if now is None else now
    rep = PackGcReport()
    todo = [u for u in pack_usage(backend, live_chunks)
            if u.live and u.dead and u.live_fraction <= max_live_fraction and now - u.mtime >= grace_s]
    for u in todo:
        rep.packs_repacked.append(u.pack_id)
        rep.chunks_dropped += len(u.dead)
        rep.bytes_freed += u.dead_bytes
        if dry_run:
            continue
        move_live(backend, u.pack_id, set(u.live), backend.pack_entries()[u.pack_id])
    return rep
