"""Engine benchmark: weightvault against its peers on a real version series, in one run.

    python bench/engine.py [--work DIR] [--steps 200] [--quick] [--repeat N] [--only weightvault,zstd-3,...]

Builds the series of bench/series.py from the real all-MiniLM-L6-v2 (fp32
original, full and partial fine-tunes, bf16 casts, a re-shard), then archives
it with every tool available here, each version with its parent where the tool
has a notion of one, and restores every version. Per tool it prints: bytes each
version added, total stored / raw, ingest and restore MB/s (whole-process, and
steady-state with the tool's no-op start-up time subtracted), bit-exact, peak
RSS of any one process. Then the byte-plane entropy bounds.

Every tool runs as the separate processes a user would run (one per version,
or per file for per-file tools), timed with wall clocks, peak
RSS polled from /proc, on a warm page cache. Peers that are not installed are reported as
"not available": zstd (apt zstd), borg (apt borgbackup), restic (apt restic),
zipnn and lmz (pip zipnn lmzip). zipnn runs per file and in its XOR delta mode
(against the parent version's same-path file); lmz per version and in append mode.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import series as series_mod  # noqa: E402

PY = sys.executable
# lmzip's script sits beside the interpreter when it is pip-installed into an
# environment that is not activated (python bench/engine.py from a venv).
LMZ = shutil.which("lmz") or shutil.which("lmz", path=str(Path(PY).parent))


@dataclass
class Run:
    """Wall time and peak RSS of one or more processes."""

    wall: float = 0.0
    rss: int = 0

    def add(self, other: "Run") -> None:
        self.wall += other.wall
        self.rss = max(self.rss, other.rss)


def compile_bytecode() -> None:
    """Byte-compile weightvault's modules, as pip does when it installs a wheel.

    An editable install (pip install -e, as in CI and here) leaves that to the
    first import, which writes __pycache__ unless PYTHONDONTWRITEBYTECODE is set;
    where it is (this build machine's environment), every CLI call would compile
    ~20 modules from source: 135 -> 74 ms for `weightvault --version`, 439 ->
    352 ms for a 91 MB restore, measured. The Python peers (borg, zipnn, lmz)
    run from their installed bytecode, so weightvault does too.
    """
    import compileall

    import weightvault
    from weightvault import archive, catalog

    for pkg in (weightvault, archive, catalog):
        compileall.compile_dir(str(Path(pkg.__file__).parent), quiet=1)


def run(cmd, *, cwd=None, env=None, stdin=None) -> Run:
    """Run one process; raise with its stderr on failure.

    Peak RSS is the exec'd program's VmHWM, polled from /proc (rusage's
    ru_maxrss would also count the memory the child inherited from this
    Python process before exec).
    """
    errf = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                         stderr=errf, stdin=stdin)
    hwm = 0
    status = Path(f"/proc/{p.pid}/status")
    while True:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            pass
        try:
            p.wait(timeout=0.02)  # returns within ~1 ms of the exit
            break
        except subprocess.TimeoutExpired:
            continue
    wall = time.perf_counter() - t0
    errf.seek(0)
    err = errf.read()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}: {err.decode(errors='replace')[-400:]}")
    return Run(wall, hwm)


def files_of(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def tree_digest(d: Path) -> dict[str, str]:
    out = {}
    for p in files_of(d):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        out[p.relative_to(d).as_posix()] = h.hexdigest()
    return out


def du(path: Path, prefixes: tuple[str, ...] = ("",)) -> int:
    total = 0
    for pre in prefixes:
        base = path / pre
        if base.is_file():
            total += base.stat().st_size
        elif base.exists():
            total += sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    return total


# -- tools -----------------------------------------------------------------------


class Tool:
    """A tool under test: ingest version i, restore it, measure what it stores."""

    name = ""
    note = ""

    def __init__(self, work: Path):
        self.dir = work / "tools" / self.name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)

    def available(self) -> str | None:
        """None when usable, else why not."""
        return None

    def noop(self) -> Run:  # start-up cost of one process
        return run(["true"])

    def ingest(self, v, versions) -> Run:
        raise NotImplementedError

    def restore(self, v, out: Path) -> Run:
        raise NotImplementedError

    def stored(self) -> int:
        return du(self.dir)

    def procs_per_version(self, v) -> int:
        return 1


class Weightvault(Tool):
    name = "weightvault"
    note = "engine defaults; --parent as in the series"

    def __init__(self, work):
        super().__init__(work)
        self.store = self.dir / "store"
        compile_bytecode()
        run([PY, "-m", "weightvault", "--store", str(self.store), "init"])

    def _cli(self, *args):
        return [PY, "-m", "weightvault", "--store", str(self.store), *map(str, args)]

    def noop(self):
        # `weightvault --version`, as `borg --version` and `lmz --version` for those tools. The imports a
        # command needs beyond that (duckdb for a snapshot's catalog write, the archive modules) count as
        # its work: a restore never imports duckdb, so subtracting that import would flatter it.
        return run([PY, "-m", "weightvault", "--version"])

    def ingest(self, v, versions):
        parent = [str(1 + [x.label for x in versions].index(v.parent))] if v.parent else [""]
        return run(self._cli("snapshot", v.path, "--model", "minilm", "--parent", *parent, "--message", v.what))

    def restore(self, v, out):
        return run(self._cli("restore", f"minilm@{v.index}", out))

    def stored(self):
        return du(self.store, ("chunks", "manifests", "events"))


class PerFile(Tool):
    """Compress every file of every version separately (no dedup)."""

    def procs_per_version(self, v):
        return len(files_of(v.path))

    def ingest(self, v, versions):
        total = Run()
        for p in files_of(v.path):
            dst = self.dir / v.label / (p.relative_to(v.path).as_posix() + self.suffix)
            dst.parent.mkdir(parents=True, exist_ok=True)
            total.add(run(self.compress_cmd(p, dst)))
        return total

    def restore(self, v, out):
        total = Run()
        for p in files_of(self.dir / v.label):
            dst = out / p.relative_to(self.dir / v.label).as_posix()[: -len(self.suffix)]
            dst.parent.mkdir(parents=True, exist_ok=True)
            total.add(run(self.decompress_cmd(p, dst)))
        return total


class Zstd(PerFile):
    suffix = ".zst"

    def __init__(self, work, level):
        self.level = level
        self.name = f"zstd-{level}"
        self.note = f"zstd CLI -{level} -T0, one process per file"
        super().__init__(work)

    def available(self):
        return None if shutil.which("zstd") else "zstd CLI not installed (apt install zstd)"

    def noop(self):
        empty = self.dir / "empty"
        empty.write_bytes(b"")
        return run(["zstd", "-q", "-f", str(empty), "-o", str(self.dir / "empty.zst")])

    def compress_cmd(self, p, dst):
        return ["zstd", "-q", f"-{self.level}", "-T0", "-f", str(p), "-o", str(dst)]

    def decompress_cmd(self, p, dst):
        return ["zstd", "-q", "-d", "-f", str(p), "-o", str(dst)]


ZIPNN_SCRIPT = r"""
import sys, zipnn
mode, src, dst, dtype, base = sys.argv[1:6]
delta = base != "-"
z = zipnn.ZipNN(method="zstd", input_format="byte", bytearray_dtype=dtype, threads=2,
                **({"delta_compressed_type": "byte"} if delta else {}))
data = bytearray(open(src, "rb").read())  # a copy: zipnn 0.5.4 writes into the buffer it compresses
second = {"delta_second_data": bytearray(open(base, "rb").read())} if delta else {}
open(dst, "wb").write(z.compress(data, **second) if mode == "c" else bytes(z.decompress(bytes(data), **second)))
"""


class ZipNN(PerFile):
    """zipnn per file. zipnn 0.5.4 corrupts its heap on some small files (three of MiniLM's JSON
    files, 40 KB in all: glibc aborts); those are stored with zstd -3 instead and listed."""

    name = "zipnn"
    note = "zipnn 0.5 byte mode per file (float32 / bfloat16 planes), 2 threads"
    suffix = ".znn"

    def __init__(self, work):
        super().__init__(work)
        self.dtypes: dict[str, str] = {}
        self.bases: dict[str, str] = {}
        self.fallbacks: set[str] = set()

    def available(self):
        try:
            import zipnn  # noqa: F401
        except ImportError:
            return "zipnn not installed (pip install zipnn)"
        return None

    def noop(self):
        return run([PY, "-c", "import zipnn"])

    def _dtype(self, p: Path) -> str:
        if p.suffix != ".safetensors":
            return "float32"
        with open(p, "rb") as f:
            head = f.read(int.from_bytes(f.read(8), "little")).decode(errors="ignore")
        return "bfloat16" if '"BF16"' in head else "float32"

    def base_of(self, p: Path, v, versions) -> Path | None:
        """The file a delta is taken against (None: plain compression)."""
        return None

    def ingest(self, v, versions):
        total = Run()
        for p in files_of(v.path):
            rel = p.relative_to(v.path).as_posix()
            dst = self.dir / v.label / (rel + self.suffix)
            dst.parent.mkdir(parents=True, exist_ok=True)
            base = self.base_of(p, v, versions)
            self.dtypes[str(dst)], self.bases[str(dst)] = self._dtype(p), str(base or "-")
            try:
                total.add(run([PY, "-c", ZIPNN_SCRIPT, "c", str(p), str(dst), self.dtypes[str(dst)],
                               self.bases[str(dst)]]))
            except RuntimeError as e:
                if "exited -" not in str(e):  # killed by a signal (the abort), not a Python error
                    raise
                dst.unlink(missing_ok=True)
                self.fallbacks.add(f"{rel} ({p.stat().st_size} B)")
                zst = dst.with_name(dst.name[: -len(self.suffix)] + ".zst")
                total.add(run(["zstd", "-q", "-3", "-f", str(p), "-o", str(zst)]))
        return total

    def restore(self, v, out):
        total = Run()
        for p in files_of(self.dir / v.label):
            rel = p.relative_to(self.dir / v.label).as_posix()
            dst = out / rel[: -len(p.suffix)]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if p.suffix == ".zst":
                total.add(run(["zstd", "-q", "-d", "-f", str(p), "-o", str(dst)]))
            else:
                total.add(run([PY, "-c", ZIPNN_SCRIPT, "d", str(p), str(dst), self.dtypes[str(p)],
                               self.bases[str(p)]]))
        return total

    def extra_note(self) -> str:
        if not self.fallbacks:
            return ""
        return "zipnn aborted (glibc heap corruption) on: " + ", ".join(sorted(self.fallbacks)) + "; stored with zstd -3"


class ZipNNDelta(ZipNN):
    """zipnn's delta mode: each file XORed with the parent version's same-path file of equal size."""

    name = "zipnn-delta"
    note = ("zipnn 0.5 delta_compressed_type=byte against the parent's same-path file of equal size "
            "(restore reads the parent's original file: rebuilding the parent is not counted)")

    def base_of(self, p, v, versions):
        if not v.parent:
            return None
        parent = next(x for x in versions if x.label == v.parent)
        q = parent.path / p.relative_to(v.path)
        return q if q.is_file() and q.stat().st_size == p.stat().st_size else None


class Lmz(Tool):
    """lmzip: one archive per version folder."""

    name = "lmz"
    note = "lmzip 1.3 `lmz compress DIR` per version"

    def available(self):
        return None if LMZ else "lmz not installed (pip install lmzip)"

    def noop(self):
        return run([LMZ, "--version"])

    def ingest(self, v, versions):
        return run([LMZ, "compress", "-q", "-f", str(v.path), str(self.dir / f"{v.label}.lmz")])

    def restore(self, v, out):
        return run([LMZ, "decompress", "-q", "-f", str(self.dir / f"{v.label}.lmz"), str(out)])


class LmzAppend(Lmz):
    """lmzip's append mode: one archive, each version appended (dedup + delta against what is there)."""

    name = "lmz-append"
    note = "lmzip 1.3 `lmz append` of each version into one archive"

    def ingest(self, v, versions):
        arch = self.dir / "all.lmz"
        stage = self.dir / f"stage-{v.label}"
        if not stage.exists():  # members are named by path: give each version its own top folder
            shutil.copytree(v.path, stage / v.label, copy_function=os.link)
        if not arch.exists():
            return run([LMZ, "compress", "-q", "-f", str(stage), str(arch)])
        return run([LMZ, "append", "-q", str(arch), str(stage)])

    def restore(self, v, out):
        tmp = out.parent / (out.name + ".all")
        r = run([LMZ, "decompress", "-q", "-f", str(self.dir / "all.lmz"), str(tmp)])
        found = [p for p in tmp.rglob(v.label) if p.is_dir()]
        (found[0] if found else tmp).rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        return r

    def stored(self):
        return du(self.dir / "all.lmz")


class Borg(Tool):
    name = "borg"
    note = "borg 1.2 create --compression zstd,3 (dedup store)"
    env = {"BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
           "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def available(self):
        if not shutil.which("borg"):
            return "borg not installed (apt install borgbackup)"
        run(["borg", "init", "-e", "none", str(self.dir / "repo")], env=self.env)
        return None

    def noop(self):
        return run(["borg", "--version"], env=self.env)

    def ingest(self, v, versions):
        return run(["borg", "create", "--compression", "zstd,3", f"{self.dir / 'repo'}::{v.label}", "."],
                   cwd=v.path, env=self.env)

    def restore(self, v, out):
        out.mkdir(parents=True)
        return run(["borg", "extract", f"{self.dir / 'repo'}::{v.label}"], cwd=out, env=self.env)


class Restic(Tool):
    name = "restic"
    note = "restic backup (repository v2, compression auto)"
    env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": ""}

    def available(self):
        if not shutil.which("restic"):
            return "restic not installed (apt install restic)"
        self.env = dict(self.env, RESTIC_CACHE_DIR=str(self.dir / "cache"))
        run(["restic", "-r", str(self.dir / "repo"), "init", "--repository-version", "2"], env=self.env)
        return None

    def noop(self):
        return run(["restic", "version"], env=self.env)

    def ingest(self, v, versions):
        return run(["restic", "-r", str(self.dir / "repo"), "backup", "--tag", v.label, "."], cwd=v.path,
                   env=self.env)

    def restore(self, v, out):
        return run(["restic", "-r", str(self.dir / "repo"), "restore", "latest", "--tag", v.label,
                    "--target", str(out)], env=self.env)

    def stored(self):
        return du(self.dir / "repo")


WHOLEFILE_SCRIPT = r"""
import hashlib, os, shutil, sys, json
mode, src, store, index = sys.argv[1:5]
if mode == "c":
    m = {}
    for root, _, names in os.walk(src):
        for n in names:
            p = os.path.join(root, n)
            h = hashlib.sha256(open(p, "rb").read()).hexdigest()
            dst = os.path.join(store, h)
            if not os.path.exists(dst):
                shutil.copyfile(p, dst)
            m[os.path.relpath(p, src)] = h
    json.dump(m, open(index, "w"))
else:
    for rel, h in json.load(open(index)).items():
        os.makedirs(os.path.dirname(os.path.join(src, rel)) or ".", exist_ok=True)
        shutil.copyfile(os.path.join(store, h), os.path.join(src, rel))
"""


class WholeFile(Tool):
    name = "whole-file dedup"
    note = "distinct files by sha256, uncompressed (what a Hub cache / DVC stores)"

    def noop(self):
        return run([PY, "-c", "import hashlib, shutil, json"])

    def ingest(self, v, versions):
        (self.dir / "objects").mkdir(exist_ok=True)
        return run([PY, "-c", WHOLEFILE_SCRIPT, "c", str(v.path), str(self.dir / "objects"),
                    str(self.dir / f"{v.label}.json")])

    def restore(self, v, out):
        out.mkdir(parents=True)
        return run([PY, "-c", WHOLEFILE_SCRIPT, "d", str(out), str(self.dir / "objects"),
                    str(self.dir / f"{v.label}.json")])


# -- measuring -------------------------------------------------------------------


@dataclass
class Result:
    tool: str
    note: str
    added: list[int] = field(default_factory=list)
    ingest: Run = field(default_factory=Run)
    restore: Run = field(default_factory=Run)
    ingest_procs: int = 0
    restore_procs: int = 0
    noop: float = 0.0
    exact: bool = True
    stored: int = 0
    error: str | None = None


def measure(tool: Tool, versions, work: Path, log) -> Result:
    res = Result(tool.name, tool.note)
    why = tool.available()
    if why:
        res.error = f"not available: {why}"
        return res
    res.noop = min(tool.noop().wall for _ in range(3))
    before = tool.stored()
    for v in versions:
        log(f"  {tool.name}: ingest {v.label}")
        res.ingest.add(tool.ingest(v, versions))
        res.ingest_procs += tool.procs_per_version(v)
        now = tool.stored()
        res.added.append(now - before)
        before = now
    res.stored = before
    for v in versions:
        out = work / "restore" / tool.name.replace(" ", "_") / v.label
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"  {tool.name}: restore {v.label}")
        res.restore.add(tool.restore(v, out))
        res.restore_procs += tool.procs_per_version(v)
        res.exact &= tree_digest(out) == v.digest
        shutil.rmtree(out, ignore_errors=True)
    extra = getattr(tool, "extra_note", lambda: "")()
    if extra:
        res.note = f"{res.note}; {extra}"
    return res


def median_result(runs: list[Result]) -> Result:
    """One Result from repeated runs: median ingest and restore wall times (and start-up), largest RSS.

    Sizes and exactness come from every run alike (each starts from an empty store); a run that
    was not bit-exact makes the result not exact.
    """
    import statistics

    r = runs[0]
    if len(runs) > 1 and not r.error:
        r.ingest.wall = statistics.median(x.ingest.wall for x in runs)
        r.restore.wall = statistics.median(x.restore.wall for x in runs)
        r.noop = statistics.median(x.noop for x in runs)
        r.ingest.rss = max(x.ingest.rss for x in runs)
        r.restore.rss = max(x.restore.rss for x in runs)
        r.exact = all(x.exact for x in runs)
    return r


def mbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:7.0f}" if seconds > 0 else "      -"


