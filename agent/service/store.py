"""SQLite (WAL) persistence: the audit log and the live state a restart resumes from.

Every signal, decision, command and result goes to `audit` (what, when, why, from whom). The live
state (events with their status, overrides, each device's last setpoint, the engine's memory of
shed baselines) is kept in its own tables and rewritten as it changes, each cycle in one
transaction, so a restart, even after kill -9, resumes an active event with the same baseline:
no second shed on top of the first, no dropped event. WAL with synchronous=NORMAL survives a
process crash (a committed transaction is in the log); only an OS crash may lose the last one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.domain.signals import Obligation, ObligationKind, Override, OverrideAction, PriceSignal
from agent.service.compliance import Compliance

__all__ = ["AuditRow", "EventRecord", "SavedMemory", "Store"]

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
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    retain INTEGER NOT NULL
);
"""

# Statuses after which an event no longer binds the site.
FINAL_STATUSES = frozenset({"completed", "expired", "rejected"})
# Statuses of a live event: taken, verified under its ceiling, verified over it after that.
LIVE_STATUSES = frozenset({"accepted", "active", "non_compliant"})


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A dispatch event as the site engineer and the ack topic see it."""

    event_id: str
    kind: str  # limit | shed
    requested_kw: float
    start_utc: datetime
    end_utc: datetime | None
    program: str
    source: str
    status: str  # accepted | active | completed | expired
    reason: str
    received_at_utc: datetime
    updated_at_utc: datetime
    achieved_kw: float | None = None
    verified_at_utc: datetime | None = None
    # Sources that revise an event in place (OpenADR): the sender's revision (modification
    # number) and when the obligation last changed. MQTT events keep None: a repeat is a duplicate.
    revision: int | None = None
    revised_at_utc: datetime | None = None
    # judged on verified power every cycle from the event's first (agent.service.compliance)
    compliance: Compliance | None = None

    def obligation(self) -> Obligation:
        return Obligation(
            event_id=self.event_id,
            kind=ObligationKind(self.kind),
            kw=self.requested_kw,
            start_utc=self.start_utc,
            end_utc=self.end_utc,
            program=self.program,
            source=self.source,
        )

    def to_json(self) -> str:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = _iso(value)
        if isinstance(data.get("compliance"), dict):
            compliance = data["compliance"]
            for key in ("worst_at_utc", "last_judged_utc"):
                compliance[key] = _iso(compliance[key])
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EventRecord:
        data = json.loads(text)
        for key in (
            "start_utc", "end_utc", "received_at_utc", "updated_at_utc", "verified_at_utc",
            "revised_at_utc",
        ):  # fmt: skip
            data[key] = _parse(data.get(key))  # a row written before a field existed lacks it
        compliance = data.get("compliance")
        if isinstance(compliance, dict):
            for key in ("worst_at_utc", "last_judged_utc"):
                compliance[key] = _parse(compliance.get(key))
            data["compliance"] = Compliance(**compliance)
        return cls(**data)


@dataclass(frozen=True, slots=True)
class AuditRow:
    at_utc: datetime
    kind: str
    subject: str
    source: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SavedMemory:
    """What the engine's memory needs to resume: per-device setpoints and shed baselines."""

    setpoint_kw: dict[str, float]
    changed_at_s: dict[str, float]
    baselines_kw: dict[str, float]
    class_running: dict[str, bool]
    decided_at_utc: datetime | None


def _override_json(override: Override) -> str:
    data = asdict(override)
    data["action"] = override.action.value
    data["expires_at_utc"] = _iso(override.expires_at_utc)
    issued = override.issued_at_utc
    data["issued_at_utc"] = None if issued is None else _iso(issued)
    return json.dumps(data, sort_keys=True)


def _override_from_json(text: str) -> Override:
    data = json.loads(text)
    data["action"] = OverrideAction(data["action"])
    data["expires_at_utc"] = datetime.fromisoformat(data["expires_at_utc"])
    issued = data.get("issued_at_utc")
    data["issued_at_utc"] = None if issued is None else datetime.fromisoformat(issued)
    return Override(**data)


