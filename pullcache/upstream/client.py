"""The registry API of one upstream as pullcache needs it: manifests, blobs and referrers, read-only.

It hands back bytes and sizes and knows nothing of where they are stored. What it guarantees:
a manifest's bytes match the digest the upstream claims and the digest that was asked for, the
upstream's failures arrive as the typed UpstreamErrors, and credentials or tokens never leave the
upstream's own origin (blob redirects to a CDN are followed without them). Redirects are followed only
to hosts addresses.py allows, and every exchange ends within request_timeout (a blob body: see BlobStream).
Error messages name the upstream by its configured name; its URL goes only to the log (errors.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from .. import metrics
from ..config import UpstreamConfig
from ..digests import Digest, DigestError
from ..mediatypes import MANIFEST_TYPES, MAX_MANIFEST_BYTES, OCI_INDEX
from .addresses import AddressRefused, own_host, redirect_hosts, token_hosts
from .auth import Authorizer, pull_scope
from .budget import Budget
from .challenge import parse_challenges
from .errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRedirectRefused,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    one_line,
)
from .failover import Breaker, attempt_limit, in_order
from .retry import ATTEMPTS, with_retries
from .transport import Transport, for_log

MAX_ERROR_BODY = 64 * 1024
MAX_REDIRECTS = 5
BLOB_CHUNK = 1024 * 1024
# A blob body must bring at least this many bytes per second, averaged over each read_timeout: 16 KiB/s
# (128 kbit/s) is slower than any link a registry mirror is run on, and an upstream dripping a byte at a
# time, which read_timeout alone never stops, would otherwise hold a fill and its clients for days.
MIN_BLOB_RATE = 16 * 1024
RESUMES = ATTEMPTS - 1  # a cut blob body is resumed at most this often (BlobStream)
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"})
T = TypeVar("T")
log = logging.getLogger("pullcache.upstream")


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
    """An open upstream blob body; read it with chunks() while the open_blob context is active.

    A body may rightly take long (a multi-GiB layer), so it has no total deadline; it fails instead when
    silent for read_timeout, or when slower than MIN_BLOB_RATE over a read_timeout window.

    A body cut mid-way (the connection lost after bytes arrived; not a stall) is resumed with a `Range: bytes=N-`
    request, so what arrived is not fetched twice: at most RESUMES times, each only after the previous
    answer brought new bytes, each request retried and bounded like any other (retry.py). An upstream that
    answers the Range with the whole body has its first N bytes skipped; a refusal (416, ...) fails as any
    error does. The caller still verifies the digest over everything chunks() yielded.
    """

    def __init__(self, response: aiohttp.ClientResponse, transport: Transport, what: str,
                 reopen: Callable[[int], Awaitable[aiohttp.ClientResponse]]) -> None:
        self.size: int | None = response.content_length
        self._response = response
        self._transport = transport
        self._what = what
        self._reopen = reopen  # the body again from an offset (a Range request)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Raw bytes as they arrive (at most 1 MiB each), resumed after a cut; a stall or a drip is UpstreamTimeout."""
        received, resumes, skip = 0, 0, 0
        while True:
            before = received
            try:
                async with aclosing(self._body()) as body:
                    async for chunk in body:
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                            if not chunk:
                                continue
                        received += len(chunk)
                        yield chunk
                return
            except UpstreamUnavailable as exc:
                cut = exc.status is None and not isinstance(exc, UpstreamTimeout)  # a stall or a drip is no cut
                if not cut or received == before or resumes == RESUMES:
                    raise
                resumes += 1
                metrics.upstream_retries.labels(self._transport.name, "resume").inc()
                log.info("upstream %s: %s cut after %d bytes (%s), resuming", self._transport.name, self._what,
                         received, exc.message)
            self._response.close()
            self._response = await self._reopen(received)
            skip = self._skip(received)

    def _skip(self, offset: int) -> int:
        """How many bytes of the resumed answer were received already: none of a 206 that starts at offset,
        all of `offset` of a whole body (200)."""
        response = self._response
        if response.status != 206:
            return offset
        if not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            raise UpstreamError(self._transport.name, f"{self._what}: asked to resume at byte {offset}, answered "
                                f"Content-Range {response.headers.get('Content-Range')!r}", response.status,
                                where=for_log(response.url))
        return 0

    async def _body(self) -> AsyncGenerator[bytes, None]:
        """The current response's bytes; the rate counts only time spent waiting for the upstream, not time
        the caller took between chunks (a slow disk is not the upstream's fault)."""
        url = self._response.url
        window = self._transport.config.read_timeout
        async with self._transport.watch(self._what, url, deadline=False):
            with self._transport.failures(self._what, url):
                waited, received = 0.0, 0
                while True:
                    asked = time.monotonic()
                    chunk = await self._response.content.read(BLOB_CHUNK)
                    if not chunk:
                        return
                    waited += time.monotonic() - asked
                    received += len(chunk)
                    if waited >= window:
                        if received < MIN_BLOB_RATE * waited:
                            raise UpstreamTimeout(
                                self._transport.name, f"{self._what}: body arrives slower than the minimum of "
                                f"{MIN_BLOB_RATE // 1024} KiB/s over {window:g}s (read_timeout)", where=for_log(url))
                        waited, received = 0.0, 0
                    yield chunk

    def close(self) -> None:
        """Drop the connection: an unread rest of a body must not go back into the pool."""
        self._response.close()

    def release(self) -> None:
        self._response.release()


