"""Call records: who called, when, how it went, per-turn latency. In SQLite (VOICEPIPE_DATA_DIR/calls.sqlite3) by
default; in PostgreSQL (records_pg.py, VOICEPIPE_DATABASE_URL) for several nodes. One SQL for both: writes are
idempotent upserts, run by a writer thread of their own.

What was said is stored only with VOICEPIPE_TRANSCRIPTS=1, and never leaves the machine. Status callbacks may
arrive out of order; Twilio's SequenceNumber decides which status is the call's current one."""

from __future__ import annotations

import contextlib
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
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from voicepipe.config import Settings

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


Write = Callable[[Any], None]  # runs on the writer thread with its connection
_STOP = object()
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)  # a locked file, a database away: try again, then every 5 s until it is back


class QueuedCallRecords:
    """Writes go to one writer thread through a queue: a slow disk, a locked file (`voicepipe call` writes there
    too) or a database that went away delays the records, never the event loop and its calls. A write that fails
    on a lock or a lost connection is retried until it goes through (writes are idempotent, so nothing is stored
    twice); any other error drops that write, logged and counted, and never reaches the webhook or call that
    caused it. Subclasses give the connection and the few words of SQL that differ."""

    where: str  # for log lines: the file or the server
    ENDED_AT = "json_extract(timings, '$.ended_at')"  # a turn's end, from its JSON
    BEGIN = "BEGIN IMMEDIATE"
    node = ""  # which node's calls this process closes after a crash ("" : every open row; one node per file)

    def _start(self, on_error: Callable[[str], None] | None) -> None:
        self._db = self._connect()
        self._lock = threading.Lock()  # reads, from any thread
        self.on_error = on_error or (lambda kind: None)
        self._queue: queue.SimpleQueue[Write | object] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_all, name="call-records", daemon=True)
        self._writer.start()

    def _connect(self) -> Any:
        raise NotImplementedError

    def _transient(self, exc: Exception) -> bool:
        """A lock or a lost connection: the write is retried."""
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        """The SQL with this driver's placeholders (written with `?`)."""
        return sql

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._db.execute(self._q(sql), params).fetchall()]

    def close_interrupted(self) -> None:
        """Close the rows of calls whose stream was open when this node last stopped without closing them (a
        crash, kill -9, power loss): outcome `interrupted`, ended at their last stored turn. Call it at start-up,
        before any call (it is queued first, so it runs before their writes)."""
        mine = " AND node = ?" if self.node else ""

        def write(db: Any) -> None:
            closed = db.execute(self._q(
                f"UPDATE calls SET outcome = 'interrupted', ended_at = COALESCE((SELECT MAX({self.ENDED_AT}) "
                "FROM turns WHERE turns.call_sid = calls.call_sid), started_at) "
                f"WHERE started_at IS NOT NULL AND ended_at IS NULL{mine}"), (self.node,) if mine else ()).rowcount
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
        db: Any = None
        try:
            while (write := self._queue.get()) is not _STOP:
                assert callable(write)
                db = self._write_one(db, write)
        finally:
            if db is not None:
                db.close()

    def _write_one(self, db: Any, write: Write) -> Any:
        """Run one write to the end (or drop it); returns the connection to use next."""
        for attempt in itertools.count():
            try:
                db = db if db is not None else self._connect()
                write(db)
                return db
            except Exception as exc:  # noqa: BLE001 - sqlite3 and psycopg errors alike; never the caller's
                if not self._transient(exc):
                    log.error("call records: a write failed and is dropped: %s", exc)
                    self.on_error("write_failed")
                    return db
                if attempt == 0:
                    log.warning("call records: %s unavailable (%s); writes wait and retry (calls are not "
                                "affected)", self.where, str(exc).strip()[:120])
                    self.on_error("unavailable")
                if db is not None and not self._keeps_connection(exc):
                    with contextlib.suppress(Exception):
                        db.close()
                    db = None
                time.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
        raise AssertionError("unreachable")

    def _keeps_connection(self, exc: Exception) -> bool:
        """After this transient error the same connection can be retried (a lock), else a new one is made."""
        return True

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        def write(db: Any) -> None:
            db.execute(self._q(sql), params)

        self._queue.put(write)

    def _ensure(self, call_sid: str) -> None:
        self._write("INSERT INTO calls (call_sid, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (call_sid, time.time()))

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

        def write(db: Any) -> None:
            number = sequence
            db.execute(self.BEGIN)
            try:
                if number is None:
                    row = db.execute(self._q("SELECT MAX(sequence) AS top FROM call_status WHERE call_sid = ?"),
                                     (call_sid,)).fetchone()
                    number = (row["top"] if row["top"] is not None else -1) + 1
                db.execute(self._q("INSERT INTO call_status VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"),
                           (call_sid, number, status, received))
                db.execute(self._q("UPDATE calls SET status = ?, status_sequence = ? "
                                   "WHERE call_sid = ? AND status_sequence < ?"), (status, number, call_sid, number))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        self._queue.put(write)

    def stream_started(self, call_sid: str) -> None:
        self._ensure(call_sid)
        if self.node:
            self._write("UPDATE calls SET started_at = ?, node = ? WHERE call_sid = ?", (time.time(), self.node, call_sid))
        else:
            self._write("UPDATE calls SET started_at = ? WHERE call_sid = ?", (time.time(), call_sid))

    def answered_by(self, call_sid: str, answered_by: str) -> None:
        self._ensure(call_sid)
        self._write("UPDATE calls SET answered_by = ? WHERE call_sid = ?", (answered_by, call_sid))

    def turn(self, call_sid: str, turn: int, timings: dict[str, object],
             transcript: list[dict[str, str]] | None = None) -> None:
        """A finished turn, stored as it happens (a crash loses at most the turn in progress); with transcripts
        on, what was said so far too."""
        self._ensure(call_sid)
        self._write("INSERT INTO turns VALUES (?, ?, ?) ON CONFLICT (call_sid, turn) DO UPDATE SET timings = "
                    "excluded.timings", (call_sid, turn, json.dumps({**timings, "ended_at": time.time()})))
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
        rows = self._read("SELECT * FROM calls ORDER BY created_at DESC LIMIT ?", (limit,))
        return [self._call(row, with_details=False) for row in rows]

    def recent_turns(self, limit: int = 500) -> list[dict[str, Any]]:
        """The last `limit` turns of every call, oldest first: timings with call_sid, turn and ended_at."""
        rows = self._read(f"SELECT call_sid, timings FROM turns ORDER BY {self.ENDED_AT} DESC LIMIT ?", (limit,))
        return [{**json.loads(row["timings"]), "call_sid": row["call_sid"]} for row in reversed(rows)]

    def get(self, call_sid: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM calls WHERE call_sid = ?", (call_sid,))
        return self._call(rows[0], with_details=True) if rows else None

    def _call(self, call: dict[str, Any], with_details: bool) -> dict[str, Any]:
        call["transcript"] = json.loads(call["transcript"]) if call["transcript"] else None
        call.pop("node", None)
        timings = [json.loads(r["timings"]) for r in self._read(
            "SELECT timings FROM turns WHERE call_sid = ? ORDER BY turn", (call["call_sid"],))]
        history = self._read("SELECT sequence, status, received_at FROM call_status WHERE call_sid = ? ORDER BY "
                             "sequence", (call["call_sid"],))
        latencies = sorted(t["voice_to_voice"] for t in timings if t.get("voice_to_voice") is not None)
        call["voice_to_voice_p50"] = latencies[len(latencies) // 2] if latencies else None
        if with_details:
            call["turn_timings"] = timings
            call["status_history"] = history
        else:
            del call["transcript"]
        return call


class SqliteCallRecords(QueuedCallRecords):
    """The embedded default: one file per server (VOICEPIPE_DATA_DIR/calls.sqlite3), readable by its owner."""

    def __init__(self, data_dir: Path, on_error: Callable[[str], None] | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = data_dir / "calls.sqlite3"
        self.where = str(self.path)
        fresh = not self.path.exists()
        db = self._connect()
        if fresh:
            os.chmod(self.path, 0o600)  # records may hold transcripts: the operator's eyes only
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        columns = {row["name"] for row in db.execute("PRAGMA table_info(calls)")}
        if "answered_by" not in columns:  # a file from before answering-machine detection
            db.execute("ALTER TABLE calls ADD COLUMN answered_by TEXT NOT NULL DEFAULT ''")
        db.close()
        self._start(on_error)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def _transient(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def open_records(settings: Settings, on_error: Callable[[str], None] | None = None) -> QueuedCallRecords:
    """PostgreSQL with VOICEPIPE_DATABASE_URL (several nodes), else this node's SQLite file."""
    if settings.database_url:
        from voicepipe.service.records_pg import PostgresCallRecords

        return PostgresCallRecords(settings.database_url, settings.node_name, on_error)
    return SqliteCallRecords(settings.data_dir, on_error)
