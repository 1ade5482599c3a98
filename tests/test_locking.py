"""Store and catalog locks between real processes: holders are named, dead holders never block,
writers are not starved by a stream of readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from weightvault.archive.locking import FileLock
from weightvault.errors import LockBusyError

HOLD = textwrap.dedent("""
    import sys, time, pathlib
    from weightvault.archive.locking import FileLock
    path, mode, op, ready = sys.argv[1:5]
    lock = FileLock(path, "test lock", writer_priority=True)
    lock.acquire(shared=(mode == "shared"), op=op, timeout=30)
    pathlib.Path(ready).touch()
    time.sleep(60)
""")

READ_LOOP = textwrap.dedent("""
    import sys, time, os
    from weightvault.archive.locking import FileLock
    path, stop, offset = sys.argv[1], sys.argv[2], float(sys.argv[3])
    lock = FileLock(path, "catalog", writer_priority=True)
    time.sleep(offset)
    while not os.path.exists(stop):
        with lock.held(shared=True, op="reader", timeout=60):
            time.sleep(0.1)
""")


def _hold(tmp_path, path, mode, op):
    ready = tmp_path / f"ready-{op}"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode, op, str(ready)])
    for _ in range(300):
        if ready.exists():
            return p
        time.sleep(0.05)
    p.kill()
    raise AssertionError("holder did not start")


def test_busy_lock_names_its_holder_and_a_killed_holder_frees_it(tmp_path):
    path = tmp_path / "locks" / "store.lock"
    p = _hold(tmp_path, path, "exclusive", "gc")
    try:
        with pytest.raises(LockBusyError) as e:
            FileLock(path, "store").acquire(shared=True, timeout=0.3)
        assert f"gc (pid {p.pid}" in str(e.value)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    lock = FileLock(path, "store")
    lock.acquire(shared=False, timeout=2)  # the kernel dropped the dead holder's flock
    lock.release()
    assert not any(str(p.pid) in r.name for r in (path.parent / "store.lock.holders").iterdir())


def test_dead_pid_records_are_swept_and_not_named(tmp_path):
    path = tmp_path / "locks" / "store.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    holders = path.with_name("store.lock.holders")
    holders.mkdir(parents=True)
    import socket

    rec = holders / f"{socket.gethostname()}-{dead_pid}-0"
    rec.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid, "op": "crashed", "since": 0}))
    p = _hold(tmp_path, path, "exclusive", "rebuild")
    try:
        with pytest.raises(LockBusyError) as e:
            FileLock(path, "store").acquire(shared=True, timeout=0.2)
        assert "rebuild" in str(e.value) and "crashed" not in str(e.value)
        assert not rec.exists()
    finally:
        p.kill()
        p.wait()


def test_a_dead_writers_announcement_does_not_block_readers(tmp_path):
    path = tmp_path / "locks" / "catalog.lock"
    reader = _hold(tmp_path, path, "shared", "reader")
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "exclusive", "writer", str(tmp_path / "w")])
    try:
        for _ in range(1200):  # the writer announces itself and waits behind the reader (60 s on a loaded machine)
            if list((path.parent / "catalog.lock.writers").glob("*")):
                break
            time.sleep(0.05)
        with pytest.raises(LockBusyError):
            FileLock(path, "catalog", writer_priority=True).acquire(shared=True, timeout=0.3)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        lock = FileLock(path, "catalog", writer_priority=True)
        lock.acquire(shared=True, timeout=5)  # the dead announcement is ignored and removed
        lock.release()
    finally:
        for p in (reader, writer):
            p.kill()
            p.wait()


def test_a_writer_gets_in_between_overlapping_readers(tmp_path):
    path = tmp_path / "locks" / "catalog.lock"
    path.parent.mkdir()
    stop = tmp_path / "stop"
    readers = [subprocess.Popen([sys.executable, "-c", READ_LOOP, str(path), str(stop), str(off)])
               for off in (0.0, 0.05, 0.07)]
    try:
        time.sleep(1.0)  # the readers' holds now overlap continuously
        lock = FileLock(path, "catalog", writer_priority=True)
        lock.acquire(shared=False, timeout=20, op="writer")
        lock.release()
    finally:
        stop.touch()
        for p in readers:
            p.wait(timeout=30)
    assert all(p.returncode == 0 for p in readers)
    assert not os.path.exists(path.with_name("catalog.lock.writers")) or \
        not list(path.with_name("catalog.lock.writers").iterdir())


@pytest.fixture
def read_only_view(tmp_path):
    """mount(8) a read-only bind view of a folder: what an archive on read-only media looks like.
    Needs root (CI runs the suite as root in a container); skipped elsewhere."""
    made = []

    def view(src):
        dst = tmp_path / f"ro-{len(made)}"
        dst.mkdir()
        for cmd in (["mount", "--bind", str(src), str(dst)], ["mount", "-o", "remount,bind,ro", str(dst)]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                subprocess.run(["umount", str(dst)], capture_output=True)
                pytest.skip(f"cannot make a read-only bind mount here: {r.stderr.strip()}")
        made.append(dst)
        return dst

    yield view
    for d in made:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_a_store_on_a_read_only_file_system_can_be_read(tmp_path, read_only_view):
    """Every command, restore included, took its lock by opening the lock file for writing, so a
    store on read-only media could not be read at all."""
    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import toy_tensors, tree_files, write_model
    from weightvault.errors import StoreReadOnlyError
    from weightvault.vault import Vault

    store = tmp_path / "store"
    v = Vault.init(store)
    src = write_model(tmp_path / "m", toy_tensors())
    v.snapshot(src, "toy")
    v.snapshot(src, "toy")
    (store / "catalog.duckdb").unlink()  # and a catalog that lags the store: synced into a temp copy
    ro = read_only_view(store)
    r = Vault.open(ro, create=False)
    r.restore("toy@2", tmp_path / "out")
    assert tree_files(tmp_path / "out") == tree_files(src)
    assert r.sql("SELECT model, version FROM versions ORDER BY version")[1] == [("toy", "1"), ("toy", "2")]
    assert r.verify("toy@1").ok
    with pytest.raises(StoreReadOnlyError):
        from weightvault.archive.gc import collect
        collect(r.store, grace_s=0)
    assert not (store / "catalog.duckdb").exists()  # nothing was written to the store
