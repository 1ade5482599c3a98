"""Hub snapshots: ``hf:ORG/NAME[@REV]`` pinned to a commit, ingested from the HF cache's blobs.

huggingface_hub downloads into a cache with this layout (its "real" layout,
which the tests rebuild by hand)::

    <cache>/models--ORG--NAME/
        refs/main                      the commit a branch or tag points at (40 hex)
        blobs/<etag>                   file contents, named by their etag
        snapshots/<commit>/<path>      symlinks into ../../blobs/<etag>
        trees/<commit>.json            (newer huggingface_hub) the repo's file listing

For an LFS file the etag is the sha256 of its content; for a regular git file
it is the git blob sha1. We check every file against its etag ourselves
(a cache can be damaged, or filled by another tool), read the bytes from the
blob and never through the snapshot's symlink (a symlink may point anywhere),
and refuse a snapshot whose symlinks leave the repo's ``blobs/`` folder or
whose file names escape the folder.

Online, the revision is resolved to its commit and downloaded through the
cache by ``huggingface_hub.snapshot_download``; with ``HF_HUB_OFFLINE=1`` (read
when called, not at import) only the existing cache is used. The commit is
recorded in ``manifest.source`` as ``{"kind": "hf", "repo", "revision"}``.
A branch or tag is resolved here first, so that a Hub that cannot be reached
(or answers 5xx) is reported as such: with no cached copy it is the error;
with a cached ``refs/<branch>`` the snapshot goes on from the cache, with a
one-line warning that it may be stale. huggingface_hub's own retry log stays
off the terminal; its failures become one-line errors naming the repo and file.

:func:`pin_ref` pins ``hf:ORG/NAME@BRANCH`` to the commit in the cache's
``refs/<branch>`` for lineage edges (the catalog matches archived snapshots by
commit).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from weightvault.archive import paths
from weightvault.archive.snapshot import PICKLE_SUFFIXES, SourceFile
from weightvault.errors import (
    DiskFullError,
    EtagMismatchError,
    InvalidInputError,
    InvalidNameError,
    NotFoundError,
    PickleRefusedError,
    UnsafePathError,
    WeightvaultError,
)

PREFIX = "hf:"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# A branch or tag name as git allows it, minus anything that could walk the cache's refs/ folder.
_REVISION = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._/+-]{0,254}$")

_log = logging.getLogger("weightvault")


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf:ORG/NAME[@REV]``.

    Attributes:
        repo: the Hub repo id (``org/name``, or a legacy ``name``).
        revision: branch, tag or 40-hex commit; None means ``main``.
    """

    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class HubSnapshot:
    """A Hub revision resolved in the local cache and checked against its etags.

    Attributes:
        repo: repo id.
        commit: the 40-hex commit the revision resolved to.
        requested: the revision asked for (``main`` by default).
        folder: the cache's ``snapshots/<commit>`` folder.
        files: the files to ingest; each ``path`` is the verified blob.
    """

    repo: str
    commit: str
    requested: str
    folder: Path
    files: tuple[SourceFile, ...]

    @property
    def source_info(self) -> dict:
        """What the manifest records as its source."""
        return {"kind": "hf", "repo": self.repo, "revision": self.commit, "requested_revision": self.requested}


def is_hub_ref(text) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def check_repo_id(repo: str) -> str:
    """Validate a Hub repo id (``org/name`` or ``name``); raise InvalidNameError otherwise."""
    parts = repo.split("/") if isinstance(repo, str) else []
    if not 1 <= len(parts) <= 2 or not all(_REPO_PART.match(p) for p in parts) \
            or ".." in repo or "--" in repo or repo.endswith((".git", ".")):
        raise InvalidNameError(f"invalid Hub repo id {repo!r}",
                               hint="write hf:ORG/NAME, e.g. hf:sentence-transformers/all-MiniLM-L6-v2")
    return repo


def check_revision(revision: str) -> str:
    """Validate a revision: a 40-hex commit, or a branch/tag name that stays inside ``refs/``."""
    ok = isinstance(revision, str) and bool(_REVISION.match(revision))
    if ok:
        parts = revision.split("/")
        ok = all(p and p not in (".", "..") and not p.startswith(".") and not p.endswith(".lock")
                 for p in parts) and ".." not in revision and "@{" not in revision
    if not ok:
        raise InvalidNameError(f"invalid Hub revision {revision!r}",
                               hint="use a branch or tag name (main, v1.0, refs/pr/1) or a 40-hex commit")
    return revision


