"""Blob upload endpoints: monolithic POST, POST then PUT, chunked PATCH, status, cancel, cross-repository mount.

Bodies are streamed into the store chunk by chunk, never read whole. A chunk either lands
completely or not at all (the store rolls a failed chunk back), so after any error the session's
`Range` is still the truth and the client can resume from it.

A session lives on the replica that started it. With `cluster.advertise`, its id names that replica, and a
request of it that reaches another replica is forwarded there (api/upload_forward.py, `_at_owner`). Every
Location is relative, so it works through whatever balancer the client came through.
"""
from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from pullcache.api.appkeys import RESOLVER, STORE
from pullcache.api.errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_OUT_OF_ORDER,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    SIZE_INVALID,
    UNSUPPORTED,
    RegistryError,
)
from pullcache.api.names import NAME_PATTERN, check_digest
from pullcache.api.routes import Handler
from pullcache.api.targets import push_target, repository_of
from pullcache.api.upload_forward import FORWARDER
from pullcache.cache.uploads import UploadGone, UploadSession
from pullcache.cache.writer import DigestMismatch
from pullcache.digests import Digest
from pullcache.resolver import Target

_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def _upload_location(target: Target, session: UploadSession) -> str:
    return f"/v2/{target.name}/blobs/uploads/{session.id}"


def _progress_headers(target: Target, session: UploadSession) -> dict[str, str]:
    """Where the upload continues and how much it holds (`0-0` for nothing yet, as Distribution says)."""
    return {
        "Location": _upload_location(target, session),
        "Docker-Upload-UUID": session.id,
        "Range": f"0-{max(session.size() - 1, 0)}",
    }


def _blob_created(target: Target, digest: Digest) -> web.Response:
    return web.Response(status=201, headers={"Location": f"/v2/{target.name}/blobs/{digest}",
                                             "Docker-Content-Digest": str(digest)})


def _digest_error(exc: DigestMismatch) -> RegistryError:
    return DIGEST_INVALID.error(f"uploaded {exc}", detail={"expected": str(exc.expected),
                                "actual": str(exc.actual)})


async def _counted(request: web.Request, expected: int | None) -> AsyncIterator[bytes]:
    """The request body; SIZE_INVALID if it is not `expected` bytes (when the client declared a length)."""
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
        if expected is not None and received > expected:
            break
        yield chunk
    if expected is not None and received != expected:
        raise SIZE_INVALID.error(f"chunk body has {'more than ' if received > expected else ''}"
                                 f"{received} bytes, its Content-Range says {expected}",
                                 detail={"expected": expected, "received": received})


def _chunk_length(request: web.Request, target: Target, session: UploadSession) -> int | None:
    """Check a chunk's Content-Range against the session: it must start where the upload ends.

    Returns the length the range declares (None without a Content-Range: a streamed chunk).
    """
    header = request.headers.get("Content-Range")
    if header is None:
        return None
    match = _CONTENT_RANGE.match(header.strip())
    if not match:
        raise BLOB_UPLOAD_INVALID.error(f"Content-Range {header!r} is not <start>-<end>",
                                        detail={"contentRange": header})
    start, end = int(match[1]), int(match[2])
    size = session.size()
    if start != size or end < start:
        raise BLOB_UPLOAD_OUT_OF_ORDER.error(f"Content-Range {header!r} does not continue the upload, "
                                             f"which holds {size} bytes: the next chunk starts at {size}",
                                             headers=_progress_headers(target, session),
                                             detail={"contentRange": header, "size": size})
    length = end - start + 1
    if request.content_length is not None and request.content_length != length:
        raise SIZE_INVALID.error(f"Content-Length {request.content_length} differs from the "
                                 f"{length} bytes of Content-Range {header!r}",
                                 detail={"contentLength": request.content_length, "contentRange": header})
    return length


def _upload_unknown(upload_id: str, message: str) -> RegistryError:
    return BLOB_UPLOAD_UNKNOWN.error(message, detail={"uuid": upload_id})


async def _session(request: web.Request, target: Target, upload_id: str) -> UploadSession:
    session = await request.app[STORE].uploads.get(upload_id, target.store_name) if upload_id else None
    if session is None or session.ended:
        raise _upload_unknown(upload_id, f"no upload {upload_id!r} in progress for repository {target.name!r}")
    return session


@asynccontextmanager
async def _holding(session: UploadSession) -> AsyncIterator[None]:
    """Hold session.lock for a request that changes the upload. It is unknown to the client if another
    request completed or cancelled it meanwhile, or if its folder turns out removed (GC)."""
    async with session.lock:
        if session.ended:
            raise _upload_unknown(session.id, f"upload {session.id!r} ended while this request waited")
        try:
            yield
        except UploadGone as exc:
            raise _upload_unknown(session.id, f"upload {session.id!r} was removed (idle too long)") from exc


