"""What one shed costs on the wire: three requests per PDU, whatever its outlet count.

The outlets of one PDU share its endpoint, so the shell commands them together: one write of
all the relays that change (FC15), one read-back of them (FC01), one read of every outlet's
power (FC04), and the shell adds no request to that proof. A switch-on proves nothing by
measurement, so there the shell still reads the outlets' power after the command: once per PDU.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pymodbus.constants import ExcCodes

from adapters.sim.modbus_server import SimEndpoint, SimModbusSite
from agent.app.assembly import assemble
from agent.app.simsite import endpoints_for
from tests.helpers.peers import free_port
from tests.helpers.shell import price
from tests.service.site import FakeClock, site_config

PDU_HOSTS = ("127.0.4.1", "127.0.4.2")


class CountingEndpoint(SimEndpoint):
    """The simulated device, counting the Modbus requests it serves by function code."""

    requests: Counter[int]

    async def action(  # noqa: PLR0917 - pymodbus's SimAction signature
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # pymodbus calls the action twice for a write (store, then echo): count the store
        if function_code <= 4 or set_values is not None:  # reads: codes 1-4
            self.requests[function_code] += 1
        return await super().action(
            function_code, start_address, address, count, registers, set_values
        )


def test_a_shed_costs_each_pdu_three_requests_and_is_measured(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port(), host_a=PDU_HOSTS[0],
                             host_b="127.0.4.101")  # fmt: skip
        endpoints = [
            CountingEndpoint(e.host, e.port, e.profile, rated_w=e.rated_w)
            for e in endpoints_for(config)
        ]
        pdus = [e for e in endpoints if e.host in PDU_HOSTS]
        for endpoint in endpoints:
            endpoint.requests = Counter()
        async with SimModbusSite(list(endpoints)):
            service = assemble(config, clock=clock)
            shell = service.shell
            outlets = np.array([shell.fleet.index_of[f"pdu-{k:04d}"] for k in range(1, 49)])
            try:
                service.snapshot(price(clock, 30.0))
                await shell.cycle()  # every outlet on
                for pdu in pdus:
                    pdu.requests.clear()

                clock.leap(60)
                service.snapshot(price(clock, 100.0))  # above the miners' breakeven: PDUs off
                shed = await shell.cycle()
                assert len(shed.commanded) == 48
                served = sum((p.requests for p in pdus), Counter())
                # per PDU: write the coils (15), read them back (1), read the power (4)
                assert served == Counter({15: 2, 1: 2, 4: 2})
                assert (shell.measured_kw[outlets] == 0.0).all()  # measured, not assumed

                for pdu in pdus:
                    pdu.requests.clear()
                clock.leap(60)
                service.snapshot(price(clock, 20.0))  # back on
                back = await shell.cycle()
                assert len(back.commanded) == 48
                served = sum((p.requests for p in pdus), Counter())
                # the driver proves nothing by power on a switch-on: the shell reads the PDU
                assert served == Counter({15: 2, 1: 2, 4: 2})
                assert shell.measured_kw[outlets] == pytest.approx(np.full(48, 3.25))
            finally:
                await service.close()

    asyncio.run(main())
