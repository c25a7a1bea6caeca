"""Upstream answers a real registry would not give, and pullcache in-process in front of several fakes.

The handlers plug into `tests.fault_upstream.FakeRegistry.faults`; `start_proxies` serves two or more
fake upstreams (each under its own name, none the default) from one in-process pullcache, for tests
of what one upstream's misbehaviour does to the clients of another.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from pullcache.app import build_app
from pullcache.config import build_config
from tests.fault_upstream import FakeRegistry, Handler
from tests.support_faults import ClientFactory


def empty_ok(digest: str) -> Handler:
    """200 with `Content-Length: 0` (and the digest claimed) for a blob that is not empty."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"", headers={"Content-Type": "application/octet-stream",
                                               "Docker-Content-Digest": digest})
    return handler


@dataclass
class Proxies:
    """One pullcache serving each fake under its name: GET /v2/<name>/<repo>/blobs/<digest>."""

    client: TestClient
    names: Mapping[str, FakeRegistry]

    def blob_path(self, name: str, digest: str, repo: str = "team/app") -> str:
        return f"/v2/{name}/{repo}/blobs/{digest}"


async def start_proxies(aiohttp_client: ClientFactory, fakes: list[FakeRegistry], data_dir: Path,
                        **upstream: Any) -> Proxies:
    """pullcache with one upstream per fake, named uniquely (metric samples stay per test); `upstream`
    overrides every upstream's settings (read_timeout, ...)."""
    names = {f"up{uuid.uuid4().hex[:10]}": fake for fake in fakes}
    upstreams = [{"name": name, "url": fake.url, "read_timeout": "2s", "connect_timeout": "2s", **upstream}
                 for name, fake in names.items()]
    config = build_config({"storage": {"path": str(data_dir)}, "upstreams": upstreams,
                           "log": {"level": "debug"}})
    return Proxies(await aiohttp_client(build_app(config)), names)
