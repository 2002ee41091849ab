"""One device's setpoint on request, over a real Mosquitto: decision messages stay compact, and
`<prefix>/decision/request` answers for single devices on `<prefix>/decision/device`."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from adapters.sim.modbus_server import SimModbusSite
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.assembly import assemble
from agent.app.mqtt_link import MqttLink
from agent.app.runner import listen
from agent.app.simsite import endpoints_for
from tests.helpers.peers import Broker, free_port
from tests.helpers.shell import price
from tests.service.site import FakeClock, site_config


def test_a_device_setpoint_is_answered_with_its_rule_reason_reading_and_state(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    prefix = f"t/{uuid.uuid4().hex[:6]}"
    mqtt = f"mqtt: {{host: {mqtt_broker.host}, port: {mqtt_broker.port}, topic_prefix: {prefix}}}"
    config = site_config(tmp_path / "db.sqlite3", free_port(), mqtt=mqtt)
    assert config.mqtt is not None

    async def main() -> None:
        clock = FakeClock()
        async with SimModbusSite(endpoints_for(config)):
            link = MqttLink(config.mqtt, prefix, f"svc-{uuid.uuid4().hex[:6]}")  # type: ignore[arg-type]
            service = assemble(config, clock=clock, outbox=link)
            listen(service, link)
            await link.start()
            answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            scada_id = f"scada-{uuid.uuid4().hex[:6]}"
            scada = MqttSession(MqttSettings(mqtt_broker.host, mqtt_broker.port, scada_id))
            scada.subscribe(f"{prefix}/decision/device",
                            lambda _t, p: answers.put_nowait(json.loads(p)))  # fmt: skip
            await scada.connect()
            await scada.subscriptions_settled()
            await link.session.subscriptions_settled()
            try:
                service.snapshot(price(clock, 20.0))
                await service.shell.poll()
                await service.shell.cycle()
                clock.leap(60)
                service.snapshot(price(clock, 100.0))  # the miners are worth 90: off for price
                await service.shell.cycle()
                await service.shell.poll()

                async def ask(payload: str) -> dict[str, Any]:
                    await scada.publish(f"{prefix}/decision/request", payload)
                    return await asyncio.wait_for(answers.get(), 5)

                got = await ask('{"device_ids": ["pdu-0007", "tank-0001", "nope"], '
                                '"request_id": "r1"}')  # fmt: skip
                assert got["request_id"] == "r1"
                assert got["error"] is None
                assert got["unknown"] == ["nope"]
                pdu, tank = got["devices"]
                assert (pdu["device_id"], pdu["kw"], pdu["load_class"]) == ("pdu-0007", 0.0,
                                                                            "miners")  # fmt: skip
                assert "price" in pdu["reason"]
                assert pdu["rule"]
                assert pdu["measured_kw"] == 0.0
                assert pdu["state"] == "ok"
                assert tank["kw"] > 0
                assert tank["measured_kw"] is not None

                for bad, fragment in (("{not json", "bad JSON"),
                                      ('{"device_ids": []}', "device_ids"),
                                      ('{"device_id": "pdu-0001"}', "device_ids")):  # fmt: skip
                    refused = await ask(bad)
                    assert refused["devices"] == []
                    assert fragment in refused["error"], refused
            finally:
                await scada.close()
                await link.stop()
                await service.close()

    asyncio.run(main())
