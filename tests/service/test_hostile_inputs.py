"""No input can stall or blind the site: each attack through the real entry point it used, with
the broker ACL of docs/security.md where one applies (tests/helpers/acl_broker.py reads it from
the document). Cases, as numbered in the issue that found them:
  1  a node account floods its own state topic with 5,000-deep JSON: signed dispatch still acked,
     and after a restart too;
  2  an inference server's /metrics says NaN, +Inf, -1e12, 1e12, drips, or is 300 MB: cycles run,
     a limit is enforced, memory stays bounded, SIGTERM still ends the service;
  3  Sparkplug commands of 3,200 metrics ten a second, 60 KB and newline names: bounded audit and
     logs, a dispatch acked in time;
  4  a thousand idle connections to the metrics port: the service keeps its devices;
  5  junk at 40/s from SCADA's account: the QSE's signed dispatch is taken;
  6  ownership kept across a restart; SCADA cannot lift the QSE's EEA3;
  7  a signature names its site and topic: replays across sites and nodes fail;
  8  replay memory follows issued_at: a signed "off" dated ahead is not applied twice;
  9  a STATE dated 2100 does not silence the Sparkplug node;
  10 a damaged database: quarantined, the service starts;
  11 OpenADR 3: every target type checked, events bounded;
  12 hygiene: refused subscriptions logged, secrets in the site file warned about.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from toadr3.models import Event

from adapters.devices.mqtt_device import MqttDriver
from adapters.devices.node_protocol import node_topics, stamp
from adapters.scada.sparkplug_node import EdgeNodeSettings, SparkplugEdgeNode
from adapters.signals.openadr3_events import MAX_INTERVALS, not_for_ven, plan_event3
from adapters.signals.openadr_events import UnsupportedEventError
from adapters.transport.mqtt_session import MqttError, MqttSession, MqttSettings
from agent.app.assembly import assemble
from agent.app.commands.check_config import check_config
from agent.config import parse_config
from agent.config.drivers import GpuNodeDriverConfig
from agent.config.openadr3 import OpenAdr3Config
from agent.domain.signing import sign
from agent.service.messages import OverrideAck
from tests.adapters.scada.sparkplug_host import DOUBLE, STRING, Host
from tests.adapters.signals.metrics_http import PAGES, drip, huge, metrics_server
from tests.helpers.acl_broker import password, start_acl_broker
from tests.helpers.mqtt_watch import GRIDFLEX, Watcher, ack, now_iso
from tests.helpers.peers import Broker, free_port
from tests.helpers.service_process import modbus_site, start_service
from tests.service.site import FakeClock, site_config

KEY_QSE = "the-qse-key-of-at-least-thirty-two-bytes"
KEY_SCADA = "the-scada-key-of-at-least-thirty-two-bytes"
FIRST_HOST = "127.0.14.1"
GROUP, HOST_ID = "gridflex", "scada-host"

SITE = """
site: {{id: {site}, timezone: America/Chicago}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
  gpu: {{priority: protected}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: miners, count: 48, rated_kw: 3.25, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: {first_host}, port: {modbus_port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 0.5}}}}
{extra_devices}
policy: {{min_dwell_s: 0, stale_posture: run_all}}
prices: {{source: none}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: {site}, username: gridflex,
       password: "{password}", hmac_keys: {{qse: {key_qse}, scada: {key_scada}}}}}
