"""verify (structure / --read-data / --subset) and repair: what is detected, named, quarantined, healed."""

from __future__ import annotations

import json

import pytest
from conftest import toy_tensors, tree_files, write_model

from weightvault.archive import codecs
from weightvault.archive.repair import quarantine_key, repair


@pytest.fixture
def shared(tmp_path, vault):
    """Two models sharing tensors; returns (folder a, folder b, result a, result b)."""
    t = toy_tensors(0)
    a = write_model(tmp_path / "a", t)
    b = write_model(tmp_path / "b", dict(t, extra=t["encoder.layer.1.bias"] * 2))
    return a, b, vault.snapshot(a, "alpha"), vault.snapshot(b, "beta")


def _tensor_chunk(res, name):
    f = res.manifest.file("model.safetensors")
    t = next(t for t in f.tensors if t.name == name)
    return f.tensor_chunks(t)[0][0]


def _path(store_dir, cid):
    return store_dir / "chunks" / cid[:2] / cid


def test_flipped_byte_found_only_by_read_data_and_named_everywhere(shared, store_dir, cli):
    a, b, ra, rb = shared
    cid = _tensor_chunk(ra, "encoder.layer.2.weight")
    p = _path(store_dir, cid)
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x01  # one bit in the payload, header untouched
    p.write_bytes(bytes(data))
    fast = cli("verify", "--structure", "--json")
    assert fast.rc == 0 and fast.json()["mode"] == "structure"  # structure cannot see payload bits
    full = cli("verify", "--read-data", "--json")
    assert full.rc == 5
    rep = full.json()
    assert [d["chunk_id"] for d in rep["damaged"]] == [cid]
    uses = {(u["version"], u["file"], u["tensor"]) for u in rep["damaged"][0]["uses"]}
    assert uses == {("alpha@1", "model.safetensors", "encoder.layer.2.weight"),
                    ("beta@1", "model.safetensors", "encoder.layer.2.weight")}
    assert cli("verify", "--subset", "100", "--json").rc == 5
    one = cli("verify", "beta@1", "--read-data")
    assert one.rc == 5 and "beta@1 model.safetensors tensor encoder.layer.2.weight" in " ".join(one.out.split())
    r = cli("restore", "alpha@1", store_dir.parent / "out")
    assert r.rc == 5 and cid[:16] in r.err  # loud, never zero-filled


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong_raw_len", "garbage_header"])
def test_structure_check_finds_missing_and_broken_chunks(damage, shared, store_dir, cli):
    a, b, ra, rb = shared
    cid = _tensor_chunk(rb, "extra")
    p = _path(store_dir, cid)
    if damage == "missing":
        p.unlink()
    elif damage == "truncated":
        p.write_bytes(p.read_bytes()[:-7])
    elif damage == "wrong_raw_len":
        raw = b"\0" * 13
        p.write_bytes(codecs._container(codecs._meta(cid, 13, "raw"), {"data": raw}))
    else:
        p.write_bytes(b"\xff" * 64)
    r = cli("verify", "--structure", "--json")
    assert r.rc == 5, r
    d = r.json()["damaged"]
    assert [x["chunk_id"] for x in d] == [cid]
    assert d[0]["uses"] == [{"version": "beta@1", "file": "model.safetensors", "tensor": "extra"}]


def test_missing_manifest_names_the_version(shared, store_dir, cli):
    a, b, ra, rb = shared
    (store_dir / "manifests" / rb.manifest_id[:2] / rb.manifest_id).unlink()
    r = cli("verify", "--json")
    assert r.rc == 5 and r.json()["broken_versions"][0]["version"] == "beta@1"


