"""Behaviour diff: a tiny GPT-2 against itself and against a copy with one layer perturbed; MiniLM embeddings."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from diff_fixtures import PROMPTS, make_tiny_gpt2, perturb_layer, write_prompts  # noqa: E402

from weightvault.vault import Vault  # noqa: E402


@pytest.fixture(scope="module")
def gpt_store(tmp_path_factory):
    """gpt@1 (random init, 3 layers) and gpt@2 (layer 1 perturbed), and a prompt file."""
    tmp = tmp_path_factory.mktemp("gpt-diff")
    orig = make_tiny_gpt2(tmp / "gpt")
    changed = perturb_layer(orig, tmp / "gpt-perturbed", layer=1)
    v = Vault.init(tmp / "store")
    v.snapshot(orig, "gpt")
    v.snapshot(tmp / "gpt-perturbed", "gpt")
    return {"root": tmp / "store", "orig": orig, "perturbed": tmp / "gpt-perturbed", "changed": changed,
            "prompts": write_prompts(tmp / "prompts.jsonl")}


def test_version_against_itself_kl_zero_agreement_one_no_chunk_decoded_for_weights(gpt_store, cli):
    r = cli("diff", "gpt@1", "gpt@1", "--prompts", gpt_store["prompts"], "--json", "--max-new-tokens", "4",
            store=gpt_store["root"])
    assert r.rc == 0, r
    d = r.json()
    assert {t["status"] for t in d["tensors"]} == {"same"}
    assert d["summary"]["chunks_read"] == 0
    b = d["behaviour"]
    assert b["kind"] == "causal" and b["identical_versions"] is True and b["prompts"] == len(PROMPTS)
    s = b["summary"]
    assert s["kl_mean"] == 0 and s["kl_max"] == 0 and s["top1_agreement"] == 1
    assert s["perplexity_a"] == s["perplexity_b"] and s["generations_differ"] == 0


def test_two_separately_loaded_copies_agree_exactly(gpt_store):
    import torch

    from weightvault.diff_behaviour import compare_causal_prompt
    from weightvault.teacher import load_teacher

    v = Vault.open(gpt_store["root"])
    a, b = load_teacher("gpt@1", device="cpu", vault=v), load_teacher("gpt@1", device="cpu", vault=v)
    assert a.model is not b.model
    ids = a.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    c = compare_causal_prompt(torch, a.model, b.model, ids)
    assert c["kl"] == [0.0] * ids.shape[1] and all(c["top1"])


def test_perturbed_layer_kl_positive_agreement_below_one_layer_on_top(gpt_store, cli):
    r = cli("diff", "gpt@1", "gpt@2", "--prompts", gpt_store["prompts"], "--json", store=gpt_store["root"])
    assert r.rc == 0, r
    d = r.json()
    assert {t["name"] for t in d["tensors"] if t["status"] == "changed"} == set(gpt_store["changed"])
    assert d["layers"][0]["layer"] == "transformer.h.1" and d["layers"][0]["rel_l2"] > 0
    assert all(x["rel_l2"] == 0 for x in d["layers"][1:])
    b = d["behaviour"]
    assert b["identical_versions"] is False and b["stored_topk"] is None  # no distillation runs here
    assert b["summary"]["kl_mean"] > 0 and b["summary"]["top1_agreement"] < 1
    assert b["summary"]["positions"] == sum(r["tokens"] for r in b["per_prompt"])
    worst = max(b["per_prompt"], key=lambda r: r["kl_mean"])
    assert b["worst"][0] == worst["index"]
    differ = [r for r in b["per_prompt"] if r["text_a"] != r["text_b"]]
    assert b["summary"]["generations_differ"] == len(differ)


def test_kl_and_perplexity_match_transformers_on_the_original_folders(gpt_store, cli):
    """The figures agree with an independent computation from the folders, not the store."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    r = cli("diff", "gpt@1", "gpt@2", "--prompts", gpt_store["prompts"], "--json", "--max-new-tokens", "0",
            store=gpt_store["root"])
    b = r.json()["behaviour"]
    tok = AutoTokenizer.from_pretrained(str(gpt_store["orig"]))
    ma = GPT2LMHeadModel.from_pretrained(str(gpt_store["orig"])).eval()
    mb = GPT2LMHeadModel.from_pretrained(str(gpt_store["perturbed"])).eval()
    for row in b["per_prompt"]:
        ids = tok(row["prompt"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            la, lb = ma(ids).logits[0].double(), mb(ids).logits[0].double()
            loss_a = ma(ids, labels=ids).loss.item()
        kl = torch.nn.functional.kl_div(lb.log_softmax(-1), la.log_softmax(-1), log_target=True,
                                        reduction="none").sum(-1)
        assert row["kl_per_position"] == pytest.approx(kl.tolist(), rel=1e-6, abs=1e-12)
        assert row["top1_agreement"] == pytest.approx((la.argmax(-1) == lb.argmax(-1)).double().mean().item())
        assert row["perplexity_a"] == pytest.approx(math.exp(loss_a), rel=1e-5)
        assert row["text_a"] == ""


def test_cli_text_shows_worst_prompts_and_generations(gpt_store, cli):
    r = cli("diff", "gpt@1", "gpt@2", "--prompts", gpt_store["prompts"], "--max-new-tokens", "3",
            store=gpt_store["root"])
    assert r.rc == 0, r
    assert "behaviour" in r.out and "worst prompts" in r.out and "transformer.h.1" in r.out


def test_encoder_embeddings_cosine(tmp_path, minilm_dir, cli):
    from weightvault.demo import make_finetune

    v = Vault.init(tmp_path / "store")
    v.snapshot(minilm_dir, "minilm")
    make_finetune(minilm_dir, tmp_path / "ft", layers=(4, 5), scale=0.05)
    v.snapshot(tmp_path / "ft", "minilm")
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    same = cli("diff", "minilm@1", "minilm@1", "--prompts", prompts, "--json", store=tmp_path / "store").json()
    assert same["behaviour"]["kind"] == "encoder"
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-12) for r in same["behaviour"]["per_prompt"])
    d = cli("diff", "minilm@1", "minilm@2", "--prompts", prompts, "--json", store=tmp_path / "store").json()
    cos = [r["cosine"] for r in d["behaviour"]["per_prompt"]]
    assert all(0.9 < c < 1.0 for c in cos)
    assert d["behaviour"]["summary"]["cosine_min"] == min(cos)
    assert d["behaviour"]["worst"][0] == cos.index(min(cos))


