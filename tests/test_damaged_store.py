"""A store damaged under or between runs of a real pullcache process: working folders removed while it
runs, and temp files a killed process left behind.

The filesystem backend's own test: it removes and reads tmp/ and uploads/ under storage.path.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fault_upstream import FakeRegistry, Stall, sha256
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient, sha256_digest
from tests.support.seed import Upstream
from tests.test_eviction_pulls import MiB, pull, upstream_image

PUSH_CONFIG = {"local": {"anonymous_push": True}}
WORKING_DIRS = ("tmp", "uploads")  # what the store keeps only while a write is under way


@pytest.fixture
def without_working_dirs(pullcache_factory: Callable[..., PullcacheProcess]) -> PullcacheProcess:
    """A running pullcache whose tmp/ and uploads/ were removed under it (rm -rf by an operator)."""
    pullcache = pullcache_factory(PUSH_CONFIG)
    for name in WORKING_DIRS:
        shutil.rmtree(pullcache.data_dir / name)
    return pullcache


def test_a_push_succeeds_after_the_working_folders_were_removed(without_working_dirs: PullcacheProcess) -> None:
    data = uuid.uuid4().bytes * 1024

    assert RegistryClient(without_working_dirs.url).upload_blob("team/app", data) == sha256_digest(data)


def test_an_uncached_pull_succeeds_after_the_working_folders_were_removed(
        without_working_dirs: PullcacheProcess, upstream: Upstream) -> None:
    pull(RegistryClient(without_working_dirs.url), upstream_image(upstream, 64 * 1024))


def test_readyz_is_ready_after_the_working_folders_were_removed(without_working_dirs: PullcacheProcess) -> None:
    ready = RegistryClient(without_working_dirs.url).request("GET", "/readyz")

    assert ready.status == 200, ready.body


# ---------------------------------------------------------------------- temp files after a crash
BIG = os.urandom(4 * MiB)


@pytest.fixture
def stalled_pullcache(tmp_path: Path) -> Iterator[Callable[[FakeRegistry], PullcacheProcess]]:
    """pullcache (not started) whose only upstream is the given fake; stopped at the end of the test."""
    made: list[PullcacheProcess] = []

    def make(fake: FakeRegistry) -> PullcacheProcess:
        upstream: dict[str, Any] = {"name": "docker.io", "url": fake.url, "default": True}
        made.append(PullcacheProcess(tmp_path / "pullcache", {"upstreams": [upstream]}))
        return made[-1]
    yield make
    for pullcache in made:
        pullcache.stop()


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll the disk of another process for a state it reaches while a request is still streaming."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def full_size_temps(tmp: Path) -> list[Path]:
    return [path for path in tmp.iterdir() if path.stat().st_size == len(BIG)]


async def test_a_fill_killed_mid_way_leaves_no_temp_file_once_pullcache_is_back(
        aiohttp_server: Any, stalled_pullcache: Callable[[FakeRegistry], PullcacheProcess]) -> None:
    fake = await FakeRegistry().start(aiohttp_server)
    stall = Stall(BIG, MiB)
    fake.faults[f"/v2/team/big/blobs/{sha256(BIG)}"] = stall
    pullcache = stalled_pullcache(fake)
    await asyncio.to_thread(pullcache.start)
    tmp = pullcache.data_dir / "tmp"
    try:
        async with aiohttp.ClientSession() as http:
            async def pull_big() -> bytes:
                async with http.get(f"{pullcache.url}/v2/team/big/blobs/{sha256(BIG)}") as response:
                    return await response.read()
            pulling = asyncio.create_task(pull_big())
            await stall.sent.wait()
            await wait_for(lambda: bool(full_size_temps(tmp)), "the fill's temp file, allocated to the blob's size")
            crashed = full_size_temps(tmp)
            pullcache.kill()
            with pytest.raises(aiohttp.ClientError):
                await pulling
    finally:
        stall.release.set()

    with open(tmp / "blob-another-process.tmp", "wb") as live:  # a live writer of another process on the store
        fcntl.flock(live, fcntl.LOCK_EX)
        await asyncio.to_thread(pullcache.start)

        assert [path for path in crashed if path.exists()] == []
        assert os.listdir(tmp) == ["blob-another-process.tmp"]
