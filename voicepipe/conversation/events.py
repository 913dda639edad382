"""What calls report, through one observer path: per-turn timings, model stages that worked or failed, a call's end.

Health (/healthz), metrics (/metrics), the recent-turns list (/stats), call records and tests are all observers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

from voicepipe.engines.llm import Message

log = logging.getLogger(__name__)


@dataclass
class TurnTimings:
    """Seconds, each measured on the server's wall clock; None where the stage did not run."""

    call_sid: str
    turn: int
    speculative: bool = False
    vad_wait: float | None = None  # caller's last voiced frame -> end of turn decided
    # What ended it: judged (done at a pause); silence (the words could end, the turn model was unsure, or there
    # is none: VOICEPIPE_END_OF_TURN_MS); max_silence (a thought left open: VOICEPIPE_MAX_SILENCE_MS); keys.
    end_of_turn: str = ""
    turn_probability: float | None = None  # the turn model's P(done) at the last pause
    turn_cue: str = ""  # why the words kept the turn open at the last pause (a category, no words)
    turn_text_probability: float | None = None  # the text turn model's P(the message ends) at the last pause
    turn_decision: float | None = None  # the pause -> the judgment (the turn model beside the transcription)
    # Pauses of this turn judged its end that the caller then spoke on from. No cut-in here (the reply's audio
    # was not ready yet, so it never played), but on a machine fast enough to have it ready, each would be one.
    judged_early: int = 0
    stt: float | None = None
    # Whisper runs for this turn: one at each pause, and one at each gap between words that it began early
    # (VOICEPIPE_TRANSCRIBE_MS) and the caller spoke on from (CPU spent for nothing).
    stt_runs: int = 0
    llm_first_token: float | None = None  # from the LLM request
    llm_first_sentence: float | None = None  # from the LLM request
    tts_first_audio: float | None = None  # synthesis of the first sentence
    voice_to_voice: float | None = None  # caller's last voiced frame -> first reply audio sent
    reply_seconds: float = 0.0  # audio sent
    interrupted: bool = False  # the caller took the turn while it played: it stopped where they began
    false_alarms: int = 0  # the caller's sound over it held it, was no interruption, and it went on
    # The agent had started this reply when the caller went on speaking within a second of the speech it answers:
    # the turn was taken from someone who was not done (a cut-in).
    cut_in: bool = False
    barge_in: float | None = None  # caller's speech onset -> `clear` sent (the agent held), the last time

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class EndedCall:
    call_sid: str
    # How it ended: caller_hung_up, disconnected, stream_error (the stream), or the agent's reason: closing,
    # goodbye (silence), max_duration, shutdown.
    outcome: str
    history: list[Message] = field(default_factory=list)  # the system prompt first, then what was said

    @property
    def said(self) -> list[Message]:
        return [m for m in self.history if m["role"] != "system"]

    @property
    def caller_turns(self) -> int:
        return sum(m["role"] == "user" for m in self.history)


class CallObserver:
    """Receives what calls report. Override the methods you need; the others do nothing."""

    def turn_finished(self, timings: TurnTimings) -> None:
        """A committed turn is over (answered, failed or interrupted)."""

    def stage_succeeded(self, stage: str) -> None:
        """A model stage (stt, llm, tts) did its part of a turn."""

    def stage_failed(self, stage: str, error: BaseException) -> None:
        """A model stage raised (a cancellation is not a failure)."""

    def call_ended(self, call: EndedCall) -> None:
        """The call's stream closed and all of its work has stopped."""


class Observers(CallObserver):
    """Hands every report to each observer in turn; an observer that raises is logged and skipped, never
    allowed to break the call that reported."""

    def __init__(self, observers: Iterable[CallObserver] = ()) -> None:
        self._observers = list(observers)

    def add(self, observer: CallObserver) -> None:
        self._observers.append(observer)

    def _each(self, method: str, *args: object) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(*args)
            except Exception:
                log.exception("call observer %s.%s failed", type(observer).__name__, method)

    def turn_finished(self, timings: TurnTimings) -> None:
        self._each("turn_finished", timings)

    def stage_succeeded(self, stage: str) -> None:
        self._each("stage_succeeded", stage)

    def stage_failed(self, stage: str, error: BaseException) -> None:
        self._each("stage_failed", stage, error)

    def call_ended(self, call: EndedCall) -> None:
        self._each("call_ended", call)

    @contextlib.contextmanager
    def watch(self, stage: str) -> Iterator[None]:
        """Report the block as one success or failure of `stage`."""
        try:
            yield
        except Exception as exc:
            self.stage_failed(stage, exc)
            raise
        self.stage_succeeded(stage)
