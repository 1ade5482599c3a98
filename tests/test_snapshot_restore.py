"""Snapshot and restore round trips on real safetensors folders and the real MiniLM."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import toy_tensors, tree_files, write_model
from weightvault.archive import ids
from weightvault.errors import AlreadyExistsError, FileDigestMismatchError


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_minilm_round_trip_is_byte_exact(vault, minilm_dir, tmp_path):
    res = vault.snapshot(minilm_dir, "minilm")
    out = tmp_path / "out"
    vault.restore("minilm@1", out)
    src, dst = tree_files(minilm_dir), tree_files(out)
    assert set(src) == set(dst)
    for rel in src:
        assert sha(dst[rel]) == sha(src[rel]), rel
    # the manifest recorded the same digests, and the restored weights load with safetensors
    for f in res.manifest.files:
        assert f.sha256 == sha(src[f.path])
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    # compression did something on real weights
    assert res.stats.new_stored_bytes < res.stats.raw_bytes


def test_second_version_stores_only_changed_tensors(vault, tmp_path):
    base = toy_tensors(seed=1)
    write_model(tmp_path / "v1", base)
    r1 = vault.snapshot(tmp_path / "v1", "toy")
    changed = dict(base)
    changed["encoder.layer.3.weight"] = base["encoder.layer.3.weight"] + 1
    write_model(tmp_path / "v2", changed)
    r2 = vault.snapshot(tmp_path / "v2", "toy")
    assert r2.version == "2" and r2.manifest.parent == r1.manifest_id
    # new: the changed tensor's chunk and the safetensors header (its bytes differ? no: same layout)
    f1 = r1.manifest.file("model.safetensors")
    f2 = r2.manifest.file("model.safetensors")
    t1 = {t.name: f1.tensor_chunks(t) for t in f1.tensors}
    t2 = {t.name: f2.tensor_chunks(t) for t in f2.tensors}
    differing = {n for n in t1 if t1[n] != t2[n]}
    assert differing == {"encoder.layer.3.weight"}
    assert r2.stats.new_raw_bytes == base["encoder.layer.3.weight"].nbytes
    assert r2.stats.new_chunks == 1


def test_resharded_copy_adds_no_tensor_data(vault, tmp_path, cli):
    t = toy_tensors(seed=2)
    write_model(tmp_path / "one", t)
    vault.snapshot(tmp_path / "one", "toy")
    names = sorted(t, reverse=True)  # another order, two shards
    write_model(tmp_path / "sharded", t, shards=[names[: len(names) // 2], names[len(names) // 2:]])
    r = vault.snapshot(tmp_path / "sharded", "toy")
    tensor_bytes = sum(a.nbytes for a in t.values())
    # only the two shard headers and the index json are new
    assert r.stats.new_raw_bytes < 4096
    assert r.stats.dedup_bytes >= tensor_bytes
    du = cli("du", "--json").json()
    toy = next(m for m in du["models"] if m["model"] == "toy")
    assert toy["dedup_saved_bytes"] >= tensor_bytes
    out = tmp_path / "restored"
    vault.restore("toy@2", out)
    assert tree_files(out) == tree_files(tmp_path / "sharded")


def test_identical_tensor_in_other_file_is_stored_once(vault, tmp_path):
    a = np.arange(4096, dtype=np.float32)
    write_model(tmp_path / "m", {"x": a, "y": a.copy()})
    r = vault.snapshot(tmp_path / "m", "dup")
    f = r.manifest.file("model.safetensors")
    cx, cy = (f.tensor_chunks(t) for t in f.tensors)
    assert cx == cy
    assert r.stats.new_chunks == r.stats.chunks - 1 - 0  # x and y share one chunk


def test_large_tensor_is_cut_into_bounded_chunks(tmp_path):
    from weightvault.vault import Vault

    v = Vault.init(tmp_path / "s")
    v.store.config["chunk_size"] = 64 * 1024  # small chunks to exercise the cut
    big = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)  # 400 KB
    write_model(tmp_path / "m", {"big": big})
    r = v.snapshot(tmp_path / "m", "big")
    f = r.manifest.file("model.safetensors")
    (t,) = f.tensors
    assert t.n_chunks == 7 and all(n <= 64 * 1024 for _, n in f.tensor_chunks(t))
    # change the tail only: the first chunks are shared
    big2 = big.copy()
    big2[-10:] += 1
    write_model(tmp_path / "m2", {"big": big2})
    r2 = v.snapshot(tmp_path / "m2", "big")
    assert r2.stats.new_chunks == 1
    np.testing.assert_array_equal(v.read_tensor("big@2", "big"), big2)


def test_read_single_tensor_and_file(vault, toy_model):
    vault.snapshot(toy_model, "toy")
    arr = vault.read_tensor("toy@1", "encoder.layer.2.weight")
    np.testing.assert_array_equal(arr, toy_tensors()["encoder.layer.2.weight"])
    assert vault.read_file("toy@1", "tokenizer/vocab.txt") == b"a\nb\nc\n"


def test_restore_single_file(vault, toy_model, tmp_path, cli):
    vault.snapshot(toy_model, "toy")
    r = cli("restore", "toy@1", tmp_path / "one", "--file", "config.json")
    assert r.rc == 0, r
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["config.json"]


def test_restore_refuses_to_overwrite(vault, toy_model, tmp_path):
    vault.snapshot(toy_model, "toy")
    vault.restore("toy@1", tmp_path / "o")
    with pytest.raises(AlreadyExistsError):
        vault.restore("toy@1", tmp_path / "o")
    vault.restore("toy@1", tmp_path / "o", force=True)


def test_restore_detects_a_chunk_that_lies(vault, toy_model, tmp_path):
    """A container whose content was swapped for another valid chunk fails the hash check."""
    r = vault.snapshot(toy_model, "toy")
    f = r.manifest.file("config.json")
    (cid, _), = f.chunks
    path = vault.store.root / vault.store.chunk_key(cid)
    raw = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(raw.replace(b"toy", b"yot"))
    from weightvault.errors import ChunkCorruptError

    with pytest.raises(ChunkCorruptError) as e:
        vault.restore("toy@1", tmp_path / "o")
    assert cid in str(e.value)
    assert not (tmp_path / "o" / "config.json").exists()


def test_explicit_version_and_parent(vault, toy_model):
    vault.snapshot(toy_model, "toy", version="v1.0", message="first")
    r = vault.snapshot(toy_model, "toy", version="v1.1", parent="v1.0", tags=("prod",))
    assert r.manifest.parent == vault.resolve("toy@v1.0").manifest_id
    assert r.stats.new_chunks == 0
    with pytest.raises(AlreadyExistsError):
        vault.snapshot(toy_model, "toy", version="v1.0")
    assert vault.resolve("toy").version == "v1.1"


def test_manifest_is_hash_named_and_canonical(vault, toy_model):
    r = vault.snapshot(toy_model, "toy")
    data = (vault.store.root / "manifests" / r.manifest_id[:2] / r.manifest_id).read_bytes()
    assert ids.content_id(data) == r.manifest_id
    d = json.loads(data)
    assert data == json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert d["type"] == "weightvault.manifest" and d["format"] == 1


def test_restore_digest_mismatch_is_reported(vault, toy_model, tmp_path, monkeypatch):
    """If chunks decode but the file digest disagrees, nothing lands under the final name."""
    vault.snapshot(toy_model, "toy")
    m = vault.manifest("toy@1")
    import dataclasses

    f = m.file("config.json")
    bad = dataclasses.replace(m, files=(dataclasses.replace(f, sha256="0" * 64),))
    from weightvault.archive.restore import restore

    with pytest.raises(FileDigestMismatchError):
        restore(vault.store, bad, tmp_path / "o")
    assert not (tmp_path / "o" / "config.json").exists()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "o").iterdir())


@pytest.mark.parametrize("fsync", [False, True])
def test_a_damaged_chunk_mid_file_leaves_no_file_and_no_temp(tmp_path, fsync):
    """Chunks are decoded and written at their offsets in parallel: a bad one in the middle still
    leaves nothing under the final name, and no temp file behind (with or without --fsync)."""
    from weightvault.errors import ChunkCorruptError
    from weightvault.vault import Vault

    v = Vault.init(tmp_path / "s")
    v.store.config["chunk_size"] = 64 * 1024
    big = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)  # 13 chunks
    write_model(tmp_path / "m", {"big": big})
    r = v.snapshot(tmp_path / "m", "big")
    v.restore("big@1", tmp_path / "ok", fsync=fsync)
    assert (tmp_path / "ok" / "model.safetensors").read_bytes() == (tmp_path / "m" / "model.safetensors").read_bytes()
    chunks = r.manifest.file("model.safetensors").chunks
    cid = chunks[len(chunks) // 2][0]
    path = v.store.root / v.store.chunk_key(cid)
    blob = bytearray(path.read_bytes())
    blob[-50] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(blob))
    with pytest.raises(ChunkCorruptError) as e:
        v.restore("big@1", tmp_path / "bad", fsync=fsync)
    assert cid in str(e.value)
    assert not (tmp_path / "bad" / "model.safetensors").exists()
    assert not [p for p in (tmp_path / "bad").iterdir() if p.name.endswith(".tmp")]


def test_a_source_truncated_while_read_is_refused_naming_it(tmp_path):
    """Pieces are read with pread, not through a mapping: a file cut short during its snapshot is a
    one-line error naming it (a mapping's read past the new end killed the process with SIGBUS)."""
    import os

    from weightvault.archive import codecs
    from weightvault.archive import snapshot as snap
    from weightvault.errors import InvalidInputError
    from weightvault.vault import Vault

    v = Vault.init(tmp_path / "s")
    v.store.config["chunk_size"] = 64 * 1024
    m = write_model(tmp_path / "m", {"w": np.random.default_rng(5).standard_normal(400_000).astype(np.float32)})
    src = m / "model.safetensors"

    def encode(raw, cid, seg, rel):
        if seg.tensor is not None and os.path.getsize(src) > 100_000:
            os.truncate(src, 100_000)
        return codecs.encode_chunk(raw, cid, dtype=seg.dtype)

    with pytest.raises(InvalidInputError, match="model.safetensors changed while being read"):
        snap.snapshot(v.store, m, "cut", encode=encode, workers=1)
    assert v.store.list_refs("cut") == []
    assert not list((v.store.root / "tmp").iterdir())


def _rewriting_encoder(src, *, keep_mtime: bool):
    """An encoder that, at the first tensor piece it is given, rewrites those bytes of the source
    file in place (a trainer saving a checkpoint into the file being archived), then encodes."""
    import os

    from weightvault.archive import codecs

    state = {"done": False}

    def encode(raw, cid, seg, rel):
        if not state["done"] and seg.tensor is not None and rel == src.name:
            state["done"] = True
            st = os.stat(src)
            with open(src, "r+b") as f:
                f.seek(seg.start)
                old = f.read(16)
                f.seek(seg.start)
                f.write(bytes(b ^ 0xFF for b in old))
            if keep_mtime:
                os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
        return codecs.encode_chunk(raw, cid, dtype=seg.dtype)

    return encode


def test_a_source_rewritten_while_read_is_refused_and_stores_nothing_under_a_wrong_id(tmp_path):
    """A file written to during its snapshot fails it, naming the file; the chunks stored meanwhile
    hold the bytes their IDs name, so a later snapshot of the settled file restores exactly."""
    from weightvault.archive import snapshot as snap
    from weightvault.archive.verify import load_versions, verify
    from weightvault.errors import InvalidInputError
    from weightvault.vault import Vault

    v = Vault.init(tmp_path / "s")
    v.store.config["chunk_size"] = 64 * 1024
    m = write_model(tmp_path / "m", {"w": np.random.default_rng(3).standard_normal(100_000).astype(np.float32)})
    src = m / "model.safetensors"
    original = src.read_bytes()
    with pytest.raises(InvalidInputError, match="model.safetensors changed while being read"):
        snap.snapshot(v.store, m, "live", encode=_rewriting_encoder(src, keep_mtime=False))
    assert v.store.list_refs("live") == []
    src.write_bytes(original)  # the writer puts it back; the file is archived again
    v.snapshot(m, "settled")
    v.restore("settled@1", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == original
    manifests, _ = load_versions(v.store)
    assert verify(v.store, manifests).damaged == []
    # and the chunks the refused snapshot left (gc's to free) hold the bytes their IDs name
    from weightvault.archive import codecs
    for info in v.store.list_chunks():
        cid = info.key.rsplit("/", 1)[-1]
        codecs.decode_chunk(v.store.get_container(cid), cid, v.store.read_chunk)


def test_a_rewrite_the_checks_cannot_see_still_archives_what_was_read(tmp_path):
    """A writer that restores the file's mtime goes unnoticed; what is archived is what was read,
    each chunk under the hash of its bytes, and the restore matches the recorded sha256."""
    from weightvault.archive import snapshot as snap
    from weightvault.archive.verify import load_versions, verify
    from weightvault.vault import Vault

    v = Vault.init(tmp_path / "s")
    v.store.config["chunk_size"] = 64 * 1024
    m = write_model(tmp_path / "m", {"w": np.random.default_rng(4).standard_normal(100_000).astype(np.float32)})
    src = m / "model.safetensors"
    original = src.read_bytes()
    r = snap.snapshot(v.store, m, "quiet", encode=_rewriting_encoder(src, keep_mtime=True))
    manifests, _ = load_versions(v.store)
    assert verify(v.store, manifests).damaged == []  # every stored chunk decodes to its ID
    v.restore("quiet@1", tmp_path / "out")  # checked against the sha256 recorded at snapshot
    restored = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert sha(restored) == r.manifest.file("model.safetensors").sha256
    assert restored == original  # the piece was copied before the writer touched it


def test_a_file_name_of_255_bytes_restores(vault, tmp_path, cli):
    """Restore's temp file was named after its target, 18 bytes longer: a name of 238 to 255 bytes,
    archived and verified clean, could never be restored (ENAMETOOLONG)."""
    name = "n" * 251 + ".txt"
    m = write_model(tmp_path / "m", toy_tensors(), files={name: "long\n"})
    vault.snapshot(m, "long")
    r = cli("restore", "long@1", tmp_path / "out")
    assert r.rc == 0, r
    assert (tmp_path / "out" / name).read_text() == "long\n"


def test_restore_never_writes_into_the_store(vault, toy_model, tmp_path, cli, store_dir):
    """Restoring into the store (or a folder of it) broke every command after it; with --force into
    the store's own folder it replaced the store's config.json."""
    from conftest import store_snapshot_state

    vault.snapshot(toy_model, "toy")
    before = store_snapshot_state(store_dir)
    config = (store_dir / "config.json").read_bytes()
    for target in (store_dir, store_dir / "refs" / "x", store_dir / "tmp"):
        for extra in ((), ("--force",)):
            r = cli("restore", "toy@1", target, *extra)
            assert r.rc == 4 and "would write into the store" in r.err, r
    assert (store_dir / "config.json").read_bytes() == config
    assert not (store_dir / "refs" / "x").exists()
    assert store_snapshot_state(store_dir) == before
    r = cli("restore", "toy@1", "")
    assert r.rc == 4 and "target folder is empty" in r.err, r
    assert cli("verify").rc == 0


def test_an_interrupted_restore_says_how_to_finish(vault, toy_model, tmp_path, cli, monkeypatch):
    from weightvault.vault import Vault

    vault.snapshot(toy_model, "toy")

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Vault, "restore", interrupted)
    r = cli("restore", "toy@1", tmp_path / "o")
    assert r.rc == 130 and "--force" in r.err and "rerun" in r.err, r
