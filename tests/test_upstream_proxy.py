"""Outbound HTTP proxy: an upstream's `proxy`, or HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment
read the way curl reads them. End to end through a real tinyproxy (tests/support/tinyproxy.py) whose log
shows which requests, token fetches included, went through it."""
from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from pullcache.config import UpstreamConfig, build_config
from pullcache.upstream import UpstreamClient, UpstreamError, UpstreamRedirectRefused
from pullcache.upstream.proxies import Proxies
from pullcache.upstream.transport import Transport
from tests.fault_upstream import FakeRegistry, redirect
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.registry_client import RegistryClient, RegistryError, sha256_digest
from tests.support.seed import Upstream
from tests.support.tinyproxy import Tinyproxy

ACCEPT = ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
          "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"]
UPSTREAM = UpstreamConfig(name="hub", url="https://registry.example")


def proxy_of(url: str, environ: dict[str, str], **config: Any) -> str | None:
    choice = Proxies(UpstreamConfig(name="hub", url="https://registry.example", **config), environ).for_url(URL(url))
    return None if choice is None else str(choice.url)


# ---------------------------------------------------------------- choosing a proxy


def test_the_environment_proxy_is_chosen_by_the_target_scheme_lower_case_first() -> None:
    environ = {"HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:3128", "HTTP_PROXY": "plain:8080"}
    assert proxy_of("https://registry.example/v2/", environ) == "http://lower:3128"
    assert proxy_of("http://registry.example/v2/", environ) == "http://plain:8080"
    assert proxy_of("https://registry.example/v2/", {}) is None


@pytest.mark.parametrize("no_proxy, host, exempt", [
    ("example.com", "example.com", True),
    ("example.com", "cdn.example.com", True),
    (".example.com", "cdn.example.com", True),
    (".example.com", "example.com", True),
    ("example.com", "badexample.com", False),
    ("EXAMPLE.com:443", "cdn.example.com", True),
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "11.1.2.3", False),
    ("192.168.1.5", "192.168.1.5", True),
    ("fd00::/8, other", "[fd00::1]", True),
    ("a.test other.test", "x.other.test", True),
    ("*", "anything.example", True),
    (" * ", "anything.example", True),
    ("localhost, *", "anything.example", False),  # curl: `*` only as the whole value, not as an entry
    ("localhost, *", "localhost", True),
    ("10.0.0.0/8", "ten.example", False),  # names are not resolved for a CIDR, as with curl
])
def test_no_proxy_exempts_hosts_by_suffix_and_addresses_by_cidr_as_curl_does(
        no_proxy: str, host: str, exempt: bool) -> None:
    environ = {"https_proxy": "http://proxy:3128", "NO_PROXY": no_proxy}
    assert (proxy_of(f"https://{host}/v2/", environ) is None) == exempt


def test_an_upstreams_own_proxy_wins_over_the_environment_and_keeps_credentials_for_itself() -> None:
    environ = {"https_proxy": "http://env:3128", "PROXY_PASS": "s3cret"}
    proxies = Proxies(UpstreamConfig(name="hub", url="https://registry.example", proxy="http://bot@own:3128",
                                     proxy_password_env="PROXY_PASS"), environ)
    choice = proxies.for_url(URL("https://registry.example/v2/"))
    assert choice is not None and str(choice.url) == "http://own:3128"
    assert choice.headers == {"Proxy-Authorization": "Basic Ym90OnMzY3JldA=="}  # bot:s3cret
    assert proxies.hosts == frozenset({"own"})


