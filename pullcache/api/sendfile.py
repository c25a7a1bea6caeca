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
from functools import partial
from typing import BinaryIO

STALL_WAIT_MS = 20
MAX_BURST = 32 * 1024 * 1024  # bytes per burst: a cancelled transfer's last burst ends soon
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
    buffers bytes (they must go first). The bursts use their own duplicates of the socket's and the
    file's fds: when this is cancelled (shutdown, a cancelled handler) it returns at once, and the
    transport and the caller close their fds, while a burst under way finishes on the duplicates,
    never on a number that meanwhile names another connection or file. A burst is at most MAX_BURST.
    """
    loop = asyncio.get_running_loop()
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None or transport.get_write_buffer_size():
        await loop.sendfile(transport, file, offset, count)
        return
    fds = (os.dup(sock.fileno()), os.dup(file.fileno()))
    # Not reading while bursts run, as asyncio's own sendfile: a gone client shows up as EPIPE.
    was_reading = transport.is_reading()
    transport.pause_reading()
    burst: asyncio.Future[int] | None = None
    try:
        end = offset + count
        while offset < end:
            burst = loop.run_in_executor(_POOL, _burst, *fds, offset, min(end - offset, MAX_BURST))
            offset += await asyncio.shield(burst)
    finally:
        if burst is None or burst.done():
            _close_after(fds, burst)
        else:
            burst.add_done_callback(partial(_close_after, fds))
        if was_reading and not transport.is_closing():
            transport.resume_reading()


def _close_after(fds: tuple[int, ...], burst: asyncio.Future[int] | None) -> None:
    """Close a transfer's duplicate fds once its last burst is over; its outcome was either awaited or
    belongs to a transfer that was cancelled (the client is gone either way), so it is not logged."""
    if burst is not None and not burst.cancelled():
        burst.exception()
    for fd in fds:
        os.close(fd)
