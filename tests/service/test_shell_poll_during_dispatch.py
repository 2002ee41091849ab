"""The device poll and a dispatch cycle at the same time (simulated Modbus site on loopback).

The runner polls every device on its own cadence; a dispatch starts a cycle at once, so on a big
site the two overlap. A poll reading taken just before an outlet was switched off must not be
judged against the new 0 kW command (that marked healthy outlets "unavailable: draws 3.25 kW
against 0.00 kW commanded"), and the cycle's commands must not queue behind the rest of the poll.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import assemble
from agent.app.simsite import endpoints_for
from agent.service.cycle import ShellSettings
from tests.helpers.peers import free_port
from tests.helpers.shell import dispatch, site_power_kw
from tests.service.site import FakeClock, site_config


def test_a_poll_overlapping_a_shed_marks_no_outlet_down_and_yields_to_it(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port(), host_a="127.0.4.21",
                             host_b="127.0.4.121")  # fmt: skip
        # few slots: the poll cannot read every device at once, so most of it is still to come
        # when the dispatch cycle starts
        settings = ShellSettings(max_concurrency=4, restore_batch_size=1000,
                                 restore_batch_interval_s=0, verify_timeout_s=2)  # fmt: skip
        async with SimModbusSite(endpoints_for(config)) as sim:
            service = assemble(config, clock=clock, settings=settings)
            shell = service.shell
            try:
                await shell.cycle()  # every outlet on
                finished: list[str] = []

                async def poll() -> None:  # the runner's poller: it only queues what it reads
                    await shell.devices.poll()
                    finished.append("poll")

                polling = asyncio.create_task(poll())
                await asyncio.sleep(0)  # the poll's first reads are on the wire
                service.intake.dispatch(dispatch(clock, "ev-p", kind="limit", target_kw=5.0))
                report = await shell.cycle()
                finished.append("cycle")
                await polling

                assert report.failed == {}
                clock.leap(2)
                await shell.cycle()  # takes the poll's readings: those older than the shed dropped
                assert shell.available.all()  # no outlet judged by a reading older than its command
                assert finished == ["cycle", "poll"]  # the rest of the poll waited for the shed
                assert site_power_kw(sim) == 0.0  # tanks and outlets off; 5 kW of controls remain
                outlets = [shell.fleet.index_of[f"pdu-{k:04d}"] for k in range(1, 49)]
                assert np.nan_to_num(shell.measured_kw[outlets], nan=1.0).max() == 0.0
                assert service.events.live[0].status == "active"
            finally:
                await service.close()

    asyncio.run(main())
