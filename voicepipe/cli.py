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
from voicepipe.logs import setup_logging
from voicepipe.models import ModelFileError, Models

log = logging.getLogger("voicepipe")


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, host: str = "127.0.0.1", port: int = 0, models: Models | None = None
) -> AsyncIterator[str]:
    """Start the real server in this process on a real port; yields its base URL."""
    from voicepipe.server import create_app

    runner = web.AppRunner(create_app(settings, models), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
    bound_port = sockets[0].getsockname()[1] if sockets else port
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
        from voicepipe.stt import WhisperTranscriber

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
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        if args.command == "serve":
            from voicepipe.server import serve as run_server

            host = args.host or settings.host
            port = args.port if args.port is not None else settings.port
            log.info("serving on http://%s:%d (POST /voice, GET /media)", host, port)
            try:
                run_server(settings, host, port)
            except ConfigError as exc:
                print(f"configuration error: {exc}", file=sys.stderr)
                return 2
            return 0
        return asyncio.run(_simulate(args, settings))
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
