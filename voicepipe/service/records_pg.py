"""Call records in PostgreSQL (VOICEPIPE_DATABASE_URL), shared by every node: /status callbacks landing on any
node, and `voicepipe calls` reading the whole cluster's calls. The same writes as SQLite (records.py), through
psycopg 3 on the records' writer thread; a database that goes away delays the records and loses none.

The schema is versioned: MIGRATIONS run at start-up, each once, under an advisory lock, so several nodes
starting together apply them once between them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from voicepipe.service.records import QueuedCallRecords

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x766F6963  # pg_advisory_xact_lock key: "voic"
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE calls (
        call_sid TEXT PRIMARY KEY,
        direction TEXT NOT NULL DEFAULT '',
        from_number TEXT NOT NULL DEFAULT '',
        to_number TEXT NOT NULL DEFAULT '',
        language TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        ended_at DOUBLE PRECISION,
        status TEXT NOT NULL DEFAULT '',
        status_sequence INTEGER NOT NULL DEFAULT -1,
        outcome TEXT NOT NULL DEFAULT '',
        answered_by TEXT NOT NULL DEFAULT '',
        turns INTEGER NOT NULL DEFAULT 0,
        transcript TEXT,
        node TEXT NOT NULL DEFAULT ''  -- the node whose stream it was: that node closes it after a crash
    );
    CREATE TABLE call_status (
        call_sid TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        status TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (call_sid, sequence)
    );
    CREATE TABLE turns (
        call_sid TEXT NOT NULL,
        turn INTEGER NOT NULL,
        timings TEXT NOT NULL,
        PRIMARY KEY (call_sid, turn)
    );
    CREATE INDEX calls_created ON calls (created_at);
    """),
]


def migrate(url: str) -> list[int]:
    """Apply the migrations this database has not had; returns the versions applied now."""
    import psycopg

    applied_now = []
    with psycopg.connect(url, autocommit=False) as db, db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS voicepipe_schema (version INTEGER PRIMARY KEY, "
                   "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        done = {row[0] for row in db.execute("SELECT version FROM voicepipe_schema")}
        for version, sql in MIGRATIONS:
            if version not in done:
                db.execute(sql)
                db.execute("INSERT INTO voicepipe_schema (version) VALUES (%s)", (version,))
                applied_now.append(version)
    return applied_now


def server_of(url: str) -> str:
    """host:port/database of a URL, never its password (it goes into log lines)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


class PostgresCallRecords(QueuedCallRecords):
    ENDED_AT = "(timings::json->>'ended_at')::double precision"
    BEGIN = "BEGIN"

    def __init__(self, url: str, node: str, on_error: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.node = node
        self.where = server_of(url)
        if applied := migrate(url):
            log.info("call records: PostgreSQL schema migrated to version %d", applied[-1])
        self._start(on_error)

    def _connect(self) -> Any:
        import psycopg
        from psycopg.rows import dict_row

        return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=5)

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _transient(self, exc: Exception) -> bool:
        import psycopg

        return isinstance(exc, psycopg.OperationalError | psycopg.errors.LockNotAvailable)

    def _keeps_connection(self, exc: Exception) -> bool:
        return False  # a lost connection: connect again

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        import psycopg

        with self._lock:
            try:
                return [dict(row) for row in self._db.execute(self._q(sql), params).fetchall()]
            except psycopg.OperationalError:
                self._db = self._connect()  # the server came back after an outage: once more, on a new connection
                return [dict(row) for row in self._db.execute(self._q(sql), params).fetchall()]
