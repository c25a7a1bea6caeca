"""`python -m bench.blobget [--clients N] [--follow] [-H HEADER]... URL`: concurrent GETs, bodies dropped.

The benchmark's blob client: N threads in one process, each with its own connection,
released together. Per client it prints what curl's
`-w '%{http_code} %{time_starttransfer} %{time_total} %{size_download}'` would, but reads
with 4 MiB recv_into calls into a reused buffer (the GIL is released while the kernel
copies). Once the headers are in, a body of known length is received with MSG_TRUNC: the
kernel drops the bytes without copying them to user space, so the client costs little more
than the TCP stack itself and the server's own cost decides the figure. curl's 16 KiB reads and
one process per client took about twice the CPU for the same bytes, and on two cores that
CPU is taken from the server being measured (`loadgen.ceiling` shows both). Times start
before connecting, like curl's.

With `--follow` a redirect is followed (as `curl -L`, without passing the headers on): the
time to first byte is then the final response's, counted from the first connect. Two more
fields follow curl's four: the bytes received on the connection to URL itself, heads
included (what the cache's own port sent), and the redirects followed.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass

from bench.httptap import Framing, MessageStream

BUFFER = 4 * 1024 * 1024
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Answer:
    status: int
    ttfb: float  # from `start` to the first byte of this answer
    size: int  # body bytes
    received: int  # every byte read off the connection, head included
    location: str | None

    @property
    def redirect(self) -> str | None:
        return self.location if self.status in REDIRECTS else None


def get(url: str, headers: list[str], timeout: float = 600, *,
        follow: bool = False) -> tuple[int, float, float, int, int, int]:
    """(status, seconds to first byte, seconds in all, body bytes, bytes from URL's connection, redirects
    followed) of one GET."""
    start = time.monotonic()
    answer = _exchange(url, headers, timeout, start)
    from_origin, hops = answer.received, 0
    while follow and answer.redirect is not None and hops < MAX_REDIRECTS:
        hops += 1
        url = urllib.parse.urljoin(url, answer.redirect)
        answer = _exchange(url, [], timeout, start)
    return answer.status, answer.ttfb, time.monotonic() - start, answer.size, from_origin, hops


def _exchange(url: str, headers: list[str], timeout: float, start: float) -> Answer:
    """One GET on its own connection, the body counted (and dropped) as it arrives."""
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    status, size, received_all, done = 0, 0, 0, False
    location: str | None = None

    length: int | None = None  # the body's Content-Length, once the head is in

    def on_head(lines: list[str]) -> tuple[Framing, int]:
        nonlocal status, length, location
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        location = fields.get("location")
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return Framing.CHUNKED, 0
        if "content-length" not in fields:
            return Framing.UNTIL_CLOSE, 0
        length = int(fields["content-length"])
        return Framing.LENGTH, length

    def on_body(count: int) -> None:
        nonlocal size
        size += count

    def on_end() -> None:
        nonlocal done
        done = True

    stream = MessageStream(on_head, on_body, on_end)
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    ttfb = 0.0
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock:
        request = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close", *headers, "", ""]
        sock.sendall("\r\n".join(request).encode())
        while not done:
            if length is not None:  # the rest of a known-length body: counted, never copied
                received = sock.recv_into(buffer, min(BUFFER, length - size), socket.MSG_TRUNC)
                size += received
                received_all += received
                done = not received or size >= length
                continue
            received = sock.recv_into(buffer)
            received_all += received
            if not ttfb:
                ttfb = time.monotonic() - start
            if not received:
                break
            stream.feed(view[:received])
    return Answer(status, ttfb, size, received_all, location)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.blobget", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--follow", action="store_true", help="follow redirects, as curl -L")
    parser.add_argument("-H", dest="headers", action="append", default=[])
    parser.add_argument("url")
    args = parser.parse_args(argv)
    results: list[str] = [""] * args.clients
    go = threading.Barrier(args.clients)

    def client(i: int) -> None:
        go.wait()
        try:
            status, ttfb, total, size, from_origin, hops = get(args.url, args.headers, follow=args.follow)
            results[i] = f"{status} {ttfb:.6f} {total:.6f} {size} {from_origin} {hops}"
        except OSError as err:
            results[i] = f"0 0 0 0 0 0 {err}"

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("\n".join(results))


if __name__ == "__main__":
    main()
