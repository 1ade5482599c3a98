"""Teacher: an archived version brought back as a live transformers model.

The config and tokenizer files are read from the store (sha256-verified) into
a temporary folder that AutoConfig/AutoTokenizer can read; the weights never
touch the disk. The model is built with its parameters on the meta device (no
memory, no random init) while every stored tensor is decoded chunk by chunk
(on a pool, into one huge-page arena); each is then converted to the target
dtype where that differs and installed as the parameter. Peak memory is the
stored tensors once, plus the converted ones when the dtype changes.

>>> # from weightvault import load_teacher
>>> # model, tokenizer = load_teacher("gpt2@1")          # a Teacher unpacks to these two
>>> # teacher = load_teacher("minilm@1", device="cpu")    # or keep it: teacher.kind == "encoder"

Needs the optional extra ``weightvault[teacher]`` (torch, transformers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.archive import paths
from weightvault.errors import MissingExtraError, NotATransformersModelError

log = logging.getLogger("weightvault")

# Small non-weight files a model folder needs to be rebuilt (config, tokenizer, generation and
# sentence-transformers module configs). Weights and other big blobs are never written out.
AUX_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".vocab")
AUX_MAX_BYTES = 256 << 20

TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}

CAUSAL, MASKED, ENCODER, OTHER = "causal-lm", "masked-lm", "encoder", "other"


@dataclass(frozen=True)
class Teacher:
    """A reloaded version. Unpacks like a tuple: ``model, tokenizer = load_teacher(...)``.

    Attributes:
        model: the transformers model, in eval mode, parameters frozen.
        tokenizer: its tokenizer, or None when the version has no tokenizer files.
        ref: ``NAME@V`` it was loaded from.
        manifest_id: the version's manifest ID (the teacher's exact identity).
        kind: ``causal-lm``, ``masked-lm``, ``encoder`` (AutoModel, sentence embeddings) or ``other``.
        device: the torch device it lives on, e.g. ``cpu`` or ``cuda:0``.
        dtype: the floating dtype of its parameters, e.g. ``float32``.
        pooling: for encoders, the sentence-transformers pooling: ``{"mode": "mean"|"cls"|"max",
            "normalize": bool}`` (mean, unnormalised when the folder says nothing).
        max_seq_length: the ``max_seq_length`` of the folder's ``sentence_bert_config.json``
            (the length sentence-transformers truncates inputs to), or None.
    """

    model: object
    tokenizer: object
    ref: str
    manifest_id: str
    kind: str
    device: str
    dtype: str
    pooling: dict = field(default_factory=dict)
    max_seq_length: int | None = None

    def __iter__(self):
        return iter((self.model, self.tokenizer))


def require_torch(feature: str = "teacher loading"):
    """Import torch and transformers, or raise MissingExtraError naming the extra."""
    try:
        import torch
        import transformers
    except ImportError:
        raise MissingExtraError(feature, "teacher") from None
    return torch, transformers


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``; anything else checked and returned.

    Raises:
        UsageError: not a torch device name, or a device this torch build or machine does not have.
    """
    from weightvault.errors import UsageError

    torch, _ = require_torch()
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return device
    backend = getattr(torch, dev.type, None)
    if dev.type == "mps":
        backend = getattr(torch.backends, "mps", None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise UsageError(f"device {device!r} is not available: this torch ({torch.__version__}) has no "
                         f"{dev.type} device here", hint="use --device cpu (or auto, which picks CUDA when present)")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise UsageError(f"device {device!r} does not exist: {count()} {dev.type} device(s) here",
                         hint=f"use {dev.type}:0 to {dev.type}:{count() - 1}")
    return device


def pick_dtype(device: str, dtype=None):
    """The parameter dtype: as asked, else bf16 on CUDA where supported (fp16 otherwise), fp32 on CPU.

    Raises:
        UsageError: not a floating dtype a model can run in (float32, bfloat16, float16, float64).
    """
    from weightvault.errors import UsageError

    torch, _ = require_torch()
    if dtype is not None:
        name = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
        resolved = getattr(torch, name, None)  # aliases too: half, float, double
        if not isinstance(resolved, torch.dtype):
            raise UsageError(f"unknown dtype {name!r}", hint="use float32, bfloat16 or float16")
        if not resolved.is_floating_point:
            raise UsageError(f"dtype {name!r}: models run in floating-point dtypes only",
                             hint="use float32, bfloat16 or float16")
        return resolved
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def check_device_dtype(device: str | None = "auto", dtype=None) -> None:
    """Refuse a bad ``--device``/``--dtype`` before any work (the UsageErrors of pick_device/pick_dtype)."""
    pick_dtype(pick_device(device or "auto"), dtype)


def position_limit(model) -> int | None:
    """How many positions a learned absolute position table gives the model (GPT-2's ``wpe``,
    BERT/RoBERTa/OPT position embeddings, less RoBERTa's padding offset or OPT's offset), or None.

    Only such a table is a hard limit: an index past it fails inside the model. Rotary and ALiBi
    models (Llama, Mistral, Qwen, GPT-NeoX) have none; their ``max_position_embeddings`` is what
    they were trained for (rope scaling goes past it), so they are not limited here.
    """
    import torch

    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, torch.nn.Embedding) and (leaf == "wpe" or "position" in leaf):
            n = mod.num_embeddings
            offset = getattr(mod, "offset", None)
            if isinstance(offset, int):
                n -= offset  # OPT's learned positions start at index 2
            elif mod.padding_idx is not None:
                n -= mod.padding_idx + 1  # RoBERTa's start after the padding index
            return n if n > 0 else None
    return None


