"""Archive-core benchmark: ingest and restore MB/s and stored/raw on the real all-MiniLM-L6-v2,
next to `zstd -3` per file measured in the same run on the same files.

    python bench/archive.py [--model-dir DIR] [--repeat N]

Prints one table. Both tools read from a warm page cache (every file is read once first); the
weightvault figures are whole-process (`python -m weightvault ...`, start-up included) and in-process
(steady state, the Python API); zstd is the CLI, one process per file, as a user would run it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from weightvault.archive.ids import file_sha256


def files_of(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_weightvault(src: Path, work: Path, repeat: int) -> dict:
    from weightvault.vault import Vault

    def ingest_api():
        shutil.rmtree(work / "wv", ignore_errors=True)
        Vault.init(work / "wv").snapshot(src, "minilm")

    t_api = timed(ingest_api, repeat)
    v = Vault.open(work / "wv")
    stored = v.store_bytes()

    def restore_api():
        shutil.rmtree(work / "out", ignore_errors=True)
        v.restore("minilm@1", work / "out")

    r_api = timed(restore_api, repeat)
    exact = all(file_sha256(work / "out" / p.relative_to(src)) == file_sha256(p) for p in files_of(src))

    def ingest_cli():
        shutil.rmtree(work / "wv2", ignore_errors=True)
        subprocess.run([sys.executable, "-m", "weightvault", "--store", str(work / "wv2"), "snapshot", str(src),
                        "--model", "minilm", "--json"], check=True, capture_output=True)

    def restore_cli():
        shutil.rmtree(work / "out2", ignore_errors=True)
        subprocess.run([sys.executable, "-m", "weightvault", "--store", str(work / "wv2"), "restore", "minilm@1",
                        str(work / "out2"), "--json"], check=True, capture_output=True)

    t_cli = timed(ingest_cli, repeat)
    r_cli = timed(restore_cli, repeat)
    return {"stored": stored, "ingest_s": t_cli, "restore_s": r_cli, "ingest_api_s": t_api,
            "restore_api_s": r_api, "exact": exact}


def bench_zstd(src: Path, work: Path, repeat: int, level: int = 3) -> dict:
    if not shutil.which("zstd"):
        return {}
    out = work / f"zstd{level}"

    def compress():
        shutil.rmtree(out, ignore_errors=True)
        for p in files_of(src):
            dst = out / (p.relative_to(src).as_posix() + ".zst")
            dst.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["zstd", f"-{level}", "-q", "-f", str(p), "-o", str(dst)], check=True)

    def decompress():
        for z in out.rglob("*.zst"):
            subprocess.run(["zstd", "-d", "-q", "-f", str(z), "-o", str(z)[:-4]], check=True)

    t = timed(compress, repeat)
    stored = sum(z.stat().st_size for z in out.rglob("*.zst"))
    r = timed(decompress, repeat)
    exact = all(file_sha256(Path(str(z)[:-4])) == file_sha256(src / Path(str(z)[:-4]).relative_to(out)) for z in out.rglob("*.zst"))
    return {"stored": stored, "ingest_s": t, "restore_s": r, "exact": exact}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--repeat", type=int, default=3, help="take the best of N runs")
    args = ap.parse_args(argv)
    if args.model_dir is None:
        from weightvault.demo import minilm_path

        args.model_dir = minilm_path()
    src = args.model_dir
    raw = sum(p.stat().st_size for p in files_of(src))
    for p in files_of(src):  # warm the page cache for everyone alike
        p.read_bytes()
    with tempfile.TemporaryDirectory(prefix="wv-bench-") as tmp:
        work = Path(tmp)
        wv = bench_weightvault(src, work, args.repeat)
        zs = bench_zstd(src, work, args.repeat)
    mb = raw / 1e6
    print(f"data: {src} ({len(files_of(src))} files, {mb:.1f} MB raw); {os.cpu_count()} cores; best of {args.repeat}")
    print(f"{'tool':<28}{'stored MB':>10}{'raw/stored':>12}{'ingest MB/s':>13}{'restore MB/s':>14}{'bit-exact':>11}")
    rows = [("weightvault (CLI process)", wv["stored"], wv["ingest_s"], wv["restore_s"], wv["exact"]),
            ("weightvault (API, steady)", wv["stored"], wv["ingest_api_s"], wv["restore_api_s"], wv["exact"])]
    if zs:
        rows.append(("zstd -3 CLI, per file", zs["stored"], zs["ingest_s"], zs["restore_s"], zs["exact"]))
    for name, stored, ti, tr, ex in rows:
        print(f"{name:<28}{stored / 1e6:>10.1f}{raw / stored:>12.3f}{mb / ti:>13.0f}{mb / tr:>14.0f}{'yes' if ex else 'NO':>11}")
    if zs:
        print(f"ratio weightvault/zstd-3: stored {wv['stored'] / zs['stored']:.3f}x, "
              f"ingest speed {zs['ingest_s'] / wv['ingest_s']:.2f}x, restore speed {zs['restore_s'] / wv['restore_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
