"""Crash soak: many more kill -9 points than CI runs (default 400), same checks as tests/test_crash.py.

    python tests/soak/soak_crash.py --points 1000 --seed 7 --workdir /tmp/wv-soak

Each round snapshots a fresh toy model and kills it at a random write point
(chunk put, temp->rename, manifest, ref, catalog commit or checkpoint), or at a
random time; every 10 rounds it removes a few versions and kills gc at random
delete points; every round it checks the store (no half-written version
visible, manifests-before-chunks, catalog == refs) and reruns the snapshot.
At the end every committed version must restore bit-exactly. Prints a tally
and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import toy_tensors, tree_files, write_model  # noqa: E402
from crash_harness import (  # noqa: E402
    KillTally,
    check_consistent,
    gc_kills,
    kill_at_random_time,
    make_store,
    restore_all,
    run_cli,
)

from weightvault.archive.gc import remove_version  # noqa: E402
from weightvault.archive.store import Store  # noqa: E402
from weightvault.vault import Vault  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=400, help="kill points to try")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/weightvault-soak")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    store = make_store(work / "store")
    sources, tally, t0, i = {}, KillTally(), time.time(), 0
    while tally.tried < args.points:
        i += 1
        src = write_model(work / f"src{i}", toy_tensors(seed=i, layers=rng.randint(1, 3)))
        sources[str(src.absolute())] = tree_files(src)
        model = f"m{rng.randrange(4)}"
        if rng.random() < 0.15:
            rc = kill_at_random_time(store, ["snapshot", src, "--model", model], rng.uniform(0.2, 1.5))
            what = f"random-time kill #{i}"
        else:
            n = rng.randint(1, 40)
            sites = rng.choice(["", "", "", "catalog.commit", "catalog.checkpoint"])
            rc = run_cli(store, "snapshot", src, "--model", model, kill_after=1 if sites else n, sites=sites).returncode
            what = f"snapshot kill@{n} {sites or 'any site'}"
        tally.record(what, rc, check_consistent(store))
        Vault.open(store, create=False).snapshot(src, model)  # the rerun must succeed
        if i % 10 == 0:
            s = Store.open(store)
            refs = s.list_refs()
            for r in rng.sample(refs, k=min(3, len(refs))):
                remove_version(s, r.model, r.version, reason="soak")
            gc_kills(store, [rng.randint(1, 6) for _ in range(3)], tally)
        if i % 25 == 0:
            print(f"{tally.tried} points, {tally.killed} killed, {len(tally.failures)} failures, "
                  f"{time.time() - t0:.0f}s", flush=True)
    n, lost = restore_all(store, work / "restored", sources)
    print(f"kill points tried {tally.tried}, processes killed {tally.killed}, survived {tally.survived}, "
          f"failures {len(tally.failures)}; committed versions restored {n}, bytes lost {lost}; "
          f"{time.time() - t0:.0f}s")
    for f in tally.failures[:20]:
        print("FAIL", f)
    return 1 if tally.failures or lost else 0


if __name__ == "__main__":
    sys.exit(main())
