"""The HTML diff report: self-contained, and rendered by a real headless Chromium with its plots painted."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from weightvault import plots
from weightvault.report import render_html

CHROMIUM = Path("/usr/bin/chromium")
BAR_RGB = (0x4E, 0x79, 0xA7)  # plots.BAR
ACCENT_RGB = (0xE1, 0x57, 0x59)  # plots.ACCENT


@pytest.fixture(scope="module")
def gpt_report(tmp_path_factory):
    """The real report of a tiny GPT-2 against a copy with layer 1 perturbed, with behaviour."""
    pytest.importorskip("transformers")
    from diff_fixtures import make_tiny_gpt2, perturb_layer, write_prompts

    from weightvault.cli import main
    from weightvault.vault import Vault

    tmp = tmp_path_factory.mktemp("report")
    orig = make_tiny_gpt2(tmp / "gpt")
    perturb_layer(orig, tmp / "gpt2", layer=1)
    v = Vault.init(tmp / "store")
    v.snapshot(orig, "gpt")
    v.snapshot(tmp / "gpt2", "gpt")
    html = tmp / "diff.html"
    rc = main(["--store", str(tmp / "store"), "diff", "gpt@1", "gpt@2", "--prompts",
               str(write_prompts(tmp / "p.jsonl")), "--html", str(html), "--json", "--max-new-tokens", "6"])
    assert rc == 0
    return html


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1200,2000"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_is_self_contained(gpt_report):
    page = gpt_report.read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}
    for cls in ("plot-layers", "plot-hist", "plot-kl"):
        assert f'class="plot {cls}"' in page
    assert "transformer.h.1" in page and "Generations that differ" in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                                                  "(apt-get install -y chromium; CI installs it)")
def test_report_renders_in_headless_chromium_with_plots(gpt_report, tmp_path):
    from PIL import Image

    png = tmp_path / "shot.png"
    r = _chromium(tmp_path, f"--screenshot={png}", gpt_report.as_uri())
    assert png.exists() and png.stat().st_size > 0, r.stderr[-2000:]
    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 2000)
    pixels = list(getattr(img, "get_flattened_data", img.getdata)())
    lum = [0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2] for p in pixels[::7]]
    mean = sum(lum) / len(lum)
    assert sum((x - mean) ** 2 for x in lum) / len(lum) > 100  # not a blank page
    # the bars were painted: many pixels in the plots' bar colour, and the top layer in the accent colour
    assert sum(p == BAR_RGB for p in pixels) > 2000
    assert sum(p == ACCENT_RGB for p in pixels) > 200

    dom = _chromium(tmp_path, "--dump-dom", gpt_report.as_uri()).stdout
    assert dom.count("<svg") >= 3
    for cls in ("plot-layers", "plot-hist", "plot-kl"):
        svg = re.search(rf'<svg[^>]*class="plot {cls}"[^>]*>(.*?)</svg>', dom, re.S)
        assert svg is not None, cls
        assert svg.group(1).count("<rect") >= 3, cls  # 3 layers, >= 3 histogram bins with a bar, 6 prompts


def test_labels_are_escaped():
    svg = plots.hbar_chart(['<script>alert(1)</script>', "b&c"], [1.0, float("nan")], title="t<")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "b&amp;c" in svg and "t&lt;" in svg
    page = render_html({
        "a": {"ref": "x@1", "manifest_id": "0" * 64}, "b": {"ref": "x@<2>", "manifest_id": "1" * 64},
        "summary": {"tensors": 1, "same": 0, "changed": 1, "added": 0, "removed": 0, "reshaped": 0,
                    "dtype-changed": 0, "chunks_read": 2},
        "layers": [{"layer": "(no layer)", "index": None, "tensors": 1, "changed": 1, "structural": 0,
                    "rel_l2": 0.5, "max_rel_l2": 0.5, "max_abs_diff": 1.0}],
        "tensors": [{"name": "<img src=x>", "status": "changed", "dtype_a": "F32", "dtype_b": "F32",
                     "shape_a": [2], "shape_b": [2], "rel_l2": 0.5, "cosine": 0.9, "max_abs_diff": 1.0,
                     "frac_changed": 0.5}],
        "files": []})
    assert "<img src=x>" not in page and "&lt;img src=x&gt;" in page and "x@&lt;2&gt;" in page


def test_histogram_counts_every_positive_value():
    values = [1e-4, 2e-4, 1e-3, 0.0, float("inf"), 0.5]
    svg = plots.histogram(values, title="h", bins=4)
    counts = [int(c) for c in re.findall(r"<title>[^<]*: (\d+)</title>", svg)]
    assert sum(counts) == 4 and len(counts) == 4
    assert "2 zero or undefined left out" in svg