class Mirror:
    """One URL of an upstream with its own connection pool, tokens and breaker: to the address guard and
    the token realm check it is the upstream's URL, so a fallback is trusted and checked like the primary."""

    def __init__(self, config: UpstreamConfig, resolver: AbstractResolver | None,
                 clock: Callable[[], float], budget: Budget, *, has_fallback: bool) -> None:
        self.config = config
        self.transport = Transport(config, resolver, budget)
        self.auth = Authorizer(self.transport, clock=clock)
        self.breaker = Breaker(config.name, config.url, has_fallback=has_fallback)

    def url(self, path: str) -> URL:
        return URL(self.config.url + path)


class UpstreamClient:
    """One configured upstream. start() before use, close() at shutdown.

    Every request goes to the upstream's URLs in failover order (failover.py) until one answers."""

    def __init__(self, config: UpstreamConfig, *, clock: Callable[[], float] = time.monotonic,
                 resolver: AbstractResolver | None = None) -> None:
        self.name = config.name
        self.config = config
        self._clock = clock
        self.budget = Budget(config, clock)
        self._mirrors = [Mirror(config.for_url(url), resolver, clock, self.budget,
                                has_fallback=len(config.all_urls) > 1) for url in config.all_urls]
        # Deadlines and body reads: every mirror shares the upstream's timeouts, so the primary's will do.
        self._transport = self._mirrors[0].transport

    async def start(self) -> None:
        for mirror in self._mirrors:
            await mirror.transport.start()

    async def close(self) -> None:
        for mirror in self._mirrors:
            await mirror.transport.close()

    @property
    def url_in_use(self) -> str:
        """The URL the next request goes to first."""
        return in_order(self._mirrors, self._clock())[0].config.url

    async def get_manifest(self, repo: str, reference: str, accept: Sequence[str],
                           *, deadline: float | None = None) -> ManifestResponse:
        """The manifest's exact bytes; UpstreamError if they do not hash to the digest claimed or asked for.

        `deadline` (event loop clock): that of the request this one is part of, if any."""
        requested = _requested_digest(reference)
        path, url = self._path(repo, "manifests", reference)
        what = "GET manifest"
        async with self._transport.watch(what, url, deadline=False):
            response, body = await self._exchange("GET", repo, path, {"Accept": accept_header(accept)}, what,
                                                  self._small_body, deadline)
            claimed = self._claimed_digest(response, url, what)
            for label, expected in (("Docker-Content-Digest", claimed), ("the requested digest", requested)):
                actual = Digest.of(body, expected.algorithm) if expected is not None else None
                if actual != expected:
                    raise UpstreamError(self.name, f"{what}: manifest bytes hash to {actual}, "
                                                   f"not {label} {expected}", where=for_log(response.url))
            media_type = _media_type(response.headers.get("Content-Type")) or _body_media_type(body)
            if not media_type:
                raise UpstreamError(self.name, f"{what}: manifest has no Content-Type and no mediaType",
                                    where=for_log(response.url))
        return ManifestResponse(body, media_type, str(Digest.of(body)))

    async def head_manifest(self, repo: str, reference: str, accept: Sequence[str]) -> ManifestHead:
        """Digest, type and size without the body (Docker Hub does not count HEADs against the rate limit).

        Falls back to GET when the upstream's HEAD lacks a sha256 Docker-Content-Digest, Content-Type or
        Content-Length, so callers always get a sha256 digest to compare with what they hold."""
        requested = _requested_digest(reference)
        path, url = self._path(repo, "manifests", reference)
        what = "HEAD manifest"
        deadline = self._deadline()
        async with self._transport.watch(what, url, deadline=False):
            response = await self._exchange("HEAD", repo, path, {"Accept": accept_header(accept)}, what,
                                            _headers_only, deadline)
            claimed = self._claimed_digest(response, url, what)
            media_type = _media_type(response.headers.get("Content-Type"))
            size = response.content_length
            if claimed is None or claimed.algorithm != "sha256" or not media_type or size is None:
                full = await self.get_manifest(repo, reference, accept, deadline=deadline)
                return ManifestHead(full.digest, full.media_type, len(full.body))
            if requested is not None and requested.algorithm == "sha256" and claimed != requested:
                raise UpstreamError(self.name, f"{what}: upstream claims {claimed} for {requested}",
                                    where=for_log(response.url))
        return ManifestHead(str(claimed), media_type, size)

    async def head_blob(self, repo: str, digest: str) -> int:
        """The blob's size in bytes."""
        Digest.parse(digest)
        path, url = self._path(repo, "blobs", digest)
        what = "HEAD blob"
        async with self._transport.watch(what, url, deadline=False):
            response = await self._exchange("HEAD", repo, path, {}, what, _headers_only)
            claimed = self._claimed_digest(response, url, what)
            if claimed is not None and str(claimed) != digest:
                raise UpstreamError(self.name, f"{what}: upstream claims {claimed}", where=for_log(response.url))
            if response.content_length is None:
                raise UpstreamError(self.name, f"{what}: answered without Content-Length",
                                    where=for_log(response.url))
        return response.content_length

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str) -> AsyncIterator[BlobStream]:
        """The blob body, open until the context exits. The caller verifies the digest of what it reads.

        request_timeout bounds the wait for the response's headers; the body has its own rules (BlobStream)."""
        Digest.parse(digest)
        path, url = self._path(repo, "blobs", digest)
        what = "GET blob"

        async def from_offset(offset: int) -> aiohttp.ClientResponse:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            async with self._transport.watch(what, url, deadline=False):
                return await self._exchange("GET", repo, path, headers, what, _open)

        stream = BlobStream(await from_offset(0), self._transport, what, from_offset)
        try:
            yield stream
        except BaseException:
            stream.close()
            raise
        stream.release()

    async def get_referrers(self, repo: str, digest: str) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose subject is `digest`, from the referrers API.

        An upstream without the API answers 404 (CNCF Distribution 2.8 does, before even asking for
        credentials); then, as the spec tells clients, the list is the image index kept under the
        referrers tag schema `<alg>-<hex>`, and no such tag, or one that is not an image index, means none.
        """
        subject = Digest.parse(digest)
        path, url = self._path(repo, "referrers", digest)
        what = "GET referrers"
        try:
            async with self._transport.watch(what, url, deadline=False):
                response, body = await self._exchange("GET", repo, path, {"Accept": OCI_INDEX}, what, self._small_body)
        except UpstreamNotFound:
            return await self._referrers_by_tag(repo, subject)
        descriptors = _index_descriptors(body)
        if descriptors is None:
            raise UpstreamError(self.name, f"{what}: the answer is not an image index", response.status,
                                where=for_log(response.url))
        return descriptors

    async def _referrers_by_tag(self, repo: str, subject: Digest) -> list[dict[str, Any]]:
        tag = f"{subject.algorithm}-{subject.hex[:64]}"  # the spec limits <ref> to 64 characters
        try:
            index = await self.get_manifest(repo, tag, (OCI_INDEX,))
        except UpstreamNotFound:
            return []
        return (_index_descriptors(index.body) or []) if index.media_type == OCI_INDEX else []

    # ------------------------------------------------------------------ HTTP exchange

    def _path(self, repo: str, kind: str, reference: str) -> tuple[str, URL]:
        """The request's path, and its URL at the URL in use (for messages about the whole exchange)."""
        path = f"/v2/{repo}/{kind}/{reference}"
        return path, URL(self.url_in_use + path)

    def _deadline(self) -> float:
        """The end of a request starting now, on the event loop's clock."""
        return asyncio.get_running_loop().time() + self.config.request_timeout

    async def _small_body(self, response: aiohttp.ClientResponse, what: str) -> tuple[aiohttp.ClientResponse, bytes]:
        """The response and its whole (manifest-sized) body, read inside the attempt: a body cut short is
        the URL's failure, retried and counted against its breaker like a failed request."""
        try:
            return response, await self._transport.read_body(response, MAX_MANIFEST_BYTES, what)
        finally:
            response.release()

    async def _exchange(self, method: str, repo: str, path: str, headers: Mapping[str, str], what: str,
                        take: Callable[[aiohttp.ClientResponse, str], Awaitable[T]], deadline: float | None = None
                        ) -> T:
        """take() of a 2xx response to method on path; every request pullcache sends is idempotent, so
        transient failures are retried (retry.py) until `deadline` (default: request_timeout from now)."""
        end = self._deadline() if deadline is None else deadline
        return await with_retries(self.name, what, end,
                                  lambda: self._exchange_once(method, repo, path, headers, what, take, end))

    async def _exchange_once(self, method: str, repo: str, path: str, headers: Mapping[str, str], what: str,
                             take: Callable[[aiohttp.ClientResponse, str], Awaitable[T]], deadline: float) -> T:
        """take() of a 2xx response from the first of the upstream's URLs that answers one; a URL that fails
        as an outage does (UpstreamUnavailable, UpstreamRateLimited, or no answer within its share of the
        deadline: failover.attempt_limit) hands over to the next."""
        loop = asyncio.get_running_loop()
        mirrors = in_order(self._mirrors, self._clock())
        for index, mirror in enumerate(mirrors):
            limit = attempt_limit(deadline - loop.time(), self.config.read_timeout, len(mirrors) - index,
                                  self.config.request_timeout)
            try:
                try:
                    async with asyncio.timeout(limit.seconds):
                        response = await self._exchange_at(mirror, method, repo, path, headers, what)
                        result = await take(response, what)
                except TimeoutError as exc:
                    raise UpstreamTimeout(self.name, f"{what}: no complete answer within {limit}",
                                          where=for_log(mirror.url(path))) from exc
            except (UpstreamUnavailable, UpstreamRateLimited) as exc:
                mirror.breaker.failed(self._clock(), exc.message)
                if mirror is mirrors[-1]:
                    raise
                continue
            except UpstreamError:
                mirror.breaker.succeeded()  # a definite answer (404, 401, ...): the URL is up
                raise
            mirror.breaker.succeeded()
            return result
        raise AssertionError("an upstream has at least one URL")

    async def _exchange_at(self, mirror: Mirror, method: str, repo: str, path: str, headers: Mapping[str, str],
                           what: str) -> aiohttp.ClientResponse:
        """A 2xx response from one URL, authenticated (one retry after a 401), redirects followed."""
        scope = pull_scope(repo)
        url = mirror.url(path)
        authorization = await mirror.auth.header(scope)
        response = await self._follow(mirror, method, url, headers, authorization, what)
        if response.status == 401:
            challenges = parse_challenges(response.headers.getall("WWW-Authenticate", []))
            await self._drain(response)
            authorization = await mirror.auth.answer(challenges, scope, authorization)
            response = await self._follow(mirror, method, url, headers, authorization, what)
        if not 200 <= response.status < 300:
            await self._raise_for(what, response)
        return response

    async def _follow(self, mirror: Mirror, method: str, url: URL, headers: Mapping[str, str],
                      authorization: str | None, what: str) -> aiohttp.ClientResponse:
        """Send, following up to MAX_REDIRECTS http(s) redirects to allowed hosts (_check_redirect);
        Authorization goes only to the mirror's origin."""
        own_origin = _origin(URL(mirror.config.url))
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization is not None and _origin(url) == own_origin:
                sent["Authorization"] = authorization
            try:
                response = await mirror.transport.send(method, url, what, headers=sent)
            except AddressRefused as exc:  # only a redirect target can be refused: the upstream's host is trusted
                raise UpstreamRedirectRefused(
                    self.name, f"{what}: redirected to host {exc.host!r}, which has a non-public address; pullcache "
                    f"follows redirects only to the upstream's host, to public addresses, or to hosts listed in "
                    f"upstreams[].redirect_hosts", where=f"{for_log(url)}: {exc}") from exc
            if response.status not in _REDIRECT_STATUSES:
                return response
            location = response.headers.get("Location", "")
            await self._drain(response)
            try:
                target = url.join(URL(location))
            except ValueError:
                target = URL()
            if not location or target.scheme not in ("http", "https") or not target.host:
                raise UpstreamError(self.name, f"{what}: redirect to a location that is not an http(s) URL",
                                    response.status, where=f"{for_log(url)} -> {location!r}")
            self._check_redirect(mirror.config, target, what)
            url = target
        raise UpstreamError(self.name, f"{what}: more than {MAX_REDIRECTS} redirects in a row", where=for_log(url))

    def _check_redirect(self, config: UpstreamConfig, target: URL, what: str) -> None:
        """Refuse a redirect to a host the operator trusts for token realms only: the resolver lets any address
        of a trusted host pass. Other hosts are left to the resolver's address check (addresses.py)."""
        host = (target.host or "").lower()
        if host == own_host(config) or host in redirect_hosts(config):
            return
        if host in token_hosts(config):
            raise UpstreamRedirectRefused(
                self.name, f"{what}: redirected to token host {host!r}, which is not listed in "
                           f"upstreams[].redirect_hosts", where=for_log(target))

    async def _drain(self, response: aiohttp.ClientResponse) -> None:
        """Read a small unwanted body (401, redirect) so the connection can be reused, then release it."""
        try:
            if response.content_length is not None and response.content_length <= MAX_ERROR_BODY:
                await self._transport.read_body(response, MAX_ERROR_BODY, "")
        except UpstreamError:
            pass
        finally:
            response.release()

    async def _raise_for(self, what: str, response: aiohttp.ClientResponse) -> NoReturn:
        """Raise the UpstreamError that a non-2xx answer means, with the registry's error code if it sent one.

        The upstream's own error text reaches clients only with its address taken out."""
        status = response.status
        where = for_log(response.url)
        body = b""
        try:
            if response.method != "HEAD":
                body = await self._transport.read_body(response, MAX_ERROR_BODY, "")
        except UpstreamError:
            pass  # the status alone says enough
        finally:
            response.release()
        codes, detail = _error_detail(body)
        host = response.url.host or ""
        if host:
            detail = detail.replace(f"{host}:{response.url.port}", "(its address)").replace(host, "(its address)")
        said = f"{what} answered {status}" + (f" {detail}" if detail else "")
        if status == 404 or (400 <= status < 500 and codes & _NOT_FOUND_CODES):
            raise UpstreamNotFound(self.name, said, status, where=where)
        if status == 429:
            raise UpstreamRateLimited(self.name, said, status, response.headers.get("Retry-After"), where=where)
        if status == 401:
            raise UpstreamUnauthorized(self.name, f"{said} after authenticating: the repository is private, "
                                                  f"does not exist, or the credentials lack access", status,
                                       where=where)
        if status == 403:
            raise UpstreamUnauthorized(self.name, f"{said}: access denied", status, where=where)
        if status >= 500:
            raise UpstreamUnavailable(self.name, said, status, where=where)
        raise UpstreamError(self.name, said, status, where=where)

    def _claimed_digest(self, response: aiohttp.ClientResponse, url: URL, what: str) -> Digest | None:
        value = response.headers.get("Docker-Content-Digest")
        if value is None:
            return None
        try:
            return Digest.parse(value.strip())
        except DigestError as exc:
            raise UpstreamError(self.name, f"{what}: Docker-Content-Digest {exc}", where=for_log(url)) from exc


async def _headers_only(response: aiohttp.ClientResponse, _what: str) -> aiohttp.ClientResponse:
    """A HEAD's answer: nothing to read."""
    response.release()
    return response


async def _open(response: aiohttp.ClientResponse, _what: str) -> aiohttp.ClientResponse:
    """A blob's answer, its body left to BlobStream."""
    return response


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
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's stack: no manifest either way
        return ""
    value = data.get("mediaType") if isinstance(data, dict) else None
    return value if isinstance(value, str) else ""


def _index_descriptors(body: bytes) -> list[dict[str, Any]] | None:
    """The descriptors listed by an image index; None if the body is not one."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
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
