"""The shell around decide(): one cycle = take inputs -> decide -> stagger -> apply -> record.

The cycle owns the site's state. At its start it drains the inbox (messages, signals, writes
that arrived since the last cycle: agent.service.inbox) and takes the readings the polls queued
(agent.service.devices), ends the events whose time is up, then freezes one snapshot and decides
on it. Everything it changes (inbox outcomes, replay ids, events, the decision, the audit, outbox
rows) is written in one transaction; the broker acknowledgements of the messages it took wait
for that commit.

A cycle sends only the setpoints that changed (agent.service.fanout), in parallel under a bound,
each with a deadline; a device that fails is marked unavailable (agent.service.devices) so the
very next decide() plans around it (its load counted as still drawing), and a follow-up cycle is
asked for at once. Devices switching *on* are released in staggered batches (inrush, and the
breakers behind them). What a cycle leaves behind is written by agent.service.recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Protocol

import numpy as np

from agent.domain.fleet import Fleet, FleetState, FloatArray, Priority
from agent.domain.settings import Policy, StalePosture
from agent.domain.signals import Obligation
from agent.policy import Memory, decide
from agent.ports import Clock, DeviceDriver
from agent.service.devices import EPS_KW, DeviceBank, DriftCheck, ShellSettings
from agent.service.events import EventBook
from agent.service.fanout import apply_setpoints
from agent.service.inbox import Inbox, Taken
from agent.service.metrics import Metrics
from agent.service.outcomes import OverrideOutcomes
from agent.service.pools import PoolSchedulers
from agent.service.recorder import Recorder
from agent.service.report import CycleReport
from agent.service.site_meter import MeterCheck, SiteMeter
from agent.service.snapshot import SnapshotStore
from agent.service.store import SavedMemory, Store

__all__ = ["CycleReport", "DriftCheck", "FixedObligations", "Obligations", "Shell",
           "ShellSettings"]  # fmt: skip

log = logging.getLogger("gridflex.shell")


class Obligations(Protocol):
    """Where the cycle's obligations live (the event book; a fixed list in a bare shell)."""

    def expire(self, now: datetime) -> Sequence[object]: ...

    def obligations(self) -> tuple[Obligation, ...]: ...


