"""Twilio Media Streams wire format: parse inbound JSON frames into typed events, build outbound ones."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

CALL_SID = re.compile(r"CA[0-9a-f]{32}")
ACCOUNT_SID = re.compile(r"AC[0-9a-f]{32}")


def is_call_sid(value: str) -> bool:
    """Twilio's CallSid shape; only such a value goes into a log line, a record or a REST URL."""
    return CALL_SID.fullmatch(value) is not None


# Twilio sends 160-byte (20 ms) frames; anything far larger is hostile or broken.
MAX_MEDIA_BYTES = 16_000


class ProtocolError(ValueError):
    """A frame that is not valid Media Streams JSON."""


@dataclass(frozen=True)
class Connected:
    protocol: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


@dataclass(frozen=True)
class Media:
    stream_sid: str
    timestamp_ms: int
    payload: bytes


@dataclass(frozen=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True)
class Stop:
    stream_sid: str
    call_sid: str


Event = Connected | Start | Media | Dtmf | Mark | Stop


def _object(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"'{key}' must be an object")
    return value


def _string(parent: dict[str, Any], key: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"'{key}' must be a non-empty string")
    return value


WHOLE_NUMBER = re.compile(r"\s*[+-]?[0-9]+\s*")  # ASCII digits: int() takes "١٢" and "1_000" too


def _int(parent: dict[str, Any], key: str, default: int | None = None) -> int:
    # Twilio sends numbers as strings; accept both.
    value = parent.get(key, default)
    if isinstance(value, bool) or value is None:
        raise ProtocolError(f"'{key}' must be a number")
    if isinstance(value, str) and not WHOLE_NUMBER.fullmatch(value):
        raise ProtocolError(f"'{key}' must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # json.loads accepts Infinity and NaN
        raise ProtocolError(f"'{key}' must be a number, got {value!r}") from None


def parse_event(text: str | bytes) -> Event | None:
    """Parse one WebSocket text frame. Returns None for events we do not know (ignored per protocol)."""
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame must be a JSON object")
    event = message.get("event")
    if event == "connected":
        return Connected(protocol=str(message.get("protocol", "")))
    if event == "start":
        start = _object(message, "start")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            raise ProtocolError("'customParameters' must map names to strings")
        media_format = start.get("mediaFormat") or {}
        if not isinstance(media_format, dict):
            raise ProtocolError("'mediaFormat' must be an object")
        return Start(
            stream_sid=_string(start, "streamSid") if "streamSid" in start else _string(message, "streamSid"),
            call_sid=_string(start, "callSid"),
            account_sid=str(start.get("accountSid", "")),
            custom_parameters={str(k): v for k, v in params.items()},
            encoding=str(media_format.get("encoding", "audio/x-mulaw")),
            sample_rate=_int(media_format, "sampleRate", 8000),
            channels=_int(media_format, "channels", 1),
        )
    if event == "media":
        media = _object(message, "media")
        track = media.get("track", "inbound")
        if track not in ("inbound", "inbound_track"):
            return None  # only the caller's audio matters
        payload_text = _string(media, "payload")
        if len(payload_text) > MAX_MEDIA_BYTES * 4 // 3 + 4:
            raise ProtocolError(f"media payload of {len(payload_text)} characters is too large")
        try:
            payload = base64.b64decode(payload_text, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("media payload is not valid base64") from None
        return Media(
            stream_sid=_string(message, "streamSid"),
            timestamp_ms=_int(media, "timestamp", 0),
            payload=payload,
        )
    if event == "dtmf":
        dtmf = _object(message, "dtmf")
        digit = _string(dtmf, "digit")
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise ProtocolError(f"unknown DTMF digit {digit!r}")
        return Dtmf(stream_sid=_string(message, "streamSid"), digit=digit)
    if event == "mark":
        return Mark(stream_sid=_string(message, "streamSid"), name=_string(_object(message, "mark"), "name"))
    if event == "stop":
        stop = message.get("stop") or {}
        if not isinstance(stop, dict):
            raise ProtocolError("'stop' must be an object")
        return Stop(stream_sid=_string(message, "streamSid"), call_sid=str(stop.get("callSid", "")))
    if not isinstance(event, str):
        raise ProtocolError("'event' must be a string")
    return None


def media_message(stream_sid: str, ulaw: bytes) -> str:
    """Outbound audio: raw 8 kHz mu-law, base64."""
    payload = base64.b64encode(ulaw).decode("ascii")
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})