def table(results: list[Result], versions, raw_total: int) -> str:
    labels = [v.label for v in versions]
    head = (f"{'tool':<18}" + "".join(f"{'+' + lab:>9}" for lab in labels)
            + f"{'stored':>9}{'raw/st':>8}{'in MB/s':>9}{'in ss':>7}{'out MB/s':>9}{'out ss':>7}"
            + f"{'exact':>6}{'RSS MB':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        if r.error:
            lines.append(f"{r.tool:<18}{r.error}")
            continue
        ss_in = r.ingest.wall - r.noop * r.ingest_procs
        ss_out = r.restore.wall - r.noop * r.restore_procs
        lines.append(
            f"{r.tool:<18}" + "".join(f"{a / 1e6:9.2f}" for a in r.added)
            + f"{r.stored / 1e6:9.2f}{raw_total / max(r.stored, 1):8.2f}"
            + f"{mbps(raw_total, r.ingest.wall):>9}{mbps(raw_total, ss_in):>7}"
            + f"{mbps(raw_total, r.restore.wall):>9}{mbps(raw_total, ss_out):>7}"
            + f"{'yes' if r.exact else 'NO':>6}{max(r.ingest.rss, r.restore.rss) / 1e6:8.0f}")
    return "\n".join(lines)


# -- entropy bounds ------------------------------------------------------------------


def plane_entropy(raw: bytes, itemsize: int) -> float:
    """Order-0 entropy of the byte planes, in bytes."""
    import numpy as np

    a = np.frombuffer(raw, dtype=np.uint8)[: len(raw) - len(raw) % itemsize].reshape(-1, itemsize)
    total = 0.0
    for k in range(itemsize):
        c = np.bincount(a[:, k], minlength=256).astype(float)
        p = c[c > 0] / c.sum()
        total += -(p * np.log2(p)).sum() * len(a) / 8
    return total


def float_bytes(folder: Path, dtype: str) -> bytes:
    from safetensors import safe_open

    parts = []
    for p in sorted(folder.glob("*.safetensors")):
        with safe_open(p, "numpy" if dtype == "F32" else "pt") as f:
            for n in f.keys():
                t = f.get_tensor(n)
                if dtype == "F32" and str(t.dtype) == "float32":
                    parts.append(t.tobytes())
                elif dtype == "BF16" and str(t.dtype) == "torch.bfloat16":
                    parts.append(t.view(__import__("torch").int16).numpy().tobytes())
    return b"".join(parts)


def entropy_report(series) -> str:
    import numpy as np

    by = {v.label: v for v in series}
    a32, b32 = float_bytes(by["a"].path, "F32"), float_bytes(by["b"].path, "F32")
    a16 = float_bytes(by["a16"].path, "BF16")
    ua, ub = np.frombuffer(a32, "<u4"), np.frombuffer(b32, "<u4")
    d = (ub - ua).view("<i4")
    zig = ((d << 1) ^ (d >> 31)).view("<u4").tobytes()
    xor = (ua ^ ub).tobytes()
    rows = [("fp32 weights of a", a32, 4), ("bf16 weights of a16", a16, 2),
            ("fine-tune delta b-a (zigzag int diff)", zig, 4), ("fine-tune delta b^a (xor)", xor, 4)]
    out = ["byte-plane order-0 entropy bounds (float tensors only):"]
    for name, raw, k in rows:
        h = plane_entropy(raw, k)
        out.append(f"  {name:<40} {len(raw) / 1e6:8.2f} MB raw  {h / 1e6:8.2f} MB bound  {len(raw) / h:5.2f}x")
    return "\n".join(out)


TOOLS = ["weightvault", "zstd-3", "zstd-19", "zipnn", "zipnn-delta", "lmz", "lmz-append", "borg", "restic", "whole-file dedup"]


def make_tool(name: str, work: Path) -> Tool:
    return {
        "weightvault": lambda: Weightvault(work), "zstd-3": lambda: Zstd(work, 3), "zstd-19": lambda: Zstd(work, 19),
        "zipnn": lambda: ZipNN(work), "zipnn-delta": lambda: ZipNNDelta(work), "lmz": lambda: Lmz(work), "lmz-append": lambda: LmzAppend(work),
        "borg": lambda: Borg(work), "restic": lambda: Restic(work), "whole-file dedup": lambda: WholeFile(work),
    }[name]()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "weightvault-bench")
    ap.add_argument("--steps", type=int, default=200, help="AdamW steps of the full fine-tune")
    ap.add_argument("--only", default=",".join(TOOLS), help="comma-separated tools")
    ap.add_argument("--quick", action="store_true", help="skip zstd -19 (minutes on this series)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each tool N times from an empty store; report the median times")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    versions = series_mod.build(args.work, steps=args.steps, log=log)
    versions = [_Indexed(v, i) for i, v in enumerate(versions, 1)]
    raw_total = sum(p.stat().st_size for v in versions for p in files_of(v.path))
    for v in versions:
        v.digest = tree_digest(v.path)
        for p in files_of(v.path):  # warm the page cache for every tool alike
            p.read_bytes()
    # Bytecode as a wheel install has it: an editable checkout under PYTHONDONTWRITEBYTECODE
    # would recompile weightvault's modules in every process (~0.1 s each here).
    import compileall

    repo = Path(__file__).resolve().parent.parent
    for d in ("weightvault", "archive", "catalog"):
        compileall.compile_dir(repo / d, quiet=1)
    names = [n for n in args.only.split(",") if n and not (args.quick and n == "zstd-19")]
    results = []
    for name in names:
        log(f"measuring {name}")
        try:
            runs = [measure(make_tool(name, args.work), versions, args.work, log) for _ in range(args.repeat)]
            results.append(median_result(runs))
        except Exception as e:  # a peer that breaks is reported, not fatal
            results.append(Result(name, "", error=f"failed: {str(e).splitlines()[0][:160]}"))
    print(f"series (raw {raw_total / 1e6:.1f} MB): " + "; ".join(
        f"{v.label} = {v.what} ({sum(p.stat().st_size for p in files_of(v.path)) / 1e6:.1f} MB)" for v in versions))
    print("columns: MB each version added; stored MB; raw/stored; ingest and restore MB/s over the whole series,")
    print("whole-process and steady-state (ss: the tool's no-op start-up subtracted per process); restores")
    print("sha256-compared with the source; peak RSS of any one process.")
    print(table(results, versions, raw_total))
    for r in results:
        if r.note and not r.error:
            print(f"  {r.tool}: {r.note}")
    print(entropy_report(versions))
    return 0


class _Indexed:
    def __init__(self, v, i):
        self.label, self.path, self.parent, self.what, self.index = v.label, v.path, v.parent, v.what, i
        self.digest = {}


if __name__ == "__main__":
    sys.exit(main())
