"""Disk full: a clear ENOSPC error, a consistent store, and the next snapshot succeeds once space is free.

Two ways to fill the disk: a real 20 MiB tmpfs (needs root and mount; skipped
otherwise) and an ENOSPC injected at the backend's write point
(archive/faults.py), which runs everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from crash_harness import check_consistent
from conftest import store_snapshot_state, toy_tensors, tree_files, write_model

from weightvault.archive import faults
from weightvault.errors import DiskFullError


def _noise_model(folder, mib, seed):
    rng = np.random.default_rng(seed)
    n = mib * (1 << 20) // 4
    return write_model(folder, {"w": rng.standard_normal(n).astype(np.float32)})


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a size-limited tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_filesystem(small_fs, tmp_path, cli):
    store = small_fs / "store"
    small = write_model(tmp_path / "small", toy_tensors(0))
    assert cli("snapshot", small, "--model", "keep", store=store).rc == 0
    big = _noise_model(tmp_path / "big", 24, 1)  # random floats barely compress: does not fit
    r = cli("snapshot", big, "--model", "big", store=store)
    assert r.rc == DiskFullError.exit_code and "ENOSPC" in r.err, r
    assert check_consistent(store) == []
    assert cli("log", "big", store=store).rc != 0  # the failed version is not visible
    # gc runs on the full disk and frees the failed snapshot's orphan chunks
    g = cli("gc", "--grace", "0", "--json", store=store)
    assert g.rc == 0 and g.json()["freed_bytes"] > 0, g
    medium = _noise_model(tmp_path / "medium", 6, 2)
    assert cli("snapshot", medium, "--model", "medium", store=store).rc == 0
    for ref, src in (("keep@1", small), ("medium@1", medium)):
        out = tmp_path / f"out-{ref}"
        assert cli("restore", ref, out, store=store).rc == 0
        assert tree_files(out) == tree_files(src)


@pytest.mark.parametrize("at_put", [1, 4, 9])
def test_injected_enospc_leaves_a_consistent_store(at_put, vault, store_dir, tmp_path, cli):
    first = write_model(tmp_path / "first", toy_tensors(0))
    vault.snapshot(first, "m")
    before = store_snapshot_state(store_dir)
    second = write_model(tmp_path / "second", toy_tensors(5))
    faults.arm(enospc_after=at_put, sites=["put"])
    try:
        r = cli("snapshot", second, "--model", "m")
    finally:
        faults.arm()
    assert r.rc == DiskFullError.exit_code and "no space left" in r.err, r
    assert check_consistent(store_dir) == []
    assert [x.version for x in vault.store.list_refs()] == ["1"]
    assert set(store_snapshot_state(store_dir)) >= set(before)
    assert cli("snapshot", second, "--model", "m").rc == 0  # space back: the next snapshot succeeds
    out = tmp_path / "out"
    assert cli("restore", "m@2", out).rc == 0 and tree_files(out) == tree_files(second)


def test_a_full_disk_after_the_commit_says_the_version_is_archived(vault, store_dir, tmp_path, cli):
    """ENOSPC while indexing, after the ref exists, said "free some space, then rerun": the rerun
    archived the version a second time. The error now says it is archived and not to redo it."""
    first = write_model(tmp_path / "first", toy_tensors(0))
    faults.arm(enospc_after=1, sites=["catalog.commit"])
    try:
        r = cli("snapshot", first, "--model", "m")
    finally:
        faults.arm()
    assert r.rc == DiskFullError.exit_code, r
    assert "m@1 is archived, but the catalog could not be updated" in r.err and "do not snapshot it again" in r.err
    assert [x.version for x in vault.store.list_refs("m")] == ["1"]
    assert check_consistent(store_dir) == []
    rows = cli("sql", "SELECT model, version FROM versions", "--json")  # the next command catches up
    assert rows.rc == 0 and rows.json() == [{"model": "m", "version": "1"}], rows


def test_a_restore_onto_a_full_disk_says_to_finish_with_force(small_fs, tmp_path, cli):
    """The rerun the hint asked for was refused ("already exists"): the hint names --force."""
    store = tmp_path / "store"
    big = _noise_model(tmp_path / "big", 24, 3)  # 24 MiB of noise does not fit the 20 MiB file system
    assert cli("snapshot", big, "--model", "big", store=store).rc == 0
    r = cli("restore", "big@1", small_fs / "r", store=store)
    assert r.rc == DiskFullError.exit_code and "--force" in r.err and len(r.err.strip().splitlines()) == 1, r
    assert not [p for p in (small_fs / "r").rglob("*") if p.name.startswith(".wv-")]
