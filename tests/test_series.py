"""Several folders in one snapshot call: a training run's checkpoints as successive versions."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from conftest import store_snapshot_state, toy_tensors, tree_files, write_model
from weightvault.errors import InvalidSafetensorsError, UsageError


def checkpoints(root, n=3, seed=5):
    """n folders, each a small training step from the one before (every float tensor changes a little)."""
    rng = np.random.default_rng(seed)
    t = toy_tensors(seed=seed, layers=3, width=96)
    out = []
    for i in range(n):
        if i:
            t = {k: (v + rng.normal(0, 1e-3, v.shape).astype(v.dtype)) if v.dtype == np.float32 else v
                 for k, v in t.items()}
        out.append(write_model(root / f"checkpoint-{(i + 1) * 500}", t))
    return out


def stored_codecs(vault, ref):
    """codec of every chunk of a version, from the catalog."""
    _, rows = vault.sql(
        "SELECT c.codec FROM file_chunks f JOIN chunks c USING (chunk_id) JOIN versions v USING (version_id) "
        f"WHERE v.model || '@' || v.version = '{ref}'")
    return [r[0] for r in rows]


def test_cli_archives_checkpoints_in_order_each_the_parent_of_the_next(tmp_path, cli, vault, store_dir):
    folders = checkpoints(tmp_path)
    r = cli("snapshot", *folders, "--model", "run7", "-m", "nightly", "--json")
    assert r.rc == 0, r
    out = json.loads(r.out)
    assert [o["version"] for o in out] == ["1", "2", "3"]
    assert out[0]["parent"] is None
    assert [o["parent"] for o in out[1:]] == [o["manifest_id"] for o in out[:-1]]
    for i, f in enumerate(folders, 1):
        m = vault.manifest(f"run7@{i}")
        assert m.message == "nightly" and m.source["path"] == str(f.absolute())
        vault.restore(f"run7@{i}", tmp_path / f"out{i}")
        assert tree_files(tmp_path / f"out{i}") == tree_files(f)
    # the later checkpoints are stored as deltas of the one before, as with one snapshot per call
    assert any(c.startswith("delta-") for c in stored_codecs(vault, "run7@2"))
    assert any(c.startswith("delta-") for c in stored_codecs(vault, "run7@3"))
    # the catalog was updated: a plain duckdb reader (no weightvault sync) sees all three
    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT version FROM versions WHERE model = 'run7' ORDER BY version").fetchall() == \
            [("1",), ("2",), ("3",)]
    finally:
        con.close()


def test_one_folder_keeps_the_single_object_json(tmp_path, cli):
    (folder,) = checkpoints(tmp_path, n=1)
    r = cli("snapshot", folder, "--model", "one", "--json")
    assert r.rc == 0 and json.loads(r.out)["version"] == "1", r


def test_a_bad_folder_anywhere_refuses_the_series_before_anything_is_written(tmp_path, cli, store_dir, vault):
    folders = checkpoints(tmp_path)
    vault.snapshot(folders[0], "run7")
    before = store_snapshot_state(store_dir)
    (folders[2] / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    r = cli("snapshot", folders[1], folders[2], "--model", "run7")
    assert r.rc != 0 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r
    assert "model.safetensors" in r.err and "invalid safetensors" in r.err
    assert store_snapshot_state(store_dir) == before
    assert [x.version for x in vault.store.list_refs("run7")] == ["1"]


def test_convert_pickle_series_checks_every_pickle_before_anything_is_written(tmp_path, cli, store_dir, vault):
    """With --convert-pickle the up-front check covers each pickle's archive and opcodes too: an
    unsafe third checkpoint refuses the series with the first two still unarchived."""
    torch = pytest.importorskip("torch")
    import os
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    folders = []
    for i in range(3):
        f = tmp_path / f"checkpoint-{i + 1}"
        f.mkdir()
        (f / "config.json").write_text("{}")
        torch.save({"w": torch.full((64,), float(i))}, f / "pytorch_model.bin")
        folders.append(f)
    (folders[2] / "pytorch_model.bin").unlink()
    with zipfile.ZipFile(folders[2] / "pytorch_model.bin", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
    vault.catalog.sync()
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", *folders, "--model", "run8", "--convert-pickle")
    assert r.rc != 0 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r
    assert "pytorch_model.bin" in r.err and "system" in r.err, r
    assert store_snapshot_state(store_dir) == before and not vault.store.list_refs("run8")
    (folders[2] / "pytorch_model.bin").unlink()
    torch.save({"w": torch.full((64,), 2.0)}, folders[2] / "pytorch_model.bin")
    r = cli("snapshot", *folders, "--model", "run8", "--convert-pickle", "--json")
    assert r.rc == 0 and [o["version"] for o in r.json()] == ["1", "2", "3"], r


@pytest.mark.parametrize("flag", [["--version", "v9"], ["--tag", "prod"]])
def test_options_that_name_one_version_are_refused_with_several_folders(flag, tmp_path, cli, store_dir):
    folders = checkpoints(tmp_path, n=2)
    r = cli("snapshot", *folders, "--model", "run7", *flag)
    assert r.rc != 0 and f"{flag[0]} names one version, and 2 folders were given" in r.err, r
    assert ("weightvault tag" in r.err) == (flag[0] == "--tag") and "archive them without it" in r.err
    refs = store_dir / "refs"
    assert not refs.exists() or not [p for p in refs.rglob("*") if p.is_file()]


def test_a_failure_midway_keeps_the_versions_before_it_and_catalogs_them(tmp_path, vault, store_dir, monkeypatch):
    folders = checkpoints(tmp_path)
    from weightvault.vault import Vault

    real = Vault.snapshot
    calls = []

    def failing_third(self, source, model, **kw):
        calls.append(kw["sync_catalog"])
        if len(calls) == 3:
            raise InvalidSafetensorsError(str(source), "changed while being read")
        return real(self, source, model, **kw)

    monkeypatch.setattr(Vault, "snapshot", failing_third)
    with pytest.raises(InvalidSafetensorsError):
        vault.snapshot_series(folders, "run7")
    assert calls == [False, False, False]  # no per-version catalog update
    assert [r.version for r in vault.store.list_refs("run7")] == ["1", "2"]
    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    try:  # synced once on the way out, without waiting for the next read
        assert con.execute("SELECT count(*) FROM versions WHERE model = 'run7'").fetchone() == (2,)
    finally:
        con.close()


def test_the_python_series_updates_the_catalog_once(tmp_path, vault, monkeypatch):
    folders = checkpoints(tmp_path)
    syncs = []
    real = type(vault.catalog).sync
    monkeypatch.setattr(type(vault.catalog), "sync", lambda self, **kw: syncs.append(kw) or real(self, **kw))
    results = vault.snapshot_series(folders, "run7", parent="")
    assert [r.version for r in results] == ["1", "2", "3"]
    assert len(syncs) == 1
    # the one update carries every new chunk's sizes and codecs
    assert set(syncs[0]["chunk_info"]) == set().union(*(r.stats.new_chunk_info for r in results))
    with pytest.raises(UsageError, match="no folders"):
        vault.snapshot_series([], "run7")
