"""Remote registries: one client per upstream, auth challenges, token cache, fetches.

Knows remote registries and nothing of disk: callers get bytes, sizes and typed errors.
"""
from .client import BlobStream, ManifestHead, ManifestResponse, UpstreamClient
from .errors import (
                     UpstreamError,
                     UpstreamNotFound,
                     UpstreamRateLimited,
                     UpstreamRealmRefused,
                     UpstreamRedirectRefused,
                     UpstreamTimeout,
                     UpstreamUnauthorized,
                     UpstreamUnavailable,
)
from .pool import Upstreams

__all__ = [
                     "BlobStream",
                     "ManifestHead",
                     "ManifestResponse",
                     "UpstreamClient",
                     "UpstreamError",
                     "UpstreamNotFound",
                     "UpstreamRateLimited",
                     "UpstreamRealmRefused",
                     "UpstreamRedirectRefused",
                     "UpstreamTimeout",
                     "UpstreamUnauthorized",
                     "UpstreamUnavailable",
                     "Upstreams",
]
