"""weightvault.schemas: JSON schemas of on-disk records and the catalog DDL (package data)."""

from pathlib import Path

_HERE = Path(__file__).parent


def _root():
    """This package's files: its folder when installed as files (importlib.resources costs ~7 ms to
    import, on every catalog write), else the package's resources (a zip import)."""
    if _HERE.is_dir():
        return _HERE
    from importlib import resources

    return resources.files(__name__)


def read_text(name: str) -> str:
    """Return a schema file's text, e.g. ``read_text("manifest.schema.json")``."""
    return _root().joinpath(name).read_text(encoding="utf-8")


def catalog_migrations() -> list[tuple[int, str, str]]:
    """Return ``(number, name, sql)`` of every catalog migration, in order."""
    out = []
    for entry in _root().joinpath("catalog").iterdir():
        stem, dot, ext = entry.name.partition(".")
        if ext != "sql" or not stem[:4].isdigit():
            continue
        out.append((int(stem[:4]), stem, entry.read_text(encoding="utf-8")))
    return sorted(out)
