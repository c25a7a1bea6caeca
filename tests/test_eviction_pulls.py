"""The LRU bound end to end: real pulls through a pullcache process from a token-protected upstream.

Each test pushes its own images to the shared upstream (under a repository name of its own),
runs pullcache with a bound of a few MiB, and looks at the store as an operator would: /metrics and a
Store opened beside the server (as `pullcache gc` does); the crash test drops an index row through it.
"""
from __future__ import annotations

import asyncio
import http.client
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.images import Image, build_image, push_image
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient, RegistryError, sha256_digest
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, Upstream
from tests.support.store_view import lose_index_row
from tests.support.tmpfs import tmpfs

MiB = 1024 * 1024
ACCEPT = ["application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json"]
BOUND = {"storage": {"max_size": "2MiB", "low_water": 0.75}}


def upstream_image(upstream: Upstream, layer_size: int) -> Image:
    """A single-platform image under a new repository of the upstream: small OS layer plus one data layer."""
    image = build_image(f"evict/i{uuid.uuid4().hex[:10]}", "v1", multi=False, layer_sizes=(layer_size,))
    push_image(RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD), image)
    return image


def pull(client: RegistryClient, image: Image) -> None:
    """Pull an image as a client does and check every byte: manifest by tag, config, layers."""
    manifest = client.get_manifest(image.repo, image.tag, ACCEPT)
    assert sha256_digest(manifest.body) == image.top.digest
    for blob in image.blobs():
        assert sha256_digest(client.get_blob(image.repo, blob.digest)) == blob.digest


def data_layer(image: Image) -> str:
    return image.platforms["linux/amd64"].layers[-1].digest


def stored_bytes(pullcache: PullcacheProcess) -> dict[str, int]:
    """Bytes of blobs in the store by origin, as the server's index totals report them on /metrics."""
    return {origin: int(metric(pullcache, f'pullcache_store_bytes{{origin="{origin}"}}'))
            for origin in ("cached", "pushed")}


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll another process's effect (no event crosses the process boundary), bounded in time."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


async def lose_row(pullcache: PullcacheProcess, digest: str) -> bool:
    """Drop a blob's index row through a Store opened on the stopped server's storage."""
    async with pullcache.store() as store:
        return await lose_index_row(store, digest)


