"""rm and gc: what is kept (live chunks, delta bases, young objects), what is freed, when gc refuses."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from conftest import toy_tensors, tree_files, write_model

from weightvault.archive import codecs
from weightvault.archive.gc import collect, parse_duration, remove_version
from weightvault.errors import GcRefusedError, LockBusyError, UsageError, VersionNotFoundError
from weightvault.vault import Vault


def _age(store_dir, days=1):
    """Make every object look old (past any grace period)."""
    old = time.time() - days * 86400
    for p in store_dir.rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))


@pytest.fixture
def two_versions(tmp_path, vault):
    t = toy_tensors(0)
    a = write_model(tmp_path / "a", t)
    t2 = dict(t, **{"encoder.layer.0.weight": t["encoder.layer.0.weight"] + 1})
    b = write_model(tmp_path / "b", t2)
    ra = vault.snapshot(a, "m")
    rb = vault.snapshot(b, "m")
    return a, b, ra, rb


def test_rm_then_gc_frees_only_unshared_chunks(two_versions, vault, store_dir, cli, tmp_path):
    a, b, ra, rb = two_versions
    only_a = ra.manifest.chunk_ids() - rb.manifest.chunk_ids()
    assert only_a
    r = cli("rm", "m@1", "--reason", "superseded", "--json")
    assert r.rc == 0, r
    _age(store_dir)
    dry = cli("gc", "--dry-run", "--json").json()
    assert dry["removed_chunks"] == len(only_a) and dry["removed_manifests"] == 1
    assert all(vault.store.has_chunk(c) for c in only_a)  # dry run deleted nothing
    done = cli("gc", "--json").json()
    sizes = sum(len(vault.store.get_container(c)) for c in rb.manifest.chunk_ids())
    assert done["freed_bytes"] == dry["freed_bytes"] > 0
    assert not any(vault.store.has_chunk(c) for c in only_a)
    assert all(vault.store.has_chunk(c) for c in rb.manifest.chunk_ids()) and sizes > 0
    assert cli("restore", "m@2", tmp_path / "out").rc == 0
    assert tree_files(tmp_path / "out") == tree_files(b)
    # history kept: the removal is in the catalog, and survives a rebuild
    assert cli("catalog", "rebuild").rc == 0
    rows = cli("sql", "SELECT model, version, reason FROM version_removals", "--json").json()
    assert rows == [{"model": "m", "version": "1", "reason": "superseded"}]
    assert cli("sql", "SELECT count(*) AS n FROM versions", "--json").json() == [{"n": 1}]
    assert cli("gc", "--json").json()["freed_bytes"] == 0  # nothing left to do


def test_gc_keeps_delta_bases_read_from_container_headers(two_versions, vault, store_dir):
    a, b, ra, rb = two_versions
    only_a = sorted(ra.manifest.chunk_ids() - rb.manifest.chunk_ids())
    only_b = sorted(rb.manifest.chunk_ids() - ra.manifest.chunk_ids())
    base, child = only_a[0], only_b[0]
    # Rewrite one of b's chunks as stored relative to a chunk only version 1 uses (a delta container).
    raw = vault.store.read_chunk(child)
    key = store_dir / "chunks" / child[:2] / child
    key.write_bytes(codecs._container(codecs._meta(child, len(raw), "raw", base=base), {"data": raw}))
    assert vault.store.chunk_header(child)[0].base == base
    remove_version(vault.store, "m", "1")
    _age(store_dir)
    rep = collect(vault.store, grace_s=3600)
    assert vault.store.has_chunk(base), "a live chunk's delta base was swept"
    assert rep.base_chunks == 1 and base not in rep.removed_chunks
    assert set(rep.removed_chunks) == set(only_a) - {base}


def test_gc_grace_keeps_young_unreferenced_objects(two_versions, vault, store_dir):
    a, b, ra, rb = two_versions
    remove_version(vault.store, "m", "1")
    rep = collect(vault.store, grace_s=parse_duration("1h"))  # everything is seconds old
    assert rep.removed_chunks == [] and rep.kept_young_chunks > 0 and rep.kept_young_manifests == 1
    # an orphan manifest inside the grace period protects its chunks even when they are old
    for c in ra.manifest.chunk_ids():
        p = store_dir / "chunks" / c[:2] / c
        os.utime(p, (time.time() - 86400,) * 2)
    rep = collect(vault.store, grace_s=3600)
    assert rep.removed_chunks == []


def test_gc_sweeps_old_temp_files(vault, toy_model, store_dir):
    vault.snapshot(toy_model, "m")
    tmp = store_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    old, new = tmp / "123-dead.tmp", tmp / "456-live.tmp"
    old.write_bytes(b"torn")
    new.write_bytes(b"in flight")
    os.utime(old, (time.time() - 7200,) * 2)
    rep = collect(vault.store, grace_s=3600)
    assert rep.temp_files == 1 and not old.exists() and new.exists()


@pytest.mark.parametrize("damage", ["missing_chunk", "missing_manifest", "garbled_manifest", "garbled_ref",
                                    "missing_base"])
def test_gc_refuses_when_referenced_data_is_missing(damage, two_versions, vault, store_dir, cli):
    a, b, ra, rb = two_versions
    remove_version(vault.store, "m", "1")
    _age(store_dir)
    cid = sorted(rb.manifest.chunk_ids())[0]
    if damage == "missing_chunk":
        (store_dir / "chunks" / cid[:2] / cid).unlink()
    elif damage == "missing_manifest":
        (store_dir / "manifests" / rb.manifest_id[:2] / rb.manifest_id).unlink()
    elif damage == "garbled_manifest":
        p = store_dir / "manifests" / rb.manifest_id[:2] / rb.manifest_id
        p.write_bytes(p.read_bytes()[:-10])
    elif damage == "garbled_ref":
        (store_dir / "refs" / "m" / "2").write_text("{not json")
    else:
        raw = vault.store.read_chunk(cid)
        gone = "ab" * 32
        (store_dir / "chunks" / cid[:2] / cid).write_bytes(
            codecs._container(codecs._meta(cid, len(raw), "raw", base=gone), {"data": raw}))
    before = sorted(p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if p.is_file()
                    and not p.relative_to(store_dir).as_posix().startswith(("locks/", "catalog")))
    with pytest.raises(GcRefusedError):
        collect(vault.store, grace_s=0)
    r = cli("gc", "--grace", "0")
    assert r.rc == GcRefusedError.exit_code and "gc refused" in r.err, r
    after = sorted(p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if p.is_file()
                   and not p.relative_to(store_dir).as_posix().startswith(("locks/", "catalog")))
    assert after == before


def test_gc_waits_for_a_running_snapshot_and_names_it(vault, toy_model, store_dir, cli):
    holder = threading.Event()
    release = threading.Event()

    def snapshot_in_progress():  # holds the store lock shared, as a snapshot does from first chunk to ref
        with vault.store.lock.held(shared=True, op="snapshot toy"):
            holder.set()
            release.wait(30)

    t = threading.Thread(target=snapshot_in_progress)
    t.start()
    holder.wait(10)
    try:
        from weightvault.archive.store import Store

        other = Store.open(store_dir)  # another FileLock object: flock conflicts as between processes
        with pytest.raises(LockBusyError) as e:
            collect(other, grace_s=0, lock_timeout=0.2)
        assert "snapshot toy" in str(e.value) and f"pid {os.getpid()}" in str(e.value)
    finally:
        release.set()
        t.join()
    assert collect(Store.open(store_dir), grace_s=0).dry_run is False


def test_rm_errors(vault, toy_model, cli):
    vault.snapshot(toy_model, "m")
    assert cli("rm", "m@9").rc == VersionNotFoundError.exit_code
    assert cli("rm", "m").rc == UsageError.exit_code  # a bare name never removes the latest silently
    with pytest.raises(UsageError):
        parse_duration("soon")
    assert json.loads(cli("rm", "m@1", "--json").out)["version"] == "1"


def test_gc_after_rm_of_a_parent_keeps_the_engines_real_delta_bases(tmp_path, vault, cli):
    """v2 is stored as deltas against v1 by the engine: removing v1 must not free v2's bases."""
    import numpy as np

    t = toy_tensors(0, width=256)
    rng = np.random.default_rng(1)
    t2 = {k: (v + rng.standard_normal(v.shape).astype(v.dtype) * 1e-3) if v.dtype == np.float32 else v
          for k, v in t.items()}
    a, b = write_model(tmp_path / "a", t), write_model(tmp_path / "b", t2)
    vault.snapshot(a, "m")
    rb = vault.snapshot(b, "m")
    bases = {vault.store.chunk_header(c)[0].base for c in rb.manifest.chunk_ids()} - {None}
    if not bases:
        pytest.fail("the engine stored no delta for this pair: the test needs one")
    assert bases - rb.manifest.chunk_ids()  # some bases are only v1's chunks
    assert cli("rm", "m@1").rc == 0
    rep = cli("gc", "--grace", "0", "--json").json()
    assert rep["base_chunks"] >= len(bases - rb.manifest.chunk_ids())
    assert all(vault.store.has_chunk(c) for c in bases)
    assert cli("verify", "--read-data").rc == 0
    assert cli("restore", "m@2", tmp_path / "out").rc == 0
    assert tree_files(tmp_path / "out") == tree_files(b)
    # a lost base is reported against the versions, files and tensors of the chunks built on it
    base = sorted(bases - rb.manifest.chunk_ids())[0]
    (vault.store.root / "chunks" / base[:2] / base).unlink()
    r = cli("verify", "--json")
    assert r.rc == 5
    d = r.json()["damaged"]
    assert d and all(x["cause"] == base for x in d)
    assert {u["version"] for x in d for u in x["uses"]} == {"m@2"}
    assert cli("gc", "--grace", "0").rc == GcRefusedError.exit_code
    rep = cli("repair", "--json").json()
    assert base in rep["damaged_chunks"] and set(rep["lost_chunks"]) == {x["chunk_id"] for x in d}
    assert {x["version"] for x in rep["losses"]} == {"m@2"} and rep["lost_bytes"] > 0

    # Snapshotting v2's files again heals it: the reused deltas whose base is gone are stored again
    # in full from the bytes at hand (it used to report "archived, 0 new chunks" for one more
    # version that could not be restored).
    r = cli("snapshot", b, "--model", "m", "--json")
    assert r.rc == 0, r
    assert set(r.json()["healed_chunks"]) == set(rep["lost_chunks"]), r.json()
    assert cli("verify", "--read-data").rc == 0
    for v in ("m@2", "m@3"):
        out = tmp_path / f"out-{v}"
        assert cli("restore", v, out).rc == 0
        assert tree_files(out) == tree_files(b)


