"""How far a fine-tune's stored size is from what any lossless coder of its change could reach.

    python bench/delta_floor.py [--work DIR] [--steps 200]

For each fine-tune pair of bench/series.py (c and b against a in fp32, b16 against a16 in bf16),
the new version is archived with weightvault against the old one in a scratch store, and its
added bytes (chunks, manifest, events, as bench/engine.py counts them) are set against ideal code
lengths of the same changed tensors under statistical models of the change. An ideal code length
is -log2 of the probability a model gives each new weight, knowing the old one: what an
arithmetic coder driven by that model would spend, without any container, table or header.

The models, each fitted to each changed tensor (parameters charged 32 bits each):

- ``gauss`` / ``laplace``: the real-valued change new - old is Gaussian / Laplace; a weight that
  did not move at all is a point mass with its own probability. A new weight's probability is the
  model's mass over the interval its float value stands for (its unit in the last place).
- ``gauss/row``: as ``gauss``, with one scale per row of a matrix.
- ``gauss/exp``: as ``gauss``, with one scale per exponent of the old weight (the context the
  ``delta-*-exp`` codecs split on).
- ``lowrank+gauss``: a matrix's change is first predicted by its best rank-r approximation
  (exact SVD; factors stored as 16-bit floats and charged), the rest coded as ``gauss``; r is the
  best of 0, 1, 2, 4, 8, 16, 32 per matrix.

None of these is a floor: a better model of the change codes it smaller, and on the full
fine-tunes weightvault's own byte-plane coding already stores less than every model here (their
changes are not one scale per tensor). They show where a model of the change's size would take
the partial fine-tune, whose target in issue #3 is 8 MB. Measured on the bench series at
0a4e4c4 (2026-11-24), MB:

    pair                    stored  gauss   laplace gauss/row gauss/exp lowrank+gauss
    c - a (partial, fp32)   8.384   8.267   8.317   8.275     8.268     8.095
    b - a (full, fp32)      27.728  27.781  27.894  27.905    27.784    27.681
    b16 - a16 (full, bf16)  4.644   5.170   5.342   5.374     5.093     5.111

On c the models' ideal codes come within 1% of the 8.357 MB of chunks stored (which include
container headers and tables), except the low-rank one: 8.095 MB, 0.17 MB (2%) under the
per-tensor Gaussian. Even that ideal, with no container at all, is above 8 MB. Times are not
measured here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import series  # noqa: E402
from engine import du  # noqa: E402

PAIRS = (("c - a (partial, fp32)", "c", "a"), ("b - a (full, fp32)", "b", "a"),
         ("b16 - a16 (full, bf16)", "b16", "a16"))
RANKS = (0, 1, 2, 4, 8, 16, 32)
PARAM_BITS = 32
FACTOR_BITS = 16
MANTISSA = {"F32": 23, "BF16": 7}
BIAS = 127


def load(folder: Path) -> dict:
    """name -> (dtype, float64 values, exponent fields, raw bytes) of every F32/BF16 tensor in a folder."""
    import numpy as np

    from weightvault.archive.safetensors_header import read_header

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        blob = f.read_bytes()
        for t in read_header(f, len(blob)).tensors:
            if t.dtype not in MANTISSA:
                continue
            raw = blob[t.begin:t.end]
            if t.dtype == "F32":
                bits = np.frombuffer(raw, "<u4")
                vals = bits.view("<f4").astype(np.float64)
                exp = (bits >> 23) & 0xFF
            else:  # bf16: the top half of an fp32
                bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
                vals = bits.view("<f4").astype(np.float64)
                exp = (bits >> 23) & 0xFF
            shape = tuple(t.shape) or (1,)
            out[t.name] = (t.dtype, vals.reshape(shape), exp.reshape(shape).astype(np.int64), raw)
    return out


def _norm_cdf(x):
    """Standard normal CDF (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7): only used for
    intervals wider than a quarter of the scale, where that error is negligible."""
    import numpy as np

    z = np.abs(x) / math.sqrt(2)
    t = 1 / (1 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1 - poly * np.exp(-z * z)
    return 0.5 * (1 + np.sign(x) * erf)


def interval_bits(d, width, scale, kind: str):
    """-log2 of a zero-mean Gaussian / Laplace's mass over [d - width/2, d + width/2], per element."""
    import numpy as np

    scale = np.maximum(scale, 1e-300)
    if kind == "gauss":
        pdf = np.exp(-0.5 * (d / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
        wide = width > scale / 4
        p = pdf * width
        if wide.any():
            s = np.broadcast_to(scale, d.shape)[wide]
            lo, hi = (d[wide] - width[wide] / 2) / s, (d[wide] + width[wide] / 2) / s
            p[wide] = _norm_cdf(hi) - _norm_cdf(lo)
    else:
        lo, hi = d - width / 2, d + width / 2

        def cdf(x):
            return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / scale), 1 - 0.5 * np.exp(-np.maximum(x, 0) / scale))

        p = cdf(hi) - cdf(lo)
    return -np.log2(np.maximum(p, 1e-300))


