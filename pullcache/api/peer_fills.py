"""GET /_pullcache/fills/<upstream>/<digest>: a fill this process fetches from its upstream, streamed to a
peer process that relays it to its own clients (pullthrough/fill_leases.py, peer_client.py).

Only peers may ask: a request must be signed with the cluster secret (cluster/signing.py), else 401 (no
signature) or 403 (a wrong or expired one). The body is the whole blob as it lands, sent from the fill's
file; its last byte goes out only once this process verified the digest and committed the blob, and a
fill that fails cuts the connection, so a peer never completes a transfer of wrong bytes. 404: no such
fill runs here (it ended, or never began); 502: it failed before its first byte.
"""
from __future__ import annotations

from contextlib import aclosing

from aiohttp import web
from aiohttp.typedefs import Handler

from pullcache.api.appkeys import CONFIG, PULLTHROUGH, ROUTE
from pullcache.api.sendfile import send_body
from pullcache.cache.fill import FillFailed
from pullcache.cluster.secret import peer_signing_key
from pullcache.cluster.signing import FILLS_PATH, BadSignature, RequestSigner, Unsigned
from pullcache.digests import Digest
from pullcache.mediatypes import OCTET_STREAM


def _handler(signer: RequestSigner | None) -> Handler:
    async def get_fill(request: web.Request) -> web.StreamResponse:
        request[ROUTE] = "peer_fill"
        if signer is None:
            raise web.HTTPForbidden(text="this process has no cluster secret: it serves no peers")
        try:
            signer.check(request.method, request.raw_path.split("?", 1)[0], request.headers)
        except Unsigned as exc:
            raise web.HTTPUnauthorized(text=str(exc)) from exc
        except BadSignature as exc:
            raise web.HTTPForbidden(text=str(exc)) from exc
        upstream = request.match_info["upstream"]
        try:
            digest = Digest.parse(request.match_info["digest"])
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        reader = await request.app[PULLTHROUGH].blobs.peer_reader(upstream, digest)
        if reader is None:
            raise web.HTTPNotFound(text=f"no fill of {digest} from {upstream} runs here")
        async with reader:
            try:
                size = await reader.started()
            except FillFailed as exc:
                raise web.HTTPBadGateway(text=str(exc)) from exc
            response = web.StreamResponse(headers={"Content-Type": OCTET_STREAM, "Docker-Content-Digest": str(digest)})
            if size is None:
                response.enable_chunked_encoding()
            else:
                response.content_length = size
            try:
                writer = await response.prepare(request)
                assert writer is not None
                async with aclosing(reader.spans()) as spans:
                    async for offset, count in spans:
                        await send_body(request, writer, reader.fileno(), offset, count, chunked=size is None)
                await response.write_eof()
            except (FillFailed, ConnectionError):
                if request.transport is not None:  # only a cut tells the peer the body is not whole
                    request.transport.abort()
            return response
    return get_fill


def setup(app: web.Application) -> None:
    """Register the endpoint; a cluster secret that is set but unusable raises ConfigError here."""
    key = peer_signing_key(app[CONFIG].cluster)
    signer = None if key is None else RequestSigner(key)
    app.router.add_route("GET", FILLS_PATH + "/{upstream}/{digest}", _handler(signer))
