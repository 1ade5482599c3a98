"""Every error weightvault raises on purpose.

The library never prints or exits: it raises one of these, each carrying the
data a caller needs (the path, tensor or chunk at fault) and a ``hint`` that
names the next thing to try. The CLI turns them into one line and an exit code
(``weightvault/cli.py``); a traceback appears only with ``WEIGHTVAULT_DEBUG=1``.

Exit codes: 1 generic, 2 usage, 3 not found, 4 bad input, 5 integrity,
6 store format, 7 busy (lock), 8 disk full, 9 missing optional extra.
"""

from __future__ import annotations


class WeightvaultError(Exception):
    """Base class. ``str(err)`` is a one-line message; ``err.hint`` the next step."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:  # one line, always
        return " ".join(self.message.split("\n"))


class UsageError(WeightvaultError):
    """The command line or API call itself is malformed."""

    exit_code = 2


# -- not found ---------------------------------------------------------------


class NotFoundError(WeightvaultError):
    exit_code = 3


class StoreNotFoundError(NotFoundError):
    default_hint = "create one with `weightvault --store DIR init`"

    def __init__(self, path: str, **kw):
        super().__init__(f"no weightvault store at {path}", **kw)
        self.path = path


class ModelNotFoundError(NotFoundError):
    default_hint = "list models with `weightvault log`"

    def __init__(self, model: str, **kw):
        super().__init__(f"model {model!r} is not in the store", **kw)
        self.model = model


class VersionNotFoundError(NotFoundError):
    def __init__(self, model: str, version: str, **kw):
        kw.setdefault("hint", f"list its versions with `weightvault log {model}`")
        super().__init__(f"version {model}@{version} is not in the store", **kw)
        self.model = model
        self.version = version


class FileNotInVersionError(NotFoundError):
    def __init__(self, ref: str, path: str, **kw):
        kw.setdefault("hint", f"list its files with `weightvault show {ref}`")
        super().__init__(f"{ref} has no file {path!r}", **kw)
        self.ref = ref
        self.path = path


class DistillRunNotFoundError(NotFoundError):
    default_hint = 'list runs with `weightvault sql "FROM distill_runs"`'

    def __init__(self, run_id: str, **kw):
        super().__init__(f"distillation run {run_id!r} is not in the store", **kw)
        self.run_id = run_id


class TensorNotFoundError(NotFoundError):
    def __init__(self, ref: str, tensor: str, **kw):
        kw.setdefault("hint", f"list its tensors with `weightvault show {ref} --tensors`")
        super().__init__(f"{ref} has no tensor {tensor!r}", **kw)
        self.ref = ref
        self.tensor = tensor


# -- bad input ---------------------------------------------------------------


class InvalidInputError(WeightvaultError):
    """Input from the user or from a file they handed us is unusable."""

    exit_code = 4


class InvalidNameError(InvalidInputError):
    pass


class InvalidSafetensorsError(InvalidInputError):
    """A .safetensors file breaks the format; nothing of it is stored."""

    default_hint = "re-export the file with safetensors.save_file, or exclude it with --exclude"

    def __init__(self, path: str, reason: str, *, tensor: str | None = None, **kw):
        where = f"{path}: tensor {tensor!r}" if tensor else path
        super().__init__(f"{where}: invalid safetensors: {reason}", **kw)
        self.path = path
        self.reason = reason
        self.tensor = tensor


class UnsafePathError(InvalidInputError):
    """A file name would escape its folder (``..``, absolute, drive, ``.git``)."""

    default_hint = "rename the file; weightvault only archives paths inside the model folder"

    def __init__(self, path: str, reason: str, **kw):
        super().__init__(f"unsafe file name {path!r}: {reason}", **kw)
        self.path = path
        self.reason = reason


class PickleRefusedError(InvalidInputError):
    def __init__(self, path: str, **kw):
        kw.setdefault(
            "hint",
            "pass --convert-pickle to scan and convert it to safetensors, or --exclude it",
        )
        super().__init__(f"{path}: pickled checkpoint refused (unpickling runs code)", **kw)
        self.path = path


class RecordValidationError(InvalidInputError):
    """A JSON/YAML record (dataset, card) fails its schema; names the field."""

    def __init__(self, source: str, field: str, reason: str, **kw):
        super().__init__(f"{source}: field {field!r}: {reason}", **kw)
        self.source = source
        self.field = field
        self.reason = reason


class AlreadyExistsError(InvalidInputError):
    pass


class NotATransformersModelError(InvalidInputError):
    """A version cannot be rebuilt as a transformers model (no config.json, unknown architecture)."""

    default_hint = "load_teacher needs config.json with a model_type transformers knows; use `weightvault restore` instead"

    def __init__(self, ref: str, reason: str, **kw):
        super().__init__(f"{ref} is not a transformers model: {reason}", **kw)
        self.ref = ref
        self.reason = reason


class PromptFileError(InvalidInputError):
    """A prompt file line is not a JSON object with a string "prompt" or "text"; nothing is recorded."""

    default_hint = 'each line must be a JSON object like {"prompt": "..."} or {"text": "..."}'

    def __init__(self, path: str, line: int, reason: str, **kw):
        super().__init__(f"{path}:{line}: {reason}", **kw)
        self.path = path
        self.line = line
        self.reason = reason


# -- integrity -----------------------------------------------------------------


class IntegrityError(WeightvaultError):
    """Stored data does not match its recorded hash. Never silently ignored."""

    exit_code = 5
    default_hint = "run `weightvault verify` to see everything affected"


class ChunkCorruptError(IntegrityError):
    def __init__(self, chunk_id: str, reason: str, **kw):
        super().__init__(f"chunk {chunk_id}: {reason}", **kw)
        self.chunk_id = chunk_id
        self.reason = reason


class ChunkMissingError(IntegrityError):
    def __init__(self, chunk_id: str, **kw):
        super().__init__(f"chunk {chunk_id} is missing from the store", **kw)
        self.chunk_id = chunk_id


class DeltaBaseMissingError(ChunkMissingError):
    """A delta or cast chunk's base is gone; ``chunk_id`` is the missing base."""

    def __init__(self, base_id: str, needed_by: str, **kw):
        IntegrityError.__init__(self, f"chunk {base_id} is missing from the store "
                                f"(it is the delta base of chunk {needed_by})", **kw)
        self.chunk_id = base_id
        self.needed_by = needed_by


