"""Where the sound is: trimming the near-silence a synthesizer (or a recording) leaves at its edges, and how loud
the loudest moment of a stretch of speech is."""

from __future__ import annotations

import numpy as np

QUIET_LEVEL = 328  # -40 dBFS of int16: below this an edge is the synthesizer's own silence, not speech


def trim_quiet(samples: np.ndarray, level: int = QUIET_LEVEL, end: bool = True, margin: int = 0) -> np.ndarray:
    """Cut what lies below `level` at the start (and, with `end`, at the end), keeping `margin` samples of it
    before the sound (a soft onset rises from below the level)."""
    loud = np.flatnonzero(np.abs(samples) > level)
    if not loud.size:
        return samples[:0]
    return samples[max(0, loud[0] - margin) : loud[-1] + 1 if end else len(samples)]


def peak_frame_rms(samples: np.ndarray, frame: int = 160) -> float:
    """The RMS of the loudest 20 ms frame (at 8 kHz); 0 for less than a frame."""
    whole = len(samples) - len(samples) % frame
    if not whole:
        return 0.0
    frames = samples[:whole].astype(np.float32).reshape(-1, frame)
    return float(np.sqrt(np.mean(frames**2, axis=1)).max())
