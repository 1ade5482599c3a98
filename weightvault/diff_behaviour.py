"""Behaviour diff: run two versions on the same prompts and measure how their outputs differ.

Both versions are reloaded with :func:`weightvault.teacher.load_teacher`.

- Causal LMs: each prompt is run once through each model (teacher forcing);
  at every position the next-token distributions are compared over the full
  vocabulary: KL(A||B), whether the top-1 tokens agree, and each model's
  perplexity on the prompt. Then both generate greedily (a few tokens) and
  the texts are put side by side where they differ. When both versions have
  distillation runs on the same prompt file with stored top-k, the KL over
  those stored top-k is reported as well (``stored_topk``, see
  :mod:`weightvault.diff_topk`).
- Encoders: the pooled sentence embedding (the folder's pooling, mean by
  default) of each input, compared by cosine.

Two byte-identical versions need only one model: B is A, so KL is exactly 0.

>>> # b = diff_behaviour(vault, "gpt@1", "gpt@2", "prompts.jsonl")
>>> # b.summary["kl_mean"], b.summary["top1_agreement"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from weightvault.errors import PromptFileError, UsageError

DEFAULT_MAX_NEW_TOKENS = 16
WORST = 5


@dataclass(frozen=True)
class PromptSet:
    """Prompts read from a JSONL file.

    Attributes:
        path: the file.
        hash: BLAKE3 of its bytes, as ``distill_runs.prompt_set_hash`` records it.
        prompts: the prompt texts, in file order.
        lines: the file line of each prompt (1-based).
    """

    path: str
    hash: str
    prompts: tuple[str, ...]
    lines: tuple[int, ...] = ()

    def line_of(self, i: int) -> int:
        return self.lines[i] if i < len(self.lines) else i + 1


@dataclass(frozen=True)
class BehaviourDiff:
    """How two versions' outputs differ on a prompt set.

    Attributes:
        kind: ``causal`` or ``encoder``.
        prompts: the prompt set.
        summary: aggregate figures (causal: kl_mean, kl_max, top1_agreement,
            perplexity_a, perplexity_b, positions, generations_differ;
            encoder: cosine_mean, cosine_min).
        per_prompt: one dict per prompt (index, prompt and its figures).
        worst: indices of the worst prompts, worst first.
        identical_versions: the versions are byte-identical (one model was loaded).
        stored_topk: KL over distillation runs' stored top-k, when both had one.
        settings: device, dtype, max_new_tokens.
    """

    kind: str
    prompts: PromptSet
    summary: dict
    per_prompt: tuple[dict, ...]
    worst: tuple[int, ...]
    identical_versions: bool = False
    stored_topk: dict | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "prompt_file": self.prompts.path, "prompt_set_hash": self.prompts.hash,
                "prompts": len(self.prompts.prompts), "identical_versions": self.identical_versions,
                "settings": self.settings, "summary": self.summary, "worst": list(self.worst),
                "stored_topk": self.stored_topk, "per_prompt": list(self.per_prompt)}


def load_prompts(path) -> PromptSet:
    """Read a JSONL prompt file in the format ``weightvault distill`` reads (one ``{"prompt": ...}`` a line).

    Raises:
        PromptFileError: naming the file and line of the first bad line.
    """
    from weightvault.distill import read_prompts

    ps = read_prompts(path)
    return PromptSet(str(path), ps.hash, ps.texts, ps.lines)


class InvalidPrompt(ValueError):
    """A prompt a model cannot take (turned into a PromptFileError naming its line)."""


def _finite(x):
    return None if x is None or not math.isfinite(x) else float(x)


# -- causal LMs ----------------------------------------------------------------


POSITION_BLOCK = 64  # float64 log-probs of 64 positions x a 150k vocabulary: ~75 MB per array


def compare_causal_prompt(torch, model_a, model_b, ids) -> dict:
    """Teacher-forced comparison of one tokenised prompt (1 x L ids on the models' device).

    The distributions are compared in float64, a block of positions at a time
    so a large vocabulary never needs (L x V) float64 arrays at once.

    Returns:
        dict with kl (per position, list), top1 (per position, list of bool),
        nll_a, nll_b (summed next-token NLL of the prompt) and n_pred (tokens predicted).
    """
    with torch.no_grad():
        la = model_a(input_ids=ids).logits[0]
        lb = la if model_b is model_a else model_b(input_ids=ids).logits[0]
    if la.shape[-1] != lb.shape[-1]:
        raise UsageError(f"the versions' vocabularies differ ({la.shape[-1]} vs {lb.shape[-1]} logits)",
                         hint="a behaviour diff of causal LMs needs one shared vocabulary")
    n = ids.shape[1]
    targets = torch.cat([ids[0, 1:], ids[0, :1]])  # position i predicts token i+1 (the last one: unused)
    kl, top1, nll_a, nll_b = [], [], 0.0, 0.0
    for start in range(0, n, POSITION_BLOCK):
        sl = slice(start, min(start + POSITION_BLOCK, n))
        lpa, lpb = la[sl].double().log_softmax(-1), lb[sl].double().log_softmax(-1)
        kl += (lpa.exp() * (lpa - lpb)).sum(-1).clamp_min(0.0).tolist()  # rounding can dip a hair below 0
        top1 += (lpa.argmax(-1) == lpb.argmax(-1)).tolist()
        pred = min(sl.stop, n - 1) - start  # rows of this block that predict a prompt token
        if pred > 0:
            t = targets[sl][:pred, None]
            nll_a -= float(lpa[:pred].gather(1, t).sum())
            nll_b -= float(lpb[:pred].gather(1, t).sum())
    return {"kl": kl, "top1": top1, "nll_a": nll_a, "nll_b": nll_b, "n_pred": n - 1}


def _generate(torch, model, tok, ids, max_new_tokens: int) -> str:
    if max_new_tokens <= 0:
        return ""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=pad if pad is not None else 0)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _tokenize(torch, tok_a, tok_b, text: str, index: int, device, prompts: PromptSet | None = None):
    where = (prompts.path, prompts.line_of(index)) if prompts is not None else ("prompt", index + 1)
    ids = tok_a(text, return_tensors="pt", verbose=False)["input_ids"]
    if tok_b is not tok_a and tok_b(text, return_tensors="pt", verbose=False)["input_ids"].tolist() != ids.tolist():
        raise UsageError(f"{where[0]}:{where[1]}: the versions' tokenizers split this prompt differently",
                         hint="a behaviour diff of causal LMs needs one shared tokenizer")
    if ids.shape[1] == 0:
        raise PromptFileError(*where, "tokenizes to no tokens", hint="remove or fill that line")
    return ids.to(device)


def tokenize_causal(torch, ta, tb, prompts: PromptSet, generate: int) -> list:
    """Every prompt tokenised and checked before any model runs.

    Args:
        generate: tokens each prompt is extended by (the side-by-side generation; 0 for none).
    Raises:
        PromptFileError: a prompt that tokenizes to nothing, or that (with ``generate`` more
            tokens) does not fit either model's positions; names the file's line.
    """
    from weightvault.teacher import position_limit

    all_ids = [_tokenize(torch, ta.tokenizer, tb.tokenizer, t, i, ta.model.device, prompts)
               for i, t in enumerate(prompts.prompts)]
    limits = [n for n in (position_limit(ta.model), position_limit(tb.model)) if n]
    if not limits:
        return all_ids
    limit, longest = min(limits), max(int(x.shape[1]) for x in all_ids)
    for i, ids in enumerate(all_ids):
        n = int(ids.shape[1])
        if n + generate > limit:
            if n > limit:
                reason = f"{n} tokens exceed the model's {limit} positions"
                hint = f"shorten that prompt to {limit} tokens or fewer"
            else:
                reason = f"{n} prompt tokens + --max-new-tokens {generate} exceed the model's {limit} positions"
                room = limit - longest
                hint = (f"use --max-new-tokens {room} or less (0: no side-by-side texts), or shorten that prompt"
                        if room >= 0 else "shorten that prompt, or use --max-new-tokens 0")
            raise PromptFileError(prompts.path, prompts.line_of(i), reason, hint=hint)
    return all_ids


def diff_causal(torch, ta, tb, prompts: PromptSet, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                texts=None, progress=None) -> tuple[dict, tuple[dict, ...], tuple[int, ...]]:
    """Compare two loaded causal-LM teachers on every prompt: (summary, per_prompt, worst).

    Args:
        texts: (texts_a, texts_b) greedy completions already known (stored runs); else generated here.
    """
    rows, all_kl, all_top1 = [], [], []
    nll_a = nll_b = 0.0
    n_pred = 0
    all_ids = tokenize_causal(torch, ta, tb, prompts, max_new_tokens if texts is None else 0)
    for i, text in enumerate(prompts.prompts):
        ids = all_ids[i]
        c = compare_causal_prompt(torch, ta.model, tb.model, ids)
        if texts is not None:
            gen_a, gen_b = texts[0][i], texts[1][i]
        else:
            gen_a = _generate(torch, ta.model, ta.tokenizer, ids, max_new_tokens)
            gen_b = gen_a if tb.model is ta.model else _generate(torch, tb.model, tb.tokenizer, ids, max_new_tokens)
        all_kl += c["kl"]
        all_top1 += c["top1"]
        nll_a, nll_b, n_pred = nll_a + c["nll_a"], nll_b + c["nll_b"], n_pred + c["n_pred"]
        rows.append({
            "index": i, "prompt": text, "tokens": int(ids.shape[1]),
            "kl_mean": sum(c["kl"]) / len(c["kl"]), "kl_max": max(c["kl"]),
            "top1_agreement": sum(c["top1"]) / len(c["top1"]),
            "perplexity_a": _finite(math.exp(c["nll_a"] / c["n_pred"])) if c["n_pred"] else None,
            "perplexity_b": _finite(math.exp(c["nll_b"] / c["n_pred"])) if c["n_pred"] else None,
            "kl_per_position": c["kl"], "text_a": gen_a, "text_b": gen_b, "same_text": gen_a == gen_b})
        if progress:
            progress(1)
    summary = {
        "kl_mean": sum(all_kl) / len(all_kl), "kl_max": max(all_kl),
        "top1_agreement": sum(all_top1) / len(all_top1), "positions": len(all_kl),
        "perplexity_a": _finite(math.exp(nll_a / n_pred)) if n_pred else None,
        "perplexity_b": _finite(math.exp(nll_b / n_pred)) if n_pred else None,
        "generations_differ": sum(not r["same_text"] for r in rows)}
    worst = tuple(r["index"] for r in sorted(rows, key=lambda r: (-r["kl_mean"], r["top1_agreement"]))[:WORST])
    return summary, tuple(rows), worst


# -- encoders ------------------------------------------------------------------


def embed(torch, teacher, text: str, max_length: int | None = None):
    """The pooled sentence embedding of one input (float64, on the CPU).

    Inputs are truncated as ``weightvault distill`` truncates them
    (:func:`weightvault.teacher.encoder_max_length`: the folder's sentence-transformers
    ``max_seq_length``, else the tokenizer's limit) unless ``max_length`` is given.
    """
    from weightvault.teacher import encoder_max_length

    tok, model = teacher.tokenizer, teacher.model
    n = max_length if max_length is not None else encoder_max_length(teacher)  # diff_encoder resolves it once
    enc = tok(text, return_tensors="pt", truncation=True, max_length=n).to(model.device)
    if enc["input_ids"].shape[1] == 0:
        raise InvalidPrompt("tokenizes to no tokens")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    hidden = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out.hidden_states[-1]
    hidden = hidden[0].double()
    mask = enc["attention_mask"][0].to(hidden.dtype)[:, None]
    mode = (teacher.pooling or {}).get("mode", "mean")
    if mode == "cls":
        v = hidden[0]
    elif mode == "max":
        v = hidden.masked_fill(mask == 0, -math.inf).max(0).values
    else:
        v = (hidden * mask).sum(0) / mask.sum().clamp_min(1.0)
    return v.cpu()


def diff_encoder(torch, ta, tb, prompts: PromptSet, progress=None):
    """Cosine of the two versions' pooled embeddings per input: (summary, per_prompt, worst)."""
    from weightvault.teacher import encoder_max_length

    # One length for both: were A's folder to say max_seq_length 256 and B's nothing (512), the
    # cosine of a long input would measure the truncation, not the weights.
    n = min(encoder_max_length(ta), encoder_max_length(tb))
    rows = []
    for i, text in enumerate(prompts.prompts):
        try:
            ea = embed(torch, ta, text, n)
            eb = ea if tb.model is ta.model else embed(torch, tb, text, n)
        except InvalidPrompt as e:
            raise PromptFileError(prompts.path, prompts.line_of(i), str(e), hint="remove or fill that line") from None
        if ea.shape != eb.shape:
            raise UsageError(f"embedding sizes differ ({ea.shape[0]} vs {eb.shape[0]})",
                             hint="compare versions of one architecture")
        cos = float(torch.nn.functional.cosine_similarity(ea[None], eb[None])[0])
        rows.append({"index": i, "prompt": text, "cosine": cos})
        if progress:
            progress(1)
    cs = [r["cosine"] for r in rows]
    summary = {"cosine_mean": sum(cs) / len(cs), "cosine_min": min(cs)}
    worst = tuple(r["index"] for r in sorted(rows, key=lambda r: r["cosine"])[:WORST])
    return summary, tuple(rows), worst


# -- both ----------------------------------------------------------------------


def diff_behaviour(vault, a, b, prompts, *, identical: bool = False, device: str = "auto", dtype=None,
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, progress=None) -> BehaviourDiff:
    """Load both versions and compare their outputs on a prompt file.

    Args:
        vault: the Vault.
        a, b: version references.
        prompts: a JSONL path or a loaded :class:`PromptSet`.
        identical: the versions are byte-identical (B is not loaded again).
        device, dtype: passed to ``load_teacher``.
        max_new_tokens: greedy generation length for the side-by-side texts.
        progress: callable(n_prompts) or None.
    Returns:
        BehaviourDiff.
    """
    from weightvault.teacher import CAUSAL, ENCODER, MASKED, load_teacher, require_torch

    torch, _ = require_torch("behaviour diff")
    ps = prompts if isinstance(prompts, PromptSet) else load_prompts(prompts)
    ta = load_teacher(a, device=device, dtype=dtype, vault=vault)
    tb = ta if identical else load_teacher(b, device=device, dtype=dtype, vault=vault)
    for t in (ta, tb):
        if t.tokenizer is None:
            raise UsageError(f"{t.ref} has no tokenizer files", hint="a behaviour diff needs a tokenizer")
    if (ta.kind == CAUSAL) != (tb.kind == CAUSAL):
        raise UsageError(f"{ta.ref} is a {ta.kind} model and {tb.ref} a {tb.kind} one",
                         hint="compare the behaviour of versions of one kind")
    settings = {"device": ta.device, "dtype": ta.dtype}
    if ta.kind == CAUSAL:
        from weightvault.diff_topk import find_run_pair, stored_topk_kl

        mb = vault.resolve(b).manifest_id if identical else tb.manifest_id  # B's own runs, not A's
        pair = find_run_pair(vault, ta.manifest_id, mb, ps.hash, len(ps.prompts))
        texts = None
        if pair is not None:  # the runs' greedy completions: no need to generate again
            texts = ([r["text"] for r in pair.rows_a], [r["text"] for r in pair.rows_b])
            settings["generations_from_runs"] = [pair.run_a, pair.run_b]
        else:
            settings["max_new_tokens"] = max_new_tokens
        settings["greedy"] = True
        summary, rows, worst = diff_causal(torch, ta, tb, ps, max_new_tokens=max_new_tokens, texts=texts,
                                           progress=progress)
        kind = "causal"
        stored = stored_topk_kl(pair) if pair is not None else None
    elif ta.kind in (ENCODER, MASKED):
        summary, rows, worst = diff_encoder(torch, ta, tb, ps, progress=progress)
        kind, stored = "encoder", None
    else:
        raise UsageError(f"{ta.ref} is neither a causal LM nor an encoder ({ta.kind})",
                         hint="behaviour diff supports causal LMs and encoders; diff the weights alone")
    return BehaviourDiff(kind, ps, summary, rows, worst, identical, stored, settings)
