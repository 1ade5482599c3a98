"""Manifests: the immutable, hash-named record of one snapshot.

A manifest lists every file of a version with its size and sha256, the chunks
that rebuild it in order, and for safetensors files every tensor with its
dtype, shape, byte range and the slice of the file's chunk list that holds
it. It is serialised as canonical JSON (sorted keys, no spaces, UTF-8) and
stored under ``manifests/<id[:2]>/<id>`` where ``id`` is the BLAKE3 of those
bytes. Its JSON schema is ``schemas/manifest.schema.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from weightvault.archive import ids
from weightvault.errors import ManifestCorruptError

MANIFEST_TYPE = "weightvault.manifest"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file.

    Attributes:
        name: tensor name.
        dtype: safetensors dtype.
        shape: shape.
        begin: absolute byte offset in its file.
        end: absolute end offset (exclusive).
        first_chunk: index in the file's chunk list of its first chunk.
        n_chunks: how many consecutive chunks hold it (0 for an empty tensor).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    first_chunk: int
    n_chunks: int

    def to_dict(self) -> dict:
        return {
            "name": self.name, "dtype": self.dtype, "shape": list(self.shape),
            "offsets": [self.begin, self.end], "chunks": [self.first_chunk, self.n_chunks],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TensorEntry":
        return cls(d["name"], d["dtype"], tuple(d["shape"]), d["offsets"][0], d["offsets"][1], d["chunks"][0], d["chunks"][1])


@dataclass(frozen=True)
class FileEntry:
    """One file of a version.

    Attributes:
        path: POSIX path relative to the model folder.
        size: size in bytes.
        sha256: hex sha256 of the whole file (Hub / LFS compatible).
        format: ``safetensors`` or ``blob``.
        chunks: ``(chunk_id, raw_length)`` pairs that concatenate to the file.
        tensors: for safetensors files, every tensor, in file order.
    """

    path: str
    size: int
    sha256: str
    format: str
    chunks: tuple[tuple[str, int], ...]
    tensors: tuple[TensorEntry, ...] = ()

    def to_dict(self) -> dict:
        d = {"path": self.path, "size": self.size, "sha256": self.sha256, "format": self.format,
             "chunks": [[c, n] for c, n in self.chunks]}
        if self.tensors:
            d["tensors"] = [t.to_dict() for t in self.tensors]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FileEntry":
        return cls(d["path"], d["size"], d["sha256"], d["format"],
                   tuple((c, n) for c, n in d["chunks"]),
                   tuple(TensorEntry.from_dict(t) for t in d.get("tensors", ())))

    def tensor_chunks(self, t: TensorEntry) -> tuple[tuple[str, int], ...]:
        return self.chunks[t.first_chunk : t.first_chunk + t.n_chunks]


@dataclass(frozen=True)
class Manifest:
    """A snapshot of one model version.

    Attributes:
        model: model name.
        version: version label, unique within the model.
        created_at: ISO-8601 UTC timestamp.
        files: every file, sorted by path.
        parent: manifest ID of the parent version, or None.
        message: free text.
        tags: tags given at snapshot time.
        source: where it came from: ``{"kind": "local", "path": ...}`` or
            ``{"kind": "hf", "repo": ..., "revision": <40-hex commit>}``.
        lineage: edges to other versions recorded at snapshot time, e.g.
            ``{"relation": "finetune", "base": "<manifest id>"}``.
        metadata: facts extracted at snapshot (model card front matter,
            config.json fields, parameter count), see docs/design.md.
        chunking: chunking parameters used (``{"chunk_size": ...}``).
    """

    model: str
    version: str
    created_at: str
    files: tuple[FileEntry, ...]
    parent: str | None = None
    message: str = ""
    tags: tuple[str, ...] = ()
    source: dict = field(default_factory=dict)
    lineage: tuple[dict, ...] = ()
    metadata: dict = field(default_factory=dict)
    chunking: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "type": MANIFEST_TYPE, "format": MANIFEST_FORMAT, "hash": ids.HASH_NAME,
            "model": self.model, "version": self.version, "created_at": self.created_at,
            "parent": self.parent, "message": self.message, "tags": list(self.tags),
            "source": self.source, "lineage": list(self.lineage), "metadata": self.metadata,
            "chunking": self.chunking, "files": [f.to_dict() for f in self.files],
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON: the bytes that are hashed and stored."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        return cls(
            model=d["model"], version=d["version"], created_at=d["created_at"],
            files=tuple(FileEntry.from_dict(f) for f in d["files"]),
            parent=d.get("parent"), message=d.get("message", ""), tags=tuple(d.get("tags", ())),
            source=d.get("source", {}), lineage=tuple(d.get("lineage", ())),
            metadata=d.get("metadata", {}), chunking=d.get("chunking", {}),
        )

    @classmethod
    def from_bytes(cls, data: bytes, manifest_id: str) -> "Manifest":
        """Parse stored bytes, checking their hash and structure."""
        if ids.content_id(data) != manifest_id:
            raise ManifestCorruptError(manifest_id, "content hash does not match its ID")
        try:
            d = json.loads(data)
            if d.get("type") != MANIFEST_TYPE:
                raise ValueError("not a weightvault manifest")
            if d.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"manifest format {d.get('format')!r} is not supported")
            m = cls.from_dict(d)
            _check_structure(m)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ManifestCorruptError(manifest_id, f"malformed: {e}") from None
        return m

    def file(self, path: str) -> FileEntry | None:
        for f in self.files:
            if f.path == path:
                return f
        return None

    def chunk_ids(self) -> set[str]:
        return {c for f in self.files for c, _ in f.chunks}

    @property
    def raw_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _check_structure(m: Manifest) -> None:
    for f in m.files:
        if sum(n for _, n in f.chunks) != f.size:
            raise ValueError(f"chunks of {f.path} do not add up to its size")
        for c, _ in f.chunks:
            if not ids.is_id(c):
                raise ValueError(f"bad chunk id in {f.path}")
        for t in f.tensors:
            if t.first_chunk < 0 or t.first_chunk + t.n_chunks > len(f.chunks):
                raise ValueError(f"tensor {t.name} points outside the chunk list")
