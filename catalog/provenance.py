"""Provenance in the catalog: datasets, links, lineage, tags, card facts and evals as rows.

Two sources, both in the store, so ``catalog rebuild`` recreates every row:

- the manifest (written at snapshot): ``lineage`` edges, ``metadata["card"]`` and
  ``metadata["config"]`` (archive/card.py), ``metadata["links"]`` (``snapshot --dataset``);
  indexed by :func:`index_version` (a ``VERSION_INDEXERS`` entry);
- events (written later with ``store.put_event``), one indexer per type in
  ``EVENT_INDEXERS``. Payloads (docs/design.md, "Provenance records"):

  ``dataset``  a dataset record (catalog/datasets.py), latest ``at`` per name@version wins
  ``link``     ``{"version_id", "dataset", "dataset_version", "role"}``
  ``lineage``  ``{"child", "relation", "base" | "base_ref", ["run_id", "prompt_set_hash", "settings"]}``
  ``tag``      ``{"model", "tag", "version_id" (null: removed)}``, latest ``at`` wins
  ``eval``     ``{"version_id", "task", "metric", "value", ["dataset", "dataset_version", "settings"]}``

A ``link`` or ``lineage`` event about a version that is not indexed (removed with ``rm``) adds no
row, in a live sync as in a rebuild (``drop_version`` deletes the rows of a version removed later);
a removed child's edges stay walkable from the events (view ``removed_version_edges``). Evals,
tag moves and dataset records are history and keep their rows.

Indexers never let a bad record abort a sync: a payload that fails
:func:`check_lineage` and friends is logged and skipped (the writers in
weightvault/provenance.py validate before anything is written, so this only
meets records written by hand or by a newer release).
"""

from __future__ import annotations

import json
import logging

from weightvault.archive import ids
from weightvault.catalog import indexer
from weightvault.errors import NotFoundError

log = logging.getLogger("weightvault")

RELATIONS = ("finetune", "adapter", "merge", "quantized", "cast", "distilled")
ROLES = ("pretrain", "finetune", "eval", "distill")
DISTILL_FIELDS = ("run_id", "prompt_set_hash", "settings")


# -- payload checks (shared by writers and indexers) --------------------------------


def check_lineage(edge: dict) -> dict:
    """Validate one lineage record (manifest entry or event payload); return it normalised.

    Raises:
        ValueError: naming the field at fault.
    """
    if not isinstance(edge, dict):
        raise ValueError("lineage record: expected an object")
    rel = edge.get("relation")
    if rel not in RELATIONS:
        raise ValueError(f"relation: {rel!r} is not one of {', '.join(RELATIONS)}")
    base, base_ref = edge.get("base"), edge.get("base_ref")
    if (base is None) == (base_ref is None):
        raise ValueError("base / base_ref: give exactly one (a manifest id, or an external ref like hf:org/name)")
    if base is not None and not ids.is_id(str(base)):
        raise ValueError(f"base: {base!r} is not a manifest id")
    if base_ref is not None and (not isinstance(base_ref, str) or ":" not in base_ref or len(base_ref) > 512):
        raise ValueError(f"base_ref: {base_ref!r} is not an external reference like hf:org/name")
    if rel != "distilled":
        extra = [k for k in DISTILL_FIELDS if edge.get(k) is not None]
        if extra:
            raise ValueError(f"{extra[0]}: only a 'distilled' edge records a run, prompt set or settings")
    if edge.get("settings") is not None and not isinstance(edge["settings"], dict):
        raise ValueError("settings: expected an object of generation settings")
    for k in ("run_id", "prompt_set_hash"):
        if edge.get(k) is not None and not isinstance(edge[k], str):
            raise ValueError(f"{k}: expected a string")
    return {k: edge[k] for k in ("relation", "base", "base_ref", *DISTILL_FIELDS) if edge.get(k) is not None}


def check_role(role) -> str:
    if role not in ROLES:
        raise ValueError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    return role


def _edge_row(version_id: str, edge: dict, origin: str, at, event_id):
    e = check_lineage(edge)
    base = e.get("base") or e.get("base_ref")
    settings = e.get("settings")
    return (f"{version_id}|{e['relation']}|{base}", version_id, e["relation"], e.get("base"), e.get("base_ref"),
            e.get("base") if e["relation"] == "distilled" else None, e.get("prompt_set_hash"),
            json.dumps(settings, sort_keys=True) if settings is not None else None, e.get("run_id"),
            origin, at, event_id)


