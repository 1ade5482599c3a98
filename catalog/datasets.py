"""Dataset records: validation against ``schemas/dataset.schema.json``, loading, fingerprints.

A dataset record is what ``weightvault dataset add`` writes as a ``dataset``
event: name, version, source URI, content hash, SPDX licence, collection
cutoff, token and row counts, description and free-form ``extra``. Records
come from flags or a JSON/YAML file; either way they pass :func:`validate`,
which checks the JSON schema in ``schemas/`` with a small validator (the
subset of JSON Schema that file uses) and names the first bad field.

>>> validate({"name": "wiki", "license": "CC-BY-SA-4.0"}, "flags")["version"]
'1'
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from weightvault import schemas
from weightvault.archive.ids import file_sha256
from weightvault.errors import InvalidInputError, RecordValidationError

DEFAULT_VERSION = "1"
ROW_FORMATS = (".parquet", ".jsonl", ".ndjson", ".csv", ".tsv", ".jsonl.gz", ".ndjson.gz", ".csv.gz", ".tsv.gz")
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".cache"}
_schema = None


def schema() -> dict:
    """The dataset record's JSON schema (``schemas/dataset.schema.json``)."""
    global _schema
    if _schema is None:
        _schema = json.loads(schemas.read_text("dataset.schema.json"))
    return _schema


# -- validation -------------------------------------------------------------------

_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
}


