"""End to end: `gridflex run` as a process, Mosquitto and simulated Modbus PDUs on loopback.

Dispatch -> devices off -> ack "active" with achieved_kw; bad messages rejected; kill -9 mid-event
then restart: the event resumes (no second "accepted", same ceiling); a dispatch sent while the
service is down arrives after restart (persistent session); a broker restart loses nothing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty

import numpy as np
import pytest

from tests.helpers.mqtt_watch import (
    GRIDFLEX,
    PREFIX,
    RATED_KW,
    SITE,
    Watcher,
    ack,
    now_iso,
)
from tests.helpers.peers import Broker, free_port


@pytest.fixture
def modbus_site() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.sim.modbus_server", "--devices", "48",
         "--first-host", "127.0.5.1", "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().startswith("ready")
    yield port
    process.terminate()
    process.wait(timeout=10)
    process.stdout.close()


def start_service(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*GRIDFLEX, "run", "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_dispatch_kill9_restart_and_broker_restart_lose_nothing(
    tmp_path: Path, own_mqtt_broker: Broker, modbus_site: int
) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(
        SITE.format(modbus_port=modbus_site, mqtt_port=own_mqtt_broker.port,
                    db=tmp_path / "gridflex.sqlite3")
    )  # fmt: skip
    watcher = Watcher(own_mqtt_broker)
    service = start_service(config)
    try:
        watcher.wait_for("status", lambda p: p == "online")
        watcher.wait_for("telemetry", lambda p: json.loads(p)["site_kw"] > RATED_KW - 1)

        # dispatch -> devices off -> verified
        watcher.send("dispatch", {"event_id": "ev-1", "kind": "limit", "target_kw": 80,
                                  "program": "ERS", "issued_at": now_iso()})  # fmt: skip
        watcher.wait_for("dispatch/ack", ack("ev-1", "accepted"))
        active = json.loads(watcher.wait_for("dispatch/ack", ack("ev-1", "active")))
        assert active["achieved_kw"] <= 80 * 1.005
        assert active["requested_kw"] == 80

        # bad messages: each one rejected with a reason, the service carries on
        for bad in ("{not json", json.dumps({"event_id": "x1", "kind": "limit"}),
                    json.dumps({"event_id": "x2", "kind": "limit", "target_kw": 10,
                                "issued_at": "2020-01-01T00:00:00+00:00"})):  # fmt: skip
            watcher.send("dispatch", bad)
        for _ in range(3):
            rejected = json.loads(watcher.wait_for("dispatch/ack", lambda p: '"rejected"' in p))
            assert rejected["reason"]
        watcher.wait_for("telemetry", lambda p: "ev-1" in json.loads(p)["active_events"])

        # kill -9 mid-event: the broker's last will says offline
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        watcher.wait_for("status", lambda p: p == "offline")
        # a dispatch while the service is down waits in its persistent session
        watcher.send("dispatch", {"event_id": "ev-2", "kind": "limit", "target_kw": 120,
                                  "issued_at": now_iso()})  # fmt: skip
        watcher.drain()

        service = start_service(config)
        watcher.wait_for("status", lambda p: p == "online")
        watcher.wait_for("dispatch/ack", ack("ev-2", "accepted"))
        telemetry = json.loads(watcher.wait_for(
            "telemetry", lambda p: {"ev-1", "ev-2"} <= set(json.loads(p)["active_events"])
        ))  # fmt: skip
        assert telemetry["site_kw"] <= 80 * 1.005
        time.sleep(1.5)
        resent = [p for t, p in watcher.drain() if t.endswith("dispatch/ack") and "ev-1" in p]
        assert resent == []  # ev-1 resumed as it was: not accepted again, not re-shed

        # broker restart mid-event: the service reconnects; a release still arrives
        own_mqtt_broker.restart(down_s=0.5)
        watcher.client.reconnect()
        watcher.wait_for("status", lambda p: p == "online", timeout_s=20)
        watcher.send("dispatch", {"event_id": "ev-1", "kind": "release", "issued_at": now_iso()})
        watcher.wait_for("dispatch/ack", ack("ev-1", "completed"))
        watcher.wait_for("telemetry", lambda p: json.loads(p)["active_events"] == ["ev-2"])

        # SIGTERM: finishes its cycle, says offline itself, exits 0
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=20) == 0
        watcher.wait_for("status", lambda p: p == "offline")
    finally:
        if service.poll() is None:
            service.kill()
        watcher.client.loop_stop()
        watcher.client.disconnect()

    events = subprocess.run(
        [*GRIDFLEX, "events", "--database",
         str(tmp_path / "gridflex.sqlite3")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "ev-1" in events
    assert "completed" in events
    assert "ev-2" in events
    audit = subprocess.run(
        [*GRIDFLEX, "audit", "--since", "1h", "--database",
         str(tmp_path / "gridflex.sqlite3")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "dispatch-rejected" in audit
    assert "event-active" in audit


def test_a_write_locked_database_blocks_neither_the_loop_nor_loses_the_dispatch(
    tmp_path: Path, own_mqtt_broker: Broker, modbus_site: int
) -> None:
    """Another process holds the database's write lock for 6 s (a backup, a stuck tool): the
    service keeps publishing telemetry and acks the dispatch at once, and acknowledges the
    message to the broker only once its event is committed. Killed before that, the restart
    gets the message again from the broker and commits it."""
    db = tmp_path / "gridflex.sqlite3"
    config = tmp_path / "site.yaml"
    config.write_text(SITE.format(modbus_port=modbus_site, mqtt_port=own_mqtt_broker.port, db=db))
    watcher = Watcher(own_mqtt_broker)
    service = start_service(config)
    try:
        watcher.wait_for("status", lambda p: p == "online")
        watcher.wait_for("telemetry", lambda p: json.loads(p)["site_kw"] > RATED_KW - 1)
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # the write lock, held
        watcher.drain()
        locked_at = time.monotonic()
        watcher.send("dispatch", {"event_id": "ev-lock", "kind": "limit", "target_kw": 80,
                                  "issued_at": now_iso()})  # fmt: skip
        watcher.wait_for("dispatch/ack", ack("ev-lock", "accepted"), timeout_s=3)
        arrivals = []
        while time.monotonic() - locked_at < 6.0:
            try:
                topic, _ = watcher.messages.get(timeout=0.1)
            except Empty:
                continue
            if topic == f"{PREFIX}/telemetry":
                arrivals.append(time.monotonic())
        gaps = np.diff([locked_at, *arrivals, time.monotonic()])
        assert gaps.max() < 3.5, gaps  # telemetry every 2 s: the loop never waited on SQLite

        service.send_signal(signal.SIGKILL)  # before the lock is released: nothing committed
        service.wait(timeout=10)
        locker.execute("ROLLBACK")
        locker.close()
        assert _event_ids(db) == set()

        watcher.drain()
        service = start_service(config)  # the broker redelivers what was never acknowledged
        watcher.wait_for("dispatch/ack", ack("ev-lock", "accepted"))
        watcher.wait_for("dispatch/ack", ack("ev-lock", "active"))
        deadline = time.monotonic() + 5
        while "ev-lock" not in _event_ids(db) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _event_ids(db) == {"ev-lock"}
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=20) == 0
    finally:
        if service.poll() is None:
            service.kill()
        watcher.client.loop_stop()
        watcher.client.disconnect()


def _event_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as reader:
        return {row[0] for row in reader.execute("SELECT event_id FROM events")}


def test_poison_messages_over_mqtt_are_rejected_and_the_service_still_restarts(
    tmp_path: Path, own_mqtt_broker: Broker, modbus_site: int
) -> None:
    """What an attacker on the broker sent to `gridflex run`: an emergency expiring in year 9999
    (it used to be stored and crash every later start), JSON nested 5,000 deep, a 70 KB message.
    Each is rejected with its reason on the ack topic; after kill -9 the service starts again."""
    db = tmp_path / "gridflex.sqlite3"
    config = tmp_path / "site.yaml"
    config.write_text(SITE.format(modbus_port=modbus_site, mqtt_port=own_mqtt_broker.port, db=db))
    watcher = Watcher(own_mqtt_broker)
    service = start_service(config)
    try:
        watcher.wait_for("status", lambda p: p == "online")
        watcher.send("grid/emergency", {"level": "eea2", "issued_at": now_iso(),
                                        "expires_at": "9999-12-31T23:59:59-05:00"})  # fmt: skip
        grid = json.loads(watcher.wait_for("grid/ack", lambda p: '"rejected"' in p))
        assert "expires_at out of range" in grid["reason"]
        watcher.send("dispatch", '{"event_id": ' + "[" * 5000 + "]" * 5000 + "}")
        deep = json.loads(watcher.wait_for("dispatch/ack", lambda p: '"rejected"' in p))
        assert "nested deeper" in deep["reason"]
        watcher.send("dispatch", '{"event_id": "' + "x" * 70_000 + '"}')
        big = json.loads(watcher.wait_for("dispatch/ack", lambda p: '"rejected"' in p))
        assert "too large" in big["reason"]

        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        watcher.drain()
        service = start_service(config)
        watcher.wait_for("status", lambda p: p == "online")
        telemetry = json.loads(watcher.wait_for("telemetry", lambda p: True))
        assert telemetry["grid_emergency"] == "normal"  # nothing of the poison was kept
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=20) == 0
    finally:
        if service.poll() is None:
            service.kill()
        watcher.client.loop_stop()
        watcher.client.disconnect()
