"""Availability changes are state and are logged once; the simulated driver obeys after its lag."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from adapters.devices.availability import TrackedDriver
from adapters.sim.simulated import SimulatedDriver
from agent.config.drivers import SimulatedDriverConfig
from agent.errors import DeviceUnavailableError
from agent.ports import DeviceCommand, DeviceDriver


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_unavailable_once_and_recovered_once(caplog: pytest.LogCaptureFixture) -> None:
    inner = SimulatedDriver("tank-1", SimulatedDriverConfig(type="simulated"), rated_kw=100.0)
    tracked = TrackedDriver(inner)
    assert isinstance(tracked, DeviceDriver)

    async def scenario() -> None:
        await tracked.read()
        inner.unreachable = True
        for _ in range(5):
            with pytest.raises(DeviceUnavailableError):
                await tracked.read()
        assert not tracked.available
        assert tracked.availability.failures == 5
        inner.unreachable = False
        for _ in range(3):
            await tracked.read()
        assert tracked.available

    with caplog.at_level(logging.INFO, logger="adapters.devices.availability"):
        asyncio.run(scenario())
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "device tank-1 unavailable: tank-1: simulated outage",
        "device tank-1 recovered",
    ]


def test_simulated_device_follows_commands_after_its_lag() -> None:
    clock = _Clock()
    driver = SimulatedDriver(
        "m1", SimulatedDriverConfig(type="simulated", lag_s=5.0), rated_kw=3.25, clock=clock
    )

    async def scenario() -> None:
        assert (await driver.read()).power_kw == 3.25
        await driver.apply(DeviceCommand("m1", on=False, kw=0.0, percent=0.0))
        assert (await driver.read()).power_kw == 3.25
        clock.now += timedelta(seconds=5)
        reading = await driver.read()
        assert (reading.power_kw, reading.running) == (0.0, False)
        await driver.apply(DeviceCommand("m1", on=True, kw=2.0, percent=100.0))
        clock.now += timedelta(seconds=5)
        assert (await driver.read()).power_kw == 2.0

    asyncio.run(scenario())


def test_a_stuck_simulated_device_keeps_drawing() -> None:
    driver = SimulatedDriver(
        "m2", SimulatedDriverConfig(type="simulated", stuck=True), rated_kw=3.25
    )

    async def scenario() -> None:
        await driver.apply(DeviceCommand("m2", on=False, kw=0.0, percent=0.0))
        assert (await driver.read()).power_kw == 3.25

    asyncio.run(scenario())
