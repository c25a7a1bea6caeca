"""A front for a real registry that holds blob bodies at a gate: the upstream of a fill that is still
running, for as long as a test needs, without a sleep.

Built on flaky_front.FlakyFront (no faults), which passes everything else, token fetches included, to the
real Distribution and its token server. A blob GET that Distribution answers 200 is streamed instead of
passed whole: the headers and the first `head` bytes at once, then, once `open_gate()` was called, the rest.
`held` is set when a body waits at the gate; `blob_gets(digest)` counts the bodies that were started.
"""
from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from .flaky_front import _PASSED_HEADERS, FlakyFront

HEAD = 64 * 1024


class GatedFront(FlakyFront):
    def __init__(self, registry_url: str, realm: str, *, head: int = HEAD) -> None:
        super().__init__(registry_url, realm, faults=())
        self.head = head
        self.held = threading.Event()
        self._gate_open = threading.Event()
        self._gate: asyncio.Event | None = None

    def open_gate(self) -> None:
        """Let every held body, and every later one, go through."""
        self._gate_open.set()
        if self._gate is not None:
            self._loop.call_soon_threadsafe(self._gate.set)

    def blob_gets(self, digest: str) -> int:
        """Blob bodies started for `digest` (200 answers to GETs), whichever repository asked."""
        return sum(outcome == "200" for key, outcomes in self.outcomes().items()
                   if key.startswith("GET ") and key.endswith(f"/blobs/{digest}") for outcome in outcomes)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET" or "/blobs/" not in request.path or "/blobs/uploads/" in request.path:
            return await super()._handle(request)
        if self._gate is None:
            self._gate = asyncio.Event()
            if self._gate_open.is_set():
                self._gate.set()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "accept")}
        assert self._session is not None
        async with self._session.get(self.registry_url + request.path_qs, headers=headers,
                                     allow_redirects=False) as answer:
            if answer.status != 200:
                return await super()._handle(request)  # a challenge or an error: passed as FlakyFront passes it
            self._record(f"GET {request.path_qs}", "200")
            response = web.StreamResponse(headers={k: answer.headers[k] for k in _PASSED_HEADERS
                                                   if k in answer.headers and k != "Content-Length"})
            if answer.content_length is not None:
                response.content_length = answer.content_length
            try:
                await response.prepare(request)
                await response.write(await answer.content.readexactly(self.head))
                self.held.set()
                await self._gate.wait()
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the fetching process went away (killed): nothing more to send
            return response
