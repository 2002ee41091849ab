"""The service as a process over MQTT: its site file, a watcher of its topics, signed messages."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from queue import Empty, Queue

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.peers import Broker

SITE = """
site: {{id: e2e, timezone: America/Chicago}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
  controls: {{priority: critical}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: miners, count: 48, rated_kw: 3.25, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: 127.0.5.1, port: {modbus_port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 0.5}}}}
  - {{id: controls, kind: other, class: controls, rated_kw: 5}}
policy: {{min_dwell_s: 0, stale_posture: run_all}}
prices: {{source: none}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: e2e-service, keepalive_s: 5}}
service: {{cycle_s: 0.5, database: "{db}", metrics_port: null, restore_batch_size: 1000,
          restore_batch_interval_s: 0, verify_timeout_s: 2, shutdown_posture: hold}}
"""
PREFIX = "gridflex/e2e"
RATED_KW = 48 * 3.25 + 5
GRIDFLEX = (sys.executable, "-c", "from agent.cli import main; main()")


class Watcher:
    """A test client on <prefix>/#: every message into a queue."""

    def __init__(self, broker: Broker, prefix: str = PREFIX, *, persistent: bool = False) -> None:
        """`persistent`: a session the broker keeps (and queues for) while the watcher is cut
        off, so nothing published around a broker restart is missed."""
        self.prefix = prefix
        self.messages: Queue[tuple[str, str]] = Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{prefix}",
                                  clean_session=not persistent)  # fmt: skip
        self.client.reconnect_delay_set(1, 2)  # back at once when a test's broker restarts
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload.decode()))
        self.client.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/#", qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, suffix: str, message: dict[str, object] | str | bytes, qos: int = 1) -> None:
        payload = message if isinstance(message, str | bytes) else json.dumps(message)
        self.client.publish(f"{self.prefix}/{suffix}", payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        """Disconnect while the network loop still runs (it sends DISCONNECT and closes the
        socket), then stop it; a socket left by a reconnect in progress is closed here."""
        self.client.disconnect()
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def wait_for(self, topic: str, test, timeout_s: float = 15.0) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                got_topic, payload = self.messages.get(timeout=0.2)
            except Empty:
                continue
            if got_topic == f"{self.prefix}/{topic}" and test(payload):
                return payload
        raise AssertionError(f"nothing on {topic} matching within {timeout_s} s")

    def drain(self) -> list[tuple[str, str]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except Empty:
                return out


def ack(event_id: str, status: str):  # type: ignore[no-untyped-def]
    def test(payload: str) -> bool:
        data = json.loads(payload)
        return bool(data["event_id"] == event_id and data["status"] == status)

    return test


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
