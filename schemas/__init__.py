"""weightvault.schemas: JSON schemas of on-disk records and the catalog DDL (package data)."""

from importlib import resources


def read_text(name: str) -> str:
    """Return a schema file's text, e.g. ``read_text("manifest.schema.json")``."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def catalog_migrations() -> list[tuple[int, str, str]]:
    """Return ``(number, name, sql)`` of every catalog migration, in order."""
    out = []
    for entry in resources.files(__name__).joinpath("catalog").iterdir():
        stem, dot, ext = entry.name.partition(".")
        if ext != "sql" or not stem[:4].isdigit():
            continue
        out.append((int(stem[:4]), stem, entry.read_text(encoding="utf-8")))
    return sorted(out)
