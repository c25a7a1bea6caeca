"""Requests from one pullcache process to another (a fill's holder, an upload's owner): signed with the cluster
secret (signing.py), on one connection pool per use, opened on the serving loop at the first request."""
from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL

from pullcache.cluster.signing import RequestSigner

CONNECT_TIMEOUT = 5.0  # a peer on the same network answers at once, or is gone
MAX_CONNECTIONS = 64


class PeerSession:
    def __init__(self, signer: RequestSigner, *, read_timeout: float) -> None:
        """read_timeout: how long a peer may stay silent mid-answer before it is taken for gone."""
        self._signer = signer
        self._read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=self._read_timeout))
        return self._session

    def request(self, method: str, address: str, path: str, *, headers: dict[str, str] | None = None,
                **kwargs: Any) -> aiohttp.client._RequestContextManager:
        """`method` of `path` (raw, as signed) on the peer at `address`, signed; use as `async with`, or await."""
        signed = {**(headers or {}), **self._signer.headers(method, path)}
        return self._client().request(method, URL(address.rstrip("/") + path, encoded=True), headers=signed,
                                      allow_redirects=False, **kwargs)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
