"""Snapshot: turn a model folder into chunks, a manifest and a ref, in that order.

Write order (docs/design.md, "Write order"): every chunk is durably stored
before the manifest that names it, and the manifest before the ref that makes
the version visible. A crash at any point leaves only unreferenced chunks or
an unreferenced manifest, which GC collects; no half-written version is ever
visible.

Chunking: a safetensors file is cut at tensor boundaries: its header is one
segment, and each tensor is cut into ``chunk_size`` pieces counted from the
tensor's own start. An identical tensor therefore yields identical chunks
whatever file, shard or offset holds it, and a partly changed tensor shares
its unchanged pieces. Other files are cut into ``chunk_size`` pieces.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.archive import card, codecs, ids, paths
from weightvault.archive.manifest import FileEntry, Manifest, TensorEntry
from weightvault.archive.safetensors_header import DTYPE_BITS, read_header
from weightvault.archive.store import Store, now_iso
from weightvault.errors import (
    AlreadyExistsError,
    IntegrityError,
    InvalidInputError,
    InvalidNameError,
    PickleRefusedError,
    VersionNotFoundError,
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__"}
SKIP_PATHS = (".cache/huggingface",)  # huggingface_hub's local-dir bookkeeping


@dataclass(frozen=True)
class SourceFile:
    """A file found in the source folder.

    Attributes:
        rel: its POSIX path relative to the folder.
        path: its path on disk.
        size: its size in bytes.
        mtime_ns: its modification time when scanned (None: not known), so a file rewritten
            between the scan and the read is caught.
    """

    rel: str
    path: Path
    size: int
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Segment:
    """A byte range of a file that becomes one chunk.

    Attributes:
        start: offset in the file.
        end: end offset (exclusive).
        dtype: dtype of the tensor it belongs to, or None.
        tensor: tensor name, or None (header, other files).
        piece: index of this piece within its tensor.
        shape: shape of the tensor it belongs to, or ().
    """

    start: int
    end: int
    dtype: str | None = None
    tensor: str | None = None
    piece: int = 0
    shape: tuple = ()


@dataclass
class SnapshotStats:
    """What a snapshot wrote.

    Attributes:
        files, tensors, chunks: counts in the version.
        raw_bytes: total size of its files.
        new_chunks: chunks this snapshot stored (not already in the store).
        new_raw_bytes: raw size of those chunks.
        new_stored_bytes: their size on disk.
        new_chunk_info: chunk id -> (raw_len, stored_len, codec, base) for new chunks.
        healed_chunks: chunk id -> what was wrong, for stored chunks whose container could not
            hold their bytes (truncated, garbled header) and that this snapshot stored again.
        healed_chunk_info: as ``new_chunk_info``, for the healed chunks.
    """

    files: int = 0
    tensors: int = 0
    chunks: int = 0
    raw_bytes: int = 0
    new_chunks: int = 0
    new_raw_bytes: int = 0
    new_stored_bytes: int = 0
    new_chunk_info: dict = field(default_factory=dict)
    healed_chunks: dict = field(default_factory=dict)
    healed_chunk_info: dict = field(default_factory=dict)

    @property
    def dedup_bytes(self) -> int:
        return self.raw_bytes - self.new_raw_bytes


@dataclass(frozen=True)
class SnapshotResult:
    """The committed version.

    Attributes:
        model, version: its name.
        manifest_id: its manifest's ID.
        manifest: the manifest.
        stats: what was written.
        encoded_against: ``model@version`` whose tensors new chunks were stored as deltas and casts
            of, when that is not the parent (a first version's lineage or card base), else None.
    """

    model: str
    version: str
    manifest_id: str
    manifest: Manifest
    stats: SnapshotStats
    encoded_against: str | None = None


def scan_folder(root: Path, exclude: tuple[str, ...] = ()) -> list[SourceFile]:
    """List the files of a model folder, sorted, with their names validated."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder", hint="pass the folder that holds config.json and the weights")
    out = []

    def excluded(rel: str, name: str) -> bool:
        return any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat) for pat in exclude)

    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in SKIP_DIRS and (f"{rel_dir}/{d}" if rel_dir != "." else d) not in SKIP_PATHS
        )
        for d in dirnames:  # os.walk lists a link to a folder here and does not enter it
            rel = f"{rel_dir}/{d}" if rel_dir != "." else d
            if os.path.islink(os.path.join(dirpath, d)) and not excluded(rel, d):
                raise InvalidInputError(f"{root / rel} is a link to a folder, which weightvault does not follow",
                                        hint=f"copy the folder in, or leave it out with --exclude '{rel}'")
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir != "." else name
            if excluded(rel, name):
                continue
            paths.check_relative(rel)
            p = Path(dirpath) / name
            if not p.is_file():
                if p.is_symlink() and not p.exists():  # a model folder missing a file it seems to have
                    raise InvalidInputError(f"{p} is a broken link (its target {os.readlink(p)} is missing)",
                                            hint=f"fix the link, or leave it out with --exclude '{rel}'")
                continue  # sockets, fifos
            st = p.stat()
            out.append(SourceFile(rel, p, st.st_size, st.st_mtime_ns))
    return out


