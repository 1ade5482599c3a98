"""Repair: an explicit, lossy pass that says exactly what was lost.

``repair`` holds the store lock exclusively, decodes every chunk that any
version references (``verify --read-data``), and then:

1. moves each damaged chunk (the one at fault, i.e. the delta base when a
   chunk is lost through its base) to ``quarantine/<id>`` and deletes it from
   ``chunks/``, so a later snapshot of the same bytes stores it afresh and
   heals every version that uses it (its ID is the hash of the raw bytes); on
   object storage the intact deltas built on it go too (a snapshot there does
   not check a reused chunk's base chain), so snapshotting any affected
   version's files again heals that version;
2. writes one ``damage`` event per affected version naming the files, tensors
   and chunks that lost data and how many bytes; the catalog shows these in
   the ``version_damage`` view, and they survive a catalog rebuild;
3. with ``remove_damaged``, removes the refs of versions that lost data
   (``removed`` events record why), so that GC can run again.

Nothing is ever zero-filled: a damaged version keeps failing ``restore`` with
a typed error naming the chunk until the chunk is stored again or the version
is removed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from weightvault.archive.gc import remove_version
from weightvault.archive.store import Store, fanout
from weightvault.archive.verify import load_versions, verify

QUARANTINE = "quarantine"


@dataclass(frozen=True)
class FileLoss:
    """What one file of one version lost.

    Attributes:
        version: ``model@version``.
        manifest_id: its manifest.
        path: the file.
        tensors: tensors whose bytes are (partly) lost; empty for non-tensor files.
        chunks: the lost chunks it uses.
        lost_bytes: raw bytes of the file that cannot be rebuilt.
        header_lost: the safetensors header itself (or a non-tensor part) is lost.
    """

    version: str
    manifest_id: str
    path: str
    tensors: tuple[str, ...]
    chunks: tuple[str, ...]
    lost_bytes: int
    header_lost: bool


@dataclass
class RepairReport:
    """What repair found and did.

    Attributes:
        dry_run: nothing was changed.
        versions_checked: versions whose data was decoded.
        unreadable_versions: (model@version, reason) whose manifest is missing or damaged.
        damaged_chunks: chunk id -> reason, for the chunks at fault.
        lost_chunks: every chunk that cannot be decoded (including through a damaged base).
        losses: per version and file, what is lost.
        quarantined: chunks moved to ``quarantine/``.
        quarantined_deltas: on object storage, the intact deltas built on a damaged chunk, moved
            too (a snapshot there does not read a reused chunk's base chain, so it would reuse
            them): re-snapshotting any affected version's files then heals it.
        removed: versions whose ref was removed (``remove_damaged``).
        events: damage events written.
    """

    dry_run: bool
    versions_checked: int = 0
    unreadable_versions: list[tuple[str, str]] = field(default_factory=list)
    damaged_chunks: dict[str, str] = field(default_factory=dict)
    lost_chunks: list[str] = field(default_factory=list)
    losses: list[FileLoss] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    quarantined_deltas: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.unreadable_versions or self.lost_chunks)

    @property
    def lost_bytes(self) -> int:
        return sum(x.lost_bytes for x in self.losses)


def _losses(manifests: dict, lost: set[str]) -> list[FileLoss]:
    out = []
    for mid, m in sorted(manifests.items(), key=lambda x: (x[1].model, x[1].version)):
        for f in m.files:
            hit = [(i, c, n) for i, (c, n) in enumerate(f.chunks) if c in lost]
            if not hit:
                continue
            idx = {i for i, _, _ in hit}
            tensors = tuple(t.name for t in f.tensors if idx & set(range(t.first_chunk, t.first_chunk + t.n_chunks)))
            in_tensor = {i for t in f.tensors for i in range(t.first_chunk, t.first_chunk + t.n_chunks)}
            out.append(FileLoss(f"{m.model}@{m.version}", mid, f.path, tensors,
                                tuple(sorted({c for _, c, _ in hit})), sum(n for _, _, n in hit),
                                bool(idx - in_tensor)))
    return out


def _quarantine(store: Store, chunk_id: str) -> bool:
    key = store.chunk_key(chunk_id)
    try:
        data = store.backend.get(key)
    except FileNotFoundError:
        return False
    store.backend.put(quarantine_key(chunk_id), data)
    store.backend.delete(key)
    return True


def _record(store: Store, report: RepairReport, manifests: dict) -> None:
    by_version = defaultdict(list)
    for loss in report.losses:
        by_version[loss.manifest_id].append(loss)
    for mid, losses in by_version.items():
        m = manifests[mid]
        report.events.append(store.put_event("damage", {
            "model": m.model, "version": m.version, "manifest": mid,
            "lost_bytes": sum(x.lost_bytes for x in losses),
            "files": [{"path": x.path, "tensors": list(x.tensors), "chunks": list(x.chunks),
                       "lost_bytes": x.lost_bytes, "header_lost": x.header_lost} for x in losses],
            "reasons": {c: report.damaged_chunks.get(c, "lost through its delta base")
                        for x in losses for c in x.chunks},
        }))
    for ref, why in report.unreadable_versions:
        model, _, version = ref.rpartition("@")
        report.events.append(store.put_event("damage", {
            "model": model, "version": version, "manifest": None, "lost_bytes": None,
            "files": [], "reasons": {"manifest": why},
        }))


def repair(store: Store, *, dry_run: bool = False, remove_damaged: bool = False,
           lock_timeout: float | None = None, progress=None) -> RepairReport:
    """Find every lost byte, quarantine the damaged chunks and record the losses.

    Args:
        store: the store.
        dry_run: only report.
        remove_damaged: also remove the refs of versions that lost data.
        progress: as for :func:`weightvault.archive.verify.verify`.
    Returns:
        A RepairReport naming versions, files, tensors and bytes lost.

    Example:
        >>> # r = repair(Store.open("vault")); [(x.version, x.path, x.tensors) for x in r.losses]
    """
    report = RepairReport(dry_run=dry_run)
    with store.lock.held(shared=False, timeout=lock_timeout, op="repair"):
        manifests, report.unreadable_versions = load_versions(store)
        report.versions_checked = len(manifests)
        vrep = verify(store, manifests, progress=progress)
        for d in vrep.damaged:
            report.lost_chunks.append(d.chunk_id)
            at = d.cause or d.chunk_id
            if d.cause is None or at not in report.damaged_chunks:
                report.damaged_chunks[at] = d.reason
        report.losses = _losses(manifests, set(report.lost_chunks))
        if dry_run:
            return report
        for cid in sorted(report.damaged_chunks):
            if _quarantine(store, cid):
                report.quarantined.append(cid)
        if not store.backend.cheap_reads:
            # Locally a snapshot checks a reused delta's base chain and stores it again in full
            # when a base is gone; on object storage that would cost a GET per reused chunk, so
            # the deltas lost through a damaged base go too, and a snapshot stores them afresh.
            deltas = {d.chunk_id for d in vrep.damaged if d.cause and d.chunk_id != d.cause}
            for cid in sorted(deltas - set(report.damaged_chunks)):
                if _quarantine(store, cid):
                    report.quarantined_deltas.append(cid)
        _record(store, report, manifests)
        if remove_damaged:
            victims = {x.version for x in report.losses} | {v for v, _ in report.unreadable_versions}
            for ref in sorted(victims):
                model, _, version = ref.rpartition("@")
                remove_version(store, model, version, reason="repair: lost data")
                report.removed.append(ref)
    return report


def quarantine_key(chunk_id: str) -> str:
    """Where repair keeps a damaged chunk's bytes for inspection."""
    return fanout(QUARANTINE, chunk_id)
