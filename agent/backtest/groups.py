"""Equivalence groups: identical devices with identical memory decide identically.

decide() treats devices one by one, but every rule it applies to a device reads only that
device's static data (class, rating, minimum, control mode, dwell, ramp) and its memory (last
setpoint, time of its last on/off change). Devices that agree on all of it get the same setpoint,
rule and reason, and class and site totals are sums. So a group of N of them can stand in as one
device N times as large: the same ratios, the same dwell, a ramp N times as steep.

The one place where that is not exact is switching devices off one by one to meet a site ceiling
(merit.py switches off as many as needed, splitting a group). The replay therefore runs the full
fleet whenever a ceiling may bind, and collapses back once the group members agree again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.domain.fleet import DeviceSpec, Fleet, FloatArray
from agent.policy import Memory

__all__ = ["Groups"]

IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True, eq=False)
class Groups:
    """A fleet's equivalence groups and the collapsed fleet with one scaled device per group."""

    full: Fleet
    fleet: Fleet  # one device per group, its kW figures multiplied by the group's size
    group_of: IntArray  # group of each device of the full fleet
    first: IntArray  # first device (full-fleet index) of each group; groups are in this order
    count: FloatArray  # devices per group
    settle_s: FloatArray  # per device: after this long since its last change, its dwell is over

    @classmethod
    def of(cls, fleet: Fleet) -> Groups:
        if len(fleet) == 0:
            raise ValueError("the fleet has no devices")
        # Everything decide() reads of a device; modes only matter as on/off versus throttled.
        key = np.column_stack(
            [
                fleet.class_index.astype(np.float64),
                fleet.continuous.astype(np.float64),
                fleet.rated_kw,
                fleet.min_kw,
                fleet.min_on_s,
                fleet.min_off_s,
                fleet.ramp_kw_per_s,
                fleet.idle_kw,
            ]
        )
        _, first_sorted, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first_sorted, kind="stable")  # groups in order of first appearance
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        group_of = rank[inverse.reshape(-1)].astype(np.intp)
        first = first_sorted[order].astype(np.intp)
        count = np.bincount(group_of, minlength=len(first)).astype(np.float64)
        specs = [
            _scaled(fleet.spec(fleet.device_ids[i]), n) for i, n in zip(first, count, strict=True)
        ]
        return cls(
            full=fleet,
            fleet=Fleet.build(fleet.classes, specs),
            group_of=group_of,
            first=first,
            count=count,
            settle_s=np.maximum(fleet.min_on_s, fleet.min_off_s),
        )

    def expand(self, memory: Memory) -> Memory:
        """The full fleet's memory from the collapsed one (every member as its group)."""
        per_device = memory.setpoint_kw / self.count
        return Memory(
            setpoint_kw=per_device[self.group_of],
            changed_at_s=memory.changed_at_s[self.group_of],
            class_running=memory.class_running,
            baselines_kw=memory.baselines_kw,
            decided_at_utc=memory.decided_at_utc,
        )

    def collapse(self, memory: Memory, now_s: float) -> Memory | None:
        """The collapsed memory, or None while some group's members still disagree.

        Members agree when their last setpoints are equal and their last on/off changes are
        equal or all old enough that no dwell rule can read them any more (from `now_s` on).
        """
        setpoint = memory.setpoint_kw
        lead = setpoint[self.first][self.group_of]
        same_kw = (setpoint == lead) | (np.isnan(setpoint) & np.isnan(lead))
        if not bool(same_kw.all()):
            return None
        changed = memory.changed_at_s
        settled = now_s - changed >= self.settle_s
        same_change = changed == changed[self.first][self.group_of]
        group_settled = np.ones(len(self.first), dtype=np.bool_)
        np.logical_and.at(group_settled, self.group_of, settled)
        if not bool((same_change | group_settled[self.group_of]).all()):
            return None
        latest = np.full(len(self.first), -np.inf)
        np.maximum.at(latest, self.group_of, changed)
        return Memory(
            setpoint_kw=setpoint[self.first] * self.count,
            changed_at_s=latest,
            class_running=memory.class_running,
            baselines_kw=memory.baselines_kw,
            decided_at_utc=memory.decided_at_utc,
        )


def _scaled(spec: DeviceSpec, n: float) -> DeviceSpec:
    ramp = spec.max_ramp_kw_per_s
    return DeviceSpec(
        device_id=spec.device_id,
        load_class=spec.load_class,
        kind=spec.kind,
        rated_kw=spec.rated_kw * n,
        min_kw=spec.min_kw * n,
        control_mode=spec.control_mode,
        min_on_s=spec.min_on_s,
        min_off_s=spec.min_off_s,
        max_ramp_kw_per_s=None if ramp is None else ramp * n,
        idle_kw=spec.idle_kw * n,
    )