_OPCODE_LIMIT = 100_000  # opcodes walked; a longer valid run is a pickle
_TEXT_BUDGET = 64 << 20  # bytes of protocol-0 text lines read; past it, a pickle
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"


def looks_pickled(path: Path) -> bool:
    """Whether a file with a pickle suffix is a pickle (refused unless --convert-pickle).

    ``.pkl``/``.pickle`` always count. A ``.bin .pt .pth .ckpt`` counts when it is a zip
    (torch.save since 1.6), starts with the protocol 2+ PROTO opcode, or (protocol 0/1 has no
    header) its bytes walk as pickle opcodes from the start to an import (GLOBAL/INST naming a
    dotted identifier pair, STACK_GLOBAL on two pushed strings), to a STOP on the file's last byte,
    or past 100,000 opcodes. Length-prefixed arguments are skipped, not read, so a long string
    cannot hide what follows it. Real binaries (word2vec, GGUF, raw tensor dumps) reach an invalid
    opcode or a length past the end of the file first.
    """
    name = path.name.lower()
    if not name.endswith(PICKLE_SUFFIXES):
        return False
    if name.endswith((".pkl", ".pickle")):
        return True
    with open(path, "rb") as f:
        magic = f.read(4)
        # zip (torch.save since 1.6) or the PROTO opcode (protocol 2+ pickles, legacy torch.save)
        # with a protocol the unpickler accepts (0-5)
        if magic.startswith(b"PK\x03\x04") or (magic[:1] == b"\x80" and magic[1:2] in bytes(range(6))):
            return True
        f.seek(0)
        return _walks_as_pickle(f, os.fstat(f.fileno()).st_size)


def _walks_as_pickle(f, size: int) -> bool:
    import pickletools
    import re
    import struct

    lengths = {pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
               pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}
    budget = _TEXT_BUDGET

    def skip_line() -> bool:  # past the next newline; False when the file ends first
        nonlocal budget
        while budget > 0:
            part = f.readline(1 << 20)
            budget -= len(part)
            if part.endswith(b"\n"):
                return True
            if not part:
                return False
        raise OverflowError  # a text line past the budget: treated as a pickle

    def name() -> bool:  # a GLOBAL/INST operand line: a dotted identifier
        text = f.readline(4096)
        return text.endswith(b"\n") and re.fullmatch(_IDENT, text[:-1].decode("latin-1")) is not None

    pushed: list[str] = []  # the last two values pushed: "str" or "other"
    try:
        for n in range(1, _OPCODE_LIMIT + 1):
            code = f.read(1)
            op = pickletools.code2op.get(code.decode("latin-1")) if code else None
            if op is None:
                return False  # not an opcode, or the end of the file before a STOP
            arg = op.arg
            if arg is None:
                pass
            elif arg.n >= 0:
                if len(f.read(arg.n)) != arg.n:
                    return False
            elif arg.n == pickletools.UP_TO_NEWLINE:
                if op.name in ("GLOBAL", "INST"):
                    return name() and name()
                if not skip_line():
                    return False
            else:
                fmt = lengths[arg.n]
                raw = f.read(struct.calcsize(fmt))
                if len(raw) != struct.calcsize(fmt):
                    return False
                (length,) = struct.unpack(fmt, raw)
                if length < 0 or f.tell() + length > size:
                    return False
                f.seek(length, os.SEEK_CUR)  # skipped, not read
            if op.name == "STACK_GLOBAL":
                return pushed == ["str", "str"]
            if op.name == "STOP":
                return n > 1 and f.tell() == size  # a whole pickle, nothing after it
            if op.name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"):
                strs = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "GET", "BINGET", "LONG_BINGET")
                pushed = (pushed + ["str" if op.name in strs else "other"])[-2:]
    except OverflowError:
        return True
    return True  # _OPCODE_LIMIT valid opcodes


