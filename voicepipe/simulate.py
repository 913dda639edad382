"""Play the part of Twilio against a voicepipe server: POST /voice, open the stream it names, speak audio
files in real time as 20 ms mu-law frames, play back what comes back (echoing marks as Twilio does), and
measure voice-to-voice latency per turn."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import soundfile

from voicepipe.audio.codec import pcm16_to_ulaw, ulaw_to_pcm16
from voicepipe.audio.resample import resample

FRAME_SECONDS = 0.02
FRAME_BYTES = 160
SILENCE_FRAME = b"\xff" * FRAME_BYTES
# Each clip starts a whole number of these frames into the stream (160 ms: where 20 ms frames and Silero's 32 ms
# windows line up again). Otherwise the clip's alignment with those windows is set by how many silent frames
# went before it, a wall-clock count, and the same clip was segmented differently from run to run.
PHASE_FRAMES = 8


def load_audio_8k(path: Path) -> np.ndarray:
    """Any file soundfile reads (wav, flac, ogg), as 8 kHz mono int16."""
    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    mono = data.mean(axis=1).astype(np.int16)
    return resample(mono, rate, 8000)


NOISE_PERCENTILE = 5  # the quietest frames of a clip: its background noise
SPEECH_OVER_NOISE_DB = 15.0


def _frame_db(samples: np.ndarray) -> np.ndarray:
    """Each 20 ms frame's level in dB below the clip's loudest frame."""
    frames = samples[: len(samples) - len(samples) % FRAME_BYTES].astype(np.float32).reshape(-1, FRAME_BYTES)
    rms = np.sqrt(np.mean(frames**2, axis=1)) + 1e-9
    return np.asarray(20 * np.log10(rms / rms.max()))


def loud_frames(samples: np.ndarray) -> np.ndarray:
    """For each 20 ms frame of a clip: is it speech? Within 35 dB of the clip's loudest frame and inside its
    speech (speech_bounds): a recording's background noise after its last word is not the caller talking."""
    level = _frame_db(samples)
    start, end = _bounds(level)
    loud = level > -35
    loud[:start] = loud[end:] = False
    return loud


def speech_bounds(samples: np.ndarray) -> tuple[int, int]:
    """The 20 ms frames where a clip's speech starts and ends."""
    return _bounds(_frame_db(samples))


def _bounds(level: np.ndarray) -> tuple[int, int]:
    """The first and last frame within 35 dB of the loudest and SPEECH_OVER_NOISE_DB above the noise floor (the
    quietest frames'). Recorded phone speech often has noise within 35 dB of its peak to its last frame (the old
    35 dB rule took 4 of tests/fixtures' 11 recordings to end within 60 ms of their last frame). Measured on the
    11: the ends fall within 0.2 s of where the server's voice activity detection (Silero) hears speech end; 2
    start with a click Silero does not count."""
    noise_floor = np.percentile(level, NOISE_PERCENTILE) if len(level) else 0.0
    loud = np.nonzero(level > max(-35.0, noise_floor + SPEECH_OVER_NOISE_DB))[0]
    return (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, 1)


@dataclass(frozen=True)
class CallerTurn:
    """What the caller does in one turn: speak a file, or press keys."""

    audio: Path | None = None
    dtmf: str = ""
    # Start this many seconds after the previous reply's first audio arrived, talking over it (barge-in);
    # None waits until the previous reply has finished playing.
    interrupt_after: float | None = None


@dataclass
class TurnResult:
    audio_file: str
    voice_to_voice: float | None  # end of the caller's speech -> first reply audio received
    reply_audio: np.ndarray  # 8 kHz int16
    marks: list[str] = field(default_factory=list)
    underruns: int = 0  # times playback ran dry inside the reply (a gap the caller hears)
    clear_after_onset: float | None = None  # this turn cut the agent off: its speech onset -> `clear`
    talked_over: float = 0.0  # seconds of agent audio that played while the caller was still speaking (cut-in)
    talked_over_voice: float = 0.0  # the share of it over the caller's own voice (not over their pauses)

    @property
    def reply_seconds(self) -> float:
        return len(self.reply_audio) / 8000


