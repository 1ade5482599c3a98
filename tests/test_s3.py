"""The store on S3-compatible object storage, against a real SeaweedFS server.

Fixtures from tests/s3_fixture.py (registered in conftest): ``seaweed`` (one
server per session), ``s3_bucket``/``s3_store_url`` (a fresh bucket per test),
``any_backend_vault`` (local and s3). Skipped when ``weed`` is absent.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
from conftest import toy_tensors, tree_files, write_model
from weightvault.archive import ids, pack_gc, packs
from weightvault.archive.leases import EXCLUSIVE_KEY, LeaseLock
from weightvault.archive.s3 import S3Backend, S3Location
from weightvault.archive.store import Store

from weightvault.errors import LockBusyError, StoreNotFoundError
from weightvault.vault import Vault


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def bucket_keys(seaweed, bucket: str, prefix: str = "") -> list[str]:
    """Every key in the bucket, listed with another client (boto3): what is really stored."""
    c = seaweed.client()
    keys, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        r = c.list_objects_v2(**kw)
        keys += [o["Key"] for o in r.get("Contents", [])]
        if not r.get("IsTruncated"):
            return keys
        token = r["NextContinuationToken"]


def test_round_trip_on_both_backends(any_backend_vault, toy_model, tmp_path):
    v = any_backend_vault
    res = v.snapshot(toy_model, "toy")
    out = tmp_path / "out"
    v.restore("toy@1", out)
    assert tree_files(out) == tree_files(toy_model)
    report = v.verify()
    assert report.ok and report.chunks_checked == res.stats.chunks
    _, rows = v.sql("SELECT model, version FROM versions")
    assert rows == [("toy", "1")]


def test_cli_init_with_endpoint_then_every_command(seaweed, s3_bucket, toy_model, tmp_path, cli, monkeypatch):
    url = f"s3://{s3_bucket}/team/vault"
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only --endpoint names the server here
    r = cli("init", "--endpoint", seaweed.endpoint, "--json", store=url)
    assert r.rc == 0, r
    assert r.json()["store"] == url
    # later commands find the endpoint remembered at init, and the store through WEIGHTVAULT_STORE
    monkeypatch.setenv("WEIGHTVAULT_STORE", url)
    assert cli("snapshot", toy_model, "--model", "toy", "--json", store=None).rc == 0
    log = cli("log", "toy", "--json", store=None)
    assert log.rc == 0 and [e["version"] for e in log.json()] == ["1"]
    assert cli("restore", "toy@1", tmp_path / "out", store=None).rc == 0
    assert tree_files(tmp_path / "out") == tree_files(toy_model)
    assert cli("verify", store=None).rc == 0
    keys = bucket_keys(seaweed, s3_bucket, "team/vault/")
    assert "team/vault/config.json" in keys and any(k.startswith("team/vault/refs/toy/") for k in keys)
    assert not any(k.startswith("team/vault/chunks/") for k in keys), "chunks must live in packs"


def test_missing_store_bad_credentials_and_dead_endpoint_are_one_line_errors(s3_bucket, cli, monkeypatch):
    with pytest.raises(StoreNotFoundError):
        Store.open(f"s3://{s3_bucket}/absent")  # without create
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    r = cli("log", store=f"s3://{s3_bucket}/vault")
    assert r.rc == 10 and "access denied" in r.err and "AWS_SECRET_ACCESS_KEY" in r.err, r
    monkeypatch.setenv("WEIGHTVAULT_S3_RETRY_TIMEOUT", "1")
    r = cli("--endpoint", "http://127.0.0.1:9", "log", store=f"s3://{s3_bucket}/vault")
    assert r.rc == 10 and "--endpoint" in r.err and "Traceback" not in r.err, r


def test_packs_aggregate_chunks_and_read_by_range(s3_store_url, seaweed, s3_bucket, tmp_path):
    store = Store.init(s3_store_url, pack_size=64 << 10)  # tiny packs: many per model
    v = Vault(store)
    t = toy_tensors(seed=3, layers=8, width=128)
    write_model(tmp_path / "m", t)
    res = v.snapshot(tmp_path / "m", "toy")
    b = store.backend
    assert isinstance(b, packs.PackedBackend)
    n_packs = len(bucket_keys(seaweed, s3_bucket, "store/packs/"))
    assert n_packs == b.requests["pack_put"] >= 2
    assert n_packs < res.stats.new_chunks  # fewer objects than chunks
    assert len(bucket_keys(seaweed, s3_bucket, "store/packidx/")) == n_packs
    # a single tensor is read with ranged GETs of its own chunks only
    fresh = Vault.open(s3_store_url)
    before = dict(fresh.store.backend.requests)
    arr = fresh.read_tensor("toy@1", "encoder.layer.5.weight")
    assert (arr == t["encoder.layer.5.weight"]).all()
    f = res.manifest.file("model.safetensors")
    tensor = next(x for x in f.tensors if x.name == "encoder.layer.5.weight")
    assert fresh.store.backend.requests["range_get"] - before["range_get"] == tensor.n_chunks
    # every chunk listed through the pack index, with its container size
    listed = {i.key.rsplit("/", 1)[-1]: i.size for i in fresh.store.list_chunks()}
    assert set(listed) == {c for e in res.manifest.files for c, _ in e.chunks}


def test_chunk_invisible_until_its_pack_is_stored(s3_store_url):
    store = Store.init(s3_store_url)
    b = store.backend
    other = Store.open(s3_store_url).backend  # another machine
    key = "chunks/ab/" + "ab" * 32
    b.put(key, b"container bytes")
    assert b.has(key) and b.get(key) == b"container bytes"  # the writer reads its own write
    assert not other.has(key) and other.lookup(key.rsplit("/", 1)[-1]) is None
    store.put_event("probe", {})  # any non-chunk write flushes packs first (write order)
    assert other.lookup(key.rsplit("/", 1)[-1]) is not None
    assert other.get(key) == b"container bytes"


def test_conditional_ref_claims_one_wins(s3_store_url):
    Store.init(s3_store_url)
    stores = [Store.open(s3_store_url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    results = []

    def claim(i):
        barrier.wait()
        results.append((i, stores[i].create_ref("race", "1", ("%02x" % i) * 32)))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    winners = [i for i, ok in results if ok]
    assert len(winners) == 1
    assert stores[0].get_ref("race", "1").manifest_id == ("%02x" % winners[0]) * 32


def test_concurrent_snapshots_of_one_model_get_distinct_versions(s3_store_url, tmp_path):
    Vault.init(s3_store_url)
    folders = []
    for i in range(3):
        folders.append(write_model(tmp_path / f"m{i}", toy_tensors(seed=10 + i)))
    results, errors = [], []

    def run(folder):
        try:
            results.append((folder, Vault.open(s3_store_url).snapshot(folder, "shared")))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f,)) for f in folders]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert sorted(r.version for _, r in results) == ["1", "2", "3"]
    v = Vault.open(s3_store_url)
    for folder, r in results:
        out = tmp_path / f"out{r.version}"
        v.restore(f"shared@{r.version}", out)
        assert tree_files(out) == tree_files(folder)


def test_lease_lock_exclusive_excludes_shared_and_stale_lease_expires(s3_store_url):
    store = Store.init(s3_store_url)
    a = LeaseLock(store.lock.backend, "store test", ttl=30)
    b = LeaseLock(store.lock.backend, "store test", ttl=30)
    with a.held(shared=True, op="snapshot"):
        with b.held(shared=True, op="restore"):  # shared with shared: fine
            pass
        with pytest.raises(LockBusyError, match="snapshot"):
            b.acquire(shared=False, timeout=0.5, op="gc")
    assert not store.lock.backend.has(EXCLUSIVE_KEY)  # the failed claimant withdrew
    with b.held(shared=False, op="gc"), pytest.raises(LockBusyError, match="gc"):
        a.acquire(shared=True, timeout=0.3)
    # a holder that died: its lease runs out and the next claimant removes it
    dead = LeaseLock(store.lock.backend, "store test", ttl=0.5)
    dead.acquire(shared=False, op="crashed gc")
    dead._stop.set()  # stop renewing, as a killed process would
    dead._renewer.join()
    with a.held(shared=True, timeout=10, op="snapshot"):
        pass


def test_two_machines_share_the_catalog_through_the_bucket(s3_store_url, toy_model, tmp_path, monkeypatch):
    a = Vault.init(s3_store_url)
    a.snapshot(toy_model, "toy")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
    b = Vault.open(s3_store_url)
    assert b.store.catalog_path != a.store.catalog_path
    assert b.sql("SELECT model, version FROM versions")[1] == [("toy", "1")]
    write_model(tmp_path / "v2", toy_tensors(seed=5))
    b.snapshot(tmp_path / "v2", "toy")
    # machine a refreshes incrementally from the refs and manifests in the bucket
    assert sorted(a.sql("SELECT version FROM versions WHERE model = 'toy'")[1]) == [("1",), ("2",)]
    assert a.catalog.sync() == (0, 0, 0)


def test_pack_gc_drops_dead_packs_and_repacks_partly_live(s3_store_url, tmp_path):
    store = Store.init(s3_store_url, pack_size=32 << 10)
    v = Vault(store)
    write_model(tmp_path / "a", toy_tensors(seed=20))
    write_model(tmp_path / "b", toy_tensors(seed=21))
    ra = v.snapshot(tmp_path / "a", "a")
    rb = v.snapshot(tmp_path / "b", "b")
    live = {c for f in ra.manifest.files for c, _ in f.chunks}  # as if b were removed
    dead = {c for f in rb.manifest.files for c, _ in f.chunks} - live
    b = store.backend
    usage = pack_gc.pack_usage(b, live)
    assert any(not u.live for u in usage)
    dry = pack_gc.sweep_packs(b, live, grace_s=0, dry_run=True)
    assert dry.packs_dropped and len(pack_gc.pack_usage(b, live)) == len(usage)
    rep = pack_gc.sweep_packs(b, live, grace_s=0)
    assert rep.bytes_freed > 0 and rep.chunks_dropped > 0
    # partly live packs: repack keeps exactly the live chunks readable
    rp = pack_gc.repack(b, live, max_live_fraction=0.99, grace_s=0)
    after = Vault.open(s3_store_url).store
    stored = {i.key.rsplit("/", 1)[-1] for i in after.list_chunks()}
    assert live <= stored and not (dead & stored)
    assert all(not u.dead for u in pack_gc.pack_usage(after.backend, live))
    out = tmp_path / "out"
    Vault.open(s3_store_url).restore("a@1", out)
    assert tree_files(out) == tree_files(tmp_path / "a")
    assert rp.bytes_freed + rep.bytes_freed >= sum(u.dead_bytes for u in usage)


def test_deleting_packed_chunks_rewrites_each_index_once_at_flush(s3_store_url, toy_model):
    store = Store.init(s3_store_url)
    res = Vault(store).snapshot(toy_model, "toy")
    cid = res.manifest.files[0].chunks[0][0]
    assert store.backend.delete(store.chunk_key(cid))
    assert not store.has_chunk(cid)  # gone at once for this process
    assert Store.open(s3_store_url).has_chunk(cid)  # the index rewrite waits for the next flush
    store.backend.flush()
    fresh = Store.open(s3_store_url)
    assert not fresh.has_chunk(cid)
    assert not fresh.backend.delete(fresh.chunk_key(cid))


def test_s3_backend_contract(s3_bucket):
    b = S3Backend(S3Location.parse(f"s3://{s3_bucket}/raw"))
    assert b.put("x/1", b"hello world")
    assert not b.put("x/1", b"other", exclusive=True) and b.get("x/1") == b"hello world"
    assert b.get_range("x/1", 6, 100) == b"world"  # past the end: a short read, like a file
    assert b.get_range("x/1", 20, 5) == b""
    assert b.stat("x/1").size == 11 and b.stat("x/2") is None
    assert [i.key for i in b.list("x/")] == ["x/1"]
    assert b.delete("x/1") and not b.delete("x/1")
    with pytest.raises(FileNotFoundError):
        b.get("x/1")


@pytest.mark.skipif(os.environ.get("WEIGHTVAULT_S3_FAULTS") == "0", reason="fault tests disabled")
def test_server_killed_mid_snapshot_loses_nothing_and_the_rerun_succeeds(tmp_path, monkeypatch):
    from s3_fixture import SeaweedServer, _require_s3

    from weightvault.errors import StoreUnavailableError

    srv = SeaweedServer(tmp_path / "weed", _require_s3()).start()
    try:
        srv.create_bucket("faults")
        for k, val in srv.env().items():
            monkeypatch.setenv(k, val)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        monkeypatch.setenv("WEIGHTVAULT_S3_RETRY_TIMEOUT", "2")
        url = "s3://faults/vault"
        store = Store.init(url, pack_size=64 << 10)
        v = Vault(store, lock_timeout=30)
        write_model(tmp_path / "v1", toy_tensors(seed=30, layers=6, width=128))
        v.snapshot(tmp_path / "v1", "m")  # committed before the crash
        write_model(tmp_path / "v2", toy_tensors(seed=31, layers=6, width=128))

        class KillHalfway:
            seen = 0

            def start(self, total):
                self.total = total

            def __call__(self, n):
                self.seen += n
                if self.seen >= self.total // 2 and srv.proc.poll() is None:
                    srv.kill()

        with pytest.raises(StoreUnavailableError):
            Vault(Store.open(url), lock_timeout=30).snapshot(tmp_path / "v2", "m", progress=KillHalfway())
        srv.start()
        v = Vault.open(url, lock_timeout=30)
        assert [r.version for r in v.store.list_refs("m")] == ["1"]  # no half-written version
        out = tmp_path / "out1"
        v.restore("m@1", out)
        assert tree_files(out) == tree_files(tmp_path / "v1")
        res = v.snapshot(tmp_path / "v2", "m")  # the rerun succeeds
        assert res.version == "2"
        v.restore("m@2", tmp_path / "out2")
        assert tree_files(tmp_path / "out2") == tree_files(tmp_path / "v2")
        assert v.verify().ok
    finally:
        srv.stop()
    assert not [s for s in srv.sockets() if s.exists()]  # the fixture cleans up what weed leaves in /tmp


def test_sequential_restore_reads_whole_runs_of_chunks_per_get(s3_store_url, tmp_path):
    store = Store.init(s3_store_url)
    t = toy_tensors(seed=40, layers=16, width=128)
    write_model(tmp_path / "m", t)
    res = Vault(store).snapshot(tmp_path / "m", "toy")
    n_chunks = sum(len(f.chunks) for f in res.manifest.files)
    v = Vault.open(s3_store_url)
    v.restore("toy@1", tmp_path / "out")
    assert tree_files(tmp_path / "out") == tree_files(tmp_path / "m")
    gets = v.store.backend.requests["range_get"]
    assert gets < n_chunks / 4, (gets, n_chunks)  # readahead: a few GETs per pack, not one per chunk


def test_catalog_export_writes_parquet_into_the_bucket(s3_store_url, seaweed, s3_bucket, toy_model, cli, tmp_path):
    import duckdb

    assert cli("snapshot", toy_model, "--model", "toy", store=s3_store_url).rc == 0
    r = cli("catalog", "export", f"s3://{s3_bucket}/shared/catalog", "--json", store=s3_store_url)
    assert r.rc == 0, r
    paths = {d["table"]: d["path"] for d in r.json()}
    assert paths["versions"] == f"s3://{s3_bucket}/shared/catalog/versions.parquet"
    body = seaweed.client().get_object(Bucket=s3_bucket, Key="shared/catalog/versions.parquet")["Body"].read()
    (tmp_path / "v.parquet").write_bytes(body)
    rows = duckdb.sql(f"SELECT model, version FROM read_parquet('{tmp_path / 'v.parquet'}')").fetchall()
    assert rows == [("toy", "1")]
    # --views then without: the view objects of the export before are deleted, the tables stay
    url = f"s3://{s3_bucket}/shared/catalog"
    assert cli("catalog", "export", url, "--views", store=s3_store_url).rc == 0
    s3 = seaweed.client()

    def keys():
        listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="shared/catalog/").get("Contents", [])
        return {o["Key"].rsplit("/", 1)[1] for o in listed}

    assert {"lineage.parquet", "versions.parquet", "_export.json"} <= keys()
    r = cli("catalog", "export", url, "--json", store=s3_store_url)
    assert r.rc == 0, r
    assert keys() == {f"{d['table']}.parquet" for d in r.json()} | {"_export.json"}
    # an object no export listed is never overwritten: the export is refused before any PUT
    s3.put_object(Bucket=s3_bucket, Key="mine/versions.parquet", Body=b"the user's")
    r = cli("catalog", "export", f"s3://{s3_bucket}/mine", store=s3_store_url)
    assert r.rc != 0 and "Traceback" not in r.err and "mine/versions.parquet exists" in r.err, r
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="mine/").get("Contents", [])
    assert [o["Key"] for o in listed] == ["mine/versions.parquet"]
    assert s3.get_object(Bucket=s3_bucket, Key="mine/versions.parquet")["Body"].read() == b"the user's"


def test_chunk_stored_twice_by_concurrent_writers_is_freed_once_by_gc(s3_store_url, toy_model, tmp_path):
    Store.init(s3_store_url)
    a, b = Store.open(s3_store_url), Store.open(s3_store_url)  # two machines, neither sees the other's packs yet
    a.backend.refresh(), b.backend.refresh()
    b.backend.revalidate = lambda: None  # both run at once: b took its lock before a's pack existed
    # b's open pack already holds an unrelated chunk, so its pack can never be byte-identical to a's
    # (identical packs share one content-named key, and the chunks would not be stored twice).
    other = b"a chunk b wrote earlier"
    b.backend.put(b.chunk_key(ids.content_id(other)), other)
    ra = Vault(a).snapshot(toy_model, "x")
    rb = Vault(b).snapshot(toy_model, "y")
    assert rb.stats.new_chunks == ra.stats.new_chunks  # b could not know: every chunk is in two packs
    fresh = Store.open(s3_store_url).backend
    live = {c for f in ra.manifest.files for c, _ in f.chunks}
    usage = pack_gc.pack_usage(fresh, live)
    assert len(usage) == 2 and sorted(len(u.live) for u in usage) == [0, len(live)]
    rep = pack_gc.sweep_packs(fresh, live, grace_s=0)
    assert len(rep.packs_dropped) == 1
    for name in ("x", "y"):
        Vault.open(s3_store_url).restore(f"{name}@1", tmp_path / name)
        assert tree_files(tmp_path / name) == tree_files(toy_model)


def test_gc_command_frees_dead_bytes_inside_partly_live_packs(s3_store_url, tmp_path, cli, seaweed, s3_bucket):
    """`weightvault gc` (issue 7's, unchanged) on a packed store: per-chunk deletes are batched per
    pack, and its sweep step repacks packs that became mostly dead."""
    store = Store.init(s3_store_url, pack_size=8 << 20)  # both versions land in one pack each
    v = Vault(store)
    t = toy_tensors(seed=50, layers=6, width=128)
    write_model(tmp_path / "a", t)
    ra = v.snapshot(tmp_path / "a", "m")
    t2 = {k: (a + 1 if k.startswith("encoder") else a) for k, a in t.items()}
    write_model(tmp_path / "b", t2)
    rb = v.snapshot(tmp_path / "b", "m")
    packs_before = bucket_keys(seaweed, s3_bucket, "store/packs/")
    pack_bytes = sum(o["Size"] for o in seaweed.client().list_objects_v2(
        Bucket=s3_bucket, Prefix="store/packs/")["Contents"])
    assert cli("rm", "m@2", store=s3_store_url).rc == 0
    r = cli("gc", "--grace", "0", "--json", store=s3_store_url)
    assert r.rc == 0, r
    after = bucket_keys(seaweed, s3_bucket, "store/packs/")
    after_bytes = sum(o["Size"] for o in seaweed.client().list_objects_v2(
        Bucket=s3_bucket, Prefix="store/packs/").get("Contents", []))
    only_b = rb.manifest.chunk_ids() - ra.manifest.chunk_ids()
    assert only_b and after_bytes < pack_bytes and set(after) != set(packs_before)
    fresh = Vault.open(s3_store_url)
    stored = {i.key.rsplit("/", 1)[-1] for i in fresh.store.list_chunks()}
    assert ra.manifest.chunk_ids() <= stored and not (only_b & stored)
    fresh.restore("m@1", tmp_path / "out")
    assert tree_files(tmp_path / "out") == tree_files(tmp_path / "a")


def test_second_command_reads_refs_and_manifests_from_the_local_copy(s3_store_url, toy_model):
    v = Vault.init(s3_store_url)
    v.snapshot(toy_model, "toy")
    first = Vault.open(s3_store_url)
    first.manifest("toy@1")
    second = Vault.open(s3_store_url)  # a later command on this machine
    raw = second.store.backend.inner
    before = dict(raw.requests)
    refs = second.store.list_refs("toy")
    m = second.manifest_by_id(refs[0].manifest_id)
    assert [r.version for r in refs] == ["1"] and m.model == "toy"
    # one LIST; the ref (validated by the listing) and the manifest come from local copies
    assert raw.requests["GET"] == before["GET"] and raw.requests["LIST"] == before["LIST"] + 1


def test_a_process_that_outlives_a_gc_elsewhere_does_not_reuse_what_it_deleted(s3_store_url, toy_model, tmp_path,
                                                                               cli):
    """One `snapshot A B C` (the lock is taken per version) or a Vault kept open: another machine's
    gc between two versions deleted chunks this process's pack index still listed. The next version
    must store them again, not name deleted chunks."""
    Store.init(s3_store_url)
    here = Vault(Store.open(s3_store_url))
    here.snapshot(toy_model, "old")
    assert cli("rm", "old@1", store=s3_store_url).rc == 0
    rep = cli("gc", "--grace", "0", "--json", store=s3_store_url).json()  # another process, its own index
    assert rep["removed_chunks"] > 0
    res = here.snapshot(toy_model, "again")  # the same bytes, from the process that stored them first
    assert res.stats.new_chunks == rep["removed_chunks"], res.stats
    fresh = Vault.open(s3_store_url)
    assert fresh.verify().ok
    fresh.restore("again@1", tmp_path / "out")
    assert tree_files(tmp_path / "out") == tree_files(toy_model)


def test_a_writer_whose_lease_ran_out_commits_and_deletes_nothing(s3_store_url, toy_model, tmp_path):
    """A holder paused past its lease (suspend, SIGSTOP) may have been declared stale and the store
    lock taken by another machine's gc: it must not commit a version, nor re-create its lease."""
    from weightvault.archive.snapshot import snapshot
    from weightvault.errors import LeaseLostError

    store = Store.init(s3_store_url)
    paused = LeaseLock(store.lock.backend, f"store {s3_store_url}", ttl=0.9)
    store.lock = paused
    paused.acquire(shared=True, op="snapshot toy")
    key = paused._key
    paused.check()  # held: fine
    paused._stop.set()  # paused: no renewals
    paused._renewer.join()
    other = LeaseLock(store.lock.backend, "store (gc elsewhere)", ttl=30)
    with other.held(shared=False, timeout=10, op="gc"):  # ours ran out: it is removed as stale
        assert not store.lock.backend.has(key)
    with pytest.raises(LeaseLostError, match="lost its lease"):
        snapshot(store, toy_model, "toy")
    assert store.get_ref("toy", "1") is None and not list(store.list_refs())
    # the process resumes: its renewer finds the lease gone and never re-creates it
    paused._start_renewer()
    deadline = time.monotonic() + 10
    while not paused._lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert paused._lost and not store.lock.backend.has(key)
    paused.release()
    # a lease that is renewed in time is never lost
    live = LeaseLock(store.lock.backend, "store", ttl=0.9)
    with live.held(shared=True, op="snapshot"):
        time.sleep(1.5)
        live.check()


def test_a_claim_deleted_by_a_late_stale_cleaner_is_not_held_twice(s3_store_url, monkeypatch):
    """Two waiters read the same expired exclusive claim; one deletes it and claims, then the other's
    delete (meant for the stale claim) removes the fresh one and it claims too. The first must notice
    before it counts as holding: two gcs at once, or a gc beside a snapshot, would follow."""
    store = Store.init(s3_store_url)
    backend = store.lock.backend
    a = LeaseLock(backend, "store test", ttl=30)
    b = LeaseLock(backend, "store test", ttl=30)
    real_put = type(backend).put
    raced = []

    def put(self, key, data, *, exclusive=False):
        ok = real_put(self, key, data, exclusive=exclusive)
        if key == EXCLUSIVE_KEY and exclusive and ok and not raced:
            raced.append(1)  # b's late delete of "the stale claim", then b's own claim
            self.delete(EXCLUSIVE_KEY)
            b.acquire(shared=False, timeout=5, op="gc b")
        return ok

    monkeypatch.setattr(type(backend), "put", put)
    with pytest.raises(LockBusyError, match="gc b"):
        a.acquire(shared=False, timeout=3, op="gc a")
    assert b._depth == 1 and a._depth == 0
    assert LeaseLock(backend, "x")._read(EXCLUSIVE_KEY)["op"] == "gc b"  # a never deleted b's claim
    b.release()


def test_an_exclusive_holder_whose_claim_was_taken_stops_at_its_next_check(s3_store_url):
    """A stale-claim cleaner whose delete lands after the settle time (a retried DELETE, a paused
    waiter) can still remove a fresh claim: the holder's check(), which gc runs before each delete,
    reads the claim back every VERIFY_S and stops it."""
    from weightvault.archive import leases
    from weightvault.errors import LeaseLostError

    store = Store.init(s3_store_url)
    backend = store.lock.backend
    a = LeaseLock(backend, "store test", ttl=30)
    a.acquire(shared=False, op="gc a")
    a.check()
    backend.delete(EXCLUSIVE_KEY)  # the late delete
    b = LeaseLock(backend, "store test", ttl=30)
    b.acquire(shared=False, timeout=5, op="gc b")
    time.sleep(leases.VERIFY_S)
    with pytest.raises(LeaseLostError, match="another process removed its claim"):
        a.check()
    with pytest.raises(LeaseLostError):
        a.check()  # and stays lost
    a.release()
    assert LeaseLock(backend, "x")._read(EXCLUSIVE_KEY)["op"] == "gc b"  # a's release left b's claim alone
    b.release()


def test_repair_then_snapshot_heals_a_delta_whose_base_was_damaged(s3_store_url, seaweed, s3_bucket, tmp_path, cli):
    """On S3 a snapshot does not read a reused chunk's base chain; repair moves the deltas built on a
    damaged base aside too, so snapshotting the affected version's files again stores them in full
    (it reused them, and committed one more version that could not be restored)."""
    import numpy as np

    Store.init(s3_store_url)
    rng = np.random.default_rng(0)
    t = {"w": rng.standard_normal((60000, 64)).astype(np.float32)}
    a = write_model(tmp_path / "a", t)
    b = write_model(tmp_path / "b", {"w": t["w"] + (rng.standard_normal(t["w"].shape) * 1e-4).astype(np.float32)})
    assert cli("snapshot", a, "--model", "h", store=s3_store_url).rc == 0
    assert cli("snapshot", b, "--model", "h", store=s3_store_url).rc == 0
    store = Store.open(s3_store_url)
    m2 = store.get_manifest(store.get_ref("h", "2").manifest_id)
    bases = {store.chunk_header(c)[0].base for c in m2.chunk_ids()} - {None}
    assert bases, "the engine stored no delta for this pair: the test needs one"
    base = sorted(bases)[0]
    e = store.backend.lookup(base)
    key = f"store/packs/{e.pack_id[:2]}/{e.pack_id}"
    s3 = seaweed.client()
    body = bytearray(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[e.offset + e.length - 50] ^= 0xFF  # bit rot inside the base's container
    s3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    rep = cli("repair", "--json", store=s3_store_url)
    assert rep.rc == 5 and base in rep.json()["quarantined"], rep
    assert rep.json().get("quarantined_deltas"), rep
    assert cli("snapshot", b, "--model", "h", store=s3_store_url).rc == 0  # h@3: the heal
    for v, src in (("h@2", b), ("h@3", b)):
        out = tmp_path / v
        r = cli("restore", v, out, store=s3_store_url)
        assert r.rc == 0, r
        assert tree_files(out) == tree_files(src)
