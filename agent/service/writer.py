"""Database writes off the event loop: one writer thread, batches committed in order.

The service's loop must not wait on SQLite: a busy timeout, a slow disk or another process holding
the write lock would stop cycles, telemetry and device reads for as long. So the loop hands each
transaction (a batch of statements) to this thread and goes on; the thread commits the batches
in the order they were handed over. A batch that meets a transient failure (locked, busy, disk
full, read-only, I/O) is retried with backoff until it commits: nothing the service
decided is dropped. A batch that can never commit (a bug: a constraint, a value SQLite refuses) is
logged and dropped, so it cannot stop every write after it.

Whoever must not go on before a write is durable (the MQTT intake: a message is acknowledged to
the broker only once its outcome is committed) awaits `committed(after=mark)`, which raises
StoreError when a batch handed over after `mark` was dropped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import GridflexError

__all__ = ["SqlWriter", "Statement", "StoreError", "apply_batch"]

log = logging.getLogger("gridflex.store")

RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0


class StoreError(GridflexError):
    """A write the caller waited for was not committed."""


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: Sequence[Any] | Sequence[Sequence[Any]] = ()
    many: bool = False


def apply_batch(db: sqlite3.Connection, batch: Sequence[Statement]) -> None:
    """Run `batch` as one transaction (autocommit connection: isolation_level=None)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in batch:
            if statement.many:
                db.executemany(statement.sql, statement.params)
            else:
                db.execute(statement.sql, statement.params)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqlWriter:
    """The writer thread of one database file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[tuple[int, Sequence[Statement]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._handed = 0  # sequence number of the last batch handed over
        self._done = 0  # ... and of the last one committed or dropped (FIFO: all before too)
        self._dropped: deque[int] = deque(maxlen=1000)
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.waiting_since: float | None = None  # monotonic s since writes have been failing
        self._thread = threading.Thread(target=self._run, name="gridflex-db-writer", daemon=True)
        self._thread.start()

    @property
    def mark(self) -> int:
        """The last batch handed over so far; pass it to `committed(after=...)`."""
        return self._handed

    @property
    def queued(self) -> int:
        return self._handed - self._done

    def submit(self, batch: Sequence[Statement]) -> int:
        with self._lock:
            self._handed += 1
            seq = self._handed
        self._queue.put((seq, batch))
        return seq

    async def committed(self, *, after: int = 0, upto: int | None = None) -> None:
        """Return once every batch up to `upto` (default: all handed over so far) is done; raise
        StoreError if one handed over after `after` was dropped."""
        target = self._handed if upto is None else upto
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = None
        with self._lock:
            if self._done < target:
                future = loop.create_future()
                self._waiters.append((target, loop, future))
        if future is not None:
            await future
        lost = [seq for seq in self._dropped if after < seq <= target]
        if lost:
            raise StoreError(f"{len(lost)} database write(s) could not be committed")

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Block until everything handed over so far is done (never from the service's loop:
        command-line tools and tests); False on timeout."""
        target = self._handed
        with self._progress:
            return self._progress.wait_for(lambda: self._done >= target, timeout_s)

    def close(self, timeout_s: float = 30.0) -> int:
        """Commit what is queued (up to `timeout_s`), stop the thread; how many batches are lost."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        left = self.queued
        if left:
            log.error("%d database write(s) not committed at shutdown (%s)", left, self._path)
        return left

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=1000")  # then our own backoff, logged
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            while (item := self._queue.get()) is not None:
                seq, batch = item
                ok = self._commit(db, seq, batch)
                with self._lock:
                    self._done = seq
                    if not ok:
                        self._dropped.append(seq)
                    self._progress.notify_all()
                    ready = [w for w in self._waiters if w[0] <= seq]
                    self._waiters = [w for w in self._waiters if w[0] > seq]
                for _, loop, future in ready:
                    if not loop.is_closed():
                        loop.call_soon_threadsafe(_resolve, future)
        finally:
            db.close()

    def _commit(self, db: sqlite3.Connection, seq: int, batch: Sequence[Statement]) -> bool:
        pause_s = RETRY_FIRST_S
        while True:
            try:
                apply_batch(db, batch)
            except sqlite3.OperationalError as exc:
                if not _transient(exc):
                    log.exception("database write %d dropped: it cannot be committed", seq)
                    return False
                if self.waiting_since is None:
                    self.waiting_since = time.monotonic()
                    log.warning("database writes waiting (%s); %d queued, retrying", exc,
                                self.queued)  # fmt: skip
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, RETRY_MAX_S)
                continue
            except Exception:
                log.exception("database write %d dropped: it cannot be committed", seq)
                return False
            if self.waiting_since is not None:
                log.info("database writes committing again after %.1f s",
                         time.monotonic() - self.waiting_since)  # fmt: skip
                self.waiting_since = None
            return True


# Failures the database recovers from on its own or once an engineer frees space or a lock:
# worth waiting for, never worth dropping a decision over.
_TRANSIENT = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL,
                        sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY,
                        sqlite3.SQLITE_PROTOCOL})  # fmt: skip


def _transient(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is None or (code & 0xFF) in _TRANSIENT


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