def vocab_size(model) -> int | None:
    """Entries of the model's output distribution (its logits' last dimension), or None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    w = getattr(head, "weight", None)
    if w is not None and w.dim() == 2:
        return int(w.shape[0])
    n = getattr(getattr(model, "config", None), "vocab_size", None)
    return n if isinstance(n, int) and n > 0 else None


def encoder_max_length(teacher, asked: int | None = None) -> int:
    """The length encoder inputs are truncated to.

    ``asked`` (``--max-length``) when given; else the folder's sentence-transformers
    ``max_seq_length``; else the tokenizer's ``model_max_length`` (at most 8192). Never more
    than the model's positions.

    Raises:
        UsageError: ``asked`` is below 1 or above the model's positions.
    """
    from weightvault.errors import UsageError

    limit = position_limit(teacher.model)
    if asked is not None:
        if asked < 1 or (limit is not None and asked > limit):
            raise UsageError(f"--max-length {asked} does not fit {teacher.ref}"
                             + (f", which has {limit} positions" if limit else ""),
                             hint=f"use --max-length 1 to {limit}" if limit else "use --max-length 1 or more")
        return asked
    n = teacher.max_seq_length or min(getattr(teacher.tokenizer, "model_max_length", 512) or 512, 8192)
    return min(n, limit) if limit else n


def load_teacher(ref, device: str = "auto", dtype=None, vault=None) -> Teacher:
    """Rebuild an archived version as a transformers model and tokenizer, straight from the store.

    Args:
        ref: ``NAME@V`` (or ``NAME`` for the latest), or a ResolvedVersion.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: torch dtype or its name for floating parameters; default bf16 on CUDA, fp32 on CPU.
        vault: the Vault to read; default ``Vault.open()`` (``$WEIGHTVAULT_STORE``).
    Returns:
        A :class:`Teacher` (unpacks to ``model, tokenizer``).
    Raises:
        MissingExtraError: torch or transformers is not installed.
        NotATransformersModelError: no config.json, an unknown architecture, or no safetensors weights.

    Example:
        >>> # model, tok = load_teacher("gpt2@1", device="cpu")
    """
    torch, transformers = require_torch()
    if vault is None:
        from weightvault.vault import Vault

        vault = Vault.open()
    resolved = vault.resolve(ref) if not hasattr(ref, "manifest_id") else ref
    manifest = vault.manifest_by_id(resolved.manifest_id)
    name = f"{manifest.model}@{manifest.version}"
    device = pick_device(device)
    target = pick_dtype(device, dtype)
    if manifest.file("config.json") is None:
        raise NotATransformersModelError(name, "it has no config.json")
    files = weight_files(manifest)
    if not files:
        raise NotATransformersModelError(name, "it has no safetensors weights")
    # Weights decode on a pool (zstd, the C transforms and hashing release the GIL) while this
    # thread reads the config and tokenizer and builds the empty model.
    with WeightDecoder(torch, vault.store, files) as weights:
        with tempfile.TemporaryDirectory(prefix="wv-teacher-") as tmp:
            write_aux_files(vault, resolved, manifest, Path(tmp))
            config = _load_config(transformers, Path(tmp), name)
            cls, kind = model_class(transformers, config, Path(tmp), name)
            tokenizer = _load_tokenizer(transformers, Path(tmp))
            pooling = read_pooling(Path(tmp)) if kind == ENCODER else {}
            max_seq = read_max_seq_length(Path(tmp)) if kind in (ENCODER, MASKED) else None
        model = build_empty(torch, cls, config)
        load_weights(torch, weights, model, device, target, name)
    model.to(device)  # buffers (position ids, rotary tables) were built on the CPU
    model.eval()
    model.requires_grad_(False)
    return Teacher(model, tokenizer, name, resolved.manifest_id, kind, str(next(model.parameters()).device),
                   str(target).replace("torch.", ""), pooling, max_seq)


def write_aux_files(vault, ref, manifest, folder: Path) -> list[str]:
    """Write the small non-weight files (config, tokenizer, module configs) of a version into ``folder``."""
    written = []
    for f in manifest.files:
        if f.format == "safetensors" or not f.path.endswith(AUX_SUFFIXES) or f.size > AUX_MAX_BYTES:
            continue
        target = paths.safe_target(folder, f.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(vault.read_file(manifest, f.path))
        written.append(f.path)
    return written


def _load_config(transformers, folder: Path, name: str):
    try:
        return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NotATransformersModelError(name, f"config.json: {reason[:200]}") from None


def model_class(transformers, config, folder: Path, name: str):
    """Pick the model class from the config: (class, kind).

    The first architecture transformers knows wins; without one, a causal LM head when the
    model type has one, else the bare encoder (AutoModel). A sentence-transformers folder
    (modules.json) always loads the bare encoder, as sentence-transformers itself does.
    """
    auto = transformers.AutoModel
    if (folder / "modules.json").exists():
        return _auto_class(auto, config, name), ENCODER
    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls, kind_of(arch)
    for auto_cls, kind in ((transformers.AutoModelForCausalLM, CAUSAL), (auto, ENCODER)):
        with contextlib.suppress(ValueError, KeyError):
            return _auto_class(auto_cls, config, name), kind
    raise NotATransformersModelError(name, f"no model class for model_type {config.model_type!r}")


def _auto_class(auto_cls, config, name):
    mapping = auto_cls._model_mapping
    try:
        return mapping[type(config)]
    except KeyError:
        raise ValueError(f"{auto_cls.__name__} has no class for {type(config).__name__}") from None


def kind_of(arch: str) -> str:
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return CAUSAL
    if arch.endswith("ForMaskedLM"):
        return MASKED
    if arch.endswith(("Model", "ForSentenceEmbedding")) and "For" not in arch:
        return ENCODER
    return OTHER


def _load_tokenizer(transformers, folder: Path):
    names = {p.name for p in folder.iterdir()}
    if not names & {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model"}:
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, OSError, KeyError) as e:
        log.warning("tokenizer files present but unreadable: %s", str(e).splitlines()[0] if str(e) else e)
        return None


def read_pooling(folder: Path) -> dict:
    """The sentence-transformers pooling of a folder: mode and whether a Normalize module follows."""
    pooling = {"mode": "mean", "normalize": False}
    modules = folder / "modules.json"
    if not modules.exists():
        return pooling
    with contextlib.suppress(ValueError, OSError, TypeError, AttributeError):
        for mod in json.loads(modules.read_text()):
            kind = str(mod.get("type", ""))
            if kind.endswith("Normalize"):
                pooling["normalize"] = True
            elif kind.endswith("Pooling"):
                cfg = json.loads((folder / mod.get("path", "") / "config.json").read_text())
                for mode in ("cls", "max", "mean"):
                    if cfg.get(f"pooling_mode_{mode}_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"):
                        pooling["mode"] = mode
                        break
    return pooling


def read_max_seq_length(folder: Path) -> int | None:
    """``max_seq_length`` of a sentence-transformers folder's ``sentence_bert_config.json``, or None."""
    with contextlib.suppress(ValueError, OSError, TypeError, AttributeError):
        n = json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length")
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


