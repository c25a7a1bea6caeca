"""From a request's repository name to where it lives: the resolver's answer and its repository in the store.

Every handler goes through here, so `?ns=` is honoured the same way everywhere and reads and writes
cannot disagree about which repository a name means.
"""
from __future__ import annotations

from aiohttp import web

from pullcache.api.appkeys import RESOLVER, STORE
from pullcache.cache.repos import Repository
from pullcache.resolver import Target


def read_target(request: web.Request, name: str) -> Target:
    """Where to read `name` from: a local repository or an upstream (then the caller delegates to proxied)."""
    return request.app[RESOLVER].resolve(name, request.query.get("ns"))


def push_target(request: web.Request, name: str) -> Target:
    """The local repository a write may change; DENIED for upstream names and local.deny_push."""
    return request.app[RESOLVER].resolve_push(name, request.query.get("ns"))


def repository_of(request: web.Request, target: Target) -> Repository:
    """The target's repository in the store: local, or the cached copy of an upstream repository."""
    return request.app[STORE].repository(target.store_name, cached=not target.is_local)
