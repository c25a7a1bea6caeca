"""From a request's repository name to where it lives: the resolver's answer, and the repository to read.

Every handler goes through here, so `?ns=` is honoured the same way everywhere and reads and writes
cannot disagree about which repository a name means. The answer is kept on the request (TARGET), so the
access log and metrics (api/observe.py) name the upstream the handler really used. A read gets a
cache/registry.py RegistryRepository, pushed or proxied alike (pullthrough/repository.py picks which), so
no handler asks which it is.
"""
from __future__ import annotations

from functools import partial

from aiohttp import web

from pullcache.api.appkeys import RESOLVER
from pullcache.api.errors import DENIED, NAME_UNKNOWN
from pullcache.api.routes import match_endpoint
from pullcache.cache.registry import RegistryRepository
from pullcache.cache.store import Store
from pullcache.policy import PullDenied, PullPolicy, applies
from pullcache.pullthrough import PullThrough
from pullcache.pullthrough.repository import repository_for
from pullcache.resolver import PushDenied, Target, UnknownNamespace

TARGET = web.RequestKey("target", Target)  # set by read_target / push_target


def read_target(request: web.Request, name: str) -> Target:
    """Where to read `name` from: a local repository or an upstream; 404 NAME_UNKNOWN for an `?ns=` that names
    no configured upstream, 403 DENIED for a manifest or blob the upstream's pull policy refuses (before
    anything is fetched)."""
    resolver = request.app[RESOLVER]
    try:
        target = resolver.resolve(name, request.query.get("ns"))
    except UnknownNamespace as exc:
        raise NAME_UNKNOWN.error(str(exc), detail={"ns": exc.ns}) from exc
    request[TARGET] = target
    if target.upstream is None or not applies(target.upstream.config.rules):
        return target  # nothing to check: no need to know which endpoint this is
    found = match_endpoint(request.raw_path.split("?", 1)[0][len("/v2/"):])
    if found is not None and found[0] in ("manifest", "blob"):
        try:
            resolver.check_pull(target, found[2])
        except PullDenied as exc:
            raise DENIED.error(exc.message, detail={"upstream": exc.upstream}) from exc
    return target


def read_repository(request: web.Request, name: str) -> tuple[Target, RegistryRepository]:
    """read_target, and the repository to read from."""
    target = read_target(request, name)
    return target, repository_of(request, target)


def push_target(request: web.Request, name: str) -> Target:
    """The local repository a write may change; 403 DENIED for upstream names and local.deny_push."""
    try:
        target = request.app[RESOLVER].resolve_push(name, request.query.get("ns"))
    except PushDenied as exc:
        raise DENIED.error(str(exc), detail={"name": exc.name}) from exc
    request[TARGET] = target
    return target


class Repositories:
    """The repository each target reads from, made once per target rather than per request (making one builds
    its paths). A repository object holds no state of its own, only where its links and bytes live, so one
    serves every request; clients choose names, so at most MAX_REMEMBERED are kept, the oldest going first."""

    MAX_REMEMBERED = 10_000

    def __init__(self, store: Store, pullthrough: PullThrough, policy: PullPolicy) -> None:
        self._make = partial(repository_for, store, pullthrough, policy)
        self._known: dict[Target, RegistryRepository] = {}

    def __call__(self, target: Target) -> RegistryRepository:
        repository = self._known.get(target)
        if repository is None:
            if len(self._known) >= self.MAX_REMEMBERED:
                del self._known[next(iter(self._known))]
            repository = self._known[target] = self._make(target)
        return repository


REPOSITORIES = web.AppKey("repositories", Repositories)  # set by v2.setup


def repository_of(request: web.Request, target: Target) -> RegistryRepository:
    """The repository a resolved name reads from: pushed here, or an upstream's through the cache."""
    return request.app[REPOSITORIES](target)
