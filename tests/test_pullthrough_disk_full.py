"""Pull-through fills on a full disk: a real pullcache process whose storage is a small tmpfs.

The disk, the upstream images and the helpers are those of tests/test_eviction_pulls.py.
"""
from __future__ import annotations

import http.client

import pytest

from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient, RegistryError
from tests.support.seed import Upstream
from tests.test_eviction_pulls import (  # noqa: F401  (small_disk is a fixture)
    MiB,
    blob_file,
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
    cached = upstream_image(upstream, 1024 * 1024)
    pull(client, cached)
    too_big = upstream_image(upstream, 9 * MiB)  # more than the whole disk

    with pytest.raises((RegistryError, http.client.HTTPException, OSError)):  # a 5xx, or a cut transfer
        client.get_blob(too_big.repo, data_layer(too_big))

    eventually(lambda: metric(pullcache, "pullcache_evictions_total") > 0, "an eviction pass ran")
    assert not blob_file(pullcache, data_layer(cached)).exists()  # it asked for the layer's size: all of it


def test_a_layer_larger_than_the_free_space_is_refused_with_507_before_any_byte(
        small_disk: PullcacheProcess, upstream: Upstream) -> None:  # noqa: F811  (the fixture)
    pullcache = small_disk.start()
    client = RegistryClient(pullcache.url)
    too_big = upstream_image(upstream, 9 * MiB)  # more than the whole disk

    with pytest.raises(RegistryError) as refused:  # an answer, not a transfer cut part-way
        client.get_blob(too_big.repo, data_layer(too_big))

    assert refused.value.response.status == 507