service: {{cycle_s: 0.5, database: "{db}", metrics_port: {metrics_port},
          verify_timeout_s: 2, shutdown_posture: hold}}
{more}
"""


def _site_file(tmp_path: Path, broker: Broker, modbus_port: int, site: str, *,
               extra_devices: str = "", metrics_port: int | None = None, more: str = "",
               acl: bool = True, db: Path | None = None) -> Path:  # fmt: skip
    """The site file; `acl`: the service logs in as `gridflex` and the site signs with one key per
    sender (qse, scada); without, an open test broker and nothing signed."""
    text = SITE
    if not acl:
        text = (text.replace("hmac_keys: {{qse: {key_qse}, scada: {key_scada}}}", "")
                .replace('username: gridflex,\n       password: "{password}", ', ""))  # fmt: skip
    path = tmp_path / "site.yaml"
    path.write_text(text.format(
        site=site, first_host=FIRST_HOST, modbus_port=modbus_port, mqtt_port=broker.port,
        password=password("gridflex"), key_qse=KEY_QSE, key_scada=KEY_SCADA,
        db=db or tmp_path / "gridflex.sqlite3", metrics_port=metrics_port or "null",
        extra_devices=extra_devices, more=more,
    ))  # fmt: skip
    return path


def _client(broker: Broker, user: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}",
                         protocol=mqtt.MQTTv5)  # fmt: skip
    client.username_pw_set(user, password(user))
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def _watcher(broker: Broker, site: str) -> Watcher:
    """SCADA's account reads the whole site (the ACL): the test's eyes."""
    watcher = Watcher.__new__(Watcher)
    watcher.prefix = f"gridflex/{site}"
    from queue import Queue

    watcher.messages = Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"eyes-{uuid.uuid4().hex[:6]}")
    client.username_pw_set("scada", password("scada"))
    client.on_message = lambda _c, _u, m: watcher.messages.put((m.topic, m.payload.decode()))
    client.on_connect = lambda c, *_a: c.subscribe(f"gridflex/{site}/#", qos=1)
    client.reconnect_delay_set(1, 2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    watcher.client = client
    return watcher


def _qse_dispatch(client: mqtt.Client, site: str, event_id: str, target_kw: float,
                  topic_site: str | None = None) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"event_id": event_id, "kind": "limit", "target_kw": target_kw,
                            "issued_at": now_iso(), "key_id": "qse",
                            "message_id": uuid.uuid4().hex}  # fmt: skip
    body["signature"] = sign(body, KEY_QSE.encode(), f"{site}:dispatch")
    client.publish(f"gridflex/{topic_site or site}/dispatch", json.dumps(body),
                   qos=1).wait_for_publish(5)  # fmt: skip
    return body


def _stop(service: subprocess.Popen[bytes]) -> None:
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=10)


# -- 1: a node floods its own state topic ------------------------------------------------------
def test_1_a_node_account_flooding_its_state_topic_never_makes_the_site_deaf(
    tmp_path: Path,
) -> None:
    site, node = f"h1-{uuid.uuid4().hex[:4]}", "node-gpu-1"
    broker = start_acl_broker(tmp_path, site, group=GROUP, host_id=HOST_ID, nodes=(node,))
    gpu = (f"  - {{id: {node}, kind: gpu, class: gpu, rated_kw: 10, min_kw: 2, "
           f"control: power_limit, driver: {{type: gpu_node, node_id: {node}, "
           "echo_timeout_s: 1}}")  # fmt: skip
    try:
        with modbus_site(48, FIRST_HOST) as port:
            config = _site_file(tmp_path, broker, port, site, extra_devices=gpu)
            eyes, qse, gpu_node = (_watcher(broker, site), _client(broker, "qse"),
                                   _client(broker, node))  # fmt: skip
            deep = "[" * 5000 + "]" * 5000
            _, state_topic = node_topics(f"gridflex/{site}", node)
            for attempt in ("first run", "after a restart"):
                service = start_service(config, tmp_path / f"run-{attempt[:5]}.log")
                try:
                    eyes.wait_for("status", lambda p: p == "online")
                    for _ in range(20):  # the node's account may publish here: the ACL allows
                        gpu_node.publish(state_topic, deep, qos=1).wait_for_publish(5)
                    event_id = f"h1-{attempt[:5]}"
                    _qse_dispatch(qse, site, event_id, 120.0)
                    eyes.wait_for("dispatch/ack", ack(event_id, "accepted"), timeout_s=10)
                finally:
                    _stop(service)
                assert service.returncode == 0, attempt
            for client in (qse, gpu_node):
                client.loop_stop()
            eyes.close()
    finally:
        broker.stop()


# -- 2: hostile /metrics ------------------------------------------------------------------------
GPU_POOL = """  - {id: gpu, kind: gpu, class: gpu, count: 4, rated_kw: 1.2, min_kw: 0.4,
     control: power_limit, driver: {type: simulated}}"""
POOL = """gpu_demand:
  pools:
    chat: {{server: vllm, endpoints: ["{url}"], scrape_every_s: 1, stale_after_s: 5,
           timeout_s: 2, engine: {{load_class: gpu, requests_per_server: 40,
           queue_time_target_s: 2}}}}"""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(240)
def test_2_a_hostile_metrics_page_neither_stops_cycles_nor_blocks_sigterm(
    tmp_path: Path, own_mqtt_broker: Broker
) -> None:
    site = f"h2-{uuid.uuid4().hex[:4]}"
    good = (PAGES / "vllm.txt").read_text()
    with metrics_server() as pages, modbus_site(48, FIRST_HOST) as port:
        url = pages.url("/m")
        config = _site_file(tmp_path, own_mqtt_broker, port, site, extra_devices=GPU_POOL,
                            more=POOL.format(url=url), acl=False)  # fmt: skip
        watcher = Watcher(own_mqtt_broker, f"gridflex/{site}")
        pages.pages["/m"] = good
        service = start_service(config, tmp_path / "run.log")
        try:
            watcher.wait_for("status", lambda p: p == "online")
            for k, number in enumerate(("NaN", "+Inf", "-1e12", "1e12")):
                pages.pages["/m"] = good.replace("vllm:num_requests_waiting{", "x{") + (
                    f"vllm:num_requests_waiting {number}\n")  # fmt: skip
                event_id = f"h2-{k}"
                watcher.send("dispatch", {"event_id": event_id, "kind": "limit", "target_kw": 40,
                                          "issued_at": now_iso()})  # fmt: skip
                active = json.loads(watcher.wait_for("dispatch/ack", ack(event_id, "active"), 15))
                assert active["achieved_kw"] <= 40 * 1.005, number
                watcher.send("dispatch", {"event_id": event_id, "kind": "release",
                                          "issued_at": now_iso()})  # fmt: skip
                watcher.wait_for("dispatch/ack", ack(event_id, "completed"), 15)
            pages.pages["/m"] = huge
            time.sleep(4.0)  # several scrapes of a 300 MB page
            assert _rss_mb(service.pid) < 400, _rss_mb(service.pid)
            pages.pages["/m"] = drip
            time.sleep(2.0)  # a scrape hangs on the dripping page
            sent = time.monotonic()
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=20) == 0
            assert time.monotonic() - sent < 10
        finally:
            _stop(service)
            watcher.close()
    log = (tmp_path / "run.log").read_text()
    assert "cycle failed" not in log


# -- 3: a Sparkplug flood -----------------------------------------------------------------------
SPARKPLUG = (
    f"sparkplug: {{group_id: {GROUP}, primary_host_id: {HOST_ID}, "
    "report_every_s: 0.5, accept_commands: true}"
)


@pytest.mark.timeout(240)
def test_3_a_flood_of_sparkplug_commands_is_bounded_and_dispatch_still_acked(
    tmp_path: Path,
) -> None:
    site = f"h3-{uuid.uuid4().hex[:4]}"
    broker = start_acl_broker(tmp_path, site, group=GROUP, host_id=HOST_ID)
    try:
        with modbus_site(48, FIRST_HOST) as port:
            config = _site_file(tmp_path, broker, port, site, more=SPARKPLUG)
            eyes, qse = _watcher(broker, site), _client(broker, "qse")
            host = Host(broker.host, broker.port, GROUP, HOST_ID, ("scada", password("scada")))
            service = start_service(config, tmp_path / "run.log")
            try:
                eyes.wait_for("status", lambda p: p == "online")
                host.state(online=True)
                host.next("NBIRTH", timeout_s=15)
                many = [(f"Bogus/{k}", DOUBLE, 1.0) for k in range(3200)]
                ended = time.monotonic() + 3.0
                while time.monotonic() < ended:
                    # typed: a metric no birth declares is then refused one by one, audited
                    host.command(site, many, typed=True)
                    host.command(site, [("x" * 60_000, DOUBLE, 1.0)], typed=True)
                    host.command(site, [("Forged\nERROR gridflex: all devices off", STRING, "x")],
                                 typed=True)  # fmt: skip
                    time.sleep(0.1)
                sent = time.monotonic()
                _qse_dispatch(qse, site, "h3-1", 100.0)
                eyes.wait_for("dispatch/ack", ack("h3-1", "accepted"), timeout_s=10)
                assert time.monotonic() - sent < 5
            finally:
                _stop(service)
                host.close()
            qse.loop_stop()
            eyes.close()
    finally:
        broker.stop()
    with sqlite3.connect(tmp_path / "gridflex.sqlite3") as db:
        rows = db.execute("SELECT subject FROM audit WHERE kind = 'sparkplug-rejected'").fetchall()
    assert 0 < len(rows) <= 40  # a burst of 20 and 1 a second, not 100,000
    assert max(len(subject) for (subject,) in rows) <= 100
    assert not any("\n" in subject for (subject,) in rows)
    log = (tmp_path / "run.log").read_text()
    assert "\nERROR gridflex: all devices off" not in log  # escaped, never a line of its own
    assert len(log) < 200_000


# -- 4: idle connections to the metrics port ------------------------------------------------------
def test_4_a_thousand_idle_connections_to_the_metrics_port_cost_the_site_nothing(
    tmp_path: Path, own_mqtt_broker: Broker
) -> None:
    site = f"h4-{uuid.uuid4().hex[:4]}"
    metrics_port = free_port()
    with modbus_site(48, FIRST_HOST) as port:
        config = _site_file(
            tmp_path, own_mqtt_broker, port, site, metrics_port=metrics_port, acl=False
        )
        watcher = Watcher(own_mqtt_broker, f"gridflex/{site}")
        service = start_service(config, tmp_path / "run.log")
        idle: list[socket.socket] = []
        try:
            watcher.wait_for("status", lambda p: p == "online")
            for _ in range(1015):
                try:  # a connection the kernel's backlog turns away is the attacker's problem
                    idle.append(socket.create_connection(("127.0.0.1", metrics_port), timeout=2))
                except OSError:
                    continue
            assert len(idle) > 500  # most were accepted (then closed or held idle) at once
            fds = len(os.listdir(f"/proc/{service.pid}/fd"))
            assert fds < 300, fds  # at most the cap's worth of connections held
            watcher.send("dispatch", {"event_id": "h4-1", "kind": "limit", "target_kw": 60,
                                      "issued_at": now_iso()})  # fmt: skip
            watcher.wait_for("dispatch/ack", ack("h4-1", "active"), timeout_s=15)
            telemetry = json.loads(watcher.wait_for("telemetry", lambda p: True))
            assert telemetry["devices_available"] == telemetry["devices_total"]
        finally:
            for open_socket in idle:
                open_socket.close()
            _stop(service)
            watcher.close()


# -- 5: junk from one sender, a dispatch from another ---------------------------------------------
def test_5_junk_from_scadas_account_never_costs_the_qses_dispatch(tmp_path: Path) -> None:
    site = f"h5-{uuid.uuid4().hex[:4]}"
    broker = start_acl_broker(tmp_path, site, group=GROUP, host_id=HOST_ID)
    try:
        with modbus_site(48, FIRST_HOST) as port:
            config = _site_file(tmp_path, broker, port, site)
            eyes, qse, scada = (_watcher(broker, site), _client(broker, "qse"),
                                _client(broker, "scada"))  # fmt: skip
            service = start_service(config, tmp_path / "run.log")
            try:
                eyes.wait_for("status", lambda p: p == "online")
                junk = json.dumps({"event_id": "junk", "kind": "limit", "target_kw": 1,
                                   "issued_at": now_iso(), "key_id": "scada",
                                   "message_id": "j", "signature": "0" * 64})  # fmt: skip
                for _ in range(400):  # 40/s for 10 s, at once
                    scada.publish(f"gridflex/{site}/dispatch", junk, qos=1)
                _qse_dispatch(qse, site, "h5-1", 100.0)
                eyes.wait_for("dispatch/ack", ack("h5-1", "accepted"), timeout_s=15)
                eyes.wait_for("dispatch/ack", ack("h5-1", "active"), timeout_s=15)
            finally:
                _stop(service)
            for client in (qse, scada):
                client.loop_stop()
            eyes.close()
    finally:
        broker.stop()


# -- 6: ownership across a restart; only a grid source clears a grid condition -------------------
@pytest.mark.timeout(240)
def test_6_scada_releases_its_limit_after_a_restart_and_cannot_lift_the_qses_eea3(
    tmp_path: Path,
) -> None:
    site = f"h6-{uuid.uuid4().hex[:4]}"
    broker = start_acl_broker(tmp_path, site, group=GROUP, host_id=HOST_ID)
    try:
        with modbus_site(48, FIRST_HOST) as port:
            config = _site_file(tmp_path, broker, port, site, more=SPARKPLUG)
            eyes, qse = _watcher(broker, site), _client(broker, "qse")
            host = Host(broker.host, broker.port, GROUP, HOST_ID, ("scada", password("scada")))
            host.state(online=True)  # retained: each start of the node sees it
            service = start_service(config, tmp_path / "run-1.log")
            try:
                host.next("NBIRTH", timeout_s=20)  # born under the documented ACL
                host.command(site, [("Dispatch/Limit kW", DOUBLE, 60.0)])
                limit = json.loads(eyes.wait_for("dispatch/ack",
                                                 lambda p: '"active"' in p, 15))  # fmt: skip
            finally:
                _stop(service)
            service = start_service(config, tmp_path / "run-2.log")
            try:
                host.next("NBIRTH", timeout_s=20)
                host.command(site, [("Dispatch/Release", 11, True)])
                eyes.wait_for("dispatch/ack", ack(limit["event_id"], "completed"), 15)
                body: dict[str, Any] = {"level": "eea3", "issued_at": now_iso(), "key_id": "qse",
                                        "message_id": uuid.uuid4().hex}  # fmt: skip
                body["signature"] = sign(body, KEY_QSE.encode(), f"{site}:grid/emergency")
                qse.publish(f"gridflex/{site}/grid/emergency", json.dumps(body),
                            qos=1).wait_for_publish(5)  # fmt: skip
                eyes.wait_for("grid/ack", lambda p: '"accepted"' in p, 10)
                host.command(site, [("Grid/Emergency Level", STRING, "normal")])
                refused = json.loads(eyes.wait_for("grid/ack", lambda p: '"rejected"' in p, 10))
                assert "not yours" in refused["reason"]
                telemetry = json.loads(eyes.wait_for("telemetry", lambda p: True))
                assert telemetry["grid_emergency"] == "eea3"
            finally:
                _stop(service)
                host.close()
            qse.loop_stop()
            eyes.close()
    finally:
        broker.stop()


# -- 7: what a signature covers -------------------------------------------------------------------
def test_7_a_signed_message_replayed_to_another_site_or_node_is_refused(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    clock = FakeClock()
    key = "a-key-both-sites-share-of-thirty-two-bytes"
    sites = {}
    for tag in ("a", "b"):
        config = site_config(tmp_path / f"{tag}.sqlite3", 1502, tag=tag,
                             mqtt=f"mqtt: {{hmac_secret: {key}}}")  # fmt: skip
        sites[tag] = assemble(config, clock=clock, drivers={})
    body = {"event_id": "h7", "kind": "limit", "target_kw": 10.0,
            "issued_at": clock.now.isoformat(), "message_id": "m-h7"}  # fmt: skip
    for_a = json.dumps({**body, "signature": sign(body, key.encode(), "ta:dispatch")}).encode()
    assert sites["b"].intake.dispatch(for_a) == "rejected"  # site A's limit, replayed to B
    assert sites["a"].intake.dispatch(for_a) == "accepted"
    for service in sites.values():
        service.store.close()

    async def nodes() -> None:
        node_key = b"the-nodes-key-of-at-least-thirty-two-bytes"
        prefix = f"test/{uuid.uuid4().hex[:6]}"
        agent = MqttSession(MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port,
                                         client_id=f"agent-{uuid.uuid4().hex[:6]}"))  # fmt: skip
        peer = MqttSession(MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port,
                                        client_id=f"peer-{uuid.uuid4().hex[:6]}"))  # fmt: skip
        config = GpuNodeDriverConfig(
            type="gpu_node", node_id="gpu-2", echo_timeout_s=1.0, hmac_key=node_key.decode()
        )  # type: ignore[arg-type]
        driver = MqttDriver("gpu-2", config, agent, prefix=prefix)
        await agent.connect()
        await peer.connect()
        await agent.subscriptions_settled()
        state = {"on": True, "kw": 9.9, "power_kw": 1.55}
        gpu1_state = stamp(state, node_key, datetime.now(UTC), node_topics(prefix, "gpu-1")[1])
        await peer.publish(node_topics(prefix, "gpu-2")[1], gpu1_state)  # gpu-1's, on gpu-2's
        await asyncio.sleep(0.5)
        assert driver.refused_states == 1
        assert (await driver.read()).power_kw is None  # nothing believed
        await agent.close()
        await peer.close()

    asyncio.run(nodes())


# -- 8: replay memory and issued_at ---------------------------------------------------------------
def test_8_a_signed_off_dated_ahead_is_not_applied_again_after_its_clear(tmp_path: Path) -> None:
    clock = FakeClock()
    key = "an-hmac-key-of-at-least-thirty-two-bytes!"
    mqtt = f"mqtt: {{hmac_secret: {key}, replay_window_s: 60, clock_skew_s: 5}}"
    service = assemble(site_config(tmp_path / "db.sqlite3", 1502, mqtt=mqtt), clock=clock,
                       drivers={})  # fmt: skip

    def signed(body: dict[str, Any]) -> bytes:
        return json.dumps({**body, "signature": sign(body, key.encode(), "ta:override")}).encode()

    ahead = clock.now + timedelta(seconds=4.5)
    base = {"override_id": "o-8", "class": "miners", "issued_by": "eve",
            "issued_at": ahead.isoformat()}  # fmt: skip
    off = signed({**base, "action": "off", "message_id": "m-off",
                  "expires_at": (clock.now + timedelta(hours=1)).isoformat()})  # fmt: skip
    clear = signed({**base, "action": "clear", "message_id": "m-clear"})
    assert service.intake.override(off) == "accepted"
    assert service.intake.override(clear) == "cleared"
    clock.leap(62)  # past its receipt + the window, within its issued_at + the window
    assert service.intake.override(off) == "duplicate"
    acks = [m for t, m in service.outbox.sent if isinstance(m, OverrideAck)]  # type: ignore[attr-defined]
    assert [a.status for a in acks] == ["accepted", "cleared"]
    service.store.close()


# -- 9: a STATE from the future --------------------------------------------------------------------
def test_9_a_spoofed_state_dated_2100_does_not_silence_the_edge_node(mqtt_broker: Broker) -> None:
    group, edge, host_id = f"g{uuid.uuid4().hex[:6]}", "edge-9", f"h{uuid.uuid4().hex[:6]}"

    class Source:
        def node_metrics(self) -> list[Any]:
            return []

        def device_metrics(self) -> dict[str, list[Any]]:
            return {}

        def refresh(self) -> None:
            pass

        def deadband(self, _name: str) -> float:
            return 0.0

    async def main() -> None:
        mqtt_settings = MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port,
                                     client_id=f"edge-{uuid.uuid4().hex[:6]}")  # fmt: skip
        settings = EdgeNodeSettings(mqtt=mqtt_settings, group_id=group, edge_node_id=edge,
                                    primary_host_id=host_id, report_every_s=0.2)  # fmt: skip
        node = SparkplugEdgeNode(settings, Source(), lambda _d, _m: None)  # type: ignore[arg-type]
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop))
        host = Host(mqtt_broker.host, mqtt_broker.port, group, host_id)
        try:
            await asyncio.to_thread(host.state, True)
            await asyncio.to_thread(host.next, "NBIRTH", 10.0)
            forged = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
            await asyncio.to_thread(host.state, True, forged)
            await asyncio.to_thread(host.state, False, forged)  # "offline", from 2100
            deaths = [m for m in await asyncio.to_thread(host.drain, 1.5) if m.verb == "NDEATH"]
            assert deaths == []  # ignored: the node stays born
            await asyncio.to_thread(host.state, True)  # the real host, now
            assert node._host_online
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            host.close()

    asyncio.run(main())


# -- 10: a damaged database -----------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_10_a_damaged_database_is_set_aside_and_the_service_starts(
    tmp_path: Path, own_mqtt_broker: Broker, damage: str
) -> None:
    site = f"h10-{uuid.uuid4().hex[:4]}"
    db = tmp_path / "gridflex.sqlite3"
    with modbus_site(48, FIRST_HOST) as port:
        config = _site_file(tmp_path, own_mqtt_broker, port, site, acl=False, db=db)
        if damage == "garbage":
            db.write_bytes(os.urandom(65_536))
        else:  # a real database, cut in the middle of its pages
            store_site = parse_config(config.read_text(), env={})
            first = assemble(store_site, clock=FakeClock(), drivers={})
            for k in range(2000):
                first.store.audit(datetime.now(UTC), "filler", f"row-{k}", {"pad": "x" * 200})
            first.store.close()
            data = db.read_bytes()
            db.write_bytes(data[: len(data) // 3])
            for extra in ("-wal", "-shm"):
                Path(f"{db}{extra}").unlink(missing_ok=True)
        watcher = Watcher(own_mqtt_broker, f"gridflex/{site}")
        service = start_service(config, tmp_path / "run.log")
        try:
            watcher.wait_for("status", lambda p: p == "online", timeout_s=20)
            watcher.send("dispatch", {"event_id": "h10", "kind": "limit", "target_kw": 60,
                                      "issued_at": now_iso()})  # fmt: skip
            watcher.wait_for("dispatch/ack", ack("h10", "active"), timeout_s=15)
        finally:
            _stop(service)
            watcher.close()
        assert service.returncode == 0
    aside = list(tmp_path.glob("gridflex.sqlite3.corrupt-*"))
    assert aside, (tmp_path / "run.log").read_text()[-2000:]
    events = subprocess.run([*GRIDFLEX, "events", "--database", str(db)], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert "h10" in events


# -- 11: OpenADR 3 targets and bounds --------------------------------------------------------------
def _event3(**fields: Any) -> Event:
    start = datetime.now(UTC).isoformat()
    raw = {"id": "e-11", "programID": "p", "intervalPeriod": {"start": start,
                                                               "duration": "PT1H"},
           "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT",
                                                 "values": [100.0]}]}], **fields}  # fmt: skip
    return Event.model_validate(raw)


def test_11_openadr3_events_are_checked_against_every_target_type_and_bounded() -> None:
    other = _event3(targets=[{"type": "RESOURCE_NAME", "values": ["another-site-meter"]}])
    assert "RESOURCE_NAME" in (not_for_ven(other, "small-site", ["small-site-meter"]) or "")
    ours = _event3(targets=[{"type": "RESOURCE_NAME", "values": ["small-site-meter"]}])
    assert not_for_ven(ours, "small-site", ["small-site-meter"]) is None
    unknown = _event3(targets=[{"type": "GROUP", "values": ["west"]}])
    assert not_for_ven(unknown, "small-site") is not None
    config = OpenAdr3Config.model_validate({
        "vtn_url": "https://vtn.example", "client_id": "c", "client_secret": "s" * 32,
        "ven_name": "small-site", "programs": ["p"],
    })  # fmt: skip
    many = _event3(intervals=[{"id": k, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT",
                                                      "values": [100.0]}]}
                              for k in range(100_000)])  # fmt: skip
    started = time.perf_counter()
    with pytest.raises(UnsupportedEventError, match=f"at most {MAX_INTERVALS}"):
        plan_event3(many, config, lambda _p: 0.0, "p", 0)
    assert time.perf_counter() - started < 0.5


# -- 12: hygiene ----------------------------------------------------------------------------------
def test_12_a_publish_the_acl_refuses_fails_loudly_and_literal_secrets_are_warned_about(
    tmp_path: Path,
) -> None:
    """Mosquitto 2.0 grants every SUBSCRIBE and filters at delivery (its SUBACK never refuses,
    so the session's SUBACK check is for brokers that do); its MQTT 5 PUBACK says "Not
    authorized", and a publish it refuses fails instead of passing for delivered."""
    site = f"h12-{uuid.uuid4().hex[:4]}"
    broker = start_acl_broker(tmp_path, site, group=GROUP, host_id=HOST_ID)

    async def refused() -> str:
        session = MqttSession(MqttSettings(host=broker.host, port=broker.port,
                                           client_id=f"qse-{uuid.uuid4().hex[:6]}",
                                           username="qse", password=password("qse")))  # fmt: skip
        await session.connect()
        try:
            await session.publish(f"gridflex/{site}/override", b"{}")  # not the QSE's to write
        except MqttError as exc:
            return str(exc)
        finally:
            await session.close()
        return "delivered"

    try:
        assert "refused the message: Not authorized" in asyncio.run(refused())
    finally:
        broker.stop()

    path = tmp_path / "literal.yaml"
    path.write_text(
        "site: {id: t}\nclasses:\n  gpu: {priority: protected}\ndevices:\n"
        "  - {id: g, kind: gpu, class: gpu, rated_kw: 1.2, driver: {type: gpu_node, node_id: g,"
        " hmac_key: a-literal-node-key-of-thirty-two-bytes}}\n"
        "mqtt: {host: 127.0.0.1}\nprices: {source: none}\n"
        f"service: {{database: '{tmp_path / 'db.sqlite3'}'}}\n"
    )
    path.chmod(0o644)
    from click.testing import CliRunner

    result = CliRunner().invoke(check_config, ["--away", str(path)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "devices[0].driver.hmac_key is written in the site file" in out
    assert "readable by every user" in out