def test_stored_topk_of_distillation_runs_is_reused(gpt_store, tmp_path, cli):
    """Both versions distilled on the same prompt file: texts come from the runs, KL over their top-k."""
    pytest.importorskip("pyarrow")
    from weightvault import distill
    from weightvault.distill_gen import DistillSettings

    v = Vault.init(tmp_path / "store")
    v.snapshot(gpt_store["orig"], "gpt")
    v.snapshot(gpt_store["perturbed"], "gpt")
    settings = DistillSettings(max_new_tokens=6, top_k=8, batch_size=2, logprob_dtype="float32")
    runs = [distill.run(v, ref, gpt_store["prompts"], tmp_path / f"{n}.parquet", settings, device="cpu")
            for n, ref in (("a", "gpt@1"), ("b", "gpt@2"))]
    d = cli("diff", "gpt@1", "gpt@2", "--prompts", gpt_store["prompts"], "--json", store=tmp_path / "store").json()
    b = d["behaviour"]
    st = b["stored_topk"]
    assert (st["run_a"], st["run_b"]) == (runs[0].run_id, runs[1].run_id) and st["top_k"] == 8
    assert st["positions"] >= len(PROMPTS) and st["kl_mean"] > 0 and st["top1_agreement"] < 1
    assert b["settings"]["generations_from_runs"] == [runs[0].run_id, runs[1].run_id]
    import pyarrow.parquet as pq

    stored_a = [r["text"] for r in pq.read_table(str(tmp_path / "a.parquet")).to_pylist()]
    assert [r["text_a"] for r in b["per_prompt"]] == stored_a
    # the full-vocabulary figures are still computed from the models
    assert b["summary"]["kl_mean"] > 0 and b["summary"]["positions"] == sum(r["tokens"] for r in b["per_prompt"])
    # B byte-identical to A (loaded once): the runs named are still A's and B's own
    v.snapshot(gpt_store["orig"], "gpt")
    run_c = distill.run(v, "gpt@3", gpt_store["prompts"], tmp_path / "c.parquet", settings, device="cpu")
    d = cli("diff", "gpt@1", "gpt@3", "--prompts", gpt_store["prompts"], "--json", store=tmp_path / "store").json()
    assert d["behaviour"]["identical_versions"] is True
    assert (d["behaviour"]["stored_topk"]["run_a"], d["behaviour"]["stored_topk"]["run_b"]) == (
        runs[0].run_id, run_c.run_id)
    assert d["behaviour"]["settings"]["generations_from_runs"] == [runs[0].run_id, run_c.run_id]


