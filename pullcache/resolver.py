"""The one place that decides whether a repository name is served locally or from an upstream.

Rules (DESIGN.md "Routing"): containerd's `?ns=` names the upstream; else a first path component
equal to an upstream's name; else a repository that exists locally; else the default upstream.
Docker Hub's one-component names get `library/`. Pushes go only to local names that do not start
with an upstream's name, do not match `local.deny_push` and, when `local.allow_push` is set, match it.
A pushed bare name shadows the default upstream's image of that name for every mirror client.

Whether a bare name exists locally is asked of the store once per LOCAL_CHECK_SECONDS, not on every
request (LocalCheck): a repository another process on the same store creates is seen within that time, and
one pushed through this process at once.

Pulls from an upstream are checked against its `rules` (policy.py) before anything is fetched.

A refusal is one of this module's exceptions (or policy.PullDenied); api/targets.py says it in HTTP,
`pullcache warm` in words.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from cachetools import TTLCache

from pullcache.config import Config, UpstreamConfig
from pullcache.names import matches_glob
from pullcache.policy import PullPolicy, applies

if TYPE_CHECKING:
    from pullcache.upstream.client import UpstreamClient
    from pullcache.upstream.pool import Upstreams


LOCAL_CHECK_SECONDS = 1.0   # how long a local repository's existence, or absence, is taken as known
PUSH_WINDOW_SECONDS = 600   # a name pushed to within this long is asked about on every read until it exists
CHECKED_NAMES = 100_000     # names remembered (clients choose them: bounded)


class UnknownNamespace(LookupError):
    """`?ns=` names no configured upstream: pullcache contacts no host the operator did not list."""

    def __init__(self, ns: str) -> None:
        super().__init__(f"ns={ns!r} names no configured upstream; pullcache only contacts the upstreams in its config")
        self.ns = ns


class PushDenied(PermissionError):
    """A write to a name that is proxied from an upstream, matches local.deny_push or misses local.allow_push;
    the message says which."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Target:
    """Where a request's repository lives."""

    name: str                           # the name as the client wrote it (for Location headers)
    upstream: UpstreamClient | None   # None: a local repository
    repository: str                     # the local name, or the name at the upstream (library/ applied)
    # True when a bare name went upstream only because nothing local has that name yet: it may
    # still become a local repository by a push, so push-time existence checks stay local.
    via_default: bool = False

    @property
    def store_name(self) -> str:
        """The repository's name in the store: local names as they are, cached ones under their upstream."""
        return self.repository if self.upstream is None else f"{self.upstream.name}/{self.repository}"


def upstream_repository(config: UpstreamConfig, name: str) -> str:
    """Docker Hub keeps official images under library/: `alpine` is `library/alpine` there."""
    if config.is_docker_hub and "/" not in name:
        return f"library/{name}"
    return name


class LocalCheck:
    """Whether a local repository exists, remembered for LOCAL_CHECK_SECONDS: asking the store means building
    its paths and a stat on the event loop, on every request for a bare name, twice with auth.

    A name a push here is writing to is not remembered as absent (only found), so the read that follows
    the push sees the new repository at once. An absence is also forgotten once `version()` changes: the
    store's count of repositories other processes made known (replicas hear of one as it is created);
    where it stays 0, pushes through other processes are seen within the interval.
    A plain dict, not a TTLCache: this runs twice per request, and the oldest entry goes when it is full.
    """

    def __init__(self, exists: Callable[[str], bool], clock: Callable[[], float],
                 version: Callable[[], int] = lambda: 0) -> None:
        self._exists = exists
        self._clock = clock
        self._version = version
        self._known: dict[str, tuple[bool, float, int]] = {}  # name -> (exists, until, version)
        self._pushing: TTLCache[str, bool] = TTLCache(CHECKED_NAMES, PUSH_WINDOW_SECONDS, timer=clock)

    def __call__(self, name: str) -> bool:
        now = self._clock()
        known = self._known.get(name)
        if known is not None and now < known[1] and (known[0] or known[2] == self._version()):
            return known[0]
        exists = self._exists(name)
        if exists:
            self._pushing.pop(name, None)
        if exists or name not in self._pushing:
            self._known.pop(name, None)  # re-inserted last: the dict stays in order of checking
            if len(self._known) >= CHECKED_NAMES:
                del self._known[next(iter(self._known))]
            self._known[name] = (exists, now + LOCAL_CHECK_SECONDS, self._version())
        return exists

    def pushing(self, name: str) -> None:
        """A write to `name` is under way: its repository may exist by the next read."""
        self._known.pop(name, None)
        self._pushing[name] = True


