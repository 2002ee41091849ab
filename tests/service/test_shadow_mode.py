"""Shadow mode (`service.mode: shadow`): every device read, none written.

At the driver: a Modbus PDU's driver wrapped for shadow mode refuses every command (alone and
batched) and still reads, and the PDU's server counts no write. Through the service: `gridflex
run` in shadow mode against the Modbus site of tests/helpers/physics_site.py and a real
Mosquitto takes a dispatch, acks it with `mode: shadow` as it would have been met on its plan,
writes nothing to any endpoint while the site keeps drawing its full load, and `gridflex
shadow-report` says the same as the meters and the plan did.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.devices.modbus import ModbusDriver
from adapters.devices.modbus_batch import ModbusEndpoint
from adapters.devices.profile import load_profile
from adapters.sim.modbus_server import SimEndpoint, SimModbusSite
from adapters.transport.modbus_pool import ModbusPool, ModbusTarget
from agent.app.shadow import REFUSED, read_only
from agent.config.drivers import ModbusDriverConfig
from agent.errors import DeviceRejectedError
from agent.ports import DeviceCommand
from tests.helpers.cli import gridflex
from tests.helpers.peers import Broker, free_port
from tests.helpers.physics_site import FULL_KW, running


def test_a_driver_in_shadow_mode_refuses_every_write_and_still_reads() -> None:
    async def main() -> None:
        port = free_port()
        profile = load_profile("rack_pdu_switched")
        pdu = SimEndpoint("127.0.26.1", port, profile, rated_w=3250)
        site = SimModbusSite([pdu])
        await site.start()
        pool = ModbusPool()
        try:
            target = ModbusTarget("pdu", "127.0.26.1", port, 1, 1.0)
            endpoint = ModbusEndpoint(pool, target, profile, lambda: datetime.now(UTC))
            drivers = {}
            for channel in (1, 2):
                name = f"o{channel}"
                address = ModbusDriverConfig(
                    type="modbus",
                    host="127.0.26.1",
                    port=port,
                    profile="rack_pdu_switched",
                    channel=channel,
                )
                drivers[name] = ModbusDriver(
                    name, address, pool, profile=profile, endpoint=endpoint
                )
            shadow = read_only(drivers)
            off = DeviceCommand("o1", False, 0.0, 0.0)
            with pytest.raises(DeviceRejectedError, match=REFUSED):
                await shadow["o1"].apply(off)
            batch = shadow["o1"].batch  # type: ignore[attr-defined]
            assert batch is shadow["o2"].batch  # one endpoint, one batch, as before
            results = await batch.apply_many([off, DeviceCommand("o2", False, 0.0, 0.0)])
            assert all(isinstance(r, DeviceRejectedError) for r in results)
            reading = await shadow["o1"].read()
            assert reading.power_kw == pytest.approx(3.25, abs=0.01)
            both = await batch.read_many(["o1", "o2"])
            assert [r.running for r in both] == [True, True]  # type: ignore[union-attr]
            assert pdu.relay_writes == []  # the server saw no write at all
        finally:
            await pool.close()
            await site.stop()

    asyncio.run(main())


def test_a_dispatch_in_shadow_mode_is_acked_as_shadow_and_writes_nothing(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    with running(tmp_path, mqtt_broker, "127.0.27", mode="shadow") as run:
        sent_s = run.dispatch("shadow-1", 180.0, lasting_s=8)
        accepted = run.ack("shadow-1", "accepted", 10)
        assert accepted["mode"] == "shadow"
        active = run.ack("shadow-1", "active", 15)  # would be met: judged on the plan
        assert active["mode"] == "shadow"
        assert active["compliance"]["judged_on"] == "plan (shadow)"
        done = run.ack("shadow-1", "completed", 30)
        assert done["mode"] == "shadow"
        during = [s.physical_kw for s in run.site.since(sent_s) if s.at_s < sent_s + 8]
        assert min(during) > FULL_KW - 1, "the site was changed in shadow mode"
        for endpoint in (run.site.pdu_a, run.site.pdu_b, run.site.pdu_c):
            assert endpoint.relay_writes == [], "a device was written in shadow mode"
        time.sleep(1.0)  # the last cycles' rows committed
        out = gridflex("shadow-report", "--config", str(run.config), "--since", "10m", "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        event = report["events"]["shadow-1"]
        assert event["ceiling_kw"] == 180.0
        assert event["would_mean_kw"] <= 180.0
        assert event["would_under_ceiling_cycles"] == event["cycles"] > 5
        assert event["site_under_ceiling_cycles"] == 0
        measured = statistics.mean(during)
        assert event["site_mean_kw"] == pytest.approx(measured, rel=0.02)
        assert report["total"]["site_mwh"] > report["total"]["would_mwh"]
        log = run.log.read_text()
        assert "shadow mode: every device is read, none is written" in log
        status = gridflex("status", "--config", str(run.config))
        assert status.returncode == 0, status.stderr
        assert "\nSHADOW MODE: no device is written" in status.stdout, status.stdout