def test_repair_reports_exact_losses_quarantines_and_heals(shared, vault, store_dir, cli, tmp_path):
    a, b, ra, rb = shared
    lost = _tensor_chunk(ra, "encoder.layer.3.weight")
    p = _path(store_dir, lost)
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    dry = cli("repair", "--dry-run", "--json")
    assert dry.rc == 5 and dry.json()["quarantined"] == [] and p.exists()
    human = cli("repair", "--dry-run")  # what a person reads: each loss, by version, file and tensor
    assert human.rc == 5 and "would quarantine 1 damaged chunks" in human.out, human
    assert "lost alpha@1 model.safetensors" in human.out and "encoder.layer.3.weight" in human.out, human
    r = cli("repair", "--json")
    assert r.rc == 5, r
    rep = r.json()
    assert rep["damaged_chunks"].keys() == {lost} and rep["quarantined"] == [lost]
    losses = {(x["version"], x["file"], tuple(x["tensors"])) for x in rep["losses"]}
    assert losses == {("alpha@1", "model.safetensors", ("encoder.layer.3.weight",)),
                      ("beta@1", "model.safetensors", ("encoder.layer.3.weight",))}
    assert rep["lost_bytes"] == 2 * dict(ra.manifest.file("model.safetensors").chunks)[lost]
    assert not p.exists() and vault.store.backend.has(quarantine_key(lost))
    rows = cli("sql", "SELECT version, path, tensors FROM version_damage ORDER BY version", "--json").json()
    assert rows == [{"version": "1", "path": "model.safetensors", "tensors": ["encoder.layer.3.weight"]}] * 2
    assert cli("restore", "alpha@1", tmp_path / "r1").rc == 5  # still loud: never zero-filled
    # Heal: snapshot the original files again; the chunk is stored afresh and both versions are whole.
    vault.snapshot(a, "alpha")
    assert cli("verify", "--read-data").rc == 0
    assert cli("restore", "beta@1", tmp_path / "r2").rc == 0 and tree_files(tmp_path / "r2") == tree_files(b)
    assert cli("repair", "--json").json()["clean"] is True


def test_repair_remove_damaged_lets_gc_run_again(shared, vault, store_dir, cli):
    a, b, ra, rb = shared
    gone = _tensor_chunk(rb, "extra")
    _path(store_dir, gone).unlink()
    assert cli("gc", "--grace", "0").rc == 5  # refuses: referenced data is missing
    r = cli("repair", "--remove-damaged", "--json")
    assert r.rc == 5 and r.json()["removed"] == ["beta@1"]
    assert cli("gc", "--grace", "0").rc == 0
    assert cli("verify", "--read-data").rc == 0
    rows = cli("sql", "SELECT version, reason FROM version_removals", "--json").json()
    assert rows == [{"version": "1", "reason": "repair: lost data"}]


def test_repair_blames_the_chunk_at_fault_not_an_intact_delta_above_it(vault, store_dir, cli, tmp_path, monkeypatch):
    """a@2 stores a tensor as a delta of a@1's chunk, and a bf16 copy stores it as a cast of that
    delta. With a@1's chunk gone, repair used to quarantine the intact delta too (it was the cast's
    direct base), so re-snapshotting a@1 no longer healed a@2 or the copy."""
    import numpy as np

    from weightvault.archive import codecs as cd
    from weightvault.archive import delta

    t = toy_tensors(0, width=256)
    a1 = write_model(tmp_path / "a1", t)
    ft = dict(t, **{"encoder.layer.0.weight": t["encoder.layer.0.weight"] + np.float32(1e-3)})
    a2 = write_model(tmp_path / "a2", ft)
    bf = write_model(tmp_path / "bf", {k: v.astype(np.float32) for k, v in ft.items()})
    r1, r2 = vault.snapshot(a1, "a"), vault.snapshot(a2, "a")
    name = "encoder.layer.0.weight"
    root, mid = _tensor_chunk(r1, name), _tensor_chunk(r2, name)
    assert cd.parse_container(vault.store.get_container(mid), mid).base == root  # stored as a delta
    import torch  # a real bf16 cast of a@2, archived against it
    from safetensors.torch import save_file
    save_file({k: torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v)
               for k, v in ft.items()}, str(bf / "model.safetensors"))
    r3 = vault.snapshot(bf, "abf", base_model="a@2", relation="cast")
    top = _tensor_chunk(r3, name)
    assert cd.parse_container(vault.store.get_container(top), top).base == mid  # a cast of the delta
    _path(store_dir, root).unlink()
    monkeypatch.setattr(delta, "BASES", delta.BaseCache())  # as in a new process: nothing decoded yet
    rep = cli("repair", "--json").json()
    assert rep["damaged_chunks"] == {root: "missing"} and rep["quarantined"] == []
    assert {x["version"] for x in rep["losses"]} == {"a@1", "a@2", "abf@1"}
    assert _path(store_dir, mid).exists()
    vault.snapshot(a1, "a")  # heal: re-store the lost bytes
    assert cli("verify", "--read-data").rc == 0
    assert cli("restore", "abf@1", tmp_path / "o").rc == 0 and tree_files(tmp_path / "o") == tree_files(bf)


