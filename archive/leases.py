"""LeaseLock: the store-wide shared/exclusive lock for stores with no flock (object storage).

Same interface as :class:`weightvault.archive.locking.FileLock` (``acquire``,
``release``, ``held``), built from objects under ``locks/`` that carry a
lease (an expiry time), written with conditional PUTs:

- exclusive (gc, catalog rebuild): claim ``locks/exclusive`` with
  ``If-None-Match: *`` (exactly one claimant wins), then wait until no
  unexpired shared lease remains;
- shared (snapshot, restore, verify): write ``locks/shared/<token>``, then
  check that no unexpired exclusive claim exists (else withdraw and wait).
  Either order of two racing clients ends with one waiting: the writer of a
  shared lease re-checks after writing it, the exclusive claimant checks after
  claiming.

A holder renews its lease every ``ttl/3`` seconds from a daemon thread, so a
long snapshot keeps it; a crashed holder's lease runs out after ``ttl``
seconds and waiters then remove it as stale. Waiters name the holders (op,
host, pid, age) when they give up.

A holder that was paused past its lease (suspend, SIGSTOP, a VM freeze) may
have been treated as stale and its lock taken by another machine meanwhile:
its renewer then stops renewing (it never re-creates a lease that ran out or
was removed), and :meth:`LeaseLock.check`, which writers call before they
commit a version or delete an object, raises LeaseLostError.
"""

from __future__ import annotations

import json
import os
import threading
import time

from weightvault.archive.backend import Backend
from weightvault.archive.locking import Lock, hostname

from weightvault.errors import LeaseLostError, LockBusyError

DEFAULT_TTL = float(os.environ.get("WEIGHTVAULT_LEASE_TTL", "60"))
SETTLE_S = 1.0  # how long an exclusive claim must survive before it counts (see LeaseLock._settled)
VERIFY_S = 2.0  # how often check() reads an exclusive claim back
EXCLUSIVE_KEY = "locks/exclusive"
SHARED_PREFIX = "locks/shared/"


