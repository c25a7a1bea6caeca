"""Hot manifest answers (api/hot.py): a manifest GET or HEAD answered from the cache moments ago is answered
again from a copy, and nothing a client or an operator sees tells the two apart; writes, time, credentials
and the method each keep a copy from being reused where it must not be."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientTimeout, web
from aiohttp.test_utils import TestClient

from pullcache.api.hot import HOT_ANSWERS, REUSE_SECONDS, HotAnswers
from pullcache.app import build_app
from pullcache.config import Config, build_config
from pullcache.metrics import REGISTRY
from tests.registry_api import OCI_MANIFEST, SignedIn, push_image
from tests.support.pullcache_proc import docker_hub_upstream
from tests.support.seed import Upstream
from tests.test_access_rules import access_config, basic, claims, token

pytest_plugins = ["tests.registry_api"]

ACCEPT = {"Accept": OCI_MANIFEST}
PROXIED_ACCEPT = {"Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
                            "application/vnd.docker.distribution.manifest.v2+json, "
                            "application/vnd.docker.distribution.manifest.list.v2+json"}


class Clock:
    """The hot answers' clock, moved by the test: expiry without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_clock(app: web.Application, clock: Clock) -> web.Application:
    app[HOT_ANSWERS] = HotAnswers(app[HOT_ANSWERS].enabled, clock)
    return app


@pytest.fixture
def local_config(tmp_path: Path) -> Config:
    return build_config({"storage": {"path": str(tmp_path / "data")}, "local": {"anonymous_push": True}})


