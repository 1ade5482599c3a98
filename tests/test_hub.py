"""Hub snapshots from a cache folder in huggingface_hub's real layout, built here; never the network."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import store_snapshot_state, toy_tensors, tree_files, write_model
from weightvault.archive import hub
from weightvault.errors import InvalidNameError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CARD = "---\nlicense: apache-2.0\nbase_model: org/grandparent\nlibrary_name: transformers\n---\n# tiny\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def build_cache(cache: Path, model: Path, repo: str = "org/tiny", commit: str = COMMIT, refs=("main",)) -> Path:
    """Lay ``model``'s files out as huggingface_hub does: blobs named by etag, snapshot symlinks, refs.

    LFS files (weights) get their sha256 as etag, regular git files their git blob sha1.
    """
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, data in tree_files(model).items():
        lfs = rel.endswith((".safetensors", ".bin"))
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        (repo_dir / "blobs" / etag).write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo_dir / "blobs" / etag, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return repo_dir


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    model = write_model(tmp_path / "src", toy_tensors(seed=7),
                        files={"README.md": CARD, "tokenizer/vocab.txt": "a\nb\n",
                               "config.json": json.dumps({"architectures": ["TinyModel"], "model_type": "tiny",
                                                          "torch_dtype": "float32", "vocab_size": 256})})
    cache = tmp_path / "hf-cache"
    repo_dir = build_cache(cache, model)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return model, repo_dir


def test_offline_hub_snapshot_pins_commit_and_restores_exactly(hf_cache, cli, vault, tmp_path):
    model, repo_dir = hf_cache
    r = cli("snapshot", "hf:org/tiny", "--json")
    assert r.rc == 0, r
    assert r.json()["model"] == "org/tiny"
    show = cli("show", "org/tiny@1", "--json").json()
    assert show["source"] == {"kind": "hf", "repo": "org/tiny", "revision": COMMIT, "requested_revision": "main"}
    assert show["metadata"]["card"]["license"] == "apache-2.0"
    assert show["metadata"]["config"]["architectures"] == ["TinyModel"]
    _, rows = vault.sql("SELECT source_kind, source_uri, source_revision FROM versions")
    assert rows == [("hf", "hf:org/tiny", COMMIT)]
    # the card's base_model became an external lineage edge
    _, rows = vault.sql("SELECT relation, base_ref, origin FROM lineage")
    assert rows == [("finetune", "hf:org/grandparent", "card")]
    out = tmp_path / "restored"
    assert cli("restore", "org/tiny@1", out).rc == 0
    assert tree_files(out) == tree_files(model)


def test_revision_by_commit_and_by_tag(hf_cache, cli, vault):
    model, repo_dir = hf_cache
    (repo_dir / "refs" / "v1.0").write_text(COMMIT)
    assert cli("snapshot", f"hf:org/tiny@{COMMIT}", "--model", "tiny", "--version", "a").rc == 0
    assert cli("snapshot", "hf:org/tiny@v1.0", "--model", "tiny", "--version", "b").rc == 0
    _, rows = vault.sql("SELECT version, source_revision FROM versions ORDER BY version")
    assert rows == [("a", COMMIT), ("b", COMMIT)]
    r = cli("snapshot", "hf:org/tiny@v2.0", "--model", "tiny")
    assert r.rc == 3 and "not in the Hugging Face cache" in r.err


def test_blob_that_does_not_match_its_etag_is_refused(hf_cache, cli, store_dir, vault):
    model, repo_dir = hf_cache
    weights = (model / "model.safetensors").read_bytes()
    blob = repo_dir / "blobs" / hashlib.sha256(weights).hexdigest()
    damaged = bytearray(weights)
    damaged[-1] ^= 0xFF  # still a valid safetensors file: only the etag check can catch it
    blob.write_bytes(bytes(damaged))
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", "hf:org/tiny")
    assert r.rc == 5, r
    assert "model.safetensors" in r.err and "etag" in r.err and len(r.err.strip().splitlines()) == 1
    assert store_snapshot_state(store_dir) == before


def test_regular_git_file_is_checked_against_its_blob_sha1(hf_cache, cli, store_dir, vault):
    model, repo_dir = hf_cache
    data = (model / "config.json").read_bytes()
    (repo_dir / "blobs" / git_blob_sha1(data)).write_bytes(data.replace(b"tiny", b"tinY"))
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", "hf:org/tiny")
    assert r.rc == 5 and "config.json" in r.err and "git blob sha1" in r.err
    assert store_snapshot_state(store_dir) == before


def test_symlink_leaving_blobs_is_refused(hf_cache, cli, tmp_path, store_dir, vault):
    model, repo_dir = hf_cache
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of the repo")
    (repo_dir / "snapshots" / COMMIT / "extra.txt").symlink_to(outside)
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", "hf:org/tiny")
    assert r.rc == 4 and "extra.txt" in r.err and "blobs" in r.err
    assert store_snapshot_state(store_dir) == before


def test_pickled_blob_is_refused_unless_excluded(hf_cache, cli, vault):
    model, repo_dir = hf_cache
    pickled = b"\x80\x04\x95" + b"\x00" * 29
    sha = hashlib.sha256(pickled).hexdigest()
    (repo_dir / "blobs" / sha).write_bytes(pickled)
    (repo_dir / "snapshots" / COMMIT / "pytorch_model.bin").symlink_to(f"../../blobs/{sha}")
    r = cli("snapshot", "hf:org/tiny")
    assert r.rc == 4 and "pytorch_model.bin" in r.err and "pickle" in r.err
    r = cli("snapshot", "hf:org/tiny", "--exclude", "*.bin", "--json")
    assert r.rc == 0, r
    assert "pytorch_model.bin" not in {f["path"] for f in cli("show", "org/tiny@1", "--json").json()["files"]}


def test_missing_repo_offline_is_a_not_found_error(hf_cache, cli):
    r = cli("snapshot", "hf:org/absent")
    assert r.rc == 3 and "hf:org/absent" in r.err and "HF_HUB_OFFLINE" in r.err


@pytest.mark.parametrize("ref", [
    "hf:../etc", "hf:org/../x", "hf:org/na--me", "hf:/abs", "hf:a/b/c", "hf:org/name.git", "hf:",
    "hf:org/name@../../refs", "hf:org/name@main..x", "hf:org/name@.hidden", "hf:org/name@a b",
    "hf:org/name@x.lock", "hf:org/name@main@{1}",
])
def test_bad_repo_ids_and_revisions_are_refused(ref, cli, hf_cache):
    with pytest.raises(InvalidNameError):
        hub.parse_hf_ref(ref)
    r = cli("snapshot", ref, "--model", "x")
    assert r.rc == 4, r


@pytest.mark.parametrize("ref,repo,rev", [
    ("hf:org/name", "org/name", None), ("hf:gpt2", "gpt2", None), ("hf:org/name@refs/pr/1", "org/name", "refs/pr/1"),
    (f"hf:org/name@{COMMIT}", "org/name", COMMIT), ("hf:org/name@v1.0", "org/name", "v1.0"),
])
def test_good_refs_parse(ref, repo, rev):
    assert hub.parse_hf_ref(ref) == hub.HubRef(repo, rev)


def write_tree_listing(repo_dir: Path, model: Path, commit: str = COMMIT, tamper: str | None = None,
                       extra: str | None = None) -> None:
    """trees/<commit>.json as huggingface_hub >= 1.x caches it (format_version 1)."""
    files = {}
    for rel, data in tree_files(model).items():
        entry = {"size": len(data), "blob_id": git_blob_sha1(data)}
        if rel.endswith(".safetensors"):
            sha = hashlib.sha256(data).hexdigest()
            entry.update(lfs_sha256=("0" * 64 if rel == tamper else sha), lfs_size=len(data))
        files[rel] = entry
    if extra:
        files[extra] = {"size": 1, "blob_id": "f" * 40}
    (repo_dir / "trees").mkdir(exist_ok=True)
    (repo_dir / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": files}))


def test_tree_listing_is_cross_checked(hf_cache, cli, store_dir, vault):
    model, repo_dir = hf_cache
    write_tree_listing(repo_dir, model, tamper="model.safetensors")
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", "hf:org/tiny")
    assert r.rc == 5 and "model.safetensors" in r.err and "trees/" in r.err, r
    assert store_snapshot_state(store_dir) == before
    write_tree_listing(repo_dir, model)
    assert cli("snapshot", "hf:org/tiny").rc == 0


def test_incomplete_snapshot_is_refused(hf_cache, cli, store_dir, vault):
    model, repo_dir = hf_cache
    write_tree_listing(repo_dir, model, extra="model-00002-of-00002.safetensors")
    r = cli("snapshot", "hf:org/tiny")
    assert r.rc == 4 and "incomplete" in r.err, r


def test_cache_without_symlinks_needs_the_listing(hf_cache, cli, vault):
    # huggingface_hub on a filesystem without symlinks stores real files in snapshots/
    model, repo_dir = hf_cache
    link = repo_dir / "snapshots" / COMMIT / "config.json"
    data = link.read_bytes()
    link.unlink()
    link.write_bytes(data)
    r = cli("snapshot", "hf:org/tiny")
    assert r.rc == 5 and "config.json" in r.err and "unverifiable" in r.err
    write_tree_listing(repo_dir, model)
    assert cli("snapshot", "hf:org/tiny").rc == 0


def test_external_base_resolves_to_an_archived_hub_snapshot(hf_cache, cli, vault, tmp_path):
    ok = cli("snapshot", "hf:org/tiny")
    assert ok.rc == 0, ok
    write_model(tmp_path / "ft", toy_tensors(seed=8))
    assert cli("snapshot", tmp_path / "ft", "--model", "ft", "--base-model", f"hf:org/tiny@{COMMIT}").rc == 0
    write_model(tmp_path / "ft2", toy_tensors(seed=9))
    assert cli("snapshot", tmp_path / "ft2", "--model", "ft2", "--base-model", "hf:org/other").rc == 0
    _, rows = vault.sql("SELECT depth, relation, ancestor_model, ancestor_ref FROM ancestors('ft', '1')")
    assert rows == [(1, "finetune", "org/tiny", None), (2, "finetune", None, "hf:org/grandparent")]
    _, rows = vault.sql("SELECT depth, ancestor_model, ancestor_ref FROM ancestors('ft2', '1')")
    assert rows == [(1, None, "hf:org/other")]


def test_base_model_branch_or_tag_is_pinned_to_the_cached_commit(hf_cache, cli, vault, tmp_path):
    model, repo_dir = hf_cache
    (repo_dir / "refs" / "v1.0").write_text(COMMIT)
    assert cli("snapshot", "hf:org/tiny@main").rc == 0
    for name, rev in (("ft", "main"), ("ft-tag", "v1.0")):
        write_model(tmp_path / name, toy_tensors(seed=8))
        r = cli("snapshot", tmp_path / name, "--model", name, "--base-model", f"hf:org/tiny@{rev}")
        assert r.rc == 0 and "warning" not in r.err, r
        lineage = cli("show", f"{name}@1", "--json").json()["lineage"]
        assert lineage == [{"relation": "finetune", "base_ref": f"hf:org/tiny@{COMMIT}"}]
        _, rows = vault.sql("SELECT depth, ancestor_model, ancestor_version, ancestor_ref FROM ancestors(?, '1')",
                            [name])
        assert rows == [(1, "org/tiny", "1", None), (2, None, None, "hf:org/grandparent")]
    # recorded after the snapshot too (lineage --add-base)
    write_model(tmp_path / "late", toy_tensors(seed=9))
    assert cli("snapshot", tmp_path / "late", "--model", "late").rc == 0
    assert cli("lineage", "late@1", "--add-base", "hf:org/tiny@main", "--relation", "finetune").rc == 0
    _, rows = vault.sql("SELECT ancestor_model FROM ancestors('late', '1') WHERE depth = 1")
    assert rows == [("org/tiny",)]


def test_base_model_branch_not_in_the_cache_is_kept_with_a_warning(hf_cache, cli, vault, tmp_path):
    write_model(tmp_path / "ft", toy_tensors(seed=8))
    r = cli("snapshot", tmp_path / "ft", "--model", "ft", "--base-model", "hf:org/tiny@dev")
    assert r.rc == 0, r
    warnings = [ln for ln in r.err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "hf:org/tiny@dev" in warnings[0] and "commit" in warnings[0], r.err
    assert cli("show", "ft@1", "--json").json()["lineage"] == [{"relation": "finetune", "base_ref": "hf:org/tiny@dev"}]
    # a bare repo and a full commit are recorded as typed, silently
    for i, base in enumerate(("hf:org/other", f"hf:org/other@{COMMIT}")):
        write_model(tmp_path / f"b{i}", toy_tensors(seed=20 + i))
        r = cli("snapshot", tmp_path / f"b{i}", "--model", f"b{i}", "--base-model", base)
        assert r.rc == 0 and "warning" not in r.err, r
        assert cli("show", f"b{i}@1", "--json").json()["lineage"][0]["base_ref"] == base


def test_a_fine_tune_of_an_archived_hub_snapshot_is_stored_against_it(hf_cache, cli, vault, tmp_path):
    """`--base-model hf:ORG/NAME@main` names the archived snapshot (pinned to its commit): a
    fine-tune of it costs what changed, as `--base-model org/tiny@1` would."""
    import numpy as np

    model, repo_dir = hf_cache
    base = cli("snapshot", "hf:org/tiny@main", "--json").json()
    t = toy_tensors(seed=7)
    name = sorted(k for k, v in t.items() if v.dtype == np.float32)[0]
    t[name] = t[name] + np.float32(1e-3)
    write_model(tmp_path / "ft", t, files={"README.md": CARD})
    r = cli("snapshot", tmp_path / "ft", "--model", "ft", "--base-model", "hf:org/tiny@main", "--json")
    assert r.rc == 0, r
    got = r.json()
    assert got["encoded_against"] == "org/tiny@1", got
    assert got["new_chunks"] < base["new_chunks"] and got["dedup_bytes"] > 0, (got, base)
    assert cli("restore", "ft@1", tmp_path / "out").rc == 0
    assert tree_files(tmp_path / "out") == tree_files(tmp_path / "ft")
