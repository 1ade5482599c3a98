"""Turn store records into catalog rows, and keep the catalog in step with the store.

The store is the truth: refs say which versions exist, manifests what they
hold, events what was added later. ``sync`` brings the catalog in line with
the refs and events (indexing what is missing, dropping what is gone), so a
catalog that missed a commit (a crash between ref and catalog write) or was
deleted catches up on the next command.

Extension points, for modules that add tables:
- ``VERSION_INDEXERS``: fn(con, version_id, manifest), run for each indexed version.
- ``VERSION_TABLES``: tables with a ``version_id`` column, cleared when a version goes.
- ``EVENT_INDEXERS``: event type -> fn(con, event_id, event), run for each new event.
- ``SYNC_HOOKS``: fn(con, store), run at the end of each sync's transaction.

One rule for both paths, so that a live catalog equals ``catalog rebuild``: rows that belong to a
version exist only while a ref names it (``drop_version`` deletes them; event indexers skip a
version that is not indexed), ``models`` holds the models with a live version (created_at: their
earliest), and ``chunks`` the chunks live versions use, a chunk the store lacks (quarantined by
``repair``, lost) indexed from what the manifest says with ``codec`` = :data:`MISSING`.
"""

from __future__ import annotations

import importlib
import json
import logging
import math

from weightvault.archive import faults
from weightvault.archive.manifest import Manifest
from weightvault.archive.store import Store
from weightvault.errors import IntegrityError

log = logging.getLogger("weightvault")

MISSING = "missing"  # chunks.codec of a chunk not in the store (or whose container header cannot be read)

VERSION_INDEXERS: list = []
VERSION_TABLES: list[str] = ["file_chunks", "tensors", "files", "version_tags"]
EVENT_INDEXERS: dict = {}
# fn(con, store), run at the end of every sync's transaction.
SYNC_HOOKS: list = []
# Modules that register indexers; imported once by load_plugins().
PLUGINS: list[str] = ["weightvault.catalog.provenance", "weightvault.catalog.distill_runs",
                      "weightvault.catalog.derivations"]
_loaded = False


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    for name in PLUGINS:
        importlib.import_module(name)
    _loaded = True


def bulk_insert(con, table: str, columns: list[str], rows: list[tuple]) -> None:
    """Insert many rows in one statement (unnest of column lists; far faster than executemany)."""
    if not rows:
        return
    cols = list(zip(*rows))
    select = ", ".join(f"unnest(${i + 1})" for i in range(len(columns)))
    con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select}", [list(c) for c in cols])


def index_chunks(con, store: Store, chunk_ids, known_info: dict | None = None,
                 raw_lens: dict | None = None) -> None:
    """Add rows for chunks the catalog does not know yet.

    ``known_info``: chunk id -> (raw length, stored bytes, codec, base) of chunks just written;
    ``raw_lens``: chunk id -> raw length as the manifest records it, for a chunk the store lacks.
    """
    chunk_ids = set(chunk_ids)
    if not chunk_ids:
        return
    have = {r[0] for r in con.execute(
        "SELECT chunk_id FROM chunks WHERE chunk_id IN (SELECT unnest($1))", [list(chunk_ids)]).fetchall()}
    for cid in sorted(have & set(known_info or ())):  # stored again over a damaged copy (snapshot heals)
        _, stored, codec, base = known_info[cid]
        con.execute("UPDATE chunks SET stored_bytes = ?, codec = ?, base_id = ? WHERE chunk_id = ?",
                    [stored, codec, base, cid])
    rows = []
    for cid in sorted(chunk_ids - have):
        info = (known_info or {}).get(cid)
        if info is not None:
            raw_len, stored, codec, base = info
        else:
            try:
                header, stored = store.chunk_header(cid)
            except IntegrityError as e:  # missing or damaged: index what the manifest says; verify reports it
                log.warning("indexing %s: %s", cid[:16], e)
                rows.append((cid, (raw_lens or {}).get(cid, 0), 0, MISSING, None))
                continue
            raw_len, codec, base = header.raw_len, header.codec, header.base
        rows.append((cid, raw_len, stored, codec, base))
    bulk_insert(con, "chunks", ["chunk_id", "raw_bytes", "stored_bytes", "codec", "base_id"], rows)


