"""Clients that send a GET and never read the answer, and what they cost a server process.

The sockets ask for a tiny receive buffer, so the server's send buffers fill after a few hundred KiB
each; what the server holds beyond that for them is its own (user-space) memory, seen in VmRSS.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

RECEIVE_BUFFER = 4096
TCP_ESTABLISHED = "01"  # as /proc/net/tcp writes it
TCP_STATE_ESTABLISHED = 1  # as TCP_INFO's first byte says it


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


class StalledReaders(AbstractContextManager["StalledReaders"]):
    """`count` connections to 127.0.0.1:`port`, each having sent `GET path` and reading nothing."""

    def __init__(self, port: int, path: str, count: int) -> None:
        self.sockets: list[socket.socket] = []
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                sock.connect(("127.0.0.1", port))
                sock.sendall(request)
        except BaseException:
            self.close()
            raise

    def disconnected(self) -> int:
        """How many the server has closed or reset, seen from each socket's TCP state (reading would
        unstall them)."""
        return sum(1 for sock in self.sockets if _tcp_state(sock) != TCP_STATE_ESTABLISHED)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def rss_mib(pid: int) -> float:
    """The process's resident memory (VmRSS) in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send_queues(port: int) -> list[int]:
    """Bytes waiting in the send queue of each established TCP connection whose local end is
    127.0.0.1:`port` (a server's accepted clients)."""
    queues = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == TCP_ESTABLISHED:
                queues.append(int(fields[4].split(":")[0], 16))
    return queues


def connections_to(port: int) -> int:
    return len(send_queues(port))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` (a state of another process, which cannot be awaited) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout}s")
        time.sleep(0.05)
