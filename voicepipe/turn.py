"""Caller turn detection on 8 kHz audio: webrtcvad per 20 ms frame, decisions counted in audio time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000


@dataclass(frozen=True)
class TurnSettings:
    vad_aggressiveness: int = 3
    speech_start_ms: int = 120  # voiced audio needed (within speech_window_ms) before a turn starts
    speech_window_ms: int = 200
    pause_ms: int = 200  # a short silence: the transcript can start early
    end_of_turn_ms: int = 550  # the silence that ends the caller's turn
    min_utterance_ms: int = 250  # shorter bursts are clicks or coughs, not turns
    max_utterance_ms: int = 25_000  # whisper's window is 30 s; a monologue is cut here
    preroll_ms: int = 300  # audio kept from before the detected start, so first syllables survive
    min_level_dbfs: float = -55.0  # frames quieter than this never count as speech


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: int


@dataclass(frozen=True)
class Paused:
    """The caller has been silent for pause_ms; `audio` is the utterance so far."""

    audio: np.ndarray
    speech_end_ms: int


@dataclass(frozen=True)
class SpeechResumed:
    at_ms: int


@dataclass(frozen=True)
class TurnEnded:
    audio: np.ndarray  # 8 kHz int16, from pre-roll to the end-of-turn silence
    speech_end_ms: int  # audio time of the last voiced frame


TurnEvent = SpeechStarted | Paused | SpeechResumed | TurnEnded


class TurnDetector:
    """Feed it caller audio in any chunk size; it returns the turn events each chunk produced."""

    def __init__(self, settings: TurnSettings | None = None) -> None:
        self.settings = settings or TurnSettings()
        self._vad = webrtcvad.Vad(self.settings.vad_aggressiveness)
        self._pending = np.zeros(0, dtype=np.int16)
        self._clock_ms = 0
        self._recent: deque[bool] = deque(maxlen=max(1, self.settings.speech_window_ms // FRAME_MS))
        self._preroll: deque[np.ndarray] = deque(maxlen=max(1, self.settings.preroll_ms // FRAME_MS))
        self._utterance: list[np.ndarray] = []
        self._in_speech = False
        self._paused = False
        self._last_voiced_ms = 0
        self._speech_start_ms = 0
        self._min_level = 32768.0 * 10 ** (self.settings.min_level_dbfs / 20)

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def clock_ms(self) -> int:
        """Audio time consumed so far."""
        return self._clock_ms

    def reset(self) -> None:
        """Forget any utterance in progress (e.g. after the agent hung up or took a DTMF turn)."""
        self._utterance = []
        self._in_speech = False
        self._paused = False
        self._recent.clear()

    def feed(self, samples: np.ndarray) -> list[TurnEvent]:
        self._pending = np.concatenate([self._pending, samples.astype(np.int16)])
        events: list[TurnEvent] = []
        while len(self._pending) >= FRAME_SAMPLES:
            frame, self._pending = self._pending[:FRAME_SAMPLES], self._pending[FRAME_SAMPLES:]
            event = self._step(frame)
            if event is not None:
                events.append(event)
        return events

    def _is_voiced(self, frame: np.ndarray) -> bool:
        rms = float(np.sqrt(np.mean(frame.astype(np.float32) ** 2)))
        if rms < self._min_level:
            return False
        return self._vad.is_speech(frame.tobytes(), SAMPLE_RATE)

    def _step(self, frame: np.ndarray) -> TurnEvent | None:
        s = self.settings
        self._clock_ms += FRAME_MS
        voiced = self._is_voiced(frame)
        self._recent.append(voiced)
        if not self._in_speech:
            self._preroll.append(frame)
            if sum(self._recent) * FRAME_MS >= s.speech_start_ms:
                self._in_speech = True
                self._paused = False
                self._utterance = list(self._preroll)
                self._preroll.clear()
                self._last_voiced_ms = self._clock_ms
                # The onset is the first voiced frame in the window, not the start of the pre-roll.
                frames_since_onset = len(self._recent) - list(self._recent).index(True)
                self._speech_start_ms = self._clock_ms - frames_since_onset * FRAME_MS
                return SpeechStarted(at_ms=self._speech_start_ms)
            return None

        self._utterance.append(frame)
        if voiced:
            self._last_voiced_ms = self._clock_ms
            if self._paused:
                self._paused = False
                return SpeechResumed(at_ms=self._clock_ms)
            if self._clock_ms - self._speech_start_ms >= s.max_utterance_ms:
                return self._end_turn()
            return None
        silence_ms = self._clock_ms - self._last_voiced_ms
        if silence_ms >= s.end_of_turn_ms:
            return self._end_turn()
        if silence_ms >= s.pause_ms and not self._paused:
            self._paused = True
            if self._speech_ms() >= s.min_utterance_ms:
                return Paused(audio=np.concatenate(self._utterance), speech_end_ms=self._last_voiced_ms)
        return None

    def _speech_ms(self) -> int:
        return self._last_voiced_ms - self._speech_start_ms

    def _end_turn(self) -> TurnEvent | None:
        audio = np.concatenate(self._utterance)
        long_enough = self._speech_ms() >= self.settings.min_utterance_ms
        self._utterance = []
        self._in_speech = False
        self._paused = False
        self._recent.clear()
        if not long_enough:
            return None
        return TurnEnded(audio=audio, speech_end_ms=self._last_voiced_ms)
