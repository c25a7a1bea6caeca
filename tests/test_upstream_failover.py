"""Several URLs per upstream (`urls:`): a dead primary hands over to a fallback, a circuit breaker keeps
skipping it for a growing backoff, and it gets traffic back once it answers again. The end-to-end tests run
pullcache as a process in front of real Distribution upstreams; the primary is dead as a closed port."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from pullcache import metrics
from pullcache.config import UpstreamConfig, build_config
from pullcache.upstream import UpstreamClient, UpstreamRealmRefused
from pullcache.upstream.failover import Breaker, attempt_limit
from tests.fault_upstream import FakeRegistry, TokenServer, answer
from tests.support.procs import free_port
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.registry_client import RegistryClient, sha256_digest
from tests.support.seed import Upstream
from tests.support.silent import silent_listener

ACCEPT = ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
          "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"]
TAG_PATH = "/v2/library/alpine/manifests/latest"
MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'


def closed_port_url() -> str:
    """A URL nothing listens on: connections to it are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def with_urls(*urls: str) -> dict[str, Any]:
    """pullcache's config with the docker.io upstream on several URLs."""
    entry = docker_hub_upstream(urls[0])
    del entry["url"]
    return {"upstreams": [{**entry, "urls": list(urls)}]}


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0, every: float = 0.05) -> None:
    """Poll another process's effect (no event crosses the process boundary), bounded in time."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(every)


def manifest_gets(upstream: Upstream, repo: str) -> int:
    """GETs of repo's manifests the upstream answered (not counting token challenges, 401)."""
    return sum(1 for r in upstream.distribution.requests()
               if r.method == "GET" and r.uri.startswith(f"/v2/{repo}/manifests/") and r.status != 401)