def plan_segments(src: SourceFile, chunk_size: int):
    """Return (format, tensors, segments) for one file; validates safetensors strictly."""
    segs: list[Segment] = []
    if src.rel.endswith(".safetensors"):
        header = read_header(src.path, src.size)
        _split(segs, 0, header.data_start, chunk_size)
        tensors = []
        for t in header.tensors:
            first = len(segs)
            _split(segs, t.begin, t.end, piece_bytes(chunk_size, t.dtype), t.dtype, t.name, t.shape)
            tensors.append(TensorEntry(t.name, t.dtype, t.shape, t.begin, t.end, first, len(segs) - first))
        return "safetensors", tensors, segs
    _split(segs, 0, src.size, chunk_size)
    return "blob", [], segs


def piece_bytes(chunk_size: int, dtype: str | None) -> int:
    """Bytes per tensor piece: a fixed element count (chunk_size / 4 elements,
    chunk_size / 8 for 8-byte dtypes), so piece K of a bf16 copy covers the same
    elements as piece K of its fp32 source (archive/cast.py)."""
    bits = DTYPE_BITS.get(dtype or "", 0)
    if bits % 8 or not bits:
        return chunk_size
    itemsize = bits // 8
    return max(1, chunk_size // max(4, itemsize)) * itemsize


def _split(segs, start, end, size, dtype=None, tensor=None, shape=()):
    piece = 0
    while start < end:
        stop = min(start + size, end)
        segs.append(Segment(start, stop, dtype, tensor, piece, tuple(shape)))
        start, piece = stop, piece + 1


class ChunkWriter:
    """Hashes, deduplicates, encodes and stores chunks on a thread pool.

    ``encode`` may be replaced (the engine passes a parent-aware encoder that
    stores deltas); it receives the raw view, the chunk ID and the Segment.
    """

    def __init__(self, store: Store, *, workers: int | None = None, encode=None):
        self.store = store
        self.workers = workers or os.cpu_count() or 2
        self.encode = encode or (lambda raw, cid, seg, rel: codecs.encode_chunk(raw, cid, dtype=seg.dtype))
        self.stats = SnapshotStats()
        self._lock = threading.Lock()
        self._claimed: set[str] = set()
        # Stored chunks whose containers (and bases) were checked in this snapshot. Not kept across
        # snapshots: between two store locks another process may repair or gc (a chain checked once
        # may have lost a base since).
        self._sound: set[str] = set()

    def _one(self, fd: int, seg: Segment, src: SourceFile) -> tuple[str, int, bytes]:
        # One private read (pread: a file truncated meanwhile gives a short read, where a mapping
        # would kill the process with SIGBUS). The ID, the stored container and the file's
        # sha256 all come from these bytes, whatever writes to the file meanwhile (a trainer
        # saving a checkpoint in place): hashing a shared mapping and encoding it again could
        # store other bytes under this ID, and later snapshots would deduplicate against them.
        n = seg.end - seg.start
        view = os.pread(fd, n, seg.start)
        if len(view) != n:
            raise _changed(src)
        cid = ids.content_id(view)
        with self._lock:
            first = cid not in self._claimed
            mine = first and not self.store.has_chunk(cid)
            if first:
                self._claimed.add(cid)
        if first and not mine and self.store.backend.cheap_reads:
            # Reuse a stored chunk only if its container, and for a delta every chunk of its
            # base chain, can give back these bytes: a truncated or garbled one, or a delta whose
            # base is gone (repair quarantined it), is stored again in full from the bytes at
            # hand, which heals every version using it (a flipped byte inside its data needs
            # `verify`, which decodes).
            problem = self.store.chunk_problem(cid, n, self._sound)
            if problem is not None:
                enc = codecs.encode_chunk(view, cid, dtype=seg.dtype)
                self.store.replace_chunk(cid, enc)
                with self._lock:
                    self.stats.healed_chunks[cid] = problem
                    self.stats.healed_chunk_info[cid] = (n, len(enc.container), enc.codec, None)
                return cid, n, view
        if mine:
            enc = self.encode(view, cid, seg, src.rel)
            if not self.store.put_chunk(cid, enc):  # a concurrent snapshot stored it first
                return cid, n, view
            with self._lock:
                st = self.stats
                st.new_chunks += 1
                st.new_raw_bytes += n
                st.new_stored_bytes += len(enc.container)
                st.new_chunk_info[cid] = (n, len(enc.container), enc.codec, enc.base)
        else:
            self.store.backend.touch(self.store.chunk_key(cid))  # re-referenced: survives GC's grace
        return cid, n, view

    def forget_lost(self, chunk_ids: set[str]) -> None:
        """Drop chunks whose exclusive put lost a race (found at flush) from the new-chunk stats."""
        st = self.stats
        for cid in chunk_ids:
            info = st.new_chunk_info.pop(cid, None)
            if info is not None:
                st.new_chunks -= 1
                st.new_raw_bytes -= info[0]
                st.new_stored_bytes -= info[1]

    def write_file(self, pool: ThreadPoolExecutor, src: SourceFile, segs: list[Segment], progress=None):
        """Store every segment of ``src``; return (chunk list, sha256 hex).

        Pieces are read with ``pread`` on the pool's threads, at most ``2 * workers`` of them in
        memory at once (4 MiB each by default), so memory stays bounded whatever the file's size.
        A file whose size, modification time or inode changes between the scan and the end of
        its read is refused (:func:`_changed`); nothing of it is recorded.
        """
        sha = hashlib.sha256()
        if src.size == 0:
            return [], sha.hexdigest()
        fd = os.open(src.path, os.O_RDONLY)
        window: deque = deque()
        try:
            before = os.fstat(fd)
            if before.st_size != src.size or (src.mtime_ns is not None and before.st_mtime_ns != src.mtime_ns):
                raise _changed(src)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            results = []

            def collect():
                cid, n, raw = window.popleft().result()
                sha.update(raw)  # the very bytes stored under cid
                results.append((cid, n))
                if progress:
                    progress(n)

            for seg in segs:
                window.append(pool.submit(self._one, fd, seg, src))
                if len(window) >= 2 * self.workers:
                    collect()
            while window:
                collect()
            after = os.stat(src.path)
            if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns,
                                                                   before.st_ino):
                raise _changed(src)
        finally:
            for f in window:  # no read may touch fd after it is closed
                f.cancel()
            for f in window:
                if not f.cancelled():
                    f.exception()
            os.close(fd)
        return results, sha.hexdigest()


