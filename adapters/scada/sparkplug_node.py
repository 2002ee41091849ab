"""A Sparkplug B 3.0 edge node over its own MQTT connection (paho-mqtt, via MqttSession).

What the specification asks of an edge node, and where it is done here:
  - NDEATH is the connection's will (QoS 1, not retained) and holds only `bdSeq` (Int64); bdSeq
    grows by one with every CONNECT, 0-255 and round again, and is kept across restarts by the
    caller (`bdseq` in, `on_bdseq` out), so a late will of an earlier run is never taken for
    this one's;
  - NCMD (and DCMD of every device) is subscribed, QoS 1, before any birth;
  - with a primary host configured, nothing is born until `spBv1.0/STATE/<host>` says
    online=true, received on the connection in use (after a reconnect too: the retained STATE
    comes with the subscription); an online=false at least as new as the last online one makes
    the node publish NDEATH, disconnect, and start over with the next bdSeq (so it is born again
    when the host is back). A STATE older than the last online one is ignored;
  - NBIRTH (seq 0, QoS 0, not retained) holds every node metric with name, datatype and value,
    `bdSeq` and `Node Control/Rebirth` = false; a DBIRTH per device follows;
  - every later message (DBIRTH, NDATA, DDATA) carries seq + 1, 255 wrapping to 0; data is
    reported by exception: a metric goes out when it moved past its deadband, without its
    datatype (the births declared it: NDATA and DDATA SHOULD NOT carry it);
  - NCMD `Node Control/Rebirth` = true: NBIRTH and DBIRTHs again (same bdSeq); other NCMD and
    DCMD metrics go to `on_command`. A command metric without a datatype (commands SHOULD NOT
    carry one; Tahu's host strips them) takes the type the last birth declared for its name;
  - on a clean stop: NDEATH published, then DISCONNECT with MQTT 5's reason code 0x04
    ("disconnect with will message"), so the broker sends the will as well.

Why a connection of its own: MQTT gives a connection one will, and the service's JSON status
already needs its "offline" will; and the primary-host rule disconnects the edge node, which must
never drop the dispatch intake on the service's connection. Both share the broker, TLS and
credentials.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from adapters.scada.sparkplug_codec import DataType, Metric, PayloadError, decode, encode
from adapters.transport.mqtt_session import Announcement, MqttError, MqttSession, MqttSettings

__all__ = ["EdgeNodeSettings", "MetricSource", "SparkplugEdgeNode"]

log = logging.getLogger("gridflex.sparkplug")

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
# how far ahead of this clock a primary host's STATE may be dated (hosts keep NTP time; a minute
# covers a drifting one, never a forged date years ahead)
STATE_SKEW_MS = 60_000
DROPPED_LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class EdgeNodeSettings:
    mqtt: MqttSettings  # broker, TLS, credentials and client id of this connection
    group_id: str
    edge_node_id: str
    primary_host_id: str | None = None
    report_every_s: float = 1.0
    connect_timeout_s: float = 10.0


class MetricSource:
    """What the node reports: every metric's current value, and how far it may move unreported."""

    def refresh(self) -> None:
        """Called once before each birth and each data round: a source that reads its state in
        one go does it here, and node_metrics / device_metrics answer from that reading."""

    def node_metrics(self) -> list[Metric]:
        raise NotImplementedError

    def device_metrics(self) -> Mapping[str, list[Metric]]:
        raise NotImplementedError

    def deadband(self, name: str) -> float:
        """How far a number may move before it is reported again (0: every change)."""
        del name
        return 0.0


Command = Callable[[str | None, list[Metric]], None]  # device id (None: the node), its metrics


