"""SIGTERM on a real `voicepipe serve` process with a call in progress."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import call_sid, free_port
from voicepipe.simulate import simulate_call

pytestmark = pytest.mark.models
ROOT = Path(__file__).parent.parent


async def test_sigterm_refuses_new_calls_says_goodbye_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "VOICEPIPE_MODELS_DIR": str(ROOT / "models"), "VOICEPIPE_SHUTDOWN_GRACE_S": "1",
           "VOICEPIPE_SILENCE_REPROMPT_S": "60", "TWILIO_AUTH_TOKEN": "", "WEBHOOK_URL": ""}
    server = subprocess.Popen([sys.executable, "-m", "voicepipe", "serve", "--port", str(port)], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(240):
                try:
                    async with http.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.25)
            call = asyncio.create_task(simulate_call(url, [], stay_on_line=30.0))
            await asyncio.sleep(4.0)  # the greeting has played; the caller is on the line
            server.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with http.post(f"{url}/voice", data={"CallSid": call_sid(2)}) as response:
                busy = await response.text()
            result = await asyncio.wait_for(call, 30)
        exit_code = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    output = server.stdout.read() if server.stdout else ""
    assert "<Connect>" not in busy and "busy" in busy
    assert result.hung_up
    assert len(result.after_turns_audio) > 8000 * 2  # the goodbye line played before the hang-up
    assert exit_code == 0, output
    assert "Traceback" not in output, output
