"""The Braiins OS+ miner driver against a fake miner serving the Public API over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from adapters.devices.braiins import bos_api_pb2
from adapters.devices.braiins_miner import BraiinsMiner
from adapters.devices.miners import drifted
from agent.config import parse_config
from agent.config.drivers import MinerDriverConfig
from agent.domain.signals import Obligation, ObligationKind
from agent.errors import DeviceRejectedError, DeviceTimeoutError, DeviceUnavailableError
from agent.ports import DeviceCommand
from tests.adapters.devices.braiins_fake import SAVE_AND_APPLY, FakeBraiinsMiner
from tests.helpers.openadr_service import service_running, utc_now
from tests.helpers.peers import free_port
from tests.protoc_check import assert_generated_from

OFF = DeviceCommand("m", on=False, kw=0.0, percent=0.0)
CAPPED = DeviceCommand("m", on=True, kw=2.0, percent=61.5)
FULL = DeviceCommand("m", on=True, kw=3.25, percent=100.0)


def driver(port: int, **fields: object) -> BraiinsMiner:
    config = MinerDriverConfig.model_validate({"type": "miner", "firmware": "braiins",
                                               "host": "127.0.0.1", "port": port,
                                               "password": "s3cret", "timeout_s": 1,
                                               **fields})  # fmt: skip
    return BraiinsMiner("m", config)


def run(scenario: Callable[[FakeBraiinsMiner, BraiinsMiner], Awaitable[None]],
        **fake: object) -> None:  # fmt: skip
    async def main() -> None:
        port = free_port()
        miner = driver(port)
        async with FakeBraiinsMiner(port, **fake) as fake_miner:  # type: ignore[arg-type]
            try:
                await scenario(fake_miner, miner)
            finally:
                await miner.close()

    asyncio.run(main())


async def settled(fake: FakeBraiinsMiner) -> None:
    await asyncio.sleep(fake.ramp_s + 0.1)


def test_pause_cap_and_resume_are_the_documented_calls_and_power_follows() -> None:
    async def scenario(fake: FakeBraiinsMiner, miner: BraiinsMiner) -> None:
        assert (await miner.read()).power_kw == pytest.approx(3.25)
        await miner.apply(OFF)
        assert fake.paused
        reading = await miner.read()  # still spinning down: the shell waits settle_s
        assert reading.power_kw is not None
        assert reading.power_kw > 0.04
        await settled(fake)
        assert (await miner.read()).power_kw == pytest.approx(0.04)  # control board and fans
        await miner.apply(CAPPED)
        assert not fake.paused
        assert (fake.target_w, fake.saved_target_w) == (2000.0, 2000.0)
        await settled(fake)
        assert (await miner.read()).power_kw == pytest.approx(2.0)
        await miner.apply(FULL)
        await settled(fake)
        assert (await miner.read()).power_kw == pytest.approx(3.25)
        assert fake.calls == [
            "Login", "PauseMining", f"SetPowerTarget 2000 {SAVE_AND_APPLY}", "ResumeMining",
            f"SetPowerTarget 3250 {SAVE_AND_APPLY}", "ResumeMining",
        ]  # fmt: skip
        assert fake.logins == 1  # one token for every call

    run(scenario)


def test_an_expired_token_logs_in_again_and_a_reboot_keeps_the_cap() -> None:
    async def scenario(fake: FakeBraiinsMiner, miner: BraiinsMiner) -> None:
        await miner.apply(CAPPED)
        fake.expire_tokens()
        await miner.apply(CAPPED)
        assert fake.logins == 2
        fake.reboot()  # mid-curtailment: it comes back mining at the saved target, not 3.25
        await settled(fake)
        reading = await miner.read()
        assert reading.power_kw == pytest.approx(2.0)
        assert not drifted(CAPPED, reading)
        await miner.apply(OFF)
        fake.reboot()  # a reboot forgets a pause: it hashes again, and drift says re-send
        await settled(fake)
        assert drifted(OFF, await miner.read())

    run(scenario)


def test_wrong_credentials_are_a_rejection_that_names_the_cause() -> None:
    async def scenario(fake: FakeBraiinsMiner, miner: BraiinsMiner) -> None:
        wrong = driver(fake.port, password="guess")
        try:
            with pytest.raises(DeviceRejectedError, match="UNAUTHENTICATED"):
                await wrong.apply(OFF)
            assert not fake.paused
        finally:
            await wrong.close()

    run(scenario)


def test_a_refused_power_target_is_a_rejection() -> None:
    async def scenario(fake: FakeBraiinsMiner, miner: BraiinsMiner) -> None:
        with pytest.raises(DeviceRejectedError, match="INVALID_ARGUMENT"):
            await miner.apply(DeviceCommand("m", on=True, kw=9.0, percent=100.0))

    run(scenario)


def test_nothing_listening_is_unavailable_and_a_slow_miner_times_out() -> None:
    async def main() -> None:
        nobody = driver(free_port())
        try:
            with pytest.raises(DeviceUnavailableError):
                await nobody.read()
        finally:
            await nobody.close()
        port = free_port()
        async with FakeBraiinsMiner(port, answer_delay_s=2.0):
            slow = driver(port, timeout_s=0.3)
            try:
                with pytest.raises(DeviceTimeoutError):
                    await slow.read()
            finally:
                await slow.close()

    asyncio.run(main())


def test_the_site_file_defaults_the_braiins_port_and_keeps_the_password_secret() -> None:
    config = MinerDriverConfig.model_validate({"type": "miner", "firmware": "braiins",
                                               "host": "10.0.0.5", "password": "pw"})  # fmt: skip
    assert config.api_port == 50051
    assert "pw" not in repr(config)
    luxos = MinerDriverConfig.model_validate({"type": "miner", "host": "10.0.0.5"})
    assert luxos.api_port == 4028


SITE = """
site: {{id: bos-{tag}, timezone: America/Chicago}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 95}}}}
  controls: {{priority: critical}}