async def _append_chunk(request: web.Request, target: Target, session: UploadSession) -> None:
    """Append the request's body to the session. Caller holds session.lock."""
    length = _chunk_length(request, target, session)
    await request.app[STORE].uploads.append(session, _counted(request, length))


async def _mountable(request: web.Request, digest: Digest, source: str | None) -> bool:
    """Whether `digest` may be linked in without an upload: the source repository has it (a local
    one by its link, an upstream one if the blob is cached), or, without `from`, the store does."""
    store = request.app[STORE]
    if store.blob_size(digest) is None:
        return False
    if source is None:
        return True  # the spec lets a registry find the blob by itself
    if not NAME_PATTERN.match(source):
        return False  # like Distribution: a bad `from` means no mount, and an ordinary upload starts
    source_target = request.app[RESOLVER].resolve(source)
    return await repository_of(request, source_target).holds_blob(digest)


def _at_owner(handler: Handler) -> Handler:
    """Serve a request of a session here when this store holds it (whichever worker of this host started
    it); forward it when its id names another replica as its owner."""
    @functools.wraps(handler)
    async def at_owner(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
        forwarder = request.app.get(FORWARDER)
        owner = forwarder.elsewhere(request, upload_id) if forwarder is not None else None
        if forwarder is not None and owner is not None and not await request.app[STORE].uploads.holds(upload_id):
            return await forwarder.forward(request, owner, upload_id)
        return await handler(request, name, upload_id)
    return at_owner


async def start_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    """POST /v2/<name>/blobs/uploads/ [?digest= | ?mount=&from=]."""
    if upload_id:
        raise UNSUPPORTED.error("POST starts uploads at /blobs/uploads/; continue one with "
                                "PATCH or PUT")
    target = push_target(request, name)
    store = request.app[STORE]
    if "mount" in request.query:
        digest = check_digest(request.query["mount"])
        if await _mountable(request, digest, request.query.get("from")) and \
                await store.mount_blob(target.store_name, digest):
            return _blob_created(target, digest)
    elif "digest" in request.query and request.body_exists:
        digest = check_digest(request.query["digest"])
        try:
            await store.push_blob(target.store_name, request.content.iter_any(), digest, size=request.content_length)
        except DigestMismatch as exc:
            raise _digest_error(exc) from exc
        except ValueError as exc:
            raise SIZE_INVALID.error(f"blob {exc}",
                                     detail={"contentLength": request.content_length}) from exc
        return _blob_created(target, digest)
    forwarder = request.app.get(FORWARDER)
    session = await store.uploads.create(target.store_name, forwarder.owners.suffix if forwarder else "")
    return web.Response(status=202, headers=_progress_headers(target, session))


@_at_owner
async def patch_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    """PATCH /v2/<name>/blobs/uploads/<uuid>: one more chunk (Content-Range) or a streamed body."""
    target = push_target(request, name)
    session = await _session(request, target, upload_id)
    async with _holding(session):
        await _append_chunk(request, target, session)
    return web.Response(status=202, headers=_progress_headers(target, session))


@_at_owner
async def finish_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    """PUT /v2/<name>/blobs/uploads/<uuid>?digest=: the last chunk, if any, then verify and commit.

    A digest that does not match ends the session: its bytes are discarded with it.
    """
    target = push_target(request, name)
    if "digest" not in request.query:
        raise DIGEST_INVALID.error("closing an upload needs ?digest=<digest of the whole blob>")
    digest = check_digest(request.query["digest"])
    session = await _session(request, target, upload_id)
    store = request.app[STORE]
    async with _holding(session):
        if request.body_exists:
            await _append_chunk(request, target, session)
        try:
            await store.complete_upload(session, digest)
        except DigestMismatch as exc:
            raise _digest_error(exc) from exc
    return _blob_created(target, digest)


@_at_owner
async def upload_status(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    """GET /v2/<name>/blobs/uploads/<uuid>: 204 with the Range received so far."""
    target = push_target(request, name)
    session = await _session(request, target, upload_id)
    return web.Response(status=204, headers=_progress_headers(target, session))


@_at_owner
async def cancel_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    """DELETE /v2/<name>/blobs/uploads/<uuid>: abandon the upload and its bytes."""
    target = push_target(request, name)
    session = await _session(request, target, upload_id)
    async with _holding(session):
        await request.app[STORE].uploads.remove(session)
    return web.Response(status=204)
