"""Which Authorization header a request to one upstream carries, and how a 401 is answered.

The upstream tells us its scheme only by challenging: after the first Bearer challenge the realm is
known, so a repository seen for the first time gets its token before its first request instead of
after a wasted 401; after a Basic challenge the credentials go along with every request.

What is remembered is only a hint. A challenge is remembered once it has yielded a token (a realm that
refuses one repository, say a private one, says nothing about the others), and when the remembered
realm fails for a new repository the request goes out without a token, so the upstream's 401 tells the
current challenge, which is learned again.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from .challenge import Challenge
from .errors import UpstreamError, UpstreamUnauthorized
from .tokens import TokenCache
from .transport import Transport, basic_auth

_BEARER = "Bearer "

log = logging.getLogger("pullcache.upstream")


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


class Authorizer:
    """Authorization state of one upstream: its last Bearer challenge, whether it wants Basic, its tokens."""

    def __init__(self, transport: Transport, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = transport.config
        self._tokens = TokenCache(transport, clock=clock)
        self._bearer: Challenge | None = None
        self._basic = False

    async def header(self, scope: str) -> str | None:
        """The Authorization value to send up front, or None until the upstream has challenged."""
        if self._basic:
            return self._basic_header()
        token = self._tokens.cached(scope)
        if token is None and self._bearer is not None:
            try:
                token = await self._tokens.obtain(self._bearer, scope)
            except UpstreamError as exc:
                log.debug("%s: the remembered token realm failed for %s, asking the upstream afresh: %s",
                          self._config.name, scope, exc)
        return _BEARER + token if token is not None else None

    async def answer(self, challenges: Sequence[Challenge], scope: str, refused: str | None) -> str:
        """The Authorization value to retry with after a 401 carrying challenges; `refused` is what it rejected."""
        if refused is not None and refused.startswith(_BEARER):
            self._tokens.invalidate(scope, refused[len(_BEARER):])
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if bearer is not None:
            token = await self._tokens.obtain(bearer, scope)
            # Remembered without its scope, which names the repository this 401 was about, not the next one.
            self._bearer = Challenge(bearer.scheme, {k: v for k, v in bearer.params.items() if k != "scope"})
            self._basic = False
            return _BEARER + token
        if any(c.scheme == "basic" for c in challenges):
            header = self._basic_header()
            if header is None:
                raise UpstreamUnauthorized(
                    self._config.name, "asks for Basic credentials and none are configured "
                                       "(set username and password or password_env)", 401)
            self._basic, self._bearer = True, None
            return header
        offered = ", ".join(sorted({c.scheme for c in challenges})) or "none"
        raise UpstreamUnauthorized(
            self._config.name, f"answered 401 without a usable Bearer or Basic challenge (offered: {offered})", 401)

    def _basic_header(self) -> str | None:
        credentials = self._config.credentials()
        return basic_auth(*credentials) if credentials else None
