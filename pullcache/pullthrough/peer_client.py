"""The client side of fills streamed between processes: a signed GET of the growing fill on the process that
fetches the blob from its upstream (its HTTP side is api/peer_fills.py).

Nothing here trusts the bytes: the caller writes them into a fill of its own, which hashes them and holds
the last byte back until the digest is verified, as it does for an upstream's.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Self
from urllib.parse import quote

import aiohttp
from yarl import URL

from pullcache.cluster.signing import FILLS_PATH, RequestSigner
from pullcache.digests import Digest

CONNECT_TIMEOUT = 5.0  # a peer on the same network answers at once, or is gone
READ_TIMEOUT = 60.0  # a peer silent this long is cut off (a hung process may keep its lease alive)
MAX_CONNECTIONS = 64


def fill_path(upstream: str, digest: Digest) -> str:
    """The raw path of a fill on a peer, as sent and as signed."""
    return f"{FILLS_PATH}/{quote(upstream, safe='')}/{digest}"


class PeerUnavailable(Exception):
    """The peer could not be asked, or answered neither a stream nor "no such fill here"."""


@dataclass
class PeerStream:
    """A peer's fill as it arrives; size None when the upstream did not say. Use `async with`."""

    size: int | None
    response: aiohttp.ClientResponse
    _cut: str | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.response.close()

    def cut(self, reason: str) -> None:
        """Drop the connection: chunks() raises PeerUnavailable(reason)."""
        self._cut = reason
        self.response.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it comes; a cut connection raises (aiohttp.ClientPayloadError and the like, or
        PeerUnavailable after cut())."""
        try:
            async for chunk in self.response.content.iter_any():
                if self._cut is not None:
                    break
                yield chunk
        except aiohttp.ClientError:
            if self._cut is None:
                raise
        if self._cut is not None:
            raise PeerUnavailable(self._cut)


class PeerClient:
    def __init__(self, signer: RequestSigner) -> None:
        self._signer = signer
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on the serving loop, on first use
            self._session = aiohttp.ClientSession(
                auto_decompress=False, connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT))
        return self._session

    async def open(self, address: str, upstream: str, digest: Digest) -> PeerStream | None:
        """The fill of `digest` from `upstream` that the peer at `address` runs; None if it runs none (it ended,
        or never began there). Raises PeerUnavailable."""
        path = fill_path(upstream, digest)
        url = URL(address.rstrip("/") + path, encoded=True)
        try:
            response = await self._client().get(url, headers=self._signer.headers("GET", path))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnavailable(f"{address}: {exc or type(exc).__name__}") from exc
        if response.status == 200:
            return PeerStream(response.content_length if "Content-Length" in response.headers else None, response)
        response.close()
        if response.status == 404:
            return None
        raise PeerUnavailable(f"{address} answered {response.status} for {path}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
