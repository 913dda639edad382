"""Text to speech with Piper: text in, int16 PCM at the voice's own rate out, a piece at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
from piper import PiperVoice


class Synthesizer(Protocol):
    sample_rate: int

    def stream(self, text: str) -> Iterator[np.ndarray]:
        """The speech for `text` as int16 PCM pieces, each yielded as soon as it is synthesized."""
        ...


def synthesize(synthesizer: Synthesizer, text: str) -> np.ndarray:
    """The whole of `text` as one int16 array."""
    pieces = list(synthesizer.stream(text))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


class PiperSynthesizer:
    """A Piper voice loaded once. onnxruntime sessions are thread-safe, so calls may synthesize at once."""

    def __init__(self, model_path: Path, use_cuda: bool = False) -> None:
        config_path = Path(f"{model_path}.json")
        if not config_path.exists():
            raise FileNotFoundError(f"Piper voice config {config_path} is missing (it must sit beside the .onnx)")
        self.voice = PiperVoice.load(model_path, config_path=config_path, use_cuda=use_cuda)
        self.sample_rate = int(self.voice.config.sample_rate)

    def stream(self, text: str) -> Iterator[np.ndarray]:
        """Piper yields one piece per sentence of `text`."""
        for chunk in self.voice.synthesize(text):
            yield chunk.audio_int16_array
