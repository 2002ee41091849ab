"""Fan-out: write and verify one setpoint on each of N simulated Modbus devices.

The devices are outlets of simulated rack PDUs (24 outlets per PDU, one PDU per loopback address)
served by a separate process (adapters.sim.modbus_server). For each N the script times
  - gridflex: ModbusDriver.apply() on every device at once (pooled connections, retries,
    deadlines, write + read-back + measured-power verification), and
  - plain: a bare pymodbus loop doing the same requests (write coil, read the coil back, and
    when switching off read the outlet's power) over
    one already-connected client per PDU, PDUs concurrently, outlets in turn.
Both run warm (connections open), each the median of several rounds alternating off/on.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from adapters.devices.modbus import ModbusDriver
from adapters.transport.modbus_pool import ModbusPool
from agent.config.drivers import ModbusDriverConfig
from agent.ports import DeviceCommand

SIZES = (100, 1000, 5000)
ROUNDS = 5
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


async def _gridflex_round(drivers: list[ModbusDriver], on: bool) -> float:
    start = time.perf_counter()
    await asyncio.gather(
        *(
            driver.apply(DeviceCommand(driver.device_id, on, 3.25 if on else 0.0, 100.0))
            for driver in drivers
        )
    )
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
    pool = ModbusPool()
    group = ModbusDriverConfig(
        type="modbus",
        host=FIRST_HOST,
        port=PORT,
        profile="rack_pdu_switched",
        channels_per_host=OUTLETS,
    )
    drivers = [ModbusDriver(f"pdu-outlet-{k}", group.member(k), pool) for k in range(devices)]
    await asyncio.gather(*(driver.read() for driver in drivers))  # connect once, as in service
    hosts = sorted({driver_host(k) for k in range(devices)}, key=_host_key)
    clients = [
        AsyncModbusTcpClient(host, port=PORT, timeout=2, retries=0, reconnect_delay=0)
        for host in hosts
    ]
    await asyncio.gather(*(client.connect() for client in clients))
    gridflex, plain = [], []
    for round_index in range(ROUNDS):
        on = round_index % 2 == 1
        gridflex.append(await _gridflex_round(drivers, on))
        plain.append(await _plain_round(clients, devices, on))
    for client in clients:
        client.close()
    await pool.close()
    g, p = statistics.median(gridflex), statistics.median(plain)
    return {"gridflex_s": round(g, 4), "plain_pymodbus_s": round(p, 4), "ratio": round(g / p, 3)}


def driver_host(index: int) -> str:
    return str(ipaddress.IPv4Address(FIRST_HOST) + index // OUTLETS)


def _host_key(host: str) -> tuple[int, ...]:
    return tuple(int(part) for part in host.split("."))


def main() -> None:
    server = _start_server(max(SIZES))
    try:
        results = {str(n): asyncio.run(_measure(n)) for n in SIZES}
    finally:
        server.terminate()
        server.wait(timeout=10)
    target = results["1000"]
    print(
        json.dumps(
            {
                "bench": "fanout",
                "devices_per_endpoint": OUTLETS,
                "rounds": ROUNDS,
                "cpus": os.cpu_count(),
                "results": results,
                "target_1000_le_0_5_s": target["gridflex_s"] <= 0.5,
                "target_1000_ratio_le_1_3": target["ratio"] <= 1.3,
            }
        )
    )


if __name__ == "__main__":
    main()
