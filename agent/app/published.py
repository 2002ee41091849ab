"""What the service publishes about itself: telemetry every 2 s, and a decision message when
the setpoints change (docs/mqtt.md). Built from the service's state, published by the runner
(agent.app.runner), the demo and the status page."""

from __future__ import annotations

from datetime import datetime

import numpy as np

from agent.app.assembly import Service
from agent.app.site_facts import device_states, overrides_in_force, state_masks
from agent.domain.ercot import bid_to_buy
from agent.domain.fleet import LoadClass, Priority
from agent.policy import Decision, Rule
from agent.service.cycle import CycleReport
from agent.service.devices import id_ranges
from agent.service.grid import fourcp_in_force
from agent.service.messages import (
    BidStepOut,
    DecisionGroup,
    DecisionMessage,
    FlexStep,
    PoolOut,
    SetpointOut,
    TelemetryMessage,
)

__all__ = ["bid_steps", "decision_message", "flex_offer", "flexible_kw", "telemetry_message"]


def telemetry_message(service: Service, now: datetime) -> TelemetryMessage:
    shell, last = service.shell, service.shell.last
    down = np.flatnonzero(~shell.available)
    decision = None if last is None else last.decision
    emergency, emergency_until = service.snapshot.emergency
    if emergency is None or (emergency_until is not None and now >= emergency_until):
        emergency, emergency_until = None, None  # none received, or lapsed before the next cycle
    warning, warning_until = service.snapshot.peak_warning
    if warning_until is not None and now >= warning_until:
        warning = None
    fourcp_on = fourcp_in_force(warning, shell.policy, now)
    check = shell.meter_check
    suspect = np.flatnonzero(shell.devices.evidence.suspect)
    masks = state_masks(shell.devices)  # once: the counts and the alarms both read them
    return TelemetryMessage(
        at=now,
        site_kw=round(shell.site_kw(), 3),
        evidence="site meter" if shell.meter_kw() is not None else "device readings",
        devices_kw=round(shell.devices_kw(), 3),
        meter_alarm=check.alarm,
        suspect=[shell.fleet.device_ids[i] for i in suspect[:100]],
        planned_kw=0.0 if decision is None else round(decision.site_kw, 3),
        class_kw={} if decision is None else decision.class_kw_by_name(),
        flexible_kw=0.0 if decision is None else flexible_kw(decision),
        flex_offer=[] if decision is None else flex_offer(decision),
        bid_to_buy=bid_steps(service),
        price_usd_per_mwh=None if decision is None else decision.price_usd_per_mwh,
        price_stale=True if decision is None else decision.price_stale,
        site_ceiling_kw=None if decision is None else decision.site_ceiling_kw,
        active_events=[e.event_id for e in service.events.live],
        devices_total=len(shell.fleet),
        devices_available=int(shell.available.sum()),
        unavailable=[shell.fleet.device_ids[i] for i in down[:100]],
        grid_emergency="normal" if emergency is None else emergency.level.value,
        grid_emergency_expires_at=emergency_until,
        fourcp_warning=fourcp_on,
        fourcp_warning_expires_at=warning_until if fourcp_on else None,
        mode=service.config.service.mode,
        capacity_kw=round(shell.capacity_kw(), 3),
        import_limit_kw=service.config.site.import_limit_kw,
        device_states=device_states(masks),
        overrides=overrides_in_force(service.snapshot.overrides, now),
        alarms=service.alarms.update(
            now,
            shell.devices,
            price_stale=decision is not None and decision.price_stale,
            meter_alarm=shell.meter_check.alarm,
            broker_up=_broker_up(service),
            at_risk=_at_risk(service),
            masks=masks,
        ),
    )


def _flexible_classes(decision: Decision) -> list[tuple[LoadClass, float]]:
    """The interruptible and flexible classes (their cooling included) with their planned kW:
    what a voluntary program (a fleet's portfolio shed) may take."""
    return [(c, kw) for c, kw in zip(decision.fleet.classes, decision.class_kw, strict=True)
            if c.priority <= Priority.FLEXIBLE]  # fmt: skip


def flexible_kw(decision: Decision) -> float:
    """The planned kW of interruptible and flexible classes (their cooling included)."""
    return round(sum(kw for _, kw in _flexible_classes(decision)), 3)


