"""The `voicepipe` command: serve calls, or simulate a caller against a server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import soundfile
from aiohttp import web

from voicepipe.config import ConfigError, Settings, load_settings
from voicepipe.engines.models import ModelFileError, Models
from voicepipe.service.logs import setup_logging

log = logging.getLogger("voicepipe")


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, host: str = "127.0.0.1", port: int = 0, models: Models | None = None
) -> AsyncIterator[str]:
    """Start the real server in this process on a real port; yields its base URL."""
    from voicepipe.service.app import create_app

    runner = web.AppRunner(create_app(settings, models), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1] if runner.addresses else port
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        await runner.cleanup()


async def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from voicepipe.simulate import simulate_call

    async with contextlib.AsyncExitStack() as stack:
        url = args.url or await stack.enter_async_context(running_server(settings))
        result = await simulate_call(url, [Path(p) for p in args.audio], reply_timeout=args.timeout,
                                     auth_token=settings.twilio_auth_token,
                                     public_url=settings.webhook_url)
    transcriber = None
    if not args.no_transcribe:
        from voicepipe.engines.stt import WhisperTranscriber

        transcriber = WhisperTranscriber(settings.stt_model_path, settings.language)
    print(f"call {result.call_sid}: greeting {len(result.greeting_audio) / 8000:.1f} s")
    for number, turn in enumerate(result.turns, 1):
        latency = f"{turn.voice_to_voice * 1000:.0f} ms" if turn.voice_to_voice is not None else "no reply"
        heard = transcriber.transcribe(turn.reply_audio).text if transcriber and turn.reply_seconds else ""
        print(f"turn {number} ({Path(turn.audio_file).name}): voice-to-voice {latency}, "
              f"reply {turn.reply_seconds:.1f} s" + (f": {heard!r}" if heard else ""))
    if args.save_reply:
        audio = [result.greeting_audio, *(t.reply_audio for t in result.turns)]
        soundfile.write(args.save_reply, np.concatenate(audio), 8000, subtype="PCM_16")
        print(f"saved what the caller heard to {args.save_reply}")
    return 0 if all(t.voice_to_voice is not None for t in result.turns) else 1


async def _generate_message(settings: Settings, prompt: str) -> str:
    """The one-way message's text, written by the configured LLM (the local model by default)."""
    from voicepipe.engines.llm import reply_text
    from voicepipe.engines.models import load_chat

    chat = await asyncio.to_thread(load_chat, settings)
    messages = [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": prompt}]
    return (await reply_text(chat, messages)).strip()


def _call(args: argparse.Namespace, settings: Settings) -> int:
    """Place a call and follow it until it ends."""
    from voicepipe.service.records import open_records
    from voicepipe.telephony.rest import follow_call, place_call, say_twiml, twilio_client

    to = args.number or settings.to_phone_number
    if not to:
        raise ConfigError("give the number to call, or set TO_PHONE_NUMBER")
    twiml = None
    if args.prompt:
        text = asyncio.run(_generate_message(settings, args.prompt))
        print(f"message written by the {settings.llm_backend} model: {text}")
        twiml = say_twiml(text, settings)
    elif args.message:
        twiml = say_twiml(args.message, settings)
    from twilio.base.exceptions import TwilioRestException

    client = twilio_client(settings)
    try:
        call_sid = place_call(settings, to, twiml, client=client, detect_machine=args.detect_machine)
    except TwilioRestException as exc:
        print(f"Twilio refused the call: {exc.msg} (error {exc.code}, HTTP {exc.status})", file=sys.stderr)
        return 1
    print(f"call {call_sid}: placed to {to}" + (" (one-way message)" if twiml else ""))
    records = open_records(settings)
    try:
        records.call_offered(call_sid, "outbound-message" if twiml else "outbound-api", settings.twilio_phone_number,
                             to, settings.language)
        if args.no_follow:
            return 0

        def report(status: str) -> None:
            records.status(call_sid, status, None)
            print(f"call {call_sid}: {status}", flush=True)

        final = follow_call(settings, call_sid, report, client=client, interval=args.poll)
        if args.detect_machine and (answered_by := str(client.calls(call_sid).fetch().answered_by or "")):
            records.answered_by(call_sid, answered_by)
            print(f"call {call_sid}: answered by {answered_by}")
        return 0 if final == "completed" else 1
    finally:
        records.close()  # the queued writes go in first


def _calls(args: argparse.Namespace, settings: Settings) -> int:
    import json
    from datetime import datetime

    from voicepipe.service.records import open_records

    records = open_records(settings)
    if args.show:
        call = records.get(args.show)
        if call is None:
            print(f"no record of call {args.show} in {records.where}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(call, indent=2, ensure_ascii=False))
            return 0
        for key in ("call_sid", "direction", "from_number", "to_number", "language", "status", "outcome", "turns"):
            print(f"{key:>18}: {call[key]}")
        for key in ("created_at", "started_at", "ended_at"):
            print(f"{key:>18}: {datetime.fromtimestamp(call[key]).isoformat(' ', 'seconds') if call[key] else '-'}")
        print(f"{'statuses':>18}: {', '.join(s['status'] for s in call['status_history']) or '-'}")
        for timings in call["turn_timings"]:
            v2v = timings.get("voice_to_voice")
            print(f"{'turn ' + str(timings['turn']):>18}: voice-to-voice "
                  f"{f'{v2v * 1000:.0f} ms' if v2v is not None else '-'}"
                  + (", interrupted" if timings.get("interrupted") else ""))
        for message in call["transcript"] or []:
            print(f"{'caller' if message['role'] == 'user' else 'agent':>18}: {message['content']}")
        if call["transcript"] is None:
            print(f"{'transcript':>18}: not stored (VOICEPIPE_TRANSCRIPTS=1 stores it)")
        return 0
    print(f"{'started':<19}  {'call':<34}  {'direction':<16}  {'from':<14}  {'to':<14}  {'status':<11}  "
          f"{'turns':>5}  {'p50 ms':>6}  outcome")
    for call in records.recent(args.limit):
        when = datetime.fromtimestamp(call["created_at"]).isoformat(" ", "seconds")
        p50 = f"{call['voice_to_voice_p50'] * 1000:.0f}" if call["voice_to_voice_p50"] is not None else "-"
        print(f"{when:<19}  {call['call_sid']:<34}  {call['direction']:<16}  {call['from_number']:<14}  "
              f"{call['to_number']:<14}  {call['status']:<11}  {call['turns']:>5}  {p50:>6}  {call['outcome']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voicepipe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve Twilio calls")
    serve.add_argument("--host", help="address to listen on (default VOICEPIPE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default VOICEPIPE_PORT or 5000)")
    simulate = commands.add_parser("simulate", help="play a caller against a server, like Twilio would")
    simulate.add_argument("audio", nargs="+", help="audio files, one per caller turn (wav, flac, ...)")
    simulate.add_argument("--url", help="base URL of a running server (default: start one in this process)")
    simulate.add_argument("--save-reply", metavar="WAV", help="write everything the caller heard to a WAV file")
    simulate.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each reply")
    simulate.add_argument("--no-transcribe", action="store_true", help="do not transcribe the replies")
    call = commands.add_parser("call", help="place a call through Twilio (to NUMBER or TO_PHONE_NUMBER)")
    call.add_argument("number", nargs="?", help="E.164 number to call (default TO_PHONE_NUMBER)")
    one_way = call.add_mutually_exclusive_group()
    one_way.add_argument("--message", help="one-way: Twilio speaks this text and hangs up (no tunnel needed)")
    one_way.add_argument("--prompt", help="one-way: the local model writes the message from this prompt")
    call.add_argument("--detect-machine", action="store_true",
                      help="answering-machine detection: a --message is left after the beep; a conversation call "
                           "that reaches a machine leaves VOICEPIPE_VOICEMAIL_MESSAGE and hangs up")
    call.add_argument("--no-follow", action="store_true", help="print the CallSid and return at once")
    call.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    commands.add_parser("doctor", help="check configuration, models, GPU, server, tunnel and Twilio; print fixes")
    calls = commands.add_parser("calls", help="list recent calls, or show one (`calls show CALLSID`)")
    calls.add_argument("show", nargs="?", metavar="show CALLSID", help=argparse.SUPPRESS)
    calls.add_argument("call_sid", nargs="?", help=argparse.SUPPRESS)
    calls.add_argument("--json", action="store_true", help="print the call as JSON")
    calls.add_argument("--limit", type=int, default=20, help="how many recent calls to list")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from voicepipe.doctor import run_doctor

        return 0 if run_doctor() else 1

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "serve":
            from voicepipe.service.app import serve as run_server

            host = args.host or settings.host
            port = args.port if args.port is not None else settings.port
            log.info("serving on http://%s:%d (POST /voice, GET /media)", host, port)
            run_server(settings, host, port)
            return 0
        if args.command == "call":
            return _call(args, settings)
        if args.command == "calls":
            if args.show is not None and (args.show != "show" or not args.call_sid):
                print("usage: voicepipe calls [--limit N] | voicepipe calls show CALLSID [--json]", file=sys.stderr)
                return 2
            args.show = args.call_sid
            return _calls(args, settings)
        return asyncio.run(_simulate(args, settings))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
