"""Upstream 404s for blobs are remembered for not_found_ttl, per upstream repository."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.fault_upstream import FakeRegistry, sha256
from tests.support_faults import Proxy, blob_path, start_proxy

MISSING = sha256(os.urandom(64))


async def missing(proxy: Proxy, repository: str = "team/app") -> None:
    async with proxy.client.get(blob_path(MISSING, repository)) as response:
        assert response.status == 404
        assert json.loads(await response.read())["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_a_missing_blob_is_blob_unknown_and_remembered(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await start_proxy(aiohttp_client, fake, tmp_path / "data", not_found_ttl="1h")
    for _ in range(5):
        await missing(proxy)
    assert proxy.upstream_requests("GET", MISSING) == 1


async def test_a_missing_blob_is_asked_for_again_in_another_repository(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await start_proxy(aiohttp_client, fake, tmp_path / "data", not_found_ttl="1h")
    await missing(proxy, "team/app")
    await missing(proxy, "team/other")
    await missing(proxy, "team/other")
    assert proxy.upstream_requests("GET", MISSING) == 2

