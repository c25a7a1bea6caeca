"""How a blob goes out over HTTP, one path for whatever repository answered it (cache/registry.py's BlobBody).

A committed blob, pushed or cached, goes by sendfile on worker threads, with the `Docker-Content-Digest`
header, single-range support (206, or 416 with `bytes */size`) and 304 for a matching If-None-Match. A
blob still arriving streams from its fill's file by sendfile too; if the fill fails after the headers went
out the connection is cut, so the client sees a broken transfer and never wrong bytes. Body bytes are
counted by where they came from (note_served), for manifests too.
"""
from __future__ import annotations

import logging
import re
from contextlib import aclosing
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from pullcache import metrics
from pullcache.api.appkeys import CACHE_RESULT, SERVED_FROM
from pullcache.api.sendfile import FileShort, send_body
from pullcache.api.upstream_errors import fill_error
from pullcache.cache.backends import OpenedBlob
from pullcache.cache.fill import FillFailed, FillReader
from pullcache.cache.registry import LOCAL, BlobBody
from pullcache.digests import Digest
from pullcache.mediatypes import OCTET_STREAM
from pullcache.metric_children import child

log = logging.getLogger("pullcache.api")

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in HTTP

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def range_not_satisfiable(size: int) -> web.HTTPRequestRangeNotSatisfiable:
    return web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"},
                                              text=f"the blob has {size} bytes")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a `Range` header asks of `size` bytes, clamped to them; None for the whole.

    Malformed and multi-range headers are ignored, as RFC 9110 allows, so the client gets a 200
    with everything. A range starting at or past the end raises 416 (an aiohttp HTTPException
    carrying `Content-Range: bytes */size`), which the caller lets propagate.
    """
    match = _RANGE.match(header or "")
    if not match or not (match[1] or match[2]):
        return None
    first, last = match[1], match[2]
    if not first:  # suffix range: the last N bytes
        if int(last) == 0 or size == 0:
            raise range_not_satisfiable(size)
        return ByteRange(max(0, size - int(last)), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise range_not_satisfiable(size)
    return ByteRange(start, min(int(last) if last else size - 1, size - 1))


def digest_headers(digest: Digest) -> dict[str, str]:
    return {"Docker-Content-Digest": str(digest), "ETag": f'"{digest}"'}


class BlobFileResponse(web.StreamResponse):
    """A committed blob: headers up front, then the body by sendfile on worker threads from a local file
    (api/sendfile.py; read/write in a thread for TLS), so a large layer costs the event loop nothing, or
    streamed from the storage backend when it has no local file. The caller keeps the blob open until
    the response is prepared."""

    def __init__(self, blob: OpenedBlob, digest: Digest, byte_range: ByteRange | None) -> None:
        super().__init__(status=206 if byte_range else 200, headers={
            **digest_headers(digest),
            "Content-Type": OCTET_STREAM,
            "Accept-Ranges": "bytes",
        })
        self._blob = blob
        self._offset = byte_range.start if byte_range else 0
        self.content_length = byte_range.length if byte_range else blob.size
        if byte_range:
            self.headers["Content-Range"] = byte_range.content_range(blob.size)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared or request.method == "HEAD" or not self.content_length:
            return await super().prepare(request)
        writer = await super().prepare(request)
        assert writer is not None and self.content_length is not None
        if self._blob.file is not None:
            await send_body(request, writer, self._blob.file.fileno(), self._offset, self.content_length)
        else:
            assert self._blob.read is not None, "a blob to send has a file or a stream"
            async for chunk in self._blob.read(self._offset, self.content_length):
                await self.write(chunk)
        await super().write_eof()
        return writer


def blob_file_response(request: web.Request, blob: OpenedBlob, digest: Digest) -> web.StreamResponse:
    """The response for a committed blob the caller keeps open until it is sent: 200, 206 for a Range, 304
    for a matching If-None-Match (a digest names one content forever), 307 to the storage's own URL when
    the store gives one (redirect mode), 416 raised for an unsatisfiable range. HEAD gets the same
    headers without a body."""
    if request.if_none_match and any(tag.value in (str(digest), "*") for tag in request.if_none_match):
        return web.Response(status=304, headers=digest_headers(digest))
    if blob.url is not None:
        return web.Response(status=307, headers={**digest_headers(digest), "Location": blob.url})
    byte_range = parse_range(request.headers.get("Range"), blob.size)
    return BlobFileResponse(blob, digest, byte_range)


def note_served(request: web.Request, source: str, size: int) -> None:
    """Count `size` body bytes as served from `source` (cache/registry.py's labels). A local repository's are
    counted by the access log once they went out (SERVED_FROM); pull-through's here, as they are sent."""
    if source == LOCAL:
        request[SERVED_FROM] = LOCAL
    elif size:
        child(metrics.bytes_served, source).inc(size)


async def send_blob(request: web.Request, body: BlobBody, digest: Digest) -> web.StreamResponse:
    """Answer with the blob a repository gave, sending it all while the caller keeps `body` open."""
    if body.result is not None:
        request[CACHE_RESULT] = body.result
    if body.reader is not None:
        return await _stream_fill(request, body.reader, digest, body.source)
    if body.blob is None:  # a HEAD answered from the size alone
        assert body.size is not None, "a blob body without blob or reader has a size"
        return web.Response(headers={**digest_headers(digest), "Content-Type": OCTET_STREAM,
                                     "Content-Length": str(body.size), "Accept-Ranges": "bytes"})
    response = blob_file_response(request, body.blob, digest)
    try:
        await response.prepare(request)  # sends it all while the file is open; counted once it went out
    except ConnectionError as exc:
        # The client went away mid-file, or the file came up short: the headers are gone, so only cutting
        # the connection tells a client still there that the body is not whole.
        if isinstance(exc, FileShort):
            log.error("blob %s is damaged: %s; the transfer was cut", digest, exc)
        if request.transport is not None:
            request.transport.abort()
        return response
    if request.method == "GET" and response.status in (200, 206) and response.content_length:
        note_served(request, body.source, response.content_length)
    return response


async def _stream_fill(request: web.Request, reader: FillReader, digest: Digest, source: str) -> web.StreamResponse:
    """The blob (or the Range asked for) from a fill, each span sent from the file as soon as it is on disk,
    at the client's pace (api/sendfile.py: nothing held in memory per client, a stalled one cut).

    The headers wait for the first byte (or the commit of an empty blob): a fill that fails before it,
    an upstream that sent headers and nothing else, is still answered with an error.
    """
    try:
        size = await reader.begun()
    except FillFailed as exc:
        raise fill_error(exc, f"blob {digest}") from exc
    byte_range = parse_range(request.headers.get("Range"), size) if size is not None else None
    response = web.StreamResponse(status=206 if byte_range else 200, headers={
        **digest_headers(digest), "Content-Type": OCTET_STREAM, "Accept-Ranges": "bytes"})
    start, end = (byte_range.start, byte_range.end + 1) if byte_range else (0, size)
    if byte_range is not None and size is not None:
        response.headers["Content-Range"] = byte_range.content_range(size)
    if end is None:
        response.enable_chunked_encoding()  # the upstream did not say how big it is
    else:
        response.content_length = end - start
    try:
        writer = await response.prepare(request)
        assert writer is not None
        async with aclosing(reader.spans(start, end)) as spans:
            async for offset, count in spans:
                await send_body(request, writer, reader.fileno(), offset, count, chunked=end is None)
                note_served(request, source, count)
        await response.write_eof()
    except (FillFailed, ConnectionError):
        # Headers are gone; only cutting the connection tells the client the body is not whole (one that went
        # away, or accepted nothing for the send timeout, is cut already). The fill carries on for the others.
        if request.transport is not None:
            request.transport.abort()
    return response
