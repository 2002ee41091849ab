"""The shell around decide(): one cycle = snapshot -> decide -> apply -> verify -> record.

The shell owns what the drivers last saw of each device (reachable, measured kW) and what was
last applied to it. A cycle sends only the setpoints that changed, in parallel under a bound,
each with a deadline; a device that fails is marked unavailable so the very next decide() plans
around it (its load counted as still drawing), and a follow-up cycle is asked for at once.
Devices switching *on* are released in staggered batches (inrush, and the breakers behind them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np

from agent.domain.fleet import Fleet, FleetState, FloatArray, Priority
from agent.domain.settings import Policy
from agent.domain.signals import Signals
from agent.errors import DeviceError, DeviceTimeoutError
from agent.policy import Decision, Memory, decide
from agent.ports import Capability, Clock, DeviceCommand, DeviceDriver, DeviceReading
from agent.service.events import EventBook
from agent.service.metrics import Metrics
from agent.service.snapshot import SnapshotStore
from agent.service.store import SavedMemory, Store

__all__ = ["CycleReport", "DriftCheck", "Shell", "ShellSettings"]

log = logging.getLogger("gridflex.shell")

# True when a device no longer does what it was last told (adapters.devices.miners.drifted)
DriftCheck = Callable[[DeviceCommand, DeviceReading], bool]
_EPS_KW = 1e-6


@dataclass(frozen=True, slots=True)
class ShellSettings:
    max_concurrency: int = 512
    verify_timeout_s: float = 10.0
    restore_batch_size: int = 50
    restore_batch_interval_s: float = 5.0
    # read measured power after a command whose driver did not return the measurement proving it
    read_after_apply: bool = True


@dataclass(frozen=True, slots=True)
class CycleReport:
    at_utc: datetime
    signals: Signals
    decision: Decision
    commanded: tuple[str, ...]
    failed: Mapping[str, str]
    held_back: int  # devices waiting for their restore batch
    site_kw: float  # verified: measured where read, else applied
    duration_s: float
    setpoints_changed: bool = field(default=False)


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
    ) -> None:
        self.fleet = fleet
        self.policy = policy
        self.snapshot = snapshot
        self.settings = settings or ShellSettings()
        self._clock = clock
        self._store = store
        self._events = events
        self._metrics = metrics
        self._drivers = [drivers.get(device_id) for device_id in fleet.device_ids]
        n = len(fleet)
        self.has_driver = np.array([d is not None for d in self._drivers], dtype=np.bool_)
        self.available = np.ones(n, dtype=np.bool_)
        self.measured_kw: FloatArray = np.full(n, np.nan)
        self.applied_kw: FloatArray = np.full(n, np.nan)  # nan: unknown, (re)assert next cycle
        self.commanded_kw: FloatArray = np.full(n, np.nan)  # last sent, whether it took or not
        checks = drift_checks or {}
        self._drift_checks = [checks.get(device_id) for device_id in fleet.device_ids]
        self._drift_resent = np.zeros(n, dtype=np.bool_)  # re-sent once since it last obeyed
        self.memory = Memory.initial(fleet)
        self.last: CycleReport | None = None
        self.follow_up = False  # a device failed: run again at once
        self._last_batch_s = -np.inf
        self._semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        # Bumped when a command to the device starts and again when it ends (odd: in flight). A
        # poll reading that overlapped a command may predate it: the command's own verification
        # speaks for the device, the reading is dropped (else a device read just before it was
        # switched off would be judged "drawing against 0 kW commanded" and marked down).
        self._command_seq = np.zeros(n, dtype=np.int64)
        self._applies = 0
        self._no_apply = asyncio.Event()  # set while no command fan-out runs: polls may read
        self._no_apply.set()
        self._value_order = np.argsort(
            [-fleet.classes[int(c)].value_usd_per_mwh for c in fleet.class_index], kind="stable"
        )

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
        )

    # -- SiteView ----------------------------------------------------------------------------
    def site_kw(self) -> float:
        return float(self._verified_kw().sum())

    def floor_kw(self, *, include_protected: bool) -> float:
        fleet = self.fleet
        deepest = Priority.PROTECTED if include_protected else Priority.FLEXIBLE
        sheddable = (fleet.priority <= deepest) & self.available & self.has_driver
        return float(self._verified_kw()[~sheddable].sum())

    def _verified_kw(self) -> FloatArray:
        kw = np.where(np.isnan(self.measured_kw), self.applied_kw, self.measured_kw)
        planned = np.nan_to_num(self.memory.setpoint_kw, nan=0.0)
        return np.where(np.isnan(kw), np.where(self.has_driver, planned, self.fleet.rated_kw), kw)

    # -- reading devices (their own cadence) -------------------------------------------------
    async def poll(self, indices: np.ndarray | None = None) -> None:
        """Read devices (all by default); an unreachable one becomes unavailable, a reachable
        one available again. Each change is logged once."""
        idx = np.flatnonzero(self.has_driver) if indices is None else indices
        todo = iter(idx.tolist())

        # A bounded set of readers, each waiting out a command fan-out before its next read: a
        # dispatch cycle never queues behind a whole poll of the site for connections and slots.
        async def reader() -> None:
            for i in todo:
                await self._no_apply.wait()
                await self._read_one(i)

        workers = min(len(idx), self.settings.max_concurrency)
        await asyncio.gather(*(reader() for _ in range(workers)))
        if self._metrics is not None:
            self._metrics.devices_available.set(int(self.available.sum()))

    async def _read_one(self, i: int) -> None:
        driver = self._drivers[i]
        assert driver is not None
        seq = int(self._command_seq[i])
        try:
            async with self._semaphore, asyncio.timeout(self.settings.verify_timeout_s):
                reading = await driver.read()
        except (DeviceError, TimeoutError) as exc:
            if self._overlapped(i, seq):
                return
            self._mark_down(i, str(exc))
            return
        if self._overlapped(i, seq):
            return
        if reading.power_kw is not None:
            self.measured_kw[i] = reading.power_kw
            if self._resend_if_drifted(i, reading):
                return
            excess = self._excess_kw(i, reading.power_kw)
            if excess:
                self._mark_down(i, excess)
                return
        if not self.available[i]:
            self.available[i] = True
            self.applied_kw[i] = np.nan  # re-assert its setpoint next cycle
            log.info("%s recovered", self.fleet.device_ids[i])

    def _overlapped(self, i: int, seq_before: int) -> bool:
        """Whether a command to device i ran during a read that began at `seq_before`."""
        return seq_before % 2 == 1 or int(self._command_seq[i]) != seq_before

    def _resend_if_drifted(self, i: int, reading: DeviceReading) -> bool:
        """A miner that drifted back (firmware reboot, auto-tuning) is sent its command again.

        Once: the next cycle re-sends the setpoint. If it still draws too much after that
        (firmware that answers OK and keeps hashing), the excess check below judges it as it
        judges any device.
        """
        check, commanded = self._drift_checks[i], float(self.commanded_kw[i])
        if check is None or np.isnan(commanded) or not self.available[i]:
            return False
        rated = float(self.fleet.rated_kw[i])
        command = DeviceCommand(reading.device_id, commanded > _EPS_KW, commanded,
                                100.0 * commanded / rated if rated else 0.0)  # fmt: skip
        if not check(command, reading):
            self._drift_resent[i] = False
            return False
        if self._drift_resent[i]:
            # re-sent already: judge it, unless the cycle has not re-sent it yet
            return bool(np.isnan(self.applied_kw[i]))
        self._drift_resent[i] = True
        self.applied_kw[i] = np.nan  # the next cycle re-sends the setpoint
        log.info("%s drifted to %.2f kW against %.2f kW commanded; re-sending",
                 self.fleet.device_ids[i], reading.power_kw, commanded)  # fmt: skip
        return True

    def _excess_kw(self, i: int, power_kw: float) -> str:
        """Why a device draws more than it was told to ('' when it obeys).

        Drawing less is fine (a load ramps up in its own time); drawing more than the command
        plus 10 % and a noise floor is a device ignoring us, whatever it answered.
        """
        commanded = float(self.commanded_kw[i])
        if np.isnan(commanded):
            return ""
        # off is not zero for every load: a GPU server with its jobs paused still idles
        expected_kw = max(commanded, float(self.fleet.idle_kw[i]))
        floor_kw = max(0.025, 0.05 * float(self.fleet.rated_kw[i]))
        if power_kw <= expected_kw * 1.1 + floor_kw:
            return ""
        return f"draws {power_kw:.2f} kW against {commanded:.2f} kW commanded"

    def _mark_down(self, i: int, why: str) -> None:
        self.applied_kw[i] = np.nan  # unknown now: re-asserted once the device is back
        if self.available[i]:
            self.available[i] = False
            log.warning("%s unavailable: %s", self.fleet.device_ids[i], why)
            if self._metrics is not None:
                self._metrics.errors.labels(kind="device").inc()

    # -- the cycle ---------------------------------------------------------------------------
    async def cycle(self) -> CycleReport:
        started = time.perf_counter()
        now = self._clock()
        ended, _ = self.snapshot.expire(now)
        for obligation in ended:
            log.info("event %s ended", obligation.event_id)
        signals = self.snapshot.freeze(now)
        state = FleetState(self.fleet, self.available.copy(), self.measured_kw.copy())
        decision = decide(signals, state, self.policy, self.memory, now)

        target = self._staggered(decision.setpoint_kw, now)
        changed = np.flatnonzero(self.has_driver & self.available & ~_same(target, self.applied_kw))
        failed = await self._apply(changed, target)
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
        self._record(report, changed, failed_idx)
        if self._events is not None:
            self._events.after_cycle(now, decision, site_kw)
        self.follow_up = bool(failed)
        self.last = report
        self._observe(report)
        return report

    def _staggered(self, setpoint_kw: FloatArray, now: datetime) -> FloatArray:
        """Hold back devices switching on beyond one batch per restore interval."""
        current = np.where(np.isnan(self.applied_kw), self.measured_kw, self.applied_kw)
        turning_on = (setpoint_kw > _EPS_KW) & (current <= _EPS_KW) & self.has_driver
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
        failed = await self._apply(indices, target)
        if self._store is not None:
            ids = self.fleet.device_ids
            with self._store.transaction():
                self._store.save_setpoints(
                    [(ids[i], float(target[i]), float(self.memory.changed_at_s[i]))
                     for i in indices if ids[i] not in failed]
                )  # fmt: skip
                self._store.audit(
                    self._clock(), "restore-batch", "site",
                    {"devices": len(indices), "failed": failed},
                )  # fmt: skip
        return failed

    async def _apply(self, changed: np.ndarray, target: FloatArray) -> dict[str, str]:
        self._applies += 1
        self._no_apply.clear()
        try:
            results = await asyncio.gather(*(self._apply_one(int(i), target) for i in changed))
        finally:
            self._applies -= 1
            if not self._applies:
                self._no_apply.set()
        return {
            self.fleet.device_ids[i]: why for i, why in zip(changed, results, strict=True) if why
        }

    async def _apply_one(self, i: int, target: FloatArray) -> str:
        driver = self._drivers[i]
        assert driver is not None
        kw = float(target[i])
        rated = float(self.fleet.rated_kw[i])
        device_id = self.fleet.device_ids[i]
        command = DeviceCommand(device_id, kw > _EPS_KW, kw, 100.0 * kw / rated if rated else 0.0)
        self.commanded_kw[i] = kw
        self._command_seq[i] += 1
        try:
            async with self._semaphore, asyncio.timeout(self.settings.verify_timeout_s):
                # A driver that proved the command by measured power returns that measurement:
                # reading the device again would cost a second round trip for nothing.
                reading = await driver.apply(command)
                self.applied_kw[i] = kw
                self.measured_kw[i] = np.nan
                if (reading is None or reading.power_kw is None) and self._reads_after(driver):
                    reading = await driver.read()
                if reading is not None and reading.power_kw is not None:
                    self.measured_kw[i] = reading.power_kw
        except TimeoutError:
            why = str(DeviceTimeoutError(device_id, f"no verified apply within "
                                         f"{self.settings.verify_timeout_s} s"))  # fmt: skip
            self._mark_down(i, why)
            return why
        except DeviceError as exc:
            self._mark_down(i, str(exc))
            return str(exc)
        finally:
            self._command_seq[i] += 1  # over: readings from now on see what it left
        return ""

    def _reads_after(self, driver: DeviceDriver) -> bool:
        return self.settings.read_after_apply and Capability.POWER_READING in driver.capabilities

    # -- recording ---------------------------------------------------------------------------
    def _record(self, report: CycleReport, changed: np.ndarray, failed_idx: np.ndarray) -> None:
        if self._store is None:
            return
        store, decision, ids = self._store, report.decision, self.fleet.device_ids
        ok = np.setdiff1d(changed, failed_idx)
        with store.transaction():
            store.save_setpoints(
                [
                    (ids[i], float(self.memory.setpoint_kw[i]), float(self.memory.changed_at_s[i]))
                    for i in ok
                    if not np.isnan(self.memory.setpoint_kw[i])
                ]
            )
            store.save_state(
                "engine",
                {
                    "baselines_kw": dict(self.memory.baselines_kw),
                    "class_running": {
                        c.name: r
                        for c, r in zip(self.fleet.classes, self.memory.class_running, strict=True)
                    },
                    "decided_at_utc": report.at_utc.isoformat(),
                },
            )
            if report.setpoints_changed or len(changed):
                store.audit(
                    report.at_utc,
                    "decision",
                    "site",
                    {
                        "planned_kw": round(decision.site_kw, 3),
                        "verified_kw": round(report.site_kw, 3),
                        "ceiling_kw": decision.site_ceiling_kw,
                        "price_usd_per_mwh": decision.price_usd_per_mwh,
                        "reasons": list(decision.reasons),
                        "commands": {
                            ids[i]: round(float(self.applied_kw[i]), 3) for i in ok[:2000]
                        },
                        "held_back": report.held_back,
                    },
                )
            for device_id, why in report.failed.items():
                store.audit(report.at_utc, "device-failed", device_id, {"error": why})

    def _observe(self, report: CycleReport) -> None:
        m = self._metrics
        if m is None:
            return
        m.cycle_seconds.observe(report.duration_s)
        m.site_kw.set(report.site_kw)
        m.planned_kw.set(report.decision.site_kw)
        for name, kw in report.decision.class_kw_by_name().items():
            m.class_kw.labels(load_class=name).set(kw)
        if report.decision.price_usd_per_mwh is not None:
            m.price.set(report.decision.price_usd_per_mwh)
        m.devices_available.set(int(self.available.sum()))
        m.devices_total.set(len(self.fleet))
        m.active_events.set(len(report.signals.obligations))
        m.commands.labels(result="ok").inc(len(report.commanded) - len(report.failed))
        m.commands.labels(result="failed").inc(len(report.failed))


def _same(a: FloatArray, b: FloatArray) -> np.ndarray:
    """Elementwise equal within a microwatt; nan never equals anything."""
    return np.isclose(a, b, rtol=0.0, atol=_EPS_KW)
