"""What the shell knows of each device, and how it judges it: reachable, obeying, measured kW.

One `DeviceBank` per fleet holds, as columns, what the drivers last saw of each device (reachable,
measured kW) and what was last applied to it. Polling reads devices on their own cadence and
only queues what it read; the cycle takes the queued readings at its start (`take_readings`), so
device state changes in one place, the cycle, and never while it commands. A reading begun
before the device's last command started is stale and dropped. Each reading is judged:

  settling     drawing more than commanded within its settle window after a command (the
               driver's `settle_s`: a relay's meter, a miner spinning down): counted at its
               measured draw in the verified site load, never failed
  not obeying  still drawing more after the window: planned around (decide() counts it at its
               reading), its command re-sent with a doubling backoff, and obeying again as soon
               as a reading agrees; a device back from a reboot with its relays closed is
               caught here and commanded again
  unavailable  unreachable (timeouts, refused connections): planned around until it answers

Each change is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import numpy as np

from agent.domain.fleet import Fleet, FloatArray
from agent.errors import DeviceError
from agent.ports import DeviceCommand, DeviceDriver, DeviceReading, EndpointBatch
from agent.service.device_terms import ShellSettings, id_ranges, why
from agent.service.evidence import MAX_REWRITES_PER_MIN, Evidence
from agent.service.metrics import Metrics

__all__ = ["EPS_KW", "DeviceBank", "DriftCheck", "ShellSettings", "id_ranges", "why"]

log = logging.getLogger("gridflex.shell")

# True when a device no longer does what it was last told (adapters.devices.miners.drifted)
DriftCheck = Callable[[DeviceCommand, DeviceReading], bool]
EPS_KW = 1e-6
# A reading above rated x this (plus 0.1 kW) is no device of that rating: a spoofed state topic,
# a wrong register scale, a meter fault. Inrush and nameplate tolerance stay well inside.
PLAUSIBLE_OVER_RATED = 1.5

# Re-sending a command to a device that does not obey: first after this long (or its settle
# window, if longer), doubling up to the maximum, so a stuck relay is not hammered every cycle.
RESEND_FIRST_S = 5.0
RESEND_MAX_S = 300.0


class DeviceBank:
    """Per-device state of one fleet, and the polling that keeps it current."""

    def __init__(
        self,
        fleet: Fleet,
        drivers: Mapping[str, DeviceDriver],
        settings: ShellSettings,
        *,
        metrics: Metrics | None = None,
        drift_checks: Mapping[str, DriftCheck] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.settings = settings
        self.metrics = metrics
        self.drivers = [drivers.get(device_id) for device_id in fleet.device_ids]
        n = len(fleet)
        # devices settle in real time, whatever clock the cycle decides on
        self._monotonic = monotonic
        self.settle_s = np.array([0.0 if d is None else d.settle_s for d in self.drivers])
        self.commanded_at_s = np.full(n, -np.inf)  # monotonic time the last command ended
        self.command_started_s = np.full(n, -np.inf)  # ... and when it started
        # what polls read since the cycle last took them: (device, read began at, reading)
        self._readings: list[tuple[int, float, DeviceReading | Exception]] = []
        self.obeying = np.ones(n, dtype=np.bool_)
        self._resend_at_s = np.full(n, np.inf)
        self._resend_every_s = np.zeros(n)
        # changes of state since the recorder last took them (it audits them), and the ones not
        # logged yet: logged as one line per (change, reason) when a poll or fan-out ends
        self.changes: list[tuple[str, str, str]] = []  # (device id, change, reason)
        self.last_change: dict[int, str] = {}  # per device, its last change and why
        self._unlogged: dict[tuple[str, str, int], list[int]] = {}
        self.has_driver = np.array([d is not None for d in self.drivers], dtype=np.bool_)
        # the endpoint each device shares with others (a PDU's outlets), found once
        self._batches: list[EndpointBatch | None] = [getattr(d, "batch", None)
                                                     for d in self.drivers]  # fmt: skip
        self.available = np.ones(n, dtype=np.bool_)
        self.measured_kw: FloatArray = np.full(n, np.nan)
        # readings are evidence, not truth: one outside physics is set aside (take_reading)
        self._plausible_kw: FloatArray = np.full(n, np.nan)
        self.implausible = np.zeros(n, dtype=np.bool_)
        self.evidence = Evidence(fleet)
        self._believed_at_s = np.full(n, -np.inf)  # monotonic time of its last believed reading
        self._read_began_s = np.full(n, -np.inf)  # when the read now judged began
        self._max_kw = fleet.rated_kw * PLAUSIBLE_OVER_RATED + 0.1
        self._min_kw = -np.maximum(0.05, 0.02 * fleet.rated_kw)  # meter noise around zero
        self.applied_kw: FloatArray = np.full(n, np.nan)  # nan: unknown, (re)assert next cycle
        self.commanded_kw: FloatArray = np.full(n, np.nan)  # last sent, whether it took or not
        checks = drift_checks or {}
        self._drift_checks = [checks.get(device_id) for device_id in fleet.device_ids]
        self._drift_resent = np.zeros(n, dtype=np.bool_)  # re-sent once since it last obeyed
        self.semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._applies = 0
        self._no_apply = asyncio.Event()  # set while no command fan-out runs: polls may read
        self._no_apply.set()

    def monotonic_s(self) -> float:
        return self._monotonic()

    def plausible(self, i: int, power_kw: float) -> bool:
        return math.isfinite(power_kw) and self._min_kw[i] <= power_kw <= self._max_kw[i]

    def take_reading(self, i: int, power_kw: float) -> bool:
        """Record device i's reading if it is physically plausible (finite, not below zero beyond
        meter noise, at most rated x 1.5); if not, the device counts at its last plausible
        reading, the change is logged once and counted, and False is returned."""
        if self.plausible(i, power_kw):
            self.measured_kw[i] = self._plausible_kw[i] = power_kw
            if self.implausible[i]:
                self.implausible[i] = False
                self._changed(i, "reads plausibly again", "", logging.INFO)
            return True
        self.measured_kw[i] = self._plausible_kw[i]
        if self.metrics is not None:
            self.metrics.errors.labels(kind="implausible_reading").inc()
        if not self.implausible[i]:
            self.implausible[i] = True
            rated = float(self.fleet.rated_kw[i])
            why_text = f"{power_kw!r} kW from a {rated:g} kW device; counted at its last plausible"
            self._changed(i, "reading implausible", why_text, logging.WARNING)
        return False

    def state_of(self, i: int) -> str:
        """no_driver | unavailable | implausible | suspect | not_obeying | settling | ok."""
        states = (("no_driver", not self.has_driver[i]), ("unavailable", not self.available[i]),
                  ("implausible", self.implausible[i]), ("suspect", self.evidence.suspect[i]),
                  ("not_obeying", not self.obeying[i]))  # fmt: skip
        first = next((name for name, holds in states if holds), None)
        if first is not None:
            return first
        measured = float(self.measured_kw[i])
        if self._settling(i) and not np.isnan(measured) and self._excess_kw(i, measured):
            return "settling"
        return "ok"

    def verified_kw(self, planned_kw: FloatArray) -> FloatArray:
        """Each device's draw as best known: measured, else applied, else planned (no driver:
        rated); a device whose reading is not believed at its worst case."""
        kw = np.where(np.isnan(self.measured_kw), self.applied_kw, self.measured_kw)
        planned = np.nan_to_num(planned_kw, nan=0.0)
        kw = np.where(np.isnan(kw), np.where(self.has_driver, planned, self.fleet.rated_kw), kw)
        worst = self.evidence.worst_kw(self.fleet.idle_kw)
        # relays read back closed against an off command (a reboot, a re-close): drawing, or
        # about to, whatever its meter has caught up with so far
        kw = np.where(self._closed_against_off(), np.maximum(kw, worst), kw)
        verified: FloatArray = np.where(self.evidence.suspect, worst, kw)
        return verified

    def planning_kw(self) -> FloatArray:
        """What decide() is told each device draws: its believed reading; a suspect reachable
        one none (it plans on its configured figures), one planned around its worst case. A
        device found closed against its off command (re-commanded this cycle) none either: what
        it draws until the command lands is not its idle draw, and must not be learned as it;
        nor is what one still settling after a command (a re-send included) reads."""
        worst = self.evidence.worst_kw(self.fleet.idle_kw)
        around = ~self.planned_available
        settling = self._monotonic() - self.commanded_at_s < self.settle_s
        unsure = self.evidence.suspect | self._closed_against_off() | settling
        kw: FloatArray = np.where(unsure, np.where(around, worst, np.nan), self.measured_kw)
        return kw

    def _closed_against_off(self) -> np.ndarray:
        """Relays read closed after an off command had time to land (past its settle window:
        a reading taken before the command says nothing against it)."""
        closed = np.nan_to_num(self.evidence.relay_on, nan=0.0) > 0.5
        read_after = self._read_began_s > self.command_started_s
        with np.errstate(invalid="ignore"):  # -inf - -inf: never read, or never commanded
            settled = self._read_began_s - self.commanded_at_s >= self.settle_s
        off = np.nan_to_num(self.commanded_kw, nan=1.0) <= EPS_KW
        against: np.ndarray = closed & off & read_after & settled
        return against

    @asynccontextmanager
    async def commanding(self) -> AsyncIterator[None]:
        """Mark a command fan-out as running: polls wait for it to end before their next read."""
        self._applies += 1
        self._no_apply.clear()
        try:
            yield
        finally:
            self._applies -= 1
            if not self._applies:
                self._no_apply.set()

    def by_endpoint(
        self, indices: np.ndarray
    ) -> tuple[list[int], list[tuple[EndpointBatch, list[int]]]]:
        """(devices on their own, [(endpoint batch, its devices among `indices`)])."""
        singles: list[int] = []
        batches: dict[int, tuple[EndpointBatch, list[int]]] = {}
        for i in indices.tolist():
            batch = self._batches[i]
            if batch is None:
                singles.append(i)
            else:
                batches.setdefault(id(batch), (batch, []))[1].append(i)
        return singles, list(batches.values())

    # -- reading devices (their own cadence) -------------------------------------------------
    async def poll(self, indices: np.ndarray | None = None) -> None:
        """Read devices (all by default), those sharing an endpoint together, and queue what
        was read for the cycle (`take_readings`)."""
        idx = np.flatnonzero(self.has_driver) if indices is None else indices
        singles, batches = self.by_endpoint(idx)
        jobs: list[int | tuple[EndpointBatch, list[int]]] = [*batches, *singles]
        todo = iter(jobs)

        # A bounded set of readers, each waiting out a command fan-out before its next read: a
        # dispatch cycle never queues behind a whole poll of the site for connections and slots.
        async def reader() -> None:
            for job in todo:
                await self._no_apply.wait()
                if isinstance(job, int):
                    await self._read_one(job)
                else:
                    await self._read_batch(*job)

        workers = min(len(jobs), self.settings.max_concurrency)
        await asyncio.gather(*(reader() for _ in range(workers)))

    async def _read_one(self, i: int) -> None:
        driver = self.drivers[i]
        assert driver is not None
        began_s = self._monotonic()
        try:
            async with self.semaphore, asyncio.timeout(self.settings.verify_timeout_s):
                reading: DeviceReading | Exception = await driver.read()
        except Exception as exc:  # judged in _take; cancellation goes through
            reading = exc
        self._readings.append((i, began_s, reading))

    async def _read_batch(self, batch: EndpointBatch, members: list[int]) -> None:
        began_s = self._monotonic()
        ids = [self.fleet.device_ids[i] for i in members]
        try:
            async with self.semaphore, asyncio.timeout(self.settings.verify_timeout_s):
                results: list[DeviceReading | Exception | None] = list(await batch.read_many(ids))
        except Exception as exc:
            results = [exc] * len(members)
        for i, result in zip(members, results, strict=True):
            reading = result if result is not None else TimeoutError("no reading")
            self._readings.append((i, began_s, reading))

    def take_readings(self) -> int:
        """Judge what the polls read since the last call (the cycle's start); how many."""
        taken, self._readings = self._readings, []
        for i, began_s, reading in taken:
            # begun before the device's last command started: it may predate the command, whose
            # own verification speaks for the device (else a device read just before it was
            # switched off would be judged "drawing against 0 kW commanded" and marked down)
            if began_s >= self.command_started_s[i]:
                self._read_began_s[i] = began_s
                self._take(i, reading)
        self.flush_log()
        if self.metrics is not None:
            self.metrics.devices_available.set(int(self.available.sum()))
        return len(taken)

    def _take(self, i: int, reading: DeviceReading | Exception) -> None:
        """Judge what a read of device i brought back."""
        if isinstance(reading, DeviceError | TimeoutError):
            self.mark_down(i, why(reading))
            return
        if isinstance(reading, Exception):  # a driver bug must not end the polling of the site
            self.unexpected(i, reading)
            return
        power_kw = reading.power_kw
        # outside physics (negative, far over its rating): set aside before anything else
        if power_kw is not None and not self.plausible(i, power_kw):
            self.take_reading(i, power_kw)
            self._recovered(i)
            return
        suspect = self.evidence.judge(
            i, reading, commanded_kw=float(self.commanded_kw[i]), settling=self._settling(i),
            last_kw=float(self._plausible_kw[i]),
            commanded_since_last=bool(self.commanded_at_s[i] > self._believed_at_s[i]),
        )  # fmt: skip
        self._suspect(i, suspect)
        # relays found against their command are commanded again, not judged as disobeying:
        # a rebooted PDU is not a reason to shed anything else
        reverted = self._enforce(i)
        if suspect is not None:  # the meter is not believed: planned on its relays
            self.measured_kw[i] = np.nan
            if not reverted:
                self._obeys(i)  # its relays, the evidence left, say it does as told
            self._recovered(i)
            return
        judged = power_kw is not None and self.take_reading(i, power_kw)
        if judged:
            self._believed_at_s[i] = self._monotonic()
        if (
            judged
            and not reverted
            and (self._resend_if_drifted(i, reading) or not self._judge(i, reading))
        ):
            return
        self._recovered(i)

    def _recovered(self, i: int) -> None:
        if not self.available[i]:
            self.available[i] = True
            self.applied_kw[i] = np.nan  # re-assert its setpoint next cycle
            self._changed(i, "recovered", "", logging.INFO)

    def _suspect(self, i: int, reason: str | None) -> None:
        """Log the change of device i's evidence, once each way."""
        evidence = self.evidence
        if reason is not None and not evidence.suspect[i]:
            evidence.suspect[i] = True
            evidence.why[i] = reason
            self._changed(i, "reading not believed", f"{reason}; planned on its worst case",
                          logging.WARNING)  # fmt: skip
            if self.metrics is not None:
                self.metrics.errors.labels(kind="suspect_reading").inc()
        elif reason is None and evidence.suspect[i]:
            evidence.suspect[i] = False
            evidence.why.pop(i, None)
            self._changed(i, "reading believed again", "", logging.INFO)

    def _enforce(self, i: int) -> bool:
        """A relay read back in the state it was not told to be in gets its command again, at
        most MAX_REWRITES_PER_MIN times a minute; then it is not obeying, re-sent on the
        backoff of resend_due. Whether it was found so."""
        commanded = float(self.commanded_kw[i])
        if np.isnan(commanded) or np.isnan(self.applied_kw[i]) or not self.available[i]:
            return False
        evidence, on = self.evidence, commanded > EPS_KW
        if not evidence.disagrees(i, on):
            evidence.confirmed[i] = evidence.confirmed[i] or not np.isnan(evidence.relay_on[i])
            return False
        if self._settling(i):
            return False
        if not self.obeying[i]:  # already on the backoff: nothing more from here
            return True
        if not evidence.confirmed[i]:  # never seen in its commanded state: it ignores writes
            state = "closed" if not on else "open"
            self._disobeys(i, f"its relays still read back {state} (it takes writes and "
                           "ignores them)")  # fmt: skip
            return True
        due = evidence.reverted(i, on, self._monotonic())
        if due is True:
            self.applied_kw[i] = np.nan  # the next cycle sends its setpoint again
            state = "closed" if commanded <= EPS_KW else "open"
            reason = f"its relays read back {state} against its command (a reboot, a re-close)"
            self._changed(i, "re-commanded", reason, logging.WARNING)
        elif due is False:  # its writes of this minute are spent: the backoff starts after it
            self._disobeys(i, f"its relays keep reverting: re-sent {MAX_REWRITES_PER_MIN} "
                           "times in a minute", first_resend_s=60.0)  # fmt: skip
        return due is not None

    def _judge(self, i: int, reading: DeviceReading) -> bool:
        """Settling, obeying, or not obeying (False) after its settle window."""
        excess = self._excess_kw(i, float(reading.power_kw or 0.0))
        if excess and not self._settling(i):
            self._disobeys(i, excess)
            return False
        if not excess:
            self._obeys(i)
        return True

    def _obeys(self, i: int) -> None:
        if not self.obeying[i]:
            self.obeying[i] = True
            self._resend_at_s[i] = np.inf
            self._resend_every_s[i] = 0.0
            self._changed(i, "obeys its command again", "", logging.INFO)

    def _settling(self, i: int) -> bool:
        """Whether device i is still within its settle window after its last command."""
        return bool(self._monotonic() - self.commanded_at_s[i] < self.settle_s[i])

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
        command = DeviceCommand(reading.device_id, commanded > EPS_KW, commanded,
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

    def disobeys(self, i: int, reason: str) -> None:
        """Device i answered and does not do as told."""
        self._disobeys(i, reason)

    def _disobeys(self, i: int, reason: str, *, first_resend_s: float = 0.0) -> None:
        if self.obeying[i]:
            self.obeying[i] = False
            why_text = f"{reason} after its {self.settle_s[i]:.0f} s settle window; re-sending"
            self._changed(i, "not obeying", why_text, logging.WARNING)
            if self.metrics is not None:
                self.metrics.errors.labels(kind="not_obeying").inc()
        if np.isinf(self._resend_at_s[i]):
            self._resend_every_s[i] = max(RESEND_FIRST_S, float(self.settle_s[i]))
            # at once (or after `first_resend_s`), then with the backoff
            self._resend_at_s[i] = self._monotonic() + first_resend_s

    def resend_due(self) -> np.ndarray:
        """Devices not obeying whose command is due to be sent again (the cycle sends it)."""
        due = ~self.obeying & self.available & self.has_driver
        due &= self._monotonic() >= self._resend_at_s
        return np.flatnonzero(due)

    def resent(self, indices: np.ndarray) -> None:
        now_s = self._monotonic()
        self._resend_at_s[indices] = now_s + self._resend_every_s[indices]
        self._resend_every_s[indices] = np.minimum(RESEND_MAX_S, 2 * self._resend_every_s[indices])

    def doubt_kw(self) -> float:
        """What the devices planned around draw beyond their commands by their own meters:
        planned for, but never a reason to shed protected load (FleetState.doubt_kw)."""
        around = self.available & ~self.obeying & self.has_driver
        planned = self.planning_kw()[around]
        beyond = planned - np.nan_to_num(self.commanded_kw[around], nan=0.0)
        return float(np.maximum(np.nan_to_num(beyond, nan=0.0), 0.0).sum())

    @property
    def planned_available(self) -> np.ndarray:
        """What decide() may command as it plans: reachable and obeying."""
        available: np.ndarray = self.available & self.obeying
        return available

    def mark_down(self, i: int, reason: str) -> None:
        self.applied_kw[i] = np.nan  # unknown now: re-asserted once the device is back
        if self.available[i]:
            self.available[i] = False
            self._changed(i, "unavailable", reason, logging.WARNING)
            if self.metrics is not None:
                self.metrics.errors.labels(kind="device").inc()

    def _changed(self, i: int, change: str, reason: str, level: int) -> None:
        self.changes.append((self.fleet.device_ids[i], change, reason))
        self.last_change[i] = f"{change}: {reason}" if reason else change  # the status page's
        self._unlogged.setdefault((change, reason, level), []).append(i)

    def flush_log(self) -> None:
        """One line per change and reason: 'pdu-0001..pdu-0024 unavailable (24): no answer
        from 127.0.1.1:502 ...', never one line per outlet."""
        for (change, reason, level), indices in self._unlogged.items():
            count = f" ({len(indices)})" if len(indices) > 1 else ""
            tail = f": {reason}" if reason else ""
            log.log(level, "%s %s%s%s", id_ranges(self.fleet, indices), change, count, tail)
        self._unlogged.clear()

    def unexpected(self, i: int, exc: Exception) -> None:
        """An error no driver should raise: the device is down (planned around), the error is
        counted, and its traceback logged once (when the device goes down), never the task."""
        if self.metrics is not None:
            self.metrics.errors.labels(kind="unexpected").inc()
        if self.available[i]:
            log.error("%s: unexpected %s from its driver", self.fleet.device_ids[i],
                      type(exc).__name__, exc_info=exc)  # fmt: skip
        self.mark_down(i, f"unexpected {type(exc).__name__}: {why(exc)}")