def _changed(src: SourceFile) -> InvalidInputError:
    # What was read is self-consistent (each chunk is stored under the hash of the bytes read),
    # but it may mix the file's old and new contents: no version is recorded.
    return InvalidInputError(f"{src.rel} changed while being read",
                             hint="rerun once nothing writes to it (a training run saving a checkpoint?)")


def next_version(store: Store, model: str) -> str:
    """One more than the highest numeric label the model has had: live, or removed with ``rm``
    (a label is never given to other weights). Refs are listed before the removal markers, and
    ``rm`` writes its marker before it deletes the ref, so a concurrent rm is seen either way."""
    refs, unreadable = store.scan_refs(model)  # an unreadable ref's label is taken all the same
    labels = [r.version for r in refs] + [ver.rpartition("@")[2] for ver, _ in unreadable]
    labels += store.removed_labels(model)
    return str(max((int(v) for v in labels if v.isdigit()), default=0) + 1)


def latest_ref(store: Store, model: str):
    refs = store.list_refs(model)
    return max(refs, key=lambda r: r.created_at) if refs else None


def snapshot(
    store: Store,
    source: str | os.PathLike,
    model: str,
    *,
    version: str | None = None,
    parent: str | None = None,
    tags: tuple[str, ...] = (),
    message: str = "",
    exclude: tuple[str, ...] = (),
    source_info: dict | None = None,
    lineage: tuple[dict, ...] = (),
    metadata: dict | None = None,
    encode=None,
    progress=None,
    workers: int | None = None,
    files: list[SourceFile] | None = None,
) -> SnapshotResult:
    """Archive a model folder as ``model@version``.

    Args:
        store: an open Store.
        source: the folder (Hugging Face layout: shards, index json, config, tokenizer...).
        model: model name.
        version: version label; default the next integer.
        parent: parent version label; default the model's latest version; "" for none. New
            chunks are stored as deltas and casts of the parent's tensors; a version with no
            parent uses the base of its first weight-derived lineage edge instead (a fine-tune
            archived under its own name, ``--base-model bert@1``, costs what changed), else the
            archived model its card's ``base_model`` names (:func:`lineage_base`).
        tags, message: recorded in the manifest.
        exclude: glob patterns of files to leave out.
        source_info: what to record as the source (default: the local path).
        lineage: lineage edges recorded in the manifest.
        metadata: extracted card/config facts recorded in the manifest.
        encode: chunk encoder override (the engine's delta encoder).
        progress: callable(n_bytes) -> None, or an object with ``start(total)`` and ``__call__``.
        files: pre-scanned files (Hub snapshots pass blobs here).
    Returns:
        A SnapshotResult; the version is committed (visible) when this returns.

    Example:
        >>> # snapshot(Store.open("vault", create=True), "./bert", "bert")
    """
    ids.check_model_name(model)
    if version is not None:
        ids.check_version_name(version)
        if store.get_ref(model, version) is not None:
            raise AlreadyExistsError(f"{model}@{version} already exists",
                                     hint="pick another --version, or omit it for the next number")
        if store.was_removed(model, version):
            raise AlreadyExistsError(f"{model}@{version} was removed with `weightvault rm`, and a version label is "
                                     f"never given to other weights", hint="pick another --version, or omit it "
                                     "for the next number")
    store.backend.revalidate()  # the caller holds the store lock: what the store has is settled now
    for tag in tags:  # as `weightvault tag` checks them: a tag must be addressable as NAME@TAG
        ids.check_version_name(tag)
        if tag == version or store.get_ref(model, tag) is not None:
            raise InvalidInputError(f"tag {tag!r} would hide version {model}@{tag}", hint="choose another tag name")
    source = Path(source)
    files, plans, card_facts = prepare(store, source, exclude=exclude, files=files)
    parent_id = _resolve_parent(store, model, parent)
    metadata = {**card_facts, **(metadata or {})}
    if progress is not None and hasattr(progress, "start"):
        progress.start(sum(f.size for f in files))

    against = None
    if encode is None:  # the engine: deltas against the parent, casts, float codecs
        from weightvault.archive import engine

        base_id = parent_id or lineage_base(store, lineage, metadata.get("card"))
        encode = engine.make_encoder(store, base_id, model)
        if base_id and base_id != parent_id:
            against = f"{encode.base_manifest.model}@{encode.base_manifest.version}"
    writer = ChunkWriter(store, workers=workers, encode=encode)
    entries = []
    n_params = 0
    with ThreadPoolExecutor(max_workers=writer.workers, thread_name_prefix="wv-chunk") as pool:
        for src, fmt, tensors, segs in plans:
            chunks, sha = writer.write_file(pool, src, segs, progress)
            entries.append(FileEntry(src.rel, src.size, sha, fmt, tuple(chunks), tuple(tensors)))
            n_params += sum(math.prod(t.shape) for t in tensors)
    # Every chunk durable before the manifest names it; a chunk another writer
    # stored first (same ID, same content) is not counted as this version's.
    lost = store.backend.flush() or set()
    writer.forget_lost({k.rsplit("/", 1)[-1] for k in lost})
    stats = writer.stats
    stats.files = len(entries)
    stats.tensors = sum(len(e.tensors) for e in entries)
    stats.chunks = sum(len(e.chunks) for e in entries)
    stats.raw_bytes = sum(e.size for e in entries)

    meta = dict(metadata or {})
    meta.setdefault("n_parameters", n_params)
    meta.update(getattr(encode, "manifest_metadata", dict)())  # the engine's derivations
    auto = version is None
    version = version or next_version(store, model)
    while True:
        manifest = Manifest(
            model=model, version=version, created_at=now_iso(), files=tuple(entries), parent=parent_id,
            message=message, tags=tuple(tags), source=source_info or {"kind": "local", "path": str(source.absolute())},
            lineage=tuple(lineage), metadata=meta, chunking={"chunk_size": store.chunk_size},
        )
        mid = store.put_manifest(manifest)
        store.lock.check()  # a lease that ran out (object storage): gc may have swept what this reused
        if store.create_ref(model, version, mid):
            return SnapshotResult(model, version, mid, manifest, stats, against)
        if not auto:
            raise AlreadyExistsError(f"{model}@{version} was created meanwhile by another process",
                                     hint="pick another --version")
        # a concurrent snapshot took the number: the next one, always higher (never the same again)
        version = str(max(int(version) + 1, int(next_version(store, model))))


