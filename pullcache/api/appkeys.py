"""Typed keys under which app.py puts the shared objects that handlers use."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from pullcache.api.status_page import PullCounts
from pullcache.cache.store import Store
from pullcache.config import Config
from pullcache.resolver import Resolver

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
RESOLVER = web.AppKey("resolver", Resolver)
UPSTREAMS = web.AppKey("upstreams", Any)      # pullcache.upstream.pool.Upstreams
PULLTHROUGH = web.AppKey("pullthrough", Any)  # pullcache.pullthrough.PullThrough
PULL_COUNTS = web.AppKey("pull_counts", PullCounts)  # the status page's most pulled images (ops.setup)
