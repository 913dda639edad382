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
    # Libraries' INFO chatter (HTTP access lines carry no content, but are noisy) stays at WARNING.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
