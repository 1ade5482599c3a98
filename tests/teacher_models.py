"""Tiny real models for the teacher tests, built offline: a char-level-ish BPE tokenizer and a GPT-2."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the vault keeps every version of the weights",
    "a teacher answers and the student learns",
    "history is kept one chunk at a time",
    "distillation data is regenerated from the archive",
    "the catalog knows which student came from which teacher",
] * 4


def make_tokenizer(folder: Path):
    """Train a byte-level BPE (vocab 120) on CORPUS and save it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<eos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>")
    fast.save_pretrained(str(folder))
    return fast


def make_tiny_gpt2(folder: Path, *, steps: int = 30, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (n_embd 32) trained briefly on CORPUS, saved with its tokenizer to ``folder``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = tok([t + "<eos>" for t in CORPUS[:5]], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(str(folder))
    return folder


def make_tiny_bert_mlm(folder: Path, *, seed: int = 0) -> Path:
    """A 2-layer BertForMaskedLM (hidden 32, random weights) with the CORPUS tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(cfg).eval().save_pretrained(str(folder))
    return folder