class EtagMismatchError(IntegrityError):
    """A Hub cache file does not hash to its etag (sha256 for LFS files, git sha1 otherwise)."""

    default_hint = "delete the file's blob from the Hugging Face cache and download the revision again"

    def __init__(self, path: str, etag: str, actual: str, *, kind: str = "digest", **kw):
        super().__init__(f"{path}: {kind} {actual[:16]} does not match its etag {etag[:16]}", **kw)
        self.path = path
        self.etag = etag
        self.actual = actual


class ManifestCorruptError(IntegrityError):
    def __init__(self, manifest_id: str, reason: str, **kw):
        super().__init__(f"manifest {manifest_id}: {reason}", **kw)
        self.manifest_id = manifest_id


class EventCorruptError(IntegrityError):
    """A stored event (a provenance, dataset or signature record) does not match its hash-name."""

    default_hint = "restore the event file from a backup, or remove it and run `weightvault catalog rebuild`"

    def __init__(self, event_id: str, reason: str, **kw):
        super().__init__(f"event {event_id}: {reason}", **kw)
        self.event_id = event_id


class FileDigestMismatchError(IntegrityError):
    def __init__(self, path: str, expected: str, actual: str, **kw):
        super().__init__(
            f"{path}: sha256 {actual[:16]}… does not match recorded {expected[:16]}…", **kw
        )
        self.path = path
        self.expected = expected
        self.actual = actual


# -- store format / environment ----------------------------------------------


class StoreFormatError(WeightvaultError):
    exit_code = 6


class UnsupportedStoreVersionError(StoreFormatError):
    default_hint = "upgrade weightvault (pip install -U weightvault) to open this store"

    def __init__(self, path: str, found, supported, **kw):
        super().__init__(
            f"store {path} has format version {found!r}; this weightvault reads {supported}", **kw
        )
        self.path = path
        self.found = found


class LockBusyError(WeightvaultError):
    exit_code = 7

    def __init__(self, what: str, holder: str, **kw):
        kw.setdefault("hint", "wait for it to finish, or retry with a longer --lock-timeout")
        super().__init__(f"{what} is locked by {holder}", **kw)
        self.what = what
        self.holder = holder


