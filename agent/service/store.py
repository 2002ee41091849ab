"""SQLite (WAL) persistence: the audit log and the live state a restart resumes from.

Every signal, decision, command and result goes to `audit` (what, when, why, from whom). The live
state (events with their status, overrides, each device's last setpoint, the engine's memory of
shed baselines) is kept in its own tables and rewritten as it changes, each cycle in one
transaction, so a restart, even after kill -9, resumes an active event with the same baseline:
no second shed on top of the first, no dropped event. WAL with synchronous=NORMAL survives a
process crash (a committed transaction is in the log); only an OS crash may lose the last one.
In the service the writes are committed by a writer thread (agent.service.writer): a kill -9
loses only what was still queued (normally one cycle's rows, milliseconds old), and an inbound
message is acknowledged to the broker only after its rows are committed.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.domain.signals import Override, PriceSignal
from agent.service.records import (
    FINAL_STATUSES,
    LIVE_STATUSES,
    AuditRow,
    EventRecord,
    SavedMemory,
    ShadowRow,
    iso,
    override_from_json,
    override_json,
    parse,
)
from agent.service.store_file import open_database, set_aside
from agent.service.writer import SqlWriter, Statement, StoreError, apply_batch

__all__ = [
    "FINAL_STATUSES", "LIVE_STATUSES", "AuditRow", "EventRecord", "SavedMemory", "Store",
    "StoreError",
]  # fmt: skip

log = logging.getLogger("gridflex.store")


_DELETE_ROW = {
    "events": "DELETE FROM events WHERE event_id = ?",
    "overrides": "DELETE FROM overrides WHERE override_id = ?",
    "state": "DELETE FROM state WHERE key = ?",
}


class Store:
    """One SQLite database, used from the service's event loop.

    With `write_behind` (the service) every write is handed to a writer thread
    (agent.service.writer) and the loop never waits on SQLite; reads see what is committed, and
    whoever needs a write durable awaits `committed()`. Without it (the command-line tools,
    unit tests) writes commit before the call returns.
    """

    def __init__(self, path: Path | str, *, write_behind: bool = False) -> None:
        path = Path(path)
        in_memory = str(path) == ":memory:"
        if not in_memory:
            path.parent.mkdir(parents=True, exist_ok=True)
        # a file SQLite cannot read (garbage, truncated, a disk fault) must not stop every start:
        # it is moved aside, whole, for an engineer, and the service starts on a fresh one
        self.quarantined: Path | None = None
        self.salvaged_price: str | None = None
        try:
            self._db = open_database(path)
        except sqlite3.DatabaseError as exc:
            if in_memory:
                raise
            self.quarantined, self.salvaged_price = set_aside(path, exc)
            self._db = open_database(path)
            if self.salvaged_price is not None:
                self._db.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('price', ?)",
                                 (self.salvaged_price,))  # fmt: skip
        self._depth = 0
        self._batch: list[Statement] = []
        self._on_hand_over: list[Callable[[], None]] = []
        # an in-memory database is one connection's own: it cannot have a writer thread
        self._writer = SqlWriter(str(path)) if write_behind and not in_memory else None
        # the outbox's ids are the site's ack sequence numbers: they never go back, even once
        # every row is confirmed and deleted (AUTOINCREMENT keeps the highest in sqlite_sequence)
        row = self._db.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0), "
            "coalesce((SELECT max(id) FROM outbox), 0))"
        ).fetchone()
        self._outbox_id = int(row[0] or 0)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._db.close()

    @property
    def mark(self) -> int:
        """Where the writes handed over so far end (for `committed(after=...)`)."""
        return 0 if self._writer is None else self._writer.mark

    @property
    def writes_queued(self) -> int:
        return 0 if self._writer is None else self._writer.queued

    async def committed(self, *, after: int = 0) -> None:
        """Return once every write made so far is committed; StoreError if one after `after`
        was dropped. Immediate without a writer thread."""
        if self._writer is not None:
            await self._writer.committed(after=after)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Block until every write made so far is done; never from the service's loop."""
        return True if self._writer is None else self._writer.flush(timeout_s)

    @contextmanager
    def transaction(self, *, keep_on_error: bool = False) -> Iterator[None]:
        """Group writes into one atomic commit; nests (the outermost commits). An exception
        inside drops the group, unless `keep_on_error`: the cycle's transaction, whose writes
        each go with a change already made in memory, hands over what it wrote so far so that
        memory and database cannot disagree after a failed cycle."""
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                batch, self._batch = self._batch, []
                callbacks, self._on_hand_over = self._on_hand_over, []
                if keep_on_error:
                    self._hand_over(batch)
                    _call_each(callbacks)
            raise
        self._depth -= 1
        if self._depth == 0:
            batch, self._batch = self._batch, []
            callbacks, self._on_hand_over = self._on_hand_over, []
            self._hand_over(batch)
            _call_each(callbacks)

    def after_hand_over(self, callback: Callable[[], None]) -> None:
        """Call `callback` once what was written so far is handed to the database: at the end
        of the transaction in progress (also when it ends in an error and keeps its writes), at
        once outside one. A dropped transaction never calls it."""
        if self._depth:
            self._on_hand_over.append(callback)
        else:
            callback()

    def write_now(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A write of its own, never part of a transaction in progress (the outbox's deletes,
        retention): it must not wait for, nor be dropped with, a cycle's group."""
        self._hand_over([Statement(sql, params)])

    def _write(self, sql: str, params: Sequence[Any] = (), *, many: bool = False) -> None:
        statement = Statement(sql, params, many)
        if self._depth:
            self._batch.append(statement)
        else:
            self._hand_over([statement])

    def _hand_over(self, batch: list[Statement]) -> None:
        if not batch:
            return
        if self._writer is None:
            apply_batch(self._db, batch)
        else:
            self._writer.submit(batch)

    # -- audit -------------------------------------------------------------------------------
    def audit(
        self, at: datetime, kind: str, subject: str, detail: Mapping[str, Any], source: str = ""
    ) -> None:
        self._write(
            "INSERT INTO audit(at_utc, kind, subject, source, detail) VALUES (?, ?, ?, ?, ?)",
            (iso(at), kind, subject, source, json.dumps(detail, sort_keys=True, default=str)),
        )

    def audit_rows(self, at: datetime, kind: str, rows: Sequence[tuple[str, str]],
                   source: str = "") -> None:  # fmt: skip
        """Many audit rows of one kind at once: (subject, detail already as JSON)."""
        if rows:
            when = iso(at)
            self._write(
                "INSERT INTO audit(at_utc, kind, subject, source, detail) VALUES (?, ?, ?, ?, ?)",
                [(when, kind, subject, source, detail) for subject, detail in rows],
                many=True,
            )

    def audit_since(
        self,
        since: datetime,
        limit: int = 10_000,
        *,
        subject: str | None = None,
        after_id: int = 0,
    ) -> list[AuditRow]:
        """Rows at or after `since` (and after row `after_id`), oldest first, at most `limit`."""
        where, args = "at_utc >= ? AND id > ?", [iso(since), after_id]
        if subject is not None:
            where, args = where + " AND subject = ?", [*args, subject]
        rows = self._db.execute(
            "SELECT id, at_utc, kind, subject, source, detail FROM audit WHERE "  # noqa: S608
            f"{where} ORDER BY id LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [
            AuditRow(datetime.fromisoformat(at), kind, subject, source, json.loads(detail), row_id)
            for row_id, at, kind, subject, source, detail in rows
        ]

    def prune_audit(self, before: datetime) -> None:
        """Retention: rows older than `before` go (service.audit_retention_days)."""
        self.write_now("DELETE FROM audit WHERE at_utc < ?", (iso(before),))
        self.write_now("DELETE FROM shadow WHERE at_utc < ?", (iso(before),))

    # -- the status page's history: a row a minute (means of its cycles) ---------------------
    def save_history(self, minute: datetime, means: Mapping[str, Any]) -> None:
        self._write(
            "INSERT OR REPLACE INTO history(minute_utc, site_kw, planned_kw, ceiling_kw, "
            "price_usd_per_mwh, class_kw) VALUES (?, ?, ?, ?, ?, ?)",
            (iso(minute), means["site_kw"], means["planned_kw"], means["ceiling_kw"],
             means["price_usd_per_mwh"], json.dumps(means["class_kw"])),
        )  # fmt: skip

    def history_since(self, since: datetime) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT minute_utc, site_kw, planned_kw, ceiling_kw, price_usd_per_mwh, class_kw "
            "FROM history WHERE minute_utc >= ? ORDER BY minute_utc",
            (iso(since),),
        ).fetchall()
        return [
            {"at": at, "site_kw": site, "planned_kw": planned, "ceiling_kw": ceiling,
             "price_usd_per_mwh": price, "class_kw": json.loads(classes)}
            for at, site, planned, ceiling, price, classes in rows
        ]  # fmt: skip

    def prune_history(self, before: datetime) -> None:
        self.write_now("DELETE FROM history WHERE minute_utc < ?", (iso(before),))

    # -- shadow mode: per cycle, what the site drew and what gridflex would have planned -------
    def save_shadow(self, row: ShadowRow) -> None:
        self._write(
            "INSERT INTO shadow(at_utc, price_usd_per_mwh, site_kw, would_kw, ceiling_kw, "
            "events) VALUES (?, ?, ?, ?, ?, ?)",
            (iso(row.at_utc), row.price_usd_per_mwh, row.site_kw, row.would_kw, row.ceiling_kw,
             json.dumps(list(row.events))),
        )  # fmt: skip

    def shadow_since(self, since: datetime) -> list[ShadowRow]:
        rows = self._db.execute(
            "SELECT at_utc, price_usd_per_mwh, site_kw, would_kw, ceiling_kw, events FROM shadow "
            "WHERE at_utc >= ? ORDER BY at_utc",
            (iso(since),),
        ).fetchall()
        return [
            ShadowRow(datetime.fromisoformat(at), price, site, would, limit, tuple(json.loads(ev)))
            for at, price, site, would, limit, ev in rows
        ]

    # -- events ------------------------------------------------------------------------------
    def put_event(self, record: EventRecord) -> None:
        self._write(
            "INSERT INTO events(event_id, record, status, updated_at_utc) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(event_id) DO UPDATE SET record=excluded.record, status=excluded.status, "
            "updated_at_utc=excluded.updated_at_utc",
            (record.event_id, record.to_json(), record.status, iso(record.updated_at_utc)),
        )

    def events(self, *, live_only: bool = False) -> list[EventRecord]:
        """Every event that can be read; a row that cannot is quarantined (a restart must never
        fail on what it stored)."""
        rows = self._db.execute(
            "SELECT event_id, record FROM events ORDER BY updated_at_utc"
        ).fetchall()
        records = []
        for event_id, text in rows:
            try:
                records.append(EventRecord.from_json(text).checked())
            except (TypeError, ValueError, KeyError, OverflowError, RecursionError) as exc:
                self.quarantine(datetime.now(UTC), "events", event_id, text, repr(exc))
        if live_only:
            records = [r for r in records if r.status not in FINAL_STATUSES]
        return records

    def event(self, event_id: str) -> EventRecord | None:
        row = self._db.execute(
            "SELECT record FROM events WHERE event_id = ?", (event_id,)
        ).fetchone()
        return None if row is None else EventRecord.from_json(row[0])

    # -- overrides ---------------------------------------------------------------------------
    def put_override(self, override: Override) -> None:
        self._write(
            "INSERT OR REPLACE INTO overrides(override_id, record) VALUES (?, ?)",
            (override.override_id, override_json(override)),
        )

    def delete_override(self, override_id: str) -> None:
        self._write("DELETE FROM overrides WHERE override_id = ?", (override_id,))

    def overrides(self) -> list[Override]:
        rows = self._db.execute(
            "SELECT override_id, record FROM overrides ORDER BY override_id"
        ).fetchall()
        out = []
        for override_id, text in rows:
            try:
                override = override_from_json(text)
                override.expires_at_utc.astimezone(UTC)  # a year 9999 with an offset overflows
                out.append(override)
            except (TypeError, ValueError, KeyError, OverflowError, RecursionError) as exc:
                self.quarantine(datetime.now(UTC), "overrides", override_id, text, repr(exc))
        return out

    def quarantine(self, at: datetime, table: str, key: str, content: Any, error: str) -> None:
        """Set aside a stored row that cannot be loaded: kept for an engineer in `quarantine`,
        audited, and removed from the live state so the next start does not meet it again."""
        text = content if isinstance(content, str) else json.dumps(content, default=str)
        with self.transaction():
            self._write(
                "INSERT INTO quarantine(at_utc, source_table, row_key, content, error) "
                "VALUES (?, ?, ?, ?, ?)",
                (iso(at), table, key, text, error[:500]),
            )
            self._write(_DELETE_ROW[table], (key,))
            self.audit(at, "quarantined", key, {"table": table, "error": error[:500]}, "store")

    # -- the engine's memory -----------------------------------------------------------------
    def save_setpoints(self, rows: list[tuple[str, float, float]]) -> None:
        """(device_id, kw, changed_at_s) of the devices whose setpoint changed."""
        self._write(
            "INSERT OR REPLACE INTO setpoints(device_id, kw, changed_at_s) VALUES (?, ?, ?)",
            rows,
            many=True,
        )

    def next_outbox_seq(self) -> int:
        """The sequence number the next outbox row gets (ours, not SQLite's: the row may be
        committed later); the ack carries it so a receiver can order acks."""
        self._outbox_id += 1
        return self._outbox_id

    def outbox_put(self, seq: int, topic: str, payload: str, *, retain: bool) -> None:
        """Keep an outgoing message until the broker confirmed it (agent.service.outbox)."""
        self._write(
            "INSERT INTO outbox(id, topic, payload, retain) VALUES (?, ?, ?, ?)",
            (seq, topic, payload, int(retain)),
        )

    def outbox_done(self, row_id: int) -> None:
        self.write_now("DELETE FROM outbox WHERE id = ?", (row_id,))

    def outbox_pending(self) -> list[tuple[int, str, str, bool]]:
        rows = self._db.execute(
            "SELECT id, topic, payload, retain FROM outbox ORDER BY id"
        ).fetchall()
        return [(int(i), str(t), str(p), bool(r)) for i, t, p, r in rows]

    # -- replay memory (agent.service.replay) -------------------------------------------------
    def remember_message(self, message_id: str, at: datetime) -> None:
        self._write("INSERT OR IGNORE INTO seen_messages(message_id, at_utc) VALUES (?, ?)",
                    (message_id, iso(at)))  # fmt: skip

    def forget_messages_before(self, at: datetime) -> None:
        self._write("DELETE FROM seen_messages WHERE at_utc < ?", (iso(at),))

    def seen_messages(self, since: datetime) -> list[tuple[str, datetime]]:
        rows = self._db.execute(
            "SELECT message_id, at_utc FROM seen_messages WHERE at_utc >= ? ORDER BY at_utc",
            (iso(since),),
        ).fetchall()
        out = []
        for message_id, at in rows:
            try:
                out.append((str(message_id), datetime.fromisoformat(str(at))))
            except ValueError:  # never a reason not to start: the row is simply forgotten
                continue
        return out

    def save_state(self, key: str, value: Any) -> None:
        self._write(
            "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)",
            (key, json.dumps(value, sort_keys=True, default=str)),
        )

    def load_state(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except (ValueError, RecursionError) as exc:
            self.quarantine(datetime.now(UTC), "state", key, row[0], repr(exc))
            return None

    def save_price(self, price: PriceSignal) -> None:
        """The last price, with its interval: a restart decides on it while it is fresh."""
        self.save_state(
            "price",
            {
                "price_usd_per_mwh": price.price_usd_per_mwh,
                "interval_start_utc": iso(price.interval_start_utc),
                "interval_end_utc": iso(price.interval_end_utc),
                "observed_at_utc": iso(price.observed_at_utc),
                "settlement_point": price.settlement_point,
                "market": price.market,
                "source": price.source,
            },
        )

    def load_price(self) -> PriceSignal | None:
        """The persisted last price; None when there is none or the row does not make sense
        (a restart must never fail on what it stored: it then waits for a fresh price)."""
        data = self.load_state("price")
        try:
            price = PriceSignal(
                price_usd_per_mwh=float(data["price_usd_per_mwh"]),
                interval_start_utc=datetime.fromisoformat(data["interval_start_utc"]),
                interval_end_utc=datetime.fromisoformat(data["interval_end_utc"]),
                observed_at_utc=datetime.fromisoformat(data["observed_at_utc"]),
                settlement_point=str(data["settlement_point"]),
                market=str(data["market"]),
                source=str(data["source"]),
            )
        except (TypeError, KeyError, ValueError, OverflowError):
            return None
        finite = abs(price.price_usd_per_mwh) < float("inf")
        aware = price.interval_start_utc.tzinfo is not None and price.interval_end_utc.tzinfo
        return price if finite and aware else None

    def load_memory(self) -> SavedMemory | None:
        rows = self._db.execute("SELECT device_id, kw, changed_at_s FROM setpoints").fetchall()
        engine = self.load_state("engine")
        if not rows and engine is None:
            return None
        engine = engine or {}
        try:
            decided = parse(engine.get("decided_at_utc"))
            if decided is not None:
                decided.astimezone(UTC)
            return SavedMemory(
                setpoint_kw={str(d): float(kw) for d, kw, _ in rows},
                changed_at_s={str(d): float(changed) for d, _, changed in rows},
                baselines_kw={k: float(v) for k, v in engine.get("baselines_kw", {}).items()},
                class_running={k: bool(v) for k, v in engine.get("class_running", {}).items()},
                decided_at_utc=decided,
                pool_serving={str(k): int(v) for k, v in engine.get("pool_serving", {}).items()},
                pool_capped_since_s={str(k): _finite(v) for k, v
                                     in engine.get("pool_capped_since_s", {}).items()},
            )  # fmt: skip
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:
            self.quarantine(datetime.now(UTC), "state", "engine", engine, repr(exc))
            return None  # the engine starts without memory: devices are read, not guessed


def _call_each(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()


def _finite(value: Any) -> float:
    """A stored instant in POSIX seconds; anything else is a bad state (quarantined)."""
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"not an instant: {value!r}")
    return seconds
