"""End to end: the real server on a real port, the real models, and a simulated Twilio on a real WebSocket."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.conftest import FIXTURES, JFK_TRANSCRIPT, word_error_rate, words
from tests.helpers import call_sid, serving, user_turns, wait_for, with_turn
from voicepipe.config import Settings
from voicepipe.engines.models import Models
from voicepipe.simulate import CallerTurn, simulate_call

pytestmark = pytest.mark.models


async def test_call_answers_the_fixture_sentence(base_settings: Settings, models: Models) -> None:
    # JFK pauses ~1 s between phrases; a fixed 1.5 s end of turn (no turn model) keeps his sentence one turn.
    settings = dataclasses.replace(with_turn(base_settings, end_of_turn_ms=1500), turn_model="")
    async with serving(settings, models) as (url, ended):
        result = await simulate_call(url, [FIXTURES / "jfk.flac"])
        await wait_for(ended)
    assert result.greeting_audio.size > 8000  # the greeting was spoken (over a second of audio)
    (turn,) = result.turns
    assert turn.voice_to_voice is not None and turn.voice_to_voice > 0
    assert turn.reply_seconds > 0.3
    assert any(m.startswith("t1s1.") for m in turn.marks)  # marks per 200 ms of each sentence, echoed once played
    (said,) = user_turns(ended[0])
    assert word_error_rate(JFK_TRANSCRIPT, said) < 0.2, said
    heard = models.transcriber.transcribe(turn.reply_audio).text
    assert len(words(heard)) >= 2, heard
    assert ended[0].history[-1]["role"] == "assistant"


async def test_conversation_keeps_its_context_across_turns(
    base_settings: Settings, models: Models, speech_dir: Path
) -> None:
    async with serving(base_settings, models) as (url, ended):
        result = await simulate_call(url, [speech_dir / "capital.wav", speech_dir / "colour.wav"])
        await wait_for(ended)
    assert all(t.voice_to_voice is not None and t.reply_seconds > 0.3 for t in result.turns)
    history = ended[0].history
    assert [m["role"] for m in history] == ["system", "assistant", "user", "assistant", "user", "assistant"], history
    first, second = user_turns(ended[0])
    # Transcription accuracy is measured in test_stt; here the turns must be the caller's, in order.
    assert word_error_rate("What is the capital of France?", first) <= 0.35, first
    assert word_error_rate("What color is the sky on a clear day?", second) <= 0.35, second


async def test_a_hesitation_is_not_the_end_of_the_turn(
    base_settings: Settings, models: Models, speech_dir: Path
) -> None:
    # The 400 ms gap starts a speculative reply (pause 200 ms) that must be thrown away when speech resumes; the
    # fixed 700 ms end of turn (no turn model) is longer than the gap.
    settings = dataclasses.replace(with_turn(base_settings, pause_ms=200, end_of_turn_ms=700), turn_model="")
    async with serving(settings, models) as (url, ended):
        result = await simulate_call(url, [speech_dir / "hesitant.wav"])
        await wait_for(ended)
    (said,) = user_turns(ended[0])
    assert word_error_rate("Could you tell me what the weather is like in Paris?", said) <= 0.2, said
    (turn,) = result.turns
    assert turn.voice_to_voice is not None and turn.voice_to_voice > 0  # nothing was sent during the gap
    assert [m["role"] for m in ended[0].history].count("assistant") == 2  # greeting + one reply


async def test_webhooks_and_health(base_settings: Settings, models: Models) -> None:
    settings = dataclasses.replace(base_settings, webhook_url="https://example.ngrok.app")
    async with serving(settings, models) as (url, _), aiohttp.ClientSession() as http:
        async with http.post(f"{url}/voice", data={"CallSid": call_sid(1)}) as response:
            twiml = await response.text()
            assert response.content_type == "application/xml"
        assert '<Stream url="wss://example.ngrok.app/media">' in twiml
        assert '<Parameter name="voicepipe_token" value="' in twiml
        async with http.post(f"{url}/status", data={"CallSid": call_sid(1), "CallStatus": "ringing"}) as response:
            assert response.status == 204
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"


async def test_a_broken_stream_ends_alone(base_settings: Settings, models: Models, speech_dir: Path) -> None:
    async with serving(base_settings, models) as (url, ended), aiohttp.ClientSession() as http:
        call = asyncio.create_task(simulate_call(url, [speech_dir / "thanks.wav"]))
        closes = []
        for frames in (["{not json"], [json.dumps({"event": "media", "streamSid": "MZ9", "media": {"payload": "/w=="}})],
                       [json.dumps({"event": "start", "streamSid": "MZ9", "start": {
                           "streamSid": "MZ9", "callSid": call_sid(9), "customParameters": {"voicepipe_token": "forged"}}})]):
            async with http.ws_connect(f"{url.replace('http', 'ws')}/media") as ws:
                for frame in frames:
                    await ws.send_str(frame)
                message = await ws.receive(timeout=5)
                assert message.type == aiohttp.WSMsgType.CLOSE
                closes.append(ws.close_code)
        for payload in (b"\x00\x01binary", "x" * 100_000):  # a binary frame; a text frame over the 64 KB limit
            async with http.ws_connect(f"{url.replace('http', 'ws')}/media") as ws:
                await (ws.send_bytes(payload) if isinstance(payload, bytes) else ws.send_str(payload))
                message = await ws.receive(timeout=5)
                assert message.type == aiohttp.WSMsgType.CLOSE
                closes.append(ws.close_code)
        result = await call
        await wait_for(ended)
    assert closes == [1003, 1008, 1008, 1003, 1009]
    assert result.turns[0].voice_to_voice is not None and result.turns[0].reply_seconds > 0.3


async def test_simultaneous_calls_are_all_answered_without_gaps(
    base_settings: Settings, models: Models, speech_dir: Path
) -> None:
    async with serving(base_settings, models) as (url, ended):
        results = await asyncio.gather(
            simulate_call(url, [speech_dir / "capital.wav", speech_dir / "thanks.wav"]),
            simulate_call(url, [speech_dir / "colour.wav", speech_dir / "thanks.wav"]),
            simulate_call(url, [speech_dir / "thanks.wav"]),
        )
        await wait_for(ended, 3)
    turns = [t for r in results for t in r.turns]
    assert all(t.voice_to_voice is not None and t.reply_seconds > 0.3 for t in turns)
    assert sum(t.underruns for t in turns) == 0  # no reply ran dry while it played
    assert {len(user_turns(s)) for s in ended} == {1, 2}


async def test_naive_mode_answers_too(base_settings: Settings, models: Models, speech_dir: Path) -> None:
    settings = dataclasses.replace(base_settings, speculative=False, streaming=False)
    async with serving(settings, models) as (url, ended):
        result = await simulate_call(url, [speech_dir / "capital.wav"])
        await wait_for(ended)
    (turn,) = result.turns
    assert turn.voice_to_voice is not None and turn.reply_seconds > 0.3
    assert {m.split(".")[0] for m in turn.marks} == {"t1s1"}  # the whole reply went out as one piece


async def test_calls_above_the_maximum_hear_a_busy_message(base_settings: Settings, models: Models) -> None:
    settings = dataclasses.replace(base_settings, max_calls=1)
    async with serving(settings, models) as (url, _), aiohttp.ClientSession() as http:
        async with http.post(f"{url}/voice", data={"CallSid": call_sid(1)}) as response:
            assert "<Connect>" in await response.text()
        async with http.post(f"{url}/voice", data={"CallSid": call_sid(2)}) as response:
            busy = await response.text()
    assert "<Connect>" not in busy
    assert '<Say language="en-US" voice="Polly.Joanna">Sorry, all our lines are busy' in busy and "<Hangup />" in busy


async def test_an_interruption_clears_and_the_history_keeps_only_what_was_heard(
    base_settings: Settings, models: Models, speech_dir: Path
) -> None:
    settings = dataclasses.replace(base_settings, llm_max_tokens=200)
    async with serving(settings, models) as (url, ended):
        result = await simulate_call(url, [
            speech_dir / "story.wav",
            CallerTurn(audio=speech_dir / "stop.wav", interrupt_after=1.0),
        ])
        await wait_for(ended)
    story, interruption = result.turns
    assert result.cleared >= 1
    # The clear answers the caller's speech (it comes after its onset). How fast is measured by
    # scripts/bench.py --barge-in, not asserted here: tests do not assert on wall-clock time.
    assert interruption.clear_after_onset is not None and interruption.clear_after_onset > 0
    history = ended[0].history
    roles = [m["role"] for m in history]
    assert roles == ["system", "assistant", "user", "assistant", "user", "assistant"], history
    heard = history[3]["content"]
    # About 1 s of the story played before the caller spoke, plus the onset -> clear reaction: a few words,
    # far short of what a 200-token story would be.
    assert 1 <= len(heard.split()) <= 14, heard
    assert story.reply_seconds < 4.0  # paced: we never ran far ahead of what Twilio played


async def test_noise_alone_gets_no_reply(base_settings: Settings, models: Models, tmp_path: Path) -> None:
    import numpy as np
    import soundfile

    from tests.conftest import make_noises

    noise = np.concatenate(list(make_noises().values()))
    soundfile.write(tmp_path / "noise.wav", noise, 8000)
    settings = dataclasses.replace(base_settings, silence_reprompt_s=60.0)  # only the noise may speak here
    async with serving(settings, models) as (url, ended):
        result = await simulate_call(url, [tmp_path / "noise.wav"], reply_timeout=3.0)
        await wait_for(ended)
    assert result.turns[0].voice_to_voice is None
    assert [m["role"] for m in ended[0].history] == ["system", "assistant"]


async def test_a_keypress_reaches_the_model(base_settings: Settings, models: Models) -> None:
    async with serving(base_settings, models) as (url, ended):
        result = await simulate_call(url, [CallerTurn(dtmf="3")])
        await wait_for(ended)
    assert result.turns[0].voice_to_voice is not None and result.turns[0].reply_seconds > 0.3
    assert "(The caller pressed 3 on the phone keypad.)" in user_turns(ended[0])


async def test_silence_reprompts_then_hangs_up(base_settings: Settings, models: Models) -> None:
    settings = dataclasses.replace(base_settings, silence_reprompt_s=2.0, silence_hangup_s=2.0)
    async with serving(settings, models) as (url, ended):
        result = await simulate_call(url, [], stay_on_line=20.0)
        await wait_for(ended)
    assert result.hung_up
    said = [m["content"] for m in ended[0].history if m["role"] == "assistant"]
    assert said[1:] == ["Are you still there?", "It seems you're busy. Goodbye!"]
    assert len(result.after_turns_audio) > 2 * 8000  # both lines were played before the hang-up


async def test_goodbye_ends_the_call(base_settings: Settings, models: Models, speech_dir: Path) -> None:
    async with serving(base_settings, models) as (url, ended):
        result = await simulate_call(url, [speech_dir / "goodbye.wav"], stay_on_line=10.0)
        await wait_for(ended)
    history = [m["content"] for m in ended[0].history]
    assert result.hung_up, (ended[0].outcome, history)
    assert history[-1] == "Thank you for calling. Goodbye!", history


async def test_stop_ends_every_task_of_the_call(base_settings: Settings, models: Models, speech_dir: Path) -> None:
    snapshots: list[list[str]] = []  # the call's live tasks, every 10 ms

    async def watch() -> None:
        while True:
            names = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("call:")]
            if names:
                snapshots.append(names)
            await asyncio.sleep(0.01)

    async with serving(base_settings, models) as (url, ended):
        watcher = asyncio.create_task(watch())
        # Hang up while the agent is still answering: the reply's tasks must go with the call.
        result = await simulate_call(url, [speech_dir / "story.wav"], reply_timeout=0.5, quiet_seconds=0.1)
        await wait_for(ended)
        watcher.cancel()
        left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(f"call:{result.call_sid}:")]
    assert any(":reply" in name for name in snapshots[-1]), snapshots[-1]  # it was mid-answer at the hang-up
    assert left == []


class FailingTranscriber:
    """The real transcriber, made to fail every transcription of the caller's first utterance (a model fault):
    the speculative one at each of its pauses, however many the turn detector finds, and the fresh try at its end.
    Each is a prefix of that utterance: all begin as the first one does (its first second holds the pre-roll
    before the speech, which may be silence in every utterance, and the speech's start)."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.first: np.ndarray | None = None

    @property
    def busy(self) -> bool:
        return bool(self.real.busy)  # type: ignore[attr-defined]

    def transcribe(self, audio):  # type: ignore[no-untyped-def]
        if self.first is None:
            self.first = audio[:8000].copy()
        shared = min(len(audio), len(self.first))
        if np.array_equal(audio[:shared], self.first[:shared]):
            raise RuntimeError("injected STT fault")
        return self.real.transcribe(audio)  # type: ignore[attr-defined]


async def test_a_model_fault_gets_an_apology_and_the_call_goes_on(
    base_settings: Settings, models: Models, speech_dir: Path
) -> None:
    faulty = dataclasses.replace(models, transcriber=FailingTranscriber(models.transcriber))
    async with serving(base_settings, faulty) as (url, ended):
        result = await simulate_call(url, [speech_dir / "capital.wav", speech_dir / "thanks.wav"])
        await wait_for(ended)
    apology, answer = result.turns
    assert apology.reply_seconds > 1.0 and any(m.startswith("t") and "apology" in m for m in apology.marks)
    assert answer.voice_to_voice is not None and answer.reply_seconds > 0.3
    assert word_error_rate("Thank you very much.", user_turns(ended[0])[-1]) <= 0.35
