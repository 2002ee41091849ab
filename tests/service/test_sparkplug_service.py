"""`gridflex run` as a Sparkplug B edge node, seen by the independent host of
tests/adapters/scada/sparkplug_host.py over a real Mosquitto: born only once its primary host is
online, every metric of docs/sparkplug.md in the births, commands written as metrics going
through the same intake as JSON (a dispatch, an override, a malformed write), their outcome in
the next NDATA/DDATA and in the audit, commands and rebirth written without datatypes as Eclipse
Tahu's host writes them, and the broker's NDEATH after kill -9 with the
bdSeq of the last birth; the restarted service is born with the next bdSeq, and at SIGTERM
publishes its NDEATH and disconnects with the will (MQTT 5's reason 0x04)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from agent.app.sparkplug_metrics import CLASS_METRICS, NODE_METRICS
from tests.adapters.scada.sparkplug_host import BOOLEAN, DOUBLE, STRING, Host, Received, check_seq
from tests.helpers.mqtt_watch import GRIDFLEX, Watcher
from tests.helpers.peers import Broker

ROOT = Path(__file__).resolve().parents[2]
GROUP, EDGE, HOST_ID = "texas", "trial", "ignition"
CLASSES = {"s19xp", "inference", "cooling", "controls"}


def _site(tmp_path: Path, broker: Broker) -> Path:
    site = yaml.safe_load((ROOT / "deploy/examples/local-trial.yaml").read_text())
    site["mqtt"].update(port=broker.port, topic_prefix="gridflex/e2e")
    site["service"].update(database=str(tmp_path / "trial.sqlite3"), metrics_port=None,
                           status_page_port=None)  # fmt: skip
    site["sparkplug"] = {"group_id": GROUP, "primary_host_id": HOST_ID, "report_every_s": 0.5,
                         "accept_commands": True}  # fmt: skip
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def _start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*GRIDFLEX, "run", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def _node_says(name: str, test: Any) -> Any:
    def check(m: Received) -> bool:
        return name in m.metrics() and bool(test(m.value(name)))

    return check


def _latest(host: Host, name: str) -> Any:
    """The value a host holds for a node metric: the last NBIRTH or NDATA that carried it."""
    for m in reversed(host.seen):
        if m.verb in {"NBIRTH", "NDATA"} and name in m.metrics():
            return m.value(name)
    raise AssertionError(f"{name} never reported")


def test_gridflex_run_is_an_edge_node_an_independent_host_can_drive(
    tmp_path: Path, own_mqtt_broker: Broker
) -> None:
    config = _site(tmp_path, own_mqtt_broker)
    host = Host(own_mqtt_broker.host, own_mqtt_broker.port, GROUP, HOST_ID)
    watcher = Watcher(own_mqtt_broker)
    service = _start(config)
    try:
        watcher.wait_for("status", lambda p: p == "online", timeout_s=30)
        # no birth while the primary host is not online
        assert not [m for m in host.drain(3.0) if m.verb == "NBIRTH"]
        host.state(online=True)
        birth = host.next("NBIRTH", timeout_s=15)
        assert (birth.qos, birth.retain, birth.payload.seq) == (0, False, 0)
        names = set(birth.metrics())
        per_class = {f"Classes/{name} kW" for name in CLASSES}
        assert {"bdSeq", "Node Control/Rebirth"} | {
            m.name for m in NODE_METRICS
        } | per_class == names
        for spec in NODE_METRICS:
            assert birth.metrics()[spec.name].datatype == spec.datatype, spec.name
        bdseq = birth.value("bdSeq")
        born = {host.next("DBIRTH").topic.rsplit("/", 1)[-1] for _ in CLASSES}
        assert born == CLASSES
        dbirth = next(m for m in host.seen if m.topic.endswith("DBIRTH/trial/s19xp"))
        assert set(dbirth.metrics()) == {m.name for m in CLASS_METRICS}
        assert dbirth.value("Devices") == 48
        assert dbirth.value("Priority") == "interruptible"

        # a dispatch written as a metric, without a datatype as Tahu's host writes it (the
        # NBIRTH declared it a Double): accepted, then verified active, as its acks say
        host.command(EDGE, [("Dispatch/Limit kW", DOUBLE, 60.0)])
        accepted = host.next("NDATA", test=_node_says("Dispatch/Last Status",
                                                      lambda v: v == "accepted"))  # fmt: skip
        # data carries no datatypes: the births declared them (NDATA SHOULD NOT)
        assert not any(m.datatype for m in accepted.payload.metrics)
        is_active = _node_says("Dispatch/Last Status", lambda v: v == "active")
        host.next("NDATA", timeout_s=30, test=is_active)
        assert _latest(host, "Events/Live") == 1  # reported by exception: when it changed
        json_ack = json.loads(watcher.wait_for(
            "dispatch/ack", lambda p: json.loads(p)["status"] == "active", timeout_s=10
        ))  # fmt: skip
        assert json_ack["event_id"].startswith("scada-")
        assert _latest(host, "Dispatch/Last Event ID") == json_ack["event_id"]
        assert _latest(host, "Dispatch/Limit kW") == 60.0

        # a malformed write is rejected with the intake's reason, and changes nothing
        host.command(EDGE, [("Dispatch/Limit kW", STRING, "sixty")])
        rejected = host.next("NDATA", test=_node_says("Dispatch/Last Status",
                                                      lambda v: v == "rejected"))  # fmt: skip
        assert "schema" in rejected.value("Dispatch/Last Reason")
        # an override of a class, on its device: the override's ack in the next DDATA
        host.command(EDGE, [("Override/Action", STRING, "bogus")], device="cooling")
        refused = _node_says("Override/Last Status", lambda v: v == "rejected")
        bad = host.next("DDATA", device="cooling", test=refused)
        assert "action" in bad.value("Override/Last Reason")
        host.command(EDGE, [("Override/Action", STRING, "off")], device="controls")
        answered = _node_says("Override/Last Status", lambda v: v not in {"", "rejected"})
        done = host.next("DDATA", device="controls", test=answered)
        assert done.value("Override/Last Status") == "not_applied"  # critical load: never off
        # a write to a metric that is not writable
        host.command(EDGE, [("Site/Verified kW", DOUBLE, 1.0)])
        host.next("NDATA", test=_node_says("Dispatch/Last Reason",
                                           lambda v: "not a writable" in v))  # fmt: skip

        host.command(EDGE, [("Node Control/Rebirth", BOOLEAN, True)])
        again = host.next("NBIRTH")
        assert (again.payload.seq, again.value("bdSeq")) == (0, bdseq)
        check_seq(host.seen)

        audit = subprocess.run([*GRIDFLEX, "audit", "--config", str(config), "--since", "10m",
                                "--json"], cwd=ROOT, capture_output=True, text=True,
                               timeout=60, check=True)  # fmt: skip
        rows = [json.loads(line) for line in audit.stdout.splitlines() if line.strip()]
        sources = {(r.get("kind"), r.get("source")) for r in rows}
        assert any(kind == "dispatch-rejected" and src == "sparkplug" for kind, src in sources)
        assert any(src == "sparkplug" and kind == "sparkplug-rejected" for kind, src in sources)

        # killed: the broker publishes the will, an NDEATH with the bdSeq of the last birth
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        death = host.next("NDEATH", timeout_s=30)
        assert death.value("bdSeq") == bdseq
        # restarted: born again with the next bdSeq (kept in the database)
        service = _start(config)
        reborn = host.next("NBIRTH", timeout_s=30)
        assert reborn.value("bdSeq") == (bdseq + 1) % 256
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
        clean = host.next("NDEATH", timeout_s=10)  # published before the clean DISCONNECT
        assert clean.value("bdSeq") == (bdseq + 1) % 256
        # and the will as well: the DISCONNECT says "disconnect with will message" (MQTT 5)
        will = host.next("NDEATH", timeout_s=10)
        assert will.value("bdSeq") == (bdseq + 1) % 256
        assert will.payload.timestamp < clean.payload.timestamp
    finally:
        if service.poll() is None:
            service.kill()
        host.close()
        watcher.client.loop_stop()
        watcher.client.disconnect()
