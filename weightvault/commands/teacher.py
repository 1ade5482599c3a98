"""Teacher commands: distill (and distill --rerun)."""

from __future__ import annotations

from contextlib import contextmanager

from weightvault.cli import add_command, open_vault


def register(sub, common):
    p = add_command(
        sub, "distill",
        help="run an archived teacher on a prompt file into Parquet, recording the recipe; or --rerun and report drift",
        example="weightvault distill gpt2@1 --prompts prompts.jsonl --out gpt2.parquet --top-k 20\n"
                "  weightvault distill --rerun 3f2a9c0d1e4b5a69",
        parents=[common])
    p.add_argument("ref", nargs="?", help="teacher NAME@V")
    p.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} or {"text": ...} per line')
    p.add_argument("--out", metavar="OUT.parquet", help="output Parquet file (with --rerun: keep the new output)")
    p.add_argument("--rerun", metavar="RUN", help="regenerate a recorded run and report drift against it")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens per completion (default 64)")
    p.add_argument("--top-k", type=int, default=20, metavar="K", help="top-k log-probs stored per token (default 20)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="0 = greedy (default); a finite T > 0 samples")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="prompts per batch (default 8)")
    p.add_argument("--device", default=None, metavar="D", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--logprob-dtype", default="float16", choices=["float16", "float32"],
                   help="storage dtype of log-probs (default float16)")
    p.add_argument("--token-logits", action="store_true", help="masked LMs: store top-k log-probs for every token")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="encoders and masked LMs: truncate inputs to N tokens (default: the folder's "
                        "sentence-transformers max_seq_length, else the tokenizer's limit)")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args):
    from weightvault.errors import UsageError

    if args.rerun:
        if args.ref or args.prompts:
            raise UsageError("--rerun takes the recipe from the run", hint="drop NAME@V and --prompts")
        return _rerun(args)
    if not args.ref or not args.prompts or not args.out:
        raise UsageError("distill needs NAME@V, --prompts and --out",
                         hint="weightvault distill gpt2@1 --prompts prompts.jsonl --out out.parquet")
    from weightvault import distill
    from weightvault._ui import err_console, escape, print_json
    from weightvault.distill_gen import DistillSettings

    settings = DistillSettings(max_new_tokens=args.max_new_tokens, top_k=args.top_k, temperature=args.temperature,
                               seed=args.seed, batch_size=args.batch_size, token_logits=args.token_logits,
                               logprob_dtype=args.logprob_dtype, max_length=args.max_length)
    v = open_vault(args)
    try:
        with token_bar(f"distill {args.ref}", enabled=not args.json) as bar:
            res = distill.run(v, args.ref, args.prompts, args.out, settings, device=args.device or "auto",
                              dtype=args.dtype, progress=bar)
    except distill.DistillInterrupted as e:
        err_console().print(f"[yellow]interrupted[/]: {escape(e.describe())}")
        if args.json:  # a run was recorded (complete or not): a script needs its id
            print_json(_summary(e.result))
        return 130
    except distill.DistillRecordingInterrupted as e:
        err_console().print(f"[yellow]interrupted[/]: {escape(e.message)}")
        return 130
    if args.json:
        print_json(_summary(res))
    else:
        err_console().print(f"run [bold]{res.run_id}[/]: {res.rows} rows, {res.tokens} tokens in {res.seconds:.1f}s "
                            f"({res.tokens / max(res.seconds, 1e-9):.0f} tok/s) -> {escape(str(res.output))}")
        err_console().print(f"  teacher {res.payload['teacher']['ref']} on {res.payload['device']} "
                            f"({res.payload['dtype']}); prompts and output archived as {res.payload['data']['ref']}",
                            markup=False)


def _summary(res) -> dict:
    return {"run_id": res.run_id, "event_id": res.event_id, "rows": res.rows, "tokens": res.tokens,
            "seconds": round(res.seconds, 3), "output": res.output, "output_sha256": res.output_sha256,
            "complete": res.complete, "teacher": res.payload["teacher"], "device": res.payload["device"],
            "dtype": res.payload["dtype"], "data": res.payload["data"]}


def _rerun(args):
    from weightvault import distill, distill_drift
    from weightvault._ui import err_console, escape, out_console, print_json, table

    if args.device or args.dtype:
        from weightvault.teacher import check_device_dtype

        check_device_dtype(args.device, args.dtype)
    v = open_vault(args)
    try:
        with token_bar(f"rerun {args.rerun}", enabled=not args.json) as bar:
            d = distill_drift.rerun(v, args.rerun, out=args.out, device=args.device, dtype=args.dtype, progress=bar)
    except distill.DistillInterrupted as e:
        what = "stopped" if not e.result.complete else "finished"
        err_console().print(f"[yellow]interrupted[/]: rerun of {args.rerun} {what}, no drift measured; "
                            f"{escape(e.describe(file_kept=bool(args.out)))} (rerun_of {args.rerun})")
        return 130
    except distill.DistillRecordingInterrupted as e:
        msg = e.message
        if not args.out:  # the new output lived in a temp folder, gone now
            msg = f"stopped while recording run {e.run_id}: no run was recorded"
            if e.archived:
                msg += (f"; its data was archived as {e.archived} without a run record "
                        f"(`weightvault rm {e.archived}` removes it)")
            msg += f"; rerun `weightvault distill --rerun {args.rerun}`"
        err_console().print(f"[yellow]interrupted[/]: rerun of {args.rerun}: {escape(msg)}")
        return 130
    if args.json:
        print_json({"run_id": d.run_id, "rerun_id": d.rerun.run_id, "rows": d.rows, "identical": d.identical,
                    "metrics": d.metrics, "worst": list(d.worst), "device": d.rerun.payload["device"],
                    "dtype": d.rerun.payload["dtype"]})
        return 0
    c = out_console()
    verdict = "[green]reproduced identically[/]" if d.identical else "[yellow]drifted[/]"
    c.print(f"rerun of {d.run_id} as {d.rerun.run_id} on {d.rerun.payload['device']} ({d.rerun.payload['dtype']}): "
            f"{d.rows} rows, {verdict}")
    c.print(table(["metric", "value"], [(k, f"{val:.6g}" if isinstance(val, float) else val)
                                        for k, val in d.metrics.items()]))
    for w in d.worst:
        c.print(f"  row {w['row']}: " + ", ".join(f"{k}={str(val)[:60]!r}" for k, val in w.items()
                                                     if k not in ("row", "score")), markup=False)
    return 0


@contextmanager
def token_bar(description: str, *, enabled: bool = True):
    """A prompts progress bar on stderr that also shows tokens/s (terminal only)."""
    from weightvault._ui import err_console

    console = err_console()
    if not enabled or not console.is_terminal:
        yield None
        return
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[tokens]} tok, {task.fields[rate]:.0f} tok/s"), TimeRemainingColumn(),
                  console=console, transient=True) as p:
        task = p.add_task(description, total=None, tokens=0, rate=0.0)
        t0 = time.perf_counter()
        state = {"tokens": 0}

        class _Bar:
            def start(self, total):
                p.update(task, total=total)

            def __call__(self, rows, tokens):
                state["tokens"] += tokens
                p.update(task, advance=rows, tokens=state["tokens"],
                         rate=state["tokens"] / max(time.perf_counter() - t0, 1e-9))

        yield _Bar()
