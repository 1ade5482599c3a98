"""Model cards, config.json and dataset records: typed facts, or one-line errors that leave nothing behind."""

from __future__ import annotations

import json

import pytest

from conftest import store_snapshot_state, toy_tensors, write_model
from weightvault.archive import card
from weightvault.catalog import datasets as ds
from weightvault.errors import RecordValidationError

GOOD = "---\nlicense: mit\nbase_model: org/base\nbase_model_relation: adapter\nlanguage: en\n---\n# text\n"


def test_front_matter_becomes_typed_facts():
    front = card.parse_front_matter(GOOD)
    assert card.card_facts(front) == {"base_model": ["org/base"], "language": ["en"], "license": "mit",
                                      "base_model_relation": "adapter"}
    assert card.parse_front_matter("# no front matter\n---\n") == {}
    assert card.parse_front_matter("\ufeff---\n---\n") == {}


def test_config_facts_handle_new_and_nested_names():
    assert card.config_facts({"dtype": "bfloat16", "text_config": {"vocab_size": 32000}, "model_type": "llava"}) == {
        "torch_dtype": "bfloat16", "vocab_size": 32000, "model_type": "llava"}


def test_adapter_card_becomes_an_external_lineage_edge(vault, tmp_path):
    write_model(tmp_path / "m", toy_tensors(), files={"README.md": GOOD})
    vault.snapshot(tmp_path / "m", "lora")
    assert vault.sql("SELECT relation, base_ref, origin FROM lineage_edges")[1] == [("adapter", "hf:org/base", "card")]
    # an explicit --base-model replaces the card's claim
    write_model(tmp_path / "m2", toy_tensors(seed=3), files={"README.md": GOOD})
    res = vault.snapshot(tmp_path / "m2", "lora2", lineage=({"relation": "finetune", "base": vault.resolve("lora@1").manifest_id},))
    _, rows = vault.sql("SELECT relation, origin FROM lineage_edges WHERE version_id = ?", [res.manifest_id])
    assert rows == [("finetune", "manifest")]


BAD_CARDS = [
    ("---\nbase_model_relation: grafted\n---\n", "base_model_relation"),
    ("---\nlicense: [mit, apache-2.0]\n---\n", "license"),
    ("---\ntags: {a: 1}\n---\n", "tags"),
    ("---\nbase_model: ../../etc\n---\n", "base_model"),
    ("---\nlicense: mit\n  bad: indent\n---\n", "front matter"),
    ("---\nlicense: mit\n", "front matter"),
    ("---\n- a\n- b\n---\n", "front matter"),
    ("---\nreleased: 2023-13-45\n---\n", "front matter"),
]


@pytest.mark.parametrize("text,field", BAD_CARDS)
def test_malformed_card_is_refused_naming_the_field(text, field, cli, vault, tmp_path, store_dir):
    write_model(tmp_path / "m", toy_tensors(), files={"README.md": text})
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", tmp_path / "m", "--model", "m")
    assert r.rc == 4, r
    assert "README.md" in r.err and field in r.err and len(r.err.strip().splitlines()) == 1
    assert store_snapshot_state(store_dir) == before
    assert vault.sql("SELECT count(*) FROM versions")[1] == [(0,)]


@pytest.mark.parametrize("config,field", [
    ("{not json", "invalid JSON"), (json.dumps({"vocab_size": "big"}), "vocab_size"),
    (json.dumps({"architectures": "Bert"}), ""), (json.dumps({"architectures": [1]}), "architectures"),
    (json.dumps([1, 2]), "(file)"), (json.dumps({"torch_dtype": 16}), "torch_dtype"),
])
def test_malformed_config_is_refused(config, field, cli, tmp_path, store_dir, vault):
    write_model(tmp_path / "m", toy_tensors(), files={"config.json": config})
    before = store_snapshot_state(store_dir)
    r = cli("snapshot", tmp_path / "m", "--model", "m")
    if field == "":  # a single string is accepted as a one-element list
        assert r.rc == 0, r
        assert vault.sql("SELECT architectures FROM model_cards")[1] == [(["Bert"],)]
        return
    assert r.rc == 4 and "config.json" in r.err and field in r.err and len(r.err.strip().splitlines()) == 1, r
    assert store_snapshot_state(store_dir) == before


