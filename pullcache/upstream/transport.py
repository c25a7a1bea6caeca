"""One upstream's HTTP connection pool: every exchange measured, every network failure typed.

The registry client and the token fetcher both send through here, so each request (token fetches,
challenges and redirect hops included) is counted in pullcache_upstream_requests_total, and a failure
of the network always surfaces as UpstreamUnavailable or UpstreamTimeout with a one-line cause,
never as a bare aiohttp exception.
"""
from __future__ import annotations

import base64
import time
from contextlib import contextmanager
from collections.abc import Iterator, Mapping

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from .. import __version__, metrics
from ..config import UpstreamConfig
from .errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable, one_line

USER_AGENT = f"pullcache/{__version__}"


def for_log(url: URL) -> str:
    """The URL without its query: CDN redirects carry signatures there, and lines stay short."""
    return str(url.with_query(None).with_fragment(None))


def basic_auth(username: str, password: str) -> str:
    """An Authorization value for Basic credentials (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def parse_ratelimit(value: str) -> int | None:
    """Docker Hub's `ratelimit-remaining: 76;w=21600` -> 76; anything else -> None."""
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


class Transport:
    """The aiohttp session of one upstream, created in start() and closed in close()."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.name = config.name
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_connections),
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

    async def send(self, method: str, url: URL, *, headers: Mapping[str, str] | None = None
                   ) -> aiohttp.ClientResponse:
        """One request, redirects not followed (callers decide where credentials may go)."""
        if self._session is None:
            raise RuntimeError(f"upstream {self.name}: client used before start() or after close()")
        started = time.monotonic()
        try:
            with self.failures(f"{method} {for_log(url)}"):
                response = await self._session.request(method, url, headers=headers, allow_redirects=False)
        except UpstreamUnavailable:
            metrics.upstream_requests.labels(self.name, method, "error").inc()
            raise
        metrics.upstream_request_duration.labels(self.name).observe(time.monotonic() - started)
        metrics.upstream_requests.labels(self.name, method, str(response.status)).inc()
        self._record_ratelimit(response.headers)
        return response

    async def read_body(self, response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        """The whole body of a small response (manifest, token, error), refusing more than limit bytes."""
        if response.content_length is not None and response.content_length > limit:
            raise UpstreamError(self.name, f"{what}: body of {response.content_length} bytes exceeds {limit}",
                                response.status)
        parts: list[bytes] = []
        size = 0
        with self.failures(what):
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise UpstreamError(self.name, f"{what}: body exceeds {limit} bytes", response.status)
                parts.append(chunk)
        return b"".join(parts)

    @contextmanager
    def failures(self, what: str) -> Iterator[None]:
        """Turn aiohttp's network errors inside the block (sending, or reading a body) into UpstreamErrors."""
        try:
            yield
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeout(
                self.name, f"{what}: no connection within {self.config.connect_timeout:g}s (connect_timeout)"
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(
                self.name, f"{what}: nothing received for {self.config.read_timeout:g}s (read_timeout)"
            ) from exc
        except aiohttp.ClientConnectorDNSError as exc:
            raise UpstreamUnavailable(self.name, f"{what}: cannot resolve host ({_cause(exc)})") from exc
        except aiohttp.ClientSSLError as exc:
            raise UpstreamUnavailable(self.name, f"{what}: TLS failed ({_cause(exc)})") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(self.name, f"{what}: cannot connect ({_cause(exc)})") from exc
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamUnavailable(self.name, f"{what}: body cut short ({_cause(exc)})") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.name, f"{what}: connection failed ({_cause(exc)})") from exc

    def _record_ratelimit(self, headers: CIMultiDictProxy[str]) -> None:
        value = headers.get("ratelimit-remaining")
        remaining = parse_ratelimit(value) if value is not None else None
        if remaining is not None:
            metrics.upstream_ratelimit_remaining.labels(self.name).set(remaining)


def _cause(exc: BaseException) -> str:
    return one_line(str(exc), 200) or type(exc).__name__
