"""The compression engine: float codec, deltas, casts, chain bounds, hostile containers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import toy_tensors, tree_files, write_model
from weightvault.archive import cast, codecs, delta, engine, floatsplit, ids
from weightvault.archive.safetensors_header import build_file
from weightvault.errors import ChunkCorruptError, DeltaBaseMissingError
from weightvault.vault import Vault


def bf16_rne(a: np.ndarray) -> np.ndarray:
    """Reference bf16 round-to-nearest-even via torch (the converter users run)."""
    torch = pytest.importorskip("torch")
    return torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def weights(seed: int, n: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.05).astype(np.float32)


def round_trip(raw: bytes, enc: codecs.EncodedChunk, get_raw=None) -> bytes:
    return codecs.decode_chunk(enc.container, ids.content_id(raw), get_raw, expected_len=len(raw))


# -- codecs ------------------------------------------------------------------


@pytest.mark.parametrize("dtype,np_dtype", [("F32", np.float32), ("BF16", np.uint16)])
def test_fsplit_round_trips_and_beats_bytegroup(dtype, np_dtype):
    w = weights(1, 1 << 16)
    raw = (w if dtype == "F32" else bf16_rne(w)).tobytes()
    cid = ids.content_id(raw)
    enc = codecs.encode_chunk(raw, cid, dtype=dtype)
    assert enc.codec == "fsplit"
    assert round_trip(raw, enc) == raw
    streams, kinds = codecs._encode_planes(raw, 4 if dtype == "F32" else 2, 1)
    assert len(enc.container) < sum(len(v) for v in streams.values())


def test_fsplit_escapes_rare_exponents():
    # more than 15 distinct exponents: the rare ones go through the escape stream
    w = np.concatenate([weights(2, 4096), np.float32(2.0) ** np.arange(-60, 60, dtype=np.float32),
                        np.array([0, -0.0, np.inf, -np.inf, np.nan, 1e-45], dtype=np.float32)])
    raw = w.tobytes()
    enc = floatsplit.encode(raw, ids.content_id(raw), "F32", 1)
    h = codecs.parse_container(enc.container, ids.content_id(raw))
    assert h.streams["x"][1] > h.streams["x"][0]
    assert round_trip(raw, enc) == raw


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["F32", "BF16", "F16", "F64", "I64", "I32", "U8", "F8_E4M3", None]),
       data=st.binary(min_size=0, max_size=4096), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_codecs_round_trip_any_dtype_and_size(dtype, data, n, seed):
    size = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4}.get(dtype, 1)
    rng = np.random.default_rng(seed)
    raw = (data + rng.integers(0, 256, n * size, dtype=np.uint8).tobytes())
    raw = raw[: len(raw) - len(raw) % size] or bytes(size)
    cid = ids.content_id(raw)
    enc = codecs.encode_chunk(raw, cid, dtype=dtype)
    assert len(enc.container) <= len(raw) + 1024
    assert round_trip(raw, enc) == raw
    # a delta against any same-length base, and a cast against any fp32 base
    base = rng.integers(0, 256, len(raw), dtype=np.uint8).tobytes()
    bid = ids.content_id(base)
    forced = ((delta.XOR_EXP,), (delta.SUB_EXP,)) if size in (2, 4) else ()
    for codecs_to_try in ((delta.XOR,), (delta.SUB,), *forced):
        d = delta.encode(raw, cid, base, bid, itemsize=size, codecs_to_try=codecs_to_try)
        assert d.codec == codecs_to_try[0]
        assert round_trip(raw, d, {bid: base}.__getitem__) == raw
    if dtype in cast.RECIPES:
        fbase = rng.integers(0, 256, 2 * len(raw), dtype=np.uint8).tobytes()
        c = cast.encode(raw, cid, dtype, fbase, ids.content_id(fbase))
        assert round_trip(raw, c, {ids.content_id(fbase): fbase}.__getitem__) == raw


def test_old_codecs_still_decode():
    raw = weights(3, 1000).tobytes()
    cid = ids.content_id(raw)
    streams, kinds = codecs._encode_planes(raw, 4, 3)
    old = codecs.container(codecs.chunk_meta(cid, len(raw), "bytegroup", itemsize=4, planes=",".join(kinds),
                                             level=3), streams)
    assert codecs.decode_chunk(old, cid) == raw
    z = codecs.container(codecs.chunk_meta(cid, len(raw), "zstd", level=3), {"data": zstandard.compress(raw)})
    assert codecs.decode_chunk(z, cid) == raw


def test_zstd_bomb_container_is_refused():
    # a stream whose frame claims far more than the chunk's raw length
    raw = weights(4, 256).tobytes()
    cid = ids.content_id(raw)
    enc = floatsplit.encode(raw, cid, "F32", 1)
    h = codecs.parse_container(enc.container, cid)
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(64 << 20))
    streams = {k: enc.container[b:e] for k, (b, e) in h.streams.items()}
    streams["j"] = bomb
    meta = dict(h.meta, kinds="zstd," + h.meta["kinds"].split(",", 1)[1])
    evil = build_file({k: ("U8", (len(v),), v) for k, v in streams.items()}, meta)
    with pytest.raises(ChunkCorruptError, match="claims 67108864 bytes"):
        codecs.decode_chunk(evil, cid)


# -- deltas --------------------------------------------------------------------


def test_delta_round_trip_is_byte_exact_and_small():
    old = weights(5, 1 << 16)
    new = old + (weights(6, 1 << 16) * 1e-3) * old
    raw, base = new.tobytes(), old.tobytes()
    cid, bid = ids.content_id(raw), ids.content_id(base)
    d = delta.encode(raw, cid, base, bid, itemsize=4, base_depth=2)
    h = codecs.parse_container(d.container, cid)
    assert h.base == bid and h.meta["depth"] == "3" and d.base == bid
    assert round_trip(raw, d, {bid: base}.__getitem__) == raw
    full = codecs.encode_chunk(raw, cid, dtype="F32")
    assert len(d.container) < 0.8 * len(full.container)


def fine_tune_like(n: int, seed: int, dtype: str = "F32") -> tuple[bytes, bytes]:
    """(new, base): weights of varied magnitude, each moved by a change of one scale (as an optimizer
    does), so that small weights move by many more units in the last place than large ones."""
    rng = np.random.default_rng(seed)
    old = (rng.standard_normal(n) * 0.05).astype(np.float32)
    new = (old + rng.standard_normal(n).astype(np.float32) * np.float32(2e-4)).astype(np.float32)
    if dtype == "BF16":
        old, new = ((x.view(np.uint32) >> 16).astype("<u2") for x in (old, new))
    return new.tobytes(), old.tobytes()


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_exponent_segmented_delta_is_smaller_and_byte_exact(dtype):
    itemsize = 4 if dtype == "F32" else 2
    raw, base = fine_tune_like(1 << 17, 11, dtype)
    cid, bid = ids.content_id(raw), ids.content_id(base)
    order = (delta.SUB, delta.XOR) if itemsize == 4 else (delta.XOR, delta.SUB)
    plain = delta.encode(raw, cid, base, bid, itemsize=itemsize, codecs_to_try=order)
    exp = delta.encode(raw, cid, base, bid, itemsize=itemsize, codecs_to_try=order, floats=True)
    assert exp.codec == delta._EXP[plain.codec]
    h = codecs.parse_container(exp.container, cid)
    cuts = [int(x) for x in h.meta["cuts"].split(",")]
    segs = delta.segment_sizes(delta.key_counts(base, itemsize), cuts)
    assert len(segs) > 1 and min(segs) >= delta.MIN_SEG and sum(segs) == len(raw) // itemsize
    assert len(exp.container) < 0.99 * len(plain.container)
    delta.BASES._d.pop(bid, None)
    assert round_trip(raw, exp, {bid: base}.__getitem__) == raw
    # a piece too small for two segments keeps the plain codec
    small = delta.encode(raw[:1000 * itemsize], ids.content_id(raw[:1000 * itemsize]), base[:1000 * itemsize],
                         ids.content_id(base[:1000 * itemsize]), itemsize=itemsize, floats=True)
    assert small.codec in (delta.XOR, delta.SUB)


@pytest.mark.parametrize("changed", [1, 300])
def test_a_sparse_change_keeps_the_plain_delta_layout(changed):
    """Near-empty segment streams cost their headers: a few changed weights store smaller unsegmented."""
    new, base = fine_tune_like(1 << 17, 15)
    n = len(base) // 4
    idx = np.random.default_rng(16).choice(n, changed, replace=False)
    mixed = np.frombuffer(base, np.float32).copy()
    mixed[idx] = np.frombuffer(new, np.float32)[idx]
    raw = mixed.tobytes()
    cid, bid = ids.content_id(raw), ids.content_id(base)
    forced = delta.encode(raw, cid, base, bid, itemsize=4, codecs_to_try=(delta.SUB_EXP,))
    chosen = delta.encode(raw, cid, base, bid, itemsize=4, floats=True)
    assert chosen.codec in (delta.SUB, delta.XOR)
    assert len(chosen.container) < len(forced.container)
    assert round_trip(raw, chosen, {bid: base}.__getitem__) == raw


def test_exponent_segmented_delta_with_bad_cuts_is_refused():
    raw, base = fine_tune_like(1 << 16, 12)
    cid, bid = ids.content_id(raw), ids.content_id(base)
    enc = delta.encode(raw, cid, base, bid, itemsize=4, floats=True)
    h = codecs.parse_container(enc.container, cid)
    streams = {k: enc.container[b:e] for k, (b, e) in h.streams.items()}
    cuts = [int(x) for x in h.meta["cuts"].split(",")]
    assert len(cuts) >= 2

    def evil(**meta):
        m = {key: val for key, val in dict(h.meta, **meta).items() if val is not None}
        return build_file({k: ("U8", (len(v),), v) for k, v in streams.items()}, m)

    get = {bid: base}.__getitem__
    for bad, why in ((None, "lacks valid cuts"), ("x", "lacks valid cuts"), ("1,5", "lacks valid cuts"),
                     (" 0,5", "lacks valid cuts"), ("0,05", "lacks valid cuts"), ("0,+5", "lacks valid cuts"),
                     ("0,1_2", "lacks valid cuts"), ("0,5,5", "not ascending"), ("0,256", "not ascending"),
                     ("0,9,3", "not ascending"), ("0", "parameters do not fit"),
                     (f"0,1,{','.join(map(str, cuts[1:]))}", "empty segment")):  # no weight has key 0
        with pytest.raises(ChunkCorruptError, match=why):
            codecs.decode_chunk(evil(cuts=bad), cid, get)
    with pytest.raises(ChunkCorruptError, match="needs 2- or 4-byte elements"):
        codecs.decode_chunk(evil(itemsize="8"), cid, get)
    # cuts moved by one key: as many streams, other sizes
    moved = ",".join(map(str, [0, *(c + 1 for c in cuts[1:])]))
    with pytest.raises(ChunkCorruptError, match="stream 'p0"):
        codecs.decode_chunk(evil(cuts=moved), cid, get)
    with pytest.raises(ChunkCorruptError):  # a plain delta's decoder never reads an -exp container
        codecs.decode_chunk(evil(codec=delta.SUB, cuts=None), cid, get)
    assert codecs.decode_chunk(enc.container, cid, get) == raw


def test_snapshot_of_a_fine_tune_stores_exponent_segmented_deltas(vault, tmp_path):
    t = toy_tensors(seed=13, width=256)
    write_model(tmp_path / "v1", t)
    vault.snapshot(tmp_path / "v1", "toy")
    rng = np.random.default_rng(14)
    t2 = {k: ((v + rng.standard_normal(v.shape).astype(np.float32) * np.float32(1e-3)).astype(np.float32)
              if v.dtype == np.float32 else v) for k, v in t.items()}
    write_model(tmp_path / "v2", t2)
    r2 = vault.snapshot(tmp_path / "v2", "toy")
    used = {i[2] for i in r2.stats.new_chunk_info.values()}
    assert delta.SUB_EXP in used  # the 256x256 pieces
    assert used & {delta.SUB, delta.XOR}  # the biases: too small for segments
    delta.BASES._d.clear()
    vault.restore(f"toy@{r2.version}", tmp_path / "out")
    assert tree_files(tmp_path / "out") == tree_files(tmp_path / "v2")
    codec_rows = dict(vault.sql("SELECT codec, count(*) FROM chunks GROUP BY codec")[1])
    assert codec_rows.get(delta.SUB_EXP, 0) >= 1


def test_delta_whose_base_is_missing_names_the_base(vault, tmp_path):
    t = toy_tensors(seed=7, width=128)
    write_model(tmp_path / "v1", t)
    vault.snapshot(tmp_path / "v1", "toy")
    t2 = {k: (v * np.float32(1.0001) if v.dtype == np.float32 else v) for k, v in t.items()}
    write_model(tmp_path / "v2", t2)
    r2 = vault.snapshot(tmp_path / "v2", "toy")
    deltas = {c: i for c, i in r2.stats.new_chunk_info.items() if i[2].startswith("delta-")}
    assert deltas, r2.stats.new_chunk_info
    cid, (_, _, _, base) = next(iter(deltas.items()))
    (vault.store.root / vault.store.chunk_key(base)).unlink()
    delta.BASES._d.clear()
    with pytest.raises(DeltaBaseMissingError) as err:
        vault.store.read_chunk(cid)
    assert err.value.chunk_id == base and base in str(err.value) and cid in str(err.value)


def test_delta_chain_is_bounded(vault, tmp_path):
    t = toy_tensors(seed=8, width=128)
    versions = []
    for i in range(delta.MAX_CHAIN + 4):
        t = {k: (v + np.float32(1e-4) * np.sign(v) if v.dtype == np.float32 else v) for k, v in t.items()}
        write_model(tmp_path / f"v{i}", t)
        versions.append(vault.snapshot(tmp_path / f"v{i}", "toy"))
    depths = []
    for r in versions:
        for cid in r.stats.new_chunk_info:
            h, _ = vault.store.chunk_header(cid)
            depths.append(delta.chain_depth(h))
    assert max(depths) == delta.MAX_CHAIN  # chains grew to the bound...
    assert depths.count(0) > len(versions[0].stats.new_chunk_info)  # ...then restarted from full chunks
    rows = vault.sql("SELECT count(*) FROM chunks WHERE base_id IS NOT NULL")[1]
    assert rows[0][0] > 0
    out = tmp_path / "out"
    vault.restore(f"toy@{versions[-1].version}", out)
    assert tree_files(out) == tree_files(tmp_path / f"v{len(versions) - 1}")


# -- casts and the engine on a real model ------------------------------------------


def test_bf16_cast_is_stored_as_recipe_and_recorded(vault, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = {k: torch.from_numpy(v) for k, v in toy_tensors(seed=9, width=256).items()}
    write_model(tmp_path / "fp32", {k: v.numpy() for k, v in t.items()})
    r1 = vault.snapshot(tmp_path / "fp32", "toy")
    bf = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in t.items()}
    bf["encoder.layer.0.weight"] = bf["encoder.layer.0.weight"].clone()
    bf["encoder.layer.0.weight"][0, :3] += 1  # not exact: a residual
    tr = {k: v for k, v in t.items()}
    tr["encoder.layer.1.weight"] = (t["encoder.layer.1.weight"].view(torch.int32) >> 16 << 16).view(torch.float32)
    bf["encoder.layer.1.weight"] = tr["encoder.layer.1.weight"].to(torch.bfloat16)  # truncation == rne here
    write_model(tmp_path / "bf16", {k: v.numpy() for k, v in t.items()})  # config etc.
    save_file(bf, str(tmp_path / "bf16" / "model.safetensors"))
    r2 = vault.snapshot(tmp_path / "bf16", "toy")
    codec_of = {c: i[2] for c, i in r2.stats.new_chunk_info.items()}
    f = r2.manifest.file("model.safetensors")
    for tt in f.tensors:
        if tt.dtype == "BF16":
            assert {codec_of.get(c) for c, _ in f.tensor_chunks(tt)} == {"cast"}, tt.name
    tensor_bytes = sum(tt.end - tt.begin for tt in f.tensors if tt.dtype == "BF16")
    cast_bytes = sum(i[1] for i in r2.stats.new_chunk_info.values() if i[2] == "cast")
    assert cast_bytes < tensor_bytes / 20
    out = tmp_path / "out"
    vault.restore("toy@2", out)
    assert tree_files(out) == tree_files(tmp_path / "bf16")
    # the derivation is in the catalog, and survives a rebuild from the store
    q = "SELECT tensor, source_version, recipes, exact_pieces, differing_elements FROM tensor_derivations ORDER BY 1"
    rows = vault.sql(q)[1]
    assert {r[0] for r in rows} == {tt.name for tt in f.tensors if tt.dtype == "BF16"}
    by = {r[0]: r for r in rows}
    assert by["encoder.layer.0.weight"][3:] == (0, 3) and by["embeddings.weight"][3:] == (1, 0)
    assert all(r[1] == r1.version for r in rows)
    vault.catalog.rebuild()
    assert vault.sql(q)[1] == rows


def test_cast_of_an_older_version_is_found_once_and_credited_canonically(vault, tmp_path, monkeypatch):
    """v3 = bf16 cast of v1, archived after v2 changed some tensors (its default parent).

    Every piece is an exact cast. Unchanged tensors are credited to the parent v2 (it shares
    v1's chunks); changed ones to v1. Once v1 gave an exact cast it is tried first, so only
    the first changed piece reads v2's chunk in vain (one worker: a deterministic order)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    vault.store.config["chunk_size"] = 64 << 10  # 16k-element pieces: each changed tensor has four
    t = toy_tensors(seed=12, width=256)
    write_model(tmp_path / "v1", t)
    vault.snapshot(tmp_path / "v1", "toy")
    changed = {"encoder.layer.0.weight", "encoder.layer.1.weight"}
    t2 = {k: (v + np.float32(1e-3) if k in changed else v) for k, v in t.items()}
    write_model(tmp_path / "v2", t2)
    vault.snapshot(tmp_path / "v2", "toy")
    write_model(tmp_path / "bf16", t)
    bf = {k: (torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v))
          for k, v in t.items()}
    save_file(bf, str(tmp_path / "bf16" / "model.safetensors"))
    reads = []
    real_base = engine.Encoder._base
    monkeypatch.setattr(engine.Encoder, "_base", lambda self, bid: reads.append(bid) or real_base(self, bid))
    r3 = vault.snapshot(tmp_path / "bf16", "toy", workers=1)
    f = r3.manifest.file("model.safetensors")
    bf16_pieces = [c for tt in f.tensors if tt.dtype == "BF16" for c, _ in f.tensor_chunks(tt)]
    assert {r3.stats.new_chunk_info[c][2] for c in bf16_pieces} == {"cast"}
    assert len(set(reads)) == len(reads) == len(bf16_pieces) + 1  # the old order: + 8
    rows = dict(vault.sql("SELECT tensor, source_version FROM tensor_derivations")[1])
    assert {k for k, v in rows.items() if v == "1"} == changed
    assert set(rows.values()) == {"1", "2"}
    vault.restore("toy@3", tmp_path / "out")
    assert tree_files(tmp_path / "out") == tree_files(tmp_path / "bf16")


