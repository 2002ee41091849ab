"""The Modbus driver hands back the measurement that proved a command (pymodbus on loopback)."""

from __future__ import annotations

import asyncio

from adapters.devices.modbus import ModbusDriver
from adapters.sim.modbus_server import SimModbusSite, pdu_site
from adapters.transport.modbus_pool import ModbusPool
from agent.config.drivers import ModbusDriverConfig
from agent.ports import DeviceCommand
from tests.helpers.peers import free_port

OFF = DeviceCommand("x", on=False, kw=0.0, percent=0.0)
ON = DeviceCommand("x", on=True, kw=3.25, percent=100.0)


def _outlet(port: int, host: str, k: int) -> ModbusDriverConfig:
    group = ModbusDriverConfig.model_validate(
        {"type": "modbus", "host": host, "port": port, "profile": "rack_pdu_switched",
         "channels_per_host": 24}
    )  # fmt: skip
    return group.member(k)


def test_a_shed_returns_the_power_that_proved_it_and_a_switch_on_returns_nothing() -> None:
    port = free_port()

    async def scenario() -> None:
        site = pdu_site(24, first_host="127.0.3.40", port=port, rated_w=2000.0)
        async with SimModbusSite(site):
            pool = ModbusPool()
            driver = ModbusDriver("outlet-3", _outlet(port, "127.0.3.40", 3), pool)
            proof = await driver.apply(OFF)
            assert proof is not None
            assert (proof.device_id, proof.power_kw) == ("outlet-3", 0.0)
            # switching on proves nothing yet (a load ramps up in its own time): no measurement
            assert await driver.apply(ON) is None
            assert (await driver.read()).power_kw == 2.0
            await pool.close()

    asyncio.run(scenario())
