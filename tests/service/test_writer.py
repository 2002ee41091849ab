"""The writer thread: batches commit in order, a locked database is waited out, and a batch that
can never commit is dropped alone (reported to whoever waits for it), not every write after it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.service.store import Store, StoreError

AT = datetime(2026, 7, 1, tzinfo=UTC)


def subjects(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT subject FROM audit ORDER BY id")]


def test_writes_wait_out_a_lock_in_order_and_a_poison_batch_is_dropped_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    store = Store(path, write_behind=True)
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.5, lambda: locker.execute("ROLLBACK"))

    async def main() -> None:
        release.start()
        store.audit(AT, "test", "first", {})
        before_poison = store.mark
        with store.transaction():
            store.audit(AT, "test", "poisoned", {})
            store._write("INSERT INTO no_such_table VALUES (1)")  # a bug: cannot ever commit
        after_poison = store.mark
        store.audit(AT, "test", "after", {})
        await store.committed(after=after_poison)  # the later write is not held up
        with pytest.raises(StoreError):
            await store.committed(after=before_poison)

    asyncio.run(main())
    release.join()
    locker.close()
    store.close()
    assert subjects(path) == ["first", "after"]
