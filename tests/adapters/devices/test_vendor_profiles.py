"""Shipped profiles against devices that answer as their vendors' documents say (vendor_sims.py,
built from address tables of their own): each profile reads and switches what the document
says, and the same profile with a wrong address fails."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from adapters.devices.modbus import ModbusDriver
from adapters.devices.modbus_batch import ModbusEndpoint
from adapters.devices.profile import PROFILE_DIR, Profile, available_profiles, load_profile
from adapters.transport.modbus_pool import ModbusPool, ModbusTarget
from agent.config.drivers import ModbusDriverConfig
from agent.errors import DeviceRejectedError
from agent.ports import DeviceCommand
from tests.adapters.devices.vendor_sims import (
    JANITZA_UMG96RM,
    SIEMENS_PAC3200,
    DocumentedMeter,
    NetioPdu,
    serve,
)
from tests.helpers.peers import free_port

# profiles whose layout no vendor publishes: they must say so in `vendor`
GENERIC = {"rack_pdu_switched": "generic", "load_controller_percent": "Generic"}


@pytest.mark.parametrize("name", available_profiles())
def test_every_shipped_profile_cites_its_document_or_says_it_is_generic(name: str) -> None:
    profile = load_profile(name)
    if name in GENERIC:
        assert profile.document is None
        assert GENERIC[name] in profile.vendor
        return
    assert profile.document is not None
    assert profile.document.title
    assert profile.document.version
    assert profile.document.date


def _driver(port: int, profile: Profile, device_id: str = "dev", **extra: object) -> ModbusDriver:
    fields = {"type": "modbus", "host": "127.0.0.1", "port": port, "profile": profile.name}
    config = ModbusDriverConfig.model_validate({**fields, **extra})
    return ModbusDriver(device_id, config, ModbusPool(), profile=profile)


def _moved(profile: Profile, register: str, by: int) -> Profile:
    """The same profile with one register's address moved: what a typo in a site's file does."""
    data = yaml.safe_load((PROFILE_DIR / f"{profile.name}.yaml").read_text())
    data["registers"][register]["address"] += by
    return Profile.model_validate(data)


METERS = {
    "three_phase_meter": (JANITZA_UMG96RM, False, "Real power sum L1..L3", "real_power_sum"),
    "siemens_pac3200": (SIEMENS_PAC3200, True, "Total Active Power", "total_active_power"),
}


@pytest.mark.parametrize("name", list(METERS))
def test_a_meter_profile_reads_the_documented_total_and_a_moved_address_fails(name: str) -> None:
    table, whole_values, total, register = METERS[name]

    async def main() -> None:
        port = free_port()
        meter = DocumentedMeter(table, whole_values_only=whole_values)
        meter.values = {total: 812_345.0, "Real power L1": 270_000.0, "Active Power a": 270_000.0}
        server = await serve(meter, port)
        try:
            profile = load_profile(name)
            assert (await _driver(port, profile).read()).power_kw == pytest.approx(812.345)
            for by in (-2, 2):  # the neighbouring values are not the total
                moved = _driver(port, _moved(profile, register, by))
                try:
                    reading = await moved.read()
                except DeviceRejectedError:
                    continue
                assert reading.power_kw != pytest.approx(812.345)
        finally:
            await server.shutdown()  # type: ignore[no-untyped-call]

    asyncio.run(main())


def test_the_pac3200_refuses_a_read_that_starts_inside_a_value() -> None:
    """The simulator keeps the manual's rule, so a profile that splits a float cannot pass."""

    async def main() -> None:
        port = free_port()
        server = await serve(DocumentedMeter(SIEMENS_PAC3200, whole_values_only=True), port)
        client = AsyncModbusTcpClient("127.0.0.1", port=port)
        try:
            await client.connect()
            assert not (await client.read_holding_registers(65, count=2)).isError()
            assert (await client.read_holding_registers(66, count=2)).isError()
            assert (await client.read_holding_registers(65, count=3)).isError()
        finally:
            client.close()
            await server.shutdown()  # type: ignore[no-untyped-call]

    asyncio.run(main())


def test_the_netio_profile_switches_each_output_alone_and_proves_it_by_power() -> None:
    """All four outputs off and on again through the endpoint batch: one FC05 per output (the
    device refuses FC15), each proven by its own power register once the load has stopped."""
    profile = load_profile("netio_powerpdu_metered")

    async def main() -> None:
        port = free_port()
        pdu = NetioPdu(rated_w=1200.0, power_lag_s=0.3)
        server = await serve(pdu, port)
        pool = ModbusPool()
        try:
            group = ModbusDriverConfig(type="modbus", host="127.0.0.1", port=port,
                                       profile=profile.name, channels_per_host=4)  # fmt: skip
            endpoint = ModbusEndpoint(pool, ModbusTarget("pdu", "127.0.0.1", port, 1, 2.0),
                                      profile)  # fmt: skip
            drivers = [ModbusDriver(f"o{k + 1}", group.member(k), pool, profile=profile,
                                    endpoint=endpoint) for k in range(4)]  # fmt: skip
            batch = drivers[0].batch
            assert batch is not None
            off = [DeviceCommand(d.device_id, False, 0.0, 0.0) for d in drivers]
            results = await batch.apply_many(off)
            assert not [r for r in results if isinstance(r, Exception)], results
            assert pdu.on == [False] * 4
            written = [address for fc, address in pdu.requests if fc in (5, 15)]
            assert sorted(set(written)) == [101, 102, 103, 104]  # FC05 only, each output's own
            assert {fc for fc, _ in pdu.requests} == {1, 4, 5}  # read back per output, then power
            await asyncio.sleep(pdu.power_lag_s + 0.1)
            readings = [await d.read() for d in drivers]
            assert [r.power_kw for r in readings] == [0.0] * 4
            on = [DeviceCommand(d.device_id, True, 1.2, 100.0) for d in drivers]
            await batch.apply_many(on)
            await asyncio.sleep(pdu.power_lag_s + 0.1)
            assert [(await d.read()).power_kw for d in drivers] == [pytest.approx(1.2)] * 4
            # the power register moved to the next output's: output 4 would read nothing (its
            # relay still answers: a meter fault of the reading, not an unreachable device)
            moved = _moved(profile, "output_power", 4)
            reading = await _driver(port, moved, channel=4).read()
            assert reading.power_kw is None
            assert reading.power_fault is not None
            assert reading.running is True
        finally:
            await pool.close()
            await server.shutdown()  # type: ignore[no-untyped-call]

    asyncio.run(main())
