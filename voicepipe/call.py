"""One phone call: caller turns in, spoken replies out, with the call's whole conversation kept in context.

Replies start speculatively: when the caller pauses briefly, transcription and the LLM begin on what was
said so far. If the caller goes on speaking, that work is cancelled and nothing of it is sent or kept; if
the pause becomes the end of the turn, the reply is committed and its audio, often ready by then, is sent.

When the caller talks over the agent (barge-in), Twilio's buffer is cleared and the reply cancelled; the
history keeps only what the caller heard, as reported by Twilio's echoed marks (see sender.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from voicepipe.chunker import SentenceChunker
from voicepipe.codec import pcm16_to_ulaw, ulaw_to_pcm16
from voicepipe.config import GOODBYES, PHRASES, Settings
from voicepipe.health import Health
from voicepipe.llm import Message
from voicepipe.models import Models
from voicepipe.protocol import Media
from voicepipe.resample import StreamResampler
from voicepipe.sender import FRAME_BYTES, PacedSender, Send
from voicepipe.turn import Paused, SpeechResumed, SpeechStarted, TurnDetector, TurnEnded
from voicepipe.vad import SileroStream

log = logging.getLogger(__name__)

ULAW_SILENCE = b"\xff"
SENTENCE_GAP = ULAW_SILENCE * (FRAME_BYTES * 5)  # 100 ms between sentences, as a speaker breathes
DTMF_GAP_SECONDS = 1.0  # keys pressed closer together than this are one entry ("1", "2", "3" -> "123")
WATCHDOG_SECONDS = 0.25

HangUp = Callable[[], Awaitable[None]]


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
    barge_in: float | None = None  # caller's speech onset -> `clear` sent, when this reply was cut off

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def prepare_speech(models: Models, text: str) -> bytes:
    """Synthesize a fixed phrase (greeting, reprompt, ...) to whole-frame 8 kHz mu-law, once."""
    pcm = models.synthesizer.synthesize(text)
    audio = StreamResampler(models.synthesizer.sample_rate, 8000).process(pcm, last=True)
    ulaw = pcm16_to_ulaw(audio)
    return ulaw + ULAW_SILENCE * (-len(ulaw) % FRAME_BYTES)


def is_goodbye(text: str, language: str) -> bool:
    """True when the caller's whole turn is a farewell ("Okay, bye!"), not a sentence that mentions one."""
    words = re.sub(r"[^\w\s']", " ", text.lower()).split()
    words = [w for w in words if w not in ("ok", "okay", "well", "then", "thanks", "thank", "you", "vale",
                                            "bueno", "gracias", "pues", "so")]
    return bool(words) and " ".join(words) in GOODBYES[language]


@dataclass
class _Sentence:
    tag: str
    text: str
    ms: int


