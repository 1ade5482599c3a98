"""The live catalog equals a rebuild from the store: after rm, after repair, after a schema upgrade;
tags on removed versions; dataset add under concurrency. Real stores, real DuckDB files, real safetensors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from conftest import toy_tensors, write_model
from weightvault import schemas
from weightvault.catalog import migrations
from weightvault.vault import Vault

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ["version_storage", "model_storage", "version_parent_shared", "chunk_first_version", "datasets", "tags",
         "tag_history", "lineage", "version_edges", "version_ancestors", "version_data", "license_audit",
         "dataset_gaps", "family_storage", "version_codecs", "tensor_derivations", "removed_versions",
         "distill_run_versions", "distill_reruns"]


def ok(r):
    assert r.rc == 0, r
    return r


def dump(vault: Vault) -> dict:
    """Every table (schema_migrations aside: it records when each migration ran) and the main views."""
    _, tables = vault.sql("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                          "AND schema_name = 'main' AND table_name <> 'schema_migrations'")
    out = {}
    for name in sorted(t for (t,) in tables) + VIEWS:
        _, rows = vault.sql(f'FROM "{name}"')
        out[name] = sorted(rows, key=repr)
    return out


def assert_same(live: dict, rebuilt: dict) -> None:
    assert live.keys() == rebuilt.keys()
    differ = {k: (live[k], rebuilt[k]) for k in live if live[k] != rebuilt[k]}
    assert not differ, f"live catalog and rebuild differ in {sorted(differ)}: {differ}"


def rebuild_dump(vault: Vault, cli) -> dict:
    ok(cli("catalog", "rebuild"))
    return dump(vault)


# -- finding 2: rm --------------------------------------------------------------------


def test_after_rm_the_live_catalog_equals_a_rebuild(vault, cli, tmp_path):
    write_model(tmp_path / "a", toy_tensors(seed=1))
    write_model(tmp_path / "b", toy_tensors(seed=2))
    write_model(tmp_path / "c1", toy_tensors(seed=3))
    write_model(tmp_path / "c2", toy_tensors(seed=4))
    ok(cli("snapshot", tmp_path / "a", "--model", "a"))
    ok(cli("snapshot", tmp_path / "b", "--model", "b"))
    ok(cli("snapshot", tmp_path / "c1", "--model", "c"))
    ok(cli("snapshot", tmp_path / "c2", "--model", "c"))
    ok(cli("dataset", "add", "d", "--license", "MIT"))
    ok(cli("link", "b@1", "d", "--role", "finetune"))
    ok(cli("link", "c@1", "d", "--role", "pretrain"))
    ok(cli("lineage", "b@1", "--add-base", "a@1", "--relation", "merge"))
    ok(cli("lineage", "c@1", "--add-base", "a@1", "--relation", "finetune"))
    ok(cli("eval", "b@1", "--task", "t", "--metric", "m", "--value", "1"))
    ok(cli("rm", "b@1"))  # the whole model goes
    ok(cli("rm", "c@1"))  # its first version goes, the second stays
    live = dump(vault)
    assert live["version_datasets"] == [] and live["lineage_edges"] == []
    assert [m for m, _ in live["models"]] == ["a", "c"]
    _, created = vault.sql("SELECT created_at FROM versions WHERE model = 'c'")
    assert [r[1] for r in live["models"] if r[0] == "c"] == [created[0][0]]  # its earliest live version
    assert vault.sql("SELECT n_versions FROM dataset_gaps WHERE name = 'd'")[1] == [(0,)]
    assert_same(live, rebuild_dump(vault, cli))
    # the removed versions' history is still there: their removal records and lineage walk
    assert {r[2] for r in live["removed_versions"]} == {"1"}
    assert len(live["eval_results"]) == 1  # an eval is a record of a past measurement, kept in both


def test_a_version_whose_ref_comes_back_gets_its_event_rows_back(vault, cli, tmp_path):
    """The rule is "rows of live versions": a ref put back (from a backup) brings back the rows of the
    link and lineage events about it, live as in a rebuild."""
    write_model(tmp_path / "a", toy_tensors(seed=1))
    write_model(tmp_path / "b", toy_tensors(seed=2))
    ok(cli("snapshot", tmp_path / "a", "--model", "a"))
    ok(cli("snapshot", tmp_path / "b", "--model", "b"))
    ok(cli("dataset", "add", "d", "--license", "MIT"))
    ok(cli("link", "b@1", "d", "--role", "finetune"))
    ok(cli("lineage", "b@1", "--add-base", "a@1", "--relation", "merge"))
    ref = vault.store.root / "refs" / "b" / "1"
    saved = ref.read_bytes()
    ok(cli("rm", "b@1"))
    assert vault.sql("SELECT count(*) FROM version_datasets")[1] == [(0,)]
    ref.write_bytes(saved)
    live = dump(vault)
    assert len(live["version_datasets"]) == 1 and len(live["lineage_edges"]) == 1
    assert_same(live, rebuild_dump(vault, cli))


# -- finding 3: upgrade from an older schema ------------------------------------------


def _old_release_catalog(vault: Vault, level: int) -> None:
    """Turn the catalog into what a release that knew migrations 1..level leaves: its tables, with the
    rows that release indexed (the events, the versions) and those migrations recorded."""
    path = vault.catalog.path
    new = path.with_name(path.name + ".new")
    os.rename(path, new)
    con = duckdb.connect(str(path))
    con.execute(migrations.BOOKKEEPING)
    for n, name, sql in schemas.catalog_migrations():
        if n <= level:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations (id, name) VALUES (?, ?)", [n, name])
    con.execute(f"ATTACH '{new}' AS s (READ_ONLY)")
    tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                                        "AND table_name <> 'schema_migrations'").fetchall()]
    assert "events" in tables and "versions" in tables
    for t in tables:  # no migration alters a table: an old table has today's columns
        con.execute(f"INSERT INTO {t} SELECT * FROM s.{t}")
    con.close()
    os.remove(new)


def _rich_store(vault: Vault, cli, tmp_path) -> None:
    base = toy_tensors(seed=1)
    write_model(tmp_path / "base", base, files={"README.md": "---\nlicense: mit\n---\n"})
    ok(cli("snapshot", tmp_path / "base", "--model", "base", "--tag", "first"))
    write_model(tmp_path / "half", {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in base.items()})
    ok(cli("snapshot", tmp_path / "half", "--model", "half", "--base-model", "base@1", "--relation", "cast"))
    write_model(tmp_path / "s", toy_tensors(seed=2, layers=1))
    ok(cli("snapshot", tmp_path / "s", "--model", "student"))
    ok(cli("dataset", "add", "d", "--license", "MIT", "--cutoff", "2024-01-01"))
    ok(cli("link", "student@1", "d", "--role", "distill"))
    ok(cli("lineage", "student@1", "--add-base", "base@1", "--relation", "distilled", "--run-id", "r1"))
    ok(cli("tag", "half@1", "prod"))
    ok(cli("eval", "half@1", "--task", "t", "--metric", "m", "--value", "0.5"))
    teacher = vault.resolve("base@1").manifest_id
    vault.store.put_event("distill_run", {
        "run_id": "r1", "teacher": {"manifest_id": teacher, "ref": "base@1", "kind": "weightvault"},
        "prompts": {"hash": "p" * 64, "count": 2, "name": "prompts.txt"},
        "settings": {"max_new_tokens": 4, "top_k": 1, "temperature": 0.0, "seed": 0, "batch_size": 1},
        "versions": {"torch": "2", "transformers": "4", "weightvault": "0.1.0"},
        "output": {"sha256": "0" * 64, "rows": 2, "tokens": 8, "complete": True}, "seconds": 1.0})
    vault.catalog.sync()


@pytest.mark.parametrize("level", [1, 2, 3, 6])
def test_a_catalog_upgraded_from_an_older_schema_equals_a_rebuild(vault, cli, tmp_path, level):
    _rich_store(vault, cli, tmp_path)
    full = dump(vault)
    assert full["derivations"] and full["distill_runs"] and full["dataset_records"] and full["eval_results"]
    _old_release_catalog(vault, level)
    upgraded = dump(vault)  # opened with this release: migrated forward on the first read
    assert [r[0] for r in vault.sql("SELECT id FROM schema_migrations ORDER BY id")[1]] == [
        n for n, _, _ in schemas.catalog_migrations()]
    assert vault.resolve("half@prod").version == "1"
    assert_same(upgraded, full)
    assert_same(upgraded, rebuild_dump(vault, cli))


# -- finding 4: a tag on a removed version --------------------------------------------


def test_a_tag_on_a_removed_version_does_not_resolve(vault, cli, tmp_path):
    write_model(tmp_path / "m1", toy_tensors(seed=1))
    write_model(tmp_path / "m2", toy_tensors(seed=2))
    ok(cli("snapshot", tmp_path / "m1", "--model", "a"))
    ok(cli("snapshot", tmp_path / "m2", "--model", "a"))
    ok(cli("tag", "a@2", "prod"))
    ok(cli("tag", "a@1", "old"))
    ok(cli("tag", "a", "old", "--delete"))
    ok(cli("dataset", "add", "d", "--license", "MIT"))
    ok(cli("rm", "a@2"))

    def refused(*args):
        r = cli(*args)
        assert r.rc == 3, r
        line = r.err.strip()
        assert "\n" not in line and "Traceback" not in line, r
        for word in ("prod", "a@2", "removed", "weightvault tag a@", "--delete"):
            assert word in line, (word, line)
        return r

    refused("show", "a@prod")
    refused("restore", "a@prod", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    refused("eval", "a@prod", "--task", "t", "--metric", "m", "--value", "1")
    refused("link", "a@prod", "d", "--role", "eval")
    assert vault.sql("SELECT count(*) FROM eval_results")[1] == [(0,)]
    ok(cli("gc", "--grace", "0"))
    refused("show", "a@prod")  # the manifest is gone now: still "removed", not damage (exit 5)

    listing = ok(cli("tag", "a", "--json")).json()
    cur = {h["tag"]: h for h in listing if h["tag"] == "prod"}["prod"]
    assert (cur["version"], cur["removed"], cur["current"]) == ("2", True, True)
    assert cur["version_id"]
    deleted = [h for h in listing if h["tag"] == "old" and h["version_id"] is None]
    assert len(deleted) == 1 and deleted[0]["removed"] is False  # a deleted tag is told apart
    text = ok(cli("tag", "a")).out
    assert "(deleted)" in text and "(removed)" in text

    ok(cli("tag", "a@1", "prod"))  # moving it is the way out
    assert str(vault.resolve("a@prod")) == "a@1"


def test_a_snapshot_time_tag_outlives_rm_as_a_moved_tag_does(vault, cli, tmp_path):
    write_model(tmp_path / "m1", toy_tensors(seed=1))
    write_model(tmp_path / "m2", toy_tensors(seed=2))
    ok(cli("snapshot", tmp_path / "m1", "--model", "a", "--tag", "prod", "--tag", "first"))
    ok(cli("snapshot", tmp_path / "m2", "--model", "a"))
    ok(cli("rm", "a@1"))
    ok(cli("gc", "--grace", "0"))  # the manifest that named the tags is gone; the removal record keeps them

    r = cli("show", "a@prod")
    assert r.rc == 3 and "removed" in r.err and "a@1" in r.err, r  # not "no such version"
    rows = vault.sql("SELECT tag, version, version_id IS NOT NULL FROM tags WHERE model = 'a' ORDER BY tag")[1]
    assert rows == [("first", None, True), ("prod", None, True)]
    listing = ok(cli("tag", "a", "--json")).json()
    assert sorted((h["tag"], h["version"], h["origin"], h["removed"], h["current"]) for h in listing) == [
        ("first", "1", "snapshot", True, True), ("prod", "1", "snapshot", True, True)]

    ok(cli("tag", "a@2", "prod"))  # a later move wins over the removed snapshot-time tag
    assert str(vault.resolve("a@prod")) == "a@2"
    history = vault.sql("SELECT origin, version_id IS NOT NULL FROM tag_history WHERE tag = 'prod' "
                        "ORDER BY moved_at")[1]
    assert history == [("snapshot", True), ("event", True)]
    assert_same(dump(vault), rebuild_dump(vault, cli))


# -- finding 5: repair quarantines a chunk --------------------------------------------


def test_after_repair_the_live_catalog_equals_a_rebuild(vault, cli, tmp_path):
    write_model(tmp_path / "m", {f"w{i}": np.random.default_rng(i).standard_normal((256, 256)).astype(np.float32)
                                 for i in range(4)})
    ok(cli("snapshot", tmp_path / "m", "--model", "a"))
    _, rows = vault.sql("SELECT chunk_id, raw_bytes FROM chunks WHERE raw_bytes >= 65536 ORDER BY chunk_id LIMIT 1")
    cid, raw = rows[0]
    p = vault.store.root / "chunks" / cid[:2] / cid
    data = bytearray(p.read_bytes())
    data[-64:-60] = bytes(b ^ 0xFF for b in data[-64:-60])
    p.write_bytes(bytes(data))
    r = cli("repair")
    assert r.rc == 5, r
    assert not p.exists()
    live = dump(vault)
    assert [c for c in live["chunks"] if c[0] == cid] == [(cid, raw, 0, "missing", None)]
    _, (storage,) = vault.sql("SELECT n_chunks FROM version_storage")
    _, (fc,) = vault.sql("SELECT count(DISTINCT chunk_id) FROM file_chunks")
    assert storage == fc
    assert_same(live, rebuild_dump(vault, cli))


# -- finding 6: concurrent dataset add ------------------------------------------------

PAUSED_ADD = r"""
import sys, time
from pathlib import Path
from weightvault import provenance as pv
from weightvault.vault import Vault

