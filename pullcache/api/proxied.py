"""HTTP answers for repositories of upstreams: manifests and blobs through the pull-through cache, referrers
from the upstream itself.

The API handlers call get_manifest / get_blob when the resolver says a name is not local. A cached
blob goes out like any committed blob (sendfile, Range); a blob still arriving streams from its
fill's file by sendfile too, and if the fill fails after the headers went out the connection is cut,
so the client sees a broken transfer and never wrong bytes. Upstream failures become OCI errors a
client can act on.
"""
from __future__ import annotations

from contextlib import aclosing
from functools import partial
from typing import Any

from aiohttp import web

from pullcache.api.appkeys import CACHE_RESULT, PULLTHROUGH
from pullcache.api.blob_response import blob_file_response, digest_headers, parse_range
from pullcache.api.errors import (
    BLOB_UNKNOWN,
    DENIED,
    INSUFFICIENT_STORAGE,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    TOOMANYREQUESTS,
    UNAVAILABLE,
    UPSTREAM_BAD_ANSWER,
    UPSTREAM_TIMEOUT,
    ErrorCode,
    RegistryError,
)
from pullcache.api.names import check_reference
from pullcache.api.negotiation import negotiate, parse_accept
from pullcache.api.sendfile import send_body
from pullcache.cache.files import StoreFullError
from pullcache.cache.fill import FillFailed, FillReader
from pullcache.digests import Digest
from pullcache.mediatypes import OCTET_STREAM
from pullcache.pullthrough import BlobTooLarge, PullThrough, stats
from pullcache.resolver import Target
from pullcache.upstream.errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)


async def get_manifest(request: web.Request, target: Target, reference: str | Digest) -> web.StreamResponse:
    """GET/HEAD /v2/<name>/manifests/<reference> of an upstream repository.

    Negotiated as for a local repository (api/negotiation.py): a tag naming an index the client does not
    accept is answered with the index's linux/amd64 manifest, which comes through the cache like any other.
    """
    if not isinstance(reference, Digest):
        reference = check_reference(reference)
    head = request.method == "HEAD"
    manifests = _pullthrough(request).manifests
    accept = request.headers.getall("Accept", [])
    try:
        answer = await manifests.get(target, reference, accept, head=head)
        request[CACHE_RESULT] = answer.result  # what was counted: the request, not each manifest negotiation loads
        answer = await negotiate(answer, reference, parse_accept(accept),
                                 partial(manifests.get, target, accept=accept, count=False))
    except UpstreamError as exc:
        raise upstream_error(exc, MANIFEST_UNKNOWN, f"manifest {reference} of {target.repository}") from exc
    headers = {**digest_headers(answer.digest), "Content-Type": answer.media_type}
    if head:
        return web.Response(headers={**headers, "Content-Length": str(answer.size)})
    assert answer.body is not None
    fresh = answer.result in (stats.MISS, stats.COALESCED)
    stats.served(stats.FROM_UPSTREAM if fresh else stats.FROM_CACHE, len(answer.body))
    return web.Response(body=answer.body, headers=headers)


async def get_blob(request: web.Request, target: Target, digest: Digest) -> web.StreamResponse:
    """GET/HEAD /v2/<name>/blobs/<digest> of an upstream repository."""
    blobs = _pullthrough(request).blobs
    if request.method == "HEAD":
        # A HEAD is how a push asks whether to upload. For a bare name that only falls back to the
        # default upstream, the answer must be ours: the upstream's copy (or its refusal) of a
        # same-named repository would make the client skip an upload or abort its push.
        try:
            found = await blobs.head(target, digest, ask_upstream=not target.via_default)
        except UpstreamError as exc:
            raise upstream_error(exc, BLOB_UNKNOWN, f"blob {digest}") from exc
        if found is None:
            raise BLOB_UNKNOWN.error(f"blob {digest} is not stored here", detail={"digest": str(digest)})
        size, result = found
        request[CACHE_RESULT] = result
        return web.Response(headers={**digest_headers(digest), "Content-Type": OCTET_STREAM,
                                     "Content-Length": str(size), "Accept-Ranges": "bytes"})
    try:
        opened = await blobs.open(target, digest)
    except UpstreamNotFound as exc:  # a 404 of this repository, remembered
        raise upstream_error(exc, BLOB_UNKNOWN, f"blob {digest}") from exc
    async with opened as source:
        request[CACHE_RESULT] = source.result
        if source.reader is not None:
            return await _stream_fill(request, source.reader, digest)
        assert source.blob is not None
        response = blob_file_response(request, source.blob, digest)
        try:
            await response.prepare(request)  # sends it all while the file is open; counted once it went out
        except ConnectionError:
            return response  # the client went away mid-file
        if response.status in (200, 206) and response.content_length:
            stats.served(stats.FROM_CACHE, response.content_length)
        return response