class SparkplugEdgeNode:
    def __init__(
        self,
        settings: EdgeNodeSettings,
        source: MetricSource,
        on_command: Command,
        *,
        bdseq: int = 0,
        on_bdseq: Callable[[int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._source = source
        self._on_command = on_command
        self._on_bdseq = on_bdseq
        self._bdseq = bdseq % 256  # the bdSeq of the CONNECT in force (or about to be sent)
        self._bdseq_lock = threading.Lock()
        self._seq = 0
        self._born = False
        self._host_online = settings.primary_host_id is None
        self._host_stamp_ms: int | None = None  # timestamp of the last online STATE
        self.dropped = 0  # commands that were no Sparkplug payload gridflex takes
        self._dropped_logged_at = -math.inf
        self._reported: dict[tuple[str | None, str], object] = {}
        self._wake = asyncio.Event()
        self._restart = asyncio.Event()
        self._rebirth = False
        self._session: MqttSession | None = None
        self.births = 0  # NBIRTHs sent (tests and metrics)
        # each metric's type as the last births declared it, node (None) and per device
        self._declared: dict[str | None, dict[str, DataType]] = {}

    # -- topics ------------------------------------------------------------------------------
    def topic(self, verb: str, device_id: str | None = None) -> str:
        s = self._settings
        tail = f"/{device_id}" if device_id is not None else ""
        return f"{NAMESPACE}/{s.group_id}/{verb}/{s.edge_node_id}{tail}"

    @property
    def bdseq(self) -> int:
        return self._bdseq

    # -- the connection's life -----------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, be born, report until `stop`; then NDEATH and disconnect."""
        while not stop.is_set():
            session = self._connect()
            try:
                await session.connect(timeout_s=self._settings.connect_timeout_s)
            except MqttError as exc:
                log.warning("Sparkplug: %s; retrying", exc)  # paho keeps trying meanwhile
            try:
                await self._report(session, stop)
            finally:
                if self._born or session.connected:
                    await self._death(session)
                # MQTT 5: "disconnect with will message", so the broker sends the will too
                # (tck-id-payloads-ndeath-will-message-publisher-disconnect-mqtt50)
                await session.close(with_will=True)
                self._born = False
            if not stop.is_set():
                self._next_bdseq()  # a new CONNECT follows: a new bdSeq

    def _connect(self) -> MqttSession:
        settings = replace(self._settings.mqtt, will=self._will(), rearm_will=self._rearm,
                           birth=None, manual_acks=False)  # fmt: skip
        session = MqttSession(settings)
        session.subscribe(self.topic("NCMD"), self._on_ncmd)
        session.subscribe(self.topic("DCMD", "+"), self._on_dcmd)
        host = self._settings.primary_host_id
        if host is not None:
            session.subscribe(f"{NAMESPACE}/STATE/{host}", self._on_state)
        session.on_connected(self._connected)
        self._session = session
        self._restart.clear()
        return session

    def _will(self) -> Announcement:
        payload = encode([Metric("bdSeq", DataType.INT64, self._bdseq)],
                         timestamp_ms=_now_ms(), seq=None)  # fmt: skip
        return Announcement(self.topic("NDEATH"), payload, qos=1, retain=False)

    def _rearm(self) -> Announcement:
        """paho's thread, after a lost connection: the next CONNECT carries the next bdSeq."""
        self._next_bdseq()
        return self._will()

    def _next_bdseq(self) -> None:
        with self._bdseq_lock:
            self._bdseq = (self._bdseq + 1) % 256

    def wake(self) -> None:
        """Report now, not at the next period: a command's outcome is known."""
        self._wake.set()

    def _connected(self) -> None:
        """The loop, after each CONNACK: births are owed again, and the bdSeq now in use is
        kept (a restart continues after it)."""
        self._born = False
        if self._settings.primary_host_id is not None:
            # a new connection waits for the host's online STATE (the retained one arrives
            # with the subscription): a host that went away meanwhile gets no birth until back
            self._host_online = False
            log.info("Sparkplug: connected; not born until %s/STATE/%s says online", NAMESPACE,
                     self._settings.primary_host_id)  # fmt: skip
        if self._on_bdseq is not None:
            self._on_bdseq(self._bdseq)
        self._wake.set()

    async def _report(self, session: MqttSession, stop: asyncio.Event) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        restarter = asyncio.ensure_future(self._restart.wait())
        try:
            while not stop.is_set() and not self._restart.is_set():
                if session.connected and self._host_online:
                    await session.subscriptions_settled()
                    if not self._born or self._rebirth:
                        self._birth(session)
                    else:
                        self._data(session)
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waker, stopper, restarter},
                                   timeout=self._settings.report_every_s,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                waker.cancel()
                self._wake.clear()
        except MqttError as exc:
            log.warning("Sparkplug: %s", exc)
        finally:
            stopper.cancel()
            restarter.cancel()

    async def _death(self, session: MqttSession) -> None:
        try:
            await session.publish(self.topic("NDEATH"), self._will().payload, qos=1)
        except MqttError as exc:
            log.warning("Sparkplug NDEATH not sent (the broker's will covers it): %s", exc)

    # -- births and data -----------------------------------------------------------------------
    def _birth(self, session: MqttSession) -> None:
        now = _now_ms()
        self._source.refresh()
        node = [Metric("bdSeq", DataType.INT64, self._bdseq),
                Metric(REBIRTH, DataType.BOOLEAN, False), *self._source.node_metrics()]  # fmt: skip
        self._seq = 0
        session.publish_nowait(self.topic("NBIRTH"), encode(node, timestamp_ms=now, seq=0), qos=0)
        self._reported = {(None, m.name): m.value for m in node}
        self._declared = {None: {m.name: m.datatype for m in node}}
        for device_id, metrics in self._source.device_metrics().items():
            self._send(session, "DBIRTH", device_id, metrics, now, datatypes=True)
            self._reported.update({(device_id, m.name): m.value for m in metrics})
            self._declared[device_id] = {m.name: m.datatype for m in metrics}
        self._born, self._rebirth = True, False
        self.births += 1
        log.info("Sparkplug: born as %s (bdSeq %d)", self.topic("NBIRTH"), self._bdseq)

    def _data(self, session: MqttSession) -> None:
        now = _now_ms()
        self._source.refresh()
        changed = self._changed(None, self._source.node_metrics())
        if changed:
            self._send(session, "NDATA", None, changed, now)
        for device_id, metrics in self._source.device_metrics().items():
            changed = self._changed(device_id, metrics)
            if changed:
                self._send(session, "DDATA", device_id, changed, now)

    def _changed(self, device_id: str | None, metrics: list[Metric]) -> list[Metric]:
        out = []
        for metric in metrics:
            key = (device_id, metric.name)
            last = self._reported.get(key)
            if not _moved(last, metric.value, self._source.deadband(metric.name)):
                continue
            out.append(metric)
            self._reported[key] = metric.value
        return out

    def _send(self, session: MqttSession, verb: str, device_id: str | None,
              metrics: list[Metric], now_ms: int, *, datatypes: bool = False) -> None:  # fmt: skip
        self._seq = (self._seq + 1) % 256
        payload = encode(metrics, timestamp_ms=now_ms, seq=self._seq, datatypes=datatypes)
        session.publish_nowait(self.topic(verb, device_id), payload, qos=0)

    # -- inbound -------------------------------------------------------------------------------
    def _on_ncmd(self, _topic: str, data: bytes) -> None:
        metrics = self._decoded(data, "NCMD", None)
        if metrics is None:
            return
        rest = []
        for metric in metrics:
            if metric.name == REBIRTH:
                if metric.value is True:
                    log.info("Sparkplug: rebirth requested")
                    self._rebirth = True
                    self._wake.set()
            else:
                rest.append(metric)
        if rest:
            self._command(None, rest)

    def _on_dcmd(self, topic: str, data: bytes) -> None:
        device_id = topic.rsplit("/", 1)[-1]
        metrics = self._decoded(data, "DCMD", device_id)
        if metrics:
            self._command(device_id, metrics)

    def _command(self, device_id: str | None, metrics: list[Metric]) -> None:
        try:
            self._on_command(device_id, metrics)
        except Exception:  # a command must never stop the node: logged, reported by the caller
            log.exception("Sparkplug command on %s failed", device_id or "the node")
        self._wake.set()  # its outcome goes out in the next data message

    def _decoded(self, data: bytes, verb: str, device_id: str | None) -> list[Metric] | None:
        # the types of the last births: paho's thread reads the dict the loop last assigned
        declared = self._declared.get(device_id, {REBIRTH: DataType.BOOLEAN})
        try:
            return decode(data, declared).metrics
        except PayloadError as exc:
            # a flood of bad commands is one line per DROPPED_LOG_EVERY_S, each cut short
            self.dropped += 1
            now = time.monotonic()
            if now - self._dropped_logged_at >= DROPPED_LOG_EVERY_S:
                self._dropped_logged_at = now
                log.warning("Sparkplug %s dropped (%d so far): %s", verb, self.dropped,
                            json.dumps(str(exc)[:200]))  # fmt: skip
            return None

    def _on_state(self, topic: str, data: bytes) -> None:
        del topic
        try:
            state = json.loads(data)
            online, stamp = state["online"], _milliseconds(state["timestamp"])
            if not isinstance(online, bool):
                raise TypeError("online must be a boolean")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("Sparkplug STATE ignored: %s", str(exc)[:200])
            return
        if stamp > _now_ms() + STATE_SKEW_MS:
            # a STATE dated ahead of our clock would outrank every real one after it (a spoofed
            # "online, 2100" then "offline" would silence the node until a restart)
            log.warning("Sparkplug STATE ignored: dated %.0f s ahead of this clock",
                        (stamp - _now_ms()) / 1000)  # fmt: skip
            return
        last = self._host_stamp_ms
        if last is not None and stamp < last:
            return  # older than the online STATE we hold: ignored (spec 5.x)
        if online:
            self._host_stamp_ms = stamp
            if not self._host_online:
                log.info("Sparkplug: primary host %s online", self._settings.primary_host_id)
            self._host_online = True
            self._wake.set()
        elif self._host_online:
            log.info("Sparkplug: primary host %s offline: NDEATH and reconnect",
                     self._settings.primary_host_id)  # fmt: skip
            self._host_online = self._settings.primary_host_id is None
            self._restart.set()


def _moved(last: object, value: object, deadband: float) -> bool:
    if (
        isinstance(last, float)
        and isinstance(value, float)
        and math.isnan(last)
        and math.isnan(value)
    ):
        return False  # NaN and NaN: both "no value"
    if isinstance(last, bool) or isinstance(value, bool) or last is None or value is None:
        return last != value
    if isinstance(last, int | float) and isinstance(value, int | float):
        return abs(float(value) - float(last)) > deadband
    return last != value


def _milliseconds(value: object) -> int:
    """A STATE timestamp: any JSON number of milliseconds (1.7e12 too; a fraction is dropped)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError("timestamp must be a number of milliseconds")
    return int(value)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
