"""SCED base points through the running service on a simulated site: a base point sent as an
MQTT dispatch is followed along the resource's ramp curve, down and up (raising load that price
alone would stop), replaces the sender's previous one, and is judged within its tolerance on
measured power; a site without an `ercot` section refuses base points with the reason."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import Service, assemble
from agent.app.published import telemetry_message
from tests.helpers.shell import acks, dispatch, price, run_on_site, site_power_kw
from tests.service.site import T0, FakeClock, site_config

# 60 kW a minute either way; met within 3 % of the set point or 2 kW
ERCOT = """ercot: {resource: GFX_CLR1, tolerance_min_kw: 2,
        normal_ramp: [{at_kw: 0, up_kw_per_min: 60, down_kw_per_min: 60}]}"""
FULL_KW = 48 * 3.25 + 2 * 100 + 5  # 361 kW


async def send(service: Service, clock: FakeClock, event_id: str, kw: float) -> None:
    done = service.inbox.put(
        "dispatch", lambda: service.intake.dispatch(dispatch(
            clock, event_id, kind="base_point", base_point_kw=kw, program="SCED")),
        acknowledged=True,
    )  # fmt: skip
    assert done is not None
    await service.shell.cycle()
    await asyncio.wait_for(done, 5)


def test_base_points_are_followed_down_and_up_along_the_ramp(tmp_path: Path) -> None:
    run_on_site(tmp_path, _followed, mqtt=ERCOT)


async def _followed(service: Service, clock: FakeClock, sim: SimModbusSite) -> None:
    service.snapshot(price(clock, 30.0))
    assert (await service.shell.cycle()).site_kw == pytest.approx(FULL_KW)
    # the bid to buy: the tanks' 200 kW at their $120, then the miners' 156 kW at $90
    bid = telemetry_message(service, clock.now).bid_to_buy
    assert [(s.to_kw, s.usd_per_mwh) for s in bid] == [(200.0, 120.0), (356.0, 90.0)]
    await send(service, clock, "bp-1", 200.0)
    seen = []
    for _ in range(4):  # 60 s a cycle: 301, 241, 200, 200
        clock.leap(60)
        report = await service.shell.cycle()
        seen.append(report.site_kw)
    for got, want in zip(seen, (301.0, 241.0, 200.0, 200.0), strict=True):
        assert abs(got - want) <= max(0.03 * want, 2.0), seen
    assert abs(site_power_kw(sim) + 5 - 200.0) <= 6.0  # what the devices draw (controls: no sim)

    # $200/MWh is above every class's value: without the base point only controls would run
    service.snapshot(price(clock, 200.0))
    await send(service, clock, "bp-2", 300.0)
    (replaced,) = [a for a in acks(service.outbox, "bp-1") if a.status == "completed"]
    assert "replaced by base point bp-2" in replaced.reason
    for _ in range(3):
        clock.leap(60)
        report = await service.shell.cycle()
    assert abs(report.site_kw - 300.0) <= 9.0  # 3 % of 300
    for _ in range(10):  # two more 5-minute intervals on the base point
        clock.leap(60)
        await service.shell.cycle()
    record = service.events.get("bp-2")
    assert record is not None
    judged = record.compliance
    assert judged is not None
    assert judged.cycles >= 13
    assert judged.compliant_cycles == judged.cycles
    assert judged.intervals >= 2
    assert judged.intervals_within == judged.intervals
    # the final ack carries the record a settlement analyst checks
    assert service.intake.dispatch(dispatch(clock, "bp-2", kind="release")) == "released"
    ack = acks(service.outbox, "bp-2")[-1]
    assert ack.status == "completed"
    assert ack.compliance is not None
    assert ack.compliance.intervals == judged.intervals
    service.store.flush()  # the writer thread has committed what the cycle wrote
    (audited,) = [r for r in service.store.audit_since(T0, subject="bp-2")
                  if r.kind == "event-completed"]  # fmt: skip
    assert audited.detail["compliance"]["intervals_within"] == judged.intervals


def test_a_site_without_an_ercot_resource_refuses_base_points(tmp_path: Path) -> None:
    clock = FakeClock()
    config = site_config(tmp_path / "db.sqlite3", 1502)
    service = assemble(config, clock=clock, drivers={})
    try:
        assert telemetry_message(service, clock.now).bid_to_buy == []  # no resource, no bid
        outcome = service.intake.dispatch(dispatch(clock, "bp-x", kind="base_point",
                                                   base_point_kw=100.0))  # fmt: skip
        assert outcome == "rejected"
        (ack,) = acks(service.outbox, "bp-x")
        assert "base points need the site file's ercot section" in ack.reason
        assert service.intake.dispatch(dispatch(clock, "bp-y", kind="base_point",
                                                target_kw=100.0)) == "rejected"  # fmt: skip
        assert "a base point needs base_point_kw" in acks(service.outbox, "bp-y")[0].reason
    finally:
        asyncio.run(service.close())


def test_a_base_point_above_what_can_run_is_reported_short_of_its_set_point(
    tmp_path: Path,
) -> None:
    run_on_site(tmp_path, _above_reach, mqtt=ERCOT)


async def _above_reach(service: Service, clock: FakeClock, sim: SimModbusSite) -> None:
    service.snapshot(price(clock, 30.0))
    await service.shell.cycle()
    await send(service, clock, "bp-9", 500.0)  # the site is 361 kW with everything on
    for _ in range(3):
        clock.leap(60)
        report = await service.shell.cycle()
    assert report.site_kw == pytest.approx(FULL_KW)  # all of it runs
    ack = acks(service.outbox, "bp-9")[-1]
    assert ack.status == "non_compliant"
    assert "off the" in ack.reason
    assert "set point: the load that can run now does not reach it" in ack.reason


def test_a_base_point_that_starts_later_replaces_the_one_before_at_its_start(
    tmp_path: Path,
) -> None:
    run_on_site(tmp_path, _later, mqtt=ERCOT)


async def _later(service: Service, clock: FakeClock, sim: SimModbusSite) -> None:
    service.snapshot(price(clock, 30.0))
    await service.shell.cycle()
    await send(service, clock, "bp-a", 300.0)
    starts = clock.now + timedelta(seconds=150)
    later = dispatch(clock, "bp-b", kind="base_point", base_point_kw=250.0,
                     start=starts.isoformat())  # fmt: skip
    done = service.inbox.put("dispatch", lambda: service.intake.dispatch(later))
    assert done is None
    clock.leap(60)
    await service.shell.cycle()
    a = service.events.get("bp-a")
    assert a is not None
    assert a.end_utc == starts  # followed until bp-b starts
    assert "replaced by base point bp-b" in a.reason
    for _ in range(3):
        clock.leap(60)
        report = await service.shell.cycle()
    live = [r.event_id for r in service.events.live]
    assert live == ["bp-b"]  # bp-a ended at bp-b's start
    a = service.events.get("bp-a")
    assert a is not None
    assert a.status == "completed"
    assert abs(report.site_kw - 250.0) <= 7.5  # bp-b's ramp from 300 at 60 kW a minute