def test_a_new_model_is_encoded_against_its_lineage_base(cli, tmp_path, store_dir):
    """A fine-tune archived under its own name with --base-model costs what changed (before: every
    changed chunk stored in full); a cast recorded as its own model is a recipe; a distilled student
    (its teacher's outputs, not its weights) is not encoded against the teacher. Restores stay exact,
    and survive the base version's removal and a gc."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = toy_tensors(seed=13, width=256)
    write_model(tmp_path / "base", t)
    assert cli("snapshot", tmp_path / "base", "--model", "base").rc == 0
    ft = {k: (v + np.float32(1e-4) * np.sign(v) if v.dtype == np.float32 else v) for k, v in t.items()}
    write_model(tmp_path / "ft", ft)

    def added(model, *extra):
        r = cli("snapshot", tmp_path / "ft", "--model", model, *extra, "--json")
        assert r.rc == 0, r
        assert r.json()["encoded_against"] == ("base@1" if "finetune" in extra else None), r
        return r.json()["new_stored_bytes"]

    alone = added("ft-alone")  # no lineage: full encodings
    assert cli("rm", "ft-alone@1").rc == 0 and cli("gc", "--grace", "0").rc == 0
    distilled = added("student", "--base-model", "base@1", "--relation", "distilled")
    assert distilled == alone
    assert cli("rm", "student@1").rc == 0 and cli("gc", "--grace", "0").rc == 0
    finetune = added("ft", "--base-model", "base@1", "--relation", "finetune")
    assert finetune < alone / 2, (finetune, alone)
    show = cli("show", "ft@1", "--json").json()
    assert show["parent"] is None  # the version history is untouched: ft@1 is ft's first version

    write_model(tmp_path / "bf16", t)
    save_file({k: (torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v))
               for k, v in t.items()}, str(tmp_path / "bf16" / "model.safetensors"))
    r = cli("snapshot", tmp_path / "bf16", "--model", "base-bf16", "--base-model", "base@1", "--relation", "cast",
            "--json")
    assert r.rc == 0 and r.json()["new_stored_bytes"] < r.json()["new_raw_bytes"] / 50, r
    assert r.json()["encoded_against"] == "base@1" and r.json()["parent"] is None
    r = cli("snapshot", tmp_path / "bf16", "--model", "base-bf16")  # its second version: the parent
    assert r.rc == 0 and "deltas and casts of" not in r.out, r
    rows = cli("sql", "SELECT DISTINCT source_model, source_version FROM tensor_derivations "
                      "WHERE model = 'base-bf16'", "--json").json()
    assert [(x["source_model"], x["source_version"]) for x in rows] == [("base", "1")]

    assert cli("rm", "base@1").rc == 0 and cli("gc", "--grace", "0").rc == 0  # bases kept as delta bases
    for model, src in (("ft", "ft"), ("base-bf16", "bf16")):
        out = tmp_path / f"out-{model}"
        assert cli("restore", f"{model}@1", out).rc == 0
        assert tree_files(out) == tree_files(tmp_path / src)
    assert cli("verify").rc == 0


def test_a_hub_style_family_is_encoded_against_the_cards_base_model(vault, tmp_path):
    """A card's `base_model: org/base` names a model archived under that repo id (as `snapshot
    hf:org/base` names it): with no lineage recorded, a first version is encoded against its latest
    version. A card naming a model this store lacks changes nothing."""
    t = toy_tensors(seed=14, width=256)
    write_model(tmp_path / "base", t)
    vault.snapshot(tmp_path / "base", "org/base")
    ft = {k: (v + np.float32(1e-4) * np.sign(v) if v.dtype == np.float32 else v) for k, v in t.items()}

    def card(base):
        return {"README.md": f"---\nbase_model: {base}\nlicense: mit\n---\n# a fine-tune\n"}

    write_model(tmp_path / "ft", ft, files=card("org/base"))
    write_model(tmp_path / "other", ft, files=card("org/not-archived"))
    other = Vault.init(tmp_path / "s2")  # the same bytes in a second store: nothing to dedup against
    other.snapshot(tmp_path / "base", "org/base")
    full = other.snapshot(tmp_path / "other", "org/other")
    assert not any(i[2].startswith("delta-") for i in full.stats.new_chunk_info.values())
    r = vault.snapshot(tmp_path / "ft", "org/ft")
    assert r.manifest.parent is None and r.stats.new_stored_bytes < full.stats.new_stored_bytes / 2
    assert any(i[2].startswith("delta-") for i in r.stats.new_chunk_info.values())
    vault.restore("org/ft@1", tmp_path / "out")
    assert tree_files(tmp_path / "out") == tree_files(tmp_path / "ft")
    # the lineage views name the same base (the card's edge is hf:org/base)
    assert vault.sql("SELECT relation, ancestor_model, ancestor_version FROM ancestors('org/ft', '1')")[1] == [
        ("finetune", "org/base", "1")]
    assert other.sql("SELECT ancestor_model, ancestor_ref FROM ancestors('org/other', '1')")[1] == [
        (None, "hf:org/not-archived")]


def test_python_snapshot_takes_base_model_and_datasets_like_the_cli(vault, tmp_path):
    """Vault.snapshot(base_model=..., datasets=...) records what --base-model/--dataset record, and
    the base is what the first version is encoded against; a bad dataset refuses before writing."""
    from weightvault import provenance as pv
    from weightvault.errors import NotFoundError

    t = toy_tensors(seed=15, width=256)
    write_model(tmp_path / "base", t)
    vault.snapshot(tmp_path / "base", "base")
    write_model(tmp_path / "ft", {k: (v + np.float32(1e-4) * np.sign(v) if v.dtype == np.float32 else v)
                                  for k, v in t.items()})
    pv.add_dataset(vault, {"name": "alpaca", "license": "CC-BY-NC-4.0"})
    with pytest.raises(NotFoundError):
        vault.snapshot(tmp_path / "ft", "ft", base_model="base@1", datasets="nope:finetune")
    assert not vault.store.list_refs("ft")
    r = vault.snapshot(tmp_path / "ft", "ft", base_model="base@1", datasets="alpaca:finetune")
    assert any(i[2].startswith("delta-") for i in r.stats.new_chunk_info.values())
    assert vault.sql("SELECT relation, base_model, base_version FROM lineage WHERE model = 'ft'")[1] == [
        ("finetune", "base", "1")]
    assert vault.sql("SELECT dataset, role FROM version_datasets JOIN versions USING (version_id) "
                     "WHERE model = 'ft'")[1] == [("alpaca", "finetune")]


def test_parent_names_a_version_of_the_same_model(cli, toy_model):
    assert cli("snapshot", toy_model, "--model", "base").rc == 0
    r = cli("snapshot", toy_model, "--model", "ft", "--parent", "base@1")
    assert r.rc != 0 and r.err.count("\n") == 1, r
    assert "--parent takes a version of ft" in r.err and "--base-model base@1 --relation finetune" in r.err, r


def test_cast_recipes_match_torch():
    torch = pytest.importorskip("torch")
    w = np.concatenate([weights(10, 10000), np.array([np.inf, -np.inf, 0, -0.0, 3.4e38, 1e-40], np.float32)])
    tw = torch.from_numpy(w)
    assert np.array_equal(cast.apply("bf16-rne", w.tobytes()), tw.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(cast.apply("f16-rne", w.tobytes()), tw.to(torch.float16).view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(cast.apply("bf16-trunc", w.tobytes()), (w.view(np.uint32) >> 16).astype(np.uint16))


def test_engine_is_file_independent_and_hash_named(vault, tmp_path):
    t = toy_tensors(seed=11, width=128)
    write_model(tmp_path / "v1", t)
    vault.snapshot(tmp_path / "v1", "toy")
    t2 = {k: (v + np.float32(1e-5) if v.dtype == np.float32 else v) for k, v in t.items()}
    names = sorted(t2)
    write_model(tmp_path / "v2", t2, shards=[names[::2], names[1::2]])  # other files, other order
    r2 = vault.snapshot(tmp_path / "v2", "toy")
    infos = r2.stats.new_chunk_info
    assert any(i[2].startswith("delta-") for i in infos.values())
    for cid in infos:
        raw = vault.store.read_chunk(cid)
        assert ids.content_id(raw) == cid  # a delta is only how a chunk is stored
    out = tmp_path / "out"
    vault.restore("toy@2", out)
    assert tree_files(out) == tree_files(tmp_path / "v2")
    assert engine.tensor_index(r2.manifest, r2.manifest_id)["encoder.layer.0.weight"].dtype == "F32"


@pytest.mark.slow
def test_minilm_series_round_trips(vault, minilm_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    import shutil

    r1 = vault.snapshot(minilm_dir, "minilm")
    t = load_file(str(minilm_dir / "model.safetensors"))
    bf = tmp_path / "bf16"
    shutil.copytree(minilm_dir, bf)
    save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in t.items()},
              str(bf / "model.safetensors"), metadata={"format": "pt"})
    r2 = vault.snapshot(bf, "minilm")
    assert r2.stats.new_stored_bytes < 200_000
    assert r1.stats.new_stored_bytes < 0.83 * r1.stats.raw_bytes
    vault.restore("minilm@2", tmp_path / "out")
    assert tree_files(tmp_path / "out") == tree_files(bf)
    d = json.loads(vault.sql("SELECT to_json(list(recipes)) FROM derivations")[1][0][0])
    assert d and all(r == ["bf16-rne"] for r in d)
