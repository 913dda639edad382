"""`voicepipe call` and `voicepipe calls`: the real twilio client against a local server that plays Twilio's REST
API, and call records that follow status callbacks in Twilio's order, not arrival order."""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import ACCOUNT, FROM, TO, TOKEN, FakeTwilioApi, running, serving
from voicepipe.cli import main
from voicepipe.config import Settings
from voicepipe.engines.models import Models
from voicepipe.service.records import SqliteCallRecords


@pytest.fixture
async def twilio_api() -> AsyncIterator[tuple[FakeTwilioApi, str]]:
    api = FakeTwilioApi()
    async with running(api.app()) as port:
        yield api, f"http://127.0.0.1:{port}"


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh working directory with the operator's .env-style settings in the environment."""
    monkeypatch.chdir(tmp_path)
    for name, value in {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_PHONE_NUMBER": FROM,
                        "TO_PHONE_NUMBER": TO, "WEBHOOK_URL": "https://voice.example.ngrok.app",
                        "VOICEPIPE_DATA_DIR": str(tmp_path / "data"), "VOICEPIPE_LANGUAGE": "en"}.items():
        monkeypatch.setenv(name, value)
    return tmp_path


async def run_cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_call_places_a_conversation_and_follows_it_to_the_end(
    twilio_api: tuple[FakeTwilioApi, str], operator_env: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = twilio_api
    monkeypatch.setenv("VOICEPIPE_TWILIO_API_URL", url)
    assert await run_cli("call", "--poll", "0.01") == 0
    method, path, form, auth = api.requests[0]
    assert (method, path) == ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json")
    assert auth == "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    assert form["To"] == [TO] and form["From"] == [FROM]
    assert form["Url"] == ["https://voice.example.ngrok.app/voice"] and form["Method"] == ["POST"]
    assert form["StatusCallback"] == ["https://voice.example.ngrok.app/status"]
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert "Twiml" not in form
    printed = capsys.readouterr().out
    assert f"call CA{'a' * 32}: placed to {TO}" in printed and printed.rstrip().endswith("completed")
    record = SqliteCallRecords(operator_env / "data").get("CA" + "a" * 32)
    assert record is not None and record["direction"] == "outbound-api" and record["status"] == "completed"
    assert [s["status"] for s in record["status_history"]] == ["queued", "ringing", "in-progress", "completed"]


async def test_one_way_message_is_spoken_by_twilio_in_the_calls_language(
    twilio_api: tuple[FakeTwilioApi, str], operator_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, url = twilio_api
    monkeypatch.setenv("VOICEPIPE_TWILIO_API_URL", url)
    monkeypatch.setenv("VOICEPIPE_LANGUAGE", "es-MX")
    monkeypatch.delenv("WEBHOOK_URL")  # a one-way message needs no tunnel
    text = "Hola, le recordamos su cita de mañana a las diez."
    assert await run_cli("call", "+5215512345678", "--message", text, "--no-follow") == 0
    form = api.requests[0][2]
    assert form["To"] == ["+5215512345678"] and "Url" not in form and "StatusCallback" not in form
    twiml = ET.fromstring(form["Twiml"][0])
    say = twiml.find("./Say")
    assert say is not None and say.text == text
    assert (say.get("language"), say.get("voice")) == ("es-MX", "Polly.Mia")
    assert twiml.find("./Hangup") is not None


@pytest.mark.models
async def test_one_way_message_written_by_the_local_model(
    twilio_api: tuple[FakeTwilioApi, str], operator_env: Path, monkeypatch: pytest.MonkeyPatch,
    base_settings: Settings
) -> None:
    api, url = twilio_api
    monkeypatch.setenv("VOICEPIPE_TWILIO_API_URL", url)
    monkeypatch.setenv("VOICEPIPE_MODELS_DIR", str(base_settings.models_dir))
    monkeypatch.setenv("VOICEPIPE_LLM_INSTANCES", "1")
    assert await run_cli("call", "--prompt", "Remind Ana that her dentist appointment is tomorrow at ten.",
                         "--no-follow") == 0
    say = ET.fromstring(api.requests[0][2]["Twiml"][0]).find("./Say")
    assert say is not None and say.get("language") == "en-US" and len((say.text or "").split()) >= 3


async def test_call_errors_are_clear(
    operator_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli("call", "5551234") == 2
    assert "not an E.164 phone number" in capsys.readouterr().err
    monkeypatch.setenv("WEBHOOK_URL", "http://voice.example.ngrok.app")
    assert await run_cli("call") == 2
    error = capsys.readouterr().err
    assert "WEBHOOK_URL" in error and "https://" in error
    monkeypatch.setenv("WEBHOOK_URL", "https://voice.example.ngrok.app")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "")
    assert await run_cli("call") == 2
    assert "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set" in capsys.readouterr().err


async def test_twilio_refusing_the_call_is_reported(
    twilio_api: tuple[FakeTwilioApi, str], operator_env: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = twilio_api
    api.reject = True
    monkeypatch.setenv("VOICEPIPE_TWILIO_API_URL", url)
    assert await run_cli("call") == 1
    error = capsys.readouterr().err
    assert "Twilio refused the call:" in error and "The 'To' number is not a valid phone number. (error 21211" in error
    assert "BEGIN Twilio API Request" not in error  # the client's request log (it holds the message) is quiet


@pytest.mark.models
async def test_status_callbacks_out_of_order_keep_the_latest_status(
    base_settings: Settings, models: Models, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(base_settings, models) as (url, _), aiohttp.ClientSession() as http:
        callbacks = ((0, "initiated"), (3, "completed"), (1, "ringing"), (2, "in-progress"), (3, "completed"))
        for sequence, status in callbacks:  # out of order, and one repeated
            form = {"CallSid": "CA" + "b" * 32, "CallStatus": status, "SequenceNumber": str(sequence),
                    "From": FROM, "To": TO, "Direction": "outbound-api"}
            async with http.post(f"{url}/status", data=form) as response:
                assert response.status == 204
    monkeypatch.setenv("VOICEPIPE_DATA_DIR", str(base_settings.data_dir))
    assert await run_cli("calls", "show", "CA" + "b" * 32, "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "completed" and (record["from_number"], record["to_number"]) == (FROM, TO)
    assert [s["status"] for s in record["status_history"]] == ["initiated", "ringing", "in-progress", "completed"]
    assert await run_cli("calls") == 0
    assert "CA" + "b" * 32 in capsys.readouterr().out
