"""Follows the HTTP/1.1 exchanges on one proxied TCP connection.

The throttle feeds it both directions as they pass; it records every request (method,
path) with its response status and how many body bytes came back. That is what makes a
fetch countable: a GET answered 401 (a token round-trip) is no fetch, a 200 is. Bodies are
never copied, only counted; heads, chunk-size lines and trailers are the only bytes kept.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto


@dataclass
class Exchange:
    at: float
    method: str
    path: str
    status: int | None = None
    body_bytes: int = 0
    complete: bool = False

    def row(self) -> list[object]:
        return [self.at, self.method, self.path, self.status, self.body_bytes, self.complete]


class Framing(Enum):
    NONE = auto()
    LENGTH = auto()
    CHUNKED = auto()
    UNTIL_CLOSE = auto()


class _State(Enum):
    HEAD = auto()
    BODY = auto()  # Content-Length bytes left in `left`
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_END = auto()  # the CRLF after a chunk's data
    TRAILER = auto()
    UNTIL_CLOSE = auto()


_WINDOW = 64 * 1024  # heads and chunk lines are far shorter
OnHead = Callable[[list[str]], tuple[Framing, int]]


class MessageStream:
    """One direction of an HTTP/1.1 connection: heads go to `on_head`, which says how the
    body is framed; body byte counts go to `on_body`; `on_end` marks each message's end."""

    def __init__(self, on_head: OnHead, on_body: Callable[[int], None], on_end: Callable[[], None]) -> None:
        self.on_head = on_head
        self.on_body = on_body
        self.on_end = on_end
        self.state = _State.HEAD
        self.lines: list[str] = []
        self.partial = b""
        self.left = 0

    def _line(self, data: bytes | memoryview, pos: int) -> tuple[str | None, int]:
        """The next CRLF-terminated line from `partial` + `data[pos:]`, and the new position.

        Looks at most `_WINDOW` bytes ahead, so a body behind the line is never copied.
        """
        window = bytes(data[pos:pos + _WINDOW])
        if self.partial.endswith(b"\r") and window[:1] == b"\n":
            line, self.partial = self.partial[:-1], b""
            return line.decode("latin-1"), pos + 1
        end = window.find(b"\r\n")
        if end < 0:
            self.partial += window
            return None, pos + len(window)
        line, self.partial = self.partial + window[:end], b""
        return line.decode("latin-1"), pos + end + 2

    def feed(self, data: bytes | memoryview) -> None:
        pos = 0
        while pos < len(data):
            if self.state in (_State.BODY, _State.CHUNK_DATA, _State.UNTIL_CLOSE):
                take = len(data) - pos if self.state is _State.UNTIL_CLOSE else min(self.left, len(data) - pos)
                self.on_body(take)
                pos += take
                self.left -= take
                if self.state is _State.BODY and self.left == 0:
                    self._end()
                elif self.state is _State.CHUNK_DATA and self.left == 0:
                    self.state = _State.CHUNK_END
                continue
            line, pos = self._line(data, pos)
            if line is not None:
                self._on_line(line)

    def _on_line(self, line: str) -> None:
        if self.state is _State.HEAD:
            if line or self.lines:  # tolerate stray CRLFs between messages
                if line:
                    self.lines.append(line)
                else:
                    self._start_body()
        elif self.state is _State.CHUNK_SIZE:
            self.left = int(line.split(";", 1)[0].strip() or "0", 16)
            self.state = _State.CHUNK_DATA if self.left else _State.TRAILER
        elif self.state is _State.CHUNK_END:
            self.state = _State.CHUNK_SIZE
        elif self.state is _State.TRAILER and not line:
            self._end()

    def _start_body(self) -> None:
        framing, length = self.on_head(self.lines)
        self.lines = []
        if framing is Framing.NONE or (framing is Framing.LENGTH and length == 0):
            self._end()
        elif framing is Framing.LENGTH:
            self.state, self.left = _State.BODY, length
        elif framing is Framing.CHUNKED:
            self.state = _State.CHUNK_SIZE
        else:
            self.state = _State.UNTIL_CLOSE

    def _end(self) -> None:
        self.state = _State.HEAD
        self.on_end()


def _framing(headers: list[str]) -> tuple[Framing, int | None]:
    length = None
    for header in headers:
        name, _, value = header.partition(":")
        name = name.strip().lower()
        if name == "transfer-encoding" and "chunked" in value.lower():
            return Framing.CHUNKED, None
        if name == "content-length":
            length = int(value.strip())
    return (Framing.LENGTH, length) if length is not None else (Framing.NONE, None)


class ConnectionTap:
    """Pairs each request on a connection with its response; appends to `log` as they start."""

    def __init__(self, log: list[Exchange]) -> None:
        self.log = log
        self.pending: deque[Exchange] = deque()
        self.current: Exchange | None = None
        self.upward = MessageStream(self._request_head, lambda n: None, lambda: None)
        self.downward = MessageStream(self._response_head, self._response_body, self._response_end)

    def _request_head(self, lines: list[str]) -> tuple[Framing, int]:
        method, _, rest = lines[0].partition(" ")
        exchange = Exchange(time.time(), method, rest.rpartition(" ")[0] or rest)
        self.log.append(exchange)
        self.pending.append(exchange)
        framing, length = _framing(lines[1:])
        return framing, length or 0  # a request without a length has no body

    def _response_head(self, lines: list[str]) -> tuple[Framing, int]:
        status = int(lines[0].split()[1])
        if 100 <= status < 200:
            return Framing.NONE, 0  # interim: the request still waits for its final answer
        self.current = self.pending.popleft() if self.pending else Exchange(time.time(), "?", "?")
        self.current.status = status
        if self.current.method == "HEAD" or status in (204, 304):
            return Framing.NONE, 0
        framing, length = _framing(lines[1:])
        if framing is Framing.NONE:
            return Framing.UNTIL_CLOSE, 0
        return framing, length or 0

    def _response_body(self, size: int) -> None:
        if self.current is not None:
            self.current.body_bytes += size

    def _response_end(self) -> None:
        if self.current is not None:
            self.current.complete = True
            self.current = None
