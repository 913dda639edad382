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
from voicepipe.service.access import safe_for_log
from voicepipe.service.logs import call_sid_var
from voicepipe.service.state import SERVICE, Service
from voicepipe.service.tokens import StoreUnavailable
from voicepipe.service.webhooks import TOKEN_PARAMETER
from voicepipe.telephony.protocol import Connected, Dtmf, Mark, Media, ProtocolError, Start, Stop, parse_event
from voicepipe.telephony.rest import complete_call, dial_twiml, redirect_call

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
# A socket must bring a valid `start` this soon after it opens; Twilio sends it at once.
START_TIMEOUT_SECONDS = 5.0
# Twilio sends a media frame every 20 ms for the whole call: this long without any message is a dead stream.
IDLE_TIMEOUT_SECONDS = 10.0
MEDIA_FORMAT = ("audio/x-mulaw", 8000, 1)  # encoding, sample rate, channels: what a phone call streams


class StreamLimits:
    """Rate limits of one media stream: audio no faster than real time, other messages in a token bucket."""

    def __init__(self) -> None:
        now = time.monotonic()
        # Seconds of audio the stream may send ahead of the wall clock. Refilled at real time and capped, so a
        # stream that sent nothing for a minute cannot then send a minute at once.
        self._audio_credit = MAX_AUDIO_AHEAD_SECONDS
        self._audio_refilled = now
        self._tokens = float(MESSAGE_BURST)
        self._refilled = now

    def check(self, event: object) -> str | None:
        """The reason to close the stream, or None when the message is within limits."""
        now = time.monotonic()
        if isinstance(event, Media):
            self._audio_credit = min(MAX_AUDIO_AHEAD_SECONDS, self._audio_credit + now - self._audio_refilled)
            self._audio_refilled = now
            self._audio_credit -= len(event.payload) / 8000
            return "media arriving faster than real time" if self._audio_credit < 0 else None
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
        self._start_deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS

    async def run(self) -> web.WebSocketResponse:
        service = self.service
        if len(service.sockets) >= service.settings.max_calls:
            # Every slot has a socket already (calls, or sockets still owing their `start`).
            log.warning("refused a media stream: %d sockets open is the maximum", len(service.sockets))
            service.metrics.error("stream", "too_many_sockets")
            raise web.HTTPServiceUnavailable(text="too many open media streams\n")
        await self.ws.prepare(self.request)
        service.sockets.add(self.ws)
        service.load_changed()
        try:
            while await self._handle(await self._receive()):
                pass
        except StreamRejected as rejected:
            self.outcome = "stream_error"
            self.service.metrics.error("stream", rejected.kind)
            log.warning("closing media stream: %s", rejected.reason)
            await self.ws.close(code=rejected.code, message=rejected.reason.encode()[:120])
        finally:
            await self._finish()
        return self.ws

    async def _receive(self) -> WSMessage:
        """The next message; a socket that owes its `start` past the deadline, or falls silent, is closed."""
        loop = asyncio.get_running_loop()
        if self.session is None:
            timeout, why = self._start_deadline - loop.time(), f"no valid start within {START_TIMEOUT_SECONDS:.0f} s"
        else:
            timeout, why = IDLE_TIMEOUT_SECONDS, f"no message for {IDLE_TIMEOUT_SECONDS:.0f} s"
        try:
            return await self.ws.receive(timeout=max(timeout, 0.001))
        except TimeoutError:
            raise StreamRejected(why, "idle", WSCloseCode.POLICY_VIOLATION) from None

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
        service = self.service
        try:
            grant = await service.tokens.redeem(start.custom_parameters.get(TOKEN_PARAMETER, ""))
        except StoreUnavailable:
            raise StreamRejected("the shared token store is unavailable", "store_unavailable",
                                 WSCloseCode.TRY_AGAIN_LATER) from None
        if grant is None:
            raise StreamRejected("start without a valid call token from /voice", "bad_token")
        if grant.age > service.tokens.ttl:
            raise StreamRejected(f"the call token expired ({grant.age:.0f} s old)", "expired_token")
        if start.call_sid != grant.call_sid:
            raise StreamRejected("callSid is not the call the token was issued for", "foreign_call")
        ours = service.settings.twilio_account_sid
        if start.account_sid != grant.account_sid or (ours and start.account_sid != ours):
            raise StreamRejected("accountSid is not the account the token was issued for", "foreign_account")
        if (start.encoding, start.sample_rate, start.channels) != MEDIA_FORMAT:
            raise StreamRejected(f"media format {start.encoding} {start.sample_rate} Hz {start.channels} channel(s) "
                                 "is not a phone call's (audio/x-mulaw 8000 Hz mono)", "media_format",
                                 WSCloseCode.UNSUPPORTED_DATA)
        call_sid = grant.call_sid  # checked at /voice: Twilio's shape, safe in logs and REST URLs
        call_sid_var.set(call_sid)

        async def hang_up() -> None:
            # The call ends through the API first: the stream closing would end the call (and its session) before
            # the API request went out, and Twilio would go on to any TwiML after <Connect> meanwhile.
            await complete_call(service.settings, call_sid)
            await self.ws.close(code=WSCloseCode.OK, message=b"call ended")

        async def transfer(number: str) -> bool:
            if not await redirect_call(service.settings, call_sid, dial_twiml(number)):
                return False
            await self.ws.close(code=WSCloseCode.OK, message=b"call transferred")
            return True

        self.session = CallSession(service.settings, service.models, service.phrases, call_sid, start.stream_sid,
                                   self.send, service.observers, hang_up,
                                   service.tools if service.models.tools_offered else None, grant.caller, transfer)
        service.sessions.add(self.session)
        service.load_changed()
        service.records.stream_started(call_sid)
        log.info("call started (stream %s)", safe_for_log(start.stream_sid))
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
        self.service.load_changed()
        session = self.session
        if session is not None:
            self.service.sessions.discard(session)
            self.service.load_changed()
            await session.close()
            log.info("call ended")
            outcome = session.end_reason or self.outcome
            self.service.observers.call_ended(EndedCall(session.call_sid, outcome, list(session.history)))
        if not self.ws.closed:
            await self.ws.close()


async def media(request: web.Request) -> web.WebSocketResponse:
    return await MediaStream(request.app[SERVICE], request).run()
