"""sendfile(2) of blob files on worker threads, so concurrent downloads use every core.

`loop.sendfile` makes every sendfile call on the event loop's thread: with 8 clients of cached
layers that one thread sat in the syscall ~85% of the time (py-spy) while the others queued
behind it. The kernel copy needs no GIL, so bursts run on a small pool of threads. A thread never
waits on a slow client for long: when the socket stays full for STALL_WAIT_MS it hands the
transfer back and the next burst is queued.
"""
from __future__ import annotations

import asyncio
import os
import select
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

STALL_WAIT_MS = 20
_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="pullcache-sendfile")  # mostly in poll(2)


def _burst(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """sendfile until `count` bytes went or the socket stayed full for STALL_WAIT_MS; returns bytes sent."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            if not poller.poll(STALL_WAIT_MS):
                return sent
            continue
        if n == 0:
            raise ConnectionError("blob file is shorter than its recorded size")
        sent += n
    return sent


async def send_file(transport: asyncio.Transport, file: BinaryIO, offset: int, count: int) -> None:
    """Like `loop.sendfile(transport, file, offset, count)`, with the copying done off the loop.

    Falls back to loop.sendfile for TLS (no kernel sendfile there) and while the transport still
    buffers bytes (they must go first). A burst under way is never abandoned: its thread uses the
    socket's fd, which must not be closed and reused underneath it.
    """
    loop = asyncio.get_running_loop()
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None or transport.get_write_buffer_size():
        await loop.sendfile(transport, file, offset, count)
        return
    # Not reading while bursts run: a client's EOF would otherwise close the fd under a running burst
    # (asyncio's own sendfile pauses reading for the same reason); a gone client shows up as EPIPE.
    was_reading = transport.is_reading()
    transport.pause_reading()
    try:
        end = offset + count
        while offset < end:
            burst = loop.run_in_executor(_POOL, _burst, sock.fileno(), file.fileno(), offset, end - offset)
            try:
                offset += await asyncio.shield(burst)
            except asyncio.CancelledError:
                await asyncio.wait([burst])
                if not burst.cancelled():
                    burst.exception()  # the client is gone either way; do not log it as unretrieved
                raise
    finally:
        if was_reading and not transport.is_closing():
            transport.resume_reading()
