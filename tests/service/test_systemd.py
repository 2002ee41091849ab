"""The systemd unit verifies, and sd_notify reaches a real $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from adapters.devices.node_protocol import node_topics
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.commands.node import NodeLink, run_node
from agent.app.systemd import notify
from tests.helpers.peers import Broker

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "gridflex.service"


def _verify_problems(unit_file: Path, tmp_path: Path, *expected: str) -> list[str]:
    """What `systemd-analyze verify` finds in the unit, but for what a container lacks (a user
    database entry, a running systemd, the env file, the units named in After=)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze absent (.ci/run installs it)")
    # verify resolves ExecStart: point it at a file that exists here
    exe = tmp_path / "gridflex"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / unit_file.name
    unit.write_text(unit_file.read_text().replace("/opt/gridflex/bin/gridflex", str(exe)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    ignored = ("resolve user", "system has not been booted", *expected)
    return [
        line for line in (result.stderr + result.stdout).splitlines()
        if line.strip() and not any(i.lower() in line.lower() for i in ignored)
    ]  # fmt: skip


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert _verify_problems(UNIT, tmp_path, "gridflex.env") == []
    text = UNIT.read_text()
    for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict",
                   "NoNewPrivileges=yes", "EnvironmentFile="):  # fmt: skip
        assert needed in text


def test_notify_sends_one_datagram_to_the_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        os.environ["NOTIFY_SOCKET"] = str(path)
        try:
            assert notify("READY=1\nWATCHDOG=1")
        finally:
            del os.environ["NOTIFY_SOCKET"]
        assert server.recv(100) == b"READY=1\nWATCHDOG=1"
    assert not notify("WATCHDOG=1")  # outside systemd: a no-op


NODE_UNIT = UNIT.with_name("gridflex-node.service")


def test_the_node_unit_is_a_notify_service_with_a_watchdog(tmp_path: Path) -> None:
    text = NODE_UNIT.read_text()
    for needed in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=always",
                   "LimitNOFILE="):  # fmt: skip
        assert needed in text
    assert _verify_problems(NODE_UNIT, tmp_path, "node.env", "nvidia-persistenced") == []


class _HangingGpus:
    """A GPU node whose NVML call never returns once a setpoint arrives."""

    jobs_paused = False

    async def apply(self, on: bool, kw: float) -> object:
        del on, kw
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_gridflex_node_kicks_the_watchdog_until_an_apply_hangs(
    tmp_path: Path, mqtt_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG=1 at least every WatchdogSec/2 while idle (the publish interval is far longer);
    none once an NVML call hangs, so systemd restarts the node."""
    path = tmp_path / "notify.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # WatchdogSec=0.2: a kick every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    node_id = f"gpu-{uuid.uuid4().hex[:6]}"
    prefix = f"test/{uuid.uuid4().hex[:8]}"

    def session(name: str) -> MqttSession:
        return MqttSession(MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port,
                                        client_id=f"{name}-{uuid.uuid4().hex[:6]}"))  # fmt: skip

    def kicks(server: socket.socket) -> int:
        count = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                count += server.recv(100).count(b"WATCHDOG=1")
        return count

    async def scenario(server: socket.socket) -> None:
        node, grid = session("node"), session("grid")
        await node.connect()
        await grid.connect()
        stop = asyncio.Event()
        task = asyncio.create_task(run_node(node_id, _HangingGpus(), node,  # type: ignore[arg-type]
                                            publish_interval_s=60.0, stop=stop,
                                            link=NodeLink(prefix=prefix)))  # fmt: skip
        await asyncio.sleep(1.0)
        idle = kicks(server)
        assert idle >= 6, idle  # ~10 in 1 s with a 60 s publish interval
        setpoint_topic, _ = node_topics(prefix, node_id)
        await grid.publish(setpoint_topic, b'{"on": true, "kw": 1.0}', qos=1)
        await asyncio.sleep(0.5)
        kicks(server)  # those before the setpoint landed
        await asyncio.sleep(1.0)
        assert kicks(server) == 0  # the apply hangs: no more kicks
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await node.close()
        await grid.close()

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.setblocking(False)
        asyncio.run(scenario(server))
