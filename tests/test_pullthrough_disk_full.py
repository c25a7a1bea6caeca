"""Pull-through fills on a full disk: a real pullcache process whose storage is a small tmpfs.

The disk, the upstream images and the helpers are those of tests/test_eviction_pulls.py.
"""
from __future__ import annotations

import pytest

from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient, RegistryError, sha256_digest
from tests.support.seed import Upstream
from tests.test_eviction_pulls import (  # noqa: F401  (small_disk is a fixture)
    MiB,
    data_layer,
    eventually,
    metric,
    pull,
    small_disk,
    upstream_image,
)


def test_a_pull_that_runs_out_of_disk_makes_eviction_free_room(
        small_disk: PullcacheProcess, upstream: Upstream) -> None:  # noqa: F811  (the fixture)
    pullcache = small_disk.start()
    client = RegistryClient(pullcache.url)
    cached = [upstream_image(upstream, 1536 * 1024) for _ in range(4)]  # ~6 MiB cached of 8 MiB
    for image in cached:
        pull(client, image)
    bigger = upstream_image(upstream, 3 * MiB)  # fits only once cached content makes room

    with pytest.raises(RegistryError) as refused:
        client.get_blob(bigger.repo, data_layer(bigger))

    assert refused.value.response.status == 507
    eventually(lambda: metric(pullcache, "pullcache_evictions_total") > 0, "an eviction pass ran")
    assert pullcache.blob_size(data_layer(cached[0])) is None  # the least recently used went first
    layer = client.get_blob(bigger.repo, data_layer(bigger))
    assert sha256_digest(layer) == data_layer(bigger)


def test_a_layer_larger_than_the_free_space_is_refused_with_507_before_any_byte(
        small_disk: PullcacheProcess, upstream: Upstream) -> None:  # noqa: F811  (the fixture)
    pullcache = small_disk.start()
    client = RegistryClient(pullcache.url)
    too_big = upstream_image(upstream, 9 * MiB)  # more than the whole disk

    with pytest.raises(RegistryError) as refused:  # an answer, not a transfer cut part-way
        client.get_blob(too_big.repo, data_layer(too_big))

    assert refused.value.response.status == 507
