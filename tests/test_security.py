"""Who gets in: Twilio signatures on webhooks and the stream, one stream per call token, loopback rules."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from tests.helpers import assert_logs_hold_no_words, call_sid, serving, wait_for
from voicepipe.config import ConfigError, Settings, load_settings
from voicepipe.engines.models import Models
from voicepipe.service.app import check_exposure
from voicepipe.service.records import SqliteCallRecords
from voicepipe.simulate import simulate_call

TOKEN = "f" * 32
PUBLIC = "https://voice.example.ngrok.app"


def signed(settings: Settings) -> Settings:
    return dataclasses.replace(settings, twilio_auth_token=TOKEN, webhook_url=PUBLIC)


def sign(url: str, params: dict[str, str], token: str = TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}


@pytest.mark.models
async def test_webhooks_need_a_valid_signature(base_settings: Settings, models: Models) -> None:
    form = {"CallSid": call_sid(1), "CallStatus": "ringing"}
    async with serving(signed(base_settings), models) as (url, _), aiohttp.ClientSession() as http:
        for path in ("/voice", "/status"):
            cases = {
                "missing": {},
                "wrong token": sign(f"{PUBLIC}{path}", form, token="0" * 32),
                "wrong url": sign(f"{url}{path}", form),
                "other params": sign(f"{PUBLIC}{path}", {**form, "CallSid": call_sid(2)}),
            }
            for case, headers in cases.items():
                async with http.post(f"{url}{path}", data=form, headers=headers) as response:
                    assert response.status == 403, (path, case)
            async with http.post(f"{url}{path}", data=form, headers=sign(f"{PUBLIC}{path}", form)) as response:
                assert response.status in (200, 204), path
        async with http.get(f"{url}/healthz") as response:  # not a Twilio webhook
            assert response.status == 200


@pytest.mark.models
async def test_the_stream_needs_a_signed_upgrade_and_a_fresh_token(base_settings: Settings, models: Models) -> None:
    async with serving(signed(base_settings), models) as (url, _), aiohttp.ClientSession() as http:
        ws_url = url.replace("http", "ws") + "/media"
        for headers in ({}, sign(f"{PUBLIC}/media", {}), sign("wss://voice.example.ngrok.app/media", {}, "0" * 32)):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url, headers=headers)
            assert refused.value.status == 403
        form = {"CallSid": call_sid(7)}
        async with http.post(f"{url}/voice", data=form, headers=sign(f"{PUBLIC}/voice", form)) as response:
            token = (await response.text()).split('name="voicepipe_token" value="')[1].split('"')[0]
        start = {"event": "start", "streamSid": "MZ7", "start": {
            "streamSid": "MZ7", "callSid": call_sid(7), "customParameters": {"voicepipe_token": token}}}
        closes = []
        for _ in range(2):  # the second stream replays the token
            async with http.ws_connect(ws_url, headers=sign("wss://voice.example.ngrok.app/media", {})) as ws:
                await ws.send_str(json.dumps(start))
                message = await ws.receive(timeout=3)
                if message.type == aiohttp.WSMsgType.TEXT:  # the greeting: the stream was accepted
                    closes.append("accepted")
                    await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ7", "stop": {"callSid": call_sid(7)}}))
                else:
                    closes.append(ws.close_code)
    assert closes == ["accepted", 1008]


@pytest.mark.models
async def test_a_signed_call_works_end_to_end(base_settings: Settings, models: Models, speech_dir: Path) -> None:
    async with serving(signed(base_settings), models) as (url, ended):
        result = await simulate_call(url, [speech_dir / "thanks.wav"], auth_token=TOKEN, public_url=PUBLIC)
        await wait_for(ended)
    assert result.turns[0].voice_to_voice is not None


def test_unsigned_mode_stays_on_this_machine(base_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_exposure(base_settings, "127.0.0.1")
    assert "TWILIO_AUTH_TOKEN is not set" in caplog.text
    with pytest.raises(ConfigError, match="VOICEPIPE_UNSAFE_ALLOW_UNSIGNED"):
        check_exposure(base_settings, "0.0.0.0")
    # A tunnel reaches loopback too: with WEBHOOK_URL set, unsigned mode would be open to the internet.
    tunnelled = dataclasses.replace(base_settings, webhook_url=PUBLIC)
    with pytest.raises(ConfigError, match="WEBHOOK_URL without TWILIO_AUTH_TOKEN"):
        check_exposure(tunnelled, "127.0.0.1")
    unsafe = dataclasses.replace(tunnelled, unsafe_allow_unsigned=True)
    with caplog.at_level(logging.WARNING):
        check_exposure(unsafe, "0.0.0.0")
    assert "anyone who can reach this server can open calls" in caplog.text
    check_exposure(signed(base_settings), "0.0.0.0")
    with pytest.raises(ConfigError, match="renamed VOICEPIPE_UNSAFE_ALLOW_UNSIGNED"):
        load_settings({"VOICEPIPE_ALLOW_UNSIGNED": "1"}, env_file=None)


@pytest.mark.models
async def test_logs_at_info_hold_no_words_of_the_call(
    base_settings: Settings, models: Models, speech_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        async with serving(base_settings, models) as (url, ended):
            result = await simulate_call(url, [speech_dir / "capital.wav"])
            await wait_for(ended)
    assert_logs_hold_no_words(caplog.text, ended[0])
    record = SqliteCallRecords(base_settings.data_dir).get(result.call_sid)
    assert record is not None and record["turns"] == 1 and record["transcript"] is None  # not stored by default
