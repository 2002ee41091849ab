"""The demo over a real broker: the service's own MQTT link, and a QSE that dispatches over MQTT.

When a broker answers, `gridflex demo` runs the same MQTT interface as `gridflex run`
(agent/app/mqtt_link.py): retained `<prefix>/status` ("online", last will "offline"),
`<prefix>/telemetry` every cycle, `<prefix>/decision` on change, `<prefix>/dispatch/ack` on every
change of an event's status, and the scripted dispatch arrives as a real message on
`<prefix>/dispatch`, sent by a second client playing the QSE, so the ack flow is production's.

Every run gets its own prefix and client ids (`gridflex/demo-<6 hex>`), so two demos on one
broker never collide; the sessions end with their connections (no expiry), nothing but the
status is retained, and that is cleared at the end so runs leave nothing behind on the broker.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from adapters.transport.mqtt_session import MqttError, MqttSession, MqttSettings
from agent.app.assembly import MemoryOutbox, Service
from agent.app.mqtt_link import MqttLink
from agent.app.runner import decision_message, telemetry_message
from agent.config import MqttConfig
from agent.service.cycle import CycleReport

__all__ = ["DemoMqtt", "DemoMqttLink", "DemoOutbox", "open_demo_mqtt"]

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


class DemoOutbox:
    """The service's outbox in the demo: a memory copy (the view and the summary read it) and,
    once connected, the real MQTT link."""

    def __init__(self) -> None:
        self.memory = MemoryOutbox()
        self.link: MqttLink | None = None

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        self.memory.send(topic, message, retain=retain)
        if self.link is not None:
            self.link.send(topic, message, retain=retain)


class DemoMqttLink:
    """A connected demo: the service's link, the QSE's session, and the dispatch hand-over."""

    def __init__(self, target: DemoMqtt, link: MqttLink, qse: MqttSession) -> None:
        self.target = target
        self.link = link
        self.prefix = link.prefix
        self._qse = qse
        self._waiting: asyncio.Future[str] | None = None
        self._previous_kw: np.ndarray | None = None

    def delivered(self, outcome: str) -> None:
        """The service handled a message on `<prefix>/dispatch` (called in the event loop)."""
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(outcome)

    async def dispatch(self, payload: bytes) -> str:
        """Publish as the QSE and wait until the service has taken the message (the demo's
        simulated clock must not move on before the dispatch is in, or it would land late)."""
        self._waiting = asyncio.get_running_loop().create_future()
        try:
            await self._qse.publish(f"{self.prefix}/dispatch", payload)
            async with asyncio.timeout(DISPATCH_DELIVERY_TIMEOUT_S):
                return await self._waiting
        finally:
            self._waiting = None

    def publish_cycle(self, service: Service, report: CycleReport) -> None:
        """What `gridflex run` publishes on its own cadences, once per demo cycle."""
        service.outbox.send("telemetry", telemetry_message(service, report.at_utc))
        if report.setpoints_changed:
            message = decision_message(report, self._previous_kw)
            self._previous_kw = report.decision.setpoint_kw
            service.outbox.send("decision", message)

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


async def open_demo_mqtt(
    target: DemoMqtt, service: Service, outbox: DemoOutbox
) -> DemoMqttLink | str:
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
    prefix = f"gridflex/{service.config.site.id}-{run_id}"
    client_id = f"gridflex-{service.config.site.id}-{run_id}"
    config = MqttConfig(host=target.host, port=target.port, client_id=client_id)
    link = MqttLink(config, prefix, client_id, session_expiry_s=0)
    qse = MqttSession(
        MqttSettings(host=target.host, port=target.port, client_id=f"{client_id}-qse")
    )
    demo = DemoMqttLink(target, link, qse)
    # subscribed before connecting: the session subscribes as soon as the broker accepts it, so
    # the subscription is in place before the QSE (connected after) can publish a dispatch
    link.on("dispatch", lambda data: demo.delivered(service.intake.dispatch(data)))
    try:
        await link.session.connect(target.connect_timeout_s)
        await qse.connect(target.connect_timeout_s)
    except MqttError as exc:
        await link.session.close()
        await qse.close()
        return f"the broker on {target.where} did not accept an anonymous plain-TCP client: {exc}"
    outbox.link = link
    return demo
