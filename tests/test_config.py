from pathlib import Path

import pytest

from voicepipe.config import DEFAULT_GREETINGS, ConfigError, load_settings


def test_defaults() -> None:
    settings = load_settings({}, env_file=None)
    assert (settings.host, settings.port, settings.language) == ("127.0.0.1", 5000, "en")
    assert settings.stt_model_path == Path("models/whisper-tiny.en")
    assert settings.greeting == DEFAULT_GREETINGS["en"]


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("TWILIO_ACCOUNT_SID=ACfile\nWEBHOOK_URL=https://abc.ngrok.app/\nVOICEPIPE_PORT=6000\n")
    settings = load_settings({"VOICEPIPE_PORT": "7000"}, env_file=env_file)
    assert settings.twilio_account_sid == "ACfile"
    assert settings.webhook_url == "https://abc.ngrok.app"
    assert settings.port == 7000


def test_language_variants_select_defaults() -> None:
    settings = load_settings({"VOICEPIPE_LANGUAGE": "es-MX"}, env_file=None)
    assert (settings.language, settings.say_language, settings.say_voice) == ("es", "es-MX", "Polly.Mia")
    assert settings.greeting == DEFAULT_GREETINGS["es"]
    assert settings.stt_model == "whisper-base" and "qwen2.5" in settings.llm_model and "es_ES" in settings.tts_voice
    spain = load_settings({"VOICEPIPE_LANGUAGE": "es", "VOICEPIPE_SAY_VOICE": "Polly.Conchita"}, env_file=None)
    assert (spain.say_language, spain.say_voice) == ("es-ES", "Polly.Conchita")