def test_gc_keeps_the_delta_bases_of_a_stopped_snapshots_young_chunks(tmp_path, vault, store_dir, cli, monkeypatch):
    """A snapshot stopped after its chunks were stored, before its manifest (Ctrl-C, kill -9, a file
    that changed): its young chunks are kept for the grace period, and so must their delta bases be,
    or the rerun deduplicates against deltas whose bases gc deleted."""
    import numpy as np

    from weightvault.archive.store import Store

    t = toy_tensors(0, width=256)
    rng = np.random.default_rng(1)
    t2 = {k: (v + rng.standard_normal(v.shape).astype(v.dtype) * 1e-3) if v.dtype == np.float32 else v
          for k, v in t.items()}
    a, b = write_model(tmp_path / "a", t), write_model(tmp_path / "b", t2)
    ra = vault.snapshot(a, "m")
    _age(store_dir)  # v1 is old
    before = {p.name for p in (store_dir / "chunks").rglob("*") if p.is_file()}

    def stopped(self, manifest):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(Store, "put_manifest", stopped)
        with pytest.raises(KeyboardInterrupt):
            vault.snapshot(b, "m")
    young = {p.name for p in (store_dir / "chunks").rglob("*") if p.is_file()} - before
    bases = {vault.store.chunk_header(c)[0].base for c in young} - {None}
    if not bases:
        pytest.fail("the engine stored no delta for this pair: the test needs one")
    assert bases <= ra.manifest.chunk_ids()
    assert cli("rm", "m@1").rc == 0
    rep = cli("gc", "--grace", "1h", "--json").json()  # v1's chunks are a day old, v2's seconds
    assert rep["removed_manifests"] == 1
    assert all(vault.store.has_chunk(c) for c in bases), "gc kept young deltas but deleted their bases"
    r = cli("snapshot", b, "--model", "m", "--json")  # the rerun
    assert r.rc == 0 and r.json()["healed_chunks"] == [], r
    assert cli("verify", "--read-data").rc == 0 and cli("gc", "--grace", "0").rc == 0
    assert cli("restore", "m", tmp_path / "out").rc == 0
    assert tree_files(tmp_path / "out") == tree_files(b)


