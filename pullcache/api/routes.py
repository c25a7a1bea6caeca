"""The /v2/ URL space: one catch-all route, split here into endpoint, repository name and argument.

Repository names contain slashes, so aiohttp's router cannot separate `<name>` from the endpoint;
this module matches the raw (still percent-encoded) path so that an encoded slash or dot can never
smuggle a traversal into a name.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Protocol
from urllib.parse import unquote

from aiohttp import web

from pullcache.api.appkeys import ROUTE
from pullcache.api.audited import AUDIT, audit
from pullcache.api.auth import Access
from pullcache.api.errors import DENIED, NAME_INVALID, NAME_UNKNOWN, UNSUPPORTED, RegistryError
from pullcache.api.names import check_name
from pullcache.api.notify import NOTIFIER, notify

Handler = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]


class Authorize(Protocol):
    async def __call__(self, request: web.Request, access: Access, name: str | None = None) -> None: ...


# (pattern over the raw path after /v2/, endpoint); first match wins, so uploads precede blobs.
_ENDPOINTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?P<name>.+)/manifests/(?P<arg>[^/]+)$"), "manifest"),
    (re.compile(r"^(?P<name>.+)/blobs/uploads/(?P<arg>[^/]*)$"), "upload"),
    (re.compile(r"^(?P<name>.+)/blobs/(?P<arg>[^/]+)$"), "blob"),
    (re.compile(r"^(?P<name>.+)/tags/(?P<arg>list)$"), "tags"),
    (re.compile(r"^(?P<name>.+)/referrers/(?P<arg>[^/]+)$"), "referrers"),
]


def access_of(method: str, endpoint: str | None) -> Access:
    """Reads are pulls; deleting a manifest or blob is a delete; anything else, and anything about an upload
    session (even its status or its cancelling), is a push."""
    if method in ("GET", "HEAD") and endpoint != "upload":
        return Access.PULL
    if method == "DELETE" and endpoint in ("manifest", "blob"):
        return Access.DELETE
    return Access.PUSH


@lru_cache(maxsize=4096)  # clients ask for the same few paths over and over; a refused name raises, uncached
def match_endpoint(raw_tail: str) -> tuple[str, str, str] | None:
    """(endpoint, name, argument) for the raw path after /v2/, or None if it is no endpoint."""
    for pattern, endpoint in _ENDPOINTS:
        match = pattern.match(raw_tail)
        if match:
            raw_name = match["name"]
            if "%" in raw_name:
                raise NAME_INVALID.error(f"repository name {unquote(raw_name)!r} contains "
                                         "percent-encoded characters", detail={"name": raw_name})
            return endpoint, check_name(raw_name), unquote(match["arg"])
    return None


def _audit_answer(request: web.Request, endpoint: str, name: str, argument: str,
                  response: web.StreamResponse, audit_pulls: bool, notify_pulls: bool) -> None:
    """Audit and notify what manifests.py does not see: blob deletes and manifest pulls (local or proxied;
    audited with log.audit_pulls, sent to endpoints that ask for pull events)."""
    if endpoint == "blob" and request.method == "DELETE" and response.status == 202:
        digest = response.headers.get("Docker-Content-Digest")
        if digest is not None:
            audit(request, "delete", "success", repository=name, reference=argument, digest=digest)
            notify(request, "delete", name, digest)
    elif endpoint == "manifest" and request.method == "GET" and response.status == 200:
        digest = response.headers.get("Docker-Content-Digest") if audit_pulls or notify_pulls else None
        if digest is None:
            return  # nobody records pulls (the common case): nothing to look up
        if audit_pulls:
            audit(request, "pull", "success", repository=name, reference=argument, digest=digest)
        if notify_pulls:  # content_length costs an ABC isinstance: a share of a cached pull
            notify(request, "pull", name, digest, tag=None if argument == digest else argument,
                   media_type=response.content_type, size=response.content_length)


def setup(app: web.Application, handlers: dict[tuple[str, str], Handler],
          base: Callable[[web.Request], Awaitable[web.StreamResponse]],
          catalog: Callable[[web.Request], Awaitable[web.StreamResponse]], authorize: Authorize) -> None:
    """Register /v2/, /v2/_catalog and the catch-all that dispatches to handlers[(endpoint, method)].

    Every request is authorized before a handler sees it (only a malformed name is answered first).
    """
    # Whether pulls are audited or sent as events is configuration: asked here once, not per pull.
    notifier = app.get(NOTIFIER)
    audit_pulls, notify_pulls = app[AUDIT].pulls, notifier is not None and notifier.wants("pull")

    async def dispatch(request: web.Request) -> web.StreamResponse:
        raw_tail = request.raw_path.split("?", 1)[0][len("/v2/"):]
        found = match_endpoint(raw_tail)
        if found is None:
            await authorize(request, access_of(request.method, None))
            raise NAME_UNKNOWN.error(f"no registry endpoint at {request.path}")
        endpoint, name, argument = found
        request[ROUTE] = endpoint
        await authorize(request, access_of(request.method, endpoint), name)
        method = "GET" if request.method == "HEAD" and (endpoint, "HEAD") not in handlers else request.method
        handler = handlers.get((endpoint, method))
        if handler is None:
            raise UNSUPPORTED.error(f"{request.method} is not supported on {endpoint} endpoints")
        try:
            response = await handler(request, name, argument)
        except RegistryError as exc:
            if exc.kind is DENIED:  # a write to an upstream name, or refused by local.deny_push / allow_push
                audit(request, access_of(request.method, endpoint).value, "denied", repository=name,
                      reason=exc.message)
            raise
        _audit_answer(request, endpoint, name, argument, response, audit_pulls, notify_pulls)
        return response

    async def base_route(request: web.Request) -> web.StreamResponse:
        request[ROUTE] = "base"
        await authorize(request, Access.LOGIN)
        return await base(request)

    async def catalog_route(request: web.Request) -> web.StreamResponse:
        request[ROUTE] = "catalog"
        await authorize(request, Access.PULL)
        return await catalog(request)

    # add_get answers HEAD too, with the same authorization: HEAD /v2/ is 200 like GET, as in Distribution.
    app.router.add_get("/v2/", base_route)
    app.router.add_get("/v2", base_route)
    app.router.add_get("/v2/_catalog", catalog_route)
    app.router.add_route("*", "/v2/{tail:.+}", dispatch)
