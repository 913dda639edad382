"""Shared fixtures: real speech clips and, for end-to-end tests, the real models loaded once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voicepipe.engines.tts import synthesize
from voicepipe.simulate import load_audio_8k

FIXTURES = Path(__file__).parent / "fixtures"
JFK_TRANSCRIPT = (
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
)


@pytest.fixture(scope="session")
def jfk_8k() -> np.ndarray:
    return load_audio_8k(FIXTURES / "jfk.flac")


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
    """Caller utterances spoken by the real Piper voice, as 22.05 kHz WAV files."""
    import soundfile

    directory = tmp_path_factory.mktemp("speech")
    rate = models.synthesizer.sample_rate
    lead = np.zeros(int(0.3 * rate), dtype=np.int16)
    phrases = {
        "capital": "What is the capital of France?",
        "colour": "What colour is the sky on a clear day?",
        "thanks": "Thank you very much.",
        "first_half": "Could you tell me",
        "second_half": "what the weather is like in Paris?",
        "story": "Please tell me a long story about a brave little dragon and the village it protected.",
        "stop": "I have another question about my account instead.",
        "goodbye": "Okay, goodbye!",
    }
    for name, text in phrases.items():
        soundfile.write(directory / f"{name}.wav", np.concatenate([lead, synthesize(models.synthesizer, text)]), rate)
    # One utterance with a 400 ms hesitation inside: longer than the pause, shorter than the end of turn. Piper
    # adds 30-160 ms of its own near-silence at each end, varying per take; it is cut so the gap is 400 ms.
    first, _ = soundfile.read(directory / "first_half.wav", dtype="int16")
    second, _ = soundfile.read(directory / "second_half.wav", dtype="int16")
    gap = np.zeros(int(0.4 * rate), dtype=np.int16)
    hesitant = np.concatenate([lead, trim_quiet(first), gap, trim_quiet(second)])
    soundfile.write(directory / "hesitant.wav", hesitant, rate)
    return directory


def trim_quiet(samples: np.ndarray, level: int = 328) -> np.ndarray:
    """Cut what lies below -40 dBFS at both ends."""
    loud = np.flatnonzero(np.abs(samples) > level)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples[:0]


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