@pytest.mark.parametrize("value", ["ftp://proxy:21", "proxy:3128", "http://proxy:3128/path", "http://a@b@c:1"])
def test_a_bad_proxy_url_is_a_one_line_error_naming_the_key_without_repeating_it(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        build_config({"upstreams": [{"name": "hub", "url": "https://r.example", "proxy": value}]})
    assert str(caught.value).startswith("upstreams[0].proxy: ") and value not in str(caught.value)


# ---------------------------------------------------------------- end to end, real tinyproxy


@pytest.fixture
def tinyproxy() -> Iterator[Tinyproxy]:
    proxy = Tinyproxy().start()
    yield proxy
    proxy.stop()


def pull_single(pullcache: PullcacheProcess, upstream: Upstream) -> None:
    """Pull library/single:v1 (one manifest, its config and layers) and check every byte."""
    image = upstream["library/single:v1"]
    client = RegistryClient(pullcache.url)
    assert sha256_digest(client.get_manifest("library/single", "v1", ACCEPT).body) == image.digest
    for blob in image.blobs():
        assert sha256_digest(client.get_blob("library/single", blob.digest)) == blob.digest


def test_an_upstreams_proxy_carries_its_registry_requests_and_token_fetches(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream, tinyproxy: Tinyproxy) -> None:
    pullcache = pullcache_factory({"upstreams": [docker_hub_upstream(upstream.url, proxy=tinyproxy.url)]})
    pull_single(pullcache, upstream)
    relayed = [url for _, url in tinyproxy.requests()]
    assert any(url.startswith(f"{upstream.url}/v2/library/single/manifests/v1") for url in relayed), relayed
    assert any(url.startswith(f"{upstream.token_server.realm}?") for url in relayed), relayed
    blobs = upstream["library/single:v1"].blobs()
    assert all(any(url == f"{upstream.url}/v2/library/single/blobs/{b.digest}" for url in relayed) for b in blobs)


def test_the_environments_proxy_is_used_except_for_no_proxy_hosts(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream, tinyproxy: Tinyproxy) -> None:
    # The registry is spelled localhost and exempt; its token realm, on 127.0.0.1, is not.
    registry = upstream.url.replace("127.0.0.1", "localhost")
    pullcache = pullcache_factory({"upstreams": [docker_hub_upstream(registry)]},
                                  env={"http_proxy": tinyproxy.url, "NO_PROXY": "example.test, localhost"})
    pull_single(pullcache, upstream)
    relayed = [url for _, url in tinyproxy.requests()]
    assert any(url.startswith(f"{upstream.token_server.realm}?") for url in relayed), relayed
    assert not any("/v2/" in url for url in relayed), relayed


class TableResolver(AbstractResolver):
    """Names from a table; any other name does not resolve (as on a network that resolves only via its proxy)."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ResolveResult(hostname=host, host=self.table[host], port=port, family=socket.AF_INET, proto=0,
                              flags=0)]

    async def close(self) -> None:
        pass


DIGEST = "sha256:" + "ab" * 32


async def redirected_through(tinyproxy: Tinyproxy, aiohttp_server: Any, location: str) -> UpstreamClient:
    fake = await FakeRegistry().start(aiohttp_server)
    fake.faults[f"/v2/library/alpine/blobs/{DIGEST}"] = redirect(location)
    config = UpstreamConfig(name=f"up-{uuid.uuid4().hex[:8]}", url=fake.url, proxy=tinyproxy.url)
    client = UpstreamClient(config, resolver=TableResolver({"cdn.test": "10.0.0.5"}))
    await client.start()
    return client


async def test_through_a_proxy_a_redirect_to_a_name_with_a_private_address_is_refused_before_sending(
        tinyproxy: Tinyproxy, aiohttp_server: Any) -> None:
    client = await redirected_through(tinyproxy, aiohttp_server, "http://cdn.test/blob")
    try:
        with pytest.raises(UpstreamRedirectRefused, match=r"non-public address 10\.0\.0\.5"):
            await client.head_blob("library/alpine", DIGEST)
    finally:
        await client.close()
    relayed = [url for _, url in tinyproxy.requests()]
    assert any("/v2/library/alpine/blobs/" in url for url in relayed) and not any("cdn.test" in u for u in relayed)


async def test_through_a_proxy_a_name_pullcache_cannot_resolve_is_left_to_the_proxy(
        tinyproxy: Tinyproxy, aiohttp_server: Any) -> None:
    client = await redirected_through(tinyproxy, aiohttp_server, "http://nowhere.invalid/blob")
    try:
        with pytest.raises(UpstreamError):  # the proxy cannot resolve it either
            await client.head_blob("library/alpine", DIGEST)
    finally:
        await client.close()
    assert ("HEAD", "http://nowhere.invalid/blob") in tinyproxy.requests()


async def test_the_proxys_host_is_trusted_only_as_the_proxy_not_as_a_redirect_target(
        tinyproxy: Tinyproxy, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "proxy.test")  # so the redirect below goes to it directly
    fake = await FakeRegistry().start(aiohttp_server)
    fake.faults[f"/v2/library/alpine/blobs/{DIGEST}"] = redirect("http://proxy.test:8080/admin")
    config = UpstreamConfig(name=f"up-{uuid.uuid4().hex[:8]}", url=fake.url, proxy=f"http://proxy.test:{tinyproxy.port}")
    client = UpstreamClient(config, resolver=TableResolver({"proxy.test": "127.0.0.1"}))
    await client.start()
    try:
        with pytest.raises(UpstreamRedirectRefused, match=r"non-public address 127\.0\.0\.1"):
            await client.head_blob("library/alpine", DIGEST)
    finally:
        await client.close()
    assert any("/v2/library/alpine/blobs/" in url for _, url in tinyproxy.requests())  # reached as the proxy


async def test_an_https_request_shows_the_proxy_only_a_connect_with_the_proxys_credentials() -> None:
    seen: list[bytes] = []

    async def refuse_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = UpstreamConfig(name=f"up-{uuid.uuid4().hex[:8]}", url="https://registry.example",
                            proxy=f"http://bot:pr0xy@127.0.0.1:{port}")
    transport = Transport(config)
    await transport.start()
    try:
        with pytest.raises(UpstreamError):
            await transport.send("GET", URL("https://registry.example/v2/"), "GET /v2/",
                                 headers={"Authorization": "Bearer upstream-secret"})
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()
    head = seen[0].decode()
    assert head.startswith("CONNECT registry.example:443 HTTP/1.1\r\n")
    assert "Proxy-Authorization: Basic Ym90OnByMHh5\r\n" in head  # bot:pr0xy
    assert "upstream-secret" not in head and "\nAuthorization" not in head


def test_proxy_credentials_come_from_proxy_password_env(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    proxy = Tinyproxy(basic_auth=("bot", "pr0xy-pass")).start()
    try:
        url = f"http://bot@127.0.0.1:{proxy.port}"
        entry = docker_hub_upstream(upstream.url, proxy=url, proxy_password_env="PC_PROXY_PASS")
        refused = pullcache_factory({"upstreams": [entry]}, env={"PC_PROXY_PASS": "wrong"})
        with pytest.raises(RegistryError):
            RegistryClient(refused.url).get_manifest("library/single", "v1", ACCEPT)
        pullcache = pullcache_factory({"upstreams": [entry]}, env={"PC_PROXY_PASS": "pr0xy-pass"})
        pull_single(pullcache, upstream)
        assert any("/v2/library/single/" in url for _, url in proxy.requests())
    finally:
        proxy.stop()
