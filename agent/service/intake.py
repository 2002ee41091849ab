"""Turn raw dispatch and override messages into events, or into a rejection with a reason.

Nothing a sender writes can stop the service: every failure ends here as a "rejected" ack.
Checks, in order: JSON, signature (when a secret is set), schema, freshness (issued_at within the
replay window, not from the future beyond the clock skew), then the sender's rate (per key: one
sender's flood never costs another's dispatch; over it, a rejected ack says so), dates (not
ended, not starting beyond the horizon), plausibility (a shed larger than the whole site),
duplicates (first wins). The first four (`MessageChecks`) also guard the grid topics
(agent.service.grid). Messages that fail before they are authenticated share one budget: beyond
it they are counted and dropped without an ack or an audit row each (a flood of junk must not
fill the disk nor the acks topic). A message's id is remembered (replay) only once what it asked
was taken: a rejected one may be sent again, and is judged again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from agent.domain.fleet import Fleet
from agent.domain.signals import Override, OverrideAction
from agent.ports import Clock
from agent.service.checks import IntakeLimits, MessageChecks, RejectedError, safe_text, sign
from agent.service.events import EventBook
from agent.service.messages import DispatchAck, DispatchMessage, OverrideAck, OverrideMessage
from agent.service.ratelimit import TopicRateLimit
from agent.service.replay import ReplayGuard
from agent.service.snapshot import SnapshotStore
from agent.service.store import EventRecord, Store

__all__ = [
    "Intake", "IntakeLimits", "MessageChecks", "RejectedError", "safe_text", "sign",
]  # fmt: skip

log = logging.getLogger("gridflex.intake")


class Intake:
    def __init__(
        self,
        fleet: Fleet,
        events: EventBook,
        snapshot: SnapshotStore,
        store: Store,
        *,
        clock: Clock,
        publish_dispatch_ack: Callable[[DispatchAck], None],
        publish_override_ack: Callable[[OverrideAck], None],
        hmac_secret: bytes | None = None,
        hmac_keys: Mapping[str, bytes] | None = None,
        limits: IntakeLimits | None = None,
        replay: ReplayGuard | None = None,
        rate: TopicRateLimit | None = None,
        site_id: str = "",
    ) -> None:
        self._fleet = fleet
        self._events = events
        self._snapshot = snapshot
        self._store = store
        self._clock = clock
        self._dispatch_ack = publish_dispatch_ack
        self._override_ack = publish_override_ack
        self._limits = limits or IntakeLimits()
        self._checks = MessageChecks(hmac_secret, self._limits, hmac_keys or {}, site_id)
        self._replay = replay or ReplayGuard(store, self._limits.replay_window_s, clock())
        self._rate = rate or TopicRateLimit(20.0, 200)
        self._site_rated_kw = float(fleet.rated_kw.sum())
        # an event the site cannot meet without load it may not cut: "accept" it with its
        # expected shortfall declared, or "reject" it (the site file's policy.beyond_reach)
        self.beyond_reach = "accept"

    def _within_rate(self, topic: str, key: str | None, authenticated: str | None) -> None:
        """Per sender, once it is known who sent it: RejectedError (an ack says so) beyond."""
        sender = authenticated or key or "unsigned"
        if not self._rate.allow(f"{topic}@{sender}"):
            raise RejectedError(f"rate limited: {sender} sends more than the site takes on "
                                f"{topic} ({self._rate.per_s:g}/s); not applied")  # fmt: skip

    def _refusal_counts(self, topic: str, authenticated: bool) -> bool:
        """Whether a refusal before authentication still gets its ack and audit row."""
        return authenticated or self._rate.allow(f"{topic}@unauthenticated")

    # -- dispatch ----------------------------------------------------------------------------
    def dispatch(
        self, payload: bytes, source: str = "mqtt", authenticated: str | None = None
    ) -> str:
        """Handle one dispatch message; returns the outcome (accepted, duplicate, rejected...).
        `authenticated`: see MessageChecks.message. Whatever goes wrong, the sender is told."""
        try:
            return self._dispatch(payload, source, authenticated)
        except Exception as exc:  # a bug of ours: still an answer, never a silent drop
            log.exception("a dispatch message could not be handled")
            reason = f"could not be handled ({type(exc).__name__}); the site's log has why"
            self._dispatch_ack(DispatchAck(event_id="", status="rejected", reason=reason,
                                           requested_kw=None, achieved_kw=None,
                                           at=self._clock()))  # fmt: skip
            return "failed"

    def _dispatch(self, payload: bytes, source: str, authenticated: str | None) -> str:
        now = self._clock()
        raw: Any = None
        checked = False
        try:
            raw = self._checks.decode(payload)
            message, key = self._checks.message(DispatchMessage, raw, now, authenticated,
                                                topic="dispatch")  # fmt: skip
            checked = True
            self._within_rate("dispatch", key, authenticated)
            if self._replay.seen(message.message_id):
                self._events.ack_again(message.event_id)  # the sender may not have seen it
                return "duplicate"
            owner = source if key in (None, "site") else f"{source}/{key}"
            with self._store.transaction():
                outcome = self._take_dispatch(message, now, owner)
                # taken: a copy is a duplicate
                self._replay.remember(message.message_id, now, message.issued_at)
                return outcome
        except RejectedError as exc:
            if not self._refusal_counts("dispatch", checked):
                return "dropped"
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            requested = _requested_kw(raw)
            subject = safe_text(event_id) if event_id is not None else "?"
            self._store.audit(now, "dispatch-rejected", subject, {"reason": str(exc)}, source)
            log.warning("dispatch %s rejected: %s", subject, exc)
            self._dispatch_ack(
                DispatchAck(
                    event_id=subject if isinstance(event_id, str) else "",
                    status="rejected",
                    reason=str(exc),
                    requested_kw=requested,
                    achieved_kw=None,
                    at=now,
                )
            )
            return "rejected"

    def _take_dispatch(self, message: DispatchMessage, now: datetime, source: str) -> str:
        if message.kind == "release":
            live = self._events.get(message.event_id)
            if live is not None and live.source != source:
                raise RejectedError(
                    f"not yours: event {message.event_id} belongs to {live.source}; only its "
                    "sender can release it"
                )
            done = self._events.release(message.event_id, now, source)
            if done is None:
                if self._events.known(message.event_id):
                    return "duplicate"  # released or finished already: nothing to change
                raise RejectedError(f"no live event {message.event_id} to release")
            return "released"
        record = self._record(message, now, source)
        known = self._events.get(message.event_id)
        if known is not None or self._events.known(message.event_id):
            if known is not None and _conflicts(known, record, message):
                raise RejectedError(
                    f"conflicting: event_id {message.event_id} is taken by a different event "
                    f"({known.kind} {known.requested_kw:g} kW from {known.source})"
                )
            self._events.accept(record)  # audits the duplicate
            # a redelivery (the sender never saw our ack, or we crashed before it left) gets
            # the event's ack again, as it stands now
            self._events.ack_again(message.event_id)
            return "duplicate"
        start = message.start or now
        if message.end is not None and message.end <= now:
            raise RejectedError(f"expired: ended at {message.end.isoformat()}")
        if (start - now).total_seconds() > self._limits.horizon_s:
            raise RejectedError(
                f"future-dated beyond limits: starts {start.isoformat()}, more than "
                f"{self._limits.horizon_s / 86_400:.0f} days ahead"
            )
        if message.shed_kw is not None and message.shed_kw > self._site_rated_kw:
            raise RejectedError(
                f"impossible: shed_kw {message.shed_kw:.0f} exceeds the site's rated "
                f"{self._site_rated_kw:.0f} kW"
            )
        record = self._events.beyond_reach(record)
        if record.expected_shortfall_kw > 0 and self.beyond_reach == "reject":
            raise RejectedError(f"beyond reach: {record.reason.removeprefix('valid; ')}")
        if message.kind == "base_point":
            self._replace_base_point(record, now, source)
        self._events.accept(record)
        return "accepted"

    def _replace_base_point(self, record: EventRecord, now: datetime, source: str) -> None:
        """Each SCED base point replaces the sender's previous one of its kind (a normal one
        does not end an emergency one)."""
        if self._events.resource is None:
            raise RejectedError("base points need the site file's ercot section (the resource "
                                "and its ramp curves): this site has none")  # fmt: skip
        for old in self._events.live:
            if old.kind != record.kind or old.source != source:
                continue
            why = f"replaced by base point {record.event_id}"
            if record.start_utc <= now:
                self._events.release(old.event_id, now, source, why)
            else:  # followed until the new one starts
                until = f"ends at {record.start_utc:%H:%M:%S}: {why}"
                self._events.end_at(old.event_id, record.start_utc, now, f"{old.reason}; {until}")

    @staticmethod
    def _record(message: DispatchMessage, now: datetime, source: str) -> EventRecord:
        kw = {"limit": message.target_kw, "shed": message.shed_kw,
              "base_point": message.base_point_kw}.get(message.kind)  # fmt: skip
        assert kw is not None
        kind = "emergency_base_point" if message.emergency else message.kind
        return EventRecord(
            event_id=message.event_id,
            kind=kind,
            requested_kw=kw,
            start_utc=(message.start or now).astimezone(now.tzinfo),
            end_utc=None if message.end is None else message.end.astimezone(now.tzinfo),
            program=message.program,
            source=source,
            status="accepted",
            reason="valid; load being brought under the ceiling",
            received_at_utc=now,
            updated_at_utc=now,
        )

    # -- overrides ---------------------------------------------------------------------------
    def override(
        self, payload: bytes, source: str = "mqtt", authenticated: str | None = None
    ) -> str:
        """Handle one override message; returns the outcome. Whatever goes wrong, the sender
        is told."""
        try:
            return self._override(payload, source, authenticated)
        except Exception as exc:  # a bug of ours: still an answer, never a silent drop
            log.exception("an override message could not be handled")
            reason = f"could not be handled ({type(exc).__name__}); the site's log has why"
            self._override_ack(OverrideAck(override_id="", status="rejected", reason=reason,
                                           at=self._clock()))  # fmt: skip
            return "failed"

    def _override(self, payload: bytes, source: str, authenticated: str | None) -> str:
        now = self._clock()
        raw: Any = None
        checked = False
        try:
            raw = self._checks.decode(payload)
            message, key = self._checks.message(OverrideMessage, raw, now, authenticated,
                                                topic="override")  # fmt: skip
            checked = True
            self._within_rate("override", key, authenticated)
            if self._replay.seen(message.message_id):
                return "duplicate"  # applied once already: a replay changes nothing
            with self._store.transaction():
                status, reason = self._take_override(message, now, source)
                self._replay.remember(message.message_id, now, message.issued_at)
        except RejectedError as exc:
            if not self._refusal_counts("override", checked):
                return "dropped"
            override_id = raw.get("override_id") if isinstance(raw, dict) else None
            subject = safe_text(override_id) if override_id is not None else "?"
            self._store.audit(now, "override-rejected", subject, {"reason": str(exc)}, source)
            log.warning("override %s rejected: %s", subject, exc)
            override_id = subject if isinstance(override_id, str) else ""
            self._override_ack(OverrideAck(override_id=override_id, status="rejected",
                                           reason=str(exc), at=now))  # fmt: skip
            return "rejected"
        self._override_ack(
            OverrideAck(override_id=message.override_id, status=status, reason=reason, at=now)
        )
        return status

    def _take_override(
        self, message: OverrideMessage, now: datetime, source: str
    ) -> tuple[str, str]:
        if message.action == "clear":
            if message.override_id not in self._snapshot.overrides:
                raise RejectedError(f"no override {message.override_id} to clear")
            with self._store.transaction():
                self._store.delete_override(message.override_id)
                self._store.audit(now, "override-cleared", message.override_id, {}, source)
            # an already-expired copy cancels it in the snapshot and wakes the cycle
            self._snapshot(_to_override(message, now, expires=now))
            return "cleared", f"cleared by {message.issued_by}"
        if message.device_id is not None and message.device_id not in self._fleet.index_of:
            raise RejectedError(f"unknown device {message.device_id}")
        if message.load_class is not None:
            try:
                self._fleet.class_named(message.load_class)
            except KeyError:
                raise RejectedError(f"unknown class {message.load_class}") from None
        assert message.expires_at is not None
        if message.expires_at <= now:
            raise RejectedError(f"expired: expires_at {message.expires_at.isoformat()} passed")
        override = _to_override(message, now, expires=message.expires_at)
        with self._store.transaction():
            self._store.put_override(override)
            self._store.audit(
                now,
                "override",
                message.override_id,
                message.model_dump(mode="json", by_alias=True, exclude={"signature"}),
                source,
            )
        self._snapshot(override)
        target = message.device_id or f"class {message.load_class}"
        return "accepted", f"{message.action} {target} until {message.expires_at.isoformat()}"


def _conflicts(known: EventRecord, new: EventRecord, message: DispatchMessage) -> bool:
    """Whether a message reusing a known event_id asks for something else (a redelivery asks
    for the same; its start may be implicit, "now", which then differs)."""
    if (known.kind, known.requested_kw, known.program) != (new.kind, new.requested_kw,
                                                           new.program):  # fmt: skip
        return True
    if message.start is not None and known.start_utc != new.start_utc:
        return True
    return known.end_utc != new.end_utc


def _requested_kw(raw: Any) -> float | None:
    if not isinstance(raw, dict):
        return None
    for key in ("target_kw", "shed_kw", "base_point_kw"):
        value = raw.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            kw = float(value)
            return kw if abs(kw) < float("inf") else None
    return None


def _to_override(message: OverrideMessage, now: datetime, *, expires: datetime) -> Override:
    action = OverrideAction.OFF if message.action == "clear" else OverrideAction(message.action)
    return Override(
        override_id=message.override_id,
        action=action,
        expires_at_utc=expires.astimezone(now.tzinfo),
        device_id=message.device_id,
        load_class=message.load_class,
        limit_kw=message.limit_kw,
        limit_pct=message.limit_pct,
        issued_by=message.issued_by,
        issued_at_utc=message.issued_at.astimezone(now.tzinfo),
    )
