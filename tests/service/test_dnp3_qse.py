"""The QSE's DNP3 link against a DNP3 master on 127.0.0.1 (dnp3py's): the master writes a
base point as an analog output, the running service follows it on the simulated site, and the
master's integrity poll reads the resource's telemetry back (docs/ercot.md's point map)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dnp3.master import DefaultSOEHandler, Master, MasterConfig, MasterTcpRunner
from dnp3.master.commands import CommandBuilder

from adapters.scada.dnp3_outstation import AI, AO, BI
from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import Service
from agent.app.dnp3_link import QseLink, run_qse_link
from tests.helpers.peers import free_port, wait_for_port
from tests.helpers.shell import price, run_on_site
from tests.service.site import FakeClock

PORT, DEPLOY_PORT = free_port(), free_port()
ERCOT = f"""ercot: {{resource: GFX_CLR1, tolerance_min_kw: 2,
        normal_ramp: [{{at_kw: 0, up_kw_per_min: 60, down_kw_per_min: 60}}],
        emergency_ramp: [{{at_kw: 0, up_kw_per_min: 120, down_kw_per_min: 120}}],
        dnp3: {{host: 127.0.0.1, port: {PORT}, address: 10, master_address: 1}}}}"""
FULL_KW = 48 * 3.25 + 2 * 100 + 5  # 361 kW


@dataclass
class QseMaster:
    """dnp3py's master connected to the site's outstation, as the QSE's would be."""

    link: QseLink
    soe: DefaultSOEHandler
    master: Master
    runner: MasterTcpRunner

    async def poll(self) -> tuple[dict[int, float], dict[int, bool]]:
        self.link.refresh()  # what the link does every 2 s
        await self.runner.integrity_poll()
        return ({i: v.value for i, v in self.soe.analog_inputs.items()},
                {i: v.value for i, v in self.soe.binary_inputs.items()})  # fmt: skip

    async def write(self, index: int, kw: float) -> None:
        builder = CommandBuilder().add_analog(index, kw)
        await self.runner.request(self.master.build_direct_operate(builder.build_direct_operate()))


@contextlib.asynccontextmanager
async def qse_master(service: Service, clock: FakeClock, port: int
                     ) -> AsyncIterator[QseMaster]:  # fmt: skip
    """The service's DNP3 link running on `port`, and a master connected to it."""
    link = QseLink(service, clock)
    task = asyncio.create_task(run_qse_link(link))
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port)
        soe = DefaultSOEHandler()
        master = Master(handler=soe, config=MasterConfig(address=1, outstation_address=10))
        async with MasterTcpRunner(master=master, host="127.0.0.1", port=port) as runner:
            yield QseMaster(link, soe, master, runner)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_dnp3_master_writes_a_base_point_and_reads_the_telemetry_back(tmp_path: Path) -> None:
    run_on_site(tmp_path, _master, mqtt=ERCOT)


async def _master(service: Service, clock: FakeClock, sim: SimModbusSite) -> None:
    service.snapshot(price(clock, 30.0))
    await service.shell.cycle()
    async with qse_master(service, clock, PORT) as qse:
        ai, bi = await qse.poll()
        assert ai[AI.CONSUMPTION] == pytest.approx(FULL_KW, abs=1)
        assert ai[AI.MPC] == pytest.approx(FULL_KW, abs=1)
        assert ai[AI.LPC] == pytest.approx(5, abs=1)  # only the controls cannot be cut
        assert ai[AI.STATUS] == 257  # ONL
        assert not bi[BI.FOLLOWING]

        await qse.write(AO.BASE_POINT, 200.0)
        await service.shell.cycle()  # the write is taken by the next cycle
        for _ in range(3):  # 60 kW a minute down from 361: 301, 241, 200
            clock.leap(60)
            await service.shell.cycle()
        ai, bi = await qse.poll()
        assert bi[BI.FOLLOWING]
        assert not bi[BI.EMERGENCY]
        assert ai[AI.BASE_POINT] == 200
        assert ai[AI.SET_POINT] == 200
        assert abs(ai[AI.CONSUMPTION] - 200) <= 6  # within 3 %
        assert not bi[BI.OFF_SET_POINT]
        assert ai[AI.HDL] == pytest.approx(min(FULL_KW, ai[AI.CONSUMPTION] + 300), abs=1)

        live = len(service.events.live)
        await qse.write(AO.BASE_POINT, -5.0)  # out of range: refused at the outstation
        await qse.write(7, 100.0)  # no such output
        await service.shell.cycle()
        assert len(service.events.live) == live

        await qse.write(AO.EMERGENCY_BASE_POINT, 100.0)  # the emergency curve: 120 kW a minute
        await service.shell.cycle()
        clock.leap(60)
        await service.shell.cycle()
        ai, bi = await qse.poll()
        assert bi[BI.EMERGENCY]
        assert ai[AI.BASE_POINT] == 100
        assert ai[AI.SET_POINT] == pytest.approx(100, abs=1)  # 200 - 120 a minute, held at 100

        # 0 kW is a base point too (curtail everything that can be): still followed
        await qse.write(AO.EMERGENCY_BASE_POINT, 0.0)
        await service.shell.cycle()
        clock.leap(60)
        await service.shell.cycle()
        ai, bi = await qse.poll()
        assert bi[BI.FOLLOWING]
        assert ai[AI.BASE_POINT] == 0
        assert ai[AI.SET_POINT] == 0
        assert bi[BI.OFF_SET_POINT]  # the controls' 5 kW cannot go: more than the 2 kW band


def test_ancillary_service_deployments_shed_revise_and_recall_over_dnp3(tmp_path: Path) -> None:
    run_on_site(tmp_path, _deployments, mqtt=ERCOT.replace(str(PORT), str(DEPLOY_PORT)))


async def _deployments(service: Service, clock: FakeClock, sim: SimModbusSite) -> None:
    service.snapshot(price(clock, 30.0))
    await service.shell.cycle()
    async with qse_master(service, clock, DEPLOY_PORT) as qse:

        async def write(index: int, kw: float) -> None:
            await qse.write(index, kw)
            clock.leap(2)
            await service.shell.cycle()

        await write(AO.ECRS_DEPLOYMENT, 50.0)
        (ecrs,) = service.events.live
        assert (ecrs.program, ecrs.kind, ecrs.requested_kw) == ("ECRS", "shed", 50.0)
        assert service.shell.last is not None
        assert service.shell.last.site_kw <= (FULL_KW - 50) * 1.005  # the meter's 0.5 %
        await write(AO.ECRS_DEPLOYMENT, 80.0)  # more: the same deployment, the same baseline
        (more,) = service.events.live
        assert (more.event_id, more.requested_kw) == (ecrs.event_id, 80.0)
        assert service.shell.last.site_kw <= (FULL_KW - 80) * 1.005
        await write(AO.ECRS_DEPLOYMENT, 0.0)  # recalled
        assert service.events.live == []
        done = service.events.get(ecrs.event_id)
        assert done is not None
        assert done.status == "completed"
    # judged from their deadlines: ECRS 10 minutes, Non-Spin 30, anything else the ramp window
    assert service.events.window_s("ECRS") == 600.0
    assert service.events.window_s("NSRS") == 1800.0
    assert service.events.window_s("RRS") == service.events.ramp_window_s
