#!/usr/bin/env python3
"""Voice-to-voice latency: caller turns through voicepipe with the simulated Twilio client.

Voice-to-voice = end of the caller's speech (as sent, in real time) -> first reply audio received.
Per-stage times come from the server's /stats; underruns are gaps inside a reply as Twilio would play it.
Prints p50/p95 per mode and number of simultaneous calls; asserts nothing.

  python scripts/bench.py                                  # 1 call, streaming+speculative vs naive
  python scripts/bench.py --calls 1,2,4,8 --turns 3        # simultaneous calls
  python scripts/bench.py --url http://127.0.0.1:5000      # a running server (its own mode only)
  python scripts/bench.py --turn-taking --no-naive         # + multi-clause utterances: cut-ins, turn decisions
  VOICEPIPE_TURN_MODEL=off VOICEPIPE_END_OF_TURN_MS=550 python scripts/bench.py ...   # the fixed-silence rule
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicepipe.audio.turn import Paused, Quieted, SpeechResumed, SpeechStarted, TurnDetector, TurnSettings
from voicepipe.audio.vad import SileroStream
from voicepipe.callers import espeak_speech, piper_speech, with_pauses, write_clip  # noqa: E402
from voicepipe.cli import running_server  # noqa: E402
from voicepipe.config import DEFAULT_GREETINGS, DEFAULT_SYSTEM_PROMPTS, Settings, load_settings  # noqa: E402  # noqa: E402
from voicepipe.conversation.judge import LONGER_SILENCE_CUES
from voicepipe.conversation.session import turn_judge
from voicepipe.engines.models import Models, load_models  # noqa: E402
from voicepipe.engines.stt import WhisperTranscriber  # noqa: E402
from voicepipe.engines.turn_text import LlamaTextTurn
from voicepipe.service.logs import setup_logging  # noqa: E402
from voicepipe.simulate import CallerTurn, CallResult, load_audio_8k, simulate_call  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "What time do you open tomorrow?", "Can you book a table for two?",
    "How much does the basic plan cost?", "Is there parking near the office?", "What colour is the sky?",
    "Please call me back later.", "Do you deliver on Sundays?", "Can I change my reservation?",
    "Where is your nearest shop?",
]
STAGES = ["vad_wait", "turn_decision", "stt", "llm_first_token", "llm_first_sentence", "tts_first_audio",
          "voice_to_voice"]


def ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:6.0f}" if values else "   n/a"


def speak_questions(models: Models, directory: Path) -> list[Path]:
    voice = models.synthesizer.voice  # type: ignore[attr-defined]
    return [write_clip(directory / f"q{index}.wav", with_pauses([piper_speech(voice, question)], []))
            for index, question in enumerate(QUESTIONS)]


FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
# Utterances with pauses: (parts, gaps in seconds, the words before each pause finish a thought?). Spoken at
# several rates; Spanish by espeak-ng. A cut-in at an unfinished thought is rude; after a finished sentence
# it is forgivable, if the agent yields at once.
MULTI_CLAUSE = {
    "en": [
        (["I would like to book a table for", "four people tomorrow night."], [0.6], False),
        (["My phone number is five five five", "one two three four."], [0.8], False),
        (["Can you tell me the opening hours and", "whether you deliver on Sundays?"], [0.5], False),
        (["I need to change my appointment because", "I have to work that day."], [0.9], False),
        (["Um", "I was wondering if you have any rooms free this weekend."], [0.7], False),
        (["The order number is seven eight", "nine two", "four four."], [1.0, 0.6], False),
        (["I'm calling about the invoice from", "last month."], [0.6], False),
        (["Could I speak to the manager or", "someone from the billing team?"], [0.7], False),
        (["I want to cancel my subscription, but", "only after this month."], [0.8], False),
        (["We are looking for a flat with", "two bedrooms near the centre."], [0.4], False),
        (["I have a question about my bill.", "It seems too high this month."], [0.8], True),
        (["Hello, I'm calling from the clinic.", "Is this a good time to talk?"], [0.7], True),
    ],
    "es": [
        (["Quiero reservar una mesa para", "cuatro personas mañana."], [0.6], False),
        (["Mi número de teléfono es cinco cinco cinco", "uno dos tres."], [0.9], False),
        (["Necesito cambiar la cita porque", "tengo que trabajar ese día."], [0.7], False),
        (["Eh", "quería saber si tienen habitaciones libres."], [0.6], False),
        (["Llamo por la factura del", "mes pasado."], [0.8], False),
        (["Quiero cancelar mi suscripción, pero", "solo después de este mes."], [0.5], False),
        (["¿Podría hablar con el encargado o", "con alguien de facturación?"], [1.0], False),
        (["Tengo una pregunta sobre mi factura.", "Creo que es demasiado alta."], [0.8], True),
    ],
}
# Real recordings with pauses inside (tests/fixtures/README.md): (file, the words before the pause finish it?)
RECORDED = {
    "en": [("en_vosk_digits.wav", False), ("en_ljspeech_two_clauses.wav", True),
           ("en_picovoice_wakeword_pause_command.wav", False)],
    "es": [("es_fleurs_es_decir_pause.ogg", False), ("es_fleurs_blogs_long_pauses.ogg", False),
           ("es_fleurs_cierto_question.ogg", True)],
}
CUT_IN = 0.1  # seconds of agent audio over the caller's speech
IN_SCOPE_PAUSE = 1.0  # issue 13's bar: no cut-in at an unfinished thought with pauses up to this long (seconds)
RATES = (1.0, 0.85, 1.2)  # Piper length_scale: normal, faster, slower
SPANISH_WPM = (150, 175, 130)


def multi_clause_clips(models: Models, directory: Path) -> list[tuple[str, Path, bool, float]]:
    """(language, clip, the thought was complete at the pauses, the longest pause) for every utterance."""
    voice = models.synthesizer.voice  # type: ignore[attr-defined]
    clips = []
    for language, utterances in MULTI_CLAUSE.items():
        for index, (parts, gaps, complete) in enumerate(utterances):
            if language == "en":
                audio = [piper_speech(voice, part, RATES[index % 3]) for part in parts]
            else:
                audio = [espeak_speech(part, "es", SPANISH_WPM[index % 3]) for part in parts]
            path = write_clip(directory / f"{language}{index}.wav", with_pauses(audio, gaps))
            clips.append((language, path, complete, max(gaps)))
    for language, recorded in RECORDED.items():
        clips += [(language, FIXTURES / name, complete, longest_pause(models, FIXTURES / name))
                  for name, complete in recorded]
    return clips


def longest_pause(models: Models, path: Path) -> float:
    """The longest pause inside a recording, in seconds, as the server's voice activity detection hears it
    (a recording's pauses are where its speaker made them; the synthetic clips' are the gaps put in)."""
    detector = TurnDetector(TurnSettings(end_of_turn_ms=10_000), SileroStream(models.silero).feed
                            if models.silero is not None else None)
    longest, speech_end_ms = 0, 0
    for event in detector.feed(load_audio_8k(path)):
        if isinstance(event, Paused):
            speech_end_ms = event.speech_end_ms
        elif isinstance(event, SpeechResumed):
            longest = max(longest, event.at_ms - speech_end_ms)
    return longest / 1000


async def instant_commits(settings: Settings, models: Models, path: Path) -> list[tuple[int, int | None]]:
    """Each pause of a clip as the server's detector hears it: (the silence after which a machine whose models
    take no time would end the turn there, how long the caller actually paused, None after their last words).
    The server's rule (session._at_pause) with the real models, minus the time they take: the decision alone.
    `models`: as a GPU box loads them (the text turn model too, by default). No turn model: the fixed silence."""
    turn_model = models.turn_model
    judge = turn_judge(settings, models) if turn_model is not None else None
    end_of_turn_ms = settings.max_silence_ms if turn_model is not None else settings.turn.end_of_turn_ms
    detector = TurnDetector(dataclasses.replace(settings.turn, end_of_turn_ms=end_of_turn_ms),
                            SileroStream(models.silero).feed if models.silero is not None else None)
    samples = load_audio_8k(path)
    samples = np.concatenate([samples, np.zeros(8 * settings.max_silence_ms, dtype=np.int16)])
    pauses: list[tuple[int, int | None]] = []
    earlier, paused_at = "", 0
    quiet: Quieted | None = None  # where whisper began, ahead of the pause
    for chunk_start in range(0, len(samples), 160):
        for event in detector.feed(samples[chunk_start : chunk_start + 160]):
            if isinstance(event, SpeechResumed | SpeechStarted) and pauses and pauses[-1][1] is None:
                pauses[-1] = (pauses[-1][0], event.at_ms - paused_at)  # (a new utterance: the turn had ended)
            if isinstance(event, Quieted):
                quiet = event
            if not isinstance(event, Paused):
                continue
            paused_at = event.speech_end_ms
            if judge is None or turn_model is None:
                pauses.append((settings.turn.end_of_turn_ms, None))
                continue
            # Whisper's words from where it began, as in the server (no voiced frame since: the same words).
            began = quiet if quiet is not None and quiet.speech_end_ms == event.speech_end_ms else event
            transcript = models.transcriber.transcribe(began.audio)
            words = transcript.text, transcript.avg_logprob
            judgment = await judge.judge(event.audio, asyncio.sleep(0, words), earlier)
            earlier = transcript.text
            if judgment.cue in LONGER_SILENCE_CUES:
                after = settings.unsure_words_ms
            elif judgment.done:
                after = settings.turn.pause_ms
            elif judgment.cue:
                after = settings.max_silence_ms
            else:  # asked again once the silence is turn_recheck_ms long, else the fixed silence ends it
                recheck = settings.turn_recheck_ms
                end = (event.speech_end_ms + recheck) * 8
                again = recheck > 0 and turn_model.probability_done(
                    np.concatenate([event.audio, samples[chunk_start + 160 : end]])) >= settings.turn_threshold
                after = recheck if again else settings.turn.end_of_turn_ms
            pauses.append((after, None))
    return pauses


def spanish(settings: Settings, models: Models) -> tuple[Settings, Models]:
    """Spanish on the offline models: the multilingual whisper; the English LLM and voice answer (no matter)."""
    es = dataclasses.replace(settings, language="es", stt_model="whisper-base",
                             system_prompt=DEFAULT_SYSTEM_PROMPTS["es"], greeting=DEFAULT_GREETINGS["es"])
    transcriber = WhisperTranscriber(es.stt_model_path, "es", compute_type="int8")
    return es, dataclasses.replace(models, transcriber=transcriber)


async def bench_turn_taking(settings: Settings, models: Models, directory: Path) -> None:
    """Each multi-clause utterance as one call: did the agent talk before the caller finished, and for how long."""
    clips = multi_clause_clips(models, directory)
    # The decision alone is a GPU box's view: it reads the words with the text turn model, as "auto" does there.
    text_path = settings.turn_text_model_path("cuda")
    text_model = models.turn_text_model or (LlamaTextTurn(text_path) if text_path is not None else None)
    rows = []
    rows_instant: list[tuple[str, bool, float, list[bool]]] = []  # per clip: would end the turn at each pause
    for language in ("en", "es"):
        lang_settings, lang_models = (settings, models) if language == "en" else spanish(settings, models)
        async with running_server(lang_settings, models=lang_models) as base:
            for clip_language, path, complete, gap in clips + [("en", FIXTURES / "jfk.flac", False, 1.26)]:
                if clip_language != language:
                    continue
                instant = await instant_commits(lang_settings, dataclasses.replace(
                    lang_models, turn_text_model=text_model), path)
                rows_instant.append((path.name, complete, gap, [a < p for a, p in instant if p is not None]))
                result = await signed_call(base, [path], lang_settings)
                async with aiohttp.ClientSession() as http, http.get(f"{base}/stats?call_sid={result.call_sid}") as r:
                    turns = (await r.json())["turns"]
                turn = result.turns[0]
                rows.append((path.name, complete, gap, turn.talked_over, turns, turn.talked_over_voice))
    print(f"\nmulti-clause utterances (turn model: {settings.turn_model or 'off'}, "
          f"max silence {settings.max_silence_ms} ms, fixed end of turn {settings.turn.end_of_turn_ms} ms)")
    print(f"{'clip':42s} {'done@pause':>10s} {'gap':>5s} {'talked over':>11s} {'over voice':>10s} {'turns':>5s}  "
          "ends, P(done), cue, (text P), yield")
    for name, complete, gap, talked, turns, voice in rows:
        ends = ", ".join(f"{t['end_of_turn'] or '?'} {t['turn_probability'] or 0:.2f} {t['turn_cue'] or '-'}"
                         + (f" (text {t['turn_text_probability']:.3f})" if t.get("turn_text_probability") is not None
                            else "")
                         + (f" {t['barge_in'] * 1000:.0f} ms" if t.get("barge_in") is not None else "")
                         + (f" (judged done {t['judged_early']}x too early)" if t.get("judged_early") else "")
                         for t in turns)
        print(f"{name:42s} {str(complete):>10s} {gap:5.1f} {talked:10.2f}s {voice:9.2f}s {len(turns):5d}  {ends}")
    # Over 0.1 s of agent audio on the caller's speech is a cut-in; less is the agent starting inside the fade of
    # the caller's last word (where the caller's 35 dB view of "speech" ends after the server's VAD).
    unfinished = [r for r in rows if not r[1] and r[0] != "jfk.flac"]
    rude = [r for r in unfinished if r[2] <= IN_SCOPE_PAUSE]
    rude_long = [r for r in unfinished if r[2] > IN_SCOPE_PAUSE]
    forgivable = [r for r in rows if r[1]]
    worst = max((r[3] for r in forgivable), default=0.0)
    worst_voice = max((r[5] for r in forgivable), default=0.0)
    yields = ", ".join(f"{t['barge_in'] * 1000:.0f}" for r in forgivable for t in r[4] if t.get("barge_in") is not None)
    print(f"cut-ins at an unfinished thought, pauses up to {IN_SCOPE_PAUSE:.1f} s: {sum(r[3] > CUT_IN for r in rude)} "
          f"of {len(rude)} (talked over {sum(r[3] for r in rude):.2f} s); longer pauses: "
          f"{sum(r[3] > CUT_IN for r in rude_long)} of {len(rude_long)} "
          f"(talked over {sum(r[3] for r in rude_long):.2f} s); after a finished sentence: "
          f"{sum(r[3] > CUT_IN for r in forgivable)} of {len(forgivable)}, at most {worst:.2f} s "
          f"({worst_voice:.2f} s over their voice; yielded in {yields or '-'} ms); "
          f"pauses longer than 550 ms: {sum(r[2] > 0.55 for r in rows)}; JFK talked over "
          f"{sum(r[3] for r in rows if r[0] == 'jfk.flac'):.2f} s")
    # The turn judged over at a pause the caller went on from: no cut-in here only because the reply's audio was
    # not ready yet. Where the models are fast (a GPU), each of these is one.
    early = [r for r in unfinished if any(t.get("judged_early") for t in r[4])]
    print(f"judged done before the caller went on (a cut-in where the reply is ready sooner): unfinished "
          f"thoughts {len(early)} of {len(unfinished)} ({', '.join(r[0] for r in early) or '-'}); "
          f"after a finished sentence {sum(any(t.get('judged_early') for t in r[4]) for r in forgivable)} "
          f"of {len(forgivable)}")
    # A slow machine judges too late to count above (the caller has gone on first). The decision alone, as if the
    # models took no time (a GPU box): the pauses where the turn would end while the caller was not done.
    instant_rude = [(r[0], sum(r[3])) for r in rows_instant if not r[1] and r[0] != "jfk.flac" and r[2] <= IN_SCOPE_PAUSE
                    and any(r[3])]
    instant_done = [r[0] for r in rows_instant if r[1] and any(r[3])]
    in_scope = sum(not r[1] and r[0] != "jfk.flac" and r[2] <= IN_SCOPE_PAUSE for r in rows_instant)
    print(f"models taking no time (text turn model: {'on' if text_model else 'off'}), the turn would end "
          f"mid-utterance: unfinished thoughts, pauses up to "
          f"{IN_SCOPE_PAUSE:.1f} s: {len(instant_rude)} of {in_scope} "
          f"({', '.join(f'{n} x{k}' for n, k in instant_rude) or '-'}); after a finished sentence "
          f"{len(instant_done)} of {len(forgivable)} ({', '.join(instant_done) or '-'}); JFK "
          f"{sum(sum(r[3]) for r in rows_instant if r[0] == 'jfk.flac')} pause(s)")


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
        "stt_runs": [t.get("stt_runs", 0) for t in stats if t.get("stt") is not None],
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
        if args.turn_taking and models is not None:
            await bench_turn_taking(settings, models, Path(tmp))
    device = models.device if models is not None else "server's"
    print(f"\nvoice-to-voice (caller's view, ms) and per-stage p50 (server's view, ms); models on {device}")
    header = f"{'mode':22s} {'calls':>5s} {'p50':>6s} {'p95':>6s} {'n':>4s} {'miss':>4s} {'underruns':>9s}"
    print(header + "".join(f" {s[:12]:>12s}" for s in STAGES) + "  stt runs/turn")
    for mode, calls, r in rows:
        line = (f"{mode:22s} {calls:5d} {ms(r['latency'], 50)} {ms(r['latency'], 95)} {len(r['latency']):4d} "
                f"{r['unanswered']:4d} {r['underruns']:9d}")
        runs = f"{np.mean(r['stt_runs']):14.2f}" if r["stt_runs"] else f"{'n/a':>14s}"
        print(line + "".join(f" {ms(r['stages'][s], 50):>12s}" for s in STAGES) + runs)


async def bench_barge_in(settings: Settings, models: Models, trials: int, directory: Path) -> None:
    """Talk over a long reply `trials` times; print speech onset -> `clear` as the caller and server saw it.
    Then as many false alarms (a short burst of speech sound, "Yeah.", "Mm-hmm.", "Okay." over the reply):
    how often the reply went on with nothing lost."""
    voice = models.synthesizer.voice  # type: ignore[attr-defined]
    clips = {}
    for name, text in {"story": "Please tell me a long story about a brave little dragon.",
                       "cut": "I have another question about my account instead.", "yeah": "Yeah.",
                       "mmhmm": "Mm-hmm.", "okay": "Okay."}.items():
        clips[name] = write_clip(directory / f"{name}.wav", with_pauses([piper_speech(voice, text)], []))
    jfk = load_audio_8k(FIXTURES / "jfk.flac")
    clips["burst"] = write_clip(directory / "burst.wav", with_pauses([jfk[int(3.28 * 8000) : int(3.5 * 8000)]], []))
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
        outcomes = []
        for trial in range(trials):
            sound = ("burst", "yeah", "mmhmm", "okay")[trial % 4]
            script = [clips["story"], CallerTurn(audio=clips[sound], interrupt_after=0.8 + 0.4 * (trial % 3))]
            result = await signed_call(base, script, settings)
            async with aiohttp.ClientSession() as http, http.get(f"{base}/stats?call_sid={result.call_sid}") as r:
                (story, *_) = (await r.json())["turns"]
            # (held, resumed, the reply played whole): a sound that never held the agent lost nothing either
            outcomes.append((sound, result.cleared > 0, story["false_alarms"] > 0, not story["interrupted"]))
    print(f"\nbarge-in, speech onset -> clear ({trials} trials): caller's view p50 {ms(caller, 50)} ms "
          f"p95 {ms(caller, 95)} ms (n={len(caller)}); server's view p50 {ms(server, 50)} ms p95 {ms(server, 95)} ms")
    print(f"false alarms over a reply ({trials} trials): nothing lost in {sum(o[3] for o in outcomes)} (held and "
          f"resumed {sum(o[1] and o[2] and o[3] for o in outcomes)}, never held {sum(not o[1] for o in outcomes)}); "
          + ", ".join(f"{s}: {'LOST' if not whole else 'resumed' if held else 'no hold'}"
                      for s, held, _, whole in outcomes))


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
    parser.add_argument("--turn-taking", action="store_true",
                        help="also run multi-clause utterances (en, es): cut-ins and turn decisions")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="where the models run (default VOICEPIPE_DEVICE, auto)")
    args = parser.parse_args()
    setup_logging("WARNING")
    asyncio.run(bench(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
