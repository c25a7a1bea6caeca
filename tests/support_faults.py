"""Pull-through test kit: pullcache in-process in front of tests/fault_upstream.FakeRegistry, plus the
upstream misbehaviours the pull-through path must survive (truncation, wrong bytes, gated bodies,
requests that hang), and readers of what ended up on disk and in the metrics.
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from aiohttp import web
from aiohttp.test_utils import TestClient

from pullcache import metrics
from pullcache.api.appkeys import STORE
from pullcache.app import build_app
from pullcache.config import build_config
from tests.fault_upstream import FakeRegistry, Handler

ClientFactory = Callable[..., Awaitable[TestClient]]  # pytest-aiohttp's aiohttp_client


@dataclass
class Proxy:
    """pullcache serving one upstream (the default, under a name unique to the test) from `fake`."""

    client: TestClient
    fake: FakeRegistry
    upstream: str
    data_dir: Path

    def cached(self, digest: str) -> bytes | None:
        """The committed blob's bytes as the Store holds them (not its manifest cache), or None."""
        return self.client.app[STORE].read_blob_blocking(digest)

    def temp_files(self) -> list[str]:
        """Files in the local spool (tmp/ under storage.path, which every backend writes through)."""
        return os.listdir(self.data_dir / "tmp")

    def upstream_requests(self, method: str, path_part: str) -> int:
        return sum(1 for seen in self.fake.seen if seen.method == method and path_part in seen.path)

    def count(self, kind: str, result: str) -> float:
        return cache_requests(kind, self.upstream, result)


def cache_requests(kind: str, upstream: str, result: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "pullcache_cache_requests_total", {"kind": kind, "upstream": upstream, "result": result}) or 0.0


def bytes_served(source: str) -> float:
    return metrics.REGISTRY.get_sample_value("pullcache_bytes_served_total", {"source": source}) or 0.0


async def start_proxy(aiohttp_client: ClientFactory, fake: FakeRegistry, data_dir: Path,
                      storage: dict[str, Any] | None = None, **upstream: Any) -> Proxy:
    """pullcache (build_app, as `serve` runs it) whose default upstream is `fake`; `storage` adds to its
    storage settings (max_size, ...), `upstream` overrides the upstream's (manifest_ttl, read_timeout, ...).
    The name is unique so metric samples are per test."""
    name = f"up{uuid.uuid4().hex[:10]}"
    settings = {"name": name, "url": fake.url, "default": True, "read_timeout": "2s", "connect_timeout": "2s",
                **upstream}
    config = build_config({"storage": {"path": str(data_dir), **(storage or {})}, "upstreams": [settings],
                           "log": {"level": "debug"}})
    client = await aiohttp_client(build_app(config))
    return Proxy(client, fake, name, data_dir)


class AccessLog(logging.Handler):
    """Counts pullcache's access-log lines: one is written after a response was sent and counted, so
    waiting for it orders a test after the server's side of a request (the client may finish first)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1
        self._changed.set()

    async def wait_for(self, lines: int) -> None:
        while self.lines < lines:
            self._changed.clear()
            await self._changed.wait()

    def __enter__(self) -> Self:
        logger = logging.getLogger("pullcache.access")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("pullcache.access")
        logger.removeHandler(self)
        logger.setLevel(self._level)


class Gate:
    """Upstream blob body in two parts: the first `first` bytes at once (then `sent` is set), the rest
    only after `release` is set. The response carries the full Content-Length throughout."""

    def __init__(self, body: bytes, first: int) -> None:
        self.body = body
        self.first = first
        self.sent = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(self.body)),
                                               "Content-Type": "application/octet-stream"})
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        await response.write(self.body[:self.first])
        self.sent.set()
        await self.release.wait()
        await response.write(self.body[self.first:])
        return response


class Hang:
    """Answers nothing (not even headers) until `release` is set; `arrived` is set on the first request."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.arrived.set()
        await self.release.wait()
        return web.Response(status=503)


def truncated(body: bytes, keep: int) -> Handler:
    """Promises len(body) bytes, sends `keep` of them and drops the connection."""
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        await response.write(body[:keep])
        assert request.transport is not None
        request.transport.close()
        return response
    return handler


def wrong_bytes(body: bytes) -> Handler:
    """The right length with one byte flipped: only the digest can tell."""
    corrupt = bytearray(body)
    corrupt[len(corrupt) // 2] ^= 0xFF

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=bytes(corrupt), headers={"Content-Type": "application/octet-stream"})
    return handler


class Held:
    """Holds requests to `path` until `release` is set (`arrived` is set by the first), then answers with
    `then` if given, else as the fake normally would."""

    def __init__(self, fake: FakeRegistry, path: str, then: Handler | None = None) -> None:
        self.fake = fake
        self.path = path
        self.then = then
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.arrived.set()
        await self.release.wait()
        self.fake.faults.pop(self.path, None)
        return await (self.then or self.fake.handle)(request)


def blob_path(digest: str, repository: str = "team/app") -> str:
    """The API path of a blob in `repository`."""
    return f"/v2/{repository}/blobs/{digest}"
