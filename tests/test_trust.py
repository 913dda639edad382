"""Abuse, faults and load: each ends at most the call it hits, and the server says what is failing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import call_sid, serving, user_turns, wait_for
from voicepipe.config import Settings
from voicepipe.engines.models import Models
from voicepipe.simulate import CallRefused, simulate_call

pytestmark = pytest.mark.models
ROOT = Path(__file__).parent.parent
SILENT_FRAME = base64.b64encode(b"\xff" * 160).decode()


async def open_stream(http: aiohttp.ClientSession, url: str, name: str) -> aiohttp.ClientWebSocketResponse:
    """A stream opened the way Twilio opens one: /voice first, then `start` with the call token."""
    async with http.post(f"{url}/voice", data={"CallSid": call_sid(int(name, 36))}) as response:
        stream = ET.fromstring(await response.text()).find("./Connect/Stream")
    assert stream is not None
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    ws = await http.ws_connect(f"{url.replace('http', 'ws')}/media")
    await ws.send_str(json.dumps({"event": "start", "streamSid": f"MZ{name}", "start": {
        "streamSid": f"MZ{name}", "callSid": call_sid(int(name, 36)), "customParameters": params}}))
    return ws


def media(name: str) -> str:
    return json.dumps({"event": "media", "streamSid": f"MZ{name}", "media": {"payload": SILENT_FRAME}})


async def close_reason(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    while True:
        message = await ws.receive(timeout=10)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code, str(message.extra or "")


async def test_floods_and_a_deaf_client_end_alone_while_another_call_goes_on(
    base_settings: Settings, models: Models, speech_dir: Path
) -> None:
    settings = dataclasses.replace(base_settings, max_calls=8)
    async with serving(settings, models) as (url, ended), aiohttp.ClientSession() as http:
        call = asyncio.create_task(simulate_call(url, [speech_dir / "capital.wav"]))

        audio_flood = await open_stream(http, url, "audio")
        for _ in range(400):  # 8 s of audio, sent as fast as the socket takes it
            if audio_flood.closed:
                break
            await audio_flood.send_str(media("audio"))
        message_flood = await open_stream(http, url, "spam")
        for _ in range(3000):
            if message_flood.closed:
                break
            await message_flood.send_str(json.dumps({"event": "spam", "streamSid": "MZspam"}))
        flood_closes = [await close_reason(audio_flood), await close_reason(message_flood)]

        # A client that sends audio in real time but never echoes a mark: without echoes the server paces
        # its greeting at one 200 ms message per 2 s after the first 400 ms, instead of queueing it all.
        deaf = await open_stream(http, url, "deaf")
        for _ in range(300):  # 6 s
            await deaf.send_str(media("deaf"))
            await asyncio.sleep(0.02)
        received = []
        with contextlib.suppress(TimeoutError):
            while (message := await deaf.receive(timeout=0.5)).type == aiohttp.WSMsgType.TEXT:
                received.append(json.loads(message.data)["event"])
        await deaf.close()
        result = await call
        await wait_for(ended, 2)
    assert flood_closes == [(1008, "media arriving faster than real time"), (1008, "message flood")]
    assert 2 <= received.count("media") <= 6, received  # the greeting alone is 15 such messages
    (turn,) = result.turns
    assert turn.voice_to_voice is not None and turn.reply_seconds > 0.3


async def test_bad_webhook_bodies(base_settings: Settings, models: Models) -> None:
    async with serving(base_settings, models) as (url, _), aiohttp.ClientSession() as http:
        async with http.post(f"{url}/voice", data=b"x" * 200_000,
                             headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
            huge = response.status
        async with http.post(f"{url}/status", data=b"\xff\xfe not a form",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
            garbage = response.status
        async with http.get(f"{url}/healthz") as response:
            health = response.status
    assert (huge, garbage, health) == (413, 400, 200)


class SwitchableTranscriber:
    """The real transcriber, failing while `broken` is set (a model fault that lasts until it is fixed)."""

    def __init__(self, real: object) -> None:
        self.real, self.broken = real, True

    @property
    def busy(self) -> bool:
        return bool(self.real.busy)  # type: ignore[attr-defined]

    def transcribe(self, audio):  # type: ignore[no-untyped-def]
        if self.broken:
            raise RuntimeError("injected STT fault")
        return self.real.transcribe(audio)  # type: ignore[attr-defined]


async def test_a_failing_model_gets_apologies_shows_in_healthz_and_recovers(
    base_settings: Settings, models: Models, speech_dir: Path
) -> None:
    transcriber = SwitchableTranscriber(models.transcriber)
    faulty = dataclasses.replace(models, transcriber=transcriber)
    seen: list[tuple[int, list[str]]] = []
    async with serving(base_settings, faulty) as (url, ended), aiohttp.ClientSession() as http:

        async def watch_health() -> None:
            while True:
                async with http.get(f"{url}/healthz") as response:
                    seen.append((response.status, (await response.json())["failing"]))
                if seen[-1][0] == 503:
                    transcriber.broken = False  # the operator fixed it
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch_health())
        turns = [speech_dir / "thanks.wav"] * 3 + [speech_dir / "capital.wav"]
        result = await simulate_call(url, turns)
        await wait_for(ended)
        await asyncio.sleep(0.2)
        watcher.cancel()
    assert (503, ["stt"]) in seen and seen[-1] == (200, [])
    first, *_, last = result.turns
    assert any("apology" in m for m in first.marks)  # the caller heard the apology, not silence
    assert last.voice_to_voice is not None and last.reply_seconds > 0.3
    assert "capital" in user_turns(ended[0])[-1].lower()


async def test_load_beyond_the_maximum_is_answered_or_refused_cleanly(
    base_settings: Settings, models: Models, speech_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(base_settings, max_calls=4)
    clips = ["capital", "thanks", "colour", "thanks", "capital", "thanks"]
    with caplog.at_level(logging.WARNING):
        async with serving(settings, models) as (url, ended):
            outcomes = await asyncio.gather(
                *(simulate_call(url, [speech_dir / f"{clip}.wav"]) for clip in clips), return_exceptions=True
            )
            await wait_for(ended, 4)
    refused = [o for o in outcomes if isinstance(o, CallRefused)]
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(refused) == 2 and all("busy" in str(r) for r in refused)
    assert len(answered) == 4
    assert all(t.voice_to_voice is not None and t.reply_seconds > 0.3 for r in answered for t in r.turns)
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 2 and all("refused" in p for p in problems), problems  # the two busy calls only


# Runs in a network namespace of its own, where only loopback exists. An audit hook records every
# connection and name lookup that is not loopback; one deliberate probe shows that the hook and the block work.
OFFLINE_CALL = """
import ipaddress, json, socket, sys
attempts = []
def audit(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
        try:
            if not ipaddress.ip_address(host).is_loopback:
                attempts.append(host)
        except ValueError:
            attempts.append(host)
    elif event == "socket.getaddrinfo" and args[0] not in ("localhost", "127.0.0.1", "::1", None):
        attempts.append(str(args[0]))
sys.addaudithook(audit)
probe = socket.socket()
probe.settimeout(2)
blocked = probe.connect_ex(("203.0.113.7", 443)) != 0
probe.close()
from voicepipe.cli import main
code = main(["simulate", sys.argv[1], "--no-transcribe"])
print(json.dumps({"exit": code, "probe_blocked": blocked, "attempts": attempts}))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_call_works_with_the_network_cut_off(speech_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "offline_call.py"
    script.write_text(OFFLINE_CALL)
    env = {**os.environ, "VOICEPIPE_MODELS_DIR": str(ROOT / "models"), "TWILIO_AUTH_TOKEN": "",
           "WEBHOOK_URL": "", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": ""}
    command = f"ip link set lo up && exec {sys.executable} {script} {speech_dir / 'capital.wav'}"
    done = subprocess.run(["unshare", "--net", "sh", "-c", command], check=False, env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"exit": 0, "probe_blocked": True, "attempts": ["203.0.113.7"]}, done.stdout
