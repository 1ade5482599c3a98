"""Pickled checkpoints (.bin/.pt/.pth/.ckpt): a static scan, then a safe load, then safetensors.

Snapshot refuses pickles by default: unpickling runs code. With
``--convert-pickle`` the folder is checked first, before anything is loaded
(:func:`check`): no two pickles may convert to one name, nor to a name already
in the folder; a ``*.bin.index.json`` whose ``weight_map`` names converted
shards must map every name. Then each pickled file is:

1. checked as a zip-format ``torch.save`` archive (torch >= 1.6): the zip magic
   at offset 0 (torch decides zip or legacy by it) and no data before the first
   member, every member stored uncompressed (torch.save never compresses),
   exactly one ``<name>/data.pkl`` record, no duplicate or escaping member
   names, no other pickle in the archive, and the ``data.pkl`` torch's own zip
   reader returns equal to the one scanned (so this scanner and torch read the
   same bytes); legacy non-zip checkpoints and plain pickles are refused, a file
   with the zip magic that does not open is "damaged or truncated";
2. scanned statically: every opcode of ``data.pkl`` is walked with
   ``pickletools`` on an abstract stack, and every global it imports (GLOBAL,
   INST, STACK_GLOBAL with both operands known strings) must be on
   :data:`ALLOWED_GLOBALS`; extension-registry opcodes and unresolvable
   STACK_GLOBALs are refused. Nothing is executed;
3. loaded with ``torch.load(weights_only=True, mmap=True)`` (never
   ``weights_only=False``, not even as a fallback) on the CPU, through one open
   file descriptor (``/proc/self/fd/N``) that the scan, the load and the
   recorded sha256 all read, so a file renamed over it meanwhile is not mixed in;
4. written as safetensors (``pytorch_model*.bin`` -> ``model*.safetensors``,
   otherwise the suffix becomes ``.safetensors``) tensor by tensor from the
   mapped file into a temporary file and archived in place of the pickle. A
   Lightning-style ``{"state_dict": ...}`` checkpoint keeps only its state dict:
   the other top-level keys (optimizer states, epoch, ...) are listed as
   ``dropped`` and a warning names them. The manifest's
   ``metadata.pickle_conversions`` records each conversion (source name, size,
   sha256, output name, globals seen, torch version, dropped keys), and each
   converted shard index (``pytorch_model.bin.index.json`` ->
   ``model.safetensors.index.json``), so the catalog and signed provenance carry it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickletools
import posixpath
import re
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from weightvault.archive.ids import file_sha256
from weightvault.archive.safetensors_header import read_header
from weightvault.archive.snapshot import PICKLE_SUFFIXES, SourceFile, looks_pickled, scan_folder
from weightvault.errors import InvalidInputError, MissingExtraError, UnsafePickleError

log = logging.getLogger("weightvault")

SCANNER = "weightvault-pickle-allowlist/2"  # /2: _rebuild_tensor_v3 and the dtypes it names
MAX_PICKLE_BYTES = 256 << 20  # data.pkl holds structure only; tensor bytes live in other records

_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
             "ComplexFloat", "ComplexDouble", "Untyped")
# torch dtype name -> safetensors dtype. torch.save writes FP8 and uint16/32/64 tensors (no typed
# storage class) as _rebuild_tensor_v3(torch.storage.UntypedStorage, ..., torch.<dtype>); weights_only
# allows the same globals. Dtypes without a safetensors equivalent stay off the allowlist.
SAFETENSORS_DTYPES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
    "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64", "uint8": "U8", "bool": "BOOL",
    "complex64": "C64", "uint16": "U16", "uint32": "U32", "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e8m0fnu": "F8_E8M0",
}
ALLOWED_GLOBALS = frozenset(
    {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
     ("torch._utils", "_rebuild_tensor_v3"), ("torch.storage", "UntypedStorage"),
     ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
     ("torch", "Size"), ("torch", "device")}
    | {("torch", f"{s}Storage") for s in _STORAGES}
    | {("torch", d) for d in SAFETENSORS_DTYPES}
)
_STRING_OPS = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}
_FORBIDDEN_OPS = {"EXT1", "EXT2", "EXT4"}


class _Unknown:
    """A stack value the scanner does not track."""


_UNKNOWN = _Unknown()
_MARK = object()


def scan_pickle(data: bytes, where: str) -> list[str]:
    """Walk a pickle's opcodes and return the globals it imports, refusing any off the allowlist.

    Args:
        data: the pickle bytes.
        where: name for messages.
    Returns:
        Sorted ``module.name`` strings seen.
    Raises:
        UnsafePickleError: a forbidden global or opcode, or a pickle that cannot be walked.
    """
    stack: list = []
    marks: list[int] = []
    memo: dict = {}
    seen: set[tuple[str, str]] = set()

    def check(module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafePickleError(where, "STACK_GLOBAL with operands the scanner cannot resolve")
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(where, f"global {module}.{name} is not on the allowlist")
        seen.add((module, name))

    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in _FORBIDDEN_OPS:
                raise UnsafePickleError(where, f"opcode {name} (extension registry) is not allowed")
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                check(module, attr)
            elif name == "STACK_GLOBAL":
                if len(stack) < 2:
                    raise UnsafePickleError(where, "STACK_GLOBAL on a short stack")
                check(stack[-2], stack[-1])
            if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                if not stack:
                    raise UnsafePickleError(where, f"{name} on an empty stack")
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, _UNKNOWN))
                continue
            if name == "MARK":
                marks.append(len(stack))
                continue
            _apply_stack_effect(op, stack, marks)
            if name in _STRING_OPS:
                stack[-1] = arg if isinstance(arg, str) else _UNKNOWN
    except UnsafePickleError:
        raise
    except Exception as e:  # malformed opcodes, truncated data
        raise UnsafePickleError(where, f"pickle cannot be scanned ({type(e).__name__}: {e})") from None
    return sorted(f"{m}.{n}" for m, n in seen)


def _apply_stack_effect(op, stack: list, marks: list[int]) -> None:
    before = op.stack_before
    if pickletools.markobject in before:  # pops everything down to the last MARK
        if not marks:
            raise ValueError(f"{op.name} without MARK")
        del stack[marks.pop():]
        n = before.index(pickletools.markobject)  # items below the mark it also takes (SETITEMS' dict)
    else:
        n = len(before)
    if n > len(stack):
        raise ValueError(f"{op.name} pops {n} from a stack of {len(stack)}")
    if n:
        del stack[-n:]
    stack.extend(_UNKNOWN for _ in op.stack_after)


_ZIP_MAGIC = b"PK\x03\x04"
# HF Trainer files saved beside the weights: not weights, and not worth converting.
_NOT_WEIGHTS = (("training_args.bin", "training settings"), ("optimizer.pt", "optimizer state"),
                ("scheduler.pt", "LR scheduler state"), ("scaler.pt", "AMP scaler state"),
                ("rng_state*.pth", "random number generator state"))


def _hint_for(rel: str) -> str | None:
    """The refusal hint for a known non-weights pickle (``training_args.bin``...), else None (default)."""
    import fnmatch

    name = rel.rpartition("/")[2]
    for pattern, what in _NOT_WEIGHTS:
        if fnmatch.fnmatch(name, pattern):
            return f"it holds the Trainer's {what}, not weights: --exclude '{rel}'"
    return None


@contextmanager
def _hinted(rel: str):
    """Re-raise an UnsafePickleError about ``rel`` with the hint that fits a non-weights pickle."""
    try:
        yield
    except UnsafePickleError as e:
        hint = _hint_for(rel)
        if hint is None:
            raise
        raise UnsafePickleError(e.path, e.reason, hint=hint) from None


def _torch_archive_pickle(path, rel: str) -> bytes:
    """Return data.pkl of a zip-format torch checkpoint after checking the archive's shape.

    torch.load picks zip or legacy by the first 4 bytes; Python's zipfile finds the archive from its
    end record. Requiring the magic at offset 0 and the first member at offset 0 makes both read one
    archive (a legacy pickle with a zip appended, or two zips end to end, is refused).
    """
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != _ZIP_MAGIC:
        raise UnsafePickleError(rel, "legacy (non-zip) torch checkpoint or plain pickle (only zip-format "
                                     "torch.save files, torch>=1.6, are converted)")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError):
        raise UnsafePickleError(rel, "damaged or truncated zip (it starts like a torch.save archive but does "
                                     "not open as one); copy or save it again") from None
    with z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        if not infos or min(i.header_offset for i in infos) != 0:
            raise UnsafePickleError(rel, "data before the zip's first member (torch and a zip reader would read "
                                         "different archives)")
        if len(names) != len(set(names)):
            raise UnsafePickleError(rel, "zip has duplicate member names")
        if any(n.startswith("/") or ".." in n.split("/") for n in names):
            raise UnsafePickleError(rel, "zip member names escape the archive")
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        if packed:  # torch maps stored records as they are (mmap): a compressed one would load as garbage
            raise UnsafePickleError(rel, f"zip member {packed[0]} is compressed (torch.save stores every record "
                                         "uncompressed)")
        pickles = [n for n in names if n.endswith(".pkl")]
        data_pkl = [n for n in pickles if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if len(data_pkl) != 1 or len(pickles) != 1:
            raise UnsafePickleError(rel, f"expected one <name>/data.pkl record, found {pickles or 'none'}")
        info = z.getinfo(data_pkl[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise UnsafePickleError(rel, f"data.pkl is {info.file_size} bytes (limit {MAX_PICKLE_BYTES})")
        try:
            return z.read(info)
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
            raise UnsafePickleError(rel, f"damaged or truncated zip ({e}); copy or save it again") from None


def _same_as_torch(path, rel: str, data: bytes) -> None:
    """Check that torch's own zip reader returns the data.pkl that was scanned."""
    import torch

    try:
        theirs = torch._C.PyTorchFileReader(str(path)).get_record("data.pkl")
    except Exception as e:  # noqa: BLE001 - miniz's refusal: the file is not an archive torch can read
        raise UnsafePickleError(rel, f"damaged or truncated zip (torch cannot read it: "
                                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if theirs != data:
        raise UnsafePickleError(rel, "torch's zip reader and Python's read different data.pkl records")


def _scan_archive(path, rel: str) -> list[str]:
    """Shape checks, the opcode scan, then torch's reader agreeing on data.pkl: the globals seen."""
    data = _torch_archive_pickle(path, rel)
    seen = scan_pickle(data, rel)
    _same_as_torch(path, rel, data)
    return seen


def _tensors_of(obj, rel: str) -> tuple[dict, list[str]]:
    """The tensors to write, and the top-level keys of a Lightning-style checkpoint left out.

    Nothing is cloned: :func:`_write_safetensors` copies each tensor's bytes on its own, so tied
    weights (one storage, several names) need no copy, and mmap'd storages are read once.
    """
    import torch

    dropped: list[str] = []
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        dropped = sorted(str(k) for k in obj if k != "state_dict")
        obj = obj["state_dict"]  # Lightning-style checkpoint: weights under state_dict
    if not isinstance(obj, dict) or not obj:
        raise UnsafePickleError(rel, "not a state dict (a mapping of names to tensors)")
    bad = [k for k, t in obj.items() if not isinstance(k, str) or not isinstance(t, torch.Tensor)]
    if bad:
        raise UnsafePickleError(rel, f"entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return dict(obj), dropped


def _write_safetensors(tensors: dict, target: Path, metadata: dict[str, str], fail) -> None:
    """Write ``tensors`` as safetensors, one tensor at a time (name order, header space-padded to 8
    bytes, as :func:`weightvault.archive.safetensors_header.build_file`).

    Memory (audit 3, finding 7; a 512 MiB fp32 ``pytorch_model.bin``, one tensor, peak RSS from
    ``/usr/bin/time -v weightvault snapshot DIR --model M --convert-pickle``, torch 2.13 CPU, build
    machine): 1.29 GB before (torch.load into anonymous memory, a clone of every tensor, then
    safetensors' save_file holding every tensor's bytes at once), 0.76 GB now (a tiny checkpoint: 0.30
    GB). What is left is the mmap'd checkpoint (``torch.load(mmap=True)``): clean, file-backed pages
    the kernel can drop; each tensor's bytes go straight from the mapping to the file, and nothing is
    cloned (tied weights are simply written twice).
    """
    import torch

    header: dict = {"__metadata__": metadata}
    order = sorted(tensors)
    offset = 0
    for name in order:
        t = tensors[name]
        if name == "__metadata__":
            raise fail("a tensor is named __metadata__, which safetensors reserves")
        dtype = SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None or t.layout != torch.strided or t.device.type != "cpu":
            raise fail(f"tensor {name!r} ({t.dtype}, {t.layout}) has no safetensors equivalent")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    step = 64 << 20
    with open(target, "xb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in order:
            t = tensors[name].detach()
            if t.numel() == 0:
                continue
            flat = t.contiguous().reshape(-1).view(torch.uint8).numpy()  # copies only a strided view
            view = memoryview(flat)
            for i in range(0, len(view), step):
                f.write(view[i:i + step])


def converted_name(rel: str) -> str:
    """``pytorch_model-00001-of-00002.bin`` -> ``model-00001-of-00002.safetensors``; else swap the suffix."""
    folder, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0]
    if stem.startswith("pytorch_model"):
        stem = "model" + stem[len("pytorch_model"):]
    return f"{folder}/{stem}.safetensors" if folder else f"{stem}.safetensors"


def converted_index_name(rel: str) -> str | None:
    """``pytorch_model.bin.index.json`` -> ``model.safetensors.index.json``; None for other names."""
    if not rel.endswith(".index.json"):
        return None
    base = rel[: -len(".index.json")]
    if not base.lower().endswith(tuple(s for s in PICKLE_SUFFIXES if s not in (".pkl", ".pickle"))):
        return None
    return converted_name(base) + ".index.json"


@dataclass(frozen=True)
class Conversion:
    """One pickle converted to safetensors.

    Attributes:
        source: the pickle's path in the folder.
        source_size, source_sha256: what was read.
        output: the safetensors file archived in its place.
        globals: the allowlisted globals its pickle imports.
        tensors: how many tensors it held.
        dropped: top-level keys of a Lightning-style checkpoint left out (only its state_dict is kept).
    """

    source: str
    source_size: int
    source_sha256: str
    output: str
    globals: tuple[str, ...]
    tensors: int
    dropped: tuple[str, ...] = ()

    def to_dict(self, torch_version: str) -> dict:
        d = {"from": self.source, "from_size": self.source_size, "from_sha256": self.source_sha256,
             "to": self.output, "globals": list(self.globals), "tensors": self.tensors,
             "scanner": SCANNER, "loader": "torch.load(weights_only=True)", "torch": torch_version}
        if self.dropped:
            d["dropped"] = list(self.dropped)
        return d


@dataclass(frozen=True)
class _Index:
    """A shard index (``pytorch_model.bin.index.json``) rewritten for the converted shards."""

    source: SourceFile
    output: str
    text: bytes  # the rewritten JSON
    source_sha256: str
    entries: int

    def to_dict(self) -> dict:
        return {"from": self.source.rel, "from_size": self.source.size, "from_sha256": self.source_sha256,
                "to": self.output, "index_entries": self.entries}


def _temp_file(out_dir: Path) -> Path:
    return out_dir / f"{os.getpid()}-{os.urandom(8).hex()}.tmp"  # the store's tmp/ naming: swept by gc


def _fd_path(fd: int, fallback: Path):
    """A path that opens the file behind ``fd`` (Linux), so every reader sees one file."""
    p = f"/proc/self/fd/{fd}"
    return p if os.path.exists(p) else fallback


def convert_file(src: SourceFile, out_dir: Path) -> tuple[SourceFile, Conversion]:
    """Scan, safely load and convert one pickled checkpoint into a temp file in ``out_dir``.

    Errors about the output name the user's file: ``model.pt (converted to model.safetensors): ...``.
    """
    try:
        import torch
    except ImportError:
        raise MissingExtraError("--convert-pickle", "teacher") from None
    out_rel = converted_name(src.rel)

    def fail(reason: str) -> InvalidInputError:
        return InvalidInputError(f"{src.rel} (converted to {out_rel}): {reason}",
                                 hint=f"re-save it with valid tensor names and dtypes, or --exclude '{src.rel}'")

    fd = os.open(src.path, os.O_RDONLY)
    try:
        path = _fd_path(fd, src.path)  # the scan, the load and the sha256 read one open file
        with _hinted(src.rel):
            seen = _scan_archive(path, src.rel)
            load = {"mmap": True} if _load_supports_mmap(torch) else {}
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, **load)
            except Exception as e:  # weights_only's own refusal, or a damaged archive
                raise UnsafePickleError(src.rel, "torch.load(weights_only=True) refused it: "
                                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            tensors, dropped = _tensors_of(obj, src.rel)
        n = len(tensors)
        target = _temp_file(out_dir)
        try:
            _write_safetensors(tensors, target, {"format": "pt", "converted_from": src.rel}, fail)
            del obj, tensors  # the mapping goes with the last tensor
            size = target.stat().st_size
            try:
                read_header(target, size)
            except InvalidInputError as e:
                raise fail(getattr(e, "reason", str(e)) + (f" (tensor {e.tensor!r})" if getattr(e, "tensor", None)
                                                            else "")) from None
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        conv = Conversion(src.rel, os.fstat(fd).st_size, file_sha256(path), out_rel, tuple(seen), n, tuple(dropped))
    finally:
        os.close(fd)
    return SourceFile(out_rel, target, size), conv


def _load_supports_mmap(torch) -> bool:  # torch.load(mmap=) since torch 2.1
    import inspect

    return "mmap" in inspect.signature(torch.load).parameters


def _plan_index(f: SourceFile, to_convert: dict[str, SourceFile]) -> _Index | None:
    """The rewritten index for ``f``, None when it names no pickle being converted; refuses an index
    that names both converted shards and a file that cannot be mapped."""
    out = converted_index_name(f.rel)
    if out is None:
        return None
    raw = f.path.read_bytes()
    try:
        obj = json.loads(raw)
    except ValueError:
        return None  # not an index we can read: archived as it is
    wm = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wm, dict):
        return None
    folder = posixpath.dirname(f.rel)

    def target(v):
        return posixpath.normpath(posixpath.join(folder, v)) if isinstance(v, str) and v else None

    if not any(target(v) in to_convert for v in wm.values()):
        return None
    new = {}
    for k, v in wm.items():
        t = target(v)
        if t not in to_convert:
            raise InvalidInputError(f"{f.rel}: weight_map names {v!r} (for {k!r}), which is not a pickle "
                                    "being converted, so the index cannot be converted with its shards",
                                    hint=f"add that shard to the folder, or --exclude '{f.rel}'")
        new[k] = posixpath.relpath(converted_name(t), folder or ".")
    obj["weight_map"] = new
    text = (json.dumps(obj, indent=2) + "\n").encode()
    return _Index(f, out, text, hashlib.sha256(raw).hexdigest(), len(new))


def _plan(source, kw: dict) -> tuple[list[SourceFile], list[SourceFile], list[_Index]]:
    files = kw.get("files") or scan_folder(Path(source), tuple(kw.get("exclude", ())))
    pickles = [f for f in files if looks_pickled(f.path)]
    by_rel = {f.rel: f for f in pickles}
    indexes = [i for i in (_plan_index(f, by_rel) for f in files if f.rel not in by_rel) if i is not None]
    replaced = {i.source.rel for i in indexes}
    kept = [f for f in files if f.rel not in by_rel and f.rel not in replaced]
    names = {f.rel for f in kept}
    made: dict[str, str] = {}  # converted name -> the file it comes from
    for rel, out in [(f.rel, converted_name(f.rel)) for f in pickles] + [(i.source.rel, i.output) for i in indexes]:
        if out in names:
            raise InvalidInputError(f"{rel}: {out} already exists beside it",
                                    hint=f"archive the safetensors file and --exclude '{rel}'")
        if out in made:
            raise InvalidInputError(f"{made[out]} and {rel} both convert to {out}",
                                    hint=f"--exclude one of them, e.g. --exclude '{rel}'")
        made[out] = rel
    for f in pickles:
        with _hinted(f.rel):
            _scan_archive(f.path, f.rel)
    return kept, pickles, indexes


def check(source, kw: dict) -> tuple[list[SourceFile], list[SourceFile]]:
    """What :func:`converted` will refuse, found without loading any weights.

    Lists the folder, checks the converted names (against the files beside them and one another),
    the shard indexes that name converted shards, and every pickle's archive shape and opcodes (it
    reads data.pkl, not the tensors).

    Returns:
        (the files kept as they are, the pickles to convert); a shard index that is converted is in
        neither.
    """
    kept, pickles, _ = _plan(source, kw)
    return kept, pickles


@contextmanager
def converted(source, kw: dict, *, tmp_dir: Path | None = None):
    """Yield snapshot keyword arguments with every pickle replaced by its safetensors conversion.

    Args:
        source: the model folder.
        kw: the snapshot keyword arguments (``files``, ``exclude``, ``metadata`` are read).
        tmp_dir: where the converted files are written (flat ``PID-HEX.tmp`` names, as the store's
            ``tmp/`` uses, which gc sweeps); default a new folder under $TMPDIR.
    """
    import torch

    new_files, pickles, indexes = _plan(source, kw)
    own = tmp_dir is None
    out_dir = Path(tempfile.mkdtemp(prefix="weightvault-convert-")) if own else Path(tmp_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        records = []
        for f in pickles:
            nf, conv = convert_file(f, out_dir)
            written.append(nf.path)
            new_files.append(nf)
            records.append(conv.to_dict(torch.__version__))
            if conv.dropped:
                log.warning("%s: only its state_dict is archived; dropped %s (listed in pickle_conversions)",
                            f.rel, ", ".join(conv.dropped))
        for idx in indexes:
            target = _temp_file(out_dir)
            written.append(target)
            target.write_bytes(idx.text)
            new_files.append(SourceFile(idx.output, target, len(idx.text)))
            records.append(idx.to_dict())
        out = dict(kw, files=sorted(new_files, key=lambda x: x.rel))
        if records:
            out["metadata"] = {**(kw.get("metadata") or {}), "pickle_conversions": records}
        yield out
    finally:
        for p in written:
            p.unlink(missing_ok=True)
        if own:
            try:
                out_dir.rmdir()
            except OSError:
                pass
