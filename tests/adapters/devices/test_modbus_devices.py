"""The Modbus driver against real Modbus TCP servers on loopback (pymodbus and umodbus)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from socketserver import ThreadingTCPServer

import pytest
from umodbus import conf as umodbus_conf
from umodbus.server.tcp import RequestHandler, get_server

from adapters.devices.modbus import ModbusDriver
from adapters.devices.profile import (
    load_profile,
)
from adapters.sim.modbus_server import SimEndpoint, SimModbusSite, pdu_site
from adapters.transport.modbus_pool import ModbusPool, PoolSettings
from agent.config.drivers import ModbusDriverConfig
from agent.errors import (
    DeviceRejectedError,
    DeviceTimeoutError,
    DeviceUnavailableError,
)
from agent.ports import Capability, DeviceCommand


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(port)


OFF = DeviceCommand("x", on=False, kw=0.0, percent=0.0)
ON = DeviceCommand("x", on=True, kw=3.25, percent=100.0)


def _pdu_config(port: int, host: str = "127.0.0.1", **extra: object) -> ModbusDriverConfig:
    return ModbusDriverConfig.model_validate(
        {"type": "modbus", "host": host, "port": port, "profile": "rack_pdu_switched", **extra}
    )


# --- profiles ------------------------------------------------------------------------------------


def test_pdu_outlets_switch_off_and_on_and_power_follows() -> None:
    port = free_port()

    async def scenario() -> None:
        async with SimModbusSite(pdu_site(30, first_host="127.0.3.1", port=port)):
            pool = ModbusPool()
            group = _pdu_config(port, host="127.0.3.1", channels_per_host=24)
            drivers = [ModbusDriver(f"outlet-{k}", group.member(k), pool) for k in (0, 23, 24)]
            assert drivers[0].capabilities == {Capability.ON_OFF, Capability.POWER_READING}
            await asyncio.gather(*(d.apply(OFF) for d in drivers))
            readings = [await d.read() for d in drivers]
            assert [(r.power_kw, r.running) for r in readings] == [(0.0, False)] * 3
            await drivers[1].apply(ON)
            on = await drivers[1].read()
            assert (on.power_kw, on.running) == (3.25, True)
            assert (await drivers[0].read()).power_kw == 0.0  # the neighbour outlet stays off
            assert pool.endpoint_count == 2  # outlets 1 and 24 share 127.0.3.1, outlet 25 is .2
            await pool.close()

    asyncio.run(scenario())


def test_a_device_that_accepts_the_write_but_keeps_drawing_is_shown_by_its_measurement() -> None:
    """The driver proves what it can (the relay reads back open) and returns the power it then
    measures: a device still drawing is judged by the shell over its settle window."""
    port = free_port()

    async def scenario() -> None:
        site = pdu_site(24, first_host="127.0.3.10", port=port, stuck_devices=frozenset({4}))
        async with SimModbusSite(site):
            pool = ModbusPool()
            group = _pdu_config(port, host="127.0.3.10", channels_per_host=24)
            stuck = ModbusDriver("stuck", group.member(4), pool)
            reading = await stuck.apply(OFF)
            assert reading is not None
            assert reading.power_kw == pytest.approx(3.25)
            assert stuck.settle_s == 5.0  # the shipped profile's window
            healthy = ModbusDriver("healthy", group.member(5), pool)
            reading = await healthy.apply(OFF)
            assert reading is not None
            assert reading.power_kw == 0.0
            await pool.close()

    asyncio.run(scenario())


def test_a_modbus_exception_response_is_a_rejection_not_retried_forever() -> None:
    port = free_port()
    profile = load_profile("rack_pdu_switched")

    async def scenario() -> None:
        endpoint = SimEndpoint("127.0.0.1", port, profile, rejecting_channels=frozenset({2}))
        async with SimModbusSite([endpoint]):
            pool = ModbusPool()
            driver = ModbusDriver("rejecting", _pdu_config(port, channel=2), pool)
            started = time.monotonic()
            with pytest.raises(DeviceRejectedError, match="Modbus exception 4"):
                await driver.apply(OFF)
            assert time.monotonic() - started < 0.5
            await pool.close()

    asyncio.run(scenario())


def test_an_address_outside_the_device_map_is_rejected() -> None:
    port = free_port()
    meter = load_profile("three_phase_meter")

    async def scenario() -> None:
        async with SimModbusSite([SimEndpoint("127.0.0.1", port, meter)]):
            pool = ModbusPool()
            pdu_on_meter = ModbusDriver("wrong-profile", _pdu_config(port), pool)
            with pytest.raises(DeviceRejectedError, match="Modbus exception 2"):
                await pdu_on_meter.read()
            await pool.close()

    asyncio.run(scenario())


def test_a_refused_connection_is_unavailable() -> None:
    port = free_port()  # nothing listens there

    async def scenario() -> None:
        pool = ModbusPool(PoolSettings(attempts=2, retry_wait_s=0.01))
        with pytest.raises(DeviceUnavailableError, match="cannot connect"):
            await ModbusDriver("gone", _pdu_config(port), pool).read()
        await pool.close()

    asyncio.run(scenario())


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP peer that accepts connections and never answers (a hung gateway)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield int(listener.getsockname()[1])
    listener.close()


def test_a_silent_device_times_out_within_the_configured_deadline(silent_server: int) -> None:
    async def scenario() -> None:
        pool = ModbusPool(PoolSettings(attempts=2, retry_wait_s=0.01))
        driver = ModbusDriver("silent", _pdu_config(silent_server, timeout_s=0.2), pool)
        started = time.monotonic()
        with pytest.raises(DeviceTimeoutError):
            await driver.read()
        # two attempts of 0.2 s each, plus a short wait between them
        assert time.monotonic() - started < 1.0
        await pool.close()

    asyncio.run(scenario())


def test_the_connection_is_reused_and_comes_back_after_the_device_restarts() -> None:
    port = free_port()
    profile = load_profile("rack_pdu_switched")

    async def scenario() -> None:
        pool = ModbusPool()
        driver = ModbusDriver("pdu", _pdu_config(port, channel=3), pool)
        site = SimModbusSite([SimEndpoint("127.0.0.1", port, profile)])
        await site.start()
        await driver.apply(OFF)
        await driver.read()
        assert pool.endpoint_count == 1
        await site.stop()
        with pytest.raises((DeviceUnavailableError, DeviceTimeoutError)):
            await driver.read()
        site = SimModbusSite([SimEndpoint("127.0.0.1", port, profile)])
        await site.start()
        await driver.apply(OFF)  # same pool, reconnected lazily
        assert pool.endpoint_count == 1
        await site.stop()
        await pool.close()

    asyncio.run(scenario())


def test_unit_ids_share_one_connection_and_percent_setpoints_verify() -> None:
    port = free_port()
    plc = load_profile("load_controller_percent")

    async def scenario() -> None:
        async with SimModbusSite([SimEndpoint("127.0.0.1", port, plc, rated_w=200_000)]):
            pool = ModbusPool()
            base = {"type": "modbus", "host": "127.0.0.1", "port": port}
            tanks = [
                ModbusDriver(
                    f"tank-{unit}",
                    ModbusDriverConfig.model_validate(
                        {**base, "unit_id": unit, "profile": "load_controller_percent"}
                    ),
                    pool,
                )
                for unit in (1, 2)
            ]
            assert tanks[0].capabilities == {
                Capability.ON_OFF,
                Capability.PERCENT,
                Capability.POWER_READING,
            }
            await tanks[0].apply(DeviceCommand("tank-1", on=True, kw=80.0, percent=40.0))
            reading = await tanks[1].read()
            assert reading.power_kw == pytest.approx(80.0)  # 40 % of 200 kW
            assert reading.running is True
            await tanks[1].apply(OFF)
            assert (await tanks[0].read()).running is False
            assert pool.endpoint_count == 1
            with pytest.raises(DeviceRejectedError, match="outside"):
                await tanks[0].apply(DeviceCommand("tank-1", on=True, kw=0.0, percent=140.0))
            await pool.close()

    asyncio.run(scenario())


def test_a_meter_reads_total_power_and_refuses_commands() -> None:
    port = free_port()
    meter = load_profile("three_phase_meter")

    async def scenario() -> None:
        async with SimModbusSite([SimEndpoint("127.0.0.1", port, meter, rated_w=1_250_000)]):
            pool = ModbusPool()
            driver = ModbusDriver(
                "feeder",
                ModbusDriverConfig(
                    type="modbus", host="127.0.0.1", port=port, profile="three_phase_meter"
                ),
                pool,
            )
            assert driver.capabilities == {Capability.POWER_READING}
            assert (await driver.read()).power_kw == pytest.approx(1250.0)
            with pytest.raises(DeviceRejectedError, match="read-only"):
                await driver.apply(OFF)
            await pool.close()

    asyncio.run(scenario())


# --- interop: a Modbus server from another implementation (umodbus) ---------------------------


class _UmodbusTank:
    """The tank PLC of load_controller_percent, written against umodbus's routing API."""

    def __init__(self, rated_kw: float) -> None:
        self.rated_kw = rated_kw
        self.holding = {100: 1, 101: 1000}

    def power_words(self) -> list[int]:
        kw_x10 = round(self.rated_kw * 10 * self.holding[101] / 1000) if self.holding[100] else 0
        high, low = struct.unpack(">HH", struct.pack(">i", kw_x10))
        return [low, high]  # the profile says low word first

    def serve(self, port: int) -> ThreadingTCPServer:
        ThreadingTCPServer.allow_reuse_address = True
        ThreadingTCPServer.daemon_threads = True
        app = get_server(ThreadingTCPServer, ("127.0.0.1", port), RequestHandler)

        @app.route(slave_ids=[1], function_codes=[3, 6, 16], addresses=[100, 101])
        def holding(slave_id: int, function_code: int, address: int, value: int = 0) -> int:
            if function_code in (6, 16):
                self.holding[address] = value
            return self.holding[address]

        @app.route(slave_ids=[1], function_codes=[4], addresses=[200, 201])
        def power(slave_id: int, function_code: int, address: int) -> int:
            return self.power_words()[address - 200]

        @app.route(slave_ids=[1], function_codes=[2], addresses=[10])
        def running(slave_id: int, function_code: int, address: int) -> int:
            return 1 if self.holding[100] else 0

        return app


def test_interop_with_a_umodbus_server() -> None:
    umodbus_conf.SIGNED_VALUES = False
    port = free_port()
    tank = _UmodbusTank(rated_kw=150.0)
    server = tank.serve(port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port)

    async def scenario() -> None:
        pool = ModbusPool()
        driver = ModbusDriver(
            "tank-umodbus",
            ModbusDriverConfig(
                type="modbus", host="127.0.0.1", port=port, profile="load_controller_percent"
            ),
            pool,
        )
        assert (await driver.read()).power_kw == pytest.approx(150.0)
        await driver.apply(DeviceCommand("tank-umodbus", on=True, kw=0.0, percent=25.5))
        assert tank.holding[101] == 255  # tenths of a percent
        assert (await driver.read()).power_kw == pytest.approx(38.25, abs=0.1)
        await driver.apply(OFF)
        reading = await driver.read()
        assert (reading.power_kw, reading.running) == (0.0, False)
        await pool.close()

    try:
        asyncio.run(scenario())
    finally:
        server.shutdown()
        server.server_close()
