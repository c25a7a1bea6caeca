"""A rate-capped TCP path to the upstream that also counts what crosses it.

Each cache reaches the upstream Distribution through its own instance, so the two never
share bandwidth, and "upstream fetches" is read off the wire instead of assumed. Bytes
from the upstream are paced per connection by a token bucket (the cap a WAN link or a
Hub mirror would impose); both directions are followed by `httptap` so every request is
logged with its status and the body bytes that came back.

Run as its own process (`python -m bench.throttle ...`) so the copying never competes
with the benchmark driver for the GIL; `Throttle` starts it and reads its counters from
a small control listener (`GET /stats`, `POST /reset`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from bench.httptap import ConnectionTap, Exchange
from tests.support.procs import ManagedProcess, free_port, http_status

CHUNK = 256 * 1024
DEFAULT_RATE = 50_000_000  # bytes per second per connection
_BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)")
_MANIFEST_PATH = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/?]+)")


class TokenBucket:
    """Lets `rate` bytes per second through after an initial `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    async def take(self, size: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= size
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


@dataclass
class Stats:
    exchanges: list[Exchange] = field(default_factory=list)
    connections: int = 0
    active: int = 0
    bytes_down: int = 0

    def json(self) -> dict[str, object]:
        return {"exchanges": [e.row() for e in self.exchanges], "connections": self.connections,
                "active": self.active, "bytes_down": self.bytes_down}


class RateCappedProxy:
    """Forwards every connection to `target`, pacing the downstream direction."""

    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self.target = target
        self.rate = rate
        self.stats = Stats()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        self.stats.active += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self.stats.active -= 1
            return
        tap = ConnectionTap(self.stats.exchanges)
        bucket = TokenBucket(self.rate, CHUNK)
        upward = asyncio.create_task(self._pipe(reader, up_writer, tap.upward.feed, None))
        downward = asyncio.create_task(self._pipe(up_reader, writer, self._downward(tap), bucket))
        try:
            await asyncio.wait({upward, downward}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upward, downward):
                task.cancel()
            await asyncio.gather(upward, downward, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
            self.stats.active -= 1

    def _downward(self, tap: ConnectionTap) -> Callable[[bytes], None]:
        def observe(data: bytes) -> None:
            self.stats.bytes_down += len(data)
            tap.downward.feed(data)
        return observe

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    observe: Callable[[bytes], None], bucket: TokenBucket | None) -> None:
        while data := await reader.read(CHUNK):
            observe(data)
            if bucket is not None:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    def control_app(self) -> web.Application:
        app = web.Application()

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(self.stats.json())

        async def reset(request: web.Request) -> web.Response:
            self.stats.exchanges.clear()
            self.stats.bytes_down = 0
            return web.json_response({})

        app.router.add_get("/stats", stats)
        app.router.add_post("/reset", reset)
        return app


async def serve(port: int, control_port: int, target: tuple[str, int], rate: float) -> None:
    proxy = RateCappedProxy(target, rate)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", port)
    runner = web.AppRunner(proxy.control_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    async with server:
        await server.serve_forever()


# --- the driver's side ---------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request that went upstream, with its answer (status None: not answered yet)."""

    at: float
    method: str
    path: str
    status: int | None
    body_bytes: int
    complete: bool


class Throttle:
    """The proxy process, seen from the benchmark: start/stop, URL, what went upstream."""

    def __init__(self, target_host: str, workdir: Path, *, rate: float = DEFAULT_RATE) -> None:
        self.port = free_port()
        self.control_port = free_port()
        self.rate = rate
        self.process = ManagedProcess(
            [sys.executable, "-m", "bench.throttle", "--port", str(self.port),
             "--control-port", str(self.control_port), "--target", target_host, "--rate", str(rate)],
            log_path=workdir / f"throttle-{self.port}.log",
            cwd=Path(__file__).resolve().parents[1],
            name="throttle",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Throttle:
        self.process.start()
        self.process.wait_until(lambda: http_status(self._control("/stats")) == 200,
                                timeout=15, what="answering /stats")
        return self

    def stop(self) -> None:
        self.process.stop()

    def _control(self, path: str) -> str:
        return f"http://127.0.0.1:{self.control_port}{path}"

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(self._control("/stats"), timeout=10) as answer:
            return json.load(answer)

    def requests(self) -> list[Request]:
        return [Request(*r) for r in self.stats()["exchanges"]]

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self._control("/reset"), method="POST"),
                               timeout=10).close()

    def blob_gets(self, digest: str) -> int:
        """GETs of `digest` the upstream answered with content (200/206): the fetch count.

        A GET answered 401 (the cache then fetches a token and asks again) is no fetch.
        """
        return sum(1 for r in self.requests()
                   if r.method == "GET" and r.status in (200, 206) and _blob_digest(r.path) == digest)

    def blob_bytes(self, digest: str) -> int:
        """Body bytes of `digest` the upstream has sent so far, over all its GETs."""
        return sum(r.body_bytes for r in self.requests()
                   if r.method == "GET" and _blob_digest(r.path) == digest)

    def manifest_requests(self) -> int:
        return sum(1 for r in self.requests() if _MANIFEST_PATH.match(r.path))


def _blob_digest(path: str) -> str | None:
    match = _BLOB_PATH.match(path)
    return match["digest"] if match else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throttle", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT of the upstream")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="bytes/s per connection")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    asyncio.run(serve(args.port, args.control_port, (host, int(port)), args.rate))


if __name__ == "__main__":
    main()
