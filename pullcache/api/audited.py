"""Audit events from HTTP requests: who (the request's user, else `anonymous`) and from where, for pullcache.audit."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from pullcache.api.appkeys import USER
from pullcache.audit import AuditLog

AUDIT = web.AppKey("audit", AuditLog)  # set by v2.setup
ANONYMOUS_PRINCIPAL = "anonymous"


def audit(request: web.Request, action: str, result: str, *, principal: str | None = None, **fields: Any) -> None:
    """Record one event about `request`; `principal` overrides the request's user (a failed login's name)."""
    log = request.app.get(AUDIT)
    if log is None or not log.enabled:
        return
    who = principal if principal is not None else request.get(USER) or ANONYMOUS_PRINCIPAL
    log.record(action, result, principal=who, remote=request.remote, **fields)
