"""Twilio's webhooks: the signature check in front of them, /voice (TwiML that connects the media stream, or a
spoken "lines busy") and /status (call status callbacks into the records)."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from twilio.twiml.voice_response import Connect, VoiceResponse

from voicepipe.config import BUSY_MESSAGES
from voicepipe.service.state import SERVICE
from voicepipe.telephony.signatures import public_base, signature_holds, signed_url, stream_url

log = logging.getLogger(__name__)

TOKEN_PARAMETER = "voicepipe_token"
SIGNED_PATHS = ("/voice", "/status", "/media")


async def read_form(request: web.Request) -> dict[str, str]:
    """The webhook's form fields; a body that is not a valid form is a 400, not a server error."""
    try:
        return {k: str(v) for k, v in (await request.post()).items()}
    except (UnicodeDecodeError, ValueError) as exc:
        log.warning("rejected %s %s: malformed form body (%s)", request.method, request.path, type(exc).__name__)
        request.app[SERVICE].metrics.error("webhook", "bad_form")
        raise web.HTTPBadRequest(text="malformed form body\n") from None


@web.middleware
async def require_twilio_signature(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With TWILIO_AUTH_TOKEN set, only requests signed by Twilio get past: 403 before any work is done."""
    service = request.app[SERVICE]
    settings = service.settings
    if not settings.twilio_auth_token or request.path not in SIGNED_PATHS:
        return await handler(request)
    signature = request.headers.get("X-Twilio-Signature", "")
    params = await read_form(request) if request.method == "POST" else {}
    url = signed_url(public_base(settings.webhook_url, request.host), request.path, request.path_qs)
    if not signature_holds(settings.twilio_auth_token, url, params, signature):
        log.warning("rejected %s %s: %s X-Twilio-Signature", request.method, request.path,
                    "wrong" if signature else "missing")
        service.metrics.error("webhook", "bad_signature")
        raise web.HTTPForbidden(text="invalid or missing X-Twilio-Signature\n")
    return await handler(request)


def twiml(response: VoiceResponse) -> web.Response:
    return web.Response(text=str(response), content_type="application/xml")


async def voice(request: web.Request) -> web.Response:
    form = await read_form(request)
    call_sid = form.get("CallSid", "")
    service = request.app[SERVICE]
    settings = service.settings
    if call_sid:
        service.records.call_offered(call_sid, form.get("Direction", ""), form.get("From", ""), form.get("To", ""),
                                     settings.language)
    response = VoiceResponse()
    if service.draining or len(service.sessions) + service.tokens.pending >= settings.max_calls:
        # Saying so beats connecting a stream that would stutter for everyone.
        log.warning("call %s refused: %d calls is the maximum (VOICEPIPE_MAX_CALLS)", call_sid, settings.max_calls)
        service.metrics.calls.labels("busy").inc()
        if call_sid:
            service.records.stream_ended(call_sid, "busy", 0, None)
        response.say(BUSY_MESSAGES[settings.language], language=settings.say_language, voice=settings.say_voice or None)
        response.hangup()
        return twiml(response)
    connect = Connect()
    stream = connect.stream(url=stream_url(public_base(settings.webhook_url, request.host)))
    stream.parameter(name=TOKEN_PARAMETER, value=service.tokens.issue(call_sid))
    response.append(connect)
    log.info("incoming call %s: connecting media stream", call_sid or "(no CallSid)")
    return twiml(response)


async def status(request: web.Request) -> web.Response:
    form = await read_form(request)
    call_sid, call_status = form.get("CallSid", ""), form.get("CallStatus", "")
    log.info("call %s status %s", call_sid or "?", call_status or "?")
    if call_sid and call_status:
        sequence = form.get("SequenceNumber", "")
        records = request.app[SERVICE].records
        records.call_offered(call_sid, form.get("Direction", ""), form.get("From", ""), form.get("To", ""))
        records.status(call_sid, call_status, int(sequence) if sequence.isdigit() else None)
    return web.Response(status=204)