def test_snapshot_stores_again_a_chunk_whose_container_is_damaged(shared, vault, store_dir, cli, tmp_path):
    """Snapshot only checked that a chunk's file existed before reusing it: after a truncation, a
    snapshot of the same files said "archived" and its version could not be restored. A container
    that cannot hold its bytes is now stored again from the bytes at hand, which heals every
    version using it."""
    a, b, ra, rb = shared
    cid = _tensor_chunk(ra, "encoder.layer.3.weight")
    p = _path(store_dir, cid)
    p.chmod(0o644)
    p.write_bytes(p.read_bytes()[:100])
    assert cli("restore", "beta@1", tmp_path / "before").rc == 5
    r = cli("snapshot", a, "--model", "alpha", "--json")
    assert r.rc == 0 and r.json()["healed_chunks"] == [cid], r
    r = cli("snapshot", a, "--model", "alpha")  # healed once: nothing left to heal
    assert r.rc == 0 and "healed" not in r.out, r
    assert cli("verify", "--read-data").rc == 0
    for ref, src in (("alpha@2", a), ("beta@1", b)):
        assert cli("restore", ref, tmp_path / ref).rc == 0 and tree_files(tmp_path / ref) == tree_files(src)
    stored = vault.sql("SELECT stored_bytes FROM chunks WHERE chunk_id = ?", [cid])[1]
    assert stored == [(p.stat().st_size,)]  # the catalog follows the new container


def test_one_unreadable_ref_is_listed_not_fatal(vault, toy_model, tmp_path, cli, store_dir):
    """A ref garbled by a disk fault used to stop every listing, verify, repair, rm and rebuild
    (and the hint sent the user to verify, which failed the same way)."""
    vault.snapshot(toy_model, "a")
    vault.snapshot(toy_model, "b")
    (store_dir / "refs" / "b" / "1").write_text("garbage")
    r = cli("log", "--json")
    assert r.rc == 0 and [m["model"] for m in r.json()] == ["a"], r
    assert "refs/b/1 is unreadable" in r.err and "weightvault rm b@1" in r.err, r
    r = cli("verify", "--json")
    assert r.rc == 5 and r.json()["broken_versions"][0]["version"] == "b@1", r
    assert cli("catalog", "rebuild").rc == 0
    assert cli("restore", "a@1", tmp_path / "out").rc == 0
    # the next snapshot of b takes the next number (it looped for ever, writing a manifest per turn)
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "weightvault", "--store", str(store_dir), "snapshot", str(toy_model),
                        "--model", "b", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == "2", r
    assert len([p for p in (store_dir / "manifests").rglob("*") if p.is_file()]) <= 3
    r = cli("gc", "--grace", "0")  # gc cannot know what the ref named: it refuses, deleting nothing
    assert r.rc == 5 and "refs/b/1" in r.err and "weightvault rm" in r.err, r
    r = cli("rm", "b@1", "--reason", "disk fault")
    assert r.rc == 0, r
    assert cli("verify").rc == 0 and cli("gc", "--grace", "0").rc == 0
    rows = cli("sql", "SELECT model, version, reason FROM version_removals", "--json").json()
    assert rows == [{"model": "b", "version": "1", "reason": "disk fault"}]
    assert cli("restore", "b@2", tmp_path / "b2").rc == 0
