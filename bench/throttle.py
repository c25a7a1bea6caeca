"""A rate-capped TCP path to the upstream that also counts what crosses it.

Each cache reaches the upstream Distribution through its own instance, so the two never
share bandwidth, and "upstream fetches" is read off the wire instead of assumed. Bytes
from the upstream are paced per connection by a token bucket (the cap a WAN link or a
Hub mirror would impose); requests going up are parsed just enough to log their method
and path. Pulls send no request bodies, but a Content-Length body is skipped correctly.

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


class RequestLog:
    """Finds request heads in a client->server byte stream and records each one."""

    def __init__(self, record: list[tuple[float, str, str]]) -> None:
        self.record = record
        self.buffer = b""
        self.body_left = 0

    def feed(self, data: bytes) -> None:
        if self.body_left:
            skipped = min(self.body_left, len(data))
            self.body_left -= skipped
            data = data[skipped:]
        self.buffer += data
        while not self.body_left:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, _, target = lines[0].partition(" ")
            self.record.append((time.time(), method, target.rpartition(" ")[0] or target))
            length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                           if line.lower().startswith("content-length:")), 0)
            skipped = min(length, len(rest))
            self.body_left = length - skipped
            self.buffer = rest[skipped:]


@dataclass
class Stats:
    requests: list[tuple[float, str, str]] = field(default_factory=list)
    connections: int = 0
    active: int = 0
    bytes_down: int = 0

    def json(self) -> dict[str, object]:
        return {"requests": self.requests, "connections": self.connections,
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
        log = RequestLog(self.stats.requests)
        bucket = TokenBucket(self.rate, CHUNK)
        upward = asyncio.create_task(self._pipe(reader, up_writer, log.feed, None))
        downward = asyncio.create_task(self._pipe(up_reader, writer, self._count, bucket))
        try:
            await asyncio.wait({upward, downward}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upward, downward):
                task.cancel()
            await asyncio.gather(upward, downward, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
            self.stats.active -= 1

    def _count(self, data: bytes) -> None:
        self.stats.bytes_down += len(data)

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
            self.stats.requests.clear()
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
    at: float
    method: str
    path: str


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
        return [Request(*r) for r in self.stats()["requests"]]

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self._control("/reset"), method="POST"),
                               timeout=10).close()

    def blob_gets(self, digest: str) -> int:
        """GETs of `digest` that went upstream since the last reset: the fetch count."""
        return sum(1 for r in self.requests() if r.method == "GET" and _blob_digest(r.path) == digest)

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
