"""Manifests through pullcache: cached byte-for-byte, tags kept for manifest_ttl then revalidated with a HEAD,
served stale while the upstream fails, 404s remembered, one upstream exchange per reference at a time."""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pullcache.cache.store import Store
from pullcache.config import UpstreamConfig
from pullcache.digests import Digest
from pullcache.mediatypes import MANIFEST_TYPES
from pullcache.pullthrough import Manifests, stats
from pullcache.pullthrough.manifests import STALE_RETRY_SECONDS
from pullcache.resolver import Target
from pullcache.upstream.client import UpstreamClient
from pullcache.upstream.retry import ATTEMPTS
from tests.fault_upstream import FakeRegistry, answer, sha256
from tests.support_faults import (
    Hang,
    Held,
    Proxy,
    cache_requests,
    start_proxy,
    truncated,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def manifest(marker: str, media_type: str = OCI_MANIFEST) -> bytes:
    """A manifest (of a config blob holding `marker`) whose bytes, odd spacing and key order included,
    must survive unchanged."""
    config = f'"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "{sha256(marker.encode())}"'
    return (f'{{"schemaVersion":2,  "mediaType": "{media_type}", "config": {{{config}, "size": {len(marker)}}},'
            f'"layers":[]}}\n').encode()


V1 = manifest("v1")
V2 = manifest("v2")
TAG_PATH = "/v2/team/app/manifests/latest"


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeRegistry:
    registry = await FakeRegistry().start(aiohttp_server)
    registry.add_manifest("team/app", "latest", V1)
    return registry


async def proxy_with(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path, **upstream: Any) -> Proxy:
    return await start_proxy(aiohttp_client, fake, tmp_path / "data", **upstream)


async def get(proxy: Proxy, path: str = TAG_PATH, method: str = "GET", **headers: str) -> tuple[int, bytes, Any]:
    async with proxy.client.request(method, path, headers=headers) as response:
        return response.status, await response.read(), response.headers


def upstream_manifest_requests(proxy: Proxy) -> list[str]:
    return [seen.method for seen in proxy.fake.seen if "/manifests/" in seen.path]


# ---------------------------------------------------------------------- through HTTP

async def test_a_tag_is_fetched_once_and_served_from_the_cache_within_its_ttl(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, manifest_ttl="1h")
    for _ in range(300):
        status, body, headers = await get(proxy)
        assert (status, body) == (200, V1)
        assert headers["Docker-Content-Digest"] == sha256(V1)
        assert headers["Content-Type"] == OCI_MANIFEST
    assert upstream_manifest_requests(proxy) == ["GET"]
    assert (proxy.count("manifest", "miss"), proxy.count("manifest", "hit")) == (1, 299)


async def test_a_manifest_by_digest_is_never_asked_for_again(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, manifest_ttl="0s")
    path = f"/v2/team/app/manifests/{sha256(V1)}"
    assert (await get(proxy, path))[:2] == (200, V1)
    assert (await get(proxy, path))[:2] == (200, V1)
    assert upstream_manifest_requests(proxy) == ["GET"]


async def test_an_expired_tag_is_revalidated_with_a_head_only(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, manifest_ttl="0s")
    for _ in range(3):
        assert (await get(proxy))[:2] == (200, V1)
    assert upstream_manifest_requests(proxy) == ["GET", "HEAD", "HEAD"]
    assert proxy.count("manifest", "revalidated") == 2


async def test_a_moved_tag_is_fetched_again(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, manifest_ttl="0s")
    assert (await get(proxy))[:2] == (200, V1)
    fake.add_manifest("team/app", "latest", V2)
    status, body, headers = await get(proxy)
    assert (status, body, headers["Docker-Content-Digest"]) == (200, V2, sha256(V2))
    assert upstream_manifest_requests(proxy) == ["GET", "HEAD", "GET"]
    # ...and the old manifest stays reachable by its digest.
    assert (await get(proxy, f"/v2/team/app/manifests/{sha256(V1)}"))[:2] == (200, V1)


TOO_MANY = answer(429, {"errors": [{"code": "TOOMANYREQUESTS"}]}, headers={"Retry-After": "60"})


@pytest.mark.parametrize("fault", [
    answer(503, {"errors": [{"code": "UNAVAILABLE"}]}),
    answer(500, b"internal error"),
    TOO_MANY,
], ids=["503", "500", "429"])
async def test_an_expired_tag_is_served_stale_while_the_upstream_fails(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path, fault: Any) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, manifest_ttl="0s")
    assert (await get(proxy))[:2] == (200, V1)
    fake.faults[TAG_PATH] = fault
    status, body, headers = await get(proxy)
    assert (status, body, headers["Docker-Content-Digest"]) == (200, V1, sha256(V1))
    assert proxy.count("manifest", "stale") == 1
    # For a while the failing upstream is not asked again: the next pull does not wait for it.
    assert (await get(proxy))[:2] == (200, V1)
    assert proxy.count("manifest", "stale") == 2
    # One revalidation, its HEAD sent again while a 5xx might pass (a 429's Retry-After of 60s is past the deadline).
    heads = 1 if fault is TOO_MANY else ATTEMPTS
    assert upstream_manifest_requests(proxy) == ["GET"] + ["HEAD"] * heads


