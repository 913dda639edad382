"""Silero VAD (the v6 model that ships inside faster-whisper) as a per-call, streaming speech probability.

webrtcvad alone is fooled by steady noise (hum, hiss, music, tones); Silero is a neural speech detector that
is not. The model takes 32 ms windows of 16 kHz audio with 64 samples of context and an LSTM state, so each
call keeps its own state and upsamples the 8 kHz line audio (stateful, band-limited, 2 ms late) on the way in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from voicepipe.audio.resample import Upsampler2x

WINDOW = 512  # samples at 16 kHz: 32 ms
CONTEXT = 64


def silero_model_path() -> Path:
    from faster_whisper.utils import get_assets_path

    return Path(get_assets_path()) / "silero_vad_v6.onnx"


def load_silero(path: Path | None = None) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    # One thread: a 32 ms window costs ~0.1 ms, and more threads would only fight the big models for cores.
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(
        str(path or silero_model_path()), providers=["CPUExecutionProvider"], sess_options=options
    )


class SileroStream:
    """Feed 8 kHz int16 audio; `probability` is the speech probability of the latest complete window."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self._session = session
        self._upsampler = Upsampler2x()  # not soxr's stream: it would hold each onset back ~100 ms
        self._pending = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self.probability = 0.0

    def feed(self, samples_8k: np.ndarray) -> float:
        audio = self._upsampler.process(samples_8k)
        self._pending = np.concatenate([self._pending, audio])
        while len(self._pending) >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            batch = np.concatenate([self._context, window])[None, :]
            output, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
            self._context = window[-CONTEXT:]
            self.probability = float(np.asarray(output).reshape(-1)[0])
        return self.probability
