"""Shared by the make_golden_*.py scripts: snapshot versions into a new frozen store."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent


def write_frozen_store(name: str, versions: list[dict[str, bytes]]) -> None:
    """Snapshot ``versions`` (file name -> bytes, oldest first) as golden@1.. into tests/data/NAME.

    Keeps only the immutable records (chunks, manifests, refs, config.json) and writes
    NAME.expected.json: each version's files and their sha256. Refuses to overwrite an existing
    store unless --force is given: frozen stores are never rewritten.
    """
    from weightvault.vault import Vault

    out = HERE / name
    if out.exists() and "--force" not in sys.argv:
        sys.exit(f"{out} exists: frozen stores are never rewritten")
    shutil.rmtree(out, ignore_errors=True)
    work = HERE / f"_{name}_src"
    shutil.rmtree(work, ignore_errors=True)
    expected = {}
    v = Vault.init(out)
    for version, files in enumerate(versions, start=1):
        folder = work / f"v{version}"
        folder.mkdir(parents=True)
        for file_name, data in files.items():
            (folder / file_name).write_bytes(data)
        v.snapshot(folder, model="golden", message=f"version {version}")
        expected[f"golden@{version}"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                         for p in sorted(folder.iterdir())}
    shutil.rmtree(work)
    for entry in out.iterdir():  # keep only the immutable records, as in the other frozen stores
        if entry.name not in ("chunks", "config.json", "manifests", "refs"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    (HERE / f"{name}.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


def config_json(version: int) -> bytes:
    return (json.dumps({"hidden_size": 256, "version": version}) + "\n").encode()
