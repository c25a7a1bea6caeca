"""Bearer tokens from an upstream's token realm, fetched once per scope and reused until shortly before expiry.

Docker Hub answers every anonymous request with a 401 and counts token fetches against nothing, but
a pull of one image touches one repository many times (index, manifest, config, layers): one token
per repository scope, shared by concurrent requests, saves a round trip per request.

The realm comes from a remote header, so it is checked before it is contacted: the upstream's own origin
(scheme, host and port), a host the operator listed in token_hosts or redirect_hosts, or a host whose
every address is public (addresses.py checks that as it connects), and never a downgrade from https to
http. Credentials go as Basic auth only to a realm the operator named: the upstream's own origin or a
host in token_hosts (a realm on any other host is asked anonymously). A fetch that fails transiently
is sent again within its deadline (retry.py).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TLRUCache
from yarl import URL

from ..config import UpstreamConfig
from .addresses import AddressRefused, own_host, redirect_hosts, token_hosts
from .challenge import Challenge
from .errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRealmRefused,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from .retry import with_retries
from .transport import Transport, basic_auth, for_log

DEFAULT_EXPIRES_IN = 60.0  # token spec: an absent expires_in means 60 seconds
MAX_EXPIRY_MARGIN = 30.0  # a token is dropped this long (or 10% of its life, if less) before it expires
MAX_TOKEN_RESPONSE = 1024 * 1024
MAX_SCOPES_CACHED = 4096


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # on the cache's clock, safety margin already taken off


def allowed_realm(config: UpstreamConfig, realm: str) -> URL:
    """The realm as a URL if pullcache may contact it for this upstream, else UpstreamRealmRefused.

    A host that is none of the listed ones passes here; the resolver then refuses it unless every address it
    has is public. The upstream's own host is trusted by the resolver, so another port or scheme on it is
    refused here: it may be any service on that machine."""
    upstream = URL(config.url)
    try:
        url = URL(realm)
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise UpstreamRealmRefused(config.name, "token realm is not an http(s) URL", where=repr(realm))
    if upstream.scheme == "https" and url.scheme != "https":
        raise UpstreamRealmRefused(config.name, "token realm downgrades https to http", where=for_log(url))
    host = url.host.lower()
    if (url.scheme, host, url.port) == (upstream.scheme, own_host(config), upstream.port):
        return url
    if host in token_hosts(config) or host in redirect_hosts(config):
        return url
    if host == own_host(config):
        raise UpstreamRealmRefused(
            config.name, "token realm is on the upstream's host but not its origin (another port or scheme); "
                         "add the host to upstreams[].token_hosts if that realm is trusted", where=for_log(url))
    return url


def sends_credentials(config: UpstreamConfig, realm: URL) -> bool:
    """Whether the upstream's credentials may go to this (allowed) realm: only to one the operator named."""
    upstream = URL(config.url)
    host = (realm.host or "").lower()
    return (realm.scheme, host, realm.port) == (upstream.scheme, own_host(config), upstream.port) \
        or host in token_hosts(config)


def _refused_address(config: UpstreamConfig, exc: AddressRefused, url: URL) -> UpstreamRealmRefused:
    """The error for a realm whose host resolved to (or is) a non-public address."""
    return UpstreamRealmRefused(
        config.name, f"token realm on host {exc.host!r}, which has a non-public address and is neither the "
                     f"upstream's origin nor in token_hosts or redirect_hosts (add it to upstreams[].token_hosts "
                     f"if it is trusted)", where=f"{for_log(url)}: {exc}")


