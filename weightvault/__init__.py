"""weightvault: archive model weights as history.

Snapshots of model folders go into a content-addressed store of deduplicated,
compressed safetensors chunks; versions, lineage and provenance go into a
DuckDB catalog you query with SQL.

>>> import weightvault
>>> # vault = weightvault.Vault.open("vault")
>>> # vault.snapshot("./my-model", model="my-model")
>>> # vault.restore("my-model@1", "./restored")
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Vault", "load_teacher", "__version__"]


def __getattr__(name):  # lazy: `weightvault --help` must not import duckdb or numpy
    if name == "Vault":
        from weightvault.vault import Vault

        return Vault
    if name == "load_teacher":
        from weightvault.teacher import load_teacher

        return load_teacher
    raise AttributeError(name)