v = Vault.open(sys.argv[1])
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
put = v.store.put_event

def slow_put(kind, payload, **kw):  # stop between the "already recorded?" check and the write
    ready.touch()
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return put(kind, payload, **kw)

v.store.put_event = slow_put
pv.add_dataset(v, {"name": "race", "license": "MIT"})
"""


def test_concurrent_dataset_add_of_one_name_records_it_once(vault, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ready, go = tmp_path / "ready", tmp_path / "go"
    a = subprocess.Popen([sys.executable, "-c", PAUSED_ADD, str(vault.store.root), str(ready), str(go)], env=env,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert a.poll() is None and time.monotonic() < deadline, a.stderr.read() if a.poll() is not None else ""
        time.sleep(0.02)
    b = subprocess.Popen([sys.executable, "-m", "weightvault", "--store", str(vault.store.root), "dataset", "add",
                          "race", "--license", "GPL-3.0-only"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        b.wait(timeout=4)  # without the lock B checks, writes and exits here, before A writes
    except subprocess.TimeoutExpired:
        pass  # B waits for A: the check and the write are one step
    go.touch()
    assert a.wait(timeout=60) == 0, a.stderr.read()
    rc_b = b.wait(timeout=60)
    err_b = b.stderr.read()
    assert vault.sql("SELECT count(*) FROM dataset_records WHERE name = 'race'")[1] == [(1,)]
    assert rc_b == 4 and "already recorded" in err_b and "Traceback" not in err_b, err_b
    assert len(err_b.strip().splitlines()) == 1, err_b
    assert vault.sql("SELECT license FROM datasets WHERE name = 'race'")[1] == [("MIT",)]