def index_version(con, store: Store, version_id: str, m: Manifest, chunk_info: dict | None = None) -> None:
    """Insert one version's rows (within the caller's transaction)."""
    src = m.source or {}
    con.execute("INSERT INTO models VALUES (?, ?) ON CONFLICT DO NOTHING", [m.model, m.created_at])
    con.execute(
        "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [version_id, m.model, m.version, m.parent, m.created_at, m.message, src.get("kind"),
         src.get("uri") or src.get("path") or (f"hf:{src['repo']}" if src.get("repo") else None),
         src.get("revision"), len(m.files), sum(len(f.tensors) for f in m.files),
         m.metadata.get("n_parameters"), m.raw_bytes, json.dumps(m.metadata)],
    )
    bulk_insert(con, "version_tags", ["version_id", "tag"], [(version_id, t) for t in sorted(set(m.tags))])
    bulk_insert(con, "files", ["version_id", "path", "size", "sha256", "format", "n_chunks"],
                [(version_id, f.path, f.size, f.sha256, f.format, len(f.chunks)) for f in m.files])
    fc, tens = [], []
    for f in m.files:
        off = 0
        for seq, (cid, n) in enumerate(f.chunks):
            fc.append((version_id, f.path, seq, cid, off, n))
            off += n
        for t in f.tensors:
            n_el = math.prod(t.shape)
            tens.append((version_id, f.path, t.name, t.dtype, list(t.shape), n_el, t.begin, t.end,
                         [c for c, _ in f.tensor_chunks(t)]))
    bulk_insert(con, "file_chunks", ["version_id", "path", "seq", "chunk_id", "file_offset", "raw_bytes"], fc)
    bulk_insert(con, "tensors", ["version_id", "path", "name", "dtype", "shape", "n_elements", "byte_begin",
                                 "byte_end", "chunk_ids"], tens)
    index_chunks(con, store, m.chunk_ids(), chunk_info, raw_lens={cid: n for f in m.files for cid, n in f.chunks})
    for fn in VERSION_INDEXERS:
        fn(con, version_id, m)


def recheck_chunks(con, store: Store, chunk_ids=()) -> None:
    """Read again the headers of the chunks indexed as :data:`MISSING` and of ``chunk_ids`` (those a new
    ``damage`` event names): ``repair`` moved a chunk to quarantine, or a snapshot stored one again,
    without a catalog row being written for it. Each row ends as a rebuild would index it."""
    rows = con.execute("SELECT chunk_id, codec FROM chunks WHERE codec = $1 OR chunk_id IN (SELECT unnest($2))",
                       [MISSING, sorted(set(chunk_ids))]).fetchall()
    for cid, codec in rows:
        try:
            header, stored = store.chunk_header(cid)
        except IntegrityError:
            if codec != MISSING:
                con.execute("UPDATE chunks SET stored_bytes = 0, codec = ?, base_id = NULL WHERE chunk_id = ?",
                            [MISSING, cid])
            continue
        if codec == MISSING:
            con.execute("UPDATE chunks SET raw_bytes = ?, stored_bytes = ?, codec = ?, base_id = ? WHERE chunk_id = ?",
                        [header.raw_len, stored, header.codec, header.base, cid])


def _damaged_chunks(events) -> set[str]:
    """Chunk ids that ``damage`` events (archive/repair.py) name."""
    out: set[str] = set()
    for _, ev in events:
        p = ev.get("payload") if ev.get("type") == "damage" else None
        if not isinstance(p, dict):
            continue
        if isinstance(p.get("reasons"), dict):
            out.update(k for k in p["reasons"] if isinstance(k, str) and k != "manifest")
        for f in p.get("files") if isinstance(p.get("files"), list) else ():
            if isinstance(f, dict) and isinstance(f.get("chunks"), list):
                out.update(c for c in f["chunks"] if isinstance(c, str))
    return out


def settle(con, store: Store, *, dropped: bool, added: bool, events=()) -> None:
    """What a sync changes beyond its own records, so the catalog holds what a rebuild would:
    ``models`` from the live versions, no rows for chunks only removed versions used, chunk rows of
    quarantined (or stored again) chunks. Within the sync's transaction."""
    if dropped:
        con.execute("DELETE FROM chunks WHERE chunk_id NOT IN (SELECT chunk_id FROM file_chunks)")
    if dropped or added:
        con.execute("DELETE FROM models WHERE model NOT IN (SELECT model FROM versions)")
        con.execute("UPDATE models SET created_at = v.first FROM "
                    "(SELECT model, min(created_at) AS first FROM versions GROUP BY model) v "
                    "WHERE models.model = v.model AND models.created_at <> v.first")
    if dropped or added or events:
        recheck_chunks(con, store, _damaged_chunks(events))


