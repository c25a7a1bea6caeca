"""The endpoints for operators beside the registry API: /healthz, /readyz, /metrics and the status page at /.

/healthz says the process answers (a liveness probe: restart me if not). /readyz says it can do its job:
the store accepts writes and the index answers (a readiness probe: send me no traffic if not), with the
reason when it cannot. It also says whether coordination works (`coordination`: ok, or degraded with
`coordination_reason` while Redis is down), without failing for it: a replica without Redis still serves.
/metrics is the Prometheus exposition of pullcache.metrics, absent when metrics.enabled is false.

The status page names the most pulled images (private local repositories among them) and /metrics
carries the same figures, so both are pulls to the Authenticator: with `auth.pull: authenticated` they
need credentials (Prometheus scrapes with basic_auth). The probes never do: kubelet sends none.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from pullcache import metrics
from pullcache.api import status_page
from pullcache.api.appkeys import CONFIG, PULL_COUNTS, ROUTE, STORE
from pullcache.api.auth import AUTHENTICATOR, Access
from pullcache.cache.store import Store
from pullcache.cluster.members import ClusterView, Membership, open_membership

MEMBERSHIP = web.AppKey("membership", Membership)

PROBE_TIMEOUT = 5.0  # a hung disk or a busy index must make /readyz fail, not hang
STATUS_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # The page is self-contained: inline CSS and SVG, no scripts, nothing fetched.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _storage_writable(store: Store) -> None:
    """Create, write and remove a temp file where blobs are written (all off the event loop)."""
    writer = await store.new_writer().open()
    try:
        await writer.write(b"readyz")
        await writer.flush()
    finally:
        await writer.abort()


async def _index_open(store: Store) -> None:
    """One trivial SELECT on the index's thread: the connection is open and the database answers."""
    await store.check_index()


async def _backend_ready(store: Store) -> None:
    """The blob backend answers (the S3 bucket takes a write; nothing more to ask of a local disk)."""
    await store.check_backend()


async def _probe(check: Callable[[Store], Awaitable[None]], store: Store, what: str) -> str | None:
    """None if the check passed, else why not."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):  # not wait_for: on 3.11 it can drop a cancellation
            await check(store)
    except TimeoutError:
        return f"{what}: no answer within {PROBE_TIMEOUT:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer: reported, not raised
        return f"{what}: {exc or exc.__class__.__name__}"
    return None


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    storage, index, backend = await asyncio.gather(
        _probe(_storage_writable, store, "storage not writable"), _probe(_index_open, store, "index not open"),
        _probe(_backend_ready, store, "blob storage not available"))
    checks = {"storage": storage or "ok", "index": index or "ok", "backend": backend or "ok"}
    coordination = _coordination(request.app[MEMBERSHIP].view)
    reasons = [reason for reason in (storage, index, backend) if reason]
    if reasons:
        return web.json_response({"status": "unavailable", "reason": "; ".join(reasons), "checks": checks,
                                  **coordination}, status=503)
    return web.json_response({"status": "ready", "checks": checks, **coordination})


def _coordination(view: ClusterView) -> dict[str, str]:
    """`coordination` ok or degraded, and while degraded the reason: the last heartbeat's (cluster.members)."""
    if view.problem is None:
        return {"coordination": "ok"}
    return {"coordination": "degraded", "coordination_reason": view.problem}


async def metrics_exposition(request: web.Request) -> web.Response:
    """One process's registry in memory; with workers, every worker's files (read in a thread: disk)."""
    body = await asyncio.to_thread(metrics.exposition) if metrics.MULTIPROCESS else metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    cluster = await request.app[MEMBERSHIP].beat()  # the roster now, not as of this process's last heartbeat
    figures = status_page.read_figures(request.app[CONFIG], request.app[PULL_COUNTS], cluster)
    return web.Response(text=status_page.render_page(figures), content_type="text/html",
                        headers=STATUS_PAGE_HEADERS)


def _named(route: str, handler: Handler, access: Access | None = None) -> Handler:
    """Label the request's route for the access middleware (metrics never see raw paths); with an access,
    authorize the request first (after labelling, so that a 401 is counted under its route)."""
    async def labelled(request: web.Request) -> web.StreamResponse:
        request[ROUTE] = route
        if access is not None:
            await request.app[AUTHENTICATOR].authorize(request, access)
        return await handler(request)
    return labelled


async def _membership(app: web.Application) -> AsyncIterator[None]:
    """On the members roster while serving (after the store opened, before it closes): what /readyz and the
    status page report of the cluster."""
    await app[MEMBERSHIP].start()
    try:
        yield
    finally:
        await app[MEMBERSHIP].stop()


def setup(app: web.Application) -> None:
    """Register the operator endpoints (HEAD too); the protected ones use the Authenticator v2.setup put on app."""
    app[PULL_COUNTS] = status_page.PullCounts()  # this server's pulls, not every app's in the process
    app[MEMBERSHIP] = open_membership(app[CONFIG])
    app.cleanup_ctx.append(_membership)
    app.router.add_get("/healthz", _named("healthz", healthz))
    app.router.add_get("/readyz", _named("readyz", readyz))
    if app[CONFIG].metrics.enabled:
        app.router.add_get("/metrics", _named("metrics", metrics_exposition, Access.PULL))
    app.router.add_get("/", _named("status", status, Access.PULL))
