"""Write tests/data/golden-store-v1-rans: a frozen store whose containers hold ``rans`` streams.

Run once (python tests/data/make_golden_rans.py); the store is never rewritten, so later code must
keep reading it. Version 1 is an fp32 model (fsplit, j as rans); version 2 fine-tunes one tensor a
little (delta-sub, high planes as rans).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).parent
NAME = "golden-store-v1-rans"


def main() -> None:
    from weightvault.vault import Vault

    out = HERE / NAME
    if out.exists() and "--force" not in sys.argv:
        sys.exit(f"{out} exists: frozen stores are never rewritten")
    shutil.rmtree(out, ignore_errors=True)
    work = HERE / "_rans_src"
    shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng(20261123)
    w = {"dense.weight": (rng.standard_normal((256, 256)) * 0.03).astype(np.float32),
         "dense.bias": (rng.standard_normal(256) * 0.01).astype(np.float32)}
    expected = {}
    v = Vault.init(out)
    for version, change in ((1, 0.0), (2, 1e-3)):
        folder = work / f"v{version}"
        folder.mkdir(parents=True)
        if change:
            w["dense.weight"] = (w["dense.weight"] + rng.standard_normal((256, 256)).astype(np.float32)
                                 * np.float32(change)).astype(np.float32)
        save_file(w, str(folder / "model.safetensors"))
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
