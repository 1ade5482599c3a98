"""Provenance: a model family with datasets, lineage (distilled too), tags and evals; README queries; rebuild."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import store_snapshot_state, toy_tensors, write_model
from weightvault import provenance as pv
from weightvault.archive import ids
from weightvault.vault import Vault

README = Path(__file__).resolve().parent.parent / "README.md"
BASE_CARD = """---
license: apache-2.0
language: [en, de]
datasets:
  - wikimedia/wikipedia
tags: [tiny, test]
pipeline_tag: feature-extraction
library_name: sentence-transformers
---
# tiny-base
"""
BASE_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "torch_dtype": "float32", "vocab_size": 256}
DISTILL = {"temperature": 0.0, "max_new_tokens": 32, "top_k": 20, "seed": 0}


def ok(r):
    assert r.rc == 0, r
    return r


def run_cli(store: Path):
    """The real CLI, in-process, on ``store`` (module-scoped twin of conftest's ``cli`` fixture)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from conftest import CliResult
    from weightvault import _ui
    from weightvault.cli import main

    def run(*args):
        out, err = io.StringIO(), io.StringIO()
        _ui._out = _ui._err = None
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(["--store", str(store), *map(str, args)])
        _ui._out = _ui._err = None
        return CliResult(rc, out.getvalue(), err.getvalue())

    return run


@pytest.fixture(scope="module")
def family_store(tmp_path_factory) -> Path:
    """Built once per module; each test gets its own copy (``family``)."""
    tmp_path = tmp_path_factory.mktemp("family")
    store = tmp_path / "store"
    build_family(tmp_path, run_cli(store), Vault.init(store))
    return store


@pytest.fixture
def family(family_store, store_dir):
    shutil.copytree(family_store, store_dir)
    return Vault.open(store_dir)


def build_family(tmp_path, cli, vault):
    """base -> fine-tune -> (fp16 cast, two distilled students), datasets with licences, one unrelated model."""
    base = toy_tensors(seed=1)
    write_model(tmp_path / "base", base, files={"README.md": BASE_CARD, "config.json": json.dumps(BASE_CONFIG)})
    ok(cli("snapshot", tmp_path / "base", "--model", "tiny-base"))
    ok(cli("dataset", "add", "wiki", "--version", "20231101", "--license", "CC-BY-SA-4.0",
           "--cutoff", "2023-11-01", "--tokens", "1000000", "--source-uri", "hf-dataset:wikimedia/wikipedia"))
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(52)))
    ok(cli("dataset", "add", "alpaca", "--license", "CC-BY-NC-4.0", "--cutoff", "2023-03-13", "--path", data))
    ok(cli("dataset", "add", "prompts", "--description", "distillation prompts, provenance unknown"))
    ok(cli("dataset", "add", "sts-b", "--license", "CC-BY-SA-4.0"))
    ok(cli("link", "tiny-base@1", "wiki@20231101", "--role", "pretrain"))

    ft = dict(base)
    ft["encoder.layer.3.weight"] = base["encoder.layer.3.weight"] * 0.5
    write_model(tmp_path / "ft", ft)
    ok(cli("snapshot", tmp_path / "ft", "--model", "tiny-ft", "--base-model", "tiny-base@1",
           "--relation", "finetune", "--dataset", "alpaca:finetune"))
    ok(cli("link", "tiny-ft@1", "sts-b", "--role", "eval"))

    write_model(tmp_path / "fp16", {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in ft.items()})
    ok(cli("snapshot", tmp_path / "fp16", "--model", "tiny-ft-fp16", "--base-model", "tiny-ft@1", "--relation", "cast"))

    # student A as the teacher work records it: a distilled edge in the manifest (Python API)
    teacher = vault.resolve("tiny-ft@1").manifest_id
    write_model(tmp_path / "sa", toy_tensors(seed=2, layers=2, width=32))
    vault.snapshot(tmp_path / "sa", "student-a", lineage=({"relation": "distilled", "base": teacher,
                                                          "run_id": "run-a", "prompt_set_hash": "p" * 64,
                                                          "settings": DISTILL},))
    ok(cli("link", "student-a@1", "prompts", "--role", "distill"))
    # student B: snapshotted first, its distilled edge recorded afterwards as an event
    write_model(tmp_path / "sb", toy_tensors(seed=3, layers=1, width=32))
    ok(cli("snapshot", tmp_path / "sb", "--model", "student-b"))
    ok(cli("lineage", "student-b@1", "--add-base", "tiny-ft@1", "--relation", "distilled", "--run-id", "run-b",
           "--prompt-set-hash", "p" * 64, "--settings", json.dumps({**DISTILL, "temperature": 0.7})))
    ok(cli("link", "student-b@1", "prompts@1", "--role", "distill"))

    # an unrelated model with two versions, for families and movable tags
    write_model(tmp_path / "o1", toy_tensors(seed=9, layers=1))
    ok(cli("snapshot", tmp_path / "o1", "--model", "other", "--tag", "prod"))
    write_model(tmp_path / "o2", toy_tensors(seed=10, layers=1))
    ok(cli("snapshot", tmp_path / "o2", "--model", "other"))
    ok(cli("tag", "other@2", "prod", "-m", "promote v2"))
    ok(cli("tag", "tiny-ft@1", "candidate"))
    ok(cli("eval", "student-a@1", "--task", "sts-b", "--metric", "spearman", "--value", "0.81", "--dataset", "sts-b"))
    return vault


