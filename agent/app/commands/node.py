"""`gridflex node`: the small agent on each GPU server.

It subscribes to `<prefix>/node/<id>/setpoint` (QoS 1), applies each absolute setpoint as NVML
power caps (and pauses inference jobs through a configured command when caps are not enough),
and publishes its state (setpoint in force, enforced limit, measured GPU power) to
`<prefix>/node/<id>/state` after every command and every `--publish-interval-s`.

A node a site can trust: every field of a setpoint is validated (`"on": "false"` is not a bool,
NaN is no kW); with a key (`GRIDFLEX_NODE_KEY`, the same as the driver's `hmac_key`) only signed
setpoints issued within the window and newer than the last one are obeyed, and its states are
signed too (adapters.devices.node_protocol). TLS and credentials as for `gridflex run`; a broker
that is not up yet, or goes away, is waited for, for ever, with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from adapters.devices.node_protocol import Freshness, node_topics, parse_setpoint, stamp
from adapters.transport.mqtt_session import MqttError, MqttSession, MqttSettings, TlsFiles
from agent.app.systemd import notify, watchdog_interval_s
from agent.errors import DeviceError
from agent.ports import utc_now

if TYPE_CHECKING:  # NVML comes with the `gpu` extra; `gridflex node` says so when it is missing
    from adapters.devices.gpu_nvml import GpuNode

__all__ = ["NodeLink", "node", "run_node"]

_log = logging.getLogger("gridflex.node")

MIN_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class NodeLink:
    """Where the node listens and how it trusts what it hears."""

    prefix: str = "gridflex"
    key: bytes | None = None
    window_s: float = 30.0


async def run_node(
    node_id: str,
    gpu_node: GpuNode,
    session: MqttSession,
    *,
    publish_interval_s: float,
    stop: asyncio.Event,
    link: NodeLink | None = None,
) -> None:
    """Serve setpoints until `stop` is set."""
    link = link or NodeLink()
    setpoint_topic, state_topic = node_topics(link.prefix, node_id)
    freshness = (
        None if link.key is None else Freshness(link.key, setpoint_topic, window_s=link.window_s)
    )
    commands: asyncio.Queue[tuple[bool, float]] = asyncio.Queue()
    last = {"on": True, "kw": float("inf")}
    refusing: list[str] = []  # the reason being logged: once per reason, not per message

    def on_setpoint(_topic: str, payload: bytes) -> None:
        try:
            setpoint, raw = parse_setpoint(payload)
            refused = None if freshness is None else freshness.refuse(raw, utc_now())
            if refused is not None:
                raise ValueError(refused)
        except ValueError as exc:
            if refusing != [str(exc)]:
                _log.warning("setpoint on %s refused: %s", setpoint_topic, exc)
                refusing[:] = [str(exc)]
            return
        refusing.clear()
        commands.put_nowait((setpoint.on, setpoint.kw))

    from adapters.devices.gpu_nvml import NodeState  # noqa: PLC0415 - the gpu extra

    async def publish(state: NodeState) -> None:
        try:
            payload = stamp(state.as_json(), link.key, utc_now(), state_topic)
            await session.publish(state_topic, payload, qos=1)
        except MqttError as exc:  # the broker is away: the next state goes when it is back
            _log.warning("state not published: %s", exc)

    session.subscribe(setpoint_topic, on_setpoint)
    # under systemd's watchdog the loop comes round at least twice per WatchdogSec, and kicks it
    # after each round: an apply that hangs (NVML, a pause command) gets the node restarted
    kick_s = watchdog_interval_s()
    wake_s = publish_interval_s if kick_s is None else min(publish_interval_s, kick_s)
    loop = asyncio.get_running_loop()
    next_publish = loop.time() + publish_interval_s
    while not stop.is_set():
        notify("WATCHDOG=1")
        try:
            async with asyncio.timeout(max(0.0, min(wake_s, next_publish - loop.time()))):
                on, kw = await commands.get()
            last.update(on=on, kw=kw)
        except TimeoutError:
            if loop.time() < next_publish:
                continue  # a watchdog round only
            on, kw = bool(last["on"]), float(last["kw"])
            if kw == float("inf"):
                next_publish = loop.time() + publish_interval_s
                continue  # nothing commanded yet: leave the operator's caps alone
        next_publish = loop.time() + publish_interval_s
        try:
            state = await gpu_node.apply(on, kw)
        except DeviceError as exc:
            # publish the fault as state; the agent's echo wait then fails with this reason
            state = NodeState(on, -1.0, 0.0, 0.0, gpu_node.jobs_paused, error=str(exc))
        await publish(state)


def _key_from_env(name: str) -> bytes | None:
    value = os.environ.get(name)
    if value is None:
        return None
    key = value.encode()
    if len(key) < MIN_KEY_BYTES:
        raise click.UsageError(f"{name} must be at least {MIN_KEY_BYTES} bytes")
    return key


@click.command("node")
@click.option("--node-id", required=True, help="this server's id, as in the site file")
@click.option(
    "--prefix",
    default="gridflex",
    show_default=True,
    help="the site's topic prefix (mqtt.topic_prefix, default gridflex/<site id>)",
)
@click.option("--broker-host", default="127.0.0.1", show_default=True)
@click.option("--broker-port", default=1883, show_default=True, type=int)
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CA file: connect over TLS",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="client certificate (with --tls-key)",
)
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--key-env",
    default="GRIDFLEX_NODE_KEY",
    show_default=True,
    help="environment variable holding the signing key; when set, only signed setpoints are obeyed",
)
@click.option("--overhead-kw", default=0.0, show_default=True, type=click.FloatRange(0, 100),
              help="the server's draw besides its GPUs (CPUs, fans, NICs, PSU losses): "
              "setpoints are whole-server kW")  # fmt: skip
@click.option("--server-power-command", default=None,
              help='prints the whole server\'s power ("... 512 Watts"), e.g. '
              '"ipmitool dcmi power reading"; else GPUs + overhead is reported')  # fmt: skip
@click.option("--pause-command", default=None, help="run when caps alone cannot meet a setpoint")
@click.option("--resume-command", default=None, help="run when caps suffice again")
@click.option("--publish-interval-s", default=5.0, show_default=True,
              type=click.FloatRange(0.1, 3600))  # fmt: skip
def node(
    *,
    node_id: str,
    prefix: str,
    broker_host: str,
    broker_port: int,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    key_env: str,
    overhead_kw: float,
    server_power_command: str | None,
    pause_command: str | None,
    resume_command: str | None,
    publish_interval_s: float,
) -> None:
    """Apply GPU power caps from MQTT setpoints on this server (needs NVML and root).
    Credentials: GRIDFLEX_MQTT_USERNAME / GRIDFLEX_MQTT_PASSWORD in the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        from adapters.devices.gpu_nvml import GpuNode, NvmlGpus  # noqa: PLC0415
    except ImportError:
        raise click.ClickException(
            "gridflex node needs NVML: pip install 'gridflex[gpu]' (nvidia-ml-py)"
        ) from None
    key = _key_from_env(key_env)
    if key is None:
        _log.warning("%s is not set: setpoints are not signed, the broker ACL is the only guard",
                     key_env)  # fmt: skip
    tls = None if tls_ca is None else TlsFiles(
        ca_file=str(tls_ca), cert_file=None if tls_cert is None else str(tls_cert),
        key_file=None if tls_key is None else str(tls_key),
    )  # fmt: skip
    settings = MqttSettings(
        host=broker_host,
        port=broker_port,
        client_id=f"gridflex-node-{node_id}",
        username=os.environ.get("GRIDFLEX_MQTT_USERNAME"),
        password=os.environ.get("GRIDFLEX_MQTT_PASSWORD"),
        tls=tls,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        session = MqttSession(settings)
        gpus = NvmlGpus(node_id)
        gpu_node = GpuNode(
            node_id, gpus, pause_command=pause_command, resume_command=resume_command,
            overhead_kw=overhead_kw, server_power_command=server_power_command,
        )  # fmt: skip
        try:
            await session.connect()
        except MqttError as exc:  # paho keeps trying with backoff; setpoints come when it is up
            _log.warning("broker not up yet (%s); waiting for it", exc)
        # ready once NVML answered and the session exists (a broker away is waited out inside)
        notify("READY=1")
        try:
            await run_node(node_id, gpu_node, session, publish_interval_s=publish_interval_s,
                           stop=stop, link=NodeLink(prefix=prefix, key=key))  # fmt: skip
        finally:
            notify("STOPPING=1")
            await session.close()
            gpus.close()

    try:
        asyncio.run(main())
    except DeviceError as exc:  # no NVIDIA driver, no GPU, no root: one line, not a traceback
        raise click.ClickException(f"cannot reach the GPUs: {exc}") from None
