"""Pick the S3 client by measurement: boto3 vs obstore (vs s3fs when importable) on SeaweedFS.

Runs each client against the same fresh `weed server -s3` on loopback:
small PUTs (64 KiB, the request-bound case), large PUTs (16 MiB, pack-sized),
ranged GETs (1 MiB out of a 16 MiB object), all with 8 threads.

    python bench/s3_clients.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.s3_fixture import ACCESS_KEY, REGION, SECRET_KEY, SeaweedServer

SMALL, N_SMALL = 64 << 10, 400
LARGE, N_LARGE = 16 << 20, 12
RANGE, N_RANGE = 1 << 20, 200


def boto3_ops(endpoint, bucket):
    import boto3
    from botocore.config import Config

    c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                     region_name=REGION, config=Config(max_pool_connections=16))
    put = lambda k, b: c.put_object(Bucket=bucket, Key=k, Body=b)
    rng = lambda k, s, n: c.get_object(Bucket=bucket, Key=k, Range=f"bytes={s}-{s + n - 1}")["Body"].read()
    return put, rng


def obstore_ops(endpoint, bucket):
    import obstore
    from obstore.store import S3Store

    s = S3Store(bucket, endpoint=endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                region=REGION, client_options={"allow_http": True})
    put = lambda k, b: obstore.put(s, k, b)
    rng = lambda k, st, n: bytes(obstore.get_range(s, k, start=st, length=n))
    return put, rng


def measure(name, ops, pool):
    put, rng = ops
    small, large = os.urandom(SMALL), os.urandom(LARGE)
    t = time.perf_counter()
    list(pool.map(lambda i: put(f"{name}/s/{i}", small), range(N_SMALL)))
    small_rps = N_SMALL / (time.perf_counter() - t)
    t = time.perf_counter()
    list(pool.map(lambda i: put(f"{name}/l/{i}", large), range(N_LARGE)))
    large_mbs = N_LARGE * LARGE / 1e6 / (time.perf_counter() - t)
    t = time.perf_counter()
    out = list(pool.map(lambda i: rng(f"{name}/l/{i % N_LARGE}", (i * 7919 % 15) << 20, RANGE), range(N_RANGE)))
    range_mbs = sum(map(len, out)) / 1e6 / (time.perf_counter() - t)
    return small_rps, large_mbs, range_mbs


def main():
    srv = SeaweedServer(tempfile.mkdtemp(prefix="wv-s3clients-")).start()
    try:
        srv.create_bucket("clients")
        rows = []
        with ThreadPoolExecutor(8) as pool:
            for name, mk in (("boto3", boto3_ops), ("obstore", obstore_ops)):
                try:
                    ops = mk(srv.endpoint, "clients")
                except ImportError as e:
                    print(f"{name}: not installed ({e})")
                    continue
                rows.append((name, *measure(name, ops, pool)))
        base = rows[0]
        print(f"{'client':<10}{'64KiB PUT/s':>14}{'16MiB PUT MB/s':>16}{'1MiB range GET MB/s':>21}")
        for r in rows:
            print(f"{r[0]:<10}{r[1]:>9.0f} ({r[1] / base[1]:.2f}x){r[2]:>10.0f} ({r[2] / base[2]:.2f}x)"
                  f"{r[3]:>14.0f} ({r[3] / base[3]:.2f}x)")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
