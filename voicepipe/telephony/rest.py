"""Twilio's REST API: placing calls (a conversation, for which Twilio fetches /voice from WEBHOOK_URL, or a
one-way message spoken by Twilio's <Say>, no webhook needed) and ending a live call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from twilio.twiml.voice_response import VoiceResponse

from voicepipe.config import E164, ConfigError, Settings
from voicepipe.telephony.protocol import is_call_sid

log = logging.getLogger(__name__)

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
FINAL_STATUSES = {"completed", "busy", "failed", "no-answer", "canceled"}
MAX_SAY_CHARS = 4000  # Twilio's limit on <Say> text


def twilio_client(settings: Settings) -> Any:
    """The official twilio client; VOICEPIPE_TWILIO_API_URL points it elsewhere (a regional edge, a test)."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        raise ConfigError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set (in .env or the environment)")
    from twilio.rest import Client

    client = Client(settings.twilio_account_sid, settings.twilio_auth_token)
    if settings.twilio_api_url:
        client.api.base_url = settings.twilio_api_url
    return client


def check_number(number: str, setting: str) -> str:
    number = number.strip().replace(" ", "").replace("-", "")
    if not E164.match(number):
        raise ConfigError(f"{setting}={number!r} is not an E.164 phone number (like +14155550123)")
    return number


def say_twiml(text: str, settings: Settings) -> str:
    """One-way call: Twilio speaks the text in the call's language and voice, then hangs up."""
    text = " ".join(text.split())
    if not text:
        raise ConfigError("the message to speak is empty")
    if len(text) > MAX_SAY_CHARS:
        raise ConfigError(f"the message is {len(text)} characters; Twilio speaks at most {MAX_SAY_CHARS}")
    response = VoiceResponse()
    response.say(text, language=settings.say_language, voice=settings.say_voice or None)
    response.hangup()
    return str(response)


def place_call(settings: Settings, to: str, twiml: str | None = None, client: Any = None,
               detect_machine: bool = False) -> str:
    """Start a call from TWILIO_PHONE_NUMBER to `to`; returns its CallSid. Without `twiml`, Twilio asks
    WEBHOOK_URL/voice what to do, and reports the call's progress to WEBHOOK_URL/status.

    `detect_machine` asks Twilio's answering-machine detection to wait for the end of a voicemail greeting
    (DetectMessageEnd). A one-way message then starts after the beep (Twilio holds the TwiML until it knows). A
    conversation starts at once (async AMD) and WEBHOOK_URL/amd hears the verdict: on a machine, the server
    leaves VOICEPIPE_VOICEMAIL_MESSAGE and hangs up."""
    to = check_number(to, "the number to call (or TO_PHONE_NUMBER)")
    from_ = check_number(settings.twilio_phone_number, "TWILIO_PHONE_NUMBER")
    client = client or twilio_client(settings)
    options: dict[str, Any] = {"to": to, "from_": from_}
    if twiml is not None:
        options["twiml"] = twiml
    else:
        if not settings.webhook_url:
            raise ConfigError("WEBHOOK_URL must be set to your tunnel's public https:// URL for a conversation "
                              "(a one-way --message needs none)")
        options["url"] = f"{settings.webhook_url}/voice"
        options["method"] = "POST"
    if detect_machine:
        options["machine_detection"] = "DetectMessageEnd"
        if twiml is None:
            options["async_amd"] = "true"
            options["async_amd_status_callback"] = f"{settings.webhook_url}/amd"
            options["async_amd_status_callback_method"] = "POST"
    if settings.webhook_url:
        options["status_callback"] = f"{settings.webhook_url}/status"
        options["status_callback_event"] = STATUS_EVENTS
        options["status_callback_method"] = "POST"
    call = client.calls.create(**options)
    log.info("placed call %s to %s", call.sid, to)
    return str(call.sid)


def follow_call(
    settings: Settings,
    call_sid: str,
    report: Callable[[str], None],
    client: Any = None,
    interval: float = 2.0,
    timeout: float = 3600.0,
) -> str:
    """Poll the call's status until it ends, reporting each change; returns the final status."""
    client = client or twilio_client(settings)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status = str(client.calls(call_sid).fetch().status)
        if status != last:
            report(status)
            last = status
        if status in FINAL_STATUSES:
            return status
        time.sleep(interval)
    return last


def dial_twiml(number: str) -> str:
    """Move the call to a person: Twilio dials `number` and bridges the caller to it."""
    response = VoiceResponse()
    response.dial(number)
    return str(response)


def voicemail_twiml(settings: Settings) -> str:
    response = VoiceResponse()
    response.say(settings.voicemail_message, language=settings.say_language, voice=settings.say_voice or None)
    response.hangup()
    return str(response)


async def redirect_call(settings: Settings, call_sid: str, twiml: str) -> bool:
    """Give a live call new TwiML through the REST API (its media stream ends); False when it could not be done."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        log.warning("cannot redirect call %s: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set", call_sid)
        return False
    if not is_call_sid(call_sid):
        log.warning("not redirecting call %r through the Twilio API: not a Twilio CallSid", call_sid[:40])
        return False

    def update() -> None:
        twilio_client(settings).calls(call_sid).update(twiml=twiml)

    try:
        await asyncio.wait_for(asyncio.to_thread(update), timeout=10)
    except Exception as exc:  # noqa: BLE001 - an API error, the network, a call already over: the caller stays
        log.warning("could not redirect call %s through the Twilio API: %s", call_sid, exc)
        return False
    return True


async def complete_call(settings: Settings, call_sid: str) -> None:
    """With Twilio credentials, end the call through the REST API (closing the stream alone lets Twilio go on
    to any TwiML after <Connect>). The CallSid goes into the URL's path: only Twilio's shape is sent."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        return
    if not is_call_sid(call_sid):
        log.warning("not ending call %r through the Twilio API: not a Twilio CallSid", call_sid[:40])
        return

    def update() -> None:
        twilio_client(settings).calls(call_sid).update(status="completed")

    try:
        await asyncio.wait_for(asyncio.to_thread(update), timeout=10)
    except Exception as exc:  # the call may already be over; the stream is closed either way
        log.warning("could not complete call %s through the Twilio API: %s", call_sid, exc)
