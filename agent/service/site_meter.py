"""The site meter at the point of interconnection: the judge of what the site draws.

Read on the device cadence like any device, its reading is queued and taken at the cycle's
start. While it is fresh the site's load is what it says: compliance, `active`, every ack and
record are judged on it, and the sum of device readings is checked against it every cycle. A gap
beyond the tolerance is an alarm, logged once when it opens and once when it closes, naming the
devices whose readings are not believed (agent.service.evidence) or, with none, the load no
device reports; a positive gap is planned as load no device can shed (FleetState.unmetered_kw).
Without a fresh reading the device readings are the evidence, and acks say so.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from agent.ports import DeviceDriver, DeviceReading

__all__ = ["MeterCheck", "SiteMeter"]

log = logging.getLogger("gridflex.shell")

ALARM_AFTER_CHECKS = 3


@dataclass(frozen=True, slots=True)
class MeterCheck:
    """One cycle's comparison of the site meter with the devices' readings."""

    meter_kw: float | None  # None: no fresh reading (the devices are the evidence)
    devices_kw: float
    gap_kw: float  # meter - devices (0 without a reading)
    alarm: str | None  # why the two disagree, naming the suspects; None while they agree
    beyond: bool = False  # the gap is beyond the tolerance this cycle (alarm or not yet)

    @property
    def disowns(self) -> bool:
        """The meter reads less than the devices say, beyond the tolerance: a device's
        reading of power its relays say it cannot draw is then not believed."""
        return self.beyond and self.gap_kw < 0

    @property
    def evidence(self) -> str:
        return "site meter" if self.meter_kw is not None else "device readings"


class SiteMeter:
    def __init__(
        self,
        driver: DeviceDriver,
        *,
        tolerance_kw: float,
        tolerance_pct: float,
        stale_after_s: float,
        monotonic: Callable[[], float],
        timeout_s: float = 5.0,
    ) -> None:
        self._driver = driver
        self._tolerance_kw = tolerance_kw
        self._tolerance_pct = tolerance_pct
        self._stale_after_s = stale_after_s
        self._monotonic = monotonic
        self._timeout_s = timeout_s
        self._queued: tuple[float, float | None, str | None] | None = None
        self.kw: float | None = None
        self._read_at_s = -math.inf
        self._fault: str | None = None
        self._alarm: str | None = None
        self._beyond = 0  # consecutive checks beyond the tolerance

    async def poll(self) -> None:
        """Read the meter; the reading is taken at the next cycle's start."""
        began = self._monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                reading: DeviceReading = await self._driver.read()
            kw, fault = reading.power_kw, reading.power_fault
        except Exception as exc:  # the meter's fault is a state of the evidence, not the loop's
            kw, fault = None, str(exc) or type(exc).__name__
        self._queued = (began, kw, fault)

    def take(self) -> None:
        if self._queued is None:
            return
        began, kw, fault = self._queued
        self._queued = None
        usable = kw is not None and math.isfinite(kw) and kw >= -1.0
        if usable:
            self.kw, self._read_at_s = kw, began
        fault = None if usable else fault or f"reading {kw!r} is not a power"
        if fault != self._fault:
            if fault is None:
                log.info("site meter reads again")
            else:
                log.warning("site meter: %s; the device readings are the evidence until it "
                            "reads again", fault)  # fmt: skip
            self._fault = fault

    def fresh_kw(self) -> float | None:
        if self.kw is None or self._monotonic() - self._read_at_s > self._stale_after_s:
            return None
        return self.kw

    def check(self, devices_kw: float, suspects: list[str]) -> MeterCheck:
        """The meter against the devices' readings, alarm logged on change."""
        meter = self.fresh_kw()
        if meter is None:
            return MeterCheck(None, devices_kw, 0.0, None)
        gap = meter - devices_kw
        allowed = max(self._tolerance_kw, self._tolerance_pct / 100.0 * abs(meter))
        # a gap while loads ramp after a command closes within a few cycles: only one that
        # lasts ALARM_AFTER_CHECKS checks is an alarm (the gap is planned on at once regardless)
        beyond = abs(gap) > allowed
        self._beyond = self._beyond + 1 if beyond else 0
        alarm = None
        if self._beyond >= ALARM_AFTER_CHECKS:
            who = (", ".join(suspects[:10]) + (" ..." if len(suspects) > 10 else "")
                   if suspects else "load no device reports" if gap > 0
                   else "a device that over-reports")  # fmt: skip
            alarm = (f"site meter reads {meter:.1f} kW, the devices {devices_kw:.1f} kW: "
                     f"{gap:+.1f} kW beyond the {allowed:.1f} kW tolerance; "
                     f"suspect: {who}")  # fmt: skip
        if (alarm is None) != (self._alarm is None):
            if alarm is not None:
                log.warning("%s", alarm)
            else:
                log.info("site meter and devices agree again")
        self._alarm = alarm
        return MeterCheck(meter, devices_kw, gap, alarm, beyond)
