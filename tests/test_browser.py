"""The browser pages in a real browser: Debian's chromium driven by Playwright, its microphone a WAV of speech
(Chrome's fake capture device). The page places a call through /voice and /media with the real models; the agent's
audio that came back is transcribed; then the dashboard shows the call and its turns."""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.conftest import word_error_rate, words
from tests.helpers import serving, wait_for
from voicepipe.audio.codec import ulaw_to_pcm16
from voicepipe.audio.resample import resample
from voicepipe.callers import piper_speech
from voicepipe.config import Settings
from voicepipe.engines.models import Models

pytestmark = pytest.mark.models
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUESTION = "What is the capital of France?"
GREETING_SECONDS = 4.0  # the caller waits for the greeting to finish, as a person does


@pytest.fixture(scope="module")
def caller_wav(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Path:
    """The fake microphone: quiet through the greeting, the question, then quiet (played once, not looped)."""
    speech = piper_speech(models.synthesizer.voice, QUESTION)  # type: ignore[attr-defined]
    audio = np.concatenate([np.zeros(int(GREETING_SECONDS * 8000), np.int16), speech, np.zeros(8 * 8000, np.int16)])
    path = tmp_path_factory.mktemp("browser") / "caller.wav"
    soundfile.write(path, resample(audio, 8000, 48000), 48000, subtype="PCM_16")
    return path


async def test_a_call_from_the_browser_phone_shows_on_the_dashboard(
    base_settings: Settings, models: Models, caller_wav: Path, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is needed: scripts/test_deps.sh installs it"
    settings = dataclasses.replace(base_settings, data_dir=tmp_path / "data", transcripts=True)
    shots = Path(os.environ.get("VOICEPIPE_SCREENSHOTS", tmp_path))
    async with serving(settings, models) as (url, ended), async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={caller_wav}%noloop", "--autoplay-policy=no-user-gesture-required"])
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{url}/phone")
        await page.click("#call")
        await page.wait_for_function("() => window.voicepipe.state === 'connected'", timeout=20_000)
        # The turn is answered: its timings reach the page (from /stats), and the reply's audio the speaker.
        await page.wait_for_function("() => window.voicepipe.turns.some(t => t.voice_to_voice !== null)",
                                     timeout=60_000)
        await page.wait_for_selector("#turns tbody tr", timeout=5_000)
        await page.wait_for_selector("#transcript .user", timeout=10_000)
        await page.wait_for_timeout(4_000)  # the rest of the reply plays
        await page.screenshot(path=shots / "phone.png", full_page=True)
        received = await page.evaluate("() => window.voicepipe.received")
        marks = await page.evaluate("() => window.voicepipe.marksEchoed")
        call_sid = await page.evaluate("() => window.voicepipe.callSid")
        await page.click("#hangup")
        await wait_for(ended)

        await page.goto(f"{url}/dashboard")
        row = page.locator(f'tr[data-call-sid="{call_sid}"]')
        await row.wait_for(timeout=10_000)
        await row.click()
        await page.wait_for_selector("#timeline rect.stage", timeout=10_000)
        stages = await page.locator("#timeline rect.stage").count()
        outcome = await row.locator("td").nth(3).inner_text()
        histogram_bars = await page.locator("#histogram rect").count()
        counted = await page.locator("#events text").all_text_contents()
        await page.screenshot(path=shots / "dashboard.png", full_page=True)
        await browser.close()
    assert not errors, errors
    # What came back over the page's socket: the greeting, then the answer; the browser echoed marks.
    heard = models.transcriber.transcribe(ulaw_to_pcm16(b"".join(base64.b64decode(p) for p in received))).text
    greeting_words = len(words(settings.greeting))
    assert word_error_rate(settings.greeting, " ".join(words(heard)[:greeting_words])) <= 0.2, heard
    assert len(words(heard)) > greeting_words + 2 and marks > 0, heard  # and an answer after it
    # The caller's question went in through the page's AudioWorklet as mu-law and was heard as said.
    (call,) = ended
    assert [m["content"] for m in call.history if m["role"] == "user"] and word_error_rate(
        QUESTION, next(m["content"] for m in call.history if m["role"] == "user")) <= 0.2
    assert call.call_sid == call_sid and outcome == "caller_hung_up"
    assert stages >= 3 and histogram_bars == 30
    assert counted[::2] == ["barge-ins", "false alarms resumed", "cut-ins", "pauses judged early", "LLM fallbacks"]
    assert all(count.isdigit() for count in counted[1::2]), counted
