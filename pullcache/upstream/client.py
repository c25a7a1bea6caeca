"""The registry API of one upstream as pullcache needs it: manifests, blobs and referrers, read-only.

It hands back bytes and sizes and knows nothing of where they are stored. What it guarantees:
a manifest's bytes match the digest the upstream claims and the digest that was asked for, the
upstream's failures arrive as the typed UpstreamErrors, and credentials or tokens never leave the
upstream's own origin (blob redirects to a CDN are followed without them).
"""
from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import aiohttp
from yarl import URL

from ..config import UpstreamConfig
from ..digests import Digest, DigestError
from ..mediatypes import MANIFEST_TYPES, MAX_MANIFEST_BYTES, OCI_INDEX
from .auth import Authorizer, pull_scope
from .challenge import parse_challenges
from .errors import (UpstreamError, UpstreamNotFound, UpstreamRateLimited, UpstreamUnauthorized,
                     UpstreamUnavailable, one_line)
from .transport import Transport, for_log

MAX_ERROR_BODY = 64 * 1024
MAX_REDIRECTS = 5
BLOB_CHUNK = 1024 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"})


@dataclass(frozen=True)
class ManifestResponse:
    body: bytes
    media_type: str
    digest: str  # sha256 of body


@dataclass(frozen=True)
class ManifestHead:
    digest: str  # sha256, as ManifestResponse.digest
    media_type: str
    size: int


class BlobStream:
    """An open upstream blob body; read it with chunks() while the open_blob context is active."""

    def __init__(self, response: aiohttp.ClientResponse, transport: Transport, what: str) -> None:
        self.size: int | None = response.content_length
        self._response = response
        self._transport = transport
        self._what = what

    async def chunks(self) -> AsyncIterator[bytes]:
        """Raw bytes as they arrive (at most 1 MiB each); silence longer than read_timeout is UpstreamTimeout."""
        with self._transport.failures(self._what):
            async for chunk in self._response.content.iter_chunked(BLOB_CHUNK):
                yield chunk


