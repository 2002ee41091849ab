"""The service as systemd runs it (`gridflex run`, a process of its own) and a simulated Modbus
site in another process, for tests through the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.mqtt_watch import GRIDFLEX
from tests.helpers.peers import free_port


@contextmanager
def modbus_site(devices: int, first_host: str) -> Iterator[int]:
    """PDUs of 24 outlets (one per loopback address from `first_host`) served by the simulator
    in a process of its own; yields their port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.sim.modbus_server", "--devices", str(devices),
         "--first-host", first_host, "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().startswith("ready")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def start_service(config: Path, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`gridflex run --config` with its output in `log` (or nowhere)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sink = subprocess.DEVNULL if log is None else log.open("wb")
    try:
        return subprocess.Popen([*GRIDFLEX, "run", "--config", str(config)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    finally:
        if log is not None and not isinstance(sink, int):
            sink.close()
