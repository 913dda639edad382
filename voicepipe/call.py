"""One phone call: caller turns in, spoken replies out, with the call's whole conversation kept in context.

Replies start speculatively: when the caller pauses briefly, transcription and the LLM begin on what was
said so far. If the caller goes on speaking, that work is cancelled and nothing of it is sent or kept; if
the pause becomes the end of the turn, the reply is committed and its audio, often ready by then, is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from voicepipe.chunker import SentenceChunker
from voicepipe.codec import pcm16_to_ulaw, ulaw_to_pcm16
from voicepipe.config import Settings
from voicepipe.llm import Message
from voicepipe.models import Models
from voicepipe.protocol import Media, media_message, mark_message, clear_message
from voicepipe.resample import StreamResampler
from voicepipe.turn import Paused, SpeechResumed, SpeechStarted, TurnDetector, TurnEnded

log = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
MESSAGE_FRAMES = 10  # 200 ms per outbound media message
ULAW_SILENCE = b"\xff"
SENTENCE_GAP = ULAW_SILENCE * (FRAME_BYTES * 5)  # 100 ms between sentences, as a speaker breathes

Send = Callable[[str], Awaitable[None]]


@dataclass
class TurnTimings:
    """Seconds, each measured on the server's wall clock; None where the stage did not run."""

    call_sid: str
    turn: int
    speculative: bool = False
    vad_wait: float | None = None  # caller's last voiced frame -> end of turn decided
    stt: float | None = None
    llm_first_token: float | None = None  # from the LLM request
    llm_first_sentence: float | None = None  # from the LLM request
    tts_first_audio: float | None = None  # synthesis of the first sentence
    voice_to_voice: float | None = None  # caller's last voiced frame -> first reply audio sent
    reply_seconds: float = 0.0  # audio sent
    interrupted: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def frames_to_messages(stream_sid: str, ulaw: bytes) -> list[str]:
    """Split whole-frame audio into media messages of MESSAGE_FRAMES frames."""
    size = FRAME_BYTES * MESSAGE_FRAMES
    return [media_message(stream_sid, ulaw[i : i + size]) for i in range(0, len(ulaw), size)]


def prepare_speech(models: Models, text: str) -> bytes:
    """Synthesize a fixed phrase (greeting) to whole-frame 8 kHz mu-law, once."""
    pcm = models.synthesizer.synthesize(text)
    audio = StreamResampler(models.synthesizer.sample_rate, 8000).process(pcm, last=True)
    ulaw = pcm16_to_ulaw(audio)
    return ulaw + ULAW_SILENCE * (-len(ulaw) % FRAME_BYTES)


@dataclass
class _Reply:
    """One attempt at answering one utterance; it may run before it is committed, but sends only after."""

    audio: np.ndarray
    speech_end_wall: float
    timings: TurnTimings
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    user_text: str = ""
    spoken: list[str] = field(default_factory=list)


