"""Kill -9 real `python -m weightvault` processes at chosen write points, then check the store.

Shared by tests/test_crash*.py (a lean CI run) and tests/soak/soak_crash.py
(many more points). A kill point is WEIGHTVAULT_FAULT_AFTER=N: the N-th write
point (archive/faults.py) sends SIGKILL to the process itself.

"Consistent" after every kill means: every ref names a manifest that parses,
and every chunk (and delta base) it needs is present (no half-written version
is visible); no manifest left in the store names a missing chunk unless it is
younger than GC's grace (GC deletes manifests before chunks); the catalog, once
opened, lists exactly the refs. At the end every committed version restores
bit-exactly to the folder it was taken from.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.archive.gc import collect, mark_chunks
from weightvault.archive.store import Store
from weightvault.archive.verify import check_structure, load_versions
from weightvault.errors import IntegrityError
from weightvault.vault import Vault

SMALL_CHUNKS = 8 << 10  # many chunks per toy model: many write points per snapshot


def make_store(path: Path, chunk_size: int = SMALL_CHUNKS) -> Path:
    """A fresh store with a small chunk size (more chunks, so more kill points)."""
    Vault.init(path)
    cfg = path / "config.json"
    d = json.loads(cfg.read_text())
    d["chunk_size"] = chunk_size
    cfg.write_text(json.dumps(d))
    return path


def run_cli(store: Path, *args, kill_after: int = 0, sites: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m weightvault --store STORE ARGS`` in a real subprocess."""
    env = dict(os.environ, WEIGHTVAULT_LOCK_TIMEOUT="60")
    env.pop("WEIGHTVAULT_FAULT_AFTER", None)
    env.pop("WEIGHTVAULT_FAULT_SITES", None)
    if kill_after:
        env["WEIGHTVAULT_FAULT_AFTER"] = str(kill_after)
    if sites:
        env["WEIGHTVAULT_FAULT_SITES"] = sites
    return subprocess.run([sys.executable, "-m", "weightvault", "--store", str(store), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout)


def kill_at_random_time(store: Path, args, delay_s: float) -> int:
    """Start a command and SIGKILL it after ``delay_s``; returns its exit status."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_FAULT")}
    p = subprocess.Popen([sys.executable, "-m", "weightvault", "--store", str(store), *map(str, args)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay_s)
    p.send_signal(signal.SIGKILL)
    return p.wait()


def check_consistent(store_path: Path, *, grace_ok: bool = True) -> list[str]:
    """Return every inconsistency found (empty when the store is consistent)."""
    problems = []
    store = Store.open(store_path)
    manifests, broken = load_versions(store)
    problems += [f"visible but unreadable: {v}: {why}" for v, why in broken]
    rep = check_structure(store, manifests)
    problems += [f"visible version lacks data: {d.chunk_id[:12]} {d.reason} {d.uses[:1]}" for d in rep.damaged]
    # Manifests before chunks: an unreferenced manifest left behind must still have its chunks,
    # unless it is a fresh orphan of a killed snapshot (chunks written first, so it has them too).
    for mid in store.list_manifest_ids():
        if mid in manifests:
            continue
        try:
            m = store.get_manifest(mid)
        except IntegrityError as e:
            problems.append(f"orphan manifest unreadable: {e}")
            continue
        _, _, missing = mark_chunks(store, m.chunk_ids())
        if missing:
            problems.append(f"orphan manifest {mid[:12]} names missing chunks: {missing[:1]}")
    v = Vault(store)
    _, rows = v.sql("SELECT model, version, version_id FROM versions")
    want = {(r.model, r.version, r.manifest_id) for r in store.list_refs()}
    if set(rows) != want:
        problems.append(f"catalog {sorted(rows)} != refs {sorted(want)}")
    return problems


def restore_all(store_path: Path, dest_root: Path, sources: dict[str, dict[str, bytes]]) -> tuple[int, int]:
    """Restore every committed version and compare with its source folder's bytes.

    Args:
        sources: source folder path (as recorded in the manifest) -> {relative path: bytes}.
    Returns:
        (versions restored, bytes of committed data that differ or are missing).
    """
    v = Vault.open(store_path, create=False)
    n, lost = 0, 0
    for r in v.store.list_refs():
        m = v.manifest_by_id(r.manifest_id)
        dest = dest_root / f"{r.model}-{r.version}-{r.manifest_id[:8]}"
        v.restore(f"{r.model}@{r.version}", dest)
        want = sources[m.source["path"]]
        got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
        for rel, data in want.items():
            if got.get(rel) != data:
                lost += len(data)
        n += 1
    return n, lost


@dataclass
class KillTally:
    """Counts for the closing report."""

    tried: int = 0
    killed: int = 0
    survived: int = 0
    failures: list[str] = field(default_factory=list)
    not_killed: list[str] = field(default_factory=list)

    def record(self, what: str, rc: int, problems: list[str]) -> None:
        self.tried += 1
        self.killed += rc == -signal.SIGKILL or rc == 137
        if rc not in (-signal.SIGKILL, 137):
            self.not_killed.append(f"{what} (rc {rc})")
        if problems:
            self.failures.append(f"{what}: {problems}")
        else:
            self.survived += 1


def snapshot_kills(store: Path, model_dirs: list[Path], points, tally: KillTally, rng: random.Random) -> None:
    """Kill a snapshot of each folder at the given point, check, then rerun it to completion."""
    for folder, n in zip(model_dirs, points):
        model = f"m{rng.randrange(3)}"
        res = run_cli(store, "snapshot", folder, "--model", model, "--json", kill_after=n)
        tally.record(f"snapshot kill@{n}", res.returncode, check_consistent(store))
        # Rerun the same snapshot (in-process: same code, no interpreter start-up) to completion.
        try:
            Vault.open(store, create=False).snapshot(folder, model)
        except Exception as e:  # noqa: BLE001 - any failure to rerun is a finding
            tally.failures.append(f"rerun after kill@{n}: {type(e).__name__}: {e}")


def gc_kills(store: Path, points, tally: KillTally) -> None:
    """Kill ``gc --grace 0`` at the given delete points, check after each, then finish it."""
    for n in points:
        res = run_cli(store, "gc", "--grace", "0", "--json", kill_after=n, sites="delete")
        tally.record(f"gc kill@{n}", res.returncode, check_consistent(store))
    collect(Store.open(store), grace_s=0)


def catalog_kills(store: Path, model_dirs: list[Path], tally: KillTally) -> None:
    """Kill snapshots and rebuilds inside catalog transactions and checkpoints."""
    sites = ["catalog.commit", "catalog.checkpoint"]
    for i, folder in enumerate(model_dirs):
        site = sites[i % 2]
        res = run_cli(store, "snapshot", folder, "--model", "cat", "--json", kill_after=1, sites=site)
        tally.record(f"snapshot kill at {site}", res.returncode, check_consistent(store))
        res = run_cli(store, "catalog", "rebuild", kill_after=1, sites=site)
        tally.record(f"catalog rebuild kill at {site}", res.returncode, check_consistent(store))
