"""In which order an upstream's URLs are asked: a circuit breaker per URL.

A URL that fails (cannot connect, times out, answers 5xx or 429) is skipped for a backoff that doubles
with each failed probe, from BACKOFF_START up to BACKOFF_MAX; once it has passed the URL is probed again
by the next request, and one success closes it. Requests go to the URLs in their configured order,
skipping open ones, so the primary gets its traffic back with the first probe that succeeds. When every
URL is open they are all tried anyway, the one reopening soonest first: an upstream is never given up on
without being asked. Failures reported while a URL is already open (requests that set out before it
opened) are the same outage and do not grow its backoff.

A URL that hangs (accepts the connection, never answers) must not use up the whole request_timeout, or the
next URL is never asked: each attempt gets at most read_timeout and an equal share of the time left among
the URLs still to be asked (attempt_limit), and running out of it is that URL's failure like any other.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .. import metrics

BACKOFF_START = 1.0
BACKOFF_MAX = 300.0

log = logging.getLogger("pullcache.upstream")


class Breaker:
    """The health of one URL of one upstream, mirrored in pullcache_upstream_url_up{upstream,url}."""

    def __init__(self, upstream: str, url: str, *, has_fallback: bool = True) -> None:
        self.upstream = upstream
        self.url = url
        self._has_fallback = has_fallback  # whether skipping it means anything worth logging
        self.open_until = 0.0
        self._failures = 0
        self._gauge = metrics.upstream_url_up.labels(upstream, url)
        self._gauge.set(1)

    def is_open(self, now: float) -> bool:
        return now < self.open_until

    def failed(self, now: float, cause: str) -> None:
        if self.is_open(now):
            return
        self._failures += 1
        backoff = min(BACKOFF_START * 2 ** min(self._failures - 1, 16), BACKOFF_MAX)
        self.open_until = now + backoff
        self._gauge.set(0)
        if self._has_fallback:
            log.warning("upstream %s: URL %s failed (%s); skipping it for %gs", self.upstream, self.url, cause, backoff)

    def succeeded(self) -> None:
        if self._failures and self._has_fallback:
            log.info("upstream %s: URL %s answers again", self.upstream, self.url)
        self._failures = 0
        self.open_until = 0.0
        self._gauge.set(1)


class HasBreaker(Protocol):
    @property
    def breaker(self) -> Breaker: ...


M = TypeVar("M", bound=HasBreaker)


def in_order(mirrors: Sequence[M], now: float) -> list[M]:
    """The mirrors to try, in order: the closed ones as configured, then the open ones by reopening time."""
    closed = [m for m in mirrors if not m.breaker.is_open(now)]
    opened = sorted((m for m in mirrors if m.breaker.is_open(now)), key=lambda m: m.breaker.open_until)
    return closed + opened


@dataclass(frozen=True)
class AttemptLimit:
    """How long one attempt on one URL may take, and which rule set it (for the error message). When the
    rule is the request's own deadline, the message names the configured request_timeout (`shown`), not
    the fraction of it left when this attempt began."""
    seconds: float
    rule: str
    shown: float | None = None

    def __str__(self) -> str:
        return f"{self.seconds if self.shown is None else self.shown:.3g}s ({self.rule})"


def attempt_limit(remaining: float, read_timeout: float, urls_left: int, request_timeout: float) -> AttemptLimit:
    """The time one attempt may take: read_timeout, but no more than an equal share of the `remaining`
    seconds of the request among the `urls_left` URLs still to be asked (this one included)."""
    share = max(0.0, remaining) / max(1, urls_left)
    if read_timeout < share:
        return AttemptLimit(read_timeout, "read_timeout")
    if urls_left > 1:
        return AttemptLimit(share, "this URL's share of request_timeout, the rest left for the next URL")
    return AttemptLimit(share, "request_timeout", shown=request_timeout)
