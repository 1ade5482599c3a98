"""Bad input gets a typed error, a one-line message, a non-zero exit and nothing in the store."""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest

from conftest import store_snapshot_state, toy_tensors, tree_files, write_model
from weightvault.archive import paths
from weightvault.archive.safetensors_header import parse_header_bytes
from weightvault.errors import (
    InvalidNameError,
    InvalidSafetensorsError,
    ModelNotFoundError,
    UnsafePathError,
    UnsupportedStoreVersionError,
    VersionNotFoundError,
)


def raw_safetensors(header: dict, data: bytes, *, pad: bool = True) -> bytes:
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def good_file() -> bytes:
    return raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                            "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16))


BAD_FILES = {
    "truncated": lambda: good_file()[:-3],
    "header length past end of file": lambda: struct.pack("<Q", 10_000) + b"{}",
    "shorter than 8 bytes": lambda: b"\x01\x02",
    "overlapping offsets": lambda: raw_safetensors(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
    "shape x dtype != byte length": lambda: raw_safetensors(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
    "trailing bytes": lambda: good_file() + b"extra",
    "gap between tensors": lambda: raw_safetensors(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, bytes(20)),
    "not json": lambda: struct.pack("<Q", 8) + b"{not js}",
    # json.loads recurses: a 200 KB header of brackets was an internal RecursionError
    "nested too deeply": lambda: (lambda h: struct.pack("<Q", len(h)) + h)(
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    # a JSON escape of a lone surrogate parses, but no manifest (UTF-8) can hold the name
    "lone surrogate in a tensor name": lambda: (lambda h: struct.pack("<Q", len(h)) + h + bytes(8))(
        b'{"a\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'),
    "lone surrogate in metadata": lambda: (lambda h: struct.pack("<Q", len(h)) + h + bytes(8))(
        b'{"__metadata__":{"k":"\\udc00"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_safetensors_is_refused_and_nothing_is_written(case, vault, tmp_path, cli, store_dir):
    good = write_model(tmp_path / "good", toy_tensors())
    vault.snapshot(good, "ok")
    before = store_snapshot_state(store_dir)
    folder = write_model(tmp_path / "bad", toy_tensors(seed=9))  # valid files that would be new chunks
    (folder / "zz-broken.safetensors").write_bytes(BAD_FILES[case]())
    r = cli("snapshot", folder, "--model", "bad")
    assert r.rc == 4, r
    assert "zz-broken.safetensors" in r.err and "invalid safetensors" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert store_snapshot_state(store_dir) == before
    _, rows = vault.sql("SELECT model FROM versions")
    assert rows == [("ok",)]


def test_error_names_the_tensor(tmp_path):
    data = raw_safetensors({"layer.7.weight": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(InvalidSafetensorsError) as e:
        parse_header_bytes(data, len(data), "m.safetensors")
    assert e.value.tensor == "layer.7.weight" and "layer.7.weight" in str(e.value)


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "C:\\x", "a\\b", ".git/config",
                                  "a/.GIT/x", "", "a//b", "./a", "a\x00b", "line\nbreak"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafePathError):
        paths.check_relative(name)


def test_snapshot_refuses_a_name_with_a_backslash(vault, tmp_path, cli, store_dir):
    folder = write_model(tmp_path / "m", toy_tensors())
    (folder / "..\\evil.json").write_text("{}")
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", folder, "--model", "m")
    assert r.rc == 4 and "unsafe file name" in r.err
    assert store_snapshot_state(store_dir) == before


def test_restore_refuses_a_manifest_path_that_escapes(vault, toy_model, tmp_path):
    """A crafted manifest naming ../x cannot write outside the target folder."""
    from weightvault.archive.restore import restore

    vault.snapshot(toy_model, "toy")
    m = vault.manifest("toy@1")
    f = m.file("config.json")
    evil = dataclasses.replace(m, files=(dataclasses.replace(f, path="../escaped.json"),))
    with pytest.raises(UnsafePathError):
        restore(vault.store, evil, tmp_path / "out")
    assert not (tmp_path / "escaped.json").exists()


def test_restore_does_not_follow_a_symlinked_folder(vault, tmp_path):
    folder = write_model(tmp_path / "m", toy_tensors(), files={"sub/x.txt": "x"})
    vault.snapshot(folder, "m")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError):
        vault.restore("m@1", out)
    assert not (tmp_path / "elsewhere" / "x.txt").exists()


def test_restore_onto_a_file_names_it_and_leaves_it_alone(vault, toy_model, tmp_path, cli):
    vault.snapshot(toy_model, "toy")
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    r = cli("restore", "toy@1", target)
    assert r.rc != 0 and "Traceback" not in r.err, r
    assert len(r.err.strip().splitlines()) == 1
    assert f"{target} is a file, not a folder" in r.err and "restore into a folder" in r.err
    assert target.read_text() == "keep me"


def test_a_refused_restore_leaves_the_target_folder_as_it_was(vault, tmp_path, cli):
    """A file of the version where the target has a folder (even with --force), or a file already
    there (without it): refused before anything is written or created, naming the path."""
    src = write_model(tmp_path / "src", toy_tensors(0), files={"sub/deep/x.txt": "hi", "top.txt": "t"})
    vault.snapshot(src, "nest")
    out = tmp_path / "out"
    (out / "top.txt").mkdir(parents=True)
    r = cli("restore", "nest@1", out, "--force")
    assert r.rc == 4 and len(r.err.strip().splitlines()) == 1, r
    assert f"{out / 'top.txt'} is a folder" in r.err and "Traceback" not in r.err and ".wv-" not in r.err, r
    assert sorted(p.name for p in out.rglob("*")) == ["top.txt"]  # nothing restored, nothing created
    (out / "top.txt").rmdir()
    (out / "top.txt").write_text("old")
    r = cli("restore", "nest@1", out)
    assert r.rc == 4 and "already exists" in r.err, r
    assert sorted(p.name for p in out.rglob("*")) == ["top.txt"]  # sub/deep was created before the refusal
    assert cli("restore", "nest@1", out, "--force").rc == 0
    assert tree_files(out) == tree_files(src)


def test_unknown_store_format_is_refused(tmp_path, cli):
    from weightvault.vault import Vault

    v = Vault.init(tmp_path / "s")
    cfg = json.loads((v.root / "config.json").read_text())
    cfg["format"] = 99
    (v.root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedStoreVersionError):
        Vault.open(tmp_path / "s")
    r = cli("log", store=tmp_path / "s")
    assert r.rc == 6 and "format version 99" in r.err


def test_missing_model_and_version(vault, toy_model, cli, tmp_path):
    vault.snapshot(toy_model, "toy")
    with pytest.raises(ModelNotFoundError):
        vault.resolve("nope@1")
    with pytest.raises(VersionNotFoundError):
        vault.resolve("toy@7")
    r = cli("restore", "toy@7", tmp_path / "o")
    assert r.rc == 3 and "toy@7" in r.err and "weightvault log toy" in r.err
    assert not (tmp_path / "o").exists()
    r = cli("show", "ghost")
    assert r.rc == 3 and "ghost" in r.err


@pytest.mark.parametrize("ref", ["", "a@", "@1", "a b@1", "a@1@2", "../x@1", "a@..", "x/y/z", "a\n", "a@1\n"])
def test_malformed_refs(ref, vault):
    with pytest.raises((InvalidNameError, ModelNotFoundError)):
        vault.resolve(ref)


def test_pickle_checkpoint_is_refused_with_a_pointer(vault, tmp_path, cli, store_dir):
    folder = write_model(tmp_path / "m", toy_tensors())
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + bytes(100))
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", folder, "--model", "m")
    assert r.rc == 4 and "pytorch_model.bin" in r.err and "--convert-pickle" in r.err
    assert store_snapshot_state(store_dir) == before
    r = cli("snapshot", folder, "--model", "m", "--exclude", "*.bin")
    assert r.rc == 0, r


def test_not_a_folder(vault, cli, tmp_path):
    r = cli("snapshot", tmp_path / "missing", "--model", "m")
    assert r.rc == 4 and "not a folder" in r.err


def test_zero_size_tensor_and_empty_file_round_trip(vault, tmp_path):
    folder = write_model(tmp_path / "m", {"empty": np.zeros((0, 4), np.float32), "x": np.ones(3, np.float32)},
                         files={"empty.txt": ""})
    vault.snapshot(folder, "m")
    vault.restore("m@1", tmp_path / "o")
    assert (tmp_path / "o" / "empty.txt").read_bytes() == b""
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


@pytest.mark.parametrize("where,hint", [
    ("file", "a file is where a folder is needed"),   # EEXIST: mkdir over a file
    ("under-file", "part of the path is a file"),      # ENOTDIR
])
def test_an_os_error_on_a_path_is_one_line_with_a_hint_for_its_cause(where, hint, vault, tmp_path, cli):
    vault.snapshot(write_model(tmp_path / "m", toy_tensors()), "m")
    f = tmp_path / "afile"
    f.write_text("x")
    target = f if where == "file" else f / "sub"
    r = cli("catalog", "export", target)
    assert r.rc != 0 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r
    assert str(target) in r.err and hint in r.err, r
    assert f.read_text() == "x"


def test_names_with_a_final_newline_and_the_label_latest_are_refused(vault, toy_model, cli, store_dir):
    """A regex's '$' also matches before a final newline: "tiny\n" passed as a model name, and a
    version named "latest" was archived but could never be addressed (NAME@latest is the newest)."""
    before = store_snapshot_state(store_dir)
    for args, what in [(("--model", "tiny\n"), "invalid model name"),
                       (("--model", "tiny", "--version", "v1\n"), "invalid version"),
                       (("--model", "tiny", "--version", "latest"), "'latest' cannot name a version"),
                       (("--model", "tiny", "--tag", "latest"), "'latest' cannot name a version")]:
        r = cli("snapshot", toy_model, *args)
        assert r.rc == 4 and what in r.err and "Traceback" not in r.err, r
    r = cli("dataset", "add", "wiki\n", "--license", "MIT")
    assert r.rc == 4 and "NAME: 'wiki\\n' is not valid" in r.err, r
    assert store_snapshot_state(store_dir) == before


def test_rm_never_takes_the_latest_version_by_default(vault, toy_model, cli):
    """`rm NAME` is refused so that a missing version removes nothing; NAME@ (an unset $V) and
    NAME@latest are refused the same way."""
    vault.snapshot(toy_model, "tiny")
    vault.snapshot(toy_model, "tiny")
    for ref, rc in [("tiny", 2), ("tiny@latest", 2), ("tiny@", 4)]:
        r = cli("rm", ref)
        assert r.rc == rc and "Traceback" not in r.err, r
    assert sorted(x.version for x in vault.store.list_refs("tiny")) == ["1", "2"]
    assert cli("rm", "tiny@2").rc == 0


def test_a_file_name_that_is_not_utf8_is_refused_before_anything_is_written(vault, tmp_path, cli, store_dir):
    folder = write_model(tmp_path / "m", toy_tensors())
    try:
        (folder / "x\udcff.json").write_text("{}", errors="surrogateescape")
        open(bytes(folder) + b"/\xff.json", "w").close()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", folder, "--model", "m")
    assert r.rc == 4 and "not valid UTF-8" in r.err and "--exclude" in r.err and "Traceback" not in r.err, r
    assert store_snapshot_state(store_dir) == before


def test_links_to_folders_and_broken_links_are_named_not_left_out(vault, tmp_path, cli, store_dir):
    """A linked sub-folder and a dangling link were left out of the snapshot without a word: the
    restored model lacked files the user saw in the folder."""
    import os

    outside = tmp_path / "outside" / "onnx"
    outside.mkdir(parents=True)
    (outside / "model.onnx").write_text("onnx")
    folder = write_model(tmp_path / "m", toy_tensors())
    os.symlink(outside, folder / "onnx")
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", folder, "--model", "m")
    assert r.rc == 4 and "is a link to a folder" in r.err and "--exclude 'onnx'" in r.err, r
    os.symlink(tmp_path / "nowhere.json", folder / "tokenizer.json")
    r = cli("snapshot", folder, "--model", "m", "--exclude", "onnx")
    assert r.rc == 4 and "tokenizer.json is a broken link" in r.err, r
    assert store_snapshot_state(store_dir) == before
    r = cli("snapshot", folder, "--model", "m", "--exclude", "onnx", "--exclude", "tokenizer.json")
    assert r.rc == 0, r
    # a link to a file is followed, as Hugging Face cache snapshots need
    os.symlink(outside / "model.onnx", folder / "linked.onnx")
    assert cli("snapshot", folder, "--model", "m", "--exclude", "onnx", "--exclude", "tokenizer.json").rc == 0
    assert "linked.onnx" in {f.path for f in vault.manifest("m@2").files}


@pytest.mark.parametrize("query", [
    "COPY (SELECT 'x') TO '{ref}' (HEADER false)",           # over a ref: every command failed after it
    "COPY (SELECT 'x') TO '{manifest}' (HEADER false)",      # over a manifest: the version was lost
    "EXPORT DATABASE '{store}/exported'",
    "ATTACH '{store}/new.duckdb' AS n",
    "SELECT * FROM read_text('{ref}')",
    "PRAGMA profiling_output = '{store}/profile.json'",
    "SET enable_external_access = true",
    "LOAD httpfs",
])
def test_sql_reads_the_catalog_and_writes_nothing_anywhere(query, vault, toy_model, store_dir, cli, tmp_path):
    vault.snapshot(toy_model, "m")
    ref = store_dir / "refs" / "m" / "1"
    manifest = next(p for p in (store_dir / "manifests").rglob("*") if p.is_file())
    before = store_snapshot_state(store_dir)
    r = cli("sql", query.format(ref=ref, manifest=manifest, store=store_dir))
    assert r.rc == 4 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r
    assert "reads the catalog only" in r.err, r
    assert store_snapshot_state(store_dir) == before
    assert not (store_dir / "exported").exists() and not (store_dir / "new.duckdb").exists()
    assert not (store_dir / "profile.json").exists()
    assert cli("restore", "m", tmp_path / "out").rc == 0 and cli("verify", "--structure").rc == 0
    # views, macros and temp tables still work
    assert cli("sql", "CREATE TEMP TABLE t AS SELECT model, version FROM versions; SELECT count(*) FROM t, ancestors('m', '1')").rc == 0
