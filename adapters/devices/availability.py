"""Availability as state: a device that stops answering is marked unavailable once and recovered
once, and only those changes are logged (Home Assistant's coordinator habit), so a fleet of 5,000
miners with one dead switch does not write 5,000 lines a minute.

`TrackedDriver` wraps any DeviceDriver: every DeviceUnavailableError / DeviceTimeoutError marks it
unavailable, the next success recovers it. The error still propagates: this records, it never
swallows. The engine reads `available` (and `last_error`) to re-plan without the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.errors import DeviceError, DeviceTimeoutError, DeviceUnavailableError
from agent.ports import Capability, DeviceCommand, DeviceDriver, DeviceReading

__all__ = ["Availability", "TrackedDriver"]

_log = logging.getLogger(__name__)


@dataclass
class Availability:
    device_id: str
    available: bool = True
    last_error: str | None = None
    failures: int = 0

    def record_success(self) -> bool:
        """True when this success is a recovery (a change of state)."""
        changed = not self.available
        self.available, self.last_error, self.failures = True, None, 0
        if changed:
            _log.info("device %s recovered", self.device_id)
        return changed

    def record_failure(self, error: DeviceError) -> bool:
        """True when this failure makes the device unavailable (a change of state)."""
        self.failures += 1
        self.last_error = str(error)
        if not isinstance(error, DeviceUnavailableError | DeviceTimeoutError):
            return False  # it answered: a refusal or a failed verification is not unreachability
        changed = self.available
        self.available = False
        if changed:
            _log.warning("device %s unavailable: %s", self.device_id, error)
        return changed


class TrackedDriver:
    """A DeviceDriver that keeps its own Availability up to date."""

    def __init__(self, inner: DeviceDriver) -> None:
        self._inner = inner
        self.availability = Availability(inner.device_id)

    @property
    def device_id(self) -> str:
        return self._inner.device_id

    @property
    def settle_s(self) -> float:
        return self._inner.settle_s

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._inner.capabilities

    @property
    def available(self) -> bool:
        return self.availability.available

    async def apply(self, command: DeviceCommand) -> DeviceReading | None:
        try:
            reading = await self._inner.apply(command)
        except DeviceError as error:
            self.availability.record_failure(error)
            raise
        self.availability.record_success()
        return reading

    async def read(self) -> DeviceReading:
        try:
            reading = await self._inner.read()
        except DeviceError as error:
            self.availability.record_failure(error)
            raise
        self.availability.record_success()
        return reading
