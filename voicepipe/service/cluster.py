"""Several nodes behind one number, sharing Redis (VOICEPIPE_REDIS_URL).

Stream tokens live in Redis, so any node accepts any token: /voice may be answered by one node and the media
stream land on another (a load balancer picks each request's node on its own; least-connections keeps streams
where there is room). The same rules as in memory: single use (GETDEL), bound to the call, expiring, one per
CallSid ever (SET NX), and a count of tokens not yet redeemed (a sorted set by issue time).

Each node also publishes a heartbeat with its load and its VOICEPIPE_MAX_CALLS, expiring after NODE_TTL_SECONDS:
the cluster is full when the live nodes' calls and the pending tokens reach the sum of their maxima. A node that
dies stops beating, and its calls and slots leave the sums within the TTL; a draining node leaves at once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from voicepipe.service.tokens import REMEMBER_CALLS_SECONDS, TOKEN_TTL_SECONDS, StoreUnavailable, StreamGrant, occupied

log = logging.getLogger(__name__)

OPERATION_TIMEOUT_S = 2.0  # a store slower than this is treated as unavailable: /voice must answer Twilio fast
HEARTBEAT_SECONDS = 2.0
NODE_TTL_SECONDS = 10.0  # a node not heard from for this long is gone, with its calls and slots


async def guarded(operation: Any) -> Any:
    """Await a Redis operation; any failure to reach Redis is StoreUnavailable."""
    import redis

    try:
        return await operation
    except (redis.RedisError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None


class RedisTokenStore:
    def __init__(self, url: str, ttl: float = TOKEN_TTL_SECONDS, prefix: str = "voicepipe:") -> None:
        import redis.asyncio as redis

        self.ttl = ttl
        self.prefix = prefix
        self.redis: Any = redis.Redis.from_url(url, socket_timeout=OPERATION_TIMEOUT_S,
                                                socket_connect_timeout=OPERATION_TIMEOUT_S, decode_responses=True)

    async def _run(self, operation: Any) -> Any:
        return await guarded(operation)

    async def issue(self, call_sid: str, account_sid: str, caller: str = "") -> str | None:
        grant = StreamGrant(call_sid, account_sid, time.time(), caller)
        first = await self._run(self.redis.set(f"{self.prefix}call:{call_sid}", grant.issued_at, nx=True,
                                                ex=int(REMEMBER_CALLS_SECONDS)))
        if not first:
            return None
        token = secrets.token_urlsafe(18)
        async with self.redis.pipeline(transaction=True) as pipe:
            # Kept for two TTLs, so that a late stream hears "expired" rather than "unknown".
            pipe.set(f"{self.prefix}token:{token}", json.dumps(dataclasses.asdict(grant)), ex=int(2 * self.ttl) + 1)
            pipe.zadd(f"{self.prefix}pending", {token: grant.issued_at})
            await self._run(pipe.execute())
        return token

    async def redeem(self, token: str) -> StreamGrant | None:
        if not token:
            return None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.getdel(f"{self.prefix}token:{token}")
            pipe.zrem(f"{self.prefix}pending", token)
            stored, _ = await self._run(pipe.execute())
        return StreamGrant(**json.loads(stored)) if stored else None

    async def pending(self) -> int:
        key = f"{self.prefix}pending"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", time.time() - self.ttl)
            pipe.zcard(key)
            _, count = await self._run(pipe.execute())
        return int(count)

    async def close(self) -> None:
        await self.redis.aclose()


class NodeRegistry:
    """This node's heartbeat in Redis, and the cluster's capacity read from every live node's."""

    def __init__(self, tokens: RedisTokenStore, node_id: str, max_calls: int,
                 load: Callable[[], tuple[int, int]]) -> None:
        self.tokens = tokens
        self.key = f"{tokens.prefix}node:{node_id}"
        self.node_id = node_id
        self.max_calls = max_calls
        self.load = load  # this node's (open media streams, started calls)
        self.left = False
        self._unreachable = False

    async def publish(self) -> None:
        """Say this node is alive, with its load now (also called when a stream opens or closes)."""
        if self.left:
            return
        sockets, calls = self.load()
        beat = json.dumps({"node": self.node_id, "load": sockets, "calls": calls, "max_calls": self.max_calls})
        await guarded(self.tokens.redis.set(self.key, beat, ex=int(NODE_TTL_SECONDS)))

    async def beat(self) -> None:
        """Publish every HEARTBEAT_SECONDS until the node leaves; a Redis outage is logged once, not fatal."""
        while not self.left:
            try:
                await self.publish()
                if self._unreachable:
                    log.warning("Redis is reachable again: this node is back in the cluster")
                self._unreachable = False
            except StoreUnavailable as exc:
                if not self._unreachable:
                    log.error("cannot reach Redis for the heartbeat (%s): new calls are refused until it is back", exc)
                self._unreachable = True
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def leave(self) -> None:
        """Out of the cluster at once (draining, shutdown): no new calls counted on this node's room."""
        self.left = True
        try:
            await guarded(self.tokens.redis.delete(self.key))
        except StoreUnavailable:
            pass  # the key expires by itself

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's last heartbeat."""
        return list(await guarded(self._nodes()))

    async def _nodes(self) -> list[dict[str, Any]]:
        keys = [key async for key in self.tokens.redis.scan_iter(match=f"{self.tokens.prefix}node:*", count=100)]
        beats = await self.tokens.redis.mget(keys) if keys else []
        return [json.loads(beat) for beat in beats if beat]

    async def full(self) -> bool:
        """The live nodes' calls and the tokens about to open a stream fill the sum of their maxima (see
        occupied: a stream between its socket and its `start` counts once)."""
        nodes = await self.nodes()
        sockets, calls = sum(int(n["load"]) for n in nodes), sum(int(n.get("calls", n["load"])) for n in nodes)
        return occupied(sockets, calls, await self.tokens.pending()) >= sum(int(n["max_calls"]) for n in nodes)
