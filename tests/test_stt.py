"""Transcription on the real whisper model, through the phone path (8 kHz mu-law)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import JFK_TRANSCRIPT, word_error_rate
from voicepipe.codec import pcm16_to_ulaw, ulaw_to_pcm16
from voicepipe.models import Models
from voicepipe.resample import resample
from voicepipe.stt import looks_looped

pytestmark = pytest.mark.models


def phone_line(samples: np.ndarray, rate: int) -> np.ndarray:
    return ulaw_to_pcm16(pcm16_to_ulaw(resample(samples, rate, 8000)))


def test_fixture_sentence(models: Models, jfk_8k: np.ndarray) -> None:
    result = models.transcriber.transcribe(ulaw_to_pcm16(pcm16_to_ulaw(jfk_8k)))
    assert word_error_rate(JFK_TRANSCRIPT, result.text) < 0.1, result.text
    assert result.is_speech


@pytest.mark.parametrize("text", ["What is the capital of France?", "Thank you very much."])
def test_short_questions_at_any_place_in_the_window(models: Models, text: str) -> None:
    # Where the utterance sits (leading silence, trailing silence) once made short windows decode in loops.
    speech = phone_line(models.synthesizer.synthesize(text), models.synthesizer.sample_rate)
    for lead_ms in range(0, 400, 80):
        for tail_ms in (200, 550, 900):
            clip = np.concatenate([np.zeros(lead_ms * 8, np.int16), speech, np.zeros(tail_ms * 8, np.int16)])
            heard = models.transcriber.transcribe(clip).text
            assert word_error_rate(text, heard) <= 0.2, (lead_ms, tail_ms, heard)


def test_silence_is_not_speech(models: Models) -> None:
    assert not models.transcriber.transcribe(np.zeros(8000, dtype=np.int16)).is_speech


def test_loop_detection() -> None:
    assert looks_looped("What is the capital of France? What is the capital of France? What is")
    assert looks_looped("you " * 40)
    assert not looks_looped("And so my fellow Americans, ask not what your country can do for you, "
                            "ask what you can do for your country.")
    assert not looks_looped("No, no, I said the red one.")
