"""The call session's logic with fake engines: speculation, barge-in and what was heard, DTMF, goodbye, faults.

The caller's audio is real recorded speech (JFK) through the real turn detector; transcription, the chat model
and synthesis are fakes, so that each test runs in well under a second and says exactly what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from voicepipe.audio.codec import pcm16_to_ulaw
from voicepipe.config import Settings, load_settings
from voicepipe.conversation import session as session_module
from voicepipe.conversation.events import CallObserver, Observers, TurnTimings
from voicepipe.conversation.phrases import Phrases
from voicepipe.conversation.session import CallSession
from voicepipe.engines.llm import ChatEvent, Message, TextDelta, ToolCall
from voicepipe.engines.models import Models
from voicepipe.engines.stt import Transcript

REPLY = "First sentence is here. The second sentence has quite a few more words in it. Third one ends it."


class FakeTranscriber:
    def __init__(self, *texts: str, fail: bool = False) -> None:
        self.texts = list(texts)
        self.heard: list[int] = []  # samples of each utterance it was given
        self.fail = fail

    def transcribe(self, audio: np.ndarray) -> Transcript:
        self.heard.append(len(audio))
        if self.fail:
            raise RuntimeError("injected STT fault")
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        return Transcript(text, no_speech_prob=0.0, avg_logprob=-0.1, seconds=0.01)


class FakeChat:
    """Streams REPLY word by word; remembers each prompt and whether its stream was cut off."""

    name = "fake"
    saturated = False

    def __init__(self, reply: str = REPLY, extra: list[ChatEvent] | None = None) -> None:
        self.reply = reply
        self.extra = extra or []
        self.prompts: list[list[Message]] = []
        self.finished = 0

    async def stream(self, messages: list[Message], key: str = "") -> AsyncGenerator[ChatEvent, None]:
        self.prompts.append([dict(m) for m in messages])
        for event in self.extra:
            yield event
        for word in self.reply.split(" "):
            await asyncio.sleep(0.005)
            yield TextDelta(word + " ")
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


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings({"VOICEPIPE_MODELS_DIR": str(tmp_path_factory.mktemp("none"))}, env_file=None)


PHRASE_TEXT = {"closing": "Thank you for calling. Goodbye!", "apology": "Sorry, could you say that again?",
               "reprompt": "Are you still there?"}


def make_session(settings: Settings, transcriber: FakeTranscriber, chat: FakeChat | None = None,
                 hang_ups: list[str] | None = None) -> tuple[CallSession, Twilio, Turns]:
    models = Models(transcriber=transcriber, chat=chat or FakeChat(), synthesizer=FakeSynthesizer(),
                    load_seconds={})
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


@pytest.fixture
def clause(jfk_8k: np.ndarray) -> np.ndarray:
    return jfk_8k[: int(2.3 * 8000)]  # "And so my fellow Americans", speech from 0.32 s to 2.24 s


async def test_a_speculative_reply_plays_only_once_the_turn_ends(settings: Settings, clause: np.ndarray) -> None:
    stt = FakeTranscriber("And so my fellow Americans.")
    chat = FakeChat()
    session, twilio, turns = make_session(settings, stt, chat)
    await speak(session, np.concatenate([clause, silence(0.3)]))  # a 200 ms pause: work starts early
    await until(lambda: chat.finished)
    assert len(stt.heard) == 1 and not twilio.events("media")  # transcribed and answered, but nothing sent
    await speak(session, silence(0.4))  # now past the 550 ms end of turn
    await play_reply(session, twilio)
    assert len(stt.heard) == 1  # the speculative transcription was the one used
    assert [m["role"] for m in session.history] == ["system", "user", "assistant"]
    assert session.history[-1]["content"] == REPLY
    (timings,) = turns.finished
    assert timings.speculative and timings.turn == 1 and not timings.interrupted
    assert twilio.marks("t1s1.") and twilio.marks("t1s3.")  # a mark per 200 ms of each sentence
    await session.close()


async def test_speech_after_a_pause_voids_the_speculation(settings: Settings, jfk_8k: np.ndarray) -> None:
    stt = FakeTranscriber("And so my fellow", "And so my fellow Americans, ask not.")
    chat = FakeChat()
    session, twilio, _ = make_session(settings, stt, chat)
    # JFK pauses 0.56 s mid-phrase at 7.64 s (a Paused, then speech again): one turn, not two.
    await speak(session, jfk_8k[int(5.2 * 8000) : int(7.95 * 8000)])
    await until(lambda: chat.prompts)  # the speculative reply is under way...
    assert len(stt.heard) == 1
    await speak(session, np.concatenate([jfk_8k[int(7.95 * 8000) :], silence(1.0)]))  # ...when he goes on
    await play_reply(session, twilio)
    assert len(stt.heard) >= 2 and stt.heard[-1] > stt.heard[0]  # the turn's audio grew past the first pause
    assert [m["role"] for m in session.history].count("user") == 1
    assert session.history[1]["content"] == "And so my fellow Americans, ask not."
    assert chat.prompts[-1][-1]["content"] == "And so my fellow Americans, ask not."
    assert chat.finished == 1  # the voided speculation's stream was stopped
    assert not twilio.marks("t0")  # and nothing of it was played (replies get their turn number at commit)
    await session.close()


async def test_barge_in_clears_and_keeps_only_what_was_heard(
    settings: Settings, clause: np.ndarray, jfk_8k: np.ndarray
) -> None:
    session, twilio, turns = make_session(settings, FakeTranscriber("And so my fellow Americans."))
    await speak(session, np.concatenate([clause, silence(0.7)]))
    for _ in range(300):  # Twilio plays the first sentence whole and 200 ms of the second
        await settle(0.01)
        twilio.play(session, "t1s1.")
        if twilio.marks("t1s2."):
            break
    assert twilio.play(session, "t1s2.", count=1) == 1
    await settle()
    await speak(session, jfk_8k[int(3.2 * 8000) : int(4.0 * 8000)])  # the caller talks over the agent
    assert twilio.events("clear")
    await until(lambda: turns.finished)  # the cut-off reply reports its turn once its tasks have stopped
    second = "The second sentence has quite a few more words in it.".split()
    heard_words = round(len(second) * 200 / 700)  # 200 ms of its ~700 ms (with the 100 ms breath before it)
    assert session.history[-1] == {"role": "assistant",
                                   "content": "First sentence is here. " + " ".join(second[:heard_words]) + "…"}
    assert turns.finished[0].interrupted and turns.finished[0].barge_in is not None
    assert not twilio.marks("t1s3.")  # nothing of the third sentence went out
    await session.close()


async def test_a_short_sound_does_not_interrupt(settings: Settings, clause: np.ndarray, jfk_8k: np.ndarray) -> None:
    session, twilio, _ = make_session(settings, FakeTranscriber("And so my fellow Americans."))
    await speak(session, np.concatenate([clause, silence(0.7)]))
    await until(lambda: twilio.events("media"))
    # Under the 300 ms of voiced speech a barge-in needs ("mm-hm" is shorter).
    await speak(session, np.concatenate([jfk_8k[int(3.2 * 8000) : int(3.5 * 8000)], silence(0.1)]))
    await play_reply(session, twilio)
    assert not twilio.events("clear")
    assert session.history[-1]["content"] == REPLY
    await session.close()


async def test_keys_become_one_typed_turn_and_stop_the_agent(
    settings: Settings, clause: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "DTMF_GAP_SECONDS", 0.05)
    chat = FakeChat()
    session, twilio, _ = make_session(settings, FakeTranscriber("And so my fellow Americans."), chat)
    await speak(session, np.concatenate([clause, silence(0.7)]))
    await until(lambda: twilio.events("media"))
    assert session.agent_speaking
    await session.handle_dtmf("1")
    await session.handle_dtmf("2")
    assert twilio.events("clear")  # the first key stopped the agent
    await until(lambda: len(chat.prompts) == 2)
    await play_reply(session, twilio)
    typed = "(The caller pressed 1 2 on the phone keypad.)"
    assert chat.prompts[-1][-1] == {"role": "user", "content": typed}
    assert [m["content"] for m in session.history if m["role"] == "user"][-1] == typed
    await session.close()


async def test_a_farewell_says_the_closing_line_and_hangs_up(settings: Settings, clause: np.ndarray) -> None:
    hang_ups: list[str] = []
    chat = FakeChat()
    session, twilio, _ = make_session(settings, FakeTranscriber("Okay, bye!"), chat, hang_ups)
    await speak(session, np.concatenate([clause, silence(0.7)]))
    for _ in range(300):
        await settle(0.01)
        twilio.play(session)
        if hang_ups:
            break
    assert hang_ups and session.end_reason == "closing" and not chat.prompts
    assert session.history[-2:] == [{"role": "user", "content": "Okay, bye!"},
                                    {"role": "assistant", "content": PHRASE_TEXT["closing"]}]
    await session.close()


async def test_a_model_fault_is_an_apology(settings: Settings, clause: np.ndarray) -> None:
    session, twilio, turns = make_session(settings, FakeTranscriber("x", fail=True))
    failures: list[str] = []

    class Failures(CallObserver):
        def stage_failed(self, stage: str, error: BaseException) -> None:
            failures.append(stage)

    session.observers.add(Failures())
    await speak(session, np.concatenate([clause, silence(0.3)]))
    await until(lambda: failures)  # the speculative reply fails...
    await speak(session, silence(0.4))  # ...so the ended turn gets a fresh try, which fails too
    await until(lambda: twilio.marks("t1apology."))
    assert twilio.marks("t1apology.")
    assert failures == ["stt", "stt"]  # the failed speculation, then the committed turn's own try
    assert not turns.finished  # no words, so no turn to report
    await session.close()


async def test_a_tool_call_without_tools_is_ignored_and_the_text_still_spoken(
    settings: Settings, clause: np.ndarray
) -> None:
    chat = FakeChat(extra=[ToolCall("call_1", "transfer_call", "{}")])
    session, twilio, _ = make_session(settings, FakeTranscriber("Put me through."), chat)
    await speak(session, np.concatenate([clause, silence(0.7)]))
    await play_reply(session, twilio)
    assert session.history[-1]["content"] == REPLY
    await session.close()


def test_fake_engines_match_the_seams() -> None:
    # The fakes stand in for the real engines only as long as they have the same shape.
    from voicepipe.engines.llm import ChatBackend
    from voicepipe.engines.stt import Transcriber
    from voicepipe.engines.tts import Synthesizer

    chat: ChatBackend = FakeChat()
    stt: Transcriber = FakeTranscriber("x")
    tts: Synthesizer = FakeSynthesizer()
    assert chat and stt and tts and dataclasses.is_dataclass(Transcript) and Path(__file__).exists()
