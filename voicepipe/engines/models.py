"""Load the three models once per process, check their files first, and warm them up before the first call."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicepipe.audio.vad import load_silero
from voicepipe.config import Settings
from voicepipe.engines.llm import ChatBackend, LlamaChat, ToolSpec
from voicepipe.engines.llm_backends import FallbackChat, OpenAIChat
from voicepipe.engines.priority import FirstAudioGate
from voicepipe.engines.stt import Transcriber, WhisperTranscriber
from voicepipe.engines.tts import PiperSynthesizer, Synthesizer, synthesize
from voicepipe.engines.turn_model import SmartTurn, TurnModel
from voicepipe.engines.turn_text import LlamaTextTurn, TextTurnModel

log = logging.getLogger(__name__)


def fetch_command(settings: Settings) -> str:
    preset = "" if settings.language == "en" else f" --preset {settings.language}"
    return f"python scripts/download_models.py{preset}"


class ModelFileError(RuntimeError):
    """A model file is missing or unreadable; the message names it and the command that fetches it."""


@contextlib.contextmanager
def loading(settings: Settings, what: str, path: Path, errors: tuple[type[Exception], ...] = (Exception,),
            ) -> Iterator[None]:
    """Turn a runtime's failure to read a model file (each raises its own kind) into a ModelFileError."""
    try:
        yield
    except errors as exc:
        raise ModelFileError(f"cannot load {what} {path}: {exc}. Re-fetch: {fetch_command(settings)}") from exc


@dataclass
class Models:
    transcriber: Transcriber
    chat: ChatBackend
    synthesizer: Synthesizer
    load_seconds: dict[str, float]
    silero: Any = None  # onnxruntime session of Silero VAD, shared; each call keeps its own state
    device: str = "cpu"
    turn_model: TurnModel | None = None  # judges the end of a turn (None: a fixed silence does)
    turn_text_model: TextTurnModel | None = None  # reads the words at a pause: could the message end there?
    tools_offered: bool = True  # the model is offered tools (VOICEPIPE_LLM_TOOLS; see offers_tools)
    priority: FirstAudioGate = field(default_factory=lambda: FirstAudioGate(enabled=False))


def _require(settings: Settings, path: Path, setting: str, what: str) -> None:
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        raise ModelFileError(f"{what} not found: {path} (from {setting}). Fetch the models with: "
                             f"{fetch_command(settings)}")


def check_model_files(settings: Settings) -> None:
    stt = settings.stt_model_path
    _require(settings, stt, "VOICEPIPE_STT_MODEL", "whisper model directory")
    for name in ("model.bin", "config.json", "tokenizer.json"):
        _require(settings, stt / name, "VOICEPIPE_STT_MODEL", "whisper model file")
    if not settings.uses_llm_server:  # with a fallback server, a missing local model is survivable
        _require(settings, settings.llm_model_path, "VOICEPIPE_LLM_MODEL", "GGUF chat model")
    _require(settings, settings.tts_voice_path, "VOICEPIPE_TTS_VOICE", "Piper voice")
    if settings.turn_model_path is not None:
        _require(settings, settings.turn_model_path, "VOICEPIPE_TURN_MODEL", "end-of-turn model (or set it to off)")
    if settings.turn_model_path is not None and settings.turn_text_model not in ("", "auto"):
        _require(settings, settings.model_path(settings.turn_text_model), "VOICEPIPE_TURN_TEXT_MODEL",
                 "end-of-turn text model (or set it to off)")
    _require(settings, Path(f"{settings.tts_voice_path}.json"), "VOICEPIPE_TTS_VOICE", "Piper voice config")


def gpu_status() -> dict[str, object]:
    """What each model runtime can use here: CUDA devices (CTranslate2), llama.cpp GPU offload, onnxruntime CUDA."""
    import ctranslate2
    import onnxruntime

    try:
        from llama_cpp import llama_supports_gpu_offload

        llama_gpu = bool(llama_supports_gpu_offload())
    except ImportError:
        llama_gpu = False
    return {
        "cuda_devices": ctranslate2.get_cuda_device_count(),
        "llama_gpu_offload": llama_gpu,
        "onnxruntime_cuda": "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
    }


def resolve_device(settings: Settings) -> str:
    """cpu or cuda. auto takes the GPU when CTranslate2 sees one, else says so and stays on the CPU."""
    if settings.device == "cpu":
        return "cpu"
    status = gpu_status()
    if status["cuda_devices"]:
        missing = [name for name in ("llama_gpu_offload", "onnxruntime_cuda") if not status[name]]
        if missing:
            log.warning("GPU found, but %s: those parts stay on the CPU (see Dockerfile.gpu for a GPU build)",
                        " and ".join(missing))
        return "cuda"
    if settings.device == "cuda":
        raise ModelFileError("VOICEPIPE_DEVICE=cuda, but no CUDA device is visible (check the driver, "
                             "`nvidia-smi`, and the container's GPU reservation); use auto or cpu")
    log.info("no usable GPU (no CUDA device visible): running on the CPU")
    return "cpu"


