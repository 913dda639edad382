"""Transcription on the real whisper model, through the phone path (8 kHz mu-law)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import JFK_TRANSCRIPT, word_error_rate
from voicepipe.audio.codec import pcm16_to_ulaw, ulaw_to_pcm16
from voicepipe.audio.resample import resample
from voicepipe.callers import piper_speech
from voicepipe.engines.models import Models
from voicepipe.engines.stt import Transcript, WhisperTranscriber, looks_looped


def phone_line(samples: np.ndarray, rate: int) -> np.ndarray:
    return ulaw_to_pcm16(pcm16_to_ulaw(resample(samples, rate, 8000)))


@pytest.mark.models
def test_fixture_sentence(models: Models, jfk_8k: np.ndarray) -> None:
    result = models.transcriber.transcribe(ulaw_to_pcm16(pcm16_to_ulaw(jfk_8k)))
    assert word_error_rate(JFK_TRANSCRIPT, result.text) < 0.1, result.text
    assert result.is_speech


PHRASES = [
    "What is the capital of France?", "Thank you very much.", "Can you book a table for two at seven?",
    "I would like to speak to a manager.", "What time do you open tomorrow?", "My order has not arrived yet.",
    "Is there parking near the office?", "Please call me back later.", "How much does the basic plan cost?",
    "Yes, that works for me.",
]


@pytest.mark.models
def test_short_phrases_at_any_place_in_the_window(models: Models) -> None:
    # Where a short utterance sits in the encoder window (lead and tail silence) once made the short-window
    # decode loop or drop words; the turn detector hands over utterances with 100-300 ms of lead-in.
    # The speech is Piper's with its sampling off (the same audio on every run: a sampled voice made whisper's
    # homophone slips come and go between runs), at two speaking rates; the bar is whisper's own full 30 s
    # window on the very same clips.
    transcriber = models.transcriber
    assert isinstance(transcriber, WhisperTranscriber)
    short_errors, full_errors = [], []
    for index, text in enumerate(PHRASES):
        voice = models.synthesizer.voice  # type: ignore[attr-defined]
        speech = phone_line(piper_speech(voice, text, length_scale=1.0 + 0.15 * (index % 2)), 8000)
        for lead_ms, tail_ms in ((0, 200), (60, 550), (140, 200), (140, 550), (300, 900)):
            clip = np.concatenate([np.zeros(lead_ms * 8, np.int16), speech, np.zeros(tail_ms * 8, np.int16)])
            heard = transcriber.transcribe(clip).text
            short_errors.append(word_error_rate(text, heard))
            full_window = transcriber.transcribe_full_window(clip)
            full_errors.append(word_error_rate(text, full_window))
            # A loop or dropped words costs far more than one word.
            assert short_errors[-1] <= max(0.25, full_errors[-1]), (text, lead_ms, tail_ms, heard, full_window)
    # At most one word in the 50 clips worse than the full window, and never far from perfect.
    assert np.sum(short_errors) <= np.sum(full_errors) + 0.25, (np.mean(short_errors), np.mean(full_errors))
    assert np.mean(short_errors) <= 0.05


@pytest.mark.models
def test_whisper_says_when_it_is_busy(models: Models, jfk_8k: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    # A call starts whisper ahead of a pause only when it is idle: another transcription would queue behind it.
    transcriber = models.transcriber
    assert isinstance(transcriber, WhisperTranscriber)
    decode = transcriber._transcribe
    seen: list[bool] = []

    def watched(audio: np.ndarray) -> Transcript:
        seen.append(transcriber.busy)
        if len(seen) == 2:
            raise RuntimeError("injected decode fault")
        return decode(audio)

    monkeypatch.setattr(transcriber, "_transcribe", watched)
    assert not transcriber.busy
    assert transcriber.transcribe(jfk_8k[: 3 * 8000]).is_speech
    with pytest.raises(RuntimeError):
        transcriber.transcribe(jfk_8k[: 3 * 8000])
    assert seen == [True, True] and not transcriber.busy  # busy while decoding, idle after (a failure too)


@pytest.mark.models
def test_silence_is_not_speech(models: Models) -> None:
    assert not models.transcriber.transcribe(np.zeros(8000, dtype=np.int16)).is_speech


def test_loop_detection() -> None:
    assert looks_looped("What is the capital of France? What is the capital of France? What is")
    assert looks_looped("you " * 40)
    assert not looks_looped("And so my fellow Americans, ask not what your country can do for you, "
                            "ask what you can do for your country.")
    assert not looks_looped("No, no, I said the red one.")
