"""Logging with the call's identity on every line, including lines from worker threads."""

from __future__ import annotations

import contextvars
import logging

call_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_sid", default="-")


class _CallContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call_sid = call_sid_var.get()
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_CallContextFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(call_sid)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries' INFO chatter stays at WARNING: it is noisy, and twilio's request log would print the text of
    # a one-way message (the privacy rule: no call content at INFO).
    for name in ("aiohttp.access", "faster_whisper", "twilio.http_client", "httpx", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
