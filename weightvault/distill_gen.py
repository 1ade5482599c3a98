"""Generation: run a Teacher over prompts in batches and turn its outputs into Parquet rows.

Causal LMs go through ``model.generate`` (so throughput is transformers' own)
with one extra logits processor that records, at every step, the top-k token
ids and log-probabilities of the model's raw next-token distribution
(log_softmax of the logits before temperature or any other processor). It
returns the scores unchanged, so decoding is exactly what plain ``generate``
does. Encoders are pooled as sentence-transformers pools them.

The Parquet layout is documented in ``schemas/distill.schema.json``.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from weightvault.archive._lazy import numpy as np

DISTILL_FORMAT = "weightvault.distill/1"


@dataclass(frozen=True)
class DistillSettings:
    """Everything that decides a run's outputs besides the teacher and the prompts.

    Attributes:
        max_new_tokens: tokens generated per prompt at most (causal LMs).
        top_k: top-k ids and log-probs stored per generated token (per input token for masked-LM logits).
        temperature: 0 for greedy decoding; > 0 samples from softmax(logits / temperature), no top-k/top-p filter.
        seed: torch seed; batch i is seeded with ``seed + i``, so a rerun of the same batches samples the same.
        batch_size: prompts per forward pass; decoder-only batches are left-padded.
        token_logits: masked LMs: also store top-k log-probs for every input token.
        logprob_dtype: ``float16`` (compact) or ``float32``.
        max_length: encoders and masked LMs: truncate inputs to this many tokens. None: the folder's
            sentence-transformers ``max_seq_length``, else the tokenizer's limit, at most the model's
            positions (:func:`weightvault.teacher.encoder_max_length`); a run records the length it used.
    """

    max_new_tokens: int = 64
    top_k: int = 20
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 8
    token_logits: bool = False
    logprob_dtype: str = "float16"
    max_length: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DistillSettings:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def parquet_schema(kind: str, settings: DistillSettings, metadata: dict):
    """The Arrow schema of a run's output (see schemas/distill.schema.json)."""
    import json

    import pyarrow as pa

    lp = pa.float16() if settings.logprob_dtype == "float16" else pa.float32()
    if kind == "causal-lm":
        fields = [("row", pa.int32()), ("prompt", pa.string()), ("prompt_ids", pa.list_(pa.int32())),
                  ("completion_ids", pa.list_(pa.int32())), ("text", pa.string()), ("finish_reason", pa.string()),
                  ("topk_ids", pa.list_(pa.int32())), ("topk_logprobs", pa.list_(lp))]
    else:
        fields = [("row", pa.int32()), ("text", pa.string()), ("input_ids", pa.list_(pa.int32())),
                  ("embedding", pa.list_(pa.float32()))]
        if settings.token_logits:
            fields += [("topk_ids", pa.list_(pa.int32())), ("topk_logprobs", pa.list_(lp))]
    meta = {"weightvault.distill": json.dumps({"format": DISTILL_FORMAT, "kind": kind, "top_k": settings.top_k,
                                               **metadata}, sort_keys=True)}
    return pa.schema(fields, metadata=meta)


def _recorder_class():
    from transformers import LogitsProcessor

    class TopKRecorder(LogitsProcessor):
        """Records the top-k log-probs of the raw logits at every step.

        With ``pool`` (a one-thread executor), each step's top-k runs there while
        generate goes on with the next token. On CPU the logsumexp and top-k over
        the vocabulary are a visible share of a small model's step (bench/teacher.py's
        4-layer GPT-2, 30k vocabulary, batch 8, one torch thread on 2 cores: 0.74 ms
        of 18.5), and an idle core can take them: 402 -> 420 tokens/s, against
        plain generate's 432. Safe because the scores tensor is never written after this
        processor: generate makes a new one every step, and the only processors
        after ours (the sampling warpers) return new tensors.
        """

        def __init__(self, k: int, pool=None):
            self.k, self.pool = k, pool
            self.steps = []

        def __call__(self, input_ids, scores):
            self.steps.append(self.pool.submit(self._topk, scores) if self.pool else self._topk(scores))
            return scores

        def _topk(self, scores):
            import torch

            # top-k of the logits minus their logsumexp = top-k of log_softmax, without
            # materialising a second (batch, vocab) tensor at every step
            with torch.inference_mode():
                x = scores.float()
                lse = torch.logsumexp(x, dim=-1, keepdim=True)
                v, i = x.topk(min(self.k, x.shape[-1]), dim=-1)
                return i, v - lse

        def results(self) -> tuple[list, list]:
            """(ids, logprobs) per step, waiting for the pool's steps."""
            steps = [s.result() if self.pool else s for s in self.steps]
            return [i for i, _ in steps], [v for _, v in steps]

    return TopKRecorder


def _spare_core(torch, device) -> bool:
    """Whether a CPU run leaves a core idle for the top-k recorder's thread (torch uses fewer threads)."""
    if device.type != "cpu":
        return False  # device ops are asynchronous already
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.get_num_threads() < cores


def prepare_tokenizer(teacher):
    """Left padding and a pad token for batched decoder-only generation."""
    tok = teacher.tokenizer
    if teacher.kind == "causal-lm":
        tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.pad_token = tok.convert_ids_to_tokens(0)
    return tok


