"""The Store: a repository folder of chunks, manifests, refs and events.

Layout (docs/design.md is the spec)::

    config.json                      format version, store id, hash, chunk size
    chunks/ab/ab12…                  chunk containers, named by BLAKE3 of raw bytes
    manifests/ab/ab12…               snapshot manifests, named by BLAKE3 of their bytes
    events/ab/ab12…                  metadata events, named by BLAKE3 of their bytes
    refs/<model>/<version>           the claim model@version -> manifest, created once
    catalog.duckdb                   the DuckDB index (rebuildable from the above)
    locks/  tmp/                     lock files; temp files of in-flight writes
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from weightvault.archive import codecs, ids
from weightvault.archive.backend import Backend, LocalBackend
from weightvault.archive.locking import FileLock
from weightvault.archive.manifest import Manifest
from weightvault.errors import (
    ChunkCorruptError,
    ChunkMissingError,
    IntegrityError,
    InvalidInputError,
    InvalidNameError,
    ManifestCorruptError,
    StoreFormatError,
    StoreNotFoundError,
    UnsupportedStoreVersionError,
)

STORE_TYPE = "weightvault.store"
STORE_FORMAT = 1
SUPPORTED_FORMATS = (1,)
DEFAULT_CHUNK_SIZE = 4 << 20  # 4 MiB: bounded memory per worker; a partly changed tensor shares the rest


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def default_store_path() -> Path:
    """``$WEIGHTVAULT_STORE``, else ``$XDG_DATA_HOME/weightvault/store``, else ``~/.local/share/weightvault/store``."""
    env = os.environ.get("WEIGHTVAULT_STORE")
    if env:
        return env if env.startswith("s3://") else Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "weightvault" / "store"


@dataclass(frozen=True)
class RefRecord:
    """A version name's claim.

    Attributes:
        model: model name.
        version: version label.
        manifest_id: the manifest it names.
        created_at: when the claim was made.
    """

    model: str
    version: str
    manifest_id: str
    created_at: str


def _ref_key(model: str, version: str) -> str:
    # '~' cannot occur in a model name, so org/name flattens reversibly.
    return f"refs/{model.replace('/', '~')}/{version}"


log = logging.getLogger("weightvault")
_WARNED_REFS: set[str] = set()  # unreadable refs warned about in this process


def _removed_key(model: str, version: str) -> str:
    return f"removed/{model.replace('/', '~')}/{version}"


def fanout(prefix: str, object_id: str) -> str:
    return f"{prefix}/{object_id[:2]}/{object_id}"


class Store:
    """An opened store. Create with :meth:`init` or :meth:`open`.

    >>> # store = Store.open("/data/vault", create=True)
    """

    def __init__(self, root: Path, backend: Backend, config: dict):
        self.root = root
        self.backend = backend
        self.config = config
        self.lock = FileLock(root / "locks" / "store.lock", f"store {root}")

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike, **options) -> "Store":
        if str(path).startswith("s3://"):  # object storage: archive/s3.py (options: endpoint=)
            from weightvault.archive import s3

            return s3.open_store(cls, str(path), create=True, **options)
        root = Path(path).expanduser().absolute()
        backend = LocalBackend(root)
        if backend.has("config.json"):
            return cls.open(root)
        root.mkdir(parents=True, exist_ok=True)
        import uuid  # here only: 5 ms of every CLI call's imports

        config = {
            "type": STORE_TYPE, "format": STORE_FORMAT, "id": uuid.uuid4().hex,
            "created_at": now_iso(), "hash": ids.HASH_NAME, "chunk_size": DEFAULT_CHUNK_SIZE,
        }
        backend.put("config.json", json.dumps(config, indent=2).encode(), exclusive=True)
        return cls.open(root)

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False, **options) -> "Store":
        if str(path).startswith("s3://"):
            from weightvault.archive import s3

            return s3.open_store(cls, str(path), create=create, **options)
        root = Path(path).expanduser().absolute()
        backend = LocalBackend(root)
        try:
            raw = backend.get("config.json")
        except (FileNotFoundError, NotADirectoryError):
            if create:
                return cls.init(root)
            raise StoreNotFoundError(str(root)) from None
        return cls(root, backend, cls.parse_config(raw, str(root)))

    @staticmethod
    def parse_config(raw: bytes, root: str) -> dict:
        """Validate a store's config.json; raise a typed error naming ``root`` when it is not one we read."""
        try:
            config = json.loads(raw)
            fmt = config["format"]
            if config.get("type") != STORE_TYPE:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise StoreFormatError(f"{root}/config.json is not a weightvault store config",
                                   hint="point --store at a weightvault store") from None
        if fmt not in SUPPORTED_FORMATS:
            raise UnsupportedStoreVersionError(str(root), fmt, SUPPORTED_FORMATS)
        if config.get("hash") != ids.HASH_NAME:
            raise UnsupportedStoreVersionError(str(root), f"hash {config.get('hash')}", ids.HASH_NAME)
        return config

    @property
    def chunk_size(self) -> int:
        return int(self.config.get("chunk_size", DEFAULT_CHUNK_SIZE))

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    # -- chunks --------------------------------------------------------------

    def chunk_key(self, chunk_id: str) -> str:
        return fanout("chunks", chunk_id)

    def has_chunk(self, chunk_id: str) -> bool:
        return self.backend.has(self.chunk_key(chunk_id))

    def put_chunk(self, chunk_id: str, enc: codecs.EncodedChunk) -> bool:
        """Store a chunk once: False when another writer stored it first (its name is claimed atomically)."""
        return self.backend.put(self.chunk_key(chunk_id), enc.container, exclusive=True)

    def chunk_problem(self, chunk_id: str, raw_len: int, sound: set | None = None) -> str | None:
        """Why the stored container of ``chunk_id`` cannot give back its ``raw_len`` raw bytes
        (missing, header unreadable or naming another chunk, another raw length, truncated; or,
        for a delta, any of that in a chunk of its base chain), or None. Reads a few KiB per
        chunk of the chain: what ``verify --structure`` checks, not a decode.

        ``sound``: chunks already found sound (a base shared by many deltas is read once); the
        chunks this call finds sound are added to it."""
        sound = set() if sound is None else sound
        chain, cid, want = [], chunk_id, raw_len
        while cid not in sound:
            try:
                h, size = self.chunk_header(cid)
            except IntegrityError as e:
                problem = getattr(e, "reason", None) or str(e)
                return problem if cid == chunk_id else f"its delta base {cid} is damaged: {problem}"
            problem = (f"container raw_len {h.raw_len} != {want}" if want is not None and h.raw_len != want
                       else h.size_problem(size))
            if problem is not None:
                return problem if cid == chunk_id else f"its delta base {cid} is damaged: {problem}"
            chain.append(cid)
            if not h.base or h.base in chain:
                break  # a full chunk; a header naming a base already on the chain fails at decode
            cid, want = h.base, None
        sound.update(chain)
        return None

    def replace_chunk(self, chunk_id: str, enc: codecs.EncodedChunk) -> None:
        """Store a chunk over a damaged copy (atomic rename). Only for a full encoding of the
        chunk's own raw bytes: its ID, and so every delta built on it, stays valid."""
        if enc.base:
            raise ValueError("a chunk stored over a damaged copy must not depend on another chunk")
        self.backend.put(self.chunk_key(chunk_id), enc.container)

    def get_container(self, chunk_id: str) -> bytes:
        try:
            return self.backend.get(self.chunk_key(chunk_id))
        except FileNotFoundError:
            raise ChunkMissingError(chunk_id) from None

    def read_chunk(self, chunk_id: str, expected_len: int | None = None) -> bytes:
        """Return a chunk's raw bytes, verified against its ID."""
        container = self.get_container(chunk_id)
        return codecs.decode_chunk(container, chunk_id, self.read_chunk, expected_len=expected_len)

    def read_chunk_into(self, chunk_id: str, dest) -> None:
        """Decode a chunk straight into ``dest`` (writable, its raw length), verified against its ID."""
        codecs.decode_chunk_into(self.get_container(chunk_id), chunk_id, dest, self.read_chunk)

    def chunk_header(self, chunk_id: str) -> tuple[codecs.ChunkHeader, int]:
        """Read only a container's header: (parsed header, stored size)."""
        key = self.chunk_key(chunk_id)
        info = self.backend.stat(key)
        if info is None:
            raise ChunkMissingError(chunk_id)
        head = self.backend.get_range(key, 0, 4096)
        n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
        if n < 0 or 8 + n > info.size or n > 1 << 20:
            raise ChunkCorruptError(chunk_id, "container header length is invalid")
        if len(head) < 8 + n:
            head = self.backend.get_range(key, 0, 8 + n)
        return _parse_head_only(head, info.size, chunk_id), info.size

    def list_chunks(self):
        """Yield :class:`ObjectInfo` for every stored chunk."""
        for info in self.backend.list("chunks/"):
            name = info.key.rsplit("/", 1)[-1]
            if ids.is_id(name):
                yield info

    # -- manifests -----------------------------------------------------------

    def put_manifest(self, manifest: Manifest) -> str:
        data = manifest.to_bytes()
        mid = ids.content_id(data)
        self.backend.put(fanout("manifests", mid), data)
        return mid

    def get_manifest(self, manifest_id: str) -> Manifest:
        try:
            data = self.backend.get(fanout("manifests", manifest_id))
        except FileNotFoundError:
            raise ManifestCorruptError(manifest_id, "missing from the store") from None
        return Manifest.from_bytes(data, manifest_id)

    def list_manifest_ids(self) -> list[str]:
        return [i.key.rsplit("/", 1)[-1] for i in self.backend.list("manifests/") if ids.is_id(i.key.rsplit("/", 1)[-1])]

    # -- refs ----------------------------------------------------------------

    def create_ref(self, model: str, version: str, manifest_id: str) -> bool:
        """Claim ``model@version`` for a manifest; False when the name is taken."""
        body = json.dumps({"model": model, "version": version, "manifest": manifest_id, "created_at": now_iso()})
        return self.backend.put(_ref_key(model, version), body.encode(), exclusive=True)

    def delete_ref(self, model: str, version: str) -> bool:
        return self.backend.delete(_ref_key(model, version))

    def get_ref(self, model: str, version: str) -> RefRecord | None:
        try:
            return self._parse_ref(self.backend.get(_ref_key(model, version)), _ref_key(model, version))
        except FileNotFoundError:
            return None

    def _parse_ref(self, data: bytes, key: str) -> RefRecord:
        try:
            d = json.loads(data)
            return RefRecord(d["model"], d["version"], ids.check_id(d["manifest"]), d["created_at"])
        except (ValueError, KeyError, TypeError, InvalidNameError) as e:
            raise StoreFormatError(f"ref {key} is unreadable ({e})", hint="run `weightvault verify`") from None

    def mark_removed(self, model: str, version: str, event_id: str) -> None:
        """Record that ``model@version`` was removed (``rm``), before its ref goes: the label is
        never given to other weights (``removed/<model>/<version>``, naming the removal event)."""
        body = json.dumps({"model": model, "version": version, "event": event_id, "at": now_iso()})
        self.backend.put(_removed_key(model, version), body.encode())

    def was_removed(self, model: str, version: str) -> bool:
        return self.backend.has(_removed_key(model, version))

    def removed_labels(self, model: str) -> set[str]:
        """Version labels of ``model`` that ``rm`` removed (from this release on)."""
        prefix = f"removed/{model.replace('/', '~')}/"
        return {i.key[len(prefix):] for i in self.backend.list(prefix)}

    def scan_refs(self, model: str | None = None) -> tuple[list[RefRecord], list[tuple[str, str]]]:
        """Every readable ref (of ``model``, or all), and ``[(model@version, why)]`` for the refs
        whose content cannot be read (a disk fault, a stray write)."""
        prefix = f"refs/{model.replace('/', '~')}/" if model else "refs/"
        out, bad = [], []
        for info in self.backend.list(prefix):
            try:
                out.append(self._parse_ref(self.backend.get(info.key), info.key))
            except (StoreFormatError, FileNotFoundError) as e:
                if isinstance(e, FileNotFoundError):
                    continue  # removed while listing
                name, _, version = info.key[len("refs/"):].rpartition("/")
                bad.append((f"{name.replace('~', '/')}@{version}", e.message))
        return out, bad

    def list_refs(self, model: str | None = None, *, strict: bool = False) -> list[RefRecord]:
        """Every readable ref. An unreadable one is skipped with a warning (the other versions stay
        usable; `verify` lists it, `rm` removes it), or, with ``strict`` (gc), refused."""
        out, bad = self.scan_refs(model)
        for ver, why in bad:
            if strict:
                raise StoreFormatError(why, hint=f"run `weightvault verify`; `weightvault rm {ver}` removes it")
            if ver not in _WARNED_REFS:
                _WARNED_REFS.add(ver)
                log.warning("%s (skipped; `weightvault rm %s` removes it)", why, ver)
        return out

    # -- events --------------------------------------------------------------

    def put_event(self, event_type: str, payload: dict, *, at: str | None = None) -> str:
        """Write an immutable metadata event; returns its ID."""
        body = {"type": event_type, "at": at or now_iso(), "payload": payload}
        try:  # NaN and Infinity are not JSON: jq, JSON.parse and DuckDB's JSON reader refuse them
            data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False).encode()
        except ValueError:
            raise InvalidInputError(f"the {event_type} record holds NaN or Infinity, which JSON cannot carry",
                                    hint="give finite numbers (or leave the field out)") from None
        eid = ids.content_id(data)
        self.backend.put(fanout("events", eid), data)
        return eid

    def get_event(self, event_id: str) -> dict:
        from weightvault.errors import EventCorruptError

        data = self.backend.get(fanout("events", event_id))
        if ids.content_id(data) != event_id:
            raise EventCorruptError(event_id, f"content of {fanout('events', event_id)} does not match its ID "
                                              "(the file was altered or damaged)")
        return json.loads(data)

    def list_event_ids(self) -> list[str]:
        return [i.key.rsplit("/", 1)[-1] for i in self.backend.list("events/") if ids.is_id(i.key.rsplit("/", 1)[-1])]


def _parse_head_only(head: bytes, stored_size: int, chunk_id: str) -> codecs.ChunkHeader:
    """Parse a container header without its payload (for sizes and codecs)."""
    try:
        n = int.from_bytes(head[:8], "little")
        obj = json.loads(head[8 : 8 + n])
        meta = obj.pop("__metadata__")
        streams = {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in obj.items()}
    except (ValueError, KeyError, TypeError):
        raise ChunkCorruptError(chunk_id, "container header unreadable") from None
    if meta.get("id") != chunk_id or "raw_len" not in meta or "codec" not in meta:
        raise ChunkCorruptError(chunk_id, "container metadata does not name this chunk")
    return codecs.ChunkHeader(dict(meta), streams)
