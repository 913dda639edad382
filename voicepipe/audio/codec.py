"""G.711 mu-law <-> 16-bit PCM with numpy lookup tables (no audioop: it is gone in Python 3.13)."""

from __future__ import annotations

import numpy as np

_BIAS = 0x84


def _build_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _build_encode_table() -> np.ndarray:
    # One entry per 16-bit sample, so encoding is a single fancy-index. Computed on 14-bit magnitudes (with an
    # arithmetic, flooring shift) like the Sun g711.c reference that audioop used, so output is bit-identical.
    samples = np.arange(-32768, 32768, dtype=np.int32)
    shifted = samples >> 2
    negative = shifted < 0
    magnitude = np.minimum(np.where(negative, -shifted, shifted), 8159) + (_BIAS >> 2)
    segment = np.maximum(np.floor(np.log2(magnitude)).astype(np.int32) - 5, 0)
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F)
    code = np.where(segment > 7, 0x7F, code)  # past the last segment: the loudest code
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)


_DECODE = _build_decode_table()
_ENCODE = _build_encode_table()


def ulaw_to_pcm16(data: bytes) -> np.ndarray:
    """Decode mu-law bytes to int16 samples."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)]


def pcm16_to_ulaw(samples: np.ndarray) -> bytes:
    """Encode int16 samples to mu-law bytes."""
    index = samples.astype(np.int32) + 32768
    return _ENCODE[index].tobytes()


def pcm16_to_float(samples: np.ndarray) -> np.ndarray:
    """Convert int16 samples to float32 in [-1, 1), as the models take them."""
    return samples.astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Convert float samples in [-1, 1] to int16, clipping."""
    return (samples.clip(-1.0, 1.0) * 32767.0).astype(np.int16)
