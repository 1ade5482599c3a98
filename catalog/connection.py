"""The Catalog: a DuckDB file inside the store, opened briefly and under a lock.

DuckDB allows one read-write process or many read-only ones per file, never
both. So every write is one short transaction under an exclusive
``locks/catalog.lock`` (take lock, connect, write, CHECKPOINT, close), and
reads hold the lock shared with a read-only connection. Parallel snapshots
contend only for those milliseconds; chunk I/O never holds this lock.

A catalog that cannot be opened (damaged file or WAL) is moved aside as
``catalog.duckdb.corrupt-<time>`` and rebuilt from the store, with a warning:
the store is the truth, the catalog only an index.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from weightvault.archive import faults
from weightvault.archive.locking import FileLock
from weightvault.archive.store import Store
from weightvault.catalog import indexer, migrations
from weightvault.errors import CatalogError, LockBusyError, StoreReadOnlyError

log = logging.getLogger("weightvault")


def duckdb_module():
    """The DuckDB engine module: ``_duckdb`` when it stands alone, else the ``duckdb`` package.

    From duckdb 2.0 the ``duckdb`` package is a Python layer (relations,
    expressions, its version read through importlib.metadata) over the C++
    extension ``_duckdb``, which has ``connect``, cursors and every exception
    class the catalog uses. Importing the layer costs ~150 ms of CPU with the
    GIL held (the extension alone ~25 ms; 2-core build machine), and every
    catalog command paid it. The catalog needs only SQL in and rows out, so it
    takes the extension directly; any other layout falls back to the package.
    """
    mod = sys.modules.get("duckdb")
    if mod is None:
        try:
            import _duckdb as mod
        except ImportError:
            mod = None
        if mod is None or not all(hasattr(mod, a) for a in ("connect", "Error", "IOException", "CatalogException")):
            import duckdb as mod
    return mod


def _import_quietly() -> None:
    try:
        duckdb_module()
    except Exception:  # noqa: BLE001 - the caller's own import reports it, with the hint
        pass


class Catalog:
    """The catalog of one store.

    >>> # with Catalog(store).read() as con: con.sql("FROM version_storage").show()
    """

    def __init__(self, store: Store, *, lock_timeout: float | None = None):
        self.store = store
        self.path = store.catalog_path
        self.lock = FileLock(store.root / "locks" / "catalog.lock", f"catalog {self.path}", writer_priority=True)
        self.lock_timeout = lock_timeout

    # -- low level -------------------------------------------------------------

    def _connect(self, read_only: bool, *, sandboxed: bool = False):
        """A connection to the catalog file; ``sandboxed``: the file attached read-only into a
        private in-memory database with file access off and settings locked (see :meth:`read`).
        Another program holding the file (a duckdb shell) is waited for, then named."""
        duckdb = duckdb_module()
        deadline = time.monotonic() + (self.lock_timeout if self.lock_timeout is not None else 60)
        delay = 0.01
        while True:
            try:
                return self._sandbox() if sandboxed else duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as e:
                if "lock" not in str(e).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise LockBusyError(f"catalog {self.path}", str(e).split("\n")[0]) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _sandbox(self):
        con = duckdb_module().connect(":memory:")
        try:
            con.execute(f"ATTACH '{str(self.path).replace(chr(39), chr(39) * 2)}' AS catalog (READ_ONLY)")
            con.execute("USE catalog")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            return con
        except BaseException:
            con.close()
            raise

    def _quarantine(self, err: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", ".wal"):
            p = self.path.with_name(self.path.name + suffix)
            if p.exists():
                p.rename(p.with_name(f"{p.name}.corrupt-{stamp}"))
        log.warning("catalog %s could not be opened (%s); moved aside and rebuilding from the store",
                    self.path, str(err).split("\n")[0])

    def _open_rw(self):
        """A read-write connection and the migrations it lacks. Checking them reads the file, so
        damage shows up here: the catalog is moved aside once and recreated from the store."""
        try:
            return self._open_checked()
        except duckdb_module().Error as e:
            self._quarantine(e)
            return self._open_checked()

    def _open_checked(self):
        con = self._connect(read_only=False)
        try:
            return con, migrations.pending(con)
        except BaseException:  # damaged, or written by a newer release (refused, not moved aside)
            con.close()
            raise

    # -- public ----------------------------------------------------------------

    def prefetch(self) -> None:
        """Start importing the DuckDB engine on a daemon thread, if nothing has yet.

        Started before a snapshot's chunk work, the import (~25 ms of the
        extension alone, see :func:`duckdb_module`) runs while that work is in
        C code with the GIL released; a second import simply waits for the
        first. Measured on the 2-core build machine, medians of alternating
        CLI runs: a fully deduplicated 91 MB version 561 -> 548 ms, a full
        fine-tune of it 1066 -> 982 ms.
        """
        if "duckdb" not in sys.modules and "_duckdb" not in sys.modules:
            threading.Thread(target=_import_quietly, name="wv-duckdb-import", daemon=True).start()

    @contextmanager
    def write(self, *, op: str = "catalog write"):
        """An exclusive read-write connection, migrated; checkpointed on exit. The caller syncs it
        (``indexer.sync``): a catalog that needed migrations arrives empty (:func:`indexer.reset`)."""
        with self.lock.held(shared=False, timeout=self.lock_timeout, op=op):
            con, todo = self._open_rw()
            try:
                if todo and migrations.applied(con):
                    # Written by a release that lacked these migrations: its rows predate their
                    # tables and indexers (its events all count as indexed), so the catalog is
                    # indexed afresh from the store, as `catalog rebuild` would. Emptied first: a
                    # crash part-way leaves an empty catalog, which the next command fills.
                    log.info("catalog %s: applying %d migrations; indexing the store afresh", self.path, len(todo))
                    indexer.reset(con)
                migrations.migrate(con, todo)
                yield con
                faults.point("catalog.checkpoint")
                con.execute("CHECKPOINT")
            finally:
                con.close()

    def _private_copy(self) -> None:
        """The store is on a read-only file system and its catalog lags it (or is missing): index it
        into a copy in a temporary folder, removed at exit. The store is the truth; reads work."""
        import atexit
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="weightvault-catalog-"))
        atexit.register(shutil.rmtree, tmp, True)
        if self.path.exists():
            shutil.copyfile(self.path, tmp / self.path.name)
        log.warning("the store is on a read-only file system and its catalog is behind it: "
                    "using a copy brought up to date in %s", tmp)
        self.path = tmp / self.path.name
        self.lock = FileLock(tmp / "catalog.lock", f"catalog {self.path}", writer_priority=True)

    def sync(self, chunk_info: dict | None = None) -> tuple[int, int, int]:
        """Index what the store has and the catalog lacks; returns (added, dropped, events)."""
        with self.write(op="catalog sync") as con:
            return indexer.sync(con, self.store, chunk_info=chunk_info)

    def _current_connection(self, sandboxed: bool = False):
        """A read-only connection when the catalog is in step with the store, else None (missing,
        stale, behind on migrations, or damaged: the caller syncs). The caller holds the shared lock."""
        if not self.path.exists():
            return None
        duckdb = duckdb_module()
        try:
            con = self._connect(read_only=True, sandboxed=sandboxed)
        except duckdb.Error:
            return None
        try:
            if not migrations.pending(con):
                add, drop, events = indexer.plan_sync(con, self.store)
                if not (add or drop or events):
                    return con
        except (duckdb.Error, CatalogError):
            pass
        con.close()
        return None

    @contextmanager
    def read(self, *, sandboxed: bool = False):
        """A shared, read-only connection to a catalog in step with the store.

        The connection that checked the catalog is current answers the query:
        a read of a current catalog connects once and never writes.

        ``sandboxed`` (users' SQL): the catalog is attached read-only into a private in-memory
        database whose file access is off and whose settings are locked, so a query reads the
        catalog and nothing else (``COPY ... TO`` over a ref or manifest would damage the store).
        The settings are the private database's own: another connection to the catalog in this
        process keeps its file access.
        """
        with self.lock.held(shared=True, timeout=self.lock_timeout, op="catalog read"):
            con = self._current_connection(sandboxed)
            if con is not None:
                try:
                    yield con
                finally:
                    con.close()
                return
        try:
            self.sync()
        except StoreReadOnlyError:
            self._private_copy()
            self.sync()
        with self.lock.held(shared=True, timeout=self.lock_timeout, op="catalog read"):
            con = self._connect(read_only=True, sandboxed=sandboxed)
            try:
                yield con
            finally:
                con.close()

    def rebuild(self) -> tuple[int, int, int]:
        """Recreate the catalog from the store alone (exclusive store lock)."""
        with self.store.lock.held(shared=False, timeout=self.lock_timeout, op="catalog rebuild"):
            with self.lock.held(shared=False, timeout=self.lock_timeout, op="catalog rebuild"):
                for suffix in ("", ".wal"):
                    p = self.path.with_name(self.path.name + suffix)
                    if p.exists():
                        os.unlink(p)
            return self.sync()
