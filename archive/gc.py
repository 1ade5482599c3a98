"""Delete versions and collect garbage: ``rm`` drops a name, ``gc`` frees the bytes.

``remove_version`` writes a ``removed`` event (model, version, manifest,
reason) and only then deletes the ref, so the history of what existed stays
in the store (and in the catalog after any rebuild); a rerun finishes an
interrupted removal.

``collect`` is mark and sweep under the store lock held *exclusively*:

- Roots are every ref. A ref or a live manifest that cannot be read stops GC
  (git's t5312 rule: an unreadable reference is never "no reference").
- Marked: the chunks of live manifests, then, transitively, the delta base of
  every marked chunk, read from the chunk container headers (the store is the
  truth, not the catalog's ``base_id``). A marked chunk that is missing or
  whose header is unreadable stops GC before anything is deleted.
- Snapshots in progress: a snapshot holds the store lock shared from its first
  chunk to its ref, so none can run while GC holds it exclusively. As a second
  guard (writers that bypass the lock, clock skew), unreferenced objects
  younger than ``grace`` are kept, and so are the chunks of unreferenced
  manifests that are still within the grace period. Snapshot refreshes the
  mtime of every chunk it re-references.
- Sweep order: unreferenced manifests first, then unreferenced chunks, then
  stale temp files. GC keeps no journal: every run recomputes the mark set
  from the store, and deletion is idempotent, so an interrupted GC leaves a
  consistent store and a rerun finishes the job.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from weightvault.archive import ids
from weightvault.archive.backend import ObjectInfo
from weightvault.archive.store import Store
from weightvault.errors import (
    GcRefusedError,
    IntegrityError,
    StoreFormatError,
    UsageError,
    VersionNotFoundError,
)

DEFAULT_GRACE_S = 3600.0  # longer than any write of one chunk or manifest under a bypassed lock
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Parse ``90s``, ``30m``, ``1h``, ``2d``, ``2w`` or plain seconds.

    >>> parse_duration("2h")
    7200.0
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if not m:
        raise UsageError(f"bad duration {text!r}", hint="use e.g. 0, 90s, 30m, 1h, 2d or 2w")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(frozen=True)
class RemovedVersion:
    """A version whose ref ``rm`` deleted.

    Attributes:
        model, version: its name.
        manifest_id: the manifest it named (kept until gc).
        event_id: the ``removed`` event recording it.
    """

    model: str
    version: str
    manifest_id: str
    event_id: str


def remove_version(store: Store, model: str, version: str, *, reason: str = "",
                   lock_timeout: float | None = None) -> RemovedVersion:
    """Delete the ref ``model@version``, recording a ``removed`` event first.

    Args:
        store: the store.
        model, version: the version to remove.
        reason: free text kept in the event.
    Returns:
        What was removed; its chunks stay until ``collect`` runs.
    """
    with store.lock.held(shared=True, timeout=lock_timeout, op=f"rm {model}@{version}"):
        try:
            ref = store.get_ref(model, version)
        except StoreFormatError as e:  # its ref is unreadable: verify advises removing it
            ref, unreadable = None, e.message
        else:
            unreadable = None
            if ref is None:
                raise VersionNotFoundError(model, version)
        payload = {"model": model, "version": version, "manifest": ref.manifest_id if ref else None,
                   "created_at": ref.created_at if ref else None, "reason": reason}
        if unreadable:
            payload["unreadable_ref"] = unreadable
        try:  # its edges, so the lineage of what derives from it still reaches past it, and its
            # snapshot-time tags, so tag history keeps them as it keeps `tag` moves (events)
            if ref is not None:
                m = store.get_manifest(ref.manifest_id)
                payload.update(parent=m.parent, lineage=list(m.lineage), tags=sorted(set(m.tags)))
        except IntegrityError:
            pass  # a damaged version can still be removed (gc and verify advise it)
        eid = store.put_event("removed", payload)
        store.mark_removed(model, version, eid)  # before the ref goes: see snapshot.next_version
        store.delete_ref(model, version)
    return RemovedVersion(model, version, ref.manifest_id if ref else None, eid)


@dataclass
class GcReport:
    """What a GC run found and did.

    Attributes:
        dry_run: nothing was deleted.
        live_versions: refs marked from.
        live_chunks: chunks kept because something references them (bases included).
        base_chunks: of those, chunks kept only as delta bases.
        removed_manifests, removed_chunks: objects deleted (or that would be).
        freed_bytes: their size on disk.
        kept_young_manifests, kept_young_chunks: unreferenced but inside the grace period (for
            chunks: young, or in the delta base chain of a young chunk or of a young manifest's).
        temp_files: stale temp files removed.
        grace_s: the grace period used.
    """

    dry_run: bool
    grace_s: float
    live_versions: int = 0
    live_chunks: int = 0
    base_chunks: int = 0
    removed_manifests: list[str] = field(default_factory=list)
    removed_chunks: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept_young_manifests: int = 0
    kept_young_chunks: int = 0
    temp_files: int = 0


def _live_manifests(store: Store) -> dict[str, object]:
    """Manifest id -> Manifest for every ref; refuses on anything unreadable."""
    problems, out = [], {}
    try:
        refs = store.list_refs(strict=True)  # a ref gc cannot read could name any chunk: refuse
    except StoreFormatError as e:
        raise GcRefusedError([str(e)]) from None
    for r in refs:
        try:
            out[r.manifest_id] = store.get_manifest(r.manifest_id)
        except IntegrityError as e:
            problems.append(f"{r.model}@{r.version}: {e}")
    if problems:
        raise GcRefusedError(problems)
    return out


def mark_chunks(store: Store, chunk_ids, *, strict: bool = True) -> tuple[set[str], set[str], list[str]]:
    """Close a chunk set over delta bases, reading each container header once.

    Args:
        store: the store.
        chunk_ids: chunks referenced directly.
        strict: collect a problem for each missing or unreadable chunk.
    Returns:
        (marked chunks, chunks marked only as bases, problems).
    """
    marked = set(chunk_ids)
    bases: set[str] = set()
    problems: list[str] = []
    frontier = sorted(marked)
    while frontier:
        cid = frontier.pop()
        try:
            header, _ = store.chunk_header(cid)
        except IntegrityError as e:
            if strict:
                problems.append(str(e))
            continue
        base = header.base
        if base and base not in marked:
            marked.add(base)
            bases.add(base)
            frontier.append(base)
    return marked, bases, problems


def plan(store: Store, *, grace_s: float = DEFAULT_GRACE_S, now: float | None = None) -> tuple[GcReport, list[ObjectInfo], list[ObjectInfo]]:
    """Mark, and list what a sweep would delete (call with the store lock held).

    Returns:
        (report so far, manifests to delete, chunks to delete).
    """
    now = time.time() if now is None else now
    report = GcReport(dry_run=True, grace_s=grace_s)
    live = _live_manifests(store)
    report.live_versions = len(live)
    referenced = {c for m in live.values() for c in m.chunk_ids()}
    dead_manifests, young_refs = [], set()
    for info in store.backend.list("manifests/"):
        mid = info.key.rsplit("/", 1)[-1]
        if not ids.is_id(mid) or mid in live:
            continue
        if now - info.mtime < grace_s:
            report.kept_young_manifests += 1
            try:  # a snapshot may be about to name it: keep its chunks too
                young_refs |= store.get_manifest(mid).chunk_ids()
            except IntegrityError:
                pass
        else:
            dead_manifests.append(info)
    marked, bases, problems = mark_chunks(store, referenced)
    if problems:
        raise GcRefusedError(problems)
    chunks = list(store.list_chunks())
    # A young chunk no manifest names yet (a snapshot running, or one stopped before its
    # manifest) is kept, and so is its delta base chain: the snapshot run again reuses it.
    young = {i.key.rsplit("/", 1)[-1] for i in chunks if now - i.mtime < grace_s}
    young_marked, _, _ = mark_chunks(store, (young_refs | young) - marked, strict=False)
    report.live_chunks, report.base_chunks = len(marked), len(bases - referenced)
    dead_chunks = []
    for info in chunks:
        cid = info.key.rsplit("/", 1)[-1]
        if cid in marked:
            continue
        if cid in young_marked:
            report.kept_young_chunks += 1
        else:
            dead_chunks.append(info)
    report.removed_manifests = [i.key.rsplit("/", 1)[-1] for i in dead_manifests]
    report.removed_chunks = [i.key.rsplit("/", 1)[-1] for i in dead_chunks]
    report.freed_bytes = sum(i.size for i in dead_manifests) + sum(i.size for i in dead_chunks)
    return report, dead_manifests, dead_chunks


def collect(store: Store, *, dry_run: bool = False, grace_s: float = DEFAULT_GRACE_S,
            lock_timeout: float | None = None, progress=None) -> GcReport:
    """Delete what no version needs: unreferenced manifests, then chunks, then temp files.

    Args:
        store: the store.
        dry_run: report only.
        grace_s: keep unreferenced objects younger than this many seconds.
        progress: callable(n) per object deleted, optionally with ``start(total)``.
    Returns:
        A GcReport; ``freed_bytes`` counts what was (or would be) deleted.

    Example:
        >>> # collect(Store.open("vault"), dry_run=True).freed_bytes
    """
    with store.lock.held(shared=False, timeout=lock_timeout, op="gc"):
        report, dead_manifests, dead_chunks = plan(store, grace_s=grace_s)
        report.dry_run = dry_run
        if dry_run:
            return report
        if progress is not None and hasattr(progress, "start"):
            progress.start(len(dead_manifests) + len(dead_chunks))
        # Manifests before chunks: no manifest left in the store ever names a deleted chunk.
        # Before each delete: the lease still held (object storage; a paused gc whose lease ran
        # out may now run beside a snapshot that reuses these chunks).
        for info in dead_manifests:
            store.lock.check()
            store.backend.delete(info.key)
            if progress:
                progress(1)
        for info in dead_chunks:
            store.lock.check()
            store.backend.delete(info.key)
            if progress:
                progress(1)
        sweep = getattr(store.backend, "sweep_temp", None)
        if sweep is not None:
            store.lock.check()  # packed backends delete here (index rewrites, repacks)
            report.temp_files = sweep(older_than_s=grace_s)
    return report


def forget_chunks_in_catalog(con, chunk_ids: list[str]) -> None:
    """Drop catalog rows of swept chunks (a rebuild would not recreate them either)."""
    if chunk_ids:
        con.execute("DELETE FROM chunks WHERE chunk_id IN (SELECT unnest($1))", [list(chunk_ids)])