class UpstreamClient:
    """One configured upstream. start() before use, close() at shutdown."""

    def __init__(self, config: UpstreamConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = config.name
        self.config = config
        self._transport = Transport(config)
        self._auth = Authorizer(self._transport, clock=clock)

    async def start(self) -> None:
        await self._transport.start()

    async def close(self) -> None:
        await self._transport.close()

    async def get_manifest(self, repo: str, reference: str, accept: Sequence[str]) -> ManifestResponse:
        """The manifest's exact bytes; UpstreamError if they do not hash to the digest claimed or asked for."""
        requested = _requested_digest(reference)
        url = self._url(repo, "manifests", reference)
        response = await self._exchange("GET", repo, url, {"Accept": accept_header(accept)})
        try:
            body = await self._transport.read_body(response, MAX_MANIFEST_BYTES, f"GET {for_log(url)}")
        finally:
            response.release()
        claimed = self._claimed_digest(response, url)
        for label, expected in (("Docker-Content-Digest", claimed), ("the requested digest", requested)):
            actual = Digest.of(body, expected.algorithm) if expected is not None else None
            if actual != expected:
                raise UpstreamError(self.name, f"GET {for_log(url)}: manifest bytes hash to {actual}, "
                                               f"not {label} {expected}")
        media_type = _media_type(response.headers.get("Content-Type")) or _body_media_type(body)
        if not media_type:
            raise UpstreamError(self.name, f"GET {for_log(url)}: manifest has no Content-Type and no mediaType")
        return ManifestResponse(body, media_type, str(Digest.of(body)))

    async def head_manifest(self, repo: str, reference: str, accept: Sequence[str]) -> ManifestHead:
        """Digest, type and size without the body (Docker Hub does not count HEADs against the rate limit).

        Falls back to GET when the upstream's HEAD lacks a sha256 Docker-Content-Digest, Content-Type or
        Content-Length, so callers always get a sha256 digest to compare with what they hold."""
        requested = _requested_digest(reference)
        url = self._url(repo, "manifests", reference)
        response = await self._exchange("HEAD", repo, url, {"Accept": accept_header(accept)})
        response.release()
        claimed = self._claimed_digest(response, url)
        media_type = _media_type(response.headers.get("Content-Type"))
        size = response.content_length
        if claimed is None or claimed.algorithm != "sha256" or not media_type or size is None:
            full = await self.get_manifest(repo, reference, accept)
            return ManifestHead(full.digest, full.media_type, len(full.body))
        if requested is not None and requested.algorithm == "sha256" and claimed != requested:
            raise UpstreamError(self.name, f"HEAD {for_log(url)}: upstream claims {claimed} for {requested}")
        return ManifestHead(str(claimed), media_type, size)

    async def head_blob(self, repo: str, digest: str) -> int:
        """The blob's size in bytes."""
        Digest.parse(digest)
        url = self._url(repo, "blobs", digest)
        response = await self._exchange("HEAD", repo, url, {})
        response.release()
        claimed = self._claimed_digest(response, url)
        if claimed is not None and str(claimed) != digest:
            raise UpstreamError(self.name, f"HEAD {for_log(url)}: upstream claims {claimed}")
        if response.content_length is None:
            raise UpstreamError(self.name, f"HEAD {for_log(url)}: answered without Content-Length")
        return response.content_length

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str) -> AsyncIterator[BlobStream]:
        """The blob body, open until the context exits. The caller verifies the digest of what it reads."""
        Digest.parse(digest)
        url = self._url(repo, "blobs", digest)
        response = await self._exchange("GET", repo, url, {})
        try:
            yield BlobStream(response, self._transport, f"GET {for_log(url)}")
        except BaseException:
            response.close()  # an unread rest of a body must not go back into the pool
            raise
        response.release()

    async def get_referrers(self, repo: str, digest: str) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose subject is `digest`, from the referrers API.

        An upstream without the API answers 404 (CNCF Distribution 2.8 does, before even asking for
        credentials); then, as the spec tells clients, the list is the image index kept under the
        referrers tag schema `<alg>-<hex>`, and no such tag, or one that is not an image index, means none.
        """
        subject = Digest.parse(digest)
        url = self._url(repo, "referrers", digest)
        try:
            response = await self._exchange("GET", repo, url, {"Accept": OCI_INDEX})
        except UpstreamNotFound:
            return await self._referrers_by_tag(repo, subject)
        what = f"GET {for_log(url)}"
        try:
            body = await self._transport.read_body(response, MAX_MANIFEST_BYTES, what)
        finally:
            response.release()
        descriptors = _index_descriptors(body)
        if descriptors is None:
            raise UpstreamError(self.name, f"{what}: the answer is not an image index", response.status)
        return descriptors

    async def _referrers_by_tag(self, repo: str, subject: Digest) -> list[dict[str, Any]]:
        tag = f"{subject.algorithm}-{subject.hex[:64]}"  # the spec limits <ref> to 64 characters
        try:
            index = await self.get_manifest(repo, tag, (OCI_INDEX,))
        except UpstreamNotFound:
            return []
        return (_index_descriptors(index.body) or []) if index.media_type == OCI_INDEX else []

    # ------------------------------------------------------------------ HTTP exchange

    def _url(self, repo: str, kind: str, reference: str) -> URL:
        return URL(f"{self.config.url}/v2/{repo}/{kind}/{reference}")

    async def _exchange(self, method: str, repo: str, url: URL, headers: Mapping[str, str]
                        ) -> aiohttp.ClientResponse:
        """A 2xx response to method on url, authenticated (one retry after a 401), redirects followed."""
        scope = pull_scope(repo)
        authorization = await self._auth.header(scope)
        response = await self._follow(method, url, headers, authorization)
        if response.status == 401:
            challenges = parse_challenges(response.headers.getall("WWW-Authenticate", []))
            await self._drain(response)
            authorization = await self._auth.answer(challenges, scope, authorization)
            response = await self._follow(method, url, headers, authorization)
        if not 200 <= response.status < 300:
            await self._raise_for(method, url, response)
        return response

    async def _follow(self, method: str, url: URL, headers: Mapping[str, str], authorization: str | None
                      ) -> aiohttp.ClientResponse:
        """Send, following up to MAX_REDIRECTS http(s) redirects; Authorization goes only to the upstream's origin."""
        own_origin = _origin(URL(self.config.url))
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization is not None and _origin(url) == own_origin:
                sent["Authorization"] = authorization
            response = await self._transport.send(method, url, headers=sent)
            if response.status not in _REDIRECT_STATUSES:
                return response
            location = response.headers.get("Location", "")
            await self._drain(response)
            try:
                target = url.join(URL(location))
            except ValueError:
                target = URL()
            if not location or target.scheme not in ("http", "https") or not target.host:
                raise UpstreamError(self.name, f"{method} {for_log(url)}: redirect to {location!r}, "
                                               f"which is not an http(s) URL", response.status)
            url = target
        raise UpstreamError(self.name, f"{method} {for_log(url)}: more than {MAX_REDIRECTS} redirects in a row")

    async def _drain(self, response: aiohttp.ClientResponse) -> None:
        """Read a small unwanted body (401, redirect) so the connection can be reused, then release it."""
        try:
            if response.content_length is not None and response.content_length <= MAX_ERROR_BODY:
                await self._transport.read_body(response, MAX_ERROR_BODY, "")
        except UpstreamError:
            pass
        finally:
            response.release()

    async def _raise_for(self, method: str, url: URL, response: aiohttp.ClientResponse) -> NoReturn:
        """Raise the UpstreamError that a non-2xx answer means, with the registry's error code if it sent one."""
        status = response.status
        body = b""
        try:
            if method != "HEAD":
                body = await self._transport.read_body(response, MAX_ERROR_BODY, "")
        except UpstreamError:
            pass  # the status alone says enough
        finally:
            response.release()
        codes, detail = _error_detail(body)
        what = f"{method} {for_log(url)} answered {status}" + (f" {detail}" if detail else "")
        if status == 404 or (400 <= status < 500 and codes & _NOT_FOUND_CODES):
            raise UpstreamNotFound(self.name, what, status)
        if status == 429:
            raise UpstreamRateLimited(self.name, what, status, response.headers.get("Retry-After"))
        if status == 401:
            raise UpstreamUnauthorized(self.name, f"{what} after authenticating: the repository is private, "
                                                  f"does not exist, or the credentials lack access", status)
        if status == 403:
            raise UpstreamUnauthorized(self.name, f"{what}: access denied", status)
        if status >= 500:
            raise UpstreamUnavailable(self.name, what, status)
        raise UpstreamError(self.name, what, status)

    def _claimed_digest(self, response: aiohttp.ClientResponse, url: URL) -> Digest | None:
        value = response.headers.get("Docker-Content-Digest")
        if value is None:
            return None
        try:
            return Digest.parse(value.strip())
        except DigestError as exc:
            raise UpstreamError(self.name, f"{response.method} {for_log(url)}: Docker-Content-Digest {exc}") from exc


