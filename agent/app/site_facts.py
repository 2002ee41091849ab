"""What an operator must see at a glance, beside the load: devices by state (counts that sum to
the fleet), the overrides in force with who set them and until when, and the alarms with since
when. Built with each telemetry message (agent.app.published), so MQTT, `gridflex status`, the
status page and Sparkplug say the same.

An alarm's `since` is when this run first saw it, kept while it lasts; one that clears and comes
back starts again. Devices are counted in array operations (50,000 devices every 2 s), in the
order of DeviceBank.state_of, each once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from agent.domain.fleet import Fleet
from agent.domain.signals import Override
from agent.service.devices import DeviceBank, id_ranges
from agent.service.messages import AlarmKind, AlarmOut, OverrideInForce

__all__ = ["AlarmBook", "device_states", "overrides_in_force", "state_masks"]

_ALARM_OF_STATE: dict[str, AlarmKind] = {
    "unavailable": "device_down", "implausible": "reading_not_believed",
    "suspect": "reading_not_believed", "not_obeying": "device_not_obeying",
}  # fmt: skip


def state_masks(devices: DeviceBank) -> dict[str, np.ndarray]:
    """Each device in the first state that holds for it (DeviceBank.state_of's order)."""
    left = np.ones(len(devices.fleet), dtype=bool)
    masks: dict[str, np.ndarray] = {}
    for name, holds in (
        ("no_driver", ~devices.has_driver),
        ("unavailable", ~devices.available),
        ("implausible", devices.implausible),
        ("suspect", devices.evidence.suspect),
        ("not_obeying", ~devices.obeying),
    ):
        masks[name] = left & holds
        left &= ~holds
    masks["ok"] = left
    return masks


def device_states(masks: dict[str, np.ndarray]) -> dict[str, int]:
    """How many devices are in each state (of `state_masks`); every device counted once."""
    return {name: int(mask.sum()) for name, mask in masks.items()}


def overrides_in_force(overrides: dict[str, Override], now: datetime) -> list[OverrideInForce]:
    out = []
    for o in sorted(overrides.values(), key=lambda o: o.expires_at_utc):
        if not o.is_active(now):
            continue
        target = f"device {o.device_id}" if o.device_id else f"class {o.load_class}"
        limit = None
        if o.limit_kw is not None:
            limit = f"{o.limit_kw:g} kW"
        elif o.limit_pct is not None:
            limit = f"{o.limit_pct:g} %"
        out.append(OverrideInForce(override_id=o.override_id, target=target,
                                   action=o.action.value, limit=limit, issued_by=o.issued_by,
                                   expires_at=o.expires_at_utc))  # fmt: skip
    return out


@dataclass
class AlarmBook:
    """The alarms now, each with the time it was first seen (while it has lasted)."""

    _since: dict[tuple[AlarmKind, str], datetime] = field(default_factory=dict)

    def update(
        self, now: datetime, devices: DeviceBank, *, price_stale: bool, meter_alarm: str | None,
        broker_up: bool, at_risk: list[tuple[str, str]], masks: dict[str, np.ndarray] | None = None,
    ) -> list[AlarmOut]:  # fmt: skip
        """`at_risk`: (event id, why) of each live event that may not be met; `masks`: the
        devices' `state_masks`, when the caller has them already."""
        current: dict[tuple[AlarmKind, str], str] = {}
        masks = state_masks(devices) if masks is None else masks
        fleet = devices.fleet
        for state, kind in _ALARM_OF_STATE.items():
            for i in np.flatnonzero(masks[state] & devices.has_driver)[:1000].tolist():
                why = devices.evidence.why.get(i) or devices.last_change.get(i) or state
                current[(kind, fleet.device_ids[i])] = why
        if price_stale:
            current[("price_stale", "site")] = "no fresh price: the stale posture applies"
        if meter_alarm:
            current[("meter", "site meter")] = meter_alarm
        if not broker_up:
            current[("broker_down", "site")] = "the MQTT broker is not connected: acks wait"
        for event_id, why in at_risk:
            current[("obligation_at_risk", event_id)] = why
        self._since = {key: self._since.get(key, now) for key in current}
        return _grouped(current, self._since, fleet)


def _grouped(
    current: dict[tuple[AlarmKind, str], str],
    since: dict[tuple[AlarmKind, str], datetime],
    fleet: Fleet,
) -> list[AlarmOut]:
    """Device alarms of one kind in one row (their ids as ranges, since the earliest)."""
    by_kind: dict[AlarmKind, list[tuple[str, str]]] = {}
    out: list[AlarmOut] = []
    for (kind, subject), detail in current.items():
        if kind in _ALARM_OF_STATE.values():
            by_kind.setdefault(kind, []).append((subject, detail))
        else:
            out.append(AlarmOut(kind=kind, subject=subject, detail=detail,
                                since=since[(kind, subject)]))  # fmt: skip
    for kind, items in by_kind.items():
        ids = [fleet.index_of[subject] for subject, _ in items if subject in fleet.index_of]
        first = min(since[(kind, subject)] for subject, _ in items)
        detail = items[0][1] if len(items) == 1 else f"{len(items)} devices; {items[0][1]}"
        out.append(AlarmOut(kind=kind, subject=id_ranges(fleet, sorted(ids)), detail=detail,
                            since=first))  # fmt: skip
    return sorted(out, key=lambda a: a.since)
