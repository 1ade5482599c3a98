"""``weightvault diff A B``: what changed in the weights and, with --prompts, in the behaviour."""

from __future__ import annotations

from contextlib import contextmanager

from weightvault.cli import add_command, open_vault

TOP = 20


def register(sub, common):
    p = add_command(
        sub, "diff", help="compare two versions: tensors, layers, and (with --prompts) their outputs",
        example="weightvault diff minilm@1 minilm@2 --prompts prompts.jsonl --html diff.html", parents=[common],
        description="Compare two versions (possibly of different models). Unchanged tensors are recognised\n"
                    "from their chunk IDs without decompressing anything; changed ones get ||B-A||/||A||,\n"
                    "cosine, max |B-A| and the fraction of elements changed, and layers are ranked by change.\n"
                    "With --prompts both versions are reloaded and run on the same prompts.")
    p.add_argument("a", help="version A, NAME@V")
    p.add_argument("b", help="version B, NAME@V")
    p.add_argument("--prompts", metavar="FILE.jsonl", help='also compare behaviour on these prompts ({"prompt": ...} '
                                                           "per line)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report with plots")
    p.add_argument("--all", action="store_true", help="list every tensor, the same ones too")
    p.add_argument("--top", type=int, default=TOP, metavar="N", help=f"rows per table (default {TOP})")
    p.add_argument("--max-new-tokens", type=int, default=16, metavar="N",
                   help="greedy tokens generated per prompt for the side-by-side texts (default 16)")
    p.add_argument("--device", default="auto", help="device for --prompts: auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--dtype", default=None, help="parameter dtype for --prompts, e.g. float32 (default: "
                                                 "fp32 on CPU, bf16 on CUDA)")
    p.set_defaults(func=cmd_diff)


def run_diff(v, args) -> dict:
    """Compute the diff dict the command prints (weights, plus behaviour with --prompts)."""
    from weightvault._ui import progress_bar
    from weightvault.diff_weights import diff_weights

    prompts = None
    if args.prompts:
        from weightvault.diff_behaviour import load_prompts

        from weightvault.teacher import check_device_dtype, require_torch

        prompts = load_prompts(args.prompts)  # bad input fails before any work
        require_torch("behaviour diff")
        check_device_dtype(args.device, args.dtype)
    v.resolve(args.a), v.resolve(args.b)  # an unknown version fails before a progress bar appears
    with progress_bar(f"diff {args.a} {args.b}", enabled=not args.json) as bar:
        wd = diff_weights(v, args.a, args.b, progress=bar)
    d = wd.to_dict()
    if prompts is not None:
        from weightvault.diff_behaviour import diff_behaviour

        with _prompt_bar("prompts", len(prompts.prompts), enabled=not args.json) as bar:
            bd = diff_behaviour(v, wd.a, wd.b, prompts, identical=wd.identical, device=args.device,
                                dtype=args.dtype, max_new_tokens=args.max_new_tokens, progress=bar)
        d["behaviour"] = bd.to_dict()
    return d


@contextmanager
def _prompt_bar(description: str, total: int, *, enabled: bool = True):
    """A prompts-done bar on stderr (terminal only); yields callable(n)."""
    from weightvault._ui import err_console

    console = err_console()
    if not enabled or not console.is_terminal:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as p:
        task = p.add_task(description, total=total)
        yield lambda n: p.advance(task, n)


def cmd_diff(args):
    from weightvault._ui import err_console, print_json
    from weightvault.errors import UsageError

    if args.top < 1:
        raise UsageError("--top must be at least 1", hint="e.g. --top 20")
    if args.html:
        from pathlib import Path

        from weightvault.errors import InvalidInputError

        if not Path(args.html).resolve().parent.is_dir():
            raise InvalidInputError(f"{args.html}: its folder does not exist", hint="create it, or pick another path")
    v = open_vault(args, create=False)
    d = run_diff(v, args)
    if args.html:
        from pathlib import Path

        from weightvault.report import render_html

        _write_atomic(Path(args.html), render_html(d))
    if args.json:
        print_json(d)
    else:
        print_diff(d, top=args.top, show_all=args.all)
        if args.html:
            err_console().print(f"report written to {args.html}", markup=False)


