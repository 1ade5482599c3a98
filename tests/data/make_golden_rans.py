"""Write tests/data/golden-store-v1-rans: a frozen store whose containers hold ``rans`` streams.

Run once (python tests/data/make_golden_rans.py); the store is never rewritten, so later code must
keep reading it. Version 1 is an fp32 model (fsplit, j as rans); version 2 fine-tunes one tensor a
little (delta-sub, high planes as rans).
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save

from golden_common import config_json, write_frozen_store


def main() -> None:
    rng = np.random.default_rng(20261123)
    w = {"dense.weight": (rng.standard_normal((256, 256)) * 0.03).astype(np.float32),
         "dense.bias": (rng.standard_normal(256) * 0.01).astype(np.float32)}
    versions = []
    for version, change in ((1, 0.0), (2, 1e-3)):
        if change:
            w["dense.weight"] = (w["dense.weight"] + rng.standard_normal((256, 256)).astype(np.float32)
                                 * np.float32(change)).astype(np.float32)
        versions.append({"model.safetensors": save(w), "config.json": config_json(version)})
    write_frozen_store("golden-store-v1-rans", versions)


if __name__ == "__main__":
    main()
