"""Hypothesis: any valid safetensors folder round-trips byte-exactly, and a re-snapshot adds nothing."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from weightvault.vault import Vault

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_]

tensor = st.tuples(
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 40), min_size=0, max_size=3),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["random", "zeros", "smooth"]),
)
model = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True), tensor, min_size=1, max_size=6)
extra = st.dictionaries(st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?\.txt", fullmatch=True), st.binary(max_size=3000),
                        max_size=3)


def make(dtype, shape, seed, kind):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape)) if shape else 1
    if kind == "zeros":
        a = np.zeros(n)
    elif kind == "smooth":
        a = np.sin(np.arange(n) / 7.0) * 3
    else:
        a = rng.standard_normal(n) * 50
    return a.astype(dtype).reshape(shape)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model, extra, st.integers(256, 5000))
def test_any_folder_round_trips(spec, files, chunk_size):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        save_file({name: make(*t) for name, t in spec.items()}, str(src / "model.safetensors"))
        for rel, data in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        v = Vault.init(tmp / "store")
        v.store.config["chunk_size"] = chunk_size  # small chunks: tensors get cut
        r1 = v.snapshot(src, "m")
        r2 = v.snapshot(src, "m")
        assert r2.stats.new_chunks == 0
        v.restore("m@1", tmp / "out")
        for p in src.rglob("*"):
            if p.is_file():
                assert (tmp / "out" / p.relative_to(src)).read_bytes() == p.read_bytes()
        for name, t in spec.items():
            np.testing.assert_array_equal(v.read_tensor("m@2", name), make(*t))
        shutil.rmtree(tmp / "store")
