"""The rANS stream kind (archive/rans.py): the C coder against the numpy reference, and bad blobs.

The numpy encoder and decoder are the specification of the blob layout; the
C module must produce and accept exactly the same bytes, on the SIMD path
(whole steps of 32 lanes) and on the scalar path (the last steps, short
streams). A blob that is malformed must be refused with the chunk named,
never decoded into a wrong-sized or out-of-bounds result.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from weightvault.archive import codecs, floatsplit, ids, rans
from weightvault.archive.native import native
from weightvault.errors import ChunkCorruptError

needs_native = pytest.mark.skipif(native is None, reason="built without a C compiler (numpy path only)")


def skewed(n: int, k: int, seed: int, concentration: float = 0.3) -> bytes:
    """n bytes drawn from k random byte values with Dirichlet(concentration) probabilities."""
    rng = np.random.default_rng(seed)
    values = rng.choice(256, k, replace=False)
    p = rng.dirichlet(np.full(k, concentration))
    return values[rng.choice(k, n, p=p)].astype(np.uint8).tobytes()


def blob_of(data: bytes, scale: int = rans.SCALE) -> bytes:
    return native.rans_encode(data, rans.freq_table(rans.normalize(rans.histogram(data), scale)), scale)


@pytest.mark.parametrize("n,k", [(1, 1), (31, 3), (32, 5), (33, 256), (4096, 1), (5000, 40), (100_003, 200)])
def test_normalize_sums_to_the_scale_and_keeps_every_present_symbol(n, k):
    """(pure Python: the encoder side never imports numpy)"""
    counts = rans.histogram(skewed(n, k, seed=n))
    for scale in (8, 12, 14, 15):
        f = rans.normalize(counts, scale)
        assert sum(f) == 1 << scale
        assert [x > 0 for x in f] == [c > 0 for c in counts]


@needs_native
@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 1000, 4097, 65_536 + 7, 300_000])
@pytest.mark.parametrize("k,concentration", [(1, 1.0), (2, 0.5), (17, 0.2), (256, 2.0)])
def test_c_coder_matches_the_numpy_reference(n, k, concentration):
    data = skewed(n, k, seed=n * 7 + k, concentration=concentration)
    scale = 8 if k == 256 and n % 2 else rans.SCALE
    f = rans.normalize(rans.histogram(data), scale)
    blob = native.rans_encode(data, rans.freq_table(f), scale)
    assert blob == rans.encode_numpy(data, f, scale)
    assert native.rans_decode(blob, n) == data
    assert rans.decode_numpy(blob, n) == data


@needs_native
def test_a_skewed_stream_codes_near_its_entropy_and_below_zstd():
    """The reason the kind exists: fsplit's j stream of fp32 weights, where zstd's Huffman literals lose ~1%."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal(1 << 20) * 0.04).astype(np.float32)
    j = bytes(floatsplit.split(w.tobytes(), 4)[0]["j"])
    counts = np.array(rans.histogram(j))
    p = counts[counts > 0] / len(j)
    entropy = float(-(p * np.log2(p)).sum()) * len(j) / 8
    z = codecs.zstd_compress(j, 1)
    blob = rans.maybe_encode(j, len(z))
    assert blob is not None and len(blob) < len(z)
    assert len(blob) < entropy * 1.002 + 512
    assert rans.decode(blob, len(j), "c") == j


def test_incompressible_and_short_streams_are_not_coded():
    rng = np.random.default_rng(1)
    uniform = rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    assert rans.maybe_encode(uniform, len(uniform)) is None
    assert rans.maybe_encode(b"\x00\x01" * 100, 200) is None


@needs_native
def test_fsplit_chunks_store_j_as_rans_and_a_numpy_only_build_decodes_them(monkeypatch):
    rng = np.random.default_rng(2)
    raw = (rng.standard_normal(1 << 20) * 0.04).astype(np.float32).tobytes()
    cid = ids.content_id(raw)
    enc = codecs.encode_chunk(raw, cid, dtype="F32")
    h = codecs.parse_container(enc.container, cid)
    assert h.codec == "fsplit" and h.meta["kinds"].split(",")[0] == "rans"
    monkeypatch.setattr(rans, "native", None)
    without = codecs.encode_chunk(raw, cid, dtype="F32")
    assert "rans" not in codecs.parse_container(without.container, cid).meta["kinds"]
    assert len(enc.container) < len(without.container)
    assert codecs.decode_chunk(enc.container, cid) == raw  # the numpy decoder


