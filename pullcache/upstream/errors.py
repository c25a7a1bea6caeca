"""What can go wrong talking to an upstream, as exception types the resolver can act on.

The resolver needs to tell "the image does not exist" (remember it, answer 404) from "upstream is
down" (serve stale, answer 503) from "upstream throttles us" (pass Retry-After on), so each cause
has its own class. Every message is one line that names the upstream and what happened.

`message` is what a client may read: it names the upstream by its configured name and never its URL,
host or port (an internal registry's address is the operator's business). `where`, the URL or host
involved, goes only into str(exc), which the log and the status page show.
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

    def __init__(self, upstream: str, message: str, status: int | None = None, *, where: str | None = None) -> None:
        self.upstream = upstream
        self.status = status
        self.message = one_line(message)
        self.where = one_line(where, 300) if where else None
        self.retried = False  # set once retries have been spent on it (retry.py): not to be retried again
        super().__init__(f"upstream {upstream}: {self.message}" + (f" [{self.where}]" if self.where else ""))

    @property
    def for_operator(self) -> str:
        """The message with where it happened: for the log and the status page, never for clients."""
        return self.message + (f" [{self.where}]" if self.where else "")


class UpstreamNotFound(UpstreamError):
    """The repository, manifest or blob does not exist upstream (404 or an *_UNKNOWN error code)."""


class UpstreamRateLimited(UpstreamError):
    """The upstream answered 429; `retry_after` is its Retry-After header, passed on verbatim."""

    def __init__(self, upstream: str, message: str, status: int | None = 429,
                 retry_after: str | None = None, *, where: str | None = None) -> None:
        super().__init__(upstream, message, status, where=where)
        self.retry_after = retry_after


class UpstreamUnauthorized(UpstreamError):
    """Still 401/403 after authenticating: a private repository, wrong credentials, or no such repository
    on registries (like Docker Hub) that do not reveal which."""


class UpstreamRealmRefused(UpstreamError):
    """The upstream's auth challenge points at a token realm pullcache may not contact (see tokens.allowed_realm
    and addresses.py), or downgrades from https. A configuration problem or a hostile upstream, not an outage."""


class UpstreamRedirectRefused(UpstreamError):
    """The upstream redirected to a host pullcache may not contact (see client.UpstreamClient._follow and
    addresses.py)."""


class UpstreamUnavailable(UpstreamError):
    """The upstream cannot serve right now: 5xx, connection refused, DNS or TLS failure, dropped connection."""


class UpstreamTimeout(UpstreamUnavailable):
    """The upstream sent nothing for longer than read_timeout, never connected within connect_timeout, gave no
    complete answer within request_timeout, or sent a blob body slower than the minimum rate."""
