"""Real peers on loopback: free ports, and a Mosquitto broker of the tests' own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s} s")


@dataclass
class Broker:
    """A Mosquitto process of our own; `restart()` keeps its port (clients must reconnect)."""

    host: str
    port: int
    config_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.host, self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def start_broker(tmp_dir: Path) -> Broker:
    if MOSQUITTO is None:
        pytest.skip("no mosquitto binary: .ci/run installs it")
    port = free_port()
    config = tmp_dir / "mosquitto.conf"
    data_dir = tmp_dir / "mosquitto-data"
    data_dir.mkdir(exist_ok=True)
    # persistence on: a broker restart must keep persistent sessions and queued QoS 1 messages
    # started as root, mosquitto drops to its own user, which cannot write a test's folder: its
    # persistence (which docs/install.md requires of a site's broker) would silently not save
    user = "user root\n" if os.geteuid() == 0 else ""
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        f"{user}"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {data_dir}/\n"
        "autosave_interval 1\n"
        "max_queued_messages 100000\n"
    )
    broker = Broker(host="127.0.0.1", port=port, config_path=config)
    broker.start()
    return broker