def tensor_bits(old, new, exp_old, exp_new, dtype: str) -> dict[str, float]:
    """Ideal bits of ``new`` given ``old`` under each model (see the module docstring)."""
    import numpy as np

    d = new - old
    ulp = np.ldexp(1.0, np.maximum(exp_new, 1) - BIAS - MANTISSA[dtype])  # subnormals: the spacing of exponent 1
    moved = d != 0
    n, k = d.size, int(moved.sum())
    # the point mass of weights that did not move: its probability, and the changed ones' remainder
    pi = (n - k) / n
    same_bits = (n - k) * -math.log2(pi) if pi > 0 else 0.0
    rest = -math.log2(1 - pi) if k else 0.0

    def coded(resid, scale, kind):
        return float(interval_bits(resid[moved], ulp[moved], scale if np.isscalar(scale) else scale[moved], kind).sum())

    out = {}
    if k == 0:
        return {m: 0.0 for m in ("gauss", "laplace", "gauss/row", "gauss/exp", "lowrank+gauss")}
    base = same_bits + k * rest + 2 * PARAM_BITS
    dm = d[moved]
    out["gauss"] = base + coded(d, float(np.sqrt(np.mean(dm ** 2))), "gauss")
    out["laplace"] = base + coded(d, float(np.mean(np.abs(dm))), "laplace")
    if d.ndim == 2:
        row = np.sqrt(np.mean(d ** 2, axis=1, keepdims=True))
        out["gauss/row"] = base + d.shape[0] * PARAM_BITS + coded(d, np.broadcast_to(row, d.shape), "gauss")
    else:
        out["gauss/row"] = out["gauss"]
    # one scale per exponent of the old weight (known to the decoder); rare exponents share the tensor's
    scale = np.full(d.shape, float(np.sqrt(np.mean(dm ** 2))))
    own = 0
    for e in np.unique(exp_old[moved]):
        m = (exp_old == e) & moved
        if m.sum() >= 64:
            scale[exp_old == e] = float(np.sqrt(np.mean(d[m] ** 2)))
            own += 1
    out["gauss/exp"] = base + own * PARAM_BITS + coded(d, scale, "gauss")
    out["lowrank+gauss"] = lowrank_bits(d, moved, ulp, base) if d.ndim == 2 else out["gauss"]
    return out


def lowrank_bits(d, moved, ulp, base: float) -> float:
    """``lowrank+gauss``: the best rank of 0..32 for this matrix, factors charged as 16-bit floats."""
    import numpy as np

    u, s, vt = np.linalg.svd(d, full_matrices=False)
    best = math.inf
    for r in RANKS:
        if r > len(s):
            break
        if r:
            a = (u[:, :r] * s[:r]).astype(np.float16).astype(np.float64)
            b = vt[:r].astype(np.float16).astype(np.float64)
            resid = d - a @ b
            cost = FACTOR_BITS * r * sum(d.shape)
        else:
            resid, cost = d, 0
        rm = resid[moved]
        scale = float(np.sqrt(np.mean(rm ** 2)))
        bits = float(interval_bits(rm, ulp[moved], scale, "gauss").sum())
        best = min(best, base + cost + bits)
    return best


def stored_added(old: Path, new: Path) -> tuple[int, int]:
    """(bytes a store grows by when ``new`` is archived after ``old`` as its parent, chunk bytes of that)."""
    from weightvault.vault import Vault

    with tempfile.TemporaryDirectory(prefix="wv-floor-") as tmp:
        store = Path(tmp) / "store"
        v = Vault.open(store, create=True)
        v.snapshot(str(old), "m", parent="")
        before, chunks_before = du(store, ("chunks", "manifests", "events")), du(store, ("chunks",))
        v.snapshot(str(new), "m", parent="1")
        return du(store, ("chunks", "manifests", "events")) - before, du(store, ("chunks",)) - chunks_before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "weightvault-bench")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args(argv)
    root = {v.label: v.path for v in series.build(args.work, steps=args.steps)}
    models = ("gauss", "laplace", "gauss/row", "gauss/exp", "lowrank+gauss")
    print(f"{'pair':<24}{'tensors':>8}{'moved':>11}{'stored MB':>11}{'chunks MB':>11}"
          + "".join(f"{m:>15}" for m in models))
    for label, new_l, old_l in PAIRS:
        old, new = load(root[old_l]), load(root[new_l])
        totals = dict.fromkeys(models, 0.0)
        n_t = n_moved = 0
        for name, (dtype, nv, ne, raw) in new.items():
            if name not in old or old[name][3] == raw or old[name][0] != dtype:
                continue
            n_t += 1
            n_moved += int((nv != old[name][1]).sum())
            for m, b in tensor_bits(old[name][1], nv, old[name][2], ne, dtype).items():
                totals[m] += b
        added, chunk_bytes = stored_added(root[old_l], root[new_l])
        print(f"{label:<24}{n_t:>8}{n_moved:>11,}{added / 1e6:>11.3f}{chunk_bytes / 1e6:>11.3f}"
              + "".join(f"{totals[m] / 8e6:>15.3f}" for m in models))
        bpw = [f"{m} {totals[m] / n_moved:.2f}" for m in models]
        print(f"{'':<24}bits per moved weight: stored {added * 8 / n_moved:.2f}; " + ", ".join(bpw))
    print("model columns: ideal code lengths in MB of the changed tensors alone (no container, table or "
          "manifest); stored: what the store grew by, chunks: of which chunk objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
