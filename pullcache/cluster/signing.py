"""Signed requests between pullcache processes: an HMAC-SHA256, under a key derived from the cluster secret,
over the method, the path and an expiry a few seconds ahead.

The expiry bounds what a captured request is worth: replayed later it is refused. Only the path is signed,
not the body or the query: the internal endpoints that check it take neither.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

EXPIRES_HEADER = "X-Pullcache-Expires"
SIGNATURE_HEADER = "X-Pullcache-Signature"
FILLS_PATH = "/_pullcache/fills"  # the internal endpoint a fill's holder serves it to its peers on (signed)
VALID_FOR = 30.0  # seconds a signed request stays good: far less than a capture is worth, more than clocks drift


class Unsigned(Exception):
    """The request carries no signature (answered 401)."""


class BadSignature(Exception):
    """The signature is wrong or expired (answered 403)."""


class RequestSigner:
    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock

    def _mac(self, method: str, path: str, expires: str) -> str:
        message = f"{method.upper()}\n{path}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def headers(self, method: str, path: str) -> dict[str, str]:
        """The headers that sign a request for `method path` (the raw path, as sent)."""
        expires = str(int(self._clock() + VALID_FOR))
        return {EXPIRES_HEADER: expires, SIGNATURE_HEADER: self._mac(method, path, expires)}

    def check(self, method: str, path: str, headers: Mapping[str, str]) -> None:
        """Raise Unsigned or BadSignature unless the headers sign this request and have not expired."""
        expires, signature = headers.get(EXPIRES_HEADER), headers.get(SIGNATURE_HEADER)
        if expires is None or signature is None:
            raise Unsigned(f"no {SIGNATURE_HEADER} header: peer requests are signed with the cluster secret")
        if not hmac.compare_digest(self._mac(method, path, expires), signature):
            raise BadSignature("the signature does not match: not signed with this cluster's secret")
        if not expires.isdigit() or int(expires) < self._clock():
            raise BadSignature("the signature has expired")
        if int(expires) > self._clock() + 2 * VALID_FOR:
            raise BadSignature("the signature's expiry is too far ahead")
