"""Catalog migrations: numbered SQL files in ``schemas/catalog``, applied in order.

Append-only: a released migration is never edited; a change is a new file.
Each runs in its own transaction together with its row in
``schema_migrations``. A catalog that records a migration this weightvault
does not know was written by a newer release and is refused.
"""

from __future__ import annotations

from weightvault import schemas
from weightvault.errors import CatalogError

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    id          INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL,
    applied_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
)
"""


def applied(con) -> dict[int, str]:
    """Migrations the catalog records (none when it has no bookkeeping table yet).

    Only reads, so it works on a read-only connection: that is how every
    catalog read checks it is current before it answers.
    """
    from weightvault.catalog.connection import duckdb_module

    try:  # asking duckdb_tables() first costs ~17 ms more as a connection's first statement
        rows = con.execute("SELECT id, name FROM schema_migrations").fetchall()
    except duckdb_module().CatalogException:  # no such table: a new catalog
        return {}
    return dict(rows)


def pending(con) -> list[tuple[int, str, str]]:
    done = applied(con)
    known = schemas.catalog_migrations()
    newest = max((n for n, _, _ in known), default=0)
    if done and max(done) > newest:
        raise CatalogError(
            f"the catalog has migration {max(done)} but this weightvault knows up to {newest}",
            hint="upgrade weightvault, or rebuild the catalog with `weightvault catalog rebuild`",
        )
    return [(n, name, sql) for n, name, sql in known if n not in done]


def migrate(con, todo: list[tuple[int, str, str]] | None = None) -> list[str]:
    """Apply pending migrations (``todo``: what :func:`pending` just returned on ``con``); return the names applied."""
    names = []
    todo = pending(con) if todo is None else todo
    if todo:
        con.execute(BOOKKEEPING)
    for n, name, sql in todo:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations (id, name) VALUES (?, ?)", [n, name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        names.append(name)
    return names