def prepare(store: Store, source, *, exclude=(), files: list[SourceFile] | None = None):
    """Check a folder before anything is written: bad input leaves nothing behind.

    Lists its files (names validated), refuses pickles, parses every
    safetensors header strictly and reads the model card and config.json
    facts (a malformed card is refused here). Reads headers, not weights.

    Returns:
        (files, plans: [(file, format, tensors, segments)], card/config facts).
    """
    source = Path(source)
    files = files if files is not None else scan_folder(source, tuple(exclude))
    if not files:
        raise InvalidInputError(f"{source} has no files to archive")
    seen_rel: set[str] = set()
    for f in files:  # two entries with one path: one file's bytes lost, the version unindexable
        if f.rel in seen_rel:
            raise InvalidInputError(f"{f.rel}: two files would be archived under this name (listed twice)",
                                    hint="--exclude one of them")
        seen_rel.add(f.rel)
    for f in files:
        if looks_pickled(f.path):
            from weightvault.archive.pickle_convert import _hint_for

            hint = _hint_for(f.rel)  # training_args.bin and friends: not weights, just leave them out
            raise PickleRefusedError(f.rel, **({"hint": hint} if hint else {}))
    plans = [(f, *plan_segments(f, store.chunk_size)) for f in files]
    return files, plans, card.read_metadata(files)