class LeaseLostError(WeightvaultError):
    """A writer on object storage stopped renewing its lease for longer than its TTL (the process
    was paused: suspend, SIGSTOP, a VM freeze), so another machine may have taken the store lock
    meanwhile: it stops before it commits or deletes anything more."""

    exit_code = 7

    def __init__(self, what: str, op: str, late_s: float | None, **kw):
        kw.setdefault("hint", "nothing more was written; rerun the command (what it already stored is reused "
                              "or collected by gc)")
        why = (f"it expired {late_s:.0f}s ago (was this process paused?)" if late_s is not None
               else "another process removed its claim and took the lock")
        super().__init__(f"{op or 'this command'} lost its lease on {what}: {why}", **kw)
        self.what, self.op, self.late_s = what, op, late_s


class StoreReadOnlyError(WeightvaultError):
    """A command that changes the store, on a read-only file system (reads work there)."""

    exit_code = 7

    def __init__(self, store: str, op: str = "", **kw):
        kw.setdefault("hint", "restore, verify, log and sql work on a read-only store; to change it, "
                              "copy it to a writable place first")
        super().__init__(f"the store at {store} is on a read-only file system" + (f": {op} cannot run" if op else ""),
                         **kw)
        self.store = store


class DiskFullError(WeightvaultError):
    exit_code = 8
    default_hint = "free some space, then rerun; committed versions are intact"

    def __init__(self, path: str, **kw):
        super().__init__(f"no space left on device while writing {path} (ENOSPC)", **kw)
        self.path = path


class MissingExtraError(WeightvaultError):
    exit_code = 9

    def __init__(self, feature: str, extra: str, **kw):
        kw.setdefault("hint", f"pip install 'weightvault[{extra}]'")
        super().__init__(f"{feature} needs the optional extra [{extra}]", **kw)
        self.feature = feature
        self.extra = extra


class CatalogError(WeightvaultError):
    default_hint = "rebuild the catalog from the store with `weightvault catalog rebuild`"


class CatalogBehindError(CatalogError):
    """The versions were committed (their refs exist), but indexing them failed: the catalog lags
    the store until the next command syncs it. Rerunning the snapshot would archive them again."""

    def __init__(self, refs: list[str], cause: BaseException, **kw):
        them = "it" if len(refs) == 1 else "them"
        kw.setdefault("hint", f"nothing to redo: the next command adds {them} to the catalog "
                              f"(or run `weightvault catalog sync` once the cause is fixed); do not snapshot {them} again")
        what = ", ".join(refs)
        super().__init__(f"{what} {'is' if len(refs) == 1 else 'are'} archived, but the catalog could not be "
                         f"updated: {cause}", **kw)
        self.refs = refs
        self.exit_code = getattr(cause, "exit_code", 1)


class QueryError(WeightvaultError):
    exit_code = 4
    default_hint = "list tables and views with `weightvault sql \"SHOW ALL TABLES\"`"


# -- reliability (gc, repair, pickle conversion, signatures) -------------------


class GcRefusedError(IntegrityError):
    """GC will not sweep a store whose referenced data is missing or unreadable."""

    default_hint = "run `weightvault verify` and `weightvault repair`, or `weightvault rm` the damaged versions"

    def __init__(self, problems: list[str], **kw):
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__(f"gc refused: referenced data is damaged: {'; '.join(problems[:3])}{more}", **kw)
        self.problems = list(problems)


class UnsafePickleError(InvalidInputError):
    """A pickled checkpoint names a global outside the allowlist, or cannot be scanned."""

    default_hint = "convert it yourself in a sandbox (safetensors.torch.save_file), or --exclude it"

    def __init__(self, path: str, reason: str, **kw):
        super().__init__(f"{path}: refused to convert pickle: {reason}", **kw)
        self.path = path
        self.reason = reason


class SignatureError(IntegrityError):
    """A signature does not verify, or what it signed no longer matches the store."""

    default_hint = "do not trust this version; inspect it with `weightvault verify --read-data`"


class KeyFileError(InvalidInputError):
    default_hint = "create a key pair with `weightvault keygen KEYFILE`"


# -- object storage (issue 8) ---------------------------------------------------


class StoreUnavailableError(WeightvaultError):
    """An object store did not answer, refused the credentials, or lacks the bucket (after retries)."""

    exit_code = 10
    default_hint = "check the endpoint (--endpoint or AWS_ENDPOINT_URL) and credentials, then rerun; committed versions are intact"

    def __init__(self, url: str, reason: str, **kw):
        super().__init__(f"object store {url}: {reason}", **kw)
        self.url = url
        self.reason = reason
