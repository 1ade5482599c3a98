"""The DuckDB catalog: real files, plain duckdb access, rebuild from the store, migrations."""

from __future__ import annotations

import duckdb
import pytest

from conftest import toy_tensors, write_model
from weightvault.catalog import migrations
from weightvault.errors import CatalogError
from weightvault.vault import Vault

README_QUERY = """SELECT model, version, raw_bytes, added_stored_bytes
FROM version_storage ORDER BY model, created_at"""

ALL_TABLES = ["models", "versions", "version_tags", "files", "tensors", "chunks", "file_chunks", "events"]
VIEWS = ["version_storage", "version_parent_shared", "model_storage", "chunk_first_version"]


def _family(vault, tmp_path):
    base = toy_tensors(seed=3)
    write_model(tmp_path / "a1", base, files={"README.md": "# toy\n"})
    vault.snapshot(tmp_path / "a1", "alpha", tags=("base",), message="first")
    ft = dict(base)
    ft["encoder.layer.0.weight"] = base["encoder.layer.0.weight"] * 1.5
    write_model(tmp_path / "a2", ft)
    vault.snapshot(tmp_path / "a2", "alpha", message="fine-tune")
    write_model(tmp_path / "b1", toy_tensors(seed=4))
    vault.snapshot(tmp_path / "b1", "org/beta")


def dump(con, name):
    return sorted(con.execute(f"SELECT * FROM {name}").fetchall(), key=repr)


def test_catalog_opens_with_plain_duckdb_and_readme_query_lists_versions(vault, tmp_path):
    _family(vault, tmp_path)
    con = duckdb.connect(str(vault.catalog.path), read_only=True)
    rows = con.execute(README_QUERY).fetchall()
    con.close()
    assert [(r[0], r[1]) for r in rows] == [("alpha", "1"), ("alpha", "2"), ("org/beta", "1")]
    # the first version of alpha added everything it has; the fine-tune added one tensor's worth
    assert rows[0][3] > rows[1][3] > 0
    layer = toy_tensors()["encoder.layer.0.weight"]
    assert rows[1][3] <= layer.nbytes + 1024  # stored bytes of one changed tensor (+ container header)


def test_rebuild_gives_the_same_rows(vault, tmp_path, cli):
    _family(vault, tmp_path)
    with vault.catalog.read() as con:
        before = {t: dump(con, t) for t in ALL_TABLES + VIEWS}
    vault.catalog.path.unlink()
    r = cli("catalog", "rebuild", "--json")
    assert r.rc == 0, r
    assert r.json()["versions"] == 3
    with vault.catalog.read() as con:
        after = {t: dump(con, t) for t in ALL_TABLES + VIEWS}
    assert after == before


def test_missing_catalog_is_recreated_on_next_command(vault, tmp_path, cli):
    _family(vault, tmp_path)
    vault.catalog.path.unlink()
    r = cli("log", "alpha", "--json")
    assert r.rc == 0, r
    assert [v["version"] for v in r.json()] == ["1", "2"]


def test_catalog_catches_up_with_a_ref_it_missed(vault, toy_model):
    """A crash between the ref (commit point) and the catalog write: the next read indexes it."""
    from weightvault.archive.snapshot import snapshot

    snapshot(vault.store, toy_model, "toy")  # archive layer only: no catalog write
    cols, rows = vault.sql("SELECT model, version FROM versions")
    assert rows == [("toy", "1")]


def test_removed_ref_drops_out_of_the_catalog(vault, toy_model):
    vault.snapshot(toy_model, "toy")
    vault.snapshot(toy_model, "toy")
    vault.store.delete_ref("toy", "1")
    _, rows = vault.sql("SELECT version FROM versions")
    assert rows == [("2",)]
    _, rows = vault.sql("SELECT count(*) FROM files WHERE version_id NOT IN (SELECT version_id FROM versions)")
    assert rows == [(0,)]


def test_views_answer_the_first_questions(vault, tmp_path):
    _family(vault, tmp_path)
    _, shared = vault.sql("SELECT model, version, parent_version, new_chunks, shared_chunks "
                          "FROM version_parent_shared")
    # alpha@2 has 12 distinct chunks (header, 10 tensors, config.json); one tensor changed
    assert shared == [("alpha", "2", "1", 1, 11)]
    _, storage = vault.sql("SELECT model, n_versions, raw_bytes > stored_bytes FROM model_storage ORDER BY model")
    assert storage == [("alpha", 2, True), ("org/beta", 1, True)]


