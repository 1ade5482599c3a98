"""Teacher reload and distillation: a tiny GPT-2 trained in the test, and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import store_snapshot_state, toy_tensors, write_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pq = pytest.importorskip("pyarrow.parquet")

from teacher_models import make_tiny_gpt2

from weightvault import distill, distill_drift
from weightvault.distill_gen import DistillSettings
from weightvault.teacher import load_teacher

PROMPTS = ["the vault", "a teacher answers", "history", "the catalog knows which student", "distillation"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "tiny-gpt2")


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    p = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": t}) if i % 2 == 0 else json.dumps({"text": t}) for i, t in enumerate(PROMPTS)]
    p.write_text("\n".join(lines) + "\n\n")
    return p


@pytest.fixture
def gpt2_vault(vault, gpt2_dir):
    vault.snapshot(gpt2_dir, "tiny-gpt2")
    return vault


def _catalog_and_events(vault) -> tuple:
    _, runs = vault.sql("SELECT count(*) FROM distill_runs")
    return runs[0][0], sorted(vault.store.list_event_ids()), sorted(r.model for r in vault.store.list_refs())


# -- load ------------------------------------------------------------------------


def test_load_teacher_matches_from_pretrained_exactly(gpt2_vault, gpt2_dir):
    teacher = load_teacher("tiny-gpt2@1", device="cpu", vault=gpt2_vault)
    model, tok = teacher  # unpacks like a tuple
    assert teacher.kind == "causal-lm" and teacher.device == "cpu" and teacher.dtype == "float32"
    assert teacher.manifest_id == gpt2_vault.resolve("tiny-gpt2@1").manifest_id
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as in the original
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir)).eval()
    ids = tok(["the vault keeps", "a"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, ref(**ids).logits)
    for name, p in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], p), name


def test_sharded_bf16_checkpoint_loads_bit_exact(vault, tmp_path, gpt2_dir):
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir), dtype=torch.bfloat16)
    folder = tmp_path / "bf16"
    ref.save_pretrained(str(folder), max_shard_size="20KB")
    for f in gpt2_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            (folder / f.name).write_bytes(f.read_bytes())
    assert (folder / "model.safetensors.index.json").exists()
    vault.snapshot(folder, "tiny-bf16")
    model, _ = load_teacher("tiny-bf16", device="cpu", vault=vault)  # fp32 on CPU: bf16 bit patterns upcast
    assert next(model.parameters()).dtype == torch.float32
    for name, p in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], p.float()), name
    kept, _ = load_teacher("tiny-bf16", device="cpu", dtype="bfloat16", vault=vault)
    assert all(torch.equal(kept.state_dict()[n], p) for n, p in ref.state_dict().items())


@pytest.mark.parametrize("workers", [1, 3])
def test_weight_decoder_with_the_caller_helping_is_exact_and_names_a_damaged_chunk(vault, tmp_path, gpt2_dir,
                                                                                  store_dir, workers):
    from safetensors.torch import load_file

    from weightvault.errors import ChunkCorruptError
    from weightvault.teacher import WeightDecoder, weight_files

    ref = transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir))
    folder = tmp_path / "shards"
    ref.save_pretrained(str(folder), max_shard_size="20KB")  # many files, many small chunks
    manifest = vault.snapshot(folder, "sharded").manifest
    files = weight_files(manifest)
    stored = {n: t for f in files for n, t in load_file(str(folder / f.path)).items()}
    main, helped = threading.get_ident(), threading.Event()

    class WorkersWaitForTheCaller:  # the pool starts only once the caller has decoded a chunk itself
        def read_chunk_into(self, cid, dest):
            if threading.get_ident() == main:
                helped.set()
            else:
                assert helped.wait(60)
            vault.store.read_chunk_into(cid, dest)

    with WeightDecoder(torch, WorkersWaitForTheCaller(), files, workers=workers) as weights:
        assert len(weights.tasks) > 2 * workers
        for f in reversed(files):
            for t in f.tensors:
                got = weights.tensor(f, t)
                assert got.dtype == stored[t.name].dtype and torch.equal(got, stored[t.name]), t.name
                assert got.data_ptr() % 64 == 0
    assert helped.is_set() and any(task[0] is None for task in weights.tasks)

    f, t = files[-1], files[-1].tensors[-1]
    cid = f.tensor_chunks(t)[-1][0]
    key = store_dir / "chunks" / cid[:2] / cid
    data = bytearray(key.read_bytes())
    data[-1] ^= 0xFF
    key.chmod(0o644)
    key.write_bytes(bytes(data))
    with WeightDecoder(torch, vault.store, files, workers=workers) as weights:
        with pytest.raises(ChunkCorruptError, match=cid[:16]):
            weights.tensor(f, t)


# -- distill and rerun -------------------------------------------------------------


def test_distill_then_rerun_reproduces_exactly_on_cpu(gpt2_vault, gpt2_dir, prompts_file, tmp_path, cli):
    out = tmp_path / "out.parquet"
    r = cli("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", out, "--max-new-tokens", 8,
            "--top-k", 5, "--batch-size", 2, "--device", "cpu", "--json")
    assert r.rc == 0, r
    res = r.json()
    assert res["rows"] == len(PROMPTS) and res["complete"] and res["device"] == "cpu"
    table = pq.read_table(str(out))
    assert table.schema.field("topk_ids").type.value_type == "int32"
    assert str(table.schema.field("topk_logprobs").type.value_type) == "halffloat"
    rows = table.to_pylist()
    assert [row["prompt"] for row in rows] == PROMPTS and [row["row"] for row in rows] == list(range(5))

    # The stored data is exactly what plain transformers computes on the original folder.
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(gpt2_dir))
    for row in rows:
        n = len(row["completion_ids"])
        assert len(row["topk_ids"]) == len(row["topk_logprobs"]) == 5 * n
        assert row["prompt_ids"] == tok(row["prompt"])["input_ids"]
        with torch.no_grad():
            plain = ref.generate(torch.tensor([row["prompt_ids"]]), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tok.eos_token_id)[0, len(row["prompt_ids"]):].tolist()
        assert row["completion_ids"] == plain[:n]
        assert row["finish_reason"] == ("eos" if row["completion_ids"][-1] == tok.eos_token_id else "length")
        with torch.no_grad():
            lp = torch.log_softmax(ref(torch.tensor([row["prompt_ids"] + row["completion_ids"]])).logits[0], -1)
        P = len(row["prompt_ids"])
        want_v, want_i = lp[P - 1: P - 1 + n].topk(5, dim=-1)
        assert np.array_equal(np.array(row["topk_ids"]).reshape(n, 5), want_i.numpy())
        np.testing.assert_allclose(np.array(row["topk_logprobs"], np.float32).reshape(n, 5), want_v.numpy(),
                                   atol=2e-2, rtol=1e-3)  # float16 storage

    # The recipe is in the catalog, and the prompts come back from the store byte for byte.
    cols, got = gpt2_vault.sql("SELECT * EXCLUDE (created_at) FROM distill_runs WHERE run_id = ?", [res["run_id"]])
    rec = dict(zip(cols, got[0]))
    assert rec["teacher_id"] == gpt2_vault.resolve("tiny-gpt2@1").manifest_id
    assert rec["prompt_count"] == 5 and rec["top_k"] == 5 and rec["max_new_tokens"] == 8 and rec["seed"] == 0
    assert rec["output_rows"] == 5 and rec["output_sha256"] == distill.file_sha256(out) and rec["complete"]
    assert rec["torch_version"] == torch.__version__ and rec["transformers_version"] == transformers.__version__
    assert gpt2_vault.read_file(res["data"]["ref"], "prompts.jsonl") == prompts_file.read_bytes()
    assert rec["prompt_set_hash"] == distill.read_prompts(prompts_file).hash

    r = cli("distill", "--rerun", res["run_id"], "--json")
    assert r.rc == 0, r
    drift = r.json()
    assert drift["identical"] is True
    m = drift["metrics"]
    assert m["exact_match_rate"] == 1.0 and m["top1_agreement"] == 1.0
    assert m["kl_max"] == 0.0 and m["kl_mean"] == 0.0 and m["max_abs_dlogprob"] == 0.0
    assert m["positions_compared"] == sum(len(row["completion_ids"]) for row in rows)
    # the rerun is found with SQL, and every library version each run recorded
    cols, got = gpt2_vault.sql("SELECT run_id, rerun_of FROM distill_reruns")
    assert got == [(drift["rerun_id"], res["run_id"])], got
    # without --out the rerun's file was a temp file, gone now: no path is recorded for it
    _, got = gpt2_vault.sql("SELECT run_id, output_path FROM distill_runs ORDER BY run_id = ?", [res["run_id"]])
    assert got == [(drift["rerun_id"], None), (res["run_id"], str(out))], got
    libs = dict(gpt2_vault.sql("SELECT library, version FROM distill_run_versions WHERE run_id = ?",
                               [res["run_id"]])[1])
    import tokenizers
    assert libs["tokenizers"] == tokenizers.__version__ and libs["torch"] == torch.__version__
    assert int(libs["torch_threads"]) == torch.get_num_threads()


def test_sampling_with_a_seed_reproduces_and_drift_is_measured(gpt2_vault, prompts_file, tmp_path):
    s = DistillSettings(max_new_tokens=6, top_k=4, temperature=1.3, seed=7, batch_size=3)
    res = distill.run(gpt2_vault, "tiny-gpt2@1", prompts_file, tmp_path / "s.parquet", s, device="cpu")
    assert distill_drift.rerun(gpt2_vault, res.run_id).identical
    # A changed teacher under the same run id's recipe drifts, and the metrics say so.
    stored = pq.read_table(str(tmp_path / "s.parquet")).to_pylist()
    shifted = [dict(r, topk_logprobs=[v - 0.5 if i % 4 == 1 else v for i, v in enumerate(r["topk_logprobs"])],
                    completion_ids=r["completion_ids"][:-1] + [r["completion_ids"][-1] + 1])
               for r in stored]
    metrics, _ = distill_drift.compare_causal(stored, shifted, 4, np.float16)
    assert metrics["exact_match_rate"] == 0.0
    assert metrics["kl_max"] > 0 and metrics["max_abs_dlogprob"] == pytest.approx(0.5, abs=1e-2)


@pytest.mark.parametrize("temperature", [0.0, 1.3])
def test_topk_recorded_on_a_spare_core_is_what_the_generating_thread_records(gpt2_vault, monkeypatch,
                                                                             temperature):
    """On CPU with a core torch leaves idle, each step's top-k runs on a thread while generate goes
    on: the columns must be identical to the in-line recording (greedy, and sampling, where a
    temperature warper runs after the recorder)."""
    from weightvault import distill_gen

    teacher = load_teacher("tiny-gpt2@1", device="cpu", vault=gpt2_vault)
    distill_gen.prepare_tokenizer(teacher)
    s = DistillSettings(max_new_tokens=7, top_k=6, temperature=temperature, seed=3, batch_size=3,
                        logprob_dtype="float32")
    cfg = distill_gen.generation_config(teacher, s)
    cols = {}
    for spare in (True, False):
        monkeypatch.setattr(distill_gen, "_spare_core", lambda torch, device, spare=spare: spare)
        cols[spare] = distill_gen.causal_batch(teacher, PROMPTS[:3], s, cfg, batch_index=1)
    assert cols[True]["n_tokens"] == cols[False]["n_tokens"] > 0
    for key in ("completion_ids", "topk_ids", "topk_logprobs"):
        for a, b in zip(cols[True][key], cols[False][key]):
            assert np.array_equal(a, b), key
    assert cols[True]["text"] == cols[False]["text"]


def test_spare_core_only_on_a_cpu_that_torch_leaves_room_on(monkeypatch):
    from weightvault import distill_gen

    monkeypatch.setattr(distill_gen.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert distill_gen._spare_core(torch, torch.device("cpu"))
    assert not distill_gen._spare_core(torch, torch.device("cuda", 0))  # device work is asynchronous already
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert not distill_gen._spare_core(torch, torch.device("cpu"))


def test_distill_and_rerun_human_output(gpt2_vault, prompts_file, tmp_path, cli):
    r = cli("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", tmp_path / "h.parquet",
            "--max-new-tokens", 4, "--top-k", 3, "--device", "cpu")
    assert r.rc == 0 and f"{len(PROMPTS)} rows" in r.err and "tok/s" in r.err and "archived as" in r.err, r
    rows = cli("sql", "SELECT run_id FROM distill_runs", "--json").json()
    assert len(rows) == 1
    run_id = rows[0]["run_id"]
    r = cli("distill", "--rerun", run_id)
    assert r.rc == 0 and "reproduced identically" in r.out and "exact_match_rate" in r.out, r


def test_ctrl_c_keeps_finished_rows_and_records_an_incomplete_run(gpt2_vault, prompts_file, tmp_path):
    """The finished rows go to OUT.partial.parquet, which says so; an existing complete OUT stays as it was."""
    out = tmp_path / "partial.parquet"
    full = distill.run(gpt2_vault, "tiny-gpt2@1", prompts_file, out, DistillSettings(max_new_tokens=4, batch_size=2),
                       device="cpu")
    before = out.read_bytes()
    assert json.loads(pq.read_metadata(str(out)).metadata[distill.OUTPUT_KEY.encode()]) == {
        "complete": True, "rows": 5, "run_id": full.run_id}
    calls = []

    def progress(rows, tokens):
        calls.append(rows)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(distill.DistillInterrupted) as e:
        distill.run(gpt2_vault, "tiny-gpt2@1", prompts_file, out, DistillSettings(max_new_tokens=4, batch_size=2),
                    device="cpu", progress=progress)
    r = e.value.result
    assert r.rows == 4 and not r.complete and r.total == 5
    partial = tmp_path / "partial.partial.parquet"
    assert r.output == str(partial) and out.read_bytes() == before  # the complete file is untouched
    assert pq.read_table(str(partial)).num_rows == 4
    assert json.loads(pq.read_metadata(str(partial)).metadata[distill.OUTPUT_KEY.encode()]) == {
        "complete": False, "rows": 4, "run_id": r.run_id}
    assert json.loads(pq.read_table(str(partial)).schema.metadata[b"weightvault.distill"])["rows_expected"] == 5
    assert sorted(p.name for p in tmp_path.iterdir() if "parquet" in p.name) == ["partial.parquet",
                                                                                 "partial.partial.parquet"]
    msg = e.value.describe()
    assert "4 of 5" in msg and str(partial) in msg and r.run_id in msg and "left as it was" in msg
    _, got = gpt2_vault.sql("SELECT output_rows, complete, output_path FROM distill_runs WHERE run_id = ?",
                            [r.run_id])
    assert got == [(4, False, str(partial))]
    assert distill_drift.rerun(gpt2_vault, r.run_id).rows == 4  # reruns what was kept


def test_ctrl_c_right_after_a_batch_is_written_counts_that_batch(gpt2_vault, prompts_file, tmp_path, monkeypatch):
    """A real SIGINT that lands while a batch goes into the file: the file, its footer and the
    recorded run agree on the rows (the count used to miss the batch just written)."""
    import os
    import signal

    import pyarrow.parquet

    real = pyarrow.parquet.ParquetWriter.write_table
    writes = []

    def ctrl_c_once(rows: int):
        """write_table that sends a real SIGINT once ``rows`` rows are in the file."""
        def write(self, table, *a, **kw):
            real(self, table, *a, **kw)
            writes.append(table.num_rows)
            if sum(writes) == rows:
                os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode, inside the write's block
        return write

    def interrupted_run(after_rows: int, out):
        """The result of a run that Ctrl-C stops once ``after_rows`` rows are written."""
        monkeypatch.setattr(pyarrow.parquet.ParquetWriter, "write_table", ctrl_c_once(after_rows))
        with pytest.raises(distill.DistillInterrupted) as e:
            distill.run(gpt2_vault, "tiny-gpt2@1", prompts_file, out,
                        DistillSettings(max_new_tokens=3, batch_size=2), device="cpu")
        return e.value.result

    r = interrupted_run(4, tmp_path / "o.parquet")
    partial = tmp_path / "o.partial.parquet"
    assert writes == [2, 2] and r.rows == 4 and not r.complete, (writes, r)
    assert pq.read_table(str(partial)).num_rows == 4
    assert json.loads(pq.read_metadata(str(partial)).metadata[distill.OUTPUT_KEY.encode()])["rows"] == 4
    assert gpt2_vault.sql("SELECT output_rows FROM distill_runs WHERE run_id = ?", [r.run_id])[1] == [(4,)]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the same Ctrl-C during the last batch: the file is whole, so it is OUT and recorded complete
    writes.clear()
    out = tmp_path / "whole.parquet"
    r = interrupted_run(5, out)
    assert r.complete and r.rows == 5 and r.output == str(out) and pq.read_table(str(out)).num_rows == 5
    assert not (tmp_path / "whole.partial.parquet").exists()
    assert gpt2_vault.sql("SELECT complete FROM distill_runs WHERE run_id = ?", [r.run_id])[1] == [(True,)]


def test_ctrl_c_in_the_cli_names_the_partial_file_and_a_rerun_says_what_it_recorded(gpt2_vault, prompts_file,
                                                                                    tmp_path, cli, monkeypatch):
    from weightvault import distill_gen

    real = distill_gen.causal_batch

    def stop_at_second_batch(teacher, prompts, settings, cfg, bi):
        if bi == 1:
            raise KeyboardInterrupt
        return real(teacher, prompts, settings, cfg, bi)

    monkeypatch.setattr(distill_gen, "causal_batch", stop_at_second_batch)
    out = tmp_path / "o.parquet"
    r = cli("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", out, "--max-new-tokens", 3,
            "--batch-size", 2, "--device", "cpu")
    assert r.rc == 130 and "kept 2 of 5 finished rows" in r.err and "o.partial.parquet" in r.err, r
    assert "was not written" in r.err and not out.exists()
    run_id = cli("sql", "SELECT run_id FROM distill_runs", "--json").json()[0]["run_id"]
    r = cli("distill", "--rerun", run_id)  # reruns the 2 kept rows: batch 0 only, so it finishes
    assert r.rc == 0 and "reproduced identically" in r.out, r
    monkeypatch.setattr(distill_gen, "causal_batch", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    r = cli("distill", "--rerun", run_id)
    assert r.rc == 130 and f"rerun of {run_id} stopped" in r.err and "incomplete run" in r.err, r
    assert "committed versions are intact" not in r.err
    _, got = gpt2_vault.sql("SELECT run_id, output_rows, complete FROM distill_runs WHERE NOT complete "
                            "AND run_id != ?", [run_id])
    assert len(got) == 1 and got[0][1:] == (0, False) and got[0][0] in r.err
    assert gpt2_vault.sql("SELECT output_path FROM distill_runs WHERE run_id = ?", [got[0][0]])[1] == [(None,)]
    # with --json, an interrupted run still prints what was recorded: scripts need the run id
    monkeypatch.setattr(distill_gen, "causal_batch", stop_at_second_batch)
    r = cli("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", tmp_path / "j.parquet",
            "--max-new-tokens", 3, "--batch-size", 2, "--device", "cpu", "--json")
    assert r.rc == 130 and r.json()["complete"] is False and r.json()["rows"] == 2, r
    assert r.json()["output"].endswith("j.partial.parquet")


def test_first_ctrl_c_while_recording_finishes_the_recording(gpt2_vault, prompts_file, tmp_path, monkeypatch):
    """A real SIGINT while the output is archived: the run is still archived, recorded and named."""
    import os
    import signal

    from weightvault.vault import Vault

    real = Vault.snapshot

    def snapshot_hit_by_ctrl_c(self, *a, **kw):
        if kw.get("source_info", {}).get("kind") == "distill":
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **kw)

    monkeypatch.setattr(Vault, "snapshot", snapshot_hit_by_ctrl_c)
    out = tmp_path / "o.parquet"
    with pytest.raises(distill.DistillInterrupted) as e:
        distill.run(gpt2_vault, "tiny-gpt2@1", prompts_file, out, DistillSettings(max_new_tokens=3), device="cpu")
    r = e.value.result
    assert e.value.during_recording and r.complete and r.rows == 5 and "finished recording" in e.value.describe()
    assert pq.read_table(str(out)).num_rows == 5 and distill.file_sha256(out) == r.output_sha256
    _, got = gpt2_vault.sql("SELECT output_rows, complete, output_path FROM distill_runs WHERE run_id = ?",
                            [r.run_id])
    assert got == [(5, True, str(out))]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_that_stops_the_recording_leaves_no_unrecorded_file_under_the_final_name(gpt2_vault, prompts_file,
                                                                                      tmp_path, cli, monkeypatch):
    """As a second Ctrl-C would: KeyboardInterrupt between archiving the data and writing the event."""
    from weightvault.archive.store import Store

    real = Store.put_event

    def interrupted(self, etype, payload, **kw):
        if etype == "distill_run":
            raise KeyboardInterrupt
        return real(self, etype, payload, **kw)

    monkeypatch.setattr(Store, "put_event", interrupted)
    out = tmp_path / "rec.parquet"
    r = cli("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", out, "--max-new-tokens", 3,
            "--device", "cpu")
    assert r.rc == 130, r
    kept = tmp_path / "rec.unrecorded.parquet"
    assert not out.exists() and pq.read_table(str(kept)).num_rows == 5
    assert "no run was recorded" in r.err and str(kept) in r.err and "weightvault rm distill-runs@" in r.err
    assert len(r.err.strip().splitlines()) == 1
    _, got = gpt2_vault.sql("SELECT count(*) FROM distill_runs")
    assert got == [(0,)]
    monkeypatch.setattr(Store, "put_event", real)
    assert cli("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", out, "--max-new-tokens", 3,
               "--device", "cpu").rc == 0
    assert pq.read_table(str(out)).num_rows == 5


def test_a_failure_while_recording_leaves_no_hidden_temp_file(gpt2_vault, prompts_file, tmp_path, cli,
                                                               monkeypatch):
    """A full disk while the output is archived left `.OUT.wv-XXXX.tmp`, the size of the output,
    and said nothing of it."""
    import errno

    from weightvault.vault import Vault

    def full(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", "store/tmp")

    monkeypatch.setattr(Vault, "snapshot", full)
    out = tmp_path / "full.parquet"
    r = cli("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", out, "--max-new-tokens", 3,
            "--device", "cpu")
    assert r.rc == 8 and "no space left" in r.err, r
    kept = tmp_path / "full.unrecorded.parquet"
    assert "no run was recorded" in r.err and str(kept) in r.err, r
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".parquet", ".tmp")) == [kept.name]
    assert pq.read_table(str(kept)).num_rows == 5 and not out.exists()
    assert gpt2_vault.sql("SELECT count(*) FROM distill_runs")[1] == [(0,)]


def test_distilled_from_lineage_edge_and_catalog_rebuild(gpt2_vault, gpt2_dir, prompts_file, tmp_path, cli):
    res = distill.run(gpt2_vault, "tiny-gpt2@1", prompts_file, tmp_path / "o.parquet",
                      DistillSettings(max_new_tokens=3, top_k=3), device="cpu")
    before = gpt2_vault.sql("SELECT * EXCLUDE (created_at) FROM distill_runs ORDER BY run_id")
    r = cli("snapshot", gpt2_dir, "--model", "student", "--distilled-from", res.run_id, "--json")
    assert r.rc == 0, r
    edges = gpt2_vault.manifest("student@1").lineage
    teacher_id = gpt2_vault.resolve("tiny-gpt2@1").manifest_id
    assert {"relation": "distilled", "base": teacher_id, "run_id": res.run_id,
            "prompt_set_hash": res.payload["prompts"]["hash"]}.items() <= edges[0].items()
    assert edges[0]["settings"]["top_k"] == 3 and edges[0]["settings"]["device"] == "cpu"
    assert cli("catalog", "rebuild").rc == 0
    assert gpt2_vault.sql("SELECT * EXCLUDE (created_at) FROM distill_runs ORDER BY run_id") == before

    state = store_snapshot_state(gpt2_vault.root)
    r = cli("snapshot", gpt2_dir, "--model", "student2", "--distilled-from", "0123456789abcdef")
    assert r.rc == 3 and "0123456789abcdef" in r.err and len(r.err.strip().splitlines()) == 1
    assert store_snapshot_state(gpt2_vault.root) == state


# -- bad input -------------------------------------------------------------------------


def test_broken_prompt_line_is_one_error_and_records_nothing(gpt2_vault, tmp_path, cli):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": 3}\n')
    before = _catalog_and_events(gpt2_vault)
    state = store_snapshot_state(gpt2_vault.root)
    r = cli("distill", "tiny-gpt2@1", "--prompts", p, "--out", tmp_path / "o.parquet")
    assert r.rc == 4 and f"{p}:3:" in r.err and len(r.err.strip().splitlines()) == 1
    p.write_text('{"prompt": "fine"}\n{"prompt": "cut off\n')
    r = cli("distill", "tiny-gpt2@1", "--prompts", p, "--out", tmp_path / "o.parquet")
    assert r.rc == 4 and f"{p}:2: not JSON" in r.err
    assert not (tmp_path / "o.parquet").exists()
    assert _catalog_and_events(gpt2_vault) == before and store_snapshot_state(gpt2_vault.root) == state


def _refused(vault, cli, args, rc, *needles, out=None):
    """Run a distill/diff that must be refused: one line naming ``needles``, exit ``rc``, nothing written."""
    before = _catalog_and_events(vault)
    state = store_snapshot_state(vault.root)
    r = cli(*args)
    assert r.rc == rc, r
    assert len(r.err.strip().splitlines()) == 1 and "internal error" not in r.err and "→" in r.err, r.err
    for n in needles:
        assert n in r.err, (n, r.err)
    if out is not None:
        assert not Path(out).exists() and not list(Path(out).parent.glob(f".{Path(out).name}*"))
    assert _catalog_and_events(vault) == before and store_snapshot_state(vault.root) == state
    return r


def test_top_k_above_the_vocabulary_is_refused_before_generating(gpt2_vault, prompts_file, tmp_path, cli):
    from teacher_models import make_tiny_bert_mlm

    vocab = load_teacher("tiny-gpt2@1", device="cpu", vault=gpt2_vault).model.config.vocab_size
    out = tmp_path / "k.parquet"
    base = ("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", out, "--max-new-tokens", 2)
    _refused(gpt2_vault, cli, base + ("--top-k", vocab + 1), 2, f"--top-k {vocab + 1}", f"({vocab} tokens)",
             f"--top-k {vocab} or less", out=out)
    gpt2_vault.snapshot(make_tiny_bert_mlm(tmp_path / "bert"), "tiny-bert")
    _refused(gpt2_vault, cli, ("distill", "tiny-bert@1", "--prompts", prompts_file, "--out", out, "--token-logits",
                               "--top-k", 100000), 2, "tiny-bert@1's vocabulary", out=out)
    # exactly the vocabulary is fine, and every position holds top_k entries, as the metadata says
    r = cli(*base, "--top-k", vocab, "--json")
    assert r.rc == 0, r
    t = pq.read_table(str(out))
    assert json.loads(t.schema.metadata[b"weightvault.distill"])["top_k"] == vocab
    for row in t.to_pylist():
        assert len(row["topk_ids"]) == vocab * len(row["completion_ids"])
    assert cli("distill", "--rerun", r.json()["run_id"], "--json").json()["identical"]


def test_prompt_longer_than_the_positions_is_refused_naming_its_line(gpt2_vault, tmp_path, cli):
    p = tmp_path / "long.jsonl"
    p.write_text('{"prompt": "the vault"}\n\n' + json.dumps({"prompt": "the vault keeps every version "}) + "\n")
    out = tmp_path / "l.parquet"
    # 64 positions: the first prompt fits 64 new tokens minus its own; the second (line 3) is long
    r = _refused(gpt2_vault, cli, ("distill", "tiny-gpt2@1", "--prompts", p, "--out", out, "--max-new-tokens", 40,
                                   "--device", "cpu"), 4, f"{p}:3:", "--max-new-tokens 40", "64 positions",
                 "use --max-new-tokens", out=out)
    room = int(r.err.split("use --max-new-tokens ")[1].split()[0])
    assert cli("distill", "tiny-gpt2@1", "--prompts", p, "--out", out, "--max-new-tokens", room,
               "--device", "cpu").rc == 0
    assert cli("distill", "tiny-gpt2@1", "--prompts", p, "--out", tmp_path / "m.parquet", "--max-new-tokens",
               room + 1, "--device", "cpu").rc == 4
    p.write_text(json.dumps({"prompt": "the vault keeps every version " * 20}) + "\n")  # over 64 on its own
    _refused(gpt2_vault, cli, ("distill", "tiny-gpt2@1", "--prompts", p, "--out", out.with_name("n.parquet"),
                               "--max-new-tokens", 1), 4, f"{p}:1:", "shorten that prompt")


@pytest.mark.parametrize("batch_size", [1, 2])
def test_empty_prompt_is_refused_at_any_batch_size(gpt2_vault, tmp_path, cli, batch_size):
    p = tmp_path / "e.jsonl"
    p.write_text('{"prompt": "the vault"}\n{"prompt": ""}\n')
    out = tmp_path / "e.parquet"
    _refused(gpt2_vault, cli, ("distill", "tiny-gpt2@1", "--prompts", p, "--out", out, "--max-new-tokens", 2,
                               "--batch-size", batch_size), 4, f"{p}:2: tokenizes to no tokens",
             "remove or fill that line", out=out)


@pytest.mark.parametrize("args, needle", [
    (("--device", "banana"), "unknown device 'banana'"),
    (("--device", "cuda:99"), "cuda:99"),
    (("--dtype", "int8"), "dtype 'int8'"),
    (("--dtype", "bogus"), "unknown dtype 'bogus'"),
    (("--temperature", "nan"), "--temperature nan"),
    (("--temperature", "inf"), "--temperature inf"),
    (("--temperature", "-1"), "--temperature -1"),
    (("--max-length", "8"), "--max-length applies to encoders"),
])
def test_bad_device_dtype_and_temperature_are_usage_errors(gpt2_vault, prompts_file, tmp_path, cli, args, needle):
    out = tmp_path / "d.parquet"
    _refused(gpt2_vault, cli, ("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", out,
                               "--max-new-tokens", 2) + args, 2, needle, out=out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error_for_distill_and_diff(gpt2_vault, gpt2_dir, prompts_file, tmp_path, cli):
    out = tmp_path / "d.parquet"
    _refused(gpt2_vault, cli, ("distill", "tiny-gpt2@1", "--prompts", prompts_file, "--out", out, "--device", "cuda"),
             2, "'cuda' is not available", "--device cpu", out=out)
    _refused(gpt2_vault, cli, ("distill", "--rerun", "0123456789abcdef", "--device", "cuda"), 2, "'cuda'")
    gpt2_vault.snapshot(gpt2_dir, "tiny-gpt2-copy")
    for args in (("--device", "cuda"), ("--device", "banana"), ("--dtype", "int8")):
        _refused(gpt2_vault, cli, ("diff", "tiny-gpt2@1", "tiny-gpt2-copy@1", "--prompts", prompts_file) + args, 2,
                 args[1])


def test_a_checkpoint_missing_a_parameter_is_refused_not_filled_with_random_values(vault, gpt2_dir, prompts_file,
                                                                                  tmp_path, cli):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "gpt-missing"
    shutil.copytree(gpt2_dir, folder)
    sd = load_file(str(folder / "model.safetensors"))
    del sd["transformer.h.1.mlp.c_proj.weight"]
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    vault.snapshot(folder, "gptmiss")
    from weightvault.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"lacks 1 parameter .*transformer\.h\.1\.mlp\.c_proj\.weight"):
        load_teacher("gptmiss@1", device="cpu", vault=vault)
    out = tmp_path / "m.parquet"
    _refused(vault, cli, ("distill", "gptmiss@1", "--prompts", prompts_file, "--out", out, "--max-new-tokens", 2),
             4, "gptmiss@1", "transformer.h.1.mlp.c_proj.weight", "archive the complete checkpoint", out=out)
    # the tied lm_head that save_pretrained leaves out is not "missing"
    assert "lm_head.weight" not in load_file(str(gpt2_dir / "model.safetensors"))
    vault.snapshot(gpt2_dir, "tiny-gpt2")
    model, _ = load_teacher("tiny-gpt2@1", device="cpu", vault=vault)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_version_that_is_not_a_transformers_model(vault, tmp_path, toy_model, prompts_file, cli):
    vault.snapshot(toy_model, "toy")  # config.json with model_type "toy"
    vault.snapshot(write_model(tmp_path / "noconf", toy_tensors(), files={"config.json": "{}"}), "noconf")
    before = _catalog_and_events(vault)
    state = store_snapshot_state(vault.root)
    for ref in ("toy@1", "noconf@1"):
        r = cli("distill", ref, "--prompts", prompts_file, "--out", tmp_path / "o.parquet")
        assert r.rc == 4 and f"{ref} is not a transformers model" in r.err, r
        assert len(r.err.strip().splitlines()) == 1
    assert _catalog_and_events(vault) == before and store_snapshot_state(vault.root) == state


def test_missing_extra_is_a_typed_error_in_the_real_cli(gpt2_vault, prompts_file, tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from weightvault.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    state = store_snapshot_state(gpt2_vault.root)
    before = _catalog_and_events(gpt2_vault)
    r = subprocess.run([sys.executable, "-c", code, "--store", str(gpt2_vault.root), "distill", "tiny-gpt2@1",
                        "--prompts", str(prompts_file), "--out", str(tmp_path / "o.parquet")],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    assert "[teacher]" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert store_snapshot_state(gpt2_vault.root) == state and _catalog_and_events(gpt2_vault) == before


# -- the real MiniLM ----------------------------------------------------------------------


def test_minilm_from_the_store_embeds_like_the_original_folder(vault, minilm_dir, tmp_path, cli):
    st = pytest.importorskip("sentence_transformers")
    vault.snapshot(minilm_dir, "minilm")
    teacher = load_teacher("minilm@1", device="cpu", vault=vault)
    assert teacher.kind == "encoder" and teacher.pooling == {"mode": "mean", "normalize": True}
    texts = ["weights are a piece of history", "a teacher, reloaded years later", "short"]
    p = tmp_path / "texts.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "emb.parquet"
    r = cli("distill", "minilm@1", "--prompts", p, "--out", out, "--batch-size", 2, "--device", "cpu", "--json")
    assert r.rc == 0, r
    got = np.array([row["embedding"] for row in pq.read_table(str(out)).to_pylist()], np.float64)
    want = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, convert_to_numpy=True)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.99999, cos
    r = cli("distill", "--rerun", r.json()["run_id"], "--json")
    assert r.rc == 0 and r.json()["identical"] and r.json()["metrics"]["cosine_min"] >= 0.99999


def _direct_minilm(minilm_dir, texts, max_length):
    """Mean pooling + L2 normalise over AutoModel, truncated at ``max_length`` (what the folder's modules say)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    model = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()
    out = []
    for t in texts:
        enc = tok(t, return_tensors="pt", truncation=True, max_length=max_length)
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0]
        out.append(torch.nn.functional.normalize(h.mean(0), dim=0).numpy())
    return np.array(out), [len(tok(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]


def test_minilm_truncates_at_its_sentence_transformers_max_seq_length(vault, minilm_dir, tmp_path, cli):
    assert json.loads((minilm_dir / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    vault.snapshot(minilm_dir, "minilm")
    texts = [" ".join(["the archive keeps every version of the weights and the catalog records lineage"] * 30),
             "short one"]
    p = tmp_path / "long.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "long.parquet"
    r = cli("distill", "minilm@1", "--prompts", p, "--out", out, "--device", "cpu", "--json")
    assert r.rc == 0, r
    t = pq.read_table(str(out))
    rows = t.to_pylist()
    want, lengths = _direct_minilm(minilm_dir, texts, 256)
    assert [len(row["input_ids"]) for row in rows] == lengths and lengths[0] == 256
    got = np.array([row["embedding"] for row in rows])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert json.loads(t.schema.metadata[b"weightvault.distill"])["settings"]["max_length"] == 256
    _, rec = vault.sql("SELECT settings->>'max_length' FROM distill_runs WHERE run_id = ?", [r.json()["run_id"]])
    assert rec == [("256",)]
    try:
        import sentence_transformers as st
    except ImportError:
        st = None
    if st is not None:
        ref = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, convert_to_numpy=True)
        np.testing.assert_allclose(got, ref, atol=1e-5)

    out2 = tmp_path / "short.parquet"
    assert cli("distill", "minilm@1", "--prompts", p, "--out", out2, "--max-length", 128, "--device", "cpu").rc == 0
    rows = pq.read_table(str(out2)).to_pylist()
    want, lengths = _direct_minilm(minilm_dir, texts, 128)
    assert [len(row["input_ids"]) for row in rows] == lengths and lengths[0] == 128
    np.testing.assert_allclose(np.array([row["embedding"] for row in rows]), want, atol=1e-5)
    _refused(vault, cli, ("distill", "minilm@1", "--prompts", p, "--out", tmp_path / "x.parquet", "--max-length",
                          100000), 2, "--max-length 100000", "512 positions", out=tmp_path / "x.parquet")


# -- GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_load_and_distill_in_bf16(gpt2_vault, gpt2_dir, prompts_file, tmp_path):
    teacher = load_teacher("tiny-gpt2@1", vault=gpt2_vault)  # auto -> cuda
    assert teacher.device.startswith("cuda")
    assert teacher.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    res = distill.run(gpt2_vault, "tiny-gpt2@1", prompts_file, tmp_path / "g.parquet",
                      DistillSettings(max_new_tokens=6, top_k=4), teacher=teacher)
    assert res.payload["device"].startswith("cuda") and res.rows == len(PROMPTS)
    d = distill_drift.rerun(gpt2_vault, res.run_id)
    assert d.rerun.payload["device"].startswith("cuda")
    assert 0 <= d.metrics["exact_match_rate"] <= 1 and np.isfinite(d.metrics["kl_max"])


def test_masked_lm_token_logits_and_pooled_embeddings(vault, tmp_path, prompts_file, cli):
    from teacher_models import make_tiny_bert_mlm

    folder = make_tiny_bert_mlm(tmp_path / "bert")
    vault.snapshot(folder, "tiny-bert")
    out = tmp_path / "mlm.parquet"
    r = cli("distill", "tiny-bert@1", "--prompts", prompts_file, "--out", out, "--token-logits", "--top-k", 3,
            "--logprob-dtype", "float32", "--device", "cpu", "--json")
    assert r.rc == 0, r
    assert r.json()["teacher"]["kind"] == "masked-lm"
    ref = transformers.AutoModelForMaskedLM.from_pretrained(str(folder)).eval()
    for row in pq.read_table(str(out)).to_pylist():
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            o = ref(ids, output_hidden_states=True)
        v, i = torch.log_softmax(o.logits[0], -1).topk(3, -1)
        assert row["topk_ids"] == i.reshape(-1).tolist()
        np.testing.assert_allclose(row["topk_logprobs"], v.reshape(-1).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(row["embedding"], o.hidden_states[-1][0].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    r = cli("distill", "tiny-bert@1", "--prompts", prompts_file, "--out", out,
            "--token-logits", "--top-k", 0)
    assert r.rc == 2 and "--top-k" in r.err


def test_only_a_learned_position_table_limits_prompts():
    """A rotary model (Llama) has no hard position limit (rope scaling runs past
    max_position_embeddings); GPT-2, BERT, RoBERTa and OPT have a table, less their offsets."""
    from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              OPTConfig, OPTForCausalLM, RobertaConfig, RobertaModel)

    from weightvault.teacher import position_limit

    small = dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2, vocab_size=100)
    assert position_limit(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64,
                                                     vocab_size=100))) == 64
    assert position_limit(BertModel(BertConfig(max_position_embeddings=64, **small))) == 64
    assert position_limit(RobertaModel(RobertaConfig(max_position_embeddings=66, pad_token_id=1, **small))) == 64
    assert position_limit(OPTForCausalLM(OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64,
                                                   num_attention_heads=2, max_position_embeddings=64,
                                                   vocab_size=100, word_embed_proj_dim=32))) == 64
    assert position_limit(LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, max_position_embeddings=128,
                                                       **small))) is None


