"""Hostile input: malformed safetensors, unsafe names, malicious pickles, zstd bombs.

Every case must end in a typed error, a non-zero exit and an unchanged store
(object listing and temp folder compared before and after). The cases come
from tests/attacks/make_attacks.py.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "attacks"))
from make_attacks import name_attacks, safetensors_attacks  # noqa: E402

from conftest import store_snapshot_state  # noqa: E402
from weightvault import errors  # noqa: E402
from weightvault.archive import codecs, paths  # noqa: E402
from weightvault.archive.manifest import FileEntry, Manifest  # noqa: E402
from weightvault.archive.safetensors_header import read_header  # noqa: E402

ST_CASES = safetensors_attacks()
NAME_CASES = name_attacks()


def _listing(store_dir: Path) -> tuple[dict, list]:
    tmp = store_dir / "tmp"
    return store_snapshot_state(store_dir), sorted(os.listdir(tmp)) if tmp.is_dir() else []


def _folder(tmp_path: Path, name: str, data: bytes) -> Path:
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("case", sorted(ST_CASES))
def test_malformed_safetensors_is_refused_and_nothing_written(case, tmp_path, vault, store_dir, cli):
    data, err = ST_CASES[case]
    folder = _folder(tmp_path, "model.safetensors", data)
    with pytest.raises(getattr(errors, err)):
        read_header(folder / "model.safetensors")
    before = _listing(store_dir)
    r = cli("snapshot", folder, "--model", "hostile")
    assert r.rc == errors.InvalidSafetensorsError.exit_code, r
    assert "model.safetensors" in r.err and "invalid safetensors" in r.err
    assert _listing(store_dir) == before


@pytest.mark.parametrize("case", sorted(NAME_CASES))
def test_unsafe_file_names_are_refused(case, tmp_path, vault, store_dir, cli):
    name, err = NAME_CASES[case]
    folder = _folder(tmp_path, name, b"{}")
    before = _listing(store_dir)
    r = cli("snapshot", folder, "--model", "hostile")
    assert r.rc == getattr(errors, err).exit_code, r
    assert "unsafe file name" in r.err
    assert _listing(store_dir) == before


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/abs-escape.txt", "C:\\x.txt", "\\\\server\\share\\x",
                                  ".git/hooks/post-checkout", "a/../../b.txt", "a//b", "a\x00b"])
def test_hostile_manifest_paths_never_leave_the_target(name, tmp_path, vault, cli):
    with pytest.raises(errors.UnsafePathError):
        paths.check_relative(name)
    # A store from someone else: a manifest naming an escaping path. Restore must refuse it.
    empty = hashlib.sha256(b"").hexdigest()
    m = Manifest(model="evil", version="1", created_at="2026-01-01T00:00:00Z",
                 files=(FileEntry(name, 0, empty, "blob", ()),))
    vault.store.create_ref("evil", "1", vault.store.put_manifest(m))
    dest = tmp_path / "out" / "dest"
    r = cli("restore", "evil@1", dest)
    assert r.rc == errors.UnsafePathError.exit_code, r
    outside = [p for p in (tmp_path / "out").rglob("*") if dest not in (p, *p.parents)]
    assert outside == [] and not Path("/tmp/abs-escape.txt").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_zip(path: Path, pkl: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")


def _pop_trick(marker: Path) -> bytes:
    """Protocol-4 pickle: push os/system, then a decoy torch/Size, POP it, STACK_GLOBAL the real pair."""
    s = lambda x: b"\x8c" + bytes([len(x)]) + x.encode()  # noqa: E731 SHORT_BINUNICODE
    return (b"\x80\x04" + s("posix") + s("system") + s("torch") + s("Size") + b"00" + b"\x93"
            + s(f"touch {marker}") + b"\x85R.")


def _pickle_cases(tmp_path: Path, marker: Path) -> dict[str, bytes]:
    torch = pytest.importorskip("torch")
    cases = {}
    p = tmp_path / "evil_torch_save.pt"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, p)
    cases["torch_save_with_os_system"] = p.read_bytes()
    for name, pkl in {"stack_global_protocol4": pickle.dumps(_Evil(marker), protocol=4),
                      "pop_trick_decoy_global": _pop_trick(marker),
                      "ext_registry_opcode": b"\x80\x02\x82\x01.",
                      "truncated_pickle": pickle.dumps({"a": 1}, protocol=4)[:-3]}.items():
        p = tmp_path / f"{name}.zip"
        _torch_zip(p, pkl)
        cases[name] = p.read_bytes()
    p = tmp_path / "two.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        z.writestr("archive/other.pkl", pickle.dumps(_Evil(marker), protocol=2))
    cases["second_pickle_in_zip"] = p.read_bytes()
    cases["legacy_raw_pickle"] = pickle.dumps(_Evil(marker), protocol=2)
    p = tmp_path / "notensors.pt"
    torch.save({"epoch": 3, "lr": 0.1}, p)
    cases["state_dict_without_tensors"] = p.read_bytes()
    return cases


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_every_pickle_suffix_is_refused_by_default(suffix, tmp_path, vault, store_dir, cli):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / f"weights{suffix}")
    before = _listing(store_dir)
    r = cli("snapshot", folder, "--model", "p")
    assert r.rc == errors.PickleRefusedError.exit_code and "--convert-pickle" in r.err, r
    assert _listing(store_dir) == before


def test_malicious_pickles_refused_by_default_and_by_the_converter(tmp_path, vault, store_dir, cli):
    suffix = ".bin"
    marker = tmp_path / "PWNED"
    (tmp_path / "src").mkdir()
    for case, data in _pickle_cases(tmp_path / "src", marker).items():
        folder = tmp_path / f"m-{case}"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / f"pytorch_model{suffix}").write_bytes(data)
        before = _listing(store_dir)
        r = cli("snapshot", folder, "--model", "p")
        if data[:1] in (b"\x80", b"P"):  # looks pickled: refused, hint names the option
            assert r.rc == errors.PickleRefusedError.exit_code and "--convert-pickle" in r.err, (case, r)
        r = cli("snapshot", folder, "--model", "p", "--convert-pickle")
        assert r.rc == errors.UnsafePickleError.exit_code, (case, r)
        assert "refused to convert pickle" in r.err, (case, r)
        assert _listing(store_dir) == before, case
        assert not marker.exists(), f"{case} executed code"


def test_zstd_bomb_chunk_is_rejected_without_allocating(vault, toy_model, store_dir, cli, tmp_path):
    import zstandard

    res = vault.snapshot(toy_model, "m")
    cid, n = res.manifest.file("config.json").chunks[0]
    key = store_dir / "chunks" / cid[:2] / cid
    for label, frame in {
        "claims-64MiB": zstandard.ZstdCompressor().compress(b"\0" * (64 << 20)),
        "no-size-streams-64MiB": zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (64 << 20)),
        "claims-2**40": _frame_claiming(1 << 40),
    }.items():
        key.write_bytes(codecs._container(codecs._meta(cid, n, "zstd"), {"data": frame}))
        with pytest.raises(errors.ChunkCorruptError):
            vault.store.read_chunk(cid, n)
        r = cli("restore", "m@1", tmp_path / f"out-{label}")
        assert r.rc == errors.ChunkCorruptError.exit_code and cid[:16] in r.err, (label, r)
        assert not (tmp_path / f"out-{label}" / "config.json").exists()
    r = cli("verify", "--read-data", "--json")
    assert r.rc == 5
    uses = r.json()["damaged"][0]["uses"]
    assert {"version": "m@1", "file": "config.json", "tensor": None} in uses


def _frame_claiming(size: int) -> bytes:
    """A single-segment zstd frame header that claims ``size`` bytes (8-byte content size field)."""
    import struct

    # magic, frame header descriptor: FCS flag 3 (8 bytes), single segment; then one raw empty last block.
    return b"\x28\xb5\x2f\xfd" + bytes([0b11100000]) + struct.pack("<Q", size) + b"\x01\x00\x00"