def _mutations(blob: bytes):
    """(what, bad blob) pairs that must be refused."""
    head = rans.HEAD
    present = int(np.unpackbits(np.frombuffer(blob[6:head], np.uint8)).sum())
    states = head + 2 * present
    yield "truncated header", blob[:head - 1]
    yield "version", b"\x02" + blob[1:]
    yield "scale too large", blob[:1] + b"\x10" + blob[2:]
    yield "scale too small", blob[:1] + b"\x07" + blob[2:]
    yield "count zero", blob[:2] + struct.pack("<I", 0) + blob[6:]
    yield "count above the cap", blob[:2] + struct.pack("<I", 1 << 30) + blob[6:]
    yield "frequency zero", blob[:head] + b"\x00\x00" + blob[head + 2:]
    yield "frequencies off by one", blob[:head] + bytes([(blob[head] + 1) % 256]) + blob[head + 1:]
    yield "a lane state below 2^16", blob[:states] + struct.pack("<I", 5) + blob[states + 4:]
    yield "truncated payload", blob[:-2]
    yield "odd payload", blob[:-1]
    yield "extra word", blob + b"\x00\x00"
    yield "truncated states", blob[:states + 8]


@needs_native
@pytest.mark.parametrize("data", [skewed(5000, 30, seed=3), skewed(100_000, 200, seed=4, concentration=1.0)])
def test_malformed_blobs_are_refused_by_both_decoders(data):
    blob = blob_of(data)
    for what, bad in _mutations(blob):
        with pytest.raises(ValueError):
            native.rans_decode(bad, len(data))
        with pytest.raises(ValueError):
            rans.decode_numpy(bad, len(data))
        with pytest.raises(ChunkCorruptError, match="chunk abc"):
            rans.decode(bad, len(data), "abc")
    with pytest.raises(ValueError):  # a cap below the count
        native.rans_decode(blob, len(data) - 1)


@needs_native
def test_flipped_payload_bits_never_pass_as_the_chunk():
    """A flip is refused by the coder's end-state check or decodes to other bytes, which fail the chunk hash."""
    rng = np.random.default_rng(9)
    raw = (rng.standard_normal(1 << 18) * 0.04).astype(np.float32).tobytes()
    cid = ids.content_id(raw)
    container = codecs.encode_chunk(raw, cid, dtype="F32").container
    begin, end = codecs.parse_container(container, cid).streams["j"]
    refused = 0
    for _ in range(40):
        bad = bytearray(container)
        bad[int(rng.integers(begin + rans.HEAD, end))] ^= 1 << int(rng.integers(0, 8))
        try:
            out = codecs.decode_chunk(bytes(bad), cid)
        except ChunkCorruptError:
            refused += 1
            continue
        assert ids.content_id(out) != cid
    assert refused > 0


@needs_native
def test_the_encoder_refuses_a_table_that_misses_a_symbol_of_the_data():
    data = skewed(10_000, 5, seed=11)
    f = rans.normalize(rans.histogram(data))
    first, second = [k for k, x in enumerate(f) if x][:2]
    f[second] += f[first]
    f[first] = 0  # still sums to 2^scale, but a symbol of the data is missing
    with pytest.raises(ValueError, match="frequency 0"):
        native.rans_encode(data, rans.freq_table(f), rans.SCALE)
    with pytest.raises(ValueError, match="sum"):
        native.rans_encode(data, rans.freq_table([2 * x for x in f]), rans.SCALE)


@needs_native
def test_order0_estimate_matches_the_histogram_entropy():
    data = skewed(50_000, 40, seed=13)
    for stride in (1, 16):
        counts = rans.histogram(data, stride)
        assert native.order0_bytes(data, stride) == pytest.approx(rans._order0_bytes(counts, len(data)), rel=1e-12)
    with pytest.raises(ValueError):
        native.order0_bytes(data, 0)


@needs_native
def test_sample_estimate_is_not_biased_low_on_uniform_bytes():
    # The plug-in entropy of a 1/16 sample of 1 MiB of uniform bytes falls about
    # 370 bytes short of the stream's size; corrected, it lands within noise of it.
    data = np.random.default_rng(17).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    assert abs(native.order0_bytes(data, rans.SAMPLE_STRIDE) - len(data)) < 64


@needs_native
def test_maybe_encode_skips_a_near_uniform_stream_before_the_full_histogram(monkeypatch):
    def no_histogram(*a):
        raise AssertionError("full histogram computed for a stream that cannot win")

    monkeypatch.setattr(rans, "histogram", no_histogram)
    uniform = np.random.default_rng(19).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    assert rans.maybe_encode(uniform, len(uniform)) is None
    with pytest.raises(AssertionError, match="full histogram"):  # a skewed stream still gets one
        rans.maybe_encode(skewed(1 << 16, 20, seed=23), 1 << 16)
