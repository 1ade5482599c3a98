"""LocalBackend's write-behind chunks keep the durability contract (archive/backend.py).

A chunk put returns before its fsync; these tests check what must still
hold: the chunk is readable at once, it never appears under its final name
before it was fsynced, every other put waits for all chunks (write order), a
lost race is reported, and a failure surfaces instead of vanishing.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from weightvault.archive import backend as backend_mod
from weightvault.archive import faults
from weightvault.archive.backend import LocalBackend
from weightvault.errors import DiskFullError


def key(i: int) -> str:
    h = f"{i:064x}"
    return f"chunks/{h[:2]}/{h}"


def test_a_chunk_put_is_readable_before_flush_and_durable_after(tmp_path):
    b = LocalBackend(tmp_path)
    assert b.put(key(1), b"one", exclusive=True)
    assert b.has(key(1)) and b.get(key(1)) == b"one"
    assert b.flush() == set()
    assert (tmp_path / key(1)).read_bytes() == b"one"
    assert not list((tmp_path / "tmp").iterdir())


def test_a_second_put_of_the_same_chunk_is_refused(tmp_path):
    b = LocalBackend(tmp_path)
    assert b.put(key(2), b"x", exclusive=True)
    assert not b.put(key(2), b"x", exclusive=True)  # still pending
    b.flush()
    assert not b.put(key(2), b"x", exclusive=True)  # on disk


def test_every_other_put_waits_for_pending_chunks(tmp_path, monkeypatch):
    """The manifest (any non-chunk key) is written only once every chunk has its final name."""
    b = LocalBackend(tmp_path)
    gate = threading.Event()
    settle = b._settle

    def slow_settle(*a):
        gate.wait(5)
        return settle(*a)

    monkeypatch.setattr(b, "_settle", slow_settle)
    for i in range(5):
        b.put(key(10 + i), b"c%d" % i, exclusive=True)
    assert not (tmp_path / key(10)).exists()  # not fsynced yet: no final name
    threading.Timer(0.2, gate.set).start()
    b.put("manifests/ab/abcd", b"{}", exclusive=True)
    assert all((tmp_path / key(10 + i)).exists() for i in range(5))
    assert not b._pending


def test_a_race_lost_to_another_writer_is_reported(tmp_path):
    a, b = LocalBackend(tmp_path), LocalBackend(tmp_path)
    gate = threading.Event()
    settle = a._settle

    def slow_settle(*args):
        gate.wait(5)
        return settle(*args)

    a._settle = slow_settle
    assert a.put(key(3), b"same", exclusive=True)  # pending in a
    assert b.put(key(3), b"same", exclusive=True)  # b cannot see it yet
    assert b.flush() == set()
    gate.set()
    assert a.flush() == {key(3)}
    assert (tmp_path / key(3)).read_bytes() == b"same"


def test_a_failed_fsync_surfaces_at_flush_and_names_no_final_file(tmp_path, monkeypatch):
    b = LocalBackend(tmp_path)
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backend_mod.os, "fsync", full)
    b.put(key(4), b"data", exclusive=True)
    with pytest.raises(DiskFullError):
        b.flush()
    monkeypatch.setattr(backend_mod.os, "fsync", real)
    assert not (tmp_path / key(4)).exists()
    assert not list((tmp_path / "tmp").iterdir())  # the temp file is cleaned up
    assert b.flush() == set()  # the error was reported once


def test_fault_point_between_fsync_and_name_still_fires(tmp_path):
    """Crash tests arm ``put.rename``; with write-behind it runs on the settle thread."""
    b = LocalBackend(tmp_path)
    faults.arm(enospc_after=1, sites=["put.rename"])
    try:
        b.put(key(5), b"data", exclusive=True)
        with pytest.raises(DiskFullError):
            b.flush()
    finally:
        faults.arm()
    assert not (tmp_path / key(5)).exists()


def test_without_fsync_chunks_are_written_in_place(tmp_path):
    b = LocalBackend(tmp_path, fsync=False)
    b.put(key(6), b"data", exclusive=True)
    assert not b._pending and (tmp_path / key(6)).read_bytes() == b"data"


def test_a_process_that_never_flushes_still_names_its_chunks_before_exit(tmp_path):
    import subprocess
    import sys

    code = ("from weightvault.archive.backend import LocalBackend\n"
            f"b = LocalBackend({str(tmp_path)!r})\n"
            f"assert b.put({key(7)!r}, b'late', exclusive=True)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / key(7)).read_bytes() == b"late"
    assert not list((tmp_path / "tmp").iterdir())
