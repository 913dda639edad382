"""The aiohttp server: Twilio webhooks (/voice, /status), the Media Streams socket (/media), /healthz, /stats."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.typedefs import Handler
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from voicepipe.call import CallSession, TurnTimings, prepare_speech
from voicepipe.config import BUSY_MESSAGES, PHRASES, ConfigError, Settings
from voicepipe.health import Health
from voicepipe.logs import call_sid_var
from voicepipe.metrics import Metrics
from voicepipe.models import Models, load_models
from voicepipe.outbound import twilio_client
from voicepipe.protocol import Connected, Dtmf, Mark, Media, ProtocolError, Start, Stop, parse_event
from voicepipe.records import CallRecords

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
MODELS = web.AppKey("models", Models)
PHRASE_AUDIO = web.AppKey("phrase_audio", dict)  # greeting and fixed lines, synthesized once at start-up
CALL_TOKENS = web.AppKey("call_tokens", dict)  # token -> (CallSid, issued at)
SESSIONS = web.AppKey("sessions", set)
SOCKETS = web.AppKey("sockets", set)
TURN_STATS = web.AppKey("turn_stats", deque)
HEALTH = web.AppKey("health", Health)
RECORDS = web.AppKey("records", CallRecords)
METRICS = web.AppKey("metrics", Metrics)
INSTANCE_ID = web.AppKey("instance_id", str)  # tells `voicepipe doctor` that WEBHOOK_URL reaches this process
DRAINING = web.AppKey("draining", list)  # non-empty once shutdown began: no new calls
# Callbacks run with each finished CallSession (its history included): call records and tests use it.
CALL_ENDED = web.AppKey("call_ended", list)

TOKEN_PARAMETER = "voicepipe_token"
TOKEN_TTL_SECONDS = 60.0  # a /voice answer must open its stream within this time (Twilio takes ~1 s)
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


def _public_base(request: web.Request, settings: Settings) -> str:
    """https:// base URL as Twilio sees us: WEBHOOK_URL when set, else the request's own host (the tunnel
    ends TLS, so Twilio's scheme was https even when the request reached us as http)."""
    if settings.webhook_url:
        parts = urlsplit(settings.webhook_url)
        return f"https://{parts.netloc}{parts.path}"
    return f"https://{request.host}"


def stream_url(request: web.Request, settings: Settings) -> str:
    """The wss:// URL Twilio should open for the media stream."""
    return "wss" + _public_base(request, settings)[len("https"):] + "/media"


SIGNED_PATHS = ("/voice", "/status", "/media")


def public_url(request: web.Request, settings: Settings) -> str:
    """The URL as Twilio requested it, which its signature covers (wss:// for the stream)."""
    url = _public_base(request, settings) + request.path_qs
    return "wss" + url[len("https"):] if request.path == "/media" else url


async def read_form(request: web.Request) -> dict[str, str]:
    """The webhook's form fields; a body that is not a valid form is a 400, not a server error."""
    try:
        return {k: str(v) for k, v in (await request.post()).items()}
    except (UnicodeDecodeError, ValueError) as exc:
        log.warning("rejected %s %s: malformed form body (%s)", request.method, request.path, type(exc).__name__)
        request.app[METRICS].error("webhook", "bad_form")
        raise web.HTTPBadRequest(text="malformed form body\n") from None