@contextlib.contextmanager
def _params_on_meta(torch):
    """Create every nn.Parameter on the meta device while buffers stay real.

    Parameters are replaced by the stored tensors, so allocating (and randomly
    initialising) them would only cost time and double the peak memory; buffers
    (position ids, rotary tables, causal masks) are computed in __init__ and are
    often not in the checkpoint, so they must be real. (accelerate's
    init_empty_weights(include_buffers=False) does the same.)
    """
    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            kwargs = {"requires_grad": param.requires_grad}
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def build_empty(torch, cls, config):
    """Instantiate ``cls`` from ``config`` with meta parameters and real buffers."""
    with _params_on_meta(torch), _no_init_weights():
        if hasattr(cls, "_from_config"):
            return cls._from_config(config)
        return cls(config)


def _no_init_weights():
    """transformers' own switch to skip random init (moved between releases); a no-op if absent."""
    for mod in ("transformers.initialization", "transformers.modeling_utils"):
        with contextlib.suppress(ImportError, AttributeError):
            import importlib

            return importlib.import_module(mod).no_init_weights()
    return contextlib.nullcontext()


def weight_files(manifest) -> list:
    """The safetensors files holding the model's weights: the index's shards, else top-level files."""
    index = manifest.file("model.safetensors.index.json")
    top = [f for f in manifest.files if f.format == "safetensors" and "/" not in f.path]
    if index is not None:
        return top  # shard names come from the index, all top-level
    single = manifest.file("model.safetensors")
    return [single] if single is not None else top


