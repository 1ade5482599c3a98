"""The Vault: a store plus its catalog, the one object the CLI and users drive.

>>> from weightvault import Vault
>>> # v = Vault.open("vault")            # created on first use
>>> # v.snapshot("./bert", model="bert") # -> SnapshotResult
>>> # v.sql("FROM version_storage")      # -> (columns, rows)
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from weightvault.archive import ids
from weightvault.archive.manifest import Manifest
from weightvault.archive.store import Store, default_store_path
from weightvault.errors import DiskFullError, ModelNotFoundError, QueryError, VersionNotFoundError, WeightvaultError

NUMPY_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "uint8", "F8_E5M2": "uint8", "F8_E8M0": "uint8", "C64": "complex64",
}

# ref resolvers for NAME@TAG; the provenance module adds tag lookup here:
# fn(vault, model, label) -> manifest id or None
REF_RESOLVERS: list = []


@dataclass(frozen=True)
class ResolvedVersion:
    """A version reference resolved against the store.

    Attributes:
        model: model name.
        version: version label.
        manifest_id: its manifest ID.
    """

    model: str
    version: str
    manifest_id: str

    def __str__(self) -> str:
        return f"{self.model}@{self.version}"


class Vault:
    """A store and its catalog."""

    def __init__(self, store: Store, *, lock_timeout: float | None = None):
        self.store = store
        self.lock_timeout = lock_timeout
        self._catalog = None
        self._manifests: dict[str, Manifest] = {}

    @property
    def catalog(self):
        """The store's Catalog, made on first use: a restore or a load never imports the catalog
        modules (12-20 ms of a CLI call on the bench machine)."""
        if self._catalog is None:
            from weightvault.catalog import Catalog

            self._catalog = Catalog(self.store, lock_timeout=self.lock_timeout)
        return self._catalog

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, create: bool = True, **kw) -> "Vault":
        """Open the store at ``path`` (default: ``$WEIGHTVAULT_STORE`` or the per-user folder)."""
        return cls(Store.open(path or default_store_path(), create=create), **kw)

    @classmethod
    def init(cls, path: str | os.PathLike | None = None, **kw) -> "Vault":
        v = cls(Store.init(path or default_store_path()), **kw)
        v.catalog.sync()
        return v

    # -- names ---------------------------------------------------------------

    def resolve(self, ref) -> ResolvedVersion:
        """Resolve ``NAME``, ``NAME@V`` or ``NAME@TAG`` to a committed version."""
        r = ids.parse_ref(ref) if isinstance(ref, str) else ref
        if r.version is None:
            from weightvault.archive.snapshot import latest_ref

            rec = latest_ref(self.store, r.model)
            if rec is None:
                raise ModelNotFoundError(r.model)
            return ResolvedVersion(rec.model, rec.version, rec.manifest_id)
        rec = self.store.get_ref(r.model, r.version)
        if rec is not None:
            return ResolvedVersion(rec.model, rec.version, rec.manifest_id)
        from weightvault.catalog.indexer import load_plugins

        load_plugins()  # plugins add resolvers (NAME@TAG)
        for fn in REF_RESOLVERS:
            mid = fn(self, r.model, r.version)
            if mid:  # a resolver answers from the catalog, synced with the refs before it reads
                m = self.manifest_by_id(mid)
                rec = self.store.get_ref(m.model, m.version)
                if rec is None or rec.manifest_id != mid:  # removed since: never act on it
                    raise VersionNotFoundError(r.model, r.version,
                                               hint=f"{r.model}@{r.version} named {m.model}@{m.version}, which "
                                                    f"was removed; list versions with `weightvault log {r.model}`")
                return ResolvedVersion(m.model, m.version, mid)
        if not self.store.list_refs(r.model):
            raise ModelNotFoundError(r.model)
        raise VersionNotFoundError(r.model, r.version)

    def manifest_by_id(self, manifest_id: str) -> Manifest:
        m = self._manifests.get(manifest_id)
        if m is None:
            m = self._manifests[manifest_id] = self.store.get_manifest(manifest_id)
        return m

    def manifest(self, ref) -> Manifest:
        return self.manifest_by_id(self.resolve(ref).manifest_id)

    # -- write ---------------------------------------------------------------

    def snapshot(self, source, model: str, *, base_model: str | None = None, relation: str = "finetune",
                 datasets=(), sync_catalog: bool = True, **kw):
        """Archive a folder as a new version; see :func:`weightvault.archive.snapshot.snapshot`.

        Args:
            base_model: ``NAME@V`` in this store or ``hf:ORG/NAME``, as ``--base-model``: records a
                lineage edge of ``relation``, and a model's first version is stored as deltas and
                casts of that base.
            datasets: ``"NAME[@V]:ROLE"`` strings, as ``--dataset``.
            sync_catalog: False leaves the catalog to the next read or sync (it is an index of the
                store, which already holds the version): :meth:`snapshot_series` updates it once.

        >>> # v.snapshot("./bert-ft", "bert-ft", base_model="bert@1", datasets=["alpaca:finetune"])
        """
        from weightvault.archive import hub
        from weightvault.archive.snapshot import snapshot

        if base_model or datasets:  # resolved and checked before anything is written
            from weightvault import provenance as pv

            kw = pv.snapshot_provenance(self, kw, base_model=base_model, relation=relation, datasets=datasets)

        if hub.is_hub_ref(source):  # hf:ORG/NAME[@REV]: pinned commit, blobs checked against etags
            h = hub.fetch(source, exclude=tuple(kw.get("exclude", ())))
            source, kw["files"] = h.folder, list(h.files)
            kw.setdefault("source_info", h.source_info)
        convert = kw.pop("convert_pickle", False)
        self.catalog.prefetch()  # the catalog's duckdb import overlaps the chunk work
        with self.store.lock.held(shared=True, timeout=self.lock_timeout, op=f"snapshot {model}"):
            if convert:  # pickles -> scanned, weights_only load, safetensors (archive/pickle_convert.py)
                from weightvault.archive.pickle_convert import converted

                from weightvault.archive.backend import LocalBackend

                # local stores: in the store's tmp/ (same file system, swept by gc), not $TMPDIR
                tmp_dir = self.store.root / LocalBackend.TMP if isinstance(self.store.backend, LocalBackend) else None
                with converted(source, kw, tmp_dir=tmp_dir) as ckw:
                    result = snapshot(self.store, source, model, **ckw)
            else:
                result = snapshot(self.store, source, model, **kw)
        if sync_catalog:
            self._sync_series([result])
        return result

    def snapshot_series(self, sources, model: str, *, parent: str | None = None, progress=None, **kw) -> list:
        """Archive several folders, in the order given, as successive versions of ``model``.

        Each version is the parent of the next (``parent`` is the first one's: default the
        model's latest version, '' for none), so a run's checkpoints are stored as deltas of
        one another. Every local folder is checked first (files, safetensors headers, model
        card; see :func:`weightvault.archive.snapshot.prepare`), so a bad one refuses the
        whole series before anything is written; with ``convert_pickle`` that includes each
        pickle's archive shape and opcodes (weights are loaded only as each is archived). Hub
        references are checked as they come. One call pays the start-up and the catalog update
        once (bench/series_call.py: the six-version MiniLM series in 2.86 s against 4.34 s
        as six CLI calls, build machine); if a later folder fails, the versions already
        archived stay, each whole, and are in the catalog.

        Args:
            sources: folders (or ``hf:`` references), oldest first.
            model: the model they are versions of.
            parent: the first version's parent label.
            progress: one callable(n_bytes) with ``start(total)`` over all the local folders.
            **kw: as :meth:`snapshot` (message, exclude, lineage, metadata...), for every
                version; ``version`` and ``tags`` name one version, so only with one source.
        Returns:
            The SnapshotResults, in order.

        >>> # v.snapshot_series(["run/checkpoint-500", "run/checkpoint-1000"], "run7")
        """
        from weightvault.archive import hub
        from weightvault.archive.snapshot import prepare
        from weightvault.errors import UsageError

        sources = list(sources)
        if not sources:
            raise UsageError("no folders to archive")
        if len(sources) > 1:
            for key, what, hint in (
                    ("version", "--version", "archive them without it (versions are numbered in order), or "
                                             "one folder per call to choose each label"),
                    ("tags", "--tag", "archive them without it, then `weightvault tag NAME@V TAG`")):
                if kw.get(key):
                    raise UsageError(f"{what} names one version, and {len(sources)} folders were given", hint=hint)
        total = 0
        for source in sources:
            if hub.is_hub_ref(source):
                continue
            if kw.get("convert_pickle"):
                from weightvault.archive import pickle_convert

                kept, pickles = pickle_convert.check(source, kw)
                if kept or not pickles:
                    prepare(self.store, source, files=kept)
                continue  # its size is known once converted
            files, _, _ = prepare(self.store, source, exclude=kw.get("exclude", ()))
            total += sum(f.size for f in files)
        if progress is not None and hasattr(progress, "start") and total:
            progress.start(total)  # hub and convert_pickle sources add to it unannounced
        # each snapshot only adds bytes: a plain function has no start() to reset the total with
        each = (lambda n: progress(n)) if progress is not None else None
        results: list = []
        try:
            for source in sources:
                results.append(self.snapshot(source, model, sync_catalog=False, progress=each,
                                             parent=results[-1].version if results else parent, **kw))
        except BaseException:
            if results:  # the catalog shows what was archived; the error that stopped the series wins
                try:
                    self._sync_series(results)
                except Exception as e:  # noqa: BLE001 - the next read syncs the catalog anyway
                    import logging

                    logging.getLogger("weightvault").warning("catalog not updated (%s); the next read will", e)
            raise
        self._sync_series(results)
        return results

    def _sync_series(self, results) -> None:
        """Index committed versions; a failure here says they are archived (a rerun would archive
        them twice)."""
        from weightvault.errors import CatalogBehindError

        chunk_info = {}
        for r in results:
            chunk_info.update(r.stats.new_chunk_info)
            chunk_info.update(r.stats.healed_chunk_info)
        try:
            self.catalog.sync(chunk_info=chunk_info)
        except (WeightvaultError, OSError) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                e = DiskFullError(e.filename or "the catalog")
            raise CatalogBehindError([f"{r.model}@{r.version}" for r in results], e) from e

    # -- read ----------------------------------------------------------------

    def restore(self, ref, dest, *, files=None, force=False, progress=None, fsync=False):
        """Restore a version into ``dest``, every file checked against its sha256.

        ``fsync``: flush every file to disk before renaming it into place (off: as cp or git checkout).
        """
        from weightvault.archive.restore import restore

        m = self.manifest(ref)
        with self.store.lock.held(shared=True, timeout=self.lock_timeout, op=f"restore {ref}"):
            return restore(self.store, m, dest, files=files, force=force, progress=progress, fsync=fsync)

    def read_file(self, ref, path: str) -> bytes:
        """Return one file's bytes, verified against its sha256 (``ref``: NAME@V, or a Manifest)."""
        import hashlib

        from weightvault.archive.restore import iter_chunks
        from weightvault.errors import FileDigestMismatchError, FileNotInVersionError

        m = ref if isinstance(ref, Manifest) else self.manifest(ref)
        f = m.file(path)
        if f is None:
            raise FileNotInVersionError(str(ref), path)
        data = b"".join(iter_chunks(self.store, f.chunks))
        digest = hashlib.sha256(data).hexdigest()
        if digest != f.sha256:
            raise FileDigestMismatchError(path, f.sha256, digest)
        return data

    def read_tensor(self, ref, name: str, *, file: str | None = None):
        """Return one tensor as a numpy array without restoring anything else.

        BF16 and FP8 tensors come back as their bit patterns (uint16 / uint8),
        since numpy has no such dtypes; ``.view()`` them with ml_dtypes or torch.

        >>> # v.read_tensor("minilm@1", "embeddings.word_embeddings.weight").shape
        """
        import numpy as np

        from weightvault.archive.restore import read_tensor_bytes

        t, raw = read_tensor_bytes(self.store, self.manifest(ref), name, file)
        return np.frombuffer(raw, dtype=NUMPY_DTYPES.get(t.dtype, "uint8")).reshape(t.shape)

    def verify(self, ref=None, *, subset: float | None = None, progress=None, read_data: bool = True):
        """Check one version (or all); returns a VerifyReport.

        ``read_data`` (or a ``subset``) decodes and re-hashes chunks; without it
        only the structure is checked (manifests, chunk presence, headers, sizes).
        """
        from weightvault.archive.verify import check_structure, load_versions, verify

        broken = []
        if ref is not None:
            r = self.resolve(ref)
            manifests = {r.manifest_id: self.manifest_by_id(r.manifest_id)}
        else:
            manifests, broken = load_versions(self.store)
        with self.store.lock.held(shared=True, timeout=self.lock_timeout, op="verify"):
            if read_data or subset is not None:
                rep = verify(self.store, manifests, subset=subset, progress=progress)
            else:
                rep = check_structure(self.store, manifests, progress=progress)
        rep.broken_versions.extend(broken)
        return rep

    def query(self, query: str, params=None) -> tuple[list[str], list[tuple]]:
        """weightvault's own SQL on the catalog (read-only): as :meth:`sql`, on the catalog's own
        connection (no sandbox to attach: ~20 ms less per query). Not for users' SQL."""
        with self.catalog.read() as con:
            return _run_sql(con, query, params)[:2]

    def sql(self, query: str, params=None, *, types: bool = False) -> tuple[list[str], list[tuple]]:
        """Run SQL on the catalog (read-only); returns (column names, rows), and with ``types``
        (column names, rows, DuckDB type names) as a third item.

        The query reads the catalog and nothing else (``Catalog.read(sandboxed=True)``): no
        query can write a file (``COPY TO`` over a ref or a manifest would damage the store),
        attach a database or load an extension. For files, use the duckdb shell on
        ``weightvault catalog path``."""
        with self.catalog.read(sandboxed=True) as con:
            out = _run_sql(con, query, params)
        return out if types else out[:2]

    def store_bytes(self) -> int:
        """Bytes all chunk, manifest and event objects take on disk."""
        return sum(i.size for prefix in ("chunks/", "manifests/", "events/") for i in self.store.backend.list(prefix))

    @property
    def root(self) -> Path:
        return self.store.root


def _run_sql(con, query: str, params) -> tuple[list[str], list[tuple], list[str]]:
    """(column names, rows, DuckDB type names) of one query; a DuckDB error is one QueryError line."""
    from weightvault.catalog.connection import duckdb_module

    try:
        cur = con.execute(query, params or [])
    except duckdb_module().Error as e:
        first = str(e).splitlines()[0]
        hint = None
        if "read-only" in first:
            hint = ("the catalog is a read-only index of the store: record changes with weightvault's "
                    "commands (dataset add, link, tag, eval, rm), or query a copy made with "
                    "`weightvault catalog export`")
        elif "disabled" in first or "configuration has been locked" in first:
            hint = ("`weightvault sql` reads the catalog only (no files, settings or extensions); for "
                    "those, open it in the duckdb shell: duckdb -readonly \"$(weightvault catalog path)\"")
        raise QueryError(f"SQL error: {first}", hint=hint) from None
    if cur.description is None:
        return [], [], []
    return [d[0] for d in cur.description], cur.fetchall(), [str(d[1]) for d in cur.description]
