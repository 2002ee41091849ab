"""A small asyncio-friendly MQTT session over paho-mqtt 2.x (CallbackAPIVersion.VERSION2).

paho runs its network loop in its own thread and reconnects there on its own (backoff from
`reconnect_min_s` to `reconnect_max_s`); this wrapper hands every callback to the asyncio loop with
`call_soon_threadsafe`, re-subscribes after each reconnect, and turns paho's failures into one
error type, `MqttError` (aiomqtt's habit). Publishing is QoS 1 by default and `publish()` returns
when the broker has acknowledged (PUBACK). Handlers run in the event loop and must not block.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import GridflexError

__all__ = ["MessageHandler", "MqttError", "MqttSession", "MqttSettings"]

_log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


class MqttError(GridflexError):
    """The broker cannot be reached, refused us, or did not acknowledge in time."""


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    ack_timeout_s: float = 5.0
    username: str | None = None
    password: str | None = None  # from the environment, never logged


class MqttSession:
    def __init__(self, settings: MqttSettings) -> None:
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=True
        )
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password)
        self._client.reconnect_delay_set(
            min_delay=max(1, round(settings.reconnect_min_s)),
            max_delay=round(settings.reconnect_max_s),
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._connected = asyncio.Event()
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._early_acks: set[int] = set()
        self._ack_lock = threading.Lock()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Start the network loop and wait for the first CONNACK; later drops reconnect alone."""
        self._loop = asyncio.get_running_loop()
        settings = self._settings
        try:
            self._client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {settings.host}:{settings.port}: {exc}") from exc
        self._client.loop_start()
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError as exc:
            raise MqttError(
                f"no CONNACK from {settings.host}:{settings.port} within {timeout_s} s"
            ) from exc

    async def wait_connected(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError as exc:
            raise MqttError(f"not connected after {timeout_s} s") from exc

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Deliver every message matching `topic_filter` (QoS 1) to `handler(topic, payload)`."""
        first = topic_filter not in self._handlers
        self._handlers.setdefault(topic_filter, []).append(handler)
        if first and self.connected:
            self._client.subscribe(topic_filter, qos=1)

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return
        # with no connection paho queues the message and sends it after reconnecting
        future: asyncio.Future[None] = loop.create_future()
        with self._ack_lock:
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                return
            self._acks[info.mid] = future
        try:
            async with asyncio.timeout(self._settings.ack_timeout_s):
                await future
        except TimeoutError as exc:
            raise MqttError(
                f"no PUBACK for {topic} within {self._settings.ack_timeout_s} s"
            ) from exc
        finally:
            with self._ack_lock:
                self._acks.pop(info.mid, None)

    async def close(self) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._connected.clear()

    # --- paho callbacks: network thread -> event loop --------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if reason_code.is_failure:
            _log.warning("MQTT broker refused the connection: %s", reason_code)
            return
        for topic_filter in self._handlers:
            client.subscribe(topic_filter, qos=1)
        self._in_loop(self._connected.set)
        _log.info("MQTT connected to %s:%s", self._settings.host, self._settings.port)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        self._in_loop(self._connected.clear)
        _log.warning("MQTT disconnected (%s); paho reconnects with backoff", reason_code)

    def _on_message(
        self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        for topic_filter, handlers in self._handlers.items():
            if mqtt.topic_matches_sub(topic_filter, message.topic):
                for handler in handlers:
                    self._in_loop(handler, message.topic, bytes(message.payload))

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        _reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        with self._ack_lock:
            future = self._acks.get(mid)
            if future is None:
                self._early_acks.add(mid)
                return
        self._in_loop(_resolve, future)

    def _in_loop(self, callback: Callable[..., None], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
