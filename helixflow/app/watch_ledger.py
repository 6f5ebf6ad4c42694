"""The watcher's SQLite ledger: what was announced, lone mates waiting, polling cursors.

State that must survive a restart of `helixflow watch` (`helixflow.app.watch`): each
announced object version (so nothing is announced twice), R1/R2 mates waiting for their
partner (so a restart does not forget them), and, for polled buckets, the last ETag
handled per key and the newest LastModified listed. Writes happen inside `transaction()`
(`BEGIN IMMEDIATE`), which the watcher holds while it emits and flushes events.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helixflow.app.s3events import ObjectCreated

_SCHEMA = """
CREATE TABLE IF NOT EXISTS announced (       -- one row per object version per announcement
    event_id     TEXT NOT NULL,
    role         TEXT NOT NULL,              -- R1, R2 or single
    bucket       TEXT NOT NULL,
    key          TEXT NOT NULL,
    etag         TEXT NOT NULL,
    sample       TEXT NOT NULL,
    announced_at REAL NOT NULL,
    PRIMARY KEY (event_id, role)
);
CREATE INDEX IF NOT EXISTS announced_object ON announced (bucket, key, etag);
CREATE TABLE IF NOT EXISTS versions (        -- latest known version of each key
    bucket     TEXT NOT NULL,
    key        TEXT NOT NULL,
    etag       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    sequencer  TEXT,
    event_time TEXT,
    event_name TEXT NOT NULL,
    seen_at    REAL NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS pending (         -- lone mates waiting for their partner
    bucket     TEXT NOT NULL,
    key        TEXT NOT NULL,
    etag       TEXT NOT NULL,
    mate_key   TEXT NOT NULL,
    arrived_at REAL NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS poll_seen (       -- polling cursor: (key, ETag) already handled
    bucket        TEXT NOT NULL,
    key           TEXT NOT NULL,
    etag          TEXT NOT NULL,
    last_modified TEXT,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS poll_cursor (     -- polling cursor: watermark per bucket/prefix
    bucket        TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    watermark     TEXT,                      -- newest LastModified seen (ISO 8601)
    listed_at     REAL NOT NULL,
    PRIMARY KEY (bucket, prefix)
);
"""


class Ledger:
    """The watcher's memory in one SQLite file (WAL): announced, versions, pending, cursor.

    Opened with autocommit off (`isolation_level=None` plus explicit `BEGIN IMMEDIATE` in
    `transaction`), so each decision and its record are committed together or not at all.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._depth = 0

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one); rollback on error."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    # announced
    def is_announced(self, bucket: str, key: str, etag: str) -> bool:
        row = self._db.execute("SELECT 1 FROM announced WHERE bucket=? AND key=? AND etag=?",
                               (bucket, key, etag)).fetchone()
        return row is not None

    def has_event(self, event_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM announced WHERE event_id=?",
                                (event_id,)).fetchone() is not None

    def record_announcement(self, event_id: str, sample: str,
                            objects: Sequence[tuple[str, ObjectCreated]], now: float) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO announced VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(event_id, role, o.bucket, o.key, o.etag, sample, now) for role, o in objects],
        )

    def announcements(self) -> list[dict[str, Any]]:
        """Every announced object version, oldest first (for status output and tests)."""
        rows = self._db.execute("SELECT * FROM announced ORDER BY announced_at, event_id, role")
        return [dict(r) for r in rows]

    # versions
    def latest(self, bucket: str, key: str) -> ObjectCreated | None:
        row = self._db.execute("SELECT * FROM versions WHERE bucket=? AND key=?",
                               (bucket, key)).fetchone()
        if row is None:
            return None
        return ObjectCreated(bucket=row["bucket"], key=row["key"], etag=row["etag"],
                             size=row["size"], sequencer=row["sequencer"],
                             event_time=row["event_time"], event_name=row["event_name"])

    def set_latest(self, obj: ObjectCreated, now: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (obj.bucket, obj.key, obj.etag, obj.size, obj.sequencer, obj.event_time,
             obj.event_name, now),
        )

    # pending
    def pending(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM pending ORDER BY arrived_at")]

    def pending_etag(self, bucket: str, key: str) -> str | None:
        row = self._db.execute("SELECT etag FROM pending WHERE bucket=? AND key=?",
                               (bucket, key)).fetchone()
        return None if row is None else str(row["etag"])

    def add_pending(self, obj: ObjectCreated, mate_key: str, now: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?)",
                         (obj.bucket, obj.key, obj.etag, mate_key, now))

    def drop_pending(self, bucket: str, key: str) -> None:
        self._db.execute("DELETE FROM pending WHERE bucket=? AND key=?", (bucket, key))

    # polling cursor
    def poll_seen(self, bucket: str, key: str) -> str | None:
        row = self._db.execute("SELECT etag FROM poll_seen WHERE bucket=? AND key=?",
                               (bucket, key)).fetchone()
        return None if row is None else str(row["etag"])

    def mark_polled(self, bucket: str, key: str, etag: str, last_modified: str | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO poll_seen VALUES (?, ?, ?, ?)",
                         (bucket, key, etag, last_modified))

    def cursor(self, bucket: str, prefix: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM poll_cursor WHERE bucket=? AND prefix=?",
                               (bucket, prefix)).fetchone()
        return None if row is None else dict(row)

    def set_cursor(self, bucket: str, prefix: str, watermark: str | None, now: float) -> None:
        self._db.execute(
            "INSERT INTO poll_cursor VALUES (?, ?, ?, ?) ON CONFLICT (bucket, prefix) DO UPDATE"
            " SET watermark = max(coalesce(watermark, ''), coalesce(excluded.watermark, '')),"
            " listed_at = excluded.listed_at",
            (bucket, prefix, watermark, now),
        )