def parse_hf_ref(text: str) -> HubRef:
    """Parse ``hf:ORG/NAME[@REV]``.

    >>> parse_hf_ref("hf:org/name@v1.0")
    HubRef(repo='org/name', revision='v1.0')
    """
    if not is_hub_ref(text):
        raise InvalidNameError(f"{text!r} is not a Hub reference", hint="write hf:ORG/NAME[@REVISION]")
    repo, sep, rev = text[len(PREFIX):].partition("@")
    check_repo_id(repo)
    if sep:
        check_revision(rev)
    return HubRef(repo, rev or None)


def cache_dir() -> Path:
    """The HF hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def repo_folder(cache: Path, repo: str) -> Path:
    """The cache folder of a model repo: ``<cache>/models--ORG--NAME``."""
    return Path(cache) / ("models--" + repo.replace("/", "--"))


def cached_commit(repo: str, revision: str, cache: str | os.PathLike | None = None) -> str | None:
    """The commit the HF cache's ``refs/<revision>`` records for a branch or tag, or None.

    Reads only the cache (never the network). ``revision`` is checked first, so it cannot walk
    out of ``refs/``.
    """
    check_repo_id(repo)
    check_revision(revision)
    folder = repo_folder(Path(cache).expanduser() if cache else cache_dir(), repo)
    try:
        text = (folder / "refs" / revision).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None
    return text if _COMMIT.match(text) else None


def pin_ref(text: str, *, cache: str | os.PathLike | None = None) -> str:
    """``hf:ORG/NAME@BRANCH_OR_TAG`` with the branch or tag replaced by its commit, for lineage edges.

    The catalog links an edge to an archived Hub snapshot by the commit it recorded, so a branch
    name would never match. The commit comes from the HF cache's ``refs/<rev>`` (the one a
    ``snapshot hf:...@<rev>`` on this machine left there). ``hf:ORG/NAME`` and a 40-hex commit are
    returned as they are. A branch or tag the cache does not know is returned as typed, with a
    one-line warning: it stays a name, not a pin.

    >>> # pin_ref("hf:org/base@main") -> "hf:org/base@0123...4567" when refs/main is cached
    """
    r = parse_hf_ref(text)
    if not r.revision or _COMMIT.match(r.revision):
        return str(r)
    commit = cached_commit(r.repo, r.revision, cache)
    if commit:
        return f"{PREFIX}{r.repo}@{commit}"
    where = Path(cache).expanduser() if cache else cache_dir()
    _log.warning("%s is recorded as typed, not pinned to a commit: the Hugging Face cache %s has no refs/%s for "
                 "it, so it will not match an archived snapshot; write %s%s@<40-hex commit> to pin it",
                 r, where, r.revision, PREFIX, r.repo)
    return str(r)


@contextlib.contextmanager
def _hub_output_quiet():
    """Keep huggingface_hub's own output off the user's stderr while it runs.

    Its retry messages ("Error while downloading ... Trying to resume download...") are logged at
    WARNING: raise its logger to ERROR (weightvault reports the failure itself, in one line). Its
    progress bars stay on a terminal and go off one. ``HF_HUB_VERBOSITY`` or ``WEIGHTVAULT_DEBUG``
    leaves both as they are.
    """
    if os.environ.get("HF_HUB_VERBOSITY") or os.environ.get("WEIGHTVAULT_DEBUG", "") not in ("", "0"):
        yield
        return
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    bars_off = False
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

        try:
            terminal = sys.stderr.isatty()
        except (AttributeError, ValueError):
            terminal = False
        if not terminal and not are_progress_bars_disabled():
            disable_progress_bars()
            bars_off = True
    except ImportError:
        pass
    try:
        yield
    finally:
        log.setLevel(level)
        if bars_off:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].rstrip(".") if text else type(e).__name__


def _status(e: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub HTTP error, None when it has none."""
    try:
        return int(e.response.status_code)
    except Exception:  # no response attached
        return None


