"""Reuse stored distillation outputs in a behaviour diff.

When both versions have a finished greedy distillation run (catalog table
``distill_runs``, issue 5) on the same prompt file (same BLAKE3 prompt-set
hash) with the same top-k and token budget, their outputs already hold the
greedy completions and, per generated token, the top-k ids and log-probs.
The diff then takes the side-by-side texts from those runs instead of
generating again, and adds KL(A||B) over the stored top-k along the prefix
both completions share (up to and including the first token where they
differ; after it the contexts differ), computed exactly like
``weightvault distill --rerun`` drift (:func:`weightvault.distill_drift.compare_causal`).

Without the table, without matching runs, or when the stored outputs cannot
be read, :func:`find_run_pair` returns None and the diff generates itself.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

log = logging.getLogger("weightvault")


@dataclass(frozen=True)
class RunPair:
    """Matching distillation runs of A and B on one prompt set.

    Attributes:
        run_a, run_b: run IDs.
        top_k: top-k stored per generated token.
        rows_a, rows_b: the runs' output rows (dicts), in prompt order.
        logprob_dtype: ``float16`` or ``float32`` (the coarser of the two).
    """

    run_a: str
    run_b: str
    top_k: int
    rows_a: tuple
    rows_b: tuple
    logprob_dtype: str


def _has_table(vault, name: str) -> bool:
    _, rows = vault.query("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])
    return bool(rows and rows[0][0])


def _runs(vault, manifest_id: str, prompt_hash: str, n_prompts: int) -> list[tuple]:
    _, rows = vault.query(
        "SELECT run_id, data_version_id, top_k, max_new_tokens, settings->>'logprob_dtype' FROM distill_runs "
        "WHERE teacher_id = ? AND prompt_set_hash = ? AND complete AND teacher_kind = 'causal-lm' "
        "AND temperature = 0 AND output_rows = ? ORDER BY created_at DESC",
        [manifest_id, prompt_hash, n_prompts])
    return rows


def _read_rows(vault, data_manifest_id: str) -> tuple:
    import pyarrow.parquet as pq

    m = vault.manifest_by_id(data_manifest_id)
    table = pq.read_table(io.BytesIO(vault.read_file(f"{m.model}@{m.version}", "output.parquet")))
    return tuple(sorted(table.to_pylist(), key=lambda r: r["row"]))


def find_run_pair(vault, manifest_a: str, manifest_b: str, prompt_hash: str, n_prompts: int) -> RunPair | None:
    """The newest matching pair of greedy runs of A and B on this prompt set, or None.

    Args:
        vault: the Vault.
        manifest_a, manifest_b: the versions' manifest IDs.
        prompt_hash: BLAKE3 of the prompt file's bytes (``distill_runs.prompt_set_hash``).
        n_prompts: prompts in the file (a run must have one row per prompt).
    """
    if not _has_table(vault, "distill_runs"):
        return None
    runs_a = _runs(vault, manifest_a, prompt_hash, n_prompts)
    runs_b = _runs(vault, manifest_b, prompt_hash, n_prompts)
    for ra in runs_a:
        for rb in runs_b:
            if ra[2] == rb[2] and ra[3] == rb[3]:
                try:
                    rows_a, rows_b = _read_rows(vault, ra[1]), _read_rows(vault, rb[1])
                except Exception as e:  # noqa: BLE001 - a damaged old run must not stop the diff
                    log.warning("stored distillation runs %s/%s unreadable, generating instead: %s", ra[0], rb[0], e)
                    return None
                k = int(ra[2])
                if any(len(r["topk_ids"]) != k * len(r["completion_ids"]) for r in (*rows_a, *rows_b)):
                    # a run recorded before --top-k was checked against the vocabulary holds fewer
                    # entries per position than its top_k says: its layout cannot be read
                    log.warning("stored distillation runs %s/%s do not hold %d entries per position, "
                                "generating instead", ra[0], rb[0], k)
                    return None
                dtype = "float16" if "float16" in (ra[4], rb[4]) else "float32"
                return RunPair(ra[0], rb[0], k, rows_a, rows_b, dtype)
    return None


def stored_topk_kl(pair: RunPair) -> dict:
    """KL(A||B), top-1 agreement and exact-match rate over the runs' stored top-k.

    Returns:
        ``{"run_a", "run_b", "top_k", "positions", "kl_mean", "kl_max", "top1_agreement",
        "exact_match_rate", "max_abs_dlogprob"}``.
    """
    import numpy as np

    from weightvault.distill_drift import compare_causal

    lp = np.float16 if pair.logprob_dtype == "float16" else np.float32
    metrics, _ = compare_causal(list(pair.rows_a), list(pair.rows_b), pair.top_k, lp)
    return {"run_a": pair.run_a, "run_b": pair.run_b, "top_k": pair.top_k,
            "positions": metrics["positions_compared"], "kl_mean": metrics["kl_mean"], "kl_max": metrics["kl_max"],
            "top1_agreement": metrics["top1_agreement"], "exact_match_rate": metrics["exact_match_rate"],
            "max_abs_dlogprob": metrics["max_abs_dlogprob"]}
