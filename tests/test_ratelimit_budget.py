"""The rate-limit budget: once an upstream's `ratelimit-remaining` (on its manifest or token answers) drops
below `ratelimit_reserve`, expired cached tags are served without revalidation (counted stale) while misses
still go upstream; entering and leaving the mode is logged once each and shown on the status page."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pullcache.config import UpstreamConfig, build_config
from pullcache.upstream import UpstreamClient, pool
from tests.fault_upstream import FakeRegistry, TokenServer
from tests.support_faults import Proxy, start_proxy

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                                  "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
                       "layers": []}).encode()


def quota(remaining: int, limit: int = 100) -> dict[str, str]:
    return {"ratelimit-limit": f"{limit};w=21600", "ratelimit-remaining": f"{remaining};w=21600"}


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeRegistry:
    fake = await FakeRegistry().start(aiohttp_server)
    for tag in ("a", "b", "c"):
        fake.add_manifest("team/app", tag, MANIFEST)
    return fake


async def pull(proxy: Proxy, tag: str) -> int:
    async with proxy.client.get(f"/v2/team/app/manifests/{tag}") as response:
        await response.read()
        return response.status


def manifest_requests(proxy: Proxy, tag: str) -> int:
    return sum(1 for seen in proxy.fake.seen if seen.path == f"/v2/team/app/manifests/{tag}")


async def status_page(proxy: Proxy) -> str:
    async with proxy.client.get("/") as response:
        return await response.text()


async def test_below_the_reserve_expired_tags_are_served_stale_and_misses_still_go_upstream(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    proxy = await start_proxy(aiohttp_client, fake, tmp_path / "data", manifest_ttl="0s")
    fake.extra_headers = quota(50)
    assert await pull(proxy, "a") == 200
    fake.extra_headers = quota(9)  # below 10% of 100: the next answer puts pullcache in saving mode
    with caplog.at_level(logging.WARNING, logger="pullcache.upstream"):
        assert await pull(proxy, "b") == 200  # a miss: goes upstream, and its answer reports the quota
        asked = manifest_requests(proxy, "a")
        assert await pull(proxy, "a") == 200  # expired, but not revalidated
        assert await pull(proxy, "a") == 200
        assert manifest_requests(proxy, "a") == asked
        assert proxy.count("manifest", "stale") == 2
        assert "saving its rate limit" in await status_page(proxy)

        fake.extra_headers = quota(60)
        assert await pull(proxy, "c") == 200  # a miss still goes upstream, and says the quota is back
        assert await pull(proxy, "a") == 200
        assert manifest_requests(proxy, "a") == asked + 1  # revalidated again
    entering = [r for r in caplog.records if "below the reserve" in r.getMessage()]
    leaving = [r for r in caplog.records if "above the reserve again" in r.getMessage()]
    assert (len(entering), len(leaving)) == (1, 1)
    assert "saving its rate limit" not in await status_page(proxy)


async def test_in_saving_mode_one_revalidation_a_minute_lets_a_fresh_quota_end_it(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]  # the upstream client's clock, which paces revalidations in saving mode

    def client(config: UpstreamConfig) -> UpstreamClient:
        return UpstreamClient(config, clock=lambda: now[0])

    monkeypatch.setattr(pool, "UpstreamClient", client)
    proxy = await start_proxy(aiohttp_client, fake, tmp_path / "data", manifest_ttl="0s")
    fake.extra_headers = quota(9)
    assert await pull(proxy, "a") == 200  # a miss, whose answer puts pullcache in saving mode
    fake.extra_headers = quota(60)  # the quota is back, but only cached tags are pulled from now on
    asked = manifest_requests(proxy, "a")
    assert await pull(proxy, "a") == 200
    assert manifest_requests(proxy, "a") == asked  # saving: served stale
    now[0] += 61
    assert await pull(proxy, "a") == 200
    assert manifest_requests(proxy, "a") == asked + 1  # one revalidation a minute, whose answer ends the mode
    assert "saving its rate limit" not in await status_page(proxy)
    assert await pull(proxy, "a") == 200
    assert manifest_requests(proxy, "a") == asked + 2  # revalidated every time again


async def test_a_token_answer_reporting_the_quota_counts_too_and_a_number_of_pulls_is_a_reserve(
        aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> None:
    tokens = await TokenServer().start(aiohttp_server)
    registry = await FakeRegistry(tokens=tokens).start(aiohttp_server)
    registry.add_manifest("team/app", "a", MANIFEST)
    proxy = await start_proxy(aiohttp_client, registry, tmp_path / "data", manifest_ttl="0s",
                              token_hosts=["127.0.0.1"], ratelimit_reserve=20)
    assert await pull(proxy, "a") == 200
    original = tokens.handle

    async def with_quota(request: Any) -> Any:
        response = await original(request)
        response.headers.update({"ratelimit-remaining": "19;w=21600"})  # no limit header: the reserve is a count
        return response
    tokens.handle = with_quota  # type: ignore[method-assign]
    tokens.revoke_all()  # the next request needs a new token, whose answer reports the quota
    asked = manifest_requests(proxy, "a")
    assert await pull(proxy, "a") == 200  # revalidated: its 401 asks for a token, which says 19 are left
    assert await pull(proxy, "a") == 200  # now below the reserve of 20: served as it is
    assert manifest_requests(proxy, "a") == asked + 2  # the HEAD refused for the token, then its retry
    assert proxy.count("manifest", "stale") == 1


@pytest.mark.parametrize("value, expected", [("10%", 0.1), (0.25, 0.25), (20, 20.0)])
def test_ratelimit_reserve_is_a_share_of_the_limit_or_a_number_of_pulls(value: Any, expected: float) -> None:
    config = build_config({"upstreams": [{"name": "hub", "url": "https://r.example", "ratelimit_reserve": value}]})
    assert config.upstreams[0].ratelimit_reserve == expected


def test_a_bad_ratelimit_reserve_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"upstreams\[0\]\.ratelimit_reserve: 'lots' is not a reserve"):
        build_config({"upstreams": [{"name": "hub", "url": "https://r.example", "ratelimit_reserve": "lots"}]})