def _url(e: BaseException) -> str:
    """The URL a transport or HTTP error was about, '' when unknown."""
    for get in (lambda: e.request.url, lambda: e.response.url, lambda: e.response.request.url):
        try:
            url = get()
        except Exception:  # httpx raises when the request or response was never attached
            continue
        if url:
            return str(url)
    return ""


def _file_of(e: BaseException) -> str | None:
    """The repo file a ``/<repo>/resolve/<rev>/<path>`` URL names, None for other URLs."""
    path = urlparse(_url(e)).path
    if "/resolve/" not in path:
        return None
    _rev, _, rel = path.split("/resolve/", 1)[1].partition("/")
    return unquote(rel) or None


def _reason(e: BaseException) -> str:
    """What went wrong talking to the Hub, in a few words."""
    status = _status(e)
    if status is not None:
        msg = getattr(e, "server_message", None)
        return f"the Hub answered {status}" + (f" ({' '.join(str(msg).split())[:120]})" if msg else "")
    from huggingface_hub import constants

    return f"the Hub at {constants.ENDPOINT} could not be reached ({type(e).__name__}: {_first_line(e)})"


def _unreachable(ref: HubRef, cache: Path, e: BaseException) -> WeightvaultError:
    status = _status(e)
    hint = ("retry later" if status is not None else "check the network connection (and HF_ENDPOINT), then rerun")
    return WeightvaultError(f"{ref}: {_reason(e)}, and the Hugging Face cache {cache} has no copy of it",
                            hint=hint + ", or set HF_HUB_CACHE to a cache that holds it")


def _httpx():
    """huggingface_hub's HTTP client module: httpx2 (huggingface_hub 2.x), httpx (1.x), or None
    (older releases use requests, whose errors are ConnectionError/TimeoutError subclasses)."""
    import importlib

    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _hub_down(e: BaseException, hf_errors, httpx) -> bool:
    """An error meaning the Hub cannot serve now (transport failure or 5xx), not that the answer is no."""
    if httpx is not None and isinstance(e, httpx.ProxyError):
        return False
    if isinstance(e, hf_errors.HfHubHTTPError):
        return (_status(e) or 0) >= 500
    if httpx is not None and isinstance(e, httpx.TransportError):
        return True
    return isinstance(e, (ConnectionError, TimeoutError))