class Store:
    """One SQLite database. Use from one thread (the service's event loop)."""

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._depth = 0

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes (one cycle) into one atomic commit; nests."""
        if self._depth == 0:
            self._db.execute("BEGIN")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
            raise
        self._depth -= 1
        if self._depth == 0:
            self._db.execute("COMMIT")

    # -- audit -------------------------------------------------------------------------------
    def audit(
        self, at: datetime, kind: str, subject: str, detail: Mapping[str, Any], source: str = ""
    ) -> None:
        self._db.execute(
            "INSERT INTO audit(at_utc, kind, subject, source, detail) VALUES (?, ?, ?, ?, ?)",
            (_iso(at), kind, subject, source, json.dumps(detail, sort_keys=True, default=str)),
        )

    def audit_since(
        self, since: datetime, limit: int = 10_000, *, subject: str | None = None
    ) -> list[AuditRow]:
        if subject is None:
            rows = self._db.execute(
                "SELECT at_utc, kind, subject, source, detail FROM audit WHERE at_utc >= ? "
                "ORDER BY id LIMIT ?",
                (_iso(since), limit),
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT at_utc, kind, subject, source, detail FROM audit WHERE at_utc >= ? "
                "AND subject = ? ORDER BY id LIMIT ?",
                (_iso(since), subject, limit),
            ).fetchall()
        return [
            AuditRow(datetime.fromisoformat(at), kind, subject, source, json.loads(detail))
            for at, kind, subject, source, detail in rows
        ]

    # -- events ------------------------------------------------------------------------------
    def put_event(self, record: EventRecord) -> None:
        self._db.execute(
            "INSERT INTO events(event_id, record, status, updated_at_utc) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(event_id) DO UPDATE SET record=excluded.record, status=excluded.status, "
            "updated_at_utc=excluded.updated_at_utc",
            (record.event_id, record.to_json(), record.status, _iso(record.updated_at_utc)),
        )

    def events(self, *, live_only: bool = False) -> list[EventRecord]:
        rows = self._db.execute("SELECT record FROM events ORDER BY updated_at_utc").fetchall()
        records = [EventRecord.from_json(text) for (text,) in rows]
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
        self._db.execute(
            "INSERT OR REPLACE INTO overrides(override_id, record) VALUES (?, ?)",
            (override.override_id, _override_json(override)),
        )

    def delete_override(self, override_id: str) -> None:
        self._db.execute("DELETE FROM overrides WHERE override_id = ?", (override_id,))

    def overrides(self) -> list[Override]:
        rows = self._db.execute("SELECT record FROM overrides ORDER BY override_id").fetchall()
        return [_override_from_json(text) for (text,) in rows]

    # -- the engine's memory -----------------------------------------------------------------
    def save_setpoints(self, rows: list[tuple[str, float, float]]) -> None:
        """(device_id, kw, changed_at_s) of the devices whose setpoint changed."""
        self._db.executemany(
            "INSERT OR REPLACE INTO setpoints(device_id, kw, changed_at_s) VALUES (?, ?, ?)", rows
        )

    def outbox_put(self, topic: str, payload: str, *, retain: bool) -> int:
        """Keep an outgoing message until the broker confirmed it (agent.service.outbox)."""
        cursor = self._db.execute(
            "INSERT INTO outbox(topic, payload, retain) VALUES (?, ?, ?)",
            (topic, payload, int(retain)),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def outbox_done(self, row_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def outbox_pending(self) -> list[tuple[int, str, str, bool]]:
        rows = self._db.execute(
            "SELECT id, topic, payload, retain FROM outbox ORDER BY id"
        ).fetchall()
        return [(int(i), str(t), str(p), bool(r)) for i, t, p, r in rows]

    def save_state(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)",
            (key, json.dumps(value, sort_keys=True, default=str)),
        )

    def load_state(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def save_price(self, price: PriceSignal) -> None:
        """The last price, with its interval: a restart decides on it while it is fresh."""
        self.save_state(
            "price",
            {
                "price_usd_per_mwh": price.price_usd_per_mwh,
                "interval_start_utc": _iso(price.interval_start_utc),
                "interval_end_utc": _iso(price.interval_end_utc),
                "observed_at_utc": _iso(price.observed_at_utc),
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
        return SavedMemory(
            setpoint_kw={device_id: kw for device_id, kw, _ in rows},
            changed_at_s={device_id: changed for device_id, _, changed in rows},
            baselines_kw={k: float(v) for k, v in engine.get("baselines_kw", {}).items()},
            class_running={k: bool(v) for k, v in engine.get("class_running", {}).items()},
            decided_at_utc=_parse(engine.get("decided_at_utc")),
        )
