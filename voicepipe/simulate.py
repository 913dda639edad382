"""Play the part of Twilio against a voicepipe server: POST /voice, open the stream it names, speak audio
files in real time as 20 ms mu-law frames, play back what comes back (echoing marks as Twilio does), and
measure voice-to-voice latency per turn."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import soundfile

from voicepipe.codec import pcm16_to_ulaw, ulaw_to_pcm16
from voicepipe.resample import resample

FRAME_SECONDS = 0.02
FRAME_BYTES = 160
SILENCE_FRAME = b"\xff" * FRAME_BYTES


def load_audio_8k(path: Path) -> np.ndarray:
    """Any file soundfile reads (wav, flac, ogg), as 8 kHz mono int16."""
    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    mono = data.mean(axis=1).astype(np.int16)
    return resample(mono, rate, 8000)


def speech_end_seconds(samples: np.ndarray) -> float:
    """Where the speech in a clip ends: the last 20 ms frame within 35 dB of the clip's loudest frame."""
    frames = samples[: len(samples) - len(samples) % FRAME_BYTES].astype(np.float32).reshape(-1, FRAME_BYTES)
    rms = np.sqrt(np.mean(frames**2, axis=1)) + 1e-9
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > -35)[0]
    return float((loud[-1] + 1) * FRAME_SECONDS) if len(loud) else 0.0


@dataclass
class TurnResult:
    audio_file: str
    voice_to_voice: float | None  # end of the caller's speech -> first reply audio received
    reply_audio: np.ndarray  # 8 kHz int16
    marks: list[str] = field(default_factory=list)
    underruns: int = 0  # times playback ran dry inside the reply (a gap the caller hears)

    @property
    def reply_seconds(self) -> float:
        return len(self.reply_audio) / 8000


@dataclass
class CallResult:
    call_sid: str
    greeting_audio: np.ndarray
    turns: list[TurnResult]
    cleared: int  # `clear` messages received


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
        self.underruns = 0

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
            self.play_end = max(self.play_end, now) + len(payload) / 8000 / self.speed
        elif event == "mark":
            self.pending_marks.append((max(self.play_end, now), message["mark"]["name"]))  # type: ignore[index]
        elif event == "clear":
            self.cleared += 1
            self.play_end = now
            self.pending_marks = [(now, name) for _, name in self.pending_marks]

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
        self.audio, self.first_audio_at, self.marks, self.underruns = [], None, [], 0
        return taken


def _stream_from_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
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
    audio_files: list[Path],
    speed: float = 1.0,
    reply_timeout: float = 30.0,
    quiet_seconds: float = 1.2,
) -> CallResult:
    """One call: wait for the greeting, then speak each file and wait for the reply to finish playing."""
    call_sid = "CA" + secrets.token_hex(16)
    stream_sid = "MZ" + secrets.token_hex(16)
    clips = [load_audio_8k(path) for path in audio_files]
    base_url = base_url.rstrip("/")
    async with aiohttp.ClientSession() as http:
        form = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": "+15550000001", "To": "+15550000002",
                "CallStatus": "ringing", "Direction": "inbound"}
        async with http.post(f"{base_url}/voice", data=form) as response:
            response.raise_for_status()
            stream_url, params = _stream_from_twiml(await response.text())
        async with http.ws_connect(_websocket_url(base_url, stream_url), autoclose=False) as ws:
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
                clock += FRAME_SECONDS / speed
                delay = clock - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                chunk += 1
                await send({"event": "media", "streamSid": stream_sid, "media": {
                    "track": "inbound", "chunk": str(chunk), "timestamp": str(int(chunk * 20)),
                    "payload": base64.b64encode(frame).decode()}})
                now = time.perf_counter()
                for name in playback.due_marks(now):
                    await send({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})
                return now

            async def listen(deadline: float) -> None:
                while not playback.finished(time.perf_counter(), quiet_seconds) and time.perf_counter() < deadline:
                    if reader.done():
                        raise RuntimeError("the server closed the stream")
                    await send_frame(SILENCE_FRAME)

            await listen(time.perf_counter() + reply_timeout)
            _, greeting, _, _ = playback.take()
            turns: list[TurnResult] = []
            for path, clip in zip(audio_files, clips):
                ulaw = pcm16_to_ulaw(clip)
                ulaw += b"\xff" * (-len(ulaw) % FRAME_BYTES)
                end_frame = max(1, round(speech_end_seconds(clip) / FRAME_SECONDS))
                speech_end_at = time.perf_counter()
                for index in range(len(ulaw) // FRAME_BYTES):
                    sent_at = await send_frame(ulaw[index * FRAME_BYTES : (index + 1) * FRAME_BYTES])
                    if index + 1 == end_frame:
                        speech_end_at = sent_at
                await listen(time.perf_counter() + reply_timeout)
                first_audio_at, audio, marks, underruns = playback.take()
                latency = first_audio_at - speech_end_at if first_audio_at is not None else None
                turns.append(TurnResult(str(path), latency, audio, marks, underruns))
            await send({"event": "stop", "streamSid": stream_sid, "stop": {"accountSid": form["AccountSid"],
                                                                            "callSid": call_sid}})
            await ws.close()
            reader.cancel()
            return CallResult(call_sid, greeting, turns, playback.cleared)
