"""Who may ask what. Signed mode (TWILIO_AUTH_TOKEN set): Twilio's webhooks and stream need its signature.
Unsigned mode is for trying voicepipe on one machine: it answers only requests made directly to its loopback
address, never anything a tunnel or proxy forwards (they connect from loopback too, so the peer address alone
proves nothing). The operator's pages (/stats, /metrics) need VOICEPIPE_METRICS_TOKEN, or a direct local
request when none is set."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler

from voicepipe.service.state import SERVICE
from voicepipe.telephony.signatures import public_base, signature_holds, signed_url

log = logging.getLogger(__name__)

SIGNED_PATHS = ("/voice", "/status", "/amd", "/media")
# Headers a proxy or tunnel adds (cloudflared: Cf-Connecting-IP and X-Forwarded-For; ngrok: X-Forwarded-For).
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP",
                      "Cf-Connecting-IP", "True-Client-IP")
LOOPBACK_NAMES = ("localhost",)
BODY_TIMEOUT_SECONDS = 10.0  # a webhook body not received in this time is dropped (a slow-body attack)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def why_not_direct_local(request: web.Request) -> str | None:
    """None for a request made straight to our loopback address by a local program; else what gives it away."""
    forwarded = [name for name in FORWARDING_HEADERS if name in request.headers]
    if forwarded:
        return f"it was forwarded ({forwarded[0]} header)"
    if not is_loopback(request.remote or ""):
        return "it came from another machine"
    host = request.url.host or ""  # from the Host header
    if not is_loopback(host):
        return "its Host is not a loopback address"
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if sockname and request.url.port is not None and request.url.port != sockname[1]:
        return "its Host names another port"
    return None


def safe_for_log(text: str, limit: int = 80) -> str:
    """Request-borne text for a log line: no line breaks or control characters, and bounded."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


async def read_form(request: web.Request) -> dict[str, str]:
    """The webhook's form fields. A body that is not a valid form is a 400, one that never finishes a 408;
    neither is a server error."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            return {k: str(v) for k, v in (await request.post()).items()}
    except (UnicodeDecodeError, ValueError) as exc:
        log.warning("rejected %s %s: malformed form body (%s)", request.method, request.path, type(exc).__name__)
        request.app[SERVICE].metrics.error("webhook", "bad_form")
        raise web.HTTPBadRequest(text="malformed form body\n") from None
    except TimeoutError:
        log.warning("rejected %s %s: the body did not arrive within %.0f s", request.method, request.path,
                    BODY_TIMEOUT_SECONDS)
        request.app[SERVICE].metrics.error("webhook", "slow_body")
        raise web.HTTPRequestTimeout(text="request body too slow\n") from None


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Signed mode: Twilio's paths need a valid X-Twilio-Signature (403 before any work is done). Unsigned mode:
    only direct local requests, on every path."""
    service = request.app[SERVICE]
    settings = service.settings
    if not settings.twilio_auth_token:
        reason = None if settings.unsafe_allow_unsigned else why_not_direct_local(request)
        if reason is not None:
            log.warning("rejected %s %s in unsigned mode: %s", request.method, safe_for_log(request.path), reason)
            service.metrics.error("webhook", "not_local")
            raise web.HTTPForbidden(text="unsigned mode answers only local requests: set TWILIO_AUTH_TOKEN to "
                                         "take calls through a tunnel\n")
        return await handler(request)
    if request.path not in SIGNED_PATHS or operator_token_holds(request):
        return await handler(request)  # the test phone of whoever holds the operator token
    signature = request.headers.get("X-Twilio-Signature", "")
    params = await read_form(request) if request.method == "POST" else {}
    url = signed_url(public_base(settings.webhook_url, request.host), request.path, request.path_qs)
    if not signature_holds(settings.twilio_auth_token, url, params, signature):
        log.warning("rejected %s %s: %s X-Twilio-Signature", request.method, request.path,
                    "wrong" if signature else "missing")
        service.metrics.error("webhook", "bad_signature")
        raise web.HTTPForbidden(text="invalid or missing X-Twilio-Signature\n")
    return await handler(request)


def operator_token_holds(request: web.Request) -> bool:
    """The request carries VOICEPIPE_METRICS_TOKEN (the operator's token): as `Authorization: Bearer`, or as
    `?token=` where a browser cannot set headers (a page's address, a WebSocket)."""
    token = request.app[SERVICE].settings.metrics_token
    if not token:
        return False
    given = request.headers.get("Authorization", "").removeprefix("Bearer ") or request.query.get("token", "")
    return secrets.compare_digest(given.encode("utf-8", "replace"), token.encode())


def require_operator(request: web.Request) -> None:
    """/stats, /metrics and the pages: the operator's token when VOICEPIPE_METRICS_TOKEN is set, else a direct
    local request (behind a tunnel the numbers, and the CallSids, would otherwise be public)."""
    if not request.app[SERVICE].settings.metrics_token:
        if why_not_direct_local(request) is not None:
            raise web.HTTPForbidden(text="set VOICEPIPE_METRICS_TOKEN to read this through a proxy or tunnel\n")
        return
    if not operator_token_holds(request):
        raise web.HTTPUnauthorized(text="Authorization: Bearer <VOICEPIPE_METRICS_TOKEN> required\n")
