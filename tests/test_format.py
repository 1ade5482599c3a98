"""The on-disk format: a frozen store stays readable, records match their JSON schemas, chunk
containers decode with zstd + safetensors alone."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import zstandard
from safetensors.numpy import load

from weightvault import schemas
from weightvault.archive import codecs, ids
from weightvault.vault import Vault

DATA = Path(__file__).parent / "data"


# golden-store-v1: core codecs (raw, zstd, bytegroup); golden-store-v1-engine: the engine's
# codecs (fsplit, delta-sub, cast), written by weightvault 0.1 and never rewritten;
# golden-store-v1-rans: fsplit and delta streams of kind rans (tests/data/make_golden_rans.py);
# golden-store-v1-exp: exponent-segmented deltas, fp32 and bf16 (tests/data/make_golden_exp.py).
FROZEN = ["golden-store-v1", "golden-store-v1-engine", "golden-store-v1-rans", "golden-store-v1-exp"]


@pytest.fixture(params=FROZEN)
def golden(request, tmp_path) -> Vault:
    """A store written by weightvault 0.1 (format 1), copied so tests may write to it."""
    shutil.copytree(DATA / request.param, tmp_path / "golden")
    v = Vault.open(tmp_path / "golden", create=False)
    v.frozen_name = request.param
    return v


def test_frozen_engine_store_holds_every_engine_codec(tmp_path):
    shutil.copytree(DATA / "golden-store-v1-engine", tmp_path / "g")
    v = Vault.open(tmp_path / "g", create=False)
    found = {v.store.chunk_header(i.key.rsplit("/", 1)[-1])[0].codec for i in v.store.list_chunks()}
    assert {"fsplit", "delta-sub", "cast"} <= found


def test_frozen_rans_store_holds_rans_streams_in_fsplit_and_delta_chunks(tmp_path):
    shutil.copytree(DATA / "golden-store-v1-rans", tmp_path / "g")
    v = Vault.open(tmp_path / "g", create=False)
    found = set()
    for info in v.store.list_chunks():
        meta = v.store.chunk_header(info.key.rsplit("/", 1)[-1])[0].meta
        if "rans" in meta.get("kinds", "").split(","):
            found.add(meta["codec"])
    assert {"fsplit", "delta-sub"} <= found


def test_frozen_exp_store_holds_both_segmented_delta_codecs(tmp_path):
    shutil.copytree(DATA / "golden-store-v1-exp", tmp_path / "g")
    v = Vault.open(tmp_path / "g", create=False)
    metas = [v.store.chunk_header(i.key.rsplit("/", 1)[-1])[0].meta for i in v.store.list_chunks()]
    segmented = {m["codec"]: m["cuts"] for m in metas if "cuts" in m}
    assert set(segmented) == {"delta-sub-exp", "delta-xor-exp"}
    assert all(len(cuts.split(",")) > 1 for cuts in segmented.values())


def test_frozen_store_restores_byte_exact(golden, tmp_path):
    expected = json.loads((DATA / f"{golden.frozen_name}.expected.json").read_text())
    for ref, files in expected.items():
        out = tmp_path / ref.replace("@", "-")
        golden.restore(ref, out)
        got = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(out.rglob("*")) if p.is_file()}
        assert got == files, ref


@pytest.mark.parametrize("name", FROZEN)
def test_frozen_store_restores_byte_exact_without_the_c_module(name, tmp_path):
    """The numpy reference decoders alone (WEIGHTVAULT_NO_NATIVE=1, as on a build without a compiler)
    read every frozen store too, and `verify` re-hashes every chunk through them."""
    import os
    import subprocess
    import sys

    shutil.copytree(DATA / name, tmp_path / "g")
    expected = json.loads((DATA / f"{name}.expected.json").read_text())
    code = ("import hashlib, json, sys\n"
            "from pathlib import Path\n"
            "from weightvault.archive.native import native\n"
            "from weightvault.vault import Vault\n"
            "assert native is None\n"
            "v = Vault.open(sys.argv[1], create=False)\n"
            "got = {}\n"
            "for ref in json.loads(sys.argv[2]):\n"
            "    out = Path(sys.argv[3]) / ref.replace('@', '-')\n"
            "    v.restore(ref, out)\n"
            "    got[ref] = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()\n"
            "                for p in sorted(out.rglob('*')) if p.is_file()}\n"
            "assert v.verify().ok\n"
            "print(json.dumps(got))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "g"), json.dumps(sorted(expected)),
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "WEIGHTVAULT_NO_NATIVE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == expected


def test_frozen_store_catalog_is_rebuilt_from_records_alone(golden):
    assert not golden.catalog.path.exists()
    _, rows = golden.sql("SELECT version, message FROM versions ORDER BY version")
    expected = json.loads((DATA / f"{golden.frozen_name}.expected.json").read_text())
    assert [f"golden@{r[0]}" for r in rows] == sorted(expected)
    assert all(r[1] for r in rows)
    assert golden.verify().ok


def test_records_match_their_json_schemas(golden):
    manifest_schema = json.loads(schemas.read_text("manifest.schema.json"))
    chunk_schema = json.loads(schemas.read_text("chunk.schema.json"))
    config_schema = json.loads(schemas.read_text("config.schema.json"))
    jsonschema.validate(golden.store.config, config_schema)
    for mid in golden.store.list_manifest_ids():
        jsonschema.validate(json.loads(golden.store.backend.get(f"manifests/{mid[:2]}/{mid}")), manifest_schema)
    for info in golden.store.list_chunks():
        cid = info.key.rsplit("/", 1)[-1]
        header, _ = golden.store.chunk_header(cid)
        jsonschema.validate(header.meta, chunk_schema)


def test_a_chunk_decodes_with_zstd_and_safetensors_alone(golden):
    """No weightvault code: safetensors reads the container, zstd the streams, numpy regroups planes."""
    import numpy as np

    for info in golden.store.list_chunks():
        cid = info.key.rsplit("/", 1)[-1]
        blob = (golden.root / info.key).read_bytes()
        n = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8:8 + n])["__metadata__"]
        streams = load(blob)
        codec = meta["codec"]
        if codec == "raw":
            raw = streams["data"].tobytes()
        elif codec == "zstd":
            raw = zstandard.ZstdDecompressor().decompress(streams["data"].tobytes())
        elif codec == "bytegroup":
            k = int(meta["itemsize"])
            planes = [streams[f"p{i}"].tobytes() for i in range(k)]
            planes = [zstandard.ZstdDecompressor().decompress(p) if kind == "zstd" else p
                      for p, kind in zip(planes, meta["planes"].split(","))]
            raw = np.stack([np.frombuffer(p, np.uint8) for p in planes], axis=1).tobytes()
        else:
            continue  # engine codecs are covered by their own tests
        assert ids.content_id(raw) == cid


def test_container_golden_bytes():
    """The container layout for a fixed input never changes silently."""
    raw = b"weightvault " * 20
    cid = ids.content_id(raw)
    enc = codecs.encode_chunk(raw, cid, dtype=None, level=3)
    assert enc.codec == "zstd"
    head_len = int.from_bytes(enc.container[:8], "little")
    header = json.loads(enc.container[8:8 + head_len])
    assert header["__metadata__"] == {"format": "weightvault.chunk/1", "id": cid, "hash": "blake3",
                                      "raw_len": "240", "codec": "zstd", "level": "3"}
    assert list(header) == ["__metadata__", "data"]
    assert (8 + head_len) % 8 == 0
    assert codecs.decode_chunk(enc.container, cid) == raw


def test_a_zstd_frame_claiming_a_huge_size_is_refused():
    raw = bytes(1000)
    cid = ids.content_id(raw)
    bomb = zstandard.ZstdCompressor().compress(bytes(50_000_000))  # small frame, 50 MB claimed
    from weightvault.archive.safetensors_header import build_file
    from weightvault.errors import ChunkCorruptError

    container = build_file({"data": ("U8", (len(bomb),), bomb)},
                           {"format": codecs.CHUNK_FORMAT, "id": cid, "hash": "blake3", "raw_len": "1000",
                            "codec": "zstd"})
    with pytest.raises(ChunkCorruptError, match="claims 50000000 bytes"):
        codecs.decode_chunk(container, cid)