def accept_header(accept: Sequence[str]) -> str:
    """The caller's types (header values may list several) followed by the standard manifest types, deduplicated."""
    seen: dict[str, str] = {}
    for value in (*accept, *MANIFEST_TYPES):
        for item in value.split(","):
            item = item.strip()
            key = item.split(";", 1)[0].strip().lower()
            if key and key not in seen:
                seen[key] = item
    return ", ".join(seen.values())


def _requested_digest(reference: str) -> Digest | None:
    """The digest a reference names, None for a tag; a malformed digest is the caller's bug (DigestError)."""
    return Digest.parse(reference) if ":" in reference else None


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme, (url.host or "").lower(), url.port


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip()


def _body_media_type(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    value = data.get("mediaType") if isinstance(data, dict) else None
    return value if isinstance(value, str) else ""


def _index_descriptors(body: bytes) -> list[dict[str, Any]] | None:
    """The descriptors listed by an image index; None if the body is not one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    entries = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return None
    return [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("digest"), str)]


def _error_detail(body: bytes) -> tuple[set[str], str]:
    """The OCI error codes in an error body and a short text naming them (or the body's start)."""
    try:
        errors = json.loads(body).get("errors")
    except (ValueError, AttributeError):
        errors = None
    if isinstance(errors, list):
        entries = [e for e in errors if isinstance(e, dict)]
        codes = {str(e.get("code")) for e in entries if e.get("code")}
        text = "; ".join(f"{e.get('code', '?')} ({e.get('message', '')})" for e in entries)
        return codes, one_line(text, 160)
    return set(), one_line(body.decode("utf-8", "replace"), 160)