def test_a_removed_version_label_is_never_given_to_other_weights(two_versions, vault, cli, tmp_path):
    """`rm m@2` then a snapshot used to be numbered m@2 again, with other weights, while the removal
    history still said m@2 was removed: papers and eval sheets citing m@2 would restore other bytes."""
    a, b, ra, rb = two_versions
    assert cli("rm", "m@2", "--reason", "bad").rc == 0
    r = cli("snapshot", a, "--model", "m", "--json")
    assert r.rc == 0 and r.json()["version"] == "3", r
    r = cli("snapshot", a, "--model", "m", "--version", "2")
    assert r.rc == 4 and "m@2 was removed" in r.err and len(r.err.strip().splitlines()) == 1, r
    assert sorted(x["version"] for x in cli("log", "m", "--json").json()) == ["1", "3"]
    # a named label too, and the marker names the removal event (the store is the truth)
    assert cli("snapshot", b, "--model", "m", "--version", "rc1").rc == 0
    assert cli("rm", "m@rc1").rc == 0
    assert "m@rc1 was removed" in cli("snapshot", b, "--model", "m", "--version", "rc1").err
    assert vault.store.removed_labels("m") == {"2", "rc1"}
    assert cli("catalog", "rebuild").rc == 0
    rows = cli("sql", "SELECT version FROM version_removals ORDER BY 1", "--json").json()
    assert rows == [{"version": "2"}, {"version": "rc1"}]
