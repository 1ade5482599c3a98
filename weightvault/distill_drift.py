"""Rerun a recorded distillation and measure how far the new outputs drift from the stored ones.

The recipe comes from the run's event; the prompts and the stored output come
back from the store (``distill-runs@<run_id>``, sha256-verified). The same
batches are regenerated with the same settings and seed.

Metrics (causal LMs), per prompt then over the run:

- ``exact_match_rate``: fraction of rows whose completion token ids are identical.
- positions compared: every generated position up to and including the first
  token where old and new completions differ (after it, the two are
  conditioned on different prefixes and no longer comparable).
- ``top1_agreement``: fraction of compared positions whose most likely token agrees.
- ``kl_mean`` / ``kl_max``: KL(stored || new) over the stored top-k ids, both
  renormalised over those ids, per position.
- ``max_abs_dlogprob``: max |stored - new| log-prob at the stored ids. New
  values are rounded to the stored dtype first, so an identical rerun gives 0.
  The new log-probs come from the new top-k; a stored id that fell out of it
  is given the new k-th log-prob (an upper bound on its true value), so KL
  and |Δ| are then lower bounds. Both are exact whenever the top-k sets agree.

Encoders: ``cosine_min`` / ``cosine_mean`` of the embeddings; masked-LM token
log-probs are compared like the causal ones, per input token.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Drift:
    """How a rerun compares with the stored run.

    Attributes:
        run_id: the run checked.
        rerun: the new run's result (it is recorded too).
        rows: rows compared.
        metrics: name -> value (see the module docstring); all 0/1 for a perfect reproduction.
        identical: True when every compared output matched exactly.
        worst: up to 5 rows that drifted most, as dicts.
    """

    run_id: str
    rerun: object
    rows: int
    metrics: dict
    identical: bool
    worst: tuple = ()


def rerun(vault, run_id: str, *, out=None, device: str | None = None, dtype=None, progress=None) -> Drift:
    """Regenerate run ``run_id`` with its recorded recipe and compare.

    Args:
        vault: the Vault.
        run_id: the run to check.
        out: where to write the new Parquet file (default: a temp file, removed after).
        device, dtype: default: the recorded ones when usable here, else ``auto``.
        progress: as for :func:`weightvault.distill.run`.
    Returns:
        Drift.
    Raises:
        DistillInterrupted: Ctrl-C; the finished rows were recorded as an incomplete run
            (``rerun_of`` set) and archived; no drift is measured.
    """
    import pyarrow.parquet as pq

    from weightvault import distill
    from weightvault.distill_gen import DistillSettings
    from weightvault.teacher import load_teacher, require_torch

    torch, _ = require_torch("distillation reruns")
    p = distill.get_run(vault, run_id)
    data_ref = p["data"]["ref"]
    pset = distill.parse_prompts(vault.read_file(data_ref, "prompts.jsonl"), p["prompts"]["name"])
    stored = pq.read_table(io.BytesIO(vault.read_file(data_ref, "output.parquet"))).to_pylist()
    settings = DistillSettings.from_dict(p["settings"])
    if device is None:
        device = p["device"] if not p["device"].startswith("cuda") or torch.cuda.is_available() else "auto"
        dtype = dtype or (p["dtype"] if device != "auto" else None)
    teacher = load_teacher(_resolved(vault, p["teacher"]["manifest_id"]), device=device, dtype=dtype, vault=vault)
    if settings.max_length is None and teacher.kind != "causal-lm":
        # Runs recorded before the length was recorded truncated at the tokenizer's limit (at most
        # 8192): rerun them as they ran, so a rerun measures the teacher, not a changed default.
        from dataclasses import replace

        from weightvault.teacher import position_limit

        old = min(getattr(teacher.tokenizer, "model_max_length", 512) or 512, 8192)
        settings = replace(settings, max_length=min(old, position_limit(teacher.model) or old))
    with tempfile.TemporaryDirectory(prefix="wv-rerun-") as tmp:
        target = Path(out) if out else Path(tmp) / "rerun.parquet"
        res = distill.run(vault, None, pset, target, settings, teacher=teacher, progress=progress,
                          limit=p["output"]["rows"], rerun_of=run_id, keep_path=out is not None)
        new = pq.read_table(str(target)).to_pylist()
    lp_dtype = np.float16 if settings.logprob_dtype == "float16" else np.float32
    if p["teacher"]["kind"] == "causal-lm":
        metrics, per_row = compare_causal(stored, new, settings.top_k, lp_dtype)
    else:
        metrics, per_row = compare_encoder(stored, new, settings.top_k, lp_dtype)
    worst = tuple(sorted(per_row, key=lambda r: -r["score"])[:5]) if per_row else ()
    return Drift(run_id, res, len(new), metrics, _identical(metrics), tuple(w for w in worst if w["score"] > 0))


def _resolved(vault, manifest_id):
    from weightvault.vault import ResolvedVersion

    m = vault.manifest_by_id(manifest_id)
    return ResolvedVersion(m.model, m.version, manifest_id)


def _identical(m: dict) -> bool:
    return (m.get("exact_match_rate", 1) == 1 and m.get("top1_agreement", 1) == 1 and m.get("kl_max", 0) == 0
            and m.get("max_abs_dlogprob", 0) == 0 and m.get("cosine_min", 1) >= 1 - 1e-7)


def compare_topk(old_ids, old_lp, new_ids, new_lp_at_old, k, lp_dtype):
    """Per-position stats for flattened (positions*k) top-k arrays: (top1 agree, kl, max |dlp|) arrays."""
    oi = np.asarray(old_ids, np.int64).reshape(-1, k)
    ni = np.asarray(new_ids, np.int64).reshape(-1, k)
    ol = np.asarray(old_lp, np.float64).reshape(-1, k)
    nl = np.asarray(new_lp_at_old, np.float64).reshape(-1, k)
    n = min(len(oi), len(ni), len(nl))
    oi, ni, ol, nl = oi[:n], ni[:n], ol[:n], nl[:n]
    top1 = oi[:, 0] == ni[:, 0]
    dlp = np.abs(ol - nl).max(axis=1) if n else np.zeros(0)
    p = _renorm(ol)
    q = _renorm(nl)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(np.where(q > 0, q, 1e-300))), 0).sum(axis=1)
    return top1, np.maximum(kl, 0), dlp


def _renorm(lp):
    m = lp.max(axis=1, keepdims=True) if lp.size else lp
    e = np.exp(lp - m)
    return e / e.sum(axis=1, keepdims=True)


def _new_lp_at_old(new_row, old_ids, k, lp_dtype):
    """New log-probs at the stored ids: from the new top-k where present (others: below the new k-th)."""
    ni = np.asarray(new_row["topk_ids"], np.int64).reshape(-1, k)
    nl = np.asarray(new_row["topk_logprobs"], np.float64).reshape(-1, k)
    oi = np.asarray(old_ids, np.int64).reshape(-1, k)
    n = min(len(ni), len(oi))
    out = np.empty((n, k))
    for pos in range(n):
        lookup = dict(zip(ni[pos].tolist(), nl[pos].tolist()))
        floor = nl[pos].min() if k else 0.0
        out[pos] = [lookup.get(t, floor) for t in oi[pos].tolist()]
    return out.astype(lp_dtype).astype(np.float64)


def compare_causal(stored: list[dict], new: list[dict], k: int, lp_dtype):
    exact, top1s, kls, dlps, per_row = [], [], [], [], []
    for old, cur in zip(stored, new):
        oc, nc = list(old["completion_ids"]), list(cur["completion_ids"])
        same = oc == nc
        exact.append(same)
        diverge = next((i for i, (a, b) in enumerate(zip(oc, nc)) if a != b), min(len(oc), len(nc)) - 1)
        upto = min(diverge + 1, len(oc), len(nc))
        if upto <= 0:
            per_row.append({"row": old["row"], "prompt": old["prompt"], "score": 0.0 if same else 1.0})
            continue
        o_ids = np.asarray(old["topk_ids"]).reshape(-1, k)[:upto]
        o_lp = np.asarray(old["topk_logprobs"], np.float64).reshape(-1, k)[:upto]
        n_ids = np.asarray(cur["topk_ids"]).reshape(-1, k)[:upto]
        n_at = _new_lp_at_old(cur, o_ids.reshape(-1), k, lp_dtype)[:upto]
        t1, kl, dlp = compare_topk(o_ids, o_lp, n_ids, n_at, k, lp_dtype)
        top1s.append(t1)
        kls.append(kl)
        dlps.append(dlp)
        per_row.append({"row": old["row"], "prompt": old["prompt"], "stored": old["text"], "new": cur["text"],
                        "kl_max": float(kl.max()), "score": float(kl.max()) + (0.0 if same else 1.0)})
    t1 = np.concatenate(top1s) if top1s else np.ones(0, bool)
    kl = np.concatenate(kls) if kls else np.zeros(0)
    dlp = np.concatenate(dlps) if dlps else np.zeros(0)
    metrics = {
        "rows": len(exact), "exact_match_rate": float(np.mean(exact)) if exact else 1.0,
        "positions_compared": len(t1), "top1_agreement": float(t1.mean()) if len(t1) else 1.0,
        "kl_mean": float(kl.mean()) if len(kl) else 0.0, "kl_max": float(kl.max()) if len(kl) else 0.0,
        "max_abs_dlogprob": float(dlp.max()) if len(dlp) else 0.0,
    }
    return metrics, per_row


def compare_encoder(stored: list[dict], new: list[dict], k: int, lp_dtype):
    cos, per_row, top1s, kls, dlps = [], [], [], [], []
    for old, cur in zip(stored, new):
        a = np.asarray(old["embedding"], np.float64)
        b = np.asarray(cur["embedding"], np.float64)
        c = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
        cos.append(c)
        per_row.append({"row": old["row"], "text": old["text"], "cosine": c, "score": 1.0 - c})
        if "topk_ids" in old and old["topk_ids"] is not None:
            n_at = _new_lp_at_old(cur, old["topk_ids"], k, lp_dtype)
            t1, kl, dlp = compare_topk(old["topk_ids"], old["topk_logprobs"], cur["topk_ids"], n_at, k, lp_dtype)
            top1s.append(t1)
            kls.append(kl)
            dlps.append(dlp)
    metrics = {"rows": len(cos), "cosine_min": float(min(cos)) if cos else 1.0,
               "cosine_mean": float(np.mean(cos)) if cos else 1.0}
    if top1s:
        t1, kl, dlp = np.concatenate(top1s), np.concatenate(kls), np.concatenate(dlps)
        metrics.update(top1_agreement=float(t1.mean()) if len(t1) else 1.0,
                       kl_mean=float(kl.mean()) if len(kl) else 0.0, kl_max=float(kl.max()) if len(kl) else 0.0,
                       max_abs_dlogprob=float(dlp.max()) if len(dlp) else 0.0)
    return metrics, per_row
