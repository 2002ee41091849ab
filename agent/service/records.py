"""What the store keeps, as the service sees it: event records (with their compliance), audit
rows, the engine's saved memory, and the JSON each is stored as."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.domain.signals import Obligation, ObligationKind, Override, OverrideAction
from agent.service.compliance import Compliance

__all__ = [
    "FINAL_STATUSES", "LIVE_STATUSES", "AuditRow", "EventRecord", "SavedMemory", "ShadowRow", "iso",
    "override_from_json", "override_json", "parse",
]  # fmt: skip

# Statuses after which an event no longer binds the site.
FINAL_STATUSES = frozenset({"completed", "expired", "rejected", "cancelled"})
# Statuses of a live event: taken, verified under its ceiling, verified over it after that.
LIVE_STATUSES = frozenset({"accepted", "active", "non_compliant"})


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def parse(text: str | None) -> datetime | None:
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
    # what the site said at acceptance it cannot deliver without load the event may not cut:
    # compliance is judged against the ceiling plus it
    expected_shortfall_kw: float = 0.0

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

    def checked(self) -> EventRecord:
        """Itself, once every time converts to UTC and every kW is finite (ValueError or
        OverflowError if not): what a restart may resume from."""
        for name in ("start_utc", "end_utc", "received_at_utc", "updated_at_utc"):
            value = getattr(self, name)
            if value is not None:
                value.astimezone(UTC)
        if not abs(self.requested_kw) < float("inf"):
            raise ValueError(f"requested_kw {self.requested_kw}")
        return self

    def to_json(self) -> str:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = iso(value)
        if isinstance(data.get("compliance"), dict):
            compliance = data["compliance"]
            for key in ("worst_at_utc", "last_judged_utc"):
                compliance[key] = iso(compliance[key])
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EventRecord:
        data = json.loads(text)
        for key in (
            "start_utc", "end_utc", "received_at_utc", "updated_at_utc", "verified_at_utc",
            "revised_at_utc",
        ):  # fmt: skip
            data[key] = parse(data.get(key))  # a row written before a field existed lacks it
        compliance = data.get("compliance")
        if isinstance(compliance, dict):
            for key in ("worst_at_utc", "last_judged_utc"):
                compliance[key] = parse(compliance.get(key))
            compliance["over_periods"] = tuple(
                (str(start), None if end is None else str(end))
                for start, end in compliance.get("over_periods", ())
            )
            compliance["intervals_missed"] = tuple(
                (str(start), float(kw), float(set_kw))
                for start, kw, set_kw in compliance.get("intervals_missed", ())
            )
            data["compliance"] = Compliance(**compliance)
        return cls(**data)


@dataclass(frozen=True, slots=True)
class AuditRow:
    at_utc: datetime
    kind: str
    subject: str
    source: str
    detail: dict[str, Any]
    row_id: int = 0  # the audit's own sequence: where a next page starts (--after)


@dataclass(frozen=True, slots=True)
class ShadowRow:
    """One cycle in shadow mode: what the site drew (measured) and what gridflex planned."""

    at_utc: datetime
    price_usd_per_mwh: float | None
    site_kw: float
    would_kw: float
    ceiling_kw: float | None
    events: tuple[str, ...]  # the live events' ids


@dataclass(frozen=True, slots=True)
class SavedMemory:
    """What the engine's memory needs to resume: per-device setpoints and shed baselines."""

    setpoint_kw: dict[str, float]
    changed_at_s: dict[str, float]
    baselines_kw: dict[str, float]
    class_running: dict[str, bool]
    decided_at_utc: datetime | None
    # inference pools: servers serving, and since when a ceiling has capped each (the flex
    # tier's clock: a restart must not hand a pool a fresh tier mid-event)
    pool_serving: dict[str, int] = field(default_factory=dict)
    pool_capped_since_s: dict[str, float] = field(default_factory=dict)


def override_json(override: Override) -> str:
    data = asdict(override)
    data["action"] = override.action.value
    data["expires_at_utc"] = iso(override.expires_at_utc)
    issued = override.issued_at_utc
    data["issued_at_utc"] = None if issued is None else iso(issued)
    return json.dumps(data, sort_keys=True)


def override_from_json(text: str) -> Override:
    data = json.loads(text)
    data["action"] = OverrideAction(data["action"])
    data["expires_at_utc"] = datetime.fromisoformat(data["expires_at_utc"])
    issued = data.get("issued_at_utc")
    data["issued_at_utc"] = None if issued is None else datetime.fromisoformat(issued)
    return Override(**data)