class CallSession:
    def __init__(
        self,
        settings: Settings,
        models: Models,
        call_sid: str,
        stream_sid: str,
        send: Send,
        greeting: bytes | None = None,
        on_turn: Callable[[TurnTimings], None] | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self._send = send
        self._greeting = greeting
        self._on_turn = on_turn
        self.history: list[Message] = [{"role": "system", "content": settings.system_prompt}]
        self.detector = TurnDetector(settings.turn)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=200)  # (audio ms, wall time): 4 s at 20 ms
        self._speculative: _Reply | None = None
        self._speaking: _Reply | None = None
        self._turns = 0
        self._marks_sent = 0
        self.marks_played: list[str] = []
        self.closed = False

    async def begin(self) -> None:
        if self._greeting:
            self.history.append({"role": "assistant", "content": self.settings.greeting})
            await self._send_audio(self._greeting)
            await self._send_mark("greeting")

    async def handle_media(self, media: Media) -> None:
        samples = ulaw_to_pcm16(media.payload)
        events = self.detector.feed(samples)
        self._arrivals.append((self.detector.clock_ms, time.perf_counter()))
        for event in events:
            if isinstance(event, SpeechStarted):
                log.debug("speech started at %d ms", event.at_ms)
            elif isinstance(event, Paused) and self.settings.speculative:
                self._cancel_speculative()
                self._speculative = self._start_reply(event.audio, event.speech_end_ms, speculative=True)
            elif isinstance(event, SpeechResumed):
                self._cancel_speculative()
            elif isinstance(event, TurnEnded):
                await self._end_turn(event)

    def handle_mark(self, name: str) -> None:
        self.marks_played.append(name)

    def handle_dtmf(self, digit: str) -> None:
        log.debug("DTMF digit received")

    async def close(self) -> None:
        """End all of the call's work: nothing keeps running for a finished call."""
        self.closed = True
        for reply in (self._speculative, self._speaking):
            if reply is not None and reply.task is not None:
                reply.task.cancel()
        for reply in (self._speculative, self._speaking):
            if reply is not None and reply.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reply.task

    # -- turns ---------------------------------------------------------------------------------------

    def _wall_time_of(self, audio_ms: int) -> float:
        for clock_ms, wall in self._arrivals:
            if clock_ms >= audio_ms:
                return wall
        return time.perf_counter()

    def _start_reply(self, audio: np.ndarray, speech_end_ms: int, speculative: bool) -> _Reply:
        self._turns += 1
        timings = TurnTimings(call_sid=self.call_sid, turn=self._turns, speculative=speculative)
        reply = _Reply(audio=audio, speech_end_wall=self._wall_time_of(speech_end_ms), timings=timings)
        reply.task = asyncio.create_task(self._run_reply(reply))
        return reply

    def _cancel_speculative(self) -> None:
        if self._speculative is not None and self._speculative.task is not None:
            self._speculative.task.cancel()
            self._turns -= 1  # it never became a turn
        self._speculative = None

    async def _end_turn(self, event: TurnEnded) -> None:
        reply = self._speculative
        self._speculative = None
        if reply is None:
            reply = self._start_reply(event.audio, event.speech_end_ms, speculative=False)
        reply.timings.vad_wait = time.perf_counter() - reply.speech_end_wall
        if self._speaking is not None and self._speaking.task is not None and not self._speaking.task.done():
            # The caller spoke over the agent: stop talking and answer the new turn.
            self._speaking.timings.interrupted = True
            self._speaking.task.cancel()
            await self._send(clear_message(self.stream_sid))
        self._speaking = reply
        reply.committed.set()

    async def _run_reply(self, reply: _Reply) -> None:
        try:
            await self._answer(reply)
        except asyncio.CancelledError:
            if reply.committed.is_set():
                self._remember(reply)
            raise
        except Exception:
            log.exception("turn %d failed", reply.timings.turn)
        else:
            if reply.committed.is_set():
                self._remember(reply)
        if reply.committed.is_set() and reply.user_text:
            log.info("turn timings %s", {k: v for k, v in reply.timings.as_dict().items() if v is not None})
            if self._on_turn is not None:
                self._on_turn(reply.timings)

    def _remember(self, reply: _Reply) -> None:
        """Keep the turn in the history: what the caller said and what of the answer was sent."""
        if not reply.user_text:
            return
        self.history.append({"role": "user", "content": reply.user_text})
        if reply.spoken:
            self.history.append({"role": "assistant", "content": " ".join(reply.spoken)})

    async def _answer(self, reply: _Reply) -> None:
        timings = reply.timings
        transcript = await asyncio.to_thread(self.models.transcriber.transcribe, reply.audio)
        timings.stt = transcript.seconds
        if not transcript.is_speech:
            log.debug("utterance had no speech (no_speech_prob %.2f)", transcript.no_speech_prob)
            return
        reply.user_text = transcript.text
        log.debug("caller said: %s", transcript.text)
        messages = [*self.history, {"role": "user", "content": transcript.text}]
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._think(messages, sentences, timings))
            group.create_task(self._speak(reply, sentences))

    async def _think(self, messages: list[Message], sentences: asyncio.Queue[str | None], timings: TurnTimings) -> None:
        started = time.perf_counter()
        chunker = SentenceChunker()
        whole_reply: list[str] = []  # without streaming, the reply is spoken in one piece at the end

        def emit(sentence: str) -> None:
            if timings.llm_first_sentence is None:
                timings.llm_first_sentence = time.perf_counter() - started
            if self.settings.streaming:
                sentences.put_nowait(sentence)
            else:
                whole_reply.append(sentence)

        try:
            async for delta in self.models.chat.stream(messages, key=self.call_sid):
                if timings.llm_first_token is None:
                    timings.llm_first_token = time.perf_counter() - started
                for sentence in chunker.push(delta):
                    emit(sentence)
            for sentence in chunker.flush():
                emit(sentence)
            if whole_reply:
                sentences.put_nowait(" ".join(whole_reply))
        finally:
            sentences.put_nowait(None)

    async def _speak(self, reply: _Reply, sentences: asyncio.Queue[str | None]) -> None:
        timings = reply.timings
        synthesizer = self.models.synthesizer
        resampler = StreamResampler(synthesizer.sample_rate, 8000)
        pending = b""
        while (sentence := await sentences.get()) is not None:
            started = time.perf_counter()
            pcm = await asyncio.to_thread(synthesizer.synthesize, sentence)
            if timings.tts_first_audio is None:
                timings.tts_first_audio = time.perf_counter() - started
            audio = pending + pcm16_to_ulaw(resampler.process(pcm))
            whole = len(audio) - len(audio) % FRAME_BYTES
            audio, pending = audio[:whole], audio[whole:]
            await reply.committed.wait()
            if reply.spoken:
                audio = SENTENCE_GAP + audio
            if timings.voice_to_voice is None:
                timings.voice_to_voice = time.perf_counter() - reply.speech_end_wall
            await self._send_audio(audio)
            reply.spoken.append(sentence)
            timings.reply_seconds += len(audio) / 8000
            await self._send_mark(f"t{timings.turn}s{len(reply.spoken)}")
        tail = pending + pcm16_to_ulaw(resampler.process(np.zeros(0, dtype=np.int16), last=True))
        if tail and reply.committed.is_set():
            await self._send_audio(tail + ULAW_SILENCE * (-len(tail) % FRAME_BYTES))

    async def _send_audio(self, ulaw: bytes) -> None:
        for message in frames_to_messages(self.stream_sid, ulaw):
            await self._send(message)

    async def _send_mark(self, name: str) -> None:
        self._marks_sent += 1
        await self._send(mark_message(self.stream_sid, name))