def load_local_chat(settings: Settings, device: str = "cpu") -> LlamaChat:
    _require(settings, settings.llm_model_path, "VOICEPIPE_LLM_MODEL", "GGUF chat model")
    # llama-cpp-python raises ValueError for unreadable GGUF files.
    with loading(settings, "GGUF model", settings.llm_model_path, (ValueError,)):
        chat = LlamaChat(
            settings.llm_model_path,
            n_ctx=settings.llm_context,
            n_threads=settings.llm_threads or None,
            max_tokens=settings.llm_max_tokens,
            temperature=settings.llm_temperature,
            instances=settings.llm_instances,
            n_gpu_layers=-1 if device == "cuda" else 0,  # every layer on the GPU
        )
    chat.warm(settings.system_prompt)
    return chat


def server_chat(settings: Settings) -> OpenAIChat:
    """The OpenAI-compatible server of the settings (OpenAI itself without VOICEPIPE_OPENAI_BASE_URL)."""
    return OpenAIChat(settings.openai_api_key, settings.openai_model, settings.openai_base_url,
                      context=settings.openai_context, max_tokens=settings.llm_max_tokens,
                      temperature=settings.llm_temperature)


def load_chat(settings: Settings, device: str = "cpu") -> ChatBackend:
    """The chat backend VOICEPIPE_LLM_BACKEND asks for."""
    if not settings.uses_llm_server:
        return load_local_chat(settings, device)
    remote = server_chat(settings)
    log.warning("LLM backend %s: conversations are sent to %s", settings.llm_backend, remote.report()["server"])
    if not settings.uses_local_llm:
        return remote
    local: LlamaChat | None = None
    try:
        local = load_local_chat(settings, device)
    except ModelFileError as exc:
        log.error("the local LLM is unavailable, every turn goes to the fallback server: %s", exc)
    return FallbackChat(local, remote, settings.llm_first_token_timeout_s, settings.llm_cooldown_s)


def offers_tools(settings: Settings, chat: ChatBackend) -> bool:
    """VOICEPIPE_LLM_TOOLS=auto: a server's API takes tools; a local GGUF is offered them when its chat template
    has a tool format (a model trained to call them; a tiny one without would only be confused)."""
    if settings.llm_tools != "auto":
        return settings.llm_tools == "on"
    local = chat.primary if isinstance(chat, FallbackChat) else chat
    return not isinstance(local, LlamaChat) or local.knows_tools


def load_models(settings: Settings, tools: Sequence[ToolSpec] = ()) -> Models:
    """Blocking: loads and warms every model (the local LLM with `tools` in its prompt, when they are offered).
    Call from a worker thread inside a server."""
    check_model_files(settings)
    device = resolve_device(settings)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    with loading(settings, "whisper model", settings.stt_model_path, (RuntimeError,)):
        transcriber = WhisperTranscriber(
            settings.stt_model_path, settings.language, device=device,
            compute_type="float16" if device == "cuda" else "int8", cpu_threads=settings.stt_threads,
        )
    transcriber.transcribe(np.zeros(8000, dtype=np.int16))  # first encode allocates buffers
    seconds["stt"] = time.perf_counter() - started

    started = time.perf_counter()
    chat = load_chat(settings, device)
    tools_offered = offers_tools(settings, chat)
    local = chat.primary if isinstance(chat, FallbackChat) else chat
    priority = FirstAudioGate(enabled=device == "cpu")
    if isinstance(local, LlamaChat):
        local.gate = priority
    if tools_offered and tools and isinstance(local, LlamaChat):
        local.warm(settings.system_prompt, tools)
    log.info("tools offered to the model: %s", ", ".join(t.name for t in tools) if tools_offered else
             "none (its chat template has no tool format; VOICEPIPE_LLM_TOOLS=on offers them anyway)")
    seconds["llm"] = time.perf_counter() - started

    started = time.perf_counter()
    with loading(settings, "Piper voice", settings.tts_voice_path):
        synthesizer = PiperSynthesizer(settings.tts_voice_path, use_cuda=device == "cuda")
    synthesize(synthesizer, "Hello.")
    seconds["tts"] = time.perf_counter() - started

    silero = load_silero() if settings.turn.silero_threshold > 0 else None

    turn_model = None
    if settings.turn_model_path is not None:
        started = time.perf_counter()
        with loading(settings, "end-of-turn model", settings.turn_model_path):
            turn_model = SmartTurn(settings.turn_model_path, use_cuda=device == "cuda")
        turn_model.probability_done(np.zeros(8000, dtype=np.int16))  # first run allocates
        seconds["turn"] = time.perf_counter() - started

    turn_text_model = None
    text_model_path = settings.turn_text_model_path(device)
    if turn_model is not None and text_model_path is not None:  # it reads only what the judge hears
        started = time.perf_counter()
        with loading(settings, "end-of-turn text model", text_model_path):
            turn_text_model = LlamaTextTurn(text_model_path, n_gpu_layers=-1 if device == "cuda" else 0)
        turn_text_model.probability_done("Hello.")
        seconds["turn_text"] = time.perf_counter() - started

    log.info("models loaded and warm on %s: %s", device, ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()))
    return Models(transcriber=transcriber, chat=chat, synthesizer=synthesizer, load_seconds=seconds, silero=silero,
                  device=device, turn_model=turn_model, turn_text_model=turn_text_model, tools_offered=tools_offered,
                  priority=priority)
