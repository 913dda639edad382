"""Stream tokens: /voice hands one to Twilio inside the TwiML, and only a media stream that brings it back is
served. Each is single-use and expires, so a stream cannot be opened without a fresh /voice first."""

from __future__ import annotations

import secrets
import time
from typing import Protocol

TOKEN_TTL_SECONDS = 60.0  # a /voice answer must open its stream within this time (Twilio takes ~1 s)


class TokenStore(Protocol):
    """Where tokens live between /voice and the stream's `start`. MemoryTokenStore serves one process; a shared
    store lets the stream reach another node than the one that answered /voice."""

    def issue(self, call_sid: str) -> str:
        """A new token for the call."""
        ...

    def redeem(self, token: str) -> str | None:
        """The token's CallSid, once; None for a token never issued, expired or already used."""
        ...

    @property
    def pending(self) -> int:
        """Tokens issued and not yet redeemed nor expired: calls about to open a stream."""
        ...


class MemoryTokenStore:
    def __init__(self, ttl: float = TOKEN_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (CallSid, issued at)

    def _expire(self) -> None:
        now = time.monotonic()
        for stale in [t for t, (_, issued) in self._tokens.items() if now - issued > self.ttl]:
            del self._tokens[stale]

    def issue(self, call_sid: str) -> str:
        self._expire()
        token = secrets.token_urlsafe(18)
        self._tokens[token] = (call_sid, time.monotonic())
        return token

    def redeem(self, token: str) -> str | None:
        self._expire()
        issued = self._tokens.pop(token, None)
        return issued[0] if issued is not None else None

    @property
    def pending(self) -> int:
        self._expire()
        return len(self._tokens)