def test_an_encoder_without_its_pooler_loads_and_embeds_as_the_full_one(vault, minilm_dir, tmp_path):
    """Sentence-transformers folders saved from a masked-LM checkpoint often lack `pooler.*`, which
    no pooling reads: refusing them as an incomplete checkpoint was wrong."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from weightvault.teacher import load_teacher

    bare = tmp_path / "bare"
    shutil.copytree(minilm_dir, bare)
    tensors = load_file(str(bare / "model.safetensors"))
    assert any(k.startswith("pooler.") for k in tensors)
    save_file({k: v for k, v in tensors.items() if not k.startswith("pooler.")}, str(bare / "model.safetensors"))
    vault.snapshot(minilm_dir, "full")
    vault.snapshot(bare, "bare")
    texts = ["the vault keeps every version", "a teacher comes back"]
    want, _ = _direct_minilm(minilm_dir, texts, 256)
    t = load_teacher("bare@1", device="cpu", vault=vault)
    enc = t.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    import torch
    with torch.no_grad():
        h = t.model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].to(h.dtype)
    got = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_dtype_aliases_are_floats_and_integers_are_refused():
    import torch

    from weightvault.errors import UsageError
    from weightvault.teacher import pick_dtype

    assert pick_dtype("cpu", "half") is torch.float16 and pick_dtype("cpu", "double") is torch.float64
    assert pick_dtype("cpu", torch.bfloat16) is torch.bfloat16
    with pytest.raises(UsageError, match="floating-point"):
        pick_dtype("cpu", "int8")
    with pytest.raises(UsageError, match="unknown dtype"):
        pick_dtype("cpu", "bogus")