def url_up(pullcache: PullcacheProcess, url: str) -> float | None:
    text = RegistryClient(pullcache.url).request("GET", "/metrics").body.decode()
    prefix = f'pullcache_upstream_url_up{{upstream="docker.io",url="{url}"}} '
    values = [float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else None


def pull_manifest(pullcache: PullcacheProcess, repo: str, tag: str) -> bytes:
    return RegistryClient(pullcache.url).get_manifest(repo, tag, ACCEPT).body


# ---------------------------------------------------------------- config


def test_urls_set_the_primary_as_url_and_keep_the_order() -> None:
    config = build_config({"upstreams": [{"name": "hub", "urls": ["https://a.example/", "https://b.example"]}]})
    upstream = config.upstreams[0]
    assert upstream.url == "https://a.example"
    assert upstream.all_urls == ("https://a.example", "https://b.example")


@pytest.mark.parametrize("entry, words", [
    ({"name": "hub", "url": "https://a", "urls": ["https://b"]}, ["upstreams[0]", "name and urls"]),
    ({"name": "hub", "urls": []}, ["upstreams[0].urls", "list of URLs"]),
    ({"name": "hub", "urls": ["https://a", "ftp://b"]}, ["upstreams[0].urls[1]", "http(s) URL"]),
    ({"name": "hub", "urls": ["https://a", "https://a"]}, ["upstreams[0].urls", "twice"]),
])
def test_bad_urls_are_one_line_errors_naming_the_key(entry: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        build_config({"upstreams": [entry]})
    assert all(word in str(caught.value) for word in words), str(caught.value)


# ---------------------------------------------------------------- the breaker


def test_a_failing_url_is_skipped_for_a_backoff_that_grows_with_each_failed_probe() -> None:
    breaker = Breaker(f"up-{uuid.uuid4().hex[:8]}", "http://a")
    breaker.failed(100.0, "refused")
    assert breaker.is_open(100.9) and not breaker.is_open(101.0)
    breaker.failed(100.5, "refused")  # a request that set out before it opened: the same outage
    assert not breaker.is_open(101.0)
    breaker.failed(101.0, "refused")  # the probe after the backoff fails: twice as long
    assert breaker.is_open(102.9) and not breaker.is_open(103.0)
    breaker.succeeded()
    assert not breaker.is_open(103.0)
    breaker.failed(200.0, "refused")  # a success starts the backoff over
    assert not breaker.is_open(201.0)


def test_an_attempt_gets_read_timeout_or_an_equal_share_of_the_time_left_among_the_urls_still_to_ask() -> None:
    assert str(attempt_limit(20.0, 30.0, 2, 20.0)) == \
        "10s (this URL's share of request_timeout, the rest left for the next URL)"
    last = attempt_limit(9.996, 30.0, 1, 10.0)  # what is left of the deadline; the message names the setting
    assert last.seconds == 9.996 and str(last) == "10s (request_timeout)"
    assert str(attempt_limit(20.0, 5.0, 2, 20.0)) == "5s (read_timeout)"
    assert attempt_limit(-1.0, 30.0, 2, 20.0).seconds == 0.0


async def test_a_client_asks_the_fallback_while_the_primary_is_dead(aiohttp_server: Any) -> None:
    fallback = await FakeRegistry().start(aiohttp_server)
    fallback.add_manifest("library/alpine", "latest", MANIFEST)
    primary = closed_port_url()
    name = f"up-{uuid.uuid4().hex[:8]}"
    client = UpstreamClient(UpstreamConfig(name=name, url=primary, urls=(primary, fallback.url)))
    await client.start()
    try:
        assert (await client.get_manifest("library/alpine", "latest", ())).body == MANIFEST
        assert client.url_in_use == fallback.url
    finally:
        await client.close()
    up = {url: metrics.REGISTRY.get_sample_value("pullcache_upstream_url_up", {"upstream": name, "url": url})
          for url in (primary, fallback.url)}
    assert up == {primary: 0.0, fallback.url: 1.0}


async def test_a_hung_primary_hands_over_to_the_fallback_within_request_timeout(
        aiohttp_server: Any, upstream_clients: Any) -> None:
    fallback = await FakeRegistry().start(aiohttp_server)
    fallback.add_manifest("library/alpine", "latest", MANIFEST)
    with silent_listener() as primary:
        client = await upstream_clients(primary, urls=(primary, fallback.url), request_timeout=2.0, read_timeout=3.0)
        started = time.monotonic()
        assert (await client.get_manifest("library/alpine", "latest", ())).body == MANIFEST
        assert time.monotonic() - started < 2.0
        assert client.url_in_use == fallback.url


async def test_a_hung_token_realm_hands_over_to_the_fallback_within_request_timeout(
        aiohttp_server: Any, upstream_clients: Any) -> None:
    tokens = await TokenServer().start(aiohttp_server)
    primary = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    primary.add_manifest("library/alpine", "latest", MANIFEST)
    fallback = await FakeRegistry().start(aiohttp_server)
    fallback.add_manifest("library/alpine", "latest", MANIFEST)
    with silent_listener() as realm:
        primary.realm = f"{realm}/token"
        client = await upstream_clients(primary.url, urls=(primary.url, fallback.url), token_hosts=("127.0.0.1",),
                                        request_timeout=2.0, read_timeout=3.0)
        started = time.monotonic()
        assert (await client.get_manifest("library/alpine", "latest", ())).body == MANIFEST
        assert time.monotonic() - started < 2.0
        assert client.url_in_use == fallback.url
    assert tokens.seen == []


async def test_a_fallbacks_token_realm_is_checked_against_its_own_origin(aiohttp_server: Any) -> None:
    tokens = await TokenServer().start(aiohttp_server)  # the fallback's host, another port: not its origin
    fallback = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    fallback.add_manifest("library/alpine", "latest", MANIFEST)
    # Judged by the primary's origin (localhost), the realm would be refused for its loopback address instead.
    primary = closed_port_url().replace("127.0.0.1", "localhost")
    client = UpstreamClient(UpstreamConfig(name=f"up-{uuid.uuid4().hex[:8]}", url=primary,
                                           urls=(primary, fallback.url)))
    await client.start()
    try:
        with pytest.raises(UpstreamRealmRefused, match="origin"):
            await client.get_manifest("library/alpine", "latest", ())
    finally:
        await client.close()
    assert tokens.seen == []


async def test_each_url_has_its_own_tokens(aiohttp_server: Any) -> None:
    registries = []
    for _ in range(2):
        tokens = await TokenServer().start(aiohttp_server)
        registry = await FakeRegistry(tokens=tokens).start(aiohttp_server)
        registry.add_manifest("library/alpine", "latest", MANIFEST)
        registries.append(registry)
    primary, fallback = registries
    client = UpstreamClient(UpstreamConfig(name=f"up-{uuid.uuid4().hex[:8]}", url=primary.url,
                                           urls=(primary.url, fallback.url), token_hosts=("127.0.0.1",)))
    await client.start()
    try:
        await client.get_manifest("library/alpine", "latest", ())  # the primary's token is now known
        primary.faults[TAG_PATH] = answer(503, {"errors": [{"code": "UNAVAILABLE"}]})
        assert (await client.get_manifest("library/alpine", "latest", ())).body == MANIFEST
    finally:
        await client.close()
    assert fallback.seen[0].headers.get("Authorization") is None  # not the primary's token
    assert fallback.tokens is not None and len(fallback.tokens.seen) == 1


# ---------------------------------------------------------------- end to end, real Distribution


def test_a_dead_primary_hands_over_to_the_fallback_and_gets_traffic_back_when_it_recovers(
        pullcache_factory: Callable[..., PullcacheProcess], upstream_factory: Callable[[], Upstream]) -> None:
    primary, fallback = upstream_factory(), upstream_factory()
    primary.distribution.halt()
    pullcache = pullcache_factory(with_urls(primary.url, fallback.url))
    alpine = fallback["library/alpine:latest"]

    assert sha256_digest(pull_manifest(pullcache, "library/alpine", "latest")) == alpine.digest
    assert manifest_gets(fallback, "library/alpine") == 1
    assert url_up(pullcache, primary.url) == 0.0
    page = RegistryClient(pullcache.url).request("GET", "/").body.decode()
    assert f"{fallback.url}</span>" in page and "primary" in page

    primary.distribution.start()
    probes = iter(range(1000))
    # Misses on tags nobody has go upstream each time, so one of them is the probe once the backoff has passed.
    eventually(lambda: RegistryClient(pullcache.url).request(
        "GET", f"/v2/library/busybox/manifests/probe{next(probes)}").status == 404
        and manifest_gets(primary, "library/busybox") > 0, "a request probes the primary again", every=0.2)
    assert url_up(pullcache, primary.url) == 1.0

    before = manifest_gets(fallback, "library/busybox")
    busybox = primary["library/busybox:1.36"]
    assert sha256_digest(pull_manifest(pullcache, "library/busybox", "1.36")) == busybox.digest
    assert manifest_gets(fallback, "library/busybox") == before
    page = RegistryClient(pullcache.url).request("GET", "/").body.decode()
    assert f"{primary.url}</span>" in page


async def test_sixteen_cold_clients_with_the_primary_dead_make_one_fetch_from_the_fallback(
        pullcache_factory: Callable[..., PullcacheProcess], upstream_factory: Callable[[], Upstream]) -> None:
    fallback = upstream_factory()
    pullcache = pullcache_factory(with_urls(closed_port_url(), fallback.url))
    layer = max(fallback["library/alpine:latest"].blobs(), key=lambda blob: blob.size)
    path = f"/v2/library/alpine/blobs/{layer.digest}"

    async def one(session: aiohttp.ClientSession, started: float) -> tuple[float, bytes]:
        async with session.get(pullcache.url + path) as response:
            assert response.status == 200
            first = await response.content.readany()
            first_byte = time.monotonic() - started
            return first_byte, first + await response.read()

    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        results = await asyncio.gather(*(one(session, started) for _ in range(16)))

    assert [body == layer.data for _, body in results] == [True] * 16
    # A fetch is a GET the fallback answered with the bytes (the first GET may be a token challenge's 401).
    fetches = [r for r in fallback.distribution.requests() if r.method == "GET" and r.uri.startswith(path)
               and r.status == 200]
    assert len(fetches) == 1
    slowest = max(first_byte for first_byte, _ in results)
    print(f"16 cold clients, primary dead: {len(fetches)} fallback fetch, slowest first byte {slowest:.3f}s")
    assert slowest < 2.0


def test_a_hung_primary_hands_over_to_the_fallback_and_is_then_skipped(
        pullcache_factory: Callable[..., PullcacheProcess], upstream_factory: Callable[[], Upstream]) -> None:
    fallback = upstream_factory()
    with silent_listener() as primary:
        config = with_urls(primary, fallback.url)
        config["upstreams"][0]["request_timeout"] = "4s"  # the primary's share: 2 s
        pullcache = pullcache_factory(config)
        started = time.monotonic()
        assert sha256_digest(pull_manifest(pullcache, "library/alpine", "latest")) == \
            fallback["library/alpine:latest"].digest
        first_took = time.monotonic() - started
        started = time.monotonic()  # within the breaker's first backoff (1 s): straight to the fallback
        assert sha256_digest(pull_manifest(pullcache, "library/busybox", "1.36")) == \
            fallback["library/busybox:1.36"].digest
        second_took = time.monotonic() - started
        assert first_took < 4.0 and second_took < 2.0
        assert url_up(pullcache, primary) == 0.0


async def test_sixteen_cold_clients_with_the_primary_hung_make_one_fetch_from_the_fallback(
        pullcache_factory: Callable[..., PullcacheProcess], upstream_factory: Callable[[], Upstream]) -> None:
    fallback = upstream_factory()
    layer = max(fallback["library/alpine:latest"].blobs(), key=lambda blob: blob.size)
    path = f"/v2/library/alpine/blobs/{layer.digest}"
    with silent_listener() as primary:
        config = with_urls(primary, fallback.url)
        config["upstreams"][0]["request_timeout"] = "4s"
        pullcache = pullcache_factory(config)

        async def one(session: aiohttp.ClientSession) -> bytes:
            async with session.get(pullcache.url + path) as response:
                assert response.status == 200
                return await response.read()

        async with aiohttp.ClientSession() as session:
            bodies = await asyncio.gather(*(one(session) for _ in range(16)))

    assert [body == layer.data for body in bodies] == [True] * 16
    fetches = [r for r in fallback.distribution.requests() if r.method == "GET" and r.uri.startswith(path)
               and r.status == 200]
    assert len(fetches) == 1