def readme_queries() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Querying the catalog", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def family_stored_bytes(vault, models) -> tuple[int, int]:
    """(raw bytes of the versions, stored bytes of their distinct chunks) computed from the store itself."""
    raw, chunks = 0, set()
    for ref in vault.store.list_refs():
        if ref.model in models:
            m = vault.store.get_manifest(ref.manifest_id)
            raw += m.raw_bytes
            chunks |= m.chunk_ids()
    return raw, sum(vault.store.backend.stat(vault.store.chunk_key(c)).size for c in chunks)


def test_readme_queries_return_the_family(family):
    queries = readme_queries()
    fam_raw, fam_stored = family_stored_bytes(family, {"tiny-base", "tiny-ft", "tiny-ft-fp16", "student-a", "student-b"})
    other_raw, other_stored = family_stored_bytes(family, {"other"})
    expected = [
        [(1, "cast", "tiny-ft", "1", None), (2, "finetune", "tiny-base", "1", None)],
        [(1, "finetune", "tiny-ft", "1"), (2, "distilled", "student-a", "1"), (2, "distilled", "student-b", "1"),
         (2, "cast", "tiny-ft-fp16", "1")],
        [("student-a", "1", "run-a", "p" * 64, "0.0"), ("student-b", "1", "run-b", "p" * 64, "0.7")],
        [("student-a", "1", "finetune", "tiny-ft"), ("student-b", "1", "finetune", "tiny-ft"),
         ("tiny-ft", "1", "finetune", None), ("tiny-ft-fp16", "1", "finetune", "tiny-ft")],
        [("tiny-base", "1")],
        [("student-a", "1", None, ["CC-BY-NC-4.0", "CC-BY-SA-4.0"], ["prompts@1"]),
         ("student-b", "1", None, ["CC-BY-NC-4.0", "CC-BY-SA-4.0"], ["prompts@1"]),
         ("tiny-ft", "1", None, ["CC-BY-NC-4.0", "CC-BY-SA-4.0"], None),
         ("tiny-ft-fp16", "1", None, ["CC-BY-NC-4.0", "CC-BY-SA-4.0"], None)],
        [("other", 1, 2, other_raw, other_stored), ("tiny-base", 5, 5, fam_raw, fam_stored)],
        [("prompts", "1", True, True, 2), ("sts-b", "1", False, True, 1)],
    ]
    assert len(queries) == len(expected), "README's 'Querying the catalog' section changed: update this test"
    for sql, want in zip(queries, expected):
        cols, rows = family.sql(sql)
        assert rows == want, sql


