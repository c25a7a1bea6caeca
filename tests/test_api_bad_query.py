"""Query parameters a client gets wrong are a 400 with the spec's error body, never a 500."""
from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pullcache.config import Config, build_config
from tests.registry_api import error_code, push_image

pytest_plugins = ["tests.registry_api"]


@pytest.fixture
def registry_config(storage: dict[str, Any]) -> Config:
    return build_config({"storage": storage, "local": {"anonymous_push": True}})


@pytest.mark.parametrize("path", ["/v2/team/app/tags/list", "/v2/_catalog"])
@pytest.mark.parametrize("n", ["\u00b2", "\u0663", "\uff11", "1\u00b9"])  # digits to str.isdigit, not to int() or ASCII
async def test_n_of_non_ascii_digits_is_400(registry: TestClient, path: str, n: str) -> None:
    await push_image(registry, "team/app")
    response = await registry.get(path, params={"n": n})
    assert response.status == 400, await response.text()
    assert await error_code(response) == "UNSUPPORTED"


async def test_a_huge_n_is_every_tag(registry: TestClient) -> None:
    await push_image(registry, "team/app")
    response = await registry.get("/v2/team/app/tags/list", params={"n": "9" * 40})
    assert (response.status, (await response.json())["tags"]) == (200, ["v1"])
