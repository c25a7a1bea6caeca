"""Upload requests forwarded to the replica that holds the session: any request, any replica.

An upload's bytes and its running hash live on the replica that started it; its id names that replica
(cluster/upload_owners.py). A PATCH, PUT, GET or DELETE of a session this replica does not hold, whose id
names another, is sent there: the same method, path, query and body, the body streamed as it arrives,
never buffered, to `<owner>/_pullcache/uploads/v2/...`, signed with the cluster secret (cluster/signing.py,
over the method and the path with its query, so a PUT's ?digest= is signed too). The owner answers it as
its own request and its answer (status, Location, Range, Docker-Upload-UUID, error body) is passed back
unchanged. The client was authorized by the replica it reached; the owner trusts the signature instead,
and refuses an unsigned request (401) or a wrongly signed or expired one (403).

An owner that cannot be reached took the session with it: 404 BLOB_UPLOAD_UNKNOWN, saying so, and the
client starts the upload again.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler as WebHandler
from multidict import CIMultiDict
from yarl import URL

from pullcache.api.appkeys import CONFIG, ROUTE
from pullcache.api.errors import BLOB_UPLOAD_UNKNOWN
from pullcache.api.routes import Handler, match_endpoint
from pullcache.cluster.secret import peer_signing_key
from pullcache.cluster.signing import BadSignature, RequestSigner, Unsigned
from pullcache.cluster.upload_owners import UPLOADS_PATH, UploadOwners, upload_owners

log = logging.getLogger("pullcache.cluster")
CONNECT_TIMEOUT = 5.0  # a replica on the same network answers at once, or is gone
READ_TIMEOUT = 600.0  # the owner is silent while it commits the blob to the bucket: minutes for a big one
MAX_CONNECTIONS = 64
# What the owner needs of the client's request; Authorization is not sent: this replica checked it.
_REQUEST_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "User-Agent")
_HOP_BY_HOP = frozenset(h.lower() for h in ("Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length",
                                            "Date", "Server"))
FORWARDED = web.RequestKey("upload_forwarded", bool)  # set on the owner: answer here, never forward again
_FORWARDED_METHODS = frozenset({"GET", "PATCH", "PUT", "DELETE"})  # a session's requests; HEAD is answered as GET


class UploadForwarder:
    """Sends a request of a session held elsewhere to its owner, and relays the answer."""

    def __init__(self, owners: UploadOwners, signer: RequestSigner) -> None:
        self.owners = owners
        self._signer = signer
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on the serving loop, on first use
            self._session = aiohttp.ClientSession(
                auto_decompress=False, connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT))
        return self._session

    def elsewhere(self, request: web.Request, upload_id: str) -> str | None:
        """The other replica `upload_id` names as its owner; None if it names this one or none, or if this
        request was forwarded here already."""
        return None if request.get(FORWARDED) else self.owners.elsewhere(upload_id)

    async def forward(self, request: web.Request, owner: str, upload_id: str) -> web.Response:
        path = UPLOADS_PATH + request.raw_path
        headers = {name: request.headers[name] for name in _REQUEST_HEADERS if name in request.headers}
        headers.update(self._signer.headers(request.method, path))
        body = _streamed(request) if request.body_exists else None
        try:
            async with self._client().request(request.method, URL(owner + path, encoded=True), headers=headers,
                                              data=body, allow_redirects=False) as response:
                answer = await response.read()
                relayed = CIMultiDict((k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP)
                return web.Response(status=response.status, headers=relayed, body=answer or None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("upload %s: its owner %s cannot be reached: %s", upload_id, owner, exc or type(exc).__name__)
            raise BLOB_UPLOAD_UNKNOWN.error(
                f"upload {upload_id!r} is held by the replica at {owner}, which cannot be reached "
                f"({exc or type(exc).__name__}): an upload lives on the replica that started it and ends with "
                "it; start the upload again", detail={"uuid": upload_id, "owner": owner}) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _streamed(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


def _owner_handler(signer: RequestSigner, handlers: Mapping[tuple[str, str], Handler]) -> WebHandler:
    """The owner's side: check the signature, then answer as the upload endpoint would."""
    async def forwarded(request: web.Request) -> web.StreamResponse:
        request[ROUTE] = "upload_forward"
        try:
            signer.check(request.method, request.raw_path, request.headers)
        except Unsigned as exc:
            raise web.HTTPUnauthorized(text=str(exc)) from exc
        except BadSignature as exc:
            raise web.HTTPForbidden(text=str(exc)) from exc
        found = match_endpoint(request.raw_path.split("?", 1)[0][len(UPLOADS_PATH + "/v2/"):])
        method = "GET" if request.method == "HEAD" else request.method
        handler = handlers.get(("upload", method)) if found is not None and found[0] == "upload" \
            and method in _FORWARDED_METHODS else None
        if found is None or handler is None:
            raise web.HTTPNotFound(text="no upload endpoint at this path")
        request[FORWARDED] = True
        return await handler(request, found[1], found[2])
    return forwarded


FORWARDER = web.AppKey("upload_forwarder", UploadForwarder)


def setup(app: web.Application, handlers: Mapping[tuple[str, str], Handler]) -> None:
    """With cluster.advertise and a cluster secret: owner-naming upload ids, forwarding, and the signed path
    owners take forwarded requests on. Without them nothing is registered and ids stay plain UUIDs."""
    config = app[CONFIG]
    owners = upload_owners(config)
    key = peer_signing_key(config.cluster)
    if owners is None or key is None:
        return
    signer = RequestSigner(key)
    forwarder = UploadForwarder(owners, signer)
    app[FORWARDER] = forwarder

    async def close(app: web.Application) -> None:
        await forwarder.close()
    app.on_cleanup.append(close)
    app.router.add_route("*", UPLOADS_PATH + "/v2/{tail:.+}", _owner_handler(signer, handlers))
