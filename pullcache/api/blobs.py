"""Blob endpoints of local repositories, and the response every committed blob is sent with.

`blob_file_response` and `parse_range` are shared with the pull-through path (api/proxied.py):
a blob on disk goes out the same way whether it was pushed or cached, with sendfile, the
`Docker-Content-Digest` header and single-range support (206, or 416 with `bytes */size`).
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from pullcache.api.appkeys import SERVED_FROM, STORE
from pullcache.api.errors import RegistryError
from pullcache.api.names import check_digest
from pullcache.api.sendfile import send_file
from pullcache.api.targets import push_target, read_target
from pullcache.digests import Digest
from pullcache.mediatypes import OCTET_STREAM

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
    """A committed blob from disk: headers up front, body by sendfile on worker threads (api/sendfile.py;
    read/write in a thread for TLS), so a large layer costs the event loop nothing.

    Given a path, it opens the file itself when sending and answers BLOB_UNKNOWN if the file went in the
    meantime; given a file its caller opened (and closes), that file cannot go.
    """

    def __init__(self, source: Path | BinaryIO, digest: Digest, size: int, byte_range: ByteRange | None) -> None:
        super().__init__(status=206 if byte_range else 200, headers={
            **digest_headers(digest),
            "Content-Type": OCTET_STREAM,
            "Accept-Ranges": "bytes",
        })
        self._source = source
        self._offset = byte_range.start if byte_range else 0
        self.content_length = byte_range.length if byte_range else size
        if byte_range:
            self.headers["Content-Range"] = byte_range.content_range(size)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared or request.method == "HEAD" or not self.content_length:
            return await super().prepare(request)
        if not isinstance(self._source, Path):
            return await self._send(request, self._source)
        try:
            file = await asyncio.to_thread(open, self._source, "rb")
        except FileNotFoundError:
            # Deleted (GC of a local blob) after the caller's stat: answer as if it had never been there.
            return await self._vanished(request)
        try:
            return await self._send(request, file)
        finally:
            await asyncio.to_thread(file.close)

    async def _send(self, request: web.BaseRequest, file: BinaryIO) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        assert writer is not None and request.transport is not None and self.content_length is not None
        count = self.content_length
        await send_file(request.transport, file, self._offset, count)
        # sendfile bypasses the payload writer: keep its byte counts (body_length) truthful.
        writer.buffer_size += count
        writer.output_size += count
        await super().write_eof()
        return writer

    async def _vanished(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        error = RegistryError("BLOB_UNKNOWN", "blob unknown to registry").response()
        self.set_status(error.status)
        for header in ("Docker-Content-Digest", "ETag", "Accept-Ranges", "Content-Range"):
            self.headers.pop(header, None)
        self.content_type = "application/json"
        assert isinstance(error.body, bytes)
        self.content_length = len(error.body)
        writer = await super().prepare(request)
        await self.write(error.body)
        await super().write_eof()
        return writer


def blob_file_response(request: web.Request, source: Path | BinaryIO, digest: Digest,
                       size: int) -> web.StreamResponse:
    """The response for a committed blob of `size` bytes, at a path or in a file the caller keeps open
    until the response is sent: 200, 206 for a Range, 304 for a matching If-None-Match (a digest names
    one content forever), 416 raised for an unsatisfiable range. HEAD gets the same headers without a body."""
    if request.if_none_match and any(tag.value in (str(digest), "*") for tag in request.if_none_match):
        return web.Response(status=304, headers=digest_headers(digest))
    byte_range = parse_range(request.headers.get("Range"), size)
    return BlobFileResponse(source, digest, size, byte_range)


async def get_blob(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """GET/HEAD /v2/<name>/blobs/<digest>: a blob the repository holds."""
    digest = check_digest(reference)
    target = read_target(request, name)
    if not target.is_local:
        from pullcache.api import (
            proxied,  # here, not at the top: proxied imports this module
        )
        return await proxied.get_blob(request, target, digest)
    store = request.app[STORE]
    size = store.blob_size(digest)
    if size is None or not store.repository(target.store_name).has_blob_link(digest):
        raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in repository {name!r}",
                            detail={"digest": str(digest)})
    store.note_access(digest)
    request[SERVED_FROM] = "local"
    return blob_file_response(request, store.blob_path(digest), digest, size)


async def delete_blob(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """DELETE /v2/<name>/blobs/<digest>: the repository stops serving the blob; GC removes the file
    once no repository links it."""
    digest = check_digest(reference)
    target = push_target(request, name)
    if not await request.app[STORE].repository(target.store_name).unlink_blob(digest):
        raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in repository {name!r}",
                            detail={"digest": str(digest)})
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
