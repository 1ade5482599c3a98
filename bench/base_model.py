"""A family archived as separate models: what `--base-model` (or a card's base_model) saves.

    python bench/base_model.py [--work DIR]

Hub families are separate repos: a base, its fine-tunes, its bf16 copies. Archived
as separate models they have no parent version, so before a first version was
encoded against its lineage base, every changed chunk was stored in full. This
archives bench/series.py's versions of the real all-MiniLM-L6-v2 into a fresh
store as six models, the original `a` first, twice:

- plain: `weightvault snapshot V --model V` (no lineage);
- with lineage: `weightvault snapshot V --model V --base-model a@1 --relation R`
  (R: finetune for b and c, cast for a16 and b16 (b16 naming b@1), finetune for e).

It prints the bytes each model added and checks that every model restores to
its source's sha256s. Unchanged tensors dedup either way; the difference is the
changed ones, stored as deltas and casts of the named base.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import series as series_mod  # noqa: E402
from engine import PY, compile_bytecode, files_of, run, tree_digest  # noqa: E402

LINEAGE = {"b": ("a", "finetune"), "c": ("a", "finetune"), "a16": ("a", "cast"), "b16": ("b", "cast"),
           "e": ("a", "finetune")}


def cli(store: Path, *args) -> list[str]:
    return [PY, "-m", "weightvault", "--store", str(store), *map(str, args)]


def archive(store: Path, versions, with_lineage: bool, out: Path) -> dict[str, int]:
    shutil.rmtree(store, ignore_errors=True)
    run(cli(store, "init"))
    added = {}
    for v in versions:
        extra = []
        if with_lineage and v.label in LINEAGE:
            base, rel = LINEAGE[v.label]
            extra = ["--base-model", f"{base}@1", "--relation", rel]
        res = subprocess.run(cli(store, "snapshot", v.path, "--model", v.label, "--json", *extra),
                             capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"snapshot {v.label} failed: {res.stderr.strip()}")
        added[v.label] = json.loads(res.stdout)["new_stored_bytes"]
        dest = out / v.label
        shutil.rmtree(dest, ignore_errors=True)
        run(cli(store, "restore", f"{v.label}@1", dest))
        if tree_digest(dest) != tree_digest(v.path):
            raise SystemExit(f"{v.label}@1 does not restore to its source")
        shutil.rmtree(dest)
    return added


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "weightvault-bench")
    ap.add_argument("--steps", type=int, default=200, help="AdamW steps of the full fine-tune")
    args = ap.parse_args(argv)
    versions = series_mod.build(args.work, steps=args.steps, log=lambda m: print(m, file=sys.stderr))
    compile_bytecode()
    root = args.work / "base-model"
    ways = {"plain": False, "with lineage": True}
    added = {way: archive(root / way.split()[0], versions, flag, root / "out") for way, flag in ways.items()}
    raw = {v.label: sum(p.stat().st_size for p in files_of(v.path)) for v in versions}
    print("each version archived as its own model, `a` first; MB added to the store (restores sha256-checked)")
    print(f"{'model':8s} {'raw':>8s} {'plain':>8s} {'lineage':>8s}  lineage")
    for v in versions:
        base = LINEAGE.get(v.label)
        print(f"{v.label:8s} {raw[v.label] / 1e6:8.2f} {added['plain'][v.label] / 1e6:8.2f} "
              f"{added['with lineage'][v.label] / 1e6:8.2f}  {f'{base[1]} of {base[0]}@1' if base else '-'}")
    tot = {way: sum(a.values()) for way, a in added.items()}
    print(f"{'total':8s} {sum(raw.values()) / 1e6:8.2f} {tot['plain'] / 1e6:8.2f} {tot['with lineage'] / 1e6:8.2f}"
          f"  ({tot['plain'] / tot['with lineage']:.2f}x smaller with lineage)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
