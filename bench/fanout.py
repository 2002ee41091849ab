"""Fan-out: write and verify one setpoint on each of N simulated Modbus outlets.

The devices are outlets of simulated rack PDUs (24 outlets per PDU, one PDU per loopback address)
served by a separate process (adapters.sim.modbus_server). For each N the script times
  - gridflex: the shell's fan-out (agent.service.fanout.apply_setpoints over a DeviceBank) with
    the site's drivers: outlets of one PDU batched by their endpoint (one FC15 write, one FC01
    read-back, one power read), PDUs concurrent, pooled connections, retries, deadlines and
    per-outlet verification;
  - batched plain: what a skilled integrator writes with bare pymodbus: per PDU one FC15 write of
    all outlets, one FC01 read-back, one FC04 read of every outlet's power, PDUs concurrent,
    one already-connected client per PDU;
  - per-outlet plain (for reference): the same client, outlet by outlet (write coil, read it
    back, read its power), PDUs concurrent.
All run warm (connections open), each the median of several rounds alternating off/on (power is
read on "off": an "on" proves nothing by power at once). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from pymodbus.client import AsyncModbusTcpClient

from adapters.transport.modbus_pool import ModbusPool
from agent.app.drivers import build_drivers
from agent.config import parse_config
from agent.ports import utc_now
from agent.service.devices import DeviceBank, ShellSettings
from agent.service.fanout import apply_setpoints

SIZES = tuple(int(n) for n in os.environ.get("FANOUT_SIZES", "1000,10000,50000").split(","))
ROUNDS = 9
QUICK_SIZES, QUICK_ROUNDS = (48,), 3  # --quick (make test): two PDUs
OUTLETS = 24
FIRST_HOST = "127.0.2.1"
PORT = int(os.environ.get("FANOUT_PORT", "15502"))
POWER_BASE = 1000  # outletActivePower input registers in profiles/rack_pdu_switched.yaml
OFF_MAX_W = 25.0


def _start_server(devices: int) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adapters.sim.modbus_server",
            "--devices",
            str(devices),
            "--first-host",
            FIRST_HOST,
            "--port",
            str(PORT),
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("ready"):
        process.kill()
        raise RuntimeError(f"simulated site did not start: {line!r}")
    return process


SITE = """
site: {{id: bench}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: miners, count: {n}, rated_kw: 3.25, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: {host}, port: {port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 5}}}}
"""


async def _gridflex_round(bank: DeviceBank, on: bool) -> float:
    target = np.full(len(bank.fleet), 3.25 if on else 0.0)
    start = time.perf_counter()
    failed = await apply_setpoints(bank, np.arange(len(bank.fleet)), target)
    elapsed = time.perf_counter() - start
    assert not failed, list(failed.items())[:3]
    return elapsed


async def _batched_pdu(client: AsyncModbusTcpClient, outlets: int, on: bool) -> None:
    await client.write_coils(0, [on] * outlets, device_id=1)
    echoed = await client.read_coils(0, count=outlets, device_id=1)
    assert echoed.bits[:outlets] == [on] * outlets
    if on:
        return
    words = (
        await client.read_input_registers(POWER_BASE, count=2 * outlets, device_id=1)
    ).registers
    powers = struct.unpack(f">{outlets}f", struct.pack(f">{2 * outlets}H", *words))
    assert max(powers) <= OFF_MAX_W


async def _batched_round(clients: list[AsyncModbusTcpClient], devices: int, on: bool) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(_batched_pdu(client, min(OUTLETS, devices - index * OUTLETS), on)
                           for index, client in enumerate(clients)))  # fmt: skip
    return time.perf_counter() - start


async def _plain_pdu(client: AsyncModbusTcpClient, outlets: int, on: bool) -> None:
    for outlet in range(outlets):
        await client.write_coil(outlet, on, device_id=1)
        echoed = await client.read_coils(outlet, count=1, device_id=1)
        assert echoed.bits[0] == on
        if on:
            continue  # like the driver: switching on proves itself by the read-back alone
        words = (
            await client.read_input_registers(POWER_BASE + 2 * outlet, count=2, device_id=1)
        ).registers
        power_w = struct.unpack(">f", struct.pack(">HH", *words))[0]
        assert power_w <= OFF_MAX_W


async def _plain_round(clients: list[AsyncModbusTcpClient], devices: int, on: bool) -> float:
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _plain_pdu(client, min(OUTLETS, devices - index * OUTLETS), on)
            for index, client in enumerate(clients)
        )
    )
    return time.perf_counter() - start


async def _measure(devices: int) -> dict[str, float]:
    config = parse_config(SITE.format(n=devices, host=FIRST_HOST, port=PORT), env={})
    pool = ModbusPool()
    drivers = build_drivers(config, pool, mqtt=None, clock=utc_now).drivers
    # the same work as the batched script: no extra power read after a switch-on
    settings = ShellSettings(verify_timeout_s=30.0, read_after_apply=False)
    bank = DeviceBank(config.fleet(), drivers, settings)
    await bank.poll()  # connect once, as the service does
    hosts = sorted({driver_host(k) for k in range(devices)}, key=_host_key)
    clients = [
        AsyncModbusTcpClient(host, port=PORT, timeout=5, retries=0, reconnect_delay=0)
        for host in hosts
    ]
    await asyncio.gather(*(client.connect() for client in clients))
    gridflex, batched, per_outlet = [], [], []
    for round_index in range(ROUNDS):
        on = round_index % 2 == 1
        gridflex.append(await _gridflex_round(bank, on))
        batched.append(await _batched_round(clients, devices, on))
        if devices <= 10_000:  # outlet by outlet: slow enough to say so without 50,000
            per_outlet.append(await _plain_round(clients, devices, on))
    for client in clients:
        client.close()
    await pool.close()
    g, b = statistics.median(gridflex), statistics.median(batched)
    out = {"gridflex_s": round(g, 4), "batched_plain_s": round(b, 4), "ratio": round(g / b, 3)}
    if per_outlet:
        out["per_outlet_plain_s"] = round(statistics.median(per_outlet), 4)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def driver_host(index: int) -> str:
    return str(ipaddress.IPv4Address(FIRST_HOST) + index // OUTLETS)


def _host_key(host: str) -> tuple[int, ...]:
    return tuple(int(part) for part in host.split("."))


def main() -> None:
    global ROUNDS, PORT  # the quick mode sets them once, before anything reads them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two PDUs, three rounds (make test)")
    quick = parser.parse_args().quick
    sizes = QUICK_SIZES if quick else SIZES
    if quick:
        ROUNDS, PORT = QUICK_ROUNDS, _free_port()
    server = _start_server(max(sizes))
    try:
        results = {str(n): asyncio.run(_measure(n)) for n in sizes}
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(
        json.dumps(
            {
                "bench": "fanout",
                "quick": quick,
                "devices_per_endpoint": OUTLETS,
                "rounds": ROUNDS,
                "cpus": os.cpu_count(),
                "results": results,
                "targets_ratio_le_1_5": {
                    n: r["ratio"] <= 1.5 for n, r in results.items() if n in ("1000", "10000")
                },
            }
        )
    )


if __name__ == "__main__":
    main()