@dataclass
class CallResult:
    call_sid: str
    greeting_audio: np.ndarray
    turns: list[TurnResult]
    cleared: int  # `clear` messages received
    hung_up: bool = False  # the server ended the call (closed the stream)
    after_turns_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))


class _Playback:
    """Twilio's side of the outbound audio: a queue that plays in real time, with marks echoed when reached."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.play_end = 0.0  # wall time when everything received so far has played
        self.pending_marks: list[tuple[float, str]] = []
        self.audio: list[bytes] = []
        self.first_audio_at: float | None = None
        self.last_audio_at = 0.0
        self.marks: list[str] = []
        self.cleared = 0
        self.clears_at: list[float] = []
        self.underruns = 0
        self.playing: list[tuple[float, float]] = []  # when each piece of audio plays (start, end)

    def receive(self, message: dict[str, object], now: float) -> None:
        event = message.get("event")
        if event == "media":
            payload = base64.b64decode(message["media"]["payload"])  # type: ignore[index]
            if self.first_audio_at is None:
                self.first_audio_at = now
            elif now - self.play_end > FRAME_SECONDS / self.speed:
                self.underruns += 1  # the queue ran dry for more than a frame before this audio came
            self.last_audio_at = now
            self.audio.append(payload)
            start = max(self.play_end, now)
            self.play_end = start + len(payload) / 8000 / self.speed
            self.playing.append((start, self.play_end))
        elif event == "mark":
            self.pending_marks.append((max(self.play_end, now), message["mark"]["name"]))  # type: ignore[index]
        elif event == "clear":
            self.cleared += 1
            self.clears_at.append(now)
            # What follows a clear is a new reply: the interrupted one's audio is no longer this turn's.
            self.first_audio_at = None
            self.audio = []
            self.play_end = now
            self.pending_marks = [(now, name) for _, name in self.pending_marks]
            self.playing = [(start, min(end, now)) for start, end in self.playing if start < now]

    def played_between(self, start: float, end: float) -> float:
        """Seconds of audio that played inside [start, end]."""
        return sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.playing)

    def due_marks(self, now: float) -> list[str]:
        due = [name for at, name in self.pending_marks if at <= now]
        self.pending_marks = [(at, name) for at, name in self.pending_marks if at > now]
        self.marks.extend(due)
        return due

    def finished(self, now: float, quiet_seconds: float) -> bool:
        """A reply is over once it has played, its marks are echoed and nothing new came for a while."""
        return (
            self.first_audio_at is not None
            and now >= self.play_end
            and not self.pending_marks
            and now - self.last_audio_at >= quiet_seconds
        )

    def take(self) -> tuple[float | None, np.ndarray, list[str], int]:
        audio = ulaw_to_pcm16(b"".join(self.audio)) if self.audio else np.zeros(0, dtype=np.int16)
        taken = (self.first_audio_at, audio, self.marks, self.underruns)
        self.audio, self.first_audio_at, self.marks, self.underruns, self.playing = [], None, [], 0, []
        return taken


def _signature(auth_token: str, url: str, params: dict[str, str]) -> dict[str, str]:
    if not auth_token:
        return {}
    from twilio.request_validator import RequestValidator

    return {"X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, params)}


def _stream_from_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    if stream is None and root.find("./Hangup") is not None:
        raise CallRefused(" ".join(say.text or "" for say in root.findall("./Say")))
    if stream is None or not stream.get("url"):
        raise RuntimeError(f"/voice did not answer <Connect><Stream>: {twiml[:200]}")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return str(stream.get("url")), params


def _websocket_url(base_url: str, stream_url: str) -> str:
    """Reach the stream through the base URL's host: a local server speaks ws://, not the TwiML's wss://."""
    base, stream = urlsplit(base_url), urlsplit(stream_url)
    if stream.netloc == base.netloc or not base.scheme.startswith("https"):
        scheme = "wss" if base.scheme == "https" else "ws"
        return f"{scheme}://{base.netloc}{stream.path}"
    return stream_url


