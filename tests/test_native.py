"""The C transforms (archive/_native.c) give exactly the bytes of their numpy references.

The numpy code in archive/floatsplit.py and archive/delta.py is the
specification; the C module is an optimisation that must never change a
stored byte (the frozen stores under tests/data are read by both).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.archive import codecs, delta, floatsplit, ids
from weightvault.archive.native import NONE, SUB, XOR, native
from weightvault.errors import ChunkCorruptError

needs_native = pytest.mark.skipif(native is None, reason="built without a C compiler (numpy path only)")


def weights(n: int, seed: int, scale: float = 0.05, *, wild: float = 0.0) -> np.ndarray:
    """fp32 weights, a fraction ``wild`` of them far outside the exponent window (escapes)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(n) * scale).astype(np.float32)
    if wild:
        idx = rng.choice(n, max(1, int(n * wild)), replace=False)
        w[idx] = rng.choice([1e30, -1e-30, 3e8, np.inf, np.nan], len(idx)).astype(np.float32)
    return w


@needs_native
@pytest.mark.parametrize("n", [4, 5, 1023, 1 << 14, (1 << 14) + 3, 300_001])
@pytest.mark.parametrize("wild", [0.0, 0.01])
@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_fsplit_split_and_join_match_numpy(n, wild, dtype):
    w = weights(n, seed=n, wild=wild)
    raw = w.tobytes() if dtype == "F32" else (w.view(np.uint32) >> 16).astype("<u2").tobytes()
    itemsize = 4 if dtype == "F32" else 2
    ref, ref_top = floatsplit.split_numpy(raw, itemsize)
    top, j, nib, planes, x = native.fsplit_split(raw, itemsize)
    assert top == ref_top
    got = {"j": j, "n": nib, **{f"p{k}": p for k, p in enumerate(planes)}, "x": x}
    assert list(got) == list(ref)
    for name in ref:
        assert got[name] == ref[name].tobytes(), name
    assert native.fsplit_join(j, nib, planes, x, top, itemsize) == raw