def _param_slots(model) -> dict:
    """Every name a parameter or buffer is reachable under -> list of (module, attr, is_param)."""
    slots: dict[str, list] = {}
    by_obj: dict[int, list] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is None:
                continue
            full = f"{mod_name}.{attr}" if mod_name else attr
            by_obj.setdefault(id(p), []).append((module, attr, True))
            slots[full] = by_obj[id(p)]  # tied names share one alias list
        for attr, b in module._buffers.items():
            if b is not None:
                full = f"{mod_name}.{attr}" if mod_name else attr
                slots.setdefault(full, []).append((module, attr, False))
    return slots


def _match(slots: dict, name: str, prefix: str) -> str | None:
    if name in slots:
        return name
    if prefix and f"{prefix}.{name}" in slots:
        return f"{prefix}.{name}"
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in slots:
        return name[len(prefix) + 1:]
    for old, new in ((".gamma", ".weight"), (".beta", ".bias")):  # pre-2020 BERT/LayerNorm names
        if name.endswith(old):
            return _match(slots, name[: -len(old)] + new, prefix)
    return None


def _torch_dtype(torch, f, t):
    dt = TORCH_DTYPES.get(t.dtype)
    if dt is None or not hasattr(torch, dt):
        raise NotATransformersModelError(f.path, f"tensor {t.name!r} has dtype {t.dtype} torch cannot hold")
    return getattr(torch, dt)


ARENA_ALIGN = 64  # every tensor's bytes start on a cache line (and any dtype's alignment)


def _arena(size: int):
    """One writable buffer of ``size`` bytes for all decoded tensors, on huge pages where the OS allows.

    A private anonymous mapping with MADV_HUGEPAGE is faulted in 2 MiB at a time:
    on all-MiniLM-L6-v2 (87 MiB) allocating and first touching the tensors' memory
    took 57 ms in 4 KiB pages and 10 ms in huge pages (bench/teacher.py's machine),
    which was a third of the decode's CPU time. Elsewhere (no mmap flags, no THP)
    it is an ordinary anonymous mapping. Freed (unmapped) when the last tensor
    viewing it is gone.
    """
    import mmap

    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    try:
        arena = mmap.mmap(-1, size, flags=flags) if flags else mmap.mmap(-1, size)
    except (OSError, ValueError):
        return bytearray(size)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            arena.madvise(mmap.MADV_HUGEPAGE)
    return arena