def metric(pullcache: PullcacheProcess, name: str) -> float:
    client = RegistryClient(pullcache.url)
    text = client.request("GET", "/metrics").body.decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def test_pulls_beyond_the_bound_keep_cached_content_under_it(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    pullcache = pullcache_factory(BOUND)
    client = RegistryClient(pullcache.url)
    images = [upstream_image(upstream, 600 * 1024) for _ in range(6)]  # ~3.6 MiB through a 2 MiB bound

    for image in images:
        pull(client, image)

    eventually(lambda: stored_bytes(pullcache)["cached"] <= 2 * MiB, "cached content is under the bound")
    pulled = sum(blob.size for image in images for blob in image.blobs()) + sum(i.top.size for i in images)
    eventually(lambda: metric(pullcache, "pullcache_evicted_bytes_total") == pulled - stored_bytes(pullcache)["cached"],
               "every evicted byte is counted")


def test_pushed_images_survive_eviction_and_pull_intact(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    pullcache = pullcache_factory(BOUND)
    client = RegistryClient(pullcache.url)
    local = build_image(f"team/local{uuid.uuid4().hex[:8]}", "v1", multi=False, layer_sizes=(1536 * 1024,))
    push_image(client, local)

    for _ in range(5):
        pull(client, upstream_image(upstream, 600 * 1024))
    eventually(lambda: stored_bytes(pullcache)["cached"] <= 2 * MiB, "cached content is under the bound")

    stored = stored_bytes(pullcache)
    assert stored["pushed"] >= 1536 * 1024
    assert sum(stored.values()) <= 2 * MiB + stored["pushed"]
    pull(client, local)


def test_an_evicted_image_is_fetched_again_on_demand(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    pullcache = pullcache_factory(BOUND)
    client = RegistryClient(pullcache.url)
    first, *rest = [upstream_image(upstream, 600 * 1024) for _ in range(5)]
    pull(client, first)
    for image in rest:
        pull(client, image)
    eventually(lambda: pullcache.blob_size(data_layer(first)) is None, "the first image's layer is evicted")

    pull(client, first)

    assert pullcache.blob_size(data_layer(first)) is not None


def test_the_blob_used_last_survives(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    pullcache = pullcache_factory(BOUND)
    client = RegistryClient(pullcache.url)
    used, idle, third = [upstream_image(upstream, 500 * 1024) for _ in range(3)]
    for image in (used, idle, third):
        pull(client, image)
    client.get_blob(used.repo, data_layer(used))  # a hit: the oldest layer becomes the newest

    pull(client, upstream_image(upstream, 700 * 1024))  # ~2.2 MiB: over the bound, evict to 1.5 MiB

    eventually(lambda: stored_bytes(pullcache)["cached"] <= 1.5 * MiB, "eviction reached the low-water mark")
    assert pullcache.blob_size(data_layer(used)) is not None
    assert pullcache.blob_size(data_layer(idle)) is None


def test_a_crash_between_file_and_index_write_is_repaired_at_restart(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    pullcache = pullcache_factory()
    client = RegistryClient(pullcache.url)
    image = upstream_image(upstream, 100 * 1024)
    pull(client, image)
    cached = metric(pullcache, 'pullcache_store_blobs{origin="cached"}')
    pullcache.kill()
    assert asyncio.run(lose_row(pullcache, data_layer(image)))  # the crash itself: the file landed, its row did not

    pullcache.start()

    eventually(lambda: metric(pullcache, 'pullcache_store_blobs{origin="cached"}') == cached,
               "the background reconcile indexed the file again, as cached")


@pytest.fixture
def small_disk(pullcache_factory: Callable[..., PullcacheProcess]) -> Iterator[PullcacheProcess]:
    """An unstarted pullcache whose storage is an 8 MiB tmpfs, with a bound larger than the disk."""
    pullcache = pullcache_factory({"storage": {"max_size": "1GiB", "low_water": 0.75}}, start=False)
    with tmpfs(pullcache.data_dir, "8m"):
        try:
            yield pullcache
        finally:
            pullcache.stop()


def test_a_push_that_fills_the_disk_fails_cleanly_and_eviction_makes_room(
        small_disk: PullcacheProcess, upstream: Upstream) -> None:
    pullcache = small_disk.start()
    client = RegistryClient(pullcache.url)
    pulled = [upstream_image(upstream, 1536 * 1024) for _ in range(4)]  # ~6 MiB cached of 8 MiB
    for image in pulled:
        pull(client, image)
    repo = f"team/big{uuid.uuid4().hex[:8]}"
    layer = b"".join(uuid.uuid4().bytes for _ in range(5 * MiB // 32))  # 2.5 MiB cannot fit

    with pytest.raises(RegistryError) as failed:
        client.upload_blob(repo, layer)

    assert 500 <= failed.value.response.status < 600
    assert list((pullcache.data_dir / "tmp").iterdir()) == []
    eventually(lambda: metric(pullcache, "pullcache_evictions_total") > 0, "an eviction pass ran")
    pull(client, pulled[-1])  # still answering from what it has (fetching what eviction took)
    assert client.upload_blob(repo, layer) == sha256_digest(layer)


def test_a_pull_that_fills_the_disk_fails_alone_and_leaves_no_temp(
        small_disk: PullcacheProcess, upstream: Upstream) -> None:
    pullcache = small_disk.start()
    client = RegistryClient(pullcache.url)
    kept = upstream_image(upstream, 1024 * 1024)
    pull(client, kept)
    too_big = upstream_image(upstream, 9 * MiB)  # more than the whole disk

    with pytest.raises((RegistryError, http.client.HTTPException, OSError)):  # a 5xx, or a cut transfer
        client.get_blob(too_big.repo, data_layer(too_big))

    eventually(lambda: list((pullcache.data_dir / "tmp").iterdir()) == [], "the fill's temp file is removed")
    assert pullcache.blob_size(data_layer(too_big)) is None
    pull(client, kept)  # the server keeps answering from what it has
