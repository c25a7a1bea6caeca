"""A disk full to the last byte: a real pullcache process whose storage is an 8 MiB tmpfs that a test fills
exactly (tests/support/tmpfs.fill_up) after caching a few images.

Every write then fails with ENOSPC, SQLite's included ("database or disk is full"): a write is refused
with 507 and leaves nothing in tmp/, and eviction still frees cached content, whether a refused write
asked for it or the periodic free-space check did, while hits keep arriving.

The filesystem backend's own test: it fills the disk under storage.path and looks at tmp/ and the SQLite
index on it.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pullcache.cache.files import StoreFullError
from pullcache.cache.index import CACHED
from pullcache.cache.store import Store
from tests.support.images import Image
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient, Response, sha256_digest
from tests.support.seed import Upstream
from tests.support.tmpfs import fill_up, tmpfs
from tests.test_eviction_pulls import ACCEPT, MiB, data_layer, eventually, metric, pull, upstream_image

FULL_DISK_CONFIG = {"storage": {"max_size": "1GiB", "low_water": 0.75}, "local": {"anonymous_push": True}}
STORE_FULL = (507, "UNAVAILABLE")  # what the error middleware answers for StoreFullError


@dataclass
class FullDisk:
    pullcache: PullcacheProcess
    client: RegistryClient
    cached: list[Image]  # pulled before the disk filled up, least recently used first
    uncached: Image  # on the upstream, never pulled

    @property
    def tmp(self) -> Path:
        return self.pullcache.data_dir / "tmp"

    def hit(self, image: int) -> None:
        """A cache hit on a cached image's data layer: recency the index cannot record on a full disk."""
        self.client.get_blob(self.cached[image].repo, data_layer(self.cached[image]))

    def push(self, data: bytes) -> Response:
        """A monolithic push (POST ?digest= with the bytes): streamed straight into the store's BlobWriter."""
        repo = f"team/full{uuid.uuid4().hex[:8]}"
        return self.client.request("POST", f"/v2/{repo}/blobs/uploads/?digest={sha256_digest(data)}", repo=repo,
                                   body=data, headers={"Content-Type": "application/octet-stream"})

    def evictions(self) -> float:
        return metric(self.pullcache, "pullcache_evictions_total")


@pytest.fixture
def full_disk(pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> Iterator[FullDisk]:
    """pullcache on an 8 MiB tmpfs holding four cached images (~4 MiB), the rest of the disk taken by a filler.

    Every image is made before the disk is filled: the free-space check, every few seconds, may free room
    at any moment after that."""
    pullcache = pullcache_factory(FULL_DISK_CONFIG, start=False)
    with tmpfs(pullcache.data_dir, "8m"):
        try:
            client = RegistryClient(pullcache.start().url)
            cached = [upstream_image(upstream, MiB) for _ in range(4)]
            for image in cached:
                pull(client, image)
            uncached = upstream_image(upstream, 64 * 1024)
            fill_up(pullcache.data_dir)
            yield FullDisk(pullcache, client, cached, uncached)
        finally:
            pullcache.stop()


def store_full(response: Response) -> tuple[int, str]:
    return response.status, json.loads(response.body)["errors"][0]["code"]


def layer(size: int) -> bytes:
    return b"".join(uuid.uuid4().bytes for _ in range(size // 16))


def test_a_push_to_a_full_disk_is_refused_with_507_and_leaves_no_temp_file(full_disk: FullDisk) -> None:
    refused = full_disk.push(layer(4096))  # a small blob, like a manifest: what a file buffer would hold until close

    assert store_full(refused) == STORE_FULL
    assert list(full_disk.tmp.iterdir()) == []


def test_an_uncached_manifest_pull_on_a_full_disk_is_refused_with_507_and_leaves_no_temp_file(
        full_disk: FullDisk) -> None:
    image = full_disk.uncached
    refused = full_disk.client.request("GET", f"/v2/{image.repo}/manifests/{image.tag}", repo=image.repo,
                                       headers={"Accept": ", ".join(ACCEPT)})

    assert store_full(refused) == STORE_FULL
    assert list(full_disk.tmp.iterdir()) == []


def test_an_uncached_blob_pull_on_a_full_disk_is_refused_with_507_and_leaves_no_temp_file(
        full_disk: FullDisk) -> None:
    image = full_disk.uncached
    refused = full_disk.client.request("GET", f"/v2/{image.repo}/blobs/{data_layer(image)}", repo=image.repo)

    assert store_full(refused) == STORE_FULL
    assert list(full_disk.tmp.iterdir()) == []


def test_a_refused_push_makes_eviction_free_room_for_the_next_one_while_hits_go_on(full_disk: FullDisk) -> None:
    data = layer(256 * 1024)
    assert store_full(full_disk.push(data)) == STORE_FULL

    eventually(lambda: full_disk.hit(-1) is None and full_disk.evictions() > 0, "an eviction pass ran")

    assert full_disk.push(data).status == 201


def test_eviction_frees_a_full_disk_while_hits_keep_the_index_from_recording_them(full_disk: FullDisk) -> None:
    """No write is refused here: the periodic free-space check finds the disk full, although recording the
    hits in the index fails for want of space; the hits still count, so the hit layer stays."""
    eventually(lambda: full_disk.hit(0) is None and full_disk.evictions() > 0, "an eviction pass ran")

    assert full_disk.pullcache.blob_size(data_layer(full_disk.cached[0])) is not None
    assert full_disk.pullcache.blob_size(data_layer(full_disk.cached[1])) is None


@pytest.fixture
async def full_store(tmp_path: Path) -> AsyncIterator[Store]:
    """An open Store, in this process, on a 1 MiB tmpfs (not yet filled)."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        store = Store(disk / "data")
        await store.open()
        try:
            yield store
        finally:
            await store.close()


async def test_an_index_write_a_full_disk_refuses_leaves_rows_and_totals_as_they_were(full_store: Store) -> None:
    await full_store.put_small(b"cached before the disk filled up", origin=CACHED)
    before, rows = full_store.totals(), await full_store.blob_rows()
    filler = fill_up(full_store.layout.root.parent)

    with pytest.raises(StoreFullError):
        await full_store.put_small(b"x" * 5000, origin=CACHED)
    with pytest.raises(StoreFullError):  # SQLite's own "database or disk is full"
        await full_store.index.add("sha256:" + "0" * 64, 10, CACHED)

    assert (full_store.totals(), await full_store.blob_rows()) == (before, rows)
    filler.unlink()
    await full_store.index.add("sha256:" + "0" * 64, 10, CACHED)  # room again: the index takes writes
    assert full_store.totals()[CACHED].blobs == before[CACHED].blobs + 1