devices:
  - {{id: bos, kind: miner, class: miners, count: 4, rated_kw: 3.25, min_kw: 2.0,
     control: power_limit, min_on_s: 0, min_off_s: 0,
     driver: {{type: miner, firmware: braiins, host: 127.0.11.1, port: {port},
              password: "${{GRIDFLEX_BOS_PASSWORD}}", timeout_s: 1, settle_s: 1}}}}
  - {{id: controls, kind: other, class: controls, rated_kw: 5}}
policy: {{hysteresis_usd_per_mwh: 0, min_dwell_s: 0}}
prices: {{source: none}}
service: {{cycle_s: 0.2, database: "{db}", metrics_port: null, verify_timeout_s: 3}}
"""


def test_the_service_caps_braiins_miners_under_a_dispatch_and_verifies_it(tmp_path: Path) -> None:
    """Four Braiins OS+ miners in a running service: a 14 kW limit is met by their power targets
    (or pauses), verified on their reported power, and the event goes active."""
    port = free_port()
    text = SITE.format(tag="a", port=port, db=tmp_path / "db.sqlite3")
    config = parse_config(text, env={"GRIDFLEX_BOS_PASSWORD": "s3cret"})
    fakes = [FakeBraiinsMiner(port, host=f"127.0.11.{k}", ramp_s=0.4) for k in range(1, 5)]

    def drawn_kw() -> float:
        return sum(f.power_w() for f in fakes) / 1000 + 5.0  # controls: counted at rating

    async def main() -> None:
        for fake in fakes:
            await fake.start()
        try:
            async with service_running(config) as run:
                now = utc_now()
                limit = Obligation("cap-1", ObligationKind.LIMIT, 14.0, now,
                                   now + timedelta(minutes=10), source="test")  # fmt: skip
                run.service.events.revise(limit, now, None, "test dispatch")
                for _ in range(100):
                    if "active" in run.statuses("cap-1"):
                        break
                    await asyncio.sleep(0.1)
                assert "active" in run.statuses("cap-1"), run.statuses("cap-1")
                assert drawn_kw() <= 14.0 * 1.005
                assert all(f.logins == 1 for f in fakes)  # one token each, kept
        finally:
            for fake in fakes:
                await fake.stop()

    asyncio.run(main())


def test_the_generated_code_is_the_proto_of_this_checkout(tmp_path: Path) -> None:
    assert_generated_from("adapters/devices/braiins/bos_api.proto", bos_api_pb2, tmp_path)
