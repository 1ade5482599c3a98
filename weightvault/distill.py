"""Distillation runs: regenerate a teacher's outputs on a prompt set, with the recipe recorded.

A run, in write order:

1. the prompt file is read and every line validated (a bad line stops here; nothing recorded);
2. the teacher is reloaded from the store (:func:`weightvault.teacher.load_teacher`);
3. settings are checked against the teacher (top-k within its vocabulary, every prompt
   tokenizes to at least one token and fits its positions with ``max_new_tokens``; a bad one
   stops here, naming the prompt's line; nothing recorded);
4. rows are generated batch by batch into a temp file next to ``OUT.parquet`` (one row group
   per batch; on Ctrl-C the finished row groups are kept and the run is recorded as
   incomplete). The file's footer key ``weightvault.distill.output`` says
   ``{"complete", "rows", "run_id"}``;
5. the prompt file and the output are archived as a version ``distill-runs@<run_id>``
   (chunks -> manifest -> ref, so verify, du and GC see them like any version);
6. a ``distill_run`` event records the recipe (teacher manifest, prompt set hash and count,
   settings, seed, device, dtype, library versions, output hash and rows); the catalog
   indexes it into ``distill_runs`` (schemas/catalog/0004_distill.sql) and rebuilds it from the
   event alone;
7. only then is the file renamed: to ``OUT.parquet`` when complete, to ``OUT.partial.parquet``
   when stopped (an existing ``OUT.parquet`` is never replaced by a partial file).

Steps 5-7 finish even on a first Ctrl-C (a message says so); a second one stops at once, and
the file is then kept as ``OUT.unrecorded.parquet`` with a message naming what exists.

A student names a run with ``weightvault snapshot PATH --model S --distilled-from RUN``;
:func:`lineage_edge` builds the manifest lineage entry for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, replace
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

log = logging.getLogger("weightvault")

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
    lines: tuple[int, ...] = ()
    source: str = ""

    def line_of(self, i: int) -> int:
        """The file line (1-based) of prompt ``i``."""
        return self.lines[i] if i < len(self.lines) else i + 1


@dataclass(frozen=True)
class DistillResult:
    """A finished (or interrupted) run.

    Attributes:
        run_id: the run's ID (16 hex).
        event_id: the recording event's ID.
        rows: rows written.
        tokens: tokens generated (causal) or encoded (encoders).
        seconds: generation wall time.
        output: the Parquet path: OUT when complete, ``OUT.partial.parquet`` when stopped.
        output_sha256: its sha256.
        complete: False when stopped by Ctrl-C.
        payload: the recorded event payload.
        total: rows the run was to write (prompts, or the rerun's limit).
        requested: the OUT path asked for.
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
    total: int | None = None
    requested: str | None = None


PARTIAL, UNRECORDED = "partial", "unrecorded"
OUTPUT_KEY = "weightvault.distill.output"  # Parquet footer key: {"complete", "rows", "run_id"}


def side_path(out, tag: str) -> Path:
    """``OUT.parquet`` -> ``OUT.<tag>.parquet`` (a stopped or unrecorded run's file)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.{tag}{out.suffix}") if out.suffix else out.with_name(f"{out.name}.{tag}")


class DistillInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: finished rows were kept and recorded; ``.result`` says what.

    Attributes:
        result: the recorded (possibly incomplete) run.
        during_recording: the Ctrl-C came while the output was being archived and recorded,
            which was finished first (``result.complete`` may then be True).
    """

    def __init__(self, result: DistillResult, *, during_recording: bool = False):
        super().__init__("interrupted")
        self.result = result
        self.during_recording = during_recording

    def describe(self, *, file_kept: bool = True) -> str:
        """One line: what was kept, where, and under which run."""
        r = self.result
        data = r.payload.get("data", {}).get("ref", "")
        if r.complete:
            return (f"finished recording run {r.run_id} first: complete, {r.rows} rows"
                    + (f" in {r.output}" if file_kept else "") + f", archived as {data}")
        total = f" of {r.total}" if r.total is not None else ""
        where = f" in {r.output}" if file_kept else ""
        untouched = ""
        if file_kept and r.requested:
            untouched = f"; {r.requested} was {'left as it was' if Path(r.requested).exists() else 'not written'}"
        return (f"kept {r.rows}{total} finished rows{where} (archived as {data}); recorded as incomplete run "
                f"{r.run_id}{untouched}")


class DistillRecordingInterrupted(KeyboardInterrupt):
    """A second Ctrl-C stopped the recording; ``.message`` says what exists and what to do."""

    def __init__(self, message: str, *, run_id: str, kept: str, archived: str | None):
        super().__init__(message)
        self.message, self.run_id, self.kept, self.archived = message, run_id, kept, archived


# -- prompts -------------------------------------------------------------------


def parse_prompts(raw: bytes, name: str) -> PromptSet:
    """Validate a JSONL prompt file: each non-blank line ``{"prompt": str}`` or ``{"text": str}``."""
    texts, numbers = [], []
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
        numbers.append(n)
    if not texts:
        raise PromptFileError(name, 1, "the file has no prompts")
    return PromptSet(tuple(texts), raw, ids.content_id(raw), Path(name).name, tuple(numbers), str(name))


def read_prompts(path) -> PromptSet:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(f"{p}: no such prompt file", hint="pass a JSONL file with --prompts") from None
    return parse_prompts(raw, str(p))


# -- running -------------------------------------------------------------------


def library_versions() -> dict:
    """What decides a run's numbers besides the teacher and the settings: torch and transformers,
    the tokenizer library (which decides the prompt ids), numpy, Python, and torch's thread count
    (CPU reductions are summed in a thread-dependent order)."""
    import platform
    from importlib import metadata

    import torch
    import transformers

    from weightvault import __version__

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "weightvault": __version__,
           "python": platform.python_version(), "torch_threads": str(torch.get_num_threads())}
    for dist in ("tokenizers", "numpy", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def run(vault, ref, prompts, out, settings: DistillSettings | None = None, *, device: str = "auto",
        dtype=None, progress=None, limit: int | None = None, teacher=None, rerun_of: str | None = None,
        keep_path: bool = True) -> DistillResult:
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
        keep_path: record where the file was written; False for a file the caller deletes (a
            rerun without --out): the event's ``output.path`` is then null, the data in the store.
    Returns:
        DistillResult. On Ctrl-C raises DistillInterrupted after recording the finished rows
        (kept in ``OUT.partial.parquet``; OUT is not touched); a second Ctrl-C while recording
        raises DistillRecordingInterrupted.
    Raises:
        UsageError: bad settings, device or dtype; ``top_k`` larger than the vocabulary.
        PromptFileError: a prompt that tokenizes to nothing or does not fit the model's positions.
    """
    from weightvault.teacher import check_device_dtype, load_teacher, require_torch

    require_torch("distillation")
    settings = settings or DistillSettings()
    _check_settings(settings)
    if teacher is None:
        check_device_dtype(device, dtype)
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
    settings = check_teacher_settings(teacher, settings, rerun_of)
    check_prompts(teacher, pset, texts, settings)
    run_id = secrets.token_hex(8)
    tmp, rows, tokens, seconds, complete, stopped = _generate_file(teacher, texts, settings, out, run_id, pset,
                                                                   progress)
    with _finish_before_interrupt(run_id) as ctrl_c:
        result = record(vault, teacher, pset, settings, out, run_id, rows, tokens, seconds, complete, rerun_of,
                        written=tmp, total=len(texts), keep_path=keep_path)
    if not complete or stopped or ctrl_c["hits"]:
        raise DistillInterrupted(result, during_recording=complete)
    return result


def _check_settings(s: DistillSettings) -> None:
    if s.max_new_tokens < 1 or s.top_k < 1 or s.batch_size < 1:
        raise UsageError("--max-new-tokens, --top-k and --batch-size must be >= 1",
                         hint=f"got --max-new-tokens {s.max_new_tokens}, --top-k {s.top_k}, --batch-size {s.batch_size}")
    if not isinstance(s.temperature, (int, float)) or not math.isfinite(s.temperature) or s.temperature < 0:
        raise UsageError(f"--temperature {s.temperature}: must be a finite number >= 0",
                         hint="0 decodes greedily; e.g. 0.8 samples")
    if s.max_length is not None and s.max_length < 1:
        raise UsageError(f"--max-length {s.max_length}: must be >= 1", hint="leave it out for the model's own limit")
    if s.logprob_dtype not in ("float16", "float32"):
        raise UsageError(f"--logprob-dtype {s.logprob_dtype!r}: use float16 or float32")


def check_teacher_settings(teacher, settings: DistillSettings, rerun_of: str | None = None) -> DistillSettings:
    """Check the settings against the loaded teacher; returns them with ``max_length`` resolved (encoders).

    Raises:
        UsageError: ``top_k`` larger than the vocabulary (causal LMs, masked-LM token logits);
            ``max_length`` for a causal LM or beyond the model's positions.
    """
    from weightvault.teacher import encoder_max_length, vocab_size

    if teacher.kind == "causal-lm" or settings.token_logits:
        n = vocab_size(teacher.model)
        if n is not None and settings.top_k > n:
            hint = (f"run {rerun_of} was recorded with a top-k its teacher cannot give; distil it again with "
                    f"--top-k {n} or less") if rerun_of else f"use --top-k {n} or less"
            raise UsageError(f"--top-k {settings.top_k} is larger than {teacher.ref}'s vocabulary ({n} tokens)",
                             hint=hint)
    if teacher.kind == "causal-lm":
        if settings.max_length is not None:
            raise UsageError("--max-length applies to encoders and masked LMs",
                             hint=f"{teacher.ref} is a causal LM: its prompts are never truncated; drop --max-length")
        return settings
    return replace(settings, max_length=encoder_max_length(teacher, settings.max_length))


def check_prompts(teacher, pset: PromptSet, texts, settings: DistillSettings) -> None:
    """Every prompt must tokenize to at least one token and, for causal LMs, leave room for
    ``max_new_tokens`` within the model's positions.

    Raises:
        PromptFileError: naming the file and line of the first bad prompt.
    """
    from weightvault.teacher import position_limit

    tok = teacher.tokenizer
    where = pset.source or pset.name
    if teacher.kind == "causal-lm":
        lengths = [len(x) for x in tok(list(texts), verbose=False)["input_ids"]]
    else:
        enc = tok(list(texts), truncation=True, max_length=settings.max_length, verbose=False)
        lengths = [len(x) for x in enc["input_ids"]]
    for i, n in enumerate(lengths):
        if n == 0:
            raise PromptFileError(where, pset.line_of(i), "tokenizes to no tokens", hint="remove or fill that line")
    limit = position_limit(teacher.model) if teacher.kind == "causal-lm" else None
    if limit is None:
        return
    need = settings.max_new_tokens
    for i, n in enumerate(lengths):
        if n + need > limit:
            room = limit - max(lengths)
            hint = (f"use --max-new-tokens {room} or less, or shorten that prompt" if room >= 1
                    else f"shorten that prompt below {limit} tokens (the longest has {max(lengths)})")
            raise PromptFileError(where, pset.line_of(i), f"{n} prompt tokens + --max-new-tokens {need} exceed "
                                  f"{teacher.ref}'s {limit} positions", hint=hint)


def _check_output(out) -> None:
    p = Path(out)
    if not p.parent.exists():
        raise InvalidInputError(f"{p.parent} does not exist", hint="create the output folder first")
    if p.is_dir():
        raise InvalidInputError(f"{p} is a folder", hint="pass a file name, e.g. out.parquet")


def _generate_file(teacher, texts, settings, out, run_id, pset, progress):
    """Write the Parquet file batch by batch into a temp file next to ``out``.

    Returns:
        (temp path, rows, tokens, seconds, complete, stopped): ``stopped`` when a Ctrl-C ended it
        (complete all the same if it came while the last batch was written). The caller renames
        the file once recorded.
    """
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    from weightvault import distill_gen as gen

    gen.prepare_tokenizer(teacher)
    gen_cfg = gen.generation_config(teacher, settings) if teacher.kind == "causal-lm" else None
    meta = {"run_id": run_id, "teacher": teacher.ref, "teacher_manifest": teacher.manifest_id,
            "prompt_set_hash": pset.hash, "settings": settings.to_dict(), "rows_expected": len(texts)}
    schema = gen.parquet_schema(teacher.kind, settings, meta)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.wv-{secrets.token_hex(4)}.tmp")
    if progress is not None and hasattr(progress, "start"):
        progress.start(len(texts))
    rows = tokens = 0
    complete, stopped = True, False
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
            table = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)
            with _interrupt_after():  # a batch in the file is a batch counted, and the reverse
                writer.write_table(table)
                rows += len(batch)
                tokens += cols["n_tokens"]
            if progress is not None:
                progress(len(batch), cols["n_tokens"])
    except KeyboardInterrupt:  # held until the batch was counted: after the last one, the file is whole
        complete, stopped = rows == len(texts), True
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    try:
        writer.add_key_value_metadata({OUTPUT_KEY: json.dumps({"complete": complete, "rows": rows, "run_id": run_id},
                                                              sort_keys=True)})
        writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, rows, tokens, time.perf_counter() - t0, complete, stopped


@contextlib.contextmanager
def _interrupt_after():
    """Hold a Ctrl-C until the block is done, then raise it: the block's steps happen together or
    not at all (in the main thread, under Python's own SIGINT handler; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    hit = []
    signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hit:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _finish_before_interrupt(run_id: str):
    """While recording: a first Ctrl-C is noted (and said) and the recording goes on; a second stops it.

    Yields a dict whose ``hits`` counts the Ctrl-Cs. Only in the main thread, and only where
    Python's own SIGINT handler is installed (elsewhere nothing changes).
    """
    state = {"hits": 0}
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield state
        return

    def handler(signum, frame):
        state["hits"] += 1
        if state["hits"] == 1:
            with contextlib.suppress(Exception):
                sys.stderr.write(f"\nCtrl-C: finishing the recording of run {run_id} first "
                                 "(press Ctrl-C again to stop now)\n")
        elif state["hits"] == 2:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a third one stops the cleanup too
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def record(vault, teacher, pset: PromptSet, settings, out, run_id, rows, tokens, seconds, complete,
           rerun_of: str | None = None, *, written=None, total: int | None = None,
           keep_path: bool = True) -> DistillResult:
    """Archive prompts + output as ``distill-runs@<run_id>``, write the ``distill_run`` event, then name the file.

    Args:
        out: the requested output path.
        written: the file as generated (default: ``out``); renamed once the event is written,
            to ``out`` when complete, else to ``OUT.partial.parquet``.
        total: rows the run was to write.
        keep_path: False records ``output.path`` as null (a file its caller deletes).
    Raises:
        DistillRecordingInterrupted: Ctrl-C stopped the recording before the event was written;
            the file is kept as ``OUT.unrecorded.parquet`` and the message names what exists.
    """
    from weightvault.archive.snapshot import SourceFile
    out = Path(out)
    src = Path(written) if written is not None else out
    final = out if complete else side_path(out, PARTIAL)
    data = eid = None
    try:
        sha, size = file_sha256(src), src.stat().st_size
        with tempfile.TemporaryDirectory(prefix="wv-distill-") as tmp:
            prompt_copy = Path(tmp) / "prompts.jsonl"
            prompt_copy.write_bytes(pset.raw)
            files = [SourceFile("output.parquet", src, size), SourceFile("prompts.jsonl", prompt_copy, len(pset.raw))]
            data = vault.snapshot(tmp, DATA_MODEL, version=run_id, parent="", files=files,
                                  message=f"distillation data of {teacher.ref} (run {run_id})",
                                  source_info={"kind": "distill", "run_id": run_id}, sync_catalog=False)
        payload = {
            "run_id": run_id,
            "teacher": {"ref": teacher.ref, "manifest_id": teacher.manifest_id, "kind": teacher.kind},
            "prompts": {"hash": pset.hash, "count": len(pset.texts), "name": pset.name,
                        "sha256": ids.sha256_hex(pset.raw)},
            "settings": settings.to_dict(), "device": teacher.device, "dtype": teacher.dtype,
            "versions": library_versions(),
            "output": {"sha256": sha, "rows": rows, "tokens": tokens, "bytes": size,
                       "path": str(final.absolute()) if keep_path else None, "complete": complete},
            "data": {"ref": f"{data.model}@{data.version}", "manifest_id": data.manifest_id},
            "seconds": round(seconds, 3),
        }
        if rerun_of:
            payload["rerun_of"] = rerun_of
        eid = vault.store.put_event(EVENT_TYPE, payload)
        if src != final:
            os.replace(src, final)
        vault.catalog.sync()
    except KeyboardInterrupt:
        if eid is None:
            eid = _recorded_event(vault, run_id)
        if eid is None:
            raise _abandoned(vault, src, out, run_id, complete, rows, data) from None
        if src.exists() and src != final:  # recorded: the file goes where the event says
            os.replace(src, final)
    except Exception:
        # Not an interrupt (a full disk, a store that cannot be written): no hidden temp file is
        # left behind, and the generated rows are not lost without a word.
        if eid is None:
            log.warning("%s", _abandoned(vault, src, out, run_id, complete, rows, data).message)
        elif src.exists() and src != final:
            with contextlib.suppress(OSError):
                os.replace(src, final)
        raise
    return DistillResult(run_id, eid, rows, tokens, seconds, str(final), sha, complete, payload, total, str(out))


def _recorded_event(vault, run_id: str) -> str | None:
    """The event of ``run_id`` if it was written after all (the Ctrl-C came after the write)."""
    with contextlib.suppress(Exception):
        vault.catalog.sync()
        _, rows = vault.query("SELECT event_id FROM distill_runs WHERE run_id = ?", [run_id])
        if rows:
            return rows[0][0]
    return None


def _archived(vault, run_id: str) -> str | None:
    """``distill-runs@<run_id>`` when the snapshot got as far as naming it, else None."""
    with contextlib.suppress(Exception):
        r = vault.resolve(f"{DATA_MODEL}@{run_id}")
        return f"{r.model}@{r.version}"
    return None


def _abandoned(vault, src: Path, out: Path, run_id: str, complete: bool, rows: int, data):
    """Keep the unrecorded file under a name that says so; the error says what exists and what to do."""
    kept = side_path(out, UNRECORDED)
    with contextlib.suppress(OSError):
        if src.exists():
            os.replace(src, kept)
    archived = f"{data.model}@{data.version}" if data is not None else _archived(vault, run_id)
    what = f"{'all' if complete else 'the'} {rows} {'finished ' if not complete else ''}rows"
    msg = (f"stopped while recording run {run_id}: no run was recorded; {what} are kept, unrecorded, in {kept}"
           f" ({out} was not written)")
    if archived:
        msg += (f"; its data was archived as {archived} without a run record (`weightvault rm {archived}` "
                "removes it)")
    msg += "; rerun the command to record a run"
    return DistillRecordingInterrupted(msg, run_id=run_id, kept=str(kept), archived=archived)


# -- looking runs up -------------------------------------------------------------


def get_run(vault, run_id: str) -> dict:
    """The recorded payload of a run (from the store's events, through the catalog)."""
    if not run_id or not all(c in "0123456789abcdef" for c in run_id):
        raise DistillRunNotFoundError(run_id)
    _, rows = vault.query("SELECT event_id FROM distill_runs WHERE run_id = ?", [run_id])
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
