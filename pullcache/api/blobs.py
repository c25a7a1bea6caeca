"""Blob endpoints: GET/HEAD of a repository's blob (an upstream's through api/proxied.py), DELETE of a
local one. The response itself is api/blob_response.py's, the same for every committed blob.
"""
from __future__ import annotations

from aiohttp import web

from pullcache.api import proxied
from pullcache.api.appkeys import SERVED_FROM, STORE
from pullcache.api.blob_response import blob_file_response
from pullcache.api.errors import BLOB_UNKNOWN
from pullcache.api.names import check_digest
from pullcache.api.targets import push_target, read_target


async def get_blob(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """GET/HEAD /v2/<name>/blobs/<digest>: a blob the repository holds."""
    digest = check_digest(reference)
    target = read_target(request, name)
    if not target.is_local:
        return await proxied.get_blob(request, target, digest)
    store = request.app[STORE]
    blob = None
    if store.repository(target.store_name).has_blob_link(digest):
        blob = await store.open_blob(digest, body=request.method == "GET")
    if blob is None:
        raise BLOB_UNKNOWN.error(f"blob {digest} is not in repository {name!r}",
                                 detail={"digest": str(digest)})
    async with blob:
        store.note_access(digest)
        request[SERVED_FROM] = "local"
        response = blob_file_response(request, blob, digest)
        await response.prepare(request)  # sent while the blob is open
        return response


async def delete_blob(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """DELETE /v2/<name>/blobs/<digest>: the repository stops serving the blob; GC removes the file
    once no repository links it."""
    digest = check_digest(reference)
    target = push_target(request, name)
    if not await request.app[STORE].repository(target.store_name).unlink_blob(digest):
        raise BLOB_UNKNOWN.error(f"blob {digest} is not in repository {name!r}",
                                 detail={"digest": str(digest)})
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
