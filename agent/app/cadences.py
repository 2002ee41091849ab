"""The Runner: the service's cycle on its cadence (the one writer), and its other tasks, each on
its own: device polls, telemetry, housekeeping; the shutdown posture. `gridflex run`
(agent.app.runner.serve) runs them; the demo and the tests call `Runner.step` on their clocks.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import numpy as np

from agent.app.assembly import Service
from agent.app.published import decision_message, telemetry_message
from agent.app.status_page import StatusPage, status_view
from agent.app.systemd import notify
from agent.ports import utc_now
from agent.service.messages import DecisionMessage
from agent.service.report import CycleReport

__all__ = ["BACKOFF_MAX_S", "Guard", "Runner"]

log = logging.getLogger("gridflex.service")

TELEMETRY_EVERY_S = 2.0
HOUSEKEEPING_EVERY_S = 86_400.0
HISTORY_KEPT_DAYS = 31  # the status page's minute rows (it draws the last 24 h)
BACKOFF_FIRST_S = 0.5  # after a failed cycle, doubling ...
BACKOFF_MAX_S = 30.0  # ... up to this (the watchdog, 30 s, restarts a service stuck failing)
FOLLOW_UP_S = 0.05  # a device failed: plan around it soon, but never without yielding
RESTORE_WITHIN_S = 90.0  # the restore posture's limit (the unit's TimeoutStopSec is 120 s)
OUTBOX_DRAIN_S = 5.0  # at shutdown, for acks still waiting for the broker


class Runner:
    def __init__(
        self, service: Service, stop: asyncio.Event, page: StatusPage | None = None
    ) -> None:
        self.service = service
        self.stop = stop
        self.page = page
        self._previous_kw: np.ndarray | None = None
        self._decision: DecisionMessage | None = None  # the last one published
        self._ready = False
        self.failures = 0  # cycles failed in a row

    async def step(self, *, restoring: bool = False) -> CycleReport:
        """One cycle and what follows it (the decision message): what `cycles` runs on the
        service's cadence, and what the demo and the tests run on their stepped clocks."""
        report = await self.service.shell.cycle(restoring=restoring)
        self._publish_decision(report)
        return report

    async def cycles(self) -> None:
        service, cycle_s = self.service, self.service.config.service.cycle_s
        while not self.stop.is_set():
            try:
                await self.step()
            except Exception:  # a bug must not take the site down; it is counted and logged
                self._failed()
            else:
                notify("WATCHDOG=1" if self._ready else "READY=1\nWATCHDOG=1")
                self._ready = True
                if self.failures:
                    log.info("cycles complete again after %d failed", self.failures)
                    self.failures = 0
            if self.failures:  # a pause that doubles; a message cannot cut it short
                await self._wait(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.failures - 1)),
                                 wakeable=False)  # fmt: skip
            elif service.shell.follow_up:  # a device failed: plan around it soon
                await self._wait(FOLLOW_UP_S, wakeable=False)
            else:
                await self._wait(cycle_s, wakeable=True)

    def _failed(self) -> None:
        self.failures += 1
        self.service.metrics.errors.labels(kind="cycle").inc()
        if self.failures == 1:
            log.exception("cycle failed; trying again with a backoff up to %.0f s",
                          BACKOFF_MAX_S)  # fmt: skip

    async def _wait(self, timeout_s: float, *, wakeable: bool) -> None:
        """Until the timeout, SIGTERM, or (wakeable) an urgent input; always yields."""
        wake = self.service.wake
        waits = {asyncio.ensure_future(self.stop.wait())}
        if wakeable:
            waits.add(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if wakeable:
            wake.clear()

    def _publish_decision(self, report: CycleReport) -> None:
        if not report.setpoints_changed:
            return
        message = decision_message(report, self._previous_kw)
        self._previous_kw = report.decision.setpoint_kw
        self._decision = message
        self.service.outbox.send("decision", message)

    async def devices(self) -> None:
        """Read every device on its own cadence; the readings are queued for the next cycle."""
        guard = Guard("device polling", self.service)
        while True:
            await asyncio.sleep(self.service.config.service.cycle_s)
            with guard:
                await self.service.shell.poll_queued()  # queued: the cycle takes them

    def view(self) -> dict[str, Any]:
        """What the status page and the Sparkplug edge node show, as of now."""
        return status_view(self.service, telemetry_message(self.service, utc_now()), self._decision)

    async def telemetry(self) -> None:
        guard = Guard("telemetry", self.service)
        minute = None
        while True:
            with guard:
                now = utc_now()
                message = telemetry_message(self.service, now)
                self.service.outbox.send("telemetry", message)
                if self.page is not None:
                    self.page.update(status_view(self.service, message, self._decision))
                    if now.replace(second=0, microsecond=0) != minute:  # a row a minute
                        minute = now.replace(second=0, microsecond=0)
                        since = now - timedelta(hours=24)
                        self.page.update_history(self.service.store.history_since(since))
            await asyncio.sleep(TELEMETRY_EVERY_S)

    async def housekeeping(self) -> None:
        """Daily: audit rows past the retention go (the replay memory prunes itself)."""
        days = self.service.config.service.audit_retention_days
        guard = Guard("housekeeping", self.service)
        while True:
            with guard:
                now = utc_now()
                if days is not None:
                    self.service.store.prune_audit(now - timedelta(days=days))
                self.service.store.prune_history(now - timedelta(days=HISTORY_KEPT_DAYS))
            await asyncio.sleep(HOUSEKEEPING_EVERY_S)

    async def shutdown_posture(self) -> str:
        """Leave the devices as configured, through decide(): `hold` (as they are) or `restore`
        (every class back on in staggered batches, within the live obligations, the import
        limit, the grid posture and overrides). Returns how the devices are left, in words."""
        service = self.service
        if service.config.service.shutdown_posture == "hold":
            log.info("shutdown: devices hold their last setpoints")
            return "the devices hold their last setpoints"
        log.info("shutdown: restoring the devices in staggered batches, within the obligations "
                 "and the import limit")  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESTORE_WITHIN_S
        pause_s = service.config.service.restore_batch_interval_s
        while True:
            try:
                report = await self.step(restoring=True)
            except Exception:
                log.exception("shutdown: a restore cycle failed; the devices are left as they are")
                return "the devices are left as the last completed cycle set them"
            if report.held_back == 0:
                break
            if loop.time() + pause_s > deadline:
                log.warning("shutdown: %d device(s) not restored within %.0f s",
                            report.held_back, RESTORE_WITHIN_S)  # fmt: skip
                break
            await asyncio.sleep(pause_s)
        ceiling = report.decision.site_ceiling_kw
        within = "" if ceiling is None else f" within the {ceiling:.1f} kW ceiling"
        return f"the devices are restored{within} ({report.site_kw:.1f} kW verified)"


class Guard:
    """Keeps a long-lived task alive through what it did not expect: each failure is counted
    (gridflex_errors{kind=<task>}); the change to failing is logged once with its traceback, and
    the recovery once."""

    def __init__(self, task: str, service: Service) -> None:
        self._task = task
        self._service = service
        self._failing = False

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> bool:  # fmt: skip
        if exc is None:
            if self._failing:
                log.info("%s recovered", self._task)
                self._failing = False
            return False
        if not isinstance(exc, Exception):
            return False  # cancellation and exits go through
        self._service.metrics.errors.labels(kind=self._task).inc()
        if not self._failing:
            log.error("%s failed; it keeps running", self._task, exc_info=exc)
            self._failing = True
        return True
