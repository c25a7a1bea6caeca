"""Hostile or broken upstreams must not harm pullcache's other users (issue 11, part 2).

Every server listens on loopback: the upstream on 127.0.0.1 and, where another host is needed (an internal
service a redirect or token realm points at), 127.0.0.2 (tests/support/hostile_upstream.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from pullcache.config import UpstreamConfig
from pullcache.upstream import (
    UpstreamClient,
    UpstreamRealmRefused,
    UpstreamRedirectRefused,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from pullcache.upstream.addresses import AddressRefused, GuardedResolver
from pullcache.upstream.health import last_error
from pullcache.upstream.tokens import sends_credentials
from tests.fault_upstream import FakeRegistry, TokenServer, answer, redirect, sha256
from tests.support.hostile_upstream import (
    ANOTHER_LOOPBACK,
    SECRET,
    InternalService,
    RealmPerRepo,
    drip_body,
    drip_raw,
    raw_answer,
)
from tests.support_faults import Proxy, start_proxy
from tests.test_status_page import parse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                                  "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
                       }).encode()
LAYER = b"layer bytes " * 1000
DIGEST = sha256(LAYER)

MakeClient = Callable[..., Awaitable[UpstreamClient]]


@pytest.fixture
def make_client(upstream_clients: MakeClient) -> MakeClient:
    return partial(upstream_clients, connect_timeout=2.0, read_timeout=2.0)


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeRegistry:
    registry = await FakeRegistry().start(aiohttp_server)
    registry.add_manifest("library/alpine", "latest", MANIFEST)
    return registry


@pytest.fixture
async def internal(aiohttp_server: Any) -> InternalService:
    return await InternalService().start(aiohttp_server)


async def tokens_on(aiohttp_server: Any, host: str, **kwargs: Any) -> TokenServer:
    tokens = TokenServer(**kwargs)
    server = await aiohttp_server(tokens.app, host=host)
    tokens.url = f"http://{host}:{server.port}"
    return tokens


async def blob_get(proxy: Proxy, digest: str) -> tuple[int, bytes]:
    async with proxy.client.get(f"/v2/library/alpine/blobs/{digest}") as response:
        return response.status, await response.read()


# ---------------------------------------------------------------- 1. redirect targets and token realms

async def test_a_blob_redirect_to_another_loopback_host_is_refused_and_nothing_of_its_answer_reaches_the_client(
        aiohttp_client: Any, fake: FakeRegistry, internal: InternalService, tmp_path: Path) -> None:
    digest = sha256(SECRET)
    fake.faults[f"/v2/library/alpine/blobs/{digest}"] = redirect(f"{internal.url}/secret")
    proxy = await start_proxy(aiohttp_client, fake, tmp_path / "data")
    status, body = await blob_get(proxy, digest)
    assert status == 502
    assert internal.seen == []
    assert b"internal-service" not in body
    message = json.loads(body)["errors"][0]["message"]
    assert "redirect" in message and "non-public address" in message and "redirect_hosts" in message


async def test_a_blob_redirect_to_a_host_in_redirect_hosts_is_followed(
        aiohttp_client: Any, fake: FakeRegistry, internal: InternalService, tmp_path: Path) -> None:
    digest = sha256(LAYER)
    internal.bodies["/cdn/layer"] = LAYER
    fake.faults[f"/v2/library/alpine/blobs/{digest}"] = redirect(f"{internal.url}/cdn/layer")
    proxy = await start_proxy(aiohttp_client, fake, tmp_path / "data", redirect_hosts=[ANOTHER_LOOPBACK])
    assert await blob_get(proxy, digest) == (200, LAYER)
    assert internal.seen == ["/cdn/layer"]


async def test_a_redirect_to_a_name_resolving_to_loopback_is_refused_without_connecting(
        aiohttp_server: Any, make_client: MakeClient, fake: FakeRegistry) -> None:
    other = await FakeRegistry().start(aiohttp_server, host="localhost")  # localhost: 127.0.0.1 by name
    digest = sha256(LAYER)
    fake.faults[f"/v2/library/alpine/blobs/{digest}"] = redirect(f"{other.url}/blobs/{digest}")
    client = await make_client(fake.url)
    with pytest.raises(UpstreamRedirectRefused, match="non-public address 127.0.0.1"):
        await client.head_blob("library/alpine", digest)
    assert other.seen == []


class FakeResolver(AbstractResolver):
    """Answers from a table: host -> addresses, each call popping the next answer when a list of lists."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        addresses = self.answers[host].pop(0)
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
                for a in addresses]

    async def close(self) -> None:
        pass


