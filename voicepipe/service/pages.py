"""The browser pages: /phone (a test phone that speaks Twilio's own protocol to /voice and /media) and /dashboard,
their files, and the JSON they read. They are for this machine, or for whoever holds VOICEPIPE_METRICS_TOKEN
(access.require_operator); the files themselves hold no data."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from voicepipe.service.access import require_operator
from voicepipe.service.state import SERVICE
from voicepipe.telephony.protocol import is_call_sid

WEB = Path(__file__).parent / "web"
FILES = {"phone.js": "text/javascript", "phone-worklet.js": "text/javascript", "dashboard.js": "text/javascript",
         "style.css": "text/css"}
TEST_ACCOUNT_SID = "AC" + "0" * 32  # what the test phone says when no TWILIO_ACCOUNT_SID is set


def _page(name: str) -> web.Response:
    return web.Response(body=(WEB / name).read_bytes(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'self'"})


async def phone(request: web.Request) -> web.Response:
    require_operator(request)
    return _page("phone.html")


async def dashboard(request: web.Request) -> web.Response:
    require_operator(request)
    return _page("dashboard.html")


async def web_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES:
        raise web.HTTPNotFound()
    return web.Response(body=(WEB / name).read_bytes(), content_type=FILES[name], charset="utf-8")


async def phone_config(request: web.Request) -> web.Response:
    """What the test phone must say in its /voice request and `start` to be taken for this account's call."""
    require_operator(request)
    settings = request.app[SERVICE].settings
    return web.json_response({"account_sid": settings.twilio_account_sid or TEST_ACCOUNT_SID,
                              "transcripts": settings.transcripts})


def _limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit", "")
    return min(most, int(raw)) if raw.isascii() and raw.isdecimal() and int(raw) > 0 else default


async def calls(request: web.Request) -> web.Response:
    """Recent calls from the records (newest first)."""
    require_operator(request)
    records = request.app[SERVICE].records
    return web.json_response({"calls": await asyncio.to_thread(records.recent, _limit(request, 50, 500))})


async def call(request: web.Request) -> web.Response:
    """One call: its turns' timings, its status history, and its transcript when transcripts are on."""
    require_operator(request)
    call_sid = request.match_info["call_sid"]
    record = await asyncio.to_thread(request.app[SERVICE].records.get, call_sid) if is_call_sid(call_sid) else None
    if record is None:
        raise web.HTTPNotFound(text="no record of that call\n")
    return web.json_response(record)


async def turns(request: web.Request) -> web.Response:
    """The most recent turns of every call, oldest first, each with its CallSid and when it ended."""
    require_operator(request)
    records = request.app[SERVICE].records
    return web.json_response({"turns": await asyncio.to_thread(records.recent_turns, _limit(request, 500, 5000))})


def add_pages(app: web.Application) -> None:
    app.router.add_get("/phone", phone)
    app.router.add_get("/phone/config", phone_config)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/web/{name}", web_file)
    app.router.add_get("/api/calls", calls)
    app.router.add_get("/api/calls/{call_sid}", call)
    app.router.add_get("/api/turns", turns)
