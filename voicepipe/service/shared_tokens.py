"""Stream tokens in Redis (VOICEPIPE_REDIS_URL), so that any node accepts any token: /voice may be answered by
one node and the media stream land on another (a load balancer in front of several nodes picks each request's
node on its own). The same rules as in memory: single use (GETDEL), bound to the call, expiring, one per CallSid
ever (SET NX), and a count of tokens not yet redeemed (a sorted set by issue time) for the capacity check."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any

from voicepipe.service.tokens import REMEMBER_CALLS_SECONDS, TOKEN_TTL_SECONDS, StoreUnavailable, StreamGrant

OPERATION_TIMEOUT_S = 2.0  # a store slower than this is treated as unavailable: /voice must answer Twilio fast


class RedisTokenStore:
    def __init__(self, url: str, ttl: float = TOKEN_TTL_SECONDS, prefix: str = "voicepipe:") -> None:
        import redis.asyncio as redis

        self.ttl = ttl
        self.prefix = prefix
        self._redis: Any = redis.Redis.from_url(url, socket_timeout=OPERATION_TIMEOUT_S,
                                                socket_connect_timeout=OPERATION_TIMEOUT_S, decode_responses=True)

    async def _run(self, operation: Any) -> Any:
        import redis

        try:
            return await operation
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def issue(self, call_sid: str, account_sid: str, caller: str = "") -> str | None:
        grant = StreamGrant(call_sid, account_sid, time.time(), caller)
        first = await self._run(self._redis.set(f"{self.prefix}call:{call_sid}", grant.issued_at, nx=True,
                                                ex=int(REMEMBER_CALLS_SECONDS)))
        if not first:
            return None
        token = secrets.token_urlsafe(18)
        async with self._redis.pipeline(transaction=True) as pipe:
            # Kept for two TTLs, so that a late stream hears "expired" rather than "unknown".
            pipe.set(f"{self.prefix}token:{token}", json.dumps(dataclasses.asdict(grant)), ex=int(2 * self.ttl) + 1)
            pipe.zadd(f"{self.prefix}pending", {token: grant.issued_at})
            await self._run(pipe.execute())
        return token

    async def redeem(self, token: str) -> StreamGrant | None:
        if not token:
            return None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.getdel(f"{self.prefix}token:{token}")
            pipe.zrem(f"{self.prefix}pending", token)
            stored, _ = await self._run(pipe.execute())
        return StreamGrant(**json.loads(stored)) if stored else None

    async def pending(self) -> int:
        key = f"{self.prefix}pending"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", time.time() - self.ttl)
            pipe.zcard(key)
            _, count = await self._run(pipe.execute())
        return int(count)

    async def close(self) -> None:
        await self._redis.aclose()
