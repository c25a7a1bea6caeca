"""Failures behind a proxied repository in OCI terms: an upstream's refusal or outage, or a fill that failed
before its first byte, as the error a client can act on (pullcache had nothing cached to answer with).
"""
from __future__ import annotations

from pullcache.api.errors import (
    BLOB_UNKNOWN,
    DENIED,
    INSUFFICIENT_STORAGE,
    TOOMANYREQUESTS,
    UNAVAILABLE,
    UPSTREAM_BAD_ANSWER,
    UPSTREAM_TIMEOUT,
    ErrorCode,
    RegistryError,
)
from pullcache.cache.files import StoreFullError
from pullcache.cache.fill import FillFailed
from pullcache.pullthrough import BlobTooLarge
from pullcache.upstream.errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)


def fill_error(exc: FillFailed, what: str) -> Exception:
    """What a request answers when the fill it waited on failed before sending anything."""
    cause = exc.cause
    if isinstance(cause, UpstreamError):
        return upstream_error(cause, BLOB_UNKNOWN, what)
    if isinstance(cause, StoreFullError):
        return cause  # the error middleware answers 507
    if isinstance(cause, BlobTooLarge):
        return INSUFFICIENT_STORAGE.error(str(cause), detail={"digest": str(cause.digest)})
    return UNAVAILABLE.error(f"fetching {what} failed: {cause}")


def upstream_error(exc: UpstreamError, unknown: ErrorCode, what: str) -> RegistryError:
    """An upstream failure as the OCI error a client sees (pullcache had nothing cached to answer with).

    A refusal by the upstream (401/403 after authenticating) becomes 403 DENIED, not 401: the client
    cannot fix pullcache's upstream credentials by logging in to pullcache.
    """
    upstream = exc.upstream
    if isinstance(exc, UpstreamNotFound):
        return unknown.error(f"{what} is not known to upstream {upstream}", detail={"upstream": upstream})
    if isinstance(exc, UpstreamRateLimited):
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
        return TOOMANYREQUESTS.error(f"upstream {upstream} is rate-limiting pulls and {what} is not "
                                     f"cached; try again later", headers=headers, detail={"upstream": upstream})
    if isinstance(exc, UpstreamUnauthorized):
        return DENIED.error(f"upstream {upstream} refused access to {what} ({exc.message}); the "
                            "repository is private or missing, or pullcache's credentials for it lack access",
                            detail={"upstream": upstream})
    if isinstance(exc, UpstreamTimeout):
        return UPSTREAM_TIMEOUT.error(f"upstream {upstream} timed out serving {what}: {exc.message}",
                                      detail={"upstream": upstream})
    if isinstance(exc, UpstreamUnavailable):
        return UNAVAILABLE.error(f"upstream {upstream} is unavailable for {what}: {exc.message}",
                                 detail={"upstream": upstream})
    return UPSTREAM_BAD_ANSWER.error(f"upstream {upstream} answered badly for {what}: {exc.message}",
                                     detail={"upstream": upstream})
