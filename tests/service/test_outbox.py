"""Acks leave through a persisted outbox (a real Mosquitto that goes down): an ack committed while
the broker is away is stored, survives a crash of the service, and is published after the
restart; once the broker confirmed it, it is forgotten."""

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
from agent.app.simsite import endpoints_for
from agent.service.outbox import PersistedOutbox
from tests.helpers.peers import free_port
from tests.helpers.shell import dispatch, price
from tests.service.site import FakeClock, site_config


def test_an_ack_committed_while_the_broker_is_down_is_published_after_a_restart(
    tmp_path: Path, own_mqtt_broker: Any
) -> None:
    broker = own_mqtt_broker
    where = f"host: {broker.host}, port: {broker.port}"
    mqtt = f"mqtt: {{{where}, topic_prefix: t/{uuid.uuid4().hex[:6]}}}"
    config = site_config(tmp_path / "db.sqlite3", free_port(), mqtt=mqtt)
    assert config.mqtt is not None
    prefix = config.topic_prefix

    async def main() -> None:
        clock = FakeClock()
        async with SimModbusSite(endpoints_for(config)):
            link = MqttLink(config.mqtt, prefix, "svc-outbox")  # type: ignore[arg-type]
            await link.start()
            service = assemble(config, clock=clock, outbox=link)
            assert isinstance(service.outbox, PersistedOutbox)
            service.snapshot(price(clock, 30.0))
            broker.stop()  # the broker goes away; the QSE's message had reached us before
            event = dispatch(clock, "ob-1", kind="limit", target_kw=200.0)
            assert service.intake.dispatch(event) == "accepted"
            await asyncio.sleep(link.session._settings.ack_timeout_s + 0.5)
            pending = service.store.outbox_pending()
            assert [json.loads(p)["status"] for _, t, p, _ in pending] == ["accepted"]
            await link.session.close()  # and the service dies without a goodbye
            service.store.close()
            await service.pool.close()

            broker.start()
            seen: list[dict[str, Any]] = []
            scada_id = f"scada-{uuid.uuid4().hex[:6]}"
            scada = MqttSession(
                MqttSettings(host=broker.host, port=broker.port, client_id=scada_id)
            )
            scada.subscribe(f"{prefix}/dispatch/ack", lambda _t, p: seen.append(json.loads(p)))
            await scada.connect()
            await scada.subscriptions_settled()

            link2 = MqttLink(config.mqtt, prefix, "svc-outbox")  # type: ignore[arg-type]
            await link2.start()
            again = assemble(config, clock=clock, outbox=link2)
            assert isinstance(again.outbox, PersistedOutbox)
            assert again.outbox.pending == 1  # loaded from the store
            publisher = asyncio.create_task(again.outbox.run())
            assert await again.outbox.drain(5) == 0
            publisher.cancel()
            for _ in range(50):
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert [(a["event_id"], a["status"]) for a in seen] == [("ob-1", "accepted")]
            assert again.store.outbox_pending() == []
            await again.close()
            await link2.session.close()
            await scada.close()

    asyncio.run(main())
