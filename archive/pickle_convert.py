"""Pickled checkpoints (.bin/.pt/.pth/.ckpt): a static scan, then a safe load, then safetensors.

Snapshot refuses pickles by default: unpickling runs code. With
``--convert-pickle`` each pickled file is:

1. checked as a zip-format ``torch.save`` archive (torch >= 1.6): exactly one
   ``<name>/data.pkl`` record, no duplicate or escaping member names, no other
   pickle in the archive (so this scanner and torch read the same bytes);
   legacy non-zip checkpoints are refused;
2. scanned statically: every opcode of ``data.pkl`` is walked with
   ``pickletools`` on an abstract stack, and every global it imports (GLOBAL,
   INST, STACK_GLOBAL with both operands known strings) must be on
   :data:`ALLOWED_GLOBALS`; extension-registry opcodes and unresolvable
   STACK_GLOBALs are refused. Nothing is executed;
3. loaded with ``torch.load(weights_only=True)`` (never ``weights_only=False``,
   not even as a fallback) on the CPU;
4. written as safetensors (``pytorch_model*.bin`` -> ``model*.safetensors``,
   otherwise the suffix becomes ``.safetensors``) in a temporary folder and
   archived in place of the pickle. The manifest's ``metadata.pickle_conversions``
   records each conversion (source name, size, sha256, output name, globals
   seen, torch version), so the catalog and signed provenance carry it.
"""

from __future__ import annotations

import pickletools
import re
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from weightvault.archive.ids import file_sha256
from weightvault.archive.snapshot import SourceFile, looks_pickled, scan_folder
from weightvault.errors import InvalidInputError, MissingExtraError, UnsafePickleError

SCANNER = "weightvault-pickle-allowlist/1"
MAX_PICKLE_BYTES = 256 << 20  # data.pkl holds structure only; tensor bytes live in other records

_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
             "ComplexFloat", "ComplexDouble", "Untyped")
ALLOWED_GLOBALS = frozenset(
    {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
     ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
     ("torch", "Size"), ("torch", "device")}
    | {("torch", f"{s}Storage") for s in _STORAGES}
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


def _torch_archive_pickle(path: Path, rel: str) -> bytes:
    """Return data.pkl of a zip-format torch checkpoint after checking the archive's shape."""
    if not zipfile.is_zipfile(path):
        raise UnsafePickleError(rel, "legacy (non-zip) torch checkpoint; re-save it with torch>=1.6, "
                                     "or convert it in a sandbox")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        if len(names) != len(set(names)):
            raise UnsafePickleError(rel, "zip has duplicate member names")
        if any(n.startswith("/") or ".." in n.split("/") for n in names):
            raise UnsafePickleError(rel, "zip member names escape the archive")
        pickles = [n for n in names if n.endswith(".pkl")]
        data_pkl = [n for n in pickles if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if len(data_pkl) != 1 or len(pickles) != 1:
            raise UnsafePickleError(rel, f"expected one <name>/data.pkl record, found {pickles or 'none'}")
        info = z.getinfo(data_pkl[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise UnsafePickleError(rel, f"data.pkl is {info.file_size} bytes (limit {MAX_PICKLE_BYTES})")
        return z.read(info)


def _tensors_of(obj, rel: str) -> dict:
    import torch

    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # Lightning-style checkpoint: weights under state_dict
    if not isinstance(obj, dict) or not obj:
        raise UnsafePickleError(rel, "not a state dict (a mapping of names to tensors)")
    bad = [k for k, t in obj.items() if not isinstance(k, str) or not isinstance(t, torch.Tensor)]
    if bad:
        raise UnsafePickleError(rel, f"entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    # Clone: tied weights share storage, which safetensors refuses; identical bytes dedup in the store anyway.
    return {k: t.detach().contiguous().clone() for k, t in obj.items()}


def converted_name(rel: str) -> str:
    """``pytorch_model-00001-of-00002.bin`` -> ``model-00001-of-00002.safetensors``; else swap the suffix."""
    folder, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0]
    if stem.startswith("pytorch_model"):
        stem = "model" + stem[len("pytorch_model"):]
    return f"{folder}/{stem}.safetensors" if folder else f"{stem}.safetensors"


@dataclass(frozen=True)
class Conversion:
    """One pickle converted to safetensors.

    Attributes:
        source: the pickle's path in the folder.
        source_size, source_sha256: what was read.
        output: the safetensors file archived in its place.
        globals: the allowlisted globals its pickle imports.
        tensors: how many tensors it held.
    """

    source: str
    source_size: int
    source_sha256: str
    output: str
    globals: tuple[str, ...]
    tensors: int

    def to_dict(self, torch_version: str) -> dict:
        return {"from": self.source, "from_size": self.source_size, "from_sha256": self.source_sha256,
                "to": self.output, "globals": list(self.globals), "tensors": self.tensors,
                "scanner": SCANNER, "loader": "torch.load(weights_only=True)", "torch": torch_version}


def convert_file(src: SourceFile, out_dir: Path) -> tuple[SourceFile, Conversion]:
    """Scan, safely load and convert one pickled checkpoint into ``out_dir``."""
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError:
        raise MissingExtraError("--convert-pickle", "teacher") from None
    seen = scan_pickle(_torch_archive_pickle(src.path, src.rel), src.rel)
    try:
        obj = torch.load(src.path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only's own refusal, or a damaged archive
        raise UnsafePickleError(src.rel, f"torch.load(weights_only=True) refused it: {str(e).splitlines()[0]}") from None
    tensors = _tensors_of(obj, src.rel)
    out_rel = converted_name(src.rel)
    target = out_dir / out_rel
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata={"format": "pt", "converted_from": src.rel})
    conv = Conversion(src.rel, src.size, file_sha256(src.path), out_rel, tuple(seen), len(tensors))
    return SourceFile(out_rel, target, target.stat().st_size), conv


def check(source, kw: dict) -> tuple[list[SourceFile], list[SourceFile]]:
    """What :func:`converted` will refuse, found without loading any weights.

    Lists the folder, checks every pickle's archive shape and opcodes (it reads data.pkl, not the
    tensors) and the converted names against the files beside them.

    Returns:
        (the files kept as they are, the pickles to convert).
    """
    files = kw.get("files") or scan_folder(Path(source), tuple(kw.get("exclude", ())))
    names = {f.rel for f in files}
    kept, pickles = [], []
    for f in files:
        if not looks_pickled(f.path):
            kept.append(f)
            continue
        if converted_name(f.rel) in names:
            raise InvalidInputError(f"{f.rel}: {converted_name(f.rel)} already exists beside it",
                                    hint=f"archive the safetensors file and --exclude '{f.rel}'")
        scan_pickle(_torch_archive_pickle(f.path, f.rel), f.rel)
        pickles.append(f)
    return kept, pickles


@contextmanager
def converted(source, kw: dict):
    """Yield snapshot keyword arguments with every pickle replaced by its safetensors conversion.

    Args:
        source: the model folder.
        kw: the snapshot keyword arguments (``files``, ``exclude``, ``metadata`` are read).
    """
    import torch

    new_files, pickles = check(source, kw)
    out_dir = Path(tempfile.mkdtemp(prefix="weightvault-convert-"))
    try:
        records = []
        for f in pickles:
            nf, conv = convert_file(f, out_dir)
            new_files.append(nf)
            records.append(conv.to_dict(torch.__version__))
        out = dict(kw, files=sorted(new_files, key=lambda x: x.rel))
        if records:
            out["metadata"] = {**(kw.get("metadata") or {}), "pickle_conversions": records}
        yield out
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