def flex_offer(decision: Decision) -> list[FlexStep]:
    """The flexible load by what it forgoes per MWh, cheapest first: each interruptible or
    flexible class's planned kW (its cooling counted with it) at its value less the site's
    price (what a MWh of it earns over its energy; its whole value while the price is unknown
    or stale), at least 0. A fleet's portfolio shed takes the cheapest steps first."""
    by_name = {c.name: c for c in decision.fleet.classes}
    price = None if decision.price_stale else decision.price_usd_per_mwh
    kw_by_value: dict[float, float] = {}
    for c, kw in _flexible_classes(decision):
        if kw <= 0.0:
            continue
        leader = by_name.get(c.follows, c) if c.follows is not None else c
        value = round(max(0.0, leader.value_usd_per_mwh - (price or 0.0)), 2)
        kw_by_value[value] = kw_by_value.get(value, 0.0) + kw
    return [FlexStep(value_usd_per_mwh=v, kw=round(kw, 3)) for v, kw in sorted(kw_by_value.items())]


def bid_steps(service: Service) -> list[BidStepOut]:
    """The site's bid to buy as an ERCOT Load Resource (the `ercot` section; none without):
    each interruptible or flexible class's reachable rated kW, its cooling counted with it, at
    the class's value, most valuable first (agent.domain.ercot.bid_to_buy)."""
    if service.config.ercot is None:
        return []
    shell = service.shell
    fleet = shell.fleet
    by_name = {c.name: c for c in fleet.classes}
    curtailable = []
    for pos, c in enumerate(fleet.classes):
        leader = by_name.get(c.follows, c) if c.follows is not None else c
        if leader.priority > Priority.FLEXIBLE:
            continue
        idx = fleet.members[pos]
        kw = float(fleet.rated_kw[idx][shell.available[idx]].sum())
        curtailable.append((leader.value_usd_per_mwh, kw))
    return [BidStepOut(to_kw=s.to_kw, usd_per_mwh=s.usd_per_mwh)
            for s in bid_to_buy(curtailable)]  # fmt: skip


def _broker_up(service: Service) -> bool:
    connected = getattr(service.outbox, "connected", True)  # no broker (the demo): not down
    return bool(connected)


def _at_risk(service: Service) -> list[tuple[str, str]]:
    """Live events that are, or were declared to be, short of their ceiling."""
    out = []
    for record in service.events.live:
        if record.status == "non_compliant":
            out.append((record.event_id, f"non compliant: {record.reason}"))
        elif record.expected_shortfall_kw:
            out.append((record.event_id, f"declared short by {record.expected_shortfall_kw:.1f} "
                        "kW (load it may not cut)"))  # fmt: skip
    return out


def decision_message(report: CycleReport, previous_kw: np.ndarray | None) -> DecisionMessage:
    d = report.decision
    fleet = d.fleet
    keys = (d.rule.astype(np.int64) * len(fleet.classes) + fleet.class_index) * (
        len(d.reasons) + 1
    ) + d.reason_index
    groups = []
    for key in np.unique(keys):
        members = np.flatnonzero(keys == key)
        first = int(members[0])
        groups.append(
            DecisionGroup(
                rule=Rule(int(d.rule[first])).label,
                load_class=fleet.classes[int(fleet.class_index[first])].name,
                reason=d.reasons[int(d.reason_index[first])],
                devices=len(members),
                kw=round(float(d.setpoint_kw[members].sum()), 3),
                ids=id_ranges(fleet, members.tolist()),
            )
        )
    changed_idx = np.arange(len(fleet)) if previous_kw is None else d.changed_devices(previous_kw)
    changed = []
    for i in changed_idx[:20]:
        sp = d.setpoint(fleet.device_ids[int(i)])
        changed.append(SetpointOut(device_id=sp.device_id, kw=round(sp.kw, 3),
                                   rule=sp.rule.label, reason=sp.reason))  # fmt: skip
    return DecisionMessage(
        at=report.at_utc,
        planned_kw=round(d.site_kw, 3),
        site_ceiling_kw=d.site_ceiling_kw,
        price_usd_per_mwh=d.price_usd_per_mwh,
        groups=groups,
        changed_devices=len(changed_idx),
        changed=changed,
        pools=[PoolOut.of(p) for p in d.pools],
    )
