"""An upstream's rate-limit budget: below `ratelimit_reserve` pulls left, cached tags are not revalidated.

Docker Hub counts pulls against a quota and says what is left in `ratelimit-remaining: 76;w=21600` (and
the quota in `ratelimit-limit: 100;w=21600`) on its manifest and token responses. Spent to the last pull,
the quota fails every miss with 429 until the window ends. So once what is left drops below the reserve
(a share of the limit, default 10%, or a number of pulls), pullcache keeps the rest for what it does not
have: a cached tag whose manifest_ttl has passed is served as it is (counted `stale`) instead of being
revalidated, while misses still go upstream, and their answers say when the quota has come back.
A deployment that pulls only cached tags sends no misses, so one cached tag a minute (REVALIDATE_EVERY) is
still revalidated: by a HEAD, which Docker Hub does not count against the quota, and whose answer says
how much is left. Entering and leaving this mode is logged once each; the status page shows it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..config import UpstreamConfig

REVALIDATE_EVERY = 60.0  # seconds between the revalidations let through in saving mode

log = logging.getLogger("pullcache.upstream")

_saving: dict[str, bool] = {}  # upstream name -> whether it saves its quota now, for the status page


def parse_count(value: str | None) -> int | None:
    """Docker Hub's `76;w=21600` -> 76; anything else -> None."""
    head = (value or "").split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


def saving(upstream: str) -> bool:
    return _saving.get(upstream, False)


class Budget:
    """What one upstream last said about its quota, and whether revalidation is postponed for it."""

    def __init__(self, config: UpstreamConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._name = config.name
        self._reserve = config.ratelimit_reserve  # a share of the limit (<= 1) or a number of pulls
        self._limit: int | None = None
        self._clock = clock
        self._revalidated_at = 0.0  # when saving mode last let a revalidation through (or was entered)
        _saving[self._name] = False

    @property
    def saving(self) -> bool:
        return _saving.get(self._name, False)

    def may_revalidate(self) -> bool:
        """Whether an expired cached tag may be revalidated now: always, except in saving mode, which lets
        one through every REVALIDATE_EVERY seconds so that a fresh ratelimit-remaining can end it."""
        if not self.saving:
            return True
        now = self._clock()
        if now - self._revalidated_at < REVALIDATE_EVERY:
            return False
        self._revalidated_at = now
        return True

    def observe(self, remaining: int | None, limit: int | None) -> None:
        """Headers of one upstream answer: ratelimit-remaining and ratelimit-limit, parsed (None: absent)."""
        if limit is not None:
            self._limit = limit
        if remaining is None:
            return
        if self._reserve > 1:
            reserve = self._reserve
        elif self._limit is not None:
            reserve = self._reserve * self._limit
        else:
            return  # a share of an unknown limit: nothing to compare with
        now = remaining < reserve
        if now != self.saving:
            _saving[self._name] = now
            self._revalidated_at = self._clock()
            if now:
                log.warning("upstream %s: %d pulls left of its rate limit, below the reserve of %g "
                            "(ratelimit_reserve): cached tags are served without revalidation until it recovers",
                            self._name, remaining, reserve)
            else:
                log.warning("upstream %s: %d pulls left of its rate limit, above the reserve again: "
                            "cached tags are revalidated again", self._name, remaining)
