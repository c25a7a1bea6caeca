"""One upstream's HTTP connection pool: every exchange measured, every network failure typed.

The registry client and the token fetcher both send through here, so each request (token fetches,
challenges and redirect hops included) is counted in pullcache_upstream_requests_total, and a failure
of the network always surfaces as UpstreamUnavailable or UpstreamTimeout with a one-line cause,
never as a bare aiohttp exception. Those causes name no host or port (clients read them); the URL
travels in the error's `where`, for the log.

Two clocks bound an exchange: read_timeout, the longest silence (a stall), and request_timeout, the
whole exchange up to a usable answer, so an upstream dripping one byte a second cannot hold a request
forever. A token fetch gets its deadline from watch(); the registry client sets its own per attempt and
URL (client.py, failover.attempt_limit). Failures escaping watch() are also kept as the upstream's last
error (health.py).

Requests go through the outbound proxy proxies.py chooses for their URL, if any.
"""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import aiohttp
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDictProxy
from yarl import URL

from .. import __version__, metrics
from ..config import UpstreamConfig
from . import health
from .addresses import AddressRefused, GuardedResolver, check_literal
from .budget import Budget, parse_count
from .errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    one_line,
)
from .proxies import Proxies

USER_AGENT = f"pullcache/{__version__}"


def for_log(url: URL) -> str:
    """The URL without its query: CDN redirects carry signatures there, and lines stay short."""
    return str(url.with_query(None).with_fragment(None))


