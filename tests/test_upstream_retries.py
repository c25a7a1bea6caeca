"""Idempotent upstream requests (GET, HEAD, token fetches) are sent again after a transient failure (cannot
connect, 5xx, timeout) within request_timeout; a 429 only when its Retry-After fits the deadline.

End to end: pullcache as a process pulls a real image from Distribution behind tests/support/flaky_front.py,
which fails the first two attempts of every request (one 503, one dropped connection)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from aiohttp import web

from pullcache import metrics
from pullcache.upstream import (
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from pullcache.upstream.retry import ATTEMPTS, retry_after_seconds
from tests.fault_upstream import FakeRegistry, answer
from tests.support.flaky_front import FlakyFront
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.registry_client import RegistryClient, sha256_digest
from tests.support.seed import Upstream

ACCEPT = ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
          "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"]
MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
TAG_PATH = "/v2/library/alpine/manifests/latest"


def retries(upstream: str, reason: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "pullcache_upstream_retries_total", {"upstream": upstream, "reason": reason}) or 0.0


def failing_once(fake: FakeRegistry, path: str, handler: Any) -> None:
    """path answers with handler once, then as the fake normally does."""
    async def once(request: web.Request) -> web.StreamResponse:
        del fake.faults[path]
        return await handler(request)
    fake.faults[path] = once


@pytest.fixture
async def open_registry(aiohttp_server: Any) -> FakeRegistry:
    fake = await FakeRegistry().start(aiohttp_server)
    fake.add_manifest("library/alpine", "latest", MANIFEST)
    return fake


@pytest.fixture
def client_for(upstream_clients: Any, open_registry: FakeRegistry) -> Any:
    return partial(upstream_clients, open_registry.url)


def tag_requests(fake: FakeRegistry) -> int:
    return sum(1 for seen in fake.seen if seen.path == TAG_PATH)


# ---------------------------------------------------------------- in-process


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert retry_after_seconds("7", 0.0) == 7.0
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:30 GMT", 10.0) == 20.0
    assert retry_after_seconds("soon", 0.0) is None
    assert retry_after_seconds(None, 0.0) is None


async def test_a_5xx_is_sent_again_and_the_answer_after_it_is_used(
        client_for: Any, open_registry: FakeRegistry) -> None:
    client = await client_for()
    failing_once(open_registry, TAG_PATH, answer(503, {"errors": [{"code": "UNAVAILABLE"}]}))
    assert (await client.get_manifest("library/alpine", "latest", ())).body == MANIFEST
    assert tag_requests(open_registry) == 2
    assert retries(client.name, "5xx") == 1


async def test_a_429_is_retried_when_its_retry_after_fits_the_deadline(
        client_for: Any, open_registry: FakeRegistry) -> None:
    client = await client_for(request_timeout=5.0)
    failing_once(open_registry, TAG_PATH, answer(429, {"errors": [{"code": "TOOMANYREQUESTS"}]},
                                                 headers={"Retry-After": "1"}))
    started = time.monotonic()
    assert (await client.get_manifest("library/alpine", "latest", ())).body == MANIFEST
    assert time.monotonic() - started >= 1.0
    assert tag_requests(open_registry) == 2
    assert retries(client.name, "429") == 1


async def test_a_429_whose_retry_after_passes_the_deadline_is_not_retried(
        client_for: Any, open_registry: FakeRegistry) -> None:
    client = await client_for(request_timeout=5.0)
    failing_once(open_registry, TAG_PATH, answer(429, {"errors": [{"code": "TOOMANYREQUESTS"}]},
                                                 headers={"Retry-After": "30"}))
    with pytest.raises(UpstreamRateLimited):
        await client.get_manifest("library/alpine", "latest", ())
    assert tag_requests(open_registry) == 1
    assert retries(client.name, "429") == 0


async def test_a_404_is_an_answer_and_is_not_retried(client_for: Any, open_registry: FakeRegistry) -> None:
    client = await client_for()
    with pytest.raises(UpstreamNotFound):
        await client.get_manifest("library/alpine", "missing", ())
    assert sum(1 for seen in open_registry.seen if seen.path.endswith("/missing")) == 1


async def test_a_persistent_5xx_is_given_up_after_a_few_attempts_within_the_deadline(
        client_for: Any, open_registry: FakeRegistry) -> None:
    client = await client_for(request_timeout=5.0)
    open_registry.faults[TAG_PATH] = answer(503, {"errors": [{"code": "UNAVAILABLE"}]})
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await client.get_manifest("library/alpine", "latest", ())
    assert time.monotonic() - started < 5.0
    assert tag_requests(open_registry) == ATTEMPTS


# ---------------------------------------------------------------- end to end, real Distribution


@pytest.fixture
def flaky(upstream: Upstream) -> Iterator[FlakyFront]:
    front = FlakyFront(upstream.url, upstream.token_server.realm, faults=("503", "drop")).start()
    yield front
    front.stop()


def test_a_cold_pull_succeeds_through_an_upstream_failing_every_request_twice(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream, flaky: FlakyFront) -> None:
    pullcache = pullcache_factory({"upstreams": [docker_hub_upstream(flaky.url)]})
    client = RegistryClient(pullcache.url)
    image = upstream["library/ocitest:v1"]
    platform = next(iter(image.platforms.values()))

    started = time.monotonic()
    assert sha256_digest(client.get_manifest("library/ocitest", "v1", ACCEPT).body) == image.digest
    if image.index is not None:
        body = client.get_manifest("library/ocitest", platform.manifest.digest, ACCEPT).body
        assert sha256_digest(body) == platform.manifest.digest
    for blob in (platform.config, *platform.layers):
        assert sha256_digest(client.get_blob("library/ocitest", blob.digest)) == blob.digest
    elapsed = time.monotonic() - started

    outcomes = flaky.outcomes()
    print(f"cold pull, every request failing twice: {elapsed:.2f}s, {sum(map(len, outcomes.values()))} "
          f"upstream attempts for {len(outcomes)} requests")
    assert any(key.startswith("GET /token") for key in outcomes)  # token fetches crossed the front too
    for key, seen in outcomes.items():
        # Two failures, then answered: 200, or a token challenge (401) answered by the next attempt.
        assert seen[:2] == ["503", "drop"] and seen[2:] in (["200"], ["401", "200"]), (key, seen)


def test_a_manifest_body_cut_short_is_sent_again(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    front = FlakyFront(upstream.url, upstream.token_server.realm, faults=("cut",)).start()
    try:
        pullcache = pullcache_factory({"upstreams": [docker_hub_upstream(front.url)]})
        image = upstream["library/alpine:latest"]
        body = RegistryClient(pullcache.url).get_manifest("library/alpine", "latest", ACCEPT).body
        assert sha256_digest(body) == image.digest
        assert front.outcomes()["GET /v2/library/alpine/manifests/latest"][-2:] == ["cut", "200"]
    finally:
        front.stop()


def test_a_blob_body_cut_short_is_resumed_with_a_range_request(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    front = FlakyFront(upstream.url, upstream.token_server.realm, faults=("cut",)).start()
    try:
        pullcache = pullcache_factory({"upstreams": [docker_hub_upstream(front.url)]})
        layer = upstream["library/large:v1"].platforms["linux/amd64"].layers[0]
        body = RegistryClient(pullcache.url).get_blob("library/large", layer.digest)
        assert sha256_digest(body) == layer.digest
        # the first answer cut, the rest asked for by Range and answered 206 by Distribution
        assert front.outcomes()[f"GET /v2/library/large/blobs/{layer.digest}"][-2:] == ["cut", "206"]
    finally:
        front.stop()