def reset(con) -> None:
    """Delete every row (the migrations' bookkeeping aside): the next sync indexes the store afresh,
    as ``catalog rebuild`` does. For a catalog written by a release that lacked some migrations:
    its rows predate the tables and indexers those add, and its events all count as indexed."""
    tables = [t for (t,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name <> 'schema_migrations'").fetchall()]
    con.execute("BEGIN TRANSACTION")
    try:
        for t in tables:
            con.execute(f'DELETE FROM "{t}"')
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def drop_version(con, version_id: str) -> None:
    for table in VERSION_TABLES:
        con.execute(f"DELETE FROM {table} WHERE version_id = ?", [version_id])
    con.execute("DELETE FROM versions WHERE version_id = ?", [version_id])
    con.execute("DELETE FROM unindexed_versions WHERE version_id = ?", [version_id])


def index_event(con, event_id: str, event: dict) -> None:
    con.execute("INSERT INTO events VALUES (?, ?, ?, ?)",
                [event_id, event["type"], event["at"], json.dumps(event["payload"])])
    fn = EVENT_INDEXERS.get(event["type"])
    if fn is not None:
        fn(con, event_id, event)


def plan_sync(con, store: Store):
    """What differs between the store and the catalog: (to_add, to_drop, new_event_ids).

    A version listed in ``unindexed_versions`` counts as known: it is not read again at every
    command (``catalog rebuild`` retries it).

    Events are listed before refs: an event about a version is written after its ref, so the
    version of every event listed here is among the refs listed next (unless it was removed),
    and an event indexer that skips versions that are not indexed skips only removed ones.
    """
    event_ids = store.list_event_ids()
    want = {(r.model, r.version): r.manifest_id for r in store.list_refs()}
    have = {(m, v): vid for vid, m, v in con.execute(
        "SELECT version_id, model, version FROM versions UNION ALL "
        "SELECT version_id, model, version FROM unindexed_versions").fetchall()}
    to_drop = [vid for key, vid in have.items() if want.get(key) != vid]
    to_add = [(key, mid) for key, mid in want.items() if have.get(key) != mid]
    known_events = {r[0] for r in con.execute("SELECT event_id FROM events").fetchall()}
    new_events = [e for e in event_ids if e not in known_events]
    return to_add, to_drop, new_events


class _Refused(Exception):
    """DuckDB refused one record's rows; the sync is redone without them."""

    def __init__(self, kind: str, key, reason: str):
        super().__init__(reason)
        self.kind, self.key, self.reason = kind, key, reason


def sync(con, store: Store, plan=None, chunk_info: dict | None = None) -> tuple[int, int, int]:
    """Bring the catalog in line with the store; returns (added, dropped, events).

    One bad record never blocks the rest (the store is the truth; the catalog must stay usable):
    a ref whose manifest cannot be read, or a version or event whose rows DuckDB refuses, is
    recorded in ``unindexed_versions`` / ``unindexed_events`` with a warning, and the others are
    indexed. DuckDB aborts a transaction at its first error, so a refused record means a rollback
    and a second pass without it (at most one pass per bad record).
    """
    duckdb = _duckdb()
    load_plugins()
    to_add, to_drop, new_events = plan if plan is not None else plan_sync(con, store)
    manifests, unreadable = [], {}
    for (model, version), mid in to_add:
        try:
            manifests.append((mid, store.get_manifest(mid)))
        except IntegrityError as e:
            unreadable[mid] = (model, version, str(e))
    events = sorted(((eid, store.get_event(eid)) for eid in new_events), key=lambda e: (e[1]["at"], e[0]))
    refused_events: dict[str, str] = {}
    while True:
        con.execute("BEGIN TRANSACTION")
        try:
            for vid in to_drop:
                drop_version(con, vid)
            # parents before children so lineage indexers can resolve them
            for mid, m in sorted(manifests, key=lambda x: x[1].created_at):
                if mid in unreadable:
                    continue
                try:
                    index_version(con, store, mid, m, chunk_info)
                except duckdb.Error as e:
                    raise _Refused("version", (mid, m.model, m.version), str(e).splitlines()[0]) from e
            for mid, (model, version, why) in unreadable.items():
                con.execute("INSERT INTO unindexed_versions VALUES (?, ?, ?, ?)", [mid, model, version, why])
            for eid, ev in events:
                if eid in refused_events:
                    con.execute("INSERT INTO events VALUES (?, ?, ?, ?)",
                                [eid, ev["type"], ev["at"], json.dumps(ev["payload"])])
                    con.execute("INSERT INTO unindexed_events VALUES (?, ?)", [eid, refused_events[eid]])
                    continue
                try:
                    index_event(con, eid, ev)
                except duckdb.Error as e:
                    raise _Refused("event", (eid, ev.get("type")), str(e).splitlines()[0]) from e
            settle(con, store, dropped=bool(to_drop), added=bool(manifests), events=events)
            for fn in SYNC_HOOKS:
                fn(con, store)
            faults.point("catalog.commit")
            con.execute("COMMIT")
        except _Refused as r:
            con.execute("ROLLBACK")
            if r.kind == "version":
                mid, model, version = r.key
                unreadable[mid] = (model, version, f"not indexed: {r.reason}")
            else:
                refused_events[r.key[0]] = r.reason
            continue
        except BaseException:
            con.execute("ROLLBACK")
            raise
        break
    for mid, (model, version, why) in sorted(unreadable.items(), key=lambda x: x[1][:2]):
        log.warning("version %s@%s is not in the catalog: %s (run `weightvault verify`; "
                    "`weightvault rm %s@%s` removes it)", model, version, why, model, version)
    for eid, why in sorted(refused_events.items()):
        log.warning("event %s: kept, but its rows were not indexed: %s", eid[:16], why)
    return sum(mid not in unreadable for mid, _ in manifests), len(to_drop), len(events)


def _duckdb():
    from weightvault.catalog.connection import duckdb_module

    return duckdb_module()
