"""/healthz says the process answers; /readyz says the store takes writes and the index answers, or why not."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pullcache.api.appkeys import STORE
from pullcache.app import build_app
from pullcache.config import build_config


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    return await aiohttp_client(build_app(build_config({"storage": {"path": str(tmp_path / "data")}})))


def tmp_dir(client: TestClient) -> Path:
    """Where the store writes its temp files (blobs in flight, and the readiness probe's file)."""
    return client.app[STORE].layout.tmp


async def test_healthz_answers_while_the_process_runs(client: TestClient) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_ready_with_writable_storage_and_open_index(client: TestClient) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "checks": {"storage": "ok", "index": "ok", "backend": "ok"},
                                     "coordination": "ok"}


async def test_readyz_leaves_no_probe_file_behind(client: TestClient) -> None:
    before = set(tmp_dir(client).iterdir())
    for _ in range(3):
        assert (await client.get("/readyz")).status == 200
    assert set(tmp_dir(client).iterdir()) == before


async def test_readyz_is_503_naming_storage_when_it_cannot_write(client: TestClient) -> None:
    tmp = tmp_dir(client)
    shutil.rmtree(tmp)
    tmp.write_text("a file where the temp directory should be")  # root ignores permissions; this fails for all
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["index"] == "ok"
    assert body["checks"]["storage"].startswith("storage not writable: ")
    assert str(tmp) in body["checks"]["storage"]
    assert body["reason"] == body["checks"]["storage"]
    assert (await client.get("/healthz")).status == 200  # alive, only not ready


async def test_readyz_is_503_naming_the_index_when_it_is_not_open(client: TestClient) -> None:
    index = client.app[STORE].index
    connection, index._db = index._db, None  # the index's state before open() and after close()
    try:
        response = await client.get("/readyz")
    finally:
        index._db = connection  # the app's shutdown writes to the index
    assert response.status == 503
    body = await response.json()
    assert body["checks"]["storage"] == "ok"
    assert body["checks"]["index"].startswith("index not open: ")
    assert body["reason"] == body["checks"]["index"]


async def test_probes_answer_head_too(client: TestClient) -> None:
    for path in ("/healthz", "/readyz"):
        response = await client.head(path)
        assert response.status == 200, path