def _download(ref: HubRef, cache: Path, local_only: bool, exclude: tuple[str, ...]) -> Path:
    """Resolve and (unless local_only) download a revision; return its snapshots/<commit> folder."""
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub import errors as hf_errors
    except ImportError:  # a core dependency, but say so plainly if it is missing
        from weightvault.errors import MissingExtraError

        raise MissingExtraError("Hub snapshots", "hub", hint="pip install huggingface-hub") from None
    httpx = _httpx()
    http_errors = (httpx.HTTPError,) if httpx is not None else ()
    not_found = getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)
    revision = ref.revision or "main"
    try:
        with _hub_output_quiet():
            if not local_only and not _COMMIT.match(revision):
                # Resolve the branch here: snapshot_download would fall back to a cached refs/<branch>
                # silently, and with nothing cached it hides why the Hub could not answer.
                try:
                    HfApi().repo_info(ref.repo, revision=revision)
                except (*http_errors, hf_errors.HfHubHTTPError, hf_errors.OfflineModeIsEnabled) as e:
                    if isinstance(e, hf_errors.OfflineModeIsEnabled):
                        local_only = True  # huggingface_hub read HF_HUB_OFFLINE at import
                    elif not _hub_down(e, hf_errors, httpx):
                        raise
                    elif (commit := cached_commit(ref.repo, revision, cache)) is None:
                        raise _unreachable(ref, cache, e) from None
                    else:
                        _log.warning("%s: %s; using the cached %s = %s, which may be stale",
                                     ref, _reason(e), revision, commit)
                        local_only = True
            return Path(snapshot_download(ref.repo, revision=revision, cache_dir=str(cache),
                                          local_files_only=local_only, ignore_patterns=list(exclude) or None))
    except hf_errors.IncompleteSnapshotError as e:  # a LocalEntryNotFoundError: test it first
        cause = e.__cause__
        why = f" and {_reason(cause)}" if cause is not None and _hub_down(cause, hf_errors, httpx) else ""
        raise InvalidInputError(f"{ref}: the cached snapshot is incomplete{why}",
                                hint="download it again with network access") from None
    except hf_errors.LocalEntryNotFoundError as e:
        cause = e.__cause__
        if not local_only and cause is not None and not isinstance(cause, hf_errors.OfflineModeIsEnabled):
            raise _unreachable(ref, cache, cause) from None
        raise NotFoundError(
            f"{ref} is not in the Hugging Face cache {cache}",
            hint="download it with network access (unset HF_HUB_OFFLINE), or set HF_HUB_CACHE "
                 "to the cache that holds it") from None
    except hf_errors.RevisionNotFoundError:
        raise NotFoundError(f"{ref}: no such revision on the Hub", hint="check the branch, tag or commit") from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as e:
        raise NotFoundError(f"{ref}: repository not found or not accessible ({type(e).__name__})",
                            hint="check the name; for a gated or private repo log in with `hf auth login`") from None
    except not_found as e:  # listed in the tree, 404 on download: a retry cannot help
        name = _file_of(e)
        what = repr(name) if name else "a file it lists"
        raise NotFoundError(f"{ref}: the Hub lists {what} but answers 404 for it",
                            hint=(f"leave it out with --exclude '{name}', or " if name else "")
                            + "snapshot another revision") from None
    except hf_errors.HFValidationError as e:
        raise InvalidNameError(f"{ref}: {str(e).splitlines()[0]}") from None
    except hf_errors.HfHubHTTPError as e:
        name = _file_of(e)
        status = _status(e)
        hint = ("retry later (a rerun resumes: files already downloaded stay in the Hugging Face cache), "
                "or use a cached copy with HF_HUB_OFFLINE=1") if status is None or status >= 500 or status == 429 \
            else "check the name and your access; for a gated or private repo log in with `hf auth login`"
        why = _reason(e) if status is not None else f"the Hub answered {_first_line(e)}"
        raise WeightvaultError(f"{ref}" + (f" {name}" if name else "") + f": {why}", hint=hint) from None
    except (*http_errors, ConnectionError, TimeoutError) as e:  # after huggingface_hub's own retries
        name = _file_of(e)
        raise WeightvaultError(f"download of {ref}" + (f" {name}" if name else "") + f" was interrupted "
                               f"({type(e).__name__}: {_first_line(e)})",
                               hint="rerun the command to resume: files already downloaded stay in the "
                                    f"Hugging Face cache {cache}") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(e.filename or str(cache)) from None
        raise WeightvaultError(f"{ref}: cannot write the Hugging Face cache ({e.strerror or e}"
                               + (f": {e.filename}" if e.filename else "") + ")",
                               hint="check its permissions, or set HF_HUB_CACHE to a writable folder") from None


