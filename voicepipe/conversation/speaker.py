"""The agent's voice: a reply's sentences synthesized one ahead of playback, paced onto the line, and what the
caller heard of them (Twilio's echoed marks say, to the 200 ms; see telephony/playback.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from voicepipe.audio.codec import pcm16_to_ulaw
from voicepipe.audio.levels import trim_quiet
from voicepipe.audio.resample import StreamResampler
from voicepipe.conversation.events import Observers
from voicepipe.engines.priority import FirstAudioGate
from voicepipe.engines.tts import Synthesizer, synthesize
from voicepipe.telephony.playback import FRAME_BYTES, ULAW_SILENCE, PacedSender

if TYPE_CHECKING:
    from voicepipe.conversation.reply import Reply

SENTENCE_GAP = ULAW_SILENCE * (FRAME_BYTES * 5)  # 100 ms between sentences, as a speaker breathes
ONSET_LEVEL = 104  # -50 dBFS: where a reply's first sound begins (20 ms before it are kept)
# A sentence counts as heard whole when this little of it is unplayed (the last mark's rounding).
HEARD_WHOLE_SLACK_MS = 40


@dataclass
class SpokenSentence:
    tag: str  # the marks of its audio are named after it
    text: str
    ms: int


@dataclass(frozen=True)
class Line:
    """A fixed line, synthesized at start-up (8 kHz mu-law), spoken in a reply's flow (a filler, an apology)."""

    text: str
    audio: bytes


class Speaker:
    def __init__(self, player: PacedSender, synthesizer: Synthesizer, observers: Observers,
                 priority: FirstAudioGate | None = None) -> None:
        self.player = player
        self.synthesizer = synthesizer
        self.observers = observers
        self.priority = priority or FirstAudioGate(enabled=False)

    @property
    def outstanding_ms(self) -> int:
        """Audio sent that the caller has not heard yet."""
        return self.player.outstanding_ms

    async def say(self, audio: bytes, tag: str) -> None:
        """Play ready line audio (a fixed phrase)."""
        await self.player.play(audio, tag)

    async def clear(self) -> None:
        await self.player.clear()

    async def hold(self) -> None:
        await self.player.hold()

    async def resume(self) -> None:
        await self.player.resume()

    @property
    def held(self) -> bool:
        return self.player.held

    async def drain(self, timeout: float) -> None:
        await self.player.drain(timeout)

    def heard(self, sentences: list[SpokenSentence]) -> str:
        """The reply as far as the caller heard it: whole sentences, then the played share of the last."""
        heard: list[str] = []
        for sentence in sentences:
            played = self.player.played_ms(sentence.tag)
            if played >= sentence.ms - HEARD_WHOLE_SLACK_MS:
                heard.append(sentence.text)
                continue
            words = sentence.text.split()
            share = round(len(words) * played / max(1, sentence.ms))
            if share > 0:
                heard.append(" ".join(words[:share]) + "…")
            break
        return " ".join(heard)

    async def speak(self, reply: Reply, sentences: asyncio.Queue[str | Line | None]) -> None:
        """Synthesize sentence after sentence, staying ahead of playback: the next sentence is ready before
        the one playing runs out (the player holds playback only lead_ms ahead of the caller)."""
        timings = reply.timings
        resampler = StreamResampler(self.synthesizer.sample_rate, 8000)
        ready: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=2)
        player = asyncio.create_task(self._play(reply, ready), name=f"call:{timings.call_sid}:play")
        try:
            pending = b""
            while (text := await sentences.get()) is not None:
                if isinstance(text, Line):
                    audio = pending + text.audio
                    whole = len(audio) - len(audio) % FRAME_BYTES
                    audio, pending = audio[:whole], audio[whole:]
                    await ready.put((text.text, audio))
                    continue
                started = time.perf_counter()
                first = timings.tts_first_audio is None
                with self.observers.watch("tts"), self.priority.first_audio() if first else contextlib.nullcontext():
                    pcm = await asyncio.to_thread(synthesize, self.synthesizer, text)
                if first:
                    timings.tts_first_audio = time.perf_counter() - started
                    # Piper opens each sentence with 30-160 ms of near-silence: the caller would wait for it.
                    pcm = trim_quiet(pcm, ONSET_LEVEL, end=False, margin=self.synthesizer.sample_rate // 50)
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

    async def _play(self, reply: Reply, ready: asyncio.Queue[tuple[str, bytes] | None]) -> None:
        timings = reply.timings
        while (item := await ready.get()) is not None:
            text, audio = item
            await reply.wait_for_commit()
            if reply.stopped:
                return
            if not text:  # the resampler's tail belongs to the last sentence
                if reply.sentences and audio:
                    reply.sentences[-1].ms += len(audio) // 8
                    await self.player.play(audio, reply.sentences[-1].tag)
                continue
            if reply.sentences:
                audio = SENTENCE_GAP + audio
            if timings.voice_to_voice is None and reply.audio is not None:
                timings.voice_to_voice = time.perf_counter() - reply.speech_end_wall
            sentence = SpokenSentence(f"t{timings.turn}s{len(reply.sentences) + 1}", text, len(audio) // 8)
            reply.sentences.append(sentence)
            timings.reply_seconds += len(audio) / 8000
            await self.player.play(audio, sentence.tag)
