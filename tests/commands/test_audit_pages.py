"""`gridflex audit` pages instead of stopping in silence, and old rows go by retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.service.store import Store
from tests.helpers.cli import gridflex


def test_audit_pages_through_every_row_and_says_when_more_follow(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    store = Store(db)
    now = datetime.now(UTC)
    for k in range(25):
        store.audit(now - timedelta(minutes=25 - k), "test", f"row-{k:02d}", {"k": k})
    store.close()
    seen: list[str] = []
    after = "0"
    for _ in range(5):
        done = gridflex("audit", "--database", str(db), "--since", "2h", "--limit", "10",
                        "--after", after)  # fmt: skip
        assert done.returncode == 0, done.stderr
        seen += [line.split()[3] for line in done.stdout.splitlines()]
        if "more rows follow" not in done.stderr:
            break
        after = done.stderr.rsplit("--after ", 1)[1].strip()
    assert seen == [f"row-{k:02d}" for k in range(25)]


def test_rows_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    now = datetime.now(UTC)
    store.audit(now - timedelta(days=500), "test", "old", {})
    store.audit(now - timedelta(days=1), "test", "recent", {})
    store.prune_audit(now - timedelta(days=400))
    assert [r.subject for r in store.audit_since(now - timedelta(days=1000))] == ["recent"]
    store.close()
