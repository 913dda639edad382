"""Caller speech for tests and benchmarks: the same text gives the same audio on every run.

English comes from the Piper voice with its sampling turned off (Piper otherwise draws durations and waveform at
random, and a test that passes on one take fails on another); Spanish from espeak-ng (Debian's package). An
utterance with pauses is its parts spoken separately, trimmed of their own edge silence, joined by exact gaps.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile

from voicepipe.audio.levels import trim_quiet
from voicepipe.audio.resample import resample
from voicepipe.simulate import load_audio_8k

RATE = 8000
LEAD_SECONDS = 0.3  # silence before the caller speaks, as on a line


def piper_speech(voice: object, text: str, length_scale: float = 1.0) -> np.ndarray:
    """`text` in the Piper voice (a PiperVoice), deterministic, at 8 kHz; length_scale > 1 speaks slower."""
    from piper import SynthesisConfig

    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, length_scale=length_scale)
    chunks = [c.audio_int16_array for c in voice.synthesize(text, syn_config=config)]  # type: ignore[attr-defined]
    rate = int(voice.config.sample_rate)  # type: ignore[attr-defined]
    return resample(np.concatenate(chunks), rate, RATE)


def espeak_speech(text: str, language: str = "es", words_per_minute: int = 150) -> np.ndarray:
    """`text` spoken by espeak-ng, at 8 kHz."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", language, "-s", str(words_per_minute), "-w", str(path), text], check=True,
                       capture_output=True)
        return load_audio_8k(path)


def with_pauses(parts: Sequence[np.ndarray], gaps: Sequence[float]) -> np.ndarray:
    """Parts joined by silences of exactly `gaps` seconds (one fewer than the parts), after a short lead."""
    pieces = [np.zeros(int(LEAD_SECONDS * RATE), dtype=np.int16)]
    for index, part in enumerate(parts):
        if index:
            pieces.append(np.zeros(int(gaps[index - 1] * RATE), dtype=np.int16))
        pieces.append(trim_quiet(part))  # the synthesizer's own edge silence would lengthen the gaps
    return np.concatenate(pieces)


def write_clip(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(path, samples, RATE)
    return path