async def test_every_resolved_address_is_checked_and_each_connection_resolves_again() -> None:
    config = UpstreamConfig(name="up", url="https://registry.example")
    inner = FakeResolver({"cdn.example": [["93.184.216.34"], ["93.184.216.34", "10.0.0.5"], ["169.254.169.254"]]})
    guarded = GuardedResolver(config, inner)
    assert [r["host"] for r in await guarded.resolve("cdn.example", 443)] == ["93.184.216.34"]
    with pytest.raises(AddressRefused, match="10.0.0.5"):  # one private address among public ones
        await guarded.resolve("cdn.example", 443)
    with pytest.raises(AddressRefused, match="169.254.169.254"):  # rebound to the metadata service
        await guarded.resolve("cdn.example", 443)


async def test_the_connection_goes_to_the_addresses_the_guard_checked(
        internal: InternalService, fake: FakeRegistry) -> None:
    internal.bodies["/cdn/layer"] = LAYER
    port = internal.url.rsplit(":", 1)[1]
    fake.faults[f"/v2/library/alpine/blobs/{DIGEST}"] = redirect(f"http://cdn.test:{port}/cdn/layer")
    clients = [UpstreamClient(UpstreamConfig(name=f"up-{uuid.uuid4().hex[:8]}", url=fake.url, **extra),
                              resolver=FakeResolver({"cdn.test": [[ANOTHER_LOOPBACK]] * 3}))
               for extra in ({}, {"redirect_hosts": ("cdn.test",)})]
    refused, listed = clients
    for client in clients:
        await client.start()
    try:
        with pytest.raises(UpstreamRedirectRefused, match="non-public address 127.0.0.2"):
            await refused.head_blob("library/alpine", DIGEST)
        assert internal.seen == []
        async with listed.open_blob("library/alpine", DIGEST) as blob:
            assert b"".join([chunk async for chunk in blob.chunks()]) == LAYER
        assert internal.seen == ["/cdn/layer"]  # reached by the address the resolver gave, not by DNS
    finally:
        for client in clients:
            await client.close()


async def test_the_upstreams_own_host_and_listed_hosts_may_resolve_to_private_addresses() -> None:
    config = UpstreamConfig(name="up", url="https://registry.internal:5000", redirect_hosts=("blobs.internal",),
                            token_hosts=("auth.internal",))
    inner = FakeResolver({h: [["10.0.0.7"]] for h in ("registry.internal", "blobs.internal", "auth.internal")})
    guarded = GuardedResolver(config, inner)
    for host in ("registry.internal", "blobs.internal", "auth.internal"):
        assert [r["host"] for r in await guarded.resolve(host, 443)] == ["10.0.0.7"]


async def test_a_realm_on_the_upstreams_host_at_another_port_is_refused_unless_listed(
        aiohttp_server: Any, make_client: MakeClient) -> None:
    tokens = await TokenServer().start(aiohttp_server)  # 127.0.0.1, another port than the registry
    registry = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    registry.add_manifest("library/alpine", "latest", MANIFEST)
    client = await make_client(registry.url)
    with pytest.raises(UpstreamRealmRefused, match="origin"):
        await client.get_manifest("library/alpine", "latest", [])
    assert tokens.seen == []
    listed = await make_client(registry.url, token_hosts=("127.0.0.1",))
    assert (await listed.get_manifest("library/alpine", "latest", [])).body == MANIFEST


async def test_a_realm_on_a_private_host_is_used_only_when_listed_in_redirect_hosts(
        aiohttp_server: Any, make_client: MakeClient) -> None:
    tokens = await tokens_on(aiohttp_server, ANOTHER_LOOPBACK)
    registry = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    registry.add_manifest("library/alpine", "latest", MANIFEST)
    refused = await make_client(registry.url)
    with pytest.raises(UpstreamRealmRefused, match="non-public address"):
        await refused.get_manifest("library/alpine", "latest", [])
    assert tokens.seen == []
    listed = await make_client(registry.url, redirect_hosts=(ANOTHER_LOOPBACK,))
    assert (await listed.get_manifest("library/alpine", "latest", [])).body == MANIFEST


# ---------------------------------------------------------------- 2. one repository's refusal

async def test_a_realm_refusing_one_repository_does_not_deny_the_others(
        aiohttp_server: Any, make_client: MakeClient) -> None:
    tokens = await TokenServer().start(aiohttp_server)
    strict = await TokenServer(credentials=("someone", "else")).start(aiohttp_server)
    registry = await RealmPerRepo(tokens=tokens).start(aiohttp_server)
    registry.add_manifest("library/alpine", "latest", MANIFEST)
    registry.realms["team/private"] = strict.realm
    client = await make_client(registry.url, token_hosts=("127.0.0.1",))
    with pytest.raises(UpstreamUnauthorized, match="refusing anonymous access"):
        await client.get_manifest("team/private", "v1", [])
    assert (await client.get_manifest("library/alpine", "latest", [])).body == MANIFEST
    assert len(strict.seen) == 1