def test_a_config_that_is_not_utf8_is_named_with_its_folder(cli, tmp_path, store_dir):
    m = write_model(tmp_path / "m", toy_tensors())
    (m / "config.json").write_bytes(b'{"model_type": "\xff"}')
    r = cli("snapshot", m, "--model", "m")
    assert r.rc == 4 and f"{m / 'config.json'}" in r.err and "is not UTF-8 text" in r.err, r


BAD_RECORDS = [
    ("bad.yaml", "name: x\ncutoff_date: 2023-13-45\n", "(file)"),
    ("bad.yaml", "name: x\nlicence: MIT\n", "licence"),
    ("bad.yaml", "license: MIT\n", "name"),
    ("bad.yaml", "name: x\nn_rows: -1\n", "n_rows"),
    ("bad.yaml", "name: x\nn_tokens: true\n", "n_tokens"),
    ("bad.yaml", "name: x\nversion: 1.10\n", "version"),
    ("bad.yaml", "name: [x\nlicense: MIT\n", "(file)"),
    ("bad.yaml", "- name: x\n", "(record)"),
    ("bad.json", '{"name": "x", "content_hash": "md5:abc"}', "content_hash"),
    ("bad.json", '{"name": "x",}', "(file)"),
    ("bad.json", '{"name": "x", "extra": [1]}', "extra"),
    ("bad.json", '{"name": "../x"}', "name"),
]


@pytest.mark.parametrize("fname,text,field", BAD_RECORDS)
def test_malformed_dataset_file_is_refused_naming_the_field(fname, text, field, cli, tmp_path, store_dir, vault):
    path = tmp_path / fname
    path.write_text(text)
    before = store_snapshot_state(store_dir)
    r = cli("dataset", "add", "--file", path)
    assert r.rc == 4, r
    assert fname in r.err and f"'{field}'" in r.err and len(r.err.strip().splitlines()) == 1
    assert store_snapshot_state(store_dir) == before
    assert vault.sql("SELECT count(*) FROM dataset_records")[1] == [(0,)]


def test_dataset_file_round_trips_through_the_catalog(cli, tmp_path, vault):
    path = tmp_path / "wiki.yaml"
    path.write_text("name: wikipedia-en\nversion: '20231101'\nlicense: CC-BY-SA-4.0 OR GFDL-1.3-or-later\n"
                    "cutoff_date: 2023-11-01\nn_tokens: 4500000000\nsource_uri: hf-dataset:wikimedia/wikipedia\n"
                    "extra: {languages: [en], croissant: {sha256: abc}}\n")
    r = cli("dataset", "add", "--file", path, "--json")
    assert r.rc == 0, r
    _, rows = vault.sql("SELECT name, version, license, cutoff_date::VARCHAR, n_tokens, extra->>'$.languages[0]' "
                        "FROM datasets")
    assert rows == [("wikipedia-en", "20231101", "CC-BY-SA-4.0 OR GFDL-1.3-or-later", "2023-11-01", 4500000000, "en")]
    with pytest.raises(RecordValidationError, match="'version'"):
        ds.validate({"name": "x", "version": 3}, "api")


def test_real_minilm_card_and_config(minilm_dir):
    from weightvault.archive.snapshot import scan_folder

    meta = card.read_metadata(scan_folder(minilm_dir))
    assert meta["card"]["license"] == "apache-2.0" and meta["card"]["language"] == ["en"]
    assert "ms_marco" in meta["card"]["datasets"] and meta["card"]["pipeline_tag"] == "sentence-similarity"
    assert meta["config"] == {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 30522}
