"""Twilio's request signatures: the public URL a request was signed for, and whether its signature holds."""

from __future__ import annotations

from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator


def public_base(webhook_url: str, request_host: str) -> str:
    """https:// base URL as Twilio sees us: WEBHOOK_URL when set, else the request's own host (the tunnel
    ends TLS, so Twilio's scheme was https even when the request reached us as http)."""
    if webhook_url:
        parts = urlsplit(webhook_url)
        return f"https://{parts.netloc}{parts.path}"
    return f"https://{request_host}"


def stream_url(base: str) -> str:
    """The wss:// URL Twilio should open for the media stream."""
    return "wss" + base[len("https"):] + "/media"


def signed_url(base: str, path: str, path_qs: str) -> str:
    """The URL as Twilio requested it, which its signature covers (wss:// for the stream)."""
    url = base + path_qs
    return "wss" + url[len("https"):] if path == "/media" else url


def signature_holds(auth_token: str, url: str, params: dict[str, str], signature: str) -> bool:
    return bool(signature) and bool(RequestValidator(auth_token).validate(url, params, signature))
