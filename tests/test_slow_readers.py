"""Clients that ask for a blob and never read it cost the server bounded memory and no CPU, and are
disconnected once they have accepted nothing for the send timeout (api/sendfile.SEND_TIMEOUT).

Memory and CPU are read from /proc of a real pullcache process in front of the session upstream; the
timeout itself is also tested in-process, where SEND_TIMEOUT can be shortened directly.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from pullcache.api import sendfile
from pullcache.config import Config, build_config
from tests.registry_api import push_blob
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, Upstream
from tests.support.stalled import (
    StalledReaders,
    connections_to,
    cpu_seconds,
    rss_mib,
    send_queues,
    wait_until,
)
from tests.support_faults import AccessLog

pytest_plugins = ["tests.registry_api"]

BIG = 64 * 1024 * 1024
READERS = 100
SEND_TIMEOUT = 12.0  # longer than the fill takes, so the readers are all still there when it ends
MEMORY_BOUND_MIB = 50  # what the stalled readers of a fill may add to the server's RSS, all together
CPU_WINDOW = 2.0
CPU_BOUND = 0.1  # CPU seconds the stalled readers of a cached blob may cost in CPU_WINDOW, all together


def random_chunks(size: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    for _ in range(size // chunk):
        yield os.urandom(chunk)


@pytest.fixture
def big_blob(upstream: Upstream) -> tuple[str, str]:
    """(repository, digest) of a BIG-byte blob just pushed to the upstream under a name of its own."""
    repo = f"slow/readers-{uuid.uuid4().hex[:8]}"
    client = RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD)
    digest, _ = client.upload_blob_stream(repo, random_chunks(BIG))
    return repo, digest


def start_with_send_timeout(pullcache_factory: Callable[..., PullcacheProcess], seconds: float) -> PullcacheProcess:
    proc = pullcache_factory(start=False)
    proc.process.argv = [sys.executable, "-m", "tests.support.send_timeout_serve", str(seconds),
                         *proc.process.argv[3:]]
    return proc.start()


def test_stalled_readers_of_a_fill_hold_no_memory_and_are_cut_after_the_send_timeout(
        pullcache_factory: Callable[..., PullcacheProcess], big_blob: tuple[str, str]) -> None:
    repo, digest = big_blob
    proc = start_with_send_timeout(pullcache_factory, SEND_TIMEOUT)
    pid = proc.process.pid
    baseline = rss_mib(pid)
    with StalledReaders(proc.port, f"/v2/{repo}/blobs/{digest}", READERS) as readers:
        wait_until(lambda: proc.blob_size(digest) is not None, 30, "committed")
        grown = rss_mib(pid) - baseline
        still_there = connections_to(proc.port)
        assert still_there >= READERS  # the fill ended before the send timeout
        assert grown < MEMORY_BOUND_MIB
        wait_until(lambda: readers.disconnected() == READERS, SEND_TIMEOUT + 10, "all disconnected")
        assert connections_to(proc.port) == 0
        assert rss_mib(pid) - baseline < MEMORY_BOUND_MIB


def test_stalled_readers_of_a_cached_blob_burn_no_cpu(
        pullcache_factory: Callable[..., PullcacheProcess], big_blob: tuple[str, str]) -> None:
    repo, digest = big_blob
    proc = start_with_send_timeout(pullcache_factory, SEND_TIMEOUT)
    path = f"/v2/{repo}/blobs/{digest}"
    with urllib.request.urlopen(proc.url + path) as response:
        while response.read(1024 * 1024):
            pass
    assert proc.blob_size(digest) is not None
    with StalledReaders(proc.port, path, READERS):
        wait_until(lambda: sum(1 for queued in send_queues(proc.port) if queued) >= READERS, 10,
                   "every reader's send queue filled")
        before = cpu_seconds(proc.process.pid)
        time.sleep(CPU_WINDOW)  # what the server does meanwhile is the measure
        used = cpu_seconds(proc.process.pid) - before
        assert connections_to(proc.port) >= READERS  # still stalled, not yet cut
        assert used < CPU_BOUND


SHORT_TIMEOUT = 1.0
SMALL = os.urandom(4 * 1024 * 1024)  # more than the socket buffers of both ends hold


@pytest.fixture
def registry_config(tmp_path: Path) -> Config:
    return build_config({"storage": {"path": str(tmp_path / "data")}, "local": {"anonymous_push": True}})


async def test_a_reader_that_accepts_nothing_is_reset_after_the_send_timeout(
        registry: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sendfile, "SEND_TIMEOUT", SHORT_TIMEOUT)
    digest = await push_blob(registry, "team/app", SMALL)
    assert registry.port is not None
    with AccessLog() as access, StalledReaders(registry.port, f"/v2/team/app/blobs/{digest}", 1) as readers:
        started = time.monotonic()
        async with asyncio.timeout(SHORT_TIMEOUT + 5):
            await access.wait_for(1)  # the response ended
            while readers.disconnected() < 1:  # the reset is on its way over loopback
                await asyncio.sleep(0.01)
        assert time.monotonic() - started >= SHORT_TIMEOUT


async def test_a_slow_reader_that_keeps_reading_is_not_cut(
        registry: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sendfile, "SEND_TIMEOUT", SHORT_TIMEOUT)
    digest = await push_blob(registry, "team/app", SMALL)
    received = b""
    started = time.monotonic()
    async with registry.get(f"/v2/team/app/blobs/{digest}") as response:
        while len(received) < len(SMALL):
            await asyncio.sleep(SHORT_TIMEOUT / 2)  # the client's pace: 1 MiB per half the timeout
            received += await response.content.readexactly(1024 * 1024)
        assert await response.read() == b""
    assert received == SMALL
    assert time.monotonic() - started > 2 * SHORT_TIMEOUT  # slower overall than the timeout, never idle that long
