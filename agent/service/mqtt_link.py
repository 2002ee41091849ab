"""The service's MQTT interface (paho-mqtt 2.x): dispatch and overrides in; acks, status,
telemetry and decisions out.

A persistent session (clean_session=False, a fixed client id) with QoS 1 subscriptions: dispatch
messages sent while the service was down or the broker restarted are delivered when it is back.
The retained `<prefix>/status` says "online"; the broker's last will turns it to "offline" when
the service dies without saying goodbye, and the service publishes "offline" itself on SIGTERM.
Outgoing QoS 1 messages published while disconnected are queued by paho and sent on reconnect.

adapters/transport/mqtt_session.py (the device engineer's) has no last will, persistent session
or TLS, which this interface needs; hence a session of its own here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel

from agent.config import MqttConfig
from agent.errors import SignalUnavailableError

__all__ = ["MqttLink"]

log = logging.getLogger("gridflex.mqtt")

Handler = Callable[[bytes], object]


class MqttLink:
    """Implements assembly.Outbox over a broker; hands incoming messages to the event loop."""

    def __init__(self, config: MqttConfig, prefix: str, client_id: str) -> None:
        self.prefix = prefix
        self._config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[str, Handler] = {}
        self.connected = asyncio.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if config.username is not None:
            password = None if config.password is None else config.password.get_secret_value()
            client.username_pw_set(config.username, password)
        if config.tls is not None:
            client.tls_set(
                ca_certs=str(config.tls.ca_file),
                certfile=None if config.tls.cert_file is None else str(config.tls.cert_file),
                keyfile=None if config.tls.key_file is None else str(config.tls.key_file),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        # PUBACK only after the message is handled (and its event committed to the database):
        # a crash between receipt and commit leaves it with the broker, which redelivers it
        client.manual_ack_set(True)
        client.will_set(f"{prefix}/status", "offline", qos=1, retain=True)
        client.max_queued_messages_set(100_000)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    def on(self, suffix: str, handler: Handler) -> None:
        """Call `handler(payload)` in the event loop for every message on `<prefix>/<suffix>`."""
        self._handlers[f"{self.prefix}/{suffix}"] = handler

    async def start(self, timeout_s: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._client.connect_async(self._config.host, self._config.port,
                                       keepalive=self._config.keepalive_s)  # fmt: skip
        except (OSError, ValueError) as exc:
            raise SignalUnavailableError(f"MQTT {self._config.host}: {exc}") from exc
        self._client.loop_start()
        try:
            async with asyncio.timeout(timeout_s):
                await self.connected.wait()
        except TimeoutError:
            # keep going: paho keeps trying, devices keep being controlled meanwhile
            log.error("MQTT broker %s:%s not reachable yet; retrying in the background",
                      self._config.host, self._config.port)  # fmt: skip

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        payload = message if isinstance(message, str) else message.model_dump_json()
        info = self._client.publish(f"{self.prefix}/{topic}", payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    async def stop(self) -> None:
        """Say "offline" (retained) and disconnect cleanly, waiting for the broker's PUBACK."""
        info = self._client.publish(f"{self.prefix}/status", "offline", qos=1, retain=True)
        if self.connected.is_set():
            try:
                await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, 3.0), 4.0)
            except (TimeoutError, RuntimeError, ValueError):
                log.warning("offline status not acknowledged before shutdown")
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    # -- paho's thread -> the event loop -----------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        for topic in self._handlers:
            client.subscribe(topic, qos=1)
        client.publish(f"{self.prefix}/status", "online", qos=1, retain=True)
        log.info("MQTT connected (session present: %s)", flags.session_present)
        self._call(self.connected.set)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if self.connected.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", reason_code)
        self._call(self.connected.clear)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        handler = self._handlers.get(msg.topic)
        if handler is None:
            self._client.ack(msg.mid, msg.qos)
            return
        self._call(self._handle, handler, bytes(msg.payload), msg.mid, msg.qos)

    def _handle(self, handler: Handler, payload: bytes, mid: int, qos: int) -> None:
        try:
            handler(payload)
        finally:
            self._client.ack(mid, qos)

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)
