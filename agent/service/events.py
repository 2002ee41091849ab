"""The life of a dispatch event: accepted -> active <-> non_compliant -> completed (or expired),
each change acked, metered and audited.

  accepted       the message is valid and the obligation is in the snapshot
  active         the site's *verified* load (measured, else the applied setpoint) is at or below
                 the event's ceiling; `achieved_kw` says how low it got
  non_compliant  after being active, a cycle verified the load over the ceiling; the reason gives
                 the kW over and the cause ("override maint-7 holds 24 kW on"); back under it, the
                 event is active again
  completed      released by the grid, or its end passed after it was active; with a shortfall
                 when any cycle since its start was over the ceiling
  expired        its end passed and the load never got under the ceiling
  rejected       (never stored as an event) the message could not be taken; the reason says why

The event book is the one place a live event lives (with its row in the `events` table, written
in the same transaction): the cycle takes its obligations from here when it freezes its inputs,
and ends events here, once, at the cycle's start.

Every cycle of a live event is judged (agent.service.compliance): the record of compliant cycles,
worst exceedance, energy delivered against asked and the baseline is stored with the event and
carried by every ack, the final one included.

A duplicate event_id changes nothing: the first message wins, later ones are audited and dropped.

A source that revises its events in place (OpenADR: same event id, a new modification number, or
the next interval of the event) goes through `revise` instead: a changed obligation replaces the
live one under the same id (the engine keeps a shed's baseline by id, so it is never re-taken),
the event goes back to "accepted" until the load is verified under the new ceiling, and the audit
log records an "event-modified" row. An unchanged re-send (a VTN after a restart) changes nothing.
MQTT events are never revised: the duplicate rule above stands for them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from agent.domain.ercot import Resource
from agent.domain.signals import Obligation, ObligationKind
from agent.policy import Decision
from agent.policy.decision import ObligationStatus
from agent.service.compliance import Compliance, off_band_kw, verified_under
from agent.service.metrics import Metrics
from agent.service.store import FINAL_STATUSES, LIVE_STATUSES, EventRecord, Store

FINISHED_KEPT = 10_000

__all__ = ["DEPLOYMENT_DEADLINE_S", "Ack", "EventBook", "verified_under"]

log = logging.getLogger("gridflex.events")


Ack = Callable[[EventRecord], None]
Latency = Callable[[EventRecord, float], None]


# ERCOT ancillary-service deployments from a Load Resource: ECRS within 10 minutes, Non-Spin
# within 30 (docs/ercot.md); a deployment is judged from its deadline on
DEPLOYMENT_DEADLINE_S = {"ECRS": 600.0, "NSRS": 1800.0}


class EventBook:
    """The live events, kept in step with the store; the source of the cycle's obligations."""

    def __init__(
        self,
        store: Store,
        ack: Ack,
        on_verified: Latency | None = None,
        metrics: Metrics | None = None,
        ramp_window_s: float = 10.0,
        *,
        resource: Resource | None = None,
    ) -> None:
        self._store = store
        self.ramp_window_s = ramp_window_s
        # the site as an ERCOT Load Resource (None: base points are refused): a base point is
        # judged within its tolerance on both sides of its trajectory
        self.resource = resource
        self._metrics = metrics
        self._ack = ack
        self._on_verified = on_verified
        self._live: dict[str, EventRecord] = {}
        # (lowest kW the site reaches without the load a program may not cut, kW now), set by
        # the assembly from the shell: what an event is declared short by at acceptance
        self.reach: Callable[[str], tuple[float, float]] | None = None
        # events finished in this run, newest last: a duplicate is recognised, and re-acked, even
        # while the final write is still on its way to the database (agent.service.writer)
        self._finished: OrderedDict[str, EventRecord] = OrderedDict()

    @property
    def live(self) -> list[EventRecord]:
        return sorted(self._live.values(), key=lambda r: r.event_id)

    def resume(self) -> list[EventRecord]:
        """After a restart: every live event followed again, status unchanged."""
        for record in self._store.events(live_only=True):
            self._live[record.event_id] = record
        return self.live

    def obligations(self) -> tuple[Obligation, ...]:
        """What the live events ask, for the cycle's frozen inputs."""
        return tuple(self._live[event_id].obligation() for event_id in sorted(self._live))

    def expire(self, now: datetime) -> list[EventRecord]:
        """End the events whose end has passed (at the cycle's start, before it decides)."""
        ended = [r for r in self._live.values() if r.end_utc is not None and now >= r.end_utc]
        for record in ended:
            self._finish(record, now)
        return ended

    def announce(self, now: datetime, what: str, reason: str) -> None:
        """Tell each live event's sender what is not a change of its status: `resumed` (the
        service followed it again after a restart: its status acked again) or `suspended` (the
        service is stopping with it live). Acked and audited, not stored as its status."""
        with self._store.transaction():
            for record in self.live:
                status = "suspended" if what == "suspended" else record.status
                told = replace(record, status=status, reason=reason, updated_at_utc=now)
                self._store.audit(now, f"event-{what}", record.event_id,
                                  {"reason": reason, "status": record.status},
                                  record.source)  # fmt: skip
                self._ack(told)

    def ack_again(self, event_id: str) -> None:
        """Publish the ack of an event as it stands (live, else as stored) once more."""
        record = self.get(event_id) or self._store.event(event_id)
        if record is not None:
            self._ack(record)

    def get(self, event_id: str) -> EventRecord | None:
        """A live event, or one finished in this run."""
        return self._live.get(event_id) or self._finished.get(event_id)

    def known(self, event_id: str) -> bool:
        return self.get(event_id) is not None or self._store.event(event_id) is not None

    def beyond_reach(self, record: EventRecord) -> EventRecord:
        """The record with its expected shortfall declared, when the site cannot get under its
        ceiling without load the event may not cut (protected, critical, unreachable)."""
        if self.reach is None:
            return record
        floor_kw, now_kw = self.reach(record.program)
        ceiling_kw = (max(0.0, now_kw - record.requested_kw) if record.kind == "shed"
                      else record.requested_kw)  # fmt: skip
        if verified_under(floor_kw, ceiling_kw):
            return record
        short_kw = round(floor_kw - ceiling_kw, 3)
        why = (f"expected shortfall {short_kw:.1f} kW: the site cannot get below "
               f"{floor_kw:.1f} kW without load a {record.program} event may not cut "
               f"(protected, critical, unreachable), and the ceiling is "
               f"{ceiling_kw:.1f} kW")  # fmt: skip
        return replace(record, expected_shortfall_kw=short_kw, reason=f"valid; {why}")

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
        return True

    def revise(
        self, obligation: Obligation, now: datetime, revision: int | None, reason: str
    ) -> str:
        """Take an obligation from a source that revises events in place; returns the outcome:
        accepted (a new event, or one that had finished), modified, unchanged, or conflict (a
        live event of another source has this id: it is left alone)."""
        record = self._live.get(obligation.event_id)
        if record is None:
            fresh = EventRecord(
                event_id=obligation.event_id,
                kind=obligation.kind.value,
                requested_kw=obligation.kw,
                start_utc=obligation.start_utc,
                end_utc=obligation.end_utc,
                program=obligation.program,
                source=obligation.source,
                status="accepted",
                reason=reason,
                received_at_utc=now,
                updated_at_utc=now,
                revision=revision,
                revised_at_utc=now,
            )
            fresh = self.beyond_reach(fresh)
            self._live[fresh.event_id] = fresh
            self._save(fresh)
            log.info("event %s accepted from %s: %s %.0f kW", fresh.event_id, fresh.source,
                     fresh.kind, fresh.requested_kw)  # fmt: skip
            return "accepted"
        if record.source != obligation.source:
            detail = {"ignored": True, "held_by": record.source}
            self._store.audit(now, "conflict", record.event_id, detail, obligation.source)
            log.warning("event %s from %s ignored: a live %s event has that id",
                        record.event_id, obligation.source, record.source)  # fmt: skip
            return "conflict"
        if record.obligation() == obligation and record.revision == revision:
            return "unchanged"
        what = f"modification {revision}" if revision != record.revision else "next interval"
        modified = replace(
            record,
            kind=obligation.kind.value,
            requested_kw=obligation.kw,
            start_utc=obligation.start_utc,
            end_utc=obligation.end_utc,
            program=obligation.program,
            status="accepted",
            reason=f"{what}: {reason}",
            updated_at_utc=now,
            achieved_kw=None,
            verified_at_utc=None,
            revision=revision,
            revised_at_utc=now,
        )
        modified = self.beyond_reach(replace(modified, expected_shortfall_kw=0.0))
        self._live[record.event_id] = modified
        self._save(modified, audit_kind="event-modified", before=record)
        log.info(
            "event %s modified (%s): %s %.0f kW -> %s %.0f kW", record.event_id, what,
            record.kind, record.requested_kw, obligation.kind.value, obligation.kw,
        )  # fmt: skip
        return "modified"  # same id: the engine keeps a shed's baseline

    def release(
        self, event_id: str, at: datetime, source: str, reason: str | None = None
    ) -> EventRecord | None:
        """The grid ends an event early; None when no live event has that id."""
        record = self._live.pop(event_id, None)
        if record is None:
            return None
        # one that never started was not delivered: cancelled, not completed
        status = "cancelled" if at < record.start_utc else "completed"
        done = replace(
            record,
            status=status,
            reason=reason or (f"cancelled by {source} before its start"
                              if status == "cancelled" else f"released by {source}"),
            updated_at_utc=at,
        )  # fmt: skip
        self._save(done)
        log.info("event %s released by %s", event_id, source)
        return done

    def _band(self, record: EventRecord) -> Callable[[float], float] | None:
        """A base point's tolerance (kW at a set point): the band it is judged in; None for
        any other event (judged under its ceiling)."""
        if self.resource is None or not ObligationKind(record.kind).is_base_point:
            return None
        return self.resource.tolerance_kw

    def window_s(self, program: str) -> float:
        """How long an event of `program` has to get there before it is judged: an ERCOT
        ancillary-service deployment its deadline, any other the service's ramp window."""
        return max(self.ramp_window_s, DEPLOYMENT_DEADLINE_S.get(program, 0.0))

    def end_at(self, event_id: str, at: datetime, now: datetime, reason: str) -> None:
        """A live event is to end at `at` (a base point replaced by one that starts then)."""
        record = self._live.get(event_id)
        if record is not None and (record.end_utc is None or at < record.end_utc):
            ending = replace(record, end_utc=at, reason=reason, updated_at_utc=now)
            self._live[event_id] = ending
            self._save(ending, audit_kind="event-modified", before=record)

    def after_cycle(
        self, now: datetime, decision: Decision, achieved_kw: float, evidence: str = ""
    ) -> None:
        """Judge every live event on the load this cycle verified (on `evidence`: the site
        meter, else the device readings), and move it on."""
        statuses = {s.event_id: s for s in decision.obligations}
        for record in list(self._live.values()):
            status = statuses.get(record.event_id)
            if status is None:
                continue  # not started yet
            asked = max(record.revised_at_utc or record.received_at_utc, record.start_utc)
            in_ramp = (now - asked).total_seconds() < self.window_s(record.program)
            on = evidence or "device readings"
            band = self._band(record)
            judged = (record.compliance or Compliance()).judge(
                now, status.ceiling_kw, achieved_kw, status.baseline_kw,
                in_ramp=in_ramp, judged_on=on,
                declared_shortfall_kw=record.expected_shortfall_kw, band=band,
            )  # fmt: skip
            current = replace(record, compliance=judged)
            self._live[record.event_id] = current
            if self._move(current, status, now, achieved_kw, in_ramp=in_ramp, on=on) is None:
                self._store.put_event(current)  # the record, quietly: no status change
        if self._metrics is not None:
            over = sum(1 for r in self._live.values() if r.status == "non_compliant")
            self._metrics.events_non_compliant.set(over)

    def _move(
        self,
        record: EventRecord,
        status: ObligationStatus,
        now: datetime,
        achieved_kw: float,
        *,
        in_ramp: bool = False,
        on: str = "device readings",
    ) -> EventRecord | None:
        """accepted -> active once under the ceiling; active or accepted (past its ramp
        window) -> non_compliant while over; non_compliant -> active when back under."""
        # an event accepted with a declared shortfall is judged against what was declared
        ceiling = status.ceiling_kw + record.expected_shortfall_kw
        under = verified_under(achieved_kw, ceiling)
        what, miss, cause = "ceiling", f"{achieved_kw - ceiling:.1f} kW over the", status.cause
        band = self._band(record)
        if band is not None:
            # a base point is met within its tolerance either way of its set point (the ramp)
            under = off_band_kw(achieved_kw, ceiling, band) == 0.0
            what = "set point"
            miss = f"{achieved_kw - ceiling:+.1f} kW (tolerance {band(ceiling):.1f}) off the"
            if achieved_kw < ceiling:
                cause = "the load that can run now does not reach it"
        at = f"site at {achieved_kw:.1f} kW on the {on}"
        if record.expected_shortfall_kw > 0:
            at += f" (declared {record.expected_shortfall_kw:.1f} kW short of the grid's ceiling)"
        if record.status == "accepted" and under:
            asked_at = record.revised_at_utc or record.received_at_utc
            moved = replace(
                record,
                status="active",
                reason=f"{at}, {what} {ceiling:.1f} kW",
                achieved_kw=round(achieved_kw, 3),
                verified_at_utc=now,
                updated_at_utc=now,
            )
            if self._on_verified is not None:
                self._on_verified(moved, (now - asked_at).total_seconds())
        elif record.status in {"active", "accepted"} and not under and not in_ramp:
            cause = cause or (
                "the measured load is above the plan: devices still settling or not obeying"
            )
            moved = replace(
                record,
                status="non_compliant",
                reason=f"{at}, {miss} {ceiling:.1f} kW {what}: {cause}",
                achieved_kw=round(achieved_kw, 3),
                updated_at_utc=now,
            )
            if self._metrics is not None:
                self._metrics.events_went_non_compliant.inc()
        elif record.status == "non_compliant" and under:
            moved = replace(
                record,
                status="active",
                reason=f"back {'under' if what == 'ceiling' else 'on'} the {what}: {at}, "
                f"{what} {ceiling:.1f} kW",
                achieved_kw=round(achieved_kw, 3),
                verified_at_utc=record.verified_at_utc or now,
                updated_at_utc=now,
            )
        else:
            return None
        self._live[record.event_id] = moved
        self._save(moved)
        log.info("event %s %s: %s", moved.event_id, moved.status, moved.reason)
        return moved

    def _finish(self, record: EventRecord, now: datetime) -> None:
        del self._live[record.event_id]
        if record.status in {"active", "non_compliant"}:
            c = record.compliance
            short = c is not None and c.compliant_cycles < c.cycles
            why = "event ended"
            if c is not None:
                why += f" with a shortfall: {c.summary()}" if short else f": {c.summary()}"
            done = replace(record, status="completed", reason=why, updated_at_utc=now)
        else:
            done = replace(
                record,
                status="expired",
                reason="event ended before the load was verified under its ceiling",
                updated_at_utc=now,
            )
        self._save(done)
        log.info("event %s %s", record.event_id, done.status)

    def _save(
        self,
        record: EventRecord,
        *,
        audit_kind: str | None = None,
        before: EventRecord | None = None,
    ) -> None:
        assert record.status in FINAL_STATUSES | LIVE_STATUSES
        detail: dict[str, object] = {
            "kind": record.kind,
            "requested_kw": record.requested_kw,
            "achieved_kw": record.achieved_kw,
            "reason": record.reason,
            "program": record.program,
        }
        if record.revision is not None:
            detail["revision"] = record.revision
            detail["start_utc"] = record.start_utc.isoformat()
            detail["end_utc"] = None if record.end_utc is None else record.end_utc.isoformat()
        if record.compliance is not None:
            c = record.compliance
            compliance: dict[str, object] = {
                "baseline_kw": c.baseline_kw, "cycles": c.cycles,
                "compliant_cycles": c.compliant_cycles, "worst_over_kw": c.worst_over_kw,
                "worst_at_utc": None if c.worst_at_utc is None else c.worst_at_utc.isoformat(),
                "asked_kwh": c.asked_kwh, "delivered_kwh": c.delivered_kwh,
            }  # fmt: skip
            if c.intervals:  # a base point's 5-minute intervals, as settlement counts them
                compliance |= {"intervals": c.intervals, "intervals_within": c.intervals_within}
            detail["compliance"] = compliance
        if before is not None:
            detail["was"] = {"kind": before.kind, "requested_kw": before.requested_kw,
                             "revision": before.revision}  # fmt: skip
        if record.status in FINAL_STATUSES:
            self._finished[record.event_id] = record
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
        with self._store.transaction():
            self._store.put_event(record)
            self._store.audit(
                record.updated_at_utc,
                audit_kind or f"event-{record.status}",
                record.event_id,
                detail,
                record.source,
            )
            self._ack(record)  # a persisted outbox stores it in this same transaction
