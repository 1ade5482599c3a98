"""--convert-pickle and the pickle gate, audit 3 findings 1-7 and 15: real torch.save files, real stores."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from conftest import store_snapshot_state  # noqa: E402
from weightvault import errors  # noqa: E402
from weightvault.archive.snapshot import SourceFile, looks_pickled  # noqa: E402


def _state(store_dir: Path):
    tmp = store_dir / "tmp"
    return store_snapshot_state(store_dir), sorted(os.listdir(tmp)) if tmp.is_dir() else []


def _one_line(r) -> str:
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    return lines[0]


def _refused_conversion(cli, store_dir: Path, folder: Path, model: str) -> str:
    """`snapshot FOLDER --convert-pickle`, refused in one line (exit 4) with the store untouched: that line."""
    before = _state(store_dir)
    r = cli("snapshot", folder, "--model", model, "--convert-pickle")
    assert r.rc == 4, r
    line = _one_line(r)
    assert _state(store_dir) == before
    return line


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- 1. two pickles converting to one name -----------------------------------------------------


def test_two_pickles_with_one_converted_name_are_refused_before_converting(tmp_path, vault, store_dir, cli):
    folder = _mkdir(tmp_path / "pc3")
    torch.save({"w": torch.zeros(2)}, folder / "model.bin")
    torch.save({"w": torch.ones(2)}, folder / "model.pt")
    line = _refused_conversion(cli, store_dir, folder, "pc3")
    assert "model.bin and model.pt both convert to model.safetensors" in line and "--exclude 'model.pt'" in line
    # excluding one of them archives the other
    assert cli("snapshot", folder, "--model", "pc3", "--convert-pickle", "--exclude", "model.pt").rc == 0
    assert [f.path for f in vault.manifest("pc3@1").files] == ["model.safetensors"]


def test_a_file_list_with_one_path_twice_is_refused(tmp_path, vault, store_dir):
    folder = _mkdir(tmp_path / "dup")
    (folder / "config.json").write_text("{}")
    p = folder / "config.json"
    one = SourceFile("config.json", p, p.stat().st_size)
    before = _state(store_dir)
    with pytest.raises(errors.InvalidInputError, match="config.json.*twice"):
        vault.snapshot(folder, "dup", files=[one, one])
    assert _state(store_dir) == before


# -- 2. .ckpt: what besides state_dict is dropped is recorded and said ----------------------------


def test_lightning_checkpoint_records_and_warns_about_dropped_keys(tmp_path, vault, cli):
    folder = _mkdir(tmp_path / "pa")
    torch.save({"epoch": 3, "global_step": 1000, "state_dict": {"w": torch.ones(3)},
                "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(3)}}}],
                "hyper_parameters": {"lr": 0.1}}, folder / "last.ckpt")
    r = cli("snapshot", folder, "--model", "pa", "--convert-pickle")
    assert r.rc == 0, r
    warn = [ln for ln in r.err.splitlines() if "dropped" in ln]
    assert len(warn) == 1 and "last.ckpt" in warn[0], r.err
    for k in ("epoch", "global_step", "hyper_parameters", "optimizer_states"):
        assert k in warn[0]
    conv = vault.manifest("pa@1").metadata["pickle_conversions"]
    assert conv[0]["dropped"] == ["epoch", "global_step", "hyper_parameters", "optimizer_states"]
    assert conv[0]["tensors"] == 1


# -- 3. sharded .bin with its index --------------------------------------------------------------


def _sharded(folder: Path, index_extra: dict | None = None) -> dict:
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    sd = {f"layer.{i}.weight": torch.randn(4, 4) for i in range(4)}
    names = sorted(sd)
    wm = {}
    for i, part in enumerate([names[:2], names[2:]], 1):
        fn = f"pytorch_model-{i:05d}-of-00002.bin"
        torch.save({k: sd[k] for k in part}, folder / fn)
        wm.update({k: fn for k in part})
    wm.update(index_extra or {})
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 256}, "weight_map": wm}, indent=2))
    (folder / "config.json").write_text("{}")
    return sd


def test_sharded_checkpoint_index_is_converted_with_the_shards(tmp_path, vault, cli):
    sd = _sharded(tmp_path / "sh")
    r = cli("snapshot", tmp_path / "sh", "--model", "sh", "--convert-pickle")
    assert r.rc == 0, r
    m = vault.manifest("sh@1")
    assert [f.path for f in m.files] == ["config.json", "model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    idx = [c for c in m.metadata["pickle_conversions"] if c["from"] == "pytorch_model.bin.index.json"]
    assert len(idx) == 1 and idx[0]["to"] == "model.safetensors.index.json"
    out = tmp_path / "out"
    assert cli("restore", "sh@1", out).rc == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": 256}
    for name, shard in index["weight_map"].items():
        assert torch.equal(load_file(out / shard)[name], sd[name])
    assert set(index["weight_map"]) == set(sd)


def test_sharded_bert_checkpoint_loads_in_transformers_after_restore(tmp_path, vault, cli):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    m = transformers.BertModel(cfg)
    folder = _mkdir(tmp_path / "bertpk")
    cfg.save_pretrained(folder)
    sd = m.state_dict()
    ks = list(sd)
    wm = {}
    for i, part in enumerate([ks[: len(ks) // 2], ks[len(ks) // 2:]], 1):
        fn = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: sd[k] for k in part}, folder / fn)
        wm.update({k: fn for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 0},
                                                                      "weight_map": wm}))
    assert cli("snapshot", folder, "--model", "bertpk", "--convert-pickle").rc == 0
    out = tmp_path / "rbert"
    assert cli("restore", "bertpk@1", out).rc == 0
    back = transformers.BertModel.from_pretrained(out)
    for k, t in back.state_dict().items():
        assert torch.equal(t, sd[k]), k


def test_index_naming_a_shard_that_is_not_converted_is_refused(tmp_path, vault, store_dir, cli):
    _sharded(tmp_path / "sh", {"extra.weight": "pytorch_model-00003-of-00003.bin"})
    line = _refused_conversion(cli, store_dir, tmp_path / "sh", "sh")
    assert "pytorch_model.bin.index.json" in line and "pytorch_model-00003-of-00003.bin" in line


# -- 4. zip shape: the scanner and torch.load read the same pickle ---------------------------------


def test_legacy_pickle_with_a_zip_appended_is_refused(tmp_path, vault, store_dir, cli):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    b = io.BytesIO()
    torch.save({"w": torch.full((3,), 7.0), "extra": torch.zeros(2)}, b, _use_new_zipfile_serialization=False)
    folder = _mkdir(tmp_path / "m6")
    (folder / "pytorch_model.bin").write_bytes(b.getvalue() + good.read_bytes())
    before = _state(store_dir)
    r = cli("snapshot", folder, "--model", "m6", "--convert-pickle")
    assert r.rc == 4 and "refused to convert pickle" in r.err and "pytorch_model.bin" in r.err, r
    assert _state(store_dir) == before


def test_zip_with_data_before_its_first_member_is_refused(tmp_path, vault, store_dir, cli):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.ones(3)}, a)
    torch.save({"w": torch.full((3,), 7.0)}, b)
    folder = _mkdir(tmp_path / "m7")
    (folder / "pytorch_model.bin").write_bytes(a.read_bytes() + b.read_bytes())
    before = _state(store_dir)
    r = cli("snapshot", folder, "--model", "m7", "--convert-pickle")
    assert r.rc == 4 and "refused to convert pickle" in r.err, r
    assert _state(store_dir) == before


def test_truncated_zip_checkpoint_is_called_damaged(tmp_path, vault, store_dir, cli):
    p = tmp_path / "full.pt"
    torch.save({"w": torch.randn(1000)}, p)
    data = p.read_bytes()
    folder = _mkdir(tmp_path / "tr")
    (folder / "model.pt").write_bytes(data[: len(data) // 2])
    r = cli("snapshot", folder, "--model", "tr", "--convert-pickle")
    assert r.rc == 4, r
    line = _one_line(r)
    assert "model.pt" in line and "damaged or truncated zip" in line and "legacy" not in line


# -- 5. protocol 0/1 pickles are pickles too --------------------------------------------------------


@pytest.mark.parametrize("name,protocol", [("model.pkl", 0), ("model.pkl", 1), ("pytorch_model.bin", 0),
                                           ("weights.pt", 1), ("last.ckpt", 0), ("w.pth", 1)])
def test_protocol_0_and_1_pickles_are_refused(name, protocol, tmp_path, vault, store_dir, cli):
    marker = tmp_path / "PWNED"
    folder = _mkdir(tmp_path / "m5")
    (folder / "config.json").write_text("{}")
    (folder / name).write_bytes(pickle.dumps(_Evil(marker), protocol=protocol))
    before = _state(store_dir)
    r = cli("snapshot", folder, "--model", "m5")
    assert r.rc == errors.PickleRefusedError.exit_code and name in r.err and "--convert-pickle" in r.err, r
    r = cli("snapshot", folder, "--model", "m5", "--convert-pickle")
    assert r.rc == 4 and "refused to convert pickle" in r.err, r
    assert _state(store_dir) == before
    assert not marker.exists()


def test_plain_pickles_of_other_shapes_are_detected(tmp_path):
    marker = tmp_path / "PWNED"
    cases = {
        "dict0.bin": pickle.dumps({"a": [1, 2], "b": "x"}, protocol=0),
        "list1.bin": pickle.dumps([_Evil(marker)], protocol=1),
        "none_then_global.bin": b"N0" + pickle.dumps(_Evil(marker), protocol=0),
        # a long string first, so the import comes after the first MiB
        "padded.bin": b"(S'" + b"a" * (3 << 20) + b"'\n0" + pickle.dumps(_Evil(marker), protocol=0),
        "proto4_without_header.bin": pickle.dumps(_Evil(marker), protocol=4)[11:],  # PROTO+FRAME cut
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert looks_pickled(tmp_path / name), name
    assert not marker.exists()


def test_real_binaries_with_a_pickle_suffix_are_still_archived(tmp_path, vault, cli):
    rng = np.random.default_rng(0)
    folder = _mkdir(tmp_path / "bins")
    (folder / "config.json").write_text("{}")
    # word2vec binary: a text header line, then float32 rows
    (folder / "vectors.bin").write_bytes(b"3 4\n" + b"".join(
        w + b" " + rng.standard_normal(4).astype(np.float32).tobytes() for w in (b"cat", b"dog", b"(x)")))
    (folder / "model.gguf.bin").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + rng.bytes(4096))
    (folder / "fasttext.bin").write_bytes((793712314).to_bytes(4, "little") + rng.bytes(4096))
    (folder / "raw.pt").write_bytes(rng.standard_normal(5000).astype(np.float32).tobytes())
    (folder / "zeros.ckpt").write_bytes(bytes(10000))
    (folder / "notes.pth").write_text("checkpoint notes: trained 3 epochs\n")
    # random bytes that start like pickle opcodes (MARK, EMPTY_DICT, NONE, GLOBAL)
    for i, first in enumerate(b"(}N]c"):
        for j in range(40):
            (folder / f"rand{i}_{j}.bin").write_bytes(bytes([first]) + rng.bytes(2 << 10))
    r = cli("snapshot", folder, "--model", "bins")
    assert r.rc == 0, r
    assert len(vault.manifest("bins@1").files) == 7 + 5 * 40


# -- 6. errors about a converted file name the user's file ------------------------------------------


def test_error_in_a_converted_file_names_the_source(tmp_path, vault, store_dir, cli):
    folder = _mkdir(tmp_path / "pg4")
    torch.save({"": torch.ones(1)}, folder / "model.pt")
    line = _refused_conversion(cli, store_dir, folder, "pg4")
    assert "model.pt (converted to model.safetensors)" in line and "empty tensor name" in line
    assert "--exclude 'model.pt'" in line and "weightvault-convert" not in line and "/tmp" not in line


# -- 7. memory -----------------------------------------------------------------------------------------


_CONVERT_ONLY = """
import sys
from pathlib import Path
import torch, safetensors.torch
from weightvault.archive.pickle_convert import converted

