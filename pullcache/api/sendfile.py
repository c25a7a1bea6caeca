"""sendfile(2) of blob files on worker threads, so concurrent downloads use every core, and a client that
stops reading costs nothing but its socket until the send timeout cuts it.

`loop.sendfile` makes every sendfile call on the event loop's thread: with 8 clients of cached
layers that one thread sat in the syscall ~85% of the time (py-spy) while the others queued
behind it. The kernel copy needs no GIL, so bursts run on a small pool of threads. A thread never
waits on a slow client for long: when the socket stays full for STALL_WAIT_MS it hands the
transfer back, and the event loop waits until the socket can take more (epoll, no thread, no
polling) before the next burst is queued. A client whose socket takes nothing for SEND_TIMEOUT is
disconnected. Bytes go from the page cache to the socket: nothing of the body is held in memory
per client, whether the file is committed or still growing (a fill).
"""
from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

STALL_WAIT_MS = 20
SEND_TIMEOUT = 60.0  # seconds a client's socket may accept no byte before the client is disconnected
MAX_BURST = 32 * 1024 * 1024  # bytes per burst: a cancelled transfer's last burst ends soon
FALLBACK_PIECE = 256 * 1024  # bytes per loop.sendfile call where kernel sendfile cannot run (TLS)
_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="pullcache-sendfile")  # mostly in poll(2)


class SendTimeout(ConnectionError):
    """The client accepted no byte for SEND_TIMEOUT seconds; its connection was reset."""


class FileShort(ConnectionError):
    """The file ended before the bytes its recorded size promised (a damaged store): the response cannot be
    completed, so the connection must be cut like one whose client went away."""


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
            raise FileShort("the file is shorter than its recorded size")
        sent += n
    return sent


async def send_body(request: web.BaseRequest, writer: AbstractStreamWriter, file_fd: int, offset: int, count: int,
                    *, chunked: bool = False) -> None:
    """Bytes [offset, offset + count) of `file_fd` as the next part of a prepared response's body (one
    chunk of it, if chunked), sent past aiohttp's payload `writer` and counted in it as if written
    through it: the response's body_length and whoever watches on_body_write (the access log) see it."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away")
    if chunked:
        transport.write(b"%x\r\n" % count)
    await send_file(transport, file_fd, offset, count)
    if chunked:
        transport.write(b"\r\n")
    writer.buffer_size += count
    writer.output_size += count
    if writer.on_body_write is not None:
        writer.on_body_write(count, writer.output_size)


async def send_file(transport: asyncio.Transport, file_fd: int, offset: int, count: int) -> None:
    """Like `loop.sendfile(transport, file, offset, count)`, with the copying done off the loop and a
    client that accepts nothing for SEND_TIMEOUT cut (SendTimeout, the transport aborted).

    `file_fd` may be a file still being written, as long as [offset, offset + count) is written.
    Falls back to loop.sendfile for TLS (no kernel sendfile there) and while the transport still
    buffers bytes (they must go first). The bursts use their own duplicates of the socket's and the
    file's fds: when this is cancelled (shutdown, a cancelled handler) it returns at once, and the
    transport and the caller close their fds, while a burst under way finishes on the duplicates,
    never on a number that meanwhile names another connection or file. A burst is at most MAX_BURST.
    """
    loop = asyncio.get_running_loop()
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None or transport.get_write_buffer_size():
        await _send_fallback(transport, file_fd, offset, count)
        return
    fds = (os.dup(sock.fileno()), os.dup(file_fd))
    # Not reading while bursts run, as asyncio's own sendfile: a gone client shows up as EPIPE.
    was_reading = transport.is_reading()
    transport.pause_reading()
    burst: asyncio.Future[int] | None = None
    try:
        end = offset + count
        while offset < end:
            size = min(end - offset, MAX_BURST)
            burst = loop.run_in_executor(_POOL, _burst, *fds, offset, size)
            sent = await asyncio.shield(burst)
            offset += sent
            if sent < size and not await _writable(loop, fds[0]):
                _reset(transport)
                raise SendTimeout(f"the client accepted nothing for {SEND_TIMEOUT:g}s")
    finally:
        if burst is None or burst.done():
            _close_after(fds, burst)
        else:
            burst.add_done_callback(partial(_close_after, fds))
        if was_reading and not transport.is_closing():
            transport.resume_reading()


async def _writable(loop: asyncio.AbstractEventLoop, sock_fd: int) -> bool:
    """Wait (on the loop's epoll, no thread) until the socket can take more; False after SEND_TIMEOUT.

    `sock_fd` is our duplicate: the transport's own number belongs to its reader. The watch is
    removed before returning, so the duplicate is never closed while the loop still watches it.
    """
    ready = loop.create_future()
    loop.add_writer(sock_fd, _set_once, ready)
    try:
        async with asyncio.timeout(SEND_TIMEOUT):
            await ready
    except TimeoutError:
        return False
    finally:
        loop.remove_writer(sock_fd)
    return True


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _send_fallback(transport: asyncio.Transport, file_fd: int, offset: int, count: int) -> None:
    """loop.sendfile (reads in a thread, writes through the transport, one buffer per transfer), a
    FALLBACK_PIECE at a time so that a piece not taken within SEND_TIMEOUT cuts the client."""
    loop = asyncio.get_running_loop()
    with os.fdopen(os.dup(file_fd), "rb", buffering=0) as file:  # its own offset: loop.sendfile seeks
        end = offset + count
        while offset < end:
            piece = min(end - offset, FALLBACK_PIECE)
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    sent = await loop.sendfile(transport, file, offset, piece)
            except TimeoutError:
                _reset(transport)
                raise SendTimeout(f"the client accepted less than {piece} bytes in {SEND_TIMEOUT:g}s") from None
            if sent < piece:
                raise FileShort("the file is shorter than its recorded size")
            offset += piece


def _reset(transport: asyncio.Transport) -> None:
    """Cut the connection with a reset: the bytes still queued for a client that reads nothing are
    dropped at once rather than kept (and retried) by the kernel after the close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _close_after(fds: tuple[int, ...], burst: asyncio.Future[int] | None) -> None:
    """Close a transfer's duplicate fds once its last burst is over; its outcome was either awaited or
    belongs to a transfer that was cancelled (the client is gone either way), so it is not logged."""
    if burst is not None and not burst.cancelled():
        burst.exception()
    for fd in fds:
        os.close(fd)