def _read_tree(repo_dir: Path, commit: str) -> dict:
    """The cached file listing of a commit (trees/<commit>.json), {} when absent or unreadable."""
    try:
        data = json.loads((repo_dir / "trees" / f"{commit}.json").read_text())
        return data.get("files", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _digest(path: Path, git_blob: bool) -> str:
    """sha256 of a file, or its git blob sha1 (``sha1("blob <size>\\0" + content)``)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode()) if git_blob else hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify_blob(rel: str, blob: Path, etag: str, tree_entry: dict | None = None) -> None:
    """Check a blob against its etag (sha256 for LFS files, git sha1 otherwise) and the tree listing.

    Raises:
        EtagMismatchError: the content does not hash to its etag or to the cached listing's digest.
    """
    if _SHA256.match(etag):
        actual, kind = _digest(blob, git_blob=False), "sha256"
    elif _COMMIT.match(etag):
        actual, kind = _digest(blob, git_blob=True), "git blob sha1"
    else:
        raise EtagMismatchError(rel, etag, "(unrecognised etag)")
    if actual != etag:
        raise EtagMismatchError(rel, etag, actual, kind=kind)
    if tree_entry:  # the listing says what the Hub had at this commit: LFS files by sha256, others by blob id
        want = tree_entry.get("lfs_sha256") or tree_entry.get("blob_id")
        want_kind = "sha256" if tree_entry.get("lfs_sha256") else "git blob sha1"
        if want and want_kind == kind and want != actual:
            raise EtagMismatchError(rel, want, actual, kind=f"{kind} (trees/ listing)")
        if want and want_kind != kind:
            raise EtagMismatchError(rel, want, etag, kind=f"etag kind (trees/ listing says {want_kind})")


def _refuse_pickle(rel: str, blob: Path) -> None:
    # Blobs have no suffix, so the snapshot's own pickle check cannot see the name: do it here.
    if not rel.lower().endswith(PICKLE_SUFFIXES):
        return
    with open(blob, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80":
        raise PickleRefusedError(rel, hint=f"leave it out with --exclude '{rel}' (Hub repos often ship "
                                           "both .bin and .safetensors)")


def scan_cached_snapshot(folder: Path, exclude: tuple[str, ...] = ()) -> list[SourceFile]:
    """List a cache snapshot folder's files as blobs, each checked against its etag.

    Args:
        folder: ``<cache>/models--ORG--NAME/snapshots/<commit>``.
        exclude: glob patterns of files to leave out.
    Returns:
        SourceFiles whose ``path`` is the blob under ``blobs/`` (sorted by relative path).
    Raises:
        UnsafePathError: a name escapes the folder, or a symlink leaves ``blobs/``.
        EtagMismatchError: a blob does not match its etag.
    """
    folder = Path(folder)
    repo_dir = folder.parent.parent
    blobs = (repo_dir / "blobs").resolve()
    tree = _read_tree(repo_dir, folder.name)
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise UnsafePathError(f"{rel_dir}/{d}" if rel_dir != "." else d, "a folder symlink in a Hub snapshot")
        dirnames.sort()
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir != "." else name
            paths.check_relative(rel)
            if any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat) for pat in exclude):
                continue
            link = Path(dirpath) / name
            if link.is_symlink():
                blob = Path(os.path.realpath(link))
                if blob.parent != blobs:
                    raise UnsafePathError(rel, f"symlink leaves the repo's blobs/ folder ({os.readlink(link)})")
                etag = blob.name
            else:  # a cache without symlinks (Windows): the listing must say what the content is
                entry = tree.get(rel) or {}
                etag = entry.get("lfs_sha256") or entry.get("blob_id")
                if not etag:
                    raise EtagMismatchError(rel, "(none)", "(unverifiable: not a blob link and no trees/ listing)")
                blob = link
            if not blob.is_file():
                raise InvalidInputError(f"{rel}: its blob {blob.name} is missing from the cache",
                                        hint="download the revision again with network access")
            verify_blob(rel, blob, etag, tree.get(rel))
            _refuse_pickle(rel, blob)
            out.append(SourceFile(rel, blob, blob.stat().st_size))
    return out


def fetch(ref: str, *, cache: str | os.PathLike | None = None, exclude: tuple[str, ...] = (),
          local_only: bool | None = None) -> HubSnapshot:
    """Resolve ``hf:ORG/NAME[@REV]`` to a commit in the HF cache (downloading unless offline) and check it.

    Args:
        ref: ``hf:ORG/NAME`` or ``hf:ORG/NAME@REVISION``.
        cache: the HF hub cache folder (default :func:`cache_dir`).
        exclude: glob patterns of files to leave out (and not download).
        local_only: use only the cache; default True when ``HF_HUB_OFFLINE`` is set.
    Returns:
        A :class:`HubSnapshot` ready to pass to ``snapshot(files=..., source_info=...)``.

    Example:
        >>> # fetch("hf:sentence-transformers/all-MiniLM-L6-v2@main").commit
    """
    r = parse_hf_ref(ref)
    cache = Path(cache).expanduser() if cache else cache_dir()
    folder = _download(r, cache, offline() if local_only is None else local_only, tuple(exclude))
    commit = folder.name
    if not _COMMIT.match(commit):
        raise InvalidInputError(f"{r}: resolved to {folder}, not a snapshots/<commit> folder",
                                hint="point HF_HUB_CACHE at a huggingface_hub cache")
    if r.revision and _COMMIT.match(r.revision) and r.revision != commit:
        raise InvalidInputError(f"{r}: the cache returned commit {commit}, not the one asked for")
    files = scan_cached_snapshot(folder, tuple(exclude))
    if not files:
        raise InvalidInputError(f"{r}: the snapshot has no files", hint="download it again with network access")
    return HubSnapshot(r.repo, commit, r.revision or "main", folder, tuple(files))


def default_model_name(ref: str) -> str:
    """The model name a Hub snapshot gets by default: its repo id."""
    return parse_hf_ref(ref).repo
