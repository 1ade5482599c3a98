"""Verify: re-read what is stored and name everything a damaged chunk affects.

Two depths, as restic ``check`` and ``check --read-data``:

- :func:`check_structure` (the CLI default, fast): every manifest parses and
  matches its ID (done when the caller loads it), every referenced chunk and
  every delta base it needs exists, its container header parses, names the
  chunk, records the raw length the manifest expects, and its stored size is
  plausible for its codec. Reads a few KiB per chunk.
- :func:`verify` (``--read-data``, optionally ``--subset PCT``): decodes every
  chunk (bases included), checks it against its ID; detects any flipped byte.

Both map each damaged or missing chunk back to the versions, files and tensors
that use it; ``Damage.cause`` names the chunk actually at fault when a chunk
is lost because its delta base is.
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
    cause: str | None = None  # the chunk at fault when it is not chunk_id (a delta base)


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
    mode: str = "read-data"  # or "structure"
    chunks_checked: int = 0
    chunks_total: int = 0
    bytes_checked: int = 0
    damaged: list[Damage] = field(default_factory=list)
    broken_versions: list[tuple[str, str]] = field(default_factory=list)  # (model@version, why) unreadable

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.broken_versions


def load_versions(store: Store) -> tuple[dict[str, Manifest], list[tuple[str, str]]]:
    """Every ref's manifest, and the versions whose manifest is missing or damaged.

    Returns:
        (manifest id -> manifest, [(model@version, reason)]).
    """
    manifests = {}
    refs, broken = store.scan_refs()  # an unreadable ref is a broken version, not a stop
    for r in refs:
        try:
            manifests[r.manifest_id] = store.get_manifest(r.manifest_id)
        except IntegrityError as e:
            broken.append((f"{r.model}@{r.version}", str(e)))
    return manifests, broken


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
            store.read_chunk(cid, lengths.get(cid))
            return cid, None
        except IntegrityError as e:
            return cid, _problem(cid, e)

    # Delta bases are decoded on their own first: a decoder may serve a base from a
    # process-wide cache, which would hide a base lost on disk since it was cached.
    chains = _base_chains(store, todo)
    bases = sorted({b for seq in chains.values() for b in seq})
    bad: dict[str, tuple[str, str | None]] = {}  # base -> (reason, chunk at fault when another)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        for cid, problem in pool.map(check, bases):
            if problem:
                bad[cid] = problem
        for cid, problem in pool.map(check, [c for c in todo if c not in bad]):
            if problem is None:
                culprit = next((b for b in chains.get(cid, ()) if b in bad), None)
                if culprit:
                    problem = _through(culprit, bad)
            _count(report, cid, problem, lengths, uses, progress)
        for cid in (c for c in todo if c in bad):  # referenced chunks that are also bases
            _count(report, cid, bad[cid], lengths, uses, progress)
    return report


def _through(base: str, bad: dict) -> tuple[str, str]:
    """The problem of a chunk whose delta base ``base`` cannot be decoded, naming the chunk at
    fault: ``base`` itself, or the chunk that ``base`` is lost through. An intact delta between
    them is never blamed (repair would quarantine it, and a re-snapshot of the lost bytes would no
    longer heal the versions built on it)."""
    reason, cause = bad[base]
    if cause is None:
        return f"its delta base {base[:16]} is damaged: {reason}", base
    if cause in bad and bad[cause][1] is None:  # the chunk at fault was checked on its own
        reason = bad[cause][0]
    else:  # "its delta base C is damaged: R" -> R
        reason = reason.split(": ", 1)[-1]
    return f"its delta base {cause[:16]} is damaged: {reason}", cause


def _count(report, cid, problem, lengths, uses, progress) -> None:
    report.chunks_checked += 1
    report.bytes_checked += lengths[cid]
    if progress:
        progress(lengths[cid])
    if problem:
        reason, cause = problem
        report.damaged.append(Damage(cid, reason, tuple(uses.get(cid, ())), cause))


def _base_chains(store: Store, chunk_ids) -> dict[str, list[str]]:
    """chunk id -> its delta bases, nearest first, read from container headers (unreadable: stop)."""
    headers: dict[str, str | None] = {}

    def base_of(cid):
        if cid not in headers:
            try:
                headers[cid] = store.chunk_header(cid)[0].base
            except IntegrityError:
                headers[cid] = None  # decoding reports it
        return headers[cid]

    out = {}
    for cid in chunk_ids:
        seq, cur, seen = [], cid, {cid}
        while (b := base_of(cur)) and b not in seen:
            seq.append(b)
            seen.add(b)
            cur = b
        out[cid] = seq
    return out


def _problem(cid: str, e: IntegrityError) -> tuple[str, str | None]:
    """(reason, chunk at fault if another one) for an error met reading ``cid``."""
    at = getattr(e, "chunk_id", cid)
    reason = getattr(e, "reason", None) or ("missing" if "missing" in str(e) else str(e))
    if at != cid:
        return f"its delta base {at[:16]} is damaged: {reason}", at
    return reason, None


def check_structure(store: Store, manifests: dict[str, Manifest], *, progress=None,
                    workers: int | None = None) -> VerifyReport:
    """Fast check: every referenced chunk (and delta base) exists and its header is sound.

    Args:
        store: the store.
        manifests: manifest id -> manifest of the versions to check (already
            parsed, so their hashes and structure are checked).
    Returns:
        A VerifyReport with ``mode == "structure"``; ``bytes_checked`` is 0.
    """
    report = VerifyReport(versions=sorted(f"{m.model}@{m.version}" for m in manifests.values()), mode="structure")
    uses = chunk_uses(manifests)
    lengths = {cid: n for m in manifests.values() for f in m.files for cid, n in f.chunks}
    report.chunks_total = len(lengths)
    if progress is not None and hasattr(progress, "start"):
        progress.start(len(lengths))
    bad_bases: dict[str, str] = {}

    def header_problem(cid, raw_len):
        try:
            h, size = store.chunk_header(cid)
        except IntegrityError as e:
            return _problem(cid, e)[0], None
        if raw_len is not None and h.raw_len != raw_len:
            return f"container raw_len {h.raw_len} != recorded {raw_len}", None
        return h.size_problem(size), h.base

    def check(cid):
        problem, base = header_problem(cid, lengths[cid])
        seen = {cid}
        while problem is None and base and base not in seen:  # walk the delta chain
            seen.add(base)
            if base in bad_bases:
                return cid, (f"its delta base {base[:16]} is damaged: {bad_bases[base]}", base)
            bproblem, next_base = header_problem(base, None)
            if bproblem:
                bad_bases[base] = bproblem
                return cid, (f"its delta base {base[:16]} is damaged: {bproblem}", base)
            base = next_base
        return cid, (problem, None) if problem else None

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        for cid, problem in pool.map(check, sorted(lengths)):
            report.chunks_checked += 1
            if progress:
                progress(1)
            if problem:
                report.damaged.append(Damage(cid, problem[0], tuple(uses.get(cid, ())), problem[1]))
    return report
