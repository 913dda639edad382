"""Call records in SQLite (VOICEPIPE_DATA_DIR/calls.sqlite3): who called, when, how it went, per-turn latency.

What was said is stored only with VOICEPIPE_TRANSCRIPTS=1, and never leaves the machine. Status callbacks may
arrive out of order; Twilio's SequenceNumber decides which status is the call's current one."""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

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
    answered_by TEXT NOT NULL DEFAULT '',  -- answering-machine detection: human, machine_end_beep, fax, ...
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

    def answered_by(self, call_sid: str, answered_by: str) -> None: ...

    def turn(self, call_sid: str, turn: int, timings: dict[str, object],
             transcript: list[dict[str, str]] | None = None) -> None: ...

    def stream_ended(self, call_sid: str, outcome: str, turns: int,
                     transcript: list[dict[str, str]] | None) -> None: ...

    def recent(self, limit: int = 20) -> list[dict[str, Any]]: ...

    def get(self, call_sid: str) -> dict[str, Any] | None: ...

    def recent_turns(self, limit: int = 500) -> list[dict[str, Any]]: ...

    def close_interrupted(self) -> None: ...

    def close(self) -> None: ...


Write = Callable[[sqlite3.Connection], None]
_STOP = object()
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)  # a locked or busy file: try again, then every 5 s until it frees


class SqliteCallRecords:
    """Writes go to one writer thread through a queue: a slow disk, or another process holding the file's lock
    (`voicepipe call` writes here too), delays the records, never the event loop and its calls. A write that
    fails on a lock is retried until it goes through (writes are idempotent, so nothing is stored twice); any
    other error drops that write, logged and counted, and never reaches the webhook or call that caused it."""

    def __init__(self, data_dir: Path, on_error: Callable[[str], None] | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = data_dir / "calls.sqlite3"
        fresh = not self.path.exists()
        self._db = self._connect()
        if fresh:
            os.chmod(self.path, 0o600)  # records may hold transcripts: the operator's eyes only
        self._lock = threading.Lock()  # reads, from any thread
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(calls)")}
        if "answered_by" not in columns:  # a file from before answering-machine detection
            self._db.execute("ALTER TABLE calls ADD COLUMN answered_by TEXT NOT NULL DEFAULT ''")
        self.on_error = on_error or (lambda kind: None)
        self._queue: queue.SimpleQueue[Write | object] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_all, name="call-records", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def close_interrupted(self) -> None:
        """Close the rows of calls whose stream was open when the server last stopped without closing them (a
        crash, kill -9, power loss): outcome `interrupted`, ended at their last stored turn. Call it at start-up,
        before any call (it is queued first, so it runs before their writes); one server per data directory."""

        def write(db: sqlite3.Connection) -> None:
            closed = db.execute(
                "UPDATE calls SET outcome = 'interrupted', ended_at = COALESCE((SELECT MAX(json_extract(timings, "
                "'$.ended_at')) FROM turns WHERE turns.call_sid = calls.call_sid), started_at) "
                "WHERE started_at IS NOT NULL AND ended_at IS NULL").rowcount
            if closed:
                log.warning("%d call record(s) were left open by a crash or kill; closed as interrupted", closed)

        self._queue.put(write)

    def close(self, timeout: float = 15.0) -> None:
        """Let the writer finish what is queued (up to `timeout`), then close."""
        self._queue.put(_STOP)
        self._writer.join(timeout)
        if self._writer.is_alive():
            log.error("call records: writes still waiting after %.0f s at shutdown; they are lost", timeout)
            return
        self._db.close()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until what was queued so far is written (for tests and `voicepipe calls` in process)."""
        done = threading.Event()
        self._queue.put(lambda db: done.set())
        return done.wait(timeout)

    def _write_all(self) -> None:
        db = self._connect()
        try:
            while (write := self._queue.get()) is not _STOP:
                assert callable(write)
                self._write_one(db, write)
        finally:
            db.close()

    def _write_one(self, db: sqlite3.Connection, write: Write) -> None:
        for attempt in itertools.count():
            try:
                write(db)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    log.error("call records: a write failed and is dropped: %s", exc)
                    self.on_error("write_failed")
                    return
                wait = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                if attempt == 0:
                    log.warning("call records: %s is locked; writes wait and retry (calls are not affected)",
                                self.path)
                    self.on_error("locked")
                time.sleep(wait)
            except sqlite3.Error as exc:
                log.error("call records: a write failed and is dropped: %s", exc)
                self.on_error("write_failed")
                return

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(sql, params)

        self._queue.put(write)

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
        received = time.time()

        def write(db: sqlite3.Connection) -> None:
            number = sequence
            db.execute("BEGIN IMMEDIATE")
            try:
                if number is None:
                    row = db.execute("SELECT MAX(sequence) FROM call_status WHERE call_sid = ?", (call_sid,)).fetchone()
                    number = (row[0] if row[0] is not None else -1) + 1
                db.execute("INSERT OR IGNORE INTO call_status VALUES (?, ?, ?, ?)", (call_sid, number, status, received))
                db.execute("UPDATE calls SET status = ?, status_sequence = ? "
                           "WHERE call_sid = ? AND status_sequence < ?", (status, number, call_sid, number))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        self._queue.put(write)

    def stream_started(self, call_sid: str) -> None:
        self._ensure(call_sid)
        self._write("UPDATE calls SET started_at = ? WHERE call_sid = ?", (time.time(), call_sid))

    def answered_by(self, call_sid: str, answered_by: str) -> None:
        self._ensure(call_sid)
        self._write("UPDATE calls SET answered_by = ? WHERE call_sid = ?", (answered_by, call_sid))

    def turn(self, call_sid: str, turn: int, timings: dict[str, object],
             transcript: list[dict[str, str]] | None = None) -> None:
        """A finished turn, stored as it happens (a crash loses at most the turn in progress); with transcripts
        on, what was said so far too."""
        self._ensure(call_sid)
        self._write("INSERT OR REPLACE INTO turns VALUES (?, ?, ?)",
                    (call_sid, turn, json.dumps({**timings, "ended_at": time.time()})))
        if transcript:
            self._write("UPDATE calls SET transcript = ? WHERE call_sid = ?",
                        (json.dumps(transcript, ensure_ascii=False), call_sid))

    def stream_ended(self, call_sid: str, outcome: str, turns: int, transcript: list[dict[str, str]] | None) -> None:
        self._ensure(call_sid)
        self._write("UPDATE calls SET ended_at = ?, outcome = ?, turns = ?, "
                    "transcript = COALESCE(?, transcript) WHERE call_sid = ?",
                    (time.time(), outcome, turns, json.dumps(transcript, ensure_ascii=False) if transcript else None,
                     call_sid))

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM calls ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [self._call(row, with_details=False) for row in rows]

    def recent_turns(self, limit: int = 500) -> list[dict[str, Any]]:
        """The last `limit` turns of every call, oldest first: timings with call_sid, turn and ended_at."""
        with self._lock:
            rows = self._db.execute("SELECT call_sid, timings FROM turns ORDER BY json_extract(timings, '$.ended_at') "
                                    "DESC LIMIT ?", (limit,)).fetchall()
        return [{**json.loads(row["timings"]), "call_sid": row["call_sid"]} for row in reversed(rows)]

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
