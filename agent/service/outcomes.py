"""What became of each override, told on `<prefix>/override/ack` and in the audit.

An override is acked `accepted` when it is stored; what the engine then made of it can differ:
applied, partly applied (the import limit or a grid obligation left room for only some of it),
not applied (critical load, a grid posture, a later override on the same target), and finally
expired. Each change is published and audited once, not every cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from agent.domain.signals import Override
from agent.policy import Decision
from agent.service.messages import OverrideAck
from agent.service.store import Store

__all__ = ["OverrideOutcomes"]


class OverrideOutcomes:
    def __init__(self, store: Store | None, publish: Callable[[OverrideAck], None]) -> None:
        self._store = store
        self._publish = publish
        self._told: dict[str, tuple[str, str]] = {}

    def after_cycle(self, now: datetime, decision: Decision, lapsed: list[Override]) -> None:
        for override in lapsed:
            self._told.pop(override.override_id, None)
            if override.device_id is None and override.load_class is None:
                continue  # the marker a `clear` leaves (it was acked `cleared`), not an expiry
            self._tell(now, override.override_id, "expired", "its expiry passed", {})
            if self._store is not None:
                self._store.delete_override(override.override_id)
        for status in decision.overrides:
            told = (status.status, status.reason)
            if self._told.get(status.override_id) == told:
                continue
            self._told[status.override_id] = told
            detail = {"asked_kw": round(status.asked_kw, 3),
                      "applied_kw": round(status.applied_kw, 3)}  # fmt: skip
            self._tell(now, status.override_id, status.status, status.reason, detail)

    def _tell(
        self, now: datetime, override_id: str, status: str, reason: str, detail: dict[str, float]
    ) -> None:
        self._publish(OverrideAck(override_id=override_id, status=status, reason=reason, at=now))
        if self._store is not None:
            self._store.audit(now, f"override-{status}", override_id, {"reason": reason, **detail})
