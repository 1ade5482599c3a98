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
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from weightvault.archive import paths
from weightvault.archive.snapshot import PICKLE_SUFFIXES, SourceFile
from weightvault.errors import (
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


def _download(ref: HubRef, cache: Path, local_only: bool, exclude: tuple[str, ...]) -> Path:
    """Resolve and (unless local_only) download a revision; return its snapshots/<commit> folder."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub import errors as hf_errors
    except ImportError:  # a core dependency, but say so plainly if it is missing
        from weightvault.errors import MissingExtraError

        raise MissingExtraError("Hub snapshots", "hub", hint="pip install huggingface-hub") from None
    try:
        return Path(snapshot_download(ref.repo, revision=ref.revision or "main", cache_dir=str(cache),
                                      local_files_only=local_only, ignore_patterns=list(exclude) or None))
    except hf_errors.IncompleteSnapshotError:  # a LocalEntryNotFoundError: test it first
        raise InvalidInputError(f"{ref}: the cached snapshot is incomplete",
                                hint="download it again with network access") from None
    except hf_errors.LocalEntryNotFoundError:
        raise NotFoundError(
            f"{ref} is not in the Hugging Face cache {cache}",
            hint="download it with network access (unset HF_HUB_OFFLINE), or set HF_HUB_CACHE "
                 "to the cache that holds it") from None
    except hf_errors.RevisionNotFoundError:
        raise NotFoundError(f"{ref}: no such revision on the Hub", hint="check the branch, tag or commit") from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as e:
        raise NotFoundError(f"{ref}: repository not found or not accessible ({type(e).__name__})",
                            hint="check the name; for a gated or private repo log in with `hf auth login`") from None
    except hf_errors.HFValidationError as e:
        raise InvalidNameError(f"{ref}: {str(e).splitlines()[0]}") from None
    except hf_errors.HfHubHTTPError as e:
        raise WeightvaultError(f"{ref}: the Hub answered {str(e).splitlines()[0]}",
                               hint="retry later, or use a cached copy with HF_HUB_OFFLINE=1") from None


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
