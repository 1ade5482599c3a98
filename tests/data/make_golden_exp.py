"""Write tests/data/golden-store-v1-exp: a frozen store of exponent-segmented deltas.

Run once (python tests/data/make_golden_exp.py); the store is never rewritten, so later code must
keep reading it. Version 1 holds an fp32 and a bf16 matrix of 256 x 256; version 2 moves every fp32
weight by noise of one scale, as a fine-tune does (``delta-sub-exp``), and flips the two low bits
of the bf16 weights (``delta-xor-exp``), each stored against version 1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
NAME = "golden-store-v1-exp"


def bf16(x: np.ndarray) -> bytes:
    """Truncated bf16 bit patterns of fp32 values."""
    return (x.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def main() -> None:
    from weightvault.archive.safetensors_header import build_file
    from weightvault.vault import Vault

    out = HERE / NAME
    if out.exists() and "--force" not in sys.argv:
        sys.exit(f"{out} exists: frozen stores are never rewritten")
    shutil.rmtree(out, ignore_errors=True)
    work = HERE / "_exp_src"
    shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng(20261124)
    f32 = (rng.standard_normal((256, 256)) * 0.03).astype(np.float32)
    h16 = (rng.standard_normal((256, 256)) * 0.03).astype(np.float32)  # stored as bf16
    expected = {}
    v = Vault.init(out)
    for version, change in ((1, 0.0), (2, 2e-4)):
        folder = work / f"v{version}"
        folder.mkdir(parents=True)
        if change:
            f32 = (f32 + rng.standard_normal(f32.shape).astype(np.float32) * np.float32(change)).astype(np.float32)
            # low mantissa bits flipped: their XOR is smaller than their difference
            flips = rng.integers(0, 4, h16.shape, dtype=np.uint16)
            h16_bits = (np.frombuffer(bf16(h16), "<u2").reshape(h16.shape) ^ flips).astype("<u2")
        else:
            h16_bits = np.frombuffer(bf16(h16), "<u2").reshape(h16.shape)
        blob = build_file({"dense.weight": ("F32", f32.shape, f32.tobytes()),
                           "half.weight": ("BF16", h16.shape, h16_bits.tobytes())})
        (folder / "model.safetensors").write_bytes(blob)
        (folder / "config.json").write_text(json.dumps({"hidden_size": 256, "version": version}) + "\n")
        v.snapshot(folder, model="golden", message=f"version {version}")
        expected[f"golden@{version}"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                         for p in sorted(folder.iterdir())}
    shutil.rmtree(work)
    for entry in out.iterdir():  # keep only the immutable records, as in the other frozen stores
        if entry.name not in ("chunks", "config.json", "manifests", "refs"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    (HERE / f"{NAME}.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
