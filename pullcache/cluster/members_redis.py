"""The members roster in Redis: a sorted set `pullcache:members:<store>` of member id -> last heartbeat in
Redis's own milliseconds, beside a hash of member id -> its JSON info. One Lua script announces, drops the
lapsed and reads the rest atomically, so no two replicas' pruning races. Both keys expire LAPSE after the
last heartbeat of anyone: a cluster that is gone leaves nothing behind."""
from __future__ import annotations

import json

from redis.exceptions import RedisError

from pullcache.cluster.base import CoordinationUnavailable
from pullcache.cluster.members import LAPSE, Member, Roster
from pullcache.cluster.redis_client import redacted, redis_client

KEY_PREFIX = "pullcache:members:"
MAX_CONNECTIONS = 2  # one heartbeat at a time, and a clean stop

# KEYS: the set, the hash; ARGV: member id, its info, lapse in ms. Returns {now, {id, score, ...}, {info, ...}}.
_ANNOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapse = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - lapse))) do
  redis.call('ZREM', KEYS[1], gone)
  redis.call('HDEL', KEYS[2], gone)
end
redis.call('PEXPIRE', KEYS[1], lapse)
redis.call('PEXPIRE', KEYS[2], lapse)
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local ids = {}
for i = 1, #live, 2 do ids[#ids + 1] = live[i] end
return {now, live, redis.call('HMGET', KEYS[2], unpack(ids))}
"""


class RedisRoster(Roster):
    kind = "redis"

    def __init__(self, url: str, scope: str) -> None:
        self.where = redacted(url)
        self._members, self._info = KEY_PREFIX + scope, KEY_PREFIX + scope + ":info"
        self._client = redis_client(url, MAX_CONNECTIONS)
        self._announce = self._client.register_script(_ANNOUNCE)

    async def announce(self, me: Member) -> list[Member]:
        try:
            now, live, infos = await self._announce(
                keys=[self._members, self._info], args=[me.id, json.dumps(me.info()), int(LAPSE * 1000)])
        except RedisError as exc:
            raise CoordinationUnavailable(f"cluster.redis: {exc}") from exc
        members = []
        for i in range(0, len(live), 2):
            member_id, score = live[i].decode(), float(live[i + 1])
            info = infos[i // 2]
            members.append(Member.from_info(member_id, json.loads(info) if info else {}, (now - score) / 1000))
        return members

    async def leave(self, me: Member) -> None:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._members, me.id)
                pipe.hdel(self._info, me.id)
                await pipe.execute()
        except RedisError as exc:
            raise CoordinationUnavailable(f"cluster.redis: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()