def _stored_buffers(torch, files):
    """Uninitialised CPU byte buffers for every stored tensor, views into one arena, with typed views.

    Returns:
        (path, tensor name) -> (byte tensor, typed and shaped view) in checkpoint order.
    """
    layout, size = [], 0
    for f in files:
        for t in f.tensors:
            dt = _torch_dtype(torch, f, t)
            layout.append((f, t, dt, size))
            size += -(-(t.end - t.begin) // ARENA_ALIGN) * ARENA_ALIGN
    arena = _arena(max(size, 1))
    out = {}
    for f, t, dt, off in layout:
        n = t.end - t.begin
        raw = torch.frombuffer(arena, dtype=torch.uint8, count=n, offset=off) if n else torch.empty(0, dtype=torch.uint8)
        out[(f.path, t.name)] = (raw, raw.view(dt).reshape(t.shape))
    return out


class WeightDecoder:
    """Decodes every stored tensor of ``files`` straight into its own CPU buffer, on a thread pool.

    Every chunk is one task that decodes into its place in the tensor's buffer
    (no intermediate copy) and checks its hash there. Decoding starts on
    entering and runs while the caller does other work; :meth:`tensor` waits for
    one tensor, and the calling thread decodes chunks no worker has started yet
    rather than sleep. The pool has one thread less than there are cores, as the
    caller is busy meanwhile (config, tokenizer, the empty model) and then joins
    in: one thread per core, none of them waiting for the GIL behind another.
    Leaving the block cancels what is left and waits for the rest, so no task
    writes into a buffer after it. Peak memory: the stored tensors once, plus a
    chunk's temporaries per thread.
    """

    def __init__(self, torch, store, files, workers: int | None = None):
        self.torch, self.store, self.files = torch, store, files
        self.workers = workers or max(1, (os.cpu_count() or 2) - 1)
        self.jobs: dict[tuple[str, str], tuple] = {}
        self.tasks: list[list] = []  # [future or None once done here, chunk ID, destination view]
        self._tail = 0  # tasks from here on were taken by the calling thread or a worker
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> WeightDecoder:
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="wv-teacher")
        try:
            buffers = _stored_buffers(self.torch, self.files)
            for f in self.files:
                for t in f.tensors:
                    raw, typed = buffers[(f.path, t.name)]
                    view, off, tasks = memoryview(raw.numpy()), 0, []
                    for cid, n in f.tensor_chunks(t):
                        dest = view[off: off + n]
                        tasks.append([self.pool.submit(self.store.read_chunk_into, cid, dest), cid, dest])
                        off += n
                    self.jobs[(f.path, t.name)] = (typed, tasks)
                    self.tasks.extend(tasks)
            self._tail = len(self.tasks)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _take(self, task) -> bool:
        """Decode a still-queued task on this thread; False when a worker has (or had) it."""
        if task[0] is None or not task[0].cancel():
            return False
        task[0] = None
        self.store.read_chunk_into(task[1], task[2])
        return True

    def _help_once(self) -> bool:
        """Decode the last queued chunk here (workers take the first); False when none is queued.

        A cursor walks down from the end once, so helping costs O(chunks) over the whole load.
        """
        while self._tail > 0:
            self._tail -= 1
            if self._take(self.tasks[self._tail]):
                return True
        return False

    def tensor(self, f, t):
        """The decoded tensor (typed, shaped), once all its chunks are verified."""
        typed, tasks = self.jobs[(f.path, t.name)]
        for task in tasks:
            self._take(task)
        for task in tasks:
            while task[0] is not None and not task[0].done() and self._help_once():
                pass
            if task[0] is not None:
                task[0].result()
        return typed

    def __exit__(self, *exc) -> None:
        for task in self.tasks:
            if task[0] is not None:
                task[0].cancel()
        self.pool.shutdown(wait=True)


