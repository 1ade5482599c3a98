"""weightvault.catalog: the DuckDB index over a store.

- ``connection``: the :class:`Catalog` (open, lock, quarantine a damaged file, sync).
- ``migrations``: append-only numbered DDL from ``schemas/catalog``.
- ``indexer``: manifests, refs and events -> rows; ``rebuild`` from the store alone.
- ``provenance``: datasets, links, lineage, tags, card facts and evals -> rows (events and manifests).
- ``datasets``: dataset records (schema validation, JSON/YAML files) and data fingerprints.
- ``derivations``: the engine's casts of archived tensors -> rows (manifests).
- ``distill_runs``: distillation runs -> rows (``distill_run`` events of weightvault/distill.py).
"""

from weightvault.catalog.connection import Catalog

__all__ = ["Catalog"]
