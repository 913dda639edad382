"""Speech to text with faster-whisper, encoding a window sized to the utterance instead of a padded 30 s one."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_ctranslate2_storage, get_suppressed_tokens

from voicepipe.audio.codec import pcm16_to_float
from voicepipe.audio.resample import resample

log = logging.getLogger(__name__)

WHISPER_RATE = 16000
# models.md measured it: +1 s of padding keeps WER while cutting encode time 2-2.5x; +0.3 s hurt Spanish.
# The padding is zeros in log-mel space, as whisper's own pad_or_trim does: padding the *audio* with digital
# silence instead made short clips decode in loops ("Hello, how can I help? Hello, how can I...").
PAD_FRAMES = 100  # 10 ms each
# But the window must not be too short. Measured here (tiny.en, 10 short Piper phrases x 12 placements, 8 kHz
# mu-law): utterance + 1 s looped on 20 of 30 placements of one 2 s question; a 10 s minimum window gave
# 3.2% WER at 0.16 s, 15 s 0.8% at 0.22 s, 20 s 0.0% at 0.24 s, the full 30 s 0.3% at 0.49 s.
# Tried again on an AVX2-only CPU, where 15 s saves ~0.1 s: the WER of 116 utterances was no worse, but
# "What colour is the sky on a clear day?" at 6 placements came out wrong at 1 (15 s) and 3 (10 s), never at 20 s.
# 15 s chosen on an AVX-512 AMD CPU (tiny.en on 1 thread, median 154 -> 100 ms a clip; in the server STT 174-191
# -> 137-157 ms, end-of-turn wait 275-293 -> 243-262 ms): mean WER over 460 clips (92 phrases by Piper at 3 rates
# and espeak, 5 placements each) 0.088 against 0.089 at 20 s, no loops; real recordings (7 English, tiny.en; 4
# Spanish, base; 3 placements) 0.110 / 0.067 against 0.106 / 0.081. 10 s: 0.123 and 11 loops on the 460.
MIN_WINDOW_FRAMES = 1500
FULL_WINDOW_FRAMES = 3000
# A decode that loops anyway is redone on the full 30 s window, where the model was trained. Whisper's own
# test (gzip compression ratio > 2.4) misses loops cut short by the token cap, so repeats are checked too.
LOOP_COMPRESSION_RATIO = 2.4
LOOP_MIN_WORDS = 3


def looks_looped(text: str) -> bool:
    """True when a phrase of LOOP_MIN_WORDS or more words is immediately repeated, or the text compresses
    like a loop. People rarely repeat a 3-word phrase back to back; a looping decoder does it every time."""
    if get_compression_ratio(text) > LOOP_COMPRESSION_RATIO:
        return True
    words = [w.strip(".,!?¿¡;:").lower() for w in text.split()]
    for size in range(LOOP_MIN_WORDS, len(words) // 2 + 1):
        for start in range(len(words) - 2 * size + 1):
            if words[start : start + size] == words[start + size : start + 2 * size]:
                return True
    return False
# Past this the short-window path has no room left; whisper's own 30 s path takes over.
MAX_SHORT_WINDOW_SECONDS = 28.0


@dataclass(frozen=True)
class Transcript:
    text: str
    no_speech_prob: float
    avg_logprob: float
    seconds: float  # wall time spent

    @property
    def is_speech(self) -> bool:
        # Whisper's own rule for silent windows: likely no speech and a low-confidence decode.
        if not self.text:
            return False
        return not (self.no_speech_prob > 0.6 and self.avg_logprob < -1.0)


def whisper_input(audio_8k: np.ndarray) -> np.ndarray:
    """Phone-line int16 at 8 kHz -> the float32 16 kHz signal whisper takes."""
    return pcm16_to_float(resample(audio_8k, 8000, WHISPER_RATE))


class Transcriber(Protocol):
    def transcribe(self, audio_8k: np.ndarray) -> Transcript: ...

    @property
    def busy(self) -> bool:
        """Transcribing now, for any call (another transcription would wait for it)."""
        ...


class WhisperTranscriber:
    """Loads one CTranslate2 whisper model; `transcribe` is blocking and safe to call from worker threads."""

    def __init__(
        self,
        model_dir: Path,
        language: str,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
    ) -> None:
        self.model = WhisperModel(str(model_dir), device=device, compute_type=compute_type, cpu_threads=cpu_threads)
        multilingual = self.model.model.is_multilingual
        if not multilingual and language != "en":
            raise ValueError(
                f"VOICEPIPE_LANGUAGE={language} needs a multilingual whisper model, "
                f"but {model_dir} is English-only (set VOICEPIPE_STT_MODEL to a multilingual one)"
            )
        self.language = language
        self.tokenizer = Tokenizer(
            self.model.hf_tokenizer, multilingual, task="transcribe", language=language if multilingual else None
        )
        self._prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self._suppressed = list(get_suppressed_tokens(self.tokenizer, [-1]))
        self._running = 0  # transcriptions under way or queued (CTranslate2 decodes one at a time per worker)
        self._running_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._running > 0

    def transcribe(self, audio_8k: np.ndarray) -> Transcript:
        with self._running_lock:
            self._running += 1
        try:
            return self._transcribe(audio_8k)
        finally:
            with self._running_lock:
                self._running -= 1

    def _transcribe(self, audio_8k: np.ndarray) -> Transcript:
        started = time.perf_counter()
        audio = whisper_input(audio_8k)
        if len(audio) / WHISPER_RATE > MAX_SHORT_WINDOW_SECONDS:
            text, no_speech, logprob = self._transcribe_long(audio)
        else:
            text, no_speech, logprob = self._transcribe_window(audio, short=True)
            if looks_looped(text):
                log.debug("short-window decode looped; decoding again on the full window")
                text, no_speech, logprob = self._transcribe_window(audio, short=False)
        return Transcript(text, no_speech, logprob, time.perf_counter() - started)

    def transcribe_full_window(self, audio_8k: np.ndarray) -> str:
        """Whisper's standard 30 s window: the accuracy reference for the short window (tests, models.md)."""
        audio = whisper_input(audio_8k)
        return self._transcribe_window(audio, short=False)[0]

    def _transcribe_window(self, audio: np.ndarray, short: bool) -> tuple[str, float, float]:
        features = self.model.feature_extractor(audio)
        frames = max(features.shape[-1] + PAD_FRAMES, MIN_WINDOW_FRAMES) if short else FULL_WINDOW_FRAMES
        frames = min(frames + frames % 2, FULL_WINDOW_FRAMES)  # the encoder's first conv has stride 2
        features = np.pad(features[:, :frames], ((0, 0), (0, max(0, frames - features.shape[-1]))))
        features = np.ascontiguousarray(features[None], dtype=np.float32)
        seconds = len(audio) / WHISPER_RATE
        # Bound the decode: a hallucinating model must not loop to 448 tokens on a short clip.
        max_length = min(self.model.max_length, len(self._prompt) + 16 + int(seconds * 8))
        result = self.model.model.generate(
            get_ctranslate2_storage(features),
            [self._prompt],
            beam_size=1,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
        text = self.tokenizer.decode(tokens).strip()
        # CTranslate2 returns the cumulative log-prob normalised by length when length_penalty=1.
        avg_logprob = float(result.scores[0]) if result.scores else 0.0
        return text, float(result.no_speech_prob), avg_logprob

    def _transcribe_long(self, audio: np.ndarray) -> tuple[str, float, float]:
        segments, _info = self.model.transcribe(
            audio,
            language=self.language if self.model.model.is_multilingual else None,
            beam_size=1,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        # The generator is lazy: consuming it here keeps the work in this (worker) thread.
        parts = list(segments)
        text = " ".join(p.text.strip() for p in parts).strip()
        no_speech = min((p.no_speech_prob for p in parts), default=1.0)
        logprob = float(np.mean([p.avg_logprob for p in parts])) if parts else -10.0
        return text, no_speech, logprob
