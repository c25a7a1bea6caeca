"""The resolver remembers whether a bare name is a local repository (resolver.LocalCheck), and still routes a
name to its new local repository at once after a push here, and within LOCAL_CHECK_SECONDS after a push
through another process on the same store.

The upstream is the seeded Distribution, whose `team/app:v1` a local `team/app` hides.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from pullcache.app import build_app
from pullcache.cache.index import PUSHED
from pullcache.config import build_config
from pullcache.resolver import LOCAL_CHECK_SECONDS
from tests.registry_api import OCI_MANIFEST, image_manifest, push_image
from tests.support.images import MANIFEST_TYPES
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.seed import Upstream

TAG = "/v2/team/app/manifests/v1"
ACCEPT = {"Accept": ", ".join(MANIFEST_TYPES)}


async def test_a_pushed_bare_name_is_served_locally_by_the_next_pull(
        aiohttp_client: Any, upstream: Upstream, tmp_path: Path) -> None:
    config = build_config({"storage": {"path": str(tmp_path / "data")},
                           "upstreams": [docker_hub_upstream(upstream.url)],
                           "local": {"anonymous_push": True}})
    mirror = await aiohttp_client(build_app(config))
    before = await mirror.get(TAG, headers=ACCEPT)
    assert before.status == 200
    assert before.headers["Docker-Content-Digest"] == upstream["team/app:v1"].digest  # the default upstream's

    pushed = await push_image(mirror, "team/app", "v1", media_type=OCI_MANIFEST)

    after = await mirror.get(TAG, headers=ACCEPT)
    assert after.status == 200
    assert after.headers["Docker-Content-Digest"] == pushed.digest


async def _digest(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, headers=ACCEPT) as response:
        assert response.status == 200, await response.text()
        return response.headers["Docker-Content-Digest"]


async def test_a_repository_another_process_creates_is_served_within_the_check_interval(
        pullcache_factory: Any, upstream: Upstream) -> None:
    server: PullcacheProcess = pullcache_factory()
    upstream_digest = upstream["team/app:v1"].digest
    async with aiohttp.ClientSession() as session:
        assert await _digest(session, server.url + TAG) == upstream_digest  # absent locally: remembered as such

        async with server.store() as store:  # another process on the same store: pushes team/app:v1
            manifest = image_manifest(b"{}", [b"layer"])
            digest = await store.put_small(manifest, origin=PUSHED)
            repo = store.repository("team/app")
            await repo.link_manifest(digest, OCI_MANIFEST)
            await repo.set_tag("v1", digest)
        created = time.monotonic()

        while (served := await _digest(session, server.url + TAG)) == upstream_digest:
            assert time.monotonic() - created < LOCAL_CHECK_SECONDS + 5, "the new local repository was not seen"
            await asyncio.sleep(0.05)
        assert served == str(digest)
        # Bounded by the check interval, plus this loaded machine's scheduling.
        assert time.monotonic() - created < LOCAL_CHECK_SECONDS + 1
