"""Stateful band-limited resampling (soxr): chunk boundaries leave no clicks, 8 kHz output has no aliasing."""

from __future__ import annotations

import numpy as np
import soxr

from voicepipe.audio.codec import float_to_pcm16, pcm16_to_float


class StreamResampler:
    """Resamples a stream of int16 chunks from one rate to another, keeping filter state between chunks."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample one chunk; pass last=True on the final chunk to flush the filter's tail."""
        return float_to_pcm16(self._stream.resample_chunk(pcm16_to_float(samples), last=last))


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole int16 signal at once."""
    if in_rate == out_rate:
        return samples.astype(np.int16)
    return StreamResampler(in_rate, out_rate).process(samples, last=True)
