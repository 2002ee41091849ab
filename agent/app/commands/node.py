"""`gridflex node`: the small agent on each GPU server.

It subscribes to gridflex/node/<id>/setpoint (QoS 1), applies each absolute setpoint as NVML power
caps (and pauses inference jobs through a configured command when caps are not enough), and
publishes its state - setpoint in force, enforced limit, measured GPU power - to
gridflex/node/<id>/state after every command and every `--publish-interval-s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import click

from adapters.devices.gpu_nvml import GpuNode, NodeState, NvmlGpus
from adapters.devices.mqtt_device import node_topics
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.errors import DeviceError

__all__ = ["node", "run_node"]

_log = logging.getLogger(__name__)


async def run_node(
    node_id: str,
    gpu_node: GpuNode,
    session: MqttSession,
    *,
    publish_interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Serve setpoints until `stop` is set. The session must already be connected."""
    setpoint_topic, state_topic = node_topics(node_id)
    commands: asyncio.Queue[tuple[bool, float]] = asyncio.Queue()
    last = {"on": True, "kw": float("inf")}

    def on_setpoint(_topic: str, payload: bytes) -> None:
        try:
            data = json.loads(payload)
            commands.put_nowait((bool(data["on"]), float(data["kw"])))
        except (ValueError, KeyError, TypeError):
            _log.warning("ignoring malformed setpoint on %s: %r", setpoint_topic, payload[:200])

    async def publish(state: NodeState) -> None:
        await session.publish(state_topic, json.dumps(state.as_json()), qos=1)

    session.subscribe(setpoint_topic, on_setpoint)
    while not stop.is_set():
        try:
            async with asyncio.timeout(publish_interval_s):
                on, kw = await commands.get()
            last.update(on=on, kw=kw)
        except TimeoutError:
            on, kw = bool(last["on"]), float(last["kw"])
            if kw == float("inf"):
                continue  # nothing commanded yet: leave the operator's caps alone
        try:
            state = await gpu_node.apply(on, kw)
        except DeviceError as exc:
            # publish the fault as state; the agent's echo wait then fails with this reason
            state = NodeState(on, -1.0, 0.0, 0.0, gpu_node.jobs_paused, error=str(exc))
        await publish(state)


@click.command("node")
@click.option("--node-id", required=True, help="this server's id, as in the site file")
@click.option("--broker-host", default="127.0.0.1", show_default=True)
@click.option("--broker-port", default=1883, show_default=True, type=int)
@click.option("--pause-command", default=None, help="run when caps alone cannot meet a setpoint")
@click.option("--resume-command", default=None, help="run when caps suffice again")
@click.option("--publish-interval-s", default=5.0, show_default=True, type=float)
def node(
    *,
    node_id: str,
    broker_host: str,
    broker_port: int,
    pause_command: str | None,
    resume_command: str | None,
    publish_interval_s: float,
) -> None:
    """Apply GPU power caps from MQTT setpoints on this server (needs NVML and root)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def main() -> None:
        settings = MqttSettings(
            host=broker_host,
            port=broker_port,
            client_id=f"gridflex-node-{node_id}",
            username=os.environ.get("GRIDFLEX_MQTT_USERNAME"),
            password=os.environ.get("GRIDFLEX_MQTT_PASSWORD"),
        )
        session = MqttSession(settings)
        gpus = NvmlGpus(node_id)
        gpu_node = GpuNode(
            node_id, gpus, pause_command=pause_command, resume_command=resume_command
        )
        await session.connect()
        try:
            await run_node(
                node_id,
                gpu_node,
                session,
                publish_interval_s=publish_interval_s,
                stop=asyncio.Event(),
            )
        finally:
            await session.close()
            gpus.close()

    asyncio.run(main())
