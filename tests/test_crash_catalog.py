"""A damaged, missing or half-written catalog (including a corrupt DuckDB WAL) is rebuilt from the store.

The WAL cases are real: a snapshot process is SIGKILLed after its catalog
transaction committed to the WAL and before the checkpoint, so the WAL holds
un-checkpointed commits; the test then truncates or garbles that WAL. Every
case must answer queries correctly on the next command and on every command
after it (never a crash loop).
"""

from __future__ import annotations

import pytest
from crash_harness import make_store, run_cli
from conftest import toy_tensors, write_model

from weightvault.vault import Vault


def _count(store, cli_):
    r = cli_("sql", "SELECT count(*) AS n FROM versions", "--json", store=store)
    assert r.rc == 0, r
    return r.json()[0]["n"], r.err


@pytest.fixture
def wal_store(tmp_path):
    store = make_store(tmp_path / "store")
    for i in range(2):
        src = write_model(tmp_path / f"src{i}", toy_tensors(seed=i, layers=1))
        Vault.open(store).snapshot(src, "m")
    src = write_model(tmp_path / "src-wal", toy_tensors(seed=9, layers=1))
    res = run_cli(store, "snapshot", src, "--model", "m", kill_after=1, sites="catalog.checkpoint")
    assert res.returncode in (-9, 137), res.stderr
    wal = store / "catalog.duckdb.wal"
    assert wal.exists() and wal.stat().st_size > 0
    return store, wal


@pytest.mark.parametrize("damage", ["intact", "truncated", "garbled", "zeroed_tail", "deleted"])
def test_corrupt_wal_is_recovered_without_loss(damage, wal_store, cli):
    store, wal = wal_store
    data = wal.read_bytes()
    if damage == "truncated":
        wal.write_bytes(data[: len(data) // 2])
    elif damage == "garbled":
        mid = len(data) // 3
        wal.write_bytes(data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 64]) + data[mid + 64 :])
    elif damage == "zeroed_tail":
        wal.write_bytes(data[:64] + b"\0" * (len(data) - 64))
    elif damage == "deleted":
        wal.unlink()
    for _ in range(3):  # the first run recovers; the next ones must not loop
        n, err = _count(store, cli)
        assert n == 3  # all three refs, whatever the WAL held
    assert cli("verify", store=store).rc == 0


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "missing", "directory"])
def test_damaged_catalog_file_is_quarantined_and_rebuilt(damage, tmp_path, cli):
    store = make_store(tmp_path / "store")
    Vault.open(store).snapshot(write_model(tmp_path / "src", toy_tensors(seed=1, layers=1)), "m")
    db = store / "catalog.duckdb"
    if damage == "garbage":
        db.write_bytes(b"this is not a duckdb file " * 1000)
    elif damage == "empty":
        db.write_bytes(b"")
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[:5000])
    elif damage == "missing":
        db.unlink()
    else:
        db.unlink()
        db.mkdir()
    n, err = _count(store, cli)
    assert n == 1
    if damage not in ("missing",):
        assert "rebuilding from the store" in err or damage == "empty"
    n, err2 = _count(store, cli)
    assert n == 1 and "rebuilding" not in err2  # recovered once, not every time