def test_tensor_rows_match_the_file(vault, toy_model):
    vault.snapshot(toy_model, "toy")
    _, rows = vault.sql("SELECT name, dtype, shape, n_elements, len(chunk_ids) FROM tensors ORDER BY name")
    t = toy_tensors()
    assert [r[0] for r in rows] == sorted(t)
    for name, dtype, shape, n, nchunks in rows:
        assert list(shape) == list(t[name].shape) and n == t[name].size and nchunks == 1
        assert dtype == {"float32": "F32", "int64": "I64"}[str(t[name].dtype)]


def test_migrations_apply_to_a_blank_database_and_are_recorded(tmp_path):
    con = duckdb.connect(str(tmp_path / "c.duckdb"))
    names = migrations.migrate(con)
    assert names and names[0] == "0001_core"
    assert migrations.migrate(con) == []  # idempotent
    recorded = [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY id").fetchall()]
    assert recorded == names


def test_old_catalog_is_migrated_forward(tmp_path, toy_model):
    """A catalog written by the first release (0001 only) gets every later migration on open."""
    v = Vault.init(tmp_path / "s")
    v.snapshot(toy_model, "toy")
    known = migrations.schemas.catalog_migrations()
    v.catalog.path.unlink()
    con = duckdb.connect(str(v.catalog.path))
    n, name, sql = known[0]
    con.execute(migrations.BOOKKEEPING)
    con.execute(sql)
    con.execute("INSERT INTO schema_migrations (id, name) VALUES (?, ?)", [n, name])
    con.close()
    _, rows = v.sql("SELECT id FROM schema_migrations ORDER BY id")
    assert [r[0] for r in rows] == [k[0] for k in known]
    _, rows = v.sql("SELECT model, version FROM versions")
    assert rows == [("toy", "1")]


def test_catalog_from_a_newer_release_is_refused(vault, toy_model):
    vault.snapshot(toy_model, "toy")
    con = duckdb.connect(str(vault.catalog.path))
    con.execute("INSERT INTO schema_migrations (id, name) VALUES (9999, '9999_future')")
    con.close()
    with pytest.raises(CatalogError, match="9999"):
        with vault.catalog.write():
            pass


def test_garbage_catalog_file_is_quarantined_and_rebuilt(vault, toy_model, caplog):
    vault.snapshot(toy_model, "toy")
    vault.catalog.path.write_bytes(b"this is not a duckdb file" * 100)
    _, rows = vault.sql("SELECT model, version FROM versions")
    assert rows == [("toy", "1")]
    assert list(vault.root.glob("catalog.duckdb.corrupt-*"))


def test_sql_errors_are_one_line(vault, cli):
    r = cli("sql", "SELEC nonsense")
    assert r.rc == 4 and "SQL error" in r.err and "Traceback" not in r.err


def test_sql_formats(vault, toy_model, cli):
    vault.snapshot(toy_model, "toy")
    q = "SELECT model, version FROM versions"
    assert cli("sql", q, "--format", "json").json() == [{"model": "toy", "version": "1"}]
    assert cli("sql", q, "--format", "csv").out.splitlines() == ["model,version", "toy,1"]
    assert "toy" in cli("sql", q).out


def test_sql_from_file(vault, toy_model, cli, tmp_path):
    vault.snapshot(toy_model, "toy")
    f = tmp_path / "q.sql"
    f.write_text("SELECT count(*) AS n FROM versions")
    assert cli("sql", "-f", f, "--json").json() == [{"n": 1}]


def test_catalog_is_read_only_through_sql(vault, toy_model, cli):
    vault.snapshot(toy_model, "toy")
    r = cli("sql", "DELETE FROM versions")
    assert r.rc != 0
    _, rows = vault.sql("SELECT count(*) FROM versions")
    assert rows == [(1,)]


ENGINE_ONLY = r"""
import json, sys
{first}
from weightvault.vault import Vault
from weightvault.errors import QueryError
sys.path.insert(0, {tests!r})
from conftest import toy_tensors, write_model
v = Vault.init({store!r})
write_model(__import__("pathlib").Path({src!r}), toy_tensors(seed=5))
v.snapshot({src!r}, "alpha", message="one")
cols, rows = v.sql("SELECT model, version, message FROM versions")
try:
    v.sql("SELEC nonsense")
    err = None
except QueryError as e:
    err = str(e)
print(json.dumps({{"rows": rows, "cols": cols, "err": err, "package": "duckdb" in sys.modules,
                  "engine": "_duckdb" in sys.modules}}))
"""


@pytest.mark.parametrize("preloaded", [False, True])
def test_catalog_runs_on_the_engine_module_alone_or_on_the_package(tmp_path, preloaded):
    """A process that never imported the duckdb package writes and queries the catalog through the
    extension alone (the package's Python layer costs ~150 ms a call); one that did uses the package.
    Both give the same rows, and a bad query is a QueryError either way."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = ENGINE_ONLY.format(first="import duckdb" if preloaded else "", tests=str(Path(__file__).parent),
                              store=str(tmp_path / "s"), src=str(tmp_path / "m"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["rows"] == [["alpha", "1", "one"]] and got["cols"] == ["model", "version", "message"]
    assert got["err"] and got["err"].startswith("SQL error:")
    assert got["package"] is preloaded
    if not preloaded:
        assert got["engine"]
    # the file it wrote is an ordinary DuckDB catalog
    with duckdb.connect(str(tmp_path / "s" / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM versions").fetchone()[0] == 1


def test_reads_share_the_catalog_with_a_duckdb_shell(vault, tmp_path, cli):
    """A catalog in step with the store is read without any write: `weightvault sql` and `log` answer while
    another process (a duckdb shell, here this test) has the file open read-only, which DuckDB allows only
    to other readers. (They used to open it read-write every time, and waited out the lock.)"""
    _family(vault, tmp_path)
    before = vault.catalog.path.stat().st_mtime_ns
    with duckdb.connect(str(vault.catalog.path), read_only=True) as shell:
        r = cli("--lock-timeout", "2", "sql", "--json", "SELECT model, version FROM versions ORDER BY 1, 2")
        assert r.rc == 0, r
        assert [tuple(x.values()) for x in r.json()] == [("alpha", "1"), ("alpha", "2"), ("org/beta", "1")]
        assert cli("--lock-timeout", "2", "log", "alpha").rc == 0
        assert shell.execute("SELECT count(*) FROM versions").fetchone()[0] == 3
    assert vault.catalog.path.stat().st_mtime_ns == before


def test_one_unreadable_manifest_or_refused_event_never_blocks_the_catalog(vault, tmp_path, cli, monkeypatch):
    """A damaged manifest made `catalog rebuild` drop the catalog and fail, and every command after
    it (log, sql, repair) failed for every model; a dataset event DuckDB refused (a number out of
    its range) did the same at every sync. Both are now listed as unindexed, with a warning, and
    the rest of the store stays queryable."""
    from weightvault.catalog import indexer

    _family(vault, tmp_path)
    beta = vault.store.get_ref("org/beta", "1").manifest_id
    path = vault.store.root / "manifests" / beta[:2] / beta
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b" ")
    # an event type whose rows DuckDB refuses: its indexer casts text to an integer
    monkeypatch.setitem(indexer.EVENT_INDEXERS, "probe",
                        lambda con, eid, ev: con.execute("SELECT CAST(? AS INTEGER)", [ev["payload"]["n"]]))
    bad = vault.store.put_event("probe", {"n": "not a number"})
    r = cli("catalog", "rebuild")
    assert r.rc == 0, r
    assert "org/beta@1 is not in the catalog" in r.err and "weightvault rm org/beta@1" in r.err
    assert f"event {bad[:16]}: kept, but its rows were not indexed" in r.err
    assert vault.sql("SELECT model, version FROM versions ORDER BY 1, 2")[1] == [("alpha", "1"), ("alpha", "2")]
    assert vault.sql("SELECT model, version FROM unindexed_versions")[1] == [("org/beta", "1")]
    assert vault.sql("SELECT event_id FROM unindexed_events")[1] == [(bad,)]
    assert vault.sql("SELECT type FROM events WHERE event_id = ?", [bad])[1] == [("probe",)]  # kept, raw
    r = cli("log")
    assert r.rc == 0 and "alpha" in r.out and "warning" not in r.err, r  # known now: not retried per command
    r = cli("verify")
    assert r.rc == 5 and "weightvault rm org/beta@1" in r.err, r
    assert cli("rm", "org/beta@1").rc == 0
    assert vault.sql("SELECT count(*) FROM unindexed_versions")[1] == [(0,)]


def test_sql_returns_timestamps_with_a_time_zone(vault, toy_model, cli):
    """distill_runs.created_at and now() are TIMESTAMP WITH TIME ZONE: DuckDB's Python client needs
    pytz to return them, and `sql "FROM distill_runs"` (the hint of a missing run) failed without it."""
    vault.snapshot(toy_model, "toy")
    for fmt in ((), ("--json",), ("--format", "csv")):
        r = cli("sql", "SELECT TIMESTAMPTZ '2026-11-23 10:00:00+00' AS t, now() AS n", *fmt)
        assert r.rc == 0 and "2026-11-23" in r.out, r
    assert vault.sql("SELECT TIMESTAMPTZ '2026-11-23 10:00:00+00'")[1][0][0].year == 2026
