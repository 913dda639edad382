#!/usr/bin/env python3
"""Voice-to-voice latency: caller turns through a voicepipe server with the simulated Twilio client.

Voice-to-voice = end of the caller's speech (as sent, in real time) -> first reply audio received.
Per-stage times come from the server's /stats. Prints p50/p95; asserts nothing.

  python scripts/bench.py                     # in-process server, 10 turns of Piper-spoken questions
  python scripts/bench.py --url http://127.0.0.1:5000 --turns 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

import aiohttp
import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicepipe.cli import running_server  # noqa: E402
from voicepipe.config import load_settings  # noqa: E402
from voicepipe.logs import setup_logging  # noqa: E402
from voicepipe.simulate import simulate_call  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "What time do you open tomorrow?", "Can you book a table for two?",
    "How much does the basic plan cost?", "Is there parking near the office?", "What colour is the sky?",
    "Please call me back later.", "Do you deliver on Sundays?", "Can I change my reservation?",
    "Where is your nearest shop?",
]
STAGES = ["vad_wait", "stt", "llm_first_token", "llm_first_sentence", "tts_first_audio", "voice_to_voice"]


def percentiles(values: list[float]) -> str:
    if not values:
        return "   n/a"
    p50, p95 = np.percentile(values, [50, 95])
    return f"p50 {p50 * 1000:6.0f} ms   p95 {p95 * 1000:6.0f} ms   (n={len(values)})"


def speak_questions(directory: Path, count: int) -> list[Path]:
    from piper import PiperVoice

    settings = load_settings()
    voice = PiperVoice.load(settings.tts_voice_path)
    rate = voice.config.sample_rate
    paths = []
    for index in range(count):
        audio = np.concatenate([c.audio_int16_array for c in voice.synthesize(QUESTIONS[index % len(QUESTIONS)])])
        path = directory / f"q{index}.wav"
        soundfile.write(path, np.concatenate([np.zeros(rate // 3, np.int16), audio]), rate)
        paths.append(path)
    return paths


async def bench(url: str | None, turns: int, turns_per_call: int, audio: list[Path]) -> None:
    settings = load_settings()
    async with contextlib.AsyncExitStack() as stack:
        base = url or await stack.enter_async_context(running_server(settings))
        latencies: list[float] = []
        call_sids = []
        for start in range(0, turns, turns_per_call):
            clips = [audio[i % len(audio)] for i in range(start, min(turns, start + turns_per_call))]
            result = await simulate_call(base, clips)
            call_sids.append(result.call_sid)
            latencies += [t.voice_to_voice for t in result.turns if t.voice_to_voice is not None]
            missing = sum(t.voice_to_voice is None for t in result.turns)
            print(f"call {result.call_sid[:10]}: " + ", ".join(
                f"{t.voice_to_voice * 1000:.0f} ms" if t.voice_to_voice is not None else "no reply"
                for t in result.turns) + (f"  ({missing} unanswered)" if missing else ""), flush=True)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/stats") as response:
                stats = [t for t in (await response.json())["turns"] if t["call_sid"] in call_sids]
    print(f"\nvoice-to-voice, measured by the caller:  {percentiles(latencies)}")
    print("per stage, measured by the server:")
    for stage in STAGES:
        print(f"  {stage:20s} {percentiles([t[stage] for t in stats if t.get(stage) is not None])}")
    speculative = sum(bool(t["speculative"]) for t in stats)
    print(f"  replies started speculatively: {speculative} of {len(stats)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="*", type=Path, help="caller clips (default: questions spoken by Piper)")
    parser.add_argument("--url", help="a running server (default: start one in this process)")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--turns-per-call", type=int, default=5)
    args = parser.parse_args()
    setup_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        audio = args.audio or speak_questions(Path(tmp), min(args.turns, len(QUESTIONS)))
        asyncio.run(bench(args.url, args.turns, args.turns_per_call, audio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