async def simulate_call(
    base_url: str,
    turns: Sequence[Path | CallerTurn],
    speed: float = 1.0,
    reply_timeout: float = 30.0,
    quiet_seconds: float = 1.2,
    stay_on_line: float = 0.0,
    auth_token: str = "",
    public_url: str = "",
    account_sid: str = "AC" + "0" * 32,
    media_url: str = "",
) -> CallResult:
    """One call: wait for the greeting, then play each caller turn and wait for its reply to finish playing.
    With `stay_on_line`, stay silent that many seconds more (or until the server hangs up). With
    `auth_token`, requests are signed as Twilio signs them, over `public_url` (WEBHOOK_URL) when given. With
    `media_url`, the stream goes to that server instead (another node, as a load balancer may choose)."""
    call_sid = "CA" + secrets.token_hex(16)
    stream_sid = "MZ" + secrets.token_hex(16)
    script = [t if isinstance(t, CallerTurn) else CallerTurn(audio=t) for t in turns]
    clips = [load_audio_8k(t.audio) if t.audio is not None else None for t in script]
    base_url = base_url.rstrip("/")
    async with aiohttp.ClientSession() as http:
        form = {"CallSid": call_sid, "AccountSid": account_sid, "From": "+15550000001", "To": "+15550000002",
                "CallStatus": "ringing", "Direction": "inbound"}
        signing_base = public_url.rstrip("/") or "https://" + urlsplit(base_url).netloc
        headers = _signature(auth_token, f"{signing_base}/voice", form)
        async with http.post(f"{base_url}/voice", data=form, headers=headers) as response:
            response.raise_for_status()
            stream_url, params = _stream_from_twiml(await response.text())
        ws_headers = _signature(auth_token, stream_url, {})
        ws_url = _websocket_url(media_url.rstrip("/") or base_url, stream_url)
        async with http.ws_connect(ws_url, autoclose=False, headers=ws_headers) as ws:
            playback = _Playback(speed)
            sequence = 0

            async def send(event: dict[str, object]) -> None:
                nonlocal sequence
                sequence += 1
                await ws.send_str(json.dumps({**event, "sequenceNumber": str(sequence)}))

            async def receive() -> None:
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        playback.receive(json.loads(message.data), time.perf_counter())

            reader = asyncio.create_task(receive())
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await send({"event": "start", "streamSid": stream_sid, "start": {
                "accountSid": form["AccountSid"], "streamSid": stream_sid, "callSid": call_sid,
                "tracks": ["inbound"], "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
            chunk = 0
            clock = time.perf_counter()

            async def send_frame(frame: bytes) -> float:
                """Send one 20 ms frame on the real-time schedule; returns the wall time it left."""
                nonlocal chunk, clock
                if reader.done():
                    raise _HungUp
                clock += FRAME_SECONDS / speed
                delay = clock - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                chunk += 1
                try:
                    await send({"event": "media", "streamSid": stream_sid, "media": {
                        "track": "inbound", "chunk": str(chunk), "timestamp": str(int(chunk * 20)),
                        "payload": base64.b64encode(frame).decode()}})
                    now = time.perf_counter()
                    for name in playback.due_marks(now):
                        await send({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})
                except (ConnectionResetError, RuntimeError):
                    raise _HungUp from None
                return now

            async def listen(deadline: float, until: Callable[[float], bool]) -> None:
                while not until(time.perf_counter()) and time.perf_counter() < deadline:
                    await send_frame(SILENCE_FRAME)

            def reply_finished(now: float) -> bool:
                return playback.finished(now, quiet_seconds)

            results: list[TurnResult] = []
            hung_up = False
            greeting = np.zeros(0, dtype=np.int16)
            try:
                await listen(time.perf_counter() + reply_timeout, reply_finished)
                _, greeting, _, _ = playback.take()
                for index, (turn, clip) in enumerate(zip(script, clips, strict=True)):
                    next_turn = script[index + 1] if index + 1 < len(script) else None
                    speech_end_at = time.perf_counter()
                    onset_at = time.perf_counter()
                    clears_before = playback.cleared
                    voiced_at: list[float] = []  # when each of the caller's voiced frames was sent
                    if turn.dtmf:
                        for digit in turn.dtmf:
                            await send({"event": "dtmf", "streamSid": stream_sid,
                                        "dtmf": {"track": "inbound_track", "digit": digit}})
                            await send_frame(SILENCE_FRAME)
                        speech_end_at = time.perf_counter()
                    elif clip is not None:
                        while chunk % PHASE_FRAMES:
                            await send_frame(SILENCE_FRAME)
                        ulaw = pcm16_to_ulaw(clip)
                        ulaw += b"\xff" * (-len(ulaw) % FRAME_BYTES)
                        start_frame, end_frame = speech_bounds(clip)
                        loud = loud_frames(clip)
                        for frame_index in range(len(ulaw) // FRAME_BYTES):
                            sent_at = await send_frame(ulaw[frame_index * FRAME_BYTES : (frame_index + 1) * FRAME_BYTES])
                            if frame_index < len(loud) and loud[frame_index]:
                                voiced_at.append(sent_at)
                            if frame_index == start_frame:
                                onset_at = sent_at
                            if frame_index + 1 == end_frame:
                                speech_end_at = sent_at
                    if next_turn is not None and next_turn.interrupt_after is not None:
                        # Wait for this reply to start, let it play a while, then the next turn talks over it.
                        await listen(time.perf_counter() + reply_timeout, lambda now: playback.first_audio_at is not None)
                        if playback.first_audio_at is not None:
                            start_at = playback.first_audio_at + next_turn.interrupt_after
                            await listen(start_at, lambda now: False)
                    else:
                        await listen(time.perf_counter() + reply_timeout, reply_finished)
                    talked_over = playback.played_between(onset_at, speech_end_at) if clip is not None else 0.0
                    over_voice = sum(playback.played_between(at, at + FRAME_SECONDS / speed) for at in voiced_at)
                    first_audio_at, audio, marks, underruns = playback.take()
                    latency = first_audio_at - speech_end_at if first_audio_at is not None else None
                    # The first clear after this turn's onset: when the agent stopped (a hold; giving way later
                    # sends another, to a queue already empty).
                    cleared = playback.clears_at[clears_before] - onset_at if playback.cleared > clears_before else None
                    results.append(TurnResult(str(turn.audio or f"dtmf {turn.dtmf}"), latency, audio, marks,
                                              underruns, cleared if clip is not None else None, talked_over,
                                              over_voice))
                if stay_on_line:
                    await listen(time.perf_counter() + stay_on_line, lambda now: False)
            except _HungUp:
                hung_up = True
            if stay_on_line and not hung_up:
                hung_up = reader.done()
            after = playback.take()[1]
            if not reader.done():
                with contextlib.suppress(ConnectionResetError, RuntimeError):
                    await send({"event": "stop", "streamSid": stream_sid,
                                "stop": {"accountSid": form["AccountSid"], "callSid": call_sid}})
                await ws.close()
            reader.cancel()
            return CallResult(call_sid, greeting, results, playback.cleared, hung_up, after)


class CallRefused(RuntimeError):
    """/voice answered with a message and a hang-up instead of a stream (the server is busy or draining)."""


class _HungUp(Exception):
    """The server closed the stream: it hung up."""