async def test_a_changed_challenge_is_learned_again(aiohttp_server: Any, make_client: MakeClient) -> None:
    old = await TokenServer().start(aiohttp_server)
    registry = await FakeRegistry(tokens=old).start(aiohttp_server)
    for repo in ("library/alpine", "library/busybox"):
        registry.add_manifest(repo, "latest", MANIFEST)
    client = await make_client(registry.url, token_hosts=("127.0.0.1",))
    await client.get_manifest("library/alpine", "latest", [])
    new = await TokenServer().start(aiohttp_server)
    registry.tokens = new  # the registry moved its realm...
    old.credentials = ("nobody", "at-all")  # ...and the old one now refuses anonymous access
    assert (await client.get_manifest("library/busybox", "latest", [])).body == MANIFEST
    assert [s.path for s in new.seen] == ["/token"]


# ---------------------------------------------------------------- 3. drip-fed responses

HEAD_ANSWER = raw_answer("200 OK", {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(MANIFEST)),
                                    "Docker-Content-Digest": sha256(MANIFEST)})


async def head_manifest(client: UpstreamClient) -> object:
    return await client.head_manifest("library/alpine", "latest", [])


async def get_manifest(client: UpstreamClient) -> object:
    return await client.get_manifest("library/alpine", "latest", [])


async def open_blob(client: UpstreamClient) -> object:
    async with client.open_blob("library/alpine", DIGEST) as blob:
        return blob


async def dripping_realm(aiohttp_server: Any) -> FakeRegistry:
    """A registry whose token realm (another port of 127.0.0.1) drips its answer."""
    realm = web.Application()
    realm.router.add_get("/token", drip_raw(raw_answer("200 OK", {"Content-Type": "application/json"},
                                                        b'{"token": "' + b"t" * 200 + b'"}'), 0.05))
    realm_server = await aiohttp_server(realm)
    registry = await FakeRegistry(tokens=TokenServer()).start(aiohttp_server)
    registry.realm = f"http://127.0.0.1:{realm_server.port}/token"
    return registry


@pytest.mark.parametrize(("where", "call"), [
    ("manifest HEAD headers", head_manifest),
    ("manifest GET body", get_manifest),
    ("blob headers", open_blob),
    ("token", get_manifest),
])
async def test_a_drip_fed_exchange_ends_at_request_timeout(
        aiohttp_server: Any, make_client: MakeClient, fake: FakeRegistry, where: str,
        call: Callable[[UpstreamClient], Awaitable[object]]) -> None:
    path = "/v2/library/alpine/manifests/latest"
    registry = fake
    if where == "manifest HEAD headers":
        fake.faults[path] = drip_raw(HEAD_ANSWER, 0.05)
    elif where == "manifest GET body":
        fake.faults[path] = drip_body(MANIFEST, 0.05, headers={"Content-Type": OCI_MANIFEST})
    elif where == "blob headers":
        fake.faults[f"/v2/library/alpine/blobs/{DIGEST}"] = drip_raw(raw_answer("200 OK", {"X-Pad": "x" * 200}), 0.05)
    else:
        registry = await dripping_realm(aiohttp_server)
    client = await make_client(registry.url, read_timeout=2.0, request_timeout=0.5, token_hosts=("127.0.0.1",))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"within 0.5s \(request_timeout\)"):
        await call(client)
    assert 0.4 <= time.monotonic() - started < 3.0  # the drip alone would take over 7 s


