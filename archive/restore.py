"""Restore: rebuild files byte-for-byte, and read single tensors.

Every chunk is verified against its ID as it is decoded, and every restored
file against the sha256 recorded at snapshot. A file is written to a temp name
beside its target and renamed into place only once its digest matches, so an
interrupted or failed restore never leaves a truncated file under a final name.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from weightvault.archive import paths
from weightvault.archive.manifest import FileEntry, Manifest, TensorEntry
from weightvault.archive.store import Store
from weightvault.errors import (
    AlreadyExistsError,
    DiskFullError,
    FileDigestMismatchError,
    FileNotInVersionError,
    InvalidInputError,
    TensorNotFoundError,
)


@dataclass(frozen=True)
class RestoreResult:
    """What a restore wrote.

    Attributes:
        files: restored file paths (relative).
        bytes: total bytes written.
    """

    files: tuple[str, ...]
    bytes: int


def iter_chunks(store: Store, chunks, *, workers: int | None = None, pool=None) -> Iterator[bytes]:
    """Yield the raw bytes of ``(chunk_id, length)`` pairs in order, decoding ahead in parallel."""
    chunks = chunks if isinstance(chunks, (list, tuple)) else list(chunks)
    if pool is None and len(chunks) <= 1:  # small files (configs, tokenizers): no threads to start
        for cid, n in chunks:
            yield store.read_chunk(cid, n)
        return
    own = pool is None
    workers = workers or os.cpu_count() or 2
    pool = pool or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wv-read")
    try:
        window: deque = deque()
        it = iter(chunks)
        for cid, n in it:
            window.append(pool.submit(store.read_chunk, cid, n))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def restore_file(store: Store, entry: FileEntry, target: Path, *, pool=None, progress=None,
                 fsync: bool = False) -> int:
    """Write one file to ``target`` atomically, verified against its sha256.

    The pool's threads decode chunks and write each at its offset (``pwrite``);
    this thread hashes them in order, so decoding, writing and the one
    inherently sequential step (sha256) overlap.

    With ``fsync`` the file's data reaches the disk before it is renamed into
    place. Off by default, as in cp, tar or git checkout: a restored file can
    always be restored again, and the flush cost restore a third of its speed
    (0.15 s of 0.45 s for MiniLM's 91 MB on the build machine).
    """
    # not named after the target: a name of up to 255 bytes must still fit the file system's limit
    tmp = target.with_name(f".wv-{os.urandom(8).hex()}.tmp")
    sha = hashlib.sha256()
    written = 0
    own = pool is None
    workers = os.cpu_count() or 2
    pool = pool or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wv-read")

    def one(cid: str, n: int, offset: int) -> bytes:
        raw = store.read_chunk(cid, n)
        _pwrite_all(fd, raw, offset)
        return raw

    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            window: deque = deque()
            offset = 0
            for cid, n in entry.chunks:
                window.append(pool.submit(one, cid, n, offset))
                offset += n
                if len(window) >= 2 * workers:
                    written += _hash_next(window, sha, progress)
            while window:
                written += _hash_next(window, sha, progress)
            if fsync:
                os.fsync(fd)
        except BaseException:
            for f in window:
                f.cancel()
            for f in window:  # no write may land after the temp file is removed
                if not f.cancelled():
                    f.exception()
            raise
        finally:
            os.close(fd)
        if sha.hexdigest() != entry.sha256:
            raise FileDigestMismatchError(entry.path, entry.sha256, sha.hexdigest())
        os.replace(tmp, target)
    except OSError as e:
        if e.errno == 28:  # ENOSPC
            raise DiskFullError(str(target), hint="free some space, then rerun the restore with --force (the "
                                "files already restored are whole and verified; --force writes them again)") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
        if own:
            pool.shutdown(wait=True, cancel_futures=True)
    return written


def _hash_next(window: deque, sha, progress) -> int:
    raw = window.popleft().result()
    sha.update(raw)
    if progress:
        progress(len(raw))
    return len(raw)


def restore(
    store: Store,
    manifest: Manifest,
    dest: str | os.PathLike,
    *,
    files: tuple[str, ...] | None = None,
    force: bool = False,
    progress=None,
    workers: int | None = None,
    fsync: bool = False,
) -> RestoreResult:
    """Restore a version (or some of its files) into ``dest``.

    Args:
        store: the store.
        manifest: the version's manifest.
        dest: target folder (created if missing).
        files: restore only these relative paths.
        force: overwrite existing files.
        progress: callable(n_bytes), optionally with ``start(total)``.
        fsync: flush each file to disk before renaming it into place.
    Returns:
        RestoreResult.
    """
    ref = f"{manifest.model}@{manifest.version}"
    if files:
        entries = []
        for p in files:
            e = manifest.file(p)
            if e is None:
                raise FileNotInVersionError(ref, p)
            entries.append(e)
    else:
        entries = list(manifest.files)
    if not str(dest):
        raise InvalidInputError("the target folder is empty", hint="name a folder, e.g. ./restored")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"{dest} is a file, not a folder",
                                hint="restore into a folder (it is created if missing)")
    _check_outside_store(store, dest, entries)
    # Every target is checked before anything is written or created: a refused restore leaves the
    # folder as it was.
    for e in entries:
        t = paths.safe_target(dest, e.path, create=False)
        if os.path.isdir(t):
            raise AlreadyExistsError(f"{t} is a folder, and {ref} has a file there",
                                     hint="move that folder away, or restore into another folder")
        if not force and os.path.lexists(t):
            raise AlreadyExistsError(f"{t} already exists", hint="restore into an empty folder, or pass --force")
    dest.mkdir(parents=True, exist_ok=True)
    targets = [(e, paths.safe_target(dest, e.path)) for e in entries]
    if progress is not None and hasattr(progress, "start"):
        progress.start(sum(e.size for e in entries))
    total = 0
    workers = workers or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wv-read") as pool:
        for e, t in targets:
            total += restore_file(store, e, t, pool=pool, progress=progress, fsync=fsync)
    return RestoreResult(tuple(e.path for e in entries), total)


def _check_outside_store(store: Store, dest: Path, entries) -> None:
    """Refuse a restore that would write into the store itself (into it, or over it from a folder
    that holds it): a model's config.json would replace the store's."""
    root = Path(os.path.realpath(store.root))
    base = Path(os.path.realpath(dest))
    for p in [base] + [Path(os.path.normpath(base / e.path)) for e in entries]:
        if p == root or root in p.parents:
            raise InvalidInputError(f"restoring into {dest} would write into the store at {root}",
                                    hint="restore into a folder outside the store")


def find_tensor(manifest: Manifest, name: str, file: str | None = None) -> tuple[FileEntry, TensorEntry]:
    for f in manifest.files:
        if file is not None and f.path != file:
            continue
        for t in f.tensors:
            if t.name == name:
                return f, t
    raise TensorNotFoundError(f"{manifest.model}@{manifest.version}", name)


def read_tensor_bytes(store: Store, manifest: Manifest, name: str, file: str | None = None) -> tuple[TensorEntry, bytes]:
    """Return a tensor's entry and raw bytes, decoding only its own chunks."""
    f, t = find_tensor(manifest, name, file)
    return t, b"".join(iter_chunks(store, f.tensor_chunks(t)))