# Lineage relations whose version is made from its base's weights. A distilled student learnt
# from its teacher's outputs, not its weights: no delta reference.
WEIGHT_RELATIONS = ("finetune", "adapter", "merge", "quantized", "cast")


def lineage_base(store: Store, lineage, card: dict | None = None) -> str | None:
    """The manifest a parentless version is encoded against, or None.

    The in-store base of its first weight-derived lineage edge (an ``hf:ORG/NAME@COMMIT`` edge
    counts when that commit of the repo is archived, under its repo id as ``snapshot hf:`` names
    it; ``hf:ORG/NAME`` means its latest version); with no lineage recorded, the latest version of
    a model named as the card's ``base_model``. Bases not in the store and damaged ones are skipped.
    """
    candidates = []
    for e in lineage:
        if e.get("relation") not in WEIGHT_RELATIONS:
            continue
        if e.get("base"):
            candidates.append(e["base"])
        elif isinstance(e.get("base_ref"), str) and e["base_ref"].startswith("hf:"):
            found = _archived_hub_version(store, e["base_ref"])
            if found:
                candidates.append(found)
    card = card or {}
    if not lineage and (card.get("base_model_relation") or "finetune") in WEIGHT_RELATIONS:
        for name in card.get("base_model") or ():
            try:
                ref = latest_ref(store, ids.check_model_name(name))
            except InvalidNameError:  # not a model name this store can hold
                continue
            if ref is not None:
                candidates.append(ref.manifest_id)
    for base in candidates:
        try:
            store.get_manifest(base)
        except IntegrityError:
            continue
        return base
    return None


def _archived_hub_version(store: Store, base_ref: str) -> str | None:
    """The manifest of ``hf:ORG/NAME[@COMMIT]`` archived in this store under its repo id (the
    version whose recorded source is that commit; with no commit, the latest), or None."""
    repo, _, commit = base_ref[len("hf:"):].partition("@")
    try:
        refs = store.list_refs(ids.check_model_name(repo))
    except InvalidNameError:
        return None
    for r in sorted(refs, key=lambda r: r.created_at, reverse=True):
        if not commit:
            return r.manifest_id
        try:
            src = store.get_manifest(r.manifest_id).source or {}
        except IntegrityError:
            continue
        if src.get("kind") == "hf" and src.get("repo") == repo and src.get("revision") == commit:
            return r.manifest_id
    return None


def _resolve_parent(store: Store, model: str, parent: str | None) -> str | None:
    if parent == "":
        return None
    if parent is None:
        ref = latest_ref(store, model)
        return ref.manifest_id if ref else None
    if "@" in parent:
        raise InvalidInputError(
            f"--parent takes a version of {model} (a label such as 3), not {parent}",
            hint=f"to store {model} as a fine-tune of {parent}, pass --base-model {parent} --relation finetune")
    ref = store.get_ref(model, parent)
    if ref is None:
        raise VersionNotFoundError(model, parent)
    return ref.manifest_id