async def test_a_drip_fed_revalidation_serves_the_cached_tag_stale(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await start_proxy(aiohttp_client, fake, tmp_path / "data", manifest_ttl="0s", read_timeout="5s",
                              request_timeout="500ms")
    path = "/v2/library/alpine/manifests/latest"
    assert (await proxy.client.get(path)).status == 200
    fake.faults[path] = drip_raw(HEAD_ANSWER, 0.05)
    started = time.monotonic()
    response = await proxy.client.get(path)
    assert (response.status, await response.read()) == (200, MANIFEST)
    assert time.monotonic() - started < 3.0  # the drip alone would take over 7 s
    assert proxy.count("manifest", "stale") == 1


async def test_a_blob_body_below_the_minimum_rate_is_cut(make_client: MakeClient, fake: FakeRegistry) -> None:
    digest = sha256(LAYER)
    fake.faults[f"/v2/library/alpine/blobs/{digest}"] = drip_body(LAYER, 0.02)  # 50 bytes/s, never silent
    client = await make_client(fake.url, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="minimum"):
        async with client.open_blob("library/alpine", digest) as blob:
            async for _ in blob.chunks():
                pass
    assert time.monotonic() - started < 5.0  # the drip alone would take 4 minutes


async def test_a_slow_blob_body_above_the_minimum_rate_completes(make_client: MakeClient, fake: FakeRegistry) -> None:
    # 640 KiB in 64 KiB steps every 0.1 s: longer than request_timeout and with pauses, but well above the floor
    body = bytes(range(256)) * 2560
    digest = sha256(body)
    fake.faults[f"/v2/library/alpine/blobs/{digest}"] = drip_body(body, 0.1, chunk=64 * 1024)
    client = await make_client(fake.url, read_timeout=0.3, request_timeout=0.5)
    async with client.open_blob("library/alpine", digest) as blob:
        received = b"".join([chunk async for chunk in blob.chunks()])
    assert received == body


# ---------------------------------------------------------------- 4. the upstream's address stays inside

async def test_client_facing_errors_name_the_upstream_not_its_address(
        aiohttp_client: Any, aiohttp_server: Any, fake: FakeRegistry, internal: InternalService, tmp_path: Path,
        unused_tcp_port: int, caplog: pytest.LogCaptureFixture) -> None:
    tokens = await TokenServer().start(aiohttp_server)
    guarded = await FakeRegistry(tokens=tokens).start(aiohttp_server)  # realm on another port: refused
    proxies = [await start_proxy(aiohttp_client, fake, tmp_path / "fake", request_timeout="300ms"),
               await start_proxy(aiohttp_client, guarded, tmp_path / "guarded")]
    refused = FakeRegistry()
    refused.url = f"http://127.0.0.1:{unused_tcp_port}"
    proxies.append(await start_proxy(aiohttp_client, refused, tmp_path / "refused"))
    never = asyncio.Event()

    async def silent(request: Any) -> Any:
        await never.wait()
    bad = b'{"not": "the digest"}'
    fake.faults.update({
        "/v2/a/manifests/v1": answer(503, b"upstream at " + fake.url.encode() + b" is down"),
        "/v2/b/manifests/v1": answer(500, {"errors": [{"code": "X", "message": fake.url}]}),
        "/v2/c/manifests/v1": answer(200, bad, {"Docker-Content-Digest": sha256(b"other")}),
        "/v2/d/manifests/v1": silent,
        "/v2/e/manifests/v1": redirect(f"{internal.url}/x"),
        "/v2/f/manifests/v1": redirect("ftp://somewhere/x"),
    })
    caplog.set_level(logging.INFO, logger="pullcache")
    bodies = []
    try:
        for proxy in proxies:
            for repo in "abcdef":
                response = await proxy.client.get(f"/v2/{repo}/manifests/v1")
                assert response.status >= 500 or response.status == 403
                bodies.append((proxy.upstream, await response.text()))
    finally:
        never.set()
    addresses = [url.split("//", 1)[1] for url in (fake.url, guarded.url, tokens.url, refused.url, internal.url)]
    for upstream, body in bodies:
        assert upstream in body
        assert not any(address in body for address in addresses), body
    assert fake.url in caplog.text  # the log keeps where it happened


# ---------------------------------------------------------------- 5. the status page says why

async def test_status_page_shows_why_an_upstream_is_down(
        aiohttp_client: Any, tmp_path: Path, unused_tcp_port: int) -> None:
    down = FakeRegistry()
    down.url = f"http://127.0.0.1:{unused_tcp_port}"
    proxy = await start_proxy(aiohttp_client, down, tmp_path / "data")
    assert (await proxy.client.get("/v2/library/alpine/manifests/latest")).status == 503
    page = parse(await (await proxy.client.get("/")).text())
    text = page.text["upstreams"]
    row = next(row for row in page.rows["upstreams"] if row[0].startswith(proxy.upstream))
    assert row[1] == "down"
    assert "connection refused" in text.lower()
    assert "last error" in text and time.strftime("%Y-%m-%d", time.gmtime()) in text


async def test_a_dns_failure_is_recorded_as_such(make_client: MakeClient) -> None:
    client = await make_client("http://registry.invalid")  # RFC 6761: never resolves
    with pytest.raises(UpstreamUnavailable, match="DNS resolution failed"):
        await client.get_manifest("library/alpine", "latest", [])
    recorded = last_error(client.name)
    assert recorded is not None and "DNS resolution failed" in recorded.text and "registry.invalid" in recorded.text


@pytest.mark.parametrize(("realm", "sent"), [
    ("https://registry.example/token", True),          # the upstream's own origin
    ("https://auth.example/token", True),              # listed in token_hosts
    ("https://cdn.example/token", False),              # listed in redirect_hosts only
    ("https://elsewhere.example/token", False),        # any other (public) host
])
def test_credentials_go_only_to_a_realm_the_operator_named(realm: str, sent: bool) -> None:
    config = UpstreamConfig(name="up", url="https://registry.example", username="ci", password="pw",
                            token_hosts=("auth.example",), redirect_hosts=("cdn.example",))
    assert sends_credentials(config, URL(realm)) is sent
