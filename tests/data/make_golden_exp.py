"""Write tests/data/golden-store-v1-exp: a frozen store of exponent-segmented deltas.

Run once (python tests/data/make_golden_exp.py); the store is never rewritten, so later code must
keep reading it. Version 1 holds an fp32 and a bf16 matrix of 256 x 256; version 2 moves every fp32
weight by noise of one scale, as a fine-tune does (``delta-sub-exp``), and flips the two low bits
of the bf16 weights (``delta-xor-exp``), each stored against version 1.
"""

from __future__ import annotations

import numpy as np

from golden_common import config_json, write_frozen_store


def bf16(x: np.ndarray) -> np.ndarray:
    """Truncated bf16 bit patterns of fp32 values."""
    return (x.astype(np.float32).view(np.uint32) >> 16).astype("<u2")


def main() -> None:
    from weightvault.archive.safetensors_header import build_file

    rng = np.random.default_rng(20261124)
    f32 = (rng.standard_normal((256, 256)) * 0.03).astype(np.float32)
    h16 = bf16((rng.standard_normal((256, 256)) * 0.03).astype(np.float32))
    versions = []
    for version, change in ((1, 0.0), (2, 2e-4)):
        if change:
            f32 = (f32 + rng.standard_normal(f32.shape).astype(np.float32) * np.float32(change)).astype(np.float32)
            # low mantissa bits flipped: their XOR is smaller than their difference
            h16 = (h16 ^ rng.integers(0, 4, h16.shape, dtype=np.uint16)).astype("<u2")
        blob = build_file({"dense.weight": ("F32", f32.shape, f32.tobytes()),
                           "half.weight": ("BF16", h16.shape, h16.tobytes())})
        versions.append({"model.safetensors": blob, "config.json": config_json(version)})
    write_frozen_store("golden-store-v1-exp", versions)


if __name__ == "__main__":
    main()
