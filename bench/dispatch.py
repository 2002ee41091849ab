"""Dispatch to verified: from publishing a dispatch on MQTT to every device's shed verified.

Four processes, as on a site: Mosquitto, the simulated devices (adapters.devices.
sim_modbus_server: PDU outlets, 24 per PDU, one PDU per loopback address), the agent exactly as
systemd runs it (`gridflex run --config SITE`, with its own device polling, telemetry and SQLite
audit), and this script as the grid operator. The clock starts just before the operator
publishes `<prefix>/dispatch` (QoS 1; a limit to 0 kW: every outlet must be switched off) and
stops when the operator receives the "active" ack, which the agent sends only once the site's
verified load is under the ceiling: every outlet written, read back and measured off by its
driver. So the figure is an upper bound on dispatch-to-verified (it includes the ack's own MQTT
hop). Each size is dispatched ROUNDS times, at random phases of the agent's 2 s device poll
(release and full restore between rounds, untimed); the median and the worst are printed.

Beside it, in the same run and against the same device process, the plain pymodbus script a
skilled integrator would write: one client per PDU, PDUs concurrent, per PDU one FC15 write of
every outlet off, one FC01 read-back and one FC04 read of every outlet's power, with no service,
no MQTT and no bookkeeping around them. Its rounds alternate with the agent's, the agent frozen
(SIGSTOP) while the baseline runs. Target: the agent within 1.5x the script plus 0.25 s.
The agent's peak RSS is its VmHWM, read from /proc before it is stopped. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

SIZES = tuple(int(n) for n in os.environ.get("DISPATCH_SIZES", "1000,10000,50000").split(","))
ROUNDS = int(os.environ.get("DISPATCH_BENCH_ROUNDS", "5"))
QUICK_SIZES, QUICK_ROUNDS = (48,), 1  # --quick (make test): two PDUs, one round
OUTLETS = 24
RATED_KW = 3.25
FIRST_HOST = "127.0.6.1"
PORT = int(os.environ.get("DISPATCH_BENCH_PORT", "15602"))
POWER_BASE = 1000
PREFIX = "gridflex/bench"
ROOT = Path(__file__).resolve().parent.parent
_T = TypeVar("_T")
WAIT_S = 120.0  # for anything untimed (start, warm-up, restore) before the bench gives up

SITE = """
site: {{id: bench}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: miners, count: {n}, rated_kw: {rated_kw}, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: {host}, port: {port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 5}}}}
policy: {{min_dwell_s: 0, stale_posture: run_all}}
prices: {{source: none}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: gridflex-bench-{n}}}
service: {{database: "{db}", metrics_port: null, verify_timeout_s: 30, restore_batch_size: 100000,
          restore_batch_interval_s: 0}}
