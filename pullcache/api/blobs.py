"""Blob endpoints: GET/HEAD of a repository's blob, whichever repository answers it (api/targets.py), and
DELETE of a pushed one. The response is api/blob_response.py's, the same for every blob.
"""
from __future__ import annotations

from aiohttp import web

from pullcache.api.appkeys import STORE
from pullcache.api.blob_response import send_blob
from pullcache.api.errors import BLOB_UNKNOWN, RegistryError
from pullcache.api.names import check_digest
from pullcache.api.targets import push_target, read_repository
from pullcache.api.upstream_errors import upstream_error
from pullcache.digests import Digest
from pullcache.upstream.errors import UpstreamError


def _unknown(name: str, digest: Digest) -> RegistryError:
    return BLOB_UNKNOWN.error(f"blob {digest} is not in repository {name!r}", detail={"digest": str(digest)})


async def get_blob(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """GET/HEAD /v2/<name>/blobs/<digest>: a blob the repository holds."""
    digest = check_digest(reference)
    _, repository = read_repository(request, name)
    try:
        body = await repository.blob(digest, head=request.method == "HEAD")
    except UpstreamError as exc:  # an upstream's refusal or outage, or a 404 of it remembered
        raise upstream_error(exc, BLOB_UNKNOWN, f"blob {digest}") from exc
    if body is None:
        raise _unknown(name, digest)
    async with body:
        return await send_blob(request, body, digest)


async def delete_blob(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """DELETE /v2/<name>/blobs/<digest>: the repository stops serving the blob; GC removes the file
    once no repository links it."""
    digest = check_digest(reference)
    target = push_target(request, name)
    if not await request.app[STORE].repository(target.store_name).unlink_blob(digest):
        raise _unknown(name, digest)
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
