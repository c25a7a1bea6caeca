"""The last failure of each upstream and when it happened, for the status page.

The request counters say that an upstream fails, not why; an operator looking at a "down" upstream
wants the cause ("DNS resolution failed", "connection refused", "timed out after 20s"). Kept per
upstream name for the whole process, like the Prometheus counters the page reads beside it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import UpstreamError


@dataclass(frozen=True)
class LastError:
    at: float  # wall clock
    text: str  # the operator's form of the error: cause and the URL it happened at


_last: dict[str, LastError] = {}


def record(error: UpstreamError) -> None:
    _last[error.upstream] = LastError(time.time(), error.for_operator)


def last_error(upstream: str) -> LastError | None:
    return _last.get(upstream)
