"""The one asyncio-friendly MQTT session of gridflex, over paho-mqtt 2.x (MQTT 5).

Used by the service (its dispatch interface and every MQTT-controlled device share one session),
by `gridflex node` and by the tests. paho runs its network loop in its own thread and reconnects
there on its own (backoff from `reconnect_min_s` to `reconnect_max_s`); this wrapper hands every
callback to the asyncio loop with `call_soon_threadsafe`, re-subscribes after each reconnect, and
turns paho's failures into one error type, `MqttError` (aiomqtt's habit). `publish()` is QoS 1 by
default and returns when the broker has acknowledged (PUBACK); `publish_nowait()` queues and
returns (paho sends queued QoS 1 messages after a reconnect). Handlers run in the event loop and
must not block.

What a long-running service needs, all off by default:
  - a persistent session (`clean_start=False` with `session_expiry_s`): subscriptions and QoS 1
    messages sent while we were away are kept by the broker and delivered when we are back. MQTT 5
    because 3.1.1 has no session expiry: an abandoned client id would hoard messages forever;
  - manual acknowledgements (`manual_acks`): the PUBACK of an incoming message is sent only after
    its handlers returned and what they returned resolved (the service: its outcome committed),
    so a crash between receipt and handling leaves it with the broker, which redelivers it. A
    handler that raises gets its message acknowledged all the same (logged once per topic):
    an unacknowledged message would hold the broker's in-flight window;
  - a last will and a birth message (e.g. a retained "offline" / "online" status);
  - username/password and TLS (CA, client certificate).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import GridflexError

__all__ = [
    "Announcement",
    "MessageHandler",
    "MqttError",
    "MqttSession",
    "MqttSettings",
    "TlsFiles",
]

_log = logging.getLogger(__name__)

# A handler may return an awaitable: the message is acknowledged once it resolves (its outcome
# committed), and not at all if it raises.
MessageHandler = Callable[[str, bytes], Awaitable[None] | None]


class MqttError(GridflexError):
    """The broker cannot be reached, refused us, or did not acknowledge in time."""


@dataclass(frozen=True, slots=True)
class Announcement:
    """A message the session publishes on its own: a last will, or a birth message on connect."""

    topic: str
    payload: str | bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: str
    cert_file: str | None = None  # a client certificate, for brokers that require one
    key_file: str | None = None


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
    tls: TlsFiles | None = None
    clean_start: bool = True
    session_expiry_s: int = 0  # with clean_start=False: how long the broker keeps our session
    manual_acks: bool = False
    will: Announcement | None = None
    birth: Announcement | None = None  # published on every (re)connect
    # called after every lost connection, before paho reconnects: the will of the next CONNECT
    # (Sparkplug's NDEATH carries a bdSeq that must grow with every CONNECT)
    rearm_will: Callable[[], Announcement] | None = None
    max_queued_messages: int = 0  # outgoing while disconnected; 0: unbounded


def _client(settings: MqttSettings) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=settings.manual_acks,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls is not None:
        client.tls_set(
            ca_certs=settings.tls.ca_file,
            certfile=settings.tls.cert_file,
            keyfile=settings.tls.key_file,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if settings.will is not None:
        will = settings.will
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    client.max_queued_messages_set(settings.max_queued_messages)
    client.reconnect_delay_set(
        min_delay=max(1, round(settings.reconnect_min_s)),
        max_delay=round(settings.reconnect_max_s),
    )
    return client


class MqttSession:
    def __init__(self, settings: MqttSettings) -> None:
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = _client(settings)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        # exact topics are looked up, only wildcard filters are matched one by one: the service
        # subscribes one state topic per MQTT device
        self._exact: dict[str, list[MessageHandler]] = {}
        self._wildcard: dict[str, list[MessageHandler]] = {}
        self._connected = asyncio.Event()
        self._closing = False
        # mid -> the future of an awaited publish, or None for one nobody awaits
        self._acks: dict[int, asyncio.Future[None] | None] = {}
        self._early_acks: set[int] = set()  # PUBACKs that beat publish() to registering
        self._ack_lock = threading.Lock()
        # SUBSCRIBEs the broker has not acknowledged yet: until it has, a message published on
        # another connection to that topic may not reach us
        self._unacked_subscriptions: set[int] = set()
        self._subscribing: dict[int, str] = {}  # SUBSCRIBE mid -> its filter, until its SUBACK
        # filters the broker refused (its ACL): nothing arrives on them; logged once each
        self.refused_subscriptions: set[str] = set()
        self._acking: set[asyncio.Future[None]] = set()  # PUBACKs waiting on a commit
        self.handler_failures = 0  # messages whose handler raised (acknowledged all the same)
        self._failing_topics: set[str] = set()
        # what the broker said at the last connect: it still held our persistent session
        self.session_present: bool | None = None
        self._subscriptions_settled = asyncio.Event()
        self._subscriptions_settled.set()
        self._connect_listeners: list[Callable[[], None]] = []

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def on_connected(self, callback: Callable[[], None]) -> None:
        """Call `callback` in the event loop after every successful (re)connect."""
        self._connect_listeners.append(callback)

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Start the network loop and wait for the first CONNACK; later drops reconnect alone.

        On timeout MqttError is raised but paho keeps trying in the background; `close()` stops it.
        """
        self._loop = asyncio.get_running_loop()
        settings = self._settings
        properties = None
        if settings.session_expiry_s:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.session_expiry_s
        try:
            self._client.connect_async(
                settings.host,
                settings.port,
                keepalive=settings.keepalive_s,
                clean_start=settings.clean_start,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {settings.host}:{settings.port}: {exc}") from exc
        self._client.loop_start()
        await self.wait_connected(timeout_s)

    async def wait_connected(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError as exc:
            settings = self._settings
            raise MqttError(
                f"no CONNACK from {settings.host}:{settings.port} within {timeout_s} s"
            ) from exc

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Deliver every message matching `topic_filter` (QoS 1) to `handler(topic, payload)`."""
        table = self._wildcard if "+" in topic_filter or "#" in topic_filter else self._exact
        first = topic_filter not in table
        table.setdefault(topic_filter, []).append(handler)
        if first and self.connected and self._subscribe(self._client, topic_filter):
            self._subscriptions_settled.clear()

    async def subscriptions_settled(self, timeout_s: float | None = None) -> None:
        """Wait until the broker has acknowledged every subscription made so far (SUBACK).

        Call it before publishing something whose answer arrives on a topic just subscribed:
        a request sent sooner can be answered before the broker routes the topic to us.
        """
        try:
            async with asyncio.timeout(timeout_s or self._settings.ack_timeout_s):
                await self._subscriptions_settled.wait()
        except TimeoutError as exc:
            raise MqttError("the broker did not acknowledge our subscriptions in time") from exc

    def _subscribe(self, client: mqtt.Client, topic_filter: str) -> bool:
        """Send a SUBSCRIBE; True when its SUBACK is now awaited (not connected: False, and
        _on_connect subscribes again)."""
        # under the lock: the network thread cannot handle the SUBACK before the mid is recorded
        with self._ack_lock:
            result, mid = client.subscribe(topic_filter, qos=1)
            if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
                return False
            self._unacked_subscriptions.add(mid)
            self._subscribing[mid] = topic_filter
        return True

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        patient: bool = False,
    ) -> None:
        """Publish and wait for the broker's PUBACK (QoS 1; queued while disconnected). Within
        `ack_timeout_s` (MqttError after it), or with `patient` for as long as it takes: a
        message unconfirmed when the connection drops is sent again by paho on reconnect, so
        waiting never makes a second copy."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        mid = self._send(topic, payload, qos, retain, future if qos else None)
        if mid is None:
            return  # QoS 0, or acknowledged already
        try:
            async with asyncio.timeout(None if patient else self._settings.ack_timeout_s):
                await future
        except TimeoutError as exc:
            raise MqttError(
                f"no PUBACK for {topic} within {self._settings.ack_timeout_s} s"
            ) from exc
        finally:
            with self._ack_lock:
                if self._acks.get(mid) is future:
                    self._acks[mid] = None  # a late PUBACK still finds its entry

    def publish_nowait(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Queue a message and return (QoS 1 ones queued while disconnected go out later)."""
        self._send(topic, payload, qos, retain, None)

    async def close(self, *, with_will: bool = False) -> None:
        """Disconnect and stop the loop. The broker drops the last will, unless `with_will`:
        MQTT 5's reason code 0x04, "disconnect with will message" (Sparkplug asks it of an edge
        node that leaves on purpose, after its own NDEATH)."""
        self._closing = True
        if with_will:
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        else:
            self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._connected.clear()

    def _send(
        self,
        topic: str,
        payload: bytes | str,
        qos: int,
        retain: bool,
        future: asyncio.Future[None] | None,
    ) -> int | None:
        """Publish; the mid whose PUBACK resolves `future`, None when there is none to await."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # with no connection paho queues a QoS 1 message and sends it after reconnecting
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None  # dropped: paho queues only QoS > 0, and calls no on_publish
        if self._claim(info.mid, future) and future is not None:
            return info.mid
        return None

    def _claim(self, mid: int, future: asyncio.Future[None] | None) -> bool:
        """Register for `mid`'s on_publish (PUBACK, or sent for QoS 0); False when it came already.

        Every publish registers, awaited or not, so that an early on_publish is never left
        behind in `_early_acks` to be mistaken for the PUBACK of a later message with the
        same (reused) mid.
        """
        with self._ack_lock:
            if mid in self._early_acks:
                self._early_acks.discard(mid)
                return False
            self._acks[mid] = future
            return True

    # --- paho callbacks: network thread -> event loop --------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if reason_code.is_failure:
            _log.warning("MQTT broker refused the connection: %s", reason_code)
            return
        self.session_present = bool(flags.session_present)
        for topic_filter in (*self._exact, *self._wildcard):
            if self._subscribe(client, topic_filter):
                self._in_loop(self._subscriptions_settled.clear)
        birth = self._settings.birth
        if birth is not None:
            try:
                self._send(birth.topic, birth.payload, birth.qos, birth.retain, None)
            except MqttError as exc:  # never raise in paho's thread: it would stop the loop
                _log.warning("birth message not sent: %s", exc)
        self._in_loop(self._connected.set)
        for listener in self._connect_listeners:
            self._in_loop(listener)
        _log.info(
            "MQTT connected to %s:%s (session present: %s)",
            self._settings.host,
            self._settings.port,
            flags.session_present,
        )

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if self._connected.is_set() and not self._closing:  # once, not every failed reconnect
            _log.warning("MQTT disconnected (%s); paho reconnects with backoff", reason_code)
        rearm = self._settings.rearm_will
        if rearm is not None and not self._closing:
            will = rearm()
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._in_loop(self._connected.clear)

    def _on_message(
        self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        handlers = list(self._exact.get(message.topic, ()))
        for topic_filter, more in self._wildcard.items():
            if mqtt.topic_matches_sub(topic_filter, message.topic):
                handlers.extend(more)
        self._in_loop(self._deliver, handlers, message.topic, bytes(message.payload),
                      message.mid, message.qos)  # fmt: skip

    def _deliver(
        self, handlers: list[MessageHandler], topic: str, payload: bytes, mid: int, qos: int
    ) -> None:
        pending: list[Awaitable[None]] = []
        for handler in handlers:
            try:
                outcome = handler(topic, payload)
            except Exception:  # whatever a message does to a handler, it is acknowledged
                self._handler_failed(topic)
                continue
            if outcome is not None:
                pending.append(outcome)
        if pending:
            task = asyncio.ensure_future(self._ack_when_done(pending, topic, mid, qos))
            self._acking.add(task)
            task.add_done_callback(self._acking.discard)
        else:
            self._ack(mid, qos)

    async def _ack_when_done(
        self, pending: list[Awaitable[None]], topic: str, mid: int, qos: int
    ) -> None:
        for outcome in pending:
            try:
                await outcome
            except Exception:
                self._handler_failed(topic)
        self._ack(mid, qos)

    def _handler_failed(self, topic: str) -> None:
        """Counted; logged once per topic. The message is acknowledged all the same: one left
        unacknowledged holds a place in the broker's in-flight window until the session ends,
        and the same message redelivered would fail the same way."""
        self.handler_failures += 1
        if topic not in self._failing_topics:
            self._failing_topics.add(topic)
            _log.exception("handling a message on %s failed; acknowledged and dropped (logged "
                           "once for this topic)", topic[:200])  # fmt: skip

    def _ack(self, mid: int, qos: int) -> None:
        if self._settings.manual_acks:
            self._client.ack(mid, qos)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: object,
    ) -> None:
        with self._ack_lock:
            self._unacked_subscriptions.discard(mid)
            topic_filter = self._subscribing.pop(mid, "?")
            settled = not self._unacked_subscriptions
        refused = [code for code in reason_codes or [] if code.is_failure]
        if refused and topic_filter not in self.refused_subscriptions:
            self.refused_subscriptions.add(topic_filter)
            _log.error("the MQTT broker refused our subscription to %s (%s): nothing will arrive "
                       "on it; check the broker's ACL (docs/security.md)", topic_filter,
                       refused[0])  # fmt: skip
        if settled:
            self._in_loop(self._subscriptions_settled.set)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        with self._ack_lock:
            if mid not in self._acks:
                self._early_acks.add(mid)
                return
            future = self._acks.pop(mid)
        if future is None:
            return
        if reason_code is not None and reason_code.is_failure:  # MQTT 5: a PUBACK that refuses
            self._in_loop(_refuse, future, f"the broker refused the message: {reason_code}")
        else:
            self._in_loop(_resolve, future)

    def _in_loop(self, callback: Callable[..., None], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _refuse(future: asyncio.Future[None], why: str) -> None:
    if not future.done():
        future.set_exception(MqttError(why))
