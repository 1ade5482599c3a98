"""Recording provenance: datasets, links, lineage, tags and evals, as events first.

Every write here validates its input, writes one immutable event with
``store.put_event`` (the truth), then syncs the catalog (the index), so
``catalog rebuild`` keeps it all. Nothing is written when validation fails.

>>> # from weightvault import Vault, provenance as pv
>>> # v = Vault.open("vault")
>>> # pv.add_dataset(v, {"name": "alpaca", "license": "CC-BY-NC-4.0", "cutoff_date": "2023-03-01"})
>>> # pv.link_dataset(v, "student@1", "alpaca", "distill")
>>> # pv.move_tag(v, "student@1", "prod")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from weightvault.archive import hub, ids
from weightvault.catalog import datasets as ds
from weightvault.catalog import provenance as cp
from weightvault.errors import AlreadyExistsError, InvalidInputError, NotFoundError, RecordValidationError


@dataclass(frozen=True)
class DatasetRef:
    """A recorded dataset, by name and version.

    Attributes:
        name: dataset name.
        version: dataset version label.
    """

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def _record(vault, event_type: str, payload: dict) -> str:
    """Write one event (under the shared store lock), then index it; return its id."""
    with vault.store.lock.held(shared=True, timeout=vault.lock_timeout, op=f"record {event_type}"):
        eid = vault.store.put_event(event_type, payload)
    vault.catalog.sync()
    return eid


# -- datasets ---------------------------------------------------------------------


def find_dataset(vault, text: str) -> DatasetRef:
    """Resolve ``NAME`` (latest recorded version) or ``NAME@VERSION`` to a recorded dataset.

    Raises:
        NotFoundError: no such dataset is recorded.
    """
    name, sep, version = text.partition("@")
    if sep:
        _, rows = vault.query("SELECT name, version FROM datasets WHERE name = ? AND version = ?", [name, version])
    else:
        _, rows = vault.query("SELECT name, version FROM datasets WHERE name = ? ORDER BY recorded_at DESC LIMIT 1",
                              [name])
    if not rows:
        raise NotFoundError(f"dataset {text!r} is not recorded",
                            hint="record it with `weightvault dataset add NAME ...`; list them with `weightvault dataset list`")
    return DatasetRef(*rows[0])


def add_dataset(vault, record: dict, *, source: str = "flags", replace: bool = False) -> tuple[str, dict]:
    """Validate and record a dataset.

    Args:
        vault: an open Vault.
        record: fields of ``schemas/dataset.schema.json``.
        source: where the record came from (for error messages).
        replace: record a correction of an existing name@version (the latest record wins).
    Returns:
        (event id, the normalised record).
    Raises:
        RecordValidationError: a field is missing or invalid (named in the message).
        AlreadyExistsError: name@version is recorded and ``replace`` is False.
        NotFoundError: name@version is not recorded and ``replace`` is True.
    """
    from weightvault.catalog import indexer

    rec = ds.validate(record, source)
    # The check and the write are one step: under the exclusive catalog lock (taken inside the
    # shared store lock, the order `catalog rebuild` takes them in), the catalog is synced with
    # every event in the store, a rival add's included, then checked, then the event written.
    with vault.store.lock.held(shared=True, timeout=vault.lock_timeout, op="record dataset"):
        with vault.catalog.write(op="dataset add") as con:
            indexer.sync(con, vault.store)
            rows = con.execute("SELECT 1 FROM datasets WHERE name = ? AND version = ?",
                               [rec["name"], rec["version"]]).fetchall()
            if rows and not replace:
                raise AlreadyExistsError(f"dataset {rec['name']}@{rec['version']} is already recorded",
                                         hint="pass --replace to record a correction, or give another --version")
            if replace and not rows:  # a mistyped name or --version would record a new dataset silently
                raise NotFoundError(f"dataset {rec['name']}@{rec['version']} is not recorded, so --replace has "
                                    "nothing to correct",
                                    hint="add it without --replace; list the recorded ones with "
                                         "`weightvault dataset list`")
            eid = vault.store.put_event("dataset", rec)
            indexer.sync(con, vault.store)
    return eid, rec


def link_dataset(vault, ref, dataset: str, role: str) -> str:
    """Record that version ``ref`` used ``dataset`` (``NAME[@V]``) in ``role``; returns the event id."""
    _check_role(role)
    r = vault.resolve(ref)
    d = find_dataset(vault, dataset)
    return _record(vault, "link", {"version_id": r.manifest_id, "model": r.model, "version": r.version,
                                   "dataset": d.name, "dataset_version": d.version, "role": role})


def _check_role(role: str) -> None:
    try:
        cp.check_role(role)
    except ValueError as e:
        raise InvalidInputError(str(e), hint=f"use one of: {', '.join(cp.ROLES)}") from None


def snapshot_links(vault, specs) -> list[dict]:
    """``NAME[@V]:ROLE`` strings -> manifest link records (``snapshot --dataset``), checked now."""
    out = []
    for spec in specs:
        name, sep, role = spec.rpartition(":")
        if not sep or not name:
            raise InvalidInputError(f"--dataset {spec!r}: expected NAME[@VERSION]:ROLE", hint="e.g. --dataset alpaca@1:distill")
        _check_role(role)
        d = find_dataset(vault, name)
        out.append({"dataset": d.name, "dataset_version": d.version, "role": role})
    return out


def snapshot_provenance(vault, kw: dict, *, base_model: str | None = None, relation: str = "finetune",
                        datasets=()) -> dict:
    """``kw`` for a snapshot with a ``base_model`` lineage edge and ``datasets`` links added, each
    resolved and checked now (``--base-model``, ``--relation``, ``--dataset``)."""
    kw = dict(kw)
    if base_model:
        kw["lineage"] = (*kw.get("lineage", ()), lineage_edge(vault, base_model, relation))
    if datasets:
        specs = [datasets] if isinstance(datasets, str) else list(datasets)
        meta = dict(kw.get("metadata") or {})
        meta["links"] = [*meta.get("links", ()), *snapshot_links(vault, specs)]
        kw["metadata"] = meta
    return kw


# -- lineage ----------------------------------------------------------------------


def lineage_edge(vault, base: str, relation: str, *, run_id: str | None = None,
                 prompt_set_hash: str | None = None, settings: dict | None = None) -> dict:
    """Build a checked lineage record for a manifest or event.

    Args:
        base: ``NAME@V`` (or ``NAME@TAG``) of a version in this store, or an external ``hf:ORG/NAME[@REV]``
            (a branch or tag REV is recorded as the commit the HF cache's ``refs/REV`` holds).
        relation: finetune, adapter, merge, quantized, cast or distilled.
        run_id, prompt_set_hash, settings: for ``distilled`` edges (the teacher is ``base``).
    Returns:
        ``{"relation", "base"}`` or ``{"relation", "base_ref"}`` plus the distilled fields given.
    """
    edge: dict = {"relation": relation}
    if hub.is_hub_ref(base):
        # a branch or tag is pinned to its commit (from the HF cache's refs/): the catalog matches an
        # archived Hub snapshot by commit; one the cache does not know is kept as typed, with a warning
        edge["base_ref"] = hub.pin_ref(base)
    else:
        edge["base"] = vault.resolve(base).manifest_id
    for k, v in (("run_id", run_id), ("prompt_set_hash", prompt_set_hash), ("settings", settings)):
        if v is not None:
            edge[k] = v
    try:
        return cp.check_lineage(edge)
    except ValueError as e:
        raise InvalidInputError(f"lineage: {e}", hint=f"relations: {', '.join(cp.RELATIONS)}") from None


def add_lineage(vault, child, base: str, relation: str, **distilled) -> str:
    """Record an edge from version ``child`` to ``base`` after the snapshot; returns the event id."""
    r = vault.resolve(child)
    edge = lineage_edge(vault, base, relation, **distilled)
    if edge.get("base") == r.manifest_id:
        raise InvalidInputError(f"{r} cannot be its own base")
    if edge.get("base"):  # a version cannot derive from its own descendant
        _, rows = vault.query("SELECT depth FROM version_ancestors WHERE version_id = ? AND ancestor_id = ? "
                              "ORDER BY depth LIMIT 1", [edge["base"], r.manifest_id])
        if rows:
            raise InvalidInputError(f"{base} derives from {r} ({rows[0][0]} hop{'s' if rows[0][0] > 1 else ''} away): "
                                    f"{r} cannot also be its {relation}",
                                    hint=f"see the family with `weightvault lineage {r}`")
    return _record(vault, "lineage", {"child": r.manifest_id, **edge})


# -- tags ---------------------------------------------------------------------------


def move_tag(vault, ref, tag: str, *, message: str = "") -> str:
    """Point ``tag`` at version ``ref`` (creating or moving it; every move is kept)."""
    ids.check_version_name(tag)
    r = vault.resolve(ref)
    if tag == "latest" or vault.store.get_ref(r.model, tag) is not None:
        raise InvalidInputError(f"tag {tag!r} would hide version {r.model}@{tag}", hint="choose another tag name")
    return _record(vault, "tag", {"model": r.model, "tag": tag, "version_id": r.manifest_id,
                                  "version": r.version, "message": message or None})


def remove_tag(vault, model: str, tag: str) -> str:
    """Remove a tag (recorded as a move to nothing)."""
    ids.check_model_name(model)
    ids.check_version_name(tag)
    _, rows = vault.query("SELECT 1 FROM tags WHERE model = ? AND tag = ?", [model, tag])
    if not rows:
        raise NotFoundError(f"{model} has no tag {tag!r}", hint=f"list tags with `weightvault tag {model}`")
    return _record(vault, "tag", {"model": model, "tag": tag, "version_id": None})


# -- evals --------------------------------------------------------------------------


def record_eval(vault, ref, task: str, metric: str, value: float, *, dataset: str | None = None,
                settings: dict | None = None) -> str:
    """Record one evaluation result of version ``ref``; returns the event id."""
    if not task or not metric:
        raise InvalidInputError("an eval result needs a task and a metric")
    if not math.isfinite(float(value)):
        raise InvalidInputError(f"eval value {value} is not a finite number", hint="record a measured value")
    r = vault.resolve(ref)
    payload = {"version_id": r.manifest_id, "task": task, "metric": metric, "value": float(value)}
    if dataset:
        d = find_dataset(vault, dataset)
        payload.update(dataset=d.name, dataset_version=d.version)
    if settings is not None:
        if not isinstance(settings, dict):
            raise RecordValidationError("eval", "settings", "expected an object")
        payload["settings"] = settings
    return _record(vault, "eval", payload)


# -- reading ------------------------------------------------------------------------


def lineage_tree(vault, ref) -> dict:
    """A version with its ancestors (nested, with relations) and descendants, and each node's datasets.

    Returns:
        ``{"model", "version", "version_id", "datasets": [...], "bases": [{"relation", ...node}],
        "derived": [{"relation", ...node}]}``; external bases have ``"ref"`` instead of a version,
        and a base removed with ``rm`` keeps its name with ``"removed": true``.
    """
    r = vault.resolve(ref)
    _, edges = vault.query("SELECT child_id, base_id, base_ref, relation, run_id FROM version_edges")
    _, names = vault.query("SELECT version_id, model, version FROM versions")
    _, removed = vault.query("SELECT version_id, model, version FROM removed_versions")
    _, links = vault.query("SELECT l.version_id, l.dataset, l.dataset_version, l.role, d.license "
                           "FROM version_datasets l LEFT JOIN datasets d "
                           "ON d.name = l.dataset AND d.version = l.dataset_version ORDER BY 2, 3, 4")
    name = {vid: (m, v) for vid, m, v in names}
    gone = {vid: (m, v) for vid, m, v in removed if vid not in name}  # `rm`ed: named by its removal record
    data: dict[str, list] = {}
    for vid, dname, dver, role, lic in links:
        data.setdefault(vid, []).append({"dataset": dname, "dataset_version": dver, "role": role, "license": lic})

    def node(vid, seen):
        m, v = name.get(vid) or gone.get(vid) or (None, None)
        return {"model": m, "version": v, "version_id": vid, "datasets": data.get(vid, []),
                **({"removed": True} if vid in gone else {}), **seen}

    def up(vid, seen):
        out = []
        for child, base, base_ref, rel, run in sorted(edges, key=lambda e: (e[3], e[1] or "", e[2] or "")):
            if child != vid:
                continue
            extra = {"relation": rel, **({"run_id": run} if run else {})}
            if base is None:
                out.append({"ref": base_ref, **extra})
            elif base in seen:
                out.append({**node(base, {}), **extra, "cycle": True})
            else:
                out.append({**node(base, {"bases": up(base, seen | {base})}), **extra})
        return out

    def down(vid, seen):
        out = []
        for child, base, _, rel, run in sorted(edges, key=lambda e: (name.get(e[0], ("", ""))[0] or "", e[3])):
            if base != vid or child in seen:
                continue
            extra = {"relation": rel, **({"run_id": run} if run else {})}
            out.append({**node(child, {"derived": down(child, seen | {child})}), **extra})
        return out

    root = r.manifest_id
    return node(root, {"bases": up(root, {root}), "derived": down(root, {root})})


EXPORT_LIST = "_export.json"  # what the last export wrote; never matches *.parquet


def export_catalog(vault, folder, *, views: bool = False, check=None) -> list[dict]:
    """Write every catalog table to ``folder/<table>.parquet``; with ``views`` every view too (its
    rows as of now: a view's SQL needs the catalog's other views and macros, which Parquet cannot
    carry). Returns [{table, kind, rows, path}].

    The folder also gets ``_export.json``, the list of what this export wrote. A file that the
    previous export listed and this one did not write (a view's, after ``--views`` then without
    it; a table's that no longer exists) is removed, so ``read_parquet('DIR/*.parquet')`` and a
    listing of the folder show one export. Files weightvault never listed are left alone, and an
    export that would overwrite one (a ``versions.parquet`` of the user's) is refused before
    anything is written. ``check(files)``, if given, replaces that test (an S3 export checks the
    bucket, not the local folder it writes through)."""
    import json
    import os
    from pathlib import Path

    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    listed = out_dir / EXPORT_LIST
    try:
        previous = json.loads(listed.read_bytes())
    except (OSError, ValueError):
        previous = None
    with vault.catalog.read() as con:
        names = [(t, "table") for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'main' ORDER BY table_name").fetchall()]
        if views:
            names += [(t, "view") for (t,) in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
                "AND schema_name = 'main' AND NOT internal ORDER BY view_name").fetchall()]
        files = [f"{t}.parquet" for t, _ in names]
        if check is None:
            check_foreign_exports(previous, files, lambda f: os.path.lexists(out_dir / f), out_dir)
            # Written ahead, listing what the last export wrote and what this one will: an export
            # stopped part-way leaves files its rerun knows as its own (the final list follows).
            ahead = _listed(previous) + [{"file": f} for f in files]
            tmp_list = out_dir / f".{EXPORT_LIST}.tmp"
            tmp_list.write_bytes(json.dumps({"files": ahead, "complete": False}).encode())
            tmp_list.replace(listed)
        else:
            check(files)
        done = []
        for t, kind in names:
            path = out_dir / f"{t}.parquet"
            tmp = out_dir / f".{t}.parquet.tmp"
            con.execute(f'COPY (SELECT * FROM "{t}") TO \'{_sql_str(tmp)}\' (FORMAT parquet)')
            tmp.replace(path)
            n = con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
            done.append({"table": t, "kind": kind, "rows": n, "path": str(path)})
    for name in stale_exports(previous, done):
        (out_dir / name).unlink(missing_ok=True)
    tmp = out_dir / f".{EXPORT_LIST}.tmp"
    tmp.write_bytes(export_list(done))
    tmp.replace(listed)
    return done


def export_list(done: list[dict]) -> bytes:
    """The ``_export.json`` of an export that wrote ``done``."""
    import json

    from weightvault import __version__

    files = [{"file": f"{d['table']}.parquet", "name": d["table"], "kind": d["kind"], "rows": d["rows"]}
             for d in done]
    return json.dumps({"written_by": f"weightvault {__version__}", "files": files}, indent=1).encode() + b"\n"


def _listed(previous) -> list[dict]:
    """The file entries of a previous ``_export.json`` (nothing when it is missing or malformed)."""
    if not isinstance(previous, dict) or not isinstance(previous.get("files"), list):
        return []
    return [f for f in previous["files"] if isinstance(f, dict)]


def check_foreign_exports(previous, files: list[str], exists, where) -> None:
    """Refuse an export that would replace a file no earlier export listed in ``_export.json``
    (one of the user's, or an export's whose list was lost): ``exists(name)`` tells whether
    ``name`` is there."""
    from weightvault.errors import AlreadyExistsError

    ours = {f.get("file") for f in _listed(previous)}
    for name in files:
        if name not in ours and exists(name):
            raise AlreadyExistsError(
                f"{str(where).rstrip('/')}/{name} exists and no earlier `weightvault catalog export` "
                f"there wrote it (it is not in {EXPORT_LIST}); export into another folder, or move "
                f"that file away and rerun")


def stale_exports(previous, done: list[dict]) -> list[str]:
    """Files the previous ``_export.json`` listed that ``done`` did not write again. Only plain
    ``<name>.parquet`` names are returned, whatever the old list says."""
    import re

    now = {f"{d['table']}.parquet" for d in done}
    out = []
    for f in _listed(previous):
        name = f.get("file")
        if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_]+\.parquet", name) and name not in now:
            out.append(name)
    return sorted(set(out))


def _sql_str(path) -> str:
    return str(path).replace("'", "''")
