"""A store damaged under or between runs of a real pullcache process: working folders removed while it
runs, and temp files a killed process left behind.
"""
from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable

import pytest

from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient, sha256_digest
from tests.support.seed import Upstream
from tests.test_eviction_pulls import pull, upstream_image

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
