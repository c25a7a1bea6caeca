"""pullcache.upstream against in-process fakes (tests/fault_upstream.py): auth, tokens, redirects,
verification, error mapping, timeouts and metrics. Every server binds 127.0.0.1; a URL spelled
`localhost` stands for "another host": the upstream's host is trusted by name, and localhost is not, so
its loopback address is refused unless a test lists it (token_hosts, redirect_hosts). The token servers
listen on another port of 127.0.0.1 than the registries, so clients list 127.0.0.1 in token_hosts, as an
operator would (tests/test_upstream_hostile.py covers the refusal without it)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
from aiohttp import web

from pullcache import metrics
from pullcache.config import UpstreamConfig
from pullcache.mediatypes import MANIFEST_TYPES, OCI_INDEX
from pullcache.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRealmRefused,
    Upstreams,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from pullcache.upstream.challenge import Challenge, parse_challenges
from pullcache.upstream.retry import ATTEMPTS
from tests.fault_upstream import BlobHost, FakeRegistry, Stall, TokenServer, answer, basic, redirect, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeClient = Callable[..., Awaitable[UpstreamClient]]


@pytest.fixture
def make_client(upstream_clients: MakeClient) -> MakeClient:
    """An UpstreamClient for a URL, short timeouts, token realms on 127.0.0.1 allowed."""
    return partial(upstream_clients, token_hosts=("127.0.0.1",), connect_timeout=2.0, read_timeout=2.0)


@pytest.fixture
async def tokens(aiohttp_server: Any) -> TokenServer:
    return await TokenServer().start(aiohttp_server)


@pytest.fixture
async def registry(aiohttp_server: Any, tokens: TokenServer) -> FakeRegistry:
    """A token-protected registry holding library/alpine:latest."""
    fake = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    fake.add_manifest("library/alpine", "latest", MANIFEST)
    return fake


@pytest.fixture
async def open_registry(aiohttp_server: Any) -> FakeRegistry:
    """A registry without auth holding library/alpine:latest."""
    fake = await FakeRegistry().start(aiohttp_server)
    fake.add_manifest("library/alpine", "latest", MANIFEST)
    return fake


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------- WWW-Authenticate parsing

@pytest.mark.parametrize(("header", "expected"), [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:samalba/my-app:pull,push"',
     [Challenge("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                           "scope": "repository:samalba/my-app:pull,push"})]),
    ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
    ('Basic realm="a, b", Bearer realm="https://t/token" , service=reg',
     [Challenge("basic", {"realm": "a, b"}), Challenge("bearer", {"realm": "https://t/token", "service": "reg"})]),
    ('BEARER Realm=https://t/token,Scope="x y"', [Challenge("bearer", {"realm": "https://t/token", "scope": "x y"})]),
    ('Bearer realm = "spaced" ,  service = "s"', [Challenge("bearer", {"realm": "spaced", "service": "s"})]),
    (r'Bearer realm="say \"hi\""', [Challenge("bearer", {"realm": 'say "hi"'})]),
    ('Bearer realm="unterminated, service=x', [Challenge("bearer", {"realm": "unterminated, service=x"})]),
    ('Bearer realm="first",realm="second"', [Challenge("bearer", {"realm": "first"})]),
    ("Bearer", [Challenge("bearer", {})]),
    ("", []),
    ("   ,  , ", []),
    ("=", []),
    ('realm="no scheme"', []),
    ('"quoted junk" @@ Bearer realm=x', [Challenge("bearer", {"realm": "x"})]),
    ("Negotiate abc==", [Challenge("negotiate", {"abc": "="})]),
])
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_parse_challenges_reads_several_headers_in_order() -> None:
    parsed = parse_challenges(['Basic realm="x"', 'Bearer realm="y",scope="a:b:pull c:d:pull"'])
    assert [c.scheme for c in parsed] == ["basic", "bearer"]
    assert parsed[1].scopes == ("a:b:pull", "c:d:pull")


# ---------------------------------------------------------------- bearer flow and token cache

async def test_bearer_challenge_is_answered_with_a_token_and_retried(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    client = await make_client(registry.url)
    manifest = await client.get_manifest("library/alpine", "latest", [])
    assert manifest.body == MANIFEST
    assert [s.headers.get("Authorization") for s in registry.seen] == [None, "Bearer token-1"]
    assert [(s.query["service"], s.query.getall("scope")) for s in tokens.seen] == [
        ("fake-registry", ["repository:library/alpine:pull"])]


async def test_token_is_reused_for_requests_of_the_same_scope(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    client = await make_client(registry.url)
    for _ in range(5):
        await client.get_manifest("library/alpine", "latest", [])
    assert len(tokens.seen) == 1
    assert [s.headers.get("Authorization") for s in registry.seen[2:]] == ["Bearer token-1"] * 4


async def test_concurrent_requests_share_one_token_fetch(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    client = await make_client(registry.url)
    results = await asyncio.gather(*(client.get_manifest("library/alpine", "latest", []) for _ in range(10)))
    assert {r.body for r in results} == {MANIFEST}
    assert len(tokens.seen) == 1


async def test_known_realm_gets_a_new_scope_its_token_before_the_first_request(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    registry.add_manifest("library/busybox", "latest", MANIFEST)
    client = await make_client(registry.url)
    await client.get_manifest("library/alpine", "latest", [])
    registry.seen.clear()
    await client.get_manifest("library/busybox", "latest", [])
    assert [s.headers.get("Authorization") for s in registry.seen] == ["Bearer token-2"]
    assert tokens.seen[-1].query.getall("scope") == ["repository:library/busybox:pull"]


async def test_token_is_renewed_after_it_expires(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    clock = FakeClock()
    client = await make_client(registry.url, clock=clock)  # tokens.expires_in is 300 s
    await client.get_manifest("library/alpine", "latest", [])
    clock.now += 260
    await client.get_manifest("library/alpine", "latest", [])
    assert len(tokens.seen) == 1
    clock.now += 20  # 280 s: inside the 30 s safety margin before expiry
    await client.get_manifest("library/alpine", "latest", [])
    assert len(tokens.seen) == 2
    assert registry.seen[-1].headers["Authorization"] == "Bearer token-2"


async def test_token_without_expires_in_lives_60_seconds_and_access_token_is_accepted(
        aiohttp_server: Any, make_client: MakeClient) -> None:
    tokens = await TokenServer(expires_in=None, field="access_token").start(aiohttp_server)
    registry = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    registry.add_manifest("library/alpine", "latest", MANIFEST)
    clock = FakeClock()
    client = await make_client(registry.url, clock=clock)
    await client.get_manifest("library/alpine", "latest", [])
    clock.now += 50
    await client.get_manifest("library/alpine", "latest", [])
    assert len(tokens.seen) == 1
    clock.now += 10
    await client.get_manifest("library/alpine", "latest", [])
    assert len(tokens.seen) == 2


async def test_refused_cached_token_is_replaced_and_the_request_retried(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    client = await make_client(registry.url)
    await client.get_manifest("library/alpine", "latest", [])
    tokens.revoke_all()  # the registry no longer accepts token-1
    registry.seen.clear()
    manifest = await client.get_manifest("library/alpine", "latest", [])
    assert manifest.body == MANIFEST
    assert [s.headers.get("Authorization") for s in registry.seen] == ["Bearer token-1", "Bearer token-2"]


async def test_credentials_go_to_the_token_realm_as_basic_and_not_to_the_registry(
        aiohttp_server: Any, make_client: MakeClient) -> None:
    tokens = await TokenServer(credentials=("ci", "s3cret")).start(aiohttp_server)
    registry = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    registry.add_manifest("team/app", "v1", MANIFEST)
    client = await make_client(registry.url, username="ci", password="s3cret")
    await client.get_manifest("team/app", "v1", [])
    assert [s.headers.get("Authorization") for s in tokens.seen] == [basic("ci", "s3cret")]
    assert not any(s.headers.get("Authorization", "").startswith("Basic") for s in registry.seen)


async def test_password_env_is_read_for_the_token_realm(
        aiohttp_server: Any, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULLCACHE_TEST_UPSTREAM_PW", "from-env")
    tokens = await TokenServer(credentials=("ci", "from-env")).start(aiohttp_server)
    registry = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    registry.add_manifest("team/app", "v1", MANIFEST)
    client = await make_client(registry.url, username="ci", password="in-file",
                               password_env="PULLCACHE_TEST_UPSTREAM_PW")
    assert (await client.get_manifest("team/app", "v1", [])).body == MANIFEST


async def test_wrong_credentials_at_the_realm_are_unauthorized(
        aiohttp_server: Any, make_client: MakeClient) -> None:
    tokens = await TokenServer(credentials=("ci", "s3cret")).start(aiohttp_server)
    registry = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    client = await make_client(registry.url, username="ci", password="wrong")
    with pytest.raises(UpstreamUnauthorized, match="refusing credentials of 'ci'"):
        await client.get_manifest("team/app", "v1", [])


async def test_token_without_access_is_unauthorized(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    registry.faults["/v2/team/private/manifests/v1"] = answer(
        401, {"errors": [{"code": "UNAUTHORIZED", "message": "private"}]},
        {"WWW-Authenticate": f'Bearer realm="{tokens.realm}",error="insufficient_scope"'})
    client = await make_client(registry.url)
    with pytest.raises(UpstreamUnauthorized) as caught:
        await client.get_manifest("team/private", "v1", [])
    assert caught.value.status == 401
    assert str(caught.value).startswith(f"upstream {client.name}: ")


async def test_realm_on_a_host_not_allowed_is_refused_without_contacting_it(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    registry.realm = tokens.realm.replace("127.0.0.1", "localhost")
    client = await make_client(registry.url)
    with pytest.raises(UpstreamRealmRefused, match="'localhost'.*token_hosts"):
        await client.get_manifest("library/alpine", "latest", [])
    assert tokens.seen == []


async def test_realm_on_a_host_in_token_hosts_is_used(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    registry.realm = tokens.realm.replace("127.0.0.1", "localhost")
    client = await make_client(registry.url, token_hosts=("localhost",))
    assert (await client.get_manifest("library/alpine", "latest", [])).body == MANIFEST
    assert len(tokens.seen) == 1


async def test_basic_challenge_is_answered_with_the_credentials(
        aiohttp_server: Any, make_client: MakeClient) -> None:
    registry = await FakeRegistry(credentials=("ci", "pw")).start(aiohttp_server)
    registry.add_manifest("team/app", "v1", MANIFEST)
    client = await make_client(registry.url, username="ci", password="pw")
    await client.get_manifest("team/app", "v1", [])
    await client.get_manifest("team/app", "v1", [])
    assert [s.headers.get("Authorization") for s in registry.seen] == [None, basic("ci", "pw"), basic("ci", "pw")]


async def test_basic_challenge_without_credentials_is_unauthorized(
        aiohttp_server: Any, make_client: MakeClient) -> None:
    registry = await FakeRegistry(credentials=("ci", "pw")).start(aiohttp_server)
    client = await make_client(registry.url)
    with pytest.raises(UpstreamUnauthorized, match="none are configured"):
        await client.get_manifest("team/app", "v1", [])


# ---------------------------------------------------------------- redirects

async def test_blob_redirect_to_another_host_is_followed_without_authorization(
        aiohttp_server: Any, make_client: MakeClient, registry: FakeRegistry) -> None:
    cdn = await BlobHost().start(aiohttp_server, host="localhost")
    data = b"layer bytes" * 1000
    digest = sha256(data)
    cdn.blobs[digest] = data
    registry.faults[f"/v2/library/alpine/blobs/{digest}"] = redirect(f"{cdn.url}/blobs/{digest}?sig=abc")
    client = await make_client(registry.url, redirect_hosts=("localhost",))  # a CDN on loopback must be listed
    async with client.open_blob("library/alpine", digest) as blob:
        received = b"".join([chunk async for chunk in blob.chunks()])
    assert received == data
    assert registry.seen[-1].headers["Authorization"] == "Bearer token-1"
    assert len(cdn.seen) == 1
    assert "Authorization" not in cdn.seen[0].headers
    assert cdn.seen[0].query["sig"] == "abc"


async def test_redirect_within_the_upstream_keeps_authorization(
        make_client: MakeClient, registry: FakeRegistry) -> None:
    digest = sha256(b"blob")

    async def relative_hop(request: web.Request) -> web.StreamResponse:
        if "hop" in request.query:
            return web.Response(body=b"blob")
        return await redirect(f"{request.path}?hop=1")(request)
    registry.faults[f"/v2/library/alpine/blobs/{digest}"] = relative_hop
    client = await make_client(registry.url)
    assert await client.head_blob("library/alpine", digest) == 4
    assert registry.seen[-1].query["hop"] == "1"
    assert registry.seen[-1].headers["Authorization"] == "Bearer token-1"


async def test_redirect_loop_stops_after_five_hops(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    path = "/v2/library/alpine/blobs/sha256:" + "1" * 64
    open_registry.faults[path] = redirect(path)
    client = await make_client(open_registry.url)
    with pytest.raises(UpstreamError, match="more than 5 redirects"):
        await client.head_blob("library/alpine", "sha256:" + "1" * 64)
    assert len(open_registry.seen) == 6


async def test_redirect_to_a_non_http_scheme_is_refused(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    digest = "sha256:" + "2" * 64
    open_registry.faults[f"/v2/library/alpine/blobs/{digest}"] = redirect("file:///etc/passwd")
    client = await make_client(open_registry.url)
    with pytest.raises(UpstreamError, match="not an http"):
        await client.head_blob("library/alpine", digest)


# ---------------------------------------------------------------- manifests and blobs

async def test_get_manifest_returns_bytes_type_and_sha256(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    client = await make_client(open_registry.url)
    manifest = await client.get_manifest("library/alpine", "latest", [])
    assert (manifest.body, manifest.media_type, manifest.digest) == (MANIFEST, OCI_MANIFEST, sha256(MANIFEST))


async def test_manifest_accept_is_the_callers_types_plus_every_standard_type(
        make_client: MakeClient, open_registry: FakeRegistry) -> None:
    client = await make_client(open_registry.url)
    custom = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    await client.get_manifest("library/alpine", "latest", [f"{custom}, {MANIFEST_TYPES[1]}"])
    sent = [t.strip() for t in open_registry.seen[-1].headers["Accept"].split(",")]
    assert sent[0] == custom
    assert sorted(sent) == sorted({custom, *MANIFEST_TYPES})


async def test_manifest_not_matching_docker_content_digest_is_an_error(
        make_client: MakeClient, open_registry: FakeRegistry) -> None:
    open_registry.faults["/v2/library/alpine/manifests/latest"] = answer(
        200, b'{"tampered": true}', {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(MANIFEST)})
    client = await make_client(open_registry.url)
    with pytest.raises(UpstreamError, match="not Docker-Content-Digest"):
        await client.get_manifest("library/alpine", "latest", [])


async def test_manifest_not_matching_the_requested_digest_is_an_error(
        make_client: MakeClient, open_registry: FakeRegistry) -> None:
    wanted = sha256(MANIFEST)
    open_registry.faults[f"/v2/library/alpine/manifests/{wanted}"] = answer(
        200, b'{"other": 1}', {"Content-Type": OCI_MANIFEST})
    client = await make_client(open_registry.url)
    with pytest.raises(UpstreamError, match="not the requested digest"):
        await client.get_manifest("library/alpine", wanted, [])


async def test_head_manifest_gives_digest_type_and_size_without_a_body(
        make_client: MakeClient, open_registry: FakeRegistry) -> None:
    client = await make_client(open_registry.url)
    head = await client.head_manifest("library/alpine", "latest", [])
    assert (head.digest, head.media_type, head.size) == (sha256(MANIFEST), OCI_MANIFEST, len(MANIFEST))
    assert [s.method for s in open_registry.seen] == ["HEAD"]


async def test_head_manifest_without_digest_header_falls_back_to_get(
        make_client: MakeClient, open_registry: FakeRegistry) -> None:
    open_registry.faults["/v2/library/alpine/manifests/latest"] = answer(200, MANIFEST, {"Content-Type": OCI_MANIFEST})
    client = await make_client(open_registry.url)
    head = await client.head_manifest("library/alpine", "latest", [])
    assert head.digest == sha256(MANIFEST)
    assert [s.method for s in open_registry.seen] == ["HEAD", "GET"]


async def test_head_blob_gives_its_size(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    digest = open_registry.add_blob(b"x" * 12345)
    client = await make_client(open_registry.url)
    assert await client.head_blob("library/alpine", digest) == 12345


async def test_open_blob_streams_the_bytes_with_their_size(
        make_client: MakeClient, open_registry: FakeRegistry) -> None:
    data = bytes(range(256)) * 10000
    digest = open_registry.add_blob(data)
    client = await make_client(open_registry.url)
    async with client.open_blob("library/alpine", digest) as blob:
        assert blob.size == len(data)
        assert b"".join([chunk async for chunk in blob.chunks()]) == data


# ---------------------------------------------------------------- error mapping

async def test_missing_manifest_is_not_found(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    client = await make_client(open_registry.url)
    with pytest.raises(UpstreamNotFound, match="404 MANIFEST_UNKNOWN") as caught:
        await client.get_manifest("library/alpine", "nope", [])
    assert (caught.value.upstream, caught.value.status) == (client.name, 404)


async def test_name_unknown_with_another_4xx_is_not_found(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    open_registry.faults["/v2/library/gone/manifests/latest"] = answer(
        400, {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]})
    client = await make_client(open_registry.url)
    with pytest.raises(UpstreamNotFound):
        await client.get_manifest("library/gone", "latest", [])


async def test_missing_blob_on_head_is_not_found(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    client = await make_client(open_registry.url)
    with pytest.raises(UpstreamNotFound):
        await client.head_blob("library/alpine", "sha256:" + "3" * 64)


async def test_429_is_rate_limited_with_retry_after(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    open_registry.faults["/v2/library/alpine/manifests/latest"] = answer(
        429, {"errors": [{"code": "TOOMANYREQUESTS", "message": "pull rate limit"}]}, {"Retry-After": "17"})
    client = await make_client(open_registry.url)
    with pytest.raises(UpstreamRateLimited, match="TOOMANYREQUESTS") as caught:
        await client.get_manifest("library/alpine", "latest", [])
    assert caught.value.retry_after == "17"


async def test_5xx_is_unavailable(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    open_registry.faults["/v2/library/alpine/manifests/latest"] = answer(503, b"maintenance")
    client = await make_client(open_registry.url)
    with pytest.raises(UpstreamUnavailable, match="answered 503 maintenance") as caught:
        await client.get_manifest("library/alpine", "latest", [])
    assert caught.value.status == 503
    assert not isinstance(caught.value, UpstreamTimeout)


async def test_connection_refused_is_unavailable(make_client: MakeClient, unused_tcp_port: int) -> None:
    client = await make_client(f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(UpstreamUnavailable, match="cannot connect") as caught:
        await client.get_manifest("library/alpine", "latest", [])
    assert caught.value.status is None
    # Sent again after each refusal (pullcache.upstream.retry) until the attempts ran out.
    assert sample("pullcache_upstream_requests_total", upstream=client.name, method="GET", code="error") == ATTEMPTS


async def test_stall_mid_body_is_a_timeout_after_read_timeout(
        make_client: MakeClient, open_registry: FakeRegistry) -> None:
    data = b"z" * 100_000
    digest = sha256(data)
    stall = Stall(data, after=1000)
    open_registry.faults[f"/v2/library/alpine/blobs/{digest}"] = stall
    client = await make_client(open_registry.url, read_timeout=0.3)
    received = 0
    try:
        async with client.open_blob("library/alpine", digest) as blob:
            with pytest.raises(UpstreamTimeout, match="nothing received for 0.3s"):
                async for chunk in blob.chunks():
                    received += len(chunk)
                    if received == 1000:
                        await stall.sent.wait()
                        started = time.monotonic()
        elapsed = time.monotonic() - started
    finally:
        stall.release.set()
    assert received == 1000
    assert 0.25 <= elapsed < 1.5


async def test_no_answer_at_all_is_a_timeout(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    never = asyncio.Event()

    async def silent(request: Any) -> Any:
        await never.wait()
    open_registry.faults["/v2/library/alpine/manifests/latest"] = silent
    client = await make_client(open_registry.url, read_timeout=0.3)
    try:
        with pytest.raises(UpstreamTimeout):
            await client.get_manifest("library/alpine", "latest", [])
    finally:
        never.set()


# ---------------------------------------------------------------- metrics

async def test_requests_are_counted_per_method_and_code(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    client = await make_client(open_registry.url)
    await client.get_manifest("library/alpine", "latest", [])
    await client.head_manifest("library/alpine", "latest", [])
    with pytest.raises(UpstreamNotFound):
        await client.get_manifest("library/alpine", "missing", [])
    counts = {(method, code): sample("pullcache_upstream_requests_total", upstream=client.name, method=method,
                                     code=code)
              for method, code in [("GET", "200"), ("HEAD", "200"), ("GET", "404")]}
    assert counts == {("GET", "200"): 1, ("HEAD", "200"): 1, ("GET", "404"): 1}
    assert sample("pullcache_upstream_request_duration_seconds_count", upstream=client.name) == 3


async def test_auth_round_trips_are_counted_too(
        make_client: MakeClient, registry: FakeRegistry, tokens: TokenServer) -> None:
    client = await make_client(registry.url)
    await client.get_manifest("library/alpine", "latest", [])
    assert sample("pullcache_upstream_requests_total", upstream=client.name, method="GET", code="401") == 1
    assert sample("pullcache_upstream_requests_total", upstream=client.name, method="GET", code="200") == 2


async def test_ratelimit_remaining_is_recorded(make_client: MakeClient, open_registry: FakeRegistry) -> None:
    open_registry.extra_headers["ratelimit-remaining"] = "76;w=21600"
    client = await make_client(open_registry.url)
    await client.head_manifest("library/alpine", "latest", [])
    assert sample("pullcache_upstream_ratelimit_remaining", upstream=client.name) == 76


# ---------------------------------------------------------------- the pool

async def test_upstreams_are_found_by_name_alias_and_default() -> None:
    upstreams = Upstreams([
        UpstreamConfig(name="docker.io", url="https://registry-1.docker.io", default=True,
                       aliases=("registry-1.docker.io",)),
        UpstreamConfig(name="ghcr.io", url="https://ghcr.io"),
    ])
    await upstreams.start()
    try:
        hub = upstreams.by_name("docker.io")
        assert hub is not None and hub.name == "docker.io"
        assert upstreams.by_ns("Registry-1.Docker.io") is hub
        assert upstreams.by_ns("ghcr.io") is upstreams.by_name("ghcr.io")
        assert upstreams.default is hub
        assert upstreams.by_name("quay.io") is None and upstreams.by_ns("quay.io") is None
    finally:
        await upstreams.close()


# ---------------------------------------------------------------- referrers

async def test_referrers_are_read_from_the_referrers_api_behind_a_token(
        make_client: MakeClient, registry: FakeRegistry) -> None:
    subject = sha256(MANIFEST)
    listed = [{"mediaType": OCI_MANIFEST, "digest": sha256(b"sbom"), "size": 4, "artifactType": "x/sbom"}]
    registry.referrers = {("library/alpine", subject): listed}
    client = await make_client(registry.url)
    assert await client.get_referrers("library/alpine", subject) == listed


async def test_a_sha512_subject_falls_back_to_the_tag_schema_with_64_characters_of_its_digest(
        make_client: MakeClient, open_registry: FakeRegistry) -> None:
    subject = "sha512:" + hashlib.sha512(MANIFEST).hexdigest()
    listed = [{"mediaType": OCI_MANIFEST, "digest": sha256(b"sig"), "size": 3}]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}).encode()
    open_registry.add_manifest("library/alpine", "sha512-" + subject[len("sha512:"):][:64], index, OCI_INDEX)
    client = await make_client(open_registry.url)
    assert await client.get_referrers("library/alpine", subject) == listed


async def test_a_tag_schema_tag_that_is_not_an_image_index_means_no_referrers(
        make_client: MakeClient, open_registry: FakeRegistry) -> None:
    subject = sha256(MANIFEST)
    open_registry.add_manifest("library/alpine", subject.replace(":", "-"), MANIFEST, OCI_MANIFEST)
    client = await make_client(open_registry.url)
    assert await client.get_referrers("library/alpine", subject) == []