K = TypeVar("K")


def _remember(targets: dict[K, Target], key: K, target: Target) -> Target:
    """Keep a name's target; clients choose names, so at most CHECKED_NAMES are kept, the oldest going first."""
    if len(targets) >= CHECKED_NAMES:
        del targets[next(iter(targets))]
    targets[key] = target
    return target


class Resolver:
    def __init__(self, config: Config, upstreams: Upstreams, local_exists: Callable[[str], bool], *,
                 local_version: Callable[[], int] = lambda: 0, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._upstreams = upstreams
        self._local_exists = LocalCheck(local_exists, clock, local_version)
        self.policy = PullPolicy(ruled=[u.name for u in config.upstreams if applies(u.rules)])
        # Targets of upstream names (name, ns) and bare names' default-upstream ones (name), which no push
        # changes: made once per name, not per request.
        self._upstream_targets: dict[tuple[str, str | None], Target] = {}
        self._default_targets: dict[str, Target] = {}

    def check_pull(self, target: Target, reference: str) -> None:
        """PullDenied when the target's upstream rules refuse this manifest or blob (policy.py)."""
        if target.upstream is not None:
            self.policy.check(target.upstream.name, target.upstream.config.rules, target.repository, reference)

    def resolve(self, name: str, ns: str | None = None) -> Target:
        """Where to read `name` from."""
        known = self._upstream_targets.get((name, ns))
        if known is not None:
            return known
        if ns is not None:
            client = self._upstreams.by_ns(ns)
            if client is None:
                raise UnknownNamespace(ns)
            return _remember(self._upstream_targets, (name, ns),
                             Target(name, client, upstream_repository(client.config, name)))
        first, _, rest = name.partition("/")
        client = self._upstreams.by_name(first) if rest else None
        if client is not None:
            return _remember(self._upstream_targets, (name, ns),
                             Target(name, client, upstream_repository(client.config, rest)))
        shadowed = self.default_target(name)
        if shadowed is None or self._local_exists(name):
            return Target(name, None, name)
        return shadowed

    def resolve_push(self, name: str, ns: str | None = None) -> Target:
        """The local target a push may write to, or PushDenied saying why not."""
        first = name.split("/", 1)[0]
        if ns is not None or (self._upstreams.by_name(first) is not None and "/" in name):
            raise PushDenied(name, f"repository {name!r} is proxied from an upstream and is read-only; "
                                   "push to a name that does not start with an upstream's name")
        # A one-component name is what Docker Hub calls library/<name>: `alpine` would shadow library/alpine.
        candidates = [name] if "/" in name else [name, f"library/{name}"]
        for pattern in self._config.local.deny_push:
            if any(matches_glob(candidate, pattern) for candidate in candidates):
                raise PushDenied(name, f"pushing to {name!r} is denied by local.deny_push pattern {pattern!r} "
                                       "(it would shadow an upstream image)")
        allowed = self._config.local.allow_push
        if allowed and not any(matches_glob(name, pattern) for pattern in allowed):
            raise PushDenied(name, f"pushing to {name!r} is not allowed: local.allow_push admits only "
                                   f"{', '.join(allowed)}")
        self._local_exists.pushing(name)
        return Target(name, None, name)

    def default_target(self, name: str) -> Target | None:
        """The default upstream's repository for a bare name: where it is pulled from while nothing local has
        that name, and so the image a push of that name hides from every mirror client."""
        known = self._default_targets.get(name)
        if known is not None:
            return known
        default = self._upstreams.default
        if default is None:
            return None
        return _remember(self._default_targets, name,
                         Target(name, default, upstream_repository(default.config, name), via_default=True))
