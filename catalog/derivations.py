"""Index the engine's derivations (casts of archived tensors) into the catalog.

The rows come from ``manifest.metadata["derivations"]``, written by the
engine's encoder (archive/engine.py), so a rebuild from the store recreates
them. Table and views: schemas/catalog/0003_engine.sql.
"""

from __future__ import annotations

from weightvault.catalog import indexer

COLUMNS = ["version_id", "tensor", "dtype", "source_version_id", "source_dtype", "recipes", "pieces",
           "exact_pieces", "differing_elements"]


def index_derivations(con, version_id: str, manifest) -> None:
    """Insert one version's derivation rows (within the caller's transaction)."""
    rows = [
        (version_id, d["tensor"], d["dtype"], d["source_version"], d["source_dtype"], list(d["recipes"]),
         int(d["pieces"]), int(d["exact_pieces"]), int(d["differing_elements"]))
        for d in (manifest.metadata or {}).get("derivations", ())
    ]
    indexer.bulk_insert(con, "derivations", COLUMNS, rows)


if index_derivations not in indexer.VERSION_INDEXERS:
    indexer.VERSION_INDEXERS.append(index_derivations)
if "derivations" not in indexer.VERSION_TABLES:
    indexer.VERSION_TABLES.append("derivations")
