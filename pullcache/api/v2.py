"""The /v2/ API: the handler table, the version check at /v2/ and the _catalog."""
from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from pullcache.api import blobs, manifests, peer_fills, referrers, routes, tags, upload_forward, uploads
from pullcache.api.appkeys import CONFIG, PULLTHROUGH, RESOLVER, STORE
from pullcache.api.audited import AUDIT
from pullcache.api.auth import AUTHENTICATOR, TOKEN_PATH, Authenticator
from pullcache.api.hot import HOT_ANSWERS, HotAnswers
from pullcache.api.notify import NOTIFIER
from pullcache.api.targets import REPOSITORIES, Repositories
from pullcache.audit import AuditLog, unwatch_sighup, watch_sighup
from pullcache.cluster.secret import token_signing_key
from pullcache.notifications import Notifier
from pullcache.tokens import RobotTokens

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")

HANDLERS: dict[tuple[str, str], routes.Handler] = {
    ("manifest", "GET"): manifests.get_manifest,
    ("manifest", "PUT"): manifests.put_manifest,
    ("manifest", "DELETE"): manifests.delete_manifest,
    ("blob", "GET"): blobs.get_blob,
    ("blob", "DELETE"): blobs.delete_blob,
    ("upload", "POST"): uploads.start_upload,
    ("upload", "PATCH"): uploads.patch_upload,
    ("upload", "PUT"): uploads.finish_upload,
    ("upload", "GET"): uploads.upload_status,
    ("upload", "DELETE"): uploads.cancel_upload,
    ("tags", "GET"): tags.list_tags,
    ("referrers", "GET"): referrers.list_referrers,
}


async def base(request: web.Request) -> web.StreamResponse:
    """GET /v2/: this registry speaks the distribution API (and, past auth, the credentials are good)."""
    return web.json_response({})


async def catalog(request: web.Request) -> web.StreamResponse:
    """GET /v2/_catalog[?n=&last=]: local repositories and cached ones (as `<upstream>/<repository>`,
    the path-prefix name they are pulled by), only those the caller may pull."""
    store = request.app[STORE]
    names = sorted(await store.repository_names() + await store.repository_names(cached=True))
    names = await request.app[AUTHENTICATOR].pullable(request, names)
    page, headers = tags.paginate(request, names)
    return web.json_response({"repositories": page}, headers=headers)


async def _announce_api_version(request: web.Request, response: web.StreamResponse) -> None:
    """Every /v2 answer, errors and 401s included, says which API it speaks (Docker's ping checks it)."""
    if request.path.startswith("/v2"):
        response.headers[API_VERSION[0]] = API_VERSION[1]


async def _audit_log(app: web.Application) -> AsyncIterator[None]:
    """The audit file follows SIGHUP while serving; every queued line is written before it closes."""
    watch_sighup(app[AUDIT])
    try:
        yield
    finally:
        unwatch_sighup(app[AUDIT])
        await app[AUDIT].close()


async def _notifier(app: web.Application) -> AsyncIterator[None]:
    await app[NOTIFIER].start()
    try:
        yield
    finally:
        await app[NOTIFIER].close()


def setup(app: web.Application) -> None:
    """Register the API; a bad htpasswd file, rule, audit path or cluster secret raises ConfigError here,
    before anything is served."""
    config = app[CONFIG]
    app[AUDIT] = AuditLog(config.log)
    app.cleanup_ctx.append(_audit_log)
    app[NOTIFIER] = Notifier(config.notifications)
    app.cleanup_ctx.append(_notifier)
    authenticator = Authenticator(config.auth, anonymous_push=config.local.anonymous_push,
                                  robots=RobotTokens(config.storage.path),
                                  signing_key=token_signing_key(config.cluster))
    app[AUTHENTICATOR] = authenticator
    app[REPOSITORIES] = Repositories(app[STORE], app[PULLTHROUGH], app[RESOLVER].policy)
    # A replayed pull cannot name its caller, so where pulls are recorded every one takes the full path.
    app[HOT_ANSWERS] = HotAnswers(enabled=not (app[AUDIT].pulls or app[NOTIFIER].wants("pull")))
    app.on_response_prepare.append(_announce_api_version)
    # Always served: a refused push's 401 names this realm, and Docker fetches a token before it shows the reason.
    app.router.add_get(TOKEN_PATH, authenticator.token)
    routes.setup(app, HANDLERS, base, catalog, authenticator.authorize)
    peer_fills.setup(app)
    upload_forward.setup(app, HANDLERS)
