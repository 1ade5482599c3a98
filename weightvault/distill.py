"""Distillation runs: regenerate a teacher's outputs on a prompt set, with the recipe recorded.

A run, in write order:

1. the prompt file is read and every line validated (a bad line stops here; nothing recorded);
2. the teacher is reloaded from the store (:func:`weightvault.teacher.load_teacher`);
3. rows are generated batch by batch into ``OUT.parquet`` (one row group per batch; on Ctrl-C
   the finished row groups are kept and the run is recorded as incomplete);
4. the prompt file and the output are archived as a version ``distill-runs@<run_id>``
   (chunks -> manifest -> ref, so verify, du and GC see them like any version);
5. a ``distill_run`` event records the recipe (teacher manifest, prompt set hash and count,
   settings, seed, device, dtype, library versions, output hash and rows); the catalog
   indexes it into ``distill_runs`` (schemas/catalog/0004_distill.sql) and rebuilds it from the
   event alone.

A student names a run with ``weightvault snapshot PATH --model S --distilled-from RUN``;
:func:`lineage_edge` builds the manifest lineage entry for it.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from weightvault.archive import ids
from weightvault.archive.ids import file_sha256
from weightvault.catalog.distill_runs import EVENT_TYPE  # the event the catalog indexes
from weightvault.distill_gen import DistillSettings
from weightvault.errors import (
    DistillRunNotFoundError,
    InvalidInputError,
    PromptFileError,
    UsageError,
)

DATA_MODEL = "distill-runs"  # one model; each run is a version named by its run_id


@dataclass(frozen=True)
class PromptSet:
    """A validated prompt file.

    Attributes:
        texts: one prompt per non-blank line, in file order.
        raw: the file's bytes (archived as they are).
        hash: BLAKE3 of those bytes (the prompt set's identity).
        name: the file's name.
    """

    texts: tuple[str, ...]
    raw: bytes
    hash: str
    name: str


@dataclass(frozen=True)
class DistillResult:
    """A finished (or interrupted) run.

    Attributes:
        run_id: the run's ID (16 hex).
        event_id: the recording event's ID.
        rows: rows written.
        tokens: tokens generated (causal) or encoded (encoders).
        seconds: generation wall time.
        output: the Parquet path.
        output_sha256: its sha256.
        complete: False when stopped by Ctrl-C.
        payload: the recorded event payload.
    """

    run_id: str
    event_id: str
    rows: int
    tokens: int
    seconds: float
    output: str
    output_sha256: str
    complete: bool
    payload: dict


class DistillInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: finished rows were kept and recorded; ``.result`` says what."""

    def __init__(self, result: DistillResult):
        super().__init__("interrupted")
        self.result = result


# -- prompts -------------------------------------------------------------------


def parse_prompts(raw: bytes, name: str) -> PromptSet:
    """Validate a JSONL prompt file: each non-blank line ``{"prompt": str}`` or ``{"text": str}``."""
    texts = []
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PromptFileError(name, raw[: e.start].count(b"\n") + 1, "not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise PromptFileError(name, n, f"not JSON ({e.msg})") from None
        text = obj.get("prompt", obj.get("text")) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise PromptFileError(name, n, 'needs a string field "prompt" or "text"')
        texts.append(text)
    if not texts:
        raise PromptFileError(name, 1, "the file has no prompts")
    return PromptSet(tuple(texts), raw, ids.content_id(raw), Path(name).name)


def read_prompts(path) -> PromptSet:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(f"{p}: no such prompt file", hint="pass a JSONL file with --prompts") from None
    return parse_prompts(raw, str(p))


# -- running -------------------------------------------------------------------


def library_versions() -> dict:
    import torch
    import transformers

    from weightvault import __version__

    return {"torch": torch.__version__, "transformers": transformers.__version__, "weightvault": __version__}


def run(vault, ref, prompts, out, settings: DistillSettings | None = None, *, device: str = "auto",
        dtype=None, progress=None, limit: int | None = None, teacher=None, rerun_of: str | None = None) -> DistillResult:
    """Distil ``ref`` on a prompt file into ``out`` (Parquet) and record the run.

    Args:
        vault: the Vault.
        ref: teacher ``NAME@V`` or a ResolvedVersion.
        prompts: path of a JSONL file, or a PromptSet.
        out: output Parquet path (replaced atomically).
        settings: generation settings (default: DistillSettings()).
        device, dtype: as for load_teacher.
        progress: callable(rows, tokens) called after each batch; may have ``start(total_rows)``.
        limit: only the first ``limit`` prompts (reruns of interrupted runs).
        teacher: an already loaded Teacher (skips loading).
        rerun_of: the run this one regenerates (recorded in the event).
    Returns:
        DistillResult. On Ctrl-C raises DistillInterrupted after recording the finished rows.
    """
    from weightvault.teacher import load_teacher, require_torch

    require_torch("distillation")
    settings = settings or DistillSettings()
    _check_settings(settings)
    pset = prompts if isinstance(prompts, PromptSet) else read_prompts(prompts)
    texts = list(pset.texts[:limit] if limit is not None else pset.texts)
    _check_output(out)
    teacher = teacher or load_teacher(ref, device=device, dtype=dtype, vault=vault)
    if teacher.tokenizer is None:
        raise InvalidInputError(f"{teacher.ref} has no tokenizer files", hint="archive the folder with its tokenizer")
    if teacher.kind not in ("causal-lm", "masked-lm", "encoder"):
        raise InvalidInputError(f"{teacher.ref}: cannot distil a {teacher.kind} model",
                                hint="causal LMs, masked LMs and encoders are supported")
    if settings.token_logits and teacher.kind != "masked-lm":
        raise UsageError("--token-logits needs a masked-LM teacher", hint=f"{teacher.ref} is a {teacher.kind}")
    run_id = secrets.token_hex(8)
    rows, tokens, seconds, complete = _generate_file(teacher, texts, settings, out, run_id, pset, progress)
    result = record(vault, teacher, pset, settings, out, run_id, rows, tokens, seconds, complete, rerun_of)
    if not complete:
        raise DistillInterrupted(result)
    return result


def _check_settings(s: DistillSettings) -> None:
    if s.max_new_tokens < 1 or s.top_k < 1 or s.batch_size < 1 or s.temperature < 0:
        raise UsageError("--max-new-tokens, --top-k and --batch-size must be >= 1 and --temperature >= 0")
    if s.logprob_dtype not in ("float16", "float32"):
        raise UsageError(f"--logprob-dtype {s.logprob_dtype!r}: use float16 or float32")


def _check_output(out) -> None:
    p = Path(out)
    if not p.parent.exists():
        raise InvalidInputError(f"{p.parent} does not exist", hint="create the output folder first")
    if p.is_dir():
        raise InvalidInputError(f"{p} is a folder", hint="pass a file name, e.g. out.parquet")


def _generate_file(teacher, texts, settings, out, run_id, pset, progress):
    """Write the Parquet file batch by batch; returns (rows, tokens, seconds, complete)."""
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    from weightvault import distill_gen as gen

    gen.prepare_tokenizer(teacher)
    gen_cfg = gen.generation_config(teacher, settings) if teacher.kind == "causal-lm" else None
    meta = {"run_id": run_id, "teacher": teacher.ref, "teacher_manifest": teacher.manifest_id,
            "prompt_set_hash": pset.hash, "settings": settings.to_dict()}
    schema = gen.parquet_schema(teacher.kind, settings, meta)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.wv-{secrets.token_hex(4)}.tmp")
    if progress is not None and hasattr(progress, "start"):
        progress.start(len(texts))
    rows = tokens = 0
    complete = True
    t0 = time.perf_counter()
    writer = pq.ParquetWriter(str(tmp), schema, compression="zstd")
    try:
        for bi, start in enumerate(range(0, len(texts), settings.batch_size)):
            batch = texts[start: start + settings.batch_size]
            if teacher.kind == "causal-lm":
                cols = gen.causal_batch(teacher, batch, settings, gen_cfg, bi)
            else:
                cols = gen.encoder_batch(teacher, batch, settings)
            cols["row"] = list(range(start, start + len(batch)))
            writer.write_table(pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema},
                                        schema=schema))
            rows += len(batch)
            tokens += cols["n_tokens"]
            if progress is not None:
                progress(len(batch), cols["n_tokens"])
    except KeyboardInterrupt:
        complete = False
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, out)
    return rows, tokens, time.perf_counter() - t0, complete


