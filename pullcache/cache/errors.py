"""Failures of the storage backend, whichever it is: what api/ answers 503 and start-up reports in one line."""
from __future__ import annotations


class StorageUnavailable(Exception):
    """The storage could not be reached or failed (an object store's 5xx, a timeout); the message says which
    and why. Requests that need it answer 503, and pullcache heals when it returns."""


class StorageMisconfigured(Exception):
    """The storage cannot be used as configured (no such bucket, credentials refused, a storage.path that
    belongs to another backend): a config problem, not an outage."""
