"""Fault injection for crash-safety tests: die or fail on purpose at a write point.

The write path calls :func:`point` at every step that changes the store or
the catalog (``put`` before a temp file is written, ``put.rename`` between
temp file and final name, ``delete``, ``catalog.commit`` just before a
catalog transaction commits, ``catalog.checkpoint`` after it). When nothing
is armed a call is one attribute test, so the hooks stay in production code.

Armed from the environment, read once at import (tests run real
subprocesses):

- ``WEIGHTVAULT_FAULT_AFTER=N``: SIGKILL this process at the N-th point
  (1-based), the way a power cut or ``kill -9`` would stop it.
- ``WEIGHTVAULT_FAULT_ENOSPC_AFTER=N``: from the N-th point on, raise
  ``OSError(ENOSPC)`` instead (disk full, where no small filesystem can be
  mounted).
- ``WEIGHTVAULT_FAULT_SITES=put,delete``: count only these sites.

:func:`arm` does the same in-process (tests that do not need a subprocess).
"""

from __future__ import annotations

import errno
import os
import signal
import threading

SITES = ("put", "put.rename", "delete", "catalog.commit", "catalog.checkpoint")


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0
        self.kill_after = 0
        self.enospc_after = 0
        self.sites: frozenset[str] = frozenset()
        self.armed = False


_state = _State()


def arm(*, kill_after: int = 0, enospc_after: int = 0, sites=()) -> None:
    """Arm (or with all zeros, disarm) the fault points of this process.

    Args:
        kill_after: SIGKILL at this point number (0: never).
        enospc_after: raise ENOSPC from this point number on (0: never).
        sites: count only these sites (empty: all of :data:`SITES`).
    """
    with _state.lock:
        _state.count = 0
        _state.kill_after = int(kill_after)
        _state.enospc_after = int(enospc_after)
        _state.sites = frozenset(sites)
        _state.armed = bool(kill_after or enospc_after)


def points_seen() -> int:
    """How many counted points this process has passed since it was armed."""
    return _state.count


def point(site: str) -> None:
    """A place where a crash or a full disk may strike (no-op unless armed).

    Args:
        site: one of :data:`SITES`.
    Raises:
        OSError: ENOSPC, when armed for a full disk and the count is reached.
    """
    if not _state.armed:
        return
    if _state.sites and site not in _state.sites:
        return
    with _state.lock:
        _state.count += 1
        n = _state.count
    if _state.kill_after and n >= _state.kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    if _state.enospc_after and n >= _state.enospc_after:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<injected at {site}>")


def _from_env() -> None:
    env = os.environ
    kill = env.get("WEIGHTVAULT_FAULT_AFTER", "")
    enospc = env.get("WEIGHTVAULT_FAULT_ENOSPC_AFTER", "")
    if kill or enospc:
        sites = [s for s in env.get("WEIGHTVAULT_FAULT_SITES", "").split(",") if s]
        arm(kill_after=int(kill or 0), enospc_after=int(enospc or 0), sites=sites)


_from_env()
