"""Logging with the call's identity on every line, including lines from worker threads."""

from __future__ import annotations

import contextvars
import json
import logging
import time

call_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_sid", default="-")


class _CallContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call_sid = call_sid_var.get()
        return True


class TextFormatter(logging.Formatter):
    """One line per message: CR and LF inside it are escaped, so text from a request (a header, a parameter)
    cannot forge another log line. Tracebacks stay multi-line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.replace("\r", "\\r").replace("\n", "\\n")
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: time, level, logger, call_sid, message (and any traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "call_sid": getattr(record, "call_sid", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_CallContextFilter())
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s [%(call_sid)s] %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries' INFO chatter stays at WARNING: it is noisy, and twilio's request log would print the text of
    # a one-way message (the privacy rule: no call content at INFO).
    for name in ("aiohttp.access", "faster_whisper", "twilio.http_client", "httpx", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
