"""Hot manifest answers: a manifest GET or HEAD the cache answered moments ago is answered again from a copy,
skipping dispatch, name checks, authorization and the handler, about half of what a cached pull costs
pullcache beyond aiohttp's own work (bench/README.md, "Per-process efficiency").

A copy is keyed by everything its answer depends on: the method, the raw path with its query, every
`Accept` value and the `Authorization` header, so a HEAD never answers a GET and one caller's answer never
reaches another credential. It lives at most REUSE_SECONDS (as long as the local-repository check is
remembered, resolver.py), never past the tag's manifest_ttl, nor past the expiry of the token or robot that
let the request through. Only 200s of pull-through hits are kept; errors, redirects, 401/403, stale answers,
upstream fetches and local repositories' manifests never are (another process, a worker or a replica, may
retag one at any moment, and its next read must see that), nor anything of an upstream with pull rules
(checked on each request). A write (any method but GET and HEAD) drops every copy when it starts and again
when it ends, and an answer built while one ran is not kept: a push here may make a bare name local. So
does the store learning of a repository another process created (RepositoryFiles.names_version).

A replay still does what the request would have done: the pull-through hit counter, recency, bytes served,
and, from api/observe.py outside this middleware, the request metrics and the access line. Where pulls are
audited or sent as events nothing is kept: those records name the caller, which only the full path finds.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from prometheus_client import Counter

from pullcache.api.appkeys import AUTHORIZED_UNTIL, CACHE_RESULT, PULLTHROUGH, ROUTE, STORE
from pullcache.api.blob_response import note_served
from pullcache.api.targets import TARGET
from pullcache.cache.registry import ManifestBody
from pullcache.digests import Digest
from pullcache.policy import applies
from pullcache.pullthrough import HIT, manifest_hits
from pullcache.resolver import Target

REUSE_SECONDS = 1.0
MAX_ANSWERS = 4096  # clients choose paths: the oldest copy goes first beyond this

Key = tuple[str, str, tuple[str, ...], str | None]


@dataclass(frozen=True, slots=True)
class Replay:
    """A kept answer: the response's parts, and the bookkeeping its request did."""

    target: Target
    result: str  # the pull-through result the request was counted as
    headers: CIMultiDict[str]  # a Response copies them
    body: bytes | None  # None for a HEAD
    source: str  # where the body came from, for bytes served
    touched: tuple[Digest, ...]  # manifests a pull-through hit noted as used
    hits: Counter  # the pull-through hit counter's child
    answered: Callable[[], None]  # the repository's own note that the manifest went out

    def replay(self, request: web.Request, note_access: Callable[[Digest], None]) -> web.Response:
        request[ROUTE] = "manifest"
        request[TARGET] = self.target
        request[CACHE_RESULT] = self.result
        for digest in self.touched:
            note_access(digest)
        self.hits.inc()
        self.answered()
        if self.body is None:
            return web.Response(headers=self.headers)
        note_served(request, self.source, len(self.body))
        return web.Response(body=self.body, headers=self.headers)


class HotAnswers:
    """The kept answers, and a generation that every write moves on."""

    def __init__(self, enabled: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.generation = 0
        self._clock = clock
        self._names_version = 0
        self._kept: dict[Key, tuple[float, Replay]] = {}

    def get(self, key: Key, names_version: int) -> Replay | None:
        """The answer kept for `key`, unless it expired or the store has since learnt of new local repositories."""
        if names_version != self._names_version:
            self.drop_all()
            self._names_version = names_version
        found = self._kept.get(key)
        if found is None:
            return None
        if self._clock() < found[0]:
            return found[1]
        del self._kept[key]
        return None

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, key: Key, replay: Replay, seconds: float) -> None:
        if len(self._kept) >= MAX_ANSWERS:
            del self._kept[next(iter(self._kept))]
        self._kept[key] = (self._clock() + seconds, replay)

    def drop_all(self) -> None:
        self._kept.clear()
        self.generation += 1


HOT_ANSWERS = web.AppKey("hot_answers", HotAnswers)  # set by v2.setup
_OFFER = web.RequestKey("hot_offer", tuple)  # (Replay, seconds it may be reused), set by offer()


def offer(request: web.Request, reference: str | Digest, found: ManifestBody, manifest: ManifestBody,
          answered: Callable[[], None], headers: CIMultiDict[str], body: bytes | None) -> None:
    """Offer a manifest answer for reuse; the middleware keeps it once it is a 200 and no write ran meanwhile.

    `found` is what the reference named, `manifest` what negotiation answered with (often the same)."""
    answers = request.app[HOT_ANSWERS]
    target = request[TARGET]
    if not answers.enabled or found.result != HIT or manifest.result not in (None, HIT):
        return
    upstream = target.upstream
    assert upstream is not None, "pull-through results are an upstream's"
    if applies(upstream.config.rules):
        return  # the pull policy decides per request
    seconds = min(REUSE_SECONDS, request.get(AUTHORIZED_UNTIL, float("inf")) - time.time())
    if not isinstance(reference, Digest):
        seconds = min(seconds, request.app[PULLTHROUGH].manifests.fresh_for(target, reference))
    if seconds <= 0:
        return
    hits = manifest_hits(upstream.name)
    touched = tuple(dict.fromkeys((found.digest, manifest.digest)))
    request[_OFFER] = (Replay(target, found.result, headers, body, manifest.source, touched, hits, answered), seconds)


@web.middleware
async def serve(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer from a kept copy, or keep the answer the handler offered; writes drop every copy."""
    answers = request.app[HOT_ANSWERS]
    if not answers.enabled:
        return await handler(request)
    method = request.method
    if method != "GET" and method != "HEAD":
        answers.drop_all()
        try:
            return await handler(request)
        finally:
            answers.drop_all()
    headers = request.headers
    key = (method, request.raw_path, tuple(headers.getall("Accept", ())), headers.get("Authorization"))
    kept = answers.get(key, request.app[STORE].files.names_version)
    if kept is not None:
        return kept.replay(request, request.app[STORE].note_access)
    generation = answers.generation
    response = await handler(request)
    offered = request.get(_OFFER)
    if offered is not None and response.status == 200 and answers.generation == generation:
        answers.keep(key, *offered)
    return response
