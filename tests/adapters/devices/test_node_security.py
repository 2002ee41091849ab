"""`gridflex node` a site can trust, over a real Mosquitto with NVML replaced at its functions:
with a key, only the service's signed, fresh, newer setpoints are obeyed, and only the node's
signed states are believed; malformed setpoints are refused without stopping it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from adapters.devices.gpu_nvml import GpuNode, NvmlGpus
from adapters.devices.mqtt_device import MqttDriver
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.commands.node import NodeLink, run_node
from agent.config.drivers import GpuNodeDriverConfig
from agent.ports import DeviceCommand
from tests.adapters.devices.peers import FakeNvml

KEY = b"node-key-of-at-least-thirty-two-bytes!"
PREFIX = "gridflex/trust"


def _session(broker: Any, name: str) -> MqttSession:
    return MqttSession(MqttSettings(broker.host, broker.port, f"{name}-{uuid.uuid4().hex[:6]}"))


def test_a_keyed_node_obeys_only_signed_fresh_newer_setpoints(
    mqtt_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = FakeNvml(monkeypatch)
    node_id = f"gpu-{uuid.uuid4().hex[:6]}"
    setpoint_topic = f"{PREFIX}/node/{node_id}/setpoint"
    state_topic = f"{PREFIX}/node/{node_id}/state"

    async def scenario() -> None:
        node, agent, attacker = (_session(mqtt_broker, n) for n in ("node", "agent", "x"))
        for session in (node, agent, attacker):
            await session.connect()
        captured: list[bytes] = []
        attacker.subscribe(setpoint_topic, lambda _t, p: captured.append(p))
        await attacker.subscriptions_settled()
        stop = asyncio.Event()
        gpu_node = GpuNode(node_id, NvmlGpus(node_id))
        serving = asyncio.create_task(run_node(node_id, gpu_node, node, publish_interval_s=0.3,
                                               stop=stop, link=NodeLink(PREFIX, KEY)))  # fmt: skip
        await asyncio.sleep(0.1)  # run_node subscribes when its task first runs
        await node.subscriptions_settled()
        config = GpuNodeDriverConfig(type="gpu_node", node_id=node_id, echo_timeout_s=3.0,
                                     hmac_key=SecretStr(KEY.decode()))  # fmt: skip
        driver = MqttDriver(node_id, config, agent, prefix=PREFIX)
        try:
            await driver.apply(DeviceCommand(node_id, on=True, kw=1.0, percent=100.0))
            assert nvml.limits_mw == [500_000, 500_000]
            await driver.apply(DeviceCommand(node_id, on=True, kw=1.2, percent=100.0))
            assert nvml.limits_mw == [600_000, 600_000]
            assert len(captured) == 2

            forged = [
                b'{"on": false, "kw": 0}',  # unsigned
                json.dumps({**json.loads(captured[0]), "kw": 0.4}).encode(),  # tampered
                captured[0],  # a captured setpoint, replayed: older than the last one taken
                b'{"on": true, "kw": NaN}',
                b'{"on": "false", "kw": 1}',
                b"\xff not json",
            ]
            for payload in forged:
                await attacker.publish(setpoint_topic, payload)
            await asyncio.sleep(0.8)
            assert nvml.limits_mw == [600_000, 600_000]  # none obeyed
            assert not serving.done()  # and the node is still serving

            spoofed = {"on": True, "kw": 1.2, "power_kw": 1000.0}  # an unsigned state
            await attacker.publish(state_topic, json.dumps(spoofed))
            await asyncio.sleep(0.5)
            assert (await driver.read()).power_kw == pytest.approx(1.08)  # the node's own
            assert driver.refused_states >= 1
        finally:
            stop.set()
            await asyncio.wait_for(serving, 2)
            for session in (node, agent, attacker):
                await session.close()

    asyncio.run(scenario())


def test_node_on_a_host_without_an_nvidia_driver_says_so_in_one_line(tmp_path: Path) -> None:
    gridflex = Path(sys.executable).parent / "gridflex"
    done = subprocess.run(
        [str(gridflex), "node", "--node-id", "n1", "--broker-port", "1"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "GRIDFLEX_NODE_KEY": KEY.decode()},
    )  # fmt: skip
    assert done.returncode != 0
    assert "cannot reach the GPUs" in done.stderr
    assert "Traceback" not in done.stderr
