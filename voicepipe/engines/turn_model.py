"""Smart Turn v3.2: an audio model of whether the caller has finished their turn, P(done), from how they sound.

It hears the last 8 s of the utterance at 16 kHz as Whisper-style log-mel features (80 bins x 800 frames). Phone
audio is 8 kHz: it is upsampled first, since the model fed 8 kHz audio does not fail, it silently mis-predicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime
from faster_whisper.feature_extractor import FeatureExtractor

from voicepipe.audio.codec import pcm16_to_float
from voicepipe.audio.resample import resample

MODEL_RATE = 16000
WINDOW_SECONDS = 8
NORMALIZE_EPSILON = 1e-7


class TurnModel(Protocol):
    def probability_done(self, audio_8k: np.ndarray) -> float:
        """P(the speaker has finished their turn) for an utterance of 8 kHz int16 audio."""
        ...


def turn_features(audio_8k: np.ndarray, extractor: FeatureExtractor) -> np.ndarray:
    """The model's input for a phone utterance: (80, 800) log-mel of its last 8 s at 16 kHz, silence before."""
    audio = pcm16_to_float(resample(audio_8k, 8000, MODEL_RATE))[-WINDOW_SECONDS * MODEL_RATE :]
    audio = np.pad(audio, (WINDOW_SECONDS * MODEL_RATE - len(audio), 0))
    audio = (audio - audio.mean()) / np.sqrt(audio.var() + NORMALIZE_EPSILON)
    return np.asarray(extractor(audio, padding=0), dtype=np.float32)


class SmartTurn:
    """The ONNX model loaded once; thread-safe, so calls may ask at the same time. One thread per decision:
    it runs beside the speculative transcription, which needs the other core."""

    def __init__(self, model_path: Path, threads: int = 1, use_cuda: bool = False) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=providers)
        self.extractor = FeatureExtractor(feature_size=80, sampling_rate=MODEL_RATE)

    def probability_done(self, audio_8k: np.ndarray) -> float:
        features = turn_features(audio_8k, self.extractor)[np.newaxis]
        (output,) = self.session.run(None, {"input_features": features})[:1]
        return float(np.asarray(output).reshape(-1)[0])
