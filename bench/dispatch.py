"""Dispatch to verified: from a dispatch message to every device's shed verified, N = 1k and 10k.

The devices are PDU outlets (24 per simulated PDU, one PDU per loopback address) served by a
separate process (adapters.devices.sim_modbus_server). The agent is this process: the service as
`gridflex run` assembles it (intake, snapshot, decide, apply over pooled Modbus with write,
read-back and measured-power verification, a read of each device's power, SQLite audit). The
clock starts when the dispatch JSON is handed to the intake (the MQTT hop, ~1 ms on loopback, is
not in the figure) and stops when the event is "active": every outlet commanded off and the
site's measured load verified under the ceiling. Beside it, in the same run, a plain pymodbus
fan-out doing the same Modbus requests with no service around them. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from agent.config import parse_config
from agent.service.assembly import assemble
from agent.service.shell import ShellSettings

SIZES = (1000, 10_000)
OUTLETS = 24
FIRST_HOST = "127.0.6.1"
PORT = int(os.environ.get("DISPATCH_BENCH_PORT", "15602"))
POWER_BASE = 1000

SITE = """
site: {{id: bench}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: miners, count: {n}, rated_kw: 3.25, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: {host}, port: {port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 5}}}}
policy: {{min_dwell_s: 0, stale_posture: run_all}}
prices: {{source: none}}
service: {{database: "{db}", metrics_port: null, verify_timeout_s: 30, restore_batch_size: 100000,
          restore_batch_interval_s: 0}}
"""


def _start_server(devices: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.devices.sim_modbus_server", "--devices", str(devices),
         "--first-host", FIRST_HOST, "--port", str(PORT)],
        cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    if not process.stdout.readline().startswith("ready"):
        process.kill()
        raise RuntimeError("simulated site did not start")
    return process


async def _agent(n: int, db: Path) -> float:
    config = parse_config(SITE.format(n=n, host=FIRST_HOST, port=PORT, db=db), env={})
    service = assemble(
        config,
        clock=lambda: datetime.now(UTC),
        settings=ShellSettings(
            verify_timeout_s=30, restore_batch_size=100_000, restore_batch_interval_s=0
        ),
    )
    await service.shell.poll()
    await service.shell.cycle()  # warm: every outlet on, connections open
    message = {"event_id": f"bench-{n}", "kind": "limit", "target_kw": 0,
               "issued_at": datetime.now(UTC).isoformat()}  # fmt: skip
    start = time.perf_counter()
    service.intake.dispatch(json.dumps(message).encode())
    while True:
        await service.shell.cycle()
        if service.events.live[0].status == "active":
            break
    elapsed = time.perf_counter() - start
    # put the outlets back on for the plain fan-out and the next size
    release = {"event_id": f"bench-{n}", "kind": "release", "issued_at": message["issued_at"]}
    service.intake.dispatch(json.dumps(release).encode())
    await service.shell.cycle()
    await service.close()
    return elapsed


async def _plain_pdu(client: AsyncModbusTcpClient, outlets: int) -> None:
    for outlet in range(outlets):
        await client.write_coil(outlet, False, device_id=1)
        echoed = await client.read_coils(outlet, count=1, device_id=1)
        assert not echoed.bits[0]
        words = (
            await client.read_input_registers(POWER_BASE + 2 * outlet, count=2, device_id=1)
        ).registers
        assert struct.unpack(">f", struct.pack(">HH", *words))[0] <= 25.0


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
    for client in clients:
        client.close()
    return elapsed


def main() -> None:
    server = _start_server(max(SIZES))
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in SIZES:
                agent_s = asyncio.run(_agent(n, Path(tmp) / f"bench-{n}.sqlite3"))
                plain_s = asyncio.run(_plain(n))
                results[str(n)] = {"dispatch_to_verified_s": round(agent_s, 3),
                                   "plain_pymodbus_s": round(plain_s, 3),
                                   "ratio": round(agent_s / plain_s, 2)}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "bench": "dispatch",
        "cpus": os.cpu_count(),
        "results": results,
        "agent_peak_rss_mb": round(peak_rss_mb, 1),
        "target_1000_le_0_5_s": results["1000"]["dispatch_to_verified_s"] <= 0.5,
        "target_10000_le_5_s": results["10000"]["dispatch_to_verified_s"] <= 5.0,
        "target_rss_le_200_mb": peak_rss_mb <= 200,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