def test_lineage_and_storage_facts(family, cli):
    r = ok(cli("lineage", "tiny-ft@1", "--json")).json()
    assert [(b["relation"], b["model"]) for b in r["bases"]] == [("finetune", "tiny-base")]
    assert r["bases"][0]["datasets"][0]["dataset"] == "wiki"
    assert sorted((d["relation"], d["model"], d.get("run_id")) for d in r["derived"]) == [
        ("cast", "tiny-ft-fp16", None), ("distilled", "student-a", "run-a"), ("distilled", "student-b", "run-b")]
    assert {(d["dataset"], d["role"]) for d in r["datasets"]} == {("alpaca", "finetune"), ("sts-b", "eval")}
    tree = ok(cli("lineage", "tiny-ft-fp16@1")).out
    assert "cast" in tree and "tiny-base@1" in tree and "wiki@20231101" in tree
    assert "  lineage: cast of tiny-ft@1" in ok(cli("show", "tiny-ft-fp16@1")).out.splitlines()
    # students carry the teacher's exact manifest, prompt set and settings
    _, rows = family.sql("SELECT student_model, teacher_id, settings FROM students ORDER BY 1")
    teacher = family.resolve("tiny-ft@1").manifest_id
    assert [(m, t, json.loads(s)["temperature"]) for m, t, s in rows] == [("student-a", teacher, 0.0),
                                                                         ("student-b", teacher, 0.7)]
    # the card's YAML and config.json became typed columns
    _, rows = family.sql("SELECT license, language, datasets, tags, pipeline_tag, library_name, architectures, "
                         "model_type, torch_dtype, vocab_size, c.n_parameters FROM model_cards c JOIN versions "
                         "USING (version_id) WHERE model = 'tiny-base'")
    n_params = sum(int(np.prod(v.shape)) for v in toy_tensors(seed=1).values())
    assert rows == [("apache-2.0", ["en", "de"], ["wikimedia/wikipedia"], ["tiny", "test"], "feature-extraction",
                     "sentence-transformers", ["BertModel"], "bert", "float32", 256, n_params)]
    _, rows = family.sql("SELECT typeof(language), typeof(vocab_size) FROM model_cards LIMIT 1")
    assert rows == [("VARCHAR[]", "BIGINT")]
    # the dataset record kept its fingerprint
    _, rows = family.sql("SELECT n_rows, content_hash FROM datasets WHERE name = 'alpaca'")
    assert rows[0][0] == 52 and rows[0][1].startswith("sha256:")


def test_a_removed_base_keeps_its_name_in_lineage(family, cli):
    """`rm tiny-base@1` drops its versions row; its descendants' lineage names it from the removal
    record (before: `lineage` drew "None@None" and ancestors() returned an empty name), after a
    catalog rebuild too."""
    ok(cli("rm", "tiny-base@1", "--reason", "superseded"))
    for _ in range(2):
        r = ok(cli("lineage", "tiny-ft@1", "--json")).json()
        assert [(b["relation"], b["model"], b["version"], b.get("removed")) for b in r["bases"]] == [
            ("finetune", "tiny-base", "1", True)]
        tree = ok(cli("lineage", "tiny-ft-fp16@1")).out
        assert "finetune tiny-base@1 (removed)" in tree and "None" not in tree, tree
        _, rows = family.sql("SELECT depth, relation, ancestor_model, ancestor_version "
                             "FROM ancestors('tiny-ft-fp16', '1')")
        assert rows == [(1, "cast", "tiny-ft", "1"), (2, "finetune", "tiny-base", "1")]
        _, rows = family.sql("SELECT base_model, base_version FROM lineage WHERE model = 'tiny-ft'")
        assert rows == [("tiny-base", "1")]
        family.catalog.rebuild()


def test_the_lineage_walk_goes_on_past_a_removed_version(family, cli):
    """rm records the removed manifest's parent and lineage, so removing the middle of
    base -> fine-tune -> fp16 cast keeps the cast's whole ancestry, after a rebuild too."""
    ok(cli("rm", "tiny-ft@1"))
    for _ in range(2):
        _, rows = family.sql("SELECT depth, relation, ancestor_model, ancestor_version "
                             "FROM ancestors('tiny-ft-fp16', '1')")
        assert rows == [(1, "cast", "tiny-ft", "1"), (2, "finetune", "tiny-base", "1")]
        _, rows = family.sql("SELECT depth, descendant_model FROM descendants('tiny-base', '1') ORDER BY 1, 2")
        assert rows == [(2, "student-a"), (2, "student-b"), (2, "tiny-ft-fp16")]  # the removed one is no row
        r = ok(cli("lineage", "tiny-ft-fp16@1", "--json")).json()
        (ft,) = r["bases"]
        assert (ft["model"], ft.get("removed")) == ("tiny-ft", True)
        assert [(b["relation"], b["model"]) for b in ft["bases"]] == [("finetune", "tiny-base")]
        family.catalog.rebuild()


