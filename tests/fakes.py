"""Fake engines and a fake Twilio for unit tests of the call session: the seams' shapes, none of the models."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence

import numpy as np

from voicepipe.audio.codec import pcm16_to_ulaw
from voicepipe.config import Settings
from voicepipe.conversation.events import CallObserver, Observers, TurnTimings
from voicepipe.conversation.phrases import Phrases
from voicepipe.conversation.session import CallSession
from voicepipe.engines.llm import ChatEvent, CutShort, Message, TextDelta, ToolSpec
from voicepipe.engines.models import Models
from voicepipe.engines.stt import Transcript
from voicepipe.engines.turn_model import TurnModel
from voicepipe.engines.turn_text import TextTurnModel

REPLY = "First sentence is here. The second sentence has quite a few more words in it. Third one ends it."


class FakeTranscriber:
    def __init__(self, *texts: str, fail: bool = False, logprob: float = -0.1, busy: bool = False) -> None:
        self.texts = list(texts)
        self.busy = busy  # another call's transcription runs (it is instant itself)
        self.heard: list[int] = []  # samples of each utterance it was given
        self.fail = fail
        self.logprob = logprob  # how sure of its words it is (average log-probability per token)

    def transcribe(self, audio: np.ndarray) -> Transcript:
        self.heard.append(len(audio))
        if self.fail:
            raise RuntimeError("injected STT fault")
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        return Transcript(text, no_speech_prob=0.0, avg_logprob=self.logprob, seconds=0.01)


class FakeChat:
    """Streams REPLY word by word; remembers each prompt and whether its stream was cut off."""

    name = "fake"
    saturated = False

    def __init__(self, reply: str = REPLY, extra: list[ChatEvent] | None = None, first_delay: float = 0.0,
                 cut_short: bool = False) -> None:
        self.reply = reply
        self.cut_short = cut_short  # the reply stops at the token limit
        self.extra = extra or []
        self.first_delay = first_delay  # seconds before the first word (a slow model)
        self.prompts: list[list[Message]] = []
        self.offered: list[list[str]] = []  # the tools offered with each prompt
        self.finished = 0

    async def stream(self, messages: list[Message], key: str = "", tools: Sequence[ToolSpec] = (),
                     force_tool: str | None = None) -> AsyncGenerator[ChatEvent, None]:
        self.prompts.append([dict(m) for m in messages])
        self.offered.append([tool.name for tool in tools])
        await asyncio.sleep(self.first_delay)
        for event in self.extra:
            yield event
        for word in self.reply.split(" "):
            await asyncio.sleep(0.005)
            yield TextDelta(word + " ")
        if self.cut_short:
            yield CutShort()
        self.finished += 1

    def report(self) -> dict[str, object]:
        return {"backend": self.name}


class FakeSynthesizer:
    """Every sentence is 0.6 s of a tone (at 16 kHz, so the resampler really works)."""

    sample_rate = 16000

    def stream(self, text: str) -> Iterator[np.ndarray]:
        t = np.arange(int(0.6 * self.sample_rate)) / self.sample_rate
        yield (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


class Twilio:
    """Plays Twilio's part: keeps what the session sends; the test echoes marks when it wants audio 'played'."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.echoed: set[str] = set()

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def events(self, kind: str) -> list[dict[str, object]]:
        return [m for m in self.sent if m["event"] == kind]

    def marks(self, prefix: str = "") -> list[str]:
        names = [str(m["mark"]["name"]) for m in self.events("mark")]  # type: ignore[index]
        return [n for n in names if n.startswith(prefix)]

    def play(self, session: CallSession, prefix: str = "", count: int | None = None) -> int:
        """Echo the marks sent so far (those starting with `prefix`, at most `count`) as played."""
        todo = [n for n in self.marks(prefix) if n not in self.echoed][:count]
        for name in todo:
            self.echoed.add(name)
            session.handle_mark(name)
        return len(todo)


class Turns(CallObserver):
    def __init__(self) -> None:
        self.finished: list[TurnTimings] = []

    def turn_finished(self, timings: TurnTimings) -> None:
        self.finished.append(timings)


PHRASE_TEXT = {"closing": "Thank you for calling. Goodbye!", "apology": "Sorry, could you say that again?",
               "reprompt": "Are you still there?"}


def fake_models(transcriber: FakeTranscriber | None = None, chat: FakeChat | None = None) -> Models:
    """Fake engines behind the real Silero VAD (it ships inside faster-whisper): for a server on a real port whose
    test is about the server, not the models."""
    from voicepipe.audio.vad import load_silero

    return Models(transcriber=transcriber or FakeTranscriber("Hello there."), chat=chat or FakeChat(),
                  synthesizer=FakeSynthesizer(), load_seconds={}, silero=load_silero())


def make_session(settings: Settings, transcriber: FakeTranscriber, chat: FakeChat | None = None,
                 hang_ups: list[str] | None = None, turn_model: TurnModel | None = None,
                 text_model: TextTurnModel | None = None) -> tuple[CallSession, Twilio, Turns]:
    """A session on fakes; with `turn_model`, its end of turn is judged at pauses (else a fixed silence), and with
    `text_model` the words are read too."""
    models = Models(transcriber=transcriber, chat=chat or FakeChat(), synthesizer=FakeSynthesizer(),
                    load_seconds={}, turn_model=turn_model, turn_text_model=text_model)
    phrases = Phrases("en", PHRASE_TEXT, {name: b"\xff" * 1600 for name in PHRASE_TEXT},
                      "(The caller pressed {digits} on the phone keypad.)")
    twilio, turns = Twilio(), Turns()

    async def hang_up() -> None:
        if hang_ups is not None:
            hang_ups.append("hung up")

    session = CallSession(settings, models, phrases, "CA" + "0" * 32, "MZ1", twilio.send, Observers([turns]),
                          hang_up)
    return session, twilio, turns


async def speak(session: CallSession, audio: np.ndarray) -> None:
    """Feed 8 kHz audio as Twilio does: 20 ms mu-law messages (faster than real time; decisions use audio time)."""
    ulaw = pcm16_to_ulaw(audio)
    for start in range(0, len(ulaw), 160):
        await session.handle_media(ulaw[start : start + 160])


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 8000), dtype=np.int16)


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the session's tasks run until `condition` holds."""
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out waiting for the session")


async def play_reply(session: CallSession, twilio: Twilio, rounds: int = 300) -> None:
    """Echo marks until the reply has gone out whole (the sender waits for them)."""
    for _ in range(rounds):
        await settle(0.01)
        twilio.play(session)
        if not session.agent_speaking:
            return
    raise AssertionError("the reply never finished playing")


class FakeTurnModel:
    """Says P(done) = `probability` for every utterance (or each of `later` in turn, for the next questions),
    and keeps how long each was."""

    def __init__(self, probability: float, *later: float) -> None:
        self.probabilities = [probability, *later]
        self.heard: list[int] = []

    def probability_done(self, audio_8k: np.ndarray) -> float:
        self.heard.append(len(audio_8k))
        return self.probabilities[min(len(self.heard), len(self.probabilities)) - 1]


class FakeTextTurnModel:
    """Says P(the message ends here) = `probability` for any words, after `delay` seconds (a slow CPU), and keeps
    the words it read."""

    def __init__(self, probability: float, delay: float = 0.0) -> None:
        self.probability = probability
        self.delay = delay
        self.read: list[str] = []

    def probability_done(self, text: str) -> float:
        self.read.append(text)
        time.sleep(self.delay)
        return self.probability
