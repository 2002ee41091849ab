"""No silent death: a device reply or a message that breaks a handler is a fault with a reason,
counted, and the task that met it keeps going (real peers: a raw Modbus TCP server that answers
short, a real Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from adapters.sim.modbus_server import SimModbusSite
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.assembly import assemble
from agent.app.simsite import endpoints_for
from agent.config import parse_config
from tests.helpers.peers import free_port
from tests.helpers.shell import price
from tests.service.site import FakeClock, site_config


async def _short_modbus_server(port: int) -> asyncio.Server:
    """Answers every read with one register/coil fewer than asked: a valid frame, a short reply
    (firmware bugs and gateways do this), and every write with a proper echo."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                function = pdu[0]
                if function in (3, 4):
                    count = struct.unpack(">H", pdu[3:5])[0]
                    words = max(0, count - 1)
                    body = bytes([function, 2 * words]) + b"\x00\x01" * words
                elif function in (1, 2):
                    body = bytes([function, 1, 0])
                else:
                    body = pdu[:5]  # write echo: function, address, value/count
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", port)


def test_a_short_register_reply_is_a_device_fault_and_polling_goes_on(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        good_port, short_port = free_port(), free_port()
        config = site_config(tmp_path / "db.sqlite3", good_port)
        # the tanks answer from the short server
        text = config.model_dump_json()
        data = json.loads(text)
        for device in data["devices"]:
            if device["id"] == "tank":
                device["driver"]["port"] = short_port
        config = type(config).model_validate(data)
        server = await _short_modbus_server(short_port)
        good = [e for e in endpoints_for(config) if e.port == good_port]
        async with SimModbusSite(good):
            service = assemble(config, clock=clock)
            try:
                service.snapshot(price(clock, 20.0))
                for _ in range(3):  # it never stops the poll, whatever it answers
                    await service.shell.poll()
                    await service.shell.cycle()
                fleet = service.shell.fleet
                tanks = [fleet.index_of["tank-0001"], fleet.index_of["tank-0002"]]
                assert not service.shell.available[tanks].any()
                pdus = np.array([i for i, d in enumerate(fleet.device_ids) if d.startswith("pdu")])
                assert service.shell.available[pdus].all()
                assert service.metrics.errors.labels(kind="unexpected")._value.get() == 0
            finally:
                await service.close()
                server.close()

    asyncio.run(main())


def test_a_spoofed_mqtt_device_state_is_a_fault_not_a_crash(mqtt_broker: Any) -> None:
    base = f"test/{uuid.uuid4().hex[:8]}"
    site = f"""
site: {{id: spoof}}
classes:
  chillers: {{priority: flexible, economics: {{kind: fixed, value_usd_per_mwh: 100}}}}
devices:
  - {{id: chiller, kind: cooling, class: chillers, rated_kw: 18, min_on_s: 0, min_off_s: 0,
     driver: {{type: mqtt, command_topic: "{base}/set", state_topic: "{base}/state",
     echo_timeout_s: 1}}}}
prices: {{source: none}}
mqtt: {{host: {mqtt_broker.host}, port: {mqtt_broker.port}}}
service: {{database: ":memory:", metrics_port: null}}
"""
    config = parse_config(site, env={})

    async def main() -> None:
        clock = FakeClock()
        agent = MqttSession(MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port,
                                         client_id=f"agent-{uuid.uuid4().hex[:6]}"))  # fmt: skip
        attacker = MqttSession(MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port,
                                            client_id=f"x-{uuid.uuid4().hex[:6]}"))  # fmt: skip
        await agent.connect()
        await attacker.connect()
        service = assemble(config, clock=clock, mqtt_session=agent)
        await agent.subscriptions_settled()
        try:
            for spoof in (b'{"on": true, "kw": 18, "power_kw": "abc"}',
                          b'{"on": "false", "power_kw": NaN}', b"abc"):  # fmt: skip
                await attacker.publish(f"{base}/state", spoof)
                await asyncio.sleep(0.2)
                await service.shell.poll()  # returns: the reading is judged, not trusted
            assert not service.shell.available[0]
        finally:
            await service.close()
            await agent.close()
            await attacker.close()

    asyncio.run(main())


def test_a_message_is_acknowledged_once_its_outcome_is_done_and_even_when_its_handler_fails(
    own_mqtt_broker: Any,
) -> None:
    """The PUBACK waits for what the handler returned (the service: the cycle's commit): a
    session that dies before it leaves the message with the broker, which redelivers it. A
    handler that raises gets its message acknowledged all the same: left unacknowledged it
    would hold a place in the broker's in-flight window for as long as the session lives."""
    topic = f"test/{uuid.uuid4().hex[:8]}/dispatch"
    client_id = f"svc-{uuid.uuid4().hex[:6]}"

    def settings() -> MqttSettings:
        return MqttSettings(host=own_mqtt_broker.host, port=own_mqtt_broker.port,
                            client_id=client_id, clean_start=False, session_expiry_s=600,
                            manual_acks=True)  # fmt: skip

    async def received(into: list[bytes], count: int) -> None:
        for _ in range(100):
            if len(into) >= count:
                return
            await asyncio.sleep(0.05)

    async def main() -> None:
        seen: list[bytes] = []
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def pending(_topic: str, payload: bytes) -> asyncio.Future[None]:
            seen.append(payload)
            return never  # its commit never comes: the service dies first

        first = MqttSession(settings())
        first.subscribe(topic, pending)
        await first.connect()
        await first.subscriptions_settled()
        sender = MqttSession(MqttSettings(host=own_mqtt_broker.host, port=own_mqtt_broker.port,
                                          client_id=f"qse-{uuid.uuid4().hex[:6]}"))  # fmt: skip
        await sender.connect()
        await sender.publish(topic, b'{"event_id": "ev-1"}')
        await received(seen, 1)
        assert seen == [b'{"event_id": "ev-1"}']
        await first.close()

        again: list[bytes] = []

        def failing(_topic: str, payload: bytes) -> None:
            again.append(payload)
            raise RecursionError("maximum recursion depth exceeded")

        second = MqttSession(settings())
        second.subscribe(topic, failing)
        await second.connect()
        await received(again, 1)
        assert again == [b'{"event_id": "ev-1"}']  # the broker kept it: nothing acked is lost
        assert second.handler_failures == 1
        await asyncio.sleep(0.3)  # the PUBACK on its way
        await second.close()

        third_seen: list[bytes] = []
        third = MqttSession(settings())
        third.subscribe(topic, lambda _t, payload: third_seen.append(payload))
        await third.connect()
        await asyncio.sleep(1.0)
        assert third_seen == []  # acknowledged although its handler failed: not redelivered
        await third.close()
        await sender.close()

    asyncio.run(main())