def test_tags_move_keep_history_and_resolve(family, cli):
    assert str(family.resolve("other@prod")) == "other@2"
    assert str(family.resolve("tiny-ft@candidate")) == "tiny-ft@1"
    hist = ok(cli("tag", "other", "--json")).json()
    assert [(h["tag"], h["version"], h["origin"], h["current"]) for h in hist] == [
        ("prod", "1", "snapshot", False), ("prod", "2", "event", True)]
    ok(cli("tag", "other@1", "prod"))
    assert str(family.resolve("other@prod")) == "other@1"
    ok(cli("tag", "other", "prod", "--delete"))
    assert cli("show", "other@prod").rc == 3
    assert len(ok(cli("tag", "other", "--json")).json()) == 4  # every move kept, the removal too
    r = cli("tag", "other@1", "2")
    assert r.rc == 4 and "would hide version" in r.err


def test_tag_order_independent_of_arrival(vault, toy_model, tmp_path):
    vault.snapshot(toy_model, "m")
    write_model(tmp_path / "m2", toy_tensors(seed=5))
    vault.snapshot(tmp_path / "m2", "m")
    v1, v2 = (vault.resolve(f"m@{i}").manifest_id for i in (1, 2))
    # the later move arrives first (e.g. copied from another store), the earlier one afterwards
    vault.store.put_event("tag", {"model": "m", "tag": "prod", "version_id": v2}, at="2026-01-02T00:00:00.000000Z")
    vault.catalog.sync()
    vault.store.put_event("tag", {"model": "m", "tag": "prod", "version_id": v1}, at="2026-01-01T00:00:00.000000Z")
    vault.catalog.sync()
    assert vault.resolve("m@prod").manifest_id == v2
    # a corrected dataset record wins by time, not by arrival
    vault.store.put_event("dataset", {"name": "d", "version": "1", "license": "MIT"}, at="2026-01-02T00:00:00.000000Z")
    vault.catalog.sync()
    vault.store.put_event("dataset", {"name": "d", "version": "1", "license": "GPL-3.0"}, at="2026-01-01T00:00:00.000000Z")
    vault.catalog.sync()
    assert vault.sql("SELECT license FROM datasets WHERE name = 'd'")[1] == [("MIT",)]


PROVENANCE_QUERIES = [
    "SELECT * EXCLUDE (event_id) FROM dataset_records",
    "FROM version_datasets", "FROM lineage_edges", "FROM tag_moves", "FROM model_cards", "FROM eval_results",
    "FROM events", "SELECT * EXCLUDE (metadata) FROM versions", "FROM tags", "FROM lineage", "FROM students",
    "FROM version_ancestors", "FROM version_data", "FROM license_audit", "FROM family_storage", "FROM dataset_gaps",
]


