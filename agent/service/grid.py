"""Grid conditions in: ERCOT emergency levels and 4CP peak warnings, one message at a time.

`<prefix>/grid/emergency` and `<prefix>/grid/4cp` carry a *state*, not an event: the latest
message (by `issued_at`) is the condition in force, replacing the one before. Each message passes
the checks dispatch passes (JSON, signature, schema, freshness), then:

  expired     its expires_at has passed already: rejected (it would change nothing)
  superseded  issued before the condition in force: rejected (a late redelivery must not undo
              a newer one, e.g. an old EEA2 arriving after "normal")
  duplicate   the very message in force again (QoS 1 redelivery): nothing changes, no ack

An accepted one is written (live state and audit row, one transaction) before it reaches the
snapshot and wakes the cycle, so an emergency acts within one cycle and a restart, even after
kill -9, finds it again. Expiry is honoured across restarts: an emergency whose expires_at has
passed comes back as normal, a warning as inactive. Without expires_at an emergency holds until a
later message changes it; a 4CP warning is also judged by the engine's freshness rule
(policy.fourcp.warning_stale_after_s after issued_at), whichever ends first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from agent.domain.settings import Policy, Posture
from agent.domain.signals import EmergencyLevel, EmergencySignal, PeakWarning
from agent.ports import Clock
from agent.service.checks import MessageChecks, RejectedError, safe_text
from agent.service.messages import EmergencyMessage, GridAck, PeakWarningMessage
from agent.service.metrics import Metrics
from agent.service.ratelimit import TopicRateLimit
from agent.service.replay import ReplayGuard
from agent.service.snapshot import GridSignal, SnapshotStore
from agent.service.store import Store

__all__ = ["EMERGENCY", "FOURCP", "GridIntake", "fourcp_in_force"]

log = logging.getLogger("gridflex.grid")

GridMessage = EmergencyMessage | PeakWarningMessage
Topic = Literal["grid/emergency", "grid/4cp"]

EMERGENCY: Topic = "grid/emergency"
FOURCP: Topic = "grid/4cp"
_MODELS: dict[Topic, type[GridMessage]] = {EMERGENCY: EmergencyMessage, FOURCP: PeakWarningMessage}
_SEVERITY = {level: rank for rank, level in enumerate(EmergencyLevel)}  # metrics: 0 normal..4
SCADA = "sparkplug"  # the site's own SCADA: not a grid source


def _severity(message: GridMessage) -> int:
    if isinstance(message, EmergencyMessage):
        return _SEVERITY[EmergencyLevel(message.level)]
    return int(message.active)


def fourcp_in_force(warning: PeakWarning | None, policy: Policy, now: datetime) -> bool:
    """Whether the engine would count this warning now (active and fresh), expiry aside."""
    if warning is None or not warning.active:
        return False
    if policy.fourcp is None:
        return True
    age_s = (now - warning.observed_at_utc).total_seconds()
    return age_s <= policy.fourcp.warning_stale_after_s


class GridIntake:
    """Takes grid/emergency and grid/4cp messages into the snapshot, the store and the acks."""

    def __init__(
        self,
        snapshot: SnapshotStore,
        store: Store,
        policy: Policy,
        *,
        clock: Clock,
        publish_ack: Callable[[GridAck], None],
        checks: MessageChecks,
        metrics: Metrics | None = None,
        replay: ReplayGuard | None = None,
        rate: TopicRateLimit | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._rate = rate or TopicRateLimit(20.0, 200)
        self._store = store
        self._policy = policy
        self._clock = clock
        self._ack = publish_ack
        self._checks = checks
        self._metrics = metrics
        self._held: dict[Topic, GridMessage] = {}  # the message in force, per topic
        # ... and when it took effect: its issued_at, or when we received it if that was sooner
        # (a message dated ahead of our clock must not outrank one that arrives after it)
        self._held_at: dict[Topic, datetime] = {}
        self._held_via: dict[Topic, str | None] = {}  # who set it: its owner, kept across restarts
        self._replay = replay or ReplayGuard(store, checks.limits.replay_window_s, clock())
        snapshot.on_grid_lapsed = self._lapsed

    def emergency(
        self, payload: bytes, source: str = "mqtt", authenticated: str | None = None
    ) -> str:
        return self._handle(EMERGENCY, payload, source, authenticated)

    def peak_warning(self, payload: bytes, source: str = "mqtt") -> str:
        return self._handle(FOURCP, payload, source)

    # -- one message -------------------------------------------------------------------------
    def _handle(
        self, topic: Topic, payload: bytes, source: str, authenticated: str | None = None
    ) -> str:
        try:
            return self._handle_checked(topic, payload, source, authenticated)
        except Exception as exc:  # a bug of ours: still an answer, never a silent drop
            log.exception("a %s message could not be handled", topic)
            reason = f"could not be handled ({type(exc).__name__}); the site's log has why"
            self._ack(GridAck(topic=topic, status="rejected", reason=reason, at=self._clock()))
            return "failed"

    def _handle_checked(
        self, topic: Topic, payload: bytes, source: str, authenticated: str | None
    ) -> str:
        now = self._clock()
        checked = False
        try:
            raw = self._checks.decode(payload)
            message, key = self._checks.message(_MODELS[topic], raw, now, authenticated,
                                                topic=topic)  # fmt: skip
            checked = True
            sender = authenticated or key or "unsigned"
            if not self._rate.allow(f"{topic}@{sender}"):
                raise RejectedError(f"rate limited: {sender} sends more than the site takes on "
                                    f"{topic} ({self._rate.per_s:g}/s); not applied")  # fmt: skip
            if message.expires_at is not None and message.expires_at <= now:
                raise RejectedError(f"expired: expires_at {message.expires_at.isoformat()} passed")
            if self._is_duplicate(topic, message) or self._replay.seen(message.message_id):
                self._store.audit(now, "grid-duplicate", topic, _detail(message), source)
                return "duplicate"
            self._check_order(topic, message)
            self._check_authority(topic, message, now, source)
            reason = self._take(topic, message, now, source)
        except RejectedError as exc:
            if not checked and not self._rate.allow(f"{topic}@unauthenticated"):
                return "dropped"  # a flood of junk: counted, no ack nor audit row each
            self._store.audit(now, "grid-rejected", topic, {"reason": str(exc)}, source)
            log.warning("%s rejected: %s", topic, exc)
            self._ack(GridAck(topic=topic, status="rejected", reason=str(exc), at=now))
            return "rejected"
        self._ack(GridAck(topic=topic, status="accepted", reason=reason, at=now))
        return "accepted"

    def _is_duplicate(self, topic: Topic, message: GridMessage) -> bool:
        held = self._held.get(topic)
        return held is not None and _detail(held) == _detail(message)

    def _check_order(self, topic: Topic, message: GridMessage) -> None:
        held_at = self._held_at.get(topic)
        if held_at is not None and message.issued_at < held_at:
            raise RejectedError(
                f"superseded: issued {message.issued_at.isoformat()}, before the condition in "
                f"force (in force since {held_at.isoformat()})"
            )

    def _check_authority(
        self, topic: Topic, message: GridMessage, now: datetime, source: str
    ) -> None:
        """Only a grid source lowers a grid condition it set: site SCADA (Sparkplug) may raise
        one, or lower its own, never lift the QSE's EEA3."""
        held, via = self._held.get(topic), self._held_via.get(topic)
        if source.split("/", 1)[0] != SCADA or held is None or via is None:
            return
        lapsed = held.expires_at is not None and held.expires_at <= now
        if via.split("/", 1)[0] == SCADA or lapsed:
            return
        if _severity(message) < _severity(held):
            raise RejectedError(f"not yours: the condition in force came from {via}; only a grid "
                                "source lowers it")  # fmt: skip

    def _take(self, topic: Topic, message: GridMessage, now: datetime, source: str) -> str:
        effective = min(message.issued_at, now)
        with self._store.transaction():
            self._replay.remember(message.message_id, now, message.issued_at)
            self._store.save_state(topic, {"message": _detail(message), "via": source,
                                           "effective_at": effective.isoformat()})  # fmt: skip
            self._store.audit(now, "grid", topic, _detail(message), source)
        self._held[topic] = message
        self._held_at[topic] = effective
        self._held_via[topic] = source
        signal = _signal(message, now)
        self._snapshot.set_grid(signal, _utc(message.expires_at, now))
        self._observe(signal)
        log.info("%s: %s", topic, _describe(signal))
        if isinstance(message, EmergencyMessage):
            return self._emergency_reason(message)
        return self._fourcp_reason(message, now)

    # -- restart and expiry ------------------------------------------------------------------
    def resume(self) -> None:
        """After a restart: the grid condition and 4CP warning in force, expiry honoured."""
        now = self._clock()
        for topic, model in _MODELS.items():
            saved: Any = self._store.load_state(topic)
            if not isinstance(saved, dict):
                continue
            try:
                message = model.model_validate(saved.get("message"))
                self._checks.dates(message, now)  # a year 9999 must not stop every restart
                effective = datetime.fromisoformat(
                    saved.get("effective_at") or message.issued_at.isoformat()
                )
                effective = min(effective, message.issued_at)
            except (ValidationError, RejectedError, TypeError, ValueError, OverflowError) as exc:
                self._store.quarantine(now, "state", topic, saved, str(exc))
                log.warning("%s: saved state unreadable (%s); quarantined, waiting for the next "
                            "message", topic, safe_text(exc, 200))  # fmt: skip
                continue
            self._held[topic] = message
            self._held_at[topic] = effective
            via = saved.get("via")
            self._held_via[topic] = via if isinstance(via, str) else None
            if message.expires_at is not None and message.expires_at <= now:
                continue  # lapsed while we were down: normal / inactive, as if never received
            signal = _signal(message, now)
            self._snapshot.set_grid(signal, _utc(message.expires_at, now))
            self._observe(signal)
            log.info("resumed %s: %s", topic, _describe(signal))

    def _lapsed(self, signal: GridSignal) -> None:
        now = self._clock()
        topic: Topic = EMERGENCY if isinstance(signal, EmergencySignal) else FOURCP
        self._store.audit(now, "grid-expired", topic, {"was": _describe(signal)}, signal.source)
        log.info("%s: %s expired", topic, _describe(signal))
        current, _ = self._snapshot.emergency if topic == EMERGENCY else self._snapshot.peak_warning
        if current is not None:
            self._observe(current)

    def _observe(self, signal: GridSignal) -> None:
        if self._metrics is None:
            return
        if isinstance(signal, EmergencySignal):
            self._metrics.grid_emergency.set(_SEVERITY[signal.level])
        else:
            self._metrics.fourcp_warning.set(int(signal.active))

    # -- what the sender is told -------------------------------------------------------------
    def _emergency_reason(self, message: EmergencyMessage) -> str:
        level = EmergencyLevel(message.level)
        posture = self._policy.emergency_postures.get(level, Posture.NONE)
        until = (
            f"until {message.expires_at.isoformat()}"
            if message.expires_at is not None
            else "until a later message changes it"
        )
        if level is EmergencyLevel.NORMAL:
            return "normal: emergency postures lifted from the next cycle"
        return f"{level.value.upper()}: posture {posture.value} from the next cycle, {until}"

    def _fourcp_reason(self, message: PeakWarningMessage, now: datetime) -> str:
        window = self._policy.fourcp
        if not message.active:
            return "4CP warning off"
        if window is None:
            return "4CP warning recorded; it changes nothing: the site file has no policy.fourcp"
        if window.trigger != "warning":
            return (
                "4CP warning recorded; it changes nothing: policy.fourcp.trigger is "
                f"{window.trigger!r}, the posture follows the window alone"
            )
        stale_at = message.issued_at + timedelta(seconds=window.warning_stale_after_s)
        ends = stale_at if message.expires_at is None else min(stale_at, message.expires_at)
        months = ",".join(str(m) for m in sorted(window.months))
        return (
            f"4CP warning on: posture {window.posture.value} inside "
            f"{window.start_local:%H:%M}-{window.end_local:%H:%M} local (months {months}) "
            f"until {ends.astimezone(now.tzinfo).isoformat()}"
        )


def _detail(message: GridMessage) -> dict[str, Any]:
    return message.model_dump(mode="json", exclude={"signature"})


def _utc(at: datetime | None, now: datetime) -> datetime | None:
    return None if at is None else at.astimezone(now.tzinfo)


def _signal(message: GridMessage, now: datetime) -> GridSignal:
    # observed_at is the sender's issued_at: the engine judges a warning's freshness from when
    # the grid said it, and a restart must not make an old warning young again.
    observed = message.issued_at.astimezone(now.tzinfo)
    if isinstance(message, EmergencyMessage):
        return EmergencySignal(EmergencyLevel(message.level), observed, message.source)
    return PeakWarning(message.active, observed, message.source)


def _describe(signal: GridSignal) -> str:
    if isinstance(signal, EmergencySignal):
        return f"{signal.level.value} (from {signal.source})"
    return f"4CP warning {'on' if signal.active else 'off'} (from {signal.source})"
