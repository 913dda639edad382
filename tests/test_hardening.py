"""What a security review found, each tried against a real server on a real port with real sockets: unsigned mode
reached through a tunnel, replayed and misused stream tokens, sockets and bodies that never finish, leaks, record
writes that block calls, and the small ones. The engines are fakes where the test is about the server (the VAD is
the real Silero); the locked-database and kill -9 tests run the real models."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from tests.fakes import FakeTranscriber, fake_models
from tests.helpers import FakeTwilioApi, call_sid, free_port, running, serving, wait_for
from voicepipe.config import ConfigError, Settings, load_settings
from voicepipe.engines.llm_backends import OpenAIChat
from voicepipe.engines.models import Models
from voicepipe.service import access, media
from voicepipe.service.app import create_app
from voicepipe.service.health import Health
from voicepipe.service.logs import TextFormatter
from voicepipe.service.records import SqliteCallRecords
from voicepipe.service.state import SERVICE
from voicepipe.service.tokens import MemoryTokenStore
from voicepipe.simulate import simulate_call
from voicepipe.telephony.rest import complete_call

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
ACCOUNT = "AC" + "a" * 32
AUTH_TOKEN = "f" * 32
PUBLIC = "https://voice.example.ngrok.app"
SILENT_FRAME = base64.b64encode(b"\xff" * 160).decode()


@pytest.fixture
def settings(unit_settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(unit_settings, data_dir=tmp_path / "data")


@contextlib.asynccontextmanager
async def server(settings: Settings, models: Models | None = None) -> AsyncIterator[tuple[str, web.Application]]:
    app = create_app(settings, models or fake_models())
    async with running(app) as port:
        yield f"http://127.0.0.1:{port}", app


def ws_url(url: str) -> str:
    return url.replace("http", "ws") + "/media"


def sign(url: str, params: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, params)}


async def voice(http: aiohttp.ClientSession, url: str, form: dict[str, str],
                headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with http.post(f"{url}/voice", data=form, headers=headers or {}) as response:
        return response.status, await response.text()


def token_of(twiml: str) -> str:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}["voicepipe_token"] or ""


def start(sid: str, token: str, account: str = ACCOUNT, media_format: dict[str, Any] | None = None) -> str:
    return json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": sid, "accountSid": account, "customParameters": {"voicepipe_token": token},
        "mediaFormat": media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


async def all_closed(app: web.Application) -> bool:
    """The server finished every socket and call (it does so just after the close handshake)."""
    for _ in range(100):
        if not app[SERVICE].sockets and not app[SERVICE].sessions:
            return True
        await asyncio.sleep(0.05)
    return False


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 15) -> tuple[int | None, str]:
    """Read until the server closes; its close code and reason."""
    while True:
        message = await ws.receive(timeout=timeout)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code, str(message.extra or "")


# -- 1. Unsigned mode is for this machine only -----------------------------------------------------------------


async def test_unsigned_mode_refuses_what_a_tunnel_forwards(settings: Settings) -> None:
    form = {"CallSid": call_sid(1), "AccountSid": ACCOUNT}
    async with server(settings) as (url, _), aiohttp.ClientSession() as http:
        port = url.rsplit(":", 1)[1]
        forwarded = [{"X-Forwarded-For": "203.0.113.9"}, {"Cf-Connecting-IP": "203.0.113.9"},
                     {"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "203.0.113.9"},
                     {"Host": "voice.example.ngrok.app"},  # the tunnel's Host, from loopback (as cloudflared does)
                     {"Host": f"127.0.0.1:{int(port) + 1}"}]
        for headers in forwarded:
            status, text = await voice(http, url, form, headers)
            assert (status, "set TWILIO_AUTH_TOKEN" in text) == (403, True), headers
        for path in ("/healthz", "/stats", "/metrics"):
            async with http.get(f"{url}{path}", headers={"X-Forwarded-For": "203.0.113.9"}) as response:
                assert response.status == 403, path
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(url), headers={"X-Forwarded-For": "203.0.113.9"})
        assert refused.value.status == 403
        status, twiml = await voice(http, url, form)  # the same request made locally is served
        assert status == 200 and token_of(twiml)
    async with server(dataclasses.replace(settings, unsafe_allow_unsigned=True)) as (url, _), \
            aiohttp.ClientSession() as http:
        status, _ = await voice(http, url, {**form, "CallSid": call_sid(2)}, {"X-Forwarded-For": "203.0.113.9"})
        assert status == 200  # the loudly named override opens it


def test_api_endpoints_must_be_https_unless_local() -> None:
    for url in ("http://api.twilio.example.com", "ftp://127.0.0.1"):
        with pytest.raises(ConfigError, match="VOICEPIPE_TWILIO_API_URL.*https://"):
            load_settings({"VOICEPIPE_TWILIO_API_URL": url}, env_file=None)
    for url in ("https://api.twilio.com", "http://127.0.0.1:8080", "http://localhost:9"):
        assert load_settings({"VOICEPIPE_TWILIO_API_URL": url}, env_file=None).twilio_api_url == url


# -- 2. Stream tokens ---------------------------------------------------------------------------------------------


async def test_a_replayed_signed_voice_request_is_refused(settings: Settings) -> None:
    signed = dataclasses.replace(settings, twilio_auth_token=AUTH_TOKEN, twilio_account_sid=ACCOUNT,
                                 webhook_url=PUBLIC)
    form = {"CallSid": call_sid(3), "AccountSid": ACCOUNT, "From": "+15550001111"}
    headers = sign(f"{PUBLIC}/voice", form)
    async with server(signed) as (url, _), aiohttp.ClientSession() as http:
        status, twiml = await voice(http, url, form, headers)
        assert status == 200 and token_of(twiml)
        assert (await voice(http, url, form, headers))[0] == 409  # while its token is pending
        ws = await http.ws_connect(ws_url(url), headers=sign(f"{PUBLIC.replace('https', 'wss')}/media", {}))
        await ws.send_str(start(call_sid(3), token_of(twiml)))
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT  # the call is live
        assert (await voice(http, url, form, headers))[0] == 409  # during the call
        await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {"callSid": call_sid(3)}}))
        await closed_with(ws)
        assert (await voice(http, url, form, headers))[0] == 409  # and after it
        foreign = {**form, "CallSid": call_sid(4), "AccountSid": "AC" + "b" * 32}
        assert (await voice(http, url, foreign, sign(f"{PUBLIC}/voice", foreign)))[0] == 403
        for bad in ("", "CA1", "CA" + "G" * 32, call_sid(5) + "\r\nX: y"):
            assert (await voice(http, url, {**form, "CallSid": bad}, sign(f"{PUBLIC}/voice", {**form, "CallSid": bad}))
                    )[0] == 400, bad


async def test_a_token_opens_only_its_own_call_while_fresh(settings: Settings) -> None:
    async with server(settings) as (url, app), aiohttp.ClientSession() as http:
        async def refused(sid: str, account: str = ACCOUNT, media_format: dict[str, Any] | None = None,
                          token_sid: str | None = None, wait: float = 0.0) -> tuple[int | None, str]:
            _, twiml = await voice(http, url, {"CallSid": token_sid or sid, "AccountSid": ACCOUNT})
            await asyncio.sleep(wait)
            async with http.ws_connect(ws_url(url)) as ws:
                await ws.send_str(start(sid, token_of(twiml), account, media_format))
                return await closed_with(ws)

        foreign = "callSid is not the call the token was issued for"
        assert await refused(call_sid(11), token_sid=call_sid(10)) == (1008, foreign)
        assert (await refused(call_sid(12), account="AC" + "b" * 32))[1].startswith("accountSid is not")
        code, reason = await refused(call_sid(13), media_format={"encoding": "audio/l16", "sampleRate": 16000})
        assert code == 1003 and "media format audio/l16 16000 Hz" in reason
        assert (await refused(call_sid(14), media_format={"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                            "channels": 2}))[0] == 1003
        app[SERVICE].tokens = MemoryTokenStore(ttl=0.3)
        code, reason = await refused(call_sid(15), wait=0.5)
        assert (code, reason.startswith("the call token expired")) == (1008, True)
        assert await all_closed(app)


async def test_hang_up_uses_only_a_twilio_shaped_call_sid(settings: Settings) -> None:
    api = FakeTwilioApi()
    async with running(api.app()) as port:
        rest = dataclasses.replace(settings, twilio_account_sid=ACCOUNT, twilio_auth_token=AUTH_TOKEN,
                                   twilio_api_url=f"http://127.0.0.1:{port}")
        await complete_call(rest, "CA../../Accounts/AC0/Calls/CAother")
        await complete_call(rest, call_sid(16))
    assert [path.rsplit("/", 1)[1] for _, path, _, _ in api.requests] == [f"{call_sid(16)}.json"]


# -- 3. Sockets and bodies that never finish ---------------------------------------------------------------------


async def test_sockets_that_owe_a_start_or_fall_silent_are_closed(settings: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media, "START_TIMEOUT_SECONDS", 0.6)
    monkeypatch.setattr(media, "IDLE_TIMEOUT_SECONDS", 1.0)
    async with server(dataclasses.replace(settings, max_calls=2)) as (url, app), aiohttp.ClientSession() as http:
        idle = await http.ws_connect(ws_url(url))
        chatty = await http.ws_connect(ws_url(url))  # "connected" again and again does not buy time
        # Both slots hold a socket: a third is refused, and /voice says the lines are busy.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(url))
        assert refused.value.status == 503
        assert "<Connect>" not in (await voice(http, url, {"CallSid": call_sid(20), "AccountSid": ACCOUNT}))[1]
        for _ in range(4):
            await chatty.send_str(json.dumps({"event": "connected", "protocol": "Call"}))
            await asyncio.sleep(0.2)
        assert await closed_with(idle) == (1008, "no valid start within 1 s")
        assert (await closed_with(chatty))[0] == 1008
        _, twiml = await voice(http, url, {"CallSid": call_sid(21), "AccountSid": ACCOUNT})
        live = await http.ws_connect(ws_url(url))
        await live.send_str(start(call_sid(21), token_of(twiml)))
        await live.send_str(json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": SILENT_FRAME}}))
        assert await closed_with(live) == (1008, "no message for 1 s")  # it went silent
        assert await all_closed(app)


async def test_a_stalled_body_times_out_while_others_are_served(settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "BODY_TIMEOUT_SECONDS", 0.5)
    async with server(settings) as (url, _), aiohttp.ClientSession() as http:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /voice HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-"
                     "urlencoded\r\nContent-Length: 500\r\n\r\nCallSid=CA".encode())
        await writer.drain()
        status, _ = await voice(http, url, {"CallSid": call_sid(22), "AccountSid": ACCOUNT})  # not held up
        answer = await asyncio.wait_for(reader.read(200), 5)
        writer.close()
    assert status == 200
    assert answer.startswith(b"HTTP/1.1 408")


async def test_an_idle_stream_cannot_save_up_a_burst(settings: Settings) -> None:
    async with server(settings) as (url, _), aiohttp.ClientSession() as http:
        _, twiml = await voice(http, url, {"CallSid": call_sid(23), "AccountSid": ACCOUNT})
        async with http.ws_connect(ws_url(url)) as ws:
            await ws.send_str(start(call_sid(23), token_of(twiml)))
            await asyncio.sleep(2.5)  # sent nothing for 2.5 s; the credit stays capped at 3 s of audio
            frame = json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": SILENT_FRAME}})
            for _ in range(200):  # 4 s of audio at once
                if ws.closed:
                    break
                await ws.send_str(frame)
            assert await closed_with(ws) == (1008, "media arriving faster than real time")


# -- 4. Leaks ---------------------------------------------------------------------------------------------------


async def test_healthz_and_stats_leak_nothing(settings: Settings) -> None:
    chat = OpenAIChat("sk-test", "m", "http://user:s3cret@llm.internal:8000/v1")
    assert chat.report()["server"] == "llm.internal:8000"
    health = Health()
    for _ in range(3):
        health.stage_failed("stt", RuntimeError("cannot open /srv/secret/model.bin"))
    assert "secret" not in json.dumps(health.report()) and health.report()["stt"]["last_error"] == "RuntimeError"
    guarded = dataclasses.replace(settings, metrics_token="m" * 24)
    async with server(guarded) as (url, _), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/stats") as response:
            assert response.status == 401
        async with http.get(f"{url}/stats", headers={"Authorization": "Bearer " + "m" * 24}) as response:
            assert response.status == 200


def test_log_lines_from_requests_cannot_forge_lines() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "rejected %s", ("/voice\r\n2026 INFO forged",),
                               None)
    record.call_sid = "-"
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line and "\r" not in line and line.endswith("/voice\\r\\n2026 INFO forged")


# -- 5. Record writes never block a call; a crash loses at most the turn in progress ------------------------------


@pytest.mark.models
async def test_a_locked_database_delays_records_not_calls(base_settings: Settings, models: Models,
                                                          speech_dir: Path, tmp_path: Path) -> None:
    settings = dataclasses.replace(base_settings, data_dir=tmp_path / "data")
    SqliteCallRecords(settings.data_dir).close()  # the file exists, as on a server that ran before
    holder = sqlite3.connect(settings.data_dir / "calls.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process (voicepipe call) holds the write lock throughout
    try:
        async with serving(settings, models) as (url, ended):
            result = await simulate_call(url, [speech_dir / "capital.wav"])
            await wait_for(ended)
            assert result.turns[0].voice_to_voice is not None  # the call went on as usual
            holder.execute("COMMIT")
    finally:
        holder.close()
    record = SqliteCallRecords(settings.data_dir).get(result.call_sid)  # the server flushed its queue on stop
    assert record is not None and record["turns"] == 1 and record["outcome"] == "caller_hung_up"
    assert len(record["turn_timings"]) == 1 and record["started_at"] is not None


async def test_a_failing_record_write_never_fails_a_webhook(settings: Settings) -> None:
    async with server(settings) as (url, app), aiohttp.ClientSession() as http:
        records = app[SERVICE].records
        assert isinstance(records, SqliteCallRecords)
        with sqlite3.connect(records.path) as db:
            db.execute("DROP TABLE call_status")  # a broken file: every status write fails
        async with http.post(f"{url}/status", data={"CallSid": call_sid(30), "CallStatus": "ringing",
                                                    "SequenceNumber": "²"}) as response:
            assert response.status == 204  # "²".isdigit() is True and int("²") raises: not a 500
        status, twiml = await voice(http, url, {"CallSid": call_sid(31), "AccountSid": ACCOUNT})
        assert status == 200 and token_of(twiml)
        assert records.flush()
        with contextlib.closing(sqlite3.connect(records.path)) as db:  # other writes go on
            assert db.execute("SELECT COUNT(*) FROM calls WHERE call_sid = ?", (call_sid(31),)).fetchone()[0] == 1
        async with http.get(f"{url}/metrics") as response:
            assert 'voicepipe_errors_total{kind="write_failed",stage="records"} 1.0' in await response.text()


@pytest.mark.models
def test_kill_9_mid_call_then_restart_closes_the_record(tmp_path: Path, speech_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "VOICEPIPE_PORT": str(port), "VOICEPIPE_DATA_DIR": str(tmp_path / "data"),
           "VOICEPIPE_MODELS_DIR": str(ROOT / "models"), "VOICEPIPE_SILENCE_REPROMPT_S": "60"}
    url = f"http://127.0.0.1:{port}"

    def start_server() -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "voicepipe", "serve"], env=env, cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(600):
            with contextlib.suppress(OSError):
                import urllib.request

                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    return process
            assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
            time.sleep(0.1)
        raise AssertionError("the server did not start")

    def stored_turns(sid: str) -> int:
        with contextlib.closing(sqlite3.connect(tmp_path / "data" / "calls.sqlite3")) as db:
            return int(db.execute("SELECT COUNT(*) FROM turns WHERE call_sid = ?", (sid,)).fetchone()[0])

    async def call_until_killed(process: subprocess.Popen[bytes]) -> str:
        call = asyncio.create_task(simulate_call(url, [speech_dir / "capital.wav"], stay_on_line=30))
        while not call.done():
            with contextlib.suppress(sqlite3.Error):
                with contextlib.closing(sqlite3.connect(tmp_path / "data" / "calls.sqlite3")) as db:
                    row = db.execute("SELECT call_sid FROM calls WHERE started_at IS NOT NULL").fetchone()
                if row is not None and stored_turns(row[0]) == 1:  # the first turn is stored as it happened
                    process.send_signal(signal.SIGKILL)
                    with contextlib.suppress(Exception):
                        await call
                    return str(row[0])
            await asyncio.sleep(0.1)
        raise AssertionError(f"the call ended before it could be killed: {call.result()}")

    process = start_server()
    try:
        sid = asyncio.run(call_until_killed(process))
        process.wait(10)
        records = SqliteCallRecords(tmp_path / "data")
        assert records.get(sid)["ended_at"] is None  # type: ignore[index]  # nobody closed it
        records.close()
        process = start_server()
        record = SqliteCallRecords(tmp_path / "data").get(sid)
        assert record is not None and record["outcome"] == "interrupted" and record["ended_at"] is not None
        assert len(record["turn_timings"]) == 1  # the turn that finished before the kill
    finally:
        process.kill()
        process.wait(10)


# -- 6. Small ones ------------------------------------------------------------------------------------------------


async def test_keys_and_odd_marks_are_bounded(settings: Settings) -> None:
    transcriber = FakeTranscriber("Hello there.")
    models = fake_models(transcriber)
    async with server(settings, models) as (url, _), aiohttp.ClientSession() as http:
        _, twiml = await voice(http, url, {"CallSid": call_sid(40), "AccountSid": ACCOUNT})
        async with http.ws_connect(ws_url(url)) as ws:
            await ws.send_str(start(call_sid(40), token_of(twiml)))
            await ws.send_str(json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": "t1s1.²"}}))
            for _ in range(100):
                await ws.send_str(json.dumps({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "7"}}))
            chat = models.chat
            for _ in range(100):  # keys reach the model once the caller stops pressing
                await ws.send_str(json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": SILENT_FRAME}}))
                await asyncio.sleep(0.05)
                if getattr(chat, "prompts", None):
                    break
            assert not ws.closed  # the odd mark name ended nothing
        prompt = chat.prompts[0][-1]["content"]  # type: ignore[attr-defined]
        assert prompt.count("7") == 32, prompt


async def test_the_pages_are_for_this_machine_or_the_operators_token(settings: Settings) -> None:
    pages = ("/phone", "/dashboard", "/phone/config", "/api/calls", "/api/turns", f"/api/calls/{call_sid(50)}")
    async with server(settings) as (url, _), aiohttp.ClientSession() as http:
        for path in pages:
            async with http.get(f"{url}{path}") as response:
                assert response.status == (404 if path.startswith("/api/calls/") else 200), path  # no such call
            async with http.get(f"{url}{path}", headers={"X-Forwarded-For": "203.0.113.9"}) as response:
                assert response.status == 403, path
        async with http.get(f"{url}/web/phone-worklet.js") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
        async with http.get(f"{url}/web/..%2Fapp.py") as response:
            assert response.status == 404
    operator = "m" * 24
    signed = dataclasses.replace(settings, metrics_token=operator, twilio_auth_token=AUTH_TOKEN, webhook_url=PUBLIC)
    async with server(signed) as (url, _), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/dashboard") as response:
            assert response.status == 401
        async with http.get(f"{url}/dashboard?token={operator}") as response:
            assert response.status == 200
        async with http.get(f"{url}/api/calls", headers={"Authorization": f"Bearer {operator}"}) as response:
            assert response.status == 200
        # The test phone of the token's holder takes Twilio's path without Twilio's signature; nobody else does.
        form = {"CallSid": call_sid(51), "AccountSid": ACCOUNT}
        assert (await voice(http, url, form))[0] == 403
        status, twiml = await voice(http, url, form, {"Authorization": f"Bearer {operator}"})
        assert status == 200 and token_of(twiml)
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(ws_url(url) + "?token=wrong")
        async with http.ws_connect(f"{ws_url(url)}?token={operator}") as ws:
            await ws.send_str(start(call_sid(51), token_of(twiml)))
            assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT  # the greeting
