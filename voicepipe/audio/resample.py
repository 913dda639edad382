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


class Upsampler2x:
    """8 kHz -> 16 kHz as it arrives: every chunk comes out at once, 2 ms late (a 63-tap low-pass FIR).

    soxr's streams hand out their audio in blocks of ~100 ms, so a speech detector fed through one hears each
    word's onset up to 100 ms late; this filter holds back only its own half length."""

    TAPS = 63

    def __init__(self) -> None:
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        # Cut off at the input's Nyquist (a quarter of the output rate); the Kaiser window (beta 6) keeps the
        # images above it ~60 dB down, with the transition from ~3.5 to ~4.5 kHz, above telephone speech.
        taps = np.sinc(n / 2) * np.kaiser(self.TAPS, 6.0)
        self._taps = (2 * taps / taps.sum()).astype(np.float32)  # x2: zero-stuffing halves the level
        self._history = np.zeros(self.TAPS - 1, dtype=np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """int16 at 8 kHz in, float32 at 16 kHz (full scale 1.0) out, two samples for each one in."""
        stuffed = np.zeros(2 * len(samples), dtype=np.float32)
        stuffed[::2] = pcm16_to_float(samples)
        signal = np.concatenate([self._history, stuffed])
        self._history = signal[len(signal) - len(self._history) :]
        return np.convolve(signal, self._taps, mode="valid")  # float32, as both inputs are
