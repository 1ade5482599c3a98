"""Fine-tune deltas in the plain layout against the exponent-segmented one, on the real series.

    python bench/delta_layout.py [--work DIR] [--steps 200] [--repeat 5]

For each fine-tune pair of bench/series.py (c and b against a in fp32; b16 against a16, the same full
fine-tune in bf16, as a store holding only bf16 versions would keep it), every changed tensor is cut
into the engine's pieces (4 MiB of fp32, 2 MiB of bf16) and each piece is delta-encoded against its
parent piece twice: `delta-xor`/`delta-sub` as before (`floats=False`), and as the engine does now
(`floats=True`: the segmented `-exp` form, or the plain one for a sparse change). Prints the bytes
stored each way and the median single-thread encode and decode time per piece over the whole pair
(both decodes hash-checked; the base's own decode is not counted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import series  # noqa: E402

CHUNK = 4 << 20


def tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (dtype, raw bytes) of every tensor in a folder's safetensors files."""
    from weightvault.archive.safetensors_header import read_header

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        blob = f.read_bytes()
        for t in read_header(f, len(blob)).tensors:
            out[t.name] = (t.dtype, blob[t.begin:t.end])
    return out


def pieces(old: Path, new: Path):
    """(itemsize, base piece, new piece) for every changed float piece, cut as the engine cuts."""
    a, b = tensors(old), tensors(new)
    for name, (dtype, raw) in b.items():
        if dtype not in ("F32", "BF16") or name not in a or a[name][1] == raw:
            continue
        itemsize = 4 if dtype == "F32" else 2
        step = CHUNK // 4 * itemsize  # a fixed element count per piece
        for at in range(0, len(raw), step):
            if a[name][1][at:at + step] != raw[at:at + step]:
                yield itemsize, a[name][1][at:at + step], raw[at:at + step]


def measure(pairs, floats: bool, repeat: int) -> tuple[int, float, float]:
    from weightvault.archive import codecs, delta, ids

    stored, enc_t, dec_t = 0, [], []
    for _ in range(repeat):
        stored, te, td = 0, 0.0, 0.0
        for itemsize, base, raw in pairs:
            order = (delta.XOR, delta.SUB) if itemsize == 2 else (delta.SUB, delta.XOR)
            cid, bid = ids.content_id(raw), ids.content_id(base)
            t = time.perf_counter()
            enc = delta.encode(raw, cid, base, bid, itemsize=itemsize, codecs_to_try=order, floats=floats)
            te += time.perf_counter() - t
            delta.BASES.put(bid, base)
            t = time.perf_counter()
            assert codecs.decode_chunk(enc.container, cid, lambda _: base) == raw
            td += time.perf_counter() - t
            stored += len(enc.container)
        enc_t.append(te)
        dec_t.append(td)
    return stored, statistics.median(enc_t), statistics.median(dec_t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "weightvault-bench")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    root = {v.label: v.path for v in series.build(args.work, steps=args.steps)}
    print(f"{'pair':<28}{'raw MB':>8}{'plain MB':>10}{'segm. MB':>10}{'ratio':>8}"
          f"{'enc ms plain/segm.':>22}{'dec ms plain/segm.':>22}")
    for label, new, old in (("c - a (partial, fp32)", "c", "a"), ("b - a (full, fp32)", "b", "a"),
                            ("b16 - a16 (full, bf16)", "b16", "a16")):
        pairs = list(pieces(root[old], root[new]))
        raw = sum(len(p[2]) for p in pairs)
        plain = measure(pairs, False, args.repeat)
        segm = measure(pairs, True, args.repeat)
        print(f"{label:<28}{raw / 1e6:>8.2f}{plain[0] / 1e6:>10.3f}{segm[0] / 1e6:>10.3f}"
              f"{segm[0] / plain[0]:>8.3f}{plain[1] * 1e3:>12.0f}/{segm[1] * 1e3:<9.0f}"
              f"{plain[2] * 1e3:>12.0f}/{segm[2] * 1e3:<9.0f}")
    print("stored bytes are whole containers; times are one thread, the sum over the pair's pieces "
          f"(median of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
