#!/usr/bin/env python3
"""Voice-to-voice latency: caller turns through voicepipe with the simulated Twilio client.

Voice-to-voice = end of the caller's speech (as sent, in real time) -> first reply audio received.
Per-stage times come from the server's /stats; underruns are gaps inside a reply as Twilio would play it.
Prints p50/p95 per mode and number of simultaneous calls; asserts nothing.

  python scripts/bench.py                                  # 1 call, streaming+speculative vs naive
  python scripts/bench.py --calls 1,2,4,8 --turns 3        # simultaneous calls
  python scripts/bench.py --url http://127.0.0.1:5000      # a running server (its own mode only)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicepipe.cli import running_server  # noqa: E402
from voicepipe.config import Settings, load_settings  # noqa: E402
from voicepipe.engines.models import Models, load_models  # noqa: E402
from voicepipe.engines.tts import synthesize  # noqa: E402
from voicepipe.service.logs import setup_logging  # noqa: E402
from voicepipe.simulate import CallerTurn, CallResult, simulate_call  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "What time do you open tomorrow?", "Can you book a table for two?",
    "How much does the basic plan cost?", "Is there parking near the office?", "What colour is the sky?",
    "Please call me back later.", "Do you deliver on Sundays?", "Can I change my reservation?",
    "Where is your nearest shop?",
]
STAGES = ["vad_wait", "stt", "llm_first_token", "llm_first_sentence", "tts_first_audio", "voice_to_voice"]


def ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:6.0f}" if values else "   n/a"


def speak_questions(models: Models, directory: Path) -> list[Path]:
    rate = models.synthesizer.sample_rate
    paths = []
    for index, question in enumerate(QUESTIONS):
        path = directory / f"q{index}.wav"
        audio = synthesize(models.synthesizer, question)
        soundfile.write(path, np.concatenate([np.zeros(rate // 3, np.int16), audio]), rate)
        paths.append(path)
    return paths


async def signed_call(base: str, script: Sequence[Path | CallerTurn], settings: Settings) -> CallResult:
    """One simulated call, signed like Twilio when the server checks signatures."""
    return await simulate_call(base, script, auth_token=settings.twilio_auth_token, public_url=settings.webhook_url)


async def run_calls(base: str, calls: int, turns: int, audio: list[Path], settings: Settings) -> dict[str, Any]:
    """`calls` simultaneous calls of `turns` turns each; returns latencies, underruns and server stages."""
    scripts = [[audio[(c * turns + t) % len(audio)] for t in range(turns)] for c in range(calls)]
    results = await asyncio.gather(*(signed_call(base, script, settings) for script in scripts),
                                   return_exceptions=True)
    done = [r for r in results if not isinstance(r, BaseException)]
    for failure in (r for r in results if isinstance(r, BaseException)):
        print(f"  a call failed: {failure!r}", flush=True)
    turns_done = [t for r in done for t in r.turns]
    async with aiohttp.ClientSession() as http, http.get(f"{base}/stats") as response:
        sids = {r.call_sid for r in done}
        stats = [t for t in (await response.json())["turns"] if t["call_sid"] in sids]
    return {
        "latency": [t.voice_to_voice for t in turns_done if t.voice_to_voice is not None],
        "unanswered": sum(t.voice_to_voice is None for t in turns_done) + turns * (calls - len(done)),
        "underruns": sum(t.underruns for t in turns_done),
        "stages": {s: [t[s] for t in stats if t.get(s) is not None] for s in STAGES},
    }


async def bench(args: argparse.Namespace) -> None:
    settings = load_settings()
    settings = dataclasses.replace(settings, max_calls=max(settings.max_calls, *args.calls),
                                   device=args.device or settings.device)
    modes: dict[str, Settings | None] = {"server": None} if args.url else {
        "streaming+speculative": settings,
        **({} if args.no_naive else {"naive": dataclasses.replace(settings, speculative=False, streaming=False)}),
    }
    models = None if args.url else load_models(settings)
    with tempfile.TemporaryDirectory() as tmp:
        if args.audio:
            audio = args.audio
        else:
            voice = models or load_models(settings)
            audio = speak_questions(voice, Path(tmp))
        rows = []
        for mode, mode_settings in modes.items():
            async with contextlib.AsyncExitStack() as stack:
                base = args.url or await stack.enter_async_context(
                    running_server(mode_settings, models=models))  # type: ignore[arg-type]
                for calls in args.calls:
                    print(f"{mode}: {calls} simultaneous call(s) x {args.turns} turns ...", flush=True)
                    rows.append((mode, calls, await run_calls(base, calls, args.turns, audio, settings)))
        if args.barge_in and models is not None:
            await bench_barge_in(settings, models, args.barge_in, Path(tmp))
    device = models.device if models is not None else "server's"
    print(f"\nvoice-to-voice (caller's view, ms) and per-stage p50 (server's view, ms); models on {device}")
    header = f"{'mode':22s} {'calls':>5s} {'p50':>6s} {'p95':>6s} {'n':>4s} {'miss':>4s} {'underruns':>9s}"
    print(header + "".join(f" {s[:12]:>12s}" for s in STAGES))
    for mode, calls, r in rows:
        line = (f"{mode:22s} {calls:5d} {ms(r['latency'], 50)} {ms(r['latency'], 95)} {len(r['latency']):4d} "
                f"{r['unanswered']:4d} {r['underruns']:9d}")
        print(line + "".join(f" {ms(r['stages'][s], 50):>12s}" for s in STAGES))


async def bench_barge_in(settings: Settings, models: Models, trials: int, directory: Path) -> None:
    """Talk over a long reply `trials` times; print speech onset -> `clear` as the caller and server saw it."""
    rate = models.synthesizer.sample_rate
    clips = {}
    for name, text in {"story": "Please tell me a long story about a brave little dragon.",
                       "cut": "I have another question about my account instead."}.items():
        clips[name] = directory / f"{name}.wav"
        audio = np.concatenate([np.zeros(rate // 3, np.int16), synthesize(models.synthesizer, text)])
        soundfile.write(clips[name], audio, rate)
    caller, server = [], []
    async with running_server(dataclasses.replace(settings, llm_max_tokens=200), models=models) as base:
        for trial in range(trials):
            delay = 0.8 + 0.4 * (trial % 3)  # cut in at different points of the reply
            script: list[Path | CallerTurn] = [clips["story"], CallerTurn(audio=clips["cut"], interrupt_after=delay)]
            result = await signed_call(base, script, settings)
            if result.turns[1].clear_after_onset is not None:
                caller.append(result.turns[1].clear_after_onset)
            async with aiohttp.ClientSession() as http, http.get(f"{base}/stats?call_sid={result.call_sid}") as r:
                server += [t["barge_in"] for t in (await r.json())["turns"] if t.get("barge_in") is not None]
    print(f"\nbarge-in, speech onset -> clear ({trials} trials): caller's view p50 {ms(caller, 50)} ms "
          f"p95 {ms(caller, 95)} ms (n={len(caller)}); server's view p50 {ms(server, 50)} ms p95 {ms(server, 95)} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="*", type=Path, help="caller clips (default: questions spoken by Piper)")
    parser.add_argument("--url", help="a running server (default: start one in this process per mode)")
    parser.add_argument("--calls", type=lambda v: [int(x) for x in v.split(",")], default=[1],
                        help="comma-separated numbers of simultaneous calls (default 1)")
    parser.add_argument("--turns", type=int, default=10, help="turns per call (default 10)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive (no speculation, no streaming) run")
    parser.add_argument("--barge-in", type=int, default=0, metavar="N",
                        help="also measure N interruptions: speech onset -> clear (in-process server only)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="where the models run (default VOICEPIPE_DEVICE, auto)")
    args = parser.parse_args()
    setup_logging("WARNING")
    asyncio.run(bench(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