class FixedObligations:
    """Obligations given up front (a shell without an event book: tests, the backtest's live
    path); each is dropped once its end has passed."""

    def __init__(self, obligations: tuple[Obligation, ...] = ()) -> None:
        self.held = list(obligations)

    def expire(self, now: datetime) -> Sequence[object]:
        ended = [o for o in self.held if o.end_utc is not None and now >= o.end_utc]
        self.held = [o for o in self.held if o not in ended]
        return ended

    def obligations(self) -> tuple[Obligation, ...]:
        return tuple(self.held)


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
        inbox: Inbox | None = None,
        obligations: Obligations | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        site_meter: SiteMeter | None = None,
    ) -> None:
        self.fleet = fleet
        self.policy = policy
        self.snapshot = snapshot
        self.settings = settings or ShellSettings()
        self._clock = clock
        self._events = events
        self._store = store
        self._overrides = overrides
        self.pools = pools or PoolSchedulers({})
        self.inbox = inbox
        self.site_meter = site_meter
        self.meter_check = MeterCheck(None, 0.0, 0.0, None)  # the last cycle's
        # the event book is where a service's obligations live; a bare shell gets a fixed list
        self.obligations: Obligations = events or obligations or FixedObligations()
        self.devices = DeviceBank(fleet, drivers, self.settings, metrics=metrics,
                                  drift_checks=drift_checks, monotonic=monotonic)  # fmt: skip
        self._settling: set[asyncio.Task[None]] = set()
        self._recorder = Recorder(fleet, store, metrics, shadow=self.settings.shadow)
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
        """Read devices (and the site meter) and take what they said at once: only between
        cycles (at start, the demo, tests). The service's own poller calls `poll_queued`, which
        only queues the readings for the next cycle."""
        await self.poll_queued(indices)
        self.devices.take_readings()
        if self.site_meter is not None:
            self.site_meter.take()

    async def poll_queued(self, indices: np.ndarray | None = None) -> None:
        await self.devices.poll(indices)
        if self.site_meter is not None and indices is None:
            await self.site_meter.poll()

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
        """The site's load as the evidence says: the site meter while its reading is fresh, else
        the sum of the devices' verified draws."""
        meter = self.meter_kw()
        return meter if meter is not None else self.devices_kw()

    def meter_kw(self) -> float | None:
        """The site meter's fresh reading; None without one."""
        return None if self.site_meter is None else self.site_meter.fresh_kw()

    def devices_kw(self) -> float:
        return float(self.devices.verified_kw(self.memory.setpoint_kw).sum())

    def _check_meter(self) -> MeterCheck:
        devices_kw = self.devices_kw()
        if self.site_meter is None:
            return MeterCheck(None, devices_kw, 0.0, None)
        ids = self.fleet.device_ids
        suspects = [ids[i] for i in np.flatnonzero(self.devices.evidence.suspect)]
        check = self.site_meter.check(devices_kw, suspects)
        # the next readings are judged knowing whether the meter sees what the devices claim
        self.devices.evidence.site_meter_disowns = check.disowns
        return check

    def floor_kw(self, *, include_protected: bool) -> float:
        fleet = self.fleet
        deepest = Priority.PROTECTED if include_protected else Priority.FLEXIBLE
        sheddable = (fleet.priority <= deepest) & self.available & self.has_driver
        return float(self.devices.verified_kw(self.memory.setpoint_kw)[~sheddable].sum())

    def reach_kw(self, program: str) -> tuple[float, float]:
        """The lowest the site gets without the load an event of `program` may not cut
        (protected unless the program may cut it, critical, unreachable, what is held on, the
        idle draw of what is switched off), and the site's load now."""
        may_cut = program in self.policy.protected_shed_programs
        kept = self.floor_kw(include_protected=may_cut)
        deepest = Priority.PROTECTED if may_cut else Priority.FLEXIBLE
        cut = (self.fleet.priority <= deepest) & self.available & self.has_driver
        return kept + float(self.fleet.idle_kw[cut].sum()), self.site_kw()

    def baseline_kw(self, event_id: str) -> float | None:
        """The site's load a live shed event is counted from (its kW at the event's start)."""
        return self.memory.baselines_kw.get(event_id)

    def capacity_kw(self) -> float:
        return float(self.fleet.rated_kw.sum())

    def online(self) -> bool:
        return bool((self.available & self.has_driver).any())

    def manual_override(self) -> bool:
        now = self._clock()
        return any(o.is_active(now) for o in self.snapshot.overrides.values())

    # -- the cycle ---------------------------------------------------------------------------
    async def cycle(self, *, restoring: bool = False) -> CycleReport:
        """One cycle, its writes in one transaction. `restoring` (the shutdown posture): every
        class runs, as under a missing price with the run_all posture, within what the grid's
        obligations, the import limit, the grid posture and overrides allow."""
        with self._transaction():
            taken = None if self.inbox is None else self.inbox.drain()
            try:
                report = await self._cycle(restoring)
            finally:
                if taken is not None:
                    self._settle_after_commit(taken)
        return report

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._store is None:
            yield
            return
        with self._store.transaction(keep_on_error=True):
            yield

    def _settle_after_commit(self, taken: Taken) -> None:
        """The futures of what the inbox gave this cycle resolve once its writes are committed
        (the broker acknowledgements wait on them), whatever became of the cycle."""
        if not taken.futures:
            return
        if self._store is None:
            taken.settle()
            return
        store = self._store

        async def settle() -> None:
            try:
                await store.committed()
            except Exception:  # a batch the database refused: logged by the writer
                log.error("a cycle's writes were not all committed; its messages are "
                          "acknowledged anyway (a redelivery would fail the same way)")  # fmt: skip
            taken.settle()

        task = asyncio.ensure_future(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _cycle(self, restoring: bool) -> CycleReport:
        started = time.perf_counter()
        now = self._clock()
        self.devices.take_readings()
        if self.site_meter is not None:
            self.site_meter.take()
        check = self._check_meter()
        self.obligations.expire(now)
        lapsed = self.snapshot.expire(now)
        signals = self.snapshot.freeze(now, self.obligations.obligations())
        policy = self.policy
        if restoring:
            signals = replace(signals, price=None, started_at_utc=None)
            policy = replace(policy, stale_posture=StalePosture.RUN_ALL)
        # the verified load is what a shed starting now is measured from
        state = FleetState(
            self.fleet,
            self.devices.planned_available.copy(),  # a device not obeying is planned around
            self.devices.planning_kw(),  # a reading not believed is planned on its worst case
            site_kw=self.site_kw(),
            unmetered_kw=max(0.0, check.gap_kw),  # what the site meter sees beyond the devices
            doubtful=self.devices.evidence.suspect.copy(),
            doubt_kw=self.devices.doubt_kw(),
        )
        decision = decide(signals, state, policy, self.memory, now)

        target = self._staggered(decision.setpoint_kw, now)
        if self.settings.shadow:  # what would be commanded, recorded; nothing is sent
            changed = np.flatnonzero(self.has_driver & ~_same(target, self.memory.setpoint_kw))
            failed: dict[str, str] = {}
        else:
            changed, failed = await self._apply(target)
        if self.site_meter is not None and len(changed) and signals.obligations:
            await self.site_meter.poll()  # an obligation is met when the meter says so
            self.site_meter.take()
            check = self._check_meter()
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
        self.meter_check = check
        if self._events is not None:  # shadow: judged on what gridflex planned
            judged_kw, on = (decision.site_kw, "plan (shadow)") if self.settings.shadow else (
                site_kw, check.evidence)  # fmt: skip
            self._events.after_cycle(now, decision, judged_kw, on)
        if self._overrides is not None:
            self._overrides.after_cycle(now, decision, lapsed)
        self.follow_up = bool(failed)
        self.last = report
        self._recorder.observe(report, int(self.available.sum()))
        return report

    async def _apply(self, target: FloatArray) -> tuple[np.ndarray, dict[str, str]]:
        """Command the devices whose setpoint moved, and re-send to those not obeying (on their
        backoff): (the devices commanded, {device id: why it failed})."""
        planned = self.devices.planned_available
        changed = np.flatnonzero(self.has_driver & planned & ~_same(target, self.applied_kw))
        resend = self.devices.resend_due()
        send = target.copy()
        send[resend] = self.devices.commanded_kw[resend]
        changed = np.union1d(changed, resend).astype(np.intp)
        failed = await apply_setpoints(self.devices, changed, send)
        self.devices.resent(resend)
        return changed, failed

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


def _same(a: FloatArray, b: FloatArray) -> np.ndarray:
    """Elementwise equal within a microwatt; nan never equals anything."""
    return np.isclose(a, b, rtol=0.0, atol=EPS_KW)
