"""Helpers for the diff tests: a tiny GPT-2 made offline, a perturbed copy, a prompt file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PROMPTS = [
    "The archive keeps every version",
    "Weights change a little with each fine-tune",
    "a b c d e f g",
    "Distillation needs the old teacher back",
    "hello world, hello vault",
    "Numbers 1 2 3 4 5 6 7 8 9",
]

CORPUS = PROMPTS + ["the quick brown fox jumps over the lazy dog", "models are archived as history"] * 3


def make_tokenizer(folder: Path):
    """A byte-level BPE tokenizer trained here on a few sentences (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.save_pretrained(str(folder))
    return fast


def make_tiny_gpt2(folder: Path, *, layers: int = 3, seed: int = 0) -> Path:
    """A randomly initialised GPT-2 (a few layers, width 32) with its tokenizer, saved with save_pretrained."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=layers, n_head=2,
                     bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    return folder


def perturb_layer(src: Path, dst: Path, layer: int, *, scale: float = 0.05, seed: int = 1) -> list[str]:
    """Copy a model folder with every float tensor of ``transformer.h.<layer>.`` nudged; returns their names."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    tensors = load_file(str(path))
    rng = np.random.default_rng(seed)
    names = sorted(n for n in tensors if n.startswith(f"transformer.h.{layer}.") and tensors[n].dtype == np.float32)
    for n in names:
        tensors[n] = (tensors[n] + scale * rng.standard_normal(tensors[n].shape)).astype(np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return names


def write_prompts(path: Path, prompts=PROMPTS) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path
