"""In-process fakes of what pullcache talks to upstream, with hooks to make them misbehave.

- TokenServer: a Docker token realm that issues opaque tokens per scope, optionally demands Basic
  credentials, and can revoke what it issued (to simulate expiry on the registry's side).
- FakeRegistry: the read side of the distribution API (manifests, blobs; GET and HEAD; the referrers API
  when `referrers` is a dict, else a 404 as from a registry without it) that demands Bearer tokens from a
  TokenServer, Basic credentials, or nothing; `faults[path]` replaces the answer for one path with any
  handler (errors, redirects, stalls).
- BlobHost: a CDN that serves blob bytes after a redirect and records what it was sent.
- Stall: a handler that sends headers and part of a body, then goes silent until released.

Every fake records each request in `seen`, so tests can assert what reached which host.
All of them bind 127.0.0.1 through pytest-aiohttp's `aiohttp_server`.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict, MultiDict

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ServerFactory = Callable[..., Awaitable[Any]]  # pytest-aiohttp's aiohttp_server

_ROUTE = re.compile(r"/v2/(?P<repo>.+)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    query: MultiDict[str]
    headers: CIMultiDict[str]


class _Fake:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.url = ""
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._record)

    async def start(self, aiohttp_server: ServerFactory, host: str = "127.0.0.1") -> Self:
        """Serve on 127.0.0.1; `host` is the name used in self.url (e.g. localhost, to look like another host)."""
        server = await aiohttp_server(self.app)
        self.url = f"http://{host}:{server.port}"
        return self

    async def _record(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, request.query.copy(), CIMultiDict(request.headers)))
        return await self.handle(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


class TokenServer(_Fake):
    """GET /token?service=..&scope=.. -> {"token": "token-N", "expires_in": ...}."""

    def __init__(self, *, expires_in: float | None = 300, field: str = "token",
                 credentials: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.expires_in = expires_in
        self.field = field
        self.credentials = credentials  # when set, only these Basic credentials get a token
        self.issued: dict[str, set[str]] = {}  # token -> scopes it grants; the registry checks here
        self._numbers = itertools.count(1)

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def revoke_all(self) -> None:
        self.issued.clear()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.credentials is not None and request.headers.get("Authorization") != basic(*self.credentials):
            return web.json_response({"details": "incorrect username or password"}, status=401)
        token = f"token-{next(self._numbers)}"
        self.issued[token] = set(request.query.getall("scope", []))
        body: dict[str, Any] = {self.field: token}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)


class FakeRegistry(_Fake):
    """Manifests and blobs by repository, behind Bearer tokens (tokens=...), Basic (credentials=...) or nothing."""

    def __init__(self, *, tokens: TokenServer | None = None, credentials: tuple[str, str] | None = None,
                 service: str = "fake-registry") -> None:
        super().__init__()
        self.tokens = tokens
        self.credentials = credentials
        self.service = service
        self.realm: str | None = None  # overrides tokens.realm in the challenge
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.faults: dict[str, Handler] = {}  # request path -> handler answering instead (after auth)
        # (repo, subject digest) -> descriptors the referrers API lists; None: no referrers API (404)
        self.referrers: dict[tuple[str, str], list[dict[str, Any]]] | None = None
        self.extra_headers: dict[str, str] = {}  # added to every successful answer

    def add_manifest(self, repo: str, tag: str, body: bytes,
                     media_type: str = "application/vnd.oci.image.manifest.v1+json") -> str:
        digest = sha256(body)
        self.manifests[(repo, tag)] = self.manifests[(repo, digest)] = (body, media_type)
        return digest

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def _challenge(self, repo: str) -> str:
        if self.tokens is None:
            return 'Basic realm="fake-registry"'
        realm = self.realm or self.tokens.realm
        return f'Bearer realm="{realm}",service="{self.service}",scope="repository:{repo}:pull"'

    def _authorized(self, request: web.Request, repo: str) -> bool:
        header = request.headers.get("Authorization", "")
        if self.tokens is not None:
            token = header[len("Bearer "):] if header.startswith("Bearer ") else ""
            return f"repository:{repo}:pull" in self.tokens.issued.get(token, set())
        if self.credentials is not None:
            return header == basic(*self.credentials)
        return True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        match = _ROUTE.fullmatch(request.path)
        if match is None:
            return web.json_response({"errors": [{"code": "UNSUPPORTED", "message": "not faked"}]}, status=404)
        repo, kind, ref = match["repo"], match["kind"], match["ref"]
        if not self._authorized(request, repo):
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, status=401,
                headers={"WWW-Authenticate": self._challenge(repo)})
        if request.path in self.faults:
            return await self.faults[request.path](request)
        if kind == "referrers":
            if self.referrers is None:
                return web.Response(status=404, text="404 page not found\n")  # what Distribution 2.8 answers
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.referrers.get((repo, ref), [])}
            return web.json_response(index, content_type=OCI_INDEX)
        if kind == "manifests":
            if (repo, ref) not in self.manifests:
                return web.json_response(
                    {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}, status=404)
            body, media_type = self.manifests[(repo, ref)]
            headers = {"Content-Type": media_type, "Docker-Content-Digest": sha256(body), **self.extra_headers}
            return web.Response(body=body, headers=headers)
        if ref not in self.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}, status=404)
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": ref, **self.extra_headers}
        return web.Response(body=self.blobs[ref], headers=headers)


class BlobHost(_Fake):
    """A CDN: GET/HEAD /blobs/<digest> -> the bytes, whatever the request carries."""

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        data = self.blobs.get(request.path.rsplit("/", 1)[-1])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")


def redirect(location: str, status: int = 307) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})
    return handler


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    """A handler answering status with a JSON body (or raw bytes)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if isinstance(body, bytes):
            return web.Response(status=status, body=body, headers=headers)
        return web.Response(status=status, text=json.dumps(body or {}), content_type="application/json",
                            headers=headers)
    return handler


class Stall:
    """Sends headers and the first `after` bytes of body, sets `sent`, then says nothing until `release` is set."""

    def __init__(self, body: bytes, after: int, headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.after = after
        self.headers = headers or {}
        self.sent = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(self.body)), **self.headers})
        await response.prepare(request)
        await response.write(self.body[:self.after])
        self.sent.set()
        await self.release.wait()
        return response