async def test_an_expired_tag_is_served_stale_when_the_upstream_times_out(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, manifest_ttl="0s", read_timeout="300ms")
    assert (await get(proxy))[:2] == (200, V1)
    hang = Hang()
    fake.faults[TAG_PATH] = hang
    try:
        assert (await get(proxy))[:2] == (200, V1)
    finally:
        hang.release.set()
    assert hang.arrived.is_set()
    assert proxy.count("manifest", "stale") == 1


async def test_a_missing_tag_is_manifest_unknown_and_remembered(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, not_found_ttl="1h")
    for _ in range(5):
        status, body, _ = await get(proxy, "/v2/team/app/manifests/nope")
        assert status == 404
        assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert upstream_manifest_requests(proxy) == ["GET"]


async def test_a_tag_deleted_upstream_is_forgotten(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, manifest_ttl="0s")
    assert (await get(proxy))[:2] == (200, V1)
    del fake.manifests[("team/app", "latest")]
    assert (await get(proxy))[0] == 404


async def test_a_429_with_nothing_cached_is_passed_on(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    fake.faults[TAG_PATH] = answer(429, {"errors": [{"code": "TOOMANYREQUESTS"}]}, headers={"Retry-After": "42"})
    status, body, headers = await get(proxy)
    assert (status, headers["Retry-After"]) == (429, "42")
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    fake.faults.clear()
    assert (await get(proxy))[:2] == (200, V1)


async def test_an_unavailable_upstream_with_nothing_cached_is_a_clear_5xx(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    fake.faults[TAG_PATH] = answer(502, b"bad gateway")
    status, body, _ = await get(proxy)
    error = json.loads(body)["errors"][0]
    assert (status, error["code"]) == (503, "UNAVAILABLE")
    assert proxy.upstream in error["message"] and "502" in error["message"]


def manifest_faults() -> dict[str, Any]:
    """Upstream misbehaviours on a manifest, each with the status pullcache answers while nothing is cached."""
    claims_v1 = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(V1)}
    return {
        "wrong-bytes": (answer(200, V2, headers=claims_v1), 502),
        "truncated": (truncated(V1, len(V1) // 2), 503),
        "503": (answer(503, b"down for maintenance"), 503),
        "429": (answer(429, {"errors": [{"code": "TOOMANYREQUESTS"}]}), 429),
        "stall": (Hang(), 504),
    }


@pytest.mark.parametrize("name", list(manifest_faults()))
async def test_after_an_upstream_fault_nothing_is_cached_and_the_next_request_succeeds(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path, name: str) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, read_timeout="300ms", not_found_ttl="1h")
    fault, status = manifest_faults()[name]
    fake.faults[TAG_PATH] = fault
    try:
        assert (await get(proxy))[0] == status
    finally:
        if isinstance(fault, Hang):
            fault.release.set()
    assert proxy.cached(sha256(V1)) is None and proxy.cached(sha256(V2)) is None
    fake.faults.clear()
    status, body, headers = await get(proxy)
    assert (status, body, headers["Docker-Content-Digest"]) == (200, V1, sha256(V1))


async def test_an_upstream_refusal_is_denied(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> None:
    private = await FakeRegistry(credentials=("puller", "pullpass")).start(aiohttp_server)
    private.add_manifest("team/app", "latest", V1)
    proxy = await proxy_with(aiohttp_client, private, tmp_path)
    status, body, _ = await get(proxy)
    assert (status, json.loads(body)["errors"][0]["code"]) == (403, "DENIED")
    with_credentials = await proxy_with(aiohttp_client, private, tmp_path / "2", username="puller",
                                        password="pullpass")
    assert (await get(with_credentials))[:2] == (200, V1)


async def test_head_on_a_miss_fetches_no_body(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    status, _, headers = await get(proxy, method="HEAD")
    assert (status, headers["Docker-Content-Digest"], headers["Content-Length"]) == (200, sha256(V1), str(len(V1)))
    assert headers["Content-Type"] == OCI_MANIFEST
    assert upstream_manifest_requests(proxy) == ["HEAD"]


async def test_a_tag_resolved_by_head_is_cached_once_its_digest_is_fetched(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    """containerd's way: HEAD the tag, GET the digest. The next pull needs the upstream no more."""
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, manifest_ttl="1h")
    await get(proxy, method="HEAD")
    await get(proxy, f"/v2/team/app/manifests/{sha256(V1)}")
    assert upstream_manifest_requests(proxy) == ["HEAD", "GET"]
    assert (await get(proxy, method="HEAD"))[0] == 200
    assert (await get(proxy))[:2] == (200, V1)
    assert upstream_manifest_requests(proxy) == ["HEAD", "GET"]


MULTI_PATH = "/v2/team/multi/manifests/v1"


def add_multi_platform(fake: FakeRegistry, index_type: str = DOCKER_LIST,
                       child_type: str = DOCKER_MANIFEST) -> tuple[bytes, bytes, bytes]:
    """team/multi:v1 upstream, an index of a linux/amd64 and a linux/arm64 manifest: (index, amd64, arm64)."""
    amd64, arm64 = manifest("amd64", child_type), manifest("arm64", child_type)
    children = [{"mediaType": child_type, "digest": sha256(m), "size": len(m),
                 "platform": {"os": "linux", "architecture": a}} for m, a in ((amd64, "amd64"), (arm64, "arm64"))]
    index = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": children}, indent=3).encode()
    fake.add_manifest("team/multi", "v1", index, index_type)
    for child in (amd64, arm64):
        fake.add_manifest("team/multi", sha256(child), child, child_type)
    return index, amd64, arm64


async def test_indexes_and_platform_manifests_keep_their_bytes_and_types(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    index, amd64, arm64 = add_multi_platform(fake)
    status, body, headers = await get(proxy, MULTI_PATH)
    assert (status, body, headers["Content-Type"], headers["Docker-Content-Digest"]) == (
        200, index, DOCKER_LIST, sha256(index))
    for child in (amd64, arm64):
        status, body, headers = await get(proxy, f"/v2/team/multi/manifests/{sha256(child)}")
        assert (status, body, headers["Content-Type"]) == (200, child, DOCKER_MANIFEST)


async def test_a_client_that_accepts_no_index_gets_the_linux_amd64_manifest_of_an_indexed_tag(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    _, amd64, _ = add_multi_platform(fake)

    status, body, headers = await get(proxy, MULTI_PATH, Accept=DOCKER_MANIFEST)

    assert (status, body, headers["Content-Type"], headers["Docker-Content-Digest"]) == (
        200, amd64, DOCKER_MANIFEST, sha256(amd64))


async def test_head_from_a_client_that_accepts_no_index_names_the_linux_amd64_manifest(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    _, amd64, _ = add_multi_platform(fake)

    status, _, headers = await get(proxy, MULTI_PATH, "HEAD", Accept=DOCKER_MANIFEST)

    assert (status, headers["Content-Type"], headers["Docker-Content-Digest"], headers["Content-Length"]) == (
        200, DOCKER_MANIFEST, sha256(amd64), str(len(amd64)))


async def test_a_request_answered_with_the_platform_manifest_of_an_index_counts_once(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    add_multi_platform(fake)

    await get(proxy, MULTI_PATH, Accept=DOCKER_MANIFEST)  # the index, then its linux/amd64 manifest

    counted = {result: proxy.count("manifest", result) for result in (stats.HIT, stats.MISS, stats.COALESCED)}
    assert counted == {stats.HIT: 0, stats.MISS: 1, stats.COALESCED: 0}


async def test_a_cached_index_and_platform_manifest_answer_a_client_that_accepts_no_index_alone(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path, manifest_ttl="1h")
    _, amd64, _ = add_multi_platform(fake)
    await get(proxy, MULTI_PATH)
    await get(proxy, f"/v2/team/multi/manifests/{sha256(amd64)}")
    asked = upstream_manifest_requests(proxy)

    status, body, _ = await get(proxy, MULTI_PATH, Accept=DOCKER_MANIFEST)

    assert (status, body) == (200, amd64)
    assert upstream_manifest_requests(proxy) == asked


async def test_an_indexed_tag_without_a_platform_manifest_the_client_accepts_is_manifest_unknown(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    add_multi_platform(fake, OCI_INDEX, OCI_MANIFEST)

    status, body, _ = await get(proxy, MULTI_PATH, Accept=DOCKER_MANIFEST)

    assert (status, json.loads(body)["errors"][0]["code"]) == (404, "MANIFEST_UNKNOWN")


async def test_a_tag_naming_a_manifest_type_the_client_does_not_accept_is_manifest_unknown(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)  # team/app:latest is an OCI manifest

    status, body, _ = await get(proxy, Accept=DOCKER_MANIFEST)

    assert (status, json.loads(body)["errors"][0]["code"]) == (404, "MANIFEST_UNKNOWN")


async def test_an_index_asked_for_by_digest_is_served_as_stored_whatever_the_client_accepts(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    index, _, _ = add_multi_platform(fake)

    status, body, headers = await get(proxy, f"/v2/team/multi/manifests/{sha256(index)}", Accept=DOCKER_MANIFEST)

    assert (status, body, headers["Content-Type"]) == (200, index, DOCKER_LIST)


async def test_the_upstream_is_asked_for_every_manifest_type(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await proxy_with(aiohttp_client, fake, tmp_path)
    await get(proxy, Accept=DOCKER_MANIFEST)
    accepted = {item.split(";")[0].strip() for item in fake.seen[-1].headers["Accept"].split(",")}
    assert set(MANIFEST_TYPES) | {DOCKER_MANIFEST} <= accepted


# ---------------------------------------------------------------------- Manifests directly (time and concurrency)

class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def target(fake: FakeRegistry) -> AsyncIterator[Target]:
    client = UpstreamClient(UpstreamConfig(name=f"direct{os.urandom(4).hex()}", url=fake.url, manifest_ttl=300))
    await client.start()
    yield Target("team/app", client, "team/app")
    await client.close()


async def test_the_ttl_ends_exactly_at_manifest_ttl(store: Store, target: Target, fake: FakeRegistry) -> None:
    clock = Clock()
    manifests = Manifests(store, clock=clock)
    assert (await manifests.get(target, "latest")).result == stats.MISS
    clock.now += 299.9
    assert (await manifests.get(target, "latest")).result == stats.HIT
    clock.now += 0.1
    assert (await manifests.get(target, "latest")).result == stats.REVALIDATED
    clock.now += 299.9
    assert (await manifests.get(target, "latest")).result == stats.HIT  # the HEAD restarted the ttl
    assert [seen.method for seen in fake.seen] == ["GET", "HEAD"]
    await manifests.close()


async def test_an_expired_tag_that_moved_to_a_manifest_already_held_is_a_miss_not_revalidated(
        store: Store, target: Target, fake: FakeRegistry) -> None:
    clock = Clock()
    manifests = Manifests(store, clock=clock)
    fake.add_manifest("team/app", "next", V2)
    await manifests.get(target, "latest")
    await manifests.get(target, "next")  # V2 is held now
    fake.add_manifest("team/app", "latest", V2)  # the upstream moves latest to it
    clock.now += 300

    answer = await manifests.get(target, "latest")

    assert (answer.body, answer.result) == (V2, stats.MISS)
    await manifests.close()


async def test_a_failing_upstream_is_asked_again_after_a_pause(
        store: Store, target: Target, fake: FakeRegistry) -> None:
    clock = Clock()
    manifests = Manifests(store, clock=clock)
    await manifests.get(target, "latest")
    clock.now += 300
    fake.faults[TAG_PATH] = answer(503, {"errors": [{"code": "UNAVAILABLE"}]})
    assert (await manifests.get(target, "latest")).result == stats.STALE
    clock.now += STALE_RETRY_SECONDS - 1
    assert (await manifests.get(target, "latest")).result == stats.STALE
    failed = ["GET"] + ["HEAD"] * ATTEMPTS  # one revalidation, sent again after each 503 (upstream.retry)
    assert [seen.method for seen in fake.seen] == failed
    fake.faults.clear()  # the upstream recovers
    clock.now += 1
    assert (await manifests.get(target, "latest")).result == stats.REVALIDATED
    assert (await manifests.get(target, "latest")).result == stats.HIT
    assert [seen.method for seen in fake.seen] == [*failed, "HEAD"]
    await manifests.close()


async def test_tag_state_survives_a_restart(store: Store, target: Target, fake: FakeRegistry) -> None:
    clock = Clock()
    first = Manifests(store, clock=clock)
    await first.get(target, "latest")
    await first.close()
    restarted = Manifests(store, clock=clock)
    assert (await restarted.get(target, "latest")).result == stats.HIT
    await restarted.close()
    clock.now += 301  # the tag was last confirmed longer ago than manifest_ttl, by the time it recorded
    assert (await Manifests(store, clock=clock).get(target, "latest")).result == stats.REVALIDATED
    assert [seen.method for seen in fake.seen] == ["GET", "HEAD"]


async def test_a_storm_on_an_expired_tag_sends_one_head(store: Store, target: Target, fake: FakeRegistry) -> None:
    clock = Clock()
    manifests = Manifests(store, clock=clock)
    await manifests.get(target, "latest")
    clock.now += 3600
    held = Held(fake, TAG_PATH)
    fake.faults[TAG_PATH] = held
    storm = asyncio.gather(*(manifests.get(target, "latest") for _ in range(20)))
    await held.arrived.wait()  # the one HEAD is at the upstream; every caller has joined it by now
    held.release.set()
    answers = await storm
    assert sorted(a.result for a in answers) == [stats.COALESCED] * 19 + [stats.REVALIDATED]
    assert all(a.body == V1 for a in answers)
    assert [seen.method for seen in fake.seen] == ["GET", "HEAD"]
    assert cache_requests("manifest", target.upstream.name, stats.COALESCED) == 19  # type: ignore[union-attr]
    await manifests.close()


async def test_a_storm_on_a_cold_tag_sends_one_get(store: Store, target: Target, fake: FakeRegistry) -> None:
    manifests = Manifests(store)
    answers = await asyncio.gather(*(manifests.get(target, "latest") for _ in range(20)))
    assert sorted(a.result for a in answers) == [stats.COALESCED] * 19 + [stats.MISS]
    assert [seen.method for seen in fake.seen] == ["GET"]
    assert {a.digest for a in answers} == {Digest.parse(sha256(V1))}
    await manifests.close()
