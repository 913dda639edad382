"""Caller turn detection on 8 kHz audio: webrtcvad per 20 ms frame, decisions counted in audio time."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
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
    # A short silence: the speculative reply and the turn judgment start here. 80 against 100 ms, full bench on
    # an AMD CPU (two runs against one): end-of-turn wait p50 230 and 251 against 264 ms, voice-to-voice 495 and
    # 587 against 545 ms (the machine slowed between the two: STT 148 -> 171 ms), the same 3 cut-ins over 21
    # utterances with pauses; in a 10-turn run every question was still judged done at its first pause
    # (P 0.63-0.99).
    pause_ms: int = 80
    # Whisper starts on the utterance so far after this much silence, ahead of the pause (the reply and the turn
    # judgment still start at pause_ms, with its words if the caller stayed quiet): the transcription is the
    # longest part of the turn decision on a CPU. Shorter silences inside words are common (160 of 20-60 ms in
    # 175 s of the bench's speech, 80 of them >= 40 ms), and each one wastes a transcription. The words barely
    # change with 40 ms less silence (77 of 100 pauses the same, 23 small slips either way). 0: at pause_ms.
    transcribe_ms: int = 40
    end_of_turn_ms: int = 550  # the silence that ends the caller's turn (whatever the turn judge says)
    min_utterance_ms: int = 250  # shorter bursts are clicks or coughs, not turns
    max_utterance_ms: int = 25_000  # whisper's window is 30 s; a monologue is cut here
    preroll_ms: int = 500  # audio kept from before the detected start, so a first short word survives
    min_level_dbfs: float = -55.0  # frames quieter than this never count as speech
    # Silero speech probability a frame also needs: to start speech, and (lower) to go on with it. Measured:
    # steady noise (white, pink, hum, tone) never reached 0.5, while an old, reverberant recording (JFK)
    # dropped below 0.5 mid-phrase; 0.1 kept its phrases whole. 0 turns Silero off.
    silero_threshold: float = 0.5
    silero_continue_threshold: float = 0.1


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: int


@dataclass(frozen=True)
class Paused:
    """The caller has been silent for pause_ms; `audio` is the utterance so far."""

    audio: np.ndarray
    speech_end_ms: int


@dataclass(frozen=True)
class Quieted:
    """The caller has been silent for transcribe_ms (not yet a pause); `audio` is the utterance so far."""

    audio: np.ndarray
    speech_end_ms: int


@dataclass(frozen=True)
class SpeechResumed:
    at_ms: int


@dataclass(frozen=True)
class TurnEnded:
    audio: np.ndarray  # 8 kHz int16, from pre-roll to the end-of-turn silence
    speech_end_ms: int  # audio time of the last voiced frame


@dataclass(frozen=True)
class ShortPause:
    """A pause after too little speech for words so far (a click, a cough, or a first short word: "Okay, ...")."""

    speech_end_ms: int


@dataclass(frozen=True)
class SpeechDropped:
    """The utterance ended too short to be words: no turn."""

    at_ms: int


TurnEvent = SpeechStarted | Quieted | Paused | ShortPause | SpeechResumed | TurnEnded | SpeechDropped


class TurnDetector:
    """Feed it caller audio in any chunk size; it returns the turn events each chunk produced."""

    def __init__(
        self, settings: TurnSettings | None = None, speech_probability: Callable[[np.ndarray], float] | None = None
    ) -> None:
        """`speech_probability` (a SileroStream's feed) must agree with webrtcvad before a frame counts as
        speech: webrtcvad alone takes steady noise for speech."""
        self.settings = settings or TurnSettings()
        self._speech_probability = speech_probability if self.settings.silero_threshold > 0 else None
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
        self.voiced_ms = 0  # voiced audio in the utterance so far (what a barge-in decision weighs)
        self._min_level = 32768.0 * 10 ** (self.settings.min_level_dbfs / 20)

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def paused(self) -> bool:
        """In an utterance, silent for at least pause_ms."""
        return self._in_speech and self._paused

    @property
    def onset_voiced_ms(self) -> int:
        """Voiced audio in the utterance so far, or, before one has started, in the start window."""
        return self.voiced_ms if self._in_speech else sum(self._recent) * FRAME_MS

    @property
    def onset_ms(self) -> int:
        """Audio time of the first voiced frame of the utterance (or of the start window, before one started)."""
        if self._in_speech or not any(self._recent):
            return self._speech_start_ms
        return self._clock_ms - (len(self._recent) - list(self._recent).index(True)) * FRAME_MS

    @property
    def last_voiced_ms(self) -> int:
        return self._last_voiced_ms

    @property
    def clock_ms(self) -> int:
        """Audio time consumed so far."""
        return self._clock_ms

    def utterance_so_far(self) -> np.ndarray:
        """The utterance in progress, with the silence heard after it so far (empty outside one)."""
        return np.concatenate(self._utterance) if self._in_speech and self._utterance else np.zeros(0, np.int16)

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
        # Silero keeps state across frames, so it hears every frame, quiet or not.
        probability = self._speech_probability(frame) if self._speech_probability is not None else 1.0
        rms = float(np.sqrt(np.mean(frame.astype(np.float32) ** 2)))
        threshold = self.settings.silero_continue_threshold if self._in_speech else self.settings.silero_threshold
        if rms < self._min_level or probability < threshold:
            return False
        return bool(self._vad.is_speech(frame.tobytes(), SAMPLE_RATE))

    def _step(self, frame: np.ndarray) -> TurnEvent | None:
        s = self.settings
        self._clock_ms += FRAME_MS
        voiced = self._is_voiced(frame)
        self._recent.append(voiced)
        if not self._in_speech:
            self._preroll.append(frame)
            if sum(self._recent) * FRAME_MS >= s.speech_start_ms:
                # The onset is the first voiced frame in the window, not the start of the pre-roll.
                self._speech_start_ms = self.onset_ms
                self._in_speech = True
                self._paused = False
                self.voiced_ms = sum(self._recent) * FRAME_MS
                self._utterance = list(self._preroll)
                self._preroll.clear()
                self._last_voiced_ms = self._clock_ms
                return SpeechStarted(at_ms=self._speech_start_ms)
            return None

        self._utterance.append(frame)
        if voiced:
            self.voiced_ms += FRAME_MS
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
            if self._speech_ms() < s.min_utterance_ms:
                return ShortPause(speech_end_ms=self._last_voiced_ms)
            return Paused(audio=np.concatenate(self._utterance), speech_end_ms=self._last_voiced_ms)
        if (0 < s.transcribe_ms and silence_ms - FRAME_MS < s.transcribe_ms <= silence_ms < s.pause_ms
                and self._speech_ms() >= s.min_utterance_ms):
            return Quieted(audio=np.concatenate(self._utterance), speech_end_ms=self._last_voiced_ms)
        return None

    def end_turn(self) -> TurnEnded | None:
        """End the utterance now, during a pause (the caller was judged done before the silence ran out)."""
        ended = self._end_turn() if self.paused else None
        return ended if isinstance(ended, TurnEnded) else None

    def _speech_ms(self) -> int:
        return self._last_voiced_ms - self._speech_start_ms

    def _end_turn(self) -> TurnEnded | SpeechDropped:
        audio = np.concatenate(self._utterance)
        long_enough = self._speech_ms() >= self.settings.min_utterance_ms
        self._utterance = []
        self._in_speech = False
        self._paused = False
        self._recent.clear()
        if not long_enough:
            return SpeechDropped(at_ms=self._clock_ms)
        return TurnEnded(audio=audio, speech_end_ms=self._last_voiced_ms)