"""


# -- the peers ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def _start_broker(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    config = tmp / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                      "max_queued_messages 100000\n")  # fmt: skip
    process = subprocess.Popen([binary, "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_for_port(port)
    return process, port


def _start_devices(devices: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.sim.modbus_server", "--devices", str(devices),
         "--first-host", FIRST_HOST, "--port", str(PORT)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    if not process.stdout.readline().startswith("ready"):
        process.kill()
        raise RuntimeError("simulated site did not start")
    return process


def _start_agent(n: int, tmp: Path, mqtt_port: int) -> tuple[subprocess.Popen[bytes], Path]:
    site = tmp / f"site-{n}.yaml"
    site.write_text(SITE.format(n=n, rated_kw=RATED_KW, host=FIRST_HOST, port=PORT,
                                mqtt_port=mqtt_port, db=tmp / f"agent-{n}.sqlite3"))  # fmt: skip
    log = tmp / f"agent-{n}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*_gridflex(), "run", "--config", str(site), "--log-level", "WARNING"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, log


def _gridflex() -> list[str]:
    """The installed `gridflex` command beside this interpreter (what systemd runs)."""
    script = Path(sys.executable).with_name("gridflex")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from agent.cli import main; main()"]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


# -- the grid operator --------------------------------------------------------------------------
@dataclass
class Operator:
    """A paho client on the broker: publishes dispatches, notes when each message arrives."""

    port: int
    agent: subprocess.Popen[bytes]
    acks: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    site_kw: float | None = None
    decisions: int = 0  # the agent publishes one after each cycle that changed setpoints
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-operator")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.subscribe([(f"{PREFIX}/dispatch/ack", 1), (f"{PREFIX}/telemetry", 0),
                               (f"{PREFIX}/decision", 0)])  # fmt: skip
        self.client.loop_start()

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        body = json.loads(message.payload)
        with self.changed:
            if message.topic.endswith("/ack"):
                self.acks.append((arrived, body))
            elif message.topic.endswith("/decision"):
                self.decisions += 1
            else:
                self.site_kw = float(body["site_kw"])
            self.changed.notify_all()

    def publish(self, message: dict[str, Any]) -> float:
        started = time.perf_counter()
        self.client.publish(f"{PREFIX}/dispatch", json.dumps(message), qos=1)
        return started

    def wait(self, until: Callable[[], _T]) -> _T | None:
        """Until `until()` is truthy (re-checked on every message and twice a second)."""
        deadline = time.monotonic() + WAIT_S
        with self.changed:
            while not (hit := until()) and time.monotonic() < deadline:
                self.changed.wait(timeout=0.5)
        return hit or None

    def _agent_alive(self) -> None:
        if self.agent.poll() is not None:
            raise RuntimeError(f"the agent exited with {self.agent.returncode}")

    def wait_ack(self, event_id: str, status: str) -> tuple[float, dict[str, Any]]:
        def found() -> tuple[float, dict[str, Any]] | None:
            self._agent_alive()
            for at, body in self.acks:
                if body["event_id"] == event_id and body["status"] == status:
                    return at, body
                if body["event_id"] == event_id and body["status"] == "rejected":
                    raise RuntimeError(f"dispatch rejected: {body['reason']}")
            return None

        hit = self.wait(found)
        if hit is None:
            raise RuntimeError(f"no {status!r} ack for {event_id} within {WAIT_S} s")
        return hit

    def wait_site_kw(self, kw: float) -> None:
        """Until telemetry reports the site's verified load at `kw` (within a watt per device)."""

        def reached() -> bool:
            self._agent_alive()
            return self.site_kw is not None and abs(self.site_kw - kw) < 1e-3 * kw / RATED_KW

        with self.changed:
            self.site_kw = None
        if not self.wait(reached):
            raise RuntimeError(f"site never reported {kw} kW (last {self.site_kw})")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _rounds(operator: Operator, n: int) -> tuple[list[dict[str, float]], list[float]]:
    """Dispatch rounds, each followed by a plain round while the agent is frozen (SIGSTOP): the
    two alternate, so a load change on the machine touches both sides of the ratio alike."""
    full_kw = n * RATED_KW
    # warm: the first cycle is done (every setpoint asserted), every outlet on and verified
    if operator.wait(lambda: operator.decisions > 0) is None:
        raise RuntimeError("the agent never completed a cycle")
    operator.wait_site_kw(full_kw)
    rounds, plain = [], []
    # The agent polls every device every cycle_s; a dispatch that lands during a poll waits for
    # the poll's reads in flight. Rounds start at random phases (seeded) so the median is neither
    # always inside nor always outside a poll.
    jitter = random.Random(n)
    for r in range(ROUNDS):
        time.sleep(jitter.uniform(0.0, 2.0))
        event_id = f"bench-{n}-{r}"
        issued_at = datetime.now(UTC).isoformat()
        published = operator.publish({"event_id": event_id, "kind": "limit", "target_kw": 0,
                                      "issued_at": issued_at})  # fmt: skip
        verified, ack = operator.wait_ack(event_id, "active")
        rounds.append({"publish_to_active_ack_s": verified - published,
                       "achieved_kw": float(ack["achieved_kw"])})  # fmt: skip
        operator.publish({"event_id": event_id, "kind": "release", "issued_at": issued_at})
        operator.wait_ack(event_id, "completed")
        operator.wait_site_kw(full_kw)  # restored
        os.kill(operator.agent.pid, signal.SIGSTOP)  # its polls must not compete with the baseline
        try:
            plain.append(asyncio.run(_plain(n)))
        finally:
            os.kill(operator.agent.pid, signal.SIGCONT)
        operator.wait_site_kw(full_kw)  # the agent reads its outlets on again
    return rounds, plain