def _check(value, rule: dict, field: str, source: str) -> None:
    """Check one value against a schema rule (type, pattern, length, minimum, enum, format date)."""
    kind = rule.get("type")
    if kind and not _TYPES[kind](value):
        hint = " (quote it in YAML)" if kind == "string" and isinstance(value, (int, float)) else ""
        raise RecordValidationError(source, field, f"expected {kind}, got {type(value).__name__}{hint}")
    if "enum" in rule and value not in rule["enum"]:
        raise RecordValidationError(source, field, f"{value!r} is not one of {', '.join(map(str, rule['enum']))}")
    if isinstance(value, str):
        if len(value) < rule.get("minLength", 0):
            raise RecordValidationError(source, field, "is empty")
        if "maxLength" in rule and len(value) > rule["maxLength"]:
            raise RecordValidationError(source, field, f"longer than {rule['maxLength']} characters")
        if "pattern" in rule and not _matches(rule["pattern"], value):
            raise RecordValidationError(source, field, f"{value!r} is not valid ({rule.get('description', 'see schemas/dataset.schema.json')})")
        if rule.get("format") == "date":
            try:
                _dt.date.fromisoformat(value)
            except ValueError:
                raise RecordValidationError(source, field, f"{value!r} is not a date (YYYY-MM-DD)") from None
    if "minimum" in rule and isinstance(value, (int, float)) and value < rule["minimum"]:
        raise RecordValidationError(source, field, f"must be >= {rule['minimum']}")
    if "maximum" in rule and isinstance(value, (int, float)) and value > rule["maximum"]:
        raise RecordValidationError(source, field, f"must be <= {rule['maximum']}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordValidationError(source, field, f"{value} is not a finite number")


def _matches(pattern: str, value: str) -> bool:
    """A JSON Schema (ECMA-262) pattern: its '$' ends the string. Python's also matches before a
    final newline, which would let "wiki\n" through as a name."""
    m = re.search(pattern, value)
    return m is not None and (not pattern.endswith("$") or m.end() == len(value))


def validate(record, source: str) -> dict:
    """Validate a dataset record against the schema; return it normalised.

    Args:
        record: the parsed record (dict).
        source: where it came from (file name or "flags"), used in error messages.
    Returns:
        A new dict with ``version`` defaulted and dates as ISO strings.
    Raises:
        RecordValidationError: naming the first field that is missing, unknown or invalid.
    """
    sch = schema()
    if not isinstance(record, dict):
        raise RecordValidationError(source, "(record)", "expected a mapping of field: value")
    rec = {k: (v.isoformat() if isinstance(v, (_dt.date, _dt.datetime)) else v)
           for k, v in record.items() if v is not None}
    for name in sch["required"]:
        if name not in rec:
            raise RecordValidationError(source, name, "is required")
    props = sch["properties"]
    for name, value in rec.items():
        if name not in props:
            raise RecordValidationError(source, name, "unknown field (known: " + ", ".join(props) + "; put other facts in 'extra')")
        _check(value, props[name], name, source)
    if isinstance(rec.get("cutoff_date"), str) and "T" in rec["cutoff_date"]:
        raise RecordValidationError(source, "cutoff_date", f"{rec['cutoff_date']!r} is not a date (YYYY-MM-DD)")
    rec.setdefault("version", DEFAULT_VERSION)
    return rec


def load_file(path: str | os.PathLike) -> dict:
    """Read a dataset record from a JSON or YAML file and validate it.

    Raises:
        RecordValidationError: unparsable file or invalid field (one line, naming it).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"{p}: no such file", hint="pass the path of a .json or .yaml dataset record") from None
    except UnicodeDecodeError:
        raise RecordValidationError(p.name, "(file)", "is not UTF-8 text") from None
    if p.suffix.lower() == ".json":
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordValidationError(p.name, "(file)", f"invalid JSON at line {e.lineno} column {e.colno}") from None
    else:
        import yaml

        try:
            record = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise RecordValidationError(p.name, "(file)", f"invalid YAML{where}") from None
        except ValueError as e:  # YAML's own date parsing: 2023-13-45
            raise RecordValidationError(p.name, "(file)", f"invalid value: {e} (quote dates as 'YYYY-MM-DD')") from None
    return validate(record, p.name)


# -- fingerprints -----------------------------------------------------------------


@dataclass(frozen=True)
class FileFingerprint:
    """One data file.

    Attributes:
        path: POSIX path relative to the fingerprinted folder (the file name for a single file).
        size: bytes.
        sha256: hex digest.
        n_rows: rows for parquet/jsonl/csv/tsv, else None.
    """

    path: str
    size: int
    sha256: str
    n_rows: int | None


@dataclass(frozen=True)
class Fingerprint:
    """A file's or folder's content hash and row count.

    Attributes:
        path: what was fingerprinted.
        content_hash: ``sha256:<hex>``: the file's sha256, or for a folder the sha256 of its
            listing in ``sha256sum`` format (``<hex>  <path>\\n`` per file, sorted by path).
        n_bytes: total size.
        n_rows: total rows over the tabular files, None when there are none.
        files: every file.
    """

    path: str
    content_hash: str
    n_bytes: int
    n_rows: int | None
    files: tuple[FileFingerprint, ...]


def count_rows(path: Path) -> int | None:
    """Rows of a parquet, JSON-lines, CSV or TSV file (optionally .gz); None for other files."""
    name = path.name.lower()
    if not name.endswith(ROW_FORMATS):
        return None
    if ".jsonl" in name or ".ndjson" in name:
        import gzip

        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    from weightvault.catalog.connection import duckdb_module

    duckdb = duckdb_module()
    reader = "read_parquet(?)" if name.endswith(".parquet") else "read_csv(?, header = true)"
    try:
        with duckdb.connect() as con:
            return int(con.execute(f"SELECT count(*) FROM {reader}", [str(path)]).fetchone()[0])
    except duckdb.Error as e:
        raise InvalidInputError(f"{path}: cannot count rows: {str(e).splitlines()[0]}",
                                hint="check the file is complete and in the format its name says") from None


def _walk(root: Path) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file():
                out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def fingerprint(path: str | os.PathLike, progress=None) -> Fingerprint:
    """Hash a data file or folder and count its rows.

    Args:
        path: a file, or a folder (hashed recursively; VCS and cache folders skipped).
        progress: optional callable(n_bytes) advanced as files are hashed.
    Returns:
        A :class:`Fingerprint`.

    Example:
        >>> # fingerprint("data/alpaca.jsonl").content_hash
    """
    root = Path(path)
    if root.is_file():
        items = [(root.name, root)]
    elif root.is_dir():
        items = _walk(root)
        if not items:
            raise InvalidInputError(f"{root} has no files", hint="point at the data file or folder")
    else:
        raise InvalidInputError(f"{root}: no such file or folder", hint="point at the data file or folder")
    files = []
    for rel, p in items:
        digest = file_sha256(p)
        files.append(FileFingerprint(rel, p.stat().st_size, digest, count_rows(p)))
        if progress:
            progress(files[-1].size)
    if root.is_file():
        content_hash = f"sha256:{files[0].sha256}"
    else:
        listing = "".join(f"{f.sha256}  {f.path}\n" for f in files)
        content_hash = "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    rows = [f.n_rows for f in files if f.n_rows is not None]
    return Fingerprint(str(root), content_hash, sum(f.size for f in files), sum(rows) if rows else None,
                       tuple(files))
