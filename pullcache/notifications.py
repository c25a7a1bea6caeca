"""Events to other systems (`notifications.endpoints`), in CNCF Distribution's notification format.

Each endpoint has a bounded queue and one worker. Publishing only puts the event on the queues that
want its action (never waiting: a full queue drops the event and counts it), so a slow or dead
receiver never slows the request that caused it. The worker POSTs what is queued as one envelope
(`{"events": [...]}`, Content-Type application/vnd.docker.distribution.events.v1+json) with the
endpoint's headers and timeout; any 2xx or 3xx answer is a delivery, as in Distribution. A failure
is retried, the same envelope, after `backoff`, doubling up to `max_backoff`, until it is delivered:
order is kept, and events queue up meanwhile.

Metrics: pullcache_notifications_total{endpoint, result=sent|failed|dropped} (per event; `failed` once
per failed attempt) and pullcache_notifications_pending{endpoint}.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from typing import Any

import aiohttp

from pullcache import metrics
from pullcache.config import EndpointConfig, NotificationsConfig

ENVELOPE_TYPE = "application/vnd.docker.distribution.events.v1+json"
MAX_BATCH = 100  # events in one envelope

log = logging.getLogger("pullcache.notifications")


class Endpoint:
    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(config.queue)
        self._pending = metrics.notifications_pending.labels(config.name)
        self._in_flight = 0  # events of the envelope being delivered

    def _count(self, result: str, events: int = 1) -> None:
        metrics.notifications.labels(self.config.name, result).inc(events)

    def offer(self, event: dict[str, Any]) -> None:
        if event["action"] not in self.config.events:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._count("dropped")
            log.warning("notifications to %s: %d events already queued, %s event of %s dropped", self.config.name,
                        self.config.queue, event["action"], event["target"].get("repository"))
            return
        self._pending.set(self._queue.qsize())

    def _batch(self, first: dict[str, Any]) -> list[dict[str, Any]]:
        batch = [first]
        while len(batch) < MAX_BATCH and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        self._pending.set(self._queue.qsize())
        return batch

    async def _post(self, session: aiohttp.ClientSession, batch: list[dict[str, Any]]) -> str | None:
        """None when delivered, else why not."""
        headers = {**self.config.headers, "Content-Type": ENVELOPE_TYPE}
        try:
            async with session.post(self.config.url, json={"events": batch}, headers=headers, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=self.config.timeout)) as response:
                await response.read()
                return None if 200 <= response.status < 400 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return str(exc) or exc.__class__.__name__

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Deliver forever, each envelope until it goes through."""
        while True:
            batch = self._batch(await self._queue.get())
            self._in_flight = len(batch)
            delay, failures = self.config.backoff, 0
            while (problem := await self._post(session, batch)) is not None:
                self._count("failed", len(batch))
                failures += 1
                if failures == 1:  # once per envelope; the metric counts every attempt
                    log.warning("notifications to %s failed (%s); retrying every %gs up to %gs", self.config.name,
                                problem, delay, self.config.max_backoff)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.max_backoff)
            if failures:
                log.info("notifications to %s delivered after %d failed attempts", self.config.name, failures)
            self._count("sent", len(batch))
            self._in_flight = 0

    def abandon(self) -> None:
        """At shutdown: what is still queued or being delivered is lost, and counted."""
        lost = self._queue.qsize() + self._in_flight
        if lost:
            self._count("dropped", lost)
            log.warning("notifications to %s: %d undelivered events dropped at shutdown", self.config.name, lost)


class Notifier:
    """Every endpoint's queue and worker; `publish` is what request handlers call."""

    def __init__(self, config: NotificationsConfig) -> None:
        self._endpoints = [Endpoint(e) for e in config.endpoints]
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.instance_id = str(uuid.uuid4())
        self.hostname = socket.gethostname()

    @property
    def enabled(self) -> bool:
        return bool(self._endpoints)

    def wants(self, action: str) -> bool:
        return any(action in e.config.events for e in self._endpoints)

    def publish(self, event: dict[str, Any]) -> None:
        for endpoint in self._endpoints:
            endpoint.offer(event)

    async def start(self) -> None:
        if not self._endpoints:
            return
        self._session = aiohttp.ClientSession()
        self._workers = [asyncio.create_task(e.run(self._session), name=f"notifications-{e.config.name}")
                         for e in self._endpoints]

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for endpoint in self._endpoints:
            endpoint.abandon()
        if self._session is not None:
            await self._session.close()
