"""Turn raw dispatch and override messages into events, or into a rejection with a reason.

Nothing a sender writes can stop the service: every failure ends here as a "rejected" ack.
Checks, in order: JSON, signature (when a secret is set), schema, freshness (issued_at within the
replay window, not from the future beyond the clock skew), dates (not ended, not starting beyond
the horizon), plausibility (a shed larger than the whole site), duplicates (first wins).
The first four (`MessageChecks`) also guard the grid topics (agent.service.grid).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.domain.fleet import Fleet
from agent.domain.signals import Override, OverrideAction
from agent.ports import Clock
from agent.service.events import EventBook
from agent.service.messages import DispatchAck, DispatchMessage, OverrideAck, OverrideMessage
from agent.service.snapshot import SnapshotStore
from agent.service.store import EventRecord, Store

__all__ = ["Intake", "IntakeLimits", "MessageChecks", "RejectedError", "sign"]

log = logging.getLogger("gridflex.intake")


@dataclass(frozen=True, slots=True)
class IntakeLimits:
    replay_window_s: float = 300.0  # issued_at older than this: a replay or a stuck queue
    clock_skew_s: float = 30.0  # issued_at later than now by more than this: a wrong clock
    horizon_s: float = 7 * 86_400.0  # events scheduled further ahead are refused


def sign(message: dict[str, Any], secret: bytes) -> str:
    """HMAC-SHA256 (hex) of the message without `signature`: keys sorted, compact separators."""
    body = {k: v for k, v in message.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


class RejectedError(Exception):
    """A message that cannot be taken; its text is the reason the "rejected" ack carries."""


Model = TypeVar("Model", bound=BaseModel)


def _schema_reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "schema: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class MessageChecks:
    """The checks every inbound message passes, in order: JSON, signature, schema, freshness.

    Shared by dispatch, overrides and grid conditions (agent.service.grid), so one site-wide
    secret and replay window govern every topic. Each raises RejectedError with the reason.
    """

    secret: bytes | None = None
    limits: IntakeLimits = IntakeLimits()

    @staticmethod
    def decode(payload: bytes) -> Any:
        try:
            return json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RejectedError(f"bad JSON: {exc}") from None

    def signature(self, raw: Any) -> None:
        if self.secret is None:
            return
        if not isinstance(raw, dict) or not isinstance(raw.get("signature"), str):
            raise RejectedError("unsigned: this site requires an HMAC-SHA256 signature")
        try:
            expected = sign(raw, self.secret)
        except (TypeError, ValueError):
            raise RejectedError("bad signature: message cannot be canonicalized") from None
        if not hmac.compare_digest(expected, raw["signature"]):
            raise RejectedError("bad signature")

    @staticmethod
    def schema(model: type[Model], raw: Any) -> Model:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise RejectedError(_schema_reason(exc)) from None

    def fresh(self, issued_at: datetime, now: datetime) -> None:
        age_s = (now - issued_at).total_seconds()
        if age_s > self.limits.replay_window_s:
            raise RejectedError(
                f"stale: issued {age_s:.0f} s ago, outside the "
                f"{self.limits.replay_window_s:.0f} s replay window"
            )
        if -age_s > self.limits.clock_skew_s:
            raise RejectedError(
                f"issued_at {issued_at.isoformat()} is {-age_s:.0f} s in the future "
                f"(more than the {self.limits.clock_skew_s:.0f} s clock skew allowed)"
            )


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
        limits: IntakeLimits | None = None,
    ) -> None:
        self._fleet = fleet
        self._events = events
        self._snapshot = snapshot
        self._store = store
        self._clock = clock
        self._dispatch_ack = publish_dispatch_ack
        self._override_ack = publish_override_ack
        self._limits = limits or IntakeLimits()
        self._checks = MessageChecks(hmac_secret, self._limits)
        self._site_rated_kw = float(fleet.rated_kw.sum())

    # -- dispatch ----------------------------------------------------------------------------
    def dispatch(self, payload: bytes, source: str = "mqtt") -> str:
        """Handle one dispatch message; returns the outcome (accepted, duplicate, rejected...)."""
        now = self._clock()
        raw: Any = None
        try:
            raw = self._checks.decode(payload)
            self._checks.signature(raw)
            message = self._checks.schema(DispatchMessage, raw)
            self._checks.fresh(message.issued_at, now)
            return self._take_dispatch(message, now, source)
        except RejectedError as exc:
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            requested = _requested_kw(raw)
            self._store.audit(
                now, "dispatch-rejected", str(event_id or "?"), {"reason": str(exc)}, source
            )
            log.warning("dispatch rejected: %s", exc)
            self._dispatch_ack(
                DispatchAck(
                    event_id=event_id[:128] if isinstance(event_id, str) else "",
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
            done = self._events.release(message.event_id, now, source)
            if done is None:
                if self._events.known(message.event_id):
                    return "duplicate"  # released or finished already: nothing to change
                raise RejectedError(f"no live event {message.event_id} to release")
            return "released"
        if self._events.known(message.event_id):
            self._events.accept(self._record(message, now, source))  # audits the duplicate
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
        self._events.accept(self._record(message, now, source))
        return "accepted"

    @staticmethod
    def _record(message: DispatchMessage, now: datetime, source: str) -> EventRecord:
        kw = message.target_kw if message.kind == "limit" else message.shed_kw
        assert kw is not None
        return EventRecord(
            event_id=message.event_id,
            kind=message.kind,
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
    def override(self, payload: bytes, source: str = "mqtt") -> str:
        now = self._clock()
        raw: Any = None
        try:
            raw = self._checks.decode(payload)
            self._checks.signature(raw)
            message = self._checks.schema(OverrideMessage, raw)
            self._checks.fresh(message.issued_at, now)
            status, reason = self._take_override(message, now, source)
        except RejectedError as exc:
            override_id = raw.get("override_id") if isinstance(raw, dict) else None
            self._store.audit(
                now, "override-rejected", str(override_id or "?"), {"reason": str(exc)}, source
            )
            log.warning("override rejected: %s", exc)
            override_id = override_id[:128] if isinstance(override_id, str) else ""
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


def _requested_kw(raw: Any) -> float | None:
    if not isinstance(raw, dict):
        return None
    for key in ("target_kw", "shed_kw"):
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