def dump(vault) -> dict:
    """Every table's full contents (schema_migrations aside: it records when each migration ran), plus views."""
    _, tables = vault.sql("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                          "AND table_name <> 'schema_migrations'")
    out = {}
    for q in [f'FROM "{t}"' for (t,) in tables] + PROVENANCE_QUERIES:
        _, rows = vault.sql(q)
        out[q] = sorted(rows, key=repr)
    return out


def test_family_survives_catalog_rebuild(family, cli):
    before = dump(family)
    assert len(before["FROM lineage_edges"]) == 4 and len(before["FROM version_datasets"]) == 5
    assert len(before["SELECT * EXCLUDE (event_id) FROM dataset_records"]) == 4
    assert len(before["FROM tag_moves"]) == 2 and len(before["FROM eval_results"]) == 1
    family.catalog.path.unlink()
    ok(cli("catalog", "rebuild"))
    assert dump(family) == before


def test_catalog_export_writes_every_table(family, cli, tmp_path):
    import duckdb

    out = tmp_path / "export"
    r = ok(cli("catalog", "export", out, "--json")).json()
    tables = {d["table"] for d in r}
    assert {"datasets", "version_datasets", "lineage_edges", "model_cards", "tag_moves", "versions"} - tables == {
        "datasets"}  # a view: its rows are in dataset_records
    with duckdb.connect() as con:
        for d in r:
            n = con.execute("SELECT count(*) FROM read_parquet(?)", [d["path"]]).fetchone()[0]
            assert n == d["rows"], d["table"]
        edges = con.execute("SELECT relation, run_id FROM read_parquet(?) ORDER BY 1, 2",
                            [str(out / "lineage_edges.parquet")]).fetchall()
    assert edges == [("cast", None), ("distilled", "run-a"), ("distilled", "run-b"), ("finetune", None)]
    assert {d["kind"] for d in r} == {"table"}
    # --views: each view's rows as of now, beside the tables
    r = ok(cli("catalog", "export", out, "--views", "--json")).json()
    views = {d["table"]: d for d in r if d["kind"] == "view"}
    assert {"datasets", "lineage", "version_storage", "license_audit", "tags"} <= set(views)
    assert {d["table"] for d in r if d["kind"] == "table"} == tables
    with duckdb.connect() as con:
        rows = con.execute("SELECT model, base_model FROM read_parquet(?) WHERE relation = 'finetune'",
                           [views["lineage"]["path"]]).fetchall()
        assert rows == [("tiny-ft", "tiny-base")]
        names = con.execute("SELECT name FROM read_parquet(?) ORDER BY 1", [views["datasets"]["path"]]).fetchall()
    assert names == family.sql("SELECT name FROM datasets ORDER BY 1")[1]
    # without --views again: the view files of the export before are removed, a user's file is not
    (out / "mine.parquet").write_bytes(b"not weightvault's")
    r = ok(cli("catalog", "export", out, "--json")).json()
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(["mine.parquet"] + [Path(d["path"]).name for d in r])
    assert (out / "mine.parquet").read_bytes() == b"not weightvault's"
    listed = json.loads((out / "_export.json").read_text())
    assert [f["file"] for f in listed["files"]] == [f"{d['table']}.parquet" for d in r]
    # a list that names something outside the folder or a non-Parquet file is never followed
    listed["files"] += [{"file": "../x.parquet"}, {"file": "mine.parquet"}, {"file": "README.md"}]
    (out / "_export.json").write_text(json.dumps(listed))
    (tmp_path / "x.parquet").write_bytes(b"x")
    (out / "README.md").write_text("keep")
    ok(cli("catalog", "export", out))
    assert (tmp_path / "x.parquet").exists() and (out / "README.md").exists()
    assert not (out / "mine.parquet").exists()  # listed, so weightvault's to replace


def test_catalog_export_never_overwrites_a_file_no_export_listed(family, cli, tmp_path):
    """A user's own versions.parquet (or an export whose _export.json was deleted) is not replaced:
    the export is refused before it writes anything."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "versions.parquet").write_bytes(b"the user's")
    r = cli("catalog", "export", out)
    assert r.rc != 0 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r
    assert f"{out}/versions.parquet exists" in r.err and "_export.json" in r.err, r
    assert sorted(p.name for p in out.iterdir()) == ["versions.parquet"]
    assert (out / "versions.parquet").read_bytes() == b"the user's"
    # once the file is moved away the same export works, and its own files are replaced the next time
    (out / "versions.parquet").unlink()
    ok(cli("catalog", "export", out))
    ok(cli("catalog", "export", out))


def test_bad_provenance_input_leaves_nothing(family, cli, store_dir):
    before = store_snapshot_state(store_dir)
    cases = [
        (("link", "tiny-ft@1", "nope", "--role", "eval"), 3, "nope"),
        (("lineage", "tiny-ft@1", "--add-base", "tiny-base@1", "--relation", "finetune", "--run-id", "x"), 4, "run_id"),
        (("lineage", "tiny-ft@1", "--add-base", "tiny-ft@1", "--relation", "merge"), 4, "own base"),
        (("lineage", "tiny-base@1", "--add-base", "tiny-ft@1", "--relation", "merge"), 4, "tiny-ft@1 derives from tiny-base@1"),
        (("snapshot", "/nonexistent", "--model", "y", "--relation", "cast"), 2, "--relation needs --base-model"),
        (("lineage", "tiny-ft@1", "--add-base", "hf:../x", "--relation", "merge"), 4, "repo id"),
        (("dataset", "add", "wiki", "--version", "20231101"), 4, "already recorded"),
        (("dataset", "add", "wiki", "--version", "2023110", "--replace"), 3, "nothing to correct"),  # a typo
        (("dataset", "add", "x", "--license", "not a licence!"), 4, "--license: 'not a licence!'"),
        (("dataset", "add", "x", "--cutoff", "2023-02-30"), 4, "--cutoff: '2023-02-30'"),
        (("dataset", "add", "x", "--extra", "[1]"), 2, "--extra"),
        (("snapshot", "/nonexistent", "--model", "y", "--dataset", "alpaca:teach"), 4, "role"),
        (("snapshot", "/nonexistent", "--model", "y", "--base-model", "nope@1"), 3, "nope"),
        (("eval", "tiny-ft@1", "--task", "t", "--metric", "m", "--value", "1", "--dataset", "nope"), 3, "nope"),
    ]
    for args, rc, needle in cases:
        r = cli(*args)
        assert r.rc == rc and needle in r.err and len(r.err.strip().splitlines()) == 1, (args, r)
    assert store_snapshot_state(store_dir) == before


def test_malformed_event_in_store_is_skipped_not_fatal(vault, toy_model, caplog):
    vault.snapshot(toy_model, "m")
    vault.store.put_event("lineage", {"child": vault.resolve("m@1").manifest_id, "relation": "grafted",
                                      "base_ref": "hf:x/y"})
    vault.store.put_event("dataset", {"name": "ok", "license": "MIT"})
    vault.catalog.sync()
    assert vault.sql("SELECT count(*) FROM lineage_edges")[1] == [(0,)]
    assert vault.sql("SELECT name FROM datasets")[1] == [("ok",)]
    assert "relation" in caplog.text


def test_dataset_list(tmp_path, cli):
    r = ok(cli("dataset", "list"))
    assert r.out.startswith("no datasets recorded: add one with `weightvault dataset add"), r
    assert ok(cli("dataset", "list", "--json")).json() == []
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": 1}\n{"q": 2}\n')
    ok(cli("dataset", "add", "wiki", "--version", "20231101", "--license", "CC-BY-SA-4.0", "--cutoff", "2023-11-01"))
    ok(cli("dataset", "add", "alpaca", "--license", "CC-BY-NC-4.0", "--path", data))
    rows = ok(cli("dataset", "list", "--json")).json()
    assert [(d["name"], d["license"], d["n_rows"]) for d in rows] == [("alpaca", "CC-BY-NC-4.0", 2),
                                                                        ("wiki", "CC-BY-SA-4.0", None)]
    assert str(rows[1]["cutoff_date"]) == "2023-11-01" and rows[0]["content_hash"].startswith("sha256:")
    human = ok(cli("dataset", "list")).out
    assert [line.split("│")[0].strip() for line in human.splitlines() if "│" in line] == ["alpaca", "wiki"], human


def test_bad_dataset_flags_and_catalog_writes_name_what_to_do(cli):
    r = cli("dataset", "add", "wiki", "--cutoff", "2023-13-45")
    assert r.rc == 4 and r.err.startswith("error: dataset add: --cutoff: '2023-13-45' is not a date"), r
    assert "flags" not in r.err and "→ fix --cutoff" in r.err
    r = cli("dataset", "add", "wiki", "--tokens", "-5")
    assert r.rc == 4 and "dataset add: --tokens:" in r.err, r
    r = cli("sql", "DELETE FROM versions")
    assert r.rc == 4 and "read-only index of the store" in r.err and "weightvault catalog export" in r.err, r
    r = cli("sql", "SELEC 1")
    assert r.rc == 4 and "SHOW ALL TABLES" in r.err, r


def test_dataset_fingerprint_folder(tmp_path, cli):
    import duckdb

    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "a.jsonl").write_text('{"x": 1}\n{"x": 2}\n\n')
    (d / "sub" / "b.csv").write_text("x,y\n1,2\n3,4\n5,6\n")
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT range AS x FROM range(7)) TO '{d / 'c.parquet'}' (FORMAT parquet)")
    (d / "notes.txt").write_text("no rows here")
    r = ok(cli("dataset", "fingerprint", d, "--json")).json()
    assert r["n_rows"] == 2 + 3 + 7
    assert {f["path"]: f["n_rows"] for f in r["files"]} == {"a.jsonl": 2, "c.parquet": 7, "notes.txt": None,
                                                             "sub/b.csv": 3}
    import hashlib

    listing = "".join(f"{hashlib.sha256((d / p).read_bytes()).hexdigest()}  {p}\n"
                      for p in sorted(["a.jsonl", "c.parquet", "notes.txt", "sub/b.csv"]))
    assert r["content_hash"] == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    # a single file's hash is its sha256, as the Hub and LFS name it
    one = ok(cli("dataset", "fingerprint", d / "a.jsonl", "--json")).json()
    assert one["content_hash"] == "sha256:" + hashlib.sha256((d / "a.jsonl").read_bytes()).hexdigest()
    assert ids.is_id(one["content_hash"].split(":")[1])


def test_catalog_from_before_provenance_is_backfilled(vault, tmp_path, monkeypatch):
    """A catalog written by a release with only 0001 gains card and lineage rows for its old versions."""
    from weightvault import schemas
    from weightvault.catalog import indexer

    write_model(tmp_path / "b", toy_tensors(), files={"README.md": BASE_CARD, "config.json": json.dumps(BASE_CONFIG)})
    vault.snapshot(tmp_path / "b", "b")
    write_model(tmp_path / "f", toy_tensors(seed=4))
    vault.snapshot(tmp_path / "f", "f", lineage=({"relation": "finetune", "base": vault.resolve("b@1").manifest_id},))
    indexer.load_plugins()
    with monkeypatch.context() as old_release:  # 0001 only, no provenance indexers
        # (and 0007: this release's sync core lists what it cannot index there)
        only_core = [m for m in schemas.catalog_migrations() if m[0] in (1, 7)]
        old_release.setattr(schemas, "catalog_migrations", lambda: only_core)
        for name, empty in (("VERSION_INDEXERS", []), ("EVENT_INDEXERS", {}), ("SYNC_HOOKS", []),
                            ("VERSION_TABLES", ["file_chunks", "tensors", "files", "version_tags"])):
            old_release.setattr(indexer, name, empty)
        vault.catalog.path.unlink()
        vault.catalog.sync()
        assert vault.sql("SELECT count(*) FROM versions")[1] == [(2,)]
        assert vault.sql("SELECT id FROM schema_migrations ORDER BY id")[1] == [(1,), (7,)]
    # the current release migrates the old catalog and backfills what the manifests say
    assert vault.sql("SELECT model, license, vocab_size FROM model_cards JOIN versions USING (version_id) "
                     "ORDER BY model")[1] == [("b", "apache-2.0", 256), ("f", None, None)]
    assert vault.sql("SELECT depth, relation, ancestor_model FROM ancestors('f', '1')")[1] == [(1, "finetune", "b")]


def test_nan_and_infinity_never_reach_a_record_or_a_json_output(family, cli, store_dir):
    """`eval --value nan` and `--extra '{"a": NaN}'` were recorded, and `--json` then printed NaN,
    which jq, JSON.parse and strict parsers refuse."""
    before = store_snapshot_state(store_dir)
    for args in (("eval", "tiny-ft@1", "--task", "t", "--metric", "m", "--value", "nan"),
                 ("eval", "tiny-ft@1", "--task", "t", "--metric", "m", "--value=-inf"),
                 ("dataset", "add", "d1", "--license", "MIT", "--extra", '{"a": NaN}'),
                 ("eval", "tiny-ft@1", "--task", "t", "--metric", "m", "--value", "1",
                  "--settings", '{"t": Infinity}')):
        r = cli(*args)
        assert r.rc in (2, 4) and "Traceback" not in r.err, (args, r)
    assert store_snapshot_state(store_dir) == before
    with pytest.raises(Exception, match="NaN or Infinity"):
        family.store.put_event("eval", {"value": float("nan")})
    r = cli("sql", "SELECT 'inf'::DOUBLE AS x, 'nan'::DOUBLE AS y, 1.5::DOUBLE AS z", "--json")
    assert r.rc == 0 and json.loads(r.out, parse_constant=lambda c: pytest.fail(c)) == [
        {"x": None, "y": None, "z": 1.5}], r


def test_an_export_stopped_part_way_can_be_rerun_into_its_folder(family, cli, tmp_path, monkeypatch):
    """The list is written ahead: files of a first export stopped after some tables are known as
    the export's own, not refused as someone else's."""
    from pathlib import Path as P

    real, renamed = P.replace, []

    def stop_after_two(self, target):
        if str(target).endswith(".parquet"):
            renamed.append(target)
            if len(renamed) > 2:
                raise KeyboardInterrupt
        return real(self, target)

    out = tmp_path / "exp"
    with monkeypatch.context() as mp:
        mp.setattr(P, "replace", stop_after_two)
        with pytest.raises(KeyboardInterrupt):
            pv.export_catalog(family, out)
    assert len(list(out.glob("*.parquet"))) == 2
    r = cli("catalog", "export", out, "--json")
    assert r.rc == 0, r
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(P(d["path"]).name for d in r.json())
