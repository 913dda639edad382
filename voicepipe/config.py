"""Settings from environment variables and a .env file; bad values fail at start-up naming the setting."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from voicepipe.audio.turn import TurnSettings

LANGUAGES = ("en", "es")
# VOICEPIPE_LLM_BACKEND, decided here once: (the local GGUF model answers, an OpenAI-compatible server answers).
LLM_BACKENDS = {"local": (True, False), "openai": (False, True), "local+openai": (True, True)}
DEVICES = ("auto", "cpu", "cuda")

DEFAULT_SYSTEM_PROMPTS = {
    "en": (
        "You are a friendly assistant on a phone call. Answer in one or two short spoken sentences. "
        "Use plain words: no lists, no markdown, no emoji."
    ),
    "es": (
        "Eres un asistente amable en una llamada telefónica. Responde en español con una o dos frases "
        "cortas y habladas. Usa palabras sencillas: sin listas, sin markdown, sin emojis."
    ),
}
BUSY_MESSAGES = {
    "en": "Sorry, all our lines are busy right now. Please call again in a few minutes.",
    "es": "Lo sentimos, todas nuestras líneas están ocupadas en este momento. Por favor, llame de nuevo en unos minutos.",
}
# Twilio <Say> language codes: the default per language, and the region variants accepted.
SAY_LANGUAGES = {"en": "en-US", "es": "es-ES"}
SAY_REGIONS = ("en-US", "en-GB", "en-AU", "en-IN", "es-ES", "es-MX", "es-US")
# Twilio <Say> voices (Amazon Polly) per region; VOICEPIPE_SAY_VOICE overrides.
SAY_VOICES = {"en-US": "Polly.Joanna", "en-GB": "Polly.Amy", "en-AU": "Polly.Nicole", "en-IN": "Polly.Aditi",
              "es-ES": "Polly.Lucia", "es-MX": "Polly.Mia", "es-US": "Polly.Lupe"}
# Model files per language (under the models dir): English from PyPI (works offline); Spanish from
# `download_models.py --preset es` (the hub; the multilingual whisper also comes from PyPI).
DEFAULT_MODELS = {
    "en": ("whisper-tiny.en", "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
           "piper-en_US-joe-medium/en_US-joe-medium.onnx"),
    "es": ("whisper-base", "qwen2.5-1.5b-instruct/qwen2.5-1.5b-instruct-q4_k_m.gguf",
           "piper-es_ES-davefx-medium/es_ES-davefx-medium.onnx"),
}
# Spoken lines, written natively per language.
PHRASES = {
    "en": {
        "reprompt": "Are you still there?",
        "goodbye": "It seems you're busy. Goodbye!",
        "closing": "Thank you for calling. Goodbye!",
        "max_duration": "We have reached the time limit for this call. Thank you, goodbye!",
        "apology": "Sorry, I had a problem there. Could you say that again?",
        "shutdown": "Sorry, I have to end this call now. Please call again later. Goodbye!",
        "dtmf": "(The caller pressed {digits} on the phone keypad.)",
        "transfer": "Let me put you through to a person. One moment, please.",
        "transfer_failed": "Sorry, I can't put you through right now.",
        "wait": "One moment.",
        "tool_failed": "Sorry, I couldn't get that information right now.",
    },
    "es": {
        "reprompt": "¿Sigue ahí?",
        "goodbye": "Parece que está ocupado. ¡Hasta luego!",
        "closing": "Gracias por llamar. ¡Adiós!",
        "max_duration": "Hemos llegado al tiempo máximo de esta llamada. Gracias, ¡adiós!",
        "apology": "Perdone, he tenido un problema. ¿Puede repetirlo?",
        "shutdown": "Lo siento, tengo que terminar la llamada. Por favor, llame más tarde. ¡Adiós!",
        "dtmf": "(La persona que llama pulsó {digits} en el teclado del teléfono.)",
        "transfer": "Le paso con una persona. Un momento, por favor.",
        "transfer_failed": "Lo siento, ahora mismo no puedo pasarle con nadie.",
        "wait": "Un momento.",
        "tool_failed": "Lo siento, ahora mismo no puedo consultar esa información.",
    },
}
# A caller's turn made only of these ends the call (after the closing line). Hyphens count as spaces (whisper
# writes both "goodbye" and "good-bye"); fillers such as "okay" and "thanks" are ignored (see call.is_goodbye).
GOODBYES = {
    "en": ("goodbye", "good bye", "bye", "bye bye", "that's all", "that is all"),
    "es": ("adiós", "adios", "hasta luego", "chao", "chau", "hasta pronto", "eso es todo"),
}
DEFAULT_TURN_MODEL = "smart-turn-v3.2/smart-turn-v3.2-cpu.onnx"  # under the models dir; every language
DEFAULT_TURN_TEXT_MODEL = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"  # a ChatML GGUF model
DEFAULT_VOICEMAIL = {  # left on an answering machine by a conversation call (voicepipe call --detect-machine)
    "en": "Hello, this is an automated call. Please call us back when you can. Goodbye!",
    "es": "Hola, le llamamos de forma automática. Por favor, devuélvanos la llamada cuando pueda. ¡Adiós!",
}
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
DEFAULT_GREETINGS = {
    "en": "Hello! How can I help you today?",
    "es": "¡Hola! ¿En qué puedo ayudarle hoy?",
}


class ConfigError(ValueError):
    """A setting has a value voicepipe cannot use; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    # Names kept from the original Flask version, so existing .env files still work.
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_phone_number: str = ""
    to_phone_number: str = ""
    openai_api_key: str = ""
    webhook_url: str = ""
    # voicepipe's own settings (VOICEPIPE_*).
    host: str = "127.0.0.1"
    port: int = 5000
    models_dir: Path = Path("models")
    stt_model: str = "whisper-tiny.en"
    llm_model: str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
    tts_voice: str = "piper-en_US-joe-medium/en_US-joe-medium.onnx"
    language: str = "en"
    say_language: str = "en-US"  # Twilio <Say> language (VOICEPIPE_LANGUAGE's region, e.g. es-MX)
    say_voice: str = "Polly.Joanna"
    twilio_api_url: str = ""  # empty: Twilio's own API; else another base URL (a regional edge, a test server)
    data_dir: Path = Path("data")  # call records (SQLite)
    transcripts: bool = False  # store what was said in the call records (never leaves the machine)
    system_prompt: str = DEFAULT_SYSTEM_PROMPTS["en"]
    greeting: str = DEFAULT_GREETINGS["en"]
    llm_context: int = 2048
    llm_max_tokens: int = 120
    llm_temperature: float = 0.4
    llm_threads: int = 0  # 0: llama.cpp's own choice
    stt_threads: int = 0
    llm_instances: int = 2  # llama.cpp copies of the model, so calls can generate at the same time
    llm_backend: str = "local"  # local | openai | local+openai: ask uses_local_llm / uses_llm_server, not the name
    openai_base_url: str = ""  # any OpenAI-compatible server (vLLM, llama.cpp server, Ollama); empty: OpenAI
    openai_model: str = "gpt-4o-mini"
    openai_context: int = 8192  # tokens the server's model takes; older turns are dropped to fit
    llm_first_token_timeout_s: float = 2.0  # local+openai: no first token by then -> the fallback answers
    llm_cooldown_s: float = 60.0  # local+openai: after a local failure, the fallback answers this long
    max_calls: int = 4  # above this, /voice answers "lines busy" instead of a stream that would stutter
    speculative: bool = True  # start STT and the LLM at a short pause, before the end of the turn
    streaming: bool = True  # speak sentence by sentence while the LLM goes on (False: whole reply at once)
    # The end of a turn, judged at each pause by the turn model (Smart Turn) and the words so far; a turn it
    # keeps open still ends after max_silence_ms. Without a turn model: a fixed silence (turn.end_of_turn_ms).
    turn_model: str = DEFAULT_TURN_MODEL
    turn_threshold: float = 0.5  # Smart Turn's P(done) that ends a turn (when the words do not say otherwise)
    max_silence_ms: int = 2000
    # When the model was unsure at the pause and the words are complete, it is asked again once the silence is
    # this long: it grows surer with more silence (measured: three complete questions at P 0.28-0.42 after
    # 100 ms of silence were at 0.91-0.97 after 300 ms). 0: not asked again (the turn ends at turn.end_of_turn_ms).
    turn_recheck_ms: int = 300
    # Words whisper was unsure of (average log-probability per token below turn_min_logprob) cannot say whether
    # a thought is finished: it hears a dangling word as another ("Llamo por la factura del" as "...factura
    # mail", -0.58), and the turn model, hearing only a sound, called that fragment done (P 0.96). Such a turn
    # ends after unsure_words_ms of silence, longer than the pauses people make mid-sentence (up to ~1 s).
    # Measured on 103 pauses of scripts/bench.py's utterances (mu-law): the fragments the agent talked over at
    # -0.58 to -1.12; 29 of the 33 complete turns of real recorded speech and of Piper at -0.06 to -0.40 (the 4
    # others end in numbers, kept open anyway). In the server the same fragment scores by what came before it
    # on the line: "factura mail" was -0.49 there (a cut-in at -0.5), so the line sits mid-gap, at -0.45.
    # espeak's Spanish, which whisper-base hears poorly (-0.47 to -0.88 complete), waits the longer silence.
    # 0: always trust the words.
    turn_min_logprob: float = -0.45
    unsure_words_ms: int = 1200
    # Words no other cue keeps open are read by a small chat model (engines/turn_text.py): below this probability
    # that the message ends there, they read unfinished and the turn ends at unsure_words_ms of silence too.
    # Measured (SmolLM2-135M, whisper's words as heard at the pauses of scripts/bench.py's utterances and
    # recordings, and 31 complete turns): fragments 0.000-0.020 ("I'd like to order a large" 0.000, "My name is"
    # 0.008, "Mi nombre es" 0.017), the least likely complete turn 0.054 ("Can I change my reservation?"). But
    # short questions that could go on read as low: "Is this a good time to talk?" 0.025, "Is this a good
    # time?" 0.017 (they then wait unsure_words_ms): no threshold separates all of them from the fragments.
    # Fragments that read as whole sentences are its blind spot ("I want to cancel my subscription" 0.23).
    # "auto": asked where the models run on a GPU (a few ms there), where the reply is ready so soon after a pause
    # that only the decision keeps the agent from talking over a caller who goes on. On a CPU it comes on top of
    # every end-of-turn decision (one core of an AVX-512 EPYC: 14-51 ms at an utterance's first pause, 31-86 ms
    # at its later ones), while the reply, slower than most mid-sentence pauses, already waits for them (a turn
    # commits only once its audio is ready). Measured there, `on` (two runs) against off, full bench: voice-to-
    # voice p50 773 and 827 against 772 ms, end-of-turn wait 371 and 384 against 302 ms, the LLM's first token
    # 161-165 against 114 ms (the reading takes a core the prompt needs); 0 cut-ins either way, pauses judged
    # too early 2 against 3 of 21.
    turn_text_model: str = "auto"
    turn_text_threshold: float = 0.03
    barge_in_ms: int = 80  # voiced caller speech over the agent that holds it (its words then decide)
    playback_lead_ms: int = 400  # how far ahead of Twilio's playback we send audio
    silence_reprompt_s: float = 10.0  # caller silent this long: "are you still there?"
    silence_hangup_s: float = 10.0  # and this long again after the reprompt: goodbye and hang up
    max_call_s: float = 900.0
    # Without TWILIO_AUTH_TOKEN, serve requests from anywhere: beyond loopback, through WEBHOOK_URL's tunnel, with
    # forwarding headers. Anyone who finds the URL can then run the models and hold every call slot.
    unsafe_allow_unsigned: bool = False
    shutdown_grace_s: float = 30.0  # on SIGTERM, active calls get this long before the agent says goodbye
    turn: TurnSettings = field(default_factory=TurnSettings)
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (one JSON object per line, call_sid included)
    device: str = "auto"  # auto | cpu | cuda: where whisper, llama.cpp and Piper run
    metrics_token: str = ""  # when set, /metrics and /stats need "Authorization: Bearer <token>"
    tools_file: Path | None = None  # the operator's HTTP tools (YAML or JSON); None: only the built-in ones
    # Where transfer_call may send a caller: (name, E.164 number) pairs; "default" is VOICEPIPE_TRANSFER_NUMBER.
    # Empty: the model is not offered transfer_call.
    transfer_destinations: tuple[tuple[str, str], ...] = ()
    voicemail_message: str = DEFAULT_VOICEMAIL["en"]
    llm_tools: str = "auto"  # auto | on | off: offer the model tools (auto: if its API or chat template has them)
    redis_url: str = ""  # stream tokens shared by several nodes (any node accepts any token); empty: in memory
    database_url: str = ""  # call records in PostgreSQL, shared by several nodes; empty: SQLite in data_dir
    node_name: str = ""  # this node, in shared records: it closes its own calls after a crash (hostname:port)

    def model_path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.models_dir / path

    @property
    def uses_local_llm(self) -> bool:
        """The GGUF model answers in process (alone, or first with the server as fallback)."""
        return LLM_BACKENDS[self.llm_backend][0]

    @property
    def uses_llm_server(self) -> bool:
        """An OpenAI-compatible server answers (always, or when the local model cannot): call content leaves."""
        return LLM_BACKENDS[self.llm_backend][1]

    @property
    def turn_model_path(self) -> Path | None:
        return self.model_path(self.turn_model) if self.turn_model else None

    def turn_text_model_path(self, device: str) -> Path | None:
        """The end-of-turn text model for models on `device` ("auto": the default one on a GPU only)."""
        name = self.turn_text_model
        if name == "auto":
            name = DEFAULT_TURN_TEXT_MODEL if device == "cuda" else ""
        return self.model_path(name) if name else None

    @property
    def stt_model_path(self) -> Path:
        return self.model_path(self.stt_model)

    @property
    def llm_model_path(self) -> Path:
        return self.model_path(self.llm_model)

    @property
    def tts_voice_path(self) -> Path:
        return self.model_path(self.tts_voice)


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float, kind: type = float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value: float = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range ({low}..{high})")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return int(_number(env, name, default, low, high, kind=int))


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high)


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices`; the first is the default."""
    value = env.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of: {', '.join(choices)}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be 1 or 0 (true/false)")


def _language(raw: str) -> tuple[str, str]:
    """(base language, <Say> language): region variants like es-MX (as the original system used) select the
    base language for models and lines, and the region for Twilio's <Say>."""
    base, _, region = raw.strip().replace("_", "-").partition("-")
    base = base.lower() or "en"
    if base not in LANGUAGES:
        raise ConfigError(f"VOICEPIPE_LANGUAGE={raw!r} is not supported (use one of: {', '.join(LANGUAGES)})")
    if not region:
        return base, SAY_LANGUAGES[base]
    say = f"{base}-{region.upper()}"
    if say not in SAY_REGIONS:
        raise ConfigError(f"VOICEPIPE_LANGUAGE={raw!r}: unknown region (use one of: {', '.join(SAY_REGIONS)})")
    return base, say


def _transfer_destinations(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """VOICEPIPE_TRANSFER_NUMBER (the default destination) and VOICEPIPE_TRANSFER_DESTINATIONS
    ("sales=+14155550100,support=+14155550101"), numbers checked as E.164."""
    pairs: list[tuple[str, str]] = []
    if number := env.get("VOICEPIPE_TRANSFER_NUMBER", "").strip():
        pairs.append(("default", number))
    for item in filter(None, (part.strip() for part in env.get("VOICEPIPE_TRANSFER_DESTINATIONS", "").split(","))):
        name, _, number = (p.strip() for p in item.partition("="))
        if not re.fullmatch(r"[a-z0-9_]{1,32}", name) or not number:
            raise ConfigError(f"VOICEPIPE_TRANSFER_DESTINATIONS: {item!r} must be name=+number (name: a-z, 0-9, _)")
        pairs.append((name, number))
    for name, number in pairs:
        if not E164.match(number):
            raise ConfigError(f"transfer destination {name}={number!r} is not an E.164 phone number (+14155550123)")
    if len({name for name, _ in pairs}) != len(pairs):
        raise ConfigError("VOICEPIPE_TRANSFER_DESTINATIONS names a destination twice")
    return tuple(pairs)


def _redis_url(env: Mapping[str, str]) -> str:
    url = env.get("VOICEPIPE_REDIS_URL", "").strip()
    if url and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"VOICEPIPE_REDIS_URL={url!r} must be a redis://, rediss:// or unix:// URL")
    return url


def _database_url(env: Mapping[str, str]) -> str:
    url = env.get("VOICEPIPE_DATABASE_URL", "").strip()
    if url and urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"VOICEPIPE_DATABASE_URL must be a postgresql:// URL (got {urlsplit(url).scheme}://)")
    return url


LOOPBACK_HOSTNAMES = ("127.0.0.1", "::1", "localhost")


def check_secure_url(name: str, url: str) -> None:
    """https://, or http:// to this machine only (a local test server): credentials and models travel over it."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTNAMES:
        return
    raise ConfigError(f"{name}={url!r} must be an https:// URL (http:// only to 127.0.0.1 or localhost)")


def load_settings(environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")) -> Settings:
    """Read settings: real environment variables win over the .env file."""
    env: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(os.environ if environ is None else environ)

    webhook_url = env.get("WEBHOOK_URL", "").strip().rstrip("/")
    if webhook_url:
        parts = urlsplit(webhook_url)
        if parts.scheme != "https" or not parts.netloc:
            raise ConfigError(f"WEBHOOK_URL={webhook_url!r} must be the public https:// base URL of your tunnel")
        if parts.query or parts.fragment:
            raise ConfigError("WEBHOOK_URL must not carry a query string or fragment")
    language, say_language = _language(env.get("VOICEPIPE_LANGUAGE", "en"))
    stt_default, llm_default, tts_default = DEFAULT_MODELS[language]
    twilio_api_url = env.get("VOICEPIPE_TWILIO_API_URL", "").strip().rstrip("/")
    if twilio_api_url:
        check_secure_url("VOICEPIPE_TWILIO_API_URL", twilio_api_url)  # the auth token travels with each request
    if _bool(env, "VOICEPIPE_ALLOW_UNSIGNED", False):
        raise ConfigError("VOICEPIPE_ALLOW_UNSIGNED was renamed VOICEPIPE_UNSAFE_ALLOW_UNSIGNED: unsigned mode now "
                          "answers only local requests, and the new name lets anyone who reaches the server in")
    llm_backend = env.get("VOICEPIPE_LLM_BACKEND", "local").strip().lower() or "local"
    if llm_backend not in LLM_BACKENDS:
        raise ConfigError(f"VOICEPIPE_LLM_BACKEND={llm_backend!r} must be one of: {', '.join(LLM_BACKENDS)}")
    openai_base_url = env.get("VOICEPIPE_OPENAI_BASE_URL", "").strip().rstrip("/")
    if openai_base_url and urlsplit(openai_base_url).scheme not in ("http", "https"):
        raise ConfigError(f"VOICEPIPE_OPENAI_BASE_URL={openai_base_url!r} must be an http(s):// URL (ending in /v1)")
    openai_api_key = env.get("OPENAI_API_KEY", "").strip()
    if LLM_BACKENDS[llm_backend][1] and not (openai_api_key or openai_base_url):
        raise ConfigError(f"VOICEPIPE_LLM_BACKEND={llm_backend} needs OPENAI_API_KEY (or VOICEPIPE_OPENAI_BASE_URL "
                          "for a server of your own)")
    log_level = env.get("VOICEPIPE_LOG_LEVEL", "INFO").strip().upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"VOICEPIPE_LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR")

    log_format = env.get("VOICEPIPE_LOG_FORMAT", "text").strip().lower() or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"VOICEPIPE_LOG_FORMAT={log_format!r} must be text or json")
    device = env.get("VOICEPIPE_DEVICE", "auto").strip().lower() or "auto"
    if device not in DEVICES:
        raise ConfigError(f"VOICEPIPE_DEVICE={device!r} must be one of: {', '.join(DEVICES)}")

    pause_ms = _int(env, "VOICEPIPE_PAUSE_MS", TurnSettings.pause_ms, 60, 5000)
    end_of_turn_ms = _int(env, "VOICEPIPE_END_OF_TURN_MS", TurnSettings.end_of_turn_ms, 100, 5000)
    if pause_ms > end_of_turn_ms:
        raise ConfigError(
            f"VOICEPIPE_PAUSE_MS={pause_ms} must not exceed VOICEPIPE_END_OF_TURN_MS={end_of_turn_ms}"
        )
    transcribe_ms = _int(env, "VOICEPIPE_TRANSCRIBE_MS", TurnSettings.transcribe_ms, 0, 5000)
    if transcribe_ms >= pause_ms:
        raise ConfigError(f"VOICEPIPE_TRANSCRIBE_MS={transcribe_ms} must be shorter than VOICEPIPE_PAUSE_MS={pause_ms}"
                          " (0: whisper starts at the pause)")
    max_silence_ms = _int(env, "VOICEPIPE_MAX_SILENCE_MS", Settings.max_silence_ms, 100, 30_000)
    if pause_ms > max_silence_ms:
        raise ConfigError(f"VOICEPIPE_PAUSE_MS={pause_ms} must not exceed VOICEPIPE_MAX_SILENCE_MS={max_silence_ms}")
    turn_model = env.get("VOICEPIPE_TURN_MODEL", "").strip() or DEFAULT_TURN_MODEL
    if turn_model.lower() in ("off", "none", "0"):
        turn_model = ""
    turn_text_model = env.get("VOICEPIPE_TURN_TEXT_MODEL", "").strip() or "auto"
    if turn_text_model.lower() in ("off", "none", "0"):
        turn_text_model = ""
    elif turn_text_model.lower() in ("on", "1"):
        turn_text_model = DEFAULT_TURN_TEXT_MODEL
    turn = TurnSettings(
        vad_aggressiveness=_int(env, "VOICEPIPE_VAD_AGGRESSIVENESS", TurnSettings.vad_aggressiveness, 0, 3),
        speech_start_ms=_int(env, "VOICEPIPE_SPEECH_START_MS", TurnSettings.speech_start_ms, 20, 1000),
        pause_ms=pause_ms,
        transcribe_ms=transcribe_ms,
        end_of_turn_ms=end_of_turn_ms,
        min_utterance_ms=_int(env, "VOICEPIPE_MIN_UTTERANCE_MS", TurnSettings.min_utterance_ms, 0, 5000),
        min_level_dbfs=_float(env, "VOICEPIPE_MIN_LEVEL_DBFS", TurnSettings.min_level_dbfs, -96.0, 0.0),
        silero_threshold=_float(env, "VOICEPIPE_SILERO_THRESHOLD", TurnSettings.silero_threshold, 0.0, 1.0),
    )
    return Settings(
        twilio_account_sid=env.get("TWILIO_ACCOUNT_SID", "").strip(),
        twilio_auth_token=env.get("TWILIO_AUTH_TOKEN", "").strip(),
        twilio_phone_number=env.get("TWILIO_PHONE_NUMBER", "").strip(),
        to_phone_number=env.get("TO_PHONE_NUMBER", "").strip(),
        openai_api_key=openai_api_key,
        webhook_url=webhook_url,
        host=env.get("VOICEPIPE_HOST", "127.0.0.1").strip(),
        port=_int(env, "VOICEPIPE_PORT", 5000, 0, 65535),
        models_dir=Path(env.get("VOICEPIPE_MODELS_DIR", "models").strip() or "models"),
        stt_model=env.get("VOICEPIPE_STT_MODEL", "").strip() or stt_default,
        llm_model=env.get("VOICEPIPE_LLM_MODEL", "").strip() or llm_default,
        tts_voice=env.get("VOICEPIPE_TTS_VOICE", "").strip() or tts_default,
        language=language,
        say_language=say_language,
        say_voice=env.get("VOICEPIPE_SAY_VOICE", "").strip() or SAY_VOICES.get(say_language, ""),
        twilio_api_url=twilio_api_url,
        data_dir=Path(env.get("VOICEPIPE_DATA_DIR", "").strip() or "data"),
        transcripts=_bool(env, "VOICEPIPE_TRANSCRIPTS", False),
        system_prompt=env.get("VOICEPIPE_SYSTEM_PROMPT", "").strip() or DEFAULT_SYSTEM_PROMPTS[language],
        greeting=env.get("VOICEPIPE_GREETING", "").strip() or DEFAULT_GREETINGS[language],
        llm_context=_int(env, "VOICEPIPE_LLM_CONTEXT", Settings.llm_context, 256, 131072),
        llm_max_tokens=_int(env, "VOICEPIPE_LLM_MAX_TOKENS", Settings.llm_max_tokens, 8, 4096),
        llm_temperature=_float(env, "VOICEPIPE_LLM_TEMPERATURE", Settings.llm_temperature, 0.0, 2.0),
        llm_threads=_int(env, "VOICEPIPE_LLM_THREADS", 0, 0, 256),
        stt_threads=_int(env, "VOICEPIPE_STT_THREADS", 0, 0, 256),
        llm_instances=_int(env, "VOICEPIPE_LLM_INSTANCES", Settings.llm_instances, 1, 64),
        llm_backend=llm_backend,
        openai_base_url=openai_base_url,
        openai_model=env.get("VOICEPIPE_OPENAI_MODEL", "").strip() or Settings.openai_model,
        openai_context=_int(env, "VOICEPIPE_OPENAI_CONTEXT", Settings.openai_context, 256, 10_000_000),
        llm_first_token_timeout_s=_float(env, "VOICEPIPE_LLM_FIRST_TOKEN_TIMEOUT_S",
                                         Settings.llm_first_token_timeout_s, 0.1, 120.0),
        llm_cooldown_s=_float(env, "VOICEPIPE_LLM_COOLDOWN_S", Settings.llm_cooldown_s, 0.0, 86400.0),
        max_calls=_int(env, "VOICEPIPE_MAX_CALLS", Settings.max_calls, 1, 10_000),
        speculative=_bool(env, "VOICEPIPE_SPECULATIVE", True),
        streaming=_bool(env, "VOICEPIPE_STREAMING", True),
        turn_model=turn_model,
        turn_threshold=_float(env, "VOICEPIPE_TURN_THRESHOLD", Settings.turn_threshold, 0.0, 1.0),
        max_silence_ms=max_silence_ms,
        turn_recheck_ms=_int(env, "VOICEPIPE_TURN_RECHECK_MS", Settings.turn_recheck_ms, 0, 30_000),
        turn_min_logprob=_float(env, "VOICEPIPE_TURN_MIN_LOGPROB", Settings.turn_min_logprob, -100.0, 0.0),
        unsure_words_ms=_int(env, "VOICEPIPE_UNSURE_WORDS_MS", Settings.unsure_words_ms, 100, 30_000),
        turn_text_model=turn_text_model,
        turn_text_threshold=_float(env, "VOICEPIPE_TURN_TEXT_THRESHOLD", Settings.turn_text_threshold, 0.0, 1.0),
        barge_in_ms=_int(env, "VOICEPIPE_BARGE_IN_MS", Settings.barge_in_ms, 20, 5000),
        playback_lead_ms=_int(env, "VOICEPIPE_PLAYBACK_LEAD_MS", Settings.playback_lead_ms, 200, 10_000),
        silence_reprompt_s=_float(env, "VOICEPIPE_SILENCE_REPROMPT_S", Settings.silence_reprompt_s, 1.0, 3600.0),
        silence_hangup_s=_float(env, "VOICEPIPE_SILENCE_HANGUP_S", Settings.silence_hangup_s, 1.0, 3600.0),
        max_call_s=_float(env, "VOICEPIPE_MAX_CALL_S", Settings.max_call_s, 10.0, 86400.0),
        unsafe_allow_unsigned=_bool(env, "VOICEPIPE_UNSAFE_ALLOW_UNSIGNED", False),
        shutdown_grace_s=_float(env, "VOICEPIPE_SHUTDOWN_GRACE_S", Settings.shutdown_grace_s, 0.0, 3600.0),
        turn=turn,
        log_level=log_level,
        log_format=log_format,
        device=device,
        metrics_token=env.get("VOICEPIPE_METRICS_TOKEN", "").strip(),
        tools_file=Path(tools_file) if (tools_file := env.get("VOICEPIPE_TOOLS_FILE", "").strip()) else None,
        transfer_destinations=_transfer_destinations(env),
        voicemail_message=env.get("VOICEPIPE_VOICEMAIL_MESSAGE", "").strip() or DEFAULT_VOICEMAIL[language],
        llm_tools=_choice(env, "VOICEPIPE_LLM_TOOLS", ("auto", "on", "off")),
        redis_url=_redis_url(env),
        database_url=_database_url(env),
        node_name=env.get("VOICEPIPE_NODE_NAME", "").strip()
        or f"{socket.gethostname()}:{env.get('VOICEPIPE_PORT', '').strip() or Settings.port}",
    )