def _write_atomic(path, text: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _n(x) -> str:
    from weightvault.report import _num

    return _num(x)


def _cos(x) -> str:
    return f"{x:.8f}" if isinstance(x, float) else "-"


def print_diff(d: dict, *, top: int = TOP, show_all: bool = False) -> None:
    """Print the diff as tables: summary, layers, tensors, files, behaviour."""
    from weightvault._ui import out_console, table
    from weightvault.report import layer_max_rel, rel_change

    c = out_console()
    s = d["summary"]
    c.print(f"[bold]{d['a']['ref']}[/] -> [bold]{d['b']['ref']}[/]: {s['tensors']} tensors: "
            + ", ".join(f"{s[k]} {k}" for k in ("same", "changed", "added", "removed", "reshaped", "dtype-changed")
                        if s[k] or k == "same")
            + f"  ({s['chunks_read']} chunks decoded, {s['seconds']:.2f}s)")
    layers = [x for x in d["layers"] if x["changed"] or x["structural"]] if not show_all else d["layers"]
    if layers:
        c.print(table(["layer", "tensors", "changed", "structural", "rel L2", "max rel L2", "max |B-A|"],
                      [(x["layer"], x["tensors"], x["changed"], x["structural"], _n(x["rel_l2"]),
                        _n(layer_max_rel(x)), _n(x["max_abs_diff"])) for x in layers[:top]],
                      title="layers, most changed first", fold=(0,)))
    rows = [t for t in d["tensors"] if show_all or t["status"] != "same"]
    rows.sort(key=lambda t: (t["status"] == "same", -(rel_change(t) if rel_change(t) is not None else float("inf"))))
    if rows:
        shown = rows if show_all else rows[:top]
        c.print(table(["tensor", "status", "rel L2", "cosine", "max |B-A|", "changed"],
                      [(t["name"], t["status"], _n(rel_change(t)), _cos(t["cosine"]), _n(t["max_abs_diff"]),
                        _n(t["frac_changed"]) + (f" ({t['n_nan_changed']} NaN)" if t.get("n_nan_changed") else ""))
                       for t in shown],
                      title=f"tensors ({len(shown)} of {len(rows)} shown)" if len(shown) < len(rows) else "tensors",
                      fold=(0,)))
    files = [f for f in d["files"] if f["status"] != "same"]
    if files:
        c.print(table(["file", "status"], [(f["path"], f["status"]) for f in files], title="files"))
    if "behaviour" in d:
        print_behaviour(d["behaviour"], top=top)


def print_behaviour(b: dict, *, top: int = TOP) -> None:
    from weightvault._ui import out_console, table

    c = out_console()
    c.print(f"[bold]behaviour[/] on {b['prompts']} prompts ({b['kind']}): "
            + ", ".join(f"{k} {_n(v)}" for k, v in b["summary"].items()))
    if b.get("stored_topk"):
        st = b["stored_topk"]
        c.print("  over stored distillation top-k: " + ", ".join(f"{k} {_n(v)}" for k, v in st.items()
                                                                   if not isinstance(v, str)))
    by = {r["index"]: r for r in b["per_prompt"]}
    worst = [by[i] for i in b["worst"]]
    if b["kind"] == "causal":
        c.print(table(["#", "prompt", "KL mean", "KL max", "top-1 agree", "ppl A", "ppl B"],
                      [(r["index"], r["prompt"][:60], _n(r["kl_mean"]), _n(r["kl_max"]), _n(r["top1_agreement"]),
                        _n(r["perplexity_a"]), _n(r["perplexity_b"])) for r in worst], title="worst prompts"))
        differ = [r for r in b["per_prompt"] if not r["same_text"]]
        if differ:
            c.print(table(["#", "A", "B"], [(r["index"], r["text_a"], r["text_b"]) for r in differ[:top]],
                          title=f"generations that differ ({len(differ)} of {b['prompts']})"))
    else:
        c.print(table(["#", "input", "cosine"], [(r["index"], r["prompt"][:60], _n(r["cosine"])) for r in worst],
                      title="worst inputs"))
