"""Twilio's webhooks: /voice (TwiML that connects the media stream, or a spoken "lines busy") and /status
(call status callbacks into the records). The guard in front of them is in access.py."""

from __future__ import annotations

import logging
import re

from aiohttp import web
from twilio.twiml.voice_response import Connect, VoiceResponse

from voicepipe.config import BUSY_MESSAGES
from voicepipe.service.access import read_form
from voicepipe.service.state import SERVICE, Service
from voicepipe.service.tokens import StoreUnavailable
from voicepipe.telephony.protocol import ACCOUNT_SID, is_call_sid
from voicepipe.telephony.rest import complete_call, redirect_call, voicemail_twiml
from voicepipe.telephony.signatures import public_base, stream_url

log = logging.getLogger(__name__)

TOKEN_PARAMETER = "voicepipe_token"
ANSWERED_BY = re.compile(r"[a-z_]{1,32}")


def twiml(response: VoiceResponse) -> web.Response:
    return web.Response(text=str(response), content_type="application/xml")


def call_sid_of(form: dict[str, str]) -> str:
    """The form's CallSid, which must have Twilio's shape: it goes into records, log lines and REST URLs."""
    call_sid = form.get("CallSid", "")
    if not is_call_sid(call_sid):
        raise web.HTTPBadRequest(text="CallSid missing or not a Twilio CallSid (CA + 32 hex digits)\n")
    return call_sid


async def voice(request: web.Request) -> web.Response:
    form = await read_form(request)
    call_sid = call_sid_of(form)
    account_sid = form.get("AccountSid", "")
    service = request.app[SERVICE]
    settings = service.settings
    if account_sid and not ACCOUNT_SID.fullmatch(account_sid):
        raise web.HTTPBadRequest(text="AccountSid is not a Twilio AccountSid\n")
    if settings.twilio_account_sid and account_sid != settings.twilio_account_sid:
        log.warning("call %s refused: AccountSid is not TWILIO_ACCOUNT_SID", call_sid)
        service.metrics.error("webhook", "foreign_account")
        raise web.HTTPForbidden(text="this call belongs to another Twilio account\n")
    if service.session_for(call_sid) is not None:
        raise _replayed(service, call_sid)
    service.records.call_offered(call_sid, form.get("Direction", ""), form.get("From", ""), form.get("To", ""),
                                 settings.language)
    try:
        full = await service.full()
        token = None if full else await service.tokens.issue(call_sid, account_sid, form.get("From", ""))
    except StoreUnavailable as exc:
        log.error("call %s refused: the shared token store is unavailable (%s)", call_sid, exc)
        service.metrics.error("webhook", "store_unavailable")
        return _busy(service, call_sid)
    if full:
        # Saying so beats connecting a stream that would stutter for everyone.
        log.warning("call %s refused: no room (VOICEPIPE_MAX_CALLS %d%s)", call_sid, settings.max_calls,
                    " on every node" if service.registry is not None else "")
        return _busy(service, call_sid)
    if token is None:
        raise _replayed(service, call_sid)
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url(public_base(settings.webhook_url, request.host)))
    stream.parameter(name=TOKEN_PARAMETER, value=token)
    response.append(connect)
    log.info("incoming call %s: connecting media stream", call_sid)
    return twiml(response)


def _busy(service: Service, call_sid: str) -> web.Response:
    """The spoken "lines are busy", and a hang-up."""
    settings = service.settings
    service.metrics.calls.labels("busy").inc()
    service.records.stream_ended(call_sid, "busy", 0, None)
    response = VoiceResponse()
    response.say(BUSY_MESSAGES[settings.language], language=settings.say_language, voice=settings.say_voice or None)
    response.hangup()
    return twiml(response)


def _replayed(service: Service, call_sid: str) -> web.HTTPConflict:
    """Twilio asks /voice once per call: a second request for a CallSid is a captured request replayed."""
    log.warning("call %s refused: /voice was already answered for this CallSid (a replayed request?)", call_sid)
    service.metrics.error("webhook", "replayed_voice")
    return web.HTTPConflict(text="this CallSid already has a media stream\n")


async def status(request: web.Request) -> web.Response:
    form = await read_form(request)
    call_sid, call_status = call_sid_of(form), form.get("CallStatus", "")
    if not call_status.replace("-", "").isalpha() or len(call_status) > 20:
        raise web.HTTPBadRequest(text="CallStatus missing or malformed\n")
    log.info("call %s status %s", call_sid, call_status)
    sequence = form.get("SequenceNumber", "")
    records = request.app[SERVICE].records
    records.call_offered(call_sid, form.get("Direction", ""), form.get("From", ""), form.get("To", ""))
    # isdecimal and isascii: "²".isdigit() is True and int("²") raises.
    records.status(call_sid, call_status, int(sequence) if sequence.isascii() and sequence.isdecimal() else None)
    return web.Response(status=204)


async def amd(request: web.Request) -> web.Response:
    """Twilio's answering-machine verdict on an outbound conversation call (`voicepipe call --detect-machine`):
    a machine gets VOICEPIPE_VOICEMAIL_MESSAGE after its beep, then the call ends; a fax is hung up on."""
    form = await read_form(request)
    call_sid, answered_by = call_sid_of(form), form.get("AnsweredBy", "")
    if not ANSWERED_BY.fullmatch(answered_by):
        raise web.HTTPBadRequest(text="AnsweredBy missing or malformed\n")
    service = request.app[SERVICE]
    log.info("call %s answered by %s", call_sid, answered_by)
    service.records.answered_by(call_sid, answered_by)
    if answered_by.startswith("machine") or answered_by == "fax":
        session = service.session_for(call_sid)
        outcome = "voicemail" if answered_by != "fax" else "fax"
        if session is not None:
            await session.hand_over(outcome)  # stop talking to the machine's greeting
        if answered_by == "fax":
            await complete_call(service.settings, call_sid)
        elif not await redirect_call(service.settings, call_sid, voicemail_twiml(service.settings)):
            log.warning("call %s: the voicemail could not be left", call_sid)
        if session is None:
            service.records.stream_ended(call_sid, outcome, 0, None)
    return web.Response(status=204)
