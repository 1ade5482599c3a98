"""One `weightvault snapshot` call for a whole series against one call per version.

    python bench/series_call.py [--work DIR] [--rounds N]

Archives bench/series.py's six versions of the real all-MiniLM-L6-v2 (a, b, c,
a16, b16, e; 459 MB) into a fresh store, in that order, each the parent of the
next, two ways:

- per version: six processes, `weightvault snapshot V --model m` (parent: the
  model's latest version);
- one call: `weightvault snapshot a b c a16 b16 e --model m`
  (Vault.snapshot_series: the same parents, start-up and the catalog update paid once).

Rounds alternate the two ways, each from an empty store. Prints the median
wall time of each, MB/s whole-process and steady-state (`weightvault
--version` subtracted per process, as bench/engine.py does), the bytes stored
(the same parents give the same bytes), and checks that the last version of
each store restores to the source's sha256s.

The parents differ from bench/engine.py's series (there, c, a16 and e name a
as parent, b16 names b): a chain is what one call over a run's checkpoints
records, so c is stored against b here, and the sizes are not engine.py's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import series as series_mod  # noqa: E402
from engine import PY, Run, compile_bytecode, du, files_of, run, tree_digest  # noqa: E402


def cli(store: Path, *args) -> list[str]:
    return [PY, "-m", "weightvault", "--store", str(store), *map(str, args)]


def per_version(store: Path, versions) -> Run:
    total = Run()
    for v in versions:
        total.add(run(cli(store, "snapshot", v.path, "--model", "m")))
    return total


def one_call(store: Path, versions) -> Run:
    return run(cli(store, "snapshot", *[v.path for v in versions], "--model", "m"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "weightvault-bench")
    ap.add_argument("--steps", type=int, default=200, help="AdamW steps of the full fine-tune")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    versions = series_mod.build(args.work, steps=args.steps, log=log)
    raw = sum(p.stat().st_size for v in versions for p in files_of(v.path))
    for v in versions:
        for p in files_of(v.path):  # a warm page cache for both ways alike
            p.read_bytes()
    compile_bytecode()
    noop = statistics.median(run([PY, "-m", "weightvault", "--version"]).wall for _ in range(7))
    ways = {"per version (6 processes)": (per_version, len(versions)), "one call (1 process)": (one_call, 1)}
    walls = {w: [] for w in ways}
    stored = {}
    for r in range(args.rounds):
        for way, (fn, procs) in ways.items():
            store = args.work / "series-call" / way.split()[0]
            shutil.rmtree(store, ignore_errors=True)
            run(cli(store, "init"))
            log(f"round {r + 1}: {way}")
            walls[way].append(fn(store, versions).wall)
            stored[way] = du(store, ("chunks", "manifests", "events"))
            out = args.work / "series-call" / "out"
            shutil.rmtree(out, ignore_errors=True)
            run(cli(store, "restore", f"m@{len(versions)}", out))
            if tree_digest(out) != tree_digest(versions[-1].path):
                raise SystemExit(f"{way}: m@{len(versions)} does not restore to its source")
    print(f"series: {', '.join(v.label for v in versions)} ({raw / 1e6:.1f} MB raw), each the parent of the next; "
          f"{args.rounds} alternating rounds, medians; no-op start-up {noop * 1e3:.0f} ms")
    print(f"{'way':28s} {'wall s':>7s} {'MB/s':>6s} {'ss MB/s':>8s} {'stored MB':>10s}")
    med = {}
    for way, (_, procs) in ways.items():
        med[way] = statistics.median(walls[way])
        ss = med[way] - procs * noop
        print(f"{way:28s} {med[way]:7.2f} {raw / 1e6 / med[way]:6.0f} {raw / 1e6 / ss:8.0f} {stored[way] / 1e6:10.2f}")
    a, b = med.values()
    print(f"one call / per version: {a / b:.2f}x the ingest speed (whole-process), restores sha256-checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