def test_missing_spanish_models_name_the_download_command(tmp_path: Path) -> None:
    from voicepipe.engines.models import ModelFileError, check_model_files

    settings = load_settings({"VOICEPIPE_LANGUAGE": "es", "VOICEPIPE_MODELS_DIR": str(tmp_path)}, env_file=None)
    with pytest.raises(ModelFileError, match=r"whisper-base.*download_models.py --preset es"):
        check_model_files(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"VOICEPIPE_PORT": "http"}, "VOICEPIPE_PORT"),
        ({"VOICEPIPE_PORT": "70000"}, "VOICEPIPE_PORT"),
        ({"WEBHOOK_URL": "http://insecure.example"}, "WEBHOOK_URL"),
        ({"WEBHOOK_URL": "https://x.example/?a=1"}, "WEBHOOK_URL"),
        ({"VOICEPIPE_LANGUAGE": "fr"}, "VOICEPIPE_LANGUAGE"),
        ({"VOICEPIPE_LANGUAGE": "es-XX"}, "VOICEPIPE_LANGUAGE"),
        ({"VOICEPIPE_TWILIO_API_URL": "api.twilio.com"}, "VOICEPIPE_TWILIO_API_URL"),
        ({"VOICEPIPE_TRANSCRIPTS": "maybe"}, "VOICEPIPE_TRANSCRIPTS"),
        ({"VOICEPIPE_VAD_AGGRESSIVENESS": "4"}, "VOICEPIPE_VAD_AGGRESSIVENESS"),
        ({"VOICEPIPE_PAUSE_MS": "900", "VOICEPIPE_END_OF_TURN_MS": "500"}, "VOICEPIPE_PAUSE_MS"),
        ({"VOICEPIPE_TRANSCRIBE_MS": "80"}, "VOICEPIPE_TRANSCRIBE_MS"),  # not before the pause (80 ms)
        ({"VOICEPIPE_LLM_TEMPERATURE": "hot"}, "VOICEPIPE_LLM_TEMPERATURE"),
        ({"VOICEPIPE_LOG_LEVEL": "LOUD"}, "VOICEPIPE_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(env, env_file=None)


def test_backend_settings_are_checked() -> None:
    base: dict[str, str] = {}
    with pytest.raises(ConfigError, match="VOICEPIPE_LLM_BACKEND"):
        load_settings({**base, "VOICEPIPE_LLM_BACKEND": "cloud"}, env_file=None)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        load_settings({**base, "VOICEPIPE_LLM_BACKEND": "openai"}, env_file=None)
    with pytest.raises(ConfigError, match="http"):
        load_settings({**base, "VOICEPIPE_LLM_BACKEND": "openai", "VOICEPIPE_OPENAI_BASE_URL": "ftp://x"},
                      env_file=None)
    settings = load_settings({**base, "VOICEPIPE_LLM_BACKEND": "local+openai", "OPENAI_API_KEY": "sk-test",
                              "VOICEPIPE_OPENAI_MODEL": "gpt-4.1-mini"}, env_file=None)
    assert (settings.llm_backend, settings.openai_model, settings.openai_base_url) == ("local+openai",
                                                                                       "gpt-4.1-mini", "")
    assert settings.openai_api_key == "sk-test"
    assert settings.uses_local_llm and settings.uses_llm_server
    only_server = load_settings({"VOICEPIPE_LLM_BACKEND": "openai", "OPENAI_API_KEY": "k"}, env_file=None)
    assert not only_server.uses_local_llm and only_server.uses_llm_server
    assert load_settings({}, env_file=None).uses_local_llm and not load_settings({}, env_file=None).uses_llm_server


def test_turn_settings() -> None:
    settings = load_settings({}, env_file=None)
    assert settings.turn_model_path is not None and settings.turn_model_path.name == "smart-turn-v3.2-cpu.onnx"
    assert (settings.turn_threshold, settings.max_silence_ms, settings.barge_in_ms) == (0.5, 2000, 80)
    assert settings.turn_recheck_ms == 300
    assert load_settings({"VOICEPIPE_TURN_RECHECK_MS": "0"}, env_file=None).turn_recheck_ms == 0
    assert load_settings({"VOICEPIPE_TURN_MODEL": "off"}, env_file=None).turn_model_path is None
    # The text turn model: by default only where the models run on a GPU; "on" everywhere, "off" nowhere.
    text_model = settings.turn_text_model_path("cuda")
    assert text_model is not None and text_model.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert settings.turn_text_model_path("cpu") is None and settings.turn_text_threshold == 0.03
    assert load_settings({"VOICEPIPE_TURN_TEXT_MODEL": "on"}, env_file=None).turn_text_model_path("cpu") == text_model
    assert load_settings({"VOICEPIPE_TURN_TEXT_MODEL": "off"}, env_file=None).turn_text_model_path("cuda") is None
    with pytest.raises(ConfigError, match="VOICEPIPE_TURN_TEXT_THRESHOLD"):
        load_settings({"VOICEPIPE_TURN_TEXT_THRESHOLD": "2"}, env_file=None)
    with pytest.raises(ConfigError, match="VOICEPIPE_MAX_SILENCE_MS"):
        load_settings({"VOICEPIPE_PAUSE_MS": "900", "VOICEPIPE_END_OF_TURN_MS": "1000",
                       "VOICEPIPE_MAX_SILENCE_MS": "800"}, env_file=None)
    with pytest.raises(ConfigError, match="VOICEPIPE_TURN_THRESHOLD"):
        load_settings({"VOICEPIPE_TURN_THRESHOLD": "1.5"}, env_file=None)
    with pytest.raises(ConfigError, match="VOICEPIPE_TURN_RECHECK_MS"):
        load_settings({"VOICEPIPE_TURN_RECHECK_MS": "-1"}, env_file=None)


def test_the_example_env_file_holds_the_defaults() -> None:
    # Operators start from it: a value there that is not the default changes their agent without saying so
    # (it said 200 ms pauses and 120 ms barge-in after both had been measured down to 100 and 80).
    example = Path(__file__).resolve().parent.parent / ".env.example"
    assert load_settings({}, env_file=example) == load_settings({}, env_file=None)