@needs_native
@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=16, max_size=4096), st.sampled_from([2, 4]))
def test_fsplit_roundtrips_any_bit_pattern(data, itemsize):
    raw = data[: len(data) // itemsize * itemsize]
    if len(raw) < 4 * itemsize:
        return
    ref, ref_top = floatsplit.split_numpy(raw, itemsize)
    top, j, nib, planes, x = native.fsplit_split(raw, itemsize)
    assert (top, j, x) == (ref_top, ref["j"].tobytes(), ref["x"].tobytes())
    assert native.fsplit_join(j, nib, planes, x, top, itemsize) == raw


@needs_native
def test_fsplit_join_refuses_a_wrong_escape_stream():
    raw = weights(4096, seed=1, wild=0.02).tobytes()
    top, j, nib, planes, x = native.fsplit_split(raw, 4)
    assert len(x) > 1
    assert native.fsplit_join(j, nib, planes, x[:-1], top, 4) is None
    assert native.fsplit_join(j, nib, planes, x + b"\x00", top, 4) is None
    with pytest.raises(ValueError):
        native.fsplit_join(j, nib[:-1], planes, x, top, 4)
    with pytest.raises(ValueError):
        native.fsplit_join(j, nib, (planes[0],), x, top, 4)


def test_a_truncated_escape_stream_is_named_as_corrupt():
    """Through the codec (C or numpy path): the chunk is named, never a wrong result."""
    raw = weights(4096, seed=2, wild=0.02).tobytes()
    streams, top = floatsplit.split(raw, 4)
    streams = {k: (v.tobytes() if hasattr(v, "tobytes") else v) for k, v in streams.items()}
    streams["x"] = streams["x"][:-1]
    with pytest.raises(ChunkCorruptError) as e:
        floatsplit.join(streams, top, 4, len(raw) // 4, "c" * 64)
    assert "c" * 64 in str(e.value)


@needs_native
@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
@pytest.mark.parametrize("mode", [NONE, XOR, SUB])
def test_planes_split_and_join_match_numpy(itemsize, mode):
    rng = np.random.default_rng(itemsize * 10 + mode)
    n = 10_007 * itemsize
    raw = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    base = bytes(b ^ (i & 3) for i, b in enumerate(raw[:64])) + rng.integers(0, 256, n - 64, dtype=np.uint8).tobytes()
    planes = native.planes_split(raw, base if mode else None, itemsize, mode)
    if mode == NONE:
        ref = np.frombuffer(raw, np.uint8).reshape(-1, itemsize).T
        assert [p for p in planes] == [np.ascontiguousarray(r).tobytes() for r in ref]
    else:
        codec = delta.XOR if mode == XOR else delta.SUB
        ref = delta._planes(delta.transform(raw, base, itemsize, codec), itemsize)
        assert list(planes) == [ref[f"p{k}"].tobytes() for k in range(itemsize)]
    assert native.planes_join(planes, base if mode else None, mode) == raw


@needs_native
@pytest.mark.parametrize("itemsize", [2, 4])
@pytest.mark.parametrize("mode", [XOR, SUB])
@pytest.mark.parametrize("n", [1, 7, 70_001])
def test_exponent_segmented_planes_match_numpy(itemsize, mode, n):
    """delta-*-exp: the C counting sort puts every element where numpy's stable argsort does."""
    w = weights(n, seed=n + mode, wild=0.01)
    raw32 = w.tobytes()
    base32 = (w * np.float32(1.001) + np.float32(1e-6)).astype(np.float32).tobytes()
    if itemsize == 2:  # bf16 bit patterns
        raw, base = ((np.frombuffer(x, np.uint32) >> 16).astype("<u2").tobytes() for x in (raw32, base32))
    else:
        raw, base = raw32, base32
    counts = np.frombuffer(native.exp_counts(base, itemsize), "<u8")
    assert counts.tolist() == np.bincount(delta.exp_keys(base, itemsize), minlength=256).tolist()
    plain = delta.transform(raw, base, itemsize, delta.XOR if mode == XOR else delta.SUB)
    for cuts in ([0], delta.exp_cuts(counts.tolist(), 1000), list(range(256)), [0, 120, 121, 127]):
        smap = delta.segment_map(cuts)
        planes = native.planes_split(raw, base, itemsize, mode, smap)
        ref = delta._planes(plain[delta.segment_order(base, itemsize, smap)], itemsize)
        assert list(planes) == [ref[f"p{k}"].tobytes() for k in range(itemsize)]
        assert native.planes_join(planes, base, mode, None, smap) == raw
        dest = bytearray(len(raw))
        assert native.planes_join(planes, base, mode, dest, smap) is True and bytes(dest) == raw
        if len(set(smap[k] for k in np.unique(delta.exp_keys(base, itemsize)))) > 1:
            # more than one segment in use: the planes really are in another order than the elements'
            assert list(planes) != list(native.planes_split(raw, base, itemsize, mode))


def test_exp_cuts_close_segments_on_key_boundaries():
    counts = [0] * 256
    counts[100], counts[101], counts[102], counts[103], counts[200] = 5, 10, 3, 20, 2
    assert delta.exp_cuts(counts, 10) == [0, 102]  # [0..101] holds 15; [102..] 25
    assert delta.exp_cuts(counts, 16) == [0, 103]  # the tail [103..] (22) stands alone
    assert delta.exp_cuts(counts, 23) == [0]  # a short tail joins the segment before it
    assert delta.exp_cuts([0] * 256, 10) == [0]
    assert delta.segment_sizes(counts, [0, 102]) == [15, 25]
    smap = delta.segment_map([0, 102, 200])
    assert len(smap) == 256 and smap[101] == 0 and smap[102] == 1 and smap[199] == 1 and smap[255] == 2


@needs_native
def test_segment_maps_need_a_base_and_a_float_itemsize():
    smap = bytes(256)
    for itemsize, mode in ((1, SUB), (8, XOR), (4, NONE)):
        with pytest.raises(ValueError):
            native.planes_split(b"\x00" * 8, b"\x00" * 8 if mode else None, itemsize, mode, smap)
        with pytest.raises(ValueError):
            native.planes_join(tuple(b"\x00" * (8 // itemsize) for _ in range(itemsize)),
                               b"\x00" * 8 if mode else None, mode, None, smap)
    with pytest.raises(ValueError):
        native.planes_split(b"\x00" * 8, b"\x00" * 8, 4, SUB, bytes(255))
    with pytest.raises(ValueError):
        native.exp_counts(b"\x00" * 6, 4)


@needs_native
def test_planes_refuse_mismatched_lengths():
    with pytest.raises(ValueError):
        native.planes_split(b"\x00" * 8, b"\x00" * 4, 4, SUB)
    with pytest.raises(ValueError):
        native.planes_split(b"\x00" * 6, None, 4, NONE)
    with pytest.raises(ValueError):
        native.planes_join((b"\x00" * 2, b"\x00" * 3), None, NONE)


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_containers_are_identical_with_and_without_the_c_module(dtype, monkeypatch):
    """The container bytes a chunk is stored as do not depend on how its transforms were computed.

    (The rANS stream kind is picked only with the C module, which codes it;
    tests/test_rans.py checks that a numpy-only build decodes it.)
    """
    from weightvault.archive import rans

    monkeypatch.setattr(rans, "native", None)
    w = weights(200_000, seed=7, wild=0.001)
    with np.errstate(over="ignore"):  # the wild values overflow fp16: inf, as a real cast would
        f16 = w.astype(np.float16).tobytes()
    raw = {"F32": w.tobytes(), "BF16": (w.view(np.uint32) >> 16).astype("<u2").tobytes(),
           "F16": f16}[dtype]
    cid = ids.content_id(raw)
    fast = codecs.encode_chunk(raw, cid, dtype=dtype)
    base = (w * 1.001).astype(np.float32).tobytes() if dtype == "F32" else None
    fast_d = delta.encode(raw, cid, base, ids.content_id(base), itemsize=4) if base else None
    # the segmented deltas, both transforms, against a base of the same dtype: a nearby copy (small
    # noise of one scale, so that the segmented layout is chosen)
    itemsize = 4 if dtype == "F32" else 2
    noise = np.random.default_rng(8).standard_normal(w.size).astype(np.float32) * np.float32(1e-3)
    moved = (w + noise).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        xbase = {"F32": moved.tobytes(), "BF16": (moved.view(np.uint32) >> 16).astype("<u2").tobytes(),
                 "F16": moved.astype(np.float16).tobytes()}[dtype]
    fast_segmented = {codec: (delta.encode(raw, cid, xbase, ids.content_id(xbase), itemsize=itemsize,
                                           codecs_to_try=(codec,), floats=True), xbase)
                      for codec in (delta.SUB, delta.XOR)}
    from weightvault.archive import native as native_mod

    monkeypatch.setattr(native_mod, "native", None)
    monkeypatch.setattr(floatsplit, "native", None)
    monkeypatch.setattr(delta, "native", None)
    slow = codecs.encode_chunk(raw, cid, dtype=dtype)
    assert fast.container == slow.container
    assert codecs.decode_chunk(fast.container, cid) == raw
    if base:
        slow_d = delta.encode(raw, cid, base, ids.content_id(base), itemsize=4)
        assert fast_d.container == slow_d.container
        assert codecs.decode_chunk(slow_d.container, cid, lambda _: base) == raw
    for codec, (fast_x, xbase) in fast_segmented.items():
        slow_x = delta.encode(raw, cid, xbase, ids.content_id(xbase), itemsize=itemsize, codecs_to_try=(codec,),
                              floats=True)
        assert fast_x.codec == slow_x.codec == delta._EXP[codec]
        assert fast_x.container == slow_x.container
        delta.BASES._d.pop(ids.content_id(xbase), None)
        assert codecs.decode_chunk(slow_x.container, cid, lambda _: xbase) == raw


def test_decoding_into_a_buffer_gives_the_same_bytes_for_every_codec(tmp_path):
    """read_chunk_into (teacher loading) against read_chunk, over raw, zstd, bytegroup, fsplit, deltas, casts."""
    from weightvault.archive import cast
    from weightvault.archive.store import Store

    store = Store.init(tmp_path / "s")
    w = weights(50_000, seed=3, wild=0.001)
    f32 = w.tobytes()
    chunks = {}

    def put(raw, enc):
        cid = ids.content_id(raw)
        store.put_chunk(cid, enc(raw, cid))
        chunks[cid] = raw
        return cid

    base_id = put(f32, lambda r, c: codecs.encode_chunk(r, c, dtype="F32"))
    put(bytes(range(256)) * 40, lambda r, c: codecs.encode_chunk(r, c))
    put(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        lambda r, c: codecs.encode_chunk(r, c))
    with np.errstate(over="ignore"):
        f16 = w.astype(np.float16).tobytes()
    put(f16, lambda r, c: codecs.encode_chunk(r, c, dtype="F16"))
    tuned = (w * np.float32(1.0001)).astype(np.float32).tobytes()
    put(tuned, lambda r, c: delta.encode(r, c, f32, base_id, itemsize=4, codecs_to_try=(delta.SUB,)))
    put(tuned, lambda r, c: delta.encode(r, c, f32, base_id, itemsize=4, codecs_to_try=(delta.XOR,)))
    tuned2 = (w * np.float32(1.0002)).astype(np.float32).tobytes()
    put(tuned2, lambda r, c: delta.encode(r, c, f32, base_id, itemsize=4, codecs_to_try=(delta.SUB,), floats=True))
    bf16 = cast.apply("bf16-rne", f32).tobytes()
    put(bf16, lambda r, c: cast.encode(r, c, "BF16", f32, base_id))
    store.backend.flush()
    seen = set()
    for cid, raw in chunks.items():
        seen.add(codecs.parse_container(store.get_container(cid), cid).codec)
        dest = bytearray(len(raw))
        store.read_chunk_into(cid, dest)
        assert bytes(dest) == raw == store.read_chunk(cid)
    assert {"fsplit", "zstd", "bytegroup", "cast", "delta-sub", "delta-sub-exp"} <= seen


def test_decoding_into_a_buffer_refuses_a_damaged_chunk(tmp_path):
    from weightvault.archive.store import Store

    store = Store.init(tmp_path / "s")
    raw = weights(20_000, seed=4).tobytes()
    cid = ids.content_id(raw)
    store.put_chunk(cid, codecs.encode_chunk(raw, cid, dtype="F32"))
    store.backend.flush()
    path = tmp_path / "s" / store.chunk_key(cid)
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0x40  # a bit flip inside the last stream
    path.write_bytes(bytes(blob))
    with pytest.raises(ChunkCorruptError) as e:
        store.read_chunk_into(cid, bytearray(len(raw)))
    assert cid in str(e.value)
    with pytest.raises(ChunkCorruptError):
        store.read_chunk_into(cid, bytearray(len(raw) - 4))


@needs_native
@pytest.mark.parametrize("recipe", ["bf16-rne", "bf16-trunc"])
def test_bf16_casts_match_numpy_on_every_kind_of_value(recipe):
    from weightvault.archive import cast

    rng = np.random.default_rng(11)
    special = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001,
                        0x00000001, 0x007FFFFF, 0x7F7FFFFF, 0x3F808000, 0x3F818000, 0x3F80FFFF, 0xFFFFFFFF],
                       dtype="<u4")
    u = np.concatenate([special, rng.integers(0, 1 << 32, 100_000, dtype=np.uint64).astype("<u4")])
    base = u.tobytes()
    assert cast.apply(recipe, base).tobytes() == cast.apply_numpy(recipe, base).tobytes()


@pytest.mark.parametrize("n_changed", [0, 1, 500])
def test_cast_containers_are_identical_with_and_without_the_c_module(n_changed, monkeypatch):
    from weightvault.archive import cast

    w = weights(100_000, seed=9, wild=0.001)
    base = w.tobytes()
    bf16 = cast.apply_numpy("bf16-rne", base).copy()
    bf16[np.random.default_rng(1).choice(len(bf16), n_changed, replace=False)] ^= 0x0101
    raw = bf16.tobytes()
    cid, base_id = ids.content_id(raw), ids.content_id(base)
    fast = cast.encode(raw, cid, "BF16", base, base_id)
    monkeypatch.setattr(cast, "native", None)
    slow = cast.encode(raw, cid, "BF16", base, base_id)
    assert fast.container == slow.container
    assert codecs.decode_chunk(fast.container, cid, lambda _: base) == raw  # numpy decoder
    monkeypatch.undo()
    assert codecs.decode_chunk(slow.container, cid, lambda _: base) == raw  # C decoder
    meta = codecs.parse_container(fast.container, cid).meta
    assert meta["exact"] == ("1" if n_changed == 0 else "0") and int(meta.get("n_diff", 0)) == n_changed


@needs_native
def test_xor_count_counts_elements_not_bytes():
    a = bytes(range(16))
    b = bytearray(a)
    b[0] ^= 1
    b[1] ^= 1  # same 2-byte element
    b[9] ^= 0x80
    assert native.xor_count(a, bytes(b), 2) == (2, bytes(x ^ y for x, y in zip(a, b)))
    assert native.xor_count(a, a, 4) == (0, None)
    with pytest.raises(ValueError):
        native.xor_count(a, a[:-2], 2)