class LeaseLock(Lock):
    """A shared/exclusive lease lock on a backend, re-entrant per object and mode.

    >>> # with LeaseLock(backend, "store s3://b/p").held(shared=False, op="gc"): ...
    """

    def __init__(self, backend: Backend, what: str, *, ttl: float = DEFAULT_TTL):
        self.backend = backend
        self.what = what
        self.ttl = ttl
        self._key: str | None = None
        self._shared: bool | None = None
        self._depth = 0
        self._body: dict = {}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._guard = threading.Lock()
        self._acquiring = threading.Lock()
        self._lost = False  # the renewer found the lease expired or gone: see check()
        self._verified_at = 0.0  # when check() last read an exclusive claim back (monotonic)

    # -- records ---------------------------------------------------------------

    def _record(self, op: str) -> dict:
        now = time.time()
        return {"host": hostname(), "pid": os.getpid(), "op": op, "since": now,
                "expires": now + self.ttl, "token": os.urandom(8).hex()}

    def _read(self, key: str) -> dict | None:
        try:
            return json.loads(self.backend.get(key))
        except FileNotFoundError:
            return None
        except ValueError:
            return {"expires": 0}  # unreadable: treat as stale

    def _live_exclusive(self) -> dict | None:
        rec = self._read(EXCLUSIVE_KEY)
        if rec is None:
            return None
        if rec.get("expires", 0) < time.time():
            self.backend.delete(EXCLUSIVE_KEY)  # stale: its holder stopped renewing
            return None
        return rec

    def _live_shared(self, mine: str | None = None) -> list[dict]:
        out = []
        for info in self.backend.list(SHARED_PREFIX):
            if info.key == mine:
                continue
            rec = self._read(info.key)
            if rec is None:
                continue
            if rec.get("expires", 0) < time.time():
                self.backend.delete(info.key)
                continue
            out.append(rec)
        return out

    @staticmethod
    def _describe(recs) -> str:
        now = time.time()
        return ", ".join(f"{r.get('op', '?')} (pid {r.get('pid')} on {r.get('host')}, {now - r.get('since', now):.0f}s)"
                         for r in recs) or "another process"

    # -- acquire / release -----------------------------------------------------

    def acquire(self, *, shared: bool, timeout: float | None = None, op: str = "") -> None:
        from weightvault.archive.locking import DEFAULT_TIMEOUT

        with self._acquiring:  # threads sharing this object take the lease once, then count
            with self._guard:
                if self._depth:
                    if not shared and self._shared:
                        raise RuntimeError(f"cannot upgrade the {self.what} lock from shared to exclusive")
                    self._depth += 1
                    return
            deadline = time.monotonic() + (DEFAULT_TIMEOUT if timeout is None else timeout)
            rec = self._record(op or ("shared" if shared else "exclusive"))
            key = self._acquire_shared(rec, deadline) if shared else self._acquire_exclusive(rec, deadline)
            with self._guard:
                self._key, self._shared, self._depth, self._body = key, shared, 1, rec
                self._lost = False
            self._start_renewer()

    def check(self) -> None:
        with self._guard:
            if not self._depth:
                return
            late = time.time() - self._body.get("expires", float("inf"))
            if self._lost or late > 0:
                raise LeaseLostError(self.what, self._body.get("op", ""), max(late, 0.0))
            exclusive, key = not self._shared, self._key
        # An exclusive claim can also be deleted under its holder by a waiter cleaning up a stale
        # claim long after reading it (see _settled): read it again, at most every VERIFY_S, so
        # gc, which checks before each delete, stops within seconds instead of at the next renewal.
        if exclusive and time.monotonic() - self._verified_at >= VERIFY_S:
            rec = self._read(key)
            if rec is None or rec.get("token") != self._body.get("token"):
                self._lost = True
                raise LeaseLostError(self.what, self._body.get("op", ""), None)
            self._verified_at = time.monotonic()

    def _still_mine(self) -> bool:
        """The lease has not run out and its object is still ours (not removed as stale)."""
        if time.time() > self._body.get("expires", 0):
            return False
        rec = self._read(self._key)
        return rec is not None and rec.get("token") == self._body.get("token")

    def _wait(self, deadline: float, delay: float, holders) -> float:
        if time.monotonic() >= deadline:
            raise LockBusyError(self.what, self._describe(holders))
        time.sleep(delay)
        return min(delay * 2, 2.0)

    def _acquire_shared(self, rec: dict, deadline: float) -> str:
        key = f"{SHARED_PREFIX}{rec['host']}-{rec['pid']}-{rec['token']}"
        delay = 0.05
        while True:
            ex = self._live_exclusive()
            if ex is None:
                self.backend.put(key, json.dumps(rec).encode())
                ex = self._live_exclusive()  # an exclusive claim may have landed meanwhile
                if ex is None:
                    return key
                self.backend.delete(key)
            delay = self._wait(deadline, delay, [ex])

    def _acquire_exclusive(self, rec: dict, deadline: float) -> str:
        delay = 0.05
        while True:
            if self.backend.put(EXCLUSIVE_KEY, json.dumps(rec).encode(), exclusive=True) and self._settled(rec):
                break
            ex = self._live_exclusive()
            if ex is not None:
                delay = self._wait(deadline, delay, [ex])
        # Claimed: new shared holders now back off; wait for the current ones to finish.
        delay = 0.05
        try:
            while True:
                holders = self._live_shared()
                if not holders:
                    return EXCLUSIVE_KEY
                self._renew_now(EXCLUSIVE_KEY, rec)
                delay = self._wait(deadline, delay, holders)
        except BaseException:
            self.backend.delete(EXCLUSIVE_KEY)
            raise

    def _settled(self, rec: dict) -> bool:
        """A claim just won is still ours after a moment. Two waiters can read the same expired
        claim and both delete it (object storage has no conditional DELETE): the second delete
        may land on the claim the first one made after it. Such a delete follows its read within
        a request or two, so after ``SETTLE_S`` the claim is either still ours or gone/replaced,
        and then the waiting goes on (never deleting a claim that is not stale)."""
        time.sleep(min(SETTLE_S, self.ttl / 10))
        now = self._read(EXCLUSIVE_KEY)
        return now is not None and now.get("token") == rec["token"]

    def _renew_now(self, key: str, rec: dict) -> None:
        new = dict(rec, expires=time.time() + self.ttl)
        self.backend.put(key, json.dumps(new).encode())
        rec["expires"] = new["expires"]  # only once the store has it: check() trusts this time

    def _start_renewer(self) -> None:
        self._stop.clear()

        def loop():
            while not self._stop.wait(self.ttl / 3):
                try:
                    if not self._still_mine():  # ran out or removed: others may hold the lock now
                        self._lost = True
                        return
                    self._renew_now(self._key, self._body)
                except Exception:  # a missed renewal is retried next period; the lease has 2/3 ttl left
                    pass

        self._renewer = threading.Thread(target=loop, name="wv-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        with self._guard:
            if not self._depth:
                return
            self._depth -= 1
            if self._depth:
                return
            key, self._key, self._shared = self._key, None, None
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(5)
            self._renewer = None
        if key:
            try:
                if key == EXCLUSIVE_KEY:  # the claim may be another holder's now (see check): leave it
                    rec = self._read(key)
                    if self._lost or rec is None or rec.get("token") != self._body.get("token"):
                        return
                elif self._lost:
                    return  # removed as stale: nothing of ours to delete
                self.backend.delete(key)
            except Exception:  # store unreachable: the lease simply expires after ttl
                pass
