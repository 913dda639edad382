import base64
import json

import pytest

from voicepipe.telephony.protocol import (
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_event,
)

START = {
    "event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
    "start": {"accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
              "customParameters": {"voicepipe_token": "abc"},
              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
}


def media(payload: str = base64.b64encode(b"\xff" * 160).decode(), **extra: object) -> str:
    body = {"track": "inbound", "chunk": "2", "timestamp": "40", "payload": payload, **extra}
    return json.dumps({"event": "media", "sequenceNumber": "3", "streamSid": "MZ1", "media": body})


def test_parses_every_twilio_event() -> None:
    assert parse_event('{"event":"connected","protocol":"Call","version":"1.0.0"}') == Connected("Call")
    start = parse_event(json.dumps(START))
    assert start == Start("MZ1", "CA1", "AC1", {"voicepipe_token": "abc"}, "audio/x-mulaw", 8000)
    assert parse_event(media()) == Media("MZ1", 40, b"\xff" * 160)
    dtmf = {"event": "dtmf", "streamSid": "MZ1", "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": "7"}}
    assert parse_event(json.dumps(dtmf)) == Dtmf("MZ1", "7")
    assert parse_event('{"event":"mark","streamSid":"MZ1","mark":{"name":"t1s1"}}') == Mark("MZ1", "t1s1")
    stop = {"event": "stop", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}}
    assert parse_event(json.dumps(stop)) == Stop("MZ1", "CA1")


def test_unknown_events_and_outbound_tracks_are_ignored() -> None:
    assert parse_event('{"event":"future-thing","x":1}') is None
    assert parse_event(media(track="outbound")) is None


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"event": 5}',
        '{"event":"start","start":"x"}',
        '{"event":"start","streamSid":"MZ1","start":{"streamSid":"MZ1"}}',
        media(payload="***not base64***"),
        media(payload=base64.b64encode(b"\x00" * 100_000).decode()),
        json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": 12}}),
        json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": "", "timestamp": "soon"}}),
        json.dumps({"event": "media", "media": {"payload": "/w=="}}),
        '{"event":"media","streamSid":"MZ1","media":{"payload":"/w==","timestamp":Infinity}}',
        '{"event":"media","streamSid":"MZ1","media":{"payload":"/w==","timestamp":NaN}}',
        json.dumps({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "99"}}),
        json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {}}),
        json.dumps({**START, "start": {**START["start"], "customParameters": {"a": 1}}}),  # type: ignore[dict-item]
    ],
)
def test_malformed_frames_raise_protocol_error(frame: str) -> None:
    with pytest.raises(ProtocolError):
        parse_event(frame)


def test_outbound_messages() -> None:
    sent = json.loads(media_message("MZ1", b"\x01\x02"))
    assert sent == {"event": "media", "streamSid": "MZ1", "media": {"payload": base64.b64encode(b"\x01\x02").decode()}}
    assert json.loads(mark_message("MZ1", "t1s2")) == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "t1s2"}}
    assert json.loads(clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}