_EDGE_COLS = ("edge_key, version_id, relation, base_id, base_ref, teacher_id, prompt_set_hash, settings, run_id, "
              "origin, recorded_at, event_id")


def _insert_edge(con, row) -> None:
    con.execute(f"INSERT INTO lineage_edges ({_EDGE_COLS}) VALUES ({', '.join('?' * 12)}) ON CONFLICT DO NOTHING",
                list(row))


# -- manifests ----------------------------------------------------------------------


def _strs(value):
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _str(value):
    return value if isinstance(value, str) else None


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _card_row(version_id: str, m) -> list:
    # Types are re-checked here: a failed INSERT would abort the whole sync transaction.
    card = m.metadata.get("card") or {}
    cfg = m.metadata.get("config") or {}
    return [version_id, _strs(card.get("base_model")), _str(card.get("base_model_relation")),
            _strs(card.get("datasets")), _str(card.get("license")), _strs(card.get("language")),
            _strs(card.get("tags")), _str(card.get("pipeline_tag")), _str(card.get("library_name")),
            _strs(cfg.get("architectures")), _str(cfg.get("model_type")), _str(cfg.get("torch_dtype")),
            _int(cfg.get("vocab_size")), _int(m.metadata.get("n_parameters"))]


def index_version(con, version_id: str, m) -> None:
    """Rows from one manifest: model_cards, lineage edges (manifest and card), dataset links."""
    con.execute("INSERT INTO model_cards VALUES (" + ", ".join("?" * 14) + ") ON CONFLICT DO NOTHING",
                _card_row(version_id, m))
    for edge in m.lineage:
        try:
            _insert_edge(con, _edge_row(version_id, edge, "manifest", m.created_at, None))
        except ValueError as e:
            log.warning("version %s: lineage record skipped: %s", version_id[:16], e)
    card = m.metadata.get("card") or {}
    if not m.lineage:  # the card's claim counts only when nobody recorded the lineage explicitly
        rel = card.get("base_model_relation") or "finetune"
        for ref in _strs(card.get("base_model")) or ():
            if rel in RELATIONS:
                _insert_edge(con, _edge_row(version_id, {"relation": rel, "base_ref": f"hf:{ref}"}, "card",
                                            m.created_at, None))
    for link in m.metadata.get("links") or ():
        try:
            con.execute("INSERT INTO version_datasets VALUES (?, ?, ?, ?, 'manifest', ?, NULL) ON CONFLICT DO NOTHING",
                        [version_id, str(link["dataset"]), str(link["dataset_version"]), check_role(link["role"]),
                         m.created_at])
        except (KeyError, TypeError, ValueError) as e:
            log.warning("version %s: dataset link skipped: %s", version_id[:16], e)
    # A version indexed again after its ref came back: the link and lineage events about it that
    # the catalog already holds (in a rebuild none are indexed yet; they follow the versions).
    for eid, kind, at, payload in con.execute(
            "SELECT event_id, type, created_at, payload FROM events WHERE type IN ('link', 'lineage') "
            "AND coalesce(payload->>'version_id', payload->>'child') = ? "
            "AND event_id NOT IN (SELECT event_id FROM unindexed_events)", [version_id]).fetchall():
        EVENT_INDEXERS_BY_TYPE[kind](con, eid, {"type": kind, "at": at, "payload": json.loads(payload)})


# -- events -------------------------------------------------------------------------


def _dataset(con, event_id: str, ev: dict) -> None:
    from weightvault.catalog.datasets import validate

    p = validate(ev["payload"], f"dataset event {event_id[:12]}")
    con.execute(
        "INSERT INTO dataset_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [event_id, p["name"], p.get("version", "1"), p.get("source_uri"), p.get("content_hash"), p.get("license"),
         p.get("cutoff_date"), p.get("n_tokens"), p.get("n_rows"), p.get("description"),
         json.dumps(p["extra"], sort_keys=True) if p.get("extra") is not None else None, ev["at"]])


def _live(con, version_id) -> bool:
    return con.execute("SELECT 1 FROM versions WHERE version_id = ?", [version_id]).fetchone() is not None


def _link(con, event_id: str, ev: dict) -> None:
    p = ev["payload"]
    if not _live(con, ids.check_id(p["version_id"])):
        return  # removed: its rows are gone in a live catalog too
    con.execute("INSERT INTO version_datasets VALUES (?, ?, ?, ?, 'event', ?, ?) ON CONFLICT DO NOTHING",
                [ids.check_id(p["version_id"]), p["dataset"], p["dataset_version"], check_role(p["role"]),
                 ev["at"], event_id])


