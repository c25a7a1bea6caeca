"""A pushed bare name hides the default upstream's image of that name: the push is logged as a warning.

The upstream is the seeded Distribution, which serves `team/app:v1`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pullcache.api.appkeys import SHADOW_WARNINGS
from pullcache.app import build_app
from pullcache.config import build_config
from tests.registry_api import push_image
from tests.support.pullcache_proc import docker_hub_upstream
from tests.support.seed import Upstream


@pytest.fixture
async def mirror(aiohttp_client: Any, upstream: Upstream, tmp_path: Path) -> Any:
    config = build_config({"storage": {"path": str(tmp_path / "data")},
                           "upstreams": [docker_hub_upstream(upstream.url)],
                           "local": {"anonymous_push": True}})
    return await aiohttp_client(build_app(config))


def shadow_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "hides" in r.getMessage()]


async def test_a_push_hiding_an_upstream_image_is_warned(mirror: Any, caplog: pytest.LogCaptureFixture) -> None:
    await push_image(mirror, "team/app", "v1")
    await mirror.app[SHADOW_WARNINGS].settled()
    [warning] = shadow_warnings(caplog)
    assert "team/app:v1" in warning and "docker.io" in warning


async def test_a_push_of_a_name_the_upstream_does_not_serve_is_not_warned(
        mirror: Any, caplog: pytest.LogCaptureFixture) -> None:
    await push_image(mirror, "team/only-here", "v1")
    await mirror.app[SHADOW_WARNINGS].settled()
    assert shadow_warnings(caplog) == []


async def test_only_a_repositorys_first_tag_is_checked(mirror: Any, caplog: pytest.LogCaptureFixture) -> None:
    await push_image(mirror, "team/app", "v1")
    await push_image(mirror, "team/app", "v1")
    await mirror.app[SHADOW_WARNINGS].settled()
    assert len(shadow_warnings(caplog)) == 1
