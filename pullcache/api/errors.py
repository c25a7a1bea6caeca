"""OCI error bodies: each kind of error is registered once with its wire code and HTTP status.

As in Distribution's `errcode`, a handler raises a registered kind (`BLOB_UNKNOWN.error(...)`), never a
code string with a status beside it: a typo is an import error, and one kind always answers one status.
Several kinds may share a wire code (the spec has no code for 502, 504 or 507; clients see UNAVAILABLE).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

Headers = dict[str, str] | list[tuple[str, str]]


@dataclass(frozen=True)
class ErrorCode:
    """One kind of error: its name here, the `code` clients see in the JSON body, and its HTTP status."""

    name: str
    code: str
    status: int
    description: str

    def error(self, message: str, *, detail: Any = None, headers: Headers | None = None) -> RegistryError:
        return RegistryError(self, message, detail=detail, headers=headers)


_REGISTERED: dict[str, ErrorCode] = {}


def register(name: str, code: str, status: int, description: str) -> ErrorCode:
    """Make a kind of error known; a name registered twice is a programming error."""
    if name in _REGISTERED:
        raise ValueError(f"error code {name} is already registered")
    kind = _REGISTERED[name] = ErrorCode(name, code, status, description)
    return kind


def registered() -> tuple[ErrorCode, ...]:
    return tuple(_REGISTERED.values())


BLOB_UNKNOWN = register("BLOB_UNKNOWN", "BLOB_UNKNOWN", 404, "the blob is not in the repository")
BLOB_UPLOAD_INVALID = register("BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_INVALID", 400, "the upload request is malformed")
BLOB_UPLOAD_OUT_OF_ORDER = register("BLOB_UPLOAD_OUT_OF_ORDER", "BLOB_UPLOAD_INVALID", 416,
                                    "a chunk does not continue the upload where it stands")
BLOB_UPLOAD_UNKNOWN = register("BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_UNKNOWN", 404,
                               "the upload was never started, was finished or was cancelled")
DIGEST_INVALID = register("DIGEST_INVALID", "DIGEST_INVALID", 400,
                          "a digest is malformed or does not match the content")
MANIFEST_BLOB_UNKNOWN = register("MANIFEST_BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN", 400,
                                 "a pushed manifest references content the repository lacks")
MANIFEST_INVALID = register("MANIFEST_INVALID", "MANIFEST_INVALID", 400, "a pushed manifest fails validation")
MANIFEST_TOO_LARGE = register("MANIFEST_TOO_LARGE", "MANIFEST_INVALID", 413,
                              "a pushed manifest exceeds the size limit")
MANIFEST_UNKNOWN = register("MANIFEST_UNKNOWN", "MANIFEST_UNKNOWN", 404, "the manifest is not in the repository")
NAME_INVALID = register("NAME_INVALID", "NAME_INVALID", 400, "the repository name breaks the name grammar")
NAME_UNKNOWN = register("NAME_UNKNOWN", "NAME_UNKNOWN", 404, "the repository (or endpoint) is not known here")
SIZE_INVALID = register("SIZE_INVALID", "SIZE_INVALID", 400, "a length does not match the content sent")
TAG_INVALID = register("TAG_INVALID", "TAG_INVALID", 400,
                       "the reference breaks the tag grammar (legacy Docker code the spec allows)")
UNAUTHORIZED = register("UNAUTHORIZED", "UNAUTHORIZED", 401, "the request needs (other) credentials")
DENIED = register("DENIED", "DENIED", 403, "the authenticated client may not do this")
UNSUPPORTED = register("UNSUPPORTED", "UNSUPPORTED", 405, "the method is not supported on this endpoint")
PAGINATION_NUMBER_INVALID = register("PAGINATION_NUMBER_INVALID", "UNSUPPORTED", 400,
                                     "the n= of a list is not a non-negative integer")
TOOMANYREQUESTS = register("TOOMANYREQUESTS", "TOOMANYREQUESTS", 429, "the upstream is rate-limiting pulls")
UNAVAILABLE = register("UNAVAILABLE", "UNAVAILABLE", 503, "storage or the upstream is out of reach for now")
UPSTREAM_BAD_ANSWER = register("UPSTREAM_BAD_ANSWER", "UNAVAILABLE", 502,
                               "the upstream answered with something pullcache cannot use")
UPSTREAM_TIMEOUT = register("UPSTREAM_TIMEOUT", "UNAVAILABLE", 504, "the upstream did not answer in time")
INSUFFICIENT_STORAGE = register("INSUFFICIENT_STORAGE", "UNAVAILABLE", 507,
                                "the disk is full, or the blob is larger than the cache may hold")
INTERNAL_ERROR = register("INTERNAL_ERROR", "UNAVAILABLE", 500, "an unexpected failure, logged once")


class RegistryError(Exception):
    """Raised anywhere below a handler; the error middleware renders it as the spec's JSON body."""

    def __init__(self, kind: ErrorCode, message: str, *, detail: Any = None, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail
        self.headers = CIMultiDict(headers or {})  # a list keeps repeated headers (several challenges)

    @property
    def status(self) -> int:
        return self.kind.status

    def response(self, *, head: bool = False) -> web.Response:
        error: dict[str, Any] = {"code": self.kind.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        body = json.dumps({"errors": [error]}).encode()
        headers = CIMultiDict(self.headers)
        headers["Content-Type"] = "application/json"
        if head:
            headers["Content-Length"] = str(len(body))
            return web.Response(status=self.status, headers=headers)
        return web.Response(status=self.status, body=body, headers=headers)