def basic_auth(username: str, password: str) -> str:
    """An Authorization value for Basic credentials (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class Transport:
    """The aiohttp session of one upstream, created in start() and closed in close().

    `resolver` resolves names before the address check (addresses.GuardedResolver); tests pass their own.
    """

    def __init__(self, config: UpstreamConfig, resolver: AbstractResolver | None = None,
                 budget: Budget | None = None) -> None:
        self.name = config.name
        self.config = config
        self._budget = budget or Budget(config)  # shared by the upstream's URLs: one quota
        self._resolver = resolver
        self._proxies = Proxies(config)
        self._guard: GuardedResolver | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        self._guard = GuardedResolver(self.config, self._resolver or aiohttp.DefaultResolver(), self._proxies.hosts)
        self._session = aiohttp.ClientSession(
            # No DNS cache: each new connection is checked against the addresses it really goes to.
            connector=aiohttp.TCPConnector(limit=self.config.max_connections, resolver=self._guard,
                                           use_dns_cache=False),
            # No total timeout: a multi-GiB layer may take long; only silence counts as failure.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout,
                                          sock_read=self.config.read_timeout),
            # identity: stored bytes must be exactly what the digest names, never a re-encoding.
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(self, method: str, url: URL, what: str, *, headers: Mapping[str, str] | None = None
                   ) -> aiohttp.ClientResponse:
        """One request, redirects not followed (callers decide where credentials may go); `what` names it
        for clients. AddressRefused if url's host is one this upstream may not make pullcache contact."""
        if self._session is None or self._guard is None:
            raise RuntimeError(f"upstream {self.name}: client used before start() or after close()")
        check_literal(self.config, url.host or "")
        proxy = self._proxies.for_url(url)
        # The pool's resolver checks the hosts it connects to, except a proxy's (trusted for connecting to the
        # proxy): so a host the proxy resolves, or a proxy's host asked directly, is checked here.
        host = (url.host or "").lower()
        if (proxy is not None or host in self._proxies.hosts) and not self._guard.trusts(host):
            await self._check_name(self._guard, url, proxy is not None)
        proxy_headers = None
        if proxy is not None and url.scheme == "https":
            proxy_headers = proxy.headers  # on the CONNECT, which alone the proxy reads
        elif proxy is not None:
            headers = {**(headers or {}), **proxy.headers}  # the proxy reads the request itself (and drops these)
        started = time.monotonic()
        try:
            with self.failures(what, url):
                response = await self._session.request(
                    method, url, headers=headers, allow_redirects=False,
                    proxy=proxy.url if proxy else None, proxy_headers=proxy_headers)
        except UpstreamUnavailable:
            metrics.upstream_requests.labels(self.name, method, "error").inc()
            raise
        metrics.upstream_request_duration.labels(self.name).observe(time.monotonic() - started)
        metrics.upstream_requests.labels(self.name, method, str(response.status)).inc()
        self._record_ratelimit(response.headers)
        return response

    @staticmethod
    async def _check_name(guard: GuardedResolver, url: URL, proxied: bool) -> None:
        """Refuse a name the pool will not check itself: one a proxy resolves (proxied), or a proxy's host asked
        directly, which the pool trusts. A proxied name pullcache cannot resolve is left to the proxy
        (addresses.py); a direct one fails as it would have anyway."""
        try:
            await guard.check(url.host or "", url.port or 0)
        except AddressRefused:
            raise
        except OSError:
            if not proxied:
                raise
            # pullcache cannot resolve it: the proxy will, under its own rules

    async def read_body(self, response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        """The whole body of a small response (manifest, token, error), refusing more than limit bytes."""
        where = for_log(response.url)
        if response.content_length is not None and response.content_length > limit:
            raise UpstreamError(self.name, f"{what}: body of {response.content_length} bytes exceeds {limit}",
                                response.status, where=where)
        parts: list[bytes] = []
        size = 0
        with self.failures(what, response.url):
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise UpstreamError(self.name, f"{what}: body exceeds {limit} bytes", response.status,
                                        where=where)
                parts.append(chunk)
        return b"".join(parts)

    @asynccontextmanager
    async def watch(self, what: str, url: URL, *, deadline: bool = True) -> AsyncIterator[None]:
        """Around one exchange: ends it after request_timeout (unless deadline=False: a blob body, bounded by
        its own rules, or a registry exchange, which bounds its attempts itself) and keeps a failure of the
        upstream itself as its last error."""
        limit = self.config.request_timeout
        try:
            async with asyncio.timeout(limit if deadline else None):
                yield
        except TimeoutError as exc:
            error = UpstreamTimeout(self.name, f"{what}: no complete answer within {limit:g}s (request_timeout)",
                                    where=for_log(url))
            health.record(error)
            raise error from exc
        except UpstreamError as exc:
            # Missing images and refused repositories are the clients' business, not the upstream's health.
            if not isinstance(exc, (UpstreamNotFound, UpstreamUnauthorized)):
                health.record(exc)
            raise

    @contextmanager
    def failures(self, what: str, url: URL) -> Iterator[None]:
        """Turn aiohttp's network errors inside the block (sending, or reading a body) into UpstreamErrors.

        An AddressRefused (from the resolver) goes on as itself: only the caller knows whether a redirect or
        a token realm named that host."""
        where = for_log(url)
        try:
            yield
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeout(
                self.name, f"{what}: no connection within {self.config.connect_timeout:g}s (connect_timeout)",
                where=where) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(
                self.name, f"{what}: nothing received for {self.config.read_timeout:g}s (read_timeout)",
                where=where) from exc
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, AddressRefused):
                raise exc.os_error from exc
            raise UpstreamUnavailable(self.name, f"{what}: DNS resolution failed ({_cause(exc, url)})",
                                      where=f"host {url.host}: {where}") from exc
        except aiohttp.ClientSSLError as exc:
            raise UpstreamUnavailable(self.name, f"{what}: TLS failed ({_cause(exc, url)})", where=where) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(self.name, f"{what}: cannot connect ({_cause(exc, url)})",
                                      where=where) from exc
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamUnavailable(self.name, f"{what}: body cut short ({_cause(exc, url)})",
                                      where=where) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.name, f"{what}: connection failed ({_cause(exc, url)})",
                                      where=where) from exc

    def _record_ratelimit(self, headers: CIMultiDictProxy[str]) -> None:
        remaining = parse_count(headers.get("ratelimit-remaining"))
        if remaining is not None:
            metrics.upstream_ratelimit_remaining.labels(self.name).set(remaining)
        self._budget.observe(remaining, parse_count(headers.get("ratelimit-limit")))


def _cause(exc: aiohttp.ClientError, url: URL) -> str:
    """The reason of a network error without the address it happened at (clients read it)."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, socket.gaierror) and os_error.strerror:
        text = os_error.strerror
    elif isinstance(os_error, OSError) and os_error.errno:
        text = os.strerror(os_error.errno)
    else:
        text = str(getattr(exc, "certificate_error", None) or exc)
    host = url.host or ""
    if host:
        text = text.replace(f"{host}:{url.port}", "the host").replace(host, "the host")
    return one_line(text, 200) or type(exc).__name__
