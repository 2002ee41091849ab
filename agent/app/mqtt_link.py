"""The service's MQTT interface: dispatch and overrides in; acks, status, telemetry and decisions
out, over a session of adapters/transport/mqtt_session.py. The MQTT devices (`gridflex node`,
MQTT relays) have a session of their own (`device_session_settings`): their messages never hold
a place in the in-flight window that carries dispatch.

A persistent session (clean_start=False, a fixed client id, a session expiry) with QoS 1
subscriptions: dispatch messages sent while the service was down or the broker restarted are
delivered when it is back. Incoming messages are acknowledged once the cycle that handled them has
committed, whatever their outcome (agent.service.inbox): a crash in between leaves them with the
broker, which redelivers them. The retained `<prefix>/status` says "online"; the broker's last
will turns it to "offline" when the service dies without saying goodbye, and the service publishes
"offline" itself on SIGTERM. Acks go out through the outbox's one publisher (QoS 1, confirmed);
telemetry and decisions at QoS 0, never queued while the broker is away.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from pydantic import BaseModel

from adapters.transport.mqtt_session import (
    Announcement,
    MqttError,
    MqttSession,
    MqttSettings,
    TlsFiles,
)
from agent.config import MqttConfig

__all__ = [
    "MQTT_DRIVERS", "SESSION_EXPIRY_S", "MqttLink", "device_session_settings", "passing_settings",
    "session_settings",
]  # fmt: skip

log = logging.getLogger("gridflex.mqtt")

# Returns what to await before the message is acknowledged to the broker (its outcome committed).
Handler = Callable[[bytes], Awaitable[None] | None]

# Long enough for any restart or host reboot to find its queued dispatches; short enough that a
# decommissioned site's client id does not make the broker hoard messages for ever. Dispatches
# older than the replay window are rejected on arrival anyway (with an ack saying so).
SESSION_EXPIRY_S = 86_400
MQTT_DRIVERS = frozenset({"mqtt", "gpu_node"})  # driver types that talk over the broker


def passing_settings(config: MqttConfig, prefix: str, role: str) -> MqttSettings:
    """A command's passing look at the site's broker (`gridflex status`, `gridflex send`): a
    fresh client id, no session kept, no last will, no "online" announced in the site's name."""
    settings = session_settings(config, prefix, f"gridflex-{role}-{uuid.uuid4().hex[:8]}",
                                session_expiry_s=0)  # fmt: skip
    return replace(settings, clean_start=True, will=None, birth=None, manual_acks=False)


def session_settings(
    config: MqttConfig, prefix: str, client_id: str, *, session_expiry_s: int = SESSION_EXPIRY_S
) -> MqttSettings:
    """`session_expiry_s=0` ends the broker's session with the connection (the demo: its client
    id is new every run, so a day-long session would only be left behind)."""
    tls = config.tls
    return MqttSettings(
        host=config.host,
        port=config.port,
        client_id=client_id,
        keepalive_s=config.keepalive_s,
        reconnect_min_s=1.0,
        # back within seconds of the broker: a dispatch must not wait out a long backoff
        reconnect_max_s=5.0,
        username=config.username,
        password=None if config.password is None else config.password.get_secret_value(),
        tls=None
        if tls is None
        else TlsFiles(
            ca_file=str(tls.ca_file),
            cert_file=None if tls.cert_file is None else str(tls.cert_file),
            key_file=None if tls.key_file is None else str(tls.key_file),
        ),
        clean_start=False,
        session_expiry_s=session_expiry_s,
        manual_acks=True,
        will=Announcement(f"{prefix}/status", "offline"),
        birth=Announcement(f"{prefix}/status", "online"),
        max_queued_messages=100_000,
    )


def device_session_settings(config: MqttConfig, client_id: str) -> MqttSettings:
    """The devices' own session: a clean one (a device's state is re-published every few
    seconds, nothing to keep while away), acknowledged on receipt, no will or birth."""
    return replace(
        session_settings(config, "", f"{client_id}-devices", session_expiry_s=0),
        clean_start=True,
        manual_acks=False,
        will=None,
        birth=None,
        max_queued_messages=1000,
    )


class MqttLink:
    """Implements assembly.Outbox over the site's MQTT session, topics relative to the prefix."""

    def __init__(
        self,
        config: MqttConfig,
        prefix: str,
        client_id: str,
        *,
        session_expiry_s: int = SESSION_EXPIRY_S,
    ) -> None:
        self.prefix = prefix
        self.client_id = client_id
        self.session = MqttSession(
            session_settings(config, prefix, client_id, session_expiry_s=session_expiry_s)
        )
        self._where = f"{config.host}:{config.port}"

    def on(self, suffix: str, handler: Handler) -> None:
        """Call `handler(payload)` in the event loop for every message on `<prefix>/<suffix>`;
        the PUBACK waits for what it returns."""

        def deliver(_topic: str, payload: bytes) -> Awaitable[None] | None:
            return handler(payload)

        self.session.subscribe(f"{self.prefix}/{suffix}", deliver)

    async def start(self, timeout_s: float = 10.0) -> None:
        try:
            await self.session.connect(timeout_s)
        except MqttError as exc:
            # keep going: paho keeps trying, devices keep being controlled meanwhile
            log.error("MQTT broker %s not reachable yet (%s); retrying in the background",
                      self._where, exc)  # fmt: skip

    @property
    def connected(self) -> bool:
        return self.session.connected

    def when_connected(self, callback: Callable[[], None]) -> None:
        self.session.on_connected(callback)

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        """State (telemetry, decisions): QoS 0, dropped while the broker is away, never queued
        (the next one supersedes it)."""
        payload = message if isinstance(message, str) else message.model_dump_json()
        try:
            self.session.publish_nowait(f"{self.prefix}/{topic}", payload, qos=0, retain=retain)
        except MqttError as exc:
            log.warning("%s", exc)

    async def publish_confirmed(self, topic: str, payload: str, *, retain: bool) -> None:
        """Publish under the site prefix (QoS 1) and wait for the broker's PUBACK, across
        reconnections (the outbox's one publisher)."""
        await self.session.publish(f"{self.prefix}/{topic}", payload, retain=retain, patient=True)

    async def stop(self) -> None:
        """Say "offline" (retained) and disconnect cleanly, waiting for the broker's PUBACK."""
        if self.session.connected:
            try:
                await self.session.publish(f"{self.prefix}/status", "offline", retain=True)
            except MqttError:
                log.warning("offline status not acknowledged before shutdown")
        await self.session.close()
