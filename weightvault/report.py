"""The diff report as one self-contained HTML page.

Everything the page needs is inside it: inline CSS, inline SVG plots made by
:mod:`weightvault.plots`, no scripts and no external links, so it opens
offline and can be mailed or archived as is. It renders the same dict that
``weightvault diff --json`` prints (see docs/design.md, "Diff").

>>> # Path("diff.html").write_text(render_html(weight_diff.to_dict()))
"""

from __future__ import annotations

import math
from html import escape

from weightvault import plots

CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.same{color:#888}.changed{color:#b35c00}.added{color:#2a7d2a}.removed{color:#b00}
.reshaped,.dtype-changed{color:#7a3db8}.plot{display:block;margin:10px 0}
.cards span{display:inline-block;margin:0 14px 8px 0;padding:6px 10px;background:#f4f6fa;border-radius:4px}
pre{white-space:pre-wrap;margin:0;font-size:12px}
"""

MAX_ROWS = 500  # a page stays readable; --json has every tensor


def _num(x, digits: int = 4) -> str:
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def _table(columns, rows, numeric=()) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c, v in zip(columns, r, strict=True):
            if c == "status":
                cells.append(f'<td class="{escape(str(v))}">{escape(str(v))}</td>')
            elif c == "cosine" and isinstance(v, float):
                cells.append(f'<td class="num">{v:.8f}</td>')  # near 1: the digits that matter are late
            elif c in numeric:
                cells.append(f'<td class="num">{_num(v)}</td>')
            else:
                cells.append(f"<td>{escape('' if v is None else str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def rel_change(t: dict):
    """A tensor's ||B-A||/||A|| for display: inf when A is all zeros and B is not (JSON holds None)."""
    if t.get("rel_l2") is None and (t.get("l2_diff") or 0) > 0:
        return math.inf
    return t.get("rel_l2")


def layer_max_rel(x: dict):
    return math.inf if x.get("max_rel_l2") is None and x.get("changed") else x.get("max_rel_l2")


def _shape(s) -> str:
    if s is None:
        return "-"
    return "x".join(map(str, s)) if len(s) else "scalar"


def _weights_section(d: dict) -> list[str]:
    s = d["summary"]
    out = ['<h2>Weights</h2><div class="cards">'
           + "".join(f"<span>{escape(k)}: <b>{s[k]}</b></span>"
                     for k in ("tensors", "same", "changed", "added", "removed", "reshaped", "dtype-changed"))
           + f"<span>chunks decoded: <b>{s['chunks_read']}</b></span></div>"]
    layers = sorted(d["layers"], key=lambda x: (x["index"] is None, x["index"] or 0, x["layer"]))
    if layers:
        top = d["layers"][0]["layer"] if d["layers"] and (d["layers"][0]["rel_l2"] or 0) > 0 else None
        out.append(plots.hbar_chart([x["layer"] for x in layers], [x["rel_l2"] or 0 for x in layers],
                                    title="relative L2 change per layer ||B-A||/||A|| (changed tensors)",
                                    highlight=next((i for i, x in enumerate(layers) if x["layer"] == top), None),
                                    css_class="plot plot-layers"))
    changed = [t["rel_l2"] for t in d["tensors"] if t["status"] in ("changed", "dtype-changed")]
    out.append(plots.histogram(changed, title=f"per-tensor relative change, {len(changed)} changed tensors",
                               x_label="||B-A|| / ||A|| (log scale)", css_class="plot plot-hist"))
    out.append("<h3>Layers, most changed first</h3>")
    out.append(_table(["layer", "tensors", "changed", "structural", "rel_l2", "max_rel_l2", "max_abs_diff"],
                      [(x["layer"], x["tensors"], x["changed"], x["structural"], x["rel_l2"], layer_max_rel(x),
                        x["max_abs_diff"]) for x in d["layers"]],
                      numeric={"tensors", "changed", "structural", "rel_l2", "max_rel_l2", "max_abs_diff"}))
    diffs = [t for t in d["tensors"] if t["status"] != "same"]
    diffs.sort(key=lambda t: -(rel_change(t) if rel_change(t) is not None else math.inf))
    out.append(f"<h3>Tensors that differ ({len(diffs)}; {s['same']} same not listed)</h3>")
    out.append(_table(
        ["name", "status", "dtype", "shape", "rel_l2", "cosine", "max_abs_diff", "frac_changed"],
        [(t["name"], t["status"], _pair(t["dtype_a"], t["dtype_b"]),
          _pair(_shape(t["shape_a"]), _shape(t["shape_b"])), rel_change(t), t["cosine"], t["max_abs_diff"],
          t["frac_changed"]) for t in diffs[:MAX_ROWS]],
        numeric={"rel_l2", "cosine", "max_abs_diff", "frac_changed"}))
    files = [f for f in d.get("files", []) if f["status"] != "same"]
    if files:
        out.append("<h3>Files that differ</h3>")
        out.append(_table(["path", "status", "size_a", "size_b"],
                          [(f["path"], f["status"], f["size_a"], f["size_b"]) for f in files],
                          numeric={"size_a", "size_b"}))
    return out


def _pair(a, b) -> str:
    if a == b or b is None:
        return str(a)
    if a is None:
        return str(b)
    return f"{a} -> {b}"


def _behaviour_section(b: dict) -> list[str]:
    s = b["summary"]
    out = [f"<h2>Behaviour on {b['prompts']} prompts ({escape(b['kind'])})</h2>",
           '<div class="cards">' + "".join(f"<span>{escape(k)}: <b>{_num(v)}</b></span>" for k, v in s.items())
           + "</div>"]
    if b.get("note"):
        out.append(f"<p>{escape(b['note'])}</p>")
    rows = b["per_prompt"]
    if b["kind"] == "causal":
        out.append(plots.hbar_chart([f"#{r['index']}" for r in rows], [r["kl_mean"] for r in rows],
                                    title="mean KL(A||B) per prompt (nats)", css_class="plot plot-kl"))
        out.append("<h3>Worst prompts</h3>")
        out.append(_table(["#", "prompt", "kl_mean", "kl_max", "top1_agreement", "perplexity_a", "perplexity_b"],
                          [(r["index"], r["prompt"], r["kl_mean"], r["kl_max"], r["top1_agreement"],
                            r["perplexity_a"], r["perplexity_b"]) for r in _rows(rows, b["worst"])],
                          numeric={"kl_mean", "kl_max", "top1_agreement", "perplexity_a", "perplexity_b"}))
        differ = [r for r in rows if r.get("text_a") is not None and r["text_a"] != r["text_b"]]
        out.append(f"<h3>Generations that differ ({len(differ)} of {len(rows)}, greedy)</h3>")
        out.append("<table><tr><th>#</th><th>prompt</th><th>A</th><th>B</th></tr>" + "".join(
            f"<tr><td>{r['index']}</td><td><pre>{escape(r['prompt'])}</pre></td>"
            f"<td><pre>{escape(r['text_a'])}</pre></td><td><pre>{escape(r['text_b'])}</pre></td></tr>"
            for r in differ[:MAX_ROWS]) + "</table>")
    else:
        out.append(plots.hbar_chart([f"#{r['index']}" for r in rows], [1 - r["cosine"] for r in rows],
                                    title="1 - cosine of the embeddings per input", css_class="plot plot-cos"))
        out.append("<h3>Worst inputs</h3>")
        out.append(_table(["#", "input", "cosine"], [(r["index"], r["prompt"], r["cosine"])
                                                     for r in _rows(rows, b["worst"])], numeric={"cosine"}))
    return out


def _rows(rows, indices):
    by = {r["index"]: r for r in rows}
    return [by[i] for i in indices if i in by]


def render_html(d: dict) -> str:
    """The whole page for a diff dict (``WeightDiff.to_dict()`` plus optional ``behaviour``).

    Args:
        d: the diff as ``weightvault diff --json`` prints it.
    Returns:
        HTML text.
    """
    a, b = d["a"], d["b"]
    title = f"weightvault diff {a['ref']} {b['ref']}"
    body = [f"<h1>{escape(title)}</h1>",
            f"<p>A = <b>{escape(a['ref'])}</b> (manifest {escape(a['manifest_id'][:16])}), "
            f"B = <b>{escape(b['ref'])}</b> (manifest {escape(b['manifest_id'][:16])})</p>"]
    body += _weights_section(d)
    if d.get("behaviour"):
        body += _behaviour_section(d["behaviour"])
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
