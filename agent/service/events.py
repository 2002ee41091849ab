"""The life of a dispatch event: accepted -> active -> completed (or expired), each change acked.

  accepted   the message is valid and the obligation is in the snapshot
  active     the site's *verified* load (measured, else the applied setpoint) is at or below the
             event's ceiling; `achieved_kw` says how low it got
  completed  released by the grid, or its end passed after it was active
  expired    its end passed and the load never got under the ceiling
  rejected   (never stored as an event) the message could not be taken; the reason says why

A duplicate event_id changes nothing: the first message wins, later ones are audited and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from agent.domain.signals import ObligationCancel
from agent.policy import Decision
from agent.service.snapshot import SnapshotStore
from agent.service.store import FINAL_STATUSES, EventRecord, Store

__all__ = ["Ack", "EventBook", "verified_under"]

log = logging.getLogger("gridflex.events")

# Meter noise and float rounding: a ceiling counts as met within 0.5 % (or 0.1 kW).
_TOLERANCE_FRACTION = 0.005
_TOLERANCE_KW = 0.1


def verified_under(achieved_kw: float, ceiling_kw: float) -> bool:
    return achieved_kw <= ceiling_kw + max(_TOLERANCE_KW, _TOLERANCE_FRACTION * ceiling_kw)


Ack = Callable[[EventRecord], None]
Latency = Callable[[EventRecord, float], None]


class EventBook:
    """Keeps the live events, the snapshot's obligations and the store in step."""

    def __init__(
        self,
        store: Store,
        snapshot: SnapshotStore,
        ack: Ack,
        on_verified: Latency | None = None,
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._ack = ack
        self._on_verified = on_verified
        self._live: dict[str, EventRecord] = {}

    @property
    def live(self) -> list[EventRecord]:
        return sorted(self._live.values(), key=lambda r: r.event_id)

    def resume(self) -> list[EventRecord]:
        """After a restart: put every live event back into the snapshot, status unchanged."""
        for record in self._store.events(live_only=True):
            self._live[record.event_id] = record
            self._snapshot(record.obligation())
        return self.live

    def known(self, event_id: str) -> bool:
        return event_id in self._live or self._store.event(event_id) is not None

    def accept(self, record: EventRecord) -> bool:
        """Take a new event; False (and nothing changes) when its event_id is already known."""
        if self.known(record.event_id):
            self._store.audit(
                record.received_at_utc,
                "duplicate",
                record.event_id,
                {"ignored": True},
                record.source,
            )
            return False
        self._live[record.event_id] = record
        self._save(record)
        log.info("event %s accepted: %s %.0f kW", record.event_id, record.kind, record.requested_kw)
        self._snapshot(record.obligation())
        return True

    def release(self, event_id: str, at: datetime, source: str) -> EventRecord | None:
        """The grid ends an event early; None when no live event has that id."""
        record = self._live.pop(event_id, None)
        if record is None:
            return None
        done = replace(
            record, status="completed", reason=f"released by {source}", updated_at_utc=at
        )
        self._save(done)
        log.info("event %s released by %s", event_id, source)
        self._snapshot(ObligationCancel(event_id, at, source))
        return done

    def after_cycle(self, now: datetime, decision: Decision, achieved_kw: float) -> None:
        """Move events on from what the cycle verified."""
        ceilings = {s.event_id: s.ceiling_kw for s in decision.obligations}
        for record in list(self._live.values()):
            if record.end_utc is not None and now >= record.end_utc:
                self._finish(record, now)
                continue
            ceiling = ceilings.get(record.event_id)
            if ceiling is None or record.status != "accepted":
                continue
            if verified_under(achieved_kw, ceiling):
                latency_s = (now - record.received_at_utc).total_seconds()
                active = replace(
                    record,
                    status="active",
                    reason=f"site verified at {achieved_kw:.1f} kW, ceiling {ceiling:.1f} kW",
                    achieved_kw=round(achieved_kw, 3),
                    verified_at_utc=now,
                    updated_at_utc=now,
                )
                self._live[record.event_id] = active
                self._save(active)
                log.info("event %s active: %s", record.event_id, active.reason)
                if self._on_verified is not None:
                    self._on_verified(active, latency_s)

    def _finish(self, record: EventRecord, now: datetime) -> None:
        del self._live[record.event_id]
        if record.status == "active":
            done = replace(record, status="completed", reason="event ended", updated_at_utc=now)
        else:
            done = replace(
                record,
                status="expired",
                reason="event ended before the load was verified under its ceiling",
                updated_at_utc=now,
            )
        self._save(done)
        log.info("event %s %s", record.event_id, done.status)

    def _save(self, record: EventRecord) -> None:
        assert record.status in FINAL_STATUSES | {"accepted", "active"}
        with self._store.transaction():
            self._store.put_event(record)
            self._store.audit(
                record.updated_at_utc,
                f"event-{record.status}",
                record.event_id,
                {
                    "kind": record.kind,
                    "requested_kw": record.requested_kw,
                    "achieved_kw": record.achieved_kw,
                    "reason": record.reason,
                    "program": record.program,
                },
                record.source,
            )
        self._ack(record)
