"""A pushed bare name hides the default upstream's image of that name from every mirror client: say so.

Routing is local-first for bare names, so `docker push mirror/myorg/app:v1` silently replaces Docker
Hub's `myorg/app` for every `registry-mirrors` client. When a push gives a local repository its first
tag, the default upstream is asked (in the background, so the push never waits on it) whether it serves
that tag, and a warning names what is now hidden.
"""
from __future__ import annotations

import asyncio
import logging

from pullcache.mediatypes import MANIFEST_TYPES
from pullcache.resolver import Resolver, Target
from pullcache.upstream.errors import UpstreamError

log = logging.getLogger(__name__)


class ShadowWarnings:
    """Background checks of first tags pushed to bare names; one warning per hidden upstream image."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._checks: set[asyncio.Task[None]] = set()

    def first_tag_pushed(self, name: str, tag: str) -> None:
        """Start a check of whether the push of `name:tag` hides the default upstream's image."""
        hidden = self._resolver.default_target(name)
        if hidden is None:
            return
        task = asyncio.create_task(self._check(name, tag, hidden))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check(self, name: str, tag: str, hidden: Target) -> None:
        upstream, repository = hidden.upstream, hidden.repository
        assert upstream is not None  # default_target always names the upstream
        try:
            await upstream.head_manifest(repository, tag, MANIFEST_TYPES)
        except UpstreamError:
            return  # not served there (or not reachable now): nothing is visibly hidden
        log.warning("push of %s:%s created a local repository that hides %s's %s:%s from every mirror client "
                    "pulling the bare name %r; they get the pushed image now (pull %s/%s for the upstream's, or "
                    "push under a name the upstream does not serve)", name, tag, upstream.name, repository, tag,
                    name, upstream.name, repository)

    async def settled(self) -> None:
        """Wait for the checks under way (tests, and shutdown after cancelling)."""
        await asyncio.gather(*self._checks, return_exceptions=True)

    async def close(self) -> None:
        for task in self._checks:
            task.cancel()
        await self.settled()
