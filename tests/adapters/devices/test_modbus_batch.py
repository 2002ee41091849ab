"""Outlets of one PDU commanded together over a real Modbus TCP server: the requests merge and
split as the protocol and the profile allow, and verification stays per outlet."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from adapters.devices.modbus import ModbusDriver
from adapters.devices.modbus_batch import ModbusEndpoint
from adapters.devices.profile import load_profile
from adapters.sim.modbus_server import SimEndpoint, SimModbusSite
from adapters.transport.modbus_pool import ModbusPool, ModbusTarget
from agent.config.drivers import ModbusDriverConfig
from agent.errors import DeviceRejectedError
from agent.ports import DeviceCommand
from tests.helpers.peers import free_port

PROFILE = load_profile("rack_pdu_switched")


class Counting(SimEndpoint):
    """A PDU that counts the requests it serves, by function code."""

    requests: Counter[int]

    async def action(self, function_code: int, *args: Any, **kwargs: Any) -> Any:
        self.requests[function_code] += 1
        return await super().action(function_code, *args, **kwargs)


def _outlets(pool: ModbusPool, port: int, profile: Any = PROFILE) -> list[ModbusDriver]:
    group = ModbusDriverConfig(type="modbus", host="127.0.6.1", port=port,
                               profile="rack_pdu_switched", channels_per_host=24)  # fmt: skip
    endpoint = ModbusEndpoint(pool, ModbusTarget("pdu", "127.0.6.1", port, 1, 1.0), profile)
    return [ModbusDriver(f"o{k + 1}", group.member(k), pool, profile=profile, endpoint=endpoint)
            for k in range(24)]  # fmt: skip


def _off(drivers: list[ModbusDriver]) -> list[DeviceCommand]:
    return [DeviceCommand(d.device_id, False, 0.0, 0.0) for d in drivers]


def test_a_pdu_is_switched_in_three_requests_and_one_refusing_outlet_fails_alone() -> None:
    async def main() -> None:
        port = free_port()
        pdu = Counting("127.0.6.1", port, PROFILE, rejecting_channels=frozenset({7}))
        pdu.requests = Counter()
        async with SimModbusSite([pdu]):
            pool = ModbusPool()
            drivers = _outlets(pool, port)
            batch = drivers[0].batch
            assert batch is not None
            pdu.requests.clear()
            results = await batch.apply_many(_off([d for d in drivers if d.device_id != "o7"]))
            assert all(r is not None and not isinstance(r, Exception) for r in results)
            assert all(r.power_kw == 0.0 for r in results if hasattr(r, "power_kw"))
            # 23 contiguous-by-run outlets (a gap at 7): two runs, each written and read back,
            # and the power of all of them in two reads
            assert pdu.requests == Counter({15: 2, 1: 2, 4: 2})

            results = await batch.apply_many(_off(drivers))  # the whole PDU, outlet 7 refuses
            failed = [drivers[k].device_id for k, r in enumerate(results)
                      if isinstance(r, Exception)]  # fmt: skip
            assert failed == ["o7"]
            assert isinstance(results[6], DeviceRejectedError)
            readings = await batch.read_many([d.device_id for d in drivers])
            assert [r.running for r in readings] == [False] * 6 + [True] + [False] * 17  # type: ignore[union-attr]
            await pool.close()

    asyncio.run(main())


def test_runs_split_at_the_profiles_request_limit() -> None:
    small = PROFILE.model_copy(update={"limits": PROFILE.limits.model_copy(
        update={"max_bits_per_request": 10, "max_registers_per_request": 20})})  # fmt: skip

    async def main() -> None:
        port = free_port()
        pdu = Counting("127.0.6.1", port, PROFILE)
        pdu.requests = Counter()
        async with SimModbusSite([pdu]):
            pool = ModbusPool()
            drivers = _outlets(pool, port, small)
            batch = drivers[0].batch
            assert batch is not None
            pdu.requests.clear()
            await batch.apply_many(_off(drivers))
            # 24 coils by 10: 3 writes and 3 read-backs; 48 power words by 20 (whole floats): 3
            assert pdu.requests == Counter({15: 3, 1: 3, 4: 3})
            await pool.close()

    asyncio.run(main())
