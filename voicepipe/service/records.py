"""Call records in SQLite (VOICEPIPE_DATA_DIR/calls.sqlite3): who called, when, how it went, per-turn latency.

What was said is stored only with VOICEPIPE_TRANSCRIPTS=1, and never leaves the machine. Status callbacks may
arrive out of order; Twilio's SequenceNumber decides which status is the call's current one."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_sid TEXT PRIMARY KEY,
    direction TEXT NOT NULL DEFAULT '',
    from_number TEXT NOT NULL DEFAULT '',
    to_number TEXT NOT NULL DEFAULT '',
    language TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,            -- the media stream opened
    ended_at REAL,              -- the media stream closed
    status TEXT NOT NULL DEFAULT '',
    status_sequence INTEGER NOT NULL DEFAULT -1,
    outcome TEXT NOT NULL DEFAULT '',
    turns INTEGER NOT NULL DEFAULT 0,
    transcript TEXT             -- JSON [{role, content}], only with VOICEPIPE_TRANSCRIPTS=1
);
CREATE TABLE IF NOT EXISTS call_status (
    call_sid TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    status TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (call_sid, sequence)
);
CREATE TABLE IF NOT EXISTS turns (
    call_sid TEXT NOT NULL,
    turn INTEGER NOT NULL,
    timings TEXT NOT NULL,      -- JSON of TurnTimings (seconds)
    PRIMARY KEY (call_sid, turn)
);
"""


class CallRecords(Protocol):
    """Where calls are recorded. SqliteCallRecords is the embedded default; a shared store (for several nodes)
    implements the same methods."""

    def call_offered(self, call_sid: str, direction: str, from_number: str, to_number: str,
                     language: str = "") -> None: ...

    def status(self, call_sid: str, status: str, sequence: int | None) -> None: ...

    def stream_started(self, call_sid: str) -> None: ...

    def turn(self, call_sid: str, turn: int, timings: dict[str, object]) -> None: ...

    def stream_ended(self, call_sid: str, outcome: str, turns: int,
                     transcript: list[dict[str, str]] | None) -> None: ...

    def recent(self, limit: int = 20) -> list[dict[str, Any]]: ...

    def get(self, call_sid: str) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class SqliteCallRecords:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = data_dir / "calls.sqlite3"
        fresh = not self.path.exists()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        if fresh:
            os.chmod(self.path, 0o600)  # records may hold transcripts: the operator's eyes only
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def _ensure(self, call_sid: str) -> None:
        self._write("INSERT OR IGNORE INTO calls (call_sid, created_at) VALUES (?, ?)", (call_sid, time.time()))

    def call_offered(self, call_sid: str, direction: str, from_number: str, to_number: str, language: str = "") -> None:
        """A call reached /voice or /status, or was placed by `voicepipe call`; empty fields change nothing."""
        self._ensure(call_sid)
        self._write(
            "UPDATE calls SET direction = COALESCE(NULLIF(?, ''), direction), "
            "from_number = COALESCE(NULLIF(?, ''), from_number), to_number = COALESCE(NULLIF(?, ''), to_number), "
            "language = COALESCE(NULLIF(?, ''), language) WHERE call_sid = ?",
            (direction, from_number, to_number, language, call_sid),
        )

    def status(self, call_sid: str, status: str, sequence: int | None) -> None:
        """A status callback. Without a SequenceNumber, statuses count in arrival order."""
        self._ensure(call_sid)
        with self._lock:
            if sequence is None:
                row = self._db.execute("SELECT MAX(sequence) FROM call_status WHERE call_sid = ?",
                                       (call_sid,)).fetchone()
                sequence = (row[0] if row[0] is not None else -1) + 1
            self._db.execute("INSERT OR IGNORE INTO call_status VALUES (?, ?, ?, ?)",
                             (call_sid, sequence, status, time.time()))
            self._db.execute("UPDATE calls SET status = ?, status_sequence = ? "
                             "WHERE call_sid = ? AND status_sequence < ?", (status, sequence, call_sid, sequence))

    def stream_started(self, call_sid: str) -> None:
        self._ensure(call_sid)
        self._write("UPDATE calls SET started_at = ? WHERE call_sid = ?", (time.time(), call_sid))

    def turn(self, call_sid: str, turn: int, timings: dict[str, object]) -> None:
        self._ensure(call_sid)
        self._write("INSERT OR REPLACE INTO turns VALUES (?, ?, ?)", (call_sid, turn, json.dumps(timings)))

    def stream_ended(self, call_sid: str, outcome: str, turns: int, transcript: list[dict[str, str]] | None) -> None:
        self._ensure(call_sid)
        self._write("UPDATE calls SET ended_at = ?, outcome = ?, turns = ?, transcript = ? WHERE call_sid = ?",
                    (time.time(), outcome, turns, json.dumps(transcript, ensure_ascii=False) if transcript else None,
                     call_sid))

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM calls ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [self._call(row, with_details=False) for row in rows]

    def get(self, call_sid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        return self._call(row, with_details=True) if row is not None else None

    def _call(self, row: sqlite3.Row, with_details: bool) -> dict[str, Any]:
        call = dict(row)
        call["transcript"] = json.loads(call["transcript"]) if call["transcript"] else None
        with self._lock:
            timings = [json.loads(r[0]) for r in self._db.execute(
                "SELECT timings FROM turns WHERE call_sid = ? ORDER BY turn", (call["call_sid"],))]
            history = self._db.execute(
                "SELECT sequence, status, received_at FROM call_status WHERE call_sid = ? ORDER BY sequence",
                (call["call_sid"],)).fetchall()
        latencies = sorted(t["voice_to_voice"] for t in timings if t.get("voice_to_voice") is not None)
        call["voice_to_voice_p50"] = latencies[len(latencies) // 2] if latencies else None
        if with_details:
            call["turn_timings"] = timings
            call["status_history"] = [dict(r) for r in history]
        else:
            del call["transcript"]
        return call
