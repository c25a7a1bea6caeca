"""`python -m bench.blobget [--clients N] [-H HEADER]... URL`: concurrent GETs, bodies dropped.

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
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
import urllib.parse

from bench.httptap import Framing, MessageStream

BUFFER = 4 * 1024 * 1024


def get(url: str, headers: list[str], timeout: float = 600) -> tuple[int, float, float, int]:
    """(status, seconds to first byte, seconds in all, body bytes) of one GET."""
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    start = time.monotonic()
    status, size, done = 0, 0, False

    length: int | None = None  # the body's Content-Length, once the head is in

    def on_head(lines: list[str]) -> tuple[Framing, int]:
        nonlocal status, length
        status = int(lines[0].split()[1])
        framing, body_length = Framing.UNTIL_CLOSE, 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                framing, body_length = Framing.LENGTH, int(value)
            elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                return Framing.CHUNKED, 0
        if framing is Framing.LENGTH:
            length = body_length
        return framing, body_length

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
                done = not received or size >= length
                continue
            received = sock.recv_into(buffer)
            if not ttfb:
                ttfb = time.monotonic() - start
            if not received:
                break
            stream.feed(view[:received])
    return status, ttfb, time.monotonic() - start, size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.blobget", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("-H", dest="headers", action="append", default=[])
    parser.add_argument("url")
    args = parser.parse_args(argv)
    results: list[str] = [""] * args.clients
    go = threading.Barrier(args.clients)

    def client(i: int) -> None:
        go.wait()
        try:
            status, ttfb, total, size = get(args.url, args.headers)
            results[i] = f"{status} {ttfb:.6f} {total:.6f} {size}"
        except OSError as err:
            results[i] = f"0 0 0 0 {err}"

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("\n".join(results))


if __name__ == "__main__":
    main()
