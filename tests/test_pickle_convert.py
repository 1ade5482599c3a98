"""--convert-pickle: a real torch checkpoint becomes safetensors, bit-exact, with the conversion recorded."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from weightvault.archive.pickle_convert import converted_name, scan_pickle  # noqa: E402


def test_state_dict_is_converted_and_recorded(tmp_path, vault, cli):
    net = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 50))
    net[1].weight = net[0].weight  # tied weights share storage
    sd = dict(net.state_dict())
    sd["bf16"] = torch.randn(7).to(torch.bfloat16)
    sd["steps"] = torch.arange(5)
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    r = cli("snapshot", folder, "--model", "pt", "--convert-pickle", "--json")
    assert r.rc == 0, r
    m = vault.manifest("pt@1")
    assert [f.path for f in m.files] == ["config.json", "model.safetensors"]
    conv = m.metadata["pickle_conversions"]
    assert conv[0]["from"] == "pytorch_model.bin" and conv[0]["to"] == "model.safetensors"
    assert conv[0]["loader"] == "torch.load(weights_only=True)"
    assert "torch._utils._rebuild_tensor_v2" in conv[0]["globals"]
    out = tmp_path / "out"
    assert cli("restore", "pt@1", out).rc == 0
    back = load_file(out / "model.safetensors")
    assert back.keys() == sd.keys()
    for k, t in sd.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    # recorded in the catalog too (the manifest's metadata is indexed with the version)
    rows = cli("sql", "SELECT metadata->'pickle_conversions'->0->>'from' AS f FROM versions", "--json").json()
    assert rows == [{"f": "pytorch_model.bin"}]


def test_lightning_style_checkpoint_uses_its_state_dict(tmp_path, vault, cli):
    folder = tmp_path / "ck"
    folder.mkdir()
    torch.save({"state_dict": {"w": torch.ones(3)}}, folder / "last.ckpt")
    assert cli("snapshot", folder, "--model", "ck", "--convert-pickle").rc == 0
    assert [f.path for f in vault.manifest("ck@1").files] == ["last.safetensors"]


def test_converted_names_and_collisions(tmp_path, cli, vault):
    assert converted_name("pytorch_model-00001-of-00002.bin") == "model-00001-of-00002.safetensors"
    assert converted_name("sub/weights.pth") == "sub/weights.safetensors"
    folder = tmp_path / "both"
    folder.mkdir()
    torch.save({"w": torch.ones(2)}, folder / "model.pt")
    (folder / "model.safetensors").write_bytes(b"")
    r = cli("snapshot", folder, "--model", "b", "--convert-pickle")
    assert r.rc == 4 and "--exclude" in r.err


def test_scanner_accepts_real_checkpoints(tmp_path):
    import zipfile

    p = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(2, dtype=torch.float16), "b": torch.zeros(1, dtype=torch.bool)}, p)
    with zipfile.ZipFile(p) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert "torch.HalfStorage" in scan_pickle(pkl, "x.pt")
