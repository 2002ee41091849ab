"""The shell around decide(): one cycle = snapshot -> decide -> stagger -> apply -> record.

A cycle sends only the setpoints that changed (agent.service.fanout), in parallel under a bound,
each with a deadline; a device that fails is marked unavailable (agent.service.devices) so the
very next decide() plans around it (its load counted as still drawing), and a follow-up cycle is
asked for at once. Devices switching *on* are released in staggered batches (inrush, and the
breakers behind them). What a cycle leaves behind is written by agent.service.recorder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

import numpy as np

from agent.domain.fleet import Fleet, FleetState, FloatArray, Priority
from agent.domain.settings import Policy
from agent.policy import Memory, decide
from agent.ports import Clock, DeviceDriver
from agent.service.devices import EPS_KW, DeviceBank, DriftCheck, ShellSettings
from agent.service.events import EventBook
from agent.service.fanout import apply_setpoints
from agent.service.metrics import Metrics
from agent.service.outcomes import OverrideOutcomes
from agent.service.pools import PoolSchedulers
from agent.service.recorder import Recorder
from agent.service.report import CycleReport
from agent.service.snapshot import SnapshotStore
from agent.service.store import SavedMemory, Store

__all__ = ["CycleReport", "DriftCheck", "Shell", "ShellSettings"]

log = logging.getLogger("gridflex.shell")


class Shell:
    """Runs cycles over one fleet; implements agent.ports.SiteView for signal adapters."""

    def __init__(
        self,
        fleet: Fleet,
        policy: Policy,
        drivers: Mapping[str, DeviceDriver],
        snapshot: SnapshotStore,
        *,
        clock: Clock,
        settings: ShellSettings | None = None,
        store: Store | None = None,
        events: EventBook | None = None,
        metrics: Metrics | None = None,
        drift_checks: Mapping[str, DriftCheck] | None = None,
        overrides: OverrideOutcomes | None = None,
        pools: PoolSchedulers | None = None,
    ) -> None:
        self.fleet = fleet
        self.policy = policy
        self.snapshot = snapshot
        self.settings = settings or ShellSettings()
        self._clock = clock
        self._events = events
        self._overrides = overrides
        self.pools = pools or PoolSchedulers({})
        self.devices = DeviceBank(
            fleet, drivers, self.settings, metrics=metrics, drift_checks=drift_checks
        )
        self._recorder = Recorder(fleet, store, metrics)
        self.memory = Memory.initial(fleet)
        self.last: CycleReport | None = None
        self.follow_up = False  # a device failed: run again at once
        self._last_batch_s = -np.inf
        self._value_order = np.argsort(
            [-fleet.classes[int(c)].value_usd_per_mwh for c in fleet.class_index], kind="stable"
        )

    # -- the device columns, as the runner, the demo and the tests read them -----------------
    @property
    def has_driver(self) -> np.ndarray:
        return self.devices.has_driver

    @property
    def available(self) -> np.ndarray:
        return self.devices.available

    @property
    def measured_kw(self) -> FloatArray:
        return self.devices.measured_kw

    @property
    def applied_kw(self) -> FloatArray:
        return self.devices.applied_kw

    async def poll(self, indices: np.ndarray | None = None) -> None:
        await self.devices.poll(indices)

    # -- resuming ----------------------------------------------------------------------------
    def restore_memory(self, saved: SavedMemory) -> None:
        """Resume the engine's memory (setpoints, dwell clocks, shed baselines) after a restart.

        Applied setpoints stay unknown: the first cycle re-asserts every absolute setpoint, which
        changes nothing on a device that kept it and corrects one that did not.
        """
        ids = self.fleet.device_ids
        setpoint = np.array([saved.setpoint_kw.get(d, np.nan) for d in ids], dtype=np.float64)
        changed = np.array([saved.changed_at_s.get(d, -np.inf) for d in ids], dtype=np.float64)
        running = tuple(saved.class_running.get(c.name, True) for c in self.fleet.classes)
        self.memory = Memory(
            setpoint_kw=setpoint,
            changed_at_s=changed,
            class_running=running,
            baselines_kw=dict(saved.baselines_kw),
            decided_at_utc=saved.decided_at_utc,
            pool_serving=dict(saved.pool_serving),
            pool_capped_since_s=dict(saved.pool_capped_since_s),
        )

    # -- SiteView ----------------------------------------------------------------------------
    def site_kw(self) -> float:
        return float(self.devices.verified_kw(self.memory.setpoint_kw).sum())

    def floor_kw(self, *, include_protected: bool) -> float:
        fleet = self.fleet
        deepest = Priority.PROTECTED if include_protected else Priority.FLEXIBLE
        sheddable = (fleet.priority <= deepest) & self.available & self.has_driver
        return float(self.devices.verified_kw(self.memory.setpoint_kw)[~sheddable].sum())

    def capacity_kw(self) -> float:
        return float(self.fleet.rated_kw.sum())

    def online(self) -> bool:
        return bool((self.available & self.has_driver).any())

    def manual_override(self) -> bool:
        now = self._clock()
        return any(o.is_active(now) for o in self.snapshot.overrides.values())

    # -- the cycle ---------------------------------------------------------------------------
    async def cycle(self) -> CycleReport:
        started = time.perf_counter()
        now = self._clock()
        ended, lapsed = self.snapshot.expire(now)
        for obligation in ended:
            log.info("event %s ended", obligation.event_id)
        signals = self.snapshot.freeze(now)
        # the verified load is what a shed starting now is measured from
        state = FleetState(
            self.fleet,
            self.devices.planned_available.copy(),  # a device not obeying is planned around
            self.measured_kw.copy(),
            site_kw=self.site_kw(),
        )
        decision = decide(signals, state, self.policy, self.memory, now)

        target = self._staggered(decision.setpoint_kw, now)
        planned = self.devices.planned_available
        changed = np.flatnonzero(self.has_driver & planned & ~_same(target, self.applied_kw))
        # a device not obeying gets its last command again, on its backoff
        resend = self.devices.resend_due()
        send = target.copy()
        send[resend] = self.devices.commanded_kw[resend]
        changed = np.union1d(changed, resend).astype(np.intp)
        failed = await apply_setpoints(self.devices, changed, send)
        self.devices.resent(resend)
        if self.pools:
            await self.pools.after_cycle(decision)
        failed_idx = np.array([self.fleet.index_of[d] for d in failed], dtype=np.intp)

        # What the next decide() remembers is what the devices were really left at.
        # held back for a later restore batch: the device stays at what it was left at
        memory_kw = np.where(np.isnan(target), decision.setpoint_kw, target)
        memory_kw[failed_idx] = self.memory.setpoint_kw[failed_idx]
        no_driver = ~self.has_driver
        memory_kw[no_driver] = decision.setpoint_kw[no_driver]
        held = ~_same(memory_kw, decision.setpoint_kw)
        self.memory = replace(
            decision.memory,
            setpoint_kw=memory_kw,
            changed_at_s=np.where(held, self.memory.changed_at_s, decision.memory.changed_at_s),
        )
        site_kw = self.site_kw()
        report = CycleReport(
            at_utc=now,
            signals=signals,
            decision=decision,
            commanded=tuple(self.fleet.device_ids[i] for i in changed),
            failed=failed,
            held_back=int((~_same(target, decision.setpoint_kw) & self.has_driver).sum()),
            site_kw=site_kw,
            duration_s=time.perf_counter() - started,
            setpoints_changed=self.last is None
            or not np.array_equal(self.last.decision.setpoint_kw, decision.setpoint_kw),
        )
        device_changes, self.devices.changes = self.devices.changes, []
        self._recorder.cycle(
            report, self.memory, self.applied_kw, changed, failed_idx, device_changes=device_changes
        )
        if self._events is not None:
            self._events.after_cycle(now, decision, site_kw)
        if self._overrides is not None:
            self._overrides.after_cycle(now, decision, lapsed)
        self.follow_up = bool(failed)
        self.last = report
        self._recorder.observe(report, int(self.available.sum()))
        return report

    def _staggered(self, setpoint_kw: FloatArray, now: datetime) -> FloatArray:
        """Hold back devices switching on beyond one batch per restore interval."""
        current = np.where(np.isnan(self.applied_kw), self.measured_kw, self.applied_kw)
        turning_on = (setpoint_kw > EPS_KW) & (current <= EPS_KW) & self.has_driver
        turning_on &= self.devices.planned_available  # one not obeying is not being released
        if not turning_on.any():
            return setpoint_kw
        now_s = now.timestamp()
        allowed = 0
        if now_s - self._last_batch_s >= self.settings.restore_batch_interval_s:
            allowed = self.settings.restore_batch_size
            self._last_batch_s = now_s
        order = self._value_order[turning_on[self._value_order]]  # most valuable first
        target = setpoint_kw.copy()
        target[order[allowed:]] = current[order[allowed:]]
        return target

    async def apply_batch(self, indices: np.ndarray, target: FloatArray) -> dict[str, str]:
        """Apply `target` to the given devices outside a cycle (the shutdown posture)."""
        failed = await apply_setpoints(self.devices, indices, target)
        self._recorder.restore_batch(self._clock(), indices, target, self.memory, failed)
        return failed


def _same(a: FloatArray, b: FloatArray) -> np.ndarray:
    """Elementwise equal within a microwatt; nan never equals anything."""
    return np.isclose(a, b, rtol=0.0, atol=EPS_KW)
