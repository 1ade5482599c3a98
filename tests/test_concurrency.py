"""Four processes snapshot different and identical models at once while a fifth queries in a loop.

All must succeed (or wait for a lock), every chunk must be stored exactly once
(the new-chunk counts the snapshots report add up to the chunk files on disk),
and the catalog must match the manifests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from crash_harness import make_store
from conftest import toy_tensors, write_model

from weightvault.archive.store import Store
from weightvault.vault import Vault

QUERY_LOOP = textwrap.dedent("""
    import json, os, sys, time
    from weightvault.vault import Vault
    store, stop = sys.argv[1], sys.argv[2]
    ok, errors = 0, []
    while not os.path.exists(stop):
        try:
            v = Vault.open(store, create=False)
            v.sql("SELECT model, count(*) FROM versions JOIN files USING (version_id) GROUP BY model")
            ok += 1
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({"ok": ok, "errors": errors}))
""")


def test_four_snapshots_and_a_query_loop_at_once(tmp_path):
    store = make_store(tmp_path / "store", chunk_size=64 << 10)
    a = write_model(tmp_path / "a", toy_tensors(seed=1, layers=3, width=384))
    b = write_model(tmp_path / "b", toy_tensors(seed=2, layers=3, width=384))
    jobs = [(a, "alpha"), (a, "alpha"), (a, "alpha-copy"), (b, "beta")]  # identical twice, same name twice
    env = dict(os.environ, WEIGHTVAULT_LOCK_TIMEOUT="120")
    stop = tmp_path / "stop"
    q = subprocess.Popen([sys.executable, "-c", QUERY_LOOP, str(store), str(stop)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [subprocess.Popen([sys.executable, "-m", "weightvault", "--store", str(store), "snapshot", str(src),
                               "--model", model, "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for src, model in jobs]
    outs = [p.communicate(timeout=300) for p in procs]
    stop.touch()
    q_out, q_err = q.communicate(timeout=120)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = [json.loads(out) for out, _ in outs]
    loop = json.loads(q_out)
    print(f"\nconcurrent snapshots: {len(procs)}, queries during them: {loop['ok']}, query errors: {loop['errors']}")
    assert loop["errors"] == [] and loop["ok"] > 0

    s = Store.open(store)
    refs = s.list_refs()
    assert sorted((r.model, r.version) for r in refs) == [("alpha", "1"), ("alpha", "2"), ("alpha-copy", "1"),
                                                           ("beta", "1")]
    on_disk = {i.key.rsplit("/", 1)[-1] for i in s.list_chunks()}
    manifests = {r.manifest_id: s.get_manifest(r.manifest_id) for r in refs}
    referenced = set().union(*(m.chunk_ids() for m in manifests.values()))
    assert on_disk == referenced
    assert sum(r["new_chunks"] for r in results) == len(on_disk)  # every chunk stored exactly once

    v = Vault.open(store, create=False)
    _, rows = v.sql("SELECT version_id, path, seq, chunk_id FROM file_chunks")
    want = {(mid, f.path, i, c) for mid, m in manifests.items() for f in m.files for i, (c, _) in enumerate(f.chunks)}
    assert set(rows) == want
    _, rows = v.sql("SELECT version_id, model, version FROM versions")
    assert set(rows) == {(r.manifest_id, r.model, r.version) for r in refs}
