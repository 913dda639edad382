"""The media-stream adapter: one Twilio Media Streams WebSocket in, one CallSession behind it.

It owns the socket (reading, bounded sends, closing with a reason) and the stream's checks: the protocol,
rate limits, the token from /voice. A malformed or hostile stream ends there, never touching another call.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from voicepipe.conversation.events import EndedCall
from voicepipe.conversation.session import CallSession
from voicepipe.service.logs import call_sid_var
from voicepipe.service.state import SERVICE, Service
from voicepipe.service.webhooks import TOKEN_PARAMETER
from voicepipe.telephony.protocol import Connected, Dtmf, Mark, Media, ProtocolError, Start, Stop, parse_event
from voicepipe.telephony.rest import complete_call

log = logging.getLogger(__name__)

MAX_WS_MESSAGE_BYTES = 64 * 1024
# Twilio sends audio in real time. A stream whose audio runs this far ahead of the wall clock is a flood:
# handling it would take CPU from every other call.
MAX_AUDIO_AHEAD_SECONDS = 3.0
# Other messages (marks, DTMF, events we ignore) come a few per second; a burst above this is a flood too.
MESSAGE_BURST = 500
MESSAGES_PER_SECOND = 100.0
# A send that cannot finish in this time means the client stopped reading: the call is dropped.
SEND_TIMEOUT_SECONDS = 5.0


class StreamLimits:
    """Rate limits of one media stream: audio no faster than real time, other messages in a token bucket."""

    def __init__(self) -> None:
        self._first_media: float | None = None
        self._audio_seconds = 0.0
        self._tokens = float(MESSAGE_BURST)
        self._refilled = time.monotonic()

    def check(self, event: object) -> str | None:
        """The reason to close the stream, or None when the message is within limits."""
        now = time.monotonic()
        if isinstance(event, Media):
            if self._first_media is None:
                self._first_media = now
            self._audio_seconds += len(event.payload) / 8000
            if self._audio_seconds - (now - self._first_media) > MAX_AUDIO_AHEAD_SECONDS:
                return "media arriving faster than real time"
            return None
        self._tokens = min(MESSAGE_BURST, self._tokens + (now - self._refilled) * MESSAGES_PER_SECOND)
        self._refilled = now
        self._tokens -= 1
        return "message flood" if self._tokens < 0 else None


class StreamRejected(Exception):
    """The stream broke a rule; it is closed with `code` and `reason`."""

    def __init__(self, reason: str, kind: str, code: int = WSCloseCode.POLICY_VIOLATION) -> None:
        super().__init__(reason)
        self.reason, self.kind, self.code = reason, kind, code


class MediaStream:
    def __init__(self, service: Service, request: web.Request) -> None:
        self.service = service
        self.request = request
        self.ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_WS_MESSAGE_BYTES)
        self.session: CallSession | None = None
        self.limits = StreamLimits()
        self.outcome = "disconnected"  # how the stream ended, for the call record

    async def run(self) -> web.WebSocketResponse:
        await self.ws.prepare(self.request)
        self.service.sockets.add(self.ws)
        try:
            async for message in self.ws:
                if not await self._handle(message):
                    break
        except StreamRejected as rejected:
            self.outcome = "stream_error"
            self.service.metrics.error("stream", rejected.kind)
            log.warning("closing media stream: %s", rejected.reason)
            await self.ws.close(code=rejected.code, message=rejected.reason.encode()[:120])
        finally:
            await self._finish()
        return self.ws

    async def _handle(self, message: WSMessage) -> bool:
        """Act on one message; False when the stream is over."""
        if message.type == WSMsgType.BINARY:
            raise StreamRejected("binary frames are not part of the Media Streams protocol", "binary_frame",
                                 WSCloseCode.UNSUPPORTED_DATA)
        if message.type != WSMsgType.TEXT:
            return False
        try:
            event = parse_event(message.data)
        except ProtocolError as exc:
            raise StreamRejected(f"protocol error: {exc}", "protocol", WSCloseCode.UNSUPPORTED_DATA) from None
        if (reason := self.limits.check(event)) is not None:
            raise StreamRejected(reason, "flood")
        if event is None:
            log.debug("ignored an event this server does not know")
        elif isinstance(event, Start):
            await self._start(event)
        elif not isinstance(event, Connected):
            return await self._route(event)
        return True

    async def _start(self, start: Start) -> None:
        if self.session is not None:
            raise StreamRejected("a second start on one stream", "second_start")
        if self.service.tokens.redeem(start.custom_parameters.get(TOKEN_PARAMETER, "")) is None:
            raise StreamRejected("start without a valid call token from /voice", "bad_token")
        call_sid_var.set(start.call_sid)
        service = self.service

        async def hang_up() -> None:
            await self.ws.close(code=WSCloseCode.OK, message=b"call ended")
            await complete_call(service.settings, start.call_sid)

        self.session = CallSession(service.settings, service.models, service.phrases, start.call_sid,
                                   start.stream_sid, self.send, service.observers, hang_up)
        service.sessions.add(self.session)
        service.records.stream_started(start.call_sid)
        log.info("call started (stream %s)", start.stream_sid)
        await self.session.begin()

    async def _route(self, event: Media | Mark | Dtmf | Stop) -> bool:
        session = self.session
        if session is None:
            raise StreamRejected(f"{type(event).__name__.lower()} before start", "before_start")
        if event.stream_sid != session.stream_sid:
            raise StreamRejected("streamSid does not match this stream", "stream_sid")
        if isinstance(event, Media):
            await session.handle_media(event.payload)
        elif isinstance(event, Mark):
            session.handle_mark(event.name)
        elif isinstance(event, Dtmf):
            await session.handle_dtmf(event.digit)
        elif isinstance(event, Stop):
            log.info("call stopped by Twilio")
            self.outcome = "caller_hung_up"
            return False
        return True

    async def send(self, text: str) -> None:
        # A caller who hangs up mid-reply is normal: what is left of the reply has nowhere to go.
        if self.ws.closed:
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                await self.ws.send_str(text)
        except ConnectionResetError:
            pass
        except TimeoutError:
            log.warning("closing media stream: the client stopped reading (a send waited %.0f s)",
                        SEND_TIMEOUT_SECONDS)
            self.service.metrics.error("stream", "slow_reader")
            if self.request.transport is not None:
                self.request.transport.abort()  # a close handshake would wait on the same full buffer

    async def _finish(self) -> None:
        self.service.sockets.discard(self.ws)
        session = self.session
        if session is not None:
            self.service.sessions.discard(session)
            await session.close()
            log.info("call ended")
            outcome = session.end_reason or self.outcome
            self.service.observers.call_ended(EndedCall(session.call_sid, outcome, list(session.history)))
        if not self.ws.closed:
            await self.ws.close()


async def media(request: web.Request) -> web.WebSocketResponse:
    return await MediaStream(request.app[SERVICE], request).run()