def _agent(n: int, tmp: Path, mqtt_port: int) -> tuple[list[dict[str, float]], list[float], float]:
    process, log = _start_agent(n, tmp, mqtt_port)
    operator = Operator(mqtt_port, process)
    try:
        rounds, plain = _rounds(operator, n)
        rss_mb = _peak_rss_mb(process.pid)
    except Exception:
        sys.stderr.write(log.read_text()[-4000:])
        raise
    finally:
        operator.close()
        process.send_signal(signal.SIGTERM)  # shutdown posture "hold": outlets stay as left
        process.wait(timeout=60)
    return rounds, plain, rss_mb


# -- the plain baseline -------------------------------------------------------------------------
async def _plain_pdu(client: AsyncModbusTcpClient, outlets: int) -> None:
    await client.write_coils(0, [False] * outlets, device_id=1)
    echoed = await client.read_coils(0, count=outlets, device_id=1)
    assert not any(echoed.bits[:outlets])
    reply = await client.read_input_registers(POWER_BASE, count=2 * outlets, device_id=1)
    powers = struct.unpack(f">{outlets}f", struct.pack(f">{2 * outlets}H", *reply.registers))
    assert max(powers) <= 25.0


async def _plain(n: int) -> float:
    hosts = [
        str(ipaddress.IPv4Address(FIRST_HOST) + k) for k in range((n + OUTLETS - 1) // OUTLETS)
    ]
    clients = [AsyncModbusTcpClient(h, port=PORT, timeout=5, retries=0, reconnect_delay=0)
               for h in hosts]  # fmt: skip
    await asyncio.gather(*(c.connect() for c in clients))
    start = time.perf_counter()
    await asyncio.gather(
        *(_plain_pdu(c, min(OUTLETS, n - k * OUTLETS)) for k, c in enumerate(clients))
    )
    elapsed = time.perf_counter() - start
    # untimed: every outlet back on, as the frozen agent left them
    await asyncio.gather(
        *(c.write_coils(0, [True] * min(OUTLETS, n - k * OUTLETS), device_id=1)
          for k, c in enumerate(clients))
    )  # fmt: skip
    for client in clients:
        client.close()
    return elapsed


def main() -> None:
    global ROUNDS, PORT  # the quick mode sets them once, before anything reads them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two PDUs, one round (make test)")
    quick = parser.parse_args().quick
    sizes = QUICK_SIZES if quick else SIZES
    if quick:
        ROUNDS, PORT = QUICK_ROUNDS, _free_port()
    results: dict[str, dict[str, object]] = {}
    medians_s: dict[int, float] = {}
    peak_rss_mb = 0.0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker, mqtt_port = _start_broker(tmp)
        devices = _start_devices(max(sizes))
        try:
            for n in sizes:
                rounds, plain, rss_mb = _agent(n, tmp, mqtt_port)
                peak_rss_mb = max(peak_rss_mb, rss_mb)
                agent_s = [r["publish_to_active_ack_s"] for r in rounds]
                median_s, plain_s = statistics.median(agent_s), statistics.median(plain)
                medians_s[n] = median_s
                results[str(n)] = {
                    "dispatch_to_verified_s": round(median_s, 3),
                    "dispatch_to_verified_max_s": round(max(agent_s), 3),
                    "batched_plain_s": round(plain_s, 3),
                    "ratio": round(median_s / plain_s, 2),
                    "target_le_1_5x_plus_0_25_s": median_s <= 1.5 * plain_s + 0.25,
                    "rounds_s": [round(s, 3) for s in agent_s],
                    "achieved_kw": max(r["achieved_kw"] for r in rounds),
                    "agent_peak_rss_mb": round(rss_mb, 1),
                }
        finally:
            devices.terminate()
            broker.terminate()
            devices.wait(timeout=10)
            broker.wait(timeout=10)
    print(json.dumps({
        "bench": "dispatch",
        "quick": quick,
        "cpus": os.cpu_count(),
        "timed_span": "publish on MQTT -> 'active' ack received over MQTT (median of rounds)",
        "agent": "gridflex run, separate process",
        "rounds": ROUNDS,
        "results": results,
        "agent_peak_rss_mb": round(peak_rss_mb, 1),
        "target_rss_le_200_mb": peak_rss_mb <= 200,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
