"""MQTT devices and `gridflex node` through a real Mosquitto; NVML replaced at its functions."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import pynvml
import pytest
from click.testing import CliRunner

from adapters.devices.gpu_nvml import GpuNode, NvmlGpus
from adapters.devices.mqtt_device import MqttDriver
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.commands.node import run_node
from agent.cli import main as cli_main
from agent.config.drivers import GpuNodeDriverConfig, MqttDriverConfig
from agent.errors import DeviceRejectedError, DeviceTimeoutError, DeviceUnavailableError
from agent.ports import DeviceCommand
from tests.adapters.devices.peers import FakeNvml, echoing_device


def _session(broker: Any, name: str) -> MqttSession:
    return MqttSession(
        MqttSettings(host=broker.host, port=broker.port, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
    )


def test_mqtt_device_applies_when_the_state_echo_matches(mqtt_broker: Any) -> None:
    base = f"test/{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        agent, device = _session(mqtt_broker, "agent"), _session(mqtt_broker, "dev")
        await agent.connect()
        await device.connect()
        config = MqttDriverConfig(
            type="mqtt",
            command_topic=f"{base}/{{k}}/set",
            state_topic=f"{base}/{{k}}/state",
            echo_timeout_s=2.0,
        ).member(2)
        assert config.command_topic == f"{base}/3/set"
        await echoing_device(device, config.command_topic, config.state_topic)
        driver = MqttDriver("chiller-3", config, agent)
        assert (await driver.read()).power_kw is None  # not heard from yet: unknown, no fault
        await driver.apply(DeviceCommand("chiller-3", on=True, kw=40.0, percent=100.0))
        assert (await driver.read()).power_kw == 40.0
        await driver.apply(DeviceCommand("chiller-3", on=False, kw=0.0, percent=0.0))
        reading = await driver.read()
        assert (reading.power_kw, reading.running) == (0.0, False)
        await agent.close()
        await device.close()

    asyncio.run(scenario())


def test_mqtt_device_that_never_echoes_times_out(mqtt_broker: Any) -> None:
    base = f"test/{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        agent = _session(mqtt_broker, "agent")
        await agent.connect()
        config = MqttDriverConfig(
            type="mqtt",
            command_topic=f"{base}/set",
            state_topic=f"{base}/state",
            echo_timeout_s=0.3,
        )
        driver = MqttDriver("mute", config, agent)
        with pytest.raises(DeviceTimeoutError, match="no matching state"):
            await driver.apply(DeviceCommand("mute", on=False, kw=0.0, percent=0.0))
        with pytest.raises(DeviceUnavailableError, match="no matching state"):
            await driver.read()  # unavailable until it speaks again
        await agent.close()

    asyncio.run(scenario())


def test_session_reconnects_and_resubscribes_after_a_broker_restart(own_mqtt_broker: Any) -> None:
    async def scenario() -> None:
        receiver, sender = _session(own_mqtt_broker, "rx"), _session(own_mqtt_broker, "tx")
        await receiver.connect()
        await sender.connect()
        got: asyncio.Queue[bytes] = asyncio.Queue()
        receiver.subscribe("t/restart", lambda _t, payload: got.put_nowait(payload))
        await asyncio.sleep(0.2)
        await sender.publish("t/restart", b"before")
        assert await asyncio.wait_for(got.get(), 5) == b"before"
        await asyncio.to_thread(own_mqtt_broker.restart)
        await receiver.wait_connected(10)
        await sender.wait_connected(10)
        await asyncio.sleep(0.3)
        await sender.publish("t/restart", b"after")
        assert await asyncio.wait_for(got.get(), 5) == b"after"
        await receiver.close()
        await sender.close()

    asyncio.run(scenario())


# --- NVML replaced at the library-function boundary ------------------------------------------


def test_caps_are_split_clamped_in_milliwatts_and_read_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nvml = FakeNvml(monkeypatch)
    gpus = NvmlGpus("gpu-a")
    assert gpus.set_total_limit_w(900.0) == 900.0
    assert nvml.set_calls == [(0, 450_000), (1, 450_000)]
    assert gpus.set_total_limit_w(100.0) == 400.0  # each board's floor is 200 W
    assert gpus.set_total_limit_w(5000.0) == 1400.0  # and its ceiling 700 W
    assert gpus.power_w() == pytest.approx(1260.0)


@pytest.mark.parametrize(
    ("error", "translated"),
    [
        (pynvml.NVMLError_NoPermission, DeviceRejectedError),
        (pynvml.NVMLError_NotSupported, DeviceRejectedError),
        (pynvml.NVMLError_GpuIsLost, DeviceUnavailableError),
    ],
)
def test_nvml_refusals_are_translated(
    monkeypatch: pytest.MonkeyPatch, error: type[pynvml.NVMLError], translated: type[Exception]
) -> None:
    nvml = FakeNvml(monkeypatch)
    nvml.refuse_with = error
    with pytest.raises(translated, match="GPU 0 power limit"):
        NvmlGpus("gpu-a").set_total_limit_w(900.0)


def test_gridflex_node_end_to_end_over_mosquitto(
    mqtt_broker: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nvml = FakeNvml(monkeypatch)
    node_id = f"gpu-{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "jobs"
    write = f"{sys.executable} -c \"import pathlib; pathlib.Path(r'{marker}').write_text('%s')\""

    async def scenario() -> None:
        node_session, agent_session = _session(mqtt_broker, "node"), _session(mqtt_broker, "agent")
        await node_session.connect()
        await agent_session.connect()
        gpu_node = GpuNode(
            node_id,
            NvmlGpus(node_id),
            pause_command=write % "paused",
            resume_command=write % "resumed",
        )
        stop = asyncio.Event()
        serving = asyncio.create_task(
            run_node(node_id, gpu_node, node_session, publish_interval_s=0.5, stop=stop)
        )
        await asyncio.sleep(0.2)
        driver = MqttDriver(
            node_id,
            GpuNodeDriverConfig(type="gpu_node", node_id=node_id, echo_timeout_s=5.0),
            agent_session,
        )
        await driver.apply(DeviceCommand(node_id, on=True, kw=1.0, percent=100.0))
        assert nvml.limits_mw == [500_000, 500_000]
        assert (await driver.read()).power_kw == pytest.approx(0.9)
        await driver.apply(DeviceCommand(node_id, on=False, kw=0.0, percent=0.0))
        assert nvml.limits_mw == [200_000, 200_000]  # the floor, and a cap is not enough:
        assert marker.read_text() == "paused"
        await driver.apply(DeviceCommand(node_id, on=True, kw=1.2, percent=100.0))
        assert marker.read_text() == "resumed"
        nvml.refuse_with = pynvml.NVMLError_NoPermission
        with pytest.raises(DeviceTimeoutError, match="Insufficient Permissions"):
            await driver.apply(DeviceCommand(node_id, on=True, kw=0.8, percent=100.0))
        stop.set()
        await asyncio.wait_for(serving, 2)
        await node_session.close()
        await agent_session.close()

    asyncio.run(scenario())


def test_node_command_is_registered() -> None:
    result = CliRunner().invoke(cli_main, ["node", "--help"])
    assert result.exit_code == 0
    assert "--node-id" in result.output


def test_a_gpu_server_is_capped_and_reported_as_a_whole_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Setpoints are whole-server kW: the GPUs get what the declared overhead leaves, and the
    state reports the server's own reading where it has one, else GPUs plus overhead."""
    nvml = FakeNvml(monkeypatch)
    declared = GpuNode("n1", NvmlGpus("n1"), overhead_kw=0.5)
    state = asyncio.run(declared.apply(True, 1.5))
    assert nvml.limits_mw == [500_000, 500_000]  # 1.5 kW - 0.5 kW overhead, shared by two GPUs
    assert state.gpu_power_kw == pytest.approx(0.9)
    assert state.power_kw == pytest.approx(1.4)
    assert state.power_source == "gpu+declared overhead"

    ipmi = tmp_path / "ipmitool"
    ipmi.write_text(
        "#!/bin/sh\necho '    Instantaneous power reading:                  1234 Watts'\n"
    )
    ipmi.chmod(0o755)
    measured = GpuNode("n1", NvmlGpus("n1"), overhead_kw=0.5,
                       server_power_command=f"{ipmi} dcmi power reading")  # fmt: skip
    state = asyncio.run(measured.apply(True, 1.5))
    assert (state.power_kw, state.power_source) == (pytest.approx(1.234), "server")

    broken = GpuNode("n1", NvmlGpus("n1"), overhead_kw=0.5, server_power_command="false")
    state = asyncio.run(broken.apply(True, 1.5))
    assert state.power_source == "gpu+declared overhead"  # a failing reading falls back
