"""Inline SVG plots for the HTML reports: no JavaScript, no network, no plotting library.

Each function returns one ``<svg>`` element as a string, sized in pixels,
with every label escaped. They draw what a diff report needs and nothing
more: horizontal bars (one per named item) and a histogram.

>>> svg = hbar_chart(["layer.0", "layer.1"], [0.1, 0.3], title="relative change")
>>> svg.startswith("<svg") and svg.count("<rect") >= 2
True
"""

from __future__ import annotations

import math
from html import escape

BAR = "#4e79a7"
ACCENT = "#e15759"
FONT = 'font-family="sans-serif" font-size="12"'


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.4g}"


def hbar_chart(labels, values, *, title: str, width: int = 760, highlight: int | None = None,
               css_class: str = "plot") -> str:
    """One horizontal bar per label, longest = largest value.

    Args:
        labels: bar names (shown left of the bars).
        values: non-negative numbers (None or non-finite drawn as 0).
        title: the plot's title.
        width: total width in pixels.
        highlight: index of a bar drawn in the accent colour.
        css_class: class attribute of the svg element.
    Returns:
        the ``<svg>`` markup.
    """
    vals = [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else 0.0 for v in values]
    row, top, label_w = 20, 30, min(300, 12 + 7 * max((len(str(x)) for x in labels), default=4))
    plot_w = width - label_w - 90
    height = top + row * len(vals) + 10
    vmax = max(vals, default=0.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="{escape(css_class)}" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="4" y="16" {FONT} font-weight="bold">{escape(title)}</text>']
    for i, (lab, v) in enumerate(zip(labels, vals, strict=True)):
        y = top + i * row
        w = max(1.0, plot_w * v / vmax) if v > 0 else 0.0
        color = ACCENT if i == highlight else BAR
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" {FONT} text-anchor="end">{escape(str(lab))}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{color}">'
                     f'<title>{escape(str(lab))}: {_fmt(v)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" {FONT}>{_fmt(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(values, *, title: str, bins: int = 20, log10: bool = True, x_label: str = "",
              width: int = 760, height: int = 260, css_class: str = "plot") -> str:
    """Histogram of positive values, on a log10 axis by default.

    Args:
        values: numbers; non-positive or non-finite ones are left out (and counted in the title).
        title: the plot's title.
        bins: number of bins.
        log10: bin log10(value) instead of value.
        x_label: axis caption.
    Returns:
        the ``<svg>`` markup.
    """
    values = list(values)
    xs = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    left_out = len(values) - len(xs)
    xs = [math.log10(v) for v in xs] if log10 else xs
    lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    counts = [0] * bins
    for x in xs:
        counts[min(bins - 1, int((x - lo) / (hi - lo) * bins))] += 1
    pad_l, pad_b, top = 40, 40, 30
    pw, ph = width - pad_l - 40, height - top - pad_b
    cmax = max(counts) or 1
    note = f" ({left_out} zero or undefined left out)" if left_out else ""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="{escape(css_class)}" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="4" y="16" {FONT} font-weight="bold">{escape(title + note)}</text>',
             f'<line x1="{pad_l}" y1="{top + ph}" x2="{pad_l + pw}" y2="{top + ph}" stroke="#333"/>']
    bw = pw / bins
    for i, c in enumerate(counts):
        h = ph * c / cmax
        x0, x1 = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        rng = f"{_fmt(10 ** x0)}..{_fmt(10 ** x1)}" if log10 else f"{_fmt(x0)}..{_fmt(x1)}"
        parts.append(f'<rect x="{pad_l + i * bw + 1:.1f}" y="{top + ph - h:.1f}" width="{bw - 2:.1f}" '
                     f'height="{h:.1f}" fill="{BAR}"><title>{rng}: {c}</title></rect>')
        if c:
            parts.append(f'<text x="{pad_l + (i + 0.5) * bw:.1f}" y="{top + ph - h - 3:.1f}" {FONT} '
                         f'text-anchor="middle">{c}</text>')
    for frac in (0.0, 0.5, 1.0):
        x = lo + (hi - lo) * frac
        lab = _fmt(10 ** x) if log10 else _fmt(x)
        parts.append(f'<text x="{pad_l + pw * frac:.1f}" y="{top + ph + 16}" {FONT} '
                     f'text-anchor="middle">{lab}</text>')
    if x_label:
        parts.append(f'<text x="{pad_l + pw / 2:.1f}" y="{height - 6}" {FONT} text-anchor="middle">'
                     f'{escape(x_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
