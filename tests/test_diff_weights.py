"""Weight diff: statuses from chunk lists, statistics equal to numpy, layers ranked, CLI output."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import toy_tensors, write_model
from weightvault import tensor_stats
from weightvault.archive.store import Store
from weightvault.demo import make_finetune
from weightvault.diff_weights import diff_weights, layer_of
from weightvault.vault import Vault


class CountingStore(Store):
    """The real Store, counting every chunk it decodes (the proof that 'same' costs no decode)."""

    decoded: list

    def read_chunk(self, chunk_id, expected_len=None):
        self.decoded.append(chunk_id)
        return super().read_chunk(chunk_id, expected_len)


def counting_vault(root: Path) -> Vault:
    store = CountingStore.open(root)
    store.decoded = []
    return Vault(store)


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory, minilm_dir):
    """A store with minilm@1 (as released) and minilm@2 (encoder layers 4 and 5 nudged)."""
    tmp = tmp_path_factory.mktemp("minilm-diff")
    v = Vault.init(tmp / "store")
    v.snapshot(minilm_dir, "minilm")
    changed = make_finetune(minilm_dir, tmp / "ft", layers=(4, 5))
    v.snapshot(tmp / "ft", "minilm")
    return tmp / "store", minilm_dir, tmp / "ft", changed


def numpy_stats(a: np.ndarray, b: np.ndarray) -> dict:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    d = b64 - a64
    return {"rel_l2": np.linalg.norm(d) / np.linalg.norm(a64),
            "cosine": a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)),
            "max_abs_diff": np.abs(d).max(), "frac_changed": np.mean(a.ravel() != b.ravel())}


def test_version_against_itself_is_all_same_without_decoding_a_chunk(minilm_store):
    root, *_ = minilm_store
    v = counting_vault(root)
    d = diff_weights(v, "minilm@1", "minilm@1")
    assert {t.status for t in d.tensors} == {"same"}
    assert len(d.tensors) == sum(len(f.tensors) for f in v.manifest("minilm@1").files)
    assert all(t.decided_by == "chunks" for t in d.tensors)
    assert v.store.decoded == [] and d.chunks_read == 0
    assert d.identical and all(x.rel_l2 == 0 for x in d.layers)


def test_finetune_of_last_two_layers_reports_exactly_those_with_numpy_statistics(minilm_store):
    root, src, ft, changed = minilm_store
    v = counting_vault(root)
    d = diff_weights(v, "minilm@1", "minilm@2")
    got = {t.name for t in d.tensors if t.status == "changed"}
    assert got == set(changed) and len(got) == 32
    assert {t.status for t in d.tensors if t.name not in got} == {"same"}
    a, b = load_file(str(src / "model.safetensors")), load_file(str(ft / "model.safetensors"))
    for t in d.tensors:
        if t.status != "changed":
            continue
        want, have = numpy_stats(a[t.name], b[t.name]), t.to_dict()
        for k, val in want.items():
            assert have[k] == pytest.approx(float(val), rel=1e-9, abs=1e-12), (t.name, k)
    # only the changed tensors' chunks were decoded
    ma, mb = v.manifest("minilm@1"), v.manifest("minilm@2")
    expect = [c for m in (ma, mb) for f in m.files for te in f.tensors if te.name in got
              for c, _ in f.tensor_chunks(te)]
    assert set(v.store.decoded) == set(expect)  # a set: a delta codec may decode a base chunk again
    assert [x.layer for x in d.layers[:2]] == sorted(["encoder.layer.4", "encoder.layer.5"],
                                                    key=lambda n: -next(x.rel_l2 for x in d.layers if x.layer == n))
    assert all(x.rel_l2 == 0 and x.changed == 0 for x in d.layers[2:])


def test_shared_tensors_need_no_chunk_files_at_all(tmp_path):
    """Delete every chunk of the tensors both versions share: the diff still works."""
    tensors = toy_tensors()
    v = Vault.init(tmp_path / "store")
    v.snapshot(write_model(tmp_path / "a", tensors), "toy")
    changed = dict(tensors)
    changed["encoder.layer.2.weight"] = tensors["encoder.layer.2.weight"] * np.float32(1.01)
    v.snapshot(write_model(tmp_path / "b", changed), "toy")
    ma, mb = v.manifest("toy@1"), v.manifest("toy@2")
    keep = {c for m in (ma, mb) for f in m.files for t in f.tensors if t.name == "encoder.layer.2.weight"
            for c, _ in f.tensor_chunks(t)}
    removed = 0
    for f in ma.files:
        for c, _ in f.chunks:
            if c not in keep:
                removed += v.store.backend.delete(v.store.chunk_key(c))
    assert removed > 0
    d = diff_weights(v, "toy@1", "toy@2")
    by = {t.name: t for t in d.tensors}
    assert by["encoder.layer.2.weight"].status == "changed"
    assert by["encoder.layer.2.weight"].stats.rel_l2 == pytest.approx(0.01, rel=1e-6)
    assert all(t.status == "same" for n, t in by.items() if n != "encoder.layer.2.weight")


def test_structural_statuses_and_bf16_f16_values(tmp_path):
    import torch

    rng = np.random.default_rng(1)
    base = {
        "keep.weight": rng.standard_normal((8, 8)).astype(np.float32),
        "gone.weight": rng.standard_normal(4).astype(np.float32),
        "grow.weight": rng.standard_normal((4, 4)).astype(np.float32),
        "cast.weight": rng.standard_normal((16,)).astype(np.float32),
        "half.weight": rng.standard_normal((32,)).astype(np.float16),
    }
    bf_a = torch.randn(64, dtype=torch.float32).to(torch.bfloat16)
    bf_b = bf_a.clone()
    bf_b[:10] += 1
    new = dict(base)
    del new["gone.weight"]
    new["new.weight"] = np.ones(3, np.float32)
    new["grow.weight"] = rng.standard_normal((4, 5)).astype(np.float32)
    new["cast.weight"] = base["cast.weight"].astype(np.float16)
    new["half.weight"] = base["half.weight"].copy()
    new["half.weight"][3] = np.float16(7.0)
    v = Vault.init(tmp_path / "store")
    for name, t, bf in (("a", base, bf_a), ("b", new, bf_b)):
        folder = write_model(tmp_path / name, t)
        from safetensors.torch import save_file as save_torch

        save_torch({"bf.weight": bf}, str(folder / "extra.safetensors"))
        v.snapshot(folder, "s")
    d = {t.name: t for t in diff_weights(v, "s@1", "s@2").tensors}
    assert {n: t.status for n, t in d.items()} == {
        "keep.weight": "same", "gone.weight": "removed", "new.weight": "added", "grow.weight": "reshaped",
        "cast.weight": "dtype-changed", "half.weight": "changed", "bf.weight": "changed"}
    # F32 -> F16 is still compared by value: the rounding error of the cast
    cast = numpy_stats(base["cast.weight"], base["cast.weight"].astype(np.float16).astype(np.float32))
    assert d["cast.weight"].stats.rel_l2 == pytest.approx(cast["rel_l2"], rel=1e-9)
    half = numpy_stats(base["half.weight"].astype(np.float32), new["half.weight"].astype(np.float32))
    assert d["half.weight"].to_dict()["max_abs_diff"] == pytest.approx(half["max_abs_diff"], rel=1e-12)
    bf = numpy_stats(bf_a.float().numpy(), bf_b.float().numpy())
    assert d["bf.weight"].to_dict()["rel_l2"] == pytest.approx(bf["rel_l2"], rel=1e-9)
    assert d["bf.weight"].to_dict()["frac_changed"] == pytest.approx(10 / 64)
    assert d["grow.weight"].stats is None and d["grow.weight"].shape_b == (4, 5)


def test_values_decode_every_float_format_like_torch():
    import torch

    x = torch.randn(1000) * 10
    for dt, name in ((torch.bfloat16, "BF16"), (torch.float16, "F16"), (torch.float8_e4m3fn, "F8_E4M3"),
                     (torch.float8_e5m2, "F8_E5M2")):
        t = x.to(dt)
        raw = t.view(torch.uint8).numpy().tobytes()
        np.testing.assert_array_equal(tensor_stats.values(raw, name), t.float().numpy())


def test_piece_statistics_merge_like_one_pass():
    rng = np.random.default_rng(3)
    a = rng.standard_normal(10_001).astype(np.float32)
    b = a + rng.standard_normal(a.size).astype(np.float32) * (rng.random(a.size) < 0.3)
    whole = tensor_stats.piece_stats(a, b)
    parts = tensor_stats.ChangeStats()
    for i in range(0, a.size, 777):
        parts = parts.merge(tensor_stats.piece_stats(a[i:i + 777], b[i:i + 777]))
    for k in ("rel_l2", "cosine", "frac_changed"):
        assert getattr(parts, k) == pytest.approx(getattr(whole, k), rel=1e-12)
    assert parts.max_abs == whole.max_abs and parts.n_changed == whole.n_changed


@pytest.mark.parametrize("name,group,index", [
    ("encoder.layer.5.attention.self.query.weight", "encoder.layer.5", 5),
    ("bert.encoder.layer.11.output.dense.bias", "bert.encoder.layer.11", 11),
    ("model.layers.12.self_attn.q_proj.weight", "model.layers.12", 12),
    ("transformer.h.3.attn.c_attn.weight", "transformer.h.3", 3),
    ("encoder.block.2.layer.0.SelfAttention.q.weight", "encoder.block.2", 2),
    ("h.0.mlp.c_fc.weight", "h.0", 0),
    ("embeddings.word_embeddings.weight", "(no layer)", None),
    ("lm_head.weight", "(no layer)", None),
])
def test_layer_groups_from_names(name, group, index):
    assert layer_of(name) == (group, index)


def test_cli_json_lists_every_tensor_with_status_and_statistics(minilm_store, cli):
    root, *_ = minilm_store
    r = cli("diff", "minilm@1", "minilm@2", "--json", store=root)
    assert r.rc == 0, r
    d = r.json()
    names = {t.name for f in Vault.open(root).manifest("minilm@1").files for t in f.tensors}
    assert {t["name"] for t in d["tensors"]} == names
    for t in d["tensors"]:
        assert t["status"] in ("same", "changed")
        assert {"rel_l2", "cosine", "max_abs_diff", "frac_changed"} <= set(t)
        if t["status"] == "changed":
            assert 0 < t["rel_l2"] < 0.01 and 0.9999 < t["cosine"] < 1 and t["frac_changed"] > 0.9
    assert d["summary"]["changed"] == 32 and d["summary"]["same"] == len(names) - 32
    assert d["layers"][0]["layer"] in ("encoder.layer.4", "encoder.layer.5")
    assert [f["path"] for f in d["files"] if f["status"] != "same"] == ["model.safetensors"]
    text = cli("diff", "minilm@1", "minilm@2", store=root)
    assert text.rc == 0 and "32 changed" in text.out and "encoder.layer.5" in text.out


def test_cli_refuses_unknown_versions_and_bad_prompt_files(minilm_store, cli, tmp_path):
    root, *_ = minilm_store
    r = cli("diff", "minilm@1", "minilm@9", store=root)
    assert r.rc == 3 and "minilm@9" in r.err and len(r.err.strip().splitlines()) == 1
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    r = cli("diff", "minilm@1", "minilm@2", "--prompts", bad, store=root)
    assert r.rc == 4 and f"{bad}:2" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("diff", "minilm@1", "minilm@2", "--html", tmp_path / "none" / "x.html", store=root)
    assert r.rc != 0 and not (tmp_path / "none").exists()


def test_cosine_and_relative_change_of_zero_tensors():
    z = np.zeros(5, np.float32)
    s = tensor_stats.piece_stats(z, np.ones(5, np.float32))
    assert math.isinf(s.rel_l2) and s.cosine is None and s.to_dict()["rel_l2"] is None
    assert tensor_stats.piece_stats(z, z).rel_l2 == 0.0


def test_versions_chunked_differently_are_compared_element_by_element(tmp_path):
    """B stored with another chunk size (pieces not on element boundaries): same stays same, stats exact."""
    tensors = toy_tensors(layers=2, width=96)
    v = Vault.init(tmp_path / "store")
    v.snapshot(write_model(tmp_path / "a", tensors), "toy")
    b = dict(tensors)
    b["encoder.layer.1.weight"] = tensors["encoder.layer.1.weight"].copy()
    b["encoder.layer.1.weight"][5:9] += np.float32(0.5)
    v.store.config["chunk_size"] = 1002  # odd: pieces end mid-element
    v.snapshot(write_model(tmp_path / "b", b), "toy")
    ma, mb = v.manifest("toy@1"), v.manifest("toy@2")
    name = "encoder.layer.0.weight"
    fa, fb = ma.file("model.safetensors"), mb.file("model.safetensors")
    chunks_a = fa.tensor_chunks(next(t for t in fa.tensors if t.name == name))
    chunks_b = fb.tensor_chunks(next(t for t in fb.tensors if t.name == name))
    assert chunks_a != chunks_b  # so "same" below was decided by reading, not by chunk IDs
    d = {t.name: t for t in diff_weights(v, "toy@1", "toy@2").tensors}
    assert d[name].status == "same" and d[name].decided_by == "content"
    assert {n for n, t in d.items() if t.status != "same"} == {"encoder.layer.1.weight"}
    want = numpy_stats(tensors["encoder.layer.1.weight"], b["encoder.layer.1.weight"])
    got = d["encoder.layer.1.weight"].to_dict()
    for k, val in want.items():
        assert got[k] == pytest.approx(float(val), rel=1e-9), k
    assert got["n_changed"] == 4 * 96  # rows 5..8 of a 96-wide matrix


def test_nan_never_hides_a_change_and_an_unchanged_nan_is_not_one(tmp_path):
    """A tensor with a NaN that stays, and one element moved by 1: max |B-A| is 1 and one element changed."""
    a = {"layers.0.w": np.array([np.nan, 1.0, 2.0, 3.0], np.float32),
         "layers.0.v": np.array([1.0, 2.0, 3.0, 4.0], np.float32),
         "layers.1.u": np.array([np.nan, 5.0], np.float32)}
    b = {"layers.0.w": np.array([np.nan, 2.0, 2.0, 3.0], np.float32),  # NaN kept (same bits), 1 -> 2
         "layers.0.v": np.array([1.0, np.nan, 3.0, 4.5], np.float32),  # 2 -> NaN, 4 -> 4.5
         "layers.1.u": np.array([np.nan, 5.0], np.float32)}
    v = Vault.init(tmp_path / "store")
    v.snapshot(write_model(tmp_path / "a", a), "m")
    v.snapshot(write_model(tmp_path / "b", b), "m")
    d = diff_weights(v, "m@1", "m@2").to_dict()
    t = {x["name"]: x for x in d["tensors"]}
    w = t["layers.0.w"]
    assert w["status"] == "changed" and w["max_abs_diff"] == 1.0 and w["n_changed"] == 1
    assert w["frac_changed"] == 0.25 and w["n_nan_changed"] == 0
    assert w["rel_l2"] == pytest.approx(1 / math.sqrt(1 + 4 + 9)) and w["l2_a"] == pytest.approx(math.sqrt(14))
    vv = t["layers.0.v"]
    assert vv["max_abs_diff"] == 0.5 and vv["n_changed"] == 2 and vv["n_nan_changed"] == 1
    assert vv["rel_l2"] is None and vv["l2_a"] == pytest.approx(math.sqrt(1 + 4 + 9 + 16))  # inf: JSON null
    assert t["layers.1.u"]["status"] == "same"
    layer0 = next(x for x in d["layers"] if x["layer"] == "layers.0")
    assert layer0["max_abs_diff"] == 1.0


def test_change_stats_nan_aware_in_any_merge_order():
    a = np.array([np.nan, 1.0, 2.0], np.float32)
    s = tensor_stats.piece_stats(a, a.copy())
    assert s.n_changed == 0 and s.max_abs == 0.0 and s.aa == 5.0  # an unchanged NaN is not a change
    moved = tensor_stats.piece_stats(a, np.array([np.nan, 2.0, 2.0], np.float32))
    assert moved.max_abs == 1.0 and moved.n_changed == 1 and moved.n_nan_changed == 0
    gone = tensor_stats.piece_stats(np.array([1.0], np.float32), np.array([np.nan], np.float32))
    assert gone.max_abs == 0.0 and gone.n_changed == 1 and gone.n_nan_changed == 1
    # a value that became NaN is no small change, and A's own norm is still A's
    assert gone.rel_l2 == math.inf and gone.cosine is None and gone.aa == 1.0 and gone.bb == 0.0
    diverged = tensor_stats.piece_stats(np.array([3.0, 4.0], np.float32), np.full(2, np.nan, np.float32))
    assert diverged.aa == 25.0 and diverged.rel_l2 == math.inf and diverged.to_dict()["l2_a"] == 5.0
    poisoned = tensor_stats.ChangeStats(1, 1, max_abs=math.nan)  # even a NaN max cannot win or hide one
    for x, y in ((moved, gone), (gone, moved), (moved, poisoned), (poisoned, moved)):
        m = x.merge(y)
        assert m.max_abs == 1.0
    sign = tensor_stats.piece_stats(np.array([0.0], np.float32), np.array([-0.0], np.float32))
    assert sign.n_changed == 1 and sign.max_abs == 0.0  # bits changed, value did not
    inf = tensor_stats.piece_stats(np.array([np.inf, 1.0], np.float32), np.array([np.inf, 3.0], np.float32))
    assert inf.n_changed == 1 and inf.max_abs == 2.0 and inf.dd == 4.0
    bf16 = np.array([0x7FC1, 0x3F80], np.uint16).tobytes()  # a NaN and 1.0, as bfloat16
    va = tensor_stats.values(bf16, "BF16")
    assert tensor_stats.piece_stats(va, tensor_stats.values(bf16, "BF16")).n_changed == 0
