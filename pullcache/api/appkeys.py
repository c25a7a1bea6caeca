"""Typed keys: the shared objects app.py puts on the application for handlers, and what handlers note on
a request for the access middleware (api/observe.py) to count and log."""
from __future__ import annotations

from aiohttp import web

from pullcache.api.status_page import PullCounts
from pullcache.cache.store import Store
from pullcache.config import Config
from pullcache.pullthrough import PullThrough
from pullcache.pullthrough.shadowing import ShadowWarnings
from pullcache.resolver import Resolver

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
RESOLVER = web.AppKey("resolver", Resolver)
PULLTHROUGH = web.AppKey("pullthrough", PullThrough)
SHADOW_WARNINGS = web.AppKey("shadow_warnings", ShadowWarnings)
PULL_COUNTS = web.AppKey("pull_counts", PullCounts)  # the status page's most pulled images (ops.setup)

ROUTE = web.RequestKey("route", str)                # the endpoint that answered: a metric label, never a raw path
SERVED_FROM = web.RequestKey("served_from", str)    # "local": a local repository's content was answered
CACHE_RESULT = web.RequestKey("cache_result", str)  # hit/miss/stale/revalidated/coalesced of a pull-through
USER = web.RequestKey("user", str)                  # the authenticated user, when there is one
# Epoch seconds until which the credentials that let this request through hold (a token's or robot's expiry).
AUTHORIZED_UNTIL = web.RequestKey("authorized_until", float)
