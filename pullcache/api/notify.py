"""Events from HTTP requests, in Distribution's shape (target, request, actor, source), for pullcache.notifications."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web

from pullcache.api.appkeys import USER
from pullcache.notifications import Notifier

NOTIFIER = web.AppKey("notifier", Notifier)  # set by v2.setup


def notify(request: web.Request, action: str, repository: str, digest: str, *, tag: str | None = None,
           media_type: str | None = None, size: int | None = None) -> None:
    """Queue a push, delete or pull event of `repository` for every endpoint that wants it; returns at once."""
    notifier = request.app.get(NOTIFIER)
    if notifier is None or not notifier.wants(action):
        return
    target: dict[str, object] = {"repository": repository, "digest": digest,
                                 "url": f"{request.scheme}://{request.host}/v2/{repository}/manifests/{digest}"}
    if media_type is not None:
        target["mediaType"] = media_type
    if size is not None:
        target["size"] = target["length"] = size
    if tag is not None:
        target["tag"] = tag
    user = request.get(USER)
    notifier.publish({
        "id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "action": action,
        "target": target,
        "request": {"id": str(uuid.uuid4()), "addr": request.remote, "host": request.host,
                    "method": request.method, "useragent": request.headers.get("User-Agent", "")},
        "actor": {"name": user} if user else {},
        "source": {"addr": f"{notifier.hostname}:{request.url.port}", "instanceID": notifier.instance_id},
    })
