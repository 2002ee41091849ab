"""Event priority through the running service: a higher-priority OpenADR event that relaxes a
standing one, as the event book acks it and the devices draw it (simulated Modbus, real VTN)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.sim.modbus_server import SimModbusSite
from agent.app.simsite import endpoints_for
from tests.adapters.signals.openadr_rig import Vtn, wait_until
from tests.helpers.openadr_service import (
    LEVEL_2_CEILING_KW,
    LEVEL_3_CEILING_KW,
    TOLERANCE,
    VEN_ID,
    devices_kw,
    enrolled,
    service_running,
)
from tests.helpers.peers import free_port

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


def test_a_higher_priority_event_suspends_a_standing_one_which_then_stands_again(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        vtn = Vtn(port=free_port())
        config = enrolled(tmp_path, vtn, "pr")
        await vtn.start()
        try:
            async with SimModbusSite(endpoints_for(config)) as sim, service_running(config) as run:
                await wait_until(lambda: VEN_ID in vtn.registrations, 10, "the VEN to register")
                standing = vtn.publish(VEN_ID, vtn.event(VEN_ID, [3.0], interval_s=600,
                                                         priority=2))  # fmt: skip
                await wait_until(lambda: "active" in run.statuses(standing), 10, "standing")
                assert devices_kw(sim) <= LEVEL_3_CEILING_KW * TOLERANCE

                short = vtn.publish(VEN_ID, vtn.event(VEN_ID, [2.0], interval_s=4, priority=1))
                await wait_until(lambda: "active" in run.statuses(short), 10, "the short event")
                suspended = run.acks(standing)[-1]
                assert suspended.status == "accepted"
                assert f"suspended while higher-priority event {short}" in suspended.reason
                # the short event governs: the site may draw up to its ceiling, above the other's
                await wait_until(lambda: devices_kw(sim) > LEVEL_3_CEILING_KW + 20, 10,
                                 "the load up to the relaxed ceiling")  # fmt: skip
                assert devices_kw(sim) <= LEVEL_2_CEILING_KW * TOLERANCE

                await wait_until(lambda: "completed" in run.statuses(short), 15, "its end")
                await wait_until(lambda: run.statuses(standing)[-1] == "active", 15,
                                 "the standing event in force again")  # fmt: skip
                assert devices_kw(sim) <= LEVEL_3_CEILING_KW * TOLERANCE
                assert [e.event_id for e in run.service.events.live] == [standing]
        finally:
            await vtn.stop()

    asyncio.run(main())