def status(key):  # kB; VmHWM is this process's own peak (ru_maxrss would count the forking parent's)
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith(key)).split()[1])

before = status("VmRSS:")
with converted(Path(sys.argv[1]), {}) as kw:
    assert len(kw["files"]) == 1
print((status("VmHWM:") - before) / 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_conversion_memory_stays_near_one_copy_of_the_checkpoint(tmp_path):
    size_mib = 128
    folder = _mkdir(tmp_path / "big")
    torch.manual_seed(0)
    torch.save({"w": torch.randn(size_mib << 18), "small": torch.zeros(4)}, folder / "pytorch_model.bin")
    out = subprocess.run([sys.executable, "-c", _CONVERT_ONLY, str(folder)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    growth = float(out.stdout.split()[-1])
    # before: torch.load without mmap + a clone of every tensor + save_file's bytes, about 3 copies
    # (+390 MiB here); now the mmap'd file pages once, written out tensor by tensor
    assert growth < 1.5 * size_mib, growth


# -- 15. FP8 / uint16 and the training_args.bin hint ------------------------------------------------


def test_fp8_and_unsigned_checkpoints_convert_bit_exact(tmp_path, vault, cli):
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    sd = {"f8": x.to(torch.float8_e4m3fn), "f8b": x.to(torch.float8_e5m2),
          "u16": torch.arange(30, dtype=torch.int32).to(torch.uint16).reshape(6, 5),
          "u32": torch.arange(7).to(torch.uint32), "u64": torch.arange(3).to(torch.uint64),
          "t": x.t(), "strided": x[::2, 1:], "tied": x, "tied2": x, "f32": x.clone()}
    folder = _mkdir(tmp_path / "f8")
    torch.save(sd, folder / "model.pt")
    r = cli("snapshot", folder, "--model", "f8", "--convert-pickle")
    assert r.rc == 0, r
    assert "torch._utils._rebuild_tensor_v3" in vault.manifest("f8@1").metadata["pickle_conversions"][0]["globals"]
    out = tmp_path / "out"
    assert cli("restore", "f8@1", out).rc == 0
    back = load_file(out / "model.safetensors")
    assert back.keys() == sd.keys()
    for k, t in sd.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape, k
        assert torch.equal(back[k].contiguous().view(torch.uint8), t.contiguous().view(torch.uint8)), k


def test_training_args_refusal_just_says_exclude_it(tmp_path, vault, cli):
    folder = _mkdir(tmp_path / "ta")
    torch.save({"w": torch.ones(2)}, folder / "pytorch_model.bin")
    torch.save(argparse.Namespace(lr=0.1, epochs=3), folder / "training_args.bin")
    r = cli("snapshot", folder, "--model", "ta", "--convert-pickle")
    assert r.rc == 4, r
    line = _one_line(r)
    assert "training_args.bin" in line and "--exclude 'training_args.bin'" in line and "sandbox" not in line
    assert cli("snapshot", folder, "--model", "ta", "--convert-pickle", "--exclude", "training_args.bin").rc == 0
    # without --convert-pickle the hint is the same, not "pass --convert-pickle"
    (folder / "pytorch_model.bin").unlink()
    r = cli("snapshot", folder, "--model", "ta2")
    line = _one_line(r)
    assert r.rc == 4 and "--exclude 'training_args.bin'" in line and "--convert-pickle" not in line, r


def test_zip_shape_checks_still_refuse_compressed_members(tmp_path, vault, cli):
    src = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(3)}, src)
    folder = _mkdir(tmp_path / "cz")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(folder / "model.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    r = cli("snapshot", folder, "--model", "cz", "--convert-pickle")
    assert r.rc == 4 and "compressed" in r.err, r


def test_conversions_can_go_to_the_stores_tmp_folder(tmp_path, vault, store_dir):
    from weightvault.archive.pickle_convert import converted

    folder = _mkdir(tmp_path / "sub")
    torch.save({"w": torch.ones(3)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    tmp = store_dir / "tmp"
    with converted(folder, {}, tmp_dir=tmp) as kw:
        made = [f for f in kw["files"] if f.rel == "model.safetensors"]
        assert len(made) == 1 and made[0].path.parent == tmp and made[0].path.name.endswith(".tmp")
        assert torch.equal(load_file(made[0].path)["w"], torch.ones(3))
    assert list(tmp.iterdir()) == []  # removed afterwards; flat files, which gc's temp sweep handles
