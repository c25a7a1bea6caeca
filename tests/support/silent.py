"""A TCP listener on loopback that takes connections and never answers: a hung upstream (a process stuck
after accept, a black-holing load balancer), as opposed to a dead one (a closed port, refused at once)."""
from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def silent_listener() -> Iterator[str]:
    """The URL of a port whose connections the kernel completes (backlog) and nobody ever reads or answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
