"""Store-wide and catalog locks.

``flock`` on a lock file: shared for snapshot, restore and queries, exclusive
for gc, catalog rebuild and migrations. The kernel drops a dead process's
lock, so a crashed holder never blocks anyone; a holder record beside the
lock (host, pid, what, since) lets a waiter name who it waits for, and
records of dead pids on this host are swept as stale.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from weightvault.errors import LockBusyError, StoreReadOnlyError


def hostname() -> str:
    """This machine's name, what socket.gethostname() returns, without importing socket (5 ms)."""
    try:
        return os.uname().nodename
    except AttributeError:  # no uname (Windows)
        import socket

        return socket.gethostname()


DEFAULT_TIMEOUT = float(os.environ.get("WEIGHTVAULT_LOCK_TIMEOUT", "600"))
# A record older than this is stale even when its pid cannot be checked (another host):
# no weightvault operation waits for or holds a catalog lock this long.
STALE_AFTER_S = float(os.environ.get("WEIGHTVAULT_LOCK_STALE_S", "3600"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """What every store lock offers: acquire/release and a ``held`` context."""

    def acquire(self, *, shared: bool, timeout: float | None = None, op: str = "") -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Raise LeaseLostError if the lock this process holds may have been taken from it (a
        lease that ran out). Writers call it before they commit or delete. A flock cannot be
        lost while its file descriptor is open: nothing to check."""

    @contextmanager
    def held(self, *, shared: bool, timeout: float | None = None, op: str = ""):
        self.acquire(shared=shared, timeout=timeout, op=op)
        try:
            yield self
        finally:
            self.release()


class FileLock(Lock):
    """A shared/exclusive lock on ``path``, re-entrant per process and mode."""

    def __init__(self, path: str | os.PathLike, what: str, *, writer_priority: bool = False):
        self.path = Path(path)
        self.what = what
        self.holders = self.path.with_name(self.path.name + ".holders")
        # With writer priority an exclusive waiter announces itself and new shared holders
        # wait behind it: a loop of short readers can otherwise starve a writer forever
        # (flock has no queue). Used for the catalog lock, whose holds are all short.
        self.writer_priority = writer_priority
        self.waiting = self.path.with_name(self.path.name + ".writers")
        self._fd: int | None = None
        self._depth = 0
        self._mode: int | None = None
        self._record: Path | None = None

    def _describe_holders(self) -> str:
        host = hostname()
        names = []
        if self.holders.is_dir():
            for p in self.holders.iterdir():
                try:
                    rec = json.loads(p.read_text())
                except (OSError, ValueError):
                    continue
                if rec.get("host") == host and not _pid_alive(int(rec.get("pid", 0))):
                    p.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                age = time.time() - rec.get("since", time.time())
                names.append(f"{rec.get('op', '?')} (pid {rec.get('pid')} on {rec.get('host')}, {age:.0f}s)")
        return ", ".join(names) or "another process"

    def acquire(self, *, shared: bool, timeout: float | None = None, op: str = "") -> None:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if self._depth:
            if mode == fcntl.LOCK_EX and self._mode == fcntl.LOCK_SH:
                raise RuntimeError(f"cannot upgrade the {self.what} lock from shared to exclusive")
            self._depth += 1
            return
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno != errno.EROFS:
                raise
            if not shared:
                raise StoreReadOnlyError(str(self.path.parent.parent), op) from None
            # A read-only file system: no process can change the store, so a reader needs no lock
            # (an archive on read-only media, a read-only snapshot or bind mount).
            self._fd, self._mode, self._depth = None, mode, 1
            return
        deadline = time.monotonic() + timeout
        delay = 0.005
        intent = self._announce(op) if self.writer_priority and not shared else None
        try:
            while True:
                try:
                    if shared and self.writer_priority and self._writer_waiting():
                        raise BlockingIOError
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        raise LockBusyError(self.what, self._describe_holders()) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.25 if intent is None else 0.02)
        finally:
            if intent is not None:
                intent.unlink(missing_ok=True)
        self._fd, self._mode, self._depth = fd, mode, 1
        if not shared:
            self._sweep_records()  # we hold it alone: every other holder record is stale
        self._write_record(op or ("shared" if shared else "exclusive"))

    def _sweep_records(self) -> None:
        try:
            for p in self.holders.iterdir():
                p.unlink(missing_ok=True)
        except OSError:
            pass

    def _announce(self, op: str) -> Path | None:
        try:
            self.waiting.mkdir(exist_ok=True)
            p = self.waiting / f"{hostname()}-{os.getpid()}-{id(self):x}"
            p.write_text(json.dumps({"host": hostname(), "pid": os.getpid(), "op": op,
                                     "since": time.time()}))
            return p
        except OSError:
            return None  # advisory, like the holder records

    def _writer_waiting(self) -> bool:
        """True when a live process waits for this lock exclusively (stale announcements are removed)."""
        try:
            entries = list(self.waiting.iterdir())
        except FileNotFoundError:
            return False
        host, now = hostname(), time.time()
        for p in entries:
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            mine = rec.get("pid") == os.getpid() and rec.get("host") == host
            dead = rec.get("host") == host and not _pid_alive(int(rec.get("pid", 0)))
            if dead or now - rec.get("since", now) > STALE_AFTER_S:
                p.unlink(missing_ok=True)
            elif not mine:
                return True
        return False

    def _write_record(self, op: str) -> None:
        try:
            self.holders.mkdir(exist_ok=True)
            rec = self.holders / f"{hostname()}-{os.getpid()}-{id(self):x}"
            rec.write_text(json.dumps({"host": hostname(), "pid": os.getpid(), "op": op, "since": time.time()}))
            self._record = rec
        except OSError:
            self._record = None  # the record is advisory; the flock is the lock

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth:
            return
        if self._record is not None:
            self._record.unlink(missing_ok=True)
            self._record = None
        if self._fd is not None:  # None: a read on a read-only file system, which took no lock
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = self._mode = None
