"""A flaky front for a real registry and its token server: every distinct request fails its first attempts,
then goes through.

It stands for an upstream with transient trouble (a backend restarting, a load balancer dropping
connections) in front of real CNCF Distribution: `/v2/...` is passed to the registry and `/token...` to the
token server, whose realm the front puts in place of the real one in `WWW-Authenticate`, so token fetches
cross it too. A request is known by its method, path and query; its first attempts meet `faults` in turn
("503": a 503 answer, "drop": the connection closed without an answer, "cut": a 200 answer's headers and half
its body, then the connection closed; a non-200 answer passes and leaves "cut" for the next attempt), later
ones are passed through.
It runs on its own event loop in a thread, like tokenserver.TokenServer, so sync and async tests can use it.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web

_PASSED_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Docker-Content-Digest", "Location",
                   "Retry-After", "Docker-Distribution-Api-Version")


@dataclass(frozen=True)
class Attempt:
    key: str  # "GET /v2/library/alpine/manifests/latest" (with the query, if any)
    outcome: str  # "503", "drop", or the status passed through ("200", "401", ...)


class FlakyFront:
    def __init__(self, registry_url: str, realm: str, faults: Sequence[str] = ("503", "drop")) -> None:
        self.registry_url = registry_url.rstrip("/")
        self.realm = realm  # the token server's realm URL, e.g. http://127.0.0.1:4000/token
        self.faults = tuple(faults)
        self.attempts: list[Attempt] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FlakyFront:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(sock, started), name="flaky-front", daemon=True)
        self._thread.start()
        if not started.wait(timeout=10):
            raise RuntimeError("flaky front did not start")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._thread = None

    def outcomes(self) -> dict[str, list[str]]:
        """Every request's attempts in order: {key: ["503", "drop", "200"], ...}."""
        with self._lock:
            found: dict[str, list[str]] = {}
            for attempt in self.attempts:
                found.setdefault(attempt.key, []).append(attempt.outcome)
            return found

    def _serve(self, sock: socket.socket, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
        self._loop.run_until_complete(self._open_session())
        started.set()
        self._loop.run_forever()

    async def _open_session(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def _shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _record(self, key: str, outcome: str) -> None:
        with self._lock:
            self.attempts.append(Attempt(key, outcome))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = f"{request.method} {request.path_qs}"
        with self._lock:
            count = self._seen[key]
            self._seen[key] += 1
        if count < len(self.faults) and self.faults[count] != "cut":
            fault = self.faults[count]
            self._record(key, fault)
            if fault == "drop":
                assert request.transport is not None
                request.transport.abort()
                raise web.HTTPServiceUnavailable()  # never written: the connection is gone
            return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": "flaky"}]}, status=503)
        target = (self.realm.rsplit("/", 1)[0] if request.path.startswith("/token") else self.registry_url)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "accept", "range")}
        assert self._session is not None
        async with self._session.request(request.method, target + request.path_qs, headers=headers,
                                         allow_redirects=False) as answer:
            body = await answer.read()
            passed = {k: answer.headers[k] for k in _PASSED_HEADERS if k in answer.headers}
            challenge = answer.headers.get("WWW-Authenticate")
            if challenge is not None:
                passed["WWW-Authenticate"] = challenge.replace(self.realm, f"{self.url}/token")
        if count < len(self.faults) and self.faults[count] == "cut":
            if answer.status == 200 and request.method == "GET":
                self._record(key, "cut")
                return await self._cut(request, passed, body)
            with self._lock:
                self._seen[key] -= 1  # the fault waits for a 200 to cut
        self._record(key, str(answer.status))
        if request.method == "HEAD":
            passed.pop("Content-Length", None)
            response = web.Response(status=answer.status, headers=passed)
            if "Content-Length" in answer.headers:
                response.content_length = int(answer.headers["Content-Length"])
            return response
        passed.pop("Content-Length", None)
        return web.Response(status=answer.status, body=body, headers=passed)

    @staticmethod
    async def _cut(request: web.Request, headers: dict[str, str], body: bytes) -> web.StreamResponse:
        """Headers promising the whole body, half of it, then the connection closed."""
        response = web.StreamResponse(status=200, headers={k: v for k, v in headers.items()
                                                           if k != "Content-Length"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.abort()
        return response
