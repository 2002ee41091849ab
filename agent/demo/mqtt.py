"""The demo over a real broker: the service's own MQTT link, and a QSE that dispatches over MQTT.

When a broker answers, `gridflex demo` runs the same MQTT interface as `gridflex run`
(agent/app/mqtt_link.py, agent/app/runner.listen): retained `<prefix>/status` ("online", last
will "offline"), `<prefix>/telemetry` every cycle, `<prefix>/decision` on change,
`<prefix>/dispatch/ack` on every change of an event's status through the persisted outbox and
its one publisher, and the scripted dispatch arrives as a real message on `<prefix>/dispatch`,
sent by a second client playing the QSE, into the service's inbox: the ack flow is production's.

Every run gets its own prefix and client ids (`gridflex/demo-<6 hex>`), so two demos on one
broker never collide; the sessions end with their connections (no expiry), nothing but the
status is retained, and that is cleared at the end so runs leave nothing behind on the broker.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime

from adapters.transport.mqtt_session import MqttError, MqttSession, MqttSettings
from agent.app.assembly import Service
from agent.app.mqtt_link import MqttLink
from agent.app.runner import telemetry_message
from agent.config import MqttConfig

__all__ = ["DemoMqtt", "DemoMqttLink", "open_demo_mqtt"]

# A broker on loopback answers in milliseconds; the demo must not sit waiting for one that
# is not there (the fallback is the in-process path, announced in one line).
CONNECT_TIMEOUT_S = 1.5
DISPATCH_DELIVERY_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class DemoMqtt:
    """Where the demo looks for a broker (anonymous, plain TCP: a local test broker)."""

    host: str = "127.0.0.1"
    port: int = 1883
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class DemoMqttLink:
    """A connected demo: the service's link (its outbox, and its inbound topics once
    `listen` has run), and the QSE's own session."""

    def __init__(self, target: DemoMqtt, link: MqttLink, qse: MqttSession) -> None:
        self.target = target
        self.link = link
        self.prefix = link.prefix
        self._qse = qse

    async def dispatch(self, payload: bytes, service: Service) -> None:
        """Publish as the QSE and wait until the message is in the service's inbox, which wakes
        the cycle (the demo's simulated clock must not move on before the dispatch is in, or it
        would land late)."""
        await self.link.session.subscriptions_settled()
        service.wake.clear()
        await self._qse.publish(f"{self.prefix}/dispatch", payload)
        async with asyncio.timeout(DISPATCH_DELIVERY_TIMEOUT_S):
            await service.wake.wait()

    def publish_telemetry(self, service: Service, at: datetime) -> None:
        """What `gridflex run` publishes every 2 s, once per demo cycle."""
        service.outbox.send("telemetry", telemetry_message(service, at))

    async def close(self) -> None:
        """Say "offline" as `gridflex run` does, then clear the retained status: this prefix is
        never used again, so keeping it would only leave junk on the broker."""
        try:
            await self.link.stop()
            await self._qse.publish(f"{self.prefix}/status", b"", retain=True)
        except MqttError:
            pass  # the broker went away mid-demo: nothing of ours is left to clear there
        finally:
            await self._qse.close()


async def open_demo_mqtt(target: DemoMqtt, site_id: str) -> DemoMqttLink | str:
    """Connect the service's link and the QSE; the link, or why MQTT is not used."""
    try:
        async with asyncio.timeout(target.connect_timeout_s):
            _reader, writer = await asyncio.open_connection(target.host, target.port)
        writer.close()
        await writer.wait_closed()
    except TimeoutError:
        return f"nothing answers on {target.where} within {target.connect_timeout_s} s"
    except OSError as exc:
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc)
        return f"nothing answers on {target.where} ({why})"
    run_id = secrets.token_hex(3)
    prefix = f"gridflex/{site_id}-{run_id}"
    client_id = f"gridflex-{site_id}-{run_id}"
    config = MqttConfig(host=target.host, port=target.port, client_id=client_id)
    link = MqttLink(config, prefix, client_id, session_expiry_s=0)
    qse = MqttSession(
        MqttSettings(host=target.host, port=target.port, client_id=f"{client_id}-qse")
    )
    try:
        await link.session.connect(target.connect_timeout_s)
        await qse.connect(target.connect_timeout_s)
    except MqttError as exc:
        await link.session.close()
        await qse.close()
        return f"the broker on {target.where} did not accept an anonymous plain-TCP client: {exc}"
    return DemoMqttLink(target, link, qse)
