"""Store-wide and catalog locks.

``flock`` on a lock file: shared for snapshot, restore and queries, exclusive
for gc, catalog rebuild and migrations. The kernel drops a dead process's
lock, so a crashed holder never blocks anyone; a holder record beside the
lock (host, pid, what, since) lets a waiter name who it waits for, and
records of dead pids on this host are swept as stale.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from weightvault.errors import LockBusyError

DEFAULT_TIMEOUT = float(os.environ.get("WEIGHTVAULT_LOCK_TIMEOUT", "600"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """A shared/exclusive lock on ``path``, re-entrant per process and mode."""

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.what = what
        self.holders = self.path.with_name(self.path.name + ".holders")
        self._fd: int | None = None
        self._depth = 0
        self._mode: int | None = None
        self._record: Path | None = None

    def _describe_holders(self) -> str:
        host = socket.gethostname()
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockBusyError(self.what, self._describe_holders()) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
        self._fd, self._mode, self._depth = fd, mode, 1
        self._write_record(op or ("shared" if shared else "exclusive"))

    def _write_record(self, op: str) -> None:
        try:
            self.holders.mkdir(exist_ok=True)
            rec = self.holders / f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
            rec.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "op": op, "since": time.time()}))
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
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = self._mode = None

    @contextmanager
    def held(self, *, shared: bool, timeout: float | None = None, op: str = ""):
        self.acquire(shared=shared, timeout=timeout, op=op)
        try:
            yield self
        finally:
            self.release()