def generation_config(teacher, settings: DistillSettings):
    """A GenerationConfig built only from the settings (the version's own generation_config is not used)."""
    from transformers import GenerationConfig

    model, tok = teacher.model, teacher.tokenizer
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tok.eos_token_id
    sample = settings.temperature > 0
    kw = {"max_new_tokens": settings.max_new_tokens, "do_sample": sample, "num_beams": 1,
              "pad_token_id": tok.pad_token_id, "eos_token_id": eos}
    if sample:
        kw.update(temperature=settings.temperature, top_k=0, top_p=1.0)
    return GenerationConfig(**kw)


def causal_batch(teacher, prompts: list[str], settings: DistillSettings, gen_cfg, batch_index: int) -> dict:
    """Generate for one batch (seeded with ``settings.seed + batch_index``); returns the column lists."""
    import torch
    from transformers import LogitsProcessorList

    model, tok = teacher.model, teacher.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True)
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    if settings.temperature > 0:
        torch.manual_seed(settings.seed + batch_index)
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(1, "wv-topk")) if _spare_core(torch, device) else None
        rec = _recorder_class()(settings.top_k, pool)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                                 logits_processor=LogitsProcessorList([rec]))
        rec_ids, rec_vals = rec.results()
    gen = out[:, ids.shape[1]:].cpu().numpy()
    topi = torch.stack(rec_ids, 1).to(torch.int32).cpu().numpy() if rec_ids else None
    topv = torch.stack(rec_vals, 1).float().cpu().numpy() if rec_vals else None
    eos = gen_cfg.eos_token_id
    eos_set = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    cols = {k: [] for k in ("prompt", "prompt_ids", "completion_ids", "text", "finish_reason", "topk_ids",
                            "topk_logprobs")}
    mask_np = mask.cpu().numpy().astype(bool)
    ids_np = ids.cpu().numpy()
    lp_dtype = np.float16 if settings.logprob_dtype == "float16" else np.float32
    for b, prompt in enumerate(prompts):
        n, reason = _completion_length(gen[b], eos_set)
        comp = gen[b, :n].astype(np.int32)
        cols["prompt"].append(prompt)
        cols["prompt_ids"].append(ids_np[b][mask_np[b]].astype(np.int32))
        cols["completion_ids"].append(comp)
        cols["text"].append(tok.decode(comp.tolist(), skip_special_tokens=True))
        cols["finish_reason"].append(reason)
        cols["topk_ids"].append(topi[b, :n].reshape(-1) if n else np.zeros(0, np.int32))
        cols["topk_logprobs"].append(topv[b, :n].reshape(-1).astype(lp_dtype) if n else np.zeros(0, lp_dtype))
    cols["n_tokens"] = int(sum(len(c) for c in cols["completion_ids"]))
    return cols


def _completion_length(row: np.ndarray, eos_set: set) -> tuple[int, str]:
    for i, t in enumerate(row.tolist()):
        if t in eos_set:
            return i + 1, "eos"
    return len(row), "length"


def encoder_batch(teacher, texts: list[str], settings: DistillSettings) -> dict:
    """Pooled embeddings (and masked-LM top-k log-probs per token when asked) for one batch."""
    import torch

    from weightvault.teacher import encoder_max_length

    model, tok = teacher.model, teacher.tokenizer
    max_len = encoder_max_length(teacher, settings.max_length)
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_len)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=teacher.kind != "encoder")
    hidden = out.last_hidden_state if teacher.kind == "encoder" else out.hidden_states[-1]
    mask = enc["attention_mask"]
    emb = pool(torch, hidden.float(), mask, teacher.pooling or {"mode": "mean", "normalize": False})
    cols = {"text": list(texts), "embedding": list(emb.cpu().numpy().astype(np.float32))}
    mask_np = mask.cpu().numpy().astype(bool)
    cols["input_ids"] = [r[m].astype(np.int32) for r, m in zip(enc["input_ids"].cpu().numpy(), mask_np)]
    if settings.token_logits:
        lp = torch.log_softmax(out.logits.float(), dim=-1)
        v, i = lp.topk(min(settings.top_k, lp.shape[-1]), dim=-1)
        lp_dtype = np.float16 if settings.logprob_dtype == "float16" else np.float32
        vi, vv = i.to(torch.int32).cpu().numpy(), v.cpu().numpy()
        cols["topk_ids"] = [vi[b][mask_np[b]].reshape(-1) for b in range(len(texts))]
        cols["topk_logprobs"] = [vv[b][mask_np[b]].reshape(-1).astype(lp_dtype) for b in range(len(texts))]
    cols["n_tokens"] = int(mask_np.sum())
    return cols


def pool(torch, hidden, mask, pooling: dict):
    """Sentence-transformers pooling: mean over real tokens (default), CLS, or max; optional L2 normalise."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    mode = pooling.get("mode", "mean")
    if mode == "cls":
        emb = hidden[:, 0]
    elif mode == "max":
        emb = hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
    else:
        emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if pooling.get("normalize"):
        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    return emb