class TokenCache:
    """One upstream's tokens by scope (`repository:library/alpine:pull`), with one fetch in flight per scope."""

    def __init__(self, transport: Transport, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._transport = transport
        self._config = transport.config
        self._clock = clock
        self._tokens: TLRUCache[str, Token] = TLRUCache(
            MAX_SCOPES_CACHED, ttu=lambda _scope, token, _now: token.expires_at, timer=clock)
        self._inflight: dict[str, asyncio.Task[Token]] = {}

    def cached(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        return token.value if token is not None else None

    def invalidate(self, scope: str, value: str) -> None:
        """Forget a token the upstream refused, unless a newer one has replaced it meanwhile."""
        token = self._tokens.get(scope)
        if token is not None and token.value == value:
            self._tokens.pop(scope, None)

    async def obtain(self, challenge: Challenge, scope: str) -> str:
        """A token for scope: the cached one, the one already being fetched, or a new fetch."""
        cached = self.cached(scope)
        if cached is not None:
            return cached
        task = self._inflight.get(scope)
        if task is None:
            task = asyncio.create_task(self._fetch(challenge, scope))
            self._inflight[scope] = task
            task.add_done_callback(lambda done: self._settle(scope, done))
        # shield: one waiter giving up must not cancel the fetch the others are waiting for.
        return (await asyncio.shield(task)).value

    def _settle(self, scope: str, task: asyncio.Task[Token]) -> None:
        if self._inflight.get(scope) is task:
            del self._inflight[scope]
        if not task.cancelled() and task.exception() is None:
            self._tokens[scope] = task.result()

    async def _fetch(self, challenge: Challenge, scope: str) -> Token:
        name = self._config.name
        url = allowed_realm(self._config, challenge.realm or "")
        query = [("service", challenge.service)] if challenge.service else []
        # Ask for our scope and whatever the challenge named; the realm grants the intersection it allows.
        query += [("scope", s) for s in dict.fromkeys((scope, *challenge.scopes))]
        url = url.extend_query(query)
        credentials = self._config.credentials() if sends_credentials(self._config, url) else None
        headers = {"Authorization": basic_auth(*credentials)} if credentials else {}
        what = f"token request for {scope}"
        # Its own deadline: the fetch is shared, and outlives a waiter whose own deadline passes first.
        async with self._transport.watch(what, url):
            deadline = asyncio.get_running_loop().time() + self._config.request_timeout
            return await with_retries(name, what, deadline, lambda: self._fetch_once(url, headers, what, credentials))

    async def _fetch_once(self, url: URL, headers: dict[str, str], what: str,
                          credentials: tuple[str, str] | None) -> Token:
        name = self._config.name
        where = for_log(url)
        started = self._clock()
        try:
            response = await self._transport.send("GET", url, what, headers=headers)
        except AddressRefused as exc:
            raise _refused_address(self._config, exc, url) from exc
        try:
            if response.status in (401, 403):
                who = f"credentials of {credentials[0]!r}" if credentials else "anonymous access"
                raise UpstreamUnauthorized(name, f"{what}: realm answered {response.status}, refusing {who}",
                                           response.status, where=where)
            if response.status == 429:
                raise UpstreamRateLimited(name, f"{what}: realm answered 429", 429,
                                          response.headers.get("Retry-After"), where=where)
            if response.status >= 500:
                raise UpstreamUnavailable(name, f"{what}: realm answered {response.status}", response.status,
                                          where=where)
            if response.status != 200:
                raise UpstreamError(name, f"{what}: realm answered {response.status}", response.status,
                                    where=where)
            body = await self._transport.read_body(response, MAX_TOKEN_RESPONSE, what)
        finally:
            response.release()
        return self._parse(body, what, where, started)

    def _parse(self, body: bytes, what: str, where: str, started: float) -> Token:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(self._config.name, f"{what}: answer is not a JSON object", where=where)
        value = data.get("token") or data.get("access_token")
        if not isinstance(value, str) or not value:
            raise UpstreamError(self._config.name, f"{what}: answer has neither token nor access_token",
                                where=where)
        expires_in = data.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN
        # Counted from when the request was sent (not issued_at): no trust in clocks agreeing.
        margin = min(MAX_EXPIRY_MARGIN, expires_in * 0.1)
        return Token(value, started + expires_in - margin)
