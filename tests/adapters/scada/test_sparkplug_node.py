"""The Sparkplug B edge node against a real Mosquitto and the independent host of
sparkplug_host.py: births, deaths, seq and bdSeq, the primary host's STATE, rebirth, commands;
and the payload codec against the host's own descriptor and the .proto it is generated from."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from adapters.scada import sparkplug_b_pb2
from adapters.scada.sparkplug_codec import DataType, Metric, PayloadError, decode, encode
from adapters.scada.sparkplug_node import EdgeNodeSettings, MetricSource, SparkplugEdgeNode
from adapters.transport.mqtt_session import MqttSettings
from tests.adapters.scada.sparkplug_host import (
    BOOLEAN,
    DOUBLE,
    INT64,
    STRING,
    Host,
    Payload,
    check_seq,
)
from tests.helpers.peers import Broker
from tests.protoc_check import assert_generated_from

GROUP, EDGE = "plant", "edge-1"


class Counting(MetricSource):
    """A node metric that changes at every look, and one device with a steady one."""

    def __init__(self) -> None:
        self.k = 0

    def node_metrics(self) -> list[Metric]:
        self.k += 1
        return [
            Metric("Counter", DataType.INT64, self.k),
            Metric("Steady kW", DataType.DOUBLE, 5.0),
        ]

    def device_metrics(self) -> Mapping[str, list[Metric]]:
        return {"pumps": [Metric("Running", DataType.BOOLEAN, True)]}


class Node:
    """An edge node running in a thread of its own event loop, as the service runs it."""

    def __init__(self, broker: Broker, primary: str | None = None, report_s: float = 0.05,
                 bdseq: int = 0) -> None:  # fmt: skip
        self.commands: list[tuple[str | None, list[Metric]]] = []
        self.kept: list[int] = []
        settings = EdgeNodeSettings(
            mqtt=MqttSettings(host=broker.host, port=broker.port, client_id="edge-under-test",
                              keepalive_s=5, reconnect_min_s=0.5, reconnect_max_s=1),
            group_id=GROUP, edge_node_id=EDGE, primary_host_id=primary, report_every_s=report_s,
        )  # fmt: skip
        self.node = SparkplugEdgeNode(settings, Counting(), self._command, bdseq=bdseq,
                                      on_bdseq=self.kept.append)  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete,
                                       args=(self._main(),), daemon=True)  # fmt: skip
        self.thread.start()

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        await self.node.run(self.stop)

    def _command(self, device: str | None, metrics: list[Metric]) -> None:
        self.commands.append((device, metrics))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=15)
        self.loop.close()


@pytest.fixture
def host(own_mqtt_broker: Broker) -> Iterator[Host]:
    h = Host(own_mqtt_broker.host, own_mqtt_broker.port, GROUP, "scada")
    yield h
    h.close()


def _bdseq(message: Any) -> int:
    return int(message.value("bdSeq"))


def test_births_data_seq_wrap_rebirth_commands_and_a_clean_death(
    own_mqtt_broker: Broker, host: Host
) -> None:
    node = Node(own_mqtt_broker, bdseq=7, report_s=0.01)
    try:
        birth = host.next("NBIRTH")
        assert (birth.qos, birth.retain, birth.payload.seq) == (0, False, 0)
        metrics = birth.metrics()
        assert metrics["bdSeq"].datatype == INT64
        assert _bdseq(birth) == 7
        assert metrics["Node Control/Rebirth"].datatype == BOOLEAN
        assert birth.value("Node Control/Rebirth") is False
        assert metrics["Steady kW"].datatype == DOUBLE
        assert birth.value("Steady kW") == 5.0
        assert host.next("DBIRTH", device="pumps").payload.seq == 1
        # report by exception: the steady metric never again, the counter every time; past 255
        while sum(1 for m in host.seen if m.verb == "NDATA") < 300:
            host.next("NDATA")
        data = [m for m in host.seen if m.verb == "NDATA"]
        assert all(set(m.metrics()) == {"Counter"} for m in data)
        assert any(m.payload.seq == 0 for m in data), "seq never wrapped from 255 to 0"
        check_seq(host.seen)
        assert node.kept == [7]  # the bdSeq in use, for the next run to continue after

        host.command(EDGE, [("Node Control/Rebirth", BOOLEAN, True)])
        again = host.next("NBIRTH")
        assert (again.payload.seq, _bdseq(again)) == (0, 7)  # same connection, same bdSeq
        host.next("DBIRTH", device="pumps")

        host.command(EDGE, [("Set kW", DOUBLE, 12.5)], device="pumps", typed=True)
        host.command(EDGE, [("Mode", STRING, "auto")], typed=True)
        # as Tahu's host writes: no datatype; the DBIRTH declared Running a Boolean
        host.command(EDGE, [("Running", BOOLEAN, False)], device="pumps")
        dropped = node.node.dropped
        host.command(EDGE, [("Mode", STRING, "auto")])  # no datatype, and no birth declares it
        host.drain(1.0)
        assert [(d, [(m.name, m.value) for m in ms]) for d, ms in node.commands] == [
            ("pumps", [("Set kW", 12.5)]), (None, [("Mode", "auto")]),
            ("pumps", [("Running", False)]),
        ]  # fmt: skip
        assert node.commands[-1][1][0].datatype is DataType.BOOLEAN
        assert node.node.dropped == dropped + 1
    finally:
        node.close()
    # NDEATH published before DISCONNECT, and the will too: MQTT 5's DISCONNECT carries
    # "disconnect with will message" (0x04); a plain DISCONNECT would make the broker drop it
    deaths = [host.next("NDEATH"), host.next("NDEATH")]
    for death in deaths:
        assert (death.qos, death.retain) == (1, False)
        assert list(death.metrics()) == ["bdSeq"]
        assert _bdseq(death) == 7
        assert not death.payload.HasField("seq")
    # the will was written at CONNECT, before the birth; the node's own NDEATH after it
    assert deaths[0].payload.timestamp >= birth.payload.timestamp > deaths[1].payload.timestamp
    check_seq(host.seen)


def test_the_primary_host_gates_birth_and_its_death_restarts_the_session(
    own_mqtt_broker: Broker, host: Host
) -> None:
    node = Node(own_mqtt_broker, primary="scada", report_s=0.2)
    try:
        assert not [m for m in host.drain(2.0) if m.verb == "NBIRTH"], "born before the host"
        host.state(online=True, timestamp_ms=1_000)
        first = _bdseq(host.next("NBIRTH"))
        # an offline STATE older than the online one is ignored
        host.state(online=False, timestamp_ms=500)
        assert not [m for m in host.drain(1.5) if m.verb in {"NDEATH", "NBIRTH"}]
        # a current one: NDEATH, a new CONNECT (bdSeq + 1), and no birth while the host is away
        host.state(online=False, timestamp_ms=2_000)
        assert _bdseq(host.next("NDEATH")) == first
        assert not [m for m in host.drain(2.0) if m.verb == "NBIRTH"]
        host.state(online=True, timestamp_ms=3_000)
        assert _bdseq(host.next("NBIRTH")) == (first + 1) % 256
        # the broker restarts: paho reconnects by itself, with the next bdSeq in its will
        own_mqtt_broker.restart(down_s=0.5)
        reborn = host_after_restart(own_mqtt_broker)
        try:
            # a host that (re)joins asks for the births it missed (the spec's rebirth request)
            # (sent until the node is back: a command to a node still reconnecting is lost)
            births: list[Any] = []
            for _ in range(20):
                reborn.command(EDGE, [("Node Control/Rebirth", BOOLEAN, True)])
                births = [m for m in reborn.drain(1.0) if m.verb == "NBIRTH"]
                if births:
                    break
            assert births, "no NBIRTH after the broker restarted"
            assert _bdseq(births[0]) == (first + 2) % 256
            check_seq(reborn.seen)
        finally:
            reborn.close()
    finally:
        node.close()
    check_seq(host.seen)


def test_after_a_reconnect_the_node_waits_for_the_hosts_online_state(
    own_mqtt_broker: Broker, host: Host
) -> None:
    node = Node(own_mqtt_broker, primary="scada", report_s=0.2)
    # a client that takes over the node's connection (a network cut as the broker sees it);
    # driven by hand, so it never reconnects once the node takes its id back
    thief = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-under-test",
                        protocol=mqtt.MQTTv5)  # fmt: skip
    try:
        host.state(online=True, timestamp_ms=1_000)
        first = _bdseq(host.next("NBIRTH"))
        # while the node is away, the primary host goes offline: its retained STATE says so
        thief.connect(own_mqtt_broker.host, own_mqtt_broker.port)
        thief.loop(timeout=0.5)
        host.state(online=False, timestamp_ms=2_000)
        for _ in range(100):  # paho reconnects the node (and keeps its new bdSeq at CONNACK)
            if node.kept[-1] != first:
                break
            host.drain(0.1)
        assert not [m for m in host.drain(1.5) if m.verb == "NBIRTH"], (
            "born again after a reconnect while its primary host is offline"
        )
        assert node.kept[-1] == (first + 1) % 256, "the node did not reconnect"
        host.state(online=True, timestamp_ms=3_000)  # the host is back: the node is born
        assert _bdseq(host.next("NBIRTH")) == (first + 1) % 256
    finally:
        node.close()
        thief.loop(timeout=0.2)  # reads the broker's close of the taken-over connection
        sock = thief.socket()
        if sock is not None:
            sock.close()


def test_a_state_timestamp_is_any_json_number_of_milliseconds(
    own_mqtt_broker: Broker, host: Host
) -> None:
    node = Node(own_mqtt_broker, primary="scada", report_s=0.2)
    try:
        host.state_text('{"online": true, "timestamp": 1.5e3}')  # as some JSON writers put it
        first = _bdseq(host.next("NBIRTH"))
        host.state_text('{"online": false, "timestamp": 1499.9}')  # older: ignored
        assert not [m for m in host.drain(1.5) if m.verb == "NDEATH"]
        host.state_text('{"online": false, "timestamp": 2000.25}')  # newer, with a fraction
        assert _bdseq(host.next("NDEATH")) == first
    finally:
        node.close()


def host_after_restart(broker: Broker) -> Host:
    return Host(broker.host, broker.port, GROUP, "scada")


def test_the_codec_agrees_with_an_independent_reading_of_section_6_4() -> None:
    sent = encode(
        [Metric("a", DataType.INT32, -5), Metric("b", DataType.INT64, -(2**40)),
         Metric("c", DataType.DOUBLE, 1.5, {"engUnit": "kW"}), Metric("d", DataType.BOOLEAN, True),
         Metric("e", DataType.STRING, "x"), Metric("f", DataType.DOUBLE, None),
         Metric("g", DataType.DATETIME, 1_700_000_000_000)],
        timestamp_ms=123, seq=9,
    )  # fmt: skip
    theirs = Payload()
    theirs.ParseFromString(sent)
    assert (theirs.timestamp, theirs.seq) == (123, 9)
    by_name = {m.name: m for m in theirs.metrics}
    assert by_name["a"].int_value == (1 << 32) - 5  # two's complement in uint32
    assert by_name["b"].long_value == (1 << 64) - 2**40
    assert (by_name["c"].datatype, by_name["c"].double_value) == (10, 1.5)
    assert by_name["d"].boolean_value is True
    assert by_name["f"].is_null is True
    assert by_name["g"].long_value == 1_700_000_000_000
    back = {m.name: m.value for m in decode(sent).metrics}
    assert back == {"a": -5, "b": -(2**40), "c": 1.5, "d": True, "e": "x", "f": None,
                    "g": 1_700_000_000_000}  # fmt: skip

    command = Payload(timestamp=1)
    command.metrics.add(name="Set kW", datatype=10, double_value=3.0)
    assert decode(command.SerializeToString()).metrics[0].value == 3.0
    wrong = Payload()
    wrong.metrics.add(name="Set kW", datatype=10, string_value="3")
    with pytest.raises(PayloadError, match="a DOUBLE value sent in string_value"):
        decode(wrong.SerializeToString())
    with pytest.raises(PayloadError):
        decode(b"\xff\xff\xff")


def test_the_generated_code_is_the_proto_of_this_checkout(tmp_path: Path) -> None:
    assert_generated_from("adapters/scada/sparkplug_b.proto", sparkplug_b_pb2, tmp_path)
