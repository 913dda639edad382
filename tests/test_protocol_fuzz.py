"""Property-based: whatever arrives on the socket, the parser returns an event, None, or ProtocolError."""

import base64
import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from voicepipe.telephony.protocol import Event, ProtocolError, parse_event

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from([float("inf"), float("-inf")])
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
# Twilio sends numbers as strings; json.loads also yields huge ints, floats, Infinity and NaN.
NUMBERS = st.integers() | st.integers().map(str) | st.floats() | st.sampled_from([float("inf"), float("nan")])
EVENTS = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "other"])


def frames() -> st.SearchStrategy[str]:
    shaped = st.fixed_dictionaries(
        {"event": EVENTS, "streamSid": st.text(min_size=1, max_size=5) | st.integers()},
        optional={
            "start": st.fixed_dictionaries({}, optional={"streamSid": JSON, "callSid": JSON, "customParameters": JSON,
                                                         "mediaFormat": JSON}) | JSON,
            "media": st.fixed_dictionaries({}, optional={
                "payload": st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()) | JSON,
                "timestamp": NUMBERS | JSON, "track": st.sampled_from(["inbound", "outbound"]) | JSON}) | JSON,
            "dtmf": st.fixed_dictionaries({}, optional={"digit": JSON}) | JSON,
            "mark": st.fixed_dictionaries({}, optional={"name": JSON}) | JSON,
            "stop": JSON,
        },
    ).map(json.dumps)
    return shaped | JSON.map(json.dumps) | st.text(max_size=200)


@settings(max_examples=1500, deadline=None)
@given(frames())
def test_parser_never_raises_anything_but_protocol_error(frame: str) -> None:
    try:
        event = parse_event(frame)
    except ProtocolError:
        return
    assert event is None or isinstance(event, Event.__args__)  # type: ignore[attr-defined]


def integer_value(value: object) -> int | None:
    """The whole number a field holds as Twilio would send it (an int, or its decimal string), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


@settings(max_examples=500, deadline=None)
@given(timestamp=NUMBERS | JSON, sample_rate=NUMBERS | JSON)
def test_numeric_fields_of_well_formed_frames(timestamp: object, sample_rate: object) -> None:
    media = json.dumps({"event": "media", "streamSid": "MZ1",
                        "media": {"track": "inbound", "payload": "/w==", "timestamp": timestamp}})
    start = json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": "CA1", "mediaFormat": {"sampleRate": sample_rate}}})
    for frame, value, field in ((media, timestamp, "timestamp_ms"), (start, sample_rate, "sample_rate")):
        try:
            event = parse_event(frame)
        except ProtocolError:
            assert integer_value(value) is None, f"{value!r} is a number Twilio could send"
            continue
        parsed = getattr(event, field)
        assert type(parsed) is int, parsed  # never the raw string, float or object
        if integer_value(value) is not None:
            assert parsed == integer_value(value)
        else:  # only a finite float gets this far: it is cut to a whole number
            assert isinstance(value, float) and parsed == int(value)
