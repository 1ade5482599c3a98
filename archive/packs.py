"""Packs: many chunks per object, for object stores (restic packs, Hugging Face Xet xorbs).

One PUT per 4 MiB chunk costs a request per chunk and pays per-request latency;
:class:`PackedBackend` wraps another backend and aggregates new chunk
containers into **pack** objects of ``target_size`` (32 MiB by default) plus a
small **pack index** object, and serves chunk reads with one ranged GET each.
The key namespace seen by Store is unchanged: ``chunks/ab/ab12…`` keys are
mapped through the index; every other key passes straight through.

Layout (docs/design.md, "Object storage and packs")::

    packs/ab/<pack id>      concatenated chunk containers; pack id = BLAKE3 of the pack bytes
    packidx/ab/<pack id>    JSON {"format": 1, "pack": id, "chunks": [[chunk id, offset, length], ...]}

Write order: the pack, then its index. A chunk is visible (``has``/``get``)
only once its pack's index is stored, so a crash leaves at most a pack without
an index (swept by :func:`sweep_packs`). Any PUT of a non-chunk key (manifest,
ref, event, config) first :meth:`PackedBackend.flush` es the open pack and waits
for every in-flight pack upload: the store's write order chunks -> manifest ->
ref holds with no change to the snapshot code.

Packs are uploaded on a background pool (``upload_workers`` in flight), so
hashing and compressing continue while a pack is on the wire.

GC API for a given mark set: archive/pack_gc.py (``pack_usage``, ``sweep_packs``, ``repack``).
``weightvault gc`` works unchanged: deleting a chunk key (``Backend.delete``)
removes it from the in-memory index at once and rewrites each touched pack's
index once at the next :meth:`PackedBackend.flush` (dropping the pack when its
index becomes empty); gc's last step, :meth:`PackedBackend.sweep_temp`, drops
index-less packs and repacks mostly-dead ones.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.archive import ids
from weightvault.archive.backend import Backend, ObjectInfo

from weightvault.errors import StoreFormatError

PACK_FORMAT = 1
DEFAULT_TARGET_SIZE = 32 << 20  # tens of MB: ~32 PUTs per GB, small enough to buffer a few in memory
CHUNK_PREFIX = "chunks/"
PACK_PREFIX = "packs/"
INDEX_PREFIX = "packidx/"
REFRESH_S = 60.0  # how stale the dedup view of other writers' packs may get


def pack_key(pack_id: str) -> str:
    return f"{PACK_PREFIX}{pack_id[:2]}/{pack_id}"


def index_key(pack_id: str) -> str:
    return f"{INDEX_PREFIX}{pack_id[:2]}/{pack_id}"


def _chunk_id(key: str) -> str:
    return key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class PackEntry:
    """Where one chunk lives.

    Attributes:
        pack_id: the pack holding it.
        offset: its container's first byte in the pack.
        length: its container's size.
        mtime: when the pack's index was written (GC grace uses it).
    """

    pack_id: str
    offset: int
    length: int
    mtime: float


@dataclass
class _OpenPack:
    parts: list = field(default_factory=list)
    entries: dict = field(default_factory=dict)  # chunk id -> (offset, length)
    data: dict = field(default_factory=dict)  # chunk id -> container bytes
    size: int = 0


def encode_index(pack_id: str, entries: dict[str, tuple[int, int]]) -> bytes:
    rows = sorted([cid, off, n] for cid, (off, n) in entries.items())
    return json.dumps({"format": PACK_FORMAT, "pack": pack_id, "chunks": rows}, separators=(",", ":")).encode()


def decode_index(data: bytes, key: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """Parse a pack index; raise StoreFormatError naming ``key`` when it is not one."""
    try:
        d = json.loads(data)
        if d.get("format") != PACK_FORMAT:
            raise ValueError(f"unsupported pack index format {d.get('format')}")
        pid = ids.check_id(d["pack"])
        return pid, {ids.check_id(c): (int(o), int(n)) for c, o, n in d["chunks"]}
    except Exception as e:
        raise StoreFormatError(f"pack index {key} is unreadable ({e})", hint="run `weightvault verify`") from None


class PackedBackend(Backend):
    """A backend that stores ``chunks/`` keys in packs on ``inner``.

    Args:
        inner: where packs, indexes and all other objects go (an S3Backend).
        cache: local folder for downloaded pack indexes (None: no cache).
        target_size: seal a pack once it holds this many bytes.
        upload_workers: packs uploaded in parallel.

    >>> # b = PackedBackend(S3Backend(loc), cache=Path("~/.cache/wv/idx"))
    >>> # b.put("chunks/ab/ab12...", container); b.flush()
    """

    def __init__(self, inner: Backend, *, cache: Path | None = None, target_size: int = DEFAULT_TARGET_SIZE,
                 upload_workers: int = 4):
        self.inner = inner
        self.cache = Path(cache) if cache else None
        self.target_size = target_size
        self.upload_workers = upload_workers
        self._lock = threading.RLock()
        self._index: dict[str, PackEntry] = {}
        self._packs: dict[str, dict[str, tuple[int, int]]] = {}  # pack id -> its entries
        self._pack_mtime: dict[str, float] = {}  # pack id -> when its index was written
        self._known_at: dict[str, float] = {}  # pack id -> when this process installed it (monotonic)
        self._dirty: set[str] = set()  # packs whose index lost chunks to delete(), not yet rewritten
        atexit.register(_flush_at_exit, weakref.ref(self))
        self._loaded: dict[str, tuple[int, float]] = {}  # index key -> (size, mtime) as listed
        self._open = _OpenPack()
        self._sealed: dict[str, bytes] = {}  # chunk id -> container, while its pack uploads
        self._inflight: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self._refreshed_at = 0.0
        self.requests = {"pack_put": 0, "index_put": 0, "range_get": 0}
        self._read_ahead = _ReadAhead(self)

    def __repr__(self) -> str:
        return f"PackedBackend({self.inner!r})"

    def _bump(self, what: str) -> None:
        with self._lock:
            self.requests[what] += 1

    # -- index ---------------------------------------------------------------

    def refresh(self) -> int:
        """Load pack indexes written since the last refresh (by any machine); returns how many."""
        started = time.monotonic()
        listed = {i.key: i for i in self.inner.list(INDEX_PREFIX)}
        n = 0
        with self._lock:
            # Dropped by gc elsewhere: every pack known here whose index is gone, including the
            # packs this process uploaded itself (but not one installed after the listing began).
            for pid in [p for p in self._packs if index_key(p) not in listed and self._known_at.get(p, 0) < started]:
                self._forget(pid)
                self._loaded.pop(index_key(pid), None)
            for key, info in listed.items():
                if self._loaded.get(key) == (info.size, info.mtime):
                    continue
                pid, entries = self._read_index(key, info)
                self._forget(pid)
                self._install(pid, entries, info.mtime)
                self._loaded[key] = (info.size, info.mtime)
                n += 1
            self._refreshed_at = time.monotonic()
        return n

    def revalidate(self) -> None:
        """Reload the indexes before a write (called with the store lock just taken). A process
        that lives across locks (one ``snapshot A B C`` takes the lock per version; a Python
        ``Vault`` kept open) must not trust an index loaded before another machine's gc ran:
        has() would answer yes for a chunk that gc deleted, and the version would name it."""
        if self._refreshed_at:
            self.refresh()

    def _read_index(self, key: str, info: ObjectInfo):
        cached = self.cache / _chunk_id(key) if self.cache else None
        if cached is not None:
            try:
                data = cached.read_bytes()
                if len(data) == info.size:
                    return decode_index(data, key)
            except OSError:
                pass
        data = self.inner.get(key)
        out = decode_index(data, key)
        self._cache_index(key, data)
        return out

    def _cache_index(self, key: str, data: bytes) -> None:
        cached = self.cache / _chunk_id(key) if self.cache else None
        if cached is None:
            return
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        except OSError:  # a cache only: the index is read from the store next time
            pass

    def _install(self, pid: str, entries: dict, mtime: float) -> None:
        self._packs[pid] = dict(entries)
        self._pack_mtime[pid] = mtime
        self._known_at[pid] = time.monotonic()
        for cid, (off, n) in entries.items():
            self._index[cid] = PackEntry(pid, off, n, mtime)

    def _forget(self, pid: str) -> None:
        self._pack_mtime.pop(pid, None)
        self._known_at.pop(pid, None)
        for cid in self._packs.pop(pid, {}):
            e = self._index.get(cid)
            if e is not None and e.pack_id == pid:
                del self._index[cid]
                self._repoint(cid)

    def _repoint(self, cid: str) -> None:
        """Resolve ``cid`` to another pack's copy, if any (a chunk may be stored twice)."""
        for other, entries in self._packs.items():
            if cid in entries:
                off, n = entries[cid]
                self._index[cid] = PackEntry(other, off, n, self._pack_mtime.get(other, 0.0))
                return

    def _ensure_loaded(self) -> None:
        if not self._refreshed_at:
            self.refresh()

    def lookup(self, chunk_id: str, *, refresh: bool = True) -> PackEntry | None:
        """Where ``chunk_id`` lives; refreshes the index once on a miss (another machine may have written it)."""
        self._ensure_loaded()
        e = self._index.get(chunk_id)
        if e is None and refresh:
            self.refresh()
            e = self._index.get(chunk_id)
        return e

    def pack_entries(self) -> dict[str, dict[str, tuple[int, int]]]:
        """pack id -> {chunk id: (offset, length)} for every indexed pack."""
        self._ensure_loaded()
        with self._lock:
            return {p: dict(e) for p, e in self._packs.items()}

    # -- writing -------------------------------------------------------------

    def _pool_get(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.upload_workers, thread_name_prefix="wv-pack")
        return self._pool

    def put(self, key: str, data, *, exclusive: bool = False) -> bool:
        if not key.startswith(CHUNK_PREFIX):
            self.flush()  # write order: every chunk before the manifest/ref/event that may name it
            return self.inner.put(key, data, exclusive=exclusive)
        cid = _chunk_id(key)
        data = bytes(data)
        with self._lock:
            if cid in self._open.entries or cid in self._sealed or cid in self._index:
                return not exclusive
            op = self._open
            op.entries[cid] = (op.size, len(data))
            op.parts.append(data)
            op.data[cid] = data
            op.size += len(data)
            full = op.size >= self.target_size
        if full:
            self._seal()
        return True

    def _seal(self) -> None:
        """Close the open pack and start its upload; bounds memory by waiting when too many are in flight."""
        with self._lock:
            op, self._open = self._open, _OpenPack()
            if not op.entries:
                return
            self._sealed.update(op.data)  # keep readable until the index is stored
            fut = self._pool_get().submit(self._upload, op)
            self._inflight.append(fut)
            backlog = [f for f in self._inflight if not f.done()]
        while len(backlog) > self.upload_workers:
            backlog.pop(0).result()

    def _upload(self, op: _OpenPack) -> str:
        blob = b"".join(op.parts)
        pid = ids.content_id(blob)
        try:
            self.inner.put(pack_key(pid), blob)
            self._bump("pack_put")
            index = encode_index(pid, op.entries)
            self.inner.put(index_key(pid), index)
            self._bump("index_put")
            self._cache_index(index_key(pid), index)  # the next refresh reads it here, not with a GET
            with self._lock:
                self._install(pid, op.entries, time.time())
        finally:
            with self._lock:
                for cid in op.entries:
                    self._sealed.pop(cid, None)
        return pid

    def flush(self) -> None:
        """Seal the open pack and wait until every pack and index is stored; re-raise the first upload error.

        Then write the indexes of packs that lost chunks to :meth:`delete`.
        """
        self._seal()
        with self._lock:
            pending, self._inflight = self._inflight, []
        err = None
        for f in pending:
            try:
                f.result()
            except BaseException as e:  # wait for all, then report the first
                err = err or e
        if err is not None:
            raise err
        self._flush_deletes()

    def sweep_temp(self, older_than_s: float = 3600.0) -> int:
        """gc's last step (archive/gc.py calls ``backend.sweep_temp`` after deleting dead chunks).

        By then every dead chunk is out of the indexes, so what the indexes name is what is
        live: write the pending index rewrites, drop packs with no index (crashed uploads)
        and repack packs whose indexed bytes are at most half of their size, all only when
        older than ``older_than_s``. Returns the number of packs dropped or rewritten.
        """
        self.flush()
        now = time.time()
        indexed = self.pack_entries()
        n = 0
        for info in list(self.inner.list(PACK_PREFIX)):
            pid = _chunk_id(info.key)
            if not ids.is_id(pid) or now - info.mtime < older_than_s:
                continue
            entries = indexed.get(pid)
            if entries is None:
                self.inner.delete(info.key)
                n += 1
            elif sum(ln for _, ln in entries.values()) <= info.size // 2:
                move_live(self, pid, set(entries), entries)
                n += 1
        return n

    def close(self) -> None:
        self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- reading -------------------------------------------------------------

    def _pending_bytes(self, cid: str) -> bytes | None:
        """A chunk not yet in a stored pack (open or uploading), so a writer reads its own writes."""
        with self._lock:
            if cid in self._open.entries:
                return self._open.data[cid]
            return self._sealed.get(cid)

    def get(self, key: str) -> bytes:
        if not key.startswith(CHUNK_PREFIX):
            return self.inner.get(key)
        cid = _chunk_id(key)
        pending = self._pending_bytes(cid)
        if pending is not None:
            return pending
        e = self.lookup(cid)
        if e is None:
            raise FileNotFoundError(key)
        # A short read (truncated pack) is returned as is: the hash check above names the chunk.
        return self._read_ahead.read(e)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if not key.startswith(CHUNK_PREFIX):
            return self.inner.get_range(key, start, length)
        pending = self._pending_bytes(_chunk_id(key))
        if pending is not None:
            return pending[start : start + length]
        e = self.lookup(_chunk_id(key))
        if e is None:
            raise FileNotFoundError(key)
        start = max(0, min(start, e.length))
        length = max(0, min(length, e.length - start))
        self._bump("range_get")
        return self.inner.get_range(pack_key(e.pack_id), e.offset + start, length)

    def has(self, key: str) -> bool:
        if not key.startswith(CHUNK_PREFIX):
            return self.inner.has(key)
        cid = _chunk_id(key)
        with self._lock:
            if cid in self._open.entries or cid in self._sealed:
                return True
        # No refresh per miss: has() is the dedup probe, and a chunk another machine
        # stored meanwhile is at worst stored twice (in two packs), never lost. A
        # long-running process still picks up others' packs once a minute (one LIST).
        self._ensure_loaded()
        if cid not in self._index and time.monotonic() - self._refreshed_at > REFRESH_S:
            self.refresh()
        return cid in self._index

    def stat(self, key: str) -> ObjectInfo | None:
        if not key.startswith(CHUNK_PREFIX):
            return self.inner.stat(key)
        pending = self._pending_bytes(_chunk_id(key))
        if pending is not None:
            return ObjectInfo(key, len(pending), time.time())
        e = self.lookup(_chunk_id(key))
        return None if e is None else ObjectInfo(key, e.length, e.mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        if prefix.startswith(CHUNK_PREFIX) or CHUNK_PREFIX.startswith(prefix):
            self.refresh()
            with self._lock:
                rows = sorted((f"{CHUNK_PREFIX}{cid[:2]}/{cid}", e) for cid, e in self._index.items())
            for key, e in rows:
                if key.startswith(prefix):
                    yield ObjectInfo(key, e.length, e.mtime)
            if prefix.startswith(CHUNK_PREFIX):
                return
        yield from self.inner.list(prefix)

    def delete(self, key: str) -> bool:
        if not key.startswith(CHUNK_PREFIX):
            return self.inner.delete(key)
        cid = _chunk_id(key)
        e = self.lookup(cid, refresh=False)
        if e is None:
            return False
        # Gone at once for this process; the pack's index is rewritten once per pack at the
        # next flush() (gc's sweep_temp, any manifest/ref/event write, close, exit), not per chunk.
        with self._lock:
            entries = self._packs.get(e.pack_id, {})
            entries.pop(cid, None)
            del self._index[cid]
            self._repoint(cid)
            self._dirty.add(e.pack_id)
        return True

    def _flush_deletes(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for pid in sorted(dirty):
            with self._lock:
                entries = dict(self._packs.get(pid, {}))
            self._rewrite_index(pid, entries)

    def _rewrite_index(self, pid: str, entries: dict) -> None:
        """Replace a pack's index by ``entries``; with none left, drop index then pack."""
        if entries:
            self.inner.put(index_key(pid), encode_index(pid, entries))
            with self._lock:
                born = self._pack_mtime.get(pid, time.time())  # its chunks are as old as before
                self._forget(pid)
                self._install(pid, entries, born)
        else:
            self.inner.delete(index_key(pid))
            with self._lock:
                self._forget(pid)
                self._loaded.pop(index_key(pid), None)
            self.inner.delete(pack_key(pid))

    def touch(self, key: str) -> None:
        if not key.startswith(CHUNK_PREFIX):
            self.inner.touch(key)


class _ReadAhead:
    """Serve sequential chunk reads of a pack from larger ranged GETs.

    Restore reads a file's chunks in order, and a snapshot wrote them to packs
    in that order, so after two adjacent reads in a pack (the kernel's
    readahead heuristic) one GET covers up to ``WINDOW`` bytes of whole chunks,
    and the next window is fetched in the background meanwhile (two GETs in
    flight, like double buffering). A lone read (one tensor) stays an exact
    range. Concurrent readers of a window wait for its one GET.
    """

    WINDOW = 16 << 20  # 16 MiB: ~60 GETs per GB instead of one per chunk
    KEEP = 8  # windows kept (memory: KEEP * WINDOW at most)

    def __init__(self, packed: PackedBackend):
        self.packed = packed
        self._lock = threading.Lock()
        self._windows: dict = {}  # (pack, start) -> (end, Future[bytes]), insertion-ordered for LRU
        self._ends: dict[str, set[int]] = {}  # pack -> offsets where recent reads ended
        self._pool: ThreadPoolExecutor | None = None

    def _find(self, pid: str, offset: int, length: int):
        for (p, start), (end, fut) in self._windows.items():
            if p == pid and start <= offset and offset + length <= end:
                return start, end, fut
        return None

    def _run_end(self, pid: str, offset: int) -> int:
        """End of the run of whole adjacent chunks from ``offset`` that fits in WINDOW bytes (offset if none)."""
        with self.packed._lock:
            entries = sorted(self.packed._packs.get(pid, {}).values())
        end = offset
        for off, n in entries:
            if off == end and off + n - offset <= self.WINDOW:
                end = off + n
        return end

    def _add(self, pid: str, start: int, end: int) -> Future:
        """Register window [start, end) (call with the lock held)."""
        fut: Future = Future()
        self._windows[(pid, start)] = (end, fut)
        while len(self._windows) > self.KEEP:
            self._windows.pop(next(iter(self._windows)))
        return fut

    def _fetch(self, pid: str, start: int, end: int, fut: Future) -> None:
        self.packed._bump("range_get")
        try:
            fut.set_result(self.packed.inner.get_range(pack_key(pid), start, end - start))
        except BaseException as err:
            fut.set_exception(err)
            with self._lock:
                self._windows.pop((pid, start), None)

    def read(self, e: PackEntry) -> bytes:
        pid = e.pack_id
        ahead = None
        with self._lock:
            hit = self._find(pid, e.offset, e.length)
            ends = self._ends.setdefault(pid, set())
            sequential = e.offset in ends
            ends.add(e.offset + e.length)
            if len(ends) > 256:
                ends.clear()
            mine = hit is None and sequential
            if mine:
                end = max(self._run_end(pid, e.offset), e.offset + e.length)
                hit = (e.offset, end, self._add(pid, e.offset, end))
            if hit is not None:
                nxt = hit[1]
                nxt_end = self._run_end(pid, nxt)
                if nxt_end > nxt and self._find(pid, nxt, 1) is None:
                    ahead = (nxt, nxt_end, self._add(pid, nxt, nxt_end))
        if ahead is not None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="wv-readahead")
            self._pool.submit(self._fetch, pid, *ahead)
        if hit is None:
            self.packed._bump("range_get")
            return self.packed.inner.get_range(pack_key(pid), e.offset, e.length)
        start, end, fut = hit
        if mine:
            self._fetch(pid, start, end, fut)
        data = fut.result()
        return data[e.offset - start : e.offset - start + e.length]


def move_live(backend: PackedBackend, pid: str, live: set[str], entries: dict) -> None:
    """Copy ``live`` chunks of pack ``pid`` into new packs, then drop its index and the pack."""
    blob = backend.inner.get(pack_key(pid))
    with backend._lock:  # let put() store them again: they must land in a new pack
        for cid in live:
            backend._index.pop(cid, None)
    for cid in sorted(live):
        off, n = entries[cid]
        backend.put(f"{CHUNK_PREFIX}{cid[:2]}/{cid}", blob[off : off + n])
    backend.flush()
    backend._rewrite_index(pid, {})


def _flush_at_exit(ref) -> None:
    """Write index rewrites a process left pending (deletes without a later flush)."""
    backend = ref()
    if backend is not None and backend._dirty:
        try:
            backend._flush_deletes()
        except Exception:  # store unreachable at exit: the chunks stay; the next gc deletes them again
            pass
