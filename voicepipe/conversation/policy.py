"""The turn-taking policy: from the caller's audio, when to start a reply early, when the caller's turn is over,
and when the caller is talking over the agent; and, on the wall clock, what to do about a silent caller.

Turn decisions count audio time (20 ms frames), not the wall clock: fed faster than real time, the same audio
gives the same decisions."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voicepipe.audio.turn import (
    Paused,
    Quieted,
    ShortPause,
    SpeechDropped,
    SpeechResumed,
    SpeechStarted,
    TurnDetector,
    TurnEnded,
    TurnSettings,
)


@dataclass(frozen=True)
class CallerStarted:
    onset_ms: int


@dataclass(frozen=True)
class Transcribe:
    """A silence too short yet for a pause: whisper may start on the words so far (Speculate takes them up)."""

    audio: np.ndarray
    speech_end_ms: int


@dataclass(frozen=True)
class Speculate:
    """A short pause: start a reply on what was said so far (it plays only if the turn ends here)."""

    audio: np.ndarray
    speech_end_ms: int


@dataclass(frozen=True)
class DropSpeculation:
    """The caller went on speaking: the speculative reply is void."""


@dataclass(frozen=True)
class CommitTurn:
    audio: np.ndarray
    speech_end_ms: int
    by: str = "silence"  # what ended it: judged (done at a pause), silence, max_silence (a thought left open)


@dataclass(frozen=True)
class FalseStart:
    """What began as speech is, so far, too short for words (a click, a cough; or a first short word)."""

    speech_end_ms: int


Decision = CallerStarted | Transcribe | Speculate | DropSpeculation | CommitTurn | FalseStart


class TurnTaking:
    def __init__(self, turn: TurnSettings, speculative: bool, barge_in_ms: int,
                 speech_probability: Callable[[np.ndarray], float] | None = None, judged: bool = False) -> None:
        """`judged`: the detector's own end of turn (turn.end_of_turn_ms) is the maximum silence, and a judge
        ends turns earlier (commit_if_still_paused, end_at_silence)."""
        self.detector = TurnDetector(turn, speech_probability)
        self.judged = judged
        self._end_at_silence_ms: int | None = None  # this pause ends the turn once it is this long
        self.speculative = speculative
        self.barge_in_ms = barge_in_ms
        self._yielded = False  # the agent already stopped for the current utterance
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=250)  # (audio ms, wall time): 5 s at 20 ms

    @property
    def clock_ms(self) -> int:
        return self.detector.clock_ms

    @property
    def caller_speaking(self) -> bool:
        return self.detector.in_speech

    def wall_time_of(self, audio_ms: int) -> float:
        """When the audio of that moment arrived (latency counts from there)."""
        for clock_ms, wall in self._arrivals:
            if clock_ms >= audio_ms:
                return wall
        return time.perf_counter()

    def hear(self, samples: np.ndarray) -> list[Decision]:
        decisions: list[Decision] = []
        events = self.detector.feed(samples)
        self._arrivals.append((self.detector.clock_ms, time.perf_counter()))
        for event in events:
            if isinstance(event, (SpeechStarted, SpeechResumed, TurnEnded, SpeechDropped)):  # a new moment
                self._end_at_silence_ms = None
            if isinstance(event, SpeechStarted):
                self._yielded = False
                decisions.append(CallerStarted(event.at_ms))
            elif isinstance(event, Quieted):
                if self.speculative:
                    decisions.append(Transcribe(event.audio, event.speech_end_ms))
            elif isinstance(event, Paused):
                if self.speculative:
                    decisions += [DropSpeculation(), Speculate(event.audio, event.speech_end_ms)]
            elif isinstance(event, SpeechResumed):
                decisions.append(DropSpeculation())
            elif isinstance(event, TurnEnded):
                by = "max_silence" if self.judged else "silence"
                decisions.append(CommitTurn(event.audio, event.speech_end_ms, by))
            elif isinstance(event, ShortPause):
                decisions.append(FalseStart(event.speech_end_ms))
        detector = self.detector
        if not detector.in_speech and detector.onset_voiced_ms == 0:
            self._yielded = False  # quiet again: the next sound may hold the agent anew
        if (self._end_at_silence_ms is not None and detector.paused
                and detector.clock_ms - detector.last_voiced_ms >= self._end_at_silence_ms):
            if (ended := detector.end_turn()) is not None:
                decisions.append(CommitTurn(ended.audio, ended.speech_end_ms, "silence"))
            self._end_at_silence_ms = None
        return decisions

    def end_at_silence(self, speech_end_ms: int, silence_ms: int) -> None:
        """The pause after `speech_end_ms` ends the turn once it lasts `silence_ms` (the words could end here,
        though the turn model is not sure); speech before that cancels it."""
        if self._paused_at(speech_end_ms):
            self._end_at_silence_ms = silence_ms

    def no_end_at_silence(self) -> None:
        """Undo end_at_silence: the turn was judged done after all, and commits once its reply can play."""
        self._end_at_silence_ms = None

    def pause_so_far(self, speech_end_ms: int) -> np.ndarray | None:
        """The utterance with the silence after `speech_end_ms` heard so far, or None if the caller spoke since."""
        return self.detector.utterance_so_far() if self._paused_at(speech_end_ms) else None

    def _paused_at(self, speech_end_ms: int) -> bool:
        """Still in the pause that followed `speech_end_ms`."""
        return self.detector.paused and self.detector.last_voiced_ms == speech_end_ms

    def commit_if_still_paused(self, speech_end_ms: int) -> CommitTurn | None:
        """End the turn at the pause after `speech_end_ms` (judged done), unless the caller spoke since."""
        if self.detector.last_voiced_ms != speech_end_ms or (ended := self.detector.end_turn()) is None:
            return None
        self._end_at_silence_ms = None
        return CommitTurn(ended.audio, ended.speech_end_ms, "judged")

    def interrupts(self, agent_speaking: bool) -> bool:
        """The caller talks over the agent: enough voiced speech to hold the agent, once per utterance (whether
        it was an interruption the words decide later). It may come before the detector has started an
        utterance: holding costs the reply nothing, since a false alarm resumes it."""
        return agent_speaking and not self._yielded and self.detector.onset_voiced_ms >= self.barge_in_ms

    def agent_yielded(self) -> None:
        self._yielded = True


class SilenceWatch:
    """Ask a caller who has gone quiet whether they are still there; if they stay quiet, say goodbye; and
    bound the call's length. Returns the phrase to act on: reprompt, goodbye or max_duration."""

    def __init__(self, reprompt_s: float, hangup_s: float, max_call_s: float, now: float) -> None:
        self.reprompt_s, self.hangup_s, self.max_call_s = reprompt_s, hangup_s, max_call_s
        self._started = self._last_activity = now
        self._reprompted = False

    def activity(self, now: float) -> None:
        """The caller did something (spoke, pressed a key)."""
        self._last_activity = now
        self._reprompted = False

    def check(self, now: float, busy: bool) -> str | None:
        """`busy`: someone is talking or a reply is on its way, so the line is not silent."""
        if now - self._started >= self.max_call_s:
            return "max_duration"
        if busy:
            self._last_activity = now
            return None
        idle = now - self._last_activity
        if not self._reprompted and idle >= self.reprompt_s:
            self._reprompted = True
            self._last_activity = now
            return "reprompt"
        if self._reprompted and idle >= self.hangup_s:
            return "goodbye"
        return None
