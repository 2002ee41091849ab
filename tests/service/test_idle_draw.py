"""Loads that still draw when off (a GPU server with its jobs paused): counted, and not mistaken
for a device ignoring its command."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from adapters.sim.simulated import SimulatedDriver
from agent.config import parse_config
from agent.config.drivers import SimulatedDriverConfig
from agent.domain.signals import Obligation, ObligationKind, PriceSignal
from agent.service.cycle import FixedObligations, Shell
from agent.service.snapshot import SnapshotStore

SITE = """
site: {id: idle}
classes:
  batch: {priority: flexible, economics: {kind: fixed, value_usd_per_mwh: 100}}
  inference: {priority: protected, economics: {kind: fixed, value_usd_per_mwh: 2000}}
devices:
  - {id: batch, kind: gpu, class: batch, count: 2, rated_kw: 10, min_kw: 4, idle_kw: 1.5,
     control: power_limit}
  - {id: inf, kind: gpu, class: inference, rated_kw: 10, min_kw: 4, idle_kw: 1.5,
     control: power_limit}
"""
T0 = datetime(2024, 7, 1, 12, tzinfo=UTC)


def run(actual_idle_kw: float, usd_per_mwh: float, *obligations: Obligation) -> Shell:
    """Two cycles (command, then read back) with devices that idle at `actual_idle_kw`."""
    config = parse_config(SITE)
    fleet = config.fleet()
    now = [T0]
    drivers = {
        d: SimulatedDriver(d, SimulatedDriverConfig(type="simulated"), rated_kw=10.0,
                           idle_kw=actual_idle_kw, clock=lambda: now[0])
        for d in fleet.device_ids
    }  # fmt: skip
    store = SnapshotStore()
    shell = Shell(fleet, config.decision_policy(), drivers, store, clock=lambda: now[0],
                  obligations=FixedObligations(obligations))  # fmt: skip

    async def cycles() -> None:
        store(PriceSignal(usd_per_mwh, T0, T0 + timedelta(minutes=15), T0, source="test"))
        await shell.cycle()
        now[0] += timedelta(seconds=2)
        await shell.poll()
        await shell.cycle()

    asyncio.run(cycles())
    return shell


def test_an_idle_draw_is_counted_in_the_site_load() -> None:
    shell = run(1.5, usd_per_mwh=200.0)  # above the batch breakeven: both batch servers off
    assert shell.available.all()
    assert shell.last is not None
    decision = shell.last.decision
    assert decision.setpoint("batch-0001").kw == 0.0
    assert decision.site_kw == pytest.approx(10.0 + 2 * 1.5)
    assert decision.class_kw_by_name()["batch"] == pytest.approx(3.0)


def test_a_limit_counts_what_off_devices_still_draw() -> None:
    limit = Obligation("ev", ObligationKind.LIMIT, 6.0, T0, program="emergency")  # cuts protected
    shell = run(1.5, 20.0, limit)
    assert shell.last is not None
    decision = shell.last.decision
    # batch off (1.5 + 1.5 idle), so inference may keep 3 kW: below its 4 kW minimum -> off too
    assert decision.site_kw <= 6.0
    assert decision.site_kw == pytest.approx(4.5)
    assert shell.available.all()


def test_a_device_drawing_more_than_its_declared_idle_is_planned_around() -> None:
    shell = run(4.0, usd_per_mwh=200.0)  # declared 1.5 kW idle, actually draws 4 kW when off
    batch = [shell.fleet.index_of[d] for d in ("batch-0001", "batch-0002")]
    assert not shell.devices.obeying[batch].any()  # planned around, still reachable
