"""What several test modules share: servers on free loopback ports, the call-end observer, Twilio's REST API
played locally, and the privacy check on logs. Tests import from here, never from one another."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from voicepipe.config import Settings
from voicepipe.conversation.events import CallObserver, EndedCall
from voicepipe.engines.models import Models
from voicepipe.service.app import create_app
from voicepipe.service.state import SERVICE

ACCOUNT = "AC" + "1" * 32
TOKEN = "t" * 32
FROM = "+15550001111"
TO = "+15557654321"


def call_sid(n: int) -> str:
    """A CallSid of Twilio's shape (the server refuses any other)."""
    return f"CA{n:032x}"


def free_port() -> int:
    """A port nothing listens on (for a subprocess server, or a server that must be absent)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_site(runner: web.AppRunner, tls: tuple[Path, Path] | None = None) -> int:
    """Open one more door on a set-up runner: a free loopback port, HTTPS with (cert, key). Returns the port."""
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, ssl_context=context).start()
    return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def running(app: web.Application, tls: tuple[Path, Path] | None = None) -> AsyncIterator[int]:
    """Serve `app` on a free loopback port for the block; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield await start_site(runner, tls)
    finally:
        await runner.cleanup()


class CallEnds(CallObserver):
    """Collects the calls that ended, in order."""

    def __init__(self, ended: list[EndedCall]) -> None:
        self.ended = ended

    def call_ended(self, call: EndedCall) -> None:
        self.ended.append(call)


@contextlib.asynccontextmanager
async def serving(settings: Settings, models: Models) -> AsyncIterator[tuple[str, list[EndedCall]]]:
    """Run voicepipe on a free loopback port; yields its URL and the calls that have ended."""
    app = create_app(settings, models)
    ended: list[EndedCall] = []
    app[SERVICE].observers.add(CallEnds(ended))
    async with running(app) as port:
        yield f"http://127.0.0.1:{port}", ended


async def wait_for(ended: list[EndedCall], count: int = 1) -> None:
    for _ in range(100):
        if len(ended) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the server never finished the call")


def user_turns(call: EndedCall) -> list[str]:
    return [m["content"] for m in call.history if m["role"] == "user"]


def with_turn(settings: Settings, **changes: int) -> Settings:
    return dataclasses.replace(settings, turn=dataclasses.replace(settings.turn, **changes))


def assert_logs_hold_no_words(logged: str, call: EndedCall) -> None:
    said = [m["content"] for m in call.said][1:]  # not the greeting
    assert said
    logged = logged.lower()
    for text in said:
        for word in {w.strip(".,!?'").lower() for w in text.split()} - {"the", "is", "of", "a", "what", "i", "to"}:
            if len(word) > 3:
                assert word not in logged, word


class FakeTwilioApi:
    """Twilio's REST API, as much as voicepipe uses: create a call, fetch it until it ends, the account and its
    numbers (doctor), and updates to a live call (hang-up). Every request is kept for the test to read."""

    def __init__(self, reject: bool = False) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]], str]] = []  # method, path, form, auth
        self.reject = reject
        self.statuses = ["queued", "ringing", "in-progress", "in-progress", "completed"]
        self.answered_by: str | None = None  # what answering-machine detection found, on the call resource

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls.json", self.create)
        app.router.add_get("/2010-04-01/Accounts/{account}/Calls/{sid}.json", self.fetch)
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{sid}.json", self.update)
        app.router.add_get("/2010-04-01/Accounts/{account}.json", self.account)
        app.router.add_get("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json", self.numbers)
        return app

    async def _keep(self, request: web.Request) -> dict[str, list[str]]:
        form = await request.post()
        fields = {k: [str(v) for v in form.getall(k)] for k in form}
        self.requests.append((request.method, request.path, fields, request.headers.get("Authorization", "")))
        return fields

    async def account(self, request: web.Request) -> web.Response:
        if request.match_info["account"] != ACCOUNT:
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        return web.json_response({"sid": ACCOUNT, "friendly_name": "voicepipe test", "status": "active"})

    async def numbers(self, request: web.Request) -> web.Response:
        owned = [{"sid": "PN" + "c" * 32, "phone_number": FROM}] if request.query.get("PhoneNumber") == FROM else []
        return web.json_response({"incoming_phone_numbers": owned, "next_page_uri": None, "page": 0,
                                  "page_size": 1, "uri": request.path})

    async def create(self, request: web.Request) -> web.Response:
        await self._keep(request)
        if self.reject:
            return web.json_response({"code": 21211, "message": "The 'To' number is not a valid phone number.",
                                      "status": 400}, status=400)
        return web.json_response(self.resource("queued"), status=201)

    async def fetch(self, request: web.Request) -> web.Response:
        await self._keep(request)
        return web.json_response(self.resource(self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]))

    async def update(self, request: web.Request) -> web.Response:
        fields = await self._keep(request)
        return web.json_response({**self.resource(fields.get("Status", ["in-progress"])[0]),
                                  "sid": request.match_info["sid"]})

    def resource(self, status: str) -> dict[str, str]:
        return {"sid": "CA" + "a" * 32, "account_sid": ACCOUNT, "status": status, "to": TO, "from": FROM,
                "answered_by": self.answered_by}
