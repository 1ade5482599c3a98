"""Diff benchmark: `weightvault diff` of a full fine-tune of all-MiniLM-L6-v2 (every float tensor
changed slightly) against reading both versions' tensors once from the same store, same run.

    python bench/diff.py [--model-dir DIR] [--repeat N] [--workers N]

Prints one table: seconds (best of N) for
- read A+B: decode every tensor chunk of both versions once (the archive's own parallel reader), no math;
- diff full fine-tune: the weight diff (chunk decode + float64 statistics), target < 2x read A+B;
- diff last two layers: a fine-tune that changed encoder layers 4-5 only (unchanged tensors skipped by chunk ID);
- diff against itself: nothing decoded;
- numpy on files: load both original safetensors files and compute the same statistics with numpy
  (a peer: what a script on unarchived folders costs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def full_finetune(src: Path, dst: Path, scale: float = 1e-3, seed: int = 0) -> int:
    """Copy ``src`` with every float32 tensor multiplied by (1 + scale * noise); returns how many changed."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    rng = np.random.default_rng(seed)
    n = 0
    for k, t in tensors.items():
        if t.dtype == np.float32:
            tensors[k] = (t * (1 + scale * rng.standard_normal(t.shape))).astype(np.float32)
            n += 1
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return n


def best(fn, repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def read_both(v, refs, workers: int) -> int:
    from weightvault.archive.restore import iter_chunks

    n = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for ref in refs:
            m = v.manifest(ref)
            chunks = [c for f in m.files for t in f.tensors for c in f.tensor_chunks(t)]
            for raw in iter_chunks(v.store, chunks, pool=pool):
                n += len(raw)
    return n


def numpy_on_files(a: Path, b: Path) -> None:
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k, x in ta.items():
        x64, y64 = x.astype(np.float64).ravel(), tb[k].astype(np.float64).ravel()
        d = y64 - x64
        _ = (np.linalg.norm(d) / (np.linalg.norm(x64) or 1), x64 @ y64, np.abs(d).max() if d.size else 0,
             np.count_nonzero(x != tb[k]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    from weightvault.demo import make_finetune, minilm_path
    from weightvault.diff_weights import diff_weights
    from weightvault.vault import Vault

    src = args.model_dir or minilm_path()
    with tempfile.TemporaryDirectory(prefix="wv-bench-diff-") as tmp:
        tmp = Path(tmp)
        n_full = full_finetune(src, tmp / "full")
        make_finetune(src, tmp / "last2", layers=(4, 5))
        v = Vault.init(tmp / "store")
        for folder in (src, tmp / "full", tmp / "last2"):
            v.snapshot(folder, "minilm")  # minilm@1 original, @2 full fine-tune, @3 layers 4-5
        read_both(v, ["minilm@1", "minilm@2"], args.workers)  # warm the page cache
        raw = read_both(v, ["minilm@1", "minilm@2"], args.workers)
        t_read = best(lambda: read_both(v, ["minilm@1", "minilm@2"], args.workers), args.repeat)
        t_full = best(lambda: diff_weights(v, "minilm@1", "minilm@2", workers=args.workers), args.repeat)
        t_last2 = best(lambda: diff_weights(v, "minilm@1", "minilm@3", workers=args.workers), args.repeat)
        t_self = best(lambda: diff_weights(v, "minilm@1", "minilm@1", workers=args.workers), args.repeat)
        t_numpy = best(lambda: numpy_on_files(src, tmp / "full"), args.repeat)
        d = diff_weights(v, "minilm@1", "minilm@2", workers=args.workers)
        d3 = diff_weights(v, "minilm@1", "minilm@3", workers=args.workers)
    rows = [
        ("read A+B (decode every tensor chunk once)", t_read, raw),
        (f"diff full fine-tune ({d.counts()['changed']} of {len(d.tensors)} tensors changed)", t_full,
         d.bytes_read),
        (f"diff last two layers ({d3.counts()['changed']} changed)", t_last2, d3.bytes_read),
        ("diff against itself", t_self, 0),
        ("numpy on the two original files (peer)", t_numpy, None),
    ]
    print(f"all-MiniLM-L6-v2, {n_full} float tensors perturbed; best of {args.repeat}; "
          f"{args.workers} workers; {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print(f"{'':58} {'seconds':>8} {'x read':>7} {'MB decoded':>11}")
    for name, t, nbytes in rows:
        mb = f"{nbytes / 1e6:11.1f}" if nbytes is not None else f"{'-':>11}"
        print(f"{name:58} {t:8.3f} {t / t_read:7.2f} {mb}")
    ratio = t_full / t_read
    print(f"\ndiff / read = {ratio:.2f}x (target < 2x): {'OK' if ratio < 2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