def test_position_blocks_do_not_change_the_figures(gpt_store, monkeypatch):
    """Long prompts are compared a block of positions at a time; block edges must not show."""
    import torch
    from transformers import GPT2LMHeadModel

    from weightvault import diff_behaviour

    a = GPT2LMHeadModel.from_pretrained(str(gpt_store["orig"])).eval()
    b = GPT2LMHeadModel.from_pretrained(str(gpt_store["perturbed"])).eval()
    ids = torch.arange(3, 40)[None]
    whole = diff_behaviour.compare_causal_prompt(torch, a, b, ids)
    monkeypatch.setattr(diff_behaviour, "POSITION_BLOCK", 5)
    blocked = diff_behaviour.compare_causal_prompt(torch, a, b, ids)
    assert blocked["kl"] == pytest.approx(whole["kl"], rel=1e-12) and blocked["top1"] == whole["top1"]
    assert blocked["nll_a"] == pytest.approx(whole["nll_a"], rel=1e-12) and blocked["n_pred"] == 36
    with torch.no_grad():
        assert blocked["nll_a"] / 36 == pytest.approx(a(ids, labels=ids).loss.item(), rel=1e-5)


def test_behaviour_of_a_version_that_is_not_a_transformers_model_is_one_line_error(tmp_path, toy_model, cli):
    v = Vault.init(tmp_path / "store")
    v.snapshot(toy_model, "toy")
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    r = cli("diff", "toy@1", "toy@1", "--prompts", prompts, store=tmp_path / "store")
    assert r.rc == 4 and "toy@1" in r.err and len(r.err.strip().splitlines()) == 1, r
    html = tmp_path / "r.html"
    r = cli("diff", "toy@1", "toy@1", "--prompts", prompts, "--html", html, store=tmp_path / "store")
    assert r.rc == 4 and not html.exists()  # nothing half-written


def test_prompt_beyond_the_positions_or_empty_is_one_line_naming_its_line(gpt_store, tmp_path, cli):
    """128 positions: a prompt over them, or one that leaves no room for --max-new-tokens, is refused up front."""
    html = tmp_path / "r.html"
    base = ("diff", "gpt@1", "gpt@2", "--html", html, "--device", "cpu")
    long = write_prompts(tmp_path / "long.jsonl", [PROMPTS[0], "a b c d e f g " * 40])
    r = cli(*base, "--prompts", long, store=gpt_store["root"])
    assert r.rc == 4 and f"{long}:2:" in r.err and "128 positions" in r.err and "shorten" in r.err, r
    assert len(r.err.strip().splitlines()) == 1 and "internal error" not in r.err and not html.exists()
    n = cli("diff", "gpt@1", "gpt@1", "--prompts", write_prompts(tmp_path / "one.jsonl", ["a b c d e f g " * 8]),
            "--json", "--max-new-tokens", "0", store=gpt_store["root"]).json()["behaviour"]["per_prompt"][0]["tokens"]
    fits = write_prompts(tmp_path / "fits.jsonl", ["a b c d e f g " * 8])
    r = cli(*base, "--prompts", fits, "--max-new-tokens", 128 - n + 1, store=gpt_store["root"])
    assert r.rc == 4 and f"{fits}:1:" in r.err and f"use --max-new-tokens {128 - n} or less" in r.err, r
    assert not html.exists()
    r = cli(*base, "--prompts", fits, "--max-new-tokens", 128 - n, store=gpt_store["root"])
    assert r.rc == 0 and html.exists(), r
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "a b"}\n\n{"prompt": ""}\n')
    r = cli("diff", "gpt@1", "gpt@2", "--prompts", empty, store=gpt_store["root"])
    assert r.rc == 4 and f"{empty}:3: tokenizes to no tokens" in r.err and len(r.err.strip().splitlines()) == 1, r


def test_encoder_diff_truncates_like_distill_at_max_seq_length(tmp_path, minilm_dir):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from weightvault.diff_behaviour import embed
    from weightvault.teacher import load_teacher

    v = Vault.init(tmp_path / "store")
    v.snapshot(minilm_dir, "minilm")
    teacher = load_teacher("minilm@1", device="cpu", vault=v)
    assert teacher.max_seq_length == 256
    text = " ".join(["the archive keeps every version of the weights"] * 60)
    tok, model = AutoTokenizer.from_pretrained(str(minilm_dir)), AutoModel.from_pretrained(str(minilm_dir)).eval()
    enc = tok(text, return_tensors="pt", truncation=True, max_length=256)
    assert enc["input_ids"].shape[1] == 256 < len(tok(text)["input_ids"])
    with torch.no_grad():
        want = model(**enc).last_hidden_state[0].double().mean(0)
    assert torch.allclose(embed(torch, teacher, text), want, atol=1e-5)
