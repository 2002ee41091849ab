"""The store's file: its schema, opening it, and setting a damaged one aside."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["open_database", "set_aside"]

log = logging.getLogger("gridflex.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_utc TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at_utc);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    status TEXT NOT NULL,
    updated_at_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS overrides (
    override_id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS setpoints (
    device_id TEXT PRIMARY KEY,
    kw REAL NOT NULL,
    changed_at_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_messages (
    message_id TEXT PRIMARY KEY,
    at_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_utc TEXT NOT NULL,
    source_table TEXT NOT NULL,
    row_key TEXT NOT NULL,
    content TEXT NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow (
    at_utc TEXT NOT NULL,
    price_usd_per_mwh REAL,
    site_kw REAL NOT NULL,
    would_kw REAL NOT NULL,
    ceiling_kw REAL,
    events TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_at ON shadow(at_utc);
CREATE TABLE IF NOT EXISTS history (
    minute_utc TEXT PRIMARY KEY,
    site_kw REAL NOT NULL,
    planned_kw REAL NOT NULL,
    ceiling_kw REAL,
    price_usd_per_mwh REAL,
    class_kw TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    retain INTEGER NOT NULL
);
"""


def open_database(path: Path) -> sqlite3.Connection:
    """The database, its schema in place, every table of the live state read once (a damaged
    file fails here, not at the first cycle)."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=1000")
        db.executescript(_SCHEMA)
        for table in ("events", "overrides", "setpoints", "state", "seen_messages", "outbox"):
            db.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 - our table names
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def set_aside(path: Path, exc: sqlite3.DatabaseError) -> tuple[Path, str | None]:
    """Move a damaged database (and its -wal and -shm) aside; what it still says of the last
    price, if that much can be read."""
    price = None
    readonly = f"file:{path}?mode=ro"
    with (contextlib.suppress(sqlite3.DatabaseError),
          contextlib.closing(sqlite3.connect(readonly, uri=True)) as old):  # fmt: skip
        row = old.execute("SELECT value FROM state WHERE key = 'price'").fetchone()
        price = None if row is None else str(row[0])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{aside}{suffix}"))
    log.error("database %s cannot be read (%s): moved aside to %s; starting on a fresh one%s",
              path, exc, aside, " (the last price kept)" if price else "")  # fmt: skip
    return aside, price
