"""Text to speech with Piper: one sentence in, int16 PCM at the voice's own rate out."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from piper import PiperVoice


class Synthesizer(Protocol):
    sample_rate: int

    def synthesize(self, text: str) -> np.ndarray: ...


class PiperSynthesizer:
    """A Piper voice loaded once. onnxruntime sessions are thread-safe, so calls may synthesize at once."""

    def __init__(self, model_path: Path, use_cuda: bool = False) -> None:
        config_path = Path(f"{model_path}.json")
        if not config_path.exists():
            raise FileNotFoundError(f"Piper voice config {config_path} is missing (it must sit beside the .onnx)")
        self.voice = PiperVoice.load(model_path, config_path=config_path, use_cuda=use_cuda)
        self.sample_rate = int(self.voice.config.sample_rate)

    def synthesize(self, text: str) -> np.ndarray:
        chunks = [chunk.audio_int16_array for chunk in self.voice.synthesize(text)]
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks)
