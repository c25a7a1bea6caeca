"""The Redis client every pullcache caller opens (cluster/redis_client.py), against a real redis-server."""
from __future__ import annotations

import asyncio
import random

from pullcache.cluster.redis_client import redis_client
from tests.support.redis import RedisServer

ATTEMPTS = 40


async def test_a_task_cancelled_during_a_redis_command_ends_cancelled(redis_server: RedisServer) -> None:
    """redis-py sends through asyncio.wait_for, which on Python 3.11 returns the result and drops a
    cancellation that arrives as the send completes: a cancelled request or background loop went on (a
    store's close waited forever for its names loop). Cancelled at random points of many commands, every
    task must end cancelled."""
    client = redis_client(redis_server.redis_url)

    async def commands() -> None:
        while True:
            await client.exists("pullcache-test:cancel")

    try:
        went_on = 0
        for _ in range(ATTEMPTS):
            task = asyncio.create_task(commands())
            await asyncio.sleep(random.random() * 0.003)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=0.5)
            if done:
                assert task.cancelled()
                continue
            went_on += 1
            while not task.done():  # each cancel may be dropped again
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        assert went_on == 0, f"{went_on} of {ATTEMPTS} cancelled tasks went on"
    finally:
        await client.aclose()
