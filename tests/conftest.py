"""Shared fixtures: real speech clips and, for end-to-end tests, the real models loaded once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voicepipe.callers import piper_speech, with_pauses, write_clip
from voicepipe.simulate import load_audio_8k

FIXTURES = Path(__file__).parent / "fixtures"
JFK_TRANSCRIPT = (
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
)


@pytest.fixture(scope="session")
def jfk_8k() -> np.ndarray:
    return load_audio_8k(FIXTURES / "jfk.flac")


@pytest.fixture
def jfk_clause(jfk_8k: np.ndarray) -> np.ndarray:
    """ "And so my fellow Americans": speech from 0.32 s to 2.24 s, then a 1 s pause."""
    return jfk_8k[: int(2.3 * 8000)]


@pytest.fixture(scope="session")
def unit_settings(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Default settings pointing at no model files: for unit tests on fake engines."""
    from voicepipe.config import load_settings

    return load_settings({"VOICEPIPE_MODELS_DIR": str(tmp_path_factory.mktemp("no-models"))}, env_file=None)


def words(text: str) -> list[str]:
    text = text.replace("'", "").replace("’", "")  # "they're" is one word, as the reference counts it
    return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    distance = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, distance[0] = distance[0], i
        for j, h in enumerate(hyp, 1):
            previous, distance[j] = distance[j], min(distance[j] + 1, distance[j - 1] + 1, previous + (r != h))
    return distance[len(hyp)] / max(1, len(ref))


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from voicepipe.config import load_settings

    return load_settings({"VOICEPIPE_MODELS_DIR": str(Path(__file__).parent.parent / "models"),
                          "VOICEPIPE_DATA_DIR": str(tmp_path_factory.mktemp("data"))}, env_file=None)


@pytest.fixture(scope="session")
def models(base_settings):  # type: ignore[no-untyped-def]
    """The real default models (fetched by `make setup`), loaded once for all end-to-end tests."""
    from voicepipe.engines.models import load_models

    return load_models(base_settings)


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory, models) -> Path:  # type: ignore[no-untyped-def]
    """Caller utterances in the real Piper voice, the same audio on every run (sampling off), as 8 kHz WAV files."""
    directory = tmp_path_factory.mktemp("speech")
    voice = models.synthesizer.voice
    phrases = {
        "capital": "What is the capital of France?",
        "colour": "What colour is the sky on a clear day?",
        "thanks": "Thank you very much.",
        "story": "Please tell me a long story about a brave little dragon and the village it protected.",
        "stop": "I have another question about my account instead.",
        "goodbye": "Okay, goodbye!",
    }
    for name, text in phrases.items():
        write_clip(directory / f"{name}.wav", with_pauses([piper_speech(voice, text)], []))
    # A 400 ms hesitation inside: longer than the 200 ms pause, shorter than a fixed 700 ms end of turn.
    parts = [piper_speech(voice, "Could you tell me"), piper_speech(voice, "what the weather is like in Paris?")]
    write_clip(directory / "hesitant.wav", with_pauses(parts, [0.4]))
    return directory


def make_noises(seconds: float = 2.0, rate: int = 8000) -> dict[str, np.ndarray]:
    """Steady noises that are not speech: none of them may start a turn."""
    rng = np.random.default_rng(7)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    white = rng.standard_normal(n)
    pink = np.cumsum(rng.standard_normal(n))  # brown-ish; high-passed below into a pink-like slope
    pink = pink - np.convolve(pink, np.ones(64) / 64, mode="same")
    hum = np.sin(2 * np.pi * 60 * t) + 0.5 * np.sin(2 * np.pi * 180 * t) + 0.3 * np.sin(2 * np.pi * 300 * t)
    tone = np.sin(2 * np.pi * 1000 * t)
    noises = {"white": white, "pink": pink, "hum": hum, "tone": tone}
    return {name: (0.1 * x / np.max(np.abs(x)) * 32767).astype(np.int16) for name, x in noises.items()}  # -20 dBFS peak


SPANISH = {
    "cita": "Necesito cambiar mi cita con el médico para el próximo lunes por la mañana.",
    "mesa": "Buenos días, quiero reservar una mesa para dos personas esta noche a las nueve.",
    "capital": "¿Cuál es la capital de Francia?",
    "gracias": "Muchas gracias por su ayuda.",
}


@pytest.fixture(scope="session")
def spanish_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Spanish utterances spoken by espeak-ng (Debian's espeak-ng package; `make test` installs it)."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: `make test` installs it, or: sudo apt-get install espeak-ng")
    directory = tmp_path_factory.mktemp("spanish")
    for name, text in SPANISH.items():
        subprocess.run(["espeak-ng", "-v", "es", "-s", "130", "-w", str(directory / f"{name}.wav"), text], check=True)
    return directory