@web.middleware
async def require_twilio_signature(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With TWILIO_AUTH_TOKEN set, only requests signed by Twilio get past: 403 before any work is done."""
    settings = request.app[SETTINGS]
    if not settings.twilio_auth_token or request.path not in SIGNED_PATHS:
        return await handler(request)
    signature = request.headers.get("X-Twilio-Signature", "")
    params = await read_form(request) if request.method == "POST" else {}
    url = public_url(request, settings)
    if not signature or not RequestValidator(settings.twilio_auth_token).validate(url, params, signature):
        log.warning("rejected %s %s: %s X-Twilio-Signature", request.method, request.path,
                    "wrong" if signature else "missing")
        request.app[METRICS].error("webhook", "bad_signature")
        raise web.HTTPForbidden(text="invalid or missing X-Twilio-Signature\n")
    return await handler(request)


async def voice(request: web.Request) -> web.Response:
    form = await read_form(request)
    call_sid = str(form.get("CallSid", ""))
    tokens: dict[str, tuple[str, float]] = request.app[CALL_TOKENS]
    now = time.monotonic()
    for stale in [t for t, (_, issued) in tokens.items() if now - issued > TOKEN_TTL_SECONDS]:
        del tokens[stale]
    settings = request.app[SETTINGS]
    records = request.app[RECORDS]
    if call_sid:
        records.call_offered(call_sid, form.get("Direction", ""), form.get("From", ""), form.get("To", ""),
                             settings.language)
    response = VoiceResponse()
    if request.app[DRAINING] or len(request.app[SESSIONS]) + len(tokens) >= settings.max_calls:
        # Saying so beats connecting a stream that would stutter for everyone.
        log.warning("call %s refused: %d calls is the maximum (VOICEPIPE_MAX_CALLS)", call_sid, settings.max_calls)
        request.app[METRICS].calls.labels("busy").inc()
        if call_sid:
            records.stream_ended(call_sid, "busy", 0, None)
        response.say(BUSY_MESSAGES[settings.language], language=settings.say_language, voice=settings.say_voice or None)
        response.hangup()
        return web.Response(text=str(response), content_type="application/xml")
    token = secrets.token_urlsafe(18)
    tokens[token] = (call_sid, now)
    connect = Connect()
    stream = connect.stream(url=stream_url(request, settings))
    stream.parameter(name=TOKEN_PARAMETER, value=token)
    response.append(connect)
    log.info("incoming call %s: connecting media stream", call_sid or "(no CallSid)")
    return web.Response(text=str(response), content_type="application/xml")


async def status(request: web.Request) -> web.Response:
    form = await read_form(request)
    call_sid, call_status = form.get("CallSid", ""), form.get("CallStatus", "")
    log.info("call %s status %s", call_sid or "?", call_status or "?")
    if call_sid and call_status:
        sequence = form.get("SequenceNumber", "")
        records = request.app[RECORDS]
        records.call_offered(call_sid, form.get("Direction", ""), form.get("From", ""), form.get("To", ""))
        records.status(call_sid, call_status, int(sequence) if sequence.isdigit() else None)
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    """200 while every model stage works; 503 once one has failed several turns in a row."""
    models = request.app[MODELS]
    health = request.app[HEALTH]
    failing = health.failing
    return web.json_response(
        {
            "status": "degraded" if failing else "ok",
            "instance": request.app[INSTANCE_ID],
            "device": models.device,
            "failing": failing,
            "stages": health.report(),
            "llm": models.chat.report(),
            "active_calls": len(request.app[SESSIONS]),
            "draining": bool(request.app[DRAINING]),
            "model_load_seconds": {k: round(v, 3) for k, v in models.load_seconds.items()},
        },
        status=503 if failing else 200,
    )


def require_metrics_token(request: web.Request) -> None:
    """With VOICEPIPE_METRICS_TOKEN set, the numbers are for those who hold it (the tunnel makes them public)."""
    token = request.app[SETTINGS].metrics_token
    given = request.headers.get("Authorization", "").encode("utf-8", "replace")
    if token and not secrets.compare_digest(given, f"Bearer {token}".encode()):
        raise web.HTTPUnauthorized(text="Authorization: Bearer <VOICEPIPE_METRICS_TOKEN> required\n")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition: active calls, calls by outcome, stage latency histograms, fallbacks, errors."""
    require_metrics_token(request)
    return web.Response(body=request.app[METRICS].exposition(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def stats(request: web.Request) -> web.Response:
    """Recent per-turn timings (numbers only, no content), newest last; ?call_sid= filters."""
    require_metrics_token(request)
    call_sid = request.query.get("call_sid")
    turns = [t.as_dict() for t in request.app[TURN_STATS] if call_sid is None or t.call_sid == call_sid]
    return web.json_response({"turns": turns})


async def media(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_WS_MESSAGE_BYTES)
    await ws.prepare(request)
    app = request.app
    app[SOCKETS].add(ws)
    session: CallSession | None = None
    limits = StreamLimits()
    outcome = "disconnected"  # how the stream ended, for the call record
    records = app[RECORDS]
    settings = app[SETTINGS]

    def turn_done(timings: TurnTimings) -> None:
        app[TURN_STATS].append(timings)
        numbers = timings.as_dict()
        app[METRICS].turn(numbers)
        records.turn(timings.call_sid, timings.turn, numbers)

    async def send(text: str) -> None:
        # A caller who hangs up mid-reply is normal: what is left of the reply has nowhere to go.
        if ws.closed:
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                await ws.send_str(text)
        except ConnectionResetError:
            pass
        except TimeoutError:
            log.warning("closing media stream: the client stopped reading (a send waited %.0f s)",
                        SEND_TIMEOUT_SECONDS)
            app[METRICS].error("stream", "slow_reader")
            if request.transport is not None:
                request.transport.abort()  # a close handshake would wait on the same full buffer

    async def reject(reason: str, kind: str, code: int = WSCloseCode.POLICY_VIOLATION) -> None:
        nonlocal outcome
        outcome = "stream_error"
        app[METRICS].error("stream", kind)
        log.warning("closing media stream: %s", reason)
        await ws.close(code=code, message=reason.encode()[:120])

    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                await reject("binary frames are not part of the Media Streams protocol", "binary_frame",
                             WSCloseCode.UNSUPPORTED_DATA)
                break
            if message.type != WSMsgType.TEXT:
                break
            try:
                event = parse_event(message.data)
            except ProtocolError as exc:
                await reject(f"protocol error: {exc}", "protocol", WSCloseCode.UNSUPPORTED_DATA)
                break
            if (reason := limits.check(event)) is not None:
                await reject(reason, "flood")
                break
            if event is None:
                log.debug("ignored an event this server does not know")
                continue
            if isinstance(event, Connected):
                continue
            if isinstance(event, Start):
                if session is not None:
                    await reject("a second start on one stream", "second_start")
                    break
                issued = app[CALL_TOKENS].pop(event.custom_parameters.get(TOKEN_PARAMETER, ""), None)
                if issued is None:
                    await reject("start without a valid call token from /voice", "bad_token")
                    break
                call_sid_var.set(event.call_sid)

                async def hang_up(call_sid: str = event.call_sid) -> None:
                    await ws.close(code=WSCloseCode.OK, message=b"call ended")
                    await complete_call(app[SETTINGS], call_sid)

                session = CallSession(
                    app[SETTINGS],
                    app[MODELS],
                    call_sid=event.call_sid,
                    stream_sid=event.stream_sid,
                    send=send,
                    phrases=app[PHRASE_AUDIO],
                    on_turn=turn_done,
                    hang_up=hang_up,
                    health=app[HEALTH],
                )
                app[SESSIONS].add(session)
                records.stream_started(event.call_sid)
                log.info("call started (stream %s)", event.stream_sid)
                await session.begin()
                continue
            if session is None:
                await reject(f"{type(event).__name__.lower()} before start", "before_start")
                break
            if event.stream_sid != session.stream_sid:
                await reject("streamSid does not match this stream", "stream_sid")
                break
            if isinstance(event, Media):
                await session.handle_media(event)
            elif isinstance(event, Mark):
                session.handle_mark(event.name)
            elif isinstance(event, Dtmf):
                await session.handle_dtmf(event.digit)
            elif isinstance(event, Stop):
                log.info("call stopped by Twilio")
                outcome = "caller_hung_up"
                break
    finally:
        app[SOCKETS].discard(ws)
        if session is not None:
            app[SESSIONS].discard(session)
            await session.close()
            log.info("call ended")
            said = [m for m in session.history if m["role"] != "system"]
            ended_by = session.end_reason or outcome
            app[METRICS].calls.labels(ended_by).inc()
            records.stream_ended(session.call_sid, ended_by, sum(m["role"] == "user" for m in said),
                                 said if settings.transcripts else None)
            for observer in app[CALL_ENDED]:
                observer(session)
        if not ws.closed:
            await ws.close()
    return ws


async def complete_call(settings: Settings, call_sid: str) -> None:
    """With Twilio credentials, also end the call through the REST API (closing the stream alone lets
    Twilio go on to any TwiML after <Connect>)."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token) or not call_sid.startswith("CA"):
        return

    def update() -> None:
        twilio_client(settings).calls(call_sid).update(status="completed")

    try:
        await asyncio.wait_for(asyncio.to_thread(update), timeout=10)
    except Exception as exc:  # the call may already be over; the stream is closed either way
        log.warning("could not complete call %s through the Twilio API: %s", call_sid, exc)


async def _close_sockets(app: web.Application) -> None:
    for ws in app[SOCKETS].copy():
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def create_app(settings: Settings, models: Models | None = None) -> web.Application:
    """Build the app; without `models`, they are loaded (and warmed) before the server accepts calls."""
    app = web.Application(client_max_size=64 * 1024, middlewares=[require_twilio_signature])
    app[SETTINGS] = settings
    app[CALL_TOKENS] = {}
    app[SESSIONS] = set()
    app[SOCKETS] = set()
    app[TURN_STATS] = deque(maxlen=1000)
    app[CALL_ENDED] = []
    app[DRAINING] = []
    app[HEALTH] = Health()
    app[METRICS] = Metrics(active_calls=lambda: len(app[SESSIONS]),
                           chat=lambda: app[MODELS].chat if MODELS in app else None)
    app[INSTANCE_ID] = secrets.token_hex(8)
    app[HEALTH].on_failure.append(lambda stage, exc: app[METRICS].error(stage, type(exc).__name__))

    async def records_ctx(app: web.Application) -> AsyncIterator[None]:
        app[RECORDS] = CallRecords(settings.data_dir)
        yield
        app[RECORDS].close()

    async def models_ctx(app: web.Application) -> AsyncIterator[None]:
        loaded = models if models is not None else await asyncio.to_thread(load_models, settings)
        app[MODELS] = loaded
        lines = {"greeting": settings.greeting, **PHRASES[settings.language]}
        lines.pop("dtmf")  # a template for the model, not a line to speak
        app[PHRASE_AUDIO] = {
            name: await asyncio.to_thread(prepare_speech, loaded, text) for name, text in lines.items()
        }
        yield

    app.cleanup_ctx.append(records_ctx)
    app.cleanup_ctx.append(models_ctx)
    app.on_shutdown.append(_close_sockets)
    app.router.add_post("/voice", voice)
    app.router.add_post("/status", status)
    app.router.add_get("/media", media)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    return app


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def check_exposure(settings: Settings, host: str) -> None:
    """Without TWILIO_AUTH_TOKEN anyone could place "calls" into the models: say so, and stay on loopback
    (where a tunnel still reaches us) unless the operator says otherwise."""
    if settings.twilio_auth_token:
        return
    log.warning("TWILIO_AUTH_TOKEN is not set: requests are NOT checked for Twilio's signature; "
                "anyone who can reach this server can open calls. Set TWILIO_AUTH_TOKEN in production.")
    if host not in LOOPBACK_HOSTS and not settings.allow_unsigned:
        raise ConfigError(
            f"refusing to listen on {host} without TWILIO_AUTH_TOKEN; set it, or set "
            "VOICEPIPE_ALLOW_UNSIGNED=1 to accept unsigned requests from the network anyway"
        )


async def drain(app: web.Application) -> None:
    """Stop taking calls (/voice answers "busy"), give active calls the grace period to finish, then say
    goodbye on the ones left and hang up."""
    app[DRAINING].append(True)
    settings = app[SETTINGS]
    log.info("shutting down: no new calls; %d active, %.0f s grace", len(app[SESSIONS]), settings.shutdown_grace_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.shutdown_grace_s
    while app[SESSIONS] and loop.time() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.gather(*(session.end_call("shutdown") for session in app[SESSIONS].copy()), return_exceptions=True)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run until SIGTERM/SIGINT, then drain calls and exit normally."""
    import signal

    from aiohttp.web_runner import GracefulExit

    check_exposure(settings, host)
    app = create_app(settings)

    async def handle_signals(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            if stopping:
                return
            stopping.append(loop.create_task(drain(app)))
            stopping[0].add_done_callback(lambda _: loop.call_soon(_exit))

        def _exit() -> None:
            raise GracefulExit()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)

    app.on_startup.append(handle_signals)
    web.run_app(app, host=host, port=port, access_log=None, print=None, handle_signals=False)
