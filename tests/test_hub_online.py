"""Hub snapshots over HTTP, against a real fake Hub (tests/fake_hub.py) on 127.0.0.1; never the network.

Each case runs the real ``weightvault`` CLI in a child process, so huggingface_hub reads HF_ENDPOINT
(the fake Hub's loopback address) at import and prints to the child's real stderr, which is what a
user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import store_snapshot_state, toy_tensors, tree_files, write_model
from fake_hub import REMOTE_COMMIT, FakeHub


@pytest.fixture
def remote_files(tmp_path) -> dict[str, bytes]:
    model = write_model(tmp_path / "remote-src", toy_tensors(seed=11, width=128),
                        files={"README.md": "---\nlicense: mit\n---\n# remote\n"})
    return tree_files(model)


@pytest.fixture
def fake_hub(remote_files):
    with FakeHub(remote_files) as hub:
        yield hub


@pytest.fixture
def wv(tmp_path, store_dir, vault):
    """Run ``weightvault --store STORE ARGS`` in a child process pointed at ``endpoint``."""
    cache = tmp_path / "hf-cache"

    def run(endpoint: str, *args) -> subprocess.CompletedProcess:
        assert endpoint.startswith("http://127.0.0.1:")  # loopback only
        env = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and not k.startswith(("HF_", "HUGGING"))}
        env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"),
                   HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="10",
                   HF_HUB_DOWNLOAD_TIMEOUT="10", NO_PROXY="127.0.0.1,localhost", COLUMNS="200",
                   WEIGHTVAULT_STORE=str(tmp_path / "default-store"))
        return subprocess.run([sys.executable, "-m", "weightvault", "--store", str(store_dir), *map(str, args)],
                              env=env, capture_output=True, text=True, timeout=300)

    run.cache = cache
    return run


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The child failed with exactly one stderr line, an error, no traceback; return it."""
    assert r.returncode not in (0, None), r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr and "internal error" not in r.stderr
    return lines[0]


def test_online_snapshot_pins_the_branch(fake_hub, wv, vault, remote_files, tmp_path):
    r = wv(fake_hub.url, "snapshot", "hf:org/remote", "--json")
    assert r.returncode == 0, r.stderr
    _, rows = vault.sql("SELECT model, source_revision FROM versions")
    assert rows == [("org/remote", REMOTE_COMMIT)]
    assert (wv.cache / "models--org--remote" / "refs" / "main").read_text().strip() == REMOTE_COMMIT


def test_interrupted_download_is_one_line_naming_repo_and_file(fake_hub, wv, store_dir):
    fake_hub.mode = "truncate"  # the weights' body stops halfway, every time huggingface_hub retries
    before = store_snapshot_state(store_dir)
    r = wv(fake_hub.url, "snapshot", "hf:org/remote", "--model", "r")
    line = one_line_error(r)
    assert r.returncode == 1
    assert "hf:org/remote" in line and "model.safetensors" in line and "interrupted" in line
    assert "rerun" in line
    assert "Trying to resume" not in r.stderr and "Error while downloading" not in r.stderr  # huggingface_hub's log
    assert store_snapshot_state(store_dir) == before
    fake_hub.mode = "ok"  # the connection is back: the same command finishes
    r = wv(fake_hub.url, "snapshot", "hf:org/remote", "--model", "r")
    assert r.returncode == 0, r.stderr


def test_hub_answering_500_with_nothing_cached_says_so(fake_hub, wv, store_dir):
    fake_hub.mode = "h500"
    before = store_snapshot_state(store_dir)
    line = one_line_error(wv(fake_hub.url, "snapshot", "hf:org/remote", "--model", "r"))
    assert "HF_HUB_OFFLINE" not in line  # never set: not the cause
    assert "500" in line and "hf:org/remote" in line and str(wv.cache) in line
    assert store_snapshot_state(store_dir) == before


def test_unreachable_hub_with_nothing_cached_says_so(fake_hub, wv, store_dir):
    fake_hub.stop()  # nothing listens on the port any more: connection refused
    before = store_snapshot_state(store_dir)
    line = one_line_error(wv(fake_hub.url, "snapshot", "hf:org/remote", "--model", "r"))
    assert "HF_HUB_OFFLINE" not in line
    assert "could not be reached" in line and "hf:org/remote" in line and str(wv.cache) in line
    assert store_snapshot_state(store_dir) == before


def test_listed_file_that_answers_404_is_named_and_not_retried(fake_hub, wv, store_dir):
    fake_hub.mode = "miss"  # in the tree listing, but 404 on download
    before = store_snapshot_state(store_dir)
    r = wv(fake_hub.url, "snapshot", "hf:org/remote", "--model", "r")
    line = one_line_error(r)
    assert r.returncode == 3
    assert "model.safetensors" in line and "404" in line and "hf:org/remote" in line
    assert "retry" not in line.lower()
    assert store_snapshot_state(store_dir) == before


@pytest.mark.parametrize("outage", ["down", "h500"])
def test_unreachable_hub_falls_back_to_the_cached_branch_with_a_warning(outage, fake_hub, wv, vault):
    assert wv(fake_hub.url, "snapshot", "hf:org/remote", "--model", "r").returncode == 0
    if outage == "down":
        fake_hub.stop()
    else:
        fake_hub.mode = "h500"
    r = wv(fake_hub.url, "snapshot", "hf:org/remote@main", "--model", "r2")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "cached" in warnings[0] and REMOTE_COMMIT in warnings[0], r.stderr
    assert "main" in warnings[0]
    _, rows = vault.sql("SELECT model, source_revision FROM versions ORDER BY model")
    assert rows == [("r", REMOTE_COMMIT), ("r2", REMOTE_COMMIT)]
