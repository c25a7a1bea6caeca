"""What can go wrong talking to an upstream, as exception types the resolver can act on.

The resolver needs to tell "the image does not exist" (remember it, answer 404) from "upstream is
down" (serve stale, answer 503) from "upstream throttles us" (pass Retry-After on), so each cause
has its own class. Every message is one line that names the upstream and what happened.
"""
from __future__ import annotations

import re

_WHITESPACE = re.compile(r"\s+")


def one_line(text: str, limit: int = 600) -> str:
    """Collapse text from remote bodies or exceptions so it cannot break a log line."""
    text = _WHITESPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UpstreamError(Exception):
    """An upstream request failed; `status` is the HTTP status when the upstream answered one."""

    def __init__(self, upstream: str, message: str, status: int | None = None) -> None:
        self.upstream = upstream
        self.status = status
        self.message = one_line(message)
        super().__init__(f"upstream {upstream}: {self.message}")


class UpstreamNotFound(UpstreamError):
    """The repository, manifest or blob does not exist upstream (404 or an *_UNKNOWN error code)."""


class UpstreamRateLimited(UpstreamError):
    """The upstream answered 429; `retry_after` is its Retry-After header, passed on verbatim."""

    def __init__(self, upstream: str, message: str, status: int | None = 429,
                 retry_after: str | None = None) -> None:
        super().__init__(upstream, message, status)
        self.retry_after = retry_after


class UpstreamUnauthorized(UpstreamError):
    """Still 401/403 after authenticating: a private repository, wrong credentials, or no such repository
    on registries (like Docker Hub) that do not reveal which."""


class UpstreamRealmRefused(UpstreamError):
    """The upstream's auth challenge points at a token realm pullcache may not contact (not the upstream's
    own host nor listed in token_hosts, or a downgrade from https). A configuration problem, not an outage."""


class UpstreamUnavailable(UpstreamError):
    """The upstream cannot serve right now: 5xx, connection refused, DNS or TLS failure, dropped connection."""


class UpstreamTimeout(UpstreamUnavailable):
    """The upstream accepted the connection but sent nothing for longer than read_timeout (or never connected
    within connect_timeout)."""