def _lineage(con, event_id: str, ev: dict) -> None:
    p = ev["payload"]
    if not _live(con, ids.check_id(p["child"])):
        return  # removed: removed_version_edges keeps its edges from the events
    _insert_edge(con, _edge_row(ids.check_id(p["child"]), p, "event", ev["at"], event_id))


def _tag(con, event_id: str, ev: dict) -> None:
    p = ev["payload"]
    vid = p.get("version_id")
    con.execute("INSERT INTO tag_moves VALUES (?, ?, ?, ?, ?, ?)",
                [event_id, ids.check_model_name(p["model"]), ids.check_version_name(p["tag"]),
                 ids.check_id(vid) if vid is not None else None, ev["at"], p.get("message")])


def _eval(con, event_id: str, ev: dict) -> None:
    p = ev["payload"]
    value = p["value"]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError("value: expected a number")
    con.execute("INSERT INTO eval_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [event_id, ids.check_id(p["version_id"]), str(p["task"]), str(p["metric"]), float(value),
                 p.get("dataset"), p.get("dataset_version"),
                 json.dumps(p["settings"], sort_keys=True) if p.get("settings") is not None else None, ev["at"]])


def _tolerant(fn):
    """Skip (with a warning) an event whose payload is malformed instead of failing the whole sync."""
    from weightvault.errors import InvalidInputError

    def run(con, event_id, ev):
        try:
            fn(con, event_id, ev)
        except (KeyError, TypeError, ValueError, InvalidInputError) as e:
            log.warning("%s event %s skipped: %s", ev.get("type"), event_id[:16], e)

    run.__name__ = fn.__name__
    return run


EVENT_TYPES = {"dataset": _dataset, "link": _link, "lineage": _lineage, "tag": _tag, "eval": _eval}
EVENT_INDEXERS_BY_TYPE = {"link": _tolerant(_link), "lineage": _tolerant(_lineage)}


def resolve_tag(vault, model: str, label: str) -> str | None:
    """``NAME@TAG`` -> manifest id of the version the tag points at now (a REF_RESOLVERS entry).

    Raises:
        TagOnRemovedVersionError: the tag points at a version removed with ``rm``.
    """
    _, rows = vault.query("SELECT t.version_id, t.version, r.version FROM tags t "
                          "LEFT JOIN removed_versions r ON r.version_id = t.version_id "
                          "WHERE t.model = ? AND t.tag = ?", [model, label])
    if not rows:
        return None
    vid, version, removed_as = rows[0]
    if version is None:  # no live version has this manifest
        raise TagOnRemovedVersionError(model, label, removed_as, vid)
    return vid


class TagOnRemovedVersionError(NotFoundError):
    """``NAME@TAG`` names a tag whose version was removed: it points at nothing that can be read."""

    def __init__(self, model: str, tag: str, version: str | None, version_id: str):
        if version:
            msg = f"tag {tag!r} of {model} points at {model}@{version}, which was removed"
        else:  # not in the removal records: its ref went another way (unreadable: verify lists it)
            msg = (f"tag {tag!r} of {model} points at version {version_id[:16]}, which has no readable ref "
                   f"(removed, or its ref is damaged: `weightvault verify` lists it)")
        super().__init__(msg, hint=f"move the tag with `weightvault tag {model}@N {tag}`, or delete it with "
                                   f"`weightvault tag {model} {tag} --delete`")
        self.model, self.tag, self.version, self.version_id = model, tag, version, version_id


def register() -> None:
    """Hook this module into the indexer (idempotent)."""
    for name, fn in EVENT_TYPES.items():
        indexer.EVENT_INDEXERS.setdefault(name, _tolerant(fn))
    if index_version not in indexer.VERSION_INDEXERS:
        indexer.VERSION_INDEXERS.append(index_version)
    for table in ("version_datasets", "lineage_edges", "model_cards"):
        if table not in indexer.VERSION_TABLES:
            indexer.VERSION_TABLES.append(table)
    from weightvault import vault  # loaded by now: plugins load on the first catalog sync or resolve

    if resolve_tag not in vault.REF_RESOLVERS:
        vault.REF_RESOLVERS.append(resolve_tag)


register()
