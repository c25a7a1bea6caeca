"""Retries of an upstream's idempotent requests (GET, HEAD, token fetches) inside the request's deadline.

Registries fail transiently: a backend restarts, a load balancer drops a connection, a CDN edge answers
502 for a moment. One failed attempt should cost the client latency, not its pull. So a request that
could not connect, timed out, or got a 5xx is sent again, at most ATTEMPTS times in all, after an
exponential backoff with full jitter (a random share of BACKOFF_START * 2**n, at most BACKOFF_MAX), so
that many pullcaches hit by one outage do not come back in step. A 429 is retried only when its
Retry-After (seconds or an HTTP date) ends before the deadline, after waiting that long. Nothing waits
past the deadline (request_timeout, counted from the start of the request): a retry whose wait would
end after it is not made, and the last error stands.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import TypeVar

from .. import metrics
from .errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)

ATTEMPTS = 4
BACKOFF_START = 0.1
BACKOFF_MAX = 2.0

T = TypeVar("T")
log = logging.getLogger("pullcache.upstream")


def reason(error: UpstreamError) -> str | None:
    """The `reason` label of a retryable failure; None for an answer that retrying would not change."""
    if error.retried:  # a token fetch that gave up inside a request: retrying the request would multiply attempts
        return None
    if isinstance(error, UpstreamRateLimited):
        return "429"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamUnavailable):
        return "5xx" if error.status is not None and error.status >= 500 else "connect"
    return None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now (`120` or an HTTP date, `now` on the wall clock); None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


def backoff(attempt: int, rng: random.Random) -> float:
    """The wait before retry number attempt+1: full jitter over an exponentially growing bound."""
    return rng.uniform(0.0, min(BACKOFF_MAX, BACKOFF_START * 2 ** attempt))


async def with_retries(upstream: str, what: str, deadline: float, send: Callable[[], Awaitable[T]],
                       *, rng: random.Random | None = None) -> T:
    """send()'s result, sending again after a retryable failure while attempts and the deadline (on the
    event loop's clock) allow; counted in pullcache_upstream_retries_total{upstream,reason}."""
    loop = asyncio.get_running_loop()
    rng = rng or random.Random()
    for attempt in range(ATTEMPTS):
        try:
            return await send()
        except UpstreamError as exc:
            why = reason(exc)
            if why is None:
                raise
            wait = backoff(attempt, rng) if not isinstance(exc, UpstreamRateLimited) \
                else retry_after_seconds(exc.retry_after, time.time())
            if attempt == ATTEMPTS - 1 or wait is None or loop.time() + wait >= deadline:
                exc.retried = True
                raise
            metrics.upstream_retries.labels(upstream, why).inc()
            log.info("upstream %s: %s failed (%s), retrying in %.2fs", upstream, what, exc.message, wait)
            await asyncio.sleep(wait)
    raise AssertionError("the last attempt returns or raises")