async def _stream_fill(request: web.Request, reader: FillReader, digest: Digest) -> web.StreamResponse:
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
                stats.served(stats.FROM_UPSTREAM, count)
        await response.write_eof()
    except (FillFailed, ConnectionError):
        # Headers are gone; only cutting the connection tells the client the body is not whole (one that went
        # away, or accepted nothing for the send timeout, is cut already). The fill carries on for the others.
        if request.transport is not None:
            request.transport.abort()
    return response


async def get_referrers(target: Target, subject: Digest) -> list[dict[str, Any]]:
    """GET /v2/<name>/referrers/<digest> of an upstream repository: the upstream's list, asked each time.

    Nothing is cached: signatures and SBOMs are attached to an image after it was pushed, and a verifier
    must see them as soon as the upstream does. Clients ask for referrers rarely next to blobs.
    """
    assert target.upstream is not None
    try:
        return await target.upstream.get_referrers(target.repository, str(subject))
    except UpstreamError as exc:
        raise upstream_error(exc, NAME_UNKNOWN, f"the referrers of {subject}") from exc


def _pullthrough(request: web.Request) -> PullThrough:
    return request.app[PULLTHROUGH]


def fill_error(exc: FillFailed, what: str) -> Exception:
    """What a request answers when the fill it waited on failed before sending anything."""
    cause = exc.cause
    if isinstance(cause, UpstreamError):
        return upstream_error(cause, BLOB_UNKNOWN, what)
    if isinstance(cause, StoreFullError):
        return cause  # the error middleware answers 507
    if isinstance(cause, BlobTooLarge):
        return INSUFFICIENT_STORAGE.error(str(cause), detail={"digest": str(cause.digest)})
    return UNAVAILABLE.error(f"fetching {what} failed: {cause}")


def upstream_error(exc: UpstreamError, unknown: ErrorCode, what: str) -> RegistryError:
    """An upstream failure as the OCI error a client sees (pullcache had nothing cached to answer with).

    A refusal by the upstream (401/403 after authenticating) becomes 403 DENIED, not 401: the client
    cannot fix pullcache's upstream credentials by logging in to pullcache.
    """
    upstream = exc.upstream
    if isinstance(exc, UpstreamNotFound):
        return unknown.error(f"{what} is not known to upstream {upstream}", detail={"upstream": upstream})
    if isinstance(exc, UpstreamRateLimited):
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
        return TOOMANYREQUESTS.error(f"upstream {upstream} is rate-limiting pulls and {what} is not "
                                     f"cached; try again later", headers=headers, detail={"upstream": upstream})
    if isinstance(exc, UpstreamUnauthorized):
        return DENIED.error(f"upstream {upstream} refused access to {what} ({exc.message}); the "
                            "repository is private or missing, or pullcache's credentials for it lack access",
                            detail={"upstream": upstream})
    if isinstance(exc, UpstreamTimeout):
        return UPSTREAM_TIMEOUT.error(f"upstream {upstream} timed out serving {what}: {exc.message}",
                                      detail={"upstream": upstream})
    if isinstance(exc, UpstreamUnavailable):
        return UNAVAILABLE.error(f"upstream {upstream} is unavailable for {what}: {exc.message}",
                                 detail={"upstream": upstream})
    return UPSTREAM_BAD_ANSWER.error(f"upstream {upstream} answered badly for {what}: {exc.message}",
                                     detail={"upstream": upstream})
