"""Upstream misbehaviours a real registry would not produce, for tests/test_upstream_hostile.py.

- InternalService: stands for a service on a private address that only pullcache's host can reach; it
  binds 127.0.0.2 (another loopback address, so "another host") and answers every request with SECRET.
- RealmPerRepo: a FakeRegistry whose challenge names another token realm for chosen repositories.
- drip_raw / drip_body: handlers that send an answer one byte per interval, so no read timeout ever fires.

Every server listens on loopback only.
"""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.fault_upstream import FakeRegistry, Handler, ServerFactory

SECRET = b"internal-service-answer: do not leak"
ANOTHER_LOOPBACK = "127.0.0.2"


class InternalService:
    """Anything on 127.0.0.2 answered with SECRET (or with `blobs[path]` when set); `seen` lists the paths asked."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.bodies: dict[str, bytes] = {}
        self.url = ""
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._answer)

    async def start(self, aiohttp_server: ServerFactory) -> InternalService:
        server = await aiohttp_server(self.app, host=ANOTHER_LOOPBACK)
        self.url = f"http://{ANOTHER_LOOPBACK}:{server.port}"
        return self

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path)
        return web.Response(body=self.bodies.get(request.path, SECRET), content_type="application/octet-stream")


class RealmPerRepo(FakeRegistry):
    """Challenges for the repositories in `realms` name that realm instead of the registry's usual one."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.realms: dict[str, str] = {}

    def _challenge(self, repo: str) -> str:
        if repo in self.realms:
            return f'Bearer realm="{self.realms[repo]}",service="{self.service}",scope="repository:{repo}:pull"'
        return super()._challenge(repo)


def drip_raw(raw: bytes, interval: float) -> Handler:
    """Writes a whole raw HTTP answer (status line and headers included) one byte per interval, bypassing
    aiohttp's own response, until it is all sent or the client hangs up."""
    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        for i in range(len(raw)):
            if transport.is_closing():
                break
            transport.write(raw[i:i + 1])
            await asyncio.sleep(interval)
        transport.close()
        return web.Response()  # never sent: the connection is closed
    return handler


def drip_body(body: bytes, interval: float, chunk: int = 1, headers: dict[str, str] | None = None) -> Handler:
    """Headers at once, then the body `chunk` bytes per interval."""
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(body)), **(headers or {})})
        await response.prepare(request)
        try:
            for i in range(0, len(body), chunk):
                await response.write(body[i:i + chunk])
                await asyncio.sleep(interval)
        except ConnectionError:
            return response
        return response
    return handler


def raw_answer(status_line: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """The bytes of an HTTP/1.1 answer, for drip_raw."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 {status_line}\r\n{head}\r\n".encode() + body
