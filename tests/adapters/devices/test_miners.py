"""Miners over the CGMiner/LuxOS JSON API against fake miners on 127.0.x.y, plus ramps and drift."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import pytest

from adapters.devices.miners import MinerDriver, drifted
from adapters.sim.miners import FakeMinerFleet
from agent.config.drivers import MinerDriverConfig
from agent.errors import DeviceRejectedError, DeviceTimeoutError, DeviceUnavailableError
from agent.ports import DeviceCommand, DeviceReading

SLEEP = DeviceCommand("m", on=False, kw=0.0, percent=0.0)
FULL = DeviceCommand("m", on=True, kw=3.25, percent=100.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _group(first_host: str, port: int, **extra: object) -> MinerDriverConfig:
    return MinerDriverConfig.model_validate(
        {"type": "miner", "host": first_host, "port": port, **extra}
    )


def test_sixty_miners_on_their_own_addresses_sleep_cap_and_wake() -> None:
    port = free_port()

    async def scenario() -> None:
        async with FakeMinerFleet(60, first_host="127.0.5.1", port=port) as fleet:
            group = _group("127.0.5.1", port)
            drivers = [MinerDriver(f"m{k}", group.member(k)) for k in range(60)]
            await asyncio.gather(*(d.apply(SLEEP) for d in drivers))
            assert all(miner.sleeping for miner in fleet.miners)
            assert {m.host for m in fleet.miners} == {group.member(k).host for k in range(60)}
            readings = await asyncio.gather(*(d.read() for d in drivers))
            assert {(r.power_kw, r.running) for r in readings} == {(0.0, False)}
            await drivers[7].apply(DeviceCommand("m7", on=True, kw=2.4, percent=0.0))
            assert (await drivers[7].read()).power_kw == 2.4
            assert fleet.miners[7].commands[-3:] == ["powertargetset", "curtail", "power"]
            assert fleet.miners[7].ramps == 0  # a power target, never a profile change
            # the session id is obtained once and reused
            assert fleet.miners[7].commands.count("logon") == 1

    asyncio.run(scenario())


def test_a_miner_that_says_ok_and_keeps_hashing_is_caught_by_drift() -> None:
    port = free_port()

    async def scenario() -> None:
        async with FakeMinerFleet(2, first_host="127.0.6.1", port=port) as fleet:
            fleet.miners[1].lies = True
            group = _group("127.0.6.1", port)
            honest, liar = MinerDriver("m0", group.member(0)), MinerDriver("m1", group.member(1))
            await honest.apply(SLEEP)
            await liar.apply(SLEEP)  # the firmware answers success
            assert not drifted(SLEEP, await honest.read())
            assert drifted(SLEEP, await liar.read())
            # a reboot brings an honest miner back to full power: drift says re-apply
            fleet.miners[0].drift_back()
            assert drifted(SLEEP, await honest.read())
            await honest.apply(SLEEP)
            assert not drifted(SLEEP, await honest.read())

    asyncio.run(scenario())


def test_firmware_errors_refusals_and_silence_are_translated() -> None:
    port = free_port()

    async def scenario() -> None:
        async with FakeMinerFleet(1, first_host="127.0.7.1", port=port) as fleet:
            driver = MinerDriver("m0", _group("127.0.7.1", port))
            await driver.apply(SLEEP)
            fleet.miners[0].session_id = "rotated"  # someone else logged on
            with pytest.raises(DeviceRejectedError, match="Invalid session id"):
                await driver.apply(FULL)
            fleet.miners[0].session_id = ""
            await driver.apply(FULL)  # the driver logs on again after a rejection
            assert not fleet.miners[0].sleeping
        with pytest.raises(DeviceUnavailableError):
            await driver.read()  # nothing listens any more: connection refused

        listener = socket.socket()
        listener.bind(("127.0.7.2", 0))
        listener.listen(4)
        silent = MinerDriver(
            "silent", _group("127.0.7.2", listener.getsockname()[1], timeout_s=0.2)
        )
        try:
            with pytest.raises(DeviceTimeoutError):
                await silent.read()
        finally:
            listener.close()

    asyncio.run(scenario())


def test_drift_rules() -> None:
    at = datetime(2026, 11, 27, tzinfo=UTC)
    capped = DeviceCommand("m", on=True, kw=2.0, percent=0.0)
    assert drifted(capped, DeviceReading("m", at, power_kw=3.2))
    assert not drifted(capped, DeviceReading("m", at, power_kw=2.05))
    assert not drifted(FULL, DeviceReading("m", at, power_kw=3.25))
    assert not drifted(SLEEP, DeviceReading("m", at, power_kw=None))