async def pull(client: TestClient, path: str, headers: dict[str, str] | None = None,
               method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    # A HEAD answer given to a GET promises a body that never comes: fail, not hang.
    response = await client.request(method, path, headers=headers or ACCEPT, timeout=ClientTimeout(total=10))
    return response.status, await response.read(), dict(response.headers)


async def test_a_hot_tag_pushed_again_is_served_new_at_once(aiohttp_client: Any, local_config: Config) -> None:
    client = await aiohttp_client(build_app(local_config))
    first = await push_image(client, "team/app", seed="a")
    for _ in range(3):
        assert (await pull(client, "/v2/team/app/manifests/v1"))[1] == first.manifest
    second = await push_image(client, "team/app", seed="b")
    status, body, headers = await pull(client, "/v2/team/app/manifests/v1")
    assert (status, body, headers["Docker-Content-Digest"]) == (200, second.manifest, second.digest)


async def test_a_deleted_hot_tag_is_gone_at_once(aiohttp_client: Any, local_config: Config) -> None:
    client = await aiohttp_client(build_app(local_config))
    await push_image(client, "team/app")
    assert (await pull(client, "/v2/team/app/manifests/v1"))[0] == 200
    assert (await client.delete("/v2/team/app/manifests/v1")).status == 202
    assert (await pull(client, "/v2/team/app/manifests/v1"))[0] == 404


async def test_a_kept_answer_is_reused_until_it_expires_then_rebuilt(aiohttp_client: Any, local_config: Config) -> None:
    """Another process (a second app on the same store) moves the tag: this one answers from its copy until
    REUSE_SECONDS passed, then from the store."""
    clock = Clock()
    here = await aiohttp_client(with_clock(build_app(local_config), clock))
    elsewhere = await aiohttp_client(build_app(local_config))
    first = await push_image(elsewhere, "team/app", seed="a")
    assert (await pull(here, "/v2/team/app/manifests/v1"))[1] == first.manifest
    second = await push_image(elsewhere, "team/app", seed="b")
    clock.now += REUSE_SECONDS * 0.9
    assert (await pull(here, "/v2/team/app/manifests/v1"))[1] == first.manifest  # the copy
    clock.now += REUSE_SECONDS * 0.2
    status, body, headers = await pull(here, "/v2/team/app/manifests/v1")
    assert (status, body, headers["Docker-Content-Digest"]) == (200, second.manifest, second.digest)


async def test_a_head_answer_is_never_given_to_a_get(aiohttp_client: Any, local_config: Config) -> None:
    client = await aiohttp_client(build_app(local_config))
    image = await push_image(client, "team/app")
    head = await pull(client, "/v2/team/app/manifests/v1", method="HEAD")
    assert head[:2] == (200, b"") and head[2]["Content-Length"] == str(len(image.manifest))
    for _ in range(2):
        status, body, headers = await pull(client, "/v2/team/app/manifests/v1")
        assert (status, body, headers["Content-Length"]) == (200, image.manifest, str(len(image.manifest)))
        head = await pull(client, "/v2/team/app/manifests/v1", method="HEAD")
        assert head[:2] == (200, b"") and head[2]["Content-Length"] == str(len(image.manifest))


async def test_a_reused_answer_is_the_same_response(aiohttp_client: Any, local_config: Config) -> None:
    client = await aiohttp_client(build_app(local_config))
    await push_image(client, "team/app")
    for method in ("GET", "HEAD"):
        built = await pull(client, "/v2/team/app/manifests/v1", method=method)
        reused = await pull(client, "/v2/team/app/manifests/v1", method=method)
        assert built[0] == reused[0] and built[1] == reused[1]
        assert {k: v for k, v in built[2].items() if k != "Date"} == {k: v for k, v in reused[2].items() if k != "Date"}


async def test_another_authorization_never_gets_a_token_holders_answer(aiohttp_client: Any, tmp_path: Path) -> None:
    """team-a/secret is alice's alone (tests/test_access_rules.py RULES): her answer, reused, reaches no one else."""
    client = await aiohttp_client(build_app(access_config(tmp_path)))
    image = await push_image(SignedIn(client, basic("alice")), "team-a/secret/app")
    scope = "repository:team-a/secret/app:pull"
    alice = {**ACCEPT, "Authorization": f"Bearer {await token(client, scope, basic('alice'))}"}
    for _ in range(2):
        assert (await pull(client, "/v2/team-a/secret/app/manifests/v1", alice))[:2] == (200, image.manifest)
    bob_token = {**ACCEPT, "Authorization": f"Bearer {await token(client, scope, basic('bob'))}"}
    assert (await pull(client, "/v2/team-a/secret/app/manifests/v1", bob_token))[0] == 403
    assert (await pull(client, "/v2/team-a/secret/app/manifests/v1", {**ACCEPT, **basic("bob")}))[0] == 403
    assert (await pull(client, "/v2/team-a/secret/app/manifests/v1"))[0] == 401
    forged = {**ACCEPT, "Authorization": alice["Authorization"][:-2] + "xx"}
    assert (await pull(client, "/v2/team-a/secret/app/manifests/v1", forged))[0] == 401


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_every_reused_answer_is_counted_and_logged(
        aiohttp_client: Any, tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    config = build_config({"storage": {"path": str(tmp_path / "data")},
                           "upstreams": [docker_hub_upstream(upstream.url)]})
    client = await aiohttp_client(build_app(config))
    path = "/v2/library/alpine/manifests/latest"
    assert (await pull(client, path, PROXIED_ACCEPT))[0] == 200  # fetched and cached: the next ones are hits
    requests = {"method": "GET", "route": "manifest", "code": "200"}
    hits = {"kind": "manifest", "upstream": "docker.io", "result": "hit"}
    served = {"source": "cache"}
    before = [_sample("pullcache_http_requests_total", requests), _sample("pullcache_cache_requests_total", hits),
              _sample("pullcache_bytes_served_total", served),
              _sample("pullcache_http_request_duration_seconds_count", {"route": "manifest"})]
    caplog.set_level(logging.INFO, logger="pullcache.access")
    n, size = 25, 0
    for _ in range(n):
        status, body, _headers = await pull(client, path, PROXIED_ACCEPT)
        assert status == 200
        size = len(body)
    after = [_sample("pullcache_http_requests_total", requests), _sample("pullcache_cache_requests_total", hits),
             _sample("pullcache_bytes_served_total", served),
             _sample("pullcache_http_request_duration_seconds_count", {"route": "manifest"})]
    assert [a - b for a, b in zip(after, before, strict=True)] == [n, n, n * size, n]
    lines = [r for r in caplog.records if r.name == "pullcache.access" and r.path == path]
    assert len(lines) == n
    assert {(r.status, r.cache, r.upstream, r.bytes, r.route) for r in lines} == {
        (200, "hit", "docker.io", size, "manifest")}


async def test_an_answer_is_not_reused_past_the_tokens_expiry(
        aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token that expires within REUSE_SECONDS ends its copy then; another process's push shows it."""
    monkeypatch.setattr("pullcache.api.bearer.TOKEN_SECONDS", 1)  # exp: the next whole second
    config, clock = access_config(tmp_path), Clock()
    here = await aiohttp_client(with_clock(build_app(config), clock))
    elsewhere = SignedIn(await aiohttp_client(build_app(config)), basic("alice"))
    first = await push_image(elsewhere, "team-a/secret/app", seed="a")
    bearer = await token(here, "repository:team-a/secret/app:pull", basic("alice"))
    alice = {**ACCEPT, "Authorization": f"Bearer {bearer}"}
    assert (await pull(here, "/v2/team-a/secret/app/manifests/v1", alice))[:2] == (200, first.manifest)
    left = claims(bearer)["exp"] - time.time()  # at most what the copy was given
    await push_image(elsewhere, "team-a/secret/app", seed="b")
    clock.now += left + 0.01
    status, body, _headers = await pull(here, "/v2/team-a/secret/app/manifests/v1", alice)
    assert (status, body) != (200, first.manifest)  # the new manifest, or 401 once the token is past
