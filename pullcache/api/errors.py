"""OCI error bodies: one exception type carries the spec's code, HTTP status, message and detail."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

# The spec's codes and the status each is answered with unless a handler says otherwise.
STATUS_BY_CODE = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "TAG_INVALID": 400,  # legacy Docker code the spec allows for a reference outside the tag grammar
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "RANGE_INVALID": 416,
    "UNAVAILABLE": 503,
}


class RegistryError(Exception):
    """Raised anywhere below a handler; the error middleware renders it as the spec's JSON body."""

    def __init__(self, code: str, message: str, *, status: int | None = None, detail: Any = None,
                 headers: dict[str, str] | list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_BY_CODE.get(code, 400)
        self.detail = detail
        self.headers = CIMultiDict(headers or {})  # a list keeps repeated headers (several challenges)

    def response(self, *, head: bool = False) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        body = json.dumps({"errors": [error]}).encode()
        headers = CIMultiDict(self.headers)
        headers["Content-Type"] = "application/json"
        if head:
            headers["Content-Length"] = str(len(body))
            return web.Response(status=self.status, headers=headers)
        return web.Response(status=self.status, body=body, headers=headers)
