"""The shell cycle by cycle, with a fake clock, over real simulated Modbus devices on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import Service, assemble
from agent.app.simsite import endpoints_for
from tests.helpers.peers import free_port
from tests.helpers.shell import (
    RATED_KW,
    acks,
    dispatch,
    price,
    run_on_site,
    site_power_kw,
)
from tests.service.site import FakeClock, site_config


def test_price_above_breakeven_switches_miners_off_and_back_on(tmp_path: Path) -> None:
    run_on_site(tmp_path, _price_above_breakeven_switches_miners_off_and_back_on)


async def _price_above_breakeven_switches_miners_off_and_back_on(
    service: Service, clock: FakeClock, sim: SimModbusSite
) -> None:
    service.snapshot(price(clock, 30.0))
    first = await service.shell.cycle()
    assert first.site_kw == pytest.approx(RATED_KW)
    assert first.commanded  # first cycle asserts every setpoint

    clock.leap(60)
    service.snapshot(price(clock, 100.0))  # above miners (90), below tanks (120)
    report = await service.shell.cycle()
    assert len(report.commanded) == 48
    assert site_power_kw(sim) == pytest.approx(
        200 + 5 - 5
    )  # tanks run, PDUs off (controls: no sim)
    assert report.site_kw == pytest.approx(205.0)

    clock.leap(60)
    quiet = await service.shell.cycle()
    assert quiet.commanded == ()  # nothing changed: nothing sent

    clock.leap(60)
    service.snapshot(price(clock, 20.0))
    back = await service.shell.cycle()
    assert len(back.commanded) == 48
    assert site_power_kw(sim) == pytest.approx(RATED_KW - 5)


def test_dispatch_limit_throttles_devices_and_acks_achieved_kw(tmp_path: Path) -> None:
    run_on_site(tmp_path, _dispatch_limit_throttles_devices_and_acks_achieved_kw)


async def _dispatch_limit_throttles_devices_and_acks_achieved_kw(
    service: Service, clock: FakeClock, sim: SimModbusSite
) -> None:
    service.snapshot(price(clock, 30.0))
    await service.shell.cycle()
    # what the MQTT link does with a message: into the inbox, which wakes the cycle at once
    acknowledged = service.inbox.put(
        "dispatch", lambda: service.intake.dispatch(dispatch(clock, "ev-1", kind="limit",
                                                             target_kw=150.0)),
        acknowledged=True,
    )  # fmt: skip
    assert acknowledged is not None
    assert service.wake.is_set()
    assert not acknowledged.done()  # not before the cycle that takes it has committed
    report = await service.shell.cycle()
    await asyncio.wait_for(acknowledged, 5)
    assert report.site_kw <= 150.0 + 0.75
    assert site_power_kw(sim) + 5 <= 150.75
    statuses = [a.status for a in acks(service.outbox, "ev-1")]  # type: ignore[arg-type]
    assert statuses == ["accepted", "active"]
    active = acks(service.outbox, "ev-1")[-1]  # type: ignore[arg-type]
    assert active.achieved_kw == pytest.approx(report.site_kw, abs=1e-3)
    assert active.requested_kw == 150.0

    # duplicate: nothing changes; its sender gets the event's ack as it stands again
    assert service.intake.dispatch(dispatch(clock, "ev-1", kind="limit", target_kw=150.0)) == (
        "duplicate"
    )
    # the same id for another event: refused with the reason, the first one stands
    assert service.intake.dispatch(dispatch(clock, "ev-1", kind="limit", target_kw=10.0)) == (
        "rejected"
    )
    clock.leap(2)
    again = await service.shell.cycle()
    assert again.commanded == ()
    told = acks(service.outbox, "ev-1")  # type: ignore[arg-type]
    assert [a.status for a in told] == ["accepted", "active", "active", "rejected"]
    assert told[-2].requested_kw == 150.0  # the event's
    assert "conflicting" in told[-1].reason

    # release: completed, load comes back
    assert service.intake.dispatch(dispatch(clock, "ev-1", kind="release")) == "released"
    clock.leap(2)
    await service.shell.cycle()
    assert site_power_kw(sim) == pytest.approx(RATED_KW - 5)
    assert acks(service.outbox, "ev-1")[-1].status == "completed"  # type: ignore[arg-type]


def test_device_that_keeps_drawing_is_planned_around_and_the_event_still_met(
    tmp_path: Path,
) -> None:
    run_on_site(tmp_path, _device_that_keeps_drawing_is_planned_around_and_the_event_still_met)


async def _device_that_keeps_drawing_is_planned_around_and_the_event_still_met(
    service: Service, clock: FakeClock, sim: SimModbusSite
) -> None:
    service.snapshot(price(clock, 30.0))
    await service.shell.cycle()
    pdu = sim.endpoints[0]
    pdu.stuck_channels = frozenset(range(1, 25))  # the whole first PDU says OK and keeps drawing
    service.intake.dispatch(dispatch(clock, "ev-2", kind="limit", target_kw=180.0))
    first = await service.shell.cycle()
    assert not first.failed  # the commands were taken; power will tell
    await service.shell.poll()  # past their (zero) settle window, still drawing: not obeying
    stuck = [service.shell.fleet.index_of[f"pdu-{k:04d}"] for k in range(1, 25)]
    assert not service.shell.devices.obeying[stuck].any()
    assert service.shell.available[stuck].all()  # reachable, just not obeying
    second = await service.shell.cycle()  # planned around: tanks throttle deeper
    assert second.site_kw <= 180.0 * 1.005
    assert site_power_kw(sim) + 5 <= 180.0 * 1.005
    assert acks(service.outbox, "ev-2")[-1].status == "active"  # type: ignore[arg-type]


def test_restart_resumes_a_shed_event_with_its_baseline_not_shedding_twice(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port())
        async with SimModbusSite(endpoints_for(config)) as sim:
            first = assemble(config, clock=clock)
            first.snapshot(price(clock, 30.0))
            await first.shell.cycle()
            first.intake.dispatch(dispatch(clock, "ev-3", kind="shed", shed_kw=100.0))
            shed = await first.shell.cycle()
            assert shed.site_kw <= RATED_KW - 100 + 0.5
            kept_kw = site_power_kw(sim)
            first.store.flush()  # a crash after the cycle's commit reached the disk
            await first.pool.close()  # no orderly shutdown: the database is simply left as it is

            clock.leap(5)
            second = assemble(config, clock=clock)
            assert [e.event_id for e in second.events.live] == ["ev-3"]
            assert second.events.live[0].status == "active"
            await second.shell.poll()
            second.snapshot(price(clock, 30.0))
            report = await second.shell.cycle()
            # same baseline: the ceiling is rated - 100, not (already shed load) - 100
            assert report.decision.site_ceiling_kw == pytest.approx(RATED_KW - 100)
            assert site_power_kw(sim) == pytest.approx(kept_kw)
            assert not [a for _, a in second.outbox.sent]  # type: ignore[attr-defined]
            await second.close()

    asyncio.run(main())


def test_restore_after_an_event_comes_back_in_staggered_batches(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port())
        config = config.model_copy(
            update={
                "service": config.service.model_copy(
                    update={"restore_batch_size": 20, "restore_batch_interval_s": 30}
                )
            }
        )
        async with SimModbusSite(endpoints_for(config)) as sim:
            service = assemble(config, clock=clock)
            await service.shell.poll()
            service.snapshot(price(clock, 100.0))  # miners off
            await service.shell.cycle()
            assert site_power_kw(sim) == pytest.approx(200.0)
            on_counts = []
            for _ in range(4):
                clock.leap(30)
                service.snapshot(price(clock, 20.0))
                report = await service.shell.cycle()
                on_counts.append(int((np.nan_to_num(service.shell.applied_kw[:48]) > 0).sum()))
                assert report.held_back == 48 - on_counts[-1]
            assert on_counts == [20, 40, 48, 48]
            await service.close()

    asyncio.run(main())
