"""Generate docs/cli.md (from --help) and docs/catalog.md (from the migrations).

Run ``python -m weightvault._docs`` after changing a command or a migration;
tests/test_docs.py fails when the committed files drift from the code.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def iter_commands(parser: argparse.ArgumentParser, prefix: str = "weightvault"):
    """Yield (command line, parser) for every command and subcommand."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from iter_commands(sub, f"{prefix} {name}")


def _help(p: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        buf = io.StringIO()
        with redirect_stdout(buf):
            p.print_help()
        return buf.getvalue().rstrip()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def cli_markdown() -> str:
    from weightvault.cli import build_parser

    parts = ["# weightvault command reference", "",
             "Generated from `--help` by `python -m weightvault._docs`; do not edit by hand.", ""]
    for line, p in iter_commands(build_parser()):
        parts += [f"## `{line}`", "", "```", _help(p).replace("usage: ", "usage: ", 1), "```", ""]
    return "\n".join(parts)


def catalog_markdown() -> str:
    import duckdb

    from weightvault import schemas
    from weightvault.catalog import migrations

    con = duckdb.connect()
    migrations.migrate(con)
    parts = ["# weightvault catalog reference", "",
             "Every table, view and table macro of the DuckDB catalog, generated from the migrations in "
             "`schemas/catalog/` by `python -m weightvault._docs`; do not edit by hand.", "",
             "## Migrations", ""]
    parts += [f"- `{name}`" for _, name, _ in schemas.catalog_migrations()]
    rows = con.execute("SELECT table_name, table_type FROM information_schema.tables "
                       "WHERE table_schema = 'main' ORDER BY table_type, table_name").fetchall()
    for name, kind in rows:
        kind = "view" if kind == "VIEW" else "table"
        parts += ["", f"## {kind} `{name}`", "", "| column | type |", "|---|---|"]
        for col, typ in con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                    "WHERE table_name = ? ORDER BY ordinal_position", [name]).fetchall():
            parts.append(f"| {col} | {typ} |")
    macros = con.execute("SELECT function_name, parameters FROM duckdb_functions() WHERE schema_name = 'main' "
                         "AND function_type = 'table_macro' AND NOT internal ORDER BY function_name").fetchall()
    for name, params in macros:
        parts += ["", f"## table macro `{name}({', '.join(params)})`", "",
                  f"Use it as a table: `FROM {name}(...)`. Its columns:", "", "| column | type |", "|---|---|"]
        nulls = ", ".join("NULL" for _ in params)
        for col, typ, *_ in con.execute(f"DESCRIBE SELECT * FROM {name}({nulls})").fetchall():
            parts.append(f"| {col} | {typ} |")
    con.close()
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m weightvault._docs",
                                 description="Write docs/cli.md (from --help) and docs/catalog.md (from the "
                                             "migrations).")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when either file is out of date")
    args = ap.parse_args(argv)
    want = {DOCS / "cli.md": cli_markdown() + "\n", DOCS / "catalog.md": catalog_markdown()}
    if args.check:
        stale = [str(p) for p, text in want.items() if not p.exists() or p.read_text() != text]
        print(f"out of date: {', '.join(stale)}" if stale else "docs up to date", file=sys.stderr)
        return 1 if stale else 0
    for p, text in want.items():
        p.write_text(text)
    print(f"wrote {DOCS / 'cli.md'} and {DOCS / 'catalog.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