def load_weights(torch, weights: WeightDecoder, model, device: str, dtype, name: str) -> None:
    """Install every decoded tensor in ``model``'s parameters (and persistent buffers), in checkpoint order."""
    slots = _param_slots(model)
    prefix = getattr(model, "base_model_prefix", "") or ""
    loaded: set[int] = set()
    for f in weights.files:
        for t in f.tensors:
            key = _match(slots, t.name, prefix)
            if key is None:
                log.debug("%s: stored tensor %s has no place in %s", name, t.name, type(model).__name__)
                continue
            _install(torch, slots[key], weights.tensor(f, t), device, dtype, t.name)
            loaded.add(id(slots[key]))
    _finish_missing(torch, model, slots, loaded, device, dtype, name)


def _install(torch, aliases, tensor, device, dtype, stored_name):
    module0, attr0, is_param = aliases[0]
    current = getattr(module0, attr0)
    if tuple(current.shape) != tuple(tensor.shape):
        raise NotATransformersModelError(
            stored_name, f"stored shape {tuple(tensor.shape)} does not fit the model's {tuple(current.shape)}")
    if tensor.is_floating_point():
        tensor = tensor.to(dtype if is_param else current.dtype)
    tensor = tensor.to(device)
    if is_param:
        param = torch.nn.Parameter(tensor, requires_grad=False)
        for module, attr, _ in aliases:  # tied names all get the same Parameter
            module._parameters[attr] = param
    else:
        for module, attr, _ in aliases:
            module._buffers[attr] = tensor


def _finish_missing(torch, model, slots, loaded, device, dtype, name):
    """Parameters the checkpoint lacks: tie them as the config says; refuse any other.

    A tied parameter (lm_head <- input embeddings, a decoder bias <- its head's bias) is
    not stored by ``save_pretrained`` and comes back through ``model.tie_weights()``;
    buffers (position ids, rotary tables) are computed in ``__init__`` and never counted
    here. A parameter the model class declares optional (``_keys_to_ignore_on_load_missing``)
    is initialised by the model's own ``_init_weights`` under a fixed seed, so a reload is
    reproducible. Anything else would be random values in a teacher whose outputs are meant
    to be regenerated bit for bit later: refused.

    Raises:
        InvalidInputError: naming the parameters the checkpoint lacks.
    """
    import re

    from weightvault.errors import InvalidInputError

    missing = [k for k, al in slots.items() if al[0][2] and id(al) not in loaded
               and getattr(al[0][0], al[0][1]).device.type == "meta"]
    if not missing:
        return
    with contextlib.suppress(Exception):  # transformers ties lm_head to the embeddings here
        model.tie_weights()
    still = [k for k in missing if getattr(slots[k][0][0], slots[k][0][1]).device.type == "meta"]
    if not still:
        return
    optional = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or ())]
    # An encoder's pooler: sentence-transformers folders saved from a masked-LM or RoBERTa checkpoint
    # often lack it, and neither weightvault's pooling nor sentence-transformers' reads it.
    optional.append(re.compile(r"(^|\.)pooler\."))
    refused = [k for k in still if not any(p.search(k) for p in optional)]
    if refused:
        shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        raise InvalidInputError(
            f"{name}: the checkpoint lacks {len(refused)} parameter{'s' if len(refused) > 1 else ''} the model "
            f"needs ({shown}); filling {'them' if len(refused) > 1 else 'it'} with random values would make "
            f"every run differ", hint="archive the complete checkpoint (the folder save_pretrained writes)")
    log.warning("%s: %d optional parameters are not in the checkpoint and were initialised with seed 0: %s",
                name, len(still), ", ".join(still[:5]) + (" …" if len(still) > 5 else ""))
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):  # manual_seed seeds every device: give all their state back
        torch.manual_seed(0)
        for k in still:
            module, attr, _ = slots[k][0]
            meta = getattr(module, attr)
            module._parameters[attr] = torch.nn.Parameter(torch.zeros(meta.shape, dtype=dtype, device=device),
                                                          requires_grad=False)
            with contextlib.suppress(Exception):
                model._init_weights(module)
