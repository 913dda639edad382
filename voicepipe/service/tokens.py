"""Stream tokens: /voice hands one to Twilio inside the TwiML, and only a media stream that brings it back is
served. Each is single-use, expires, and is bound to the call it was issued for (CallSid, AccountSid), so a
stream cannot be opened without a fresh /voice first, nor for another call. A CallSid gets one token only: a
second /voice for it (a captured signed request replayed) is refused."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

TOKEN_TTL_SECONDS = 60.0  # a /voice answer must open its stream within this time (Twilio takes ~1 s)
# CallSids that got a token are remembered this long (longer than any call) and up to this many, newest kept:
# a replayed /voice for one of them is refused.
REMEMBER_CALLS_SECONDS = 48 * 3600.0
REMEMBER_CALLS = 200_000

@dataclass(frozen=True)
class StreamGrant:
    """What a token was issued for."""

    call_sid: str
    account_sid: str
    issued_at: float  # time.time() at /voice
    caller: str = ""  # the caller's number (From), for the operator's tools that may send it

    @property
    def age(self) -> float:
        return time.time() - self.issued_at


def occupied(sockets: int, calls: int, pending: int) -> int:
    """Slots taken: every open socket (started or not), or every started call plus every token not yet redeemed,
    whichever is more. A stream between its socket's opening and its `start` holds both a socket and a pending
    token: adding the two counted it twice, and refused a call into the last free slot."""
    return max(sockets, calls + pending)


class StoreUnavailable(Exception):
    """The shared store cannot be reached: no new call can be given a token (calls under way go on)."""


class TokenStore(Protocol):
    """Where tokens live between /voice and the stream's `start`. MemoryTokenStore serves one process;
    RedisTokenStore (cluster.py) lets the stream reach another node than the one that answered /voice."""

    ttl: float

    async def issue(self, call_sid: str, account_sid: str, caller: str = "") -> str | None:
        """A new token for the call; None when this CallSid already had one (a replayed /voice)."""
        ...

    async def redeem(self, token: str) -> StreamGrant | None:
        """What the token was issued for, once; None for a token never issued or already used. An expired
        token is returned too (for a clear refusal): the caller checks `age` against `ttl`."""
        ...

    async def pending(self) -> int:
        """Tokens issued, not yet redeemed nor expired: calls about to open a stream."""
        ...

    async def close(self) -> None: ...


class MemoryTokenStore:
    def __init__(self, ttl: float = TOKEN_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._tokens: dict[str, StreamGrant] = {}
        self._calls: OrderedDict[str, float] = OrderedDict()  # CallSid -> when its token was issued

    def _expire(self) -> None:
        now = time.time()
        # Expired tokens stay a while, so that a late stream hears "expired" rather than "unknown".
        for stale in [t for t, grant in self._tokens.items() if now - grant.issued_at > 2 * self.ttl]:
            del self._tokens[stale]
        while self._calls and (len(self._calls) > REMEMBER_CALLS
                               or now - next(iter(self._calls.values())) > REMEMBER_CALLS_SECONDS):
            self._calls.popitem(last=False)

    async def issue(self, call_sid: str, account_sid: str, caller: str = "") -> str | None:
        self._expire()
        if call_sid in self._calls:
            return None
        grant = StreamGrant(call_sid, account_sid, time.time(), caller)
        self._calls[call_sid] = grant.issued_at
        token = secrets.token_urlsafe(18)
        self._tokens[token] = grant
        return token

    async def redeem(self, token: str) -> StreamGrant | None:
        self._expire()
        return self._tokens.pop(token, None)

    async def pending(self) -> int:
        self._expire()
        return sum(1 for grant in self._tokens.values() if grant.age <= self.ttl)

    async def close(self) -> None:
        pass
