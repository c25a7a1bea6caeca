"""Builds the aiohttp Application: wires store, upstreams, resolver, pull-through, eviction and metrics."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from pullcache import metrics
from pullcache.api import hot, middleware, observe, ops, v2
from pullcache.api.appkeys import CONFIG, PULLTHROUGH, RESOLVER, SHADOW_WARNINGS, STORE
from pullcache.cache.configured import store_for
from pullcache.cluster import open_coordinator
from pullcache.config import Config
from pullcache.eviction.service import EvictionService
from pullcache.pullthrough import PullThrough
from pullcache.pullthrough.shadowing import ShadowWarnings
from pullcache.resolver import Resolver
from pullcache.upstream.pool import Upstreams

log = logging.getLogger("pullcache.store")
EVICTION = web.AppKey("eviction", EvictionService)
CLIENT_MAX_SIZE = 8 * 1024 * 1024  # manifests are limited to 4 MiB; blob bodies are streamed, not read whole


def build_app(config: Config) -> web.Application:
    """An Application whose resources open on startup and close on cleanup, in dependency order."""
    app = web.Application(middlewares=[observe.access, hot.serve, middleware.errors], client_max_size=CLIENT_MAX_SIZE)
    app[CONFIG] = config
    store = store_for(config.storage, config.cluster)
    upstreams = Upstreams(config.upstreams)
    app[STORE] = store
    app[RESOLVER] = Resolver(config, upstreams, lambda name: store.repository(name).exists(),
                             local_version=lambda: store.files.names_version)
    app[SHADOW_WARNINGS] = ShadowWarnings(app[RESOLVER])
    coordinator = open_coordinator(config)
    app[PULLTHROUGH] = PullThrough(store, config, coordinator)
    app[EVICTION] = EvictionService(store, config, coordinator)
    metrics.store_max_bytes.set(config.storage.max_size)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        log.info("storage: %s", store.backend)
        await upstreams.start()
        await app[EVICTION].start()
        try:
            yield
        finally:
            await app[EVICTION].stop()
            await app[SHADOW_WARNINGS].close()
            await app[PULLTHROUGH].close()
            await upstreams.close()
            await app[EVICTION].mark_clean()
            await store.close()
            await coordinator.close()

    app.cleanup_ctx.append(resources)
    v2.setup(app)
    ops.setup(app)
    return app