@dataclass
class _Reply:
    """One attempt at answering one utterance; it may run before it is committed, but sends only after."""

    audio: np.ndarray | None  # None for a typed turn (DTMF)
    speech_end_wall: float
    timings: TurnTimings
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    user_text: str = ""
    sentences: list[_Sentence] = field(default_factory=list)  # sent to Twilio, in order
    assistant_message: Message | None = None  # its entry in the history, revised to what was heard
    remembered: bool = False
    # Set the moment the reply is cut off. Cancelling its tasks takes effect only at their next await, and
    # meanwhile its player must not start another sentence.
    stopped: bool = False
    failed: bool = False

    def stop(self) -> None:
        self.stopped = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class CallSession:
    def __init__(
        self,
        settings: Settings,
        models: Models,
        call_sid: str,
        stream_sid: str,
        send: Send,
        phrases: dict[str, bytes] | None = None,
        on_turn: Callable[[TurnTimings], None] | None = None,
        hang_up: HangUp | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.health = health or Health()
        self.models = models
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.sender = PacedSender(stream_sid, send, settings.playback_lead_ms)
        self._phrases = phrases or {}
        self._on_turn = on_turn
        self._hang_up = hang_up
        self.history: list[Message] = [{"role": "system", "content": settings.system_prompt}]
        silero = SileroStream(models.silero).feed if models.silero is not None else None
        self.detector = TurnDetector(settings.turn, silero)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=250)  # (audio ms, wall time): 5 s at 20 ms
        self._speculative: _Reply | None = None
        self._speaking: _Reply | None = None  # the committed reply, while it is produced or played
        self._tasks: set[asyncio.Task[Any]] = set()
        self._turns = 0  # committed turns; a turn's number (and its audio tags) is given at commit
        self._replies = 0  # replies started, speculative ones included (names their tasks)
        self._barged = False  # the current caller utterance already stopped the agent
        self._speech_onset_ms = 0  # audio time the current caller utterance began
        self._dtmf_digits = ""
        self._dtmf_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._last_activity = time.monotonic()
        self._reprompted = False
        self.ending = False
        self.end_reason = ""  # why the agent ended the call: closing, goodbye (silence), max_duration, shutdown
        self.closed = False

    # -- lifecycle -----------------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Every task of the call is named after it and tracked, so ending the call can end them all."""
        task = asyncio.create_task(coroutine, name=f"call:{self.call_sid}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def begin(self) -> None:
        self._spawn(self._watchdog(), "watchdog")
        greeting = self._phrases.get("greeting")
        if greeting:
            self.history.append({"role": "assistant", "content": self.settings.greeting})
            self._spawn(self.sender.play(greeting, "greeting"), "greeting")

    async def close(self) -> None:
        """End all of the call's work at once: nothing keeps running for a finished call."""
        self.closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def task_names(self) -> list[str]:
        return sorted(t.get_name() for t in self._tasks if not t.done())

    # -- events from Twilio ----------------------------------------------------------------------------

    async def handle_media(self, media: Media) -> None:
        samples = ulaw_to_pcm16(media.payload)
        events = self.detector.feed(samples)
        self._arrivals.append((self.detector.clock_ms, time.perf_counter()))
        if self.ending:
            return
        for event in events:
            if isinstance(event, SpeechStarted):
                self._speech_onset_ms = event.at_ms
                self._barged = False
                self._caller_active()
            elif isinstance(event, Paused) and self.settings.speculative:
                self._cancel_speculative()
                self._speculative = self._start_reply(event.audio, event.speech_end_ms, speculative=True)
            elif isinstance(event, SpeechResumed):
                self._cancel_speculative()
            elif isinstance(event, TurnEnded):
                self._caller_active()
                await self._end_turn(event)
        if (self.detector.in_speech and not self._barged and self.agent_speaking
                and self.detector.voiced_ms >= self.settings.barge_in_ms):
            await self._barge_in()

    def handle_mark(self, name: str) -> None:
        self.sender.on_mark(name)

    async def handle_dtmf(self, digit: str) -> None:
        """Keys reach the model as text once the caller stops pressing; a key also stops the agent."""
        self._caller_active()
        if self.ending:
            return
        if self.agent_speaking:
            await self._barge_in()
        self._dtmf_digits += digit
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        self._dtmf_task = self._spawn(self._dtmf_turn(), "dtmf")

    async def _dtmf_turn(self) -> None:
        await asyncio.sleep(DTMF_GAP_SECONDS)
        digits, self._dtmf_digits = " ".join(self._dtmf_digits), ""
        text = PHRASES[self.settings.language]["dtmf"].format(digits=digits)
        await self._commit(self._start_reply(None, None, speculative=False, typed=text))

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def agent_speaking(self) -> bool:
        """Audio is playing (or about to) on the caller's side."""
        reply = self._speaking
        producing = reply is not None and reply.task is not None and not reply.task.done()
        return producing or self.sender.outstanding_ms > 0

    def _caller_active(self) -> None:
        self._last_activity = time.monotonic()
        self._reprompted = False

    def _wall_time_of(self, audio_ms: int) -> float:
        for clock_ms, wall in self._arrivals:
            if clock_ms >= audio_ms:
                return wall
        return time.perf_counter()

    # -- turns ---------------------------------------------------------------------------------------------

    def _start_reply(
        self, audio: np.ndarray | None, speech_end_ms: int | None, speculative: bool, typed: str = ""
    ) -> _Reply:
        self._replies += 1
        timings = TurnTimings(call_sid=self.call_sid, turn=0, speculative=speculative)
        wall = self._wall_time_of(speech_end_ms) if speech_end_ms is not None else time.perf_counter()
        reply = _Reply(audio=audio, speech_end_wall=wall, timings=timings, user_text=typed)
        reply.task = self._spawn(self._run_reply(reply), f"reply{self._replies}")
        return reply

    def _cancel_speculative(self) -> None:
        if self._speculative is not None:
            self._speculative.stop()
        self._speculative = None

    async def _end_turn(self, event: TurnEnded) -> None:
        reply = self._speculative
        self._speculative = None
        if reply is None or reply.failed:  # a speculation that failed (a model fault) gets one fresh try
            reply = self._start_reply(event.audio, event.speech_end_ms, speculative=False)
        reply.timings.vad_wait = time.perf_counter() - reply.speech_end_wall
        await self._commit(reply)

    async def _commit(self, reply: _Reply) -> None:
        if self.agent_speaking:
            # A whole new turn while the agent talks (it was not cut off yet, e.g. a short turn): stop it.
            await self._barge_in(count=False)
        self._turns += 1
        reply.timings.turn = self._turns
        self._speaking = reply
        reply.committed.set()

    async def _barge_in(self, count: bool = True) -> None:
        """The caller talks over the agent: drop Twilio's queue, stop the reply, keep what was heard."""
        self._barged = True
        cleared_at = time.perf_counter()
        reply = self._speaking
        if reply is not None:
            reply.stop()
        await self.sender.clear()
        if reply is not None:
            reply.timings.interrupted = True
            self._revise_to_heard(reply)
            if count:
                reply.timings.barge_in = cleared_at - self._wall_time_of(self._speech_onset_ms)
        log.info("caller interrupted the agent; cleared")
        log.debug("barge-in at audio %d ms after %d ms of voiced speech", self.detector.clock_ms,
                  self.detector.voiced_ms)

    def _heard_text(self, reply: _Reply) -> str:
        """The reply as far as the caller heard it: whole sentences, then the played share of the last."""
        heard: list[str] = []
        for sentence in reply.sentences:
            played = self.sender.played_ms(sentence.tag)
            if played >= sentence.ms - 40:
                heard.append(sentence.text)
                continue
            words = sentence.text.split()
            share = round(len(words) * played / max(1, sentence.ms))
            if share > 0:
                heard.append(" ".join(words[:share]) + "…")
            break
        return " ".join(heard)

    def _revise_to_heard(self, reply: _Reply) -> None:
        if reply.assistant_message is None:
            return
        heard = self._heard_text(reply)
        if heard:
            reply.assistant_message["content"] = heard
        else:
            self.history.remove(reply.assistant_message)
            reply.assistant_message = None

    async def _run_reply(self, reply: _Reply) -> None:
        try:
            await self._answer(reply)
        except Exception:
            reply.failed = True
            turn = reply.timings.turn
            log.exception("%s failed", f"turn {turn}" if turn else "a speculative reply")
            if reply.committed.is_set() and not reply.stopped and "apology" in self._phrases:
                await self.sender.play(self._phrases["apology"], f"t{reply.timings.turn}apology")
        finally:
            # Interrupted turns are reported too: their timings (barge-in included, set a moment later on
            # the same object) are what /stats and the bench read.
            if reply.committed.is_set():
                self._remember(reply)
                if reply.user_text:
                    log.info("turn timings %s", {k: v for k, v in reply.timings.as_dict().items() if v is not None})
                    if self._on_turn is not None:
                        self._on_turn(reply.timings)

    def _remember(self, reply: _Reply) -> None:
        """Keep the turn in the history: what the caller said and what of the answer was sent (revised to
        what was heard if the caller cuts in later)."""
        if not reply.user_text or reply.remembered:
            return
        reply.remembered = True
        self.history.append({"role": "user", "content": reply.user_text})
        if reply.sentences:
            reply.assistant_message = {"role": "assistant", "content": " ".join(s.text for s in reply.sentences)}
            self.history.append(reply.assistant_message)
            if reply.timings.interrupted:
                self._revise_to_heard(reply)

    async def _answer(self, reply: _Reply) -> None:
        timings = reply.timings
        if reply.audio is not None:
            with self.health.watch("stt"):
                transcript = await asyncio.to_thread(self.models.transcriber.transcribe, reply.audio)
            timings.stt = transcript.seconds
            if not transcript.is_speech:
                log.debug("utterance had no speech (no_speech_prob %.2f)", transcript.no_speech_prob)
                return
            reply.user_text = transcript.text
            log.debug("caller said: %s", transcript.text)
            if is_goodbye(transcript.text, self.settings.language):
                await reply.committed.wait()
                self._remember(reply)
                await self.end_call("closing")
                return
        messages = [*self.history, {"role": "user", "content": reply.user_text}]
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._think(messages, sentences, timings), name=f"call:{self.call_sid}:llm")
            group.create_task(self._speak(reply, sentences), name=f"call:{self.call_sid}:tts")

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
            with self.health.watch("llm"):
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
        """Synthesize sentence after sentence, staying ahead of playback: the next sentence is ready before
        the one playing runs out (the sender holds playback only lead_ms ahead of the caller)."""
        timings = reply.timings
        synthesizer = self.models.synthesizer
        resampler = StreamResampler(synthesizer.sample_rate, 8000)
        ready: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=2)
        player = asyncio.create_task(self._play(reply, ready), name=f"call:{self.call_sid}:play")
        try:
            pending = b""
            while (text := await sentences.get()) is not None:
                started = time.perf_counter()
                with self.health.watch("tts"):
                    pcm = await asyncio.to_thread(synthesizer.synthesize, text)
                if timings.tts_first_audio is None:
                    timings.tts_first_audio = time.perf_counter() - started
                audio = pending + pcm16_to_ulaw(resampler.process(pcm))
                whole = len(audio) - len(audio) % FRAME_BYTES  # whole 20 ms frames; the rest waits
                audio, pending = audio[:whole], audio[whole:]
                await ready.put((text, audio))
            tail = pending + pcm16_to_ulaw(resampler.process(np.zeros(0, dtype=np.int16), last=True))
            await ready.put(("", tail + ULAW_SILENCE * (-len(tail) % FRAME_BYTES)))
            await ready.put(None)
            await player
        finally:
            player.cancel()

    async def _play(self, reply: _Reply, ready: asyncio.Queue[tuple[str, bytes] | None]) -> None:
        timings = reply.timings
        while (item := await ready.get()) is not None:
            text, audio = item
            await reply.committed.wait()
            if reply.stopped:
                return
            if not text:  # the resampler's tail belongs to the last sentence
                if reply.sentences and audio:
                    reply.sentences[-1].ms += len(audio) // 8
                    await self.sender.play(audio, reply.sentences[-1].tag)
                continue
            if reply.sentences:
                audio = SENTENCE_GAP + audio
            if timings.voice_to_voice is None and reply.audio is not None:
                timings.voice_to_voice = time.perf_counter() - reply.speech_end_wall
            sentence = _Sentence(f"t{timings.turn}s{len(reply.sentences) + 1}", text, len(audio) // 8)
            reply.sentences.append(sentence)
            timings.reply_seconds += len(audio) / 8000
            await self.sender.play(audio, sentence.tag)

    # -- silences and the end of the call -----------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Wall-clock duties: reprompt a silent caller, then hang up; end calls that run too long."""
        settings = self.settings
        while not self.closed and not self.ending:
            await asyncio.sleep(WATCHDOG_SECONDS)
            now = time.monotonic()
            if now - self._started >= settings.max_call_s:
                self._spawn(self.end_call("max_duration"), "end")
                return
            if self.agent_speaking or self.detector.in_speech or self._speculative is not None:
                self._last_activity = now
                continue
            idle = now - self._last_activity
            if not self._reprompted and idle >= settings.silence_reprompt_s:
                self._reprompted = True
                self._last_activity = now
                await self._say("reprompt")
            elif self._reprompted and idle >= settings.silence_hangup_s:
                self._spawn(self.end_call("goodbye"), "end")
                return

    async def _say(self, phrase: str) -> None:
        """Speak one of the call's fixed lines and keep it in the history."""
        audio = self._phrases.get(phrase)
        if audio:
            self.history.append({"role": "assistant", "content": PHRASES[self.settings.language][phrase]})
            await self.sender.play(audio, phrase)

    async def end_call(self, phrase: str) -> None:
        """Say the closing line, wait until Twilio reports it played, then hang up."""
        if self.ending:
            return
        self.ending = True
        self.end_reason = phrase
        for reply in (self._speculative, self._speaking):
            if reply is not None:
                reply.stop()
        if self.sender.outstanding_ms:
            await self.sender.clear()
        await self._say(phrase)
        audio_seconds = len(self._phrases.get(phrase, b"")) / 8000
        await self.sender.drain(timeout=audio_seconds + 3.0)
        log.info("call ended by the agent (%s)", phrase)
        if self._hang_up is not None:
            # Shielded: hanging up closes the socket, which ends the call and cancels its tasks, this one too.
            await asyncio.shield(self._hang_up())
