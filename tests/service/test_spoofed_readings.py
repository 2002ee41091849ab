"""Device readings are evidence, not truth: a client on the broker that publishes a chiller's
state topic with 1 GW, or with -500 kW, must not shed the site's protected GPUs nor make a
dispatch look met. A real Mosquitto, the MQTT driver, the real shell."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import numpy as np
import pytest

from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.assembly import MemoryOutbox, assemble
from agent.config import parse_config
from tests.adapters.devices.peers import echoing_device
from tests.helpers.shell import acks, dispatch, price
from tests.service.site import FakeClock

SITE = """
site: {{id: spoof-{tag}, import_limit_kw: 60}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
  cooling: {{priority: flexible, economics: {{kind: fixed, value_usd_per_mwh: 400}}}}
  inference: {{priority: protected}}
devices:
  - {{id: chiller, kind: cooling, class: cooling, rated_kw: 18, min_on_s: 0, min_off_s: 0,
     driver: {{type: mqtt, command_topic: "{base}/set", state_topic: "{base}/state",
     echo_timeout_s: 2, settle_s: 0}}}}
  - {{id: miner, kind: miner, class: miners, count: 4, rated_kw: 3, min_on_s: 0, min_off_s: 0,
     driver: {{type: simulated}}}}
  - {{id: gpu, kind: gpu, class: inference, count: 2, rated_kw: 10, driver: {{type: simulated}}}}
policy: {{min_dwell_s: 0, hysteresis_usd_per_mwh: 0}}
prices: {{source: none}}
mqtt: {{host: {host}, port: {port}}}
service: {{database: ":memory:", metrics_port: null, verify_timeout_s: 3}}
"""


@pytest.mark.parametrize(
    ("spoofed_kw", "state"),
    [(1_000_000.0, "implausible"), (-500.0, "implausible"),
     (float("inf"), "unavailable")],  # not a number at all: the MQTT driver refuses the state
)  # fmt: skip
def test_a_spoofed_reading_is_set_aside_and_sheds_nothing(
    mqtt_broker: Any, spoofed_kw: float, state: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    base = f"test/{tag}/chiller"
    config = parse_config(SITE.format(tag=tag, base=base, host=mqtt_broker.host,
                                      port=mqtt_broker.port), env={})  # fmt: skip

    def session(name: str) -> MqttSession:
        return MqttSession(MqttSettings(mqtt_broker.host, mqtt_broker.port, f"{name}-{tag}"))

    async def main() -> None:
        clock = FakeClock()
        agent, chiller, attacker = session("agent"), session("chiller"), session("attacker")
        for peer in (agent, chiller, attacker):
            await peer.connect()
        await echoing_device(chiller, f"{base}/set", f"{base}/state")
        outbox = MemoryOutbox()
        service = assemble(config, clock=clock, outbox=outbox, mqtt_session=agent)
        await agent.subscriptions_settled()
        try:
            service.snapshot(price(clock, 20.0))
            for _ in range(2):
                await service.shell.poll()
                await service.shell.cycle()
                await asyncio.sleep(0.2)
            # the site needs 50 kW, under its 60 kW import limit; a dispatch asks for 40
            assert service.intake.dispatch(dispatch(clock, "ev", kind="limit", target_kw=40.0)) \
                == "accepted"  # fmt: skip
            spoof = {"on": True, "kw": 18, "power_kw": spoofed_kw}
            text = json.dumps(spoof).replace("Infinity", "1e999")  # JSON has no inf: overflow
            await attacker.publish(f"{base}/state", text)
            await asyncio.sleep(0.3)
            for _ in range(3):
                await service.shell.poll()
                report = await service.shell.cycle()
                clock.leap(2)
            fleet = service.shell.fleet
            gpus = [fleet.index_of["gpu-0001"], fleet.index_of["gpu-0002"]]
            assert (report.decision.setpoint_kw[gpus] == 10.0).all()  # protected: untouched
            chiller_i = fleet.index_of["chiller"]
            assert report.decision.setpoint_kw[chiller_i] == 18.0  # cooling outranks miners
            assert np.isclose(service.shell.site_kw(), 38.0)  # counted at its plausible 18 kW
            assert service.shell.devices.state_of(chiller_i) == state
            assert acks(outbox, "ev")[-1].achieved_kw == pytest.approx(38.0)
            if state == "implausible":
                errors = service.metrics.errors.labels(kind="implausible_reading")._value.get()
                assert errors >= 1
        finally:
            await service.close()
            for peer in (agent, chiller, attacker):
                await peer.close()

    asyncio.run(main())