def record(vault, teacher, pset: PromptSet, settings, out, run_id, rows, tokens, seconds, complete,
           rerun_of: str | None = None) -> DistillResult:
    """Archive prompts + output as ``distill-runs@<run_id>``, then write the ``distill_run`` event."""
    from weightvault.archive.snapshot import SourceFile

    out = Path(out)
    sha = file_sha256(out)
    with tempfile.TemporaryDirectory(prefix="wv-distill-") as tmp:
        prompt_copy = Path(tmp) / "prompts.jsonl"
        prompt_copy.write_bytes(pset.raw)
        files = [SourceFile("output.parquet", out, out.stat().st_size),
                 SourceFile("prompts.jsonl", prompt_copy, len(pset.raw))]
        data = vault.snapshot(tmp, DATA_MODEL, version=run_id, parent="", files=files,
                              message=f"distillation data of {teacher.ref} (run {run_id})",
                              source_info={"kind": "distill", "run_id": run_id})
    payload = {
        "run_id": run_id, "teacher": {"ref": teacher.ref, "manifest_id": teacher.manifest_id, "kind": teacher.kind},
        "prompts": {"hash": pset.hash, "count": len(pset.texts), "name": pset.name, "sha256": ids.sha256_hex(pset.raw)},
        "settings": settings.to_dict(), "device": teacher.device, "dtype": teacher.dtype,
        "versions": library_versions(),
        "output": {"sha256": sha, "rows": rows, "tokens": tokens, "bytes": out.stat().st_size,
                   "path": str(out.absolute()), "complete": complete},
        "data": {"ref": f"{data.model}@{data.version}", "manifest_id": data.manifest_id},
        "seconds": round(seconds, 3),
    }
    if rerun_of:
        payload["rerun_of"] = rerun_of
    eid = vault.store.put_event(EVENT_TYPE, payload)
    vault.catalog.sync()
    return DistillResult(run_id, eid, rows, tokens, seconds, str(out), sha, complete, payload)


# -- looking runs up -------------------------------------------------------------


def get_run(vault, run_id: str) -> dict:
    """The recorded payload of a run (from the store's events, through the catalog)."""
    if not run_id or not all(c in "0123456789abcdef" for c in run_id):
        raise DistillRunNotFoundError(run_id)
    _, rows = vault.sql("SELECT event_id FROM distill_runs WHERE run_id = ?", [run_id])
    if not rows:
        raise DistillRunNotFoundError(run_id)
    return vault.store.get_event(rows[0][0])["payload"]


def lineage_edge(vault, run_id: str) -> dict:
    """The manifest lineage entry a student distilled from ``run_id`` carries.

    Returns:
        ``{"relation": "distilled", "base": <teacher manifest id>, "run_id": ..., "prompt_set_hash": ...,
        "settings": {...}}``.
    """
    p = get_run(vault, run_id)
    settings = dict(p["settings"], device=p["device"], dtype=p["dtype"])
    return {"relation": "distilled", "base": p["teacher"]["manifest_id"], "run_id": run_id,
            "prompt_set_hash": p["prompts"]["hash"], "settings": settings}
