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
from tests.registry_api import OCI_MANIFEST, push_image
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


ALPINE = "/v2/library/alpine/manifests/latest"  # a bare name: the default upstream's library/alpine


@pytest.fixture
def proxy_config(tmp_path: Path, upstream: Upstream) -> Config:
    return build_config({"storage": {"path": str(tmp_path / "data")}, "local": {"anonymous_push": True},
                         "upstreams": [docker_hub_upstream(upstream.url)]})


async def pull(client: TestClient, path: str, headers: dict[str, str] | None = None,
               method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    # A HEAD answer given to a GET promises a body that never comes: fail, not hang.
    response = await client.request(method, path, headers=headers or PROXIED_ACCEPT, timeout=ClientTimeout(total=10))
    return response.status, await response.read(), dict(response.headers)


async def hot(client: TestClient, path: str, headers: dict[str, str] | None = None) -> bytes:
    """Pull `path` until its answer is kept (the first pull fetches it; the cache answers the second)."""
    for _ in range(2):
        status, body, _ = await pull(client, path, headers)
        assert status == 200, body
    assert len(client.app[HOT_ANSWERS]) == 1
    return body


def test_a_kept_answer_is_used_until_it_expires() -> None:
    clock = Clock()
    answers = HotAnswers(True, clock)
    replay = object()
    answers.keep(("GET", ALPINE, (), None), replay, REUSE_SECONDS)  # type: ignore[arg-type]
    clock.now += REUSE_SECONDS * 0.9
    assert answers.get(("GET", ALPINE, (), None), 0) is replay
    clock.now += REUSE_SECONDS * 0.2
    assert answers.get(("GET", ALPINE, (), None), 0) is None


def test_kept_answers_go_once_the_store_learns_of_new_local_repositories() -> None:
    """Another replica created a repository: a kept answer for that bare name was the default upstream's."""
    answers = HotAnswers(True, Clock())
    answers.keep(("GET", ALPINE, (), None), object(), REUSE_SECONDS)  # type: ignore[arg-type]
    assert answers.get(("GET", ALPINE, (), None), 1) is None


async def test_a_push_hiding_a_hot_upstream_tag_is_served_at_once(
        aiohttp_client: Any, proxy_config: Config, upstream: Upstream) -> None:
    client = await aiohttp_client(build_app(proxy_config))
    await hot(client, "/v2/team/app/manifests/v1")  # the default upstream's team/app
    pushed = await push_image(client, "team/app", "v1", media_type=OCI_MANIFEST)
    status, body, headers = await pull(client, "/v2/team/app/manifests/v1")
    assert (status, body, headers["Docker-Content-Digest"]) == (200, pushed.manifest, pushed.digest)


async def test_a_local_tag_another_process_moves_is_read_new_at_once(aiohttp_client: Any, tmp_path: Path) -> None:
    """A local repository's answer is never kept: a worker or replica beside this one may retag it."""
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "local": {"anonymous_push": True}})
    here, elsewhere = await aiohttp_client(build_app(config)), await aiohttp_client(build_app(config))
    first = await push_image(elsewhere, "team/app", seed="a")
    for _ in range(2):
        assert (await pull(here, "/v2/team/app/manifests/v1", ACCEPT))[1] == first.manifest
    second = await push_image(elsewhere, "team/app", seed="b")
    status, body, headers = await pull(here, "/v2/team/app/manifests/v1", ACCEPT)
    assert (status, body, headers["Docker-Content-Digest"]) == (200, second.manifest, second.digest)


async def test_a_head_answer_is_never_given_to_a_get(aiohttp_client: Any, proxy_config: Config) -> None:
    client = await aiohttp_client(build_app(proxy_config))
    manifest = await hot(client, ALPINE)
    for _ in range(2):
        head = await pull(client, ALPINE, method="HEAD")
        assert head[:2] == (200, b"") and head[2]["Content-Length"] == str(len(manifest))
        status, body, headers = await pull(client, ALPINE)
        assert (status, body, headers["Content-Length"]) == (200, manifest, str(len(manifest)))


async def test_a_reused_answer_is_the_same_response(aiohttp_client: Any, proxy_config: Config) -> None:
    client = await aiohttp_client(build_app(proxy_config))
    await hot(client, ALPINE)
    for method in ("GET", "HEAD"):
        built = await pull(client, ALPINE, method=method)
        reused = await pull(client, ALPINE, method=method)
        assert built[0] == reused[0] and built[1] == reused[1]
        assert {k: v for k, v in built[2].items() if k != "Date"} == {k: v for k, v in reused[2].items() if k != "Date"}


ALICE_ONLY = [{"repos": ["docker.io/**"], "pull": ["alice"]}]


async def test_another_authorization_never_gets_a_token_holders_answer(
        aiohttp_client: Any, tmp_path: Path, upstream: Upstream) -> None:
    """The upstream's images are alice's alone here: her answer, reused, reaches no one else."""
    config = access_config(tmp_path, rules=ALICE_ONLY, upstreams=[docker_hub_upstream(upstream.url)])
    client = await aiohttp_client(build_app(config))
    scope = "repository:library/alpine:pull"
    alice = {**PROXIED_ACCEPT, "Authorization": f"Bearer {await token(client, scope, basic('alice'))}"}
    manifest = await hot(client, ALPINE, alice)
    assert (await pull(client, ALPINE, alice))[:2] == (200, manifest)
    bob_token = {**PROXIED_ACCEPT, "Authorization": f"Bearer {await token(client, scope, basic('bob'))}"}
    assert (await pull(client, ALPINE, bob_token))[0] == 403
    assert (await pull(client, ALPINE, {**PROXIED_ACCEPT, **basic("bob")}))[0] == 403
    assert (await pull(client, ALPINE))[0] == 401
    forged = {**PROXIED_ACCEPT, "Authorization": alice["Authorization"][:-2] + "xx"}
    assert (await pull(client, ALPINE, forged))[0] == 401


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


async def test_an_answer_is_not_kept_past_the_tokens_expiry(
        aiohttp_client: Any, tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    # A token shorter-lived than a copy may be: long enough for the pulls on a loaded machine.
    monkeypatch.setattr("pullcache.api.hot.REUSE_SECONDS", 60.0)
    monkeypatch.setattr("pullcache.api.bearer.TOKEN_SECONDS", 5)
    config = access_config(tmp_path, rules=ALICE_ONLY, upstreams=[docker_hub_upstream(upstream.url)])
    clock = Clock()
    client = await aiohttp_client(with_clock(build_app(config), clock))
    bearer = await token(client, "repository:library/alpine:pull", basic("alice"))
    before = time.time()
    await hot(client, ALPINE, {**PROXIED_ACCEPT, "Authorization": f"Bearer {bearer}"})
    ((until, _),) = client.app[HOT_ANSWERS]._kept.values()  # the copy's end, on its clock
    assert until - clock.now <= claims(bearer)["exp"] - before < 60.0
