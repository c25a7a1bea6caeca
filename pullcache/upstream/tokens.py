"""Bearer tokens from an upstream's token realm, fetched once per scope and reused until shortly before expiry.

Docker Hub answers every anonymous request with a 401 and counts token fetches against nothing, but
a pull of one image touches one repository many times (index, manifest, config, layers): one token
per repository scope, shared by concurrent requests, saves a round trip per request.

The realm comes from a remote header, so it is checked before it is contacted: only the upstream's own
host or a host the operator listed in token_hosts, and never a downgrade from https to http. Credentials
go to that realm as Basic auth and nowhere else.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from collections.abc import Callable

from cachetools import TLRUCache
from yarl import URL

from ..config import UpstreamConfig
from .challenge import Challenge
from .errors import (UpstreamError, UpstreamRateLimited, UpstreamRealmRefused, UpstreamUnauthorized,
                     UpstreamUnavailable)
from .transport import Transport, basic_auth, for_log

DEFAULT_EXPIRES_IN = 60.0  # token spec: an absent expires_in means 60 seconds
MAX_EXPIRY_MARGIN = 30.0  # a token is dropped this long (or 10% of its life, if less) before it expires
MAX_TOKEN_RESPONSE = 1024 * 1024
MAX_SCOPES_CACHED = 4096

# Registries whose realm lives on a sibling host, keyed by the registry's host: so a plain
# `url: https://registry-1.docker.io` works without token_hosts, and only for that very host.
_BUILTIN_TOKEN_HOSTS = {"registry-1.docker.io": ("auth.docker.io",)}


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # on the cache's clock, safety margin already taken off


def allowed_realm(config: UpstreamConfig, realm: str) -> URL:
    """The realm as a URL if pullcache may contact it for this upstream, else UpstreamRealmRefused."""
    upstream = URL(config.url)
    try:
        url = URL(realm)
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise UpstreamRealmRefused(config.name, f"token realm {realm!r} is not an http(s) URL")
    if upstream.scheme == "https" and url.scheme != "https":
        raise UpstreamRealmRefused(config.name, f"token realm {for_log(url)} downgrades https to http")
    host = url.host.lower()
    allowed = {(upstream.host or "").lower(),
               *(h.lower() for h in config.token_hosts),
               *_BUILTIN_TOKEN_HOSTS.get((upstream.host or "").lower(), ())}
    if host not in allowed and f"{host}:{url.port}" not in allowed:
        raise UpstreamRealmRefused(
            config.name, f"token realm {for_log(url)} is on host {host!r}, which is neither the upstream's "
                         f"host nor in token_hosts (add it to upstreams[].token_hosts if it is trusted)")
    return url


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
        credentials = self._config.credentials()
        headers = {"Authorization": basic_auth(*credentials)} if credentials else {}
        what = f"token request to {for_log(url)} for {scope}"
        started = self._clock()
        response = await self._transport.send("GET", url, headers=headers)
        try:
            if response.status in (401, 403):
                who = f"credentials of {credentials[0]!r}" if credentials else "anonymous access"
                raise UpstreamUnauthorized(name, f"{what}: realm answered {response.status}, refusing {who}",
                                           response.status)
            if response.status == 429:
                raise UpstreamRateLimited(name, f"{what}: realm answered 429", 429,
                                          response.headers.get("Retry-After"))
            if response.status >= 500:
                raise UpstreamUnavailable(name, f"{what}: realm answered {response.status}", response.status)
            if response.status != 200:
                raise UpstreamError(name, f"{what}: realm answered {response.status}", response.status)
            body = await self._transport.read_body(response, MAX_TOKEN_RESPONSE, what)
        finally:
            response.release()
        return self._parse(body, what, started)

    def _parse(self, body: bytes, what: str, started: float) -> Token:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(self._config.name, f"{what}: answer is not a JSON object")
        value = data.get("token") or data.get("access_token")
        if not isinstance(value, str) or not value:
            raise UpstreamError(self._config.name, f"{what}: answer has neither token nor access_token")
        expires_in = data.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN
        # Counted from when the request was sent (not issued_at): no trust in clocks agreeing.
        margin = min(MAX_EXPIRY_MARGIN, expires_in * 0.1)
        return Token(value, started + expires_in - margin)
