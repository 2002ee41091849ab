"""An independent Sparkplug B host for the tests, written from the Sparkplug 3.0.0 specification
(chapter 4, topics; chapter 5, operational behaviour; section 6.4, the payload), not from
gridflex's code: its own protobuf descriptor built with the protobuf runtime (field numbers from
section 6.4), its own paho client, and the spec's rules as checks.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from queue import Empty, Queue
from typing import Any

import paho.mqtt.client as mqtt
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from paho.mqtt.enums import CallbackAPIVersion

NS = "spBv1.0"
# DataType values of section 6.4.16
INT32, INT64, UINT64, DOUBLE, BOOLEAN, STRING = 3, 4, 8, 10, 11, 12

_F = descriptor_pb2.FieldDescriptorProto


def _payload_class() -> Any:
    """Payload and Payload.Metric, field numbers as section 6.4 lists them."""
    file = descriptor_pb2.FileDescriptorProto(name="host_sparkplug.proto", package="host",
                                              syntax="proto2")  # fmt: skip
    payload = file.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    optional, repeated = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    for name, number, kind in (
        ("name", 1, _F.TYPE_STRING), ("alias", 2, _F.TYPE_UINT64),
        ("timestamp", 3, _F.TYPE_UINT64), ("datatype", 4, _F.TYPE_UINT32),
        ("is_historical", 5, _F.TYPE_BOOL), ("is_transient", 6, _F.TYPE_BOOL),
        ("is_null", 7, _F.TYPE_BOOL), ("int_value", 10, _F.TYPE_UINT32),
        ("long_value", 11, _F.TYPE_UINT64), ("float_value", 12, _F.TYPE_FLOAT),
        ("double_value", 13, _F.TYPE_DOUBLE), ("boolean_value", 14, _F.TYPE_BOOL),
        ("string_value", 15, _F.TYPE_STRING), ("bytes_value", 16, _F.TYPE_BYTES),
    ):  # fmt: skip
        metric.field.add(name=name, number=number, type=kind, label=optional)
    payload.field.add(name="timestamp", number=1, type=_F.TYPE_UINT64, label=optional)
    payload.field.add(name="metrics", number=2, type=_F.TYPE_MESSAGE, label=repeated,
                      type_name=".host.Payload.Metric")  # fmt: skip
    payload.field.add(name="seq", number=3, type=_F.TYPE_UINT64, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("host.Payload"))


Payload = _payload_class()


@dataclass
class Received:
    topic: str
    qos: int
    retain: bool
    payload: Any  # a decoded Payload (None for STATE)
    at: float

    @property
    def verb(self) -> str:
        return self.topic.split("/")[2]

    def metrics(self) -> dict[str, Any]:
        return {m.name: m for m in self.payload.metrics}

    def value(self, name: str) -> Any:
        """A metric's value, read as a host reads data messages that carry no datatype: from
        the field that holds it (the births' datatypes are checked apart)."""
        m = self.metrics()[name]
        if m.is_null:
            return None
        if m.HasField("int_value"):
            return m.int_value - (1 << 32) if m.int_value >= 1 << 31 else m.int_value
        for held in ("boolean_value", "string_value", "double_value", "float_value",
                     "long_value"):  # fmt: skip
            if m.HasField(held):
                return getattr(m, held)
        return None


class Host:
    """Subscribes to a group's whole namespace, QoS 1 (so the QoS a message arrives with is
    the QoS it was published with)."""

    def __init__(self, host: str, port: int, group: str, host_id: str,
                 credentials: tuple[str, str] | None = None) -> None:  # fmt: skip
        self.group, self.host_id = group, host_id
        self.messages: Queue[Received] = Queue()
        self.seen: list[Received] = []
        client_id = f"host-{host_id}-{uuid.uuid4().hex[:6]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        if credentials is not None:
            self.client.username_pw_set(*credentials)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe(f"{NS}/{group}/#", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        payload = Payload()
        payload.ParseFromString(message.payload)
        got = Received(message.topic, message.qos, bool(message.retain), payload, time.monotonic())
        self.messages.put(got)

    def next(self, verb: str, timeout_s: float = 15.0, device: str | None = None,
             test: Any = None) -> Received:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                got = self.messages.get(timeout=0.1)
            except Empty:
                continue
            self.seen.append(got)
            if got.verb != verb or (device is not None and got.topic.split("/")[-1] != device):
                continue
            if test is None or test(got):
                return got
        raise AssertionError(f"no {verb} {device or ''} within {timeout_s} s")

    def drain(self, seconds: float) -> list[Received]:
        deadline = time.monotonic() + seconds
        out = []
        while time.monotonic() < deadline:
            try:
                out.append(self.messages.get(timeout=0.05))
            except Empty:
                continue
        self.seen.extend(out)
        return out

    def state(self, online: bool, timestamp_ms: int | None = None) -> None:
        body = {"online": online, "timestamp": timestamp_ms or time.time_ns() // 1_000_000}
        self.client.publish(f"{NS}/STATE/{self.host_id}", json.dumps(body), qos=1,
                            retain=True).wait_for_publish(5)  # fmt: skip

    def state_text(self, text: str) -> None:
        """A STATE payload exactly as written (hosts write numbers as their JSON library does)."""
        self.client.publish(f"{NS}/STATE/{self.host_id}", text, qos=1,
                            retain=True).wait_for_publish(5)  # fmt: skip

    def command(self, edge: str, metrics: list[tuple[str, int, Any]],
                device: str | None = None, *, typed: bool = False) -> None:  # fmt: skip
        """Write metrics as Tahu's HostApplication.publishCommand does: each value in the field
        of `kind`, and no datatype (commands SHOULD NOT carry one) unless `typed`."""
        payload = Payload(timestamp=time.time_ns() // 1_000_000)
        for name, kind, value in metrics:
            m = payload.metrics.add(name=name)
            if typed:
                m.datatype = kind
            field = {BOOLEAN: "boolean_value", STRING: "string_value", DOUBLE: "double_value",
                     INT32: "int_value", INT64: "long_value"}[kind]  # fmt: skip
            setattr(m, field, value)
        verb = "NCMD" if device is None else "DCMD"
        topic = f"{NS}/{self.group}/{verb}/{edge}" + ("" if device is None else f"/{device}")
        self.client.publish(topic, payload.SerializeToString(), qos=0).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()  # while the network loop runs: it sends DISCONNECT, closes
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:  # a reconnect that was under way
            sock.close()


def check_seq(messages: list[Received]) -> None:
    """Every message of one edge node after its NBIRTH carries the previous seq + 1, 255
    wrapping to 0; NBIRTH carries 0; NDEATH carries none (chapter 4)."""
    last: int | None = None
    for m in messages:
        if m.verb == "NDEATH":
            assert not m.payload.HasField("seq"), "NDEATH must not carry a seq"
            last = None
            continue
        if m.verb == "NBIRTH":
            assert m.payload.seq == 0
            last = 0
            continue
        if m.verb in {"DBIRTH", "NDATA", "DDATA", "DDEATH"} and last is not None:
            assert m.payload.seq == (last + 1) % 256, (m.topic, m.payload.seq, last)
            last = m.payload.seq
